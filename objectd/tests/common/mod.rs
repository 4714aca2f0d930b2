//! Shared fixtures: start the real daemon, find real clients, speak raw HTTP.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The TempAuth user of the test config.
pub const USER: &str = "test:tester";
/// Its key.
pub const KEY: &str = "testing";
/// Its S3 access key.
pub const ACCESS_KEY: &str = "AKIDFERROSTACKTEST";
/// Its S3 secret.
pub const SECRET_KEY: &str = "ferrostack-test-secret-key";

/// A running `objectd`, killed (and reaped) on drop, even when the test fails.
pub struct Daemon {
    child: Option<Child>,
    env: Vec<(String, String)>,
    /// Its port on 127.0.0.1.
    pub port: u16,
    /// Temp dir holding config and data.
    pub dir: tempfile::TempDir,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Daemon {
    /// Starts a daemon with a fresh data dir.
    pub fn start() -> Daemon {
        Daemon::start_with("")
    }

    /// Starts a daemon with `extra` config (top-level keys or tables) before the users.
    pub fn start_with(extra: &str) -> Daemon {
        Daemon::start_with_env(extra, &[])
    }

    fn start_with_env(extra: &str, env: &[(&str, &str)]) -> Daemon {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let config = format!(
            "listen = \"127.0.0.1:{port}\"\ndata-dir = \"{}\"\nexpirer-interval-secs = 1\nauditor-interval-secs = 0\n\
             {extra}[[users]]\naccount = \"test\"\nuser = \"tester\"\nkey = \"testing\"\n\
             s3-access-key = \"{ACCESS_KEY}\"\ns3-secret-key = \"{SECRET_KEY}\"\n\
             [[users]]\naccount = \"other\"\nuser = \"bob\"\nkey = \"bobkey\"\n\
             s3-access-key = \"AKIDOTHER\"\ns3-secret-key = \"other-secret\"\n",
            dir.path().join("data").display()
        );
        std::fs::write(dir.path().join("objectd.toml"), config).unwrap();
        let mut d = Daemon {
            child: None,
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            port,
            dir,
        };
        d.spawn();
        d
    }

    /// Starts a daemon with extra environment variables.
    pub fn start_env(env: &[(&str, &str)]) -> Daemon {
        Daemon::start_with_env("", env)
    }

    /// The data directory.
    pub fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn spawn(&mut self) {
        let child = Command::new(env!("CARGO_BIN_EXE_objectd"))
            .arg("--config")
            .arg(self.dir.path().join("objectd.toml"))
            .env("RUST_LOG", "warn")
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("objectd starts");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "objectd did not start listening");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILLs the daemon (no chance to clean up).
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts the daemon again on the same port and data.
    pub fn restart(&mut self) {
        self.kill9();
        self.spawn();
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Logs in with TempAuth; the token.
    pub fn token(&self) -> String {
        let r = http(
            self.port,
            "GET",
            "/auth/v1.0",
            &[("X-Auth-User", USER), ("X-Auth-Key", KEY)],
            b"",
        );
        assert_eq!(r.status, 200);
        r.header("x-auth-token").unwrap().to_owned()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Whether a client program is installed. Missing: prints one `SKIP:` line and returns
/// false, except under `CI=true`, where it panics.
pub fn require_program(name: &str) -> bool {
    let found = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {name}"))
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if found {
        return true;
    }
    if caps::is_ci() {
        panic!("client {name} is missing under CI=true (scripts/setup installs it)");
    }
    println!("SKIP: client {name} is not installed");
    false
}

/// Whether a Python module imports (same policy as [`require_program`]).
pub fn require_python_module(module: &str) -> bool {
    let ok = Command::new("python3")
        .args(["-c", &format!("import {module}")])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if ok {
        return true;
    }
    if caps::is_ci() {
        panic!("python module {module} is missing under CI=true");
    }
    println!("SKIP: python module {module} is not installed");
    false
}

/// Runs a command, panicking with its output unless it succeeds; returns stdout.
pub fn run(cmd: &mut Command) -> String {
    let out = cmd.output().expect("command runs");
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Deterministic pseudo-random bytes.
pub fn data(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// A raw HTTP response.
pub struct Resp {
    /// Status code.
    pub status: u16,
    /// Headers, names lowercased.
    pub headers: Vec<(String, String)>,
    /// Body.
    pub body: Vec<u8>,
}

impl Resp {
    /// A header's value.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// Body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// One request on a fresh connection (`Connection: close`), with `Content-Length`.
pub fn http(port: u16, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Resp {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut req =
        format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    if !headers
        .iter()
        .any(|(k, _)| k.eq_ignore_ascii_case("content-length"))
    {
        req.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).unwrap();
    s.write_all(body).unwrap();
    read_response(&mut s, method == "HEAD")
}

/// Reads one response (Content-Length framed, or to EOF).
pub fn read_response(s: &mut TcpStream, head: bool) -> Resp {
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a complete response head");
    let head_text = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head_text.split("\r\n");
    let status: u16 = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let body = if head {
        Vec::new()
    } else {
        raw[split + 4..].to_vec()
    };
    Resp {
        status,
        headers,
        body,
    }
}

/// Files under a directory, recursively.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(files_under(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}
