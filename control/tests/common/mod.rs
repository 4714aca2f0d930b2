//! Shared fixtures: a real objectd (in-process, on its own runtime thread) and a real
//! `control` process with a bootstrapped store, both on loopback ports of a temp dir;
//! the stock `openstack` CLI run against them; raw HTTP for error cases.

#![allow(dead_code)]

pub mod node;
pub mod pg;
pub mod sim;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The admin password bootstrap sets.
pub const ADMIN_PASSWORD: &str = "admin-secret";

/// A free loopback port.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn wait_listening(port: u16, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "{what} did not start listening");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Starts objectd in this process; it validates Swift tokens against `keystone_url`.
pub fn start_objectd(dir: &Path, keystone_url: &str) -> u16 {
    let port = free_port();
    let text = format!(
        "listen = \"127.0.0.1:{port}\"\ndata-dir = \"{}\"\nauditor-interval-secs = 0\n\
         [keystone]\nurl = \"{keystone_url}\"\ncache-secs = 1\n\
         [[users]]\naccount = \"svc\"\nuser = \"glance\"\nkey = \"glance-key\"\n",
        dir.join("objectd").display()
    );
    let config = objectd::config::Config::from_toml(&text).unwrap();
    config.validate().unwrap();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(objectd::server::run(config)).unwrap();
    });
    wait_listening(port, "objectd");
    port
}

/// A control daemon (child process, killed on drop) with objectd behind it.
pub struct Cloud {
    child: Option<Child>,
    /// control's port.
    pub port: u16,
    /// objectd's port.
    pub objectd_port: u16,
    /// Config, store, keys, openrc.
    pub dir: tempfile::TempDir,
}

impl Cloud {
    /// Starts objectd and control with default settings and bootstraps.
    pub fn start() -> Cloud {
        Cloud::start_with("", "", "")
    }

    /// With extra top-level config keys and extra `[tokens]` and `[images]` lines.
    pub fn start_with(top: &str, tokens: &str, images: &str) -> Cloud {
        Cloud::start_full(top, tokens, images, None)
    }

    /// On another store (`kind`, `location`).
    pub fn start_with_store(kind: &str, location: &str) -> Cloud {
        Cloud::start_full("", "", "", Some((kind, location)))
    }

    /// With extra top-level config and another store (`kind`, `location`).
    pub fn start_with_store_and(top: &str, kind: &str, location: &str) -> Cloud {
        Cloud::start_full(top, "", "", Some((kind, location)))
    }

    fn start_full(top: &str, tokens: &str, images: &str, store: Option<(&str, &str)>) -> Cloud {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let objectd_port = start_objectd(dir.path(), &format!("http://127.0.0.1:{port}"));
        let config = format!(
            "listen = \"127.0.0.1:{port}\"\n{top}\n[store]\nkind = \"{}\"\nlocation = \"{}\"\n\
             [tokens]\nkey-dir = \"{}\"\n{tokens}\n[images]\nstore-url = \"http://127.0.0.1:{objectd_port}\"\n\
             staging-dir = \"{}\"\n{images}\n",
            store.map_or("sqlite", |s| s.0),
            store.map_or_else(
                || dir.path().join("control.db").display().to_string(),
                |s| s.1.to_string()
            ),
            dir.path().join("keys").display(),
            dir.path().join("staging").display(),
        );
        std::fs::write(dir.path().join("control.toml"), config).unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_control"))
            .arg("--config")
            .arg(dir.path().join("control.toml"))
            .args(["bootstrap", "--password", ADMIN_PASSWORD, "--out-dir"])
            .arg(dir.path())
            .env("RUST_LOG", "warn")
            .output()
            .unwrap();
        assert!(out.status.success(), "bootstrap failed: {out:?}");
        let mut c = Cloud {
            child: None,
            port,
            objectd_port,
            dir,
        };
        c.spawn();
        c
    }

    fn spawn(&mut self) {
        let child = Command::new(env!("CARGO_BIN_EXE_control"))
            .arg("--config")
            .arg(self.dir.path().join("control.toml"))
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        self.child = Some(child);
        wait_listening(self.port, "control");
    }

    /// Starts another control process on the same config (store, token keys), listening
    /// on its own port: a second controller.
    pub fn another_controller(&self) -> Controller {
        self.controller_with_log("warn", None)
    }

    /// Another controller whose log (`RUST_LOG=filter`) goes to `log` instead of the test's
    /// stderr.
    pub fn controller_with_log(&self, filter: &str, log: Option<&Path>) -> Controller {
        let port = free_port();
        let text = std::fs::read_to_string(self.dir.path().join("control.toml")).unwrap();
        let text = text.replace(
            &format!("listen = \"127.0.0.1:{}\"", self.port),
            &format!("listen = \"127.0.0.1:{port}\""),
        );
        let path = self.dir.path().join(format!("control-{port}.toml"));
        std::fs::write(&path, text).unwrap();
        let stderr = match log {
            Some(l) => Stdio::from(std::fs::File::create(l).unwrap()),
            None => Stdio::inherit(),
        };
        let child = Command::new(env!("CARGO_BIN_EXE_control"))
            .arg("--config")
            .arg(&path)
            .env("RUST_LOG", filter)
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .unwrap();
        wait_listening(port, "the second control");
        Controller { child, port }
    }

    /// SIGKILLs control and starts it again on the same store and keys.
    pub fn restart(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.spawn();
    }

    /// Runs `control ARGS` against this cloud's config (e.g. `rotate-keys`).
    pub fn control(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_control"))
            .arg("--config")
            .arg(self.dir.path().join("control.toml"))
            .args(args)
            .env("RUST_LOG", "warn")
            .output()
            .unwrap()
    }

    /// An HTTP request to control.
    pub fn req(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Answer {
        let mut h: Vec<(&str, &str)> = headers.to_vec();
        if let Some(t) = token {
            h.push(("x-auth-token", t));
        }
        http(self.port, method, path, &h, body)
    }

    /// A JSON request to control.
    pub fn json(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: &serde_json::Value,
    ) -> Answer {
        self.req(
            method,
            path,
            token,
            &[("content-type", "application/json")],
            body.to_string().as_bytes(),
        )
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The environment for the CLI as a user of a project.
    pub fn env(&self, user: &str, password: &str, project: &str) -> Vec<(String, String)> {
        [
            ("OS_AUTH_URL", format!("{}/v3", self.url())),
            ("OS_IDENTITY_API_VERSION", "3".into()),
            ("OS_USERNAME", user.into()),
            ("OS_PASSWORD", password.into()),
            ("OS_PROJECT_NAME", project.into()),
            ("OS_USER_DOMAIN_NAME", "Default".into()),
            ("OS_PROJECT_DOMAIN_NAME", "Default".into()),
            ("OS_REGION_NAME", "RegionOne".into()),
            ("OS_INTERFACE", "public".into()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }

    /// The CLI environment of a user scoped by `scope`, an `OS_*` variable and its value
    /// (`OS_SYSTEM_SCOPE`, `OS_TRUST_ID`), instead of by a project.
    pub fn env_scoped_by(
        &self,
        user: &str,
        password: &str,
        scope: (&str, &str),
    ) -> Vec<(String, String)> {
        let mut env: Vec<(String, String)> = self
            .env(user, password, "")
            .into_iter()
            .filter(|(k, _)| !k.starts_with("OS_PROJECT_"))
            .collect();
        env.push((scope.0.into(), scope.1.into()));
        env
    }

    /// The admin's CLI environment.
    pub fn admin(&self) -> Vec<(String, String)> {
        self.env("admin", ADMIN_PASSWORD, "admin")
    }

    /// Makes (as admin) `project` and `user` with `password`, a member of it; returns
    /// the user's CLI environment.
    pub fn member(&self, project: &str, user: &str, password: &str) -> Vec<(String, String)> {
        let admin = self.admin();
        ok(&admin, &["project", "create", project]);
        ok(&admin, &["user", "create", "--password", password, user]);
        let role = [
            "role",
            "add",
            "--project",
            project,
            "--user",
            user,
            "member",
        ];
        ok(&admin, &role);
        self.env(user, password, project)
    }

    /// The CLI environment of an application credential.
    pub fn app_cred_env(&self, id: &str, secret: &str) -> Vec<(String, String)> {
        [
            ("OS_AUTH_URL", format!("{}/v3", self.url())),
            ("OS_IDENTITY_API_VERSION", "3".into()),
            ("OS_AUTH_TYPE", "v3applicationcredential".into()),
            ("OS_APPLICATION_CREDENTIAL_ID", id.into()),
            ("OS_APPLICATION_CREDENTIAL_SECRET", secret.into()),
            ("OS_REGION_NAME", "RegionOne".into()),
            ("OS_INTERFACE", "public".into()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }

    /// Makes a project over raw HTTP with an admin token; its id.
    pub fn new_project(&self, admin: &str, name: &str) -> String {
        let p = self.json(
            "POST",
            "/v3/projects",
            Some(admin),
            &serde_json::json!({"project": {"name": name}}),
        );
        assert_eq!(p.status, 201, "{}", p.text());
        p.json()["project"]["id"].as_str().unwrap().to_string()
    }

    /// Makes a user over raw HTTP with an admin token (`user` holds its fields: name,
    /// password, ...); its id.
    pub fn new_user(&self, admin: &str, user: serde_json::Value) -> String {
        let u = self.json(
            "POST",
            "/v3/users",
            Some(admin),
            &serde_json::json!({ "user": user }),
        );
        assert_eq!(u.status, 201, "{}", u.text());
        u.json()["user"]["id"].as_str().unwrap().to_string()
    }

    /// Gets a token by password over raw HTTP: (token, body).
    pub fn token(&self, user: &str, password: &str, project: &str) -> (String, serde_json::Value) {
        let body = serde_json::json!({"auth": {"identity": {"methods": ["password"],
            "password": {"user": {"name": user, "domain": {"id": "default"}, "password": password}}},
            "scope": {"project": {"name": project, "domain": {"id": "default"}}}}});
        let r = http(
            self.port,
            "POST",
            "/v3/auth/tokens",
            &[("content-type", "application/json")],
            body.to_string().as_bytes(),
        );
        assert_eq!(r.status, 201, "token for {user}: {}", r.text());
        (r.header("x-subject-token").unwrap().to_string(), r.json())
    }
}

impl Drop for Cloud {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Another control process (see [`Cloud::another_controller`]), killed on drop.
pub struct Controller {
    child: Child,
    /// Its port.
    pub port: u16,
}

impl Drop for Controller {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The CLI to run: `$OPENSTACK_CLI` (e.g. a venv with the newest client from PyPI) or
/// Debian's `openstack`.
pub fn cli() -> String {
    std::env::var("OPENSTACK_CLI").unwrap_or_else(|_| "openstack".into())
}

/// Whether the stock CLI is installed; prints a SKIP line (or fails under CI=true) if not.
pub fn have_cli() -> bool {
    let ok = Command::new(cli())
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "the openstack CLI is missing (scripts/setup installs python3-openstackclient)"
        );
        eprintln!("SKIP: the openstack CLI is not installed");
    }
    ok
}

/// Runs `openstack ARGS` with an environment; returns the output.
pub fn openstack(env: &[(String, String)], args: &[&str]) -> Output {
    client(&cli(), env, args)
}

/// Runs an OpenStack client program with `env` and none of the caller's own `OS_*`
/// variables; returns the output.
pub fn client(program: &str, env: &[(String, String)], args: &[&str]) -> Output {
    let mut cmd = Command::new(program);
    for (k, _) in std::env::vars() {
        if k.starts_with("OS_") {
            cmd.env_remove(k);
        }
    }
    cmd.args(args)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .env("HOME", std::env::temp_dir())
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// Runs `openstack ARGS`, asserting success; returns stdout.
pub fn ok(env: &[(String, String)], args: &[&str]) -> String {
    let out = openstack(env, args);
    assert!(
        out.status.success(),
        "openstack {args:?} failed:\nstdout: {}\nstderr: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Runs `openstack ARGS -f json` and parses the output.
pub fn ok_json(env: &[(String, String)], args: &[&str]) -> serde_json::Value {
    let mut a = args.to_vec();
    a.extend(["-f", "json"]);
    let text = ok(env, &a);
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{args:?}: {e}: {text}"))
}

/// `openstack quota show PROJECT` as one object keyed by the older client's names
/// (`networks`, `floating-ips`, `secgroups`, ...): Debian's client prints an object, newer
/// ones a list of `{"Resource", "Limit"}` rows with Neutron's own names.
pub fn quota_show(env: &[(String, String)], project: &str) -> serde_json::Value {
    let v = ok_json(env, &["quota", "show", project]);
    let Some(rows) = v.as_array() else {
        return v;
    };
    let mut map = serde_json::Map::new();
    for r in rows {
        let Some(name) = r["Resource"].as_str() else {
            continue;
        };
        let name = match name {
            "floating_ips" => "floating-ips",
            "security_groups" => "secgroups",
            "security_group_rules" => "secgroup-rules",
            other => other,
        };
        map.insert(name.to_string(), r["Limit"].clone());
    }
    serde_json::Value::Object(map)
}

/// Whether the CLI's help for `args` mentions `flag` (options newer clients added).
pub fn cli_has_flag(args: &[&str], flag: &str) -> bool {
    let mut a = args.to_vec();
    a.push("--help");
    Command::new(cli())
        .args(&a)
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains(flag))
}

/// Runs `openstack ARGS`, asserting failure; returns stderr.
pub fn fails(env: &[(String, String)], args: &[&str]) -> String {
    let out = openstack(env, args);
    assert!(
        !out.status.success(),
        "openstack {args:?} succeeded but should not:\n{}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// `subnet create --network NETWORK --subnet-range CIDR [EXTRA] NAME`: the subnet.
pub fn subnet(
    env: &[(String, String)],
    network: &str,
    cidr: &str,
    name: &str,
    extra: &[&str],
) -> serde_json::Value {
    let mut args = vec![
        "subnet",
        "create",
        "--network",
        network,
        "--subnet-range",
        cidr,
    ];
    args.extend(extra);
    args.push(name);
    ok_json(env, &args)
}

/// The arguments of `server create --image IMAGE --flavor FLAVOR [EXTRA] NAME`.
pub fn server_create<'a>(
    image: &'a str,
    flavor: &'a str,
    extra: &[&'a str],
    name: &'a str,
) -> Vec<&'a str> {
    let mut args = vec!["server", "create", "--image", image, "--flavor", flavor];
    args.extend(extra);
    args.push(name);
    args
}

/// `image create --file FILE` of a raw, bare image `[EXTRA] NAME`: the image.
pub fn image(
    env: &[(String, String)],
    file: &Path,
    name: &str,
    extra: &[&str],
) -> serde_json::Value {
    let mut args = vec!["image", "create", "--file", file.to_str().unwrap()];
    args.extend(["--disk-format", "raw", "--container-format", "bare"]);
    args.extend(extra);
    args.push(name);
    ok_json(env, &args)
}

/// A bootable pair of images made of random bytes in `dir`: `kernel`, and `disk` whose
/// `kernel_id` names it. Returns the kernel image.
pub fn boot_images(env: &[(String, String)], dir: &Path) -> serde_json::Value {
    let kernel = image(env, &random_file(dir, "kernel", 4096), "kernel", &[]);
    let kid = format!("kernel_id={}", kernel["id"].as_str().unwrap());
    let disk = random_file(dir, "disk", 8192);
    image(env, &disk, "disk", &["--property", &kid]);
    kernel
}

/// A raw HTTP answer.
pub struct Answer {
    /// Status code.
    pub status: u16,
    /// Headers, names lowercased.
    pub headers: Vec<(String, String)>,
    /// Body bytes.
    pub body: Vec<u8>,
}

impl Answer {
    /// A header value.
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
    /// Body as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.text()))
    }
}

/// One HTTP/1.1 request on a fresh connection (`Connection: close`).
pub fn http(port: u16, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Answer {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut req =
        format!("{method} {path} HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\nconnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    if !headers
        .iter()
        .any(|(k, _)| k.eq_ignore_ascii_case("transfer-encoding"))
    {
        req.push_str(&format!("content-length: {}\r\n", body.len()));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).unwrap();
    // The server may answer (413) before reading everything; ignore a reset here.
    let _ = s.write_all(body);
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    parse_answer(&raw, method == "HEAD")
}

fn parse_answer(raw: &[u8], head: bool) -> Answer {
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no HTTP answer: {:?}", String::from_utf8_lossy(raw)));
    let head_text = String::from_utf8_lossy(&raw[..end]).into_owned();
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
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let mut body = raw[end + 4..].to_vec();
    if head {
        body.clear();
    } else if headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.contains("chunked"))
    {
        body = dechunk(&body);
    }
    Answer {
        status,
        headers,
        body,
    }
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(eol) = b.windows(2).position(|w| w == b"\r\n") {
        let n = usize::from_str_radix(String::from_utf8_lossy(&b[..eol]).trim(), 16).unwrap_or(0);
        if n == 0 {
            break;
        }
        out.extend_from_slice(&b[eol + 2..eol + 2 + n]);
        b = &b[eol + 2 + n + 2..];
    }
    out
}

/// A file of `len` pseudo-random bytes in `dir`.
pub fn random_file(dir: &Path, name: &str, len: usize) -> PathBuf {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15 ^ len as u64;
    let data: Vec<u8> = (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    let p = dir.join(name);
    std::fs::write(&p, data).unwrap();
    p
}

/// The names of the roles in a token body, sorted.
pub fn role_names(token_body: &serde_json::Value) -> Vec<String> {
    let mut names: Vec<String> = token_body["token"]["roles"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|r| r["name"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// A field of a CLI `show` as Debian's client (`id`, `access_rules`) or newer ones (`ID`,
/// `Access Rules`) print it; null when absent.
pub fn field<'a>(v: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    let cap = name
        .split('_')
        .map(|w| {
            let mut c = w.chars();
            c.next()
                .map(|f| f.to_uppercase().chain(c).collect::<String>())
                .unwrap_or_default()
        })
        .collect::<Vec<_>>()
        .join(" ");
    let upper = name.to_uppercase();
    [name, upper.as_str(), cap.as_str()]
        .iter()
        .find_map(|k| v.get(*k))
        .unwrap_or(&serde_json::Value::Null)
}
