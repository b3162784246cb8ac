//! One reconcile pass's status, where it is written, the generation it
//! describes and the clock: every conclusion of a pass is one call here
//! instead of a condition update and a write spread over the engine.

use super::conditions::{self, Summary};
use super::{Clock, EngineError, Outcome, StatusSink};
use crate::api::{ExternalKeyStoreStatus, RetryStatus, StepName, StepState};

pub struct Pass<'a, S> {
    pub status: &'a mut ExternalKeyStoreStatus,
    sink: &'a mut S,
    pub generation: Option<i64>,
    clock: &'a dyn Clock,
}

/// How a pass ends: the conditions to show and what the caller does next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Conclusion {
    pub summary: Summary,
    pub reason: String,
    pub message: String,
    pub outcome: Outcome,
}

impl Conclusion {
    pub fn new(
        summary: Summary,
        reason: impl Into<String>,
        message: impl Into<String>,
        outcome: Outcome,
    ) -> Self {
        Self {
            summary,
            reason: reason.into(),
            message: message.into(),
            outcome,
        }
    }

    /// Nothing changes until a person acts.
    pub fn stalled(reason: impl Into<String>, message: impl Into<String>) -> Self {
        Self::new(Summary::Stalled, reason, message, Outcome::Stalled)
    }
}

impl<'a, S: StatusSink> Pass<'a, S> {
    pub fn new(
        status: &'a mut ExternalKeyStoreStatus,
        sink: &'a mut S,
        generation: Option<i64>,
        clock: &'a dyn Clock,
    ) -> Self {
        Self {
            status,
            sink,
            generation,
            clock,
        }
    }

    pub fn now(&self) -> String {
        self.clock.now()
    }

    /// Write the status as it is now.
    pub async fn write(&mut self) -> Result<(), EngineError> {
        self.sink.write(self.status).await?;
        Ok(())
    }

    /// Show the conclusion in the conditions, write once, and return what
    /// the caller should do next.
    pub async fn conclude(&mut self, end: Conclusion) -> Result<Outcome, EngineError> {
        self.status.observed_generation = self.generation;
        self.set_conditions(end.summary, &end.reason, &end.message);
        self.write().await?;
        Ok(end.outcome)
    }

    /// The three conditions at once, without writing.
    pub fn set_conditions(&mut self, summary: Summary, reason: &str, message: &str) {
        let now = self.now();
        conditions::set(self.status, summary, reason, message, self.generation, &now);
    }

    /// Step `index` of the operation is now `state` (with `message`), its
    /// start and end times kept.
    pub fn mark(&mut self, index: usize, state: StepState, message: Option<String>) {
        let now = self.now();
        if let Some(step) = self
            .status
            .operation
            .as_mut()
            .and_then(|o| o.steps.get_mut(index))
        {
            step.state = state;
            step.message = message;
            if step.started_at.is_none() {
                step.started_at = Some(now.clone());
            }
            if matches!(
                state,
                StepState::Succeeded | StepState::Failed | StepState::Skipped
            ) {
                step.finished_at = Some(now);
            }
        }
    }

    /// Failures of `step` in a row so far (0 when none is being retried).
    pub fn failures(&self, step: Option<StepName>) -> u32 {
        self.status
            .retry
            .as_ref()
            .filter(|r| r.step == step)
            .map_or(0, |r| r.attempts)
    }

    /// Record one more failure of `step`, to be tried again after `delay`.
    pub fn record_retry(
        &mut self,
        step: Option<StepName>,
        reason: &str,
        error: &str,
        calls: u32,
        delay: std::time::Duration,
    ) {
        let attempts = self.failures(step) + 1;
        let now = self.now();
        let due = now
            .parse::<jiff::Timestamp>()
            .ok()
            .and_then(|t| {
                t.checked_add(jiff::SignedDuration::try_from(delay).unwrap_or_default())
                    .ok()
            })
            .and_then(|t| t.round(jiff::Unit::Second).ok())
            .map_or(now, |t| t.to_string());
        self.status.retry = Some(RetryStatus {
            attempts,
            step,
            reason: reason.to_string(),
            last_error: error.to_string(),
            next_attempt_at: due,
            calls,
        });
    }

    /// What is being retried succeeded (or no longer applies).
    pub fn clear_retry(&mut self) {
        self.status.retry = None;
    }
}
