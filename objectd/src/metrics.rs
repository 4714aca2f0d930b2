//! Prometheus metrics: requests by API, method and status, bytes, latency histograms.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::api::Api;

/// Latency histogram bucket bounds, in seconds.
pub const BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

#[derive(Default)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    sum: f64,
    count: u64,
}

/// The daemon's counters.
#[derive(Default)]
pub struct Metrics {
    requests: Mutex<BTreeMap<(&'static str, String, u16), u64>>,
    latency: Mutex<BTreeMap<&'static str, Histogram>>,
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
    /// Corrupt blobs found by reads and the auditor.
    pub quarantined: AtomicU64,
    /// Objects removed by the expirer.
    pub expired: AtomicU64,
}

impl Metrics {
    /// Counts one finished request.
    pub fn observe(
        &self,
        api: Api,
        method: &str,
        status: u16,
        elapsed: Duration,
        bytes_in: u64,
        bytes_out: u64,
    ) {
        *self
            .requests
            .lock()
            .expect("metrics lock")
            .entry((api.label(), method.to_owned(), status))
            .or_default() += 1;
        let secs = elapsed.as_secs_f64();
        let mut lat = self.latency.lock().expect("metrics lock");
        let h = lat.entry(api.label()).or_default();
        for (i, b) in BUCKETS.iter().enumerate() {
            if secs <= *b {
                h.counts[i] += 1;
            }
        }
        h.sum += secs;
        h.count += 1;
        self.bytes_in.fetch_add(bytes_in, Ordering::Relaxed);
        self.bytes_out.fetch_add(bytes_out, Ordering::Relaxed);
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut s = String::new();
        s.push_str("# HELP ferrostack_objectd_requests_total Requests served, by API, method and status.\n# TYPE ferrostack_objectd_requests_total counter\n");
        for ((api, method, status), n) in self.requests.lock().expect("metrics lock").iter() {
            let _ = writeln!(
                s,
                "ferrostack_objectd_requests_total{{api=\"{api}\",method=\"{method}\",status=\"{status}\"}} {n}"
            );
        }
        s.push_str("# HELP ferrostack_objectd_request_duration_seconds Request latency, by API.\n# TYPE ferrostack_objectd_request_duration_seconds histogram\n");
        for (api, h) in self.latency.lock().expect("metrics lock").iter() {
            for (i, b) in BUCKETS.iter().enumerate() {
                let _ = writeln!(
                    s,
                    "ferrostack_objectd_request_duration_seconds_bucket{{api=\"{api}\",le=\"{b}\"}} {}",
                    h.counts[i]
                );
            }
            let _ = writeln!(
                s,
                "ferrostack_objectd_request_duration_seconds_bucket{{api=\"{api}\",le=\"+Inf\"}} {}\nferrostack_objectd_request_duration_seconds_sum{{api=\"{api}\"}} {}\nferrostack_objectd_request_duration_seconds_count{{api=\"{api}\"}} {}",
                h.count, h.sum, h.count
            );
        }
        let _ = write!(
            s,
            "# HELP ferrostack_objectd_received_bytes_total Request body bytes announced.\n# TYPE ferrostack_objectd_received_bytes_total counter\nferrostack_objectd_received_bytes_total {}\n\
             # HELP ferrostack_objectd_sent_bytes_total Response body bytes.\n# TYPE ferrostack_objectd_sent_bytes_total counter\nferrostack_objectd_sent_bytes_total {}\n\
             # HELP ferrostack_objectd_quarantined_total Corrupt blobs quarantined.\n# TYPE ferrostack_objectd_quarantined_total counter\nferrostack_objectd_quarantined_total {}\n\
             # HELP ferrostack_objectd_expired_objects_total Objects removed after X-Delete-At.\n# TYPE ferrostack_objectd_expired_objects_total counter\nferrostack_objectd_expired_objects_total {}\n",
            self.bytes_in.load(Ordering::Relaxed),
            self.bytes_out.load(Ordering::Relaxed),
            self.quarantined.load(Ordering::Relaxed),
            self.expired.load(Ordering::Relaxed),
        );
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counts_and_histograms() {
        let m = Metrics::default();
        m.observe(Api::Swift, "GET", 200, Duration::from_millis(3), 0, 10);
        m.observe(Api::Swift, "GET", 200, Duration::from_millis(30), 0, 10);
        let text = m.render();
        assert!(text.contains(
            "ferrostack_objectd_requests_total{api=\"swift\",method=\"GET\",status=\"200\"} 2"
        ));
        assert!(text.contains(
            "ferrostack_objectd_request_duration_seconds_bucket{api=\"swift\",le=\"0.005\"} 1"
        ));
        assert!(text.contains("ferrostack_objectd_sent_bytes_total 20"));
    }
}
