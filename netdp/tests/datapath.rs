//! Every datapath decision, run in the kernel with `BPF_PROG_TEST_RUN` on crafted frames.
//! Each test loads its own instance (test runs mutate the real maps).

#[path = "support/frames.rs"]
#[allow(dead_code)]
mod frames;
#[path = "support/pins.rs"]
mod pins;

use std::net::Ipv4Addr;

use frames::*;
use netdp::datapath::{Datapath, Direction, DropReason, Hook, PortSpec, RuleSpec, Timeouts};
use pins::PinDir;

const TC_ACT_SHOT: u32 = 2;
const TC_ACT_OK: u32 = 0;
const TC_ACT_REDIRECT: u32 = 7;
const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const XDP_TX: u32 = 3;
const XDP_REDIRECT: u32 = 4;

const A: u32 = 10;
const B: u32 = 11;
const C: u32 = 20;
const MAC_A: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0a];
const MAC_B: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0b];
const MAC_C: [u8; 6] = [0x02, 0, 0, 0, 0, 0x14];
const MAC_R1: [u8; 6] = [0x02, 0, 0, 0, 0x01, 0x01];
const MAC_R2: [u8; 6] = [0x02, 0, 0, 0, 0x01, 0x02];
const IP_A: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 10);
const IP_B: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 11);
const IP_C: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 20);
const GW1: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
const GW2: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 1);

fn privileged() -> bool {
    caps::require_all(&[caps::Capability::Root, caps::Capability::Bpf])
}

fn port(ifindex: u32, net_id: u32, mac: [u8; 6], ip: Ipv4Addr) -> PortSpec {
    PortSpec {
        ifindex,
        net_id,
        mac,
        ips: vec![ip],
        port_security: true,
        allowed_address_pairs: vec![],
        dhcp: false,
        peer: false,
    }
}

fn allow_all(id: u32, direction: Direction) -> RuleSpec {
    RuleSpec {
        id,
        direction,
        protocol: None,
        port_range: None,
        remote: None,
    }
}

/// Network 1 holds A and B, network 2 holds C; router 1 joins them. Every port may send
/// anything out; nothing is allowed in unless a test adds it.
fn topology(hook: Hook) -> Datapath {
    topology_with(hook, Timeouts::default())
}

/// [`topology`] with other connection timeouts.
fn topology_with(hook: Hook, timeouts: Timeouts) -> Datapath {
    let mut dp = Datapath::load_configured(hook, None, timeouts).expect("load datapath");
    dp.set_port(&port(A, 1, MAC_A, IP_A)).unwrap();
    dp.set_port(&port(B, 1, MAC_B, IP_B)).unwrap();
    dp.set_port(&port(C, 2, MAC_C, IP_C)).unwrap();
    dp.add_router_interface(1, 1, MAC_R1, GW1, (Ipv4Addr::new(10, 0, 0, 0), 24))
        .unwrap();
    dp.add_router_interface(1, 2, MAC_R2, GW2, (Ipv4Addr::new(10, 0, 1, 0), 24))
        .unwrap();
    for (i, p) in [A, B, C].into_iter().enumerate() {
        dp.set_port_rules(p, &[allow_all(100 + i as u32, Direction::Egress)])
            .unwrap();
    }
    dp
}

/// Lets everything out of and into `port` (rules 1 and 2).
fn open_port(dp: &mut Datapath, port: u32) {
    dp.set_port_rules(
        port,
        &[
            allow_all(1, Direction::Egress),
            allow_all(2, Direction::Ingress),
        ],
    )
    .unwrap();
}

fn ping(src_mac: [u8; 6], dst_mac: [u8; 6], src: Ipv4Addr, dst: Ipv4Addr) -> Vec<u8> {
    ipv4(dst_mac, src_mac, src, dst, ICMP, 64, &icmp_echo(8, 7, 1))
}

fn drops(dp: &Datapath, port: u32, reason: DropReason) -> u64 {
    dp.port_counters(port).unwrap().drops(reason)
}

#[test]
fn l2_unicast_is_redirected_to_the_port_owning_the_mac() {
    if !privileged() {
        return;
    }
    let mut dp = topology(Hook::Tc);
    open_port(&mut dp, B);
    let frame = ping(MAC_A, MAC_B, IP_A, IP_B);
    let (verdict, out) = dp.test_run(&frame, A).unwrap();
    assert_eq!(verdict, TC_ACT_REDIRECT);
    assert_eq!(out, frame, "switching must not touch the frame");
    let b = dp.port_counters(B).unwrap();
    assert_eq!(b.0.tx_packets, 1);
    assert_eq!(dp.port_counters(A).unwrap().0.rx_packets, 1);
    assert_eq!(dp.port_counters(C).unwrap().0.tx_packets, 0);
}

#[test]
fn unknown_unicast_is_dropped_not_flooded() {
    if !privileged() {
        return;
    }
    let dp = topology(Hook::Tc);
    let frame = ping(MAC_A, [0x02, 0, 0, 0, 0, 0x99], IP_A, IP_B);
    assert_eq!(dp.test_run(&frame, A).unwrap().0, TC_ACT_SHOT);
    assert_eq!(drops(&dp, A, DropReason::UnknownDestination), 1);
    assert_eq!(dp.port_counters(A).unwrap().0.flooded, 0);
    // A MAC of another network is unknown here too.
    let frame = ping(MAC_A, MAC_C, IP_A, IP_C);
    assert_eq!(dp.test_run(&frame, A).unwrap().0, TC_ACT_SHOT);
    assert_eq!(drops(&dp, A, DropReason::UnknownDestination), 2);
}

#[test]
fn spoofed_sources_are_dropped_and_allowed_address_pairs_pass() {
    if !privileged() {
        return;
    }
    let mut dp = topology(Hook::Tc);
    dp.set_port_rules(B, &[allow_all(2, Direction::Ingress)])
        .unwrap();
    let evil_mac = [0x02, 0, 0, 0, 0, 0x66];
    let vip = Ipv4Addr::new(10, 0, 0, 200);
    assert_eq!(
        dp.test_run(&ping(evil_mac, MAC_B, IP_A, IP_B), A)
            .unwrap()
            .0,
        TC_ACT_SHOT
    );
    assert_eq!(drops(&dp, A, DropReason::SpoofMac), 1);
    assert_eq!(
        dp.test_run(&ping(MAC_A, MAC_B, vip, IP_B), A).unwrap().0,
        TC_ACT_SHOT
    );
    assert_eq!(drops(&dp, A, DropReason::SpoofIp), 1);
    // A group source MAC is never legitimate.
    assert_eq!(
        dp.test_run(&ping([0x01, 0, 0x5e, 0, 0, 1], MAC_B, IP_A, IP_B), A)
            .unwrap()
            .0,
        TC_ACT_SHOT
    );
    assert_eq!(drops(&dp, A, DropReason::SpoofMac), 2);
    // IPv6 and other ethertypes are not allowed under port security.
    let v6 = pad(eth(MAC_B, MAC_A, 0x86dd));
    assert_eq!(dp.test_run(&v6, A).unwrap().0, TC_ACT_SHOT);
    assert_eq!(drops(&dp, A, DropReason::Ethertype), 1);

    // The VIP becomes an allowed address pair of A: now it passes.
    let mut a = port(A, 1, MAC_A, IP_A);
    a.allowed_address_pairs.push((MAC_A, vip));
    dp.set_port(&a).unwrap();
    assert_eq!(
        dp.test_run(&ping(MAC_A, MAC_B, vip, IP_B), A).unwrap().0,
        TC_ACT_REDIRECT
    );
    // Without port security anything goes.
    a.port_security = false;
    a.allowed_address_pairs.clear();
    dp.set_port(&a).unwrap();
    assert_eq!(
        dp.test_run(&ping(MAC_A, MAC_B, Ipv4Addr::new(1, 2, 3, 4), IP_B), A)
            .unwrap()
            .0,
        TC_ACT_REDIRECT
    );
}

#[test]
fn arp_requests_for_known_addresses_are_answered_in_place() {
    if !privileged() {
        return;
    }
    let dp = topology(Hook::Tc);
    let (verdict, out) = dp.test_run(&arp_request(MAC_A, IP_A, IP_B), A).unwrap();
    assert_eq!(verdict, TC_ACT_REDIRECT, "the reply goes back out of A");
    assert_eq!(&out[0..6], &MAC_A, "to the asker");
    assert_eq!(&out[6..12], &MAC_B, "from the owner");
    assert_eq!(&out[20..22], &[0, 2], "an ARP reply");
    assert_eq!(&out[22..28], &MAC_B, "sender hardware address");
    assert_eq!(&out[28..32], &IP_B.octets(), "sender protocol address");
    assert_eq!(&out[32..38], &MAC_A, "target hardware address");
    assert_eq!(&out[38..42], &IP_A.octets(), "target protocol address");
    let a = dp.port_counters(A).unwrap();
    assert_eq!((a.0.arp_replies, a.0.tx_packets), (1, 1));

    // The router's address is answered with the router's MAC.
    let (_, out) = dp.test_run(&arp_request(MAC_A, IP_A, GW1), A).unwrap();
    assert_eq!(&out[22..28], &MAC_R1);

    // An ARP claiming someone else's address is dropped.
    assert_eq!(
        dp.test_run(&arp_request(MAC_A, IP_B, GW1), A).unwrap().0,
        TC_ACT_SHOT
    );
    assert_eq!(drops(&dp, A, DropReason::SpoofArp), 1);

    // ARP for an address nobody has is flooded to the network, not answered.
    let (verdict, _) = dp
        .test_run(&arp_request(MAC_A, IP_A, Ipv4Addr::new(10, 0, 0, 77)), A)
        .unwrap();
    assert_eq!(
        verdict, TC_ACT_SHOT,
        "the original is consumed by the flood"
    );
    assert_eq!(dp.port_counters(A).unwrap().0.flooded, 1);
}

#[test]
fn security_groups_deny_by_default_and_rules_add_up() {
    if !privileged() {
        return;
    }
    let mut dp = topology(Hook::Tc);
    let ssh = pad(ipv4(
        MAC_B,
        MAC_A,
        IP_A,
        IP_B,
        TCP,
        64,
        &tcp(40000, 22, SYN),
    ));
    let http = pad(ipv4(
        MAC_B,
        MAC_A,
        IP_A,
        IP_B,
        TCP,
        64,
        &tcp(40001, 80, SYN),
    ));
    let dns = pad(ipv4(MAC_B, MAC_A, IP_A, IP_B, UDP, 64, &udp(40002, 53)));
    assert_eq!(dp.test_run(&ssh, A).unwrap().0, TC_ACT_SHOT);
    assert_eq!(drops(&dp, A, DropReason::SecurityGroupIngress), 1);

    // Two groups: one allows SSH from the subnet, the other DNS from anywhere.
    let ssh_rule = RuleSpec {
        id: 7,
        direction: Direction::Ingress,
        protocol: Some(TCP),
        port_range: Some((22, 22)),
        remote: Some((Ipv4Addr::new(10, 0, 0, 0), 24)),
    };
    let dns_rule = RuleSpec {
        id: 8,
        direction: Direction::Ingress,
        protocol: Some(UDP),
        port_range: Some((53, 53)),
        remote: None,
    };
    dp.set_port_rules(B, &[allow_all(1, Direction::Egress), ssh_rule, dns_rule])
        .unwrap();
    assert_eq!(dp.test_run(&ssh, A).unwrap().0, TC_ACT_REDIRECT);
    assert_eq!(dp.test_run(&dns, A).unwrap().0, TC_ACT_REDIRECT);
    assert_eq!(dp.test_run(&http, A).unwrap().0, TC_ACT_SHOT);
    assert_eq!(drops(&dp, A, DropReason::SecurityGroupIngress), 2);
    assert_eq!(dp.rule_counters(7).unwrap().connections, 1);
    assert_eq!(dp.rule_counters(8).unwrap().connections, 1);

    // The remote prefix matters: SSH from C (another subnet, routed) is refused.
    let from_c = pad(ipv4(
        MAC_R2,
        MAC_C,
        IP_C,
        IP_B,
        TCP,
        64,
        &tcp(40003, 22, SYN),
    ));
    assert_eq!(dp.test_run(&from_c, C).unwrap().0, TC_ACT_SHOT);
    assert_eq!(drops(&dp, C, DropReason::SecurityGroupIngress), 1);

    // Egress is denied by default too.
    dp.set_port_rules(A, &[]).unwrap();
    assert_eq!(dp.test_run(&dns, A).unwrap().0, TC_ACT_SHOT);
    assert_eq!(drops(&dp, A, DropReason::SecurityGroupEgress), 1);
}

#[test]
fn conntrack_lets_replies_back_and_drops_invalid() {
    if !privileged() {
        return;
    }
    let mut dp = topology(Hook::Tc);
    let web = RuleSpec {
        id: 9,
        direction: Direction::Ingress,
        protocol: Some(TCP),
        port_range: Some((80, 80)),
        remote: None,
    };
    dp.set_port_rules(B, &[allow_all(1, Direction::Egress), web])
        .unwrap();
    let syn = pad(ipv4(
        MAC_B,
        MAC_A,
        IP_A,
        IP_B,
        TCP,
        64,
        &tcp(40000, 80, SYN),
    ));
    let synack = pad(ipv4(
        MAC_A,
        MAC_B,
        IP_B,
        IP_A,
        TCP,
        64,
        &tcp(80, 40000, SYN | ACK),
    ));
    let ack = pad(ipv4(
        MAC_B,
        MAC_A,
        IP_A,
        IP_B,
        TCP,
        64,
        &tcp(40000, 80, ACK),
    ));
    // A has no ingress rule: the SYN-ACK is only allowed as a reply.
    assert_eq!(dp.test_run(&synack, B).unwrap().0, TC_ACT_SHOT);
    assert_eq!(drops(&dp, B, DropReason::ConntrackInvalid), 1);
    assert_eq!(dp.test_run(&syn, A).unwrap().0, TC_ACT_REDIRECT);
    assert_eq!(dp.test_run(&synack, B).unwrap().0, TC_ACT_REDIRECT);
    assert_eq!(dp.test_run(&ack, A).unwrap().0, TC_ACT_REDIRECT);
    // A stray ACK for a connection nobody opened is INVALID.
    let stray = pad(ipv4(
        MAC_B,
        MAC_A,
        IP_A,
        IP_B,
        TCP,
        64,
        &tcp(40009, 80, ACK),
    ));
    assert_eq!(dp.test_run(&stray, A).unwrap().0, TC_ACT_SHOT);
    assert_eq!(drops(&dp, A, DropReason::ConntrackInvalid), 1);
    // A new connection from B to A is still refused by A's (empty) ingress rules.
    let back = pad(ipv4(
        MAC_A,
        MAC_B,
        IP_B,
        IP_A,
        TCP,
        64,
        &tcp(50000, 22, SYN),
    ));
    assert_eq!(dp.test_run(&back, B).unwrap().0, TC_ACT_SHOT);
    assert_eq!(drops(&dp, B, DropReason::SecurityGroupIngress), 1);
    assert_eq!(
        dp.rule_counters(9).unwrap().connections,
        1,
        "one connection (syn, syn-ack, ack): counted once, at its admission"
    );

    // Ping: replies pass, unsolicited echo replies do not.
    let reply = ipv4(MAC_A, MAC_B, IP_B, IP_A, ICMP, 64, &icmp_echo(0, 7, 1));
    assert_eq!(dp.test_run(&reply, B).unwrap().0, TC_ACT_SHOT);
    dp.set_port_rules(
        B,
        &[
            allow_all(1, Direction::Egress),
            web,
            RuleSpec {
                id: 10,
                direction: Direction::Ingress,
                protocol: Some(ICMP),
                port_range: None,
                remote: None,
            },
        ],
    )
    .unwrap();
    assert_eq!(
        dp.test_run(&ping(MAC_A, MAC_B, IP_A, IP_B), A).unwrap().0,
        TC_ACT_REDIRECT
    );
    assert_eq!(dp.test_run(&reply, B).unwrap().0, TC_ACT_REDIRECT);
}

#[test]
fn removing_a_rule_cuts_the_connections_it_admitted() {
    if !privileged() {
        return;
    }
    let mut dp = topology(Hook::Tc);
    let web = RuleSpec {
        id: 9,
        direction: Direction::Ingress,
        protocol: Some(TCP),
        port_range: Some((80, 80)),
        remote: None,
    };
    dp.set_port_rules(B, &[allow_all(1, Direction::Egress), web])
        .unwrap();
    let syn = pad(ipv4(
        MAC_B,
        MAC_A,
        IP_A,
        IP_B,
        TCP,
        64,
        &tcp(40000, 80, SYN),
    ));
    let ack = pad(ipv4(
        MAC_B,
        MAC_A,
        IP_A,
        IP_B,
        TCP,
        64,
        &tcp(40000, 80, ACK),
    ));
    assert_eq!(dp.test_run(&syn, A).unwrap().0, TC_ACT_REDIRECT);
    assert_eq!(dp.test_run(&ack, A).unwrap().0, TC_ACT_REDIRECT);
    let tracked = dp.conntrack_len().unwrap();
    dp.set_port_rules(B, &[allow_all(1, Direction::Egress)])
        .unwrap();
    assert_eq!(dp.conntrack_len().unwrap(), tracked - 1, "B's entry is cut");
    assert_eq!(dp.test_run(&ack, A).unwrap().0, TC_ACT_SHOT);
    assert_eq!(drops(&dp, A, DropReason::ConntrackInvalid), 1);
}

#[test]
fn routing_rewrites_macs_decrements_ttl_and_keeps_the_checksum_valid() {
    if !privileged() {
        return;
    }
    let mut dp = topology(Hook::Tc);
    open_port(&mut dp, C);
    let frame = ping(MAC_A, MAC_R1, IP_A, IP_C);
    let (verdict, out) = dp.test_run(&frame, A).unwrap();
    assert_eq!(verdict, TC_ACT_REDIRECT);
    assert_eq!(&out[0..6], &MAC_C, "next hop's MAC");
    assert_eq!(&out[6..12], &MAC_R2, "router's MAC on the egress network");
    assert_eq!(out[22], 63, "TTL decremented");
    assert_eq!(checksum(&out[14..34]), 0, "IP header checksum valid");
    assert_eq!(&out[26..34], &frame[26..34], "addresses untouched");
    assert_eq!(&out[34..], &frame[34..], "payload untouched");
    assert_eq!(dp.port_counters(C).unwrap().0.tx_packets, 1);
    assert_eq!(dp.port_counters(A).unwrap().0.routed, 1);

    // The reply comes back the other way.
    let reply = ipv4(MAC_R2, MAC_C, IP_C, IP_A, ICMP, 64, &icmp_echo(0, 7, 1));
    let (verdict, out) = dp.test_run(&reply, C).unwrap();
    assert_eq!(verdict, TC_ACT_REDIRECT);
    assert_eq!((&out[0..6], &out[6..12]), (&MAC_A[..], &MAC_R1[..]));
    assert_eq!(checksum(&out[14..34]), 0);

    // TTL 1 cannot be forwarded; no route; no neighbour: dropped and counted.
    let dying = ipv4(MAC_R1, MAC_A, IP_A, IP_C, ICMP, 1, &icmp_echo(8, 7, 2));
    let far = ping(MAC_A, MAC_R1, IP_A, Ipv4Addr::new(192, 168, 9, 9));
    let nobody = ping(MAC_A, MAC_R1, IP_A, Ipv4Addr::new(10, 0, 1, 99));
    for (frame, reason) in [
        (&dying, DropReason::Ttl),
        (&far, DropReason::NoRoute),
        (&nobody, DropReason::NoNeighbor),
    ] {
        dp.test_run(frame, A).unwrap();
        assert_eq!(drops(&dp, A, reason), 1, "{reason:?}");
    }
    assert_eq!(dp.port_counters(A).unwrap().0.icmp_errors, 3);
    dp.set_port_rules(C, &[]).unwrap();
}

#[test]
fn extra_routes_go_to_the_next_hops_mac_and_the_longest_prefix_wins() {
    if !privileged() {
        return;
    }
    let mut dp = topology(Hook::Tc);
    open_port(&mut dp, C);
    // 172.16.0.0/16 lives behind C; one host inside network 2's connected /24 does too.
    let behind = Ipv4Addr::new(172, 16, 5, 9);
    let host = Ipv4Addr::new(10, 0, 1, 77);
    dp.add_extra_route(
        1,
        (Ipv4Addr::new(172, 16, 0, 0), 16),
        2,
        IP_C,
        MAC_R2,
        false,
    )
    .unwrap();
    dp.add_extra_route(1, (host, 32), 2, IP_C, MAC_R2, false)
        .unwrap();
    for dst in [behind, host] {
        let frame = ping(MAC_A, MAC_R1, IP_A, dst);
        let (verdict, out) = dp.test_run(&frame, A).unwrap();
        assert_eq!(verdict, TC_ACT_REDIRECT, "{dst}");
        assert_eq!(&out[0..6], &MAC_C, "the next hop's MAC for {dst}");
        assert_eq!(&out[6..12], &MAC_R2, "from the router's MAC on network 2");
        assert_eq!(out[22], 63);
        assert_eq!(checksum(&out[14..34]), 0);
        assert_eq!(&out[30..34], &dst.octets(), "the destination stays {dst}");
    }
    assert_eq!(dp.port_counters(C).unwrap().0.tx_packets, 2);
    // The rest of the /24 is still connected: no neighbour for .78.
    let other = ping(MAC_A, MAC_R1, IP_A, Ipv4Addr::new(10, 0, 1, 78));
    dp.test_run(&other, A).unwrap();
    assert_eq!(drops(&dp, A, DropReason::NoNeighbor), 1);
    // Gone with its route.
    dp.remove_route(1, (Ipv4Addr::new(172, 16, 0, 0), 16))
        .unwrap();
    dp.test_run(&ping(MAC_A, MAC_R1, IP_A, behind), A).unwrap();
    assert_eq!(drops(&dp, A, DropReason::NoRoute), 1);
    dp.set_port_rules(C, &[]).unwrap();
}

/// Checks `out` is the ICMP error a Linux router sends back to A about `orig`.
fn assert_icmp_error(out: &[u8], orig: &[u8], kind: u8, code: u8) {
    assert_eq!(out.len(), 14 + 20 + 8 + 28);
    assert_eq!(&out[0..6], &MAC_A, "back to the sender");
    assert_eq!(&out[6..12], &MAC_R1, "from the router's MAC");
    assert_eq!(&out[12..14], &[0x08, 0x00]);
    assert_eq!(checksum(&out[14..34]), 0, "IP checksum valid");
    assert_eq!(out[14 + 9], ICMP);
    assert_eq!(&out[26..30], &GW1.octets(), "from the router's address");
    assert_eq!(&out[30..34], &IP_A.octets(), "to the sender");
    assert_eq!((out[34], out[35]), (kind, code));
    assert_eq!(checksum(&out[34..]), 0, "ICMP checksum valid");
    assert_eq!(
        &out[42..70],
        &orig[14..42],
        "quotes the IP header and 8 bytes"
    );
}

#[test]
fn routers_answer_with_icmp_errors_where_linux_would() {
    if !privileged() {
        return;
    }
    let dp = topology(Hook::Tc);
    let dying = ipv4(MAC_R1, MAC_A, IP_A, IP_C, ICMP, 1, &icmp_echo(8, 7, 2));
    let (verdict, out) = dp.test_run(&dying, A).unwrap();
    assert_eq!(verdict, TC_ACT_REDIRECT, "back out of A");
    assert_icmp_error(&out, &dying, 11, 0);

    let dying_tcp = pad(ipv4(MAC_R1, MAC_A, IP_A, IP_C, TCP, 1, &tcp(1000, 80, SYN)));
    let (_, out) = dp.test_run(&dying_tcp, A).unwrap();
    assert_icmp_error(&out, &dying_tcp, 11, 0);

    let far = ping(MAC_A, MAC_R1, IP_A, Ipv4Addr::new(192, 168, 9, 9));
    let (_, out) = dp.test_run(&far, A).unwrap();
    assert_icmp_error(&out, &far, 3, 0);

    let nobody = ping(MAC_A, MAC_R1, IP_A, Ipv4Addr::new(10, 0, 1, 99));
    let (_, out) = dp.test_run(&nobody, A).unwrap();
    assert_icmp_error(&out, &nobody, 3, 1);

    // No errors about errors (nor about echo replies).
    let mut quote = vec![3, 1, 0, 0, 0, 0, 0, 0];
    quote.extend_from_slice(&dying[14..42]);
    let err = ipv4(MAC_R1, MAC_A, IP_A, IP_C, ICMP, 1, &quote);
    assert_eq!(dp.test_run(&err, A).unwrap().0, TC_ACT_SHOT);
    assert_eq!(dp.port_counters(A).unwrap().0.icmp_errors, 4);
    assert_eq!(drops(&dp, A, DropReason::Ttl), 3);

    // The XDP build sends the same error with XDP_TX.
    let mut x = Datapath::load(Hook::Xdp).unwrap();
    x.set_port(&port(1, 1, MAC_A, IP_A)).unwrap();
    x.add_router_interface(1, 1, MAC_R1, GW1, (Ipv4Addr::new(10, 0, 0, 0), 24))
        .unwrap();
    // Linux looks the route up before it checks the TTL: use a routable destination.
    let dying = ipv4(MAC_R1, MAC_A, IP_A, IP_B, ICMP, 1, &icmp_echo(8, 7, 3));
    let (verdict, out) = x.test_run(&dying, 1).unwrap();
    assert_eq!(verdict, XDP_TX);
    assert_icmp_error(&out, &dying, 11, 0);
}

#[test]
fn floating_ips_translate_both_ways_with_valid_checksums() {
    if !privileged() {
        return;
    }
    const X: u32 = 30;
    let mac_x = [0x02, 0, 0, 0, 0, 0x1e];
    let mac_rx = [0x02, 0, 0, 0, 0x01, 0x03];
    let ip_x = Ipv4Addr::new(172, 24, 4, 100);
    let gw_x = Ipv4Addr::new(172, 24, 4, 1);
    let fip = Ipv4Addr::new(172, 24, 4, 10);
    let mut dp = topology(Hook::Tc);
    // The external network 3 with a host on it (no port security, like a provider uplink).
    let mut x = port(X, 3, mac_x, ip_x);
    x.port_security = false;
    dp.set_port(&x).unwrap();
    dp.set_router_gateway(1, 3, mac_rx, gw_x, (Ipv4Addr::new(172, 24, 4, 0), 24), None)
        .unwrap();
    dp.set_floating_ip(1, fip, IP_A, 3, mac_rx).unwrap();
    let ssh = RuleSpec {
        id: 5,
        direction: Direction::Ingress,
        protocol: Some(TCP),
        port_range: Some((22, 22)),
        remote: None,
    };
    dp.set_port_rules(A, &[allow_all(1, Direction::Egress), ssh])
        .unwrap();

    // ARP for the floating IP is answered with the router's gateway MAC.
    let (verdict, out) = dp.test_run(&arp_request(mac_x, ip_x, fip), X).unwrap();
    assert_eq!(verdict, TC_ACT_REDIRECT);
    assert_eq!(&out[22..28], &mac_rx);

    // Inbound: DNAT to A's fixed IP.
    let syn = with_tcp_checksum(ipv4(mac_rx, mac_x, ip_x, fip, TCP, 64, &tcp(5555, 22, SYN)));
    assert!(l4_checksum_ok(&syn));
    let (verdict, out) = dp.test_run(&syn, X).unwrap();
    assert_eq!(verdict, TC_ACT_REDIRECT);
    assert_eq!((&out[0..6], &out[6..12]), (&MAC_A[..], &MAC_R1[..]));
    assert_eq!(&out[26..30], &ip_x.octets(), "source kept");
    assert_eq!(&out[30..34], &IP_A.octets(), "destination translated");
    assert_eq!(checksum(&out[14..34]), 0, "IP checksum valid");
    assert!(l4_checksum_ok(&out), "TCP checksum valid");
    assert_eq!(dp.port_counters(A).unwrap().0.tx_packets, 1);

    // Outbound reply: SNAT to the floating IP.
    let synack = with_tcp_checksum(ipv4(
        MAC_R1,
        MAC_A,
        IP_A,
        ip_x,
        TCP,
        64,
        &tcp(22, 5555, SYN | ACK),
    ));
    let (verdict, out) = dp.test_run(&synack, A).unwrap();
    assert_eq!(verdict, TC_ACT_REDIRECT);
    assert_eq!((&out[0..6], &out[6..12]), (&mac_x[..], &mac_rx[..]));
    assert_eq!(&out[26..30], &fip.octets(), "source translated");
    assert_eq!(&out[30..34], &ip_x.octets());
    assert_eq!(checksum(&out[14..34]), 0);
    assert!(l4_checksum_ok(&out));
    assert_eq!(
        dp.port_counters(X).unwrap().0.tx_packets,
        2,
        "ARP reply + SYN-ACK"
    );

    // The security group still applies to the fixed IP: port 80 is refused.
    let web = with_tcp_checksum(ipv4(mac_rx, mac_x, ip_x, fip, TCP, 64, &tcp(5556, 80, SYN)));
    assert_eq!(dp.test_run(&web, X).unwrap().0, TC_ACT_SHOT);
    assert_eq!(drops(&dp, X, DropReason::SecurityGroupIngress), 1);

    // B has no floating IP: its traffic leaves untranslated.
    let b_out = with_tcp_checksum(ipv4(
        MAC_R1,
        MAC_B,
        IP_B,
        ip_x,
        TCP,
        64,
        &tcp(4000, 80, SYN),
    ));
    let (_, out) = dp.test_run(&b_out, B).unwrap();
    assert_eq!(&out[26..30], &IP_B.octets());

    // Removed: the floating IP is no longer reachable.
    dp.remove_floating_ip(1, fip, IP_A, 3).unwrap();
    assert_eq!(
        dp.test_run(&syn, X).unwrap().0,
        TC_ACT_REDIRECT,
        "ICMP unreachable back"
    );
    assert_eq!(dp.port_counters(A).unwrap().0.tx_packets, 1);
}

#[test]
fn overlapping_subnets_of_two_tenants_stay_separate() {
    if !privileged() {
        return;
    }
    let mut dp = topology(Hook::Tc);
    // Tenant 2's network 4 reuses 10.0.0.0/24: D has B's address, E has A's.
    let (d, e) = (40, 41);
    let mac_d = [0x02, 0, 0, 0, 0, 0x28];
    let mac_e = [0x02, 0, 0, 0, 0, 0x29];
    dp.set_port(&port(d, 4, mac_d, IP_B)).unwrap();
    dp.set_port(&port(e, 4, mac_e, IP_A)).unwrap();
    let mac_r4 = [0x02, 0, 0, 0, 0x02, 0x04];
    dp.add_router_interface(2, 4, mac_r4, GW1, (Ipv4Addr::new(10, 0, 0, 0), 24))
        .unwrap();
    for p in [A, B, d, e] {
        open_port(&mut dp, p);
    }
    // ARP in each network answers with that network's owner.
    let (_, out) = dp.test_run(&arp_request(MAC_A, IP_A, IP_B), A).unwrap();
    assert_eq!(&out[22..28], &MAC_B);
    let (_, out) = dp.test_run(&arp_request(mac_d, IP_B, IP_A), d).unwrap();
    assert_eq!(&out[22..28], &mac_e);
    let (_, out) = dp.test_run(&arp_request(mac_d, IP_B, GW1), d).unwrap();
    assert_eq!(&out[22..28], &mac_r4, "tenant 2's own router");
    // Frames reach only their own network's ports.
    assert_eq!(
        dp.test_run(&ping(mac_d, mac_e, IP_B, IP_A), d).unwrap().0,
        TC_ACT_REDIRECT
    );
    assert_eq!(
        dp.port_counters(e).unwrap().0.tx_packets,
        1,
        "E got the ping"
    );
    assert_eq!(
        dp.port_counters(A).unwrap().0.tx_packets,
        1,
        "A got only its ARP reply"
    );
    assert_eq!(
        dp.test_run(&ping(mac_d, MAC_A, IP_B, IP_A), d).unwrap().0,
        TC_ACT_SHOT,
        "A's MAC is unknown in network 4"
    );
    assert_eq!(drops(&dp, d, DropReason::UnknownDestination), 1);
    // Tenant 2's router has no route to tenant 1's other subnet.
    let (_, out) = dp.test_run(&ping(mac_d, mac_r4, IP_B, IP_C), d).unwrap();
    assert_eq!((out[34], out[35]), (3, 0), "net unreachable");
}

#[test]
fn malformed_and_truncated_frames_are_dropped_and_foreign_interfaces_pass() {
    if !privileged() {
        return;
    }
    let dp = topology(Hook::Tc);
    let full = pad(ipv4(MAC_B, MAC_A, IP_A, IP_B, TCP, 64, &tcp(1, 2, SYN)));
    // Every truncation of a TCP frame, from a bare Ethernet header up. The kernel itself
    // refuses tc test runs of IPv4 frames shorter than an IP header; past that, every
    // truncation reaches the program and must be dropped as malformed.
    let mut malformed = 0;
    for len in 14..54 {
        match dp.test_run(&full[..len], A) {
            Ok((verdict, _)) => {
                assert_eq!(verdict, TC_ACT_SHOT, "truncated to {len}");
                malformed += 1;
            }
            Err(e) => assert!(len < 34, "len {len}: {e:?}"),
        }
    }
    assert!(malformed >= 20);
    assert_eq!(
        drops(&dp, A, DropReason::Malformed),
        malformed,
        "{:?}",
        dp.port_counters(A).unwrap()
    );
    let mut bad_ihl = full.clone();
    bad_ihl[14] = 0x43;
    assert_eq!(dp.test_run(&bad_ihl, A).unwrap().0, TC_ACT_SHOT);
    let mut fragment = full.clone();
    fragment[20] = 0x00;
    fragment[21] = 0x10;
    assert_eq!(dp.test_run(&fragment, A).unwrap().0, TC_ACT_SHOT);
    assert_eq!(drops(&dp, A, DropReason::Fragment), 1);
    // Not a port: the stack gets it.
    assert_eq!(dp.test_run(&full, 999).unwrap().0, TC_ACT_OK);
}

#[test]
fn the_xdp_build_makes_the_same_decisions() {
    if !privileged() {
        return;
    }
    // XDP test runs need a real ingress interface: loopback (ifindex 1) plays port A.
    let mut dp = Datapath::load(Hook::Xdp).expect("load xdp datapath");
    dp.set_port(&port(1, 1, MAC_A, IP_A)).unwrap();
    dp.set_port(&port(B, 1, MAC_B, IP_B)).unwrap();
    dp.set_port_rules(1, &[allow_all(1, Direction::Egress)])
        .unwrap();
    dp.set_port_rules(B, &[allow_all(2, Direction::Ingress)])
        .unwrap();
    let (verdict, out) = dp.test_run(&ping(MAC_A, MAC_B, IP_A, IP_B), 1).unwrap();
    assert_eq!(verdict, XDP_REDIRECT, "{:?}", dp.port_counters(1).unwrap());
    assert_eq!(out, ping(MAC_A, MAC_B, IP_A, IP_B));
    let (verdict, out) = dp.test_run(&arp_request(MAC_A, IP_A, IP_B), 1).unwrap();
    assert_eq!(verdict, XDP_TX, "ARP replies bounce back out of the port");
    assert_eq!(&out[22..28], &MAC_B);
    // Broadcasts other than answerable ARP go to the slow path.
    let dhcp = pad(ipv4(
        [0xff; 6],
        MAC_A,
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::BROADCAST,
        UDP,
        64,
        &udp(68, 67),
    ));
    assert_eq!(dp.test_run(&dhcp, 1).unwrap().0, XDP_PASS);
    let spoof = ping(MAC_A, MAC_B, Ipv4Addr::new(6, 6, 6, 6), IP_B);
    assert_eq!(dp.test_run(&spoof, 1).unwrap().0, 1);
    assert_eq!(drops(&dp, 1, DropReason::SpoofIp), 1);
}

#[test]
fn pinned_maps_are_reused_by_a_second_load() {
    if !privileged() {
        return;
    }
    let pins = PinDir::new("netdp");
    let dir = pins.path();
    {
        let mut dp = Datapath::load_pinned(Hook::Tc, dir).unwrap();
        dp.set_port(&port(A, 1, MAC_A, IP_A)).unwrap();
        dp.set_port(&port(B, 1, MAC_B, IP_B)).unwrap();
        dp.set_port_rules(A, &[allow_all(1, Direction::Egress)])
            .unwrap();
        dp.set_port_rules(B, &[allow_all(2, Direction::Ingress)])
            .unwrap();
    }
    // A "restarted" daemon loads again and finds all state in place.
    let dp = Datapath::load_pinned(Hook::Tc, dir).unwrap();
    assert_eq!(
        dp.test_run(&ping(MAC_A, MAC_B, IP_A, IP_B), A).unwrap().0,
        TC_ACT_REDIRECT
    );
    assert_eq!(dp.port_counters(B).unwrap().0.tx_packets, 1);
}

#[test]
fn pinned_maps_of_an_older_layout_are_replaced_and_the_rest_kept() {
    if !privileged() {
        return;
    }
    let pins = PinDir::new("netdp-old");
    let dir = pins.path();
    {
        let mut dp = Datapath::load_pinned(Hook::Tc, dir).unwrap();
        dp.set_port(&port(A, 1, MAC_A, IP_A)).unwrap();
        dp.set_port(&port(B, 1, MAC_B, IP_B)).unwrap();
        dp.set_port_rules(A, &[allow_all(1, Direction::Egress)])
            .unwrap();
        dp.set_port_rules(B, &[allow_all(2, Direction::Ingress)])
            .unwrap();
        dp.test_run(&ping(MAC_A, MAC_B, IP_A, IP_B), A).unwrap();
        assert_eq!(dp.rule_counters(1).unwrap().connections, 1);
    }
    // An older build pinned rule_stats with other counters.
    let stats = dir.join("rule_stats");
    std::fs::remove_file(&stats).unwrap();
    let out = std::process::Command::new("bpftool")
        .args(["map", "create"])
        .arg(&stats)
        .args([
            "type",
            "percpu_array",
            "key",
            "4",
            "value",
            "16",
            "entries",
            "65536",
            "name",
            "rule_stats",
        ])
        .output()
        .expect("bpftool (scripts/setup installs it)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The new build loads anyway: that map is replaced, the others (ports, FDB, rules)
    // are reused.
    let dp = Datapath::load_pinned(Hook::Tc, dir).expect("load over an older pin");
    assert_eq!(
        dp.test_run(&ping(MAC_A, MAC_B, IP_A, IP_B), A).unwrap().0,
        TC_ACT_REDIRECT,
        "ports, FDB and rules kept"
    );
    assert_eq!(
        dp.port_counters(B).unwrap().0.tx_packets,
        2,
        "port counters kept with their ports"
    );
    assert_eq!(
        dp.rule_counters(1).unwrap().connections,
        0,
        "fresh rule counters (the connection was tracked before: not counted again)"
    );
}

/// Replaces the pinned map `name` in `dir` by one of another layout (an older build's:
/// `value` bytes a value, `entries` of them), holding the same entries cut to that size.
fn repin_older(dir: &std::path::Path, name: &str, value: usize, entries: u32) -> usize {
    let path = dir.join(name);
    let current: Vec<([u8; 20], [u8; 16])> = {
        let data = aya::maps::MapData::from_pin(&path).unwrap();
        let mut map = aya::maps::Map::LruHashMap(data);
        let m: aya::maps::HashMap<_, [u8; 20], [u8; 16]> =
            aya::maps::HashMap::try_from(&mut map).unwrap();
        m.iter().map(Result::unwrap).collect()
    };
    std::fs::remove_file(&path).unwrap();
    let out = std::process::Command::new("bpftool")
        .args(["map", "create"])
        .arg(&path)
        .args(["type", "lru_hash", "key", "20", "value"])
        .arg(value.to_string())
        .arg("entries")
        .arg(entries.to_string())
        .args(["name", name])
        .output()
        .expect("bpftool (scripts/setup installs it)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let data = aya::maps::MapData::from_pin(&path).unwrap();
    let mut map = aya::maps::Map::LruHashMap(data);
    for (k, v) in &current {
        match value {
            8 => {
                let mut m: aya::maps::HashMap<_, [u8; 20], [u8; 8]> =
                    aya::maps::HashMap::try_from(&mut map).unwrap();
                let mut old = [0u8; 8];
                old[..6].copy_from_slice(&v[..6]); // address and port; then padding
                m.insert(k, old, 0).unwrap();
            }
            16 => {
                let mut m: aya::maps::HashMap<_, [u8; 20], [u8; 16]> =
                    aya::maps::HashMap::try_from(&mut map).unwrap();
                m.insert(k, v, 0).unwrap();
            }
            _ => unreachable!(),
        }
    }
    current.len()
}

#[test]
fn tracked_connections_and_snat_translations_survive_an_upgrade_that_changes_their_maps() {
    if !privileged() {
        return;
    }
    let pins = PinDir::new("netdp3-migrate");
    let dir = pins.path();
    const X: u32 = 30;
    let mac_x = [0x02, 0, 0, 0, 0, 0x1e];
    let mac_rx = [0x02, 0, 0, 0, 0x01, 0x03];
    let ip_x = Ipv4Addr::new(172, 24, 4, 100);
    let gw_x = Ipv4Addr::new(172, 24, 4, 1);
    // What the control plane programs at every start: A behind router 1, whose gateway
    // SNATs; A may send anything and take nothing in but replies.
    let program = |dp: &mut Datapath| {
        dp.set_port(&port(A, 1, MAC_A, IP_A)).unwrap();
        let mut x = port(X, 3, mac_x, ip_x);
        x.port_security = false;
        dp.set_port(&x).unwrap();
        dp.add_router_interface(1, 1, MAC_R1, GW1, (Ipv4Addr::new(10, 0, 0, 0), 24))
            .unwrap();
        dp.set_router_gateway(1, 3, mac_rx, gw_x, (Ipv4Addr::new(172, 24, 4, 0), 24), None)
            .unwrap();
        dp.set_gateway_snat(1, Some(gw_x)).unwrap();
        dp.set_port_rules(A, &[allow_all(1, Direction::Egress)])
            .unwrap();
    };
    let out = pad(ipv4(MAC_R1, MAC_A, IP_A, ip_x, UDP, 64, &udp(5000, 53)));
    let reply_to =
        |nat_port: u16| pad(ipv4(mac_rx, mac_x, ip_x, gw_x, UDP, 64, &udp(53, nat_port)));
    let nat_port = {
        let mut dp = Datapath::load_pinned(Hook::Tc, dir).unwrap();
        program(&mut dp);
        let (verdict, sent) = dp.test_run(&out, A).unwrap();
        assert_eq!(verdict, TC_ACT_REDIRECT);
        assert_eq!(&sent[26..30], &gw_x.octets(), "translated");
        let nat_port = u16::from_be_bytes([sent[34], sent[35]]);
        let (verdict, back) = dp.test_run(&reply_to(nat_port), X).unwrap();
        assert_eq!(verdict, TC_ACT_REDIRECT);
        assert_eq!(&back[30..34], &IP_A.octets());
        nat_port
    };
    // The pins now look like an older build's: SNAT values without state and clock (8
    // bytes), a smaller conntrack table.
    assert_eq!(repin_older(dir, "snat_in", 8, 65536), 1);
    assert_eq!(repin_older(dir, "snat_out", 8, 65536), 1);
    assert!(repin_older(dir, "conntrack", 16, 1024) >= 1);

    let mut dp = Datapath::load_pinned(Hook::Tc, dir).expect("load over older pins");
    program(&mut dp);
    assert_eq!(
        dp.snat_len().unwrap(),
        1,
        "the translation was carried over"
    );
    // The reply of the live connection still comes in: its translation (snat_in) and A's
    // tracked connection (A takes nothing else in) both survived the upgrade.
    let (verdict, back) = dp.test_run(&reply_to(nat_port), X).unwrap();
    assert_eq!(verdict, TC_ACT_REDIRECT, "reply of a live connection");
    assert_eq!(&back[30..34], &IP_A.octets(), "translated back to A");
    // And A's next packet reuses the same translation (snat_out).
    let (verdict, sent) = dp.test_run(&out, A).unwrap();
    assert_eq!(verdict, TC_ACT_REDIRECT);
    assert_eq!(u16::from_be_bytes([sent[34], sent[35]]), nat_port);
    // A migrated translation counts as answered and idle since the upgrade: the GC keeps
    // it.
    assert_eq!(dp.expire().unwrap(), Default::default());
    assert_eq!(dp.snat_len().unwrap(), 1);
}

#[test]
fn a_restarted_controller_removes_ports_its_state_no_longer_has() {
    if !privileged() {
        return;
    }
    // Maps from before the restart still hold a port the state does not know.
    let dp = topology(Hook::Tc);
    assert!(dp.port_ifindexes().unwrap().contains(&A));
    let ctl = netdp::api::Controller::open(None, Some(dp)).unwrap();
    let dp = ctl.datapath().unwrap();
    assert!(dp.port_ifindexes().unwrap().is_empty());
    assert_eq!(
        dp.test_run(&ping(MAC_B, MAC_A, IP_B, IP_A), B).unwrap().0,
        TC_ACT_OK,
        "B is no longer a port: its frames go to the stack"
    );
}

#[test]
fn icmp_errors_about_tracked_connections_pass_as_related() {
    if !privileged() {
        return;
    }
    let mut dp = topology(Hook::Tc);
    let dns = RuleSpec {
        id: 9,
        direction: Direction::Ingress,
        protocol: Some(UDP),
        port_range: Some((53, 53)),
        remote: None,
    };
    dp.set_port_rules(B, &[allow_all(1, Direction::Egress), dns])
        .unwrap();
    let query = pad(ipv4(MAC_B, MAC_A, IP_A, IP_B, UDP, 64, &udp(40000, 53)));
    // B answers "port unreachable", quoting the query's IP header and 8 bytes.
    let unreachable = |quoted: &[u8]| {
        let mut m = vec![3, 3, 0, 0, 0, 0, 0, 0];
        m.extend_from_slice(&quoted[14..42]);
        let c = checksum(&m);
        m[2..4].copy_from_slice(&c.to_be_bytes());
        ipv4(MAC_A, MAC_B, IP_B, IP_A, ICMP, 64, &m)
    };
    // Before the query, the error is about nothing: INVALID.
    assert_eq!(dp.test_run(&unreachable(&query), B).unwrap().0, TC_ACT_SHOT);
    assert_eq!(drops(&dp, B, DropReason::ConntrackInvalid), 1);
    assert_eq!(dp.test_run(&query, A).unwrap().0, TC_ACT_REDIRECT);
    // After it, the error is RELATED: it passes B's egress and A's ingress (A has no
    // ingress rule at all).
    assert_eq!(
        dp.test_run(&unreachable(&query), B).unwrap().0,
        TC_ACT_REDIRECT
    );
    // A late reply finds A's socket closed: A's "port unreachable" about the reply (the
    // tracked tuple reversed) is RELATED too, through A's egress and B's ingress.
    let reply = pad(ipv4(MAC_A, MAC_B, IP_B, IP_A, UDP, 64, &udp(53, 40000)));
    let mut m = vec![3, 3, 0, 0, 0, 0, 0, 0];
    m.extend_from_slice(&reply[14..42]);
    let c = checksum(&m);
    m[2..4].copy_from_slice(&c.to_be_bytes());
    let late = ipv4(MAC_B, MAC_A, IP_A, IP_B, ICMP, 64, &m);
    assert_eq!(dp.test_run(&late, A).unwrap().0, TC_ACT_REDIRECT);
    // An error quoting another flow is still INVALID.
    let other = pad(ipv4(MAC_B, MAC_A, IP_A, IP_B, UDP, 64, &udp(40001, 53)));
    assert_eq!(dp.test_run(&unreachable(&other), B).unwrap().0, TC_ACT_SHOT);
    assert_eq!(drops(&dp, B, DropReason::ConntrackInvalid), 2);
    // A truncated quote is malformed.
    let mut short = unreachable(&query);
    short.truncate(14 + 20 + 8 + 20);
    short[16..18].copy_from_slice(&48u16.to_be_bytes());
    assert_eq!(dp.test_run(&short, B).unwrap().0, TC_ACT_SHOT);
    assert_eq!(drops(&dp, B, DropReason::Malformed), 1);
}

#[test]
fn random_frames_get_a_verdict_and_are_all_counted() {
    if !privileged() {
        return;
    }
    let mut dp = topology(Hook::Tc);
    dp.set_port_rules(B, &[allow_all(2, Direction::Ingress)])
        .unwrap();
    // Deterministic xorshift: frames that start like real ones and end in noise.
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let templates = [
        pad(ipv4(MAC_B, MAC_A, IP_A, IP_B, TCP, 64, &tcp(1, 2, SYN))),
        pad(ipv4(MAC_R1, MAC_A, IP_A, IP_C, UDP, 2, &udp(1, 2))),
        arp_request(MAC_A, IP_A, IP_B),
        ping(MAC_A, MAC_R1, IP_A, IP_C),
    ];
    let runs = 3000;
    let mut ran = 0;
    for i in 0..runs {
        let mut f = templates[i % templates.len()].clone();
        let len = 14 + (next() % 120) as usize;
        f.resize(len, 0);
        // Keep the Ethernet source (so the port is the sender) and scramble the rest.
        let flips = 1 + next() % 6;
        for _ in 0..flips {
            let at = 12 + (next() as usize % (len - 12));
            f[at] = next() as u8;
        }
        match dp.test_run(&f, A) {
            Ok((verdict, _)) => {
                assert!(
                    [TC_ACT_OK, TC_ACT_SHOT, TC_ACT_REDIRECT].contains(&verdict),
                    "verdict {verdict} for {f:02x?}"
                );
                ran += 1;
            }
            // The kernel itself refuses some short frames (an IPv4 ethertype without room
            // for an IP header); those never reach the program.
            Err(_) => assert!(len < 34, "len {len}"),
        }
    }
    let a = dp.port_counters(A).unwrap();
    assert_eq!(
        a.0.rx_packets, ran,
        "every frame the program saw was counted"
    );
    assert!(ran > runs as u64 / 2);
}

#[test]
fn dhcp_requests_of_dhcp_ports_go_to_the_slow_path_not_the_network() {
    if !privileged() {
        return;
    }
    let mut dp = topology(Hook::Tc);
    let bcast = [0xff; 6];
    let discover = pad(ipv4(
        bcast,
        MAC_A,
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::BROADCAST,
        UDP,
        64,
        &udp(68, 67),
    ));
    // Without the DHCP flag the discover is flooded to the network (another DHCP server may
    // live there).
    assert_eq!(dp.test_run(&discover, A).unwrap().0, TC_ACT_SHOT);
    assert_eq!(dp.port_counters(A).unwrap().0.flooded, 1);
    let mut ring = dp.dhcp_ring().unwrap();
    assert!(ring.next().is_none(), "a flooded discover is not punted");
    // With it, the switch punts it into the ring (with the port) and consumes it: no flood.
    let mut a = port(A, 1, MAC_A, IP_A);
    a.dhcp = true;
    dp.set_port(&a).unwrap();
    assert_eq!(dp.test_run(&discover, A).unwrap().0, TC_ACT_SHOT);
    {
        let item = ring.next().expect("the discover is punted");
        assert_eq!(netdp::dhcp::punted(&item), Some((A, &discover[..])));
    }
    assert!(ring.next().is_none(), "once");
    assert_eq!(dp.port_counters(A).unwrap().0.flooded, 1, "not flooded");
    assert_eq!(dp.port_counters(A).unwrap().total_drops(), 0, "not a drop");
    // A unicast renewal to the server's address (the router) is consumed as well, not routed.
    let renew = pad(ipv4(MAC_R1, MAC_A, IP_A, GW1, UDP, 64, &udp(68, 67)));
    assert_eq!(dp.test_run(&renew, A).unwrap().0, TC_ACT_SHOT);
    assert_eq!(dp.port_counters(A).unwrap().0.routed, 0);
    {
        let item = ring.next().expect("the renewal is punted");
        assert_eq!(netdp::dhcp::punted(&item), Some((A, &renew[..])));
    }
    // Other broadcasts and UDP still flow: a broadcast to port 68 (a rogue server's offer
    // shape) is flooded, unicast UDP to B is switched.
    let other = pad(ipv4(
        bcast,
        MAC_A,
        IP_A,
        Ipv4Addr::BROADCAST,
        UDP,
        64,
        &udp(67, 68),
    ));
    dp.test_run(&other, A).unwrap();
    assert_eq!(dp.port_counters(A).unwrap().0.flooded, 2);
    assert!(ring.next().is_none(), "a flooded broadcast is not punted");
    open_port(&mut dp, B);
    let to_b = pad(ipv4(MAC_B, MAC_A, IP_A, IP_B, UDP, 64, &udp(68, 67)));
    assert_eq!(
        dp.test_run(&to_b, A).unwrap().0,
        TC_ACT_SHOT,
        "even to B: DHCP is punted"
    );
    {
        let item = ring.next().expect("the request to B is punted");
        assert_eq!(netdp::dhcp::punted(&item), Some((A, &to_b[..])));
    }
    let to_b = pad(ipv4(MAC_B, MAC_A, IP_A, IP_B, UDP, 64, &udp(5000, 53)));
    assert_eq!(dp.test_run(&to_b, A).unwrap().0, TC_ACT_REDIRECT);
    assert!(ring.next().is_none(), "other UDP is not punted");
    // The XDP build punts into its ring the same way.
    let mut xdp = Datapath::load(Hook::Xdp).unwrap();
    xdp.set_port(&PortSpec { ifindex: 1, ..a }).unwrap();
    assert_eq!(xdp.test_run(&discover, 1).unwrap().0, XDP_DROP);
    let mut xring = xdp.dhcp_ring().unwrap();
    let item = xring.next().expect("punted by XDP");
    assert_eq!(netdp::dhcp::punted(&item), Some((1, &discover[..])));
    assert_eq!(
        xdp.port_counters(1).unwrap().0.flooded,
        0,
        "passed up, not flooded"
    );
}

#[test]
fn dhcp_requests_dropped_because_the_ring_is_full_are_counted() {
    if !privileged() {
        return;
    }
    let mut dp = topology(Hook::Tc);
    let mut a = port(A, 1, MAC_A, IP_A);
    a.dhcp = true;
    dp.set_port(&a).unwrap();
    let discover = pad(ipv4(
        [0xff; 6],
        MAC_A,
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::BROADCAST,
        UDP,
        64,
        &udp(68, 67),
    ));
    // Nobody reads the ring: it holds about 127 records of 2 KiB, the rest must be counted.
    const SENT: u64 = 300;
    for _ in 0..SENT {
        assert_eq!(dp.test_run(&discover, A).unwrap().0, TC_ACT_SHOT);
    }
    let mut ring = dp.dhcp_ring().unwrap();
    let mut queued = 0u64;
    while let Some(item) = ring.next() {
        assert_eq!(netdp::dhcp::punted(&item), Some((A, &discover[..])));
        queued += 1;
    }
    let full = drops(&dp, A, DropReason::DhcpRingFull);
    assert!(queued > 100 && queued < SENT, "{queued} queued");
    assert_eq!(
        full,
        SENT - queued,
        "every request the ring refused is counted"
    );
    assert_eq!(dp.port_counters(A).unwrap().total_drops(), full);
    // Once drained, the ring takes requests again and the counter stays put.
    assert_eq!(dp.test_run(&discover, A).unwrap().0, TC_ACT_SHOT);
    assert!(ring.next().is_some());
    assert_eq!(drops(&dp, A, DropReason::DhcpRingFull), full);
}

#[test]
fn gateway_snat_translates_ports_without_a_floating_ip_both_ways() {
    if !privileged() {
        return;
    }
    const X: u32 = 30;
    let mac_x = [0x02, 0, 0, 0, 0, 0x1e];
    let mac_rx = [0x02, 0, 0, 0, 0x01, 0x03];
    let ip_x = Ipv4Addr::new(172, 24, 4, 100);
    let gw_x = Ipv4Addr::new(172, 24, 4, 1);
    let mut dp = topology(Hook::Tc);
    let mut x = port(X, 3, mac_x, ip_x);
    x.port_security = false;
    dp.set_port(&x).unwrap();
    dp.set_router_gateway(1, 3, mac_rx, gw_x, (Ipv4Addr::new(172, 24, 4, 0), 24), None)
        .unwrap();
    dp.set_gateway_snat(1, Some(gw_x)).unwrap();

    // A opens a connection out: it leaves from the gateway address, its port kept.
    let syn = with_tcp_checksum(ipv4(
        MAC_R1,
        MAC_A,
        IP_A,
        ip_x,
        TCP,
        64,
        &tcp(40000, 80, SYN),
    ));
    let (verdict, out) = dp.test_run(&syn, A).unwrap();
    assert_eq!(verdict, TC_ACT_REDIRECT);
    assert_eq!((&out[0..6], &out[6..12]), (&mac_x[..], &mac_rx[..]));
    assert_eq!(&out[26..30], &gw_x.octets(), "source is the gateway");
    assert_eq!(&out[30..34], &ip_x.octets());
    assert_eq!(u16::from_be_bytes([out[34], out[35]]), 40000, "port kept");
    assert_eq!(checksum(&out[14..34]), 0, "IP checksum valid");
    assert!(l4_checksum_ok(&out), "TCP checksum valid");
    assert_eq!(dp.snat_len().unwrap(), 1);
    // The same packet again maps the same way.
    let (_, again) = dp.test_run(&syn, A).unwrap();
    assert_eq!(again, out);

    // C (another subnet behind the same router) uses the same port towards the same
    // server: it gets another one.
    dp.add_route(
        1,
        (Ipv4Addr::new(172, 24, 4, 0), 24),
        netdp::datapath::abi::Route {
            net_id: 3,
            nexthop: 0,
            mac: mac_rx,
            flags: netdp::datapath::abi::ROUTE_EXTERNAL,
        },
    )
    .unwrap();
    let syn_c = with_tcp_checksum(ipv4(
        MAC_R2,
        MAC_C,
        IP_C,
        ip_x,
        TCP,
        64,
        &tcp(40000, 80, SYN),
    ));
    let (verdict, out_c) = dp.test_run(&syn_c, C).unwrap();
    assert_eq!(verdict, TC_ACT_REDIRECT);
    assert_eq!(&out_c[26..30], &gw_x.octets());
    let port_c = u16::from_be_bytes([out_c[34], out_c[35]]);
    assert_ne!(port_c, 40000, "a port of its own");
    assert!(port_c >= 1024);
    assert!(l4_checksum_ok(&out_c));

    // Replies to each port go back to the connection that owns it, translated back.
    let synack = with_tcp_checksum(ipv4(
        mac_rx,
        mac_x,
        ip_x,
        gw_x,
        TCP,
        64,
        &tcp(80, 40000, SYN | ACK),
    ));
    let (verdict, back) = dp.test_run(&synack, X).unwrap();
    assert_eq!(verdict, TC_ACT_REDIRECT);
    assert_eq!((&back[0..6], &back[6..12]), (&MAC_A[..], &MAC_R1[..]));
    assert_eq!(&back[26..30], &ip_x.octets());
    assert_eq!(&back[30..34], &IP_A.octets(), "back to A");
    assert_eq!(u16::from_be_bytes([back[36], back[37]]), 40000);
    assert_eq!(checksum(&back[14..34]), 0);
    assert!(l4_checksum_ok(&back));
    let synack_c = with_tcp_checksum(ipv4(
        mac_rx,
        mac_x,
        ip_x,
        gw_x,
        TCP,
        64,
        &tcp(80, port_c, SYN | ACK),
    ));
    let (verdict, back_c) = dp.test_run(&synack_c, X).unwrap();
    assert_eq!(verdict, TC_ACT_REDIRECT);
    assert_eq!(&back_c[0..6], &MAC_C[..]);
    assert_eq!(&back_c[30..34], &IP_C.octets(), "back to C");
    assert_eq!(
        u16::from_be_bytes([back_c[36], back_c[37]]),
        40000,
        "C's own port"
    );
    assert!(l4_checksum_ok(&back_c));
    // An ICMP error about C's translated connection (fragmentation needed on the way out)
    // reaches C with the quoted header translated back, every checksum valid.
    let mut icmp = vec![3, 4, 0, 0, 0, 0, 0x05, 0x78];
    icmp.extend_from_slice(&out_c[14..42]);
    let c = checksum(&icmp);
    icmp[2..4].copy_from_slice(&c.to_be_bytes());
    let err = ipv4(mac_rx, mac_x, ip_x, gw_x, ICMP, 64, &icmp);
    let (verdict, back) = dp.test_run(&err, X).unwrap();
    assert_eq!(
        verdict, TC_ACT_REDIRECT,
        "the error is RELATED to C's connection"
    );
    assert_eq!(&back[0..6], &MAC_C[..]);
    assert_eq!(&back[30..34], &IP_C.octets(), "to C");
    assert_eq!(checksum(&back[14..34]), 0, "outer IP checksum");
    assert_eq!(checksum(&back[34..]), 0, "ICMP checksum");
    assert_eq!(
        &back[54..58],
        &IP_C.octets(),
        "quoted source translated back"
    );
    assert_eq!(checksum(&back[42..62]), 0, "quoted IP checksum");
    assert_eq!(
        u16::from_be_bytes([back[62], back[63]]),
        40000,
        "quoted port"
    );
    // An error quoting a connection nobody has is not let in.
    let mut stray_q = out_c[14..42].to_vec();
    stray_q[20..22].copy_from_slice(&1u16.to_be_bytes());
    let mut icmp = vec![3, 4, 0, 0, 0, 0, 0x05, 0x78];
    icmp.extend_from_slice(&stray_q);
    let c = checksum(&icmp);
    icmp[2..4].copy_from_slice(&c.to_be_bytes());
    let err = ipv4(mac_rx, mac_x, ip_x, gw_x, ICMP, 64, &icmp);
    assert_eq!(dp.test_run(&err, X).unwrap().0, TC_ACT_SHOT);

    // A port nobody was given does not get in.
    let stray = with_tcp_checksum(ipv4(
        mac_rx,
        mac_x,
        ip_x,
        gw_x,
        TCP,
        64,
        &tcp(80, 40001, SYN | ACK),
    ));
    assert_eq!(dp.test_run(&stray, X).unwrap().0, TC_ACT_SHOT);

    // Ping: the echo id plays the port; the ICMP checksum stays valid both ways.
    let echo = ipv4(
        MAC_R1,
        MAC_A,
        IP_A,
        ip_x,
        ICMP,
        64,
        &icmp_echo(8, 0x4242, 1),
    );
    let (verdict, out) = dp.test_run(&echo, A).unwrap();
    assert_eq!(verdict, TC_ACT_REDIRECT);
    assert_eq!(&out[26..30], &gw_x.octets());
    assert_eq!(checksum(&out[34..58]), 0, "ICMP checksum valid");
    let id = [out[38], out[39]];
    let reply = ipv4(
        mac_rx,
        mac_x,
        ip_x,
        gw_x,
        ICMP,
        64,
        &icmp_echo(0, u16::from_be_bytes(id), 1),
    );
    let (verdict, back) = dp.test_run(&reply, X).unwrap();
    assert_eq!(verdict, TC_ACT_REDIRECT);
    assert_eq!(&back[30..34], &IP_A.octets());
    assert_eq!(
        u16::from_be_bytes([back[38], back[39]]),
        0x4242,
        "A's echo id"
    );
    assert_eq!(checksum(&back[34..58]), 0);

    // SNAT off: translations flushed, traffic leaves untranslated, replies stop.
    dp.set_gateway_snat(1, None).unwrap();
    assert_eq!(dp.snat_len().unwrap(), 0);
    assert_eq!(dp.test_run(&synack, X).unwrap().0, TC_ACT_SHOT);
    let (_, raw) = dp.test_run(&syn, A).unwrap();
    assert_eq!(&raw[26..30], &IP_A.octets());
}

/// Short timeouts for the expiry tests: a second for everything but established TCP.
fn short_timeouts() -> Timeouts {
    let s = std::time::Duration::from_secs(1);
    Timeouts {
        tcp_established: std::time::Duration::from_secs(3600),
        tcp_transient: s,
        tcp_close: s,
        udp: s,
        udp_stream: s,
        icmp: s,
        other: s,
    }
}

/// Sleeps past the short timeouts (the program's clock is coarse: a jiffy or so late).
fn idle() {
    std::thread::sleep(std::time::Duration::from_millis(1300));
}

#[test]
fn tracked_connections_expire_after_their_idle_timeout() {
    if !privileged() {
        return;
    }
    let mut dp = topology_with(Hook::Tc, short_timeouts());
    // B takes anything in; A takes nothing in but replies.
    open_port(&mut dp, B);
    let frame = |from: bool, l4: &[u8], proto: u8| {
        let (sm, dm, si, di) = if from {
            (MAC_A, MAC_B, IP_A, IP_B)
        } else {
            (MAC_B, MAC_A, IP_B, IP_A)
        };
        pad(ipv4(dm, sm, si, di, proto, 64, l4))
    };
    let (a_to_b, b_to_a) = (true, false);

    // UDP: the reply passes while the flow is fresh, not once it was idle past 1 s.
    let out = frame(a_to_b, &udp(5000, 53), UDP);
    let reply = frame(b_to_a, &udp(53, 5000), UDP);
    assert_eq!(dp.test_run(&out, A).unwrap().0, TC_ACT_REDIRECT);
    assert_eq!(dp.test_run(&reply, B).unwrap().0, TC_ACT_REDIRECT);
    idle();
    assert_eq!(
        dp.test_run(&reply, B).unwrap().0,
        TC_ACT_SHOT,
        "a stale flow is forgotten: the 'reply' is a new flow A does not let in"
    );
    assert_eq!(drops(&dp, B, DropReason::SecurityGroupIngress), 1);

    // TCP: established, it outlives the short timeouts; after a FIN it does not.
    let syn = frame(a_to_b, &tcp(40000, 80, SYN), TCP);
    let synack = frame(b_to_a, &tcp(80, 40000, SYN | ACK), TCP);
    let ack = frame(a_to_b, &tcp(40000, 80, ACK), TCP);
    let ack_back = frame(b_to_a, &tcp(80, 40000, ACK), TCP);
    for (f, port) in [(&syn, A), (&synack, B), (&ack, A)] {
        assert_eq!(dp.test_run(f, port).unwrap().0, TC_ACT_REDIRECT);
    }
    idle();
    assert_eq!(dp.test_run(&ack, A).unwrap().0, TC_ACT_REDIRECT);
    assert_eq!(
        dp.test_run(&ack_back, B).unwrap().0,
        TC_ACT_REDIRECT,
        "established: idle 1.3 s is nothing"
    );
    let fin = frame(a_to_b, &tcp(40000, 80, FIN | ACK), TCP);
    assert_eq!(dp.test_run(&fin, A).unwrap().0, TC_ACT_REDIRECT);
    idle();
    assert_eq!(
        dp.test_run(&ack_back, B).unwrap().0,
        TC_ACT_SHOT,
        "closing: 1 s idle and the connection is gone"
    );
    assert_eq!(drops(&dp, B, DropReason::ConntrackInvalid), 1);

    // A TCP connection still opening (SYN unanswered) expires as quickly.
    let syn2 = frame(a_to_b, &tcp(40001, 80, SYN), TCP);
    let synack2 = frame(b_to_a, &tcp(80, 40001, SYN | ACK), TCP);
    assert_eq!(dp.test_run(&syn2, A).unwrap().0, TC_ACT_REDIRECT);
    idle();
    assert_eq!(dp.test_run(&synack2, B).unwrap().0, TC_ACT_SHOT);

    // The GC removes every stale entry and keeps a live connection (both its ports').
    let syn3 = frame(a_to_b, &tcp(40002, 80, SYN), TCP);
    let synack3 = frame(b_to_a, &tcp(80, 40002, SYN | ACK), TCP);
    assert_eq!(dp.test_run(&syn3, A).unwrap().0, TC_ACT_REDIRECT);
    assert_eq!(dp.test_run(&synack3, B).unwrap().0, TC_ACT_REDIRECT);
    let before = dp.conntrack_len().unwrap();
    let gone = dp.expire().unwrap();
    assert_eq!(
        dp.conntrack_len().unwrap(),
        2,
        "the live connection, at A and at B"
    );
    assert_eq!(gone.connections, before - 2);
    assert!(gone.connections >= 6, "{gone:?}");
    let ack3 = frame(a_to_b, &tcp(40002, 80, ACK), TCP);
    assert_eq!(dp.test_run(&ack3, A).unwrap().0, TC_ACT_REDIRECT);
}

#[test]
fn gateway_snat_translations_expire_after_their_idle_timeout() {
    if !privileged() {
        return;
    }
    const X: u32 = 30;
    let mac_x = [0x02, 0, 0, 0, 0, 0x1e];
    let mac_rx = [0x02, 0, 0, 0, 0x01, 0x03];
    let ip_x = Ipv4Addr::new(172, 24, 4, 100);
    let gw_x = Ipv4Addr::new(172, 24, 4, 1);
    let mut dp = topology_with(Hook::Tc, short_timeouts());
    let mut x = port(X, 3, mac_x, ip_x);
    x.port_security = false;
    dp.set_port(&x).unwrap();
    dp.set_router_gateway(1, 3, mac_rx, gw_x, (Ipv4Addr::new(172, 24, 4, 0), 24), None)
        .unwrap();
    dp.set_gateway_snat(1, Some(gw_x)).unwrap();
    // A's firewall must not be what refuses the late reply: A takes UDP in from anyone.
    open_port(&mut dp, A);

    let out = pad(ipv4(MAC_R1, MAC_A, IP_A, ip_x, UDP, 64, &udp(5000, 53)));
    let (verdict, sent) = dp.test_run(&out, A).unwrap();
    assert_eq!(verdict, TC_ACT_REDIRECT);
    assert_eq!(&sent[26..30], &gw_x.octets(), "translated");
    let nat_port = u16::from_be_bytes([sent[34], sent[35]]);
    let reply = pad(ipv4(mac_rx, mac_x, ip_x, gw_x, UDP, 64, &udp(53, nat_port)));
    let (verdict, back) = dp.test_run(&reply, X).unwrap();
    assert_eq!(verdict, TC_ACT_REDIRECT);
    assert_eq!(
        &back[30..34],
        &IP_A.octets(),
        "replies come back while it is fresh"
    );
    assert_eq!(dp.snat_len().unwrap(), 1);

    idle();
    assert_eq!(
        dp.test_run(&reply, X).unwrap().0,
        TC_ACT_SHOT,
        "a stale translation lets nothing in"
    );
    let gone = dp.expire().unwrap();
    assert_eq!(gone.translations, 1);
    assert_eq!(dp.snat_len().unwrap(), 0, "the GC removed it");
    assert_eq!(dp.test_run(&reply, X).unwrap().0, TC_ACT_SHOT);

    // The connection sending again gets a translation again, and its replies pass.
    let (verdict, sent) = dp.test_run(&out, A).unwrap();
    assert_eq!(verdict, TC_ACT_REDIRECT);
    let nat_port = u16::from_be_bytes([sent[34], sent[35]]);
    let reply = pad(ipv4(mac_rx, mac_x, ip_x, gw_x, UDP, 64, &udp(53, nat_port)));
    assert_eq!(dp.test_run(&reply, X).unwrap().0, TC_ACT_REDIRECT);
    assert_eq!(dp.expire().unwrap(), Default::default(), "nothing stale");
    assert_eq!(dp.snat_len().unwrap(), 1);
}

#[test]
fn icmp_errors_a_port_sends_about_translated_traffic_leave_translated() {
    if !privileged() {
        return;
    }
    const X: u32 = 30;
    let mac_x = [0x02, 0, 0, 0, 0, 0x1e];
    let mac_rx = [0x02, 0, 0, 0, 0x01, 0x03];
    let ip_x = Ipv4Addr::new(172, 24, 4, 100);
    let gw_x = Ipv4Addr::new(172, 24, 4, 1);
    let fip = Ipv4Addr::new(172, 24, 4, 20);
    let mut dp = topology(Hook::Tc);
    let mut x = port(X, 3, mac_x, ip_x);
    x.port_security = false;
    dp.set_port(&x).unwrap();
    dp.set_router_gateway(1, 3, mac_rx, gw_x, (Ipv4Addr::new(172, 24, 4, 0), 24), None)
        .unwrap();
    dp.set_gateway_snat(1, Some(gw_x)).unwrap();
    dp.set_floating_ip(1, fip, IP_C, 3, mac_rx).unwrap();
    for p in [A, C] {
        open_port(&mut dp, p);
    }
    // A port-unreachable from `src` (port `mac`, router MAC `rmac`) quoting `quoted` (an
    // IP packet as it reached the port).
    let unreachable = |mac, rmac, src, quoted: &[u8]| {
        let mut icmp = vec![3, 3, 0, 0, 0, 0, 0, 0];
        icmp.extend_from_slice(&quoted[..28]);
        let c = checksum(&icmp);
        icmp[2..4].copy_from_slice(&c.to_be_bytes());
        ipv4(rmac, mac, src, ip_x, ICMP, 64, &icmp)
    };
    let check = |out: &[u8], from: Ipv4Addr, port: u16| {
        assert_eq!(&out[0..6], &mac_x[..], "to X");
        assert_eq!(&out[26..30], &from.octets(), "outer source translated");
        assert_eq!(checksum(&out[14..34]), 0, "outer IP checksum");
        assert_eq!(checksum(&out[34..]), 0, "ICMP checksum");
        assert_eq!(&out[54..58], &ip_x.octets(), "quoted source: X");
        assert_eq!(
            &out[58..62],
            &from.octets(),
            "quoted destination translated"
        );
        assert_eq!(checksum(&out[42..62]), 0, "quoted IP checksum");
        assert_eq!(u16::from_be_bytes([out[64], out[65]]), port, "quoted port");
    };

    // Gateway SNAT: A's UDP goes out, the reply comes back to A (whose port is closed).
    let out = pad(ipv4(MAC_R1, MAC_A, IP_A, ip_x, UDP, 64, &udp(5000, 53)));
    let (verdict, sent) = dp.test_run(&out, A).unwrap();
    assert_eq!(verdict, TC_ACT_REDIRECT);
    let nat_port = u16::from_be_bytes([sent[34], sent[35]]);
    let reply = pad(ipv4(mac_rx, mac_x, ip_x, gw_x, UDP, 64, &udp(53, nat_port)));
    let (verdict, at_a) = dp.test_run(&reply, X).unwrap();
    assert_eq!(verdict, TC_ACT_REDIRECT);
    let err = unreachable(MAC_A, MAC_R1, IP_A, &at_a[14..]);
    let (verdict, out) = dp.test_run(&err, A).unwrap();
    assert_eq!(verdict, TC_ACT_REDIRECT);
    check(&out, gw_x, nat_port);

    // Floating IP: X reaches C through it; C's error names the floating IP again.
    let inbound = pad(ipv4(mac_rx, mac_x, ip_x, fip, UDP, 64, &udp(53, 7000)));
    let (verdict, at_c) = dp.test_run(&inbound, X).unwrap();
    assert_eq!(verdict, TC_ACT_REDIRECT);
    assert_eq!(&at_c[30..34], &IP_C.octets());
    let err = unreachable(MAC_C, MAC_R2, IP_C, &at_c[14..]);
    let (verdict, out) = dp.test_run(&err, C).unwrap();
    assert_eq!(verdict, TC_ACT_REDIRECT);
    check(&out, fip, 7000);
}
