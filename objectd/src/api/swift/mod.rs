//! The Swift API v1.

pub mod path;
