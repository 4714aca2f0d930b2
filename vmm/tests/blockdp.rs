//! The whole storage path: a test guest's own virtio driver, our VMM's vhost-user-blk
//! frontend, and blockdp's backend serving a volume file with io_uring.

mod common;

use std::sync::Arc;
use std::time::Duration;

use blockdp::vhost::backend::{BlockBackend, VolumeIo};
use blockdp::vhost::export::Export;
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

/// The bytes the `blk` guest writes at sector 8 (as in block.rs).
fn pattern() -> Vec<u8> {
    (0..4096usize)
        .map(|i| (i as u8).wrapping_mul(7).wrapping_add(5))
        .collect()
}

#[test]
fn a_guest_drive_served_by_blockdp() {
    if !kvm_available() || !caps::require(caps::Capability::IoUring) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("volume.img");
    let sock = dir.path().join("volume.sock");
    let image: Vec<u8> = (0..64 * 1024usize)
        .map(|i| (i.wrapping_mul(13) ^ (i >> 7)) as u8)
        .collect();
    std::fs::write(&disk, &image).unwrap();

    let io = VolumeIo::open(&disk, "vm-volume", false, 1, Duration::from_micros(20)).unwrap();
    let stats = io.stats.clone();
    let backend = Arc::new(BlockBackend::new(Arc::new(io)).unwrap());
    let export = Export::start("vm-volume", &sock, backend).unwrap();

    let mut vmm = Vmm::from_config(&json!({
        "boot-source": {"kernel_image_path": guest("blk")},
        "machine-config": {"vcpu_count": 1, "mem_size_mib": 32},
        "drives": [{"drive_id": "vol", "socket": sock, "is_root_device": true}],
    }));
    let status = vmm.wait_exit(Duration::from_secs(30));
    let serial = vmm.serial();
    assert_eq!(status.code(), Some(0), "{serial}\n{}", vmm.log());
    for line in [
        "capacity=128\n".to_string(),
        "read_status=0\n".into(),
        format!("read_fnv={:016x}\n", fnv1a(&image[..4096])),
        "write_status=0\n".into(),
        format!("readback_fnv={:016x}\n", fnv1a(&pattern())),
    ] {
        assert!(serial.contains(&line), "no {line:?} in {serial:?}");
    }
    export.stop();
    let after = std::fs::read(&disk).unwrap();
    assert_eq!(
        &after[4096..8192],
        &pattern()[..],
        "blockdp wrote the guest's data"
    );
    assert_eq!(&after[8192..], &image[8192..], "nothing else changed");
    assert!(
        stats.queues[0].writes() >= 1 && stats.queues[0].reads() >= 2,
        "blockdp counted the I/O"
    );
}

/// A guest that resets its virtio-blk device and initialises its driver again with rings at
/// new addresses (as after a reboot), then a guest reset and a new VMM on the same export:
/// the frontend must hand the backend the new rings each time, and the disk must keep
/// working.
#[test]
fn a_blockdp_drive_works_after_a_driver_reset_and_a_vmm_restart() {
    if !kvm_available() || !caps::require(caps::Capability::IoUring) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("volume.img");
    let sock = dir.path().join("volume.sock");
    let image: Vec<u8> = (0..64 * 1024usize)
        .map(|i| (i.wrapping_mul(31) ^ (i >> 9)) as u8)
        .collect();
    std::fs::write(&disk, &image).unwrap();
    let io = VolumeIo::open(&disk, "vm-volume", false, 1, Duration::from_micros(20)).unwrap();
    let stats = io.stats.clone();
    let backend = Arc::new(BlockBackend::new(Arc::new(io)).unwrap());
    let export = Export::start("vm-volume", &sock, backend).unwrap();

    let mut reads_before = 0;
    for boot in 0..2 {
        let mut vmm = Vmm::from_config(&json!({
            "boot-source": {"kernel_image_path": guest("blk"), "boot_args": "reinit"},
            "machine-config": {"vcpu_count": 1, "mem_size_mib": 32},
            "drives": [{"drive_id": "vol", "socket": sock, "is_root_device": true}],
        }));
        // The guest resets the machine when it is done: the VMM exits 0.
        let status = vmm.wait_exit(Duration::from_secs(60));
        let serial = vmm.serial();
        assert_eq!(
            status.code(),
            Some(0),
            "boot {boot}: {serial}\n{}",
            vmm.log()
        );
        for line in [
            format!("read_fnv={:016x}\n", fnv1a(&image[..4096])),
            "write_status=0\n".to_string(),
            format!("readback_fnv={:016x}\n", fnv1a(&pattern())),
            "reinit_status=0\n".into(),
            format!("reinit_fnv={:016x}\n", fnv1a(&pattern())),
            "done\n".into(),
        ] {
            assert!(
                serial.contains(&line),
                "boot {boot}: no {line:?} in {serial:?}\n{}",
                vmm.log()
            );
        }
        // Each boot reads sector 0, sector 8, then sector 8 again after the reset (the
        // out-of-range read is refused before it reaches the volume).
        let reads = stats.queues[0].reads();
        assert!(
            reads >= reads_before + 3,
            "boot {boot}: blockdp served {} reads",
            reads - reads_before
        );
        reads_before = reads;
    }
    export.stop();
    let after = std::fs::read(&disk).unwrap();
    assert_eq!(&after[4096..8192], &pattern()[..]);
    assert_eq!(&after[8192..], &image[8192..], "nothing else changed");
}
