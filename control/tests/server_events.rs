//! Nova's instance actions (`openstack server event list/show`) on a simulated node whose
//! stand-in agent carries out stop, start, pause and unpause and refuses reboots: each
//! action a user takes is listed once, newest first, under the request id the API
//! answered with (`x-openstack-request-id`), with its events, their results and, for
//! admins only, the fault. Builds that find no host end in an `Error` event. Another
//! project's server and an unknown request id are 404s; a deleted server's actions go
//! with it.

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::Cloud;
use common::sim::{self, Agents, NODE_TOKEN, Node, Tenant, json_req};
use serde_json::{Value, json};

/// What the stand-in agent refuses to do.
const REFUSAL: &str = "the hypervisor refused to reboot the instance";

/// A stand-in node agent: builds succeed at once; `os-stop`, `os-start`, `pause` and
/// `unpause` change the server's status; `reboot` is refused with [`REFUSAL`]; volumes
/// are made, attached and detached at once.
fn start_agent() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let servers: Arc<Mutex<BTreeMap<String, String>>> = Arc::default();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let servers = servers.clone();
            std::thread::spawn(move || {
                let _ = serve(stream, &servers);
            });
        }
    });
    port
}

fn serve(
    stream: std::net::TcpStream,
    servers: &Mutex<BTreeMap<String, String>>,
) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut r = BufReader::new(stream.try_clone()?);
    let mut line = String::new();
    r.read_line(&mut line)?;
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or("").to_string();
    let path = parts.next().unwrap_or("").to_string();
    let mut len = 0usize;
    loop {
        let mut h = String::new();
        r.read_line(&mut h)?;
        if h.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':')
            && k.eq_ignore_ascii_case("content-length")
        {
            len = v.trim().parse().unwrap_or(0);
        }
    }
    let mut body = vec![0; len];
    r.read_exact(&mut body)?;
    let v: Value = serde_json::from_slice(&body).unwrap_or_default();
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let mut held = servers.lock().unwrap();
    let view = |id: &str, status: &str| json!({"server": {"id": id, "status": status, "task_state": null, "ports": []}});
    let (status, answer) = match (method.as_str(), segs.as_slice()) {
        ("POST", ["nodes", _, "v1", "servers"]) => {
            let id = v["server"]["id"].as_str().unwrap_or("").to_string();
            held.insert(id.clone(), "ACTIVE".into());
            (202, json!({"server": {"id": id, "status": "BUILD"}}))
        }
        ("GET", ["nodes", _, "v1", "servers", id]) => match held.get(*id) {
            Some(s) => (200, view(id, s)),
            None => (404, json!({"error": {"message": "no such server"}})),
        },
        ("POST", ["nodes", _, "v1", "servers", id, "action"]) => {
            let action = v
                .as_object()
                .and_then(|o| o.keys().next().cloned())
                .unwrap_or_default();
            let next = match action.as_str() {
                "os-stop" => Some("SHUTOFF"),
                "os-start" | "unpause" => Some("ACTIVE"),
                "pause" => Some("PAUSED"),
                _ => None,
            };
            match (held.get_mut(*id), next) {
                (Some(s), Some(n)) => {
                    *s = n.to_string();
                    (202, Value::Null)
                }
                (Some(_), None) => (409, json!({"error": {"message": REFUSAL}})),
                (None, _) => (404, json!({"error": {"message": "no such server"}})),
            }
        }
        // Volumes: made at once; attached to and detached from any server held.
        ("POST", ["nodes", _, "v1", "volumes"]) => (
            201,
            json!({"volume": {"id": format!("b-{}", uuid::Uuid::new_v4())}}),
        ),
        ("DELETE", ["nodes", _, "v1", "volumes", _]) => (204, Value::Null),
        ("POST", ["nodes", _, "v1", "servers", id, "volumes"]) if held.contains_key(*id) => {
            (200, json!({"volume": {"id": v["volume_id"]}}))
        }
        ("DELETE", ["nodes", _, "v1", "servers", id, "volumes", _]) if held.contains_key(*id) => {
            (204, Value::Null)
        }
        ("PUT", ["nodes", _, "v1", "network"]) => {
            (200, json!({"generation": v["generation"], "errors": []}))
        }
        ("DELETE", ["nodes", _, "v1", "servers", id]) => {
            held.remove(*id);
            (204, Value::Null)
        }
        _ => (404, json!({"error": {"message": "no such route"}})),
    };
    drop(held);
    let text = if answer.is_null() {
        String::new()
    } else {
        answer.to_string()
    };
    let mut s = r.into_inner();
    write!(
        s,
        "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{text}",
        text.len()
    )?;
    s.flush()
}

fn config() -> String {
    format!(
        "[compute]\nheartbeat-interval-secs = 600\nmissed-heartbeats = 3\n\
         node-token = \"{NODE_TOKEN}\"\ncpu-allocation-ratio = 1.0\n\
         ram-allocation-ratio = 1.0\ndisk-allocation-ratio = 1.0\nweigher = \"spread\"\n"
    )
}

/// The request id of an answer: both of Nova's headers, the same `req-<uuid>`.
fn request_id(r: &common::Answer) -> String {
    let a = r.header("x-openstack-request-id").expect("a request id");
    assert_eq!(r.header("x-compute-request-id"), Some(a));
    assert!(
        a.starts_with("req-") && uuid::Uuid::parse_str(&a[4..]).is_ok(),
        "{a}"
    );
    a.to_string()
}

/// Polls the server (with `token`) until `f` holds for its view.
fn wait_server(port: u16, token: &str, id: &str, f: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let r = json_req(
            port,
            "GET",
            &format!("/compute/v2.1/servers/{id}"),
            token,
            &Value::Null,
        );
        assert_eq!(r.status, 200, "{}", r.text());
        let v = r.json()["server"].clone();
        if f(&v) {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting on {v}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Nova's time at 2.1: `YYYY-MM-DDTHH:MM:SS.ffffff`, no zone.
fn assert_nova_time(t: &Value) {
    let s = t.as_str().unwrap_or_else(|| panic!("a time: {t}"));
    assert_eq!(s.len(), 26, "{s}");
    assert_eq!((&s[10..11], &s[19..20]), ("T", "."), "{s}");
    assert!(s.starts_with("20"), "{s}");
}

#[test]
fn server_events_are_listed_and_shown_with_the_cli() {
    if !common::have_cli() {
        return;
    }
    let cloud = Cloud::start_with(&config(), "", "");
    let port = cloud.port;
    let agents = Agents {
        port: start_agent(),
        placements: Arc::default(),
    };
    let node = Node {
        id: "ev-a".into(),
        az: "nova".into(),
        arch: "x86_64".into(),
        vcpus: 8,
        memory_mib: 8192,
        disk_gb: 100,
    };
    sim::register(port, &agents, &node);
    let t = Tenant::setup(&cloud, &[""], &[("one", 1, 512, 1), ("big", 1, 16384, 1)]);
    let admin = cloud.admin();
    let (ok, ok_json, fails) = (common::ok, common::ok_json, common::fails);
    for image in ok(&admin, &["image", "list", "-f", "value", "-c", "ID"]).lines() {
        ok(&admin, &["image", "set", "--public", image]);
    }
    let member = cloud.member("evproj", "evuser", "ev-pass-1");
    let (token, auth) = cloud.token("evuser", "ev-pass-1", "evproj");
    let user_id = auth["token"]["user"]["id"].as_str().unwrap().to_string();
    let project_id = auth["token"]["project"]["id"].as_str().unwrap().to_string();
    let req = |m: &str, p: &str, body: Value| json_req(port, m, p, &token, &body);

    // Create (CLI), stop (HTTP), start (CLI), lock (HTTP), unlock (CLI).
    let args = common::server_create(&t.images[""], &t.flavors["one"], &["--wait"], "ev");
    ok(&member, &args);
    let id = ok_json(&member, &["server", "show", "ev"])["id"]
        .as_str()
        .unwrap()
        .to_string();
    let action = format!("/compute/v2.1/servers/{id}/action");
    let r = req("POST", &action, json!({"os-stop": null}));
    assert_eq!(r.status, 202, "{}", r.text());
    let stop_rid = request_id(&r);
    wait_server(port, &token, &id, |v| v["status"] == "SHUTOFF");
    ok(&member, &["server", "start", "ev"]);
    wait_server(port, &token, &id, |v| v["status"] == "ACTIVE");
    let r = req("POST", &action, json!({"lock": null}));
    assert_eq!(r.status, 202, "{}", r.text());
    let lock_rid = request_id(&r);
    assert_ne!(lock_rid, stop_rid, "one id per request");
    ok(&member, &["server", "unlock", "ev"]);
    // Renames and metadata are no actions in Nova.
    ok(&member, &["server", "set", "--property", "k=v", "ev"]);

    let list = ok_json(&member, &["server", "event", "list", "ev", "-f", "json"]);
    let rows = list.as_array().unwrap();
    let names: Vec<&str> = rows.iter().map(|a| a["Action"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        ["unlock", "lock", "start", "stop", "create"],
        "{list}"
    );
    assert_eq!(rows[1]["Request ID"], json!(lock_rid), "{list}");
    assert_eq!(rows[3]["Request ID"], json!(stop_rid), "{list}");
    for a in rows {
        assert_eq!(a["Server ID"], json!(id), "{a}");
        assert!(a["Request ID"].as_str().unwrap().starts_with("req-"), "{a}");
    }
    // Over HTTP: Nova's fields, the caller, newest first.
    let path = format!("/compute/v2.1/servers/{id}/os-instance-actions");
    let r = req("GET", &path, Value::Null);
    assert_eq!(r.status, 200, "{}", r.text());
    let listed = r.json()["instanceActions"].as_array().unwrap().clone();
    assert_eq!(listed.len(), 5, "{}", r.text());
    let mut times = vec![];
    for a in &listed {
        assert_eq!(
            (
                &a["instance_uuid"],
                &a["user_id"],
                &a["project_id"],
                &a["message"]
            ),
            (
                &json!(id),
                &json!(user_id),
                &json!(project_id),
                &Value::Null
            ),
            "{a}"
        );
        assert_nova_time(&a["start_time"]);
        times.push(a["start_time"].as_str().unwrap().to_string());
    }
    assert!(times.windows(2).all(|w| w[0] >= w[1]), "{times:?}");

    // Events: the agent's phases with their results; none for lock.
    let show = |rid: &str| {
        ok_json(
            &member,
            &["server", "event", "show", "ev", rid, "-f", "json"],
        )
    };
    let stop = show(&stop_rid);
    assert_eq!(
        (&stop["action"], &stop["request_id"], &stop["message"]),
        (&json!("stop"), &json!(stop_rid), &Value::Null),
        "{stop}"
    );
    let events = stop["events"].as_array().unwrap();
    assert_eq!(events.len(), 1, "{stop}");
    assert_eq!(events[0]["event"], "compute_stop_instance", "{stop}");
    assert_eq!(events[0]["result"], "Success", "{stop}");
    assert_nova_time(&events[0]["start_time"]);
    assert_nova_time(&events[0]["finish_time"]);
    // Newer clients show every field, null when the answer has none.
    assert!(
        events[0].get("traceback").is_none_or(Value::is_null),
        "tracebacks are for admins: {stop}"
    );
    let create_rid = rows[4]["Request ID"].as_str().unwrap().to_string();
    let create = show(&create_rid);
    let phases: Vec<(&str, &str)> = create["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["event"].as_str().unwrap(), e["result"].as_str().unwrap()))
        .collect();
    assert_eq!(
        phases,
        [
            ("conductor_schedule_and_build_instances", "Success"),
            ("compute__do_build_and_run_instance", "Success")
        ],
        "{create}"
    );
    let lock = show(&lock_rid);
    assert_eq!(
        (&lock["action"], &lock["events"]),
        (&json!("lock"), &json!([])),
        "{lock}"
    );

    // A refused action: the error event, the action's message, the fault for admins.
    let err = fails(&member, &["server", "reboot", "ev"]);
    assert!(err.contains(REFUSAL), "{err}");
    let list = ok_json(
        &member,
        &["server", "event", "list", "ev", "--long", "-f", "json"],
    );
    let newest = &list.as_array().unwrap()[0];
    assert_eq!(
        (&newest["Action"], &newest["Message"]),
        (&json!("reboot"), &json!("Error")),
        "{list}"
    );
    let reboot_rid = newest["Request ID"].as_str().unwrap().to_string();
    let reboot = show(&reboot_rid);
    let e = &reboot["events"][0];
    assert_eq!(
        (&e["event"], &e["result"]),
        (&json!("compute_reboot_instance"), &json!("Error")),
        "{reboot}"
    );
    assert!(e.get("traceback").is_none_or(Value::is_null), "{reboot}");
    let r = json_req(
        port,
        "GET",
        &format!("{path}/{reboot_rid}"),
        &t.token,
        &Value::Null,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let tb = r.json()["instanceAction"]["events"][0]["traceback"].clone();
    assert!(tb.as_str().is_some_and(|t| t.contains(REFUSAL)), "{tb}");

    // Volumes attached to and detached from the stopped server.
    let r = req("POST", &action, json!({"os-stop": null}));
    assert_eq!(r.status, 202, "{}", r.text());
    wait_server(port, &token, &id, |v| v["status"] == "SHUTOFF");
    ok(&member, &["volume", "create", "--size", "1", "evvol"]);
    let deadline = Instant::now() + Duration::from_secs(60);
    while ok_json(&member, &["volume", "show", "evvol"])["status"] != "available" {
        assert!(
            Instant::now() < deadline,
            "the volume never became available"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    ok(&member, &["server", "add", "volume", "ev", "evvol"]);
    ok(&member, &["server", "remove", "volume", "ev", "evvol"]);
    let list = ok_json(&member, &["server", "event", "list", "ev", "-f", "json"]);
    let names: Vec<&str> = list.as_array().unwrap()[..3]
        .iter()
        .map(|a| a["Action"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["detach_volume", "attach_volume", "stop"], "{list}");
    for (i, event) in [(0, "compute_detach_volume"), (1, "compute_attach_volume")] {
        let rid = list[i]["Request ID"].as_str().unwrap();
        let e = show(rid)["events"][0].clone();
        assert_eq!(
            (&e["event"], &e["result"]),
            (&json!(event), &json!("Success")),
            "{e}"
        );
    }

    // A build that finds no host: the scheduling event ends in Error.
    let r = req(
        "POST",
        "/compute/v2.1/servers",
        json!({"server": {"name": "big", "imageRef": t.images[""],
                          "flavorRef": t.flavors["big"], "networks": "none"}}),
    );
    assert_eq!(r.status, 202, "{}", r.text());
    let big_rid = request_id(&r);
    let big = r.json()["server"]["id"].as_str().unwrap().to_string();
    let fault = wait_server(port, &token, &big, |v| v["status"] == "ERROR");
    let shown = ok_json(
        &member,
        &["server", "event", "show", &big, &big_rid, "-f", "json"],
    );
    assert_eq!(
        (&shown["action"], &shown["message"]),
        (&json!("create"), &json!("Error")),
        "{shown}"
    );
    let e = &shown["events"][0];
    assert_eq!(
        (&e["event"], &e["result"]),
        (
            &json!("conductor_schedule_and_build_instances"),
            &json!("Error")
        ),
        "{shown}"
    );
    assert_nova_time(&e["finish_time"]);
    let r = json_req(
        port,
        "GET",
        &format!("/compute/v2.1/servers/{big}/os-instance-actions/{big_rid}"),
        &t.token,
        &Value::Null,
    );
    let tb = r.json()["instanceAction"]["events"][0]["traceback"].clone();
    assert!(
        tb.as_str().is_some_and(|t| t.contains("No valid host")),
        "{tb} / {fault}"
    );

    // Unknown request id; another project's server.
    let r = req("GET", &format!("{path}/req-nosuch"), Value::Null);
    assert_eq!(r.status, 404, "{}", r.text());
    assert!(
        r.json()["itemNotFound"]["message"]
            .as_str()
            .unwrap()
            .contains("req-nosuch"),
        "{}",
        r.text()
    );
    let err = fails(&member, &["server", "event", "show", "ev", "req-nosuch"]);
    assert!(err.contains("404") || err.contains("not found"), "{err}");
    let other = cloud.member("otherproj", "otheruser", "other-pass-1");
    let (other_token, _) = cloud.token("otheruser", "other-pass-1", "otherproj");
    for p in [path.clone(), format!("{path}/{stop_rid}")] {
        let r = json_req(port, "GET", &p, &other_token, &Value::Null);
        assert_eq!(r.status, 404, "{p}: {}", r.text());
        assert!(r.json()["itemNotFound"].is_object(), "{}", r.text());
    }
    let err = fails(&other, &["server", "event", "list", &id]);
    assert!(
        err.contains("404") || err.contains("could not be found"),
        "{err}"
    );

    // Deleted: the delete's request id answered, then the server and its actions gone,
    // from the API and from the store.
    let db = rusqlite::Connection::open_with_flags(
        cloud.dir.path().join("control.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    let stored = |server: &str| -> i64 {
        db.query_row(
            "SELECT count(*) FROM records WHERE kind = 'instance_action' AND scope = ?1",
            [server],
            |row| row.get(0),
        )
        .unwrap()
    };
    // create, stop, start, lock, unlock, reboot, stop, attach_volume, detach_volume
    assert_eq!(stored(&id), 9);
    let r = req(
        "DELETE",
        &format!("/compute/v2.1/servers/{id}"),
        Value::Null,
    );
    assert_eq!(r.status, 204, "{}", r.text());
    request_id(&r);
    let r = json_req(port, "GET", &path, &t.token, &Value::Null);
    assert_eq!(r.status, 404, "{}", r.text());
    assert_eq!(stored(&id), 0, "a deleted server's actions go with it");
    assert_eq!(stored(&big), 1, "the other server keeps its own");
}
