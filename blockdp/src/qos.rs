//! Per-volume QoS: token buckets for IOPS and bytes per second.
//!
//! A request takes its cost from the bucket even when that drives it below zero, and then
//! waits until the bucket is back at zero: requests larger than the burst still pass, and
//! over any window longer than the burst the rate is exact.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// Limits set through the API; `None` means unlimited.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QosLimits {
    /// I/O operations per second (reads and writes).
    pub iops: Option<u64>,
    /// Bytes per second (read plus written).
    pub bytes_per_sec: Option<u64>,
}

/// A token bucket with debt.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket refilling at `rate` per second, holding at most `burst`.
    pub fn new(rate: u64, burst: f64, now: Instant) -> Self {
        TokenBucket {
            rate: rate as f64,
            burst,
            tokens: burst,
            last: now,
        }
    }

    /// Takes `cost` tokens at `now` and returns how long the caller must wait before going on.
    pub fn reserve(&mut self, cost: f64, now: Instant) -> Duration {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        self.tokens -= cost;
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens / self.rate)
        }
    }
}

/// The throttle of one volume, shared by its queues.
#[derive(Debug, Default)]
pub struct Throttle {
    enabled: AtomicBool,
    state: Mutex<ThrottleState>,
}

#[derive(Debug, Default)]
struct ThrottleState {
    limits: QosLimits,
    iops: Option<TokenBucket>,
    bytes: Option<TokenBucket>,
}

impl Throttle {
    /// Installs new limits (replacing the buckets).
    pub fn set(&self, limits: QosLimits) {
        let now = Instant::now();
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        // A tenth of a second of burst keeps the rate accurate over short windows.
        st.iops = limits
            .iops
            .filter(|r| *r > 0)
            .map(|r| TokenBucket::new(r, (r as f64 / 10.0).max(1.0), now));
        st.bytes = limits
            .bytes_per_sec
            .filter(|r| *r > 0)
            .map(|r| TokenBucket::new(r, (r as f64 / 10.0).max(4096.0), now));
        st.limits = limits;
        self.enabled
            .store(st.iops.is_some() || st.bytes.is_some(), Ordering::Release);
    }

    /// The limits in force.
    pub fn limits(&self) -> QosLimits {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).limits
    }

    /// How long an I/O of `bytes` must wait; zero (and no lock) when unlimited.
    pub fn admit(&self, bytes: u64) -> Duration {
        if !self.enabled.load(Ordering::Acquire) {
            return Duration::ZERO;
        }
        let now = Instant::now();
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let a = st
            .iops
            .as_mut()
            .map_or(Duration::ZERO, |b| b.reserve(1.0, now));
        let b = st
            .bytes
            .as_mut()
            .map_or(Duration::ZERO, |b| b.reserve(bytes as f64, now));
        a.max(b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_allows_burst_then_paces() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(100, 10.0, t0);
        for _ in 0..10 {
            assert_eq!(b.reserve(1.0, t0), Duration::ZERO);
        }
        // The 11th op owes one token: 10 ms at 100/s.
        let wait = b.reserve(1.0, t0);
        assert!((wait.as_secs_f64() - 0.01).abs() < 1e-9, "{wait:?}");
        // After waiting it out and 50 ms more, five more ops are free.
        let t1 = t0 + Duration::from_millis(60);
        for _ in 0..5 {
            assert_eq!(b.reserve(1.0, t1), Duration::ZERO);
        }
        assert!(b.reserve(1.0, t1) > Duration::ZERO);
    }

    #[test]
    fn large_requests_pass_after_paying_their_debt() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(1000, 100.0, t0);
        let wait = b.reserve(1100.0, t0);
        assert!((wait.as_secs_f64() - 1.0).abs() < 1e-9, "{wait:?}");
    }

    #[test]
    fn long_run_rate_is_exact() {
        // Simulate a client that always waits what it is told: 1000 ops at 200/s take 5 s
        // less the initial burst.
        let t0 = Instant::now();
        let mut b = TokenBucket::new(200, 20.0, t0);
        let mut now = t0;
        for _ in 0..1000 {
            now += b.reserve(1.0, now);
        }
        let secs = (now - t0).as_secs_f64();
        assert!((secs - 4.9).abs() < 0.01, "{secs}");
    }

    #[test]
    fn throttle_unlimited_by_default_and_settable() {
        let t = Throttle::default();
        assert_eq!(t.admit(1 << 30), Duration::ZERO);
        t.set(QosLimits {
            iops: Some(10),
            bytes_per_sec: None,
        });
        assert_eq!(t.limits().iops, Some(10));
        assert_eq!(t.admit(4096), Duration::ZERO); // burst of 1
        assert!(t.admit(4096) > Duration::from_millis(50));
        t.set(QosLimits::default());
        assert_eq!(t.admit(4096), Duration::ZERO);
    }
}
