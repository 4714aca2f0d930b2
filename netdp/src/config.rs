//! netdp's configuration file: kebab-case TOML with named defaults and human durations
//! ("500ms", "24h"), validated before the daemon touches anything. `etc/netdp.toml` is the
//! commented example (its values are the defaults); a test parses it.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer};

use crate::datapath::{DEFAULT_PIN_DIR, Timeouts};

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
    /// Connection tracking and gateway SNAT timeouts.
    pub conntrack: ConntrackConfig,
}

/// The `[conntrack]` table: idle timeouts of tracked connections and gateway SNAT
/// translations (Linux conntrack's defaults), and how often expired entries are removed.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct ConntrackConfig {
    /// TCP once answered, before FIN or RST.
    #[serde(deserialize_with = "duration")]
    pub tcp_established: Duration,
    /// TCP not answered yet, or after a FIN.
    #[serde(deserialize_with = "duration")]
    pub tcp_transient: Duration,
    /// TCP after a RST.
    #[serde(deserialize_with = "duration")]
    pub tcp_close: Duration,
    /// UDP not answered.
    #[serde(deserialize_with = "duration")]
    pub udp: Duration,
    /// UDP answered.
    #[serde(deserialize_with = "duration")]
    pub udp_stream: Duration,
    /// ICMP echo.
    #[serde(deserialize_with = "duration")]
    pub icmp: Duration,
    /// Other protocols.
    #[serde(deserialize_with = "duration")]
    pub other: Duration,
    /// How often expired entries are removed from the maps.
    #[serde(deserialize_with = "duration")]
    pub gc_interval: Duration,
}

/// Default interval of the conntrack GC.
pub const DEFAULT_GC_INTERVAL: Duration = Duration::from_secs(10);

impl Default for ConntrackConfig {
    fn default() -> Self {
        let t = Timeouts::default();
        ConntrackConfig {
            tcp_established: t.tcp_established,
            tcp_transient: t.tcp_transient,
            tcp_close: t.tcp_close,
            udp: t.udp,
            udp_stream: t.udp_stream,
            icmp: t.icmp,
            other: t.other,
            gc_interval: DEFAULT_GC_INTERVAL,
        }
    }
}

impl ConntrackConfig {
    /// The timeouts the datapath is loaded with.
    pub fn timeouts(&self) -> Timeouts {
        Timeouts {
            tcp_established: self.tcp_established,
            tcp_transient: self.tcp_transient,
            tcp_close: self.tcp_close,
            udp: self.udp,
            udp_stream: self.udp_stream,
            icmp: self.icmp,
            other: self.other,
        }
    }
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
            conntrack: ConntrackConfig::default(),
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
        let c = &self.conntrack;
        for (key, d) in [
            ("tcp-established", c.tcp_established),
            ("tcp-transient", c.tcp_transient),
            ("tcp-close", c.tcp_close),
            ("udp", c.udp),
            ("udp-stream", c.udp_stream),
            ("icmp", c.icmp),
            ("other", c.other),
            ("gc-interval", c.gc_interval),
        ] {
            if d < Duration::from_secs(1) {
                return Err(ConfigError::Invalid(format!(
                    "conntrack.{key} must be at least 1s"
                )));
            }
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
        let c = Config::from_toml("[conntrack]\nudp = \"5s\"\ngc-interval = \"1m\"\n").unwrap();
        assert_eq!(c.conntrack.timeouts().udp, Duration::from_secs(5));
        assert_eq!(c.conntrack.gc_interval, Duration::from_secs(60));
        assert_eq!(
            c.conntrack.tcp_established,
            Duration::from_secs(432_000),
            "the rest defaults"
        );
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
            "[conntrack]\ntcp = \"1h\"",
        ] {
            assert!(Config::from_toml(text).is_err(), "{text:?} accepted");
        }
        for text in [
            "socket = \"\"",
            "resync-interval = \"1ms\"",
            "[dhcp]\nlease-time = \"10s\"",
            "[dhcp]\nlease-time = \"100000d\"",
            "[conntrack]\nudp = \"500ms\"",
        ] {
            let c = Config::from_toml(text).unwrap();
            assert!(c.validate().is_err(), "{text:?} validated");
        }
        assert!(parse_duration("99999999999999999999h").is_err());
    }
}
