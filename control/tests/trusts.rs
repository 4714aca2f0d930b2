//! Keystone trusts through control: `openstack trust create/list/show/delete` and
//! `--os-trust-id` with the stock CLI (a trustee gets tokens carrying the trustor's
//! delegated roles on its project, and works in that project with them), and over raw
//! HTTP the token body, impersonation, limited uses, expiry, a trustor losing its role,
//! deletions, and Keystone's refusals.

mod common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::*;
use serde_json::{Value, json};

/// A user with password `pw`; its id.
fn user(cloud: &Cloud, admin: &str, name: &str) -> String {
    cloud.new_user(admin, json!({"name": name, "password": "pw"}))
}

fn role_id(cloud: &Cloud, admin: &str, name: &str) -> String {
    let r = cloud.req(
        "GET",
        &format!("/v3/roles?name={name}"),
        Some(admin),
        &[],
        b"",
    );
    r.json()["roles"][0]["id"].as_str().unwrap().to_string()
}

/// Grants (or with `DELETE`, takes back) a role of a user on a project.
fn grant(cloud: &Cloud, admin: &str, method: &str, project: &str, user: &str, role: &str) {
    let r = cloud.req(
        method,
        &format!("/v3/projects/{project}/users/{user}/roles/{role}"),
        Some(admin),
        &[],
        b"",
    );
    assert_eq!(r.status, 204, "{}", r.text());
}

/// `POST /v3/auth/tokens` as `user` (password `pw`) with `scope`.
fn login(cloud: &Cloud, user: &str, scope: Value) -> Answer {
    let mut body = json!({"auth": {"identity": {"methods": ["password"],
        "password": {"user": {"id": user, "password": "pw"}}}}});
    if !scope.is_null() {
        body["auth"]["scope"] = scope;
    }
    cloud.json("POST", "/v3/auth/tokens", None, &body)
}

fn trust_scope(id: &str) -> Value {
    json!({"OS-TRUST:trust": {"id": id}})
}

fn create_trust(cloud: &Cloud, token: &str, trust: Value) -> Answer {
    cloud.json(
        "POST",
        "/v3/OS-TRUST/trusts",
        Some(token),
        &json!({ "trust": trust }),
    )
}

/// Keystone's error body: the status and that the message mentions `words`.
fn assert_refused(r: &Answer, status: u16, words: &str) {
    assert_eq!(r.status, status, "{}", r.text());
    let e = &r.json()["error"];
    assert_eq!(e["code"], status, "{}", r.text());
    assert!(
        e["message"].as_str().unwrap().contains(words),
        "{words:?} not in {}",
        r.text()
    );
}

/// A CLI environment of `user` (password `pw`) working through a trust
/// (`OS_TRUST_ID`, which is `--os-trust-id`), so without a project.
fn trust_env(cloud: &Cloud, user: &str, trust: &str) -> Vec<(String, String)> {
    cloud.env_scoped_by(user, "pw", ("OS_TRUST_ID", trust))
}

#[test]
fn a_trustee_works_in_the_trustors_project_with_the_openstack_cli() {
    if !have_cli() {
        return;
    }
    let cloud = Cloud::start();
    let (admin, _) = cloud.token("admin", ADMIN_PASSWORD, "admin");
    let pid = cloud.new_project(&admin, "delegated");
    let other_pid = cloud.new_project(&admin, "elsewhere");
    let trustor = user(&cloud, &admin, "trustor");
    let trustee = user(&cloud, &admin, "trustee");
    let stranger = user(&cloud, &admin, "stranger");
    let member = role_id(&cloud, &admin, "member");
    grant(&cloud, &admin, "PUT", &pid, &trustor, &member);
    grant(&cloud, &admin, "PUT", &other_pid, &stranger, &member);
    let trustor_env = cloud.env("trustor", "pw", "delegated");
    let stranger_env = cloud.env("stranger", "pw", "elsewhere");

    // The trustor delegates its member role: a member may not look users or roles up, so
    // it names them by id and the role by name, as with Keystone.
    let made = ok_json(
        &trustor_env,
        &[
            "trust",
            "create",
            "--project",
            &pid,
            "--role",
            "member",
            &trustor,
            &trustee,
        ],
    );
    let tid = made["id"].as_str().unwrap().to_string();
    assert_eq!(made["project_id"], pid.as_str(), "{made}");
    assert_eq!(made["trustor_user_id"], trustor.as_str(), "{made}");
    assert_eq!(made["trustee_user_id"], trustee.as_str(), "{made}");
    // Debian's client prints `impersonation` and the role names; newer ones
    // `is_impersonation` and the role objects.
    let imp = made.get("impersonation").or(made.get("is_impersonation"));
    assert_eq!(imp, Some(&json!(false)), "{made}");
    assert!(made["roles"].to_string().contains("member"), "{made}");

    // The trustee, with no role of its own anywhere, gets a token for the project.
    let trustee_env = trust_env(&cloud, "trustee", &tid);
    let issued = ok_json(&trustee_env, &["token", "issue"]);
    assert_eq!(issued["project_id"], pid.as_str(), "{issued}");
    assert_eq!(issued["user_id"], trustee.as_str(), "{issued}");
    let token = issued["id"].as_str().unwrap().to_string();

    // What the token says, as Keystone shows it.
    let shown = cloud.req(
        "GET",
        "/v3/auth/tokens",
        Some(&admin),
        &[("x-subject-token", &token)],
        b"",
    );
    assert_eq!(shown.status, 200, "{}", shown.text());
    let t = &shown.json()["token"];
    assert_eq!(
        t["OS-TRUST:trust"],
        json!({"id": tid, "impersonation": false, "trustor_user": {"id": trustor},
               "trustee_user": {"id": trustee}}),
        "{t}"
    );
    assert_eq!(t["user"]["id"], trustee.as_str());
    assert_eq!(t["project"]["id"], pid.as_str());
    let roles = role_names(&shown.json());
    assert_eq!(roles, ["member", "reader"], "member implies reader: {t}");

    // Through the trust the trustee uploads an image; it belongs to the project, and the
    // trustor sees it.
    let file = random_file(cloud.dir.path(), "through-trust.raw", 4096);
    let img = image(&trustee_env, &file, "through-trust", &[]);
    assert_eq!(img["owner"], pid.as_str(), "{img}");
    let listed = ok(
        &trustor_env,
        &["image", "list", "-f", "value", "-c", "Name"],
    );
    assert!(listed.lines().any(|l| l == "through-trust"), "{listed}");

    // Lists and shows: the trustor and the trustee see the trust, a stranger does not.
    let mine = ok(&trustor_env, &["trust", "list", "-f", "value", "-c", "ID"]);
    assert_eq!(mine.trim(), tid);
    let theirs = ok(&trustee_env, &["trust", "list", "-f", "value", "-c", "ID"]);
    assert_eq!(theirs.trim(), tid);
    let shown = ok_json(&trustor_env, &["trust", "show", &tid]);
    assert_eq!(shown["trustee_user_id"], trustee.as_str(), "{shown}");
    assert_eq!(
        ok(&stranger_env, &["trust", "list", "-f", "value"]).trim(),
        ""
    );
    fails(&stranger_env, &["trust", "show", &tid]);
    fails(&stranger_env, &["trust", "delete", &tid]);

    // The trustor deletes it: the token made through it stops working at once, and no
    // new one is issued.
    ok(&trustor_env, &["trust", "delete", &tid]);
    let r = cloud.req("GET", "/image/v2/images", Some(&token), &[], b"");
    assert_eq!(r.status, 401, "{}", r.text());
    fails(&trustee_env, &["token", "issue"]);
    assert_eq!(
        ok(&trustor_env, &["trust", "list", "-f", "value"]).trim(),
        ""
    );
}

#[test]
fn trusts_over_http_impersonate_count_uses_expire_and_follow_the_trustors_roles() {
    let cloud = Cloud::start();
    let (admin, _) = cloud.token("admin", ADMIN_PASSWORD, "admin");
    let pid = cloud.new_project(&admin, "tp");
    let trustor = user(&cloud, &admin, "alice");
    let trustee = user(&cloud, &admin, "bob");
    let member = role_id(&cloud, &admin, "member");
    let reader = role_id(&cloud, &admin, "reader");
    grant(&cloud, &admin, "PUT", &pid, &trustor, &member);
    let (alice, _) = cloud.token("alice", "pw", "tp");

    // Keystone's refusals on create; nothing is stored by any of them.
    let base = json!({"trustor_user_id": trustor, "trustee_user_id": trustee,
                      "project_id": pid, "impersonation": false, "roles": [{"name": "member"}]});
    let with = |k: &str, v: Value| {
        let mut b = base.clone();
        b[k] = v;
        b
    };
    assert_refused(
        &create_trust(&cloud, &alice, with("trustor_user_id", json!(trustee))),
        403,
        "should be the trustor",
    );
    assert_refused(
        &create_trust(&cloud, &alice, with("roles", json!([{"name": "admin"}]))),
        403,
        "does not hold role admin",
    );
    assert_refused(
        &create_trust(&cloud, &alice, with("trustee_user_id", json!("nobody"))),
        404,
        "Could not find user: nobody",
    );
    assert_refused(
        &create_trust(&cloud, &alice, with("project_id", json!("nowhere"))),
        404,
        "Could not find project: nowhere",
    );
    assert_refused(
        &create_trust(&cloud, &alice, with("roles", json!([]))),
        400,
        "at least one role",
    );
    assert_refused(
        &create_trust(&cloud, &alice, with("allow_redelegation", json!(true))),
        400,
        "redelegation",
    );
    assert_refused(
        &create_trust(&cloud, &alice, with("remaining_uses", json!(0))),
        400,
        "remaining_uses",
    );
    assert_refused(
        &create_trust(
            &cloud,
            &alice,
            with("expires_at", json!("2001-01-01T00:00:00Z")),
        ),
        400,
        "in the past",
    );
    assert_refused(
        &create_trust(&cloud, &alice, with("expires_at", json!("tomorrow"))),
        400,
        "not a timestamp",
    );
    let r = cloud.json(
        "POST",
        "/v3/OS-TRUST/trusts",
        Some(&alice),
        &json!({"trust": base, "extra": 1}),
    );
    assert_eq!(r.status, 400, "{}", r.text());
    let listed = cloud.req("GET", "/v3/OS-TRUST/trusts", Some(&admin), &[], b"");
    assert_eq!(listed.json()["trusts"], json!([]), "{}", listed.text());

    // Impersonation: the token's user is the trustor.
    let r = create_trust(&cloud, &alice, with("impersonation", json!(true)));
    assert_eq!(r.status, 201, "{}", r.text());
    let imp = r.json()["trust"]["id"].as_str().unwrap().to_string();
    let t = login(&cloud, &trustee, trust_scope(&imp));
    assert_eq!(t.status, 201, "{}", t.text());
    assert_eq!(t.json()["token"]["user"]["id"], trustor.as_str());
    assert_eq!(
        t.json()["token"]["OS-TRUST:trust"]["impersonation"],
        true,
        "{}",
        t.text()
    );
    // Only the trustee may use it, and only on its own.
    assert_refused(
        &login(&cloud, &trustor, trust_scope(&imp)),
        403,
        "not the trustee",
    );
    let both = json!({"OS-TRUST:trust": {"id": imp}, "project": {"id": pid}});
    assert_eq!(login(&cloud, &trustee, both).status, 400);
    assert_refused(
        &login(&cloud, &trustee, trust_scope("no-such-trust")),
        404,
        "Could not find trust",
    );
    // A token made through a trust neither rescopes nor makes trusts.
    let via = t.header("x-subject-token").unwrap().to_string();
    let rescope = json!({"auth": {"identity": {"methods": ["token"], "token": {"id": via}},
                                  "scope": {"project": {"id": pid}}}});
    assert_refused(
        &cloud.json("POST", "/v3/auth/tokens", None, &rescope),
        403,
        "cannot be rescoped",
    );
    assert_refused(
        &create_trust(&cloud, &via, with("trustor_user_id", json!(trustor))),
        403,
        "cannot create trusts",
    );
    // Its roles, and one role of it.
    let roles = cloud.req(
        "GET",
        &format!("/v3/OS-TRUST/trusts/{imp}/roles"),
        Some(&alice),
        &[],
        b"",
    );
    assert_eq!(roles.status, 200, "{}", roles.text());
    let roles = roles.json();
    let names: Vec<&str> = roles["roles"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["member"]);
    let path = format!("/v3/OS-TRUST/trusts/{imp}/roles/{member}");
    assert_eq!(cloud.req("GET", &path, Some(&alice), &[], b"").status, 200);
    let path = format!("/v3/OS-TRUST/trusts/{imp}/roles/{reader}");
    assert_eq!(cloud.req("GET", &path, Some(&alice), &[], b"").status, 404);

    // One use: one token, then no more; the token made keeps working.
    let r = create_trust(&cloud, &alice, with("remaining_uses", json!(1)));
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(r.json()["trust"]["remaining_uses"], 1);
    let once = r.json()["trust"]["id"].as_str().unwrap().to_string();
    let first = login(&cloud, &trustee, trust_scope(&once));
    assert_eq!(first.status, 201, "{}", first.text());
    assert_refused(
        &login(&cloud, &trustee, trust_scope(&once)),
        403,
        "no uses left",
    );
    let shown = cloud.req(
        "GET",
        &format!("/v3/OS-TRUST/trusts/{once}"),
        Some(&alice),
        &[],
        b"",
    );
    assert_eq!(
        shown.json()["trust"]["remaining_uses"],
        0,
        "{}",
        shown.text()
    );
    let first = first.header("x-subject-token").unwrap().to_string();
    assert_eq!(
        cloud
            .req("GET", "/image/v2/images", Some(&first), &[], b"")
            .status,
        200
    );

    // Expiry: the token expires with the trust, and after it nothing is issued.
    let now = || SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    // Far enough ahead for the trust and a token through it to be made on a busy machine.
    let soon = now().as_secs() + 8;
    let at = control::time::keystone(soon);
    let r = create_trust(&cloud, &alice, with("expires_at", json!(at)));
    assert_eq!(r.status, 201, "{}", r.text());
    let brief = r.json()["trust"]["id"].as_str().unwrap().to_string();
    let t = login(&cloud, &trustee, trust_scope(&brief));
    assert_eq!(t.status, 201, "{}", t.text());
    let expires = t.json()["token"]["expires_at"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(expires.starts_with(&at[..19]), "{expires} vs {at}");
    let brief_token = t.header("x-subject-token").unwrap().to_string();
    // Until the second after the expiry.
    std::thread::sleep(Duration::from_secs(soon + 1).saturating_sub(now()));
    assert_eq!(
        cloud
            .req("GET", "/image/v2/images", Some(&brief_token), &[], b"")
            .status,
        401
    );
    assert_refused(
        &login(&cloud, &trustee, trust_scope(&brief)),
        403,
        "expired",
    );

    // The trustor loses the role it delegated: tokens through its trusts stop working,
    // and none is issued; given it back, they work again.
    let r = create_trust(&cloud, &alice, base.clone());
    let plain = r.json()["trust"]["id"].as_str().unwrap().to_string();
    let t = login(&cloud, &trustee, trust_scope(&plain));
    assert_eq!(t.status, 201, "{}", t.text());
    let plain_token = t.header("x-subject-token").unwrap().to_string();
    grant(&cloud, &admin, "DELETE", &pid, &trustor, &member);
    let images = |tok: &str| {
        cloud
            .req("GET", "/image/v2/images", Some(tok), &[], b"")
            .status
    };
    assert_eq!(images(&plain_token), 401);
    assert_refused(
        &login(&cloud, &trustee, trust_scope(&plain)),
        403,
        "no longer holds",
    );
    grant(&cloud, &admin, "PUT", &pid, &trustor, &member);
    assert_eq!(images(&plain_token), 200);
    // (Taking a role back revoked alice's own tokens.)
    let (alice, _) = cloud.token("alice", "pw", "tp");

    // Visibility: the trustee reads but does not delete; the admin lists everything and
    // filters; a user may filter only by itself.
    let t = login(&cloud, &trustee, trust_scope(&plain));
    let bob_scoped = t.header("x-subject-token").unwrap().to_string();
    let path = format!("/v3/OS-TRUST/trusts/{plain}");
    assert_eq!(
        cloud.req("GET", &path, Some(&bob_scoped), &[], b"").status,
        200
    );
    assert_eq!(
        cloud
            .req("DELETE", &path, Some(&bob_scoped), &[], b"")
            .status,
        403
    );
    let all = cloud.req("GET", "/v3/OS-TRUST/trusts", Some(&admin), &[], b"");
    assert_eq!(
        all.json()["trusts"].as_array().unwrap().len(),
        4,
        "{}",
        all.text()
    );
    let q = format!("/v3/OS-TRUST/trusts?trustee_user_id={trustee}");
    assert_eq!(
        cloud.req("GET", &q, Some(&alice), &[], b"").status,
        403,
        "alice filters by another user"
    );
    let q = format!("/v3/OS-TRUST/trusts?trustor_user_id={trustor}");
    let mine = cloud.req("GET", &q, Some(&alice), &[], b"");
    assert_eq!(mine.json()["trusts"].as_array().unwrap().len(), 4);

    // Deleting the trustee deletes its trusts, and their tokens stop working.
    let r = cloud.req(
        "DELETE",
        &format!("/v3/users/{trustee}"),
        Some(&admin),
        &[],
        b"",
    );
    assert_eq!(r.status, 204, "{}", r.text());
    let all = cloud.req("GET", "/v3/OS-TRUST/trusts", Some(&admin), &[], b"");
    assert_eq!(all.json()["trusts"], json!([]), "{}", all.text());
    assert_eq!(cloud.req("GET", &path, Some(&admin), &[], b"").status, 404);
    assert_eq!(images(&first), 401);
}
