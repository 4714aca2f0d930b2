//! The store conformance suite against a real PostgreSQL server started by the test
//! (initdb into a temp dir as the `postgres` user, pg_ctl on a loopback port), plus a
//! whole control running on it, driven over HTTP.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use control::store::Store;

/// A throwaway PostgreSQL server, stopped and deleted on drop.
struct Pg {
    bin: PathBuf,
    dir: tempfile::TempDir,
    port: u16,
}

fn pg_bin() -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .flatten()
        .map(|e| e.path().join("bin"))
        .filter(|p| p.join("initdb").exists())
        .collect();
    dirs.sort();
    dirs.pop()
}

fn as_postgres(bin: &Path, tool: &str, args: &[&str]) -> std::process::Output {
    Command::new("runuser")
        .args(["-u", "postgres", "--"])
        .arg(bin.join(tool))
        .args(args)
        .output()
        .unwrap()
}

impl Pg {
    /// Starts a server, or says why it cannot (SKIP, or a failure under CI=true).
    fn start() -> Option<Pg> {
        if !caps::require(caps::Capability::Root) {
            return None;
        }
        let Some(bin) = pg_bin() else {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "PostgreSQL is not installed (scripts/setup installs postgresql)"
            );
            eprintln!("SKIP: PostgreSQL is not installed");
            return None;
        };
        let dir = tempfile::tempdir().unwrap();
        let st = Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(dir.path())
            .status()
            .unwrap();
        assert!(st.success());
        let data = dir.path().join("data");
        let out = as_postgres(
            &bin,
            "initdb",
            &[
                "-D",
                data.to_str().unwrap(),
                "-A",
                "trust",
                "-U",
                "postgres",
                "-E",
                "UTF8",
                "--no-sync",
            ],
        );
        assert!(out.status.success(), "initdb: {out:?}");
        let port = common::free_port();
        let opts = format!(
            "-p {port} -k {} -c listen_addresses=127.0.0.1 -F",
            dir.path().display()
        );
        let out = as_postgres(
            &bin,
            "pg_ctl",
            &[
                "-D",
                data.to_str().unwrap(),
                "-o",
                &opts,
                "-w",
                "-t",
                "60",
                "-l",
                dir.path().join("log").to_str().unwrap(),
                "start",
            ],
        );
        assert!(out.status.success(), "pg_ctl start: {out:?}");
        Some(Pg { bin, dir, port })
    }

    fn url(&self, db: &str) -> String {
        format!(
            "host=127.0.0.1 port={} user=postgres dbname={db}",
            self.port
        )
    }

    fn create_db(&self, name: &str) {
        let mut c = postgres::Client::connect(&self.url("postgres"), postgres::NoTls).unwrap();
        c.batch_execute(&format!("CREATE DATABASE {name}")).unwrap();
    }
}

impl Drop for Pg {
    fn drop(&mut self) {
        let data = self.dir.path().join("data");
        let _ = as_postgres(
            &self.bin,
            "pg_ctl",
            &[
                "-D",
                data.to_str().unwrap(),
                "-m",
                "immediate",
                "-w",
                "stop",
            ],
        );
    }
}

#[test]
fn store_conformance_on_postgres_and_two_controllers_share_it() {
    let Some(pg) = Pg::start() else { return };
    pg.create_db("conformance");
    let store = control::store::postgres::PostgresStore::open(&pg.url("conformance")).unwrap();
    control::store::conformance::run(&store);
    // A second connection (another controller) migrates nothing and sees the same data.
    let other = control::store::postgres::PostgresStore::open(&pg.url("conformance")).unwrap();
    assert_eq!(
        other.schema_version().unwrap(),
        store.schema_version().unwrap()
    );
    assert_eq!(
        other.list(control::store::Kind::Project, None).unwrap(),
        store.list(control::store::Kind::Project, None).unwrap()
    );
    // Compare-and-swap across connections: the second writer of a version loses.
    let rec = store
        .get(control::store::Kind::Project, "p1")
        .unwrap()
        .unwrap();
    store.update(rec.with_doc(rec.name.as_deref(), &1)).unwrap();
    assert!(matches!(
        other.update(rec.with_doc(rec.name.as_deref(), &2)),
        Err(control::store::StoreError::Stale { .. })
    ));
}

#[test]
fn control_runs_on_postgres() {
    let Some(pg) = Pg::start() else { return };
    pg.create_db("control");
    let url = pg.url("control");
    let cloud = common::Cloud::start_with_store("postgres", &url);
    let (admin, _) = cloud.token("admin", common::ADMIN_PASSWORD, "admin");
    let r = cloud.json(
        "POST",
        "/v3/projects",
        Some(&admin),
        &serde_json::json!({"project": {"name": "pgdemo"}}),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    let r = cloud.json(
        "POST",
        "/image/v2/images",
        Some(&admin),
        &serde_json::json!({"name": "pgimg"}),
    );
    assert_eq!(r.status, 201);
    let id = r.json()["id"].as_str().unwrap().to_string();
    let r = cloud.req(
        "PUT",
        &format!("/image/v2/images/{id}/file"),
        Some(&admin),
        &[("content-type", "application/octet-stream")],
        b"postgres-backed image",
    );
    assert_eq!(r.status, 204, "{}", r.text());
    // The rows are in PostgreSQL.
    let mut c = postgres::Client::connect(&url, postgres::NoTls).unwrap();
    let n: i64 = c
        .query_one(
            "SELECT COUNT(*) FROM records WHERE kind = 'project' AND name = 'pgdemo'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(n, 1);
    let doc: String = c
        .query_one(
            "SELECT doc FROM records WHERE kind = 'image' AND id = $1",
            &[&id],
        )
        .unwrap()
        .get(0);
    assert!(doc.contains("\"status\":\"active\""), "{doc}");
}

#[test]
fn the_connection_pool_is_bounded_shared_and_survives_killed_backends() {
    let Some(pg) = Pg::start() else { return };
    pg.create_db("pool");
    let store = std::sync::Arc::new(
        control::store::postgres::PostgresStore::open_pooled(&pg.url("pool"), 3).unwrap(),
    );
    use control::store::{Kind, Record};
    for i in 0..20 {
        store
            .insert(Record::new(
                Kind::Project,
                &format!("p{i:02}"),
                "d",
                None,
                &i,
            ))
            .unwrap();
    }
    // Eight threads share at most three connections and all read the same rows.
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let s = store.clone();
            std::thread::spawn(move || {
                for _ in 0..25 {
                    assert_eq!(s.list(Kind::Project, Some("d")).unwrap().len(), 20);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let open = store.connections();
    assert!((1..=3).contains(&open), "{open} connections");
    // The server drops every connection: the next calls reconnect.
    let mut admin = postgres::Client::connect(&pg.url("postgres"), postgres::NoTls).unwrap();
    let killed: i64 = admin
        .query_one(
            "SELECT COUNT(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = 'pool'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(killed as usize, open);
    let mut answered = 0;
    for _ in 0..(open + 2) {
        // A connection killed while idle fails once, when it is next used; then the pool
        // drops it and opens a new one.
        if store.get(Kind::Project, "p07").is_ok_and(|r| r.is_some()) {
            answered += 1;
        }
    }
    assert!(answered >= 2, "{answered}");
    assert!(store.connections() <= 3);
}
