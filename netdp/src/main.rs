//! `netdp`: the node's virtual switch daemon. Loads the datapath (maps and links pinned on
//! bpffs, reused across restarts), restores its state, and serves Neutron's networking API
//! and `/metrics` on a Unix socket.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use anyhow::Context;
use clap::Parser;
use netdp::api::{Controller, http};
use netdp::datapath::{DEFAULT_PIN_DIR, Datapath, Hook};
use netdp::dhcp::{self, Leases};

/// netdp: eBPF virtual switch with Neutron's API.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// The API socket.
    #[arg(
        long,
        env = "NETDP_SOCKET",
        default_value = "/run/ferrostack/netdp.sock"
    )]
    socket: PathBuf,
    /// The state file.
    #[arg(
        long,
        env = "NETDP_STATE",
        default_value = "/var/lib/ferrostack/netdp/state.json"
    )]
    state: PathBuf,
    /// The bpffs directory for pinned maps and links.
    #[arg(long, env = "NETDP_PIN_DIR", default_value = DEFAULT_PIN_DIR)]
    pin_dir: PathBuf,
    /// DHCP lease time handed to guests, in seconds.
    #[arg(long, env = "NETDP_DHCP_LEASE_SECS", default_value_t = netdp::dhcp::DEFAULT_LEASE_SECS)]
    dhcp_lease_secs: u32,
    /// Log as JSON.
    #[arg(long, env = "NETDP_LOG_JSON")]
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
        tracing_subscriber::fmt().with_env_filter(filter).init();
    }
    for p in [&args.socket, &args.state] {
        if let Some(dir) = p.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
        }
    }
    let dp = Datapath::load_pinned(Hook::Tc, &args.pin_dir).context("load the datapath")?;
    let mut ctl = Controller::open(Some(args.state.clone()), Some(dp)).context("restore state")?;
    // The DHCP slow path: its own thread and packet socket, fed leases by every sync.
    let leases = Leases::default();
    let _dhcp = dhcp::Server::start(leases.clone()).context("start the DHCP server")?;
    ctl.serve_dhcp(leases, args.dhcp_lease_secs)
        .context("program DHCP ports")?;
    let ctl = Arc::new(Mutex::new(ctl));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    tracing::info!(socket = %args.socket.display(), "netdp serving");
    // Re-sync now and then: taps created after their port show up without an API call.
    let resync = ctl.clone();
    rt.block_on(async move {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        let ticker = tokio::spawn(async move {
            let mut t = tokio::time::interval(std::time::Duration::from_millis(500));
            loop {
                t.tick().await;
                let mut c = resync.lock().unwrap_or_else(|e| e.into_inner());
                if let Err(e) = c.sync() {
                    tracing::warn!(error = %http::chain(&e), "resync failed");
                }
            }
        });
        let shutdown = async move {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {},
                _ = term.recv() => {},
            }
        };
        let r = http::serve(ctl, &args.socket, shutdown).await;
        ticker.abort();
        r
    })
    .context("serve the API")?;
    tracing::info!("stopped; pinned maps and links keep forwarding");
    Ok(())
}
