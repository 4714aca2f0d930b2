//! control: Ferrostack's thin control API.
//!
//! A tour of the parts:
//! - [`config`]: the daemon's TOML configuration with defaults and validation.
//! - [`store`]: state behind the [`store::Store`] trait (SQLite embedded; PostgreSQL for
//!   several controllers), schema migrations at start-up, atomic compare-and-swap writes.
//! - [`identity`]: Keystone v3 semantics: documents, authentication (Argon2id passwords,
//!   application credentials, token rescoping), signed expiring tokens with rotating keys
//!   and revocations ([`identity::token`]), effective roles and the catalog;
//!   [`identity::bootstrap`] creates the first admin and the catalog.
//! - [`image`]: Glance v2 semantics: image documents, visibility, JSON patch, sorting.
//! - [`network`]: Neutron's resources (ports, routers, security groups, floating IPs),
//!   control's address management, and the per-node state pushed to the agents.
//! - [`objectstore`]: objectd (Swift API) as the image store, bodies streamed with their
//!   digests computed on the way.
//! - [`api`]: the HTTP layer (hyper): parses requests, answers in Keystone's or Glance's
//!   shapes; store work and hashing run on tokio's blocking pool.
//! - [`telemetry`]: meters (time series with retention and downsampling), lifecycle
//!   events and threshold alarms with webhooks; control's own `/metrics`.
//! - [`server`]: accept loop, housekeeping (revocation refresh, key rotation), sd_notify.
//!
//! Threads: tokio's multi-threaded runtime for connections and streaming, its blocking
//! pool for the store and password hashing.

#![forbid(unsafe_code)]

pub mod api;
pub mod compute;
pub mod config;
pub mod identity;
pub mod image;
pub mod network;
pub mod objectstore;
pub mod server;
pub mod service;
pub mod store;
pub mod telemetry;
pub mod time;
