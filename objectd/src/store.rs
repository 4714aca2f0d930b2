//! The durable store: immutable blob files plus an SQLite index.
//!
//! A body is streamed into `tmp/<id>` while its MD5 is computed, fsync'd, renamed to
//! `blobs/<id[..2]>/<id>`, and the directory fsync'd; only then does the index (SQLite,
//! WAL, `synchronous=FULL`) learn about it, in one transaction. A crash before the commit
//! leaves at most an unreferenced file, never a visible partial object; a crash after it
//! loses nothing. Names never reach the filesystem (blob ids are random hex), so object
//! names cannot traverse paths.
//!
//! Objects reference one blob (plain PUT), several (an S3 multipart upload), or a
//! manifest (Swift SLO: the blob holds the manifest JSON; DLO: a container/prefix).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use md5::{Digest, Md5};
use rusqlite::{Connection, OptionalExtension, params};
use serde::{Deserialize, Serialize};

/// Errors of the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A filesystem operation failed.
    #[error("{op} failed")]
    Io {
        /// The operation.
        op: &'static str,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The index failed.
    #[error("index operation failed")]
    Index(#[from] rusqlite::Error),
    /// Stored JSON in the index is malformed.
    #[error("index holds malformed json")]
    Json(#[from] serde_json::Error),
    /// The container does not exist.
    #[error("no such container")]
    NoContainer,
    /// The container still holds objects.
    #[error("container not empty")]
    NotEmpty,
    /// The multipart upload does not exist.
    #[error("no such upload")]
    NoUpload,
    /// A versioned container's archive container does not exist.
    #[error("versions container {0} does not exist")]
    NoArchive(String),
    /// A blocking task panicked.
    #[error("blocking task failed")]
    Join(#[from] tokio::task::JoinError),
    /// OpenSSL's MD5 failed (it refuses MD5 when configured for FIPS only).
    #[error("md5 digest failed")]
    Digest(#[from] openssl::error::ErrorStack),
}

fn io(op: &'static str) -> impl FnOnce(std::io::Error) -> StoreError {
    move |source| StoreError::Io { op, source }
}

/// One immutable body: a file, or (up to [`INLINE_MAX`] bytes) a row of the index.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Blob {
    /// Random hex id; a file blob lives in `blobs/<id[..2]>/<id>`.
    pub id: String,
    /// Length in bytes.
    pub size: u64,
    /// MD5 of the content, lowercase hex.
    pub md5: String,
    /// CRC32 of the content, checked on reads (much cheaper than MD5); absent on blobs
    /// written before it existed, which are checked against their MD5.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crc32: Option<u32>,
    /// Stored in the index (`inline_blobs`) rather than in a file.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub inline: bool,
    /// The content of a new inline blob, until the index stores it with its object.
    #[serde(skip)]
    pub data: Option<bytes::Bytes>,
}

impl Blob {
    /// A checker for the blob's whole content.
    pub fn verifier(&self) -> Verifier {
        match self.crc32 {
            Some(c) => Verifier::Crc32(crc32fast::Hasher::new(), c),
            None => Verifier::Md5(Box::new(Md5::new()), self.md5.clone()),
        }
    }
}

/// Checks a blob's content as it is read: CRC32 when recorded, MD5 otherwise.
pub enum Verifier {
    /// Running CRC32 and the expected value.
    Crc32(crc32fast::Hasher, u32),
    /// Running MD5 and the expected hex digest.
    Md5(Box<Md5>, String),
}

impl Verifier {
    /// Adds content.
    pub fn update(&mut self, data: &[u8]) {
        match self {
            Verifier::Crc32(h, _) => h.update(data),
            Verifier::Md5(h, _) => h.update(data),
        }
    }

    /// Whether everything added matches the record.
    pub fn matches(&self) -> bool {
        match self {
            Verifier::Crc32(h, want) => h.clone().finalize() == *want,
            Verifier::Md5(h, want) => hex::encode((**h).clone().finalize()) == *want,
        }
    }
}

/// Bodies up to this size are stored inline in the index: one fsync (the index commit)
/// makes them durable instead of three (file, directory, index).
pub const INLINE_MAX: u64 = 64 * 1024;

/// How an object's content is made.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// The blobs, concatenated.
    Plain,
    /// A Swift static large object: the single blob is the manifest JSON.
    Slo,
    /// A Swift dynamic large object: the segments are `container/prefix*`.
    Dlo(String),
}

/// An object's record in the index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectRecord {
    /// Object name.
    pub name: String,
    /// Logical length in bytes (for SLO/DLO, as far as known at write time).
    pub size: u64,
    /// ETag without quotes.
    pub etag: String,
    /// Content-Type.
    pub content_type: String,
    /// Last modification, milliseconds since the epoch.
    pub last_modified_ms: i64,
    /// User metadata and stored headers, by lowercase header name.
    pub meta: BTreeMap<String, String>,
    /// Expiry (X-Delete-At), seconds since the epoch.
    pub delete_at: Option<i64>,
    /// The body files.
    pub blobs: Vec<Blob>,
    /// How the content is made.
    pub kind: Kind,
}

/// A container's record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerRecord {
    /// Name.
    pub name: String,
    /// Metadata headers by lowercase name.
    pub meta: BTreeMap<String, String>,
    /// Creation, milliseconds since the epoch.
    pub created_ms: i64,
    /// Number of live objects.
    pub object_count: u64,
    /// Sum of their sizes.
    pub bytes_used: u64,
}

/// Totals for an account.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AccountStats {
    /// Containers.
    pub container_count: u64,
    /// Objects.
    pub object_count: u64,
    /// Bytes.
    pub bytes_used: u64,
    /// Metadata headers by lowercase name.
    pub meta: BTreeMap<String, String>,
}

/// One entry of a listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    /// An object.
    Object(ObjectRecord),
    /// A common prefix ending in the delimiter.
    Subdir(String),
}

/// Parameters of a listing.
#[derive(Debug, Clone, Default)]
pub struct ListQuery {
    /// Only names starting with this.
    pub prefix: String,
    /// Roll names up to the first delimiter after the prefix.
    pub delimiter: Option<String>,
    /// Only names after this.
    pub marker: String,
    /// Only names before this.
    pub end_marker: Option<String>,
    /// At most this many entries.
    pub limit: usize,
}

/// An in-progress S3 multipart upload.
#[derive(Debug, Clone)]
pub struct Upload {
    /// Upload id.
    pub id: String,
    /// Target container.
    pub container: String,
    /// Target object name.
    pub name: String,
    /// Content-Type for the result.
    pub content_type: String,
    /// Metadata for the result.
    pub meta: BTreeMap<String, String>,
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// A random lowercase hex id of `bytes` random bytes.
pub fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    getrandom::fill(&mut buf).expect("the OS random source works");
    hex::encode(buf)
}

/// The store. Cheap to clone (an `Arc` inside).
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    root: PathBuf,
    db: Mutex<Connection>,
    read_db: Mutex<Connection>,
    pending: Mutex<Vec<PutJob>>,
}

/// An object write waiting for the next group commit.
struct PutJob {
    account: String,
    container: String,
    rec: ObjectRecord,
    archive: Option<String>,
    reply: tokio::sync::oneshot::Sender<Result<Vec<Blob>, StoreError>>,
}

/// The name under which a versioned object's older content is kept in its archive
/// container (Swift's: the name's length as three hex digits, the name, `/`, the time the
/// content was written as `%016.5f` seconds), so versions of a name sort by age.
pub fn version_name(name: &str, last_modified_ms: i64) -> String {
    let secs = format!(
        "{}.{:03}00",
        last_modified_ms.div_euclid(1000),
        last_modified_ms.rem_euclid(1000)
    );
    format!("{:03x}{name}/{secs:0>16}", name.len())
}

/// The prefix of every archived version of `name`.
pub fn version_prefix(name: &str) -> String {
    format!("{:03x}{name}/", name.len())
}

/// Errs with `NoArchive` unless the container `account/name` exists.
fn require_archive(tx: &Connection, account: &str, name: &str) -> Result<(), StoreError> {
    let exists: Option<i64> = tx
        .query_row(
            "SELECT 1 FROM containers WHERE account = ?1 AND name = ?2",
            params![account, name],
            |r| r.get(0),
        )
        .optional()?;
    match exists {
        Some(_) => Ok(()),
        None => Err(StoreError::NoArchive(name.to_owned())),
    }
}

/// Moves the record `account/from/name` to `account/to/to_name` in one transaction (the
/// blobs go with it); returns the blobs of a record it displaced there. Errs with
/// `NoArchive` when `to` does not exist; `None` when there is no record to move.
fn move_record(
    tx: &Connection,
    account: &str,
    (from, name): (&str, &str),
    (to, to_name): (&str, &str),
) -> Result<Option<Vec<Blob>>, StoreError> {
    require_archive(tx, account, to)?;
    let displaced = take_blobs(tx, account, to, to_name)?;
    tx.execute(
        "DELETE FROM objects WHERE account = ?1 AND container = ?2 AND name = ?3",
        params![account, to, to_name],
    )?;
    let moved = tx.execute(
        "UPDATE objects SET container = ?4, name = ?5
         WHERE account = ?1 AND container = ?2 AND name = ?3",
        params![account, from, name, to, to_name],
    )?;
    Ok((moved > 0).then_some(displaced))
}

/// Moves the current record of `account/container/name`, if any, to its version name in
/// `archive`; the blobs it displaced (a version with the same time), if it moved one.
fn archive_current(
    tx: &Connection,
    account: &str,
    container: &str,
    name: &str,
    archive: &str,
) -> Result<Option<Vec<Blob>>, StoreError> {
    let written: Option<i64> = tx
        .query_row(
            "SELECT last_modified_ms FROM objects WHERE account = ?1 AND container = ?2 AND name = ?3",
            params![account, container, name],
            |r| r.get(0),
        )
        .optional()?;
    let Some(written) = written else {
        // Still check the archive exists, so a misconfigured container fails every write.
        require_archive(tx, account, archive)?;
        return Ok(None);
    };
    move_record(
        tx,
        account,
        (container, name),
        (archive, &version_name(name, written)),
    )
}

/// Writes one object record inside a transaction; returns the blobs it replaced. With an
/// `archive` (a versioned container), the record it replaces moves there instead.
fn put_one(
    tx: &Connection,
    account: &str,
    container: &str,
    rec: &ObjectRecord,
    archive: Option<&str>,
) -> Result<Vec<Blob>, StoreError> {
    let exists: Option<i64> = tx
        .query_row(
            "SELECT 1 FROM containers WHERE account = ?1 AND name = ?2",
            params![account, container],
            |r| r.get(0),
        )
        .optional()?;
    if exists.is_none() {
        return Err(StoreError::NoContainer);
    }
    let archived = match archive {
        Some(a) => archive_current(tx, account, container, &rec.name, a)?,
        None => None,
    };
    let old = match archived {
        Some(displaced) => displaced,
        None => take_blobs(tx, account, container, &rec.name)?,
    };
    insert_inline(tx, &rec.blobs)?;
    tx.execute(
        "INSERT INTO objects (account, container, name, size, etag, content_type,
           last_modified_ms, meta, delete_at, blobs, kind)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)
         ON CONFLICT(account, container, name) DO UPDATE SET size = excluded.size,
           etag = excluded.etag, content_type = excluded.content_type,
           last_modified_ms = excluded.last_modified_ms, meta = excluded.meta,
           delete_at = excluded.delete_at, blobs = excluded.blobs, kind = excluded.kind",
        params![
            account,
            container,
            rec.name,
            rec.size as i64,
            rec.etag,
            rec.content_type,
            rec.last_modified_ms,
            serde_json::to_string(&rec.meta)?,
            rec.delete_at,
            serde_json::to_string(&rec.blobs)?,
            serde_json::to_string(&rec.kind)?,
        ],
    )?;
    Ok(old)
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS accounts (
  account TEXT PRIMARY KEY, meta TEXT NOT NULL DEFAULT '{}');
CREATE TABLE IF NOT EXISTS containers (
  account TEXT NOT NULL, name TEXT NOT NULL, meta TEXT NOT NULL, created_ms INTEGER NOT NULL,
  PRIMARY KEY (account, name)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS objects (
  account TEXT NOT NULL, container TEXT NOT NULL, name TEXT NOT NULL,
  size INTEGER NOT NULL, etag TEXT NOT NULL, content_type TEXT NOT NULL,
  last_modified_ms INTEGER NOT NULL, meta TEXT NOT NULL, delete_at INTEGER,
  blobs TEXT NOT NULL, kind TEXT NOT NULL,
  PRIMARY KEY (account, container, name)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS objects_delete_at ON objects (delete_at) WHERE delete_at IS NOT NULL;
CREATE TABLE IF NOT EXISTS uploads (
  id TEXT PRIMARY KEY, account TEXT NOT NULL, container TEXT NOT NULL, name TEXT NOT NULL,
  content_type TEXT NOT NULL, meta TEXT NOT NULL, created_ms INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS inline_blobs (id TEXT PRIMARY KEY, data BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS parts (
  upload_id TEXT NOT NULL, number INTEGER NOT NULL, blob TEXT NOT NULL,
  PRIMARY KEY (upload_id, number)) WITHOUT ROWID;
";

fn fsync_dir(path: &Path) -> std::io::Result<()> {
    std::fs::File::open(path)?.sync_all()
}

impl Store {
    /// Opens (creating if needed) the store under `root`, and removes leftover temp files.
    pub fn open(root: &Path) -> Result<Store, StoreError> {
        std::fs::create_dir_all(root.join("tmp")).map_err(io("create data dir"))?;
        std::fs::create_dir_all(root.join("quarantine")).map_err(io("create quarantine"))?;
        for i in 0..=255u8 {
            std::fs::create_dir_all(root.join("blobs").join(format!("{i:02x}")))
                .map_err(io("create blob dir"))?;
        }
        fsync_dir(&root.join("blobs")).map_err(io("fsync blob dir"))?;
        fsync_dir(root).map_err(io("fsync data dir"))?;
        // Uploads cut short by a crash are not referenced by anything.
        for e in std::fs::read_dir(root.join("tmp")).map_err(io("read tmp dir"))? {
            let e = e.map_err(io("read tmp dir"))?;
            let _ = std::fs::remove_file(e.path());
        }
        let conn = Connection::open(root.join("index.sqlite"))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.execute_batch(SCHEMA)?;
        // Reads use their own connection so they never wait behind a commit's fsync.
        let read_conn = Connection::open(root.join("index.sqlite"))?;
        read_conn.pragma_update(None, "query_only", "ON")?;
        let store = Store {
            inner: Arc::new(Inner {
                root: root.to_owned(),
                db: Mutex::new(conn),
                read_db: Mutex::new(read_conn),
                pending: Mutex::new(Vec::new()),
            }),
        };
        let swept = store.sweep_orphans()?;
        if swept > 0 {
            tracing::info!(
                swept,
                "removed blobs no index entry references (crash leftovers)"
            );
        }
        Ok(store)
    }

    /// Removes blob files the index does not reference: bodies made durable by a writer
    /// that crashed before its index commit. Only safe with no writer running (at open).
    fn sweep_orphans(&self) -> Result<usize, StoreError> {
        let mut referenced = std::collections::HashSet::new();
        {
            let db = self.inner.db.lock().expect("index lock");
            let mut stmt = db.prepare("SELECT blobs FROM objects")?;
            for row in stmt.query_map([], |r| r.get::<_, String>(0))? {
                for b in serde_json::from_str::<Vec<Blob>>(&row?)? {
                    referenced.insert(b.id);
                }
            }
            let mut stmt = db.prepare("SELECT blob FROM parts")?;
            for row in stmt.query_map([], |r| r.get::<_, String>(0))? {
                referenced.insert(serde_json::from_str::<Blob>(&row?)?.id);
            }
        }
        let mut swept = 0;
        {
            let db = self.inner.db.lock().expect("index lock");
            let ids: Vec<String> = db
                .prepare("SELECT id FROM inline_blobs")?
                .query_map([], |r| r.get(0))?
                .collect::<Result<_, _>>()?;
            for id in ids.iter().filter(|id| !referenced.contains(*id)) {
                db.execute("DELETE FROM inline_blobs WHERE id = ?1", params![id])?;
                swept += 1;
            }
        }
        for dir in std::fs::read_dir(self.inner.root.join("blobs")).map_err(io("read blob dir"))? {
            let dir = dir.map_err(io("read blob dir"))?;
            for f in std::fs::read_dir(dir.path()).map_err(io("read blob dir"))? {
                let f = f.map_err(io("read blob dir"))?;
                let name = f.file_name().to_string_lossy().into_owned();
                if !referenced.contains(&name) {
                    let _ = std::fs::remove_file(f.path());
                    swept += 1;
                }
            }
        }
        Ok(swept)
    }

    /// The data directory.
    pub fn root(&self) -> &Path {
        &self.inner.root
    }

    /// Where a blob's file lives.
    pub fn blob_path(&self, id: &str) -> PathBuf {
        self.inner.root.join("blobs").join(&id[..2]).join(id)
    }

    /// Starts writing a new blob.
    pub async fn blob_writer(&self) -> Result<BlobWriter, StoreError> {
        let id = random_hex(16);
        let tmp = self.inner.root.join("tmp").join(&id);
        Ok(BlobWriter {
            store: self.clone(),
            id,
            tmp: Some(tmp),
            pipeline: None,
            buf: Vec::new(),
            buffered: 0,
            size: 0,
        })
    }

    /// Deletes blobs (after the index no longer references them).
    pub async fn remove_blobs(&self, blobs: Vec<Blob>) {
        if blobs.is_empty() {
            return;
        }
        let this = self.clone();
        let _ = tokio::task::spawn_blocking(move || {
            for b in blobs {
                if b.inline {
                    let db = this.inner.db.lock().expect("index lock");
                    let _ = db.execute("DELETE FROM inline_blobs WHERE id = ?1", params![b.id]);
                } else {
                    let _ = std::fs::remove_file(this.blob_path(&b.id));
                }
            }
        })
        .await;
    }

    /// Reads `[start, end)` of a blob.
    pub async fn read_range(
        &self,
        blob: &Blob,
        start: u64,
        end: u64,
    ) -> std::io::Result<bytes::Bytes> {
        if let Some(d) = &blob.data {
            return Ok(d.slice(start as usize..end as usize));
        }
        let this = self.clone();
        let (id, inline) = (blob.id.clone(), blob.inline);
        tokio::task::spawn_blocking(move || {
            if inline {
                let db = this.inner.read_db.lock().expect("index lock");
                let data: Option<Vec<u8>> = db
                    .query_row(
                        "SELECT data FROM inline_blobs WHERE id = ?1",
                        params![id],
                        |r| r.get(0),
                    )
                    .optional()
                    .map_err(std::io::Error::other)?;
                let data = data.ok_or_else(|| {
                    std::io::Error::new(std::io::ErrorKind::NotFound, "inline blob missing")
                })?;
                let e = (end as usize).min(data.len());
                let s = (start as usize).min(e);
                return Ok(bytes::Bytes::copy_from_slice(&data[s..e]));
            }
            use std::io::{Read, Seek};
            let mut f = std::fs::File::open(this.blob_path(&id))?;
            f.seek(std::io::SeekFrom::Start(start))?;
            let mut buf = Vec::with_capacity((end - start) as usize);
            f.take(end - start).read_to_end(&mut buf)?;
            Ok(bytes::Bytes::from(buf))
        })
        .await
        .map_err(std::io::Error::other)?
    }

    /// Moves a corrupt blob to `quarantine/` and drops every object referencing it.
    pub async fn quarantine(&self, blob_id: String) -> Result<(), StoreError> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || {
            let from = this.blob_path(&blob_id);
            let to = this.inner.root.join("quarantine").join(&blob_id);
            let db = this.inner.db.lock().expect("index lock");
            let inline: Option<Vec<u8>> = db
                .query_row(
                    "SELECT data FROM inline_blobs WHERE id = ?1",
                    params![blob_id],
                    |r| r.get(0),
                )
                .optional()?;
            match inline {
                Some(data) => {
                    let _ = std::fs::write(&to, data);
                    db.execute("DELETE FROM inline_blobs WHERE id = ?1", params![blob_id])?;
                }
                None => {
                    let _ = std::fs::rename(&from, &to);
                }
            }
            let pattern = format!("%\"{blob_id}\"%");
            db.execute("DELETE FROM objects WHERE blobs LIKE ?1", params![pattern])?;
            tracing::warn!(blob = %blob_id, "quarantined a corrupt blob");
            Ok(())
        })
        .await?
    }

    async fn with_read_db<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || {
            let mut db = this.inner.read_db.lock().expect("index lock");
            f(&mut db)
        })
        .await?
    }

    async fn with_db<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || {
            let mut db = this.inner.db.lock().expect("index lock");
            f(&mut db)
        })
        .await?
    }

    // ---- accounts ----

    /// Totals and metadata of an account (zeros if it never stored anything).
    pub async fn account_stats(&self, account: &str) -> Result<AccountStats, StoreError> {
        let account = account.to_owned();
        self.with_read_db(move |db| {
            let meta: Option<String> = db
                .query_row(
                    "SELECT meta FROM accounts WHERE account = ?1",
                    params![account],
                    |r| r.get(0),
                )
                .optional()?;
            let container_count: i64 = db.query_row(
                "SELECT COUNT(*) FROM containers WHERE account = ?1",
                params![account],
                |r| r.get(0),
            )?;
            let (object_count, bytes): (i64, i64) = db.query_row(
                "SELECT COUNT(*), COALESCE(SUM(size), 0) FROM objects WHERE account = ?1
                 AND (delete_at IS NULL OR delete_at > ?2)",
                params![account, now_ms() / 1000],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )?;
            Ok(AccountStats {
                container_count: container_count as u64,
                object_count: object_count as u64,
                bytes_used: bytes as u64,
                meta: match meta {
                    Some(m) => serde_json::from_str(&m)?,
                    None => BTreeMap::new(),
                },
            })
        })
        .await
    }

    /// Merges metadata into an account (empty values remove keys).
    pub async fn update_account_meta(
        &self,
        account: &str,
        updates: BTreeMap<String, String>,
    ) -> Result<(), StoreError> {
        let account = account.to_owned();
        self.with_db(move |db| {
            let tx = db.transaction()?;
            let meta: Option<String> = tx
                .query_row(
                    "SELECT meta FROM accounts WHERE account = ?1",
                    params![account],
                    |r| r.get(0),
                )
                .optional()?;
            let mut meta: BTreeMap<String, String> = match meta {
                Some(m) => serde_json::from_str(&m)?,
                None => BTreeMap::new(),
            };
            merge_meta(&mut meta, updates);
            tx.execute(
                "INSERT INTO accounts (account, meta) VALUES (?1, ?2)
                 ON CONFLICT(account) DO UPDATE SET meta = excluded.meta",
                params![account, serde_json::to_string(&meta)?],
            )?;
            tx.commit()?;
            Ok(())
        })
        .await
    }

    /// Lists containers of an account.
    pub async fn list_containers(
        &self,
        account: &str,
        q: ListQuery,
    ) -> Result<Vec<ContainerRecord>, StoreError> {
        let account = account.to_owned();
        self.with_read_db(move |db| {
            let mut stmt = db.prepare_cached(
                "SELECT c.name, c.meta, c.created_ms,
                   (SELECT COUNT(*) FROM objects o WHERE o.account = c.account AND o.container = c.name),
                   (SELECT COALESCE(SUM(size),0) FROM objects o WHERE o.account = c.account AND o.container = c.name)
                 FROM containers c WHERE c.account = ?1 AND c.name > ?2
                   AND c.name >= ?3 AND substr(c.name, 1, length(?3)) = ?3
                   AND (?4 IS NULL OR c.name < ?4)
                 ORDER BY c.name LIMIT ?5",
            )?;
            let rows = stmt.query_map(
                params![account, q.marker, q.prefix, q.end_marker, q.limit as i64],
                |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, i64>(2)?,
                        r.get::<_, i64>(3)?,
                        r.get::<_, i64>(4)?,
                    ))
                },
            )?;
            let mut out = Vec::new();
            for row in rows {
                let (name, meta, created_ms, count, bytes) = row?;
                out.push(ContainerRecord {
                    name,
                    meta: serde_json::from_str(&meta)?,
                    created_ms,
                    object_count: count as u64,
                    bytes_used: bytes as u64,
                });
            }
            Ok(out)
        })
        .await
    }

    // ---- containers ----

    /// Creates a container or merges metadata into an existing one; true if created.
    pub async fn put_container(
        &self,
        account: &str,
        name: &str,
        meta: BTreeMap<String, String>,
    ) -> Result<bool, StoreError> {
        let (account, name) = (account.to_owned(), name.to_owned());
        self.with_db(move |db| {
            let tx = db.transaction()?;
            let existing = read_container_meta(&tx, &account, &name)?;
            let created = existing.is_none();
            let mut current = existing.unwrap_or_default();
            merge_meta(&mut current, meta);
            tx.execute(
                "INSERT INTO containers (account, name, meta, created_ms) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT(account, name) DO UPDATE SET meta = excluded.meta",
                params![account, name, serde_json::to_string(&current)?, now_ms()],
            )?;
            tx.commit()?;
            Ok(created)
        })
        .await
    }

    /// Merges metadata into an existing container (empty values remove keys), reading and
    /// writing in one transaction: a container deleted meanwhile is not brought back, and
    /// concurrent updates of other keys are kept. Errs with `NoContainer` if it is absent.
    pub async fn post_container(
        &self,
        account: &str,
        name: &str,
        meta: BTreeMap<String, String>,
    ) -> Result<(), StoreError> {
        let (account, name) = (account.to_owned(), name.to_owned());
        self.with_db(move |db| {
            let tx = db.transaction()?;
            let Some(mut current) = read_container_meta(&tx, &account, &name)? else {
                return Err(StoreError::NoContainer);
            };
            merge_meta(&mut current, meta);
            tx.execute(
                "UPDATE containers SET meta = ?3 WHERE account = ?1 AND name = ?2",
                params![account, name, serde_json::to_string(&current)?],
            )?;
            tx.commit()?;
            Ok(())
        })
        .await
    }

    /// A container's metadata (no statistics: one index lookup), if it exists.
    pub async fn container_meta(
        &self,
        account: &str,
        name: &str,
    ) -> Result<Option<BTreeMap<String, String>>, StoreError> {
        let (account, name) = (account.to_owned(), name.to_owned());
        self.with_read_db(move |db| read_container_meta(db, &account, &name))
            .await
    }

    /// A container with its statistics, if it exists.
    pub async fn get_container(
        &self,
        account: &str,
        name: &str,
    ) -> Result<Option<ContainerRecord>, StoreError> {
        let (account, name) = (account.to_owned(), name.to_owned());
        self.with_read_db(move |db| {
            let row: Option<(String, i64)> = db
                .query_row(
                    "SELECT meta, created_ms FROM containers WHERE account = ?1 AND name = ?2",
                    params![account, name],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()?;
            let Some((meta, created_ms)) = row else {
                return Ok(None);
            };
            let (count, bytes): (i64, i64) = db.query_row(
                "SELECT COUNT(*), COALESCE(SUM(size), 0) FROM objects
                 WHERE account = ?1 AND container = ?2 AND (delete_at IS NULL OR delete_at > ?3)",
                params![account, name, now_ms() / 1000],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )?;
            Ok(Some(ContainerRecord {
                name,
                meta: serde_json::from_str(&meta)?,
                created_ms,
                object_count: count as u64,
                bytes_used: bytes as u64,
            }))
        })
        .await
    }

    /// Deletes an empty container; false if it did not exist.
    pub async fn delete_container(&self, account: &str, name: &str) -> Result<bool, StoreError> {
        let (account, name) = (account.to_owned(), name.to_owned());
        self.with_db(move |db| {
            let tx = db.transaction()?;
            let live: i64 = tx.query_row(
                "SELECT COUNT(*) FROM objects WHERE account = ?1 AND container = ?2
                 AND (delete_at IS NULL OR delete_at > ?3)",
                params![account, name, now_ms() / 1000],
                |r| r.get(0),
            )?;
            if live > 0 {
                return Err(StoreError::NotEmpty);
            }
            let n = tx.execute(
                "DELETE FROM containers WHERE account = ?1 AND name = ?2",
                params![account, name],
            )?;
            tx.commit()?;
            Ok(n > 0)
        })
        .await
    }

    // ---- objects ----

    /// Looks an object up; expired objects are reported absent.
    pub async fn get_object(
        &self,
        account: &str,
        container: &str,
        name: &str,
    ) -> Result<Option<ObjectRecord>, StoreError> {
        let (account, container, name) =
            (account.to_owned(), container.to_owned(), name.to_owned());
        self.with_read_db(move |db| {
            let mut stmt = db.prepare_cached(
                "SELECT name, size, etag, content_type, last_modified_ms, meta, delete_at, blobs, kind
                 FROM objects WHERE account = ?1 AND container = ?2 AND name = ?3",
            )?;
            let rec = stmt
                .query_row(params![account, container, name], row_to_raw)
                .optional()?;
            match rec {
                Some(raw) => {
                    let rec = raw.into_record()?;
                    if rec.delete_at.is_some_and(|t| t <= now_ms() / 1000) {
                        return Ok(None);
                    }
                    Ok(Some(rec))
                }
                None => Ok(None),
            }
        })
        .await
    }

    /// Stores an object record (its blobs already durable); returns the blobs it replaced.
    pub async fn put_object(
        &self,
        account: &str,
        container: &str,
        rec: ObjectRecord,
    ) -> Result<Vec<Blob>, StoreError> {
        self.put_object_versioned(account, container, rec, None)
            .await
    }

    /// [`put_object`](Store::put_object) into a versioned container: the content it
    /// replaces moves to `archive` (see [`version_name`]) in the same transaction.
    pub async fn put_object_versioned(
        &self,
        account: &str,
        container: &str,
        rec: ObjectRecord,
        archive: Option<String>,
    ) -> Result<Vec<Blob>, StoreError> {
        // Group commit: queue the write, then whoever next holds the index lock commits
        // every queued write in one transaction (one fsync for the lot).
        let (reply, done) = tokio::sync::oneshot::channel();
        self.inner.pending.lock().expect("queue lock").push(PutJob {
            account: account.to_owned(),
            container: container.to_owned(),
            rec,
            archive,
            reply,
        });
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.commit_pending()).await?;
        done.await.map_err(|_| StoreError::Io {
            op: "group commit",
            source: std::io::Error::other("the committing task went away"),
        })?
    }

    fn commit_pending(&self) {
        let mut db = self.inner.db.lock().expect("index lock");
        let jobs = std::mem::take(&mut *self.inner.pending.lock().expect("queue lock"));
        if jobs.is_empty() {
            return; // an earlier committer took ours along
        }
        let mut results = Vec::with_capacity(jobs.len());
        let outcome = (|| -> Result<(), rusqlite::Error> {
            let mut tx = db.transaction()?;
            for job in &jobs {
                let mut sp = tx.savepoint()?;
                let r = put_one(
                    &sp,
                    &job.account,
                    &job.container,
                    &job.rec,
                    job.archive.as_deref(),
                );
                if r.is_ok() {
                    sp.commit()?;
                } else {
                    sp.rollback()?;
                }
                results.push(r);
            }
            tx.commit()
        })();
        for (job, r) in jobs.into_iter().zip(
            results
                .into_iter()
                .map(Some)
                .chain(std::iter::repeat_with(|| None)),
        ) {
            let r = match (&outcome, r) {
                (Ok(()), Some(r)) => r,
                (Err(e), _) => Err(StoreError::Io {
                    op: "commit index transaction",
                    source: std::io::Error::other(e.to_string()),
                }),
                (Ok(()), None) => unreachable!("one result per job"),
            };
            let _ = job.reply.send(r);
        }
    }

    /// Replaces an object's user metadata (Swift POST); false if the object is absent.
    /// Read and write are one transaction, so a concurrent change to the record (an
    /// overwrite, S3 tags) is never undone by a stale copy.
    pub async fn post_object(
        &self,
        account: &str,
        container: &str,
        name: &str,
        meta: BTreeMap<String, String>,
        content_type: Option<String>,
        delete_at: Option<Option<i64>>,
    ) -> Result<bool, StoreError> {
        let (account, container, name) =
            (account.to_owned(), container.to_owned(), name.to_owned());
        self.with_db(move |db| {
            let tx = db.transaction()?;
            let Some((mut current, mut ct, mut expiry)) =
                live_meta(&tx, &account, &container, &name)?
            else {
                return Ok(false);
            };
            current.retain(|k, _| !k.starts_with("x-object-meta-"));
            current.extend(meta);
            if let Some(c) = content_type {
                ct = c;
            }
            if let Some(d) = delete_at {
                expiry = d;
            }
            tx.execute(
                "UPDATE objects SET meta = ?4, content_type = ?5, delete_at = ?6
                 WHERE account = ?1 AND container = ?2 AND name = ?3",
                params![
                    account,
                    container,
                    name,
                    serde_json::to_string(&current)?,
                    ct,
                    expiry
                ],
            )?;
            tx.commit()?;
            Ok(true)
        })
        .await
    }

    /// Sets (`Some`) or removes (`None`) one metadata entry of a live object, in one
    /// transaction, leaving its content, ETag and modification time alone (S3 object
    /// tags); false if the object is absent.
    pub async fn set_object_meta_entry(
        &self,
        account: &str,
        container: &str,
        name: &str,
        key: &str,
        value: Option<String>,
    ) -> Result<bool, StoreError> {
        let (account, container, name, key) = (
            account.to_owned(),
            container.to_owned(),
            name.to_owned(),
            key.to_owned(),
        );
        self.with_db(move |db| {
            let tx = db.transaction()?;
            let Some((mut meta, _, _)) = live_meta(&tx, &account, &container, &name)? else {
                return Ok(false);
            };
            let changed = match value {
                Some(v) => meta.insert(key, v.clone()).as_ref() != Some(&v),
                None => meta.remove(&key).is_some(),
            };
            if changed {
                tx.execute(
                    "UPDATE objects SET meta = ?4
                     WHERE account = ?1 AND container = ?2 AND name = ?3",
                    params![account, container, name, serde_json::to_string(&meta)?],
                )?;
                tx.commit()?;
            }
            Ok(true)
        })
        .await
    }

    /// Deletes an object and its blob files; returns its record if it existed.
    pub async fn delete_object(
        &self,
        account: &str,
        container: &str,
        name: &str,
    ) -> Result<Option<ObjectRecord>, StoreError> {
        let (account, container, name) =
            (account.to_owned(), container.to_owned(), name.to_owned());
        let rec = self
            .with_db(move |db| {
                let tx = db.transaction()?;
                let rec = tx
                    .query_row(
                        "SELECT name, size, etag, content_type, last_modified_ms, meta, delete_at, blobs, kind
                         FROM objects WHERE account = ?1 AND container = ?2 AND name = ?3",
                        params![account, container, name],
                        row_to_raw,
                    )
                    .optional()?;
                tx.execute(
                    "DELETE FROM objects WHERE account = ?1 AND container = ?2 AND name = ?3",
                    params![account, container, name],
                )?;
                tx.commit()?;
                rec.map(RawRecord::into_record).transpose()
            })
            .await?;
        if let Some(r) = &rec {
            self.remove_blobs(r.blobs.clone()).await;
            if r.delete_at.is_some_and(|t| t <= now_ms() / 1000) {
                return Ok(None);
            }
        }
        Ok(rec)
    }

    /// Deletes an object of a versioned container, in one transaction. `history`
    /// (`X-History-Location`): the current content moves to `archive`; true if there was
    /// one. Otherwise (`X-Versions-Location`, a stack): the current content is deleted and
    /// the newest archived version, if any, moves back in its place; true if either existed.
    pub async fn delete_object_versioned(
        &self,
        account: &str,
        container: &str,
        name: &str,
        archive: &str,
        history: bool,
    ) -> Result<bool, StoreError> {
        let (account, container, name, archive) = (
            account.to_owned(),
            container.to_owned(),
            name.to_owned(),
            archive.to_owned(),
        );
        let (found, freed) = self
            .with_db(move |db| {
                let tx = db.transaction()?;
                let (found, freed) = if history {
                    match archive_current(&tx, &account, &container, &name, &archive)? {
                        Some(displaced) => (true, displaced),
                        None => (false, Vec::new()),
                    }
                } else {
                    let current = take_blobs(&tx, &account, &container, &name)?;
                    let existed = tx.execute(
                        "DELETE FROM objects WHERE account = ?1 AND container = ?2 AND name = ?3",
                        params![account, container, name],
                    )? > 0;
                    let prefix = version_prefix(&name);
                    let newest: Option<String> = tx
                        .query_row(
                            "SELECT name FROM objects WHERE account = ?1 AND container = ?2
                               AND name > ?3 AND substr(name, 1, length(?3)) = ?3
                             ORDER BY name DESC LIMIT 1",
                            params![account, archive, prefix],
                            |r| r.get(0),
                        )
                        .optional()?;
                    let restored = match newest {
                        Some(v) => move_record(&tx, &account, (&archive, &v), (&container, &name))?
                            .is_some(),
                        None => false,
                    };
                    (existed || restored, current)
                };
                tx.commit()?;
                Ok((found, freed))
            })
            .await?;
        self.remove_blobs(freed).await;
        Ok(found)
    }

    /// Lists a container's objects, with prefix/delimiter roll-up.
    pub async fn list_objects(
        &self,
        account: &str,
        container: &str,
        q: ListQuery,
    ) -> Result<Vec<Entry>, StoreError> {
        let (account, container) = (account.to_owned(), container.to_owned());
        self.with_read_db(move |db| {
            let now = now_ms() / 1000;
            let mut out = Vec::new();
            let mut after = q.marker.clone();
            let mut inclusive_from: Option<String> = None;
            let batch = (q.limit.max(1) + 1).min(10_000) as i64;
            let mut stmt = db.prepare_cached(
                "SELECT name, size, etag, content_type, last_modified_ms, meta, delete_at, blobs, kind
                 FROM objects WHERE account = ?1 AND container = ?2
                   AND name > ?3 AND (?4 IS NULL OR name >= ?4)
                   AND name >= ?5 AND substr(name, 1, length(?5)) = ?5
                   AND (?6 IS NULL OR name < ?6)
                   AND (delete_at IS NULL OR delete_at > ?7)
                 ORDER BY name LIMIT ?8",
            )?;
            'outer: loop {
                let rows: Vec<RawRecord> = stmt
                    .query_map(
                        params![
                            account,
                            container,
                            after,
                            inclusive_from,
                            q.prefix,
                            q.end_marker,
                            now,
                            batch
                        ],
                        row_to_raw,
                    )?
                    .collect::<Result<_, _>>()?;
                if rows.is_empty() {
                    break;
                }
                let n = rows.len();
                for raw in rows {
                    if out.len() >= q.limit {
                        break 'outer;
                    }
                    let name = raw.name.clone();
                    if let Some(d) = q.delimiter.as_deref().filter(|d| !d.is_empty())
                        && let Some(pos) = name[q.prefix.len()..].find(d)
                    {
                        let sub = name[..q.prefix.len() + pos + d.len()].to_owned();
                        if sub != q.marker {
                            out.push(Entry::Subdir(sub.clone()));
                        }
                        // Skip every name under this subdir.
                        after = sub.clone();
                        inclusive_from = Some(successor(&sub));
                        continue 'outer;
                    }
                    after = name;
                    out.push(Entry::Object(raw.into_record()?));
                }
                if (n as i64) < batch {
                    break;
                }
            }
            Ok(out)
        })
        .await
    }

    /// Removes objects whose X-Delete-At has passed; returns how many.
    pub async fn expire(&self) -> Result<usize, StoreError> {
        let expired = self
            .with_db(move |db| {
                let tx = db.transaction()?;
                let now = now_ms() / 1000;
                let blobs: Vec<String> = {
                    let mut stmt = tx.prepare(
                        "SELECT blobs FROM objects WHERE delete_at IS NOT NULL AND delete_at <= ?1",
                    )?;
                    stmt.query_map(params![now], |r| r.get(0))?
                        .collect::<Result<_, _>>()?
                };
                tx.execute(
                    "DELETE FROM objects WHERE delete_at IS NOT NULL AND delete_at <= ?1",
                    params![now],
                )?;
                tx.commit()?;
                let mut out = Vec::new();
                for b in blobs {
                    out.push(serde_json::from_str::<Vec<Blob>>(&b)?);
                }
                Ok(out)
            })
            .await?;
        let n = expired.len();
        for b in expired {
            self.remove_blobs(b).await;
        }
        Ok(n)
    }

    /// Every blob the index references (for the auditor).
    pub async fn all_blobs(&self) -> Result<Vec<Blob>, StoreError> {
        self.with_read_db(move |db| {
            let mut stmt = db.prepare("SELECT blobs FROM objects")?;
            let rows: Vec<String> = stmt
                .query_map([], |r| r.get(0))?
                .collect::<Result<_, _>>()?;
            let mut out = Vec::new();
            for r in rows {
                out.extend(serde_json::from_str::<Vec<Blob>>(&r)?);
            }
            Ok(out)
        })
        .await
    }

    // ---- multipart uploads ----

    /// Records a new multipart upload.
    pub async fn create_upload(&self, account: &str, up: Upload) -> Result<(), StoreError> {
        let account = account.to_owned();
        self.with_db(move |db| {
            db.execute(
                "INSERT INTO uploads (id, account, container, name, content_type, meta, created_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![
                    up.id,
                    account,
                    up.container,
                    up.name,
                    up.content_type,
                    serde_json::to_string(&up.meta)?,
                    now_ms()
                ],
            )?;
            Ok(())
        })
        .await
    }

    /// In-progress uploads into a container: (key, upload id, initiated ms), by key.
    pub async fn list_uploads(
        &self,
        account: &str,
        container: &str,
    ) -> Result<Vec<(String, String, i64)>, StoreError> {
        let (account, container) = (account.to_owned(), container.to_owned());
        self.with_read_db(move |db| {
            let mut stmt = db.prepare(
                "SELECT name, id, created_ms FROM uploads WHERE account = ?1 AND container = ?2
                 ORDER BY name, created_ms LIMIT 1000",
            )?;
            let rows = stmt
                .query_map(params![account, container], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                })?
                .collect::<Result<_, _>>()?;
            Ok(rows)
        })
        .await
    }

    /// Finds an upload of this account.
    pub async fn get_upload(&self, account: &str, id: &str) -> Result<Upload, StoreError> {
        let (account, id) = (account.to_owned(), id.to_owned());
        self.with_db(move |db| {
            let row = db
                .query_row(
                    "SELECT container, name, content_type, meta FROM uploads
                     WHERE id = ?1 AND account = ?2",
                    params![id, account],
                    |r| {
                        Ok((
                            r.get::<_, String>(0)?,
                            r.get::<_, String>(1)?,
                            r.get::<_, String>(2)?,
                            r.get::<_, String>(3)?,
                        ))
                    },
                )
                .optional()?;
            let (container, name, content_type, meta) = row.ok_or(StoreError::NoUpload)?;
            Ok(Upload {
                id,
                container,
                name,
                content_type,
                meta: serde_json::from_str(&meta)?,
            })
        })
        .await
    }

    /// Records a part (its blob durable); returns the blob it replaced, if any.
    pub async fn put_part(
        &self,
        upload_id: &str,
        number: u32,
        blob: Blob,
    ) -> Result<Option<Blob>, StoreError> {
        let upload_id = upload_id.to_owned();
        self.with_db(move |db| {
            let tx = db.transaction()?;
            let old: Option<String> = tx
                .query_row(
                    "SELECT blob FROM parts WHERE upload_id = ?1 AND number = ?2",
                    params![upload_id, number],
                    |r| r.get(0),
                )
                .optional()?;
            insert_inline(&tx, std::slice::from_ref(&blob))?;
            tx.execute(
                "INSERT INTO parts (upload_id, number, blob) VALUES (?1, ?2, ?3)
                 ON CONFLICT(upload_id, number) DO UPDATE SET blob = excluded.blob",
                params![upload_id, number, serde_json::to_string(&blob)?],
            )?;
            tx.commit()?;
            Ok(old.map(|o| serde_json::from_str(&o)).transpose()?)
        })
        .await
    }

    /// The parts of an upload, by number.
    pub async fn parts(&self, upload_id: &str) -> Result<BTreeMap<u32, Blob>, StoreError> {
        let upload_id = upload_id.to_owned();
        self.with_db(move |db| {
            let mut stmt = db.prepare("SELECT number, blob FROM parts WHERE upload_id = ?1")?;
            let rows: Vec<(u32, String)> = stmt
                .query_map(params![upload_id], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<Result<_, _>>()?;
            let mut out = BTreeMap::new();
            for (n, b) in rows {
                out.insert(n, serde_json::from_str(&b)?);
            }
            Ok(out)
        })
        .await
    }

    /// Completes an upload: stores the object and forgets the upload, atomically.
    /// Returns blobs no longer referenced (unused parts and a replaced object's).
    pub async fn complete_upload(
        &self,
        account: &str,
        upload_id: &str,
        rec: ObjectRecord,
        container: &str,
    ) -> Result<Vec<Blob>, StoreError> {
        let (account, upload_id, container) = (
            account.to_owned(),
            upload_id.to_owned(),
            container.to_owned(),
        );
        self.with_db(move |db| {
            let tx = db.transaction()?;
            let mut unused: Vec<Blob> = {
                let mut stmt = tx.prepare("SELECT blob FROM parts WHERE upload_id = ?1")?;
                let rows: Vec<String> = stmt
                    .query_map(params![upload_id], |r| r.get(0))?
                    .collect::<Result<_, _>>()?;
                let mut v = Vec::new();
                for r in rows {
                    let b: Blob = serde_json::from_str(&r)?;
                    if !rec.blobs.contains(&b) {
                        v.push(b);
                    }
                }
                v
            };
            unused.extend(take_blobs(&tx, &account, &container, &rec.name)?);
            tx.execute(
                "INSERT OR REPLACE INTO objects (account, container, name, size, etag, content_type,
                   last_modified_ms, meta, delete_at, blobs, kind)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
                params![
                    account,
                    container,
                    rec.name,
                    rec.size as i64,
                    rec.etag,
                    rec.content_type,
                    rec.last_modified_ms,
                    serde_json::to_string(&rec.meta)?,
                    rec.delete_at,
                    serde_json::to_string(&rec.blobs)?,
                    serde_json::to_string(&rec.kind)?,
                ],
            )?;
            tx.execute("DELETE FROM parts WHERE upload_id = ?1", params![upload_id])?;
            tx.execute("DELETE FROM uploads WHERE id = ?1", params![upload_id])?;
            tx.commit()?;
            Ok(unused)
        })
        .await
    }

    /// Aborts an upload; returns its part blobs for removal.
    pub async fn abort_upload(
        &self,
        account: &str,
        upload_id: &str,
    ) -> Result<Vec<Blob>, StoreError> {
        self.get_upload(account, upload_id).await?;
        let parts: Vec<Blob> = self.parts(upload_id).await?.into_values().collect();
        let upload_id = upload_id.to_owned();
        self.with_db(move |db| {
            let tx = db.transaction()?;
            tx.execute("DELETE FROM parts WHERE upload_id = ?1", params![upload_id])?;
            tx.execute("DELETE FROM uploads WHERE id = ?1", params![upload_id])?;
            tx.commit()?;
            Ok(())
        })
        .await?;
        Ok(parts)
    }
}

/// The smallest string greater than every string starting with `s`.
fn successor(s: &str) -> String {
    let mut chars: Vec<char> = s.chars().collect();
    while let Some(c) = chars.pop() {
        if let Some(next) = char::from_u32(c as u32 + 1) {
            chars.push(next);
            return chars.into_iter().collect();
        }
    }
    String::from(char::MAX)
}

fn take_blobs(
    tx: &Connection,
    account: &str,
    container: &str,
    name: &str,
) -> Result<Vec<Blob>, StoreError> {
    let old: Option<String> = tx
        .query_row(
            "SELECT blobs FROM objects WHERE account = ?1 AND container = ?2 AND name = ?3",
            params![account, container, name],
            |r| r.get(0),
        )
        .optional()?;
    Ok(match old {
        Some(b) => serde_json::from_str(&b)?,
        None => Vec::new(),
    })
}

/// The metadata, content type and expiry of a live (not expired) object, read in the
/// caller's transaction.
type LiveMeta = (BTreeMap<String, String>, String, Option<i64>);

/// A container's metadata as the index holds it, if the container exists.
fn read_container_meta(
    db: &Connection,
    account: &str,
    name: &str,
) -> Result<Option<BTreeMap<String, String>>, StoreError> {
    let meta: Option<String> = db
        .query_row(
            "SELECT meta FROM containers WHERE account = ?1 AND name = ?2",
            params![account, name],
            |r| r.get(0),
        )
        .optional()?;
    Ok(meta.map(|m| serde_json::from_str(&m)).transpose()?)
}

fn live_meta(
    tx: &Connection,
    account: &str,
    container: &str,
    name: &str,
) -> Result<Option<LiveMeta>, StoreError> {
    let row: Option<(String, String, Option<i64>)> = tx
        .query_row(
            "SELECT meta, content_type, delete_at FROM objects
             WHERE account = ?1 AND container = ?2 AND name = ?3",
            params![account, container, name],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .optional()?;
    match row {
        Some((_, _, Some(t))) if t <= now_ms() / 1000 => Ok(None),
        Some((meta, ct, delete_at)) => Ok(Some((serde_json::from_str(&meta)?, ct, delete_at))),
        None => Ok(None),
    }
}

/// Stores the content of new inline blobs, in the caller's transaction.
fn insert_inline(tx: &Connection, blobs: &[Blob]) -> Result<(), StoreError> {
    for b in blobs {
        if let (true, Some(d)) = (b.inline, &b.data) {
            tx.execute(
                "INSERT OR REPLACE INTO inline_blobs (id, data) VALUES (?1, ?2)",
                params![b.id, d.as_ref()],
            )?;
        }
    }
    Ok(())
}

fn merge_meta(into: &mut BTreeMap<String, String>, updates: BTreeMap<String, String>) {
    for (k, v) in updates {
        if v.is_empty() {
            into.remove(&k);
        } else {
            into.insert(k, v);
        }
    }
}

struct RawRecord {
    name: String,
    size: i64,
    etag: String,
    content_type: String,
    last_modified_ms: i64,
    meta: String,
    delete_at: Option<i64>,
    blobs: String,
    kind: String,
}

fn row_to_raw(r: &rusqlite::Row<'_>) -> rusqlite::Result<RawRecord> {
    Ok(RawRecord {
        name: r.get(0)?,
        size: r.get(1)?,
        etag: r.get(2)?,
        content_type: r.get(3)?,
        last_modified_ms: r.get(4)?,
        meta: r.get(5)?,
        delete_at: r.get(6)?,
        blobs: r.get(7)?,
        kind: r.get(8)?,
    })
}

impl RawRecord {
    fn into_record(self) -> Result<ObjectRecord, StoreError> {
        Ok(ObjectRecord {
            name: self.name,
            size: self.size as u64,
            etag: self.etag,
            content_type: self.content_type,
            last_modified_ms: self.last_modified_ms,
            meta: serde_json::from_str(&self.meta)?,
            delete_at: self.delete_at,
            blobs: serde_json::from_str(&self.blobs)?,
            kind: serde_json::from_str(&self.kind)?,
        })
    }
}

/// Bytes gathered before a piece is handed to the hashing and writing threads.
const WRITE_BUFFER: usize = 1 << 20;

/// Pieces queued for each of the two threads of one upload (bounds its memory: the
/// pieces are shared, so at most this many MiB are held).
const PIPELINE_DEPTH: usize = 16;

/// Bytes written between `fdatasync`s of a buffered temporary file, so that the final
/// fsync has little left to flush and the disk works while the body is still arriving.
/// The syncs run on a thread of their own: the writer never waits for one.
const SYNC_EVERY: u64 = 32 << 20;

/// The MD5 of a body streamed to a file: OpenSSL's, whose assembly hashes about a fifth
/// more bytes per CPU-second than the `md-5` crate on x86-64. One stream's MD5 is
/// sequential, so this rate is the ceiling of a large PUT.
pub struct BodyMd5(openssl::hash::Hasher);

impl BodyMd5 {
    /// A new digest.
    pub fn new() -> Result<BodyMd5, StoreError> {
        Ok(BodyMd5(openssl::hash::Hasher::new(
            openssl::hash::MessageDigest::md5(),
        )?))
    }

    /// Hashes more bytes.
    pub fn update(&mut self, data: &[u8]) -> Result<(), StoreError> {
        Ok(self.0.update(data)?)
    }

    /// The digest in lowercase hex.
    pub fn finish_hex(mut self) -> Result<String, StoreError> {
        Ok(hex::encode(self.0.finish()?))
    }
}

/// A piece of a body: the received buffers themselves (hyper's frames), not a copy.
type Piece = Arc<[bytes::Bytes]>;

/// The threads of an upload that outgrew [`WRITE_BUFFER`]: one computes the MD5, the
/// other the CRC32 and writes the temporary file (see [`Sink`]). Each piece is shared
/// between the two, not copied.
struct Pipeline {
    to_hasher: tokio::sync::mpsc::Sender<Piece>,
    to_writer: tokio::sync::mpsc::Sender<Piece>,
    hasher: tokio::task::JoinHandle<Result<BodyMd5, StoreError>>,
    writer: tokio::task::JoinHandle<Result<(std::fs::File, u32), StoreError>>,
}

impl Pipeline {
    fn start(sink: Sink) -> Result<Pipeline, StoreError> {
        let (to_hasher, mut hasher_rx) = tokio::sync::mpsc::channel::<Piece>(PIPELINE_DEPTH);
        let (to_writer, writer_rx) = tokio::sync::mpsc::channel::<Piece>(PIPELINE_DEPTH);
        let mut md5 = BodyMd5::new()?;
        let hasher = tokio::task::spawn_blocking(move || {
            while let Some(piece) = hasher_rx.blocking_recv() {
                for b in piece.iter() {
                    md5.update(b)?;
                }
            }
            Ok(md5)
        });
        let writer = match sink {
            Sink::Direct { file, path } => {
                tokio::task::spawn_blocking(move || write_direct(file, &path, writer_rx))
            }
            Sink::Buffered(file) => {
                let (to_syncer, syncer) = start_syncer(&file)?;
                tokio::task::spawn_blocking(move || {
                    write_buffered(file, writer_rx, to_syncer, syncer)
                })
            }
        };
        Ok(Pipeline {
            to_hasher,
            to_writer,
            hasher,
            writer,
        })
    }

    /// Hands a piece to both threads; false if one of them has stopped (a write failed).
    async fn send(&mut self, piece: Piece) -> bool {
        let hashed = self.to_hasher.send(piece.clone()).await.is_ok();
        hashed && self.to_writer.send(piece).await.is_ok()
    }

    /// Waits for the threads to finish the pieces sent: the file, MD5 and CRC32.
    async fn stop(self) -> Result<(std::fs::File, String, u32), StoreError> {
        let Pipeline {
            to_hasher,
            to_writer,
            hasher,
            writer,
        } = self;
        drop((to_hasher, to_writer));
        let (file, crc32) = writer.await??;
        let md5 = hasher.await??;
        Ok((file, md5.finish_hex()?, crc32))
    }
}

/// Where the writer thread puts a body.
enum Sink {
    /// A temporary file opened with `O_DIRECT`: the body goes from an aligned buffer to
    /// the device without being copied into the page cache (a copy that, on this kind of
    /// VM, costs more CPU per byte than the MD5).
    Direct { file: std::fs::File, path: PathBuf },
    /// A plain temporary file, for filesystems without direct I/O (tmpfs).
    Buffered(std::fs::File),
}

impl Sink {
    /// Creates the temporary file, with direct I/O where the filesystem has it.
    fn create(path: &Path) -> Result<Sink, StoreError> {
        use std::os::unix::fs::OpenOptionsExt;
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create(true).truncate(true);
        match opts.clone().custom_flags(libc::O_DIRECT).open(path) {
            Ok(file) => Ok(Sink::Direct {
                file,
                path: path.to_owned(),
            }),
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => Ok(Sink::Buffered(
                opts.open(path).map_err(io("create temp file"))?,
            )),
            Err(e) => Err(io("create temp file")(e)),
        }
    }
}

/// Alignment of direct writes (buffer address, length and file offset): the largest
/// logical block size of current devices.
const DIRECT_ALIGN: usize = 4096;

/// Bytes per direct write.
const DIRECT_CHUNK: usize = 4 << 20;

/// The writer thread of a direct-I/O upload: pieces are copied into an aligned buffer
/// that is written out whenever full; the tail that is not a whole block is written
/// through a second, buffered handle, which is the file returned for the final fsync.
fn write_direct(
    mut file: std::fs::File,
    path: &Path,
    mut rx: tokio::sync::mpsc::Receiver<Piece>,
) -> Result<(std::fs::File, u32), StoreError> {
    use std::io::Write;
    use std::os::unix::fs::FileExt;
    let mut crc32 = crc32fast::Hasher::new();
    let mut raw = vec![0u8; DIRECT_CHUNK + DIRECT_ALIGN];
    let start = raw.as_ptr().align_offset(DIRECT_ALIGN);
    let stage = &mut raw[start..start + DIRECT_CHUNK];
    let mut filled = 0;
    let mut written = 0u64;
    while let Some(piece) = rx.blocking_recv() {
        for b in piece.iter() {
            crc32.update(b);
            let mut rest = &b[..];
            while !rest.is_empty() {
                let n = rest.len().min(DIRECT_CHUNK - filled);
                stage[filled..filled + n].copy_from_slice(&rest[..n]);
                filled += n;
                rest = &rest[n..];
                if filled == DIRECT_CHUNK {
                    file.write_all(stage).map_err(io("write temp file"))?;
                    written += DIRECT_CHUNK as u64;
                    filled = 0;
                }
            }
        }
    }
    let whole = filled / DIRECT_ALIGN * DIRECT_ALIGN;
    file.write_all(&stage[..whole])
        .map_err(io("write temp file"))?;
    written += whole as u64;
    drop(file);
    let tail = std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(io("reopen temp file"))?;
    tail.write_all_at(&stage[whole..filled], written)
        .map_err(io("write temp file"))?;
    Ok((tail, crc32.finalize()))
}

/// The sync thread of a buffered upload.
type SyncThread = std::thread::JoinHandle<Result<(), StoreError>>;

/// Starts the thread that `fdatasync`s a buffered upload's file while the writer goes
/// on; a request made while one sync runs is merged into the next.
fn start_syncer(
    file: &std::fs::File,
) -> Result<(std::sync::mpsc::SyncSender<()>, SyncThread), StoreError> {
    let syncing = file.try_clone().map_err(io("clone temp file handle"))?;
    let (to_syncer, syncer_rx) = std::sync::mpsc::sync_channel::<()>(1);
    let syncer = std::thread::Builder::new()
        .name("objectd-sync".into())
        .spawn(move || -> Result<(), StoreError> {
            while syncer_rx.recv().is_ok() {
                syncing.sync_data().map_err(io("fsync temp file"))?;
            }
            Ok(())
        })
        .map_err(io("start the sync thread"))?;
    Ok((to_syncer, syncer))
}

/// The writer thread of a buffered upload: writes each piece and has the syncer flush
/// every [`SYNC_EVERY`] bytes, so that the final fsync has little left.
fn write_buffered(
    mut file: std::fs::File,
    mut rx: tokio::sync::mpsc::Receiver<Piece>,
    to_syncer: std::sync::mpsc::SyncSender<()>,
    syncer: SyncThread,
) -> Result<(std::fs::File, u32), StoreError> {
    use std::io::Write;
    let mut crc32 = crc32fast::Hasher::new();
    let mut unsynced = 0u64;
    let mut syncer_gone = false;
    while let Some(piece) = rx.blocking_recv() {
        for b in piece.iter() {
            crc32.update(b);
            file.write_all(b).map_err(io("write temp file"))?;
            unsynced += b.len() as u64;
        }
        if unsynced >= SYNC_EVERY && !syncer_gone {
            match to_syncer.try_send(()) {
                Ok(()) => unsynced = 0,
                Err(std::sync::mpsc::TrySendError::Full(())) => {}
                Err(std::sync::mpsc::TrySendError::Disconnected(())) => syncer_gone = true,
            }
        }
    }
    drop(to_syncer);
    // A failed periodic sync is this file's failure (its error is reported once per open
    // file, so the final fsync might not see it again).
    syncer.join().map_err(|_| StoreError::Io {
        op: "fsync temp file",
        source: std::io::Error::other("the sync thread panicked"),
    })??;
    Ok((file, crc32.finalize()))
}

/// Streams one body to disk: the received buffers are gathered (by reference) into pieces
/// of about 1 MiB, and each piece goes to a [`Pipeline`] (MD5 on one thread, CRC32 and
/// the file write, direct where the filesystem allows, on another) while the next one
/// arrives, so receiving, hashing and writing overlap. A body that ends within [`INLINE_MAX`] never touches the filesystem.
/// [`BlobWriter::finish`] makes it durable; dropped unfinished, the writer removes its
/// temporary file.
pub struct BlobWriter {
    store: Store,
    id: String,
    tmp: Option<PathBuf>,
    pipeline: Option<Pipeline>,
    buf: Vec<bytes::Bytes>,
    buffered: usize,
    size: u64,
}

impl BlobWriter {
    /// Appends a copy of `data`.
    pub async fn write(&mut self, data: &[u8]) -> Result<(), StoreError> {
        self.write_bytes(bytes::Bytes::copy_from_slice(data)).await
    }

    /// Appends a received buffer without copying it.
    pub async fn write_bytes(&mut self, data: bytes::Bytes) -> Result<(), StoreError> {
        if data.is_empty() {
            return Ok(());
        }
        self.size += data.len() as u64;
        self.buffered += data.len();
        self.buf.push(data);
        if self.buffered >= WRITE_BUFFER {
            self.buffered = 0;
            let piece: Piece = std::mem::take(&mut self.buf).into();
            self.send(piece).await?;
        }
        Ok(())
    }

    /// Sends a piece down the pipeline, starting it (on a new temp file) first if needed.
    async fn send(&mut self, piece: Piece) -> Result<(), StoreError> {
        if self.pipeline.is_none() {
            let tmp = self.tmp.clone().expect("writer not finished");
            let sink = tokio::task::spawn_blocking(move || Sink::create(&tmp)).await??;
            self.pipeline = Some(Pipeline::start(sink)?);
        }
        let p = self.pipeline.as_mut().expect("pipeline started");
        if p.send(piece).await {
            return Ok(());
        }
        let p = self.pipeline.take().expect("pipeline started");
        Err(p.stop().await.err().unwrap_or(StoreError::Io {
            op: "hash temp file",
            source: std::io::Error::other("the hashing thread stopped"),
        }))
    }

    /// Bytes written so far.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Makes the body durable: a small one becomes an inline blob (stored by the index
    /// commit that references it); a larger one is written out, fsync'd, renamed into place
    /// and its directory fsync'd.
    pub async fn finish(mut self) -> Result<Blob, StoreError> {
        let id = std::mem::take(&mut self.id);
        let rest = std::mem::take(&mut self.buf);
        if self.pipeline.is_none() && self.size <= INLINE_MAX {
            self.tmp = None;
            let data = bytes::Bytes::from(rest.concat());
            return Ok(Blob {
                id,
                size: self.size,
                md5: hex::encode(Md5::digest(&data)),
                crc32: Some(crc32fast::hash(&data)),
                inline: true,
                data: Some(data),
            });
        }
        if !rest.is_empty() {
            self.send(rest.into()).await?;
        }
        let pipeline = self
            .pipeline
            .take()
            .expect("a body over INLINE_MAX has a pipeline");
        let (file, md5, crc32) = pipeline.stop().await?;
        let tmp = self.tmp.clone().expect("writer not finished");
        let dest = self.store.blob_path(&id);
        tokio::task::spawn_blocking(move || -> Result<(), StoreError> {
            file.sync_all().map_err(io("fsync temp file"))?;
            drop(file);
            std::fs::rename(&tmp, &dest).map_err(io("rename blob into place"))?;
            fsync_dir(dest.parent().expect("blob path has a parent")).map_err(io("fsync blob dir"))
        })
        .await??;
        self.tmp = None;
        Ok(Blob {
            id,
            size: self.size,
            md5,
            crc32: Some(crc32),
            inline: false,
            data: None,
        })
    }
}

impl Drop for BlobWriter {
    fn drop(&mut self) {
        if let Some(tmp) = self.tmp.take() {
            let _ = std::fs::remove_file(tmp);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(name: &str, blob: Blob) -> ObjectRecord {
        ObjectRecord {
            name: name.into(),
            size: blob.size,
            etag: blob.md5.clone(),
            content_type: "application/octet-stream".into(),
            last_modified_ms: now_ms(),
            meta: BTreeMap::new(),
            delete_at: None,
            blobs: vec![blob],
            kind: Kind::Plain,
        }
    }

    async fn small_blob(store: &Store, body: &[u8]) -> Blob {
        let mut w = store.blob_writer().await.unwrap();
        w.write(body).await.unwrap();
        w.finish().await.unwrap()
    }

    #[tokio::test]
    async fn container_posts_merge_into_existing_containers_only() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let one = |k: &str, v: &str| BTreeMap::from([(k.to_owned(), v.to_owned())]);
        assert!(matches!(
            store.post_container("A", "c", one("x-a", "1")).await,
            Err(StoreError::NoContainer)
        ));
        assert_eq!(store.container_meta("A", "c").await.unwrap(), None);
        store
            .put_container("A", "c", one("x-a", "1"))
            .await
            .unwrap();
        store
            .post_container("A", "c", one("x-b", "2"))
            .await
            .unwrap();
        assert_eq!(
            store.container_meta("A", "c").await.unwrap().unwrap(),
            BTreeMap::from([("x-a".into(), "1".into()), ("x-b".into(), "2".into())])
        );
        store
            .post_container("A", "c", one("x-a", ""))
            .await
            .unwrap();
        assert_eq!(
            store.container_meta("A", "c").await.unwrap().unwrap(),
            one("x-b", "2")
        );
        // Gone with the container: a new one of the same name starts empty.
        assert!(store.delete_container("A", "c").await.unwrap());
        store
            .put_container("A", "c", BTreeMap::new())
            .await
            .unwrap();
        assert!(
            store
                .container_meta("A", "c")
                .await
                .unwrap()
                .unwrap()
                .is_empty()
        );
    }

    #[tokio::test]
    async fn a_metadata_entry_is_set_in_place_kept_by_swift_posts_and_dropped_by_overwrites() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store
            .put_container("A", "c", BTreeMap::new())
            .await
            .unwrap();
        let first = rec("o", small_blob(&store, b"one").await);
        let written = first.last_modified_ms;
        store.put_object("A", "c", first).await.unwrap();
        let key = "x-object-sysmeta-test";
        assert!(
            store
                .set_object_meta_entry("A", "c", "o", key, Some("v1".into()))
                .await
                .unwrap()
        );
        assert!(
            !store
                .set_object_meta_entry("A", "c", "missing", key, Some("v".into()))
                .await
                .unwrap()
        );
        // A Swift POST replaces user metadata only.
        let user = BTreeMap::from([("x-object-meta-a".to_owned(), "b".to_owned())]);
        assert!(
            store
                .post_object("A", "c", "o", user, None, None)
                .await
                .unwrap()
        );
        // The entry survives a reopen of the index; content and time are untouched.
        drop(store);
        let store = Store::open(dir.path()).unwrap();
        let got = store.get_object("A", "c", "o").await.unwrap().unwrap();
        assert_eq!(got.meta.get(key).map(String::as_str), Some("v1"));
        assert_eq!(
            got.meta.get("x-object-meta-a").map(String::as_str),
            Some("b")
        );
        assert_eq!(got.last_modified_ms, written);
        assert_eq!(got.etag, hex::encode(Md5::digest(b"one")));
        assert!(
            store
                .set_object_meta_entry("A", "c", "o", key, None)
                .await
                .unwrap()
        );
        assert!(
            !store
                .get_object("A", "c", "o")
                .await
                .unwrap()
                .unwrap()
                .meta
                .contains_key(key)
        );
        // An overwrite brings its own metadata: the old entry is gone.
        store
            .set_object_meta_entry("A", "c", "o", key, Some("v2".into()))
            .await
            .unwrap();
        store
            .put_object("A", "c", rec("o", small_blob(&store, b"two").await))
            .await
            .unwrap();
        let got = store.get_object("A", "c", "o").await.unwrap().unwrap();
        assert!(got.meta.is_empty(), "{:?}", got.meta);
        // An expired object is absent here too.
        let mut expired = rec("gone", small_blob(&store, b"x").await);
        expired.delete_at = Some(now_ms() / 1000 - 1);
        store.put_object("A", "c", expired).await.unwrap();
        assert!(
            !store
                .set_object_meta_entry("A", "c", "gone", key, Some("v".into()))
                .await
                .unwrap()
        );
    }

    #[tokio::test]
    async fn put_list_delete_with_delimiter() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        assert!(
            store
                .put_container("A", "c", BTreeMap::new())
                .await
                .unwrap()
        );
        assert!(
            !store
                .put_container("A", "c", BTreeMap::new())
                .await
                .unwrap()
        );
        for name in ["a/1", "a/2", "b", "c/x/y", "d"] {
            let mut w = store.blob_writer().await.unwrap();
            w.write(name.as_bytes()).await.unwrap();
            let blob = w.finish().await.unwrap();
            assert_eq!(blob.md5, hex::encode(Md5::digest(name.as_bytes())));
            assert!(blob.inline, "small bodies live in the index");
            store.put_object("A", "c", rec(name, blob)).await.unwrap();
        }
        let q = ListQuery {
            delimiter: Some("/".into()),
            limit: 100,
            ..Default::default()
        };
        let names: Vec<String> = store
            .list_objects("A", "c", q.clone())
            .await
            .unwrap()
            .into_iter()
            .map(|e| match e {
                Entry::Object(o) => o.name,
                Entry::Subdir(s) => s,
            })
            .collect();
        assert_eq!(names, ["a/", "b", "c/", "d"]);
        let limited = store
            .list_objects(
                "A",
                "c",
                ListQuery {
                    limit: 2,
                    marker: "a/".into(),
                    ..q
                },
            )
            .await
            .unwrap();
        assert_eq!(limited.len(), 2);
        assert!(matches!(&limited[0], Entry::Object(o) if o.name == "b"));
        let c = store.get_container("A", "c").await.unwrap().unwrap();
        assert_eq!(c.object_count, 5);
        assert!(matches!(
            store.delete_container("A", "c").await,
            Err(StoreError::NotEmpty)
        ));
        let gone = store.delete_object("A", "c", "b").await.unwrap().unwrap();
        assert!(store.read_range(&gone.blobs[0], 0, 1).await.is_err());
        assert!(store.get_object("A", "c", "b").await.unwrap().is_none());
    }

    #[tokio::test]
    async fn large_bodies_become_files_and_read_back_by_range() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let body: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        let mut w = store.blob_writer().await.unwrap();
        for c in body.chunks(70_000) {
            w.write(c).await.unwrap();
        }
        let blob = w.finish().await.unwrap();
        assert!(!blob.inline);
        assert_eq!(std::fs::read(store.blob_path(&blob.id)).unwrap(), body);
        let mid = store.read_range(&blob, 1_000_000, 1_000_010).await.unwrap();
        assert_eq!(&mid[..], &body[1_000_000..1_000_010]);
        assert_eq!(
            std::fs::read_dir(dir.path().join("tmp")).unwrap().count(),
            0
        );
    }

    /// Writes `body` in received-sized buffers into a store at `root` and checks the file,
    /// its MD5 and CRC32 against independent computations.
    async fn round_trip_large(root: &Path, body: &[u8]) {
        let store = Store::open(root).unwrap();
        let mut w = store.blob_writer().await.unwrap();
        for c in body.chunks(65_536 + 17) {
            w.write_bytes(bytes::Bytes::copy_from_slice(c))
                .await
                .unwrap();
        }
        let blob = w.finish().await.unwrap();
        assert_eq!(blob.size, body.len() as u64);
        assert_eq!(std::fs::read(store.blob_path(&blob.id)).unwrap(), body);
        assert_eq!(blob.md5, hex::encode(Md5::digest(body)));
        assert_eq!(blob.crc32, Some(crc32fast::hash(body)));
        assert_eq!(std::fs::read_dir(root.join("tmp")).unwrap().count(), 0);
    }

    #[tokio::test]
    async fn direct_writes_keep_whole_chunks_and_an_unaligned_tail() {
        // Three whole direct chunks, a partial one, and a tail that is not a whole block.
        let len = 3 * DIRECT_CHUNK + 5 * DIRECT_ALIGN + 123;
        let body: Vec<u8> = (0..len).map(|i| (i * 7 % 253) as u8).collect();
        let dir = tempfile::tempdir().unwrap();
        round_trip_large(dir.path(), &body).await;
    }

    #[tokio::test]
    async fn buffered_writes_where_the_filesystem_has_no_direct_io() {
        // The fallback sink, driven directly (tmpfs takes O_DIRECT on current kernels): more
        // than SYNC_EVERY bytes, so the sync thread runs while the writer goes on.
        let len = (SYNC_EVERY as usize) + 3 * WRITE_BUFFER + 99;
        let body: Vec<u8> = (0..len).map(|i| (i * 13 % 241) as u8).collect();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("buffered");
        let file = std::fs::File::create(&path).unwrap();
        let mut p = Pipeline::start(Sink::Buffered(file)).unwrap();
        for c in body.chunks(WRITE_BUFFER + 7) {
            let piece: Piece = c
                .chunks(65_536)
                .map(bytes::Bytes::copy_from_slice)
                .collect::<Vec<_>>()
                .into();
            assert!(p.send(piece).await);
        }
        let (file, md5, crc32) = p.stop().await.unwrap();
        file.sync_all().unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), body);
        assert_eq!(md5, hex::encode(Md5::digest(&body)));
        assert_eq!(crc32, crc32fast::hash(&body));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn group_commit_keeps_each_write_separate() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store
            .put_container("A", "c", BTreeMap::new())
            .await
            .unwrap();
        let mut tasks = Vec::new();
        for i in 0..40 {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                let mut w = store.blob_writer().await.unwrap();
                w.write(format!("body {i}").as_bytes()).await.unwrap();
                let blob = w.finish().await.unwrap();
                // Every fifth write targets a container that does not exist.
                let container = if i % 5 == 0 { "missing" } else { "c" };
                store
                    .put_object("A", container, rec(&format!("o{i:02}"), blob))
                    .await
            }));
        }
        let mut failed = 0;
        for (i, t) in tasks.into_iter().enumerate() {
            match t.await.unwrap() {
                Ok(_) => assert_ne!(i % 5, 0),
                Err(StoreError::NoContainer) => {
                    assert_eq!(i % 5, 0);
                    failed += 1;
                }
                Err(e) => panic!("{e}"),
            }
        }
        assert_eq!(failed, 8);
        let listed = store
            .list_objects(
                "A",
                "c",
                ListQuery {
                    limit: 100,
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        assert_eq!(listed.len(), 32);
        let o = store.get_object("A", "c", "o07").await.unwrap().unwrap();
        let body = store.read_range(&o.blobs[0], 0, o.size).await.unwrap();
        assert_eq!(&body[..], b"body 7");
    }

    #[tokio::test]
    async fn unfinished_writer_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut w = store.blob_writer().await.unwrap();
        w.write(&[1u8; 3 << 20]).await.unwrap();
        assert_eq!(
            std::fs::read_dir(dir.path().join("tmp")).unwrap().count(),
            1
        );
        drop(w);
        assert_eq!(
            std::fs::read_dir(dir.path().join("tmp")).unwrap().count(),
            0
        );
    }

    #[tokio::test]
    async fn open_sweeps_durable_but_unindexed_blobs() {
        let dir = tempfile::tempdir().unwrap();
        let (kept, orphan) = {
            let store = Store::open(dir.path()).unwrap();
            store
                .put_container("A", "c", BTreeMap::new())
                .await
                .unwrap();
            let mut w = store.blob_writer().await.unwrap();
            w.write(&[7u8; 100_000]).await.unwrap();
            let kept = w.finish().await.unwrap();
            assert!(!kept.inline);
            store
                .put_object("A", "c", rec("k", kept.clone()))
                .await
                .unwrap();
            // A writer that "crashed" after rename, before its index commit.
            let mut w = store.blob_writer().await.unwrap();
            w.write(&[8u8; 100_000]).await.unwrap();
            let orphan = w.finish().await.unwrap();
            (store.blob_path(&kept.id), store.blob_path(&orphan.id))
        };
        assert!(orphan.exists());
        let _store = Store::open(dir.path()).unwrap();
        assert!(kept.exists());
        assert!(!orphan.exists());
    }

    #[test]
    fn verifier_uses_crc32_or_falls_back_to_md5() {
        let data = b"hello";
        let mut b = Blob {
            id: "x".into(),
            size: 5,
            md5: hex::encode(Md5::digest(data)),
            crc32: Some(crc32fast::hash(data)),
            inline: false,
            data: None,
        };
        for crc in [Some(crc32fast::hash(data)), None] {
            b.crc32 = crc;
            let mut v = b.verifier();
            v.update(data);
            assert!(v.matches());
            let mut v = b.verifier();
            v.update(b"hellp");
            assert!(!v.matches());
        }
        // Records written before the CRC existed still parse.
        let old: Blob = serde_json::from_str(r#"{"id":"x","size":5,"md5":"m"}"#).unwrap();
        assert_eq!((old.crc32, old.inline), (None, false));
    }

    #[test]
    fn successor_skips_a_prefix() {
        assert_eq!(successor("a/"), "a0");
        assert!(successor("a/").as_str() > "a/zzz");
    }
}
