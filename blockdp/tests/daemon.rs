//! The blockdp daemon end to end: its HTTP API, volumes served to a real vhost-user-blk
//! client, and what survives `kill -9`.

mod common;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::os::unix::fs::FileExt;
use std::time::Duration;

use blockdp::client::{Client, Options, Target};
use common::{Daemon, pattern, real_tempdir};
use serde_json::Value;

fn ready() -> bool {
    caps::require(caps::Capability::IoUring)
}

fn create(d: &Daemon, body: &str) -> Value {
    let (status, v) = d.http("POST", "/volumes", Some(body));
    assert_eq!(status, 201, "{v}");
    v["volume"].clone()
}

fn export(d: &Daemon, id: &str, queues: u16) -> String {
    let (status, v) = d.http(
        "PUT",
        &format!("/volumes/{id}/export"),
        Some(&format!("{{\"num_queues\": {queues}}}")),
    );
    assert_eq!(status, 200, "{v}");
    v["volume"]["export"]["socket"]
        .as_str()
        .expect("socket path")
        .to_string()
}

fn connect(sock: &str) -> Client {
    Client::connect(&Target::VhostUser(sock.to_string()), &Options::default()).expect("connect")
}

#[test]
fn volume_lifecycle_through_the_api_and_a_real_client() {
    if !ready() {
        return;
    }
    let dir = real_tempdir();
    let d = Daemon::start(dir.path());

    let (status, v) = d.http("GET", "/", None);
    assert_eq!((status, v["service"].as_str()), (200, Some("blockdp")));

    let vol = create(&d, r#"{"name": "data", "size": 16777216}"#);
    let id = vol["id"].as_str().unwrap().to_string();
    assert_eq!(vol["size"], 16777216);
    assert_eq!(vol["name"], "data");
    let (_, list) = d.http("GET", "/volumes", None);
    assert_eq!(list["volumes"].as_array().unwrap().len(), 1);

    // Serve it and write through vhost-user.
    let sock = export(&d, &id, 2);
    {
        let mut c = connect(&sock);
        assert_eq!(c.capacity().unwrap(), 16 << 20);
        c.write(0, 0, &pattern(1, 65536)).unwrap();
        c.flush(0).unwrap();
    }
    // Exported volumes can be neither deleted nor extended.
    assert_eq!(d.http("DELETE", &format!("/volumes/{id}"), None).0, 409);
    assert_eq!(
        d.http(
            "POST",
            &format!("/volumes/{id}/extend"),
            Some(r#"{"size": 33554432}"#)
        )
        .0,
        409
    );

    // Snapshot, then change the volume: the snapshot keeps the old bytes.
    let (status, snap) = d.http(
        "POST",
        &format!("/volumes/{id}/snapshots"),
        Some(r#"{"name": "s1"}"#),
    );
    assert_eq!(status, 201, "{snap}");
    let snap_id = snap["snapshot"]["id"].as_str().unwrap().to_string();
    assert!(["reflink", "copy"].contains(&snap["snapshot"]["copy_method"].as_str().unwrap()));
    {
        let mut c = connect(&sock);
        c.write(0, 0, &pattern(2, 4096)).unwrap();
    }
    let (status, v) = d.http("DELETE", &format!("/volumes/{id}/export"), None);
    assert_eq!(status, 200, "{v}");
    assert!(v["volume"].get("export").is_none());
    assert!(
        !std::path::Path::new(&sock).exists(),
        "socket removed on unexport"
    );

    // Clone from the snapshot, larger; it holds the snapshot's bytes.
    let clone = create(
        &d,
        &format!(r#"{{"source": {{"snapshot_id": "{snap_id}"}}, "size": 33554432}}"#),
    );
    let clone_id = clone["id"].as_str().unwrap();
    let csock = export(&d, clone_id, 1);
    {
        let mut c = connect(&csock);
        assert_eq!(c.capacity().unwrap(), 32 << 20);
        assert_eq!(c.read(0, 0, 65536).unwrap(), pattern(1, 65536));
    }

    // Extend the (unexported) original, then delete it.
    let (status, v) = d.http(
        "POST",
        &format!("/volumes/{id}/extend"),
        Some(r#"{"size": 33554432}"#),
    );
    assert_eq!(
        (status, v["volume"]["size"].as_u64()),
        (200, Some(32 << 20))
    );
    assert_eq!(d.http("DELETE", &format!("/volumes/{id}"), None).0, 204);
    assert_eq!(d.http("GET", &format!("/volumes/{id}"), None).0, 404);
    assert_eq!(
        d.http("DELETE", &format!("/snapshots/{snap_id}"), None).0,
        204
    );
    assert_eq!(
        d.http("GET", "/snapshots", None).1["snapshots"]
            .as_array()
            .unwrap()
            .len(),
        0
    );
}

#[test]
fn bad_requests_get_4xx_with_a_json_reason() {
    if !ready() {
        return;
    }
    let dir = real_tempdir();
    let d = Daemon::start(dir.path());
    let cases: &[(&str, &str, Option<&str>, u16, &str)] = &[
        (
            "POST",
            "/volumes",
            Some(r#"{"size": 1000}"#),
            400,
            "invalid_request",
        ),
        (
            "POST",
            "/volumes",
            Some(r#"{"size": 4096, "colour": "red"}"#),
            400,
            "invalid_json",
        ),
        ("POST", "/volumes", Some("{not json"), 400, "invalid_json"),
        ("POST", "/volumes", Some("{}"), 400, "invalid_request"),
        (
            "POST",
            "/volumes",
            Some(r#"{"source": {"path": "/nonexistent/image.raw"}}"#),
            400,
            "bad_source",
        ),
        (
            "POST",
            "/volumes",
            Some(r#"{"source": {"url": "ftp://example.invalid/x"}}"#),
            400,
            "bad_source",
        ),
        ("GET", "/volumes/does-not-exist", None, 404, "not_found"),
        (
            "PUT",
            "/volumes/does-not-exist/export",
            None,
            404,
            "not_found",
        ),
        ("GET", "/nowhere", None, 404, "not_found"),
        ("PATCH", "/volumes", None, 405, "method_not_allowed"),
    ];
    for (method, path, body, want, code) in cases {
        let (status, v) = d.http(method, path, *body);
        assert_eq!(status, *want, "{method} {path} {body:?}: {v}");
        assert_eq!(v["error"]["code"], *code, "{method} {path}: {v}");
        assert!(!v["error"]["message"].as_str().unwrap().is_empty());
    }
    let big = vec![b' '; 100 * 1024];
    assert_eq!(d.http_raw("POST", "/volumes", &big).0, 413);
    // Export limits and double export.
    let vol = create(&d, r#"{"size": 1048576}"#);
    let id = vol["id"].as_str().unwrap();
    assert_eq!(
        d.http(
            "PUT",
            &format!("/volumes/{id}/export"),
            Some(r#"{"num_queues": 0}"#)
        )
        .0,
        400
    );
    export(&d, id, 1);
    assert_eq!(d.http("PUT", &format!("/volumes/{id}/export"), None).0, 409);
    assert_eq!(
        d.http("PUT", &format!("/volumes/{id}/qos"), Some(r#"{"iops": 0}"#))
            .0,
        400
    );
    // Nothing was created by the failed requests.
    assert_eq!(
        d.http("GET", "/volumes", None).1["volumes"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
}

#[test]
fn volumes_from_images_by_path_and_by_url() {
    if !ready() {
        return;
    }
    let dir = real_tempdir();
    let d = Daemon::start(dir.path());
    let image = pattern(7, (2 << 20) + 512);
    let img_path = dir.path().join("image.raw");
    std::fs::write(&img_path, &image).unwrap();

    let v = create(
        &d,
        &format!(r#"{{"source": {{"path": "{}"}}}}"#, img_path.display()),
    );
    assert_eq!(v["size"].as_u64(), Some(image.len() as u64));
    let sock = export(&d, v["id"].as_str().unwrap(), 1);
    let mut c = connect(&sock);
    assert_eq!(c.read(0, 0, 1 << 20).unwrap(), image[..1 << 20]);
    assert_eq!(c.read(0, 2 << 20, 512).unwrap(), image[2 << 20..]);
    drop(c);

    // A one-shot HTTP server on loopback serving the same image.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let served = image.clone();
    let server = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut req = [0u8; 1024];
        let _ = s.read(&mut req).unwrap();
        let head = format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            served.len()
        );
        s.write_all(head.as_bytes()).unwrap();
        s.write_all(&served).unwrap();
    });
    let v = create(
        &d,
        &format!(
            r#"{{"source": {{"url": "http://127.0.0.1:{port}/image.raw"}}, "size": 4194304}}"#
        ),
    );
    server.join().unwrap();
    assert_eq!(v["size"].as_u64(), Some(4 << 20));
    let data = std::fs::read(
        dir.path()
            .join(format!("volumes/{}.img", v["id"].as_str().unwrap())),
    )
    .unwrap();
    assert_eq!(&data[..image.len()], &image[..]);
    assert!(data[image.len()..].iter().all(|b| *b == 0));
}

#[test]
fn flushed_writes_and_metadata_survive_kill_9() {
    if !ready() {
        return;
    }
    let dir = real_tempdir();
    let d = Daemon::start(dir.path());
    let vol = create(&d, r#"{"name": "durable", "size": 8388608}"#);
    let id = vol["id"].as_str().unwrap().to_string();
    let sock = export(&d, &id, 1);
    let (status, _) = d.http(
        "PUT",
        &format!("/volumes/{id}/qos"),
        Some(r#"{"iops": 5000}"#),
    );
    assert_eq!(status, 200);
    {
        let mut c = connect(&sock);
        c.write(0, 4096, &pattern(9, 65536)).unwrap();
        c.flush(0).unwrap();
    }
    // A create acknowledged just before the kill is there after it, too.
    let second = create(&d, r#"{"name": "late", "size": 1048576}"#);
    d.kill9();

    let d = Daemon::start(dir.path());
    let (_, list) = d.http("GET", "/volumes", None);
    let vols = list["volumes"].as_array().unwrap();
    assert_eq!(vols.len(), 2, "{list}");
    let (_, v) = d.http("GET", &format!("/volumes/{id}"), None);
    assert_eq!(v["volume"]["name"], "durable");
    assert_eq!(v["volume"]["qos"]["iops"], 5000);
    assert_eq!(
        d.http(
            "GET",
            &format!("/volumes/{}", second["id"].as_str().unwrap()),
            None
        )
        .0,
        200
    );
    // The export came back by itself, and the flushed bytes are there.
    assert_eq!(
        v["volume"]["export"]["socket"].as_str(),
        Some(sock.as_str())
    );
    let mut c = connect(&sock);
    assert_eq!(c.read(0, 4096, 65536).unwrap(), pattern(9, 65536));
    drop(c);
    // And on the disk itself.
    let f = std::fs::File::open(dir.path().join(format!("volumes/{id}.img"))).unwrap();
    let mut buf = vec![0u8; 65536];
    f.read_exact_at(&mut buf, 4096).unwrap();
    assert_eq!(buf, pattern(9, 65536));
    assert_eq!(d.terminate(), Some(0), "clean exit on SIGTERM");
}

#[test]
fn systemd_is_told_when_the_daemon_is_ready() {
    if !ready() {
        return;
    }
    // The unit file says Type=notify: the daemon must send READY=1 to $NOTIFY_SOCKET.
    let dir = real_tempdir();
    let notify = dir.path().join("notify.sock");
    let sock = std::os::unix::net::UnixDatagram::bind(&notify).unwrap();
    sock.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    let unit = include_str!("../etc/blockdp.service");
    assert!(unit.contains("Type=notify"), "{unit}");
    let _d = Daemon::start_env(dir.path(), &[("NOTIFY_SOCKET", notify.to_str().unwrap())]);
    let mut buf = [0u8; 64];
    let n = sock.recv(&mut buf).expect("READY=1 within 10 s");
    assert_eq!(&buf[..n], b"READY=1");
}

#[test]
fn the_api_also_answers_on_tcp_when_configured() {
    if !ready() {
        return;
    }
    let dir = real_tempdir();
    // Find a free loopback port, then hand it to the daemon.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let d = Daemon::start_with(dir.path(), &["--listen", &addr]);
    create(&d, r#"{"name": "over-unix", "size": 4096}"#);
    let mut s = std::net::TcpStream::connect(&addr).expect("TCP API");
    s.write_all(b"GET /volumes HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert!(resp.contains("\"name\":\"over-unix\""), "{resp}");
}

#[test]
fn metrics_count_exactly_the_io_done() {
    if !ready() {
        return;
    }
    let dir = real_tempdir();
    let d = Daemon::start(dir.path());
    let vol = create(&d, r#"{"size": 4194304}"#);
    let id = vol["id"].as_str().unwrap().to_string();
    let sock = export(&d, &id, 1);
    let scrape = || {
        let (status, text) = d.http_raw("GET", "/metrics", b"");
        assert_eq!(status, 200);
        caps::prom::must_scrape("blockdp", &text)
    };
    let before = scrape();
    {
        let mut c = connect(&sock);
        for i in 0..5u64 {
            c.write(0, i * 4096, &pattern(i as u8, 4096)).unwrap();
        }
        for i in 0..3u64 {
            c.read(0, i * 8192, 8192).unwrap();
        }
        c.flush(0).unwrap();
    }
    let after = scrape();
    let vol = ("volume", id.as_str());
    let delta = |name: &str, op: Option<&str>| {
        let mut l = vec![vol];
        l.extend(op.map(|o| ("op", o)));
        after.sum(name, &l) - before.sum(name, &l)
    };
    let req = "ferrostack_blockdp_io_requests_total";
    let bytes = "ferrostack_blockdp_io_bytes_total";
    assert_eq!(delta(req, Some("write")), 5.0);
    assert_eq!(delta(req, Some("read")), 3.0);
    assert_eq!(delta(req, Some("flush")), 1.0);
    assert_eq!(delta(req, Some("discard")) + delta(req, Some("other")), 0.0);
    assert_eq!(delta(bytes, Some("write")), 20480.0);
    assert_eq!(delta(bytes, Some("read")), 24576.0);
    assert_eq!(delta("ferrostack_blockdp_io_errors_total", None), 0.0);
    assert_eq!(
        delta("ferrostack_blockdp_io_latency_seconds_count", None),
        9.0
    );
    let inf = [vol, ("queue", "0"), ("le", "+Inf")];
    assert_eq!(
        after.get("ferrostack_blockdp_io_latency_seconds_bucket", &inf),
        9.0
    );
    assert!(delta("ferrostack_blockdp_io_latency_seconds_sum", None) > 0.0);
    assert_eq!(after.get("ferrostack_blockdp_exports", &[]), 1.0);
    assert_eq!(after.get("ferrostack_blockdp_volumes", &[]), 1.0);
}

/// A daemon polling up to 10 ms, a 2-queue export with a connected client that has done I/O
/// on both queues.
fn polling_daemon_with_a_client() -> (tempfile::TempDir, Daemon, Client) {
    let dir = real_tempdir();
    let d = Daemon::start_with(dir.path(), &["--poll-us", "10000"]);
    let vol = create(&d, r#"{"name": "idle", "size": 16777216}"#);
    let sock = export(&d, vol["id"].as_str().unwrap(), 2);
    let opts = Options {
        queues: 2,
        ..Options::default()
    };
    let mut c = Client::connect(&Target::VhostUser(sock), &opts).expect("connect");
    for q in 0..2 {
        for i in 0..20u64 {
            c.write(q, i * 4096, &pattern(i as u8, 4096)).unwrap();
            c.read(q, i * 4096, 4096).unwrap();
        }
    }
    (dir, d, c)
}

#[test]
fn idle_queues_sleep_in_the_kernel() {
    if !ready() {
        return;
    }
    let (_dir, d, c) = polling_daemon_with_a_client();
    // Let the workers' last poll windows (at most 10 ms) run out.
    std::thread::sleep(Duration::from_millis(100));
    let before = d.cpu_time();
    std::thread::sleep(Duration::from_secs(1));
    let used = d.cpu_time() - before;
    // One spinning worker would burn the whole second.
    assert!(
        used < Duration::from_millis(50),
        "an idle export used {used:?} of CPU in one second"
    );
    drop(c);
}

#[test]
fn sparse_requests_stop_the_idle_poll() {
    if !ready() {
        return;
    }
    let (_dir, d, mut c) = polling_daemon_with_a_client();
    std::thread::sleep(Duration::from_millis(100));
    // A request every 50 ms, further apart than the 10 ms poll window: after the first
    // wasted poll the worker must sleep right away instead of polling 10 ms each time
    // (20 requests: 200 ms of CPU with a fixed poll).
    let before = d.cpu_time();
    for i in 0..20u64 {
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(c.read(0, i * 4096, 4096).unwrap(), pattern(i as u8, 4096));
    }
    let used = d.cpu_time() - before;
    assert!(
        used < Duration::from_millis(80),
        "20 sparse requests cost {used:?} of CPU"
    );
}
