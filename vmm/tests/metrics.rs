//! `GET /metrics` on the API socket, checked with the Prometheus text parser: the counters
//! of a test guest's exits and virtio-blk requests are exactly what the guest did.

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;

fn put(vmm: &Vmm, path: &str, body: serde_json::Value) {
    let (status, resp) = vmm.api("PUT", path, Some(&body.to_string()));
    assert_eq!(status, 204, "{path}: {resp}");
}

fn scrape(vmm: &Vmm) -> caps::prom::Scrape {
    let (status, text) = vmm.api("GET", "/metrics", None);
    assert_eq!(status, 200, "{text}");
    caps::prom::must_scrape("vmm", &text)
}

#[test]
fn exits_are_counted_exactly_by_kind() {
    if !kvm_available() {
        return;
    }
    let mut vmm = Vmm::with_api();
    put(
        &vmm,
        "/machine-config",
        json!({"vcpu_count": 1, "mem_size_mib": 32}),
    );
    put(
        &vmm,
        "/boot-source",
        json!({"kernel_image_path": guest("metered")}),
    );
    let before = scrape(&vmm);
    assert!(
        !before.has("ferrostack_vmm_vcpu_exits_total"),
        "no vCPU exists before the start"
    );
    put(&vmm, "/actions", json!({"action_type": "InstanceStart"}));
    vmm.wait_serial("done\n", Duration::from_secs(30));
    let m = scrape(&vmm);
    let exits = |kind| {
        m.get(
            "ferrostack_vmm_vcpu_exits_total",
            &[("vcpu", "0"), ("kind", kind)],
        )
    };
    // The guest's loops (see tests/guests/metered.rs), plus `done\n` on the serial port and
    // the boot-time write.
    assert_eq!(exits("io_out"), 1000.0 + 5.0);
    assert_eq!(exits("io_in"), 500.0);
    assert_eq!(exits("mmio_read"), 200.0);
    assert_eq!(exits("mmio_write"), 100.0 + 1.0);
    for kind in [
        "hlt",
        "shutdown",
        "system_event",
        "fail_entry",
        "internal_error",
        "other",
    ] {
        assert_eq!(exits(kind), 0.0, "{kind}");
    }
    assert_eq!(
        m.get(
            "ferrostack_vmm_vcpu_unhandled_accesses_total",
            &[("vcpu", "0")]
        ),
        1800.0
    );
    assert_eq!(m.get("ferrostack_vmm_serial_output_bytes_total", &[]), 5.0);
    assert!(m.get("ferrostack_vmm_vcpu_cpu_seconds_total", &[("vcpu", "0")]) > 0.0);
    assert!(m.get("ferrostack_vmm_boot_time_seconds", &[]) > 0.0);
    // The API counts every request it answered, including the scrapes.
    assert!(m.get("ferrostack_vmm_api_requests_total", &[]) >= 5.0);
    // The guest is halted inside KVM: nothing moves between two scrapes.
    let again = scrape(&vmm);
    assert_eq!(
        again.sum("ferrostack_vmm_vcpu_exits_total", &[("kind", "io_out")]),
        1005.0
    );
}

#[test]
fn block_requests_bytes_and_errors_are_counted_per_drive() {
    if !kvm_available() {
        return;
    }
    let mut vmm = Vmm::with_api();
    let disk = vmm.dir.path().join("disk.img");
    std::fs::write(&disk, vec![7u8; 64 * 1024]).unwrap();
    put(
        &vmm,
        "/machine-config",
        json!({"vcpu_count": 1, "mem_size_mib": 32}),
    );
    put(
        &vmm,
        "/boot-source",
        json!({"kernel_image_path": guest("blk"), "boot_args": "console=ttyS0 halt"}),
    );
    put(
        &vmm,
        "/drives/rootfs",
        json!({"drive_id": "rootfs", "path_on_host": disk, "is_root_device": true, "is_read_only": false}),
    );
    put(&vmm, "/actions", json!({"action_type": "InstanceStart"}));
    let serial = vmm.wait_serial("done\n", Duration::from_secs(30));
    assert!(serial.contains("oob_status=1\n"), "{serial}");
    let m = scrape(&vmm);
    let req = |op| {
        m.get(
            "ferrostack_vmm_block_requests_total",
            &[("drive", "rootfs"), ("op", op)],
        )
    };
    let bytes = |op| {
        m.get(
            "ferrostack_vmm_block_bytes_total",
            &[("drive", "rootfs"), ("op", op)],
        )
    };
    // tests/guests/blk.rs: read 4 KiB, write 4 KiB, flush, read 4 KiB back, and one read
    // past the end that fails.
    assert_eq!(req("read"), 3.0);
    assert_eq!(req("write"), 1.0);
    assert_eq!(req("flush"), 1.0);
    assert_eq!(req("other"), 0.0);
    assert_eq!(bytes("read"), 8192.0);
    assert_eq!(bytes("write"), 4096.0);
    let drive = [("drive", "rootfs")];
    assert_eq!(m.get("ferrostack_vmm_block_errors_total", &drive), 1.0);
    assert_eq!(m.get("ferrostack_vmm_block_throttled_total", &drive), 0.0);
    assert_eq!(
        m.get("ferrostack_vmm_block_latency_seconds_count", &drive),
        5.0
    );
    assert!(m.get("ferrostack_vmm_block_latency_seconds_sum", &drive) > 0.0);
    // Each request is one notify write to the device's MMIO registers, among others.
    assert!(
        m.get(
            "ferrostack_vmm_vcpu_exits_total",
            &[("vcpu", "0"), ("kind", "mmio_write")]
        ) >= 5.0
    );
}

/// A tap created for one test (no IPv6 chatter towards the guest), deleted on drop.
struct TapGuard(String);

impl TapGuard {
    fn create() -> TapGuard {
        let name = format!("fsmt{}", std::process::id() % 100_000);
        let ip = |args: &[&str]| {
            let ok = std::process::Command::new("ip")
                .args(args)
                .status()
                .unwrap()
                .success();
            assert!(ok, "ip {args:?}");
        };
        ip(&["tuntap", "add", "dev", &name, "mode", "tap"]);
        let guard = TapGuard(name.clone());
        let _ = std::fs::write(format!("/proc/sys/net/ipv6/conf/{name}/disable_ipv6"), "1");
        ip(&["link", "set", &name, "up"]);
        guard
    }
}

impl Drop for TapGuard {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip")
            .args(["link", "del", &self.0])
            .status();
    }
}

#[test]
fn net_frames_and_bytes_are_counted_per_interface() {
    if !kvm_available() {
        return;
    }
    let tap = TapGuard::create();
    let vmm = Vmm::with_api();
    put(
        &vmm,
        "/machine-config",
        json!({"vcpu_count": 1, "mem_size_mib": 32}),
    );
    put(
        &vmm,
        "/boot-source",
        json!({"kernel_image_path": guest("net")}),
    );
    put(
        &vmm,
        "/network-interfaces/eth0",
        json!({"iface_id": "eth0", "host_dev_name": tap.0, "guest_mac": "06:00:ac:10:00:02"}),
    );
    let before = scrape(&vmm);
    let l = |dir| [("iface", "eth0"), ("direction", dir)];
    assert_eq!(before.sum("ferrostack_vmm_net_frames_total", &l("tx")), 0.0);
    put(&vmm, "/actions", json!({"action_type": "InstanceStart"}));
    let mut vmm = vmm;
    vmm.wait_serial("sent\n", Duration::from_secs(30));
    let m = scrape(&vmm);
    // tests/guests/net.rs sends one 60-byte frame behind the 12-byte virtio-net header,
    // then waits for a reply this test never sends.
    assert_eq!(m.get("ferrostack_vmm_net_frames_total", &l("tx")), 1.0);
    assert_eq!(m.get("ferrostack_vmm_net_bytes_total", &l("tx")), 72.0);
    assert_eq!(m.get("ferrostack_vmm_net_throttled_total", &l("tx")), 0.0);
    assert_eq!(
        m.get("ferrostack_vmm_net_errors_total", &[("iface", "eth0")]),
        0.0
    );
}
