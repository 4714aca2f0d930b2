//! The stock `openstack` CLI against a real control and objectd.

mod common;

use common::*;

#[test]
fn identity_with_the_openstack_cli() {
    if !have_cli() {
        return;
    }
    let cloud = Cloud::start();
    let admin = cloud.admin();

    let t = ok_json(&admin, &["token", "issue"]);
    assert_eq!(t["project_id"].as_str().unwrap().len(), 32);
    assert!(t["id"].as_str().unwrap().len() > 40);

    let catalog = ok_json(&admin, &["catalog", "list"]);
    let types: Vec<&str> = catalog
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["Type"].as_str().unwrap())
        .collect();
    for ty in ["identity", "image", "object-store"] {
        assert!(types.contains(&ty), "{ty} missing from {types:?}");
    }

    let endpoints = ok_json(&admin, &["endpoint", "list", "--service", "image"]);
    assert_eq!(endpoints.as_array().unwrap().len(), 3, "{endpoints}");
    assert!(endpoints[0]["URL"].as_str().unwrap().ends_with("/image"));
    let domain = ok_json(
        &admin,
        &["domain", "create", "--description", "second", "dom2"],
    );
    assert_eq!(domain["name"], "dom2");

    let demo = ok_json(
        &admin,
        &["project", "create", "--description", "demo project", "demo"],
    );
    let demo_id = demo["id"].as_str().unwrap().to_string();
    ok_json(&admin, &["project", "create", "other"]);
    let projects = ok_json(&admin, &["project", "list"]);
    let names: Vec<&str> = projects
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["Name"].as_str().unwrap())
        .collect();
    assert!(names.contains(&"demo") && names.contains(&"other") && names.contains(&"admin"));
    assert_eq!(
        ok_json(&admin, &["project", "show", "demo"])["description"],
        "demo project"
    );
    let dup = fails(&admin, &["project", "create", "demo"]);
    assert!(dup.contains("409") || dup.contains("Conflict"), "{dup}");
    // Each of those nine commands logged in with the password again; only the first
    // login was an Argon2 check, the others matched the remembered verified password.
    let metrics = cloud.req("GET", "/metrics", None, &[], b"").text();
    let checks = |what: &str| -> u64 {
        let prefix = format!("ferrostack_control_password_checks_total{{outcome=\"{what}\"}} ");
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(prefix.as_str()))
            .unwrap()
            .parse()
            .unwrap()
    };
    assert_eq!(checks("hashed"), 1, "{metrics}");
    assert!(checks("cached") >= 8, "{metrics}");

    let alice = ok_json(
        &admin,
        &[
            "user",
            "create",
            "--password",
            "alice-pw",
            "--email",
            "alice@example.com",
            "alice",
        ],
    );
    assert_eq!(alice["email"], "alice@example.com");
    ok(&admin, &["user", "create", "--password", "bob-pw", "bob"]);
    let users = ok_json(&admin, &["user", "list"]);
    assert!(
        users
            .as_array()
            .unwrap()
            .iter()
            .any(|u| u["Name"] == "alice")
    );
    ok(
        &admin,
        &[
            "role",
            "add",
            "--project",
            "demo",
            "--user",
            "alice",
            "member",
        ],
    );
    ok(
        &admin,
        &[
            "role",
            "add",
            "--project",
            "other",
            "--user",
            "bob",
            "reader",
        ],
    );
    let ra = ok_json(
        &admin,
        &["role", "assignment", "list", "--user", "alice", "--names"],
    );
    assert_eq!(ra[0]["Role"], "member");
    assert_eq!(ra[0]["Project"], "demo@Default");

    // alice works in demo with her own token; her roles include the implied reader.
    let alice_env = cloud.env("alice", "alice-pw", "demo");
    let at = ok_json(&alice_env, &["token", "issue"]);
    assert_eq!(at["project_id"], demo_id.as_str());
    // Non-admins may not list users or create projects.
    let e = fails(&alice_env, &["user", "list"]);
    assert!(e.contains("403") || e.contains("not authorized"), "{e}");
    fails(&alice_env, &["project", "create", "mine"]);
    // Her own projects only.
    let mine = ok_json(&alice_env, &["project", "list"]);
    assert_eq!(mine.as_array().unwrap().len(), 1, "{mine}");

    // Wrong password and unknown user: both 401.
    let e = fails(&cloud.env("alice", "wrong", "demo"), &["token", "issue"]);
    assert!(e.contains("401"), "{e}");
    let e = fails(
        &cloud.env("nobody", "alice-pw", "demo"),
        &["token", "issue"],
    );
    assert!(e.contains("401"), "{e}");
    // No role on the project: 401.
    let e = fails(
        &cloud.env("alice", "alice-pw", "other"),
        &["token", "issue"],
    );
    assert!(e.contains("401"), "{e}");

    // Application credential: create as alice, authenticate with it.
    let ac = ok_json(&alice_env, &["application", "credential", "create", "ci"]);
    let text = |k: &str| -> String {
        field(&ac, k)
            .as_str()
            .unwrap_or_else(|| panic!("{k} missing from {ac}"))
            .to_string()
    };
    let (ac_id, ac_secret) = (text("id"), text("secret"));
    let ac_env = cloud.app_cred_env(&ac_id, &ac_secret);
    let t = ok_json(&ac_env, &["token", "issue"]);
    assert_eq!(t["project_id"], demo_id.as_str());
    let bad = cloud.app_cred_env(&ac_id, "not-the-secret");
    assert!(fails(&bad, &["token", "issue"]).contains("401"));
    ok(&alice_env, &["application", "credential", "delete", "ci"]);
    assert!(fails(&ac_env, &["token", "issue"]).contains("401"));

    // Token revoke: the revoked token no longer authenticates.
    let t = ok_json(&alice_env, &["token", "issue"]);
    let tok = t["id"].as_str().unwrap().to_string();
    let token_env: Vec<(String, String)> = [
        ("OS_AUTH_URL", format!("{}/v3", cloud.url())),
        ("OS_AUTH_TYPE", "v3token".into()),
        ("OS_TOKEN", tok.clone()),
        ("OS_PROJECT_ID", demo_id.clone()),
        ("OS_IDENTITY_API_VERSION", "3".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    ok_json(&token_env, &["token", "issue"]);
    ok(&alice_env, &["token", "revoke", &tok]);
    assert!(fails(&token_env, &["token", "issue"]).contains("401"));

    // Removing the role ends alice's access.
    ok(
        &admin,
        &[
            "role",
            "remove",
            "--project",
            "demo",
            "--user",
            "alice",
            "member",
        ],
    );
    assert!(fails(&alice_env, &["token", "issue"]).contains("401"));
    ok(&admin, &["user", "delete", "bob"]);
    let e = fails(&admin, &["user", "show", "bob"]);
    assert!(e.to_lowercase().contains("no user"), "{e}");
}

#[test]
fn images_with_the_openstack_cli() {
    if !have_cli() {
        return;
    }
    let cloud = Cloud::start();
    let admin = cloud.admin();
    ok(&admin, &["project", "create", "demo"]);
    ok(
        &admin,
        &["user", "create", "--password", "alice-pw", "alice"],
    );
    ok(
        &admin,
        &[
            "role",
            "add",
            "--project",
            "demo",
            "--user",
            "alice",
            "member",
        ],
    );
    let alice = cloud.env("alice", "alice-pw", "demo");

    let file = random_file(cloud.dir.path(), "disk.raw", 3 * 1024 * 1024 + 17);
    let img = ok_json(
        &admin,
        &[
            "image",
            "create",
            "--file",
            file.to_str().unwrap(),
            "--disk-format",
            "raw",
            "--container-format",
            "bare",
            "--property",
            "kernel_id=k-123",
            "--tag",
            "boot",
            "guest",
        ],
    );
    let id = img["id"].as_str().unwrap().to_string();
    let shown = ok_json(&admin, &["image", "show", "guest"]);
    assert_eq!(shown["status"], "active");
    assert_eq!(shown["size"], 3 * 1024 * 1024 + 17);
    let md5 = shown["checksum"].as_str().unwrap();
    assert_eq!(md5.len(), 32);
    let props = &shown["properties"];
    assert_eq!(props["os_hash_algo"], "sha512");
    assert_eq!(props["os_hash_value"].as_str().unwrap().len(), 128);
    assert_eq!(props["kernel_id"], "k-123");

    let list = ok_json(&admin, &["image", "list"]);
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert_eq!(list[0]["ID"], id.as_str());

    // Download: bytes equal (the client also checks the recorded hashes).
    let out = cloud.dir.path().join("saved.raw");
    ok(
        &admin,
        &["image", "save", "--file", out.to_str().unwrap(), "guest"],
    );
    assert_eq!(std::fs::read(&out).unwrap(), std::fs::read(&file).unwrap());

    ok(
        &admin,
        &[
            "image",
            "set",
            "--property",
            "ramdisk_id=r-456",
            "--min-ram",
            "64",
            "guest",
        ],
    );
    let shown = ok_json(&admin, &["image", "show", "guest"]);
    assert_eq!(shown["properties"]["ramdisk_id"], "r-456");
    assert_eq!(shown["min_ram"], 64);
    ok(
        &admin,
        &["image", "unset", "--property", "ramdisk_id", "guest"],
    );
    let shown = ok_json(&admin, &["image", "show", "guest"]);
    assert!(shown["properties"].get("ramdisk_id").is_none(), "{shown}");

    // Another project's member sees none of it.
    assert_eq!(
        ok_json(&alice, &["image", "list"])
            .as_array()
            .unwrap()
            .len(),
        0
    );
    let e = fails(&alice, &["image", "show", &id]);
    assert!(e.contains("No Image found") || e.contains("404"), "{e}");
    // (The wording differs between client versions: newer ones say "Multi Backend support
    // not enabled." for any 404 on delete.)
    fails(&alice, &["image", "delete", &id]);
    assert_eq!(ok_json(&admin, &["image", "show", &id])["status"], "active");
    // alice's own image: visible to her, invisible to no one with admin.
    let small = random_file(cloud.dir.path(), "small.raw", 1000);
    ok(
        &alice,
        &[
            "image",
            "create",
            "--file",
            small.to_str().unwrap(),
            "--disk-format",
            "raw",
            "--container-format",
            "bare",
            "mine",
        ],
    );
    assert_eq!(
        ok_json(&alice, &["image", "list"])
            .as_array()
            .unwrap()
            .len(),
        1
    );
    // A public image is visible to everyone, but only its owner may change it.
    ok(&admin, &["image", "set", "--public", "guest"]);
    let names: Vec<String> = ok_json(&alice, &["image", "list"])
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["Name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names.len(), 2, "{names:?}");
    fails(&alice, &["image", "set", "--property", "x=y", "guest"]);
    fails(&alice, &["image", "set", "--public", "mine"]);

    ok(&admin, &["image", "delete", "guest"]);
    assert!(fails(&admin, &["image", "show", &id]).contains("No Image found"));
    // The data is gone from objectd too: nothing but alice's image remains stored.
    let stored = count_files(&cloud.dir.path().join("objectd"));
    assert!(
        stored < 3 * 1024 * 1024,
        "objectd still holds {stored} bytes"
    );
}

#[test]
fn images_are_deactivated_and_reactivated_with_the_openstack_cli() {
    if !have_cli() {
        return;
    }
    let cloud = Cloud::start();
    let admin = cloud.admin();
    let member = cloud.member("owners", "owner", "owner-pw");
    let other = cloud.member("others", "other", "other-pw");
    let file = random_file(cloud.dir.path(), "deact.raw", 100_000);
    let id = image(&member, &file, "frozen", &[])["id"]
        .as_str()
        .unwrap()
        .to_string();
    let saved = cloud.dir.path().join("saved.raw");
    let save = |env: &[(String, String)]| {
        openstack(
            env,
            &["image", "save", "--file", saved.to_str().unwrap(), &id],
        )
    };

    // The owner deactivates it: its data is refused to the owner, handed to an admin, and
    // nothing boots from it.
    ok(&member, &["image", "set", "--deactivate", "frozen"]);
    assert_eq!(
        ok_json(&member, &["image", "show", "frozen"])["status"],
        "deactivated"
    );
    // (Debian's client says only "InvalidResponse": the message is checked over HTTP.)
    assert!(!save(&member).status.success());
    let (token, _) = cloud.token("owner", "owner-pw", "owners");
    let data = format!("/image/v2/images/{id}/file");
    let refused = cloud.req("GET", &data, Some(&token), &[], b"");
    assert_eq!(refused.status, 403, "{}", refused.text());
    assert!(refused.text().contains("deactivated"), "{}", refused.text());
    assert!(save(&admin).status.success());
    assert_eq!(
        std::fs::read(&saved).unwrap(),
        std::fs::read(&file).unwrap()
    );
    let flavor = ok_json(
        &admin,
        &[
            "flavor", "create", "--ram", "64", "--disk", "1", "--vcpus", "1", "tiny",
        ],
    );
    let boot = cloud.json(
        "POST",
        "/compute/v2.1/servers",
        Some(&token),
        &serde_json::json!({"server": {"name": "no", "imageRef": id,
                                       "flavorRef": flavor["id"], "networks": "none"}}),
    );
    assert_eq!(boot.status, 400, "{}", boot.text());
    assert!(boot.text().contains("is not active"), "{}", boot.text());
    // Deactivating again changes nothing; another project cannot touch it; a queued
    // image cannot be deactivated.
    ok(&member, &["image", "set", "--deactivate", &id]);
    fails(&other, &["image", "set", "--activate", &id]);
    let (theirs, _) = cloud.token("other", "other-pw", "others");
    let action = format!("/image/v2/images/{id}/actions/reactivate");
    let r = cloud.req("POST", &action, Some(&theirs), &[], b"");
    assert_eq!(r.status, 404, "{}", r.text());
    // (Over HTTP: a CLI without --file uploads its empty stdin, and the SDK behind both
    // clients ignores the answer to an image action.)
    let queued = cloud.json(
        "POST",
        "/image/v2/images",
        Some(&token),
        &serde_json::json!({"name": "empty", "disk_format": "raw", "container_format": "bare"}),
    );
    assert_eq!(queued.status, 201, "{}", queued.text());
    let refused = cloud.req(
        "POST",
        &format!(
            "/image/v2/images/{}/actions/deactivate",
            queued.json()["id"].as_str().unwrap()
        ),
        Some(&token),
        &[],
        b"",
    );
    assert_eq!(refused.status, 400, "{}", refused.text());
    assert!(
        refused.text().contains("status 'queued'"),
        "{}",
        refused.text()
    );

    // Reactivated, it is downloaded again.
    ok(&member, &["image", "set", "--activate", &id]);
    assert_eq!(
        ok_json(&member, &["image", "show", &id])["status"],
        "active"
    );
    std::fs::remove_file(&saved).unwrap();
    assert!(save(&member).status.success());
    assert_eq!(
        std::fs::read(&saved).unwrap(),
        std::fs::read(&file).unwrap()
    );
}

fn count_files(dir: &std::path::Path) -> u64 {
    let mut total = 0;
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let m = e.metadata().unwrap();
            if m.is_dir() {
                total += count_files(&e.path());
            } else if !e.file_name().to_string_lossy().contains("index") {
                total += m.len();
            }
        }
    }
    total
}

/// A 3 MiB raw disk holding 1 MiB of random data, and the same as a (sparse) qcow2.
fn sparse_qcow2(dir: &std::path::Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let raw = random_file(dir, "src.raw", 1024 * 1024);
    let f = std::fs::OpenOptions::new().write(true).open(&raw).unwrap();
    f.set_len(3 * 1024 * 1024).unwrap();
    drop(f);
    let qcow = dir.join("src.qcow2");
    let st = std::process::Command::new("qemu-img")
        .args(["convert", "-f", "raw", "-O", "qcow2"])
        .arg(&raw)
        .arg(&qcow)
        .status()
        .expect("qemu-img (scripts/setup installs qemu-utils)");
    assert!(st.success());
    (raw, qcow)
}

/// `openstack image show` until `done` says so (or a minute passed); the last answer.
fn image_until(
    env: &[(String, String)],
    image: &str,
    done: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let s = ok_json(env, &["image", "show", image]);
        if done(&s) || std::time::Instant::now() > deadline {
            return s;
        }
        std::thread::sleep(std::time::Duration::from_millis(300));
    }
}

/// Runs Debian's `glance` client (python3-glanceclient comes with the openstack client)
/// with an environment, asserting success; its stdout.
fn glance(env: &[(String, String)], args: &[&str]) -> String {
    let out = client("glance", env, args);
    assert!(
        out.status.success(),
        "glance {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Serves `files` (path, bytes) over HTTP/1.1 on loopback for the rest of the test (404
/// for other paths); its port.
fn serve_files(files: Vec<(&'static str, Vec<u8>)>) -> u16 {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut c) = conn else { continue };
            let mut head = Vec::new();
            let mut b = [0u8; 1024];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                match c.read(&mut b) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => head.extend_from_slice(&b[..n]),
                }
            }
            let text = String::from_utf8_lossy(&head);
            let path = text.split_whitespace().nth(1).unwrap_or("").to_string();
            let _ = match files.iter().find(|(p, _)| *p == path) {
                Some((_, data)) => write!(
                    c,
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                    data.len()
                )
                .and_then(|()| c.write_all(data)),
                None => c.write_all(
                    b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                ),
            };
        }
    });
    port
}

#[test]
fn images_are_imported_from_a_url_with_the_stock_clients() {
    if !have_cli() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (raw, qcow) = sparse_qcow2(dir.path());
    let port = serve_files(vec![("/disk.qcow2", std::fs::read(&qcow).unwrap())]);
    let cloud = Cloud::start_with("", "", &format!("web-download-ports = [{port}]"));
    let member = cloud.member("web", "webber", "web-pw");
    let url = format!("http://127.0.0.1:{port}/disk.qcow2");

    // Into a queued image: with the newest openstack client, or, as Debian's has no such
    // command, with its glance client.
    let (token, _) = cloud.token("webber", "web-pw", "web");
    let made = cloud.json(
        "POST",
        "/image/v2/images",
        Some(&token),
        &serde_json::json!({"name": "fetched", "disk_format": "qcow2",
                            "container_format": "bare"}),
    );
    assert_eq!(made.status, 201, "{}", made.text());
    let fetched = made.json()["id"].as_str().unwrap().to_string();
    if cli_has_flag(&["image", "import"], "--uri") {
        let args = [
            "image",
            "import",
            "--method",
            "web-download",
            "--uri",
            &url,
            &fetched,
        ];
        ok(&member, &args);
    } else {
        glance(
            &member,
            &[
                "image-import",
                "--import-method",
                "web-download",
                "--uri",
                &url,
                &fetched,
            ],
        );
    }
    let shown = image_until(&member, "fetched", |s| s["status"] == "active");
    assert_eq!(shown["status"], "active", "{shown}");
    assert_eq!(
        shown["disk_format"], "raw",
        "converted as on any import: {shown}"
    );
    assert_eq!(shown["size"], 3 * 1024 * 1024);
    let out = cloud.dir.path().join("fetched.raw");
    ok(
        &member,
        &["image", "save", "--file", out.to_str().unwrap(), "fetched"],
    );
    assert_eq!(std::fs::read(&out).unwrap(), std::fs::read(&raw).unwrap());

    // Over HTTP: what is refused at once, and a download that fails later.
    let queued = cloud.json(
        "POST",
        "/image/v2/images",
        Some(&token),
        &serde_json::json!({"name": "missing", "disk_format": "qcow2", "container_format": "bare"}),
    );
    let id = queued.json()["id"].as_str().unwrap().to_string();
    let import = |uri: &str| {
        cloud.json(
            "POST",
            &format!("/image/v2/images/{id}/import"),
            Some(&token),
            &serde_json::json!({"method": {"name": "web-download", "uri": uri}}),
        )
    };
    for (uri, words) in [
        (
            format!("https://127.0.0.1:{port}/disk.qcow2"),
            "http URIs only",
        ),
        (
            "http://127.0.0.1:1/disk.qcow2".to_string(),
            "port 1 is not allowed",
        ),
        ("ftp://127.0.0.1/x".to_string(), "not an http URI"),
    ] {
        let r = import(&uri);
        assert_eq!(r.status, 400, "{uri}: {}", r.text());
        assert!(r.text().contains(words), "{uri}: {}", r.text());
    }
    let r = import(&format!("http://127.0.0.1:{port}/nothing-here"));
    assert_eq!(r.status, 202, "{}", r.text());
    let shown = image_until(&member, &id, |s| {
        s["properties"].get("os_glance_failed_import").is_some()
    });
    assert_eq!(shown["status"], "queued", "{shown}");
    assert_eq!(
        shown["properties"]["os_glance_failed_import"],
        "web-download"
    );
    // An active image imports nothing more.
    let r = cloud.json(
        "POST",
        &format!("/image/v2/images/{fetched}/import"),
        Some(&token),
        &serde_json::json!({"method": {"name": "web-download", "uri": url}}),
    );
    assert_eq!(r.status, 409, "{}", r.text());

    // Each import is a Glance task: the image's own for its project's members, all of
    // them for admins.
    let tasks_of = |image: &str| {
        let r = cloud.req(
            "GET",
            &format!("/image/v2/images/{image}/tasks"),
            Some(&token),
            &[],
            b"",
        );
        assert_eq!(r.status, 200, "{}", r.text());
        r.json()["tasks"].as_array().unwrap().clone()
    };
    let done = tasks_of(&fetched);
    assert_eq!(done.len(), 1, "{done:?}");
    assert_eq!(done[0]["status"], "success", "{done:?}");
    assert_eq!(done[0]["type"], "api_image_import");
    assert_eq!(done[0]["result"]["image_id"], fetched.as_str());
    assert_eq!(
        done[0]["input"]["import_req"]["method"]["uri"],
        url.as_str()
    );
    assert!(done[0]["request_id"].as_str().unwrap().starts_with("req-"));
    let failed = tasks_of(&id);
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert_eq!(failed[0]["status"], "failure", "{failed:?}");
    assert!(
        failed[0]["message"].as_str().unwrap().contains("404"),
        "{failed:?}"
    );
    let r = cloud.req("GET", "/image/v2/tasks", Some(&token), &[], b"");
    assert_eq!(r.status, 403, "{}", r.text());
    let admin = cloud.admin();
    let failed_id = failed[0]["id"].as_str().unwrap().to_string();
    if cli_has_flag(&["image", "task", "list"], "--status") {
        let listed = ok_json(&admin, &["image", "task", "list", "--status", "failure"]);
        assert_eq!(listed.as_array().unwrap().len(), 1, "{listed}");
        assert_eq!(listed[0]["ID"], failed_id.as_str(), "{listed}");
        let shown = ok_json(&admin, &["image", "task", "show", &failed_id]);
        assert_eq!(shown["status"], "failure", "{shown}");
        assert!(
            shown["message"].as_str().unwrap().contains("404"),
            "{shown}"
        );
    } else {
        let text = glance(&admin, &["task-list", "--status", "failure"]);
        assert!(text.contains(&failed_id), "{text}");
        assert!(!text.contains(done[0]["id"].as_str().unwrap()), "{text}");
    }
    // An image's tasks go with it.
    ok(&member, &["image", "delete", &id]);
    let (admin_token, _) = cloud.token("admin", ADMIN_PASSWORD, "admin");
    let r = cloud.req(
        "GET",
        &format!("/image/v2/tasks/{failed_id}"),
        Some(&admin_token),
        &[],
        b"",
    );
    assert_eq!(r.status, 404, "{}", r.text());
}

#[test]
fn image_import_converts_qcow2_to_raw() {
    if !have_cli() {
        return;
    }
    let cloud = Cloud::start();
    let admin = cloud.admin();
    let (raw, qcow) = sparse_qcow2(cloud.dir.path());
    ok(
        &admin,
        &[
            "image",
            "create",
            "--import",
            "--file",
            qcow.to_str().unwrap(),
            "--disk-format",
            "qcow2",
            "--container-format",
            "bare",
            "imported",
        ],
    );
    let shown = image_until(&admin, "imported", |s| s["status"] == "active");
    assert_eq!(shown["status"], "active", "{shown}");
    assert_eq!(shown["disk_format"], "raw");
    assert_eq!(shown["size"], 3 * 1024 * 1024);
    assert_eq!(shown["virtual_size"], 3 * 1024 * 1024);
    let out = cloud.dir.path().join("saved.raw");
    ok(
        &admin,
        &["image", "save", "--file", out.to_str().unwrap(), "imported"],
    );
    assert_eq!(std::fs::read(&out).unwrap(), std::fs::read(&raw).unwrap());

    // Data that is not what the image claims: the import fails and the image is queued.
    ok(
        &admin,
        &[
            "image",
            "create",
            "--import",
            "--file",
            raw.to_str().unwrap(),
            "--disk-format",
            "qcow2",
            "--container-format",
            "bare",
            "liar",
        ],
    );
    let shown = image_until(&admin, "liar", |s| {
        s["properties"].get("os_glance_failed_import").is_some()
    });
    assert_eq!(shown["status"], "queued", "{shown}");
    assert_eq!(
        shown["properties"]["os_glance_failed_import"],
        "glance-direct"
    );
}

/// The CLI environment of `user` scoped to the system (`--os-system-scope all`).
fn system_env(cloud: &Cloud, user: &str, password: &str) -> Vec<(String, String)> {
    cloud.env_scoped_by(user, password, ("OS_SYSTEM_SCOPE", "all"))
}

#[test]
fn system_scope_with_the_openstack_cli() {
    if !have_cli() {
        return;
    }
    let cloud = Cloud::start();
    let admin = cloud.admin();
    // bootstrap made the admin an admin of the system too, as Keystone's does.
    let sys_admin = system_env(&cloud, "admin", ADMIN_PASSWORD);
    let t = ok_json(&sys_admin, &["token", "issue"]);
    assert!(t.get("project_id").is_none_or(|p| p.is_null()), "{t}");
    ok(&sys_admin, &["project", "create", "from-system"]);
    let ra = ok_json(
        &sys_admin,
        &["role", "assignment", "list", "--system", "all", "--names"],
    );
    assert_eq!(ra.as_array().unwrap().len(), 1, "{ra}");
    assert_eq!(ra[0]["Role"], "admin");
    assert_eq!(ra[0]["User"], "admin@Default");
    assert_eq!(ra[0]["System"], "all");

    // A reader of the system: may issue a system token, may not change anything.
    ok(
        &admin,
        &["user", "create", "--password", "carol-pw", "carol"],
    );
    let carol = system_env(&cloud, "carol", "carol-pw");
    let e = fails(&carol, &["token", "issue"]);
    assert!(e.contains("401"), "no role on the system yet: {e}");
    ok(
        &admin,
        &[
            "role", "add", "--system", "all", "--user", "carol", "reader",
        ],
    );
    ok_json(&carol, &["token", "issue"]);
    let e = fails(&carol, &["project", "create", "nope"]);
    assert!(e.contains("403") || e.contains("not authorized"), "{e}");
    let ra = ok_json(
        &admin,
        &[
            "role",
            "assignment",
            "list",
            "--system",
            "all",
            "--user",
            "carol",
            "--names",
        ],
    );
    assert_eq!(ra[0]["Role"], "reader", "{ra}");

    // Over HTTP: the token says system all, with the roles (reader only for carol).
    let body = serde_json::json!({"auth": {"identity": {"methods": ["password"],
        "password": {"user": {"name": "carol", "domain": {"id": "default"}, "password": "carol-pw"}}},
        "scope": {"system": {"all": true}}}});
    let r = cloud.json("POST", "/v3/auth/tokens", None, &body);
    assert_eq!(r.status, 201, "{}", r.text());
    let tok = r.json();
    assert_eq!(tok["token"]["system"], serde_json::json!({"all": true}));
    let roles: Vec<&str> = tok["token"]["roles"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert_eq!(roles, ["reader"]);
    assert!(tok["token"].get("project").is_none());
    let mut bad = body.clone();
    bad["auth"]["scope"]["system"] = serde_json::json!({"all": false});
    assert_eq!(
        cloud.json("POST", "/v3/auth/tokens", None, &bad).status,
        400
    );

    // Removing the role ends it (and revokes carol's tokens).
    ok(
        &admin,
        &[
            "role", "remove", "--system", "all", "--user", "carol", "reader",
        ],
    );
    assert!(fails(&carol, &["token", "issue"]).contains("401"));
}
