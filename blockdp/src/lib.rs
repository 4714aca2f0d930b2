//! blockdp: Ferrostack's volume service.
//!
//! This crate will hold the Cinder volume backend of a node: sparse-file volumes in a data
//! directory with snapshots and clones, each served to a VM over vhost-user-blk
//! (vhost-user-backend, one worker and one io_uring per virtqueue), with QoS limits, an
//! HTTP API on a Unix socket and Prometheus metrics.
//!
//! What exists today:
//! - [`io`]: the io_uring engine that reads and writes a volume file at given offsets.

pub mod client;
pub mod io;
pub mod metrics;
pub mod qos;
pub mod vhost;
pub mod virtio;
