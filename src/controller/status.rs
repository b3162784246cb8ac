//! The engine's `StatusSink` in a cluster: server-side apply of the status
//! subresource, plus the Events and step-duration metrics that a change of
//! status implies (a step started, succeeded or failed; the resource
//! stalled). Writes that would only move timestamps are skipped: each write
//! is a watch event that wakes the controller again.

use super::metrics::Metrics;
use crate::api::{ExternalKeyStore, ExternalKeyStoreStatus, MANAGER, OperationPhase, StepState};
use crate::engine::conditions::{self, STALLED};
use crate::engine::{SinkError, StatusSink};
use k8s_openapi::api::core::v1::ObjectReference;
use kube::api::{Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder};
use kube::{Api, Resource};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

/// The status this process last wrote, per resource uid. Only the operator
/// writes status, so this is newer than a watch cache that has not yet
/// caught up with the last write (e.g. on an immediate requeue); resuming
/// from a stale status could repeat a step such as a credential update.
#[derive(Default)]
pub struct StatusMemory(Mutex<HashMap<String, ExternalKeyStoreStatus>>);

impl StatusMemory {
    pub fn get(&self, uid: &str) -> Option<ExternalKeyStoreStatus> {
        self.lock().get(uid).cloned()
    }
    pub fn remember(&self, uid: &str, status: &ExternalKeyStoreStatus) {
        self.lock().insert(uid.to_string(), status.clone());
    }
    pub fn forget(&self, uid: &str) {
        self.lock().remove(uid);
    }
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, ExternalKeyStoreStatus>> {
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
        }
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
        if let Err(e) = self.recorder.publish(&event, &self.reference).await {
            tracing::warn!(resource = %self.name, reason, error = %e, "could not publish Event");
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

    fn record_duration(&self, step: &crate::api::Step) {
        let parse =
            |t: &Option<String>| t.as_deref().and_then(|t| t.parse::<jiff::Timestamp>().ok());
        if let (Some(start), Some(end)) = (parse(&step.started_at), parse(&step.finished_at)) {
            let took = end.duration_since(start);
            if let Ok(took) = Duration::try_from(took) {
                self.metrics.step_finished(step.name, took);
            }
        }
    }
}

impl StatusSink for StatusWriter<'_> {
    async fn write(&mut self, status: &ExternalKeyStoreStatus) -> Result<(), SinkError> {
        let unchanged = self
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

/// The status with every timestamp blanked: two statuses equal under this
/// differ only in when things happened, which is not worth a write.
pub fn without_timestamps(status: &ExternalKeyStoreStatus) -> ExternalKeyStoreStatus {
    let mut s = status.clone();
    for c in &mut s.conditions {
        c.last_transition_time.clear();
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
    fn truncation_respects_characters() {
        assert_eq!(truncate("héllo", 2), "h");
        assert_eq!(truncate("hello", 10), "hello");
    }
}
