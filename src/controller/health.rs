//! The proxy health watch: for every store with `spec.proxyChecks: Direct`
//! the operator calls its proxy's GetHealthStatus (SigV4, with the store's
//! credential and Region: the same probe as Preflight) every
//! `--proxy-health-interval`, and records the answer in
//! `status.proxyHealth` and the `ProxyHealthy` condition. KMS reports a
//! store FAILED only after its own health checks give up; the proxy says
//! much earlier that its key managers are DEGRADED or UNAVAILABLE.
//!
//! Where it runs: at the end of the store's reconcile pass, after the
//! engine, when the last check is older than the interval. So it needs no
//! task, lock or status writer of its own: one writer per resource at a
//! time, bounded by the controller's `--concurrency` like everything else,
//! and a deleted resource simply stops being reconciled. The pass is
//! requeued for the next check (the engine's drift check comes along; its
//! DescribeCustomKeyStores is served by the shared describe cache). The
//! cost is that a proxy that does not answer holds a reconcile worker for
//! the probe's timeout (2 s) once per interval.
//!
//! When: a pass whose outcome is settled (in sync, observe-only, stalled,
//! awaiting approval, or backing off before a retry), never one that polls
//! a CONNECTING/DISCONNECTING store or runs the steps of an operation (its
//! Preflight and HealthCheck call the proxy themselves), a suspended
//! resource, or one that yields its store to another resource. The proxy
//! checked is the one KMS uses (`status.proxy`); no store, no check.
//!
//! API-server load: a check that finds what the last one found writes
//! nothing (`checkedAt` is a timestamp the status writer ignores), except
//! that `checkedAt` is refreshed when the written one is older than
//! [`STATUS_REFRESH`], so `kubectl get -o yaml` never shows a check older
//! than that plus the interval. The metric
//! `xks_operator_proxy_health_checked_timestamp_seconds` has every check.
//! A change of the `ProxyHealthy` condition's status or reason emits one
//! Event (a first check that finds the proxy healthy emits none).
//!
//! kstatus: `ProxyHealthy` is a condition of its own, which kstatus (it
//! reads Ready, Reconciling and Stalled), Flux and the Argo CD health check
//! ignore: an unhealthy proxy never makes a store look in progress.

use super::reconcile::jitter;
use super::status::StatusWriter;
use crate::api::{
    Condition, ConditionStatus, ExternalKeyStore, ExternalKeyStoreStatus, KeyManagerHealthState,
    KeyManagerHealthStatus, ProxyChecks, ProxyHealth,
};
use crate::credentials::CredentialError;
use crate::engine::conditions;
use crate::engine::{Clock, Outcome, SinkError, StatusSink, SystemClock};
use crate::model::ProxyCredential;
use crate::xks::{HealthReport, KeyManagerHealth, ProbeError, ProxyProbe, ProxyTarget};
use kube::runtime::events::EventType;
use std::time::Duration;

/// The condition this watch owns.
pub const PROXY_HEALTHY: &str = "ProxyHealthy";
/// `run --proxy-health-interval`'s default.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(60);
/// How old the written `checkedAt` may get while the result does not change.
pub const STATUS_REFRESH: Duration = Duration::from_secs(15 * 60);
/// A check may come this much of the interval early: the requeue is
/// jittered by ±10%, and a pass woken a little early should not need
/// another one just for the check.
const EARLY: f64 = 0.1;
/// Longest proxy-provided string kept (ids, vendor, model).
const MAX_TEXT: usize = 128;

/// `ProxyHealthy` as one check concluded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    /// At least one key manager ACTIVE.
    pub healthy: bool,
    pub reason: &'static str,
    pub message: String,
}

/// What the watch does in this pass.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Next {
    /// Nothing, and no influence on the requeue.
    Leave,
    /// The watch is off for this store: drop what an earlier one recorded.
    Clear,
    /// The next check is due in this long.
    Wait(Duration),
    /// Call the proxy now.
    Check,
}

/// Whether to check now. `now_ms` is Unix milliseconds.
pub fn next(
    interval: Duration,
    checks: ProxyChecks,
    outcome: Outcome,
    status: &ExternalKeyStoreStatus,
    now_ms: i64,
) -> Next {
    match outcome {
        // Not ours to look at, or nothing may be looked at.
        Outcome::Claimed | Outcome::Released | Outcome::Suspended => return Next::Leave,
        // Polling a transition or running steps: soon looked at again.
        Outcome::Requeue(_) if status.retry.is_none() => return Next::Leave,
        _ => {}
    }
    if interval.is_zero() || checks == ProxyChecks::KmsOnly || status.proxy.is_none() {
        return Next::Clear;
    }
    let last = status
        .proxy_health
        .as_ref()
        .and_then(|h| h.checked_at.parse::<jiff::Timestamp>().ok());
    let Some(last) = last else {
        return Next::Check;
    };
    let elapsed = Duration::from_millis(u64::try_from(now_ms - last.as_millisecond()).unwrap_or(0));
    if elapsed >= interval.mul_f64(1.0 - EARLY) {
        Next::Check
    } else {
        Next::Wait(interval - elapsed)
    }
}

/// Run the watch for one resource at the end of its pass; returns when the
/// next check is due, if the watch wants the resource requeued for it.
#[allow(clippy::too_many_arguments)]
pub async fn watch<P: ProxyProbe>(
    probe: &P,
    interval: Duration,
    obj: &ExternalKeyStore,
    region: &str,
    credential: &Result<ProxyCredential, CredentialError>,
    outcome: Outcome,
    status: &mut ExternalKeyStoreStatus,
    sink: &mut StatusWriter<'_>,
) -> Result<Option<Duration>, SinkError> {
    let now = jiff::Timestamp::now();
    match next(
        interval,
        obj.spec.proxy_checks,
        outcome,
        status,
        now.as_millisecond(),
    ) {
        Next::Leave => return Ok(None),
        Next::Wait(after) => return Ok(Some(jitter(after))),
        Next::Clear => {
            if clear(status) {
                sink.write(status).await?;
            }
            return Ok(None);
        }
        Next::Check => {}
    }
    // Without the Secret there is nothing to sign with; the resource is
    // Stalled for it, and the checked-at metric shows the watch waits.
    let (Ok(credential), Some(proxy)) = (credential, status.proxy.as_ref()) else {
        return Ok(None);
    };
    let target = ProxyTarget {
        uri_endpoint: proxy.uri_endpoint.clone(),
        uri_path: proxy.uri_path.clone(),
        region: region.to_string(),
        credential: credential.clone(),
    };
    let where_ = format!("{}{}", target.uri_endpoint, target.uri_path);
    let result = probe.health(&target).await;
    let verdict = judge(&where_, &credential.access_key_id, &result);
    let before = conditions::get(status, PROXY_HEALTHY).map(|c| (c.status, c.reason.clone()));
    let checked_at = jiff::Timestamp::now()
        .round(jiff::Unit::Millisecond)
        .unwrap_or(now);
    record(
        status,
        result.as_ref().ok(),
        &verdict,
        &checked_at.to_string(),
        &SystemClock.now(),
    );

    let written = obj
        .status
        .as_ref()
        .and_then(|s| s.proxy_health.as_ref())
        .map(|h| h.checked_at.as_str());
    if stale(written, checked_at) {
        sink.refresh(status).await?;
    } else {
        sink.write(status).await?;
    }

    let after = (ConditionStatus::from_bool(verdict.healthy), verdict.reason);
    let changed = match &before {
        Some((status, reason)) => (*status, reason.as_str()) != after,
        // No news is good news: the first check only speaks up when wrong.
        None => verdict.reason != HEALTHY,
    };
    if changed {
        let (type_, reason) = if verdict.reason == HEALTHY {
            (EventType::Normal, "ProxyHealthy".to_string())
        } else {
            (EventType::Warning, format!("Proxy{}", verdict.reason))
        };
        sink.event(type_, &reason, "ProxyHealthCheck", &verdict.message)
            .await;
        tracing::info!(
            namespace = obj.metadata.namespace.as_deref().unwrap_or_default(),
            name = obj.metadata.name.as_deref().unwrap_or_default(),
            reason = verdict.reason,
            message = %verdict.message,
            "proxy health changed"
        );
    }
    Ok(Some(jitter(interval)))
}

const HEALTHY: &str = "Healthy";

/// Whether the `checkedAt` in the API server (`written`) is old enough at
/// `now` to be refreshed although nothing else changed. Unknown (never
/// written, or a watch cache not caught up): no, a change writes it anyway.
fn stale(written: Option<&str>, now: jiff::Timestamp) -> bool {
    written
        .and_then(|t| t.parse::<jiff::Timestamp>().ok())
        .is_some_and(|t| {
            Duration::try_from(now.duration_since(t)).is_ok_and(|age| age >= STATUS_REFRESH)
        })
}

/// What one GetHealthStatus answer (or failure) of the proxy at `where_`
/// means, in the words of the `ProxyHealthy` condition.
pub fn judge(
    where_: &str,
    access_key_id: &str,
    result: &Result<HealthReport, ProbeError>,
) -> Verdict {
    let report = match result {
        Ok(report) => report,
        Err(e) => {
            let reason = match e {
                ProbeError::AuthenticationFailed | ProbeError::AccessDenied => "CredentialRejected",
                ProbeError::InvalidUriPath => "Misconfigured",
                ProbeError::Unreachable(_) | ProbeError::TimedOut | ProbeError::Tls(_) => {
                    "Unreachable"
                }
                ProbeError::InvalidResponse(_) => "InvalidResponse",
                ProbeError::Throttled
                | ProbeError::ServerError { .. }
                | ProbeError::KeyNotFound => "ErrorResponse",
            };
            let whose = if reason == "CredentialRejected" {
                format!(" (access key id {access_key_id}, from the credentials Secret)")
            } else {
                String::new()
            };
            return Verdict {
                healthy: false,
                reason,
                message: format!("GetHealthStatus of {where_} failed: {e}{whose}"),
            };
        }
    };
    let total = report.key_managers.len();
    let active = count(report, KeyManagerHealth::Active);
    let unavailable = count(report, KeyManagerHealth::Unavailable);
    let others = report
        .key_managers
        .iter()
        .filter(|m| m.health != KeyManagerHealth::Active)
        .map(|m| format!("{} {}", clean(&m.id), health_state(m.health)))
        .collect::<Vec<_>>()
        .join(", ");
    let (healthy, reason, words) = if active == total {
        (true, HEALTHY, format!("all {total} key managers ACTIVE"))
    } else if unavailable == total {
        (
            false,
            "Unavailable",
            format!(
                "every key manager is UNAVAILABLE ({others}): KMS fails every cryptographic request of the store, and reports it FAILED at its next connection attempt"
            ),
        )
    } else if active > 0 {
        (
            true,
            "Degraded",
            format!(
                "{active}/{total} key managers ACTIVE; not ACTIVE: {others}. KMS still uses the proxy, with less redundancy"
            ),
        )
    } else {
        (
            false,
            "Degraded",
            format!(
                "no key manager is ACTIVE: {others}. KMS still uses the DEGRADED ones, with less capacity; once none is left it fails every request of the store"
            ),
        )
    };
    Verdict {
        healthy,
        reason,
        message: format!("{where_}: {words} (proxy fleet of {})", report.fleet_size),
    }
}

fn count(report: &HealthReport, health: KeyManagerHealth) -> usize {
    report
        .key_managers
        .iter()
        .filter(|m| m.health == health)
        .count()
}

fn health_state(health: KeyManagerHealth) -> KeyManagerHealthState {
    match health {
        KeyManagerHealth::Active => KeyManagerHealthState::Active,
        KeyManagerHealth::Degraded => KeyManagerHealthState::Degraded,
        KeyManagerHealth::Unavailable => KeyManagerHealthState::Unavailable,
    }
}

/// A proxy-provided string as status and metric labels may hold it.
fn clean(text: &str) -> String {
    text.chars()
        .filter(|c| !c.is_control())
        .take(MAX_TEXT)
        .collect()
}

/// Record a check in `status`: `status.proxyHealth` and `ProxyHealthy`,
/// whose lastTransitionTime moves only when its status does. It carries no
/// observedGeneration: it describes the proxy, not the spec, and a spec
/// change must not rewrite it.
pub fn record(
    status: &mut ExternalKeyStoreStatus,
    report: Option<&HealthReport>,
    verdict: &Verdict,
    checked_at: &str,
    now: &str,
) {
    let non_empty = |s: &str| Some(clean(s)).filter(|s| !s.is_empty());
    status.proxy_health = Some(match report {
        Some(r) => ProxyHealth {
            checked_at: checked_at.to_string(),
            fleet_size: Some(r.fleet_size),
            proxy_vendor: non_empty(&r.proxy_vendor),
            proxy_model: non_empty(&r.proxy_model),
            ekm_vendor: non_empty(&r.ekm_vendor),
            key_managers: r
                .key_managers
                .iter()
                .map(|m| KeyManagerHealthStatus {
                    id: clean(&m.id),
                    model: clean(&m.model),
                    health: health_state(m.health),
                })
                .collect(),
        },
        None => ProxyHealth {
            checked_at: checked_at.to_string(),
            ..ProxyHealth::default()
        },
    });
    let value = ConditionStatus::from_bool(verdict.healthy);
    match status
        .conditions
        .iter_mut()
        .find(|c| c.type_ == PROXY_HEALTHY)
    {
        Some(c) => {
            if c.status != value {
                c.last_transition_time = now.to_string();
            }
            c.status = value;
            c.reason = verdict.reason.to_string();
            c.message.clone_from(&verdict.message);
            c.observed_generation = None;
        }
        None => status.conditions.push(Condition {
            type_: PROXY_HEALTHY.to_string(),
            status: value,
            reason: verdict.reason.to_string(),
            message: verdict.message.clone(),
            last_transition_time: now.to_string(),
            observed_generation: None,
        }),
    }
}

/// Drop what the watch recorded; whether anything was there.
pub fn clear(status: &mut ExternalKeyStoreStatus) -> bool {
    let before = status.conditions.len();
    status.conditions.retain(|c| c.type_ != PROXY_HEALTHY);
    let had = status.proxy_health.take().is_some();
    had || status.conditions.len() != before
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xks::KeyManagerStatus;

    fn report(healths: &[KeyManagerHealth]) -> HealthReport {
        HealthReport {
            fleet_size: 2,
            proxy_vendor: "v".into(),
            proxy_model: "m".into(),
            ekm_vendor: "e".into(),
            key_managers: healths
                .iter()
                .enumerate()
                .map(|(i, h)| KeyManagerStatus {
                    id: format!("km-{i}"),
                    model: "hsm".into(),
                    health: *h,
                })
                .collect(),
        }
    }

    fn verdict(healths: &[KeyManagerHealth]) -> Verdict {
        judge("https://p/x", "AKID", &Ok(report(healths)))
    }

    #[test]
    fn one_active_key_manager_is_healthy_and_the_others_are_named() {
        use KeyManagerHealth::*;
        let all = verdict(&[Active, Active]);
        assert!(all.healthy && all.reason == "Healthy", "{all:?}");
        let partly = verdict(&[Active, Unavailable]);
        assert!(partly.healthy && partly.reason == "Degraded", "{partly:?}");
        assert!(partly.message.contains("km-1 UNAVAILABLE"), "{partly:?}");
        let degraded = verdict(&[Degraded, Unavailable]);
        assert!(!degraded.healthy && degraded.reason == "Degraded");
        let down = verdict(&[Unavailable, Unavailable]);
        assert!(!down.healthy && down.reason == "Unavailable");
    }

    #[test]
    fn failures_say_why_and_name_the_rejected_access_key_id() {
        let rejected = judge(
            "https://p/x",
            "AKID",
            &Err(ProbeError::AuthenticationFailed),
        );
        assert_eq!(rejected.reason, "CredentialRejected");
        assert!(rejected.message.contains("401") && rejected.message.contains("AKID"));
        let timeout = judge("https://p/x", "AKID", &Err(ProbeError::TimedOut));
        assert_eq!(timeout.reason, "Unreachable");
        assert!(!timeout.message.contains("AKID"));
        let path = judge("https://p/x", "AKID", &Err(ProbeError::InvalidUriPath));
        assert_eq!(path.reason, "Misconfigured");
    }

    fn status_with_proxy(checked_at: Option<&str>) -> ExternalKeyStoreStatus {
        serde_json::from_value(serde_json::json!({
            "proxy": {"connectivity": "PUBLIC_ENDPOINT", "uriEndpoint": "https://p",
                      "uriPath": "/kms/xks/v1", "accessKeyId": "AKID"},
            "proxyHealth": checked_at.map(|t| serde_json::json!({"checkedAt": t})),
        }))
        .expect("status")
    }

    #[test]
    fn checks_come_every_interval_and_only_in_settled_passes() {
        let minute = Duration::from_secs(60);
        let t0 = "2026-01-01T00:00:00Z"
            .parse::<jiff::Timestamp>()
            .expect("time")
            .as_millisecond();
        let fresh = status_with_proxy(None);
        assert_eq!(
            next(minute, ProxyChecks::Direct, Outcome::InSync, &fresh, t0),
            Next::Check
        );
        let checked = status_with_proxy(Some("2026-01-01T00:00:00Z"));
        assert_eq!(
            next(
                minute,
                ProxyChecks::Direct,
                Outcome::InSync,
                &checked,
                t0 + 20_000
            ),
            Next::Wait(Duration::from_secs(40))
        );
        // Up to 10% early is on time.
        assert_eq!(
            next(
                minute,
                ProxyChecks::Direct,
                Outcome::Stalled,
                &checked,
                t0 + 55_000
            ),
            Next::Check
        );
        let polling = Outcome::Requeue(Duration::from_millis(500));
        assert_eq!(
            next(minute, ProxyChecks::Direct, polling, &checked, t0 + 120_000),
            Next::Leave
        );
        for outcome in [Outcome::Suspended, Outcome::Claimed] {
            assert_eq!(
                next(minute, ProxyChecks::Direct, outcome, &checked, t0 + 120_000),
                Next::Leave
            );
        }
        assert_eq!(
            next(minute, ProxyChecks::KmsOnly, Outcome::InSync, &checked, t0),
            Next::Clear
        );
        assert_eq!(
            next(
                Duration::ZERO,
                ProxyChecks::Direct,
                Outcome::InSync,
                &checked,
                t0
            ),
            Next::Clear
        );
        let no_store = ExternalKeyStoreStatus::default();
        assert_eq!(
            next(minute, ProxyChecks::Direct, Outcome::InSync, &no_store, t0),
            Next::Clear
        );
    }

    #[test]
    fn checked_at_is_refreshed_once_fifteen_minutes_old() {
        let now = "2026-01-01T01:00:00Z"
            .parse::<jiff::Timestamp>()
            .expect("time");
        assert!(!stale(None, now));
        assert!(!stale(Some("2026-01-01T00:50:00.123Z"), now));
        assert!(stale(Some("2026-01-01T00:45:00Z"), now));
        assert!(!stale(Some("not a time"), now));
    }

    #[test]
    fn the_condition_moves_its_transition_time_only_when_its_status_changes() {
        use KeyManagerHealth::*;
        let mut status = ExternalKeyStoreStatus::default();
        let r = report(&[Active, Active]);
        record(
            &mut status,
            Some(&r),
            &verdict(&[Active, Active]),
            "c1",
            "t1",
        );
        let r2 = report(&[Active, Degraded]);
        record(
            &mut status,
            Some(&r2),
            &verdict(&[Active, Degraded]),
            "c2",
            "t2",
        );
        let c = conditions::get(&status, PROXY_HEALTHY).expect("condition");
        assert_eq!(
            (c.reason.as_str(), c.last_transition_time.as_str()),
            ("Degraded", "t1")
        );
        let down = judge("https://p/x", "AKID", &Err(ProbeError::TimedOut));
        record(&mut status, None, &down, "c3", "t3");
        let c = conditions::get(&status, PROXY_HEALTHY).expect("condition");
        assert_eq!(c.last_transition_time, "t3");
        let health = status.proxy_health.as_ref().expect("recorded");
        assert!(health.key_managers.is_empty() && health.fleet_size.is_none());
        assert!(clear(&mut status));
        assert!(status.proxy_health.is_none() && status.conditions.is_empty());
        assert!(!clear(&mut status));
    }
}
