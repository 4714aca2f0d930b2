//! Read snapshots of whole kinds, and the cached-only mode that lets a request run on an
//! async worker when everything it reads is in memory.
//!
//! [`super::Versioned`] keeps, for the kinds it is told to, every record of the kind in a
//! [`Snapshot`] indexed by id, name and scope. A snapshot is used while no local write
//! touched its kind and for at most [`SNAPSHOT_TTL`] (so writes by other controllers
//! sharing the store are seen within that time, as with the identity cache). Reads of
//! such kinds never reach the engine while the snapshot is fresh.
//!
//! [`cached_only`] runs a closure in a mode where any store access that would block (a
//! write, a read of a kind without a fresh snapshot) and any other blocking work that
//! checks [`must_block`] (password hashing) fails fast instead; the caller then throws
//! the result away and runs the closure again on the blocking pool.

use std::cell::Cell;
use std::collections::HashMap;
use std::time::Duration;

use super::Record;

/// How long a snapshot may be used without a local write to its kind.
pub const SNAPSHOT_TTL: Duration = Duration::from_secs(2);

/// Every record of one kind, indexed.
#[derive(Debug, Default)]
pub struct Snapshot {
    records: Vec<Record>,
    by_id: HashMap<String, usize>,
    by_name: HashMap<(String, String), usize>,
    by_scope: HashMap<String, Vec<usize>>,
}

impl Snapshot {
    /// Indexes records (as [`super::Store::list`] returns them: ordered by id).
    pub fn build(records: Vec<Record>) -> Snapshot {
        let mut s = Snapshot {
            by_id: HashMap::with_capacity(records.len()),
            ..Snapshot::default()
        };
        for (i, r) in records.iter().enumerate() {
            s.by_id.insert(r.id.clone(), i);
            if let Some(n) = &r.name {
                s.by_name.insert((r.scope.clone(), n.clone()), i);
            }
            s.by_scope.entry(r.scope.clone()).or_default().push(i);
        }
        s.records = records;
        s
    }

    /// One record by id.
    pub fn get(&self, id: &str) -> Option<&Record> {
        self.by_id.get(id).map(|&i| &self.records[i])
    }

    /// One record by scope and name.
    pub fn get_by_name(&self, scope: &str, name: &str) -> Option<&Record> {
        self.by_name
            .get(&(scope.to_string(), name.to_string()))
            .map(|&i| &self.records[i])
    }

    /// Every record, or those of one scope, ordered by id.
    pub fn list(&self, scope: Option<&str>) -> Vec<Record> {
        match scope {
            None => self.records.clone(),
            Some(s) => self
                .by_scope
                .get(s)
                .map(|ix| ix.iter().map(|&i| self.records[i].clone()).collect())
                .unwrap_or_default(),
        }
    }
}

thread_local! {
    /// Set while a closure runs under [`cached_only`].
    static CACHED_ONLY: Cell<bool> = const { Cell::new(false) };
    /// Set when such a closure needed to block.
    static MISSED: Cell<bool> = const { Cell::new(false) };
}

/// Runs `f` in cached-only mode: `Some(result)` if it needed nothing that blocks, `None`
/// if it did (its result, an error made up for the refused access, is dropped). `f` must
/// have no effect before its first store access other than on memory it owns.
pub fn cached_only<T>(f: impl FnOnce() -> T) -> Option<T> {
    struct Reset;
    impl Drop for Reset {
        fn drop(&mut self) {
            CACHED_ONLY.with(|c| c.set(false));
        }
    }
    CACHED_ONLY.with(|c| c.set(true));
    MISSED.with(|m| m.set(false));
    let reset = Reset;
    let out = f();
    drop(reset);
    let missed = MISSED.with(|m| m.replace(false));
    (!missed).then_some(out)
}

/// Whether blocking work must be refused now (inside [`cached_only`]); records the refusal
/// so the closure is run again on the blocking pool.
pub fn must_block() -> bool {
    let inline = CACHED_ONLY.with(Cell::get);
    if inline {
        MISSED.with(|m| m.set(true));
    }
    inline
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Kind;

    #[test]
    fn indexes_by_id_name_and_scope() {
        let s = Snapshot::build(vec![
            Record::new(Kind::Project, "a", "d1", Some("alpha"), &1),
            Record::new(Kind::Project, "b", "d2", Some("alpha"), &2),
            Record::new(Kind::Project, "c", "d1", None, &3),
        ]);
        assert_eq!(s.get("b").unwrap().doc, "2");
        assert!(s.get("z").is_none());
        assert_eq!(s.get_by_name("d2", "alpha").unwrap().id, "b");
        assert!(s.get_by_name("d3", "alpha").is_none());
        let ids: Vec<String> = s.list(Some("d1")).into_iter().map(|r| r.id).collect();
        assert_eq!(ids, ["a", "c"]);
        assert_eq!(s.list(None).len(), 3);
        assert!(s.list(Some("none")).is_empty());
    }

    #[test]
    fn cached_only_reports_a_refusal_and_resets() {
        assert_eq!(cached_only(|| 5), Some(5));
        assert_eq!(cached_only(must_block), None);
        assert!(!must_block(), "outside the mode nothing is refused");
        assert_eq!(cached_only(|| 6), Some(6), "a refusal does not stick");
    }
}
