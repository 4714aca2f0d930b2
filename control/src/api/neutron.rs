//! Neutron v2.0's collections, served by one [`crud`] over a [`Collection`] each: networks
//! and subnets (declared in [`super::network`]), ports, routers (gateways and interfaces),
//! security groups and their rules, floating IPs, subnet pools (declared in
//! [`super::subnet_pool`]). Stored in control (see [`crate::network`]
//! for the design and how nodes get them); errors in Neutron's statuses (404 for what does
//! not exist or is not the caller's, 409 for conflicts such as a group in use, 400 for
//! malformed requests).

use std::net::Ipv4Addr;

use http::{Method, StatusCode};
use serde_json::{Map, Value, json};

use super::network::{Net, Subnet, SubnetDoc, network, subnet_of};
use super::openstack::{Owned, get, load as load_visible, owned, visible};
use super::subnet_pool::Pool;
use super::{ApiError, Request, Response, empty, json as json_resp};
use crate::identity::Ctx;
use crate::identity::token::now_secs;
use crate::network::{
    ExtraRoute, FixedIp, FloatingIpDoc, GatewayDoc, OWNER_GATEWAY, OWNER_INTERFACE, PortDoc,
    RouterDoc, RuleDoc, SecurityGroupDoc, all, allocation_id, default_group, in_cidr, new_mac,
    pick_address, release, reserve,
};
use crate::service::{Service, ServiceError};
use crate::store::{Kind, Record, StoreError, Write};

fn se(e: StoreError) -> ApiError {
    match e {
        StoreError::Conflict { .. } => {
            ApiError::conflict("the resource changed meanwhile (an address or name was taken)")
        }
        StoreError::Stale { .. } => ApiError::conflict("the resource changed meanwhile; retry"),
        e => ServiceError::from(e).into(),
    }
}

fn t(secs: u64) -> String {
    crate::time::keystone(secs)
}

pub(super) fn opt_str(o: &Map<String, Value>, key: &str) -> Result<Option<String>, ApiError> {
    match o.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(v) => Err(ApiError::bad_request(format!(
            "Invalid input for {key}. Reason: '{v}' is not a valid string."
        ))),
    }
}

pub(super) fn opt_bool(o: &Map<String, Value>, key: &str) -> Result<Option<bool>, ApiError> {
    match o.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(Value::String(s)) if s.eq_ignore_ascii_case("true") => Ok(Some(true)),
        Some(Value::String(s)) if s.eq_ignore_ascii_case("false") => Ok(Some(false)),
        Some(v) => Err(ApiError::bad_request(format!(
            "Invalid input for {key}. Reason: '{v}' is not a valid boolean value."
        ))),
    }
}

pub(super) fn name_of(o: &Map<String, Value>) -> Result<Option<String>, ApiError> {
    let n = opt_str(o, "name")?;
    if n.as_ref().is_some_and(|n| n.len() > 255) {
        return Err(ApiError::bad_request(
            "Invalid input for name. Reason: longer than 255 characters.",
        ));
    }
    Ok(n)
}

fn filtered(list: Vec<Value>, req: &Request) -> Vec<Value> {
    list.into_iter()
        .filter(|v| super::network::matches(&req.query, v))
        .collect()
}

/// A create: the body's object; the new record's view.
pub(super) type Create = fn(&Service, &Ctx, &Map<String, Value>) -> Result<Value, ApiError>;
/// An update: the record and its document as loaded (visible to the caller), the body's
/// object; the new view.
pub(super) type Update<D> =
    fn(&Service, &Ctx, &str, Record, D, &Map<String, Value>) -> Result<Value, ApiError>;
/// A delete of a record the caller may see, as loaded.
pub(super) type Delete<D> = fn(&Service, &Ctx, &str, D) -> Result<(), ApiError>;

/// One of Neutron's collections, served by [`crud`]: each declares its names, its
/// view, and what a create, an update and a delete do.
pub(super) trait Collection: Owned {
    /// The body key of one (`security_group`).
    const KEY: &'static str;
    /// Its path (`security-groups`).
    const PATH: &'static str;
    /// The body key of a list (`security_groups`).
    const LIST: &'static str;
    /// Makes one.
    const CREATE: Create;
    /// Changes one; `None`: it cannot be changed (no such route).
    const UPDATE: Option<Update<Self::Doc>>;
    /// Deletes one.
    const DELETE: Delete<Self::Doc>;

    /// Neutron's view.
    fn view(svc: &Service, id: &str, d: &Self::Doc) -> Result<Value, ApiError>;
    /// Runs before a list.
    fn before_list(_svc: &Service, _ctx: &Ctx) -> Result<(), ApiError> {
        Ok(())
    }
    /// The 400 for a create or update whose body has no object under [`Self::KEY`].
    fn no_body() -> ApiError {
        ApiError::bad_request(format!("Resource body required: {}", Self::KEY))
    }
}

/// The object of one `R` in a request's body, or [`Collection::no_body`].
fn body<R: Collection>(v: &Value) -> Result<&Map<String, Value>, ApiError> {
    v.get(R::KEY)
        .and_then(Value::as_object)
        .ok_or_else(R::no_body)
}

/// The views of all the records of a collection the caller may see.
fn list<R: Collection>(svc: &Service, ctx: &Ctx) -> Result<Vec<Value>, ApiError> {
    R::before_list(svc, ctx)?;
    let mut out = vec![];
    for (id, d) in all::<R::Doc>(&*svc.store, R::KIND, None).map_err(se)? {
        if R::sees(ctx, &d) {
            out.push(R::view(svc, &id, &d)?);
        }
    }
    Ok(out)
}

/// The routes of a collection (`rest`: the path after its name), if one matches.
fn crud<R: Collection>(
    svc: &Service,
    ctx: &Ctx,
    req: &Request,
    rest: &[&str],
) -> Option<Result<Response, ApiError>> {
    let one = |status: StatusCode, v: Value| json_resp(status, &json!({ R::KEY: v }));
    let r = match (rest, &req.method) {
        ([], &Method::GET) => list::<R>(svc, ctx)
            .map(|l| json_resp(StatusCode::OK, &json!({ R::LIST: filtered(l, req) }))),
        ([], &Method::POST) => req
            .json()
            .and_then(|b: Value| create::<R>(svc, ctx, body::<R>(&b)?))
            .map(|v| one(StatusCode::CREATED, v)),
        ([id], &Method::GET) => load_visible::<R>(svc, ctx, id)
            .and_then(|(_, d)| R::view(svc, id, &d))
            .map(|v| one(StatusCode::OK, v)),
        ([id], &Method::PUT) => {
            let update = R::UPDATE?;
            req.json()
                .and_then(|b: Value| {
                    let o = body::<R>(&b)?;
                    let (r, d) = load_visible::<R>(svc, ctx, id)?;
                    update(svc, ctx, id, r, d, o)
                })
                .map(|v| one(StatusCode::OK, v))
        }
        ([id], &Method::DELETE) => load_visible::<R>(svc, ctx, id)
            .and_then(|(_, d)| (R::DELETE)(svc, ctx, id, d))
            .map(|()| empty(StatusCode::NO_CONTENT)),
        _ => return None,
    };
    Some(r)
}

/// A create within the project's quota: checked before, and counted again once stored
/// (see [`super::neutron_quota`]); one that went over is deleted again and refused.
fn create<R: Collection>(
    svc: &Service,
    ctx: &Ctx,
    o: &Map<String, Value>,
) -> Result<Value, ApiError> {
    // Admins may create for another project; the stored record says for sure afterwards.
    let asked = ["project_id", "tenant_id"]
        .iter()
        .find_map(|k| o.get(*k).and_then(Value::as_str))
        .filter(|_| ctx.is_admin())
        .map(str::to_string)
        .or_else(|| ctx.project_id.clone())
        .unwrap_or_default();
    super::neutron_quota::check(svc, R::KIND, &asked, false)?;
    let v = (R::CREATE)(svc, ctx, o)?;
    let (Some(id), Some(owner)) = (
        v.get("id").and_then(Value::as_str),
        v.get("project_id").and_then(Value::as_str),
    ) else {
        return Ok(v);
    };
    if let Err(e) = super::neutron_quota::check(svc, R::KIND, owner, true) {
        let (_, d) = load_visible::<R>(svc, ctx, id)?;
        (R::DELETE)(svc, ctx, id, d)?;
        return Err(e);
    }
    Ok(v)
}

/// Each node agent, which reconciles netdp on its node, as a Neutron agent (`openstack
/// network agent list/show`), alive while it heartbeats. Admins only, as in Neutron.
fn agents(svc: &Service, ctx: &Ctx, rest: &[&str]) -> Result<Response, ApiError> {
    if !ctx.is_admin() {
        return Err(
            ApiError::forbidden("rule:get_agent is disallowed by policy")
                .kind("PolicyNotAuthorized"),
        );
    }
    let view = |id: &str, d: &crate::compute::NodeDoc, up: bool| {
        let t = crate::time::keystone(d.last_heartbeat);
        json!({"id": id, "agent_type": "netdp agent", "binary": "ferrostack-agent",
               "host": d.hostname, "availability_zone": d.availability_zone,
               "alive": up, "admin_state_up": true, "topic": "N/A",
               "configurations": {}, "description": null,
               "created_at": crate::time::keystone(d.registered_at),
               "started_at": t, "heartbeat_timestamp": t})
    };
    let nodes = super::compute::nodes_with_state(svc)?;
    match rest {
        [] => {
            let list: Vec<Value> = nodes.iter().map(|(id, d, up)| view(id, d, *up)).collect();
            Ok(json_resp(StatusCode::OK, &json!({"agents": list})))
        }
        [id] => nodes
            .iter()
            .find(|(n, _, _)| n == id)
            .map(|(id, d, up)| json_resp(StatusCode::OK, &json!({"agent": view(id, d, *up)})))
            .ok_or_else(|| ApiError::not_found(format!("Agent {id} could not be found."))),
        _ => Err(ApiError::not_found("The resource could not be found.")),
    }
}

/// Handles the resources of this module; `None` when the path is not one of them.
pub fn handle(svc: &Service, ctx: &Ctx, req: &Request) -> Option<Result<Response, ApiError>> {
    let s: Vec<&str> = req.segs.iter().map(String::as_str).collect();
    match (s.as_slice(), &req.method) {
        (["routers", id, "add_router_interface"], &Method::PUT) => {
            return Some(add_interface(svc, ctx, id, req).map(|v| json_resp(StatusCode::OK, &v)));
        }
        (["routers", id, "remove_router_interface"], &Method::PUT) => {
            return Some(
                remove_interface(svc, ctx, id, req).map(|v| json_resp(StatusCode::OK, &v)),
            );
        }
        (
            [
                "routers",
                id,
                action @ ("add_extraroutes" | "remove_extraroutes"),
            ],
            &Method::PUT,
        ) => {
            let add = *action == "add_extraroutes";
            return Some(
                change_routes(svc, ctx, id, req, add)
                    .map(|v| json_resp(StatusCode::OK, &json!({ "router": v }))),
            );
        }
        _ => {}
    }
    let (first, rest) = s.split_first()?;
    match *first {
        "quotas" => super::neutron_quota::handle(svc, ctx, req, rest),
        "agents" if req.method == Method::GET => Some(agents(svc, ctx, rest)),
        "network-ip-availabilities" => Some(super::ip_availability::handle(svc, ctx, req, rest)),
        p if p == Net::PATH => crud::<Net>(svc, ctx, req, rest),
        p if p == Subnet::PATH => crud::<Subnet>(svc, ctx, req, rest),
        p if p == Port::PATH => crud::<Port>(svc, ctx, req, rest),
        p if p == Router::PATH => crud::<Router>(svc, ctx, req, rest),
        p if p == Group::PATH => crud::<Group>(svc, ctx, req, rest),
        p if p == Rule::PATH => crud::<Rule>(svc, ctx, req, rest),
        p if p == Fip::PATH => crud::<Fip>(svc, ctx, req, rest),
        p if p == Pool::PATH => crud::<Pool>(svc, ctx, req, rest),
        _ => None,
    }
}

// ---------------------------------------------------------------------------------------
// Ports.

/// A port's Neutron view.
pub fn port_view(id: &str, d: &PortDoc) -> Value {
    let bound = !d.host.is_empty() || d.device_owner.starts_with("network:");
    let status = if bound && !d.device_id.is_empty() && d.admin_state_up {
        "ACTIVE"
    } else {
        "DOWN"
    };
    json!({"id": id, "name": d.name, "network_id": d.network_id, "tenant_id": d.project_id,
        "project_id": d.project_id, "mac_address": d.mac_address, "admin_state_up": d.admin_state_up,
        "status": status, "device_id": d.device_id, "device_owner": d.device_owner,
        "fixed_ips": d.fixed_ips, "security_groups": d.security_groups,
        "port_security_enabled": d.port_security_enabled, "binding:host_id": d.host,
        "binding:vif_type": if d.host.is_empty() { "unbound" } else { "tap" },
        "binding:vnic_type": "normal", "binding:profile": {}, "binding:vif_details": {},
        "allowed_address_pairs": [], "extra_dhcp_opts": [], "description": d.description,
        "dns_name": "", "dns_assignment": [], "qos_policy_id": null, "tags": [],
        "created_at": t(d.created), "updated_at": t(d.updated), "revision_number": 1})
}

owned!(
    /// Ports: their project's (a router's gateway port is nobody's: admins only).
    Port: Kind::Port, "Port", PortDoc
);

impl Collection for Port {
    const KEY: &'static str = "port";
    const PATH: &'static str = "ports";
    const LIST: &'static str = "ports";
    const CREATE: Create = create_port;
    const UPDATE: Option<Update<PortDoc>> = Some(update_port);
    const DELETE: Delete<PortDoc> = delete_port;

    fn view(_svc: &Service, id: &str, d: &PortDoc) -> Result<Value, ApiError> {
        Ok(port_view(id, d))
    }
}

/// A port visible to the caller.
pub fn port(svc: &Service, ctx: &Ctx, id: &str) -> Result<(Record, PortDoc), ApiError> {
    load_visible::<Port>(svc, ctx, id)
}

/// Resolves security groups given by id (or, for Nova's `--security-group`, by name) in
/// the caller's view; 404 for unknown ones.
pub fn resolve_groups(
    svc: &Service,
    ctx: &Ctx,
    project: &str,
    wanted: &[String],
) -> Result<Vec<String>, ApiError> {
    let mut out = vec![];
    for w in wanted {
        let id = if let Some((_, d)) = svc
            .store
            .get(Kind::SecurityGroup, w)
            .map_err(se)?
            .map(|r| Ok::<_, ApiError>((r.id.clone(), r.parse::<SecurityGroupDoc>().map_err(se)?)))
            .transpose()?
            .filter(|(_, d)| visible(ctx, &d.project_id))
        {
            let _ = d;
            w.clone()
        } else if w == "default" {
            default_group(&*svc.store, project)?
        } else {
            let found: Vec<String> =
                all::<SecurityGroupDoc>(&*svc.store, Kind::SecurityGroup, Some(project))
                    .map_err(se)?
                    .into_iter()
                    .filter(|(_, d)| &d.name == w)
                    .map(|(id, _)| id)
                    .collect();
            match found.as_slice() {
                [one] => one.clone(),
                [] => {
                    return Err(ApiError::not_found(format!(
                        "Security group {w} does not exist"
                    )));
                }
                _ => {
                    return Err(ApiError::conflict(format!(
                        "Multiple security groups are named {w}; use an id"
                    )));
                }
            }
        };
        if !out.contains(&id) {
            out.push(id);
        }
    }
    Ok(out)
}

/// What a new port is made of (from the API or from a server's `--network`).
#[derive(Debug, Default)]
pub struct NewPort {
    /// Name.
    pub name: String,
    /// Network (visible to the caller).
    pub network_id: String,
    /// A subnet and/or address asked for.
    pub fixed_ip: Option<(Option<String>, Option<String>)>,
    /// MAC asked for.
    pub mac_address: Option<String>,
    /// Groups (resolved ids); `None` for the project's default.
    pub security_groups: Option<Vec<String>>,
    /// Default true.
    pub port_security_enabled: Option<bool>,
    /// Device.
    pub device_owner: String,
    /// Device id.
    pub device_id: String,
    /// Node id.
    pub host: String,
    /// Admin state.
    pub admin_state_up: bool,
    /// Description.
    pub description: String,
}

/// Creates a port record with its address reserved, in one batch; returns its id.
pub fn insert_port(
    svc: &Service,
    ctx: &Ctx,
    project: &str,
    p: NewPort,
) -> Result<(String, PortDoc), ApiError> {
    let (_, net) = network(svc, ctx, &p.network_id)?;
    let sub = subnet_of(svc, &p.network_id)?;
    if let Some(m) = &p.mac_address
        && !valid_mac(m)
    {
        return Err(ApiError::bad_request(format!(
            "Invalid input for mac_address. Reason: '{m}' is not a valid MAC address."
        )));
    }
    let security = p.port_security_enabled.unwrap_or(true);
    let groups = match p.security_groups {
        Some(g) if !security && !g.is_empty() => {
            return Err(ApiError::bad_request(
                "Port security must be enabled and port must have an IP address in order to use security groups.",
            ));
        }
        Some(g) => g,
        None if security => vec![default_group(&*svc.store, project)?],
        None => vec![],
    };
    let _ = net;
    for attempt in 0..5 {
        let mut writes = vec![];
        let id = uuid::Uuid::new_v4().to_string();
        let mut fixed_ips = vec![];
        match (&sub, &p.fixed_ip) {
            (None, Some(_)) => {
                return Err(ApiError::bad_request(format!(
                    "network {} has no subnet to take an address from",
                    p.network_id
                )));
            }
            (None, None) => {}
            (Some((sid, s)), want) => {
                let (want_subnet, want_ip) = want.clone().unwrap_or((None, None));
                if let Some(ws) = &want_subnet
                    && ws != sid
                {
                    return Err(ApiError::bad_request(format!(
                        "Invalid input for operation: subnet {ws} is not on network {}.",
                        p.network_id
                    )));
                }
                let ip = pick_address(&*svc.store, sid, s, want_ip.as_deref())?;
                writes.push(reserve(sid, &ip, &id));
                fixed_ips.push(FixedIp {
                    subnet_id: sid.clone(),
                    ip_address: ip,
                });
            }
        }
        let now = now_secs();
        let doc = PortDoc {
            name: p.name.clone(),
            network_id: p.network_id.clone(),
            project_id: project.to_string(),
            mac_address: p.mac_address.clone().unwrap_or_else(new_mac),
            fixed_ips,
            security_groups: groups.clone(),
            port_security_enabled: security,
            device_owner: p.device_owner.clone(),
            device_id: p.device_id.clone(),
            host: p.host.clone(),
            admin_state_up: p.admin_state_up,
            description: p.description.clone(),
            created: now,
            updated: now,
        };
        writes.push(Write::Insert(Record::new(
            Kind::Port,
            &id,
            &p.network_id,
            None,
            &doc,
        )));
        match svc.store.apply(&writes) {
            Ok(()) => return Ok((id, doc)),
            // Someone took the address meanwhile: pick again (unless it was asked for).
            Err(StoreError::Conflict { .. })
                if attempt < 4 && p.fixed_ip.as_ref().is_none_or(|f| f.1.is_none()) =>
            {
                continue;
            }
            Err(StoreError::Conflict { .. }) => {
                return Err(ApiError::conflict("the IP address is already allocated"));
            }
            Err(e) => return Err(se(e)),
        }
    }
    Err(ApiError::conflict("no address could be reserved; retry"))
}

fn valid_mac(m: &str) -> bool {
    let parts: Vec<&str> = m.split(':').collect();
    parts.len() == 6
        && parts
            .iter()
            .all(|p| p.len() == 2 && p.bytes().all(|b| b.is_ascii_hexdigit()))
        && u8::from_str_radix(parts[0], 16).is_ok_and(|b| b & 1 == 0)
}

/// A node by id or host name, for `binding:host_id`.
fn node_id_of(svc: &Service, host: &str) -> Result<String, ApiError> {
    if host.is_empty() {
        return Ok(String::new());
    }
    for (r, d) in crate::compute::list_nodes(&*svc.store).map_err(se)? {
        if r.id == host || d.hostname == host {
            return Ok(r.id);
        }
    }
    Err(ApiError::bad_request(format!(
        "binding:host_id {host} is not a registered node"
    )))
}

fn groups_field(o: &Map<String, Value>) -> Result<Option<Vec<String>>, ApiError> {
    match o.get("security_groups") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Array(a)) => a
            .iter()
            .map(|g| {
                g.as_str().map(str::to_string).ok_or_else(|| {
                    ApiError::bad_request("Invalid input for security_groups: a list of ids")
                })
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some),
        Some(_) => Err(ApiError::bad_request(
            "Invalid input for security_groups: a list of ids",
        )),
    }
}

fn create_port(svc: &Service, ctx: &Ctx, o: &Map<String, Value>) -> Result<Value, ApiError> {
    let network_id = opt_str(o, "network_id")?.ok_or_else(|| {
        ApiError::bad_request(
            "Failed to parse request. Required attribute 'network_id' not specified",
        )
    })?;
    let (_, net) = network(svc, ctx, &network_id)?;
    let project = match opt_str(o, "project_id")?.or(opt_str(o, "tenant_id")?) {
        Some(p) if ctx.is_admin() => p,
        _ => ctx.project_id.clone().unwrap_or(net.project_id),
    };
    let fixed_ip = match o.get("fixed_ips") {
        None | Some(Value::Null) => None,
        Some(Value::Array(a)) if a.is_empty() => None,
        Some(Value::Array(a)) if a.len() == 1 && a[0].is_object() => {
            let f = a[0].as_object().expect("checked");
            Some((opt_str(f, "subnet_id")?, opt_str(f, "ip_address")?))
        }
        Some(_) => {
            return Err(ApiError::bad_request(
                "Invalid input for fixed_ips: one {subnet_id, ip_address} is supported",
            ));
        }
    };
    let groups = match groups_field(o)? {
        Some(g) => Some(resolve_groups(svc, ctx, &project, &g)?),
        None => None,
    };
    let host = match opt_str(o, "binding:host_id")? {
        Some(h) if !h.is_empty() => {
            if !ctx.is_admin() {
                return Err(ApiError::forbidden(
                    "binding:host_id can be set by an admin only",
                ));
            }
            node_id_of(svc, &h)?
        }
        _ => String::new(),
    };
    let device_owner = opt_str(o, "device_owner")?.unwrap_or_default();
    if device_owner.starts_with("network:") {
        return Err(ApiError::bad_request(format!(
            "device_owner {device_owner} is reserved for the network service"
        )));
    }
    let (id, d) = insert_port(
        svc,
        ctx,
        &project,
        NewPort {
            name: name_of(o)?.unwrap_or_default(),
            network_id,
            fixed_ip,
            mac_address: opt_str(o, "mac_address")?,
            security_groups: groups,
            port_security_enabled: opt_bool(o, "port_security_enabled")?,
            device_owner,
            device_id: opt_str(o, "device_id")?.unwrap_or_default(),
            host,
            admin_state_up: opt_bool(o, "admin_state_up")?.unwrap_or(true),
            description: opt_str(o, "description")?.unwrap_or_default(),
        },
    )?;
    Ok(port_view(&id, &d))
}

fn update_port(
    svc: &Service,
    ctx: &Ctx,
    id: &str,
    r: Record,
    mut d: PortDoc,
    o: &Map<String, Value>,
) -> Result<Value, ApiError> {
    for k in ["fixed_ips", "mac_address", "network_id"] {
        if o.get(k).is_some() {
            return Err(ApiError::bad_request(format!(
                "Cannot update read-only attribute {k} here"
            )));
        }
    }
    if let Some(n) = name_of(o)? {
        d.name = n;
    }
    if let Some(v) = opt_str(o, "description")? {
        d.description = v;
    }
    if let Some(v) = opt_bool(o, "admin_state_up")? {
        d.admin_state_up = v;
    }
    if let Some(v) = opt_bool(o, "port_security_enabled")? {
        d.port_security_enabled = v;
    }
    if let Some(g) = groups_field(o)? {
        d.security_groups = resolve_groups(svc, ctx, &d.project_id, &g)?;
    }
    if !d.port_security_enabled && !d.security_groups.is_empty() {
        return Err(ApiError::conflict(
            "Port has security group associated. Cannot disable port security or ip address until security group is removed",
        ));
    }
    if let Some(v) = opt_str(o, "device_id")? {
        d.device_id = v;
    }
    if let Some(v) = opt_str(o, "device_owner")? {
        d.device_owner = v;
    }
    if let Some(h) = opt_str(o, "binding:host_id")? {
        if !ctx.is_admin() {
            return Err(ApiError::forbidden(
                "binding:host_id can be set by an admin only",
            ));
        }
        d.host = node_id_of(svc, &h)?;
    }
    d.updated = now_secs();
    svc.store.update(r.with_doc(None, &d)).map_err(se)?;
    Ok(port_view(id, &d))
}

/// Deletes a port record, frees its addresses and disassociates its floating IPs.
pub fn remove_port(svc: &Service, id: &str, d: &PortDoc) -> Result<(), ApiError> {
    let mut writes = vec![Write::Delete(Kind::Port, id.to_string())];
    for f in &d.fixed_ips {
        writes.push(release(&f.subnet_id, &f.ip_address));
    }
    for r in svc.store.list(Kind::FloatingIp, None).map_err(se)? {
        let mut f: FloatingIpDoc = r.parse().map_err(se)?;
        if f.port_id.as_deref() == Some(id) {
            f.port_id = None;
            f.fixed_ip_address = None;
            f.router_id = None;
            f.updated = now_secs();
            writes.push(Write::Update(r.with_doc(None, &f)));
        }
    }
    svc.store.apply(&writes).map_err(se)
}

fn delete_port(svc: &Service, _ctx: &Ctx, id: &str, d: PortDoc) -> Result<(), ApiError> {
    if d.device_owner.starts_with("network:") {
        return Err(ApiError::conflict(format!(
            "Port {id} cannot be deleted directly via the port API: has device owner {}.",
            d.device_owner
        )));
    }
    if d.device_owner.starts_with("compute:")
        && !d.device_id.is_empty()
        && svc
            .store
            .get(Kind::Server, &d.device_id)
            .map_err(se)?
            .is_some()
    {
        return Err(ApiError::conflict(format!(
            "Port {id} is in use by server {}; delete the server first.",
            d.device_id
        )));
    }
    remove_port(svc, id, &d)
}

// ---------------------------------------------------------------------------------------
// Routers.

fn router_view(id: &str, d: &RouterDoc) -> Value {
    let gw = d.gateway.as_ref().map(|g| {
        json!({"network_id": g.network_id, "enable_snat": g.enable_snat,
               "external_fixed_ips": [{"subnet_id": g.subnet_id, "ip_address": g.ip_address}]})
    });
    json!({"id": id, "name": d.name, "tenant_id": d.project_id, "project_id": d.project_id,
        "admin_state_up": d.admin_state_up, "status": "ACTIVE", "external_gateway_info": gw,
        "routes": d.routes, "distributed": true, "ha": false, "flavor_id": null,
        "availability_zones": ["nova"], "availability_zone_hints": [],
        "description": d.description, "tags": [], "created_at": t(d.created),
        "updated_at": t(d.updated), "revision_number": 1})
}

owned!(
    /// Routers: their project's.
    Router: Kind::Router, "Router", RouterDoc
);

impl Collection for Router {
    const KEY: &'static str = "router";
    const PATH: &'static str = "routers";
    const LIST: &'static str = "routers";
    const CREATE: Create = create_router;
    const UPDATE: Option<Update<RouterDoc>> = Some(update_router);
    const DELETE: Delete<RouterDoc> = delete_router;

    fn view(_svc: &Service, id: &str, d: &RouterDoc) -> Result<Value, ApiError> {
        Ok(router_view(id, d))
    }
}

/// Makes the gateway port for `router` on external network `info.network_id`; returns
/// the gateway and the writes (port and address).
fn gateway_writes(
    svc: &Service,
    ctx: &Ctx,
    router: &str,
    info: &Map<String, Value>,
) -> Result<(GatewayDoc, Vec<Write>), ApiError> {
    let net_id = opt_str(info, "network_id")?.ok_or_else(|| {
        ApiError::bad_request("Invalid input for external_gateway_info: network_id is required")
    })?;
    let (_, net) = network(svc, ctx, &net_id)?;
    if !net.external {
        return Err(ApiError::bad_request(format!(
            "Bad router request: Network {net_id} is not a valid external network."
        )));
    }
    let (sid, sub) = subnet_of(svc, &net_id)?.ok_or_else(|| {
        ApiError::bad_request(format!(
            "Bad router request: external network {net_id} has no subnet."
        ))
    })?;
    let want = info
        .get("external_fixed_ips")
        .and_then(Value::as_array)
        .and_then(|a| a.first())
        .and_then(|f| f.get("ip_address"))
        .and_then(Value::as_str);
    let ip = pick_address(&*svc.store, &sid, &sub, want)?;
    let port_id = uuid::Uuid::new_v4().to_string();
    let now = now_secs();
    let port = PortDoc {
        name: String::new(),
        network_id: net_id.clone(),
        project_id: String::new(),
        mac_address: new_mac(),
        fixed_ips: vec![FixedIp {
            subnet_id: sid.clone(),
            ip_address: ip.clone(),
        }],
        security_groups: vec![],
        port_security_enabled: false,
        device_owner: OWNER_GATEWAY.into(),
        device_id: router.into(),
        host: String::new(),
        admin_state_up: true,
        description: String::new(),
        created: now,
        updated: now,
    };
    let gw = GatewayDoc {
        network_id: net_id.clone(),
        enable_snat: opt_bool(info, "enable_snat")?.unwrap_or(true),
        port_id: port_id.clone(),
        subnet_id: sid.clone(),
        ip_address: ip.clone(),
    };
    Ok((
        gw,
        vec![
            reserve(&sid, &ip, &port_id),
            Write::Insert(Record::new(Kind::Port, &port_id, &net_id, None, &port)),
        ],
    ))
}

fn gateway_info(o: &Map<String, Value>) -> Result<Option<Option<&Map<String, Value>>>, ApiError> {
    match o.get("external_gateway_info") {
        None => Ok(None),
        Some(Value::Null) => Ok(Some(None)),
        Some(Value::Object(m)) if m.is_empty() => Ok(Some(None)),
        Some(Value::Object(m)) => Ok(Some(Some(m))),
        Some(_) => Err(ApiError::bad_request(
            "Invalid input for external_gateway_info: an object or null",
        )),
    }
}

fn create_router(svc: &Service, ctx: &Ctx, o: &Map<String, Value>) -> Result<Value, ApiError> {
    if o.contains_key("routes") {
        return Err(
            ApiError::bad_request("Attribute 'routes' not allowed in POST").kind("HTTPBadRequest"),
        );
    }
    let project = ctx.project_id.clone().unwrap_or_default();
    let id = uuid::Uuid::new_v4().to_string();
    let now = now_secs();
    let mut writes = vec![];
    let gateway = match gateway_info(o)?.flatten() {
        Some(info) => {
            let (gw, w) = gateway_writes(svc, ctx, &id, info)?;
            writes.extend(w);
            Some(gw)
        }
        None => None,
    };
    let d = RouterDoc {
        name: name_of(o)?.unwrap_or_default(),
        project_id: project.clone(),
        admin_state_up: opt_bool(o, "admin_state_up")?.unwrap_or(true),
        gateway,
        routes: vec![],
        description: opt_str(o, "description")?.unwrap_or_default(),
        created: now,
        updated: now,
    };
    writes.push(Write::Insert(Record::new(
        Kind::Router,
        &id,
        &project,
        None,
        &d,
    )));
    svc.store.apply(&writes).map_err(se)?;
    Ok(router_view(&id, &d))
}

/// Floating IPs translated by `router`.
fn router_fips(svc: &Service, router: &str) -> Result<Vec<(String, FloatingIpDoc)>, ApiError> {
    Ok(all::<FloatingIpDoc>(&*svc.store, Kind::FloatingIp, None)
        .map_err(se)?
        .into_iter()
        .filter(|(_, f)| f.router_id.as_deref() == Some(router))
        .collect())
}

fn clear_gateway_writes(
    svc: &Service,
    router: &str,
    gw: &GatewayDoc,
) -> Result<Vec<Write>, ApiError> {
    if !router_fips(svc, router)?.is_empty() {
        return Err(ApiError::conflict(format!(
            "Gateway cannot be updated for router {router}, since a gateway to external network {} is required by one or more floating IPs.",
            gw.network_id
        )));
    }
    Ok(vec![
        Write::Delete(Kind::Port, gw.port_id.clone()),
        release(&gw.subnet_id, &gw.ip_address),
    ])
}

fn update_router(
    svc: &Service,
    ctx: &Ctx,
    id: &str,
    r: Record,
    mut d: RouterDoc,
    o: &Map<String, Value>,
) -> Result<Value, ApiError> {
    if let Some(n) = name_of(o)? {
        d.name = n;
    }
    if let Some(v) = opt_str(o, "description")? {
        d.description = v;
    }
    if let Some(v) = opt_bool(o, "admin_state_up")? {
        d.admin_state_up = v;
    }
    // Routes are checked against the router's ports as they are before any gateway
    // change in the same request, as Neutron does.
    if o.contains_key("routes") {
        let routes = routes_field(o.get("routes"))?;
        d.routes = check_routes(svc, id, &d, routes)?;
    }
    let mut writes = vec![];
    match gateway_info(o)? {
        None => {}
        Some(None) => {
            if let Some(gw) = d.gateway.take() {
                writes.extend(clear_gateway_writes(svc, id, &gw)?);
            }
        }
        Some(Some(info)) => {
            let same = d.gateway.as_ref().is_some_and(|g| {
                info.get("network_id").and_then(Value::as_str) == Some(g.network_id.as_str())
                    && info.get("external_fixed_ips").is_none()
            });
            if same {
                let g = d.gateway.as_mut().expect("checked");
                if let Some(s) = opt_bool(info, "enable_snat")? {
                    g.enable_snat = s;
                }
            } else {
                if let Some(gw) = d.gateway.take() {
                    writes.extend(clear_gateway_writes(svc, id, &gw)?);
                }
                let (gw, w) = gateway_writes(svc, ctx, id, info)?;
                writes.extend(w);
                d.gateway = Some(gw);
            }
        }
    }
    d.updated = now_secs();
    writes.push(Write::Update(r.with_doc(None, &d)));
    svc.store.apply(&writes).map_err(se)?;
    Ok(router_view(id, &d))
}

/// How many extra routes a router may have (Neutron's `max_routes` default).
const MAX_ROUTES: usize = 30;

/// A route's destination as a network CIDR (any prefix length; host bits must be clear).
fn route_cidr(dest: &str) -> Result<(Ipv4Addr, u8), ApiError> {
    let parsed = dest.split_once('/').and_then(|(ip, len)| {
        let ip: Ipv4Addr = ip.parse().ok()?;
        let len: u8 = len.parse().ok().filter(|l| *l <= 32)?;
        Some((ip, len))
    });
    let (ip, len) = parsed.ok_or_else(|| {
        ApiError::bad_request(format!(
            "Invalid input for routes. Reason: '{dest}' is not a valid IP subnet."
        ))
        .kind("HTTPBadRequest")
    })?;
    let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
    let net = Ipv4Addr::from(u32::from(ip) & mask);
    if net != ip {
        return Err(ApiError::bad_request(format!(
            "Invalid input for routes. Reason: '{dest}' isn't a recognized IP subnet cidr, '{net}/{len}' is recommended."
        ))
        .kind("HTTPBadRequest"));
    }
    Ok((ip, len))
}

/// The `routes` of a request: a list of `{"destination", "nexthop"}` (null: none).
fn routes_field(v: Option<&Value>) -> Result<Vec<ExtraRoute>, ApiError> {
    let list = match v {
        None | Some(Value::Null) => return Ok(vec![]),
        Some(Value::Array(a)) => a,
        Some(v) => {
            return Err(ApiError::bad_request(format!(
                "Invalid input for routes. Reason: '{v}' is not a list."
            ))
            .kind("HTTPBadRequest"));
        }
    };
    let mut out = vec![];
    for r in list {
        let route = r.as_object().filter(|o| o.len() == 2).and_then(|o| {
            Some(ExtraRoute {
                destination: o.get("destination")?.as_str()?.to_string(),
                nexthop: o.get("nexthop")?.as_str()?.to_string(),
            })
        });
        let route = route.ok_or_else(|| {
            ApiError::bad_request(format!(
                "Invalid input for routes. Reason: '{r}' is not a route: expected the keys destination and nexthop."
            ))
            .kind("HTTPBadRequest")
        })?;
        route_cidr(&route.destination)?;
        if route.nexthop.parse::<Ipv4Addr>().is_err() {
            return Err(ApiError::bad_request(format!(
                "Invalid input for routes. Reason: '{}' is not a valid IP address.",
                route.nexthop
            ))
            .kind("HTTPBadRequest"));
        }
        out.push(route);
    }
    Ok(out)
}

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

/// Checks a router's whole new set of routes as Neutron does: each next hop is on the
/// subnet of one of the router's ports (interfaces and gateway) and is not one of their
/// addresses, at most [`MAX_ROUTES`]; returns them sorted, without duplicates.
fn check_routes(
    svc: &Service,
    id: &str,
    d: &RouterDoc,
    mut routes: Vec<ExtraRoute>,
) -> Result<Vec<ExtraRoute>, ApiError> {
    let shown = routes_repr(&routes);
    routes.sort();
    routes.dedup();
    if routes.len() > MAX_ROUTES {
        return Err(ApiError::bad_request(format!(
            "Unable to complete operation for {id}. The number of routes exceeds the maximum {MAX_ROUTES}."
        ))
        .kind("RoutesExhausted"));
    }
    let mut fixed: Vec<(String, String)> = interfaces(svc, id)?
        .into_iter()
        .flat_map(|(_, p)| p.fixed_ips)
        .map(|f| (f.subnet_id, f.ip_address))
        .collect();
    if let Some(g) = &d.gateway {
        fixed.push((g.subnet_id.clone(), g.ip_address.clone()));
    }
    let mut cidrs = vec![];
    for (sub, _) in &fixed {
        if let Some(r) = svc.store.get(Kind::Subnet, sub).map_err(se)? {
            cidrs.push(r.parse::<SubnetDoc>().map_err(se)?.cidr);
        }
    }
    for r in &routes {
        let nexthop: Ipv4Addr = r.nexthop.parse().map_err(|_| {
            ApiError::bad_request(format!(
                "Invalid input for routes. Reason: '{}' is not a valid IP address.",
                r.nexthop
            ))
        })?;
        if !cidrs.iter().any(|c| in_cidr(nexthop, c)) {
            return Err(ApiError::bad_request(format!(
                "Invalid format for routes: {shown}, the nexthop is not connected with router"
            ))
            .kind("InvalidRoutes"));
        }
        if fixed.iter().any(|(_, ip)| ip == &r.nexthop) {
            return Err(ApiError::bad_request(format!(
                "Invalid format for routes: {shown}, the nexthop is used by router"
            ))
            .kind("InvalidRoutes"));
        }
    }
    Ok(routes)
}

/// `add_extraroutes` (`add`) and `remove_extraroutes` (extraroute-atomic): the router's
/// routes with the body's added (duplicates merged) or removed (absent ones ignored),
/// checked as a whole as an update's are; answers the router.
fn change_routes(
    svc: &Service,
    ctx: &Ctx,
    id: &str,
    req: &Request,
    add: bool,
) -> Result<Value, ApiError> {
    let b: Value = req.json()?;
    let o = body::<Router>(&b)?;
    let (r, mut d) = load_visible::<Router>(svc, ctx, id)?;
    if !o.contains_key("routes") || o.len() != 1 {
        return Err(ApiError::bad_request(
            "Bad router request: the body must be {\"router\": {\"routes\": [...]}}.",
        ));
    }
    let given = routes_field(o.get("routes"))?;
    let routes: Vec<ExtraRoute> = if add {
        d.routes.iter().chain(&given).cloned().collect()
    } else {
        d.routes
            .iter()
            .filter(|x| !given.contains(x))
            .cloned()
            .collect()
    };
    d.routes = check_routes(svc, id, &d, routes)?;
    d.updated = now_secs();
    svc.store
        .apply(&[Write::Update(r.with_doc(None, &d))])
        .map_err(se)?;
    Ok(router_view(id, &d))
}

/// A router's interface ports.
fn interfaces(svc: &Service, router: &str) -> Result<Vec<(String, PortDoc)>, ApiError> {
    Ok(all::<PortDoc>(&*svc.store, Kind::Port, None)
        .map_err(se)?
        .into_iter()
        .filter(|(_, p)| p.device_owner == OWNER_INTERFACE && p.device_id == router)
        .collect())
}

fn delete_router(svc: &Service, _ctx: &Ctx, id: &str, d: RouterDoc) -> Result<(), ApiError> {
    let ifaces = interfaces(svc, id)?;
    if !ifaces.is_empty() {
        return Err(ApiError::conflict(format!(
            "Router {id} still has ports: {}",
            ifaces
                .iter()
                .map(|(i, _)| i.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    let mut writes = vec![Write::Delete(Kind::Router, id.to_string())];
    if let Some(gw) = &d.gateway {
        writes.extend(clear_gateway_writes(svc, id, gw)?);
    }
    svc.store.apply(&writes).map_err(se)
}

fn interface_body(o: &Map<String, Value>) -> Result<(Option<String>, Option<String>), ApiError> {
    let sub = opt_str(o, "subnet_id")?;
    let port = opt_str(o, "port_id")?;
    if sub.is_none() && port.is_none() {
        return Err(ApiError::bad_request(
            "Bad router request: Either subnet_id or port_id must be specified.",
        ));
    }
    if sub.is_some() && port.is_some() {
        return Err(ApiError::bad_request(
            "Bad router request: Cannot specify both subnet-id and port-id.",
        ));
    }
    Ok((sub, port))
}

fn add_interface(svc: &Service, ctx: &Ctx, id: &str, req: &Request) -> Result<Value, ApiError> {
    let b: Value = req.json()?;
    let o = b
        .as_object()
        .ok_or_else(|| ApiError::bad_request("the body must be a JSON object"))?;
    let (r, d) = load_visible::<Router>(svc, ctx, id)?;
    let (sub_id, port_id) = interface_body(o)?;
    let Some(sub_id) = sub_id else {
        return Err(ApiError::bad_request(format!(
            "Bad router request: adding an interface by port ({}) is not supported here; give the subnet_id.",
            port_id.unwrap_or_default()
        )));
    };
    // Visibility is decided below: a subnet of a shared network may be another's.
    let (_, sub) = get::<Subnet>(svc, &sub_id)?;
    let (_, net) = get::<Net>(svc, &sub.network_id)?;
    if !visible(ctx, &sub.project_id) && !net.shared {
        return Err(ApiError::not_found(format!(
            "Subnet {sub_id} could not be found."
        )));
    }
    if net.external {
        return Err(ApiError::bad_request(format!(
            "Bad router request: subnet {sub_id} is on an external network; set it as the router's gateway instead."
        )));
    }
    let gw_ip = sub.gateway_ip.clone().ok_or_else(|| {
        ApiError::bad_request(
            "Bad router request: Subnet for router interface must have a gateway IP.",
        )
    })?;
    for (_, p) in all::<PortDoc>(&*svc.store, Kind::Port, Some(&sub.network_id)).map_err(se)? {
        if p.device_owner == OWNER_INTERFACE && p.fixed_ips.iter().any(|f| f.subnet_id == sub_id) {
            return Err(if p.device_id == id {
                ApiError::bad_request(format!(
                    "Bad router request: Router already has a port on subnet {sub_id}."
                ))
            } else {
                ApiError::conflict(format!(
                    "IP address {gw_ip} already allocated in subnet {sub_id}: router {} has it.",
                    p.device_id
                ))
            });
        }
    }
    // A port may hold the gateway address (Neutron allows it); the interface then cannot
    // have it, with Neutron's IpAddressAlreadyAllocated.
    if svc
        .store
        .get(Kind::IpAllocation, &allocation_id(&sub_id, &gw_ip))
        .map_err(se)?
        .is_some()
    {
        return Err(ApiError::conflict(format!(
            "IP address {gw_ip} already allocated in subnet {sub_id}"
        ))
        .kind("IpAddressAlreadyAllocated"));
    }
    let port_id = uuid::Uuid::new_v4().to_string();
    let now = now_secs();
    let port = PortDoc {
        name: String::new(),
        network_id: sub.network_id.clone(),
        project_id: d.project_id.clone(),
        mac_address: new_mac(),
        fixed_ips: vec![FixedIp {
            subnet_id: sub_id.clone(),
            ip_address: gw_ip.clone(),
        }],
        security_groups: vec![],
        port_security_enabled: false,
        device_owner: OWNER_INTERFACE.into(),
        device_id: id.into(),
        host: String::new(),
        admin_state_up: true,
        description: String::new(),
        created: now,
        updated: now,
    };
    // The router's version moves too, so that concurrent changes serialise on it.
    let mut d2 = d.clone();
    d2.updated = now;
    svc.store
        .apply(&[
            reserve(&sub_id, &gw_ip, &port_id),
            Write::Insert(Record::new(
                Kind::Port,
                &port_id,
                &sub.network_id,
                None,
                &port,
            )),
            Write::Update(r.with_doc(None, &d2)),
        ])
        .map_err(se)?;
    Ok(
        json!({"id": id, "subnet_id": sub_id, "subnet_ids": [sub_id], "port_id": port_id,
              "network_id": sub.network_id, "tenant_id": d.project_id, "project_id": d.project_id}),
    )
}

fn remove_interface(svc: &Service, ctx: &Ctx, id: &str, req: &Request) -> Result<Value, ApiError> {
    let b: Value = req.json()?;
    let o = b
        .as_object()
        .ok_or_else(|| ApiError::bad_request("the body must be a JSON object"))?;
    let (r, d) = load_visible::<Router>(svc, ctx, id)?;
    let (sub_id, port_id) = interface_body(o)?;
    let (pid, port) = interfaces(svc, id)?
        .into_iter()
        .find(|(pid, p)| {
            port_id.as_deref().is_none_or(|x| x == pid)
                && sub_id
                    .as_deref()
                    .is_none_or(|s| p.fixed_ips.iter().any(|f| f.subnet_id == s))
        })
        .ok_or_else(|| match (&sub_id, &port_id) {
            (Some(s), _) => {
                ApiError::not_found(format!("Router {id} has no interface on subnet {s}"))
            }
            (_, p) => ApiError::not_found(format!(
                "Router {id} does not have an interface with id {}",
                p.clone().unwrap_or_default()
            )),
        })?;
    let subnets: Vec<String> = port.fixed_ips.iter().map(|f| f.subnet_id.clone()).collect();
    for sub_id in &subnets {
        let Some(rec) = svc.store.get(Kind::Subnet, sub_id).map_err(se)? else {
            continue;
        };
        let sub: SubnetDoc = rec.parse().map_err(se)?;
        let via = d.routes.iter().any(|r| {
            r.nexthop
                .parse()
                .is_ok_and(|ip: Ipv4Addr| in_cidr(ip, &sub.cidr))
        });
        if via {
            return Err(ApiError::conflict(format!(
                "Router interface for subnet {sub_id} on router {id} cannot be deleted, as it is required by one or more routes."
            ))
            .kind("RouterInterfaceInUseByRoute"));
        }
    }
    for (fid, f) in router_fips(svc, id)? {
        let on_subnet = f
            .port_id
            .as_ref()
            .and_then(|p| svc.store.get(Kind::Port, p).ok().flatten())
            .and_then(|r| r.parse::<PortDoc>().ok())
            .is_some_and(|p| p.fixed_ips.iter().any(|x| subnets.contains(&x.subnet_id)));
        if on_subnet {
            return Err(ApiError::conflict(format!(
                "Router interface for subnet {} on router {id} cannot be deleted, as it is required by one or more floating IPs ({fid}).",
                subnets.first().cloned().unwrap_or_default()
            )));
        }
    }
    let mut writes = vec![Write::Delete(Kind::Port, pid.clone())];
    for f in &port.fixed_ips {
        writes.push(release(&f.subnet_id, &f.ip_address));
    }
    let mut d2 = d.clone();
    d2.updated = now_secs();
    writes.push(Write::Update(r.with_doc(None, &d2)));
    svc.store.apply(&writes).map_err(se)?;
    Ok(
        json!({"id": id, "subnet_id": subnets.first(), "subnet_ids": subnets, "port_id": pid,
              "network_id": port.network_id, "tenant_id": d.project_id, "project_id": d.project_id}),
    )
}

// ---------------------------------------------------------------------------------------
// Security groups and rules.

fn rule_view(id: &str, r: &RuleDoc) -> Value {
    json!({"id": id, "security_group_id": r.security_group_id, "direction": r.direction,
        "ethertype": r.ethertype, "protocol": r.protocol, "port_range_min": r.port_range_min,
        "port_range_max": r.port_range_max, "remote_ip_prefix": r.remote_ip_prefix,
        "remote_group_id": r.remote_group_id, "remote_address_group_id": null,
        "normalized_cidr": r.remote_ip_prefix, "tenant_id": r.project_id,
        "project_id": r.project_id, "description": r.description, "tags": [],
        "created_at": t(r.created), "updated_at": t(r.created), "revision_number": 0})
}

fn group_view(svc: &Service, id: &str, d: &SecurityGroupDoc) -> Result<Value, ApiError> {
    let rules: Vec<Value> = all::<RuleDoc>(&*svc.store, Kind::SecurityGroupRule, Some(id))
        .map_err(se)?
        .iter()
        .map(|(rid, r)| rule_view(rid, r))
        .collect();
    Ok(
        json!({"id": id, "name": d.name, "description": d.description,
        "tenant_id": d.project_id, "project_id": d.project_id, "security_group_rules": rules,
        "stateful": true, "shared": false, "tags": [], "created_at": t(d.created),
        "updated_at": t(d.updated), "revision_number": 1}),
    )
}

owned!(
    /// Security groups: their project's; listing makes the caller's project's default one.
    Group: Kind::SecurityGroup, "Security group", SecurityGroupDoc;
    fn hidden(id: &str) -> ApiError {
        ApiError::not_found(format!("Security group {id} does not exist"))
    }
);

impl Collection for Group {
    const KEY: &'static str = "security_group";
    const PATH: &'static str = "security-groups";
    const LIST: &'static str = "security_groups";
    const CREATE: Create = create_group;
    const UPDATE: Option<Update<SecurityGroupDoc>> = Some(update_group);
    const DELETE: Delete<SecurityGroupDoc> = delete_group;

    fn view(svc: &Service, id: &str, d: &SecurityGroupDoc) -> Result<Value, ApiError> {
        group_view(svc, id, d)
    }
    fn before_list(svc: &Service, ctx: &Ctx) -> Result<(), ApiError> {
        if let Some(p) = &ctx.project_id {
            default_group(&*svc.store, p)?;
        }
        Ok(())
    }
}

fn new_rule(group: &str, project: &str, direction: &str, ethertype: &str) -> RuleDoc {
    RuleDoc {
        security_group_id: group.into(),
        direction: direction.into(),
        ethertype: ethertype.into(),
        protocol: None,
        port_range_min: None,
        port_range_max: None,
        remote_ip_prefix: None,
        remote_group_id: None,
        project_id: project.into(),
        description: String::new(),
        created: now_secs(),
    }
}

fn create_group(svc: &Service, ctx: &Ctx, o: &Map<String, Value>) -> Result<Value, ApiError> {
    let name = name_of(o)?.unwrap_or_default();
    let project = ctx.project_id.clone().unwrap_or_default();
    if name == "default" {
        default_group(&*svc.store, &project)?;
        return Err(ApiError::conflict("Default security group already exists."));
    }
    let id = uuid::Uuid::new_v4().to_string();
    let now = now_secs();
    let d = SecurityGroupDoc {
        name,
        description: opt_str(o, "description")?.unwrap_or_default(),
        project_id: project.clone(),
        created: now,
        updated: now,
    };
    // As in Neutron, a new group lets everything out (IPv4 and IPv6) and nothing in.
    let mut writes = vec![Write::Insert(Record::new(
        Kind::SecurityGroup,
        &id,
        &project,
        None,
        &d,
    ))];
    for e in ["IPv4", "IPv6"] {
        writes.push(Write::Insert(Record::new(
            Kind::SecurityGroupRule,
            &uuid::Uuid::new_v4().to_string(),
            &id,
            None,
            &new_rule(&id, &project, "egress", e),
        )));
    }
    svc.store.apply(&writes).map_err(se)?;
    group_view(svc, &id, &d)
}

fn update_group(
    svc: &Service,
    _ctx: &Ctx,
    id: &str,
    r: Record,
    mut d: SecurityGroupDoc,
    o: &Map<String, Value>,
) -> Result<Value, ApiError> {
    if let Some(n) = name_of(o)? {
        if d.name == "default" && n != "default" {
            return Err(ApiError::conflict(
                "Insufficient rights for renaming the default security group.",
            ));
        }
        if n == "default" && d.name != "default" {
            return Err(ApiError::conflict("Default security group already exists."));
        }
        d.name = n;
    }
    if let Some(v) = opt_str(o, "description")? {
        d.description = v;
    }
    d.updated = now_secs();
    let name = (d.name == "default").then_some("default");
    svc.store.update(r.with_doc(name, &d)).map_err(se)?;
    group_view(svc, id, &d)
}

fn delete_group(svc: &Service, ctx: &Ctx, id: &str, d: SecurityGroupDoc) -> Result<(), ApiError> {
    if d.name == "default" && !ctx.is_admin() {
        return Err(ApiError::conflict(
            "Insufficient rights for removing default security group.",
        ));
    }
    let users: Vec<String> = all::<PortDoc>(&*svc.store, Kind::Port, None)
        .map_err(se)?
        .into_iter()
        .filter(|(_, p)| p.security_groups.iter().any(|g| g == id))
        .map(|(pid, _)| pid)
        .collect();
    if !users.is_empty() {
        return Err(ApiError::conflict(format!(
            "Security Group {id} in use (by port {}).",
            users.join(", ")
        )));
    }
    let mut writes = vec![Write::Delete(Kind::SecurityGroup, id.to_string())];
    // Its rules, and other groups' rules naming it as their remote group.
    for (rid, r) in all::<RuleDoc>(&*svc.store, Kind::SecurityGroupRule, None).map_err(se)? {
        if r.security_group_id == id || r.remote_group_id.as_deref() == Some(id) {
            writes.push(Write::Delete(Kind::SecurityGroupRule, rid));
        }
    }
    svc.store.apply(&writes).map_err(se)
}

owned!(
    /// Security group rules: their group's project's; never changed, only replaced.
    Rule: Kind::SecurityGroupRule, "Security group rule", RuleDoc
);

impl Collection for Rule {
    const KEY: &'static str = "security_group_rule";
    const PATH: &'static str = "security-group-rules";
    const LIST: &'static str = "security_group_rules";
    const CREATE: Create = create_rule;
    const UPDATE: Option<Update<RuleDoc>> = None;
    const DELETE: Delete<RuleDoc> = delete_rule;

    fn view(_svc: &Service, id: &str, d: &RuleDoc) -> Result<Value, ApiError> {
        Ok(rule_view(id, d))
    }
}

/// Parses an IPv4 prefix of any length (`0.0.0.0/0` to `/32`, a bare address is a /32),
/// normalised to its network address.
fn parse_prefix(s: &str) -> Option<String> {
    let (ip, len) = match s.split_once('/') {
        Some((ip, len)) => (ip, len.parse::<u8>().ok()?),
        None => (s, 32),
    };
    let ip: Ipv4Addr = ip.parse().ok()?;
    if len > 32 {
        return None;
    }
    let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
    Some(format!("{}/{len}", Ipv4Addr::from(u32::from(ip) & mask)))
}

fn port_number(o: &Map<String, Value>, key: &str) -> Result<Option<u16>, ApiError> {
    match o.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_u64()
            .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
            .filter(|n| *n <= 65535)
            .map(|n| Some(n as u16))
            .ok_or_else(|| {
                ApiError::bad_request(format!(
                    "Invalid value for port {v}: must be an integer 0 to 65535"
                ))
            }),
    }
}

fn create_rule(svc: &Service, ctx: &Ctx, o: &Map<String, Value>) -> Result<Value, ApiError> {
    let gid = opt_str(o, "security_group_id")?.ok_or_else(|| {
        ApiError::bad_request(
            "Failed to parse request. Required attribute 'security_group_id' not specified",
        )
    })?;
    let (_, g) = load_visible::<Group>(svc, ctx, &gid)?;
    let direction = opt_str(o, "direction")?.unwrap_or_default();
    if direction != "ingress" && direction != "egress" {
        return Err(ApiError::bad_request(format!(
            "Invalid input for direction. Reason: '{direction}' is not in ['ingress', 'egress']."
        )));
    }
    let ethertype = opt_str(o, "ethertype")?.unwrap_or_else(|| "IPv4".into());
    if ethertype != "IPv4" && ethertype != "IPv6" {
        return Err(ApiError::bad_request(format!(
            "Invalid input for ethertype. Reason: '{ethertype}' is not in ['IPv4', 'IPv6']."
        )));
    }
    let protocol = match opt_str(o, "protocol")?.or_else(|| {
        o.get("protocol")
            .and_then(Value::as_u64)
            .map(|n| n.to_string())
    }) {
        None => None,
        Some(p) if p == "any" || p.is_empty() => None,
        Some(p) => {
            let known = ["tcp", "udp", "icmp", "icmpv6", "sctp", "gre", "esp", "ah"];
            if !known.contains(&p.as_str()) && p.parse::<u8>().is_err() {
                return Err(ApiError::bad_request(format!(
                    "Security group rule protocol {p} not supported. Only protocol values {known:?} and integer representations [0 to 255] are supported."
                )));
            }
            Some(p)
        }
    };
    let (lo, hi) = (
        port_number(o, "port_range_min")?,
        port_number(o, "port_range_max")?,
    );
    match protocol.as_deref() {
        None if lo.is_some() || hi.is_some() => {
            return Err(ApiError::bad_request(
                "Must also specify protocol if port range is given.",
            ));
        }
        Some("tcp" | "udp" | "sctp" | "6" | "17" | "132") => {
            if let (Some(l), Some(h)) = (lo, hi)
                && (l == 0 || l > h)
            {
                return Err(ApiError::bad_request(format!(
                    "For TCP/UDP protocols, port_range_min must be <= port_range_max and at least 1 ({l} > {h})"
                )));
            }
            if lo.is_none() != hi.is_none() {
                return Err(ApiError::bad_request(
                    "For TCP/UDP protocols, give both port_range_min and port_range_max",
                ));
            }
        }
        Some("icmp" | "1") => {
            if lo.is_some_and(|v| v > 255) || hi.is_some_and(|v| v > 255) {
                return Err(ApiError::bad_request(
                    "Invalid value for ICMP type or code: must be 0 to 255",
                ));
            }
            if lo.is_none() && hi.is_some() {
                return Err(ApiError::bad_request(
                    "ICMP code (port-range-max) is given without an ICMP type (port-range-min).",
                ));
            }
        }
        _ => {}
    }
    let remote_ip_prefix = match opt_str(o, "remote_ip_prefix")? {
        None => None,
        Some(p) => Some(parse_prefix(&p).ok_or_else(|| {
            ApiError::bad_request(format!(
                "Invalid input for remote_ip_prefix. Reason: '{p}' is not a valid IPv4 prefix."
            ))
        })?),
    };
    let remote_group_id = opt_str(o, "remote_group_id")?;
    if remote_ip_prefix.is_some() && remote_group_id.is_some() {
        return Err(ApiError::bad_request(
            "Only remote_ip_prefix or remote_group_id may be provided.",
        ));
    }
    if let Some(rg) = &remote_group_id {
        load_visible::<Group>(svc, ctx, rg)?;
    }
    let d = RuleDoc {
        security_group_id: gid.clone(),
        direction,
        ethertype,
        protocol,
        port_range_min: lo,
        port_range_max: hi,
        // `0.0.0.0/0` is what "any" means: store it as none, as Neutron compares it.
        remote_ip_prefix: remote_ip_prefix.filter(|p| p != "0.0.0.0/0"),
        remote_group_id,
        project_id: g.project_id.clone(),
        description: opt_str(o, "description")?.unwrap_or_default(),
        created: now_secs(),
    };
    for (rid, r) in all::<RuleDoc>(&*svc.store, Kind::SecurityGroupRule, Some(&gid)).map_err(se)? {
        let same = RuleDoc {
            description: d.description.clone(),
            created: d.created,
            ..r.clone()
        };
        if same == d {
            return Err(ApiError::conflict(format!(
                "Security group rule already exists. Rule id is {rid}."
            )));
        }
    }
    let id = uuid::Uuid::new_v4().to_string();
    svc.store
        .insert(Record::new(Kind::SecurityGroupRule, &id, &gid, None, &d))
        .map_err(se)?;
    Ok(rule_view(&id, &d))
}

fn delete_rule(svc: &Service, _ctx: &Ctx, id: &str, _d: RuleDoc) -> Result<(), ApiError> {
    svc.store.delete(Kind::SecurityGroupRule, id).map_err(se)
}

// ---------------------------------------------------------------------------------------
// Floating IPs.

fn fip_view(id: &str, f: &FloatingIpDoc) -> Value {
    json!({"id": id, "floating_ip_address": f.floating_ip_address,
        "floating_network_id": f.floating_network_id, "router_id": f.router_id,
        "port_id": f.port_id, "fixed_ip_address": f.fixed_ip_address,
        "status": if f.port_id.is_some() { "ACTIVE" } else { "DOWN" },
        "tenant_id": f.project_id, "project_id": f.project_id, "description": f.description,
        "port_details": null, "port_forwardings": [], "qos_policy_id": null,
        "dns_domain": "", "dns_name": "", "tags": [], "created_at": t(f.created),
        "updated_at": t(f.updated), "revision_number": 1})
}

owned!(
    /// Floating IPs: their project's.
    Fip: Kind::FloatingIp, "Floating IP", FloatingIpDoc
);

impl Collection for Fip {
    const KEY: &'static str = "floatingip";
    const PATH: &'static str = "floatingips";
    const LIST: &'static str = "floatingips";
    const CREATE: Create = create_fip;
    const UPDATE: Option<Update<FloatingIpDoc>> = Some(update_fip);
    const DELETE: Delete<FloatingIpDoc> = delete_fip;

    fn view(_svc: &Service, id: &str, d: &FloatingIpDoc) -> Result<Value, ApiError> {
        Ok(fip_view(id, d))
    }
}

/// Points `f` at `port_id` (through the router joining the port's subnet to the floating
/// IP's network), or at nothing.
fn associate(
    svc: &Service,
    ctx: &Ctx,
    fip_id: &str,
    f: &mut FloatingIpDoc,
    port_id: Option<String>,
    fixed: Option<String>,
) -> Result<(), ApiError> {
    let Some(port_id) = port_id else {
        f.port_id = None;
        f.fixed_ip_address = None;
        f.router_id = None;
        return Ok(());
    };
    let (_, p) = port(svc, ctx, &port_id)?;
    let ip = p
        .fixed_ips
        .iter()
        .find(|x| fixed.as_deref().is_none_or(|w| w == x.ip_address))
        .ok_or_else(|| {
            ApiError::bad_request(format!(
                "Bad floatingip request: Port {port_id} does not have fixed ip {}.",
                fixed.clone().unwrap_or_default()
            ))
        })?
        .clone();
    for (other, o) in all::<FloatingIpDoc>(&*svc.store, Kind::FloatingIp, None).map_err(se)? {
        if other != fip_id
            && o.port_id.as_deref() == Some(&port_id)
            && o.fixed_ip_address.as_deref() == Some(&ip.ip_address)
        {
            return Err(ApiError::conflict(format!(
                "Cannot associate floating IP {} ({fip_id}) with port {port_id} using fixed IP {}, as that fixed IP already has a floating IP on external network {}.",
                f.floating_ip_address, ip.ip_address, o.floating_network_id
            )));
        }
    }
    let router = all::<RouterDoc>(&*svc.store, Kind::Router, None)
        .map_err(se)?
        .into_iter()
        .filter(|(_, r)| {
            r.gateway
                .as_ref()
                .is_some_and(|g| g.network_id == f.floating_network_id)
        })
        .map(|(rid, _)| rid)
        .find(|rid| {
            interfaces(svc, rid)
                .map(|l| {
                    l.iter()
                        .any(|(_, x)| x.fixed_ips.iter().any(|y| y.subnet_id == ip.subnet_id))
                })
                .unwrap_or(false)
        })
        .ok_or_else(|| {
            ApiError::not_found(format!(
                "External network {} is not reachable from subnet {}.  Therefore, cannot associate Port {port_id} with a Floating IP.",
                f.floating_network_id, ip.subnet_id
            ))
        })?;
    f.port_id = Some(port_id);
    f.fixed_ip_address = Some(ip.ip_address);
    f.router_id = Some(router);
    Ok(())
}

fn port_field(o: &Map<String, Value>) -> Result<Option<Option<String>>, ApiError> {
    match o.get("port_id") {
        None => Ok(None),
        Some(Value::Null) => Ok(Some(None)),
        Some(Value::String(s)) => Ok(Some(Some(s.clone()))),
        Some(_) => Err(ApiError::bad_request(
            "Invalid input for port_id: a port id or null",
        )),
    }
}

fn create_fip(svc: &Service, ctx: &Ctx, o: &Map<String, Value>) -> Result<Value, ApiError> {
    let net_id = opt_str(o, "floating_network_id")?.ok_or_else(|| {
        ApiError::bad_request(
            "Failed to parse request. Required attribute 'floating_network_id' not specified",
        )
    })?;
    let (_, net) = network(svc, ctx, &net_id)?;
    if !net.external {
        return Err(ApiError::bad_request(format!(
            "Bad floatingip request: Network {net_id} is not a valid external network."
        )));
    }
    let (sid, sub) = subnet_of(svc, &net_id)?.ok_or_else(|| {
        ApiError::bad_request(format!(
            "Bad floatingip request: external network {net_id} has no subnet."
        ))
    })?;
    let project = ctx.project_id.clone().unwrap_or_default();
    let want = opt_str(o, "floating_ip_address")?;
    for attempt in 0..5 {
        let ip = pick_address(&*svc.store, &sid, &sub, want.as_deref())?;
        let id = uuid::Uuid::new_v4().to_string();
        let now = now_secs();
        let mut f = FloatingIpDoc {
            floating_network_id: net_id.clone(),
            subnet_id: sid.clone(),
            floating_ip_address: ip.clone(),
            port_id: None,
            fixed_ip_address: None,
            router_id: None,
            project_id: project.clone(),
            description: opt_str(o, "description")?.unwrap_or_default(),
            created: now,
            updated: now,
        };
        if let Some(Some(p)) = port_field(o)? {
            associate(
                svc,
                ctx,
                &id,
                &mut f,
                Some(p),
                opt_str(o, "fixed_ip_address")?,
            )?;
        }
        match svc.store.apply(&[
            reserve(&sid, &ip, &id),
            Write::Insert(Record::new(Kind::FloatingIp, &id, &project, None, &f)),
        ]) {
            Ok(()) => return Ok(fip_view(&id, &f)),
            Err(StoreError::Conflict { .. }) if want.is_none() && attempt < 4 => continue,
            Err(StoreError::Conflict { .. }) => {
                return Err(ApiError::conflict(format!(
                    "IP address {ip} already allocated in subnet {sid}"
                )));
            }
            Err(e) => return Err(se(e)),
        }
    }
    Err(ApiError::conflict("no address could be reserved; retry"))
}

fn update_fip(
    svc: &Service,
    ctx: &Ctx,
    id: &str,
    r: Record,
    mut f: FloatingIpDoc,
    o: &Map<String, Value>,
) -> Result<Value, ApiError> {
    if let Some(v) = opt_str(o, "description")? {
        f.description = v;
    }
    if let Some(p) = port_field(o)? {
        associate(svc, ctx, id, &mut f, p, opt_str(o, "fixed_ip_address")?)?;
    }
    f.updated = now_secs();
    svc.store.update(r.with_doc(None, &f)).map_err(se)?;
    Ok(fip_view(id, &f))
}

fn delete_fip(svc: &Service, _ctx: &Ctx, id: &str, f: FloatingIpDoc) -> Result<(), ApiError> {
    svc.store
        .apply(&[
            Write::Delete(Kind::FloatingIp, id.to_string()),
            release(&f.subnet_id, &f.floating_ip_address),
        ])
        .map_err(se)
}

/// Floating IPs of a port (for Nova's addresses).
pub fn fips_of_port(svc: &Service, port_id: &str) -> Vec<String> {
    all::<FloatingIpDoc>(&*svc.store, Kind::FloatingIp, None)
        .unwrap_or_default()
        .into_iter()
        .filter(|(_, f)| f.port_id.as_deref() == Some(port_id))
        .map(|(_, f)| f.floating_ip_address)
        .collect()
}
