//! The Ferrostack node agent: it turns a placement from control into a running VM on this
//! node, using the node's daemons through their HTTP APIs, and keeps it running.
//!
//! A tour of the parts:
//! - [`api`]: the HTTP/JSON API control calls (create, show, list, act on, delete servers;
//!   the node's inventory; console logs; `/metrics`).
//! - [`agent`]: builds a server (kernel and initrd, a blockdp volume from the image exported
//!   over vhost-user-blk, netdp ports and their taps, a `vmm` configured through its API),
//!   runs actions (stop, start, reboot, pause, unpause), deletes (releases everything), and
//!   supervises VMMs (an exit makes the server SHUTOFF or ERROR).
//! - [`configdrive`]: each server's config drive (a FAT image labelled `config-2` with
//!   its metadata, keys, user data and network data), attached read-only.
//! - [`process`]: VMMs run under a small shim in their own process group, so they outlive
//!   the agent; pid and start time identify them again after an agent restart, and the shim
//!   records how each one ended.
//! - [`store`]: the state file, replaced atomically after every change.
//! - [`clients`]: typed clients of blockdp, netdp and vmm, over [`http`] (a small HTTP/1.1
//!   client for Unix sockets and TCP).
//! - [`netsync`]: the network state control pushes (`PUT /v1/network`), applied to netdp.
//! - [`tap`], [`fetch`], [`inventory`], [`control`] (registration and heartbeat).
//! - [`sampler`]: meter samples and lifecycle events sent to control's telemetry.
//! - [`client`]: a typed client of this API, for control.
//!
//! Threads: one tokio runtime serves the API and runs builds and actions as tasks; a
//! supervisor task polls the VMMs every half second; the heartbeat is another task.
#![forbid(unsafe_code)]
// Errors carry the daemon's answer (method, path, message) and travel only on control paths,
// never per packet or per I/O: their size does not matter.
#![allow(clippy::result_large_err)]

pub mod agent;
pub mod api;
pub mod client;
pub mod clients;
pub mod config;
pub mod configdrive;
pub mod control;
pub mod fetch;
pub mod http;
pub mod inventory;
pub mod model;
pub mod netsync;
pub mod process;
pub mod sampler;
pub mod store;
pub mod tap;
