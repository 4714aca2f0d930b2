//! Password logins in front of the hashing pool: a cache of verified credentials,
//! single-flight checks, and a bound on the checks queued there.
//!
//! - **Verified-credential cache.** After a secret matched its stored Argon2id hash, the
//!   user's entry remembers `HMAC-SHA256(key, stored hash string, secret)` under a random
//!   key made when the process starts and never written anywhere. A later login whose HMAC
//!   equals the entry's (compared in constant time) is a match without Argon2. Only matches
//!   are remembered: a wrong secret always waits for a full check, as an unknown user does.
//!   The stored hash string is inside the HMAC, so a changed password (on this controller
//!   or on another one sharing the store) misses by itself; [`Logins::forget`] drops an
//!   entry when its user is disabled, deleted or changes password, and the caller only
//!   looks here for users it found enabled. Entries live for `password-cache-ttl` from the
//!   check that made them, and at most `password-cache-entries` are kept (the oldest goes
//!   first). Trade-off: a reader of this process's memory could test guesses against an
//!   entry at HMAC speed rather than Argon2 speed; that reader already has the token
//!   signing keys.
//! - **Single flight.** A check in progress is found by the same HMAC; a login with the
//!   same stored hash and secret waits for that check's outcome instead of queueing its
//!   own. The outcome is delivered from the hashing thread, so it reaches the waiters even
//!   if the login that started it has gone.
//! - **Bound.** At most `max-password-checks` checks are queued or running; a login that
//!   needs one more gets [`PasswordError::Busy`] (answered 503 with `Retry-After`).
//!
//! Each outcome is counted in `ferrostack_control_password_checks_total`.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use hmac::{KeyInit, Mac};
use tokio::sync::oneshot;

use super::password::{self, Checked, PasswordError};
use crate::telemetry::metrics::{METRICS, PasswordCheck};

type HmacSha256 = hmac::Hmac<sha2::Sha256>;
type Digest = [u8; 32];

/// The limits of [`Logins`].
#[derive(Debug, Clone, Copy)]
pub struct LoginLimits {
    /// How long a verified secret is remembered (zero: never).
    pub cache_ttl: Duration,
    /// Most users remembered (zero: none).
    pub cache_entries: usize,
    /// Most checks queued or running on the hashing pool at once.
    pub max_checks: usize,
}

impl LoginLimits {
    fn caching(&self) -> bool {
        !self.cache_ttl.is_zero() && self.cache_entries > 0
    }
}

/// One user's remembered secret.
struct Entry {
    digest: Digest,
    at: Instant,
    seq: u64,
}

#[derive(Default)]
struct State {
    /// By user id.
    entries: HashMap<String, Entry>,
    /// User ids by insertion order (`Entry::seq`), oldest first.
    order: BTreeMap<u64, String>,
    next_seq: u64,
    /// Checks queued or running, by HMAC, with everyone waiting for each.
    flights: HashMap<Digest, Vec<oneshot::Sender<Checked>>>,
}

impl State {
    fn forget(&mut self, user: &str) {
        if let Some(e) = self.entries.remove(user) {
            self.order.remove(&e.seq);
        }
    }

    fn remember(&mut self, user: String, digest: Digest, cap: usize) {
        self.forget(&user);
        while self.entries.len() >= cap {
            let Some((_, oldest)) = self.order.pop_first() else {
                break;
            };
            self.entries.remove(&oldest);
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        self.order.insert(seq, user.clone());
        self.entries.insert(
            user,
            Entry {
                digest,
                at: Instant::now(),
                seq,
            },
        );
    }
}

/// A check in progress. If its job is dropped without running (the pool is gone, or the
/// check panicked), dropping this ends the flight, so its waiters get an error instead of
/// waiting forever.
struct Flight {
    state: Arc<Mutex<State>>,
    digest: Digest,
    armed: bool,
}

impl Flight {
    /// The flight ended normally (its entry was taken under the lock).
    fn disarm(&mut self) {
        self.armed = false;
    }
}

impl Drop for Flight {
    fn drop(&mut self) {
        if self.armed {
            lock(&self.state).flights.remove(&self.digest);
        }
    }
}

/// How [`Logins::admit`] answers.
enum Admit {
    Cached,
    Joined,
    Refused,
    Check,
}

/// The login front of the hashing pool (one per service).
pub struct Logins {
    key: [u8; 32],
    limits: LoginLimits,
    state: Arc<Mutex<State>>,
}

impl std::fmt::Debug for Logins {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Logins")
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state.lock().unwrap_or_else(PoisonError::into_inner)
}

fn same(a: &Digest, b: &Digest) -> bool {
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

impl Logins {
    /// Empty, with a fresh random key.
    pub fn new(limits: LoginLimits) -> Result<Logins, PasswordError> {
        let mut key = [0u8; 32];
        getrandom::fill(&mut key).map_err(|_| PasswordError::Random)?;
        Ok(Logins {
            key,
            limits,
            state: Arc::default(),
        })
    }

    fn digest(&self, stored: Option<&str>, secret: &str) -> Digest {
        let mut m = HmacSha256::new_from_slice(&self.key).expect("hmac takes any key length");
        match stored {
            Some(s) => {
                m.update(&[1]);
                m.update(&(s.len() as u64).to_le_bytes());
                m.update(s.as_bytes());
            }
            None => m.update(&[0]),
        }
        m.update(secret.as_bytes());
        m.finalize().into_bytes().into()
    }

    /// Checks `secret` against `stored`. `user` is the id of the user the hash belongs to
    /// when the caller found that user enabled: only then is the cache consulted and a
    /// match remembered. Fails with [`PasswordError::Busy`] when a new check is needed
    /// and `max_checks` are already queued or running.
    pub async fn check(
        &self,
        user: Option<&str>,
        secret: String,
        stored: Option<String>,
    ) -> Result<Checked, PasswordError> {
        let digest = self.digest(stored.as_deref(), &secret);
        let (tx, rx) = oneshot::channel();
        match self.admit(user, stored.is_some(), digest, tx) {
            Admit::Cached => {
                METRICS.password_check(PasswordCheck::Cached);
                return Ok(Checked {
                    stored,
                    ok: true,
                    rehash: None,
                });
            }
            Admit::Joined => {
                METRICS.password_check(PasswordCheck::Joined);
                return rx.await.map_err(|_| PasswordError::PoolGone);
            }
            Admit::Refused => {
                METRICS.password_check(PasswordCheck::Refused);
                return Err(PasswordError::Busy);
            }
            Admit::Check => {}
        }
        METRICS.password_check(PasswordCheck::Hashed);
        let state = self.state.clone();
        let limits = self.limits;
        let remember = user
            .filter(|_| limits.caching())
            .filter(|_| {
                stored
                    .as_deref()
                    .is_some_and(|s| !password::needs_rehash(s))
            })
            .map(str::to_string);
        let mut flight = Flight {
            state,
            digest,
            armed: true,
        };
        password::check_then(secret, stored, move |outcome| {
            let waiting = {
                let state = flight.state.clone();
                let mut st = lock(&state);
                if let (true, Some(user)) = (outcome.ok, remember) {
                    st.remember(user, digest, limits.cache_entries);
                }
                flight.disarm();
                st.flights.remove(&digest).unwrap_or_default()
            };
            for w in waiting {
                let _ = w.send(outcome.clone());
            }
        })?;
        rx.await.map_err(|_| PasswordError::PoolGone)
    }

    /// Decides, under the lock, how a check of `digest` is answered; registers `tx` as a
    /// waiter unless it is answered from the cache or refused.
    fn admit(
        &self,
        user: Option<&str>,
        has_hash: bool,
        digest: Digest,
        tx: oneshot::Sender<Checked>,
    ) -> Admit {
        let mut st = lock(&self.state);
        if let (Some(user), true, true) = (user, has_hash, self.limits.caching()) {
            match st.entries.get(user) {
                Some(e) if e.at.elapsed() >= self.limits.cache_ttl => st.forget(user),
                Some(e) if same(&e.digest, &digest) => return Admit::Cached,
                _ => {}
            }
        }
        if let Some(waiting) = st.flights.get_mut(&digest) {
            waiting.push(tx);
            return Admit::Joined;
        }
        if st.flights.len() >= self.limits.max_checks {
            return Admit::Refused;
        }
        st.flights.insert(digest, vec![tx]);
        Admit::Check
    }

    /// Drops what is remembered for `user` (disabled, deleted, password changed, tokens
    /// revoked).
    pub fn forget(&self, user: &str) {
        lock(&self.state).forget(user);
    }

    /// How many users are remembered (expired entries included until they are looked up
    /// or pushed out).
    pub fn remembered(&self) -> usize {
        lock(&self.state).entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn logins(ttl: u64, entries: usize, max_checks: usize) -> Logins {
        Logins::new(LoginLimits {
            cache_ttl: Duration::from_secs(ttl),
            cache_entries: entries,
            max_checks,
        })
        .unwrap()
    }

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    #[test]
    fn only_matches_are_remembered_and_the_stored_hash_is_part_of_the_key() {
        let rt = rt();
        let l = logins(300, 10, 8);
        let h1 = password::hash("pw1").unwrap();
        let h2 = password::hash("pw2").unwrap();
        let check = |secret: &str, stored: &str| {
            rt.block_on(l.check(Some("u"), secret.into(), Some(stored.into())))
                .unwrap()
                .ok
        };
        assert!(!check("nope", &h1));
        assert_eq!(l.remembered(), 0, "a miss is not remembered");
        assert!(check("pw1", &h1));
        assert_eq!(l.remembered(), 1);
        assert!(check("pw1", &h1), "a hit");
        assert!(!check("pw1 ", &h1), "another secret misses the entry");
        // The password changed: the same secret does not match the new hash.
        assert!(!check("pw1", &h2));
        assert!(check("pw2", &h2));
        assert!(
            !check("pw1", &h1) || l.remembered() == 1,
            "one entry per user"
        );
        assert_eq!(l.remembered(), 1);
        l.forget("u");
        assert_eq!(l.remembered(), 0);
        // Without a user (disabled, or not a password login) nothing is remembered.
        assert!(
            rt.block_on(l.check(None, "pw2".into(), Some(h2.clone())))
                .unwrap()
                .ok
        );
        assert_eq!(l.remembered(), 0);
    }

    #[test]
    fn the_oldest_entry_goes_first_and_a_zero_ttl_remembers_nothing() {
        let rt = rt();
        let h = password::hash("pw").unwrap();
        let l = logins(300, 2, 8);
        for u in ["a", "b", "c"] {
            assert!(
                rt.block_on(l.check(Some(u), "pw".into(), Some(h.clone())))
                    .unwrap()
                    .ok
            );
        }
        assert_eq!(l.remembered(), 2);
        let st = lock(&l.state);
        assert!(!st.entries.contains_key("a") && st.entries.contains_key("c"));
        drop(st);
        let off = logins(0, 2, 8);
        assert!(
            rt.block_on(off.check(Some("a"), "pw".into(), Some(h)))
                .unwrap()
                .ok
        );
        assert_eq!(off.remembered(), 0);
    }

    #[test]
    fn concurrent_checks_of_one_secret_share_one_check_and_the_bound_refuses_more() {
        use argon2::PasswordHasher;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        // A hash slow enough (64 MiB, t=8) that the checks below overlap it.
        let slow = argon2::Argon2::new(
            argon2::Algorithm::Argon2id,
            argon2::Version::V0x13,
            argon2::Params::new(64 * 1024, 8, 1, None).unwrap(),
        )
        .hash_password_with_salt(b"pw", b"0123456789abcdef")
        .unwrap()
        .to_string();
        let l = Arc::new(logins(300, 10, 1));
        let (shared, other) = rt.block_on(async {
            let mut tasks = Vec::new();
            for _ in 0..4 {
                let (l, h) = (l.clone(), slow.clone());
                tasks.push(tokio::spawn(async move {
                    l.check(Some("u"), "pw".into(), Some(h)).await
                }));
            }
            // All four wait on one check.
            loop {
                let waiting = {
                    let st = lock(&l.state);
                    assert!(st.flights.len() <= 1, "one check for one secret");
                    st.flights.values().map(Vec::len).sum::<usize>()
                };
                if waiting == 4 {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            // Another secret needs a second check, beyond the bound of 1.
            let other = l.check(Some("u"), "other".into(), Some(slow.clone())).await;
            let mut out = Vec::new();
            for t in tasks {
                out.push(t.await.unwrap().unwrap());
            }
            (out, other)
        });
        assert!(matches!(other, Err(PasswordError::Busy)), "{other:?}");
        for c in &shared {
            assert!(c.ok, "each got the one match");
            assert!(
                c.rehash.is_some(),
                "old parameters: rehashed, so not remembered"
            );
        }
        assert!(lock(&l.state).flights.is_empty());
        assert_eq!(l.remembered(), 0);
        // Once the check is done the bound has room again.
        let c = rt
            .block_on(l.check(
                Some("u"),
                "other".into(),
                Some(password::hash("x").unwrap()),
            ))
            .unwrap();
        assert!(!c.ok);
    }
}
