//! The HTTP/JSON API on a Unix socket (hyper 1 + tokio): Neutron's v2.0 paths plus
//! `/metrics`. Only parsing and serialising happens here; [`Controller::handle`] does the
//! work.

use std::path::Path;
use std::sync::{Arc, Mutex};

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::json;

use super::Controller;

/// The controller shared between connections.
pub type Shared = Arc<Mutex<Controller>>;

/// Largest request body accepted.
const MAX_BODY: usize = 1 << 20;

fn response(status: u16, content_type: &str, body: Vec<u8>) -> Response<Full<Bytes>> {
    Response::builder()
        .status(StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR))
        .header("content-type", content_type)
        .body(Full::new(Bytes::from(body)))
        .expect("valid response")
}

/// Handles one request.
pub async fn handle(
    ctl: Shared,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, std::convert::Infallible> {
    let method = req.method().as_str().to_string();
    let path = req.uri().path().to_string();
    let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            let v = json!({"NeutronError": {"type": "BadRequest", "message": format!("cannot read body: {e}"), "detail": ""}});
            return Ok(response(
                400,
                "application/json",
                v.to_string().into_bytes(),
            ));
        }
    };
    let mut c = ctl.lock().unwrap_or_else(|e| e.into_inner());
    if method == "GET" && path == "/metrics" {
        return Ok(response(
            200,
            "text/plain; version=0.0.4",
            c.metrics().into_bytes(),
        ));
    }
    Ok(match c.handle(&method, &path, &body) {
        Ok((204, _)) => response(204, "application/json", vec![]),
        Ok((status, v)) => response(status, "application/json", v.to_string().into_bytes()),
        Err(e) => {
            let (status, code) = e.status_and_code();
            if status >= 500 {
                tracing::error!(error = %crate::api::http::chain(&e), "request failed");
            }
            let v = json!({"NeutronError": {"type": code, "message": chain(&e), "detail": ""}});
            response(status, "application/json", v.to_string().into_bytes())
        }
    })
}

/// The error and its causes, joined.
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// Tells systemd (`Type=notify`, see etc/netdp.service) that the API listens, when started
/// by it: `READY=1` to `$NOTIFY_SOCKET`.
fn notify_ready() {
    if let Some(path) = std::env::var_os("NOTIFY_SOCKET")
        && let Ok(sock) = std::os::unix::net::UnixDatagram::unbound()
        && let Err(e) = sock.send_to(b"READY=1", std::path::PathBuf::from(path))
    {
        tracing::warn!(error = %e, "could not tell systemd the daemon is ready");
    }
}

/// Serves the API on `socket` until `shutdown` resolves (telling systemd once it listens).
pub async fn serve(
    ctl: Shared,
    socket: &Path,
    shutdown: impl std::future::Future<Output = ()>,
) -> std::io::Result<()> {
    let _ = std::fs::remove_file(socket);
    let listener = tokio::net::UnixListener::bind(socket)?;
    notify_ready();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            conn = listener.accept() => {
                let (stream, _) = conn?;
                let ctl = ctl.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req| handle(ctl.clone(), req));
                    if let Err(e) = http1::Builder::new().serve_connection(TokioIo::new(stream), svc).await {
                        tracing::debug!(error = %e, "API connection ended with an error");
                    }
                });
            }
            _ = &mut shutdown => break,
        }
    }
    let _ = std::fs::remove_file(socket);
    Ok(())
}
