//! control's configuration: kebab-case TOML, named defaults, `validate()` before use.

use std::net::SocketAddr;
use std::time::Duration;

use serde::Deserialize;

/// Default public API address.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:5000";
/// Default region name.
pub const DEFAULT_REGION: &str = "RegionOne";
/// Default SQLite database path.
pub const DEFAULT_SQLITE_PATH: &str = "/var/lib/ferrostack/control.db";
/// Default token lifetime.
pub const DEFAULT_TOKEN_EXPIRY: &str = "1h";

/// Errors reading or validating the configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The TOML did not parse or had unknown keys.
    #[error("parse configuration")]
    Parse(#[source] toml::de::Error),
    /// `listen` is not a socket address.
    #[error("listen address {0:?} is not host:port")]
    Listen(String),
    /// A duration lacks a number or a known unit.
    #[error("duration {0:?} must be a number followed by s, m or h")]
    Duration(String),
    /// The token lifetime is zero.
    #[error("tokens.expiry must be longer than zero")]
    ZeroExpiry,
    /// The store location is empty.
    #[error("store.location must not be empty")]
    EmptyStoreLocation,
}

/// Which store backs control's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum StoreKind {
    /// Embedded SQLite file (one controller).
    Sqlite,
    /// PostgreSQL server (several controllers).
    Postgres,
}

/// The `[store]` table.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct StoreConfig {
    /// Which engine.
    pub kind: StoreKind,
    /// File path (sqlite) or URL (postgres).
    pub location: String,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            kind: StoreKind::Sqlite,
            location: DEFAULT_SQLITE_PATH.into(),
        }
    }
}

/// The `[tokens]` table.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct TokenConfig {
    /// Token lifetime, with a unit (`"90s"`, `"30m"`, `"1h"`).
    pub expiry: String,
}

impl Default for TokenConfig {
    fn default() -> Self {
        TokenConfig {
            expiry: DEFAULT_TOKEN_EXPIRY.into(),
        }
    }
}

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct Config {
    /// Public API address.
    pub listen: String,
    /// Region published in the catalog.
    pub region: String,
    /// State store.
    pub store: StoreConfig,
    /// Token settings.
    pub tokens: TokenConfig,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: DEFAULT_LISTEN.into(),
            region: DEFAULT_REGION.into(),
            store: StoreConfig::default(),
            tokens: TokenConfig::default(),
        }
    }
}

/// A configuration that passed validation, with its values parsed.
#[derive(Debug, Clone)]
pub struct Validated {
    /// Public API address.
    pub listen: SocketAddr,
    /// Token lifetime.
    pub token_expiry: Duration,
    /// The raw configuration.
    pub raw: Config,
}

impl Config {
    /// Parses TOML text.
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        toml::from_str(text).map_err(ConfigError::Parse)
    }

    /// Checks every value before anything acts on it.
    pub fn validate(self) -> Result<Validated, ConfigError> {
        let listen = self
            .listen
            .parse()
            .map_err(|_| ConfigError::Listen(self.listen.clone()))?;
        let token_expiry = parse_duration(&self.tokens.expiry)?;
        if token_expiry.is_zero() {
            return Err(ConfigError::ZeroExpiry);
        }
        if self.store.location.trim().is_empty() {
            return Err(ConfigError::EmptyStoreLocation);
        }
        Ok(Validated {
            listen,
            token_expiry,
            raw: self,
        })
    }
}

/// Parses `"<n>s"`, `"<n>m"` or `"<n>h"`.
pub fn parse_duration(text: &str) -> Result<Duration, ConfigError> {
    let bad = || ConfigError::Duration(text.to_string());
    let text = text.trim();
    let unit = text.chars().last().ok_or_else(bad)?;
    let number: u64 = text[..text.len() - unit.len_utf8()]
        .parse()
        .map_err(|_| bad())?;
    let secs = match unit {
        's' => Some(number),
        'm' => number.checked_mul(60),
        'h' => number.checked_mul(3600),
        _ => None,
    };
    secs.map(Duration::from_secs).ok_or_else(bad)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_config_parses_and_equals_the_defaults() {
        let text = include_str!("../etc/control.toml");
        let parsed = Config::from_toml(text).unwrap().validate().unwrap();
        let defaults = Config::default().validate().unwrap();
        assert_eq!(parsed.listen, defaults.listen);
        assert_eq!(parsed.token_expiry, Duration::from_secs(3600));
        assert_eq!(parsed.raw.region, DEFAULT_REGION);
        assert_eq!(parsed.raw.store.kind, StoreKind::Sqlite);
        assert_eq!(parsed.raw.store.location, DEFAULT_SQLITE_PATH);
    }

    #[test]
    fn unknown_keys_are_rejected() {
        let err = Config::from_toml("listne = \"127.0.0.1:1\"").unwrap_err();
        assert!(format!("{:?}", err).contains("listne"), "{err:?}");
    }

    #[test]
    fn bad_values_are_named() {
        let cfg = Config {
            listen: "nowhere".into(),
            ..Config::default()
        };
        assert_eq!(
            cfg.validate().unwrap_err().to_string(),
            "listen address \"nowhere\" is not host:port"
        );
        let cfg = Config::from_toml("[tokens]\nexpiry = \"0s\"").unwrap();
        assert!(matches!(cfg.validate(), Err(ConfigError::ZeroExpiry)));
        let cfg = Config::from_toml("[store]\nkind = \"postgres\"\nlocation = \" \"").unwrap();
        assert!(matches!(
            cfg.validate(),
            Err(ConfigError::EmptyStoreLocation)
        ));
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("30m").unwrap(), Duration::from_secs(1800));
        assert_eq!(parse_duration("2h").unwrap(), Duration::from_secs(7200));
        for bad in ["", "h", "10", "10d", "-1s", "99999999999999999999h"] {
            assert!(parse_duration(bad).is_err(), "{bad:?} accepted");
        }
    }
}
