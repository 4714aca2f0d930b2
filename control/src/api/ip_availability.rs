//! Neutron's network IP availability (`/v2.0/network-ip-availabilities`, `openstack ip
//! availability list/show`): per network and per subnet, how many addresses the
//! allocation pools hold (`total_ips`; a subnet without pools counts its whole CIDR) and
//! how many of the subnet's addresses are allocated (`used_ips`: every address control's
//! IPAM has reserved there, whether in a pool or not: ports, router interfaces and
//! gateways, floating IPs; control has no DHCP ports, netdp answers DHCP itself).
//!
//! Admins only, as Neutron's default policy has it: a list shows others nothing (Neutron
//! hides what policy forbids), a network asked for by id is a 403 `PolicyNotAuthorized`
//! (once it is known to exist).

use std::collections::BTreeMap;

use http::{Method, StatusCode};
use serde_json::{Value, json};

use super::network::{NetworkDoc, SubnetDoc};
use super::{ApiError, Request, Response, json as json_resp};
use crate::identity::Ctx;
use crate::network::all;
use crate::service::{Service, ServiceError};
use crate::store::{Kind, StoreError};

fn se(e: StoreError) -> ApiError {
    ServiceError::from(e).into()
}

/// The list filters Neutron honours here (each may be given more than once: any value
/// matches); others are ignored, as Neutron ignores them.
const FILTERS: [&str; 5] = [
    "network_id",
    "network_name",
    "project_id",
    "tenant_id",
    "ip_version",
];

/// The values given for filter `key`, if any.
fn values<'a>(req: &'a Request, key: &str) -> Vec<&'a str> {
    req.query
        .iter()
        .filter(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
        .collect()
}

/// A network's availability, or `None` when a filter excludes it.
fn availability(
    id: &str,
    net: &NetworkDoc,
    subnets: &[(&String, &SubnetDoc)],
    used: &BTreeMap<&str, u64>,
    filters: &BTreeMap<&str, Vec<&str>>,
) -> Option<Value> {
    let keep = |key: &str, have: &str| filters.get(key).is_none_or(|want| want.contains(&have));
    if !(keep("network_id", id)
        && keep("network_name", &net.name)
        && keep("project_id", &net.project_id)
        && keep("tenant_id", &net.project_id))
    {
        return None;
    }
    // An ip_version filter keeps the subnets of that version, and so only networks that
    // have one (control's subnets are all IPv4).
    let subs: Vec<&(&String, &SubnetDoc)> =
        subnets.iter().filter(|_| keep("ip_version", "4")).collect();
    if filters.contains_key("ip_version") && subs.is_empty() {
        return None;
    }
    let mut rows = vec![];
    let (mut total, mut in_use) = (0u64, 0u64);
    for (sid, s) in subs {
        let pools = s.pools();
        let t = if pools.is_empty() {
            super::network::parse_cidr(&s.cidr)
                .map(|(_, len)| 1u64 << (32 - len))
                .unwrap_or(0)
        } else {
            pools.iter().map(|p| p.size()).sum()
        };
        let u = used.get(sid.as_str()).copied().unwrap_or(0);
        total += t;
        in_use += u;
        rows.push(
            json!({"subnet_id": sid, "subnet_name": s.name, "cidr": s.cidr,
                         "ip_version": 4, "total_ips": t, "used_ips": u}),
        );
    }
    Some(
        json!({"network_id": id, "network_name": net.name, "tenant_id": net.project_id,
               "project_id": net.project_id, "total_ips": total, "used_ips": in_use,
               "subnet_ip_availability": rows}),
    )
}

/// `GET /v2.0/network-ip-availabilities[/{network_id}]` (`rest`: the path after it).
pub fn handle(
    svc: &Service,
    ctx: &Ctx,
    req: &Request,
    rest: &[&str],
) -> Result<Response, ApiError> {
    if req.method != Method::GET {
        return Err(ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("The method {} is not allowed here.", req.method),
        ));
    }
    let store = &*svc.store;
    let nets: Vec<(String, NetworkDoc)> = match rest {
        [] => all(store, Kind::Network, None).map_err(se)?,
        [id] => {
            let r = store.get(Kind::Network, id).map_err(se)?.ok_or_else(|| {
                ApiError::not_found(format!("Network {id} could not be found."))
                    .kind("NetworkNotFound")
            })?;
            vec![(r.id.clone(), r.parse().map_err(se)?)]
        }
        _ => return Err(ApiError::not_found("The resource could not be found.")),
    };
    if !ctx.is_admin() {
        if rest.is_empty() {
            return Ok(json_resp(
                StatusCode::OK,
                &json!({"network_ip_availabilities": []}),
            ));
        }
        return Err(ApiError::forbidden(
            "rule:get_network_ip_availability is disallowed by policy",
        )
        .kind("PolicyNotAuthorized"));
    }
    let subnets: Vec<(String, SubnetDoc)> = all(store, Kind::Subnet, None).map_err(se)?;
    let allocations = store.list(Kind::IpAllocation, None).map_err(se)?;
    let mut used: BTreeMap<&str, u64> = BTreeMap::new();
    for a in &allocations {
        *used.entry(a.scope.as_str()).or_default() += 1;
    }
    let filters: BTreeMap<&str, Vec<&str>> = if rest.is_empty() {
        FILTERS
            .iter()
            .map(|k| (*k, values(req, k)))
            .filter(|(_, v)| !v.is_empty())
            .collect()
    } else {
        BTreeMap::new()
    };
    let mut out = vec![];
    for (id, net) in &nets {
        let subs: Vec<(&String, &SubnetDoc)> = subnets
            .iter()
            .filter(|(_, s)| &s.network_id == id)
            .map(|(sid, s)| (sid, s))
            .collect();
        if let Some(v) = availability(id, net, &subs, &used, &filters) {
            out.push(v);
        }
    }
    if rest.is_empty() {
        return Ok(json_resp(
            StatusCode::OK,
            &json!({"network_ip_availabilities": out}),
        ));
    }
    let one = out
        .pop()
        .ok_or_else(|| ApiError::not_found("The resource could not be found."))?;
    Ok(json_resp(
        StatusCode::OK,
        &json!({"network_ip_availability": one}),
    ))
}
