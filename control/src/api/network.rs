//! Neutron v2.0 under `/network`: networks (`router:external` for gateways and floating
//! IPs) and subnets here (a subnet's CIDR given, or taken from a subnet pool of
//! [`super::subnet_pool`]); ports, routers, security groups and rules, floating IPs in
//! [`super::neutron`].
//!
//! Design (see [`crate::network`]): control is the source of truth for every resource and
//! does the address management; nothing is created on a node until a port is bound to
//! it. Every change made through this API bumps the state's generation and is pushed, in
//! the background, to the node agents, which make their netdp match (with control's ids).

use std::net::Ipv4Addr;
use std::sync::Arc;

use http::{Method, StatusCode};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use super::neutron::{Collection, Create, Delete, Update};
use super::openstack::{load, owned, visible};
use super::{ApiError, Request, Response, blocking, json as json_resp, read_limited};
use crate::identity::Ctx;
use crate::identity::token::now_secs;
use crate::service::{Service, ServiceError};
use crate::store::{Kind, Record, StoreError, Write};

/// A network.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NetworkDoc {
    /// Name (not unique, as in Neutron).
    pub name: String,
    /// Owner.
    pub project_id: String,
    /// Admin state.
    pub admin_state_up: bool,
    /// Shared with every project.
    pub shared: bool,
    /// MTU.
    pub mtu: u32,
    /// An external network (`router:external`): routers' gateways and floating IPs.
    #[serde(default)]
    pub external: bool,
    /// Epoch seconds.
    pub created: u64,
}

/// A subnet (IPv4).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SubnetDoc {
    /// Name.
    pub name: String,
    /// Its network.
    pub network_id: String,
    /// Owner.
    pub project_id: String,
    /// Prefix, `10.0.0.0/24`.
    pub cidr: String,
    /// Gateway.
    pub gateway_ip: Option<String>,
    /// DHCP on.
    pub enable_dhcp: bool,
    /// The ranges ports get their addresses from when none is asked for; `None` in records
    /// stored before pools were kept, which have Neutron's default ([`default_pools`]).
    #[serde(default)]
    pub allocation_pools: Option<Vec<Pool>>,
    /// The subnet pool its CIDR was taken from, if any.
    #[serde(default)]
    pub subnetpool_id: Option<String>,
    /// Epoch seconds.
    pub created: u64,
}

impl SubnetDoc {
    /// The subnet's allocation pools.
    pub fn pools(&self) -> Vec<Pool> {
        match &self.allocation_pools {
            Some(p) => p.clone(),
            None => parse_cidr(&self.cidr)
                .map(|(base, len)| default_pools(base, len, self.gateway_ip.as_deref()))
                .unwrap_or_default(),
        }
    }
}

/// An allocation pool: the addresses `start` to `end`, both included.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Pool {
    /// First address.
    pub start: Ipv4Addr,
    /// Last address.
    pub end: Ipv4Addr,
}

impl Pool {
    /// How many addresses it holds.
    pub fn size(&self) -> u64 {
        u64::from(u32::from(self.end)) + 1 - u64::from(u32::from(self.start))
    }
    /// Whether `ip` is in it.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        self.start <= ip && ip <= self.end
    }
}

impl std::fmt::Display for Pool {
    /// As Neutron names a pool in messages (`10.0.0.2-10.0.0.254`).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.start, self.end)
    }
}

/// The first and last address a port may have in a subnet (not the network's own address,
/// not the broadcast address).
pub fn host_range(base: Ipv4Addr, len: u8) -> (u32, u32) {
    let first = u32::from(base) + 1;
    let last = (u32::from(base) | !(u32::MAX << (32 - len))) - 1;
    (first, last)
}

/// Neutron's default pools: every host address of the subnet but the gateway's (which
/// splits the range in two when it is in the middle).
pub fn default_pools(base: Ipv4Addr, len: u8, gateway: Option<&str>) -> Vec<Pool> {
    let (first, last) = host_range(base, len);
    let gw = gateway
        .and_then(|g| g.parse::<Ipv4Addr>().ok())
        .map(u32::from)
        .filter(|g| (first..=last).contains(g));
    let ranges = match gw {
        None => vec![(first, last)],
        Some(g) => [(first, g.wrapping_sub(1)), (g + 1, last)]
            .into_iter()
            .filter(|(a, b)| a <= b && *a >= first && *b <= last)
            .collect(),
    };
    ranges
        .into_iter()
        .map(|(a, b)| Pool {
            start: Ipv4Addr::from(a),
            end: Ipv4Addr::from(b),
        })
        .collect()
}

/// The `allocation_pools` of a subnet create, checked as Neutron checks them: valid
/// addresses, start before end, inside the subnet's host addresses, not overlapping,
/// not holding the gateway. `None` when the body has none (the default pools apply).
fn pools_field(
    n: &Map<String, Value>,
    cidr: &str,
    base: Ipv4Addr,
    len: u8,
    gateway: Option<&str>,
) -> Result<Option<Vec<Pool>>, ApiError> {
    let list = match n.get("allocation_pools") {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Array(a)) => a,
        Some(v) => {
            return Err(ApiError::bad_request(format!(
                "Invalid input for allocation_pools. Reason: Invalid data format for IP pool: '{v}'."
            )));
        }
    };
    let mut pools = vec![];
    for p in list {
        let (start, end) = match p.as_object().map(|o| (o.get("start"), o.get("end"))) {
            Some((Some(Value::String(s)), Some(Value::String(e))))
                if p.as_object().is_some_and(|o| o.len() == 2) =>
            {
                (s, e)
            }
            _ => {
                return Err(ApiError::bad_request(format!(
                    "Invalid input for allocation_pools. Reason: Invalid data format for IP pool: '{p}'."
                )));
            }
        };
        let ip = |s: &str| {
            s.parse::<Ipv4Addr>().map_err(|_| {
                ApiError::bad_request(format!(
                    "Invalid input for allocation_pools. Reason: '{s}' is not a valid IP address."
                ))
            })
        };
        let pool = Pool {
            start: ip(start)?,
            end: ip(end)?,
        };
        if pool.start > pool.end {
            return Err(ApiError::bad_request(format!(
                "The allocation pool {{'start': '{start}', 'end': '{end}'}} is not valid."
            ))
            .kind("InvalidAllocationPool"));
        }
        let (first, last) = host_range(base, len);
        if u32::from(pool.start) < first || u32::from(pool.end) > last {
            return Err(ApiError::bad_request(format!(
                "The allocation pool {pool} spans beyond the subnet cidr {cidr}."
            ))
            .kind("OutOfBoundsAllocationPool"));
        }
        pools.push(pool);
    }
    for (i, a) in pools.iter().enumerate() {
        for b in &pools[i + 1..] {
            if a.start <= b.end && b.start <= a.end {
                return Err(ApiError::conflict(format!(
                    "Found overlapping allocation pools: {a} {b} for subnet {cidr}."
                ))
                .kind("OverlappingAllocationPools"));
            }
        }
    }
    if let Some(gw) = gateway.and_then(|g| g.parse::<Ipv4Addr>().ok())
        && let Some(p) = pools.iter().find(|p| p.contains(gw))
    {
        return Err(ApiError::conflict(format!(
            "Gateway ip {gw} conflicts with allocation pool {p}."
        ))
        .kind("GatewayConflictWithAllocationPools"));
    }
    Ok(Some(pools))
}

fn se(e: StoreError) -> ApiError {
    ServiceError::from(e).into()
}

/// Parses an IPv4 CIDR into its network address and prefix length.
pub fn parse_cidr(s: &str) -> Result<(Ipv4Addr, u8), ApiError> {
    let bad = || {
        ApiError::bad_request(format!(
            "Invalid input for cidr. Reason: '{s}' is not a valid IPv4 CIDR."
        ))
    };
    let (ip, len) = s.split_once('/').ok_or_else(bad)?;
    let ip: Ipv4Addr = ip.parse().map_err(|_| bad())?;
    let len: u8 = len.parse().map_err(|_| bad())?;
    if !(8..=30).contains(&len) {
        return Err(ApiError::bad_request("the prefix length must be 8 to 30"));
    }
    let mask = u32::MAX << (32 - len);
    if u32::from(ip) & !mask != 0 {
        return Err(bad());
    }
    Ok((ip, len))
}

/// Routes `/network/...` (the segments after `network`).
pub async fn route(
    svc: Arc<Service>,
    req: http::Request<hyper::body::Incoming>,
    segs: Vec<String>,
) -> Response {
    let r = async {
        let s: Vec<&str> = segs.iter().map(String::as_str).collect();
        if s.is_empty() && req.method() == Method::GET {
            let href = format!("{}/network/v2.0/", svc.config.public_url);
            return Ok(json_resp(
                StatusCode::OK,
                &json!({"versions": [{"id": "v2.0", "status": "CURRENT",
                                       "links": [{"rel": "self", "href": href}]}]}),
            ));
        }
        if s.first() != Some(&"v2.0") {
            return Err(ApiError::not_found("no such network API version"));
        }
        let (parts, body) = req.into_parts();
        let body = read_limited(body, svc.config.raw.max_request_body).await?;
        let mut rest: Vec<String> = segs[1..].to_vec();
        // openstacksdk may add `.json`.
        if let Some(last) = rest.last_mut()
            && let Some(x) = last.strip_suffix(".json")
        {
            *last = x.to_string();
        }
        let request = Request {
            method: parts.method,
            segs: rest,
            query: parts
                .uri
                .query()
                .map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
                .unwrap_or_default(),
            headers: parts.headers,
            body,
        };
        let changes = request.method != Method::GET;
        let r = blocking(svc.clone(), move |svc| {
            let ctx = super::identity::caller(svc, &request).map_err(ApiError::from)?;
            super::openstack::writer(&ctx, &request.method)?;
            let r = handle(svc, &ctx, &request)?;
            if changes && r.status().is_success() {
                crate::network::bump(&*svc.store)
                    .map_err(|e| ApiError::from(ServiceError::from(e)))?;
            }
            Ok(r)
        })
        .await;
        if changes && r.as_ref().is_ok_and(|r| r.status().is_success()) {
            tokio::spawn(crate::network::push_all(svc));
        }
        r
    }
    .await;
    r.unwrap_or_else(|e| {
        let kind = e.kind.unwrap_or("HTTPError");
        let body = json!({"NeutronError": {"type": kind, "message": e.message, "detail": ""}});
        json_resp(e.status, &body)
    })
}

/// Whether a resource view passes Neutron's list filters (`?name=x&router:external=True`).
pub fn matches(q: &[(String, String)], v: &Value) -> bool {
    q.iter().all(|(k, want)| {
        if ["fields", "limit", "marker", "sort_key", "sort_dir"].contains(&k.as_str()) {
            return true;
        }
        match v.get(k) {
            Some(Value::String(s)) => s == want,
            Some(Value::Bool(b)) => want.eq_ignore_ascii_case(&b.to_string()),
            Some(Value::Number(n)) => n.to_string() == *want,
            _ => true,
        }
    })
}

fn handle(svc: &Service, ctx: &Ctx, req: &Request) -> Result<Response, ApiError> {
    let s: Vec<&str> = req.segs.iter().map(String::as_str).collect();
    if s == ["extensions"] && req.method == Method::GET {
        return Ok(extensions());
    }
    super::neutron::handle(svc, ctx, req)
        .unwrap_or_else(|| Err(ApiError::not_found("The resource could not be found.")))
}

fn extensions() -> Response {
    let ext: Vec<Value> = [
        ("router", "Neutron L3 Router"),
        ("external-net", "Neutron external network"),
        (
            "ext-gw-mode",
            "Neutron L3 Configurable external gateway mode",
        ),
        ("extraroute", "Neutron Extra Route"),
        ("extraroute-atomic", "Atomic Extra Route"),
        ("security-group", "security-group"),
        ("port-security", "Port Security"),
        ("binding", "Port Binding"),
        ("quotas", "Quota management support"),
        ("network-ip-availability", "Network IP Availability"),
        ("quota_details", "Quota details management support"),
        ("subnet_allocation", "Subnet Allocation"),
        ("default-subnetpools", "Default Subnetpools"),
    ]
    .iter()
    .map(|(alias, name)| {
        json!({"alias": alias, "name": name, "description": name,
               "updated": "2013-01-01T00:00:00-00:00", "links": []})
    })
    .collect();
    json_resp(StatusCode::OK, &json!({"extensions": ext}))
}

// ---------------------------------------------------------------------------------------
// Networks.

owned!(
    /// Networks: their project's, and every project's when shared.
    pub(super) Net: Kind::Network, "Network", NetworkDoc;

    fn sees(ctx: &Ctx, d: &NetworkDoc) -> bool {
        d.shared || visible(ctx, &d.project_id)
    }
);

impl Collection for Net {
    const KEY: &'static str = "network";
    const PATH: &'static str = "networks";
    const LIST: &'static str = "networks";
    const CREATE: Create = create_network;
    const UPDATE: Option<Update<NetworkDoc>> = None;
    const DELETE: Delete<NetworkDoc> = delete_network;

    fn view(svc: &Service, id: &str, d: &NetworkDoc) -> Result<Value, ApiError> {
        network_view(svc, id, d)
    }
    fn no_body() -> ApiError {
        ApiError::bad_request("the body needs a \"network\" object")
    }
}

/// A network by id, visible to the caller.
pub fn network(svc: &Service, ctx: &Ctx, id: &str) -> Result<(Record, NetworkDoc), ApiError> {
    load::<Net>(svc, ctx, id)
}

fn create_network(svc: &Service, ctx: &Ctx, n: &Map<String, Value>) -> Result<Value, ApiError> {
    let pid = ctx.project_id.clone().unwrap_or_default();
    let name = n
        .get("name")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    if name.len() > 255 {
        return Err(ApiError::bad_request("name is longer than 255 characters"));
    }
    let mtu = match n.get("mtu") {
        None | Some(Value::Null) => 1500,
        Some(v) => {
            v.as_u64()
                .filter(|m| (576..=9000).contains(m))
                .ok_or_else(|| ApiError::bad_request("mtu must be 576 to 9000"))? as u32
        }
    };
    let external = match n.get("router:external") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => {
            return Err(ApiError::bad_request(
                "Invalid input for router:external: a boolean",
            ));
        }
    };
    if external && !ctx.is_admin() {
        return Err(ApiError::forbidden(
            "creating an external network needs the admin role",
        ));
    }
    let doc = NetworkDoc {
        external,
        name,
        project_id: pid.clone(),
        admin_state_up: n
            .get("admin_state_up")
            .and_then(Value::as_bool)
            .unwrap_or(true),
        shared: n.get("shared").and_then(Value::as_bool).unwrap_or(false),
        mtu,
        created: now_secs(),
    };
    if doc.shared && !ctx.is_admin() {
        return Err(ApiError::forbidden("shared networks need the admin role"));
    }
    let id = uuid::Uuid::new_v4().to_string();
    svc.store
        .insert(Record::new(Kind::Network, &id, &pid, None, &doc))
        .map_err(se)?;
    network_view(svc, &id, &doc)
}

fn delete_network(svc: &Service, ctx: &Ctx, id: &str, d: NetworkDoc) -> Result<(), ApiError> {
    if !visible(ctx, &d.project_id) {
        return Err(ApiError::forbidden("only the owner deletes a network"));
    }
    if !svc.store.list(Kind::Port, Some(id)).map_err(se)?.is_empty()
        || svc
            .store
            .list(Kind::FloatingIp, None)
            .map_err(se)?
            .iter()
            .filter_map(|r| r.parse::<crate::network::FloatingIpDoc>().ok())
            .any(|f| f.floating_network_id == id)
    {
        return Err(ApiError::conflict(format!(
            "Unable to complete operation on network {id}. There are one or more ports still in use on the network."
        )));
    }
    for sub in svc.store.list(Kind::Subnet, Some(id)).map_err(se)? {
        svc.store.delete(Kind::Subnet, &sub.id).map_err(se)?;
    }
    svc.store.delete(Kind::Network, id).map_err(se)
}

// ---------------------------------------------------------------------------------------
// Subnets.

owned!(
    /// Subnets: their network's project's (not shared with the network).
    pub(super) Subnet: Kind::Subnet, "Subnet", SubnetDoc
);

impl Collection for Subnet {
    const KEY: &'static str = "subnet";
    const PATH: &'static str = "subnets";
    const LIST: &'static str = "subnets";
    const CREATE: Create = create_subnet;
    const UPDATE: Option<Update<SubnetDoc>> = None;
    const DELETE: Delete<SubnetDoc> = delete_subnet;

    fn view(_svc: &Service, id: &str, d: &SubnetDoc) -> Result<Value, ApiError> {
        Ok(subnet_view(id, d))
    }
    fn no_body() -> ApiError {
        ApiError::bad_request("the body needs a \"subnet\" object")
    }
}

fn create_subnet(svc: &Service, ctx: &Ctx, n: &Map<String, Value>) -> Result<Value, ApiError> {
    let net_id = n
        .get("network_id")
        .and_then(Value::as_str)
        .ok_or_else(|| ApiError::bad_request("subnet.network_id is required"))?;
    let (_, net) = network(svc, ctx, net_id)?;
    if !visible(ctx, &net.project_id) {
        return Err(ApiError::forbidden("only the network's owner adds subnets"));
    }
    if n.get("ip_version")
        .and_then(Value::as_u64)
        .is_some_and(|v| v != 4)
    {
        return Err(ApiError::bad_request("only IPv4 subnets are supported"));
    }
    // A malformed body is a 400 whatever the network holds, as Neutron validates
    // attributes before looking at anything.
    if let Some(c) = n.get("cidr").and_then(Value::as_str) {
        parse_cidr(c)?;
    }
    if !svc
        .store
        .list(Kind::Subnet, Some(net_id))
        .map_err(se)?
        .is_empty()
    {
        return Err(ApiError::conflict(
            "this cloud supports one subnet per network; the network already has one",
        ));
    }
    let pool = super::subnet_pool::requested(svc, ctx, n)?;
    let Some(pool_id) = pool else {
        let cidr = n
            .get("cidr")
            .and_then(Value::as_str)
            .ok_or_else(|| ApiError::bad_request("subnet.cidr is required"))?;
        let (id, doc) = subnet_doc(n, cidr, net_id, &net.project_id, None)?;
        svc.store
            .insert(Record::new(Kind::Subnet, &id, net_id, None, &doc))
            .map_err(se)?;
        return Ok(subnet_view(&id, &doc));
    };
    // From a pool: the pool's record is compared-and-swapped in the subnet's batch, so a
    // concurrent allocation from the same pool makes this one compute again.
    for _ in 0..16 {
        let (cidr, guard) = super::subnet_pool::allocate(svc, &pool_id, &net.project_id, n)?;
        let (id, doc) = subnet_doc(n, &cidr, net_id, &net.project_id, Some(&pool_id))?;
        let insert = Write::Insert(Record::new(Kind::Subnet, &id, net_id, None, &doc));
        match svc.store.apply(&[guard, insert]) {
            Ok(()) => return Ok(subnet_view(&id, &doc)),
            Err(StoreError::Stale { .. }) => continue,
            Err(e) => return Err(se(e)),
        }
    }
    Err(ApiError::conflict(format!(
        "Subnet pool {pool_id} is changing too often; try again"
    )))
}

/// A new subnet's id and document for `cidr` (given, or taken from a pool), with the
/// body's gateway and allocation pools checked against it.
fn subnet_doc(
    n: &Map<String, Value>,
    cidr: &str,
    net_id: &str,
    project_id: &str,
    subnetpool_id: Option<&str>,
) -> Result<(String, SubnetDoc), ApiError> {
    let (base, len) = parse_cidr(cidr)?;
    let gateway_ip = match n.get("gateway_ip") {
        None => Some(Ipv4Addr::from(u32::from(base) + 1).to_string()),
        Some(Value::Null) => None,
        Some(Value::String(g)) => {
            let ip: Ipv4Addr = g
                .parse()
                .map_err(|_| ApiError::bad_request(format!("gateway_ip {g:?} is not IPv4")))?;
            let mask = u32::MAX << (32 - len);
            if u32::from(ip) & mask != u32::from(base) {
                return Err(ApiError::bad_request(format!(
                    "gateway_ip {g} is outside {cidr}"
                )));
            }
            Some(g.clone())
        }
        Some(_) => return Err(ApiError::bad_request("gateway_ip must be a string")),
    };
    let pools = pools_field(n, cidr, base, len, gateway_ip.as_deref())?
        .unwrap_or_else(|| default_pools(base, len, gateway_ip.as_deref()));
    let doc = SubnetDoc {
        name: n
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string(),
        network_id: net_id.to_string(),
        project_id: project_id.to_string(),
        cidr: cidr.to_string(),
        gateway_ip,
        enable_dhcp: n
            .get("enable_dhcp")
            .and_then(Value::as_bool)
            .unwrap_or(true),
        allocation_pools: Some(pools),
        subnetpool_id: subnetpool_id.map(str::to_string),
        created: now_secs(),
    };
    Ok((uuid::Uuid::new_v4().to_string(), doc))
}

fn delete_subnet(svc: &Service, _ctx: &Ctx, id: &str, _d: SubnetDoc) -> Result<(), ApiError> {
    if !svc
        .store
        .list(Kind::IpAllocation, Some(id))
        .map_err(se)?
        .is_empty()
    {
        return Err(ApiError::conflict(format!(
            "Unable to complete operation on subnet {id}: one or more ports have an IP allocation from this subnet."
        )));
    }
    svc.store.delete(Kind::Subnet, id).map_err(se)
}

/// The one subnet of a network, if any.
pub fn subnet_of(svc: &Service, net_id: &str) -> Result<Option<(String, SubnetDoc)>, ApiError> {
    match svc
        .store
        .list(Kind::Subnet, Some(net_id))
        .map_err(se)?
        .into_iter()
        .next()
    {
        Some(r) => Ok(Some((r.id.clone(), r.parse().map_err(se)?))),
        None => Ok(None),
    }
}

fn network_view(svc: &Service, id: &str, d: &NetworkDoc) -> Result<Value, ApiError> {
    let subs: Vec<String> = svc
        .store
        .list(Kind::Subnet, Some(id))
        .map_err(se)?
        .into_iter()
        .map(|r| r.id)
        .collect();
    let t = crate::time::keystone(d.created);
    Ok(
        json!({"id": id, "name": d.name, "status": "ACTIVE", "admin_state_up": d.admin_state_up,
        "shared": d.shared, "tenant_id": d.project_id, "project_id": d.project_id, "mtu": d.mtu,
        "subnets": subs, "router:external": d.external, "port_security_enabled": true,
        "availability_zones": ["nova"], "availability_zone_hints": [], "ipv4_address_scope": null,
        "ipv6_address_scope": null, "description": "", "tags": [], "is_default": false,
        "created_at": t, "updated_at": t, "revision_number": 1}),
    )
}

fn subnet_view(id: &str, d: &SubnetDoc) -> Value {
    let t = crate::time::keystone(d.created);
    json!({"id": id, "name": d.name, "network_id": d.network_id, "tenant_id": d.project_id,
        "project_id": d.project_id, "cidr": d.cidr, "ip_version": 4, "gateway_ip": d.gateway_ip,
        "enable_dhcp": d.enable_dhcp, "dns_nameservers": [], "host_routes": [],
        "allocation_pools": d.pools(),
        "ipv6_ra_mode": null, "ipv6_address_mode": null, "subnetpool_id": d.subnetpool_id,
        "description": "", "tags": [], "service_types": [], "created_at": t, "updated_at": t,
        "revision_number": 1})
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pools(gateway: Option<&str>) -> Vec<String> {
        default_pools(Ipv4Addr::new(10, 0, 0, 0), 29, gateway)
            .iter()
            .map(|p| format!("{p}/{}", p.size()))
            .collect()
    }

    #[test]
    fn default_pools_leave_out_the_gateway_the_network_and_broadcast_addresses() {
        assert_eq!(pools(None), ["10.0.0.1-10.0.0.6/6"]);
        assert_eq!(pools(Some("10.0.0.1")), ["10.0.0.2-10.0.0.6/5"]);
        assert_eq!(pools(Some("10.0.0.6")), ["10.0.0.1-10.0.0.5/5"]);
        assert_eq!(
            pools(Some("10.0.0.3")),
            ["10.0.0.1-10.0.0.2/2", "10.0.0.4-10.0.0.6/3"]
        );
        // A gateway that is not a host address of the subnet takes nothing.
        assert_eq!(pools(Some("10.0.0.7")), ["10.0.0.1-10.0.0.6/6"]);
    }
}
