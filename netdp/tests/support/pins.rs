//! A test's own pin directory under bpffs, removed when the guard drops (even when the
//! test fails), named after the test's tag and this process so parallel runs never meet.

use std::path::{Path, PathBuf};

/// `/sys/fs/bpf/ferrostack-test-<tag>-<pid>`, removed on drop.
pub struct PinDir(PathBuf);

impl PinDir {
    /// The directory for `tag` (not created: loading pinned maps creates it).
    pub fn new(tag: &str) -> PinDir {
        PinDir(PathBuf::from(format!(
            "/sys/fs/bpf/ferrostack-test-{tag}-{}",
            std::process::id()
        )))
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for PinDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
