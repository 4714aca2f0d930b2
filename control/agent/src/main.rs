//! `ferrostack-agent`: the node agent daemon.
//!
//! ```text
//! ferrostack-agent --state-dir /var/lib/ferrostack/agent --socket /run/ferrostack/agent.sock
//! ferrostack-agent vmm-shim --pid-file P --exit-file E -- vmm ARGS   # used by the agent
//! ```

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use ferrostack_agent::agent::{Agent, AgentConfig};
use ferrostack_agent::config::Config;
use ferrostack_agent::control::ControlConfig;
use ferrostack_agent::{api, control, process};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;

/// Command line; each flag overrides the config file.
#[derive(Debug, Parser)]
#[command(
    name = "ferrostack-agent",
    version,
    about = "Ferrostack node agent: runs placed servers with vmm, blockdp and netdp"
)]
struct Args {
    #[command(subcommand)]
    cmd: Option<Cmd>,
    /// TOML configuration file.
    #[arg(long, env = "AGENT_CONFIG")]
    config: Option<PathBuf>,
    /// State directory.
    #[arg(long, env = "AGENT_STATE_DIR")]
    state_dir: Option<PathBuf>,
    /// API Unix socket.
    #[arg(long, env = "AGENT_SOCKET")]
    socket: Option<PathBuf>,
    /// Also serve the API on this TCP address.
    #[arg(long, env = "AGENT_LISTEN")]
    listen: Option<String>,
    /// blockdp's API socket.
    #[arg(long, env = "BLOCKDP_API_SOCKET")]
    blockdp_socket: Option<PathBuf>,
    /// netdp's API socket.
    #[arg(long, env = "NETDP_SOCKET")]
    netdp_socket: Option<PathBuf>,
    /// The vmm binary.
    #[arg(long, env = "AGENT_VMM_BINARY")]
    vmm_binary: Option<PathBuf>,
    /// Where the volume disk is measured.
    #[arg(long)]
    disk_path: Option<PathBuf>,
    /// Seconds a guest gets to shut down after Ctrl+Alt+Del.
    #[arg(long)]
    shutdown_timeout_secs: Option<u64>,
    /// Seconds netdp gets to program a port.
    #[arg(long)]
    port_timeout_secs: Option<u64>,
    /// Control's URL for registration and heartbeats.
    #[arg(long, env = "AGENT_CONTROL_URL")]
    control_url: Option<String>,
    /// Token for control (`X-Auth-Token`).
    #[arg(long, env = "AGENT_CONTROL_TOKEN")]
    control_token: Option<String>,
    /// Seconds between heartbeats.
    #[arg(long)]
    heartbeat_interval_secs: Option<u64>,
    /// Seconds between meter samples sent to control (0: none).
    #[arg(long)]
    sample_interval_secs: Option<u64>,
    /// The URL control should call this agent at.
    #[arg(long)]
    agent_url: Option<String>,
    /// Log as JSON lines.
    #[arg(long)]
    log_json: bool,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Runs a VMM and records its pid and how it ended (started by the agent).
    VmmShim {
        /// Where to record the VMM's pid.
        #[arg(long)]
        pid_file: PathBuf,
        /// Where to record how it ended.
        #[arg(long)]
        exit_file: PathBuf,
        /// The program and its arguments.
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if let Some(Cmd::VmmShim {
        pid_file,
        exit_file,
        command,
    }) = &args.cmd
    {
        let (program, rest) = command.split_first().expect("clap requires the command");
        std::process::exit(process::run_shim(
            pid_file,
            exit_file,
            &PathBuf::from(program),
            rest,
        ));
    }
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    if args.log_json {
        tracing_subscriber::fmt()
            .json()
            .with_writer(std::io::stderr)
            .with_env_filter(filter)
            .init();
    } else {
        use std::io::IsTerminal;
        tracing_subscriber::fmt()
            .with_writer(std::io::stderr)
            .with_ansi(std::io::stderr().is_terminal())
            .with_env_filter(filter)
            .init();
    }
    let cfg = merge(&args)?;
    cfg.validate()?;
    let agent_exe = std::env::current_exe().context("find this executable")?;
    let vmm_binary = if cfg.vmm_binary.as_os_str().is_empty() {
        let sibling = agent_exe.with_file_name("vmm");
        if sibling.exists() {
            sibling
        } else {
            PathBuf::from("vmm")
        }
    } else {
        cfg.vmm_binary.clone()
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(serve(cfg, agent_exe, vmm_binary))
}

fn merge(a: &Args) -> anyhow::Result<Config> {
    let mut c = match &a.config {
        Some(p) => Config::load(p)?,
        None => Config::default(),
    };
    macro_rules! take {
        ($($f:ident),*) => { $( if let Some(v) = &a.$f { c.$f = v.clone(); } )* };
    }
    take!(
        state_dir,
        socket,
        listen,
        blockdp_socket,
        netdp_socket,
        vmm_binary,
        disk_path,
        shutdown_timeout_secs,
        port_timeout_secs,
        control_url,
        control_token,
        heartbeat_interval_secs,
        agent_url,
        sample_interval_secs
    );
    Ok(c)
}

async fn serve(cfg: Config, agent_exe: PathBuf, vmm_binary: PathBuf) -> anyhow::Result<()> {
    let agent = Agent::open(AgentConfig {
        state_dir: cfg.state_dir.clone(),
        blockdp_socket: cfg.blockdp_socket.clone(),
        netdp_socket: cfg.netdp_socket.clone(),
        vmm_binary,
        agent_exe,
        shutdown_timeout: Duration::from_secs(cfg.shutdown_timeout_secs),
        port_timeout: Duration::from_secs(cfg.port_timeout_secs),
        image_timeout: Duration::from_secs(cfg.image_timeout_secs),
        disk_path: cfg.disk_path.clone(),
        record_events: !cfg.control_url.is_empty(),
    })
    .context("open the agent state")?;
    agent.reconcile().await;

    let sup = agent.clone();
    tokio::spawn(async move {
        let mut t = tokio::time::interval(Duration::from_millis(500));
        loop {
            t.tick().await;
            sup.supervise().await;
        }
    });
    if !cfg.control_url.is_empty() {
        let c = ControlConfig {
            url: cfg.control_url.clone(),
            token: (!cfg.control_token.is_empty()).then(|| cfg.control_token.clone()),
            interval: Duration::from_secs(cfg.heartbeat_interval_secs),
            agent_url: (!cfg.agent_url.is_empty()).then(|| cfg.agent_url.clone()),
        };
        // Lifecycle events always; samples unless the interval is 0.
        let sc = ferrostack_agent::sampler::SamplerConfig {
            url: cfg.control_url.clone(),
            token: c.token.clone(),
            interval: Duration::from_secs(cfg.sample_interval_secs),
        };
        let a = agent.clone();
        tokio::spawn(async move {
            if let Err(e) = ferrostack_agent::sampler::run(a, sc).await {
                tracing::error!(error = %ferrostack_agent::agent::error_chain(&e), "telemetry sampling stopped");
            }
        });
        let a = agent.clone();
        tokio::spawn(async move {
            if let Err(e) = control::run(a, c).await {
                tracing::error!(error = %ferrostack_agent::agent::error_chain(&e), "control reporting stopped");
            }
        });
    }

    if let Some(dir) = cfg.socket.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    }
    let _ = std::fs::remove_file(&cfg.socket);
    let unix = tokio::net::UnixListener::bind(&cfg.socket)
        .with_context(|| format!("bind {}", cfg.socket.display()))?;
    let tcp = if cfg.listen.is_empty() {
        None
    } else {
        Some(
            tokio::net::TcpListener::bind(&cfg.listen)
                .await
                .with_context(|| format!("bind {}", cfg.listen))?,
        )
    };
    tracing::info!(socket = %cfg.socket.display(), tcp = %cfg.listen, "agent serving");
    notify_ready();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        let accept_tcp = async {
            match &tcp {
                Some(l) => l.accept().await.map(|(s, _)| s),
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            c = unix.accept() => match c {
                Ok((s, _)) => spawn_conn(agent.clone(), TokioIo::new(s)),
                Err(e) => accept_failed(e).await,
            },
            c = accept_tcp => match c {
                Ok(s) => spawn_conn(agent.clone(), TokioIo::new(s)),
                Err(e) => accept_failed(e).await,
            },
            _ = tokio::signal::ctrl_c() => break,
            _ = term.recv() => break,
        }
    }
    let _ = std::fs::remove_file(&cfg.socket);
    tracing::info!("agent stopped; VMMs keep running");
    Ok(())
}

/// An accept that failed (out of descriptors, say): logged, and a short pause so a
/// persistent failure does not spin.
async fn accept_failed(e: std::io::Error) {
    tracing::warn!(error = %e, "accept failed");
    tokio::time::sleep(Duration::from_millis(100)).await;
}

fn spawn_conn<I>(agent: Arc<Agent>, io: I)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    tokio::spawn(async move {
        let svc = service_fn(move |req| api::handle(agent.clone(), req));
        if let Err(e) = http1::Builder::new().serve_connection(io, svc).await {
            tracing::debug!(error = %e, "API connection ended with an error");
        }
    });
}

/// Tells systemd (`Type=notify`) the agent serves, when `NOTIFY_SOCKET` is set (a path, or
/// `@name` for an abstract socket).
fn notify_ready() {
    let Some(target) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let result = std::os::unix::net::UnixDatagram::unbound().and_then(|sock| {
        match target.as_encoded_bytes().strip_prefix(b"@") {
            Some(name) => {
                use std::os::linux::net::SocketAddrExt;
                let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
                sock.send_to_addr(b"READY=1", &addr)
            }
            None => sock.send_to(b"READY=1", &target),
        }
    });
    if let Err(e) = result {
        tracing::warn!(error = %e, "cannot notify systemd");
    }
}
