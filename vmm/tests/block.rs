//! virtio-blk on a local file, exercised by a guest with its own polling virtio-mmio driver:
//! the guest's checksums and the file's bytes on the host must agree.

mod common;

use std::time::Duration;

use common::{Vmm, guest, kvm_available};
use serde_json::json;

fn fnv1a(data: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in data {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

fn disk_image(len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i.wrapping_mul(31) ^ (i >> 9)) as u8)
        .collect()
}

fn pattern() -> Vec<u8> {
    (0..4096usize)
        .map(|i| (i as u8).wrapping_mul(7).wrapping_add(5))
        .collect()
}

#[test]
fn guest_reads_and_writes_a_drive_attached_through_the_api() {
    if !kvm_available() {
        return;
    }
    let kernel = guest("blk");
    let mut vmm = Vmm::with_api();
    let disk = vmm.dir.path().join("disk.img");
    let image = disk_image(64 * 1024);
    std::fs::write(&disk, &image).unwrap();
    let put = |path: &str, body: serde_json::Value| {
        let (status, resp) = vmm.api("PUT", path, Some(&body.to_string()));
        assert_eq!(status, 204, "{path}: {resp}");
    };
    put(
        "/machine-config",
        json!({"vcpu_count": 1, "mem_size_mib": 32}),
    );
    put("/boot-source", json!({"kernel_image_path": kernel}));
    put(
        "/drives/rootfs",
        json!({"drive_id": "rootfs", "path_on_host": disk, "is_root_device": true, "is_read_only": false}),
    );
    put("/actions", json!({"action_type": "InstanceStart"}));
    let status = vmm.wait_exit(Duration::from_secs(30));
    let serial = vmm.serial();
    assert_eq!(status.code(), Some(0), "{serial}\n{}", vmm.log());
    let expect = |line: String| assert!(serial.contains(&line), "no {line:?} in {serial:?}");
    expect("capacity=128\n".into());
    expect("read_status=0\n".into());
    expect(format!("read_fnv={:016x}\n", fnv1a(&image[..4096])));
    expect("write_status=0\n".into());
    expect("flush_status=0\n".into());
    expect(format!("readback_fnv={:016x}\n", fnv1a(&pattern())));
    expect("oob_status=1\n".into());
    let after = std::fs::read(&disk).unwrap();
    assert_eq!(
        &after[4096..8192],
        &pattern()[..],
        "the guest's write is on disk"
    );
    assert_eq!(&after[..4096], &image[..4096]);
    assert_eq!(&after[8192..], &image[8192..], "nothing else changed");
}

#[test]
fn a_read_only_drive_refuses_guest_writes() {
    if !kvm_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("ro.img");
    let image = disk_image(16 * 1024);
    std::fs::write(&disk, &image).unwrap();
    let mut vmm = Vmm::from_config(&json!({
        "boot-source": {"kernel_image_path": guest("blk")},
        "machine-config": {"vcpu_count": 1, "mem_size_mib": 32},
        "drives": [{"drive_id": "ro", "path_on_host": disk, "is_root_device": false, "is_read_only": true}],
    }));
    let status = vmm.wait_exit(Duration::from_secs(30));
    let serial = vmm.serial();
    assert_eq!(status.code(), Some(0), "{serial}");
    assert!(serial.contains("capacity=32\n"), "{serial}");
    assert!(
        serial.contains(&format!("read_fnv={:016x}\n", fnv1a(&image[..4096]))),
        "{serial}"
    );
    assert!(serial.contains("write_status=1\n"), "{serial}");
    assert_eq!(
        std::fs::read(&disk).unwrap(),
        image,
        "a read-only disk is unchanged"
    );
}

#[test]
fn a_bandwidth_limited_drive_is_slowed_to_its_rate_and_still_correct() {
    if !kvm_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("slow.img");
    let image = disk_image(64 * 1024);
    std::fs::write(&disk, &image).unwrap();
    // 4 KiB per 100 ms. The guest moves 12 KiB (read, write, read back) and starts with a
    // full bucket, so it must wait for at least 8 KiB of refill: 200 ms.
    let start = std::time::Instant::now();
    let mut vmm = Vmm::from_config(&json!({
        "boot-source": {"kernel_image_path": guest("blk")},
        "machine-config": {"vcpu_count": 1, "mem_size_mib": 32},
        "drives": [{
            "drive_id": "slow", "path_on_host": disk, "is_root_device": true,
            "rate_limiter": {"bandwidth": {"size": 4096, "refill_time": 100}},
        }],
    }));
    let status = vmm.wait_exit(Duration::from_secs(30));
    let elapsed = start.elapsed();
    let serial = vmm.serial();
    assert_eq!(status.code(), Some(0), "{serial}");
    assert!(
        serial.contains(&format!("readback_fnv={:016x}\n", fnv1a(&pattern()))),
        "{serial}"
    );
    assert!(
        elapsed >= Duration::from_millis(200),
        "rate limit not applied: {elapsed:?}"
    );
    assert!(
        elapsed < Duration::from_secs(5),
        "throttled far below the rate: {elapsed:?}"
    );
}

/// qemu-storage-daemon exporting a file as vhost-user-blk; killed on drop.
struct StorageDaemon(std::process::Child);

impl Drop for StorageDaemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_vhost_user_blk_drive_is_served_by_another_process() {
    if !kvm_available() {
        return;
    }
    if std::process::Command::new("qemu-storage-daemon")
        .arg("--version")
        .output()
        .is_err()
    {
        // The backend comes from Debian's qemu-system-common; blockdp will replace it.
        if std::env::var_os("CI").is_some() {
            panic!("qemu-storage-daemon is not installed");
        }
        eprintln!("SKIP: qemu-storage-daemon is not installed");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("vu.img");
    let sock = dir.path().join("vu.sock");
    let image = disk_image(64 * 1024);
    std::fs::write(&disk, &image).unwrap();
    let _daemon = StorageDaemon(
        std::process::Command::new("qemu-storage-daemon")
            .arg("--blockdev")
            .arg(format!(
                "driver=file,node-name=disk,filename={}",
                disk.display()
            ))
            .arg("--export")
            .arg(format!(
                "type=vhost-user-blk,id=vu,node-name=disk,addr.type=unix,addr.path={},writable=on",
                sock.display()
            ))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start qemu-storage-daemon"),
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !sock.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "backend socket never appeared"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let mut vmm = Vmm::from_config(&json!({
        "boot-source": {"kernel_image_path": guest("blk")},
        "machine-config": {"vcpu_count": 1, "mem_size_mib": 32},
        "drives": [{"drive_id": "vu", "socket": sock, "is_root_device": true}],
    }));
    let status = vmm.wait_exit(Duration::from_secs(30));
    let serial = vmm.serial();
    assert_eq!(status.code(), Some(0), "{serial}\n{}", vmm.log());
    let expect = |line: String| assert!(serial.contains(&line), "no {line:?} in {serial:?}");
    expect("capacity=128\n".into());
    expect("read_status=0\n".into());
    expect(format!("read_fnv={:016x}\n", fnv1a(&image[..4096])));
    expect("write_status=0\n".into());
    expect(format!("readback_fnv={:016x}\n", fnv1a(&pattern())));
    let after = std::fs::read(&disk).unwrap();
    assert_eq!(
        &after[4096..8192],
        &pattern()[..],
        "the backend wrote the guest's data"
    );
}

#[test]
fn the_io_uring_engine_serves_the_same_requests() {
    if !kvm_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("uring.img");
    let image = disk_image(64 * 1024);
    std::fs::write(&disk, &image).unwrap();
    let mut vmm = Vmm::from_config(&json!({
        "boot-source": {"kernel_image_path": guest("blk")},
        "machine-config": {"vcpu_count": 1, "mem_size_mib": 32},
        "drives": [{"drive_id": "rootfs", "path_on_host": disk, "is_root_device": true, "io_engine": "Async"}],
    }));
    let status = vmm.wait_exit(Duration::from_secs(30));
    let serial = vmm.serial();
    assert_eq!(status.code(), Some(0), "{serial}\n{}", vmm.log());
    for line in [
        "capacity=128\n".to_string(),
        format!("read_fnv={:016x}\n", fnv1a(&image[..4096])),
        "write_status=0\n".into(),
        "flush_status=0\n".into(),
        format!("readback_fnv={:016x}\n", fnv1a(&pattern())),
        "oob_status=1\n".into(),
    ] {
        assert!(serial.contains(&line), "no {line:?} in {serial:?}");
    }
    let after = std::fs::read(&disk).unwrap();
    assert_eq!(&after[4096..8192], &pattern()[..]);
    assert_eq!(&after[8192..], &image[8192..]);
}
