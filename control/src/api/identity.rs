//! Keystone v3 over HTTP: version discovery, tokens, domains, projects, users, groups,
//! roles and assignments, the catalog (services, endpoints, regions), application
//! credentials, credentials, unified limits (`limit`) and trusts (`trust`). Handlers run on the async worker
//! when all they read is in memory, else on the blocking pool; password and secret checks
//! run on the hashing pool before them.

use std::sync::Arc;

use http::{HeaderValue, Method, StatusCode};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::{ApiError, Request, Response, empty, json as json_resp};
use crate::identity::token::{Claims, now_secs};
use crate::identity::{
    AppCredDoc, AssignmentDoc, AuthBody, Ctx, DomainDoc, EndpointDoc, GroupDoc, LoginSecret,
    MembershipDoc, ProjectDoc, RegionDoc, RoleDoc, SYSTEM_ALL, ServiceDoc, UserDoc, new_id,
    password,
};
use crate::service::{Service, ServiceError};
use crate::store::{Kind, Record, StoreError, Write};

mod credential;
mod limit;
mod trust;

type Res = Result<Response, ServiceError>;

const MAX_NAME: usize = 255;

/// Answers one Keystone request.
pub fn handle(svc: &Service, req: &Request) -> Result<Response, ApiError> {
    route(svc, req, None).map_err(ApiError::from)
}

/// Seconds a login refused for a full hashing queue is told to wait (`Retry-After`).
pub const RETRY_AFTER_SECS: u32 = 1;

/// Answers a Keystone request. A password or application-credential login has its secret
/// checked first (see [`crate::identity::login`]: a remembered verified password, a check
/// already running for the same secret, or a new one awaited on the hashing pool, so
/// neither this worker nor a blocking thread waits for Argon2); the rest runs as every
/// other Keystone request does. When too many checks wait already, the answer is 503
/// with `Retry-After` and nothing else happens.
pub async fn route_async(
    svc: Arc<Service>,
    req: http::Request<hyper::body::Incoming>,
    segs: Vec<String>,
) -> Result<Response, ApiError> {
    let request = Arc::new(super::read_request(&svc, req, segs).await?);
    let checked = match login_secret(&svc, &request).await {
        Some(l) => match svc
            .logins
            .check(l.cache_as.as_deref(), l.secret, l.stored)
            .await
        {
            Ok(c) => Some(c),
            Err(password::PasswordError::Busy) => return Ok(busy()),
            Err(e) => return Err(ApiError::from(ServiceError::from(e))),
        },
        None => None,
    };
    let head = request.method == Method::HEAD;
    let resp = super::cached_or_blocking(svc, move |svc| {
        route(svc, &request, checked.as_ref()).map_err(ApiError::from)
    })
    .await?;
    Ok(super::head_answer(head, resp))
}

/// 503 in Keystone's shape with `Retry-After`: the hashing queue is full.
fn busy() -> Response {
    let mut r = ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        format!("Too many logins are waiting for a password check; retry in {RETRY_AFTER_SECS} s."),
    )
    .into_response(super::Flavor::Keystone);
    r.headers_mut()
        .insert("retry-after", HeaderValue::from(RETRY_AFTER_SECS));
    r
}

/// For `POST /v3/auth/tokens` with a password or application credential: the secret and
/// the stored hash to check it against. `None` when there is nothing to check, or when
/// the request is refused anyway (the handler then answers why).
async fn login_secret(svc: &Arc<Service>, req: &Arc<Request>) -> Option<LoginSecret> {
    if req.method != Method::POST || segs(req).as_slice() != ["v3", "auth", "tokens"] {
        return None;
    }
    let req = req.clone();
    super::cached_or_blocking(svc.clone(), move |svc| {
        let auth: AuthBody = req.json()?;
        svc.login_secret(&auth).map_err(ApiError::from)
    })
    .await
    .ok()
    .flatten()
}

fn segs(req: &Request) -> Vec<&str> {
    req.segs.iter().map(String::as_str).collect()
}

fn route(svc: &Service, req: &Request, checked: Option<&password::Checked>) -> Res {
    let s = segs(req);
    let m = &req.method;
    let get = m == Method::GET || m == Method::HEAD;
    match s.as_slice() {
        [] if get => Ok(json_resp(
            StatusCode::MULTIPLE_CHOICES,
            &json!({"versions": {"values": [version(svc)]}}),
        )),
        ["v3"] if get => Ok(json_resp(StatusCode::OK, &json!({"version": version(svc)}))),
        ["v3", "auth", "tokens"] => tokens(svc, req, checked),
        ["v3", "s3tokens"] => credential::s3tokens(svc, req),
        ["v3", rest @ ..] => {
            let ctx = caller(svc, req)?;
            resources(svc, req, &ctx, rest)
        }
        _ => Err(ApiError::not_found(format!("no such resource: /{}", req.segs.join("/"))).into()),
    }
}

fn version(svc: &Service) -> Value {
    json!({
        "id": "v3.14", "status": "stable", "updated": "2020-04-07T00:00:00Z",
        "links": [{"rel": "self", "href": format!("{}/v3/", svc.config.public_url)}],
        "media-types": [{"base": "application/json",
                          "type": "application/vnd.openstack.identity-v3+json"}]
    })
}

/// The context of the request's `X-Auth-Token`, or 401.
pub fn caller(svc: &Service, req: &Request) -> Result<Ctx, ServiceError> {
    let token = req.header("x-auth-token").ok_or_else(|| {
        ApiError::unauthorized("The request you have made requires authentication.")
    })?;
    svc.context(token)
}

fn denied(action: &str) -> ServiceError {
    ApiError::forbidden(format!(
        "You are not authorized to perform the requested action: identity:{action}."
    ))
    .into()
}

fn admin(ctx: &Ctx, action: &str) -> Result<(), ServiceError> {
    if ctx.is_admin() {
        Ok(())
    } else {
        Err(denied(action))
    }
}

fn not_found(what: &str, id: &str) -> ServiceError {
    ApiError::not_found(format!("Could not find {what}: {id}.")).into()
}

fn conflict(e: StoreError, what: &str) -> ServiceError {
    match e {
        StoreError::Conflict { .. } => ApiError::conflict(format!(
            "Conflict occurred attempting to store {what} - Duplicate entry."
        ))
        .into(),
        StoreError::Stale { .. } => {
            ApiError::conflict(format!("The {what} was changed by another request; retry.")).into()
        }
        other => other.into(),
    }
}

fn link(svc: &Service, path: &str) -> Value {
    json!({"self": format!("{}/v3/{path}", svc.config.public_url)})
}

fn collection(svc: &Service, key: &str, path: &str, items: Vec<Value>) -> Response {
    json_resp(
        StatusCode::OK,
        &json!({key: items, "links": {"self": format!("{}/v3/{path}", svc.config.public_url),
                                       "previous": null, "next": null}}),
    )
}

/// The value under `key` of a body `{"<key>": ...}`, rejecting other top-level keys.
fn envelope(req: &Request, key: &str) -> Result<Value, ServiceError> {
    let v: Value = req.json()?;
    let Value::Object(mut o) = v else {
        return Err(ApiError::bad_request("the body must be a JSON object").into());
    };
    let inner = o
        .remove(key)
        .ok_or_else(|| ApiError::bad_request(format!("'{key}' is a required property")))?;
    if let Some(k) = o.keys().next() {
        return Err(ApiError::bad_request(format!(
            "Additional properties are not allowed ('{k}' was unexpected)"
        ))
        .into());
    }
    Ok(inner)
}

/// Parses `{"<key>": {...}}` into T, rejecting other top-level keys.
fn wrapped<T: serde::de::DeserializeOwned>(req: &Request, key: &str) -> Result<T, ServiceError> {
    let inner = envelope(req, key)?;
    serde_json::from_value(inner)
        .map_err(|e| ApiError::bad_request(format!("invalid '{key}': {e}")).into())
}

fn check_name(name: &str) -> Result<(), ServiceError> {
    if name.trim().is_empty() || name.len() > MAX_NAME {
        return Err(
            ApiError::bad_request(format!("name must be 1 to {MAX_NAME} characters")).into(),
        );
    }
    Ok(())
}

fn reserved_extra(extra: &Map<String, Value>, reserved: &[&str]) -> Result<(), ServiceError> {
    if let Some(k) = extra.keys().find(|k| reserved.contains(&k.as_str())) {
        return Err(ApiError::bad_request(format!("'{k}' cannot be set")).into());
    }
    Ok(())
}

fn bool_filter(req: &Request, key: &str) -> Option<bool> {
    req.q(key).map(|v| {
        !matches!(
            v.to_ascii_lowercase().as_str(),
            "0" | "false" | "no" | "off"
        )
    })
}

// ---------------------------------------------------------------- tokens

fn tokens(svc: &Service, req: &Request, checked: Option<&password::Checked>) -> Res {
    let with_catalog = req.q("nocatalog").is_none();
    match req.method {
        Method::POST => {
            let auth: AuthBody = req.json()?;
            let claims = svc.authenticate(&auth, req.header("x-auth-token"), checked)?;
            let token = svc.keys.seal(&claims)?;
            let ctx = svc.context_for(claims)?;
            let mut r = super::full(
                StatusCode::CREATED,
                "application/json",
                svc.token_body(&ctx, with_catalog)?,
            );
            r.headers_mut().insert(
                "x-subject-token",
                HeaderValue::from_str(&token).expect("base64 is a valid header"),
            );
            Ok(r)
        }
        Method::GET | Method::HEAD | Method::DELETE => {
            let ctx = caller(svc, req)?;
            let subject = req
                .header("x-subject-token")
                .ok_or_else(|| ApiError::bad_request("X-Subject-Token header is required"))?;
            let claims = subject_claims(svc, subject)?;
            // A user may check or revoke their own tokens; admins anyone's.
            if !ctx.is_admin() && claims.user_id != ctx.user_id() {
                return Err(denied("validate_token"));
            }
            match req.method {
                Method::DELETE => {
                    svc.revoke_token(&claims)?;
                    Ok(empty(StatusCode::NO_CONTENT))
                }
                _ => {
                    let sctx = svc.context_for(claims).map_err(|_| {
                        ApiError::not_found("Could not find token: the subject token is not valid.")
                    })?;
                    let mut r = super::full(
                        StatusCode::OK,
                        "application/json",
                        svc.token_body(&sctx, with_catalog)?,
                    );
                    r.headers_mut().insert(
                        "x-subject-token",
                        HeaderValue::from_str(subject)
                            .map_err(|_| ApiError::bad_request("bad token"))?,
                    );
                    Ok(r)
                }
            }
        }
        _ => Err(ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "method not allowed").into()),
    }
}

fn subject_claims(svc: &Service, subject: &str) -> Result<Claims, ServiceError> {
    svc.check_token(subject).map_err(|_| {
        ApiError::not_found("Could not find token: the subject token is not valid.").into()
    })
}

// ---------------------------------------------------------------- dispatch

fn resources(svc: &Service, req: &Request, ctx: &Ctx, s: &[&str]) -> Res {
    let crud = match s.first() {
        Some(&"domains") => crud::<Domains>,
        Some(&"projects") => crud::<Projects>,
        Some(&"users") => crud::<Users>,
        Some(&"groups") => crud::<Groups>,
        Some(&"roles") => crud::<Roles>,
        Some(&"services") => crud::<Services>,
        Some(&"endpoints") => crud::<Endpoints>,
        _ => |_: &Service, _: &Request, _: &Ctx, _: &[&str]| None,
    };
    if let Some(answer) = crud(svc, req, ctx, &s[1..]) {
        return answer;
    }
    let m = req.method.clone();
    let get = m == Method::GET || m == Method::HEAD;
    match (s, m) {
        (["auth", "catalog"], _) if get => {
            let c = svc.catalog(ctx.project_id.as_deref())?;
            Ok(json_resp(
                StatusCode::OK,
                &json!({"catalog": c, "links": link(svc, "auth/catalog")}),
            ))
        }
        (["auth", "projects"], _) if get => {
            let items = user_projects(svc, ctx.user_id())?;
            Ok(collection(svc, "projects", "auth/projects", items))
        }
        (["auth", "domains"], _) if get => {
            let mut items = Vec::new();
            for r in svc.store.list(Kind::Domain, None)? {
                if !svc
                    .effective_roles(ctx.user_id(), "domain", &r.id)?
                    .is_empty()
                {
                    items.push(domain_view(svc, &r)?);
                }
            }
            Ok(collection(svc, "domains", "auth/domains", items))
        }
        (["users", id, "projects"], _) if get => {
            if !ctx.is_admin() && *id != ctx.user_id() {
                return Err(denied("list_user_projects"));
            }
            let items = user_projects(svc, id)?;
            Ok(collection(
                svc,
                "projects",
                &format!("users/{id}/projects"),
                items,
            ))
        }
        (["users", id, "groups"], _) if get => {
            if !ctx.is_admin() && *id != ctx.user_id() {
                return Err(denied("list_groups_for_user"));
            }
            let mut items = Vec::new();
            for m in svc.store.list(Kind::Membership, Some(id))? {
                let m: MembershipDoc = m.parse()?;
                if let Some(g) = svc.store.get(Kind::Group, &m.group_id)? {
                    items.push(group_view(svc, &g)?);
                }
            }
            Ok(collection(
                svc,
                "groups",
                &format!("users/{id}/groups"),
                items,
            ))
        }
        (["users", id, "password"], Method::POST) => change_password(svc, req, ctx, id),
        (["users", uid, "credentials", "OS-EC2", rest @ ..], _) => {
            credential::os_ec2(svc, req, ctx, uid, rest)
        }
        (["credentials", rest @ ..], _) => credential::credentials(svc, req, ctx, rest),
        (["registered_limits", rest @ ..], _) => limit::registered_limits(svc, req, ctx, rest),
        (["limits", rest @ ..], _) => limit::limits(svc, req, ctx, rest),
        (["OS-TRUST", "trusts", rest @ ..], _) => trust::trusts(svc, req, ctx, rest),
        (["users", uid, "application_credentials"], Method::POST) => {
            create_app_cred(svc, req, ctx, uid)
        }
        (["users", uid, "application_credentials"], _) if get => {
            own_user(ctx, uid, "list_application_credentials")?;
            let mut items = Vec::new();
            for r in svc.store.list(Kind::AppCredential, Some(uid))? {
                if req.q("name").is_none_or(|n| r.name.as_deref() == Some(n)) {
                    items.push(app_cred_view(svc, &r)?);
                }
            }
            Ok(collection(
                svc,
                "application_credentials",
                &format!("users/{uid}/application_credentials"),
                items,
            ))
        }
        (["users", uid, "access_rules"], _) if get => {
            own_user(ctx, uid, "list_access_rules")?;
            let mut items = Vec::new();
            for r in svc.store.list(Kind::AccessRule, Some(uid))? {
                let d: crate::identity::AccessRuleDoc = r.parse()?;
                let keep = req.q("service").is_none_or(|x| d.service == x)
                    && req.q("method").is_none_or(|x| d.method == x)
                    && req.q("path").is_none_or(|x| d.path == x);
                if keep {
                    items.push(access_rule_view(svc, &r)?);
                }
            }
            Ok(collection(
                svc,
                "access_rules",
                &format!("users/{uid}/access_rules"),
                items,
            ))
        }
        (["users", uid, "access_rules", rid], m) => {
            own_user(ctx, uid, "get_access_rule")?;
            let rec = svc
                .store
                .get(Kind::AccessRule, rid)?
                .filter(|r| r.scope == *uid)
                .ok_or_else(|| not_found("access rule", rid))?;
            match m {
                Method::GET | Method::HEAD => Ok(json_resp(
                    StatusCode::OK,
                    &json!({"access_rule": access_rule_view(svc, &rec)?}),
                )),
                Method::DELETE => {
                    if svc.restricted_app_cred(ctx)? {
                        return Err(denied("delete_access_rule"));
                    }
                    for c in svc.store.list(Kind::AppCredential, Some(uid))? {
                        if c.parse::<AppCredDoc>()?
                            .access_rules
                            .iter()
                            .any(|r| r == rid)
                        {
                            return Err(ApiError::forbidden(format!(
                                "Access rule {rid} is in use by application credential {}.",
                                c.id
                            ))
                            .into());
                        }
                    }
                    svc.store.delete(Kind::AccessRule, rid)?;
                    Ok(empty(StatusCode::NO_CONTENT))
                }
                _ => Err(method_not_allowed()),
            }
        }
        (["users", uid, "application_credentials", cid], m) => {
            own_user(ctx, uid, "get_application_credential")?;
            let rec = svc
                .store
                .get(Kind::AppCredential, cid)?
                .filter(|r| r.scope == *uid)
                .ok_or_else(|| not_found("application credential", cid))?;
            match m {
                Method::GET | Method::HEAD => Ok(json_resp(
                    StatusCode::OK,
                    &json!({"application_credential": app_cred_view(svc, &rec)?}),
                )),
                Method::DELETE => {
                    if svc.restricted_app_cred(ctx)? {
                        return Err(denied("delete_application_credential"));
                    }
                    svc.store.delete(Kind::AppCredential, cid)?;
                    Ok(empty(StatusCode::NO_CONTENT))
                }
                _ => Err(method_not_allowed()),
            }
        }
        (["groups", gid, "users"], _) if get => {
            admin(ctx, "list_users_in_group")?;
            svc.store
                .get(Kind::Group, gid)?
                .ok_or_else(|| not_found("group", gid))?;
            let mut items = Vec::new();
            for m in svc.store.list(Kind::Membership, None)? {
                let d: MembershipDoc = m.parse()?;
                if d.group_id == *gid
                    && let Some(u) = svc.store.get(Kind::User, &d.user_id)?
                {
                    items.push(user_view(svc, &u)?);
                }
            }
            Ok(collection(
                svc,
                "users",
                &format!("groups/{gid}/users"),
                items,
            ))
        }
        (["groups", gid, "users", uid], m) => membership(svc, ctx, gid, uid, m),
        (
            [
                t @ ("projects" | "domains"),
                tid,
                a @ ("users" | "groups"),
                aid,
                "roles",
            ],
            _,
        ) if get => list_target_roles(svc, ctx, t, tid, a, aid),
        (
            [
                t @ ("projects" | "domains"),
                tid,
                a @ ("users" | "groups"),
                aid,
                "roles",
                rid,
            ],
            m,
        ) => grant(svc, ctx, t, tid, a, aid, rid, m),
        (["system", a @ ("users" | "groups"), aid, "roles"], _) if get => {
            list_target_roles(svc, ctx, "system", SYSTEM_ALL, a, aid)
        }
        (["system", a @ ("users" | "groups"), aid, "roles", rid], m) => {
            grant(svc, ctx, "system", SYSTEM_ALL, a, aid, rid, m)
        }
        (["role_assignments"], _) if get => role_assignments(svc, req, ctx),
        (["role_inferences"], _) if get => role_inferences(svc, ctx),
        (["roles", prior, "implies"], _) if get => implied_roles(svc, ctx, prior),
        (["roles", prior, "implies", implied], m) => implied_role(svc, ctx, prior, implied, m),
        (["regions"], _) if get => {
            let items = svc
                .store
                .list(Kind::Region, None)?
                .iter()
                .map(|r| region_view(svc, r))
                .collect::<Result<_, _>>()?;
            Ok(collection(svc, "regions", "regions", items))
        }
        (["regions", id], _) if get => {
            let r = svc
                .store
                .get(Kind::Region, id)?
                .ok_or_else(|| not_found("region", id))?;
            Ok(json_resp(
                StatusCode::OK,
                &json!({"region": region_view(svc, &r)?}),
            ))
        }
        _ => Err(ApiError::not_found(format!("no such resource: /v3/{}", s.join("/"))).into()),
    }
}

fn method_not_allowed() -> ServiceError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method not allowed on this resource",
    )
    .into()
}

fn own_user(ctx: &Ctx, uid: &str, action: &str) -> Result<(), ServiceError> {
    if uid == ctx.user_id() || ctx.is_admin() {
        Ok(())
    } else {
        Err(denied(action))
    }
}

fn merge(mut base: Value, extra: &Map<String, Value>) -> Value {
    if let Value::Object(o) = &mut base {
        for (k, v) in extra {
            o.entry(k.clone()).or_insert_with(|| v.clone());
        }
    }
    base
}

// ---------------------------------------------------------------- generic CRUD

/// A Keystone resource kind served by the generic handlers [`create`], [`list`] and
/// [`one`]: how its request body becomes a stored document, what may read it, how a list
/// is filtered, and what a delete takes with it.
trait Resource {
    /// The store kind.
    const KIND: Kind;
    /// The body key and the word in messages (`domain`).
    const KEY: &'static str;
    /// The collection (`domains`), also the path and the policy suffix of a list.
    const COLLECTION: &'static str;
    /// The stored document.
    type Doc: serde::Serialize + serde::de::DeserializeOwned;
    /// The request body of a create or an update.
    type In: serde::de::DeserializeOwned;

    /// The API view of a record.
    fn view(svc: &Service, r: &Record) -> Result<Value, ServiceError>;
    /// The scope the store files the record under, and its name unique there, if any.
    fn filing(doc: &Self::Doc) -> (String, Option<String>);
    /// A checked new document from a create body.
    fn new_doc(svc: &Service, ctx: &Ctx, input: Self::In) -> Result<Self::Doc, ServiceError>;
    /// Applies an update body; `true` if the owner's tokens must be revoked.
    fn patch(doc: &mut Self::Doc, input: Self::In) -> Result<bool, ServiceError>;

    /// Who may read one record.
    fn may_read(ctx: &Ctx, _id: &str) -> Result<(), ServiceError> {
        admin(ctx, &format!("get_{}", Self::KEY))
    }
    /// The scope a list reads (`None`: all).
    fn list_scope(_req: &Request) -> Option<&str> {
        None
    }
    /// Whether a record passes a list's filters (by default `name` and `domain_id`).
    fn keep(req: &Request, r: &Record, _doc: &Self::Doc) -> bool {
        req.q("name").is_none_or(|n| r.name.as_deref() == Some(n))
            && req.q("domain_id").is_none_or(|d| r.scope == d)
    }
    /// What else a delete removes or changes; may refuse the delete.
    fn on_delete(
        _svc: &Service,
        _r: &Record,
        _doc: &Self::Doc,
    ) -> Result<Vec<Write>, ServiceError> {
        Ok(Vec::new())
    }
    /// Runs after a delete was stored.
    fn after_delete(_svc: &Service, _id: &str) -> Result<(), ServiceError> {
        Ok(())
    }
}

/// Declares a [`Resource`]: its type, kind, body key, collection, document and body types,
/// view, and filing (`|doc| (scope, name)`), then the rest of its methods.
macro_rules! resource {
    ($ty:ident: $kind:expr, $key:literal, $coll:literal, $doc:ty, $in:ty, $view:path,
     |$d:ident| $filing:expr; $($rest:tt)*) => {
        struct $ty;

        impl Resource for $ty {
            const KIND: Kind = $kind;
            const KEY: &'static str = $key;
            const COLLECTION: &'static str = $coll;
            type Doc = $doc;
            type In = $in;

            fn view(svc: &Service, r: &Record) -> Result<Value, ServiceError> {
                $view(svc, r)
            }
            fn filing($d: &$doc) -> (String, Option<String>) {
                $filing
            }
            $($rest)*
        }
    };
}

fn one_view<R: Resource>(svc: &Service, status: StatusCode, r: &Record) -> Res {
    Ok(json_resp(status, &json!({ R::KEY: R::view(svc, r)? })))
}

/// The generic routes of a collection (`rest`: the path after its name), if one matches.
fn crud<R: Resource>(svc: &Service, req: &Request, ctx: &Ctx, rest: &[&str]) -> Option<Res> {
    let get = req.method == Method::GET || req.method == Method::HEAD;
    match rest {
        [] if req.method == Method::POST => Some(create::<R>(svc, req, ctx)),
        [] if get => Some(list::<R>(svc, req, ctx)),
        [id] => Some(one::<R>(svc, req, ctx, id, req.method.clone())),
        _ => None,
    }
}

/// `POST /v3/<collection>`.
fn create<R: Resource>(svc: &Service, req: &Request, ctx: &Ctx) -> Res {
    admin(ctx, &format!("create_{}", R::KEY))?;
    let input: R::In = wrapped(req, R::KEY)?;
    let doc = R::new_doc(svc, ctx, input)?;
    let (scope, name) = R::filing(&doc);
    let rec = Record::new(R::KIND, &new_id(), &scope, name.as_deref(), &doc);
    svc.store
        .insert(rec.clone())
        .map_err(|e| conflict(e, R::KEY))?;
    one_view::<R>(svc, StatusCode::CREATED, &rec)
}

/// `GET /v3/<collection>`.
fn list<R: Resource>(svc: &Service, req: &Request, ctx: &Ctx) -> Res {
    admin(ctx, &format!("list_{}", R::COLLECTION))?;
    let mut items = Vec::new();
    for r in svc.store.list(R::KIND, R::list_scope(req))? {
        if R::keep(req, &r, &r.parse()?) {
            items.push(R::view(svc, &r)?);
        }
    }
    Ok(collection(svc, R::COLLECTION, R::COLLECTION, items))
}

/// `GET/HEAD/PATCH/DELETE /v3/<collection>/<id>`.
fn one<R: Resource>(svc: &Service, req: &Request, ctx: &Ctx, id: &str, m: Method) -> Res {
    let rec = svc.store.get(R::KIND, id)?;
    match m {
        Method::GET | Method::HEAD => {
            R::may_read(ctx, id)?;
            let rec = rec.ok_or_else(|| not_found(R::KEY, id))?;
            one_view::<R>(svc, StatusCode::OK, &rec)
        }
        Method::PATCH => {
            admin(ctx, &format!("update_{}", R::KEY))?;
            let rec = rec.ok_or_else(|| not_found(R::KEY, id))?;
            let input: R::In = wrapped(req, R::KEY)?;
            let mut doc: R::Doc = rec.parse()?;
            let revoke = R::patch(&mut doc, input)?;
            let (scope, name) = R::filing(&doc);
            let mut next = rec.with_doc(name.as_deref(), &doc);
            next.scope = scope;
            svc.store
                .update(next.clone())
                .map_err(|e| conflict(e, R::KEY))?;
            if revoke {
                svc.revoke_user(id)?;
            }
            one_view::<R>(svc, StatusCode::OK, &next)
        }
        Method::DELETE => {
            admin(ctx, &format!("delete_{}", R::KEY))?;
            let rec = rec.ok_or_else(|| not_found(R::KEY, id))?;
            let mut writes = vec![Write::Delete(R::KIND, id.into())];
            writes.extend(R::on_delete(svc, &rec, &rec.parse()?)?);
            svc.store.apply(&writes).map_err(|e| conflict(e, R::KEY))?;
            R::after_delete(svc, id)?;
            Ok(empty(StatusCode::NO_CONTENT))
        }
        _ => Err(method_not_allowed()),
    }
}

/// A required property of a body.
fn required(v: Option<String>, key: &str) -> Result<String, ServiceError> {
    v.ok_or_else(|| ApiError::bad_request(format!("'{key}' is a required property")).into())
}

/// A required, checked name.
fn required_name(v: Option<String>) -> Result<String, ServiceError> {
    let name = required(v, "name")?;
    check_name(&name)?;
    Ok(name)
}

fn domain_exists(svc: &Service, domain_id: &str) -> Result<(), ServiceError> {
    if svc.store.get(Kind::Domain, domain_id)?.is_none() {
        return Err(ApiError::bad_request(format!("domain {domain_id} does not exist")).into());
    }
    Ok(())
}

/// A required, checked name, and an existing domain (the caller's when none is given).
fn name_in_domain(
    svc: &Service,
    ctx: &Ctx,
    name: Option<String>,
    domain_id: Option<String>,
) -> Result<(String, String), ServiceError> {
    let name = required_name(name)?;
    let domain_id = domain_id.unwrap_or_else(|| ctx.user_domain_id.clone());
    domain_exists(svc, &domain_id)?;
    Ok((name, domain_id))
}

/// Sets `field` from `value` when the body has it.
fn set<T>(field: &mut T, value: Option<T>) {
    if let Some(v) = value {
        *field = v;
    }
}

/// Sets a name from the body, checked.
fn set_name(field: &mut String, value: Option<String>) -> Result<(), ServiceError> {
    if let Some(n) = value {
        check_name(&n)?;
        *field = n;
    }
    Ok(())
}

/// Sets a name and a description from the body; no tokens to revoke.
fn rename(
    name: &mut String,
    description: &mut String,
    new_name: Option<String>,
    new_description: Option<String>,
) -> Result<bool, ServiceError> {
    set_name(name, new_name)?;
    set(description, new_description);
    Ok(false)
}

/// Removals of the assignments matching `pred`, from `scope` (`None`: all).
fn assignments_where(
    svc: &Service,
    scope: Option<&str>,
    pred: impl Fn(&AssignmentDoc) -> bool,
) -> Result<Vec<Write>, ServiceError> {
    let mut out = Vec::new();
    for a in svc.store.list(Kind::Assignment, scope)? {
        if pred(&a.parse()?) {
            out.push(Write::Delete(Kind::Assignment, a.id));
        }
    }
    Ok(out)
}

// ---------------------------------------------------------------- domains

#[derive(Deserialize)]
struct DomainIn {
    name: Option<String>,
    description: Option<String>,
    enabled: Option<bool>,
    #[serde(default)]
    tags: Vec<String>,
    #[serde(flatten)]
    extra: Map<String, Value>,
}

fn domain_view(svc: &Service, r: &Record) -> Result<Value, ServiceError> {
    let d: DomainDoc = r.parse()?;
    Ok(merge(
        json!({"id": r.id, "name": d.name, "description": d.description, "enabled": d.enabled,
               "tags": [], "options": {}, "links": link(svc, &format!("domains/{}", r.id))}),
        &d.extra,
    ))
}

resource! {
    Domains: Kind::Domain, "domain", "domains", DomainDoc, DomainIn, domain_view,
    |d| (String::new(), Some(d.name.clone()));

    fn new_doc(_: &Service, _: &Ctx, d: DomainIn) -> Result<DomainDoc, ServiceError> {
        let _ = d.tags;
        let name = required_name(d.name)?;
        reserved_extra(&d.extra, &["id", "links"])?;
        Ok(DomainDoc {
            name,
            description: d.description.unwrap_or_default(),
            enabled: d.enabled.unwrap_or(true),
            extra: d.extra,
        })
    }
    fn patch(d: &mut DomainDoc, p: DomainIn) -> Result<bool, ServiceError> {
        reserved_extra(&p.extra, &["id", "links"])?;
        set_name(&mut d.name, p.name)?;
        set(&mut d.description, p.description);
        set(&mut d.enabled, p.enabled);
        d.extra.extend(p.extra);
        Ok(false)
    }
    fn may_read(ctx: &Ctx, id: &str) -> Result<(), ServiceError> {
        if !ctx.is_admin() && ctx.domain_id.as_deref() != Some(id) && ctx.user_domain_id != id {
            return Err(denied("get_domain"));
        }
        Ok(())
    }
    fn on_delete(svc: &Service, r: &Record, d: &DomainDoc) -> Result<Vec<Write>, ServiceError> {
        if d.enabled {
            return Err(ApiError::forbidden(
                "Cannot delete a domain that is enabled, please disable it first.",
            )
            .into());
        }
        for k in [Kind::Project, Kind::User, Kind::Group] {
            if !svc.store.list(k, Some(&r.id))?.is_empty() {
                return Err(ApiError::conflict(
                    "the domain still owns projects, users or groups; delete them first",
                )
                .into());
            }
        }
        assignments_where(svc, Some(&format!("domain:{}", r.id)), |_| true)
    }
}

// ---------------------------------------------------------------- projects

#[derive(Deserialize)]
struct ProjectIn {
    name: Option<String>,
    domain_id: Option<String>,
    description: Option<String>,
    enabled: Option<bool>,
    parent_id: Option<String>,
    is_domain: Option<bool>,
    tags: Option<Vec<String>>,
    options: Option<Value>,
    #[serde(flatten)]
    extra: Map<String, Value>,
}

fn project_view(svc: &Service, r: &Record) -> Result<Value, ServiceError> {
    let p: ProjectDoc = r.parse()?;
    Ok(merge(
        json!({"id": r.id, "name": p.name, "domain_id": p.domain_id, "description": p.description,
               "enabled": p.enabled, "parent_id": p.parent_id, "is_domain": false, "tags": p.tags,
               "options": {}, "links": link(svc, &format!("projects/{}", r.id))}),
        &p.extra,
    ))
}

resource! {
    Projects: Kind::Project, "project", "projects", ProjectDoc, ProjectIn, project_view,
    |d| (d.domain_id.clone(), Some(d.name.clone()));

    fn new_doc(svc: &Service, ctx: &Ctx, p: ProjectIn) -> Result<ProjectDoc, ServiceError> {
        let _ = p.options;
        if p.is_domain == Some(true) {
            return Err(
                ApiError::bad_request("projects acting as domains are not supported").into(),
            );
        }
        reserved_extra(&p.extra, &["id", "links"])?;
        let name = required_name(p.name)?;
        let mut domain_id = p.domain_id.unwrap_or_else(|| ctx.user_domain_id.clone());
        let mut parent_id = domain_id.clone();
        if let Some(parent) = p.parent_id.filter(|x| *x != domain_id) {
            let pr = svc.store.get(Kind::Project, &parent)?.ok_or_else(|| {
                ApiError::bad_request(format!("parent project {parent} does not exist"))
            })?;
            domain_id = pr.scope.clone();
            parent_id = parent;
        }
        domain_exists(svc, &domain_id)?;
        Ok(ProjectDoc {
            name,
            domain_id,
            description: p.description.unwrap_or_default(),
            enabled: p.enabled.unwrap_or(true),
            parent_id,
            tags: p.tags.unwrap_or_default(),
            extra: p.extra,
        })
    }
    fn patch(d: &mut ProjectDoc, p: ProjectIn) -> Result<bool, ServiceError> {
        reserved_extra(&p.extra, &["id", "links"])?;
        if p.domain_id.as_ref().is_some_and(|x| *x != d.domain_id) {
            return Err(ApiError::bad_request("a project cannot move to another domain").into());
        }
        set_name(&mut d.name, p.name)?;
        set(&mut d.description, p.description);
        set(&mut d.enabled, p.enabled);
        set(&mut d.tags, p.tags);
        d.extra.extend(p.extra);
        Ok(false)
    }
    fn may_read(ctx: &Ctx, id: &str) -> Result<(), ServiceError> {
        // Others see their own project; cloud admins any.
        if !ctx.is_admin() && ctx.project_id.as_deref() != Some(id) {
            return Err(denied("get_project"));
        }
        Ok(())
    }
    fn list_scope(req: &Request) -> Option<&str> {
        req.q("domain_id")
    }
    fn keep(req: &Request, _: &Record, p: &ProjectDoc) -> bool {
        req.q("name").is_none_or(|n| p.name == n)
            && req.q("parent_id").is_none_or(|x| p.parent_id == x)
            && bool_filter(req, "enabled").is_none_or(|e| p.enabled == e)
    }
    fn on_delete(svc: &Service, r: &Record, _: &ProjectDoc) -> Result<Vec<Write>, ServiceError> {
        // As Keystone: the project's role assignments, limits and trusts go with it.
        let mut writes = assignments_where(svc, Some(&format!("project:{}", r.id)), |_| true)?;
        writes.extend(limit::of_project(svc, &r.id)?);
        writes.extend(trust::of_project(svc, &r.id)?);
        Ok(writes)
    }
}

fn user_projects(svc: &Service, uid: &str) -> Result<Vec<Value>, ServiceError> {
    let mut out = Vec::new();
    for r in svc.store.list(Kind::Project, None)? {
        if !svc.effective_roles(uid, "project", &r.id)?.is_empty() {
            out.push(project_view(svc, &r)?);
        }
    }
    Ok(out)
}

// ---------------------------------------------------------------- users

#[derive(Deserialize)]
struct UserIn {
    name: Option<String>,
    domain_id: Option<String>,
    enabled: Option<bool>,
    password: Option<String>,
    default_project_id: Option<String>,
    description: Option<String>,
    options: Option<Value>,
    #[serde(flatten)]
    extra: Map<String, Value>,
}

fn user_view(svc: &Service, r: &Record) -> Result<Value, ServiceError> {
    let u: UserDoc = r.parse()?;
    let mut v = json!({"id": r.id, "name": u.name, "domain_id": u.domain_id, "enabled": u.enabled,
        "password_expires_at": null, "options": {}, "links": link(svc, &format!("users/{}", r.id))});
    if let Some(p) = &u.default_project_id {
        v["default_project_id"] = json!(p);
    }
    if !u.description.is_empty() {
        v["description"] = json!(u.description);
    }
    Ok(merge(v, &u.extra))
}

resource! {
    Users: Kind::User, "user", "users", UserDoc, UserIn, user_view,
    |d| (d.domain_id.clone(), Some(d.name.clone()));

    fn new_doc(svc: &Service, ctx: &Ctx, u: UserIn) -> Result<UserDoc, ServiceError> {
        let _ = u.options;
        reserved_extra(&u.extra, &["id", "links", "password_hash"])?;
        let (name, domain_id) = name_in_domain(svc, ctx, u.name, u.domain_id)?;
        Ok(UserDoc {
            name,
            domain_id,
            enabled: u.enabled.unwrap_or(true),
            password_hash: u.password.as_deref().map(password::hash).transpose()?,
            default_project_id: u.default_project_id,
            description: u.description.unwrap_or_default(),
            extra: u.extra,
        })
    }
    fn patch(u: &mut UserDoc, p: UserIn) -> Result<bool, ServiceError> {
        reserved_extra(&p.extra, &["id", "links", "password_hash"])?;
        let mut revoke = false;
        set_name(&mut u.name, p.name)?;
        if let Some(e) = p.enabled {
            revoke |= !e && u.enabled;
            u.enabled = e;
        }
        if let Some(pw) = p.password {
            u.password_hash = Some(password::hash(&pw)?);
            revoke = true;
        }
        if let Some(dp) = p.default_project_id {
            u.default_project_id = Some(dp);
        }
        set(&mut u.description, p.description);
        u.extra.extend(p.extra);
        Ok(revoke)
    }
    fn may_read(ctx: &Ctx, id: &str) -> Result<(), ServiceError> {
        own_user(ctx, id, "get_user")
    }
    fn list_scope(req: &Request) -> Option<&str> {
        req.q("domain_id")
    }
    fn keep(req: &Request, _: &Record, u: &UserDoc) -> bool {
        req.q("name").is_none_or(|n| u.name == n)
            && bool_filter(req, "enabled").is_none_or(|e| u.enabled == e)
    }
    fn on_delete(svc: &Service, r: &Record, _: &UserDoc) -> Result<Vec<Write>, ServiceError> {
        let id = r.id.as_str();
        let mut writes =
            assignments_where(svc, None, |d| d.actor_type == "user" && d.actor_id == id)?;
        for m in svc.store.list(Kind::Membership, Some(id))? {
            writes.push(Write::Delete(Kind::Membership, m.id));
        }
        for k in [Kind::AppCredential, Kind::Credential, Kind::AccessRule] {
            for c in svc.store.list(k, Some(id))? {
                writes.push(Write::Delete(k, c.id));
            }
        }
        writes.extend(trust::of_user(svc, id)?);
        Ok(writes)
    }
    fn after_delete(svc: &Service, id: &str) -> Result<(), ServiceError> {
        svc.revoke_user(id)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PasswordChange {
    password: String,
    original_password: String,
}

fn change_password(svc: &Service, req: &Request, ctx: &Ctx, id: &str) -> Res {
    if ctx.user_id() != id {
        return Err(denied("change_password"));
    }
    let p: PasswordChange = wrapped(req, "user")?;
    let rec = svc
        .store
        .get(Kind::User, id)?
        .ok_or_else(|| not_found("user", id))?;
    let mut u: UserDoc = rec.parse()?;
    if !password::verify(&p.original_password, u.password_hash.as_deref()) {
        return Err(ApiError::unauthorized("The original password is not correct.").into());
    }
    u.password_hash = Some(password::hash(&p.password)?);
    svc.store
        .update(rec.with_doc(rec.name.as_deref(), &u))
        .map_err(|e| conflict(e, "user"))?;
    svc.revoke_user(id)?;
    Ok(empty(StatusCode::NO_CONTENT))
}

// ---------------------------------------------------------------- application credentials

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AppCredIn {
    name: String,
    description: Option<String>,
    secret: Option<String>,
    expires_at: Option<String>,
    roles: Option<Vec<RoleRefIn>>,
    #[serde(default)]
    unrestricted: bool,
    access_rules: Option<Vec<AccessRuleIn>>,
}

/// An access rule in a credential's body: an existing one of the user's by id, or a new
/// one (found again if the user has it already).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AccessRuleIn {
    id: Option<String>,
    service: Option<String>,
    method: Option<String>,
    path: Option<String>,
}

const RULE_METHODS: [&str; 6] = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"];

/// The ids of a new credential's access rules, and the writes making the new ones.
fn access_rules(
    svc: &Service,
    uid: &str,
    rules: Vec<AccessRuleIn>,
) -> Result<(Vec<String>, Vec<Write>), ServiceError> {
    let mut ids: Vec<String> = Vec::new();
    let mut writes = Vec::new();
    let mut made: Vec<(String, String)> = Vec::new();
    for r in rules {
        let id = match r {
            AccessRuleIn {
                id: Some(id),
                service: None,
                method: None,
                path: None,
            } => {
                svc.store
                    .get(Kind::AccessRule, &id)?
                    .filter(|rec| rec.scope == uid)
                    .ok_or_else(|| not_found("access rule", &id))?;
                id
            }
            AccessRuleIn {
                id: None,
                service: Some(service),
                method: Some(method),
                path: Some(path),
            } => {
                if !RULE_METHODS.contains(&method.as_str()) {
                    return Err(ApiError::bad_request(format!(
                        "access rule method {method:?} is not one of {RULE_METHODS:?}"
                    ))
                    .into());
                }
                if !path.starts_with('/') || path.len() > 255 {
                    return Err(ApiError::bad_request(format!(
                        "access rule path {path:?} must start with / and be at most 255 characters"
                    ))
                    .into());
                }
                if service.is_empty() || service.len() > 64 || service.contains(' ') {
                    return Err(ApiError::bad_request(format!(
                        "access rule service {service:?} is not a service type"
                    ))
                    .into());
                }
                let key = format!("{service} {method} {path}");
                if let Some(rec) = svc.store.get_by_name(Kind::AccessRule, uid, &key)? {
                    rec.id
                } else if let Some((_, id)) = made.iter().find(|(k, _)| *k == key) {
                    id.clone()
                } else {
                    let id = new_id();
                    let doc = crate::identity::AccessRuleDoc {
                        service,
                        method,
                        path,
                    };
                    writes.push(Write::Insert(Record::new(
                        Kind::AccessRule,
                        &id,
                        uid,
                        Some(&key),
                        &doc,
                    )));
                    made.push((key, id.clone()));
                    id
                }
            }
            _ => {
                return Err(ApiError::bad_request(
                    "an access rule is an id, or a service, a method and a path",
                )
                .into());
            }
        };
        if !ids.contains(&id) {
            ids.push(id);
        }
    }
    Ok((ids, writes))
}

fn access_rule_view(svc: &Service, r: &Record) -> Result<Value, ServiceError> {
    let d: crate::identity::AccessRuleDoc = r.parse()?;
    Ok(
        json!({"id": r.id, "service": d.service, "method": d.method, "path": d.path,
              "links": link(svc, &format!("users/{}/access_rules/{}", r.scope, r.id))}),
    )
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RoleRefIn {
    id: Option<String>,
    name: Option<String>,
}

fn app_cred_view(svc: &Service, r: &Record) -> Result<Value, ServiceError> {
    let d: AppCredDoc = r.parse()?;
    let roles: Vec<Value> = svc
        .expand_roles(d.roles.clone())?
        .into_iter()
        .filter(|(id, _)| d.roles.contains(id))
        .map(|(id, name)| json!({"id": id, "name": name, "domain_id": null}))
        .collect();
    Ok(
        json!({"id": r.id, "name": d.name, "description": d.description, "user_id": d.user_id,
        "project_id": d.project_id, "roles": roles, "unrestricted": d.unrestricted,
        "expires_at": d.expires_at.map(crate::time::keystone),
        "access_rules": svc.access_rules_view(&d.access_rules)?,
        "links": link(svc, &format!("users/{}/application_credentials/{}", d.user_id, r.id))}),
    )
}

fn create_app_cred(svc: &Service, req: &Request, ctx: &Ctx, uid: &str) -> Res {
    if uid != ctx.user_id() {
        return Err(denied("create_application_credential"));
    }
    if svc.restricted_app_cred(ctx)? {
        return Err(ApiError::forbidden(
            "A restricted application credential cannot create another (make it with --unrestricted).",
        )
        .into());
    }
    let project = ctx.project_id.clone().ok_or_else(|| {
        ApiError::bad_request("application credentials need a project-scoped token")
    })?;
    let a: AppCredIn = wrapped(req, "application_credential")?;
    check_name(&a.name)?;
    let (rule_ids, mut writes) = access_rules(svc, uid, a.access_rules.unwrap_or_default())?;
    let expires_at = a
        .expires_at
        .as_deref()
        .map(|t| {
            crate::time::parse(t).ok_or_else(|| {
                ApiError::bad_request(format!("expires_at {t:?} is not a timestamp"))
            })
        })
        .transpose()?;
    if expires_at.is_some_and(|e| e <= now_secs()) {
        return Err(ApiError::bad_request("expires_at is in the past").into());
    }
    let held: Vec<(String, String)> = ctx.roles.clone();
    let roles = match a.roles {
        // Keystone delegates every role the token carries when none are named.
        None => held.iter().map(|(id, _)| id.clone()).collect(),
        Some(list) if list.is_empty() => held.iter().map(|(id, _)| id.clone()).collect(),
        Some(list) => {
            let mut out = Vec::new();
            for r in list {
                let found = held.iter().find(|(id, name)| {
                    r.id.as_deref() == Some(id.as_str()) || r.name.as_deref() == Some(name.as_str())
                });
                match found {
                    Some((id, _)) => out.push(id.clone()),
                    None => {
                        return Err(ApiError::forbidden(
                            "the user does not hold a requested role on the project",
                        )
                        .into());
                    }
                }
            }
            out
        }
    };
    let secret = match a.secret {
        Some(s) if !s.is_empty() => s,
        _ => {
            let mut b = [0u8; 32];
            getrandom::fill(&mut b).map_err(|_| crate::identity::token::TokenError::Random)?;
            base64::Engine::encode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, b)
        }
    };
    let doc = AppCredDoc {
        name: a.name.clone(),
        description: a.description.unwrap_or_default(),
        user_id: uid.into(),
        project_id: project,
        secret_hash: password::hash(&secret)?,
        roles,
        expires_at,
        unrestricted: a.unrestricted,
        access_rules: rule_ids,
    };
    let id = new_id();
    let rec = Record::new(Kind::AppCredential, &id, uid, Some(&a.name), &doc);
    writes.push(Write::Insert(rec.clone()));
    svc.store
        .apply(&writes)
        .map_err(|e| conflict(e, "application credential"))?;
    let mut v = app_cred_view(svc, &rec)?;
    v["secret"] = json!(secret);
    Ok(json_resp(
        StatusCode::CREATED,
        &json!({"application_credential": v}),
    ))
}

// ---------------------------------------------------------------- roles

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RoleIn {
    name: Option<String>,
    description: Option<String>,
    domain_id: Option<Value>,
    options: Option<Value>,
}

fn role_view(svc: &Service, r: &Record) -> Result<Value, ServiceError> {
    let d: RoleDoc = r.parse()?;
    Ok(
        json!({"id": r.id, "name": d.name, "description": d.description, "domain_id": null,
              "options": {}, "links": link(svc, &format!("roles/{}", r.id))}),
    )
}

resource! {
    Roles: Kind::Role, "role", "roles", RoleDoc, RoleIn, role_view,
    |d| (String::new(), Some(d.name.clone()));

    fn new_doc(_: &Service, _: &Ctx, r: RoleIn) -> Result<RoleDoc, ServiceError> {
        let _ = r.options;
        if r.domain_id.is_some_and(|d| !d.is_null()) {
            return Err(ApiError::bad_request("domain-specific roles are not supported").into());
        }
        Ok(RoleDoc {
            name: required_name(r.name)?,
            description: r.description.unwrap_or_default(),
            implies: vec![],
        })
    }
    fn patch(d: &mut RoleDoc, p: RoleIn) -> Result<bool, ServiceError> {
        rename(&mut d.name, &mut d.description, p.name, p.description)
    }
    fn on_delete(svc: &Service, r: &Record, _: &RoleDoc) -> Result<Vec<Write>, ServiceError> {
        let id = r.id.as_str();
        let mut writes = assignments_where(svc, None, |d| d.role_id == id)?;
        for r in svc.store.list(Kind::Role, None)? {
            let mut d: RoleDoc = r.parse()?;
            if d.implies.iter().any(|x| x == id) {
                d.implies.retain(|x| x != id);
                writes.push(Write::Update(r.with_doc(r.name.as_deref(), &d)));
            }
        }
        Ok(writes)
    }
}

// ---------------------------------------------------------------- implied roles

/// A role as the implied-role API shows it: id, name and link.
fn role_ref(svc: &Service, id: &str, name: &str) -> Value {
    json!({"id": id, "name": name, "links": link(svc, &format!("roles/{id}"))})
}

/// A role by id and its document, or Keystone's 404.
fn role_doc(svc: &Service, id: &str) -> Result<(Record, RoleDoc), ServiceError> {
    let r = svc
        .store
        .get(Kind::Role, id)?
        .ok_or_else(|| not_found("role", id))?;
    let d = r.parse()?;
    Ok((r, d))
}

/// `GET /v3/role_inferences`: every rule, one entry per prior role with what it implies.
fn role_inferences(svc: &Service, ctx: &Ctx) -> Res {
    admin(ctx, "list_role_inference_rules")?;
    let roles: Vec<(String, RoleDoc)> = svc
        .store
        .list(Kind::Role, None)?
        .iter()
        .map(|r| Ok((r.id.clone(), r.parse()?)))
        .collect::<Result<_, ServiceError>>()?;
    let name = |id: &str| {
        roles
            .iter()
            .find(|(r, _)| r == id)
            .map(|(_, d)| d.name.as_str())
    };
    let mut items = Vec::new();
    for (id, d) in &roles {
        // A rule whose implied role is gone is not shown (deleting a role removes its
        // rules; this only guards against a half-applied older store).
        let implies: Vec<Value> = d
            .implies
            .iter()
            .filter_map(|i| name(i).map(|n| role_ref(svc, i, n)))
            .collect();
        if !implies.is_empty() {
            items.push(json!({"prior_role": role_ref(svc, id, &d.name), "implies": implies}));
        }
    }
    Ok(collection(svc, "role_inferences", "role_inferences", items))
}

/// `GET /v3/roles/{prior}/implies`: what one role implies.
fn implied_roles(svc: &Service, ctx: &Ctx, prior: &str) -> Res {
    admin(ctx, "list_implied_roles")?;
    let (_, d) = role_doc(svc, prior)?;
    let mut implies = Vec::new();
    for i in &d.implies {
        if let Some(r) = svc.store.get(Kind::Role, i)? {
            implies.push(role_ref(svc, i, &r.parse::<RoleDoc>()?.name));
        }
    }
    Ok(json_resp(
        StatusCode::OK,
        &json!({"role_inference": {"prior_role": role_ref(svc, prior, &d.name),
                                   "implies": implies},
                "links": link(svc, &format!("roles/{prior}/implies"))}),
    ))
}

/// `PUT`, `GET`, `HEAD` and `DELETE /v3/roles/{prior}/implies/{implied}`: one rule.
/// Keystone refuses to make `admin` an implied role (its `prohibited_implied_role`).
fn implied_role(svc: &Service, ctx: &Ctx, prior: &str, implied: &str, m: Method) -> Res {
    let action = match m {
        Method::PUT => "create_implied_role",
        Method::GET => "get_implied_role",
        Method::HEAD => "check_implied_role",
        Method::DELETE => "delete_implied_role",
        _ => return Err(method_not_allowed()),
    };
    admin(ctx, action)?;
    let (rec, mut d) = role_doc(svc, prior)?;
    let (_, imp) = role_doc(svc, implied)?;
    let absent = || -> ServiceError {
        ApiError::not_found(format!("{prior} does not imply {implied}.")).into()
    };
    let has = d.implies.iter().any(|x| x == implied);
    match m {
        Method::PUT => {
            if imp.name == "admin" {
                return Err(
                    ApiError::forbidden(format!("{implied} cannot be an implied roles.")).into(),
                );
            }
            if has {
                return Err(ApiError::conflict(
                    "Conflict occurred attempting to store implied_role - Duplicate entry.",
                )
                .into());
            }
            d.implies.push(implied.to_string());
            svc.store
                .update(rec.with_doc(rec.name.as_deref(), &d))
                .map_err(|e| conflict(e, "implied_role"))?;
        }
        Method::DELETE => {
            if !has {
                return Err(absent());
            }
            d.implies.retain(|x| x != implied);
            svc.store
                .update(rec.with_doc(rec.name.as_deref(), &d))
                .map_err(|e| conflict(e, "implied_role"))?;
            return Ok(empty(StatusCode::NO_CONTENT));
        }
        _ if !has => return Err(absent()),
        Method::HEAD => return Ok(empty(StatusCode::NO_CONTENT)),
        _ => {}
    }
    let status = if m == Method::PUT {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok(json_resp(
        status,
        &json!({"role_inference": {"prior_role": role_ref(svc, prior, &d.name),
                                   "implies": role_ref(svc, implied, &imp.name)},
                "links": link(svc, &format!("roles/{prior}/implies/{implied}"))}),
    ))
}

// ---------------------------------------------------------------- groups

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GroupIn {
    name: Option<String>,
    domain_id: Option<String>,
    description: Option<String>,
}

fn group_view(svc: &Service, r: &Record) -> Result<Value, ServiceError> {
    let d: GroupDoc = r.parse()?;
    Ok(
        json!({"id": r.id, "name": d.name, "domain_id": d.domain_id, "description": d.description,
              "links": link(svc, &format!("groups/{}", r.id))}),
    )
}

resource! {
    Groups: Kind::Group, "group", "groups", GroupDoc, GroupIn, group_view,
    |d| (d.domain_id.clone(), Some(d.name.clone()));

    fn new_doc(svc: &Service, ctx: &Ctx, g: GroupIn) -> Result<GroupDoc, ServiceError> {
        let (name, domain_id) = name_in_domain(svc, ctx, g.name, g.domain_id)?;
        Ok(GroupDoc {
            name,
            domain_id,
            description: g.description.unwrap_or_default(),
        })
    }
    fn patch(d: &mut GroupDoc, p: GroupIn) -> Result<bool, ServiceError> {
        rename(&mut d.name, &mut d.description, p.name, p.description)
    }
    fn on_delete(svc: &Service, r: &Record, _: &GroupDoc) -> Result<Vec<Write>, ServiceError> {
        let id = r.id.as_str();
        let mut writes =
            assignments_where(svc, None, |d| d.actor_type == "group" && d.actor_id == id)?;
        for m in svc.store.list(Kind::Membership, None)? {
            if m.parse::<MembershipDoc>()?.group_id == id {
                writes.push(Write::Delete(Kind::Membership, m.id));
            }
        }
        Ok(writes)
    }
}

fn membership(svc: &Service, ctx: &Ctx, gid: &str, uid: &str, m: Method) -> Res {
    svc.store
        .get(Kind::Group, gid)?
        .ok_or_else(|| not_found("group", gid))?;
    svc.store
        .get(Kind::User, uid)?
        .ok_or_else(|| not_found("user", uid))?;
    let id = format!("{gid}:{uid}");
    let exists = svc.store.get(Kind::Membership, &id)?.is_some();
    match m {
        Method::HEAD | Method::GET => {
            admin(ctx, "check_user_in_group")?;
            if exists {
                Ok(empty(StatusCode::NO_CONTENT))
            } else {
                Err(not_found("membership", &id))
            }
        }
        Method::PUT => {
            admin(ctx, "add_user_to_group")?;
            if !exists {
                let doc = MembershipDoc {
                    group_id: gid.into(),
                    user_id: uid.into(),
                };
                match svc
                    .store
                    .insert(Record::new(Kind::Membership, &id, uid, None, &doc))
                {
                    Ok(()) | Err(StoreError::Conflict { .. }) => {}
                    Err(e) => return Err(e.into()),
                }
            }
            Ok(empty(StatusCode::NO_CONTENT))
        }
        Method::DELETE => {
            admin(ctx, "remove_user_from_group")?;
            if !exists {
                return Err(not_found("membership", &id));
            }
            svc.store.delete(Kind::Membership, &id)?;
            svc.revoke_user(uid)?;
            Ok(empty(StatusCode::NO_CONTENT))
        }
        _ => Err(method_not_allowed()),
    }
}

// ---------------------------------------------------------------- assignments

fn singular(plural: &str) -> &'static str {
    match plural {
        "projects" => "project",
        "domains" => "domain",
        "users" => "user",
        "system" => "system",
        _ => "group",
    }
}

fn check_exists(svc: &Service, kind_plural: &str, id: &str) -> Result<(), ServiceError> {
    if kind_plural == "system" {
        return Ok(());
    }
    let kind = match kind_plural {
        "projects" => Kind::Project,
        "domains" => Kind::Domain,
        "users" => Kind::User,
        "groups" => Kind::Group,
        _ => Kind::Role,
    };
    svc.store
        .get(kind, id)?
        .ok_or_else(|| not_found(singular(kind_plural), id))?;
    Ok(())
}

fn list_target_roles(svc: &Service, ctx: &Ctx, t: &str, tid: &str, a: &str, aid: &str) -> Res {
    let own = t == "projects" && ctx.project_id.as_deref() == Some(tid);
    if !(ctx.is_admin() || own) {
        return Err(denied("list_grants"));
    }
    check_exists(svc, t, tid)?;
    check_exists(svc, a, aid)?;
    let mut items = Vec::new();
    for r in svc
        .store
        .list(Kind::Assignment, Some(&format!("{}:{tid}", singular(t))))?
    {
        let d: AssignmentDoc = r.parse()?;
        if d.actor_type == singular(a)
            && d.actor_id == aid
            && let Some(role) = svc.store.get(Kind::Role, &d.role_id)?
        {
            items.push(role_view(svc, &role)?);
        }
    }
    Ok(collection(
        svc,
        "roles",
        &format!("{t}/{tid}/{a}/{aid}/roles"),
        items,
    ))
}

#[allow(clippy::too_many_arguments)]
fn grant(
    svc: &Service,
    ctx: &Ctx,
    t: &str,
    tid: &str,
    a: &str,
    aid: &str,
    rid: &str,
    m: Method,
) -> Res {
    admin(ctx, "create_grant")?;
    check_exists(svc, t, tid)?;
    check_exists(svc, a, aid)?;
    check_exists(svc, "roles", rid)?;
    let (tt, at) = (singular(t), singular(a));
    let id = format!("{at}:{aid}:{tt}:{tid}:{rid}");
    let exists = svc.store.get(Kind::Assignment, &id)?.is_some();
    match m {
        Method::PUT => {
            if !exists {
                let doc = AssignmentDoc {
                    actor_type: at.into(),
                    actor_id: aid.into(),
                    target_type: tt.into(),
                    target_id: tid.into(),
                    role_id: rid.into(),
                };
                match svc.store.insert(Record::new(
                    Kind::Assignment,
                    &id,
                    &format!("{tt}:{tid}"),
                    None,
                    &doc,
                )) {
                    Ok(()) | Err(StoreError::Conflict { .. }) => {}
                    Err(e) => return Err(e.into()),
                }
            }
            Ok(empty(StatusCode::NO_CONTENT))
        }
        Method::HEAD | Method::GET => {
            if exists {
                Ok(empty(StatusCode::NO_CONTENT))
            } else {
                Err(not_found("role assignment", &id))
            }
        }
        Method::DELETE => {
            if !exists {
                return Err(not_found("role assignment", &id));
            }
            svc.store.delete(Kind::Assignment, &id)?;
            if at == "user" {
                svc.revoke_user(aid)?;
            }
            Ok(empty(StatusCode::NO_CONTENT))
        }
        _ => Err(method_not_allowed()),
    }
}

fn role_assignments(svc: &Service, req: &Request, ctx: &Ctx) -> Res {
    let project_filter = req.q("scope.project.id");
    let own_project = project_filter.is_some() && project_filter == ctx.project_id.as_deref();
    if !ctx.is_admin() && !own_project && req.q("user.id") != Some(ctx.user_id()) {
        return Err(denied("list_role_assignments"));
    }
    let effective = req.q("effective").is_some();
    let names = bool_filter(req, "include_names").unwrap_or(false);
    let mut rows: Vec<AssignmentDoc> = Vec::new();
    for r in svc.store.list(Kind::Assignment, None)? {
        let d: AssignmentDoc = r.parse()?;
        if effective && d.actor_type == "group" {
            for m in svc.store.list(Kind::Membership, None)? {
                let m: MembershipDoc = m.parse()?;
                if m.group_id == d.actor_id {
                    rows.push(AssignmentDoc {
                        actor_type: "user".into(),
                        actor_id: m.user_id,
                        ..d.clone()
                    });
                }
            }
        } else {
            rows.push(d);
        }
    }
    let roles: Vec<(String, RoleDoc)> = svc
        .store
        .list(Kind::Role, None)?
        .iter()
        .map(|r| Ok((r.id.clone(), r.parse::<RoleDoc>()?)))
        .collect::<Result<_, ServiceError>>()?;
    if effective {
        // Add implied roles as their own rows.
        let mut i = 0;
        while i < rows.len() {
            let d = rows[i].clone();
            if let Some((_, role)) = roles.iter().find(|(id, _)| *id == d.role_id) {
                for imp in &role.implies {
                    let exists = rows.iter().any(|x| {
                        x.role_id == *imp
                            && x.actor_id == d.actor_id
                            && x.target_id == d.target_id
                            && x.actor_type == d.actor_type
                    });
                    if !exists {
                        rows.push(AssignmentDoc {
                            role_id: imp.clone(),
                            ..d.clone()
                        });
                    }
                }
            }
            i += 1;
        }
    }
    let mut items = Vec::new();
    for d in rows {
        let keep = req
            .q("user.id")
            .is_none_or(|u| d.actor_type == "user" && d.actor_id == u)
            && req
                .q("group.id")
                .is_none_or(|g| d.actor_type == "group" && d.actor_id == g)
            && req.q("role.id").is_none_or(|r| d.role_id == r)
            && project_filter.is_none_or(|p| d.target_type == "project" && d.target_id == p)
            && req
                .q("scope.domain.id")
                .is_none_or(|p| d.target_type == "domain" && d.target_id == p)
            && req
                .q("scope.system")
                .is_none_or(|p| d.target_type == "system" && d.target_id == p);
        if !keep {
            continue;
        }
        let named = |kind: Kind, id: &str| -> Result<Value, ServiceError> {
            let mut v = json!({"id": id});
            if names && let Some(r) = svc.store.get(kind, id)? {
                v["name"] = json!(r.name);
                if matches!(kind, Kind::User | Kind::Group | Kind::Project) {
                    let dname = svc.store.get(Kind::Domain, &r.scope)?.and_then(|d| d.name);
                    v["domain"] = json!({"id": r.scope, "name": dname});
                }
            }
            Ok(v)
        };
        let target = if d.target_type == "system" {
            "system".to_string()
        } else {
            format!("{}s/{}", d.target_type, d.target_id)
        };
        let mut v = json!({
            "role": named(Kind::Role, &d.role_id)?,
            "links": {"assignment": format!("{}/v3/{target}/{}s/{}/roles/{}", svc.config.public_url, d.actor_type, d.actor_id, d.role_id)},
        });
        let (akind, tkind) = (
            if d.actor_type == "user" {
                Kind::User
            } else {
                Kind::Group
            },
            if d.target_type == "project" {
                Kind::Project
            } else {
                Kind::Domain
            },
        );
        v[d.actor_type.as_str()] = named(akind, &d.actor_id)?;
        v["scope"] = if d.target_type == "system" {
            json!({"system": {"all": true}})
        } else {
            json!({ d.target_type.clone(): named(tkind, &d.target_id)? })
        };
        items.push(v);
    }
    Ok(collection(
        svc,
        "role_assignments",
        "role_assignments",
        items,
    ))
}

// ---------------------------------------------------------------- catalog

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ServiceIn {
    #[serde(rename = "type")]
    kind: Option<String>,
    name: Option<String>,
    description: Option<String>,
    enabled: Option<bool>,
}

fn service_view(svc: &Service, r: &Record) -> Result<Value, ServiceError> {
    let d: ServiceDoc = r.parse()?;
    Ok(
        json!({"id": r.id, "type": d.kind, "name": d.name, "description": d.description,
              "enabled": d.enabled, "links": link(svc, &format!("services/{}", r.id))}),
    )
}

resource! {
    Services: Kind::Service, "service", "services", ServiceDoc, ServiceIn, service_view,
    |d| (String::new(), (!d.name.is_empty()).then(|| d.name.clone()));

    fn new_doc(_: &Service, _: &Ctx, s: ServiceIn) -> Result<ServiceDoc, ServiceError> {
        let kind = required(s.kind, "type")?;
        check_name(&kind)?;
        Ok(ServiceDoc {
            kind,
            name: s.name.unwrap_or_default(),
            description: s.description.unwrap_or_default(),
            enabled: s.enabled.unwrap_or(true),
        })
    }
    fn patch(d: &mut ServiceDoc, p: ServiceIn) -> Result<bool, ServiceError> {
        set(&mut d.kind, p.kind);
        set(&mut d.name, p.name);
        set(&mut d.description, p.description);
        set(&mut d.enabled, p.enabled);
        Ok(false)
    }
    fn keep(req: &Request, _: &Record, d: &ServiceDoc) -> bool {
        req.q("type").is_none_or(|t| d.kind == t) && req.q("name").is_none_or(|n| d.name == n)
    }
    fn on_delete(svc: &Service, r: &Record, _: &ServiceDoc) -> Result<Vec<Write>, ServiceError> {
        Ok(svc
            .store
            .list(Kind::Endpoint, Some(&r.id))?
            .into_iter()
            .map(|e| Write::Delete(Kind::Endpoint, e.id))
            .collect())
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EndpointIn {
    service_id: Option<String>,
    interface: Option<String>,
    url: Option<String>,
    region_id: Option<String>,
    region: Option<String>,
    enabled: Option<bool>,
}

fn endpoint_view(svc: &Service, r: &Record) -> Result<Value, ServiceError> {
    let d: EndpointDoc = r.parse()?;
    Ok(
        json!({"id": r.id, "service_id": d.service_id, "interface": d.interface, "url": d.url,
              "region_id": d.region_id, "region": d.region_id, "enabled": d.enabled,
              "links": link(svc, &format!("endpoints/{}", r.id))}),
    )
}

fn check_interface(i: &str) -> Result<(), ServiceError> {
    if matches!(i, "public" | "internal" | "admin") {
        Ok(())
    } else {
        Err(ApiError::bad_request(format!(
            "interface {i:?} is not one of public, internal, admin"
        ))
        .into())
    }
}

resource! {
    Endpoints: Kind::Endpoint, "endpoint", "endpoints", EndpointDoc, EndpointIn, endpoint_view,
    |d| (d.service_id.clone(), None);

    fn new_doc(svc: &Service, _: &Ctx, e: EndpointIn) -> Result<EndpointDoc, ServiceError> {
        let service_id = required(e.service_id, "service_id")?;
        let interface = required(e.interface, "interface")?;
        let url = required(e.url, "url")?;
        check_interface(&interface)?;
        if svc.store.get(Kind::Service, &service_id)?.is_none() {
            return Err(
                ApiError::bad_request(format!("service {service_id} does not exist")).into(),
            );
        }
        let region = e.region_id.or(e.region);
        if let Some(r) = &region
            && svc.store.get(Kind::Region, r)?.is_none()
        {
            let doc = RegionDoc {
                description: String::new(),
                parent_region_id: None,
            };
            match svc
                .store
                .insert(Record::new(Kind::Region, r, "", None, &doc))
            {
                Ok(()) | Err(StoreError::Conflict { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(EndpointDoc {
            service_id,
            interface,
            url,
            region_id: region,
            enabled: e.enabled.unwrap_or(true),
        })
    }
    fn patch(d: &mut EndpointDoc, p: EndpointIn) -> Result<bool, ServiceError> {
        if let Some(i) = p.interface {
            check_interface(&i)?;
            d.interface = i;
        }
        set(&mut d.url, p.url);
        if let Some(r) = p.region_id.or(p.region) {
            d.region_id = Some(r);
        }
        set(&mut d.enabled, p.enabled);
        set(&mut d.service_id, p.service_id);
        Ok(false)
    }
    fn keep(req: &Request, _: &Record, d: &EndpointDoc) -> bool {
        req.q("service_id").is_none_or(|s| d.service_id == s)
            && req.q("interface").is_none_or(|i| d.interface == i)
            && req
                .q("region_id")
                .is_none_or(|x| d.region_id.as_deref() == Some(x))
    }
}

fn region_view(svc: &Service, r: &Record) -> Result<Value, ServiceError> {
    let d: RegionDoc = r.parse()?;
    Ok(
        json!({"id": r.id, "description": d.description, "parent_region_id": d.parent_region_id,
              "links": link(svc, &format!("regions/{}", r.id))}),
    )
}
