//! The daemon: opens the store, serves HTTP on TCP, and runs the expirer and auditor.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use md5::{Digest, Md5};
use tokio::net::TcpListener;

use crate::api::{self, State};
use crate::auth::Auth;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::store::{Store, StoreError};

/// Why the daemon stopped.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The Keystone settings are unusable.
    #[error("bad keystone settings")]
    Keystone(#[from] crate::keystone::KeystoneError),
    /// The store could not be opened.
    #[error("cannot open the store")]
    Store(#[from] StoreError),
    /// The Unix socket could not be bound.
    #[error("cannot listen on {path}")]
    BindUnix {
        /// The socket path.
        path: std::path::PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The listening socket could not be bound.
    #[error("cannot listen on {addr}")]
    Bind {
        /// The address.
        addr: std::net::SocketAddr,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// Opens the store and builds the shared state.
pub fn state(config: Config) -> Result<Arc<State>, ServerError> {
    let store = Store::open(&config.data_dir)?;
    let keystone = config
        .keystone
        .as_ref()
        .map(|k| crate::keystone::Keystone::new(&k.url, k.cache_secs))
        .transpose()?;
    Ok(Arc::new(State {
        store,
        keystone,
        auth: Auth::new(config.users.clone(), config.token_ttl_secs),
        metrics: Metrics::default(),
        config,
    }))
}

/// Serves until the process is stopped: TCP always, plus a Unix socket when configured.
pub async fn run(config: Config) -> Result<(), ServerError> {
    let addr = config.listen;
    let state = state(config)?;
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| ServerError::Bind { addr, source })?;
    tracing::info!(%addr, data_dir = %state.config.data_dir.display(), "objectd listening");
    if let Some(path) = state.config.unix_socket.clone() {
        let _ = std::fs::remove_file(&path);
        let unix =
            tokio::net::UnixListener::bind(&path).map_err(|source| ServerError::BindUnix {
                path: path.clone(),
                source,
            })?;
        tracing::info!(path = %path.display(), "objectd listening on a unix socket");
        let state = state.clone();
        tokio::spawn(async move {
            loop {
                match unix.accept().await {
                    Ok((stream, _)) => serve(state.clone(), stream),
                    Err(e) => {
                        tracing::warn!(error = %e, "unix accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
        });
    }
    spawn_background(state.clone());
    notify_ready();
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let _ = stream.set_nodelay(true);
                serve(state.clone(), stream);
            }
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Tells systemd (`Type=notify`) the daemon is serving, when `NOTIFY_SOCKET` is set.
pub fn notify_ready() {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let sock = match std::os::unix::net::UnixDatagram::unbound() {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cannot create the notify socket");
            return;
        }
    };
    let bytes = path.as_encoded_bytes();
    let sent = if let Some(name) = bytes.strip_prefix(b"@") {
        use std::os::linux::net::SocketAddrExt;
        std::os::unix::net::SocketAddr::from_abstract_name(name)
            .and_then(|addr| sock.send_to_addr(b"READY=1", &addr))
    } else {
        sock.send_to(b"READY=1", &path)
    };
    if let Err(e) = sent {
        tracing::warn!(error = %e, "cannot notify systemd");
    }
}

/// Serves one connection on its own task.
fn serve<S>(state: Arc<State>, stream: S)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    tokio::spawn(async move {
        let svc = service_fn(move |req| api::handle(state.clone(), req));
        if let Err(e) = http1::Builder::new()
            .serve_connection(TokioIo::new(stream), svc)
            .await
        {
            tracing::debug!(error = %e, "connection ended with an error");
        }
    });
}

fn spawn_background(state: Arc<State>) {
    let s = state.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(s.config.expirer_interval_secs));
        loop {
            tick.tick().await;
            match s.store.expire().await {
                Ok(n) => {
                    s.metrics.expired.fetch_add(n as u64, Ordering::Relaxed);
                }
                Err(e) => tracing::warn!(error = %e, "expirer pass failed"),
            }
        }
    });
    if state.config.auditor_interval_secs > 0 {
        tokio::spawn(async move {
            let period = Duration::from_secs(state.config.auditor_interval_secs);
            loop {
                tokio::time::sleep(period).await;
                match audit(&state.store).await {
                    Ok(n) => {
                        state.metrics.quarantined.fetch_add(n, Ordering::Relaxed);
                    }
                    Err(e) => tracing::warn!(error = %e, "auditor pass failed"),
                }
            }
        });
    }
}

/// One auditor pass: re-reads every referenced blob, quarantines those whose MD5 or size
/// is wrong; returns how many.
pub async fn audit(store: &Store) -> Result<u64, StoreError> {
    let mut bad = 0;
    for blob in store.all_blobs().await? {
        // The auditor checks the MD5 (the ETag) itself, not only the cheaper CRC32.
        let mut h = Md5::new();
        let mut off = 0u64;
        let mut ok = true;
        while off < blob.size {
            let end = (off + (1 << 20)).min(blob.size);
            match store.read_range(&blob, off, end).await {
                Ok(d) if d.len() as u64 == end - off => h.update(&d),
                _ => {
                    ok = false;
                    break;
                }
            }
            off = end;
        }
        // A file longer than its record is corrupt too.
        if ok && !blob.inline {
            ok = std::fs::metadata(store.blob_path(&blob.id)).is_ok_and(|m| m.len() == blob.size);
        }
        if !ok || hex::encode(h.finalize()) != blob.md5 {
            bad += 1;
            store.quarantine(blob.id).await?;
        }
    }
    Ok(bad)
}
