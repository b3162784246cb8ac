//! Fault injection for the KMS and STS APIs and per-operation request
//! statistics.
//!
//! Faults are keyed by operation name (`DescribeCustomKeyStores`,
//! `AssumeRole`), or by `*` for every operation without an entry of its
//! own. Everything is off by default. Each account+Region of KMS has an
//! engine of its own, so the token bucket of `rateLimit` is kept per
//! account, Region and operation, like the real 5 requests/s quota of each
//! custom-key-store operation.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::time::Instant;

/// Key for faults that apply to every operation without its own entry.
pub const ALL_OPERATIONS: &str = "*";

/// The faults of one operation (all optional, all off by default).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct OperationFaults {
    /// Probability (0..=1) that a call answers `ThrottlingException`.
    pub throttle_rate: f64,
    /// Throttle the next N calls.
    pub throttle_next: u32,
    /// Enforce a request quota with a token bucket (KMS: 5 per second).
    pub rate_limit: Option<RateLimit>,
    /// Probability (0..=1) that a call answers `KMSInternalException` (500).
    pub internal_error_rate: f64,
    /// Answer `KMSInternalException` to the next N calls.
    pub internal_error_next: u32,
    /// Added latency before the call is handled.
    pub latency_ms: u64,
    /// Probability (0..=1) that the connection is dropped without an answer.
    pub drop_rate: f64,
    /// Drop the connection of the next N calls.
    pub drop_next: u32,
}

/// Token bucket parameters.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RateLimit {
    /// Sustained requests per second (KMS uses 5).
    #[serde(default = "default_rate")]
    pub per_second: f64,
    /// Bucket size; defaults to `perSecond`.
    #[serde(default)]
    pub burst: Option<f64>,
}

fn default_rate() -> f64 {
    5.0
}

impl Default for RateLimit {
    fn default() -> Self {
        Self {
            per_second: default_rate(),
            burst: None,
        }
    }
}

/// All KMS faults: operation name (or `*`) → faults.
pub type KmsFaults = BTreeMap<String, OperationFaults>;

/// What to do with one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Proceed,
    Throttle,
    InternalError,
    Drop,
}

/// Counters of one operation.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OperationStats {
    pub requests: u64,
    pub throttled: u64,
    pub internal_errors: u64,
    pub dropped: u64,
    /// Error answers by exception name (injected or not).
    pub errors: BTreeMap<String, u64>,
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    last: Instant,
}

#[derive(Default, Debug)]
struct Inner {
    faults: KmsFaults,
    buckets: HashMap<String, Bucket>,
    stats: BTreeMap<String, OperationStats>,
}

/// Thread-safe fault engine shared by the KMS handlers and the control API.
#[derive(Debug, Default)]
pub struct FaultEngine {
    inner: Mutex<Inner>,
}

impl FaultEngine {
    pub fn new(faults: KmsFaults) -> Self {
        Self {
            inner: Mutex::new(Inner {
                faults,
                ..Inner::default()
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding this lock cannot leave counters inconsistent
        // in a way that matters; keep serving.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn faults(&self) -> KmsFaults {
        self.lock().faults.clone()
    }

    /// Replace every fault (buckets restart full).
    pub fn set_all(&self, faults: KmsFaults) {
        let mut inner = self.lock();
        inner.faults = faults;
        inner.buckets.clear();
    }

    /// Set (or with `None` clear) the faults of one operation or of `*`.
    pub fn set(&self, operation: &str, faults: Option<OperationFaults>) {
        let mut inner = self.lock();
        match faults {
            Some(f) => inner.faults.insert(operation.to_string(), f),
            None => inner.faults.remove(operation),
        };
        inner.buckets.clear();
    }

    pub fn stats(&self) -> BTreeMap<String, OperationStats> {
        self.lock().stats.clone()
    }

    pub fn reset_stats(&self) {
        self.lock().stats.clear();
    }

    /// Latency to add before handling `operation`.
    pub fn latency(&self, operation: &str) -> Duration {
        let inner = self.lock();
        let ms = inner
            .faults
            .get(operation)
            .or_else(|| inner.faults.get(ALL_OPERATIONS))
            .map_or(0, |f| f.latency_ms);
        Duration::from_millis(ms)
    }

    /// Count the request and decide whether a fault answers it.
    pub fn admit(&self, operation: &str) -> Verdict {
        let mut guard = self.lock();
        let inner = &mut *guard;
        let stats = inner.stats.entry(operation.to_string()).or_default();
        stats.requests += 1;
        let key = if inner.faults.contains_key(operation) {
            operation
        } else {
            ALL_OPERATIONS
        };
        let Some(f) = inner.faults.get_mut(key) else {
            return Verdict::Proceed;
        };
        let verdict = if f.drop_next > 0 {
            f.drop_next -= 1;
            Verdict::Drop
        } else if chance(f.drop_rate) {
            Verdict::Drop
        } else if f.throttle_next > 0 {
            f.throttle_next -= 1;
            Verdict::Throttle
        } else if !take_token(&mut inner.buckets, operation, f.rate_limit.as_ref())
            || chance(f.throttle_rate)
        {
            Verdict::Throttle
        } else if f.internal_error_next > 0 {
            f.internal_error_next -= 1;
            Verdict::InternalError
        } else if chance(f.internal_error_rate) {
            Verdict::InternalError
        } else {
            Verdict::Proceed
        };
        match verdict {
            Verdict::Drop => stats.dropped += 1,
            Verdict::Throttle => stats.throttled += 1,
            Verdict::InternalError => stats.internal_errors += 1,
            Verdict::Proceed => {}
        }
        verdict
    }

    /// Count a request refused before any fault applies (its credentials
    /// are expired or invalid): a request and an error, no token taken.
    pub fn record_rejected(&self, operation: &str, code: &str) {
        let mut inner = self.lock();
        let stats = inner.stats.entry(operation.to_string()).or_default();
        stats.requests += 1;
        *stats.errors.entry(code.to_string()).or_default() += 1;
    }

    /// Record an error answer by its exception name.
    pub fn record_error(&self, operation: &str, code: &str) {
        let mut inner = self.lock();
        let stats = inner.stats.entry(operation.to_string()).or_default();
        *stats.errors.entry(code.to_string()).or_default() += 1;
    }
}

fn chance(p: f64) -> bool {
    p > 0.0 && rand::random::<f64>() < p
}

/// Refill-on-read token bucket; `None` means no limit.
fn take_token(
    buckets: &mut HashMap<String, Bucket>,
    operation: &str,
    limit: Option<&RateLimit>,
) -> bool {
    let Some(limit) = limit else { return true };
    let rate = limit.per_second.max(0.0);
    let burst = limit.burst.unwrap_or(rate).max(1.0);
    let now = Instant::now();
    let bucket = buckets.entry(operation.to_string()).or_insert(Bucket {
        tokens: burst,
        last: now,
    });
    let elapsed = now.duration_since(bucket.last).as_secs_f64();
    bucket.tokens = (bucket.tokens + elapsed * rate).min(burst);
    bucket.last = now;
    if bucket.tokens >= 1.0 {
        bucket.tokens -= 1.0;
        true
    } else {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_counters_run_out() {
        let engine = FaultEngine::new(KmsFaults::from([(
            "Op".to_string(),
            OperationFaults {
                throttle_next: 2,
                ..Default::default()
            },
        )]));
        assert_eq!(engine.admit("Op"), Verdict::Throttle);
        assert_eq!(engine.admit("Op"), Verdict::Throttle);
        assert_eq!(engine.admit("Op"), Verdict::Proceed);
        assert_eq!(engine.admit("Other"), Verdict::Proceed);
        assert_eq!(engine.stats()["Op"].throttled, 2);
        assert_eq!(engine.stats()["Op"].requests, 3);
    }

    #[tokio::test(start_paused = true)]
    async fn bucket_allows_burst_then_refills() {
        let engine = FaultEngine::new(KmsFaults::from([(
            ALL_OPERATIONS.to_string(),
            OperationFaults {
                rate_limit: Some(RateLimit::default()),
                ..Default::default()
            },
        )]));
        for _ in 0..5 {
            assert_eq!(engine.admit("A"), Verdict::Proceed);
        }
        assert_eq!(engine.admit("A"), Verdict::Throttle);
        // Buckets are per operation.
        assert_eq!(engine.admit("B"), Verdict::Proceed);
        tokio::time::advance(Duration::from_millis(210)).await;
        assert_eq!(engine.admit("A"), Verdict::Proceed);
        assert_eq!(engine.admit("A"), Verdict::Throttle);
    }
}
