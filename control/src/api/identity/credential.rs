//! Keystone credentials over HTTP: `/v3/credentials` (any type; `ec2` ones carry an access
//! key and secret in their blob), the OS-EC2 view of the same records under
//! `/v3/users/{user_id}/credentials/OS-EC2` (what `openstack ec2 credentials ...` uses),
//! and `/v3/s3tokens`, which checks an S3 request's SigV4 signature for a storage service
//! and answers a token scoped to the credential's project.
//!
//! Policy as Keystone's defaults: a user manages their own credentials, an admin anyone's;
//! a credential of someone else answers 404 to a user who may not see it.

use base64::Engine;
use http::{HeaderValue, Method, StatusCode};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{Res, collection, conflict, link, not_found, own_user, wrapped};
use crate::api::{ApiError, Request, empty, json as json_resp};
use crate::identity::ec2::{CredentialDoc, EC2, Ec2Blob, credential_id};
use crate::identity::{Ctx, new_id};
use crate::service::{Service, ServiceError};
use crate::store::{Kind, Record};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CredentialIn {
    blob: Option<String>,
    project_id: Option<String>,
    #[serde(rename = "type")]
    kind: Option<String>,
    user_id: Option<String>,
}

fn view(svc: &Service, r: &Record) -> Result<Value, ServiceError> {
    let d: CredentialDoc = r.parse()?;
    Ok(
        json!({"id": r.id, "user_id": d.user_id, "project_id": d.project_id, "type": d.kind,
              "blob": d.blob, "links": link(svc, &format!("credentials/{}", r.id))}),
    )
}

/// A credential the caller may see, or 404.
fn visible(svc: &Service, ctx: &Ctx, id: &str) -> Result<(Record, CredentialDoc), ServiceError> {
    let rec = svc
        .store
        .get(Kind::Credential, id)?
        .ok_or_else(|| not_found("credential", id))?;
    let doc: CredentialDoc = rec.parse()?;
    if doc.user_id != ctx.user_id() && !ctx.is_admin() {
        return Err(not_found("credential", id));
    }
    Ok((rec, doc))
}

/// Checks a new or changed credential; the id it must have (`ec2`: from its access key).
fn checked(svc: &Service, doc: &CredentialDoc) -> Result<Option<String>, ServiceError> {
    if doc.kind.is_empty() || doc.kind.len() > 255 {
        return Err(ApiError::bad_request("type must be 1 to 255 characters").into());
    }
    if svc.store.get(Kind::User, &doc.user_id)?.is_none() {
        return Err(ApiError::bad_request(format!("user {} does not exist", doc.user_id)).into());
    }
    if let Some(p) = &doc.project_id
        && svc.store.get(Kind::Project, p)?.is_none()
    {
        return Err(ApiError::bad_request(format!("project {p} does not exist")).into());
    }
    if doc.kind != EC2 {
        return Ok(None);
    }
    if doc.project_id.is_none() {
        return Err(ApiError::bad_request("an ec2 credential needs a project_id").into());
    }
    Ok(Some(credential_id(&Ec2Blob::parse(&doc.blob)?.access)))
}

/// `/v3/credentials[/{id}]` (`rest`: the path after `credentials`).
pub(super) fn credentials(svc: &Service, req: &Request, ctx: &Ctx, rest: &[&str]) -> Res {
    let get = req.method == Method::GET || req.method == Method::HEAD;
    match (rest, &req.method) {
        ([], &Method::POST) => {
            let c: CredentialIn = wrapped(req, "credential")?;
            let user_id = c.user_id.unwrap_or_else(|| ctx.user_id().to_string());
            own_user(ctx, &user_id, "create_credential")?;
            let doc = CredentialDoc {
                user_id,
                project_id: c.project_id,
                kind: c
                    .kind
                    .ok_or_else(|| ApiError::bad_request("'type' is a required property"))?,
                blob: c
                    .blob
                    .ok_or_else(|| ApiError::bad_request("'blob' is a required property"))?,
            };
            let id = checked(svc, &doc)?.unwrap_or_else(new_id);
            let rec = Record::new(Kind::Credential, &id, &doc.user_id, None, &doc);
            svc.store
                .insert(rec.clone())
                .map_err(|e| conflict(e, "credential"))?;
            Ok(json_resp(
                StatusCode::CREATED,
                &json!({"credential": view(svc, &rec)?}),
            ))
        }
        ([], _) if get => {
            // Users see their own; admins everyone's.
            let mine = (!ctx.is_admin()).then(|| ctx.user_id().to_string());
            let scope = mine.as_deref().or(req.q("user_id"));
            let mut items = Vec::new();
            for r in svc.store.list(Kind::Credential, scope)? {
                let d: CredentialDoc = r.parse()?;
                if req.q("type").is_none_or(|t| d.kind == t)
                    && req.q("user_id").is_none_or(|u| d.user_id == u)
                {
                    items.push(view(svc, &r)?);
                }
            }
            Ok(collection(svc, "credentials", "credentials", items))
        }
        ([id], m) => {
            let (rec, doc) = visible(svc, ctx, id)?;
            match *m {
                Method::GET | Method::HEAD => Ok(json_resp(
                    StatusCode::OK,
                    &json!({"credential": view(svc, &rec)?}),
                )),
                Method::PATCH => {
                    let c: CredentialIn = wrapped(req, "credential")?;
                    if c.user_id.as_ref().is_some_and(|u| *u != doc.user_id) {
                        return Err(ApiError::bad_request(
                            "a credential cannot move to another user",
                        )
                        .into());
                    }
                    let next = CredentialDoc {
                        project_id: c.project_id.or(doc.project_id),
                        kind: c.kind.unwrap_or(doc.kind),
                        blob: c.blob.unwrap_or(doc.blob),
                        user_id: doc.user_id,
                    };
                    if checked(svc, &next)?.is_some_and(|must| must != rec.id) {
                        return Err(ApiError::bad_request(
                            "an ec2 credential's id is the SHA-256 of its access key; \
                             create a new credential for a new access key",
                        )
                        .into());
                    }
                    let next = rec.with_doc(None, &next);
                    svc.store
                        .update(next.clone())
                        .map_err(|e| conflict(e, "credential"))?;
                    Ok(json_resp(
                        StatusCode::OK,
                        &json!({"credential": view(svc, &next)?}),
                    ))
                }
                Method::DELETE => {
                    svc.store.delete(Kind::Credential, id)?;
                    Ok(empty(StatusCode::NO_CONTENT))
                }
                _ => Err(super::method_not_allowed()),
            }
        }
        _ => Err(ApiError::not_found(format!(
            "no such resource: /v3/credentials/{}",
            rest.join("/")
        ))
        .into()),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Ec2In {
    tenant_id: Option<String>,
    project_id: Option<String>,
}

fn ec2_view(svc: &Service, d: &CredentialDoc) -> Result<Value, ServiceError> {
    let b = Ec2Blob::parse(&d.blob)?;
    Ok(
        json!({"user_id": d.user_id, "tenant_id": d.project_id, "access": b.access,
              "secret": b.secret, "trust_id": b.trust_id,
              "links": link(svc, &format!("users/{}/credentials/OS-EC2/{}", d.user_id, b.access))}),
    )
}

/// `/v3/users/{uid}/credentials/OS-EC2[/{access}]` (`rest`: the path after `OS-EC2`).
pub(super) fn os_ec2(svc: &Service, req: &Request, ctx: &Ctx, uid: &str, rest: &[&str]) -> Res {
    own_user(ctx, uid, "ec2_credentials")?;
    let get = req.method == Method::GET || req.method == Method::HEAD;
    match (rest, &req.method) {
        ([], &Method::POST) => {
            let e: Ec2In = ec2_body(req)?;
            let project = e
                .tenant_id
                .or(e.project_id)
                .or_else(|| ctx.project_id.clone())
                .ok_or_else(|| ApiError::bad_request("'tenant_id' is a required property"))?;
            if svc.store.get(Kind::User, uid)?.is_none() {
                return Err(not_found("user", uid));
            }
            if svc.effective_roles(uid, "project", &project)?.is_empty() {
                return Err(ApiError::forbidden(format!(
                    "the user has no role on project {project}"
                ))
                .into());
            }
            let blob = Ec2Blob::generate();
            let doc = CredentialDoc {
                user_id: uid.to_string(),
                project_id: Some(project),
                kind: EC2.into(),
                blob: blob.to_blob(),
            };
            let rec = Record::new(
                Kind::Credential,
                &credential_id(&blob.access),
                uid,
                None,
                &doc,
            );
            svc.store
                .insert(rec)
                .map_err(|e| conflict(e, "credential"))?;
            Ok(json_resp(
                StatusCode::CREATED,
                &json!({"credential": ec2_view(svc, &doc)?}),
            ))
        }
        ([], _) if get => {
            let mut items = Vec::new();
            for r in svc.store.list(Kind::Credential, Some(uid))? {
                let d: CredentialDoc = r.parse()?;
                if d.kind == EC2 {
                    items.push(ec2_view(svc, &d)?);
                }
            }
            Ok(collection(
                svc,
                "credentials",
                &format!("users/{uid}/credentials/OS-EC2"),
                items,
            ))
        }
        ([access], m) => {
            let doc = svc
                .ec2_credential(access)?
                .filter(|d| d.user_id == uid)
                .ok_or_else(|| not_found("credential", access))?;
            match *m {
                Method::GET | Method::HEAD => Ok(json_resp(
                    StatusCode::OK,
                    &json!({"credential": ec2_view(svc, &doc)?}),
                )),
                Method::DELETE => {
                    svc.store.delete(Kind::Credential, &credential_id(access))?;
                    Ok(empty(StatusCode::NO_CONTENT))
                }
                _ => Err(super::method_not_allowed()),
            }
        }
        _ => Err(super::method_not_allowed()),
    }
}

/// The OS-EC2 create body: `{"tenant_id": ...}` as keystoneclient sends it; without a
/// body, the caller's project.
fn ec2_body(req: &Request) -> Result<Ec2In, ServiceError> {
    if req.body.is_empty() {
        return Ok(Ec2In {
            tenant_id: None,
            project_id: None,
        });
    }
    Ok(req.json()?)
}

#[derive(Deserialize)]
struct S3TokenIn {
    credentials: S3Credentials,
}

#[derive(Deserialize)]
struct S3Credentials {
    access: String,
    /// The string to sign, base64.
    token: String,
    signature: String,
}

/// `POST /v3/s3tokens`: no X-Auth-Token; the signature is the authentication.
pub(super) fn s3tokens(svc: &Service, req: &Request) -> Res {
    if req.method != Method::POST {
        return Err(super::method_not_allowed());
    }
    let body: S3TokenIn = req.json()?;
    let c = body.credentials;
    let sts = base64::engine::general_purpose::STANDARD
        .decode(c.token.as_bytes())
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .ok_or_else(|| {
            ApiError::bad_request("credentials.token must be base64 of the string to sign")
        })?;
    let claims = svc.s3_token(&c.access, &sts, &c.signature)?;
    let token = svc.keys.seal(&claims)?;
    let ctx = svc.context_for(claims)?;
    let mut r = crate::api::full(
        StatusCode::OK,
        "application/json",
        svc.token_body(&ctx, true)?,
    );
    r.headers_mut().insert(
        "x-subject-token",
        HeaderValue::from_str(&token).expect("base64 is a valid header"),
    );
    Ok(r)
}
