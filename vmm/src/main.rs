//! `vmm`: one Firecracker-compatible microVM per process.
//!
//! ```text
//! vmm --api-sock /run/vm1.sock                 # configure and start through the API
//! vmm --config-file vm.json --no-api           # boot straight from a config file
//! ```
//! Exit codes: see `vmm::controller::ExitCode`.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use clap::Parser;
use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::reload;
use tracing_subscriber::util::SubscriberInitExt;
use vmm::config::{LoggerConfig, VmConfig};
use vmm::controller::{Controller, ExitCode};

/// Command line.
#[derive(Debug, Parser)]
#[command(
    name = "vmm",
    version,
    about = "Ferrostack VMM: a Firecracker-compatible microVM"
)]
struct Args {
    /// Unix socket to serve the API on (removed first if it exists).
    #[arg(long, env = "VMM_API_SOCK", default_value = "/run/firecracker.socket")]
    api_sock: PathBuf,
    /// Firecracker JSON configuration to boot from immediately.
    #[arg(long)]
    config_file: Option<PathBuf>,
    /// Do not serve the API (needs --config-file).
    #[arg(long, requires = "config_file")]
    no_api: bool,
    /// Instance id reported by `GET /`.
    #[arg(long, default_value = "anonymous-instance")]
    id: String,
    /// Write the guest's serial console here instead of stdout.
    #[arg(long)]
    serial_out: Option<PathBuf>,
    /// Log level (error, warn, info, debug, trace); `RUST_LOG` overrides.
    #[arg(long, default_value = "warn")]
    level: String,
    /// Do not feed stdin to the guest's serial console.
    #[arg(long)]
    no_serial_input: bool,
    /// Enter ELF kernels through their PVH entry (32-bit, `hvm_start_info`) instead of the
    /// 64-bit Linux boot protocol.
    #[arg(long)]
    pvh: bool,
    /// Log file (default: stderr).
    #[arg(long)]
    log_path: Option<PathBuf>,
}

/// Where log lines go: stderr until `PUT /logger` (or `--log-path`) names a file.
#[derive(Clone, Default)]
struct LogTarget(Arc<Mutex<Option<std::fs::File>>>);

struct LogWriter(LogTarget);

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut target = self.0.0.lock().unwrap_or_else(|e| e.into_inner());
        match target.as_mut() {
            Some(f) => f.write(buf),
            None => std::io::stderr().write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for LogTarget {
    type Writer = LogWriter;

    fn make_writer(&'a self) -> LogWriter {
        LogWriter(self.clone())
    }
}

fn firecracker_level(level: &str) -> Result<&'static str, String> {
    Ok(match level.to_ascii_lowercase().as_str() {
        "error" => "error",
        "warning" | "warn" => "warn",
        "info" => "info",
        "debug" => "debug",
        "trace" => "trace",
        "off" => "off",
        other => return Err(format!("Invalid log level: {other}")),
    })
}

/// The log line format: the level shown or not, the source location (`show_log_origin`) or not.
fn log_format<S>(
    target: &LogTarget,
    show_level: bool,
    show_origin: bool,
) -> tracing_subscriber::fmt::Layer<
    S,
    tracing_subscriber::fmt::format::DefaultFields,
    tracing_subscriber::fmt::format::Format,
    LogTarget,
>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    tracing_subscriber::fmt::layer()
        .with_writer(target.clone())
        .with_ansi(false)
        .with_level(show_level)
        .with_file(show_origin)
        .with_line_number(show_origin)
}

fn level_filter(level: &str) -> LevelFilter {
    firecracker_level(level)
        .ok()
        .and_then(|l| l.parse().ok())
        .unwrap_or(LevelFilter::WARN)
}

fn open_log(path: &str) -> Result<std::fs::File, String> {
    OpenOptions::new()
        .append(true)
        .create(true)
        .open(path)
        .map_err(|e| format!("Cannot open log file {path}: {e}"))
}

fn main() {
    let args = match Args::try_parse() {
        Ok(a) => a,
        Err(e) => {
            let _ = e.print();
            let code = if e.use_stderr() {
                ExitCode::ArgParsing as i32
            } else {
                0
            };
            std::process::exit(code);
        }
    };
    std::process::exit(run(args) as i32);
}

fn run(args: Args) -> ExitCode {
    let target = LogTarget::default();
    // A `Targets` filter (no regex engine, so a smaller resident binary than `EnvFilter`).
    let filter = std::env::var("RUST_LOG")
        .ok()
        .and_then(|v| v.parse::<Targets>().ok())
        .unwrap_or_else(|| Targets::new().with_default(level_filter(&args.level)));
    let (filter, reload_handle) = reload::Layer::new(filter);
    let (format, format_handle) = reload::Layer::new(log_format(&target, true, false));
    tracing_subscriber::registry()
        .with(filter)
        .with(format)
        .init();
    if let Some(path) = &args.log_path {
        match open_log(&path.display().to_string()) {
            Ok(f) => *target.0.lock().unwrap_or_else(|e| e.into_inner()) = Some(f),
            Err(e) => {
                eprintln!("{e}");
                return ExitCode::GenericError;
            }
        }
    }

    let config = match &args.config_file {
        None => VmConfig::default(),
        Some(path) => {
            let parsed = std::fs::read(path)
                .map_err(|e| format!("cannot read {}: {e}", path.display()))
                .and_then(|b| {
                    serde_json::from_slice::<VmConfig>(&b).map_err(|e| format!("invalid json: {e}"))
                })
                .and_then(|c| c.validated().map_err(|e| e.to_string()));
            match parsed {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("bad configuration file: {e}");
                    return ExitCode::BadConfiguration;
                }
            }
        }
    };

    let serial_out = args.serial_out.clone();
    let serial: vmm::controller::SerialFactory = Box::new(move || {
        Ok(match &serial_out {
            Some(p) => Box::new(OpenOptions::new().append(true).create(true).open(p)?),
            None => {
                use std::os::fd::AsFd;
                let fd = std::io::stdout().as_fd().try_clone_to_owned()?;
                Box::new(std::fs::File::from(fd))
            }
        })
    });
    let (tx, rx) = std::sync::mpsc::channel();
    let logger_target = target.clone();
    let logger = Box::new(move |l: &LoggerConfig| -> Result<(), String> {
        if let Some(level) = &l.level {
            let level = level_filter(firecracker_level(level)?);
            let targets = match &l.module {
                Some(module) => Targets::new().with_target(module.clone(), level),
                None => Targets::new().with_default(level),
            };
            reload_handle.reload(targets).map_err(|e| e.to_string())?;
        }
        if let Some(path) = &l.log_path {
            let f = open_log(path)?;
            *logger_target.0.lock().unwrap_or_else(|e| e.into_inner()) = Some(f);
        }
        let (level, origin) = (
            l.show_level.unwrap_or(true),
            l.show_log_origin.unwrap_or(false),
        );
        format_handle
            .reload(log_format(&logger_target, level, origin))
            .map_err(|e| e.to_string())?;
        Ok(())
    });
    let mut controller =
        Controller::new(args.id.clone(), config, serial, tx.clone()).with_logger(logger);
    if !args.no_serial_input {
        controller = controller.with_serial_stdin();
    }
    if args.pvh {
        controller = controller.with_boot_protocol(vmm::arch::boot::BootProtocol::Pvh);
    }

    if !args.no_api {
        let _ = std::fs::remove_file(&args.api_sock);
        if let Err(e) = vmm::api::server::spawn(&args.api_sock, tx.clone()) {
            eprintln!(
                "{e}: {}",
                std::error::Error::source(&e)
                    .map(|s| s.to_string())
                    .unwrap_or_default()
            );
            return ExitCode::GenericError;
        }
    }
    drop(tx);
    if args.config_file.is_some()
        && let Err(e) = controller.start()
    {
        tracing::error!("{e}");
        eprintln!("{e}");
        return ExitCode::GenericError;
    }
    let code = controller.run(rx);
    if !args.no_api {
        let _ = std::fs::remove_file(&args.api_sock);
    }
    code
}
