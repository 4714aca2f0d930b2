//! Neutron's quotas under `/v2.0/quotas`: per-project limits on networks, subnets, ports,
//! routers, floating IPs, security groups and their rules, with Neutron's defaults, shown
//! (`GET /quotas/{project}`, `/default`, `/details` with usage), set by admins (`PUT`) and
//! reset (`DELETE`), and enforced on every create through the API.
//!
//! Usage is counted from the records themselves (every Neutron document names its
//! `project_id`), so it cannot drift. A create is checked before it runs and counted again
//! once its record is stored (as Nova rechecks): two creates racing past the first check,
//! on one controller or on two sharing a store, see each other then, and the one over the
//! limit is deleted again and refused with Neutron's `OverQuota` 409.

use std::collections::BTreeMap;

use http::{Method, StatusCode};
use serde_json::{Map, Value, json};

use super::{ApiError, Request, Response, empty, json as json_resp};
use crate::identity::Ctx;
use crate::service::{Service, ServiceError};
use crate::store::{Kind, Record};

/// The resources, their record kinds and Neutron's default limits.
const RESOURCES: [(&str, Kind, i64); 7] = [
    ("network", Kind::Network, 100),
    ("subnet", Kind::Subnet, 100),
    ("port", Kind::Port, 500),
    ("router", Kind::Router, 10),
    ("floatingip", Kind::FloatingIp, 50),
    ("security_group", Kind::SecurityGroup, 10),
    ("security_group_rule", Kind::SecurityGroupRule, 100),
];

/// Where Neutron's quotas route: `quotas` and what follows it.
pub(super) fn handle(
    svc: &Service,
    ctx: &Ctx,
    req: &Request,
    rest: &[&str],
) -> Option<Result<Response, ApiError>> {
    let ok = |v: Value| Ok(json_resp(StatusCode::OK, &v));
    let r = match (rest, &req.method) {
        ([], &Method::GET) => list(svc, ctx).and_then(ok),
        ([pid], &Method::GET) => {
            may_read(ctx, pid).and_then(|()| ok(json!({"quota": limits(svc, pid)?})))
        }
        ([pid, "default"], &Method::GET) => {
            may_read(ctx, pid).and_then(|()| ok(json!({"quota": defaults()})))
        }
        ([pid, "details"], &Method::GET) => {
            may_read(ctx, pid).and_then(|()| ok(json!({"quota": details(svc, pid)?})))
        }
        ([pid], &Method::PUT) => update(svc, ctx, pid, req).and_then(ok),
        ([pid], &Method::DELETE) => reset(svc, ctx, pid).map(|()| empty(StatusCode::NO_CONTENT)),
        _ => return None,
    };
    Some(r)
}

fn se(e: crate::store::StoreError) -> ApiError {
    ServiceError::from(e).into()
}

/// Readers see their own project's quotas; admins everyone's.
fn may_read(ctx: &Ctx, pid: &str) -> Result<(), ApiError> {
    if ctx.is_admin() || ctx.project_id.as_deref() == Some(pid) {
        Ok(())
    } else {
        Err(ApiError::forbidden(
            "Non-admin is not authorized to access quotas for another project",
        ))
    }
}

fn defaults() -> Map<String, Value> {
    RESOURCES
        .iter()
        .map(|(name, _, limit)| (name.to_string(), json!(limit)))
        .collect()
}

/// Limits by resource name.
type Limits = BTreeMap<String, i64>;

/// A project's limits that differ from the defaults, as stored.
fn overrides(svc: &Service, pid: &str) -> Result<Option<(Record, Limits)>, ApiError> {
    match svc.store.get(Kind::NetworkQuota, pid).map_err(se)? {
        Some(r) => {
            let m = r.parse().map_err(se)?;
            Ok(Some((r, m)))
        }
        None => Ok(None),
    }
}

/// A project's limit of each resource.
fn limits(svc: &Service, pid: &str) -> Result<Map<String, Value>, ApiError> {
    let mut out = defaults();
    if let Some((_, m)) = overrides(svc, pid)? {
        for (k, v) in m {
            out.insert(k, json!(v));
        }
    }
    Ok(out)
}

fn limit_of(svc: &Service, pid: &str, resource: &str) -> Result<i64, ApiError> {
    Ok(limits(svc, pid)?
        .get(resource)
        .and_then(Value::as_i64)
        .unwrap_or(-1))
}

/// How many records of `kind` project `pid` owns.
fn used(svc: &Service, kind: Kind, pid: &str) -> Result<i64, ApiError> {
    #[derive(serde::Deserialize)]
    struct Owner {
        project_id: String,
    }
    let mut n = 0;
    for r in svc.store.list(kind, None).map_err(se)? {
        let o: Owner = r.parse().map_err(se)?;
        n += i64::from(o.project_id == pid);
    }
    Ok(n)
}

fn details(svc: &Service, pid: &str) -> Result<Map<String, Value>, ApiError> {
    let limits = limits(svc, pid)?;
    RESOURCES
        .iter()
        .map(|(name, kind, _)| {
            Ok((
                name.to_string(),
                json!({"limit": limits[*name], "used": used(svc, *kind, pid)?, "reserved": 0}),
            ))
        })
        .collect()
}

/// `GET /quotas`: the projects whose quotas differ from the defaults (all of them for an
/// admin; the caller's own otherwise).
fn list(svc: &Service, ctx: &Ctx) -> Result<Value, ApiError> {
    let mut out = vec![];
    for r in svc.store.list(Kind::NetworkQuota, None).map_err(se)? {
        if !ctx.is_admin() && ctx.project_id.as_deref() != Some(r.id.as_str()) {
            continue;
        }
        let mut q = limits(svc, &r.id)?;
        q.insert("project_id".into(), json!(r.id));
        q.insert("tenant_id".into(), json!(r.id));
        out.push(Value::Object(q));
    }
    Ok(json!({"quotas": out}))
}

fn admin_only(ctx: &Ctx) -> Result<(), ApiError> {
    if ctx.is_admin() {
        Ok(())
    } else {
        Err(ApiError::forbidden(
            "rule:update_quota is disallowed by policy",
        ))
    }
}

/// `PUT /quotas/{project}` with `{"quota": {"port": 5, ...}}`; with `"check_limit": true`
/// a limit below what the project already uses is refused.
fn update(svc: &Service, ctx: &Ctx, pid: &str, req: &Request) -> Result<Value, ApiError> {
    admin_only(ctx)?;
    let b: Value = req.json()?;
    let set = b
        .get("quota")
        .and_then(Value::as_object)
        .ok_or_else(|| ApiError::bad_request("Resource body required: quota"))?;
    let check = match set.get("check_limit") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(Value::String(s)) if s.eq_ignore_ascii_case("true") => true,
        Some(Value::String(s)) if s.eq_ignore_ascii_case("false") => false,
        Some(v) => {
            return Err(ApiError::bad_request(format!(
                "Invalid input for check_limit. Reason: '{v}' is not a valid boolean value."
            )));
        }
    };
    let mut changes = BTreeMap::new();
    for (k, v) in set {
        if k == "check_limit" {
            continue;
        }
        let Some((name, kind, _)) = RESOURCES.iter().find(|(n, _, _)| n == k) else {
            return Err(ApiError::bad_request(format!(
                "Unrecognized attribute(s) '{k}'"
            )));
        };
        let n = v
            .as_i64()
            .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
            .filter(|n| *n >= -1)
            .ok_or_else(|| {
                ApiError::bad_request(format!(
                    "Invalid input for {k}. Reason: '{v}' is not an integer greater than or equal to -1."
                ))
            })?;
        if check && n >= 0 {
            let u = used(svc, *kind, pid)?;
            if u > n {
                return Err(ApiError::bad_request(format!(
                    "Quota limit {n} for {name} must be greater than or equal to already used and reserved {u}."
                )));
            }
        }
        changes.insert(name.to_string(), n);
    }
    // Compare-and-swap, retried: two admins setting different resources both land.
    for _ in 0..8 {
        let r = match overrides(svc, pid)? {
            Some((r, mut m)) => {
                m.extend(changes.clone());
                svc.store.update(r.with_doc(None, &m))
            }
            None => svc
                .store
                .insert(Record::new(Kind::NetworkQuota, pid, "", None, &changes)),
        };
        match r {
            Ok(()) => return Ok(json!({"quota": limits(svc, pid)?})),
            Err(
                crate::store::StoreError::Stale { .. } | crate::store::StoreError::Conflict { .. },
            ) => {
                continue;
            }
            Err(e) => return Err(se(e)),
        }
    }
    Err(ApiError::conflict("the quota changed meanwhile; retry"))
}

/// `DELETE /quotas/{project}`: back to the defaults.
fn reset(svc: &Service, ctx: &Ctx, pid: &str) -> Result<(), ApiError> {
    admin_only(ctx)?;
    svc.store.delete(Kind::NetworkQuota, pid).map_err(se)
}

/// The 409 Neutron answers a create over quota with.
pub(crate) fn over_quota(resource: &str) -> ApiError {
    ApiError::conflict(format!("Quota exceeded for resources: ['{resource}'].")).kind("OverQuota")
}

/// Refuses a create of `kind` for project `pid` that the quota does not allow. With
/// `stored`, the new record is already counted (the recheck after the create).
pub(super) fn check(svc: &Service, kind: Kind, pid: &str, stored: bool) -> Result<(), ApiError> {
    let Some((name, _, _)) = RESOURCES.iter().find(|(_, k, _)| *k == kind) else {
        return Ok(());
    };
    let limit = limit_of(svc, pid, name)?;
    if limit < 0 {
        return Ok(());
    }
    let mut n = used(svc, kind, pid)?;
    if stored {
        n -= 1;
    }
    if n + 1 > limit {
        return Err(over_quota(name));
    }
    Ok(())
}
