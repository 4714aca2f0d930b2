//! Token-bucket rate limiters for drives and interfaces, with Firecracker's semantics: a
//! bucket of `size` tokens refilled at `size` per `refill_time` milliseconds, plus an
//! optional `one_time_burst` spent first. A limiter has a bandwidth bucket (bytes) and an
//! operations bucket (requests or frames); an I/O goes ahead only if both have its tokens.
//!
//! Time is passed in, so the arithmetic is tested without sleeping.

use std::time::{Duration, Instant};

use crate::config::{RateLimiter as RateLimiterConfig, TokenBucket as BucketConfig};

/// One token bucket.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    size: u64,
    refill_ns: u64,
    /// Tokens times `refill_ns`, so refills stay exact in integers.
    budget: u128,
    burst: u64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket from its configuration; `None` when it limits nothing (size or refill
    /// time zero).
    pub fn new(cfg: &BucketConfig, now: Instant) -> Option<TokenBucket> {
        if cfg.size == 0 || cfg.refill_time == 0 {
            return None;
        }
        let refill_ns = cfg.refill_time.saturating_mul(1_000_000);
        Some(TokenBucket {
            size: cfg.size,
            refill_ns,
            budget: u128::from(cfg.size) * u128::from(refill_ns),
            burst: cfg.one_time_burst.unwrap_or(0),
            last: now,
        })
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last).as_nanos();
        self.last = now;
        let cap = u128::from(self.size) * u128::from(self.refill_ns);
        self.budget = (self.budget + elapsed * u128::from(self.size)).min(cap);
    }

    fn tokens(&self) -> u64 {
        (self.budget / u128::from(self.refill_ns)) as u64
    }

    /// Whether `n` tokens are there now (an I/O larger than the bucket passes when full).
    fn available(&mut self, n: u64, now: Instant) -> bool {
        self.refill(now);
        let need = n.saturating_sub(self.burst).min(self.size);
        self.tokens() >= need
    }

    fn consume(&mut self, n: u64) {
        let from_burst = n.min(self.burst);
        self.burst -= from_burst;
        let rest = (n - from_burst).min(self.size);
        self.budget = self
            .budget
            .saturating_sub(u128::from(rest) * u128::from(self.refill_ns));
    }

    /// How long until `n` tokens are there.
    fn wait_for(&self, n: u64) -> Duration {
        let need =
            u128::from(n.saturating_sub(self.burst).min(self.size)) * u128::from(self.refill_ns);
        let missing = need.saturating_sub(self.budget);
        Duration::from_nanos((missing / u128::from(self.size)) as u64 + 1)
    }
}

/// A bandwidth and an operations bucket.
#[derive(Debug, Clone, Default)]
pub struct RateLimiter {
    bandwidth: Option<TokenBucket>,
    ops: Option<TokenBucket>,
}

impl RateLimiter {
    /// A limiter from its configuration (no configuration: unlimited).
    pub fn new(cfg: Option<&RateLimiterConfig>, now: Instant) -> RateLimiter {
        let Some(cfg) = cfg else {
            return RateLimiter::default();
        };
        RateLimiter {
            bandwidth: cfg
                .bandwidth
                .as_ref()
                .and_then(|b| TokenBucket::new(b, now)),
            ops: cfg.ops.as_ref().and_then(|b| TokenBucket::new(b, now)),
        }
    }

    /// Takes one operation and `bytes` if both are available; otherwise takes nothing and
    /// says how long to wait.
    pub fn try_consume(&mut self, bytes: u64, now: Instant) -> Result<(), Duration> {
        let bw_ok = self
            .bandwidth
            .as_mut()
            .is_none_or(|b| b.available(bytes, now));
        let ops_ok = self.ops.as_mut().is_none_or(|b| b.available(1, now));
        if bw_ok && ops_ok {
            if let Some(b) = &mut self.bandwidth {
                b.consume(bytes);
            }
            if let Some(b) = &mut self.ops {
                b.consume(1);
            }
            return Ok(());
        }
        let bw = self.bandwidth.as_ref().map(|b| b.wait_for(bytes));
        let ops = self.ops.as_ref().map(|b| b.wait_for(1));
        Err(bw
            .max(ops)
            .unwrap_or_default()
            .max(Duration::from_micros(100)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bucket(size: u64, refill_time: u64, burst: Option<u64>) -> BucketConfig {
        BucketConfig {
            size,
            one_time_burst: burst,
            refill_time,
        }
    }

    #[test]
    fn bandwidth_refills_at_size_per_refill_time() {
        let t0 = Instant::now();
        let cfg = RateLimiterConfig {
            bandwidth: Some(bucket(1000, 100, None)),
            ops: None,
        };
        let mut l = RateLimiter::new(Some(&cfg), t0);
        assert!(l.try_consume(600, t0).is_ok());
        let wait = l.try_consume(600, t0).unwrap_err();
        // 200 tokens missing at 10 tokens/ms: about 20 ms.
        assert!(
            wait >= Duration::from_millis(19) && wait <= Duration::from_millis(21),
            "{wait:?}"
        );
        assert!(l.try_consume(600, t0 + Duration::from_millis(10)).is_err());
        assert!(l.try_consume(600, t0 + Duration::from_millis(21)).is_ok());
    }

    #[test]
    fn ops_and_one_time_burst() {
        let t0 = Instant::now();
        let cfg = RateLimiterConfig {
            bandwidth: None,
            ops: Some(bucket(2, 1000, Some(3))),
        };
        let mut l = RateLimiter::new(Some(&cfg), t0);
        for _ in 0..5 {
            assert!(l.try_consume(0, t0).is_ok());
        }
        assert!(l.try_consume(0, t0).is_err());
        assert!(l.try_consume(0, t0 + Duration::from_millis(501)).is_ok());
    }

    #[test]
    fn oversize_requests_pass_on_a_full_bucket_and_zero_sizes_limit_nothing() {
        let t0 = Instant::now();
        let cfg = RateLimiterConfig {
            bandwidth: Some(bucket(100, 10, None)),
            ops: Some(bucket(0, 10, None)),
        };
        let mut l = RateLimiter::new(Some(&cfg), t0);
        assert!(l.try_consume(10_000, t0).is_ok());
        assert!(l.try_consume(1, t0).is_err());
        let mut none = RateLimiter::new(None, t0);
        assert!(none.try_consume(u64::MAX, t0).is_ok());
    }
}
