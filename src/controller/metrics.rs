//! Prometheus metrics (`/metrics`, OpenMetrics text), as docs/reference.md
//! ("Metrics") documents them for the alert rules and the dashboard.
//!
//! Two kinds:
//! - events counted as they happen (reconciles, failures, finished steps
//!   and operations, disruption windows), whose labels come from fixed sets
//!   or from the account and Region;
//! - the state of each store, computed at scrape time from the controller's
//!   cache and status memory ([`StoreSource`]). Nothing per store is kept
//!   here, so a store's series go when its resource goes, change labels
//!   with it (account learned, Region changed), and a standby replica,
//!   which reconciles nothing, exports none.
//!
//! Labels are bounded, non-secret values only: step names, error reasons,
//! KMS operations and outcomes, accounts and Regions, store names, states,
//! and the key manager ids a proxy reports.

use super::health::PROXY_HEALTHY;
use crate::api::{
    ExternalKeyStoreStatus, KeyManagerHealthState, Operation, OperationPhase, StepName,
};
use crate::engine::conditions::{self, READY};
use crate::kms::aws::KmsCallStats;
use crate::model::ConnectionState;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeGaugeValue, EncodeLabelSet, EncodeMetric,
};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// KMS call counters per Region, read at scrape time.
/// (account, Region, the calls of the clients of that account and Region).
pub type KmsStatsSource = Box<dyn Fn() -> Vec<(String, String, KmsCallStats)> + Send + Sync>;
/// Every watched ExternalKeyStore, read at scrape time.
pub type StoreSource = Box<dyn Fn() -> Vec<StoreSnapshot> + Send + Sync>;
/// Whether `/ready` answers 200, read at scrape time.
pub type ReadySource = Box<dyn Fn() -> bool + Send + Sync>;

/// One ExternalKeyStore as the per-store metrics see it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct StoreSnapshot {
    pub namespace: String,
    pub name: String,
    /// The store's AWS account; empty while unknown.
    pub account: String,
    /// Empty when the resource has no Region (it is stalled for it).
    pub region: String,
    /// The store is meant to be CONNECTED: `spec.connectionState:
    /// Connected`, and the resource neither being deleted (deletion
    /// disconnects on purpose) nor yielding its store to another resource.
    pub desired_connected: bool,
    /// The newest status this process knows.
    pub status: ExternalKeyStoreStatus,
}

/// Buckets of `operation_duration_seconds`: a rename takes a second, a
/// rotation a minute, a retried FAILED store half an hour.
pub const OPERATION_BUCKETS: [f64; 10] =
    [1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0];
/// Buckets of `disruption_seconds`: the seconds a rotation keeps the keys
/// unusable (BENCHMARKS.md) up to a slow CONNECTING.
pub const DISRUPTION_BUCKETS: [f64; 9] = [0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0];

/// The `trigger` label values, in the contract's order.
pub const TRIGGERS: [&str; 9] = [
    "Create",
    "Rename",
    "CredentialRotation",
    "UriPath",
    "Endpoint",
    "Recovery",
    "Connect",
    "Disconnect",
    "Delete",
];
/// The `outcome` label values of finished operations.
pub const OUTCOMES: [&str; 3] = ["Succeeded", "Failed", "RolledBack"];

const STATES: [ConnectionState; 5] = [
    ConnectionState::Connected,
    ConnectionState::Connecting,
    ConnectionState::Disconnected,
    ConnectionState::Disconnecting,
    ConnectionState::Failed,
];
const PHASES: [OperationPhase; 7] = [
    OperationPhase::Planned,
    OperationPhase::Running,
    OperationPhase::AwaitingApproval,
    OperationPhase::RollingBack,
    OperationPhase::Succeeded,
    OperationPhase::Failed,
    OperationPhase::RolledBack,
];
/// The KMS error code of a throttled call.
const THROTTLED: &str = "ThrottlingException";

/// What an operation was for, as the `trigger` label says it: from its
/// steps where they tell (Delete, Create, and HealthCheck, which only a
/// change that needs a disconnect plans), else from the planner's trigger
/// text. The most disruptive cause wins when several changed at once.
pub fn operation_trigger(op: &Operation) -> &'static str {
    let has = |name: StepName| op.steps.iter().any(|s| s.name == name);
    if has(StepName::Delete) {
        "Delete"
    } else if has(StepName::Create) {
        "Create"
    } else if has(StepName::HealthCheck) {
        "Endpoint"
    } else if op.trigger.contains("store is FAILED") {
        "Recovery"
    } else if has(StepName::Update) {
        if op.trigger.contains("uriPath changed") {
            "UriPath"
        } else if has(StepName::Preflight) {
            // Preflight is planned for a new path or credential only.
            "CredentialRotation"
        } else {
            "Rename"
        }
    } else if has(StepName::Connect) {
        "Connect"
    } else {
        "Disconnect"
    }
}

/// The `outcome` label of an operation in `phase`, once it has ended.
pub fn operation_outcome(phase: OperationPhase) -> Option<&'static str> {
    match phase {
        OperationPhase::Succeeded => Some("Succeeded"),
        OperationPhase::Failed => Some("Failed"),
        OperationPhase::RolledBack => Some("RolledBack"),
        _ => None,
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StepLabel {
    pub step: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OperationLabels {
    pub trigger: String,
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ScopeLabels {
    pub account: String,
    pub region: String,
}

fn step_histogram() -> Histogram {
    // 0.25 s .. ~70 min: a proxy health check up to a slow CONNECTING.
    Histogram::new(exponential_buckets(0.25, 2.0, 15))
}

fn operation_histogram() -> Histogram {
    Histogram::new(OPERATION_BUCKETS)
}

fn disruption_histogram() -> Histogram {
    Histogram::new(DISRUPTION_BUCKETS)
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

pub struct Metrics {
    registry: Registry,
    reconciles: Counter,
    failures: Family<ReasonLabel, Counter>,
    step_duration: HistogramFamily<StepLabel>,
    operations: Family<OperationLabels, Counter>,
    operation_duration: HistogramFamily<OperationLabels>,
    disruption: HistogramFamily<ScopeLabels>,
    /// 1 while this replica reconciles (holds the Lease, or runs without
    /// leader election); also what gates the per-store series.
    leader: Gauge,
    sources: Arc<Sources>,
}

#[derive(Default)]
struct Sources {
    kms: OnceLock<KmsStatsSource>,
    stores: OnceLock<StoreSource>,
    ready: OnceLock<ReadySource>,
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
        let step_duration = HistogramFamily::<StepLabel>::new_with_constructor(step_histogram);
        registry.register(
            "step_duration_seconds",
            "Duration of finished operation steps, from start to success or failure",
            step_duration.clone(),
        );
        let operations = Family::<OperationLabels, Counter>::default();
        // Every trigger and outcome from the start, so that increase() and
        // rate() see the first operation of each kind.
        for trigger in TRIGGERS {
            for outcome in OUTCOMES {
                let _ = operations.get_or_create(&OperationLabels {
                    trigger: trigger.into(),
                    outcome: outcome.into(),
                });
            }
        }
        registry.register(
            "operations",
            "Operations that ended, by trigger (what changed) and outcome (Succeeded, Failed, RolledBack)",
            operations.clone(),
        );
        let operation_duration =
            HistogramFamily::<OperationLabels>::new_with_constructor(operation_histogram);
        registry.register(
            "operation_duration_seconds",
            "Duration of the operations that ended, from start to end, by trigger and outcome",
            operation_duration.clone(),
        );
        let disruption = HistogramFamily::<ScopeLabels>::new_with_constructor(disruption_histogram);
        registry.register(
            "disruption_seconds",
            "Disruption window of each disruptive change: from its DisconnectCustomKeyStore call until KMS reports the store CONNECTED again",
            disruption.clone(),
        );
        let leader = Gauge::default();
        registry.register(
            "leader",
            "1 when this replica holds the leader Lease (or runs without leader election), 0 on a standby",
            leader.clone(),
        );
        let sources = Arc::new(Sources::default());
        registry.register_collector(Box::new(ScrapeTime {
            sources: sources.clone(),
            leader: leader.clone(),
        }));
        Self {
            registry,
            reconciles,
            failures,
            step_duration,
            operations,
            operation_duration,
            disruption,
            leader,
            sources,
        }
    }

    /// Where the KMS call counters come from (set once).
    pub fn set_kms_source(&self, source: KmsStatsSource) {
        let _ = self.sources.kms.set(source);
    }

    /// Where the per-store series come from (set once). They are exported
    /// only while [`Metrics::set_leader`] says this replica leads.
    pub fn set_store_source(&self, source: StoreSource) {
        let _ = self.sources.stores.set(source);
    }

    /// Where `xks_operator_ready` comes from (set once; 0 until then).
    pub fn set_ready_source(&self, source: ReadySource) {
        let _ = self.sources.ready.set(source);
    }

    /// This replica reconciles (true) or stands by (false).
    pub fn set_leader(&self, leading: bool) {
        self.leader.set(i64::from(leading));
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

    /// An operation ended (call once per operation).
    pub fn operation_finished(&self, trigger: &str, outcome: &str, took: Option<Duration>) {
        let labels = OperationLabels {
            trigger: trigger.to_string(),
            outcome: outcome.to_string(),
        };
        self.operations.get_or_create(&labels).inc();
        if let Some(took) = took {
            self.operation_duration
                .get_or_create(&labels)
                .observe(took.as_secs_f64());
        }
    }

    /// A disruption window closed: the store is CONNECTED again.
    pub fn disruption_ended(&self, account: &str, region: &str, took: Duration) {
        self.disruption
            .get_or_create(&ScopeLabels {
                account: account.to_string(),
                region: region.to_string(),
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
struct ScrapeTime {
    sources: Arc<Sources>,
    leader: Gauge,
}

impl fmt::Debug for ScrapeTime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ScrapeTime")
    }
}

type Labels<'a> = Vec<(&'a str, &'a str)>;

/// One gauge family and its samples.
fn gauges<N: EncodeGaugeValue + fmt::Debug>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    samples: Vec<(Labels<'_>, N)>,
) -> fmt::Result {
    let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (labels, value) in samples {
        ConstGauge::new(value).encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

fn counters(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    samples: Vec<(Labels<'_>, u64)>,
) -> fmt::Result {
    let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (labels, value) in samples {
        ConstCounter::new(value).encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

/// Unix seconds of an RFC 3339 time.
fn unix_seconds(time: &str) -> Option<f64> {
    time.parse::<jiff::Timestamp>()
        .ok()
        .map(|t| t.as_millisecond() as f64 / 1000.0)
}

impl prometheus_client::collector::Collector for ScrapeTime {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        let ready = self.sources.ready.get().is_some_and(|ready| ready());
        // Without labels: `xks_operator_ready 1`, not `{} 1`.
        let family = encoder.encode_descriptor(
            "ready",
            "1 when this replica's /ready answers 200, else 0",
            None,
            MetricType::Gauge,
        )?;
        ConstGauge::new(i64::from(ready)).encode(family)?;
        let per_region = self.sources.kms.get().map(|kms| kms()).unwrap_or_default();
        encode_kms(&mut encoder, &per_region)?;
        // A standby reconciles nothing: its cache and statuses would be
        // stale, and the rules take the max over replicas.
        let stores = match self.sources.stores.get() {
            Some(stores) if self.leader.get() == 1 => stores(),
            _ => Vec::new(),
        };
        encode_stores(&mut encoder, &stores)
    }
}

fn encode_kms(
    encoder: &mut DescriptorEncoder,
    per_region: &[(String, String, KmsCallStats)],
) -> fmt::Result {
    let mut calls = Vec::new();
    let mut throttles = Vec::new();
    let mut waits = Vec::new();
    for (account, region, stats) in per_region {
        let scope = |operation| scope_labels(account, region, operation);
        let mut throttled: BTreeMap<&str, u64> = BTreeMap::new();
        for ((operation, outcome), n) in &stats.calls {
            let mut labels = scope(operation);
            labels.push(("outcome", outcome.as_str()));
            calls.push((labels, *n));
            // Every operation called gets a series, 0 until throttled.
            *throttled.entry(operation.as_str()).or_default() +=
                if outcome == THROTTLED { *n } else { 0 };
        }
        throttles.extend(throttled.into_iter().map(|(op, n)| (scope(op), n)));
        waits.extend(
            stats
                .rate_limited
                .iter()
                .map(|(operation, n)| (scope(operation), *n)),
        );
    }
    counters(
        encoder,
        "kms_calls",
        "KMS API calls, by account, Region, operation and outcome (ok, transport or the KMS error code)",
        calls,
    )?;
    counters(
        encoder,
        "kms_throttles",
        "KMS API calls answered ThrottlingException, by account, Region and operation (per call as the operator sees it: the SDK's own retry attempts are not counted)",
        throttles,
    )?;
    counters(
        encoder,
        "kms_rate_limited_calls",
        "KMS calls that waited for the client-side rate limiter, by account, Region and operation",
        waits,
    )
}

fn scope_labels<'a>(account: &'a str, region: &'a str, operation: &'a str) -> Labels<'a> {
    vec![
        ("account", account),
        ("region", region),
        ("operation", operation),
    ]
}

fn store_labels(s: &StoreSnapshot) -> Labels<'_> {
    vec![
        ("namespace", s.namespace.as_str()),
        ("name", s.name.as_str()),
        ("account", s.account.as_str()),
        ("region", s.region.as_str()),
    ]
}

fn with_labels<'a>(s: &'a StoreSnapshot, extra: &[(&'a str, &'a str)]) -> Labels<'a> {
    let mut labels = store_labels(s);
    labels.extend(extra.iter().copied());
    labels
}

fn encode_stores(encoder: &mut DescriptorEncoder, stores: &[StoreSnapshot]) -> fmt::Result {
    let store = store_labels;
    let with = with_labels;
    let mut state = Vec::new();
    let mut desired = Vec::new();
    let mut ready = Vec::new();
    let mut error = Vec::new();
    let mut phase = Vec::new();
    let mut started = Vec::new();
    let mut healthy = Vec::new();
    let mut checked = Vec::new();
    let mut by_state: BTreeMap<&str, i64> = BTreeMap::new();
    for s in stores {
        let st = &s.status;
        *by_state
            .entry(
                st.connection_state
                    .map_or("Unknown", ConnectionState::as_str),
            )
            .or_default() += 1;
        if let Some(current) = st.connection_state {
            for candidate in STATES {
                state.push((
                    with(s, &[("state", candidate.as_str())]),
                    i64::from(candidate == current),
                ));
            }
            if current == ConnectionState::Failed
                && let Some(code) = &st.connection_error_code
            {
                error.push((with(s, &[("code", code.as_str())]), 1));
            }
        }
        desired.push((store(s), i64::from(s.desired_connected)));
        ready.push((store(s), i64::from(conditions::is_true(st, READY))));
        if let Some(op) = &st.operation {
            for candidate in PHASES {
                phase.push((
                    with(s, &[("phase", phase_label(candidate))]),
                    i64::from(candidate == op.phase),
                ));
            }
            if matches!(
                op.phase,
                OperationPhase::Running
                    | OperationPhase::RollingBack
                    | OperationPhase::AwaitingApproval
            ) && let Some(t) = unix_seconds(&op.started_at)
            {
                started.push((store(s), t));
            }
        }
        if let Some(health) = &st.proxy_health {
            healthy.push((store(s), i64::from(conditions::is_true(st, PROXY_HEALTHY))));
            if let Some(t) = unix_seconds(&health.checked_at) {
                checked.push((store(s), t));
            }
        }
    }
    let mut km_health = Vec::new();
    for s in stores {
        for km in s.status.proxy_health.iter().flat_map(|h| &h.key_managers) {
            for health in KeyManagerHealthState::ALL {
                km_health.push((
                    with(
                        s,
                        &[("key_manager", km.id.as_str()), ("health", health.as_str())],
                    ),
                    i64::from(health == km.health),
                ));
            }
        }
    }

    gauges(
        encoder,
        "store_connection_state",
        "1 for the ConnectionState KMS last reported for the store, 0 for the others; absent before it is first described",
        state,
    )?;
    gauges(
        encoder,
        "store_desired_connected",
        "1 when the store is meant to be CONNECTED (spec.connectionState Connected, not being deleted, not yielding to another resource), else 0",
        desired,
    )?;
    gauges(
        encoder,
        "store_ready",
        "1 when the Ready condition is True, else 0",
        ready,
    )?;
    gauges(
        encoder,
        "store_connection_error",
        "1 while the store is FAILED, with its ConnectionErrorCode; absent otherwise",
        error,
    )?;
    gauges(
        encoder,
        "operation_phase",
        "1 for the phase of the store's current or last operation, 0 for the others; absent when it never had one",
        phase,
    )?;
    gauges(
        encoder,
        "operation_started_timestamp_seconds",
        "Unix time the current operation started, while it is Running, RollingBack or AwaitingApproval",
        started,
    )?;
    gauges(
        encoder,
        "proxy_healthy",
        "1 when the last GetHealthStatus of the store's proxy succeeded with at least one key manager ACTIVE (ProxyHealthy True), else 0; absent when the operator does not watch the proxy",
        healthy,
    )?;
    gauges(
        encoder,
        "proxy_key_manager_health",
        "1 for the health the proxy last reported for the key manager, 0 for the others",
        km_health,
    )?;
    gauges(
        encoder,
        "proxy_health_checked_timestamp_seconds",
        "Unix time of the last GetHealthStatus call to the store's proxy, written to status or not",
        checked,
    )?;
    gauges(
        encoder,
        "stores",
        "ExternalKeyStores by the connection state KMS last reported (Unknown before the first observation)",
        by_state
            .iter()
            .map(|(state, n)| (vec![("connection_state", *state)], *n))
            .collect(),
    )
}

fn phase_label(phase: OperationPhase) -> &'static str {
    match phase {
        OperationPhase::Planned => "Planned",
        OperationPhase::Running => "Running",
        OperationPhase::AwaitingApproval => "AwaitingApproval",
        OperationPhase::RollingBack => "RollingBack",
        OperationPhase::Succeeded => "Succeeded",
        OperationPhase::Failed => "Failed",
        OperationPhase::RolledBack => "RolledBack",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{DeletionPolicy, DesiredConnectionState, ProxyChecks};
    use crate::model::{Connectivity, ObservedStore, ProxyConfig};
    use crate::plan::{self, Decision, Desired, PlanInput};

    fn desired() -> Desired {
        Desired {
            name: "payments".into(),
            proxy: ProxyConfig {
                connectivity: Connectivity::PublicEndpoint,
                uri_endpoint: "https://xks-a.example.com".into(),
                uri_path: "/example/kms/xks/v1".into(),
                vpc_endpoint_service_name: None,
                vpc_endpoint_service_owner: None,
                access_key_id: "AKIDAAAAAAAAAAAAAAAA".into(),
            },
            credential_fingerprint: "fp1".into(),
            connection: DesiredConnectionState::Connected,
            proxy_checks: ProxyChecks::Direct,
            deletion_policy: DeletionPolicy::Delete,
            pinned_id: None,
        }
    }

    fn store(state: ConnectionState) -> ObservedStore {
        ObservedStore {
            id: "cks-0123456789abcdef0".into(),
            name: "payments".into(),
            store_type: "EXTERNAL_KEY_STORE".into(),
            connection_state: state,
            connection_error_code: (state == ConnectionState::Failed)
                .then(|| "NETWORK_ERRORS".to_string()),
            proxy: Some(desired().proxy),
        }
    }

    /// The trigger of the operation the real planner starts.
    fn trigger(d: &Desired, observed: Option<&ObservedStore>, deleting: bool) -> &'static str {
        let decision = plan::decide(&PlanInput {
            desired: d,
            observed,
            applied_fingerprint: Some("fp1"),
            recorded: None,
            deleting,
            rollback_retry_due: false,
        });
        let Decision::Start(new) = decision else {
            panic!("expected an operation, got {decision:?}");
        };
        let op = plan::operation(new, d.proxy_checks, false, Some(1), "t", None, None);
        operation_trigger(&op)
    }

    #[test]
    fn every_planned_operation_has_its_trigger() {
        use ConnectionState::*;
        let connected = store(Connected);
        assert_eq!(trigger(&desired(), None, false), "Create");
        assert_eq!(trigger(&desired(), Some(&connected), true), "Delete");
        let mut d = desired();
        d.name = "renamed".into();
        assert_eq!(trigger(&d, Some(&connected), false), "Rename");
        let mut d = desired();
        d.credential_fingerprint = "fp2".into();
        assert_eq!(trigger(&d, Some(&connected), false), "CredentialRotation");
        let mut d = desired();
        d.proxy.access_key_id = "AKIDBBBBBBBBBBBBBBBB".into();
        d.name = "renamed".into();
        assert_eq!(trigger(&d, Some(&connected), false), "CredentialRotation");
        let mut d = desired();
        d.proxy.uri_path = "/other/kms/xks/v1".into();
        d.credential_fingerprint = "fp2".into();
        assert_eq!(trigger(&d, Some(&connected), false), "UriPath");
        let mut d = desired();
        d.proxy.uri_endpoint = "https://xks-b.example.com".into();
        d.proxy.uri_path = "/other/kms/xks/v1".into();
        assert_eq!(trigger(&d, Some(&connected), false), "Endpoint");
        assert_eq!(trigger(&d, Some(&store(Failed)), false), "Endpoint");
        // Under KmsOnly the HealthCheck step is skipped, not left out.
        d.proxy_checks = ProxyChecks::KmsOnly;
        assert_eq!(trigger(&d, Some(&connected), false), "Endpoint");
        let mut d = desired();
        d.proxy.connectivity = Connectivity::VpcEndpointService;
        d.proxy.vpc_endpoint_service_name =
            Some("com.amazonaws.vpce.us-east-1.vpce-svc-0123456789abcdef0".into());
        assert_eq!(trigger(&d, Some(&connected), false), "Endpoint");
        assert_eq!(trigger(&desired(), Some(&store(Failed)), false), "Recovery");
        assert_eq!(
            trigger(&desired(), Some(&store(Disconnected)), false),
            "Connect"
        );
        let mut d = desired();
        d.connection = DesiredConnectionState::Disconnected;
        assert_eq!(trigger(&d, Some(&connected), false), "Disconnect");
        for t in TRIGGERS {
            assert!(!t.is_empty());
        }
    }

    fn snapshot(status: serde_json::Value) -> StoreSnapshot {
        StoreSnapshot {
            namespace: "team-a".into(),
            name: "payments".into(),
            account: "111122223333".into(),
            region: "eu-west-1".into(),
            desired_connected: true,
            status: serde_json::from_value(status).expect("status"),
        }
    }

    fn failed_store() -> StoreSnapshot {
        snapshot(serde_json::json!({
            "connectionState": "FAILED",
            "connectionErrorCode": "XKS_PROXY_TIMED_OUT",
            "conditions": [
                {"type": "Ready", "status": "False", "reason": "XksProxyTimedOut", "message": "", "lastTransitionTime": "t"},
                {"type": "ProxyHealthy", "status": "False", "reason": "Degraded", "message": "", "lastTransitionTime": "t"}
            ],
            "operation": {"trigger": "store is FAILED (XKS_PROXY_TIMED_OUT)", "phase": "Running", "disruptive": false,
                          "target": "x", "startedAt": "2026-01-01T00:00:00Z", "steps": []},
            "proxyHealth": {"checkedAt": "2026-01-01T00:01:00.500Z", "fleetSize": 1,
                            "keyManagers": [{"id": "ekm-1", "health": "DEGRADED"}]}
        }))
    }

    fn metrics_with(stores: Vec<StoreSnapshot>) -> Metrics {
        let metrics = Metrics::new();
        metrics.set_store_source(Box::new(move || stores.clone()));
        metrics
    }

    #[test]
    fn renders_every_family_with_its_labels() {
        let metrics = metrics_with(vec![failed_store()]);
        metrics.set_leader(true);
        metrics.set_ready_source(Box::new(|| true));
        metrics.reconcile_started();
        metrics.failed("ProxyUnreachable");
        metrics.step_finished(StepName::Disconnect, Duration::from_secs(3));
        metrics.operation_finished("Endpoint", "Succeeded", Some(Duration::from_secs(7)));
        metrics.disruption_ended("111122223333", "eu-west-1", Duration::from_millis(1500));
        metrics.set_kms_source(Box::new(|| {
            let mut stats = KmsCallStats::default();
            stats
                .calls
                .insert(("DescribeCustomKeyStores".into(), "ok".into()), 7);
            stats
                .calls
                .insert(("ConnectCustomKeyStore".into(), THROTTLED.into()), 2);
            stats
                .calls
                .insert(("ConnectCustomKeyStore".into(), "ok".into()), 1);
            stats.rate_limited.insert("ConnectCustomKeyStore".into(), 2);
            vec![("111122223333".into(), "eu-west-1".into(), stats)]
        }));
        let text = metrics.render().expect("render");
        let store =
            r#"namespace="team-a",name="payments",account="111122223333",region="eu-west-1""#;
        for expected in [
            "xks_operator_reconciles_total 1".to_string(),
            "xks_operator_reconcile_failures_total{reason=\"ProxyUnreachable\"} 1".into(),
            "xks_operator_step_duration_seconds_count{step=\"Disconnect\"} 1".into(),
            "xks_operator_kms_calls_total{account=\"111122223333\",region=\"eu-west-1\",operation=\"DescribeCustomKeyStores\",outcome=\"ok\"} 7".into(),
            "xks_operator_kms_throttles_total{account=\"111122223333\",region=\"eu-west-1\",operation=\"ConnectCustomKeyStore\"} 2".into(),
            "xks_operator_kms_throttles_total{account=\"111122223333\",region=\"eu-west-1\",operation=\"DescribeCustomKeyStores\"} 0".into(),
            "xks_operator_kms_rate_limited_calls_total{account=\"111122223333\",region=\"eu-west-1\",operation=\"ConnectCustomKeyStore\"} 2".into(),
            "xks_operator_operations_total{trigger=\"Endpoint\",outcome=\"Succeeded\"} 1".into(),
            "xks_operator_operations_total{trigger=\"Delete\",outcome=\"RolledBack\"} 0".into(),
            "xks_operator_operation_duration_seconds_bucket{le=\"10.0\",trigger=\"Endpoint\",outcome=\"Succeeded\"} 1".into(),
            "xks_operator_disruption_seconds_bucket{le=\"2.0\",account=\"111122223333\",region=\"eu-west-1\"} 1".into(),
            "xks_operator_disruption_seconds_bucket{le=\"1.0\",account=\"111122223333\",region=\"eu-west-1\"} 0".into(),
            "xks_operator_ready 1".into(),
            "xks_operator_leader 1".into(),
            format!("xks_operator_store_connection_state{{{store},state=\"FAILED\"}} 1"),
            format!("xks_operator_store_connection_state{{{store},state=\"CONNECTED\"}} 0"),
            format!("xks_operator_store_desired_connected{{{store}}} 1"),
            format!("xks_operator_store_ready{{{store}}} 0"),
            format!("xks_operator_store_connection_error{{{store},code=\"XKS_PROXY_TIMED_OUT\"}} 1"),
            format!("xks_operator_operation_phase{{{store},phase=\"Running\"}} 1"),
            format!("xks_operator_operation_phase{{{store},phase=\"Succeeded\"}} 0"),
            format!("xks_operator_operation_started_timestamp_seconds{{{store}}} 1767225600.0"),
            format!("xks_operator_proxy_healthy{{{store}}} 0"),
            format!("xks_operator_proxy_key_manager_health{{{store},key_manager=\"ekm-1\",health=\"DEGRADED\"}} 1"),
            format!("xks_operator_proxy_key_manager_health{{{store},key_manager=\"ekm-1\",health=\"ACTIVE\"}} 0"),
            format!("xks_operator_proxy_health_checked_timestamp_seconds{{{store}}} 1767225660.5"),
            "xks_operator_stores{connection_state=\"FAILED\"} 1".into(),
        ] {
            assert!(text.contains(&expected), "missing {expected} in\n{text}");
        }
    }

    #[test]
    fn a_standby_exports_no_per_store_series() {
        let metrics = metrics_with(vec![failed_store()]);
        let text = metrics.render().expect("render");
        assert!(text.contains("xks_operator_leader 0"), "{text}");
        assert!(text.contains("xks_operator_ready 0"), "{text}");
        assert!(
            !text.lines().any(|l| l.contains("namespace=")),
            "a standby exported per-store series:\n{text}"
        );
        // The families are still declared.
        assert!(text.contains("# TYPE xks_operator_store_connection_state gauge"));
        metrics.set_leader(true);
        assert!(
            metrics
                .render()
                .expect("render")
                .contains("xks_operator_store_ready{")
        );
    }

    #[test]
    fn optional_series_are_absent_until_they_mean_something() {
        // Never described, no operation, proxy not watched.
        let metrics = metrics_with(vec![snapshot(serde_json::json!({}))]);
        metrics.set_leader(true);
        let text = metrics.render().expect("render");
        for family in [
            "store_connection_state",
            "store_connection_error",
            "operation_phase",
            "operation_started_timestamp_seconds",
            "proxy_healthy",
            "proxy_key_manager_health",
            "proxy_health_checked_timestamp_seconds",
        ] {
            assert!(
                !text.contains(&format!("xks_operator_{family}{{")),
                "{family} in\n{text}"
            );
        }
        assert!(text.contains("xks_operator_store_desired_connected{"));
        assert!(text.contains("xks_operator_stores{connection_state=\"Unknown\"} 1"));
    }
}
