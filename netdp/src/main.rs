//! `netdp`: the node's virtual switch daemon. Loads the datapath (maps and links pinned on
//! bpffs, reused across restarts), restores its state, answers DHCP for VM ports, and
//! serves Neutron's networking API and `/metrics` on a Unix socket.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use anyhow::Context;
use clap::Parser;
use netdp::api::{Controller, http};
use netdp::config::{Config, parse_duration};
use netdp::datapath::{Datapath, Hook};
use netdp::dhcp::{self, Leases};

/// netdp: eBPF virtual switch with Neutron's API. Flags override the config file.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// TOML configuration file (see etc/netdp.toml).
    #[arg(long, env = "NETDP_CONFIG")]
    config: Option<PathBuf>,
    /// The API socket [default: /run/ferrostack/netdp.sock].
    #[arg(long, env = "NETDP_SOCKET")]
    socket: Option<PathBuf>,
    /// The state file [default: /var/lib/ferrostack/netdp/state.json].
    #[arg(long, env = "NETDP_STATE")]
    state: Option<PathBuf>,
    /// The bpffs directory for pinned maps and links [default: /sys/fs/bpf/ferrostack/netdp].
    #[arg(long, env = "NETDP_PIN_DIR")]
    pin_dir: Option<PathBuf>,
    /// DHCP lease time handed to guests, like "24h" or "3600s".
    #[arg(long, env = "NETDP_DHCP_LEASE_TIME", value_parser = parse_duration)]
    dhcp_lease_time: Option<std::time::Duration>,
    /// Do not answer DHCP.
    #[arg(long, env = "NETDP_NO_DHCP")]
    no_dhcp: bool,
    /// Log as JSON.
    #[arg(long, env = "NETDP_LOG_JSON")]
    log_json: bool,
}

impl Args {
    /// The configuration: the file (or the defaults), then the flags over it, validated.
    fn config(&self) -> anyhow::Result<Config> {
        let mut cfg = match &self.config {
            Some(path) => Config::load(path).with_context(|| format!("{}", path.display()))?,
            None => Config::default(),
        };
        if let Some(v) = &self.socket {
            cfg.socket = v.clone();
        }
        if let Some(v) = &self.state {
            cfg.state = v.clone();
        }
        if let Some(v) = &self.pin_dir {
            cfg.pin_dir = v.clone();
        }
        if let Some(v) = self.dhcp_lease_time {
            cfg.dhcp.lease_time = v;
        }
        if self.no_dhcp {
            cfg.dhcp.enabled = false;
        }
        cfg.log_json |= self.log_json;
        cfg.validate().context("invalid configuration")?;
        Ok(cfg)
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let cfg = args.config()?;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    if cfg.log_json {
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
    for p in [&cfg.socket, &cfg.state] {
        if let Some(dir) = p.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
        }
    }
    let dp = Datapath::load_configured(Hook::Tc, Some(&cfg.pin_dir), cfg.conntrack.timeouts())
        .context("load the datapath")?;
    // The ring the datapath punts DHCP requests into (pinned: a restart reads the same one).
    let ring = if cfg.dhcp.enabled {
        Some(dp.dhcp_ring().context("open the DHCP ring")?)
    } else {
        None
    };
    let mut ctl = Controller::open(Some(cfg.state.clone()), Some(dp)).context("restore state")?;
    // The DHCP slow path: its own thread and packet socket, fed leases by every sync.
    let _dhcp = if let Some(ring) = ring {
        let leases = Leases::default();
        let server = dhcp::Server::start(leases.clone(), ring).context("start the DHCP server")?;
        let secs = u32::try_from(cfg.dhcp.lease_time.as_secs()).context("validated")?;
        ctl.serve_dhcp(leases, secs, server.stats())
            .context("program DHCP ports")?;
        Some(server)
    } else {
        None
    };
    let ctl = Arc::new(Mutex::new(ctl));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    tracing::info!(socket = %cfg.socket.display(), dhcp = cfg.dhcp.enabled, "netdp serving");
    // Re-sync now and then: taps created after their port show up without an API call.
    let resync = ctl.clone();
    let interval = cfg.resync_interval;
    // Remove tracked connections and SNAT translations idle past their timeouts: on a
    // thread of its own with its own map descriptors, never under the controller's lock
    // nor on the runtime's thread, so the API answers while it walks a large table.
    let gc = ctl
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .gc_task()
        .context("open the conntrack maps for the GC")?;
    if let Some(mut gc) = gc {
        let gc_interval = cfg.conntrack.gc_interval;
        std::thread::Builder::new()
            .name("conntrack-gc".into())
            .spawn(move || {
                loop {
                    std::thread::sleep(gc_interval);
                    match gc.run() {
                        Ok(e) => tracing::debug!(
                            connections = e.connections,
                            translations = e.translations,
                            "expired"
                        ),
                        Err(e) => tracing::warn!(error = %http::chain(&e), "conntrack GC failed"),
                    }
                }
            })
            .context("start the conntrack GC")?;
    }
    rt.block_on(async move {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        let ticker = tokio::spawn(async move {
            let mut t = tokio::time::interval(interval);
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
        let r = http::serve(ctl, &cfg.socket, shutdown).await;
        ticker.abort();
        r
    })
    .context("serve the API")?;
    tracing::info!("stopped; pinned maps and links keep forwarding");
    Ok(())
}
