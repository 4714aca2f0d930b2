//! The PostgreSQL backend, for several controllers sharing state. A pool of up to
//! [`POOL_SIZE`] connections, opened on demand and dropped when they close; batches run
//! in one transaction, compare-and-swap updates rely on row locks (a concurrent update
//! waits, then finds a new version).
//! Migrations take an advisory lock so controllers starting together migrate once.

use std::sync::{Condvar, Mutex};

use postgres::{Client, NoTls, error::SqlState};

use super::{
    Kind, MIGRATIONS, Record, SAMPLE_INSERT, SAMPLE_PRUNE, SAMPLE_QUERY, SampleFilter, SampleRow,
    Store, StoreError, Write,
};

/// Advisory lock key for migrations ("ferrostk" in ASCII).
const MIGRATION_LOCK: i64 = 0x6665_7272_6f73_746b;

/// Connections a store opens at most (each request that reaches the database holds one
/// for its queries; the API's blocking pool is about this size).
pub const POOL_SIZE: usize = 8;

/// A PostgreSQL database.
pub struct PostgresStore {
    url: String,
    max: usize,
    /// Idle connections, and how many are open in all.
    pool: Mutex<(Vec<Client>, usize)>,
    /// Signalled when a connection goes back or is dropped.
    returned: Condvar,
}

/// A pooled connection; back to the pool on drop unless it closed.
struct Conn<'a> {
    store: &'a PostgresStore,
    client: Option<Client>,
}

impl std::ops::Deref for Conn<'_> {
    type Target = Client;
    fn deref(&self) -> &Client {
        self.client.as_ref().expect("held until drop")
    }
}

impl std::ops::DerefMut for Conn<'_> {
    fn deref_mut(&mut self) -> &mut Client {
        self.client.as_mut().expect("held until drop")
    }
}

impl Drop for Conn<'_> {
    fn drop(&mut self) {
        let client = self.client.take().expect("held until drop");
        let mut pool = self.store.pool.lock().expect("pool lock");
        if client.is_closed() {
            pool.1 -= 1;
        } else {
            pool.0.push(client);
        }
        self.store.returned.notify_one();
    }
}

fn pg(e: postgres::Error) -> StoreError {
    StoreError::Postgres(match e.as_db_error() {
        Some(db) => format!("{}: {}", db.code().code(), db.message()),
        None => e.to_string(),
    })
}

fn kind_from(s: &str) -> Kind {
    Kind::ALL
        .into_iter()
        .find(|k| k.as_str() == s)
        .unwrap_or(Kind::Setting)
}

fn row_to_record(row: &postgres::Row) -> Record {
    let kind: String = row.get(0);
    Record {
        kind: kind_from(&kind),
        id: row.get(1),
        scope: row.get(2),
        name: row.get(3),
        doc: row.get(4),
        version: row.get(5),
    }
}

impl PostgresStore {
    /// Connects to `url` (`postgresql://user@host:port/db` or key=value form) and
    /// migrates the schema.
    pub fn open(url: &str) -> Result<PostgresStore, StoreError> {
        PostgresStore::open_pooled(url, POOL_SIZE)
    }

    /// As [`PostgresStore::open`], with at most `max` connections (at least 1).
    pub fn open_pooled(url: &str, max: usize) -> Result<PostgresStore, StoreError> {
        let client = Client::connect(url, NoTls).map_err(pg)?;
        let store = PostgresStore {
            url: url.to_string(),
            max: max.max(1),
            pool: Mutex::new((vec![client], 1)),
            returned: Condvar::new(),
        };
        store.migrate()?;
        Ok(store)
    }

    /// An idle connection, a new one while fewer than `max` are open, or the next one
    /// given back.
    fn client(&self) -> Result<Conn<'_>, StoreError> {
        let mut pool = self.pool.lock().expect("pool lock");
        loop {
            if let Some(c) = pool.0.pop() {
                if c.is_closed() {
                    pool.1 -= 1;
                    continue;
                }
                return Ok(Conn {
                    store: self,
                    client: Some(c),
                });
            }
            if pool.1 < self.max {
                pool.1 += 1;
                drop(pool);
                return match Client::connect(&self.url, NoTls) {
                    Ok(c) => Ok(Conn {
                        store: self,
                        client: Some(c),
                    }),
                    Err(e) => {
                        self.pool.lock().expect("pool lock").1 -= 1;
                        self.returned.notify_one();
                        Err(pg(e))
                    }
                };
            }
            pool = self.returned.wait(pool).expect("pool lock");
        }
    }

    /// Connections open now (idle or in use).
    pub fn connections(&self) -> usize {
        self.pool.lock().expect("pool lock").1
    }

    fn migrate(&self) -> Result<(), StoreError> {
        let mut c = self.client()?;
        let mut tx = c.transaction().map_err(pg)?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
            .map_err(pg)?;
        tx.batch_execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY)",
        )
        .map_err(pg)?;
        let current: i32 = tx
            .query_one(
                "SELECT COALESCE(MAX(version), 0) FROM schema_migrations",
                &[],
            )
            .map_err(pg)?
            .get(0);
        let current = current as u32;
        let known = MIGRATIONS.len() as u32;
        if current > known {
            return Err(StoreError::TooNew(current, known));
        }
        for (i, step) in MIGRATIONS.iter().enumerate().skip(current as usize) {
            let version = i as i32 + 1;
            tx.batch_execute(step)
                .and_then(|_| {
                    tx.execute(
                        "INSERT INTO schema_migrations (version) VALUES ($1)",
                        &[&version],
                    )
                })
                .map_err(|e| StoreError::Migration(version as u32, Box::new(pg(e))))?;
            tracing::info!(version, "applied schema migration");
        }
        tx.commit().map_err(pg)
    }
}

impl Store for PostgresStore {
    fn engine(&self) -> &'static str {
        "postgres"
    }

    fn get(&self, kind: Kind, id: &str) -> Result<Option<Record>, StoreError> {
        let mut c = self.client()?;
        let rows = c
            .query(
                "SELECT kind, id, scope, name, doc, version FROM records WHERE kind = $1 AND id = $2",
                &[&kind.as_str(), &id],
            )
            .map_err(pg)?;
        Ok(rows.first().map(row_to_record))
    }

    fn get_by_name(
        &self,
        kind: Kind,
        scope: &str,
        name: &str,
    ) -> Result<Option<Record>, StoreError> {
        let mut c = self.client()?;
        let rows = c
            .query(
                "SELECT kind, id, scope, name, doc, version FROM records
                 WHERE kind = $1 AND scope = $2 AND name = $3",
                &[&kind.as_str(), &scope, &name],
            )
            .map_err(pg)?;
        Ok(rows.first().map(row_to_record))
    }

    fn list(&self, kind: Kind, scope: Option<&str>) -> Result<Vec<Record>, StoreError> {
        let mut c = self.client()?;
        let rows = match scope {
            Some(s) => c.query(
                "SELECT kind, id, scope, name, doc, version FROM records
                 WHERE kind = $1 AND scope = $2 ORDER BY id COLLATE \"C\"",
                &[&kind.as_str(), &s],
            ),
            None => c.query(
                "SELECT kind, id, scope, name, doc, version FROM records
                 WHERE kind = $1 ORDER BY id COLLATE \"C\"",
                &[&kind.as_str()],
            ),
        }
        .map_err(pg)?;
        Ok(rows.iter().map(row_to_record).collect())
    }

    fn apply(&self, writes: &[Write]) -> Result<(), StoreError> {
        let mut c = self.client()?;
        let mut tx = c.transaction().map_err(pg)?;
        let conflict = |kind: Kind| {
            move |e: postgres::Error| {
                if e.code() == Some(&SqlState::UNIQUE_VIOLATION) {
                    StoreError::Conflict {
                        kind: kind.as_str(),
                    }
                } else {
                    pg(e)
                }
            }
        };
        for w in writes {
            match w {
                Write::Insert(r) => {
                    tx.execute(
                        "INSERT INTO records (kind, id, scope, name, doc, version)
                         VALUES ($1, $2, $3, $4, $5, 1)",
                        &[&r.kind.as_str(), &r.id, &r.scope, &r.name, &r.doc],
                    )
                    .map_err(conflict(r.kind))?;
                }
                Write::Update(r) => {
                    let n = tx
                        .execute(
                            "UPDATE records SET scope = $3, name = $4, doc = $5, version = version + 1
                             WHERE kind = $1 AND id = $2 AND version = $6",
                            &[&r.kind.as_str(), &r.id, &r.scope, &r.name, &r.doc, &r.version],
                        )
                        .map_err(conflict(r.kind))?;
                    if n != 1 {
                        return Err(StoreError::Stale {
                            kind: r.kind.as_str(),
                            id: r.id.clone(),
                        });
                    }
                }
                Write::Delete(kind, id) => {
                    tx.execute(
                        "DELETE FROM records WHERE kind = $1 AND id = $2",
                        &[&kind.as_str(), id],
                    )
                    .map_err(pg)?;
                }
            }
        }
        tx.commit().map_err(pg)
    }

    fn schema_version(&self) -> Result<u32, StoreError> {
        let mut c = self.client()?;
        let v: i32 = c
            .query_one(
                "SELECT COALESCE(MAX(version), 0) FROM schema_migrations",
                &[],
            )
            .map_err(pg)?
            .get(0);
        Ok(v as u32)
    }

    fn append_samples(&self, rows: &[SampleRow]) -> Result<(), StoreError> {
        let mut c = self.client()?;
        let mut tx = c.transaction().map_err(pg)?;
        insert_samples(&mut tx, rows)?;
        tx.commit().map_err(pg)
    }

    fn query_samples(&self, f: &SampleFilter) -> Result<Vec<SampleRow>, StoreError> {
        let mut c = self.client()?;
        let limit = f.limit;
        let rows = c
            .query(
                SAMPLE_QUERY,
                &[
                    &f.min_granularity,
                    &f.max_granularity,
                    &f.start_ms,
                    &f.end_ms,
                    &f.meter,
                    &f.resource_id,
                    &f.project_id,
                    &limit,
                ],
            )
            .map_err(pg)?;
        Ok(rows
            .iter()
            .map(|r| SampleRow {
                meter: r.get(0),
                resource_id: r.get(1),
                project_id: r.get(2),
                user_id: r.get(3),
                mtype: r.get(4),
                unit: r.get(5),
                granularity: r.get(6),
                ts: r.get(7),
                count: r.get(8),
                sum: r.get(9),
                min: r.get(10),
                max: r.get(11),
                last: r.get(12),
            })
            .collect())
    }

    fn replace_samples(
        &self,
        granularity: i64,
        before_ms: i64,
        rows: &[SampleRow],
    ) -> Result<(), StoreError> {
        let mut c = self.client()?;
        let mut tx = c.transaction().map_err(pg)?;
        tx.execute(SAMPLE_PRUNE, &[&granularity, &before_ms])
            .map_err(pg)?;
        insert_samples(&mut tx, rows)?;
        tx.commit().map_err(pg)
    }
}

fn insert_samples(
    tx: &mut postgres::Transaction<'_>,
    rows: &[SampleRow],
) -> Result<(), StoreError> {
    let stmt = tx.prepare(SAMPLE_INSERT).map_err(pg)?;
    for r in rows {
        tx.execute(
            &stmt,
            &[
                &r.meter,
                &r.resource_id,
                &r.project_id,
                &r.user_id,
                &r.mtype,
                &r.unit,
                &r.granularity,
                &r.ts,
                &r.count,
                &r.sum,
                &r.min,
                &r.max,
                &r.last,
            ],
        )
        .map_err(pg)?;
    }
    Ok(())
}
