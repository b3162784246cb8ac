//! The engine's `StatusSink` in a cluster: server-side apply of the status
//! subresource, plus the Events and metrics that a change of status implies
//! (a step started, succeeded or failed; an operation ended; a disruptive
//! change disconnected the store or it is CONNECTED again; the resource
//! stalled). Writes that would only move timestamps are skipped: each write
//! is a watch event that wakes the controller again.

use super::metrics::{self, Metrics};
use crate::api::{
    ExternalKeyStore, ExternalKeyStoreStatus, MANAGER, OperationPhase, StepName, StepState,
};
use crate::engine::conditions::{self, STALLED};
use crate::engine::{SinkError, StatusSink};
use crate::model::ConnectionState;
use k8s_openapi::api::core::v1::ObjectReference;
use kube::api::{Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder};
use kube::{Api, Resource};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The status this process last wrote (or would have written, had it
/// changed more than timestamps), per resource uid. Only the operator
/// writes status, so this is newer than a watch cache that has not yet
/// caught up with the last write (e.g. on an immediate requeue); resuming
/// from a stale status could repeat a step such as a credential update.
/// Clones share it (the metrics read it at scrape time).
#[derive(Clone, Default)]
pub struct StatusMemory(Arc<Mutex<Memory>>);

#[derive(Default)]
struct Memory {
    statuses: HashMap<String, ExternalKeyStoreStatus>,
    /// uid → (the operation's startedAt, when its Disconnect was called):
    /// the start of a disruption window, to the millisecond.
    disruptions: HashMap<String, (String, Instant)>,
}

impl StatusMemory {
    pub fn get(&self, uid: &str) -> Option<ExternalKeyStoreStatus> {
        self.lock().statuses.get(uid).cloned()
    }
    pub fn remember(&self, uid: &str, status: &ExternalKeyStoreStatus) {
        self.lock().statuses.insert(uid.to_string(), status.clone());
    }
    pub fn forget(&self, uid: &str) {
        let mut memory = self.lock();
        memory.statuses.remove(uid);
        memory.disruptions.remove(uid);
    }
    /// The first Disconnect of operation `op` (its startedAt) is called now.
    fn disruption_started(&self, uid: &str, op: &str) {
        self.lock()
            .disruptions
            .entry(uid.to_string())
            .and_modify(|(started_op, at)| {
                if started_op != op {
                    *started_op = op.to_string();
                    *at = Instant::now();
                }
            })
            .or_insert_with(|| (op.to_string(), Instant::now()));
    }
    /// When the Disconnect of operation `op` was called, if this process
    /// saw it; forgotten once asked.
    fn disruption_ended(&self, uid: &str, op: &str) -> Option<Instant> {
        let mut memory = self.lock();
        let (started_op, at) = memory.disruptions.remove(uid)?;
        (started_op == op).then_some(at)
    }
    fn lock(&self) -> std::sync::MutexGuard<'_, Memory> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Kubernetes caps an Event note at 1 kB.
const MAX_NOTE_BYTES: usize = 1000;

pub struct StatusWriter<'a> {
    api: Api<ExternalKeyStore>,
    name: String,
    reference: ObjectReference,
    recorder: &'a Recorder,
    metrics: &'a Metrics,
    /// The status as last written (or as read with the object).
    last: Option<ExternalKeyStoreStatus>,
    memory: &'a StatusMemory,
    uid: String,
    /// The object's resourceVersion after the last write: a status write
    /// changes it, and the finalizer patches are guarded by it.
    resource_version: Option<String>,
    /// The store's account ("" when unknown) and Region, for the metrics.
    account: String,
    region: String,
}

impl<'a> StatusWriter<'a> {
    /// `recorded` is the status the pass starts from (see [`StatusMemory`]).
    pub fn new(
        api: Api<ExternalKeyStore>,
        resource: &ExternalKeyStore,
        recorded: Option<ExternalKeyStoreStatus>,
        recorder: &'a Recorder,
        metrics: &'a Metrics,
        memory: &'a StatusMemory,
    ) -> Self {
        Self {
            api,
            name: resource.metadata.name.clone().unwrap_or_default(),
            reference: resource.object_ref(&()),
            recorder,
            metrics,
            last: recorded,
            memory,
            uid: resource.metadata.uid.clone().unwrap_or_default(),
            resource_version: resource.metadata.resource_version.clone(),
            account: String::new(),
            region: String::new(),
        }
    }

    /// The account and Region the store lives in, for the metrics.
    pub fn in_scope(mut self, account: String, region: String) -> Self {
        self.account = account;
        self.region = region;
        self
    }

    /// Write `status` even if only timestamps changed: to refresh a time
    /// that readers rely on (see `health::STATUS_REFRESH`).
    pub async fn refresh(&mut self, status: &ExternalKeyStoreStatus) -> Result<(), SinkError> {
        self.write_if(status, true).await
    }

    pub fn resource_version(&self) -> Option<&str> {
        self.resource_version.as_deref()
    }

    pub fn set_resource_version(&mut self, resource_version: Option<String>) {
        self.resource_version = resource_version;
    }

    /// Publish an Event about the resource. A failure is logged, not
    /// returned: Events are best effort and must not stop a step.
    pub async fn event(&self, type_: EventType, reason: &str, action: &str, note: &str) {
        let event = Event {
            type_,
            reason: reason.to_string(),
            note: Some(truncate(note, MAX_NOTE_BYTES).to_string()),
            action: action.to_string(),
            secondary: None,
        };
        match self.recorder.publish(&event, &self.reference).await {
            Ok(()) => {}
            // A namespace being deleted takes no new objects, Events
            // included: expected while its resources are released.
            Err(kube::Error::Api(status)) if namespace_terminating(&status) => {
                tracing::debug!(resource = %self.name, reason, "no Event: the namespace is being deleted");
            }
            Err(e) => {
                tracing::warn!(resource = %self.name, reason, error = %e, "could not publish Event");
            }
        }
    }

    async fn apply(&mut self, status: &ExternalKeyStoreStatus) -> Result<(), SinkError> {
        let patch = serde_json::json!({
            "apiVersion": ExternalKeyStore::api_version(&()),
            "kind": ExternalKeyStore::kind(&()),
            "status": status,
        });
        let written = self
            .api
            .patch_status(
                &self.name,
                &PatchParams::apply(MANAGER).force(),
                &Patch::Apply(&patch),
            )
            .await
            .map_err(|e| SinkError(format!("status of ExternalKeyStore {}: {e}", self.name)))?;
        self.resource_version = written.metadata.resource_version;
        Ok(())
    }

    /// Events and metrics for what changed between the last status and `new`.
    async fn announce(&self, new: &ExternalKeyStoreStatus) {
        let old = self.last.as_ref();
        let mut step_failed = false;
        if let Some(op) = &new.operation {
            let same_op = old
                .and_then(|o| o.operation.as_ref())
                .filter(|o| o.started_at == op.started_at && o.trigger == op.trigger);
            for (i, step) in op.steps.iter().enumerate() {
                let before = same_op
                    .and_then(|o| o.steps.get(i))
                    .filter(|s| s.name == step.name)
                    .map_or(StepState::Pending, |s| s.state);
                if before == step.state {
                    continue;
                }
                let action = step.name.to_string();
                let message = step.message.as_deref().unwrap_or_default();
                // A step's start is in status; its end, an Event.
                match step.state {
                    StepState::Succeeded => {
                        self.record_duration(step);
                        let note = if message.is_empty() {
                            format!("{action} succeeded")
                        } else {
                            format!("{action} succeeded: {message}")
                        };
                        self.event(EventType::Normal, "StepSucceeded", &action, &note)
                            .await;
                    }
                    StepState::Failed => {
                        step_failed = true;
                        self.record_duration(step);
                        let reason = conditions::get(new, STALLED)
                            .filter(|c| c.is_true())
                            .map_or("StepFailed", |c| c.reason.as_str());
                        self.event(
                            EventType::Warning,
                            reason,
                            &action,
                            &format!("{action} failed: {message}"),
                        )
                        .await;
                    }
                    _ => {}
                }
            }
            let phase_before = same_op.map(|o| o.phase);
            self.measure_disruption(old, new);
            if phase_before != Some(op.phase)
                && let Some(outcome) = metrics::operation_outcome(op.phase)
            {
                // Counted on the write that ends it: a later pass that sees
                // the same finished operation compares equal above.
                let took = parse_time(op.finished_at.as_deref())
                    .zip(parse_time(Some(&op.started_at)))
                    .and_then(|(end, start)| Duration::try_from(end.duration_since(start)).ok());
                self.metrics
                    .operation_finished(metrics::operation_trigger(op), outcome, took);
            }
            if phase_before != Some(op.phase) {
                let note = op.message.as_deref().unwrap_or(&op.trigger);
                match op.phase {
                    OperationPhase::AwaitingApproval => {
                        self.event(EventType::Normal, "AwaitingApproval", "Approve", note)
                            .await;
                    }
                    OperationPhase::Succeeded => {
                        self.event(EventType::Normal, "OperationSucceeded", "Reconcile", note)
                            .await;
                    }
                    OperationPhase::RolledBack => {
                        self.event(EventType::Warning, "RolledBack", "Rollback", note)
                            .await;
                    }
                    _ => {}
                }
            }
        }
        // A stall that no failed step explains (invalid spec, bad Secret, a
        // store KMS refuses to manage...): say it once, when it begins.
        let stalled = conditions::get(new, STALLED).filter(|c| c.is_true());
        let stalled_before = old
            .and_then(|o| conditions::get(o, STALLED))
            .filter(|c| c.is_true());
        if let Some(c) = stalled
            && !step_failed
            // The reason, not the message: the same stall is reworded
            // (e.g. "the last attempt ended Failed: ...") on later passes.
            && stalled_before.map(|b| &b.reason) != Some(&c.reason)
        {
            self.event(EventType::Warning, &c.reason, "Reconcile", &c.message)
                .await;
        }
    }

    /// The disruption window of a disruptive operation: it opens when its
    /// Disconnect is about to be called (this write precedes the call) and
    /// closes with the write that first shows the store CONNECTED again.
    /// A window opened before a restart is closed from the step's startedAt
    /// (to the second).
    fn measure_disruption(
        &self,
        old: Option<&ExternalKeyStoreStatus>,
        new: &ExternalKeyStoreStatus,
    ) {
        let Some(op) = new.operation.as_ref().filter(|op| op.disruptive) else {
            return;
        };
        let same_op = old
            .and_then(|o| o.operation.as_ref())
            .filter(|o| o.started_at == op.started_at && o.trigger == op.trigger);
        let disconnect = op.steps.iter().position(|s| s.name == StepName::Disconnect);
        let Some(disconnect) = disconnect else {
            return;
        };
        let step = &op.steps[disconnect];
        let before = same_op
            .and_then(|o| o.steps.get(disconnect))
            .map_or(StepState::Pending, |s| s.state);
        if before == StepState::Pending && step.state != StepState::Pending && !self.uid.is_empty()
        {
            self.memory.disruption_started(&self.uid, &op.started_at);
        }
        let connected_now = new.connection_state == Some(ConnectionState::Connected)
            && old.and_then(|o| o.connection_state) != Some(ConnectionState::Connected);
        let running_before = same_op.is_some_and(|o| {
            matches!(
                o.phase,
                OperationPhase::Running | OperationPhase::RollingBack
            )
        });
        if !connected_now || !running_before || step.started_at.is_none() {
            return;
        }
        let took = match self.memory.disruption_ended(&self.uid, &op.started_at) {
            Some(at) => Some(at.elapsed()),
            None => parse_time(step.started_at.as_deref()).and_then(|start| {
                Duration::try_from(jiff::Timestamp::now().duration_since(start)).ok()
            }),
        };
        if let Some(took) = took {
            self.metrics
                .disruption_ended(&self.account, &self.region, took);
        }
    }

    fn record_duration(&self, step: &crate::api::Step) {
        let parse = |t: &Option<String>| parse_time(t.as_deref());
        if let (Some(start), Some(end)) = (parse(&step.started_at), parse(&step.finished_at)) {
            let took = end.duration_since(start);
            if let Ok(took) = Duration::try_from(took) {
                self.metrics.step_finished(step.name, took);
            }
        }
    }
}

fn parse_time(t: Option<&str>) -> Option<jiff::Timestamp> {
    t.and_then(|t| t.parse::<jiff::Timestamp>().ok())
}

impl StatusWriter<'_> {
    async fn write_if(
        &mut self,
        status: &ExternalKeyStoreStatus,
        always: bool,
    ) -> Result<(), SinkError> {
        let unchanged = !always
            && self
                .last
                .as_ref()
                .is_some_and(|last| without_timestamps(last) == without_timestamps(status));
        if !unchanged {
            self.apply(status).await?;
            self.announce(status).await;
        }
        if !self.uid.is_empty() {
            self.memory.remember(&self.uid, status);
        }
        self.last = Some(status.clone());
        Ok(())
    }
}

impl StatusSink for StatusWriter<'_> {
    async fn write(&mut self, status: &ExternalKeyStoreStatus) -> Result<(), SinkError> {
        self.write_if(status, false).await
    }
}

/// The status with every timestamp blanked: two statuses equal under this
/// differ only in when things happened, which is not worth a write.
pub fn without_timestamps(status: &ExternalKeyStoreStatus) -> ExternalKeyStoreStatus {
    let mut s = status.clone();
    for c in &mut s.conditions {
        c.last_transition_time.clear();
    }
    if let Some(health) = s.proxy_health.as_mut() {
        // Every health check moves it; see health::STATUS_REFRESH.
        health.checked_at.clear();
    }
    if let Some(op) = s.operation.as_mut() {
        op.started_at.clear();
        op.finished_at = None;
        for step in &mut op.steps {
            step.started_at = None;
            step.finished_at = None;
        }
    }
    s
}

/// The API server's refusal to create objects in a namespace being deleted.
fn namespace_terminating(status: &kube::core::Status) -> bool {
    status.code == 403
        && status
            .details
            .as_ref()
            .is_some_and(|d| d.causes.iter().any(|c| c.reason == "NamespaceTerminating"))
}

fn truncate(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::conditions::Summary;

    #[test]
    fn timestamps_alone_are_not_a_change() {
        let mut a = ExternalKeyStoreStatus::default();
        conditions::set(&mut a, Summary::Ready, "Connected", "ok", Some(1), "t1");
        let mut b = a.clone();
        for c in &mut b.conditions {
            c.last_transition_time = "t2".into();
        }
        assert_eq!(without_timestamps(&a), without_timestamps(&b));
        conditions::set(
            &mut b,
            Summary::Ready,
            "Connected",
            "other words",
            Some(1),
            "t3",
        );
        assert_ne!(without_timestamps(&a), without_timestamps(&b));
    }

    #[test]
    fn a_health_check_that_finds_the_same_is_not_a_change() {
        let checked =
            |at: &str, health: crate::api::KeyManagerHealthState| ExternalKeyStoreStatus {
                proxy_health: Some(crate::api::ProxyHealth {
                    checked_at: at.into(),
                    fleet_size: Some(1),
                    key_managers: vec![crate::api::KeyManagerHealthStatus {
                        id: "ekm-1".into(),
                        model: String::new(),
                        health,
                    }],
                    ..Default::default()
                }),
                ..Default::default()
            };
        use crate::api::KeyManagerHealthState::{Active, Degraded};
        let a = checked("2026-01-01T00:00:00.000Z", Active);
        let b = checked("2026-01-01T00:01:00.000Z", Active);
        assert_eq!(without_timestamps(&a), without_timestamps(&b));
        let c = checked("2026-01-01T00:01:00.000Z", Degraded);
        assert_ne!(without_timestamps(&a), without_timestamps(&c));
    }

    #[test]
    fn a_namespace_being_deleted_is_recognised_from_the_api_servers_answer() {
        let answer: kube::core::Status = serde_json::from_value(serde_json::json!({
            "status": "Failure",
            "code": 403,
            "reason": "Forbidden",
            "message": "unable to create new content in namespace x because it is being terminated",
            "details": {"name": "e", "group": "events.k8s.io", "kind": "events",
                "causes": [{"reason": "NamespaceTerminating", "message": "namespace x is being terminated", "field": "metadata.namespace"}]}
        }))
        .expect("a Status");
        assert!(namespace_terminating(&answer));
        let rbac: kube::core::Status = serde_json::from_value(serde_json::json!({
            "status": "Failure", "code": 403, "reason": "Forbidden",
            "message": "events.events.k8s.io is forbidden: User cannot create resource"
        }))
        .expect("a Status");
        assert!(
            !namespace_terminating(&rbac),
            "an RBAC denial must stay a warning"
        );
    }

    #[test]
    fn truncation_respects_characters() {
        assert_eq!(truncate("héllo", 2), "h");
        assert_eq!(truncate("hello", 10), "hello");
    }
}
