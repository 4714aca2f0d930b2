//! Keystone unified limits through control: `openstack registered limit ...` and
//! `openstack limit ...` with the stock CLI, `/v3/limits/model`, Keystone's errors and
//! policy over raw HTTP, and limits kept across a restart.

mod common;

use common::*;
use serde_json::{Value, json};

/// Asserts Keystone's error body: `{"error": {"code", "title", "message"}}`.
fn assert_error(r: &Answer, code: u16, title: &str, message: &str) {
    assert_eq!(r.status, code, "{}", r.text());
    assert_eq!(
        r.json(),
        json!({"error": {"code": code, "title": title, "message": message}}),
        "{}",
        r.text()
    );
}

/// The id of a new catalog service of `kind` named `name`.
fn service(admin: &[(String, String)], name: &str, kind: &str) -> String {
    let s = ok_json(admin, &["service", "create", "--name", name, kind]);
    s["id"].as_str().unwrap().to_string()
}

/// A project's id by name.
fn project_id(admin: &[(String, String)], name: &str) -> String {
    let p = ok_json(admin, &["project", "show", name]);
    p["id"].as_str().unwrap().to_string()
}

/// The ids in a CLI list (`ID` column), sorted.
fn ids(list: &Value) -> Vec<String> {
    let mut v: Vec<String> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["ID"].as_str().unwrap().to_string())
        .collect();
    v.sort();
    v
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

#[test]
fn limits_with_the_openstack_cli_survive_a_restart() {
    if !have_cli() {
        return;
    }
    let mut cloud = Cloud::start();
    let admin = cloud.admin();
    let svc = service(&admin, "limitsvc", "volumev3");
    let other = service(&admin, "othersvc", "compute");

    // Registered limits: create, show, list with filters, set.
    let volumes = ok_json(
        &admin,
        &[
            "registered",
            "limit",
            "create",
            "--service",
            "limitsvc",
            "--default-limit",
            "10",
            "--description",
            "volumes per project",
            "volumes",
        ],
    );
    let rl = volumes["id"].as_str().unwrap().to_string();
    assert_eq!(volumes["service_id"], svc.as_str(), "{volumes}");
    assert_eq!(volumes["resource_name"], "volumes", "{volumes}");
    assert_eq!(volumes["default_limit"], 10, "{volumes}");
    assert_eq!(volumes["description"], "volumes per project", "{volumes}");
    assert_eq!(volumes["region_id"], Value::Null, "{volumes}");
    let cores = ok_json(
        &admin,
        &[
            "registered",
            "limit",
            "create",
            "--service",
            "othersvc",
            "--region",
            "RegionOne",
            "--default-limit",
            "-1",
            "cores",
        ],
    );
    let rl_cores = cores["id"].as_str().unwrap().to_string();
    assert_eq!(cores["default_limit"], -1, "{cores}");
    assert_eq!(cores["region_id"], "RegionOne", "{cores}");
    let shown = ok_json(&admin, &["registered", "limit", "show", &rl]);
    assert_eq!(shown["id"], rl.as_str(), "{shown}");
    assert_eq!(shown["default_limit"], 10, "{shown}");
    let all = ok_json(&admin, &["registered", "limit", "list"]);
    assert_eq!(ids(&all), sorted(vec![rl.clone(), rl_cores.clone()]));
    let row = all
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["ID"] == rl.as_str())
        .unwrap();
    assert_eq!(row["Service ID"], svc.as_str(), "{row}");
    assert_eq!(row["Resource Name"], "volumes", "{row}");
    assert_eq!(row["Default Limit"], 10, "{row}");
    let by_service = ok_json(
        &admin,
        &["registered", "limit", "list", "--service", "othersvc"],
    );
    assert_eq!(ids(&by_service), vec![rl_cores.clone()]);
    assert_eq!(by_service[0]["Service ID"], other.as_str(), "{by_service}");
    let by_name = ok_json(
        &admin,
        &["registered", "limit", "list", "--resource-name", "volumes"],
    );
    assert_eq!(ids(&by_name), vec![rl.clone()]);
    let set = ok_json(
        &admin,
        &["registered", "limit", "set", "--default-limit", "20", &rl],
    );
    assert_eq!(set["default_limit"], 20, "{set}");
    assert_eq!(set["description"], "volumes per project", "{set}");
    assert_eq!(set["service_id"], svc.as_str(), "{set}");

    // A project limit overriding it; a member of the project sees it, one of another
    // project does not.
    let member = cloud.member("lproj", "luser", "lpass-1234");
    let outsider = cloud.member("oproj", "ouser", "opass-1234");
    let lproj = project_id(&admin, "lproj");
    let limit = ok_json(
        &admin,
        &[
            "limit",
            "create",
            "--project",
            "lproj",
            "--service",
            "limitsvc",
            "--resource-limit",
            "5",
            "volumes",
        ],
    );
    let lid = limit["id"].as_str().unwrap().to_string();
    assert_eq!(limit["project_id"], lproj.as_str(), "{limit}");
    assert_eq!(limit["service_id"], svc.as_str(), "{limit}");
    assert_eq!(limit["resource_name"], "volumes", "{limit}");
    assert_eq!(limit["resource_limit"], 5, "{limit}");
    let shown = ok_json(&admin, &["limit", "show", &lid]);
    assert_eq!(shown["resource_limit"], 5, "{shown}");
    let set = ok_json(
        &admin,
        &[
            "limit",
            "set",
            "--resource-limit",
            "7",
            "--description",
            "more",
            &lid,
        ],
    );
    assert_eq!(set["resource_limit"], 7, "{set}");
    assert_eq!(set["description"], "more", "{set}");
    let listed = ok_json(&admin, &["limit", "list", "--project", "lproj"]);
    assert_eq!(ids(&listed), vec![lid.clone()]);
    let row = &listed[0];
    assert_eq!(row["Project ID"], lproj.as_str(), "{row}");
    assert_eq!(row["Resource Limit"], 7, "{row}");
    assert_eq!(
        ids(&ok_json(
            &admin,
            &["limit", "list", "--service", "othersvc"]
        )),
        Vec::<String>::new()
    );
    assert_eq!(
        ids(&ok_json(&member, &["limit", "list"])),
        vec![lid.clone()]
    );
    assert_eq!(
        ok_json(&member, &["limit", "show", &lid])["resource_limit"],
        7
    );
    assert_eq!(
        ids(&ok_json(&outsider, &["limit", "list"])),
        Vec::<String>::new()
    );
    let err = fails(&outsider, &["limit", "show", &lid]);
    assert!(
        err.contains("404") || err.contains("Could not find"),
        "{err}"
    );
    // Anyone authenticated reads the registered limits.
    assert_eq!(
        ids(&ok_json(&outsider, &["registered", "limit", "list"])),
        sorted(vec![rl.clone(), rl_cores.clone()])
    );

    // Both kinds survive a restart.
    cloud.restart();
    let shown = ok_json(&admin, &["registered", "limit", "show", &rl]);
    assert_eq!(shown["default_limit"], 20, "{shown}");
    let shown = ok_json(&admin, &["limit", "show", &lid]);
    assert_eq!(shown["resource_limit"], 7, "{shown}");
    assert_eq!(shown["project_id"], lproj.as_str(), "{shown}");

    // A registered limit in use cannot go; once its project limit is deleted it can.
    let err = fails(&admin, &["registered", "limit", "delete", &rl]);
    assert!(err.contains("delete"), "{err}");
    ok(&admin, &["limit", "delete", &lid]);
    assert_eq!(
        ids(&ok_json(&admin, &["limit", "list"])),
        Vec::<String>::new()
    );
    ok(&admin, &["registered", "limit", "delete", &rl]);
    assert_eq!(
        ids(&ok_json(&admin, &["registered", "limit", "list"])),
        vec![rl_cores]
    );
    let err = fails(&admin, &["registered", "limit", "show", &rl]);
    assert!(
        err.contains("404") || err.contains("Could not find"),
        "{err}"
    );
}

#[test]
fn limits_over_http_answer_as_keystone() {
    if !have_cli() {
        return;
    }
    let cloud = Cloud::start();
    let admin = cloud.admin();
    let url = cloud.url();
    let (token, _) = cloud.token("admin", ADMIN_PASSWORD, "admin");
    let svc = service(&admin, "limitsvc", "volumev3");
    cloud.member("mproj", "muser", "mpass-1234");
    cloud.member("nproj", "nuser", "npass-1234");
    let (mtoken, _) = cloud.token("muser", "mpass-1234", "mproj");
    let (ntoken, _) = cloud.token("nuser", "npass-1234", "nproj");
    let mproj = project_id(&admin, "mproj");
    let nproj = project_id(&admin, "nproj");

    // The enforcement model, to anyone authenticated.
    let r = cloud.req("GET", "/v3/limits/model", Some(&mtoken), &[], b"");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.json()["model"],
        json!({"name": "flat", "description": "Limit enforcement and validation does not \
               take project hierarchy into consideration."})
    );
    let r = cloud.req("GET", "/v3/limits/model", None, &[], b"");
    assert_eq!(r.status, 401, "{}", r.text());

    // Registered limits: a batch of two, both answered with links.
    let r = cloud.json(
        "POST",
        "/v3/registered_limits",
        Some(&token),
        &json!({"registered_limits": [
            {"service_id": svc, "resource_name": "volumes", "default_limit": 10},
            {"service_id": svc, "resource_name": "snapshots", "default_limit": 0,
             "region_id": "RegionOne", "description": "snaps"}]}),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    let made = r.json()["registered_limits"].clone();
    assert_eq!(made.as_array().unwrap().len(), 2, "{made}");
    let rl = made[0]["id"].as_str().unwrap().to_string();
    assert_eq!(
        made[0],
        json!({"id": rl, "service_id": svc, "region_id": null, "resource_name": "volumes",
               "default_limit": 10, "description": null,
               "links": {"self": format!("{url}/v3/registered_limits/{rl}")}})
    );
    assert_eq!(made[1]["region_id"], "RegionOne");
    assert_eq!(made[1]["description"], "snaps");

    // Keystone's errors for registered limits.
    let unknown = json!({"registered_limits": [
        {"service_id": "nosuchservice", "resource_name": "volumes", "default_limit": 1}]});
    let r = cloud.json("POST", "/v3/registered_limits", Some(&token), &unknown);
    assert_error(
        &r,
        400,
        "Bad Request",
        "Expecting to find service_id in registered_limits. The server could not comply \
         with the request since it is either malformed or otherwise incorrect. The client \
         is assumed to be in error.",
    );
    let dup = json!({"registered_limits": [
        {"service_id": svc, "resource_name": "volumes", "default_limit": 3}]});
    let r = cloud.json("POST", "/v3/registered_limits", Some(&token), &dup);
    assert_error(
        &r,
        409,
        "Conflict",
        "Conflict occurred attempting to store registered_limit - Duplicate entry.",
    );
    let r = cloud.json("POST", "/v3/registered_limits", Some(&mtoken), &dup);
    assert_error(
        &r,
        403,
        "Forbidden",
        "You are not authorized to perform the requested action: \
         identity:create_registered_limits.",
    );
    for bad in [
        json!(-2),
        json!(2_147_483_648_i64),
        json!("ten"),
        json!(1.5),
    ] {
        let body = json!({"registered_limits": [
            {"service_id": svc, "resource_name": "gigabytes", "default_limit": bad}]});
        let r = cloud.json("POST", "/v3/registered_limits", Some(&token), &body);
        assert_eq!(r.status, 400, "{bad}: {}", r.text());
        assert_eq!(r.json()["error"]["code"], 400, "{}", r.text());
    }
    let r = cloud.json(
        "POST",
        "/v3/registered_limits",
        Some(&token),
        &json!({"registered_limits": []}),
    );
    assert_eq!(r.status, 400, "{}", r.text());
    let r = cloud.json(
        "PATCH",
        &format!("/v3/registered_limits/{rl}"),
        Some(&mtoken),
        &json!({"registered_limit": {"default_limit": 1}}),
    );
    assert_eq!(r.status, 403, "{}", r.text());
    let r = cloud.req("GET", "/v3/registered_limits/nope", Some(&mtoken), &[], b"");
    assert_error(
        &r,
        404,
        "Not Found",
        "Could not find registered limit for nope.",
    );
    let r = cloud.req(
        "GET",
        &format!("/v3/registered_limits?service_id={svc}&region_id=RegionOne"),
        Some(&mtoken),
        &[],
        b"",
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let list = r.json()["registered_limits"].clone();
    assert_eq!(list.as_array().unwrap().len(), 1, "{list}");
    assert_eq!(list[0]["resource_name"], "snapshots");

    // Project limits: one per project; no registered limit is Keystone's 403.
    let r = cloud.json(
        "POST",
        "/v3/limits",
        Some(&token),
        &json!({"limits": [
            {"project_id": mproj, "service_id": svc, "resource_name": "volumes",
             "resource_limit": 5},
            {"project_id": nproj, "service_id": svc, "resource_name": "volumes",
             "resource_limit": 6, "description": "n"}]}),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    let made = r.json()["limits"].clone();
    let (ml, nl) = (
        made[0]["id"].as_str().unwrap().to_string(),
        made[1]["id"].as_str().unwrap().to_string(),
    );
    assert_eq!(
        made[0],
        json!({"id": ml, "project_id": mproj, "domain_id": null, "service_id": svc,
               "region_id": null, "resource_name": "volumes", "resource_limit": 5,
               "description": null, "links": {"self": format!("{url}/v3/limits/{ml}")}})
    );
    let r = cloud.json(
        "POST",
        "/v3/limits",
        Some(&token),
        &json!({"limits": [{"project_id": mproj, "service_id": svc,
                            "resource_name": "volumes", "resource_limit": 9}]}),
    );
    assert_error(
        &r,
        409,
        "Conflict",
        "Conflict occurred attempting to store limit - Duplicate entry.",
    );
    let r = cloud.json(
        "POST",
        "/v3/limits",
        Some(&token),
        &json!({"limits": [{"project_id": mproj, "service_id": svc,
                            "resource_name": "backups", "resource_limit": 9}]}),
    );
    assert_error(
        &r,
        403,
        "Forbidden",
        "Unable to create a limit that has no corresponding registered limit.",
    );
    // A registered limit in another region is not the one a limit without one needs.
    let r = cloud.json(
        "POST",
        "/v3/limits",
        Some(&token),
        &json!({"limits": [{"project_id": mproj, "service_id": svc,
                            "resource_name": "snapshots", "resource_limit": 9}]}),
    );
    assert_eq!(r.status, 403, "{}", r.text());
    let r = cloud.json(
        "POST",
        "/v3/limits",
        Some(&token),
        &json!({"limits": [{"project_id": "nosuchproject", "service_id": svc,
                            "resource_name": "volumes", "resource_limit": 9}]}),
    );
    assert_error(
        &r,
        400,
        "Bad Request",
        "Expecting to find project_id in limits. The server could not comply with the \
         request since it is either malformed or otherwise incorrect. The client is \
         assumed to be in error.",
    );
    let r = cloud.json(
        "POST",
        "/v3/limits",
        Some(&mtoken),
        &json!({"limits": [{"project_id": mproj, "service_id": svc,
                            "resource_name": "snapshots", "region_id": "RegionOne",
                            "resource_limit": 1}]}),
    );
    assert_error(
        &r,
        403,
        "Forbidden",
        "You are not authorized to perform the requested action: identity:create_limits.",
    );

    // Who sees which limits.
    let listed = |tok: &str, query: &str| -> Vec<String> {
        let r = cloud.req("GET", &format!("/v3/limits{query}"), Some(tok), &[], b"");
        assert_eq!(r.status, 200, "{}", r.text());
        sorted(
            r.json()["limits"]
                .as_array()
                .unwrap()
                .iter()
                .map(|l| l["id"].as_str().unwrap().to_string())
                .collect(),
        )
    };
    assert_eq!(listed(&token, ""), sorted(vec![ml.clone(), nl.clone()]));
    assert_eq!(
        listed(&token, &format!("?project_id={nproj}")),
        vec![nl.clone()]
    );
    assert_eq!(
        listed(&token, "?resource_name=snapshots"),
        Vec::<String>::new()
    );
    assert_eq!(listed(&mtoken, ""), vec![ml.clone()]);
    assert_eq!(
        listed(&mtoken, &format!("?project_id={nproj}")),
        Vec::<String>::new()
    );
    assert_eq!(listed(&ntoken, ""), vec![nl.clone()]);
    let r = cloud.req("GET", &format!("/v3/limits/{ml}"), Some(&mtoken), &[], b"");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["limit"]["resource_limit"], 5);
    let r = cloud.req("GET", &format!("/v3/limits/{nl}"), Some(&mtoken), &[], b"");
    assert_error(
        &r,
        404,
        "Not Found",
        &format!("Could not find limit for {nl}."),
    );

    // Updates: only the limit and description change, and only by an admin.
    let r = cloud.json(
        "PATCH",
        &format!("/v3/limits/{ml}"),
        Some(&mtoken),
        &json!({"limit": {"resource_limit": 50}}),
    );
    assert_eq!(r.status, 403, "{}", r.text());
    let r = cloud.json(
        "PATCH",
        &format!("/v3/limits/{ml}"),
        Some(&token),
        &json!({"limit": {"resource_limit": 50, "description": "bigger"}}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["limit"]["resource_limit"], 50);
    assert_eq!(r.json()["limit"]["description"], "bigger");
    let r = cloud.json(
        "PATCH",
        &format!("/v3/limits/{ml}"),
        Some(&token),
        &json!({"limit": {"project_id": nproj}}),
    );
    assert_eq!(r.status, 400, "{}", r.text());

    // A referenced registered limit keeps its key and cannot be deleted (403); its
    // default may change.
    let in_use = format!(
        "Unable to update or delete registered limit {rl} because there are project \
         limits associated with it."
    );
    let r = cloud.req(
        "DELETE",
        &format!("/v3/registered_limits/{rl}"),
        Some(&token),
        &[],
        b"",
    );
    assert_error(&r, 403, "Forbidden", &in_use);
    let r = cloud.json(
        "PATCH",
        &format!("/v3/registered_limits/{rl}"),
        Some(&token),
        &json!({"registered_limit": {"resource_name": "disks"}}),
    );
    assert_error(&r, 403, "Forbidden", &in_use);
    let r = cloud.json(
        "PATCH",
        &format!("/v3/registered_limits/{rl}"),
        Some(&token),
        &json!({"registered_limit": {"default_limit": 12, "description": "d"}}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["registered_limit"]["default_limit"], 12);
    assert_eq!(r.json()["registered_limit"]["description"], "d");

    // Deleting: members may not; deleting a project deletes its limits as well; then the
    // registered limit is free to go.
    let r = cloud.req(
        "DELETE",
        &format!("/v3/limits/{ml}"),
        Some(&mtoken),
        &[],
        b"",
    );
    assert_eq!(r.status, 403, "{}", r.text());
    let r = cloud.req(
        "DELETE",
        &format!("/v3/limits/{ml}"),
        Some(&token),
        &[],
        b"",
    );
    assert_eq!(r.status, 204, "{}", r.text());
    ok(&admin, &["project", "delete", "nproj"]);
    let r = cloud.req("GET", &format!("/v3/limits/{nl}"), Some(&token), &[], b"");
    assert_eq!(r.status, 404, "{}", r.text());
    let r = cloud.req("GET", &format!("/v3/limits/{ml}"), Some(&token), &[], b"");
    assert_eq!(r.status, 404, "{}", r.text());
    let r = cloud.req(
        "DELETE",
        &format!("/v3/registered_limits/{rl}"),
        Some(&mtoken),
        &[],
        b"",
    );
    assert_eq!(r.status, 403, "{}", r.text());
    let r = cloud.req(
        "DELETE",
        &format!("/v3/registered_limits/{rl}"),
        Some(&token),
        &[],
        b"",
    );
    assert_eq!(r.status, 204, "{}", r.text());
    let r = cloud.req("GET", "/v3/registered_limits", Some(&token), &[], b"");
    assert_eq!(r.json()["registered_limits"].as_array().unwrap().len(), 1);
}

#[test]
fn limits_on_postgres_are_shared_by_controllers_and_kept() {
    let Some(pg) = common::pg::Pg::start() else {
        return;
    };
    pg.create_db("limits");
    let mut cloud = Cloud::start_with_store("postgres", &pg.url("limits"));
    let (token, _) = cloud.token("admin", ADMIN_PASSWORD, "admin");
    let r = cloud.json(
        "POST",
        "/v3/services",
        Some(&token),
        &json!({"service": {"type": "volumev3", "name": "pgvol"}}),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    let svc = r.json()["service"]["id"].as_str().unwrap().to_string();
    let r = cloud.req("GET", "/v3/auth/projects", Some(&token), &[], b"");
    let admin_project = r.json()["projects"][0]["id"].as_str().unwrap().to_string();
    let registered = json!({"registered_limits": [
        {"service_id": svc, "resource_name": "volumes", "default_limit": 10}]});
    let r = cloud.json("POST", "/v3/registered_limits", Some(&token), &registered);
    assert_eq!(r.status, 201, "{}", r.text());
    let rl = r.json()["registered_limits"][0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let limit = json!({"limits": [{"project_id": admin_project, "service_id": svc,
                                   "resource_name": "volumes", "resource_limit": 3}]});
    let r = cloud.json("POST", "/v3/limits", Some(&token), &limit);
    assert_eq!(r.status, 201, "{}", r.text());
    let lid = r.json()["limits"][0]["id"].as_str().unwrap().to_string();

    // A second controller on the same database sees both and refuses the duplicates.
    let second = cloud.another_controller();
    let post = |path: &str, body: &Value| {
        http(
            second.port,
            "POST",
            path,
            &[
                ("content-type", "application/json"),
                ("x-auth-token", &token),
            ],
            body.to_string().as_bytes(),
        )
    };
    let r = http(
        second.port,
        "GET",
        &format!("/v3/limits/{lid}"),
        &[("x-auth-token", &token)],
        b"",
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["limit"]["resource_limit"], 3);
    assert_eq!(post("/v3/registered_limits", &registered).status, 409);
    assert_eq!(post("/v3/limits", &limit).status, 409);
    drop(second);

    cloud.restart();
    let r = cloud.req(
        "GET",
        &format!("/v3/registered_limits/{rl}"),
        Some(&token),
        &[],
        b"",
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["registered_limit"]["default_limit"], 10);
    let r = cloud.req("GET", "/v3/limits", Some(&token), &[], b"");
    assert_eq!(r.status, 200, "{}", r.text());
    let limits = r.json()["limits"].clone();
    assert_eq!(limits.as_array().unwrap().len(), 1, "{limits}");
    assert_eq!(limits[0]["id"], lid.as_str());
}
