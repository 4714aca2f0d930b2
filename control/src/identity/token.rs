//! Signed tokens, Fernet-like: the token carries everything needed to check it (user,
//! scope, methods, issue and expiry times, audit id), authenticated with HMAC-SHA256 under
//! a key from a rotating key ring on disk. Validation needs no database read; revoked
//! audit ids and users are checked against an in-memory list (see [`Revocations`]).
//!
//! Wire format, base64url without padding:
//! `key id (u32 BE) | version (1) | payload | HMAC-SHA256(key, everything before)`.
//! Payload: methods bitmask (u8), user id, scope kind (u8) and id, issued and expires
//! (u64 BE seconds), audit id (16 bytes), parent audit id flag (u8) and 16 bytes,
//! application credential id, and then, only in a token made through a trust, the trust id
//! (so tokens written before trusts existed still read); strings are a u8 length and UTF-8
//! bytes.
//!
//! Keys: files named by decimal id in the key directory, each 32 random bytes in hex. The
//! highest id signs; all kept keys validate. Rotation writes id+1 (temp file, fsync,
//! rename, fsync dir) and removes the oldest beyond `max_keys`.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::RwLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{KeyInit, Mac};

type HmacSha256 = hmac::Hmac<sha2::Sha256>;

const FORMAT_VERSION: u8 = 1;
const TAG_LEN: usize = 32;
/// Longest token accepted (bytes of base64); longer input is rejected before decoding.
pub const MAX_TOKEN_LEN: usize = 1024;

/// Errors of the key ring and token codec.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// The key directory could not be read or written.
    #[error("key directory {0}")]
    KeyDir(PathBuf, #[source] std::io::Error),
    /// A key file does not hold 32 bytes of hex.
    #[error("key file {0} is malformed")]
    BadKey(PathBuf),
    /// Random bytes could not be had.
    #[error("no randomness")]
    Random,
    /// The token is not one of ours, was altered, or was signed by a key no longer kept.
    #[error("token is malformed or its signature does not verify")]
    Invalid,
    /// The token's lifetime is over.
    #[error("token expired")]
    Expired,
}

/// How the token's holder authenticated.
pub mod method {
    /// `password`.
    pub const PASSWORD: u8 = 1;
    /// `token` (rescoping an earlier token).
    pub const TOKEN: u8 = 2;
    /// `application_credential`.
    pub const APP_CREDENTIAL: u8 = 4;
    /// `ec2credential` (an S3 or EC2 request signed with an EC2 credential).
    pub const EC2_CREDENTIAL: u8 = 8;
}

/// What a token is scoped to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// No scope: may only list its projects and rescope.
    Unscoped,
    /// A project.
    Project(String),
    /// A domain.
    Domain(String),
    /// The whole deployment (Keystone's system scope, `system: {"all": true}`).
    System,
}

/// The contents of a token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claims {
    /// Bitmask of [`method`] values.
    pub methods: u8,
    /// The user.
    pub user_id: String,
    /// The scope.
    pub scope: Scope,
    /// Milliseconds since the epoch (revocations of a user compare against it, so a token
    /// issued right after a password change is not caught by it).
    pub issued_at_ms: u64,
    /// Seconds since the epoch.
    pub expires_at: u64,
    /// Unique per token.
    pub audit_id: [u8; 16],
    /// The audit id of the token this one was made from (token method).
    pub parent_audit_id: Option<[u8; 16]>,
    /// The application credential used, if any.
    pub app_cred_id: Option<String>,
    /// The trust the token was issued through, if any (Keystone's `OS-TRUST:trust`).
    pub trust_id: Option<String>,
}

impl Claims {
    /// Method names as Keystone lists them.
    pub fn method_names(&self) -> Vec<&'static str> {
        let mut v = Vec::new();
        if self.methods & method::PASSWORD != 0 {
            v.push("password");
        }
        if self.methods & method::TOKEN != 0 {
            v.push("token");
        }
        if self.methods & method::APP_CREDENTIAL != 0 {
            v.push("application_credential");
        }
        if self.methods & method::EC2_CREDENTIAL != 0 {
            v.push("ec2credential");
        }
        v
    }

    /// The audit ids as Keystone shows them (this token's, then its parent's).
    pub fn audit_ids(&self) -> Vec<String> {
        let mut v = vec![URL_SAFE_NO_PAD.encode(self.audit_id)];
        if let Some(p) = self.parent_audit_id {
            v.push(URL_SAFE_NO_PAD.encode(p));
        }
        v
    }
}

/// Seconds since the epoch now.
pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Milliseconds since the epoch now.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A fresh random 16-byte id.
pub fn random_audit_id() -> Result<[u8; 16], TokenError> {
    let mut b = [0u8; 16];
    getrandom::fill(&mut b).map_err(|_| TokenError::Random)?;
    Ok(b)
}

/// Length byte marking a 32-digit lowercase hex id packed into 16 bytes.
const PACKED_HEX: u8 = 0xff;

fn put_str(out: &mut Vec<u8>, s: &str) -> Result<(), TokenError> {
    let hexid = s.len() == 32
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    if hexid {
        out.push(PACKED_HEX);
        out.extend_from_slice(&hex::decode(s).map_err(|_| TokenError::Invalid)?);
        return Ok(());
    }
    let len = u8::try_from(s.len())
        .ok()
        .filter(|l| *l != PACKED_HEX)
        .ok_or(TokenError::Invalid)?;
    out.push(len);
    out.extend_from_slice(s.as_bytes());
    Ok(())
}

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], TokenError> {
        if self.0.len() < n {
            return Err(TokenError::Invalid);
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }
    fn u8(&mut self) -> Result<u8, TokenError> {
        Ok(self.take(1)?[0])
    }
    fn u64(&mut self) -> Result<u64, TokenError> {
        Ok(u64::from_be_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }
    fn id16(&mut self) -> Result<[u8; 16], TokenError> {
        Ok(self.take(16)?.try_into().expect("16 bytes"))
    }
    fn str(&mut self) -> Result<String, TokenError> {
        let n = self.u8()?;
        if n == PACKED_HEX {
            return Ok(hex::encode(self.take(16)?));
        }
        let n = n as usize;
        String::from_utf8(self.take(n)?.to_vec()).map_err(|_| TokenError::Invalid)
    }
}

fn encode_claims(c: &Claims) -> Result<Vec<u8>, TokenError> {
    let mut out = Vec::with_capacity(96);
    out.push(c.methods);
    put_str(&mut out, &c.user_id)?;
    match &c.scope {
        Scope::Unscoped => out.push(0),
        Scope::Project(id) => {
            out.push(1);
            put_str(&mut out, id)?;
        }
        Scope::Domain(id) => {
            out.push(2);
            put_str(&mut out, id)?;
        }
        Scope::System => out.push(3),
    }
    out.extend_from_slice(&c.issued_at_ms.to_be_bytes());
    out.extend_from_slice(&c.expires_at.to_be_bytes());
    out.extend_from_slice(&c.audit_id);
    match c.parent_audit_id {
        Some(p) => {
            out.push(1);
            out.extend_from_slice(&p);
        }
        None => out.push(0),
    }
    put_str(&mut out, c.app_cred_id.as_deref().unwrap_or(""))?;
    if let Some(t) = c.trust_id.as_deref().filter(|t| !t.is_empty()) {
        put_str(&mut out, t)?;
    }
    Ok(out)
}

fn decode_claims(b: &[u8]) -> Result<Claims, TokenError> {
    let mut r = Reader(b);
    let methods = r.u8()?;
    let user_id = r.str()?;
    let scope = match r.u8()? {
        0 => Scope::Unscoped,
        1 => Scope::Project(r.str()?),
        2 => Scope::Domain(r.str()?),
        3 => Scope::System,
        _ => return Err(TokenError::Invalid),
    };
    let issued_at_ms = r.u64()?;
    let expires_at = r.u64()?;
    let audit_id = r.id16()?;
    let parent_audit_id = match r.u8()? {
        0 => None,
        1 => Some(r.id16()?),
        _ => return Err(TokenError::Invalid),
    };
    let app = r.str()?;
    let trust_id = if r.0.is_empty() {
        None
    } else {
        Some(r.str()?).filter(|t| !t.is_empty())
    };
    if !r.0.is_empty() {
        return Err(TokenError::Invalid);
    }
    Ok(Claims {
        methods,
        user_id,
        scope,
        issued_at_ms,
        expires_at,
        audit_id,
        parent_audit_id,
        app_cred_id: (!app.is_empty()).then_some(app),
        trust_id,
    })
}

/// The methods byte of a token, read without checking the token: only a hint of whether
/// a closer look is needed (an application-credential token may be restricted by access
/// rules). The token is checked in full wherever it is used.
pub fn methods_hint(token: &str) -> Option<u8> {
    // Eight base64 digits are the first six bytes: key id (4), version (1), methods (1).
    // Trimmed as the full check trims it, so no spacing makes the hint miss a token the
    // check then accepts.
    let head = URL_SAFE_NO_PAD.decode(token.trim().get(..8)?).ok()?;
    (head.get(4) == Some(&FORMAT_VERSION)).then(|| head[5])
}

/// The signing keys, loaded from a directory.
pub struct KeyRing {
    dir: PathBuf,
    max_keys: usize,
    keys: RwLock<BTreeMap<u32, [u8; 32]>>,
}

fn io(dir: &Path) -> impl Fn(std::io::Error) -> TokenError + '_ {
    move |e| TokenError::KeyDir(dir.to_path_buf(), e)
}

impl KeyRing {
    /// Loads the keys in `dir`, creating the directory and a first key if there are none.
    pub fn open(dir: &Path, max_keys: usize) -> Result<KeyRing, TokenError> {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let ring = KeyRing {
            dir: dir.to_path_buf(),
            max_keys: max_keys.max(2),
            keys: RwLock::new(BTreeMap::new()),
        };
        ring.reload()?;
        if ring.keys.read().expect("keys").is_empty() {
            ring.rotate()?;
        }
        Ok(ring)
    }

    /// Re-reads the key directory (another controller, or an operator, may have rotated).
    pub fn reload(&self) -> Result<(), TokenError> {
        let mut keys = BTreeMap::new();
        for entry in std::fs::read_dir(&self.dir).map_err(io(&self.dir))? {
            let entry = entry.map_err(io(&self.dir))?;
            let Some(id) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            let text = std::fs::read_to_string(entry.path()).map_err(io(&self.dir))?;
            let bytes = hex::decode(text.trim()).map_err(|_| TokenError::BadKey(entry.path()))?;
            let key: [u8; 32] = bytes
                .try_into()
                .map_err(|_| TokenError::BadKey(entry.path()))?;
            keys.insert(id, key);
        }
        *self.keys.write().expect("keys") = keys;
        Ok(())
    }

    /// The id of the signing key.
    pub fn primary_id(&self) -> Option<u32> {
        self.keys.read().expect("keys").keys().next_back().copied()
    }

    /// How long ago the primary key was written.
    pub fn primary_age(&self) -> Option<Duration> {
        let id = self.primary_id()?;
        let meta = std::fs::metadata(self.dir.join(id.to_string())).ok()?;
        meta.modified().ok()?.elapsed().ok()
    }

    /// Makes a new primary key and drops the oldest beyond the limit. Returns the new id.
    pub fn rotate(&self) -> Result<u32, TokenError> {
        let next = self.primary_id().map_or(1, |id| id + 1);
        let mut key = [0u8; 32];
        getrandom::fill(&mut key).map_err(|_| TokenError::Random)?;
        let tmp = self.dir.join(format!(".{next}.tmp"));
        {
            use std::io::Write;
            let mut f = std::fs::File::create(&tmp).map_err(io(&self.dir))?;
            f.write_all(hex::encode(key).as_bytes())
                .map_err(io(&self.dir))?;
            f.sync_all().map_err(io(&self.dir))?;
        }
        std::fs::rename(&tmp, self.dir.join(next.to_string())).map_err(io(&self.dir))?;
        let mut keys = self.keys.write().expect("keys");
        keys.insert(next, key);
        while keys.len() > self.max_keys {
            let (&oldest, _) = keys.iter().next().expect("non-empty");
            keys.remove(&oldest);
            let _ = std::fs::remove_file(self.dir.join(oldest.to_string()));
        }
        drop(keys);
        std::fs::File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(io(&self.dir))?;
        Ok(next)
    }

    /// Signs claims with the primary key.
    pub fn seal(&self, claims: &Claims) -> Result<String, TokenError> {
        let keys = self.keys.read().expect("keys");
        let (&id, key) = keys.iter().next_back().ok_or(TokenError::Invalid)?;
        let mut raw = Vec::with_capacity(128);
        raw.extend_from_slice(&id.to_be_bytes());
        raw.push(FORMAT_VERSION);
        raw.extend_from_slice(&encode_claims(claims)?);
        let mut mac = HmacSha256::new_from_slice(key).expect("any key length");
        mac.update(&raw);
        raw.extend_from_slice(&mac.finalize().into_bytes());
        Ok(URL_SAFE_NO_PAD.encode(raw))
    }

    /// Checks signature and expiry (at `now`), returning the claims.
    pub fn open_token(&self, token: &str, now: u64) -> Result<Claims, TokenError> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(TokenError::Invalid);
        }
        let raw = URL_SAFE_NO_PAD
            .decode(token.trim())
            .map_err(|_| TokenError::Invalid)?;
        if raw.len() < 5 + TAG_LEN {
            return Err(TokenError::Invalid);
        }
        let (signed, tag) = raw.split_at(raw.len() - TAG_LEN);
        let id = u32::from_be_bytes(signed[..4].try_into().expect("4 bytes"));
        if signed[4] != FORMAT_VERSION {
            return Err(TokenError::Invalid);
        }
        {
            let keys = self.keys.read().expect("keys");
            let key = keys.get(&id).ok_or(TokenError::Invalid)?;
            let mut mac = HmacSha256::new_from_slice(key).expect("any key length");
            mac.update(signed);
            mac.verify_slice(tag).map_err(|_| TokenError::Invalid)?;
        }
        let claims = decode_claims(&signed[5..])?;
        if claims.expires_at <= now {
            return Err(TokenError::Expired);
        }
        Ok(claims)
    }
}

/// Revoked tokens, held in memory and mirrored in the store (so every controller and a
/// restarted one honour them). An entry lives until the tokens it covers would expire.
#[derive(Debug, Default)]
pub struct Revocations {
    /// audit id (base64url) -> expiry of the revocation (seconds).
    by_audit: HashMap<String, u64>,
    /// user id -> tokens issued at or before this second are revoked.
    by_user: HashMap<String, u64>,
}

impl Revocations {
    /// Revokes one token (and every token rescoped from it) by audit id.
    pub fn revoke_audit(&mut self, audit_id: String, until: u64) {
        self.by_audit.insert(audit_id, until);
    }

    /// Revokes every token of a user issued up to `issued_before_ms`.
    pub fn revoke_user(&mut self, user_id: String, issued_before_ms: u64) {
        let issued_before = issued_before_ms;
        let e = self.by_user.entry(user_id).or_insert(0);
        *e = (*e).max(issued_before);
    }

    /// Whether the claims fall under a revocation.
    pub fn is_revoked(&self, c: &Claims) -> bool {
        if let Some(&t) = self.by_user.get(&c.user_id)
            && c.issued_at_ms <= t
        {
            return true;
        }
        if self.by_audit.is_empty() {
            return false;
        }
        c.audit_ids().iter().any(|a| self.by_audit.contains_key(a))
    }

    /// Forgets revocations of tokens that have expired anyway.
    pub fn prune(&mut self, now: u64, max_lifetime: u64) {
        self.by_audit.retain(|_, until| *until > now);
        self.by_user
            .retain(|_, t| (*t / 1000).saturating_add(max_lifetime) > now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(now: u64) -> Claims {
        Claims {
            methods: method::PASSWORD,
            user_id: "0123456789abcdef0123456789abcdef".into(),
            scope: Scope::Project("fedcba9876543210fedcba9876543210".into()),
            issued_at_ms: now * 1000,
            expires_at: now + 3600,
            audit_id: random_audit_id().unwrap(),
            parent_audit_id: None,
            app_cred_id: None,
            trust_id: None,
        }
    }

    #[test]
    fn round_trip_every_shape() {
        let dir = tempfile::tempdir().unwrap();
        let ring = KeyRing::open(dir.path(), 3).unwrap();
        let now = now_secs();
        let mut c = claims(now);
        for scope in [
            Scope::Unscoped,
            Scope::Domain("default".into()),
            Scope::Project("p".into()),
            Scope::System,
        ] {
            c.scope = scope;
            c.parent_audit_id = Some([7; 16]);
            c.app_cred_id = Some("ac".into());
            c.methods = method::TOKEN | method::APP_CREDENTIAL;
            let t = ring.seal(&c).unwrap();
            assert!(t.len() < 170, "token is compact: {}", t.len());
            assert_eq!(ring.open_token(&t, now).unwrap(), c);
        }
        assert_eq!(c.method_names(), ["token", "application_credential"]);
        // A token made through a trust carries the trust's id after everything else; one
        // without it (as every token before trusts) ends at the credential id.
        let plain = ring.seal(&c).unwrap();
        c.trust_id = Some("00112233445566778899aabbccddeeff".into());
        let trusted = ring.seal(&c).unwrap();
        assert_eq!(ring.open_token(&trusted, now).unwrap(), c);
        assert!(trusted.len() > plain.len() && trusted.len() < 200);
        assert_eq!(ring.open_token(&plain, now).unwrap().trust_id, None);
        c.trust_id = None;
        // Ids that are not 32 lowercase hex digits are kept as they are.
        for odd in [
            "ABCDEF0123456789ABCDEF0123456789",
            "x",
            "0123456789abcdef0123456789abcdeg",
        ] {
            c.user_id = odd.into();
            let t = ring.seal(&c).unwrap();
            assert_eq!(ring.open_token(&t, now).unwrap().user_id, odd);
        }
        c.user_id = "u".repeat(255);
        assert!(
            ring.seal(&c).is_err(),
            "a 255-byte id would read as a packed one"
        );
        assert_eq!(c.audit_ids().len(), 2);
    }

    #[test]
    fn the_methods_hint_reads_the_methods_byte() {
        let dir = tempfile::tempdir().unwrap();
        let ring = KeyRing::open(dir.path(), 3).unwrap();
        let now = now_secs();
        let mut c = claims(now);
        assert_eq!(
            methods_hint(&ring.seal(&c).unwrap()),
            Some(method::PASSWORD)
        );
        c.methods = method::TOKEN | method::APP_CREDENTIAL;
        c.app_cred_id = Some("ac".into());
        assert_eq!(
            methods_hint(&ring.seal(&c).unwrap()),
            Some(method::TOKEN | method::APP_CREDENTIAL)
        );
        let spaced = format!(" \t{} ", ring.seal(&c).unwrap());
        assert_eq!(
            methods_hint(&spaced),
            Some(method::TOKEN | method::APP_CREDENTIAL)
        );
        for junk in ["", "short", "!!!!!!!!!!", "AAAAAAAAAAAA"] {
            assert_eq!(methods_hint(junk), None, "{junk:?}");
        }
    }

    #[test]
    fn tampering_any_byte_is_detected() {
        let dir = tempfile::tempdir().unwrap();
        let ring = KeyRing::open(dir.path(), 3).unwrap();
        let now = now_secs();
        let t = ring.seal(&claims(now)).unwrap();
        let raw = URL_SAFE_NO_PAD.decode(&t).unwrap();
        for i in 0..raw.len() {
            let mut bad = raw.clone();
            bad[i] ^= 0x01;
            let bad = URL_SAFE_NO_PAD.encode(bad);
            assert!(
                ring.open_token(&bad, now).is_err(),
                "byte {i} flip accepted"
            );
        }
        assert!(ring.open_token(&t[..t.len() - 2], now).is_err());
        assert!(ring.open_token("", now).is_err());
        assert!(ring.open_token("!!!", now).is_err());
        assert!(ring.open_token(&"A".repeat(5000), now).is_err());
    }

    #[test]
    fn another_ring_rejects_the_token() {
        let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let a = KeyRing::open(d1.path(), 3).unwrap();
        let b = KeyRing::open(d2.path(), 3).unwrap();
        let t = a.seal(&claims(now_secs())).unwrap();
        assert!(matches!(
            b.open_token(&t, now_secs()),
            Err(TokenError::Invalid)
        ));
    }

    #[test]
    fn expiry() {
        let dir = tempfile::tempdir().unwrap();
        let ring = KeyRing::open(dir.path(), 3).unwrap();
        let now = now_secs();
        let t = ring.seal(&claims(now)).unwrap();
        assert!(ring.open_token(&t, now + 3599).is_ok());
        assert!(matches!(
            ring.open_token(&t, now + 3600),
            Err(TokenError::Expired)
        ));
    }

    #[test]
    fn rotation_keeps_old_tokens_until_their_key_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let ring = KeyRing::open(dir.path(), 3).unwrap();
        let now = now_secs();
        let old = ring.seal(&claims(now)).unwrap();
        assert_eq!(ring.primary_id(), Some(1));
        assert_eq!(ring.rotate().unwrap(), 2);
        let newer = ring.seal(&claims(now)).unwrap();
        assert!(
            ring.open_token(&old, now).is_ok(),
            "old key still validates"
        );
        assert_ne!(old[..6], newer[..6], "new tokens name the new key");
        ring.rotate().unwrap();
        assert!(ring.open_token(&old, now).is_ok());
        ring.rotate().unwrap(); // key 1 dropped: 2, 3, 4 remain
        assert!(matches!(
            ring.open_token(&old, now),
            Err(TokenError::Invalid)
        ));
        assert!(ring.open_token(&newer, now).is_ok());
        // On disk too: a fresh ring from the directory agrees.
        let again = KeyRing::open(dir.path(), 3).unwrap();
        assert_eq!(again.primary_id(), Some(4));
        assert!(again.open_token(&newer, now).is_ok());
        assert!(again.open_token(&old, now).is_err());
        let mut names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, ["2", "3", "4"]);
    }

    #[test]
    fn a_corrupt_key_file_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("1"), "zz").unwrap();
        assert!(matches!(
            KeyRing::open(dir.path(), 3),
            Err(TokenError::BadKey(_))
        ));
    }

    #[test]
    fn revocations() {
        let now = now_secs();
        let mut r = Revocations::default();
        let c = claims(now);
        assert!(!r.is_revoked(&c));
        r.revoke_audit(c.audit_ids()[0].clone(), c.expires_at);
        assert!(r.is_revoked(&c));
        // A token rescoped from a revoked one is revoked too (parent audit id).
        let mut child = claims(now);
        child.parent_audit_id = Some(c.audit_id);
        assert!(r.is_revoked(&child));
        let other = claims(now);
        assert!(!r.is_revoked(&other));
        // User-wide revocation covers tokens issued up to that second, not later ones.
        r.revoke_user(other.user_id.clone(), now * 1000);
        assert!(r.is_revoked(&other));
        let mut later = claims(now);
        later.issued_at_ms += 1;
        later.user_id = other.user_id.clone();
        assert!(!r.is_revoked(&later));
        r.prune(c.expires_at, 3600);
        assert!(!r.is_revoked(&c), "expired revocations are pruned");
    }
}
