//! Password (and application-credential secret) hashing with Argon2id, PHC strings stored.
//!
//! Parameters: Argon2id, m = 19 MiB, t = 2, p = 1 ([`PARAMS`]), the first of OWASP's
//! equivalent minimum configurations (and the argon2 crate's default). A stored hash made
//! with other parameters still verifies, and is replaced by one made with [`PARAMS`] on the
//! next successful login (see [`Checked::rehash`]).
//!
//! Every hash and check runs on a pool of its own: one thread per core, at a lower CPU
//! priority (nice [`HASH_NICE`]), fed from one queue. A burst of logins therefore queues for
//! those threads instead of taking the async workers or the blocking pool that other
//! requests need, and while the machine is busy the other requests get the cores first.
//! A check costs the same whether or not the user exists (a dummy hash with the same
//! parameters is checked). Logins reach the pool through [`super::login`], which answers
//! remembered verified passwords without it, shares one check between identical
//! concurrent logins and bounds how many checks may wait.

use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Mutex, OnceLock};

use argon2::{Algorithm, Argon2, Params, PasswordHasher, PasswordVerifier, Version};

/// Memory cost in KiB (19 MiB).
pub const M_COST: u32 = 19 * 1024;
/// Passes over the memory.
pub const T_COST: u32 = 2;
/// Lanes.
pub const P_COST: u32 = 1;
/// How much lower than normal the hashing threads run (`nice` value, 0..=19).
pub const HASH_NICE: i32 = 10;

/// The parameters new hashes are made with.
pub fn params() -> Params {
    Params::new(M_COST, T_COST, P_COST, None).expect("valid Argon2 parameters")
}

fn hasher() -> Argon2<'static> {
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params())
}

/// The start of every PHC string made with the current parameters.
fn current_prefix() -> String {
    format!("$argon2id$v=19$m={M_COST},t={T_COST},p={P_COST}$")
}

/// Whether a stored hash was made with other parameters (or another scheme) than now.
pub fn needs_rehash(stored: &str) -> bool {
    !stored.starts_with(&current_prefix())
}

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
    /// The hashing pool's threads are gone (never seen unless they panicked).
    #[error("the password hashing pool stopped")]
    PoolGone,
    /// Too many checks are already queued or running (see [`super::login`]).
    #[error("too many password checks are waiting")]
    Busy,
}

type Job = Box<dyn FnOnce() + Send>;

/// The hashing threads' queue.
struct Pool {
    tx: Mutex<Sender<Job>>,
    threads: usize,
}

fn pool() -> &'static Pool {
    static POOL: OnceLock<Pool> = OnceLock::new();
    POOL.get_or_init(|| {
        let threads = std::thread::available_parallelism().map_or(2, usize::from);
        let (tx, rx) = channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..threads {
            let rx = rx.clone();
            std::thread::Builder::new()
                .name(format!("argon2-{i}"))
                .spawn(move || worker(&rx))
                .expect("start a password hashing thread");
        }
        Pool {
            tx: Mutex::new(tx),
            threads,
        }
    })
}

fn worker(rx: &Mutex<Receiver<Job>>) {
    // Linux keeps a nice value per thread, and `None` (pid 0) means the calling thread.
    // Never lower it (an unprivileged process may not).
    let now = rustix::process::getpriority_process(None).unwrap_or(0);
    if let Err(e) = rustix::process::setpriority_process(None, now.max(HASH_NICE)) {
        tracing::warn!(error = %e, "password hashing thread keeps normal priority");
    }
    loop {
        let job = match rx.lock() {
            Ok(rx) => rx.recv(),
            Err(_) => return,
        };
        match job {
            Ok(job) => job(),
            Err(_) => return,
        }
    }
}

/// How many threads hash (one per core).
pub fn pool_threads() -> usize {
    pool().threads
}

fn submit<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
    done: impl FnOnce(T) + Send + 'static,
) -> Result<(), PasswordError> {
    let job: Job = Box::new(move || done(f()));
    pool()
        .tx
        .lock()
        .map_err(|_| PasswordError::PoolGone)?
        .send(job)
        .map_err(|_| PasswordError::PoolGone)
}

/// Runs `f` on the hashing pool and waits for it (from a thread that may block).
fn on_pool<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T, PasswordError> {
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    submit(f, move |v| {
        let _ = tx.send(v);
    })?;
    rx.recv().map_err(|_| PasswordError::PoolGone)
}

/// Runs `f` on the hashing pool and awaits it (from an async task, which stays free).
async fn on_pool_async<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, PasswordError> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    submit(f, move |v| {
        let _ = tx.send(v);
    })?;
    rx.await.map_err(|_| PasswordError::PoolGone)
}

fn hash_here(password: &str) -> Result<String, PasswordError> {
    let mut salt = [0u8; 16];
    getrandom::fill(&mut salt).map_err(|_| PasswordError::Random)?;
    hasher()
        .hash_password_with_salt(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| PasswordError::Hash(e.to_string()))
}

fn dummy() -> &'static str {
    static DUMMY: OnceLock<String> = OnceLock::new();
    DUMMY.get_or_init(|| hash_here("ferrostack-dummy-password").unwrap_or_default())
}

/// The check itself, on whatever thread calls it. A stored hash's own parameters are used
/// (so older hashes still verify); with no stored hash the dummy is checked.
fn verify_here(password: &str, stored: Option<&str>) -> bool {
    match stored {
        Some(h) => Argon2::default()
            .verify_password(password.as_bytes(), h)
            .is_ok(),
        None => {
            let _ = Argon2::default().verify_password(password.as_bytes(), dummy());
            false
        }
    }
}

/// Hashes a password into a PHC string (`$argon2id$v=19$m=19456,t=2,p=1$...`), on the
/// hashing pool. Refused in cached-only mode.
pub fn hash(password: &str) -> Result<String, PasswordError> {
    if crate::store::snapshot::must_block() {
        return Err(PasswordError::WouldBlock);
    }
    let password = password.to_string();
    on_pool(move || hash_here(&password))?
}

/// Whether `password` matches `stored`, checked on the hashing pool. With `stored = None`
/// (no such user, or no password), a dummy hash is checked so the answer takes as long as
/// for a real user. In cached-only mode nothing is checked and the answer is `false` (the
/// caller's result is thrown away; see [`crate::store::snapshot::cached_only`]).
pub fn verify(password: &str, stored: Option<&str>) -> bool {
    if crate::store::snapshot::must_block() {
        return false;
    }
    let password = password.to_string();
    let stored = stored.map(str::to_string);
    on_pool(move || verify_here(&password, stored.as_deref())).unwrap_or(false)
}

/// The outcome of checking a request's secret against one stored hash, made before the
/// request's handler runs (so the handler need not hash). Valid only for that request.
#[derive(Debug, Clone)]
pub struct Checked {
    /// The stored hash the secret was checked against (`None`: there was none).
    pub stored: Option<String>,
    /// Whether it matched.
    pub ok: bool,
    /// When it matched but the stored hash has old parameters: the secret hashed anew.
    pub rehash: Option<String>,
}

impl Checked {
    /// Whether this outcome is for `stored`; if not, `None` (the record changed since).
    pub fn for_stored(&self, stored: Option<&str>) -> Option<bool> {
        (self.stored.as_deref() == stored).then_some(self.ok)
    }
}

fn check_here(password: &str, stored: Option<String>) -> Checked {
    let ok = verify_here(password, stored.as_deref());
    let rehash = match &stored {
        Some(s) if ok && needs_rehash(s) => hash_here(password).ok(),
        _ => None,
    };
    Checked { stored, ok, rehash }
}

/// Checks `password` against `stored` on the hashing pool without holding the calling
/// task's thread, and rehashes it when it matches a hash made with old parameters.
pub async fn check(password: String, stored: Option<String>) -> Result<Checked, PasswordError> {
    on_pool_async(move || check_here(&password, stored)).await
}

/// Queues the same check as [`check`] on the hashing pool and hands its outcome to `done`
/// on the hashing thread, whether or not anyone still waits for it.
pub fn check_then(
    password: String,
    stored: Option<String>,
    done: impl FnOnce(Checked) + Send + 'static,
) -> Result<(), PasswordError> {
    submit(move || check_here(&password, stored), done)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_and_verify() {
        let h = hash("s3cret").unwrap();
        assert!(h.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{h}");
        assert!(!needs_rehash(&h));
        assert!(verify("s3cret", Some(&h)));
        assert!(!verify("s3cret ", Some(&h)));
        assert!(!verify("s3cret", None));
        assert!(!verify("s3cret", Some("not a phc string")));
        assert_ne!(hash("s3cret").unwrap(), h, "salted");
    }

    #[test]
    fn old_parameters_still_verify_and_are_rehashed_on_a_match() {
        let weak = Argon2::new(
            Algorithm::Argon2id,
            Version::V0x13,
            Params::new(8 * 1024, 1, 1, None).unwrap(),
        )
        .hash_password_with_salt(b"pw", b"0123456789abcdef")
        .unwrap()
        .to_string();
        assert!(needs_rehash(&weak));
        assert!(verify("pw", Some(&weak)));
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let c = rt.block_on(check("pw".into(), Some(weak.clone()))).unwrap();
        assert!(c.ok);
        let new = c
            .rehash
            .clone()
            .expect("a match on old parameters is rehashed");
        assert!(!needs_rehash(&new), "{new}");
        assert!(verify("pw", Some(&new)));
        assert_eq!(c.for_stored(Some(&weak)), Some(true));
        assert_eq!(c.for_stored(Some(&new)), None, "another stored hash");
        let wrong = rt.block_on(check("nope".into(), Some(weak))).unwrap();
        assert!(
            !wrong.ok && wrong.rehash.is_none(),
            "no rehash without a match"
        );
        let none = rt.block_on(check("pw".into(), None)).unwrap();
        assert!(!none.ok);
        assert_eq!(none.for_stored(None), Some(false));
    }

    #[test]
    fn hashing_runs_on_its_own_low_priority_threads() {
        assert_eq!(
            pool_threads(),
            std::thread::available_parallelism().map_or(2, usize::from)
        );
        let (name, nice) = on_pool(|| {
            let nice = rustix::process::getpriority_process(None).unwrap();
            (std::thread::current().name().map(str::to_string), nice)
        })
        .unwrap();
        assert!(name.unwrap().starts_with("argon2-"));
        assert!(nice >= HASH_NICE, "nice {nice}");
    }
}
