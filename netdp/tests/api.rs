//! The API's semantics without a datapath: Neutron shapes, validation, defaults, and
//! persistence.

use netdp::api::{ApiError, Controller};
use serde_json::{Value, json};

fn call(c: &mut Controller, method: &str, path: &str, body: Value) -> (u16, Value) {
    let body = if body.is_null() {
        vec![]
    } else {
        body.to_string().into_bytes()
    };
    match c.handle(method, path, &body) {
        Ok(r) => r,
        Err(e) => (e.status_and_code().0, json!({"error": e.to_string()})),
    }
}

#[test]
fn networks_subnets_ports_and_groups_behave_like_neutron() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state.json");
    let mut c = Controller::open(Some(state.clone()), None).unwrap();

    let (s, net) = call(
        &mut c,
        "POST",
        "/v2.0/networks",
        json!({"network": {"name": "blue", "project_id": "p1"}}),
    );
    assert_eq!(s, 201);
    let net_id = net["network"]["id"].as_str().unwrap().to_string();
    assert_eq!(net["network"]["mtu"], 1500);
    assert_eq!(net["network"]["status"], "ACTIVE");

    let (s, sub) = call(
        &mut c,
        "POST",
        "/v2.0/subnets",
        json!({"subnet": {"network_id": net_id, "ip_version": 4, "cidr": "10.0.0.0/24"}}),
    );
    assert_eq!(s, 201);
    assert_eq!(sub["subnet"]["gateway_ip"], "10.0.0.1");
    let sub_id = sub["subnet"]["id"].as_str().unwrap().to_string();

    // A port without addresses or groups gets the next free IP and the default group.
    let (s, port) = call(
        &mut c,
        "POST",
        "/v2.0/ports",
        json!({"port": {"network_id": net_id}}),
    );
    assert_eq!(s, 201, "{port}");
    let p = &port["port"];
    assert_eq!(p["fixed_ips"][0]["ip_address"], "10.0.0.2");
    assert_eq!(p["fixed_ips"][0]["subnet_id"], sub_id.as_str());
    assert!(p["mac_address"].as_str().unwrap().starts_with("fa:16:3e:"));
    assert_eq!(p["port_security_enabled"], true);
    assert_eq!(p["status"], "DOWN");
    let default_sg = p["security_groups"][0].as_str().unwrap().to_string();
    let (_, sg) = call(
        &mut c,
        "GET",
        &format!("/v2.0/security-groups/{default_sg}"),
        Value::Null,
    );
    assert_eq!(sg["security_group"]["name"], "default");
    let rules = sg["security_group"]["security_group_rules"]
        .as_array()
        .unwrap();
    assert_eq!(rules.len(), 2, "egress to anywhere, ingress from the group");
    let (_, port2) = call(
        &mut c,
        "POST",
        "/v2.0/ports",
        json!({"port": {"network_id": net_id}}),
    );
    assert_eq!(port2["port"]["fixed_ips"][0]["ip_address"], "10.0.0.3");
    assert_eq!(port2["port"]["security_groups"][0], default_sg.as_str());

    // Groups and rules.
    let (s, web) = call(
        &mut c,
        "POST",
        "/v2.0/security-groups",
        json!({"security_group": {"name": "web"}}),
    );
    assert_eq!(s, 201);
    let web_id = web["security_group"]["id"].as_str().unwrap().to_string();
    let (s, _) = call(
        &mut c,
        "POST",
        "/v2.0/security-group-rules",
        json!({"security_group_rule": {"security_group_id": web_id, "direction": "ingress",
            "protocol": "tcp", "port_range_min": 80, "port_range_max": 80,
            "remote_ip_prefix": "0.0.0.0/0"}}),
    );
    assert_eq!(s, 201);
    let (s, _) = call(
        &mut c,
        "POST",
        "/v2.0/security-group-rules",
        json!({"security_group_rule": {"security_group_id": web_id, "direction": "sideways"}}),
    );
    assert_eq!(s, 400);
    let pid = port["port"]["id"].as_str().unwrap().to_string();
    let (s, upd) = call(
        &mut c,
        "PUT",
        &format!("/v2.0/ports/{pid}"),
        json!({"port": {"security_groups": [default_sg, web_id]}}),
    );
    assert_eq!(s, 200);
    assert_eq!(upd["port"]["security_groups"].as_array().unwrap().len(), 2);
    // Binding a port to a server (as Nova does when it plugs one).
    let (s, upd) = call(
        &mut c,
        "PUT",
        &format!("/v2.0/ports/{pid}"),
        json!({"port": {"device_owner": "compute:nova", "device_id": "vm-1"}}),
    );
    assert_eq!(s, 200);
    assert_eq!(upd["port"]["device_owner"], "compute:nova");
    assert_eq!(upd["port"]["device_id"], "vm-1");

    // Unknown fields, wrong envelopes and unknown ids are refused.
    let (s, _) = call(
        &mut c,
        "POST",
        "/v2.0/networks",
        json!({"network": {"name": "x", "colour": "red"}}),
    );
    assert_eq!(s, 400);
    let (s, _) = call(&mut c, "POST", "/v2.0/networks", json!({"name": "x"}));
    assert_eq!(s, 400);
    let (s, _) = call(&mut c, "GET", "/v2.0/ports/nope", Value::Null);
    assert_eq!(s, 404);
    let (s, _) = call(&mut c, "GET", "/v2.0/flavors", Value::Null);
    assert_eq!(s, 404);
    // A network with ports cannot go; a group in use cannot go.
    let (s, _) = call(
        &mut c,
        "DELETE",
        &format!("/v2.0/networks/{net_id}"),
        Value::Null,
    );
    assert_eq!(s, 409);
    let (s, _) = call(
        &mut c,
        "DELETE",
        &format!("/v2.0/security-groups/{web_id}"),
        Value::Null,
    );
    assert_eq!(s, 409);

    // Routers take the gateway address of the subnet on an interface port.
    let (_, r) = call(
        &mut c,
        "POST",
        "/v2.0/routers",
        json!({"router": {"name": "r1"}}),
    );
    let rid = r["router"]["id"].as_str().unwrap().to_string();
    let (s, ri) = call(
        &mut c,
        "PUT",
        &format!("/v2.0/routers/{rid}/add_router_interface"),
        json!({"subnet_id": sub_id}),
    );
    assert_eq!(s, 200, "{ri}");
    let rport = ri["port_id"].as_str().unwrap().to_string();
    let (_, rp) = call(&mut c, "GET", &format!("/v2.0/ports/{rport}"), Value::Null);
    assert_eq!(rp["port"]["fixed_ips"][0]["ip_address"], "10.0.0.1");
    assert_eq!(rp["port"]["device_owner"], "network:router_interface");
    let (s, _) = call(
        &mut c,
        "PUT",
        &format!("/v2.0/routers/{rid}/add_router_interface"),
        json!({"subnet_id": sub_id}),
    );
    assert_eq!(s, 409);

    // Everything survives a restart.
    drop(c);
    let mut c = Controller::open(Some(state), None).unwrap();
    let (_, ports) = call(&mut c, "GET", "/v2.0/ports", Value::Null);
    assert_eq!(ports["ports"].as_array().unwrap().len(), 3);
    let (_, nets) = call(&mut c, "GET", "/v2.0/networks", Value::Null);
    assert_eq!(nets["networks"][0]["subnets"][0], sub_id.as_str());
    let m = caps::prom::must_scrape("netdp", &c.metrics());
    assert_eq!(m.get("ferrostack_netdp_ports", &[]), 3.0);
    let (s, _) = call(&mut c, "DELETE", &format!("/v2.0/ports/{pid}"), Value::Null);
    assert_eq!(s, 204);
    let e = c
        .handle("DELETE", &format!("/v2.0/ports/{pid}"), b"")
        .unwrap_err();
    assert!(matches!(e, ApiError::NotFound(..)));
}

#[test]
fn router_interfaces_and_gateways_are_added_and_removed_like_neutron() {
    let mut c = Controller::open(None, None).unwrap();
    let id = |v: &Value, k: &str| v[k]["id"].as_str().unwrap().to_string();
    let (_, net) = call(&mut c, "POST", "/v2.0/networks", json!({"network": {}}));
    let (_, sub) = call(
        &mut c,
        "POST",
        "/v2.0/subnets",
        json!({"subnet": {"network_id": id(&net, "network"), "ip_version": 4,
            "cidr": "10.9.0.0/24", "dns_nameservers": ["10.9.0.53"]}}),
    );
    assert_eq!(sub["subnet"]["dns_nameservers"][0], "10.9.0.53");
    assert_eq!(sub["subnet"]["enable_dhcp"], true);
    let sub_id = id(&sub, "subnet");
    let (_, ext) = call(
        &mut c,
        "POST",
        "/v2.0/networks",
        json!({"network": {"router:external": true}}),
    );
    call(
        &mut c,
        "POST",
        "/v2.0/subnets",
        json!({"subnet": {"network_id": id(&ext, "network"), "ip_version": 4, "cidr": "172.24.9.0/24"}}),
    );
    let (_, r) = call(&mut c, "POST", "/v2.0/routers", json!({"router": {}}));
    let rp = format!("/v2.0/routers/{}", id(&r, "router"));
    assert!(r["router"]["external_gateway_info"].is_null());

    // Interfaces: by subnet or by port; removed by port or by subnet.
    let add = format!("{rp}/add_router_interface");
    let remove = format!("{rp}/remove_router_interface");
    let (s, _) = call(&mut c, "PUT", &add, json!({"port_id": "x"}));
    assert_eq!(s, 404, "no such port");
    let (s, _) = call(&mut c, "PUT", &add, json!({}));
    assert_eq!(s, 400, "a subnet or a port is required");
    let (s, iface) = call(&mut c, "PUT", &add, json!({"subnet_id": sub_id}));
    assert_eq!(s, 200, "{iface}");
    let port_id = iface["port_id"].as_str().unwrap().to_string();
    let (s, _) = call(&mut c, "PUT", &add, json!({"subnet_id": sub_id}));
    assert_eq!(s, 409, "one interface per subnet");
    let (s, body) = call(&mut c, "PUT", &remove, json!({"port_id": port_id}));
    assert_eq!(s, 200, "{body}");
    assert_eq!(body["subnet_id"], sub_id.as_str());
    assert!(!c.state().ports.contains_key(&port_id));
    let (s, _) = call(&mut c, "PUT", &remove, json!({"port_id": port_id}));
    assert_eq!(s, 404, "already gone");
    let (s, _) = call(
        &mut c,
        "PUT",
        &remove,
        json!({"subnet_id": sub_id, "bogus": 1}),
    );
    assert_eq!(s, 400, "unknown fields refused");

    // By port: the router takes the port's address and MAC, whatever the address.
    let net_id = id(&net, "network");
    let (s, port) = call(
        &mut c,
        "POST",
        "/v2.0/ports",
        json!({"port": {"network_id": net_id,
            "fixed_ips": [{"subnet_id": sub_id, "ip_address": "10.9.0.254"}]}}),
    );
    assert_eq!(s, 201, "{port}");
    let pid = id(&port, "port");
    let (s, _) = call(
        &mut c,
        "PUT",
        &add,
        json!({"port_id": pid, "subnet_id": sub_id}),
    );
    assert_eq!(s, 400, "not both");
    let (s, body) = call(&mut c, "PUT", &add, json!({"port_id": pid}));
    assert_eq!(s, 200, "{body}");
    assert_eq!(body["port_id"], pid.as_str());
    assert_eq!(body["subnet_id"], sub_id.as_str());
    assert_eq!(body["subnet_ids"][0], sub_id.as_str());
    assert_eq!(body["network_id"], net_id.as_str());
    let (_, shown) = call(&mut c, "GET", &format!("/v2.0/ports/{pid}"), Value::Null);
    let p = &shown["port"];
    assert_eq!(p["device_owner"], "network:router_interface");
    assert_eq!(p["device_id"], id(&r, "router").as_str());
    assert_eq!(p["fixed_ips"][0]["ip_address"], "10.9.0.254");
    assert_eq!(p["mac_address"], port["port"]["mac_address"]);
    assert_eq!(p["security_groups"], json!([]));
    let (s, _) = call(&mut c, "PUT", &add, json!({"port_id": pid}));
    assert_eq!(s, 409, "the port is taken");
    let (s, _) = call(&mut c, "PUT", &add, json!({"subnet_id": sub_id}));
    assert_eq!(s, 409, "one interface per subnet, whichever way it came");
    // A port some VM uses, or one without an address, cannot be a router's.
    let (_, vm_port) = call(
        &mut c,
        "POST",
        "/v2.0/ports",
        json!({"port": {"network_id": net_id, "device_owner": "compute:nova", "device_id": "vm1"}}),
    );
    let (s, body) = call(
        &mut c,
        "PUT",
        &add,
        json!({"port_id": id(&vm_port, "port")}),
    );
    assert_eq!(s, 409, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("compute:nova"),
        "{body}"
    );
    let (_, bare) = call(
        &mut c,
        "POST",
        "/v2.0/ports",
        json!({"port": {"network_id": net_id, "fixed_ips": []}}),
    );
    let (s, body) = call(&mut c, "PUT", &add, json!({"port_id": id(&bare, "port")}));
    assert_eq!(s, 400, "{body}");
    // Removed like any interface (the port goes with it, as in Neutron).
    let (s, body) = call(&mut c, "PUT", &remove, json!({"subnet_id": sub_id}));
    assert_eq!(s, 200, "{body}");
    assert_eq!(body["port_id"], pid.as_str());
    assert!(!c.state().ports.contains_key(&pid));

    // Gateways: SNAT on by default, switched off in place, cleared with {} or null.
    let gw = |c: &mut Controller, info: Value| {
        call(
            c,
            "PUT",
            &rp,
            json!({"router": {"external_gateway_info": info}}),
        )
    };
    let ext_id = id(&ext, "network");
    let (s, body) = gw(&mut c, json!({"network_id": ext_id}));
    assert_eq!(s, 200, "{body}");
    assert_eq!(body["router"]["external_gateway_info"]["enable_snat"], true);
    let ip = body["router"]["external_gateway_info"]["external_fixed_ips"][0]["ip_address"].clone();
    let (s, body) = gw(&mut c, json!({"network_id": ext_id, "enable_snat": false}));
    assert_eq!(s, 200);
    assert_eq!(
        body["router"]["external_gateway_info"]["enable_snat"],
        false
    );
    assert_eq!(
        body["router"]["external_gateway_info"]["external_fixed_ips"][0]["ip_address"], ip,
        "same gateway port"
    );
    let (s, _) = gw(&mut c, json!({"network_id": id(&net, "network")}));
    assert_eq!(s, 409, "another network while one is set");
    let (s, body) = gw(&mut c, json!({}));
    assert_eq!(s, 200);
    assert!(body["router"]["external_gateway_info"].is_null());
    assert!(
        !c.state()
            .ports
            .values()
            .any(|p| p.device_owner == "network:router_gateway")
    );
    let (s, _) = gw(&mut c, json!({"network_id": ext_id}));
    assert_eq!(s, 200);
    let (s, _) = gw(&mut c, Value::Null);
    assert_eq!(s, 200, "null clears too");
    let (s, _) = gw(&mut c, json!({"enable_snat": true}));
    assert_eq!(s, 400, "network_id is required");
}

#[test]
fn resources_take_the_ids_and_gateway_address_control_gives() {
    let mut c = Controller::open(None, None).unwrap();
    let (s, n) = call(
        &mut c,
        "POST",
        "/v2.0/networks",
        json!({"network": {"id": "net-1", "name": "ext", "router:external": true}}),
    );
    assert_eq!(
        (s, n["network"]["id"].as_str()),
        (201, Some("net-1")),
        "{n}"
    );
    // The same id again is a conflict; a malformed one is refused.
    let (s, _) = call(
        &mut c,
        "POST",
        "/v2.0/networks",
        json!({"network": {"id": "net-1"}}),
    );
    assert_eq!(s, 409);
    let (s, e) = call(
        &mut c,
        "POST",
        "/v2.0/networks",
        json!({"network": {"id": "../x"}}),
    );
    assert_eq!(s, 400, "{e}");
    let (s, sub) = call(
        &mut c,
        "POST",
        "/v2.0/subnets",
        json!({"subnet": {"id": "sub-1", "network_id": "net-1", "ip_version": 4,
                          "cidr": "172.24.4.0/24", "enable_dhcp": false}}),
    );
    assert_eq!((s, sub["subnet"]["id"].as_str()), (201, Some("sub-1")));
    let (s, g) = call(
        &mut c,
        "POST",
        "/v2.0/security-groups",
        json!({"security_group": {"id": "sg-1", "name": "web"}}),
    );
    assert_eq!((s, g["security_group"]["id"].as_str()), (201, Some("sg-1")));
    let (s, r) = call(
        &mut c,
        "POST",
        "/v2.0/security-group-rules",
        json!({"security_group_rule": {"id": "rule-1", "security_group_id": "sg-1",
               "direction": "ingress", "protocol": "icmp"}}),
    );
    assert_eq!(
        (s, r["security_group_rule"]["id"].as_str()),
        (201, Some("rule-1"))
    );
    let (s, p) = call(
        &mut c,
        "POST",
        "/v2.0/ports",
        json!({"port": {"id": "port-1", "network_id": "net-1"}}),
    );
    assert_eq!((s, p["port"]["id"].as_str()), (201, Some("port-1")));
    let (s, e) = call(
        &mut c,
        "PUT",
        "/v2.0/ports/port-1",
        json!({"port": {"id": "port-2"}}),
    );
    assert_eq!(s, 400, "{e}");
    // The router's gateway takes the address asked for, not the next free one.
    let (s, r) = call(
        &mut c,
        "POST",
        "/v2.0/routers",
        json!({"router": {"id": "r-1", "external_gateway_info": {"network_id": "net-1",
               "external_fixed_ips": [{"ip_address": "172.24.4.77"}]}}}),
    );
    assert_eq!(s, 201, "{r}");
    assert_eq!(r["router"]["id"], "r-1");
    let gw = &r["router"]["external_gateway_info"]["external_fixed_ips"][0];
    assert_eq!(gw["ip_address"], "172.24.4.77", "{r}");
    assert_eq!(gw["subnet_id"], "sub-1", "{r}");
    let (s, e) = call(
        &mut c,
        "POST",
        "/v2.0/routers",
        json!({"router": {"external_gateway_info": {"network_id": "net-1",
               "external_fixed_ips": [{"ip_address": "10.1.1.1"}]}}}),
    );
    assert_eq!(s, 400, "{e}");
    let (s, f) = call(
        &mut c,
        "POST",
        "/v2.0/floatingips",
        json!({"floatingip": {"id": "fip-1", "floating_network_id": "net-1",
               "floating_ip_address": "172.24.4.10"}}),
    );
    assert_eq!(
        (s, f["floatingip"]["id"].as_str()),
        (201, Some("fip-1")),
        "{f}"
    );
}

#[test]
fn fixed_ips_follow_neutron_per_subnet_even_when_tenants_overlap() {
    let mut c = Controller::open(None, None).unwrap();
    let mut subnets = vec![];
    for tenant in ["t1", "t2"] {
        let (s, net) = call(
            &mut c,
            "POST",
            "/v2.0/networks",
            json!({"network": {"name": "n", "project_id": tenant}}),
        );
        assert_eq!(s, 201);
        let net_id = net["network"]["id"].as_str().unwrap().to_string();
        let (s, sub) = call(
            &mut c,
            "POST",
            "/v2.0/subnets",
            json!({"subnet": {"network_id": net_id, "ip_version": 4, "cidr": "10.7.0.0/24"}}),
        );
        assert_eq!(s, 201);
        subnets.push((net_id, sub["subnet"]["id"].as_str().unwrap().to_string()));
    }
    let port = |c: &mut Controller, net: &str, fixed: Value| {
        call(
            c,
            "POST",
            "/v2.0/ports",
            json!({"port": {"network_id": net, "fixed_ips": fixed}}),
        )
    };
    // An address alone: the subnet is the network's that holds it.
    let (s, p) = port(&mut c, &subnets[0].0, json!([{"ip_address": "10.7.0.20"}]));
    assert_eq!(s, 201, "{p}");
    assert_eq!(
        p["port"]["fixed_ips"][0]["subnet_id"],
        subnets[0].1.as_str()
    );
    // The same address again on that subnet: 409; outside it, or on no subnet: 400.
    let (s, e) = port(&mut c, &subnets[0].0, json!([{"ip_address": "10.7.0.20"}]));
    assert_eq!(s, 409, "{e}");
    assert!(e.to_string().contains("already allocated"), "{e}");
    let (s, e) = port(
        &mut c,
        &subnets[0].0,
        json!([{"subnet_id": subnets[0].1, "ip_address": "10.8.0.5"}]),
    );
    assert_eq!(s, 400, "{e}");
    let (s, e) = port(&mut c, &subnets[0].0, json!([{"ip_address": "10.9.0.5"}]));
    assert_eq!(s, 400, "{e}");
    let (s, e) = port(&mut c, &subnets[0].0, json!([{}]));
    assert_eq!(s, 400, "{e}");
    // The other tenant's overlapping subnet is its own: the same address is free there,
    // and allocation starts at its own first address.
    let (s, p) = port(&mut c, &subnets[1].0, json!([{"ip_address": "10.7.0.20"}]));
    assert_eq!(s, 201, "{p}");
    assert_eq!(
        p["port"]["fixed_ips"][0]["subnet_id"],
        subnets[1].1.as_str()
    );
    for (net, _) in &subnets {
        let (s, p) = call(
            &mut c,
            "POST",
            "/v2.0/ports",
            json!({"port": {"network_id": net}}),
        );
        assert_eq!(s, 201, "{p}");
        assert_eq!(p["port"]["fixed_ips"][0]["ip_address"], "10.7.0.2");
    }
}

#[test]
fn extra_routes_are_checked_merged_and_pin_their_interface_like_neutron() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state.json");
    let mut c = Controller::open(Some(state.clone()), None).unwrap();
    let id = |v: &Value, k: &str| v[k]["id"].as_str().unwrap().to_string();
    let (_, net) = call(&mut c, "POST", "/v2.0/networks", json!({"network": {}}));
    let (_, sub) = call(
        &mut c,
        "POST",
        "/v2.0/subnets",
        json!({"subnet": {"network_id": id(&net, "network"), "ip_version": 4, "cidr": "10.7.0.0/24"}}),
    );
    let sub_id = id(&sub, "subnet");
    let (s, r) = call(&mut c, "POST", "/v2.0/routers", json!({"router": {}}));
    assert_eq!(s, 201);
    assert_eq!(r["router"]["routes"], json!([]), "{r}");
    let rp = format!("/v2.0/routers/{}", id(&r, "router"));
    let route = json!({"destination": "10.99.0.0/24", "nexthop": "10.7.0.5"});

    // Without an interface on 10.7.0.0/24 the next hop is not connected.
    let (s, body) = call(&mut c, "PUT", &rp, json!({"router": {"routes": [route]}}));
    assert_eq!(s, 400);
    assert_eq!(
        body["error"],
        "Invalid format for routes: [{'destination': '10.99.0.0/24', 'nexthop': '10.7.0.5'}], the nexthop is not connected with router"
    );
    let (s, _) = call(
        &mut c,
        "PUT",
        &format!("{rp}/add_router_interface"),
        json!({"subnet_id": sub_id}),
    );
    assert_eq!(s, 200);
    let (s, body) = call(&mut c, "PUT", &rp, json!({"router": {"routes": [route]}}));
    assert_eq!(s, 200, "{body}");
    assert_eq!(body["router"]["routes"], json!([route]));

    // The router's own address is no next hop; a destination must be a network's CIDR;
    // a next hop an address; at most 30 routes. Each refusal: 400 and its message.
    let refused = |c: &mut Controller, routes: Value| -> String {
        let (s, body) = call(c, "PUT", &rp, json!({"router": {"routes": routes}}));
        assert_eq!(s, 400, "{body}");
        body["error"].as_str().unwrap().to_string()
    };
    let own = json!({"destination": "10.98.0.0/24", "nexthop": "10.7.0.1"});
    let e = refused(&mut c, json!([own]));
    assert!(e.ends_with("the nexthop is used by router"), "{e}");
    let e = refused(
        &mut c,
        json!([{"destination": "10.98.0.1/24", "nexthop": "10.7.0.6"}]),
    );
    assert_eq!(
        e,
        "Invalid input for routes. Reason: '10.98.0.1/24' isn't a recognized IP subnet cidr, '10.98.0.0/24' is recommended."
    );
    let e = refused(
        &mut c,
        json!([{"destination": "10.98.0.0/24", "nexthop": "x"}]),
    );
    assert!(e.contains("invalid"), "a next hop must be an address: {e}");
    let too_many: Vec<Value> = (0..31)
        .map(|i| json!({"destination": format!("10.50.{i}.0/24"), "nexthop": "10.7.0.5"}))
        .collect();
    let e = refused(&mut c, json!(too_many));
    assert!(
        e.ends_with("The number of routes exceeds the maximum 30."),
        "{e}"
    );
    assert_eq!(
        c.state().routers[&id(&r, "router")].routes.len(),
        1,
        "refused updates change nothing"
    );

    // extraroute-atomic: duplicates merge, absent routes are ignored on removal.
    let second = json!({"destination": "10.0.0.0/8", "nexthop": "10.7.0.6"});
    let (s, body) = call(
        &mut c,
        "PUT",
        &format!("{rp}/add_extraroutes"),
        json!({"router": {"routes": [route, second]}}),
    );
    assert_eq!(s, 200, "{body}");
    assert_eq!(body["router"]["routes"], json!([second, route]));
    let (s, _) = call(
        &mut c,
        "PUT",
        &format!("{rp}/add_extraroutes"),
        json!({"router": {"routes": [own]}}),
    );
    assert_eq!(s, 400, "an added route is checked with the rest");

    // An interface a route goes through cannot be removed.
    let (s, body) = call(
        &mut c,
        "PUT",
        &format!("{rp}/remove_router_interface"),
        json!({"subnet_id": sub_id}),
    );
    assert_eq!(s, 409);
    assert_eq!(
        body["error"],
        format!(
            "Router interface for subnet {sub_id} on router {} cannot be deleted, as it is required by one or more routes.",
            id(&r, "router")
        )
    );

    // Routes persist.
    drop(c);
    let mut c = Controller::open(Some(state), None).unwrap();
    let (_, shown) = call(&mut c, "GET", &rp, Value::Null);
    assert_eq!(shown["router"]["routes"], json!([second, route]));
    let (s, body) = call(
        &mut c,
        "PUT",
        &format!("{rp}/remove_extraroutes"),
        json!({"router": {"routes": [route, {"destination": "10.1.0.0/16", "nexthop": "10.7.0.9"}]}}),
    );
    assert_eq!(s, 200, "{body}");
    assert_eq!(body["router"]["routes"], json!([second]));
    let (s, body) = call(&mut c, "PUT", &rp, json!({"router": {"routes": null}}));
    assert_eq!(s, 200, "{body}");
    assert_eq!(body["router"]["routes"], json!([]));
    let (s, body) = call(
        &mut c,
        "PUT",
        &format!("{rp}/remove_router_interface"),
        json!({"subnet_id": sub_id}),
    );
    assert_eq!(s, 200, "without routes the interface goes: {body}");
}
