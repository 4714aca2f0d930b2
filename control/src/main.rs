//! The `control` binary: `control --config FILE` serves the API; `control bootstrap`
//! creates the admin and the catalog; `control rotate-keys` rotates token keys.

#![forbid(unsafe_code)]

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};

use control::config::Config;
use control::identity::bootstrap::{self, Bootstrap};

/// Ferrostack's control API: identity (Keystone v3) and images (Glance v2).
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// TOML config file (see control/etc/control.toml).
    #[arg(long, env = "CONTROL_CONFIG", global = true)]
    config: Option<PathBuf>,
    /// Log as JSON lines instead of text.
    #[arg(long, global = true)]
    log_json: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the API (the default).
    Serve,
    /// Create (or update) the admin project, user, roles and catalog; write openrc and
    /// clouds.yaml.
    Bootstrap {
        /// Admin password.
        #[arg(long, env = "CONTROL_ADMIN_PASSWORD")]
        password: String,
        /// Admin user name.
        #[arg(long, default_value = "admin")]
        username: String,
        /// Admin project name.
        #[arg(long, default_value = "admin")]
        project: String,
        /// objectd's URL for the object-store catalog entry (default: images.store-url).
        #[arg(long)]
        object_store_url: Option<String>,
        /// Directory to write `openrc` and `clouds.yaml` into.
        #[arg(long, default_value = ".")]
        out_dir: PathBuf,
    },
    /// Make a new primary token signing key now.
    RotateKeys,
    /// Forget the deleted servers terminated before a time (UTC), as `nova-manage db purge
    /// --before` does: usage reports stop counting them.
    PurgeDeleted {
        /// `YYYY-MM-DD` (midnight UTC) or `YYYY-MM-DDTHH:MM:SS`.
        #[arg(long)]
        before: String,
    },
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
    let config = match &cli.config {
        Some(p) => Config::load(p).with_context(|| format!("config {}", p.display()))?,
        None => Config::default(),
    };
    let config = config.validate()?;
    let store = control::store::open(&config.raw.store).context("open the store")?;
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => {
            let svc = control::service::Service::new(config, store)?;
            control::server::maybe_rotate(&svc);
            control::server::recover_interrupted(&svc)?;
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            rt.block_on(control::server::run(svc))?;
        }
        Command::Bootstrap {
            password,
            username,
            project,
            object_store_url,
            out_dir,
        } => {
            let b = Bootstrap {
                admin_user: username,
                admin_password: password,
                admin_project: project,
                region: config.raw.region.clone(),
                public_url: config.public_url.clone(),
                object_store_url: Some(
                    object_store_url.unwrap_or_else(|| config.raw.images.store_url.clone()),
                ),
            };
            let done = bootstrap::run(store.as_ref(), &b)?;
            std::fs::create_dir_all(&out_dir)?;
            write_private(&out_dir.join("openrc"), &bootstrap::openrc(&b))?;
            write_private(&out_dir.join("clouds.yaml"), &bootstrap::clouds_yaml(&b))?;
            println!(
                "bootstrapped: admin user {} in project {} (service project {}); wrote {}/openrc and clouds.yaml",
                done.admin_user_id,
                done.admin_project_id,
                done.service_project_id,
                out_dir.display()
            );
        }
        Command::RotateKeys => {
            let ring = control::identity::token::KeyRing::open(
                &config.raw.tokens.key_dir,
                config.raw.tokens.max_keys,
            )?;
            println!("new primary key {}", ring.rotate()?);
        }
        Command::PurgeDeleted { before } => {
            let text = if before.len() == 10 {
                format!("{before}T00:00:00")
            } else {
                before.clone()
            };
            let Some(at) = control::time::parse(&text) else {
                anyhow::bail!(
                    "--before {before:?}: expected YYYY-MM-DD or YYYY-MM-DDTHH:MM:SS (UTC)"
                );
            };
            let n = control::api::usage::purge_terminated(store.as_ref(), at)?;
            println!("purged {n} deleted servers terminated before {text}Z");
        }
    }
    Ok(())
}

/// Writes a file readable only by its owner (it holds a password), durably.
fn write_private(path: &std::path::Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("write {}", tmp.display()))?;
    f.write_all(text.as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}
