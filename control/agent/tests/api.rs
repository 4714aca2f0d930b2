//! The agent's API against bad input, and a build that fails: 4xx with a JSON error body,
//! ERROR with a fault message, never a panic. No data plane is needed: every request here is
//! refused, or fails, before one is called.

mod support;

use std::time::Duration;

use serde_json::{Value, json};
use support::{AgentProc, AgentSetup};

fn agent(dir: &std::path::Path) -> AgentProc {
    AgentProc::start(&AgentSetup {
        state_dir: dir,
        blockdp: &dir.join("no-blockdp.sock"),
        netdp: &dir.join("no-netdp.sock"),
        vmm: std::path::Path::new("/nonexistent/vmm"),
        netns: None,
        extra: &[],
    })
}

fn assert_error(status: u16, v: &Value, want: u16, needle: &str) {
    assert_eq!(status, want, "{v}");
    let msg = v["error"]["message"]
        .as_str()
        .unwrap_or_else(|| panic!("no JSON error in {v}"));
    assert!(v["error"]["code"].is_string(), "{v}");
    assert!(msg.contains(needle), "{needle:?} not in {msg:?}");
}

fn placement(id: &str) -> Value {
    json!({"server": {
        "id": id,
        "vcpus": 1,
        "ram_mib": 32,
        "kernel": {"path": "/nonexistent/kernel"},
        "root_disk": {"image": {"path": "/nonexistent/disk.img"}},
    }})
}

#[test]
fn bad_requests_get_4xx_with_a_json_reason() {
    let dir = tempfile::tempdir().unwrap();
    let a = agent(dir.path());
    let post = |body: &str| a.api("POST", "/v1/servers", Some(body));

    let (s, v) = post("{not json");
    assert_error(s, &v, 400, "invalid request body");
    let (s, v) = post(&json!({"server": {"id": "x"}}).to_string());
    assert_error(s, &v, 400, "missing field");
    let mut p = placement("a");
    p["server"]["surprise"] = json!(true);
    let (s, v) = post(&p.to_string());
    assert_error(s, &v, 400, "unknown field `surprise`");
    let mut p = placement("a");
    p["server"]["vcpus"] = json!(0);
    let (s, v) = post(&p.to_string());
    assert_error(s, &v, 400, "vcpus");
    let mut p = placement("a");
    p["server"]["vcpus"] = json!("two");
    let (s, v) = post(&p.to_string());
    assert_error(s, &v, 400, "invalid type");
    let mut p = placement("../etc");
    p["server"]["id"] = json!("../etc");
    let (s, v) = post(&p.to_string());
    assert_error(s, &v, 400, "id");
    let mut p = placement("a");
    p["server"]["ports"] = json!([{"network_id": "n", "port_id": "p"}]);
    let (s, v) = post(&p.to_string());
    assert_error(s, &v, 400, "exactly one of");
    let mut p = placement("a");
    p["server"]["metadata"] = json!({"user_data": "not base64!"});
    let (s, v) = post(&p.to_string());
    assert_error(s, &v, 400, "metadata.user_data");
    let mut p = placement("a");
    p["server"]["metadata"] = json!({"public_key": "ssh-ed25519 AAAA\u{1b}[2J"});
    let (s, v) = post(&p.to_string());
    assert_error(s, &v, 400, "metadata.public_key");
    // Metadata at Nova's limits fits in a request: 65535 bytes of user data base64, 128
    // properties of 255-byte values.
    let mut p = placement("at-limits");
    let props: serde_json::Map<String, Value> = (0..128)
        .map(|i| (format!("key-{i}"), json!("v".repeat(255))))
        .collect();
    p["server"]["metadata"] = json!({
        "user_data": "QUJD".repeat(16383),
        "properties": props,
        "public_key": format!("ssh-rsa {}", "A".repeat(16000)),
    });
    let (s, v) = post(&p.to_string());
    assert_eq!(s, 202, "{v}");
    let big = format!("{{\"server\": \"{}\"}}", "x".repeat(300 * 1024));
    let (s, v) = post(&big);
    assert_error(s, &v, 413, "exceeds");

    let (s, v) = a.api("GET", "/v1/servers/nope", None);
    assert_error(s, &v, 404, "nope");
    let (s, v) = a.api("DELETE", "/v1/servers/nope", None);
    assert_error(s, &v, 404, "nope");
    let (s, v) = a.api(
        "POST",
        "/v1/servers/nope/action",
        Some(r#"{"os-stop": null}"#),
    );
    assert_error(s, &v, 404, "nope");
    let (s, v) = a.api("POST", "/v1/servers/nope/action", Some(r#"{"fly": null}"#));
    assert_error(s, &v, 400, "unknown action");
    let (s, v) = a.api("GET", "/v1/servers/nope/console?length=x", None);
    assert_error(s, &v, 400, "length");
    let (s, v) = a.api("PUT", "/v1/servers", None);
    assert_error(s, &v, 405, "PUT");
    let (s, v) = a.api("GET", "/v2/whatever", None);
    assert_error(s, &v, 404, "no route");

    // Still serving after all that.
    let (s, v) = a.api("GET", "/", None);
    assert_eq!((s, v["service"].as_str()), (200, Some("ferrostack-agent")));
    let (s, v) = a.api("GET", "/v1/servers", None);
    assert_eq!((s, v["servers"].as_array().map(Vec::len)), (200, Some(1)));
}

#[test]
fn a_failed_build_is_error_with_a_fault_and_can_be_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let a = agent(dir.path());
    let (s, v) = a.api(
        "POST",
        "/v1/servers",
        Some(&placement("srv-bad").to_string()),
    );
    assert_eq!(s, 202, "{v}");
    assert_eq!(v["server"]["status"], "BUILD");
    let srv = a.wait_status("srv-bad", "ERROR", Duration::from_secs(30));
    let fault = srv["fault"]["message"].as_str().unwrap();
    assert!(
        fault.contains("kernel /nonexistent/kernel is not readable"),
        "{fault}"
    );
    // Same id again: conflict. Start from ERROR: conflict.
    let (s, v) = a.api(
        "POST",
        "/v1/servers",
        Some(&placement("srv-bad").to_string()),
    );
    assert_error(s, &v, 409, "already exists");
    let (s, v) = a.api(
        "POST",
        "/v1/servers/srv-bad/action",
        Some(r#"{"os-start": null}"#),
    );
    assert_error(s, &v, 409, "ERROR");
    // The node reports it.
    let (s, v) = a.api("GET", "/v1/node", None);
    assert_eq!(s, 200);
    assert_eq!(v["node"]["servers_by_status"]["ERROR"], 1, "{v}");
    assert!(v["node"]["inventory"]["vcpus"].as_u64().unwrap() >= 1);
    assert!(v["node"]["inventory"]["memory_mib"].as_u64().unwrap() > 0);
    let (s, text) = a.api("GET", "/metrics", None);
    assert_eq!(s, 200);
    // Checked with Prometheus' own parser and the house naming rules.
    let m = caps::prom::must_scrape("agent", text.as_str().unwrap());
    assert_eq!(
        m.get("ferrostack_agent_servers", &[("status", "ERROR")]),
        1.0
    );
    assert_eq!(
        m.get("ferrostack_agent_servers", &[("status", "ACTIVE")]),
        0.0
    );
    assert_eq!(
        m.get("ferrostack_agent_builds_total", &[("result", "error")]),
        1.0
    );
    assert_eq!(
        m.get("ferrostack_agent_builds_total", &[("result", "active")]),
        0.0
    );

    // Survives a restart as it was.
    let mut a = a;
    a.proc.kill();
    let a = agent(dir.path());
    assert_eq!(a.server("srv-bad")["status"], "ERROR");

    let (s, _) = a.api("DELETE", "/v1/servers/srv-bad", None);
    assert_eq!(s, 204);
    let (s, _) = a.api("GET", "/v1/servers/srv-bad", None);
    assert_eq!(s, 404);
    assert!(!dir.path().join("servers/srv-bad").exists());
}

#[test]
fn the_daemon_notifies_systemd_and_serves_tcp_too() {
    let dir = tempfile::tempdir().unwrap();
    let notify_path = dir.path().join("notify.sock");
    let notify = std::os::unix::net::UnixDatagram::bind(&notify_path).unwrap();
    notify
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_ferrostack-agent"))
        .arg("--state-dir")
        .arg(dir.path())
        .arg("--socket")
        .arg(dir.path().join("agent.sock"))
        .arg("--listen")
        .arg(format!("127.0.0.1:{port}"))
        .env("NOTIFY_SOCKET", &notify_path)
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let _agent = support::Proc(Some(child));
    let mut buf = [0u8; 64];
    let n = notify.recv(&mut buf).expect("READY=1 within 30 s");
    assert_eq!(&buf[..n], b"READY=1");
    // Ready means serving, on both sockets.
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.write_all(b"GET /v1/servers HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert!(resp.contains(r#"{"servers":[]}"#), "{resp}");
    let (s, _) = support::http(&dir.path().join("agent.sock"), "GET", "/", None);
    assert_eq!(s, 200);
}

#[test]
fn the_typed_client_drives_the_api() {
    use ferrostack_agent::client::{AgentClient, ServerAction};
    use ferrostack_agent::http::Endpoint;
    let dir = tempfile::tempdir().unwrap();
    let a = agent(dir.path());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let c = AgentClient::new(Endpoint::Unix(a.sock.clone()), Duration::from_secs(10));
        let placement = serde_json::from_value(placement("typed")["server"].clone()).unwrap();
        let s = c.create(&placement).await.unwrap();
        assert_eq!((s.id.as_str(), s.status.as_str()), ("typed", "BUILD"));
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        let s = loop {
            let s = c.get("typed").await.unwrap();
            if s.status == "ERROR" {
                break s;
            }
            assert!(std::time::Instant::now() < deadline, "{s:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert!(s.fault.unwrap().message.contains("not readable"));
        assert_eq!(s.raw["vcpus"], 1);
        assert_eq!(c.list().await.unwrap().len(), 1);
        let e = c.action("typed", ServerAction::Start).await.unwrap_err();
        assert_eq!(e.status(), Some(409), "{e}");
        assert!(e.to_string().contains("ERROR"), "{e}");
        assert_eq!(c.console("typed", Some(5)).await.unwrap(), "");
        assert!(
            c.node().await.unwrap()["inventory"]["vcpus"]
                .as_u64()
                .unwrap()
                >= 1
        );
        c.delete("typed").await.unwrap();
        assert_eq!(c.get("typed").await.unwrap_err().status(), Some(404));
    });
}
