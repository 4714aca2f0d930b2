//! control's HTTP API on bad input, tokens over their life, restarts, and isolation
//! between projects, with raw HTTP (what a client sees byte for byte).

mod common;

use common::*;
use serde_json::{Value, json};

fn auth_body(user: &str, password: &str) -> serde_json::Value {
    json!({"auth": {"identity": {"methods": ["password"],
        "password": {"user": {"name": user, "domain": {"id": "default"}, "password": password}}},
        "scope": {"project": {"name": "admin", "domain": {"id": "default"}}}}})
}

#[test]
fn bad_requests_are_refused_and_change_nothing() {
    let cloud = Cloud::start_with("max-request-body = 4096", "", "");
    let (admin, _) = cloud.token("admin", ADMIN_PASSWORD, "admin");

    // Version discovery.
    let r = cloud.req("GET", "/", None, &[], b"");
    assert_eq!(r.status, 300);
    // Every answer carries its own request id, as OpenStack services send one.
    let ids: Vec<String> = ["/", "/v3", "/image", "/network", "/volume", "/compute"]
        .iter()
        .map(|p| {
            let r = cloud.req("GET", p, None, &[], b"");
            let id = r.header("x-openstack-request-id").unwrap_or_default();
            assert!(
                id.len() == 40 && id.starts_with("req-"),
                "{p}: request id {id:?}"
            );
            id.to_string()
        })
        .collect();
    let distinct: std::collections::BTreeSet<&String> = ids.iter().collect();
    assert_eq!(distinct.len(), ids.len(), "{ids:?}");
    assert_eq!(r.json()["versions"]["values"][0]["id"], "v3.14");
    assert_eq!(
        cloud.req("GET", "/v3", None, &[], b"").json()["version"]["status"],
        "stable"
    );
    let r = cloud.req("GET", "/image", None, &[], b"");
    assert_eq!(r.status, 300);
    assert!(
        r.json()["versions"][0]["links"][0]["href"]
            .as_str()
            .unwrap()
            .ends_with("/image/v2/")
    );
    // As Glance: the same list at /versions, but 200 (glanceclient asks there first).
    let v = cloud.req("GET", "/image/versions", None, &[], b"");
    assert_eq!(v.status, 200);
    assert_eq!(v.json(), r.json());

    // Malformed JSON, unknown fields, wrong shapes: 400 with a reason.
    let r = cloud.req(
        "POST",
        "/v3/auth/tokens",
        None,
        &[("content-type", "application/json")],
        b"{\"auth\": ",
    );
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"]["code"], 400);
    assert!(
        r.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("invalid JSON")
    );
    let mut b = auth_body("admin", ADMIN_PASSWORD);
    b["auth"]["identiti"] = json!({});
    let r = cloud.json("POST", "/v3/auth/tokens", None, &b);
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.text().contains("identiti"));
    let r = cloud.json(
        "POST",
        "/v3/projects",
        Some(&admin),
        &json!({"project": {"name": "p"}, "extra": 1}),
    );
    assert_eq!(r.status, 400);
    let r = cloud.json(
        "POST",
        "/v3/projects",
        Some(&admin),
        &json!({"projects": {"name": "p"}}),
    );
    assert_eq!(r.status, 400);
    let r = cloud.json(
        "POST",
        "/v3/projects",
        Some(&admin),
        &json!({"project": {"name": 7}}),
    );
    assert_eq!(r.status, 400);
    let r = cloud.json(
        "POST",
        "/v3/roles",
        Some(&admin),
        &json!({"role": {"name": "r", "colour": "red"}}),
    );
    assert_eq!(r.status, 400);
    let r = cloud.json(
        "POST",
        "/v3/projects",
        Some(&admin),
        &json!({"project": {"name": ""}}),
    );
    assert_eq!(r.status, 400);

    // Oversize body: 413, by header and by streamed length.
    let big = vec![b' '; 10_000];
    let r = cloud.req(
        "POST",
        "/v3/projects",
        Some(&admin),
        &[("content-type", "application/json")],
        &big,
    );
    assert_eq!(r.status, 413);
    assert_eq!(r.json()["error"]["code"], 413);
    let mut chunked = format!("{:x}\r\n", big.len()).into_bytes();
    chunked.extend_from_slice(&big);
    chunked.extend_from_slice(b"\r\n0\r\n\r\n");
    let r = cloud.req(
        "POST",
        "/v3/projects",
        Some(&admin),
        &[
            ("content-type", "application/json"),
            ("transfer-encoding", "chunked"),
        ],
        &chunked,
    );
    assert_eq!(r.status, 413);

    // Nothing was created by any of that.
    let r = cloud.req("GET", "/v3/projects", Some(&admin), &[], b"");
    let j = r.json();
    let mut names: Vec<&str> = j["projects"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["admin", "service"]);

    // No token, garbage token: 401 with Keystone's shape.
    let r = cloud.req("GET", "/v3/users", None, &[], b"");
    assert_eq!(r.status, 401);
    assert!(r.header("www-authenticate").is_some());
    let r = cloud.req("GET", "/v3/users", Some("gAAAAAbogus"), &[], b"");
    assert_eq!(r.status, 401);
    assert_eq!(r.json()["error"]["title"], "Unauthorized");
    // Unknown resource: 404.
    assert_eq!(
        cloud
            .req("GET", "/v3/nothing", Some(&admin), &[], b"")
            .status,
        404
    );
    assert_eq!(
        cloud
            .req("GET", "/v3/projects/nope", Some(&admin), &[], b"")
            .status,
        404
    );
}

#[test]
fn unknown_user_and_wrong_password_look_the_same() {
    let cloud = Cloud::start();
    let a = cloud.json(
        "POST",
        "/v3/auth/tokens",
        None,
        &auth_body("admin", "wrong"),
    );
    let b = cloud.json(
        "POST",
        "/v3/auth/tokens",
        None,
        &auth_body("nobody", "wrong"),
    );
    assert_eq!(a.status, 401);
    assert_eq!(b.status, 401);
    assert_eq!(a.body, b.body);
    assert!(a.header("x-subject-token").is_none());

    // Nor in time: both check an Argon2id hash with the same parameters (an unknown user
    // checks a dummy). Without the dummy an unknown user would answer in about a
    // millisecond against tens for a wrong password. Rounds interleave the two so load
    // from other tests hits both alike; medians of 9.
    let time = |user: &str| {
        let t = std::time::Instant::now();
        let r = cloud.json("POST", "/v3/auth/tokens", None, &auth_body(user, "wrong"));
        assert_eq!(r.status, 401);
        t.elapsed()
    };
    let (mut known, mut unknown) = (Vec::new(), Vec::new());
    for _ in 0..9 {
        known.push(time("admin"));
        unknown.push(time("nobody"));
    }
    known.sort();
    unknown.sort();
    let ratio = unknown[4].as_secs_f64() / known[4].as_secs_f64();
    assert!(
        (0.4..2.5).contains(&ratio),
        "unknown user {:?} vs wrong password {:?} (median)",
        unknown[4],
        known[4]
    );
}

#[test]
fn a_login_rehashes_a_password_stored_with_old_parameters() {
    use argon2::PasswordHasher;
    let cloud = Cloud::start();
    let (admin, _) = cloud.token("admin", ADMIN_PASSWORD, "admin");
    let r = cloud.json(
        "POST",
        "/v3/users",
        Some(&admin),
        &json!({"user": {"name": "olduser", "password": "old-pw"}}),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    let uid = r.json()["user"]["id"].as_str().unwrap().to_string();

    // Store a hash as an older release would have (Argon2id, 8 MiB, t=1), behind the
    // daemon's back, as a second controller on the same store would.
    let text = std::fs::read_to_string(cloud.dir.path().join("control.toml")).unwrap();
    let config = control::config::Config::from_toml(&text)
        .unwrap()
        .validate()
        .unwrap();
    let store = control::store::open(&config.raw.store).unwrap();
    let weak = argon2::Argon2::new(
        argon2::Algorithm::Argon2id,
        argon2::Version::V0x13,
        argon2::Params::new(8 * 1024, 1, 1, None).unwrap(),
    )
    .hash_password_with_salt(b"old-pw", b"fixed-salt-16byt")
    .unwrap()
    .to_string();
    let stored = |store: &control::store::SharedStore| -> String {
        let rec = store
            .get(control::store::Kind::User, &uid)
            .unwrap()
            .unwrap();
        let doc: serde_json::Value = rec.parse().unwrap();
        doc["password_hash"].as_str().unwrap().to_string()
    };
    let rec = store
        .get(control::store::Kind::User, &uid)
        .unwrap()
        .unwrap();
    let mut doc: serde_json::Value = rec.parse().unwrap();
    doc["password_hash"] = json!(weak);
    store
        .update(rec.with_doc(rec.name.as_deref(), &doc))
        .unwrap();
    // The daemon sees other controllers' writes within 2 s.
    std::thread::sleep(std::time::Duration::from_millis(2500));

    // A wrong password changes nothing.
    let r = cloud.json(
        "POST",
        "/v3/auth/tokens",
        None,
        &auth_body("olduser", "nope"),
    );
    assert_eq!(r.status, 401);
    assert_eq!(stored(&store), weak);
    // The right one logs in and leaves a hash with today's parameters behind.
    let body = json!({"auth": {"identity": {"methods": ["password"],
        "password": {"user": {"id": uid, "password": "old-pw"}}}}});
    let r = cloud.json("POST", "/v3/auth/tokens", None, &body);
    assert_eq!(r.status, 201, "{}", r.text());
    let now = stored(&store);
    assert!(
        now.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
        "rehashed: {now}"
    );
    std::thread::sleep(std::time::Duration::from_millis(2500));
    let r = cloud.json("POST", "/v3/auth/tokens", None, &body);
    assert_eq!(r.status, 201, "the new hash verifies: {}", r.text());
    assert_eq!(stored(&store), now, "rehashed once");
    let mut wrong = body.clone();
    wrong["auth"]["identity"]["password"]["user"]["password"] = json!("old-pw ");
    assert_eq!(
        cloud.json("POST", "/v3/auth/tokens", None, &wrong).status,
        401
    );
}

#[test]
fn tokens_validate_revoke_expire_and_survive_restarts() {
    let mut cloud = Cloud::start_with("", "expiry = \"3s\"\nmax-keys = 3", "");
    let (admin, body) = cloud.token("admin", ADMIN_PASSWORD, "admin");
    let t = &body["token"];
    assert_eq!(t["methods"], json!(["password"]));
    assert_eq!(t["user"]["name"], "admin");
    assert_eq!(t["project"]["name"], "admin");
    assert_eq!(t["project"]["domain"]["id"], "default");
    let roles: Vec<&str> = t["roles"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        roles,
        ["admin", "member", "reader"],
        "implied roles included"
    );
    assert!(t["catalog"].as_array().unwrap().len() >= 3);
    assert_eq!(t["audit_ids"].as_array().unwrap().len(), 1);

    // Validate (GET and HEAD) and rescope with the token method.
    let r = cloud.req(
        "GET",
        "/v3/auth/tokens",
        Some(&admin),
        &[("x-subject-token", &admin)],
        b"",
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["token"]["user"]["id"], t["user"]["id"]);
    assert_eq!(r.header("x-subject-token"), Some(admin.as_str()));
    let r = cloud.req(
        "HEAD",
        "/v3/auth/tokens",
        Some(&admin),
        &[("x-subject-token", &admin)],
        b"",
    );
    assert_eq!(r.status, 200);
    let r = cloud.req(
        "GET",
        "/v3/auth/tokens?nocatalog",
        Some(&admin),
        &[("x-subject-token", &admin)],
        b"",
    );
    assert!(r.json()["token"].get("catalog").is_none());
    let rescope = json!({"auth": {"identity": {"methods": ["token"], "token": {"id": admin}},
        "scope": {"project": {"name": "service", "domain": {"name": "Default"}}}}});
    let r = cloud.json("POST", "/v3/auth/tokens", None, &rescope);
    assert_eq!(r.status, 401, "admin has no role on service: {}", r.text());
    let rescope = json!({"auth": {"identity": {"methods": ["token"], "token": {"id": admin}},
        "scope": {"domain": {"id": "default"}}}});
    let r = cloud.json("POST", "/v3/auth/tokens", None, &rescope);
    assert_eq!(r.status, 401, "no domain role either");

    // Revoke: subject 404, use 401; survives a SIGKILL restart.
    let (victim, _) = cloud.token("admin", ADMIN_PASSWORD, "admin");
    let (keeper, _) = cloud.token("admin", ADMIN_PASSWORD, "admin");
    assert_eq!(
        cloud
            .req(
                "DELETE",
                "/v3/auth/tokens",
                Some(&admin),
                &[("x-subject-token", &victim)],
                b""
            )
            .status,
        204
    );
    assert_eq!(
        cloud
            .req(
                "GET",
                "/v3/auth/tokens",
                Some(&admin),
                &[("x-subject-token", &victim)],
                b""
            )
            .status,
        404
    );
    assert_eq!(
        cloud
            .req("GET", "/v3/users", Some(&victim), &[], b"")
            .status,
        401
    );
    cloud.restart();
    assert_eq!(
        cloud
            .req("GET", "/v3/users", Some(&victim), &[], b"")
            .status,
        401
    );
    assert_eq!(
        cloud
            .req("GET", "/v3/users", Some(&keeper), &[], b"")
            .status,
        200,
        "unrevoked token outlives a restart"
    );

    // Expiry.
    std::thread::sleep(std::time::Duration::from_secs(4));
    assert_eq!(
        cloud
            .req("GET", "/v3/users", Some(&keeper), &[], b"")
            .status,
        401
    );

    // Key rotation: a token stays valid while its key is kept (max-keys = 3).
    let (old, _) = cloud.token("admin", ADMIN_PASSWORD, "admin");
    assert!(cloud.control(&["rotate-keys"]).status.success());
    cloud.restart();
    assert_eq!(
        cloud.req("GET", "/v3/users", Some(&old), &[], b"").status,
        200
    );
    assert!(cloud.control(&["rotate-keys"]).status.success());
    assert!(cloud.control(&["rotate-keys"]).status.success());
    cloud.restart();
    assert_eq!(
        cloud.req("GET", "/v3/users", Some(&old), &[], b"").status,
        401,
        "its key was dropped"
    );
    let (fresh, _) = cloud.token("admin", ADMIN_PASSWORD, "admin");
    assert_eq!(
        cloud.req("GET", "/v3/users", Some(&fresh), &[], b"").status,
        200
    );
}

#[test]
fn password_change_revokes_and_disabled_users_cannot_log_in() {
    let cloud = Cloud::start();
    let (admin, _) = cloud.token("admin", ADMIN_PASSWORD, "admin");
    let r = cloud.json(
        "POST",
        "/v3/users",
        Some(&admin),
        &json!({"user": {"name": "carol", "password": "c1"}}),
    );
    assert_eq!(r.status, 201);
    let uid = r.json()["user"]["id"].as_str().unwrap().to_string();
    let pid = cloud
        .req("GET", "/v3/projects?name=admin", Some(&admin), &[], b"")
        .json()["projects"][0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let roles = cloud
        .req("GET", "/v3/roles?name=reader", Some(&admin), &[], b"")
        .json();
    let rid = roles["roles"][0]["id"].as_str().unwrap().to_string();
    assert_eq!(
        cloud
            .req(
                "PUT",
                &format!("/v3/projects/{pid}/users/{uid}/roles/{rid}"),
                Some(&admin),
                &[],
                b""
            )
            .status,
        204
    );
    let (carol, body) = cloud.token("carol", "c1", "admin");
    assert_eq!(body["token"]["roles"][0]["name"], "reader");
    // A reader cannot write identity.
    assert_eq!(
        cloud
            .json(
                "POST",
                "/v3/projects",
                Some(&carol),
                &json!({"project": {"name": "x"}})
            )
            .status,
        403
    );
    // Changing her password revokes her tokens.
    let r = cloud.json(
        "POST",
        &format!("/v3/users/{uid}/password"),
        Some(&carol),
        &json!({"user": {"password": "c2", "original_password": "c1"}}),
    );
    assert_eq!(r.status, 204, "{}", r.text());
    assert_eq!(
        cloud
            .req("GET", &format!("/v3/users/{uid}"), Some(&carol), &[], b"")
            .status,
        401
    );
    // A login right after the change is not caught by the revocation.
    let (carol2, _) = cloud.token("carol", "c2", "admin");
    assert_eq!(
        cloud
            .req("GET", &format!("/v3/users/{uid}"), Some(&carol2), &[], b"")
            .status,
        200
    );
    // Disabled: no tokens.
    let r = cloud.json(
        "PATCH",
        &format!("/v3/users/{uid}"),
        Some(&admin),
        &json!({"user": {"enabled": false}}),
    );
    assert_eq!(r.status, 200);
    let r = cloud.json("POST", "/v3/auth/tokens", None, &json!({"auth": {"identity": {"methods": ["password"], "password": {"user": {"id": uid, "password": "c2"}}}}}));
    assert_eq!(r.status, 401);
}

#[test]
fn images_are_isolated_and_bad_image_requests_refused() {
    let cloud = Cloud::start_with("", "", "max-image-size = 100000");
    let (admin, _) = cloud.token("admin", ADMIN_PASSWORD, "admin");
    let r = cloud.json(
        "POST",
        "/v3/projects",
        Some(&admin),
        &json!({"project": {"name": "demo"}}),
    );
    let demo = r.json()["project"]["id"].as_str().unwrap().to_string();
    let r = cloud.json(
        "POST",
        "/v3/users",
        Some(&admin),
        &json!({"user": {"name": "dave", "password": "d"}}),
    );
    let dave = r.json()["user"]["id"].as_str().unwrap().to_string();
    let member = cloud
        .req("GET", "/v3/roles?name=member", Some(&admin), &[], b"")
        .json()["roles"][0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    cloud.req(
        "PUT",
        &format!("/v3/projects/{demo}/users/{dave}/roles/{member}"),
        Some(&admin),
        &[],
        b"",
    );
    let (dave_t, _) = cloud.token("dave", "d", "demo");

    // Create: read-only attributes 403, bad formats 400, non-string property 400.
    assert_eq!(
        cloud
            .json(
                "POST",
                "/image/v2/images",
                Some(&admin),
                &json!({"name": "x", "status": "active"})
            )
            .status,
        403
    );
    assert_eq!(
        cloud
            .json(
                "POST",
                "/image/v2/images",
                Some(&admin),
                &json!({"disk_format": "floppy"})
            )
            .status,
        400
    );
    assert_eq!(
        cloud
            .json("POST", "/image/v2/images", Some(&admin), &json!({"x": 1}))
            .status,
        400
    );
    assert_eq!(
        cloud
            .json(
                "POST",
                "/image/v2/images",
                Some(&dave_t),
                &json!({"visibility": "public"})
            )
            .status,
        403
    );
    let r = cloud.json(
        "POST",
        "/image/v2/images",
        Some(&admin),
        &json!({"name": "a", "disk_format": "raw", "container_format": "bare"}),
    );
    assert_eq!(r.status, 201);
    assert_eq!(r.json()["status"], "queued");
    let id = r.json()["id"].as_str().unwrap().to_string();
    let path = format!("/image/v2/images/{id}");

    // Too large: 413, and the image is still queued (and can be uploaded after).
    let big = vec![7u8; 100_001];
    let r = cloud.req(
        "PUT",
        &format!("{path}/file"),
        Some(&admin),
        &[("content-type", "application/octet-stream")],
        &big,
    );
    assert_eq!(r.status, 413);
    let mut chunked = format!("{:x}\r\n", big.len()).into_bytes();
    chunked.extend_from_slice(&big);
    chunked.extend_from_slice(b"\r\n0\r\n\r\n");
    let r = cloud.req(
        "PUT",
        &format!("{path}/file"),
        Some(&admin),
        &[
            ("content-type", "application/octet-stream"),
            ("transfer-encoding", "chunked"),
        ],
        &chunked,
    );
    assert_eq!(r.status, 413, "{}", r.text());
    assert_eq!(
        cloud.req("GET", &path, Some(&admin), &[], b"").json()["status"],
        "queued"
    );
    let data: Vec<u8> = (0..50_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let r = cloud.req(
        "PUT",
        &format!("{path}/file"),
        Some(&admin),
        &[("content-type", "application/octet-stream")],
        &data,
    );
    assert_eq!(r.status, 204, "{}", r.text());
    let img = cloud.req("GET", &path, Some(&admin), &[], b"").json();
    assert_eq!(img["status"], "active");
    assert_eq!(img["size"], 50_000);
    assert_eq!(img["virtual_size"], 50_000);
    // A second upload: 409.
    let r = cloud.req(
        "PUT",
        &format!("{path}/file"),
        Some(&admin),
        &[("content-type", "application/octet-stream")],
        &data,
    );
    assert_eq!(r.status, 409);
    // Download with Content-MD5.
    let r = cloud.req("GET", &format!("{path}/file"), Some(&admin), &[], b"");
    assert_eq!(r.status, 200);
    assert_eq!(r.body, data);
    assert_eq!(r.header("content-md5"), img["checksum"].as_str());

    // Another project: 404 everywhere, and not listed.
    for (m, p) in [
        ("GET", path.clone()),
        ("DELETE", path.clone()),
        ("GET", format!("{path}/file")),
        ("PUT", format!("{path}/tags/x")),
    ] {
        assert_eq!(
            cloud.req(m, &p, Some(&dave_t), &[], b"").status,
            404,
            "{m} {p}"
        );
    }
    let r = cloud.req(
        "PATCH",
        &path,
        Some(&dave_t),
        &[(
            "content-type",
            "application/openstack-images-v2.1-json-patch",
        )],
        br#"[{"op":"add","path":"/a","value":"b"}]"#,
    );
    assert_eq!(r.status, 404);
    assert!(
        cloud
            .req("GET", "/image/v2/images", Some(&dave_t), &[], b"")
            .json()["images"]
            .as_array()
            .unwrap()
            .is_empty()
    );

    // PATCH: wrong media type 415; bad op 400; read-only 403; replace missing 409.
    let patch = |body: &[u8], ct: &str| {
        cloud.req("PATCH", &path, Some(&admin), &[("content-type", ct)], body)
    };
    let jp = "application/openstack-images-v2.1-json-patch";
    assert_eq!(
        patch(
            br#"[{"op":"add","path":"/a","value":"b"}]"#,
            "application/json"
        )
        .status,
        415
    );
    assert_eq!(
        patch(br#"[{"op":"copy","path":"/a","from":"/b"}]"#, jp).status,
        400
    );
    assert_eq!(
        patch(br#"[{"op":"replace","path":"/size","value":1}]"#, jp).status,
        403
    );
    assert_eq!(
        patch(br#"[{"op":"replace","path":"/nope","value":"1"}]"#, jp).status,
        409
    );
    assert_eq!(patch(br#"not json"#, jp).status, 400);
    let r = patch(br#"[{"op":"add","path":"/kernel_id","value":"k"},{"op":"replace","path":"/name","value":"b"},{"op":"add","path":"/protected","value":true}]"#, jp);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["kernel_id"], "k");
    assert_eq!(r.json()["name"], "b");
    // Protected: delete refused.
    assert_eq!(
        cloud.req("DELETE", &path, Some(&admin), &[], b"").status,
        403
    );

    // Sharing: visible to a member project once it is added.
    patch(
        br#"[{"op":"replace","path":"/visibility","value":"shared"}]"#,
        jp,
    );
    let r = cloud.json(
        "POST",
        &format!("{path}/members"),
        Some(&admin),
        &json!({"member": demo}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(cloud.req("GET", &path, Some(&dave_t), &[], b"").status, 200);
    assert!(
        cloud
            .req("GET", "/image/v2/images", Some(&dave_t), &[], b"")
            .json()["images"]
            .as_array()
            .unwrap()
            .is_empty(),
        "pending members do not list it"
    );
    let r = cloud.json(
        "PUT",
        &format!("{path}/members/{demo}"),
        Some(&dave_t),
        &json!({"status": "accepted"}),
    );
    assert_eq!(r.status, 200);
    assert_eq!(
        cloud
            .req("GET", "/image/v2/images", Some(&dave_t), &[], b"")
            .json()["images"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    // A member may read but not change it.
    assert_eq!(
        cloud
            .req("PUT", &format!("{path}/tags/t"), Some(&dave_t), &[], b"")
            .status,
        403
    );
}

#[test]
fn image_list_filters_sorts_and_pages() {
    let cloud = Cloud::start();
    let (admin, _) = cloud.token("admin", ADMIN_PASSWORD, "admin");
    for (i, name) in ["c", "a", "b", "d", "e"].iter().enumerate() {
        let fmt = if i % 2 == 0 { "raw" } else { "qcow2" };
        let r = cloud.json("POST", "/image/v2/images", Some(&admin), &json!({"name": name, "disk_format": fmt, "min_ram": i, "tags": [format!("t{}", i % 2)], "os_distro": if i == 4 { "cirros" } else { "debian" }}));
        assert_eq!(r.status, 201, "{}", r.text());
    }
    let names = |q: &str| -> (Vec<String>, Option<String>) {
        let r = cloud.req(
            "GET",
            &format!("/image/v2/images{q}"),
            Some(&admin),
            &[],
            b"",
        );
        assert_eq!(r.status, 200, "{q}: {}", r.text());
        let j = r.json();
        (
            j["images"]
                .as_array()
                .unwrap()
                .iter()
                .map(|i| i["name"].as_str().unwrap().to_string())
                .collect(),
            j["next"].as_str().map(str::to_string),
        )
    };
    assert_eq!(names("?sort=name:asc").0, ["a", "b", "c", "d", "e"]);
    assert_eq!(
        names("?sort_key=name&sort_dir=desc").0,
        ["e", "d", "c", "b", "a"]
    );
    assert_eq!(names("?sort=min_ram:desc").0, ["e", "d", "b", "a", "c"]);
    assert_eq!(names("?disk_format=qcow2&sort=name:asc").0, ["a", "d"]);
    assert_eq!(names("?tag=t0&sort=name:asc").0, ["b", "c", "e"]);
    assert_eq!(names("?os_distro=cirros").0, ["e"]);
    assert_eq!(names("?name=b").0, ["b"]);
    let (page1, next) = names("?sort=name:asc&limit=2");
    assert_eq!(page1, ["a", "b"]);
    let next = next.expect("a next link");
    let (page2, _) = names(next.strip_prefix("/v2/images").unwrap());
    assert_eq!(page2, ["c", "d"]);
    assert_eq!(
        cloud
            .req(
                "GET",
                "/image/v2/images?sort=bogus:asc",
                Some(&admin),
                &[],
                b""
            )
            .status,
        400
    );
    assert_eq!(
        cloud
            .req("GET", "/image/v2/images?limit=x", Some(&admin), &[], b"")
            .status,
        400
    );
    assert_eq!(
        cloud
            .req(
                "GET",
                "/image/v2/images?marker=nope",
                Some(&admin),
                &[],
                b""
            )
            .status,
        400
    );
}

#[test]
fn an_upload_cut_by_a_crash_leaves_a_queued_image() {
    use std::io::Write;
    let mut cloud = Cloud::start();
    let (admin, _) = cloud.token("admin", ADMIN_PASSWORD, "admin");
    let r = cloud.json(
        "POST",
        "/image/v2/images",
        Some(&admin),
        &json!({"name": "cut", "disk_format": "raw", "container_format": "bare"}),
    );
    let id = r.json()["id"].as_str().unwrap().to_string();
    let path = format!("/image/v2/images/{id}");
    // Half an upload, then SIGKILL while it is in flight.
    let mut s = std::net::TcpStream::connect(("127.0.0.1", cloud.port)).unwrap();
    write!(s, "PUT {path}/file HTTP/1.1\r\nhost: x\r\nx-auth-token: {admin}\r\ncontent-type: application/octet-stream\r\ncontent-length: 1000000\r\n\r\n").unwrap();
    s.write_all(&[1u8; 300_000]).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while cloud.req("GET", &path, Some(&admin), &[], b"").json()["status"] != "saving" {
        assert!(std::time::Instant::now() < deadline, "upload never started");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    cloud.restart();
    drop(s);
    let img = cloud.req("GET", &path, Some(&admin), &[], b"").json();
    assert_eq!(img["status"], "queued");
    assert!(img["size"].is_null());
    let r = cloud.req(
        "PUT",
        &format!("{path}/file"),
        Some(&admin),
        &[("content-type", "application/octet-stream")],
        b"whole",
    );
    assert_eq!(r.status, 204, "{}", r.text());
    assert_eq!(
        cloud
            .req("GET", &format!("{path}/file"), Some(&admin), &[], b"")
            .body,
        b"whole"
    );
}

#[test]
fn groups_grant_roles_and_domain_scope_works() {
    let cloud = Cloud::start();
    let (admin, _) = cloud.token("admin", ADMIN_PASSWORD, "admin");
    let uid = cloud
        .json(
            "POST",
            "/v3/users",
            Some(&admin),
            &json!({"user": {"name": "erin", "password": "e"}}),
        )
        .json()["user"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let gid = cloud
        .json(
            "POST",
            "/v3/groups",
            Some(&admin),
            &json!({"group": {"name": "ops"}}),
        )
        .json()["group"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let pid = cloud
        .req("GET", "/v3/projects?name=admin", Some(&admin), &[], b"")
        .json()["projects"][0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let rid = cloud
        .req("GET", "/v3/roles?name=member", Some(&admin), &[], b"")
        .json()["roles"][0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        cloud
            .req(
                "PUT",
                &format!("/v3/groups/{gid}/users/{uid}"),
                Some(&admin),
                &[],
                b""
            )
            .status,
        204
    );
    assert_eq!(
        cloud
            .req(
                "HEAD",
                &format!("/v3/groups/{gid}/users/{uid}"),
                Some(&admin),
                &[],
                b""
            )
            .status,
        204
    );
    // No role yet: no project token.
    let scoped = json!({"auth": {"identity": {"methods": ["password"], "password": {"user": {"id": uid, "password": "e"}}},
        "scope": {"project": {"id": pid}}}});
    assert_eq!(
        cloud.json("POST", "/v3/auth/tokens", None, &scoped).status,
        401
    );
    assert_eq!(
        cloud
            .req(
                "PUT",
                &format!("/v3/projects/{pid}/groups/{gid}/roles/{rid}"),
                Some(&admin),
                &[],
                b""
            )
            .status,
        204
    );
    let r = cloud.json("POST", "/v3/auth/tokens", None, &scoped);
    assert_eq!(r.status, 201, "{}", r.text());
    let body = r.json();
    let roles: Vec<&str> = body["token"]["roles"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["name"].as_str().unwrap())
        .collect();
    assert_eq!(roles, ["member", "reader"]);
    let ra = cloud
        .req(
            "GET",
            &format!("/v3/role_assignments?effective&user.id={uid}"),
            Some(&admin),
            &[],
            b"",
        )
        .json();
    assert_eq!(ra["role_assignments"].as_array().unwrap().len(), 2, "{ra}");
    // Leaving the group ends it.
    assert_eq!(
        cloud
            .req(
                "DELETE",
                &format!("/v3/groups/{gid}/users/{uid}"),
                Some(&admin),
                &[],
                b""
            )
            .status,
        204
    );
    assert_eq!(
        cloud.json("POST", "/v3/auth/tokens", None, &scoped).status,
        401
    );

    // Domain scope: a role on the domain gives a domain-scoped token.
    let admin_role = cloud
        .req("GET", "/v3/roles?name=admin", Some(&admin), &[], b"")
        .json()["roles"][0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        cloud
            .req(
                "PUT",
                &format!("/v3/domains/default/users/{uid}/roles/{admin_role}"),
                Some(&admin),
                &[],
                b""
            )
            .status,
        204
    );
    let r = cloud.json("POST", "/v3/auth/tokens", None, &json!({"auth": {"identity": {"methods": ["password"], "password": {"user": {"id": uid, "password": "e"}}}, "scope": {"domain": {"name": "Default"}}}}));
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(r.json()["token"]["domain"]["id"], "default");
    assert!(r.json()["token"].get("project").is_none());
    // A new domain: created, must be disabled before delete.
    let did = cloud
        .json(
            "POST",
            "/v3/domains",
            Some(&admin),
            &json!({"domain": {"name": "d2"}}),
        )
        .json()["domain"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        cloud
            .req(
                "DELETE",
                &format!("/v3/domains/{did}"),
                Some(&admin),
                &[],
                b""
            )
            .status,
        403
    );
    assert_eq!(
        cloud
            .json(
                "PATCH",
                &format!("/v3/domains/{did}"),
                Some(&admin),
                &json!({"domain": {"enabled": false}})
            )
            .status,
        200
    );
    assert_eq!(
        cloud
            .req(
                "DELETE",
                &format!("/v3/domains/{did}"),
                Some(&admin),
                &[],
                b""
            )
            .status,
        204
    );
    assert_eq!(
        cloud
            .req("GET", &format!("/v3/domains/{did}"), Some(&admin), &[], b"")
            .status,
        404
    );
}

#[test]
fn the_daemon_tells_systemd_it_is_ready() {
    // Type=notify: READY=1 arrives on NOTIFY_SOCKET once the API listens.
    let cloud = Cloud::start();
    let sock_path = cloud.dir.path().join("notify.sock");
    let sock = std::os::unix::net::UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(std::time::Duration::from_secs(30)))
        .unwrap();
    let port = free_port();
    let config = std::fs::read_to_string(cloud.dir.path().join("control.toml"))
        .unwrap()
        .replace(
            &format!("127.0.0.1:{}", cloud.port),
            &format!("127.0.0.1:{port}"),
        );
    let cfg_path = cloud.dir.path().join("second.toml");
    std::fs::write(&cfg_path, config).unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_control"))
        .arg("--config")
        .arg(&cfg_path)
        .env("NOTIFY_SOCKET", &sock_path)
        .env("RUST_LOG", "warn")
        .spawn()
        .unwrap();
    let mut buf = [0u8; 64];
    let got = sock.recv(&mut buf);
    let listening = std::net::TcpStream::connect(("127.0.0.1", port)).is_ok();
    let _ = child.kill();
    let _ = child.wait();
    let n = got.expect("READY=1 within 30 s");
    assert_eq!(&buf[..n], b"READY=1");
    assert!(listening, "ready was sent before the port listened");
}

/// An unscoped password login of a user of the default domain.
fn login(cloud: &Cloud, user: &str, password: &str) -> Answer {
    let body = json!({"auth": {"identity": {"methods": ["password"],
        "password": {"user": {"name": user, "domain": {"id": "default"}, "password": password}}}}});
    cloud.json("POST", "/v3/auth/tokens", None, &body)
}

/// `ferrostack_control_password_checks_total` by outcome, from `/metrics`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct Checks {
    hashed: u64,
    cached: u64,
    joined: u64,
    refused: u64,
}

impl Checks {
    fn of(cloud: &Cloud) -> Checks {
        let text = cloud.req("GET", "/metrics", None, &[], b"").text();
        let get = |what: &str| -> u64 {
            let prefix = format!("ferrostack_control_password_checks_total{{outcome=\"{what}\"}} ");
            text.lines()
                .find_map(|l| l.strip_prefix(prefix.as_str()))
                .unwrap_or_else(|| panic!("no {prefix} in /metrics"))
                .parse()
                .unwrap()
        };
        Checks {
            hashed: get("hashed"),
            cached: get("cached"),
            joined: get("joined"),
            refused: get("refused"),
        }
    }

    /// What happened since `before`.
    fn since(cloud: &Cloud, before: Checks) -> Checks {
        let now = Checks::of(cloud);
        Checks {
            hashed: now.hashed - before.hashed,
            cached: now.cached - before.cached,
            joined: now.joined - before.joined,
            refused: now.refused - before.refused,
        }
    }
}

fn new_user(cloud: &Cloud, admin: &str, name: &str, password: &str) -> String {
    let r = cloud.json(
        "POST",
        "/v3/users",
        Some(admin),
        &json!({"user": {"name": name, "password": password}}),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    r.json()["user"]["id"].as_str().unwrap().to_string()
}

/// Rewrites a user's record behind the daemon's back (as another controller sharing the
/// store would), then waits until the daemon sees it.
fn edit_user_in_store(cloud: &Cloud, uid: &str, edit: impl FnOnce(&mut serde_json::Value)) {
    let text = std::fs::read_to_string(cloud.dir.path().join("control.toml")).unwrap();
    let config = control::config::Config::from_toml(&text)
        .unwrap()
        .validate()
        .unwrap();
    let store = control::store::open(&config.raw.store).unwrap();
    let rec = store.get(control::store::Kind::User, uid).unwrap().unwrap();
    let mut doc: serde_json::Value = rec.parse().unwrap();
    edit(&mut doc);
    store
        .update(rec.with_doc(rec.name.as_deref(), &doc))
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(2500));
}

#[test]
fn verified_passwords_are_remembered_only_while_they_stay_right() {
    let cloud = Cloud::start();
    let (admin, _) = cloud.token("admin", ADMIN_PASSWORD, "admin");
    let dave = new_user(&cloud, &admin, "dave", "d1");

    // The first login checks Argon2; the next ones use the remembered match.
    let before = Checks::of(&cloud);
    for _ in 0..4 {
        let r = login(&cloud, "dave", "d1");
        assert_eq!(r.status, 201, "{}", r.text());
        assert!(r.header("x-subject-token").is_some());
        assert_eq!(r.json()["token"]["user"]["id"], dave.as_str());
    }
    let d = Checks::since(&cloud, before);
    assert_eq!((d.hashed, d.cached), (1, 3), "{d:?}");

    // A wrong password after a remembered success: a full check, and 401 as ever (the
    // same answer as an unknown user's).
    let before = Checks::of(&cloud);
    let wrong = login(&cloud, "dave", "d1x");
    assert_eq!(wrong.status, 401);
    assert!(wrong.header("x-subject-token").is_none());
    assert_eq!(wrong.body, login(&cloud, "nobody", "d1x").body);
    let d = Checks::since(&cloud, before);
    assert_eq!((d.hashed, d.cached), (2, 0), "{d:?}");
    assert_eq!(login(&cloud, "dave", "d1").status, 201);

    // Concurrent first logins of one user share one check.
    new_user(&cloud, &admin, "erin", "e1");
    let before = Checks::of(&cloud);
    let gate = std::sync::Barrier::new(8);
    let statuses: Vec<u16> = std::thread::scope(|s| {
        let threads: Vec<_> = (0..8)
            .map(|_| {
                s.spawn(|| {
                    gate.wait();
                    login(&cloud, "erin", "e1").status
                })
            })
            .collect();
        threads.into_iter().map(|t| t.join().unwrap()).collect()
    });
    assert_eq!(statuses, [201; 8]);
    let d = Checks::since(&cloud, before);
    assert_eq!(d.hashed, 1, "one Argon2 check for 8 logins: {d:?}");
    assert_eq!(d.cached + d.joined, 7, "{d:?}");

    // A password change through the API: the old password fails at once, the new works.
    let (dave_token, _) = {
        let r = login(&cloud, "dave", "d1");
        (r.header("x-subject-token").unwrap().to_string(), r)
    };
    let r = cloud.json(
        "POST",
        &format!("/v3/users/{dave}/password"),
        Some(&dave_token),
        &json!({"user": {"password": "d2", "original_password": "d1"}}),
    );
    assert_eq!(r.status, 204, "{}", r.text());
    assert_eq!(login(&cloud, "dave", "d1").status, 401);
    assert_eq!(login(&cloud, "dave", "d2").status, 201);
    // And by an admin.
    let erin = cloud
        .req("GET", "/v3/users?name=erin", Some(&admin), &[], b"")
        .json()["users"][0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let r = cloud.json(
        "PATCH",
        &format!("/v3/users/{erin}"),
        Some(&admin),
        &json!({"user": {"password": "e2"}}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(login(&cloud, "erin", "e1").status, 401);
    assert_eq!(login(&cloud, "erin", "e2").status, 201);

    // A password changed by another controller (the stored hash changes under us): the
    // remembered match no longer applies.
    assert_eq!(login(&cloud, "dave", "d2").status, 201);
    let before = Checks::of(&cloud);
    assert_eq!(login(&cloud, "dave", "d2").status, 201);
    assert_eq!(Checks::since(&cloud, before).cached, 1, "remembered");
    let other_hash = {
        use argon2::PasswordHasher;
        argon2::Argon2::default()
            .hash_password_with_salt(b"d3", b"another-salt-16b")
            .unwrap()
            .to_string()
    };
    edit_user_in_store(&cloud, &dave, |d| d["password_hash"] = json!(other_hash));
    let before = Checks::of(&cloud);
    assert_eq!(login(&cloud, "dave", "d2").status, 401);
    assert_eq!(login(&cloud, "dave", "d3").status, 201);
    let d = Checks::since(&cloud, before);
    assert_eq!((d.hashed, d.cached), (2, 0), "{d:?}");

    // Disabled through the API: refused, and the entry is gone when re-enabled.
    assert_eq!(login(&cloud, "dave", "d3").status, 201);
    let enable = |on: bool| {
        let r = cloud.json(
            "PATCH",
            &format!("/v3/users/{dave}"),
            Some(&admin),
            &json!({"user": {"enabled": on}}),
        );
        assert_eq!(r.status, 200, "{}", r.text());
    };
    enable(false);
    let r = login(&cloud, "dave", "d3");
    assert_eq!(r.status, 401);
    assert_eq!(r.body, wrong.body, "as a wrong password");
    enable(true);
    let before = Checks::of(&cloud);
    assert_eq!(login(&cloud, "dave", "d3").status, 201);
    let d = Checks::since(&cloud, before);
    assert_eq!((d.hashed, d.cached), (1, 0), "forgotten on disable: {d:?}");

    // Disabled by another controller, so nothing here forgot the entry: the user is
    // still refused, without the cache being consulted; re-enabled, the entry serves.
    assert_eq!(login(&cloud, "dave", "d3").status, 201);
    edit_user_in_store(&cloud, &dave, |d| d["enabled"] = json!(false));
    let before = Checks::of(&cloud);
    let r = login(&cloud, "dave", "d3");
    assert_eq!(r.status, 401);
    assert!(r.header("x-subject-token").is_none());
    let d = Checks::since(&cloud, before);
    assert_eq!((d.hashed, d.cached), (1, 0), "{d:?}");
    edit_user_in_store(&cloud, &dave, |d| d["enabled"] = json!(true));
    let before = Checks::of(&cloud);
    assert_eq!(login(&cloud, "dave", "d3").status, 201);
    assert_eq!(Checks::since(&cloud, before).cached, 1);

    // Deleted: refused.
    let r = cloud.req(
        "DELETE",
        &format!("/v3/users/{dave}"),
        Some(&admin),
        &[],
        b"",
    );
    assert_eq!(r.status, 204);
    assert_eq!(login(&cloud, "dave", "d3").status, 401);
}

#[test]
fn a_zero_password_cache_ttl_checks_every_login() {
    let cloud = Cloud::start_with("[identity]\npassword-cache-ttl = \"0s\"", "", "");
    let before = Checks::of(&cloud);
    for _ in 0..3 {
        cloud.token("admin", ADMIN_PASSWORD, "admin");
    }
    let d = Checks::since(&cloud, before);
    assert_eq!((d.hashed, d.cached), (3, 0), "{d:?}");
    assert_eq!(login(&cloud, "admin", "wrong").status, 401);
}

#[test]
fn a_full_hashing_queue_answers_503_and_changes_nothing() {
    let cloud = Cloud::start_with("[identity]\nmax-password-checks = 1", "", "");
    let before = Checks::of(&cloud);
    // 16 logins at once, each needing its own check (distinct wrong passwords) or sharing
    // one (the right one); one check may be queued or running at a time.
    let gate = std::sync::Barrier::new(16);
    let answers: Vec<(bool, Answer)> = std::thread::scope(|s| {
        let threads: Vec<_> = (0..16)
            .map(|i| {
                let gate = &gate;
                let cloud = &cloud;
                s.spawn(move || {
                    let right = i % 4 == 0;
                    let pw = if right {
                        ADMIN_PASSWORD.to_string()
                    } else {
                        format!("wrong-{i}")
                    };
                    gate.wait();
                    (right, login(cloud, "admin", &pw))
                })
            })
            .collect();
        threads.into_iter().map(|t| t.join().unwrap()).collect()
    });
    let mut refused = 0;
    for (right, a) in &answers {
        match a.status {
            503 => {
                refused += 1;
                let j = a.json();
                assert_eq!(j["error"]["code"], 503, "{j}");
                assert_eq!(j["error"]["title"], "Service Unavailable");
                assert!(
                    j["error"]["message"]
                        .as_str()
                        .unwrap()
                        .contains("Too many logins"),
                    "{j}"
                );
                assert_eq!(a.header("retry-after"), Some("1"));
                assert_eq!(a.header("content-type"), Some("application/json"));
                assert!(a.header("x-subject-token").is_none());
            }
            201 => assert!(right, "a wrong password got a token"),
            401 => assert!(!right, "the right password was refused"),
            s => panic!("status {s}: {}", a.text()),
        }
    }
    assert!(
        refused > 0,
        "16 logins at once, one check at a time: none refused"
    );
    assert_eq!(Checks::since(&cloud, before).refused, refused);
    // Once the burst is over, logins work again.
    let (token, _) = cloud.token("admin", ADMIN_PASSWORD, "admin");
    assert_eq!(
        cloud.req("GET", "/v3/users", Some(&token), &[], b"").status,
        200
    );
    assert_eq!(login(&cloud, "admin", "wrong").status, 401);
}

/// Keystone's default roles on the Nova, Neutron and Cinder APIs: a project's `reader`
/// lists what the project has but every change is refused with 403 (and nothing is
/// made); a `member` of the same project makes the same changes.
#[test]
fn readers_look_and_members_change_on_compute_network_and_volume() {
    if !have_cli() {
        return;
    }
    let cloud = Cloud::start_with("", "", "");
    let admin = cloud.admin();
    let member = cloud.member("rproj", "ruser-member", "r-pass-member");
    ok(
        &admin,
        &[
            "user",
            "create",
            "--password",
            "r-pass-reader",
            "ruser-reader",
        ],
    );
    ok(
        &admin,
        &[
            "role",
            "add",
            "--project",
            "rproj",
            "--user",
            "ruser-reader",
            "reader",
        ],
    );
    let (reader, body) = cloud.token("ruser-reader", "r-pass-reader", "rproj");
    let roles: Vec<&str> = body["token"]["roles"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert_eq!(roles, ["reader"], "{body}");
    let pid = body["token"]["project"]["id"].as_str().unwrap().to_string();
    let (mtoken, _) = cloud.token("ruser-member", "r-pass-member", "rproj");
    let vols = format!("/volume/v3/{pid}/volumes");
    let writes = [
        (
            "/network/v2.0/networks",
            json!({"network": {"name": "rnet"}}),
            "networks",
        ),
        (
            vols.as_str(),
            json!({"volume": {"size": 1, "name": "rvol"}}),
            "volumes",
        ),
        (
            "/compute/v2.1/os-keypairs",
            json!({"keypair": {"name": "rkey"}}),
            "keypairs",
        ),
    ];
    for (path, body, _) in &writes {
        let r = cloud.json("POST", path, Some(&reader), body);
        assert_eq!(r.status, 403, "{path}: {}", r.text());
        assert!(r.text().contains("member role"), "{path}: {}", r.text());
    }
    // Reading is allowed, and shows that nothing was made.
    for (path, _, key) in [
        ("/network/v2.0/networks", (), "networks"),
        (vols.as_str(), (), "volumes"),
        ("/compute/v2.1/os-keypairs", (), "keypairs"),
        ("/compute/v2.1/servers", (), "servers"),
    ] {
        let r = cloud.json("GET", path, Some(&reader), &Value::Null);
        assert_eq!(r.status, 200, "{path}: {}", r.text());
        let names: Vec<String> = r.json()[key]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.to_string())
            .collect();
        assert!(
            names
                .iter()
                .all(|n| !n.contains("rnet") && !n.contains("rkey")),
            "{path}: {names:?}"
        );
    }
    // The stock CLI as the reader: a list works, a create is refused.
    let reader_env = cloud.env("ruser-reader", "r-pass-reader", "rproj");
    ok_json(&reader_env, &["network", "list"]);
    let err = fails(&reader_env, &["network", "create", "rnet2"]);
    assert!(err.contains("403") || err.contains("member role"), "{err}");
    // A member of the same project may.
    let r = cloud.json("POST", writes[0].0, Some(&mtoken), &writes[0].1);
    assert_eq!(r.status, 201, "{}", r.text());
    ok(&member, &["network", "show", "rnet"]);
}

#[test]
fn the_log_names_each_request_by_the_id_its_client_was_given() {
    let cloud = Cloud::start();
    let (admin, _) = cloud.token("admin", ADMIN_PASSWORD, "admin");
    let log = cloud.dir.path().join("second.log");
    let c = cloud.controller_with_log("control=debug", Some(&log));
    let call = |method: &str, path: &str, ctype: &str, body: &[u8]| {
        let r = common::http(
            c.port,
            method,
            path,
            &[("x-auth-token", admin.as_str()), ("content-type", ctype)],
            body,
        );
        let id = r.header("x-openstack-request-id").unwrap().to_string();
        (r, id)
    };
    let log_lines = |what: &str| -> Vec<String> {
        std::fs::read_to_string(&log)
            .unwrap()
            .lines()
            .filter(|l| l.contains(what))
            .map(str::to_string)
            .collect()
    };

    // Each answer is logged under its id, with what was asked and the status.
    let (r, listed) = call("GET", "/v3/projects", "application/json", b"");
    assert_eq!(r.status, 200);
    let (r, missing) = call("GET", "/image/v2/images/nope", "application/json", b"");
    assert_eq!(r.status, 404);
    for (id, path, status) in [
        (&listed, "/v3/projects", 200),
        (&missing, "/image/v2/images/nope", 404),
    ] {
        let lines = log_lines(id);
        assert_eq!(lines.len(), 1, "{id}: {lines:?}");
        assert!(
            lines[0].contains("answered")
                && lines[0].contains(path)
                && lines[0].contains(&format!("status={status}")),
            "{}",
            lines[0]
        );
    }

    // Work a request leaves running carries its id too: an import of data that is not
    // what the image claims fails after the 202, and the warning names the import.
    let (r, _) = call(
        "POST",
        "/image/v2/images",
        "application/json",
        br#"{"name": "liar", "disk_format": "qcow2", "container_format": "bare"}"#,
    );
    assert_eq!(r.status, 201, "{}", r.text());
    let image = r.json()["id"].as_str().unwrap().to_string();
    let (r, _) = call(
        "PUT",
        &format!("/image/v2/images/{image}/stage"),
        "application/octet-stream",
        &[0x5a; 65536],
    );
    assert_eq!(r.status, 204, "{}", r.text());
    let (r, import) = call(
        "POST",
        &format!("/image/v2/images/{image}/import"),
        "application/json",
        br#"{"method": {"name": "glance-direct"}}"#,
    );
    assert_eq!(r.status, 202, "{}", r.text());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let failed = loop {
        let lines = log_lines("image import failed");
        if !lines.is_empty() || std::time::Instant::now() > deadline {
            break lines;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    assert_eq!(failed.len(), 1, "{failed:?}");
    // A log that is not a terminal gets no colour codes.
    assert!(!std::fs::read_to_string(&log).unwrap().contains('\x1b'));
    assert!(
        failed[0].contains(&import) && failed[0].contains(&image),
        "the warning does not name the import request {import}: {}",
        failed[0]
    );
}

#[test]
fn an_error_answered_before_the_body_closes_the_connection_and_says_so() {
    use std::io::{Read, Write};
    let cloud = Cloud::start();
    let (admin, _) = cloud.token("admin", ADMIN_PASSWORD, "admin");
    let exchange = |text: &str| {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", cloud.port)).unwrap();
        s.set_read_timeout(Some(std::time::Duration::from_secs(30)))
            .unwrap();
        s.write_all(text.as_bytes()).unwrap();
        let mut raw = Vec::new();
        let _ = s.read_to_end(&mut raw);
        String::from_utf8_lossy(&raw).into_owned()
    };
    // The status of each answer on a connection.
    let statuses = |text: &str| -> Vec<String> {
        text.match_indices("HTTP/1.1 ")
            .map(|(i, _)| text[i + 9..i + 12].to_string())
            .collect()
    };
    // An upload to an image that does not exist, its body held back behind `Expect:
    // 100-continue`: answered 404 without the body, and the answer says the connection
    // ends, so the client does not send its next request on it.
    let missing = "/image/v2/images/7d4a1f0e-0000-4000-8000-000000000000/file";
    let text = exchange(&format!(
        "PUT {missing} HTTP/1.1\r\nhost: x\r\nx-auth-token: {admin}\r\n\
         content-type: application/octet-stream\r\nexpect: 100-continue\r\n\
         content-length: 1000000\r\n\r\n"
    ));
    assert!(text.starts_with("HTTP/1.1 404"), "{text}");
    assert!(
        text.to_ascii_lowercase()
            .contains("\r\nconnection: close\r\n"),
        "{text}"
    );
    // Requests that succeed keep the connection, and so does an error to a request
    // without a body: three answers on one connection.
    let text = exchange(&format!(
        "GET /v3 HTTP/1.1\r\nhost: x\r\n\r\n\
         GET {missing} HTTP/1.1\r\nhost: x\r\nx-auth-token: {admin}\r\n\r\n\
         GET /v3/auth/tokens HTTP/1.1\r\nhost: x\r\nx-auth-token: {admin}\r\n\
         x-subject-token: {admin}\r\nconnection: close\r\n\r\n"
    ));
    assert_eq!(statuses(&text), ["200", "404", "200"], "{text}");
    // So does an error to a request whose body was read to its end: a wrong password.
    let login = serde_json::json!({"auth": {"identity": {"methods": ["password"],
        "password": {"user": {"name": "admin", "domain": {"id": "default"},
                              "password": "not-it"}}}}})
    .to_string();
    let text = exchange(&format!(
        "POST /v3/auth/tokens HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n\
         content-length: {}\r\n\r\n{login}\
         GET /v3 HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
        login.len()
    ));
    assert_eq!(statuses(&text), ["401", "200"], "{text}");
}
