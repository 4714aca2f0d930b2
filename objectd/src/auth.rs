//! Authentication: TempAuth tokens for Swift, access keys for S3, both from config; and
//! S3 requests signed with Keystone EC2 credentials, checked by Keystone
//! ([`crate::keystone`]).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use http::StatusCode;

use crate::api::ApiError;
use crate::api::s3::sigv4::{self, SigError, Verified};
use crate::config::User;
use crate::keystone::{Keystone, S3Verdict};

/// Users, their tokens, and S3 keys.
pub struct Auth {
    users: Vec<User>,
    ttl: Duration,
    /// Token -> (storage account, `account:user`, expiry).
    tokens: Mutex<HashMap<String, (String, String, Instant)>>,
}

impl Auth {
    /// From the configured users.
    pub fn new(users: Vec<User>, ttl_secs: u64) -> Auth {
        Auth {
            users,
            ttl: Duration::from_secs(ttl_secs),
            tokens: Mutex::new(HashMap::new()),
        }
    }

    /// Checks `account:user` and key; on success a fresh token, the account, and the TTL.
    pub fn login(&self, user: &str, key: &str) -> Option<(String, String, u64)> {
        let (account, name) = user.split_once(':')?;
        let u = self
            .users
            .iter()
            .find(|u| u.account == account && u.user == name && u.key == key)?;
        let token = format!("AUTH_tk{}", crate::store::random_hex(16));
        let mut tokens = self.tokens.lock().expect("token lock");
        let now = Instant::now();
        tokens.retain(|_, (_, _, exp)| *exp > now);
        tokens.insert(
            token.clone(),
            (u.storage_account(), user.to_owned(), now + self.ttl),
        );
        Some((token, u.storage_account(), self.ttl.as_secs()))
    }

    /// The account a live token belongs to.
    pub fn account_for_token(&self, token: &str) -> Option<String> {
        self.user_for_token(token).map(|(account, _)| account)
    }

    /// The account and the `account:user` name of a live token (for container ACLs).
    pub fn user_for_token(&self, token: &str) -> Option<(String, String)> {
        let tokens = self.tokens.lock().expect("token lock");
        let (account, user, exp) = tokens.get(token)?;
        (*exp > Instant::now()).then(|| (account.clone(), user.clone()))
    }

    fn by_key(&self, access_key: &str) -> Option<&User> {
        self.users
            .iter()
            .find(|u| u.s3_access_key.as_deref() == Some(access_key))
    }

    /// The secret of an S3 access key.
    pub fn s3_secret(&self, access_key: &str) -> Option<String> {
        self.by_key(access_key)?.s3_secret_key.clone()
    }

    /// The account of an S3 access key.
    pub fn s3_account(&self, access_key: &str) -> Option<String> {
        self.by_key(access_key).map(User::storage_account)
    }

    /// Checks an S3 request's SigV4 signature: with the configured keys first, then, when
    /// a Keystone is configured, as a Keystone EC2 credential. The verified request and
    /// the account it uses.
    pub async fn verify_s3(
        &self,
        keystone: Option<&Keystone>,
        parts: &http::request::Parts,
        now: i64,
    ) -> Result<(Verified, String), ApiError> {
        let p = sigv4::prepare(parts.method.as_str(), &parts.uri, &parts.headers, now)?;
        if let (Some(secret), Some(account)) = (
            self.s3_secret(&p.access_key),
            self.s3_account(&p.access_key),
        ) {
            return Ok((p.check(&secret)?, account));
        }
        let Some(ks) = keystone else {
            return Err(SigError::UnknownKey.into());
        };
        if p.payload_hash
            .starts_with("STREAMING-AWS4-HMAC-SHA256-PAYLOAD")
        {
            // Each chunk is signed with the secret's signing key, which Keystone keeps.
            return Err(ApiError::new(
                StatusCode::NOT_IMPLEMENTED,
                "NotImplemented",
                "signed aws-chunked bodies are not supported with Keystone EC2 credentials; \
                 send UNSIGNED-PAYLOAD, STREAMING-UNSIGNED-PAYLOAD-TRAILER or the body's SHA-256",
            ));
        }
        let verdict = ks
            .check_s3(&p.access_key, &p.string_to_sign, p.signature())
            .await
            .map_err(|e| {
                tracing::warn!(error = %e, source = ?std::error::Error::source(&e), "keystone s3 check failed");
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "ServiceUnavailable",
                    "The signature could not be checked: the identity service is unavailable.",
                )
            })?;
        match verdict {
            S3Verdict::Account(grant) => {
                // A reader's credential may look, not change (as on the Swift path).
                if grant.read_only
                    && !matches!(parts.method, http::Method::GET | http::Method::HEAD)
                {
                    return Err(ApiError::new(
                        StatusCode::FORBIDDEN,
                        "AccessDenied",
                        "The credential has neither the member nor the admin role on the project: it may read, not change.",
                    ));
                }
                Ok((p.accept_checked_elsewhere(), grant.account))
            }
            S3Verdict::UnknownKey => Err(SigError::UnknownKey.into()),
            S3Verdict::Mismatch => Err(SigError::Mismatch.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth() -> Auth {
        Auth::new(
            vec![User {
                account: "test".into(),
                user: "tester".into(),
                key: "testing".into(),
                s3_access_key: Some("AK".into()),
                s3_secret_key: Some("SK".into()),
            }],
            60,
        )
    }

    #[test]
    fn tokens_and_keys() {
        let a = auth();
        assert!(a.login("test:tester", "wrong").is_none());
        assert!(a.login("tester", "testing").is_none());
        let (tok, acct, _) = a.login("test:tester", "testing").unwrap();
        assert_eq!(acct, "AUTH_test");
        assert_eq!(a.account_for_token(&tok).as_deref(), Some("AUTH_test"));
        assert_eq!(
            a.user_for_token(&tok),
            Some(("AUTH_test".into(), "test:tester".into()))
        );
        assert_eq!(a.account_for_token("AUTH_tkbogus"), None);
        assert_eq!(a.s3_secret("AK").as_deref(), Some("SK"));
        assert_eq!(a.s3_account("nope"), None);
    }
}
