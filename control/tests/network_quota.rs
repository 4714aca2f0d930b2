//! Neutron's quotas through control: `openstack quota show/set` with the stock CLI, the
//! `/v2.0/quotas` API (defaults, details with usage, reset, policy, bad input) and the
//! limits enforced on creates (racing creates: `postgres.rs`).

mod common;

use common::*;
use serde_json::{Value, json};

#[test]
fn network_quotas_are_shown_set_and_enforced_with_the_openstack_cli() {
    if !have_cli() {
        return;
    }
    let cloud = Cloud::start();
    let admin = cloud.admin();
    let member = cloud.member("qproj", "quser", "qpass-1234");
    let (token, body) = cloud.token("quser", "qpass-1234", "qproj");
    let pid = body["token"]["project"]["id"].as_str().unwrap().to_string();
    let (admin_token, _) = cloud.token("admin", ADMIN_PASSWORD, "admin");

    // Every quota the CLI shows answers, with Neutron's defaults for the network ones.
    let q = quota_show(&admin, "qproj");
    for (k, v) in [
        ("networks", 100),
        ("subnets", 100),
        ("ports", 500),
        ("routers", 10),
        ("floating-ips", 50),
        ("secgroups", 10),
        ("secgroup-rules", 100),
    ] {
        assert_eq!(q[k], v, "{k} in {q}");
    }
    ok(
        &admin,
        &["quota", "set", "--networks", "1", "--ports", "2", "qproj"],
    );
    // A member names the project by id (listing projects by name needs the admin role,
    // as in Keystone).
    let q = quota_show(&member, &pid);
    assert_eq!(
        (q["networks"].clone(), q["ports"].clone()),
        (json!(1), json!(2))
    );
    assert_eq!(q["subnets"], 100, "{q}");

    // One network, then the second is refused with Neutron's OverQuota 409.
    ok(&member, &["network", "create", "qnet"]);
    let err = fails(&member, &["network", "create", "qnet2"]);
    assert!(
        err.contains("Quota exceeded for resources: ['network']"),
        "{err}"
    );
    let r = cloud.json(
        "POST",
        "/network/v2.0/networks",
        Some(&token),
        &json!({"network": {"name": "qnet3"}}),
    );
    assert_eq!(r.status, 409, "{}", r.text());
    assert_eq!(
        r.json()["NeutronError"]["type"],
        "OverQuota",
        "{}",
        r.text()
    );
    let nets = ok_json(&member, &["network", "list", "-f", "json"]);
    assert_eq!(nets.as_array().unwrap().len(), 1, "{nets}");

    // Ports: two, then refused; nothing of the refused one is left.
    ok(&member, &["port", "create", "--network", "qnet", "p1"]);
    ok(&member, &["port", "create", "--network", "qnet", "p2"]);
    let err = fails(&member, &["port", "create", "--network", "qnet", "p3"]);
    assert!(err.contains("['port']"), "{err}");
    let ports = ok_json(&member, &["port", "list", "-f", "json"]);
    assert_eq!(ports.as_array().unwrap().len(), 2, "{ports}");

    // `quota list --detail` reads the details (limit and usage per resource); newer
    // clients moved it to `quota show --usage`.
    let usage = if cli_has_flag(&["quota", "list"], "--detail") {
        ok_json(
            &admin,
            &[
                "quota",
                "list",
                "--network",
                "--detail",
                "--project",
                "qproj",
            ],
        )
    } else {
        ok_json(&admin, &["quota", "show", "--usage", "--network", "qproj"])
    };
    let row = |name: &str| {
        usage
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["Resource"] == name)
            .map(|r| (r["In Use"].clone(), r["Limit"].clone()))
            .unwrap_or_else(|| panic!("no {name} in {usage}"))
    };
    assert_eq!(row("ports"), (json!(2), json!(2)));
    assert_eq!(row("networks"), (json!(1), json!(1)));
    assert_eq!(row("subnets"), (json!(0), json!(100)));

    // Details: limits with what is used.
    let r = cloud.req(
        "GET",
        &format!("/network/v2.0/quotas/{pid}/details"),
        Some(&token),
        &[],
        b"",
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let d = &r.json()["quota"];
    assert_eq!(
        d["port"],
        json!({"limit": 2, "used": 2, "reserved": 0}),
        "{d}"
    );
    assert_eq!(d["network"]["used"], 1, "{d}");
    assert_eq!(d["subnet"], json!({"limit": 100, "used": 0, "reserved": 0}));

    // Policy: a member neither sets quotas nor reads another project's.
    let put = |tok: &str, body: Value| {
        cloud.json(
            "PUT",
            &format!("/network/v2.0/quotas/{pid}"),
            Some(tok),
            &body,
        )
    };
    let r = put(&token, json!({"quota": {"port": 50}}));
    assert_eq!(r.status, 403, "{}", r.text());
    let (_, admin_body) = cloud.token("admin", ADMIN_PASSWORD, "admin");
    let admin_pid = admin_body["token"]["project"]["id"].as_str().unwrap();
    let r = cloud.req(
        "GET",
        &format!("/network/v2.0/quotas/{admin_pid}"),
        Some(&token),
        &[],
        b"",
    );
    assert_eq!(r.status, 403, "{}", r.text());

    // Bad input, and nothing changed by it.
    for (body, says) in [
        (
            json!({"quota": {"ports": 5}}),
            "Unrecognized attribute(s) 'ports'",
        ),
        (
            json!({"quota": {"port": -5}}),
            "greater than or equal to -1",
        ),
        (json!({"quota": {"port": "many"}}), "Invalid input for port"),
        (json!({"quotas": {}}), "Resource body required: quota"),
        (
            json!({"quota": {"port": 1, "check_limit": true}}),
            "already used and reserved 2",
        ),
    ] {
        let r = put(&admin_token, body.clone());
        assert_eq!(r.status, 400, "{body}: {}", r.text());
        assert!(
            r.json()["NeutronError"]["message"]
                .as_str()
                .is_some_and(|m| m.contains(says)),
            "{body}: {}",
            r.text()
        );
    }
    let q = quota_show(&admin, "qproj");
    assert_eq!(q["ports"], 2, "{q}");

    let r = put(&admin_token, json!({"quota": {"port": 4}}));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["quota"]["port"], 4, "{}", r.text());

    // Listing shows the project with its own quotas; DELETE puts the defaults back.
    let r = cloud.req("GET", "/network/v2.0/quotas", Some(&admin_token), &[], b"");
    assert_eq!(r.status, 200, "{}", r.text());
    let listed = r.json()["quotas"].clone();
    assert!(
        listed
            .as_array()
            .unwrap()
            .iter()
            .any(|q| q["project_id"] == pid.as_str() && q["port"] == 4),
        "{listed}"
    );
    let r = cloud.req(
        "DELETE",
        &format!("/network/v2.0/quotas/{pid}"),
        Some(&admin_token),
        &[],
        b"",
    );
    assert_eq!(r.status, 204, "{}", r.text());
    let q = quota_show(&admin, "qproj");
    assert_eq!(
        (q["networks"].clone(), q["ports"].clone()),
        (json!(100), json!(500))
    );
    ok(&member, &["network", "create", "qnet2"]);
}
