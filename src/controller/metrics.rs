//! Prometheus metrics (`/metrics`, OpenMetrics text). Labels are bounded,
//! non-secret values only: step names, error reasons, KMS operation names
//! and outcomes, Regions and connection states.

use crate::api::StepName;
use crate::kms::aws::KmsCallStats;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// KMS call counters per Region, read at scrape time.
/// (account, Region, the calls of the clients of that account and Region).
pub type KmsStatsSource = Box<dyn Fn() -> Vec<(String, String, KmsCallStats)> + Send + Sync>;
/// Number of resources per observed connection state, read at scrape time.
pub type StoreStatesSource = Box<dyn Fn() -> BTreeMap<String, u64> + Send + Sync>;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StepLabel {
    pub step: String,
}

fn step_histogram() -> Histogram {
    // 0.25 s .. ~70 min: a proxy health check up to a slow CONNECTING.
    Histogram::new(exponential_buckets(0.25, 2.0, 15))
}

pub struct Metrics {
    registry: Registry,
    reconciles: Counter,
    failures: Family<ReasonLabel, Counter>,
    step_duration: Family<StepLabel, Histogram, fn() -> Histogram>,
    sources: Arc<Sources>,
}

#[derive(Default)]
struct Sources {
    kms: OnceLock<KmsStatsSource>,
    stores: OnceLock<StoreStatesSource>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("xks_operator");
        let reconciles = Counter::default();
        registry.register("reconciles", "Reconcile passes started", reconciles.clone());
        let failures = Family::<ReasonLabel, Counter>::default();
        registry.register(
            "reconcile_failures",
            "Reconcile passes that failed or stalled, by reason (error category)",
            failures.clone(),
        );
        let step_duration =
            Family::<StepLabel, Histogram, fn() -> Histogram>::new_with_constructor(step_histogram);
        registry.register(
            "step_duration_seconds",
            "Duration of finished operation steps, from start to success or failure",
            step_duration.clone(),
        );
        let sources = Arc::new(Sources::default());
        registry.register_collector(Box::new(ScrapeTime(sources.clone())));
        Self {
            registry,
            reconciles,
            failures,
            step_duration,
            sources,
        }
    }

    /// Where the KMS call counters come from (set once).
    pub fn set_kms_source(&self, source: KmsStatsSource) {
        let _ = self.sources.kms.set(source);
    }

    /// Where the per-connection-state store counts come from (set once).
    pub fn set_store_source(&self, source: StoreStatesSource) {
        let _ = self.sources.stores.set(source);
    }

    pub fn reconcile_started(&self) {
        self.reconciles.inc();
    }

    pub fn failed(&self, reason: &str) {
        self.failures
            .get_or_create(&ReasonLabel {
                reason: reason.to_string(),
            })
            .inc();
    }

    pub fn step_finished(&self, step: StepName, took: Duration) {
        self.step_duration
            .get_or_create(&StepLabel {
                step: format!("{step:?}"),
            })
            .observe(took.as_secs_f64());
    }

    /// OpenMetrics text of every metric.
    pub fn render(&self) -> Result<String, fmt::Error> {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)?;
        Ok(out)
    }
}

/// Metrics whose values live elsewhere and are read on each scrape.
struct ScrapeTime(Arc<Sources>);

impl fmt::Debug for ScrapeTime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ScrapeTime")
    }
}

impl prometheus_client::collector::Collector for ScrapeTime {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        if let Some(kms) = self.0.kms.get() {
            let per_region = kms();
            let mut calls = encoder.encode_descriptor(
                "kms_calls",
                "KMS API calls, by Region, operation and outcome (ok, transport or the KMS error code)",
                None,
                MetricType::Counter,
            )?;
            for (account, region, stats) in &per_region {
                for ((operation, outcome), n) in &stats.calls {
                    let labels = [
                        ("account", account.as_str()),
                        ("region", region.as_str()),
                        ("operation", operation.as_str()),
                        ("outcome", outcome.as_str()),
                    ];
                    ConstCounter::new(*n).encode(calls.encode_family(&labels)?)?;
                }
            }
            let mut waits = encoder.encode_descriptor(
                "kms_rate_limited_calls",
                "KMS calls that waited for the client-side rate limiter, by Region and operation",
                None,
                MetricType::Counter,
            )?;
            for (account, region, stats) in &per_region {
                for (operation, n) in &stats.rate_limited {
                    let labels = [
                        ("account", account.as_str()),
                        ("region", region.as_str()),
                        ("operation", operation.as_str()),
                    ];
                    ConstCounter::new(*n).encode(waits.encode_family(&labels)?)?;
                }
            }
        }
        if let Some(stores) = self.0.stores.get() {
            let mut gauge = encoder.encode_descriptor(
                "stores",
                "ExternalKeyStores by the connection state KMS last reported (Unknown before the first observation)",
                None,
                MetricType::Gauge,
            )?;
            for (state, n) in stores() {
                let labels = [("connection_state", state.as_str())];
                ConstGauge::new(i64::try_from(n).unwrap_or(i64::MAX))
                    .encode(gauge.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_family_with_its_labels() {
        let metrics = Metrics::new();
        metrics.reconcile_started();
        metrics.failed("ProxyUnreachable");
        metrics.step_finished(StepName::Disconnect, Duration::from_secs(3));
        metrics.set_kms_source(Box::new(|| {
            let mut stats = KmsCallStats::default();
            stats
                .calls
                .insert(("DescribeCustomKeyStores".into(), "ok".into()), 7);
            stats.rate_limited.insert("ConnectCustomKeyStore".into(), 2);
            vec![("111122223333".into(), "eu-west-1".into(), stats)]
        }));
        metrics.set_store_source(Box::new(|| BTreeMap::from([("CONNECTED".to_string(), 2)])));
        let text = metrics.render().expect("render");
        for expected in [
            "xks_operator_reconciles_total 1",
            "xks_operator_reconcile_failures_total{reason=\"ProxyUnreachable\"} 1",
            "xks_operator_step_duration_seconds_count{step=\"Disconnect\"} 1",
            "xks_operator_kms_calls_total{account=\"111122223333\",region=\"eu-west-1\",operation=\"DescribeCustomKeyStores\",outcome=\"ok\"} 7",
            "xks_operator_kms_rate_limited_calls_total{account=\"111122223333\",region=\"eu-west-1\",operation=\"ConnectCustomKeyStore\"} 2",
            "xks_operator_stores{connection_state=\"CONNECTED\"} 2",
        ] {
            assert!(text.contains(expected), "missing {expected} in\n{text}");
        }
    }
}
