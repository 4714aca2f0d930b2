//! The embedded SQLite backend: one file, WAL journal, `synchronous = FULL` so a write is
//! on disk before it is acknowledged.

use std::path::Path;
use std::sync::Mutex;

use rusqlite::{Connection, OptionalExtension, params};

use super::{
    Kind, MIGRATIONS, Record, SAMPLE_INSERT, SAMPLE_PRUNE, SAMPLE_QUERY, SampleFilter, SampleRow,
    Store, StoreError, Write,
};

/// A SQLite database file.
pub struct SqliteStore {
    conn: Mutex<Connection>,
}

fn sql(e: rusqlite::Error) -> StoreError {
    StoreError::Sqlite(e)
}

fn kind_from(s: &str) -> Kind {
    Kind::ALL
        .into_iter()
        .find(|k| k.as_str() == s)
        .unwrap_or(Kind::Setting)
}

fn row_to_record(row: &rusqlite::Row<'_>) -> rusqlite::Result<Record> {
    let kind: String = row.get(0)?;
    Ok(Record {
        kind: kind_from(&kind),
        id: row.get(1)?,
        scope: row.get(2)?,
        name: row.get(3)?,
        doc: row.get(4)?,
        version: row.get(5)?,
    })
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path` and migrates it.
    pub fn open(path: &Path) -> Result<SqliteStore, StoreError> {
        if let Some(dir) = path.parent()
            && !dir.as_os_str().is_empty()
        {
            std::fs::create_dir_all(dir)
                .map_err(|e| sql(rusqlite::Error::ToSqlConversionFailure(Box::new(e))))?;
        }
        let conn = Connection::open(path).map_err(sql)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(sql)?;
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(sql)?;
        conn.busy_timeout(std::time::Duration::from_secs(10))
            .map_err(sql)?;
        let store = SqliteStore {
            conn: Mutex::new(conn),
        };
        store.migrate()?;
        Ok(store)
    }

    /// An in-memory database (tests).
    pub fn in_memory() -> Result<SqliteStore, StoreError> {
        let store = SqliteStore {
            conn: Mutex::new(Connection::open_in_memory().map_err(sql)?),
        };
        store.migrate()?;
        Ok(store)
    }

    fn migrate(&self) -> Result<(), StoreError> {
        let mut conn = self.conn.lock().expect("store lock");
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY)",
        )
        .map_err(sql)?;
        let current: u32 = conn
            .query_row(
                "SELECT COALESCE(MAX(version), 0) FROM schema_migrations",
                [],
                |r| r.get(0),
            )
            .map_err(sql)?;
        let known = MIGRATIONS.len() as u32;
        if current > known {
            return Err(StoreError::TooNew(current, known));
        }
        for (i, step) in MIGRATIONS.iter().enumerate().skip(current as usize) {
            let version = i as u32 + 1;
            let run = |conn: &mut Connection| -> rusqlite::Result<()> {
                let tx = conn.transaction()?;
                tx.execute_batch(step)?;
                tx.execute(
                    "INSERT INTO schema_migrations (version) VALUES (?1)",
                    [version],
                )?;
                tx.commit()
            };
            run(&mut conn).map_err(|e| StoreError::Migration(version, Box::new(sql(e))))?;
            tracing::info!(version, "applied schema migration");
        }
        Ok(())
    }
}

fn is_unique_violation(e: &rusqlite::Error) -> bool {
    matches!(e, rusqlite::Error::SqliteFailure(f, _)
        if f.code == rusqlite::ErrorCode::ConstraintViolation)
}

impl Store for SqliteStore {
    fn engine(&self) -> &'static str {
        "sqlite"
    }

    fn get(&self, kind: Kind, id: &str) -> Result<Option<Record>, StoreError> {
        let conn = self.conn.lock().expect("store lock");
        conn.prepare_cached(
            "SELECT kind, id, scope, name, doc, version FROM records WHERE kind = ?1 AND id = ?2",
        )
        .map_err(sql)?
        .query_row(params![kind.as_str(), id], row_to_record)
        .optional()
        .map_err(sql)
    }

    fn get_by_name(
        &self,
        kind: Kind,
        scope: &str,
        name: &str,
    ) -> Result<Option<Record>, StoreError> {
        let conn = self.conn.lock().expect("store lock");
        conn.prepare_cached(
            "SELECT kind, id, scope, name, doc, version FROM records
             WHERE kind = ?1 AND scope = ?2 AND name = ?3",
        )
        .map_err(sql)?
        .query_row(params![kind.as_str(), scope, name], row_to_record)
        .optional()
        .map_err(sql)
    }

    fn list(&self, kind: Kind, scope: Option<&str>) -> Result<Vec<Record>, StoreError> {
        let conn = self.conn.lock().expect("store lock");
        let rows = match scope {
            Some(scope) => conn
                .prepare_cached(
                    "SELECT kind, id, scope, name, doc, version FROM records
                     WHERE kind = ?1 AND scope = ?2 ORDER BY id",
                )
                .map_err(sql)?
                .query_map(params![kind.as_str(), scope], row_to_record)
                .map_err(sql)?
                .collect::<Result<Vec<_>, _>>(),
            None => conn
                .prepare_cached(
                    "SELECT kind, id, scope, name, doc, version FROM records
                     WHERE kind = ?1 ORDER BY id",
                )
                .map_err(sql)?
                .query_map(params![kind.as_str()], row_to_record)
                .map_err(sql)?
                .collect::<Result<Vec<_>, _>>(),
        };
        rows.map_err(sql)
    }

    fn apply(&self, writes: &[Write]) -> Result<(), StoreError> {
        let mut conn = self.conn.lock().expect("store lock");
        let tx = conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(sql)?;
        for w in writes {
            match w {
                Write::Insert(r) => {
                    tx.prepare_cached(
                        "INSERT INTO records (kind, id, scope, name, doc, version)
                         VALUES (?1, ?2, ?3, ?4, ?5, 1)",
                    )
                    .map_err(sql)?
                    .execute(params![r.kind.as_str(), r.id, r.scope, r.name, r.doc])
                    .map_err(|e| {
                        if is_unique_violation(&e) {
                            StoreError::Conflict {
                                kind: r.kind.as_str(),
                            }
                        } else {
                            sql(e)
                        }
                    })?;
                }
                Write::Update(r) => {
                    let n = tx
                        .prepare_cached(
                            "UPDATE records SET scope = ?3, name = ?4, doc = ?5, version = version + 1
                             WHERE kind = ?1 AND id = ?2 AND version = ?6",
                        )
                        .map_err(sql)?
                        .execute(params![
                            r.kind.as_str(),
                            r.id,
                            r.scope,
                            r.name,
                            r.doc,
                            r.version
                        ])
                        .map_err(|e| {
                            if is_unique_violation(&e) {
                                StoreError::Conflict {
                                    kind: r.kind.as_str(),
                                }
                            } else {
                                sql(e)
                            }
                        })?;
                    if n != 1 {
                        return Err(StoreError::Stale {
                            kind: r.kind.as_str(),
                            id: r.id.clone(),
                        });
                    }
                }
                Write::Delete(kind, id) => {
                    tx.prepare_cached("DELETE FROM records WHERE kind = ?1 AND id = ?2")
                        .map_err(sql)?
                        .execute(params![kind.as_str(), id])
                        .map_err(sql)?;
                }
            }
        }
        tx.commit().map_err(sql)
    }

    fn schema_version(&self) -> Result<u32, StoreError> {
        let conn = self.conn.lock().expect("store lock");
        conn.query_row(
            "SELECT COALESCE(MAX(version), 0) FROM schema_migrations",
            [],
            |r| r.get(0),
        )
        .map_err(sql)
    }

    fn append_samples(&self, rows: &[SampleRow]) -> Result<(), StoreError> {
        let mut conn = self.conn.lock().expect("store lock");
        let tx = conn.transaction().map_err(sql)?;
        insert_samples(&tx, rows)?;
        tx.commit().map_err(sql)
    }

    fn query_samples(&self, f: &SampleFilter) -> Result<Vec<SampleRow>, StoreError> {
        let conn = self.conn.lock().expect("store lock");
        let mut stmt = conn.prepare_cached(SAMPLE_QUERY).map_err(sql)?;
        let rows = stmt
            .query_map(
                params![
                    f.min_granularity,
                    f.max_granularity,
                    f.start_ms,
                    f.end_ms,
                    f.meter,
                    f.resource_id,
                    f.project_id,
                    f.limit
                ],
                |r| {
                    Ok(SampleRow {
                        meter: r.get(0)?,
                        resource_id: r.get(1)?,
                        project_id: r.get(2)?,
                        user_id: r.get(3)?,
                        mtype: r.get(4)?,
                        unit: r.get(5)?,
                        granularity: r.get(6)?,
                        ts: r.get(7)?,
                        count: r.get(8)?,
                        sum: r.get(9)?,
                        min: r.get(10)?,
                        max: r.get(11)?,
                        last: r.get(12)?,
                    })
                },
            )
            .map_err(sql)?;
        rows.collect::<Result<Vec<_>, _>>().map_err(sql)
    }

    fn replace_samples(
        &self,
        granularity: i64,
        before_ms: i64,
        rows: &[SampleRow],
    ) -> Result<(), StoreError> {
        let mut conn = self.conn.lock().expect("store lock");
        let tx = conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(sql)?;
        tx.prepare_cached(SAMPLE_PRUNE)
            .map_err(sql)?
            .execute(params![granularity, before_ms])
            .map_err(sql)?;
        insert_samples(&tx, rows)?;
        tx.commit().map_err(sql)
    }
}

fn insert_samples(tx: &rusqlite::Transaction<'_>, rows: &[SampleRow]) -> Result<(), StoreError> {
    let mut stmt = tx.prepare_cached(SAMPLE_INSERT).map_err(sql)?;
    for r in rows {
        stmt.execute(params![
            r.meter,
            r.resource_id,
            r.project_id,
            r.user_id,
            r.mtype,
            r.unit,
            r.granularity,
            r.ts,
            r.count,
            r.sum,
            r.min,
            r.max,
            r.last
        ])
        .map_err(sql)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conformance_in_memory() {
        super::super::conformance::run(&SqliteStore::in_memory().unwrap());
    }

    #[test]
    fn file_survives_reopen_and_migrations_run_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/control.db");
        {
            let s = SqliteStore::open(&path).unwrap();
            s.insert(Record::new(Kind::Role, "r1", "", Some("admin"), &"x"))
                .unwrap();
        }
        let s = SqliteStore::open(&path).unwrap();
        assert_eq!(s.schema_version().unwrap(), MIGRATIONS.len() as u32);
        assert_eq!(s.get(Kind::Role, "r1").unwrap().unwrap().doc, "\"x\"");
    }

    #[test]
    fn a_newer_schema_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("control.db");
        drop(SqliteStore::open(&path).unwrap());
        let c = Connection::open(&path).unwrap();
        c.execute("INSERT INTO schema_migrations (version) VALUES (999)", [])
            .unwrap();
        drop(c);
        assert!(matches!(
            SqliteStore::open(&path),
            Err(StoreError::TooNew(999, _))
        ));
    }
}
