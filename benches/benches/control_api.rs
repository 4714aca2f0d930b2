//! control's API under 64 concurrent keep-alive clients, against the limit of the same
//! hyper server answering a static response, side by side in one run.
//!
//! Rows: a static 200 (hyper's http1 server with a fixed body: the limit), token
//! validation (`GET /v3/auth/tokens` with a catalog, as objectd and other services do it),
//! token issue by the token method (rescoping: signing and the body, no Argon2), token
//! issue by password (Argon2id per request, so it is bounded by the hash: the row prints
//! the floor that the hashing pool's size and one hash's time put under its p99), and
//! `GET /image/v2/images` with 20 images. Then mixed rows: 64 clients validating while
//! N more clients log in by password, both p99s printed, against validation alone.
//! First, one Argon2id hash's time for each of OWASP's equivalent minimum parameter sets
//! (control uses 19 MiB, t=2, p=1). control runs in-process on a SQLite store in a temp
//! dir; its runtime and the clients' runtime each get 2 worker threads; its hashing pool
//! one thread per core at nice 10.
//!
//! Knobs: `CONTROL_BENCH_SECS` (seconds per row, default 3), `CONTROL_BENCH_CLIENTS`
//! (default 64), `CONTROL_BENCH_ONLY` (run the static row and the rows whose name contains
//! this text, e.g. under `perf record`), `CONTROL_BENCH_LOGINS` (the mixed rows' login
//! clients, default `2,8`).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use argon2::PasswordHasher;
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

/// One Argon2id hash's time (median of 5) with `m` KiB and `t` passes, on this thread.
fn argon2_time(m: u32, t: u32) -> Duration {
    let a = argon2::Argon2::new(
        argon2::Algorithm::Argon2id,
        argon2::Version::V0x13,
        argon2::Params::new(m, t, 1, None).unwrap(),
    );
    let mut times: Vec<Duration> = (0..5)
        .map(|_| {
            let t0 = Instant::now();
            a.hash_password_with_salt(b"bench password", b"0123456789abcdef")
                .unwrap();
            t0.elapsed()
        })
        .collect();
    times.sort();
    times[2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
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
    let only = std::env::var("CONTROL_BENCH_ONLY").unwrap_or_default();
    let cores = std::thread::available_parallelism().map_or(2, usize::from);
    let mut hash_time = Duration::ZERO;
    if only.is_empty() || "argon2".contains(only.as_str()) {
        println!("Argon2id, one hash on one thread (median of 5), OWASP's equivalent minimums:");
        for (m, t) in [
            (46 * 1024, 1),
            (19 * 1024, 2),
            (12 * 1024, 3),
            (9 * 1024, 4),
            (7 * 1024, 5),
        ] {
            let d = argon2_time(m, t);
            if (m, t) == (19 * 1024, 2) {
                hash_time = d;
            }
            println!(
                "  m={:>2} MiB t={t} p=1  {:>7.1} ms{}",
                m / 1024,
                ms(d),
                if (m, t) == (19 * 1024, 2) {
                    "  <- control"
                } else {
                    ""
                }
            );
        }
    }
    println!("control API, {clients} keep-alive clients, {secs} s per row");
    let mut limit = 0.0;
    let mut validate_alone = None;
    for (name, p, req) in rows.iter().cloned() {
        if p != static_port && !name.contains(only.as_str()) {
            continue;
        }
        let (rate, s) = client_rt.block_on(load(p, clients, secs, req));
        if limit == 0.0 {
            limit = rate;
        }
        if name == "token validate" {
            validate_alone = Some(s.p99);
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
        if name == "token issue (password)" && hash_time > Duration::ZERO {
            // 64 logins share `cores` hashing threads: the last waits for 64/cores hashes.
            let floor = hash_time.mul_f64(clients as f64 / cores as f64);
            println!(
                "{:<28} p99 floor for {clients} logins on {cores} hashing threads: \
                 {clients}/{cores} x {:.1} ms = {:.0} ms (measured p99 {:.2}x that)",
                "",
                ms(hash_time),
                ms(floor),
                s.p99.as_secs_f64() / floor.as_secs_f64()
            );
        }
    }
    if !only.is_empty() && !"mixed".contains(only.as_str()) {
        return;
    }
    let validate = rows[1].2.clone();
    let login = rows[3].2.clone();
    let logins: Vec<usize> = std::env::var("CONTROL_BENCH_LOGINS")
        .unwrap_or_else(|_| "2,8".into())
        .split(',')
        .filter_map(|v| v.trim().parse().ok())
        .collect();
    for n in logins {
        let ((vrate, vs), (lrate, ls)) = client_rt.block_on(async {
            tokio::join!(
                load(port, clients, secs, validate.clone()),
                load(port, n, secs, login.clone())
            )
        });
        println!(
            "mixed: {clients} validating + {n} logging in: validate {vrate:.0} req/s \
             ({:.2}x the static limit) p99 {:.1} ms{}; login {lrate:.1}/s p50 {:.0} ms p99 {:.0} ms",
            ratio(vrate, limit),
            ms(vs.p99),
            validate_alone.map_or(String::new(), |a| format!(
                " ({:.2}x validation alone)",
                vs.p99.as_secs_f64() / a.as_secs_f64()
            )),
            ms(ls.p50),
            ms(ls.p99),
        );
    }
}
