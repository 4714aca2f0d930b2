//! blockdp: Ferrostack's volume service (the Cinder volume backend of a node).
//!
//! Volumes are sparse files in a data directory; each can be exported on a vhost-user-blk
//! socket that a VM (or any vhost-user-blk frontend) connects to. The parts:
//!
//! - [`volume`]: the manager that owns the data directory: create (empty, from a raw image
//!   by path or `http://` URL, or as a clone of a snapshot), extend, snapshot (reflink where
//!   the filesystem allows, otherwise a copy that says so), delete, export, QoS. Records are
//!   replaced atomically and a restart reconciles what a crash left.
//! - [`vhost`]: the vhost-user-blk backend ([`vhost::backend`]) and the export loop that
//!   keeps listening after a frontend disconnects ([`vhost::export`]).
//! - [`virtio`]: the virtio-blk wire format: request parsing against the device limits
//!   (pure and property-tested) and the config space.
//! - [`qos`]: token buckets for IOPS and bytes per second.
//! - [`metrics`]: per-queue counters and latency histograms, Prometheus text.
//! - [`api`], [`config`], [`source`]: the HTTP/JSON API on a Unix socket, the TOML config,
//!   and image sources.
//! - [`client`]: a vhost-user-blk (and plain file) client on libblkio's Rust core, used by
//!   the tests and benchmarks.
//! - [`io`]: a small synchronous io_uring file engine.
//!
//! Threads: the daemon's tokio runtime serves the API; volume operations run on its blocking
//! pool under the manager's lock. Each export has a listener thread, and while a frontend is
//! connected, one vhost-user request thread plus one worker thread per queue; a worker owns
//! its queue's io_uring and never takes a lock the API holds.

pub mod api;
pub mod client;
pub mod config;
pub mod io;
pub mod metrics;
pub mod qos;
pub mod source;
pub mod vhost;
pub mod virtio;
pub mod volume;
