//! Node-side fixtures: the workspace's daemons built in the test's profile, real
//! `ferrostack-agent` (and blockdp) processes killed on drop, and polling.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::free_port;

/// Builds the binaries of `packages` in this test's profile directory with the same cargo
/// (a no-op when up to date); returns that directory.
pub fn binaries(packages: &[&str]) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().unwrap().parent().unwrap().to_path_buf(); // target/<profile>
    let profile = match dir.file_name().and_then(|n| n.to_str()) {
        Some("debug") | None => "dev".to_string(),
        Some(p) => p.to_string(),
    };
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| env!("CARGO").into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(["build", "--locked", "--bins"]);
    for p in packages {
        cmd.args(["-p", p]);
    }
    let out = cmd
        .args(["--profile", &profile, "--target-dir"])
        .arg(dir.parent().unwrap())
        .stdout(Stdio::null())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "building {packages:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    dir
}

/// Child processes, killed (last started first) on drop.
#[derive(Default)]
pub struct Procs(pub Vec<Child>);

impl Procs {
    /// Kills them all now.
    pub fn stop(&mut self) {
        for c in self.0.iter_mut().rev() {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.0.clear();
    }
}

impl Drop for Procs {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Where an agent keeps its state and finds its node's data planes.
pub struct AgentDirs<'a> {
    /// `--state-dir` (its socket goes there too).
    pub state: &'a Path,
    /// `--blockdp-socket`.
    pub blockdp_socket: &'a Path,
    /// `--disk-path`.
    pub disk: &'a Path,
}

/// Starts `ferrostack-agent` from `bins` on a free loopback port, registering with
/// `control` with `token` and heartbeating every second; no netdp.
pub fn spawn_agent(bins: &Path, dirs: &AgentDirs, control: &str, token: &str) -> Child {
    let port = free_port();
    Command::new(bins.join("ferrostack-agent"))
        .arg("--state-dir")
        .arg(dirs.state)
        .arg("--socket")
        .arg(dirs.state.join("agent.sock"))
        .arg("--blockdp-socket")
        .arg(dirs.blockdp_socket)
        .arg("--netdp-socket")
        .arg(dirs.state.join("no-netdp.sock"))
        .arg("--disk-path")
        .arg(dirs.disk)
        .arg("--listen")
        .arg(format!("127.0.0.1:{port}"))
        .arg("--agent-url")
        .arg(format!("http://127.0.0.1:{port}"))
        .arg("--control-url")
        .arg(control)
        .arg("--control-token")
        .arg(token)
        .args(["--heartbeat-interval-secs", "1"])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .unwrap()
}

/// Polls `f` every 250 ms until it holds; panics naming `what` after `timeout`.
pub fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    wait_until(what, timeout, || f().then_some(()))
}

/// Polls `f` every 250 ms until it answers something, and returns that; panics naming
/// `what` after `timeout`.
pub fn wait_until<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(250));
    }
}
