//! Shared test helpers: building guests, running the `vmm` binary, talking HTTP to its API.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// Builds test guest `name` (cached in the target's test scratch directory).
pub fn guest(name: &str) -> PathBuf {
    let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("guests");
    vmm::testkit::build_guest(name, &out).unwrap_or_else(|e| panic!("{e}"))
}

/// Skips (or fails under CI) without root and KVM.
pub fn kvm_available() -> bool {
    caps::require_all(&[caps::Capability::Root, caps::Capability::Kvm])
}

/// A `vmm` process with its own scratch directory; killed and cleaned up on drop.
pub struct Vmm {
    child: Option<Child>,
    /// Scratch directory (socket, serial file, configs).
    pub dir: tempfile::TempDir,
}

impl Vmm {
    /// The API socket path.
    pub fn sock(&self) -> PathBuf {
        self.dir.path().join("api.sock")
    }

    /// The serial output file.
    pub fn serial_path(&self) -> PathBuf {
        self.dir.path().join("serial.out")
    }

    /// The log file.
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("vmm.log")
    }

    /// Starts `vmm` with `args` (the socket, serial and log options are added).
    pub fn spawn(dir: tempfile::TempDir, args: &[&str]) -> Vmm {
        Vmm::spawn_with_stdin(dir, args, Stdio::null())
    }

    /// Like [`Vmm::spawn`], with the given stdin (the guest's serial input).
    pub fn spawn_with_stdin(dir: tempfile::TempDir, args: &[&str], stdin: Stdio) -> Vmm {
        let mut vmm = Vmm { child: None, dir };
        let child = Command::new(env!("CARGO_BIN_EXE_vmm"))
            .arg("--api-sock")
            .arg(vmm.sock())
            .arg("--serial-out")
            .arg(vmm.serial_path())
            .arg("--log-path")
            .arg(vmm.log_path())
            .args(["--level", "info"])
            .args(args)
            .stdin(stdin)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn vmm");
        vmm.child = Some(child);
        vmm
    }

    /// Starts `vmm` serving its API and waits until the socket accepts.
    pub fn with_api() -> Vmm {
        let vmm = Vmm::spawn(tempfile::tempdir().unwrap(), &[]);
        let deadline = Instant::now() + Duration::from_secs(10);
        while UnixStream::connect(vmm.sock()).is_err() {
            assert!(Instant::now() < deadline, "api socket never came up");
            std::thread::sleep(Duration::from_millis(5));
        }
        vmm
    }

    /// Boots `config` (a Firecracker JSON document) with `--no-api`.
    pub fn from_config(config: &serde_json::Value) -> Vmm {
        Vmm::from_config_with(config, &[])
    }

    /// Boots `config` with `--no-api` and `extra` flags.
    pub fn from_config_with(config: &serde_json::Value, extra: &[&str]) -> Vmm {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vm.json");
        std::fs::write(&path, config.to_string()).unwrap();
        let path = path.to_str().unwrap().to_string();
        let mut args = vec!["--config-file", &path, "--no-api"];
        args.extend_from_slice(extra);
        Vmm::spawn(dir, &args)
    }

    /// What the guest has written to its serial port so far.
    pub fn serial(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(self.serial_path()).unwrap_or_default()).into()
    }

    /// The log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Waits until the serial output contains `needle`.
    pub fn wait_serial(&mut self, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let s = self.serial();
            if s.contains(needle) {
                return s;
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!(
                    "vmm exited ({status}) before {needle:?}; serial: {s:?}; log: {}",
                    self.log()
                );
            }
            assert!(Instant::now() < deadline, "no {needle:?} in serial: {s:?}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Waits for the process to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        let child = self.child.as_mut().unwrap();
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!(
                    "vmm did not exit within {timeout:?}; serial: {:?}; log: {}",
                    self.serial(),
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// The child's stdin, if it was piped.
    pub fn stdin(&mut self) -> Option<&mut std::process::ChildStdin> {
        self.child.as_mut().unwrap().stdin.as_mut()
    }

    /// Asserts the VMM's own memory (resident, minus guest RAM which is shared memfd memory)
    /// stays under 5 MiB of private anonymous memory, Firecracker's overhead promise.
    pub fn assert_memory_overhead(&self) {
        let pid = self.child.as_ref().unwrap().id();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let kib = |name: &str| -> u64 {
            status
                .lines()
                .find(|l| l.starts_with(name))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("no {name} in {status}"))
        };
        let anon = kib("RssAnon:");
        assert!(anon < 5 * 1024, "vmm private memory {anon} KiB >= 5 MiB");
    }

    /// Whether the process is still running.
    pub fn alive(&mut self) -> bool {
        self.child.as_mut().unwrap().try_wait().unwrap().is_none()
    }

    /// Sends one HTTP request on a fresh connection; returns status and body.
    pub fn api(&self, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
        http(&self.sock(), method, path, body)
    }
}

impl Drop for Vmm {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// One HTTP/1.1 request over a Unix socket (`Connection: close`); returns status and body.
pub fn http(sock: &Path, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
    let mut s = UnixStream::connect(sock).expect("connect api socket");
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let body = body.unwrap_or("");
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nAccept: application/json\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).expect("read response");
    let status = resp
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("bad response {resp:?}"));
    let body = resp
        .split_once("\r\n\r\n")
        .map(|x| x.1)
        .unwrap_or("")
        .to_string();
    (status, body)
}

/// Builds test guest `name` as a bzImage.
pub fn bzimage(name: &str) -> PathBuf {
    let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("guests");
    vmm::testkit::build_bzimage(name, &out).unwrap_or_else(|e| panic!("{e}"))
}
