//! Scheduling decisions per second at 1 000 simulated nodes, and the time from `server
//! create` to ACTIVE through control split into its steps.
//!
//! Decisions: [`control::compute::scheduler::claim`] (list the nodes, filter, weigh,
//! compare-and-swap the allocation into the best node's record) on nodes registered with
//! [`control::compute::register`], on a SQLite file (WAL, synchronous=FULL, as control
//! runs it) and on a throwaway PostgreSQL 15 (root; skipped with a note otherwise), with
//! 1 and 8 claimers at once, each on its own store connection (as 8 controllers would
//! be; one controller holds one connection).
//!
//! Create to ACTIVE: a real control process (SQLite) with 1 000 nodes registered through
//! `PUT /v1/nodes/{id}`, stand-in agents that accept a placement and report ACTIVE at
//! once (tests/common/sim.rs), servers created one after the other through Nova's API:
//! `api` (POST to 202), `schedule+claim` (202 to the placement arriving at the node's
//! agent: the build task, the claim, signing the image URLs), `notice` (the agent's
//! ACTIVE to the server showing ACTIVE to a client polling every 5 ms). The agent's own
//! build steps come from `cargo bench -p ferrostack-agent --bench create_to_active`.
//!
//! `cargo bench -p control --bench schedule` (root for the PostgreSQL rows; about 2 min).

#[path = "../tests/common/mod.rs"]
mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use control::compute::scheduler::{self, Settings, Weigher};
use control::compute::{AgentInventory, Ratios, Registration, Resources, register};
use control::store::Store;
use serde_json::Value;

const NODES: usize = 1000;

fn percentile(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[((v.len() - 1) as f64 * p).round() as usize]
}

fn populate(store: &dyn Store) {
    for i in 0..NODES {
        let reg = Registration {
            hostname: format!("node-{i:04}"),
            agent_url: Some(format!("http://10.0.{}.{}:7000", i / 250, i % 250)),
            inventory: AgentInventory {
                vcpus: 64,
                memory_mib: 262_144,
                disk_bytes: 4 << 40,
            },
            availability_zone: Some(if i % 2 == 0 { "az1" } else { "az2" }.into()),
            architecture: None,
        };
        register(store, &format!("n{i:04}"), &reg, Ratios::default(), 1_000).unwrap();
    }
}

/// Runs `per_thread` claims on each of `stores.len()` threads; returns (decisions/s,
/// p50 ms, p99 ms).
fn decide(stores: &[Arc<dyn Store>], per_thread: usize, tag: &str) -> (f64, f64, f64) {
    let s = Settings {
        down_after: u64::MAX / 2,
        weigher: Weigher::Spread,
    };
    let start = Instant::now();
    let lat: Vec<f64> = std::thread::scope(|sc| {
        let hs: Vec<_> = stores
            .iter()
            .enumerate()
            .map(|(t, store)| {
                sc.spawn(move || {
                    let mut lat = Vec::with_capacity(per_thread);
                    for i in 0..per_thread {
                        let req = scheduler::Request {
                            server_id: format!("{tag}-{t}-{i}"),
                            project_id: "p".into(),
                            resources: Resources {
                                vcpus: 1,
                                memory_mib: 512,
                                disk_gb: 1,
                            },
                            ..Default::default()
                        };
                        let t0 = Instant::now();
                        scheduler::claim(&**store, &req, &s, 1_000).unwrap();
                        lat.push(t0.elapsed().as_secs_f64() * 1e3);
                    }
                    lat
                })
            })
            .collect();
        hs.into_iter().flat_map(|h| h.join().unwrap()).collect()
    });
    let secs = start.elapsed().as_secs_f64();
    let mut lat = lat;
    let n = lat.len() as f64;
    (
        n / secs,
        percentile(&mut lat, 0.5),
        percentile(&mut lat, 0.99),
    )
}

fn decisions(quick: bool) {
    let per = if quick { 2 } else { 40 };
    println!(
        "scheduling decisions at {NODES} nodes (claim = list + filter + weigh + CAS), {per} claims per claimer"
    );
    println!("store       claimers  decisions/s  p50 ms  p99 ms");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sched.db");
    let first: Arc<dyn Store> = Arc::new(control::store::sqlite::SqliteStore::open(&path).unwrap());
    populate(&*first);
    for &c in &[1usize, 8] {
        let stores: Vec<Arc<dyn Store>> = (0..c)
            .map(|i| {
                if i == 0 {
                    first.clone()
                } else {
                    Arc::new(control::store::sqlite::SqliteStore::open(&path).unwrap()) as _
                }
            })
            .collect();
        let (rate, p50, p99) = decide(&stores, per, &format!("sqlite{c}"));
        println!("sqlite      {c:>8}  {rate:>11.1}  {p50:>6.1}  {p99:>6.1}");
    }
    let Some(pg) = common::pg::Pg::start() else {
        println!("postgres    (skipped: needs root and PostgreSQL)");
        return;
    };
    pg.create_db("sched");
    let url = pg.url("sched");
    let first: Arc<dyn Store> =
        Arc::new(control::store::postgres::PostgresStore::open(&url).unwrap());
    populate(&*first);
    for &c in &[1usize, 8] {
        let stores: Vec<Arc<dyn Store>> = (0..c)
            .map(|i| {
                if i == 0 {
                    first.clone()
                } else {
                    Arc::new(control::store::postgres::PostgresStore::open(&url).unwrap()) as _
                }
            })
            .collect();
        let (rate, p50, p99) = decide(&stores, per, &format!("pg{c}"));
        println!("postgres    {c:>8}  {rate:>11.1}  {p50:>6.1}  {p99:>6.1}");
    }
}

fn create_to_active(quick: bool) {
    use common::sim::{self, Agents, NODE_TOKEN, Node, ServerSpec, Tenant};
    let rounds = if quick { 1 } else { 20 };
    let cloud = common::Cloud::start_with(
        &format!("[compute]\nheartbeat-interval-secs = 600\nnode-token = \"{NODE_TOKEN}\"\n"),
        "",
        "",
    );
    let agents = Agents::start();
    for i in 0..NODES {
        let n = Node {
            id: format!("n{i:04}"),
            az: "nova".into(),
            arch: std::env::consts::ARCH.into(),
            vcpus: 64,
            memory_mib: 262_144,
            disk_gb: 4096,
        };
        sim::register(cloud.port, &agents, &n);
    }
    let t = Tenant::setup(&cloud, &[""], &[("one", 1, 512, 1)]);
    let mut api = Vec::new();
    let mut sched = Vec::new();
    let mut notice = Vec::new();
    let mut total = Vec::new();
    for spec in ServerSpec::many("bench", "one", rounds) {
        let t0 = Instant::now();
        let id = t.create(cloud.port, &spec);
        let t1 = Instant::now();
        let path = format!("/compute/v2.1/servers/{id}");
        let deadline = t0 + Duration::from_secs(60);
        let t3 = loop {
            let r = sim::json_req(cloud.port, "GET", &path, &t.token, &Value::Null);
            if r.json()["server"]["status"] == "ACTIVE" {
                break Instant::now();
            }
            assert!(Instant::now() < deadline, "{}", r.text());
            std::thread::sleep(Duration::from_millis(5));
        };
        let t2 = agents.placements.lock().unwrap().arrived[&id];
        let ms = |a: Instant, b: Instant| (b - a).as_secs_f64() * 1e3;
        api.push(ms(t0, t1));
        sched.push(ms(t1, t2));
        notice.push(ms(t2, t3));
        total.push(ms(t0, t3));
    }
    println!(
        "\nserver create to ACTIVE through control (SQLite, {NODES} nodes, stand-in agents reporting ACTIVE at once), {rounds} servers one after the other"
    );
    println!("step                  median ms  min ms");
    for (name, v) in [
        ("api (POST to 202)", &mut api),
        ("schedule+claim", &mut sched),
        ("notice ACTIVE", &mut notice),
        ("total", &mut total),
    ] {
        let min = v.iter().copied().fold(f64::MAX, f64::min);
        println!("{name:<20}  {:>9.1}  {min:>6.1}", percentile(v, 0.5));
    }
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` runs one quick round.
    let quick = !std::env::args().any(|a| a == "--bench");
    decisions(quick);
    create_to_active(quick);
}
