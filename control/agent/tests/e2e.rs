//! The agent end to end with the real daemons and a real KVM guest: blockdp serves the root
//! volume made from an image, netdp (in a node namespace) switches the server's port, a
//! `vmm` runs the vmm kit's `server` guest, which reads its whole disk, reports the
//! checksum on its serial console, and pings a namespace plugged into the same network.
//! Then: pause, unpause, stop, start, an agent killed and restarted (the VM keeps running
//! and stays manageable), a soft reboot, a guest shutting down by itself (SHUTOFF), a VMM
//! killed (ERROR) while the agent runs and while it is away, and a delete that leaves no
//! volume, port, tap or process behind.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use base64::Engine;
use serde_json::{Value, json};
use support::{AgentProc, Node, fnv1a, http, kill9, running};
use tests::netns::{Netns, ip};

const KEY: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGZlcnJvc3RhY2stYWdlbnQtZTJlLWtleS0wMDAwMSEh agent@e2e";
const USER_DATA: &[u8] = b"#!/bin/sh\n# ferrostack-user-data agent-e2e\nexit 0\n";

fn privileged() -> bool {
    caps::require_all(&[
        caps::Capability::Root,
        caps::Capability::Kvm,
        caps::Capability::Bpf,
        caps::Capability::Netns,
        caps::Capability::IoUring,
    ])
}

fn guest() -> PathBuf {
    let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("guests");
    vmm::testkit::build_guest("server", &out).unwrap_or_else(|e| panic!("{e}"))
}

fn netdp_call(sock: &Path, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    http(sock, method, path, body.map(|b| b.to_string()).as_deref())
}

fn action(a: &AgentProc, id: &str, body: Value) {
    let (s, v) = a.api(
        "POST",
        &format!("/v1/servers/{id}/action"),
        Some(&body.to_string()),
    );
    assert_eq!(s, 202, "{body}: {v}");
}

#[test]
fn a_placement_becomes_a_running_vm_and_everything_is_released_on_delete() {
    if !privileged() {
        return;
    }
    let kernel = guest();
    let node = Node::start();
    let root = node.root.path();

    // The root disk image: 256 KiB of a pattern the guest checksums in full.
    let image: Vec<u8> = (0..256 * 1024usize)
        .map(|i| (i.wrapping_mul(31) ^ (i >> 9)) as u8)
        .collect();
    let image_path = root.join("disk.img");
    std::fs::write(&image_path, &image).unwrap();
    let blockdp_sock = node.blockdp_sock.clone();
    let netdp_sock = node.netdp_sock.clone();
    let state_dir = node.state_dir.clone();

    // The agent runs in the node namespace too (it makes the taps the VMM opens).
    let setup = node.agent_setup();
    let agent = AgentProc::start(&setup);

    let id = "vm-e2e-1";
    let placement = json!({"server": {
        "id": id,
        "name": "e2e",
        "project_id": "p1",
        "vcpus": 1,
        "ram_mib": 32,
        "kernel": {"path": kernel},
        "cmdline": "console=ttyS0 reboot=k panic=1 pci=off probe=10.9.0.20",
        "root_disk": {"image": {"path": image_path}},
        "ports": [{
            "network": {"name": "blue", "subnet": {"cidr": "10.9.0.0/24"}},
            "fixed_ip": "10.9.0.10",
        }],
        "metadata": {
            "key_name": "e2e-key",
            "public_key": KEY,
            "properties": {"role": "e2e"},
            "user_data": base64::engine::general_purpose::STANDARD.encode(USER_DATA),
        },
    }});
    let (s, v) = agent.api("POST", "/v1/servers", Some(&placement.to_string()));
    assert_eq!(s, 202, "{v}");
    assert_eq!(v["server"]["status"], "BUILD");

    let srv = agent.wait_status(id, "ACTIVE", Duration::from_secs(90));
    let steps: Vec<&str> = srv["build_steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["step"].as_str().unwrap())
        .collect();
    assert_eq!(
        steps,
        [
            "images",
            "volume",
            "ports",
            "config_drive",
            "vmm_start",
            "vmm_boot",
            "total"
        ]
    );
    eprintln!("build steps: {}", srv["build_steps"]);
    let expected = format!("disk_fnv={:016x}\n", fnv1a(&image));
    let console = agent.wait_console(id, &expected, 1, Duration::from_secs(60));
    assert!(console.contains("disk_capacity=512\n"), "{console}");
    assert!(
        srv["cmdline"]
            .as_str()
            .unwrap()
            .ends_with(" ip=10.9.0.10::10.9.0.1:255.255.255.0::eth0:off"),
        "{srv}"
    );
    // The guest found its config drive and read the key and the user data from it.
    let console = agent.wait_console(id, "config_user_data=", 1, Duration::from_secs(60));
    assert!(
        console.contains("config_drive_label=config-2\n"),
        "{console}"
    );
    assert!(
        console.contains(&format!("config_key={KEY}\n")),
        "{console}"
    );
    assert!(
        console.contains("config_user_data=# ferrostack-user-data agent-e2e\n"),
        "{console}"
    );
    let config_drive = PathBuf::from(srv["config_drive"].as_str().unwrap());
    assert!(config_drive.starts_with(&state_dir), "{srv}");
    // Its network data names the port the agent plugged: MAC, fixed IP, gateway.
    let fs = fatfs::FileSystem::new(
        std::fs::File::open(&config_drive).unwrap(),
        fatfs::FsOptions::new(),
    )
    .unwrap();
    let read = |path: &str| {
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut fs.root_dir().open_file(path).unwrap(), &mut bytes)
            .unwrap();
        serde_json::from_slice::<Value>(&bytes).unwrap()
    };
    let meta = read("openstack/latest/meta_data.json");
    assert_eq!(
        (&meta["uuid"], &meta["hostname"], &meta["meta"]["role"]),
        (&json!(id), &json!("e2e"), &json!("e2e")),
        "{meta}"
    );
    let net = read("openstack/latest/network_data.json");
    assert_eq!(
        net["links"][0]["ethernet_mac_address"], srv["ports"][0]["mac_address"],
        "{net}"
    );
    assert_eq!(net["networks"][0]["ip_address"], "10.9.0.10", "{net}");
    assert!(
        net["links"][0]["mtu"].as_u64().is_some_and(|m| m >= 576),
        "{net}"
    );
    assert_eq!(
        net["networks"][0]["routes"][0]["gateway"], "10.9.0.1",
        "{net}"
    );
    drop(fs);
    // The console file the agent exposes is the same text.
    let on_disk = std::fs::read_to_string(srv["console_log"].as_str().unwrap()).unwrap();
    assert!(on_disk.contains(&expected));

    // What the data planes now hold: an exported volume, an active port with the network
    // the agent created from the placement.
    let vol_id = srv["volume"]["id"].as_str().unwrap().to_string();
    let (s, vol) = http(&blockdp_sock, "GET", &format!("/volumes/{vol_id}"), None);
    assert_eq!(s, 200, "{vol}");
    assert!(vol["volume"]["export"]["socket"].is_string(), "{vol}");
    assert_eq!(vol["volume"]["size"], 256 * 1024);
    let (_, node_doc) = agent.api("GET", "/v1/node", None);
    let usage = &node_doc["node"]["usage"];
    assert_eq!(
        (usage["vcpus"].as_u64(), usage["memory_mib"].as_u64()),
        (Some(1), Some(32)),
        "{node_doc}"
    );
    assert_eq!(usage["disk_bytes"], 256 * 1024, "{node_doc}");
    let port = srv["ports"][0].clone();
    let port_id = port["id"].as_str().unwrap().to_string();
    let tap = port["tap"].as_str().unwrap().to_string();
    let (s, p) = netdp_call(&netdp_sock, "GET", &format!("/v2.0/ports/{port_id}"), None);
    assert_eq!(s, 200, "{p}");
    assert_eq!(p["port"]["status"], "ACTIVE");
    assert_eq!(p["port"]["fixed_ips"][0]["ip_address"], "10.9.0.10");
    assert_eq!(p["port"]["device_id"], id);
    let network_id = p["port"]["network_id"].as_str().unwrap().to_string();
    let (_, nets) = netdp_call(&netdp_sock, "GET", "/v2.0/networks", None);
    assert_eq!(nets["networks"][0]["name"], "blue");
    assert_eq!(nets["networks"][0]["id"], network_id.as_str());

    // A "peer VM" namespace on the same network: the guest learns its MAC and pings it.
    let (s, peer) = netdp_call(
        &netdp_sock,
        "POST",
        "/v2.0/ports",
        Some(json!({"port": {
            "network_id": network_id,
            "project_id": "p1",
            "fixed_ips": [{"subnet_id": p["port"]["fixed_ips"][0]["subnet_id"], "ip_address": "10.9.0.20"}],
        }})),
    );
    assert_eq!(s, 201, "{peer}");
    let peer_mac = peer["port"]["mac_address"].as_str().unwrap().to_string();
    let peer_tap = format!("tap{}", &peer["port"]["id"].as_str().unwrap()[..11]);
    let peer_ns = Netns::new("agent-peer").unwrap();
    let pn = peer_ns.name();
    ip(&[
        "-n",
        node.netns.name(),
        "link",
        "add",
        &peer_tap,
        "type",
        "veth",
        "peer",
        "name",
        "eth0",
        "netns",
        pn,
    ])
    .unwrap();
    ip(&["-n", pn, "link", "set", "eth0", "address", &peer_mac]).unwrap();
    ip(&["-n", pn, "addr", "add", "10.9.0.20/24", "dev", "eth0"]).unwrap();
    ip(&["-n", pn, "link", "set", "eth0", "up"]).unwrap();
    ip(&["-n", node.netns.name(), "link", "set", &peer_tap, "up"]).unwrap();
    let console = agent.wait_console(id, "ping_reply_seq=", 1, Duration::from_secs(120));
    assert!(
        console.contains(&format!("arp_reply={peer_mac}\n")),
        "{console}"
    );
    let guest_mac = port["mac_address"].as_str().unwrap();
    assert!(
        console.contains(&format!("net_mac={guest_mac}\n")),
        "{console}"
    );
    // The peer's kernel saw the guest's echo requests (and answered them).
    let stats = peer_ns.exec(&["cat", "/proc/net/snmp"]).unwrap();
    let snmp = String::from_utf8_lossy(&stats.stdout).to_string();
    let icmp: Vec<&str> = snmp.lines().filter(|l| l.starts_with("Icmp:")).collect();
    let names: Vec<&str> = icmp[0].split_whitespace().collect();
    let values: Vec<&str> = icmp[1].split_whitespace().collect();
    let in_echos = names.iter().position(|n| *n == "InEchos").unwrap();
    assert!(values[in_echos].parse::<u64>().unwrap() >= 1, "{snmp}");
    agent.wait_console(id, "ready\n", 1, Duration::from_secs(30));

    // Pause and unpause.
    action(&agent, id, json!({"pause": null}));
    agent.wait_status(id, "PAUSED", Duration::from_secs(30));
    action(&agent, id, json!({"unpause": null}));
    agent.wait_status(id, "ACTIVE", Duration::from_secs(30));

    // Stop: Ctrl+Alt+Del, the guest says goodbye and resets; the VMM is gone.
    let vmm_pid = agent.server(id)["vmm"]["pid"].as_i64().unwrap() as i32;
    action(&agent, id, json!({"os-stop": null}));
    let srv = agent.wait_status(id, "SHUTOFF", Duration::from_secs(60));
    assert!(srv["vmm"].is_null() && srv["fault"].is_null(), "{srv}");
    assert!(agent.console(id).contains("shutdown\n"));
    assert!(!running(vmm_pid));
    // Nothing to stop now; start it again: a second boot reads the same disk.
    let (s, v) = agent.api(
        "POST",
        &format!("/v1/servers/{id}/action"),
        Some(r#"{"os-stop": null}"#),
    );
    assert_eq!(s, 409, "{v}");
    action(&agent, id, json!({"os-start": null}));
    agent.wait_status(id, "ACTIVE", Duration::from_secs(60));
    agent.wait_console(id, &expected, 2, Duration::from_secs(60));
    agent.wait_console(id, "ping_reply_seq=", 2, Duration::from_secs(120));

    // Kill the agent outright with the VM paused; the VM keeps running (paused); a new
    // agent adopts it as it is.
    action(&agent, id, json!({"pause": null}));
    agent.wait_status(id, "PAUSED", Duration::from_secs(30));
    let vmm_pid = agent.server(id)["vmm"]["pid"].as_i64().unwrap() as i32;
    drop(agent);
    std::thread::sleep(Duration::from_millis(500));
    assert!(running(vmm_pid), "the VMM outlives the agent");
    let agent = AgentProc::start(&setup);
    let srv = agent.server(id);
    assert_eq!(srv["status"], "PAUSED", "{srv}");
    assert_eq!(srv["vmm"]["pid"].as_i64(), Some(i64::from(vmm_pid)));
    action(&agent, id, json!({"unpause": null}));
    agent.wait_status(id, "ACTIVE", Duration::from_secs(30));
    // ... and manages it: a soft reboot boots the guest a third time.
    action(&agent, id, json!({"reboot": {"type": "SOFT"}}));
    agent.wait_status(id, "ACTIVE", Duration::from_secs(90));
    agent.wait_console(id, &expected, 3, Duration::from_secs(60));
    assert!(!running(vmm_pid));
    let (s, v) = agent.api(
        "POST",
        &format!("/v1/servers/{id}/action"),
        Some(r#"{"os-getConsoleOutput": {"length": 1}}"#),
    );
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        v["output"].as_str().unwrap().matches('\n').count(),
        1,
        "{v}"
    );

    // The guest shuts down on its own (Ctrl+Alt+Del sent straight to the VMM, as if from
    // inside): a clean exit is SHUTOFF, with no fault.
    let srv = agent.server(id);
    let vmm_sock = PathBuf::from(srv["vmm"]["api_socket"].as_str().unwrap());
    let (s, v) = http(
        &vmm_sock,
        "PUT",
        "/actions",
        Some(r#"{"action_type": "SendCtrlAltDel"}"#),
    );
    assert_eq!(s, 204, "{v}");
    let srv = agent.wait_status(id, "SHUTOFF", Duration::from_secs(30));
    assert!(srv["fault"].is_null(), "{srv}");
    action(&agent, id, json!({"os-start": null}));
    agent.wait_status(id, "ACTIVE", Duration::from_secs(60));
    agent.wait_console(id, &expected, 4, Duration::from_secs(60));

    // A VMM killed behind the agent's back: ERROR with the reason.
    let vmm_pid = agent.server(id)["vmm"]["pid"].as_i64().unwrap() as i32;
    kill9(vmm_pid);
    let srv = agent.wait_status(id, "ERROR", Duration::from_secs(30));
    let fault = srv["fault"]["message"].as_str().unwrap();
    assert!(fault.contains("signal 9"), "{fault}");
    assert!(srv["vmm"].is_null(), "{srv}");

    // A VMM that dies while the agent is away: the restarted agent learns how it ended.
    action(&agent, id, json!({"reboot": {"type": "HARD"}}));
    agent.wait_status(id, "ACTIVE", Duration::from_secs(60));
    agent.wait_console(id, &expected, 5, Duration::from_secs(60));
    let vmm_pid = agent.server(id)["vmm"]["pid"].as_i64().unwrap() as i32;
    drop(agent);
    kill9(vmm_pid);
    // ... and whose config drive went missing: rebuilt when the agent starts.
    std::fs::remove_file(&config_drive).unwrap();
    let agent = AgentProc::start(&setup);
    assert!(config_drive.exists(), "config drive rebuilt");
    let srv = agent.wait_status(id, "ERROR", Duration::from_secs(30));
    assert!(
        srv["fault"]["message"]
            .as_str()
            .unwrap()
            .contains("signal 9"),
        "{srv}"
    );

    // Delete releases everything.
    let (s, v) = agent.api("DELETE", &format!("/v1/servers/{id}"), None);
    assert_eq!(s, 204, "{v}");
    let (s, _) = agent.api("GET", &format!("/v1/servers/{id}"), None);
    assert_eq!(s, 404);
    let (s, v) = http(&blockdp_sock, "GET", &format!("/volumes/{vol_id}"), None);
    assert_eq!(s, 404, "volume deleted: {v}");
    assert!(!config_drive.exists(), "config drive deleted");
    let (s, v) = netdp_call(&netdp_sock, "GET", &format!("/v2.0/ports/{port_id}"), None);
    assert_eq!(s, 404, "port deleted: {v}");
    let links = node.netns.exec(&["ip", "-o", "link"]).unwrap();
    assert!(
        !String::from_utf8_lossy(&links.stdout).contains(&tap),
        "tap {tap} deleted"
    );
    let ps = Command::new("ps").args(["-eo", "args"]).output().unwrap();
    let ps = String::from_utf8_lossy(&ps.stdout).to_string();
    assert!(
        !ps.lines()
            .any(|l| l.contains(&state_dir.display().to_string())
                && (l.contains("vmm-shim") || l.contains("--api-sock"))),
        "no VMM or shim left: {ps}"
    );
    let (_, list) = agent.api("GET", "/v1/servers", None);
    assert_eq!(list["servers"].as_array().map(Vec::len), Some(0));

    // The usual path from control: a port it made through the Neutron API, and a volume it
    // made on blockdp (boot from volume). The agent plugs and binds the port, serves the
    // volume; on delete both stay (unbound, unexported), only the tap and VMM go.
    let (s, port) = netdp_call(
        &netdp_sock,
        "POST",
        "/v2.0/ports",
        Some(json!({"port": {"network_id": network_id, "project_id": "p1"}})),
    );
    assert_eq!(s, 201, "{port}");
    let port_id = port["port"]["id"].as_str().unwrap().to_string();
    let (s, vol) = http(
        &blockdp_sock,
        "POST",
        "/volumes",
        Some(&json!({"name": "boot-vol", "source": {"path": image_path}}).to_string()),
    );
    assert_eq!(s, 201, "{vol}");
    let vol_id = vol["volume"]["id"].as_str().unwrap().to_string();
    let placement = json!({"server": {
        "id": "vm-e2e-2", "project_id": "p1", "vcpus": 1, "ram_mib": 32,
        "kernel": {"path": kernel},
        "root_disk": {"volume_id": vol_id},
        "ports": [{"port_id": port_id}],
    }});
    let (s, v) = agent.api("POST", "/v1/servers", Some(&placement.to_string()));
    assert_eq!(s, 202, "{v}");
    let srv = agent.wait_status("vm-e2e-2", "ACTIVE", Duration::from_secs(90));
    agent.wait_console("vm-e2e-2", &expected, 1, Duration::from_secs(60));
    let (_, p) = netdp_call(&netdp_sock, "GET", &format!("/v2.0/ports/{port_id}"), None);
    assert_eq!(
        (
            p["port"]["device_id"].as_str(),
            p["port"]["status"].as_str()
        ),
        (Some("vm-e2e-2"), Some("ACTIVE")),
        "{p}"
    );
    let tap = srv["ports"][0]["tap"].as_str().unwrap().to_string();
    let (s, _) = agent.api("DELETE", "/v1/servers/vm-e2e-2", None);
    assert_eq!(s, 204);
    let (s, p) = netdp_call(&netdp_sock, "GET", &format!("/v2.0/ports/{port_id}"), None);
    assert_eq!((s, p["port"]["device_id"].as_str()), (200, Some("")), "{p}");
    let (s, v) = http(&blockdp_sock, "GET", &format!("/volumes/{vol_id}"), None);
    assert_eq!(s, 200, "{v}");
    assert!(v["volume"]["export"].is_null(), "unexported: {v}");
    let links = node.netns.exec(&["ip", "-o", "link"]).unwrap();
    assert!(!String::from_utf8_lossy(&links.stdout).contains(&tap));
}

#[test]
fn concurrent_builds_share_one_network_and_a_failed_vmm_start_releases_cleanly() {
    if !caps::require_all(&[
        caps::Capability::Root,
        caps::Capability::Bpf,
        caps::Capability::Netns,
        caps::Capability::IoUring,
    ]) {
        return;
    }
    let node = Node::start();
    let image = node.root.path().join("disk.img");
    std::fs::write(&image, vec![1u8; 4096]).unwrap();
    let kernel = node.root.path().join("kernel");
    std::fs::write(&kernel, b"never booted").unwrap();
    // A VMM binary that does not exist: builds get as far as starting it.
    let mut setup = node.agent_setup();
    let missing = node.root.path().join("no-such-vmm");
    setup.vmm = &missing;
    let agent = AgentProc::start(&setup);
    let ids = ["c-1", "c-2", "c-3"];
    for id in ids {
        let p = json!({"server": {
            "id": id, "project_id": "p2", "vcpus": 1, "ram_mib": 32,
            "kernel": {"path": kernel},
            "root_disk": {"image": {"path": image}},
            "ports": [{"network": {"name": "green", "subnet": {"cidr": "10.8.0.0/24"}}}],
        }});
        let (s, v) = agent.api("POST", "/v1/servers", Some(&p.to_string()));
        assert_eq!(s, 202, "{v}");
    }
    let mut taps = Vec::new();
    for id in ids {
        let srv = agent.wait_status(id, "ERROR", Duration::from_secs(60));
        let fault = srv["fault"]["message"].as_str().unwrap();
        assert!(fault.contains("exited during start-up"), "{fault}");
        assert!(fault.contains("no-such-vmm"), "{fault}");
        taps.push(srv["ports"][0]["tap"].as_str().unwrap().to_string());
    }
    let (_, nets) = netdp_call(&node.netdp_sock, "GET", "/v2.0/networks", None);
    let green: Vec<&Value> = nets["networks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|n| n["name"] == "green")
        .collect();
    assert_eq!(green.len(), 1, "one network for all three: {nets}");
    assert_eq!(green[0]["subnets"].as_array().map(Vec::len), Some(1));
    let (_, ports) = netdp_call(&node.netdp_sock, "GET", "/v2.0/ports", None);
    assert_eq!(ports["ports"].as_array().map(Vec::len), Some(3), "{ports}");

    for id in ids {
        let (s, v) = agent.api("DELETE", &format!("/v1/servers/{id}"), None);
        assert_eq!(s, 204, "{v}");
    }
    let (_, ports) = netdp_call(&node.netdp_sock, "GET", "/v2.0/ports", None);
    assert_eq!(ports["ports"].as_array().map(Vec::len), Some(0), "{ports}");
    let (_, vols) = http(&node.blockdp_sock, "GET", "/volumes", None);
    assert_eq!(vols["volumes"].as_array().map(Vec::len), Some(0), "{vols}");
    let links = node.netns.exec(&["ip", "-o", "link"]).unwrap();
    let links = String::from_utf8_lossy(&links.stdout).to_string();
    for tap in taps {
        assert!(!links.contains(&tap), "{tap} left in {links}");
    }
}
