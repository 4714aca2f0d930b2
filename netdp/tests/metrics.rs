//! `/metrics` of the `netdp` daemon, checked with the Prometheus text parser: two VMs
//! (namespaces) on one network exchange exactly known frames, and the per-port counters
//! move by exactly those frames and bytes; spoofed frames count as drops by reason.

#[path = "support/pins.rs"]
mod pins;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use pins::PinDir;
use serde_json::{Value, json};
use tests::netns::{Netns, ip};

/// A 56-byte ping: 14 (Ethernet) + 20 (IPv4) + 8 (ICMP) + 56 bytes.
const PING_FRAME: f64 = 98.0;

fn privileged() -> bool {
    caps::require_all(&[
        caps::Capability::Root,
        caps::Capability::Bpf,
        caps::Capability::Netns,
    ])
}

/// The daemon process, killed on drop.
struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start(node: &Netns, dir: &Path, pins: &Path) -> Daemon {
    let sock = dir.join("netdp.sock");
    // nsenter, not `ip netns exec`: the latter remounts /sys, hiding bpffs.
    let child = Command::new("nsenter")
        .arg(format!("--net=/run/netns/{}", node.name()))
        .arg(env!("CARGO_BIN_EXE_netdp"))
        .arg("--socket")
        .arg(&sock)
        .arg("--state")
        .arg(dir.join("state.json"))
        .arg("--pin-dir")
        .arg(pins)
        .env("RUST_LOG", "warn")
        .spawn()
        .expect("start netdp");
    let d = Daemon(child);
    let deadline = Instant::now() + Duration::from_secs(10);
    while UnixStream::connect(&sock).is_err() {
        assert!(Instant::now() < deadline, "netdp did not come up");
        std::thread::sleep(Duration::from_millis(50));
    }
    d
}

/// One HTTP/1.1 request over the socket; returns the status and the body.
fn call(dir: &Path, method: &str, path: &str, body: Option<Value>) -> (u16, String) {
    let mut s = UnixStream::connect(dir.join("netdp.sock")).expect("connect");
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nhost: netdp\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let status = out[9..12].parse().unwrap();
    let body = out
        .split_once("\r\n\r\n")
        .map(|x| x.1)
        .unwrap_or("")
        .to_string();
    (status, body)
}

fn post(dir: &Path, path: &str, body: Value) -> Value {
    let (s, b) = call(dir, "POST", path, Some(body));
    assert_eq!(s, 201, "{path}: {b}");
    serde_json::from_str(&b).unwrap()
}

fn scrape(dir: &Path) -> caps::prom::Scrape {
    let (s, text) = call(dir, "GET", "/metrics", None);
    assert_eq!(s, 200, "{text}");
    caps::prom::must_scrape("netdp", &text)
}

fn sysctl(ns: &Netns, kv: &str) {
    let out = ns.exec(&["sysctl", "-qw", kv]).unwrap();
    assert!(out.status.success(), "sysctl {kv}: {out:?}");
}

/// A VM namespace plugged into the tap of `port`, with IPv6 off (no router solicitations
/// or MLD reports) so that the only frames it sends are the ones the test makes.
fn plug(node: &Netns, tag: &str, port: &Value) -> (Netns, String, String) {
    let p = &port["port"];
    let id = p["id"].as_str().unwrap();
    let tap = format!("tap{}", &id[..11]);
    let vm = Netns::new(tag).unwrap();
    sysctl(&vm, "net.ipv6.conf.all.disable_ipv6=1");
    sysctl(&vm, "net.ipv6.conf.default.disable_ipv6=1");
    let n = vm.name();
    ip(&[
        "-n",
        node.name(),
        "link",
        "add",
        &tap,
        "type",
        "veth",
        "peer",
        "name",
        "eth0",
        "netns",
        n,
    ])
    .unwrap();
    let mac = p["mac_address"].as_str().unwrap().to_string();
    ip(&["-n", n, "link", "set", "eth0", "address", &mac]).unwrap();
    let addr = p["fixed_ips"][0]["ip_address"]
        .as_str()
        .unwrap()
        .to_string();
    ip(&["-n", n, "addr", "add", &format!("{addr}/24"), "dev", "eth0"]).unwrap();
    ip(&["-n", n, "link", "set", "eth0", "up"]).unwrap();
    ip(&["-n", node.name(), "link", "set", &tap, "up"]).unwrap();
    (vm, addr, mac)
}

fn ping(vm: &Netns, args: &[&str]) -> bool {
    let mut argv = vec!["ping", "-q", "-W", "2"];
    argv.extend_from_slice(args);
    vm.exec(&argv).map(|o| o.status.success()).unwrap_or(false)
}

#[test]
fn port_counters_move_by_exactly_the_frames_sent() {
    if !privileged() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let unpin = PinDir::new("netdp-metrics");
    let pins = unpin.path().to_path_buf();
    let node = Netns::new("netdpm-node").unwrap();
    sysctl(&node, "net.ipv6.conf.all.disable_ipv6=1");
    sysctl(&node, "net.ipv6.conf.default.disable_ipv6=1");
    let _d = start(&node, dir.path(), &pins);
    let d = dir.path();

    let net = post(
        d,
        "/v2.0/networks",
        json!({"network": {"name": "m", "project_id": "p"}}),
    );
    let net_id = net["network"]["id"].as_str().unwrap().to_string();
    post(
        d,
        "/v2.0/subnets",
        json!({"subnet": {"network_id": net_id, "ip_version": 4, "cidr": "10.7.0.0/24"}}),
    );
    // Both in the project's default group: each admits the other.
    let a = post(d, "/v2.0/ports", json!({"port": {"network_id": net_id}}));
    let b = post(d, "/v2.0/ports", json!({"port": {"network_id": net_id}}));
    let (vm_a, ip_a, mac_a) = plug(&node, "netdpm-a", &a);
    let (vm_b, ip_b, mac_b) = plug(&node, "netdpm-b", &b);
    // Static neighbours: no ARP in the counted window.
    for (vm, peer_ip, peer_mac) in [(&vm_a, &ip_b, &mac_b), (&vm_b, &ip_a, &mac_a)] {
        ip(&[
            "-n",
            vm.name(),
            "neigh",
            "replace",
            peer_ip,
            "lladdr",
            peer_mac,
            "nud",
            "permanent",
            "dev",
            "eth0",
        ])
        .unwrap();
    }
    // The daemon programs new taps within 0.5 s; wait until A reaches B.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !ping(&vm_a, &["-c", "1", &ip_b]) {
        assert!(Instant::now() < deadline, "A never reached B");
    }
    let id_a = a["port"]["id"].as_str().unwrap();
    let id_b = b["port"]["id"].as_str().unwrap();

    let before = scrape(d);
    assert!(ping(&vm_a, &["-c", "5", "-i", "0.2", &ip_b]));
    // Five frames from B with a source address that is not its own: dropped as spoofed.
    ip(&[
        "-n",
        vm_b.name(),
        "addr",
        "add",
        "10.7.0.250/24",
        "dev",
        "eth0",
    ])
    .unwrap();
    assert!(!ping(
        &vm_b,
        &["-c", "5", "-i", "0.2", "-W", "1", "-I", "10.7.0.250", &ip_a]
    ));
    let after = scrape(d);

    let delta = |name: &str, port: &str| {
        let l = [("port", port)];
        after.sum(name, &l) - before.sum(name, &l)
    };
    let n = 5.0;
    let port = "ferrostack_netdp_port_";
    // A sent 5 echo requests and got 5 replies; the spoofed requests never reached it.
    assert_eq!(delta(&format!("{port}rx_packets_total"), id_a), n);
    assert_eq!(delta(&format!("{port}tx_packets_total"), id_a), n);
    assert_eq!(
        delta(&format!("{port}rx_bytes_total"), id_a),
        n * PING_FRAME
    );
    assert_eq!(
        delta(&format!("{port}tx_bytes_total"), id_a),
        n * PING_FRAME
    );
    // B received 5 requests, sent 5 replies and 5 spoofed requests.
    assert_eq!(delta(&format!("{port}tx_packets_total"), id_b), n);
    assert_eq!(delta(&format!("{port}rx_packets_total"), id_b), 2.0 * n);
    assert_eq!(
        delta(&format!("{port}rx_bytes_total"), id_b),
        2.0 * n * PING_FRAME
    );
    let drops = "ferrostack_netdp_port_drops_total";
    let spoof = [("port", id_b), ("reason", "spoof_ip")];
    assert_eq!(after.get(drops, &spoof) - before.get(drops, &spoof), n);
    assert_eq!(delta(drops, id_b), n, "no other drop reason moved");
    assert_eq!(delta(drops, id_a), 0.0);
    for kind in [
        "routed_packets_total",
        "flooded_packets_total",
        "arp_replies_total",
    ] {
        assert_eq!(delta(&format!("{port}{kind}"), id_a), 0.0, "{kind}");
    }
    // Rule counters count admissions: the 5 pings are one ICMP echo connection (one id),
    // admitted once by an egress rule of A's group and once by an ingress rule of B's; the
    // spoofed requests never reach the firewall.
    let conns = "ferrostack_netdp_rule_connections_total";
    assert_eq!(after.sum(conns, &[]) - before.sum(conns, &[]), 2.0);
    // DHCP requests the punt ring had no room for are a drop reason of their own; the
    // conntrack GC's removals are counted too (nothing expired in these seconds).
    let ring_full = [("port", id_a), ("reason", "dhcp_ring_full")];
    assert_eq!(after.get(drops, &ring_full), 0.0);
    assert_eq!(
        after.get("ferrostack_netdp_conntrack_expired_total", &[]),
        0.0
    );
    assert_eq!(after.get("ferrostack_netdp_snat_expired_total", &[]), 0.0);
    assert_eq!(after.get("ferrostack_netdp_ports", &[]), 2.0);
    assert_eq!(after.get("ferrostack_netdp_ports_active", &[]), 2.0);
}
