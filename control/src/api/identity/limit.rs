//! Keystone unified limits over HTTP: `/v3/limits/model`, registered limits (a default
//! per service, region and resource: `/v3/registered_limits[/{id}]`) and project limits
//! that override one (`/v3/limits[/{id}]`), what `openstack registered limit ...` and
//! `openstack limit ...` use. The enforcement model is Keystone's `flat`.
//!
//! Both are store records whose name is their key (service, region, resource), so the
//! store's name uniqueness refuses a duplicate even between two controllers: registered
//! limits in the global scope, project limits scoped by their project.
//!
//! Policy as Keystone's defaults: writes need the admin role; anyone authenticated reads
//! registered limits and the model; a project's users read that project's limits only
//! (another project's limit is a 404 to them, and absent from their lists).

use http::{Method, StatusCode};
use serde::{Deserialize, Deserializer, Serialize, de::DeserializeOwned};
use serde_json::{Value, json};

use super::{Res, admin, collection, conflict, envelope, link, wrapped};
use crate::api::{ApiError, Request, empty, json as json_resp};
use crate::identity::{Ctx, new_id};
use crate::service::{Service, ServiceError};
use crate::store::{Kind, Record, Write};

/// The largest limit Keystone accepts (its schema's maximum, 2^31 - 1).
const MAX_LIMIT: i64 = 0x7FFF_FFFF;
const MAX_RESOURCE_NAME: usize = 255;

/// A registered limit as stored.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct RegisteredLimitDoc {
    service_id: String,
    region_id: Option<String>,
    resource_name: String,
    default_limit: i64,
    description: Option<String>,
}

/// A project limit as stored (scope: its project).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct LimitDoc {
    project_id: String,
    service_id: String,
    region_id: Option<String>,
    resource_name: String,
    resource_limit: i64,
    description: Option<String>,
}

/// The unique key of a limit within its scope: service, region, resource.
fn key(service: &str, region: Option<&str>, resource: &str) -> String {
    format!("{service}/{}/{resource}", region.unwrap_or(""))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RegisteredLimitIn {
    service_id: String,
    resource_name: String,
    default_limit: i64,
    region_id: Option<String>,
    description: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LimitIn {
    project_id: String,
    service_id: String,
    resource_name: String,
    resource_limit: i64,
    region_id: Option<String>,
    description: Option<String>,
}

/// A field that may be absent (`None`), null (`Some(None)`) or set.
fn present<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RegisteredLimitPatch {
    service_id: Option<String>,
    #[serde(default, deserialize_with = "present")]
    region_id: Option<Option<String>>,
    resource_name: Option<String>,
    default_limit: Option<i64>,
    #[serde(default, deserialize_with = "present")]
    description: Option<Option<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LimitPatch {
    resource_limit: Option<i64>,
    #[serde(default, deserialize_with = "present")]
    description: Option<Option<String>>,
}

/// Keystone's `ValidationError` for a reference to something that does not exist.
fn missing(attribute: &str, target: &str) -> ServiceError {
    ApiError::bad_request(format!(
        "Expecting to find {attribute} in {target}. The server could not comply with the \
         request since it is either malformed or otherwise incorrect. The client is assumed \
         to be in error."
    ))
    .into()
}

/// Parses `{"<key>": [ {...}, ... ]}` (at least one item) into Ts.
fn batch<T: DeserializeOwned>(req: &Request, key: &str) -> Result<Vec<T>, ServiceError> {
    let Value::Array(items) = envelope(req, key)? else {
        return Err(ApiError::bad_request(format!("'{key}' must be a list")).into());
    };
    if items.is_empty() {
        return Err(ApiError::bad_request(format!("'{key}' must not be empty")).into());
    }
    items
        .into_iter()
        .map(|i| {
            serde_json::from_value(i)
                .map_err(|e| ApiError::bad_request(format!("invalid '{key}': {e}")).into())
        })
        .collect()
}

fn check_limit(field: &str, n: i64) -> Result<(), ServiceError> {
    if !(-1..=MAX_LIMIT).contains(&n) {
        return Err(ApiError::bad_request(format!(
            "{field} must be an integer from -1 (no limit) to {MAX_LIMIT}"
        ))
        .into());
    }
    Ok(())
}

/// Checks a registered limit's fields and that its service and region exist.
fn check_registered(svc: &Service, d: &RegisteredLimitDoc) -> Result<(), ServiceError> {
    const TARGET: &str = "registered_limits";
    check_limit("default_limit", d.default_limit)?;
    if d.resource_name.is_empty() || d.resource_name.len() > MAX_RESOURCE_NAME {
        return Err(ApiError::bad_request(format!(
            "resource_name must be 1 to {MAX_RESOURCE_NAME} characters"
        ))
        .into());
    }
    if svc.store.get(Kind::Service, &d.service_id)?.is_none() {
        return Err(missing("service_id", TARGET));
    }
    if let Some(r) = &d.region_id
        && svc.store.get(Kind::Region, r)?.is_none()
    {
        return Err(missing("region_id", TARGET));
    }
    Ok(())
}

fn registered_view(svc: &Service, r: &Record) -> Result<Value, ServiceError> {
    let d: RegisteredLimitDoc = r.parse()?;
    Ok(
        json!({"id": r.id, "service_id": d.service_id, "region_id": d.region_id,
              "resource_name": d.resource_name, "default_limit": d.default_limit,
              "description": d.description,
              "links": link(svc, &format!("registered_limits/{}", r.id))}),
    )
}

fn limit_view(svc: &Service, r: &Record) -> Result<Value, ServiceError> {
    let d: LimitDoc = r.parse()?;
    Ok(
        json!({"id": r.id, "project_id": d.project_id, "domain_id": null,
              "service_id": d.service_id, "region_id": d.region_id,
              "resource_name": d.resource_name, "resource_limit": d.resource_limit,
              "description": d.description,
              "links": link(svc, &format!("limits/{}", r.id))}),
    )
}

/// Whether a stored limit matches the list's query filters.
fn matches(req: &Request, service: &str, region: Option<&str>, resource: &str) -> bool {
    req.q("service_id").is_none_or(|s| s == service)
        && req.q("region_id").is_none_or(|r| Some(r) == region)
        && req.q("resource_name").is_none_or(|n| n == resource)
}

/// `GET /v3/limits/model`.
pub(super) fn model(svc: &Service, req: &Request) -> Res {
    if req.method != Method::GET && req.method != Method::HEAD {
        return Err(super::method_not_allowed());
    }
    Ok(json_resp(
        StatusCode::OK,
        &json!({"model": {"name": "flat",
                          "description": "Limit enforcement and validation does not take \
                                          project hierarchy into consideration."},
                "links": link(svc, "limits/model")}),
    ))
}

/// `/v3/registered_limits[/{id}]` (`rest`: the path after `registered_limits`).
pub(super) fn registered_limits(svc: &Service, req: &Request, ctx: &Ctx, rest: &[&str]) -> Res {
    let get = req.method == Method::GET || req.method == Method::HEAD;
    match (rest, &req.method) {
        ([], &Method::POST) => {
            admin(ctx, "create_registered_limits")?;
            let items: Vec<RegisteredLimitIn> = batch(req, "registered_limits")?;
            let mut recs = Vec::with_capacity(items.len());
            for i in items {
                let d = RegisteredLimitDoc {
                    service_id: i.service_id,
                    region_id: i.region_id,
                    resource_name: i.resource_name,
                    default_limit: i.default_limit,
                    description: i.description,
                };
                check_registered(svc, &d)?;
                let name = key(&d.service_id, d.region_id.as_deref(), &d.resource_name);
                recs.push(Record::new(
                    Kind::RegisteredLimit,
                    &new_id(),
                    "",
                    Some(&name),
                    &d,
                ));
            }
            let writes: Vec<Write> = recs.iter().cloned().map(Write::Insert).collect();
            svc.store
                .apply(&writes)
                .map_err(|e| conflict(e, "registered_limit"))?;
            let views = recs
                .iter()
                .map(|r| registered_view(svc, r))
                .collect::<Result<Vec<_>, _>>()?;
            Ok(json_resp(
                StatusCode::CREATED,
                &json!({"registered_limits": views}),
            ))
        }
        ([], _) if get => {
            let mut items = Vec::new();
            for r in svc.store.list(Kind::RegisteredLimit, None)? {
                let d: RegisteredLimitDoc = r.parse()?;
                if matches(req, &d.service_id, d.region_id.as_deref(), &d.resource_name) {
                    items.push(registered_view(svc, &r)?);
                }
            }
            Ok(collection(
                svc,
                "registered_limits",
                "registered_limits",
                items,
            ))
        }
        ([id], m) => {
            let rec = svc.store.get(Kind::RegisteredLimit, id)?.ok_or_else(|| {
                ApiError::not_found(format!("Could not find registered limit for {id}."))
            })?;
            match *m {
                Method::GET | Method::HEAD => Ok(json_resp(
                    StatusCode::OK,
                    &json!({"registered_limit": registered_view(svc, &rec)?}),
                )),
                Method::PATCH => {
                    admin(ctx, "update_registered_limit")?;
                    let p: RegisteredLimitPatch = wrapped(req, "registered_limit")?;
                    let old: RegisteredLimitDoc = rec.parse()?;
                    let next = RegisteredLimitDoc {
                        service_id: p.service_id.unwrap_or_else(|| old.service_id.clone()),
                        region_id: p.region_id.unwrap_or_else(|| old.region_id.clone()),
                        resource_name: p.resource_name.unwrap_or_else(|| old.resource_name.clone()),
                        default_limit: p.default_limit.unwrap_or(old.default_limit),
                        description: p.description.unwrap_or_else(|| old.description.clone()),
                    };
                    check_registered(svc, &next)?;
                    let rekeyed = next.service_id != old.service_id
                        || next.region_id != old.region_id
                        || next.resource_name != old.resource_name;
                    if rekeyed && !references(svc, &old)?.is_empty() {
                        return Err(in_use(id));
                    }
                    let name = key(
                        &next.service_id,
                        next.region_id.as_deref(),
                        &next.resource_name,
                    );
                    let next = rec.with_doc(Some(&name), &next);
                    svc.store
                        .update(next.clone())
                        .map_err(|e| conflict(e, "registered_limit"))?;
                    Ok(json_resp(
                        StatusCode::OK,
                        &json!({"registered_limit": registered_view(svc, &next)?}),
                    ))
                }
                Method::DELETE => {
                    admin(ctx, "delete_registered_limit")?;
                    if !references(svc, &rec.parse()?)?.is_empty() {
                        return Err(in_use(id));
                    }
                    svc.store.delete(Kind::RegisteredLimit, id)?;
                    Ok(empty(StatusCode::NO_CONTENT))
                }
                _ => Err(super::method_not_allowed()),
            }
        }
        _ => Err(super::method_not_allowed()),
    }
}

/// Keystone's `RegisteredLimitError` (403).
fn in_use(id: &str) -> ServiceError {
    ApiError::forbidden(format!(
        "Unable to update or delete registered limit {id} because there are project limits \
         associated with it."
    ))
    .into()
}

/// The project limits that override a registered limit.
fn references(svc: &Service, d: &RegisteredLimitDoc) -> Result<Vec<Record>, ServiceError> {
    let k = key(&d.service_id, d.region_id.as_deref(), &d.resource_name);
    Ok(svc
        .store
        .list(Kind::Limit, None)?
        .into_iter()
        .filter(|r| r.name.as_deref() == Some(k.as_str()))
        .collect())
}

/// Deletes of a project's limits, for deleting the project.
pub(super) fn of_project(svc: &Service, project: &str) -> Result<Vec<Write>, ServiceError> {
    Ok(svc
        .store
        .list(Kind::Limit, Some(project))?
        .into_iter()
        .map(|r| Write::Delete(Kind::Limit, r.id))
        .collect())
}

/// Whether the caller may see a project's limits: admins all, others their project's.
fn may_read(ctx: &Ctx, project: &str) -> bool {
    ctx.is_admin() || ctx.project_id.as_deref() == Some(project)
}

/// `/v3/limits[/{id}]` (`rest`: the path after `limits`).
pub(super) fn limits(svc: &Service, req: &Request, ctx: &Ctx, rest: &[&str]) -> Res {
    let get = req.method == Method::GET || req.method == Method::HEAD;
    match (rest, &req.method) {
        (["model"], _) => model(svc, req),
        ([], &Method::POST) => {
            admin(ctx, "create_limits")?;
            let items: Vec<LimitIn> = batch(req, "limits")?;
            let mut recs = Vec::with_capacity(items.len());
            for i in items {
                check_limit("resource_limit", i.resource_limit)?;
                if svc.store.get(Kind::Project, &i.project_id)?.is_none() {
                    return Err(missing("project_id", "limits"));
                }
                let k = key(&i.service_id, i.region_id.as_deref(), &i.resource_name);
                if svc
                    .store
                    .get_by_name(Kind::RegisteredLimit, "", &k)?
                    .is_none()
                {
                    // Keystone's `NoLimitReference`, a 403.
                    return Err(ApiError::forbidden(
                        "Unable to create a limit that has no corresponding registered limit.",
                    )
                    .into());
                }
                let d = LimitDoc {
                    project_id: i.project_id,
                    service_id: i.service_id,
                    region_id: i.region_id,
                    resource_name: i.resource_name,
                    resource_limit: i.resource_limit,
                    description: i.description,
                };
                recs.push(Record::new(
                    Kind::Limit,
                    &new_id(),
                    &d.project_id,
                    Some(&k),
                    &d,
                ));
            }
            let writes: Vec<Write> = recs.iter().cloned().map(Write::Insert).collect();
            svc.store.apply(&writes).map_err(|e| conflict(e, "limit"))?;
            let views = recs
                .iter()
                .map(|r| limit_view(svc, r))
                .collect::<Result<Vec<_>, _>>()?;
            Ok(json_resp(StatusCode::CREATED, &json!({"limits": views})))
        }
        ([], _) if get => {
            // Users of a project see that project's limits; admins everyone's.
            let own = (!ctx.is_admin()).then(|| ctx.project_id.clone().unwrap_or_default());
            let scope = own.as_deref().or(req.q("project_id"));
            let mut items = Vec::new();
            for r in svc.store.list(Kind::Limit, scope)? {
                let d: LimitDoc = r.parse()?;
                if req.q("project_id").is_none_or(|p| p == d.project_id)
                    && matches(req, &d.service_id, d.region_id.as_deref(), &d.resource_name)
                {
                    items.push(limit_view(svc, &r)?);
                }
            }
            Ok(collection(svc, "limits", "limits", items))
        }
        ([id], m) => {
            let absent = || ApiError::not_found(format!("Could not find limit for {id}."));
            let rec = svc.store.get(Kind::Limit, id)?.ok_or_else(absent)?;
            if !may_read(ctx, &rec.scope) {
                return Err(absent().into());
            }
            match *m {
                Method::GET | Method::HEAD => Ok(json_resp(
                    StatusCode::OK,
                    &json!({"limit": limit_view(svc, &rec)?}),
                )),
                Method::PATCH => {
                    admin(ctx, "update_limit")?;
                    let p: LimitPatch = wrapped(req, "limit")?;
                    let mut d: LimitDoc = rec.parse()?;
                    if let Some(n) = p.resource_limit {
                        check_limit("resource_limit", n)?;
                        d.resource_limit = n;
                    }
                    if let Some(desc) = p.description {
                        d.description = desc;
                    }
                    let next = rec.with_doc(rec.name.as_deref(), &d);
                    svc.store
                        .update(next.clone())
                        .map_err(|e| conflict(e, "limit"))?;
                    Ok(json_resp(
                        StatusCode::OK,
                        &json!({"limit": limit_view(svc, &next)?}),
                    ))
                }
                Method::DELETE => {
                    admin(ctx, "delete_limit")?;
                    svc.store.delete(Kind::Limit, id)?;
                    Ok(empty(StatusCode::NO_CONTENT))
                }
                _ => Err(super::method_not_allowed()),
            }
        }
        _ => Err(super::method_not_allowed()),
    }
}
