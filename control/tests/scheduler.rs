//! The scheduler with hundreds of simulated nodes: nodes registered and heartbeating
//! through control's real node API, servers created through Nova's API from several
//! client threads at once, placements received by stand-in agents (`common::sim`).
//! Filters (down nodes, availability zone, image properties, capacity, affinity and
//! anti-affinity groups) and weighers (spread vs pack: the distribution) are checked on
//! where the servers end up, on the nodes' allocations and on the faults of the refused.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use common::Cloud;
use common::sim::{self, Agents, Heartbeats, NODE_TOKEN, Node, ServerSpec, Tenant, host};
use serde_json::{Value, json};

fn config(weigher: &str, cpu_ratio: f64, heartbeat: u64) -> String {
    format!(
        "[compute]\nheartbeat-interval-secs = {heartbeat}\nmissed-heartbeats = 3\n\
         node-token = \"{NODE_TOKEN}\"\ncpu-allocation-ratio = {cpu_ratio:.1}\n\
         ram-allocation-ratio = 1.0\ndisk-allocation-ratio = 1.0\nweigher = \"{weigher}\"\n"
    )
}

fn node(id: &str, az: &str, arch: &str, vcpus: u64, memory_mib: u64) -> Node {
    Node {
        id: id.into(),
        az: az.into(),
        arch: arch.into(),
        vcpus,
        memory_mib,
        disk_gb: 100,
    }
}

fn specs(prefix: &str, flavor: &str, n: usize, f: impl Fn(&mut ServerSpec)) -> Vec<ServerSpec> {
    let mut v = ServerSpec::many(prefix, flavor, n);
    v.iter_mut().for_each(f);
    v
}

fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Every ACTIVE server was sent to exactly one node, the one it is on; refused ones to
/// none.
fn assert_placed_once(agents: &Agents, views: &BTreeMap<String, Value>) {
    let p = agents.placements.lock().unwrap();
    for (id, v) in views {
        let sent: Vec<&String> = p
            .received
            .iter()
            .filter(|(s, _)| s == id)
            .map(|(_, n)| n)
            .collect();
        match v["status"].as_str().unwrap() {
            "ACTIVE" => assert_eq!(sent, vec![host(v)], "{v}"),
            _ => assert!(sent.is_empty(), "{v} was sent to {sent:?}"),
        }
    }
}

fn fault(v: &Value) -> String {
    assert_eq!(v["status"], "ERROR", "{v}");
    v["fault"]["message"].as_str().unwrap().to_string()
}

#[test]
fn filters_on_300_nodes() {
    let cloud = Cloud::start_with(&config("spread", 2.0, 5), "", "");
    let port = cloud.port;
    let agents = Agents::start();
    // 20 big nodes that never heartbeat (spread would pick them first if they counted),
    // 260 x86_64 nodes in az1/az2/az3, 20 aarch64 nodes in az2, and one node that goes
    // down later with a server on it.
    let mut all = Vec::new();
    for i in 0..300 {
        let id = format!("n{i:03}");
        all.push(match i {
            0..20 => node(&id, "az1", "x86_64", 64, 65536),
            20..150 => node(&id, "az1", "x86_64", 4, 4096),
            150..277 => node(&id, "az2", "x86_64", 4, 4096),
            277..280 => node(&id, "az3", "x86_64", 4, 4096),
            _ => node(&id, "az2", "aarch64", 8, 8192),
        });
    }
    all.push(node("z-lost", "az-lost", "x86_64", 1, 512));
    for n in &all {
        sim::register(port, &agents, n);
    }
    let up: Vec<String> = all[20..300].iter().map(|n| n.id.clone()).collect();
    let _beating = Heartbeats::start(port, up);
    let lost_beating = Heartbeats::start(port, vec!["z-lost".into()]);
    wait_for("the 20 silent nodes to go down", || {
        let n = sim::nodes(port);
        n.values().filter(|n| n["state"] == "down").count() == 20
    });
    let nodes = sim::nodes(port);
    assert_eq!(nodes.len(), 301);
    for i in 0..20 {
        assert_eq!(nodes[&format!("n{i:03}")]["state"], "down");
    }

    let t = Tenant::setup(
        &cloud,
        &["", "aarch64", "sparc"],
        &[
            ("small", 1, 512, 1),
            ("fill", 1, 1024, 1),
            ("huge", 16, 16384, 1),
        ],
    );
    let aff = t.group(port, "aff", "affinity");
    let anti = t.group(port, "anti", "anti-affinity");
    let anti3 = t.group(port, "anti3", "anti-affinity");
    // First the server that will be stranded, alone in its zone (its node then has no
    // room left for anything else).
    let lost = specs("lost", "small", 1, |s| s.az = Some("az-lost".into()));
    let lost_id = t.create(port, &lost[0]);
    let lost_view = t.settle(port, std::slice::from_ref(&lost_id));
    assert_eq!(host(&lost_view[&lost_id]), "z-lost");
    let mut batch = Vec::new();
    batch.extend(specs("az2", "small", 40, |s| s.az = Some("az2".into())));
    batch.extend(specs("arm", "small", 10, |s| s.arch = "aarch64".into()));
    batch.extend(specs("sparc", "small", 1, |s| s.arch = "sparc".into()));
    // The groups stay in az1 (where the silent big nodes are): spread breaks ties between
    // empty nodes by a hash of the server id, so unzoned servers could land anywhere,
    // az3 included, whose capacity is counted exactly below.
    batch.extend(specs("aff", "small", 6, |s| {
        s.group = Some(aff.clone());
        s.az = Some("az1".into());
    }));
    batch.extend(specs("anti", "small", 30, |s| {
        s.group = Some(anti.clone());
        s.az = Some("az1".into());
    }));
    batch.extend(specs("anti3", "small", 4, |s| {
        s.group = Some(anti3.clone());
        s.az = Some("az3".into());
    }));
    batch.extend(specs("huge", "huge", 1, |_| {}));
    let ids = t.create_many(&[port], &batch, 8);
    let views = t.settle(port, &ids);
    let by_prefix = |p: &str| -> Vec<&Value> {
        ids.iter()
            .zip(&batch)
            .filter(|(_, s)| s.name.rsplit_once('-').unwrap().0 == p)
            .map(|(id, _)| &views[id])
            .collect()
    };
    let nodes = sim::nodes(port);
    let az_of = |v: &Value| nodes[host(v)]["availability_zone"].as_str().unwrap();

    // Availability zone, spread over distinct nodes.
    let az2 = by_prefix("az2");
    assert!(az2.iter().all(|v| v["status"] == "ACTIVE"), "{az2:?}");
    assert!(az2.iter().all(|v| az_of(v) == "az2"));
    assert!(
        az2.iter()
            .all(|v| v["OS-EXT-AZ:availability_zone"] == "az2")
    );
    let hosts: BTreeSet<&str> = az2.iter().map(|v| host(v)).collect();
    assert_eq!(hosts.len(), 40);
    // Image properties: aarch64 images only on aarch64 nodes; no node is sparc.
    for v in by_prefix("arm") {
        assert_eq!(v["status"], "ACTIVE", "{v}");
        let n: u32 = host(v)[1..].parse().unwrap();
        assert!((280..300).contains(&n), "{v}");
    }
    let f = fault(by_prefix("sparc")[0]);
    assert!(f.contains("No valid host was found"), "{f}");
    assert!(f.contains("ComputeFilter refused 20"), "{f}");
    assert!(f.contains("ImagePropertiesFilter refused 281"), "{f}");
    // Affinity: one node; anti-affinity: as many nodes as members.
    let aff_hosts: BTreeSet<&str> = by_prefix("aff").iter().map(|v| host(v)).collect();
    assert_eq!(aff_hosts.len(), 1, "{aff_hosts:?}");
    assert!(by_prefix("aff").iter().all(|v| v["status"] == "ACTIVE"));
    let anti_hosts: BTreeSet<&str> = by_prefix("anti").iter().map(|v| host(v)).collect();
    assert_eq!(anti_hosts.len(), 30);
    let r = sim::json_req(
        port,
        "GET",
        &format!("/compute/v2.1/os-server-groups/{anti}"),
        &t.token,
        &Value::Null,
    );
    let g = &r.json()["server_group"];
    assert_eq!(g["policies"], serde_json::json!(["anti-affinity"]), "{g}");
    assert_eq!(g["members"].as_array().unwrap().len(), 30, "{g}");
    // Anti-affinity in a zone of 3 nodes: 3 members fit, the 4th is refused.
    let anti3v = by_prefix("anti3");
    let placed: BTreeSet<&str> = anti3v
        .iter()
        .filter(|v| v["status"] == "ACTIVE")
        .map(|v| host(v))
        .collect();
    assert_eq!(placed, BTreeSet::from(["n277", "n278", "n279"]));
    let refused: Vec<String> = anti3v
        .iter()
        .filter(|v| v["status"] != "ACTIVE")
        .map(|v| fault(v))
        .collect();
    assert_eq!(refused.len(), 1);
    assert!(
        refused[0].contains("ServerGroupFilter refused 3"),
        "{refused:?}"
    );
    // Too big for every node that is up (only the down ones would hold it).
    let f = fault(by_prefix("huge")[0]);
    assert!(f.contains("ComputeFilter refused 20"), "{f}");
    assert!(f.contains("ResourceFilter refused 281"), "{f}");
    // Down nodes got nothing.
    for i in 0..20 {
        assert_eq!(nodes[&format!("n{i:03}")]["servers"], 0);
    }
    assert!(
        views
            .values()
            .all(|v| !host(v).starts_with("n00") && !host(v).starts_with("n01"))
    );
    assert_placed_once(&agents, &views);

    // Capacity: az3's nodes each hold a 512 MiB member; 1024 MiB servers fill the rest
    // (3 per node), the next ones are refused for capacity.
    let fill = specs("fill", "fill", 12, |s| s.az = Some("az3".into()));
    let fill_ids = t.create_many(&[port], &fill, 4);
    let fill_views = t.settle(port, &fill_ids);
    let active = fill_views
        .values()
        .filter(|v| v["status"] == "ACTIVE")
        .count();
    assert_eq!(active, 9);
    for v in fill_views.values().filter(|v| v["status"] != "ACTIVE") {
        let f = fault(v);
        assert!(f.contains("ResourceFilter refused 3"), "{f}");
    }
    let nodes = sim::nodes(port);
    sim::assert_within_capacity(&nodes);
    for n in ["n277", "n278", "n279"] {
        assert_eq!(
            nodes[n]["used"]["memory_mib"],
            512 + 3 * 1024,
            "{}",
            nodes[n]
        );
        assert_eq!(nodes[n]["servers"], 4);
    }
    assert_placed_once(&agents, &fill_views);
    // A node that stops heartbeating: its server keeps its last status and shows
    // host_status UNKNOWN, as Nova shows servers of a compute service that stopped
    // reporting; servers on live nodes show UP, refused ones (no host) "".
    assert_eq!(lost_view[&lost_id]["host_status"], "UP");
    drop(lost_beating);
    wait_for("z-lost to go down", || {
        sim::nodes(port)["z-lost"]["state"] == "down"
    });
    let r = sim::json_req(
        port,
        "GET",
        &format!("/compute/v2.1/servers/{lost_id}"),
        &t.token,
        &Value::Null,
    );
    let v = &r.json()["server"];
    assert_eq!(v["status"], "ACTIVE", "{v}");
    assert_eq!(v["OS-EXT-STS:vm_state"], "active", "{v}");
    assert_eq!(v["host_status"], "UNKNOWN", "{v}");
    let mut all_ids = ids.clone();
    all_ids.push(lost_id.clone());
    let views = t.settle(port, &all_ids);
    for v in views.values() {
        let want = match (host(v), v["status"].as_str().unwrap()) {
            ("z-lost", _) => "UNKNOWN",
            (_, "ACTIVE") => "UP",
            _ => "",
        };
        assert_eq!(v["host_status"], want, "{v}");
    }

    // The stock CLI: `hypervisor show` by name, `server show` of the stranded server.
    if common::have_cli() {
        let admin = cloud.admin();
        let hv = common::ok_json(&admin, &["hypervisor", "show", "n150"]);
        assert_eq!(hv["hypervisor_hostname"], "n150", "{hv}");
        assert_eq!(hv["state"], "up", "{hv}");
        assert_eq!(hv["vcpus"], 4, "{hv}");
        assert_eq!(hv["memory_mb"], 4096, "{hv}");
        assert_eq!(hv["aggregates"], serde_json::json!([]), "{hv}");
        let hv = common::ok_json(&admin, &["hypervisor", "show", "z-lost"]);
        assert_eq!(hv["state"], "down", "{hv}");
        assert_eq!(hv["running_vms"], 1, "{hv}");
        let missing = common::fails(&admin, &["hypervisor", "show", "no-such-node"]);
        assert!(
            missing.contains("No hypervisor with a name or ID")
                || missing.contains("No Hypervisor found"),
            "{missing}"
        );
        let shown = common::ok_json(&admin, &["server", "show", &lost_id]);
        assert_eq!(shown["status"], "ACTIVE", "{shown}");
        assert_eq!(shown["host_status"], "UNKNOWN", "{shown}");
    }
}

/// Places 200 one-vCPU servers on 200 nodes of 4 vCPUs (no overcommit) with `weigher`;
/// returns the number of servers on each node, by node id.
fn distribution(weigher: &str) -> BTreeMap<String, u64> {
    let cloud = Cloud::start_with(&config(weigher, 1.0, 60), "", "");
    let agents = Agents::start();
    for i in 0..200 {
        sim::register(
            cloud.port,
            &agents,
            &node(&format!("n{i:03}"), "nova", "x86_64", 4, 4096),
        );
    }
    let t = Tenant::setup(&cloud, &[""], &[("one", 1, 1024, 1)]);
    let ids = t.create_many(&[cloud.port], &ServerSpec::many("s", "one", 200), 8);
    let views = t.settle(cloud.port, &ids);
    assert!(
        views.values().all(|v| v["status"] == "ACTIVE"),
        "{:?}",
        views.values().find(|v| v["status"] != "ACTIVE")
    );
    assert_placed_once(&agents, &views);
    let nodes = sim::nodes(cloud.port);
    sim::assert_within_capacity(&nodes);
    nodes
        .iter()
        .map(|(id, n)| (id.clone(), n["servers"].as_u64().unwrap()))
        .collect()
}

#[test]
fn spread_puts_one_server_on_each_of_200_nodes() {
    let d = distribution("spread");
    assert_eq!(d.len(), 200);
    assert!(d.values().all(|&n| n == 1), "{d:?}");
}

#[test]
fn pack_fills_50_of_200_nodes() {
    let d = distribution("pack");
    // 200 one-vCPU servers fit exactly on 50 four-vCPU nodes. The creates come from 8
    // threads: claimers that rank at the same moment, before any of them has landed, can
    // each open a different empty node, so a few nodes may end up part-filled. Each of the
    // 8 can open at most one node the others had not seen, so at most 7 extra nodes.
    let used = d.values().filter(|&&n| n > 0).count();
    let full = d.values().filter(|&&n| n == 4).count();
    assert!((50..=57).contains(&used), "{used} nodes used: {d:?}");
    assert!(full >= 43, "only {full} full nodes: {d:?}");
    assert_eq!(d.values().sum::<u64>(), 200, "{d:?}");
}

/// Nodes as Nova's compute services with the stock CLI: `compute service list` shows each
/// node agent as `nova-compute` with its zone, status and state; `compute service set
/// --disable --disable-reason` takes a node out of scheduling (servers go to the other
/// node; re-registration keeps it disabled) and `--enable` brings it back;
/// `hypervisor stats show` sums the nodes. Bad input answers Nova's 400/404.
#[test]
fn compute_services_are_listed_disabled_and_enabled_with_the_cli() {
    if !common::have_cli() {
        return;
    }
    let cloud = Cloud::start_with(&config("spread", 1.0, 600), "", "");
    let port = cloud.port;
    let agents = Agents::start();
    let (a, b) = (
        node("svc-a", "nova", "x86_64", 8, 8192),
        node("svc-b", "nova", "x86_64", 8, 8192),
    );
    sim::register(port, &agents, &a);
    sim::register(port, &agents, &b);
    let t = Tenant::setup(&cloud, &[""], &[("one", 1, 512, 1)]);
    let admin = cloud.admin();

    let row_by = |list: &Value, key: &str, want: &str| -> Value {
        list.as_array()
            .unwrap()
            .iter()
            .find(|s| s[key] == want)
            .cloned()
            .unwrap_or_else(|| panic!("no {key} {want} in {list}"))
    };
    let list = common::ok_json(&admin, &["compute", "service", "list"]);
    let row = |list: &Value, host: &str| -> Value {
        list.as_array()
            .unwrap()
            .iter()
            .find(|s| s["Host"] == host)
            .cloned()
            .unwrap_or_else(|| panic!("no {host} in {list}"))
    };
    for h in ["svc-a", "svc-b"] {
        let s = row(&list, h);
        assert_eq!(
            (&s["Binary"], &s["Zone"], &s["Status"], &s["State"]),
            (
                &Value::from("nova-compute"),
                &Value::from("nova"),
                &Value::from("enabled"),
                &Value::from("up")
            ),
            "{s}"
        );
    }

    // The same agents as Cinder's volume services (their blockdp) and Neutron's agents.
    let vs = common::ok_json(&admin, &["volume", "service", "list"]);
    for h in ["svc-a", "svc-b"] {
        let host = format!("{h}@blockdp");
        let s = row_by(&vs, "Host", &host);
        assert_eq!(
            (&s["Binary"], &s["Zone"], &s["Status"], &s["State"]),
            (
                &Value::from("cinder-volume"),
                &Value::from("nova"),
                &Value::from("enabled"),
                &Value::from("up")
            ),
            "{s}"
        );
    }
    // Cinder's disable of one node's volume service, with a reason, and back.
    common::ok(
        &admin,
        &[
            "volume",
            "service",
            "set",
            "--disable",
            "--disable-reason",
            "disk swap",
            "svc-b@blockdp",
            "cinder-volume",
        ],
    );
    let vs = common::ok_json(&admin, &["volume", "service", "list", "--long"]);
    let s = row_by(&vs, "Host", "svc-b@blockdp");
    assert_eq!(
        (&s["Status"], &s["Disabled Reason"]),
        (&json!("disabled"), &json!("disk swap")),
        "{s}"
    );
    assert_eq!(row_by(&vs, "Host", "svc-a@blockdp")["Status"], "enabled");
    // Nova's view of that node is untouched.
    let list = common::ok_json(&admin, &["compute", "service", "list"]);
    assert_eq!(row(&list, "svc-b")["Status"], "enabled");
    let put = |path: &str, body: Value| cloud.json("PUT", path, Some(&t.token), &body);
    let pid = common::ok_json(&admin, &["token", "issue"])["project_id"]
        .as_str()
        .unwrap()
        .to_string();
    let vpath = format!("/volume/v3/{pid}/os-services/disable");
    for (body, status, kind) in [
        (
            json!({"host": "nowhere@blockdp", "binary": "cinder-volume"}),
            404,
            "itemNotFound",
        ),
        (
            json!({"host": "svc-a@blockdp", "binary": "cinder-backup"}),
            400,
            "badRequest",
        ),
        (json!({"binary": "cinder-volume"}), 400, "badRequest"),
    ] {
        let r = put(&vpath, body.clone());
        assert_eq!(r.status, status, "{body}: {}", r.text());
        assert!(r.json()[kind]["message"].is_string(), "{}", r.text());
    }
    let vs = common::ok_json(&admin, &["volume", "service", "list"]);
    assert_eq!(row_by(&vs, "Host", "svc-a@blockdp")["Status"], "enabled");
    common::ok(
        &admin,
        &[
            "volume",
            "service",
            "set",
            "--enable",
            "svc-b@blockdp",
            "cinder-volume",
        ],
    );
    let vs = common::ok_json(&admin, &["volume", "service", "list", "--long"]);
    let s = row_by(&vs, "Host", "svc-b@blockdp");
    assert_eq!(
        (&s["Status"], &s["Disabled Reason"]),
        (&json!("enabled"), &Value::Null),
        "{s}"
    );

    let net_agents = common::ok_json(&admin, &["network", "agent", "list"]);
    let ag = row_by(&net_agents, "Host", "svc-a");
    assert_eq!(
        (&ag["Alive"], &ag["State"]),
        (&json!(true), &json!(true)),
        "{ag}"
    );
    assert_eq!(ag["Binary"], "ferrostack-agent", "{ag}");
    let id = ag["ID"].as_str().unwrap();
    let shown = common::ok_json(&admin, &["network", "agent", "show", id]);
    assert_eq!(shown["host"], "svc-a", "{shown}");
    let err = common::fails(&admin, &["network", "agent", "show", "no-such-agent"]);
    assert!(
        err.contains("404") || err.contains("could not be found"),
        "{err}"
    );

    common::ok(
        &admin,
        &[
            "compute",
            "service",
            "set",
            "--disable",
            "--disable-reason",
            "maintenance",
            "svc-a",
            "nova-compute",
        ],
    );
    let list = common::ok_json(&admin, &["compute", "service", "list", "--long"]);
    let s = row(&list, "svc-a");
    assert_eq!(s["Status"], "disabled", "{s}");
    assert_eq!(s["Disabled Reason"], "maintenance", "{s}");
    assert_eq!(row(&list, "svc-b")["Status"], "enabled");
    // The agent registering again (a restart) keeps its node disabled.
    sim::register(port, &agents, &a);
    let ids = t.create_many(&[port], &ServerSpec::many("svc", "one", 4), 2);
    let views = t.settle(port, &ids);
    for v in views.values() {
        assert_eq!(
            (v["status"].as_str(), host(v)),
            (Some("ACTIVE"), "svc-b"),
            "{v}"
        );
    }
    let stats = common::ok_json(&admin, &["hypervisor", "stats", "show"]);
    assert_eq!(stats["count"], 2, "{stats}");
    assert_eq!(stats["vcpus"], 16, "{stats}");
    assert_eq!(stats["vcpus_used"], 4, "{stats}");
    assert_eq!(stats["memory_mb_used"], 2048, "{stats}");
    assert_eq!(stats["running_vms"], 4, "{stats}");

    common::ok(
        &admin,
        &[
            "compute",
            "service",
            "set",
            "--enable",
            "svc-a",
            "nova-compute",
        ],
    );
    let list = common::ok_json(&admin, &["compute", "service", "list", "--long"]);
    let s = row(&list, "svc-a");
    assert_eq!(
        (s["Status"].as_str(), &s["Disabled Reason"]),
        (Some("enabled"), &Value::Null),
        "{s}"
    );
    // Spread now picks the empty node.
    let id = t.create(port, &ServerSpec::many("back", "one", 1)[0]);
    let v = t.settle(port, &[id]);
    assert_eq!(host(v.values().next().unwrap()), "svc-a");

    // Bad input: Nova's statuses, nothing changed.
    let r = put(
        "/compute/v2.1/os-services/disable",
        json!({"host": "nowhere", "binary": "nova-compute"}),
    );
    assert_eq!(r.status, 404, "{}", r.text());
    let r = put(
        "/compute/v2.1/os-services/disable",
        json!({"host": "svc-a"}),
    );
    assert_eq!(r.status, 400, "{}", r.text());
    let r = put(
        "/compute/v2.1/os-services/disable-log-reason",
        json!({"host": "svc-a", "binary": "nova-compute", "disabled_reason": ""}),
    );
    assert_eq!(r.status, 400, "{}", r.text());
    let list = common::ok_json(&admin, &["compute", "service", "list"]);
    assert_eq!(row(&list, "svc-a")["Status"], "enabled");
    // Not for members.
    let member = cloud.member("svcproj", "svcuser", "svc-pass-1");
    for what in ["compute", "volume"] {
        let err = common::fails(&member, &[what, "service", "list"]);
        assert!(
            err.contains("403") || err.contains("Policy"),
            "{what}: {err}"
        );
    }
    let err = common::fails(&member, &["network", "agent", "list"]);
    assert!(err.contains("403") || err.contains("policy"), "{err}");
}

/// Server actions control carries out itself, with the stock CLI on simulated nodes:
/// `server add/remove security group` changes every port of the server (and what the
/// server shows), `server lock` stops non-admins (the owner too) from deleting it until
/// `server unlock` (an admin's lock only an admin lifts), `server set --state` is the
/// admin's reset. Refusals carry Nova's statuses and messages.
#[test]
fn security_groups_locks_and_state_resets_on_servers_with_the_cli() {
    if !common::have_cli() {
        return;
    }
    let cloud = Cloud::start_with(&config("spread", 1.0, 600), "", "");
    let port = cloud.port;
    let agents = Agents::start();
    sim::register(port, &agents, &node("act-a", "nova", "x86_64", 8, 8192));
    let t = Tenant::setup(&cloud, &[""], &[("one", 1, 512, 1)]);
    let admin = cloud.admin();
    let (ok, ok_json, fails) = (common::ok, common::ok_json, common::fails);

    // A server with a port on a network, and a second security group.
    ok(&admin, &["network", "create", "actnet"]);
    common::subnet(&admin, "actnet", "10.77.0.0/24", "actsub", &[]);
    let web = ok_json(&admin, &["security", "group", "create", "web"]);
    let web_id = web["id"].as_str().unwrap().to_string();
    let args = common::server_create(
        &t.images[""],
        &t.flavors["one"],
        &["--network", "actnet", "--wait"],
        "srv",
    );
    ok(&admin, &args);
    let port_groups = || -> Vec<String> {
        let ports = ok_json(&admin, &["port", "list", "--server", "srv", "--long"]);
        let p = &ports.as_array().unwrap()[0];
        let mut g: Vec<String> = p["Security Groups"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_str().unwrap().to_string())
            .collect();
        g.sort();
        g
    };
    assert_eq!(port_groups().len(), 1, "the default group only");
    ok(
        &admin,
        &["server", "add", "security", "group", "srv", "web"],
    );
    assert!(port_groups().contains(&web_id), "{:?}", port_groups());
    let shown = ok_json(&admin, &["server", "show", "srv"]);
    assert!(
        shown["security_groups"].to_string().contains("web"),
        "{shown}"
    );
    let err = fails(
        &admin,
        &["server", "add", "security", "group", "srv", "web"],
    );
    assert!(err.contains("already associated"), "{err}");
    let err = fails(
        &admin,
        &["server", "add", "security", "group", "srv", "nosuch"],
    );
    assert!(err.contains("404"), "{err}");
    ok(
        &admin,
        &["server", "remove", "security", "group", "srv", "web"],
    );
    assert!(!port_groups().contains(&web_id), "{:?}", port_groups());
    let err = fails(
        &admin,
        &["server", "remove", "security", "group", "srv", "web"],
    );
    assert!(err.contains("not associated"), "{err}");

    // Locks: a member's own server.
    // The boot image and its kernel, for the member's project too.
    for image in ok(&admin, &["image", "list", "-f", "value", "-c", "ID"]).lines() {
        ok(&admin, &["image", "set", "--public", image]);
    }
    let member = cloud.member("actproj", "actuser", "act-pass-1");
    ok(&member, &["network", "create", "mynet"]);
    common::subnet(&member, "mynet", "10.78.0.0/24", "mysub", &[]);
    let args = common::server_create(
        &t.images[""],
        &t.flavors["one"],
        &["--network", "mynet", "--wait"],
        "mine",
    );
    ok(&member, &args);
    ok(&member, &["server", "lock", "mine"]);
    assert_eq!(
        ok_json(&member, &["server", "show", "mine"])["locked"],
        true
    );
    let err = fails(&member, &["server", "delete", "mine"]);
    assert!(err.contains("is locked"), "{err}");
    ok(&member, &["server", "unlock", "mine"]);
    let mine = ok_json(&member, &["server", "show", "mine"]);
    assert_eq!(mine["locked"], false, "{mine}");
    let mine_id = mine["id"].as_str().unwrap().to_string();
    ok(&admin, &["server", "lock", &mine_id]);
    let err = fails(&member, &["server", "unlock", "mine"]);
    assert!(err.contains("403") || err.contains("Policy"), "{err}");
    assert_eq!(
        ok_json(&member, &["server", "show", "mine"])["locked"],
        true
    );

    // The admin's reset, and only the admin's (newer clients ask for a confirmation
    // unless told not to).
    let auto_approve = common::cli_has_flag(&["server", "set"], "--auto-approve");
    let reset = |state: &'static str, server: &str| -> Vec<String> {
        let mut a: Vec<String> = ["server", "set", "--state", state, server]
            .iter()
            .map(|x| x.to_string())
            .collect();
        if auto_approve {
            a.insert(2, "--auto-approve".into());
        }
        a
    };
    fn strs(v: &[String]) -> Vec<&str> {
        v.iter().map(String::as_str).collect()
    }
    ok(&admin, &strs(&reset("error", &mine_id)));
    assert_eq!(
        ok_json(&member, &["server", "show", "mine"])["status"],
        "ERROR"
    );
    let err = fails(&member, &strs(&reset("active", "mine")));
    assert!(err.contains("403") || err.contains("Policy"), "{err}");
    ok(&admin, &strs(&reset("active", &mine_id)));
    assert_eq!(
        ok_json(&member, &["server", "show", "mine"])["status"],
        "ACTIVE"
    );
    ok(&admin, &["server", "unlock", &mine_id]);
    ok(&member, &["server", "delete", "--wait", "mine"]);
}

/// Renaming servers and their metadata, with the stock CLI and over HTTP: `server set
/// --name`, `server set/unset --property`, `server create --property`; the metadata paths
/// merge, replace, set and delete items; Nova's 400s for bad bodies, 403 over the
/// `metadata_items` quota, 404 for a missing item, 409 on a locked server for its owner.
/// Refusals change nothing.
#[test]
fn servers_are_renamed_and_their_metadata_changed_with_the_cli() {
    if !common::have_cli() {
        return;
    }
    let cloud = Cloud::start_with(&config("spread", 1.0, 600), "", "");
    let port = cloud.port;
    let agents = Agents::start();
    sim::register(port, &agents, &node("meta-a", "nova", "x86_64", 8, 8192));
    let t = Tenant::setup(&cloud, &[""], &[("one", 1, 512, 1)]);
    let admin = cloud.admin();
    let (ok, ok_json, fails) = (common::ok, common::ok_json, common::fails);

    let mut args = common::server_create(&t.images[""], &t.flavors["one"], &["--wait"], "msrv");
    args.extend(["--property", "a=1"]);
    ok(&admin, &args);
    let id = ok_json(&admin, &["server", "show", "msrv"])["id"]
        .as_str()
        .unwrap()
        .to_string();
    let path = format!("/compute/v2.1/servers/{id}/metadata");
    let req = |m: &str, p: &str, body: Value| cloud.json(m, p, Some(&t.token), &body);
    let meta = || req("GET", &path, Value::Null).json()["metadata"].clone();
    assert_eq!(meta(), json!({"a": "1"}));

    ok(
        &admin,
        &[
            "server",
            "set",
            "--property",
            "b=2",
            "--property",
            "c=3",
            "msrv",
        ],
    );
    assert_eq!(meta(), json!({"a": "1", "b": "2", "c": "3"}));
    let shown = ok_json(&admin, &["server", "show", "msrv"]);
    assert!(shown["properties"].to_string().contains("c"), "{shown}");
    ok(&admin, &["server", "unset", "--property", "a", "msrv"]);
    assert_eq!(meta(), json!({"b": "2", "c": "3"}));
    ok(&admin, &["server", "set", "--name", "renamed", "msrv"]);
    let shown = ok_json(&admin, &["server", "show", "renamed"]);
    assert_eq!(
        (&shown["id"], &shown["name"]),
        (&json!(id), &json!("renamed"))
    );
    let err = fails(&admin, &["server", "show", "msrv"]);
    assert!(
        err.contains("No Server found") || err.contains("No server with a name or ID"),
        "{err}"
    );

    // One item at a time.
    let item = format!("{path}/b");
    let r = req("GET", &item, Value::Null);
    assert_eq!((r.status, r.json()), (200, json!({"meta": {"b": "2"}})));
    let r = req("PUT", &item, json!({"meta": {"b": "two"}}));
    assert_eq!((r.status, r.json()), (200, json!({"meta": {"b": "two"}})));
    let r = req("DELETE", &item, Value::Null);
    assert_eq!(r.status, 204, "{}", r.text());
    let r = req("GET", &item, Value::Null);
    assert_eq!(r.status, 404, "{}", r.text());
    assert_eq!(
        r.json()["itemNotFound"]["message"],
        "Metadata item was not found"
    );
    // Replace all.
    let r = req("PUT", &path, json!({"metadata": {"x": "9"}}));
    assert_eq!((r.status, r.json()), (200, json!({"metadata": {"x": "9"}})));
    assert_eq!(meta(), json!({"x": "9"}));

    // Bad input: each refused with Nova's status, nothing changed.
    let too_many: serde_json::Map<String, Value> =
        (0..129).map(|i| (format!("k{i}"), json!("v"))).collect();
    let long = "v".repeat(256);
    for (m, p, body, status, needle) in [
        (
            "PUT",
            item.clone(),
            json!({"meta": {"c": "1"}}),
            400,
            "mismatch",
        ),
        (
            "PUT",
            item.clone(),
            json!({"meta": {"b": "1", "c": "2"}}),
            400,
            "too many",
        ),
        (
            "POST",
            path.clone(),
            json!({"metadata": {"y": long}}),
            400,
            "255",
        ),
        (
            "POST",
            path.clone(),
            json!({"metadata": {"y": 5}}),
            400,
            "string",
        ),
        ("POST", path.clone(), json!({"meta": {}}), 400, "metadata"),
        (
            "POST",
            path.clone(),
            json!({"metadata": too_many}),
            403,
            "metadata_items",
        ),
        (
            "DELETE",
            format!("{path}/nosuch"),
            Value::Null,
            404,
            "not found",
        ),
        (
            "PUT",
            format!("/compute/v2.1/servers/{id}"),
            json!({"server": {"name": " padded"}}),
            400,
            "whitespace",
        ),
        (
            "PUT",
            format!("/compute/v2.1/servers/{id}"),
            json!({"server": {"name": "n", "flavorRef": "1"}}),
            400,
            "flavorRef",
        ),
    ] {
        let r = req(m, &p, body.clone());
        assert_eq!(r.status, status, "{m} {p} {body}: {}", r.text());
        assert!(r.text().contains(needle), "{m} {p}: {}", r.text());
    }
    assert_eq!(meta(), json!({"x": "9"}));
    assert_eq!(ok_json(&admin, &["server", "show", &id])["name"], "renamed");

    // A locked server: its owner (a member) cannot change its metadata until unlocked.
    for image in ok(&admin, &["image", "list", "-f", "value", "-c", "ID"]).lines() {
        ok(&admin, &["image", "set", "--public", image]);
    }
    let member = cloud.member("metaproj", "metauser", "meta-pass-1");
    let args = common::server_create(&t.images[""], &t.flavors["one"], &["--wait"], "mine");
    ok(&member, &args);
    ok(&member, &["server", "lock", "mine"]);
    let err = fails(&member, &["server", "set", "--property", "k=v", "mine"]);
    assert!(err.contains("is locked"), "{err}");
    ok(&member, &["server", "unlock", "mine"]);
    ok(&member, &["server", "set", "--property", "k=v", "mine"]);
    let shown = ok_json(&member, &["server", "show", "mine"]);
    assert!(shown["properties"].to_string().contains("k"), "{shown}");
    // Another project's server is not there for the member.
    let err = fails(&member, &["server", "set", "--property", "k=v", &id]);
    assert!(
        err.contains("No server with a name or ID")
            || err.contains("No Server found")
            || err.contains("404"),
        "{err}"
    );
    assert_eq!(meta(), json!({"x": "9"}));

    // Newer clients send `--image` as the image's own local boot mapping too: the server
    // boots from that image, with or without imageRef; a mapping naming another image
    // than imageRef is refused.
    let image = t.images[""].as_str();
    let local = json!([{"uuid": image, "boot_index": 0, "source_type": "image",
        "destination_type": "local", "delete_on_termination": true}]);
    for (name, image_ref) in [("bdm-and-ref", Some(image)), ("bdm-only", None)] {
        let mut server = json!({"name": name, "flavorRef": t.flavors["one"],
            "networks": "none", "block_device_mapping_v2": local});
        if let Some(r) = image_ref {
            server["imageRef"] = json!(r);
        }
        let r = req("POST", "/compute/v2.1/servers", json!({"server": server}));
        assert_eq!(r.status, 202, "{name}: {}", r.text());
        let sid = r.json()["server"]["id"].as_str().unwrap().to_string();
        let mut shown = Value::Null;
        wait_for(&format!("{name} active"), || {
            shown = req("GET", &format!("/compute/v2.1/servers/{sid}"), Value::Null).json();
            shown["server"]["status"] == "ACTIVE"
        });
        assert_eq!(shown["server"]["image"]["id"], image, "{shown}");
    }
    let r = req(
        "POST",
        "/compute/v2.1/servers",
        json!({"server": {"name": "mismatch", "flavorRef": t.flavors["one"],
            "networks": "none", "imageRef": t.flavors["one"],
            "block_device_mapping_v2": local}}),
    );
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(
        r.json()["badRequest"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("is not imageRef")),
        "{}",
        r.text()
    );
}
