//! Neutron through control with the stock `openstack` CLI and raw HTTP: external networks,
//! routers (gateway, interfaces), security groups and rules, floating IPs and ports, with
//! Neutron's error statuses and bodies. No nodes: this is the API and control's store.

mod common;

use common::*;
use serde_json::{Value, json};

fn id(v: &Value) -> String {
    v["id"].as_str().unwrap().to_string()
}

#[test]
fn routers_groups_floating_ips_and_ports_with_the_openstack_cli() {
    if !have_cli() {
        return;
    }
    let cloud = Cloud::start();
    let admin = cloud.admin();

    // An external network and a tenant network, each with a subnet.
    let ext = ok_json(&admin, &["network", "create", "--external", "public"]);
    assert_eq!(ext["router:external"], true, "{ext}");
    subnet(
        &admin,
        "public",
        "172.24.4.0/24",
        "public-v4",
        &["--no-dhcp"],
    );
    ok(&admin, &["network", "create", "blue"]);
    let blue_sub = subnet(&admin, "blue", "10.9.0.0/24", "blue-v4", &[]);
    let externals = ok(
        &admin,
        &["network", "list", "--external", "-f", "value", "-c", "Name"],
    );
    assert_eq!(externals.trim(), "public", "{externals}");

    // A router with the gateway and an interface on the tenant subnet.
    let r = ok_json(&admin, &["router", "create", "r1"]);
    assert_eq!(r["name"], "r1");
    assert_eq!(r["status"], "ACTIVE");
    ok(
        &admin,
        &["router", "set", "--external-gateway", "public", "r1"],
    );
    let r = ok_json(&admin, &["router", "show", "r1"]);
    let gw = &r["external_gateway_info"];
    assert_eq!(gw["network_id"], ext["id"], "{r}");
    assert_eq!(gw["enable_snat"], true, "{r}");
    let gw_ip = gw["external_fixed_ips"][0]["ip_address"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        gw_ip, "172.24.4.2",
        "the first free address after the gateway: {r}"
    );
    ok(&admin, &["router", "add", "subnet", "r1", "blue-v4"]);
    let again = fails(&admin, &["router", "add", "subnet", "r1", "blue-v4"]);
    assert!(again.contains("already has a port"), "{again}");
    let ports = ok_json(&admin, &["port", "list", "--router", "r1"]);
    let iface = ports
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["Fixed IP Addresses"].to_string().contains("10.9.0.1"))
        .unwrap_or_else(|| panic!("no interface port on 10.9.0.1: {ports}"));
    assert!(!iface["ID"].as_str().unwrap().is_empty());
    // The interface port cannot be deleted through the port API.
    let busy = fails(&admin, &["port", "delete", iface["ID"].as_str().unwrap()]);
    assert!(busy.contains("router_interface"), "{busy}");

    // Security groups: the project's default exists, a new one with rules.
    let groups = ok(
        &admin,
        &["security", "group", "list", "-f", "value", "-c", "Name"],
    );
    assert!(groups.lines().any(|l| l == "default"), "{groups}");
    let sg = ok_json(
        &admin,
        &["security", "group", "create", "--description", "web", "web"],
    );
    assert_eq!(sg["description"], "web");
    let egress = sg["rules"].to_string();
    assert!(
        egress.contains("egress"),
        "a new group lets everything out: {sg}"
    );
    let icmp = ok_json(
        &admin,
        &[
            "security",
            "group",
            "rule",
            "create",
            "--protocol",
            "icmp",
            "web",
        ],
    );
    assert_eq!(icmp["protocol"], "icmp");
    assert_eq!(icmp["direction"], "ingress");
    let ssh_rule = [
        "security",
        "group",
        "rule",
        "create",
        "--protocol",
        "tcp",
        "--dst-port",
        "22",
        "web",
    ];
    let ssh = ok_json(&admin, &ssh_rule);
    assert_eq!(
        (
            ssh["port_range_min"].as_u64(),
            ssh["port_range_max"].as_u64()
        ),
        (Some(22), Some(22))
    );
    let dup = fails(&admin, &ssh_rule);
    assert!(dup.contains("already exists"), "{dup}");
    let shown = ok_json(&admin, &["security", "group", "show", "web"]);
    assert_eq!(shown["rules"].as_array().map(Vec::len), Some(4), "{shown}");
    let rules = ok(
        &admin,
        &[
            "security", "group", "rule", "list", "web", "-f", "value", "-c", "ID",
        ],
    );
    assert_eq!(rules.lines().count(), 4, "{rules}");

    // Ports: created on the network with the group; a given address; list, show.
    let p1 = ok_json(
        &admin,
        &[
            "port",
            "create",
            "--network",
            "blue",
            "--security-group",
            "web",
            "p1",
        ],
    );
    assert_eq!(p1["status"], "DOWN");
    assert!(
        p1["mac_address"].as_str().unwrap().starts_with("fa:16:3e:"),
        "{p1}"
    );
    assert!(p1["fixed_ips"].to_string().contains("10.9.0.2"), "{p1}");
    assert_eq!(p1["security_group_ids"], json!([id(&sg)]), "{p1}");
    let p2 = ok_json(
        &admin,
        &[
            "port",
            "create",
            "--network",
            "blue",
            "--fixed-ip",
            "subnet=blue-v4,ip-address=10.9.0.50",
            "p2",
        ],
    );
    assert!(p2["fixed_ips"].to_string().contains("10.9.0.50"), "{p2}");
    let taken = fails(
        &admin,
        &[
            "port",
            "create",
            "--network",
            "blue",
            "--fixed-ip",
            "subnet=blue-v4,ip-address=10.9.0.50",
            "p3",
        ],
    );
    assert!(taken.contains("already allocated"), "{taken}");
    let list = ok(&admin, &["port", "list", "--network", "blue"]);
    assert!(list.contains("p1") && list.contains("p2"), "{list}");
    assert_eq!(ok_json(&admin, &["port", "show", "p2"])["name"], "p2");
    // The group is in use by p1.
    let inuse = fails(&admin, &["security", "group", "delete", "web"]);
    assert!(inuse.contains("in use"), "{inuse}");

    // Floating IPs: on the external network, mapped to p1 through r1.
    let fip = ok_json(&admin, &["floating", "ip", "create", "public"]);
    let fip_ip = fip["floating_ip_address"].as_str().unwrap().to_string();
    assert_eq!(fip_ip, "172.24.4.3", "{fip}");
    assert_eq!(fip["status"], "DOWN");
    ok(&admin, &["floating", "ip", "set", "--port", "p1", &fip_ip]);
    let shown = ok_json(&admin, &["floating", "ip", "show", &fip_ip]);
    assert_eq!(shown["port_id"], p1["id"], "{shown}");
    assert_eq!(shown["fixed_ip_address"], "10.9.0.2", "{shown}");
    assert_eq!(shown["router_id"], r["id"], "{shown}");
    assert_eq!(shown["status"], "ACTIVE");
    let listed = ok(&admin, &["floating", "ip", "list"]);
    assert!(
        listed.contains(&fip_ip) && listed.contains("10.9.0.2"),
        "{listed}"
    );
    // The interface is needed by the floating IP; the gateway too.
    let needed = fails(&admin, &["router", "remove", "subnet", "r1", "blue-v4"]);
    assert!(needed.contains("floating IP"), "{needed}");
    let needed = fails(&admin, &["router", "unset", "--external-gateway", "r1"]);
    assert!(needed.contains("floating IP"), "{needed}");
    // A floating IP on a tenant network is refused.
    let bad = fails(&admin, &["floating", "ip", "create", "blue"]);
    assert!(bad.contains("not a valid external network"), "{bad}");

    // Deleting the port disassociates its floating IP.
    ok(&admin, &["port", "delete", "p1"]);
    let shown = ok_json(&admin, &["floating", "ip", "show", &fip_ip]);
    assert!(shown["port_id"].is_null(), "{shown}");
    ok(&admin, &["floating", "ip", "delete", &fip_ip]);
    assert!(!ok(&admin, &["floating", "ip", "list"]).contains(&fip_ip));
    ok(&admin, &["port", "delete", "p2"]);

    // Networks in use cannot go; after the interface and gateway are gone they can.
    let used = fails(&admin, &["network", "delete", "blue"]);
    assert!(used.contains("in use"), "{used}");
    let router_busy = fails(&admin, &["router", "delete", "r1"]);
    assert!(router_busy.contains("still has ports"), "{router_busy}");
    ok(&admin, &["router", "remove", "subnet", "r1", "blue-v4"]);
    ok(&admin, &["router", "unset", "--external-gateway", "r1"]);
    assert!(ok_json(&admin, &["router", "show", "r1"])["external_gateway_info"].is_null());
    ok(&admin, &["router", "delete", "r1"]);
    ok(&admin, &["security", "group", "delete", "web"]);
    let groups = ok(
        &admin,
        &["security", "group", "list", "-f", "value", "-c", "Name"],
    );
    assert!(!groups.lines().any(|l| l == "web"), "{groups}");
    ok(&admin, &["network", "delete", "blue"]);
    ok(&admin, &["network", "delete", "public"]);
    let _ = blue_sub;
}

#[test]
fn neutron_errors_have_neutron_statuses_and_bodies() {
    let cloud = Cloud::start();
    let (token, _) = cloud.token("admin", ADMIN_PASSWORD, "admin");
    let t = Some(token.as_str());
    let err = |r: &Answer| -> String {
        r.json()["NeutronError"]["message"]
            .as_str()
            .unwrap_or_else(|| panic!("no NeutronError body: {}", r.text()))
            .to_string()
    };
    let post = |path: &str, body: Value| cloud.json("POST", path, t, &body);

    // 404s.
    for path in [
        "/network/v2.0/routers/nope",
        "/network/v2.0/security-groups/nope",
        "/network/v2.0/security-group-rules/nope",
        "/network/v2.0/floatingips/nope",
        "/network/v2.0/ports/nope",
    ] {
        let r = cloud.req("GET", path, t, &[], b"");
        assert_eq!(r.status, 404, "{path}: {}", r.text());
        assert!(err(&r).contains("nope"), "{}", r.text());
        let r = cloud.req("DELETE", path, t, &[], b"");
        assert_eq!(r.status, 404, "{path}: {}", r.text());
    }
    let r = post(
        "/network/v2.0/ports",
        json!({"port": {"network_id": "nope"}}),
    );
    assert_eq!(r.status, 404, "{}", r.text());

    let net = post("/network/v2.0/networks", json!({"network": {"name": "n"}}));
    assert_eq!(net.status, 201, "{}", net.text());
    let net_id = net.json()["network"]["id"].as_str().unwrap().to_string();
    let sub = post(
        "/network/v2.0/subnets",
        json!({"subnet": {"network_id": net_id, "ip_version": 4, "cidr": "10.1.0.0/29"}}),
    );
    assert_eq!(sub.status, 201, "{}", sub.text());
    let sub_id = sub.json()["subnet"]["id"].as_str().unwrap().to_string();

    // 400s: missing bodies and fields, bad values.
    let cases = [
        ("/network/v2.0/routers", json!({"nope": {}}), "router"),
        ("/network/v2.0/ports", json!({"port": {}}), "network_id"),
        (
            "/network/v2.0/ports",
            json!({"port": {"network_id": net_id, "mac_address": "zz"}}),
            "mac_address",
        ),
        (
            "/network/v2.0/ports",
            json!({"port": {"network_id": net_id, "fixed_ips": [{"ip_address": "10.2.0.5"}]}}),
            "not a valid IP for the specified subnet",
        ),
        (
            "/network/v2.0/floatingips",
            json!({"floatingip": {"floating_network_id": net_id}}),
            "not a valid external network",
        ),
        (
            "/network/v2.0/routers",
            json!({"router": {"external_gateway_info": {"network_id": net_id}}}),
            "not a valid external network",
        ),
        (
            "/network/v2.0/security-group-rules",
            json!({"security_group_rule": {}}),
            "security_group_id",
        ),
    ];
    for (path, body, needle) in cases {
        let r = post(path, body.clone());
        assert_eq!(r.status, 400, "{path} {body}: {}", r.text());
        assert!(err(&r).contains(needle), "{path} {body}: {}", r.text());
    }
    let sg = post(
        "/network/v2.0/security-groups",
        json!({"security_group": {"name": "g"}}),
    );
    assert_eq!(sg.status, 201, "{}", sg.text());
    let sg_id = sg.json()["security_group"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    for (rule, needle) in [
        (json!({"direction": "sideways"}), "direction"),
        (
            json!({"direction": "ingress", "protocol": "bogus"}),
            "not supported",
        ),
        (
            json!({"direction": "ingress", "port_range_min": 22}),
            "protocol",
        ),
        (
            json!({"direction": "ingress", "protocol": "tcp", "port_range_min": 90, "port_range_max": 80}),
            "port_range_min",
        ),
        (
            json!({"direction": "ingress", "remote_ip_prefix": "10.0.0.0/99"}),
            "remote_ip_prefix",
        ),
        (
            json!({"direction": "ingress", "remote_ip_prefix": "10.0.0.0/8", "remote_group_id": sg_id}),
            "Only remote_ip_prefix or remote_group_id",
        ),
    ] {
        let mut body = rule.clone();
        body["security_group_id"] = json!(sg_id);
        let r = post(
            "/network/v2.0/security-group-rules",
            json!({ "security_group_rule": body }),
        );
        assert_eq!(r.status, 400, "{rule}: {}", r.text());
        assert!(err(&r).contains(needle), "{rule}: {}", r.text());
    }
    // A rule naming a group that does not exist: 404.
    let r = post(
        "/network/v2.0/security-group-rules",
        json!({"security_group_rule": {"security_group_id": "nope", "direction": "ingress"}}),
    );
    assert_eq!(r.status, 404, "{}", r.text());

    // 409s: a second `default` group; the subnet full; a group in use.
    let r = post(
        "/network/v2.0/security-groups",
        json!({"security_group": {"name": "default"}}),
    );
    assert_eq!(r.status, 409, "{}", r.text());
    let mut made = vec![];
    loop {
        let r = post(
            "/network/v2.0/ports",
            json!({"port": {"network_id": net_id, "security_groups": [sg_id]}}),
        );
        if r.status != 201 {
            assert_eq!(r.status, 409, "{}", r.text());
            assert!(err(&r).contains("No more IP addresses"), "{}", r.text());
            break;
        }
        made.push(r.json()["port"]["id"].as_str().unwrap().to_string());
        assert!(made.len() < 10, "a /29 has 5 addresses for ports");
    }
    assert_eq!(made.len(), 5, "10.1.0.2 to .6 (.1 is the gateway)");
    let r = cloud.req(
        "DELETE",
        &format!("/network/v2.0/security-groups/{sg_id}"),
        t,
        &[],
        b"",
    );
    assert_eq!(r.status, 409, "{}", r.text());
    assert!(err(&r).contains("in use"), "{}", r.text());
    let r = cloud.req(
        "DELETE",
        &format!("/network/v2.0/subnets/{sub_id}"),
        t,
        &[],
        b"",
    );
    assert_eq!(r.status, 409, "{}", r.text());
    // A port update of a read-only field: 400; of the groups: applied.
    let r = cloud.json(
        "PUT",
        &format!("/network/v2.0/ports/{}", made[0]),
        t,
        &json!({"port": {"mac_address": "fa:16:3e:00:00:01"}}),
    );
    assert_eq!(r.status, 400, "{}", r.text());
    let r = cloud.json(
        "PUT",
        &format!("/network/v2.0/ports/{}", made[0]),
        t,
        &json!({"port": {"security_groups": [], "name": "renamed"}}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["port"]["security_groups"], json!([]));
    assert_eq!(r.json()["port"]["name"], "renamed");
    for p in &made {
        let r = cloud.req("DELETE", &format!("/network/v2.0/ports/{p}"), t, &[], b"");
        assert_eq!(r.status, 204, "{}", r.text());
    }
    // Freed addresses are handed out again.
    let r = post(
        "/network/v2.0/ports",
        json!({"port": {"network_id": net_id}}),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(r.json()["port"]["fixed_ips"][0]["ip_address"], "10.1.0.2");
}

#[test]
fn servers_take_ports_and_security_groups_from_neutron() {
    if !have_cli() {
        return;
    }
    let cloud = Cloud::start();
    let admin = cloud.admin();
    ok(
        &admin,
        &[
            "flavor", "create", "--vcpus", "1", "--ram", "32", "--disk", "1", "tiny",
        ],
    );
    let dir = tempfile::tempdir().unwrap();
    boot_images(&admin, dir.path());
    ok(&admin, &["network", "create", "blue"]);
    subnet(&admin, "blue", "10.9.0.0/24", "blue-v4", &[]);
    let web = ok_json(&admin, &["security", "group", "create", "web"]);

    // `--port`: the server takes the port (no node here: the build ends in ERROR, the
    // port stays bound to the server until it is deleted).
    let p1 = ok_json(&admin, &["port", "create", "--network", "blue", "p1"]);
    let s1 = ok_json(
        &admin,
        &[
            "server", "create", "--image", "disk", "--flavor", "tiny", "--port", "p1", "vm1",
        ],
    );
    let bound = ok_json(&admin, &["port", "show", "p1"]);
    assert_eq!(bound["device_id"], s1["id"], "{bound}");
    assert_eq!(bound["device_owner"], "compute:nova");
    let taken = fails(
        &admin,
        &[
            "server", "create", "--image", "disk", "--flavor", "tiny", "--port", "p1", "vm2",
        ],
    );
    assert!(taken.contains("still in use"), "{taken}");
    let busy = fails(&admin, &["port", "delete", "p1"]);
    assert!(busy.contains("in use by server"), "{busy}");

    // `--network` with `--security-group`: control makes the port, with that group.
    let s3 = ok_json(
        &admin,
        &server_create(
            "disk",
            "tiny",
            &["--network", "blue", "--security-group", "web"],
            "vm3",
        ),
    );
    let ports = ok_json(&admin, &["port", "list", "--server", "vm3", "--long"]);
    assert_eq!(ports.as_array().unwrap().len(), 1, "{ports}");
    let made = ports[0]["ID"].as_str().unwrap().to_string();
    let shown = ok_json(&admin, &["port", "show", &made]);
    assert_eq!(shown["security_group_ids"], json!([id(&web)]), "{shown}");
    assert_eq!(shown["device_id"], s3["id"]);
    let server = ok_json(&admin, &["server", "show", "vm3"]);
    assert!(
        server["security_groups"].to_string().contains("web"),
        "{server}"
    );
    // An unknown group is refused before anything is made.
    let nogroup = fails(
        &admin,
        &server_create(
            "disk",
            "tiny",
            &["--network", "blue", "--security-group", "nope"],
            "vm4",
        ),
    );
    assert!(nogroup.contains("nope"), "{nogroup}");

    // Deleting the servers: the given port is unbound and stays, the made one goes.
    ok(&admin, &["server", "delete", "--wait", "vm1"]);
    ok(&admin, &["server", "delete", "--wait", "vm3"]);
    let freed = ok_json(&admin, &["port", "show", "p1"]);
    assert_eq!(freed["device_id"], "", "{freed}");
    assert_eq!(freed["id"], p1["id"]);
    let left = ok(&admin, &["port", "list", "-f", "value", "-c", "ID"]);
    assert_eq!(left.trim(), p1["id"].as_str().unwrap(), "{left}");
    ok(&admin, &["port", "delete", "p1"]);
    ok(&admin, &["security", "group", "delete", "web"]);
    ok(&admin, &["subnet", "delete", "blue-v4"]);
    ok(&admin, &["network", "delete", "blue"]);
}

/// A stand-in node agent: records each `PUT /v1/network` body and answers with the
/// generation applied, or with an error while `fail` is set.
struct FakeAgent {
    port: u16,
    pushes: std::sync::Arc<std::sync::Mutex<Vec<Value>>>,
    fail: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl FakeAgent {
    fn start() -> FakeAgent {
        use std::io::{BufRead, BufReader, Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let pushes = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let fail = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (p2, f2) = (pushes.clone(), fail.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { return };
                let mut r = BufReader::new(conn.try_clone().unwrap());
                let mut line = String::new();
                r.read_line(&mut line).unwrap();
                let mut len = 0usize;
                loop {
                    let mut h = String::new();
                    r.read_line(&mut h).unwrap();
                    if h.trim().is_empty() {
                        break;
                    }
                    if let Some(v) = h.to_ascii_lowercase().strip_prefix("content-length:") {
                        len = v.trim().parse().unwrap();
                    }
                }
                let mut body = vec![0; len];
                r.read_exact(&mut body).unwrap();
                let answer = if line.starts_with("PUT /v1/network ") {
                    let v: Value = serde_json::from_slice(&body).unwrap();
                    let generation = v["generation"].clone();
                    p2.lock().unwrap().push(v);
                    if f2.load(std::sync::atomic::Ordering::SeqCst) {
                        json!({"generation": 0, "errors": ["simulated netdp failure"]})
                    } else {
                        json!({"generation": generation, "errors": []})
                    }
                } else {
                    json!({})
                };
                let text = answer.to_string();
                let _ = write!(
                    conn,
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{text}",
                    text.len()
                );
            }
        });
        FakeAgent { port, pushes, fail }
    }

    fn count(&self) -> usize {
        self.pushes.lock().unwrap().len()
    }

    /// Waits for a push after the first `after` that satisfies `f`.
    /// The number of pushes once none has arrived for 300 ms.
    fn settled(&self) -> usize {
        let mut n = self.count();
        loop {
            std::thread::sleep(std::time::Duration::from_millis(300));
            let now = self.count();
            if now == n {
                return n;
            }
            n = now;
        }
    }

    fn wait_push(&self, after: usize, f: impl Fn(&Value) -> bool) -> Value {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        loop {
            if let Some(v) = self
                .pushes
                .lock()
                .unwrap()
                .iter()
                .skip(after)
                .find(|v| f(v))
            {
                return v.clone();
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no such push: {:?}",
                self.pushes.lock().unwrap()
            );
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }
}

/// The headers a node sends (node token `nt`).
const NODE: [(&str, &str); 2] = [("x-auth-token", "nt"), ("content-type", "application/json")];

/// Registers node `n1` (host name `n1-host`) with `agent` as its agent; answers the
/// headers its own requests carry.
fn register_node(cloud: &Cloud, agent: &FakeAgent) -> [(&'static str, &'static str); 2] {
    let register = json!({"node": {"hostname": "n1-host", "agent_url": format!("http://127.0.0.1:{}", agent.port),
                          "inventory": {"vcpus": 4, "memory_mib": 4096, "disk_bytes": 1u64 << 34}}});
    let r = cloud.req(
        "PUT",
        "/v1/nodes/n1",
        None,
        &NODE,
        register.to_string().as_bytes(),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    NODE
}

#[test]
fn nodes_get_their_network_state_and_a_node_behind_gets_it_again_at_its_heartbeat() {
    let cloud = Cloud::start_with(
        "[compute]\nnode-token = \"nt\"\nheartbeat-interval-secs = 10",
        "",
        "",
    );
    let agent = FakeAgent::start();
    let node = register_node(&cloud, &agent);
    let heartbeat = |generation: u64| {
        let b = json!({"heartbeat": {"seq": 1, "servers": [], "network_generation": generation}});
        let r = cloud.req(
            "POST",
            "/v1/nodes/n1/heartbeat",
            None,
            &node,
            b.to_string().as_bytes(),
        );
        assert_eq!(r.status, 204, "{}", r.text());
    };
    let (token, _) = cloud.token("admin", ADMIN_PASSWORD, "admin");
    let t = Some(token.as_str());
    let net = cloud.json(
        "POST",
        "/network/v2.0/networks",
        t,
        &json!({"network": {"name": "n"}}),
    );
    let net_id = net.json()["network"]["id"].as_str().unwrap().to_string();
    let r = cloud.json(
        "POST",
        "/network/v2.0/subnets",
        t,
        &json!({"subnet": {"network_id": net_id, "ip_version": 4, "cidr": "10.3.0.0/24"}}),
    );
    assert_eq!(r.status, 201, "{}", r.text());

    // A port bound to the node (by host name) reaches it with its network, subnet and group.
    let r = cloud.json(
        "POST",
        "/network/v2.0/ports",
        t,
        &json!({"port": {"network_id": net_id, "name": "a", "binding:host_id": "n1-host"}}),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    let port = r.json()["port"].clone();
    assert_eq!(port["binding:host_id"], "n1");
    let pid = port["id"].as_str().unwrap().to_string();
    let has_port = |v: &Value, name: &str| {
        v["ports"].as_array().is_some_and(|a| {
            a.iter()
                .any(|p| p["id"] == pid.as_str() && p["name"] == name)
        })
    };
    let first = agent.wait_push(0, |v| has_port(v, "a"));
    assert_eq!(first["networks"][0]["id"], net_id.as_str(), "{first}");
    assert_eq!(first["subnets"][0]["cidr"], "10.3.0.0/24", "{first}");
    assert_eq!(first["security_groups"][0]["name"], "default", "{first}");
    assert_eq!(
        first["security_group_rules"].as_array().unwrap().len(),
        2,
        "the default group's IPv4 rules: {first}"
    );
    let applied = first["generation"].as_u64().unwrap();

    // The node fails to apply a change: a heartbeat showing it behind brings a new push.
    agent.fail.store(true, std::sync::atomic::Ordering::SeqCst);
    let before = agent.count();
    let r = cloud.json(
        "PUT",
        &format!("/network/v2.0/ports/{pid}"),
        t,
        &json!({"port": {"name": "b"}}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let failed = agent.wait_push(before, |v| has_port(v, "b"));
    let latest = failed["generation"].as_u64().unwrap();
    assert!(latest > applied);
    agent.fail.store(false, std::sync::atomic::Ordering::SeqCst);
    let before = agent.count();
    heartbeat(applied);
    let again = agent.wait_push(before, |v| has_port(v, "b"));
    assert_eq!(again["generation"].as_u64(), Some(latest), "{again}");
    // Up to date: heartbeats bring nothing more (once pushes started before, such as a
    // retry of the failed one, have landed).
    let before = agent.settled();
    heartbeat(latest);
    heartbeat(latest);
    std::thread::sleep(std::time::Duration::from_millis(800));
    assert_eq!(agent.count(), before, "a node up to date gets no push");

    // Unbinding the port withdraws it (and its network) from the node.
    let before = agent.count();
    let r = cloud.json(
        "PUT",
        &format!("/network/v2.0/ports/{pid}"),
        t,
        &json!({"port": {"binding:host_id": ""}}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let empty = agent.wait_push(before, |v| v["ports"] == json!([]));
    assert_eq!(empty["networks"], json!([]), "{empty}");
}

#[test]
fn projects_see_only_their_own_neutron_resources() {
    if !have_cli() {
        return;
    }
    let cloud = Cloud::start();
    let admin = cloud.admin();
    let bob = cloud.member("demo", "bob", "bob-pw");
    ok(&admin, &["router", "create", "admins-router"]);
    let admin_sg = ok_json(&admin, &["security", "group", "create", "admins-group"]);

    // Members cannot make external networks.
    let refused = fails(&bob, &["network", "create", "--external", "mine"]);
    assert!(refused.contains("admin"), "{refused}");
    // Their own default group, not the admin's groups or routers.
    let groups = ok_json(&bob, &["security", "group", "list"]);
    let names: Vec<&str> = groups
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["Name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["default"], "{groups}");
    let missing = fails(&bob, &["security", "group", "show", &id(&admin_sg)]);
    assert!(
        missing.contains("No SecurityGroup found") || missing.contains("404"),
        "{missing}"
    );
    assert!(!ok(&bob, &["router", "list"]).contains("admins-router"));
    let r = ok_json(&bob, &["router", "create", "bobs-router"]);
    assert_eq!(r["project_id"].as_str().map(str::len), Some(32), "{r}");
    assert!(
        ok(&admin, &["router", "list"]).contains("bobs-router"),
        "admins see all"
    );
    // The default group cannot be deleted by its project.
    let kept = fails(&bob, &["security", "group", "delete", "default"]);
    assert!(kept.contains("default security group"), "{kept}");
}

#[test]
fn networks_and_subnets_answer_with_their_own_statuses_and_messages() {
    let cloud = Cloud::start();
    let (token, _) = cloud.token("admin", ADMIN_PASSWORD, "admin");
    let t = Some(token.as_str());
    let answer = |r: &Answer, status: u16, message: &str| {
        assert_eq!(r.status, status, "{}", r.text());
        assert_eq!(
            r.json(),
            json!({"NeutronError": {"type": "HTTPError", "message": message, "detail": ""}}),
        );
    };
    let post = |path: &str, body: Value| cloud.json("POST", path, t, &body);
    let call = |method: &str, token: Option<&str>, path: &str| {
        cloud.req(method, &format!("/network/v2.0/{path}"), token, &[], b"")
    };

    for (kind, what) in [("networks", "Network"), ("subnets", "Subnet")] {
        for method in ["GET", "DELETE"] {
            let r = call(method, t, &format!("{kind}/nope"));
            answer(&r, 404, &format!("{what} nope could not be found."));
        }
    }
    let r = post("/network/v2.0/networks", json!({"net": {}}));
    answer(&r, 400, "the body needs a \"network\" object");
    let r = post("/network/v2.0/subnets", json!({"subnet": []}));
    answer(&r, 400, "the body needs a \"subnet\" object");
    let r = post("/network/v2.0/networks", json!({"network": {"mtu": 100}}));
    answer(&r, 400, "mtu must be 576 to 9000");
    let r = post("/network/v2.0/subnets", json!({"subnet": {}}));
    answer(&r, 400, "subnet.network_id is required");

    let net = post("/network/v2.0/networks", json!({"network": {"name": "n"}}));
    assert_eq!(net.status, 201, "{}", net.text());
    let net_id = id(&net.json()["network"]);
    assert_eq!(net.json()["network"]["subnets"], json!([]));
    // No updates of networks or subnets: no such route.
    let r = cloud.json(
        "PUT",
        &format!("/network/v2.0/networks/{net_id}"),
        t,
        &json!({"network": {"name": "m"}}),
    );
    answer(&r, 404, "The resource could not be found.");
    let r = post(
        "/network/v2.0/subnets",
        json!({"subnet": {"network_id": net_id, "cidr": "10.3.0.0/24",
                          "gateway_ip": "10.4.0.1"}}),
    );
    answer(&r, 400, "gateway_ip 10.4.0.1 is outside 10.3.0.0/24");
    let sub = post(
        "/network/v2.0/subnets",
        json!({"subnet": {"network_id": net_id, "cidr": "10.3.0.0/24"}}),
    );
    assert_eq!(sub.status, 201, "{}", sub.text());
    let sub_id = id(&sub.json()["subnet"]);
    assert_eq!(sub.json()["subnet"]["gateway_ip"], "10.3.0.1");
    let r = post(
        "/network/v2.0/subnets",
        json!({"subnet": {"network_id": net_id, "cidr": "10.5.0.0/24"}}),
    );
    answer(
        &r,
        409,
        "this cloud supports one subnet per network; the network already has one",
    );
    let r = call("GET", t, "networks?name=n");
    assert_eq!(r.status, 200, "{}", r.text());
    let list = r.json()["networks"].clone();
    assert_eq!(list.as_array().map(Vec::len), Some(1), "{list}");
    assert_eq!(list[0]["subnets"], json!([sub_id]), "{list}");
    let r = call("GET", t, &format!("subnets/{sub_id}"));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["subnet"]["cidr"], "10.3.0.0/24");

    // A port keeps both; once it is gone, the network goes with its subnet.
    let port = post(
        "/network/v2.0/ports",
        json!({"port": {"network_id": net_id}}),
    );
    assert_eq!(port.status, 201, "{}", port.text());
    let port_id = id(&port.json()["port"]);
    let r = call("DELETE", t, &format!("subnets/{sub_id}"));
    answer(
        &r,
        409,
        &format!(
            "Unable to complete operation on subnet {sub_id}: one or more ports have an IP allocation from this subnet."
        ),
    );
    let r = call("DELETE", t, &format!("networks/{net_id}"));
    answer(
        &r,
        409,
        &format!(
            "Unable to complete operation on network {net_id}. There are one or more ports still in use on the network."
        ),
    );
    let r = call("DELETE", t, &format!("ports/{port_id}"));
    assert_eq!(r.status, 204, "{}", r.text());
    let r = call("DELETE", t, &format!("networks/{net_id}"));
    assert_eq!(r.status, 204, "{}", r.text());
    assert!(r.body.is_empty());
    let r = call("GET", t, &format!("subnets/{sub_id}"));
    answer(&r, 404, &format!("Subnet {sub_id} could not be found."));

    // Another project sees a shared network but not its subnet, and neither deletes it
    // nor adds one.
    if !have_cli() {
        return;
    }
    cloud.member("demo", "bob", "bob-pw");
    let (bob, _) = cloud.token("bob", "bob-pw", "demo");
    let b = Some(bob.as_str());
    let shared = post(
        "/network/v2.0/networks",
        json!({"network": {"name": "everyone", "shared": true}}),
    );
    assert_eq!(shared.status, 201, "{}", shared.text());
    let shared_id = id(&shared.json()["network"]);
    let sub = post(
        "/network/v2.0/subnets",
        json!({"subnet": {"network_id": shared_id, "cidr": "10.6.0.0/24"}}),
    );
    assert_eq!(sub.status, 201, "{}", sub.text());
    let sub_id = id(&sub.json()["subnet"]);
    let r = call("GET", b, &format!("networks/{shared_id}"));
    assert_eq!(r.status, 200, "{}", r.text());
    let r = call("GET", b, "networks");
    assert_eq!(
        r.json()["networks"][0]["id"],
        shared_id.as_str(),
        "{}",
        r.text()
    );
    let r = call("GET", b, &format!("subnets/{sub_id}"));
    answer(&r, 404, &format!("Subnet {sub_id} could not be found."));
    let r = call("GET", b, "subnets");
    assert_eq!(r.json(), json!({"subnets": []}));
    let r = call("DELETE", b, &format!("networks/{shared_id}"));
    answer(&r, 403, "only the owner deletes a network");
    let r = cloud.json(
        "POST",
        "/network/v2.0/subnets",
        b,
        &json!({"subnet": {"network_id": shared_id, "cidr": "10.7.0.0/24"}}),
    );
    answer(&r, 403, "only the network's owner adds subnets");
}

#[test]
fn extra_routes_with_the_openstack_cli() {
    if !have_cli() {
        return;
    }
    let cloud = Cloud::start();
    let admin = cloud.admin();
    ok(&admin, &["network", "create", "blue"]);
    subnet(&admin, "blue", "10.9.0.0/24", "blue-v4", &[]);
    ok(&admin, &["router", "create", "r1"]);
    ok(&admin, &["router", "add", "subnet", "r1", "blue-v4"]);
    let routes = |want: &[(&str, &str)]| {
        let r = ok_json(&admin, &["router", "show", "r1"]);
        let mut got: Vec<(String, String)> = r["routes"]
            .as_array()
            .unwrap_or_else(|| panic!("routes: {r}"))
            .iter()
            .map(|x| {
                (
                    x["destination"].as_str().unwrap().to_string(),
                    x["nexthop"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        got.sort();
        let want: Vec<(String, String)> = want
            .iter()
            .map(|(d, n)| (d.to_string(), n.to_string()))
            .collect();
        assert_eq!(got, want, "{r}");
    };
    routes(&[]);

    // router set --route (read, append, PUT), router add/remove route (extraroute-atomic).
    ok(
        &admin,
        &[
            "router",
            "set",
            "--route",
            "destination=10.99.0.0/24,gateway=10.9.0.5",
            "r1",
        ],
    );
    routes(&[("10.99.0.0/24", "10.9.0.5")]);
    ok(
        &admin,
        &[
            "router",
            "add",
            "route",
            "--route",
            "destination=10.98.0.0/24,gateway=10.9.0.6",
            "--route",
            "destination=10.99.0.0/24,gateway=10.9.0.5",
            "r1",
        ],
    );
    routes(&[("10.98.0.0/24", "10.9.0.6"), ("10.99.0.0/24", "10.9.0.5")]);
    ok(
        &admin,
        &[
            "router",
            "remove",
            "route",
            "--route",
            "destination=10.98.0.0/24,gateway=10.9.0.6",
            "r1",
        ],
    );
    routes(&[("10.99.0.0/24", "10.9.0.5")]);

    // Refusals: a next hop on no subnet of the router; the router's own address; removing
    // the interface a route goes through.
    let far = fails(
        &admin,
        &[
            "router",
            "set",
            "--route",
            "destination=10.97.0.0/24,gateway=10.50.0.1",
            "r1",
        ],
    );
    assert!(
        far.contains("the nexthop is not connected with router"),
        "{far}"
    );
    let own = fails(
        &admin,
        &[
            "router",
            "add",
            "route",
            "--route",
            "destination=10.97.0.0/24,gateway=10.9.0.1",
            "r1",
        ],
    );
    assert!(own.contains("the nexthop is used by router"), "{own}");
    let pinned = fails(&admin, &["router", "remove", "subnet", "r1", "blue-v4"]);
    assert!(
        pinned.contains("required by one or more routes"),
        "{pinned}"
    );
    routes(&[("10.99.0.0/24", "10.9.0.5")]);

    // router unset --route, then the interface can go.
    ok(
        &admin,
        &[
            "router",
            "unset",
            "--route",
            "destination=10.99.0.0/24,gateway=10.9.0.5",
            "r1",
        ],
    );
    routes(&[]);
    ok(
        &admin,
        &[
            "router",
            "set",
            "--no-route",
            "--route",
            "destination=10.96.0.0/24,gateway=10.9.0.7",
            "r1",
        ],
    );
    routes(&[("10.96.0.0/24", "10.9.0.7")]);
    ok(&admin, &["router", "set", "--no-route", "r1"]);
    routes(&[]);
    ok(&admin, &["router", "remove", "subnet", "r1", "blue-v4"]);
}

#[test]
fn extra_routes_and_the_gateway_address_answer_as_neutron_does() {
    let cloud = Cloud::start();
    let (token, _) = cloud.token("admin", ADMIN_PASSWORD, "admin");
    let t = Some(token.as_str());
    // Neutron names each error by its exception's class.
    let answer = |r: &Answer, status: u16, kind: &str, message: &str| {
        assert_eq!(r.status, status, "{}", r.text());
        assert_eq!(
            r.json(),
            json!({"NeutronError": {"type": kind, "message": message, "detail": ""}}),
        );
    };
    let post = |path: &str, body: Value| cloud.json("POST", path, t, &body);
    let put = |path: &str, body: Value| cloud.json("PUT", path, t, &body);

    let net = post("/network/v2.0/networks", json!({"network": {"name": "n"}}));
    let net_id = id(&net.json()["network"]);
    let sub = post(
        "/network/v2.0/subnets",
        json!({"subnet": {"network_id": net_id, "ip_version": 4, "cidr": "10.4.0.0/24"}}),
    );
    let sub_id = id(&sub.json()["subnet"]);
    let r = post(
        "/network/v2.0/routers",
        json!({"router": {"name": "r", "routes": []}}),
    );
    answer(
        &r,
        400,
        "HTTPBadRequest",
        "Attribute 'routes' not allowed in POST",
    );
    let r = post("/network/v2.0/routers", json!({"router": {"name": "r"}}));
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(r.json()["router"]["routes"], json!([]));
    let rid = id(&r.json()["router"]);
    let rpath = format!("/network/v2.0/routers/{rid}");
    let route = json!({"destination": "10.99.0.0/24", "nexthop": "10.4.0.5"});

    // Before the interface: not connected. Malformed routes.
    let r = put(&rpath, json!({"router": {"routes": [route]}}));
    answer(
        &r,
        400,
        "InvalidRoutes",
        "Invalid format for routes: [{'destination': '10.99.0.0/24', 'nexthop': '10.4.0.5'}], the nexthop is not connected with router",
    );
    let r = put(
        &rpath,
        json!({"router": {"routes": [{"destination": "10.99.0.7/24", "nexthop": "10.4.0.5"}]}}),
    );
    answer(
        &r,
        400,
        "HTTPBadRequest",
        "Invalid input for routes. Reason: '10.99.0.7/24' isn't a recognized IP subnet cidr, '10.99.0.0/24' is recommended.",
    );
    let r = put(
        &rpath,
        json!({"router": {"routes": [{"destination": "10.99.0.0/24", "nexthop": "x"}]}}),
    );
    answer(
        &r,
        400,
        "HTTPBadRequest",
        "Invalid input for routes. Reason: 'x' is not a valid IP address.",
    );
    let r = put(&rpath, json!({"router": {"routes": "10.99.0.0/24"}}));
    assert_eq!(r.status, 400, "{}", r.text());

    // A port may take the gateway address, as in Neutron; the interface then cannot.
    let squatter = post(
        "/network/v2.0/ports",
        json!({"port": {"network_id": net_id,
            "fixed_ips": [{"subnet_id": sub_id, "ip_address": "10.4.0.1"}]}}),
    );
    assert_eq!(squatter.status, 201, "{}", squatter.text());
    let r = put(
        &format!("{rpath}/add_router_interface"),
        json!({"subnet_id": sub_id}),
    );
    answer(
        &r,
        409,
        "IpAddressAlreadyAllocated",
        &format!("IP address 10.4.0.1 already allocated in subnet {sub_id}"),
    );
    let r = cloud.req(
        "DELETE",
        &format!("/network/v2.0/ports/{}", id(&squatter.json()["port"])),
        t,
        &[],
        b"",
    );
    assert_eq!(r.status, 204, "{}", r.text());
    let r = put(
        &format!("{rpath}/add_router_interface"),
        json!({"subnet_id": sub_id}),
    );
    assert_eq!(r.status, 200, "{}", r.text());

    // Routes now: set, merged, removed; the interface they use is pinned.
    let r = put(&rpath, json!({"router": {"routes": [route]}}));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["router"]["routes"], json!([route]));
    let own = json!({"destination": "10.98.0.0/24", "nexthop": "10.4.0.1"});
    let r = put(
        &format!("{rpath}/add_extraroutes"),
        json!({"router": {"routes": [own]}}),
    );
    answer(
        &r,
        400,
        "InvalidRoutes",
        "Invalid format for routes: [{'destination': '10.99.0.0/24', 'nexthop': '10.4.0.5'}, {'destination': '10.98.0.0/24', 'nexthop': '10.4.0.1'}], the nexthop is used by router",
    );
    let second = json!({"destination": "10.0.0.0/8", "nexthop": "10.4.0.6"});
    let r = put(
        &format!("{rpath}/add_extraroutes"),
        json!({"router": {"routes": [second, route]}}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["router"]["routes"], json!([second, route]));
    let r = put(
        &format!("{rpath}/remove_extraroutes"),
        json!({"router": {"routes": [route, {"destination": "10.1.0.0/16", "nexthop": "10.4.0.9"}]}}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["router"]["routes"], json!([second]));
    let r = put(
        &format!("{rpath}/add_extraroutes"),
        json!({"router": {"routes": [route], "name": "x"}}),
    );
    assert_eq!(r.status, 400, "{}", r.text());
    let r = put(
        &format!("{rpath}/remove_router_interface"),
        json!({"subnet_id": sub_id}),
    );
    answer(
        &r,
        409,
        "RouterInterfaceInUseByRoute",
        &format!(
            "Router interface for subnet {sub_id} on router {rid} cannot be deleted, as it is required by one or more routes."
        ),
    );
    let too_many: Vec<Value> = (0..31)
        .map(|i| json!({"destination": format!("10.50.{i}.0/24"), "nexthop": "10.4.0.5"}))
        .collect();
    let r = put(&rpath, json!({"router": {"routes": too_many}}));
    answer(
        &r,
        400,
        "RoutesExhausted",
        &format!(
            "Unable to complete operation for {rid}. The number of routes exceeds the maximum 30."
        ),
    );
    let r = cloud.req("GET", &rpath, t, &[], b"");
    assert_eq!(
        r.json()["router"]["routes"],
        json!([second]),
        "refusals change nothing"
    );
    let r = put(&rpath, json!({"router": {"routes": null}}));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["router"]["routes"], json!([]));
    let r = put(
        &format!("{rpath}/remove_router_interface"),
        json!({"subnet_id": sub_id}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let r = cloud.req("GET", "/network/v2.0/extensions", t, &[], b"");
    let aliases = r.text();
    assert!(
        aliases.contains("\"extraroute\"") && aliases.contains("\"extraroute-atomic\""),
        "{aliases}"
    );
}

#[test]
fn a_node_gets_the_routes_of_its_routers_that_go_through_its_subnets() {
    let cloud = Cloud::start_with("[compute]\nnode-token = \"nt\"", "", "");
    let agent = FakeAgent::start();
    register_node(&cloud, &agent);
    let (token, _) = cloud.token("admin", ADMIN_PASSWORD, "admin");
    let t = Some(token.as_str());
    let post = |path: &str, body: Value| {
        let r = cloud.json("POST", path, t, &body);
        assert_eq!(r.status, 201, "{}", r.text());
        r.json()
    };
    let put = |path: &str, body: Value| {
        let r = cloud.json("PUT", path, t, &body);
        assert_eq!(r.status, 200, "{}", r.text());
        r.json()
    };
    let mut subs = vec![];
    for cidr in ["10.5.0.0/24", "10.6.0.0/24"] {
        let net = post("/network/v2.0/networks", json!({"network": {}}));
        let net_id = id(&net["network"]);
        let sub = post(
            "/network/v2.0/subnets",
            json!({"subnet": {"network_id": net_id, "ip_version": 4, "cidr": cidr}}),
        );
        subs.push((net_id, id(&sub["subnet"])));
    }
    // Only the first network has a port on the node.
    post(
        "/network/v2.0/ports",
        json!({"port": {"network_id": subs[0].0, "binding:host_id": "n1-host"}}),
    );
    let r = post("/network/v2.0/routers", json!({"router": {"name": "r"}}));
    let rpath = format!("/network/v2.0/routers/{}", id(&r["router"]));
    for (_, sub) in &subs {
        put(
            &format!("{rpath}/add_router_interface"),
            json!({ "subnet_id": sub }),
        );
    }
    let here = json!({"destination": "10.99.0.0/24", "nexthop": "10.5.0.5"});
    let there = json!({"destination": "10.98.0.0/24", "nexthop": "10.6.0.5"});
    let before = agent.count();
    put(
        &format!("{rpath}/add_extraroutes"),
        json!({"router": {"routes": [here, there]}}),
    );
    let pushed = agent.wait_push(before, |v| {
        v["routers"][0]["routes"]
            .as_array()
            .is_some_and(|a| !a.is_empty())
    });
    assert_eq!(
        pushed["routers"][0]["routes"],
        json!([here]),
        "only the route through a subnet the node has: {pushed}"
    );
    assert_eq!(
        pushed["routers"][0]["interfaces"],
        json!([subs[0].1]),
        "{pushed}"
    );
    let before = agent.count();
    put(
        &format!("{rpath}/remove_extraroutes"),
        json!({"router": {"routes": [here]}}),
    );
    let pushed = agent.wait_push(before, |v| v["routers"][0]["routes"] == json!([]));
    assert_eq!(pushed["routers"][0]["interfaces"], json!([subs[0].1]));
}
