//! What limits an application credential. A restricted one (the default) cannot make or
//! delete credentials or trusts; an unrestricted one can. Access rules work through
//! control and objectd: made with the stock
//! `openstack application credential create --access-rules`, listed, shown and deleted
//! with `openstack access rule ...`, and enforced on every service: a token from such a
//! credential makes the requests its rules list (images through control, containers
//! through objectd) and gets 401 for any other.

mod common;

use common::*;
use serde_json::{Value, json};

#[test]
fn access_rules_limit_an_application_credential_with_the_openstack_cli() {
    if !have_cli() {
        return;
    }
    let cloud = Cloud::start();
    let member = cloud.member("ruled", "ruler", "pw");
    ok(&member, &["container", "create", "kept"]);
    let file = random_file(cloud.dir.path(), "ruled.raw", 2048);
    image(&member, &file, "visible", &[]);

    let rules = json!([
        {"service": "image", "method": "GET", "path": "/v2/images"},
        {"service": "object-store", "method": "GET", "path": "/v1/**"},
    ])
    .to_string();
    let made = ok_json(
        &member,
        &[
            "application",
            "credential",
            "create",
            "--access-rules",
            &rules,
            "limited",
        ],
    );
    let id = field(&made, "id").as_str().unwrap().to_string();
    let secret = field(&made, "secret").as_str().unwrap().to_string();
    let shown = field(&made, "access_rules");
    assert_eq!(shown.as_array().map(Vec::len), Some(2), "{made}");

    // What the rules list works; anything else is 401, in control and in objectd.
    let limited = cloud.app_cred_env(&id, &secret);
    let names = ok(&limited, &["image", "list", "-f", "value", "-c", "Name"]);
    assert_eq!(names.trim(), "visible");
    let containers = ok(&limited, &["container", "list", "-f", "value"]);
    assert_eq!(containers.trim(), "kept");
    let err = fails(&limited, &["image", "show", "visible"]);
    assert!(err.contains("401"), "{err}");
    let err = fails(&limited, &["server", "list"]);
    assert!(err.contains("401"), "{err}");
    let err = fails(&limited, &["container", "create", "refused"]);
    assert!(err.contains("401") || err.contains("Unauthorized"), "{err}");
    assert_eq!(
        ok(&member, &["container", "list", "-f", "value"]).trim(),
        "kept",
        "nothing was made"
    );

    // The rules are the user's: listed, shown, kept while a credential uses them.
    let listed = ok_json(&member, &["access", "rule", "list"]);
    let rows = listed.as_array().unwrap();
    assert_eq!(rows.len(), 2, "{listed}");
    let image_rule = rows
        .iter()
        .find(|r| r["Service"] == "image")
        .unwrap_or_else(|| panic!("{listed}"));
    let rule_id = image_rule["ID"].as_str().unwrap().to_string();
    let rule = ok_json(&member, &["access", "rule", "show", &rule_id]);
    assert_eq!(field(&rule, "path"), "/v2/images", "{rule}");
    assert_eq!(field(&rule, "method"), "GET", "{rule}");
    fails(&member, &["access", "rule", "delete", &rule_id]);
    // Another user sees none of them.
    let other = cloud.member("unruled", "other", "pw");
    assert_eq!(ok_json(&other, &["access", "rule", "list"]), json!([]));
    fails(&other, &["access", "rule", "show", &rule_id]);

    // With the credential gone its rules stay until deleted.
    ok(&member, &["application", "credential", "delete", "limited"]);
    ok(&member, &["access", "rule", "delete", &rule_id]);
    let left = ok_json(&member, &["access", "rule", "list"]);
    assert_eq!(left.as_array().unwrap().len(), 1, "{left}");
    assert_eq!(left[0]["Service"], "object-store", "{left}");
}

#[test]
fn access_rules_over_http() {
    let cloud = Cloud::start();
    let (admin, _) = cloud.token("admin", ADMIN_PASSWORD, "admin");
    let uid = cloud
        .req("GET", "/v3/users?name=admin", Some(&admin), &[], b"")
        .json()["users"][0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let create = |name: &str, rules: Value| {
        cloud.json(
            "POST",
            &format!("/v3/users/{uid}/application_credentials"),
            Some(&admin),
            &json!({"application_credential": {"name": name, "access_rules": rules}}),
        )
    };
    // Malformed rules are refused and nothing is made.
    for (rules, words) in [
        (
            json!([{"service": "image", "method": "FETCH", "path": "/v2"}]),
            "method",
        ),
        (
            json!([{"service": "image", "method": "GET", "path": "v2"}]),
            "must start with /",
        ),
        (
            json!([{"service": "image", "method": "GET"}]),
            "an access rule is",
        ),
        (
            json!([{"service": "image", "method": "GET", "path": "/v2", "x": 1}]),
            "unknown field",
        ),
    ] {
        let r = create("bad", rules);
        assert_eq!(r.status, 400, "{}", r.text());
        assert!(r.text().contains(words), "{words}: {}", r.text());
    }
    let r = create("bad", json!([{"id": "no-such-rule"}]));
    assert_eq!(r.status, 404, "{}", r.text());
    let rules_path = format!("/v3/users/{uid}/access_rules");
    let listed = cloud.req("GET", &rules_path, Some(&admin), &[], b"");
    assert_eq!(
        listed.json()["access_rules"],
        json!([]),
        "{}",
        listed.text()
    );

    // A credential whose only rule is `GET /v2.1/flavors` under compute; a second one
    // names the same rule by its id.
    let r = create(
        "flavors",
        json!([{"service": "compute", "method": "GET", "path": "/v2.1/flavors"}]),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    let cred = r.json()["application_credential"].clone();
    let rule_id = cred["access_rules"][0]["id"].as_str().unwrap().to_string();
    let r = create("again", json!([{"id": rule_id}]));
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(
        r.json()["application_credential"]["access_rules"][0]["id"],
        rule_id.as_str()
    );
    let login = json!({"auth": {"identity": {"methods": ["application_credential"],
        "application_credential": {"id": cred["id"], "secret": cred["secret"]}}}});
    let t = cloud.json("POST", "/v3/auth/tokens", None, &login);
    assert_eq!(t.status, 201, "{}", t.text());
    assert_eq!(
        t.json()["token"]["application_credential"]["access_rules"],
        json!([{"id": rule_id, "service": "compute", "method": "GET", "path": "/v2.1/flavors"}]),
        "{}",
        t.text()
    );
    let token = t.header("x-subject-token").unwrap().to_string();
    let status = |m: &str, p: &str| cloud.req(m, p, Some(&token), &[], b"").status;
    assert_eq!(status("GET", "/compute/v2.1/flavors"), 200);
    assert_eq!(status("GET", "/compute/v2.1/flavors/detail"), 401);
    assert_eq!(status("GET", "/image/v2/images"), 401);
    assert_eq!(status("GET", "/v3/projects"), 401);
    assert_eq!(status("DELETE", &format!("/v3/users/{uid}")), 401);
    // Version documents and the token's own check need no rule.
    assert_eq!(status("GET", "/compute/v2.1/"), 200);
    let own = cloud.req(
        "GET",
        "/v3/auth/tokens",
        Some(&token),
        &[("x-subject-token", &token)],
        b"",
    );
    assert_eq!(own.status, 200, "{}", own.text());
    // A rule in use is not deleted; a credential's rules are listed with it.
    let rule_path = format!("{rules_path}/{rule_id}");
    let r = cloud.req("DELETE", &rule_path, Some(&admin), &[], b"");
    assert_eq!(r.status, 403, "{}", r.text());
    let one = cloud.req("GET", &rule_path, Some(&admin), &[], b"");
    assert_eq!(
        one.json()["access_rule"]["path"],
        "/v2.1/flavors",
        "{}",
        one.text()
    );
}

#[test]
fn restricted_credentials_make_no_credentials_or_trusts_and_unrestricted_ones_do() {
    let cloud = Cloud::start();
    let (admin, body) = cloud.token("admin", ADMIN_PASSWORD, "admin");
    let uid = body["token"]["user"]["id"].as_str().unwrap().to_string();
    let pid = body["token"]["project"]["id"].as_str().unwrap().to_string();
    let trustee = cloud.new_user(&admin, json!({"name": "delegate", "password": "pw"}));
    let creds = format!("/v3/users/{uid}/application_credentials");
    let create = |token: &str, name: &str, unrestricted: bool| {
        cloud.json(
            "POST",
            &creds,
            Some(token),
            &json!({"application_credential": {"name": name, "unrestricted": unrestricted}}),
        )
    };
    let login = |cred: &Value| {
        let body = json!({"auth": {"identity": {"methods": ["application_credential"],
            "application_credential": {"id": cred["id"], "secret": cred["secret"]}}}});
        let t = cloud.json("POST", "/v3/auth/tokens", None, &body);
        assert_eq!(t.status, 201, "{}", t.text());
        t.header("x-subject-token").unwrap().to_string()
    };
    let trust = |token: &str| {
        cloud.json(
            "POST",
            "/v3/OS-TRUST/trusts",
            Some(token),
            &json!({"trust": {"trustor_user_id": uid, "trustee_user_id": trustee,
                              "project_id": pid, "impersonation": false,
                              "roles": [{"name": "member"}]}}),
        )
    };
    let made = create(&admin, "restricted", false);
    assert_eq!(made.status, 201, "{}", made.text());
    let restricted = login(&made.json()["application_credential"]);
    let made = create(&admin, "unrestricted", true);
    assert_eq!(made.status, 201, "{}", made.text());
    let unrestricted_id = made.json()["application_credential"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let unrestricted = login(&made.json()["application_credential"]);

    let r = create(&restricted, "child", false);
    assert_eq!(r.status, 403, "{}", r.text());
    let r = cloud.req(
        "DELETE",
        &format!("{creds}/{unrestricted_id}"),
        Some(&restricted),
        &[],
        b"",
    );
    assert_eq!(r.status, 403, "{}", r.text());
    let r = trust(&restricted);
    assert_eq!(r.status, 403, "{}", r.text());
    let listed = cloud.req("GET", &creds, Some(&admin), &[], b"");
    assert_eq!(
        listed.json()["application_credentials"]
            .as_array()
            .unwrap()
            .len(),
        2
    );

    let child = create(&unrestricted, "child", false);
    assert_eq!(child.status, 201, "{}", child.text());
    let child_id = child.json()["application_credential"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let r = cloud.req(
        "DELETE",
        &format!("{creds}/{child_id}"),
        Some(&unrestricted),
        &[],
        b"",
    );
    assert_eq!(r.status, 204, "{}", r.text());
    let r = trust(&unrestricted);
    assert_eq!(r.status, 201, "{}", r.text());
}
