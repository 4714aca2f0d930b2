//! control: Ferrostack's thin control API and node agent.
//!
//! This crate will hold the public HTTP API, compatible with the stock OpenStack clients
//! where it implements an OpenStack API (Keystone v3 identity, Glance v2 images, Nova
//! v2.1 compute with Placement-style scheduling, Neutron and Cinder passed through to the
//! data planes, Ceilometer-style meters), its store (SQLite embedded, PostgreSQL shared),
//! and the node agent that turns a placement into a running VM.
//!
//! What exists today:
//! - [`config`]: the daemon's TOML configuration with defaults and validation.

#![forbid(unsafe_code)]

pub mod config;
