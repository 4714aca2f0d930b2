//! Nova v2.1 (microversion 2.1) under `/compute`, the node agents' registration and
//! heartbeat under `/v1/nodes`, and signed image-data URLs under `/v1/image-data` that
//! agents fetch kernels, initrds and root disks from.
//!
//! Server create records the server (BUILD, task `scheduling`) and answers 202; a task then
//! claims a node ([`crate::compute::scheduler::claim`]), sends the placement to the node's
//! agent and polls the agent until the build ends. A build that fails on a node is deleted
//! there, its allocation released, and rescheduled on another node up to
//! `compute.max-build-attempts` times; then the server is ERROR with the fault. Later state
//! changes (a VMM that exits) arrive with the agent's heartbeats.

use std::sync::Arc;
use std::time::Duration;

use http::{HeaderValue, Method, StatusCode};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tracing::Instrument;

use super::openstack::{Stamped, Version, caller, edit, load, owned};
use super::{ApiError, Request, Response, blocking, empty, json as json_resp, read_limited};
use crate::compute::agent::{self, AgentError};
use crate::compute::scheduler::{self, GroupPolicy, Settings};
use crate::compute::{
    ComputeError, Fault, FlavorDoc, KeypairDoc, NodeDoc, NodeService, QuotaDoc, Ratios,
    Registration, Resources, ServerDoc, ServerGroupDoc, ServerPort, ServerVolume, list_nodes,
    load_node,
};
use crate::identity::Ctx;
use crate::identity::token::{Claims, Scope, now_secs, random_audit_id};
use crate::image::{Access, ImageDoc, access};
use crate::service::{Service, ServiceError};
use crate::store::{Kind, Record, StoreError};

/// How long an image-data URL handed to an agent stays valid.
const IMAGE_URL_LIFETIME: u64 = 900;
/// Deadline of one call to an agent (builds are asynchronous on the agent).
const AGENT_CALL: Duration = Duration::from_secs(60);
/// Prefix of the pseudo user id in image-data tokens.
const IMAGE_DATA_SUBJECT: &str = "image-data:";

fn se(e: StoreError) -> ApiError {
    ServiceError::from(e).into()
}

fn ce(e: ComputeError) -> ApiError {
    match e {
        ComputeError::Store(s) => se(s),
        other => ApiError::new(StatusCode::CONFLICT, other.to_string()),
    }
}

pub(crate) async fn read(
    svc: &Arc<Service>,
    req: http::Request<hyper::body::Incoming>,
    segs: Vec<String>,
) -> Result<Request, ApiError> {
    let (parts, body) = req.into_parts();
    let body = read_limited(body, svc.config.raw.max_request_body).await?;
    Ok(Request {
        method: parts.method,
        segs,
        query: parts
            .uri
            .query()
            .map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
            .unwrap_or_default(),
        headers: parts.headers,
        body,
    })
}

/// Every node with whether it is up (heartbeating), for the service and agent lists of
/// Nova, Cinder and Neutron (each node agent is all three).
pub(crate) fn nodes_with_state(svc: &Service) -> Result<Vec<(String, NodeDoc, bool)>, ApiError> {
    let now = now_secs();
    Ok(list_nodes(&*svc.store)
        .map_err(se)?
        .into_iter()
        .map(|(r, d)| {
            let up = d.is_up(now, down_after(svc));
            (r.id, d, up)
        })
        .collect())
}

fn down_after(svc: &Service) -> u64 {
    let c = &svc.config.raw.compute;
    c.heartbeat_interval_secs * c.missed_heartbeats
}

fn settings(svc: &Service) -> Settings {
    Settings {
        down_after: down_after(svc),
        weigher: svc.config.raw.compute.weigher,
    }
}

// ---------------------------------------------------------------------------------------
// Nodes: the agent contract.

/// Routes `/v1/nodes/...` and `/v1/image-data/...` (segments after `v1`).
pub async fn route_v1(
    svc: Arc<Service>,
    req: http::Request<hyper::body::Incoming>,
    segs: Vec<String>,
) -> Result<Response, ApiError> {
    if segs.first().map(String::as_str) == Some("image-data") {
        return image_data(svc, req, &segs[1..]).await;
    }
    let req = read(&svc, req, segs).await?;
    let shared = svc.clone();
    blocking(svc, move |svc| nodes(svc, &req, &shared)).await
}

pub(crate) fn node_auth(svc: &Service, req: &Request) -> Result<(), ApiError> {
    let token = req.header("x-auth-token").unwrap_or("");
    let shared = &svc.config.raw.compute.node_token;
    if !shared.is_empty() && !token.is_empty() {
        use hmac::{KeyInit, Mac};
        // Constant-time comparison through an HMAC verify of both values.
        let mut a = hmac::Hmac::<sha2::Sha256>::new_from_slice(b"node-token").expect("key");
        a.update(shared.as_bytes());
        let mut b = hmac::Hmac::<sha2::Sha256>::new_from_slice(b"node-token").expect("key");
        b.update(token.as_bytes());
        if a.verify(&b.finalize().into_bytes()).is_ok() {
            return Ok(());
        }
    }
    if token.is_empty() {
        return Err(ApiError::unauthorized(
            "The request you have made requires authentication.",
        ));
    }
    let ctx = svc.context(token).map_err(ApiError::from)?;
    if ctx.is_admin() {
        Ok(())
    } else {
        Err(ApiError::forbidden(
            "registering nodes needs the admin role",
        ))
    }
}

fn nodes(svc: &Service, req: &Request, shared: &Arc<Service>) -> Result<Response, ApiError> {
    node_auth(svc, req)?;
    let s: Vec<&str> = req.segs.iter().map(String::as_str).collect();
    let now = now_secs();
    match (s.as_slice(), &req.method) {
        (["nodes"], &Method::GET) => {
            let list: Vec<Value> = list_nodes(&*svc.store)
                .map_err(se)?
                .iter()
                .map(|(r, d)| node_view(svc, &r.id, d, now))
                .collect();
            Ok(json_resp(StatusCode::OK, &json!({"nodes": list})))
        }
        (["nodes", id], &Method::GET) => {
            let (_, d) = load_node(&*svc.store, id)
                .map_err(se)?
                .ok_or_else(|| ApiError::not_found(format!("node {id} not found")))?;
            Ok(json_resp(
                StatusCode::OK,
                &json!({"node": node_view(svc, id, &d, now)}),
            ))
        }
        (["nodes", id], &Method::PUT) => {
            if !valid_id(id) {
                return Err(ApiError::bad_request(
                    "a node id is 1 to 64 of [A-Za-z0-9_-]",
                ));
            }
            #[derive(serde::Deserialize)]
            struct Body {
                node: Registration,
            }
            let b: Body = req.json()?;
            if let Some(u) = &b.node.agent_url
                && !u.starts_with("http://")
            {
                return Err(ApiError::bad_request(format!(
                    "agent_url must be an http:// URL, got {u:?}"
                )));
            }
            let c = &svc.config.raw.compute;
            let ratios = Ratios {
                cpu: c.cpu_allocation_ratio,
                ram: c.ram_allocation_ratio,
                disk: c.disk_allocation_ratio,
            };
            let d = crate::compute::register(&*svc.store, id, &b.node, ratios, now).map_err(ce)?;
            tracing::info!(node = id, host = %d.hostname, url = %d.agent_url, "node registered");
            Ok(json_resp(
                StatusCode::OK,
                &json!({"node": node_view(svc, id, &d, now)}),
            ))
        }
        (["nodes", id, "heartbeat"], &Method::POST) => {
            let b: Value = req.json()?;
            let hb = b
                .get("heartbeat")
                .ok_or_else(|| ApiError::bad_request("the body needs a \"heartbeat\" object"))?;
            let servers = hb
                .get("servers")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            match crate::compute::heartbeat(&*svc.store, id, now).map_err(ce)? {
                None => Err(ApiError::not_found(format!(
                    "node {id} is not registered; register it first"
                ))),
                Some(node) => {
                    crate::network::on_heartbeat(
                        shared,
                        id,
                        &node.agent_url,
                        hb.get("network_generation").and_then(Value::as_u64),
                    );
                    for s in &servers {
                        if let Err(e) = apply_report(svc, id, s) {
                            tracing::warn!(node = id, error = %e, "applying a server report failed");
                        }
                    }
                    Ok(empty(StatusCode::NO_CONTENT))
                }
            }
        }
        (["nodes", id], &Method::DELETE) => {
            let (_, d) = load_node(&*svc.store, id)
                .map_err(se)?
                .ok_or_else(|| ApiError::not_found(format!("node {id} not found")))?;
            if !d.allocations.is_empty() {
                return Err(ApiError::conflict(format!(
                    "node {id} still holds {} servers",
                    d.allocations.len()
                )));
            }
            svc.store.delete(Kind::Node, id).map_err(se)?;
            Ok(empty(StatusCode::NO_CONTENT))
        }
        _ => Err(ApiError::not_found("no such node resource")),
    }
}

fn valid_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Applies one server status from a heartbeat (servers not building and with no action
/// in flight follow what their node reports).
fn apply_report(svc: &Service, node: &str, s: &Value) -> Result<(), ApiError> {
    let Some(id) = s.get("id").and_then(Value::as_str) else {
        return Ok(());
    };
    let Some(status) = s.get("status").and_then(Value::as_str) else {
        return Ok(());
    };
    if s.get("task_state").is_some_and(|t| !t.is_null()) {
        return Ok(());
    }
    let fault = s
        .pointer("/fault/message")
        .and_then(Value::as_str)
        .map(str::to_string);
    update_server(svc, id, |d| {
        if d.node_id.as_deref() != Some(node)
            || d.status == "BUILD"
            || d.task_state.is_some()
            || d.status == status
        {
            return false;
        }
        d.status = status.to_string();
        d.fault = (status == "ERROR").then(|| Fault {
            code: 500,
            message: fault
                .clone()
                .unwrap_or_else(|| "the node reported an error".into()),
            created: now_secs(),
        });
        true
    })
    .map(|_| ())
}

fn node_view(svc: &Service, id: &str, d: &NodeDoc, now: u64) -> Value {
    let used = d.used();
    json!({
        "id": id, "hostname": d.hostname, "agent_url": d.agent_url,
        "availability_zone": d.availability_zone,
        "state": if d.is_up(now, down_after(svc)) { "up" } else { "down" },
        "disabled": d.disabled, "inventory": d.inventory, "ratios": d.ratios,
        "capacity": d.capacity(), "used": used, "servers": d.allocations.len(),
        "last_heartbeat": d.last_heartbeat,
    })
}

// ---------------------------------------------------------------------------------------
// Image data for agents.

/// A URL the agent can fetch an image's bytes from for a while.
pub(crate) fn image_url(svc: &Service, image_id: &str) -> Result<String, ApiError> {
    let now = now_secs();
    let claims = Claims {
        methods: 0,
        user_id: format!("{IMAGE_DATA_SUBJECT}{image_id}"),
        scope: Scope::Unscoped,
        issued_at_ms: crate::identity::token::now_ms(),
        expires_at: now + IMAGE_URL_LIFETIME,
        audit_id: random_audit_id().map_err(|e| ApiError::from(ServiceError::from(e)))?,
        parent_audit_id: None,
        app_cred_id: None,
        trust_id: None,
    };
    let token = svc
        .keys
        .seal(&claims)
        .map_err(|e| ApiError::from(ServiceError::from(e)))?;
    Ok(format!(
        "{}/v1/image-data/{image_id}/{token}",
        svc.config.public_url
    ))
}

async fn image_data(
    svc: Arc<Service>,
    req: http::Request<hyper::body::Incoming>,
    segs: &[String],
) -> Result<Response, ApiError> {
    let [id, token] = segs else {
        return Err(ApiError::not_found("no such image-data URL"));
    };
    if req.method() != Method::GET {
        return Err(ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "only GET"));
    }
    let claims = svc
        .keys
        .open_token(token, now_secs())
        .map_err(|_| ApiError::unauthorized("the image-data URL is invalid or expired"))?;
    if claims.user_id != format!("{IMAGE_DATA_SUBJECT}{id}") {
        return Err(ApiError::unauthorized(
            "the image-data URL is for another image",
        ));
    }
    let id2 = id.clone();
    let doc: ImageDoc = blocking(svc.clone(), move |svc| {
        let r = svc
            .store
            .get(Kind::Image, &id2)
            .map_err(se)?
            .ok_or_else(|| ApiError::not_found(format!("image {id2} not found")))?;
        r.parse().map_err(se)
    })
    .await?;
    if doc.status != "active" {
        return Err(ApiError::conflict(format!("image {id} is {}", doc.status)));
    }
    let s = super::image::session(&svc).await.map_err(|e| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("the image store failed: {e}"),
        )
    })?;
    let resp = svc.objects.get(&s, id).await.map_err(|e| {
        svc.objects.clear_session();
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("the image store failed: {e}"),
        )
    })?;
    let len = resp.headers().get("content-length").cloned();
    let body = resp
        .into_body()
        .map_err(|e| -> super::BoxError { Box::new(e) })
        .boxed();
    let mut r = http::Response::new(body);
    r.headers_mut().insert(
        "content-type",
        HeaderValue::from_static("application/octet-stream"),
    );
    if let Some(l) = len {
        r.headers_mut().insert("content-length", l);
    }
    Ok(r)
}

// ---------------------------------------------------------------------------------------
// Nova.

/// Nova 2.1, the only version.
const NOVA: Version = Version {
    root: "compute/v2.1",
    id: "v2.1",
    version: "2.1",
    updated: "2013-07-23T11:33:21Z",
    media_type: "application/vnd.openstack.compute+json;version=2.1",
    headers: &[
        ("openstack-api-version", "compute 2.1"),
        ("x-openstack-nova-api-version", "2.1"),
        (
            "vary",
            "OpenStack-API-Version, X-OpenStack-Nova-API-Version",
        ),
    ],
};

/// Routes `/compute/...` (segments after `compute`).
pub async fn route(
    svc: Arc<Service>,
    req: http::Request<hyper::body::Incoming>,
    segs: Vec<String>,
    rid: String,
) -> Response {
    // The request's id (which `api::handle` also sends as `x-openstack-request-id`) is
    // the id of any instance action the request records; Nova sends it twice.
    let mut r = NOVA.serve(route_inner(svc, req, segs, rid.clone())).await;
    if let Ok(v) = HeaderValue::from_str(&rid) {
        r.headers_mut().insert("x-compute-request-id", v);
    }
    r
}

async fn route_inner(
    svc: Arc<Service>,
    req: http::Request<hyper::body::Incoming>,
    segs: Vec<String>,
    rid: String,
) -> Result<Response, ApiError> {
    let s: Vec<&str> = segs.iter().map(String::as_str).collect();
    match s.as_slice() {
        [] => return Ok(NOVA.versions(&svc, StatusCode::OK)),
        ["v2.1"] => return Ok(NOVA.current(&svc)),
        ["v2.1", ..] => {}
        _ => return Err(ApiError::not_found("no such compute API version")),
    }
    // Paths may carry the project id after the version (`/v2.1/{project_id}/servers`).
    let mut rest: Vec<String> = segs[1..].to_vec();
    if rest.len() > 1 && rest[0].len() == 32 && rest[0].bytes().all(|b| b.is_ascii_hexdigit()) {
        rest.remove(0);
    }
    let req = read(&svc, req, rest).await?;
    let ctx = caller(&svc, &req).await?;
    if ctx.project_id.is_none() {
        return Err(ApiError::forbidden("compute needs a project-scoped token"));
    }
    super::openstack::writer(&ctx, &req.method)?;
    let segs: Vec<&str> = req.segs.iter().map(String::as_str).collect();
    // Async routes: those that talk to agents.
    match (segs.as_slice(), &req.method) {
        (["servers", id], &Method::DELETE) => {
            return delete_server(svc, ctx, id.to_string(), rid).await;
        }
        (["servers", id, "action"], &Method::POST) => {
            return action(svc, ctx, id.to_string(), req.json()?, rid).await;
        }
        (["servers", id, "os-volume_attachments"], &Method::POST) => {
            return super::volume::attach(svc, ctx, id.to_string(), req.json()?, rid).await;
        }
        (["servers", id, "os-volume_attachments", vid], &Method::DELETE) => {
            return super::volume::detach(svc, ctx, id.to_string(), vid.to_string(), rid).await;
        }
        _ => {}
    }
    let req = Arc::new(req);
    let r2 = req.clone();
    let (resp, build) = blocking(svc.clone(), move |svc| nova(svc, &ctx, &r2, &rid)).await?;
    if let Some(id) = build {
        tokio::spawn(build_server(svc, id).in_current_span());
    }
    Ok(resp)
}

owned!(
    /// Servers: their project's.
    Server: Kind::Server, "Instance", ServerDoc
);

impl Stamped for ServerDoc {
    fn stamp(&mut self, now: u64) {
        self.updated = now;
    }
}

pub(crate) fn load_server(
    svc: &Service,
    ctx: &Ctx,
    id: &str,
) -> Result<(Record, ServerDoc), ApiError> {
    load::<Server>(svc, ctx, id)
}

/// Compare-and-swap edit of a server; `f` returns whether it changed anything. `None`
/// when the server is gone.
pub(crate) fn update_server(
    svc: &Service,
    id: &str,
    mut f: impl FnMut(&mut ServerDoc) -> bool,
) -> Result<Option<ServerDoc>, ApiError> {
    edit(svc, Kind::Server, id, "server", |d| Ok(f(d)))
}

fn nova(
    svc: &Service,
    ctx: &Ctx,
    req: &Request,
    rid: &str,
) -> Result<(Response, Option<String>), ApiError> {
    let s: Vec<&str> = req.segs.iter().map(String::as_str).collect();
    let ok = |v: Value| Ok((json_resp(StatusCode::OK, &v), None));
    if let Some(r) = super::server_meta::handle(svc, ctx, req, &s) {
        return r.map(|r| (r, None));
    }
    if let Some(r) = super::instance_actions::handle(svc, ctx, req, &s) {
        return r.map(|r| (r, None));
    }
    match (s.as_slice(), &req.method) {
        (["flavors"], &Method::GET) => ok(json!({"flavors": flavors(svc, ctx, false)?})),
        (["flavors", "detail"], &Method::GET) => ok(json!({"flavors": flavors(svc, ctx, true)?})),
        (["flavors"], &Method::POST) => {
            let v = create_flavor(svc, ctx, req)?;
            ok(json!({"flavor": v}))
        }
        (["flavors", id], &Method::GET) => {
            let r = svc
                .store
                .get(Kind::ComputeFlavor, id)
                .map_err(se)?
                .ok_or_else(|| ApiError::not_found(format!("Flavor {id} could not be found.")))?;
            ok(json!({"flavor": flavor_view(svc, &r.id, &r.parse().map_err(se)?)}))
        }
        (["flavors", id], &Method::DELETE) => {
            admin(ctx)?;
            if svc
                .store
                .get(Kind::ComputeFlavor, id)
                .map_err(se)?
                .is_none()
            {
                return Err(ApiError::not_found(format!(
                    "Flavor {id} could not be found."
                )));
            }
            svc.store.delete(Kind::ComputeFlavor, id).map_err(se)?;
            Ok((empty(StatusCode::ACCEPTED), None))
        }
        (["flavors", _, "os-extra_specs"], &Method::GET) => ok(json!({"extra_specs": {}})),
        (["os-simple-tenant-usage"], &Method::GET) => ok(super::usage::list(svc, ctx, req)?),
        (["os-simple-tenant-usage", pid], &Method::GET) => {
            ok(super::usage::show(svc, ctx, req, pid)?)
        }
        (["servers"], &Method::GET) => ok(json!({"servers": servers(svc, ctx, req, false)?})),
        (["servers", "detail"], &Method::GET) => {
            ok(json!({"servers": servers(svc, ctx, req, true)?}))
        }
        (["servers"], &Method::POST) => {
            let (v, id) = create_server(svc, ctx, req, rid)?;
            Ok((
                json_resp(StatusCode::ACCEPTED, &json!({"server": v})),
                Some(id),
            ))
        }
        (["servers", id], &Method::GET) => {
            let (_, d) = load_server(svc, ctx, id)?;
            ok(json!({"server": server_view(svc, id, &d, true)}))
        }
        (["servers", id, "os-volume_attachments"], &Method::GET) => {
            let (_, d) = load_server(svc, ctx, id)?;
            let list: Vec<Value> = d
                .volumes
                .iter()
                .map(|v| super::volume::attachment_view(id, v))
                .collect();
            ok(json!({"volumeAttachments": list}))
        }
        (["servers", id, "os-volume_attachments", vid], &Method::GET) => {
            let (_, d) = load_server(svc, ctx, id)?;
            let v = d
                .volumes
                .iter()
                .find(|v| v.volume_id == *vid)
                .ok_or_else(|| {
                    ApiError::not_found(format!("Volume {vid} is not attached to instance {id}."))
                })?;
            ok(json!({"volumeAttachment": super::volume::attachment_view(id, v)}))
        }
        (["servers", id, "os-interface"], &Method::GET) => {
            let (_, d) = load_server(svc, ctx, id)?;
            let list: Vec<Value> = d
                .ports
                .iter()
                .map(|p| {
                    json!({"port_id": p.id, "net_id": p.network_id, "mac_addr": p.mac_address,
                    "port_state": "ACTIVE",
                    "fixed_ips": [{"ip_address": p.ip_address}]})
                })
                .collect();
            ok(json!({"interfaceAttachments": list}))
        }
        (["os-hypervisors"] | ["os-hypervisors", "detail"], &Method::GET) => {
            admin(ctx)?;
            let detail = s.len() == 2;
            let now = now_secs();
            let list: Vec<Value> = list_nodes(&*svc.store)
                .map_err(se)?
                .iter()
                .map(|(r, d)| hypervisor_view(svc, &r.id, d, now, detail))
                .collect();
            ok(json!({"hypervisors": list}))
        }
        (["os-hypervisors", pattern, "search"], &Method::GET) => {
            admin(ctx)?;
            let now = now_secs();
            let list: Vec<Value> = list_nodes(&*svc.store)
                .map_err(se)?
                .iter()
                .filter(|(_, d)| d.hostname.contains(pattern))
                .map(|(r, d)| hypervisor_view(svc, &r.id, d, now, false))
                .collect();
            if list.is_empty() {
                return Err(ApiError::not_found(format!(
                    "No hypervisor matching '{pattern}' could be found."
                )));
            }
            ok(json!({"hypervisors": list}))
        }
        (["os-hypervisors", id, "uptime"], &Method::GET) => {
            admin(ctx)?;
            // Nova answers 501 when the driver cannot tell a host's uptime; clients
            // (`openstack hypervisor show`) then show the hypervisor without it.
            let nodes = list_nodes(&*svc.store).map_err(se)?;
            if !nodes.iter().any(|(r, d)| r.id == *id || d.hostname == *id) {
                return Err(ApiError::not_found(format!(
                    "Hypervisor {id} could not be found."
                )));
            }
            Err(ApiError::new(
                StatusCode::NOT_IMPLEMENTED,
                "node agents do not report their host's uptime",
            ))
        }
        (["os-hypervisors", "statistics"], &Method::GET) => {
            admin(ctx)?;
            ok(json!({"hypervisor_statistics": hypervisor_statistics(svc)?}))
        }
        // Nova's proxy of the project's security groups, which clients still use to find
        // a group by name before `addSecurityGroup`.
        (["os-security-groups"] | ["os-security-groups", "detail"], &Method::GET) => {
            ok(json!({"security_groups": nova_security_groups(svc, ctx, None)?}))
        }
        (["os-security-groups", id], &Method::GET) => {
            let mut found = nova_security_groups(svc, ctx, Some(id))?;
            if found.is_empty() {
                return Err(ApiError::not_found(format!(
                    "Security group {id} not found."
                )));
            }
            ok(json!({"security_group": found.remove(0)}))
        }
        (["os-services"], &Method::GET) => {
            admin(ctx)?;
            let now = now_secs();
            let list: Vec<Value> = list_nodes(&*svc.store)
                .map_err(se)?
                .iter()
                .filter(|(_, d)| req.q("host").is_none_or(|h| h == d.hostname))
                .filter(|_| req.q("binary").is_none_or(|b| b == COMPUTE_BINARY))
                .map(|(r, d)| service_view(svc, &r.id, d, now))
                .collect();
            ok(json!({"services": list}))
        }
        (
            [
                "os-services",
                action @ ("enable" | "disable" | "disable-log-reason"),
            ],
            &Method::PUT,
        ) => {
            admin(ctx)?;
            let (host, binary, reason) = service_change(req, action)?;
            let id = service_node(svc, &host, &binary)?;
            let d = set_service(svc, &id, NodeService::Compute, *action != "enable", reason)?;
            let mut v = json!({"host": d.hostname, "binary": COMPUTE_BINARY,
                               "status": if d.disabled { "disabled" } else { "enabled" }});
            if *action == "disable-log-reason" {
                v["disabled_reason"] = json!(d.disabled_reason);
            }
            ok(json!({"service": v}))
        }
        (["os-services", id], &Method::PUT) => {
            // Microversion 2.53's form, by id: {"status": "disabled", "disabled_reason": ...}.
            admin(ctx)?;
            let b: Value = req.json()?;
            let disabled = match b.get("status").and_then(Value::as_str) {
                Some("disabled") => true,
                Some("enabled") => false,
                _ => {
                    return Err(ApiError::bad_request(
                        "status must be \"enabled\" or \"disabled\"",
                    ));
                }
            };
            let reason = b
                .get("disabled_reason")
                .and_then(Value::as_str)
                .map(str::to_string);
            let d = set_service(svc, id, NodeService::Compute, disabled, reason)?;
            ok(json!({"service": service_view(svc, id, &d, now_secs())}))
        }
        // No host aggregates here: an empty list, so clients listing them (`openstack
        // hypervisor show` does) carry on.
        (["os-aggregates"], &Method::GET) => {
            admin(ctx)?;
            ok(json!({"aggregates": []}))
        }
        (["os-hypervisors", id], &Method::GET) => {
            admin(ctx)?;
            let nodes = list_nodes(&*svc.store).map_err(se)?;
            let (r, d) = nodes
                .iter()
                .find(|(r, d)| r.id == *id || d.hostname == *id)
                .ok_or_else(|| {
                    ApiError::not_found(format!("Hypervisor {id} could not be found."))
                })?;
            ok(json!({"hypervisor": hypervisor_view(svc, &r.id, d, now_secs(), true)}))
        }
        (["os-availability-zone"] | ["os-availability-zone", "detail"], &Method::GET) => {
            let now = now_secs();
            let mut zones: std::collections::BTreeMap<String, bool> = Default::default();
            for (_, d) in list_nodes(&*svc.store).map_err(se)? {
                let up = d.is_up(now, down_after(svc)) && !d.disabled;
                *zones.entry(d.availability_zone.clone()).or_default() |= up;
            }
            let list: Vec<Value> = zones
                .iter()
                .map(
                    |(z, up)| json!({"zoneName": z, "zoneState": {"available": up}, "hosts": null}),
                )
                .collect();
            ok(json!({"availabilityZoneInfo": list}))
        }
        (["os-keypairs"], &Method::GET) => {
            let list: Vec<Value> = svc
                .store
                .list(Kind::Keypair, Some(ctx.user_id()))
                .map_err(se)?
                .iter()
                .filter_map(|r| r.parse::<KeypairDoc>().ok())
                .map(|k| {
                    json!({"keypair": {"name": k.name, "public_key": k.public_key,
                                            "fingerprint": k.fingerprint}})
                })
                .collect();
            ok(json!({"keypairs": list}))
        }
        (["os-keypairs"], &Method::POST) => {
            let v = create_keypair(svc, ctx, req)?;
            ok(json!({"keypair": v}))
        }
        (["os-keypairs", name], &Method::GET) => {
            let k = keypair(svc, ctx, name)?;
            ok(
                json!({"keypair": {"name": k.name, "public_key": k.public_key,
                "fingerprint": k.fingerprint, "user_id": ctx.user_id(), "deleted": false,
                "created_at": crate::time::keystone(k.created), "id": 0}}),
            )
        }
        (["os-keypairs", name], &Method::DELETE) => {
            keypair(svc, ctx, name)?;
            let r = svc
                .store
                .get_by_name(Kind::Keypair, ctx.user_id(), name)
                .map_err(se)?
                .ok_or_else(|| ApiError::not_found("keypair vanished"))?;
            svc.store.delete(Kind::Keypair, &r.id).map_err(se)?;
            Ok((empty(StatusCode::ACCEPTED), None))
        }
        (["os-quota-sets", pid], &Method::GET) => {
            if !ctx.is_admin() && ctx.project_id.as_deref() != Some(*pid) {
                return Err(ApiError::forbidden(
                    "another project's quotas need the admin role",
                ));
            }
            ok(json!({"quota_set": quota_view(pid, &quota(svc, pid)?)}))
        }
        (["os-quota-sets", pid, "defaults"], &Method::GET) => {
            ok(json!({"quota_set": quota_view(pid, &QuotaDoc::default())}))
        }
        (["os-quota-sets", pid], &Method::PUT) => {
            admin(ctx)?;
            let b: Value = req.json()?;
            let set = b
                .get("quota_set")
                .and_then(Value::as_object)
                .ok_or_else(|| ApiError::bad_request("the body needs a \"quota_set\" object"))?;
            let mut q = quota(svc, pid)?;
            for (k, v) in set {
                let n = v.as_i64().filter(|n| *n >= -1);
                let slot = match k.as_str() {
                    "instances" => &mut q.instances,
                    "cores" => &mut q.cores,
                    "ram" => &mut q.ram,
                    "key_pairs" => &mut q.key_pairs,
                    "server_groups" => &mut q.server_groups,
                    "server_group_members" => &mut q.server_group_members,
                    "force" => continue,
                    other => {
                        return Err(ApiError::bad_request(format!("unknown quota {other:?}")));
                    }
                };
                *slot = n.ok_or_else(|| {
                    ApiError::bad_request(format!("quota {k} must be an integer >= -1"))
                })?;
            }
            match svc.store.get(Kind::Quota, pid).map_err(se)? {
                Some(r) => svc.store.update(r.with_doc(None, &q)).map_err(se)?,
                None => svc
                    .store
                    .insert(Record::new(Kind::Quota, pid, "", None, &q))
                    .map_err(se)?,
            }
            ok(json!({"quota_set": quota_view(pid, &q)}))
        }
        (["os-server-groups"], &Method::GET) => {
            let list: Vec<Value> = svc
                .store
                .list(Kind::ServerGroup, ctx.project_id.as_deref())
                .map_err(se)?
                .iter()
                .map(|r| group_view(svc, r))
                .collect::<Result<_, _>>()?;
            ok(json!({"server_groups": list}))
        }
        (["os-server-groups"], &Method::POST) => {
            let b: Value = req.json()?;
            let g = b
                .get("server_group")
                .ok_or_else(|| ApiError::bad_request("the body needs a \"server_group\" object"))?;
            let name = g
                .get("name")
                .and_then(Value::as_str)
                .filter(|n| !n.is_empty() && n.len() <= 255)
                .ok_or_else(|| {
                    ApiError::bad_request("server_group.name must be 1 to 255 characters")
                })?;
            let policy = match g
                .get("policies")
                .and_then(Value::as_array)
                .map(Vec::as_slice)
            {
                Some([p]) => match p.as_str() {
                    Some("affinity") => GroupPolicy::Affinity,
                    Some("anti-affinity") => GroupPolicy::AntiAffinity,
                    _ => {
                        return Err(ApiError::bad_request(
                            "policies must be [\"affinity\"] or [\"anti-affinity\"]",
                        ));
                    }
                },
                _ => {
                    return Err(ApiError::bad_request(
                        "policies must be [\"affinity\"] or [\"anti-affinity\"]",
                    ));
                }
            };
            let id = uuid::Uuid::new_v4().to_string();
            let pid = ctx.project_id.clone().unwrap_or_default();
            let doc = ServerGroupDoc {
                name: name.to_string(),
                policy,
                project_id: pid.clone(),
                user_id: ctx.user_id().to_string(),
                hosts: Default::default(),
            };
            let rec = Record::new(Kind::ServerGroup, &id, &pid, None, &doc);
            svc.store.insert(rec.clone()).map_err(se)?;
            ok(json!({"server_group": group_view(svc, &rec)?}))
        }
        (["os-server-groups", id], &Method::GET | &Method::DELETE) => {
            let r = svc
                .store
                .get(Kind::ServerGroup, id)
                .map_err(se)?
                .filter(|r| ctx.is_admin() || Some(r.scope.as_str()) == ctx.project_id.as_deref())
                .ok_or_else(|| {
                    ApiError::not_found(format!("Instance group {id} could not be found."))
                })?;
            if req.method == Method::DELETE {
                svc.store.delete(Kind::ServerGroup, id).map_err(se)?;
                return Ok((empty(StatusCode::NO_CONTENT), None));
            }
            ok(json!({"server_group": group_view(svc, &r)?}))
        }
        (["limits"], &Method::GET) => {
            let pid = ctx.project_id.clone().unwrap_or_default();
            let q = quota(svc, &pid)?;
            let (n, cores, ram) = usage(svc, &pid)?;
            ok(json!({"limits": {"rate": [], "absolute": {
                "maxTotalInstances": q.instances, "maxTotalCores": q.cores, "maxTotalRAMSize": q.ram,
                "maxTotalKeypairs": q.key_pairs, "maxServerGroups": q.server_groups,
                "maxServerGroupMembers": q.server_group_members, "maxServerMeta": 128,
                "maxImageMeta": 128, "maxPersonality": 5, "maxPersonalitySize": 10240,
                "totalInstancesUsed": n, "totalCoresUsed": cores, "totalRAMUsed": ram,
                "totalServerGroupsUsed": 0}}}))
        }
        _ => Err(ApiError::not_found("The resource could not be found.")),
    }
}

fn admin(ctx: &Ctx) -> Result<(), ApiError> {
    if ctx.is_admin() {
        Ok(())
    } else {
        Err(ApiError::forbidden(
            "Policy doesn't allow this operation (admin only).",
        ))
    }
}

fn group_view(svc: &Service, r: &Record) -> Result<Value, ApiError> {
    let d: ServerGroupDoc = r.parse().map_err(se)?;
    let members: Vec<String> = svc
        .store
        .list(Kind::Server, None)
        .map_err(se)?
        .iter()
        .filter_map(|s| {
            let sd: ServerDoc = s.parse().ok()?;
            (sd.group_id.as_deref() == Some(r.id.as_str())).then(|| s.id.clone())
        })
        .collect();
    Ok(
        json!({"id": r.id, "name": d.name, "policies": [d.policy], "members": members,
              "metadata": {}, "project_id": d.project_id, "user_id": d.user_id}),
    )
}

fn quota(svc: &Service, pid: &str) -> Result<QuotaDoc, ApiError> {
    match svc.store.get(Kind::Quota, pid).map_err(se)? {
        Some(r) => r.parse().map_err(se),
        None => Ok(QuotaDoc::default()),
    }
}

fn quota_view(pid: &str, q: &QuotaDoc) -> Value {
    json!({"id": pid, "instances": q.instances, "cores": q.cores, "ram": q.ram,
           "key_pairs": q.key_pairs, "server_groups": q.server_groups,
           "server_group_members": q.server_group_members, "metadata_items": 128,
           "injected_files": 5, "injected_file_content_bytes": 10240,
           "injected_file_path_bytes": 255, "fixed_ips": -1, "floating_ips": -1,
           "security_groups": -1, "security_group_rules": -1})
}

/// Refuses (403, Nova's message) a server of `flavor` that would take project `pid` over
/// its instances, cores or ram quota. With `stored`, the server is already recorded (the
/// recheck after the insert), so it is left out of the usage it is added to.
fn check_server_quota(
    svc: &Service,
    pid: &str,
    flavor: &FlavorDoc,
    stored: bool,
) -> Result<(), ApiError> {
    let q = quota(svc, pid)?;
    let (mut n, mut cores, mut ram) = usage(svc, pid)?;
    let (vcpus, mib) = (flavor.vcpus as i64, flavor.ram as i64);
    if stored {
        (n, cores, ram) = (n - 1, cores - vcpus, ram - mib);
    }
    for (what, limit, used, add) in [
        ("instances", q.instances, n, 1),
        ("cores", q.cores, cores, vcpus),
        ("ram", q.ram, ram, mib),
    ] {
        if limit >= 0 && used + add > limit {
            return Err(ApiError::forbidden(format!(
                "Quota exceeded for {what}: Requested {add}, but already used {used} of {limit} {what}"
            )));
        }
    }
    Ok(())
}

/// Servers, vCPUs and MiB a project uses.
fn usage(svc: &Service, pid: &str) -> Result<(i64, i64, i64), ApiError> {
    let mut t = (0, 0, 0);
    for r in svc.store.list(Kind::Server, Some(pid)).map_err(se)? {
        let d: ServerDoc = r.parse().map_err(se)?;
        t.0 += 1;
        t.1 += d.flavor.vcpus as i64;
        t.2 += d.flavor.ram as i64;
    }
    Ok(t)
}

fn link(svc: &Service, what: &str, id: &str) -> Value {
    json!([{"rel": "self", "href": format!("{}/compute/v2.1/{what}/{id}", svc.config.public_url)},
           {"rel": "bookmark", "href": format!("{}/compute/{what}/{id}", svc.config.public_url)}])
}

fn flavor_view(svc: &Service, id: &str, f: &FlavorDoc) -> Value {
    json!({"id": id, "name": f.name, "vcpus": f.vcpus, "ram": f.ram, "disk": f.disk,
           "OS-FLV-EXT-DATA:ephemeral": f.ephemeral,
           "swap": if f.swap == 0 { json!("") } else { json!(f.swap) },
           "rxtx_factor": f.rxtx_factor, "os-flavor-access:is_public": f.is_public,
           "OS-FLV-DISABLED:disabled": false, "links": link(svc, "flavors", id)})
}

fn flavors(svc: &Service, ctx: &Ctx, detail: bool) -> Result<Vec<Value>, ApiError> {
    let mut out = Vec::new();
    for r in svc.store.list(Kind::ComputeFlavor, None).map_err(se)? {
        let f: FlavorDoc = r.parse().map_err(se)?;
        if !f.is_public && !ctx.is_admin() {
            continue;
        }
        out.push(if detail {
            flavor_view(svc, &r.id, &f)
        } else {
            json!({"id": r.id, "name": f.name, "links": link(svc, "flavors", &r.id)})
        });
    }
    Ok(out)
}

fn uint(v: &Value, key: &str, required: bool) -> Result<u64, ApiError> {
    match v.get(key) {
        None | Some(Value::Null) if !required => Ok(0),
        None | Some(Value::Null) => Err(ApiError::bad_request(format!("flavor.{key} is required"))),
        Some(x) => x
            .as_u64()
            .or_else(|| x.as_str().and_then(|s| s.parse().ok()))
            .ok_or_else(|| {
                ApiError::bad_request(format!("flavor.{key} must be a non-negative integer"))
            }),
    }
}

fn create_flavor(svc: &Service, ctx: &Ctx, req: &Request) -> Result<Value, ApiError> {
    admin(ctx)?;
    let b: Value = req.json()?;
    let f = b
        .get("flavor")
        .filter(|f| f.is_object())
        .ok_or_else(|| ApiError::bad_request("the body needs a \"flavor\" object"))?;
    let name = f
        .get("name")
        .and_then(Value::as_str)
        .map(str::trim)
        .filter(|n| !n.is_empty() && n.len() <= 255)
        .ok_or_else(|| ApiError::bad_request("flavor.name must be 1 to 255 characters"))?;
    let vcpus = uint(f, "vcpus", true)?;
    let ram = uint(f, "ram", true)?;
    if vcpus == 0 || ram == 0 {
        return Err(ApiError::bad_request(
            "flavor.vcpus and flavor.ram must be at least 1",
        ));
    }
    let doc = FlavorDoc {
        name: name.to_string(),
        vcpus,
        ram,
        disk: uint(f, "disk", true)?,
        ephemeral: uint(f, "OS-FLV-EXT-DATA:ephemeral", false)?,
        swap: uint(f, "swap", false).or_else(|_| {
            if f.get("swap") == Some(&json!("")) {
                Ok(0)
            } else {
                Err(ApiError::bad_request("flavor.swap must be an integer"))
            }
        })?,
        rxtx_factor: f.get("rxtx_factor").and_then(Value::as_f64).unwrap_or(1.0),
        is_public: match f.get("os-flavor-access:is_public") {
            None | Some(Value::Null) => true,
            Some(Value::Bool(b)) => *b,
            Some(_) => {
                return Err(ApiError::bad_request(
                    "os-flavor-access:is_public must be a boolean",
                ));
            }
        },
        description: f
            .get("description")
            .and_then(Value::as_str)
            .map(str::to_string),
    };
    let id = match f.get("id") {
        None | Some(Value::Null) => uuid::Uuid::new_v4().to_string(),
        Some(Value::String(s)) if s == "auto" => uuid::Uuid::new_v4().to_string(),
        Some(Value::String(s)) if valid_id(s) || s.contains('.') => s.clone(),
        Some(Value::Number(n)) => n.to_string(),
        Some(_) => {
            return Err(ApiError::bad_request(
                "flavor.id must be a string of [A-Za-z0-9_.-]",
            ));
        }
    };
    if svc
        .store
        .list(Kind::ComputeFlavor, None)
        .map_err(se)?
        .iter()
        .any(|r| r.parse::<FlavorDoc>().is_ok_and(|d| d.name == doc.name))
    {
        return Err(ApiError::conflict(format!(
            "Flavor with name {name} already exists."
        )));
    }
    match svc
        .store
        .insert(Record::new(Kind::ComputeFlavor, &id, "", Some(name), &doc))
    {
        Err(StoreError::Conflict { .. }) => {
            return Err(ApiError::conflict(format!(
                "Flavor with ID {id} already exists."
            )));
        }
        r => r.map_err(se)?,
    }
    Ok(flavor_view(svc, &id, &doc))
}

fn fingerprint(public_key: &str) -> Result<String, ApiError> {
    use base64::Engine;
    use md5::Digest;
    let mut parts = public_key.split_whitespace();
    let kind = parts.next().unwrap_or("");
    let blob = parts.next().unwrap_or("");
    if !kind.starts_with("ssh-") && !kind.starts_with("ecdsa-") {
        return Err(ApiError::bad_request(
            "public_key must be an OpenSSH public key",
        ));
    }
    let raw = base64::engine::general_purpose::STANDARD
        .decode(blob)
        .map_err(|_| ApiError::bad_request("public_key's key data is not base64"))?;
    let d = md5::Md5::digest(&raw);
    Ok(d.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":"))
}

fn create_keypair(svc: &Service, ctx: &Ctx, req: &Request) -> Result<Value, ApiError> {
    let b: Value = req.json()?;
    let k = b
        .get("keypair")
        .ok_or_else(|| ApiError::bad_request("the body needs a \"keypair\" object"))?;
    let name = k
        .get("name")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty() && n.len() <= 255 && !n.chars().any(char::is_control))
        .ok_or_else(|| {
            ApiError::bad_request("keypair.name must be 1 to 255 printable characters")
        })?;
    let public_key = k.get("public_key").and_then(Value::as_str).ok_or_else(|| {
        ApiError::bad_request(
            "keypair.public_key is required: this cloud does not generate keys (use --public-key)",
        )
    })?;
    // It travels to the guest's config drive: one line of printable ASCII.
    let trimmed = public_key.trim();
    if trimmed.len() > MAX_PUBLIC_KEY || trimmed.bytes().any(|b| !(0x20..0x7f).contains(&b)) {
        return Err(ApiError::bad_request(format!(
            "public_key must be an OpenSSH public key: one line of at most {MAX_PUBLIC_KEY} printable ASCII characters"
        )));
    }
    let doc = KeypairDoc {
        name: name.into(),
        public_key: public_key.trim().into(),
        fingerprint: fingerprint(public_key)?,
        kind: "ssh".into(),
        created: now_secs(),
    };
    let rec = Record::new(
        Kind::Keypair,
        &uuid::Uuid::new_v4().to_string(),
        ctx.user_id(),
        Some(name),
        &doc,
    );
    match svc.store.insert(rec) {
        Err(StoreError::Conflict { .. }) => {
            return Err(ApiError::conflict(format!(
                "Key pair '{name}' already exists."
            )));
        }
        r => r.map_err(se)?,
    }
    Ok(
        json!({"name": doc.name, "public_key": doc.public_key, "fingerprint": doc.fingerprint,
              "user_id": ctx.user_id()}),
    )
}

fn keypair(svc: &Service, ctx: &Ctx, name: &str) -> Result<KeypairDoc, ApiError> {
    svc.store
        .get_by_name(Kind::Keypair, ctx.user_id(), name)
        .map_err(se)?
        .ok_or_else(|| {
            ApiError::not_found(format!(
                "Keypair {name} not found for user {}",
                ctx.user_id()
            ))
        })?
        .parse()
        .map_err(se)
}

/// The service each node agent is, as Nova lists it.
const COMPUTE_BINARY: &str = "nova-compute";

/// A node as Nova's `nova-compute` service (`openstack compute service list`).
fn service_view(svc: &Service, id: &str, d: &NodeDoc, now: u64) -> Value {
    json!({"id": id, "binary": COMPUTE_BINARY, "host": d.hostname,
           "zone": d.availability_zone,
           "status": if d.disabled { "disabled" } else { "enabled" },
           "state": if d.is_up(now, down_after(svc)) { "up" } else { "down" },
           "updated_at": crate::time::keystone(d.last_heartbeat),
           "disabled_reason": d.disabled_reason, "forced_down": false})
}

/// The body of a service `enable`, `disable` or `disable-log-reason` (Nova's and Cinder's
/// share it): host, binary and, for the last, a reason of 1 to 255 characters.
pub(crate) fn service_change(
    req: &Request,
    action: &str,
) -> Result<(String, String, Option<String>), ApiError> {
    let b: Value = req.json()?;
    let field = |k: &str| {
        b.get(k)
            .and_then(Value::as_str)
            .map(str::trim)
            .ok_or_else(|| ApiError::bad_request(format!("'{k}' is a required property")))
    };
    let (host, binary) = (field("host")?, field("binary")?);
    let reason = match action {
        "disable-log-reason" => {
            let r = field("disabled_reason")?;
            if r.is_empty() || r.chars().count() > 255 {
                return Err(ApiError::bad_request(
                    "disabled_reason must be 1 to 255 characters",
                ));
            }
            Some(r.to_string())
        }
        _ => None,
    };
    Ok((host.to_string(), binary.to_string(), reason))
}

/// The node behind service (`host`, `binary`), or Nova's 404.
fn service_node(svc: &Service, host: &str, binary: &str) -> Result<String, ApiError> {
    list_nodes(&*svc.store)
        .map_err(se)?
        .into_iter()
        .find(|(_, d)| binary == COMPUTE_BINARY && d.hostname == host)
        .map(|(r, _)| r.id)
        .ok_or_else(|| {
            ApiError::not_found(format!(
                "Service {binary} on host {host} could not be found."
            ))
        })
}

/// Disables or enables one service of the node `id`, or answers 404.
pub(crate) fn set_service(
    svc: &Service,
    id: &str,
    service: crate::compute::NodeService,
    disabled: bool,
    reason: Option<String>,
) -> Result<NodeDoc, ApiError> {
    crate::compute::set_disabled(&*svc.store, id, service, disabled, reason)
        .map_err(ce)?
        .ok_or_else(|| ApiError::not_found(format!("Service {id} could not be found.")))
}

/// Sums over every node (`GET /os-hypervisors/statistics`).
fn hypervisor_statistics(svc: &Service) -> Result<Value, ApiError> {
    let nodes = list_nodes(&*svc.store).map_err(se)?;
    let (mut vcpus, mut mem, mut disk) = (0u64, 0u64, 0u64);
    let (mut vcpus_used, mut mem_used, mut disk_used) = (0u64, 0u64, 0u64);
    let (mut free_mem, mut free_disk, mut vms) = (0i64, 0i64, 0usize);
    for (_, d) in &nodes {
        let (used, cap) = (d.used(), d.capacity());
        vcpus += d.inventory.vcpus;
        mem += d.inventory.memory_mib;
        disk += d.inventory.disk_gb;
        vcpus_used += used.vcpus;
        mem_used += used.memory_mib;
        disk_used += used.disk_gb;
        free_mem += cap.memory_mib as i64 - used.memory_mib as i64;
        free_disk += cap.disk_gb as i64 - used.disk_gb as i64;
        vms += d.allocations.len();
    }
    Ok(
        json!({"count": nodes.len(), "vcpus": vcpus, "memory_mb": mem, "local_gb": disk,
              "vcpus_used": vcpus_used, "memory_mb_used": mem_used,
              "local_gb_used": disk_used, "free_ram_mb": free_mem, "free_disk_gb": free_disk,
              "current_workload": 0, "running_vms": vms, "disk_available_least": free_disk}),
    )
}

fn hypervisor_view(svc: &Service, id: &str, d: &NodeDoc, now: u64, detail: bool) -> Value {
    let up = d.is_up(now, down_after(svc));
    let mut v = json!({"id": id, "hypervisor_hostname": d.hostname,
        "state": if up { "up" } else { "down" },
        "status": if d.disabled { "disabled" } else { "enabled" }});
    if detail {
        let used = d.used();
        let cap = d.capacity();
        let extra = json!({"vcpus": d.inventory.vcpus, "memory_mb": d.inventory.memory_mib,
            "local_gb": d.inventory.disk_gb, "vcpus_used": used.vcpus,
            "memory_mb_used": used.memory_mib, "local_gb_used": used.disk_gb,
            "free_ram_mb": cap.memory_mib as i64 - used.memory_mib as i64,
            "free_disk_gb": cap.disk_gb as i64 - used.disk_gb as i64,
            "hypervisor_type": "ferrostack-vmm", "hypervisor_version": 1,
            "running_vms": d.allocations.len(), "current_workload": 0,
            "disk_available_least": cap.disk_gb as i64 - used.disk_gb as i64,
            "host_ip": host_of(&d.agent_url), "cpu_info": "{}",
            "service": {"host": d.hostname, "id": id, "disabled_reason": d.disabled_reason}});
        for (k, x) in extra.as_object().expect("object") {
            v[k] = x.clone();
        }
    }
    v
}

fn host_of(url: &str) -> String {
    url.trim_start_matches("http://")
        .split(['/', ':'])
        .next()
        .unwrap_or("")
        .to_string()
}

pub(crate) fn server_view(svc: &Service, id: &str, d: &ServerDoc, detail: bool) -> Value {
    if !detail {
        return json!({"id": id, "name": d.name, "links": link(svc, "servers", id)});
    }
    let mut addresses = serde_json::Map::new();
    for (i, p) in d.ports.iter().enumerate() {
        // Nova keys addresses by network name.
        let label = svc
            .store
            .get(Kind::Network, &p.network_id)
            .ok()
            .flatten()
            .or_else(|| {
                d.networks
                    .get(i)
                    .filter(|(k, _)| k == "network")
                    .and_then(|(_, id)| svc.store.get(Kind::Network, id).ok().flatten())
            })
            .and_then(|r| r.parse::<super::network::NetworkDoc>().ok())
            .map(|n| n.name)
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| p.network_id.clone());
        let net = addresses.entry(label).or_insert_with(|| json!([]));
        if let Some(a) = net.as_array_mut() {
            a.push(
                json!({"version": 4, "addr": p.ip_address, "OS-EXT-IPS:type": "fixed",
                          "OS-EXT-IPS-MAC:mac_addr": p.mac_address}),
            );
            for f in super::neutron::fips_of_port(svc, &p.id) {
                a.push(
                    json!({"version": 4, "addr": f, "OS-EXT-IPS:type": "floating",
                              "OS-EXT-IPS-MAC:mac_addr": p.mac_address}),
                );
            }
        }
    }
    let host_id = d.node_id.as_ref().map(|n| {
        use sha2::Digest;
        hex::encode(sha2::Sha224::digest(
            format!("{}{n}", d.project_id).as_bytes(),
        ))
    });
    let mut v = json!({
        "id": id, "name": d.name, "status": d.status, "tenant_id": d.project_id,
        "user_id": d.user_id, "metadata": d.metadata, "hostId": host_id.unwrap_or_default(),
        "image": if d.boot_volume().is_some() { json!("") } else {
            json!({"id": d.image_id, "links": link(svc, "images", &d.image_id)})
        },
        "flavor": {"id": d.flavor_id, "links": link(svc, "flavors", &d.flavor_id)},
        "created": crate::time::keystone(d.created), "updated": crate::time::keystone(d.updated),
        "addresses": addresses, "accessIPv4": "", "accessIPv6": "",
        "links": link(svc, "servers", id), "OS-DCF:diskConfig": "MANUAL",
        "progress": 0, "OS-EXT-AZ:availability_zone": d.availability_zone.clone().unwrap_or_default(),
        "config_drive": "True", "key_name": d.key_name,
        "OS-SRV-USG:launched_at": d.launched_at.map(crate::time::keystone),
        "OS-SRV-USG:terminated_at": null,
        "OS-EXT-SRV-ATTR:host": d.host, "OS-EXT-SRV-ATTR:hypervisor_hostname": d.host,
        "OS-EXT-SRV-ATTR:instance_name": format!("instance-{}", &id[..8.min(id.len())]),
        "OS-EXT-STS:task_state": d.task_state, "OS-EXT-STS:vm_state": d.vm_state(),
        "OS-EXT-STS:power_state": d.power_state(), "locked": d.locked.is_some(),
        "os-extended-volumes:volumes_attached": d.volumes.iter()
            .map(|v| json!({"id": v.volume_id})).collect::<Vec<_>>(),
        "security_groups": security_groups_view(d),
    });
    v["host_status"] = json!(host_status(svc, d));
    if let Some(f) = &d.fault {
        v["fault"] = json!({"code": f.code, "message": f.message,
                            "created": crate::time::keystone(f.created)});
    }
    v
}

/// Nova's `host_status` (microversion 2.16, shown here at 2.1): `UP`, `MAINTENANCE` for
/// a disabled node, `UNKNOWN` for a node that stopped heartbeating (its servers keep the
/// last status they had, as Nova keeps their `vm_state`), `""` without a node.
fn host_status(svc: &Service, d: &ServerDoc) -> &'static str {
    let Some(node) = &d.node_id else { return "" };
    match load_node(&*svc.store, node) {
        Ok(Some((_, n))) if !n.is_up(now_secs(), down_after(svc)) => "UNKNOWN",
        Ok(Some((_, n))) if n.disabled => "MAINTENANCE",
        Ok(Some(_)) => "UP",
        _ => "UNKNOWN",
    }
}

fn servers(svc: &Service, ctx: &Ctx, req: &Request, detail: bool) -> Result<Vec<Value>, ApiError> {
    let all = ctx.is_admin()
        && req
            .q("all_tenants")
            .is_some_and(|v| v != "0" && v != "false");
    let scope = if all { None } else { ctx.project_id.as_deref() };
    let mut out = Vec::new();
    for r in svc.store.list(Kind::Server, scope).map_err(se)? {
        let d: ServerDoc = r.parse().map_err(se)?;
        if let Some(n) = req.q("name")
            && !d.name.contains(n)
        {
            continue;
        }
        if let Some(st) = req.q("status")
            && !d.status.eq_ignore_ascii_case(st)
        {
            continue;
        }
        out.push((d.created, server_view(svc, &r.id, &d, detail)));
    }
    // Newest first, as Nova lists.
    out.sort_by_key(|a| std::cmp::Reverse(a.0));
    Ok(out.into_iter().map(|(_, v)| v).collect())
}

/// The last path segment of an id or a link.
fn ref_id(v: &str) -> &str {
    v.trim_end_matches('/').rsplit('/').next().unwrap_or(v)
}

fn create_server(
    svc: &Service,
    ctx: &Ctx,
    req: &Request,
    rid: &str,
) -> Result<(Value, String), ApiError> {
    let b: Value = req.json()?;
    let s = b
        .get("server")
        .filter(|s| s.is_object())
        .ok_or_else(|| ApiError::bad_request("the body needs a \"server\" object"))?;
    let name = s
        .get("name")
        .and_then(Value::as_str)
        .map(str::trim)
        .filter(|n| !n.is_empty() && n.len() <= 255)
        .ok_or_else(|| ApiError::bad_request("server.name must be 1 to 255 characters"))?;
    for k in ["min_count", "max_count"] {
        if let Some(v) = s.get(k)
            && v.as_u64()
                .or_else(|| v.as_str().and_then(|x| x.parse().ok()))
                != Some(1)
        {
            return Err(ApiError::bad_request(format!(
                "{k} other than 1 is not supported: create servers one at a time"
            )));
        }
    }
    let (boot, local_image) = parse_bdm(s)?;
    let image_ref = s
        .get("imageRef")
        .and_then(Value::as_str)
        .map(ref_id)
        .filter(|i| !i.is_empty());
    let image_id = match &boot {
        Boot::Image => match (image_ref, local_image.as_deref()) {
            (Some(r), Some(m)) if r != m => {
                return Err(ApiError::bad_request(format!(
                    "Block Device Mapping is Invalid: the boot mapping's image {m} is not imageRef {r}"
                )));
            }
            (Some(i), _) | (None, Some(i)) => i.to_string(),
            (None, None) => return Err(ApiError::bad_request("server.imageRef is required")),
        },
        Boot::ImageToVolume { image, .. } => image.clone(),
        Boot::Volume { id, .. } => {
            let (_, v) = super::volume::load_volume(svc, ctx, id).map_err(|_| {
                ApiError::bad_request(format!(
                    "Block Device Mapping is Invalid: failed to get volume {id}."
                ))
            })?;
            if v.status != "available" {
                return Err(ApiError::bad_request(format!(
                    "Block Device Mapping is Invalid: volume {id} is {}, it must be available.",
                    v.status
                )));
            }
            if !v.image_metadata.contains_key("kernel_id") {
                return Err(ApiError::bad_request(format!(
                    "volume {id} cannot boot here: its volume_image_metadata has no kernel_id (make it from an image that names its kernel)"
                )));
            }
            v.image_id.clone().unwrap_or_default()
        }
    };
    let flavor_id = s
        .get("flavorRef")
        .and_then(|v| {
            v.as_str()
                .map(str::to_string)
                .or_else(|| v.as_u64().map(|n| n.to_string()))
        })
        .map(|v| ref_id(&v).to_string())
        .ok_or_else(|| ApiError::bad_request("server.flavorRef is required"))?;
    let flavor: FlavorDoc = svc
        .store
        .get(Kind::ComputeFlavor, &flavor_id)
        .map_err(se)?
        .ok_or_else(|| ApiError::bad_request(format!("Flavor {flavor_id} could not be found.")))?
        .parse()
        .map_err(se)?;
    if flavor.vcpus > 32 {
        return Err(ApiError::bad_request(
            "flavors of more than 32 vCPUs cannot boot here",
        ));
    }
    // What the boot needs: the image's (or the boot volume's image metadata's) kernel.
    let boot_props = match &boot {
        Boot::Volume { id, .. } => super::volume::load_volume(svc, ctx, id)?.1.image_metadata,
        _ => {
            let img = image_for(svc, ctx, &image_id)?;
            if img.min_ram > flavor.ram {
                return Err(ApiError::bad_request(format!(
                    "Flavor's memory is too small for requested image ({} MiB < {} MiB).",
                    flavor.ram, img.min_ram
                )));
            }
            match &boot {
                Boot::ImageToVolume { size, .. } => {
                    let need = super::volume::image_gb(&img);
                    if *size < need {
                        return Err(ApiError::bad_request(format!(
                            "Block Device Mapping is Invalid: volume_size {size} GiB is smaller than image {image_id}'s {need} GiB."
                        )));
                    }
                }
                _ if flavor.disk > 0 && img.size.unwrap_or(0) > flavor.disk << 30 => {
                    return Err(ApiError::bad_request(
                        "Flavor's disk is too small for requested image.",
                    ));
                }
                _ => {}
            }
            img.properties.into_iter().collect()
        }
    };
    let kernel = boot_props.get("kernel_id").ok_or_else(|| {
        ApiError::bad_request(format!(
            "image {image_id} has no kernel_id property: boot images need a kernel image (kernel_id) and optionally a ramdisk (ramdisk_id)"
        ))
    })?;
    image_for(svc, ctx, kernel)?;
    if let Some(rd) = boot_props.get("ramdisk_id") {
        image_for(svc, ctx, rd)?;
    }
    let mut networks = Vec::new();
    match s.get("networks") {
        None | Some(Value::Null) => {}
        Some(Value::String(x)) if x == "none" || x == "auto" => {}
        Some(Value::Array(a)) => {
            for n in a {
                if let Some(p) = n.get("port").and_then(Value::as_str) {
                    networks.push(("port".to_string(), p.to_string()));
                } else if let Some(u) = n.get("uuid").and_then(Value::as_str) {
                    // A network of control's Neutron must be visible to the caller and
                    // have its subnet; other ids are passed to the node's netdp as they are.
                    if svc.store.get(Kind::Network, u).map_err(se)?.is_some() {
                        super::network::network(svc, ctx, u)?;
                        if super::network::subnet_of(svc, u)?.is_none() {
                            return Err(ApiError::bad_request(format!(
                                "Network {u} requires a subnet in order to boot instances on."
                            )));
                        }
                    }
                    networks.push(("network".to_string(), u.to_string()));
                } else {
                    return Err(ApiError::bad_request(
                        "each networks entry needs a uuid or a port",
                    ));
                }
            }
        }
        Some(_) => {
            return Err(ApiError::bad_request(
                "server.networks must be a list of {uuid|port}, \"auto\" or \"none\"",
            ));
        }
    }
    let (key_name, public_key) = match s.get("key_name").and_then(Value::as_str) {
        Some(k) => {
            let kp = keypair(svc, ctx, k)
                .map_err(|_| ApiError::bad_request(format!("Invalid key_name provided: {k}")))?;
            (Some(k.to_string()), Some(kp.public_key))
        }
        None => (None, None),
    };
    let mut metadata = std::collections::BTreeMap::new();
    if let Some(m) = s.get("metadata").and_then(Value::as_object) {
        for (k, v) in m {
            let v = v
                .as_str()
                .ok_or_else(|| ApiError::bad_request("metadata values must be strings"))?;
            if k.is_empty() || k.len() > 255 || v.len() > 255 {
                return Err(ApiError::bad_request(
                    "Invalid input for field/attribute metadata: keys must be 1 to 255 characters and values at most 255",
                ));
            }
            metadata.insert(k.clone(), v.to_string());
        }
    }
    if metadata.len() > MAX_METADATA_ITEMS {
        return Err(ApiError::forbidden(format!(
            "Quota exceeded for metadata_items: Requested {}, but the limit is {MAX_METADATA_ITEMS}",
            metadata.len()
        )));
    }
    let user_data = user_data(s)?;
    let az = s
        .get("availability_zone")
        .and_then(Value::as_str)
        .map(|z| z.split(':').next().unwrap_or(z).to_string())
        .filter(|z| !z.is_empty());
    let group_id = b
        .pointer("/os:scheduler_hints/group")
        .and_then(Value::as_str)
        .map(str::to_string);
    if let Some(g) = &group_id {
        svc.store
            .get(Kind::ServerGroup, g)
            .map_err(se)?
            .filter(|r| ctx.is_admin() || Some(r.scope.as_str()) == ctx.project_id.as_deref())
            .ok_or_else(|| ApiError::bad_request(format!("Invalid server group {g}")))?;
    }
    let pid = ctx.project_id.clone().unwrap_or_default();
    check_server_quota(svc, &pid, &flavor, false)?;
    // Security groups by name or id (Nova's `security_groups: [{"name": ...}]`).
    let mut sg_names = vec![];
    if let Some(a) = s.get("security_groups").and_then(Value::as_array) {
        for g in a {
            let n = g
                .get("name")
                .and_then(Value::as_str)
                .ok_or_else(|| ApiError::bad_request("security_groups entries need a \"name\""))?;
            sg_names.push(n.to_string());
        }
    }
    let sg_ids = if sg_names.is_empty() {
        None
    } else {
        Some(
            super::neutron::resolve_groups(svc, ctx, &pid, &sg_names)
                .map_err(|e| ApiError::bad_request(e.message))?,
        )
    };
    // Nova shows groups by name (the CLI sends ids when it has Neutron).
    let sg_names: Vec<String> = sg_ids
        .iter()
        .flatten()
        .map(|g| {
            svc.store
                .get(Kind::SecurityGroup, g)
                .ok()
                .flatten()
                .and_then(|r| r.parse::<crate::network::SecurityGroupDoc>().ok())
                .map(|d| d.name)
                .unwrap_or_else(|| g.clone())
        })
        .collect();
    let id = uuid::Uuid::new_v4().to_string();
    let now = now_secs();
    // The boot volume: an existing one taken (available -> in-use), or a new one recorded
    // with the server and made on the node its build lands on.
    let mut new_volume = None;
    let volumes = match &boot {
        Boot::Image => vec![],
        Boot::Volume {
            id: vid,
            delete_on_termination,
        } => {
            super::volume::update_volume(svc, vid, |v| {
                if v.status != "available" {
                    return Err(ApiError::bad_request(format!(
                        "Block Device Mapping is Invalid: volume {vid} is {}, it must be available.",
                        v.status
                    )));
                }
                v.status = "in-use".into();
                v.attachment = Some(super::volume::Attachment {
                    id: uuid::Uuid::new_v4().to_string(),
                    server_id: id.clone(),
                    device: "/dev/vda".into(),
                    attached_at: now,
                });
                Ok(true)
            })?;
            vec![ServerVolume {
                volume_id: vid.clone(),
                device: "/dev/vda".into(),
                boot: true,
                delete_on_termination: *delete_on_termination,
            }]
        }
        Boot::ImageToVolume {
            image,
            size,
            delete_on_termination,
        } => {
            super::volume::check_quota(svc, &pid, 1, 0, *size as i64)?;
            let img = image_for(svc, ctx, image)?;
            let mut v = super::volume::image_volume(ctx, image, &img, *size);
            v.attachment = Some(super::volume::Attachment {
                id: uuid::Uuid::new_v4().to_string(),
                server_id: id.clone(),
                device: "/dev/vda".into(),
                attached_at: now,
            });
            let vid = uuid::Uuid::new_v4().to_string();
            new_volume = Some(Record::new(Kind::Volume, &vid, &pid, None, &v));
            vec![ServerVolume {
                volume_id: vid,
                device: "/dev/vda".into(),
                boot: true,
                delete_on_termination: *delete_on_termination,
            }]
        }
    };
    let (networks, created_ports) = match server_ports(svc, ctx, &pid, &id, networks, sg_ids) {
        Ok(x) => x,
        Err(e) => {
            release_boot_volume(svc, &boot);
            return Err(e);
        }
    };
    let doc = ServerDoc {
        name: name.to_string(),
        project_id: pid.clone(),
        user_id: ctx.user_id().to_string(),
        flavor_id,
        flavor,
        image_id,
        networks,
        key_name,
        public_key,
        metadata,
        user_data,
        availability_zone: az,
        group_id,
        status: "BUILD".into(),
        task_state: Some("scheduling".into()),
        node_id: None,
        host: None,
        tried: vec![],
        fault: None,
        ports: vec![],
        created_ports: created_ports.clone(),
        security_groups: sg_names,
        volumes,
        created: now,
        updated: now,
        launched_at: None,
        locked: None,
    };
    let mut writes = vec![crate::store::Write::Insert(Record::new(
        Kind::Server,
        &id,
        &pid,
        None,
        &doc,
    ))];
    writes.extend(new_volume.map(crate::store::Write::Insert));
    writes.push(crate::store::Write::Insert(
        super::instance_actions::record(
            ctx,
            &id,
            rid,
            super::instance_actions::CREATE,
            Some(super::instance_actions::SCHEDULE_EVENT),
        ),
    ));
    let stored = svc.store.apply(&writes).map_err(se);
    // Nova's quota recheck: a create that raced another past the first check (here or on
    // another controller sharing the store) is seen now, and removed before it is built.
    let recheck = stored.and_then(|()| {
        check_server_quota(svc, &pid, &doc.flavor, true)
            .and_then(|()| match &boot {
                Boot::ImageToVolume { size, .. } => {
                    super::volume::recheck_quota(svc, &pid, 1, 0, *size as i64)
                }
                _ => Ok(()),
            })
            .inspect_err(|_| {
                let undo: Vec<_> = writes
                    .iter()
                    .filter_map(|w| match w {
                        crate::store::Write::Insert(r) => {
                            Some(crate::store::Write::Delete(r.kind, r.id.clone()))
                        }
                        _ => None,
                    })
                    .collect();
                let _ = svc.store.apply(&undo);
            })
    });
    if let Err(e) = recheck {
        release_ports(svc, &id, &doc);
        release_boot_volume(svc, &boot);
        return Err(e);
    }
    let mut v = server_view(svc, &id, &doc, false);
    v["OS-DCF:diskConfig"] = json!("MANUAL");
    v["security_groups"] = security_groups_view(&doc);
    v["adminPass"] = json!("");
    Ok((v, id))
}

/// The longest public key accepted (the agent's limit).
const MAX_PUBLIC_KEY: usize = 16 * 1024;
/// Nova's default `metadata_items` quota.
pub(crate) const MAX_METADATA_ITEMS: usize = 128;
/// Nova's limit on `user_data`: 65535 bytes of base64.
const MAX_USER_DATA: usize = 65535;

/// The request's `user_data`: base64 of at most [`MAX_USER_DATA`] bytes, as Nova checks it.
fn user_data(s: &Value) -> Result<Option<String>, ApiError> {
    use base64::Engine;
    let bad = |why: &str| {
        ApiError::bad_request(format!(
            "Invalid input for field/attribute user_data. {why}"
        ))
    };
    match s.get("user_data") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(u)) => {
            if u.len() > MAX_USER_DATA {
                return Err(bad(&format!(
                    "User data is {} bytes of base64; the limit is {MAX_USER_DATA}",
                    u.len()
                )));
            }
            let compact: String = u.chars().filter(|c| !c.is_ascii_whitespace()).collect();
            base64::engine::general_purpose::STANDARD
                .decode(&compact)
                .map_err(|e| bad(&format!("User data is not valid base64: {e}")))?;
            Ok(Some(u.clone()))
        }
        Some(_) => Err(bad("User data must be a base64 string")),
    }
}

/// Nova's `security_groups` of a server.
fn security_groups_view(d: &ServerDoc) -> Value {
    if d.security_groups.is_empty() {
        json!([{"name": "default"}])
    } else {
        Value::Array(
            d.security_groups
                .iter()
                .map(|n| json!({ "name": n }))
                .collect(),
        )
    }
}

/// A server's requested networks: `("network"|"port", id)`.
type Requested = Vec<(String, String)>;

/// Makes the server's ports in control's Neutron: a new port (with the groups asked for)
/// for each network of control's, the given port bound to the server for each `--port`.
/// Returns the requested networks with control's networks replaced by their new ports,
/// and the ports created. Ids control does not know go to the node as they are.
fn server_ports(
    svc: &Service,
    ctx: &Ctx,
    project: &str,
    server: &str,
    networks: Vec<(String, String)>,
    groups: Option<Vec<String>>,
) -> Result<(Requested, Vec<String>), ApiError> {
    let mut out = vec![];
    let mut created: Vec<String> = vec![];
    let mut bound: Vec<String> = vec![];
    let undo = |created: &[String], bound: &[String]| {
        for p in created {
            if let Ok(Some(r)) = svc.store.get(Kind::Port, p)
                && let Ok(d) = r.parse::<crate::network::PortDoc>()
            {
                let _ = super::neutron::remove_port(svc, p, &d);
            }
        }
        for p in bound {
            let _ = unbind_port(svc, p);
        }
    };
    for (kind, v) in networks {
        let r = match kind.as_str() {
            "network" if svc.store.get(Kind::Network, &v).map_err(se)?.is_some() => {
                super::neutron::insert_port(
                    svc,
                    ctx,
                    project,
                    super::neutron::NewPort {
                        network_id: v.clone(),
                        security_groups: groups.clone(),
                        device_owner: "compute:nova".into(),
                        device_id: server.into(),
                        admin_state_up: true,
                        ..Default::default()
                    },
                )
                .map(|(pid, _)| {
                    created.push(pid.clone());
                    ("port".to_string(), pid)
                })
            }
            "port" if svc.store.get(Kind::Port, &v).map_err(se)?.is_some() => (|| {
                let (r, mut d) = super::neutron::port(svc, ctx, &v)
                    .map_err(|e| ApiError::bad_request(e.message))?;
                if !d.device_id.is_empty() {
                    return Err(ApiError::conflict(format!("Port {v} is still in use.")));
                }
                d.device_id = server.into();
                d.device_owner = "compute:nova".into();
                d.updated = now_secs();
                svc.store.update(r.with_doc(None, &d)).map_err(se)?;
                bound.push(v.clone());
                Ok(("port".to_string(), v.clone()))
            })(),
            _ => Ok((kind.clone(), v.clone())),
        };
        match r {
            Ok(x) => out.push(x),
            Err(e) => {
                undo(&created, &bound);
                return Err(e);
            }
        }
    }
    Ok((out, created))
}

/// Unbinds a port from its server and node.
fn unbind_port(svc: &Service, id: &str) -> Result<(), ApiError> {
    if let Some(r) = svc.store.get(Kind::Port, id).map_err(se)? {
        let mut d: crate::network::PortDoc = r.parse().map_err(se)?;
        d.device_id.clear();
        d.device_owner.clear();
        d.host.clear();
        d.updated = now_secs();
        svc.store.update(r.with_doc(None, &d)).map_err(se)?;
    }
    Ok(())
}

/// Deletes the ports control made for a server and unbinds the ones it was given.
fn release_ports(svc: &Service, id: &str, d: &ServerDoc) {
    for (kind, p) in &d.networks {
        if kind != "port" {
            continue;
        }
        let r = if d.created_ports.contains(p) {
            match svc.store.get(Kind::Port, p) {
                Ok(Some(r)) => match r.parse::<crate::network::PortDoc>() {
                    Ok(doc) => super::neutron::remove_port(svc, p, &doc),
                    Err(e) => Err(se(e)),
                },
                Ok(None) => Ok(()),
                Err(e) => Err(se(e)),
            }
        } else {
            match svc.store.get(Kind::Port, p) {
                Ok(Some(r))
                    if r.parse::<crate::network::PortDoc>()
                        .is_ok_and(|x| x.device_id == id) =>
                {
                    unbind_port(svc, p)
                }
                _ => Ok(()),
            }
        };
        if let Err(e) = r {
            tracing::warn!(server = id, port = %p, error = %e.message, "releasing a port failed");
        }
    }
}

/// How a server boots.
#[derive(Debug, Clone, PartialEq)]
enum Boot {
    /// From its image (a new root volume made by the agent, deleted with the server).
    Image,
    /// From an existing volume.
    Volume {
        id: String,
        delete_on_termination: bool,
    },
    /// From a new volume made from an image (a Cinder volume of its own).
    ImageToVolume {
        image: String,
        size: u64,
        delete_on_termination: bool,
    },
}

/// Reads `block_device_mapping_v2`: nothing, the image itself as the local boot disk
/// (`boot_index` 0, source `image`, destination `local`: what newer clients send for
/// `--image`; the image it names comes back too), or one boot volume (`boot_index` 0,
/// destination `volume`, source `volume` or `image`).
fn parse_bdm(s: &Value) -> Result<(Boot, Option<String>), ApiError> {
    let list = match s.get("block_device_mapping_v2") {
        None | Some(Value::Null) => return Ok((Boot::Image, None)),
        Some(Value::Array(a)) if a.is_empty() => return Ok((Boot::Image, None)),
        Some(Value::Array(a)) => a,
        Some(_) => {
            return Err(ApiError::bad_request(
                "block_device_mapping_v2 must be a list",
            ));
        }
    };
    // With both an image and mappings, novaclient adds the image itself as a local boot
    // mapping: a volume mapping with boot_index 0 overrides it.
    let list: Vec<&Value> = if list.len() > 1 {
        list.iter()
            .filter(|m| {
                !(m.get("source_type").and_then(Value::as_str) == Some("image")
                    && m.get("destination_type").and_then(Value::as_str) == Some("local"))
            })
            .collect()
    } else {
        list.iter().collect()
    };
    let [m] = list.as_slice() else {
        return Err(ApiError::bad_request(
            "Block Device Mapping is Invalid: this cloud supports one mapping, the boot volume (boot_index 0); attach more volumes with os-volume_attachments",
        ));
    };
    let text = |k: &str| m.get(k).and_then(Value::as_str);
    let boot_index = m.get("boot_index").and_then(|v| {
        v.as_i64()
            .or_else(|| v.as_str().and_then(|x| x.parse().ok()))
    });
    if boot_index != Some(0) {
        return Err(ApiError::bad_request(
            "Block Device Mapping is Invalid: the one mapping must be the boot volume (boot_index 0)",
        ));
    }
    let dest = text("destination_type").unwrap_or("volume");
    if dest == "local" && text("source_type") == Some("image") {
        let image = text("uuid").filter(|u| !u.is_empty()).map(str::to_string);
        return Ok((Boot::Image, image));
    }
    if dest != "volume" {
        return Err(ApiError::bad_request(format!(
            "Block Device Mapping is Invalid: destination_type {dest:?} is not supported (only volume)"
        )));
    }
    let uuid = text("uuid")
        .filter(|u| !u.is_empty())
        .ok_or_else(|| ApiError::bad_request("Block Device Mapping is Invalid: uuid is required"))?
        .to_string();
    let delete_on_termination = match m.get("delete_on_termination") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(Value::String(x)) if x.eq_ignore_ascii_case("true") => true,
        Some(Value::String(x)) if x.eq_ignore_ascii_case("false") => false,
        Some(_) => {
            return Err(ApiError::bad_request(
                "Block Device Mapping is Invalid: delete_on_termination must be a boolean",
            ));
        }
    };
    let boot = match text("source_type") {
        Some("volume") => Boot::Volume {
            id: uuid,
            delete_on_termination,
        },
        Some("image") => {
            let size = m
                .get("volume_size")
                .and_then(|v| v.as_u64().or_else(|| v.as_str().and_then(|x| x.parse().ok())))
                .filter(|n| (1..=16384).contains(n))
                .ok_or_else(|| {
                    ApiError::bad_request(
                        "Block Device Mapping is Invalid: volume_size (1 to 16384 GiB) is required for an image source",
                    )
                })?;
            Boot::ImageToVolume {
                image: uuid,
                size,
                delete_on_termination,
            }
        }
        other => {
            return Err(ApiError::bad_request(format!(
                "Block Device Mapping is Invalid: source_type {other:?} is not supported (volume or image)"
            )));
        }
    };
    Ok((boot, None))
}

/// Gives an existing boot volume back (in-use -> available) when its server was not made.
fn release_boot_volume(svc: &Service, boot: &Boot) {
    if let Boot::Volume { id: vid, .. } = boot {
        let _ = super::volume::update_volume(svc, vid, |v| {
            v.status = "available".into();
            v.attachment = None;
            Ok(true)
        });
    }
}

pub(crate) fn image_for(svc: &Service, ctx: &Ctx, id: &str) -> Result<ImageDoc, ApiError> {
    let nf = || ApiError::bad_request(format!("Image {id} could not be found."));
    let r = svc.store.get(Kind::Image, id).map_err(se)?.ok_or_else(nf)?;
    let img: ImageDoc = r.parse().map_err(se)?;
    let member = svc
        .store
        .get_by_name(
            Kind::ImageMember,
            id,
            ctx.project_id.as_deref().unwrap_or(""),
        )
        .ok()
        .flatten()
        .and_then(|m| m.parse::<crate::image::MemberDoc>().ok())
        .map(|m| m.status);
    if access(ctx, &img, member.as_deref()) == Access::None {
        return Err(nf());
    }
    if img.status != "active" {
        return Err(ApiError::bad_request(format!("Image {id} is not active.")));
    }
    Ok(img)
}

// ---------------------------------------------------------------------------------------
// Builds.

fn fail(svc: &Service, id: &str, message: String) {
    tracing::warn!(server = id, %message, "build failed");
    if let Some(rid) = super::instance_actions::create_request(svc, id) {
        super::instance_actions::finish(svc, id, &rid, None, Err(&message));
    }
    let _ = update_server(svc, id, |d| {
        d.status = "ERROR".into();
        d.task_state = None;
        d.fault = Some(Fault {
            code: 500,
            message: message.clone(),
            created: now_secs(),
        });
        true
    });
}

/// Claims a node and builds the placement for the agent.
fn schedule(svc: &Service, id: &str) -> Result<Option<(String, String, Value)>, ApiError> {
    let Some(r) = svc.store.get(Kind::Server, id).map_err(se)? else {
        return Ok(None);
    };
    let d: ServerDoc = r.parse().map_err(se)?;
    // The boot volume, if any: its node (pinned) or none yet (made where the server lands).
    let boot_volume = match d.boot_volume() {
        Some(bv) => {
            let v: super::volume::VolumeDoc = svc
                .store
                .get(Kind::Volume, &bv.volume_id)
                .map_err(se)?
                .ok_or_else(|| {
                    ApiError::bad_request(format!("boot volume {} vanished", bv.volume_id))
                })?
                .parse()
                .map_err(se)?;
            Some((bv.volume_id.clone(), v))
        }
        None => None,
    };
    let (props, image_size): (std::collections::BTreeMap<String, String>, u64) = match &boot_volume
    {
        Some((_, v)) => (v.image_metadata.clone(), 0),
        None => {
            let img: ImageDoc = svc
                .store
                .get(Kind::Image, &d.image_id)
                .map_err(se)?
                .ok_or_else(|| ApiError::bad_request(format!("image {} vanished", d.image_id)))?
                .parse()
                .map_err(se)?;
            (img.properties.into_iter().collect(), img.size.unwrap_or(0))
        }
    };
    let disk_gb = match &boot_volume {
        Some((_, v)) if v.node_id.is_some() => 0,
        Some((_, v)) => v.size,
        None if d.flavor.disk > 0 => d.flavor.disk,
        None => image_size.div_ceil(1 << 30),
    };
    let request = scheduler::Request {
        server_id: id.to_string(),
        project_id: d.project_id.clone(),
        resources: Resources {
            vcpus: d.flavor.vcpus,
            memory_mib: d.flavor.ram,
            disk_gb,
        },
        availability_zone: d.availability_zone.clone(),
        image_properties: props.clone().into_iter().collect(),
        group: None,
        group_id: d.group_id.clone(),
        exclude: d.tried.clone(),
        only_node: boot_volume.as_ref().and_then(|(_, v)| v.node_id.clone()),
    };
    let node_id = match scheduler::claim(&*svc.store, &request, &settings(svc), now_secs()) {
        Ok(n) => n,
        Err(ComputeError::NoValidHost(why)) => {
            let tried = if d.tried.is_empty() {
                String::new()
            } else {
                format!(" (after failed builds on {} node(s))", d.tried.len())
            };
            fail(svc, id, format!("No valid host was found. {why}{tried}"));
            return Ok(None);
        }
        Err(e) => return Err(ce(e)),
    };
    let (_, node) = load_node(&*svc.store, &node_id)
        .map_err(se)?
        .ok_or_else(|| ApiError::conflict("the node vanished"))?;
    let updated = update_server(svc, id, |d| {
        d.node_id = Some(node_id.clone());
        d.host = Some(node.hostname.clone());
        d.availability_zone = Some(node.availability_zone.clone());
        d.task_state = Some("spawning".into());
        true
    })?;
    if updated.is_none() {
        scheduler::release(&*svc.store, &node_id, id, d.group_id.as_deref()).map_err(ce)?;
        return Ok(None);
    }
    let kernel_id = props
        .get("kernel_id")
        .ok_or_else(|| ApiError::bad_request("the boot image has no kernel_id"))?;
    let mut placement = json!({
        "id": id, "name": d.name, "project_id": d.project_id,
        "vcpus": d.flavor.vcpus, "ram_mib": d.flavor.ram,
        "kernel": {"url": image_url(svc, kernel_id)?},
    });
    match &boot_volume {
        // The agent never deletes a Cinder volume with the server: control does, as
        // delete_on_termination says.
        Some((vid, v)) => {
            if v.node_id.is_none() {
                // A new volume from the image: its disk claim is the server's.
                scheduler::move_disk_to_volume(&*svc.store, &node_id, id, vid).map_err(ce)?;
                super::volume::update_volume(svc, vid, |v| {
                    v.node_id = Some(node_id.clone());
                    v.host = Some(node.hostname.clone());
                    Ok(true)
                })?;
            }
            placement["root_disk"] = json!({"volume_id": v.backend_id.clone().unwrap_or_default(),
                                            "delete_on_termination": false});
        }
        None => {
            placement["root_disk"] = json!({"image": {"url": image_url(svc, &d.image_id)?}});
            if d.flavor.disk > 0 {
                placement["root_disk"]["size_bytes"] = json!(d.flavor.disk << 30);
            }
        }
    }
    if let Some(rd) = props.get("ramdisk_id") {
        placement["initrd"] = json!({"url": image_url(svc, rd)?});
    }
    if let Some(cmd) = props.get("os_command_line") {
        placement["cmdline"] = json!(cmd);
    }
    let mut ports: Vec<Value> = Vec::new();
    for (kind, v) in &d.networks {
        let spec = match kind.as_str() {
            "port" => {
                // A port of control's Neutron is bound to the node; the push before the
                // placement puts it on the node's netdp.
                if let Some(r) = svc.store.get(Kind::Port, v).map_err(se)? {
                    let mut p: crate::network::PortDoc = r.parse().map_err(se)?;
                    if p.host != node_id {
                        p.host = node_id.clone();
                        p.updated = now_secs();
                        svc.store.update(r.with_doc(None, &p)).map_err(se)?;
                    }
                }
                json!({"port_id": v})
            }
            _ => match svc.store.get(Kind::Network, v).map_err(se)? {
                Some(r) => {
                    let net: super::network::NetworkDoc = r.parse().map_err(se)?;
                    let (_, sub) = super::network::subnet_of(svc, v)?.ok_or_else(|| {
                        ApiError::bad_request(format!("network {v} has no subnet"))
                    })?;
                    let mut subnet = json!({"cidr": sub.cidr, "enable_dhcp": sub.enable_dhcp});
                    if let Some(g) = &sub.gateway_ip {
                        subnet["gateway_ip"] = json!(g);
                    }
                    json!({"network": {"id": v, "name": if net.name.is_empty() { v.clone() } else { net.name },
                                       "mtu": net.mtu, "subnet": subnet}})
                }
                None => json!({"network_id": v}),
            },
        };
        ports.push(spec);
    }
    placement["ports"] = json!(ports);
    // What the guest reads from its config drive.
    let mut metadata = json!({"properties": d.metadata, "launch_index": 0});
    if !node.availability_zone.is_empty() {
        metadata["availability_zone"] = json!(node.availability_zone);
    }
    if let (Some(k), Some(pk)) = (&d.key_name, &d.public_key) {
        metadata["key_name"] = json!(k);
        metadata["public_key"] = json!(pk);
    }
    if let Some(u) = &d.user_data {
        metadata["user_data"] = json!(u);
    }
    placement["metadata"] = metadata;
    Ok(Some((node_id, node.agent_url, placement)))
}

/// Drives a build: schedule, place, watch, reschedule on failure.
pub async fn build_server(svc: Arc<Service>, id: String) {
    use super::instance_actions::{self as actions, BUILD_EVENT, SCHEDULE_EVENT};
    let max = svc.config.raw.compute.max_build_attempts.max(1);
    let mut last_error = String::new();
    let id2 = id.clone();
    let rid = blocking(svc.clone(), move |svc| {
        Ok(actions::create_request(svc, &id2))
    })
    .await
    .ok()
    .flatten();
    for attempt in 1..=max {
        if attempt > 1 {
            actions::phase(&svc, &id, rid.as_deref(), |svc, id, rid| {
                actions::start_event(svc, id, rid, SCHEDULE_EVENT)
            })
            .await;
        }
        let id2 = id.clone();
        let scheduled = blocking(svc.clone(), move |svc| schedule(svc, &id2)).await;
        let (node, url, mut placement) = match scheduled {
            Ok(Some(x)) => {
                actions::phase(&svc, &id, rid.as_deref(), |svc, id, rid| {
                    actions::finish(svc, id, rid, Some(SCHEDULE_EVENT), Ok(()));
                    actions::start_event(svc, id, rid, BUILD_EVENT);
                })
                .await;
                x
            }
            Ok(None) => return,
            Err(e) => {
                let id2 = id.clone();
                let _ = blocking(svc.clone(), move |svc| {
                    fail(svc, &id2, format!("scheduling failed: {}", e.message));
                    Ok(())
                })
                .await;
                return;
            }
        };
        tracing::info!(server = %id, node = %node, attempt, "placing server");
        // A server booting from a volume stays on the volume's node: no reschedule.
        let pinned = placement.pointer("/root_disk/volume_id").is_some();
        let ready = match crate::network::push(&svc, &node, &url).await {
            Ok(()) => boot_volume_ready(&svc, &id, &url, &mut placement).await,
            Err(e) => Err(format!(
                "{e}: {}",
                std::error::Error::source(&e)
                    .map(|s| s.to_string())
                    .unwrap_or_default()
            )),
        };
        let outcome = match ready {
            Ok(()) => place_and_watch(&svc, &id, &url, &placement).await,
            Err(e) => Err(e),
        };
        let result = outcome.clone();
        actions::phase(&svc, &id, rid.as_deref(), move |svc, id, rid| {
            let result = result.as_ref().map(|_| ()).map_err(String::as_str);
            actions::finish(svc, id, rid, Some(BUILD_EVENT), result);
        })
        .await;
        match outcome {
            Ok(()) => return,
            Err(msg) => {
                last_error = msg;
                tracing::warn!(server = %id, node = %node, error = %last_error, "build failed on node");
                let _ = agent::call(
                    &url,
                    Method::DELETE,
                    &format!("/v1/servers/{id}"),
                    None,
                    AGENT_CALL,
                )
                .await;
                let (id2, node2) = (id.clone(), node.clone());
                let gone = blocking(svc.clone(), move |svc| {
                    let group = svc
                        .store
                        .get(Kind::Server, &id2)
                        .map_err(se)?
                        .and_then(|r| r.parse::<ServerDoc>().ok())
                        .and_then(|d| d.group_id);
                    scheduler::release(&*svc.store, &node2, &id2, group.as_deref()).map_err(ce)?;
                    Ok(update_server(svc, &id2, |d| {
                        d.tried.push(node2.clone());
                        d.node_id = None;
                        d.host = None;
                        d.ports.clear();
                        d.task_state = Some("scheduling".into());
                        true
                    })?
                    .is_none())
                })
                .await;
                if !matches!(gone, Ok(false)) {
                    return;
                }
                if pinned {
                    let id2 = id.clone();
                    let _ = blocking(svc, move |svc| {
                        fail(
                            svc,
                            &id2,
                            format!(
                                "Build of instance {id2} failed on the node of its boot volume (not rescheduled: the volume lives there): {last_error}"
                            ),
                        );
                        Ok(())
                    })
                    .await;
                    return;
                }
            }
        }
    }
    let id2 = id.clone();
    let _ = blocking(svc, move |svc| {
        fail(
            svc,
            &id2,
            format!(
                "Build of instance {id2} was re-scheduled {max} time(s) and failed: {last_error}"
            ),
        );
        Ok(())
    })
    .await;
}

/// For a server booting from a new volume: makes the volume from the image on the node
/// (once) and names it in the placement.
async fn boot_volume_ready(
    svc: &Arc<Service>,
    id: &str,
    url: &str,
    placement: &mut Value,
) -> Result<(), String> {
    if placement
        .pointer("/root_disk/volume_id")
        .is_none_or(|v| v.as_str().is_some_and(|s| !s.is_empty()))
    {
        return Ok(());
    }
    let id2 = id.to_string();
    let (vid, size, image) = blocking(svc.clone(), move |svc| {
        let Some(r) = svc.store.get(Kind::Server, &id2).map_err(se)? else {
            return Err(ApiError::not_found("the server was deleted"));
        };
        let d: ServerDoc = r.parse().map_err(se)?;
        let bv = d
            .boot_volume()
            .ok_or_else(|| ApiError::conflict("no boot volume"))?;
        let v: super::volume::VolumeDoc = svc
            .store
            .get(Kind::Volume, &bv.volume_id)
            .map_err(se)?
            .ok_or_else(|| ApiError::conflict("the boot volume vanished"))?
            .parse()
            .map_err(se)?;
        let image = v.image_id.clone().unwrap_or_default();
        Ok((bv.volume_id.clone(), v.size, image_url(svc, &image)?))
    })
    .await
    .map_err(|e| e.message)?;
    let body = json!({"name": format!("volume-{vid}"), "size_bytes": size << 30,
                      "image": {"url": image}});
    let bid = super::volume::make_volume(svc.clone(), vid, url.to_string(), body)
        .await
        .map_err(|e| format!("creating the boot volume failed: {e}"))?;
    placement["root_disk"]["volume_id"] = json!(bid);
    Ok(())
}

/// Sends the placement and polls the agent until the server leaves BUILD. `Err` is a
/// failed build (to reschedule).
async fn place_and_watch(
    svc: &Arc<Service>,
    id: &str,
    url: &str,
    placement: &Value,
) -> Result<(), String> {
    agent::call(
        url,
        Method::POST,
        "/v1/servers",
        Some(&json!({"server": placement})),
        AGENT_CALL,
    )
    .await
    .map_err(|e| e.to_string())?;
    let deadline = tokio::time::Instant::now()
        + Duration::from_secs(svc.config.raw.compute.build_timeout_secs);
    // Builds take about 70-200 ms on an agent: poll soon, then back off to 500 ms.
    let mut wait = Duration::from_millis(20);
    loop {
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(Duration::from_millis(500));
        if tokio::time::Instant::now() > deadline {
            return Err("the build timed out".into());
        }
        let view = match agent::call(
            url,
            Method::GET,
            &format!("/v1/servers/{id}"),
            None,
            AGENT_CALL,
        )
        .await
        {
            Ok((_, v)) => v,
            Err(AgentError::Status(StatusCode::NOT_FOUND, m)) => {
                return Err(format!("the agent lost the server: {m}"));
            }
            Err(e) => {
                tracing::debug!(server = id, error = %e, "polling the agent failed");
                continue;
            }
        };
        let v = view.get("server").cloned().unwrap_or(view);
        let status = v
            .get("status")
            .and_then(Value::as_str)
            .unwrap_or("BUILD")
            .to_string();
        match status.as_str() {
            "BUILD" => {
                // Still building on the node; has the server been deleted meanwhile?
                let id2 = id.to_string();
                let exists = blocking(svc.clone(), move |svc| {
                    Ok(svc.store.get(Kind::Server, &id2).map_err(se)?.is_some())
                })
                .await
                .unwrap_or(true);
                if !exists {
                    return Err("the server was deleted during its build".into());
                }
            }
            "ERROR" => {
                return Err(v
                    .pointer("/fault/message")
                    .and_then(Value::as_str)
                    .unwrap_or("the build failed on the node")
                    .to_string());
            }
            _ => {
                let ports = agent_ports(&v);
                let id2 = id.to_string();
                let res = blocking(svc.clone(), move |svc| {
                    update_server(svc, &id2, |d| {
                        d.status = status.clone();
                        d.task_state = None;
                        d.fault = None;
                        d.ports = ports.clone();
                        d.launched_at.get_or_insert(now_secs());
                        true
                    })
                })
                .await;
                return match res {
                    Ok(Some(_)) => Ok(()),
                    _ => Err("the server was deleted during its build".into()),
                };
            }
        }
    }
}

fn agent_ports(v: &Value) -> Vec<ServerPort> {
    v.get("ports")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .map(|p| ServerPort {
                    id: p["id"].as_str().unwrap_or("").into(),
                    network_id: p["network_id"].as_str().unwrap_or("").into(),
                    mac_address: p["mac_address"].as_str().unwrap_or("").into(),
                    ip_address: p["ip_address"].as_str().unwrap_or("").into(),
                })
                .collect()
        })
        .unwrap_or_default()
}

async fn node_url(svc: &Arc<Service>, d: &ServerDoc) -> Option<String> {
    let node = d.node_id.clone()?;
    blocking(svc.clone(), move |svc| {
        Ok(load_node(&*svc.store, &node)
            .map_err(se)?
            .map(|(_, n)| n.agent_url))
    })
    .await
    .ok()
    .flatten()
}

async fn delete_server(
    svc: Arc<Service>,
    ctx: Ctx,
    id: String,
    rid: String,
) -> Result<Response, ApiError> {
    use super::instance_actions as actions;
    const EVENT: &str = "compute_terminate_instance";
    let (id2, ctx2, rid2) = (id.clone(), ctx.clone(), rid.clone());
    let (_, d) = blocking(svc.clone(), move |svc| {
        let (r, d) = load_server(svc, &ctx2, &id2)?;
        refuse_if_locked(&ctx2, &id2, &d)?;
        actions::start(svc, &ctx2, &id2, &rid2, "delete", Some(EVENT))?;
        Ok((r, d))
    })
    .await?;
    if let Some(url) = node_url(&svc, &d).await {
        match agent::call(
            &url,
            Method::DELETE,
            &format!("/v1/servers/{id}"),
            None,
            AGENT_CALL,
        )
        .await
        {
            Ok(_) | Err(AgentError::Status(StatusCode::NOT_FOUND, _)) => {}
            Err(e) => {
                let message = format!("deleting the server on its node failed: {e}");
                let (id2, m2) = (id.clone(), message.clone());
                let _ = blocking(svc.clone(), move |svc| {
                    actions::finish(svc, &id2, &rid, Some(EVENT), Err(&m2));
                    Ok(())
                })
                .await;
                return Err(ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, message));
            }
        }
    }
    let volumes = d.volumes.clone();
    let id2 = id.clone();
    let r = blocking(svc.clone(), move |svc| {
        if let Some(n) = &d.node_id {
            scheduler::release(&*svc.store, n, &id2, d.group_id.as_deref()).map_err(ce)?;
        }
        super::usage::delete_server_record(svc, &id2)?;
        release_ports(svc, &id2, &d);
        crate::network::bump(&*svc.store).map_err(se)?;
        Ok(empty(StatusCode::NO_CONTENT))
    })
    .await?;
    tokio::spawn(crate::network::push_all(svc.clone()));
    super::volume::release_server_volumes(&svc, &id, &volumes).await;
    Ok(r)
}

async fn action(
    svc: Arc<Service>,
    ctx: Ctx,
    id: String,
    body: Value,
    rid: String,
) -> Result<Response, ApiError> {
    use super::instance_actions as actions;
    let (id2, ctx2) = (id.clone(), ctx.clone());
    let (_, d) = blocking(svc.clone(), move |svc| load_server(svc, &ctx2, &id2)).await?;
    let name = body
        .as_object()
        .filter(|o| o.len() == 1)
        .and_then(|o| o.keys().next().cloned())
        .ok_or_else(|| ApiError::bad_request("an action body has exactly one key"))?;
    if matches!(
        name.as_str(),
        "lock" | "unlock" | "os-resetState" | "addSecurityGroup" | "removeSecurityGroup"
    ) {
        let (svc2, id2) = (svc.clone(), id.clone());
        let pushed = blocking(svc.clone(), move |svc| {
            let pushed = local_action(svc, &ctx, &id2, &name, &body)?;
            // Nova records lock, unlock and resetState (no events: nothing else runs them),
            // not security group changes.
            let recorded = match name.as_str() {
                "lock" | "unlock" => Some(name.as_str()),
                "os-resetState" => Some("resetState"),
                _ => None,
            };
            if let Some(a) = recorded {
                actions::start(svc, &ctx, &id2, &rid, a, None)?;
            }
            Ok(pushed)
        })
        .await?;
        if pushed {
            tokio::spawn(crate::network::push_all(svc2));
        }
        return Ok(empty(StatusCode::ACCEPTED));
    }
    refuse_if_locked(&ctx, &id, &d)?;
    let (needs, task) = match name.as_str() {
        "os-stop" => (&["ACTIVE", "ERROR"][..], "powering-off"),
        "os-start" => (&["SHUTOFF"][..], "powering-on"),
        "reboot" => (&["ACTIVE", "SHUTOFF", "ERROR"][..], "rebooting"),
        "pause" => (&["ACTIVE"][..], "pausing"),
        "unpause" => (&["PAUSED"][..], "unpausing"),
        "os-getConsoleOutput" => (&["ACTIVE", "SHUTOFF", "PAUSED", "ERROR"][..], ""),
        other => {
            return Err(ApiError::bad_request(format!(
                "unsupported action {other:?}"
            )));
        }
    };
    if name == "reboot" {
        let t = body.pointer("/reboot/type").and_then(Value::as_str);
        if !matches!(t, Some("SOFT" | "HARD")) {
            return Err(ApiError::bad_request("reboot.type must be SOFT or HARD"));
        }
    }
    if !needs.contains(&d.status.as_str()) || d.task_state.is_some() {
        return Err(wrong_state(&name, &id, &d, ""));
    }
    let url = node_url(&svc, &d)
        .await
        .ok_or_else(|| ApiError::conflict(format!("Instance {id} is not on any node")))?;
    let path = format!("/v1/servers/{id}/action");
    if name == "os-getConsoleOutput" {
        let (_, v) = agent::call(&url, Method::POST, &path, Some(&body), AGENT_CALL)
            .await
            .map_err(|e| ApiError::new(StatusCode::CONFLICT, e.to_string()))?;
        return Ok(json_resp(StatusCode::OK, &json!({"output": v["output"]})));
    }
    let (recorded, event) = match name.as_str() {
        "os-stop" => ("stop", "compute_stop_instance"),
        "os-start" => ("start", "compute_start_instance"),
        "reboot" => ("reboot", "compute_reboot_instance"),
        "pause" => ("pause", "compute_pause_instance"),
        _ => ("unpause", "compute_unpause_instance"),
    };
    let (id2, rid2) = (id.clone(), rid.clone());
    let task2 = task.to_string();
    blocking(svc.clone(), move |svc| {
        actions::start(svc, &ctx, &id2, &rid2, recorded, Some(event))?;
        update_server(svc, &id2, |d| {
            d.task_state = Some(task2.clone());
            true
        })
    })
    .await?;
    if let Err(e) = agent::call(&url, Method::POST, &path, Some(&body), AGENT_CALL).await {
        let id2 = id.clone();
        let fault = e.to_string();
        let _ = blocking(svc.clone(), move |svc| {
            actions::finish(svc, &id2, &rid, Some(event), Err(&fault));
            update_server(svc, &id2, |d| {
                d.task_state = None;
                true
            })
        })
        .await;
        return Err(match e {
            AgentError::Status(s, m) if s.is_client_error() => {
                ApiError::new(StatusCode::CONFLICT, m)
            }
            e => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        });
    }
    tokio::spawn(watch_action(svc, id, url, rid, event).in_current_span());
    Ok(empty(StatusCode::ACCEPTED))
}

/// The caller's project's security groups (or the one with id `only`) in Nova's proxy
/// shape, with their ingress rules.
fn nova_security_groups(
    svc: &Service,
    ctx: &Ctx,
    only: Option<&str>,
) -> Result<Vec<Value>, ApiError> {
    use crate::network::{RuleDoc, SecurityGroupDoc, all};
    let pid = ctx.project_id.clone().unwrap_or_default();
    let groups: Vec<(String, SecurityGroupDoc)> =
        all(&*svc.store, Kind::SecurityGroup, Some(&pid)).map_err(se)?;
    let names: std::collections::BTreeMap<&str, &str> = groups
        .iter()
        .map(|(id, g)| (id.as_str(), g.name.as_str()))
        .collect();
    let mut out = vec![];
    for (id, g) in groups.iter().filter(|(id, _)| only.is_none_or(|o| o == id)) {
        let rules: Vec<(String, RuleDoc)> =
            all(&*svc.store, Kind::SecurityGroupRule, Some(id)).map_err(se)?;
        let rules: Vec<Value> = rules
            .iter()
            .filter(|(_, r)| r.direction == "ingress")
            .map(|(rid, r)| {
                let port = |p: Option<u16>| p.map_or(-1, i64::from);
                json!({"id": rid, "parent_group_id": id, "ip_protocol": r.protocol,
                       "from_port": port(r.port_range_min), "to_port": port(r.port_range_max),
                       "ip_range": r.remote_ip_prefix.as_ref()
                           .map_or_else(|| json!({}), |c| json!({"cidr": c})),
                       "group": r.remote_group_id.as_deref()
                           .map_or_else(|| json!({}), |g| json!({"name": names.get(g),
                                                                 "tenant_id": pid}))})
            })
            .collect();
        out.push(
            json!({"id": id, "name": g.name, "description": g.description,
                        "tenant_id": g.project_id, "rules": rules}),
        );
    }
    Ok(out)
}

/// Nova's 409 for `what` (an action) on server `id` in a state that does not allow it;
/// `why` is added to the message.
pub(crate) fn wrong_state(what: &str, id: &str, d: &ServerDoc, why: &str) -> ApiError {
    ApiError::conflict(format!(
        "Cannot '{what}' instance {id} while it is in vm_state {}{}{why}",
        d.vm_state(),
        d.task_state
            .as_ref()
            .map(|t| format!(", task_state {t}"))
            .unwrap_or_default()
    ))
}

/// Nova's 409 for an action on a locked server by anyone but an admin.
pub(crate) fn refuse_if_locked(ctx: &Ctx, id: &str, d: &ServerDoc) -> Result<(), ApiError> {
    if d.locked.is_some() && !ctx.is_admin() {
        return Err(ApiError::conflict(format!("Instance {id} is locked")));
    }
    Ok(())
}

/// The actions control carries out itself: lock and unlock, the admin's state reset, and
/// security groups added to or removed from every port of the server (the nodes then get
/// the new rules). Returns whether the network changed.
fn local_action(
    svc: &Service,
    ctx: &Ctx,
    id: &str,
    name: &str,
    body: &Value,
) -> Result<bool, ApiError> {
    let (_, d) = load_server(svc, ctx, id)?;
    match name {
        "lock" => {
            let by = if ctx.is_admin() { "admin" } else { "owner" };
            update_server(svc, id, |d| {
                d.locked = Some(by.to_string());
                true
            })?;
            Ok(false)
        }
        "unlock" => {
            // An admin's lock is the admin's to lift.
            if d.locked.as_deref() == Some("admin") && !ctx.is_admin() {
                return Err(ApiError::forbidden(
                    "Policy doesn't allow os_compute_api:os-lock-server:unlock:unlock_override to be performed.",
                ));
            }
            update_server(svc, id, |d| d.locked.take().is_some())?;
            Ok(false)
        }
        "os-resetState" => {
            admin(ctx)?;
            let status = match body.pointer("/os-resetState/state").and_then(Value::as_str) {
                Some("error") => "ERROR",
                Some("active") => "ACTIVE",
                _ => {
                    return Err(ApiError::bad_request(
                        "os-resetState.state must be \"error\" or \"active\"",
                    ));
                }
            };
            update_server(svc, id, |d| {
                d.status = status.to_string();
                d.task_state = None;
                true
            })?;
            Ok(false)
        }
        _ => {
            refuse_if_locked(ctx, id, &d)?;
            let add = name == "addSecurityGroup";
            let group = body
                .pointer(&format!("/{name}/name"))
                .and_then(Value::as_str)
                .ok_or_else(|| ApiError::bad_request(format!("{name} needs a \"name\"")))?;
            let gid = super::neutron::resolve_groups(svc, ctx, &d.project_id, &[group.to_string()])
                .map_err(|e| match e.status {
                    StatusCode::NOT_FOUND => ApiError::not_found(format!(
                        "Security group {group} not found for project {}.",
                        d.project_id
                    )),
                    _ => e,
                })?
                .remove(0);
            let gname = svc
                .store
                .get(Kind::SecurityGroup, &gid)
                .map_err(se)?
                .and_then(|r| r.parse::<crate::network::SecurityGroupDoc>().ok())
                .map_or_else(|| gid.clone(), |g| g.name);
            let ports: Vec<(String, crate::network::PortDoc)> =
                crate::network::all(&*svc.store, Kind::Port, None)
                    .map_err(se)?
                    .into_iter()
                    .filter(|(_, p): &(String, crate::network::PortDoc)| p.device_id == id)
                    .collect();
            if ports.is_empty() {
                return Err(ApiError::bad_request(format!(
                    "Instance {id} has no ports to take security group {group}"
                )));
            }
            let has = ports.iter().any(|(_, p)| p.security_groups.contains(&gid));
            if add && has {
                return Err(ApiError::bad_request(format!(
                    "Security group {group} is already associated with the instance {id}"
                )));
            }
            if !add && !has {
                return Err(ApiError::bad_request(format!(
                    "Security Group {group} not associated with the instance {id}"
                )));
            }
            if add && ports.iter().any(|(_, p)| !p.port_security_enabled) {
                return Err(ApiError::bad_request(format!(
                    "Port security must be enabled on every port of instance {id} to add security group {group}"
                )));
            }
            for (pid, _) in &ports {
                edit_port(svc, pid, |p| {
                    if add && !p.security_groups.contains(&gid) {
                        p.security_groups.push(gid.clone());
                    } else if !add {
                        p.security_groups.retain(|g| *g != gid);
                    }
                })?;
            }
            update_server(svc, id, |d| {
                if add && !d.security_groups.contains(&gname) {
                    d.security_groups.push(gname.clone());
                } else if !add {
                    d.security_groups.retain(|g| *g != gname);
                }
                true
            })?;
            crate::network::bump(&*svc.store).map_err(se)?;
            Ok(true)
        }
    }
}

/// Compare-and-swap edit of a Neutron port (its record name kept).
fn edit_port(
    svc: &Service,
    id: &str,
    mut f: impl FnMut(&mut crate::network::PortDoc),
) -> Result<(), ApiError> {
    for _ in 0..32 {
        let Some(r) = svc.store.get(Kind::Port, id).map_err(se)? else {
            return Ok(());
        };
        let mut p: crate::network::PortDoc = r.parse().map_err(se)?;
        f(&mut p);
        p.updated = now_secs();
        match svc.store.update(r.with_doc(r.name.as_deref(), &p)) {
            Ok(()) => return Ok(()),
            Err(StoreError::Stale { .. }) => continue,
            Err(e) => return Err(se(e)),
        }
    }
    Err(ApiError::conflict(format!(
        "port {id} is changing too often; try again"
    )))
}

/// Polls the agent until the action ends, then records the new status.
async fn watch_action(
    svc: Arc<Service>,
    id: String,
    url: String,
    rid: String,
    event: &'static str,
) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(300);
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let done = match agent::call(
            &url,
            Method::GET,
            &format!("/v1/servers/{id}"),
            None,
            AGENT_CALL,
        )
        .await
        {
            Ok((_, v)) => {
                let v = v.get("server").cloned().unwrap_or(v);
                if v.get("task_state").is_some_and(|t| !t.is_null())
                    && tokio::time::Instant::now() < deadline
                {
                    None
                } else {
                    Some(v)
                }
            }
            Err(_) if tokio::time::Instant::now() < deadline => None,
            Err(e) => Some(json!({"status": "ERROR", "fault": {"message": e.to_string()}})),
        };
        let Some(v) = done else { continue };
        let status = v["status"].as_str().unwrap_or("ERROR").to_string();
        let fault = v
            .pointer("/fault/message")
            .and_then(Value::as_str)
            .map(str::to_string);
        let ports = agent_ports(&v);
        let _ = blocking(svc, move |svc| {
            let outcome = match (status.as_str(), &fault) {
                ("ERROR", f) => Err(f.as_deref().unwrap_or("the action failed")),
                _ => Ok(()),
            };
            super::instance_actions::finish(svc, &id, &rid, Some(event), outcome);
            update_server(svc, &id, |d| {
                d.status = status.clone();
                d.task_state = None;
                if !ports.is_empty() {
                    d.ports = ports.clone();
                }
                d.fault = (status == "ERROR").then(|| Fault {
                    code: 500,
                    message: fault.clone().unwrap_or_else(|| "the action failed".into()),
                    created: now_secs(),
                });
                true
            })
        })
        .await;
        return;
    }
}
