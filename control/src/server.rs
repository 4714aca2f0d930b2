//! The daemon: bind, serve connections, periodic work (revocation refresh, key rotation),
//! graceful stop on SIGTERM/SIGINT.

use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use crate::service::Service;

/// Errors running the server.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The listen address could not be bound.
    #[error("bind {0}")]
    Bind(std::net::SocketAddr, #[source] std::io::Error),
}

/// Serves until SIGTERM or SIGINT.
pub async fn run(svc: Arc<Service>) -> Result<(), ServerError> {
    let addr = svc.config.listen;
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| ServerError::Bind(addr, e))?;
    serve(svc, listener, shutdown_signal()).await;
    Ok(())
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

/// After a crash, images caught in `saving` or `importing` go back to `queued` (their
/// partial data is overwritten by the next upload). Only for the embedded store: with a
/// shared store another controller may be uploading right now.
pub fn recover_interrupted(svc: &Service) -> Result<usize, crate::service::ServiceError> {
    use crate::store::Kind;
    if svc.store.engine() != "sqlite" {
        return Ok(0);
    }
    let mut n = 0;
    for rec in svc.store.list(Kind::Image, None)? {
        let mut doc: crate::image::ImageDoc = rec.parse()?;
        if doc.status == "saving" || doc.status == "importing" || doc.status == "uploading" {
            doc.status = "queued".into();
            svc.store.update(rec.with_doc(None, &doc))?;
            let _ = std::fs::remove_file(svc.config.raw.images.staging_dir.join(&rec.id));
            n += 1;
        }
    }
    if n > 0 {
        tracing::warn!(images = n, "interrupted uploads put back to queued");
    }
    Ok(n)
}

/// Serves on a bound listener until `stop` completes.
pub async fn serve(
    svc: Arc<Service>,
    listener: TcpListener,
    stop: impl std::future::Future<Output = ()>,
) {
    tracing::info!(addr = %svc.config.listen, store = svc.store.engine(), "control listening");
    notify_ready();
    let housekeeping = tokio::spawn(housekeeping(svc.clone()));
    tokio::pin!(stop);
    loop {
        let (stream, _) = tokio::select! {
            _ = &mut stop => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let svc = svc.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let svc = svc.clone();
                async move { Ok::<_, std::convert::Infallible>(crate::api::handle(svc, req).await) }
            });
            if let Err(e) = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        });
    }
    housekeeping.abort();
    tracing::info!("control stopped");
}

async fn housekeeping(svc: Arc<Service>) {
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    let mut n: u64 = 0;
    loop {
        tick.tick().await;
        n += 1;
        let s = svc.clone();
        let rotate = n.is_multiple_of(720); // hourly
        let _ = tokio::task::spawn_blocking(move || {
            if let Err(e) = s.reload_revocations() {
                tracing::warn!(error = %e, "reloading revocations failed");
            }
            if let Err(e) = s.keys.reload() {
                tracing::warn!(error = %e, "reloading token keys failed");
            }
            if rotate {
                maybe_rotate(&s);
            }
        })
        .await;
    }
}

/// Rotates the signing key if the primary is older than `key-rotation`.
pub fn maybe_rotate(svc: &Service) {
    if svc
        .keys
        .primary_age()
        .is_some_and(|age| age >= svc.config.key_rotation)
    {
        match svc.keys.rotate() {
            Ok(id) => tracing::info!(key = id, "rotated the token signing key"),
            Err(e) => tracing::warn!(error = %e, "key rotation failed"),
        }
    }
}

/// Tells systemd (Type=notify) that the daemon is ready, if NOTIFY_SOCKET is set.
fn notify_ready() {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let path = std::path::PathBuf::from(path);
    if path.as_os_str().as_encoded_bytes().first() == Some(&b'@') {
        tracing::warn!("abstract NOTIFY_SOCKET is not supported");
        return;
    }
    match std::os::unix::net::UnixDatagram::unbound() {
        Ok(sock) => {
            if let Err(e) = sock.send_to(b"READY=1", &path) {
                tracing::warn!(error = %e, "sd_notify failed");
            }
        }
        Err(e) => tracing::warn!(error = %e, "sd_notify socket failed"),
    }
}
