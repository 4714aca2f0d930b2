// SPDX-License-Identifier: GPL-2.0
// netdp on XDP: the same forwarding logic for frames that carry no offload state.
#define NETDP_XDP 1
#include "datapath.h"

SEC("xdp")
int netdp_xdp(struct xdp_md *ctx)
{
	return netdp_forward(ctx);
}

char LICENSE[] SEC("license") = "GPL";
