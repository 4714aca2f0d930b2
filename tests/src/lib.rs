//! Ferrostack's end-to-end test support.
//!
//! The tests in `tests/` drive the whole suite with real clients. This library holds the
//! fixtures they share; each cleans up what it created when dropped, also when the test
//! fails.
//!
//! - [`netns::Netns`]: a named network namespace, deleted on drop.

#![forbid(unsafe_code)]

pub mod netns;
