//! netdp's configuration file: kebab-case TOML with named defaults and human durations
//! ("500ms", "24h"), validated before the daemon touches anything. `etc/netdp.toml` is the
//! commented example (its values are the defaults); a test parses it.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer};

use crate::datapath::DEFAULT_PIN_DIR;

/// Default API socket.
pub const DEFAULT_SOCKET: &str = "/run/ferrostack/netdp.sock";
/// Default state file.
pub const DEFAULT_STATE: &str = "/var/lib/ferrostack/netdp/state.json";
/// Default re-sync interval.
pub const DEFAULT_RESYNC_INTERVAL: Duration = Duration::from_millis(500);
/// Shortest re-sync interval allowed (each re-sync walks every port).
pub const MIN_RESYNC_INTERVAL: Duration = Duration::from_millis(50);
/// Default DHCP lease time: a day, as Neutron's `dhcp_lease_duration`.
pub const DEFAULT_DHCP_LEASE_TIME: Duration = Duration::from_secs(86400);
/// Shortest DHCP lease allowed (clients renew at half of it).
pub const MIN_DHCP_LEASE_TIME: Duration = Duration::from_secs(60);

/// Errors reading or validating the configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("read {0}")]
    Read(PathBuf, #[source] std::io::Error),
    /// The TOML is malformed, or has unknown keys or bad values.
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
    /// The API's Unix socket.
    pub socket: PathBuf,
    /// The state file.
    pub state: PathBuf,
    /// The bpffs directory for pinned maps and links.
    pub pin_dir: PathBuf,
    /// How often the datapath is re-synchronised with the state.
    #[serde(deserialize_with = "duration")]
    pub resync_interval: Duration,
    /// Log as JSON instead of text.
    pub log_json: bool,
    /// The DHCP slow path.
    pub dhcp: DhcpConfig,
}

/// The `[dhcp]` table.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct DhcpConfig {
    /// Answer DHCP for ports on DHCP-enabled subnets.
    pub enabled: bool,
    /// Lease time handed to guests.
    #[serde(deserialize_with = "duration")]
    pub lease_time: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            socket: DEFAULT_SOCKET.into(),
            state: DEFAULT_STATE.into(),
            pin_dir: DEFAULT_PIN_DIR.into(),
            resync_interval: DEFAULT_RESYNC_INTERVAL,
            log_json: false,
            dhcp: DhcpConfig::default(),
        }
    }
}

impl Default for DhcpConfig {
    fn default() -> Self {
        DhcpConfig {
            enabled: true,
            lease_time: DEFAULT_DHCP_LEASE_TIME,
        }
    }
}

impl Config {
    /// Parses TOML text.
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        toml::from_str(text).map_err(ConfigError::Parse)
    }

    /// Reads and parses a file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read(path.into(), e))?;
        Self::from_toml(&text)
    }

    /// Checks every value.
    pub fn validate(&self) -> Result<(), ConfigError> {
        for (key, p) in [
            ("socket", &self.socket),
            ("state", &self.state),
            ("pin-dir", &self.pin_dir),
        ] {
            if p.as_os_str().is_empty() {
                return Err(ConfigError::Invalid(format!("{key} must not be empty")));
            }
        }
        if self.resync_interval < MIN_RESYNC_INTERVAL {
            return Err(ConfigError::Invalid(format!(
                "resync-interval must be at least {MIN_RESYNC_INTERVAL:?}"
            )));
        }
        if self.dhcp.lease_time < MIN_DHCP_LEASE_TIME
            || self.dhcp.lease_time.as_secs() > u64::from(u32::MAX)
        {
            return Err(ConfigError::Invalid(format!(
                "dhcp.lease-time must be between {MIN_DHCP_LEASE_TIME:?} and {}s",
                u32::MAX
            )));
        }
        Ok(())
    }
}

/// Parses a duration with a unit: `ms`, `s`, `m`, `h` or `d` ("500ms", "24h").
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("{s:?} needs a unit (ms, s, m, h or d)"))?;
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} does not start with a number"))?;
    let ms_per = match unit.trim() {
        "ms" => 1,
        "s" => 1000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        u => return Err(format!("unknown unit {u:?} in {s:?} (ms, s, m, h or d)")),
    };
    n.checked_mul(ms_per)
        .map(Duration::from_millis)
        .ok_or_else(|| format!("{s:?} is too long"))
}

fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let s = String::deserialize(d)?;
    parse_duration(&s).map_err(serde::de::Error::custom)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_config_is_the_defaults() {
        let c = Config::from_toml(include_str!("../etc/netdp.toml")).unwrap();
        assert_eq!(c, Config::default());
        c.validate().unwrap();
    }

    #[test]
    fn values_and_units_are_read() {
        let c = Config::from_toml(
            "socket = \"/tmp/n.sock\"\nresync-interval = \"2s\"\n[dhcp]\nlease-time = \"1h\"\nenabled = false\n",
        )
        .unwrap();
        assert_eq!(c.socket, PathBuf::from("/tmp/n.sock"));
        assert_eq!(c.resync_interval, Duration::from_secs(2));
        assert_eq!(c.dhcp.lease_time, Duration::from_secs(3600));
        assert!(!c.dhcp.enabled);
        assert_eq!(c.state, PathBuf::from(DEFAULT_STATE), "the rest defaults");
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("2d").unwrap(), Duration::from_secs(172_800));
    }

    #[test]
    fn bad_files_and_values_are_refused() {
        for text in [
            "pin_dir = \"/x\"",
            "unknown = 1",
            "resync-interval = 5",
            "resync-interval = \"5\"",
            "resync-interval = \"5 weeks\"",
            "[dhcp]\nlease-time = \"x1h\"",
            "[dhcp]\nfoo = true",
        ] {
            assert!(Config::from_toml(text).is_err(), "{text:?} accepted");
        }
        for text in [
            "socket = \"\"",
            "resync-interval = \"1ms\"",
            "[dhcp]\nlease-time = \"10s\"",
            "[dhcp]\nlease-time = \"100000d\"",
        ] {
            let c = Config::from_toml(text).unwrap();
            assert!(c.validate().is_err(), "{text:?} validated");
        }
        assert!(parse_duration("99999999999999999999h").is_err());
    }
}
