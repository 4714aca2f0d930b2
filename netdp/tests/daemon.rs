//! The `netdp` daemon end to end: started in a node namespace, driven through its Unix
//! socket API with Neutron's requests, with VMs (namespaces) plugged into taps named as
//! Neutron names them; then stopped and restarted while traffic flows.

#[path = "support/pins.rs"]
mod pins;
#[path = "support/topo.rs"]
#[allow(dead_code)]
mod topo;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use pins::PinDir;
use serde_json::{Value, json};
use tests::netns::{Netns, ip};

fn privileged() -> bool {
    caps::require_all(&[
        caps::Capability::Root,
        caps::Capability::Bpf,
        caps::Capability::Netns,
    ])
}

/// A test's state directory and its own pin directory under bpffs (named after `tag` and
/// this process), unpinned when the guard drops.
fn scratch(tag: &str) -> (tempfile::TempDir, PathBuf, PinDir) {
    let dir = tempfile::tempdir().unwrap();
    let unpin = PinDir::new(tag);
    (dir, unpin.path().to_path_buf(), unpin)
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
    start_with(node, dir, pins, &[])
}

fn start_with(node: &Netns, dir: &Path, pins: &Path, extra: &[&str]) -> Daemon {
    start_env(node, dir, pins, extra, &[])
}

fn start_env(
    node: &Netns,
    dir: &Path,
    pins: &Path,
    extra: &[&str],
    env: &[(&str, &str)],
) -> Daemon {
    let sock = dir.join("netdp.sock");
    let _ = std::fs::remove_file(&sock);
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
        .args(extra)
        .env("RUST_LOG", "warn")
        .envs(env.iter().copied())
        .spawn()
        .expect("start netdp");
    let deadline = Instant::now() + Duration::from_secs(10);
    while UnixStream::connect(&sock).is_err() {
        assert!(Instant::now() < deadline, "netdp did not come up");
        std::thread::sleep(Duration::from_millis(50));
    }
    Daemon(child)
}

fn stop(d: Daemon) {
    let pid = d.0.id() as i32;
    // SAFETY: signalling a child process we started and still own.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let mut d = d;
    let _ = d.0.wait();
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

/// Plugs a VM into the tap of `port` (the JSON of a created port).
fn plug(node: &Netns, tag: &str, port: &Value, prefix: u8, gw: &str) -> Netns {
    let p = &port["port"];
    let id = p["id"].as_str().unwrap();
    let tap = format!("tap{}", &id[..11]);
    let vm = Netns::new(tag).unwrap();
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
    ip(&[
        "-n",
        n,
        "link",
        "set",
        "eth0",
        "address",
        p["mac_address"].as_str().unwrap(),
    ])
    .unwrap();
    let addr = format!(
        "{}/{prefix}",
        p["fixed_ips"][0]["ip_address"].as_str().unwrap()
    );
    ip(&["-n", n, "addr", "add", &addr, "dev", "eth0"]).unwrap();
    ip(&["-n", n, "link", "set", "eth0", "up"]).unwrap();
    ip(&["-n", n, "route", "add", "default", "via", gw]).unwrap();
    ip(&["-n", node.name(), "link", "set", &tap, "up"]).unwrap();
    vm
}

fn ping(vm: &Netns, dst: &str) -> bool {
    vm.exec(&["ping", "-c", "1", "-W", "1", dst])
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// Pings until an answer comes or `secs` pass (the daemon programs new taps within 0.5 s).
fn ping_soon(vm: &Netns, dst: &str, secs: u64) -> bool {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < deadline {
        if ping(vm, dst) {
            return true;
        }
    }
    false
}

#[test]
fn the_daemon_connects_neutron_ports_and_survives_a_restart() {
    if !privileged() {
        return;
    }
    let (dir, pins, _unpin) = scratch("netdp-daemon");
    let node = Netns::new("netdpd-node").unwrap();
    let d = start(&node, dir.path(), &pins);
    let d_path = dir.path();

    let net = post(
        d_path,
        "/v2.0/networks",
        json!({"network": {"name": "blue", "project_id": "p"}}),
    );
    let net_id = net["network"]["id"].as_str().unwrap().to_string();
    let sub = post(
        d_path,
        "/v2.0/subnets",
        json!({"subnet": {"network_id": net_id, "ip_version": 4, "cidr": "10.1.0.0/24"}}),
    );
    let net2 = post(
        d_path,
        "/v2.0/networks",
        json!({"network": {"name": "green", "project_id": "p"}}),
    );
    let net2_id = net2["network"]["id"].as_str().unwrap().to_string();
    let sub2 = post(
        d_path,
        "/v2.0/subnets",
        json!({"subnet": {"network_id": net2_id, "ip_version": 4, "cidr": "10.2.0.0/24"}}),
    );
    // A and B in the default group (ingress from the group), C in an egress-only group.
    let a = post(
        d_path,
        "/v2.0/ports",
        json!({"port": {"network_id": net_id}}),
    );
    let b = post(
        d_path,
        "/v2.0/ports",
        json!({"port": {"network_id": net_id}}),
    );
    let lonely = post(
        d_path,
        "/v2.0/security-groups",
        json!({"security_group": {"name": "lonely", "project_id": "p"}}),
    );
    let lonely_id = lonely["security_group"]["id"].as_str().unwrap().to_string();
    let c = post(
        d_path,
        "/v2.0/ports",
        json!({"port": {"network_id": net2_id, "security_groups": [lonely_id]}}),
    );
    let router = post(d_path, "/v2.0/routers", json!({"router": {"name": "r"}}));
    let rid = router["router"]["id"].as_str().unwrap().to_string();
    // The first subnet by subnet_id; the second by a port made for it (Neutron allows
    // both): the router takes the port's address and MAC.
    let sub1_id = sub["subnet"]["id"].clone();
    let (st, body) = call(
        d_path,
        "PUT",
        &format!("/v2.0/routers/{rid}/add_router_interface"),
        Some(json!({"subnet_id": sub1_id})),
    );
    assert_eq!(st, 200, "{body}");
    let rport = post(
        d_path,
        "/v2.0/ports",
        json!({"port": {"network_id": net2_id,
            "fixed_ips": [{"subnet_id": sub2["subnet"]["id"], "ip_address": "10.2.0.1"}]}}),
    );
    let rport_id = rport["port"]["id"].as_str().unwrap().to_string();
    let (st, body) = call(
        d_path,
        "PUT",
        &format!("/v2.0/routers/{rid}/add_router_interface"),
        Some(json!({"port_id": rport_id})),
    );
    assert_eq!(st, 200, "{body}");
    let iface: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(iface["port_id"], rport_id.as_str());
    assert_eq!(iface["subnet_id"], sub2["subnet"]["id"]);

    let vm_a = plug(&node, "netdpd-a", &a, 24, "10.1.0.1");
    let vm_b = plug(&node, "netdpd-b", &b, 24, "10.1.0.1");
    let vm_c = plug(&node, "netdpd-c", &c, 24, "10.2.0.1");
    let ip_b = b["port"]["fixed_ips"][0]["ip_address"]
        .as_str()
        .unwrap()
        .to_string();
    let ip_c = c["port"]["fixed_ips"][0]["ip_address"]
        .as_str()
        .unwrap()
        .to_string();

    // The default group admits its own members.
    assert!(ping_soon(&vm_a, &ip_b, 5), "A reaches B through the daemon");
    // C's group admits nothing; a rule added through the API opens it, across the router.
    assert!(!ping(&vm_a, &ip_c));
    post(
        d_path,
        "/v2.0/security-group-rules",
        json!({"security_group_rule": {"security_group_id": lonely_id, "direction": "ingress", "protocol": "icmp"}}),
    );
    assert!(
        ping_soon(&vm_a, &ip_c, 3),
        "A reaches C once the rule exists"
    );
    let (_, port) = call(
        d_path,
        "GET",
        &format!("/v2.0/ports/{}", a["port"]["id"].as_str().unwrap()),
        None,
    );
    assert!(port.contains("\"status\":\"ACTIVE\""), "{port}");

    // An external network, the router's gateway on it, and a floating IP for A.
    let ext = post(
        d_path,
        "/v2.0/networks",
        json!({"network": {"name": "public", "router:external": true}}),
    );
    let ext_id = ext["network"]["id"].as_str().unwrap().to_string();
    post(
        d_path,
        "/v2.0/subnets",
        json!({"subnet": {"network_id": ext_id, "ip_version": 4, "cidr": "172.24.4.0/24"}}),
    );
    let (st, body) = call(
        d_path,
        "PUT",
        &format!("/v2.0/routers/{rid}"),
        Some(json!({"router": {"external_gateway_info": {"network_id": ext_id}}})),
    );
    assert_eq!(st, 200, "{body}");
    assert!(body.contains("external_fixed_ips"), "{body}");
    // A host outside: a port without port security on the external network.
    let outside = post(
        d_path,
        "/v2.0/ports",
        json!({"port": {"network_id": ext_id, "port_security_enabled": false}}),
    );
    let vm_x = plug(&node, "netdpd-x", &outside, 24, "172.24.4.1");
    let fip = post(
        d_path,
        "/v2.0/floatingips",
        json!({"floatingip": {"floating_network_id": ext_id, "port_id": a["port"]["id"]}}),
    );
    assert_eq!(fip["floatingip"]["status"], "ACTIVE");
    assert_eq!(fip["floatingip"]["router_id"], rid.as_str());
    let fip_addr = fip["floatingip"]["floating_ip_address"]
        .as_str()
        .unwrap()
        .to_string();
    // The default group admits only members: open ICMP from anywhere for A via a new group.
    let open = post(
        d_path,
        "/v2.0/security-groups",
        json!({"security_group": {"name": "open", "project_id": "p"}}),
    );
    let open_id = open["security_group"]["id"].as_str().unwrap().to_string();
    post(
        d_path,
        "/v2.0/security-group-rules",
        json!({"security_group_rule": {"security_group_id": open_id, "direction": "ingress",
            "protocol": "icmp", "remote_ip_prefix": "0.0.0.0/0"}}),
    );
    let default_id = a["port"]["security_groups"][0]
        .as_str()
        .unwrap()
        .to_string();
    let (st, body) = call(
        d_path,
        "PUT",
        &format!("/v2.0/ports/{}", a["port"]["id"].as_str().unwrap()),
        Some(json!({"port": {"security_groups": [default_id, open_id]}})),
    );
    assert_eq!(st, 200, "{body}");
    assert!(
        ping_soon(&vm_x, &fip_addr, 3),
        "the floating IP reaches A from outside"
    );
    // Disassociated, it stops.
    let (st, _) = call(
        d_path,
        "PUT",
        &format!(
            "/v2.0/floatingips/{}",
            fip["floatingip"]["id"].as_str().unwrap()
        ),
        Some(json!({"floatingip": {"port_id": null}})),
    );
    assert_eq!(st, 200);
    assert!(!ping(&vm_x, &fip_addr));

    let (s, metrics) = call(d_path, "GET", "/metrics", None);
    assert_eq!(s, 200);
    assert!(metrics.contains("ferrostack_netdp_port_tx_packets_total{port="));
    assert!(metrics.contains("reason=\"security_group_ingress\""));

    // Stop the daemon: pinned maps and links keep forwarding.
    stop(d);
    assert!(ping(&vm_a, &ip_b), "traffic flows while netdp is down");
    // Start it again: state restored, maps and links re-taken.
    let d = start(&node, d_path, &pins);
    assert!(ping(&vm_a, &ip_b));
    assert!(ping(&vm_a, &ip_c));
    let (_, nets) = call(d_path, "GET", "/v2.0/networks", None);
    assert!(nets.contains("blue") && nets.contains("green"));
    drop(d);
    drop((vm_a, vm_b, vm_c, vm_x, node));
}

/// A dhclient in a VM namespace, killed on drop; its resolv.conf is the namespace's own
/// (`/etc/netns/<ns>/resolv.conf`, bind-mounted by `ip netns exec`), removed on drop.
struct Dhclient {
    child: Child,
    etc: PathBuf,
}

impl Drop for Dhclient {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.etc);
        // /etc/netns itself, if this test created it (only removed when empty).
        let _ = std::fs::remove_dir("/etc/netns");
    }
}

fn dhclient(vm: &Netns, dir: &Path) -> Dhclient {
    let etc = PathBuf::from(format!("/etc/netns/{}", vm.name()));
    std::fs::create_dir_all(&etc).unwrap();
    // Without this file dhclient-script would rewrite the host's resolv.conf.
    std::fs::write(etc.join("resolv.conf"), "").unwrap();
    let conf = dir.join(format!("{}.conf", vm.name()));
    std::fs::write(
        &conf,
        "timeout 60;\nretry 1;\n\
         request subnet-mask, broadcast-address, routers, domain-name-servers, interface-mtu;\n",
    )
    .unwrap();
    let child = Command::new("ip")
        .args(["netns", "exec", vm.name(), "dhclient", "-d", "-1", "-v"])
        .arg("-cf")
        .arg(&conf)
        .arg("-lf")
        .arg(dir.join(format!("{}.leases", vm.name())))
        .arg("-pf")
        .arg(dir.join(format!("{}.pid", vm.name())))
        .arg("eth0")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("run dhclient (isc-dhcp-client; ./scripts/setup installs it)");
    Dhclient { child, etc }
}

/// Runs `argv` in `vm` until its output contains `want` or `secs` pass; returns the output.
fn wait_for(vm: &Netns, argv: &[&str], want: &str, secs: u64) -> String {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let out = vm.exec(argv).unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        if text.contains(want) || Instant::now() > deadline {
            return text;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn a_guest_gets_its_fixed_ip_gateway_dns_and_mtu_by_dhcp() {
    if !privileged() {
        return;
    }
    if std::process::Command::new("dhclient")
        .arg("--version")
        .output()
        .is_err()
    {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "dhclient is missing: run ./scripts/setup"
        );
        eprintln!("SKIP: dhclient is missing (isc-dhcp-client); run ./scripts/setup");
        return;
    }
    let (dir, pins, _unpin) = scratch("netdp-dhcp");
    let node = Netns::new("netdph-node").unwrap();
    // The lease time comes from a config file (flags give the paths).
    let conf = dir.path().join("netdp.toml");
    std::fs::write(&conf, "[dhcp]\nlease-time = \"2h\"\n").unwrap();
    let d = start_with(
        &node,
        dir.path(),
        &pins,
        &["--config", conf.to_str().unwrap()],
    );
    let dp = dir.path();
    let net = post(
        dp,
        "/v2.0/networks",
        json!({"network": {"name": "dhcp", "project_id": "p", "mtu": 1400}}),
    );
    let net_id = net["network"]["id"].as_str().unwrap().to_string();
    let sub = post(
        dp,
        "/v2.0/subnets",
        json!({"subnet": {"network_id": net_id, "ip_version": 4, "cidr": "10.3.0.0/24",
            "dns_nameservers": ["10.3.0.53", "192.0.2.53"]}}),
    );
    assert_eq!(sub["subnet"]["dns_nameservers"][1], "192.0.2.53");
    let router = post(dp, "/v2.0/routers", json!({"router": {"name": "r"}}));
    let rid = router["router"]["id"].as_str().unwrap().to_string();
    let (st, body) = call(
        dp,
        "PUT",
        &format!("/v2.0/routers/{rid}/add_router_interface"),
        Some(json!({"subnet_id": sub["subnet"]["id"]})),
    );
    assert_eq!(st, 200, "{body}");
    // A gets everything by DHCP; B is configured by hand.
    let a = post(dp, "/v2.0/ports", json!({"port": {"network_id": net_id}}));
    let b = post(dp, "/v2.0/ports", json!({"port": {"network_id": net_id}}));
    let ip_a = a["port"]["fixed_ips"][0]["ip_address"]
        .as_str()
        .unwrap()
        .to_string();
    let ip_b = b["port"]["fixed_ips"][0]["ip_address"]
        .as_str()
        .unwrap()
        .to_string();
    let vm_b = plug(&node, "netdph-b", &b, 24, "10.3.0.1");
    let vm_a = plug(&node, "netdph-a", &a, 24, "10.3.0.1");
    ip(&["-n", vm_a.name(), "addr", "flush", "dev", "eth0"]).unwrap();
    // Wait for the daemon to program A's tap (0.5 s re-sync) before the client starts.
    let port_path = format!("/v2.0/ports/{}", a["port"]["id"].as_str().unwrap());
    let deadline = Instant::now() + Duration::from_secs(10);
    while !call(dp, "GET", &port_path, None).1.contains("ACTIVE") {
        assert!(Instant::now() < deadline, "port A never became ACTIVE");
        std::thread::sleep(Duration::from_millis(100));
    }

    let client = dhclient(&vm_a, dp);
    let addr = wait_for(
        &vm_a,
        &["ip", "-4", "-o", "addr", "show", "dev", "eth0"],
        &format!("inet {ip_a}/24"),
        60,
    );
    assert!(
        addr.contains(&format!("inet {ip_a}/24")),
        "A got its fixed IP and mask: {addr}"
    );
    let routes = wait_for(&vm_a, &["ip", "-4", "route"], "default via 10.3.0.1", 10);
    assert!(routes.contains("default via 10.3.0.1 dev eth0"), "{routes}");
    let link = vm_a.exec(&["ip", "link", "show", "eth0"]).unwrap();
    let link = String::from_utf8_lossy(&link.stdout);
    assert!(link.contains("mtu 1400"), "the network's MTU: {link}");
    let resolv = std::fs::read_to_string(client.etc.join("resolv.conf")).unwrap();
    assert!(
        resolv.contains("nameserver 10.3.0.53") && resolv.contains("nameserver 192.0.2.53"),
        "{resolv}"
    );
    let leases =
        std::fs::read_to_string(dp.join(format!("{}.leases", vm_a.name()))).unwrap_or_default();
    assert!(
        leases.contains("option dhcp-lease-time 7200;"),
        "the configured lease time: {leases}"
    );
    // The configuration works: A reaches B (same default group) through the switch.
    assert!(
        ping_soon(&vm_a, &ip_b, 5),
        "A, configured by DHCP, reaches B"
    );
    // The server's counters at /metrics: a DISCOVER and a REQUEST (at least; the client may
    // retry on a loaded machine), each answered.
    let dhcp_counts = |dp: &Path| {
        let (st, text) = call(dp, "GET", "/metrics", None);
        assert_eq!(st, 200);
        let m = caps::prom::must_scrape("netdp", &text);
        (
            m.get("ferrostack_netdp_dhcp_requests_total", &[]),
            m.get("ferrostack_netdp_dhcp_replies_total", &[]),
            m.get("ferrostack_netdp_dhcp_ignored_total", &[]),
        )
    };
    let (req, rep, ign) = dhcp_counts(dp);
    assert!(rep >= 2.0 && req >= rep, "requests {req}, replies {rep}");
    assert_eq!(req, rep + ign, "every request answered or ignored");
    drop(client);

    // Across a restart (same pinned maps and ring), a port created afterwards gets its
    // lease too.
    stop(d);
    let d = start_with(
        &node,
        dir.path(),
        &pins,
        &["--config", conf.to_str().unwrap()],
    );
    let c = post(dp, "/v2.0/ports", json!({"port": {"network_id": net_id}}));
    let ip_c = c["port"]["fixed_ips"][0]["ip_address"]
        .as_str()
        .unwrap()
        .to_string();
    let vm_c = plug(&node, "netdph-c", &c, 24, "10.3.0.1");
    ip(&["-n", vm_c.name(), "addr", "flush", "dev", "eth0"]).unwrap();
    let port_path = format!("/v2.0/ports/{}", c["port"]["id"].as_str().unwrap());
    let deadline = Instant::now() + Duration::from_secs(10);
    while !call(dp, "GET", &port_path, None).1.contains("ACTIVE") {
        assert!(Instant::now() < deadline, "port C never became ACTIVE");
        std::thread::sleep(Duration::from_millis(100));
    }
    let client = dhclient(&vm_c, dp);
    let addr = wait_for(
        &vm_c,
        &["ip", "-4", "-o", "addr", "show", "dev", "eth0"],
        &format!("inet {ip_c}/24"),
        60,
    );
    assert!(
        addr.contains(&format!("inet {ip_c}/24")),
        "C, created after the restart, got its fixed IP: {addr}"
    );
    let (req, rep, _) = dhcp_counts(dp);
    assert!(
        rep >= 2.0 && req >= rep,
        "after the restart: requests {req}, replies {rep}"
    );
    assert!(ping_soon(&vm_c, &ip_b, 5), "C reaches B");
    drop(client);
    drop(d);
    drop((vm_a, vm_b, vm_c, node));
}

#[test]
fn gateway_snat_interface_removal_and_gateway_clearing_through_the_api() {
    if !privileged() {
        return;
    }
    let (dir, pins, _unpin) = scratch("netdp-snat");
    let node = Netns::new("netdps-node").unwrap();
    let d = start(&node, dir.path(), &pins);
    let dp = dir.path();
    let put = |path: &str, body: Value| call(dp, "PUT", path, Some(body));

    let net = post(dp, "/v2.0/networks", json!({"network": {"name": "priv"}}));
    let net_id = net["network"]["id"].as_str().unwrap().to_string();
    let sub = post(
        dp,
        "/v2.0/subnets",
        json!({"subnet": {"network_id": net_id, "ip_version": 4, "cidr": "10.4.0.0/24"}}),
    );
    let sub_id = sub["subnet"]["id"].as_str().unwrap().to_string();
    let ext = post(
        dp,
        "/v2.0/networks",
        json!({"network": {"name": "public", "router:external": true}}),
    );
    let ext_id = ext["network"]["id"].as_str().unwrap().to_string();
    post(
        dp,
        "/v2.0/subnets",
        json!({"subnet": {"network_id": ext_id, "ip_version": 4, "cidr": "172.24.5.0/24"}}),
    );
    let router = post(
        dp,
        "/v2.0/routers",
        json!({"router": {"name": "r", "external_gateway_info": {"network_id": ext_id}}}),
    );
    let rid = router["router"]["id"].as_str().unwrap().to_string();
    let info = &router["router"]["external_gateway_info"];
    assert_eq!(info["enable_snat"], true, "SNAT on by default: {info}");
    let gw_ip = info["external_fixed_ips"][0]["ip_address"]
        .as_str()
        .unwrap()
        .to_string();
    let rpath = format!("/v2.0/routers/{rid}");
    let (st, body) = put(
        &format!("{rpath}/add_router_interface"),
        json!({"subnet_id": sub_id}),
    );
    assert_eq!(st, 200, "{body}");

    let a = post(dp, "/v2.0/ports", json!({"port": {"network_id": net_id}}));
    let vm_a = plug(&node, "netdps-a", &a, 24, "10.4.0.1");
    let x = post(
        dp,
        "/v2.0/ports",
        json!({"port": {"network_id": ext_id, "port_security_enabled": false}}),
    );
    let vm_x = plug(&node, "netdps-x", &x, 24, "172.24.5.1");
    // The outside has no route to private subnets: only SNAT lets it answer.
    ip(&["-n", vm_x.name(), "route", "del", "default"]).unwrap();
    let ip_x = x["port"]["fixed_ips"][0]["ip_address"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(ping_soon(&vm_a, &ip_x, 5), "A reaches the outside via SNAT");
    // The outside sees the gateway address.
    let seen = vm_x
        .exec(&["sh", "-c", "ip -4 neigh show dev eth0"])
        .unwrap();
    assert!(
        String::from_utf8_lossy(&seen.stdout).contains(&gw_ip),
        "the outside talked to the gateway {gw_ip}"
    );

    // enable_snat false: A's private address leaves as is and gets no answer.
    let (st, body) = put(
        &rpath,
        json!({"router": {"external_gateway_info": {"network_id": ext_id, "enable_snat": false}}}),
    );
    assert_eq!(st, 200, "{body}");
    assert!(body.contains("\"enable_snat\":false"), "{body}");
    assert!(!ping(&vm_a, &ip_x), "no SNAT, no answer");
    let (st, _) = put(
        &rpath,
        json!({"router": {"external_gateway_info": {"network_id": ext_id, "enable_snat": "yes"}}}),
    );
    assert_eq!(st, 400);
    let (st, _) = put(
        &rpath,
        json!({"router": {"external_gateway_info": {"network_id": ext_id}}}),
    );
    assert_eq!(st, 200);
    assert!(ping_soon(&vm_a, &ip_x, 3), "SNAT back on");

    // A floating IP through the router pins both the interface and the gateway.
    let fip = post(
        dp,
        "/v2.0/floatingips",
        json!({"floatingip": {"floating_network_id": ext_id, "port_id": a["port"]["id"]}}),
    );
    let fip_path = format!(
        "/v2.0/floatingips/{}",
        fip["floatingip"]["id"].as_str().unwrap()
    );
    let (st, body) = put(&rpath, json!({"router": {"external_gateway_info": null}}));
    assert_eq!(st, 409, "{body}");
    let (st, body) = put(
        &format!("{rpath}/remove_router_interface"),
        json!({"subnet_id": sub_id}),
    );
    assert_eq!(st, 409, "{body}");
    assert_eq!(call(dp, "DELETE", &fip_path, None).0, 204);

    // Bad removal requests.
    let (st, _) = put(&format!("{rpath}/remove_router_interface"), json!({}));
    assert_eq!(st, 400);
    let (st, _) = put(
        &format!("{rpath}/remove_router_interface"),
        json!({"subnet_id": "nope"}),
    );
    assert_eq!(st, 404);

    // Removing the interface: the router no longer routes for the subnet.
    let (st, body) = put(
        &format!("{rpath}/remove_router_interface"),
        json!({"subnet_id": sub_id}),
    );
    assert_eq!(st, 200, "{body}");
    assert!(body.contains(&sub_id), "{body}");
    assert!(!ping(&vm_a, &ip_x), "no interface, no route out");
    let (_, ports) = call(dp, "GET", "/v2.0/ports", None);
    assert!(!ports.contains("network:router_interface"), "{ports}");
    // Back again, and working.
    let (st, _) = put(
        &format!("{rpath}/add_router_interface"),
        json!({"subnet_id": sub_id}),
    );
    assert_eq!(st, 200);
    // The new interface has a new MAC: forget the old one as a guest would, in time.
    ip(&["-n", vm_a.name(), "neigh", "flush", "dev", "eth0"]).unwrap();
    assert!(ping_soon(&vm_a, &ip_x, 3), "the interface is back");

    // Clearing the gateway: no way out any more.
    let (st, body) = put(&rpath, json!({"router": {"external_gateway_info": null}}));
    assert_eq!(st, 200, "{body}");
    assert!(body.contains("\"external_gateway_info\":null"), "{body}");
    assert!(!ping(&vm_a, &ip_x), "no gateway, no way out");
    let (_, ports) = call(dp, "GET", "/v2.0/ports", None);
    assert!(!ports.contains("network:router_gateway"), "{ports}");

    // A gateway again, then removed behind the daemon's back while it is down: the
    // restarted daemon prunes the stale interface from the pinned maps.
    let (st, _) = put(
        &rpath,
        json!({"router": {"external_gateway_info": {"network_id": ext_id}}}),
    );
    assert_eq!(st, 200);
    ip(&["-n", vm_x.name(), "neigh", "flush", "dev", "eth0"]).unwrap();
    assert!(ping_soon(&vm_a, &ip_x, 3), "gateway back");
    stop(d);
    assert!(ping(&vm_a, &ip_x), "pinned maps keep forwarding while down");
    let state_path = dp.join("state.json");
    let mut state: Value = serde_json::from_slice(&std::fs::read(&state_path).unwrap()).unwrap();
    state["ports"]
        .as_object_mut()
        .unwrap()
        .retain(|_, p| p["device_owner"] != "network:router_interface");
    std::fs::write(&state_path, serde_json::to_vec(&state).unwrap()).unwrap();
    let d = start(&node, dp, &pins);
    assert!(
        !ping(&vm_a, &ip_x),
        "the stale interface was pruned at start-up"
    );
    drop(d);
    drop((vm_a, vm_x, node));
}

#[test]
fn a_bad_config_file_stops_the_daemon_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    for (text, want) in [
        ("resync-interval = \"1ms\"\n", "resync-interval"),
        ("[dhcp]\nlease = \"1h\"\n", "unknown field"),
    ] {
        let conf = dir.path().join("bad.toml");
        std::fs::write(&conf, text).unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_netdp"))
            .arg("--config")
            .arg(&conf)
            .arg("--socket")
            .arg(dir.path().join("never.sock"))
            .output()
            .unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(want), "{err}");
        assert!(
            !dir.path().join("never.sock").exists(),
            "nothing was started"
        );
    }
}

#[test]
fn systemd_is_told_when_the_api_listens() {
    if !privileged() {
        return;
    }
    // The unit file says Type=notify: READY=1 must reach $NOTIFY_SOCKET, and only once the
    // API socket accepts connections.
    let unit = include_str!("../etc/netdp.service");
    assert!(unit.contains("Type=notify"), "{unit}");
    let (dir, pins, _unpin) = scratch("netdp-notify");
    let notify = dir.path().join("notify.sock");
    let sock = std::os::unix::net::UnixDatagram::bind(&notify).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let node = Netns::new("netdpn-node").unwrap();
    let d = start_env(
        &node,
        dir.path(),
        &pins,
        &[],
        &[("NOTIFY_SOCKET", notify.to_str().unwrap())],
    );
    let mut buf = [0u8; 64];
    let n = sock.recv(&mut buf).expect("READY=1 within 10 s");
    assert_eq!(&buf[..n], b"READY=1");
    let (status, body) = call(dir.path(), "GET", "/v2.0/networks", None);
    assert_eq!(status, 200, "{body}");
    stop(d);
}

/// A metric's value in `/metrics` text (unlabelled series only).
fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("{name} missing from /metrics"))
        .trim()
        .parse()
        .unwrap()
}

/// CLOCK_MONOTONIC in ns (the clock of `Instant`, comparable across the test's threads).
fn mono_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec to write into.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

#[test]
fn the_api_answers_while_the_conntrack_gc_walks_a_large_table() {
    use netdp::datapath::abi::{CtKey, CtVal};
    if !privileged() {
        return;
    }
    let (dir, pins, _unpin) = scratch("netdp3-gc");
    let node = Netns::new("ndp3gc-node").unwrap();
    // A first run pins the maps; then, with the daemon down, the conntrack table fills
    // with long-idle connections, which the next daemon's GC removes.
    stop(start(&node, dir.path(), &pins));
    const N: u32 = 100_000;
    {
        let data = aya::maps::MapData::from_pin(pins.join("conntrack")).expect("pinned conntrack");
        let mut map = aya::maps::Map::LruHashMap(data);
        let mut ct: aya::maps::HashMap<_, CtKey, CtVal> =
            aya::maps::HashMap::try_from(&mut map).unwrap();
        for i in 0..N {
            let key = CtKey {
                ifindex: 1 + i / 60_000,
                saddr: u32::from_ne_bytes([10, 9, 0, 1]),
                daddr: u32::from_ne_bytes([10, 9, 0, 2]),
                sport: (i % 60_000) as u16,
                dport: 53u16.to_be(),
                proto: 17,
                ..Default::default()
            };
            let val = CtVal {
                last_seen: 1, // idle since boot: past every timeout
                ..Default::default()
            };
            ct.insert(key, val, 0).unwrap();
        }
    }
    let conf = dir.path().join("gc.toml");
    std::fs::write(&conf, "[conntrack]\ngc-interval = \"1s\"\n").unwrap();
    let d = start_with(
        &node,
        dir.path(),
        &pins,
        &["--config", conf.to_str().unwrap()],
    );
    // Ask the API over and over (each /metrics answer needs the controller's lock) until
    // the GC's removals show; keep each request's start and end.
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut answered: Vec<(u64, u64)> = Vec::new();
    let last = loop {
        assert!(Instant::now() < deadline, "the GC never removed the table");
        let t0 = mono_ns();
        let (status, body) = call(dir.path(), "GET", "/metrics", None);
        let t1 = mono_ns();
        assert_eq!(status, 200, "{body}");
        let (s2, b2) = call(dir.path(), "GET", "/v2.0/networks", None);
        assert_eq!(s2, 200, "{b2}");
        let gone = metric(&body, "ferrostack_netdp_conntrack_expired_total");
        if gone > 0.0 {
            // (An LRU table may have evicted a few entries while it filled.)
            assert!(
                gone <= f64::from(N) && gone >= f64::from(N / 2),
                "removed {gone}"
            );
            break (
                t0,
                t1,
                metric(&body, "ferrostack_netdp_conntrack_gc_last_run_seconds"),
            );
        }
        answered.push((t0, t1));
    };
    stop(d);
    // The run that removed the table ended between the start of the last answer that did
    // not show it and the end of the first that did; so [end of that one - run time,
    // start of the last that did not] lies within the run.
    let (seen_start, seen_end, run_secs) = last;
    let run_ns = (run_secs * 1e9) as u64;
    let prev_start = answered.last().map(|a| a.0).unwrap_or(seen_start);
    let window = (seen_end.saturating_sub(run_ns), prev_start);
    assert!(
        run_ns >= 200_000_000,
        "a GC over {N} entries should take a while: {run_secs} s"
    );
    let inside: Vec<&(u64, u64)> = answered
        .iter()
        .filter(|(a, b)| *a >= window.0 && *b <= window.1)
        .collect();
    let span = window.1.saturating_sub(window.0);
    assert!(
        span >= run_ns / 2,
        "window {span} ns of a {run_ns} ns run: the answers around it were slow"
    );
    // Held under the controller's lock, the run would let no answer through until its end.
    assert!(
        inside.len() >= 3,
        "only {} API answers during a {run_secs} s GC run (window {span} ns)",
        inside.len()
    );
}

#[test]
fn overlapping_tenant_subnets_stay_separate_and_remote_group_rules_follow_membership() {
    if !privileged() {
        return;
    }
    let (dir, pins, _unpin) = scratch("netdp3-overlap");
    let node = Netns::new("ndp3ov-node").unwrap();
    let d = start(&node, dir.path(), &pins);
    let p = dir.path();
    let id = |v: &Value, kind: &str| v[kind]["id"].as_str().unwrap().to_string();
    // Two tenants, one subnet each, the same CIDR.
    let mut nets = vec![];
    for tenant in ["t1", "t2"] {
        let net = post(
            p,
            "/v2.0/networks",
            json!({"network": {"name": "n", "project_id": tenant}}),
        );
        let net_id = id(&net, "network");
        let sub = post(
            p,
            "/v2.0/subnets",
            json!({"subnet": {"network_id": net_id, "ip_version": 4, "cidr": "10.7.0.0/24", "project_id": tenant}}),
        );
        nets.push((net_id, id(&sub, "subnet")));
    }
    // Tenant 1: "db" takes ICMP in from members of "web" only; B1 is in db, A1 starts in
    // the default group. Tenant 2: A2 and B2 in its default group (members admit members).
    let web = post(
        p,
        "/v2.0/security-groups",
        json!({"security_group": {"name": "web", "project_id": "t1"}}),
    );
    let web_id = id(&web, "security_group");
    let db = post(
        p,
        "/v2.0/security-groups",
        json!({"security_group": {"name": "db", "project_id": "t1"}}),
    );
    let db_id = id(&db, "security_group");
    post(
        p,
        "/v2.0/security-group-rules",
        json!({"security_group_rule": {"security_group_id": db_id, "direction": "ingress",
            "protocol": "icmp", "remote_group_id": web_id}}),
    );
    let port = |net: &(String, String), tenant: &str, groups: Option<Vec<&str>>, ip: &str| {
        let mut body = json!({"port": {"network_id": net.0, "project_id": tenant,
            "fixed_ips": [{"subnet_id": net.1, "ip_address": ip}]}});
        if let Some(g) = groups {
            body["port"]["security_groups"] = json!(g);
        }
        post(p, "/v2.0/ports", body)
    };
    let a1 = port(&nets[0], "t1", None, "10.7.0.10");
    let b1 = port(&nets[0], "t1", Some(vec![&db_id]), "10.7.0.20");
    let a2 = port(&nets[1], "t2", None, "10.7.0.10");
    let b2 = port(&nets[1], "t2", None, "10.7.0.20");
    let ip_of = |v: &Value| {
        v["port"]["fixed_ips"][0]["ip_address"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let mac_of = |v: &Value| v["port"]["mac_address"].as_str().unwrap().to_string();
    assert_eq!(
        ip_of(&b1),
        ip_of(&b2),
        "the tenants' B ports share an address"
    );
    let vm_a1 = plug(&node, "ndp3ov-a1", &a1, 24, "10.7.0.1");
    let _vm_b1 = plug(&node, "ndp3ov-b1", &b1, 24, "10.7.0.1");
    let vm_a2 = plug(&node, "ndp3ov-a2", &a2, 24, "10.7.0.1");
    let _vm_b2 = plug(&node, "ndp3ov-b2", &b2, 24, "10.7.0.1");
    let target = ip_of(&b1);
    let neigh = |vm: &Netns| {
        String::from_utf8_lossy(&vm.exec(&["ip", "neigh", "show", &target]).unwrap().stdout)
            .to_lowercase()
    };

    // Tenant 2's A reaches its own B, and the answer is B2's (its MAC), never B1's.
    assert!(ping_soon(&vm_a2, &target, 5), "A2 reaches B2");
    let n = neigh(&vm_a2);
    assert!(n.contains(&mac_of(&b2)), "{n}");
    assert!(!n.contains(&mac_of(&b1)), "{n}");
    // Tenant 1's A is not in "web": B1 refuses it, whatever tenant 2 allows.
    assert!(!ping(&vm_a1, &target), "A1 is not in web yet");
    let n = neigh(&vm_a1);
    assert!(!n.contains(&mac_of(&b2)), "A1 never sees B2: {n}");
    // Joining "web" opens B1 to A1 (the rule's remote group now holds A1's address).
    let a1_id = id(&a1, "port");
    let (st, body) = call(
        p,
        "PUT",
        &format!("/v2.0/ports/{a1_id}"),
        Some(json!({"port": {"security_groups": [web_id]}})),
    );
    assert_eq!(st, 200, "{body}");
    assert!(ping_soon(&vm_a1, &target, 5), "A1 in web reaches B1");
    let n = neigh(&vm_a1);
    assert!(n.contains(&mac_of(&b1)), "{n}");
    // Leaving it closes B1 again.
    let (st, body) = call(
        p,
        "PUT",
        &format!("/v2.0/ports/{a1_id}"),
        Some(json!({"port": {"security_groups": []}})),
    );
    assert_eq!(st, 200, "{body}");
    std::thread::sleep(Duration::from_secs(1));
    assert!(!ping(&vm_a1, &target), "A1 out of web is refused again");
    stop(d);
}

/// The body of a ping's output.
fn ping_text(vm: &Netns, dst: &str) -> String {
    let out = vm
        .exec(&["ping", "-c", "1", "-W", "1", dst])
        .expect("run ping");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn extra_routes_reach_their_next_hop_and_win_over_connected_routes() {
    if !privileged() {
        return;
    }
    let (dir, pins, _unpin) = scratch("netdp-routes4");
    let node = Netns::new("netdpr-node").unwrap();
    let d = start(&node, dir.path(), &pins);
    let dp = dir.path();
    let put = |path: &str, body: Value| call(dp, "PUT", path, Some(body));
    let subnet = |cidr: &str| {
        let net = post(
            dp,
            "/v2.0/networks",
            json!({"network": {"project_id": "p"}}),
        );
        let net_id = net["network"]["id"].as_str().unwrap().to_string();
        let sub = post(
            dp,
            "/v2.0/subnets",
            json!({"subnet": {"network_id": net_id, "ip_version": 4, "cidr": cidr}}),
        );
        (net_id, sub["subnet"]["id"].as_str().unwrap().to_string())
    };
    let (net1, sub1) = subnet("10.31.0.0/24");
    let (net2, sub2) = subnet("10.32.0.0/24");
    let router = post(dp, "/v2.0/routers", json!({"router": {"name": "r"}}));
    let rpath = format!("/v2.0/routers/{}", router["router"]["id"].as_str().unwrap());
    for sub in [&sub1, &sub2] {
        let (st, body) = put(
            &format!("{rpath}/add_router_interface"),
            json!({ "subnet_id": sub }),
        );
        assert_eq!(st, 200, "{body}");
    }
    // A sends; N is a router VM (port security off, as Neutron needs for one) holding the
    // extra routes' destinations on its loopback.
    let a = post(dp, "/v2.0/ports", json!({"port": {"network_id": net1}}));
    let n = post(
        dp,
        "/v2.0/ports",
        json!({"port": {"network_id": net2, "port_security_enabled": false,
            "fixed_ips": [{"subnet_id": sub2, "ip_address": "10.32.0.5"}]}}),
    );
    let vm_a = plug(&node, "netdpr-a", &a, 24, "10.31.0.1");
    let vm_n = plug(&node, "netdpr-n", &n, 24, "10.32.0.1");
    ip(&["-n", vm_n.name(), "link", "set", "lo", "up"]).unwrap();
    for addr in ["10.99.0.1/32", "10.32.0.77/32"] {
        ip(&["-n", vm_n.name(), "addr", "add", addr, "dev", "lo"]).unwrap();
    }
    assert!(
        ping_soon(&vm_a, "10.32.0.5", 5),
        "A reaches N across the router"
    );
    // No route yet: the router answers "net unreachable"; 10.32.0.77 is on the connected
    // subnet, where no port has it.
    let text = ping_text(&vm_a, "10.99.0.1");
    assert!(text.contains("Destination Net Unreachable"), "{text}");
    let text = ping_text(&vm_a, "10.32.0.77");
    assert!(text.contains("Destination Host Unreachable"), "{text}");

    // The extra routes: a network behind N, and a host route inside the connected /24.
    let (st, body) = put(
        &format!("{rpath}/add_extraroutes"),
        json!({"router": {"routes": [
            {"destination": "10.99.0.0/24", "nexthop": "10.32.0.5"},
            {"destination": "10.32.0.77/32", "nexthop": "10.32.0.5"}]}}),
    );
    assert_eq!(st, 200, "{body}");
    assert!(
        ping_soon(&vm_a, "10.99.0.1", 3),
        "to the route's destination and back"
    );
    assert!(
        ping(&vm_a, "10.32.0.77"),
        "the /32 wins over the connected /24"
    );
    assert!(
        ping(&vm_a, "10.32.0.5"),
        "the rest of the /24 stays connected"
    );
    // The frames went to N's MAC: N's neighbour table learnt A from them, and A's
    // packets for 10.99.0.1 arrived on N's eth0 (its counters moved).
    let rx = |vm: &Netns| -> u64 {
        let out = vm
            .exec(&["cat", "/sys/class/net/eth0/statistics/rx_packets"])
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
    };
    let before = rx(&vm_n);
    assert!(ping(&vm_a, "10.99.0.1"));
    assert!(rx(&vm_n) > before, "the echo reached N's interface");

    // The interface the routes go through is pinned.
    let (st, body) = put(
        &format!("{rpath}/remove_router_interface"),
        json!({ "subnet_id": sub2 }),
    );
    assert_eq!(st, 409, "{body}");

    // A restarted daemon keeps the routes (state and pinned maps).
    stop(d);
    let d = start(&node, dp, &pins);
    assert!(ping_soon(&vm_a, "10.99.0.1", 3), "after a restart");

    // Through the gateway: a route to a network behind an outside router X leaves with
    // the gateway's SNAT, as the default route would (X has no route back to A).
    let ext = post(
        dp,
        "/v2.0/networks",
        json!({"network": {"router:external": true, "project_id": "p"}}),
    );
    let ext_id = ext["network"]["id"].as_str().unwrap().to_string();
    let ext_sub = post(
        dp,
        "/v2.0/subnets",
        json!({"subnet": {"network_id": ext_id, "ip_version": 4, "cidr": "172.24.6.0/24"}}),
    );
    let (st, body) = put(
        &rpath,
        json!({"router": {"external_gateway_info": {"network_id": ext_id}}}),
    );
    assert_eq!(st, 200, "{body}");
    let x = post(
        dp,
        "/v2.0/ports",
        json!({"port": {"network_id": ext_id, "port_security_enabled": false,
            "fixed_ips": [{"subnet_id": ext_sub["subnet"]["id"], "ip_address": "172.24.6.50"}]}}),
    );
    let vm_x = plug(&node, "netdpr-x", &x, 24, "172.24.6.1");
    ip(&["-n", vm_x.name(), "route", "del", "default"]).unwrap();
    ip(&["-n", vm_x.name(), "link", "set", "lo", "up"]).unwrap();
    ip(&[
        "-n",
        vm_x.name(),
        "addr",
        "add",
        "203.0.113.1/32",
        "dev",
        "lo",
    ])
    .unwrap();
    assert!(!ping(&vm_a, "203.0.113.1"), "no route behind X yet");
    let (st, body) = put(
        &format!("{rpath}/add_extraroutes"),
        json!({"router": {"routes": [{"destination": "203.0.113.0/24", "nexthop": "172.24.6.50"}]}}),
    );
    assert_eq!(st, 200, "{body}");
    assert!(
        ping_soon(&vm_a, "203.0.113.1", 3),
        "behind X through the gateway, SNATed"
    );

    // Removed: the destinations are unreachable again, and the /32 falls back to the /24.
    // (The gateway goes too, and its default route with it.)
    let (st, body) = put(&rpath, json!({"router": {"routes": []}}));
    assert_eq!(st, 200, "{body}");
    assert!(!ping(&vm_a, "203.0.113.1"), "no route behind X");
    let (st, body) = put(&rpath, json!({"router": {"external_gateway_info": null}}));
    assert_eq!(st, 200, "{body}");
    let text = ping_text(&vm_a, "10.99.0.1");
    assert!(text.contains("Destination Net Unreachable"), "{text}");
    assert!(!ping(&vm_a, "10.32.0.77"), "no host route, no answer");
    assert!(ping(&vm_a, "10.32.0.5"));
    drop(d);
    drop((vm_a, vm_n, vm_x, node));
}
