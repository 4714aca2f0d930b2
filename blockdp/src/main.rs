//! The blockdp daemon: volumes over vhost-user-blk, managed through HTTP on a Unix socket.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use blockdp::api;
use blockdp::config::Config;
use blockdp::volume::manager::{Manager, ManagerConfig, Opener};
use clap::Parser;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tracing::{error, info};

/// Command-line flags; each overrides the config file.
#[derive(Debug, Parser)]
#[command(
    name = "blockdp",
    version,
    about = "Ferrostack volume service: io_uring volumes over vhost-user-blk",
    args_override_self = true
)]
struct Args {
    /// TOML configuration file.
    #[arg(long, env = "BLOCKDP_CONFIG")]
    config: Option<PathBuf>,
    /// Data directory.
    #[arg(long, env = "BLOCKDP_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// API Unix socket.
    #[arg(long, env = "BLOCKDP_API_SOCKET")]
    api_socket: Option<PathBuf>,
    /// Also serve the API on this TCP address.
    #[arg(long, env = "BLOCKDP_LISTEN")]
    listen: Option<String>,
    /// Default queues per export.
    #[arg(long)]
    num_queues: Option<u16>,
    /// Idle-queue poll time in microseconds.
    #[arg(long)]
    poll_us: Option<u64>,
    /// Log as JSON lines.
    #[arg(long)]
    log_json: bool,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    if args.log_json {
        tracing_subscriber::fmt()
            .json()
            .with_env_filter(filter)
            .init();
    } else {
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            // Colours only on a terminal, never in a file or the journal.
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
            .init();
    }

    let mut cfg = match &args.config {
        Some(p) => Config::load(p)?,
        None => Config::default(),
    };
    if let Some(v) = args.data_dir {
        cfg.data_dir = v;
    }
    if let Some(v) = args.api_socket {
        cfg.api_socket = v;
    }
    if let Some(v) = args.listen {
        cfg.listen = v;
    }
    if let Some(v) = args.num_queues {
        cfg.num_queues = v;
    }
    if let Some(v) = args.poll_us {
        cfg.poll_us = v;
    }
    let tcp = cfg.validate()?;

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("start tokio runtime")?;
    let handle = rt.handle().clone();
    let opener: Box<Opener> = Box::new(move |src| blockdp::source::open(&handle, src));
    let manager = Manager::open(
        ManagerConfig {
            data_dir: cfg.data_dir.clone(),
            default_queues: cfg.num_queues,
            poll: Duration::from_micros(cfg.poll_us),
        },
        opener,
    )
    .with_context(|| format!("open data directory {}", cfg.data_dir.display()))?;
    let state: api::Shared = Arc::new(Mutex::new(manager));

    rt.block_on(serve(state.clone(), &cfg, tcp))?;
    state.lock().unwrap_or_else(|e| e.into_inner()).shutdown();
    info!("stopped");
    Ok(())
}

async fn serve(
    state: api::Shared,
    cfg: &Config,
    tcp: Option<std::net::SocketAddr>,
) -> anyhow::Result<()> {
    if let Some(dir) = cfg.api_socket.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    }
    let _ = std::fs::remove_file(&cfg.api_socket);
    let unix = tokio::net::UnixListener::bind(&cfg.api_socket)
        .with_context(|| format!("bind {}", cfg.api_socket.display()))?;
    let tcp = match tcp {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("bind {addr}"))?,
        ),
        None => None,
    };
    info!(socket = %cfg.api_socket.display(), data_dir = %cfg.data_dir.display(), "blockdp serving");
    notify_ready();

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        tokio::select! {
            conn = unix.accept() => match conn {
                Ok((stream, _)) => spawn_conn(state.clone(), TokioIo::new(stream)),
                Err(e) => error!(error = %e, "accept on API socket"),
            },
            conn = async { match &tcp { Some(l) => l.accept().await, None => std::future::pending().await } } => match conn {
                Ok((stream, _)) => spawn_conn(state.clone(), TokioIo::new(stream)),
                Err(e) => error!(error = %e, "accept on API TCP"),
            },
            _ = tokio::signal::ctrl_c() => break,
            _ = term.recv() => break,
        }
    }
    let _ = std::fs::remove_file(&cfg.api_socket);
    Ok(())
}

fn spawn_conn<I>(state: api::Shared, io: I)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    tokio::spawn(async move {
        let svc = service_fn(move |req| api::handle(state.clone(), req));
        if let Err(e) = http1::Builder::new().serve_connection(io, svc).await {
            tracing::debug!(error = %e, "API connection ended with an error");
        }
    });
}

/// Tells systemd (`Type=notify`) that the daemon is ready, when started by it.
fn notify_ready() {
    if let Some(path) = std::env::var_os("NOTIFY_SOCKET")
        && let Ok(sock) = std::os::unix::net::UnixDatagram::unbound()
    {
        let _ = sock.send_to(b"READY=1", PathBuf::from(path));
    }
}
