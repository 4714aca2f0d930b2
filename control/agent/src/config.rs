//! The agent's configuration file (TOML, kebab-case keys; every key optional) and its
//! defaults. Command-line flags override it; [`Config::validate`] runs before anything starts.

use std::path::{Path, PathBuf};

use serde::Deserialize;

/// Default state directory.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/ferrostack/agent";
/// Default API socket.
pub const DEFAULT_SOCKET: &str = "/run/ferrostack/agent.sock";
/// Default blockdp socket (blockdp's own default).
pub const DEFAULT_BLOCKDP_SOCKET: &str = "/run/ferrostack/blockdp.sock";
/// Default netdp socket (netdp's own default).
pub const DEFAULT_NETDP_SOCKET: &str = "/run/ferrostack/netdp.sock";
/// Default blockdp data directory (where the node's disk is measured).
pub const DEFAULT_DISK_PATH: &str = "/var/lib/ferrostack/blockdp";

/// Errors loading the configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file cannot be read.
    #[error("read {0}")]
    Read(PathBuf, #[source] std::io::Error),
    /// The file does not parse.
    #[error("parse {0}")]
    Parse(PathBuf, #[source] toml::de::Error),
    /// A value is out of range.
    #[error("{0}")]
    Invalid(String),
}

/// The configuration.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct Config {
    /// State file, server directories and downloaded images.
    pub state_dir: PathBuf,
    /// API Unix socket.
    pub socket: PathBuf,
    /// Also serve the API on this TCP address (empty: no TCP).
    pub listen: String,
    /// blockdp's API socket.
    pub blockdp_socket: PathBuf,
    /// netdp's API socket.
    pub netdp_socket: PathBuf,
    /// The `vmm` binary (empty: `vmm` next to this executable, else on `PATH`).
    pub vmm_binary: PathBuf,
    /// Where the volume disk is measured for the inventory.
    pub disk_path: PathBuf,
    /// Seconds a guest gets to shut down after Ctrl+Alt+Del.
    pub shutdown_timeout_secs: u64,
    /// Seconds netdp gets to program a new port.
    pub port_timeout_secs: u64,
    /// Seconds an image download or volume copy may take.
    pub image_timeout_secs: u64,
    /// Control's URL for registration and heartbeats (empty: none).
    pub control_url: String,
    /// Token sent to control as `X-Auth-Token`.
    pub control_token: String,
    /// Seconds between heartbeats.
    pub heartbeat_interval_secs: u64,
    /// The URL control should call this agent at (reported at registration).
    pub agent_url: String,
    /// Seconds between meter samples sent to control's telemetry (0: none).
    pub sample_interval_secs: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            state_dir: DEFAULT_STATE_DIR.into(),
            socket: DEFAULT_SOCKET.into(),
            listen: String::new(),
            blockdp_socket: DEFAULT_BLOCKDP_SOCKET.into(),
            netdp_socket: DEFAULT_NETDP_SOCKET.into(),
            vmm_binary: PathBuf::new(),
            disk_path: DEFAULT_DISK_PATH.into(),
            shutdown_timeout_secs: 30,
            port_timeout_secs: 20,
            image_timeout_secs: 600,
            control_url: String::new(),
            control_token: String::new(),
            heartbeat_interval_secs: 10,
            agent_url: String::new(),
            sample_interval_secs: 30,
        }
    }
}

impl Config {
    /// Parses TOML text.
    pub fn from_toml(text: &str) -> Result<Config, toml::de::Error> {
        toml::from_str(text)
    }

    /// Loads a file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read(path.into(), e))?;
        Config::from_toml(&text).map_err(|e| ConfigError::Parse(path.into(), e))
    }

    /// Checks values before anything starts.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: &str| Err(ConfigError::Invalid(m.into()));
        if self.state_dir.as_os_str().is_empty() || self.socket.as_os_str().is_empty() {
            return bad("state-dir and socket must be set");
        }
        if self.heartbeat_interval_secs == 0 {
            return bad("heartbeat-interval-secs must be at least 1");
        }
        if self.port_timeout_secs == 0 || self.image_timeout_secs == 0 {
            return bad("timeouts must be at least 1 second");
        }
        if !self.control_url.is_empty() && crate::http::parse_http_url(&self.control_url).is_err() {
            return bad("control-url must be http://host[:port][/prefix]");
        }
        if !self.listen.is_empty() && self.listen.parse::<std::net::SocketAddr>().is_err() {
            return bad("listen must be an address:port");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_config_parses_and_validates() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("etc/agent.toml");
        let c = Config::load(&path).unwrap();
        c.validate().unwrap();
        assert_eq!(c.heartbeat_interval_secs, 10);
        assert!(Config::from_toml("bogus-key = 1").is_err());
        let c = Config {
            control_url: "https://x".into(),
            ..Config::default()
        };
        assert!(c.validate().is_err());
    }
}
