//! Per-queue I/O counters and latency histograms, rendered as Prometheus text.
//!
//! Each queue has one writer (its worker thread), so counting is a relaxed atomic add on a
//! cache line nobody else writes: no lock on the I/O path.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

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
    /// Records one completed request.
    pub fn record(&self, kind: IoKind, bytes: u64, ok: bool, latency: Duration) {
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

    /// Appends this volume's series to a Prometheus text exposition.
    pub fn render(&self, volume: &str, out: &mut String) {
        for (q, s) in self.queues.iter().enumerate() {
            let l = format!("volume=\"{volume}\",queue=\"{q}\"");
            let r = Ordering::Relaxed;
            for (op, v) in [
                ("read", &s.reads),
                ("write", &s.writes),
                ("flush", &s.flushes),
                ("discard", &s.discards),
                ("other", &s.others),
            ] {
                let _ = writeln!(
                    out,
                    "ferrostack_blockdp_requests_total{{{l},op=\"{op}\"}} {}",
                    v.load(r)
                );
            }
            let _ = writeln!(
                out,
                "ferrostack_blockdp_errors_total{{{l}}} {}",
                s.errors.load(r)
            );
            let _ = writeln!(
                out,
                "ferrostack_blockdp_read_bytes_total{{{l}}} {}",
                s.read_bytes.load(r)
            );
            let _ = writeln!(
                out,
                "ferrostack_blockdp_written_bytes_total{{{l}}} {}",
                s.written_bytes.load(r)
            );
            let mut cumulative = 0;
            for (i, bound) in LATENCY_BUCKETS_US.iter().enumerate() {
                cumulative += s.latency_buckets[i].load(r);
                let le = *bound as f64 / 1e6;
                let _ = writeln!(
                    out,
                    "ferrostack_blockdp_request_latency_seconds_bucket{{{l},le=\"{le}\"}} {cumulative}"
                );
            }
            let count = s.latency_count.load(r);
            let _ = writeln!(
                out,
                "ferrostack_blockdp_request_latency_seconds_bucket{{{l},le=\"+Inf\"}} {count}"
            );
            let _ = writeln!(
                out,
                "ferrostack_blockdp_request_latency_seconds_sum{{{l}}} {}",
                s.latency_sum_ns.load(r) as f64 / 1e9
            );
            let _ = writeln!(
                out,
                "ferrostack_blockdp_request_latency_seconds_count{{{l}}} {count}"
            );
        }
    }
}

/// The `# HELP`/`# TYPE` preamble for the series [`VolumeStats::render`] writes.
pub const PREAMBLE: &str = "\
# HELP ferrostack_blockdp_requests_total Completed virtio-blk requests by operation.
# TYPE ferrostack_blockdp_requests_total counter
# HELP ferrostack_blockdp_errors_total Requests answered with an error status.
# TYPE ferrostack_blockdp_errors_total counter
# HELP ferrostack_blockdp_read_bytes_total Bytes read by completed requests.
# TYPE ferrostack_blockdp_read_bytes_total counter
# HELP ferrostack_blockdp_written_bytes_total Bytes written by completed requests.
# TYPE ferrostack_blockdp_written_bytes_total counter
# HELP ferrostack_blockdp_request_latency_seconds Time from taking a request off the queue to completing it.
# TYPE ferrostack_blockdp_request_latency_seconds histogram
";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_histogram() {
        let v = VolumeStats::new(2);
        v.queues[1].record(IoKind::Read, 4096, true, Duration::from_micros(30));
        v.queues[1].record(IoKind::Write, 512, false, Duration::from_micros(3000));
        let mut out = String::new();
        v.render("vol-1", &mut out);
        assert!(out.contains(
            "ferrostack_blockdp_requests_total{volume=\"vol-1\",queue=\"1\",op=\"read\"} 1"
        ));
        assert!(
            out.contains("ferrostack_blockdp_read_bytes_total{volume=\"vol-1\",queue=\"1\"} 4096")
        );
        assert!(out.contains("ferrostack_blockdp_errors_total{volume=\"vol-1\",queue=\"1\"} 1"));
        assert!(out.contains("ferrostack_blockdp_request_latency_seconds_bucket{volume=\"vol-1\",queue=\"1\",le=\"0.00005\"} 1"));
        assert!(out.contains("ferrostack_blockdp_request_latency_seconds_bucket{volume=\"vol-1\",queue=\"1\",le=\"0.005\"} 2"));
        assert!(out.contains(
            "ferrostack_blockdp_request_latency_seconds_count{volume=\"vol-1\",queue=\"0\"} 0"
        ));
    }
}
