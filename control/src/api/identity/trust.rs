//! Keystone trusts (`/v3/OS-TRUST/trusts`), what `openstack trust create/list/show/delete`
//! and `--os-trust-id` use: a trustor delegates some of its roles on one project to a
//! trustee, who then asks for a token scoped `{"OS-TRUST:trust": {"id": ...}}` (see
//! [`crate::identity`]: such a token carries the trust's roles while the trust lasts and
//! its trustor still holds them).
//!
//! Policy as Keystone's defaults, except that another user's trust is a 404, not a 403:
//! the trustor creates (with a token that is neither from a trust nor from a restricted
//! application credential) and deletes; the trustor and the trustee read; admins read and delete any.
//! A list without filters shows a non-admin the trusts it is trustor or trustee of.
//! Redelegation (`allow_redelegation`) is not supported.

use http::{Method, StatusCode};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{Res, collection, denied, link, method_not_allowed, not_found, wrapped};
use crate::api::{ApiError, Request, empty, json as json_resp};
use crate::identity::token::now_secs;
use crate::identity::{Ctx, RoleDoc, TrustDoc, new_id};
use crate::service::{Service, ServiceError};
use crate::store::{Kind, Record, Write};

/// A create body. Keystone's schema lets other properties through, and so does this.
#[derive(Deserialize)]
struct TrustIn {
    trustor_user_id: String,
    trustee_user_id: String,
    impersonation: bool,
    project_id: Option<String>,
    roles: Option<Vec<RoleRef>>,
    expires_at: Option<String>,
    remaining_uses: Option<i64>,
    allow_redelegation: Option<bool>,
}

#[derive(Deserialize)]
struct RoleRef {
    id: Option<String>,
    name: Option<String>,
}

/// `/v3/OS-TRUST/trusts[/...]`; `rest` is what follows `trusts`.
pub fn trusts(svc: &Service, req: &Request, ctx: &Ctx, rest: &[&str]) -> Res {
    let m = &req.method;
    let get = *m == Method::GET || *m == Method::HEAD;
    match rest {
        [] if *m == Method::POST => create(svc, req, ctx),
        [] if get => list(svc, req, ctx),
        [id] if get => {
            let (rec, t) = visible(svc, ctx, id)?;
            Ok(json_resp(
                StatusCode::OK,
                &json!({"trust": view(svc, &rec.id, &t)?}),
            ))
        }
        [id] if *m == Method::DELETE => {
            let (_, t) = visible(svc, ctx, id)?;
            if t.trustor_user_id != ctx.user_id() && !ctx.is_admin() {
                return Err(denied("delete_trust"));
            }
            svc.store.delete(Kind::Trust, id)?;
            Ok(empty(StatusCode::NO_CONTENT))
        }
        [id, "roles"] if get => {
            let (_, t) = visible(svc, ctx, id)?;
            Ok(json_resp(
                StatusCode::OK,
                &json!({"roles": roles_view(svc, &t)?,
                        "links": {"self": format!("{}/v3/OS-TRUST/trusts/{id}/roles",
                                                  svc.config.public_url),
                                  "previous": null, "next": null}}),
            ))
        }
        [id, "roles", role] if get => {
            let (_, t) = visible(svc, ctx, id)?;
            let found = roles_view(svc, &t)?
                .into_iter()
                .find(|r| r["id"] == *role)
                .ok_or_else(|| not_found("role", role))?;
            Ok(json_resp(StatusCode::OK, &json!({"role": found})))
        }
        [] | [_] | [_, "roles"] | [_, "roles", _] => Err(method_not_allowed()),
        _ => Err(ApiError::not_found(format!("no such resource: /{}", req.segs.join("/"))).into()),
    }
}

/// A trust the caller may see (its trustor or trustee, or an admin); 404 otherwise.
fn visible(svc: &Service, ctx: &Ctx, id: &str) -> Result<(Record, TrustDoc), ServiceError> {
    let rec = svc
        .store
        .get(Kind::Trust, id)?
        .ok_or_else(|| not_found("trust", id))?;
    let t: TrustDoc = rec.parse()?;
    if !t.involves(ctx.user_id()) && !ctx.is_admin() {
        return Err(not_found("trust", id));
    }
    Ok((rec, t))
}

fn roles_view(svc: &Service, t: &TrustDoc) -> Result<Vec<Value>, ServiceError> {
    let mut out = Vec::new();
    for id in &t.roles {
        // A role deleted since is no longer delegated (and tokens through the trust stop
        // working, since the trustor no longer holds it).
        if let Some(r) = svc.store.get(Kind::Role, id)? {
            let d: RoleDoc = r.parse()?;
            out.push(json!({"id": id, "name": d.name, "domain_id": null,
                            "links": link(svc, &format!("roles/{id}"))}));
        }
    }
    Ok(out)
}

fn view(svc: &Service, id: &str, t: &TrustDoc) -> Result<Value, ServiceError> {
    Ok(json!({
        "id": id,
        "trustor_user_id": t.trustor_user_id,
        "trustee_user_id": t.trustee_user_id,
        "project_id": t.project_id,
        "impersonation": t.impersonation,
        "expires_at": t.expires_at.map(crate::time::keystone),
        "remaining_uses": t.remaining_uses,
        "allow_redelegation": false,
        "redelegation_count": 0,
        "redelegated_trust_id": null,
        "deleted_at": null,
        "roles": roles_view(svc, t)?,
        "roles_links": {"self": null, "previous": null, "next": null},
        "links": link(svc, &format!("OS-TRUST/trusts/{id}")),
    }))
}

fn list(svc: &Service, req: &Request, ctx: &Ctx) -> Res {
    let me = ctx.user_id();
    let trustor = req.q("trustor_user_id");
    let trustee = req.q("trustee_user_id");
    if !ctx.is_admin() {
        // Keystone lets a user filter only by itself.
        if trustor.is_some_and(|u| u != me) {
            return Err(denied("list_trusts_for_trustor"));
        }
        if trustee.is_some_and(|u| u != me) {
            return Err(denied("list_trusts_for_trustee"));
        }
    }
    let mut items = Vec::new();
    for r in svc.store.list(Kind::Trust, trustor)? {
        let t: TrustDoc = r.parse()?;
        if trustee.is_none_or(|u| t.trustee_user_id == u) && (t.involves(me) || ctx.is_admin()) {
            items.push(view(svc, &r.id, &t)?);
        }
    }
    Ok(collection(svc, "trusts", "OS-TRUST/trusts", items))
}

fn create(svc: &Service, req: &Request, ctx: &Ctx) -> Res {
    if ctx.claims.trust_id.is_some() {
        return Err(ApiError::forbidden(
            "A token made through a trust cannot create trusts (redelegation is not supported).",
        )
        .into());
    }
    if svc.restricted_app_cred(ctx)? {
        return Err(ApiError::forbidden(
            "A token from a restricted application credential cannot create trusts.",
        )
        .into());
    }
    let t: TrustIn = wrapped(req, "trust")?;
    if t.trustor_user_id != ctx.user_id() {
        return Err(ApiError::forbidden("The authenticated user should be the trustor.").into());
    }
    if t.allow_redelegation == Some(true) {
        return Err(ApiError::bad_request("Trust redelegation is not supported.").into());
    }
    if svc.store.get(Kind::User, &t.trustee_user_id)?.is_none() {
        return Err(not_found("user", &t.trustee_user_id));
    }
    let (Some(project), Some(wanted)) = (t.project_id, t.roles.filter(|r| !r.is_empty())) else {
        return Err(ApiError::bad_request(
            "A trust needs a project_id and at least one role to delegate on it.",
        )
        .into());
    };
    if svc.store.get(Kind::Project, &project)?.is_none() {
        return Err(not_found("project", &project));
    }
    let remaining_uses = match t.remaining_uses {
        None => None,
        Some(n) if n > 0 => Some(n as u64),
        Some(n) => {
            return Err(ApiError::bad_request(format!(
                "remaining_uses must be a positive integer or null, not {n}"
            ))
            .into());
        }
    };
    let expires_at = t
        .expires_at
        .as_deref()
        .map(|s| {
            crate::time::parse(s).ok_or_else(|| {
                ApiError::bad_request(format!("expires_at {s:?} is not a timestamp"))
            })
        })
        .transpose()?;
    if expires_at.is_some_and(|e| e <= now_secs()) {
        return Err(ApiError::bad_request("expires_at is in the past").into());
    }
    // Each role named must be one the trustor holds on the project (directly, through a
    // group or as an implied role). A trustor that may not look roles up (a member may not
    // list them) gets from the CLI the name it typed as the id, so an id that is no held
    // role's id is tried as a name.
    let held = svc.effective_roles(ctx.user_id(), "project", &project)?;
    let mut roles = Vec::new();
    for r in wanted {
        let found = match (&r.id, &r.name) {
            (Some(id), _) => held
                .iter()
                .find(|(h, _)| h == id)
                .or_else(|| held.iter().find(|(_, n)| n == id)),
            (None, Some(name)) => held.iter().find(|(_, n)| n == name),
            (None, None) => {
                return Err(ApiError::bad_request("a role needs an id or a name").into());
            }
        };
        let Some((id, _)) = found else {
            let what = r.id.or(r.name).unwrap_or_default();
            return Err(ApiError::forbidden(format!(
                "The trustor does not hold role {what} on project {project}."
            ))
            .into());
        };
        if !roles.contains(id) {
            roles.push(id.clone());
        }
    }
    let doc = TrustDoc {
        trustor_user_id: t.trustor_user_id.clone(),
        trustee_user_id: t.trustee_user_id,
        project_id: project,
        roles,
        impersonation: t.impersonation,
        expires_at,
        remaining_uses,
    };
    let id = new_id();
    svc.store.insert(Record::new(
        Kind::Trust,
        &id,
        &t.trustor_user_id,
        None,
        &doc,
    ))?;
    Ok(json_resp(
        StatusCode::CREATED,
        &json!({"trust": view(svc, &id, &doc)?}),
    ))
}

/// Deletes of the trusts a user is trustor or trustee of (the user is being deleted).
pub fn of_user(svc: &Service, user_id: &str) -> Result<Vec<Write>, ServiceError> {
    of(svc, |t| t.involves(user_id))
}

/// Deletes of the trusts on a project (the project is being deleted).
pub fn of_project(svc: &Service, project_id: &str) -> Result<Vec<Write>, ServiceError> {
    of(svc, |t| t.project_id == project_id)
}

fn of(svc: &Service, which: impl Fn(&TrustDoc) -> bool) -> Result<Vec<Write>, ServiceError> {
    let mut out = Vec::new();
    for r in svc.store.list(Kind::Trust, None)? {
        if which(&r.parse()?) {
            out.push(Write::Delete(Kind::Trust, r.id));
        }
    }
    Ok(out)
}
