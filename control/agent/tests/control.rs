//! Registration and heartbeat towards control, against a recording peer that plays control's
//! node endpoints (the contract in the crate's `control` module): the agent registers with
//! its inventory, heartbeats with its servers, and registers again when control answers a
//! heartbeat with 404.

mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::{AgentProc, AgentSetup, HttpPeer};

#[test]
fn the_agent_registers_heartbeats_and_registers_again_when_forgotten() {
    let forgot = AtomicBool::new(false);
    let peer = HttpPeer::start(move |r| match r.method.as_str() {
        "PUT" => (200, b"{}".to_vec()),
        // The first heartbeat: "who are you?"
        "POST" if !forgot.swap(true, Ordering::SeqCst) => (404, b"{}".to_vec()),
        "POST" => (204, vec![]),
        _ => (405, vec![]),
    });
    let dir = tempfile::tempdir().unwrap();
    let url = format!("{}/ctl", peer.url);
    let a = AgentProc::start(&AgentSetup {
        state_dir: dir.path(),
        blockdp: &dir.path().join("none.sock"),
        netdp: &dir.path().join("none.sock"),
        vmm: std::path::Path::new("/nonexistent/vmm"),
        netns: None,
        extra: &[
            "--control-url",
            &url,
            "--control-token",
            "secret-token",
            "--heartbeat-interval-secs",
            "1",
            "--agent-url",
            "http://node1:8775",
            "--sample-interval-secs",
            "0",
        ],
    });
    let (_, node) = a.api("GET", "/v1/node", None);
    let node_id = node["node"]["id"].as_str().unwrap().to_string();

    // PUT (register), POST (404), PUT (register again), POST (accepted), ...
    let deadline = Instant::now() + Duration::from_secs(30);
    let reqs = loop {
        let reqs = peer.requests();
        if reqs.iter().filter(|r| r.method == "POST").count() >= 2 {
            break reqs;
        }
        assert!(Instant::now() < deadline, "too few requests: {reqs:?}");
        std::thread::sleep(Duration::from_millis(100));
    };
    let kinds: Vec<&str> = reqs.iter().map(|r| r.method.as_str()).collect();
    assert_eq!(&kinds[..4], ["PUT", "POST", "PUT", "POST"], "{reqs:?}");
    for r in &reqs {
        assert!(
            r.headers
                .iter()
                .any(|(k, v)| k == "x-auth-token" && v == "secret-token"),
            "{r:?}"
        );
    }
    let reg = &reqs[0];
    assert_eq!(reg.path, format!("/ctl/v1/nodes/{node_id}"));
    let body: Value = serde_json::from_slice(&reg.body).unwrap();
    let n = &body["node"];
    assert_eq!(n["id"], node_id.as_str());
    assert_eq!(n["agent_url"], "http://node1:8775");
    assert!(n["inventory"]["vcpus"].as_u64().unwrap() >= 1, "{body}");
    assert!(n["inventory"]["memory_mib"].as_u64().unwrap() > 0, "{body}");
    assert!(n["inventory"]["disk_bytes"].as_u64().unwrap() > 0, "{body}");
    let hb = &reqs[3];
    assert_eq!(hb.path, format!("/ctl/v1/nodes/{node_id}/heartbeat"));
    let body: Value = serde_json::from_slice(&hb.body).unwrap();
    assert!(body["heartbeat"]["seq"].as_u64().unwrap() >= 2, "{body}");
    assert!(body["heartbeat"]["servers"].is_array(), "{body}");

    // The node id survives a restart (control knows the node by it).
    drop(a);
    let a = AgentProc::start(&AgentSetup {
        state_dir: dir.path(),
        blockdp: &dir.path().join("none.sock"),
        netdp: &dir.path().join("none.sock"),
        vmm: std::path::Path::new("/nonexistent/vmm"),
        netns: None,
        extra: &[],
    });
    let (_, again) = a.api("GET", "/v1/node", None);
    assert_eq!(again["node"]["id"], node_id.as_str());
}
