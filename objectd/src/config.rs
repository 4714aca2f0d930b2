//! objectd's configuration: a kebab-case TOML file, validated before any side effect.
//!
//! `etc/objectd.toml` is the commented template; a test parses it.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;

/// Default address the daemon listens on.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
/// Default directory holding object bodies and the index.
pub const DEFAULT_DATA_DIR: &str = "./.ferrostack/objectd";
/// Default lifetime of a TempAuth token, in seconds.
pub const DEFAULT_TOKEN_TTL_SECS: u64 = 86_400;
/// Default period of the expirer (objects past `X-Delete-At`), in seconds.
pub const DEFAULT_EXPIRER_INTERVAL_SECS: u64 = 30;
/// Default period between auditor passes, in seconds (0 disables the auditor).
pub const DEFAULT_AUDITOR_INTERVAL_SECS: u64 = 3_600;
/// Default largest single object body, in bytes (Swift's default, 5 GiB).
pub const DEFAULT_MAX_OBJECT_SIZE: u64 = 5 * 1024 * 1024 * 1024;

/// Why a configuration is rejected.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The TOML is malformed or has unknown keys.
    #[error("cannot parse config")]
    Parse(#[source] toml::de::Error),
    /// A value is out of range.
    #[error("invalid config: {0}")]
    Invalid(String),
}

/// The whole configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Config {
    /// TCP address to listen on.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Also serve on this Unix socket (the suite's local convention), if set.
    #[serde(default)]
    pub unix_socket: Option<PathBuf>,
    /// Directory for bodies, temporary files, quarantine and the index.
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    /// Lifetime of TempAuth tokens, in seconds.
    #[serde(default = "default_token_ttl")]
    pub token_ttl_secs: u64,
    /// Period of the expirer, in seconds.
    #[serde(default = "default_expirer")]
    pub expirer_interval_secs: u64,
    /// Period of the auditor, in seconds; 0 disables it.
    #[serde(default = "default_auditor")]
    pub auditor_interval_secs: u64,
    /// Largest single object body accepted, in bytes.
    #[serde(default = "default_max_object")]
    pub max_object_size: u64,
    /// Accounts and their users.
    #[serde(default)]
    pub users: Vec<User>,
    /// Validate non-TempAuth Swift tokens against this Keystone, if set.
    #[serde(default)]
    pub keystone: Option<KeystoneConfig>,
}

/// Where Keystone (Ferrostack's `control`) is.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct KeystoneConfig {
    /// Base URL, `http://host:port[/prefix]` (`/v3/auth/tokens` is appended).
    pub url: String,
    /// Longest time a validation is reused, in seconds.
    #[serde(default = "default_keystone_cache")]
    pub cache_secs: u64,
}

fn default_keystone_cache() -> u64 {
    60
}

/// One TempAuth user, which owns one account, with optional S3 credentials.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct User {
    /// Account name as the user types it (`test` in `test:tester`); stored as `AUTH_test`.
    pub account: String,
    /// User name (`tester` in `test:tester`).
    pub user: String,
    /// The user's key (password) for `/auth/v1.0`.
    pub key: String,
    /// S3 access key id, if the user may use S3.
    pub s3_access_key: Option<String>,
    /// S3 secret access key.
    pub s3_secret_key: Option<String>,
}

impl User {
    /// The storage account this user owns (`AUTH_<account>`).
    pub fn storage_account(&self) -> String {
        format!("AUTH_{}", self.account)
    }
}

fn default_listen() -> SocketAddr {
    DEFAULT_LISTEN
        .parse()
        .expect("default listen address parses")
}
fn default_data_dir() -> PathBuf {
    PathBuf::from(DEFAULT_DATA_DIR)
}
fn default_token_ttl() -> u64 {
    DEFAULT_TOKEN_TTL_SECS
}
fn default_expirer() -> u64 {
    DEFAULT_EXPIRER_INTERVAL_SECS
}
fn default_auditor() -> u64 {
    DEFAULT_AUDITOR_INTERVAL_SECS
}
fn default_max_object() -> u64 {
    DEFAULT_MAX_OBJECT_SIZE
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: default_listen(),
            unix_socket: None,
            data_dir: default_data_dir(),
            token_ttl_secs: DEFAULT_TOKEN_TTL_SECS,
            expirer_interval_secs: DEFAULT_EXPIRER_INTERVAL_SECS,
            auditor_interval_secs: DEFAULT_AUDITOR_INTERVAL_SECS,
            max_object_size: DEFAULT_MAX_OBJECT_SIZE,
            users: Vec::new(),
            keystone: None,
        }
    }
}

impl Config {
    /// Parses a TOML document and validates it.
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text).map_err(ConfigError::Parse)?;
        config.validate()?;
        Ok(config)
    }

    /// Reads and validates a TOML file.
    pub fn load(path: &std::path::Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Config::from_toml(&text)
    }

    /// Checks values that serde cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.token_ttl_secs == 0 {
            return Err(ConfigError::Invalid("token-ttl-secs must be > 0".into()));
        }
        if self.expirer_interval_secs == 0 {
            return Err(ConfigError::Invalid(
                "expirer-interval-secs must be > 0".into(),
            ));
        }
        let mut keys = std::collections::HashSet::new();
        for u in &self.users {
            if u.account.is_empty() || u.user.is_empty() || u.account.contains([':', '/']) {
                return Err(ConfigError::Invalid(format!(
                    "user {:?}:{:?}: account and user must be non-empty, without ':' or '/'",
                    u.account, u.user
                )));
            }
            if u.s3_access_key.is_some() != u.s3_secret_key.is_some() {
                return Err(ConfigError::Invalid(format!(
                    "user {}:{}: s3-access-key and s3-secret-key go together",
                    u.account, u.user
                )));
            }
            if let Some(k) = &u.s3_access_key
                && !keys.insert(k.clone())
            {
                return Err(ConfigError::Invalid(format!(
                    "s3-access-key {k} is used twice"
                )));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_config_parses() {
        let text = include_str!("../etc/objectd.toml");
        let c = Config::from_toml(text).unwrap();
        assert_eq!(c.listen, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(c.users.len(), 1);
        assert_eq!(c.users[0].storage_account(), "AUTH_test");
        assert_eq!(
            c.users[0].s3_access_key.as_deref(),
            Some("AKIDFERROSTACKTEST")
        );
    }

    #[test]
    fn rejects_unknown_keys_and_half_s3_credentials() {
        assert!(matches!(
            Config::from_toml("lisen = \"1.2.3.4:5\""),
            Err(ConfigError::Parse(_))
        ));
        let half = "[[users]]\naccount = \"a\"\nuser = \"u\"\nkey = \"k\"\ns3-access-key = \"x\"\n";
        assert!(matches!(
            Config::from_toml(half),
            Err(ConfigError::Invalid(_))
        ));
    }
}
