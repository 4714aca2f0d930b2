//! Exporting a volume: a thread that listens on the vhost-user socket and serves one
//! frontend at a time, going back to listening when it disconnects.

use std::io;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use tracing::{info, warn};
use vhost::vhost_user::Listener;
use vhost_user_backend::{ShutdownHandle, VhostUserDaemon};
use vm_memory::{GuestMemoryAtomic, GuestMemoryMmap};

use super::backend::BlockBackend;

/// Errors starting an export.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// Binding the socket failed.
    #[error("listen on {path}")]
    Listen {
        /// The socket path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: vhost::vhost_user::Error,
    },
    /// Spawning the listener thread failed.
    #[error("spawn export thread")]
    Spawn(#[source] io::Error),
}

/// A running export; dropping it (or [`Export::stop`]) closes the socket and disconnects
/// any frontend.
pub struct Export {
    path: PathBuf,
    stop: Arc<AtomicBool>,
    current: Arc<Mutex<Option<ShutdownHandle>>>,
    thread: Option<JoinHandle<()>>,
}

impl Export {
    /// Starts listening on `path` (replacing a stale socket) and serving `backend`.
    pub fn start(name: &str, path: &Path, backend: Arc<BlockBackend>) -> Result<Self, ExportError> {
        let mut listener = Listener::new(path, true).map_err(|source| ExportError::Listen {
            path: path.to_path_buf(),
            source,
        })?;
        let stop = Arc::new(AtomicBool::new(false));
        let current: Arc<Mutex<Option<ShutdownHandle>>> = Arc::default();
        let (thread_stop, thread_current) = (stop.clone(), current.clone());
        let name = name.to_string();
        let thread = std::thread::Builder::new()
            .name(format!("export-{name}"))
            .spawn(move || serve(&name, &mut listener, backend, &thread_stop, &thread_current))
            .map_err(ExportError::Spawn)?;
        Ok(Export {
            path: path.to_path_buf(),
            stop,
            current,
            thread: Some(thread),
        })
    }

    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Stops serving and removes the socket.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(h) = self
            .current
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
        {
            h.shutdown();
        }
        // Wake the accept() with a connection of our own; the loop sees `stop` and ends.
        let _ = UnixStream::connect(&self.path);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

impl Drop for Export {
    fn drop(&mut self) {
        if self.thread.is_some() {
            self.shutdown();
        }
    }
}

fn serve(
    name: &str,
    listener: &mut Listener,
    backend: Arc<BlockBackend>,
    stop: &AtomicBool,
    current: &Mutex<Option<ShutdownHandle>>,
) {
    while !stop.load(Ordering::Acquire) {
        let mem = GuestMemoryAtomic::new(GuestMemoryMmap::new());
        let mut daemon = match VhostUserDaemon::new(name.to_string(), backend.clone(), mem) {
            Ok(d) => d,
            Err(e) => {
                warn!(volume = name, error = %e, "cannot create vhost-user daemon; export ends");
                return;
            }
        };
        if let Err(e) = daemon.start(listener) {
            if stop.load(Ordering::Acquire) {
                break;
            }
            warn!(volume = name, error = %e, "vhost-user connection failed at start");
            continue;
        }
        *current.lock().unwrap_or_else(|e| e.into_inner()) = daemon.shutdown_handle();
        if stop.load(Ordering::Acquire) {
            daemon.request_shutdown();
        }
        info!(volume = name, "frontend connected");
        if let Err(e) = daemon.wait() {
            info!(volume = name, error = %e, "frontend connection ended with an error");
        } else {
            info!(volume = name, "frontend disconnected");
        }
        *current.lock().unwrap_or_else(|e| e.into_inner()) = None;
        for handler in daemon.get_epoll_handlers() {
            handler.send_exit_event();
        }
    }
}
