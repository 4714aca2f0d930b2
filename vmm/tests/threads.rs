//! The VMM embedded in a process (as these tests and any library user do): every thread a VM
//! starts (vCPUs, virtio notification servers, rate-limit timers, tap pollers) is joined when
//! the machine is dropped, and the vhost-user frontend lets go of its backend.

mod common;

use std::io::Write;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use blockdp::vhost::backend::{BlockBackend, VolumeIo};
use blockdp::vhost::export::Export;
use common::{guest, kvm_available};
use vmm::machine::{DriveSpec, Machine, NetSpec, VmSpec};

/// Names of this process's threads.
fn thread_names() -> Vec<String> {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|e| std::fs::read_to_string(e.ok()?.path().join("comm")).ok())
        .map(|n| n.trim_end().to_string())
        .collect()
}

/// Threads a VM starts (their names, as `machine` and `devices::virtio` give them).
fn vm_threads() -> Vec<String> {
    thread_names()
        .into_iter()
        .filter(|n| n.starts_with("fc_vcpu") || n.starts_with("virtio-") || n == "fc_serial_in")
        .collect()
}

#[derive(Clone, Default)]
struct Serial(Arc<Mutex<Vec<u8>>>);

impl Write for Serial {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

struct TapGuard(String);

impl Drop for TapGuard {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["link", "del", &self.0]).status();
    }
}

#[test]
fn dropping_a_machine_joins_every_thread_it_started() {
    if !kvm_available() || !caps::require(caps::Capability::IoUring) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let volume = dir.path().join("volume.img");
    let local = dir.path().join("local.img");
    let sock = dir.path().join("volume.sock");
    std::fs::write(&volume, vec![0x5au8; 64 * 1024]).unwrap();
    std::fs::write(&local, vec![0u8; 64 * 1024]).unwrap();
    let io = VolumeIo::open(&volume, "vm-volume", false, 1, Duration::from_micros(20)).unwrap();
    let backend = Arc::new(BlockBackend::new(Arc::new(io)).unwrap());
    let export = Export::start("vm-volume", &sock, backend).unwrap();
    let tap = TapGuard(format!("fsth{}", std::process::id() % 100_000));
    let ok = Command::new("ip")
        .args(["tuntap", "add", "dev", &tap.0, "mode", "tap"])
        .status()
        .unwrap()
        .success();
    assert!(ok, "ip tuntap add {}", tap.0);
    let kernel = guest("blk");

    let baseline = thread_names().len();
    assert_eq!(vm_threads(), Vec::<String>::new(), "no VM yet");
    let drive = |id: &str, path: &std::path::Path, socket: Option<&std::path::Path>| DriveSpec {
        id: id.into(),
        path: path.into(),
        read_only: false,
        rate_limiter: None,
        socket: socket.map(Into::into),
        io_uring: false,
    };
    let spec = VmSpec {
        vcpus: 2,
        mem_mib: 32,
        template: Default::default(),
        kernel,
        initrd: None,
        // The guest halts once done, so the machine is still running when it is dropped.
        boot_args: "halt".into(),
        // The first drive is the one the guest's driver uses: the blockdp volume.
        drives: vec![
            drive("vol", &volume, Some(&sock)),
            drive("local", &local, None),
        ],
        nets: vec![NetSpec {
            id: "eth0".into(),
            tap: tap.0.clone(),
            mac: None,
            rx_rate_limiter: None,
            tx_rate_limiter: None,
            queue_pairs: 1,
        }],
        protocol: Default::default(),
        serial_stdin: false,
    };
    for round in 0..2 {
        let serial = Serial::default();
        let (tx, _rx) = std::sync::mpsc::channel();
        let machine = Machine::start(&spec, Box::new(serial.clone()), tx).unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let out = String::from_utf8_lossy(&serial.0.lock().unwrap()).into_owned();
            if out.contains("done\n") {
                assert!(out.contains("readback_status=0\n"), "round {round}: {out}");
                break;
            }
            assert!(
                Instant::now() < deadline,
                "round {round}: guest never finished: {out}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        let mut running = vm_threads();
        running.sort();
        // 2 vCPUs; the local drive's notifier and retry timer; the interface's notifier,
        // retry timer and tap poller; none for the vhost-user drive (blockdp serves it).
        assert_eq!(
            running,
            [
                "fc_vcpu 0",
                "fc_vcpu 1",
                "virtio-eth0",
                "virtio-eth0-rl",
                "virtio-eth0-rx0",
                "virtio-local",
                "virtio-local-rl",
            ],
            "round {round}"
        );
        assert_eq!(machine.worker_threads(), 5, "round {round}");
        drop(machine);
        // Joined by the drop: gone at once, not eventually.
        assert_eq!(
            vm_threads(),
            Vec::<String>::new(),
            "round {round}: left running"
        );
        // blockdp's own threads for the connection end once the frontend hung up.
        let deadline = Instant::now() + Duration::from_secs(30);
        while thread_names().len() != baseline {
            assert!(
                Instant::now() < deadline,
                "round {round}: {} threads, {baseline} before the VM: {:?}",
                thread_names().len(),
                thread_names()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    export.stop();
}
