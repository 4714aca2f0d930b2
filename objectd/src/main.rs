//! The `objectd` binary: flags and config, logging, then the server.

#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;

/// Ferrostack's object store: Swift API v1 and S3 on one port.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// TOML config file (see objectd/etc/objectd.toml).
    #[arg(long, env = "OBJECTD_CONFIG")]
    config: Option<PathBuf>,
    /// Address to listen on (overrides the config).
    #[arg(long, env = "OBJECTD_LISTEN")]
    listen: Option<SocketAddr>,
    /// Data directory (overrides the config).
    #[arg(long, env = "OBJECTD_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Log as JSON lines instead of text.
    #[arg(long)]
    log_json: bool,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colours only on a terminal, never in a file or the journal.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    if cli.log_json {
        builder.json().init();
    } else {
        builder.init();
    }
    let mut config = match &cli.config {
        Some(p) => objectd::config::Config::load(p)?,
        None => objectd::config::Config::default(),
    };
    if let Some(l) = cli.listen {
        config.listen = l;
    }
    if let Some(d) = cli.data_dir {
        config.data_dir = d;
    }
    config.validate()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(objectd::server::run(config))?;
    Ok(())
}
