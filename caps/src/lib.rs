//! Capability probes for privileged tests.
//!
//! Ferrostack's data planes are tested for real: KVM guests, eBPF programs, network
//! namespaces, io_uring. A test that needs one of these asks this crate first:
//!
//! ```no_run
//! #[test]
//! fn boots_a_guest() {
//!     if !caps::require(caps::Capability::Kvm) {
//!         return; // printed one line saying why, and skipped
//!     }
//!     // ... the real test ...
//! }
//! ```
//!
//! When the capability is there the test runs. When it is missing the test prints one
//! line naming the capability and the reason, and returns early; under `CI=true` it
//! panics instead, so a green CI run means every privileged test really ran.
//!
//! The probes themselves live in [`sys`]: each makes the smallest real use of the
//! capability (create a VM, load a two-instruction BPF program, enter a fresh network
//! namespace on a throwaway thread, set up an io_uring) and reports the first failure.
//!
//! [`prom`] checks a daemon's `/metrics` with the Prometheus project's own text parser, for
//! the tests that assert how far a counter moved.

#![deny(missing_docs)]

pub mod prom;
pub mod sys;

use std::fmt;
use std::sync::OnceLock;

/// A privileged capability a test may depend on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Capability {
    /// The process runs with effective uid 0.
    Root,
    /// `/dev/kvm` opens and `KVM_CREATE_VM` succeeds.
    Kvm,
    /// A trivial eBPF program loads with `BPF_PROG_LOAD`.
    Bpf,
    /// A new network namespace can be created (and `ip` is there to configure it).
    Netns,
    /// An io_uring instance can be set up.
    IoUring,
}

impl Capability {
    /// Every capability, in the order the probe report lists them.
    pub const ALL: [Capability; 5] = [
        Capability::Root,
        Capability::Kvm,
        Capability::Bpf,
        Capability::Netns,
        Capability::IoUring,
    ];

    /// Probes the machine for this capability (uncached).
    pub fn probe(self) -> Result<(), String> {
        match self {
            Capability::Root => sys::probe_root(),
            Capability::Kvm => sys::probe_kvm(),
            Capability::Bpf => sys::probe_bpf(),
            Capability::Netns => sys::probe_netns(),
            Capability::IoUring => sys::probe_io_uring(),
        }
    }
}

impl fmt::Display for Capability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(match self {
            Capability::Root => "root",
            Capability::Kvm => "kvm",
            Capability::Bpf => "bpf",
            Capability::Netns => "netns",
            Capability::IoUring => "io_uring",
        })
    }
}

/// What a test should do about a capability.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// The capability is present: run the test.
    Run,
    /// The capability is missing and this is not CI: skip, saying why.
    Skip(String),
    /// The capability is missing under CI: fail, saying why.
    Fail(String),
}

/// Decides what to do given a probe result and whether this is a CI run.
///
/// Pure, so the policy itself is unit-tested without touching the machine.
pub fn decide(cap: Capability, probed: &Result<(), String>, ci: bool) -> Decision {
    match probed {
        Ok(()) => Decision::Run,
        Err(why) if ci => {
            Decision::Fail(format!("capability {cap} is missing under CI=true: {why}"))
        }
        Err(why) => Decision::Skip(format!("SKIP: capability {cap} is missing: {why}")),
    }
}

/// Whether the environment marks this as a CI run (`CI=true` or `CI=1`).
pub fn ci_from_env(value: Option<&str>) -> bool {
    matches!(value.map(str::trim), Some(v) if v.eq_ignore_ascii_case("true") || v == "1")
}

/// Whether this process runs under CI, read once from the `CI` environment variable.
pub fn is_ci() -> bool {
    static CI: OnceLock<bool> = OnceLock::new();
    *CI.get_or_init(|| ci_from_env(std::env::var("CI").ok().as_deref()))
}

/// Probes `cap` once per process and caches the answer.
pub fn probe_cached(cap: Capability) -> Result<(), String> {
    static CACHE: [OnceLock<Result<(), String>>; 5] = [const { OnceLock::new() }; 5];
    let slot = Capability::ALL.iter().position(|c| *c == cap).unwrap_or(0);
    CACHE[slot].get_or_init(|| cap.probe()).clone()
}

/// Gate for a privileged test: `true` to run it, `false` (after printing one line) to skip.
///
/// # Panics
/// Under `CI=true`, when the capability is missing, so CI never passes a test that did
/// not run.
pub fn require(cap: Capability) -> bool {
    act(decide(cap, &probe_cached(cap), is_ci()))
}

/// Carries out a decision: `true` to run, `false` after printing the skip line, a panic
/// for a failure.
pub fn act(decision: Decision) -> bool {
    match decision {
        Decision::Run => true,
        Decision::Skip(line) => {
            eprintln!("{line}");
            false
        }
        Decision::Fail(line) => panic!("{line}"),
    }
}

/// Gate for a test needing several capabilities: all must be present.
pub fn require_all(caps: &[Capability]) -> bool {
    caps.iter().all(|c| require(*c))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn present_capability_runs_everywhere() {
        assert_eq!(decide(Capability::Kvm, &Ok(()), false), Decision::Run);
        assert_eq!(decide(Capability::Kvm, &Ok(()), true), Decision::Run);
    }

    #[test]
    fn missing_capability_skips_outside_ci_with_reason() {
        let d = decide(Capability::Bpf, &Err("EPERM".into()), false);
        assert_eq!(
            d,
            Decision::Skip("SKIP: capability bpf is missing: EPERM".into())
        );
    }

    #[test]
    fn missing_capability_fails_under_ci_with_reason() {
        let d = decide(Capability::Netns, &Err("no ip(8)".into()), true);
        match d {
            Decision::Fail(msg) => {
                assert!(msg.contains("netns"), "{msg}");
                assert!(msg.contains("no ip(8)"), "{msg}");
                assert!(msg.contains("CI=true"), "{msg}");
            }
            other => panic!("expected Fail, got {other:?}"),
        }
    }

    #[test]
    fn ci_variable_parsing() {
        assert!(ci_from_env(Some("true")));
        assert!(ci_from_env(Some("TRUE")));
        assert!(ci_from_env(Some("1")));
        assert!(!ci_from_env(Some("false")));
        assert!(!ci_from_env(Some("0")));
        assert!(!ci_from_env(Some("")));
        assert!(!ci_from_env(None));
    }

    #[test]
    #[should_panic(expected = "capability io_uring is missing under CI=true: ENOSYS")]
    fn missing_capability_under_ci_panics_the_test() {
        act(decide(Capability::IoUring, &Err("ENOSYS".into()), true));
    }

    #[test]
    fn missing_capability_outside_ci_returns_false() {
        assert!(!act(decide(
            Capability::IoUring,
            &Err("ENOSYS".into()),
            false
        )));
        assert!(act(decide(Capability::IoUring, &Ok(()), false)));
    }

    #[test]
    fn every_capability_has_its_own_cache_slot() {
        let mut names: Vec<String> = Capability::ALL.iter().map(|c| c.to_string()).collect();
        names.dedup();
        assert_eq!(names.len(), Capability::ALL.len());
    }
}
