//! objectd: Ferrostack's object store, and the image store behind control.
//!
//! One hyper daemon speaks the Swift API v1 and S3 over one store.
//!
//! The parts:
//! - [`config`]: kebab-case TOML config, validated before any side effect.
//! - [`server`]: the accept loop (one tokio task per connection), the expirer and the
//!   auditor tasks.
//! - [`api`]: request routing and error rendering; [`api::swift`] (TempAuth, accounts,
//!   containers, objects, SLO/DLO), [`api::s3`] (SigV4, buckets, objects, multipart,
//!   aws-chunked, object and bucket tags, version listings, canned ACLs), [`api::body`] (streaming bodies to and from disk), [`api::http`]
//!   (ranges, conditional requests, dates).
//! - [`store`]: bodies up to 64 KiB inline in the SQLite index, larger ones as blob files
//!   written tmp → fsync → rename → fsync dir before the index learns of them; object
//!   writes group-committed (one WAL fsync per batch); leftovers of a crash swept at open;
//!   CRC32 (or MD5) checked on every full read.
//! - [`auth`]: TempAuth tokens and S3 keys from the config; [`keystone`]: Keystone tokens
//!   validated against `control` when configured.
//! - [`metrics`]: Prometheus text at `/metrics`.
//!
//! Threads: the tokio multi-threaded runtime serves HTTP; file, hashing and index work runs
//! on its blocking pool (a writer and a reader SQLite connection, each behind a mutex that
//! is never held across an await).

#![forbid(unsafe_code)]

pub mod api;
pub mod auth;
pub mod config;
pub mod keystone;
pub mod metrics;
pub mod server;
pub mod store;
