//! Prometheus metrics: requests by API, method and status, bytes, latency histograms.
//!
//! Every counter is a preallocated atomic indexed by bounded labels (three APIs, eight
//! method classes, the status codes 100-599), so counting a request takes no lock: a
//! handful of relaxed atomic adds. `/metrics` renders the series that have counted
//! something (every family keeps its HELP and TYPE lines even when empty).

use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::api::Api;

/// Latency histogram bucket bounds, in seconds.
pub const BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

/// The APIs requests are counted under, in label order.
const APIS: [Api; 3] = [Api::Swift, Api::S3, Api::Internal];
/// Method labels; anything else counts as `other`, so a client cannot grow the label set.
const METHODS: [&str; 8] = [
    "GET", "HEAD", "PUT", "POST", "DELETE", "COPY", "OPTIONS", "other",
];
/// Status codes counted one by one: 100 to 599 (anything else is clamped into 599).
const STATUS_MIN: u16 = 100;
const STATUSES: usize = 500;

/// Whether requests are counted; on unless a benchmark turns it off.
static COUNTING: AtomicBool = AtomicBool::new(true);

/// Turns request counting on or off for the whole process. Off exists only so that
/// `benches/` can measure what counting costs, side by side in one run; the daemon never
/// turns it off.
pub fn set_counting(on: bool) {
    COUNTING.store(on, Ordering::Relaxed);
}

/// The start of a request for [`Metrics::observe`]: the time now, or `None` (no clock
/// read, nothing recorded) when counting is off.
#[inline]
pub fn clock() -> Option<Instant> {
    COUNTING.load(Ordering::Relaxed).then(Instant::now)
}

fn api_index(api: Api) -> usize {
    match api {
        Api::Swift => 0,
        Api::S3 => 1,
        Api::Internal => 2,
    }
}

fn method_index(method: &str) -> usize {
    METHODS[..METHODS.len() - 1]
        .iter()
        .position(|m| *m == method)
        .unwrap_or(METHODS.len() - 1)
}

/// One latency histogram of atomics.
#[derive(Default)]
struct Histogram {
    buckets: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    sum_ns: AtomicU64,
}

impl Histogram {
    fn observe(&self, elapsed: Duration) {
        let r = Ordering::Relaxed;
        let secs = elapsed.as_secs_f64();
        if let Some(i) = BUCKETS.iter().position(|b| secs <= *b) {
            self.buckets[i].fetch_add(1, r);
        }
        self.count.fetch_add(1, r);
        self.sum_ns
            .fetch_add(u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX), r);
    }
}

/// Per-API counters.
struct PerApi {
    /// `[method][status - 100]`.
    requests: Vec<AtomicU64>,
    /// One histogram per method.
    latency: [Histogram; METHODS.len()],
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
}

impl Default for PerApi {
    fn default() -> Self {
        PerApi {
            requests: (0..METHODS.len() * STATUSES)
                .map(|_| AtomicU64::new(0))
                .collect(),
            latency: Default::default(),
            bytes_in: AtomicU64::new(0),
            bytes_out: AtomicU64::new(0),
        }
    }
}

/// The daemon's counters.
pub struct Metrics {
    apis: [PerApi; APIS.len()],
    /// Corrupt blobs found by reads and the auditor.
    pub quarantined: AtomicU64,
    /// Objects removed by the expirer.
    pub expired: AtomicU64,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            apis: Default::default(),
            quarantined: AtomicU64::new(0),
            expired: AtomicU64::new(0),
        }
    }
}

impl Metrics {
    /// Counts one finished request that began at `started` (from [`clock`]; `None` when
    /// counting is off, and then nothing is recorded).
    pub fn observe(
        &self,
        api: Api,
        method: &str,
        status: u16,
        started: Option<Instant>,
        bytes_in: u64,
        bytes_out: u64,
    ) {
        let Some(started) = started else {
            return;
        };
        let r = Ordering::Relaxed;
        let a = &self.apis[api_index(api)];
        let m = method_index(method);
        let s =
            usize::from(status.clamp(STATUS_MIN, STATUS_MIN + STATUSES as u16 - 1) - STATUS_MIN);
        a.requests[m * STATUSES + s].fetch_add(1, r);
        a.latency[m].observe(started.elapsed());
        a.bytes_in.fetch_add(bytes_in, r);
        a.bytes_out.fetch_add(bytes_out, r);
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let r = Ordering::Relaxed;
        let mut s = String::new();
        family(
            &mut s,
            "ferrostack_objectd_requests_total",
            "counter",
            "Requests served, by API, method and status.",
        );
        for (api, a) in APIS.iter().zip(&self.apis) {
            for (i, n) in a.requests.iter().enumerate() {
                let n = n.load(r);
                if n > 0 {
                    let _ = writeln!(
                        s,
                        "ferrostack_objectd_requests_total{{api=\"{}\",method=\"{}\",status=\"{}\"}} {n}",
                        api.label(),
                        METHODS[i / STATUSES],
                        i % STATUSES + usize::from(STATUS_MIN)
                    );
                }
            }
        }
        family(
            &mut s,
            "ferrostack_objectd_request_latency_seconds",
            "histogram",
            "Time from a request's arrival to its response headers, by API and method.",
        );
        for (api, a) in APIS.iter().zip(&self.apis) {
            for (method, h) in METHODS.iter().zip(&a.latency) {
                let count = h.count.load(r);
                if count == 0 {
                    continue;
                }
                let l = format!("api=\"{}\",method=\"{method}\"", api.label());
                let mut cumulative = 0;
                for (i, b) in BUCKETS.iter().enumerate() {
                    cumulative += h.buckets[i].load(r);
                    let _ = writeln!(
                        s,
                        "ferrostack_objectd_request_latency_seconds_bucket{{{l},le=\"{b}\"}} {cumulative}"
                    );
                }
                let _ = writeln!(
                    s,
                    "ferrostack_objectd_request_latency_seconds_bucket{{{l},le=\"+Inf\"}} {count}\n\
                     ferrostack_objectd_request_latency_seconds_sum{{{l}}} {}\n\
                     ferrostack_objectd_request_latency_seconds_count{{{l}}} {count}",
                    h.sum_ns.load(r) as f64 / 1e9
                );
            }
        }
        for (name, help, pick) in [
            (
                "ferrostack_objectd_received_bytes_total",
                "Request body bytes announced by Content-Length, by API.",
                (|a: &PerApi| a.bytes_in.load(Ordering::Relaxed)) as fn(&PerApi) -> u64,
            ),
            (
                "ferrostack_objectd_sent_bytes_total",
                "Response body bytes (Content-Length; none for HEAD), by API.",
                |a: &PerApi| a.bytes_out.load(Ordering::Relaxed),
            ),
        ] {
            family(&mut s, name, "counter", help);
            for (api, a) in APIS.iter().zip(&self.apis) {
                let _ = writeln!(s, "{name}{{api=\"{}\"}} {}", api.label(), pick(a));
            }
        }
        for (name, help, v) in [
            (
                "ferrostack_objectd_quarantined_blobs_total",
                "Corrupt blobs quarantined by reads and the auditor.",
                &self.quarantined,
            ),
            (
                "ferrostack_objectd_expired_objects_total",
                "Objects removed after their X-Delete-At.",
                &self.expired,
            ),
        ] {
            family(&mut s, name, "counter", help);
            let _ = writeln!(s, "{name} {}", v.load(r));
        }
        s
    }
}

/// Writes one family's `# HELP` and `# TYPE` lines.
fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ago(ms: u64) -> Option<Instant> {
        Instant::now().checked_sub(Duration::from_millis(ms))
    }

    #[test]
    fn renders_counts_and_histograms() {
        let m = Metrics::default();
        m.observe(Api::Swift, "GET", 200, ago(3), 0, 10);
        m.observe(Api::Swift, "GET", 200, ago(30), 0, 10);
        m.observe(Api::S3, "BREW", 405, ago(0), 7, 0);
        m.observe(Api::S3, "PUT", 999, None, 7, 0);
        let p = caps::prom::must_scrape("objectd", &m.render());
        let swift_get = [("api", "swift"), ("method", "GET")];
        assert_eq!(
            p.get(
                "ferrostack_objectd_requests_total",
                &[swift_get[0], swift_get[1], ("status", "200")]
            ),
            2.0
        );
        assert_eq!(
            p.get(
                "ferrostack_objectd_requests_total",
                &[("api", "s3"), ("method", "other"), ("status", "405")]
            ),
            1.0
        );
        assert_eq!(
            p.get(
                "ferrostack_objectd_request_latency_seconds_bucket",
                &[swift_get[0], swift_get[1], ("le", "0.005")]
            ),
            1.0
        );
        assert_eq!(
            p.get(
                "ferrostack_objectd_request_latency_seconds_count",
                &swift_get
            ),
            2.0
        );
        assert_eq!(
            p.get("ferrostack_objectd_sent_bytes_total", &[("api", "swift")]),
            20.0
        );
        assert_eq!(
            p.get("ferrostack_objectd_received_bytes_total", &[("api", "s3")]),
            7.0
        );
        assert_eq!(p.sum("ferrostack_objectd_requests_total", &[]), 3.0);
    }
}
