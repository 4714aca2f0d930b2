//! netdp attached to veths in namespaces, with the real Linux stack on both ends: VMs are
//! namespaces, their host-side interfaces live in a "node" namespace where the tc build of
//! the datapath is attached (tcx ingress).

#[path = "support/pins.rs"]
mod pins;
#[path = "support/topo.rs"]
#[allow(dead_code)]
mod topo;

use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::time::Duration;

use netdp::datapath::{Datapath, Direction, DropReason, Hook, PortSpec, RuleSpec};
use pins::PinDir;
use tests::netns::{Netns, ip};
use topo::{Vm, in_netns, mac, ping, vm};

const MAC_A: &str = "02:00:00:00:00:0a";
const MAC_B: &str = "02:00:00:00:00:0b";
const MAC_C: &str = "02:00:00:00:00:14";
const MAC_D: &str = "02:00:00:00:00:0d";
const MAC_R1: [u8; 6] = [0x02, 0, 0, 0, 0x01, 0x01];
const MAC_R2: [u8; 6] = [0x02, 0, 0, 0, 0x01, 0x02];

fn privileged() -> bool {
    caps::require_all(&[
        caps::Capability::Root,
        caps::Capability::Bpf,
        caps::Capability::Netns,
    ])
}

fn spec(vm: &Vm, net_id: u32, mac_s: &str, ip: [u8; 4]) -> PortSpec {
    PortSpec {
        ifindex: vm.ifindex,
        net_id,
        mac: mac(mac_s),
        ips: vec![Ipv4Addr::from(ip)],
        port_security: true,
        allowed_address_pairs: vec![],
        dhcp: false,
        peer: true,
    }
}

fn rule(
    id: u32,
    direction: Direction,
    protocol: Option<u8>,
    ports: Option<(u16, u16)>,
) -> RuleSpec {
    RuleSpec {
        id,
        direction,
        protocol,
        port_range: ports,
        remote: None,
    }
}

fn egress_all(id: u32) -> RuleSpec {
    rule(id, Direction::Egress, None, None)
}

/// Two VMs on network 1, one on network 2, router 1 between them; the datapath attached to
/// every tap. Nothing is allowed in by default.
struct World {
    node: Netns,
    a: Vm,
    b: Vm,
    c: Vm,
    dp: Datapath,
}

fn world(dp: Datapath) -> World {
    let node = Netns::new("netdp-node").expect("create node netns");
    let a = vm(&node, "netdp-a", "tap-a", MAC_A, "10.0.0.10/24", "10.0.0.1");
    let b = vm(&node, "netdp-b", "tap-b", MAC_B, "10.0.0.11/24", "10.0.0.1");
    let c = vm(&node, "netdp-c", "tap-c", MAC_C, "10.0.1.20/24", "10.0.1.1");
    let mut dp = dp;
    dp.set_port(&spec(&a, 1, MAC_A, [10, 0, 0, 10])).unwrap();
    dp.set_port(&spec(&b, 1, MAC_B, [10, 0, 0, 11])).unwrap();
    dp.set_port(&spec(&c, 2, MAC_C, [10, 0, 1, 20])).unwrap();
    dp.add_router_interface(
        1,
        1,
        MAC_R1,
        Ipv4Addr::new(10, 0, 0, 1),
        (Ipv4Addr::new(10, 0, 0, 0), 24),
    )
    .unwrap();
    dp.add_router_interface(
        1,
        2,
        MAC_R2,
        Ipv4Addr::new(10, 0, 1, 1),
        (Ipv4Addr::new(10, 0, 1, 0), 24),
    )
    .unwrap();
    for (i, v) in [&a, &b, &c].into_iter().enumerate() {
        dp.set_port_rules(v.ifindex, &[egress_all(100 + i as u32)])
            .unwrap();
    }
    let taps = [a.tap.clone(), b.tap.clone(), c.tap.clone()];
    let dp = in_netns(node.name(), move || {
        for t in &taps {
            dp.attach_tc(t).expect("attach tc");
        }
        dp
    });
    World { node, a, b, c, dp }
}

/// A TCP echo server in `vm` on `addr`, serving one connection.
fn echo_server(ns: String, addr: SocketAddr) -> std::thread::JoinHandle<()> {
    let (tx, rx) = std::sync::mpsc::channel();
    let h = std::thread::spawn(move || {
        topo::enter(&ns);
        let l = TcpListener::bind(addr).expect("bind");
        tx.send(()).unwrap();
        if let Ok((mut s, _)) = l.accept() {
            // A cut connection never closes: give up after a quiet while.
            s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
            let mut buf = [0u8; 64];
            while let Ok(n) = s.read(&mut buf) {
                if n == 0 || s.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        }
    });
    rx.recv().unwrap();
    h
}

/// Connects from `ns` to `addr`; `None` if no connection within a second.
fn connect(ns: &str, addr: SocketAddr) -> Option<TcpStream> {
    in_netns(ns, || {
        let s = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
        Some(s)
    })
}

fn echoes(s: &mut TcpStream, msg: &[u8]) -> bool {
    if s.write_all(msg).is_err() {
        return false;
    }
    let mut buf = vec![0u8; msg.len()];
    s.read_exact(&mut buf).is_ok() && buf == msg
}

#[test]
fn ping_and_tcp_in_one_network_follow_security_groups() {
    if !privileged() {
        return;
    }
    let mut w = world(Datapath::load(Hook::Tc).expect("load"));
    // Deny by default: B accepts nothing.
    assert!(
        !ping(&w.a, "10.0.0.11"),
        "ping must be blocked without a rule"
    );
    assert!(
        w.dp.port_counters(w.a.ifindex)
            .unwrap()
            .drops(DropReason::SecurityGroupIngress)
            >= 1
    );
    // Allow ICMP in: ping works, ARP answered by the datapath.
    let icmp = rule(1, Direction::Ingress, Some(1), None);
    w.dp.set_port_rules(w.b.ifindex, &[egress_all(2), icmp])
        .unwrap();
    assert!(ping(&w.a, "10.0.0.11"), "ping must pass after the rule");
    assert!(w.dp.port_counters(w.a.ifindex).unwrap().0.arp_replies >= 1);

    // TCP to port 8080 is refused until a rule allows it; then replies come back.
    let addr: SocketAddr = "10.0.0.11:8080".parse().unwrap();
    let server = echo_server(w.b.ns.name().to_string(), addr);
    assert!(
        connect(w.a.ns.name(), addr).is_none(),
        "tcp must be blocked"
    );
    let tcp = rule(3, Direction::Ingress, Some(6), Some((8080, 8080)));
    w.dp.set_port_rules(w.b.ifindex, &[egress_all(2), icmp, tcp])
        .unwrap();
    let mut s = connect(w.a.ns.name(), addr).expect("tcp must pass after the rule");
    assert!(echoes(&mut s, b"hello"));
    assert_eq!(
        w.dp.rule_counters(3).unwrap().connections,
        1,
        "one connection admitted by the rule"
    );

    // Removing the rule cuts the live connection.
    w.dp.set_port_rules(w.b.ifindex, &[egress_all(2), icmp])
        .unwrap();
    assert!(!echoes(&mut s, b"again"), "the connection must be cut");
    assert!(
        w.dp.port_counters(w.a.ifindex)
            .unwrap()
            .drops(DropReason::ConntrackInvalid)
            >= 1
    );
    drop(s);
    let _ = server.join();
    drop(w);
}

#[test]
fn spoofed_sources_do_not_get_through() {
    if !privileged() {
        return;
    }
    let mut w = world(Datapath::load(Hook::Tc).expect("load"));
    let icmp = rule(1, Direction::Ingress, Some(1), None);
    w.dp.set_port_rules(w.b.ifindex, &[egress_all(2), icmp])
        .unwrap();
    assert!(ping(&w.a, "10.0.0.11"));
    // A takes an address that is not its own.
    w.a.ns
        .exec(&["ip", "addr", "add", "10.0.0.99/24", "dev", "eth0"])
        .unwrap();
    let out =
        w.a.ns
            .exec(&["ping", "-c", "1", "-W", "1", "-I", "10.0.0.99", "10.0.0.11"])
            .unwrap();
    assert!(!out.status.success(), "a spoofed source must be dropped");
    let drops = w.dp.port_counters(w.a.ifindex).unwrap();
    assert!(drops.drops(DropReason::SpoofIp) + drops.drops(DropReason::SpoofArp) >= 1);
    // And A takes another MAC.
    w.a.ns
        .exec(&["ip", "link", "set", "eth0", "address", "02:00:00:00:00:66"])
        .unwrap();
    assert!(!ping(&w.a, "10.0.0.11"));
    assert!(
        w.dp.port_counters(w.a.ifindex)
            .unwrap()
            .drops(DropReason::SpoofMac)
            + w.dp
                .port_counters(w.a.ifindex)
                .unwrap()
                .drops(DropReason::SpoofArp)
            >= 1
    );
    drop(w);
}

#[test]
fn traffic_is_routed_between_subnets() {
    if !privileged() {
        return;
    }
    let mut w = world(Datapath::load(Hook::Tc).expect("load"));
    let icmp = rule(1, Direction::Ingress, Some(1), None);
    w.dp.set_port_rules(w.c.ifindex, &[egress_all(2), icmp])
        .unwrap();
    assert!(ping(&w.a, "10.0.1.20"), "A reaches C through router 1");
    assert!(w.dp.port_counters(w.a.ifindex).unwrap().0.routed >= 1);
    assert!(w.dp.port_counters(w.c.ifindex).unwrap().0.routed >= 1);
    // With TTL 1 the router answers "time to live exceeded", as Linux would.
    let out =
        w.a.ns
            .exec(&["ping", "-c", "1", "-W", "1", "-t", "1", "10.0.1.20"])
            .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("From 10.0.0.1") && text.contains("Time to live exceeded"),
        "{text}"
    );
    // And "unreachable" for a neighbour that does not exist.
    let out =
        w.a.ns
            .exec(&["ping", "-c", "1", "-W", "1", "10.0.1.99"])
            .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("Destination Host Unreachable"), "{text}");
    // TCP across the router, replies included.
    let addr: SocketAddr = "10.0.1.20:9000".parse().unwrap();
    let tcp = rule(3, Direction::Ingress, Some(6), Some((9000, 9000)));
    w.dp.set_port_rules(w.c.ifindex, &[egress_all(2), icmp, tcp])
        .unwrap();
    let server = echo_server(w.c.ns.name().to_string(), addr);
    let mut s = connect(w.a.ns.name(), addr).expect("tcp across the router");
    assert!(echoes(&mut s, &[7u8; 40]));
    drop(s);
    let _ = server.join();
    let _ = &w.node;
    drop(w);
}

/// A UDP socket on `port` in namespace `ns`, bound before this returns; the thread answers
/// the first datagram it gets within `secs`, or `None`.
fn udp_listener(ns: &str, port: u16, secs: u64) -> std::thread::JoinHandle<Option<Vec<u8>>> {
    let (ready, bound) = std::sync::mpsc::channel();
    let ns = ns.to_string();
    let h = std::thread::spawn(move || {
        topo::enter(&ns);
        let u = UdpSocket::bind(("0.0.0.0", port)).expect("bind listener");
        u.set_read_timeout(Some(Duration::from_secs(secs))).unwrap();
        ready.send(()).unwrap();
        let mut buf = [0u8; 64];
        u.recv(&mut buf).ok().map(|n| buf[..n].to_vec())
    });
    bound.recv().expect("listener bound");
    h
}

#[test]
fn broadcasts_reach_every_other_port_of_their_network_and_no_other() {
    if !privileged() {
        return;
    }
    let mut w = world(Datapath::load(Hook::Tc).expect("load"));
    // A third VM on network 1, so that a flood has two ports to reach there.
    let d = vm(
        &w.node,
        "netdp-d",
        "tap-d",
        MAC_D,
        "10.0.0.12/24",
        "10.0.0.1",
    );
    w.dp.set_port(&spec(&d, 1, MAC_D, [10, 0, 0, 12])).unwrap();
    // Every receiver admits UDP, C too: only the flood's scope keeps it from C.
    let udp_in = rule(7, Direction::Ingress, Some(17), None);
    for (i, v) in [&w.b, &w.c, &d].into_iter().enumerate() {
        w.dp.set_port_rules(v.ifindex, &[egress_all(200 + i as u32), udp_in])
            .unwrap();
    }
    let dp = &mut w.dp;
    in_netns(w.node.name(), || dp.attach_tc("tap-d").expect("attach tc"));

    // A UDP broadcast from A.
    let port = 40200;
    let listeners: Vec<_> = [&w.b, &d, &w.c]
        .iter()
        .map(|v| udp_listener(v.ns.name(), port, 2))
        .collect();
    let flooded = w.dp.port_counters(w.a.ifindex).unwrap().0.flooded;
    in_netns(w.a.ns.name(), || {
        let s = UdpSocket::bind("10.0.0.10:40201").unwrap();
        s.set_broadcast(true).unwrap();
        s.send_to(b"to all of network 1", ("255.255.255.255", port))
            .expect("send the broadcast");
    });
    let got: Vec<Option<Vec<u8>>> = listeners.into_iter().map(|h| h.join().unwrap()).collect();
    let want = Some(b"to all of network 1".to_vec());
    assert_eq!(got[0], want, "B got the broadcast");
    assert_eq!(got[1], want, "D got the broadcast");
    assert_eq!(got[2], None, "C, on network 2, did not");
    assert_eq!(
        w.dp.port_counters(w.a.ifindex).unwrap().0.flooded,
        flooded + 1
    );

    // An ARP request for an address no port has is flooded too: D, which holds the
    // address on its interface (but not in netdp), answers it, so it learnt A from it.
    ip(&[
        "-n",
        d.ns.name(),
        "addr",
        "add",
        "10.0.0.99/24",
        "dev",
        "eth0",
    ])
    .unwrap();
    let _ = w.a.ns.exec(&["ping", "-c", "1", "-W", "1", "10.0.0.99"]);
    let neigh = d.ns.exec(&["ip", "neigh", "show", "dev", "eth0"]).unwrap();
    let neigh = String::from_utf8_lossy(&neigh.stdout).into_owned();
    assert!(
        neigh.contains("10.0.0.10") && neigh.contains(MAC_A),
        "D saw A's ARP request: {neigh}"
    );
    drop(d);
    drop(w);
}

#[test]
fn traffic_keeps_flowing_across_a_daemon_restart() {
    if !privileged() {
        return;
    }
    let pins = PinDir::new("netdp-restart");
    let dir = pins.path();
    let w = world(Datapath::load_pinned(Hook::Tc, dir).expect("load pinned"));
    let World {
        node,
        a,
        b,
        c,
        mut dp,
    } = w;
    let icmp = rule(1, Direction::Ingress, Some(1), None);
    dp.set_port_rules(b.ifindex, &[egress_all(2), icmp])
        .unwrap();
    assert!(ping(&a, "10.0.0.11"));
    // The "daemon" goes away: maps and links stay pinned, traffic keeps flowing.
    drop(dp);
    assert!(
        ping(&a, "10.0.0.11"),
        "traffic flows while the daemon is down"
    );
    // It comes back, reuses the maps and re-takes the links.
    let dp = Datapath::load_pinned(Hook::Tc, dir).expect("reload");
    let tap = b.tap.clone();
    let dp = in_netns(node.name(), move || {
        let mut dp = dp;
        dp.attach_tc(&tap).expect("reattach");
        dp
    });
    assert!(ping(&a, "10.0.0.11"));
    assert!(dp.port_counters(b.ifindex).unwrap().0.tx_packets >= 3);
    drop((a, b, c, node));
}

#[test]
fn a_floating_ip_reaches_a_vm_from_the_external_network() {
    if !privileged() {
        return;
    }
    let mut w = world(Datapath::load(Hook::Tc).expect("load"));
    // The external network 3: a host outside, and router 1's gateway.
    let ext = vm(
        &w.node,
        "netdp-ext",
        "tap-x",
        "02:00:00:00:00:1e",
        "172.24.4.100/24",
        "172.24.4.1",
    );
    let mut x = spec(&ext, 3, "02:00:00:00:00:1e", [172, 24, 4, 100]);
    x.port_security = false;
    w.dp.set_port(&x).unwrap();
    let mac_rx = [0x02, 0, 0, 0, 1, 3];
    w.dp.set_router_gateway(
        1,
        3,
        mac_rx,
        Ipv4Addr::new(172, 24, 4, 1),
        (Ipv4Addr::new(172, 24, 4, 0), 24),
        None,
    )
    .unwrap();
    let fip = Ipv4Addr::new(172, 24, 4, 10);
    w.dp.set_floating_ip(1, fip, Ipv4Addr::new(10, 0, 0, 10), 3, mac_rx)
        .unwrap();
    let icmp = rule(1, Direction::Ingress, Some(1), None);
    let tcp = rule(3, Direction::Ingress, Some(6), Some((8080, 8080)));
    w.dp.set_port_rules(w.a.ifindex, &[egress_all(2), icmp, tcp])
        .unwrap();
    let tap = ext.tap.clone();
    w.dp = in_netns(w.node.name(), move || {
        let mut dp = w.dp;
        dp.attach_tc(&tap).expect("attach");
        dp
    });

    let ext_vm = ext;
    assert!(ping(&ext_vm, "172.24.4.10"), "the floating IP answers");
    // TCP through the floating IP; the VM sees the real client, the client the FIP.
    let server = echo_server(w.a.ns.name().to_string(), "10.0.0.10:8080".parse().unwrap());
    let mut s = connect(ext_vm.ns.name(), "172.24.4.10:8080".parse().unwrap())
        .expect("tcp through the floating IP");
    assert!(echoes(&mut s, &[42u8; 1000]), "payload intact both ways");
    drop(s);
    let _ = server.join();
    // Without the floating IP, nothing gets in.
    w.dp.remove_floating_ip(1, fip, Ipv4Addr::new(10, 0, 0, 10), 3)
        .unwrap();
    assert!(!ping(&ext_vm, "172.24.4.10"));
    drop((ext_vm, w));
}

#[test]
fn ports_without_a_floating_ip_reach_the_outside_through_gateway_snat() {
    if !privileged() {
        return;
    }
    let mut w = world(Datapath::load(Hook::Tc).expect("load"));
    let ext = vm(
        &w.node,
        "netdp-snat-ext",
        "tap-x",
        "02:00:00:00:00:1e",
        "172.24.4.100/24",
        "172.24.4.1",
    );
    let mut x = spec(&ext, 3, "02:00:00:00:00:1e", [172, 24, 4, 100]);
    x.port_security = false;
    w.dp.set_port(&x).unwrap();
    let gw = Ipv4Addr::new(172, 24, 4, 1);
    w.dp.set_router_gateway(
        1,
        3,
        [0x02, 0, 0, 0, 1, 3],
        gw,
        (Ipv4Addr::new(172, 24, 4, 0), 24),
        None,
    )
    .unwrap();
    let tap = ext.tap.clone();
    w.dp = in_netns(w.node.name(), move || {
        let mut dp = w.dp;
        dp.attach_tc(&tap).expect("attach");
        dp
    });
    // The outside knows no route to private subnets: without SNAT it cannot answer.
    ext.ns
        .exec(&["ip", "route", "del", "default"])
        .expect("drop the outside's default route");
    assert!(!ping(&w.a, "172.24.4.100"), "no SNAT yet");
    w.dp.set_gateway_snat(1, Some(gw)).unwrap();
    assert!(ping(&w.a, "172.24.4.100"), "ping out through the gateway");
    assert!(ping(&w.c, "172.24.4.100"), "from the other subnet too");

    // A server outside sees the gateway address as its peer; replies reach both VMs.
    let (tx, rx) = std::sync::mpsc::channel();
    let ns = ext.ns.name().to_string();
    let server = std::thread::spawn(move || {
        topo::enter(&ns);
        let l = TcpListener::bind("172.24.4.100:7070").expect("bind");
        tx.send(()).unwrap();
        for _ in 0..2 {
            let Ok((mut s, peer)) = l.accept() else {
                return;
            };
            let _ = s.write_all(peer.to_string().as_bytes());
        }
    });
    rx.recv().unwrap();
    let addr: SocketAddr = "172.24.4.100:7070".parse().unwrap();
    for (vm, who) in [(&w.a, "A"), (&w.c, "C")] {
        let mut s = connect(vm.ns.name(), addr).unwrap_or_else(|| panic!("{who} connects out"));
        let mut peer = String::new();
        s.read_to_string(&mut peer).unwrap();
        assert!(
            peer.starts_with("172.24.4.1:"),
            "the server sees the gateway, not {who}'s fixed IP: {peer}"
        );
    }
    let _ = server.join();
    assert!(w.dp.snat_len().unwrap() >= 2);

    // A's kernel answers a reply that reached it through SNAT after its socket closed with
    // a port unreachable; it leaves translated (from the gateway, quoting the gateway
    // address and NAT port), so the outside's connected socket sees the refusal. Untranslated
    // it would quote A's fixed IP, which no socket outside matches.
    let a_ns = w.a.ns.name().to_string();
    in_netns(&a_ns, || {
        let u = UdpSocket::bind("0.0.0.0:40123").expect("bind in A");
        u.send_to(b"out", "172.24.4.100:40124").expect("send out");
    });
    let refused = in_netns(ext.ns.name(), || {
        let u = UdpSocket::bind("172.24.4.100:40124").expect("bind outside");
        // Port-preserving SNAT: A's port is the NAT port.
        u.connect("172.24.4.1:40123").expect("connect");
        u.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        u.send(b"back").expect("send back");
        let mut buf = [0u8; 16];
        u.recv(&mut buf).map_err(|e| e.kind())
    });
    assert_eq!(
        refused,
        Err(ErrorKind::ConnectionRefused),
        "A's port unreachable reached the outside translated"
    );

    // SNAT off: the outside is unreachable again.
    w.dp.set_gateway_snat(1, None).unwrap();
    assert!(!ping(&w.a, "172.24.4.100"));
    drop((ext, w));
}

#[test]
fn the_xdp_build_on_an_uplink_shares_maps_with_tc_and_forwards_live() {
    if !privileged() {
        return;
    }
    let pins = PinDir::new("netdp-xdp");
    let dir = pins.path();
    // VM ports on tc, as always; the uplink (the external network's port) on XDP, with the
    // same pinned maps.
    let mut w = world(Datapath::load_pinned(Hook::Tc, dir).expect("load tc"));
    let ext = vm(
        &w.node,
        "netdp-xdp-ext",
        "tap-up",
        "02:00:00:00:00:1e",
        "172.24.4.100/24",
        "172.24.4.1",
    );
    let mut x = spec(&ext, 3, "02:00:00:00:00:1e", [172, 24, 4, 100]);
    x.port_security = false;
    w.dp.set_port(&x).unwrap();
    let mac_rx = [0x02, 0, 0, 0, 1, 3];
    w.dp.set_router_gateway(
        1,
        3,
        mac_rx,
        Ipv4Addr::new(172, 24, 4, 1),
        (Ipv4Addr::new(172, 24, 4, 0), 24),
        None,
    )
    .unwrap();
    let fip = Ipv4Addr::new(172, 24, 4, 10);
    w.dp.set_floating_ip(1, fip, Ipv4Addr::new(10, 0, 0, 10), 3, mac_rx)
        .unwrap();
    let icmp = rule(1, Direction::Ingress, Some(1), None);
    let tcp = rule(3, Direction::Ingress, Some(6), Some((8080, 8080)));
    w.dp.set_port_rules(w.a.ifindex, &[egress_all(2), icmp, tcp])
        .unwrap();
    // A physical uplink delivers frames with complete checksums (XDP has no offload state
    // to carry); XDP redirects and XDP_TX into a veth need NAPI on the receiving end (GRO).
    // (GRO is listed as on by default but NAPI only starts when it is switched on.)
    for ns in [&ext.ns, &w.a.ns] {
        ns.exec(&["ethtool", "-K", "eth0", "tx", "off", "gro", "off"])
            .expect("ethtool");
        ns.exec(&["ethtool", "-K", "eth0", "gro", "on"]).unwrap();
    }
    // veth quirk: XDP_TX frames (the ARP answers) wake the peer only if it runs XDP too;
    // the pass-through guard on the outside host's end does (a real NIC sends on the wire).
    let ns_x = ext.ns.name().to_string();
    let _peer_xdp = in_netns(&ns_x, || {
        let mut g = netdp::guard::Guard::load().expect("load guard");
        g.attach("eth0").expect("attach guard");
        g
    });
    let xdp = Datapath::load_pinned(Hook::Xdp, dir).expect("load xdp on the same maps");
    let xdp = in_netns(w.node.name(), move || {
        let mut xdp = xdp;
        xdp.attach_xdp("tap-up").expect("attach xdp to the uplink");
        xdp
    });

    // ARP for the floating IP answered by XDP_TX, echo DNATed and redirected into A's tap.
    assert!(
        ping(&ext, "172.24.4.10"),
        "the floating IP answers through XDP"
    );
    let up = xdp.port_counters(ext.ifindex).unwrap();
    assert!(up.0.rx_packets >= 2 && up.0.arp_replies >= 1, "{up:?}");
    assert!(up.0.routed >= 1, "routed by the XDP build");
    // TCP, payload intact both ways (in by XDP, out by tc).
    let server = echo_server(w.a.ns.name().to_string(), "10.0.0.10:8080".parse().unwrap());
    let mut s = connect(ext.ns.name(), "172.24.4.10:8080".parse().unwrap())
        .expect("tcp through the XDP uplink");
    assert!(echoes(&mut s, &[42u8; 1200]), "payload intact both ways");
    drop(s);
    let _ = server.join();
    // Security groups apply on the XDP path too: port 8081 is not allowed in.
    assert!(connect(ext.ns.name(), "172.24.4.10:8081".parse().unwrap()).is_none());
    assert!(
        xdp.port_counters(ext.ifindex)
            .unwrap()
            .drops(DropReason::SecurityGroupIngress)
            >= 1
    );
    drop(xdp);
    drop((ext, w));
}

#[test]
fn veth_ports_are_told_from_taps() {
    if !privileged() {
        return;
    }
    let node = Netns::new("netdp-peer-node").expect("create node netns");
    let a = vm(
        &node,
        "netdp-peer-a",
        "tap-a",
        MAC_A,
        "10.0.0.10/24",
        "10.0.0.1",
    );
    tests::netns::ip(&["-n", node.name(), "tuntap", "add", "tap-t", "mode", "tap"]).unwrap();
    let (veth, tap, lo, none) = in_netns(node.name(), || {
        (
            netdp::datapath::has_peer("tap-a"),
            netdp::datapath::has_peer("tap-t"),
            netdp::datapath::has_peer("lo"),
            netdp::datapath::has_peer("nonexistent0"),
        )
    });
    assert!(veth, "a veth has a peer to deliver to");
    assert!(
        !tap && !lo && !none,
        "taps, loopback and missing interfaces do not"
    );
    drop((a, node));
}

/// Every record in the DHCP ring within `wait` (ifindex, frame), as the server reads them.
fn punted(
    ring: &mut aya::maps::RingBuf<aya::maps::MapData>,
    wait: Duration,
) -> Vec<(u32, Vec<u8>)> {
    let end = std::time::Instant::now() + wait;
    let mut got = Vec::new();
    loop {
        while let Some(item) = ring.next() {
            let (ifx, frame) = netdp::dhcp::punted(&item).expect("a well-formed record");
            got.push((ifx, frame.to_vec()));
        }
        if std::time::Instant::now() >= end {
            return got;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn only_dhcp_requests_of_dhcp_ports_reach_userspace() {
    if !privileged() {
        return;
    }
    let mut w = world(Datapath::load(Hook::Tc).unwrap());
    let mut a = spec(&w.a, 1, MAC_A, [10, 0, 0, 10]);
    a.dhcp = true;
    w.dp.set_port(&a).unwrap();
    w.dp.set_port_rules(
        w.b.ifindex,
        &[egress_all(101), rule(7, Direction::Ingress, None, None)],
    )
    .unwrap();
    let mut ring = w.dp.dhcp_ring().expect("open the ring");
    let send_udp = |ns: String, src: (&'static str, u16), dst: (&'static str, u16)| {
        in_netns(&ns, move || {
            let s = std::net::UdpSocket::bind(src).unwrap();
            s.set_broadcast(true).unwrap();
            for _ in 0..5 {
                let _ = s.send_to(b"not-dhcp", dst);
            }
        })
    };
    // Ordinary traffic from the DHCP port: unicast (ping, UDP to B, even to port 67 from
    // another source port) and broadcasts; and DHCP-shaped requests from B, which has no
    // DHCP flag. None of it is punted.
    assert!(ping(&w.a, "10.0.0.11"), "A still reaches B");
    let (na, nb) = (w.a.ns.name().to_string(), w.b.ns.name().to_string());
    send_udp(na.clone(), ("10.0.0.10", 0), ("10.0.0.11", 9));
    send_udp(na.clone(), ("10.0.0.10", 0), ("10.0.0.11", 67));
    send_udp(na.clone(), ("10.0.0.10", 0), ("10.0.0.255", 9));
    send_udp(nb.clone(), ("0.0.0.0", 68), ("255.255.255.255", 67));
    assert_eq!(
        punted(&mut ring, Duration::from_secs(1)),
        vec![],
        "nothing but DHCP requests of DHCP ports reaches userspace"
    );
    // A's DHCP-shaped broadcast (68 -> 67) is punted, each one once, with A's ifindex and
    // the frame as sent.
    send_udp(na, ("0.0.0.0", 68), ("255.255.255.255", 67));
    let got = punted(&mut ring, Duration::from_secs(2));
    assert_eq!(got.len(), 5, "five requests, five records");
    for (ifx, frame) in &got {
        assert_eq!(*ifx, w.a.ifindex, "from A's interface");
        assert_eq!(&frame[6..12], &mac(MAC_A), "A's frame");
        assert_eq!(u16::from_be_bytes([frame[36], frame[37]]), 67);
        assert_eq!(&frame[frame.len() - 8..], b"not-dhcp");
    }
    let c = w.dp.port_counters(w.a.ifindex).unwrap();
    assert_eq!(c.total_drops(), 0, "punted requests are not drops: {c:?}");
    drop(ring);
    drop(w);
}

/// A dhclient in `vm`'s namespace, killed on drop with its files (its resolv.conf is the
/// namespace's own, `/etc/netns/<ns>/resolv.conf`, bind-mounted by `ip netns exec`).
struct Dhclient {
    child: std::process::Child,
    etc: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for Dhclient {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.etc);
        let _ = std::fs::remove_dir("/etc/netns"); // only when empty
    }
}

fn dhclient(vm: &Netns) -> Dhclient {
    let dir = tempfile::tempdir().unwrap();
    let etc = std::path::PathBuf::from(format!("/etc/netns/{}", vm.name()));
    std::fs::create_dir_all(&etc).unwrap();
    // Without this file dhclient-script would rewrite the host's resolv.conf.
    std::fs::write(etc.join("resolv.conf"), "").unwrap();
    let conf = dir.path().join("dhclient.conf");
    std::fs::write(
        &conf,
        "timeout 60;\nretry 1;\n\
         request subnet-mask, broadcast-address, routers, domain-name-servers, interface-mtu;\n",
    )
    .unwrap();
    let child = std::process::Command::new("ip")
        .args(["netns", "exec", vm.name(), "dhclient", "-d", "-1", "-v"])
        .arg("-cf")
        .arg(&conf)
        .arg("-lf")
        .arg(dir.path().join("leases"))
        .arg("-pf")
        .arg(dir.path().join("pid"))
        .arg("eth0")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("run dhclient (isc-dhcp-client; ./scripts/setup installs it)");
    Dhclient {
        child,
        etc,
        _dir: dir,
    }
}

#[test]
fn a_guest_on_an_xdp_port_gets_its_lease_from_a_real_dhclient() {
    if !privileged() {
        return;
    }
    // One VM on a port served by the XDP build (native XDP on the node's veth), its address
    // and routes removed: all it has it must get by DHCP.
    let node = Netns::new("ndp3x-node").expect("create node netns");
    let a = vm(&node, "ndp3x-a", "tap-x", MAC_A, "10.0.0.10/24", "10.0.0.1");
    let n = a.ns.name().to_string();
    tests::netns::ip(&["-n", &n, "addr", "flush", "dev", "eth0"]).unwrap();
    let mut dp = Datapath::load(Hook::Xdp).unwrap();
    let mut port = spec(&a, 1, MAC_A, [10, 0, 0, 10]);
    port.dhcp = true;
    port.peer = false;
    dp.set_port(&port).unwrap();
    dp.set_port_rules(a.ifindex, &[egress_all(1)]).unwrap();
    let ring = dp.dhcp_ring().expect("open the ring");
    let leases = netdp::dhcp::Leases::default();
    leases.replace(
        [(
            a.ifindex,
            netdp::dhcp::Lease {
                mac: mac(MAC_A),
                ip: Ipv4Addr::new(10, 0, 0, 10),
                prefix_len: 24,
                gateway: Some(Ipv4Addr::new(10, 0, 0, 1)),
                dns: vec![Ipv4Addr::new(10, 0, 0, 53)],
                mtu: 1450,
                lease_secs: 3600,
                server_ip: Ipv4Addr::new(10, 0, 0, 2),
                server_mac: MAC_R1,
            },
        )]
        .into(),
    );
    let tap = a.tap.clone();
    let (dp, server) = in_netns(node.name(), move || {
        dp.attach_xdp(&tap).expect("attach xdp");
        // Replies leave through a packet socket of the node's namespace.
        let server = netdp::dhcp::Server::start(leases, ring).expect("start the DHCP server");
        (dp, server)
    });
    let client = dhclient(&a.ns);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let show =
        |argv: &[&str]| String::from_utf8_lossy(&a.ns.exec(argv).unwrap().stdout).to_string();
    loop {
        let addr = show(&["ip", "-4", "addr", "show", "dev", "eth0"]);
        if addr.contains("10.0.0.10/24") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no lease within 60 s: {addr}; server {:?}, port {:?}",
            server.stats(),
            dp.port_counters(a.ifindex)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let (mut routes, mut link) = (String::new(), String::new());
    while std::time::Instant::now() < deadline {
        routes = show(&["ip", "-4", "route"]);
        link = show(&["ip", "link", "show", "dev", "eth0"]);
        if routes.contains("default via 10.0.0.1") && link.contains("mtu 1450") {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(routes.contains("default via 10.0.0.1"), "{routes}");
    assert!(link.contains("mtu 1450"), "{link}");
    use std::sync::atomic::Ordering::Relaxed;
    let stats = server.stats();
    assert!(
        stats.requests.load(Relaxed) >= 2 && stats.replies.load(Relaxed) >= 2,
        "DISCOVER and REQUEST answered: {stats:?}"
    );
    // The requests went to the slow path, not dropped nor flooded.
    let c = dp.port_counters(a.ifindex).unwrap();
    assert_eq!(c.total_drops(), 0, "{c:?}");
    drop(client);
    drop(server);
    drop(dp);
    drop((a, node));
}
