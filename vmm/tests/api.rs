//! The Firecracker-compatible API, driven with real HTTP requests over the Unix socket:
//! configuring and booting a guest, pause/resume, Ctrl+Alt+Del, metrics, and bad input.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{Vmm, guest, kvm_available};
use serde_json::{Value, json};

fn ok(vmm: &Vmm, method: &str, path: &str, body: Value) {
    let (status, resp) = vmm.api(method, path, Some(&body.to_string()));
    assert_eq!(status, 204, "{method} {path} {body}: {resp}");
}

fn get(vmm: &Vmm, path: &str) -> Value {
    let (status, body) = vmm.api("GET", path, None);
    assert_eq!(status, 200, "GET {path}: {body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {path}: {e}: {body}"))
}

fn fault(vmm: &Vmm, method: &str, path: &str, body: &str) -> String {
    let (status, resp) = vmm.api(method, path, Some(body));
    assert_eq!(status, 400, "{method} {path} {body}: {resp}");
    let v: Value = serde_json::from_str(&resp).expect("json error body");
    v["fault_message"]
        .as_str()
        .unwrap_or_else(|| panic!("no fault_message in {resp}"))
        .to_string()
}

fn dots(serial: &str) -> usize {
    serial.matches('.').count()
}

#[test]
fn configure_boot_pause_resume_and_ctrl_alt_del_through_the_api() {
    if !kvm_available() {
        return;
    }
    let kernel = guest("waiter");
    let mut vmm = Vmm::with_api();
    assert_eq!(get(&vmm, "/")["state"], "Not started");
    ok(
        &vmm,
        "PUT",
        "/machine-config",
        json!({"vcpu_count": 2, "mem_size_mib": 32}),
    );
    ok(
        &vmm,
        "PATCH",
        "/machine-config",
        json!({"mem_size_mib": 48}),
    );
    let mc = get(&vmm, "/machine-config");
    assert_eq!(
        (mc["vcpu_count"].as_u64(), mc["mem_size_mib"].as_u64()),
        (Some(2), Some(48))
    );
    ok(
        &vmm,
        "PUT",
        "/boot-source",
        json!({"kernel_image_path": kernel, "boot_args": "console=ttyS0"}),
    );
    let cfg = get(&vmm, "/vm/config");
    assert_eq!(cfg["boot-source"]["kernel_image_path"], json!(kernel));
    assert_eq!(cfg["machine-config"]["mem_size_mib"], 48);

    ok(
        &vmm,
        "PUT",
        "/actions",
        json!({"action_type": "InstanceStart"}),
    );
    vmm.wait_serial("ready\n", Duration::from_secs(20));
    assert_eq!(get(&vmm, "/")["state"], "Running");
    vmm.assert_memory_overhead();

    // Paused: the guest's dots stop; resumed: they come back.
    vmm.wait_serial("..", Duration::from_secs(20));
    ok(&vmm, "PATCH", "/vm", json!({"state": "Paused"}));
    assert_eq!(get(&vmm, "/")["state"], "Paused");
    let before = dots(&vmm.serial());
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(dots(&vmm.serial()), before, "a paused guest ran");
    ok(&vmm, "PATCH", "/vm", json!({"state": "Resumed"}));
    let deadline = Instant::now() + Duration::from_secs(20);
    while dots(&vmm.serial()) <= before {
        assert!(Instant::now() < deadline, "the guest never resumed");
        std::thread::sleep(Duration::from_millis(5));
    }

    ok(
        &vmm,
        "PUT",
        "/actions",
        json!({"action_type": "SendCtrlAltDel"}),
    );
    let status = vmm.wait_exit(Duration::from_secs(20));
    assert_eq!(status.code(), Some(0));
    // Ctrl, Alt, Del pressed and released, in scancode set 2, as the guest read them.
    assert!(
        vmm.serial().contains("keys=1411e071e0f071f011f0\n"),
        "{}",
        vmm.serial()
    );
    assert!(!vmm.sock().exists(), "the api socket is removed on exit");
}

#[test]
fn bad_requests_get_400_with_a_fault_message_and_the_vmm_lives_on() {
    if !kvm_available() {
        return;
    }
    let kernel = guest("waiter");
    let mut vmm = Vmm::with_api();
    let m = fault(
        &vmm,
        "PUT",
        "/machine-config",
        r#"{"vcpu_count": "two", "mem_size_mib": 64}"#,
    );
    assert!(m.contains("invalid type"), "{m}");
    let m = fault(
        &vmm,
        "PUT",
        "/machine-config",
        r#"{"vcpu_count": 1, "mem_size_mib": 64, "gpus": 1}"#,
    );
    assert!(m.contains("unknown field"), "{m}");
    let m = fault(
        &vmm,
        "PUT",
        "/machine-config",
        r#"{"vcpu_count": 33, "mem_size_mib": 64}"#,
    );
    assert!(m.contains("vCPU count"), "{m}");
    let m = fault(
        &vmm,
        "PUT",
        "/boot-source",
        r#"{"kernel_image_path": "/nonexistent/vmlinux"}"#,
    );
    assert!(m.contains("/nonexistent/vmlinux"), "{m}");
    let m = fault(
        &vmm,
        "PUT",
        "/drives/rootfs",
        r#"{"drive_id": "other", "path_on_host": "/x", "is_root_device": true}"#,
    );
    assert!(m.contains("does not match"), "{m}");
    let m = fault(&vmm, "GET", "/no/such/thing", "");
    assert!(m.contains("Invalid request method and/or path"), "{m}");
    fault(&vmm, "PUT", "/actions", "{not json");
    let m = fault(
        &vmm,
        "PUT",
        "/actions",
        r#"{"action_type": "InstanceStart"}"#,
    );
    assert!(m.contains("without kernel"), "{m}");
    let m = fault(&vmm, "PATCH", "/vm", r#"{"state": "Paused"}"#);
    assert!(m.contains("before starting"), "{m}");
    let m = fault(
        &vmm,
        "PUT",
        "/network-interfaces/eth0",
        r#"{"iface_id": "eth0", "host_dev_name": "tap0", "guest_mac": "nope"}"#,
    );
    assert!(m.contains("MAC"), "{m}");

    // Still alive and still configurable.
    assert_eq!(get(&vmm, "/")["state"], "Not started");
    ok(
        &vmm,
        "PUT",
        "/machine-config",
        json!({"vcpu_count": 1, "mem_size_mib": 32}),
    );
    ok(
        &vmm,
        "PUT",
        "/boot-source",
        json!({"kernel_image_path": kernel}),
    );
    ok(
        &vmm,
        "PUT",
        "/actions",
        json!({"action_type": "InstanceStart"}),
    );
    vmm.wait_serial("ready\n", Duration::from_secs(20));
    let m = fault(
        &vmm,
        "PUT",
        "/actions",
        r#"{"action_type": "InstanceStart"}"#,
    );
    assert!(m.contains("after starting"), "{m}");
    let m = fault(
        &vmm,
        "PUT",
        "/machine-config",
        r#"{"vcpu_count": 2, "mem_size_mib": 64}"#,
    );
    assert!(m.contains("after starting"), "{m}");
    assert_eq!(get(&vmm, "/")["state"], "Running");
    assert!(vmm.alive());
}

#[test]
fn metrics_and_logger_are_configured_and_flushed() {
    if !kvm_available() {
        return;
    }
    let kernel = guest("waiter");
    let mut vmm = Vmm::with_api();
    let metrics = vmm.dir.path().join("metrics.json");
    let log = vmm.dir.path().join("api.log");
    ok(
        &vmm,
        "PUT",
        "/logger",
        json!({"log_path": log, "level": "Info", "show_level": false, "show_log_origin": true}),
    );
    ok(&vmm, "PUT", "/metrics", json!({"metrics_path": metrics}));
    fault(
        &vmm,
        "PUT",
        "/metrics",
        &json!({"metrics_path": metrics}).to_string(),
    );
    ok(
        &vmm,
        "PUT",
        "/boot-source",
        json!({"kernel_image_path": kernel}),
    );
    ok(
        &vmm,
        "PUT",
        "/actions",
        json!({"action_type": "InstanceStart"}),
    );
    vmm.wait_serial("ready\n", Duration::from_secs(20));
    ok(
        &vmm,
        "PUT",
        "/actions",
        json!({"action_type": "FlushMetrics"}),
    );
    let line = std::fs::read_to_string(&metrics).unwrap();
    let m: Value = serde_json::from_str(line.lines().last().unwrap()).unwrap();
    assert!(m["boot_time_us"].as_u64().unwrap() > 0, "{m}");
    assert!(m["serial_bytes_out"].as_u64().unwrap() >= 6, "{m}");
    assert!(m["api_requests"].as_u64().unwrap() >= 6, "{m}");
    let (status, prom) = vmm.api("GET", "/metrics", None);
    assert_eq!(status, 200);
    let prom = caps::prom::must_scrape("vmm", &prom);
    assert!(prom.get("ferrostack_vmm_boot_time_seconds", &[]) > 0.0);
    assert_eq!(prom.get("ferrostack_vmm_metrics_flushes_total", &[]), 1.0);
    let logged = std::fs::read_to_string(&log).unwrap();
    let line = logged
        .lines()
        .find(|l| l.contains("guest boot complete"))
        .unwrap_or_else(|| panic!("{logged}"));
    assert!(line.contains("legacy.rs:"), "show_log_origin: {line}");
    assert!(!line.contains(" INFO "), "show_level false: {line}");
}

#[test]
fn curl_drives_the_api_like_firecracker_tooling_does() {
    if !kvm_available() {
        return;
    }
    if Command::new("curl").arg("--version").output().is_err() {
        if std::env::var_os("CI").is_some() {
            panic!("curl is not installed");
        }
        eprintln!("SKIP: curl is not installed");
        return;
    }
    let kernel = guest("boot_info");
    let mut vmm = Vmm::with_api();
    let curl = |method: &str, path: &str, body: &str| {
        let out = Command::new("curl")
            .args(["-sS", "--unix-socket"])
            .arg(vmm.sock())
            .args(["-X", method, "-H", "Content-Type: application/json"])
            .args(["-w", "\n%{http_code}", "-d", body])
            .arg(format!("http://localhost{path}"))
            .output()
            .unwrap();
        String::from_utf8(out.stdout).unwrap()
    };
    assert_eq!(
        curl(
            "PUT",
            "/machine-config",
            r#"{"vcpu_count": 1, "mem_size_mib": 32}"#
        ),
        "\n204"
    );
    let body = format!(
        r#"{{"kernel_image_path": "{}", "boot_args": "from=curl"}}"#,
        kernel.display()
    );
    assert_eq!(curl("PUT", "/boot-source", &body), "\n204");
    assert!(curl("PUT", "/drives/x", "{}").ends_with("\n400"));
    assert_eq!(
        curl("PUT", "/actions", r#"{"action_type": "InstanceStart"}"#),
        "\n204"
    );
    assert_eq!(vmm.wait_exit(Duration::from_secs(20)).code(), Some(0));
    assert!(
        vmm.serial().contains("cmdline=from=curl\n"),
        "{}",
        vmm.serial()
    );
}

#[test]
fn a_running_drive_gets_a_new_backing_file_and_rate_limiter_through_patch() {
    if !kvm_available() {
        return;
    }
    let kernel = guest("waiter");
    let mut vmm = Vmm::with_api();
    let disk = vmm.dir.path().join("a.img");
    let bigger = vmm.dir.path().join("b.img");
    std::fs::write(&disk, vec![1u8; 8192]).unwrap();
    std::fs::write(&bigger, vec![2u8; 16384]).unwrap();
    let m = fault(&vmm, "PATCH", "/drives/rootfs", r#"{"drive_id": "rootfs"}"#);
    assert!(m.contains("before starting"), "{m}");
    ok(
        &vmm,
        "PUT",
        "/boot-source",
        json!({"kernel_image_path": kernel}),
    );
    ok(
        &vmm,
        "PUT",
        "/drives/rootfs",
        json!({"drive_id": "rootfs", "path_on_host": disk, "is_root_device": true}),
    );
    ok(
        &vmm,
        "PUT",
        "/actions",
        json!({"action_type": "InstanceStart"}),
    );
    vmm.wait_serial("ready\n", Duration::from_secs(20));

    ok(
        &vmm,
        "PATCH",
        "/drives/rootfs",
        json!({"drive_id": "rootfs", "path_on_host": bigger}),
    );
    ok(
        &vmm,
        "PATCH",
        "/drives/rootfs",
        json!({"drive_id": "rootfs", "rate_limiter": {"ops": {"size": 100, "refill_time": 1000}}}),
    );
    let cfg = get(&vmm, "/vm/config");
    assert_eq!(cfg["drives"][0]["path_on_host"], json!(bigger));
    assert_eq!(cfg["drives"][0]["rate_limiter"]["ops"]["size"], 100);

    let m = fault(
        &vmm,
        "PATCH",
        "/drives/rootfs",
        r#"{"drive_id": "rootfs", "path_on_host": "/nonexistent/disk"}"#,
    );
    assert!(m.contains("/nonexistent/disk"), "{m}");
    let m = fault(&vmm, "PATCH", "/drives/other", r#"{"drive_id": "other"}"#);
    assert!(m.contains("No device with id other"), "{m}");
    let m = fault(
        &vmm,
        "PATCH",
        "/network-interfaces/eth0",
        r#"{"iface_id": "eth0"}"#,
    );
    assert!(m.contains("No device with id eth0"), "{m}");
    let m = fault(
        &vmm,
        "PATCH",
        "/drives/rootfs",
        r#"{"drive_id": "rootfs", "is_read_only": true}"#,
    );
    assert!(m.contains("unknown field"), "{m}");
    assert_eq!(get(&vmm, "/")["state"], "Running");
    assert_eq!(
        get(&vmm, "/vm/config")["drives"][0]["path_on_host"],
        json!(bigger)
    );
}

#[test]
fn expect_100_continue_is_answered_before_the_body_is_sent() {
    use std::io::{Read, Write};
    // Needs no KVM: the API serves configuration before any VM exists.
    let vmm = Vmm::with_api();
    let body = r#"{"vcpu_count": 2, "mem_size_mib": 64}"#;
    let mut s = std::os::unix::net::UnixStream::connect(vmm.sock()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(
        s,
        "PUT /machine-config HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .unwrap();
    let mut interim = [0u8; 25];
    s.read_exact(&mut interim).unwrap();
    assert_eq!(&interim, b"HTTP/1.1 100 Continue\r\n\r\n");
    s.write_all(body.as_bytes()).unwrap();
    let mut resp = [0u8; 12];
    s.read_exact(&mut resp).unwrap();
    assert_eq!(&resp, b"HTTP/1.1 204");
    assert_eq!(get(&vmm, "/machine-config")["vcpu_count"], 2);
}

/// The keys of a JSON object, sorted.
fn keys(v: &Value) -> Vec<&str> {
    let mut k: Vec<&str> = v
        .as_object()
        .unwrap_or_else(|| panic!("not an object: {v}"))
        .keys()
        .map(String::as_str)
        .collect();
    k.sort_unstable();
    k
}

/// A PUT or PATCH that Firecracker answers 204 with no body.
fn no_content(vmm: &Vmm, method: &str, path: &str, body: Value) {
    let (status, resp) = vmm.api(method, path, Some(&body.to_string()));
    assert_eq!((status, resp.as_str()), (204, ""), "{method} {path} {body}");
}

/// A request Firecracker refuses: 400 with a body that is exactly `{"fault_message": "..."}`.
fn error_body(vmm: &Vmm, method: &str, path: &str, body: &str) {
    let (status, resp) = vmm.api(method, path, Some(body));
    assert_eq!(status, 400, "{method} {path} {body}: {resp}");
    let v: Value = serde_json::from_str(&resp).expect("a JSON error body");
    assert_eq!(keys(&v), ["fault_message"], "{resp}");
    assert!(!v["fault_message"].as_str().unwrap().is_empty(), "{resp}");
}

/// Every endpoint the issue lists, in the order a Firecracker client uses them: each success
/// is Firecracker's status (204 with no body for PUT/PATCH, 200 with JSON for GET) and each GET
/// carries Firecracker's field names; each error is a 400 whose body is exactly
/// `{"fault_message": "..."}`.
#[test]
fn every_listed_endpoint_answers_with_firecrackers_status_codes_and_field_names() {
    if !kvm_available() {
        return;
    }
    let kernel = guest("waiter");
    let mut vmm = Vmm::with_api();
    let disk = vmm.dir.path().join("disk.img");
    std::fs::write(&disk, vec![0u8; 8192]).unwrap();
    let log = vmm.dir.path().join("fc.log");
    let metrics = vmm.dir.path().join("fc.metrics");
    // GET / (InstanceInfo) and GET /version.
    let info = get(&vmm, "/");
    assert_eq!(keys(&info), ["app_name", "id", "state", "vmm_version"]);
    assert_eq!(info["state"], "Not started");
    assert!(info["vmm_version"].is_string() && info["id"].is_string());
    let version = get(&vmm, "/version");
    assert_eq!(keys(&version), ["firecracker_version"]);

    // GET /machine-config before any PUT: Firecracker's defaults and field names.
    let mc = get(&vmm, "/machine-config");
    for field in ["vcpu_count", "mem_size_mib", "smt", "track_dirty_pages"] {
        assert!(mc.get(field).is_some(), "no {field} in {mc}");
    }
    assert_eq!(
        (&mc["vcpu_count"], &mc["mem_size_mib"], &mc["smt"]),
        (&json!(1), &json!(128), &json!(false))
    );

    no_content(
        &vmm,
        "PUT",
        "/logger",
        json!({"log_path": log, "level": "Warning", "show_level": true, "show_log_origin": false}),
    );
    no_content(&vmm, "PUT", "/metrics", json!({"metrics_path": metrics}));
    no_content(
        &vmm,
        "PUT",
        "/boot-source",
        json!({"kernel_image_path": kernel, "boot_args": "console=ttyS0 reboot=k"}),
    );
    no_content(
        &vmm,
        "PUT",
        "/machine-config",
        json!({"vcpu_count": 2, "mem_size_mib": 64, "smt": false, "track_dirty_pages": false}),
    );
    no_content(&vmm, "PATCH", "/machine-config", json!({"vcpu_count": 1}));
    no_content(
        &vmm,
        "PUT",
        "/drives/rootfs",
        json!({
            "drive_id": "rootfs", "path_on_host": disk, "is_root_device": true,
            "is_read_only": false,
            "rate_limiter": {"bandwidth": {"size": 1_048_576, "one_time_burst": 4096, "refill_time": 100}},
        }),
    );
    // A second PUT of the same id replaces the drive, as in Firecracker.
    no_content(
        &vmm,
        "PUT",
        "/drives/rootfs",
        json!({"drive_id": "rootfs", "path_on_host": disk, "is_root_device": true, "is_read_only": true}),
    );
    error_body(&vmm, "PUT", "/drives/rootfs", r#"{"drive_id": "rootfs"}"#);
    // Missing files and sockets are refused when configured, not at start.
    for bad in [
        json!({"drive_id": "data", "path_on_host": "/nonexistent/disk", "is_root_device": false}),
        json!({"drive_id": "data", "socket": disk, "is_root_device": false}),
        json!({"drive_id": "data", "path_on_host": disk, "socket": disk, "is_root_device": false}),
        json!({"drive_id": "data", "path_on_host": disk, "is_root_device": false, "io_engine": "Turbo"}),
    ] {
        error_body(&vmm, "PUT", "/drives/data", &bad.to_string());
    }
    error_body(&vmm, "PATCH", "/machine-config", r#"{"vcpu_count": 0}"#);
    error_body(&vmm, "PATCH", "/vm", r#"{"state": "Resumed"}"#);
    error_body(
        &vmm,
        "PUT",
        "/actions",
        r#"{"action_type": "SendCtrlAltDel"}"#,
    );
    error_body(&vmm, "PUT", "/mmds", "{}");

    // GET /vm/config: the whole document under Firecracker's section names.
    let cfg = get(&vmm, "/vm/config");
    for section in [
        "boot-source",
        "machine-config",
        "drives",
        "network-interfaces",
        "logger",
        "metrics",
    ] {
        assert!(cfg.get(section).is_some(), "no {section} in {cfg}");
    }
    assert_eq!(cfg["boot-source"]["boot_args"], "console=ttyS0 reboot=k");
    assert_eq!(cfg["machine-config"]["vcpu_count"], 1);
    assert_eq!(cfg["machine-config"]["mem_size_mib"], 64);
    assert_eq!(cfg["drives"].as_array().unwrap().len(), 1, "{cfg}");
    assert_eq!(cfg["drives"][0]["drive_id"], "rootfs");
    assert_eq!(cfg["drives"][0]["is_read_only"], true);
    assert_eq!(cfg["network-interfaces"], json!([]));
    assert_eq!(cfg["metrics"]["metrics_path"], json!(metrics));
    assert_eq!(cfg["logger"]["level"], "Warning");

    no_content(
        &vmm,
        "PUT",
        "/actions",
        json!({"action_type": "InstanceStart"}),
    );
    vmm.wait_serial("ready\n", Duration::from_secs(20));
    assert_eq!(get(&vmm, "/")["state"], "Running");
    no_content(&vmm, "PATCH", "/vm", json!({"state": "Paused"}));
    assert_eq!(get(&vmm, "/")["state"], "Paused");
    no_content(&vmm, "PATCH", "/vm", json!({"state": "Resumed"}));
    assert_eq!(get(&vmm, "/")["state"], "Running");
    no_content(
        &vmm,
        "PATCH",
        "/drives/rootfs",
        json!({"drive_id": "rootfs", "rate_limiter": {"ops": {"size": 10, "refill_time": 10}}}),
    );
    no_content(
        &vmm,
        "PUT",
        "/actions",
        json!({"action_type": "FlushMetrics"}),
    );
    let flushed = std::fs::read_to_string(&metrics).unwrap();
    assert!(
        serde_json::from_str::<Value>(flushed.lines().last().unwrap()).is_ok(),
        "{flushed}"
    );
    // What may only happen before the start is refused after it, with a fault message.
    error_body(
        &vmm,
        "PUT",
        "/boot-source",
        &json!({"kernel_image_path": kernel}).to_string(),
    );
    error_body(
        &vmm,
        "PUT",
        "/drives/data",
        &json!({"drive_id": "data", "path_on_host": disk, "is_root_device": false}).to_string(),
    );
    error_body(&vmm, "PATCH", "/vm", r#"{"state": "Frozen"}"#);
    error_body(
        &vmm,
        "PUT",
        "/actions",
        r#"{"action_type": "InstanceStart"}"#,
    );
    assert_eq!(get(&vmm, "/")["state"], "Running");

    no_content(
        &vmm,
        "PUT",
        "/actions",
        json!({"action_type": "SendCtrlAltDel"}),
    );
    assert_eq!(vmm.wait_exit(Duration::from_secs(20)).code(), Some(0));
}
