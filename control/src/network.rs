//! Neutron's resources as control keeps them, and how they reach the nodes.
//!
//! control is the source of truth: networks, subnets, ports, routers, security groups with
//! their rules and floating IPs are records in its store (SQLite or PostgreSQL). control
//! does the address management: every fixed IP, router gateway address and floating IP is
//! an [`Kind::IpAllocation`] record named by the address within its subnet, inserted in the
//! same atomic batch as the resource, so two controllers sharing a database never hand out
//! one address twice. MACs are random in Neutron's `fa:16:3e` prefix.
//!
//! Nodes are reconciled from the store, declaratively. For each node, [`node_state`]
//! computes what its netdp must hold: the ports bound to it (`binding:host_id` = the node,
//! set when a server is scheduled there or given at port creation), their networks and
//! subnets, the routers with an interface on one of those subnets (every such node gets the
//! router, a distributed router in the DVR sense) with their gateway networks, the security
//! groups of the ports (and the groups their rules name as remote groups) with their
//! rules, and the floating IPs of the ports. [`push`] sends that document to the node's
//! agent (`PUT /v1/network`), which makes its netdp match it (creating with control's ids,
//! updating, deleting what it created earlier and control no longer wants).
//!
//! When it is pushed: every change through the API bumps a generation number (a setting
//! record, compare-and-swap) and pushes to every node that is up, in the background;
//! a build pushes to its node before placing the server (a failed push fails that build
//! attempt); every heartbeat carries the generation the agent applied last, and a node
//! that is behind (it was down, or a push failed) gets the current state again. Pushes
//! are serialised per controller and each computes the state when it runs, so the last
//! push always carries the newest state.
//!
//! What is not done: traffic between nodes (netdp has no overlay), so a remote security
//! group expands to the addresses of the group's ports on the same node; one subnet per
//! network; IPv4 only.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use http::Method;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::api::ApiError;
use crate::api::network::{NetworkDoc, SubnetDoc, host_range, parse_cidr};
use crate::compute::agent::{self, AgentError};
use crate::service::{Service, ServiceError};
use crate::store::{Kind, Record, Store, StoreError, Write};

/// How long one push to an agent may take (netdp work included).
pub const PUSH_DEADLINE: Duration = Duration::from_secs(30);

/// The setting record holding the generation of Neutron state.
const GENERATION: &str = "neutron-generation";

/// `device_owner` of a router's interface port.
pub const OWNER_INTERFACE: &str = "network:router_interface";
/// `device_owner` of a router's gateway port.
pub const OWNER_GATEWAY: &str = "network:router_gateway";
/// `device_owner` of a floating IP's placeholder (none are stored; for views).
pub const OWNER_FIP: &str = "network:floatingip";

fn se(e: StoreError) -> ApiError {
    ServiceError::from(e).into()
}

/// One address of a port.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FixedIp {
    /// The subnet.
    pub subnet_id: String,
    /// The address.
    pub ip_address: String,
}

/// A port.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PortDoc {
    /// Name.
    pub name: String,
    /// Its network.
    pub network_id: String,
    /// Owner.
    pub project_id: String,
    /// MAC.
    pub mac_address: String,
    /// Addresses (one, from the network's subnet).
    pub fixed_ips: Vec<FixedIp>,
    /// Security group ids.
    pub security_groups: Vec<String>,
    /// Anti-spoofing and security groups on.
    pub port_security_enabled: bool,
    /// `compute:nova`, `network:router_interface`, `network:router_gateway` or empty.
    pub device_owner: String,
    /// The server or router using it.
    pub device_id: String,
    /// The node it is bound to (`binding:host_id`), empty when unbound.
    #[serde(default)]
    pub host: String,
    /// Admin state.
    pub admin_state_up: bool,
    /// Description.
    #[serde(default)]
    pub description: String,
    /// Epoch seconds.
    pub created: u64,
    /// Epoch seconds.
    pub updated: u64,
}

/// A router's gateway on an external network.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GatewayDoc {
    /// The external network.
    pub network_id: String,
    /// SNAT for ports without a floating IP.
    pub enable_snat: bool,
    /// The gateway port (control's record).
    pub port_id: String,
    /// Its subnet.
    pub subnet_id: String,
    /// Its address.
    pub ip_address: String,
}

/// An extra route of a router (Neutron's `routes`): `destination` (a network's CIDR) via
/// `nexthop`, an address on one of the router's subnets.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ExtraRoute {
    /// The destination, `a.b.c.d/len`.
    pub destination: String,
    /// The next hop.
    pub nexthop: String,
}

/// A router.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RouterDoc {
    /// Name.
    pub name: String,
    /// Owner.
    pub project_id: String,
    /// Admin state.
    pub admin_state_up: bool,
    /// The gateway, if set.
    pub gateway: Option<GatewayDoc>,
    /// Extra routes, sorted.
    #[serde(default)]
    pub routes: Vec<ExtraRoute>,
    /// Description.
    #[serde(default)]
    pub description: String,
    /// Epoch seconds.
    pub created: u64,
    /// Epoch seconds.
    pub updated: u64,
}

/// A security group.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SecurityGroupDoc {
    /// Name.
    pub name: String,
    /// Description.
    pub description: String,
    /// Owner.
    pub project_id: String,
    /// Epoch seconds.
    pub created: u64,
    /// Epoch seconds.
    pub updated: u64,
}

/// A security-group rule.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RuleDoc {
    /// Its group.
    pub security_group_id: String,
    /// `ingress` or `egress`.
    pub direction: String,
    /// `IPv4` or `IPv6`.
    pub ethertype: String,
    /// `tcp`, `udp`, `icmp`, a number, or none for any.
    pub protocol: Option<String>,
    /// Lowest port, or the ICMP type.
    pub port_range_min: Option<u16>,
    /// Highest port, or the ICMP code.
    pub port_range_max: Option<u16>,
    /// Remote prefix.
    pub remote_ip_prefix: Option<String>,
    /// Remote group.
    pub remote_group_id: Option<String>,
    /// Owner.
    pub project_id: String,
    /// Description.
    #[serde(default)]
    pub description: String,
    /// Epoch seconds.
    pub created: u64,
}

/// A floating IP.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FloatingIpDoc {
    /// The external network.
    pub floating_network_id: String,
    /// Its subnet.
    pub subnet_id: String,
    /// The address.
    pub floating_ip_address: String,
    /// The port it maps to.
    pub port_id: Option<String>,
    /// The port's address it maps to.
    pub fixed_ip_address: Option<String>,
    /// The router translating.
    pub router_id: Option<String>,
    /// Owner.
    pub project_id: String,
    /// Description.
    #[serde(default)]
    pub description: String,
    /// Epoch seconds.
    pub created: u64,
    /// Epoch seconds.
    pub updated: u64,
}

/// Every record of a kind, parsed, with its id.
pub fn all<T: serde::de::DeserializeOwned>(
    store: &dyn Store,
    kind: Kind,
    scope: Option<&str>,
) -> Result<Vec<(String, T)>, StoreError> {
    store
        .list(kind, scope)?
        .into_iter()
        .map(|r| Ok((r.id.clone(), r.parse()?)))
        .collect()
}

/// A new MAC in Neutron's `fa:16:3e` prefix.
pub fn new_mac() -> String {
    let b = uuid::Uuid::new_v4().into_bytes();
    format!("fa:16:3e:{:02x}:{:02x}:{:02x}", b[0], b[1], b[2])
}

fn mask(len: u8) -> u32 {
    if len == 0 { 0 } else { u32::MAX << (32 - len) }
}

/// Whether `ip` is in `cidr`.
pub fn in_cidr(ip: Ipv4Addr, cidr: &str) -> bool {
    parse_cidr(cidr)
        .map(|(b, l)| u32::from(ip) & mask(l) == u32::from(b))
        .unwrap_or(false)
}

/// The id of the allocation record of `ip` in `subnet`.
pub fn allocation_id(subnet: &str, ip: &str) -> String {
    format!("{subnet}/{ip}")
}

/// The write that reserves `ip` in `subnet` (it fails the batch if the address is taken).
pub fn reserve(subnet: &str, ip: &str, owner: &str) -> Write {
    Write::Insert(Record::new(
        Kind::IpAllocation,
        &allocation_id(subnet, ip),
        subnet,
        Some(ip),
        &json!({"owner": owner}),
    ))
}

/// The write that frees `ip` in `subnet`.
pub fn release(subnet: &str, ip: &str) -> Write {
    Write::Delete(Kind::IpAllocation, allocation_id(subnet, ip))
}

/// An address for a new port, floating IP or gateway on `subnet`: `want` if given (400 if
/// it is not one of the subnet's host addresses, 409 if taken; it may lie outside the
/// allocation pools, as in Neutron), else the lowest free one of the allocation pools.
pub fn pick_address(
    store: &dyn Store,
    subnet_id: &str,
    subnet: &SubnetDoc,
    want: Option<&str>,
) -> Result<String, ApiError> {
    let (base, len) = parse_cidr(&subnet.cidr)?;
    let used: BTreeSet<String> = store
        .list(Kind::IpAllocation, Some(subnet_id))
        .map_err(se)?
        .into_iter()
        .filter_map(|r| r.name)
        .collect();
    if let Some(w) = want {
        let ip: Ipv4Addr = w.parse().map_err(|_| {
            ApiError::bad_request(format!("Invalid input: '{w}' is not a valid IP address."))
        })?;
        let (first, last) = host_range(base, len);
        if !(first..=last).contains(&u32::from(ip)) {
            return Err(ApiError::bad_request(format!(
                "IP address {w} is not a valid IP for the specified subnet."
            )));
        }
        if used.contains(w) {
            return Err(ApiError::conflict(format!(
                "IP address {w} already allocated in subnet {subnet_id}"
            )));
        }
        return Ok(ip.to_string());
    }
    subnet
        .pools()
        .iter()
        .flat_map(|p| u32::from(p.start)..=u32::from(p.end))
        .map(|i| Ipv4Addr::from(i).to_string())
        .find(|ip| !used.contains(ip) && subnet.gateway_ip.as_deref() != Some(ip.as_str()))
        .ok_or_else(|| {
            ApiError::conflict(format!(
                "No more IP addresses available on network {}.",
                subnet.network_id
            ))
        })
}

/// The project's `default` security group, created with Neutron's default rules (egress to
/// anywhere, ingress from members of the group; IPv4 and IPv6) on first use.
pub fn default_group(store: &dyn Store, project: &str) -> Result<String, ApiError> {
    for _ in 0..3 {
        if let Some(r) = store
            .get_by_name(Kind::SecurityGroup, project, "default")
            .map_err(se)?
        {
            return Ok(r.id);
        }
        let id = uuid::Uuid::new_v4().to_string();
        let now = crate::identity::token::now_secs();
        let doc = SecurityGroupDoc {
            name: "default".into(),
            description: "Default security group".into(),
            project_id: project.into(),
            created: now,
            updated: now,
        };
        let mut writes = vec![Write::Insert(Record::new(
            Kind::SecurityGroup,
            &id,
            project,
            Some("default"),
            &doc,
        ))];
        for ethertype in ["IPv4", "IPv6"] {
            for (direction, remote) in [("egress", None), ("ingress", Some(id.clone()))] {
                writes.push(Write::Insert(Record::new(
                    Kind::SecurityGroupRule,
                    &uuid::Uuid::new_v4().to_string(),
                    &id,
                    None,
                    &RuleDoc {
                        security_group_id: id.clone(),
                        direction: direction.into(),
                        ethertype: ethertype.into(),
                        protocol: None,
                        port_range_min: None,
                        port_range_max: None,
                        remote_ip_prefix: None,
                        remote_group_id: remote,
                        project_id: project.into(),
                        description: String::new(),
                        created: now,
                    },
                )));
            }
        }
        match store.apply(&writes) {
            Ok(()) => return Ok(id),
            // Another request made it meanwhile: use theirs.
            Err(StoreError::Conflict { .. }) => continue,
            Err(e) => return Err(se(e)),
        }
    }
    Err(ApiError::conflict(
        "the default security group kept changing; try again",
    ))
}

/// The current generation of Neutron state.
pub fn generation(store: &dyn Store) -> Result<u64, StoreError> {
    Ok(store
        .get(Kind::Setting, GENERATION)?
        .and_then(|r| r.parse::<Value>().ok())
        .and_then(|v| v["generation"].as_u64())
        .unwrap_or(0))
}

/// Bumps the generation after a change (compare-and-swap, retried).
pub fn bump(store: &dyn Store) -> Result<u64, StoreError> {
    loop {
        match store.get(Kind::Setting, GENERATION)? {
            None => {
                let r = Record::new(
                    Kind::Setting,
                    GENERATION,
                    "",
                    None,
                    &json!({"generation": 1}),
                );
                match store.insert(r) {
                    Ok(()) => return Ok(1),
                    Err(StoreError::Conflict { .. }) => continue,
                    Err(e) => return Err(e),
                }
            }
            Some(r) => {
                let n = r
                    .parse::<Value>()?
                    .get("generation")
                    .and_then(Value::as_u64)
                    .unwrap_or(0)
                    + 1;
                match store.update(r.with_doc(None, &json!({"generation": n}))) {
                    Ok(()) => return Ok(n),
                    Err(StoreError::Stale { .. }) => continue,
                    Err(e) => return Err(e),
                }
            }
        }
    }
}

fn subnet_json(id: &str, s: &SubnetDoc) -> Value {
    json!({"id": id, "name": s.name, "network_id": s.network_id, "project_id": s.project_id,
           "ip_version": 4, "cidr": s.cidr, "gateway_ip": s.gateway_ip,
           "enable_dhcp": s.enable_dhcp})
}

/// What node `node` must hold: netdp's shapes (create bodies with control's ids), routers
/// with the subnets they have interfaces on.
pub fn node_state(store: &dyn Store, node: &str) -> Result<Value, StoreError> {
    let generation = generation(store)?;
    let ports: Vec<(String, PortDoc)> = all(store, Kind::Port, None)?;
    let subnets: BTreeMap<String, SubnetDoc> =
        all(store, Kind::Subnet, None)?.into_iter().collect();
    let bound: Vec<&(String, PortDoc)> = ports
        .iter()
        .filter(|(_, p)| p.host == node && !p.device_owner.starts_with("network:"))
        .collect();
    let mut nets: BTreeSet<String> = bound.iter().map(|(_, p)| p.network_id.clone()).collect();
    // Routers with an interface on a subnet of those networks.
    let mut routers: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (_, p) in &ports {
        if p.device_owner == OWNER_INTERFACE && nets.contains(&p.network_id) {
            for f in &p.fixed_ips {
                routers
                    .entry(p.device_id.clone())
                    .or_default()
                    .push(f.subnet_id.clone());
            }
        }
    }
    let mut router_docs = vec![];
    for (rid, ifaces) in &routers {
        let Some(r) = store.get(Kind::Router, rid)? else {
            continue;
        };
        let d: RouterDoc = r.parse()?;
        let gw = d.gateway.as_ref().map(|g| {
            nets.insert(g.network_id.clone());
            json!({"network_id": g.network_id, "enable_snat": g.enable_snat,
                   "external_fixed_ips": [{"subnet_id": g.subnet_id, "ip_address": g.ip_address}]})
        });
        // The routes whose next hop is on a subnet this node's copy of the router has
        // (netdp refuses the others, as Neutron would).
        let here: Vec<&str> = ifaces
            .iter()
            .map(String::as_str)
            .chain(d.gateway.as_ref().map(|g| g.subnet_id.as_str()))
            .filter_map(|s| subnets.get(s).map(|s| s.cidr.as_str()))
            .collect();
        let routes: Vec<&ExtraRoute> = d
            .routes
            .iter()
            .filter(|r| {
                r.nexthop
                    .parse()
                    .is_ok_and(|ip| here.iter().any(|c| in_cidr(ip, c)))
            })
            .collect();
        router_docs.push(
            json!({"id": rid, "name": d.name, "project_id": d.project_id,
            "admin_state_up": d.admin_state_up, "external_gateway_info": gw,
            "routes": routes, "interfaces": ifaces}),
        );
    }
    let mut net_docs = vec![];
    let mut subnet_docs = vec![];
    for n in &nets {
        let Some(r) = store.get(Kind::Network, n)? else {
            continue;
        };
        let d: NetworkDoc = r.parse()?;
        net_docs.push(json!({"id": n, "name": d.name, "project_id": d.project_id,
            "admin_state_up": d.admin_state_up, "mtu": d.mtu, "router:external": d.external}));
        for (sid, s) in subnets.iter().filter(|(_, s)| &s.network_id == n) {
            subnet_docs.push(subnet_json(sid, s));
        }
    }
    // Groups of the ports, and the remote groups their rules name.
    let mut groups: BTreeSet<String> = bound
        .iter()
        .flat_map(|(_, p)| p.security_groups.iter().cloned())
        .collect();
    let mut rules: Vec<(String, RuleDoc)> = vec![];
    let mut todo: Vec<String> = groups.iter().cloned().collect();
    while let Some(g) = todo.pop() {
        for (rid, rd) in all::<RuleDoc>(store, Kind::SecurityGroupRule, Some(&g))? {
            if let Some(remote) = &rd.remote_group_id
                && groups.insert(remote.clone())
            {
                todo.push(remote.clone());
            }
            rules.push((rid, rd));
        }
    }
    let mut group_docs = vec![];
    for g in &groups {
        if let Some(r) = store.get(Kind::SecurityGroup, g)? {
            let d: SecurityGroupDoc = r.parse()?;
            group_docs.push(
                json!({"id": g, "name": d.name, "description": d.description,
                                   "project_id": d.project_id}),
            );
        }
    }
    let rule_docs: Vec<Value> = rules
        .iter()
        .filter(|(_, r)| r.ethertype == "IPv4")
        .map(|(id, r)| {
            json!({"id": id, "security_group_id": r.security_group_id, "direction": r.direction,
                   "ethertype": r.ethertype, "protocol": r.protocol,
                   "port_range_min": r.port_range_min, "port_range_max": r.port_range_max,
                   "remote_ip_prefix": r.remote_ip_prefix, "remote_group_id": r.remote_group_id,
                   "project_id": r.project_id})
        })
        .collect();
    let port_docs: Vec<Value> = bound
        .iter()
        .map(|(id, p)| {
            json!({"id": id, "name": p.name, "network_id": p.network_id,
                   "project_id": p.project_id, "mac_address": p.mac_address,
                   "fixed_ips": p.fixed_ips, "security_groups": p.security_groups,
                   "port_security_enabled": p.port_security_enabled,
                   "device_owner": p.device_owner, "device_id": p.device_id})
        })
        .collect();
    let bound_ids: BTreeSet<&str> = bound.iter().map(|(id, _)| id.as_str()).collect();
    let fip_docs: Vec<Value> = all::<FloatingIpDoc>(store, Kind::FloatingIp, None)?
        .into_iter()
        .filter(|(_, f)| f.port_id.as_deref().is_some_and(|p| bound_ids.contains(p)))
        .map(|(id, f)| {
            json!({"id": id, "floating_network_id": f.floating_network_id,
                   "floating_ip_address": f.floating_ip_address, "port_id": f.port_id,
                   "fixed_ip_address": f.fixed_ip_address, "project_id": f.project_id})
        })
        .collect();
    Ok(
        json!({"generation": generation, "networks": net_docs, "subnets": subnet_docs,
              "security_groups": group_docs, "security_group_rules": rule_docs,
              "ports": port_docs, "routers": router_docs, "floatingips": fip_docs}),
    )
}

/// Errors pushing state to a node.
#[derive(Debug, thiserror::Error)]
pub enum PushError {
    /// The store failed while computing the state.
    #[error("computing the node's network state")]
    Store(#[source] StoreError),
    /// The agent did not take it.
    #[error("the agent did not apply the network state")]
    Agent(#[source] AgentError),
    /// The agent applied part of it.
    #[error("the agent applied the network state with errors: {0}")]
    Partial(String),
}

/// Pushes node `node`'s state to its agent at `url` and waits until it is applied.
pub async fn push(svc: &Arc<Service>, node: &str, url: &str) -> Result<(), PushError> {
    let _serial = svc.net_sync.lock().await;
    let node2 = node.to_string();
    let svc2 = svc.clone();
    let state = tokio::task::spawn_blocking(move || node_state(&*svc2.store, &node2))
        .await
        .map_err(|e| PushError::Partial(format!("state task failed: {e}")))?
        .map_err(PushError::Store)?;
    let (_, answer) = agent::call(url, Method::PUT, "/v1/network", Some(&state), PUSH_DEADLINE)
        .await
        .map_err(PushError::Agent)?;
    match answer.get("errors").and_then(Value::as_array) {
        Some(errors) if !errors.is_empty() => Err(PushError::Partial(
            errors
                .iter()
                .map(|e| e.as_str().unwrap_or_default().to_string())
                .collect::<Vec<_>>()
                .join("; "),
        )),
        _ => Ok(()),
    }
}

/// Pushes to every node that is up (after a change), logging failures: a node that misses
/// a push is behind at its next heartbeat and gets the state then.
pub async fn push_all(svc: Arc<Service>) {
    let svc2 = svc.clone();
    let nodes = tokio::task::spawn_blocking(move || {
        let now = crate::identity::token::now_secs();
        let c = &svc2.config.raw.compute;
        let down_after = c.heartbeat_interval_secs * c.missed_heartbeats;
        crate::compute::list_nodes(&*svc2.store).map(|l| {
            l.into_iter()
                .filter(|(_, d)| d.is_up(now, down_after))
                .map(|(r, d)| (r.id, d.agent_url))
                .collect::<Vec<_>>()
        })
    })
    .await;
    let Ok(Ok(nodes)) = nodes else {
        tracing::warn!("listing nodes for a network push failed");
        return;
    };
    for (id, url) in nodes {
        if url.is_empty() {
            continue;
        }
        if let Err(e) = push(&svc, &id, &url).await {
            tracing::warn!(node = %id, error = %e, source = ?std::error::Error::source(&e), "network push failed; retried at its next heartbeat");
        }
    }
}

/// Called for each heartbeat: pushes again to a node whose agent reports an older
/// generation than the store's.
pub fn on_heartbeat(svc: &Arc<Service>, node: &str, url: &str, applied: Option<u64>) {
    let Some(applied) = applied else {
        return;
    };
    let Ok(current) = generation(&*svc.store) else {
        return;
    };
    if applied >= current || url.is_empty() {
        return;
    }
    let (svc, node, url) = (svc.clone(), node.to_string(), url.to_string());
    tokio::spawn(async move {
        if let Err(e) = push(&svc, &node, &url).await {
            tracing::warn!(node = %node, error = %e, "network push after a heartbeat failed");
        }
    });
}
