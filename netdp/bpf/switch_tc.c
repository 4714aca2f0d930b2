// SPDX-License-Identifier: GPL-2.0
// netdp on tc (tcx) ingress of VM-port host interfaces: keeps checksum offload and GSO.
#define NETDP_TC 1
#include "datapath.h"

SEC("classifier")
int netdp_tc(struct __sk_buff *skb)
{
	return netdp_forward(skb);
}

char LICENSE[] SEC("license") = "GPL";
