//! VMM processes: started through a shim so they outlive the agent, and recognised again
//! after an agent restart by pid and start time.
//!
//! The agent starts `ferrostack-agent vmm-shim --pid-file P --exit-file E -- vmm ...` in a
//! process group of its own. The shim starts the VMM, records its pid and start time in P,
//! waits for it and records how it ended in E (both written atomically). A restarted agent
//! reads P to find the VMM again and E to learn how it ended: the exit status of a process
//! that is not one's child is otherwise lost.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use serde::{Deserialize, Serialize};

use crate::store::write_atomic;

/// Errors starting or signalling processes.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    /// Spawning failed.
    #[error("spawn {program}")]
    Spawn {
        /// The program.
        program: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A file of the shim could not be written.
    #[error("record the VMM's state")]
    Record(#[source] crate::store::StoreError),
    /// The VMM did not report its pid in time.
    #[error("the VMM did not start (no pid file {0})")]
    NoPid(PathBuf),
}

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitRecord {
    /// The exit code, if it exited.
    pub code: Option<i32>,
    /// The signal, if one killed it.
    pub signal: Option<i32>,
}

/// A process identity: pid and start time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PidRecord {
    /// The pid.
    pub pid: i32,
    /// Start time in clock ticks since boot.
    pub start: u64,
}

/// The start time of `pid` (clock ticks since boot) and whether it is a zombie.
pub fn stat(pid: i32) -> Option<(u64, bool)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may hold spaces: parse after the last ')'.
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let state = fields.first()?;
    let start = fields.get(19)?.parse().ok()?;
    Some((start, *state == "Z" || *state == "X"))
}

/// Whether the process `pid` that started at `start` still runs (not a zombie).
pub fn alive(pid: i32, start: u64) -> bool {
    matches!(stat(pid), Some((s, false)) if s == start)
}

/// Sends `signal` to `pid` if it is still the process that started at `start`.
pub fn signal(pid: i32, start: u64, signal: rustix::process::Signal) {
    if !alive(pid, start) {
        return;
    }
    if let Some(p) = rustix::process::Pid::from_raw(pid) {
        let _ = rustix::process::kill_process(p, signal);
    }
}

/// Files of one VMM's shim.
#[derive(Debug, Clone)]
pub struct ShimFiles {
    /// The VMM's pid record.
    pub pid_file: PathBuf,
    /// How the VMM ended.
    pub exit_file: PathBuf,
    /// The shim's own stderr.
    pub log_file: PathBuf,
}

impl ShimFiles {
    /// The files in server directory `dir`.
    pub fn in_dir(dir: &Path) -> ShimFiles {
        ShimFiles {
            pid_file: dir.join("vmm.pid"),
            exit_file: dir.join("vmm.exit"),
            log_file: dir.join("shim.log"),
        }
    }

    /// The VMM's recorded pid.
    pub fn read_pid(&self) -> Option<PidRecord> {
        serde_json::from_slice(&std::fs::read(&self.pid_file).ok()?).ok()
    }

    /// How the VMM ended, once it has.
    pub fn read_exit(&self) -> Option<ExitRecord> {
        serde_json::from_slice(&std::fs::read(&self.exit_file).ok()?).ok()
    }
}

/// Starts `program args` under a shim (this executable's `vmm-shim`), in a new process
/// group so signals to the agent's group do not reach it.
pub fn spawn_shim(
    agent_exe: &Path,
    files: &ShimFiles,
    program: &Path,
    args: &[String],
) -> Result<Child, ProcessError> {
    let _ = std::fs::remove_file(&files.pid_file);
    let _ = std::fs::remove_file(&files.exit_file);
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&files.log_file)
        .map_err(|source| ProcessError::Spawn {
            program: files.log_file.display().to_string(),
            source,
        })?;
    Command::new(agent_exe)
        .arg("vmm-shim")
        .arg("--pid-file")
        .arg(&files.pid_file)
        .arg("--exit-file")
        .arg(&files.exit_file)
        .arg("--")
        .arg(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .process_group(0)
        .spawn()
        .map_err(|source| ProcessError::Spawn {
            program: agent_exe.display().to_string(),
            source,
        })
}

/// The shim's body: runs `program args`, records its pid, waits, records how it ended.
/// Returns the shim's exit code.
pub fn run_shim(pid_file: &Path, exit_file: &Path, program: &Path, args: &[String]) -> i32 {
    let mut child = match Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
    {
        Ok(c) => c,
        Err(e) => {
            eprintln!("vmm-shim: cannot start {}: {e}", program.display());
            let rec = ExitRecord {
                code: Some(127),
                signal: None,
            };
            let _ = write_atomic(exit_file, &serde_json::to_vec(&rec).expect("serializes"));
            return 1;
        }
    };
    let pid = child.id() as i32;
    let start = stat(pid).map(|s| s.0).unwrap_or(0);
    let rec = PidRecord { pid, start };
    if let Err(e) = write_atomic(pid_file, &serde_json::to_vec(&rec).expect("serializes")) {
        eprintln!("vmm-shim: {e}");
    }
    let status = loop {
        match child.wait() {
            Ok(s) => break s,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                eprintln!("vmm-shim: wait: {e}");
                return 1;
            }
        }
    };
    use std::os::unix::process::ExitStatusExt;
    let rec = ExitRecord {
        code: status.code(),
        signal: status.signal(),
    };
    match write_atomic(exit_file, &serde_json::to_vec(&rec).expect("serializes")) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("vmm-shim: {e}");
            1
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn our_own_process_is_alive_and_a_wrong_start_time_is_not() {
        let me = std::process::id() as i32;
        let (start, zombie) = stat(me).unwrap();
        assert!(!zombie);
        assert!(alive(me, start));
        assert!(!alive(me, start + 1));
        assert!(stat(i32::MAX).is_none());
    }

    #[test]
    fn the_shim_records_pid_and_exit_status() {
        let dir = tempfile::tempdir().unwrap();
        let files = ShimFiles::in_dir(dir.path());
        let code = run_shim(
            &files.pid_file,
            &files.exit_file,
            Path::new("/bin/sh"),
            &["-c".into(), "exit 7".into()],
        );
        assert_eq!(code, 0);
        assert!(files.read_pid().unwrap().pid > 0);
        assert_eq!(
            files.read_exit(),
            Some(ExitRecord {
                code: Some(7),
                signal: None
            })
        );
        run_shim(
            &files.pid_file,
            &files.exit_file,
            Path::new("/bin/sh"),
            &["-c".into(), "kill -9 $$".into()],
        );
        assert_eq!(
            files.read_exit(),
            Some(ExitRecord {
                code: None,
                signal: Some(9)
            })
        );
    }
}
