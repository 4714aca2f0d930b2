//! Images by URL, as Glance or objectd will serve them: the agent downloads the kernel, and
//! blockdp fills the root volume from the disk image's URL (a volume larger than the image:
//! the guest reads the image and then zeros). A missing initrd fails the build with the
//! server's answer as the fault. Needs KVM and io_uring, no network namespace.

mod support;

use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::json;
use support::{AgentProc, AgentSetup, HttpPeer, Proc, daemon_binaries, fnv1a, http};

#[test]
fn kernel_and_disk_image_from_http_urls() {
    if !caps::require_all(&[
        caps::Capability::Root,
        caps::Capability::Kvm,
        caps::Capability::IoUring,
    ]) {
        return;
    }
    let (vmm_bin, blockdp_bin, _) = daemon_binaries().clone();
    let out = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("guests");
    let kernel = std::fs::read(vmm::testkit::build_guest("server", &out).unwrap()).unwrap();
    let image: Vec<u8> = (0..128 * 1024usize)
        .map(|i| (i * 7 + i / 4096) as u8)
        .collect();
    let served = image.clone();
    let peer = HttpPeer::start(move |r| match r.path.as_str() {
        "/v2/images/k/file" => (200, kernel.clone()),
        "/v2/images/d/file" => (200, served.clone()),
        _ => (404, b"no such image".to_vec()),
    });

    let dir = tempfile::tempdir().unwrap();
    let bdir = dir.path().join("blockdp");
    std::fs::create_dir_all(&bdir).unwrap();
    let bsock = bdir.join("api.sock");
    let mut child = Command::new(&blockdp_bin)
        .arg("--data-dir")
        .arg(&bdir)
        .arg("--api-socket")
        .arg(&bsock)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    support::wait_socket(&bsock, &mut child, "blockdp");
    let _blockdp = Proc(Some(child));
    let state = dir.path().join("agent");
    std::fs::create_dir_all(&state).unwrap();
    struct Reap(std::path::PathBuf);
    impl Drop for Reap {
        fn drop(&mut self) {
            AgentProc::kill_vmms(&self.0);
        }
    }
    let _reap = Reap(state.clone());
    let a = AgentProc::start(&AgentSetup {
        state_dir: &state,
        blockdp: &bsock,
        netdp: &dir.path().join("no-netdp.sock"),
        vmm: &vmm_bin,
        netns: None,
        extra: &[],
    });

    let size = 1 << 20;
    let p = json!({"server": {
        "id": "from-urls",
        "vcpus": 1,
        "ram_mib": 32,
        "kernel": {"url": format!("{}/v2/images/k/file", peer.url)},
        "root_disk": {
            "image": {"url": format!("{}/v2/images/d/file", peer.url)},
            "size_bytes": size,
            "qos": {"iops": 5000},
        },
    }});
    let (s, v) = a.api("POST", "/v1/servers", Some(&p.to_string()));
    assert_eq!(s, 202, "{v}");
    let srv = a.wait_status("from-urls", "ACTIVE", Duration::from_secs(90));
    let mut disk = image.clone();
    disk.resize(size, 0);
    let console = a.wait_console(
        "from-urls",
        &format!("disk_fnv={:016x}\n", fnv1a(&disk)),
        1,
        Duration::from_secs(60),
    );
    assert!(console.contains("disk_read_sectors=2048\n"), "{console}");
    assert!(srv["ports"].as_array().unwrap().is_empty());
    let vol = srv["volume"]["id"].as_str().unwrap().to_string();
    let (_, v) = http(&bsock, "GET", &format!("/volumes/{vol}"), None);
    assert_eq!(v["volume"]["qos"]["iops"], 5000, "{v}");
    let (s, _) = a.api("DELETE", "/v1/servers/from-urls", None);
    assert_eq!(s, 204);
    assert_eq!(http(&bsock, "GET", &format!("/volumes/{vol}"), None).0, 404);

    // A missing initrd: ERROR, the fault says what the image server answered.
    let mut p = p;
    p["server"]["id"] = json!("no-initrd");
    p["server"]["initrd"] = json!({"url": format!("{}/v2/images/missing/file", peer.url)});
    let (s, v) = a.api("POST", "/v1/servers", Some(&p.to_string()));
    assert_eq!(s, 202, "{v}");
    let srv = a.wait_status("no-initrd", "ERROR", Duration::from_secs(60));
    let fault = srv["fault"]["message"].as_str().unwrap();
    assert!(
        fault.contains("download the initrd") && fault.contains("404"),
        "{fault}"
    );
    let (s, _) = a.api("DELETE", "/v1/servers/no-initrd", None);
    assert_eq!(s, 204);
    // The second server's kernel came from the agent's image cache.
    let kernel_gets = peer
        .requests()
        .iter()
        .filter(|r| r.path == "/v2/images/k/file")
        .count();
    assert_eq!(kernel_gets, 1);
    let (_, vols) = http(&bsock, "GET", "/volumes", None);
    assert_eq!(vols["volumes"].as_array().map(Vec::len), Some(0), "{vols}");
}

#[test]
fn an_agent_killed_mid_build_leaves_nothing_behind_once_the_server_is_deleted() {
    if !caps::require(caps::Capability::IoUring) {
        return;
    }
    let (_, blockdp_bin, _) = daemon_binaries().clone();
    // The disk image arrives slowly: the agent is killed while blockdp is fetching it, so
    // blockdp makes the volume but the agent never records it.
    let peer = HttpPeer::start(|r| {
        if r.path == "/slow/disk" {
            std::thread::sleep(Duration::from_secs(2));
            (200, vec![7u8; 64 * 1024])
        } else {
            (404, vec![])
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let kernel = dir.path().join("kernel");
    std::fs::write(&kernel, b"not booted in this test").unwrap();
    let bdir = dir.path().join("blockdp");
    std::fs::create_dir_all(&bdir).unwrap();
    let bsock = bdir.join("api.sock");
    let mut child = Command::new(&blockdp_bin)
        .arg("--data-dir")
        .arg(&bdir)
        .arg("--api-socket")
        .arg(&bsock)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    support::wait_socket(&bsock, &mut child, "blockdp");
    let _blockdp = Proc(Some(child));
    let state = dir.path().join("agent");
    std::fs::create_dir_all(&state).unwrap();
    let setup = AgentSetup {
        state_dir: &state,
        blockdp: &bsock,
        netdp: &dir.path().join("no-netdp.sock"),
        vmm: std::path::Path::new("/nonexistent/vmm"),
        netns: None,
        extra: &[],
    };
    let mut a = AgentProc::start(&setup);
    let p = json!({"server": {
        "id": "crash",
        "vcpus": 1,
        "ram_mib": 32,
        "kernel": {"path": kernel},
        "root_disk": {"image": {"url": format!("{}/slow/disk", peer.url)}},
    }});
    let (s, v) = a.api("POST", "/v1/servers", Some(&p.to_string()));
    assert_eq!(s, 202, "{v}");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while peer.requests().is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "blockdp never fetched"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    a.proc.kill();
    // blockdp finishes the volume the agent will never hear about.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (_, vols) = http(&bsock, "GET", "/volumes", None);
        if vols["volumes"].as_array().is_some_and(|v| v.len() == 1) {
            assert_eq!(vols["volumes"][0]["name"], "server-crash-root");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{vols}");
        std::thread::sleep(Duration::from_millis(50));
    }

    let a = AgentProc::start(&setup);
    let srv = a.server("crash");
    assert_eq!(srv["status"], "ERROR", "{srv}");
    assert!(
        srv["fault"]["message"]
            .as_str()
            .unwrap()
            .contains("restarted during spawning"),
        "{srv}"
    );
    let (s, v) = a.api("DELETE", "/v1/servers/crash", None);
    assert_eq!(s, 204, "{v}");
    let (_, vols) = http(&bsock, "GET", "/volumes", None);
    assert_eq!(vols["volumes"].as_array().map(Vec::len), Some(0), "{vols}");
}

#[test]
fn a_guest_that_crashes_puts_its_server_in_error() {
    if !caps::require_all(&[
        caps::Capability::Root,
        caps::Capability::Kvm,
        caps::Capability::IoUring,
    ]) {
        return;
    }
    let (vmm_bin, blockdp_bin, _) = daemon_binaries().clone();
    let out = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("guests");
    // The kit's `crash` guest prints `crashing`, then triple-faults: the VMM exits with 2.
    let kernel = vmm::testkit::build_guest("crash", &out).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("disk.img");
    std::fs::write(&disk, vec![0u8; 4096]).unwrap();
    let bdir = dir.path().join("blockdp");
    std::fs::create_dir_all(&bdir).unwrap();
    let bsock = bdir.join("api.sock");
    let mut child = Command::new(&blockdp_bin)
        .arg("--data-dir")
        .arg(&bdir)
        .arg("--api-socket")
        .arg(&bsock)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    support::wait_socket(&bsock, &mut child, "blockdp");
    let _blockdp = Proc(Some(child));
    let state = dir.path().join("agent");
    std::fs::create_dir_all(&state).unwrap();
    let a = AgentProc::start(&AgentSetup {
        state_dir: &state,
        blockdp: &bsock,
        netdp: &dir.path().join("no-netdp.sock"),
        vmm: &vmm_bin,
        netns: None,
        extra: &[],
    });
    let p = json!({"server": {
        "id": "crasher", "vcpus": 1, "ram_mib": 32,
        "kernel": {"path": kernel},
        "root_disk": {"image": {"path": disk}},
    }});
    let (s, v) = a.api("POST", "/v1/servers", Some(&p.to_string()));
    assert_eq!(s, 202, "{v}");
    let srv = a.wait_status("crasher", "ERROR", Duration::from_secs(60));
    let fault = srv["fault"]["message"].as_str().unwrap();
    assert!(fault.contains("the guest crashed"), "{fault}");
    assert!(a.console("crasher").contains("crashing\n"));
    let (s, text) = a.api("GET", "/metrics", None);
    assert_eq!(s, 200);
    let m = caps::prom::must_scrape("agent", text.as_str().unwrap());
    assert_eq!(
        m.get("ferrostack_agent_vmm_exits_total", &[("state", "error")]),
        1.0
    );
    assert_eq!(
        m.get("ferrostack_agent_builds_total", &[("result", "active")]),
        1.0
    );
    let (s, _) = a.api("DELETE", "/v1/servers/crasher", None);
    assert_eq!(s, 204);
}
