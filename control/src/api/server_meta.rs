//! Nova's server update and server metadata: `PUT /servers/{id}` renames a server
//! (`openstack server set --name`), and `/servers/{id}/metadata[/{key}]` reads, merges,
//! replaces, sets and deletes its metadata items (`openstack server set/unset --property`).
//!
//! As in Nova, metadata changes are refused on a locked server (unless by an admin) and
//! while it is building or has a task under way, keys and values are checked as Nova's
//! schema checks them, and the items stay within the `metadata_items` quota. The change is
//! one compare-and-swap of the server's record; what the guest saw on its config drive at
//! boot stays as it was (Nova's config drive is written once too).

use std::collections::BTreeMap;

use http::{Method, StatusCode};
use serde_json::{Map, Value, json};

use super::compute::{
    MAX_METADATA_ITEMS, load_server, refuse_if_locked, server_view, update_server, wrong_state,
};
use super::{ApiError, Request, Response, empty, json as json_resp};
use crate::compute::ServerDoc;
use crate::identity::Ctx;
use crate::service::Service;

/// Handles `PUT /servers/{id}` and the metadata paths; `None` for any other path.
pub(crate) fn handle(
    svc: &Service,
    ctx: &Ctx,
    req: &Request,
    segs: &[&str],
) -> Option<Result<Response, ApiError>> {
    let m = &req.method;
    Some(match segs {
        ["servers", id] if m == Method::PUT => rename(svc, ctx, req, id),
        ["servers", id, "metadata"] => all(svc, ctx, req, id),
        ["servers", id, "metadata", key] => item(svc, ctx, req, id, key),
        _ => return None,
    })
}

fn ok(v: Value) -> Result<Response, ApiError> {
    Ok(json_resp(StatusCode::OK, &v))
}

/// The body's object under `key`, or Nova's 400.
fn object<'a>(b: &'a Value, key: &str) -> Result<&'a Map<String, Value>, ApiError> {
    b.get(key).and_then(Value::as_object).ok_or_else(|| {
        ApiError::bad_request(format!(
            "Invalid input for field/attribute {key}. Value: {}. '{key}' is a required property",
            b
        ))
    })
}

/// `PUT /servers/{id}`: at microversion 2.1 only `name` (and the access addresses, which
/// this cloud does not keep) may change.
fn rename(svc: &Service, ctx: &Ctx, req: &Request, id: &str) -> Result<Response, ApiError> {
    load_server(svc, ctx, id)?;
    let b: Value = req.json()?;
    let s = object(&b, "server")?;
    if let Some(k) = s.keys().find(|k| k.as_str() != "name") {
        return Err(ApiError::bad_request(format!(
            "Invalid input for field/attribute server. Value: {}. Additional properties are not allowed ('{k}' was unexpected)",
            Value::Object(s.clone())
        )));
    }
    let name = match s.get("name") {
        None => None,
        Some(Value::String(n)) => {
            if n.is_empty() || n.chars().count() > 255 || n.trim() != n {
                return Err(ApiError::bad_request(format!(
                    "Invalid input for field/attribute name. Value: {n}. It must be 1 to 255 characters with no leading or trailing whitespace"
                )));
            }
            Some(n.clone())
        }
        Some(v) => {
            return Err(ApiError::bad_request(format!(
                "Invalid input for field/attribute name. Value: {v}. {v} is not of type 'string'"
            )));
        }
    };
    let d = match name {
        Some(n) => update_server(svc, id, |d| {
            let changed = d.name != n;
            d.name = n.clone();
            changed
        })?
        .ok_or_else(|| gone(id))?,
        None => load_server(svc, ctx, id)?.1,
    };
    ok(json!({"server": server_view(svc, id, &d, true)}))
}

fn gone(id: &str) -> ApiError {
    ApiError::not_found(format!("Instance {id} could not be found."))
}

/// Nova's 409 while the server is building or busy with a task.
fn refuse_if_busy(id: &str, d: &ServerDoc, what: &str) -> Result<(), ApiError> {
    if d.status == "BUILD" || d.task_state.is_some() {
        return Err(wrong_state(what, id, d, ""));
    }
    Ok(())
}

/// Metadata items from a request body, checked as Nova's schema checks them.
fn items(m: &Map<String, Value>) -> Result<BTreeMap<String, String>, ApiError> {
    let mut out = BTreeMap::new();
    for (k, v) in m {
        let Some(v) = v.as_str() else {
            return Err(ApiError::bad_request(format!(
                "Invalid input for field/attribute metadata. Value: {v}. {v} is not of type 'string'"
            )));
        };
        if k.is_empty() || k.chars().count() > 255 || v.chars().count() > 255 {
            return Err(ApiError::bad_request(format!(
                "Invalid input for field/attribute metadata. Key {k:?}: keys must be 1 to 255 characters and values at most 255"
            )));
        }
        out.insert(k.clone(), v.to_string());
    }
    Ok(out)
}

fn over_quota(n: usize) -> ApiError {
    ApiError::forbidden(format!(
        "Quota exceeded for metadata_items: Requested {n}, but the limit is {MAX_METADATA_ITEMS}"
    ))
}

/// Applies `f` to the metadata of a server the caller may change, within the quota;
/// returns the server as stored.
fn change(
    svc: &Service,
    ctx: &Ctx,
    id: &str,
    what: &str,
    mut f: impl FnMut(&mut BTreeMap<String, String>) -> Result<(), ApiError>,
) -> Result<ServerDoc, ApiError> {
    let (_, d) = load_server(svc, ctx, id)?;
    refuse_if_locked(ctx, id, &d)?;
    refuse_if_busy(id, &d, what)?;
    // Checked on the current items first, so that a refusal changes nothing.
    let mut probe = d.metadata.clone();
    f(&mut probe)?;
    if probe.len() > MAX_METADATA_ITEMS {
        return Err(over_quota(probe.len()));
    }
    let mut err = None;
    let d = update_server(svc, id, |d| {
        if err.is_some() {
            return false;
        }
        let mut m = d.metadata.clone();
        match f(&mut m) {
            Ok(()) if m.len() > MAX_METADATA_ITEMS => {
                err = Some(over_quota(m.len()));
                false
            }
            Ok(()) => {
                let changed = m != d.metadata;
                d.metadata = m;
                changed
            }
            Err(e) => {
                err = Some(e);
                false
            }
        }
    })?
    .ok_or_else(|| gone(id))?;
    match err {
        Some(e) => Err(e),
        None => Ok(d),
    }
}

/// `/servers/{id}/metadata`: GET lists, POST merges, PUT replaces.
fn all(svc: &Service, ctx: &Ctx, req: &Request, id: &str) -> Result<Response, ApiError> {
    match req.method {
        Method::GET => {
            let (_, d) = load_server(svc, ctx, id)?;
            ok(json!({"metadata": d.metadata}))
        }
        Method::POST | Method::PUT => {
            let replace = req.method == Method::PUT;
            let b: Value = req.json()?;
            let given = items(object(&b, "metadata")?)?;
            let what = if replace {
                "update_all_metadata"
            } else {
                "update_metadata"
            };
            let d = change(svc, ctx, id, what, |m| {
                if replace {
                    m.clear();
                }
                m.extend(given.iter().map(|(k, v)| (k.clone(), v.clone())));
                Ok(())
            })?;
            ok(json!({"metadata": if replace { given } else { d.metadata }}))
        }
        _ => Err(ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "The method is not allowed for the requested URL.",
        )),
    }
}

/// `/servers/{id}/metadata/{key}`: GET one item, PUT sets it, DELETE removes it.
fn item(
    svc: &Service,
    ctx: &Ctx,
    req: &Request,
    id: &str,
    key: &str,
) -> Result<Response, ApiError> {
    let missing = || ApiError::not_found("Metadata item was not found");
    match req.method {
        Method::GET => {
            let (_, d) = load_server(svc, ctx, id)?;
            let v = d.metadata.get(key).ok_or_else(missing)?;
            ok(json!({"meta": {key: v}}))
        }
        Method::PUT => {
            let b: Value = req.json()?;
            let given = items(object(&b, "meta")?)?;
            if given.len() != 1 {
                return Err(ApiError::bad_request(
                    "Request body contains too many items",
                ));
            }
            let Some(v) = given.get(key) else {
                return Err(ApiError::bad_request("Request body and URI mismatch"));
            };
            change(svc, ctx, id, "update_metadata", |m| {
                m.insert(key.to_string(), v.clone());
                Ok(())
            })?;
            ok(json!({"meta": {key: v}}))
        }
        Method::DELETE => {
            change(svc, ctx, id, "delete_metadata", |m| {
                m.remove(key).map(|_| ()).ok_or_else(missing)
            })?;
            Ok(empty(StatusCode::NO_CONTENT))
        }
        _ => Err(ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "The method is not allowed for the requested URL.",
        )),
    }
}
