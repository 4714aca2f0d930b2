//! Neutron's network IP availability through control (`openstack ip availability
//! list/show` and `/v2.0/network-ip-availabilities`): the counts follow control's IPAM
//! (allocation pools for the totals; ports, router interfaces and gateways, floating IPs
//! for the used addresses), the list filters, admins only; and subnets' allocation pools,
//! which ports get their addresses from, checked as Neutron checks them.

mod common;

use common::*;
use serde_json::{Value, json};

const BASE: &str = "/network/v2.0/network-ip-availabilities";

fn id(v: &Value) -> String {
    v["id"].as_str().unwrap().to_string()
}

/// The availability of network `net` in a list body.
fn entry<'a>(list: &'a Value, net: &str) -> &'a Value {
    list["network_ip_availabilities"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["network_id"] == net)
        .unwrap_or_else(|| panic!("{net} missing from {list}"))
}

/// The network ids of a list body, sorted.
fn ids(list: &Value) -> Vec<String> {
    let mut v: Vec<String> = list["network_ip_availabilities"]
        .as_array()
        .unwrap_or_else(|| panic!("not a list: {list}"))
        .iter()
        .map(|n| n["network_id"].as_str().unwrap().to_string())
        .collect();
    v.sort();
    v
}

fn get(cloud: &Cloud, path: &str, token: &str) -> Answer {
    cloud.req("GET", path, Some(token), &[], b"")
}

fn get_ok(cloud: &Cloud, path: &str, token: &str) -> Value {
    let r = get(cloud, path, token);
    assert_eq!(r.status, 200, "{path}: {}", r.text());
    r.json()
}

/// Makes a port on `net` over HTTP; its address, or the error's status and body.
fn port(cloud: &Cloud, token: &str, net: &str) -> Result<String, (u16, String)> {
    let r = cloud.json(
        "POST",
        "/network/v2.0/ports",
        Some(token),
        &json!({"port": {"network_id": net}}),
    );
    if r.status != 201 {
        return Err((r.status, r.text()));
    }
    Ok(r.json()["port"]["fixed_ips"][0]["ip_address"]
        .as_str()
        .unwrap()
        .to_string())
}

#[test]
fn ip_availability_counts_what_control_allocated() {
    if !have_cli() {
        return;
    }
    let cloud = Cloud::start();
    let admin = cloud.admin();
    let (admin_token, _) = cloud.token("admin", ADMIN_PASSWORD, "admin");

    // A network whose subnet has two allocation pools: 10 + 5 addresses.
    let net = id(&ok_json(&admin, &["network", "create", "ipnet"]));
    let sub = subnet(
        &admin,
        "ipnet",
        "10.20.0.0/24",
        "ipsub",
        &[
            "--allocation-pool",
            "start=10.20.0.10,end=10.20.0.19",
            "--allocation-pool",
            "start=10.20.0.100,end=10.20.0.104",
        ],
    );
    let sub_id = id(&sub);
    assert_eq!(
        sub["allocation_pools"],
        json!([{"start": "10.20.0.10", "end": "10.20.0.19"},
               {"start": "10.20.0.100", "end": "10.20.0.104"}]),
        "{sub}"
    );
    // Ports take the pools' addresses; one asked for outside the pools is allowed.
    let p1 = ok_json(&admin, &["port", "create", "--network", "ipnet", "p1"]);
    assert_eq!(p1["fixed_ips"][0]["ip_address"], "10.20.0.10", "{p1}");
    ok(&admin, &["port", "create", "--network", "ipnet", "p2"]);
    let fixed = format!("subnet={sub_id},ip-address=10.20.0.200");
    ok(
        &admin,
        &[
            "port",
            "create",
            "--network",
            "ipnet",
            "--fixed-ip",
            &fixed,
            "p3",
        ],
    );
    // A router: an interface on the subnet (the gateway address) and a gateway on an
    // external network whose subnet has Neutron's default pool (.2-.14 of a /28).
    let ext = id(&ok_json(
        &admin,
        &["network", "create", "--external", "ext"],
    ));
    subnet(&admin, "ext", "172.24.0.0/28", "extsub", &["--no-dhcp"]);
    ok(&admin, &["router", "create", "r1"]);
    ok(&admin, &["router", "add", "subnet", "r1", "ipsub"]);
    ok(
        &admin,
        &["router", "set", "--external-gateway", "ext", "r1"],
    );
    let fip = ok_json(&admin, &["floating", "ip", "create", "ext"]);
    assert_eq!(fip["floating_ip_address"], "172.24.0.3", "{fip}");
    // A network without a subnet, and a member's network.
    let bare = id(&ok_json(&admin, &["network", "create", "bare"]));
    let member = cloud.member("mproj", "muser", "mpass-1234");
    let (member_token, body) = cloud.token("muser", "mpass-1234", "mproj");
    let mproj = body["token"]["project"]["id"].as_str().unwrap().to_string();
    let mnet = id(&ok_json(&member, &["network", "create", "mnet"]));
    subnet(&member, "mnet", "10.30.0.0/29", "msub", &[]);
    ok(&member, &["port", "create", "--network", "mnet", "mp1"]);

    // Over HTTP: totals from the pools, used from every allocation on the subnet
    // (2 pool ports, the one outside the pools, the router's interface).
    let all = get_ok(&cloud, BASE, &admin_token);
    assert_eq!(ids(&all).len(), 4, "{all}");
    let n = entry(&all, &net);
    assert_eq!(
        (&n["network_name"], &n["total_ips"], &n["used_ips"]),
        (&json!("ipnet"), &json!(15), &json!(4)),
        "{n}"
    );
    let admin_project = n["project_id"].as_str().unwrap().to_string();
    assert_eq!(n["tenant_id"], admin_project.as_str(), "{n}");
    assert_eq!(
        n["subnet_ip_availability"],
        json!([{"subnet_id": sub_id, "subnet_name": "ipsub", "cidr": "10.20.0.0/24",
                "ip_version": 4, "total_ips": 15, "used_ips": 4}]),
        "{n}"
    );
    let e = entry(&all, &ext);
    assert_eq!(
        (&e["total_ips"], &e["used_ips"]),
        (&json!(13), &json!(2)),
        "{e}"
    );
    let m = entry(&all, &mnet);
    assert_eq!(
        (&m["total_ips"], &m["used_ips"]),
        (&json!(5), &json!(1)),
        "{m}"
    );
    assert_eq!(m["project_id"], mproj.as_str(), "{m}");
    let b = entry(&all, &bare);
    assert_eq!(
        (
            &b["total_ips"],
            &b["used_ips"],
            &b["subnet_ip_availability"]
        ),
        (&json!(0), &json!(0), &json!([])),
        "{b}"
    );

    // Filters: ip_version keeps networks with a subnet of that version; by name, project,
    // and several ids.
    let v4 = get_ok(&cloud, &format!("{BASE}?ip_version=4"), &admin_token);
    let mut want = vec![net.clone(), ext.clone(), mnet.clone()];
    want.sort();
    assert_eq!(ids(&v4), want);
    let v6 = get_ok(&cloud, &format!("{BASE}?ip_version=6"), &admin_token);
    assert_eq!(ids(&v6), Vec::<String>::new());
    let by_name = get_ok(&cloud, &format!("{BASE}?network_name=ipnet"), &admin_token);
    assert_eq!(ids(&by_name), vec![net.clone()]);
    let by_project = get_ok(&cloud, &format!("{BASE}?project_id={mproj}"), &admin_token);
    assert_eq!(ids(&by_project), vec![mnet.clone()]);
    let by_tenant = get_ok(&cloud, &format!("{BASE}?tenant_id={mproj}"), &admin_token);
    assert_eq!(ids(&by_tenant), vec![mnet.clone()]);
    let two = get_ok(
        &cloud,
        &format!("{BASE}?network_id={net}&network_id={bare}"),
        &admin_token,
    );
    let mut want = vec![net.clone(), bare.clone()];
    want.sort();
    assert_eq!(ids(&two), want);

    // One network; an unknown one is Neutron's NetworkNotFound.
    let one = get_ok(&cloud, &format!("{BASE}/{net}"), &admin_token);
    assert_eq!(one["network_ip_availability"], *n, "{one}");
    let r = get(&cloud, &format!("{BASE}/no-such-net"), &admin_token);
    assert_eq!(r.status, 404, "{}", r.text());
    assert_eq!(
        r.json()["NeutronError"],
        json!({"type": "NetworkNotFound", "message": "Network no-such-net could not be found.",
               "detail": ""})
    );

    // Members: a list hides what the policy forbids (Neutron filters lists), one network
    // is a 403 (unknown ones stay 404).
    let ml = get_ok(&cloud, BASE, &member_token);
    assert_eq!(ml, json!({"network_ip_availabilities": []}));
    let r = get(&cloud, &format!("{BASE}/{mnet}"), &member_token);
    assert_eq!(r.status, 403, "{}", r.text());
    assert_eq!(
        r.json()["NeutronError"]["type"],
        "PolicyNotAuthorized",
        "{}",
        r.text()
    );
    assert_eq!(
        r.json()["NeutronError"]["message"],
        "rule:get_network_ip_availability is disallowed by policy"
    );
    let r = get(&cloud, &format!("{BASE}/no-such-net"), &member_token);
    assert_eq!(r.status, 404, "{}", r.text());

    // The stock CLI: list (IPv4 by default, so not the bare network), by project, show.
    let list = ok_json(&admin, &["ip", "availability", "list"]);
    let mut rows: Vec<(String, String, u64, u64)> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["Network ID"].as_str().unwrap().to_string(),
                r["Network Name"].as_str().unwrap().to_string(),
                r["Total IPs"].as_u64().unwrap(),
                r["Used IPs"].as_u64().unwrap(),
            )
        })
        .collect();
    rows.sort_by(|a, b| a.1.cmp(&b.1));
    assert_eq!(
        rows,
        vec![
            (ext.clone(), "ext".into(), 13, 2),
            (net.clone(), "ipnet".into(), 15, 4),
            (mnet.clone(), "mnet".into(), 5, 1),
        ]
    );
    let mine = ok_json(
        &admin,
        &["ip", "availability", "list", "--project", "mproj"],
    );
    assert_eq!(mine.as_array().unwrap().len(), 1, "{mine}");
    assert_eq!(mine[0]["Network Name"], "mnet", "{mine}");
    let show = ok_json(&admin, &["ip", "availability", "show", "ipnet"]);
    assert_eq!(
        (&show["network_id"], &show["total_ips"], &show["used_ips"]),
        (&json!(net), &json!(15), &json!(4)),
        "{show}"
    );
    assert_eq!(show["project_id"], admin_project.as_str(), "{show}");
    let subs = show["subnet_ip_availability"].to_string();
    assert!(
        subs.contains(&sub_id) && subs.contains("10.20.0.0/24"),
        "{show}"
    );
    // Debian's client shows Neutron's 403; newer ones turn it into "not found" (their
    // lookup falls back to a list, which is empty for a member).
    let err = fails(&member, &["ip", "availability", "show", "mnet"]);
    assert!(
        err.contains("disallowed by policy") || err.contains("No NetworkIPAvailability found"),
        "{err}"
    );
    let ml = ok_json(&member, &["ip", "availability", "list"]);
    assert_eq!(ml, json!([]));

    // Filling the pools: the first pool, then the second, then none is left (409);
    // the counts follow, and a deleted port gives its address back.
    let mut got = vec![];
    loop {
        match port(&cloud, &admin_token, &net) {
            Ok(ip) => got.push(ip),
            Err((status, text)) => {
                assert_eq!(status, 409, "{text}");
                assert!(text.contains("No more IP addresses available"), "{text}");
                break;
            }
        }
        assert!(
            got.len() <= 13,
            "more addresses than the pools hold: {got:?}"
        );
    }
    let want: Vec<String> = (12..=19)
        .chain(100..=104)
        .map(|i| format!("10.20.0.{i}"))
        .collect();
    assert_eq!(got, want);
    let one = get_ok(&cloud, &format!("{BASE}/{net}"), &admin_token);
    assert_eq!(one["network_ip_availability"]["used_ips"], 17, "{one}");
    ok(&admin, &["port", "delete", "p1"]);
    let one = get_ok(&cloud, &format!("{BASE}/{net}"), &admin_token);
    assert_eq!(one["network_ip_availability"]["used_ips"], 16, "{one}");
    assert_eq!(port(&cloud, &admin_token, &net).unwrap(), "10.20.0.10");
}

#[test]
fn allocation_pools_are_checked_as_neutron_checks_them() {
    let cloud = Cloud::start();
    let (token, _) = cloud.token("admin", ADMIN_PASSWORD, "admin");
    let r = cloud.json(
        "POST",
        "/network/v2.0/networks",
        Some(&token),
        &json!({"network": {"name": "pools"}}),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    let net = id(&r.json()["network"]);
    let create = |pools: Value, gateway: Option<&str>| {
        let mut s = json!({"network_id": net, "cidr": "10.40.0.0/24", "ip_version": 4,
                           "allocation_pools": pools});
        if let Some(g) = gateway {
            s["gateway_ip"] = json!(g);
        }
        cloud.json(
            "POST",
            "/network/v2.0/subnets",
            Some(&token),
            &json!({ "subnet": s }),
        )
    };
    let refused = |r: Answer, status: u16, kind: &str, message: &str| {
        assert_eq!(r.status, status, "{}", r.text());
        let e = &r.json()["NeutronError"];
        assert_eq!(e["type"], kind, "{e}");
        assert_eq!(e["message"], message, "{e}");
    };
    refused(
        create(json!([{"start": "10.40.0.2", "end": "10.40.1.9"}]), None),
        400,
        "OutOfBoundsAllocationPool",
        "The allocation pool 10.40.0.2-10.40.1.9 spans beyond the subnet cidr 10.40.0.0/24.",
    );
    refused(
        create(json!([{"start": "10.40.0.0", "end": "10.40.0.9"}]), None),
        400,
        "OutOfBoundsAllocationPool",
        "The allocation pool 10.40.0.0-10.40.0.9 spans beyond the subnet cidr 10.40.0.0/24.",
    );
    refused(
        create(json!([{"start": "10.40.0.9", "end": "10.40.0.2"}]), None),
        400,
        "InvalidAllocationPool",
        "The allocation pool {'start': '10.40.0.9', 'end': '10.40.0.2'} is not valid.",
    );
    refused(
        create(
            json!([{"start": "10.40.0.2", "end": "10.40.0.9"},
                   {"start": "10.40.0.9", "end": "10.40.0.20"}]),
            None,
        ),
        409,
        "OverlappingAllocationPools",
        "Found overlapping allocation pools: 10.40.0.2-10.40.0.9 10.40.0.9-10.40.0.20 for subnet 10.40.0.0/24.",
    );
    refused(
        create(json!([{"start": "10.40.0.1", "end": "10.40.0.9"}]), None),
        409,
        "GatewayConflictWithAllocationPools",
        "Gateway ip 10.40.0.1 conflicts with allocation pool 10.40.0.1-10.40.0.9.",
    );
    let r = create(json!([{"start": "10.40.0.2"}]), None);
    assert_eq!(r.status, 400, "{}", r.text());
    let r = create(json!([{"start": "10.40.0.2", "end": "nope"}]), None);
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(
        r.text().contains("'nope' is not a valid IP address"),
        "{}",
        r.text()
    );

    // Without pools, Neutron's default: the host addresses but the gateway's, which
    // splits them when it is in the middle.
    let r = create(Value::Null, Some("10.40.0.100"));
    assert_eq!(r.status, 201, "{}", r.text());
    let sub = r.json()["subnet"].clone();
    assert_eq!(
        sub["allocation_pools"],
        json!([{"start": "10.40.0.1", "end": "10.40.0.99"},
               {"start": "10.40.0.101", "end": "10.40.0.254"}]),
        "{sub}"
    );
    let r = get(&cloud, &format!("{BASE}/{net}"), &token);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["network_ip_availability"]["total_ips"], 253);
    // The network's own address and the broadcast address are no port's.
    for ip in ["10.40.0.0", "10.40.0.255"] {
        let r = cloud.json(
            "POST",
            "/network/v2.0/ports",
            Some(&token),
            &json!({"port": {"network_id": net, "fixed_ips": [{"ip_address": ip}]}}),
        );
        assert_eq!(r.status, 400, "{}", r.text());
        assert!(
            r.text().contains(&format!(
                "IP address {ip} is not a valid IP for the specified subnet."
            )),
            "{}",
            r.text()
        );
    }
    assert_eq!(port(&cloud, &token, &net).unwrap(), "10.40.0.1");
}
