//! Keystone's implied roles through control: `openstack implied role create/list/delete`
//! with the stock CLI, `/v3/role_inferences` and `/v3/roles/{prior}/implies[/{implied}]`
//! over HTTP (Keystone's bodies, statuses and policy), and the rules at work in tokens.

mod common;

use common::*;
use serde_json::{Value, json};

/// The (prior, implied) role names of `openstack implied role list -f json`, sorted.
fn cli_rules(env: &[(String, String)]) -> Vec<(String, String)> {
    let list = ok_json(env, &["implied", "role", "list"]);
    let mut rules: Vec<(String, String)> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["Prior Role Name"].as_str().unwrap().to_string(),
                r["Implied Role Name"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    rules.sort();
    rules
}

fn pair(a: &str, b: &str) -> (String, String) {
    (a.to_string(), b.to_string())
}

#[test]
fn implied_roles_with_the_openstack_cli_and_over_http() {
    if !have_cli() {
        return;
    }
    let cloud = Cloud::start();
    let admin = cloud.admin();
    let (token, _) = cloud.token("admin", ADMIN_PASSWORD, "admin");
    let url = cloud.url();

    // Bootstrap's rules: admin implies member implies reader.
    let r = cloud.req("GET", "/v3/role_inferences", Some(&token), &[], b"");
    assert_eq!(r.status, 200, "{}", r.text());
    let body = r.json();
    assert_eq!(body["links"]["self"], format!("{url}/v3/role_inferences"));
    let rules = body["role_inferences"].as_array().unwrap();
    assert_eq!(rules.len(), 2, "{body}");
    let admin_rule = rules
        .iter()
        .find(|r| r["prior_role"]["name"] == "admin")
        .unwrap_or_else(|| panic!("{body}"));
    let admin_id = admin_rule["prior_role"]["id"].as_str().unwrap().to_string();
    assert_eq!(
        admin_rule["prior_role"]["links"]["self"],
        format!("{url}/v3/roles/{admin_id}")
    );
    let implied = admin_rule["implies"].as_array().unwrap();
    assert_eq!(implied.len(), 1, "{body}");
    assert_eq!(implied[0]["name"], "member", "{body}");
    let member_id = implied[0]["id"].as_str().unwrap().to_string();
    assert_eq!(
        implied[0]["links"]["self"],
        format!("{url}/v3/roles/{member_id}")
    );
    assert_eq!(
        cli_rules(&admin),
        vec![pair("admin", "member"), pair("member", "reader")]
    );

    // A new rule with the CLI: it shows in both lists and in the prior role's.
    let auditor = ok_json(&admin, &["role", "create", "auditor"]);
    let observer = ok_json(&admin, &["role", "create", "observer"]);
    let (aid, oid) = (
        auditor["id"].as_str().unwrap().to_string(),
        observer["id"].as_str().unwrap().to_string(),
    );
    let made = ok_json(
        &admin,
        &[
            "implied",
            "role",
            "create",
            "auditor",
            "--implied-role",
            "observer",
        ],
    );
    assert_eq!(made, json!({"implies": oid, "prior_role": aid}));
    assert_eq!(
        cli_rules(&admin),
        vec![
            pair("admin", "member"),
            pair("auditor", "observer"),
            pair("member", "reader")
        ]
    );
    let r = cloud.req(
        "GET",
        &format!("/v3/roles/{aid}/implies"),
        Some(&token),
        &[],
        b"",
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let inf = &r.json()["role_inference"];
    assert_eq!(inf["prior_role"]["name"], "auditor", "{inf}");
    let names: Vec<&Value> = inf["implies"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| &i["name"])
        .collect();
    assert_eq!(names, vec!["observer"], "{inf}");
    let one = format!("/v3/roles/{aid}/implies/{oid}");
    let r = cloud.req("GET", &one, Some(&token), &[], b"");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["role_inference"]["implies"]["id"], oid.as_str());
    assert_eq!(r.json()["links"]["self"], format!("{url}{one}"));
    let r = cloud.req("HEAD", &one, Some(&token), &[], b"");
    assert_eq!(r.status, 204);

    // The rule at work: a user given auditor on a project gets observer in its token.
    let member = cloud.member("iproj", "iuser", "ipass-1234");
    ok(
        &admin,
        &[
            "role",
            "add",
            "--project",
            "iproj",
            "--user",
            "iuser",
            "auditor",
        ],
    );
    let (member_token, body) = cloud.token("iuser", "ipass-1234", "iproj");
    let roles = role_names(&body);
    assert_eq!(roles, vec!["auditor", "member", "observer", "reader"]);

    // Keystone's answers: a duplicate is a 409, admin cannot be implied (403), what does
    // not exist is a 404, and listing rules needs the admin role.
    let r = cloud.req("PUT", &one, Some(&token), &[], b"");
    assert_eq!(r.status, 409, "{}", r.text());
    let r = cloud.req(
        "PUT",
        &format!("/v3/roles/{aid}/implies/{admin_id}"),
        Some(&token),
        &[],
        b"",
    );
    assert_eq!(r.status, 403, "{}", r.text());
    assert_eq!(
        r.json()["error"]["message"],
        format!("{admin_id} cannot be an implied roles.")
    );
    let r = cloud.req(
        "GET",
        &format!("/v3/roles/{oid}/implies/{aid}"),
        Some(&token),
        &[],
        b"",
    );
    assert_eq!(r.status, 404, "{}", r.text());
    assert_eq!(
        r.json()["error"]["message"],
        format!("{oid} does not imply {aid}.")
    );
    let r = cloud.req(
        "PUT",
        &format!("/v3/roles/{aid}/implies/nosuchrole"),
        Some(&token),
        &[],
        b"",
    );
    assert_eq!(r.status, 404, "{}", r.text());
    assert_eq!(
        r.json()["error"]["message"],
        "Could not find role: nosuchrole."
    );
    let r = cloud.req("GET", "/v3/role_inferences", Some(&member_token), &[], b"");
    assert_eq!(r.status, 403, "{}", r.text());
    assert!(
        r.text().contains("identity:list_role_inference_rules"),
        "{}",
        r.text()
    );
    let err = fails(&member, &["implied", "role", "list"]);
    assert!(err.contains("403"), "{err}");

    // Deleting the rule with the CLI: gone from the lists and from new tokens.
    ok(
        &admin,
        &[
            "implied",
            "role",
            "delete",
            "auditor",
            "--implied-role",
            "observer",
        ],
    );
    assert_eq!(
        cli_rules(&admin),
        vec![pair("admin", "member"), pair("member", "reader")]
    );
    let r = cloud.req("DELETE", &one, Some(&token), &[], b"");
    assert_eq!(r.status, 404, "{}", r.text());
    let (_, body) = cloud.token("iuser", "ipass-1234", "iproj");
    let roles = body["token"]["roles"].to_string();
    assert!(!roles.contains("observer"), "{roles}");
}
