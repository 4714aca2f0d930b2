//! The control plane: Neutron's resources, persisted, translated into datapath maps.
//!
//! [`Controller`] owns the state (networks, subnets, ports, routers, security groups and
//! rules), persists it after every change (write a temporary file, fsync, rename), and
//! re-synchronises the datapath: every port whose interface exists (`tap` + the first 11
//! characters of its id, as Neutron names taps) is programmed and its tc program attached;
//! router interfaces become router MACs and connected routes; security-group rules are
//! summed over a port's groups, with remote groups expanded to their ports' addresses.
//! [`Controller::handle`] is the whole API as a synchronous function; [`http`] serves it.

pub mod http;
pub mod model;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ffi::CString;
use std::io::Write;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::datapath::{
    Datapath, DatapathError, Direction, DropReason, Expired, Gc, PortSpec, RuleSpec,
};
use crate::dhcp::{Lease, Leases, Stats as DhcpStats};
use model::*;

/// Errors of the API, each mapped to an HTTP status and a stable code in one place.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// No such resource.
    #[error("{0} {1} not found")]
    NotFound(&'static str, String),
    /// The request is malformed or inconsistent.
    #[error("{0}")]
    BadRequest(String),
    /// The request conflicts with the current state.
    #[error("{0}")]
    Conflict(String),
    /// No such route or method.
    #[error("no such resource")]
    NoRoute,
    /// The state could not be persisted.
    #[error("persist state to {0}")]
    Persist(PathBuf, #[source] std::io::Error),
    /// The datapath refused an update.
    #[error("program the datapath")]
    Datapath(#[source] DatapathError),
}

impl ApiError {
    /// The HTTP status and stable error code.
    pub fn status_and_code(&self) -> (u16, &'static str) {
        match self {
            ApiError::NotFound(..) => (404, "ItemNotFound"),
            ApiError::BadRequest(_) => (400, "BadRequest"),
            ApiError::Conflict(_) => (409, "Conflict"),
            ApiError::NoRoute => (404, "ResourceNotFound"),
            ApiError::Persist(..) | ApiError::Datapath(_) => (500, "InternalError"),
        }
    }
}

/// Everything persisted.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct State {
    /// Networks by id.
    pub networks: BTreeMap<String, Network>,
    /// Subnets by id.
    pub subnets: BTreeMap<String, Subnet>,
    /// Ports by id.
    pub ports: BTreeMap<String, Port>,
    /// Routers by id.
    pub routers: BTreeMap<String, Router>,
    /// Security groups by id (rules kept separately).
    pub security_groups: BTreeMap<String, SecurityGroup>,
    /// Rules by id.
    pub security_group_rules: BTreeMap<String, SecurityGroupRule>,
    /// Floating IPs by id.
    #[serde(default)]
    pub floatingips: BTreeMap<String, FloatingIp>,
    /// The datapath's numeric ids for networks, routers and rules, by UUID.
    pub numbers: BTreeMap<String, u32>,
    /// The next numeric id.
    pub next_number: u32,
}

impl State {
    fn number(&mut self, uuid: &str) -> u32 {
        if let Some(n) = self.numbers.get(uuid) {
            return *n;
        }
        self.next_number = self.next_number.max(1);
        let n = self.next_number;
        self.next_number += 1;
        self.numbers.insert(uuid.to_string(), n);
        n
    }
}

/// The ifindex of `name` in this process's namespace, if it exists.
fn ifindex(name: &str) -> Option<u32> {
    let c = CString::new(name).ok()?;
    // SAFETY: `c` is a valid NUL-terminated string for the duration of the call.
    let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
    (i != 0).then_some(i)
}

fn new_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// The id a create request asks for, or a new UUID. A given id must be 1 to 64 of
/// `[A-Za-z0-9_-]` and not taken.
fn chosen_id(id: Option<String>, taken: impl Fn(&str) -> bool) -> Result<String, ApiError> {
    match id {
        None => Ok(new_id()),
        Some(id)
            if id.is_empty()
                || id.len() > 64
                || !id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') =>
        {
            Err(ApiError::BadRequest(format!(
                "invalid id {id:?}: 1 to 64 of [A-Za-z0-9_-]"
            )))
        }
        Some(id) if taken(&id) => Err(ApiError::Conflict(format!("{id} already exists"))),
        Some(id) => Ok(id),
    }
}

fn new_mac() -> String {
    let b = uuid::Uuid::new_v4().into_bytes();
    format!("fa:16:3e:{:02x}:{:02x}:{:02x}", b[0], b[1], b[2])
}

/// Neutron's state, its persistence, and the datapath it drives.
pub struct Controller {
    state: State,
    path: Option<PathBuf>,
    dp: Option<Datapath>,
    attached: HashSet<String>,
    programmed: HashMap<String, u32>,
    /// Floating IPs in the datapath: (router, fip, fixed, external network).
    fips: HashSet<(u32, Ipv4Addr, Ipv4Addr, u32)>,
    /// The DHCP server's lease table and lease time, when the slow path serves DHCP.
    dhcp: Option<(Leases, u32)>,
    /// The DHCP server's counters, exported at `/metrics`.
    dhcp_stats: Option<Arc<DhcpStats>>,
    /// Router interfaces and gateways in the datapath.
    router_ifaces: HashSet<RouterIface>,
    /// Routers doing gateway SNAT in the datapath, with their gateway address.
    snat: HashMap<u32, Ipv4Addr>,
    /// Extra routes in the datapath.
    extra_routes: HashMap<RouteKey, ExtraHop>,
    /// Entries the conntrack GC removed so far (added to by [`GcTask`]s without the lock).
    expired: Arc<ExpiredTotals>,
}

/// Running totals of what the conntrack GC removed.
#[derive(Debug, Default)]
struct ExpiredTotals {
    connections: std::sync::atomic::AtomicU64,
    translations: std::sync::atomic::AtomicU64,
    /// GC runs finished.
    runs: std::sync::atomic::AtomicU64,
    /// How long the last run took, in ns.
    last_run_ns: std::sync::atomic::AtomicU64,
}

/// The conntrack GC, detached from the controller ([`Controller::gc_task`]): it walks the
/// conntrack and SNAT maps on its own descriptors, so a GC over a large table never holds
/// the controller's lock, and adds what it removed to the controller's `/metrics`.
#[derive(Debug)]
pub struct GcTask {
    gc: Gc,
    totals: Arc<ExpiredTotals>,
}

impl GcTask {
    /// Removes tracked connections and gateway SNAT translations idle past their timeouts
    /// (see [`Gc::expire`]); returns what went.
    pub fn run(&mut self) -> Result<Expired, ApiError> {
        use std::sync::atomic::Ordering::Relaxed;
        let t = std::time::Instant::now();
        let e = self.gc.expire().map_err(ApiError::Datapath)?;
        let took = u64::try_from(t.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.totals
            .connections
            .fetch_add(e.connections as u64, Relaxed);
        self.totals
            .translations
            .fetch_add(e.translations as u64, Relaxed);
        self.totals.last_run_ns.store(took, Relaxed);
        self.totals.runs.fetch_add(1, Relaxed);
        Ok(e)
    }
}

/// A router interface as programmed: (router, network, MAC, address, subnet, and for a
/// gateway `Some(upstream next hop)`).
type RouterIface = (
    u32,
    u32,
    [u8; 6],
    Ipv4Addr,
    (Ipv4Addr, u8),
    Option<Option<Ipv4Addr>>,
);

/// A route's key in the datapath: (router, destination network, prefix length).
type RouteKey = (u32, Ipv4Addr, u8);

/// Where an extra route leads: (network, next hop, the router's MAC there, whether that
/// network is the router's gateway's).
type ExtraHop = (u32, Ipv4Addr, [u8; 6], bool);

/// The keys of the routes router interfaces and gateways install: their subnets, and the
/// default route of a gateway with an upstream.
fn connected_routes(ifaces: &HashSet<RouterIface>) -> HashSet<RouteKey> {
    let mut routes = HashSet::new();
    for (r, _, _, _, (addr, len), gateway) in ifaces {
        let masked = Ipv4Addr::from(u32::from(*addr) & mask(*len));
        routes.insert((*r, masked, *len));
        if let Some(Some(_)) = gateway {
            routes.insert((*r, Ipv4Addr::UNSPECIFIED, 0));
        }
    }
    routes
}

impl std::fmt::Debug for Controller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Controller")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl Controller {
    /// Opens the state at `path` (empty if absent) and drives `dp` (none: state only).
    pub fn open(path: Option<PathBuf>, dp: Option<Datapath>) -> Result<Self, ApiError> {
        let state = match &path {
            Some(p) if p.exists() => {
                let bytes = std::fs::read(p).map_err(|e| ApiError::Persist(p.clone(), e))?;
                serde_json::from_slice(&bytes)
                    .map_err(|e| ApiError::Persist(p.clone(), std::io::Error::other(e)))?
            }
            _ => State::default(),
        };
        let mut c = Controller {
            state,
            path,
            dp,
            attached: HashSet::new(),
            programmed: HashMap::new(),
            fips: HashSet::new(),
            dhcp: None,
            dhcp_stats: None,
            router_ifaces: HashSet::new(),
            snat: HashMap::new(),
            extra_routes: HashMap::new(),
            expired: Arc::default(),
        };
        c.sync()?;
        c.remove_stale_ports()?;
        Ok(c)
    }

    /// Serves DHCP for ports on DHCP-enabled subnets from now on: fills `leases` (read by a
    /// [`crate::dhcp::Server`]) on every sync and marks those ports so that the datapath
    /// hands their DHCP requests to the slow path.
    /// `stats` are the server's counters, exported at `/metrics`.
    pub fn serve_dhcp(
        &mut self,
        leases: Leases,
        lease_secs: u32,
        stats: Arc<DhcpStats>,
    ) -> Result<(), ApiError> {
        self.dhcp = Some((leases, lease_secs));
        self.dhcp_stats = Some(stats);
        self.sync()
    }

    /// The DHCP lease of a port, if it has a fixed IP on a DHCP-enabled subnet.
    fn lease_of(&self, p: &Port, mac: [u8; 6], lease_secs: u32) -> Option<Lease> {
        let s = &self.state;
        let (ip, sub) = p.fixed_ips.iter().find_map(|f| {
            let sub = s.subnets.get(&f.subnet_id).filter(|x| x.enable_dhcp)?;
            Some((f.ip_address?, sub))
        })?;
        let (_, prefix_len) = parse_cidr(&sub.cidr)?;
        let mtu = s.networks.get(&p.network_id).map_or(1500, |n| n.mtu);
        // The server answers from the subnet's gateway: the router's MAC when a router has
        // an interface there (unicast renewals reach it through the datapath's ARP).
        let server_mac = s
            .ports
            .values()
            .find(|r| {
                r.device_owner == "network:router_interface"
                    && r.fixed_ips.iter().any(|f| f.subnet_id == sub.id)
            })
            .and_then(|r| parse_mac(&r.mac_address))
            .unwrap_or(DHCP_SERVER_MAC);
        Some(Lease {
            mac,
            ip,
            prefix_len,
            gateway: sub.gateway_ip,
            dns: sub.dns_nameservers.clone(),
            mtu: u16::try_from(mtu).unwrap_or(u16::MAX),
            lease_secs,
            server_ip: sub.gateway_ip.unwrap_or(ip),
            server_mac,
        })
    }

    /// The datapath this controller drives, if any.
    pub fn datapath(&self) -> Option<&Datapath> {
        self.dp.as_ref()
    }

    /// Reconciliation after a restart: ports left in pinned maps that the state no longer
    /// has (deleted while the daemon was down, or their interface gone) are removed.
    fn remove_stale_ports(&mut self) -> Result<(), ApiError> {
        let Some(dp) = self.dp.as_mut() else {
            return Ok(());
        };
        let live: HashSet<u32> = self.programmed.values().copied().collect();
        for ifindex in dp.port_ifindexes().map_err(ApiError::Datapath)? {
            if !live.contains(&ifindex) {
                tracing::info!(ifindex, "removing a stale port from the datapath");
                dp.remove_port(ifindex).map_err(ApiError::Datapath)?;
            }
        }
        // Router interfaces and gateways removed while the daemon was down.
        let ifaces = self
            .router_ifaces
            .iter()
            .map(|(r, net, mac, ..)| (*r, *net, *mac))
            .collect();
        let mut routes = connected_routes(&self.router_ifaces);
        routes.extend(self.extra_routes.keys().copied());
        let snat = self.snat.keys().copied().collect();
        dp.prune_routers(&ifaces, &routes, &snat)
            .map_err(ApiError::Datapath)?;
        Ok(())
    }

    /// The conntrack GC: removes tracked connections and gateway SNAT translations idle
    /// past their timeouts (see [`Datapath::expire`]); returns what went.
    pub fn expire(&mut self) -> Result<Expired, ApiError> {
        match self.gc_task()? {
            Some(mut gc) => gc.run(),
            None => Ok(Expired::default()),
        }
    }

    /// The conntrack GC as a task of its own that runs without this controller (and its
    /// lock); `None` without a datapath.
    pub fn gc_task(&self) -> Result<Option<GcTask>, ApiError> {
        let Some(dp) = self.dp.as_ref() else {
            return Ok(None);
        };
        Ok(Some(GcTask {
            gc: dp.gc().map_err(ApiError::Datapath)?,
            totals: self.expired.clone(),
        }))
    }

    /// The current state.
    pub fn state(&self) -> &State {
        &self.state
    }

    fn persist(&self) -> Result<(), ApiError> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        let err = |e| ApiError::Persist(path.clone(), e);
        let tmp = path.with_extension("tmp");
        let bytes = serde_json::to_vec_pretty(&self.state).map_err(|e| err(e.into()))?;
        let mut f = std::fs::File::create(&tmp).map_err(err)?;
        f.write_all(&bytes).map_err(err)?;
        f.sync_all().map_err(err)?;
        std::fs::rename(&tmp, path).map_err(err)?;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(err)?;
        }
        Ok(())
    }

    /// Handles one API request; returns the status and the JSON body.
    pub fn handle(
        &mut self,
        method: &str,
        path: &str,
        body: &[u8],
    ) -> Result<(u16, Value), ApiError> {
        let path = path.split('?').next().unwrap_or(path);
        let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
        let (status, value, changed) = match (method, parts.as_slice()) {
            ("GET", ["v2.0", coll]) => (200, self.list(coll)?, false),
            ("GET", ["v2.0", coll, id]) => (200, self.show(coll, id)?, false),
            ("POST", ["v2.0", coll]) => (201, self.create(coll, body)?, true),
            ("PUT", ["v2.0", "ports", id]) => (200, self.update_port(id, body)?, true),
            ("PUT", ["v2.0", "routers", id]) => (200, self.update_router(id, body)?, true),
            ("PUT", ["v2.0", "floatingips", id]) => (200, self.update_fip(id, body)?, true),
            ("PUT", ["v2.0", "routers", id, "add_router_interface"]) => {
                (200, self.add_router_interface(id, body)?, true)
            }
            ("PUT", ["v2.0", "routers", id, "remove_router_interface"]) => {
                (200, self.remove_router_interface(id, body)?, true)
            }
            ("PUT", ["v2.0", "routers", id, "add_extraroutes"]) => {
                (200, self.change_routes(id, body, true)?, true)
            }
            ("PUT", ["v2.0", "routers", id, "remove_extraroutes"]) => {
                (200, self.change_routes(id, body, false)?, true)
            }
            ("DELETE", ["v2.0", coll, id]) => {
                self.delete(coll, id)?;
                (204, Value::Null, true)
            }
            _ => return Err(ApiError::NoRoute),
        };
        if changed {
            self.persist()?;
            self.sync()?;
        }
        Ok((status, value))
    }

    fn list(&self, coll: &str) -> Result<Value, ApiError> {
        let s = &self.state;
        Ok(match coll {
            "networks" => json!({ "networks": s.networks.values().collect::<Vec<_>>() }),
            "subnets" => json!({ "subnets": s.subnets.values().collect::<Vec<_>>() }),
            "ports" => {
                json!({ "ports": s.ports.values().map(|p| self.port_view(p)).collect::<Vec<_>>() })
            }
            "routers" => json!({ "routers": s.routers.values().collect::<Vec<_>>() }),
            "security-groups" => json!({ "security_groups": s
                .security_groups
                .values()
                .map(|g| self.group_view(g))
                .collect::<Vec<_>>() }),
            "security-group-rules" => json!({ "security_group_rules": s
                .security_group_rules
                .values()
                .collect::<Vec<_>>() }),
            "floatingips" => json!({ "floatingips": s.floatingips.values().collect::<Vec<_>>() }),
            _ => return Err(ApiError::NoRoute),
        })
    }

    fn show(&self, coll: &str, id: &str) -> Result<Value, ApiError> {
        let s = &self.state;
        let nf = |what| ApiError::NotFound(what, id.to_string());
        Ok(match coll {
            "networks" => json!({ "network": s.networks.get(id).ok_or(nf("network"))? }),
            "subnets" => json!({ "subnet": s.subnets.get(id).ok_or(nf("subnet"))? }),
            "ports" => json!({ "port": self.port_view(s.ports.get(id).ok_or(nf("port"))?) }),
            "routers" => json!({ "router": s.routers.get(id).ok_or(nf("router"))? }),
            "security-groups" => json!({ "security_group":
                self.group_view(s.security_groups.get(id).ok_or(nf("security_group"))?) }),
            "security-group-rules" => json!({ "security_group_rule":
                s.security_group_rules.get(id).ok_or(nf("security_group_rule"))? }),
            "floatingips" => {
                json!({ "floatingip": s.floatingips.get(id).ok_or(nf("floatingip"))? })
            }
            _ => return Err(ApiError::NoRoute),
        })
    }

    fn port_view(&self, p: &Port) -> Port {
        let mut p = p.clone();
        p.status = if self.programmed.contains_key(&p.id) {
            "ACTIVE".into()
        } else {
            "DOWN".into()
        };
        p
    }

    fn group_view(&self, g: &SecurityGroup) -> SecurityGroup {
        let mut g = g.clone();
        g.security_group_rules = self
            .state
            .security_group_rules
            .values()
            .filter(|r| r.security_group_id == g.id)
            .cloned()
            .collect();
        g
    }

    fn create(&mut self, coll: &str, body: &[u8]) -> Result<Value, ApiError> {
        match coll {
            "networks" => {
                let req: NetworkCreate = unwrap_body(body, "network")?;
                let n = Network {
                    id: chosen_id(req.id, |i| self.state.networks.contains_key(i))?,
                    name: req.name,
                    project_id: req.project_id,
                    admin_state_up: req.admin_state_up.unwrap_or(true),
                    mtu: req.mtu.unwrap_or(1500),
                    subnets: vec![],
                    status: "ACTIVE".into(),
                    router_external: req.router_external.unwrap_or(false),
                };
                self.state.number(&n.id);
                self.state.networks.insert(n.id.clone(), n.clone());
                Ok(json!({ "network": n }))
            }
            "subnets" => {
                let req: SubnetCreate = unwrap_body(body, "subnet")?;
                if req.ip_version != 4 {
                    return Err(ApiError::BadRequest(
                        "only ip_version 4 is supported".into(),
                    ));
                }
                let (addr, len) = parse_cidr(&req.cidr)
                    .ok_or_else(|| ApiError::BadRequest(format!("invalid cidr {}", req.cidr)))?;
                let base = u32::from(addr) & mask(len);
                let id = chosen_id(req.id, |i| self.state.subnets.contains_key(i))?;
                let net = self
                    .state
                    .networks
                    .get_mut(&req.network_id)
                    .ok_or_else(|| ApiError::NotFound("network", req.network_id.clone()))?;
                let s = Subnet {
                    id,
                    name: req.name,
                    network_id: req.network_id,
                    project_id: req.project_id,
                    ip_version: 4,
                    cidr: format!("{}/{len}", Ipv4Addr::from(base)),
                    gateway_ip: Some(req.gateway_ip.unwrap_or(Ipv4Addr::from(base + 1))),
                    enable_dhcp: req.enable_dhcp.unwrap_or(true),
                    dns_nameservers: req.dns_nameservers.unwrap_or_default(),
                };
                net.subnets.push(s.id.clone());
                self.state.subnets.insert(s.id.clone(), s.clone());
                Ok(json!({ "subnet": s }))
            }
            "ports" => {
                let req: PortCreate = unwrap_body(body, "port")?;
                let p = self.new_port(req)?;
                Ok(json!({ "port": self.port_view(&p) }))
            }
            "routers" => {
                let req: RouterCreate = unwrap_body(body, "router")?;
                let r = Router {
                    id: chosen_id(req.id, |i| self.state.routers.contains_key(i))?,
                    name: req.name,
                    project_id: req.project_id,
                    admin_state_up: req.admin_state_up.unwrap_or(true),
                    external_gateway_info: None,
                    status: "ACTIVE".into(),
                    routes: vec![],
                };
                self.state.number(&r.id);
                self.state.routers.insert(r.id.clone(), r.clone());
                if let Some(info) = req.external_gateway_info {
                    self.set_gateway(&r.id, info)?;
                }
                if let Some(routes) = req.routes {
                    let routes = self.check_routes(&r.id, routes)?;
                    self.state.routers.get_mut(&r.id).expect("inserted").routes = routes;
                }
                Ok(json!({ "router": self.state.routers[&r.id] }))
            }
            "security-groups" => {
                let req: SecurityGroupCreate = unwrap_body(body, "security_group")?;
                let id = chosen_id(req.id, |i| self.state.security_groups.contains_key(i))?;
                let g = self.new_group(id, req.name, req.description, req.project_id, false);
                Ok(json!({ "security_group": self.group_view(&g) }))
            }
            "security-group-rules" => {
                let req: SecurityGroupRuleCreate = unwrap_body(body, "security_group_rule")?;
                let r = self.new_rule(req)?;
                Ok(json!({ "security_group_rule": r }))
            }
            "floatingips" => {
                let req: FloatingIpCreate = unwrap_body(body, "floatingip")?;
                let net_id = req.floating_network_id.clone().ok_or_else(|| {
                    ApiError::BadRequest("floating_network_id is required".into())
                })?;
                let net = self
                    .state
                    .networks
                    .get(&net_id)
                    .filter(|n| n.router_external)
                    .ok_or_else(|| {
                        ApiError::BadRequest(format!("{net_id} is not an external network"))
                    })?;
                let id = chosen_id(req.id.clone(), |i| self.state.floatingips.contains_key(i))?;
                let subnet = net
                    .subnets
                    .first()
                    .and_then(|s| self.state.subnets.get(s))
                    .ok_or_else(|| ApiError::Conflict("external network has no subnet".into()))?
                    .clone();
                let taken: HashSet<Ipv4Addr> = self
                    .state
                    .floatingips
                    .values()
                    .map(|f| f.floating_ip_address)
                    .collect();
                let address = match req.floating_ip_address {
                    Some(a) if taken.contains(&a) => {
                        return Err(ApiError::Conflict(format!("{a} is already allocated")));
                    }
                    Some(a) => a,
                    None => self.allocate_ip_excluding(&subnet, &taken)?,
                };
                let fip = FloatingIp {
                    id,
                    floating_network_id: net_id,
                    floating_ip_address: address,
                    port_id: None,
                    fixed_ip_address: None,
                    router_id: None,
                    project_id: req.project_id,
                    status: "DOWN".into(),
                };
                self.state.floatingips.insert(fip.id.clone(), fip.clone());
                if let Some(Some(port)) = req.port_id {
                    self.associate(&fip.id, Some(port), req.fixed_ip_address)?;
                }
                Ok(json!({ "floatingip": self.state.floatingips[&fip.id] }))
            }
            _ => Err(ApiError::NoRoute),
        }
    }

    fn update_router(&mut self, id: &str, body: &[u8]) -> Result<Value, ApiError> {
        let req: RouterUpdate = unwrap_body(body, "router")?;
        if !self.state.routers.contains_key(id) {
            return Err(ApiError::NotFound("router", id.into()));
        }
        // Routes are checked against the router's ports before any gateway change, as
        // Neutron does.
        let routes = match req.routes {
            Some(r) => Some(self.check_routes(id, r.unwrap_or_default())?),
            None => None,
        };
        if let Some(name) = req.name {
            self.state.routers.get_mut(id).expect("checked").name = name;
        }
        if let Some(routes) = routes {
            self.state.routers.get_mut(id).expect("checked").routes = routes;
        }
        match req.external_gateway_info {
            None => {}
            Some(None) => self.clear_gateway(id)?,
            Some(Some(v)) if v.as_object().is_some_and(|o| o.is_empty()) => {
                self.clear_gateway(id)?
            }
            Some(Some(info)) => self.set_gateway(id, info)?,
        }
        Ok(json!({ "router": self.state.routers[id] }))
    }

    /// Neutron's `add_extraroutes` (`add`) and `remove_extraroutes`: the router's routes
    /// with `body`'s added (duplicates merged) or removed (absent ones ignored), checked as
    /// a whole as an update's are.
    fn change_routes(&mut self, id: &str, body: &[u8], add: bool) -> Result<Value, ApiError> {
        let req: RoutesChange = unwrap_body(body, "router")?;
        let r = self
            .state
            .routers
            .get(id)
            .ok_or_else(|| ApiError::NotFound("router", id.into()))?;
        let routes: Vec<ExtraRoute> = if add {
            r.routes.iter().chain(&req.routes).cloned().collect()
        } else {
            r.routes
                .iter()
                .filter(|x| !req.routes.contains(x))
                .cloned()
                .collect()
        };
        let routes = self.check_routes(id, routes)?;
        self.state.routers.get_mut(id).expect("checked").routes = routes;
        Ok(json!({ "router": self.state.routers[id] }))
    }

    /// Checks a router's whole new set of routes as Neutron does (destinations are
    /// network CIDRs; each next hop is on a subnet of one of the router's ports and is not
    /// the router's own address; at most [`MAX_ROUTES`]); returns them sorted, without
    /// duplicates.
    fn check_routes(
        &self,
        router_id: &str,
        mut routes: Vec<ExtraRoute>,
    ) -> Result<Vec<ExtraRoute>, ApiError> {
        for r in &routes {
            let (addr, len) = parse_cidr(&r.destination).ok_or_else(|| {
                ApiError::BadRequest(format!(
                    "Invalid input for routes. Reason: '{}' is not a valid IP subnet.",
                    r.destination
                ))
            })?;
            let net = Ipv4Addr::from(u32::from(addr) & mask(len));
            if net != addr {
                return Err(ApiError::BadRequest(format!(
                    "Invalid input for routes. Reason: '{}' isn't a recognized IP subnet cidr, '{net}/{len}' is recommended.",
                    r.destination
                )));
            }
        }
        let shown = routes_repr(&routes);
        routes.sort();
        routes.dedup();
        if routes.len() > MAX_ROUTES {
            return Err(ApiError::BadRequest(format!(
                "Unable to complete operation for {router_id}. The number of routes exceeds the maximum {MAX_ROUTES}."
            )));
        }
        let mut cidrs = vec![];
        let mut own = vec![];
        for p in self
            .state
            .ports
            .values()
            .filter(|p| p.device_id == router_id)
        {
            for f in &p.fixed_ips {
                if let Some(c) = self
                    .state
                    .subnets
                    .get(&f.subnet_id)
                    .and_then(|s| parse_cidr(&s.cidr))
                {
                    cidrs.push(c);
                }
                own.extend(f.ip_address);
            }
        }
        for r in &routes {
            if !cidrs.iter().any(|c| in_cidr(r.nexthop, *c)) {
                return Err(ApiError::BadRequest(format!(
                    "Invalid format for routes: {shown}, the nexthop is not connected with router"
                )));
            }
            if own.contains(&r.nexthop) {
                return Err(ApiError::BadRequest(format!(
                    "Invalid format for routes: {shown}, the nexthop is used by router"
                )));
            }
        }
        Ok(routes)
    }

    /// Removes a router's gateway port; refused while floating IPs go through the router.
    fn clear_gateway(&mut self, router_id: &str) -> Result<(), ApiError> {
        if self
            .state
            .floatingips
            .values()
            .any(|f| f.router_id.as_deref() == Some(router_id))
        {
            return Err(ApiError::Conflict(format!(
                "router {router_id}'s gateway is in use by floating IPs"
            )));
        }
        self.state.ports.retain(|_, p| {
            !(p.device_owner == "network:router_gateway" && p.device_id == router_id)
        });
        self.state
            .routers
            .get_mut(router_id)
            .expect("checked")
            .external_gateway_info = None;
        Ok(())
    }

    /// Neutron's `remove_router_interface`: by subnet or by port. Refused while floating
    /// IPs use the router for a port on that subnet.
    fn remove_router_interface(&mut self, router_id: &str, body: &[u8]) -> Result<Value, ApiError> {
        let req: RouterInterface = serde_json::from_slice(body)
            .map_err(|e| ApiError::BadRequest(format!("invalid body: {e}")))?;
        if !self.state.routers.contains_key(router_id) {
            return Err(ApiError::NotFound("router", router_id.to_string()));
        }
        if req.subnet_id.is_none() && req.port_id.is_none() {
            return Err(ApiError::BadRequest(
                "subnet_id or port_id is required".into(),
            ));
        }
        let port = self
            .state
            .ports
            .values()
            .find(|p| {
                p.device_owner == "network:router_interface"
                    && p.device_id == router_id
                    && req.port_id.as_ref().is_none_or(|id| &p.id == id)
                    && req
                        .subnet_id
                        .as_ref()
                        .is_none_or(|s| p.fixed_ips.iter().any(|f| &f.subnet_id == s))
            })
            .cloned()
            .ok_or_else(|| {
                ApiError::NotFound(
                    "router interface",
                    req.port_id.or(req.subnet_id).unwrap_or_default(),
                )
            })?;
        let subnets: Vec<String> = port.fixed_ips.iter().map(|f| f.subnet_id.clone()).collect();
        let routes = &self.state.routers[router_id].routes;
        for sub in subnets.iter().filter_map(|s| self.state.subnets.get(s)) {
            let Some(cidr) = parse_cidr(&sub.cidr) else {
                continue;
            };
            if routes.iter().any(|r| in_cidr(r.nexthop, cidr)) {
                return Err(ApiError::Conflict(format!(
                    "Router interface for subnet {} on router {router_id} cannot be deleted, as it is required by one or more routes.",
                    sub.id
                )));
            }
        }
        let in_use = self.state.floatingips.values().any(|f| {
            f.router_id.as_deref() == Some(router_id)
                && f.port_id
                    .as_ref()
                    .and_then(|p| self.state.ports.get(p))
                    .is_some_and(|p| p.fixed_ips.iter().any(|x| subnets.contains(&x.subnet_id)))
        });
        if in_use {
            return Err(ApiError::Conflict(format!(
                "router interface {} is in use by floating IPs",
                port.id
            )));
        }
        self.state.ports.remove(&port.id);
        Ok(json!({
            "id": router_id,
            "subnet_id": subnets.first(),
            "subnet_ids": subnets,
            "port_id": port.id,
            "network_id": port.network_id,
        }))
    }

    /// Gives a router its gateway port on an external network (`{"network_id": ...}`).
    fn set_gateway(&mut self, router_id: &str, info: Value) -> Result<(), ApiError> {
        let net_id = info
            .get("network_id")
            .and_then(Value::as_str)
            .ok_or_else(|| ApiError::BadRequest("external_gateway_info needs network_id".into()))?
            .to_string();
        let enable_snat = match info.get("enable_snat") {
            None | Some(Value::Null) => true,
            Some(Value::Bool(b)) => *b,
            Some(other) => {
                return Err(ApiError::BadRequest(format!(
                    "enable_snat must be a boolean, not {other}"
                )));
            }
        };
        let gw = self
            .state
            .ports
            .values()
            .find(|p| p.device_owner == "network:router_gateway" && p.device_id == router_id)
            .cloned();
        if let Some(gw) = gw {
            if gw.network_id != net_id {
                return Err(ApiError::Conflict(
                    "router already has a gateway on another network; clear it first".into(),
                ));
            }
            // Same network: only enable_snat changes.
            let r = self.state.routers.get_mut(router_id).expect("checked");
            r.external_gateway_info = Some(json!({
                "network_id": net_id,
                "enable_snat": enable_snat,
                "external_fixed_ips": gw.fixed_ips,
            }));
            return Ok(());
        }
        if !self
            .state
            .networks
            .get(&net_id)
            .is_some_and(|n| n.router_external)
        {
            return Err(ApiError::BadRequest(format!(
                "{net_id} is not an external network"
            )));
        }
        // A given gateway address (`external_fixed_ips: [{"ip_address": ...}]`, as control
        // sends it so that every node's router has the same one), else one allocated here.
        let mut fixed_ips = None;
        if let Some(want) = info
            .get("external_fixed_ips")
            .and_then(Value::as_array)
            .and_then(|a| a.first())
        {
            let ip: Option<Ipv4Addr> = match want.get("ip_address") {
                None | Some(Value::Null) => None,
                Some(v) => Some(
                    v.as_str()
                        .and_then(|s| s.parse().ok())
                        .ok_or_else(|| ApiError::BadRequest(format!("invalid ip_address {v}")))?,
                ),
            };
            let subnet = match want.get("subnet_id").and_then(Value::as_str) {
                Some(sid) => Some(sid.to_string()),
                None => self
                    .state
                    .subnets
                    .values()
                    .filter(|s| s.network_id == net_id)
                    .find(|s| {
                        ip.is_some_and(|ip| {
                            parse_cidr(&s.cidr).is_some_and(|(b, l)| {
                                u32::from(ip) & mask(l) == u32::from(b) & mask(l)
                            })
                        })
                    })
                    .map(|s| s.id.clone()),
            };
            if let Some(subnet_id) = subnet {
                fixed_ips = Some(vec![FixedIpRequest {
                    subnet_id: Some(subnet_id),
                    ip_address: ip,
                }]);
            } else if ip.is_some() {
                return Err(ApiError::BadRequest(format!(
                    "no subnet of {net_id} holds the requested gateway address"
                )));
            }
        }
        let p = self.new_port(PortCreate {
            network_id: Some(net_id.clone()),
            fixed_ips,
            security_groups: Some(vec![]),
            port_security_enabled: Some(false),
            device_owner: Some("network:router_gateway".into()),
            device_id: Some(router_id.into()),
            ..Default::default()
        })?;
        let r = self.state.routers.get_mut(router_id).expect("checked");
        r.external_gateway_info = Some(json!({
            "network_id": net_id,
            "enable_snat": enable_snat,
            "external_fixed_ips": p.fixed_ips,
        }));
        Ok(())
    }

    fn update_fip(&mut self, id: &str, body: &[u8]) -> Result<Value, ApiError> {
        let req: FloatingIpCreate = unwrap_body(body, "floatingip")?;
        if !self.state.floatingips.contains_key(id) {
            return Err(ApiError::NotFound("floatingip", id.into()));
        }
        if let Some(port) = req.port_id {
            self.associate(id, port, req.fixed_ip_address)?;
        }
        Ok(json!({ "floatingip": self.state.floatingips[id] }))
    }

    /// Maps a floating IP to a port (through the router that has a gateway on the FIP's
    /// network and an interface on the port's subnet), or unmaps it.
    fn associate(
        &mut self,
        fip_id: &str,
        port_id: Option<String>,
        fixed: Option<Ipv4Addr>,
    ) -> Result<(), ApiError> {
        let Some(port_id) = port_id else {
            let f = self.state.floatingips.get_mut(fip_id).expect("checked");
            f.port_id = None;
            f.fixed_ip_address = None;
            f.router_id = None;
            f.status = "DOWN".into();
            return Ok(());
        };
        let port = self
            .state
            .ports
            .get(&port_id)
            .ok_or_else(|| ApiError::NotFound("port", port_id.clone()))?;
        let fixed_ip = port
            .fixed_ips
            .iter()
            .find(|f| fixed.is_none() || f.ip_address == fixed)
            .ok_or_else(|| ApiError::BadRequest("the port has no such fixed IP".into()))?;
        let (subnet_id, address) = (fixed_ip.subnet_id.clone(), fixed_ip.ip_address);
        let ext_net = self.state.floatingips[fip_id].floating_network_id.clone();
        let router = self
            .state
            .ports
            .values()
            .filter(|p| p.device_owner == "network:router_gateway" && p.network_id == ext_net)
            .map(|p| p.device_id.clone())
            .find(|r| {
                self.state.ports.values().any(|p| {
                    p.device_owner == "network:router_interface"
                        && &p.device_id == r
                        && p.fixed_ips.iter().any(|f| f.subnet_id == subnet_id)
                })
            })
            .ok_or_else(|| {
                ApiError::BadRequest(
                    "no router connects the port's subnet to the external network".into(),
                )
            })?;
        let f = self.state.floatingips.get_mut(fip_id).expect("checked");
        f.port_id = Some(port_id);
        f.fixed_ip_address = address;
        f.router_id = Some(router);
        f.status = "ACTIVE".into();
        Ok(())
    }

    /// Creates a group; Neutron's `default` group gets its two standard rules (all egress,
    /// ingress from members of the group).
    fn new_group(
        &mut self,
        id: String,
        name: String,
        description: String,
        project_id: String,
        default: bool,
    ) -> SecurityGroup {
        let g = SecurityGroup {
            id,
            name,
            description,
            project_id: project_id.clone(),
            security_group_rules: vec![],
        };
        self.state.security_groups.insert(g.id.clone(), g.clone());
        let mut rules = vec![("egress", None)];
        if default {
            rules.push(("ingress", Some(g.id.clone())));
        }
        for (direction, remote_group_id) in rules {
            let r = SecurityGroupRule {
                id: new_id(),
                security_group_id: g.id.clone(),
                direction: direction.into(),
                ethertype: "IPv4".into(),
                protocol: None,
                port_range_min: None,
                port_range_max: None,
                remote_ip_prefix: None,
                remote_group_id,
                project_id: project_id.clone(),
            };
            self.state.number(&r.id);
            self.state.security_group_rules.insert(r.id.clone(), r);
        }
        g
    }

    fn new_rule(&mut self, req: SecurityGroupRuleCreate) -> Result<SecurityGroupRule, ApiError> {
        if !self
            .state
            .security_groups
            .contains_key(&req.security_group_id)
        {
            return Err(ApiError::NotFound("security_group", req.security_group_id));
        }
        if req.direction != "ingress" && req.direction != "egress" {
            return Err(ApiError::BadRequest(format!(
                "invalid direction {}",
                req.direction
            )));
        }
        if let Some(p) = &req.protocol
            && protocol_number(p).is_none()
        {
            return Err(ApiError::BadRequest(format!("invalid protocol {p}")));
        }
        if let Some(c) = &req.remote_ip_prefix
            && parse_cidr(c).is_none()
        {
            return Err(ApiError::BadRequest(format!(
                "invalid remote_ip_prefix {c}"
            )));
        }
        if req.remote_ip_prefix.is_some() && req.remote_group_id.is_some() {
            return Err(ApiError::BadRequest(
                "remote_ip_prefix and remote_group_id are exclusive".into(),
            ));
        }
        if let (Some(lo), Some(hi)) = (req.port_range_min, req.port_range_max)
            && lo > hi
            && req.protocol.as_deref() != Some("icmp")
        {
            return Err(ApiError::BadRequest(
                "port_range_min > port_range_max".into(),
            ));
        }
        let r = SecurityGroupRule {
            id: chosen_id(req.id, |i| self.state.security_group_rules.contains_key(i))?,
            security_group_id: req.security_group_id,
            direction: req.direction,
            ethertype: req.ethertype.unwrap_or_else(|| "IPv4".into()),
            protocol: req.protocol,
            port_range_min: req.port_range_min,
            port_range_max: req.port_range_max,
            remote_ip_prefix: req.remote_ip_prefix,
            remote_group_id: req.remote_group_id,
            project_id: req.project_id,
        };
        self.state.number(&r.id);
        self.state
            .security_group_rules
            .insert(r.id.clone(), r.clone());
        Ok(r)
    }

    fn default_group(&mut self, project_id: &str) -> String {
        if let Some(g) = self
            .state
            .security_groups
            .values()
            .find(|g| g.name == "default" && g.project_id == project_id)
        {
            return g.id.clone();
        }
        self.new_group(
            new_id(),
            "default".into(),
            "Default security group".into(),
            project_id.into(),
            true,
        )
        .id
    }

    fn allocate_ip(&self, subnet: &Subnet) -> Result<Ipv4Addr, ApiError> {
        let fips: HashSet<Ipv4Addr> = self
            .state
            .floatingips
            .values()
            .map(|f| f.floating_ip_address)
            .collect();
        self.allocate_ip_excluding(subnet, &fips)
    }

    fn allocate_ip_excluding(
        &self,
        subnet: &Subnet,
        also: &HashSet<Ipv4Addr>,
    ) -> Result<Ipv4Addr, ApiError> {
        let (base, len) = parse_cidr(&subnet.cidr).expect("validated at creation");
        // Addresses on this subnet only: another network's overlapping subnet is its own.
        let used: HashSet<Ipv4Addr> = self
            .state
            .ports
            .values()
            .flat_map(|p| {
                p.fixed_ips
                    .iter()
                    .filter(|f| f.subnet_id == subnet.id)
                    .filter_map(|f| f.ip_address)
            })
            .chain(subnet.gateway_ip)
            .chain(also.iter().copied())
            .collect();
        let first = u32::from(base) + 1;
        let last = u32::from(base) | !mask(len);
        (first..last)
            .map(Ipv4Addr::from)
            .find(|ip| !used.contains(ip))
            .ok_or_else(|| ApiError::Conflict(format!("subnet {} is full", subnet.id)))
    }

    fn new_port(&mut self, req: PortCreate) -> Result<Port, ApiError> {
        let network_id = req
            .network_id
            .ok_or_else(|| ApiError::BadRequest("network_id is required".into()))?;
        let net = self
            .state
            .networks
            .get(&network_id)
            .ok_or_else(|| ApiError::NotFound("network", network_id.clone()))?
            .clone();
        let mac = req.mac_address.unwrap_or_else(new_mac);
        if parse_mac(&mac).is_none() {
            return Err(ApiError::BadRequest(format!("invalid mac_address {mac}")));
        }
        let wanted = match req.fixed_ips {
            Some(f) => f,
            None => net
                .subnets
                .first()
                .map(|s| {
                    vec![FixedIpRequest {
                        subnet_id: Some(s.clone()),
                        ip_address: None,
                    }]
                })
                .unwrap_or_default(),
        };
        let holds = |s: &Subnet, ip: Ipv4Addr| {
            parse_cidr(&s.cidr)
                .is_some_and(|(b, l)| u32::from(ip) & mask(l) == u32::from(b) & mask(l))
        };
        let mut fixed_ips: Vec<FixedIp> = vec![];
        for f in wanted {
            // Neutron's rules: a subnet of this network, given or found from the address.
            let subnet_id = match (f.subnet_id, f.ip_address) {
                (Some(id), _) => id,
                (None, Some(ip)) => net
                    .subnets
                    .iter()
                    .filter_map(|id| self.state.subnets.get(id))
                    .find(|s| holds(s, ip))
                    .map(|s| s.id.clone())
                    .ok_or_else(|| {
                        ApiError::BadRequest(format!("no subnet of {network_id} holds {ip}"))
                    })?,
                (None, None) => {
                    return Err(ApiError::BadRequest(
                        "a fixed IP needs a subnet_id or an ip_address".into(),
                    ));
                }
            };
            let subnet = self
                .state
                .subnets
                .get(&subnet_id)
                .filter(|s| s.network_id == network_id)
                .ok_or_else(|| ApiError::BadRequest(format!("subnet {subnet_id} not on network")))?
                .clone();
            let ip = match f.ip_address {
                Some(ip) => {
                    if !holds(&subnet, ip) {
                        return Err(ApiError::BadRequest(format!(
                            "{ip} is not in subnet {} ({})",
                            subnet.id, subnet.cidr
                        )));
                    }
                    // Taken on this subnet (another tenant's overlapping subnet is its own).
                    let taken = self.state.ports.values().any(|p| {
                        p.fixed_ips
                            .iter()
                            .any(|x| x.subnet_id == subnet.id && x.ip_address == Some(ip))
                    }) || fixed_ips.iter().any(|x| x.ip_address == Some(ip));
                    if taken {
                        return Err(ApiError::Conflict(format!(
                            "IP address {ip} already allocated in subnet {}",
                            subnet.id
                        )));
                    }
                    ip
                }
                None => self.allocate_ip(&subnet)?,
            };
            fixed_ips.push(FixedIp {
                subnet_id,
                ip_address: Some(ip),
            });
        }
        let project_id = req.project_id.unwrap_or(net.project_id);
        let port_security_enabled = req.port_security_enabled.unwrap_or(true);
        let security_groups = match req.security_groups {
            Some(g) => g,
            None if port_security_enabled => vec![self.default_group(&project_id)],
            None => vec![],
        };
        for g in &security_groups {
            if !self.state.security_groups.contains_key(g) {
                return Err(ApiError::NotFound("security_group", g.clone()));
            }
        }
        let p = Port {
            id: chosen_id(req.id, |i| self.state.ports.contains_key(i))?,
            name: req.name.unwrap_or_default(),
            network_id,
            project_id,
            mac_address: mac,
            fixed_ips,
            security_groups,
            port_security_enabled,
            allowed_address_pairs: req.allowed_address_pairs.unwrap_or_default(),
            device_owner: req.device_owner.unwrap_or_default(),
            device_id: req.device_id.unwrap_or_default(),
            status: "DOWN".into(),
        };
        self.state.ports.insert(p.id.clone(), p.clone());
        Ok(p)
    }

    fn update_port(&mut self, id: &str, body: &[u8]) -> Result<Value, ApiError> {
        let req: PortCreate = unwrap_body(body, "port")?;
        for g in req.security_groups.iter().flatten() {
            if !self.state.security_groups.contains_key(g) {
                return Err(ApiError::NotFound("security_group", g.clone()));
            }
        }
        let p = self
            .state
            .ports
            .get_mut(id)
            .ok_or_else(|| ApiError::NotFound("port", id.to_string()))?;
        if req.id.is_some()
            || req.network_id.is_some()
            || req.fixed_ips.is_some()
            || req.mac_address.is_some()
        {
            return Err(ApiError::BadRequest(
                "id, network_id, fixed_ips and mac_address cannot be updated here".into(),
            ));
        }
        if let Some(v) = req.name {
            p.name = v;
        }
        if let Some(v) = req.security_groups {
            p.security_groups = v;
        }
        if let Some(v) = req.port_security_enabled {
            p.port_security_enabled = v;
        }
        if let Some(v) = req.allowed_address_pairs {
            p.allowed_address_pairs = v;
        }
        if let Some(v) = req.device_owner {
            p.device_owner = v;
        }
        if let Some(v) = req.device_id {
            p.device_id = v;
        }
        let p = p.clone();
        Ok(json!({ "port": self.port_view(&p) }))
    }

    /// Neutron's `add_router_interface`: by subnet (the router takes the subnet's gateway
    /// address on a new port) or by an existing port (the router takes the port's address
    /// and MAC; the port must be unused and have exactly one fixed IP).
    fn add_router_interface(&mut self, router_id: &str, body: &[u8]) -> Result<Value, ApiError> {
        let req: RouterInterface = serde_json::from_slice(body)
            .map_err(|e| ApiError::BadRequest(format!("invalid body: {e}")))?;
        if !self.state.routers.contains_key(router_id) {
            return Err(ApiError::NotFound("router", router_id.to_string()));
        }
        let (port_id, subnet) = match (req.subnet_id, req.port_id) {
            (Some(_), Some(_)) => {
                return Err(ApiError::BadRequest(
                    "give subnet_id or port_id, not both".into(),
                ));
            }
            (None, None) => {
                return Err(ApiError::BadRequest(
                    "subnet_id or port_id is required".into(),
                ));
            }
            (Some(subnet_id), None) => {
                let subnet = self
                    .state
                    .subnets
                    .get(&subnet_id)
                    .ok_or_else(|| ApiError::NotFound("subnet", subnet_id.clone()))?
                    .clone();
                (None, subnet)
            }
            (None, Some(port_id)) => {
                let port = self
                    .state
                    .ports
                    .get(&port_id)
                    .ok_or_else(|| ApiError::NotFound("port", port_id.clone()))?;
                if !port.device_owner.is_empty() || !port.device_id.is_empty() {
                    return Err(ApiError::Conflict(format!(
                        "port {port_id} is in use by {} {}",
                        if port.device_owner.is_empty() {
                            "device"
                        } else {
                            &port.device_owner
                        },
                        port.device_id
                    )));
                }
                if self
                    .state
                    .floatingips
                    .values()
                    .any(|f| f.port_id.as_deref() == Some(&port_id))
                {
                    return Err(ApiError::Conflict(format!(
                        "port {port_id} has a floating IP"
                    )));
                }
                let [fixed] = port.fixed_ips.as_slice() else {
                    return Err(ApiError::BadRequest(format!(
                        "a router port needs exactly one fixed IP; port {port_id} has {}",
                        port.fixed_ips.len()
                    )));
                };
                let subnet = self
                    .state
                    .subnets
                    .get(&fixed.subnet_id)
                    .ok_or_else(|| ApiError::NotFound("subnet", fixed.subnet_id.clone()))?
                    .clone();
                (Some(port_id), subnet)
            }
        };
        if self.state.ports.values().any(|p| {
            p.device_owner == "network:router_interface"
                && p.device_id == router_id
                && p.fixed_ips.iter().any(|f| f.subnet_id == subnet.id)
        }) {
            return Err(ApiError::Conflict(
                "router already has an interface on the subnet".into(),
            ));
        }
        let port_id = match port_id {
            Some(id) => {
                // The port becomes the router's: the switch stops treating it as a VM
                // port (no security groups, no tap) and routes frames to its MAC.
                let p = self.state.ports.get_mut(&id).expect("checked above");
                p.device_owner = "network:router_interface".into();
                p.device_id = router_id.into();
                p.security_groups.clear();
                p.port_security_enabled = false;
                p.allowed_address_pairs.clear();
                id
            }
            None => {
                self.new_port(PortCreate {
                    network_id: Some(subnet.network_id.clone()),
                    fixed_ips: Some(vec![FixedIpRequest {
                        subnet_id: Some(subnet.id.clone()),
                        ip_address: subnet.gateway_ip,
                    }]),
                    security_groups: Some(vec![]),
                    port_security_enabled: Some(false),
                    device_owner: Some("network:router_interface".into()),
                    device_id: Some(router_id.into()),
                    ..Default::default()
                })?
                .id
            }
        };
        let project_id = self.state.routers[router_id].project_id.clone();
        Ok(json!({
            "id": router_id,
            "subnet_id": subnet.id,
            "subnet_ids": [subnet.id],
            "port_id": port_id,
            "network_id": subnet.network_id,
            "project_id": project_id,
            "tenant_id": project_id,
        }))
    }

    fn delete(&mut self, coll: &str, id: &str) -> Result<(), ApiError> {
        let s = &mut self.state;
        let in_use = |what: &str| ApiError::Conflict(format!("{what} {id} is in use"));
        match coll {
            "networks" => {
                if s.ports.values().any(|p| p.network_id == id) {
                    return Err(in_use("network"));
                }
                s.networks
                    .remove(id)
                    .ok_or_else(|| ApiError::NotFound("network", id.into()))?;
                s.subnets.retain(|_, sub| sub.network_id != id);
            }
            "subnets" => {
                if s.ports
                    .values()
                    .any(|p| p.fixed_ips.iter().any(|f| f.subnet_id == id))
                {
                    return Err(in_use("subnet"));
                }
                let sub = s
                    .subnets
                    .remove(id)
                    .ok_or_else(|| ApiError::NotFound("subnet", id.into()))?;
                if let Some(n) = s.networks.get_mut(&sub.network_id) {
                    n.subnets.retain(|x| x != id);
                }
            }
            "ports" => {
                if s.floatingips
                    .values()
                    .any(|f| f.port_id.as_deref() == Some(id))
                {
                    return Err(in_use("port"));
                }
                s.ports
                    .remove(id)
                    .ok_or_else(|| ApiError::NotFound("port", id.into()))?;
            }
            "floatingips" => {
                s.floatingips
                    .remove(id)
                    .ok_or_else(|| ApiError::NotFound("floatingip", id.into()))?;
            }
            "routers" => {
                if s.ports
                    .values()
                    .any(|p| p.device_id == id && p.device_owner == "network:router_interface")
                {
                    return Err(in_use("router"));
                }
                s.ports.retain(|_, p| {
                    !(p.device_id == id && p.device_owner == "network:router_gateway")
                });
                s.routers
                    .remove(id)
                    .ok_or_else(|| ApiError::NotFound("router", id.into()))?;
            }
            "security-groups" => {
                if s.ports
                    .values()
                    .any(|p| p.security_groups.iter().any(|g| g == id))
                {
                    return Err(in_use("security_group"));
                }
                s.security_groups
                    .remove(id)
                    .ok_or_else(|| ApiError::NotFound("security_group", id.into()))?;
                s.security_group_rules
                    .retain(|_, r| r.security_group_id != id);
            }
            "security-group-rules" => {
                s.security_group_rules
                    .remove(id)
                    .ok_or_else(|| ApiError::NotFound("security_group_rule", id.into()))?;
            }
            _ => return Err(ApiError::NoRoute),
        }
        Ok(())
    }

    /// The datapath rules of a port: its groups' rules, remote groups expanded.
    fn port_rules(&mut self, port: &Port) -> Vec<RuleSpec> {
        let mut out = vec![];
        let rules: Vec<SecurityGroupRule> = self
            .state
            .security_group_rules
            .values()
            .filter(|r| port.security_groups.contains(&r.security_group_id))
            .filter(|r| r.ethertype == "IPv4")
            .cloned()
            .collect();
        for r in rules {
            let id = self.state.number(&r.id);
            let direction = if r.direction == "ingress" {
                Direction::Ingress
            } else {
                Direction::Egress
            };
            let protocol = r
                .protocol
                .as_deref()
                .and_then(protocol_number)
                .filter(|p| *p != 0);
            let port_range = match (protocol, r.port_range_min, r.port_range_max) {
                (Some(1), lo, hi) => Some((lo.unwrap_or(0xffff), hi.unwrap_or(0xffff))),
                (Some(_), Some(lo), hi) => Some((lo, hi.unwrap_or(lo))),
                _ => None,
            };
            let remotes: Vec<Option<(Ipv4Addr, u8)>> =
                match (&r.remote_ip_prefix, &r.remote_group_id) {
                    (Some(c), _) => vec![parse_cidr(c)],
                    (None, Some(g)) => self
                        .state
                        .ports
                        .values()
                        .filter(|p| p.security_groups.contains(g))
                        .flat_map(|p| p.fixed_ips.iter().filter_map(|f| f.ip_address))
                        .map(|ip| Some((ip, 32)))
                        .collect(),
                    (None, None) => vec![None],
                };
            for remote in remotes {
                out.push(RuleSpec {
                    id,
                    direction,
                    protocol,
                    port_range,
                    remote,
                });
            }
        }
        out
    }

    /// Brings the datapath in line with the state.
    pub fn sync(&mut self) -> Result<(), ApiError> {
        if self.dp.is_none() {
            return Ok(());
        }
        let ports: Vec<Port> = self.state.ports.values().cloned().collect();
        let mut live = HashMap::new();
        let mut leases = HashMap::new();
        let mut ifaces: HashSet<RouterIface> = HashSet::new();
        let mut snat = HashMap::new();
        let mut work = vec![];
        for p in &ports {
            let net = self.state.number(&p.network_id);
            let ips: Vec<Ipv4Addr> = p.fixed_ips.iter().filter_map(|f| f.ip_address).collect();
            let mac = parse_mac(&p.mac_address).unwrap_or_default();
            if p.device_owner == "network:router_interface"
                || p.device_owner == "network:router_gateway"
            {
                let router = self.state.number(&p.device_id);
                for f in &p.fixed_ips {
                    if let (Some(ip), Some(sub)) =
                        (f.ip_address, self.state.subnets.get(&f.subnet_id))
                    {
                        let cidr = parse_cidr(&sub.cidr).expect("validated");
                        let gateway = p.device_owner == "network:router_gateway";
                        let upstream = gateway.then(|| sub.gateway_ip.filter(|g| *g != ip));
                        let snat_on = self
                            .state
                            .routers
                            .get(&p.device_id)
                            .and_then(|r| r.external_gateway_info.as_ref())
                            .and_then(|i| i.get("enable_snat"))
                            .and_then(Value::as_bool)
                            .unwrap_or(true);
                        if gateway && snat_on {
                            snat.entry(router).or_insert(ip);
                        }
                        ifaces.insert((router, net, mac, ip, cidr, upstream));
                        work.push((None, Some((router, net, mac, ip, cidr, upstream)), vec![]));
                    }
                }
                continue;
            }
            let tap = p.tap_name();
            let Some(ifindex) = ifindex(&tap) else {
                continue;
            };
            let rules = self.port_rules(p);
            let lease = self
                .dhcp
                .as_ref()
                .and_then(|(_, secs)| self.lease_of(p, mac, *secs));
            let spec = PortSpec {
                ifindex,
                net_id: net,
                mac,
                ips,
                port_security: p.port_security_enabled,
                allowed_address_pairs: p
                    .allowed_address_pairs
                    .iter()
                    .map(|a| {
                        let m = a.mac_address.as_deref().and_then(parse_mac).unwrap_or(mac);
                        (m, a.ip_address)
                    })
                    .collect(),
                dhcp: lease.is_some(),
                peer: crate::datapath::has_peer(&tap),
            };
            if let Some(l) = lease {
                leases.insert(ifindex, l);
            }
            live.insert(p.id.clone(), ifindex);
            work.push((Some((spec, tap)), None, rules));
        }
        // Floating IPs: (router, fip, fixed, external network) and the gateway MAC.
        let mut fips = HashMap::new();
        let fip_list: Vec<FloatingIp> = self.state.floatingips.values().cloned().collect();
        for f in fip_list {
            let (Some(r), Some(fixed)) = (&f.router_id, f.fixed_ip_address) else {
                continue;
            };
            let gw_mac = self
                .state
                .ports
                .values()
                .find(|p| p.device_owner == "network:router_gateway" && &p.device_id == r)
                .and_then(|p| parse_mac(&p.mac_address));
            if let Some(gw_mac) = gw_mac {
                let key = (
                    self.state.number(r),
                    f.floating_ip_address,
                    fixed,
                    self.state.number(&f.floating_network_id),
                );
                fips.insert(key, gw_mac);
            }
        }
        // Extra routes whose next hop is on one of the router's interface or gateway subnets.
        // A route to a destination that a connected (or the gateway's default) route already
        // covers exactly is left out: the router's own route wins, as the kernel's would
        // in Neutron's router namespace. Of several next hops for one destination (Neutron
        // allows them), the lowest address is used.
        let connected = connected_routes(&ifaces);
        let mut extra: HashMap<RouteKey, ExtraHop> = HashMap::new();
        let routers: Vec<Router> = self.state.routers.values().cloned().collect();
        for r in &routers {
            let router = self.state.number(&r.id);
            for route in &r.routes {
                let Some((addr, len)) = parse_cidr(&route.destination) else {
                    continue;
                };
                let key = (router, Ipv4Addr::from(u32::from(addr) & mask(len)), len);
                if connected.contains(&key) || extra.contains_key(&key) {
                    continue;
                }
                let via = ifaces
                    .iter()
                    .find(|i| i.0 == router && in_cidr(route.nexthop, i.4));
                if let Some((_, net, mac, _, _, gateway)) = via {
                    extra.insert(key, (*net, route.nexthop, *mac, gateway.is_some()));
                }
            }
        }
        let dp = self.dp.as_mut().expect("checked above");
        // Interfaces and gateways gone from the state leave the datapath first (a new one
        // may reuse their subnet's route).
        for old in self.router_ifaces.difference(&ifaces) {
            let (router, net, mac, ip, cidr, gateway) = *old;
            match gateway {
                Some(_) => dp.clear_router_gateway(router, net, mac, ip, cidr),
                None => dp.remove_router_interface(router, net, mac, ip, cidr),
            }
            .map_err(ApiError::Datapath)?;
        }
        self.router_ifaces = ifaces;
        for (router, gw) in &self.snat {
            if snat.get(router) != Some(gw) {
                dp.set_gateway_snat(*router, None)
                    .map_err(ApiError::Datapath)?;
            }
        }
        for (router, gw) in &snat {
            dp.set_gateway_snat(*router, Some(*gw))
                .map_err(ApiError::Datapath)?;
        }
        self.snat = snat;
        for (port, router, rules) in work {
            match router {
                Some((router, net, mac, ip, cidr, Some(upstream))) => dp
                    .set_router_gateway(router, net, mac, ip, cidr, upstream)
                    .map_err(ApiError::Datapath)?,
                Some((router, net, mac, ip, cidr, None)) => dp
                    .add_router_interface(router, net, mac, ip, cidr)
                    .map_err(ApiError::Datapath)?,
                None => {}
            }
            if let Some((spec, tap)) = port {
                dp.set_port(&spec).map_err(ApiError::Datapath)?;
                dp.set_port_rules(spec.ifindex, &rules)
                    .map_err(ApiError::Datapath)?;
                if !self.attached.contains(&tap) {
                    dp.attach_tc(&tap).map_err(ApiError::Datapath)?;
                    self.attached.insert(tap);
                }
            }
        }
        for (id, ifindex) in &self.programmed {
            if !live.contains_key(id) {
                dp.remove_port(*ifindex).map_err(ApiError::Datapath)?;
            }
        }
        self.programmed = live;
        // Extra routes after the interfaces they go through; a stale one goes unless a
        // connected or new extra route now has its key.
        for key in self.extra_routes.keys() {
            if !extra.contains_key(key) && !connected.contains(key) {
                dp.remove_route(key.0, (key.1, key.2))
                    .map_err(ApiError::Datapath)?;
            }
        }
        for ((router, dest, len), (net, nexthop, mac, external)) in &extra {
            dp.add_extra_route(*router, (*dest, *len), *net, *nexthop, *mac, *external)
                .map_err(ApiError::Datapath)?;
        }
        self.extra_routes = extra;
        for (key, gw_mac) in &fips {
            let (router, fip, fixed, net) = *key;
            dp.set_floating_ip(router, fip, fixed, net, *gw_mac)
                .map_err(ApiError::Datapath)?;
        }
        for key in self.fips.iter().filter(|k| !fips.contains_key(*k)) {
            let (router, fip, fixed, net) = *key;
            dp.remove_floating_ip(router, fip, fixed, net)
                .map_err(ApiError::Datapath)?;
        }
        self.fips = fips.into_keys().collect();
        if let Some((table, _)) = &self.dhcp {
            table.replace(leases);
        }
        Ok(())
    }

    /// Prometheus text for `/metrics`.
    pub fn metrics(&self) -> String {
        let mut out = String::new();
        let s = &self.state;
        out.push_str("# HELP ferrostack_netdp_ports Ports known to netdp.\n# TYPE ferrostack_netdp_ports gauge\n");
        out.push_str(&format!("ferrostack_netdp_ports {}\n", s.ports.len()));
        out.push_str(&format!(
            "# HELP ferrostack_netdp_ports_active Ports programmed into the datapath.\n# TYPE ferrostack_netdp_ports_active gauge\nferrostack_netdp_ports_active {}\n",
            self.programmed.len()
        ));
        if let Some(d) = &self.dhcp_stats {
            for (name, help, v) in [
                (
                    "requests_total",
                    "DHCP requests the datapath punted to the DHCP server (from ports on DHCP-enabled subnets).",
                    &d.requests,
                ),
                ("replies_total", "DHCP replies the server sent.", &d.replies),
                (
                    "ignored_total",
                    "DHCP requests not answered: malformed, from another MAC than the port's, for a port without a lease, needing no reply, or whose reply could not be sent.",
                    &d.ignored,
                ),
            ] {
                out.push_str(&format!(
                    "# HELP ferrostack_netdp_dhcp_{name} {help}\n# TYPE ferrostack_netdp_dhcp_{name} counter\nferrostack_netdp_dhcp_{name} {}\n",
                    v.load(std::sync::atomic::Ordering::Relaxed)
                ));
            }
        }
        let Some(dp) = &self.dp else {
            return out;
        };
        out.push_str(&format!(
            "# HELP ferrostack_netdp_conntrack_expired_total Tracked connections the GC removed after their idle timeout (one per port that tracked them).\n# TYPE ferrostack_netdp_conntrack_expired_total counter\nferrostack_netdp_conntrack_expired_total {}\n\
             # HELP ferrostack_netdp_snat_expired_total Gateway SNAT translations the GC removed after their idle timeout.\n# TYPE ferrostack_netdp_snat_expired_total counter\nferrostack_netdp_snat_expired_total {}\n\
             # HELP ferrostack_netdp_conntrack_gc_runs_total Runs of the conntrack GC.\n# TYPE ferrostack_netdp_conntrack_gc_runs_total counter\nferrostack_netdp_conntrack_gc_runs_total {}\n\
             # HELP ferrostack_netdp_conntrack_gc_last_run_seconds How long the last run of the conntrack GC took.\n# TYPE ferrostack_netdp_conntrack_gc_last_run_seconds gauge\nferrostack_netdp_conntrack_gc_last_run_seconds {}\n",
            self.expired.connections.load(std::sync::atomic::Ordering::Relaxed),
            self.expired.translations.load(std::sync::atomic::Ordering::Relaxed),
            self.expired.runs.load(std::sync::atomic::Ordering::Relaxed),
            self.expired.last_run_ns.load(std::sync::atomic::Ordering::Relaxed) as f64 / 1e9
        ));
        let mut ports: Vec<_> = self.programmed.iter().collect();
        ports.sort();
        let series = [
            ("rx_packets_total", "Frames received from the port."),
            ("rx_bytes_total", "Bytes received from the port."),
            ("tx_packets_total", "Frames delivered to the port."),
            ("tx_bytes_total", "Bytes delivered to the port."),
            (
                "routed_packets_total",
                "IPv4 frames from the port addressed to a router (routed, or answered with an ICMP error or dropped by it).",
            ),
            (
                "flooded_packets_total",
                "Broadcasts from the port that were flooded.",
            ),
            (
                "arp_replies_total",
                "ARP requests from the port answered by the datapath.",
            ),
            (
                "icmp_errors_total",
                "ICMP errors the datapath sent back to the port (TTL exceeded, unreachable).",
            ),
        ];
        let counters: Vec<_> = ports
            .iter()
            .map(|(id, ifx)| (id, dp.port_counters(**ifx).unwrap_or_default()))
            .collect();
        for (i, (name, help)) in series.iter().enumerate() {
            out.push_str(&format!(
                "# HELP ferrostack_netdp_port_{name} {help}\n# TYPE ferrostack_netdp_port_{name} counter\n"
            ));
            for (id, c) in &counters {
                let v = [
                    c.0.rx_packets,
                    c.0.rx_bytes,
                    c.0.tx_packets,
                    c.0.tx_bytes,
                    c.0.routed,
                    c.0.flooded,
                    c.0.arp_replies,
                    c.0.icmp_errors,
                ][i];
                out.push_str(&format!(
                    "ferrostack_netdp_port_{name}{{port=\"{id}\"}} {v}\n"
                ));
            }
        }
        out.push_str("# HELP ferrostack_netdp_port_drops_total Frames from the port dropped, by reason.\n# TYPE ferrostack_netdp_port_drops_total counter\n");
        for (id, c) in &counters {
            for r in DropReason::ALL {
                out.push_str(&format!(
                    "ferrostack_netdp_port_drops_total{{port=\"{id}\",reason=\"{}\"}} {}\n",
                    r.label(),
                    c.drops(r)
                ));
            }
        }
        let rules: Vec<_> = s
            .security_group_rules
            .values()
            .filter_map(|r| {
                let n = s.numbers.get(&r.id)?;
                Some((&r.id, dp.rule_counters(*n).unwrap_or_default()))
            })
            .collect();
        out.push_str("# HELP ferrostack_netdp_rule_connections_total Connections a security-group rule admitted: counted once per connection, when its first packet passes the port's firewall in the rule's direction because of this rule (packets of established connections and their replies are not counted per rule; see the port counters).\n# TYPE ferrostack_netdp_rule_connections_total counter\n");
        for (id, c) in &rules {
            out.push_str(&format!(
                "ferrostack_netdp_rule_connections_total{{rule=\"{id}\"}} {}\n",
                c.connections
            ));
        }
        out
    }
}

/// The MAC DHCP replies come from on subnets without a router interface.
const DHCP_SERVER_MAC: [u8; 6] = [0x02, 0xfd, 0, 0, 0, 0x01];

/// Whether `ip` is in the network `cidr`.
fn in_cidr(ip: Ipv4Addr, cidr: (Ipv4Addr, u8)) -> bool {
    u32::from(ip) & mask(cidr.1) == u32::from(cidr.0) & mask(cidr.1)
}

/// How many extra routes a router may have (Neutron's `max_routes` default).
pub const MAX_ROUTES: usize = 30;

/// Routes as Neutron's messages show them (a Python list of dicts).
fn routes_repr(routes: &[ExtraRoute]) -> String {
    let items: Vec<String> = routes
        .iter()
        .map(|r| {
            format!(
                "{{'destination': '{}', 'nexthop': '{}'}}",
                r.destination, r.nexthop
            )
        })
        .collect();
    format!("[{}]", items.join(", "))
}

fn mask(len: u8) -> u32 {
    if len == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(len))
    }
}

/// Parses `{"<key>": {...}}` into the request type (unknown fields refused).
fn unwrap_body<T: serde::de::DeserializeOwned>(body: &[u8], key: &str) -> Result<T, ApiError> {
    #[derive(Deserialize)]
    struct Envelope(BTreeMap<String, Value>);
    let Envelope(mut map) = serde_json::from_slice(body)
        .map_err(|e| ApiError::BadRequest(format!("invalid JSON body: {e}")))?;
    let inner = map
        .remove(key)
        .ok_or_else(|| ApiError::BadRequest(format!("body must be {{\"{key}\": {{...}}}}")))?;
    if !map.is_empty() {
        return Err(ApiError::BadRequest(format!(
            "unexpected keys besides {key}"
        )));
    }
    serde_json::from_value(inner).map_err(|e| ApiError::BadRequest(format!("invalid {key}: {e}")))
}

/// Where the state lives by default.
pub fn default_state_path() -> &'static Path {
    Path::new("/var/lib/ferrostack/netdp/state.json")
}
