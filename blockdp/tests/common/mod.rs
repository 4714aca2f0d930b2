//! Test support: the blockdp daemon as a child process, and a small HTTP client for its
//! Unix-socket API.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// A running daemon; killed (SIGKILL) when dropped.
pub struct Daemon {
    child: Option<Child>,
    /// Data directory.
    pub data_dir: PathBuf,
    /// API socket.
    pub api: PathBuf,
}

impl Daemon {
    /// Starts `blockdp` on `data_dir` and waits for its API to answer.
    pub fn start(data_dir: &Path) -> Daemon {
        Self::start_with(data_dir, &[])
    }

    /// Starts `blockdp` with extra environment variables.
    pub fn start_env(data_dir: &Path, env: &[(&str, &str)]) -> Daemon {
        Self::spawn(data_dir, &[], env)
    }

    /// Starts `blockdp` with extra flags.
    pub fn start_with(data_dir: &Path, extra: &[&str]) -> Daemon {
        Self::spawn(data_dir, extra, &[])
    }

    fn spawn(data_dir: &Path, extra: &[&str], env: &[(&str, &str)]) -> Daemon {
        let api = data_dir.join("api.sock");
        let _ = std::fs::remove_file(&api);
        let child = Command::new(env!("CARGO_BIN_EXE_blockdp"))
            .arg("--data-dir")
            .arg(data_dir)
            .arg("--api-socket")
            .arg(&api)
            .args(["--poll-us", "20"])
            .args(extra)
            .envs(env.iter().copied())
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn blockdp");
        let d = Daemon {
            child: Some(child),
            data_dir: data_dir.to_path_buf(),
            api,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if UnixStream::connect(&d.api).is_ok() {
                break;
            }
            assert!(Instant::now() < deadline, "blockdp did not start listening");
            std::thread::sleep(Duration::from_millis(10));
        }
        d
    }

    /// Sends one request; returns the status and the body (JSON when it parses).
    pub fn http(&self, method: &str, path: &str, body: Option<&str>) -> (u16, Value) {
        let (status, text) = self.http_raw(method, path, body.unwrap_or("").as_bytes());
        let v = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (status, v)
    }

    /// Sends one request with raw body bytes; returns the status and body text.
    pub fn http_raw(&self, method: &str, path: &str, body: &[u8]) -> (u16, String) {
        let mut s = UnixStream::connect(&self.api).expect("connect API");
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: blockdp\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        s.write_all(head.as_bytes()).unwrap();
        s.write_all(body).unwrap();
        let mut resp = Vec::new();
        s.read_to_end(&mut resp).unwrap();
        let resp = String::from_utf8_lossy(&resp).into_owned();
        let (head, body) = resp.split_once("\r\n\r\n").expect("HTTP response");
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .expect("status");
        (status, body.to_string())
    }

    /// The daemon's process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// CPU time (user + system) the daemon has used so far, from `/proc/<pid>/stat`.
    pub fn cpu_time(&self) -> Duration {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid())).expect("stat");
        // The command name may hold spaces: the fields we want follow its closing paren.
        let rest = &stat[stat.rfind(')').expect("comm") + 2..];
        let f: Vec<&str> = rest.split_whitespace().collect();
        // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
        let ticks: u64 = f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
        Duration::from_micros(ticks * 1_000_000 / hz)
    }

    /// SIGKILL, no goodbye.
    pub fn kill9(mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait for a clean exit; returns the exit status code.
    pub fn terminate(mut self) -> Option<i32> {
        let mut c = self.child.take()?;
        // SAFETY: sending a signal to our own child process, whose pid is valid until waited.
        unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
        c.wait().ok()?.code()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A directory on a real filesystem under the target dir (O_DIRECT, hole punching).
pub fn real_tempdir() -> tempfile::TempDir {
    let base = Path::new(env!("CARGO_TARGET_TMPDIR"));
    std::fs::create_dir_all(base).unwrap();
    tempfile::Builder::new()
        .prefix("bd")
        .tempdir_in(base)
        .unwrap()
}

/// Bytes with a position-dependent pattern.
pub fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}
