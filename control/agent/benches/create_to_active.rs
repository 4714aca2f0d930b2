//! Time from `POST /v1/servers` to ACTIVE on this machine, split into the agent's build
//! steps (images, volume, ports, vmm_start, vmm_boot), plus the guest's first report on its
//! console and the delete, with the real daemons: blockdp, netdp in a node namespace, the
//! agent, and the vmm kit's `server` guest reading a 1 MiB root disk.
//!
//! `cargo bench -p ferrostack-agent --bench create_to_active` (root, KVM, BPF, netns,
//! io_uring). `BENCH_ROUNDS` (default 10) servers are built one after the other; medians
//! and minimums are printed. Without `--bench` (as `cargo test --benches` runs it) one
//! round is done.

#[path = "../tests/support/mod.rs"]
mod support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::json;
use support::{AgentProc, Node};

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() {
    if !caps::require_all(&[
        caps::Capability::Root,
        caps::Capability::Kvm,
        caps::Capability::Bpf,
        caps::Capability::Netns,
        caps::Capability::IoUring,
    ]) {
        return;
    }
    let quick = !std::env::args().any(|a| a == "--bench");
    let rounds: usize = if quick {
        1
    } else {
        std::env::var("BENCH_ROUNDS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(10)
    };
    let out = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("guests");
    let kernel = vmm::testkit::build_guest("server", &out).expect("build the guest");
    let node = Node::start();
    let image = node.root.path().join("disk.img");
    std::fs::write(
        &image,
        (0..1 << 20)
            .map(|i: u32| (i * 13) as u8)
            .collect::<Vec<_>>(),
    )
    .unwrap();
    let agent = AgentProc::start(&node.agent_setup());

    let mut samples: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    for round in 0..rounds {
        let id = format!("bench-{round}");
        let placement = json!({"server": {
            "id": id, "project_id": "bench", "vcpus": 1, "ram_mib": 32,
            "kernel": {"path": kernel},
            "root_disk": {"image": {"path": image}},
            "ports": [{"network": {"name": "bench", "subnet": {"cidr": "10.77.0.0/24"}}}],
        }});
        let t0 = Instant::now();
        let (s, v) = agent.api("POST", "/v1/servers", Some(&placement.to_string()));
        assert_eq!(s, 202, "{v}");
        let srv = loop {
            let srv = agent.server(&id);
            if srv["status"] != "BUILD" {
                break srv;
            }
            assert!(t0.elapsed() < Duration::from_secs(60), "{srv}");
            std::thread::sleep(Duration::from_millis(1));
        };
        let active = t0.elapsed().as_secs_f64();
        assert_eq!(srv["status"], "ACTIVE", "{srv}");
        loop {
            if agent.console(&id).contains("disk_fnv=") {
                break;
            }
            assert!(t0.elapsed() < Duration::from_secs(60));
            std::thread::sleep(Duration::from_millis(1));
        }
        let disk_read = t0.elapsed().as_secs_f64();
        for step in srv["build_steps"].as_array().unwrap() {
            samples
                .entry(step["step"].as_str().unwrap().to_string())
                .or_default()
                .push(step["seconds"].as_f64().unwrap());
        }
        samples
            .entry("POST -> ACTIVE seen".into())
            .or_default()
            .push(active);
        samples
            .entry("POST -> guest read its disk".into())
            .or_default()
            .push(disk_read);
        let t1 = Instant::now();
        let (s, _) = agent.api("DELETE", &format!("/v1/servers/{id}"), None);
        assert_eq!(s, 204);
        samples
            .entry("DELETE (all released)".into())
            .or_default()
            .push(t1.elapsed().as_secs_f64());
    }
    println!("create -> ACTIVE, {rounds} servers one after the other (ms, median / min):");
    let order = [
        "images",
        "volume",
        "ports",
        "config_drive",
        "vmm_start",
        "vmm_boot",
        "total",
        "POST -> ACTIVE seen",
        "POST -> guest read its disk",
        "DELETE (all released)",
    ];
    for name in order {
        let Some(v) = samples.get_mut(name) else {
            continue;
        };
        let min = v.iter().copied().fold(f64::INFINITY, f64::min);
        println!("  {name:<30} {:>8.1} / {:>8.1}", median(v) * 1e3, min * 1e3);
    }
}
