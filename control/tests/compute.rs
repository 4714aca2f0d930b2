//! Compute without privileges: real `ferrostack-agent` processes register with control
//! and heartbeat; the stock `openstack` CLI manages flavors and servers and lists
//! hypervisors. The agents have no blockdp/netdp/vmm here, so every build fails on its
//! node: the server is rescheduled on the other node, then goes to ERROR with the fault;
//! allocations are released. A stopped agent's node goes down and gets nothing new.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::node::{AgentDirs, Procs, binaries, spawn_agent, wait_for};
use common::{Cloud, ok, ok_json};
use serde_json::{Value, json};

const NODE_TOKEN: &str = "node-secret-for-tests";

/// An agent with no data planes in a temp dir of its own (killed on drop).
fn agent(bins: &Path, control: &str) -> (Procs, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let dirs = AgentDirs {
        state: d,
        blockdp_socket: &d.join("no-blockdp.sock"),
        disk: d,
    };
    (
        Procs(vec![spawn_agent(bins, &dirs, control, NODE_TOKEN)]),
        dir,
    )
}

fn nodes(cloud: &Cloud) -> Vec<Value> {
    let r = cloud.req("GET", "/v1/nodes", Some(NODE_TOKEN), &[], b"");
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()["nodes"].as_array().unwrap().clone()
}

fn wait_server(env: &[(String, String)], name: &str, status: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let last = ok_json(env, &["server", "show", name]);
        if last["status"] == status {
            return last;
        }
        assert!(
            Instant::now() < deadline,
            "{name} never became {status}: {last}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

#[test]
fn nodes_flavors_servers_reschedule_and_down_nodes() {
    if !common::have_cli() {
        return;
    }
    let cloud = Cloud::start_with(
        &format!(
            "[compute]\nheartbeat-interval-secs = 1\nmissed-heartbeats = 3\n\
             node-token = \"{NODE_TOKEN}\"\nmax-build-attempts = 3\n"
        ),
        "",
        "",
    );
    // Bad registrations: no token, wrong token, malformed body.
    let body = json!({"node": {"hostname": "x", "inventory": {"vcpus": 1, "memory_mib": 1}}});
    let r = cloud.json("PUT", "/v1/nodes/n1", None, &body);
    assert_eq!(r.status, 401, "{}", r.text());
    let r = cloud.json("PUT", "/v1/nodes/n1", Some("wrong"), &body);
    assert_eq!(r.status, 401, "{}", r.text());
    let r = cloud.json(
        "PUT",
        "/v1/nodes/n1",
        Some(NODE_TOKEN),
        &json!({"node": {}}),
    );
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.text().contains("inventory"), "{}", r.text());
    let r = cloud.json("PUT", "/v1/nodes/bad%20id", Some(NODE_TOKEN), &body);
    assert_eq!(r.status, 400, "{}", r.text());
    let r = cloud.json(
        "POST",
        "/v1/nodes/unknown/heartbeat",
        Some(NODE_TOKEN),
        &json!({"heartbeat": {"seq": 1, "time": 0, "servers": []}}),
    );
    assert_eq!(r.status, 404, "{}", r.text());
    let r = cloud.req("GET", "/v1/image-data/abc/not-a-token", None, &[], b"");
    assert_eq!(r.status, 401, "{}", r.text());

    let bins = binaries(&["ferrostack-agent"]);
    let (mut a, _a_dir) = agent(&bins, &cloud.url());
    let (mut b, _b_dir) = agent(&bins, &cloud.url());
    wait_for("two nodes up", Duration::from_secs(60), || {
        let n = nodes(&cloud);
        n.len() == 2 && n.iter().all(|n| n["state"] == "up")
    });

    let admin = cloud.admin();
    let hv = ok_json(&admin, &["hypervisor", "list"]);
    assert_eq!(hv.as_array().unwrap().len(), 2, "{hv}");
    assert!(
        hv.as_array().unwrap().iter().all(|h| h["State"] == "up"),
        "{hv}"
    );
    let zones = ok(&admin, &["availability", "zone", "list", "--compute"]);
    assert!(
        zones.contains("nova") && zones.contains("available"),
        "{zones}"
    );

    // Flavors.
    let f = ok_json(
        &admin,
        &[
            "flavor", "create", "--vcpus", "1", "--ram", "64", "--disk", "1", "tiny",
        ],
    );
    assert_eq!(f["name"], "tiny");
    assert_eq!(f["ram"], 64);
    let dup = common::fails(
        &admin,
        &["flavor", "create", "--vcpus", "1", "--ram", "64", "tiny"],
    );
    assert!(dup.contains("already exists"), "{dup}");
    let shown = ok_json(&admin, &["flavor", "show", "tiny"]);
    assert_eq!(shown["id"], f["id"]);
    assert_eq!(shown["vcpus"], 1);
    ok(
        &admin,
        &[
            "flavor", "create", "--vcpus", "2", "--ram", "128", "--disk", "1", "gone",
        ],
    );
    ok(&admin, &["flavor", "delete", "gone"]);
    let list = ok(&admin, &["flavor", "list"]);
    assert!(list.contains("tiny") && !list.contains("gone"), "{list}");

    // Images: a kernel and a disk that names it.
    let dir = tempfile::tempdir().unwrap();
    common::boot_images(&admin, dir.path());
    let nokernel = common::fails(
        &admin,
        &[
            "server", "create", "--image", "kernel", "--flavor", "tiny", "x",
        ],
    );
    assert!(nokernel.contains("kernel_id"), "{nokernel}");

    // Neutron: a network with its subnet, as `--network NAME` resolves it.
    let net = ok_json(&admin, &["network", "create", "blue"]);
    assert_eq!(net["name"], "blue");
    assert_eq!(net["status"], "ACTIVE");
    let sub = common::subnet(&admin, "blue", "10.9.0.0/24", "blue-v4", &[]);
    assert_eq!(sub["cidr"], "10.9.0.0/24");
    assert_eq!(sub["gateway_ip"], "10.9.0.1");
    assert_eq!(sub["network_id"], net["id"]);
    let bad = common::fails(
        &admin,
        &[
            "subnet",
            "create",
            "--network",
            "blue",
            "--subnet-range",
            "10.9.0.1/24",
            "x",
        ],
    );
    assert!(bad.contains("not a valid IPv4 CIDR"), "{bad}");
    let nets = ok(&admin, &["network", "list"]);
    assert!(
        nets.contains("blue") && nets.contains(sub["id"].as_str().unwrap()),
        "{nets}"
    );
    ok(&admin, &["network", "create", "red"]);
    let nosub = common::fails(
        &admin,
        &common::server_create("disk", "tiny", &["--network", "red"], "x"),
    );
    assert!(nosub.contains("requires a subnet"), "{nosub}");
    ok(&admin, &["network", "delete", "red"]);

    // A server: every node fails the build (no data planes), so it is tried on both
    // nodes and ends in ERROR with a fault; allocations are released.
    let s = ok_json(
        &admin,
        &common::server_create("disk", "tiny", &["--network", "blue"], "vm1"),
    );
    assert_eq!(s["name"], "vm1");
    let shown = wait_server(&admin, "vm1", "ERROR");
    let fault = shown["fault"].to_string();
    assert!(fault.contains("No valid host was found"), "{shown}");
    assert!(fault.contains("RetryFilter refused 2"), "{shown}");
    assert_eq!(shown["OS-EXT-STS:vm_state"], "error", "{shown}");
    wait_for("allocations released", Duration::from_secs(30), || {
        nodes(&cloud).iter().all(|n| n["servers"] == 0)
    });
    let long = ok(&admin, &["server", "list", "--long"]);
    assert!(long.contains("vm1") && long.contains("ERROR"), "{long}");
    ok(&admin, &["server", "delete", "vm1"]);
    let list = ok(&admin, &["server", "list"]);
    assert!(!list.contains("vm1"), "{list}");

    // Quotas: a project at its instance limit gets 403 with the reason.
    let (token, body) = cloud.token("admin", common::ADMIN_PASSWORD, "admin");
    let pid = body["token"]["project"]["id"].as_str().unwrap().to_string();
    let path = format!("/compute/v2.1/os-quota-sets/{pid}");
    let r = cloud.req("GET", &path, Some(&token), &[], b"");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["quota_set"]["instances"], 10);
    let r = cloud.json(
        "PUT",
        &path,
        Some(&token),
        &json!({"quota_set": {"instances": 0}}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let r = cloud.json(
        "PUT",
        &path,
        Some(&token),
        &json!({"quota_set": {"bogus": 1}}),
    );
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(
        r.json()["badRequest"]["message"]
            .as_str()
            .unwrap()
            .contains("bogus")
    );
    let over = common::fails(
        &admin,
        &[
            "server", "create", "--image", "disk", "--flavor", "tiny", "vm9",
        ],
    );
    assert!(over.contains("Quota exceeded for instances"), "{over}");
    let r = cloud.json(
        "PUT",
        &path,
        Some(&token),
        &json!({"quota_set": {"instances": 10}}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let r = cloud.req("GET", "/compute/v2.1/servers/nope", Some(&token), &[], b"");
    assert_eq!(r.status, 404, "{}", r.text());
    assert!(
        r.json()["itemNotFound"]["message"].is_string(),
        "{}",
        r.text()
    );
    let r = cloud.req("GET", "/compute/", None, &[], b"");
    assert_eq!(r.json()["versions"][0]["version"], "2.1", "{}", r.text());

    // Nodes that stop heartbeating go down and get nothing new.
    a.stop();
    b.stop();
    wait_for("both nodes down", Duration::from_secs(60), || {
        nodes(&cloud).iter().all(|n| n["state"] == "down")
    });
    let hv = ok_json(&admin, &["hypervisor", "list"]);
    assert!(
        hv.as_array().unwrap().iter().all(|h| h["State"] == "down"),
        "{hv}"
    );
    ok(
        &admin,
        &[
            "server", "create", "--image", "disk", "--flavor", "tiny", "vm2",
        ],
    );
    let shown = wait_server(&admin, "vm2", "ERROR");
    assert!(
        shown["fault"]
            .to_string()
            .contains("ComputeFilter refused 2"),
        "{shown}"
    );
    ok(&admin, &["server", "delete", "vm2"]);
    ok(&admin, &["subnet", "delete", "blue-v4"]);
    ok(&admin, &["network", "delete", "blue"]);
    assert!(!ok(&admin, &["network", "list"]).contains("blue"));
}
