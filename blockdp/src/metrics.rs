//! Per-queue I/O counters and latency histograms, rendered as Prometheus text.
//!
//! Each queue has one writer (its worker thread), so counting is a relaxed atomic add on a
//! cache line nobody else writes: no lock on the I/O path. The daemon renders every
//! export's counters family by family as `ferrostack_blockdp_io_*`, labelled by volume,
//! queue and operation (bounded: the exports and their queues).

use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

/// Whether requests are counted; on unless a benchmark turns it off.
static COUNTING: AtomicBool = AtomicBool::new(true);

/// Turns I/O counting on or off for the whole process. Off exists only so that
/// `benches/` can measure what counting costs on the I/O path, side by side in one run;
/// the daemon never turns it off.
pub fn set_counting(on: bool) {
    COUNTING.store(on, Ordering::Relaxed);
}

/// The start of a request for [`QueueStats::record`]: the time now, or `None` (no clock
/// read, nothing recorded) when counting is off.
#[inline]
pub fn clock() -> Option<Instant> {
    COUNTING.load(Ordering::Relaxed).then(Instant::now)
}

/// Upper bounds of the latency buckets, in microseconds.
pub const LATENCY_BUCKETS_US: [u64; 12] = [
    10, 25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 50_000, 250_000,
];

/// What kind of request completed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IoKind {
    /// Read.
    Read,
    /// Write.
    Write,
    /// Flush.
    Flush,
    /// Discard or write-zeroes.
    Discard,
    /// Anything else (get-id, rejected requests).
    Other,
}

/// Counters of one queue.
#[derive(Debug, Default)]
#[repr(align(128))]
pub struct QueueStats {
    reads: AtomicU64,
    writes: AtomicU64,
    flushes: AtomicU64,
    discards: AtomicU64,
    others: AtomicU64,
    errors: AtomicU64,
    read_bytes: AtomicU64,
    written_bytes: AtomicU64,
    latency_buckets: [AtomicU64; LATENCY_BUCKETS_US.len()],
    latency_count: AtomicU64,
    latency_sum_ns: AtomicU64,
}

impl QueueStats {
    /// Records one completed request (its bytes count only if it succeeded) that started
    /// at `started` (from [`clock`]; `None`
    /// when counting is off, and then nothing is recorded).
    pub fn record(&self, kind: IoKind, bytes: u64, ok: bool, started: Option<Instant>) {
        let Some(started) = started else {
            return;
        };
        let latency = started.elapsed();
        let bytes = if ok { bytes } else { 0 };
        let r = Ordering::Relaxed;
        match kind {
            IoKind::Read => {
                self.reads.fetch_add(1, r);
                self.read_bytes.fetch_add(bytes, r);
            }
            IoKind::Write => {
                self.writes.fetch_add(1, r);
                self.written_bytes.fetch_add(bytes, r);
            }
            IoKind::Flush => {
                self.flushes.fetch_add(1, r);
            }
            IoKind::Discard => {
                self.discards.fetch_add(1, r);
            }
            IoKind::Other => {
                self.others.fetch_add(1, r);
            }
        }
        if !ok {
            self.errors.fetch_add(1, r);
        }
        let us = latency.as_micros() as u64;
        if let Some(i) = LATENCY_BUCKETS_US.iter().position(|b| us <= *b) {
            self.latency_buckets[i].fetch_add(1, r);
        }
        self.latency_count.fetch_add(1, r);
        self.latency_sum_ns.fetch_add(latency.as_nanos() as u64, r);
    }

    /// Completed reads.
    pub fn reads(&self) -> u64 {
        self.reads.load(Ordering::Relaxed)
    }

    /// Completed writes.
    pub fn writes(&self) -> u64 {
        self.writes.load(Ordering::Relaxed)
    }
}

/// Counters of one volume: one [`QueueStats`] per queue.
#[derive(Debug)]
pub struct VolumeStats {
    /// Per-queue counters, indexed by queue.
    pub queues: Vec<QueueStats>,
}

impl VolumeStats {
    /// Counters for `n` queues.
    pub fn new(n: usize) -> Self {
        VolumeStats {
            queues: (0..n).map(|_| QueueStats::default()).collect(),
        }
    }
}

/// Writes one family's `# HELP` and `# TYPE` lines.
fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// Appends the I/O families of every export to a Prometheus text exposition, family by
/// family (a family's samples must be contiguous), one series per volume and queue.
pub fn render(out: &mut String, exports: &[(&str, &VolumeStats)]) {
    let r = Ordering::Relaxed;
    let series = || {
        exports.iter().flat_map(|(v, st)| {
            st.queues
                .iter()
                .enumerate()
                .map(move |(q, s)| (format!("volume=\"{v}\",queue=\"{q}\""), s))
        })
    };
    family(
        out,
        "ferrostack_blockdp_io_requests_total",
        "counter",
        "Completed virtio-blk requests, by volume, queue and operation.",
    );
    for (l, s) in series() {
        for (op, v) in [
            ("read", &s.reads),
            ("write", &s.writes),
            ("flush", &s.flushes),
            ("discard", &s.discards),
            ("other", &s.others),
        ] {
            let _ = writeln!(
                out,
                "ferrostack_blockdp_io_requests_total{{{l},op=\"{op}\"}} {}",
                v.load(r)
            );
        }
    }
    family(
        out,
        "ferrostack_blockdp_io_errors_total",
        "counter",
        "Requests answered with an error status (or unparseable), by volume and queue.",
    );
    for (l, s) in series() {
        let _ = writeln!(
            out,
            "ferrostack_blockdp_io_errors_total{{{l}}} {}",
            s.errors.load(r)
        );
    }
    family(
        out,
        "ferrostack_blockdp_io_bytes_total",
        "counter",
        "Bytes moved by successful reads and writes, by volume, queue and operation.",
    );
    for (l, s) in series() {
        for (op, v) in [("read", &s.read_bytes), ("write", &s.written_bytes)] {
            let _ = writeln!(
                out,
                "ferrostack_blockdp_io_bytes_total{{{l},op=\"{op}\"}} {}",
                v.load(r)
            );
        }
    }
    family(
        out,
        "ferrostack_blockdp_io_latency_seconds",
        "histogram",
        "Time from taking a request off the queue to completing it, by volume and queue.",
    );
    for (l, s) in series() {
        let mut cumulative = 0;
        for (i, bound) in LATENCY_BUCKETS_US.iter().enumerate() {
            cumulative += s.latency_buckets[i].load(r);
            let le = *bound as f64 / 1e6;
            let _ = writeln!(
                out,
                "ferrostack_blockdp_io_latency_seconds_bucket{{{l},le=\"{le}\"}} {cumulative}"
            );
        }
        let count = s.latency_count.load(r);
        let _ = writeln!(
            out,
            "ferrostack_blockdp_io_latency_seconds_bucket{{{l},le=\"+Inf\"}} {count}\n\
             ferrostack_blockdp_io_latency_seconds_sum{{{l}}} {}\n\
             ferrostack_blockdp_io_latency_seconds_count{{{l}}} {count}",
            s.latency_sum_ns.load(r) as f64 / 1e9
        );
    }
}

/// Appends a gauge family with one unlabelled sample.
pub fn render_gauge(out: &mut String, name: &str, help: &str, value: u64) {
    family(out, name, "gauge", help);
    let _ = writeln!(out, "{name} {value}");
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn counts_and_histogram() {
        let v = VolumeStats::new(2);
        let ago = |us| Instant::now().checked_sub(Duration::from_micros(us));
        v.queues[1].record(IoKind::Read, 4096, true, ago(30));
        v.queues[1].record(IoKind::Write, 512, false, ago(3000));
        let w = VolumeStats::new(1);
        w.queues[0].record(IoKind::Flush, 0, true, Some(Instant::now()));
        let mut out = String::new();
        render(&mut out, &[("vol-1", &v), ("vol-2", &w)]);
        let m = caps::prom::must_scrape("blockdp", &out);
        let q1 = [("volume", "vol-1"), ("queue", "1")];
        let op = |o| [q1[0], q1[1], ("op", o)];
        assert_eq!(
            m.get("ferrostack_blockdp_io_requests_total", &op("read")),
            1.0
        );
        assert_eq!(
            m.get("ferrostack_blockdp_io_bytes_total", &op("read")),
            4096.0
        );
        assert_eq!(
            m.get("ferrostack_blockdp_io_bytes_total", &op("write")),
            0.0
        );
        assert_eq!(m.get("ferrostack_blockdp_io_errors_total", &q1), 1.0);
        let le = |b| [q1[0], q1[1], ("le", b)];
        assert_eq!(
            m.get(
                "ferrostack_blockdp_io_latency_seconds_bucket",
                &le("0.00005")
            ),
            1.0
        );
        assert_eq!(
            m.get("ferrostack_blockdp_io_latency_seconds_bucket", &le("0.005")),
            2.0
        );
        assert_eq!(
            m.sum(
                "ferrostack_blockdp_io_latency_seconds_count",
                &[("queue", "0")]
            ),
            1.0
        );
        assert_eq!(
            m.sum(
                "ferrostack_blockdp_io_requests_total",
                &[("volume", "vol-2")]
            ),
            1.0
        );
    }
}
