//! Tap devices for VM ports, made with iproute2 as Nova's os-vif does: persistent (they
//! outlive the VMM, so a restarted VMM finds its port already programmed by netdp), up, and
//! with IPv6 off so the host sends the guest no chatter.

use std::process::Command;

/// Errors managing taps.
#[derive(Debug, thiserror::Error)]
pub enum TapError {
    /// `ip` could not run.
    #[error("run ip {args}")]
    Spawn {
        /// The arguments.
        args: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// `ip` failed.
    #[error("ip {args} failed: {stderr}")]
    Failed {
        /// The arguments.
        args: String,
        /// What it said.
        stderr: String,
    },
}

fn ip(args: &[&str]) -> Result<(), TapError> {
    let joined = args.join(" ");
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|source| TapError::Spawn {
            args: joined.clone(),
            source,
        })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(TapError::Failed {
            args: joined,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}

/// Whether interface `name` exists in this network namespace (asked over netlink: `/sys`
/// shows the namespace it was mounted in, not necessarily ours).
pub fn exists(name: &str) -> bool {
    Command::new("ip")
        .args(["-o", "link", "show", "dev", name])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Creates tap `name` (if absent) and brings it up.
pub fn create(name: &str) -> Result<(), TapError> {
    if !exists(name) {
        ip(&["tuntap", "add", "dev", name, "mode", "tap"])?;
    }
    let _ = std::fs::write(format!("/proc/sys/net/ipv6/conf/{name}/disable_ipv6"), "1");
    ip(&["link", "set", "dev", name, "up"])
}

/// Deletes tap `name` (absent is fine).
pub fn delete(name: &str) -> Result<(), TapError> {
    if !exists(name) {
        return Ok(());
    }
    ip(&["link", "del", "dev", name])
}
