//! The volume manager: the one owner of the data directory and of running exports.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use super::sys;
use crate::metrics::VolumeStats;
use crate::qos::{QosLimits, Throttle};
use crate::vhost::backend::{BlockBackend, VolumeIo};
use crate::vhost::export::Export;

/// Sector size: volume sizes are multiples of it.
pub const SECTOR: u64 = 512;
/// Largest volume we create: 64 TiB.
pub const MAX_SIZE: u64 = 64 << 40;
/// Most queues an export may have.
pub const MAX_QUEUES: u16 = 16;

/// Errors of volume operations; the API maps each to a status code.
#[derive(Debug, thiserror::Error)]
pub enum ManagerError {
    /// No volume or snapshot with that id.
    #[error("no {kind} with id {id}")]
    NotFound {
        /// `volume` or `snapshot`.
        kind: &'static str,
        /// The id asked for.
        id: String,
    },
    /// The request is invalid.
    #[error("{0}")]
    Invalid(String),
    /// The operation conflicts with the volume's state.
    #[error("{0}")]
    Conflict(String),
    /// Reading the image source failed.
    #[error("read image source {source_desc}")]
    Source {
        /// What was being read.
        source_desc: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// A filesystem operation failed.
    #[error("{op} {path}")]
    Io {
        /// The operation.
        op: &'static str,
        /// The path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// Starting an export failed.
    #[error("export volume")]
    Export(#[source] crate::vhost::export::ExportError),
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> ManagerError + 'a {
    move |source| ManagerError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// Whether a record is a volume or a snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// A writable (or read-only) volume.
    Volume,
    /// A point-in-time copy of a volume.
    Snapshot,
}

/// How a snapshot or clone got its data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CopyMethod {
    /// Shared blocks, copy-on-write (instant, no space used).
    Reflink,
    /// A full copy: the filesystem cannot reflink.
    Copy,
}

/// The persisted record of a volume or snapshot.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// Unique id.
    pub id: String,
    /// Volume or snapshot.
    pub kind: Kind,
    /// Display name.
    pub name: String,
    /// Size in bytes.
    pub size: u64,
    /// Writes refused.
    pub read_only: bool,
    /// Seconds since the epoch at creation.
    pub created_at: u64,
    /// For snapshots: the volume they were taken of; for clones: the snapshot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_id: Option<String>,
    /// How the data was copied, for snapshots and clones.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub copy_method: Option<CopyMethod>,
    /// QoS limits.
    #[serde(default)]
    pub qos: QosLimits,
    /// The export, when the volume is being served.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub export: Option<ExportRecord>,
}

/// How a volume is exported.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportRecord {
    /// The vhost-user socket path.
    pub socket: PathBuf,
    /// Number of queues offered.
    pub num_queues: u16,
}

/// Where a new volume's data comes from.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub enum Source {
    /// A raw image file on this host.
    Path(PathBuf),
    /// A raw image at an `http://` URL.
    Url(String),
    /// A snapshot (a clone).
    SnapshotId(String),
}

/// Parameters of a new volume.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateVolume {
    /// Display name.
    #[serde(default)]
    pub name: Option<String>,
    /// Size in bytes; defaults to the source's size rounded up to a sector.
    #[serde(default)]
    pub size: Option<u64>,
    /// Where the data comes from; empty volume when absent.
    #[serde(default)]
    pub source: Option<Source>,
    /// Refuse writes.
    #[serde(default)]
    pub read_only: bool,
}

/// Opens a raw image stream for a source; `(reader, length if known, description)`.
pub type Opener =
    dyn Fn(&Source) -> Result<(Box<dyn Read + Send>, Option<u64>), ManagerError> + Send + Sync;

/// Settings of the manager.
#[derive(Debug, Clone)]
pub struct ManagerConfig {
    /// The data directory.
    pub data_dir: PathBuf,
    /// Queues an export gets unless the request says otherwise.
    pub default_queues: u16,
    /// Busy-poll time of idle queues.
    pub poll: Duration,
}

/// The volume manager.
pub struct Manager {
    cfg: ManagerConfig,
    records: BTreeMap<String, Record>,
    exports: BTreeMap<String, Running>,
    opener: Box<Opener>,
}

/// An export that is running, with what the API and metrics need.
struct Running {
    export: Export,
    throttle: Arc<Throttle>,
    stats: Arc<VolumeStats>,
}

impl Manager {
    /// Opens (creating if needed) the data directory, drops what a crash left half-done,
    /// and restarts the exports that were running.
    pub fn open(cfg: ManagerConfig, opener: Box<Opener>) -> Result<Self, ManagerError> {
        for sub in ["meta", "volumes", "snapshots", "sockets", "tmp"] {
            let p = cfg.data_dir.join(sub);
            fs::create_dir_all(&p).map_err(io_err("create", &p))?;
        }
        // Temporary files are never part of an acknowledged state.
        let tmp = cfg.data_dir.join("tmp");
        for e in fs::read_dir(&tmp).map_err(io_err("list", &tmp))?.flatten() {
            let _ = fs::remove_file(e.path());
        }
        let mut records = BTreeMap::new();
        let meta = cfg.data_dir.join("meta");
        for e in fs::read_dir(&meta)
            .map_err(io_err("list", &meta))?
            .flatten()
        {
            let path = e.path();
            if path.extension().is_none_or(|x| x != "json") {
                let _ = fs::remove_file(&path);
                continue;
            }
            let text = fs::read_to_string(&path).map_err(io_err("read", &path))?;
            match serde_json::from_str::<Record>(&text) {
                Ok(r) => {
                    records.insert(r.id.clone(), r);
                }
                Err(e) => {
                    warn!(path = %path.display(), error = %e, "unreadable volume record skipped")
                }
            }
        }
        let mut m = Manager {
            cfg,
            records,
            exports: BTreeMap::new(),
            opener,
        };
        m.remove_orphans();
        m.reconcile_sizes();
        let to_export: Vec<(String, ExportRecord)> = m
            .records
            .values()
            .filter_map(|r| r.export.clone().map(|e| (r.id.clone(), e)))
            .collect();
        for (id, e) in to_export {
            if let Err(err) = m.start_export(&id, &e) {
                warn!(volume = %id, error = %err, "could not restart export");
            }
        }
        Ok(m)
    }

    /// Makes each data file as long as its record says. Sizes change only through `extend`
    /// (never while exported), which a crash can interrupt between resizing the file and
    /// writing the record; the record is what was acknowledged.
    fn reconcile_sizes(&self) {
        for r in self.records.values() {
            let path = self.data_path(r.kind, &r.id);
            let Ok(f) = OpenOptions::new().write(true).open(&path) else {
                warn!(path = %path.display(), "data file of a record is missing");
                continue;
            };
            if f.metadata().is_ok_and(|m| m.len() != r.size) {
                info!(volume = %r.id, size = r.size, "restoring the recorded size after a crash");
                if let Err(e) = f.set_len(r.size).and_then(|()| f.sync_all()) {
                    warn!(volume = %r.id, error = %e, "could not restore the recorded size");
                }
            }
        }
    }

    fn remove_orphans(&self) {
        for (sub, kind) in [("volumes", Kind::Volume), ("snapshots", Kind::Snapshot)] {
            let dir = self.cfg.data_dir.join(sub);
            let Ok(entries) = fs::read_dir(&dir) else {
                continue;
            };
            for e in entries.flatten() {
                let path = e.path();
                let id = path
                    .file_stem()
                    .and_then(|s| s.to_str())
                    .unwrap_or_default()
                    .to_string();
                if self.records.get(&id).is_none_or(|r| r.kind != kind) {
                    info!(path = %path.display(), "removing orphan data file");
                    let _ = fs::remove_file(&path);
                }
            }
        }
    }

    fn data_path(&self, kind: Kind, id: &str) -> PathBuf {
        let sub = if kind == Kind::Volume {
            "volumes"
        } else {
            "snapshots"
        };
        self.cfg.data_dir.join(sub).join(format!("{id}.img"))
    }

    fn tmp_path(&self, id: &str) -> PathBuf {
        self.cfg.data_dir.join("tmp").join(format!("{id}.img"))
    }

    /// Writes a record durably: temporary file, fsync, rename, fsync the directory.
    fn persist(&mut self, r: Record) -> Result<(), ManagerError> {
        let dir = self.cfg.data_dir.join("meta");
        let tmp = self.cfg.data_dir.join("tmp").join(format!("{}.json", r.id));
        let final_path = dir.join(format!("{}.json", r.id));
        let body =
            serde_json::to_vec_pretty(&r).map_err(|e| ManagerError::Invalid(e.to_string()))?;
        let mut f = File::create(&tmp).map_err(io_err("create", &tmp))?;
        f.write_all(&body).map_err(io_err("write", &tmp))?;
        f.sync_all().map_err(io_err("fsync", &tmp))?;
        fs::rename(&tmp, &final_path).map_err(io_err("rename", &final_path))?;
        sys::sync_dir(&dir).map_err(io_err("fsync", &dir))?;
        self.records.insert(r.id.clone(), r);
        Ok(())
    }

    /// Gives a new id, has `fill` write the data file under `tmp/`, and moves it into place
    /// durably; on failure nothing is left behind.
    fn stage<T>(
        &self,
        kind: Kind,
        fill: impl FnOnce(&Self, &Path) -> Result<T, ManagerError>,
    ) -> Result<(String, T), ManagerError> {
        let id = uuid::Uuid::new_v4().to_string();
        let tmp = self.tmp_path(&id);
        let filled = fill(self, &tmp).and_then(|v| self.install_data(&tmp, kind, &id).map(|()| v));
        match filled {
            Ok(v) => Ok((id, v)),
            Err(e) => {
                let _ = fs::remove_file(&tmp);
                Err(e)
            }
        }
    }

    /// Moves a complete temporary data file into place durably.
    fn install_data(&self, tmp: &Path, kind: Kind, id: &str) -> Result<(), ManagerError> {
        let dst = self.data_path(kind, id);
        fs::rename(tmp, &dst).map_err(io_err("rename", &dst))?;
        let dir = dst.parent().expect("data files live in a directory");
        sys::sync_dir(dir).map_err(io_err("fsync", dir))
    }

    /// All records, volumes and snapshots.
    pub fn list(&self, kind: Kind) -> Vec<Record> {
        self.records
            .values()
            .filter(|r| r.kind == kind)
            .cloned()
            .collect()
    }

    /// One record.
    pub fn get(&self, kind: Kind, id: &str) -> Result<&Record, ManagerError> {
        self.records
            .get(id)
            .filter(|r| r.kind == kind)
            .ok_or_else(|| ManagerError::NotFound {
                kind: if kind == Kind::Volume {
                    "volume"
                } else {
                    "snapshot"
                },
                id: id.to_string(),
            })
    }

    /// Creates a volume, empty or from a source; durable when this returns.
    pub fn create(&mut self, req: CreateVolume) -> Result<Record, ManagerError> {
        if let Some(size) = req.size {
            check_size(size)?;
        }
        let (id, (size, source_id, copy_method)) =
            self.stage(Kind::Volume, |m, tmp| m.fill_new(tmp, &req))?;
        let rec = Record {
            id: id.clone(),
            kind: Kind::Volume,
            name: req.name.unwrap_or_default(),
            size,
            read_only: req.read_only,
            created_at: now(),
            source_id,
            copy_method,
            qos: QosLimits::default(),
            export: None,
        };
        self.persist(rec.clone())?;
        info!(volume = %id, size, "volume created");
        Ok(rec)
    }

    /// Writes the new volume's data into `tmp`; returns its size and provenance.
    fn fill_new(
        &self,
        tmp: &Path,
        req: &CreateVolume,
    ) -> Result<(u64, Option<String>, Option<CopyMethod>), ManagerError> {
        match &req.source {
            None => {
                let size = req.size.ok_or_else(|| {
                    ManagerError::Invalid("size is required without a source".into())
                })?;
                let f = File::create(tmp).map_err(io_err("create", tmp))?;
                f.set_len(size).map_err(io_err("truncate", tmp))?;
                f.sync_all().map_err(io_err("fsync", tmp))?;
                Ok((size, None, None))
            }
            Some(Source::SnapshotId(snap)) => {
                let snap_rec = self.get(Kind::Snapshot, snap)?.clone();
                let method = copy_file(&self.data_path(Kind::Snapshot, snap), tmp)?;
                let size = req.size.unwrap_or(snap_rec.size);
                if size < snap_rec.size {
                    return Err(ManagerError::Invalid(format!(
                        "size {size} is smaller than the snapshot's {}",
                        snap_rec.size
                    )));
                }
                let f = OpenOptions::new()
                    .write(true)
                    .open(tmp)
                    .map_err(io_err("open", tmp))?;
                f.set_len(size).map_err(io_err("truncate", tmp))?;
                f.sync_all().map_err(io_err("fsync", tmp))?;
                Ok((size, Some(snap.clone()), Some(method)))
            }
            Some(src) => {
                let (mut reader, _len) = (self.opener)(src)?;
                let mut f = File::create(tmp).map_err(io_err("create", tmp))?;
                let written = copy_sparse(&mut reader, &mut f, req.size).map_err(|e| match e {
                    CopyError::Read(source) => ManagerError::Source {
                        source_desc: describe(src),
                        source,
                    },
                    CopyError::Write(source) => ManagerError::Io {
                        op: "write",
                        path: tmp.to_path_buf(),
                        source,
                    },
                    CopyError::TooLarge(limit) => ManagerError::Invalid(format!(
                        "image is larger than the requested size of {limit} bytes"
                    )),
                })?;
                let size = req.size.unwrap_or(written.div_ceil(SECTOR) * SECTOR);
                check_size(size)?;
                f.set_len(size).map_err(io_err("truncate", tmp))?;
                f.sync_all().map_err(io_err("fsync", tmp))?;
                Ok((size, None, None))
            }
        }
    }

    /// Deletes a volume or snapshot (not while exported).
    pub fn delete(&mut self, kind: Kind, id: &str) -> Result<(), ManagerError> {
        let rec = self.get(kind, id)?;
        if rec.export.is_some() {
            return Err(ManagerError::Conflict(format!(
                "volume {id} is exported; unexport it first"
            )));
        }
        let meta = self.cfg.data_dir.join("meta").join(format!("{id}.json"));
        fs::remove_file(&meta).map_err(io_err("remove", &meta))?;
        let dir = self.cfg.data_dir.join("meta");
        sys::sync_dir(&dir).map_err(io_err("fsync", &dir))?;
        let data = self.data_path(kind, id);
        let _ = fs::remove_file(&data);
        self.records.remove(id);
        Ok(())
    }

    /// Grows a volume (not while exported: the frontend would not see the new size).
    pub fn extend(&mut self, id: &str, size: u64) -> Result<Record, ManagerError> {
        check_size(size)?;
        let mut rec = self.get(Kind::Volume, id)?.clone();
        if size <= rec.size {
            return Err(ManagerError::Invalid(format!(
                "new size {size} must be larger than the current {}",
                rec.size
            )));
        }
        if rec.export.is_some() {
            return Err(ManagerError::Conflict(format!(
                "volume {id} is exported; unexport it first"
            )));
        }
        let path = self.data_path(Kind::Volume, id);
        let f = OpenOptions::new()
            .write(true)
            .open(&path)
            .map_err(io_err("open", &path))?;
        f.set_len(size).map_err(io_err("truncate", &path))?;
        f.sync_all().map_err(io_err("fsync", &path))?;
        rec.size = size;
        self.persist(rec.clone())?;
        Ok(rec)
    }

    /// Takes a snapshot of a volume (reflink where the filesystem allows).
    pub fn snapshot(&mut self, volume: &str, name: Option<String>) -> Result<Record, ManagerError> {
        let vol = self.get(Kind::Volume, volume)?.clone();
        let src = self.data_path(Kind::Volume, volume);
        let (id, method) = self.stage(Kind::Snapshot, |_, tmp| copy_file(&src, tmp))?;
        let rec = Record {
            id,
            kind: Kind::Snapshot,
            name: name.unwrap_or_default(),
            size: vol.size,
            read_only: true,
            created_at: now(),
            source_id: Some(volume.to_string()),
            copy_method: Some(method),
            qos: QosLimits::default(),
            export: None,
        };
        self.persist(rec.clone())?;
        Ok(rec)
    }

    /// Sets a volume's QoS limits (applied at once to a running export).
    pub fn set_qos(&mut self, id: &str, qos: QosLimits) -> Result<Record, ManagerError> {
        for v in [qos.iops, qos.bytes_per_sec].into_iter().flatten() {
            if v == 0 {
                return Err(ManagerError::Invalid(
                    "QoS limits must be positive (omit for unlimited)".into(),
                ));
            }
        }
        let mut rec = self.get(Kind::Volume, id)?.clone();
        rec.qos = qos;
        self.persist(rec.clone())?;
        if let Some(r) = self.exports.get(id) {
            r.throttle.set(qos);
        }
        Ok(rec)
    }

    /// Starts serving a volume on a vhost-user socket.
    pub fn export(&mut self, id: &str, num_queues: Option<u16>) -> Result<Record, ManagerError> {
        let mut rec = self.get(Kind::Volume, id)?.clone();
        if rec.export.is_some() {
            return Err(ManagerError::Conflict(format!(
                "volume {id} is already exported"
            )));
        }
        let num_queues = num_queues.unwrap_or(self.cfg.default_queues);
        if num_queues == 0 || num_queues > MAX_QUEUES {
            return Err(ManagerError::Invalid(format!(
                "num_queues must be 1 to {MAX_QUEUES}"
            )));
        }
        let e = ExportRecord {
            socket: self.cfg.data_dir.join("sockets").join(format!("{id}.sock")),
            num_queues,
        };
        self.start_export(id, &e)?;
        rec.export = Some(e);
        if let Err(err) = self.persist(rec.clone()) {
            if let Some(r) = self.exports.remove(id) {
                r.export.stop();
            }
            return Err(err);
        }
        Ok(rec)
    }

    fn start_export(&mut self, id: &str, e: &ExportRecord) -> Result<(), ManagerError> {
        let rec = self.get(Kind::Volume, id)?.clone();
        let path = self.data_path(Kind::Volume, id);
        let io = VolumeIo::open(&path, id, rec.read_only, e.num_queues, self.cfg.poll)
            .map_err(io_err("open", &path))?;
        io.throttle.set(rec.qos);
        let (throttle, stats) = (io.throttle.clone(), io.stats.clone());
        let backend =
            BlockBackend::new(Arc::new(io)).map_err(io_err("set up io_uring for", &path))?;
        let export =
            Export::start(id, &e.socket, Arc::new(backend)).map_err(ManagerError::Export)?;
        self.exports.insert(
            id.to_string(),
            Running {
                export,
                throttle,
                stats,
            },
        );
        Ok(())
    }

    /// Stops serving a volume.
    pub fn unexport(&mut self, id: &str) -> Result<Record, ManagerError> {
        let mut rec = self.get(Kind::Volume, id)?.clone();
        if rec.export.is_none() {
            return Err(ManagerError::Conflict(format!(
                "volume {id} is not exported"
            )));
        }
        rec.export = None;
        self.persist(rec.clone())?;
        if let Some(r) = self.exports.remove(id) {
            r.export.stop();
        }
        Ok(rec)
    }

    /// Prometheus text for every running export.
    pub fn render_metrics(&self, out: &mut String) {
        use crate::metrics::{render, render_gauge};
        render_gauge(
            out,
            "ferrostack_blockdp_volumes",
            "Volumes known to this daemon.",
            self.list(Kind::Volume).len() as u64,
        );
        render_gauge(
            out,
            "ferrostack_blockdp_exports",
            "Volumes being served.",
            self.exports.len() as u64,
        );
        let exports: Vec<(&str, &VolumeStats)> = self
            .exports
            .iter()
            .map(|(id, r)| (id.as_str(), &*r.stats))
            .collect();
        render(out, &exports);
    }

    /// Stops every export (daemon shutdown); records keep saying they are exported, so a
    /// restart serves them again.
    pub fn shutdown(&mut self) {
        for (_, r) in std::mem::take(&mut self.exports) {
            r.export.stop();
        }
    }
}

fn check_size(size: u64) -> Result<(), ManagerError> {
    if size == 0 || !size.is_multiple_of(SECTOR) || size > MAX_SIZE {
        return Err(ManagerError::Invalid(format!(
            "size must be a positive multiple of {SECTOR} bytes up to {MAX_SIZE}, got {size}"
        )));
    }
    Ok(())
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn describe(src: &Source) -> String {
    match src {
        Source::Path(p) => p.display().to_string(),
        Source::Url(u) => u.clone(),
        Source::SnapshotId(s) => format!("snapshot {s}"),
    }
}

/// Copies `src` to a new file `dst`, by reflink when possible; says which it did.
fn copy_file(src: &Path, dst: &Path) -> Result<CopyMethod, ManagerError> {
    let from = File::open(src).map_err(io_err("open", src))?;
    let to = File::create(dst).map_err(io_err("create", dst))?;
    let method = match sys::reflink(&from, &to) {
        Ok(()) => CopyMethod::Reflink,
        Err(_) => {
            copy_sparse(&mut &from, &mut &to, None).map_err(|e| match e {
                CopyError::Read(source) => ManagerError::Io {
                    op: "read",
                    path: src.to_path_buf(),
                    source,
                },
                CopyError::Write(source) => ManagerError::Io {
                    op: "write",
                    path: dst.to_path_buf(),
                    source,
                },
                CopyError::TooLarge(_) => unreachable!("no limit was given"),
            })?;
            let len = from.metadata().map_err(io_err("stat", src))?.len();
            to.set_len(len).map_err(io_err("truncate", dst))?;
            CopyMethod::Copy
        }
    };
    to.sync_all().map_err(io_err("fsync", dst))?;
    Ok(method)
}

/// Why a streamed copy stopped.
#[derive(Debug)]
enum CopyError {
    Read(io::Error),
    Write(io::Error),
    TooLarge(u64),
}

/// Streams `reader` into `out` in 1 MiB chunks, skipping (not writing) all-zero chunks so
/// the result stays sparse; returns the bytes read. Fails past `limit` bytes.
fn copy_sparse<R: Read + ?Sized, W: Write + io::Seek>(
    reader: &mut R,
    out: &mut W,
    limit: Option<u64>,
) -> Result<u64, CopyError> {
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        let mut filled = 0;
        while filled < buf.len() {
            match reader.read(&mut buf[filled..]) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(CopyError::Read(e)),
            }
        }
        if filled == 0 {
            return Ok(total);
        }
        total += filled as u64;
        if let Some(limit) = limit.filter(|l| total > *l) {
            return Err(CopyError::TooLarge(limit));
        }
        let chunk = &buf[..filled];
        if chunk.iter().all(|b| *b == 0) {
            out.seek(io::SeekFrom::Current(filled as i64))
                .map_err(CopyError::Write)?;
        } else {
            out.write_all(chunk).map_err(CopyError::Write)?;
        }
        if filled < buf.len() {
            return Ok(total);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manager(dir: &Path) -> Manager {
        let cfg = ManagerConfig {
            data_dir: dir.to_path_buf(),
            default_queues: 1,
            poll: Duration::ZERO,
        };
        let opener: Box<Opener> = Box::new(|src: &Source| match src {
            Source::Path(p) => {
                let f = File::open(p).map_err(|source| ManagerError::Source {
                    source_desc: p.display().to_string(),
                    source,
                })?;
                Ok((Box::new(f) as Box<dyn Read + Send>, None))
            }
            other => Err(ManagerError::Invalid(format!(
                "unsupported in this test: {other:?}"
            ))),
        });
        Manager::open(cfg, opener).unwrap()
    }

    #[test]
    fn records_survive_reopen_and_orphans_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let id = {
            let mut m = manager(dir.path());
            m.create(CreateVolume {
                size: Some(1 << 20),
                name: Some("a".into()),
                ..Default::default()
            })
            .unwrap()
            .id
        };
        // A data file without a record: a create that crashed before its record.
        fs::write(dir.path().join("volumes/ghost.img"), b"x").unwrap();
        fs::write(dir.path().join("tmp/half.json"), b"{").unwrap();
        let m = manager(dir.path());
        let vols = m.list(Kind::Volume);
        assert_eq!(vols.len(), 1);
        assert_eq!(vols[0].id, id);
        assert_eq!(vols[0].name, "a");
        assert!(!dir.path().join("volumes/ghost.img").exists());
        assert!(!dir.path().join("tmp/half.json").exists());
    }

    #[test]
    fn an_interrupted_extend_is_rolled_back_to_the_recorded_size() {
        let dir = tempfile::tempdir().unwrap();
        let id = manager(dir.path())
            .create(CreateVolume {
                size: Some(1 << 20),
                ..Default::default()
            })
            .unwrap()
            .id;
        // The file grew but the record was never written (crash inside extend).
        let path = dir.path().join(format!("volumes/{id}.img"));
        File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(4 << 20)
            .unwrap();
        let m = manager(dir.path());
        assert_eq!(m.get(Kind::Volume, &id).unwrap().size, 1 << 20);
        assert_eq!(fs::metadata(&path).unwrap().len(), 1 << 20);
    }

    #[test]
    fn image_import_is_sparse_and_sized() {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("img.raw");
        let mut data = vec![0u8; 3 << 20];
        data[..5].copy_from_slice(b"hello");
        data[(3 << 20) - 3..].copy_from_slice(b"end");
        fs::write(&img, &data[..(3 << 20) - 100]).unwrap();
        let mut m = manager(dir.path());
        let rec = m
            .create(CreateVolume {
                source: Some(Source::Path(img.clone())),
                ..Default::default()
            })
            .unwrap();
        // Rounded up to a sector.
        assert_eq!(rec.size, ((3 << 20) - 100u64).div_ceil(512) * 512);
        let got = fs::read(dir.path().join(format!("volumes/{}.img", rec.id))).unwrap();
        assert_eq!(&got[..(3 << 20) - 100], &data[..(3 << 20) - 100]);
        // Too small a size for the image is refused, and leaves nothing behind.
        let err = m
            .create(CreateVolume {
                source: Some(Source::Path(img)),
                size: Some(1 << 20),
                ..Default::default()
            })
            .unwrap_err();
        assert!(matches!(err, ManagerError::Invalid(_)), "{err}");
        assert_eq!(fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
        assert_eq!(m.list(Kind::Volume).len(), 1);
    }

    #[test]
    fn snapshot_and_clone_keep_the_bytes_of_their_time() {
        let dir = tempfile::tempdir().unwrap();
        let mut m = manager(dir.path());
        let vol = m
            .create(CreateVolume {
                size: Some(1 << 20),
                ..Default::default()
            })
            .unwrap();
        let vpath = dir.path().join(format!("volumes/{}.img", vol.id));
        {
            use std::os::unix::fs::FileExt;
            File::options()
                .write(true)
                .open(&vpath)
                .unwrap()
                .write_all_at(b"before", 0)
                .unwrap();
        }
        let snap = m.snapshot(&vol.id, Some("s".into())).unwrap();
        assert!(snap.copy_method.is_some());
        {
            use std::os::unix::fs::FileExt;
            File::options()
                .write(true)
                .open(&vpath)
                .unwrap()
                .write_all_at(b"after!", 0)
                .unwrap();
        }
        let clone = m
            .create(CreateVolume {
                source: Some(Source::SnapshotId(snap.id.clone())),
                size: Some(2 << 20),
                ..Default::default()
            })
            .unwrap();
        let cdata = fs::read(dir.path().join(format!("volumes/{}.img", clone.id))).unwrap();
        assert_eq!(&cdata[..6], b"before");
        assert_eq!(cdata.len(), 2 << 20);
        assert_eq!(clone.source_id.as_deref(), Some(snap.id.as_str()));
    }

    #[test]
    fn invalid_requests_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut m = manager(dir.path());
        for size in [0, 100, MAX_SIZE + 512] {
            assert!(matches!(
                m.create(CreateVolume {
                    size: Some(size),
                    ..Default::default()
                }),
                Err(ManagerError::Invalid(_))
            ));
        }
        assert!(matches!(
            m.create(CreateVolume::default()),
            Err(ManagerError::Invalid(_))
        ));
        let v = m
            .create(CreateVolume {
                size: Some(4096),
                ..Default::default()
            })
            .unwrap();
        assert!(matches!(
            m.extend(&v.id, 4096),
            Err(ManagerError::Invalid(_))
        ));
        assert!(matches!(
            m.extend("nope", 8192),
            Err(ManagerError::NotFound { .. })
        ));
        assert_eq!(m.extend(&v.id, 8192).unwrap().size, 8192);
        assert!(matches!(m.unexport(&v.id), Err(ManagerError::Conflict(_))));
        assert!(matches!(
            m.set_qos(
                &v.id,
                QosLimits {
                    iops: Some(0),
                    bytes_per_sec: None
                }
            ),
            Err(ManagerError::Invalid(_))
        ));
        m.delete(Kind::Volume, &v.id).unwrap();
        assert!(matches!(
            m.get(Kind::Volume, &v.id),
            Err(ManagerError::NotFound { .. })
        ));
    }
}
