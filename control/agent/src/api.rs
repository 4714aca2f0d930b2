//! The agent's HTTP/JSON API, which control calls (Unix socket; TCP when configured).
//!
//! Routes (bodies are JSON, unknown fields refused):
//! - `GET /`: service and version
//! - `GET /v1/node`: node id, inventory and what the servers use
//! - `GET /v1/servers`, `POST /v1/servers` `{"server": Placement}` (202, built in the background)
//! - `GET /v1/servers/{id}`, `DELETE /v1/servers/{id}` (204 once everything is released)
//! - `POST /v1/servers/{id}/action` with one of Nova's action bodies: `{"os-stop": null}`,
//!   `{"os-start": null}`, `{"reboot": {"type": "SOFT"|"HARD"}}`, `{"pause": null}`,
//!   `{"unpause": null}` (202), `{"os-getConsoleOutput": {"length": N}}` (200 `{"output"}`)
//! - `GET /v1/servers/{id}/console?length=N`: the serial console log, `{"output": ...}`
//! - `POST /v1/servers/{id}/volumes` `{"volume_id", "device"}` (200), `DELETE
//!   /v1/servers/{id}/volumes/{volume_id}` (204): attach and detach a blockdp volume while
//!   the server is SHUTOFF (409 otherwise: no drive hot-plug)
//! - `GET /v1/volumes`, `POST /v1/volumes` `{"volume": VolumeCreate}` (201), `GET|DELETE
//!   /v1/volumes/{id}` (409 while a server holds it), `POST /v1/volumes/{id}/extend`
//!   `{"size_bytes"}`, `POST /v1/volumes/{id}/snapshots` `{"name"}` (201), `GET|DELETE
//!   /v1/snapshots/{id}`: the node's blockdp, for control's Cinder
//! - `GET /metrics`: Prometheus text
//!
//! Errors answer `{"error": {"code": ..., "message": ...}}` with a 4xx or 5xx status.

use std::collections::BTreeMap;
use std::sync::Arc;

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::agent::{Action, Agent, AgentError, VolumeCreate, error_chain};
use crate::model::{Placement, Server, Status};

/// Largest request body accepted.
pub const MAX_BODY: usize = 256 * 1024;

type Resp = Response<Full<Bytes>>;

/// An API error: status, stable code, message.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }

    fn bad(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }
}

impl From<AgentError> for ApiError {
    fn from(e: AgentError) -> Self {
        let (status, code) = match &e {
            AgentError::Invalid(_) => (StatusCode::BAD_REQUEST, "invalid_placement"),
            AgentError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            AgentError::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            AgentError::Store(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
            AgentError::Step(_) => (StatusCode::BAD_GATEWAY, "data_plane"),
            AgentError::Refused(s, _) => (
                StatusCode::from_u16(*s).unwrap_or(StatusCode::BAD_REQUEST),
                "refused",
            ),
        };
        ApiError::new(status, code, error_chain(&e))
    }
}

fn json_resp(status: StatusCode, v: Value) -> Resp {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(v.to_string())))
        .expect("static response parts are valid")
}

/// The JSON view of a server.
pub fn server_view(agent: &Agent, s: &Server) -> Value {
    let p = &s.placement;
    let r = &s.resources;
    json!({
        "id": p.id,
        "name": p.name,
        "project_id": p.project_id,
        "status": s.status,
        "task_state": s.task_state,
        "fault": s.fault,
        "vcpus": p.vcpus,
        "ram_mib": p.ram_mib,
        "created": s.created,
        "updated": s.updated,
        "volume": r.volume.as_ref().map(|v| json!({"id": v.id, "socket": v.socket, "size": v.size})),
        "attached_volumes": r.attached_volumes.iter().map(|a| json!({
            "id": a.id, "device": a.device, "socket": a.socket,
        })).collect::<Vec<_>>(),
        "ports": r.ports.iter().map(|x| json!({
            "id": x.id,
            "network_id": x.network_id,
            "mac_address": x.mac_address,
            "ip_address": x.ip_address,
            "tap": x.tap,
        })).collect::<Vec<_>>(),
        "cmdline": r.cmdline,
        "vmm": s.process.map(|x| json!({
            "pid": x.vmm_pid,
            "shim_pid": x.shim_pid,
            "api_socket": agent.vmm_socket(&p.id),
        })),
        "console_log": agent.console_path(&p.id),
        "config_drive": r.cmdline.as_ref().map(|_| agent.config_drive_path(&p.id)),
        "build_steps": s.build_steps,
        "placement": p,
    })
}

/// The node document: id, inventory, usage.
pub fn node_view(agent: &Agent) -> Value {
    let inv = crate::inventory::read(&agent.config().disk_path);
    let servers = agent.list();
    let (mut vcpus, mut ram, mut disk) = (0u64, 0u64, 0u64);
    let mut by_status: BTreeMap<&str, u64> = BTreeMap::new();
    for s in &servers {
        vcpus += u64::from(s.placement.vcpus);
        ram += s.placement.ram_mib;
        disk += s.resources.volume.as_ref().map_or(0, |v| v.size);
        *by_status.entry(s.status.as_str()).or_default() += 1;
    }
    json!({
        "id": agent.node_id(),
        "hostname": hostname(),
        "inventory": inv,
        "usage": {"vcpus": vcpus, "memory_mib": ram, "disk_bytes": disk, "servers": servers.len()},
        "servers_by_status": by_status,
    })
}

/// This machine's host name.
pub fn hostname() -> String {
    rustix::system::uname()
        .nodename()
        .to_string_lossy()
        .into_owned()
}

/// Serves one request.
pub async fn handle(
    agent: Arc<Agent>,
    req: Request<Incoming>,
) -> Result<Resp, std::convert::Infallible> {
    Ok(route(agent, req).await.unwrap_or_else(|e| {
        json_resp(
            e.status,
            json!({"error": {"code": e.code, "message": e.message}}),
        )
    }))
}

async fn route(agent: Arc<Agent>, req: Request<Incoming>) -> Result<Resp, ApiError> {
    let method = req.method().clone();
    let path = req.uri().path().trim_end_matches('/').to_string();
    let query = req.uri().query().unwrap_or("").to_string();
    let parts: Vec<&str> = path.split('/').skip(1).collect();
    match (&method, parts.as_slice()) {
        (&Method::GET, [] | [""]) => Ok(json_resp(
            StatusCode::OK,
            json!({"service": "ferrostack-agent", "version": env!("CARGO_PKG_VERSION")}),
        )),
        (&Method::GET, ["v1", "node"]) => Ok(json_resp(
            StatusCode::OK,
            json!({"node": node_view(&agent)}),
        )),
        (&Method::GET, ["metrics"]) => Ok(Response::builder()
            .header("content-type", "text/plain; version=0.0.4")
            .body(Full::new(Bytes::from(metrics(&agent))))
            .expect("static response parts are valid")),
        (&Method::GET, ["v1", "servers"]) => {
            let list: Vec<Value> = agent
                .list()
                .iter()
                .map(|s| server_view(&agent, s))
                .collect();
            Ok(json_resp(StatusCode::OK, json!({"servers": list})))
        }
        (&Method::POST, ["v1", "servers"]) => {
            #[derive(Deserialize)]
            #[serde(deny_unknown_fields)]
            struct Body {
                server: Placement,
            }
            let body: Body = read_json(req).await?;
            let s = agent.create(body.server)?;
            Ok(json_resp(
                StatusCode::ACCEPTED,
                json!({"server": server_view(&agent, &s)}),
            ))
        }
        (&Method::PUT, ["v1", "network"]) => {
            let want: crate::netsync::Desired = read_json(req).await?;
            let report = agent.apply_network(want).await?;
            Ok(json_resp(StatusCode::OK, report))
        }
        (&Method::GET, ["v1", "network"]) => Ok(json_resp(
            StatusCode::OK,
            json!({"network": agent.network_applied()}),
        )),
        (&Method::GET, ["v1", "servers", id]) => {
            let s = agent.get(id)?;
            Ok(json_resp(
                StatusCode::OK,
                json!({"server": server_view(&agent, &s)}),
            ))
        }
        (&Method::DELETE, ["v1", "servers", id]) => {
            agent.delete(id).await?;
            Ok(Response::builder()
                .status(StatusCode::NO_CONTENT)
                .body(Full::new(Bytes::new()))
                .expect("static response parts are valid"))
        }
        (&Method::GET, ["v1", "servers", id, "console"]) => {
            let length = query_param(&query, "length")
                .map(|v| {
                    v.parse::<usize>()
                        .map_err(|_| ApiError::bad(format!("length {v:?} is not a count")))
                })
                .transpose()?;
            let output = agent.console(id, length)?;
            Ok(json_resp(StatusCode::OK, json!({"output": output})))
        }
        (&Method::POST, ["v1", "servers", id, "action"]) => {
            let body: Value = read_json(req).await?;
            match parse_action(&body)? {
                Parsed::Console(length) => {
                    let output = agent.console(id, length)?;
                    Ok(json_resp(StatusCode::OK, json!({"output": output})))
                }
                Parsed::Action(a) => {
                    let s = agent.action(id, a)?;
                    Ok(json_resp(
                        StatusCode::ACCEPTED,
                        json!({"server": server_view(&agent, &s)}),
                    ))
                }
            }
        }
        (&Method::POST, ["v1", "servers", id, "volumes"]) => {
            #[derive(Deserialize)]
            #[serde(deny_unknown_fields)]
            struct Body {
                volume_id: String,
                device: String,
            }
            let b: Body = read_json(req).await?;
            let s = agent.attach_volume(id, &b.volume_id, &b.device).await?;
            Ok(json_resp(
                StatusCode::OK,
                json!({"server": server_view(&agent, &s)}),
            ))
        }
        (&Method::DELETE, ["v1", "servers", id, "volumes", vid]) => {
            agent.detach_volume(id, vid).await?;
            Ok(no_content())
        }
        (&Method::GET, ["v1", "volumes"]) => {
            let list: Vec<Value> = agent
                .list_volumes()
                .await?
                .iter()
                .map(|v| volume_view(&agent, v))
                .collect();
            Ok(json_resp(StatusCode::OK, json!({"volumes": list})))
        }
        (&Method::POST, ["v1", "volumes"]) => {
            #[derive(Deserialize)]
            #[serde(deny_unknown_fields)]
            struct Body {
                volume: VolumeCreate,
            }
            let b: Body = read_json(req).await?;
            let v = agent.create_volume(&b.volume).await?;
            Ok(json_resp(
                StatusCode::CREATED,
                json!({"volume": volume_view(&agent, &v)}),
            ))
        }
        (&Method::GET, ["v1", "volumes", id]) => {
            let v = agent.get_volume(id).await?;
            Ok(json_resp(
                StatusCode::OK,
                json!({"volume": volume_view(&agent, &v)}),
            ))
        }
        (&Method::DELETE, ["v1", "volumes", id]) => {
            agent.delete_volume(id).await?;
            Ok(no_content())
        }
        (&Method::POST, ["v1", "volumes", id, "extend"]) => {
            #[derive(Deserialize)]
            #[serde(deny_unknown_fields)]
            struct Body {
                size_bytes: u64,
            }
            let b: Body = read_json(req).await?;
            let v = agent.extend_volume(id, b.size_bytes).await?;
            Ok(json_resp(
                StatusCode::OK,
                json!({"volume": volume_view(&agent, &v)}),
            ))
        }
        (&Method::POST, ["v1", "volumes", id, "snapshots"]) => {
            #[derive(Deserialize)]
            #[serde(deny_unknown_fields)]
            struct Body {
                name: String,
            }
            let b: Body = read_json(req).await?;
            let s = agent.snapshot_volume(id, &b.name).await?;
            Ok(json_resp(
                StatusCode::CREATED,
                json!({"snapshot": snapshot_view(&s)}),
            ))
        }
        (&Method::GET, ["v1", "snapshots", id]) => {
            let s = agent.get_snapshot(id).await?;
            Ok(json_resp(
                StatusCode::OK,
                json!({"snapshot": snapshot_view(&s)}),
            ))
        }
        (&Method::DELETE, ["v1", "snapshots", id]) => {
            agent.delete_snapshot(id).await?;
            Ok(no_content())
        }
        (
            _,
            ["v1", "servers"]
            | ["v1", "servers", _]
            | ["v1", "servers", _, "action" | "console" | "volumes"]
            | ["v1", "servers", _, "volumes", _]
            | ["v1", "volumes"]
            | ["v1", "volumes", _]
            | ["v1", "volumes", _, "extend" | "snapshots"]
            | ["v1", "snapshots", _]
            | ["v1", "node"]
            | ["metrics"],
        ) => Err(ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            format!("{method} is not allowed on {path}"),
        )),
        _ => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no route for {path}"),
        )),
    }
}

fn no_content() -> Resp {
    Response::builder()
        .status(StatusCode::NO_CONTENT)
        .body(Full::new(Bytes::new()))
        .expect("static response parts are valid")
}

/// The JSON view of a blockdp volume: id, name, size, whether exported, which servers of
/// this node hold it.
pub fn volume_view(agent: &Agent, v: &crate::clients::blockdp::Volume) -> Value {
    json!({
        "id": v.id,
        "name": v.name,
        "size": v.size,
        "exported": v.export.is_some(),
        "servers": agent.volume_holders(&v.id),
    })
}

fn snapshot_view(s: &crate::clients::blockdp::Snapshot) -> Value {
    json!({"id": s.id, "name": s.name, "size": s.size, "volume_id": s.source_id})
}

fn query_param<'a>(query: &'a str, key: &str) -> Option<&'a str> {
    query
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v)
}

enum Parsed {
    Action(Action),
    Console(Option<usize>),
}

/// Reads one of Nova's action bodies: an object with exactly one known key.
fn parse_action(body: &Value) -> Result<Parsed, ApiError> {
    let obj = body
        .as_object()
        .filter(|o| o.len() == 1)
        .ok_or_else(|| ApiError::bad("an action body is an object with exactly one action"))?;
    let (name, arg) = obj.iter().next().expect("one entry");
    let no_arg = |a: Action| {
        if arg.is_null() || arg.as_object().is_some_and(|o| o.is_empty()) {
            Ok(Parsed::Action(a))
        } else {
            Err(ApiError::bad(format!("{name} takes no arguments")))
        }
    };
    match name.as_str() {
        "os-stop" => no_arg(Action::Stop),
        "os-start" => no_arg(Action::Start),
        "pause" => no_arg(Action::Pause),
        "unpause" => no_arg(Action::Unpause),
        "reboot" => {
            let t = arg.get("type").and_then(Value::as_str);
            let extra = arg.as_object().is_some_and(|o| o.len() > 1);
            match (t, extra) {
                (Some("SOFT"), false) => Ok(Parsed::Action(Action::Reboot { hard: false })),
                (Some("HARD"), false) => Ok(Parsed::Action(Action::Reboot { hard: true })),
                _ => Err(ApiError::bad(
                    "reboot needs {\"type\": \"SOFT\"} or {\"type\": \"HARD\"}",
                )),
            }
        }
        "os-getConsoleOutput" => {
            let length = match arg.get("length") {
                None | Some(Value::Null) => None,
                Some(v) => Some(
                    v.as_u64()
                        .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
                        .ok_or_else(|| ApiError::bad("length must be a non-negative integer"))?
                        as usize,
                ),
            };
            Ok(Parsed::Console(length))
        }
        other => Err(ApiError::bad(format!("unknown action {other:?}"))),
    }
}

async fn read_json<T: serde::de::DeserializeOwned>(req: Request<Incoming>) -> Result<T, ApiError> {
    let bytes = Limited::new(req.into_body(), MAX_BODY)
        .collect()
        .await
        .map(|c| c.to_bytes())
        .map_err(|e| {
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some()
            {
                ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "body_too_large",
                    format!("request body exceeds {MAX_BODY} bytes"),
                )
            } else {
                ApiError::bad(format!("reading request body: {e}"))
            }
        })?;
    serde_json::from_slice(&bytes).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_json",
            format!("invalid request body: {e}"),
        )
    })
}

/// Prometheus text: servers by status, builds and their time, VMM exits not asked for.
pub fn metrics(agent: &Agent) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let mut by_status: BTreeMap<&str, u64> = [
        Status::Build,
        Status::Active,
        Status::Shutoff,
        Status::Paused,
        Status::Error,
    ]
    .iter()
    .map(|s| (s.as_str(), 0))
    .collect();
    for s in agent.list() {
        *by_status.entry(s.status.as_str()).or_default() += 1;
    }
    let _ = writeln!(
        out,
        "# HELP ferrostack_agent_servers Servers on this node by status."
    );
    let _ = writeln!(out, "# TYPE ferrostack_agent_servers gauge");
    for (k, v) in by_status {
        let _ = writeln!(out, "ferrostack_agent_servers{{status=\"{k}\"}} {v}");
    }
    let c = agent.counters.lock().unwrap_or_else(|e| e.into_inner());
    let _ = writeln!(
        out,
        "# HELP ferrostack_agent_builds_total Builds finished, by result."
    );
    let _ = writeln!(out, "# TYPE ferrostack_agent_builds_total counter");
    let _ = writeln!(
        out,
        "ferrostack_agent_builds_total{{result=\"active\"}} {}",
        c.builds_ok
    );
    let _ = writeln!(
        out,
        "ferrostack_agent_builds_total{{result=\"error\"}} {}",
        c.builds_failed
    );
    let _ = writeln!(
        out,
        "# HELP ferrostack_agent_build_seconds_total Time spent building servers."
    );
    let _ = writeln!(out, "# TYPE ferrostack_agent_build_seconds_total counter");
    let _ = writeln!(
        out,
        "ferrostack_agent_build_seconds_total {:.3}",
        c.build_seconds
    );
    let _ = writeln!(
        out,
        "# HELP ferrostack_agent_vmm_exits_total VMM exits nobody asked for, by resulting state."
    );
    let _ = writeln!(out, "# TYPE ferrostack_agent_vmm_exits_total counter");
    for k in ["shutoff", "error"] {
        let v = c.unexpected_exits.get(k).copied().unwrap_or(0);
        let _ = writeln!(out, "ferrostack_agent_vmm_exits_total{{state=\"{k}\"}} {v}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(v: Value) -> Result<String, String> {
        match parse_action(&v) {
            Ok(Parsed::Action(a)) => Ok(format!("{a:?}")),
            Ok(Parsed::Console(l)) => Ok(format!("console {l:?}")),
            Err(e) => Err(e.message),
        }
    }

    #[test]
    fn nova_action_bodies_parse_and_junk_is_refused() {
        assert_eq!(parsed(json!({"os-stop": null})).unwrap(), "Stop");
        assert_eq!(parsed(json!({"os-start": {}})).unwrap(), "Start");
        assert_eq!(
            parsed(json!({"reboot": {"type": "HARD"}})).unwrap(),
            "Reboot { hard: true }"
        );
        assert_eq!(
            parsed(json!({"os-getConsoleOutput": {"length": 5}})).unwrap(),
            "console Some(5)"
        );
        assert!(parsed(json!({"reboot": {"type": "WARM"}})).is_err());
        assert!(parsed(json!({"os-stop": null, "pause": null})).is_err());
        assert!(
            parsed(json!({"explode": null}))
                .unwrap_err()
                .contains("explode")
        );
        assert!(parsed(json!([1])).is_err());
        assert!(parsed(json!({"pause": 3})).is_err());
        assert!(parsed(json!({"os-getConsoleOutput": {"length": -1}})).is_err());
    }

    #[test]
    fn query_parameters() {
        assert_eq!(query_param("a=1&length=20", "length"), Some("20"));
        assert_eq!(query_param("", "length"), None);
    }
}
