//! The API socket thread: one thread accepting on the Unix socket, one short-lived thread per
//! connection parsing requests and waiting for the VMM thread's answers.

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Sender, channel};

use super::http::{self, parse_request};
use super::{ApiRequest, ApiResponse, routes};
use crate::controller::Event;
use crate::metrics::METRICS;

/// Errors from starting the API server.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// Binding the socket failed.
    #[error("bind api socket {path}")]
    Bind {
        /// The socket path.
        path: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Spawning the accept thread failed.
    #[error("spawn api thread")]
    Spawn(#[source] std::io::Error),
}

/// Binds `path` (it must not exist) and serves it on a new thread, sending requests to `tx`.
pub fn spawn(path: &Path, tx: Sender<Event>) -> Result<(), ServerError> {
    let listener = UnixListener::bind(path).map_err(|source| ServerError::Bind {
        path: path.display().to_string(),
        source,
    })?;
    std::thread::Builder::new()
        .name("fc_api".into())
        .spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let tx = tx.clone();
                let _ = std::thread::Builder::new()
                    .name("fc_api_conn".into())
                    .spawn(move || serve_connection(stream, &tx));
            }
        })
        .map_err(ServerError::Spawn)?;
    Ok(())
}

fn write_response(stream: &mut UnixStream, resp: &ApiResponse) -> std::io::Result<()> {
    let bytes = match resp {
        ApiResponse::NoContent => http::response(204, "application/json", b""),
        ApiResponse::Json(v) => http::response(200, "application/json", v.to_string().as_bytes()),
        ApiResponse::Text(t) => http::response(200, "text/plain; version=0.0.4", t.as_bytes()),
        ApiResponse::Error(status, message) => {
            METRICS.api_errors.fetch_add(1, Ordering::Relaxed);
            let body = serde_json::json!({ "fault_message": message }).to_string();
            http::response(*status, "application/json", body.as_bytes())
        }
    };
    stream.write_all(&bytes)
}

/// Asks the VMM thread and waits for its answer.
fn dispatch(tx: &Sender<Event>, req: ApiRequest) -> ApiResponse {
    let (reply_tx, reply_rx) = channel();
    if tx.send(Event::Api(Box::new(req), reply_tx)).is_err() {
        return ApiResponse::Error(500, "The VMM is shutting down.".into());
    }
    reply_rx
        .recv()
        .unwrap_or_else(|_| ApiResponse::Error(500, "The VMM is shutting down.".into()))
}

fn serve_connection(mut stream: UnixStream, tx: &Sender<Event>) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    // Whether this request's `100 Continue` was sent.
    let mut continued = false;
    loop {
        match parse_request(&buf) {
            Ok(Some((req, used))) => {
                buf.drain(..used);
                continued = false;
                METRICS.api_requests.fetch_add(1, Ordering::Relaxed);
                let resp = match routes::route(&req) {
                    Ok(api) => dispatch(tx, api),
                    Err(resp) => resp,
                };
                if write_response(&mut stream, &resp).is_err() || req.close {
                    return;
                }
                continue;
            }
            Ok(None) => {
                if !continued && http::wants_continue(&buf) {
                    continued = true;
                    if stream.write_all(http::CONTINUE).is_err() {
                        return;
                    }
                }
            }
            Err(e) => {
                let _ = write_response(&mut stream, &ApiResponse::Error(e.status(), e.to_string()));
                return;
            }
        }
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}
