// SPDX-License-Identifier: GPL-2.0
// netdp's forwarding logic, shared by the tc (skb) and XDP builds.
//
// The including file defines NETDP_TC or NETDP_XDP before including this header; the hook
// specific parts (context type, verdicts, redirect, flooding) are the `hook_*` functions
// below, everything else is plain packet parsing and map lookups.
//
// Per frame entering the switch from a port:
//   1. port lookup by ingress ifindex (frames from unknown interfaces pass to the stack);
//   2. port security: source MAC (and IP / ARP sender) must be one of the port's addresses;
//   3. ARP requests for known addresses are answered in place, other broadcasts flooded to
//      the network's ports (tc) or handed to the slow path (XDP);
//   4. unicast: FDB lookup (network, destination MAC); unknown destinations are dropped;
//      a router MAC means L3: LPM route, neighbour, MAC rewrite, TTL-1, checksum;
//   5. security groups (egress of the source port, ingress of the destination port) with
//      conntrack in an LRU hash keyed per port;
//   6. redirect to the destination port.

#ifndef NETDP_DATAPATH_H
#define NETDP_DATAPATH_H

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/in.h>
#include <linux/tcp.h>
#include <linux/udp.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "maps.h"

#ifdef NETDP_TC
#define CTX struct __sk_buff
#define VERDICT_DROP TC_ACT_SHOT
#define VERDICT_PASS TC_ACT_OK

static __always_inline __u32 hook_in_port(CTX *ctx) { return ctx->ingress_ifindex; }

static __always_inline void hook_pull(CTX *ctx)
{
	// Make the headers we parse (Ethernet, IPv4 without options, TCP) linear when they are
	// not. Pulling more would copy on every GSO packet, whose linear part is its headers.
	__u32 want = ctx->len < 54 ? ctx->len : 54;
	if ((long)ctx->data_end - (long)ctx->data < want)
		bpf_skb_pull_data(ctx, want);
}

static __always_inline int hook_redirect(CTX *ctx, __u32 ifindex, __u32 in_port)
{
	(void)ctx;
	(void)in_port;
	return bpf_redirect(ifindex, 0);
}

static __always_inline __u64 hook_len(CTX *ctx) { return ctx->len; }

/// Delivers to a port: a veth port's frames go straight into its peer's ingress (in the
/// VM's namespace), skipping the veth's transmit and the peer's receive queue.
static __always_inline int hook_deliver(CTX *ctx, __u32 ifindex, __u32 in_port, __u8 flags)
{
	if (flags & PORT_F_PEER)
		return bpf_redirect_peer(ifindex, 0);
	return hook_redirect(ctx, ifindex, in_port);
}

static __always_inline long hook_load(CTX *ctx, void *to, __u32 len)
{
	return bpf_skb_load_bytes(ctx, 0, to, len);
}

static __always_inline int hook_resize(CTX *ctx, __u32 len)
{
	return bpf_skb_change_tail(ctx, len, 0);
}

/// Fixes the L4 checksum at `off` for an address change (keeps checksum offload right).
static __always_inline void hook_l4_csum(CTX *ctx, __u32 off, __u32 old, __u32 new, int udp)
{
	__u64 flags = BPF_F_PSEUDO_HDR | sizeof(new);
	if (udp)
		flags |= BPF_F_MARK_MANGLED_0;
	bpf_l4_csum_replace(ctx, off, old, new, flags);
}

/// Fixes the L4 checksum at `off` for a port change (not part of the pseudo-header).
static __always_inline void hook_l4_csum_port(CTX *ctx, __u32 off, __u16 old, __u16 new, int udp)
{
	__u64 flags = sizeof(new);
	if (udp)
		flags |= BPF_F_MARK_MANGLED_0;
	bpf_l4_csum_replace(ctx, off, old, new, flags);
}
#else
#define CTX struct xdp_md
#define VERDICT_DROP XDP_DROP
#define VERDICT_PASS XDP_PASS

static __always_inline __u32 hook_in_port(CTX *ctx) { return ctx->ingress_ifindex; }

static __always_inline void hook_pull(CTX *ctx) { (void)ctx; }

static __always_inline int hook_redirect(CTX *ctx, __u32 ifindex, __u32 in_port)
{
	(void)ctx;
	if (ifindex == in_port)
		return XDP_TX;
	return bpf_redirect(ifindex, 0);
}

static __always_inline __u64 hook_len(CTX *ctx)
{
	return (long)ctx->data_end - (long)ctx->data;
}

static __always_inline long hook_load(CTX *ctx, void *to, __u32 len)
{
	return bpf_xdp_load_bytes(ctx, 0, to, len);
}

static __always_inline int hook_deliver(CTX *ctx, __u32 ifindex, __u32 in_port, __u8 flags)
{
	(void)flags;
	return hook_redirect(ctx, ifindex, in_port);
}

static __always_inline int hook_resize(CTX *ctx, __u32 len)
{
	return bpf_xdp_adjust_tail(ctx, (int)len - (int)hook_len(ctx));
}

static __always_inline __u16 csum_replace4(__u16 csum, __u32 old, __u32 new);

static __always_inline void hook_l4_csum(CTX *ctx, __u32 off, __u32 old, __u32 new, int udp)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	if (off > 128)
		return;
	__u16 *c = data + off;
	if ((void *)(c + 1) > data_end)
		return;
	if (udp && *c == 0)
		return; // no checksum
	__u16 n = csum_replace4(*c, old, new);
	if (udp && n == 0)
		n = 0xffff;
	*c = n;
}

static __always_inline __u16 csum_replace2(__u16 csum, __u16 old, __u16 new);

static __always_inline void hook_l4_csum_port(CTX *ctx, __u32 off, __u16 old, __u16 new, int udp)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	if (off > 128)
		return;
	__u16 *c = data + off;
	if ((void *)(c + 1) > data_end)
		return;
	if (udp && *c == 0)
		return;
	__u16 n = csum_replace2(*c, old, new);
	if (udp && n == 0)
		n = 0xffff;
	*c = n;
}
#endif

#define ETH_P_ARP_BE bpf_htons(ETH_P_ARP)
#define ETH_P_IP_BE bpf_htons(ETH_P_IP)

#define ICMP_ECHOREPLY 0
#define ICMP_DEST_UNREACH 3
#define ICMP_ECHO 8
#define ICMP_TIME_EXCEEDED 11
#define ICMP_PARAMETERPROB 12

/// The first 8 bytes of an ICMP message (echo id/sequence in the second half).
struct icmp_echo {
	__u8 type;
	__u8 code;
	__be16 checksum;
	__be16 id;
	__be16 seq;
};

/// An ARP packet for IPv4 over Ethernet.
struct arp_eth {
	__be16 htype;
	__be16 ptype;
	__u8 hlen;
	__u8 plen;
	__be16 oper;
	__u8 sha[6];
	__u8 spa[4];
	__u8 tha[6];
	__u8 tpa[4];
} __attribute__((packed));

/// This CPU's counters of a port (`p` from a `ports` lookup, or NULL). Built with
/// NETDP_NO_COUNTERS (the benchmark's uncounted twin only) there are none and every
/// counting branch compiles away.
static __always_inline struct port_stats *stats_of(struct port *p)
{
#ifdef NETDP_NO_COUNTERS
	(void)p;
	return 0;
#else
	return p ? &p->stats : 0;
#endif
}

static __always_inline struct port *port_of(__u32 ifindex)
{
	return bpf_map_lookup_elem(&ports, &ifindex);
}

static __always_inline int drop(struct port *inp, __u32 reason)
{
	struct port_stats *s = stats_of(inp);
	if (s && reason < DROP_NREASONS)
		s->drops[reason] += 1;
	return VERDICT_DROP;
}

/// A DHCP request for the slow path: copied with its port into the `dhcp_punt` ring
/// buffer, then consumed. Nothing else is ever punted, so userspace never sees ordinary
/// frames. A full ring drops the request (counted as DROP_DHCP_RING_FULL; the client
/// retries), and so does a frame too long to be a request (DROP_MALFORMED).
static __always_inline int hook_punt(CTX *ctx, __u32 in_port, struct port *inp)
{
	__u32 len = hook_len(ctx);
	if (len < 1 || len > DHCP_PUNT_MAX)
		return drop(inp, DROP_MALFORMED);
	struct dhcp_punt *e = bpf_ringbuf_reserve(&dhcp_punt, sizeof(*e), 0);
	if (!e)
		return drop(inp, DROP_DHCP_RING_FULL);
	e->ifindex = in_port;
	e->len = len;
	// len is 1..DHCP_PUNT_MAX already; the mask makes that 1..DHCP_PUNT_ROOM for the
	// verifier without changing it.
	__u32 n = ((len - 1) & (DHCP_PUNT_ROOM - 1)) + 1;
	if (hook_load(ctx, e->frame, n) < 0) {
		bpf_ringbuf_discard(e, 0);
		return drop(inp, DROP_MALFORMED);
	}
	bpf_ringbuf_submit(e, 0);
	return VERDICT_DROP;
}

static __always_inline void count_tx(struct port *p, __u64 len)
{
	struct port_stats *s = stats_of(p);
	if (s) {
		s->tx_packets += 1;
		s->tx_bytes += len;
	}
}

/// Counts a connection the rule admits (called once, when its conntrack entry is created).
static __always_inline void count_rule(__u32 rule_id)
{
#ifdef NETDP_NO_COUNTERS
	return;
#endif
	if (!rule_id)
		return;
	struct rule_stats *r = bpf_map_lookup_elem(&rule_stats, &rule_id);
	if (!r)
		return;
	r->connections += 1;
}

static __always_inline int mac_eq(const __u8 *a, const __u8 *b)
{
	return a[0] == b[0] && a[1] == b[1] && a[2] == b[2] && a[3] == b[3] && a[4] == b[4] &&
	       a[5] == b[5];
}

static __always_inline void mac_copy(__u8 *dst, const __u8 *src)
{
	__builtin_memcpy(dst, src, 6);
}

/// Whether (mac, ip) is one of the port's addresses (fixed IPs or allowed address pairs).
static __always_inline int addr_allowed(__u32 ifindex, const __u8 *mac, __u32 ip)
{
	struct addr_key k = { .ifindex = ifindex, .ip = ip };
	mac_copy(k.mac, mac);
	return bpf_map_lookup_elem(&port_addrs, &k) != NULL;
}

/// RFC 1624 incremental update of a ones-complement checksum for one 16-bit word.
static __always_inline __u16 csum_replace2(__u16 csum, __u16 old, __u16 new)
{
	__u32 sum = (__u16)~csum + (__u16)~old + new;
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	return ~sum;
}

/// RFC 1624 incremental update for a 32-bit field (an address).
static __always_inline __u16 csum_replace4(__u16 csum, __u32 old, __u32 new)
{
	__u32 sum = (__u16)~csum;
	sum += (__u16)~(old & 0xffff) + (__u16)~(old >> 16);
	sum += (new & 0xffff) + (new >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	return ~sum;
}

/// The 5-tuple of an IPv4 packet, in wire byte order, plus the ICMP type/code.
struct flow {
	__u32 saddr;
	__u32 daddr;
	__u16 sport;
	__u16 dport;
	__u8 proto;
	__u8 tcp_flags;
	__u8 icmp_type;
	__u8 icmp_code;
	// ICMP errors: the connection they are about (as quoted, so in its original direction).
	__u8 related;
	__u8 inner_proto;
	__u16 inner_sport;
	__u16 inner_dport;
	__u32 inner_saddr;
	__u32 inner_daddr;
};

/// Whether one of `rules` allows the flow seen from a port in direction `dir`; returns the
/// matching rule id or 0.
static __always_inline __u32 rules_match(const struct sg_rules *rules, const struct flow *f,
					 __u8 dir, int any_proto)
{
	// The remote end: the destination for egress, the source for ingress.
	__u32 remote = dir == DIR_EGRESS ? f->daddr : f->saddr;
	__u16 lo, hi;
	if (f->proto == IPPROTO_ICMP) {
		lo = f->icmp_type;
		hi = f->icmp_code;
	} else {
		lo = bpf_ntohs(f->dport);
		hi = lo;
	}
	__u32 n = rules->n;
	for (__u32 i = 0; i < SG_MAX_RULES; i++) {
		if (i >= n)
			break;
		const struct sg_rule *r = &rules->r[i];
		if ((remote & r->remote_mask) != r->remote)
			continue;
		if (any_proto) {
			// Port ranges need a protocol (Neutron refuses them otherwise).
		} else if (f->proto == IPPROTO_ICMP) {
			// Neutron: port_range_min is the ICMP type, port_range_max the code.
			if (r->port_min != SG_ANY && r->port_min != lo)
				continue;
			if (r->port_max != SG_ANY && r->port_max != hi)
				continue;
		} else if (f->proto == IPPROTO_TCP || f->proto == IPPROTO_UDP) {
			if (lo < r->port_min || hi > r->port_max)
				continue;
		}
		return r->rule_id;
	}
	return 0;
}

/// The id of a rule of `port`'s groups allowing a new flow in `dir`, or 0.
static __always_inline __u32 sg_allows(__u32 port, const struct flow *f, __u8 dir)
{
	struct sg_key k = { .ifindex = port, .direction = dir, .proto = f->proto };
	struct sg_rules *rules = bpf_map_lookup_elem(&sg_rules, &k);
	__u32 id = 0;
	if (rules)
		id = rules_match(rules, f, dir, 0);
	if (id)
		return id;
	k.proto = 0; // rules for any protocol
	rules = bpf_map_lookup_elem(&sg_rules, &k);
	if (rules)
		id = rules_match(rules, f, dir, 1);
	return id;
}

#define NS_PER_SEC 1000000000ULL

// Idle timeouts of tracked connections and SNAT translations in ns, as Linux conntrack
// has them by default; the loader sets them (EbpfLoader::set_global) before the program
// is verified, so they are constants to it.
/// TCP once the other side answered, no FIN or RST seen (nf_conntrack_tcp_timeout_established).
const volatile __u64 ct_tcp_established = 432000 * NS_PER_SEC;
/// TCP opening (not answered yet) or closing (FIN seen).
const volatile __u64 ct_tcp_transient = 120 * NS_PER_SEC;
/// TCP after a RST.
const volatile __u64 ct_tcp_close = 10 * NS_PER_SEC;
/// UDP not answered.
const volatile __u64 ct_udp = 30 * NS_PER_SEC;
/// UDP answered.
const volatile __u64 ct_udp_stream = 120 * NS_PER_SEC;
/// ICMP (echo).
const volatile __u64 ct_icmp = 30 * NS_PER_SEC;
/// Any other protocol.
const volatile __u64 ct_other = 600 * NS_PER_SEC;

/// How long a connection of `proto` in state (`replied`, `tcp`) may stay idle.
static __always_inline __u64 ct_timeout(__u8 proto, __u8 replied, __u8 tcp)
{
	if (proto == IPPROTO_TCP) {
		if (tcp & CT_TCP_RST)
			return ct_tcp_close;
		if (tcp & CT_TCP_FIN)
			return ct_tcp_transient;
		return replied ? ct_tcp_established : ct_tcp_transient;
	}
	if (proto == IPPROTO_UDP)
		return replied ? ct_udp_stream : ct_udp;
	if (proto == IPPROTO_ICMP)
		return ct_icmp;
	return ct_other;
}

/// Whether an entry last seen at `last` has been idle past its timeout at `now` (another
/// CPU may have refreshed it after `now` was read: then it is not).
static __always_inline int ct_stale(__u64 now, __u64 last, __u8 proto, __u8 replied, __u8 tcp)
{
	return now > last && now - last > ct_timeout(proto, replied, tcp);
}

/// The CT_TCP_* flags a TCP segment adds to its connection's state (0 for others).
static __always_inline __u8 ct_tcp_flags(const struct flow *f)
{
	if (f->proto != IPPROTO_TCP)
		return 0;
	if (f->tcp_flags & TCP_FLAG_RST)
		return CT_TCP_RST;
	if (f->tcp_flags & TCP_FLAG_FIN)
		return CT_TCP_FIN;
	return 0;
}

enum fw_result { FW_ALLOW = 0, FW_DENY = 1, FW_INVALID = 2 };

/// Stateful firewall of one port for a flow crossing it in `dir`.
static __always_inline int firewall(__u32 port, const struct flow *f, __u8 dir)
{
	__u64 now = bpf_ktime_get_coarse_ns();
	if (f->related) {
		// An ICMP error is allowed only about a connection this port tracks, coming back
		// the other way (RELATED); otherwise it is INVALID.
		struct ct_key q = {
			.ifindex = port,
			.saddr = f->inner_saddr,
			.daddr = f->inner_daddr,
			.sport = f->inner_sport,
			.dport = f->inner_dport,
			.proto = f->inner_proto,
		};
		struct ct_val *rv = bpf_map_lookup_elem(&conntrack, &q);
		if (rv && rv->dir != dir &&
		    !ct_stale(now, rv->last_seen, f->inner_proto, rv->replied, rv->tcp))
			return FW_ALLOW;
		// Or about a reply of a connection this port tracks: the quote is the tracked
		// tuple reversed, and the error travels the way the connection was opened.
		struct ct_key qr = {
			.ifindex = port,
			.saddr = f->inner_daddr,
			.daddr = f->inner_saddr,
			.sport = f->inner_dport,
			.dport = f->inner_sport,
			.proto = f->inner_proto,
		};
		rv = bpf_map_lookup_elem(&conntrack, &qr);
		if (rv && rv->dir == dir &&
		    !ct_stale(now, rv->last_seen, f->inner_proto, rv->replied, rv->tcp))
			return FW_ALLOW;
		return FW_INVALID;
	}
	struct ct_key k = {
		.ifindex = port,
		.saddr = f->saddr,
		.daddr = f->daddr,
		.sport = f->sport,
		.dport = f->dport,
		.proto = f->proto,
	};
	__u8 teardown = ct_tcp_flags(f);
	// A connection idle past its timeout is forgotten: its packets must start a new one.
	struct ct_val *v = bpf_map_lookup_elem(&conntrack, &k);
	if (v && v->dir == dir && !ct_stale(now, v->last_seen, f->proto, v->replied, v->tcp)) {
		v->last_seen = now;
		if (teardown)
			v->tcp |= teardown;
		else if (v->tcp && (f->tcp_flags & (TCP_FLAG_SYN | TCP_FLAG_ACK)) == TCP_FLAG_SYN &&
			 f->proto == IPPROTO_TCP)
			v->tcp = v->replied = 0; // the tuple opens again after a teardown
		return FW_ALLOW;
	}
	struct ct_key r = {
		.ifindex = port,
		.saddr = f->daddr,
		.daddr = f->saddr,
		.sport = f->dport,
		.dport = f->sport,
		.proto = f->proto,
	};
	v = bpf_map_lookup_elem(&conntrack, &r);
	if (v && v->dir != dir && !ct_stale(now, v->last_seen, f->proto, v->replied, v->tcp)) {
		v->last_seen = now;
		if (!v->replied)
			v->replied = 1;
		if (teardown)
			v->tcp |= teardown;
		return FW_ALLOW;
	}
	// A new connection: TCP must open with a SYN; ICMP only with requests.
	if (f->proto == IPPROTO_TCP && (f->tcp_flags & (TCP_FLAG_SYN | TCP_FLAG_ACK | TCP_FLAG_RST)) != TCP_FLAG_SYN)
		return FW_INVALID;
	if (f->proto == IPPROTO_ICMP && f->icmp_type == ICMP_ECHOREPLY)
		return FW_INVALID;
	__u32 rule = sg_allows(port, f, dir);
	if (!rule)
		return FW_DENY;
	struct ct_val nv = { .rule_id = rule, .dir = dir, .last_seen = now, .tcp = teardown };
	bpf_map_update_elem(&conntrack, &k, &nv, BPF_ANY);
	count_rule(rule);
	return FW_ALLOW;
}

#define PARSE_OK -1

#define DHCP_SERVER_PORT_BE bpf_htons(67)
#define DHCP_CLIENT_PORT_BE bpf_htons(68)

/// A DHCP client message (to a server), which the slow path answers for DHCP ports.
static __always_inline int is_dhcp_request(const struct flow *f)
{
	return f->proto == IPPROTO_UDP && f->dport == DHCP_SERVER_PORT_BE &&
	       f->sport == DHCP_CLIENT_PORT_BE;
}

/// Parses the IPv4 header at `ip` into `f`; returns PARSE_OK, or a drop reason.
static __always_inline int parse_ipv4(struct iphdr *ip, void *data_end, struct flow *f)
{
	if ((void *)(ip + 1) > data_end)
		return DROP_MALFORMED;
	if (ip->ihl < 5 || ip->version != 4)
		return DROP_MALFORMED;
	f->saddr = ip->saddr;
	f->daddr = ip->daddr;
	f->proto = ip->protocol;
	if (ip->frag_off & bpf_htons(0x1fff))
		return DROP_FRAGMENT;
	void *l4 = (void *)ip + ip->ihl * 4;
	if (f->proto == IPPROTO_TCP) {
		struct tcphdr *t = l4;
		if ((void *)(t + 1) > data_end)
			return DROP_MALFORMED;
		f->sport = t->source;
		f->dport = t->dest;
		f->tcp_flags = ((__u8 *)t)[13];
	} else if (f->proto == IPPROTO_UDP) {
		struct udphdr *u = l4;
		if ((void *)(u + 1) > data_end)
			return DROP_MALFORMED;
		f->sport = u->source;
		f->dport = u->dest;
	} else if (f->proto == IPPROTO_ICMP) {
		struct icmp_echo *c = l4;
		if ((void *)(c + 1) > data_end)
			return DROP_MALFORMED;
		f->icmp_type = c->type;
		f->icmp_code = c->code;
		if (c->type == ICMP_ECHO || c->type == ICMP_ECHOREPLY) {
			f->sport = c->id;
			f->dport = c->id;
		} else if (c->type == ICMP_DEST_UNREACH || c->type == ICMP_TIME_EXCEEDED ||
			   c->type == ICMP_PARAMETERPROB) {
			// The quoted header: IPv4 without options plus 8 bytes of L4.
			struct iphdr *in = (void *)(c + 1);
			if ((void *)(in + 1) + 8 > data_end || in->ihl != 5)
				return DROP_MALFORMED;
			__u16 *ports = (void *)(in + 1);
			f->related = 1;
			f->inner_proto = in->protocol;
			f->inner_saddr = in->saddr;
			f->inner_daddr = in->daddr;
			if (in->protocol == IPPROTO_ICMP) {
				// An error about an echo: the id is the "port" both ways.
				f->inner_sport = ports[2];
				f->inner_dport = ports[2];
			} else {
				f->inner_sport = ports[0];
				f->inner_dport = ports[1];
			}
		}
	}
	return PARSE_OK;
}

/// Whether gateway SNAT may translate a flow leaving through the gateway: TCP, UDP and
/// ICMP echo requests (the echo id plays the port).
static __always_inline int snat_outbound_ok(const struct flow *f)
{
	return f->proto == IPPROTO_TCP || f->proto == IPPROTO_UDP ||
	       (f->proto == IPPROTO_ICMP && f->icmp_type == ICMP_ECHO);
}

/// Outbound gateway SNAT: the flow leaves from the router's gateway address `gw` and a
/// port that no other connection to the same remote end uses on it (its own port when
/// free, else a random one from 1024 up). Returns 0, or -1 when no port could be had.
static __always_inline int snat_outbound(__u32 router_id, __u32 gw, const struct flow *f,
					 struct flow *out)
{
	int icmp = f->proto == IPPROTO_ICMP;
	__u16 rport = icmp ? 0 : f->dport;
	struct snat_key ok = { .router_id = router_id,
			       .local_ip = f->saddr,
			       .remote_ip = f->daddr,
			       .local_port = f->sport,
			       .remote_port = rport,
			       .proto = f->proto };
	struct snat_key ik = { .router_id = router_id,
			       .local_ip = gw,
			       .remote_ip = f->daddr,
			       .remote_port = rport,
			       .proto = f->proto };
	__u64 now = bpf_ktime_get_coarse_ns();
	__u8 teardown = ct_tcp_flags(f);
	struct snat_val back = { .ip = f->saddr, .port = f->sport, .tcp = teardown, .last_seen = now };
	__u16 port = 0;
	struct snat_val *v = bpf_map_lookup_elem(&snat_out, &ok);
	if (v && v->ip == gw) {
		// Known connection: its inbound half must still point back at it (the LRU may
		// have evicted it, and another connection may have taken the port since).
		ik.local_port = v->port;
		struct snat_val *b = bpf_map_lookup_elem(&snat_in, &ik);
		if (b && b->ip == back.ip && b->port == back.port) {
			// Still ours. Timed out, it starts over as a new connection (replies to it
			// were refused meanwhile).
			if (ct_stale(now, b->last_seen, f->proto, b->replied, b->tcp)) {
				b->replied = 0;
				b->tcp = 0;
			}
			b->last_seen = now;
			if (teardown)
				b->tcp |= teardown;
			port = v->port;
		} else if (!b && bpf_map_update_elem(&snat_in, &ik, &back, BPF_NOEXIST) == 0) {
			port = v->port;
		}
	}
	if (!port) {
		__u16 want = f->sport;
		for (int i = 0; i < 8; i++) {
			if (i > 0 || !want)
				want = bpf_htons(1024 + bpf_get_prandom_u32() % (65536 - 1024));
			ik.local_port = want;
			if (bpf_map_update_elem(&snat_in, &ik, &back, BPF_NOEXIST) == 0) {
				port = want;
				break;
			}
		}
		if (!port)
			return -1;
		struct snat_val nv = { .ip = gw, .port = port, .last_seen = now };
		bpf_map_update_elem(&snat_out, &ok, &nv, BPF_ANY);
	}
	out->saddr = gw;
	out->sport = port;
	if (icmp)
		out->dport = port;
	return 0;
}

/// Inbound gateway SNAT: a reply to the router's gateway address and a NAT port goes back
/// to the fixed IP and port that opened the connection. Returns whether it matched.
static __always_inline int snat_inbound(__u32 router_id, const struct flow *f, struct flow *out)
{
	int icmp = f->proto == IPPROTO_ICMP;
	if (!(f->proto == IPPROTO_TCP || f->proto == IPPROTO_UDP ||
	      (icmp && f->icmp_type == ICMP_ECHOREPLY)))
		return 0;
	struct snat_key ik = { .router_id = router_id,
			       .local_ip = f->daddr,
			       .remote_ip = f->saddr,
			       .local_port = f->dport,
			       .remote_port = icmp ? 0 : f->sport,
			       .proto = f->proto };
	struct snat_val *v = bpf_map_lookup_elem(&snat_in, &ik);
	if (!v)
		return 0;
	// A translation idle past its timeout lets nothing in.
	__u64 now = bpf_ktime_get_coarse_ns();
	if (ct_stale(now, v->last_seen, f->proto, v->replied, v->tcp))
		return 0;
	v->last_seen = now;
	if (!v->replied)
		v->replied = 1;
	__u8 teardown = ct_tcp_flags(f);
	if (teardown)
		v->tcp |= teardown;
	out->daddr = v->ip;
	out->dport = v->port;
	if (icmp)
		out->sport = v->port;
	return 1;
}

/// Inbound gateway SNAT for an ICMP error about a translated connection (a
/// fragmentation-needed on the way out, say): the quoted header names the gateway address
/// and NAT port; the error goes to the fixed IP and the quote is translated back. Returns
/// whether it matched.
static __always_inline int snat_inbound_related(__u32 router_id, const struct flow *f,
						struct flow *out)
{
	int icmp = f->inner_proto == IPPROTO_ICMP;
	if (!(f->inner_proto == IPPROTO_TCP || f->inner_proto == IPPROTO_UDP || icmp))
		return 0;
	if (f->daddr != f->inner_saddr)
		return 0;
	struct snat_key ik = { .router_id = router_id,
			       .local_ip = f->inner_saddr,
			       .remote_ip = f->inner_daddr,
			       .local_port = f->inner_sport,
			       .remote_port = icmp ? 0 : f->inner_dport,
			       .proto = f->inner_proto };
	struct snat_val *v = bpf_map_lookup_elem(&snat_in, &ik);
	if (!v || ct_stale(bpf_ktime_get_coarse_ns(), v->last_seen, f->inner_proto, v->replied,
			   v->tcp))
		return 0;
	out->daddr = v->ip;
	out->inner_saddr = v->ip;
	out->inner_sport = v->port;
	if (icmp)
		out->inner_dport = v->port;
	return 1;
}

/// Outbound gateway SNAT for an ICMP error a port sends about a packet that reached it
/// through a translation (a port-unreachable for a reply to its own connection, say): the
/// quote names the fixed IP and port the reply was translated to; the error leaves from the
/// gateway address and its quote names the gateway address and NAT port the remote end
/// sent to. Errors about untranslated traffic are left alone. Returns whether it matched.
static __always_inline int snat_outbound_related(__u32 router_id, __u32 gw, const struct flow *f,
						 struct flow *out)
{
	if (!(f->inner_proto == IPPROTO_TCP || f->inner_proto == IPPROTO_UDP))
		return 0;
	if (f->saddr != f->inner_daddr)
		return 0;
	// The quoted packet travelled remote -> fixed IP: the connection's outbound key is
	// the quote reversed.
	struct snat_key ok = { .router_id = router_id,
			       .local_ip = f->inner_daddr,
			       .remote_ip = f->inner_saddr,
			       .local_port = f->inner_dport,
			       .remote_port = f->inner_sport,
			       .proto = f->inner_proto };
	struct snat_val *v = bpf_map_lookup_elem(&snat_out, &ok);
	if (!v || v->ip != gw)
		return 0;
	// Only while the translation is live (the inbound half still points back here).
	struct snat_key ik = ok;
	ik.local_ip = gw;
	ik.local_port = v->port;
	struct snat_val *b = bpf_map_lookup_elem(&snat_in, &ik);
	if (!b || b->ip != f->inner_daddr || b->port != f->inner_dport ||
	    ct_stale(bpf_ktime_get_coarse_ns(), b->last_seen, f->inner_proto, b->replied, b->tcp))
		return 0;
	out->saddr = gw;
	out->inner_daddr = gw;
	out->inner_dport = v->port;
	return 1;
}

/// Answers an ARP request in place: the frame becomes the reply, sent back out of the port.
static __always_inline int arp_reply(CTX *ctx, struct ethhdr *eth, struct arp_eth *arp,
				     const __u8 *mac, __u32 in_port, struct port *inp)
{
	__u8 spa[4];
	__builtin_memcpy(spa, arp->spa, 4);
	mac_copy(eth->h_dest, eth->h_source);
	mac_copy(eth->h_source, mac);
	arp->oper = bpf_htons(2);
	mac_copy(arp->tha, arp->sha);
	__builtin_memcpy(arp->spa, arp->tpa, 4);
	__builtin_memcpy(arp->tpa, spa, 4);
	mac_copy(arp->sha, mac);
	struct port_stats *s = stats_of(inp);
	if (s)
		s->arp_replies += 1;
	count_tx(inp, hook_len(ctx));
	return hook_redirect(ctx, in_port, in_port);
}

static __always_inline __u16 csum_fold(__s64 csum)
{
	__u32 sum = (__u32)csum;
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	return ~sum;
}

#define ICMP_ERROR_LEN (14 + 20 + 8 + 28)

/// Turns the frame into the ICMP error a Linux router would send back to its source (from
/// the router's address on the ingress network, quoting the IP header and 8 bytes), and
/// sends it back out of the ingress port. Never answers ICMP other than echo requests,
/// nor packets with IP options.
static __always_inline int icmp_error(CTX *ctx, __u32 in_port, struct port *inp, __u8 type,
				      __u8 code, __u32 router_ip, __u32 reason)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	struct iphdr *ip = (void *)(eth + 1);
	__u8 quote[28];
	__u8 peer[6], router_mac[6];

	drop(inp, reason);
	if ((void *)ip + sizeof(quote) > data_end || ip->ihl != 5 || !router_ip)
		return VERDICT_DROP;
	if (ip->protocol == IPPROTO_ICMP && ((__u8 *)ip)[20] != ICMP_ECHO)
		return VERDICT_DROP;
	__builtin_memcpy(quote, ip, sizeof(quote));
	mac_copy(peer, eth->h_source);
	mac_copy(router_mac, eth->h_dest);
	__u32 dst_ip = ip->saddr;
	if (hook_resize(ctx, ICMP_ERROR_LEN) < 0)
		return VERDICT_DROP;

	data = (void *)(long)ctx->data;
	data_end = (void *)(long)ctx->data_end;
	eth = data;
	if ((void *)eth + ICMP_ERROR_LEN > data_end)
		return VERDICT_DROP;
	mac_copy(eth->h_dest, peer);
	mac_copy(eth->h_source, router_mac);
	eth->h_proto = ETH_P_IP_BE;
	ip = (void *)(eth + 1);
	ip->version = 4;
	ip->ihl = 5;
	ip->tos = 0xc0;
	ip->tot_len = bpf_htons(ICMP_ERROR_LEN - 14);
	ip->id = 0;
	ip->frag_off = 0;
	ip->ttl = 64;
	ip->protocol = IPPROTO_ICMP;
	ip->check = 0;
	ip->saddr = router_ip;
	ip->daddr = dst_ip;
	ip->check = csum_fold(bpf_csum_diff(0, 0, (__be32 *)ip, 20, 0));
	struct icmp_echo *ic = (void *)(ip + 1);
	ic->type = type;
	ic->code = code;
	ic->checksum = 0;
	ic->id = 0;
	ic->seq = 0;
	__builtin_memcpy((void *)(ic + 1), quote, sizeof(quote));
	ic->checksum = csum_fold(bpf_csum_diff(0, 0, (__be32 *)ic, 8 + sizeof(quote), 0));
	struct port_stats *s = stats_of(inp);
	if (s)
		s->icmp_errors += 1;
	count_tx(inp, ICMP_ERROR_LEN);
	return hook_redirect(ctx, in_port, in_port);
}

#ifdef NETDP_TC
/// Floods a broadcast frame to every other port of the network, then drops the original.
static __always_inline int flood(CTX *ctx, __u32 net_id, __u32 in_port, struct port *inp)
{
	struct network *net = bpf_map_lookup_elem(&networks, &net_id);
	if (!net)
		return drop(inp, DROP_NO_NETWORK);
	__u32 n = net->nports;
	for (__u32 i = 0; i < NET_MAX_PORTS; i++) {
		if (i >= n)
			break;
		__u32 ifindex = net->ports[i];
		if (!ifindex || ifindex == in_port)
			continue;
		if (bpf_clone_redirect(ctx, ifindex, 0) == 0)
			count_tx(port_of(ifindex), ctx->len);
	}
	struct port_stats *s = stats_of(inp);
	if (s)
		s->flooded += 1;
	return TC_ACT_SHOT;
}
#else
/// XDP cannot clone: broadcasts other than answered ARP go to the slow path.
static __always_inline int flood(CTX *ctx, __u32 net_id, __u32 in_port, struct port *inp)
{
	(void)ctx;
	(void)net_id;
	(void)in_port;
	struct port_stats *s = stats_of(inp);
	if (s)
		s->flooded += 1;
	return XDP_PASS;
}
#endif

/// The whole datapath for one frame.
static __always_inline int netdp_forward(CTX *ctx)
{
	hook_pull(ctx);
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	__u32 in_port = hook_in_port(ctx);

	struct port *inp = port_of(in_port);
	if (!inp)
		return VERDICT_PASS; // not one of ours (uplink, host interface)
	__u32 net_id = inp->net_id;
	__u8 secure = inp->port_security;
	__u8 dhcp = inp->flags & PORT_F_DHCP;

	// This CPU's counters of the port came with its lookup. Past this point the pointer
	// is not kept: paths that count again (drops, ARP, ICMP errors, floods; all off the
	// forwarding path) look the port up again, so the forwarding path holds one register
	// less across its helper calls.
	struct port_stats *st = stats_of(inp);
	if (st) {
		st->rx_packets += 1;
		st->rx_bytes += hook_len(ctx);
	}

	struct ethhdr *eth = data;
	if ((void *)(eth + 1) > data_end)
		return drop(port_of(in_port), DROP_MALFORMED);
	if (eth->h_source[0] & 1)
		return drop(port_of(in_port), DROP_SPOOF_MAC);

	if (eth->h_proto == ETH_P_ARP_BE) {
		struct arp_eth *arp = (void *)(eth + 1);
		if ((void *)(arp + 1) > data_end)
			return drop(port_of(in_port), DROP_MALFORMED);
		if (arp->htype != bpf_htons(1) || arp->ptype != ETH_P_IP_BE || arp->hlen != 6 ||
		    arp->plen != 4)
			return drop(port_of(in_port), DROP_MALFORMED);
		__u32 spa, tpa;
		__builtin_memcpy(&spa, arp->spa, 4);
		__builtin_memcpy(&tpa, arp->tpa, 4);
		if (secure) {
			if (!mac_eq(arp->sha, eth->h_source) ||
			    !addr_allowed(in_port, arp->sha, spa))
				return drop(port_of(in_port), DROP_SPOOF_ARP);
		}
		if (arp->oper == bpf_htons(1)) {
			struct neigh_key nk = { .net_id = net_id, .ip = tpa };
			struct neigh *nb = bpf_map_lookup_elem(&neighbors, &nk);
			if (nb)
				return arp_reply(ctx, eth, arp, nb->mac, in_port, port_of(in_port));
			if (eth->h_dest[0] & 1)
				return flood(ctx, net_id, in_port, port_of(in_port));
		}
		// ARP replies and unicast requests go through the FDB like any unicast.
	} else if (eth->h_proto != ETH_P_IP_BE) {
		if (secure)
			return drop(port_of(in_port), DROP_ETHERTYPE);
	}

	if (secure && eth->h_proto != ETH_P_ARP_BE) {
		__u32 src_ip = 0;
		if (eth->h_proto == ETH_P_IP_BE) {
			struct iphdr *ip = (void *)(eth + 1);
			if ((void *)(ip + 1) > data_end)
				return drop(port_of(in_port), DROP_MALFORMED);
			src_ip = ip->saddr;
		}
		if (!addr_allowed(in_port, eth->h_source, src_ip))
			return drop(port_of(in_port), src_ip && addr_allowed(in_port, eth->h_source, 0) ?
						      DROP_SPOOF_IP :
						      DROP_SPOOF_MAC);
	}

	if (eth->h_dest[0] & 1) {
		// Broadcast/multicast other than ARP requests: DHCP discovers and requests of DHCP
		// ports go to the slow path, the rest is flooded.
		if (dhcp && eth->h_proto == ETH_P_IP_BE) {
			struct flow bf = {};
			if (parse_ipv4((void *)(eth + 1), data_end, &bf) == PARSE_OK &&
			    is_dhcp_request(&bf))
				return hook_punt(ctx, in_port, port_of(in_port));
		}
		return flood(ctx, net_id, in_port, port_of(in_port));
	}

	struct l2_key fk = { .net_id = net_id };
	mac_copy(fk.mac, eth->h_dest);
	struct fdb_entry *fe = bpf_map_lookup_elem(&fdb, &fk);
	if (!fe)
		return drop(port_of(in_port), DROP_UNKNOWN_DST);
	__u32 out_port = fe->ifindex;
	__u32 router_id = fe->router_id;
	__u32 router_ip = fe->ip;

	if (eth->h_proto != ETH_P_IP_BE) {
		if (router_id)
			return drop(port_of(in_port), DROP_ETHERTYPE);
		count_tx(port_of(out_port), hook_len(ctx));
		return hook_redirect(ctx, out_port, in_port);
	}

	struct iphdr *ip = (void *)(eth + 1);
	struct flow f = {};
	int bad = parse_ipv4(ip, data_end, &f);
	if (bad != PARSE_OK)
		return drop(port_of(in_port), bad);
	// The parse above re-derived pointers; re-check for the verifier.
	if ((void *)(ip + 1) > data_end)
		return drop(port_of(in_port), DROP_MALFORMED);
	// Unicast DHCP (renewals to the server's address) goes to the slow path too.
	if (dhcp && is_dhcp_request(&f))
		return hook_punt(ctx, in_port, port_of(in_port));
	if (router_id && st)
		st->routed += 1; // IPv4 to a router: routed, or answered or dropped by it

	// The flow as the destination port sees it (after floating-IP NAT).
	struct flow out_f = f;
	__u32 l4_off = 0;
	if (router_id) {
		// Floating IP inbound: DNAT to the fixed IP before routing.
		struct nat_key dk = { .router_id = router_id, .ip = f.daddr };
		__u32 *fixed = bpf_map_lookup_elem(&fip_dnat, &dk);
		if (fixed) {
			out_f.daddr = *fixed;
			// An ICMP error quoting a packet that left from the floating IP.
			if (f.related && f.inner_saddr == f.daddr)
				out_f.inner_saddr = *fixed;
		} else if (f.daddr == router_ip) {
			// Addressed to the router's own interface: on its gateway, that is a reply
			// (or an ICMP error) for a gateway-SNATed connection. Other routed traffic
			// never pays for the lookup.
			if (f.related)
				snat_inbound_related(router_id, &f, &out_f);
			else
				snat_inbound(router_id, &f, &out_f);
		}
		struct route_key rk = { .prefixlen = 64, .router_id = router_id, .addr = out_f.daddr };
		struct route *rt = bpf_map_lookup_elem(&routes, &rk);
		if (!rt)
			return icmp_error(ctx, in_port, port_of(in_port), ICMP_DEST_UNREACH, 0, router_ip,
					  DROP_NO_ROUTE);
		if (ip->ttl <= 1)
			return icmp_error(ctx, in_port, port_of(in_port), ICMP_TIME_EXCEEDED, 0, router_ip, DROP_TTL);
		if (rt->flags & ROUTE_EXTERNAL) {
			// Out of the gateway: SNAT to the port's floating IP.
			struct nat_key sk = { .router_id = router_id, .ip = f.saddr };
			__u32 *fip = bpf_map_lookup_elem(&fip_snat, &sk);
			if (fip) {
				out_f.saddr = *fip;
				// An ICMP error the port sends about a packet that came in through
				// its floating IP: the quote names the floating IP again.
				if (f.related && f.inner_daddr == f.saddr)
					out_f.inner_daddr = *fip;
			} else {
				// No floating IP: the router's gateway SNAT, if it does SNAT.
				__u32 *gw = bpf_map_lookup_elem(&router_snat, &router_id);
				if (gw && f.related) {
					snat_outbound_related(router_id, *gw, &f, &out_f);
				} else if (gw && f.saddr != *gw && out_f.daddr != *gw &&
					   snat_outbound_ok(&f) &&
					   snat_outbound(router_id, *gw, &f, &out_f) < 0) {
					// Traffic to the gateway address itself is never translated
					// (above): an unmatched reply to it opens no translation.
					return drop(port_of(in_port), DROP_NAT_EXHAUSTED);
				}
			}
		}
		struct neigh_key nk = { .net_id = rt->net_id,
					.ip = rt->nexthop ? rt->nexthop : out_f.daddr };
		struct neigh *nb = bpf_map_lookup_elem(&neighbors, &nk);
		if (!nb)
			return icmp_error(ctx, in_port, port_of(in_port), ICMP_DEST_UNREACH, 1, router_ip,
					  DROP_NO_NEIGH);
		struct l2_key ok = { .net_id = rt->net_id };
		mac_copy(ok.mac, nb->mac);
		struct fdb_entry *oe = bpf_map_lookup_elem(&fdb, &ok);
		if (!oe || oe->router_id)
			return drop(port_of(in_port), DROP_NO_NEIGH);
		out_port = oe->ifindex;
		mac_copy(eth->h_dest, nb->mac);
		mac_copy(eth->h_source, rt->mac);
		__u16 old = *(__u16 *)&ip->ttl;
		ip->ttl -= 1;
		__u16 new = *(__u16 *)&ip->ttl;
		ip->check = csum_replace2(ip->check, old, new);
		if (out_f.saddr != f.saddr) {
			ip->saddr = out_f.saddr;
			ip->check = csum_replace4(ip->check, f.saddr, out_f.saddr);
		}
		if (out_f.daddr != f.daddr) {
			ip->daddr = out_f.daddr;
			ip->check = csum_replace4(ip->check, f.daddr, out_f.daddr);
		}
		if (out_f.sport != f.sport || out_f.dport != f.dport) {
			// Gateway SNAT changed a port (TCP/UDP) or the echo id (ICMP).
			__u16 *l4p = (void *)ip + ip->ihl * 4;
			if ((void *)(l4p + 4) > data_end)
				return drop(port_of(in_port), DROP_MALFORMED);
			if (f.proto == IPPROTO_ICMP) {
				l4p[1] = csum_replace2(l4p[1], l4p[2], out_f.sport);
				l4p[2] = out_f.sport;
			} else {
				l4p[0] = out_f.sport;
				l4p[1] = out_f.dport;
			}
		}
		if (f.related && (out_f.inner_saddr != f.inner_saddr ||
				  out_f.inner_sport != f.inner_sport ||
				  out_f.inner_daddr != f.inner_daddr ||
				  out_f.inner_dport != f.inner_dport)) {
			// Translate the quoted header; the ICMP checksum covers it. One base
			// pointer, constant offsets: ICMP checksum at 2, quoted IP checksum at 18,
			// its source at 20, destination at 24, the quoted ports at 28 and 30 (ICMP
			// echo id at 32).
			__u8 *l4b = (void *)ip + ip->ihl * 4;
			asm volatile("" : "+r"(l4b));
			if ((void *)(l4b + 36) > data_end)
				return drop(port_of(in_port), DROP_MALFORMED);
			__u16 *icsum = (__u16 *)(l4b + 2);
			__u16 *qcheck = (__u16 *)(l4b + 18);
			if (out_f.inner_saddr != f.inner_saddr) {
				__u16 old = *qcheck;
				__u16 new = csum_replace4(old, f.inner_saddr, out_f.inner_saddr);
				*qcheck = new;
				*(__u32 *)(l4b + 20) = out_f.inner_saddr;
				__u16 c = csum_replace4(*icsum, f.inner_saddr, out_f.inner_saddr);
				*icsum = csum_replace2(c, old, new);
			}
			if (out_f.inner_daddr != f.inner_daddr) {
				__u16 old = *qcheck;
				__u16 new = csum_replace4(old, f.inner_daddr, out_f.inner_daddr);
				*qcheck = new;
				*(__u32 *)(l4b + 24) = out_f.inner_daddr;
				__u16 c = csum_replace4(*icsum, f.inner_daddr, out_f.inner_daddr);
				*icsum = csum_replace2(c, old, new);
			}
			if (out_f.inner_sport != f.inner_sport) {
				__u16 *qp = (__u16 *)(l4b + (f.inner_proto == IPPROTO_ICMP ? 32 : 28));
				if ((void *)(qp + 1) > data_end)
					return drop(port_of(in_port), DROP_MALFORMED);
				*icsum = csum_replace2(*icsum, *qp, out_f.inner_sport);
				*qp = out_f.inner_sport;
			}
			if (out_f.inner_dport != f.inner_dport) {
				__u16 *qp = (__u16 *)(l4b + (f.inner_proto == IPPROTO_ICMP ? 32 : 30));
				if ((void *)(qp + 1) > data_end)
					return drop(port_of(in_port), DROP_MALFORMED);
				*icsum = csum_replace2(*icsum, *qp, out_f.inner_dport);
				*qp = out_f.inner_dport;
			}
		}
		if (f.proto == IPPROTO_TCP)
			l4_off = 14 + ip->ihl * 4 + 16;
		else if (f.proto == IPPROTO_UDP)
			l4_off = 14 + ip->ihl * 4 + 6;
	}

	if (secure) {
		int fw = firewall(in_port, &f, DIR_EGRESS);
		if (fw == FW_INVALID)
			return drop(port_of(in_port), DROP_CT_INVALID);
		if (fw == FW_DENY)
			return drop(port_of(in_port), DROP_SG_EGRESS);
	}
	struct port *dst = port_of(out_port);
	if (dst && dst->port_security) {
		int fw = firewall(out_port, &out_f, DIR_INGRESS);
		if (fw == FW_INVALID)
			return drop(port_of(in_port), DROP_CT_INVALID);
		if (fw == FW_DENY)
			return drop(port_of(in_port), DROP_SG_INGRESS);
	}
	// L4 checksums last: the tc helper invalidates packet pointers.
	if (l4_off) {
		int udp = f.proto == IPPROTO_UDP;
		if (out_f.saddr != f.saddr)
			hook_l4_csum(ctx, l4_off, f.saddr, out_f.saddr, udp);
		if (out_f.daddr != f.daddr)
			hook_l4_csum(ctx, l4_off, f.daddr, out_f.daddr, udp);
		if (out_f.sport != f.sport)
			hook_l4_csum_port(ctx, l4_off, f.sport, out_f.sport, udp);
		if (out_f.dport != f.dport)
			hook_l4_csum_port(ctx, l4_off, f.dport, out_f.dport, udp);
	}
	// The length read again rather than kept: one register less across the helper calls
	// (no packet-changing helper ran since: the L4 checksum fix-ups keep the length).
	count_tx(dst, hook_len(ctx));
	return hook_deliver(ctx, out_port, in_port, dst ? dst->flags : 0);
}

#endif
