//! Password hashing with Argon2id (PHC strings stored), and a check that costs the same
//! whether or not the user exists.

use std::sync::OnceLock;

use argon2::{Argon2, PasswordHasher, PasswordVerifier};

/// Errors hashing a password.
#[derive(Debug, thiserror::Error)]
pub enum PasswordError {
    /// No randomness for the salt.
    #[error("no randomness for a salt")]
    Random,
    /// The hasher refused the input.
    #[error("hash password: {0}")]
    Hash(String),
    /// Hashing blocks and the caller runs in cached-only mode (never seen outside it).
    #[error("password hashing would block")]
    WouldBlock,
}

/// Hashes a password into a PHC string (`$argon2id$v=19$m=...`).
pub fn hash(password: &str) -> Result<String, PasswordError> {
    if crate::store::snapshot::must_block() {
        return Err(PasswordError::WouldBlock);
    }
    let mut salt = [0u8; 16];
    getrandom::fill(&mut salt).map_err(|_| PasswordError::Random)?;
    Argon2::default()
        .hash_password_with_salt(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| PasswordError::Hash(e.to_string()))
}

/// Whether `password` matches `stored`. With `stored = None` (no such user, or no
/// password), a dummy hash is checked so the answer takes as long as for a real user.
/// In cached-only mode nothing is checked and the answer is `false` (the caller's result
/// is thrown away; see [`crate::store::snapshot::cached_only`]).
pub fn verify(password: &str, stored: Option<&str>) -> bool {
    if crate::store::snapshot::must_block() {
        return false;
    }
    static DUMMY: OnceLock<String> = OnceLock::new();
    let dummy = DUMMY.get_or_init(|| hash("ferrostack-dummy-password").unwrap_or_default());
    match stored {
        Some(h) => Argon2::default()
            .verify_password(password.as_bytes(), h)
            .is_ok(),
        None => {
            let _ = Argon2::default().verify_password(password.as_bytes(), dummy.as_str());
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_and_verify() {
        let h = hash("s3cret").unwrap();
        assert!(h.starts_with("$argon2id$"), "{h}");
        assert!(verify("s3cret", Some(&h)));
        assert!(!verify("s3cret ", Some(&h)));
        assert!(!verify("s3cret", None));
        assert!(!verify("s3cret", Some("not a phc string")));
        assert_ne!(hash("s3cret").unwrap(), h, "salted");
    }
}
