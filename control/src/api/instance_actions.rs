//! Nova's instance actions (`os-instance-actions`): what was done to a server, by whom,
//! under which request id, and the phases control carried out for it.
//!
//! Every answer of the Nova API carries a request id (`x-openstack-request-id` and
//! `x-compute-request-id`, `req-<uuid>`, made per request in [`super::compute::route`]);
//! an action done to a server records one [`ActionDoc`] under that id, so a user can match
//! the row to the call. Which calls record one follows Nova: create, delete, stop, start,
//! reboot, pause, unpause, lock, unlock, resetState, attach_volume and detach_volume;
//! renames, metadata edits and security groups record none. Refusals made before anything
//! was done (403, 404, 409 on the server's state) record none either, as in Nova, where
//! the API checks them before it starts the action.
//!
//! Actions that reach a node agent carry events (`compute_stop_instance`, ...): started
//! when control asks the agent, finished when the agent has carried it out (`Success`) or
//! refused or failed it (`Error`, with the fault as the traceback, which only admins
//! see). An event that ends in `Error` sets its action's message to `Error`, as Nova does.
//! A create has `conductor_schedule_and_build_instances` (until a node is claimed, again
//! per reschedule) and `compute__do_build_and_run_instance` (per node tried, until the
//! build ends).
//!
//! Rows are records of [`Kind::InstanceAction`] scoped by the server id. At microversion
//! 2.1 a deleted server's actions cannot be listed (404 for the server), so they go with
//! the server's record, in the same batch ([`deletes`] in
//! [`super::usage::delete_server_record`]): nothing piles up for deleted servers.
//!
//! `GET /v2.1/servers/{id}/os-instance-actions` lists a server's actions newest first;
//! `GET .../os-instance-actions/{request_id}` shows one with its events. The server's
//! project and admins see them; another project's server is a 404.

use std::sync::Arc;

use http::{Method, StatusCode};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::openstack::{Stamped, edit};
use super::{ApiError, Request, Response, json as json_resp};
use crate::identity::Ctx;
use crate::service::{Service, ServiceError};
use crate::store::{Kind, Record, StoreError, Write};

/// The action `create`.
pub(crate) const CREATE: &str = "create";
/// The scheduling phase of a create.
pub(crate) const SCHEDULE_EVENT: &str = "conductor_schedule_and_build_instances";
/// The build on a node of a create.
pub(crate) const BUILD_EVENT: &str = "compute__do_build_and_run_instance";

/// One action on a server.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ActionDoc {
    /// Nova's action name (`stop`, `attach_volume`).
    pub action: String,
    /// The server.
    pub instance_uuid: String,
    /// The request that started it.
    pub request_id: String,
    /// Who asked.
    pub user_id: String,
    /// The project the caller was scoped to.
    pub project_id: String,
    /// Microseconds since the epoch.
    pub start_us: u64,
    /// `Error` once an event failed.
    pub message: Option<String>,
    /// Its phases in the order they started.
    pub events: Vec<EventDoc>,
}

/// One phase of an action.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventDoc {
    /// Nova's event name (`compute_stop_instance`).
    pub event: String,
    /// Microseconds since the epoch.
    pub start_us: u64,
    /// When it ended, if it did.
    pub finish_us: Option<u64>,
    /// `Success` or `Error` once ended.
    pub result: Option<String>,
    /// The fault of an `Error` (shown to admins only).
    pub traceback: Option<String>,
}

impl Stamped for ActionDoc {
    fn stamp(&mut self, _now: u64) {}
}

fn se(e: StoreError) -> ApiError {
    ServiceError::from(e).into()
}

fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// Nova's form at 2.1: `2026-12-05T23:01:02.123456`, UTC, no zone.
fn time(us: u64) -> String {
    let whole = crate::time::glance(us / 1_000_000);
    format!("{}.{:06}", whole.trim_end_matches('Z'), us % 1_000_000)
}

/// The record id of the action `request_id` started on `server`.
fn record_id(server: &str, request_id: &str) -> String {
    format!("{server}:{request_id}")
}

/// A new request id in Nova's form (`req-` and a version 4 UUID). Made on every request,
/// so without a system call: the process's random seed mixed with a counter through
/// SplitMix64, a bijection, so no two requests of one process share an id. Request ids
/// only name requests; nothing relies on their being unpredictable.
pub(crate) fn new_request_id() -> String {
    use std::sync::OnceLock;
    use std::sync::atomic::{AtomicU64, Ordering};
    static SEED: OnceLock<u64> = OnceLock::new();
    static NEXT: AtomicU64 = AtomicU64::new(0);
    fn splitmix(mut z: u64) -> u64 {
        z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    let seed = *SEED.get_or_init(|| uuid::Uuid::new_v4().as_u64_pair().0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let hi = splitmix(seed ^ n);
    let lo = splitmix(hi);
    let bytes = ((u128::from(hi) << 64) | u128::from(lo)).to_be_bytes();
    format!(
        "req-{}",
        uuid::Builder::from_random_bytes(bytes).into_uuid()
    )
}

/// The record of an action `request_id` starts on `server` now, with a first event if
/// given (to insert, alone or in the batch that does the action).
pub(crate) fn record(
    ctx: &Ctx,
    server: &str,
    request_id: &str,
    action: &str,
    event: Option<&str>,
) -> Record {
    let now = now_us();
    let doc = ActionDoc {
        action: action.to_string(),
        instance_uuid: server.to_string(),
        request_id: request_id.to_string(),
        user_id: ctx.user_id().to_string(),
        project_id: ctx.project_id.clone().unwrap_or_default(),
        start_us: now,
        message: None,
        events: event
            .map(|e| EventDoc {
                event: e.to_string(),
                start_us: now,
                finish_us: None,
                result: None,
                traceback: None,
            })
            .into_iter()
            .collect(),
    };
    Record::new(
        Kind::InstanceAction,
        &record_id(server, request_id),
        server,
        None,
        &doc,
    )
}

/// Records the action `request_id` starts on `server` (with a first event if given).
pub(crate) fn start(
    svc: &Service,
    ctx: &Ctx,
    server: &str,
    request_id: &str,
    action: &str,
    event: Option<&str>,
) -> Result<(), ApiError> {
    svc.store
        .insert(record(ctx, server, request_id, action, event))
        .map_err(se)
}

/// Starts another event of an action (a reschedule's).
pub(crate) fn start_event(svc: &Service, server: &str, request_id: &str, event: &str) {
    let r = edit(
        svc,
        Kind::InstanceAction,
        &record_id(server, request_id),
        "instance action",
        |d: &mut ActionDoc| {
            d.events.push(EventDoc {
                event: event.to_string(),
                start_us: now_us(),
                finish_us: None,
                result: None,
                traceback: None,
            });
            Ok(true)
        },
    );
    if let Err(e) = r {
        tracing::warn!(server, request_id, event, error = %e.message, "starting an instance action event failed");
    }
}

/// Ends the latest unfinished `event` of an action (every unfinished one when `event` is
/// `None`): `Success`, or `Error` with the fault (which also marks the action `Error`).
/// An action that is gone (its server deleted meanwhile) is left alone.
pub(crate) fn finish(
    svc: &Service,
    server: &str,
    request_id: &str,
    event: Option<&str>,
    outcome: Result<(), &str>,
) {
    let r = edit(
        svc,
        Kind::InstanceAction,
        &record_id(server, request_id),
        "instance action",
        |d: &mut ActionDoc| {
            let now = now_us();
            let mut changed = false;
            for e in d.events.iter_mut().rev() {
                if e.finish_us.is_some() || event.is_some_and(|n| n != e.event) {
                    continue;
                }
                e.finish_us = Some(now);
                e.result = Some(if outcome.is_ok() { "Success" } else { "Error" }.into());
                e.traceback = outcome.err().map(str::to_string);
                changed = true;
                if event.is_some() {
                    break;
                }
            }
            if changed && outcome.is_err() {
                d.message = Some("Error".into());
            }
            Ok(changed)
        },
    );
    if let Err(e) = r {
        tracing::warn!(server, request_id, error = %e.message, "finishing an instance action event failed");
    }
}

/// Runs `f` on the blocking pool with `server` and `request_id` to record a phase of that
/// action (from async code, such as a build); nothing without a request id.
pub(crate) async fn phase(
    svc: &Arc<Service>,
    server: &str,
    request_id: Option<&str>,
    f: impl FnOnce(&Service, &str, &str) + Send + 'static,
) {
    let Some(rid) = request_id.map(str::to_string) else {
        return;
    };
    let server = server.to_string();
    let _ = super::blocking(svc.clone(), move |svc| {
        f(svc, &server, &rid);
        Ok(())
    })
    .await;
}

/// The request id of the server's create action, if it has one.
pub(crate) fn create_request(svc: &Service, server: &str) -> Option<String> {
    svc.store
        .list(Kind::InstanceAction, Some(server))
        .ok()?
        .iter()
        .filter_map(|r| r.parse::<ActionDoc>().ok())
        .find(|d| d.action == CREATE)
        .map(|d| d.request_id)
}

/// The writes that drop every action of `server` (to batch with its record's delete).
pub(crate) fn deletes(svc: &Service, server: &str) -> Result<Vec<Write>, ApiError> {
    Ok(svc
        .store
        .list(Kind::InstanceAction, Some(server))
        .map_err(se)?
        .into_iter()
        .map(|r| Write::Delete(Kind::InstanceAction, r.id))
        .collect())
}

fn action_view(d: &ActionDoc) -> Value {
    json!({"action": d.action, "instance_uuid": d.instance_uuid, "request_id": d.request_id,
           "user_id": d.user_id, "project_id": d.project_id, "start_time": time(d.start_us),
           "message": d.message})
}

fn event_view(e: &EventDoc, admin: bool) -> Value {
    let mut v = json!({"event": e.event, "start_time": time(e.start_us),
                       "finish_time": e.finish_us.map(time), "result": e.result});
    if admin {
        v["traceback"] = json!(e.traceback);
    }
    v
}

/// Serves `servers/{id}/os-instance-actions[/{request_id}]`, or `None` for other paths.
pub(crate) fn handle(
    svc: &Service,
    ctx: &Ctx,
    req: &Request,
    segs: &[&str],
) -> Option<Result<Response, ApiError>> {
    match (segs, &req.method) {
        (["servers", id, "os-instance-actions"], &Method::GET) => Some(list(svc, ctx, id)),
        (["servers", id, "os-instance-actions", rid], &Method::GET) => {
            Some(show(svc, ctx, id, rid))
        }
        (["servers", _, "os-instance-actions", ..], _) => Some(Err(ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "The method is not allowed for the requested URL.",
        ))),
        _ => None,
    }
}

fn actions(svc: &Service, ctx: &Ctx, server: &str) -> Result<Vec<ActionDoc>, ApiError> {
    super::compute::load_server(svc, ctx, server)?;
    let mut out: Vec<ActionDoc> = svc
        .store
        .list(Kind::InstanceAction, Some(server))
        .map_err(se)?
        .iter()
        .map(|r| r.parse().map_err(se))
        .collect::<Result<_, _>>()?;
    // Newest first, as Nova lists.
    out.sort_by(|a, b| {
        b.start_us
            .cmp(&a.start_us)
            .then_with(|| b.request_id.cmp(&a.request_id))
    });
    Ok(out)
}

fn list(svc: &Service, ctx: &Ctx, server: &str) -> Result<Response, ApiError> {
    let list: Vec<Value> = actions(svc, ctx, server)?.iter().map(action_view).collect();
    Ok(json_resp(StatusCode::OK, &json!({"instanceActions": list})))
}

fn show(svc: &Service, ctx: &Ctx, server: &str, request_id: &str) -> Result<Response, ApiError> {
    let d = actions(svc, ctx, server)?
        .into_iter()
        .find(|d| d.request_id == request_id)
        .ok_or_else(|| {
            ApiError::not_found(format!(
                "Action for request_id {request_id} on instance {server} not found"
            ))
        })?;
    let admin = ctx.is_admin();
    let mut v = action_view(&d);
    v["events"] = json!(
        d.events
            .iter()
            .map(|e| event_view(e, admin))
            .collect::<Vec<_>>()
    );
    Ok(json_resp(StatusCode::OK, &json!({"instanceAction": v})))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_distinct_v4_uuids() {
        let ids: std::collections::BTreeSet<String> =
            (0..10_000).map(|_| new_request_id()).collect();
        assert_eq!(ids.len(), 10_000);
        for id in ids.iter().take(20) {
            let u = uuid::Uuid::parse_str(id.strip_prefix("req-").unwrap()).unwrap();
            assert_eq!(u.get_version_num(), 4, "{id}");
        }
    }

    #[test]
    fn times_are_novas_form() {
        assert_eq!(time(1_764_975_662_123_456), "2025-12-05T23:01:02.123456");
        assert_eq!(time(7), "1970-01-01T00:00:00.000007");
    }
}
