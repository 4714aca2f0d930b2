//! The network state control pushes (`PUT /v1/network`), made real on this node's netdp.
//!
//! control sends everything this node must hold, in netdp's own create shapes and with
//! control's ids: networks, subnets, security groups and rules, the ports bound here,
//! routers (with the subnets they have interfaces on, and their gateway with its address)
//! and floating IPs. [`Agent::apply_network`] compares it with what netdp has and makes
//! netdp match: it tears down first (floating IPs, router interfaces and gateways, ports,
//! rules, groups, subnets, networks that control no longer wants, in that order, so that
//! netdp never refuses a removal as "in use"), then builds (networks, subnets, groups,
//! rules, ports, routers with gateways, interfaces and then extra routes, floating IPs;
//! routes no longer wanted go before the interfaces they pin). Only what an earlier
//! push created is ever deleted (the ids are kept in the agent's state), so ports and
//! networks made otherwise (a placement's own network, a test's) are left alone. Errors do
//! not stop the pass: each one is reported, the generation is not recorded, and control
//! pushes again at the next heartbeat.

use std::collections::{BTreeMap, BTreeSet};

use hyper::Method;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::agent::{Agent, AgentError, error_chain, lock};
use crate::http::NO_BODY;

/// What control wants on this node.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Desired {
    /// control's generation of this state.
    pub generation: u64,
    /// Networks (netdp's create body, with `id`).
    #[serde(default)]
    pub networks: Vec<Value>,
    /// Subnets.
    #[serde(default)]
    pub subnets: Vec<Value>,
    /// Security groups.
    #[serde(default)]
    pub security_groups: Vec<Value>,
    /// Rules (IPv4).
    #[serde(default)]
    pub security_group_rules: Vec<Value>,
    /// Ports bound to this node.
    #[serde(default)]
    pub ports: Vec<Value>,
    /// Routers, each with `interfaces`: the subnet ids it has interfaces on.
    #[serde(default)]
    pub routers: Vec<Value>,
    /// Floating IPs of the ports.
    #[serde(default)]
    pub floatingips: Vec<Value>,
}

/// What was applied, persisted with the agent's state.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Applied {
    /// The generation applied without errors last.
    pub generation: u64,
    /// Ids created by pushes, by netdp collection.
    pub managed: BTreeMap<String, BTreeSet<String>>,
}

/// netdp's collections: path and list key.
const KINDS: [(&str, &str); 7] = [
    ("networks", "networks"),
    ("subnets", "subnets"),
    ("security-groups", "security_groups"),
    ("security-group-rules", "security_group_rules"),
    ("ports", "ports"),
    ("routers", "routers"),
    ("floatingips", "floatingips"),
];

/// The singular body key of a collection.
fn singular(kind: &str) -> &'static str {
    match kind {
        "networks" => "network",
        "subnets" => "subnet",
        "security-groups" => "security_group",
        "security-group-rules" => "security_group_rule",
        "ports" => "port",
        "routers" => "router",
        _ => "floatingip",
    }
}

type Table = BTreeMap<String, BTreeMap<String, Value>>;

fn by_id(list: &[Value]) -> BTreeMap<String, Value> {
    list.iter()
        .filter_map(|v| Some((v.get("id")?.as_str()?.to_string(), v.clone())))
        .collect()
}

fn id_of(v: &Value) -> String {
    v["id"].as_str().unwrap_or_default().to_string()
}

/// A router's gateway as (network, address, snat), for comparisons.
fn gateway_key(v: &Value) -> Option<(String, String, bool)> {
    let g = v.get("external_gateway_info").filter(|g| g.is_object())?;
    Some((
        g["network_id"].as_str().unwrap_or_default().to_string(),
        g.pointer("/external_fixed_ips/0/ip_address")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string(),
        g["enable_snat"].as_bool().unwrap_or(true),
    ))
}

/// A router's extra routes, as a set.
fn routes_of(v: &Value) -> BTreeSet<(String, String)> {
    v["routes"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|r| {
                    (
                        r["destination"].as_str().unwrap_or_default().to_string(),
                        r["nexthop"].as_str().unwrap_or_default().to_string(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

struct Pass<'a> {
    agent: &'a Agent,
    errors: Vec<String>,
    managed: BTreeMap<String, BTreeSet<String>>,
}

impl Pass<'_> {
    async fn call(&mut self, method: Method, path: &str, body: Option<Value>) -> Option<Value> {
        let r = match &body {
            Some(b) => {
                self.agent
                    .netdp
                    .0
                    .json::<Value>(method.clone(), path, Some(b))
                    .await
            }
            None => {
                self.agent
                    .netdp
                    .0
                    .json::<Value>(method.clone(), path, NO_BODY)
                    .await
            }
        };
        match r {
            Ok(v) => Some(v),
            Err(e) => {
                self.errors
                    .push(format!("{method} {path}: {}", error_chain(&e)));
                None
            }
        }
    }

    async fn delete(&mut self, kind: &str, id: &str) {
        match self
            .agent
            .netdp
            .0
            .call(Method::DELETE, &format!("/v2.0/{kind}/{id}"), NO_BODY)
            .await
        {
            Ok(_) => {
                self.managed.entry(kind.into()).or_default().remove(id);
            }
            Err(e) if e.status() == Some(404) => {
                self.managed.entry(kind.into()).or_default().remove(id);
            }
            Err(e) => self
                .errors
                .push(format!("DELETE {kind}/{id}: {}", error_chain(&e))),
        }
    }

    async fn create(&mut self, kind: &str, body: Value) -> Option<Value> {
        let id = id_of(&body);
        let v = self
            .call(
                Method::POST,
                &format!("/v2.0/{kind}"),
                Some(json!({ singular(kind): body })),
            )
            .await?;
        self.managed.entry(kind.into()).or_default().insert(id);
        Some(v)
    }

    async fn tables(&mut self) -> Option<Table> {
        let mut t = Table::new();
        for (kind, key) in KINDS {
            let v = self
                .call(Method::GET, &format!("/v2.0/{kind}"), None)
                .await?;
            let list = v
                .get(key)
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            t.insert(kind.into(), by_id(&list));
        }
        Some(t)
    }

    /// Makes router `id`'s routes `to`, unless they are `from` already.
    async fn set_routes(
        &mut self,
        id: &str,
        from: &BTreeSet<(String, String)>,
        to: &BTreeSet<(String, String)>,
    ) {
        if from == to {
            return;
        }
        let list: Vec<Value> = to
            .iter()
            .map(|(d, n)| json!({"destination": d, "nexthop": n}))
            .collect();
        self.call(
            Method::PUT,
            &format!("/v2.0/routers/{id}"),
            Some(json!({"router": {"routes": list}})),
        )
        .await;
    }

    fn managed(&self, kind: &str, id: &str) -> bool {
        self.managed.get(kind).is_some_and(|s| s.contains(id))
    }
}

/// A router's interface ports in netdp's table: (port id, subnet id).
fn interfaces(have: &Table, router: &str) -> Vec<(String, String)> {
    have["ports"]
        .values()
        .filter(|p| p["device_owner"] == "network:router_interface" && p["device_id"] == router)
        .filter_map(|p| {
            Some((
                id_of(p),
                p.pointer("/fixed_ips/0/subnet_id")?.as_str()?.to_string(),
            ))
        })
        .collect()
}

impl Agent {
    /// The network state applied last.
    pub fn network_applied(&self) -> Applied {
        lock(&self.state).network.clone()
    }

    /// The generation of the network state applied last (0: none).
    pub fn network_generation(&self) -> u64 {
        lock(&self.state).network.generation
    }

    /// Makes netdp match `want`; answers `{"generation", "errors"}` (the generation applied:
    /// the new one when there were no errors, else the previous one).
    pub async fn apply_network(&self, want: Desired) -> Result<Value, AgentError> {
        let _serial = self.net_lock.lock().await;
        let before = self.network_applied();
        let mut pass = Pass {
            agent: self,
            errors: vec![],
            managed: before.managed.clone(),
        };
        let wanted: Table = [
            ("networks", &want.networks),
            ("subnets", &want.subnets),
            ("security-groups", &want.security_groups),
            ("security-group-rules", &want.security_group_rules),
            ("ports", &want.ports),
            ("routers", &want.routers),
            ("floatingips", &want.floatingips),
        ]
        .into_iter()
        .map(|(k, l)| (k.to_string(), by_id(l)))
        .collect();
        let nothing_wanted = wanted.values().all(BTreeMap::is_empty);
        let nothing_held = pass.managed.values().all(BTreeSet::is_empty);
        if !(nothing_wanted && nothing_held)
            && let Some(have) = pass.tables().await
        {
            teardown(&mut pass, &wanted, &have).await;
            if let Some(have) = pass.tables().await {
                build(&mut pass, &wanted, &have).await;
            }
        }
        let applied = Applied {
            generation: if pass.errors.is_empty() {
                want.generation
            } else {
                before.generation
            },
            managed: pass
                .managed
                .into_iter()
                .filter(|(_, s)| !s.is_empty())
                .collect(),
        };
        if !pass.errors.is_empty() {
            tracing::warn!(errors = ?pass.errors, "network state applied with errors");
        }
        {
            let mut st = lock(&self.state);
            st.network = applied.clone();
            self.save(&mut st).map_err(AgentError::Store)?;
        }
        Ok(json!({"generation": applied.generation, "errors": pass.errors}))
    }
}

async fn teardown(pass: &mut Pass<'_>, want: &Table, have: &Table) {
    // Floating IPs: gone, or moving to another port (unmapped now, mapped again later).
    for (id, f) in &have["floatingips"] {
        match want["floatingips"].get(id) {
            None if pass.managed("floatingips", id) => pass.delete("floatingips", id).await,
            Some(w)
                if !f["port_id"].is_null()
                    && (w["port_id"] != f["port_id"]
                        || w["fixed_ip_address"] != f["fixed_ip_address"]) =>
            {
                pass.call(
                    Method::PUT,
                    &format!("/v2.0/floatingips/{id}"),
                    Some(json!({"floatingip": {"port_id": null}})),
                )
                .await;
            }
            _ => {}
        }
    }
    // Routers: interfaces no longer wanted, gateways that change, routers gone.
    for (id, r) in &have["routers"] {
        let w = want["routers"].get(id);
        if w.is_none() && !pass.managed("routers", id) {
            continue;
        }
        let keep: BTreeSet<&str> = w
            .and_then(|w| w["interfaces"].as_array())
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        // Routes no longer wanted go before the interfaces they pin.
        let held = routes_of(r);
        let kept: BTreeSet<(String, String)> = match w {
            Some(w) => held.intersection(&routes_of(w)).cloned().collect(),
            None => BTreeSet::new(),
        };
        pass.set_routes(id, &held, &kept).await;
        for (_, subnet) in interfaces(have, id) {
            if !keep.contains(subnet.as_str()) {
                pass.call(
                    Method::PUT,
                    &format!("/v2.0/routers/{id}/remove_router_interface"),
                    Some(json!({ "subnet_id": subnet })),
                )
                .await;
            }
        }
        match w {
            None => pass.delete("routers", id).await,
            Some(w) => {
                let (old, new) = (gateway_key(r), gateway_key(w));
                let moved = match (&old, &new) {
                    (Some(o), Some(n)) => o.0 != n.0 || o.1 != n.1,
                    (Some(_), None) => true,
                    _ => false,
                };
                if moved {
                    pass.call(
                        Method::PUT,
                        &format!("/v2.0/routers/{id}"),
                        Some(json!({"router": {"external_gateway_info": null}})),
                    )
                    .await;
                }
            }
        }
    }
    for kind in ["ports"] {
        for id in have[kind].keys() {
            if !want[kind].contains_key(id) && pass.managed(kind, id) {
                pass.delete(kind, id).await;
            }
        }
    }
    // Rules: every rule of a wanted group that control does not list (netdp gives a new
    // group its own egress rule), and managed rules no longer wanted.
    for (id, r) in &have["security-group-rules"] {
        let group = r["security_group_id"].as_str().unwrap_or_default();
        if !want["security-group-rules"].contains_key(id)
            && (want["security-groups"].contains_key(group)
                || pass.managed("security-group-rules", id))
        {
            pass.delete("security-group-rules", id).await;
        }
    }
    for kind in ["security-groups", "subnets", "networks"] {
        for id in have[kind].keys() {
            if !want[kind].contains_key(id) && pass.managed(kind, id) {
                pass.delete(kind, id).await;
            }
        }
    }
}

async fn build(pass: &mut Pass<'_>, want: &Table, have: &Table) {
    for kind in [
        "networks",
        "subnets",
        "security-groups",
        "security-group-rules",
    ] {
        for (id, w) in &want[kind] {
            if have[kind].contains_key(id) {
                pass.managed
                    .entry(kind.into())
                    .or_default()
                    .insert(id.clone());
                continue;
            }
            let created = pass.create(kind, w.clone()).await;
            // A new group comes with netdp's own egress rule: control's rules replace it.
            if kind == "security-groups"
                && let Some(g) = created
            {
                let extra: Vec<String> = g
                    .pointer("/security_group/security_group_rules")
                    .and_then(Value::as_array)
                    .map(|a| a.iter().map(id_of).collect())
                    .unwrap_or_default();
                for rid in extra {
                    if !want["security-group-rules"].contains_key(&rid) {
                        pass.delete("security-group-rules", &rid).await;
                    }
                }
            }
        }
    }
    for (id, w) in &want["ports"] {
        match have["ports"].get(id) {
            None => {
                pass.create("ports", w.clone()).await;
            }
            Some(h) => {
                pass.managed
                    .entry("ports".into())
                    .or_default()
                    .insert(id.clone());
                if h["security_groups"] != w["security_groups"]
                    || h["port_security_enabled"] != w["port_security_enabled"]
                    || h["name"] != w["name"]
                {
                    pass.call(
                        Method::PUT,
                        &format!("/v2.0/ports/{id}"),
                        Some(json!({"port": {
                            "name": w["name"],
                            "security_groups": w["security_groups"],
                            "port_security_enabled": w["port_security_enabled"],
                        }})),
                    )
                    .await;
                }
            }
        }
    }
    for (id, w) in &want["routers"] {
        let mut body = w.clone();
        // Routes are set once the interfaces they go through exist.
        if let Some(o) = body.as_object_mut() {
            o.remove("routes");
        }
        let wanted_ifaces: Vec<String> = body
            .as_object_mut()
            .and_then(|o| o.remove("interfaces"))
            .and_then(|v| v.as_array().cloned())
            .unwrap_or_default()
            .iter()
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect();
        let held: Vec<String> = match have["routers"].get(id) {
            None => {
                if pass.create("routers", body).await.is_none() {
                    continue;
                }
                vec![]
            }
            Some(h) => {
                pass.managed
                    .entry("routers".into())
                    .or_default()
                    .insert(id.clone());
                if gateway_key(h) != gateway_key(w) && gateway_key(w).is_some() {
                    pass.call(
                        Method::PUT,
                        &format!("/v2.0/routers/{id}"),
                        Some(json!({"router": {"external_gateway_info": w["external_gateway_info"]}})),
                    )
                    .await;
                }
                interfaces(have, id).into_iter().map(|(_, s)| s).collect()
            }
        };
        for subnet in wanted_ifaces {
            if !held.contains(&subnet) {
                pass.call(
                    Method::PUT,
                    &format!("/v2.0/routers/{id}/add_router_interface"),
                    Some(json!({ "subnet_id": subnet })),
                )
                .await;
            }
        }
        let held_routes = have["routers"].get(id).map(routes_of).unwrap_or_default();
        pass.set_routes(id, &held_routes, &routes_of(w)).await;
    }
    for (id, w) in &want["floatingips"] {
        match have["floatingips"].get(id) {
            None => {
                pass.create("floatingips", w.clone()).await;
            }
            Some(h) => {
                pass.managed
                    .entry("floatingips".into())
                    .or_default()
                    .insert(id.clone());
                if h["port_id"] != w["port_id"] || h["fixed_ip_address"] != w["fixed_ip_address"] {
                    pass.call(
                        Method::PUT,
                        &format!("/v2.0/floatingips/{id}"),
                        Some(json!({"floatingip": {"port_id": w["port_id"],
                                                   "fixed_ip_address": w["fixed_ip_address"]}})),
                    )
                    .await;
                }
            }
        }
    }
}
