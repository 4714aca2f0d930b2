//! Meter sampling end to end: the real daemons and a KVM guest that reads its whole
//! 256 KiB disk; the agent's telemetry batches (received by a peer playing control's
//! `POST /telemetry/v1/samples`, reached over a veth into the node namespace) carry the
//! server's vCPU time, memory, the disk bytes the guest read, the volume's and the port's
//! counters, and the lifecycle events (create, BUILD→ACTIVE, delete). A stop then a start
//! made the moment the stop ends still give both updates, in order; an update recorded
//! while control refuses batches survives a kill of the agent and is delivered by the
//! next agent.

mod support;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::{AgentProc, HttpPeer, Node, fnv1a};
use tests::netns::ip;

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

/// Every telemetry batch the peer got so far.
fn batches(peer: &HttpPeer) -> Vec<Value> {
    peer.requests()
        .iter()
        .filter(|r| r.method == "POST" && r.path == "/ctl/telemetry/v1/samples")
        .map(|r| {
            assert!(
                r.headers
                    .iter()
                    .any(|(k, v)| k == "x-auth-token" && v == "meter-token"),
                "{:?}",
                r.headers
            );
            serde_json::from_slice(&r.body).unwrap()
        })
        .collect()
}

/// The latest value of `meter` for `resource` across batches, if any.
fn latest(peer: &HttpPeer, meter: &str, resource: &str) -> Option<Value> {
    batches(peer)
        .iter()
        .flat_map(|b| b["samples"].as_array().cloned().unwrap_or_default())
        .rfind(|s| s["meter"] == meter && s["resource_id"] == resource)
}

fn wait_for<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A veth between the host and the node namespace; removed with the namespace.
struct Link(String);
impl Drop for Link {
    fn drop(&mut self) {
        let _ = ip(&["link", "del", &self.0]);
    }
}

#[test]
fn the_agent_samples_a_running_server_and_reports_its_lifecycle() {
    if !privileged() {
        return;
    }
    let kernel = guest();
    let node = Node::start();
    let root = node.root.path();
    let image: Vec<u8> = (0..256 * 1024usize)
        .map(|i| (i.wrapping_mul(7) ^ (i >> 10)) as u8)
        .collect();
    let image_path = root.join("disk.img");
    std::fs::write(&image_path, &image).unwrap();

    // control's side, on the host end of a veth into the node namespace.
    let host_if = format!("fsm{}", std::process::id() % 1_000_000);
    let node_if = format!("{host_if}n");
    let o = ip(&[
        "link",
        "add",
        &host_if,
        "type",
        "veth",
        "peer",
        "name",
        &node_if,
        "netns",
        node.netns.name(),
    ])
    .unwrap();
    assert!(o.status.success(), "{o:?}");
    let _link = Link(host_if.clone());
    let sub = 1 + (std::process::id() % 60) * 4;
    let host_ip = format!("169.254.{}.{}", 200, sub);
    let node_ip = format!("169.254.{}.{}", 200, sub + 1);
    for args in [
        vec!["addr", "add", &*format!("{host_ip}/30"), "dev", &host_if],
        vec!["link", "set", &host_if, "up"],
    ] {
        let o = ip(&args).unwrap();
        assert!(o.status.success(), "{o:?}");
    }
    for args in [
        vec![
            "ip",
            "addr",
            "add",
            &*format!("{node_ip}/30"),
            "dev",
            &node_if,
        ],
        vec!["ip", "link", "set", &node_if, "up"],
    ] {
        let o = node.netns.exec(&args).unwrap();
        assert!(o.status.success(), "{o:?}");
    }
    // The peer refuses batches while `refuse` is set; it keeps the events it accepted.
    let refuse = Arc::new(AtomicBool::new(false));
    let accepted: Arc<Mutex<Vec<Value>>> = Arc::default();
    let (r, a) = (refuse.clone(), accepted.clone());
    let peer = HttpPeer::start_on(&format!("{host_ip}:0"), move |req| {
        if r.load(Ordering::SeqCst) {
            return (503, b"{}".to_vec());
        }
        if let Ok(b) = serde_json::from_slice::<Value>(&req.body) {
            let evs = b["events"].as_array().cloned().unwrap_or_default();
            a.lock().unwrap().extend(evs);
        }
        (202, b"{}".to_vec())
    });
    let updates = |id: &str| -> Vec<(String, String)> {
        accepted
            .lock()
            .unwrap()
            .iter()
            .filter(|e| e["resource_id"] == id && e["event_type"] == "compute.instance.update")
            .map(|e| {
                (
                    e["traits"]["old_state"].as_str().unwrap().to_string(),
                    e["traits"]["state"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    };
    let url = format!("{}/ctl", peer.url);

    let mut setup = node.agent_setup();
    let extra = [
        "--control-url",
        &url,
        "--control-token",
        "meter-token",
        "--sample-interval-secs",
        "1",
    ];
    setup.extra = &extra;
    let mut agent = AgentProc::start(&setup);
    let (_, n) = agent.api("GET", "/v1/node", None);
    let node_id = n["node"]["id"].as_str().unwrap().to_string();

    let id = "vm-meters-1";
    let placement = json!({"server": {
        "id": id, "name": "metered", "project_id": "proj-m", "vcpus": 1, "ram_mib": 32,
        "kernel": {"path": kernel},
        "cmdline": "console=ttyS0 reboot=k panic=1 pci=off probe=10.8.0.20",
        "root_disk": {"image": {"path": image_path}},
        "ports": [{"network": {"name": "green", "subnet": {"cidr": "10.8.0.0/24"}},
                   "fixed_ip": "10.8.0.10"}],
        // A key and user data on the config drive: the guest stops scanning it once it
        // has found both (a full scan takes long on a loaded machine).
        "metadata": {"key_name": "tlm", "public_key": "ssh-ed25519 AAAAtlm tlm@ferrostack", "user_data": "IyBmZXJyb3N0YWNrLXVzZXItZGF0YSB0bG0K"},
    }});
    let (s, v) = agent.api("POST", "/v1/servers", Some(&placement.to_string()));
    assert_eq!(s, 202, "{v}");
    let srv = agent.wait_status(id, "ACTIVE", Duration::from_secs(90));
    agent.wait_console(
        id,
        &format!("disk_fnv={:016x}\n", fnv1a(&image)),
        1,
        Duration::from_secs(90),
    );
    let volume = srv["volume"]["id"].as_str().unwrap().to_string();
    let port = srv["ports"][0]["id"].as_str().unwrap().to_string();

    // The guest read its whole disk (and nothing else): at least 256 KiB read, no bytes
    // written; the same figure under the server and under the volume.
    let read = wait_for("disk.read.bytes >= 256 KiB", || {
        latest(&peer, "disk.read.bytes", id)
            .filter(|s| s["volume"].as_f64().unwrap() >= image.len() as f64)
    });
    eprintln!("disk.read.bytes sample: {read}");
    assert_eq!(read["type"], "cumulative");
    assert_eq!(read["unit"], "B");
    assert_eq!(read["project_id"], "proj-m");
    let bytes = read["volume"].as_f64().unwrap();
    assert_eq!(
        bytes,
        image.len() as f64,
        "the guest reads its disk exactly once"
    );
    let dev = wait_for("disk.device.read.bytes", || {
        latest(&peer, "disk.device.read.bytes", &volume)
            .filter(|s| s["volume"].as_f64().unwrap() >= bytes)
    });
    assert_eq!(dev["project_id"], "proj-m");
    let written = latest(&peer, "disk.write.bytes", id).unwrap();
    assert_eq!(written["volume"].as_f64().unwrap(), 0.0, "{written}");
    let reqs = latest(&peer, "disk.read.requests", id).unwrap();
    assert!(reqs["volume"].as_f64().unwrap() >= 1.0, "{reqs}");

    // vCPU time moves, memory is what was asked for, RSS is real.
    let cpu = wait_for("cpu > 0", || {
        latest(&peer, "cpu", id).filter(|s| s["volume"].as_f64().unwrap() > 0.0)
    });
    assert_eq!(cpu["unit"], "ns");
    assert_eq!(latest(&peer, "memory", id).unwrap()["volume"], 32.0);
    assert_eq!(latest(&peer, "vcpus", id).unwrap()["volume"], 1.0);
    let rss = latest(&peer, "memory.resident", id).unwrap();
    assert!(rss["volume"].as_f64().unwrap() > 0.0, "{rss}");

    // A stop, and a start the moment the stop is done: both updates, in order (the
    // server is SHUTOFF for well under a second).
    let act = |agent: &AgentProc, body: &str| {
        let (s, v) = agent.api("POST", &format!("/v1/servers/{id}/action"), Some(body));
        assert_eq!(s, 202, "{v}");
    };
    act(&agent, r#"{"os-stop": null}"#);
    let stopped_at = loop {
        let s = agent.server(id);
        if s["status"] == "SHUTOFF" && s["task_state"].is_null() {
            break Instant::now();
        }
        std::thread::sleep(Duration::from_millis(2));
    };
    act(&agent, r#"{"os-start": null}"#);
    agent.wait_status(id, "ACTIVE", Duration::from_secs(60));
    eprintln!("SHUTOFF for {:?}", stopped_at.elapsed());
    let pair = |a: &str, b: &str| (a.to_string(), b.to_string());
    let want = vec![
        pair("BUILD", "ACTIVE"),
        pair("ACTIVE", "SHUTOFF"),
        pair("SHUTOFF", "ACTIVE"),
    ];
    wait_for("the stop and start events", || {
        (updates(id).len() >= 3).then_some(())
    });
    assert_eq!(updates(id), want);

    // control refuses batches; a stop's event waits in the saved outbox; the agent is
    // killed; the next agent sends it once control accepts again.
    refuse.store(true, Ordering::SeqCst);
    act(&agent, r#"{"os-stop": null}"#);
    agent.wait_status(id, "SHUTOFF", Duration::from_secs(60));
    wait_for("the stop event in the saved outbox", || {
        let st: Value =
            serde_json::from_slice(&std::fs::read(root.join("agent/state.json")).ok()?).ok()?;
        st["events"]["pending"]
            .as_array()?
            .iter()
            .any(|e| e["traits"]["state"] == "SHUTOFF")
            .then_some(())
    });
    agent.proc.kill();
    agent = AgentProc::start(&setup);
    refuse.store(false, Ordering::SeqCst);
    wait_for("the stop event from the next agent", || {
        (updates(id).len() >= 4).then_some(())
    });
    let mut want = want;
    want.push(pair("ACTIVE", "SHUTOFF"));
    assert_eq!(updates(id), want, "delivered once, in order");

    // The port: the guest's ARP for its probe left through it.
    eprintln!(
        "console: {}\nport {port} samples so far: {:?}",
        agent.console(id),
        batches(&peer)
            .iter()
            .flat_map(|b| b["samples"].as_array().cloned().unwrap_or_default())
            .rfind(|s| s["resource_id"] == port.as_str())
    );
    let out = wait_for("network.outgoing.packets >= 1", || {
        latest(&peer, "network.outgoing.packets", &port)
            .filter(|s| s["volume"].as_f64().unwrap() >= 1.0)
    });
    assert_eq!(out["project_id"], "proj-m");
    for m in [
        "network.incoming.packets",
        "network.incoming.bytes",
        "network.outgoing.bytes",
        "network.outgoing.packets.drop",
    ] {
        assert!(latest(&peer, m, &port).is_some(), "no {m}");
    }

    // Delete: the lifecycle events.
    let (s, _) = agent.api("DELETE", &format!("/v1/servers/{id}"), None);
    assert_eq!(s, 204);
    let events = wait_for("the delete event", || {
        let evs: Vec<Value> = accepted
            .lock()
            .unwrap()
            .iter()
            .filter(|e| e["resource_id"] == id)
            .cloned()
            .collect();
        evs.iter()
            .any(|e| e["event_type"] == "compute.instance.delete")
            .then_some(evs)
    });
    let kinds: Vec<(&str, &str, &str)> = events
        .iter()
        .map(|e| {
            (
                e["event_type"].as_str().unwrap(),
                e["traits"]["old_state"].as_str().unwrap_or(""),
                e["traits"]["state"].as_str().unwrap(),
            )
        })
        .collect();
    // Recorded at each change, delivered once each, in order.
    assert_eq!(
        kinds,
        [
            ("compute.instance.create", "", "BUILD"),
            ("compute.instance.update", "BUILD", "ACTIVE"),
            ("compute.instance.update", "ACTIVE", "SHUTOFF"),
            ("compute.instance.update", "SHUTOFF", "ACTIVE"),
            ("compute.instance.update", "ACTIVE", "SHUTOFF"),
            ("compute.instance.delete", "SHUTOFF", "DELETED"),
        ],
        "{events:?}"
    );
    let mut ids: Vec<&str> = events
        .iter()
        .map(|e| e["message_id"].as_str().unwrap())
        .collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), events.len(), "{events:?}");
    let times: Vec<f64> = events
        .iter()
        .map(|e| e["generated"].as_f64().unwrap())
        .collect();
    assert!(times.windows(2).all(|w| w[0] < w[1]), "{times:?}");
    assert!(events.iter().all(|e| e["project_id"] == "proj-m"));
    for b in batches(&peer) {
        assert_eq!(b["node_id"], node_id.as_str());
    }
    drop(agent);
}
