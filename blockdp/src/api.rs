//! blockdp's HTTP/JSON API.
//!
//! Routes (bodies are JSON, unknown fields refused):
//! - `GET /` : service and version
//! - `GET /volumes`, `POST /volumes` `{name?, size?, source?: {path}|{url}|{snapshot_id}, read_only?}`
//! - `GET /volumes/{id}`, `DELETE /volumes/{id}`
//! - `POST /volumes/{id}/extend` `{size}`
//! - `POST /volumes/{id}/snapshots` `{name?}`; `GET /snapshots`, `GET|DELETE /snapshots/{id}`
//! - `PUT /volumes/{id}/export` `{num_queues?}`, `DELETE /volumes/{id}/export`
//! - `PUT /volumes/{id}/qos` `{iops?, bytes_per_sec?}`
//! - `GET /metrics` : Prometheus text
//!
//! Errors answer `{"error": {"code": ..., "message": ...}}` with a 4xx or 5xx status.

use std::sync::{Arc, Mutex};

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use crate::qos::QosLimits;
use crate::volume::manager::{CreateVolume, Kind, Manager, ManagerError};

/// Largest request body accepted.
pub const MAX_BODY: usize = 64 * 1024;

/// The state handlers share.
pub type Shared = Arc<Mutex<Manager>>;

/// An API error: a status, a stable code and a message for the client.
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
}

impl From<ManagerError> for ApiError {
    fn from(e: ManagerError) -> Self {
        let (status, code) = match &e {
            ManagerError::NotFound { .. } => (StatusCode::NOT_FOUND, "not_found"),
            ManagerError::Invalid(_) => (StatusCode::BAD_REQUEST, "invalid_request"),
            ManagerError::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            ManagerError::Source { .. } => (StatusCode::BAD_REQUEST, "bad_source"),
            ManagerError::Io { .. } | ManagerError::Export(_) => {
                (StatusCode::INTERNAL_SERVER_ERROR, "internal")
            }
        };
        ApiError::new(status, code, error_chain(&e))
    }
}

/// The error and its causes, joined: the client sees why, not just what.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut msg = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        cur = s.source();
    }
    msg
}

type Resp = Response<Full<Bytes>>;

fn json_resp(status: StatusCode, v: Value) -> Resp {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(v.to_string())))
        .expect("static response parts are valid")
}

fn error_resp(e: ApiError) -> Resp {
    json_resp(
        e.status,
        json!({"error": {"code": e.code, "message": e.message}}),
    )
}

/// Serves one request.
pub async fn handle(
    state: Shared,
    req: Request<Incoming>,
) -> Result<Resp, std::convert::Infallible> {
    Ok(route(state, req).await.unwrap_or_else(error_resp))
}

async fn route(state: Shared, req: Request<Incoming>) -> Result<Resp, ApiError> {
    let method = req.method().clone();
    let path = req.uri().path().trim_end_matches('/').to_string();
    let parts: Vec<&str> = path.split('/').skip(1).collect();
    match (&method, parts.as_slice()) {
        (&Method::GET, [] | [""]) => Ok(json_resp(
            StatusCode::OK,
            json!({"service": "blockdp", "version": env!("CARGO_PKG_VERSION")}),
        )),
        (&Method::GET, ["metrics"]) => {
            let text = blocking(state, |m| {
                let mut out = String::new();
                m.render_metrics(&mut out);
                Ok(out)
            })
            .await?;
            Ok(Response::builder()
                .header("content-type", "text/plain; version=0.0.4")
                .body(Full::new(Bytes::from(text)))
                .expect("static response parts are valid"))
        }
        (&Method::GET, ["volumes"]) => {
            let v = blocking(state, |m| Ok(m.list(Kind::Volume))).await?;
            Ok(json_resp(StatusCode::OK, json!({ "volumes": v })))
        }
        (&Method::POST, ["volumes"]) => {
            let body: CreateVolume = read_json(req).await?;
            let v = blocking(state, move |m| m.create(body)).await?;
            Ok(json_resp(StatusCode::CREATED, json!({ "volume": v })))
        }
        (&Method::GET, ["volumes", id]) => {
            let id = id.to_string();
            let v = blocking(state, move |m| m.get(Kind::Volume, &id).cloned()).await?;
            Ok(json_resp(StatusCode::OK, json!({ "volume": v })))
        }
        (&Method::DELETE, ["volumes", id]) => {
            let id = id.to_string();
            blocking(state, move |m| m.delete(Kind::Volume, &id)).await?;
            Ok(empty(StatusCode::NO_CONTENT))
        }
        (&Method::POST, ["volumes", id, "extend"]) => {
            #[derive(Deserialize)]
            #[serde(deny_unknown_fields)]
            struct Extend {
                size: u64,
            }
            let body: Extend = read_json(req).await?;
            let id = id.to_string();
            let v = blocking(state, move |m| m.extend(&id, body.size)).await?;
            Ok(json_resp(StatusCode::OK, json!({ "volume": v })))
        }
        (&Method::POST, ["volumes", id, "snapshots"]) => {
            #[derive(Deserialize, Default)]
            #[serde(deny_unknown_fields)]
            struct Snap {
                #[serde(default)]
                name: Option<String>,
            }
            let body: Snap = read_json_or_default(req).await?;
            let id = id.to_string();
            let s = blocking(state, move |m| m.snapshot(&id, body.name)).await?;
            Ok(json_resp(StatusCode::CREATED, json!({ "snapshot": s })))
        }
        (&Method::PUT, ["volumes", id, "export"]) => {
            #[derive(Deserialize, Default)]
            #[serde(deny_unknown_fields)]
            struct ExportReq {
                #[serde(default)]
                num_queues: Option<u16>,
            }
            let body: ExportReq = read_json_or_default(req).await?;
            let id = id.to_string();
            let v = blocking(state, move |m| m.export(&id, body.num_queues)).await?;
            Ok(json_resp(StatusCode::OK, json!({ "volume": v })))
        }
        (&Method::DELETE, ["volumes", id, "export"]) => {
            let id = id.to_string();
            let v = blocking(state, move |m| m.unexport(&id)).await?;
            Ok(json_resp(StatusCode::OK, json!({ "volume": v })))
        }
        (&Method::PUT, ["volumes", id, "qos"]) => {
            let body: QosLimits = read_json(req).await?;
            let id = id.to_string();
            let v = blocking(state, move |m| m.set_qos(&id, body)).await?;
            Ok(json_resp(StatusCode::OK, json!({ "volume": v })))
        }
        (&Method::GET, ["snapshots"]) => {
            let v = blocking(state, |m| Ok(m.list(Kind::Snapshot))).await?;
            Ok(json_resp(StatusCode::OK, json!({ "snapshots": v })))
        }
        (&Method::GET, ["snapshots", id]) => {
            let id = id.to_string();
            let v = blocking(state, move |m| m.get(Kind::Snapshot, &id).cloned()).await?;
            Ok(json_resp(StatusCode::OK, json!({ "snapshot": v })))
        }
        (&Method::DELETE, ["snapshots", id]) => {
            let id = id.to_string();
            blocking(state, move |m| m.delete(Kind::Snapshot, &id)).await?;
            Ok(empty(StatusCode::NO_CONTENT))
        }
        (
            _,
            ["volumes"]
            | ["volumes", _]
            | ["volumes", _, _]
            | ["snapshots"]
            | ["snapshots", _]
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

fn empty(status: StatusCode) -> Resp {
    Response::builder()
        .status(status)
        .body(Full::new(Bytes::new()))
        .expect("static response parts are valid")
}

/// Runs a manager operation on a blocking thread (it may copy gigabytes or fsync).
async fn blocking<T, F>(state: Shared, f: F) -> Result<T, ApiError>
where
    T: Send + 'static,
    F: FnOnce(&mut Manager) -> Result<T, ManagerError> + Send + 'static,
{
    tokio::task::spawn_blocking(move || {
        let mut m = state.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut m)
    })
    .await
    .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?
    .map_err(ApiError::from)
}

async fn body_bytes(req: Request<Incoming>) -> Result<Bytes, ApiError> {
    Limited::new(req.into_body(), MAX_BODY)
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
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "bad_body",
                    format!("reading request body: {e}"),
                )
            }
        })
}

async fn read_json<T: DeserializeOwned>(req: Request<Incoming>) -> Result<T, ApiError> {
    let bytes = body_bytes(req).await?;
    serde_json::from_slice(&bytes).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_json",
            format!("invalid request body: {e}"),
        )
    })
}

async fn read_json_or_default<T: DeserializeOwned + Default>(
    req: Request<Incoming>,
) -> Result<T, ApiError> {
    let bytes = body_bytes(req).await?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(&bytes).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_json",
            format!("invalid request body: {e}"),
        )
    })
}
