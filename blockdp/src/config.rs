//! blockdp's configuration file: kebab-case TOML with named defaults, validated first.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;

use crate::volume::manager::MAX_QUEUES;

/// Default data directory.
pub const DEFAULT_DATA_DIR: &str = "/var/lib/ferrostack/blockdp";
/// Default API socket.
pub const DEFAULT_API_SOCKET: &str = "/run/ferrostack/blockdp.sock";
/// Default queues per export.
pub const DEFAULT_NUM_QUEUES: u16 = 1;
/// Default idle-queue poll time: none. On the 2-core machines measured (README, blockdp
/// benchmark, quiet run) polling took CPU from the frontend's own thread: QD1 p99 267 us
/// with 200 us of polling against 92 us without, and QD32 the same either way.
pub const DEFAULT_POLL_US: u64 = 0;
/// Longest idle poll allowed: 10 ms.
pub const MAX_POLL_US: u64 = 10_000;

/// Errors reading or validating the configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("read {0}")]
    Read(PathBuf, #[source] std::io::Error),
    /// The TOML is malformed or has unknown keys.
    #[error("parse configuration")]
    Parse(#[source] toml::de::Error),
    /// A value is out of range.
    #[error("{0}")]
    Invalid(String),
}

/// The configuration file.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct Config {
    /// Data directory.
    pub data_dir: PathBuf,
    /// API Unix socket.
    pub api_socket: PathBuf,
    /// Optional TCP address for the API ("" for none).
    pub listen: String,
    /// Default queues per export.
    pub num_queues: u16,
    /// Idle-queue poll time in microseconds.
    pub poll_us: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            data_dir: DEFAULT_DATA_DIR.into(),
            api_socket: DEFAULT_API_SOCKET.into(),
            listen: String::new(),
            num_queues: DEFAULT_NUM_QUEUES,
            poll_us: DEFAULT_POLL_US,
        }
    }
}

impl Config {
    /// Parses TOML text.
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        toml::from_str(text).map_err(ConfigError::Parse)
    }

    /// Reads and parses a file.
    pub fn load(path: &std::path::Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read(path.into(), e))?;
        Self::from_toml(&text)
    }

    /// Checks every value; returns the TCP address if one is set.
    pub fn validate(&self) -> Result<Option<SocketAddr>, ConfigError> {
        if self.num_queues == 0 || self.num_queues > MAX_QUEUES {
            return Err(ConfigError::Invalid(format!(
                "num-queues must be 1 to {MAX_QUEUES}"
            )));
        }
        if self.poll_us > MAX_POLL_US {
            return Err(ConfigError::Invalid(format!(
                "poll-us must be at most {MAX_POLL_US}"
            )));
        }
        if self.data_dir.as_os_str().is_empty() || self.api_socket.as_os_str().is_empty() {
            return Err(ConfigError::Invalid(
                "data-dir and api-socket must not be empty".into(),
            ));
        }
        if self.listen.is_empty() {
            return Ok(None);
        }
        self.listen
            .parse()
            .map(Some)
            .map_err(|_| ConfigError::Invalid(format!("listen {:?} is not host:port", self.listen)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_config_is_the_defaults() {
        let c = Config::from_toml(include_str!("../etc/blockdp.toml")).unwrap();
        assert_eq!(c, Config::default());
        assert_eq!(c.validate().unwrap(), None);
    }

    #[test]
    fn bad_values_are_refused() {
        assert!(
            Config::from_toml("data_dir = \"/x\"").is_err(),
            "snake_case key accepted"
        );
        for text in [
            "num-queues = 0",
            "num-queues = 17",
            "poll-us = 20000",
            "listen = \"x\"",
            "data-dir = \"\"",
        ] {
            let c = Config::from_toml(text).unwrap();
            assert!(c.validate().is_err(), "{text} accepted");
        }
        let c = Config::from_toml("listen = \"127.0.0.1:8776\"").unwrap();
        assert_eq!(
            c.validate().unwrap(),
            Some("127.0.0.1:8776".parse().unwrap())
        );
    }
}
