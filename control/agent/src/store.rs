//! The agent's state on disk: one JSON document, replaced atomically (write a temporary
//! file, fsync it, rename it over the old one, fsync the directory), so a crash at any
//! moment leaves either the old or the new state.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::model::Server;

/// Errors reading or writing the state.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// File I/O failed.
    #[error("{what} {path}")]
    Io {
        /// The operation.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The state file does not parse.
    #[error("state file {path} is corrupt")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },
}

/// Everything the agent persists.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct State {
    /// This node's id (made once, kept forever).
    pub node_id: String,
    /// Servers by id.
    pub servers: BTreeMap<String, Server>,
    /// The network state control pushed last (see [`crate::netsync`]).
    #[serde(default)]
    pub network: crate::netsync::Applied,
    /// Lifecycle events not yet accepted by control (see [`crate::sampler`]).
    #[serde(default)]
    pub events: crate::sampler::Outbox,
}

/// Writes `bytes` to `path` atomically and durably.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    let io = |what, source| StoreError::Io {
        what,
        path: path.to_path_buf(),
        source,
    };
    let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
    let mut f = std::fs::File::create(&tmp).map_err(|e| io("create", e))?;
    f.write_all(bytes).map_err(|e| io("write", e))?;
    f.sync_all().map_err(|e| io("fsync", e))?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(|e| io("rename", e))?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| io("fsync directory of", e))?;
    }
    Ok(())
}

/// Loads the state at `path`; a missing file is a fresh node with a new id.
pub fn load(path: &Path) -> Result<State, StoreError> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|source| StoreError::Corrupt {
            path: path.to_path_buf(),
            source,
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(State {
            node_id: uuid::Uuid::new_v4().to_string(),
            servers: BTreeMap::new(),
            network: Default::default(),
            events: crate::sampler::Outbox {
                seen: Some(BTreeMap::new()),
                ..Default::default()
            },
        }),
        Err(source) => Err(StoreError::Io {
            what: "read",
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Saves the state at `path`.
pub fn save(path: &Path, state: &State) -> Result<(), StoreError> {
    let bytes = serde_json::to_vec_pretty(state).expect("the state serializes");
    write_atomic(path, &bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_round_trips_and_a_fresh_node_gets_an_id() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        let fresh = load(&path).unwrap();
        assert_eq!(fresh.node_id.len(), 36);
        save(&path, &fresh).unwrap();
        assert_eq!(load(&path).unwrap().node_id, fresh.node_id);
        let leftovers: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(leftovers.len(), 1, "no temporary file left behind");
        std::fs::write(&path, b"{not json").unwrap();
        assert!(matches!(load(&path), Err(StoreError::Corrupt { .. })));
    }
}
