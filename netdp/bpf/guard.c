// SPDX-License-Identifier: GPL-2.0
// Ingress guard: the first check every frame entering the switch goes through.
// Drops frames too short to carry an Ethernet header and frames whose source MAC is a
// group (multicast/broadcast) address, which no real sender uses; passes the rest.
// Verdicts are counted per reason in `guard_stats`.

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <bpf/bpf_helpers.h>

enum guard_counter {
	GUARD_PASS = 0,
	GUARD_DROP_SHORT = 1,
	GUARD_DROP_GROUP_SRC = 2,
	GUARD_NCOUNTERS = 3,
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, GUARD_NCOUNTERS);
	__type(key, __u32);
	__type(value, __u64);
} guard_stats SEC(".maps");

static __always_inline int count(__u32 key, int verdict)
{
	__u64 *n = bpf_map_lookup_elem(&guard_stats, &key);
	if (n)
		*n += 1;
	return verdict;
}

SEC("xdp")
int xdp_guard(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;

	if ((void *)(eth + 1) > data_end)
		return count(GUARD_DROP_SHORT, XDP_DROP);
	if (eth->h_source[0] & 1)
		return count(GUARD_DROP_GROUP_SRC, XDP_DROP);
	return count(GUARD_PASS, XDP_PASS);
}

char LICENSE[] SEC("license") = "GPL";
