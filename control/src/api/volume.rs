//! Cinder v3 (microversion 3.0) under `/volume/v3/{project_id}`: volumes and snapshots
//! kept by control, their bytes on one node's blockdp reached through that node's agent
//! (`/v1/volumes`, `/v1/snapshots`), per-project quotas.
//!
//! Design: control is the source of truth for a volume's status and attachments; the agent
//! only makes, grows and deletes blockdp volumes and snapshots. A new volume is placed by
//! claiming disk on a node ([`scheduler::claim_volume`], a compare-and-swap of the node
//! record like a server's claim): on the node with the most free disk, or on its source
//! snapshot's node. Creation (an image copy may take a while) and snapshots run in the
//! background (`creating` then `available` or `error`); deletes and extends are done before
//! the answer. Attachments (Nova's `os-volume_attachments`, [`attach`] and [`detach`]) go to
//! a server on the volume's node, only while the server is SHUTOFF: the VMM has no drive
//! hot-plug.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use http::{Method, StatusCode};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tracing::Instrument;

use super::openstack::{Owned, Stamped, Version, caller, edit, load, owned, visible};
use super::{ApiError, Request, Response, blocking, empty, json as json_resp};
use crate::compute::agent::{self, AgentError};
use crate::compute::scheduler::{self, Settings};
use crate::compute::{ComputeError, ServerDoc, ServerVolume, load_node};
use crate::identity::Ctx;
use crate::identity::token::now_secs;
use crate::image::ImageDoc;
use crate::service::{Service, ServiceError};
use crate::store::{Kind, Record, StoreError};

/// Deadline of an agent call that copies bytes (a volume from an image or a snapshot).
const AGENT_COPY: Duration = Duration::from_secs(600);
/// Deadline of other agent calls.
const AGENT_CALL: Duration = Duration::from_secs(60);
/// Image properties a volume made from an image keeps (`volume_image_metadata`), so a
/// server booted from it finds its kernel.
const KEPT_IMAGE_PROPERTIES: [&str; 5] = [
    "kernel_id",
    "ramdisk_id",
    "os_command_line",
    "architecture",
    "hypervisor_type",
];

/// A server's use of a volume.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Attachment {
    /// The attachment's id.
    pub id: String,
    /// The server.
    pub server_id: String,
    /// `/dev/vda` (the boot volume), `/dev/vdb`, ...
    pub device: String,
    /// Epoch seconds.
    pub attached_at: u64,
}

/// A volume.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VolumeDoc {
    /// Display name.
    #[serde(default)]
    pub name: String,
    /// Description.
    #[serde(default)]
    pub description: Option<String>,
    /// Owner.
    pub project_id: String,
    /// Creator.
    pub user_id: String,
    /// Size in GiB.
    pub size: u64,
    /// creating, available, in-use, attaching, detaching, extending, deleting, error,
    /// error_deleting, error_extending.
    pub status: String,
    /// The node whose blockdp holds it.
    #[serde(default)]
    pub node_id: Option<String>,
    /// That node's host name.
    #[serde(default)]
    pub host: Option<String>,
    /// blockdp's id of the volume, once made.
    #[serde(default)]
    pub backend_id: Option<String>,
    /// Made from an image with a kernel: a server can boot from it.
    #[serde(default)]
    pub bootable: bool,
    /// The image it was made from.
    #[serde(default)]
    pub image_id: Option<String>,
    /// `volume_image_metadata`: the image's id, name and boot properties.
    #[serde(default)]
    pub image_metadata: BTreeMap<String, String>,
    /// The snapshot it was made from.
    #[serde(default)]
    pub snapshot_id: Option<String>,
    /// The server using it.
    #[serde(default)]
    pub attachment: Option<Attachment>,
    /// Metadata.
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
    /// Why it is in an error state.
    #[serde(default)]
    pub fault: Option<String>,
    /// Epoch seconds.
    pub created: u64,
    /// Epoch seconds.
    pub updated: u64,
}

/// A snapshot.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SnapshotDoc {
    /// Display name.
    #[serde(default)]
    pub name: String,
    /// Description.
    #[serde(default)]
    pub description: Option<String>,
    /// Owner.
    pub project_id: String,
    /// Creator.
    pub user_id: String,
    /// The volume it was taken of.
    pub volume_id: String,
    /// Size in GiB (the volume's then).
    pub size: u64,
    /// creating, available, deleting, error.
    pub status: String,
    /// The node holding it (the volume's).
    pub node_id: String,
    /// blockdp's id of the snapshot, once made.
    #[serde(default)]
    pub backend_id: Option<String>,
    /// Why it is in error.
    #[serde(default)]
    pub fault: Option<String>,
    /// Epoch seconds.
    pub created: u64,
    /// Epoch seconds.
    pub updated: u64,
}

/// Per-project block-storage quotas (absent: the defaults; -1 unlimited).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct VolumeQuotaDoc {
    /// Volumes.
    pub volumes: i64,
    /// Snapshots.
    pub snapshots: i64,
    /// GiB of volumes and snapshots.
    pub gigabytes: i64,
    /// Largest volume in GiB.
    pub per_volume_gigabytes: i64,
}

impl Default for VolumeQuotaDoc {
    fn default() -> Self {
        VolumeQuotaDoc {
            volumes: 10,
            snapshots: 10,
            gigabytes: 1000,
            per_volume_gigabytes: -1,
        }
    }
}

fn se(e: StoreError) -> ApiError {
    ServiceError::from(e).into()
}

fn ce(e: ComputeError) -> ApiError {
    match e {
        ComputeError::Store(s) => se(s),
        ComputeError::NoValidHost(why) => {
            ApiError::bad_request(format!("No valid backend was found. {why}"))
        }
        other => ApiError::conflict(other.to_string()),
    }
}

/// An agent's refusal as the API's answer: its 4xx kept, anything else a 500.
fn ae(what: &str, e: AgentError) -> ApiError {
    match e {
        AgentError::Status(s, m) if s.is_client_error() => {
            ApiError::new(s, format!("{what}: the node refused: {m}"))
        }
        e => ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("{what} failed: {e}"),
        ),
    }
}

fn settings(svc: &Service) -> Settings {
    let c = &svc.config.raw.compute;
    Settings {
        down_after: c.heartbeat_interval_secs * c.missed_heartbeats,
        weigher: c.weigher,
    }
}

/// Cinder 3.0, the only version.
const CINDER: Version = Version {
    root: "volume/v3",
    id: "v3.0",
    version: "3.0",
    updated: "2016-02-08T12:20:21Z",
    media_type: "application/vnd.openstack.volume+json;version=3",
    headers: &[
        ("openstack-api-version", "volume 3.0"),
        ("vary", "OpenStack-API-Version"),
    ],
};

/// Routes `/volume/...` (segments after `volume`).
pub async fn route(
    svc: Arc<Service>,
    req: http::Request<hyper::body::Incoming>,
    segs: Vec<String>,
) -> Response {
    CINDER.serve(route_inner(svc, req, segs)).await
}

async fn route_inner(
    svc: Arc<Service>,
    req: http::Request<hyper::body::Incoming>,
    segs: Vec<String>,
) -> Result<Response, ApiError> {
    let s: Vec<&str> = segs.iter().map(String::as_str).collect();
    match s.as_slice() {
        [] => return Ok(CINDER.versions(&svc, StatusCode::MULTIPLE_CHOICES)),
        ["v3"] => return Ok(CINDER.versions(&svc, StatusCode::OK)),
        ["v3", ..] => {}
        _ => return Err(ApiError::not_found("no such volume API version")),
    }
    let rest: Vec<String> = segs[1..].to_vec();
    let req = super::compute::read(&svc, req, rest).await?;
    let ctx = caller(&svc, &req).await?;
    super::openstack::writer(&ctx, &req.method)?;
    let Some(own) = ctx.project_id.clone() else {
        return Err(ApiError::forbidden(
            "the volume API needs a project-scoped token",
        ));
    };
    let Some((pid, rest)) = req.segs.split_first() else {
        return Err(ApiError::not_found("the path needs a project id"));
    };
    if *pid != own && !ctx.is_admin() {
        return Err(ApiError::forbidden(format!(
            "the token is scoped to project {own}, not {pid}"
        )));
    }
    let rest: Vec<&str> = rest.iter().map(String::as_str).collect();
    match (rest.as_slice(), &req.method) {
        ([], &Method::GET) => Ok(CINDER.current(&svc)),
        (["volumes"], &Method::POST) => create_volume(svc, ctx, req.json()?).await,
        (["volumes", id], &Method::DELETE) => delete_volume(svc, ctx, id.to_string()).await,
        (["volumes", id, "action"], &Method::POST) => {
            volume_action(svc, ctx, id.to_string(), req.json()?).await
        }
        (["snapshots"], &Method::POST) => create_snapshot(svc, ctx, req.json()?).await,
        (["snapshots", id], &Method::DELETE) => delete_snapshot(svc, ctx, id.to_string()).await,
        _ => {
            let req = Arc::new(req);
            blocking(svc, move |svc| handle(svc, &ctx, &req)).await
        }
    }
}

owned!(
    /// Volumes: their project's.
    Volume: Kind::Volume, "Volume", VolumeDoc
);

impl Stamped for VolumeDoc {
    fn stamp(&mut self, now: u64) {
        self.updated = now;
    }
}

owned!(
    /// Snapshots: their volume's project's.
    Snapshot: Kind::VolumeSnapshot, "Snapshot", SnapshotDoc
);

impl Stamped for SnapshotDoc {
    fn stamp(&mut self, now: u64) {
        self.updated = now;
    }
}

/// A volume by id, visible to the caller.
pub fn load_volume(svc: &Service, ctx: &Ctx, id: &str) -> Result<(Record, VolumeDoc), ApiError> {
    load::<Volume>(svc, ctx, id)
}

fn load_snapshot(svc: &Service, ctx: &Ctx, id: &str) -> Result<(Record, SnapshotDoc), ApiError> {
    load::<Snapshot>(svc, ctx, id)
}

/// Compare-and-swap edit of a volume; `f` returns whether it changed anything, or an error
/// that aborts. `None` when the volume is gone.
pub fn update_volume(
    svc: &Service,
    id: &str,
    f: impl FnMut(&mut VolumeDoc) -> Result<bool, ApiError>,
) -> Result<Option<VolumeDoc>, ApiError> {
    edit(svc, Kind::Volume, id, "volume", f)
}

/// Moves a volume from status `from` to `to`; 400 "Invalid volume: volume ID `is` STATUS"
/// when it is in another. `None` when the volume is gone.
fn transition(
    svc: &Service,
    id: &str,
    from: &str,
    to: &str,
    is: &str,
) -> Result<Option<VolumeDoc>, ApiError> {
    update_volume(svc, id, |d| {
        if d.status != from {
            return Err(ApiError::bad_request(format!(
                "Invalid volume: volume {id} {is} {}",
                d.status
            )));
        }
        d.status = to.into();
        Ok(true)
    })
}

fn update_snapshot(
    svc: &Service,
    id: &str,
    mut f: impl FnMut(&mut SnapshotDoc) -> bool,
) -> Result<Option<SnapshotDoc>, ApiError> {
    edit(svc, Kind::VolumeSnapshot, id, "snapshot", |d| Ok(f(d)))
}

fn link(svc: &Service, pid: &str, what: &str, id: &str) -> Value {
    json!([{"rel": "self", "href": format!("{}/volume/v3/{pid}/{what}/{id}", svc.config.public_url)},
           {"rel": "bookmark", "href": format!("{}/volume/{pid}/{what}/{id}", svc.config.public_url)}])
}

/// Cinder's view of a volume.
pub fn volume_view(svc: &Service, id: &str, d: &VolumeDoc, detail: bool) -> Value {
    if !detail {
        return json!({"id": id, "name": d.name, "links": link(svc, &d.project_id, "volumes", id)});
    }
    let attachments: Vec<Value> = d
        .attachment
        .iter()
        .map(|a| {
            json!({"id": id, "attachment_id": a.id, "volume_id": id, "server_id": a.server_id,
                   "host_name": d.host, "device": a.device,
                   "attached_at": crate::time::keystone(a.attached_at)})
        })
        .collect();
    let mut v = json!({
        "id": id, "name": d.name, "description": d.description, "size": d.size,
        "status": d.status, "attachments": attachments, "availability_zone": "nova",
        "bootable": if d.bootable { "true" } else { "false" }, "encrypted": false,
        "multiattach": false, "volume_type": "__DEFAULT__", "snapshot_id": d.snapshot_id,
        "source_volid": null, "metadata": d.metadata, "user_id": d.user_id,
        "os-vol-tenant-attr:tenant_id": d.project_id,
        "os-vol-host-attr:host": d.host.as_ref().map(|h| format!("{h}@blockdp#blockdp")),
        "replication_status": null, "consistencygroup_id": null, "migration_status": null,
        "created_at": crate::time::keystone(d.created),
        "updated_at": crate::time::keystone(d.updated),
        "links": link(svc, &d.project_id, "volumes", id),
    });
    if !d.image_metadata.is_empty() {
        v["volume_image_metadata"] = json!(d.image_metadata);
    }
    v
}

fn snapshot_view(id: &str, d: &SnapshotDoc) -> Value {
    json!({"id": id, "name": d.name, "description": d.description, "volume_id": d.volume_id,
           "size": d.size, "status": d.status, "metadata": {}, "progress": "100%",
           "os-extended-snapshot-attributes:project_id": d.project_id,
           "os-extended-snapshot-attributes:progress": "100%", "user_id": d.user_id,
           "created_at": crate::time::keystone(d.created),
           "updated_at": crate::time::keystone(d.updated)})
}

fn matches(q: &[(String, String)], v: &Value) -> bool {
    q.iter().all(|(k, want)| match k.as_str() {
        "name" | "status" | "volume_id" | "bootable" => {
            v.get(k).and_then(Value::as_str) == Some(want.as_str())
        }
        _ => true,
    })
}

fn scope<'a>(ctx: &'a Ctx, req: &Request) -> Option<&'a str> {
    let all = ctx.is_admin()
        && req
            .q("all_tenants")
            .is_some_and(|v| v != "0" && !v.eq_ignore_ascii_case("false"));
    if all { None } else { ctx.project_id.as_deref() }
}

/// What an update of a volume or a snapshot may change.
struct Changes {
    name: Option<String>,
    description: Option<String>,
    metadata: Option<BTreeMap<String, String>>,
}

/// Volumes and snapshots alike: listed (newest first, filtered by `name`, `status`,
/// `volume_id`, `bootable`, in the caller's project or with `all_tenants` an admin's
/// view of all), shown, and renamed.
trait Collection: Owned<Doc: Stamped> {
    /// The body key of one (`volume`).
    const KEY: &'static str;
    /// The path and the body key of a list (`volumes`).
    const LIST: &'static str;
    /// Whether an update may set its metadata.
    const METADATA: bool;

    /// When it was made (epoch seconds).
    fn created(d: &Self::Doc) -> u64;
    /// Cinder's view; `detail` as in `/detail` lists.
    fn view(svc: &Service, id: &str, d: &Self::Doc, detail: bool) -> Value;
    /// Applies an update's changes.
    fn apply(d: &mut Self::Doc, c: &Changes);
}

impl Collection for Volume {
    const KEY: &'static str = "volume";
    const LIST: &'static str = "volumes";
    const METADATA: bool = true;

    fn created(d: &VolumeDoc) -> u64 {
        d.created
    }
    fn view(svc: &Service, id: &str, d: &VolumeDoc, detail: bool) -> Value {
        volume_view(svc, id, d, detail)
    }
    fn apply(d: &mut VolumeDoc, c: &Changes) {
        if let Some(n) = &c.name {
            d.name = n.clone();
        }
        if let Some(x) = &c.description {
            d.description = Some(x.clone());
        }
        if let Some(m) = &c.metadata {
            d.metadata = m.clone();
        }
    }
}

impl Collection for Snapshot {
    const KEY: &'static str = "snapshot";
    const LIST: &'static str = "snapshots";
    const METADATA: bool = false;

    fn created(d: &SnapshotDoc) -> u64 {
        d.created
    }
    fn view(_svc: &Service, id: &str, d: &SnapshotDoc, _detail: bool) -> Value {
        snapshot_view(id, d)
    }
    fn apply(d: &mut SnapshotDoc, c: &Changes) {
        if let Some(n) = &c.name {
            d.name = n.clone();
        }
        if let Some(x) = &c.description {
            d.description = Some(x.clone());
        }
    }
}

/// The synchronous routes of a collection (`rest`: the path after its name).
fn collection<R: Collection>(
    svc: &Service,
    ctx: &Ctx,
    req: &Request,
    rest: &[&str],
) -> Result<Response, ApiError> {
    let one = |id: &str, d: &R::Doc| {
        let v = json!({ R::KEY: R::view(svc, id, d, true) });
        Ok(json_resp(StatusCode::OK, &v))
    };
    match (rest, &req.method) {
        ([] | ["detail"], &Method::GET) => {
            let detail = !rest.is_empty();
            let mut list = Vec::new();
            for r in svc.store.list(R::KIND, scope(ctx, req)).map_err(se)? {
                let d: R::Doc = r.parse().map_err(se)?;
                let full = R::view(svc, &r.id, &d, true);
                if matches(&req.query, &full) {
                    list.push((R::created(&d), R::view(svc, &r.id, &d, detail)));
                }
            }
            list.sort_by_key(|a| std::cmp::Reverse(a.0));
            let list: Vec<Value> = list.into_iter().map(|x| x.1).collect();
            Ok(json_resp(StatusCode::OK, &json!({ R::LIST: list })))
        }
        ([id], &Method::GET) => {
            let (_, d) = load::<R>(svc, ctx, id)?;
            one(id, &d)
        }
        ([id], &Method::PUT) => {
            load::<R>(svc, ctx, id)?;
            let b: Value = req.json()?;
            let v = b.get(R::KEY).and_then(Value::as_object).ok_or_else(|| {
                ApiError::bad_request(format!("the body needs a \"{}\" object", R::KEY))
            })?;
            let c = Changes {
                name: opt_string(v, "name")?,
                description: opt_string(v, "description")?,
                metadata: match v.get("metadata") {
                    Some(m) if R::METADATA => Some(string_map(m, &format!("{}.metadata", R::KEY))?),
                    _ => None,
                },
            };
            let d = edit(svc, R::KIND, id, R::KEY, |d: &mut R::Doc| {
                R::apply(d, &c);
                Ok(true)
            })?
            .ok_or_else(|| R::missing(id))?;
            one(id, &d)
        }
        _ => Err(ApiError::not_found("The resource could not be found.")),
    }
}

fn handle(svc: &Service, ctx: &Ctx, req: &Request) -> Result<Response, ApiError> {
    let s: Vec<&str> = req.segs.iter().map(String::as_str).collect();
    let rest = &s[1..];
    let ok = |v: Value| Ok(json_resp(StatusCode::OK, &v));
    match (rest, &req.method) {
        ([c, more @ ..], _) if *c == Volume::LIST => collection::<Volume>(svc, ctx, req, more),
        ([c, more @ ..], _) if *c == Snapshot::LIST => collection::<Snapshot>(svc, ctx, req, more),
        (["types"], &Method::GET) => ok(json!({"volume_types": [default_type()]})),
        // Each node's blockdp, as Cinder's volume services (`openstack volume service list`),
        // and their disable/enable (`openstack volume service set`): a disabled one gets no
        // new volume.
        (["os-services"], &Method::GET) => {
            services_admin(ctx)?;
            let list: Vec<Value> = super::compute::nodes_with_state(svc)?
                .into_iter()
                .filter(|(_, d, _)| req.q("host").is_none_or(|h| h == service_host(d)))
                .filter(|_| req.q("binary").is_none_or(|b| b == VOLUME_BINARY))
                .map(|(_, d, up)| {
                    json!({"binary": VOLUME_BINARY, "host": service_host(&d),
                           "zone": d.availability_zone,
                           "status": if d.volume_disabled { "disabled" } else { "enabled" },
                           "state": if up { "up" } else { "down" },
                           "updated_at": crate::time::keystone(d.last_heartbeat),
                           "disabled_reason": d.volume_disabled_reason})
                })
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
            services_admin(ctx)?;
            let (host, binary, reason) = super::compute::service_change(req, action)?;
            if binary != VOLUME_BINARY {
                return Err(ApiError::bad_request(format!(
                    "Invalid service {binary}: this cloud's only volume service is {VOLUME_BINARY}."
                )));
            }
            let node = super::compute::nodes_with_state(svc)?
                .into_iter()
                .find(|(_, d, _)| service_host(d) == host || d.hostname == host)
                .map(|(id, _, _)| id)
                .ok_or_else(|| ApiError::not_found(format!("Host {host} could not be found.")))?;
            let d = super::compute::set_service(
                svc,
                &node,
                crate::compute::NodeService::Volume,
                *action != "enable",
                reason,
            )?;
            ok(json!({"host": service_host(&d), "binary": VOLUME_BINARY,
                      "status": if d.volume_disabled { "disabled" } else { "enabled" },
                      "disabled": d.volume_disabled,
                      "disabled_reason": d.volume_disabled_reason}))
        }
        (["types", "default"] | ["types", "__DEFAULT__"], &Method::GET) => {
            ok(json!({"volume_type": default_type()}))
        }
        (["os-quota-sets", pid], &Method::GET) => {
            if !visible(ctx, pid) {
                return Err(ApiError::forbidden(
                    "another project's quotas need the admin role",
                ));
            }
            let q = quota(svc, pid)?;
            let usage = req
                .q("usage")
                .is_some_and(|u| u.eq_ignore_ascii_case("true"));
            ok(json!({"quota_set": quota_view(svc, pid, &q, usage)?}))
        }
        (["os-quota-sets", pid, "defaults"], &Method::GET) => {
            ok(json!({"quota_set": quota_view(svc, pid, &VolumeQuotaDoc::default(), false)?}))
        }
        (["os-quota-sets", pid], &Method::PUT) => {
            if !ctx.is_admin() {
                return Err(ApiError::forbidden(
                    "Policy doesn't allow volume_extension:quotas:update to be performed.",
                ));
            }
            let b: Value = req.json()?;
            let set = b
                .get("quota_set")
                .and_then(Value::as_object)
                .ok_or_else(|| ApiError::bad_request("the body needs a \"quota_set\" object"))?;
            let mut q = quota(svc, pid)?;
            for (k, v) in set {
                let slot = match k.as_str() {
                    "volumes" => &mut q.volumes,
                    "snapshots" => &mut q.snapshots,
                    "gigabytes" => &mut q.gigabytes,
                    "per_volume_gigabytes" => &mut q.per_volume_gigabytes,
                    // cinderclient names the project in the body too.
                    "tenant_id" | "id" if v.as_str() == Some(*pid) => continue,
                    other => {
                        return Err(ApiError::bad_request(format!(
                            "Bad key(s) in quota set: {other}"
                        )));
                    }
                };
                *slot = v
                    .as_i64()
                    .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
                    .filter(|n| *n >= -1)
                    .ok_or_else(|| {
                        ApiError::bad_request(format!("quota {k} must be an integer >= -1"))
                    })?;
            }
            match svc.store.get(Kind::VolumeQuota, pid).map_err(se)? {
                Some(r) => svc.store.update(r.with_doc(None, &q)).map_err(se)?,
                None => svc
                    .store
                    .insert(Record::new(Kind::VolumeQuota, pid, "", None, &q))
                    .map_err(se)?,
            }
            ok(json!({"quota_set": quota_view(svc, pid, &q, false)?}))
        }
        (["limits"], &Method::GET) => {
            let pid = ctx.project_id.clone().unwrap_or_default();
            let q = quota(svc, &pid)?;
            let u = usage(svc, &pid)?;
            ok(json!({"limits": {"rate": [], "absolute": {
                "maxTotalVolumes": q.volumes, "maxTotalSnapshots": q.snapshots,
                "maxTotalVolumeGigabytes": q.gigabytes, "maxTotalBackups": 0,
                "maxTotalBackupGigabytes": 0, "totalVolumesUsed": u.volumes,
                "totalSnapshotsUsed": u.snapshots, "totalGigabytesUsed": u.gigabytes,
                "totalBackupsUsed": 0, "totalBackupGigabytesUsed": 0}}}))
        }
        (["extensions"], &Method::GET) => ok(json!({"extensions": []})),
        _ => Err(ApiError::not_found("The resource could not be found.")),
    }
}

fn default_type() -> Value {
    json!({"id": "00000000-0000-0000-0000-00000000d00f", "name": "__DEFAULT__",
           "description": "blockdp volumes on the node", "is_public": true,
           "extra_specs": {}, "os-volume-type-access:is_public": true})
}

fn opt_string(v: &serde_json::Map<String, Value>, key: &str) -> Result<Option<String>, ApiError> {
    match v.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.len() <= 255 => Ok(Some(s.clone())),
        Some(_) => Err(ApiError::bad_request(format!(
            "{key} must be a string of at most 255 characters"
        ))),
    }
}

fn string_map(v: &Value, what: &str) -> Result<BTreeMap<String, String>, ApiError> {
    let o = v
        .as_object()
        .ok_or_else(|| ApiError::bad_request(format!("{what} must be an object")))?;
    o.iter()
        .map(|(k, v)| {
            v.as_str()
                .map(|s| (k.clone(), s.to_string()))
                .ok_or_else(|| ApiError::bad_request(format!("{what} values must be strings")))
        })
        .collect()
}

fn quota(svc: &Service, pid: &str) -> Result<VolumeQuotaDoc, ApiError> {
    match svc.store.get(Kind::VolumeQuota, pid).map_err(se)? {
        Some(r) => r.parse().map_err(se),
        None => Ok(VolumeQuotaDoc::default()),
    }
}

/// What a project uses.
#[derive(Debug, Default, Clone, Copy)]
struct Usage {
    volumes: i64,
    snapshots: i64,
    gigabytes: i64,
}

fn usage(svc: &Service, pid: &str) -> Result<Usage, ApiError> {
    let mut u = Usage::default();
    for r in svc.store.list(Kind::Volume, Some(pid)).map_err(se)? {
        let d: VolumeDoc = r.parse().map_err(se)?;
        u.volumes += 1;
        u.gigabytes += d.size as i64;
    }
    for r in svc
        .store
        .list(Kind::VolumeSnapshot, Some(pid))
        .map_err(se)?
    {
        let d: SnapshotDoc = r.parse().map_err(se)?;
        u.snapshots += 1;
        u.gigabytes += d.size as i64;
    }
    Ok(u)
}

fn quota_view(
    svc: &Service,
    pid: &str,
    q: &VolumeQuotaDoc,
    with_usage: bool,
) -> Result<Value, ApiError> {
    if !with_usage {
        return Ok(
            json!({"id": pid, "volumes": q.volumes, "snapshots": q.snapshots,
                   "gigabytes": q.gigabytes, "per_volume_gigabytes": q.per_volume_gigabytes,
                   "backups": 0, "backup_gigabytes": 0, "groups": 0}),
        );
    }
    let u = usage(svc, pid)?;
    let e = |limit: i64, used: i64| json!({"limit": limit, "in_use": used, "reserved": 0, "allocated": 0});
    Ok(json!({"id": pid, "volumes": e(q.volumes, u.volumes),
              "snapshots": e(q.snapshots, u.snapshots), "gigabytes": e(q.gigabytes, u.gigabytes),
              "per_volume_gigabytes": e(q.per_volume_gigabytes, 0),
              "backups": e(0, 0), "backup_gigabytes": e(0, 0), "groups": e(0, 0)}))
}

/// Refuses (413, Cinder's messages) what would exceed the project's quotas: `volumes` and
/// `snapshots` more of each, `gb` more GiB.
pub fn check_quota(
    svc: &Service,
    pid: &str,
    volumes: i64,
    snapshots: i64,
    gb: i64,
) -> Result<(), ApiError> {
    quota_verdict(&quota(svc, pid)?, &usage(svc, pid)?, volumes, snapshots, gb)
}

/// [`check_quota`] again once the request's own record is stored (Nova's quota recheck):
/// two requests that both passed the first check, on one controller or on two sharing a
/// store, see each other here, so together they never exceed the quota (both may be
/// refused; the caller removes its record when this fails).
pub fn recheck_quota(
    svc: &Service,
    pid: &str,
    volumes: i64,
    snapshots: i64,
    gb: i64,
) -> Result<(), ApiError> {
    let mut others = usage(svc, pid)?;
    others.volumes -= volumes;
    others.snapshots -= snapshots;
    others.gigabytes -= gb;
    quota_verdict(&quota(svc, pid)?, &others, volumes, snapshots, gb)
}

/// Whether adding `volumes`, `snapshots` and `gb` to usage `u` stays within quota `q`.
fn quota_verdict(
    q: &VolumeQuotaDoc,
    u: &Usage,
    volumes: i64,
    snapshots: i64,
    gb: i64,
) -> Result<(), ApiError> {
    let over = |limit: i64, used: i64, add: i64| add > 0 && limit >= 0 && used + add > limit;
    let e = |m: String| ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, m);
    if volumes > 0 && q.per_volume_gigabytes >= 0 && gb > q.per_volume_gigabytes {
        return Err(e(format!(
            "VolumeSizeExceedsLimit: Requested volume size {gb}G is larger than maximum allowed limit {}G.",
            q.per_volume_gigabytes
        )));
    }
    if over(q.volumes, u.volumes, volumes) {
        return Err(e(format!(
            "VolumeLimitExceeded: Maximum number of volumes allowed ({}) exceeded for quota 'volumes'.",
            q.volumes
        )));
    }
    if over(q.snapshots, u.snapshots, snapshots) {
        return Err(e(format!(
            "SnapshotLimitExceeded: Maximum number of snapshots allowed ({}) exceeded",
            q.snapshots
        )));
    }
    if over(q.gigabytes, u.gigabytes, gb) {
        return Err(e(format!(
            "VolumeSizeExceedsAvailableQuota: Requested volume or snapshot exceeds allowed gigabytes quota. Requested {gb}G, quota is {}G and {}G has been consumed.",
            q.gigabytes, u.gigabytes
        )));
    }
    Ok(())
}

fn size_of(v: &Value) -> Result<Option<u64>, ApiError> {
    match v {
        Value::Null => Ok(None),
        v => v
            .as_u64()
            .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
            .filter(|n| *n >= 1 && *n <= 16384)
            .map(Some)
            .ok_or_else(|| {
                ApiError::bad_request(format!(
                    "Invalid input received: size {v} must be an integer from 1 to 16384 (GiB)"
                ))
            }),
    }
}

/// A new volume's record made from an image: bootable when the image names a kernel.
pub fn image_volume(ctx: &Ctx, image_id: &str, img: &ImageDoc, size: u64) -> VolumeDoc {
    let mut meta = BTreeMap::new();
    meta.insert("image_id".to_string(), image_id.to_string());
    if let Some(n) = &img.name {
        meta.insert("image_name".to_string(), n.clone());
    }
    for k in KEPT_IMAGE_PROPERTIES {
        if let Some(v) = img.properties.get(k) {
            meta.insert(k.to_string(), v.clone());
        }
    }
    let now = now_secs();
    VolumeDoc {
        name: String::new(),
        description: None,
        project_id: ctx.project_id.clone().unwrap_or_default(),
        user_id: ctx.user_id().to_string(),
        size,
        status: "creating".into(),
        node_id: None,
        host: None,
        backend_id: None,
        bootable: img.properties.contains_key("kernel_id"),
        image_id: Some(image_id.to_string()),
        image_metadata: meta,
        snapshot_id: None,
        attachment: None,
        metadata: BTreeMap::new(),
        fault: None,
        created: now,
        updated: now,
    }
}

/// GiB needed to hold an image.
pub fn image_gb(img: &ImageDoc) -> u64 {
    img.size.unwrap_or(0).div_ceil(1 << 30).max(1)
}

async fn create_volume(svc: Arc<Service>, ctx: Ctx, body: Value) -> Result<Response, ApiError> {
    let v = body
        .get("volume")
        .and_then(Value::as_object)
        .cloned()
        .ok_or_else(|| ApiError::bad_request("the body needs a \"volume\" object"))?;
    for k in [
        "source_volid",
        "backup_id",
        "multiattach",
        "consistencygroup_id",
        "group_id",
    ] {
        if v.get(k).is_some_and(|x| !x.is_null() && *x != json!(false)) {
            return Err(ApiError::bad_request(format!(
                "{k} is not supported by this cloud"
            )));
        }
    }
    if let Some(t) = v.get("volume_type").and_then(Value::as_str)
        && t != "__DEFAULT__"
        && t != default_type()["id"]
    {
        return Err(ApiError::not_found(format!(
            "Volume type with name {t} could not be found."
        )));
    }
    let size = size_of(v.get("size").unwrap_or(&Value::Null))?;
    let name = opt_string(&v, "name")?.unwrap_or_default();
    let description = opt_string(&v, "description")?;
    let metadata = match v.get("metadata") {
        None | Some(Value::Null) => BTreeMap::new(),
        Some(m) => string_map(m, "volume.metadata")?,
    };
    let image = v
        .get("imageRef")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty());
    let snapshot = v
        .get("snapshot_id")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty());
    if image.is_some() && snapshot.is_some() {
        return Err(ApiError::bad_request(
            "Invalid input received: at most one of imageRef and snapshot_id",
        ));
    }
    let image = image.map(str::to_string);
    let snapshot = snapshot.map(str::to_string);
    let id = uuid::Uuid::new_v4().to_string();
    let id2 = id.clone();
    // Record and claim on the blocking pool.
    let (doc, url, agent_body) = blocking(svc.clone(), move |svc| {
        let pid = ctx.project_id.clone().unwrap_or_default();
        let now = now_secs();
        let mut doc = VolumeDoc {
            name,
            description,
            project_id: pid.clone(),
            user_id: ctx.user_id().to_string(),
            size: 0,
            status: "creating".into(),
            node_id: None,
            host: None,
            backend_id: None,
            bootable: false,
            image_id: None,
            image_metadata: BTreeMap::new(),
            snapshot_id: None,
            attachment: None,
            metadata,
            fault: None,
            created: now,
            updated: now,
        };
        let mut node = None;
        let mut agent_body = json!({"name": format!("volume-{id2}")});
        if let Some(img_id) = &image {
            let img = super::compute::image_for(svc, &ctx, img_id)?;
            let need = image_gb(&img);
            let mut d = image_volume(&ctx, img_id, &img, size.unwrap_or(need));
            if d.size < need {
                return Err(ApiError::bad_request(format!(
                    "Invalid input received: size {} GiB is smaller than image {img_id}'s {need} GiB",
                    d.size
                )));
            }
            d.name = doc.name;
            d.description = doc.description;
            d.metadata = doc.metadata;
            doc = d;
            agent_body["image"] = json!({"url": super::compute::image_url(svc, img_id)?});
        } else if let Some(sid) = &snapshot {
            let (_, s) = load_snapshot(svc, &ctx, sid)?;
            if s.status != "available" {
                return Err(ApiError::bad_request(format!(
                    "Invalid snapshot: snapshot {sid} is {}, it must be available",
                    s.status
                )));
            }
            doc.size = size.unwrap_or(s.size);
            if doc.size < s.size {
                return Err(ApiError::bad_request(format!(
                    "Invalid input received: volume size {} GiB cannot be smaller than the snapshot size {} GiB",
                    doc.size, s.size
                )));
            }
            doc.snapshot_id = Some(sid.clone());
            if let Some(r) = svc.store.get(Kind::Volume, &s.volume_id).map_err(se)?
                && let Ok(src) = r.parse::<VolumeDoc>()
            {
                doc.bootable = src.bootable;
                doc.image_id = src.image_id;
                doc.image_metadata = src.image_metadata;
            }
            agent_body["snapshot_id"] = json!(s.backend_id);
            node = Some(s.node_id);
        } else {
            doc.size = size.ok_or_else(|| {
                ApiError::bad_request(
                    "Invalid input received: a volume needs a size, an imageRef or a snapshot_id",
                )
            })?;
        }
        agent_body["size_bytes"] = json!(doc.size << 30);
        check_quota(svc, &pid, 1, 0, doc.size as i64)?;
        let node_id = scheduler::claim_volume(
            &*svc.store,
            node.as_deref(),
            &id2,
            &pid,
            doc.size,
            &settings(svc),
            now,
        )
        .map_err(ce)?;
        let (_, n) = load_node(&*svc.store, &node_id)
            .map_err(se)?
            .ok_or_else(|| ApiError::conflict("the node vanished"))?;
        doc.node_id = Some(node_id.clone());
        doc.host = Some(n.hostname.clone());
        if let Err(e) = svc
            .store
            .insert(Record::new(Kind::Volume, &id2, &pid, None, &doc))
        {
            let _ = scheduler::release_volume(&*svc.store, &node_id, &id2);
            return Err(se(e));
        }
        if let Err(e) = recheck_quota(svc, &pid, 1, 0, doc.size as i64) {
            let _ = svc.store.delete(Kind::Volume, &id2);
            let _ = scheduler::release_volume(&*svc.store, &node_id, &id2);
            return Err(e);
        }
        Ok((doc, n.agent_url, agent_body))
    })
    .await?;
    tokio::spawn(make_volume(svc.clone(), id.clone(), url, agent_body).in_current_span());
    Ok(json_resp(
        StatusCode::ACCEPTED,
        &json!({"volume": volume_view(&svc, &id, &doc, true)}),
    ))
}

/// Makes a volume on its node's agent: `creating` becomes `available` (or `in-use` if a
/// server took it meanwhile... which only a boot volume does, through its build) or
/// `error` with the reason. Returns blockdp's id.
pub async fn make_volume(
    svc: Arc<Service>,
    id: String,
    url: String,
    body: Value,
) -> Result<String, String> {
    let r = agent::call(
        &url,
        Method::POST,
        "/v1/volumes",
        Some(&json!({"volume": body})),
        AGENT_COPY,
    )
    .await;
    let outcome = match r {
        Ok((_, v)) => v
            .pointer("/volume/id")
            .and_then(Value::as_str)
            .map(str::to_string)
            .ok_or_else(|| format!("the agent answered without a volume id: {v}")),
        Err(e) => Err(e.to_string()),
    };
    let o2 = outcome.clone();
    let id2 = id.clone();
    let res = blocking(svc, move |svc| {
        update_volume(svc, &id2, |d| {
            match &o2 {
                Ok(bid) => {
                    d.backend_id = Some(bid.clone());
                    if d.status == "creating" {
                        d.status = if d.attachment.is_some() {
                            "in-use".into()
                        } else {
                            "available".into()
                        };
                    }
                }
                Err(m) => {
                    tracing::warn!(volume = %id2, error = %m, "volume creation failed");
                    d.status = "error".into();
                    d.fault = Some(m.clone());
                }
            }
            Ok(true)
        })
    })
    .await;
    if !matches!(res, Ok(Some(_))) && outcome.is_ok() {
        // The record vanished meanwhile: nothing refers to the new volume.
        tracing::warn!(volume = %id, "volume deleted during its creation");
    }
    outcome
}

/// The agent URL of a node.
fn agent_url(svc: &Service, node: &str) -> Result<String, ApiError> {
    load_node(&*svc.store, node)
        .map_err(se)?
        .map(|(_, n)| n.agent_url)
        .ok_or_else(|| ApiError::conflict(format!("node {node} is not registered")))
}

const DELETABLE: [&str; 4] = ["available", "error", "error_extending", "error_deleting"];

async fn delete_volume(svc: Arc<Service>, ctx: Ctx, id: String) -> Result<Response, ApiError> {
    let id2 = id.clone();
    let (doc, url) = blocking(svc.clone(), move |svc| {
        let (_, d) = load_volume(svc, &ctx, &id2)?;
        let snaps = svc
            .store
            .list(Kind::VolumeSnapshot, Some(&d.project_id))
            .map_err(se)?
            .into_iter()
            .filter_map(|r| r.parse::<SnapshotDoc>().ok())
            .filter(|s| s.volume_id == id2)
            .count();
        if snaps > 0 {
            return Err(ApiError::bad_request(format!(
                "Invalid volume: Volume still has {snaps} dependent snapshots."
            )));
        }
        let d = update_volume(svc, &id2, |d| {
            if !DELETABLE.contains(&d.status.as_str()) || d.attachment.is_some() {
                return Err(ApiError::bad_request(format!(
                    "Invalid volume: Volume status must be available or error or error_restoring or error_extending or error_managing and must not be migrating, attached, belong to a group, have snapshots or be disassociated from snapshots after volume transfer. (volume {id2} is {})",
                    d.status
                )));
            }
            d.status = "deleting".into();
            Ok(true)
        })?
        .ok_or_else(|| Volume::missing(&id2))?;
        let url = match &d.node_id {
            Some(n) => Some(agent_url(svc, n)?),
            None => None,
        };
        Ok((d, url))
    })
    .await?;
    if let (Some(url), Some(bid)) = (&url, &doc.backend_id) {
        match agent::call(
            url,
            Method::DELETE,
            &format!("/v1/volumes/{bid}"),
            None,
            AGENT_CALL,
        )
        .await
        {
            Ok(_) | Err(AgentError::Status(StatusCode::NOT_FOUND, _)) => {}
            Err(e) => {
                let msg = e.to_string();
                let id2 = id.clone();
                let _ = blocking(svc.clone(), move |svc| {
                    update_volume(svc, &id2, |d| {
                        d.status = "error_deleting".into();
                        d.fault = Some(msg.clone());
                        Ok(true)
                    })
                })
                .await;
                return Err(ae("deleting the volume on its node", e));
            }
        }
    }
    blocking(svc, move |svc| {
        svc.store.delete(Kind::Volume, &id).map_err(se)?;
        if let Some(n) = &doc.node_id {
            scheduler::release_volume(&*svc.store, n, &id).map_err(ce)?;
        }
        Ok(empty(StatusCode::ACCEPTED))
    })
    .await
}

async fn volume_action(
    svc: Arc<Service>,
    ctx: Ctx,
    id: String,
    body: Value,
) -> Result<Response, ApiError> {
    let (name, arg) = body
        .as_object()
        .filter(|o| o.len() == 1)
        .and_then(|o| o.iter().next())
        .map(|(k, v)| (k.clone(), v.clone()))
        .ok_or_else(|| ApiError::bad_request("an action body has exactly one key"))?;
    if name != "os-extend" {
        return Err(ApiError::bad_request(format!(
            "unsupported volume action {name:?} (this cloud supports os-extend)"
        )));
    }
    let new_size = size_of(arg.get("new_size").unwrap_or(&Value::Null))?
        .ok_or_else(|| ApiError::bad_request("os-extend.new_size is required"))?;
    let id2 = id.clone();
    let (doc, url) = blocking(svc.clone(), move |svc| {
        let (_, d) = load_volume(svc, &ctx, &id2)?;
        if d.status != "available" {
            return Err(ApiError::bad_request(format!(
                "Invalid volume: Volume {id2} status must be available to extend, but current status is: {}.",
                d.status
            )));
        }
        if new_size <= d.size {
            return Err(ApiError::bad_request(format!(
                "Invalid input received: New size for extend must be greater than current size. (current: {}, extended: {new_size}).",
                d.size
            )));
        }
        check_quota(svc, &d.project_id, 0, 0, (new_size - d.size) as i64)?;
        let node = d
            .node_id
            .clone()
            .ok_or_else(|| ApiError::conflict("the volume is on no node"))?;
        scheduler::resize_volume(&*svc.store, &node, &id2, &d.project_id, new_size)
            .map_err(ce)?;
        let d = transition(svc, &id2, "available", "extending", "is now")?
            .ok_or_else(|| Volume::missing(&id2))?;
        Ok((d, agent_url(svc, &node)?))
    })
    .await?;
    let bid = doc.backend_id.clone().unwrap_or_default();
    let r = agent::call(
        &url,
        Method::POST,
        &format!("/v1/volumes/{bid}/extend"),
        Some(&json!({"size_bytes": new_size << 30})),
        AGENT_CALL,
    )
    .await;
    let failed = r.as_ref().err().map(|e| e.to_string());
    let (id2, old) = (id.clone(), doc.size);
    blocking(svc, move |svc| {
        update_volume(svc, &id2, |d| {
            match &failed {
                None => {
                    d.size = new_size;
                    d.status = "available".into();
                }
                Some(m) => {
                    d.status = "error_extending".into();
                    d.fault = Some(m.clone());
                }
            }
            Ok(true)
        })?;
        if failed.is_some()
            && let Some(n) = &doc.node_id
        {
            let _ = scheduler::resize_volume(&*svc.store, n, &id2, &doc.project_id, old);
        }
        Ok(())
    })
    .await?;
    r.map_err(|e| ae("extending the volume on its node", e))?;
    Ok(empty(StatusCode::ACCEPTED))
}

async fn create_snapshot(svc: Arc<Service>, ctx: Ctx, body: Value) -> Result<Response, ApiError> {
    let s = body
        .get("snapshot")
        .and_then(Value::as_object)
        .cloned()
        .ok_or_else(|| ApiError::bad_request("the body needs a \"snapshot\" object"))?;
    let vid = s
        .get("volume_id")
        .and_then(Value::as_str)
        .ok_or_else(|| ApiError::bad_request("snapshot.volume_id is required"))?
        .to_string();
    let force = match s.get("force") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(Value::String(x)) => x.eq_ignore_ascii_case("true"),
        Some(_) => return Err(ApiError::bad_request("snapshot.force must be a boolean")),
    };
    let name = opt_string(&s, "name")?.unwrap_or_default();
    let description = opt_string(&s, "description")?;
    let id = uuid::Uuid::new_v4().to_string();
    let id2 = id.clone();
    let (doc, url, bid) = blocking(svc.clone(), move |svc| {
        let (_, v) = load_volume(svc, &ctx, &vid)?;
        match v.status.as_str() {
            "available" => {}
            "in-use" if force => {}
            "in-use" => {
                return Err(ApiError::bad_request(format!(
                    "Invalid volume: Volume {vid} status must be available, but current status is: in-use. (use force for a volume attached to a server)"
                )));
            }
            other => {
                return Err(ApiError::bad_request(format!(
                    "Invalid volume: Volume {vid} status must be available, but current status is: {other}."
                )));
            }
        }
        check_quota(svc, &v.project_id, 0, 1, v.size as i64)?;
        let node = v
            .node_id
            .clone()
            .ok_or_else(|| ApiError::conflict("the volume is on no node"))?;
        let now = now_secs();
        let doc = SnapshotDoc {
            name,
            description,
            project_id: v.project_id.clone(),
            user_id: ctx.user_id().to_string(),
            volume_id: vid.clone(),
            size: v.size,
            status: "creating".into(),
            node_id: node.clone(),
            backend_id: None,
            fault: None,
            created: now,
            updated: now,
        };
        svc.store
            .insert(Record::new(
                Kind::VolumeSnapshot,
                &id2,
                &v.project_id,
                None,
                &doc,
            ))
            .map_err(se)?;
        if let Err(e) = recheck_quota(svc, &v.project_id, 0, 1, v.size as i64) {
            let _ = svc.store.delete(Kind::VolumeSnapshot, &id2);
            return Err(e);
        }
        Ok((doc, agent_url(svc, &node)?, v.backend_id.unwrap_or_default()))
    })
    .await?;
    let (svc2, id3) = (svc.clone(), id.clone());
    tokio::spawn(
        async move {
            let r = agent::call(
                &url,
                Method::POST,
                &format!("/v1/volumes/{bid}/snapshots"),
                Some(&json!({"name": format!("snapshot-{id3}")})),
                AGENT_COPY,
            )
            .await;
            let outcome = match r {
                Ok((_, v)) => v
                    .pointer("/snapshot/id")
                    .and_then(Value::as_str)
                    .map(str::to_string)
                    .ok_or_else(|| format!("the agent answered without a snapshot id: {v}")),
                Err(e) => Err(e.to_string()),
            };
            let _ = blocking(svc2, move |svc| {
                update_snapshot(svc, &id3, |d| {
                    match &outcome {
                        Ok(b) => {
                            d.backend_id = Some(b.clone());
                            d.status = "available".into();
                        }
                        Err(m) => {
                            d.status = "error".into();
                            d.fault = Some(m.clone());
                        }
                    }
                    true
                })
            })
            .await;
        }
        .in_current_span(),
    );
    Ok(json_resp(
        StatusCode::ACCEPTED,
        &json!({"snapshot": snapshot_view(&id, &doc)}),
    ))
}

async fn delete_snapshot(svc: Arc<Service>, ctx: Ctx, id: String) -> Result<Response, ApiError> {
    let id2 = id.clone();
    let (doc, url) = blocking(svc.clone(), move |svc| {
        load_snapshot(svc, &ctx, &id2)?;
        let d = update_snapshot(svc, &id2, |d| {
            if d.status == "available" || d.status == "error" {
                d.status = "deleting".into();
                true
            } else {
                false
            }
        })?
        .ok_or_else(|| Snapshot::missing(&id2))?;
        if d.status != "deleting" {
            return Err(ApiError::bad_request(format!(
                "Invalid snapshot: Snapshot status must be available or error, but is {}",
                d.status
            )));
        }
        Ok((d.clone(), agent_url(svc, &d.node_id)?))
    })
    .await?;
    if let Some(bid) = &doc.backend_id {
        match agent::call(
            &url,
            Method::DELETE,
            &format!("/v1/snapshots/{bid}"),
            None,
            AGENT_CALL,
        )
        .await
        {
            Ok(_) | Err(AgentError::Status(StatusCode::NOT_FOUND, _)) => {}
            Err(e) => {
                let id2 = id.clone();
                let _ = blocking(svc.clone(), move |svc| {
                    update_snapshot(svc, &id2, |d| {
                        d.status = "error".into();
                        true
                    })
                })
                .await;
                return Err(ae("deleting the snapshot on its node", e));
            }
        }
    }
    blocking(svc, move |svc| {
        svc.store.delete(Kind::VolumeSnapshot, &id).map_err(se)?;
        Ok(empty(StatusCode::ACCEPTED))
    })
    .await
}

// ---------------------------------------------------------------------------------------
// Attachments (Nova's os-volume_attachments).

/// Nova's view of an attachment.
pub fn attachment_view(server_id: &str, v: &ServerVolume) -> Value {
    json!({"id": v.volume_id, "serverId": server_id, "volumeId": v.volume_id,
           "device": v.device})
}

/// The next free device of a server (`/dev/vdb` on), or the requested one if free.
fn pick_device(d: &ServerDoc, requested: Option<&str>) -> Result<String, ApiError> {
    let taken = |dev: &str| d.volumes.iter().any(|v| v.device == dev);
    if let Some(r) = requested.filter(|r| !r.is_empty() && *r != "auto") {
        let ok = r
            .strip_prefix("/dev/vd")
            .is_some_and(|x| x.len() == 1 && x.as_bytes()[0].is_ascii_lowercase() && x != "a");
        if !ok {
            return Err(ApiError::bad_request(format!(
                "The supplied device path ({r}) is invalid: use /dev/vdb to /dev/vdz"
            )));
        }
        if taken(r) {
            return Err(ApiError::bad_request(format!(
                "The supplied device path ({r}) is in use."
            )));
        }
        return Ok(r.to_string());
    }
    (b'b'..=b'z')
        .map(|c| format!("/dev/vd{}", c as char))
        .find(|dev| !taken(dev))
        .ok_or_else(|| ApiError::bad_request("the server has no free device name"))
}

fn stopped(id: &str, d: &ServerDoc, what: &str) -> Result<(), ApiError> {
    if d.status != "SHUTOFF" || d.task_state.is_some() {
        return Err(super::compute::wrong_state(
            what,
            id,
            d,
            ": this cloud's VMM has no drive hot-plug, so volumes are attached and detached only while the server is SHUTOFF (stop it first)",
        ));
    }
    Ok(())
}

/// `POST /servers/{id}/os-volume_attachments`.
pub async fn attach(
    svc: Arc<Service>,
    ctx: Ctx,
    server_id: String,
    body: Value,
    rid: String,
) -> Result<Response, ApiError> {
    use super::instance_actions as actions;
    const EVENT: &str = "compute_attach_volume";
    let a = body
        .get("volumeAttachment")
        .and_then(Value::as_object)
        .cloned()
        .ok_or_else(|| ApiError::bad_request("the body needs a \"volumeAttachment\" object"))?;
    let vid = a
        .get("volumeId")
        .and_then(Value::as_str)
        .ok_or_else(|| ApiError::bad_request("volumeAttachment.volumeId is required"))?
        .to_string();
    let requested = a.get("device").and_then(Value::as_str).map(str::to_string);
    let (sid, vid2, rid2) = (server_id.clone(), vid.clone(), rid.clone());
    let (url, bid, device) = blocking(svc.clone(), move |svc| {
        let (_, s) = super::compute::load_server(svc, &ctx, &sid)?;
        let (_, v) = load_volume(svc, &ctx, &vid2)
            .map_err(|e| ApiError::not_found(e.message))?;
        if v.status != "available" {
            return Err(ApiError::bad_request(format!(
                "Invalid volume: volume {vid2} status must be available, but current status is: {}",
                v.status
            )));
        }
        let server_node = s.node_id.clone().ok_or_else(|| {
            ApiError::conflict(format!("Instance {sid} is not on any node"))
        })?;
        if v.node_id.as_deref() != Some(server_node.as_str()) {
            return Err(ApiError::conflict(format!(
                "volume {vid2} is on node {} and instance {sid} on node {server_node}: a volume attaches only to a server on its own node",
                v.node_id.as_deref().unwrap_or("(none)")
            )));
        }
        stopped(&sid, &s, "attach_volume")?;
        let device = pick_device(&s, requested.as_deref())?;
        transition(svc, &vid2, "available", "attaching", "is now")?;
        actions::start(svc, &ctx, &sid, &rid2, "attach_volume", Some(EVENT))?;
        Ok((
            agent_url(svc, &server_node)?,
            v.backend_id.unwrap_or_default(),
            device,
        ))
    })
    .await?;
    let r = agent::call(
        &url,
        Method::POST,
        &format!("/v1/servers/{server_id}/volumes"),
        Some(&json!({"volume_id": bid, "device": device.trim_start_matches("/dev/")})),
        AGENT_CALL,
    )
    .await;
    let ok = r.is_ok();
    let fault = r.as_ref().err().map(ToString::to_string);
    let (sid, vid2, dev) = (server_id.clone(), vid.clone(), device.clone());
    blocking(svc, move |svc| {
        let outcome = fault.as_deref().map_or(Ok(()), Err);
        actions::finish(svc, &sid, &rid, Some(EVENT), outcome);
        update_volume(svc, &vid2, |d| {
            if ok {
                d.status = "in-use".into();
                d.attachment = Some(Attachment {
                    id: uuid::Uuid::new_v4().to_string(),
                    server_id: sid.clone(),
                    device: dev.clone(),
                    attached_at: now_secs(),
                });
            } else {
                d.status = "available".into();
            }
            Ok(true)
        })?;
        if ok {
            super::compute::update_server(svc, &sid, |d| {
                d.volumes.push(ServerVolume {
                    volume_id: vid2.clone(),
                    device: dev.clone(),
                    boot: false,
                    delete_on_termination: false,
                });
                true
            })?;
        }
        Ok(())
    })
    .await?;
    r.map_err(|e| match e {
        AgentError::Status(s, m) if s.is_client_error() => ApiError::new(
            if s == StatusCode::NOT_FOUND {
                StatusCode::CONFLICT
            } else {
                s
            },
            m,
        ),
        e => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    })?;
    let v = ServerVolume {
        volume_id: vid,
        device,
        boot: false,
        delete_on_termination: false,
    };
    Ok(json_resp(
        StatusCode::OK,
        &json!({"volumeAttachment": attachment_view(&server_id, &v)}),
    ))
}

/// `DELETE /servers/{id}/os-volume_attachments/{volume_id}`.
pub async fn detach(
    svc: Arc<Service>,
    ctx: Ctx,
    server_id: String,
    vid: String,
    rid: String,
) -> Result<Response, ApiError> {
    use super::instance_actions as actions;
    const EVENT: &str = "compute_detach_volume";
    let (sid, vid2, rid2) = (server_id.clone(), vid.clone(), rid.clone());
    let (url, bid) = blocking(svc.clone(), move |svc| {
        let (_, s) = super::compute::load_server(svc, &ctx, &sid)?;
        let att = s
            .volumes
            .iter()
            .find(|v| v.volume_id == vid2)
            .ok_or_else(|| {
                ApiError::not_found(format!(
                    "volume_id not found: {vid2} is not attached to instance {sid}"
                ))
            })?;
        if att.boot {
            return Err(ApiError::bad_request(format!(
                "Can't detach root device volume {vid2} of instance {sid}"
            )));
        }
        stopped(&sid, &s, "detach_volume")?;
        let v = transition(svc, &vid2, "in-use", "detaching", "is")?
            .ok_or_else(|| Volume::missing(&vid2))?;
        actions::start(svc, &ctx, &sid, &rid2, "detach_volume", Some(EVENT))?;
        let node = s.node_id.clone().unwrap_or_default();
        Ok((agent_url(svc, &node)?, v.backend_id.unwrap_or_default()))
    })
    .await?;
    let r = agent::call(
        &url,
        Method::DELETE,
        &format!("/v1/servers/{server_id}/volumes/{bid}"),
        None,
        AGENT_CALL,
    )
    .await;
    let gone = matches!(r, Ok(_) | Err(AgentError::Status(StatusCode::NOT_FOUND, _)));
    let fault = (!gone).then(|| {
        r.as_ref()
            .err()
            .map(ToString::to_string)
            .unwrap_or_default()
    });
    let (sid, vid2) = (server_id.clone(), vid.clone());
    blocking(svc, move |svc| {
        let outcome = fault.as_deref().map_or(Ok(()), Err);
        actions::finish(svc, &sid, &rid, Some(EVENT), outcome);
        update_volume(svc, &vid2, |d| {
            d.status = if gone { "available" } else { "in-use" }.into();
            if gone {
                d.attachment = None;
            }
            Ok(true)
        })?;
        if gone {
            super::compute::update_server(svc, &sid, |d| {
                d.volumes.retain(|v| v.volume_id != vid2);
                true
            })?;
        }
        Ok(())
    })
    .await?;
    if !gone && let Err(e) = r {
        return Err(match e {
            AgentError::Status(s, m) if s.is_client_error() => ApiError::new(s, m),
            e => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        });
    }
    Ok(empty(StatusCode::ACCEPTED))
}

/// After a server is deleted: its boot volume is deleted when `delete_on_termination`
/// says so, every other volume it used becomes available again.
pub async fn release_server_volumes(svc: &Arc<Service>, server_id: &str, volumes: &[ServerVolume]) {
    for v in volumes {
        let vid = v.volume_id.clone();
        let sid = server_id.to_string();
        let dot = v.delete_on_termination;
        let found = blocking(svc.clone(), move |svc| {
            let Some(r) = svc.store.get(Kind::Volume, &vid).map_err(se)? else {
                return Ok(None);
            };
            let d: VolumeDoc = r.parse().map_err(se)?;
            if d.attachment.as_ref().is_some_and(|a| a.server_id != sid) {
                return Ok(None);
            }
            if dot {
                let url = match &d.node_id {
                    Some(n) => agent_url(svc, n).ok(),
                    None => None,
                };
                update_volume(svc, &vid, |d| {
                    d.status = "deleting".into();
                    d.attachment = None;
                    Ok(true)
                })?;
                return Ok(Some((d, url)));
            }
            update_volume(svc, &vid, |d| {
                d.attachment = None;
                if d.status != "creating" && d.status != "error" {
                    d.status = "available".into();
                }
                Ok(true)
            })?;
            Ok(None)
        })
        .await;
        let Ok(Some((d, url))) = found else { continue };
        let deleted = match (&url, &d.backend_id) {
            (Some(url), Some(bid)) => matches!(
                agent::call(
                    url,
                    Method::DELETE,
                    &format!("/v1/volumes/{bid}"),
                    None,
                    AGENT_CALL
                )
                .await,
                Ok(_) | Err(AgentError::Status(StatusCode::NOT_FOUND, _))
            ),
            _ => d.backend_id.is_none(),
        };
        let vid = v.volume_id.clone();
        let _ = blocking(svc.clone(), move |svc| {
            if deleted {
                svc.store.delete(Kind::Volume, &vid).map_err(se)?;
                if let Some(n) = &d.node_id {
                    scheduler::release_volume(&*svc.store, n, &vid).map_err(ce)?;
                }
            } else {
                update_volume(svc, &vid, |d| {
                    d.status = "error_deleting".into();
                    Ok(true)
                })?;
            }
            Ok(())
        })
        .await;
    }
}

/// The binary each node's blockdp stands for in Cinder's service list.
const VOLUME_BINARY: &str = "cinder-volume";

/// A node's volume service host, as Cinder names a backend: `<host>@<backend>`.
fn service_host(d: &crate::compute::NodeDoc) -> String {
    format!("{}@blockdp", d.hostname)
}

/// Cinder's services API is for administrators only.
fn services_admin(ctx: &Ctx) -> Result<(), ApiError> {
    if ctx.is_admin() {
        Ok(())
    } else {
        Err(ApiError::forbidden(
            "Policy doesn't allow volume_extension:services:index to be performed.",
        ))
    }
}
