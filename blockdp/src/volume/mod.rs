//! Volumes: sparse files in a data directory, their metadata, snapshots, clones and exports.
//!
//! Layout of the data directory:
//! - `meta/<id>.json`: one record per volume or snapshot, replaced atomically (write to a
//!   temporary file, fsync, rename, fsync the directory);
//! - `volumes/<id>.img`, `snapshots/<id>.img`: the data, sparse (thin provisioned);
//! - `sockets/<id>.sock`: vhost-user sockets of exported volumes.
//!
//! A data file is complete and durable before its record is written, and a record is
//! removed before its data file, so a crash at any point leaves either a complete volume or
//! an orphan data file, which start-up removes.

pub mod manager;
pub mod sys;

pub use manager::{Manager, ManagerError};
