//! control's API under 64 concurrent keep-alive clients, against the limit of the same
//! hyper server answering a static response, side by side in one run.
//!
//! Rows: a static 200 (hyper's http1 server with a fixed body: the limit), token
//! validation (`GET /v3/auth/tokens` with a catalog, as objectd and other services do it),
//! token issue by the token method (rescoping: signing and the body, no Argon2), token
//! issue by password in two patterns, and `GET /image/v2/images` with 20 images:
//! - warm: the 64 clients log in again and again as the same 4 users with their
//!   passwords, project-scoped, as the stock `openstack` CLI does on every command: after
//!   each user's first Argon2id check, control's verified-password cache answers;
//! - cold: 64 distinct users log in for the first time, all at once (a round; several
//!   rounds with fresh users): every login is an Argon2id check (19 MiB, t=2, p=1) on the
//!   hashing pool, one thread per core, so this row measures the hash's floor, which the
//!   row prints (64/cores hashes) beside the measured p99.
//!
//! Then mixed rows: 64 clients validating while N more clients log in with a wrong
//! password (always a full Argon2id check), both p99s printed, against validation alone.
//! First, one Argon2id hash's time for each of OWASP's equivalent minimum parameter sets
//! (control uses 19 MiB, t=2, p=1). control runs in-process on a SQLite store in a temp
//! dir with its default `[identity]` settings; its runtime and the clients' runtime each
//! get 2 worker threads; its hashing pool one thread per core at nice 10. Logging is set
//! up as the daemon's default (info to stderr), so the per-request span is measured.
//!
//! Knobs: `CONTROL_BENCH_SECS` (seconds per row, default 3), `CONTROL_BENCH_CLIENTS`
//! (default 64), `CONTROL_BENCH_ONLY` (run the static row and the rows whose name contains
//! this text, e.g. under `perf record`), `CONTROL_BENCH_LOGINS` (the mixed rows' login
//! clients, default `2,8`), `CONTROL_BENCH_COLD_ROUNDS` (cold rounds, default 3),
//! `CONTROL_BENCH_LOG` (control's log filter, default `info` as the daemon's; `off` shows
//! what logging costs).

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

async fn connect(port: u16) -> hyper::client::conn::http1::SendRequest<Full<Bytes>> {
    let stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    stream.set_nodelay(true).unwrap();
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    sender
}

/// Sends `req` and returns its status, headers and body.
async fn send(
    sender: &mut hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    req: &Req,
) -> (u16, http::HeaderMap, Bytes) {
    let mut b = http::Request::builder()
        .method(req.method.clone())
        .uri(&req.path)
        .header("host", "127.0.0.1");
    for (k, v) in &req.headers {
        b = b.header(k, v);
    }
    let r = b.body(Full::new(req.body.clone())).unwrap();
    sender.ready().await.unwrap();
    let resp = sender.send_request(r).await.unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, headers, body)
}

/// Runs `clients` keep-alive connections for `secs`, client `i` sending `reqs[i % len]`
/// again and again; returns (requests/s, latencies).
async fn load(port: u16, clients: usize, secs: u64, reqs: Vec<Req>) -> (f64, Summary) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..clients {
        let req = reqs[i % reqs.len()].clone();
        tasks.push(tokio::spawn(async move {
            let mut sender = connect(port).await;
            let mut lat = Vec::new();
            while Instant::now() < deadline {
                let t = Instant::now();
                let (status, _, _) = send(&mut sender, &req).await;
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

/// One round: every request of `reqs` on its own connection, all connected first and then
/// sent at once; returns each one's latency and the round's time.
async fn round(port: u16, reqs: Vec<Req>) -> (Vec<Duration>, Duration) {
    let gate = Arc::new(tokio::sync::Barrier::new(reqs.len() + 1));
    let mut tasks = Vec::new();
    for req in reqs {
        let gate = gate.clone();
        tasks.push(tokio::spawn(async move {
            let mut sender = connect(port).await;
            gate.wait().await;
            let t = Instant::now();
            let (status, _, body) = send(&mut sender, &req).await;
            assert_eq!(status, req.expect, "{}", String::from_utf8_lossy(&body));
            t.elapsed()
        }));
    }
    gate.wait().await;
    let start = Instant::now();
    let mut lat = Vec::new();
    for t in tasks {
        lat.push(t.await.unwrap());
    }
    (lat, start.elapsed())
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
    // Logging as the daemon sets it up by default (info, to stderr, no colours): every
    // request opens a span with its request id, and that is part of what is measured.
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(
            std::env::var("CONTROL_BENCH_LOG").unwrap_or_else(|_| "info".into()),
        ))
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
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

    let password_auth = |user: &str, password: &str| -> Bytes {
        Bytes::from(
            serde_json::json!({"auth": {"identity": {"methods": ["password"],
                "password": {"user": {"name": user, "domain": {"id": "default"}, "password": password}}},
                "scope": {"project": {"name": "admin", "domain": {"id": "default"}}}}})
            .to_string(),
        )
    };
    let json = vec![("content-type".to_string(), "application/json".to_string())];
    let login = |user: &str, password: &str, expect: u16| Req {
        method: http::Method::POST,
        path: "/v3/auth/tokens".into(),
        headers: json.clone(),
        body: password_auth(user, password),
        expect,
    };
    let warm_users: Vec<String> = (0..4).map(|i| format!("warm{i}")).collect();
    let cold_rounds = env_or("CONTROL_BENCH_COLD_ROUNDS", 3) as usize;
    let cold_users: Vec<Vec<String>> = (0..cold_rounds)
        .map(|r| (0..clients).map(|i| format!("cold{r}-{i}")).collect())
        .collect();
    // One token for the validation and list rows; 20 images; the login rows' users, each
    // a member of the admin project.
    let token = client_rt.block_on(async {
        let mut s = connect(port).await;
        let (status, headers, _) = send(&mut s, &login("admin", "bench", 201)).await;
        assert_eq!(status, 201);
        let t = headers["x-subject-token"].to_str().unwrap().to_string();
        let call = |method: http::Method, path: String, body: String, expect: u16| Req {
            method,
            path,
            headers: vec![
                ("x-auth-token".into(), t.clone()),
                ("content-type".into(), "application/json".into()),
            ],
            body: Bytes::from(body),
            expect,
        };
        for i in 0..20 {
            let r = call(http::Method::POST, "/image/v2/images".into(), format!("{{\"name\": \"img{i}\", \"disk_format\": \"raw\", \"container_format\": \"bare\"}}"), 201);
            assert_eq!(send(&mut s, &r).await.0, 201);
        }
        let id_of = |body: &Bytes, key: &str| -> String {
            let v: serde_json::Value = serde_json::from_slice(body).unwrap();
            v[key][0]["id"].as_str().unwrap().to_string()
        };
        let (_, _, b) = send(&mut s, &call(http::Method::GET, "/v3/projects?name=admin".into(), String::new(), 200)).await;
        let project = id_of(&b, "projects");
        let (_, _, b) = send(&mut s, &call(http::Method::GET, "/v3/roles?name=member".into(), String::new(), 200)).await;
        let role = id_of(&b, "roles");
        // Creating a user hashes its password: 16 connections at a time.
        let names: Vec<String> = warm_users.iter().chain(cold_users.iter().flatten()).cloned().collect();
        let mut tasks = Vec::new();
        for chunk in names.chunks(names.len().div_ceil(16)) {
            let reqs: Vec<(Req, String)> = chunk
                .iter()
                .map(|n| {
                    let body = format!("{{\"user\": {{\"name\": \"{n}\", \"password\": \"pw-{n}\"}}}}");
                    (call(http::Method::POST, "/v3/users".into(), body, 201), n.clone())
                })
                .collect();
            let assign = call(http::Method::PUT, String::new(), String::new(), 204);
            let (project, role) = (project.clone(), role.clone());
            tasks.push(tokio::spawn(async move {
                let mut s = connect(port).await;
                for (r, n) in reqs {
                    let (status, _, b) = send(&mut s, &r).await;
                    assert_eq!(status, 201, "user {n}: {}", String::from_utf8_lossy(&b));
                    let v: serde_json::Value = serde_json::from_slice(&b).unwrap();
                    let uid = v["user"]["id"].as_str().unwrap();
                    let mut a = assign.clone();
                    a.path = format!("/v3/projects/{project}/users/{uid}/roles/{role}");
                    assert_eq!(send(&mut s, &a).await.0, 204);
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
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
    const WARM: &str = "token issue (password, warm)";
    let rows: Vec<(&str, u16, Vec<Req>)> = vec![
        (
            "static 200 (limit)",
            static_port,
            vec![Req {
                method: http::Method::GET,
                path: "/".into(),
                headers: vec![],
                body: Bytes::new(),
                expect: 200,
            }],
        ),
        (
            "token validate",
            port,
            vec![Req {
                method: http::Method::GET,
                path: "/v3/auth/tokens".into(),
                headers: auth(&[("x-subject-token", &token)]),
                body: Bytes::new(),
                expect: 200,
            }],
        ),
        (
            "token issue (token method)",
            port,
            vec![Req {
                method: http::Method::POST,
                path: "/v3/auth/tokens".into(),
                headers: json.clone(),
                body: Bytes::from(rescope),
                expect: 201,
            }],
        ),
        (
            WARM,
            port,
            warm_users
                .iter()
                .map(|u| login(u, &format!("pw-{u}"), 201))
                .collect(),
        ),
        (
            "image list (20 images)",
            port,
            vec![Req {
                method: http::Method::GET,
                path: "/image/v2/images".into(),
                headers: auth(&[]),
                body: Bytes::new(),
                expect: 200,
            }],
        ),
    ];
    let only = std::env::var("CONTROL_BENCH_ONLY").unwrap_or_default();
    let cores = std::thread::available_parallelism().map_or(2, usize::from);
    let mut hash_time = Duration::ZERO;
    if only.is_empty() || "argon2".contains(only.as_str()) || "cold".contains(only.as_str()) {
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
    let over = |p99: Duration| {
        if p99 > Duration::from_millis(50) {
            "  [p99 over 50 ms]"
        } else {
            ""
        }
    };
    for (name, p, reqs) in rows.iter().cloned() {
        if p != static_port && !name.contains(only.as_str()) {
            continue;
        }
        let (rate, s) = client_rt.block_on(load(p, clients, secs, reqs));
        if limit == 0.0 {
            limit = rate;
        }
        if name == "token validate" {
            validate_alone = Some(s.p99);
        }
        println!(
            "{name:<30} {rate:>9.0} req/s ({:.2}x the static limit)  {s}{}",
            ratio(rate, limit),
            over(s.p99)
        );
        if name == WARM {
            println!(
                "{:<30} {clients} clients as {} users, each re-sending its password (the CLI's \
                 pattern): {} Argon2 checks for the first logins, the rest from the cache",
                "",
                warm_users.len(),
                warm_users.len()
            );
        }
    }
    const COLD: &str = "token issue (password, cold)";
    if COLD.contains(only.as_str()) {
        let mut all = Vec::new();
        let mut took = Duration::ZERO;
        for users in &cold_users {
            let reqs = users
                .iter()
                .map(|u| login(u, &format!("pw-{u}"), 201))
                .collect();
            let (lat, t) = client_rt.block_on(round(port, reqs));
            all.extend(lat);
            took += t;
        }
        let s = Summary::of(&mut all).unwrap();
        println!(
            "{COLD:<30} {:>9.0} req/s ({:.2}x the static limit)  {s}{}",
            all.len() as f64 / took.as_secs_f64(),
            ratio(all.len() as f64 / took.as_secs_f64(), limit),
            over(s.p99)
        );
        if hash_time > Duration::ZERO {
            // `clients` first logins share `cores` hashing threads: the last waits for
            // clients/cores hashes.
            let floor = hash_time.mul_f64(clients as f64 / cores as f64);
            println!(
                "{:<30} {cold_rounds} rounds of {clients} first logins of distinct users at once: \
                 the Argon2 floor, {clients}/{cores} hashing threads x {:.1} ms = {:.0} ms \
                 (measured p99 {:.2}x that, max {:.2}x)",
                "",
                ms(hash_time),
                ms(floor),
                s.p99.as_secs_f64() / floor.as_secs_f64(),
                s.max.as_secs_f64() / floor.as_secs_f64()
            );
        }
    }
    if !only.is_empty() && !"mixed".contains(only.as_str()) {
        return;
    }
    let validate = rows[1].2.clone();
    // Wrong passwords, one per login client: never remembered, and never the same two at
    // once (which would share a check), so every login is a full Argon2 check.
    let wrong = |n: usize| -> Vec<Req> {
        (0..n)
            .map(|i| login("admin", &format!("wrong-{i}"), 401))
            .collect()
    };
    let logins: Vec<usize> = std::env::var("CONTROL_BENCH_LOGINS")
        .unwrap_or_else(|_| "2,8".into())
        .split(',')
        .filter_map(|v| v.trim().parse().ok())
        .collect();
    for n in logins {
        let ((vrate, vs), (lrate, ls)) = client_rt.block_on(async {
            tokio::join!(
                load(port, clients, secs, validate.clone()),
                load(port, n, secs, wrong(n))
            )
        });
        println!(
            "mixed: {clients} validating + {n} logging in (wrong password: Argon2 every time): \
             validate {vrate:.0} req/s ({:.2}x the static limit) p99 {:.1} ms{}; \
             login {lrate:.1}/s p50 {:.0} ms p99 {:.0} ms",
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
