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
    let (_, vols) = http(&bsock, "GET", "/volumes", None);
    assert_eq!(vols["volumes"].as_array().map(Vec::len), Some(0), "{vols}");
}
