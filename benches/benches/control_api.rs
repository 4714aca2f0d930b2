//! control's API under 64 concurrent keep-alive clients, against the limit of the same
//! hyper server answering a static response, side by side in one run.
//!
//! Rows: a static 200 (hyper's http1 server with a fixed body: the limit), token
//! validation (`GET /v3/auth/tokens` with a catalog, as objectd and other services do it),
//! token issue by the token method (rescoping: signing and the body, no Argon2), token
//! issue by password (Argon2id per request, so it is bounded by the hash), and
//! `GET /image/v2/images` with 20 images. control runs in-process on a SQLite store in a
//! temp dir; its runtime and the clients' runtime each get 2 worker threads.
//!
//! Knobs: `CONTROL_BENCH_SECS` (seconds per row, default 3), `CONTROL_BENCH_CLIENTS`
//! (default 64), `CONTROL_BENCH_ONLY` (run the static row and the rows whose name contains
//! this text, e.g. under `perf record`).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use benches::{Summary, ratio};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[derive(Clone)]
struct Req {
    method: http::Method,
    path: String,
    headers: Vec<(String, String)>,
    body: Bytes,
    expect: u16,
}

/// Runs `clients` keep-alive connections for `secs`; returns (requests/s, latencies).
async fn load(port: u16, clients: usize, secs: u64, req: Req) -> (f64, Summary) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let req = req.clone();
        tasks.push(tokio::spawn(async move {
            let stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .unwrap();
            stream.set_nodelay(true).unwrap();
            let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .unwrap();
            tokio::spawn(conn);
            let mut lat = Vec::new();
            while Instant::now() < deadline {
                let mut b = http::Request::builder()
                    .method(req.method.clone())
                    .uri(&req.path)
                    .header("host", "127.0.0.1");
                for (k, v) in &req.headers {
                    b = b.header(k, v);
                }
                let r = b.body(Full::new(req.body.clone())).unwrap();
                let t = Instant::now();
                sender.ready().await.unwrap();
                let resp = sender.send_request(r).await.unwrap();
                let status = resp.status().as_u16();
                let _ = resp.into_body().collect().await.unwrap();
                lat.push(t.elapsed());
                assert_eq!(status, req.expect, "{} {}", req.method, req.path);
            }
            lat
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    let elapsed = start.elapsed().as_secs_f64();
    let rate = all.len() as f64 / elapsed;
    (rate, Summary::of(&mut all).unwrap())
}

fn static_server(rt: &tokio::runtime::Runtime) -> u16 {
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let port = listener.local_addr().unwrap().port();
    rt.spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let _ = stream.set_nodelay(true);
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(|_req| async {
                    let mut r =
                        http::Response::new(Full::new(Bytes::from_static(b"{\"ok\": true}")));
                    r.headers_mut().insert(
                        "content-type",
                        http::HeaderValue::from_static("application/json"),
                    );
                    Ok::<_, Infallible>(r)
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    port
}

fn main() {
    let secs = env_or("CONTROL_BENCH_SECS", 3);
    let clients = env_or("CONTROL_BENCH_CLIENTS", 64) as usize;
    let dir = tempfile::tempdir().unwrap();
    let server_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let client_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();

    // control, bootstrapped, in-process.
    let listener = server_rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let port = listener.local_addr().unwrap().port();
    let text = format!(
        "listen = \"127.0.0.1:{port}\"\n[store]\nlocation = \"{}\"\n[tokens]\nkey-dir = \"{}\"\n",
        dir.path().join("control.db").display(),
        dir.path().join("keys").display()
    );
    let config = control::config::Config::from_toml(&text)
        .unwrap()
        .validate()
        .unwrap();
    let store = control::store::open(&config.raw.store).unwrap();
    let b = control::identity::bootstrap::Bootstrap {
        admin_user: "admin".into(),
        admin_password: "bench".into(),
        admin_project: "admin".into(),
        region: "RegionOne".into(),
        public_url: config.public_url.clone(),
        object_store_url: Some("http://127.0.0.1:8080".into()),
    };
    control::identity::bootstrap::run(store.as_ref(), &b).unwrap();
    let svc = control::service::Service::new(config, store).unwrap();
    let svc2: Arc<control::service::Service> = svc.clone();
    server_rt.spawn(control::server::serve(
        svc2,
        listener,
        std::future::pending(),
    ));
    let static_port = static_server(&server_rt);

    let password_auth = serde_json::json!({"auth": {"identity": {"methods": ["password"],
        "password": {"user": {"name": "admin", "domain": {"id": "default"}, "password": "bench"}}},
        "scope": {"project": {"name": "admin", "domain": {"id": "default"}}}}})
    .to_string();
    // One token for the validation and list rows.
    let token = client_rt.block_on(async {
        let stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        let (mut s, c) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.unwrap();
        tokio::spawn(c);
        let r = http::Request::post("/v3/auth/tokens")
            .header("host", "127.0.0.1")
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(password_auth.clone())))
            .unwrap();
        let resp = s.send_request(r).await.unwrap();
        assert_eq!(resp.status(), 201);
        let t = resp.headers()["x-subject-token"].to_str().unwrap().to_string();
        let _ = resp.into_body().collect().await;
        for i in 0..20 {
            let r = http::Request::post("/image/v2/images")
                .header("host", "127.0.0.1")
                .header("x-auth-token", &t)
                .header("content-type", "application/json")
                .body(Full::new(Bytes::from(format!("{{\"name\": \"img{i}\", \"disk_format\": \"raw\", \"container_format\": \"bare\"}}"))))
                .unwrap();
            s.ready().await.unwrap();
            let resp = s.send_request(r).await.unwrap();
            assert_eq!(resp.status(), 201);
            let _ = resp.into_body().collect().await;
        }
        t
    });
    let rescope =
        serde_json::json!({"auth": {"identity": {"methods": ["token"], "token": {"id": token}},
        "scope": {"project": {"name": "admin", "domain": {"id": "default"}}}}})
        .to_string();
    let auth = |extra: &[(&str, &str)]| -> Vec<(String, String)> {
        let mut v = vec![("x-auth-token".to_string(), token.clone())];
        v.extend(
            extra
                .iter()
                .map(|(k, val)| (k.to_string(), val.to_string())),
        );
        v
    };
    let json = vec![("content-type".to_string(), "application/json".to_string())];
    let rows: Vec<(&str, u16, Req)> = vec![
        (
            "static 200 (limit)",
            static_port,
            Req {
                method: http::Method::GET,
                path: "/".into(),
                headers: vec![],
                body: Bytes::new(),
                expect: 200,
            },
        ),
        (
            "token validate",
            port,
            Req {
                method: http::Method::GET,
                path: "/v3/auth/tokens".into(),
                headers: auth(&[("x-subject-token", &token)]),
                body: Bytes::new(),
                expect: 200,
            },
        ),
        (
            "token issue (token method)",
            port,
            Req {
                method: http::Method::POST,
                path: "/v3/auth/tokens".into(),
                headers: json.clone(),
                body: Bytes::from(rescope),
                expect: 201,
            },
        ),
        (
            "token issue (password)",
            port,
            Req {
                method: http::Method::POST,
                path: "/v3/auth/tokens".into(),
                headers: json,
                body: Bytes::from(password_auth),
                expect: 201,
            },
        ),
        (
            "image list (20 images)",
            port,
            Req {
                method: http::Method::GET,
                path: "/image/v2/images".into(),
                headers: auth(&[]),
                body: Bytes::new(),
                expect: 200,
            },
        ),
    ];
    println!("control API, {clients} keep-alive clients, {secs} s per row");
    let only = std::env::var("CONTROL_BENCH_ONLY").unwrap_or_default();
    let mut limit = 0.0;
    for (name, p, req) in rows {
        if p != static_port && !name.contains(only.as_str()) {
            continue;
        }
        let (rate, s) = client_rt.block_on(load(p, clients, secs, req));
        if limit == 0.0 {
            limit = rate;
        }
        println!(
            "{name:<28} {rate:>9.0} req/s ({:.2}x the static limit)  {s}{}",
            ratio(rate, limit),
            if s.p99 > Duration::from_millis(50) {
                "  [p99 over 50 ms]"
            } else {
                ""
            }
        );
    }
}
