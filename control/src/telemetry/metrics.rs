//! control's own `/metrics` (Prometheus text): request counts and latency by API, method
//! class and status class, meters and events ingested, alarm evaluations, transitions and
//! webhook calls. Lock-free: preallocated relaxed atomics.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// The APIs requests are counted under.
pub const APIS: [&str; 7] = [
    "identity",
    "image",
    "telemetry",
    "compute",
    "network",
    "other",
    "volume",
];
const METHODS: [&str; 6] = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"];
const METHOD_OTHER: usize = METHODS.len();
const STATUS: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];
/// Latency bucket bounds, seconds.
const BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

struct Latency {
    buckets: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    sum_us: AtomicU64,
}

/// What became of one password check (see [`crate::identity::login`]).
#[derive(Debug, Clone, Copy)]
pub enum PasswordCheck {
    /// Checked with Argon2 on the hashing pool.
    Hashed,
    /// Matched a remembered verified secret.
    Cached,
    /// Waited for the same check already running.
    Joined,
    /// Refused: too many checks queued or running.
    Refused,
}

const PASSWORD_CHECKS: [&str; 4] = ["hashed", "cached", "joined", "refused"];

/// The counters.
pub struct Metrics {
    requests: [[[AtomicU64; STATUS.len()]; METHODS.len() + 1]; APIS.len()],
    latency: [Latency; APIS.len()],
    /// Samples stored.
    pub samples_ingested: AtomicU64,
    /// Samples refused (invalid).
    pub samples_rejected: AtomicU64,
    /// Events stored.
    pub events_ingested: AtomicU64,
    /// Rows rolled up or dropped by retention.
    pub rows_compacted: AtomicU64,
    /// Alarm evaluations.
    pub alarm_evaluations: AtomicU64,
    /// Alarm transitions, by new state (ok, alarm, insufficient data).
    pub alarm_transitions: [AtomicU64; 3],
    /// Webhook calls that failed.
    pub webhook_failures: AtomicU64,
    /// Webhook calls answered 2xx.
    pub webhook_calls: AtomicU64,
    /// Password checks, by [`PasswordCheck`].
    password_checks: [AtomicU64; PASSWORD_CHECKS.len()],
}

/// The process-wide counters.
pub static METRICS: Metrics = Metrics::new();

#[allow(clippy::declare_interior_mutable_const)]
const Z: AtomicU64 = AtomicU64::new(0);

impl Metrics {
    const fn new() -> Metrics {
        #[allow(clippy::declare_interior_mutable_const)]
        const L: Latency = Latency {
            buckets: [Z; BUCKETS.len()],
            count: Z,
            sum_us: Z,
        };
        #[allow(clippy::declare_interior_mutable_const)]
        const S: [AtomicU64; STATUS.len()] = [Z; STATUS.len()];
        #[allow(clippy::declare_interior_mutable_const)]
        const M: [[AtomicU64; STATUS.len()]; METHODS.len() + 1] = [S; METHODS.len() + 1];
        Metrics {
            requests: [M; APIS.len()],
            latency: [L; APIS.len()],
            samples_ingested: Z,
            samples_rejected: Z,
            events_ingested: Z,
            rows_compacted: Z,
            alarm_evaluations: Z,
            alarm_transitions: [Z; 3],
            webhook_failures: Z,
            webhook_calls: Z,
            password_checks: [Z; PASSWORD_CHECKS.len()],
        }
    }

    /// Counts one password check.
    pub fn password_check(&self, what: PasswordCheck) {
        self.password_checks[what as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts one answered request.
    pub fn request(&self, api: usize, method: &http::Method, status: u16, took: Duration) {
        let r = Ordering::Relaxed;
        let api = api.min(APIS.len() - 1);
        let m = METHODS
            .iter()
            .position(|m| *m == method.as_str())
            .unwrap_or(METHOD_OTHER);
        let s = (status / 100).clamp(1, 5) as usize - 1;
        self.requests[api][m][s].fetch_add(1, r);
        let l = &self.latency[api];
        let secs = took.as_secs_f64();
        if let Some(i) = BUCKETS.iter().position(|b| secs <= *b) {
            l.buckets[i].fetch_add(1, r);
        }
        l.count.fetch_add(1, r);
        l.sum_us.fetch_add(took.as_micros() as u64, r);
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let r = Ordering::Relaxed;
        let mut o = String::new();
        let fam = |o: &mut String, name: &str, kind: &str, help: &str| {
            let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} {kind}");
        };
        fam(
            &mut o,
            "ferrostack_control_requests_total",
            "counter",
            "HTTP requests answered, by API, method and status class.",
        );
        for (a, api) in APIS.iter().enumerate() {
            for m in 0..=METHODS.len() {
                let method = METHODS.get(m).copied().unwrap_or("other");
                for (s, status) in STATUS.iter().enumerate() {
                    let v = self.requests[a][m][s].load(r);
                    if v > 0 {
                        let _ = writeln!(
                            o,
                            "ferrostack_control_requests_total{{api=\"{api}\",method=\"{method}\",status=\"{status}\"}} {v}"
                        );
                    }
                }
            }
        }
        fam(
            &mut o,
            "ferrostack_control_request_latency_seconds",
            "histogram",
            "Time from the request's head to the answer's head, by API.",
        );
        for (a, api) in APIS.iter().enumerate() {
            let l = &self.latency[a];
            let mut cum = 0;
            for (i, b) in BUCKETS.iter().enumerate() {
                cum += l.buckets[i].load(r);
                let _ = writeln!(
                    o,
                    "ferrostack_control_request_latency_seconds_bucket{{api=\"{api}\",le=\"{b}\"}} {cum}"
                );
            }
            let count = l.count.load(r);
            let _ = writeln!(
                o,
                "ferrostack_control_request_latency_seconds_bucket{{api=\"{api}\",le=\"+Inf\"}} {count}\n\
                 ferrostack_control_request_latency_seconds_sum{{api=\"{api}\"}} {}\n\
                 ferrostack_control_request_latency_seconds_count{{api=\"{api}\"}} {count}",
                l.sum_us.load(r) as f64 / 1e6
            );
        }
        for (name, help, v) in [
            (
                "ferrostack_control_meter_samples_ingested_total",
                "Meter samples stored.",
                &self.samples_ingested,
            ),
            (
                "ferrostack_control_meter_samples_rejected_total",
                "Meter samples refused as invalid.",
                &self.samples_rejected,
            ),
            (
                "ferrostack_control_events_ingested_total",
                "Lifecycle events stored.",
                &self.events_ingested,
            ),
            (
                "ferrostack_control_meter_rows_compacted_total",
                "Meter rows rolled up or dropped by retention.",
                &self.rows_compacted,
            ),
            (
                "ferrostack_control_alarm_evaluations_total",
                "Alarm rule evaluations.",
                &self.alarm_evaluations,
            ),
            (
                "ferrostack_control_alarm_webhook_calls_total",
                "Alarm webhook calls answered 2xx.",
                &self.webhook_calls,
            ),
            (
                "ferrostack_control_alarm_webhook_failures_total",
                "Alarm webhook calls that failed or were not answered 2xx.",
                &self.webhook_failures,
            ),
        ] {
            fam(&mut o, name, "counter", help);
            let _ = writeln!(o, "{name} {}", v.load(r));
        }
        fam(
            &mut o,
            "ferrostack_control_alarm_transitions_total",
            "counter",
            "Alarm state changes, by the new state.",
        );
        for (i, st) in ["ok", "alarm", "insufficient_data"].iter().enumerate() {
            let _ = writeln!(
                o,
                "ferrostack_control_alarm_transitions_total{{state=\"{st}\"}} {}",
                self.alarm_transitions[i].load(r)
            );
        }
        fam(
            &mut o,
            "ferrostack_control_password_checks_total",
            "counter",
            "Password and application-credential secret checks, by outcome: hashed \
             (Argon2 on the hashing pool), cached (a remembered verified secret), joined \
             (shared a check already running), refused (too many checks waiting: 503).",
        );
        for (i, what) in PASSWORD_CHECKS.iter().enumerate() {
            let _ = writeln!(
                o,
                "ferrostack_control_password_checks_total{{outcome=\"{what}\"}} {}",
                self.password_checks[i].load(r)
            );
        }
        o
    }
}
