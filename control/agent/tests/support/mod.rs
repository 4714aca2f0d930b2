//! Test support: the node's real daemons (blockdp, netdp in a node namespace, the agent) as
//! child processes cleaned up on drop, their binaries built by cargo, and a small blocking
//! HTTP client for their Unix sockets.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::Value;

/// The target profile directory this test binary was built into (`target/debug`).
fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable");
    // target/<profile>/deps/<test>
    exe.parent()
        .and_then(Path::parent)
        .expect("test binaries live in target/<profile>/deps")
        .to_path_buf()
}

/// The newest modification time under `path` (files and directories, recursively).
fn newest(path: &Path) -> std::time::SystemTime {
    let mut t = std::fs::metadata(path)
        .and_then(|m| m.modified())
        .unwrap_or(std::time::UNIX_EPOCH);
    if let Ok(entries) = std::fs::read_dir(path) {
        for e in entries.flatten() {
            t = t.max(newest(&e.path()));
        }
    }
    t
}

/// Paths of the other crates' daemons (`vmm`, `blockdp`, `netdp`) in this test's target
/// profile directory. A workspace test run has built them already; when one is missing or
/// older than its crate's sources (a run of this package alone), they are built with the
/// same cargo and profile (`cargo build --bins -p vmm -p blockdp -p netdp`), once per
/// process.
pub fn daemon_binaries() -> &'static (PathBuf, PathBuf, PathBuf) {
    static BINS: OnceLock<(PathBuf, PathBuf, PathBuf)> = OnceLock::new();
    BINS.get_or_init(|| {
        let dir = profile_dir();
        let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let stale = ["vmm", "blockdp", "netdp"].iter().any(|name| {
            let built = std::fs::metadata(dir.join(name))
                .and_then(|m| m.modified())
                .ok();
            let sources = newest(&workspace.join(name).join("src"))
                .max(newest(&workspace.join(name).join("bpf")))
                .max(newest(&workspace.join(name).join("Cargo.toml")));
            built.is_none_or(|b| b < sources)
        });
        if stale {
            let target = dir.parent().expect("target dir").to_path_buf();
            let profile = match dir.file_name().and_then(|n| n.to_str()) {
                Some("debug") | None => "dev".to_string(),
                Some(other) => other.to_string(),
            };
            let cargo = std::env::var_os("CARGO").unwrap_or_else(|| env!("CARGO").into());
            let out = Command::new(cargo)
                .current_dir(env!("CARGO_MANIFEST_DIR"))
                .args([
                    "build", "--locked", "--bins", "-p", "vmm", "-p", "blockdp", "-p", "netdp",
                ])
                .arg("--profile")
                .arg(&profile)
                .arg("--target-dir")
                .arg(&target)
                .stdout(Stdio::null())
                .output()
                .expect("run cargo build");
            assert!(
                out.status.success(),
                "cargo build of the daemons failed:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        (dir.join("vmm"), dir.join("blockdp"), dir.join("netdp"))
    })
}

/// One HTTP/1.1 request over a Unix socket; returns the status and the body (JSON when it
/// parses, else a JSON string).
pub fn http(sock: &Path, method: &str, path: &str, body: Option<&str>) -> (u16, Value) {
    let mut s =
        UnixStream::connect(sock).unwrap_or_else(|e| panic!("connect {}: {e}", sock.display()));
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let body = body.unwrap_or("");
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut resp = Vec::new();
    s.read_to_end(&mut resp).unwrap();
    let resp = String::from_utf8_lossy(&resp).into_owned();
    let (head, body) = resp.split_once("\r\n\r\n").expect("an HTTP response");
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("a status");
    let v = serde_json::from_str(body).unwrap_or(Value::String(body.to_string()));
    (status, v)
}

/// Waits until `sock` accepts connections.
pub fn wait_socket(sock: &Path, child: &mut Child, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while UnixStream::connect(sock).is_err() {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("{what} exited ({status}) before listening");
        }
        assert!(
            Instant::now() < deadline,
            "{what} did not listen on {}",
            sock.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A child process killed (SIGKILL) on drop.
pub struct Proc(pub Option<Child>);

impl Proc {
    /// Kills it now.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Sends SIGKILL to `pid` (if it exists).
pub fn kill9(pid: i32) {
    if let Some(p) = rustix::process::Pid::from_raw(pid) {
        let _ = rustix::process::kill_process(p, rustix::process::Signal::KILL);
    }
}

/// Whether `pid` runs (and is not a zombie).
pub fn running(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rfind(')')
                .map(|i| !matches!(s[i + 1..].split_whitespace().next(), Some("Z" | "X")))
        })
        .unwrap_or(false)
}

/// An agent process on `state_dir`, run in network namespace `netns` if given.
pub struct AgentProc {
    /// The process.
    pub proc: Proc,
    /// The API socket.
    pub sock: PathBuf,
    /// Its state directory.
    pub state_dir: PathBuf,
}

/// The agent's settings for a test.
pub struct AgentSetup<'a> {
    /// State directory.
    pub state_dir: &'a Path,
    /// blockdp's socket.
    pub blockdp: &'a Path,
    /// netdp's socket.
    pub netdp: &'a Path,
    /// The vmm binary.
    pub vmm: &'a Path,
    /// The node namespace.
    pub netns: Option<&'a str>,
    /// Extra flags.
    pub extra: &'a [&'a str],
}

impl AgentProc {
    /// Starts the agent and waits for its socket.
    pub fn start(s: &AgentSetup) -> AgentProc {
        let sock = s.state_dir.join("agent.sock");
        let mut cmd = match s.netns {
            Some(ns) => {
                let mut c = Command::new("nsenter");
                c.arg(format!("--net=/run/netns/{ns}"))
                    .arg(env!("CARGO_BIN_EXE_ferrostack-agent"));
                c
            }
            None => Command::new(env!("CARGO_BIN_EXE_ferrostack-agent")),
        };
        let mut child = cmd
            .arg("--state-dir")
            .arg(s.state_dir)
            .arg("--socket")
            .arg(&sock)
            .arg("--blockdp-socket")
            .arg(s.blockdp)
            .arg("--netdp-socket")
            .arg(s.netdp)
            .arg("--vmm-binary")
            .arg(s.vmm)
            .arg("--disk-path")
            .arg(s.state_dir)
            .args(["--shutdown-timeout-secs", "20", "--port-timeout-secs", "30"])
            .args(s.extra)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn the agent");
        wait_socket(&sock, &mut child, "the agent");
        AgentProc {
            proc: Proc(Some(child)),
            sock,
            state_dir: s.state_dir.to_path_buf(),
        }
    }

    /// One API call.
    pub fn api(&self, method: &str, path: &str, body: Option<&str>) -> (u16, Value) {
        http(&self.sock, method, path, body)
    }

    /// A server's JSON (panics unless 200).
    pub fn server(&self, id: &str) -> Value {
        let (status, v) = self.api("GET", &format!("/v1/servers/{id}"), None);
        assert_eq!(status, 200, "{v}");
        v["server"].clone()
    }

    /// Waits until the server reaches `status` with no task in progress.
    pub fn wait_status(&self, id: &str, status: &str, timeout: Duration) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let s = self.server(id);
            if s["status"] == status && s["task_state"].is_null() {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "server {id} never reached {status}: {s:#}\nconsole: {}",
                self.console(id)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The server's whole console log, through the API.
    pub fn console(&self, id: &str) -> String {
        let (_, v) = self.api("GET", &format!("/v1/servers/{id}/console"), None);
        v["output"].as_str().unwrap_or("").to_string()
    }

    /// Waits until the console holds `needle` `count` times.
    pub fn wait_console(&self, id: &str, needle: &str, count: usize, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let c = self.console(id);
            if c.matches(needle).count() >= count {
                return c;
            }
            assert!(
                Instant::now() < deadline,
                "console of {id} never showed {needle:?} x{count}: {c:?}\n{:#}",
                self.server(id)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Kills every VMM and shim the agent's state file names (cleanup after a failure).
    pub fn kill_vmms(state_dir: &Path) {
        let Ok(bytes) = std::fs::read(state_dir.join("state.json")) else {
            return;
        };
        let Ok(v) = serde_json::from_slice::<Value>(&bytes) else {
            return;
        };
        if let Some(servers) = v["servers"].as_object() {
            for s in servers.values() {
                for key in ["vmm_pid", "shim_pid"] {
                    if let Some(pid) = s["process"][key].as_i64() {
                        kill9(pid as i32);
                    }
                }
            }
        }
    }
}

impl Drop for AgentProc {
    fn drop(&mut self) {
        self.proc.kill();
    }
}

/// FNV-1a, as the test guests compute it.
pub fn fnv1a(data: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in data {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// One request an [`HttpPeer`] received.
#[derive(Debug, Clone)]
pub struct Received {
    /// Method.
    pub method: String,
    /// Path (with query).
    pub path: String,
    /// Headers, names lowercased.
    pub headers: Vec<(String, String)>,
    /// Body.
    pub body: Vec<u8>,
}

/// Answers a request: status and body.
pub type Handler = dyn Fn(&Received) -> (u16, Vec<u8>) + Send + Sync;

/// A minimal HTTP/1.1 server on loopback for what a test needs from the other side (an image
/// store, control's node endpoints): records every request, answers with `handler`.
pub struct HttpPeer {
    /// `http://127.0.0.1:<port>`.
    pub url: String,
    /// What it received.
    pub received: std::sync::Arc<std::sync::Mutex<Vec<Received>>>,
}

impl HttpPeer {
    /// Starts serving (a thread per connection; the threads end with the test process).
    pub fn start(
        handler: impl Fn(&Received) -> (u16, Vec<u8>) + Send + Sync + 'static,
    ) -> HttpPeer {
        HttpPeer::start_on("127.0.0.1:0", handler)
    }

    /// Like [`HttpPeer::start`], listening on `addr`.
    pub fn start_on(
        addr: &str,
        handler: impl Fn(&Received) -> (u16, Vec<u8>) + Send + Sync + 'static,
    ) -> HttpPeer {
        let listener = std::net::TcpListener::bind(addr).unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let received = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let handler: std::sync::Arc<Handler> = std::sync::Arc::new(handler);
        let rec = received.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let (rec, handler) = (rec.clone(), handler.clone());
                std::thread::spawn(move || serve_one(conn, &rec, &*handler));
            }
        });
        HttpPeer { url, received }
    }

    /// What it received so far.
    pub fn requests(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }
}

fn serve_one(
    mut conn: std::net::TcpStream,
    rec: &std::sync::Mutex<Vec<Received>>,
    handler: &Handler,
) {
    use std::io::BufRead;
    let mut reader = std::io::BufReader::new(conn.try_clone().unwrap());
    let mut line = String::new();
    if reader.read_line(&mut line).is_err() {
        return;
    }
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or("").to_string();
    let path = parts.next().unwrap_or("").to_string();
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).is_err() || h.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
    }
    let len: usize = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    if reader.read_exact(&mut body).is_err() {
        return;
    }
    let req = Received {
        method,
        path,
        headers,
        body,
    };
    rec.lock().unwrap().push(req.clone());
    let (status, out) = handler(&req);
    let _ = write!(
        conn,
        "HTTP/1.1 {status} X\r\nContent-Length: {}\r\nContent-Type: application/octet-stream\r\nConnection: close\r\n\r\n",
        out.len()
    );
    let _ = conn.write_all(&out);
}

/// A compute node for tests and benchmarks: blockdp on the host, netdp in a node network
/// namespace with its own bpffs pin directory. On drop: VMMs named in the agent's state
/// killed, daemons killed, pins and namespace removed.
pub struct Node {
    /// blockdp's API socket.
    pub blockdp_sock: PathBuf,
    /// netdp's API socket.
    pub netdp_sock: PathBuf,
    /// The agent's state directory.
    pub state_dir: PathBuf,
    /// The vmm binary.
    pub vmm_bin: PathBuf,
    /// The node namespace (netdp, the agent, the taps and VMMs live in it).
    pub netns: tests::netns::Netns,
    pins: PathBuf,
    blockdp: Proc,
    netdp: Proc,
    /// Scratch directory.
    pub root: tempfile::TempDir,
}

impl Node {
    /// Starts blockdp and netdp.
    pub fn start() -> Node {
        let (vmm_bin, blockdp_bin, netdp_bin) = daemon_binaries().clone();
        let root = tempfile::tempdir().unwrap();
        let blockdp_dir = root.path().join("blockdp");
        std::fs::create_dir_all(&blockdp_dir).unwrap();
        let blockdp_sock = blockdp_dir.join("api.sock");
        let mut child = Command::new(&blockdp_bin)
            .arg("--data-dir")
            .arg(&blockdp_dir)
            .arg("--api-socket")
            .arg(&blockdp_sock)
            .args(["--poll-us", "20"])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .expect("spawn blockdp");
        wait_socket(&blockdp_sock, &mut child, "blockdp");
        let blockdp = Proc(Some(child));

        let netns = tests::netns::Netns::new("agent-node").unwrap();
        let pins = PathBuf::from(format!(
            "/sys/fs/bpf/ferrostack-test-agent-{}-{}",
            std::process::id(),
            netns.name()
        ));
        let netdp_sock = root.path().join("netdp.sock");
        // nsenter, not `ip netns exec` (which remounts /sys and hides bpffs).
        let child = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", netns.name()))
            .arg(&netdp_bin)
            .arg("--socket")
            .arg(&netdp_sock)
            .arg("--state")
            .arg(root.path().join("netdp-state.json"))
            .arg("--pin-dir")
            .arg(&pins)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .expect("spawn netdp");
        let netdp = Proc(Some(child));
        let mut node = Node {
            blockdp_sock,
            netdp_sock,
            state_dir: root.path().join("agent"),
            vmm_bin,
            netns,
            pins,
            blockdp,
            netdp,
            root,
        };
        wait_socket(
            &node.netdp_sock.clone(),
            node.netdp.0.as_mut().unwrap(),
            "netdp",
        );
        std::fs::create_dir_all(&node.state_dir).unwrap();
        node
    }

    /// How to start the agent on this node (in its namespace).
    pub fn agent_setup(&self) -> AgentSetup<'_> {
        AgentSetup {
            state_dir: &self.state_dir,
            blockdp: &self.blockdp_sock,
            netdp: &self.netdp_sock,
            vmm: &self.vmm_bin,
            netns: Some(self.netns.name()),
            extra: &[],
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        AgentProc::kill_vmms(&self.state_dir);
        self.netdp.kill();
        self.blockdp.kill();
        let _ = std::fs::remove_dir_all(&self.pins);
    }
}
