//! A one-node cloud end to end with the stock `openstack` CLI and a real KVM guest:
//! objectd and control on the host, blockdp on the host, netdp and the node agent in a
//! node namespace joined to the host by a veth pair (control calls the agent and the agent
//! heartbeats and fetches images over it). The vmm kit's `server` guest is uploaded as a
//! kernel image, a 256 KiB disk image names it by `kernel_id`; `server create --network
//! --wait --key-name --property --user-data` boots it; its console shows the disk's
//! checksum, and the key and user data it read from its config drive; stop, start and
//! delete.
//! Neutron on the way: an external network whose uplink is a port bound to the node (a veth
//! into an "outside" namespace), a router with its gateway there and an interface on the
//! tenant subnet, the server in a security group; a floating IP pings the guest from
//! outside once a rule lets ICMP in (and not before); deleting the server removes its
//! port, the floating IP's association and the tap.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::node::wait_until;
use common::{ADMIN_PASSWORD, fails, free_port, ok, ok_json};
use serde_json::Value;

const NODE_TOKEN: &str = "e2e-node-token";
const KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGZlcnJvc3RhY2stY29udHJvbC1lMmUta2V5LTAwMDEh e2e@ferrostack";

fn privileged() -> bool {
    caps::require_all(&[
        caps::Capability::Root,
        caps::Capability::Kvm,
        caps::Capability::Bpf,
        caps::Capability::Netns,
        caps::Capability::IoUring,
    ])
}

/// Child processes killed (and reaped) on drop, VMMs named in the agent's state too.
struct Procs {
    children: common::node::Procs,
    agent_state: PathBuf,
    veth: String,
    pins: PathBuf,
}

impl Drop for Procs {
    fn drop(&mut self) {
        self.children.stop();
        if let Ok(bytes) = std::fs::read(self.agent_state.join("state.json"))
            && let Ok(v) = serde_json::from_slice::<Value>(&bytes)
            && let Some(servers) = v["servers"].as_object()
        {
            for s in servers.values() {
                for key in ["vmm_pid", "shim_pid"] {
                    if let Some(pid) = s["process"][key].as_i64() {
                        let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
                    }
                }
            }
        }
        let _ = tests::netns::ip(&["link", "del", &self.veth]);
        let _ = std::fs::remove_dir_all(&self.pins);
    }
}

fn wait_socket(path: &Path) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while std::os::unix::net::UnixStream::connect(path).is_err() {
        assert!(
            Instant::now() < deadline,
            "{} never appeared",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn fnv1a(data: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in data {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

fn wait_status(env: &[(String, String)], name: &str, status: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let v = ok_json(env, &["server", "show", name]);
        if v["status"] == status && v["OS-EXT-STS:task_state"].is_null() {
            return v;
        }
        assert!(
            Instant::now() < deadline && v["status"] != "ERROR",
            "{name} never became {status}: {v}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn wait_console(env: &[(String, String)], name: &str, needle: &str, count: usize) -> String {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let text = ok(env, &["console", "log", "show", name]);
        if text.matches(needle).count() >= count {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "console never showed {needle:?} x{count}:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// A one-node cloud: objectd and control on the host, blockdp on the host, netdp and the
/// agent in a node namespace (meters sampled every second, alarms evaluated every second);
/// a flavor `m1.tiny`, the `server` guest as `server-kernel`, a
/// 256 KiB disk image `server-disk` naming it, a network `blue` with a subnet. `salt` keeps
/// the interface names and addresses of tests in one process apart.
struct OneNode {
    procs: Procs,
    ns: tests::netns::Netns,
    env: Vec<(String, String)>,
    image: Vec<u8>,
    blockdp_sock: PathBuf,
    netdp_sock: PathBuf,
    d: PathBuf,
    _dir: tempfile::TempDir,
}

fn one_node_cloud(salt: u32) -> OneNode {
    let bins = common::node::binaries(&["vmm", "blockdp", "netdp", "ferrostack-agent"]);
    let kernel = vmm::testkit::build_guest(
        "server",
        &Path::new(env!("CARGO_TARGET_TMPDIR")).join("guests"),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();

    // The node namespace, joined to the host by a veth pair on a /30.
    let ns = tests::netns::Netns::new("ctl-e2e").unwrap();
    let tag = (std::process::id() + salt) % 100_000;
    let veth = format!("fsc{tag}");
    let mut procs = Procs {
        children: common::node::Procs(vec![]),
        agent_state: d.join("agent"),
        veth: veth.clone(),
        pins: PathBuf::from(format!("/sys/fs/bpf/ferrostack-test-control-{}", ns.name())),
    };
    let octet = 4 + (tag % 60) * 4;
    let host_ip = format!("10.254.{}.{}", tag % 200, octet + 1);
    let node_ip = format!("10.254.{}.{}", tag % 200, octet + 2);
    tests::netns::ip(&[
        "link",
        "add",
        &veth,
        "type",
        "veth",
        "peer",
        "name",
        "eth-ctl",
        "netns",
        ns.name(),
    ])
    .unwrap();
    tests::netns::ip(&["addr", "add", &format!("{host_ip}/30"), "dev", &veth]).unwrap();
    tests::netns::ip(&["link", "set", &veth, "up"]).unwrap();
    let node_cidr = format!("{node_ip}/30");
    for args in [
        ["ip", "addr", "add", node_cidr.as_str(), "dev", "eth-ctl"].as_slice(),
        ["ip", "link", "set", "eth-ctl", "up"].as_slice(),
        ["ip", "link", "set", "lo", "up"].as_slice(),
    ] {
        let o = ns.exec(args).unwrap();
        assert!(o.status.success(), "{args:?}: {o:?}");
    }

    // objectd and control on the host.
    let port = free_port();
    let url = format!("http://{host_ip}:{port}");
    let objectd_port = common::start_objectd(d, &url);
    let config = format!(
        "listen = \"{host_ip}:{port}\"\npublic-url = \"{url}\"\n\
         [compute]\nheartbeat-interval-secs = 1\nnode-token = \"{NODE_TOKEN}\"\n\
         [telemetry]\nevaluation-interval = \"1s\"\n\
         [store]\nlocation = \"{}\"\n[tokens]\nkey-dir = \"{}\"\n\
         [images]\nstore-url = \"http://127.0.0.1:{objectd_port}\"\nstaging-dir = \"{}\"\n",
        d.join("control.db").display(),
        d.join("keys").display(),
        d.join("staging").display()
    );
    std::fs::write(d.join("control.toml"), config).unwrap();
    let control_bin = env!("CARGO_BIN_EXE_control");
    let out = Command::new(control_bin)
        .arg("--config")
        .arg(d.join("control.toml"))
        .args(["bootstrap", "--password", ADMIN_PASSWORD, "--out-dir"])
        .arg(d)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    assert!(out.status.success(), "bootstrap: {out:?}");
    procs.children.0.push(
        Command::new(control_bin)
            .arg("--config")
            .arg(d.join("control.toml"))
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );

    // blockdp on the host, netdp and the agent in the node namespace.
    let blockdp_sock = d.join("blockdp/api.sock");
    std::fs::create_dir_all(d.join("blockdp")).unwrap();
    procs.children.0.push(
        Command::new(bins.join("blockdp"))
            .arg("--data-dir")
            .arg(d.join("blockdp"))
            .arg("--api-socket")
            .arg(&blockdp_sock)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_socket(&blockdp_sock);
    let netdp_sock = d.join("netdp.sock");
    procs.children.0.push(
        Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", ns.name()))
            .arg(bins.join("netdp"))
            .arg("--socket")
            .arg(&netdp_sock)
            .arg("--state")
            .arg(d.join("netdp-state.json"))
            .arg("--pin-dir")
            .arg(&procs.pins)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_socket(&netdp_sock);
    std::fs::create_dir_all(d.join("agent")).unwrap();
    let agent_port = free_port();
    procs.children.0.push(
        Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", ns.name()))
            .arg(bins.join("ferrostack-agent"))
            .arg("--state-dir")
            .arg(d.join("agent"))
            .arg("--socket")
            .arg(d.join("agent/agent.sock"))
            .arg("--blockdp-socket")
            .arg(&blockdp_sock)
            .arg("--netdp-socket")
            .arg(&netdp_sock)
            .arg("--vmm-binary")
            .arg(bins.join("vmm"))
            .arg("--disk-path")
            .arg(d.join("agent"))
            .arg("--listen")
            .arg(format!("{node_ip}:{agent_port}"))
            .arg("--agent-url")
            .arg(format!("http://{node_ip}:{agent_port}"))
            .arg("--control-url")
            .arg(&url)
            .arg("--control-token")
            .arg(NODE_TOKEN)
            .args([
                "--heartbeat-interval-secs",
                "1",
                "--sample-interval-secs",
                "1",
                "--shutdown-timeout-secs",
                "20",
            ])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );

    let env: Vec<(String, String)> = [
        ("OS_AUTH_URL", format!("{url}/v3")),
        ("OS_IDENTITY_API_VERSION", "3".into()),
        ("OS_USERNAME", "admin".into()),
        ("OS_PASSWORD", ADMIN_PASSWORD.into()),
        ("OS_PROJECT_NAME", "admin".into()),
        ("OS_USER_DOMAIN_NAME", "Default".into()),
        ("OS_PROJECT_DOMAIN_NAME", "Default".into()),
        ("OS_REGION_NAME", "RegionOne".into()),
        ("OS_INTERFACE", "public".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();

    // The node registers and is up.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let out = common::openstack(&env, &["hypervisor", "list", "-f", "json"]);
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        if out.status.success() && text.contains("\"up\"") {
            break;
        }
        assert!(Instant::now() < deadline, "the node never came up: {out:?}");
        std::thread::sleep(Duration::from_millis(500));
    }

    ok(
        &env,
        &[
            "flavor", "create", "--vcpus", "1", "--ram", "32", "--disk", "1", "m1.tiny",
        ],
    );
    let image: Vec<u8> = (0..256 * 1024usize)
        .map(|i| (i.wrapping_mul(31) ^ (i >> 9)) as u8)
        .collect();
    std::fs::write(d.join("disk.img"), &image).unwrap();
    let k = ok_json(
        &env,
        &[
            "image",
            "create",
            "--file",
            kernel.to_str().unwrap(),
            "--disk-format",
            "aki",
            "--container-format",
            "aki",
            "server-kernel",
        ],
    );
    let kid = k["id"].as_str().unwrap().to_string();
    ok(
        &env,
        &[
            "image",
            "create",
            "--file",
            d.join("disk.img").to_str().unwrap(),
            "--disk-format",
            "raw",
            "--container-format",
            "bare",
            "--property",
            &format!("kernel_id={kid}"),
            "--property",
            "os_command_line=console=ttyS0 reboot=k panic=1 pci=off",
            "server-disk",
        ],
    );
    ok(&env, &["network", "create", "blue"]);
    // A group without rules for ICMP yet: the floating IP will not answer until one is added.
    ok(&env, &["security", "group", "create", "pingable"]);
    ok(
        &env,
        &[
            "subnet",
            "create",
            "--network",
            "blue",
            "--subnet-range",
            "10.9.0.0/24",
            "blue-v4",
        ],
    );

    OneNode {
        procs,
        ns,
        env,
        image,
        blockdp_sock,
        netdp_sock,
        d: d.to_path_buf(),
        _dir: dir,
    }
}

#[test]
fn openstack_cli_boots_a_guest_on_a_one_node_cloud() {
    if !privileged() || !common::have_cli() {
        return;
    }
    let OneNode {
        procs,
        ns,
        env,
        image,
        d,
        netdp_sock,
        _dir: _dir_kept,
        ..
    } = one_node_cloud(0);
    let d = d.as_path();

    // A keypair, user data and properties: the guest reads them from its config drive.
    std::fs::write(d.join("key.pub"), format!("{KEY}\n")).unwrap();
    ok(
        &env,
        &[
            "keypair",
            "create",
            "--public-key",
            d.join("key.pub").to_str().unwrap(),
            "e2e-key",
        ],
    );
    std::fs::write(
        d.join("user-data"),
        "#!/bin/sh\n# ferrostack-user-data control-e2e\nexit 0\n",
    )
    .unwrap();

    let created = ok_json(
        &env,
        &[
            "server",
            "create",
            "--image",
            "server-disk",
            "--flavor",
            "m1.tiny",
            "--network",
            "blue",
            "--key-name",
            "e2e-key",
            "--property",
            "role=e2e",
            "--user-data",
            d.join("user-data").to_str().unwrap(),
            "--security-group",
            "pingable",
            "--wait",
            "vm1",
        ],
    );
    assert_eq!(created["status"], "ACTIVE", "{created}");
    let shown = ok_json(&env, &["server", "show", "vm1"]);
    assert_eq!(shown["status"], "ACTIVE");
    assert_eq!(shown["OS-EXT-STS:vm_state"], "active");
    assert_eq!(shown["OS-EXT-STS:power_state"], 1, "{shown}");
    assert!(
        shown["addresses"].to_string().contains("blue")
            && shown["addresses"].to_string().contains("10.9.0."),
        "{shown}"
    );
    let list = ok(&env, &["server", "list", "--long"]);
    assert!(
        list.contains("vm1") && list.contains("ACTIVE") && list.contains("Running"),
        "{list}"
    );

    // The guest booted the image's kernel and read the whole root volume.
    // The flavor's 1 GiB volume holds the image then zeros; the guest reads its first MiB.
    let mut first_mib = image.clone();
    first_mib.resize(1 << 20, 0);
    let expected = format!("disk_fnv={:016x}", fnv1a(&first_mib));
    let console = wait_console(&env, "vm1", &expected, 1);
    assert!(console.contains("disk_read_sectors=2048"), "{console}");
    // ... and found its config drive with the key and the user data on it.
    let console = wait_console(&env, "vm1", "config_user_data=", 1);
    assert!(
        console.contains("config_drive_label=config-2\n"),
        "{console}"
    );
    assert!(
        console.contains(&format!("config_key={KEY}\n")),
        "{console}"
    );
    assert!(
        console.contains("config_user_data=# ferrostack-user-data control-e2e\n"),
        "{console}"
    );
    assert_eq!(shown["key_name"], "e2e-key", "{shown}");
    assert_eq!(shown["config_drive"], "True", "{shown}");
    assert_eq!(
        shown["security_groups"],
        serde_json::json!([{"name": "pingable"}]),
        "{shown}"
    );

    // The outside: an external network whose uplink is a port bound to the node; its tap
    // is a veth into a namespace standing for the world beyond the router.
    ok(&env, &["network", "create", "--external", "public"]);
    ok(
        &env,
        &[
            "subnet",
            "create",
            "--network",
            "public",
            "--subnet-range",
            "172.24.4.0/24",
            "--no-dhcp",
            "public-v4",
        ],
    );
    let hv = ok_json(&env, &["hypervisor", "list"]);
    let host = hv[0]["Hypervisor Hostname"].as_str().unwrap().to_string();
    let uplink = ok_json(
        &env,
        &[
            "port",
            "create",
            "--network",
            "public",
            "--host",
            &host,
            "--disable-port-security",
            "--no-security-group",
            "--fixed-ip",
            "subnet=public-v4,ip-address=172.24.4.100",
            "uplink",
        ],
    );
    let uplink_id = uplink["id"].as_str().unwrap().to_string();
    let uplink_mac = uplink["mac_address"].as_str().unwrap().to_string();
    let outside = tests::netns::Netns::new("ctl-out").unwrap();
    let on = outside.name().to_string();
    let uplink_tap = format!("tap{}", &uplink_id[..11]);
    let node_ns = ns.name().to_string();
    tests::netns::ip(&[
        "-n",
        &node_ns,
        "link",
        "add",
        &uplink_tap,
        "type",
        "veth",
        "peer",
        "name",
        "eth0",
        "netns",
        &on,
    ])
    .unwrap();
    tests::netns::ip(&["-n", &on, "link", "set", "eth0", "address", &uplink_mac]).unwrap();
    tests::netns::ip(&["-n", &on, "addr", "add", "172.24.4.100/24", "dev", "eth0"]).unwrap();
    tests::netns::ip(&["-n", &on, "link", "set", "eth0", "up"]).unwrap();
    tests::netns::ip(&["-n", &on, "link", "set", "lo", "up"]).unwrap();
    tests::netns::ip(&["-n", &node_ns, "link", "set", &uplink_tap, "up"]).unwrap();

    // A router joins the tenant subnet to the outside; a floating IP for the server.
    ok(&env, &["router", "create", "r1"]);
    ok(
        &env,
        &["router", "set", "--external-gateway", "public", "r1"],
    );
    ok(&env, &["router", "add", "subnet", "r1", "blue-v4"]);
    let fip = ok_json(&env, &["floating", "ip", "create", "public"]);
    let fip_ip = fip["floating_ip_address"].as_str().unwrap().to_string();
    ok(&env, &["server", "add", "floating", "ip", "vm1", &fip_ip]);
    let shown = ok_json(&env, &["server", "show", "vm1"]);
    assert!(shown["addresses"].to_string().contains(&fip_ip), "{shown}");
    let vm_port = ok_json(&env, &["port", "list", "--server", "vm1"]);
    let vm_port_id = vm_port[0]["ID"].as_str().unwrap().to_string();
    let fip_shown = ok_json(&env, &["floating", "ip", "show", &fip_ip]);
    assert_eq!(fip_shown["port_id"], vm_port_id.as_str(), "{fip_shown}");
    // The node's netdp has it all, under control's ids.
    let netdp = |path: &str| -> (u16, Value) { api_get(&netdp_sock, path) };
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (s, f) = netdp(&format!(
            "/v2.0/floatingips/{}",
            fip_shown["id"].as_str().unwrap()
        ));
        let (_, up) = netdp(&format!("/v2.0/ports/{uplink_id}"));
        if s == 200 && f["floatingip"]["status"] == "ACTIVE" && up["port"]["status"] == "ACTIVE" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "netdp never got the floating IP: {f} {up}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let ping = |count: &str, wait: &str| -> bool {
        outside
            .exec(&["ping", "-c", count, "-W", wait, "-i", "0.5", &fip_ip])
            .unwrap()
            .status
            .success()
    };
    // The group lets nothing in yet.
    assert!(!ping("2", "1"), "ICMP got in without a rule");
    ok(
        &env,
        &[
            "security",
            "group",
            "rule",
            "create",
            "--protocol",
            "icmp",
            "pingable",
        ],
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    while !ping("1", "2") {
        assert!(
            Instant::now() < deadline,
            "the floating IP never answered; console:\n{}",
            ok(&env, &["console", "log", "show", "vm1"])
        );
    }
    let console = wait_console(&env, "vm1", "echo_replied=1", 1);
    assert!(console.contains("ready\n"), "{console}");

    ok(&env, &["server", "stop", "vm1"]);
    let stopped = wait_status(&env, "vm1", "SHUTOFF");
    assert_eq!(stopped["OS-EXT-STS:vm_state"], "stopped");
    let again = fails(&env, &["server", "stop", "vm1"]);
    assert!(again.contains("Cannot"), "{again}");
    ok(&env, &["server", "start", "vm1"]);
    wait_status(&env, "vm1", "ACTIVE");
    wait_console(&env, "vm1", &expected, 2);
    ok(&env, &["server", "pause", "vm1"]);
    wait_status(&env, "vm1", "PAUSED");
    ok(&env, &["server", "unpause", "vm1"]);
    wait_status(&env, "vm1", "ACTIVE");

    ok(&env, &["server", "delete", "--wait", "vm1"]);
    assert!(!ok(&env, &["server", "list"]).contains("vm1"));
    // Its port is gone, the floating IP kept but unmapped, the tap and netdp's port gone.
    assert!(!ok(&env, &["port", "list"]).contains(&vm_port_id));
    let fip_shown = ok_json(&env, &["floating", "ip", "show", &fip_ip]);
    assert!(fip_shown["port_id"].is_null(), "{fip_shown}");
    let vm_tap = format!("tap{}", &vm_port_id[..11]);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (s, _) = api_get(&netdp_sock, &format!("/v2.0/ports/{vm_port_id}"));
        let tap = ns.exec(&["ip", "link", "show", &vm_tap]).unwrap();
        if s == 404 && !tap.status.success() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the port or tap stayed on the node"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    assert!(
        !outside
            .exec(&["ping", "-c", "1", "-W", "1", &fip_ip])
            .unwrap()
            .status
            .success()
    );
    ok(&env, &["floating", "ip", "delete", &fip_ip]);
    ok(&env, &["router", "remove", "subnet", "r1", "blue-v4"]);
    ok(&env, &["router", "delete", "r1"]);
    ok(&env, &["port", "delete", "uplink"]);
    ok(&env, &["subnet", "delete", "public-v4"]);
    ok(&env, &["network", "delete", "public"]);
    ok(&env, &["security", "group", "delete", "pingable"]);
    // The agent released everything: no server, no VMM.
    let hv = ok(&env, &["hypervisor", "list", "--long"]);
    assert!(hv.contains("up"), "{hv}");
    let state = std::fs::read_to_string(d.join("agent/state.json")).unwrap();
    let v: Value = serde_json::from_str(&state).unwrap();
    assert!(
        v["servers"].as_object().is_none_or(|m| m.is_empty()),
        "{state}"
    );
    ok(&env, &["subnet", "delete", "blue-v4"]);
    ok(&env, &["network", "delete", "blue"]);
    drop(procs);
    drop(outside);
    drop(ns);
}

/// `GET path` on a daemon's API socket (netdp, blockdp): the status and the JSON body.
fn api_get(sock: &Path, path: &str) -> (u16, Value) {
    use std::io::{Read, Write};
    let mut s = std::os::unix::net::UnixStream::connect(sock).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n"
    )
    .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let status: u16 = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map(|x| x.1).unwrap_or("");
    // Bodies may come chunked: the JSON is from the first brace to the last.
    let json = match (body.find(['{', '[']), body.rfind(['}', ']'])) {
        (Some(a), Some(b)) if a <= b => serde_json::from_str(&body[a..=b]).unwrap_or(Value::Null),
        _ => Value::Null,
    };
    (status, json)
}

fn wait_volume(env: &[(String, String)], name: &str, status: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let v = ok_json(env, &["volume", "show", name]);
        if v["status"] == status {
            return v;
        }
        assert!(
            Instant::now() < deadline && v["status"] != "error",
            "{name} never became {status}: {v}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

#[test]
fn openstack_cli_boots_from_volumes_and_attaches_one_to_a_stopped_server() {
    if !privileged() || !common::have_cli() {
        return;
    }
    let OneNode {
        procs,
        ns,
        env,
        image,
        blockdp_sock,
        d,
        _dir: _dir_kept,
        ..
    } = one_node_cloud(7);
    let mut first_mib = image.clone();
    first_mib.resize(1 << 20, 0);
    let root_fnv = format!("disk_fnv={:016x}", fnv1a(&first_mib));

    // Boot from an existing volume made from the image: the guest reads the volume.
    ok(
        &env,
        &[
            "volume",
            "create",
            "--image",
            "server-disk",
            "--size",
            "1",
            "bootvol",
        ],
    );
    let bootvol = wait_volume(&env, "bootvol", "available");
    // Debian's client prints "true", newer ones a JSON true.
    assert!(
        bootvol["bootable"] == "true" || bootvol["bootable"] == true,
        "{bootvol}"
    );
    let created = ok_json(
        &env,
        &[
            "server",
            "create",
            "--volume",
            "bootvol",
            "--flavor",
            "m1.tiny",
            "--network",
            "blue",
            "--wait",
            "vm1",
        ],
    );
    assert_eq!(created["status"], "ACTIVE", "{created}");
    let server_id = created["id"].as_str().unwrap().to_string();
    let shown = wait_volume(&env, "bootvol", "in-use");
    assert_eq!(shown["attachments"][0]["server_id"], server_id.as_str());
    wait_console(&env, "vm1", &root_fnv, 1);

    // A data volume with known bytes, written on blockdp's file.
    let data = ok_json(&env, &["volume", "create", "--size", "1", "data"]);
    let data_id = data["id"].as_str().unwrap().to_string();
    wait_volume(&env, "data", "available");
    let vols = api_get(&blockdp_sock, "/volumes").1;
    let backend = vols["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == format!("volume-{data_id}"))
        .unwrap_or_else(|| panic!("blockdp has no data volume: {vols}"))
        .clone();
    let bytes: Vec<u8> = (0..96 * 1024u32)
        .map(|i| (i.wrapping_mul(131) >> 3) as u8)
        .collect();
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(d.join(format!(
                "blockdp/volumes/{}.img",
                backend["id"].as_str().unwrap()
            )))
            .unwrap();
        f.write_all_at(&bytes, 0).unwrap();
        f.sync_all().unwrap();
    }
    let mut data_mib = bytes.clone();
    data_mib.resize(1 << 20, 0);
    let data_fnv = format!("disk1_fnv={:016x}", fnv1a(&data_mib));

    // No hot-plug: refused while ACTIVE, with the reason.
    let err = fails(&env, &["server", "add", "volume", "vm1", "data"]);
    assert!(err.contains("hot-plug"), "{err}");
    assert_eq!(
        wait_volume(&env, "data", "available")["attachments"],
        serde_json::json!([])
    );
    // Stopped: attached; the guest reads it after its next start as its second disk.
    ok(&env, &["server", "stop", "vm1"]);
    wait_status(&env, "vm1", "SHUTOFF");
    ok(&env, &["server", "add", "volume", "vm1", "data"]);
    let data = wait_volume(&env, "data", "in-use");
    assert_eq!(data["attachments"][0]["device"], "/dev/vdb", "{data}");
    let listed = ok(&env, &["server", "volume", "list", "vm1"]);
    assert!(
        listed.contains(&data_id) && listed.contains("/dev/vdb"),
        "{listed}"
    );
    let err = fails(&env, &["volume", "delete", "data"]);
    assert!(err.contains("attached"), "{err}");
    ok(&env, &["server", "start", "vm1"]);
    wait_status(&env, "vm1", "ACTIVE");
    let console = wait_console(&env, "vm1", &data_fnv, 1);
    assert!(console.contains("disk1_read_sectors=2048"), "{console}");
    assert_eq!(console.matches(&root_fnv).count(), 2, "{console}");

    // Detach (stopped again), delete the server: the boot volume stays (not
    // delete_on_termination), both become available, then go.
    ok(&env, &["server", "stop", "vm1"]);
    wait_status(&env, "vm1", "SHUTOFF");
    ok(&env, &["server", "remove", "volume", "vm1", "data"]);
    wait_volume(&env, "data", "available");
    ok(&env, &["server", "delete", "--wait", "vm1"]);
    wait_volume(&env, "bootvol", "available");
    ok(&env, &["volume", "delete", "bootvol", "data"]);

    // Boot from a new volume made from the image on the chosen node, kept after the server.
    let created = ok_json(
        &env,
        &[
            "server",
            "create",
            "--image",
            "server-disk",
            "--boot-from-volume",
            "1",
            "--flavor",
            "m1.tiny",
            "--network",
            "blue",
            "--wait",
            "vm2",
        ],
    );
    assert_eq!(created["status"], "ACTIVE", "{created}");
    wait_console(&env, "vm2", &root_fnv, 1);
    let vols = ok_json(&env, &["volume", "list", "--long"]);
    let row = &vols.as_array().unwrap()[0];
    assert_eq!(row["Status"], "in-use", "{vols}");
    let vid = row["ID"].as_str().unwrap().to_string();
    ok(&env, &["server", "delete", "--wait", "vm2"]);
    wait_volume(&env, &vid, "available");
    ok(&env, &["volume", "delete", &vid]);

    // The same with delete_on_termination: the volume goes with the server.
    let image_id = ok_json(&env, &["image", "show", "server-disk"])["id"]
        .as_str()
        .unwrap()
        .to_string();
    let created = ok_json(
        &env,
        &[
            "server",
            "create",
            "--image",
            "server-disk",
            "--block-device",
            &format!(
                "uuid={image_id},source_type=image,destination_type=volume,volume_size=1,\
                 boot_index=0,delete_on_termination=true"
            ),
            "--flavor",
            "m1.tiny",
            "--network",
            "blue",
            "--wait",
            "vm3",
        ],
    );
    assert_eq!(created["status"], "ACTIVE", "{created}");
    wait_console(&env, "vm3", &root_fnv, 1);
    assert_eq!(
        ok_json(&env, &["volume", "list"]).as_array().unwrap().len(),
        1
    );
    ok(&env, &["server", "delete", "--wait", "vm3"]);

    // Everything released: no volume on blockdp, no server on the agent.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let left = api_get(&blockdp_sock, "/volumes").1;
        if left["volumes"].as_array().unwrap().is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "blockdp still holds {left}");
        std::thread::sleep(Duration::from_millis(500));
    }
    assert!(
        ok_json(&env, &["volume", "list"])
            .as_array()
            .unwrap()
            .is_empty()
    );
    let state = std::fs::read_to_string(d.join("agent/state.json")).unwrap();
    let v: Value = serde_json::from_str(&state).unwrap();
    assert!(
        v["servers"].as_object().is_none_or(|m| m.is_empty()),
        "{state}"
    );
    drop(procs);
    drop(ns);
}

/// `METHOD url` with a token and an optional JSON body (by curl: control listens on the
/// veth address, not loopback): the status and the JSON answer.
fn curl(method: &str, url: &str, token: &str, body: Option<&Value>) -> (u16, Value) {
    let mut c = Command::new("curl");
    c.args(["-sS", "-X", method, "-w", "\n%{http_code}", "-H"])
        .arg(format!("X-Auth-Token: {token}"));
    if let Some(b) = body {
        c.args(["-H", "Content-Type: application/json", "--data-binary"])
            .arg(b.to_string());
    }
    let out = c.arg(url).output().unwrap();
    assert!(out.status.success(), "curl {url}: {out:?}");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, code) = text.rsplit_once('\n').unwrap();
    (
        code.trim().parse().unwrap(),
        serde_json::from_str(body).unwrap_or(Value::Null),
    )
}

/// A webhook receiver on loopback: each request's JSON body goes to the channel.
fn hook_listener() -> (String, std::sync::mpsc::Receiver<Value>) {
    use std::io::{Read, Write};
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/hook", l.local_addr().unwrap());
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for conn in l.incoming() {
            let Ok(mut c) = conn else { continue };
            let _ = c.set_read_timeout(Some(Duration::from_secs(10)));
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            let body = loop {
                let n = match c.read(&mut chunk) {
                    Ok(0) | Err(_) => break None,
                    Ok(n) => n,
                };
                buf.extend_from_slice(&chunk[..n]);
                if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                    let len = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .and_then(|v| v.trim().parse::<usize>().ok())
                        .unwrap_or(0);
                    if buf.len() >= end + 4 + len {
                        break Some(buf[end + 4..end + 4 + len].to_vec());
                    }
                }
            };
            let _ =
                c.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
            if let Some(v) = body.and_then(|b| serde_json::from_slice::<Value>(&b).ok())
                && tx.send(v).is_err()
            {
                return;
            }
        }
    });
    (url, rx)
}

/// Telemetry end to end (issue 9): with the agent sampling every second, control's query
/// API has the running guest's meters: vCPU time rising, its flavor's memory, the exact
/// bytes it read from its volume (under the server and under the volume), and its port's
/// packets and bytes grown by at least the pings the test sent it from a namespace on its
/// network. A user of another project gets 404 for them and sees no events. Two alarms
/// (one on the port, one on all of the project's resources) on the port's incoming packet
/// rate call their webhooks at `ok`, then at `alarm` during a ping flood, then at `ok`
/// again. The lifecycle events are exactly create, BUILD→ACTIVE, ACTIVE→SHUTOFF,
/// SHUTOFF→ACTIVE and delete, in order.
#[test]
fn a_running_guest_is_metered_scoped_to_its_project_and_alarmed_on() {
    if !privileged() || !common::have_cli() {
        return;
    }
    let OneNode {
        procs,
        ns,
        env,
        image,
        d,
        netdp_sock,
        _dir: _dir_kept,
        ..
    } = one_node_cloud(11);
    let t0 = Instant::now();
    let step = |what: &str| eprintln!("[{:>6.1?}] {what}", t0.elapsed());
    step("cloud up");
    let d = d.as_path();
    let url = env
        .iter()
        .find(|(k, _)| k == "OS_AUTH_URL")
        .unwrap()
        .1
        .trim_end_matches("/v3")
        .to_string();
    let token = |env: &[(String, String)]| {
        ok(env, &["token", "issue", "-f", "value", "-c", "id"])
            .trim()
            .to_string()
    };
    let admin = token(&env);
    ok(&env, &["project", "create", "other"]);
    ok(
        &env,
        &[
            "user",
            "create",
            "--project",
            "other",
            "--password",
            "pw",
            "other-user",
        ],
    );
    ok(
        &env,
        &[
            "role",
            "add",
            "--project",
            "other",
            "--user",
            "other-user",
            "member",
        ],
    );
    let other_env: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| {
            let v = match k.as_str() {
                "OS_USERNAME" => "other-user".to_string(),
                "OS_PASSWORD" => "pw".to_string(),
                "OS_PROJECT_NAME" => "other".to_string(),
                _ => v.clone(),
            };
            (k.clone(), v)
        })
        .collect();
    let other = token(&other_env);

    ok(
        &env,
        &[
            "security",
            "group",
            "rule",
            "create",
            "--protocol",
            "icmp",
            "pingable",
        ],
    );
    step("creating the server");
    // A key and user data: the guest stops scanning its config drive once it has found
    // both (a whole scan takes long on a loaded machine).
    std::fs::write(d.join("key.pub"), format!("{KEY}\n")).unwrap();
    ok(
        &env,
        &[
            "keypair",
            "create",
            "--public-key",
            d.join("key.pub").to_str().unwrap(),
            "tlm-key",
        ],
    );
    std::fs::write(d.join("user-data"), "# ferrostack-user-data tlm\n").unwrap();
    let created = ok_json(
        &env,
        &[
            "server",
            "create",
            "--image",
            "server-disk",
            "--flavor",
            "m1.tiny",
            "--network",
            "blue",
            "--security-group",
            "pingable",
            "--key-name",
            "tlm-key",
            "--user-data",
            d.join("user-data").to_str().unwrap(),
            "--wait",
            "metered",
        ],
    );
    assert_eq!(created["status"], "ACTIVE", "{created}");
    let id = created["id"].as_str().unwrap().to_string();
    let mut first_mib = image.clone();
    first_mib.resize(1 << 20, 0);
    wait_console(
        &env,
        "metered",
        &format!("disk_fnv={:016x}", fnv1a(&first_mib)),
        1,
    );
    wait_console(&env, "metered", "ready\n", 1);
    let ports = ok_json(&env, &["port", "list", "--server", "metered"]);
    let port_id = ports[0]["ID"].as_str().unwrap().to_string();
    let fixed = ports[0].to_string();
    let at = fixed.find("10.9.0.").expect("the guest's address");
    let guest_ip: String = fixed[at..]
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.')
        .collect();
    let (_, srv) = api_get(&d.join("agent/agent.sock"), &format!("/v1/servers/{id}"));
    let volume_id = srv["server"]["volume"]["id"]
        .as_str()
        .unwrap_or_else(|| panic!("the agent's volume: {srv}"))
        .to_string();

    step("server ACTIVE and ready");
    // Meters through control's query API (the admin's project owns the server).
    let query = |token: &str, what: &str, meter: &str, res: &str| {
        curl(
            "GET",
            &format!("{url}/telemetry/v1/{what}?meter={meter}&resource_id={res}"),
            token,
            None,
        )
    };
    let latest = |meter: &str, res: &str| -> Option<Value> {
        let (s, v) = query(&admin, "samples", meter, res);
        assert!(s == 200 || s == 404, "{meter}: {s} {v}");
        v["samples"]
            .as_array()?
            .iter()
            .max_by_key(|x| x["timestamp"].as_str().unwrap_or("").to_string())
            .cloned()
    };
    let value = |s: &Value| s["volume"].as_f64().unwrap();
    let cpu1 = wait_until("a cpu sample", Duration::from_secs(60), || {
        latest("cpu", &id).filter(|s| value(s) > 0.0)
    });
    assert_eq!(cpu1["unit"], "ns", "{cpu1}");
    assert_eq!(cpu1["type"], "cumulative", "{cpu1}");
    let cpu2 = wait_until("vCPU time rising", Duration::from_secs(30), || {
        latest("cpu", &id).filter(|s| value(s) > value(&cpu1))
    });
    eprintln!("cpu: {} ns then {} ns", value(&cpu1), value(&cpu2));
    assert_eq!(value(&latest("vcpus", &id).unwrap()), 1.0);
    let mem = latest("memory", &id).unwrap();
    assert_eq!((value(&mem), mem["unit"].as_str()), (32.0, Some("MiB")));
    let rss = latest("memory.resident", &id).unwrap();
    assert!(value(&rss) > 0.0, "{rss}");
    // The guest read its volume's first MiB, once, and wrote nothing.
    let read = wait_until("disk.read.bytes of 1 MiB", Duration::from_secs(30), || {
        latest("disk.read.bytes", &id).filter(|s| value(s) >= (1 << 20) as f64)
    });
    assert_eq!(value(&read), (1 << 20) as f64, "{read}");
    assert_eq!(read["unit"], "B");
    let dev = latest("disk.device.read.bytes", &volume_id).unwrap();
    assert_eq!(value(&dev), (1 << 20) as f64, "{dev}");
    assert_eq!(value(&latest("disk.write.bytes", &id).unwrap()), 0.0);
    assert!(value(&latest("disk.read.requests", &id).unwrap()) >= 1.0);
    let (s, agg) = curl(
        "GET",
        &format!(
            "{url}/telemetry/v1/aggregates?meter=disk.read.bytes&resource_id={id}&aggregation=max&granularity=3600"
        ),
        &admin,
        None,
    );
    assert_eq!(s, 200, "{agg}");
    let measures = agg["measures"].as_array().unwrap();
    assert_eq!(
        measures.last().unwrap()[2].as_f64(),
        Some((1 << 20) as f64),
        "{agg}"
    );

    step("meters checked");
    // Another project: 404 for the server's, volume's and port's meters, nothing listed.
    for (what, meter, res) in [
        ("samples", "cpu", id.as_str()),
        ("aggregates", "cpu", id.as_str()),
        ("samples", "disk.device.read.bytes", volume_id.as_str()),
        ("samples", "network.outgoing.packets", port_id.as_str()),
    ] {
        let (s, v) = query(&other, what, meter, res);
        assert_eq!(s, 404, "{what} {meter}: {v}");
    }
    let (s, v) = curl("GET", &format!("{url}/telemetry/v1/samples"), &other, None);
    assert_eq!((s, &v["samples"]), (200, &serde_json::json!([])), "{v}");

    step("scope checked");
    // A namespace on the guest's network: a port bound to the node whose tap is a veth.
    let hv = ok_json(&env, &["hypervisor", "list"]);
    let host = hv[0]["Hypervisor Hostname"].as_str().unwrap().to_string();
    let probe = ok_json(
        &env,
        &[
            "port",
            "create",
            "--network",
            "blue",
            "--host",
            &host,
            "--disable-port-security",
            "--no-security-group",
            "--fixed-ip",
            "subnet=blue-v4,ip-address=10.9.0.200",
            "probe",
        ],
    );
    let probe_id = probe["id"].as_str().unwrap().to_string();
    let probe_mac = probe["mac_address"].as_str().unwrap().to_string();
    let outside = tests::netns::Netns::new("ctl-tlm").unwrap();
    let on = outside.name().to_string();
    let probe_tap = format!("tap{}", &probe_id[..11]);
    tests::netns::ip(&[
        "-n",
        ns.name(),
        "link",
        "add",
        &probe_tap,
        "type",
        "veth",
        "peer",
        "name",
        "eth0",
        "netns",
        &on,
    ])
    .unwrap();
    tests::netns::ip(&["-n", &on, "link", "set", "eth0", "address", &probe_mac]).unwrap();
    tests::netns::ip(&["-n", &on, "addr", "add", "10.9.0.200/24", "dev", "eth0"]).unwrap();
    tests::netns::ip(&["-n", &on, "link", "set", "eth0", "up"]).unwrap();
    tests::netns::ip(&["-n", ns.name(), "link", "set", &probe_tap, "up"]).unwrap();
    wait_until("netdp's probe port ACTIVE", Duration::from_secs(60), || {
        let (s, p) = api_get(&netdp_sock, &format!("/v2.0/ports/{probe_id}"));
        (s == 200 && p["port"]["status"] == "ACTIVE").then_some(())
    });
    let ping = |args: &[&str]| {
        let mut a = vec!["ping"];
        a.extend_from_slice(args);
        a.push(&guest_ip);
        outside.exec(&a).unwrap()
    };
    wait_until("the guest answering pings", Duration::from_secs(60), || {
        ping(&["-c", "1", "-W", "1"]).status.success().then_some(())
    });
    step("guest answers pings");
    // Counters before and after 10 pings (each 98-byte frame in and out).
    let figure = |meter: &str| latest(meter, &port_id).map(|s| value(&s)).unwrap_or(0.0);
    std::thread::sleep(Duration::from_secs(2));
    let before: Vec<f64> = [
        "network.incoming.packets",
        "network.outgoing.packets",
        "network.incoming.bytes",
        "network.outgoing.bytes",
    ]
    .iter()
    .map(|m| figure(m))
    .collect();
    let o = ping(&["-c", "10", "-i", "0.2", "-W", "2"]);
    let text = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(text.contains("10 received"), "{text}");
    let after = wait_until(
        "port meters grown by the pings",
        Duration::from_secs(30),
        || {
            let now: Vec<f64> = [
                "network.incoming.packets",
                "network.outgoing.packets",
                "network.incoming.bytes",
                "network.outgoing.bytes",
            ]
            .iter()
            .map(|m| figure(m))
            .collect();
            (now[0] >= before[0] + 10.0
                && now[1] >= before[1] + 10.0
                && now[2] >= before[2] + 980.0
                && now[3] >= before[3] + 980.0)
                .then_some(now)
        },
    );
    eprintln!("port meters before {before:?} after {after:?} (10 pings)");
    let drops = latest("network.outgoing.packets.drop", &port_id).unwrap();
    assert_eq!(drops["unit"], "packet", "{drops}");

    step("port meters checked");
    // Alarms on the port's incoming packet rate: one on the port, one on all the project's.
    let (hook, hooks) = hook_listener();
    let mut alarm_ids = Vec::new();
    for (name, res) in [("port-flood", Some(port_id.as_str())), ("any-flood", None)] {
        let mut rule = serde_json::json!({"meter_name": "network.incoming.packets",
            "comparison_operator": "gt", "threshold": 20.0, "aggregation_method": "rate",
            "period": 3, "evaluation_periods": 1});
        if let Some(r) = res {
            rule["resource_id"] = r.into();
        }
        let body = serde_json::json!({"alarm": {"name": name, "threshold_rule": rule,
            "alarm_actions": [format!("{hook}/{name}")], "ok_actions": [format!("{hook}/{name}")]}});
        let (s, a) = curl(
            "POST",
            &format!("{url}/telemetry/v1/alarms"),
            &admin,
            Some(&body),
        );
        assert_eq!(s, 201, "{a}");
        alarm_ids.push(a["alarm"]["alarm_id"].as_str().unwrap().to_string());
    }
    let (s, _) = curl(
        "GET",
        &format!("{url}/telemetry/v1/alarms/{}", alarm_ids[0]),
        &other,
        None,
    );
    assert_eq!(s, 404, "another project sees the alarm");
    let mut heard: Vec<(String, String, String)> = Vec::new();
    let mut wait_hooks = |current: &str, previous: Option<&str>| {
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let done = ["port-flood", "any-flood"].iter().all(|n| {
                heard.iter().any(|(name, prev, cur)| {
                    name == n && cur == current && previous.is_none_or(|p| p == prev)
                })
            });
            if done {
                return;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "no {current} webhooks: {heard:?}");
            if let Ok(v) = hooks.recv_timeout(left.min(Duration::from_secs(1))) {
                heard.push((
                    v["alarm_name"].as_str().unwrap_or("").to_string(),
                    v["previous"].as_str().unwrap_or("").to_string(),
                    v["current"].as_str().unwrap_or("").to_string(),
                ));
            }
        }
    };
    step("alarms created");
    // Quiet port: ok. Then a flood (100 packets a second): alarm. Then quiet: ok again.
    wait_hooks("ok", None);
    let flood = std::thread::scope(|sc| {
        let f = sc.spawn(|| ping(&["-c", "1500", "-i", "0.01", "-W", "1", "-q"]));
        wait_hooks("alarm", Some("ok"));
        f.join().unwrap()
    });
    eprintln!("flood: {}", String::from_utf8_lossy(&flood.stdout));
    wait_hooks("ok", Some("alarm"));
    for a in &alarm_ids {
        let (s, v) = curl(
            "GET",
            &format!("{url}/telemetry/v1/alarms/{a}"),
            &admin,
            None,
        );
        assert_eq!((s, v["alarm"]["state"].as_str()), (200, Some("ok")), "{v}");
    }
    eprintln!("webhooks heard: {heard:?}");

    step("alarms fired and recovered");
    // Lifecycle: stop, start, delete; the events in order, none for the other project.
    ok(&env, &["server", "stop", "metered"]);
    wait_status(&env, "metered", "SHUTOFF");
    ok(&env, &["server", "start", "metered"]);
    wait_status(&env, "metered", "ACTIVE");
    ok(&env, &["server", "delete", "--wait", "metered"]);
    let events = wait_until("the delete event", Duration::from_secs(30), || {
        let (s, v) = curl(
            "GET",
            &format!("{url}/telemetry/v1/events?resource_id={id}"),
            &admin,
            None,
        );
        assert_eq!(s, 200, "{v}");
        let list = v["events"].as_array().cloned().unwrap_or_default();
        list.iter()
            .any(|e| e["event_type"] == "compute.instance.delete")
            .then_some(list)
    });
    let got: Vec<(String, String, String)> = events
        .iter()
        .map(|e| {
            let t = |k: &str| e["traits"][k].as_str().unwrap_or("").to_string();
            (
                e["event_type"].as_str().unwrap().to_string(),
                t("old_state"),
                t("state"),
            )
        })
        .collect();
    let want: Vec<(String, String, String)> = [
        ("compute.instance.create", "", "BUILD"),
        ("compute.instance.update", "BUILD", "ACTIVE"),
        ("compute.instance.update", "ACTIVE", "SHUTOFF"),
        ("compute.instance.update", "SHUTOFF", "ACTIVE"),
        ("compute.instance.delete", "ACTIVE", "DELETED"),
    ]
    .iter()
    .map(|(a, b, c)| (a.to_string(), b.to_string(), c.to_string()))
    .collect();
    assert_eq!(got, want, "{events:?}");
    let (s, v) = curl(
        "GET",
        &format!("{url}/telemetry/v1/events?resource_id={id}"),
        &other,
        None,
    );
    assert_eq!((s, &v["events"]), (200, &serde_json::json!([])), "{v}");

    ok(&env, &["port", "delete", "probe"]);
    drop(procs);
    drop(outside);
    drop(ns);
}
