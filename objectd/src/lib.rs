//! objectd: Ferrostack's object store, and the image store behind control.
//!
//! This crate will hold a hyper daemon speaking the Swift API v1 (accounts, containers,
//! objects, large objects, listings) and S3 (SigV4, multipart) over one store: bodies
//! streamed to temporary files, fsync'd and renamed into place, an embedded index, and an
//! auditor that verifies checksums.
//!
//! What exists today:
//! - [`api::swift::path`]: parsing and validating Swift request paths
//!   (`/v1/{account}/{container}/{object}`) with Swift's name limits.

#![forbid(unsafe_code)]

pub mod api;
