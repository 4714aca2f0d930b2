//! The HTTP APIs objectd speaks.

pub mod swift;
