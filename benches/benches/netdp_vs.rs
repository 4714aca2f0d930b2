//! netdp vs a Linux bridge vs a bridge with a Neutron-style iptables firewall, side by side.
//!
//! One veth topology in namespaces: a generator VM and a sink VM, their host-side veths in a
//! node namespace. The generator transmits 64-byte UDP frames (60 bytes plus FCS) with an
//! XDP_TX program run in live-frame test-run mode; the sink counts arrivals with generic
//! (skb-mode) XDP on its eth0, which every delivery path below reaches (native XDP would
//! miss netdp's `bpf_redirect_peer` deliveries to veth ports). The node forwards them through
//!   (a) a Linux bridge,
//!   (b) the bridge plus br_netfilter and an iptables ruleset shaped like Neutron's
//!       iptables firewall (per-port chains, physdev matches, conntrack state, anti-spoofing),
//!   (c) netdp's tc program (port security, security groups, conntrack on; veth ports, so
//!       frames go straight to the sink's ingress with `bpf_redirect_peer`), then again with
//!       the DHCP slow path's packet tap open, as the daemon runs.
//! Then the per-packet cost of the datapath under plain test-run for its main paths.
//!
//! Run as root: `cargo bench -p benches --bench netdp_vs`.

use std::ffi::CString;
use std::fs::File;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::time::Duration;

use netdp::datapath::{Datapath, Direction, Hook, PortSpec, RuleSpec};
use netdp::pktgen::{Generator, Sink};
use tests::netns::{Netns, ip};

const MAC_G: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0a];
const MAC_S: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0b];
const MAC_R1: [u8; 6] = [0x02, 0, 0, 0, 1, 1];
const MAC_R2: [u8; 6] = [0x02, 0, 0, 0, 1, 2];
const FRAMES: u32 = 1_000_000;
const ROUNDS: usize = 3;

fn enter(name: &str) {
    let f = File::open(format!("/run/netns/{name}")).expect("open netns");
    // SAFETY: setns on a valid namespace fd changes only this thread's network namespace.
    let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
}

fn in_netns<T: Send>(name: &str, f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| {
        s.spawn(|| {
            enter(name);
            f()
        })
        .join()
        .expect("thread panicked")
    })
}

fn ifindex(name: &str) -> u32 {
    let c = CString::new(name).unwrap();
    // SAFETY: `c` is a valid NUL-terminated string for the duration of the call.
    unsafe { libc::if_nametoindex(c.as_ptr()) }
}

fn sh(ns: &Netns, cmd: &str) {
    let out = ns.exec(&["sh", "-c", cmd]).expect("exec");
    assert!(
        out.status.success(),
        "{cmd}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = data
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// A 60-byte UDP frame (64 on the wire with the FCS).
fn udp_frame(dst_mac: [u8; 6], src_mac: [u8; 6], src: Ipv4Addr, dst: Ipv4Addr) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&dst_mac);
    f.extend_from_slice(&src_mac);
    f.extend_from_slice(&[0x08, 0x00]);
    let mut iph = vec![0x45, 0, 0, 46, 0, 1, 0x40, 0, 64, 17, 0, 0];
    iph.extend_from_slice(&src.octets());
    iph.extend_from_slice(&dst.octets());
    let c = checksum(&iph);
    iph[10..12].copy_from_slice(&c.to_be_bytes());
    f.extend_from_slice(&iph);
    f.extend_from_slice(&[0x04, 0xd2, 0x00, 0x09, 0x00, 26, 0, 0]);
    f.resize(60, 0);
    f
}

struct Topology {
    node: Netns,
    gen_ns: Netns,
    sink_ns: Netns,
    tap_g: u32,
    tap_s: u32,
}

fn topology() -> Topology {
    let node = Netns::new("bench-node").unwrap();
    let gen_ns = Netns::new("bench-gen").unwrap();
    let sink_ns = Netns::new("bench-sink").unwrap();
    for (ns, tap, mac, addr) in [
        (&gen_ns, "tap-g", "02:00:00:00:00:0a", "10.0.0.10/24"),
        (&sink_ns, "tap-s", "02:00:00:00:00:0b", "10.0.0.11/24"),
    ] {
        let (n, nd) = (ns.name(), node.name());
        ip(&[
            "-n", nd, "link", "add", tap, "type", "veth", "peer", "name", "eth0", "netns", n,
        ])
        .unwrap();
        ip(&["-n", n, "link", "set", "eth0", "address", mac]).unwrap();
        ip(&["-n", n, "addr", "add", addr, "dev", "eth0"]).unwrap();
        ip(&["-n", n, "link", "set", "eth0", "up"]).unwrap();
        ip(&["-n", nd, "link", "set", tap, "up"]).unwrap();
    }
    // XDP_TX out of the generator's eth0 needs NAPI on its peer.
    sh(&node, "ethtool -K tap-g gro on >/dev/null");
    let (tap_g, tap_s) = in_netns(node.name(), || (ifindex("tap-g"), ifindex("tap-s")));
    Topology {
        node,
        gen_ns,
        sink_ns,
        tap_g,
        tap_s,
    }
}

/// TCP throughput from the generator VM to the sink VM with iperf3, in Gbit/s.
fn tcp_gbps(t: &Topology) -> f64 {
    let mut server = std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            t.sink_ns.name(),
            "iperf3",
            "-s",
            "-1",
            "-B",
            "10.0.0.11",
        ])
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("start iperf3 server");
    std::thread::sleep(Duration::from_millis(300));
    let out = t
        .gen_ns
        .exec(&["iperf3", "-c", "10.0.0.11", "-t", "2", "-J"])
        .expect("run iperf3 client");
    let _ = server.wait();
    let text = String::from_utf8_lossy(&out.stdout);
    // "sum_received": { ... "bits_per_second": N ... }
    text.split("\"sum_received\"")
        .nth(1)
        .and_then(|rest| rest.split("\"bits_per_second\":").nth(1))
        .and_then(|v| v.split([',', '}']).next())
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map(|bps| bps / 1e9)
        .unwrap_or(0.0)
}

/// Packet rate with a fresh sink on the sink VM, then TCP throughput without it.
fn measure_both(t: &Topology, frame: &[u8]) -> (f64, f64, f64) {
    let sink = in_netns(t.sink_ns.name(), || {
        Sink::attach("eth0").expect("attach sink")
    });
    let (pps, delivered) = measure(t, &sink, frame);
    drop(sink);
    let mut runs: Vec<f64> = (0..TCP_RUNS).map(|_| tcp_gbps(t)).collect();
    runs.sort_by(f64::total_cmp);
    (pps, delivered, runs[runs.len() / 2])
}

/// iperf3 runs per side; the TCP figure is their median (one run swings ~10% here).
const TCP_RUNS: usize = 5;

/// Sends FRAMES frames `ROUNDS` times; returns the best received rate in packets/s and the
/// delivered fraction of that round.
fn measure(t: &Topology, sink: &Sink, frame: &[u8]) -> (f64, f64) {
    let generator = Generator::load().expect("load generator");
    let mut best = (0.0f64, 0.0f64);
    for _ in 0..ROUNDS {
        let before = sink.packets().unwrap();
        let elapsed = in_netns(t.gen_ns.name(), || {
            generator
                .send(ifindex("eth0"), frame, FRAMES)
                .expect("live-frame test run")
        });
        std::thread::sleep(Duration::from_millis(50));
        let got = sink.packets().unwrap() - before;
        let pps = got as f64 / elapsed.as_secs_f64();
        if pps > best.0 {
            best = (pps, got as f64 / f64::from(FRAMES));
        }
    }
    best
}

const NEUTRON_RULES: &str = "
iptables -N neutron-sg-chain
iptables -N neutron-sg-fallback
iptables -A neutron-sg-fallback -j DROP
iptables -N neutron-i-tap-s
iptables -N neutron-o-tap-g
iptables -N neutron-s-tap-g
iptables -A FORWARD -m physdev --physdev-out tap-s --physdev-is-bridged -j neutron-sg-chain
iptables -A FORWARD -m physdev --physdev-in tap-g --physdev-is-bridged -j neutron-sg-chain
iptables -A neutron-sg-chain -m physdev --physdev-out tap-s --physdev-is-bridged -j neutron-i-tap-s
iptables -A neutron-sg-chain -m physdev --physdev-in tap-g --physdev-is-bridged -j neutron-o-tap-g
iptables -A neutron-sg-chain -j ACCEPT
iptables -A neutron-i-tap-s -m state --state RELATED,ESTABLISHED -j RETURN
iptables -A neutron-i-tap-s -m state --state INVALID -j DROP
iptables -A neutron-i-tap-s -p tcp --dport 22 -j RETURN
iptables -A neutron-i-tap-s -p icmp -j RETURN
iptables -A neutron-i-tap-s -p udp --dport 9 -j RETURN
iptables -A neutron-i-tap-s -p tcp --dport 5201 -j RETURN
iptables -A neutron-i-tap-s -j neutron-sg-fallback
iptables -A neutron-o-tap-g -s 0.0.0.0/32 -d 255.255.255.255/32 -p udp --sport 68 --dport 67 -j RETURN
iptables -A neutron-o-tap-g -j neutron-s-tap-g
iptables -A neutron-o-tap-g -p udp --sport 68 --dport 67 -j RETURN
iptables -A neutron-o-tap-g -p udp --sport 67 --dport 68 -j DROP
iptables -A neutron-o-tap-g -m state --state RELATED,ESTABLISHED -j RETURN
iptables -A neutron-o-tap-g -m state --state INVALID -j DROP
iptables -A neutron-o-tap-g -j RETURN
iptables -A neutron-s-tap-g -s 10.0.0.10/32 -m mac --mac-source 02:00:00:00:00:0a -j RETURN
iptables -A neutron-s-tap-g -j DROP
";

fn port(ifindex: u32, mac: [u8; 6], ip4: [u8; 4]) -> PortSpec {
    PortSpec {
        ifindex,
        net_id: 1,
        mac,
        ips: vec![Ipv4Addr::from(ip4)],
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

fn packet_rates() {
    let t = topology();
    let frame = udp_frame(
        MAC_S,
        MAC_G,
        Ipv4Addr::new(10, 0, 0, 10),
        Ipv4Addr::new(10, 0, 0, 11),
    );

    // (a) a Linux bridge, the sink's MAC known statically.
    sh(
        &t.node,
        "ip link add br0 type bridge && ip link set tap-g master br0 && \
         ip link set tap-s master br0 && ip link set br0 up && \
         bridge fdb replace 02:00:00:00:00:0b dev tap-s master static",
    );
    let bridge = measure_both(&t, &frame);

    // (b) the bridge plus br_netfilter and Neutron's iptables firewall.
    sh(&t.node, "sysctl -qw net.bridge.bridge-nf-call-iptables=1");
    for line in NEUTRON_RULES.lines().filter(|l| !l.trim().is_empty()) {
        sh(&t.node, line);
    }
    let iptables = measure_both(&t, &frame);
    sh(&t.node, "iptables -F && iptables -X && ip link del br0");

    // (c) netdp on tc ingress of both taps, security groups and conntrack on.
    let mut dp = Datapath::load(Hook::Tc).expect("load netdp");
    dp.set_port(&port(t.tap_g, MAC_G, [10, 0, 0, 10])).unwrap();
    dp.set_port(&port(t.tap_s, MAC_S, [10, 0, 0, 11])).unwrap();
    dp.set_port_rules(t.tap_g, &[rule(1, Direction::Egress, None, None)])
        .unwrap();
    dp.set_port_rules(
        t.tap_s,
        &[
            rule(2, Direction::Egress, None, None),
            rule(3, Direction::Ingress, Some(6), Some((22, 22))),
            rule(4, Direction::Ingress, Some(1), None),
            rule(5, Direction::Ingress, Some(17), Some((9, 9))),
            rule(6, Direction::Ingress, Some(6), Some((5201, 5201))),
        ],
    )
    .unwrap();
    let dp = in_netns(t.node.name(), move || {
        let mut dp = dp;
        dp.attach_tc("tap-g").expect("attach");
        dp.attach_tc("tap-s").expect("attach");
        dp
    });
    let netdp = measure_both(&t, &frame);
    // (c) again as the daemon runs it: both ports flagged for DHCP and the DHCP server
    // reading the datapath's ring of punted requests.
    let mut dp = dp;
    let mut g = port(t.tap_g, MAC_G, [10, 0, 0, 10]);
    let mut s = port(t.tap_s, MAC_S, [10, 0, 0, 11]);
    g.dhcp = true;
    s.dhcp = true;
    dp.set_port(&g).unwrap();
    dp.set_port(&s).unwrap();
    let ring = dp.dhcp_ring().expect("DHCP ring");
    let dhcp = in_netns(t.node.name(), || {
        netdp::dhcp::Server::start(netdp::dhcp::Leases::default(), ring).expect("start DHCP")
    });
    let netdp_dhcp = measure_both(&t, &frame);
    drop(dhcp);
    drop(dp);

    println!(
        "64-byte frames, {FRAMES} per round, best of {ROUNDS}; then iperf3 TCP, median of {TCP_RUNS} runs of 2 s:"
    );
    for (name, (pps, delivered, gbps)) in [
        ("(a) linux bridge", bridge),
        ("(b) bridge + neutron iptables", iptables),
        ("(c) netdp (tc, SG + conntrack)", netdp),
        ("(c) + DHCP served (ring punt)", netdp_dhcp),
    ] {
        println!(
            "  {name:32} {:>8.3} Mpps  delivered {:>5.1}%  TCP {:>6.2} Gbit/s",
            pps / 1e6,
            delivered * 100.0,
            gbps
        );
    }
    println!(
        "  packet rate: netdp / bridge = {:.2}x, netdp / bridge+iptables = {:.2}x, bridge+iptables / bridge = {:.2}x",
        netdp.0 / bridge.0,
        netdp.0 / iptables.0,
        iptables.0 / bridge.0
    );
    println!(
        "  TCP: netdp / bridge = {:.2}x, netdp / bridge+iptables = {:.2}x",
        netdp.2 / bridge.2,
        netdp.2 / iptables.2
    );
    println!(
        "  DHCP on / off: packet rate {:.3}x, TCP {:.3}x",
        netdp_dhcp.0 / netdp.0,
        netdp_dhcp.2 / netdp.2
    );
}

fn per_packet_costs() {
    let mut dp = Datapath::load(Hook::Tc).expect("load netdp");
    let (a, b, c) = (10, 11, 20);
    let mac_c = [0x02, 0, 0, 0, 0, 0x14];
    dp.set_port(&port(a, MAC_G, [10, 0, 0, 10])).unwrap();
    dp.set_port(&port(b, MAC_S, [10, 0, 0, 11])).unwrap();
    let mut pc = port(c, mac_c, [10, 0, 1, 20]);
    pc.net_id = 2;
    dp.set_port(&pc).unwrap();
    let gw = |x| Ipv4Addr::new(10, 0, x, 1);
    dp.add_router_interface(1, 1, MAC_R1, gw(0), (Ipv4Addr::new(10, 0, 0, 0), 24))
        .unwrap();
    dp.add_router_interface(1, 2, MAC_R2, gw(1), (Ipv4Addr::new(10, 0, 1, 0), 24))
        .unwrap();
    let allow = [
        rule(1, Direction::Egress, None, None),
        rule(2, Direction::Ingress, Some(17), Some((9, 9))),
    ];
    for p in [a, b, c] {
        dp.set_port_rules(p, &allow).unwrap();
    }
    let l2 = udp_frame(
        MAC_S,
        MAC_G,
        Ipv4Addr::new(10, 0, 0, 10),
        Ipv4Addr::new(10, 0, 0, 11),
    );
    let routed = udp_frame(
        MAC_R1,
        MAC_G,
        Ipv4Addr::new(10, 0, 0, 10),
        Ipv4Addr::new(10, 0, 1, 20),
    );
    let spoofed = udp_frame(
        MAC_S,
        MAC_G,
        Ipv4Addr::new(10, 0, 0, 99),
        Ipv4Addr::new(10, 0, 0, 11),
    );
    let mut arp = vec![0xff; 6];
    arp.extend_from_slice(&MAC_G);
    arp.extend_from_slice(&[0x08, 0x06, 0, 1, 8, 0, 6, 4, 0, 1]);
    arp.extend_from_slice(&MAC_G);
    arp.extend_from_slice(&[10, 0, 0, 10, 0, 0, 0, 0, 0, 0, 10, 0, 0, 11]);
    arp.resize(60, 0);
    println!(
        "per-packet cost of netdp_tc under BPF_PROG_TEST_RUN (mean of 200k single runs, each \
         from the original frame; the first line is the test-run floor: one lookup, pass):"
    );
    for (name, frame, port) in [
        ("frame from a non-port interface", &l2, 999),
        ("L2 forward, tracked connection", &l2, a),
        ("routed, tracked connection", &routed, a),
        ("ARP request answered", &arp, a),
        ("spoofed source dropped", &spoofed, a),
    ] {
        // One run first so the connection is tracked.
        dp.test_run(frame, port).unwrap();
        dp.bench_run(frame, port, 20_000).unwrap();
        let d = dp.bench_run(frame, port, 200_000).unwrap();
        println!("  {name:32} {:>6} ns", d.as_nanos());
    }
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    if !caps::require_all(&[
        caps::Capability::Root,
        caps::Capability::Bpf,
        caps::Capability::Netns,
    ]) {
        return;
    }
    packet_rates();
    per_packet_costs();
}
