//! The Swift API v1: TempAuth (`/auth/v1.0`), `/info`, accounts, containers and objects,
//! listings in JSON/XML/plain text, metadata, ranges, conditional requests, expiry, and
//! large objects (static manifests, `?multipart-manifest=put`, and dynamic
//! `X-Object-Manifest` prefixes).

pub mod acl;
pub mod path;

use std::collections::BTreeMap;
use std::fmt::Write as _;

use http::{Method, StatusCode};
use md5::{Digest, Md5};
use serde::{Deserialize, Serialize};

use super::body::{Part, Source, pieces, stream_parts, stream_pieces};
use super::http::{Condition, evaluate, http_date, parse_ranges, swift_listing_date};
use super::{ApiError, Request, Response, State, header, query_pairs, response, set_header};
use crate::store::{Blob, Entry, Kind, ListQuery, ObjectRecord, now_ms};
use acl::{Acl, Requester};
use path::Target;

/// Most entries in one listing (Swift's `container_listing_limit`).
pub const LISTING_LIMIT: usize = 10_000;
/// Most segments in a static large object manifest.
pub const MAX_MANIFEST_SEGMENTS: usize = 1000;
/// Largest manifest body accepted, in bytes.
pub const MAX_MANIFEST_SIZE: usize = 8 * 1024 * 1024;
/// Most metadata headers on one item.
pub const MAX_META_COUNT: usize = 90;
/// Longest metadata value.
pub const MAX_META_VALUE_LENGTH: usize = 256;

fn not_found() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "NotFound",
        "The resource could not be found.",
    )
}

fn status_only(status: StatusCode) -> Response {
    response(status, "")
}

/// Handles one Swift request (including `/auth/v1.0` and `/info`).
pub async fn handle(state: &State, req: Request) -> Result<Response, ApiError> {
    let path = req.uri().path().to_owned();
    if path == "/info" {
        return Ok(info(state));
    }
    if path.starts_with("/auth/") {
        return tempauth(state, &req);
    }
    let target = path::parse(&path).map_err(|e| match e {
        path::PathError::TooLong { .. } => ApiError::bad_request("InvalidURI", e.to_string()),
        e => ApiError::new(StatusCode::PRECONDITION_FAILED, "InvalidURI", e.to_string()),
    })?;
    let token =
        header(req.headers(), "x-auth-token").or_else(|| header(req.headers(), "x-storage-token"));
    // The requester: the storage account its token owns and the groups ACLs may name.
    let mut identity = token
        .and_then(|t| state.auth.user_for_token(t))
        .map(|(account, user)| {
            let groups = acl::tempauth_groups(&account, &user);
            (account, groups)
        });
    let mut read_only = false;
    if identity.is_none()
        && let (Some(t), Some(ks)) = (token, &state.keystone)
    {
        let grant = ks
            .account_for_token(t)
            .await
            .map_err(|e| {
                tracing::warn!(error = %e, source = ?std::error::Error::source(&e), "keystone validation failed");
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "ServiceUnavailable",
                    "The token could not be validated: the identity service is unavailable.",
                )
            })?;
        // An application credential with access rules makes only the requests they list.
        if let Some(g) = &grant
            && !g.permits(req.method().as_str(), &path)
        {
            return Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "Unauthorized",
                "The access rules of the token's application credential do not permit this request.",
            ));
        }
        identity = grant.map(|grant| {
            // A reader of the project may look at its account, not change it.
            if grant.read_only && !matches!(*req.method(), Method::GET | Method::HEAD) {
                read_only = true;
            }
            let groups = acl::keystone_groups(&grant.account);
            (grant.account, groups)
        });
    }
    let account = match &target {
        Target::Account { account } => account,
        Target::Container { account, .. } => account,
        Target::Object { account, .. } => account,
    };
    // Anyone but the owner goes through the container's ACLs (a missing or invalid token
    // makes an anonymous request, which only referrer grants can let in).
    let who = match identity {
        Some((owner, _)) if owner == *account && read_only => {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "Forbidden",
                "The token has neither the member nor the admin role on the project: it may read, not change.",
            ));
        }
        Some((owner, _)) if owner == *account => None,
        other => {
            let who = Requester {
                groups: other.map(|(_, g)| g).unwrap_or_default(),
                referer: header(req.headers(), "referer").map(str::to_owned),
            };
            authorize(state, &req, &target, &who).await?;
            Some(who)
        }
    };
    let who = who.as_ref();
    match target {
        Target::Account { account } => account_req(state, req, &account).await,
        Target::Container { account, container } => {
            container_req(state, req, &account, &container, who).await
        }
        Target::Object {
            account,
            container,
            object,
        } => object_req(state, req, &account, &container, &object, who).await,
    }
}

/// The refusal for a requester without access: 401 when anonymous (a token may help),
/// 403 otherwise.
fn denied(who: &Requester) -> ApiError {
    if who.authenticated() {
        ApiError::new(
            StatusCode::FORBIDDEN,
            "Forbidden",
            "Access was denied to this resource.",
        )
    } else {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "Unauthorized",
            "This server could not verify that you are authorized to access the document you requested.",
        )
    }
}

/// Whether `who` (`None`: the owner) may read (or, with `write`, write) objects in
/// `account/container`. A missing container grants a non-owner nothing.
async fn may_access(
    state: &State,
    account: &str,
    container: &str,
    who: Option<&Requester>,
    write: bool,
) -> Result<bool, ApiError> {
    let Some(who) = who else {
        return Ok(true);
    };
    let Some(meta) = state.store.container_meta(account, container).await? else {
        return Ok(false);
    };
    Ok(if write {
        Acl::stored(meta.get("x-container-write"), true).names_any(&who.groups)
    } else {
        Acl::stored(meta.get("x-container-read"), false).may_read(who)
    })
}

/// A versioned container's archive container and whether it keeps history
/// (`X-History-Location`) rather than a stack (`X-Versions-Location`).
fn versioning(meta: &BTreeMap<String, String>) -> Option<(String, bool)> {
    let get = |k: &str| {
        meta.get(k)
            .filter(|v| !v.is_empty())
            .and_then(|v| path::percent_decode(v.trim()).ok())
    };
    get("x-history-location")
        .map(|a| (a, true))
        .or_else(|| get("x-versions-location").map(|a| (a, false)))
}

/// The archive a write into `account/container` must move the replaced content to, if the
/// container is versioned; a non-owner must be granted writes there too (and, with
/// `restore`, reads: a stack delete brings a version back).
async fn archive_for(
    state: &State,
    account: &str,
    container: &str,
    who: Option<&Requester>,
    restore: bool,
) -> Result<Option<(String, bool)>, ApiError> {
    let meta = state
        .store
        .container_meta(account, container)
        .await?
        .ok_or_else(not_found)?;
    let Some((archive, history)) = versioning(&meta) else {
        return Ok(None);
    };
    if let Some(w) = who
        && (!may_access(state, account, &archive, who, true).await?
            || (restore && !history && !may_access(state, account, &archive, who, false).await?))
    {
        return Err(denied(w));
    }
    Ok(Some((archive, history)))
}

/// Checks a non-owner's request against the target container's ACLs: reads and listings
/// by `X-Container-Read`, object writes and deletes by `X-Container-Write`; the account
/// itself and container changes stay the owner's. (Copies and large-object segments in
/// other containers are checked where they are read.)
async fn authorize(
    state: &State,
    req: &Request,
    target: &Target,
    who: &Requester,
) -> Result<(), ApiError> {
    let (account, container, object) = match target {
        Target::Account { .. } => return Err(denied(who)),
        Target::Container { account, container } => (account, container, false),
        Target::Object {
            account, container, ..
        } => (account, container, true),
    };
    let Some(meta) = state.store.container_meta(account, container).await? else {
        return Err(denied(who));
    };
    let read = Acl::stored(meta.get("x-container-read"), false);
    let write = Acl::stored(meta.get("x-container-write"), true);
    let m = req.method();
    let ok = match (object, m) {
        (false, &Method::GET | &Method::HEAD) => read.may_list(who),
        (true, &Method::GET | &Method::HEAD) => read.may_read(who),
        // COPY reads its target; the destination's write ACL is checked with it.
        (true, m) if m.as_str() == "COPY" => read.may_read(who),
        (true, &Method::PUT | &Method::POST | &Method::DELETE) => write.names_any(&who.groups),
        _ => false,
    };
    if ok { Ok(()) } else { Err(denied(who)) }
}

fn info(state: &State) -> Response {
    let body = serde_json::json!({
        "swift": {
            "version": env!("CARGO_PKG_VERSION"),
            "max_file_size": state.config.max_object_size,
            "max_meta_count": MAX_META_COUNT,
            "max_meta_value_length": MAX_META_VALUE_LENGTH,
            "container_listing_limit": LISTING_LIMIT,
            "account_listing_limit": LISTING_LIMIT,
            "max_object_name_length": path::MAX_OBJECT_NAME,
            "max_container_name_length": path::MAX_CONTAINER_NAME,
            "strict_cors_mode": true,
            "policies": [{"name": "Policy-0", "default": true}],
        },
        "slo": {
            "max_manifest_segments": MAX_MANIFEST_SEGMENTS,
            "max_manifest_size": MAX_MANIFEST_SIZE,
            "min_segment_size": 1,
        },
        "dlo": {"max_segments": LISTING_LIMIT},
        "tempauth": {"account_acls": false},
    });
    let mut r = response(StatusCode::OK, body.to_string());
    set_header(&mut r, "content-type", "application/json; charset=utf-8");
    r
}

fn tempauth(state: &State, req: &Request) -> Result<Response, ApiError> {
    let h = req.headers();
    let user = header(h, "x-auth-user").or_else(|| header(h, "x-storage-user"));
    let key = header(h, "x-auth-key").or_else(|| header(h, "x-storage-pass"));
    let unauthorized = || {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "Unauthorized",
            "This server could not verify that you are authorized to access the document you requested.",
        )
    };
    let (Some(user), Some(key)) = (user, key) else {
        return Err(unauthorized());
    };
    let (token, account, ttl) = state.auth.login(user, key).ok_or_else(unauthorized)?;
    let host = header(h, "host")
        .map(str::to_owned)
        .unwrap_or_else(|| state.config.listen.to_string());
    let mut r = response(StatusCode::OK, "");
    set_header(&mut r, "x-auth-token", &token);
    set_header(&mut r, "x-storage-token", &token);
    set_header(&mut r, "x-auth-token-expires", &ttl.to_string());
    set_header(
        &mut r,
        "x-storage-url",
        &format!("http://{host}/v1/{account}"),
    );
    Ok(r)
}

/// Metadata headers with `prefix` (`x-object-meta-` ...) plus the `extra` stored ones.
fn collect_meta(
    h: &http::HeaderMap,
    prefix: &str,
    extra: &[&str],
) -> Result<BTreeMap<String, String>, ApiError> {
    let mut out = BTreeMap::new();
    for (k, v) in h {
        let name = k.as_str();
        let remove_prefix = prefix.replacen("x-", "x-remove-", 1);
        if let Some(rest) = name.strip_prefix(&remove_prefix) {
            out.insert(format!("{prefix}{rest}"), String::new());
            continue;
        }
        if name.starts_with(prefix) || extra.contains(&name) {
            let v = v
                .to_str()
                .map_err(|_| ApiError::bad_request("BadMetadata", "metadata must be ASCII"))?;
            if v.len() > MAX_META_VALUE_LENGTH {
                return Err(ApiError::bad_request(
                    "BadMetadata",
                    format!("Metadata value longer than {MAX_META_VALUE_LENGTH}"),
                ));
            }
            out.insert(name.to_owned(), v.to_owned());
        }
    }
    if out.len() > MAX_META_COUNT {
        return Err(ApiError::bad_request(
            "BadMetadata",
            "Too many metadata items",
        ));
    }
    Ok(out)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Format {
    Plain,
    Json,
    Xml,
}

fn listing_format(req: &Request, q: &[(String, String)]) -> Format {
    let f = q
        .iter()
        .find(|(k, _)| k == "format")
        .map(|(_, v)| v.as_str());
    match f {
        Some("json") => Format::Json,
        Some("xml") => Format::Xml,
        Some(_) => Format::Plain,
        None => {
            let accept = header(req.headers(), "accept").unwrap_or("");
            if accept.contains("application/json") {
                Format::Json
            } else if accept.contains("application/xml") || accept.contains("text/xml") {
                Format::Xml
            } else {
                Format::Plain
            }
        }
    }
}

fn list_query(q: &[(String, String)]) -> Result<ListQuery, ApiError> {
    let get = |k: &str| q.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    let limit = match get("limit") {
        Some(l) => {
            let l: usize = l.parse().map_err(|_| {
                ApiError::new(
                    StatusCode::PRECONDITION_FAILED,
                    "BadLimit",
                    "Value of limit must be a positive integer",
                )
            })?;
            if l > LISTING_LIMIT {
                return Err(ApiError::new(
                    StatusCode::PRECONDITION_FAILED,
                    "BadLimit",
                    format!("Maximum limit is {LISTING_LIMIT}"),
                ));
            }
            l
        }
        None => LISTING_LIMIT,
    };
    let mut prefix = get("prefix").unwrap_or_default();
    let mut delimiter = get("delimiter").filter(|d| !d.is_empty());
    if let Some(p) = get("path") {
        prefix = if p.is_empty() || p.ends_with('/') {
            p
        } else {
            format!("{p}/")
        };
        delimiter = Some("/".into());
    }
    Ok(ListQuery {
        prefix,
        delimiter,
        marker: get("marker").unwrap_or_default(),
        end_marker: get("end_marker").filter(|e| !e.is_empty()),
        limit,
    })
}

fn listing_response(format: Format, body: String, empty: bool) -> Response {
    if format == Format::Plain && empty {
        return status_only(StatusCode::NO_CONTENT);
    }
    let mut r = response(StatusCode::OK, body);
    let ct = match format {
        Format::Plain => "text/plain; charset=utf-8",
        Format::Json => "application/json; charset=utf-8",
        Format::Xml => "application/xml; charset=utf-8",
    };
    set_header(&mut r, "content-type", ct);
    r
}

/// Sets the stored metadata headers, except system metadata (`x-*-sysmeta-*`: S3 tags
/// and state kept by the S3 API), which Swift never shows its clients.
fn add_meta_headers(r: &mut Response, meta: &BTreeMap<String, String>) {
    for (k, v) in meta {
        if !k.contains("-sysmeta-") {
            set_header(r, k, v);
        }
    }
}

async fn account_req(state: &State, req: Request, account: &str) -> Result<Response, ApiError> {
    match *req.method() {
        Method::GET | Method::HEAD => {
            let stats = state.store.account_stats(account).await?;
            let mut r = if req.method() == Method::HEAD {
                status_only(StatusCode::NO_CONTENT)
            } else {
                let q = query_pairs(req.uri().query());
                let format = listing_format(&req, &q);
                let lq = list_query(&q)?;
                let cs = state.store.list_containers(account, lq).await?;
                let body = match format {
                    Format::Plain => cs.iter().map(|c| format!("{}\n", c.name)).collect(),
                    Format::Json => serde_json::Value::Array(
                        cs.iter()
                            .map(|c| {
                                serde_json::json!({"name": c.name, "count": c.object_count,
                                    "bytes": c.bytes_used,
                                    "last_modified": swift_listing_date(c.created_ms)})
                            })
                            .collect(),
                    )
                    .to_string(),
                    Format::Xml => {
                        let mut s = format!(
                            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<account name=\"{}\">",
                            super::s3::xml::escape(account)
                        );
                        for c in &cs {
                            let _ = write!(
                                s,
                                "<container><name>{}</name><count>{}</count><bytes>{}</bytes><last_modified>{}</last_modified></container>",
                                super::s3::xml::escape(&c.name),
                                c.object_count,
                                c.bytes_used,
                                swift_listing_date(c.created_ms)
                            );
                        }
                        s.push_str("</account>");
                        s
                    }
                };
                listing_response(format, body, cs.is_empty())
            };
            set_header(
                &mut r,
                "x-account-container-count",
                &stats.container_count.to_string(),
            );
            set_header(
                &mut r,
                "x-account-object-count",
                &stats.object_count.to_string(),
            );
            set_header(
                &mut r,
                "x-account-bytes-used",
                &stats.bytes_used.to_string(),
            );
            set_header(&mut r, "x-timestamp", "0000000000.00000");
            add_meta_headers(&mut r, &stats.meta);
            Ok(r)
        }
        Method::POST => {
            let meta = collect_meta(req.headers(), "x-account-meta-", &[])?;
            state.store.update_account_meta(account, meta).await?;
            Ok(status_only(StatusCode::NO_CONTENT))
        }
        _ => Err(ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            "The method is not allowed for this resource.",
        )),
    }
}

async fn container_req(
    state: &State,
    req: Request,
    account: &str,
    container: &str,
    who: Option<&Requester>,
) -> Result<Response, ApiError> {
    const EXTRA: &[&str] = &[
        "x-container-read",
        "x-container-write",
        "x-versions-location",
        "x-history-location",
    ];
    // ACLs are checked when set, and removed by `X-Remove-Container-Read/Write` as by an
    // empty value.
    let container_meta = |h: &http::HeaderMap| -> Result<BTreeMap<String, String>, ApiError> {
        let mut meta = collect_meta(h, "x-container-meta-", EXTRA)?;
        for (name, write) in [("read", false), ("write", true)] {
            if h.contains_key(format!("x-remove-container-{name}").as_str()) {
                meta.insert(format!("x-container-{name}"), String::new());
            }
            if let Some(v) = meta.get(&format!("x-container-{name}")) {
                Acl::parse(v, write)?;
            }
        }
        // Versioning: one mode at a time; setting one clears the other.
        for name in ["versions", "history"] {
            if h.contains_key(format!("x-remove-{name}-location").as_str()) {
                meta.insert(format!("x-{name}-location"), String::new());
            }
        }
        let set = |k: &str| meta.get(k).is_some_and(|v| !v.is_empty());
        match (set("x-versions-location"), set("x-history-location")) {
            (true, true) => {
                return Err(ApiError::bad_request(
                    "BadVersioning",
                    "Only one of X-Versions-Location or X-History-Location may be specified",
                ));
            }
            (true, false) => {
                meta.insert("x-history-location".into(), String::new());
            }
            (false, true) => {
                meta.insert("x-versions-location".into(), String::new());
            }
            (false, false) => {}
        }
        for k in ["x-versions-location", "x-history-location"] {
            if let Some(v) = meta.get(k).filter(|v| !v.is_empty()) {
                let name = path::percent_decode(v.trim()).ok();
                if name.as_deref().is_none_or(|n| {
                    n.is_empty() || n.contains('/') || n.len() > path::MAX_CONTAINER_NAME
                }) {
                    return Err(ApiError::bad_request(
                        "BadVersioning",
                        format!("{k} must name a container in this account: {v:?}"),
                    ));
                }
            }
        }
        Ok(meta)
    };
    match *req.method() {
        Method::PUT => {
            let meta = container_meta(req.headers())?;
            let created = state.store.put_container(account, container, meta).await?;
            Ok(status_only(if created {
                StatusCode::CREATED
            } else {
                StatusCode::ACCEPTED
            }))
        }
        Method::POST => {
            let meta = container_meta(req.headers())?;
            match state.store.post_container(account, container, meta).await {
                Ok(()) => Ok(status_only(StatusCode::NO_CONTENT)),
                Err(crate::store::StoreError::NoContainer) => Err(not_found()),
                Err(e) => Err(e.into()),
            }
        }
        Method::DELETE => {
            if state.store.delete_container(account, container).await? {
                Ok(status_only(StatusCode::NO_CONTENT))
            } else {
                Err(not_found())
            }
        }
        Method::GET | Method::HEAD => {
            let c = state
                .store
                .get_container(account, container)
                .await?
                .ok_or_else(not_found)?;
            let mut r = if req.method() == Method::HEAD {
                status_only(StatusCode::NO_CONTENT)
            } else {
                let q = query_pairs(req.uri().query());
                let format = listing_format(&req, &q);
                let entries = state
                    .store
                    .list_objects(account, container, list_query(&q)?)
                    .await?;
                let body = render_objects(format, container, &entries);
                listing_response(format, body, entries.is_empty())
            };
            set_header(
                &mut r,
                "x-container-object-count",
                &c.object_count.to_string(),
            );
            set_header(&mut r, "x-container-bytes-used", &c.bytes_used.to_string());
            set_header(
                &mut r,
                "x-timestamp",
                &format!("{:.5}", c.created_ms as f64 / 1000.0),
            );
            set_header(&mut r, "x-storage-policy", "Policy-0");
            let mut meta = c.meta;
            if who.is_some() {
                // Only the owner sees who else has access.
                meta.remove("x-container-read");
                meta.remove("x-container-write");
            }
            add_meta_headers(&mut r, &meta);
            Ok(r)
        }
        _ => Err(ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            "The method is not allowed for this resource.",
        )),
    }
}

fn render_objects(format: Format, container: &str, entries: &[Entry]) -> String {
    use super::s3::xml::escape;
    match format {
        Format::Plain => entries
            .iter()
            .map(|e| match e {
                Entry::Object(o) => format!("{}\n", o.name),
                Entry::Subdir(s) => format!("{s}\n"),
            })
            .collect(),
        Format::Json => serde_json::Value::Array(
            entries
                .iter()
                .map(|e| match e {
                    Entry::Object(o) => serde_json::json!({
                        "name": o.name, "hash": o.etag, "bytes": o.size,
                        "content_type": o.content_type,
                        "last_modified": swift_listing_date(o.last_modified_ms)}),
                    Entry::Subdir(s) => serde_json::json!({"subdir": s}),
                })
                .collect(),
        )
        .to_string(),
        Format::Xml => {
            let mut s = format!(
                "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<container name=\"{}\">",
                escape(container)
            );
            for e in entries {
                match e {
                    Entry::Object(o) => {
                        let _ = write!(
                            s,
                            "<object><name>{}</name><hash>{}</hash><bytes>{}</bytes><content_type>{}</content_type><last_modified>{}</last_modified></object>",
                            escape(&o.name),
                            o.etag,
                            o.size,
                            escape(&o.content_type),
                            swift_listing_date(o.last_modified_ms)
                        );
                    }
                    Entry::Subdir(d) => {
                        let _ = write!(
                            s,
                            "<subdir name=\"{0}\"><name>{0}</name></subdir>",
                            escape(d)
                        );
                    }
                }
            }
            s.push_str("</container>");
            s
        }
    }
}

/// One segment of a stored static large object manifest (Swift's stored format).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SloSegment {
    /// `/container/object`.
    pub name: String,
    /// The segment's ETag.
    pub hash: String,
    /// Its size.
    pub bytes: u64,
    /// Its content type.
    #[serde(default)]
    pub content_type: String,
}

/// A segment as clients send it in `?multipart-manifest=put`. Unknown keys (such as a
/// segment `range`, which is not supported) are refused rather than ignored.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SloPut {
    path: String,
    etag: Option<String>,
    size_bytes: Option<u64>,
}

fn split_segment_path(p: &str) -> Option<(String, String)> {
    let p = p.strip_prefix('/').unwrap_or(p);
    let (c, o) = p.split_once('/')?;
    if c.is_empty() || o.is_empty() {
        return None;
    }
    let c = path::percent_decode(c).ok()?;
    let o = path::percent_decode(o).ok()?;
    Some((c, o))
}

async fn read_blob(state: &State, blob: &Blob) -> Result<bytes::Bytes, ApiError> {
    let data = state
        .store
        .read_range(blob, 0, blob.size)
        .await
        .map_err(ApiError::internal)?;
    let mut check = blob.verifier();
    check.update(&data);
    if !check.matches() {
        let _ = state.store.quarantine(blob.id.clone()).await;
        return Err(ApiError::internal("manifest failed its checksum"));
    }
    Ok(data)
}

/// The blobs making up an object's content (segments resolved), its size and ETag.
///
/// `who` is a non-owner reading through ACLs (`None`: the owner): each container the
/// segments come from must grant it reads too.
pub async fn resolve(
    state: &State,
    account: &str,
    rec: &ObjectRecord,
    who: Option<&Requester>,
) -> Result<(Vec<Blob>, u64, String), ApiError> {
    match &rec.kind {
        Kind::Plain => Ok((rec.blobs.clone(), rec.size, rec.etag.clone())),
        Kind::Slo => {
            let manifest = read_blob(state, &rec.blobs[0]).await?;
            let segs: Vec<SloSegment> =
                serde_json::from_slice(&manifest).map_err(ApiError::internal)?;
            let mut blobs = Vec::new();
            let mut readable = std::collections::BTreeSet::new();
            for s in segs {
                let (c, o) = split_segment_path(&s.name)
                    .ok_or_else(|| ApiError::internal("bad segment path in manifest"))?;
                if let Some(w) = who
                    && !readable.contains(&c)
                {
                    if !may_access(state, account, &c, who, false).await? {
                        return Err(denied(w));
                    }
                    readable.insert(c.clone());
                }
                let seg = state.store.get_object(account, &c, &o).await?;
                let seg = seg
                    .filter(|g| g.etag == s.hash && g.kind == Kind::Plain)
                    .ok_or_else(|| {
                        ApiError::new(
                            StatusCode::CONFLICT,
                            "SegmentMissing",
                            format!("Object segment no longer valid: {}", s.name),
                        )
                    })?;
                blobs.extend(seg.blobs);
            }
            let size = blobs.iter().map(|b| b.size).sum();
            Ok((blobs, size, rec.etag.clone()))
        }
        Kind::Dlo(prefix) => {
            let (c, p) = prefix.split_once('/').unwrap_or((prefix.as_str(), ""));
            let c = path::percent_decode(c).map_err(ApiError::internal)?;
            let p = path::percent_decode(p).map_err(ApiError::internal)?;
            if let Some(w) = who
                && !may_access(state, account, &c, who, false).await?
            {
                return Err(denied(w));
            }
            let entries = state
                .store
                .list_objects(
                    account,
                    &c,
                    ListQuery {
                        prefix: p,
                        limit: LISTING_LIMIT,
                        ..Default::default()
                    },
                )
                .await?;
            let mut blobs = Vec::new();
            let mut etags = Md5::new();
            for e in entries {
                if let Entry::Object(o) = e
                    && o.kind == Kind::Plain
                {
                    etags.update(o.etag.as_bytes());
                    blobs.extend(o.blobs);
                }
            }
            let size = blobs.iter().map(|b| b.size).sum();
            Ok((blobs, size, hex::encode(etags.finalize())))
        }
    }
}

fn delete_at_from(h: &http::HeaderMap) -> Result<Option<i64>, ApiError> {
    let now = now_ms() / 1000;
    let bad = |m: &str| ApiError::bad_request("InvalidArgument", m.to_owned());
    if let Some(after) = header(h, "x-delete-after") {
        let secs: i64 = after
            .trim()
            .parse()
            .map_err(|_| bad("Non-integer X-Delete-After"))?;
        if secs < 0 {
            return Err(bad("X-Delete-After in past"));
        }
        return Ok(Some(now + secs));
    }
    if let Some(at) = header(h, "x-delete-at") {
        let at: f64 = at
            .trim()
            .parse()
            .map_err(|_| bad("Non-integer X-Delete-At"))?;
        let at = at as i64;
        if at <= now {
            return Err(bad("X-Delete-At in past"));
        }
        return Ok(Some(at));
    }
    Ok(None)
}

async fn object_req(
    state: &State,
    req: Request,
    account: &str,
    container: &str,
    object: &str,
    who: Option<&Requester>,
) -> Result<Response, ApiError> {
    let q = query_pairs(req.uri().query());
    let mm = q
        .iter()
        .find(|(k, _)| k == "multipart-manifest")
        .map(|(_, v)| v.clone());
    match req.method().clone() {
        Method::PUT => put_object(state, req, account, container, object, mm.as_deref(), who).await,
        Method::GET | Method::HEAD => {
            get_object(state, &req, account, container, object, mm.as_deref(), who).await
        }
        Method::POST => {
            let h = req.headers();
            let mut meta = collect_meta(
                h,
                "x-object-meta-",
                &["content-disposition", "content-encoding"],
            )?;
            meta.retain(|_, v| !v.is_empty());
            let delete_at = if h.contains_key("x-remove-delete-at") {
                Some(None)
            } else {
                delete_at_from(h)?.map(Some)
            };
            let ct = header(h, "content-type").map(str::to_owned);
            if state
                .store
                .post_object(account, container, object, meta, ct, delete_at)
                .await?
            {
                Ok(status_only(StatusCode::ACCEPTED))
            } else {
                Err(not_found())
            }
        }
        ref m if m.as_str() == "COPY" => {
            let h = req.headers();
            let dest = header(h, "destination").ok_or_else(|| {
                ApiError::new(
                    StatusCode::PRECONDITION_FAILED,
                    "InvalidArgument",
                    "Destination header required",
                )
            })?;
            let (dc, dobj) = split_segment_path(dest).ok_or_else(|| {
                ApiError::new(
                    StatusCode::PRECONDITION_FAILED,
                    "InvalidArgument",
                    "Destination header must be of the form <container name>/<object name>",
                )
            })?;
            let mut meta = collect_meta(
                h,
                "x-object-meta-",
                &["content-disposition", "content-encoding"],
            )?;
            meta.retain(|_, v| !v.is_empty());
            if let Some(w) = who
                && !may_access(state, account, &dc, who, true).await?
            {
                return Err(denied(w));
            }
            let from = format!("{container}/{object}");
            let mut rec =
                copy_from(state, account, &from, meta, header(h, "content-type"), who).await?;
            rec.name = dobj;
            let archive = archive_for(state, account, &dc, who, false).await?;
            store_record(
                state,
                account,
                &dc,
                rec,
                StatusCode::CREATED,
                false,
                archive.map(|a| a.0),
            )
            .await
        }
        Method::DELETE => {
            if mm.as_deref() != Some("delete")
                && let Some((archive, history)) =
                    archive_for(state, account, container, who, true).await?
            {
                return if state
                    .store
                    .delete_object_versioned(account, container, object, &archive, history)
                    .await?
                {
                    Ok(status_only(StatusCode::NO_CONTENT))
                } else {
                    Err(not_found())
                };
            }
            let rec = state
                .store
                .get_object(account, container, object)
                .await?
                .ok_or_else(not_found)?;
            if mm.as_deref() == Some("delete") && rec.kind == Kind::Slo {
                let manifest = read_blob(state, &rec.blobs[0]).await?;
                let segs: Vec<SloSegment> =
                    serde_json::from_slice(&manifest).map_err(ApiError::internal)?;
                let mut deleted = 0;
                let mut missing = 0;
                // A non-owner deletes segments only where it may write.
                for s in &segs {
                    if let Some((c, _)) = split_segment_path(&s.name)
                        && let Some(w) = who
                        && !may_access(state, account, &c, who, true).await?
                    {
                        return Err(denied(w));
                    }
                }
                for s in &segs {
                    if let Some((c, o)) = split_segment_path(&s.name)
                        && state.store.delete_object(account, &c, &o).await?.is_some()
                    {
                        deleted += 1;
                    } else {
                        missing += 1;
                    }
                }
                state
                    .store
                    .delete_object(account, container, object)
                    .await?;
                let body = serde_json::json!({
                    "Number Deleted": deleted + 1, "Number Not Found": missing,
                    "Response Status": "200 OK", "Response Body": "", "Errors": []
                });
                let mut r = response(StatusCode::OK, body.to_string());
                set_header(&mut r, "content-type", "application/json; charset=utf-8");
                return Ok(r);
            }
            state
                .store
                .delete_object(account, container, object)
                .await?;
            Ok(status_only(StatusCode::NO_CONTENT))
        }
        _ => Err(ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            "The method is not allowed for this resource.",
        )),
    }
}

async fn put_object(
    state: &State,
    req: Request,
    account: &str,
    container: &str,
    object: &str,
    mm: Option<&str>,
    who: Option<&Requester>,
) -> Result<Response, ApiError> {
    let (parts, body) = req.into_parts();
    let h = &parts.headers;
    let content_length = header(h, "content-length").and_then(|v| v.parse::<u64>().ok());
    let chunked = header(h, "transfer-encoding").is_some_and(|t| t.contains("chunked"));
    if content_length.is_none() && !chunked {
        return Err(ApiError::new(
            StatusCode::LENGTH_REQUIRED,
            "MissingContentLength",
            "Missing Content-Length header.",
        ));
    }
    if content_length.is_some_and(|l| l > state.config.max_object_size) {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "EntityTooLarge",
            "Your request is too large.",
        ));
    }
    let client_etag = header(h, "etag").map(|e| e.trim().trim_matches('"').to_ascii_lowercase());
    let mut meta = collect_meta(
        h,
        "x-object-meta-",
        &["content-disposition", "content-encoding"],
    )?;
    meta.retain(|_, v| !v.is_empty());
    let delete_at = delete_at_from(h)?;
    let content_type = header(h, "content-type")
        .filter(|c| !c.is_empty())
        .unwrap_or("application/octet-stream")
        .to_owned();
    let archive = archive_for(state, account, container, who, false)
        .await?
        .map(|a| a.0);
    if let Some(from) = header(h, "x-copy-from") {
        let mut rec = copy_from(state, account, from, meta, header(h, "content-type"), who).await?;
        rec.name = object.to_owned();
        rec.delete_at = delete_at;
        return store_record(
            state,
            account,
            container,
            rec,
            StatusCode::CREATED,
            false,
            archive,
        )
        .await;
    }
    let mut src = Source::plain(body);

    if mm == Some("put") {
        let doc = src.read_all(MAX_MANIFEST_SIZE).await?;
        return put_slo(
            state,
            account,
            container,
            object,
            &doc,
            meta,
            content_type,
            delete_at,
            who,
            archive,
        )
        .await;
    }

    let (writer, _) = src
        .to_blob(&state.store, state.config.max_object_size, content_length)
        .await?;
    let blob = writer.finish().await?;
    if let Some(e) = &client_etag
        && *e != blob.md5
    {
        state.store.remove_blobs(vec![blob]).await;
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "BadDigest",
            "Unable to process the contained instructions",
        ));
    }
    let kind = match header(h, "x-object-manifest") {
        Some(m) if m.contains('/') && !m.starts_with('/') => Kind::Dlo(m.to_owned()),
        Some(_) => {
            state.store.remove_blobs(vec![blob]).await;
            return Err(ApiError::bad_request(
                "InvalidArgument",
                "X-Object-Manifest must be in the format container/prefix",
            ));
        }
        None => Kind::Plain,
    };
    let rec = ObjectRecord {
        name: object.to_owned(),
        size: blob.size,
        etag: blob.md5.clone(),
        content_type,
        last_modified_ms: now_ms(),
        meta,
        delete_at,
        blobs: vec![blob],
        kind,
    };
    store_record(
        state,
        account,
        container,
        rec,
        StatusCode::CREATED,
        false,
        archive,
    )
    .await
}

/// A new record holding a server-side copy of `from` (`container/object`), its metadata
/// updated with `meta`. A non-owner `who` must be granted reads on the source.
async fn copy_from(
    state: &State,
    account: &str,
    from: &str,
    meta: BTreeMap<String, String>,
    content_type: Option<&str>,
    who: Option<&Requester>,
) -> Result<ObjectRecord, ApiError> {
    let (c, o) = split_segment_path(from).ok_or_else(|| {
        ApiError::new(
            StatusCode::PRECONDITION_FAILED,
            "InvalidArgument",
            "X-Copy-From header must be of the form <container name>/<object name>",
        )
    })?;
    if let Some(w) = who
        && !may_access(state, account, &c, who, false).await?
    {
        return Err(denied(w));
    }
    let src = state
        .store
        .get_object(account, &c, &o)
        .await?
        .ok_or_else(not_found)?;
    let (blobs, _, _) = resolve(state, account, &src, who).await?;
    let blob = super::body::copy_into_blob(&state.store, &blobs).await?;
    let mut all_meta = src.meta.clone();
    all_meta.extend(meta);
    Ok(ObjectRecord {
        name: String::new(),
        size: blob.size,
        etag: blob.md5.clone(),
        content_type: content_type.map_or(src.content_type.clone(), str::to_owned),
        last_modified_ms: now_ms(),
        meta: all_meta,
        delete_at: None,
        blobs: vec![blob],
        kind: Kind::Plain,
    })
}

/// Indexes `rec` (moving the content it replaces to `archive` in a versioned container).
#[allow(clippy::too_many_arguments)]
async fn store_record(
    state: &State,
    account: &str,
    container: &str,
    rec: ObjectRecord,
    status: StatusCode,
    quote: bool,
    archive: Option<String>,
) -> Result<Response, ApiError> {
    let etag = rec.etag.clone();
    let ms = rec.last_modified_ms;
    let blobs = rec.blobs.clone();
    let put = state
        .store
        .put_object_versioned(account, container, rec, archive);
    let old = match put.await {
        Ok(old) => old,
        Err(e) => {
            state.store.remove_blobs(blobs).await;
            return Err(match e {
                crate::store::StoreError::NoContainer => not_found(),
                e => e.into(),
            });
        }
    };
    state.store.remove_blobs(old).await;
    let mut r = status_only(status);
    set_header(
        &mut r,
        "etag",
        &if quote { format!("\"{etag}\"") } else { etag },
    );
    set_header(&mut r, "last-modified", &http_date(ms));
    set_header(&mut r, "content-type", "text/html; charset=UTF-8");
    Ok(r)
}

#[allow(clippy::too_many_arguments)]
async fn put_slo(
    state: &State,
    account: &str,
    container: &str,
    object: &str,
    doc: &[u8],
    meta: BTreeMap<String, String>,
    content_type: String,
    delete_at: Option<i64>,
    who: Option<&Requester>,
    archive: Option<String>,
) -> Result<Response, ApiError> {
    let bad = |m: String| ApiError::bad_request("InvalidManifest", m);
    let segs: Vec<SloPut> = serde_json::from_slice(doc)
        .map_err(|e| bad(format!("Manifest must be valid JSON: {e}")))?;
    if segs.is_empty() || segs.len() > MAX_MANIFEST_SEGMENTS {
        return Err(bad(format!(
            "Manifest must have 1 to {MAX_MANIFEST_SEGMENTS} segments"
        )));
    }
    let mut stored = Vec::new();
    let mut etags = Md5::new();
    let mut total = 0u64;
    for (i, s) in segs.iter().enumerate() {
        let (c, o) = split_segment_path(&s.path)
            .ok_or_else(|| bad(format!("Index {i}: bad path {}", s.path)))?;
        if let Some(w) = who
            && !may_access(state, account, &c, who, false).await?
        {
            return Err(denied(w));
        }
        let seg = state
            .store
            .get_object(account, &c, &o)
            .await?
            .filter(|g| g.kind == Kind::Plain)
            .ok_or_else(|| bad(format!("Index {i}: 404 Not Found {}", s.path)))?;
        if let Some(e) = &s.etag
            && e.trim_matches('"') != seg.etag
        {
            return Err(bad(format!("Index {i}: Etag Mismatch")));
        }
        if let Some(n) = s.size_bytes
            && n != seg.size
        {
            return Err(bad(format!("Index {i}: Size Mismatch")));
        }
        etags.update(seg.etag.as_bytes());
        total += seg.size;
        stored.push(SloSegment {
            name: format!("/{c}/{o}"),
            hash: seg.etag,
            bytes: seg.size,
            content_type: seg.content_type,
        });
    }
    let manifest = serde_json::to_vec(&stored).map_err(ApiError::internal)?;
    let mut w = state.store.blob_writer().await?;
    w.write(&manifest).await?;
    let blob = w.finish().await?;
    let rec = ObjectRecord {
        name: object.to_owned(),
        size: total,
        etag: hex::encode(etags.finalize()),
        content_type,
        last_modified_ms: now_ms(),
        meta,
        delete_at,
        blobs: vec![blob],
        kind: Kind::Slo,
    };
    store_record(
        state,
        account,
        container,
        rec,
        StatusCode::CREATED,
        true,
        archive,
    )
    .await
}

async fn get_object(
    state: &State,
    req: &Request,
    account: &str,
    container: &str,
    object: &str,
    mm: Option<&str>,
    who: Option<&Requester>,
) -> Result<Response, ApiError> {
    let head = req.method() == Method::HEAD;
    let h = req.headers();
    let rec = state
        .store
        .get_object(account, container, object)
        .await?
        .ok_or_else(not_found)?;
    let raw_manifest = mm == Some("get") && rec.kind == Kind::Slo;
    let (blobs, size, etag) = if raw_manifest {
        (
            rec.blobs.clone(),
            rec.blobs[0].size,
            rec.blobs[0].md5.clone(),
        )
    } else {
        resolve(state, account, &rec, who).await?
    };
    let quoted = !raw_manifest && rec.kind != Kind::Plain;
    let etag_header = if quoted {
        format!("\"{etag}\"")
    } else {
        etag.clone()
    };
    let common = |r: &mut Response| {
        set_header(r, "etag", &etag_header);
        set_header(r, "last-modified", &http_date(rec.last_modified_ms));
        set_header(
            r,
            "x-timestamp",
            &format!("{:.5}", rec.last_modified_ms as f64 / 1000.0),
        );
        set_header(r, "accept-ranges", "bytes");
        set_header(
            r,
            "content-type",
            if raw_manifest {
                "application/json; charset=utf-8"
            } else {
                &rec.content_type
            },
        );
        add_meta_headers(r, &rec.meta);
        if let Some(d) = rec.delete_at {
            set_header(r, "x-delete-at", &d.to_string());
        }
        match &rec.kind {
            Kind::Slo => set_header(r, "x-static-large-object", "True"),
            Kind::Dlo(m) => set_header(r, "x-object-manifest", m),
            Kind::Plain => {}
        }
    };
    match evaluate(h, &etag, rec.last_modified_ms, true) {
        Condition::Proceed => {}
        Condition::NotModified => {
            let mut r = status_only(StatusCode::NOT_MODIFIED);
            common(&mut r);
            r.headers_mut().remove("content-length");
            return Ok(r);
        }
        Condition::Failed => {
            return Err(ApiError::new(
                StatusCode::PRECONDITION_FAILED,
                "PreconditionFailed",
                "A precondition for this request was not met.",
            ));
        }
    }
    let mut ranges = None;
    if let Some(rh) = header(h, "range") {
        match parse_ranges(rh, size) {
            Ok(r) => ranges = r,
            Err(_) => {
                let mut r = ApiError::new(
                    StatusCode::RANGE_NOT_SATISFIABLE,
                    "InvalidRange",
                    "The Range requested is not available.",
                )
                .render(super::Api::Swift);
                set_header(&mut r, "content-range", &format!("bytes */{size}"));
                return Ok(r);
            }
        }
    }
    match ranges.as_deref() {
        None => {
            let body = if head {
                super::RespBody::empty()
            } else {
                stream_pieces(&state.store, pieces(&blobs, 0, size)).await?
            };
            let mut r = http::Response::new(body);
            common(&mut r);
            set_header(&mut r, "content-length", &size.to_string());
            Ok(r)
        }
        Some(&[(start, end)]) => {
            let body = if head {
                super::RespBody::empty()
            } else {
                stream_pieces(&state.store, pieces(&blobs, start, end)).await?
            };
            let mut r = http::Response::new(body);
            *r.status_mut() = StatusCode::PARTIAL_CONTENT;
            common(&mut r);
            set_header(&mut r, "content-length", &(end - start).to_string());
            set_header(
                &mut r,
                "content-range",
                &format!("bytes {start}-{}/{size}", end - 1),
            );
            Ok(r)
        }
        Some(many) => {
            // multipart/byteranges: each range behind a boundary line and its own
            // Content-Type and Content-Range, the body closed by `--boundary--`.
            let boundary = crate::store::random_hex(16);
            let content_type = if raw_manifest {
                "application/json; charset=utf-8"
            } else {
                rec.content_type.as_str()
            };
            let mut parts = Vec::new();
            for (i, &(start, end)) in many.iter().enumerate() {
                let lead = if i == 0 { "" } else { "\r\n" };
                parts.push(Part::Literal(bytes::Bytes::from(format!(
                    "{lead}--{boundary}\r\nContent-Type: {content_type}\r\nContent-Range: bytes {start}-{}/{size}\r\n\r\n",
                    end - 1
                ))));
                parts.extend(pieces(&blobs, start, end).into_iter().map(Part::Piece));
            }
            parts.push(Part::Literal(bytes::Bytes::from(format!(
                "\r\n--{boundary}--"
            ))));
            let len: u64 = parts
                .iter()
                .map(|p| match p {
                    Part::Literal(b) => b.len() as u64,
                    Part::Piece(p) => p.end - p.start,
                })
                .sum();
            let body = if head {
                super::RespBody::empty()
            } else {
                stream_parts(&state.store, parts)
            };
            let mut r = http::Response::new(body);
            *r.status_mut() = StatusCode::PARTIAL_CONTENT;
            common(&mut r);
            set_header(
                &mut r,
                "content-type",
                &format!("multipart/byteranges;boundary={boundary}"),
            );
            set_header(&mut r, "content-length", &len.to_string());
            Ok(r)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segment_paths() {
        assert_eq!(
            split_segment_path("/c_segments/big/slo/1/2/3/00000000"),
            Some(("c_segments".into(), "big/slo/1/2/3/00000000".into()))
        );
        assert_eq!(split_segment_path("/c"), None);
        assert_eq!(
            split_segment_path("c/o%20x"),
            Some(("c".into(), "o x".into()))
        );
    }

    #[test]
    fn listing_queries() {
        let q = vec![("limit".to_owned(), "10001".to_owned())];
        assert_eq!(
            list_query(&q).unwrap_err().status,
            StatusCode::PRECONDITION_FAILED
        );
        let q = vec![("path".to_owned(), "a/b".to_owned())];
        let l = list_query(&q).unwrap();
        assert_eq!(
            (l.prefix.as_str(), l.delimiter.as_deref()),
            ("a/b/", Some("/"))
        );
    }

    #[test]
    fn objects_render_in_three_formats() {
        let o = ObjectRecord {
            name: "a<b".into(),
            size: 3,
            etag: "e".into(),
            content_type: "text/plain".into(),
            last_modified_ms: 0,
            meta: BTreeMap::new(),
            delete_at: None,
            blobs: vec![],
            kind: Kind::Plain,
        };
        let entries = vec![Entry::Object(o), Entry::Subdir("d/".into())];
        assert_eq!(render_objects(Format::Plain, "c", &entries), "a<b\nd/\n");
        let j: serde_json::Value =
            serde_json::from_str(&render_objects(Format::Json, "c", &entries)).unwrap();
        assert_eq!(j[0]["bytes"], 3);
        assert_eq!(j[1]["subdir"], "d/");
        assert!(render_objects(Format::Xml, "c", &entries).contains("<name>a&lt;b</name>"));
    }
}
