// SPDX-License-Identifier: GPL-2.0
// Benchmark helpers: a packet generator and a sink.
//
// `xdp_tx` sends every frame back out of the interface it ran on: run under
// BPF_PROG_TEST_RUN with BPF_F_TEST_XDP_LIVE_FRAMES it transmits the test frame `repeat`
// times (this kernel has no pktgen). `xdp_count` counts frames and bytes arriving on an
// interface and drops them; on a veth it also gives the peer NAPI, which redirects into the
// veth need.

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 2);
	__type(key, __u32);
	__type(value, __u64);
} sink_stats SEC(".maps");

SEC("xdp")
int xdp_tx(struct xdp_md *ctx)
{
	(void)ctx;
	return XDP_TX;
}

SEC("xdp")
int xdp_count(struct xdp_md *ctx)
{
	__u32 k = 0;
	__u64 *n = bpf_map_lookup_elem(&sink_stats, &k);
	if (n)
		*n += 1;
	k = 1;
	n = bpf_map_lookup_elem(&sink_stats, &k);
	if (n)
		*n += ctx->data_end - ctx->data;
	return XDP_DROP;
}

char LICENSE[] SEC("license") = "GPL";
