//! The network state control pushes (`PUT /v1/network`), applied by the agent to a real
//! netdp API (in process, without a datapath, so no privileges): resources appear with
//! control's ids, netdp's own egress rule of a new group is replaced by control's rules,
//! a second push of the same state changes nothing, what control stops wanting is
//! removed in an order netdp accepts, and what pushes did not create is left alone.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use ferrostack_agent::agent::{Agent, AgentConfig};
use ferrostack_agent::netsync::Desired;
use netdp::api::Controller;
use serde_json::{Value, json};

fn desired(v: Value) -> Desired {
    serde_json::from_value(v).unwrap()
}

fn full_state(generation: u64) -> Value {
    json!({
        "generation": generation,
        "networks": [
            {"id": "net-ext", "name": "public", "project_id": "p", "admin_state_up": true,
             "mtu": 1500, "router:external": true},
            {"id": "net-blue", "name": "blue", "project_id": "p", "admin_state_up": true,
             "mtu": 1450, "router:external": false},
        ],
        "subnets": [
            {"id": "sub-ext", "name": "", "network_id": "net-ext", "project_id": "p",
             "ip_version": 4, "cidr": "172.24.4.0/24", "gateway_ip": "172.24.4.1",
             "enable_dhcp": false},
            {"id": "sub-blue", "name": "", "network_id": "net-blue", "project_id": "p",
             "ip_version": 4, "cidr": "10.9.0.0/24", "gateway_ip": "10.9.0.1",
             "enable_dhcp": true},
        ],
        "security_groups": [
            {"id": "sg-web", "name": "web", "description": "", "project_id": "p"},
        ],
        "security_group_rules": [
            {"id": "rule-icmp", "security_group_id": "sg-web", "direction": "ingress",
             "ethertype": "IPv4", "protocol": "icmp", "port_range_min": null,
             "port_range_max": null, "remote_ip_prefix": null, "remote_group_id": null,
             "project_id": "p"},
        ],
        "ports": [
            {"id": "port-vm", "name": "", "network_id": "net-blue", "project_id": "p",
             "mac_address": "fa:16:3e:00:00:0a",
             "fixed_ips": [{"subnet_id": "sub-blue", "ip_address": "10.9.0.10"}],
             "security_groups": ["sg-web"], "port_security_enabled": true,
             "device_owner": "compute:nova", "device_id": "vm1"},
            {"id": "port-uplink", "name": "uplink", "network_id": "net-ext", "project_id": "p",
             "mac_address": "fa:16:3e:00:00:0b",
             "fixed_ips": [{"subnet_id": "sub-ext", "ip_address": "172.24.4.100"}],
             "security_groups": [], "port_security_enabled": false,
             "device_owner": "", "device_id": ""},
        ],
        "routers": [
            {"id": "router-1", "name": "r1", "project_id": "p", "admin_state_up": true,
             "external_gateway_info": {"network_id": "net-ext", "enable_snat": true,
                "external_fixed_ips": [{"subnet_id": "sub-ext", "ip_address": "172.24.4.2"}]},
             "interfaces": ["sub-blue"]},
        ],
        "floatingips": [
            {"id": "fip-1", "floating_network_id": "net-ext",
             "floating_ip_address": "172.24.4.3", "port_id": "port-vm",
             "fixed_ip_address": "10.9.0.10", "project_id": "p"},
        ],
    })
}

type Server = tokio::task::JoinHandle<std::io::Result<()>>;

/// netdp's API (in process, no datapath) on `dir/netdp.sock`; stopped by the sender.
async fn netdp_api(
    dir: &std::path::Path,
) -> (
    Arc<Mutex<Controller>>,
    tokio::sync::oneshot::Sender<()>,
    Server,
) {
    let sock = dir.join("netdp.sock");
    let ctl = Arc::new(Mutex::new(Controller::open(None, None).unwrap()));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let (ctl2, sock2) = (ctl.clone(), sock.clone());
    let server = tokio::spawn(async move {
        netdp::api::http::serve(ctl2, &sock2, async {
            let _ = stopped.await;
        })
        .await
    });
    while !sock.exists() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    (ctl, stop, server)
}

/// An agent whose netdp is the one [`netdp_api`] serves in `dir`.
fn agent_for(dir: &std::path::Path) -> Arc<Agent> {
    Agent::open(AgentConfig {
        state_dir: dir.join("agent"),
        blockdp_socket: dir.join("no-blockdp.sock"),
        netdp_socket: dir.join("netdp.sock"),
        vmm_binary: "/bin/false".into(),
        agent_exe: "/bin/false".into(),
        shutdown_timeout: Duration::from_secs(1),
        port_timeout: Duration::from_secs(1),
        image_timeout: Duration::from_secs(1),
        disk_path: dir.to_path_buf(),
        record_events: false,
    })
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushed_network_state_is_applied_updated_and_withdrawn() {
    let dir = tempfile::tempdir().unwrap();
    let (ctl, stop, server) = netdp_api(dir.path()).await;
    // A network that no push made (a placement's own): pushes leave it alone.
    let (s, _) = ctl
        .lock()
        .unwrap()
        .handle(
            "POST",
            "/v2.0/networks",
            br#"{"network": {"name": "placement-made"}}"#,
        )
        .unwrap();
    assert_eq!(s, 201);
    let agent = agent_for(dir.path());

    let report = agent.apply_network(desired(full_state(1))).await.unwrap();
    assert_eq!(report["errors"], json!([]), "{report}");
    assert_eq!(report["generation"], 1);
    assert_eq!(agent.network_generation(), 1);
    let check_full = |label: &str| {
        let c = ctl.lock().unwrap();
        let st = c.state();
        assert!(st.networks.contains_key("net-ext") && st.networks.contains_key("net-blue"));
        assert!(st.networks["net-ext"].router_external, "{label}");
        assert_eq!(st.networks["net-blue"].mtu, 1450);
        assert_eq!(st.networks.len(), 3, "{label}: {:?}", st.networks.keys());
        // Exactly control's rules on the group (netdp's own egress rule is gone).
        let rules: Vec<&str> = st
            .security_group_rules
            .values()
            .filter(|r| r.security_group_id == "sg-web")
            .map(|r| r.id.as_str())
            .collect();
        assert_eq!(rules, ["rule-icmp"], "{label}");
        let vm = &st.ports["port-vm"];
        assert_eq!(vm.security_groups, ["sg-web"]);
        assert_eq!(
            vm.fixed_ips[0].ip_address,
            Some("10.9.0.10".parse().unwrap())
        );
        let gw = st
            .ports
            .values()
            .find(|p| p.device_owner == "network:router_gateway" && p.device_id == "router-1")
            .unwrap_or_else(|| panic!("{label}: no gateway port"));
        assert_eq!(
            gw.fixed_ips[0].ip_address,
            Some("172.24.4.2".parse().unwrap())
        );
        let ifaces = st
            .ports
            .values()
            .filter(|p| p.device_owner == "network:router_interface")
            .count();
        assert_eq!(ifaces, 1, "{label}");
        let f = &st.floatingips["fip-1"];
        assert_eq!(f.router_id.as_deref(), Some("router-1"), "{label}");
        assert_eq!(f.status, "ACTIVE");
        assert_eq!(st.ports.len(), 4, "{label}: vm, uplink, gateway, interface");
    };
    check_full("first push");
    // The same state again changes nothing.
    let report = agent.apply_network(desired(full_state(2))).await.unwrap();
    assert_eq!(report["errors"], json!([]), "{report}");
    check_full("second push");

    // The port's groups change and the floating IP moves to the uplink's network peer...
    // here: the group loses its rule for one allowing TCP 22, the port keeps the group.
    let mut v = full_state(3);
    v["security_group_rules"][0]["id"] = json!("rule-ssh");
    v["security_group_rules"][0]["protocol"] = json!("tcp");
    v["security_group_rules"][0]["port_range_min"] = json!(22);
    v["security_group_rules"][0]["port_range_max"] = json!(22);
    let report = agent.apply_network(desired(v)).await.unwrap();
    assert_eq!(report["errors"], json!([]), "{report}");
    {
        let c = ctl.lock().unwrap();
        let rules: Vec<&str> = c
            .state()
            .security_group_rules
            .values()
            .filter(|r| r.security_group_id == "sg-web")
            .map(|r| r.id.as_str())
            .collect();
        assert_eq!(rules, ["rule-ssh"]);
    }

    // The server is gone: its port, floating IP, the router (no port of this node on its
    // subnets), the group and the tenant network leave; the uplink and its network stay.
    let mut v = full_state(4);
    for k in [
        "security_groups",
        "security_group_rules",
        "routers",
        "floatingips",
    ] {
        v[k] = json!([]);
    }
    v["ports"] = json!([v["ports"][1].clone()]);
    v["networks"] = json!([v["networks"][0].clone()]);
    v["subnets"] = json!([v["subnets"][0].clone()]);
    let report = agent.apply_network(desired(v)).await.unwrap();
    assert_eq!(report["errors"], json!([]), "{report}");
    {
        let c = ctl.lock().unwrap();
        let st = c.state();
        assert!(st.floatingips.is_empty());
        assert!(st.routers.is_empty());
        assert_eq!(st.ports.keys().collect::<Vec<_>>(), ["port-uplink"]);
        assert!(!st.security_groups.contains_key("sg-web"));
        assert!(!st.networks.contains_key("net-blue") && !st.subnets.contains_key("sub-blue"));
        assert!(st.networks.contains_key("net-ext"));
        assert_eq!(st.networks.len(), 2, "the placement's network stays");
    }

    // A state netdp refuses (a port on a network that is not there) is reported, and the
    // generation applied stays the last good one, so control pushes again.
    let bad = json!({"generation": 5, "ports": [{"id": "p-bad", "network_id": "nope"}]});
    let report = agent.apply_network(desired(bad)).await.unwrap();
    let errors = report["errors"].as_array().unwrap();
    assert_eq!(errors.len(), 1, "{report}");
    assert!(errors[0].as_str().unwrap().contains("nope"), "{report}");
    assert_eq!(report["generation"], 4);
    assert_eq!(agent.network_generation(), 4);

    // Nothing wanted: everything pushes made is gone; the state survives a reopen.
    let report = agent
        .apply_network(desired(json!({"generation": 6})))
        .await
        .unwrap();
    assert_eq!(report["errors"], json!([]), "{report}");
    {
        let c = ctl.lock().unwrap();
        let st = c.state();
        assert!(st.ports.is_empty());
        let names: Vec<&str> = st.networks.values().map(|n| n.name.as_str()).collect();
        assert_eq!(names, ["placement-made"]);
    }
    let saved: Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("agent/state.json")).unwrap())
            .unwrap();
    assert_eq!(saved["network"]["generation"], 6, "{saved}");
    let _ = stop.send(());
    server.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushed_extra_routes_follow_their_interfaces_in() {
    let dir = tempfile::tempdir().unwrap();
    let (ctl, stop, server) = netdp_api(dir.path()).await;
    let agent = agent_for(dir.path());
    let routes_in_netdp = || {
        ctl.lock().unwrap().state().routers["router-1"]
            .routes
            .clone()
    };
    let via_blue = json!({"destination": "10.99.0.0/24", "nexthop": "10.9.0.5"});
    let via_gw = json!({"destination": "192.0.2.0/24", "nexthop": "172.24.4.254"});

    // A new router with routes through its interface and through its gateway's subnet:
    // netdp only takes them once the interface exists.
    let mut v = full_state(1);
    v["routers"][0]["routes"] = json!([via_blue, via_gw]);
    let report = agent.apply_network(desired(v)).await.unwrap();
    assert_eq!(report["errors"], json!([]), "{report}");
    let got = routes_in_netdp();
    assert_eq!(got.len(), 2, "{got:?}");
    assert_eq!(
        serde_json::to_value(&got).unwrap(),
        json!([via_blue, via_gw])
    );

    // One route dropped, the other kept: the same router, one route.
    let mut v = full_state(2);
    v["routers"][0]["routes"] = json!([via_gw]);
    let report = agent.apply_network(desired(v)).await.unwrap();
    assert_eq!(report["errors"], json!([]), "{report}");
    assert_eq!(
        serde_json::to_value(routes_in_netdp()).unwrap(),
        json!([via_gw])
    );

    // The interface goes while a route through it is wanted no more: the route goes first,
    // so netdp does not refuse the interface's removal.
    let mut v = full_state(3);
    v["routers"][0]["routes"] = json!([via_blue]);
    let report = agent.apply_network(desired(v)).await.unwrap();
    assert_eq!(report["errors"], json!([]), "{report}");
    let mut v = full_state(4);
    v["routers"][0]["interfaces"] = json!([]);
    v["routers"][0]["routes"] = json!([]);
    v["floatingips"] = json!([]);
    let report = agent.apply_network(desired(v)).await.unwrap();
    assert_eq!(report["errors"], json!([]), "{report}");
    {
        let c = ctl.lock().unwrap();
        let st = c.state();
        assert!(st.routers["router-1"].routes.is_empty());
        assert!(
            !st.ports
                .values()
                .any(|p| p.device_owner == "network:router_interface"),
            "the interface is gone"
        );
    }
    let _ = stop.send(());
    server.await.unwrap().unwrap();
}
