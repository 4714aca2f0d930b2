//! Meter ingestion into the store: samples per second appended to a SQLite file (WAL,
//! synchronous=FULL, as control runs it) in batches like the agents send, after the same
//! validation the API does (`Sample::into_row`); then an aggregate query over them.
//!
//! `cargo bench -p control --bench meter_ingest` (about 20 s).

use std::time::Instant;

use control::store::Store;
use control::store::sqlite::SqliteStore;
use control::telemetry::{Aggregation, Sample, SampleFilter, aggregate};

const METERS: [&str; 4] = ["cpu", "disk.read.bytes", "network.incoming.bytes", "memory"];

fn batch(n: usize, round: usize) -> Vec<Sample> {
    (0..n)
        .map(|i| {
            let meter = METERS[i % METERS.len()];
            serde_json::from_value(serde_json::json!({
                "meter": meter,
                "type": "cumulative", "unit": "B", "volume": (round * n + i) as f64,
                "resource_id": format!("server-{}", i % 50), "project_id": format!("p{}", i % 5),
                "timestamp": 1_800_000_000.0 + round as f64 + i as f64 / n as f64,
            }))
            .unwrap()
        })
        .collect()
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` runs one quick round.
    let quick = !std::env::args().any(|a| a == "--bench");
    let dir = tempfile::tempdir().unwrap();
    println!("batch_size  batches  samples/s  ms/batch (SQLite file, WAL, synchronous=FULL)");
    for &size in &[10usize, 100, 1000] {
        let store = SqliteStore::open(&dir.path().join(format!("m{size}.db"))).unwrap();
        let total = if quick { size } else { 200_000.min(size * 400) };
        let rounds = total / size;
        let batches: Vec<_> = (0..rounds).map(|r| batch(size, r)).collect();
        let t = Instant::now();
        for b in batches {
            let rows: Vec<_> = b.into_iter().map(|s| s.into_row().unwrap()).collect();
            store.append_samples(&rows).unwrap();
        }
        let secs = t.elapsed().as_secs_f64();
        println!(
            "{size:>10}  {rounds:>7}  {:>9.0}  {:>8.2}",
            total as f64 / secs,
            secs * 1000.0 / rounds as f64
        );
        let mut f = SampleFilter::all();
        f.meter = "cpu".into();
        f.resource_id = "server-0".into();
        let t = Instant::now();
        let rows = store.query_samples(&f).unwrap();
        let m = aggregate(&rows, 60, Aggregation::Rate);
        assert!(quick || !m.is_empty());
        println!(
            "            query+rate over {} rows of one resource: {:.2} ms",
            rows.len(),
            t.elapsed().as_secs_f64() * 1000.0
        );
    }
}
