// SPDX-License-Identifier: GPL-2.0
// netdp's maps and the structs in them. The Rust side (src/datapath/abi.rs) mirrors every
// struct field for field; keep the two in step. Addresses and L4 ports are in network byte
// order, rule port ranges in host order.

#ifndef NETDP_MAPS_H
#define NETDP_MAPS_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

#define SG_MAX_RULES 32
#define NET_MAX_PORTS 32
#define SG_ANY 0xffff
#define RULE_STATS_MAX 65536
#define MAX_PORTS 4096
/// Bytes of a DHCP request carried to the slow path (a request is 300-576 bytes).
#define DHCP_PUNT_MAX 1500
/// Room for the frame in a record: a power of two above DHCP_PUNT_MAX, so that a mask
/// proves the copy's bound to the verifier.
#define DHCP_PUNT_ROOM 2048

#define DIR_INGRESS 1
#define DIR_EGRESS 2

#define TCP_FLAG_FIN 0x01
#define TCP_FLAG_SYN 0x02
#define TCP_FLAG_RST 0x04
#define TCP_FLAG_ACK 0x10

/// Why a frame was dropped; indexes `port_stats.drops`.
enum drop_reason {
	DROP_MALFORMED = 0,
	DROP_SPOOF_MAC = 1,
	DROP_SPOOF_IP = 2,
	DROP_SPOOF_ARP = 3,
	DROP_ETHERTYPE = 4,
	DROP_UNKNOWN_DST = 5,
	DROP_NO_NETWORK = 6,
	DROP_SG_EGRESS = 7,
	DROP_SG_INGRESS = 8,
	DROP_CT_INVALID = 9,
	DROP_NO_ROUTE = 10,
	DROP_NO_NEIGH = 11,
	DROP_TTL = 12,
	DROP_FRAGMENT = 13,
	DROP_NAT_EXHAUSTED = 14,
	DROP_DHCP_RING_FULL = 15,
	DROP_NREASONS = 16,
};

struct port_stats {
	__u64 rx_packets;
	__u64 rx_bytes;
	__u64 tx_packets;
	__u64 tx_bytes;
	__u64 routed;
	__u64 flooded;
	__u64 arp_replies;
	__u64 icmp_errors;
	__u64 drops[DROP_NREASONS];
};

/// A VM port, keyed by the ifindex of its host-side interface, with its counters: the
/// `ports` map is per CPU, so the lookup that finds a port also finds this CPU's counters
/// and counting costs no lookup of its own. Userspace writes the same configuration to
/// every CPU's copy and sums the counters.
struct port {
	__u32 net_id;
	__u8 mac[6];
	__u8 port_security;
	__u8 flags; // PORT_F_*
	__u32 pad;
	struct port_stats stats;
};

/// The slow path answers the port's DHCP: its requests are not switched.
#define PORT_F_DHCP 1
/// The port's interface is a veth: frames for it go straight to its peer's ingress
/// (bpf_redirect_peer on tc), skipping the veth's transmit queue.
#define PORT_F_PEER 2

/// One (MAC, IPv4) a port may send from; ip 0 allows the MAC alone (DHCP, ARP probes).
struct addr_key {
	__u32 ifindex;
	__u32 ip;
	__u8 mac[6];
	__u16 pad;
};

struct l2_key {
	__u32 net_id;
	__u8 mac[6];
	__u16 pad;
};

/// Where a MAC lives: a port, or a router interface (router_id != 0, ifindex unused, ip the
/// interface address).
struct fdb_entry {
	__u32 ifindex;
	__u32 router_id;
	__u32 ip; // the router interface's address (source of ICMP errors)
};

struct neigh_key {
	__u32 net_id;
	__u32 ip;
};

struct neigh {
	__u8 mac[6];
	__u16 pad;
};

/// LPM key: prefixlen counts the 32 router bits plus the address prefix.
struct route_key {
	__u32 prefixlen;
	__u32 router_id;
	__u32 addr;
};

#define ROUTE_EXTERNAL 1

/// Out of a router: the network, the router's MAC on it, the next hop (0: directly
/// connected); ROUTE_EXTERNAL marks routes out of the router's gateway (SNAT applies).
struct route {
	__u32 net_id;
	__u32 nexthop;
	__u8 mac[6];
	__u16 flags;
};

/// A floating-IP translation key: an address as one router sees it.
struct nat_key {
	__u32 router_id;
	__u32 ip;
};

/// One side of a gateway SNAT translation: an address and port as seen by `router_id`
/// towards one remote end. ICMP echo: the port is the echo id and remote_port is 0.
struct snat_key {
	__u32 router_id;
	__u32 local_ip;
	__u32 remote_ip;
	__u16 local_port;
	__u16 remote_port;
	__u8 proto;
	__u8 pad[3];
};

/// The other side of the translation. In `snat_in` the entry also keeps the connection's
/// idle time and state (the same rules as conntrack's, CT_TCP_* flags): a translation idle
/// for longer than its timeout no longer lets replies in, and the daemon's GC removes it.
struct snat_val {
	__u32 ip;
	__u16 port;
	__u8 replied; // a reply came back through the translation
	__u8 tcp; // CT_TCP_* seen
	__u64 last_seen; // bpf_ktime_get_coarse_ns of the last packet (snat_in only)
};

struct network {
	__u32 nports;
	__u32 ports[NET_MAX_PORTS];
};

struct sg_key {
	__u32 ifindex;
	__u8 direction;
	__u8 proto;
	__u16 pad;
};

struct sg_rule {
	__u32 rule_id;
	__u32 remote;
	__u32 remote_mask;
	__u16 port_min;
	__u16 port_max;
};

/// The rules of all a port's groups for one direction and protocol (0: any protocol).
struct sg_rules {
	__u32 n;
	struct sg_rule r[SG_MAX_RULES];
};

struct ct_key {
	__u32 ifindex;
	__u32 saddr;
	__u32 daddr;
	__u16 sport;
	__u16 dport;
	__u8 proto;
	__u8 pad[3];
};

/// TCP teardown seen on a connection (ct_val.tcp, snat_val.tcp): its idle timeout
/// shortens.
#define CT_TCP_FIN 1
#define CT_TCP_RST 2

struct ct_val {
	__u64 last_seen; // bpf_ktime_get_coarse_ns of the last packet
	__u32 rule_id;
	__u8 dir;
	__u8 replied;
	__u8 tcp; // CT_TCP_* seen
	__u8 pad;
};

/// A DHCP request on its way to the slow path, with the port it came from.
struct dhcp_punt {
	__u32 ifindex; // the port's interface (the key of `ports`)
	__u32 len; // bytes of `frame` used
	__u8 frame[DHCP_PUNT_ROOM];
};

/// Per security-group rule: connections it admitted (counted once per admission, not per
/// packet: the hot path of an established connection touches no rule counter).
struct rule_stats {
	__u64 connections;
};

/// The ports. The uncounted twin (NETDP_NO_COUNTERS, benchmarks only) keeps them in a
/// plain hash: without counters nothing needs a per-CPU copy.
struct {
#ifdef NETDP_NO_COUNTERS
	__uint(type, BPF_MAP_TYPE_HASH);
#else
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
#endif
	__uint(max_entries, MAX_PORTS);
	__type(key, __u32);
	__type(value, struct port);
} ports SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, struct addr_key);
	__type(value, __u32);
} port_addrs SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, struct l2_key);
	__type(value, struct fdb_entry);
} fdb SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, struct neigh_key);
	__type(value, struct neigh);
} neighbors SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 4096);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct route_key);
	__type(value, struct route);
} routes SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__type(key, __u32);
	__type(value, struct network);
} networks SEC(".maps");

/// Floating IP -> fixed IP (DNAT inbound).
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, struct nat_key);
	__type(value, __u32);
} fip_dnat SEC(".maps");

/// Fixed IP -> floating IP (SNAT outbound through the gateway).
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, struct nat_key);
	__type(value, __u32);
} fip_snat SEC(".maps");

/// Routers doing gateway SNAT: router id -> its gateway address.
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__type(key, __u32);
	__type(value, __u32);
} router_snat SEC(".maps");

/// Gateway SNAT outbound: (router, fixed IP, remote, ports) -> (gateway IP, NAT port).
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct snat_key);
	__type(value, struct snat_val);
} snat_out SEC(".maps");

/// Gateway SNAT inbound: (router, gateway IP, remote, NAT port) -> (fixed IP, port).
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct snat_key);
	__type(value, struct snat_val);
} snat_in SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, struct sg_key);
	__type(value, struct sg_rules);
} sg_rules SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 262144);
	__type(key, struct ct_key);
	__type(value, struct ct_val);
} conntrack SEC(".maps");

/// Indexed by rule id (ids past the end are not counted).
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, RULE_STATS_MAX);
	__type(key, __u32);
	__type(value, struct rule_stats);
} rule_stats SEC(".maps");

/// DHCP requests of DHCP ports, for the slow path (`struct dhcp_punt` records). Only these
/// frames ever reach userspace: no packet socket sees the switch's traffic.
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 256 * 1024);
} dhcp_punt SEC(".maps");

#endif
