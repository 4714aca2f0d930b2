//! control's configuration: kebab-case TOML, named defaults, `validate()` before use.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
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
/// Default directory of token signing keys.
pub const DEFAULT_KEY_DIR: &str = "/var/lib/ferrostack/control/token-keys";
/// Default age after which the primary signing key is replaced.
pub const DEFAULT_KEY_ROTATION: &str = "24h";
/// Default number of signing keys kept (the primary and older ones that still validate).
pub const DEFAULT_MAX_KEYS: usize = 3;
/// Default largest JSON request body, in bytes.
pub const DEFAULT_MAX_REQUEST_BODY: usize = 1 << 20;
/// Default objectd (Swift API) URL that stores image data.
pub const DEFAULT_IMAGE_STORE_URL: &str = "http://127.0.0.1:8080";
/// Default Swift container holding image data.
pub const DEFAULT_IMAGE_CONTAINER: &str = "images";
/// Default directory of staged image data (image import).
pub const DEFAULT_STAGING_DIR: &str = "/var/lib/ferrostack/control/staging";
/// Default largest image, in bytes.
pub const DEFAULT_MAX_IMAGE_SIZE: u64 = 1 << 40;
/// Default time a verified password is remembered (see [`IdentityConfig`]).
pub const DEFAULT_PASSWORD_CACHE_TTL: &str = "300s";
/// Default number of users whose verified password is remembered.
pub const DEFAULT_PASSWORD_CACHE_ENTRIES: usize = 10_000;
/// Default number of password checks that may be queued or running at once.
pub const DEFAULT_MAX_PASSWORD_CHECKS: usize = 256;

/// Errors reading or validating the configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("read configuration file")]
    Read(#[source] std::io::Error),
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
    /// Fewer than two signing keys would break rotation.
    #[error("tokens.max-keys must be at least 2")]
    TooFewKeys,
    /// A URL is not `http://host:port[/path]`.
    #[error("{0} must be an http:// URL, got {1:?}")]
    Url(&'static str, String),
    /// TempAuth image-store credentials are incomplete.
    #[error("images.store-auth = \"tempauth\" needs images.store-user and images.store-key")]
    TempAuthCredentials,
    /// Import can only convert to raw.
    #[error("images.import-convert-to must be \"raw\" or \"\", got {0:?}")]
    ConvertTo(String),
    /// The container name is empty or has a slash.
    #[error("images.container must be a non-empty name without '/'")]
    Container,
    /// No password check could ever run.
    #[error("identity.max-password-checks must be at least 1")]
    NoPasswordChecks,
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
    /// Directory of signing keys (created if missing; share it between controllers).
    pub key_dir: PathBuf,
    /// Age of the primary key after which a new one is made, with a unit.
    pub key_rotation: String,
    /// Keys kept: the primary plus older ones that still validate tokens.
    pub max_keys: usize,
}

impl Default for TokenConfig {
    fn default() -> Self {
        TokenConfig {
            expiry: DEFAULT_TOKEN_EXPIRY.into(),
            key_dir: DEFAULT_KEY_DIR.into(),
            key_rotation: DEFAULT_KEY_ROTATION.into(),
            max_keys: DEFAULT_MAX_KEYS,
        }
    }
}

/// The `[identity]` table: password logins.
///
/// After a password matched its Argon2id hash, control remembers, per user, an
/// HMAC-SHA256 of (the stored hash string, the password) under a random key made at
/// start-up and never written anywhere. A later login whose HMAC matches skips Argon2 (the
/// stock `openstack` CLI logs in with the password on every command). Only matches are
/// remembered, so a wrong password always costs a full check; a changed password changes
/// the stored hash and so misses by itself, also when another controller changed it; an
/// entry is dropped when its user is disabled, deleted or changes password, and a disabled
/// user is refused before the cache is looked at. The trade-off: whoever can read this
/// process's memory could test guesses against a remembered entry at HMAC speed instead of
/// Argon2 speed, but such a reader already holds the token signing keys.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct IdentityConfig {
    /// How long a verified password is remembered, with a unit; `"0s"` turns the cache off.
    pub password_cache_ttl: String,
    /// Most users remembered at once (the oldest entry goes first); 0 turns the cache off.
    pub password_cache_entries: usize,
    /// Most password checks queued or running on the hashing pool at once; a login that
    /// needs one more is answered 503 with `Retry-After`.
    pub max_password_checks: usize,
}

impl Default for IdentityConfig {
    fn default() -> Self {
        IdentityConfig {
            password_cache_ttl: DEFAULT_PASSWORD_CACHE_TTL.into(),
            password_cache_entries: DEFAULT_PASSWORD_CACHE_ENTRIES,
            max_password_checks: DEFAULT_MAX_PASSWORD_CHECKS,
        }
    }
}

/// How control authenticates to objectd to store image data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum StoreAuth {
    /// control issues itself a token for the `service` project; objectd validates it
    /// against control (objectd's `[keystone] url`). Data goes to `AUTH_<service project>`.
    Keystone,
    /// A TempAuth user of objectd (`store-user`, `store-key`).
    Tempauth,
}

/// The `[images]` table.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct ImageConfig {
    /// objectd's URL (Swift API).
    pub store_url: String,
    /// How control authenticates to objectd.
    pub store_auth: StoreAuth,
    /// TempAuth user (`account:user`), with `store-auth = "tempauth"`.
    pub store_user: String,
    /// TempAuth key, with `store-auth = "tempauth"`.
    pub store_key: String,
    /// Container holding image data.
    pub container: String,
    /// Largest image accepted, in bytes.
    pub max_image_size: u64,
    /// Where image import stages data before converting and storing it.
    pub staging_dir: PathBuf,
    /// Disk format images are converted to on import (`"raw"`), or `""` to keep them.
    pub import_convert_to: String,
    /// Ports `web-download` imports may fetch from (none: no `web-download`).
    pub web_download_ports: Vec<u16>,
}

impl Default for ImageConfig {
    fn default() -> Self {
        ImageConfig {
            store_url: DEFAULT_IMAGE_STORE_URL.into(),
            store_auth: StoreAuth::Keystone,
            store_user: String::new(),
            store_key: String::new(),
            container: DEFAULT_IMAGE_CONTAINER.into(),
            max_image_size: DEFAULT_MAX_IMAGE_SIZE,
            staging_dir: DEFAULT_STAGING_DIR.into(),
            import_convert_to: "raw".into(),
            web_download_ports: vec![80, 443],
        }
    }
}

/// The `[compute]` table.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct ComputeConfig {
    /// Seconds between node agents' heartbeats (their `--heartbeat-interval-secs`).
    pub heartbeat_interval_secs: u64,
    /// Heartbeats a node may miss before it is down (gets nothing new).
    pub missed_heartbeats: u64,
    /// Shared secret node agents send as `X-Auth-Token` (`--control-token`); empty: only
    /// tokens with the admin role may register nodes.
    pub node_token: String,
    /// vCPU overcommit of new nodes.
    pub cpu_allocation_ratio: f64,
    /// Memory overcommit of new nodes.
    pub ram_allocation_ratio: f64,
    /// Disk overcommit of new nodes.
    pub disk_allocation_ratio: f64,
    /// `spread` or `pack`.
    pub weigher: crate::compute::scheduler::Weigher,
    /// Nodes a build is tried on before the server goes to ERROR.
    pub max_build_attempts: u32,
    /// Seconds a build may take on a node before it counts as failed.
    pub build_timeout_secs: u64,
}

impl Default for ComputeConfig {
    fn default() -> Self {
        ComputeConfig {
            heartbeat_interval_secs: 10,
            missed_heartbeats: 3,
            node_token: String::new(),
            cpu_allocation_ratio: 4.0,
            ram_allocation_ratio: 1.0,
            disk_allocation_ratio: 1.0,
            weigher: crate::compute::scheduler::Weigher::Spread,
            max_build_attempts: 3,
            build_timeout_secs: 600,
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
    /// URL clients reach this API at, published in the catalog (default: `http://<listen>`).
    pub public_url: String,
    /// Largest JSON request body, in bytes.
    pub max_request_body: usize,
    /// State store.
    pub store: StoreConfig,
    /// Token settings.
    pub tokens: TokenConfig,
    /// Password login settings.
    pub identity: IdentityConfig,
    /// Compute (nodes, scheduling).
    pub compute: ComputeConfig,
    /// Image service settings.
    pub images: ImageConfig,
    /// Telemetry (meters, events, alarms) settings.
    pub telemetry: TelemetryConfig,
}

/// Telemetry settings (durations with a unit: s, m, h).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct TelemetryConfig {
    /// Raw samples are kept this long, then rolled into per-minute aggregates.
    pub raw_retention: String,
    /// Per-minute aggregates are kept this long, then rolled into per-hour ones.
    pub minute_retention: String,
    /// Per-hour aggregates are kept this long, then dropped.
    pub hour_retention: String,
    /// How often retention runs.
    pub retention_interval: String,
    /// How often alarms are evaluated.
    pub evaluation_interval: String,
    /// Most samples in one ingestion request.
    pub max_batch: usize,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        TelemetryConfig {
            raw_retention: "6h".into(),
            minute_retention: "168h".into(),
            hour_retention: "2160h".into(),
            retention_interval: "60s".into(),
            evaluation_interval: "60s".into(),
            max_batch: 10_000,
        }
    }
}

/// Parsed telemetry settings.
#[derive(Debug, Clone, Copy)]
pub struct TelemetrySettings {
    /// Retention of each granularity.
    pub retention: crate::telemetry::Retention,
    /// Retention period.
    pub retention_interval: Duration,
    /// Alarm evaluation period.
    pub evaluation_interval: Duration,
}

impl TelemetryConfig {
    /// Parses the durations; intervals must be non-zero.
    pub fn settings(&self) -> Result<TelemetrySettings, ConfigError> {
        let ms = |d: Duration| d.as_millis().min(i64::MAX as u128 / 4) as i64;
        let retention_interval = parse_duration(&self.retention_interval)?;
        let evaluation_interval = parse_duration(&self.evaluation_interval)?;
        if retention_interval.is_zero() || evaluation_interval.is_zero() {
            return Err(ConfigError::Duration(
                "telemetry intervals must be longer than zero".into(),
            ));
        }
        Ok(TelemetrySettings {
            retention: crate::telemetry::Retention {
                raw_ms: ms(parse_duration(&self.raw_retention)?),
                minute_ms: ms(parse_duration(&self.minute_retention)?),
                hour_ms: ms(parse_duration(&self.hour_retention)?),
            },
            retention_interval,
            evaluation_interval,
        })
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: DEFAULT_LISTEN.into(),
            region: DEFAULT_REGION.into(),
            public_url: String::new(),
            max_request_body: DEFAULT_MAX_REQUEST_BODY,
            store: StoreConfig::default(),
            tokens: TokenConfig::default(),
            identity: IdentityConfig::default(),
            compute: ComputeConfig::default(),
            images: ImageConfig::default(),
            telemetry: TelemetryConfig::default(),
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
    /// Age at which the primary signing key is replaced.
    pub key_rotation: Duration,
    /// How long a verified password is remembered (zero: not at all).
    pub password_cache_ttl: Duration,
    /// URL published in the catalog for this API, without a trailing slash.
    pub public_url: String,
    /// Telemetry settings.
    pub telemetry: TelemetrySettings,
    /// The raw configuration.
    pub raw: Config,
}

impl Config {
    /// Reads and parses a TOML file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(ConfigError::Read)?;
        Config::from_toml(&text)
    }

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
        let key_rotation = parse_duration(&self.tokens.key_rotation)?;
        if self.tokens.max_keys < 2 {
            return Err(ConfigError::TooFewKeys);
        }
        let public_url = if self.public_url.is_empty() {
            format!("http://{listen}")
        } else {
            check_url("public-url", &self.public_url)?;
            self.public_url.trim_end_matches('/').to_string()
        };
        check_url("images.store-url", &self.images.store_url)?;
        if self.images.store_auth == StoreAuth::Tempauth
            && (self.images.store_user.is_empty() || self.images.store_key.is_empty())
        {
            return Err(ConfigError::TempAuthCredentials);
        }
        if self.images.container.is_empty() || self.images.container.contains('/') {
            return Err(ConfigError::Container);
        }
        if !["", "raw"].contains(&self.images.import_convert_to.as_str()) {
            return Err(ConfigError::ConvertTo(
                self.images.import_convert_to.clone(),
            ));
        }
        let telemetry = self.telemetry.settings()?;
        let password_cache_ttl = parse_duration(&self.identity.password_cache_ttl)?;
        if self.identity.max_password_checks == 0 {
            return Err(ConfigError::NoPasswordChecks);
        }
        Ok(Validated {
            telemetry,
            password_cache_ttl,
            listen,
            token_expiry,
            key_rotation,
            public_url,
            raw: self,
        })
    }
}

fn check_url(what: &'static str, url: &str) -> Result<(), ConfigError> {
    let ok = url
        .parse::<http::Uri>()
        .is_ok_and(|u| u.scheme_str() == Some("http") && u.authority().is_some());
    if ok {
        Ok(())
    } else {
        Err(ConfigError::Url(what, url.to_string()))
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
        assert_eq!(parsed.password_cache_ttl, Duration::from_secs(300));
        assert_eq!(
            parsed.raw.identity.password_cache_entries,
            DEFAULT_PASSWORD_CACHE_ENTRIES
        );
        assert_eq!(
            parsed.raw.identity.max_password_checks,
            DEFAULT_MAX_PASSWORD_CHECKS
        );
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
        let cfg = Config::from_toml("[identity]\nmax-password-checks = 0").unwrap();
        assert!(matches!(cfg.validate(), Err(ConfigError::NoPasswordChecks)));
        let cfg = Config::from_toml("[identity]\npassword-cache-ttl = \"5\"").unwrap();
        assert!(matches!(cfg.validate(), Err(ConfigError::Duration(_))));
        let cfg = Config::from_toml("[identity]\npassword-cache-ttl = \"0s\"").unwrap();
        assert!(cfg.validate().unwrap().password_cache_ttl.is_zero());
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
