//! Neutron subnet pools through control (`openstack subnet pool ...`,
//! `/v2.0/subnetpools`) and subnets taken from them (`openstack subnet create
//! --subnet-pool`, `--prefix-length`, `--use-default-subnet-pool`): allocation, freeing,
//! exhaustion, visibility between projects, defaults, policy, and Neutron's errors for bad
//! input; concurrent allocations from one pool never get the same CIDR.

mod common;

use std::collections::BTreeSet;

use common::*;
use serde_json::{Value, json};

const POOLS: &str = "/network/v2.0/subnetpools";
const SUBNETS: &str = "/network/v2.0/subnets";

fn id(v: &Value) -> String {
    v["id"].as_str().unwrap().to_string()
}

/// `subnet create --network NET [ARGS] NAME` with a new network NET.
fn pool_subnet(env: &[(String, String)], net: &str, args: &[&str], name: &str) -> Value {
    ok(env, &["network", "create", net]);
    let mut a = vec!["subnet", "create", "--network", net];
    a.extend(args);
    a.push(name);
    ok_json(env, &a)
}

/// The same, expected to fail; stderr.
fn pool_subnet_fails(env: &[(String, String)], net: &str, args: &[&str], name: &str) -> String {
    ok(env, &["network", "create", net]);
    let mut a = vec!["subnet", "create", "--network", net];
    a.extend(args);
    a.push(name);
    fails(env, &a)
}

/// The NeutronError of an answer with `status`: (type, message).
fn neutron_error(r: &Answer, status: u16) -> (String, String) {
    assert_eq!(r.status, status, "{}", r.text());
    let b = r.json();
    let e = &b["NeutronError"];
    assert_eq!(e["detail"], "", "{b}");
    (
        e["type"].as_str().unwrap_or_default().to_string(),
        e["message"].as_str().unwrap_or_default().to_string(),
    )
}

fn names(list: &Value) -> BTreeSet<String> {
    list.as_array()
        .unwrap_or_else(|| panic!("not a list: {list}"))
        .iter()
        .map(|p| p["Name"].as_str().unwrap().to_string())
        .collect()
}

fn set(l: &[&str]) -> BTreeSet<String> {
    l.iter().map(|s| s.to_string()).collect()
}

#[test]
fn subnets_are_allocated_from_a_pool_and_freed_with_the_cli() {
    if !have_cli() {
        return;
    }
    let cloud = Cloud::start();
    let admin = cloud.admin();

    let p1 = ok_json(
        &admin,
        &[
            "subnet",
            "pool",
            "create",
            "--pool-prefix",
            "10.10.0.0/16",
            "--default-prefix-length",
            "24",
            "p1",
        ],
    );
    let p1_id = id(&p1);
    assert_eq!(p1["prefixes"], json!(["10.10.0.0/16"]), "{p1}");
    assert_eq!(p1["default_prefixlen"], 24, "{p1}");
    assert_eq!(p1["min_prefixlen"], 8, "{p1}");
    assert_eq!(p1["max_prefixlen"], 32, "{p1}");
    assert_eq!(p1["ip_version"], 4, "{p1}");
    assert_eq!(p1["shared"], false, "{p1}");
    assert_eq!(p1["is_default"], false, "{p1}");
    let listed = ok_json(&admin, &["subnet", "pool", "list"]);
    assert_eq!(names(&listed), set(&["p1"]), "{listed}");
    let shown = ok_json(&admin, &["subnet", "pool", "show", "p1"]);
    assert_eq!(shown["id"], p1_id.as_str(), "{shown}");

    // The first subnets get the first /24s, with gateway and pools as for any subnet.
    let s1 = pool_subnet(&admin, "n1", &["--subnet-pool", "p1"], "s1");
    assert_eq!(s1["cidr"], "10.10.0.0/24", "{s1}");
    assert_eq!(s1["subnetpool_id"], p1_id.as_str(), "{s1}");
    assert_eq!(s1["gateway_ip"], "10.10.0.1", "{s1}");
    assert_eq!(
        s1["allocation_pools"],
        json!([{"start": "10.10.0.2", "end": "10.10.0.254"}]),
        "{s1}"
    );
    let port = ok_json(&admin, &["port", "create", "--network", "n1", "port1"]);
    assert_eq!(port["fixed_ips"][0]["ip_address"], "10.10.0.2", "{port}");
    let s2 = pool_subnet(&admin, "n2", &["--subnet-pool", "p1"], "s2");
    assert_eq!(s2["cidr"], "10.10.1.0/24", "{s2}");
    // Another size, aligned on its own boundary.
    let s3 = pool_subnet(
        &admin,
        "n3",
        &["--subnet-pool", "p1", "--prefix-length", "26"],
        "s3",
    );
    assert_eq!(s3["cidr"], "10.10.2.0/26", "{s3}");
    assert_eq!(
        s3["allocation_pools"],
        json!([{"start": "10.10.2.2", "end": "10.10.2.62"}]),
        "{s3}"
    );
    // An explicit range inside the pool's free space.
    let s4 = pool_subnet(
        &admin,
        "n4",
        &["--subnet-pool", "p1", "--subnet-range", "10.10.9.0/24"],
        "s4",
    );
    assert_eq!(s4["cidr"], "10.10.9.0/24", "{s4}");
    assert_eq!(s4["subnetpool_id"], p1_id.as_str(), "{s4}");
    // Outside the pool, and overlapping a subnet taken from it.
    for (net, range) in [("n5", "10.99.0.0/24"), ("n6", "10.10.0.128/25")] {
        let err = pool_subnet_fails(
            &admin,
            net,
            &["--subnet-pool", "p1", "--subnet-range", range],
            "bad",
        );
        assert!(
            err.contains("Cannot allocate requested subnet from the available set of prefixes"),
            "{err}"
        );
    }
    // Longer than the pool allows.
    let err = pool_subnet_fails(
        &admin,
        "n7",
        &["--subnet-pool", "p1", "--prefix-length", "6"],
        "bad",
    );
    assert!(err.contains("minimum allowed prefix is 8"), "{err}");
    // Listing subnets by pool.
    let from_pool = ok_json(&admin, &["subnet", "list", "--subnet-pool", "p1"]);
    assert_eq!(
        names(&from_pool),
        set(&["s1", "s2", "s3", "s4"]),
        "{from_pool}"
    );

    // Deleting a subnet frees its range: the next /24 is 10.10.1.0/24 again.
    ok(&admin, &["subnet", "delete", "s2"]);
    let s5 = ok_json(
        &admin,
        &[
            "subnet",
            "create",
            "--network",
            "n5",
            "--subnet-pool",
            "p1",
            "s5",
        ],
    );
    assert_eq!(s5["cidr"], "10.10.1.0/24", "{s5}");

    // The pool cannot go while subnets use it.
    let err = fails(&admin, &["subnet", "pool", "delete", "p1"]);
    assert!(err.contains("existing allocations"), "{err}");

    // Changes: name, description, another prefix (the CLI adds it to the existing ones),
    // the default length.
    ok(
        &admin,
        &[
            "subnet",
            "pool",
            "set",
            "--name",
            "p1b",
            "--description",
            "lab pool",
            "--pool-prefix",
            "10.20.0.0/16",
            "--default-prefix-length",
            "25",
            "p1",
        ],
    );
    let p1b = ok_json(&admin, &["subnet", "pool", "show", &p1_id]);
    assert_eq!(p1b["name"], "p1b", "{p1b}");
    assert_eq!(p1b["description"], "lab pool", "{p1b}");
    assert_eq!(
        p1b["prefixes"],
        json!(["10.10.0.0/16", "10.20.0.0/16"]),
        "{p1b}"
    );
    assert_eq!(p1b["default_prefixlen"], 25, "{p1b}");
    assert_eq!(p1b["revision_number"], 2, "{p1b}");
    // The new default: a /25, in the smallest free block that holds it.
    let s6 = pool_subnet(&admin, "n8", &["--subnet-pool", "p1b"], "s6");
    assert_eq!(s6["cidr"], "10.10.2.128/25", "{s6}");

    // Exhaustion: a /24 pool holds two /25s.
    ok(
        &admin,
        &[
            "subnet",
            "pool",
            "create",
            "--pool-prefix",
            "10.30.0.0/24",
            "--default-prefix-length",
            "25",
            "small",
        ],
    );
    let a = pool_subnet(&admin, "x1", &["--subnet-pool", "small"], "x1s");
    let b = pool_subnet(&admin, "x2", &["--subnet-pool", "small"], "x2s");
    assert_eq!(
        (&a["cidr"], &b["cidr"]),
        (&json!("10.30.0.0/25"), &json!("10.30.0.128/25"))
    );
    let err = pool_subnet_fails(&admin, "x3", &["--subnet-pool", "small"], "x3s");
    assert!(
        err.contains("Insufficient prefix space to allocate subnet size /25"),
        "{err}"
    );

    // Once its subnets are gone the pool can be deleted.
    for s in ["s1", "s3", "s4", "s5", "s6"] {
        if s == "s1" {
            ok(&admin, &["port", "delete", "port1"]);
        }
        ok(&admin, &["subnet", "delete", s]);
    }
    ok(&admin, &["subnet", "pool", "delete", "p1b"]);
    let err = fails(&admin, &["subnet", "pool", "show", &p1_id]);
    assert!(
        err.contains("No SubnetPool found") || err.contains("could not be found"),
        "{err}"
    );
}

#[test]
fn pools_are_private_unless_shared_and_defaults_are_for_admins() {
    if !have_cli() {
        return;
    }
    let cloud = Cloud::start();
    let admin = cloud.admin();
    let (admin_token, _) = cloud.token("admin", ADMIN_PASSWORD, "admin");
    let alice = cloud.member("pa", "alice", "alice-pass-1");
    let bob = cloud.member("pb", "bob", "bob-pass-1");
    let (bob_token, _) = cloud.token("bob", "bob-pass-1", "pb");

    ok(
        &admin,
        &[
            "subnet",
            "pool",
            "create",
            "--share",
            "--pool-prefix",
            "10.40.0.0/16",
            "--default-prefix-length",
            "24",
            "shared1",
        ],
    );
    let dflt = ok_json(
        &admin,
        &[
            "subnet",
            "pool",
            "create",
            "--share",
            "--default",
            "--pool-prefix",
            "10.50.0.0/16",
            "--default-prefix-length",
            "24",
            "dflt",
        ],
    );
    assert_eq!(dflt["is_default"], true, "{dflt}");
    let mine = ok_json(
        &alice,
        &[
            "subnet",
            "pool",
            "create",
            "--pool-prefix",
            "10.60.0.0/16",
            "mine",
        ],
    );
    let mine_id = id(&mine);

    // Bob sees the shared pools, not Alice's; Alice's is a 404 to him.
    let bob_list = ok_json(&bob, &["subnet", "pool", "list"]);
    assert_eq!(names(&bob_list), set(&["shared1", "dflt"]), "{bob_list}");
    let alice_list = ok_json(&alice, &["subnet", "pool", "list"]);
    assert_eq!(
        names(&alice_list),
        set(&["shared1", "dflt", "mine"]),
        "{alice_list}"
    );
    fails(&bob, &["subnet", "pool", "show", &mine_id]);
    let r = cloud.req(
        "GET",
        &format!("{POOLS}/{mine_id}"),
        Some(&bob_token),
        &[],
        b"",
    );
    let (kind, msg) = neutron_error(&r, 404);
    assert_eq!(kind, "HTTPError");
    assert_eq!(msg, format!("Subnet pool {mine_id} could not be found."));
    let r = cloud.json(
        "POST",
        SUBNETS,
        Some(&bob_token),
        &json!({"subnet": {"network_id": "nope", "subnetpool_id": mine_id, "ip_version": 4}}),
    );
    assert_eq!(r.status, 404, "{}", r.text());
    ok(&bob, &["network", "create", "bnet"]);
    let bnet = id(&ok_json(&bob, &["network", "show", "bnet"]));
    let r = cloud.json(
        "POST",
        SUBNETS,
        Some(&bob_token),
        &json!({"subnet": {"network_id": bnet, "subnetpool_id": mine_id, "ip_version": 4}}),
    );
    neutron_error(&r, 404);

    // Filters the CLI sends.
    let shared = ok_json(&admin, &["subnet", "pool", "list", "--share"]);
    assert_eq!(names(&shared), set(&["shared1", "dflt"]), "{shared}");
    let defaults = ok_json(&admin, &["subnet", "pool", "list", "--default"]);
    assert_eq!(names(&defaults), set(&["dflt"]), "{defaults}");
    let of_pa = ok_json(&admin, &["subnet", "pool", "list", "--project", "pa"]);
    assert_eq!(names(&of_pa), set(&["mine"]), "{of_pa}");
    let by_name = ok_json(&admin, &["subnet", "pool", "list", "--name", "shared1"]);
    assert_eq!(names(&by_name), set(&["shared1"]), "{by_name}");

    // Bob takes subnets from the shared pool and from the default one.
    let bs = pool_subnet(&bob, "bn1", &["--subnet-pool", "shared1"], "bs1");
    assert_eq!(bs["cidr"], "10.40.0.0/24", "{bs}");
    let bd = pool_subnet(&bob, "bn2", &["--use-default-subnet-pool"], "bs2");
    assert_eq!(bd["cidr"], "10.50.0.0/24", "{bd}");
    assert_eq!(bd["subnetpool_id"], id(&dflt).as_str(), "{bd}");

    // Only admins share pools or make defaults; only one default per IP version.
    let err = fails(
        &bob,
        &[
            "subnet",
            "pool",
            "create",
            "--share",
            "--pool-prefix",
            "10.70.0.0/16",
            "b1",
        ],
    );
    assert!(err.contains("create_subnetpool:shared"), "{err}");
    let err = fails(
        &bob,
        &[
            "subnet",
            "pool",
            "create",
            "--default",
            "--pool-prefix",
            "10.70.0.0/16",
            "b2",
        ],
    );
    assert!(err.contains("create_subnetpool:is_default"), "{err}");
    let err = fails(
        &admin,
        &[
            "subnet",
            "pool",
            "create",
            "--default",
            "--pool-prefix",
            "10.80.0.0/16",
            "d2",
        ],
    );
    assert!(
        err.contains("Only one default may exist per IP family"),
        "{err}"
    );
    // An IPv6 default is another family; moving the IPv4 default works once the old
    // one is no longer default.
    let v6 = cloud.json(
        "POST",
        POOLS,
        Some(&admin_token),
        &json!({"subnetpool": {"name": "v6", "prefixes": ["2001:db8::/48"], "is_default": true}}),
    );
    assert_eq!(v6.status, 201, "{}", v6.text());
    let v6 = v6.json()["subnetpool"].clone();
    assert_eq!(
        (
            &v6["ip_version"],
            &v6["min_prefixlen"],
            &v6["default_prefixlen"],
            &v6["max_prefixlen"]
        ),
        (&json!(6), &json!(64), &json!(64), &json!(128)),
        "{v6}"
    );
    ok(&admin, &["subnet", "pool", "set", "--no-default", "dflt"]);
    ok(&admin, &["subnet", "pool", "set", "--default", "shared1"]);
    let defaults = ok_json(&admin, &["subnet", "pool", "list", "--default"]);
    assert_eq!(names(&defaults), set(&["shared1", "v6"]), "{defaults}");
    let err = pool_subnet_fails(
        &alice,
        "an1",
        &["--use-default-subnet-pool", "--ip-version", "6"],
        "x",
    );
    assert!(
        err.contains("only IPv4 subnets are supported") || err.contains("IPv6"),
        "{err}"
    );

    // Bob may not change or delete a pool he only sees.
    let r = cloud.json(
        "PUT",
        &format!("{POOLS}/{}", id(&dflt)),
        Some(&bob_token),
        &json!({"subnetpool": {"name": "mine-now"}}),
    );
    let (kind, _) = neutron_error(&r, 403);
    assert_eq!(kind, "PolicyNotAuthorized");
    let r = cloud.req(
        "DELETE",
        &format!("{POOLS}/{}", id(&dflt)),
        Some(&bob_token),
        &[],
        b"",
    );
    neutron_error(&r, 403);
    let err = fails(&alice, &["subnet", "pool", "set", "--default", "mine"]);
    assert!(err.contains("update_subnetpool:is_default"), "{err}");

    // A reader may look but not change.
    ok(
        &admin,
        &["user", "create", "--password", "rpass-1234", "rita"],
    );
    ok(
        &admin,
        &["role", "add", "--project", "pb", "--user", "rita", "reader"],
    );
    let rita = cloud.env("rita", "rpass-1234", "pb");
    let rl = ok_json(&rita, &["subnet", "pool", "list"]);
    assert_eq!(names(&rl), set(&["shared1", "dflt"]), "{rl}");
    ok(&rita, &["subnet", "pool", "show", "shared1"]);
    let err = fails(
        &rita,
        &[
            "subnet",
            "pool",
            "create",
            "--pool-prefix",
            "10.90.0.0/16",
            "r",
        ],
    );
    assert!(err.contains("reader is read-only"), "{err}");
}

#[test]
fn bad_input_answers_neutron_errors_and_concurrent_allocations_never_collide() {
    let cloud = Cloud::start();
    let (token, _) = cloud.token("admin", ADMIN_PASSWORD, "admin");
    let create =
        |body: Value| cloud.json("POST", POOLS, Some(&token), &json!({"subnetpool": body}));

    let cases = [
        (
            json!({"name": "x", "prefixes": ["10.0.0.300/16"]}),
            "HTTPBadRequest",
            "Invalid input for prefixes. Reason: '10.0.0.300/16' is not a valid IP subnet.",
        ),
        (
            json!({"name": "x", "prefixes": ["10.0.0.0"]}),
            "HTTPBadRequest",
            "Invalid input for prefixes. Reason: '10.0.0.0' is not a valid IP subnet.",
        ),
        (
            json!({"name": "x", "prefixes": []}),
            "EmptySubnetPoolPrefixList",
            "Empty subnet pool prefix list.",
        ),
        (
            json!({"name": "x", "prefixes": ["10.0.0.0/8", "2001:db8::/32"]}),
            "PrefixVersionMismatch",
            "Cannot mix IPv4 and IPv6 prefixes in a subnet pool.",
        ),
        (
            json!({"name": "x", "prefixes": ["10.0.0.0/8"], "min_prefixlen": 25, "max_prefixlen": 24}),
            "IllegalSubnetPoolPrefixBounds",
            "Illegal prefix bounds: min_prefixlen=25, max_prefixlen=24.",
        ),
        (
            json!({"name": "x", "prefixes": ["10.0.0.0/8"], "max_prefixlen": 33}),
            "IllegalSubnetPoolPrefixBounds",
            "Illegal prefix bounds: max_prefixlen=33, ip_version_max=32.",
        ),
        (
            json!({"name": "x", "prefixes": ["10.0.0.0/8"], "min_prefixlen": 16, "default_prefixlen": 12}),
            "IllegalSubnetPoolPrefixBounds",
            "Illegal prefix bounds: default_prefixlen=12, min_prefixlen=16.",
        ),
        (
            json!({"name": "x", "prefixes": ["10.0.0.0/8"], "default_prefixlen": -1}),
            "HTTPBadRequest",
            "Invalid input for default_prefixlen. Reason: '-1' should be non-negative.",
        ),
        (
            json!({"name": "x", "prefixes": ["10.0.0.0/8"], "min_prefixlen": "abc"}),
            "HTTPBadRequest",
            "Invalid input for min_prefixlen. Reason: 'abc' is not an integer.",
        ),
    ];
    for (body, kind, message) in cases {
        let r = create(body.clone());
        assert_eq!(
            neutron_error(&r, 400),
            (kind.to_string(), message.to_string()),
            "{body}"
        );
    }
    let r = cloud.req(
        "POST",
        POOLS,
        Some(&token),
        &[("content-type", "application/json")],
        b"{",
    );
    assert_eq!(r.status, 400, "{}", r.text());

    // Overlapping and adjacent prefixes are merged, as Neutron merges them.
    let r = create(
        json!({"name": "m", "prefixes": ["10.1.0.0/16", "10.1.4.0/24", "10.0.0.0/16"],
                          "default_prefixlen": 24, "min_prefixlen": 16}),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    let m = r.json()["subnetpool"].clone();
    assert_eq!(m["prefixes"], json!(["10.0.0.0/15"]), "{m}");
    let m_id = id(&m);
    let pool_url = format!("{POOLS}/{m_id}");

    // Prefixes only grow.
    let update =
        |body: Value| cloud.json("PUT", &pool_url, Some(&token), &json!({"subnetpool": body}));
    let r = update(json!({"prefixes": ["10.0.0.0/16"]}));
    assert_eq!(
        neutron_error(&r, 400),
        (
            "IllegalSubnetPoolPrefixUpdate".to_string(),
            "Illegal update to prefixes: Existing prefixes must be a subset of the new prefixes."
                .to_string()
        )
    );
    let r = update(json!({"max_prefixlen": 20}));
    assert_eq!(neutron_error(&r, 400).0, "IllegalSubnetPoolPrefixBounds");
    let r = update(json!({"prefixes": ["10.0.0.0/14"], "max_prefixlen": 28}));
    assert_eq!(r.status, 200, "{}", r.text());
    let u = r.json()["subnetpool"].clone();
    assert_eq!(
        (&u["prefixes"], &u["max_prefixlen"]),
        (&json!(["10.0.0.0/14"]), &json!(28)),
        "{u}"
    );
    let r = cloud.req(
        "GET",
        &format!("{POOLS}?name=m&is_default=false"),
        Some(&token),
        &[],
        b"",
    );
    assert_eq!(r.status, 200);
    assert_eq!(
        r.json()["subnetpools"].as_array().unwrap().len(),
        1,
        "{}",
        r.text()
    );

    // Subnets: lengths outside the bounds, cidr with prefixlen, both pool options.
    let net = |name: &str| {
        let r = cloud.json(
            "POST",
            "/network/v2.0/networks",
            Some(&token),
            &json!({"network": {"name": name}}),
        );
        assert_eq!(r.status, 201, "{}", r.text());
        id(&r.json()["network"])
    };
    let n0 = net("n0");
    let subnet = |body: Value| cloud.json("POST", SUBNETS, Some(&token), &json!({"subnet": body}));
    let r =
        subnet(json!({"network_id": n0, "subnetpool_id": m_id, "prefixlen": 29, "ip_version": 4}));
    assert_eq!(
        neutron_error(&r, 400),
        (
            "MaxPrefixSubnetAllocationError".to_string(),
            "Unable to allocate subnet with prefix length 29, maximum allowed prefix is 28."
                .to_string()
        )
    );
    let r = subnet(
        json!({"network_id": n0, "subnetpool_id": m_id, "prefixlen": 24, "cidr": "10.0.0.0/24"}),
    );
    assert_eq!(
        neutron_error(&r, 400).1,
        "Bad subnets request: cidr and prefixlen must not be supplied together."
    );
    let r =
        subnet(json!({"network_id": n0, "subnetpool_id": m_id, "use_default_subnetpool": true}));
    assert_eq!(
        neutron_error(&r, 400).1,
        "Bad subnets request: subnetpool_id and use_default_subnetpool cannot both be specified."
    );
    let r = subnet(json!({"network_id": n0, "use_default_subnetpool": true, "ip_version": 4}));
    assert_eq!(
        neutron_error(&r, 400).1,
        "Bad subnets request: No default subnetpool found for IPv4."
    );
    let r = subnet(json!({"network_id": n0, "subnetpool_id": "no-such-pool"}));
    assert_eq!(
        neutron_error(&r, 404).1,
        "Subnet pool no-such-pool could not be found."
    );
    // Exhaustion over HTTP: a 409 with Neutron's type and message.
    let r = create(json!({"name": "tiny", "prefixes": ["10.9.9.0/28"], "default_prefixlen": 28}));
    let tiny = id(&r.json()["subnetpool"]);
    let r = subnet(json!({"network_id": n0, "subnetpool_id": tiny}));
    assert_eq!(r.status, 201, "{}", r.text());
    let r = subnet(json!({"network_id": net("n1"), "subnetpool_id": tiny}));
    assert_eq!(
        neutron_error(&r, 409),
        (
            "SubnetAllocationError".to_string(),
            "Failed to allocate subnet: Insufficient prefix space to allocate subnet size /28."
                .to_string()
        )
    );
    let r = cloud.req("DELETE", &format!("{POOLS}/{tiny}"), Some(&token), &[], b"");
    assert_eq!(
        neutron_error(&r, 400),
        (
            "SubnetPoolDeleteError".to_string(),
            "Unable to delete subnet pool: Subnet pool has existing allocations.".to_string()
        )
    );
    // A per-project quota on the pool's space: 512 addresses hold two /24s.
    let r = update(json!({"default_quota": 512}));
    assert_eq!(r.status, 200, "{}", r.text());
    let nets: Vec<String> = (0..10).map(|i| net(&format!("race{i}"))).collect();
    let q1 = subnet(json!({"network_id": nets[0], "subnetpool_id": m_id}));
    let q2 = subnet(json!({"network_id": nets[1], "subnetpool_id": m_id}));
    assert_eq!(
        (q1.status, q2.status),
        (201, 201),
        "{} {}",
        q1.text(),
        q2.text()
    );
    let r = subnet(json!({"network_id": nets[2], "subnetpool_id": m_id}));
    assert_eq!(neutron_error(&r, 409).0, "SubnetPoolQuotaExceeded");
    let r = update(json!({"default_quota": null}));
    assert_eq!(r.status, 200, "{}", r.text());

    // Eight concurrent allocations from one pool: eight different /24s.
    let cidrs: Vec<String> = std::thread::scope(|s| {
        let handles: Vec<_> = nets[2..]
            .iter()
            .map(|n| {
                let (cloud, token, m_id) = (&cloud, &token, &m_id);
                s.spawn(move || {
                    let r = cloud.json(
                        "POST",
                        SUBNETS,
                        Some(token),
                        &json!({"subnet": {"network_id": n, "subnetpool_id": m_id}}),
                    );
                    assert_eq!(r.status, 201, "{}", r.text());
                    r.json()["subnet"]["cidr"].as_str().unwrap().to_string()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let distinct: BTreeSet<&String> = cidrs.iter().collect();
    assert_eq!(distinct.len(), 8, "{cidrs:?}");
    let expected: BTreeSet<String> = (2..10).map(|i| format!("10.0.{i}.0/24")).collect();
    assert_eq!(
        distinct.into_iter().cloned().collect::<BTreeSet<_>>(),
        expected
    );

    // An IPv6 pool exists, but this cloud's subnets are IPv4 only.
    let r = create(json!({"name": "six", "prefixes": ["2001:db8::/48"]}));
    let six = id(&r.json()["subnetpool"]);
    let r = subnet(json!({"network_id": net("v6net"), "subnetpool_id": six, "ip_version": 4}));
    assert_eq!(
        neutron_error(&r, 400).1,
        "Bad subnets request: Cannot allocate IPv4 subnet from IPv6 subnet pool."
    );
}
