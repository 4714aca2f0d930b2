//! Glance v2 over HTTP under `/image`: versions, images (create, list with filters, sort
//! and paging, show, JSON-patch update, delete), data upload and download streamed
//! to and from objectd, tags, members, schemas.

use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{HeaderValue, Method, StatusCode};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tracing::Instrument;

use super::{ApiError, Request, Response, blocking, empty, json as json_resp, read_limited};
use crate::config::StoreAuth;
use crate::identity::bootstrap::{IMAGE_SERVICE_USER, SERVICE_PROJECT};
use crate::identity::token::{Claims, Scope, method, now_secs, random_audit_id};
use crate::identity::{Ctx, DEFAULT_DOMAIN, new_id};
use crate::image::{Access, ImageDoc, MemberDoc, SORT_KEYS, access, compare, parse_patch};
use crate::objectstore::{Hashing, ObjectStoreError, Session};
use crate::service::{Service, ServiceError};
use crate::store::{Kind, Record, StoreError, Write};

const PATCH_TYPE: &str = "application/openstack-images-v2.1-json-patch";
const DEFAULT_LIMIT: usize = 25;
const MAX_LIMIT: usize = 1000;

/// Routes `/image/...` (the segments after `image`).
pub async fn route(
    svc: Arc<Service>,
    req: http::Request<hyper::body::Incoming>,
    segs: Vec<String>,
) -> Result<Response, ApiError> {
    let s: Vec<&str> = segs.iter().map(String::as_str).collect();
    let m = req.method().clone();
    match (s.as_slice(), &m) {
        ([] | ["v2"], &Method::GET) => {
            return Ok(json_resp(StatusCode::MULTIPLE_CHOICES, &versions(&svc)));
        }
        // Glance answers the same list at /versions with 200 (glanceclient asks there).
        (["versions"], &Method::GET) => {
            return Ok(json_resp(StatusCode::OK, &versions(&svc)));
        }
        (["v2", "images", id, "file"], &Method::PUT) => {
            let id = id.to_string();
            return upload(svc, req, id).await;
        }
        (["v2", "images", id, "file"], &Method::GET) => {
            let id = id.to_string();
            return download(svc, req, id).await;
        }
        (["v2", "images", id, "stage"], &Method::PUT) => {
            let id = id.to_string();
            return stage(svc, req, id).await;
        }
        (["v2", "images", id, "import"], &Method::POST) => {
            let id = id.to_string();
            return import(svc, req, id).await;
        }
        _ => {}
    }
    let (parts, body) = req.into_parts();
    let limit = svc.config.raw.max_request_body;
    if parts
        .headers
        .get("content-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .is_some_and(|n| n > limit as u64)
    {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("request body is larger than the {limit}-byte limit"),
        ));
    }
    let body = read_limited(body, limit).await?;
    let request = Request {
        method: parts.method,
        segs,
        query: parts
            .uri
            .query()
            .map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
            .unwrap_or_default(),
        headers: parts.headers,
        body,
    };
    let delete_id = match (request.method == Method::DELETE, request.segs.as_slice()) {
        (true, [v, i, id]) if v == "v2" && i == "images" => Some(id.clone()),
        _ => None,
    };
    let mut resp = super::cached_or_blocking(svc.clone(), move |svc| {
        handle(svc, &request).map_err(ApiError::from)
    })
    .await?;
    if resp
        .headers_mut()
        .remove("x-ferrostack-delete-data")
        .is_some()
        && let Some(id) = delete_id
    {
        delete_data(&svc, &id).await;
    }
    Ok(resp)
}

fn versions(svc: &Service) -> Value {
    let href = format!("{}/image/v2/", svc.config.public_url);
    let list: Vec<Value> = [
        ("v2.9", "CURRENT"),
        ("v2.8", "SUPPORTED"),
        ("v2.7", "SUPPORTED"),
        ("v2.6", "SUPPORTED"),
        ("v2.5", "SUPPORTED"),
        ("v2.4", "SUPPORTED"),
        ("v2.3", "SUPPORTED"),
        ("v2.2", "SUPPORTED"),
        ("v2.1", "SUPPORTED"),
        ("v2.0", "SUPPORTED"),
    ]
    .iter()
    .map(|(id, st)| json!({"id": id, "status": st, "links": [{"rel": "self", "href": href}]}))
    .collect();
    json!({ "versions": list })
}

fn ctx_of(svc: &Service, headers: &http::HeaderMap) -> Result<Ctx, ServiceError> {
    let token = headers
        .get("x-auth-token")
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| ApiError::unauthorized("This server could not verify that you are authorized to access the document you requested."))?;
    let ctx = svc.context(token)?;
    if ctx.project_id.is_none() {
        return Err(ApiError::forbidden("the image service needs a project-scoped token").into());
    }
    Ok(ctx)
}

fn not_found(id: &str) -> ServiceError {
    ApiError::not_found(format!("No image found with ID {id}")).into()
}

fn member_status(
    svc: &Service,
    image_id: &str,
    project: Option<&str>,
) -> Result<Option<String>, ServiceError> {
    let Some(p) = project else { return Ok(None) };
    Ok(
        match svc
            .store
            .get(Kind::ImageMember, &format!("{image_id}:{p}"))?
        {
            Some(r) => Some(r.parse::<MemberDoc>()?.status),
            None => None,
        },
    )
}

/// Loads an image the caller can see, with the caller's access.
fn load(svc: &Service, ctx: &Ctx, id: &str) -> Result<(Record, ImageDoc, Access), ServiceError> {
    let rec = svc
        .store
        .get(Kind::Image, id)?
        .ok_or_else(|| not_found(id))?;
    let doc: ImageDoc = rec.parse()?;
    let ms = member_status(svc, id, ctx.project_id.as_deref())?;
    let a = access(ctx, &doc, ms.as_deref());
    if a == Access::None {
        return Err(not_found(id));
    }
    Ok((rec, doc, a))
}

/// Glance's `tasks_api_access`: the tasks API is for admins.
fn tasks_admin(ctx: &Ctx) -> Result<(), ServiceError> {
    if ctx.is_admin() {
        Ok(())
    } else {
        Err(ApiError::forbidden("You are not authorized to access the tasks API.").into())
    }
}

fn writable(a: Access) -> Result<(), ServiceError> {
    if a == Access::Write {
        Ok(())
    } else {
        Err(ApiError::forbidden("You are not authorized to modify this image.").into())
    }
}

fn stale(e: StoreError) -> ServiceError {
    match e {
        StoreError::Stale { .. } => {
            ApiError::conflict("The image was changed by another request; retry.").into()
        }
        StoreError::Conflict { .. } => {
            ApiError::conflict("An image with this ID already exists.").into()
        }
        other => other.into(),
    }
}

fn handle(svc: &Service, req: &Request) -> Result<Response, ServiceError> {
    let s: Vec<&str> = req.segs.iter().map(String::as_str).collect();
    match (s.as_slice(), &req.method) {
        (["v2", "schemas", "image"], &Method::GET) => {
            return Ok(json_resp(StatusCode::OK, &image_schema()));
        }
        (["v2", "schemas", "images"], &Method::GET) => {
            return Ok(json_resp(
                StatusCode::OK,
                &json!({"name": "images", "properties": {"images": {"type": "array", "items": image_schema()}}, "links": []}),
            ));
        }
        (["v2", "schemas", "task"], &Method::GET) => {
            return Ok(json_resp(StatusCode::OK, &super::image_task::schema()));
        }
        (["v2", "schemas", "tasks"], &Method::GET) => {
            return Ok(json_resp(StatusCode::OK, &super::image_task::list_schema()));
        }
        (["v2", "info", "import"], &Method::GET) => {
            return Ok(json_resp(
                StatusCode::OK,
                &json!({"import-methods": {"description": "Import methods available.", "type": "array", "value": import_methods(svc)}}),
            ));
        }
        _ => {}
    }
    let ctx = ctx_of(svc, &req.headers)?;
    match (s.as_slice(), &req.method) {
        (["v2", "images"], &Method::POST) => create(svc, req, &ctx),
        (["v2", "images"], &Method::GET) => list(svc, req, &ctx),
        (["v2", "images", id], &Method::GET) => {
            let (_, doc, _) = load(svc, &ctx, id)?;
            Ok(json_resp(StatusCode::OK, &doc.view(id)))
        }
        (["v2", "images", id], &Method::PATCH) => patch(svc, req, &ctx, id),
        (["v2", "images", id], &Method::DELETE) => delete_record(svc, &ctx, id),
        (["v2", "images", id, "tags", tag], m @ (&Method::PUT | &Method::DELETE)) => {
            let (rec, mut doc, a) = load(svc, &ctx, id)?;
            writable(a)?;
            if *m == Method::PUT {
                if tag.is_empty() || tag.len() > 255 {
                    return Err(ApiError::bad_request("tags are 1 to 255 characters").into());
                }
                if !doc.tags.iter().any(|t| t == tag) {
                    doc.tags.push(tag.to_string());
                }
            } else {
                let before = doc.tags.len();
                doc.tags.retain(|t| t != tag);
                if before == doc.tags.len() {
                    return Err(ApiError::not_found(format!("Tag {tag} not found")).into());
                }
            }
            doc.updated_at = now_secs();
            svc.store.update(rec.with_doc(None, &doc)).map_err(stale)?;
            Ok(empty(StatusCode::NO_CONTENT))
        }
        (["v2", "images", id, "actions", action], &Method::POST) => {
            // Glance's deactivation: an active image's data stops being handed out (to
            // anyone but admins) and nothing boots from it, until it is reactivated.
            let next = match *action {
                "deactivate" => "deactivated",
                "reactivate" => "active",
                _ => return Err(ApiError::not_found(format!("no image action {action:?}")).into()),
            };
            let (rec, mut doc, a) = load(svc, &ctx, id)?;
            writable(a)?;
            if !matches!(doc.status.as_str(), "active" | "deactivated") {
                return Err(ApiError::bad_request(format!(
                    "Not allowed to {action} image in status '{}'",
                    doc.status
                ))
                .into());
            }
            if doc.status != next {
                doc.status = next.into();
                doc.updated_at = now_secs();
                svc.store.update(rec.with_doc(None, &doc)).map_err(stale)?;
            }
            Ok(empty(StatusCode::NO_CONTENT))
        }
        (["v2", "tasks"], &Method::GET) => {
            tasks_admin(&ctx)?;
            let q = |k: &str| req.q(k).map(str::to_string);
            Ok(json_resp(
                StatusCode::OK,
                &super::image_task::list(svc, &q)?,
            ))
        }
        (["v2", "tasks", task], &Method::GET) => {
            tasks_admin(&ctx)?;
            Ok(json_resp(
                StatusCode::OK,
                &super::image_task::show(svc, task)?,
            ))
        }
        (["v2", "images", id, "tasks"], &Method::GET) => {
            let (_, _, a) = load(svc, &ctx, id)?;
            writable(a)?;
            Ok(json_resp(
                StatusCode::OK,
                &super::image_task::of_image_view(svc, id)?,
            ))
        }
        (["v2", "images", id, "members"], &Method::GET) => {
            let (_, doc, _) = load(svc, &ctx, id)?;
            let mut items = Vec::new();
            for r in svc.store.list(Kind::ImageMember, Some(id))? {
                let m: MemberDoc = r.parse()?;
                if ctx.is_admin()
                    || ctx.project_id.as_deref() == Some(doc.owner.as_str())
                    || ctx.project_id.as_deref() == Some(m.member_id.as_str())
                {
                    items.push(member_view(&m));
                }
            }
            Ok(json_resp(
                StatusCode::OK,
                &json!({"members": items, "schema": "/v2/schemas/members"}),
            ))
        }
        (["v2", "images", id, "members"], &Method::POST) => {
            let (_, doc, a) = load(svc, &ctx, id)?;
            if a != Access::Write {
                return Err(ApiError::forbidden("Only the owner can share an image.").into());
            }
            if doc.visibility != "shared" {
                return Err(ApiError::forbidden("Only shared images have members.").into());
            }
            let v: Value = req.json()?;
            let member = v
                .get("member")
                .and_then(Value::as_str)
                .filter(|_| v.as_object().is_some_and(|o| o.len() == 1))
                .ok_or_else(|| {
                    ApiError::bad_request("the body must be {\"member\": \"<project id>\"}")
                })?;
            let now = now_secs();
            let m = MemberDoc {
                image_id: id.to_string(),
                member_id: member.to_string(),
                status: "pending".into(),
                created_at: now,
                updated_at: now,
            };
            svc.store
                .insert(Record::new(
                    Kind::ImageMember,
                    &format!("{id}:{member}"),
                    id,
                    None,
                    &m,
                ))
                .map_err(|e| match e {
                    StoreError::Conflict { .. } => ServiceError::from(ApiError::conflict(format!(
                        "{member} is already a member of image {id}"
                    ))),
                    o => o.into(),
                })?;
            Ok(json_resp(StatusCode::OK, &member_view(&m)))
        }
        (["v2", "images", id, "members", mid], m) => {
            let (_, doc, _) = load(svc, &ctx, id)?;
            let rec = svc
                .store
                .get(Kind::ImageMember, &format!("{id}:{mid}"))?
                .ok_or_else(|| {
                    ApiError::not_found(format!("{mid} is not a member of image {id}"))
                })?;
            let mut md: MemberDoc = rec.parse()?;
            let owner = ctx.is_admin() || ctx.project_id.as_deref() == Some(doc.owner.as_str());
            let me = ctx.project_id.as_deref() == Some(*mid);
            match *m {
                Method::GET if owner || me => Ok(json_resp(StatusCode::OK, &member_view(&md))),
                Method::PUT if me => {
                    let v: Value = req.json()?;
                    let st = v
                        .get("status")
                        .and_then(Value::as_str)
                        .filter(|s| ["pending", "accepted", "rejected"].contains(s))
                        .ok_or_else(|| {
                            ApiError::bad_request("status must be pending, accepted or rejected")
                        })?;
                    md.status = st.into();
                    md.updated_at = now_secs();
                    svc.store.update(rec.with_doc(None, &md)).map_err(stale)?;
                    Ok(json_resp(StatusCode::OK, &member_view(&md)))
                }
                Method::DELETE if owner => {
                    svc.store.delete(Kind::ImageMember, &rec.id)?;
                    Ok(empty(StatusCode::NO_CONTENT))
                }
                _ => Err(ApiError::forbidden(
                    "You are not authorized to do this to the membership.",
                )
                .into()),
            }
        }
        _ => Err(
            ApiError::not_found(format!("no such resource: /image/{}", req.segs.join("/"))).into(),
        ),
    }
}

fn member_view(m: &MemberDoc) -> Value {
    json!({"image_id": m.image_id, "member_id": m.member_id, "status": m.status,
           "created_at": crate::time::glance(m.created_at), "updated_at": crate::time::glance(m.updated_at),
           "schema": "/v2/schemas/member"})
}

fn image_schema() -> Value {
    let s = |t: Value| json!({"type": t});
    json!({
        "name": "image",
        "additionalProperties": {"type": "string"},
        "properties": {
            "id": s(json!("string")), "name": s(json!(["null", "string"])), "status": s(json!("string")),
            "visibility": {"type": "string", "enum": ["community", "public", "private", "shared"]},
            "protected": s(json!("boolean")), "os_hidden": s(json!("boolean")),
            "checksum": s(json!(["null", "string"])), "os_hash_algo": s(json!(["null", "string"])),
            "os_hash_value": s(json!(["null", "string"])), "owner": s(json!(["null", "string"])),
            "size": s(json!(["null", "integer"])), "virtual_size": s(json!(["null", "integer"])),
            "container_format": {"type": ["null", "string"], "enum": [null, "ami", "ari", "aki", "bare", "ovf", "ova", "docker", "compressed"]},
            "disk_format": {"type": ["null", "string"], "enum": [null, "ami", "ari", "aki", "vhd", "vhdx", "vmdk", "raw", "qcow2", "vdi", "iso", "ploop"]},
            "created_at": s(json!("string")), "updated_at": s(json!("string")),
            "tags": {"type": "array", "items": {"type": "string"}},
            "min_ram": s(json!("integer")), "min_disk": s(json!("integer")),
            "self": s(json!("string")), "file": s(json!("string")), "schema": s(json!("string")),
            "kernel_id": s(json!(["null", "string"])), "ramdisk_id": s(json!(["null", "string"])),
        },
        "links": [{"rel": "self", "href": "{self}"}, {"rel": "enclosure", "href": "{file}"},
                  {"rel": "describedby", "href": "{schema}"}]
    })
}

fn create(svc: &Service, req: &Request, ctx: &Ctx) -> Result<Response, ServiceError> {
    if !ctx.has_role("member") {
        return Err(ApiError::forbidden("You are not authorized to create images.").into());
    }
    let v: Value = req.json()?;
    let obj = v
        .as_object()
        .ok_or_else(|| ApiError::bad_request("the body must be a JSON object"))?;
    let now = now_secs();
    let mut doc = ImageDoc {
        name: None,
        status: "queued".into(),
        visibility: "shared".into(),
        protected: false,
        os_hidden: false,
        checksum: None,
        os_hash_algo: None,
        os_hash_value: None,
        size: None,
        virtual_size: None,
        min_disk: 0,
        min_ram: 0,
        disk_format: None,
        container_format: None,
        owner: ctx.project_id.clone().unwrap_or_default(),
        tags: vec![],
        created_at: now,
        updated_at: now,
        properties: Default::default(),
    };
    let mut id = new_id();
    for (k, val) in obj {
        if k == "id" {
            let s = val
                .as_str()
                .and_then(|s| uuid::Uuid::parse_str(s).ok())
                .ok_or_else(|| ApiError::bad_request("id must be a UUID"))?;
            id = s.hyphenated().to_string();
            continue;
        }
        doc.set(k, val, ctx)?;
    }
    if id.len() == 32 {
        id = uuid::Uuid::parse_str(&id)
            .map(|u| u.hyphenated().to_string())
            .unwrap_or(id);
    }
    let rec = Record::new(Kind::Image, &id, &doc.owner, None, &doc);
    svc.store.insert(rec).map_err(stale)?;
    let mut r = json_resp(StatusCode::CREATED, &doc.view(&id));
    r.headers_mut().insert(
        "openstack-image-import-methods",
        HeaderValue::from_static("glance-direct"),
    );
    r.headers_mut().insert(
        "location",
        HeaderValue::from_str(&format!("{}/image/v2/images/{id}", svc.config.public_url))
            .expect("ascii url"),
    );
    Ok(r)
}

fn patch(svc: &Service, req: &Request, ctx: &Ctx, id: &str) -> Result<Response, ServiceError> {
    let ct = req.header("content-type").unwrap_or("");
    if !ct.starts_with(PATCH_TYPE) {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!("Content-Type must be {PATCH_TYPE}"),
        )
        .into());
    }
    let ops = parse_patch(&req.body)?;
    let (rec, mut doc, a) = load(svc, ctx, id)?;
    writable(a)?;
    for (op, key, value) in ops {
        match op.as_str() {
            "remove" => doc.remove(&key)?,
            "replace"
                if !crate::image::CORE.contains(&key.as_str())
                    && !crate::image::READ_ONLY.contains(&key.as_str())
                    && !doc.properties.contains_key(&key) =>
            {
                return Err(ApiError::conflict(format!("Property {key} does not exist.")).into());
            }
            _ => doc.set(&key, value.as_ref().expect("checked by parse_patch"), ctx)?,
        }
    }
    doc.updated_at = now_secs();
    let next = rec.with_doc(None, &doc);
    let mut next = next;
    next.scope = doc.owner.clone();
    svc.store.update(next).map_err(stale)?;
    Ok(json_resp(StatusCode::OK, &doc.view(id)))
}

fn delete_record(svc: &Service, ctx: &Ctx, id: &str) -> Result<Response, ServiceError> {
    let (_, doc, a) = load(svc, ctx, id)?;
    writable(a)?;
    if doc.protected {
        return Err(
            ApiError::forbidden(format!("Image {id} is protected and cannot be deleted.")).into(),
        );
    }
    let mut writes = vec![Write::Delete(Kind::Image, id.to_string())];
    for m in svc.store.list(Kind::ImageMember, Some(id))? {
        writes.push(Write::Delete(Kind::ImageMember, m.id));
    }
    writes.extend(super::image_task::of_image(svc, id)?);
    svc.store.apply(&writes)?;
    let staged = staged_path(svc, id);
    let _ = std::fs::remove_file(staged.with_extension("part"));
    let _ = std::fs::remove_file(&staged);
    // The data is removed by the async caller (see `delete_data`); mark with a header.
    let mut r = empty(StatusCode::NO_CONTENT);
    if doc.size.is_some() || doc.status == "saving" {
        r.headers_mut()
            .insert("x-ferrostack-delete-data", HeaderValue::from_static("1"));
    }
    Ok(r)
}

fn list(svc: &Service, req: &Request, ctx: &Ctx) -> Result<Response, ServiceError> {
    let limit = match req.q("limit") {
        Some(l) => l
            .parse::<usize>()
            .map_err(|_| ApiError::bad_request("limit must be a non-negative integer"))?
            .min(MAX_LIMIT),
        None => DEFAULT_LIMIT,
    };
    // Sort: `sort=k1:dir,k2` or `sort_key`/`sort_dir` (repeatable).
    let mut sort: Vec<(String, bool)> = Vec::new();
    if let Some(s) = req.q("sort") {
        for part in s.split(',') {
            let (k, d) = part.split_once(':').unwrap_or((part, "desc"));
            sort.push((k.trim().to_string(), d.trim() == "asc"));
        }
    } else {
        let keys: Vec<&str> = req
            .query
            .iter()
            .filter(|(k, _)| k == "sort_key")
            .map(|(_, v)| v.as_str())
            .collect();
        let dirs: Vec<&str> = req
            .query
            .iter()
            .filter(|(k, _)| k == "sort_dir")
            .map(|(_, v)| v.as_str())
            .collect();
        for (i, k) in keys.iter().enumerate() {
            let d = dirs.get(i).or(dirs.first()).copied().unwrap_or("desc");
            if d != "asc" && d != "desc" {
                return Err(ApiError::bad_request(format!(
                    "sort direction {d:?} is not asc or desc"
                ))
                .into());
            }
            sort.push((k.to_string(), d == "asc"));
        }
        if keys.is_empty()
            && let Some(d) = dirs.first()
        {
            sort.push(("created_at".into(), *d == "asc"));
        }
    }
    for (k, _) in &sort {
        if !SORT_KEYS.contains(&k.as_str()) {
            return Err(ApiError::bad_request(format!("cannot sort on {k:?}")).into());
        }
    }
    if sort.is_empty() {
        sort.push(("created_at".into(), false));
    }
    sort.push(("id".into(), false));
    let project = ctx.project_id.as_deref();
    let index = svc.all_images()?;
    // Positions in the index of the images to show.
    let mut images: Vec<usize> = Vec::new();
    let tags: Vec<&str> = req
        .query
        .iter()
        .filter(|(k, _)| k == "tag")
        .map(|(_, v)| v.as_str())
        .collect();
    let known = [
        "limit",
        "marker",
        "sort",
        "sort_key",
        "sort_dir",
        "tag",
        "name",
        "status",
        "visibility",
        "owner",
        "disk_format",
        "container_format",
        "size_min",
        "size_max",
        "protected",
        "os_hidden",
        "member_status",
        "id",
        "min_disk",
        "min_ram",
    ];
    let parse_size = |k: &str| -> Result<Option<u64>, ServiceError> {
        req.q(k)
            .map(|v| {
                v.parse::<u64>()
                    .map_err(|_| ApiError::bad_request(format!("{k} must be an integer")).into())
            })
            .transpose()
    };
    let (size_min, size_max) = (parse_size("size_min")?, parse_size("size_max")?);
    let visibility = req.q("visibility");
    if visibility.is_some_and(|v| !["public", "private", "shared", "community", "all"].contains(&v))
    {
        return Err(ApiError::bad_request(
            "visibility must be public, private, shared, community or all",
        )
        .into());
    }
    let hidden = req.q("os_hidden").map(|v| v == "true");
    let member_filter = req.q("member_status").unwrap_or("accepted");
    // One read of the memberships instead of one per image.
    let mut memberships = std::collections::HashMap::new();
    if let Some(p) = project {
        for m in svc.store.list(Kind::ImageMember, None)? {
            let m: MemberDoc = m.parse()?;
            if m.member_id == p {
                memberships.insert(m.image_id, m.status);
            }
        }
    }
    for (i, (rid, d)) in index.images.iter().enumerate() {
        let ms = memberships.get(rid).cloned();
        if access(ctx, d, ms.as_deref()) == Access::None {
            continue;
        }
        let owned = project == Some(d.owner.as_str());
        let shown = match visibility {
            Some("all") => true,
            Some(v) => d.visibility == v,
            // Default: everything visible except community images of others; shared ones
            // only when the membership is accepted (or the given member_status).
            None => match d.visibility.as_str() {
                "community" => owned,
                "shared" if !owned && !ctx.is_admin() => {
                    member_filter == "all" || ms.as_deref() == Some(member_filter)
                }
                _ => true,
            },
        };
        let keep = shown
            && hidden.unwrap_or(false) == d.os_hidden
            && req.q("name").is_none_or(|n| d.name.as_deref() == Some(n))
            && req.q("status").is_none_or(|s| d.status == s)
            && req.q("owner").is_none_or(|o| d.owner == o)
            && req
                .q("disk_format")
                .is_none_or(|f| d.disk_format.as_deref() == Some(f))
            && req
                .q("container_format")
                .is_none_or(|f| d.container_format.as_deref() == Some(f))
            && req
                .q("protected")
                .is_none_or(|p| (p == "true") == d.protected)
            && req.q("id").is_none_or(|i| {
                i.strip_prefix("in:")
                    .unwrap_or(i)
                    .split(',')
                    .any(|x| x == rid)
            })
            && size_min.is_none_or(|m| d.size.is_some_and(|s| s >= m))
            && size_max.is_none_or(|m| d.size.is_some_and(|s| s <= m))
            && tags.iter().all(|t| d.tags.iter().any(|x| x == t))
            && req
                .query
                .iter()
                .filter(|(k, _)| !known.contains(&k.as_str()))
                .all(|(k, v)| d.properties.get(k) == Some(v));
        if keep {
            images.push(i);
        }
    }
    images.sort_by(|&a, &b| {
        for (k, asc) in &sort {
            let o = compare(&index.images[a], &index.images[b], k);
            let o = if *asc { o } else { o.reverse() };
            if o != std::cmp::Ordering::Equal {
                return o;
            }
        }
        std::cmp::Ordering::Equal
    });
    let start = match req.q("marker") {
        Some(m) => images
            .iter()
            .position(|&i| index.images[i].0 == m)
            .map(|p| p + 1)
            .ok_or_else(|| ApiError::bad_request(format!("marker {m} could not be found")))?,
        None => 0,
    };
    let page: Vec<usize> = images.iter().skip(start).take(limit).copied().collect();
    let mut body = String::from("{\"images\":[");
    for (n, &i) in page.iter().enumerate() {
        if n > 0 {
            body.push(',');
        }
        body.push_str(&index.views[i]);
    }
    body.push_str("],\"first\":\"/v2/images\",\"schema\":\"/v2/schemas/images\"");
    if page.len() == limit
        && start + limit < images.len()
        && let Some(&last) = page.last()
    {
        let mut q: Vec<(String, String)> = req
            .query
            .iter()
            .filter(|(k, _)| k != "marker")
            .cloned()
            .collect();
        q.push(("marker".into(), index.images[last].0.clone()));
        if req.q("limit").is_none() {
            q.push(("limit".into(), limit.to_string()));
        }
        let qs = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(q)
            .finish();
        body.push_str(",\"next\":");
        body.push_str(&Value::String(format!("/v2/images?{qs}")).to_string());
    }
    body.push('}');
    Ok(super::full(StatusCode::OK, "application/json", body))
}

/// A session with objectd for the image container (made or reused).
pub async fn session(svc: &Arc<Service>) -> Result<Session, ServiceError> {
    if let Some(s) = svc.objects.cached_session() {
        return Ok(s);
    }
    let s = match svc.objects.auth() {
        StoreAuth::Tempauth => svc.objects.tempauth_login().await?,
        StoreAuth::Keystone => {
            let svc2 = svc.clone();
            tokio::task::spawn_blocking(move || service_token(&svc2))
                .await
                .map_err(|e| ObjectStoreError::ServiceToken(e.to_string()))??
        }
    };
    svc.objects.ensure_container(&s).await?;
    svc.objects.set_session(s.clone());
    Ok(s)
}

fn service_token(svc: &Service) -> Result<Session, ServiceError> {
    let missing = || {
        ObjectStoreError::ServiceToken(format!(
            "run `control bootstrap` first (no {SERVICE_PROJECT} project or {IMAGE_SERVICE_USER} user)"
        ))
    };
    let project = svc
        .store
        .get_by_name(Kind::Project, DEFAULT_DOMAIN, SERVICE_PROJECT)?
        .ok_or_else(missing)?;
    let user = svc
        .store
        .get_by_name(Kind::User, DEFAULT_DOMAIN, IMAGE_SERVICE_USER)?
        .ok_or_else(missing)?;
    let now = now_secs();
    let expiry = svc.config.token_expiry;
    let claims = Claims {
        methods: method::PASSWORD,
        user_id: user.id,
        scope: Scope::Project(project.id.clone()),
        issued_at_ms: crate::identity::token::now_ms(),
        expires_at: now + expiry.as_secs(),
        audit_id: random_audit_id()?,
        parent_audit_id: None,
        app_cred_id: None,
        trust_id: None,
    };
    let token = svc.keys.seal(&claims)?;
    let renew = expiry
        .saturating_sub(Duration::from_secs(300))
        .max(expiry / 2);
    Ok(Session {
        account_path: format!("{}/v1/AUTH_{}", svc.objects.prefix(), project.id),
        token,
        renew_at: Instant::now() + renew,
    })
}

fn se(e: StoreError) -> ApiError {
    ServiceError::from(e).into()
}

fn object_error(e: ServiceError) -> ApiError {
    match e {
        ServiceError::ObjectStore(o) => {
            tracing::warn!(error = %o, source = ?std::error::Error::source(&o), "image store failed");
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("the image store failed: {o}"),
            )
        }
        other => other.into(),
    }
}

/// The caller's access, image record, checked in the blocking pool.
async fn load_async(
    svc: &Arc<Service>,
    headers: http::HeaderMap,
    id: String,
) -> Result<(Record, ImageDoc, Access), ApiError> {
    blocking(svc.clone(), move |svc| {
        let ctx = ctx_of(svc, &headers)?;
        Ok(load(svc, &ctx, &id)?)
    })
    .await
}

async fn upload(
    svc: Arc<Service>,
    req: http::Request<hyper::body::Incoming>,
    id: String,
) -> Result<Response, ApiError> {
    let (parts, body) = req.into_parts();
    let max = svc.config.raw.images.max_image_size;
    if parts
        .headers
        .get("content-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .is_some_and(|n| n > max)
    {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("Image exceeds the storage quota of {max} bytes"),
        ));
    }
    // queued -> saving, atomically (a second upload gets 409).
    let headers = parts.headers.clone();
    let id2 = id.clone();
    let saving = blocking(svc.clone(), move |svc| {
        let ctx = ctx_of(svc, &headers)?;
        let (rec, mut doc, a) = load(svc, &ctx, &id2)?;
        writable(a)?;
        if doc.status != "queued" {
            return Err(ApiError::conflict(format!(
                "Image status transition from {} to saving is not allowed",
                doc.status
            )));
        }
        doc.status = "saving".into();
        doc.updated_at = now_secs();
        let next = rec.with_doc(None, &doc);
        svc.store
            .update(next.clone())
            .map_err(|e| ApiError::from(stale(e)))?;
        Ok(Record {
            version: next.version + 1,
            ..next
        })
    })
    .await?;
    let result = async {
        let s = session(&svc).await.map_err(object_error)?;
        let hashing = Hashing::new(body, max);
        let digests = hashing.result.clone();
        let too_large = hashing.too_large.clone();
        match svc.objects.put(&s, &id, hashing).await {
            Ok(_etag) => {}
            Err(e) => {
                if *too_large.lock().expect("flag") {
                    return Err(ApiError::new(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        format!("Image exceeds the storage quota of {max} bytes"),
                    ));
                }
                if matches!(e, ObjectStoreError::Status(StatusCode::UNAUTHORIZED, _)) {
                    svc.objects.clear_session();
                }
                if matches!(e, ObjectStoreError::Http(_)) {
                    return Err(ApiError::bad_request(
                        "the image data could not be read to its end",
                    ));
                }
                return Err(object_error(e.into()));
            }
        }
        let d = digests
            .lock()
            .expect("digests")
            .clone()
            .ok_or_else(|| ApiError::bad_request("the image data ended early"))?;
        Ok((s, d))
    }
    .await;
    match result {
        Ok((s, d)) => {
            let id2 = id.clone();
            let done = blocking(svc.clone(), move |svc| {
                let Some(rec) = svc.store.get(Kind::Image, &id2).map_err(se)? else {
                    return Ok(false); // deleted while uploading
                };
                let mut doc: ImageDoc = rec.parse().map_err(se)?;
                doc.status = "active".into();
                doc.size = Some(d.size);
                doc.checksum = Some(d.md5);
                doc.os_hash_algo = Some("sha512".into());
                doc.os_hash_value = Some(d.sha512);
                if doc.disk_format.as_deref() == Some("raw") {
                    doc.virtual_size = Some(d.size);
                }
                doc.updated_at = now_secs();
                svc.store
                    .update(rec.with_doc(None, &doc))
                    .map_err(|e| ApiError::from(stale(e)))?;
                Ok(true)
            })
            .await?;
            if !done {
                let _ = svc.objects.delete(&s, &id).await;
                return Err(ApiError::new(
                    StatusCode::GONE,
                    format!("Image {id} was deleted during the upload"),
                ));
            }
            Ok(empty(StatusCode::NO_CONTENT))
        }
        Err(e) => {
            // Back to queued; the partial object (if any) is removed.
            let _ = blocking(svc.clone(), move |svc| {
                if let Some(rec) = svc.store.get(Kind::Image, &saving.id).map_err(se)? {
                    let mut doc: ImageDoc = rec.parse().map_err(se)?;
                    if doc.status == "saving" {
                        doc.status = "queued".into();
                        let _ = svc.store.update(rec.with_doc(None, &doc));
                    }
                }
                Ok(())
            })
            .await;
            if let Some(s) = svc.objects.cached_session() {
                let _ = svc.objects.delete(&s, &id).await;
            }
            Err(e)
        }
    }
}

async fn download(
    svc: Arc<Service>,
    req: http::Request<hyper::body::Incoming>,
    id: String,
) -> Result<Response, ApiError> {
    let headers = req.headers().clone();
    let id2 = id.clone();
    let (doc, admin) = blocking(svc.clone(), move |svc| {
        let ctx = ctx_of(svc, &headers)?;
        let (_, doc, _) = load(svc, &ctx, &id2)?;
        Ok((doc, ctx.is_admin()))
    })
    .await?;
    if doc.status == "deactivated" && !admin {
        return Err(ApiError::forbidden(
            "The requested image has been deactivated. Image data download is forbidden.",
        ));
    }
    if !matches!(doc.status.as_str(), "active" | "deactivated") || doc.size.is_none() {
        if doc.status == "queued" {
            return Ok(empty(StatusCode::NO_CONTENT));
        }
        return Err(ApiError::forbidden(format!(
            "The image is {}; its data cannot be downloaded.",
            doc.status
        )));
    }
    let s = session(&svc).await.map_err(object_error)?;
    let resp = svc.objects.get(&s, &id).await.map_err(|e| {
        if matches!(e, ObjectStoreError::Status(StatusCode::UNAUTHORIZED, _)) {
            svc.objects.clear_session();
        }
        object_error(e.into())
    })?;
    let len = resp.headers().get("content-length").cloned();
    let body = resp
        .into_body()
        .map_err(|e| -> super::BoxError { Box::new(e) })
        .boxed();
    let mut r = http::Response::new(body);
    let h = r.headers_mut();
    h.insert(
        "content-type",
        HeaderValue::from_static("application/octet-stream"),
    );
    if let Some(l) = len {
        h.insert("content-length", l);
    }
    if let Some(c) = &doc.checksum {
        h.insert("content-md5", HeaderValue::from_str(c).expect("hex"));
    }
    Ok(r)
}

/// Removes an image's data after its record was deleted (called by the router).
pub async fn delete_data(svc: &Arc<Service>, id: &str) {
    match session(svc).await {
        Ok(s) => {
            if let Err(e) = svc.objects.delete(&s, id).await {
                tracing::warn!(image = id, error = %e, "image data left in objectd");
            }
        }
        Err(e) => tracing::warn!(image = id, error = %e, "image data left in objectd"),
    }
}

fn staged_path(svc: &Service, id: &str) -> std::path::PathBuf {
    svc.config.raw.images.staging_dir.join(id)
}

/// Sets an image's status from `from` to `to` (compare-and-swap), checking access.
async fn transition(
    svc: &Arc<Service>,
    headers: http::HeaderMap,
    id: &str,
    from: &'static str,
    to: &'static str,
) -> Result<ImageDoc, ApiError> {
    let id = id.to_string();
    blocking(svc.clone(), move |svc| {
        let ctx = ctx_of(svc, &headers)?;
        let (rec, mut doc, a) = load(svc, &ctx, &id)?;
        writable(a)?;
        if doc.status != from {
            return Err(ApiError::conflict(format!(
                "Image status transition from {} to {to} is not allowed",
                doc.status
            )));
        }
        doc.status = to.into();
        doc.updated_at = now_secs();
        svc.store
            .update(rec.with_doc(None, &doc))
            .map_err(|e| ApiError::from(stale(e)))?;
        Ok(doc)
    })
    .await
}

/// Puts an image back to `queued` after a failed stage or import, noting the import
/// method that failed, if one did.
async fn requeue(svc: &Arc<Service>, id: &str, failed_import: Option<&'static str>) {
    let id = id.to_string();
    let _ = blocking(svc.clone(), move |svc| {
        if let Some(rec) = svc.store.get(Kind::Image, &id).map_err(se)? {
            let mut doc: ImageDoc = rec.parse().map_err(se)?;
            doc.status = "queued".into();
            if let Some(method) = failed_import {
                doc.properties
                    .insert("os_glance_failed_import".into(), method.into());
            }
            let _ = svc.store.update(rec.with_doc(None, &doc));
        }
        Ok(())
    })
    .await;
}

/// `PUT /v2/images/{id}/stage`: the data goes to a local staging file.
async fn stage(
    svc: Arc<Service>,
    req: http::Request<hyper::body::Incoming>,
    id: String,
) -> Result<Response, ApiError> {
    let (parts, mut body) = req.into_parts();
    transition(&svc, parts.headers, &id, "queued", "uploading").await?;
    let result = write_staged(&svc, &id, &mut body).await;
    if let Err(e) = result {
        requeue(&svc, &id, None).await;
        return Err(e);
    }
    Ok(empty(StatusCode::NO_CONTENT))
}

/// Writes an image's data to its staging file: to a `.part` file, synced, then renamed,
/// refusing more than the largest image and a sender idle for two minutes. Nothing is
/// left behind on failure.
async fn write_staged(
    svc: &Arc<Service>,
    id: &str,
    body: &mut hyper::body::Incoming,
) -> Result<(), ApiError> {
    use tokio::io::AsyncWriteExt;
    let max = svc.config.raw.images.max_image_size;
    let path = staged_path(svc, id);
    let part = path.with_extension("part");
    let result: Result<(), ApiError> = async {
        let io = |e: std::io::Error| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("staging failed: {e}"),
            )
        };
        tokio::fs::create_dir_all(&svc.config.raw.images.staging_dir)
            .await
            .map_err(io)?;
        let mut f = tokio::fs::File::create(&part).await.map_err(io)?;
        let mut size = 0u64;
        // A sender that stops sending for this long (a stalled upload or web-download
        // server) fails the transfer instead of holding the image forever.
        let idle = std::time::Duration::from_secs(120);
        while let Some(frame) = tokio::time::timeout(idle, body.frame())
            .await
            .map_err(|_| ApiError::bad_request("the image data stopped coming for 120 s"))?
        {
            let frame = frame.map_err(|_| {
                ApiError::bad_request("the image data could not be read to its end")
            })?;
            if let Some(d) = frame.data_ref() {
                size += d.len() as u64;
                if size > max {
                    return Err(ApiError::new(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        format!("Image exceeds the storage quota of {max} bytes"),
                    ));
                }
                f.write_all(d).await.map_err(io)?;
            }
        }
        super::body_read();
        f.sync_all().await.map_err(io)?;
        tokio::fs::rename(&part, &path).await.map_err(io)?;
        Ok(())
    }
    .await;
    if result.is_err() {
        let _ = tokio::fs::remove_file(&part).await;
    }
    result
}

/// The import methods on offer: `glance-direct`, and `web-download` unless no port is
/// allowed for it.
fn import_methods(svc: &Service) -> Vec<&'static str> {
    let mut m = vec!["glance-direct"];
    if !svc.config.raw.images.web_download_ports.is_empty() {
        m.push("web-download");
    }
    m
}

/// A `web-download` URI control may fetch: `http://host[:port]/...` with a port of
/// `images.web-download-ports`. (control speaks no TLS, so `https` is refused.)
fn web_download_uri(svc: &Service, text: &str) -> Result<http::Uri, ApiError> {
    let uri: http::Uri = text
        .parse()
        .map_err(|_| ApiError::bad_request(format!("{text:?} is not a URI")))?;
    match uri.scheme_str() {
        Some("http") => {}
        Some("https") => {
            return Err(ApiError::bad_request(
                "web-download takes http URIs only (control has no TLS client)",
            ));
        }
        _ => {
            return Err(ApiError::bad_request(format!(
                "{text:?} is not an http URI"
            )));
        }
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(ApiError::bad_request(format!("{text:?} names no host")));
    }
    let port = uri.port_u16().unwrap_or(80);
    let allowed = &svc.config.raw.images.web_download_ports;
    if !allowed.contains(&port) {
        return Err(ApiError::bad_request(format!(
            "web-download from port {port} is not allowed (images.web-download-ports: {allowed:?})"
        )));
    }
    Ok(uri)
}

/// Fetches a web-download URI into the image's staging file. Anything but a 200 fails the
/// import (redirects are not followed).
async fn fetch(svc: &Arc<Service>, id: &str, uri: &http::Uri) -> Result<(), ApiError> {
    use crate::objectstore::{SendError, send_once};
    let failed = |what: String| ApiError::bad_request(format!("web-download of {uri}: {what}"));
    // (An IPv6 host keeps its brackets, as `host:port` needs them.)
    let host = uri.host().unwrap_or_default();
    let addr = format!("{host}:{}", uri.port_u16().unwrap_or(80));
    let authority = uri.authority().map_or(host, |a| a.as_str());
    let req = http::Request::get(uri.path_and_query().map_or("/", |p| p.as_str()))
        .header("host", authority)
        .header("user-agent", "ferrostack-control web-download")
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .map_err(|e| failed(e.to_string()))?;
    let resp = send_once(&addr, Some(std::time::Duration::from_secs(30)), req)
        .await
        .map_err(|e| match e {
            SendError::Connect(e) if e.kind() == std::io::ErrorKind::TimedOut => {
                failed("connecting timed out".into())
            }
            SendError::Connect(e) => failed(format!("cannot connect: {e}")),
            SendError::Http(e) => failed(e.to_string()),
        })?;
    if resp.status() != StatusCode::OK {
        return Err(failed(format!("the server answered {}", resp.status())));
    }
    let mut body = resp.into_body();
    write_staged(svc, id, &mut body).await
}

/// `POST /v2/images/{id}/import`: with `glance-direct` the staged data, with
/// `web-download` data fetched from a URI; 202, then fetch, inspect, convert and store in
/// the background.
async fn import(
    svc: Arc<Service>,
    req: http::Request<hyper::body::Incoming>,
    id: String,
) -> Result<Response, ApiError> {
    let (parts, body) = req.into_parts();
    let body = read_limited(body, svc.config.raw.max_request_body).await?;
    let v: Value = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))?;
    let o = v
        .as_object()
        .ok_or_else(|| ApiError::bad_request("the body must be a JSON object"))?;
    if let Some(k) = o.keys().find(|k| {
        !["method", "stores", "all_stores", "all_stores_must_succeed"].contains(&k.as_str())
    }) {
        return Err(ApiError::bad_request(format!("unexpected key {k:?}")));
    }
    let method = o.get("method");
    let (source, from) = match method.and_then(|m| m.get("name")).and_then(Value::as_str) {
        Some("glance-direct") => {
            if !staged_path(&svc, &id).exists() {
                // Check visibility first so others' images stay 404.
                load_async(&svc, parts.headers.clone(), id.clone()).await?;
                return Err(ApiError::conflict(
                    "Image has no staged data; PUT it to /stage first",
                ));
            }
            (None, "uploading")
        }
        Some("web-download") if !svc.config.raw.images.web_download_ports.is_empty() => {
            let uri = method
                .and_then(|m| m.get("uri"))
                .and_then(Value::as_str)
                .ok_or_else(|| ApiError::bad_request("web-download needs method.uri"))?;
            (Some(web_download_uri(&svc, uri)?), "queued")
        }
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "Import method {other} is not supported; use {}",
                import_methods(&svc).join(" or ")
            )));
        }
        None => return Err(ApiError::bad_request("method.name is required")),
    };
    let method_name = if source.is_some() {
        "web-download"
    } else {
        "glance-direct"
    };
    let doc = transition(&svc, parts.headers.clone(), &id, from, "importing").await?;
    // The import is recorded as a Glance task, finished when the work below ends.
    let request_id = parts
        .extensions
        .get::<super::RequestId>()
        .map(|r| r.0.clone())
        .unwrap_or_default();
    let (headers, id2, owner) = (parts.headers, id.clone(), doc.owner.clone());
    let import_req = v.clone();
    let task = blocking(svc.clone(), move |svc| {
        let ctx = ctx_of(svc, &headers)?;
        let user = ctx.user_id().to_string();
        Ok(super::image_task::start(
            svc,
            &id2,
            &owner,
            &user,
            &request_id,
            import_req,
        )?)
    })
    .await;
    let task = match task {
        Ok(t) => t,
        Err(e) => {
            requeue(&svc, &id, None).await;
            return Err(e);
        }
    };
    let svc2 = svc.clone();
    tokio::spawn(
        async move {
            let outcome = async {
                if let Some(uri) = &source {
                    fetch(&svc2, &id, uri).await?;
                }
                run_import(&svc2, &id, doc.disk_format.clone()).await
            }
            .await;
            if let Err(e) = &outcome {
                tracing::warn!(image = %id, method = method_name, error = %e.message, "image import failed");
                requeue(&svc2, &id, Some(method_name)).await;
            }
            let why = outcome.map_err(|e| e.message);
            let task2 = task.clone();
            let recorded = blocking(svc2.clone(), move |svc| {
                Ok(super::image_task::finish(svc, &task2, why)?)
            })
            .await;
            if let Err(e) = recorded {
                tracing::warn!(image = %id, %task, error = %e.message, "recording the import task failed");
            }
            let staged = staged_path(&svc2, &id);
            let _ = tokio::fs::remove_file(staged.with_extension("raw")).await;
            let _ = tokio::fs::remove_file(&staged).await;
        }
        .in_current_span(),
    );
    Ok(empty(StatusCode::ACCEPTED))
}

async fn run_import(
    svc: &Arc<Service>,
    id: &str,
    declared: Option<String>,
) -> Result<(), ApiError> {
    let staged = staged_path(svc, id);
    let convert = svc.config.raw.images.import_convert_to.clone();
    let (path, format, vsize) = tokio::task::spawn_blocking(move || {
        crate::image::import::prepare(&staged, declared.as_deref(), &convert)
    })
    .await
    .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
    .map_err(|e| ApiError::bad_request(e.to_string()))?;
    let s = session(svc).await.map_err(object_error)?;
    let body = crate::objectstore::FileBody::open(&path)
        .await
        .map_err(|e| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("read staged data: {e}"),
            )
        })?;
    let hashing = Hashing::new(body, svc.config.raw.images.max_image_size);
    let digests = hashing.result.clone();
    svc.objects
        .put(&s, id, hashing)
        .await
        .map_err(|e| object_error(e.into()))?;
    let d = digests
        .lock()
        .expect("digests")
        .clone()
        .ok_or_else(|| ApiError::bad_request("staged data ended early"))?;
    let id2 = id.to_string();
    let stored = blocking(svc.clone(), move |svc| {
        let Some(rec) = svc.store.get(Kind::Image, &id2).map_err(se)? else {
            return Ok(false);
        };
        let mut doc: ImageDoc = rec.parse().map_err(se)?;
        doc.status = "active".into();
        doc.disk_format = Some(format);
        doc.virtual_size = Some(vsize);
        doc.size = Some(d.size);
        doc.checksum = Some(d.md5);
        doc.os_hash_algo = Some("sha512".into());
        doc.os_hash_value = Some(d.sha512);
        doc.properties.remove("os_glance_failed_import");
        doc.updated_at = now_secs();
        svc.store
            .update(rec.with_doc(None, &doc))
            .map_err(|e| ApiError::from(stale(e)))?;
        Ok(true)
    })
    .await?;
    if !stored {
        let _ = svc.objects.delete(&s, id).await;
    }
    Ok(())
}
