//! The store conformance suite against a real PostgreSQL server started by the test
//! (initdb into a temp dir as the `postgres` user, pg_ctl on a loopback port), plus a
//! whole control running on it, driven over HTTP.

mod common;

use common::pg::Pg;
use control::store::Store;

#[test]
fn store_conformance_on_postgres_and_two_controllers_share_it() {
    let Some(pg) = Pg::start() else { return };
    pg.create_db("conformance");
    let store = control::store::postgres::PostgresStore::open(&pg.url("conformance")).unwrap();
    control::store::conformance::run(&store);
    // A second connection (another controller) migrates nothing and sees the same data.
    let other = control::store::postgres::PostgresStore::open(&pg.url("conformance")).unwrap();
    assert_eq!(
        other.schema_version().unwrap(),
        store.schema_version().unwrap()
    );
    assert_eq!(
        other.list(control::store::Kind::Project, None).unwrap(),
        store.list(control::store::Kind::Project, None).unwrap()
    );
    // Compare-and-swap across connections: the second writer of a version loses.
    let rec = store
        .get(control::store::Kind::Project, "p1")
        .unwrap()
        .unwrap();
    store.update(rec.with_doc(rec.name.as_deref(), &1)).unwrap();
    assert!(matches!(
        other.update(rec.with_doc(rec.name.as_deref(), &2)),
        Err(control::store::StoreError::Stale { .. })
    ));
}

#[test]
fn control_runs_on_postgres() {
    let Some(pg) = Pg::start() else { return };
    pg.create_db("control");
    let url = pg.url("control");
    let cloud = common::Cloud::start_with_store("postgres", &url);
    let (admin, _) = cloud.token("admin", common::ADMIN_PASSWORD, "admin");
    let r = cloud.json(
        "POST",
        "/v3/projects",
        Some(&admin),
        &serde_json::json!({"project": {"name": "pgdemo"}}),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    let r = cloud.json(
        "POST",
        "/image/v2/images",
        Some(&admin),
        &serde_json::json!({"name": "pgimg"}),
    );
    assert_eq!(r.status, 201);
    let id = r.json()["id"].as_str().unwrap().to_string();
    let r = cloud.req(
        "PUT",
        &format!("/image/v2/images/{id}/file"),
        Some(&admin),
        &[("content-type", "application/octet-stream")],
        b"postgres-backed image",
    );
    assert_eq!(r.status, 204, "{}", r.text());
    // The rows are in PostgreSQL.
    let mut c = postgres::Client::connect(&url, postgres::NoTls).unwrap();
    let n: i64 = c
        .query_one(
            "SELECT COUNT(*) FROM records WHERE kind = 'project' AND name = 'pgdemo'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(n, 1);
    let doc: String = c
        .query_one(
            "SELECT doc FROM records WHERE kind = 'image' AND id = $1",
            &[&id],
        )
        .unwrap()
        .get(0);
    assert!(doc.contains("\"status\":\"active\""), "{doc}");
}

/// Two control processes on one PostgreSQL database, 200 simulated nodes registered
/// through both, servers created through both from 16 client threads with the pack
/// weigher (every claim wants the same node): members of an anti-affinity group land on
/// distinct nodes, no node's allocations ever exceed its inventory x ratio, every
/// accepted server holds exactly one allocation (on the node it reports) and was sent to
/// exactly one node, and exactly the servers that did not fit are refused.
#[test]
fn two_controllers_on_postgres_never_overbook() {
    use common::sim::{self, Agents, NODE_TOKEN, Node, ServerSpec, Tenant};
    use serde_json::Value;
    use std::collections::{BTreeMap, BTreeSet};

    let Some(pg) = Pg::start() else { return };
    pg.create_db("sched");
    let url = pg.url("sched");
    let cloud = common::Cloud::start_with_store_and(
        &format!(
            "[compute]\nheartbeat-interval-secs = 600\nnode-token = \"{NODE_TOKEN}\"\n\
             cpu-allocation-ratio = 1.0\nram-allocation-ratio = 1.0\nweigher = \"pack\"\n"
        ),
        "postgres",
        &url,
    );
    let second = cloud.another_controller();
    let ports = [cloud.port, second.port];
    let agents = Agents::start();
    for i in 0..200 {
        let n = Node {
            id: format!("n{i:03}"),
            az: "nova".into(),
            arch: "x86_64".into(),
            vcpus: 2,
            memory_mib: 2048,
            disk_gb: 100,
        };
        sim::register(ports[i % 2], &agents, &n);
    }
    let t = Tenant::setup(&cloud, &[""], &[("one", 1, 512, 1)]);

    // Anti-affinity across controllers: 40 members at once, half through each.
    let anti = t.group(cloud.port, "anti", "anti-affinity");
    let mut members = ServerSpec::many("anti", "one", 40);
    members
        .iter_mut()
        .for_each(|s| s.group = Some(anti.clone()));
    let anti_ids = t.create_many(&ports, &members, 16);
    let anti_views = t.settle(second.port, &anti_ids);
    assert!(anti_views.values().all(|v| v["status"] == "ACTIVE"));
    let hosts: BTreeSet<&str> = anti_views.values().map(sim::host).collect();
    assert_eq!(
        hosts.len(),
        40,
        "anti-affinity members share nodes: {hosts:?}"
    );

    // 440 more servers for the 360 slots left (200 nodes x 2 vCPUs - 40).
    let fill = ServerSpec::many("fill", "one", 440);
    let fill_ids = t.create_many(&ports, &fill, 16);
    let views = t.settle(cloud.port, &fill_ids);
    let active: Vec<&String> = views
        .iter()
        .filter(|(_, v)| v["status"] == "ACTIVE")
        .map(|(id, _)| id)
        .collect();
    assert_eq!(active.len(), 360);
    for v in views.values().filter(|v| v["status"] != "ACTIVE") {
        let f = v["fault"]["message"].as_str().unwrap_or("");
        assert!(
            v["status"] == "ERROR" && f.contains("ResourceFilter refused 200"),
            "{v}"
        );
    }

    // Straight from the database: every node within inventory x ratio, and every
    // server's allocation exactly where it says it is.
    let mut c = postgres::Client::connect(&url, postgres::NoTls).unwrap();
    let mut alloc: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for row in c
        .query("SELECT id, doc FROM records WHERE kind = 'node'", &[])
        .unwrap()
    {
        let id: String = row.get(0);
        let doc: String = row.get(1);
        let n: control::compute::NodeDoc = serde_json::from_str(&doc).unwrap();
        let (used, cap) = (n.used(), n.capacity());
        assert!(
            used.vcpus <= cap.vcpus && used.memory_mib <= cap.memory_mib,
            "node {id} overbooked: {used:?} > {cap:?}"
        );
        assert_eq!(cap.vcpus, 2);
        for s in n.allocations.keys() {
            alloc.entry(s.clone()).or_default().push(id.clone());
        }
    }
    assert_eq!(alloc.len(), 400);
    let all: Vec<(&String, &Value)> = views.iter().chain(anti_views.iter()).collect();
    for (id, v) in &all {
        let held = alloc.get(*id).cloned().unwrap_or_default();
        if v["status"] == "ACTIVE" {
            assert_eq!(held, vec![sim::host(v).to_string()], "{v}");
        } else {
            assert!(held.is_empty(), "{v} holds {held:?}");
        }
    }
    let p = agents.placements.lock().unwrap();
    assert_eq!(p.received.len(), 400);
    let sent: BTreeSet<&String> = p.received.iter().map(|(s, _)| s).collect();
    assert_eq!(sent.len(), 400, "a server was sent to two nodes");
    for (id, v) in &all {
        let to: Vec<&String> = p
            .received
            .iter()
            .filter(|(s, _)| s == *id)
            .map(|(_, n)| n)
            .collect();
        if v["status"] == "ACTIVE" {
            assert_eq!(to, vec![sim::host(v)], "{v}");
        } else {
            assert!(to.is_empty(), "{v}");
        }
    }
    // The group record names each member's node.
    let doc: String = c
        .query_one(
            "SELECT doc FROM records WHERE kind = 'server_group' AND id = $1",
            &[&anti],
        )
        .unwrap()
        .get(0);
    let g: control::compute::ServerGroupDoc = serde_json::from_str(&doc).unwrap();
    assert_eq!(g.hosts.len(), 40);
    for (s, n) in &g.hosts {
        assert_eq!(alloc[s], vec![n.clone()]);
    }
}

#[test]
fn the_connection_pool_is_bounded_shared_and_survives_killed_backends() {
    let Some(pg) = Pg::start() else { return };
    pg.create_db("pool");
    let store = std::sync::Arc::new(
        control::store::postgres::PostgresStore::open_pooled(&pg.url("pool"), 3).unwrap(),
    );
    use control::store::{Kind, Record};
    for i in 0..20 {
        store
            .insert(Record::new(
                Kind::Project,
                &format!("p{i:02}"),
                "d",
                None,
                &i,
            ))
            .unwrap();
    }
    // Eight threads share at most three connections and all read the same rows.
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let s = store.clone();
            std::thread::spawn(move || {
                for _ in 0..25 {
                    assert_eq!(s.list(Kind::Project, Some("d")).unwrap().len(), 20);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let open = store.connections();
    assert!((1..=3).contains(&open), "{open} connections");
    // The server drops every connection: the next calls reconnect.
    let mut admin = postgres::Client::connect(&pg.url("postgres"), postgres::NoTls).unwrap();
    let killed: i64 = admin
        .query_one(
            "SELECT COUNT(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = 'pool'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(killed as usize, open);
    let mut answered = 0;
    for _ in 0..(open + 2) {
        // A connection killed while idle fails once, when it is next used; then the pool
        // drops it and opens a new one.
        if store.get(Kind::Project, "p07").is_ok_and(|r| r.is_some()) {
            answered += 1;
        }
    }
    assert!(answered >= 2, "{answered}");
    assert!(store.connections() <= 3);
}

/// Concurrent creates through two controllers sharing PostgreSQL never take a project over
/// its quota: each create (servers, volumes, Neutron ports) rechecks the quota once its record is stored (as Nova does) and
/// takes the record back if it went over. Servers (instances 3) and volumes (volumes 2):
/// what was accepted is exactly what is stored, never more than the quota, every refusal
/// is the service's quota error, and sequential creates afterwards fill the quota exactly
/// (no refused create left a record behind).
#[test]
fn two_controllers_on_postgres_never_exceed_a_quota() {
    use common::sim::{self, Agents, NODE_TOKEN, Node, Tenant, json_req};
    use serde_json::{Value, json};

    let Some(pg) = Pg::start() else { return };
    pg.create_db("quota");
    let cloud = common::Cloud::start_with_store_and(
        &format!("[compute]\nheartbeat-interval-secs = 600\nnode-token = \"{NODE_TOKEN}\"\n"),
        "postgres",
        &pg.url("quota"),
    );
    let second = cloud.another_controller();
    let ports = [cloud.port, second.port];
    let agents = Agents::start();
    let node = Node {
        id: "q1".into(),
        az: "nova".into(),
        arch: "x86_64".into(),
        vcpus: 64,
        memory_mib: 65536,
        disk_gb: 1000,
    };
    sim::register(cloud.port, &agents, &node);
    let t = Tenant::setup(&cloud, &[""], &[("one", 1, 512, 1)]);
    let (_, body) = cloud.token("admin", common::ADMIN_PASSWORD, "admin");
    let pid = body["token"]["project"]["id"].as_str().unwrap().to_string();
    let r = cloud.json(
        "PUT",
        &format!("/compute/v2.1/os-quota-sets/{pid}"),
        Some(&t.token),
        &json!({"quota_set": {"instances": 3}}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let r = cloud.json(
        "PUT",
        &format!("/volume/v3/{pid}/os-quota-sets/{pid}"),
        Some(&t.token),
        &json!({"quota_set": {"volumes": 2}}),
    );
    assert_eq!(r.status, 200, "{}", r.text());

    // `count` POSTs of `body` to `path` from as many threads, alternating controllers.
    let storm = |path: &str, body: &dyn Fn(usize) -> Value, count: usize| {
        std::thread::scope(|s| {
            let handles: Vec<_> = (0..count)
                .map(|i| {
                    let b = body(i);
                    let token = &t.token;
                    s.spawn(move || json_req(ports[i % 2], "POST", path, token, &b))
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap())
                .collect::<Vec<_>>()
        })
    };
    // `tries` creates of `body(i)` POSTed to `path` at once: at most `limit` answer `ok`,
    // the rest `refused` saying `says`; the listing under `key` holds exactly the accepted
    // ones; one by one the quota then fills to `limit` exactly, and one more is refused.
    let race = |path: &str,
                key: &str,
                body: &dyn Fn(usize) -> Value,
                tries: usize,
                limit: usize,
                (ok, refused, says): (u16, u16, &str)| {
        let answers = storm(path, body, tries);
        let accepted = answers.iter().filter(|a| a.status == ok).count();
        for a in answers.iter().filter(|a| a.status != ok) {
            assert_eq!(a.status, refused, "{}", a.text());
            assert!(a.text().contains(says), "{}", a.text());
        }
        assert!(accepted <= limit, "{accepted} accepted at {path}");
        let count = |port: u16| {
            let r = json_req(port, "GET", path, &t.token, &Value::Null);
            assert_eq!(r.status, 200, "{}", r.text());
            r.json()[key].as_array().unwrap().len()
        };
        assert_eq!(count(second.port), accepted);
        for i in accepted..limit {
            let r = json_req(ports[i % 2], "POST", path, &t.token, &body(100 + i));
            assert_eq!(r.status, ok, "{}", r.text());
        }
        let r = json_req(second.port, "POST", path, &t.token, &body(200));
        assert_eq!(r.status, refused, "{}", r.text());
        assert_eq!(count(cloud.port), limit);
    };
    let server = |i: usize| {
        json!({"server": {"name": format!("q-{i}"), "imageRef": t.images[""],
                          "flavorRef": t.flavors["one"], "networks": "none"}})
    };
    race(
        "/compute/v2.1/servers",
        "servers",
        &server,
        16,
        3,
        (202, 403, "Quota exceeded for instances"),
    );

    // Volumes, quota 2.
    let vpath = format!("/volume/v3/{pid}/volumes");
    let volume = |i: usize| json!({"volume": {"name": format!("qv-{i}"), "size": 1}});
    race(
        &vpath,
        "volumes",
        &volume,
        12,
        2,
        (202, 413, "VolumeLimitExceeded"),
    );

    // Neutron ports, quota 3 (Neutron's OverQuota 409).
    let r = json_req(
        cloud.port,
        "POST",
        "/network/v2.0/networks",
        &t.token,
        &json!({"network": {"name": "qnet"}}),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    let net = r.json()["network"]["id"].as_str().unwrap().to_string();
    let r = json_req(
        second.port,
        "PUT",
        &format!("/network/v2.0/quotas/{pid}"),
        &t.token,
        &json!({"quota": {"port": 3}}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let port = |i: usize| json!({"port": {"network_id": net, "name": format!("qp-{i}")}});
    race(
        "/network/v2.0/ports",
        "ports",
        &port,
        12,
        3,
        (201, 409, "OverQuota"),
    );
}
