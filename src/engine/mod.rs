//! The engine: observes the store, asks the planner what to do, and runs the
//! recorded operation one step at a time through the `KeyStores` and
//! `ProxyProbe` ports, writing status before and after every step.
//!
//! `Engine::reconcile` is a short driver: guards → observe → decide →
//! dispatch. Decisions live in the pure planner (`plan`: what to do, which
//! step is next, whether to roll back), the claim rule (`claims`) and the
//! retry policy (`retry`); the engine does the I/O between them.
//!
//! It never sleeps waiting for KMS: a step that waits (DISCONNECTING,
//! CONNECTING) or backs off records where it is and returns
//! [`Outcome::Requeue`]. Every side effect is preceded by a status write
//! that says it is about to happen, so a crash at any point resumes from
//! what KMS reports plus what status recorded (see `steps` for how each
//! step recognises it already ran).

pub mod conditions;
mod pass;
pub mod remediation;
mod steps;

use crate::api::{
    DesiredConnectionState, DisruptiveUpdates, ExternalKeyStore, ExternalKeyStoreStatus,
    ManagementPolicy, OperationPhase, Step, StepState,
};
use crate::claims::{self, Claimant, Claimed, Scope};
use crate::credentials::{self, CredentialError};
use crate::error::{Class, ErrorCategory};
use crate::kms::{KeyStores, KmsError};
use crate::model::{ConnectionState, ObservedStore, ProxyConfig, ProxyCredential};
use crate::plan::{self, Decision, Desired, Gate, Next};
use crate::retry::{RetryPolicy, Situation, Verdict};
use crate::xks::ProxyProbe;
use conditions::Summary;
use pass::{Conclusion, Pass};
use std::future::Future;
use std::time::Duration;

pub use steps::{StepError, camel_reason};

/// Tunables of the engine.
#[derive(Clone, Debug)]
pub struct EngineOptions {
    /// How soon to look again while KMS is CONNECTING or DISCONNECTING.
    pub poll_interval: Duration,
    /// When and how often failures that can pass by themselves are retried.
    pub retry: RetryPolicy,
    /// Key of the credential fingerprint HMAC.
    pub fingerprint_key: Vec<u8>,
}

impl Default for EngineOptions {
    fn default() -> Self {
        Self {
            // Each of a rotation's two waits adds up to this much to the
            // time the store's keys are unusable (half of it on average;
            // BENCHMARKS.md). In the controller, the describe cache serves
            // the polls of every store in transition from shared listings,
            // so polling faster does not cost a call per store.
            poll_interval: Duration::from_millis(500),
            retry: RetryPolicy::default(),
            fingerprint_key: b"xks-operator/credential-fingerprint/v1".to_vec(),
        }
    }
}

/// Source of timestamps, so tests can be deterministic.
pub trait Clock: Send + Sync {
    /// RFC 3339, UTC.
    fn now(&self) -> String;
}

pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> String {
        jiff::Timestamp::now()
            .round(jiff::Unit::Second)
            .map_or_else(|_| jiff::Timestamp::now().to_string(), |t| t.to_string())
    }
}

/// Where status goes: the status subresource in a cluster, memory or a
/// terminal in file mode.
pub trait StatusSink: Send {
    fn write(
        &mut self,
        status: &ExternalKeyStoreStatus,
    ) -> impl Future<Output = Result<(), SinkError>> + Send;
}

#[derive(Debug, Clone, thiserror::Error)]
#[error("could not write status: {0}")]
pub struct SinkError(pub String);

/// An error that stops this reconcile pass without a status record of it.
#[derive(Debug, Clone, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Status(#[from] SinkError),
}

/// One reconcile request.
pub struct Request<'a> {
    pub resource: &'a ExternalKeyStore,
    /// The credential read from the referenced Secret.
    pub credential: Result<ProxyCredential, CredentialError>,
    /// The approval annotation equals the current generation.
    pub approved: bool,
    /// The resource carries a deletionTimestamp.
    pub deleting: bool,
    /// Value of `reconcile.fluxcd.io/requestedAt`, if any.
    pub requested_at: Option<String>,
    /// The other resources that may name the same store (the claim rule:
    /// a store is acted on by one resource only). Empty: no other resource.
    pub rivals: Vec<Claimant>,
}

impl<'a> Request<'a> {
    /// `resource` as the only resource naming its store, not approved, not
    /// being deleted, no reconcile requested: the rest is set by the caller
    /// that knows better (struct update syntax).
    pub fn alone(
        resource: &'a ExternalKeyStore,
        credential: Result<ProxyCredential, CredentialError>,
    ) -> Self {
        Self {
            resource,
            credential,
            approved: false,
            deleting: false,
            requested_at: None,
            rivals: Vec::new(),
        }
    }
}

/// What the caller should do next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// KMS matches the resource. Check drift again later.
    InSync,
    /// Call again after this delay (waiting on KMS, or backing off).
    Requeue(Duration),
    /// Nothing changes until a person acts; status says what to do.
    Stalled,
    /// Waiting for the approval annotation.
    AwaitingApproval,
    /// `ObserveOnly`: the plan is in status, nothing was changed.
    Observed,
    /// Suspended: nothing was looked at.
    Suspended,
    /// Deletion is complete on the KMS side: the finalizer may go.
    Released,
    /// Another resource holds the store: nothing was changed, and on
    /// deletion the finalizer may go with the store untouched.
    Claimed,
}

pub struct Engine<K, P> {
    pub kms: K,
    pub probe: P,
    /// The KMS Region, part of the proxy's SigV4 scope.
    pub region: String,
    /// The AWS account `kms` acts in, when known (claims are per account
    /// and Region).
    pub account: Option<String>,
    pub options: EngineOptions,
    pub clock: Box<dyn Clock>,
}

/// What [`Engine::preview`] found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Preview {
    pub observed: Option<ObservedStore>,
    pub verdict: PreviewVerdict,
    /// Whether the credential in the Secret was compared with KMS's.
    pub credential_compared: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PreviewVerdict {
    /// A guard (or the claim rule) ends the pass before any change.
    Refused { reason: String, message: String },
    /// What the planner decides.
    Decided(Decision),
}

/// What the guards let through: the pass may look at KMS.
struct Admitted {
    me: Claimant,
    desired: Desired,
    credential: ProxyCredential,
}

/// A failure on its way to the retry policy.
struct Failure<'a> {
    step: Option<crate::api::StepName>,
    error: &'a StepError,
    situation: Situation,
    /// The step's calls so far (see `RetryStatus::calls`).
    calls: u32,
}

impl<'a> Failure<'a> {
    /// A failure before any step ran (describing the store, the planner's
    /// refusal).
    fn outside_steps(error: &'a StepError, situation: Situation) -> Self {
        Self {
            step: None,
            error,
            situation,
            calls: 0,
        }
    }
}

impl<K: KeyStores, P: ProxyProbe> Engine<K, P> {
    pub fn new(kms: K, probe: P, region: impl Into<String>, options: EngineOptions) -> Self {
        Self {
            kms,
            probe,
            region: region.into(),
            account: None,
            options,
            clock: Box::new(SystemClock),
        }
    }

    /// The same engine, acting in `account`.
    pub fn in_account(mut self, account: Option<String>) -> Self {
        self.account = account;
        self
    }

    /// One reconcile pass: runs as many steps as can run without waiting,
    /// writing `status` through `sink` before and after each.
    pub async fn reconcile<S: StatusSink>(
        &self,
        req: &Request<'_>,
        status: &mut ExternalKeyStoreStatus,
        sink: &mut S,
    ) -> Result<Outcome, EngineError> {
        let mut pass = Pass::new(
            status,
            sink,
            req.resource.metadata.generation,
            self.clock.as_ref(),
        );
        let admitted = match self.guard(req, pass.status) {
            Ok(admitted) => admitted,
            Err(end) => return pass.conclude(end).await,
        };
        // An operation that just finished is followed at once by a look at
        // what KMS reports: its last step, the phase and Ready are then one
        // status write, not three.
        for _ in 0..2 {
            let observed = match self.observe(req, &admitted, &mut pass).await {
                Ok(observed) => observed,
                Err(end) => return pass.conclude(end).await,
            };
            let decision = plan::decide(&plan::PlanInput {
                desired: &admitted.desired,
                observed: observed.as_ref(),
                applied_fingerprint: pass.status.credential_fingerprint.as_deref(),
                recorded: pass.status.operation.as_ref(),
                deleting: req.deleting,
                rollback_retry_due: rollback_retry_wait(pass.status, &pass.now()).is_none(),
            });
            match self
                .dispatch(req, &admitted, observed, decision, &mut pass)
                .await?
            {
                Flow::Done(outcome) => return Ok(outcome),
                Flow::Finished => {}
            }
        }
        pass.write().await?;
        Ok(Outcome::Requeue(Duration::ZERO))
    }

    /// What a pass would do now, changing nothing and writing nothing: the
    /// guards, the observation and the planner's decision, exactly as
    /// `reconcile` computes them. Without the Secret (a GitOps repository
    /// rarely holds it) the credential is taken as the one KMS has, and
    /// the preview says it was not compared.
    pub async fn preview(
        &self,
        req: &Request<'_>,
        status: &ExternalKeyStoreStatus,
    ) -> Result<Preview, KmsError> {
        let mut status = status.clone();
        let unknown_credential = req.credential.is_err();
        let admitted = match self.guard(req, &mut status) {
            Ok(admitted) => Some(admitted),
            Err(end)
                if unknown_credential && end.reason == ErrorCategory::CredentialSecret.reason() =>
            {
                None
            }
            Err(end) => {
                return Ok(Preview {
                    observed: None,
                    verdict: PreviewVerdict::Refused {
                        reason: end.reason,
                        message: end.message,
                    },
                    credential_compared: !unknown_credential,
                });
            }
        };
        let observed = observe(&self.kms, req.resource, &status).await?;
        let admitted = admitted.unwrap_or_else(|| {
            let akid = observed
                .as_ref()
                .and_then(|s| s.proxy.as_ref())
                .map(|p| p.access_key_id.clone())
                .unwrap_or_default();
            let credential = ProxyCredential::new(akid, "");
            Admitted {
                me: self.claimant(req.resource, &status),
                desired: desired_state(req.resource, &credential, &self.options.fingerprint_key),
                credential,
            }
        });
        if let Some(store) = &observed
            && let Some(claimed) = claims::yields_to(
                &admitted.me.having_observed(&store.id, &store.name),
                &req.rivals,
            )
        {
            return Ok(Preview {
                observed,
                verdict: PreviewVerdict::Refused {
                    reason: claims::REASON.into(),
                    message: claimed.message(),
                },
                credential_compared: !unknown_credential,
            });
        }
        // A credential not compared is taken as the one last applied.
        let applied = if unknown_credential {
            Some(admitted.desired.credential_fingerprint.clone())
        } else {
            status.credential_fingerprint.clone()
        };
        let decision = plan::decide(&plan::PlanInput {
            desired: &admitted.desired,
            observed: observed.as_ref(),
            applied_fingerprint: applied.as_deref(),
            recorded: status.operation.as_ref(),
            deleting: req.deleting,
            rollback_retry_due: rollback_retry_wait(&status, &self.clock.now()).is_none(),
        });
        Ok(Preview {
            observed,
            verdict: PreviewVerdict::Decided(decision),
            credential_compared: !unknown_credential,
        })
    }

    /// Everything that ends a pass before KMS is called: suspension, a
    /// store another resource holds, an invalid spec, an unreadable Secret.
    fn guard(
        &self,
        req: &Request<'_>,
        status: &mut ExternalKeyStoreStatus,
    ) -> Result<Admitted, Conclusion> {
        let res = req.resource;
        // Suspend wins even over deletion: it is how a person stops the
        // operator from touching KMS, e.g. during an incident. A deleted
        // resource with deletionPolicy Delete waits until it is resumed.
        if res.spec.suspend {
            return Err(Conclusion::new(
                Summary::Waiting,
                "Suspended",
                "spec.suspend is true: the operator makes no AWS call",
                Outcome::Suspended,
            ));
        }
        if let Some(requested) = &req.requested_at
            && status.last_handled_reconcile_at.as_ref() != Some(requested)
        {
            // A requested reconcile retries a change that ended Failed or
            // RolledBack, and a retry now rather than at its due time.
            if let Some(op) = status.operation.as_mut()
                && matches!(
                    op.phase,
                    OperationPhase::Failed | OperationPhase::RolledBack
                )
            {
                op.target.clear();
            }
            status.retry = None;
            status.last_handled_reconcile_at = Some(requested.clone());
        }
        let me = self.claimant(res, status);
        if let Some(claimed) = claims::yields_to(&me, &req.rivals) {
            return Err(yielding(&claimed));
        }
        // An invalid spec must not keep a deleted resource Terminating:
        // deletion only needs the store the status recorded.
        if !req.deleting
            && let Err(problem) = crate::api::validate::validate_spec(&res.spec)
        {
            return Err(Conclusion::stalled(
                ErrorCategory::InvalidSpec.reason(),
                problem,
            ));
        }
        let credential = match &req.credential {
            Ok(c) => c.clone(),
            // Disconnect and delete need no credential, and GitOps pruning
            // often deletes the Secret together with the resource.
            Err(_) if req.deleting => ProxyCredential::new(
                status
                    .proxy
                    .as_ref()
                    .map(|p| p.access_key_id.clone())
                    .unwrap_or_default(),
                "",
            ),
            Err(e) => {
                return Err(Conclusion::stalled(
                    ErrorCategory::CredentialSecret.reason(),
                    e.to_string(),
                ));
            }
        };
        let desired = desired_state(res, &credential, &self.options.fingerprint_key);
        Ok(Admitted {
            me,
            desired,
            credential,
        })
    }

    /// Describe the store and record what KMS reports, unless another
    /// resource holds the store found (checked before it is recorded).
    async fn observe<S: StatusSink>(
        &self,
        req: &Request<'_>,
        admitted: &Admitted,
        pass: &mut Pass<'_, S>,
    ) -> Result<Option<ObservedStore>, Conclusion> {
        let observed = match observe(&self.kms, req.resource, pass.status).await {
            Ok(observed) => observed,
            Err(e) => {
                let error = StepError::from_kms(&e, "describing the store");
                let situation = self.situation(pass.status, &admitted.desired);
                return Err(self.failed(pass, Failure::outside_steps(&error, situation)));
            }
        };
        if let Some(store) = &observed
            && let Some(claimed) = claims::yields_to(
                &admitted.me.having_observed(&store.id, &store.name),
                &req.rivals,
            )
        {
            return Err(yielding(&claimed));
        }
        record_observation(pass.status, observed.as_ref());
        pass.status.observed_generation = pass.generation;
        Ok(observed)
    }

    /// Act on the planner's decision.
    async fn dispatch<S: StatusSink>(
        &self,
        req: &Request<'_>,
        admitted: &Admitted,
        observed: Option<ObservedStore>,
        decision: Decision,
        pass: &mut Pass<'_, S>,
    ) -> Result<Flow, EngineError> {
        let observe_only = req.resource.spec.management_policy == ManagementPolicy::ObserveOnly;
        match decision {
            Decision::InSync => {
                pass.clear_retry();
                let (reason, message) = in_sync_words(observed.as_ref());
                done(
                    pass.conclude(Conclusion::new(
                        Summary::Ready,
                        reason,
                        message,
                        Outcome::InSync,
                    ))
                    .await,
                )
            }
            Decision::Release => Ok(Flow::Done(Outcome::Released)),
            Decision::Refuse { category, message } => {
                let error = StepError::new(category, message);
                let situation = Situation {
                    pinned_store_missing: category == ErrorCategory::NotFound
                        && admitted.desired.pinned_id.is_some(),
                    ..self.situation(pass.status, &admitted.desired)
                };
                let end = self.failed(pass, Failure::outside_steps(&error, situation));
                done(pass.conclude(end).await)
            }
            Decision::Blocked { message } => {
                if let Some(wait) = rollback_retry_wait(pass.status, &pass.now()) {
                    let end = retried_after_rollback(pass.status, &message, wait);
                    return done(pass.conclude(end).await);
                }
                // Keep the reason the change failed with, so it stays visible.
                let reason = conditions::get(pass.status, conditions::STALLED)
                    .filter(|c| c.is_true())
                    .map_or_else(|| "Blocked".to_string(), |c| c.reason.clone());
                done(pass.conclude(Conclusion::stalled(reason, message)).await)
            }
            Decision::Start(new) => {
                let now = pass.now();
                let previous = observed.as_ref().and_then(|s| s.proxy.clone());
                let op = plan::operation(
                    new,
                    admitted.desired.proxy_checks,
                    observe_only,
                    pass.generation,
                    &now,
                    previous,
                    pass.status.operation.as_ref(),
                );
                let planned = describe_steps(&op.steps);
                let trigger = op.trigger.clone();
                pass.status.operation = Some(op);
                pass.clear_retry();
                if observe_only {
                    return done(
                        pass.conclude(Conclusion::new(
                            Summary::Waiting,
                            "DriftDetected",
                            format!(
                                "managementPolicy is ObserveOnly: would run {planned}; nothing was changed"
                            ),
                            Outcome::Observed,
                        ))
                        .await,
                    );
                }
                // Recorded with the first step's write: before its side
                // effect, or with its result when it has none.
                pass.set_conditions(
                    Summary::Progressing,
                    "OperationStarted",
                    &format!("{trigger}: {planned}"),
                );
                self.run(req, admitted, observed, pass).await
            }
            Decision::Continue => {
                if observe_only {
                    // The policy changed mid-way: stop changing things.
                    pass.write().await?;
                    return Ok(Flow::Done(Outcome::Observed));
                }
                self.run(req, admitted, observed, pass).await
            }
        }
    }

    /// Run the recorded operation until it waits, fails or finishes.
    /// `observed` is what this pass just described: the first step starts
    /// from it instead of describing the store again (one KMS call less per
    /// pass, under a 5/s quota); later steps follow a side effect and look
    /// afresh.
    async fn run<S: StatusSink>(
        &self,
        req: &Request<'_>,
        admitted: &Admitted,
        observed: Option<ObservedStore>,
        pass: &mut Pass<'_, S>,
    ) -> Result<Flow, EngineError> {
        let gate = Gate {
            require_approval: req.resource.spec.disruptive_updates
                == DisruptiveUpdates::RequireApproval,
            approved: req.approved,
            deleting: req.deleting,
        };
        let mut just_observed = Some(observed);
        loop {
            let Some(op) = pass.status.operation.as_mut() else {
                return Ok(Flow::Done(Outcome::InSync));
            };
            let index = match plan::next(op, gate) {
                Next::Finish => return self.finish(pass).await,
                Next::AwaitApproval => {
                    let name = req.resource.metadata.name.clone().unwrap_or_default();
                    let message = format!(
                        "{} needs the store disconnected: {}. Approve with: kubectl annotate externalkeystore {name} {}={} --overwrite",
                        op.trigger,
                        describe_steps(&op.steps),
                        crate::api::APPROVE_ANNOTATION,
                        pass.generation.unwrap_or_default()
                    );
                    op.phase = OperationPhase::AwaitingApproval;
                    op.message = Some(message.clone());
                    return done(
                        pass.conclude(Conclusion::new(
                            Summary::Waiting,
                            "AwaitingApproval",
                            message,
                            Outcome::AwaitingApproval,
                        ))
                        .await,
                    );
                }
                Next::Run(index) => index,
            };
            if op.phase == OperationPhase::AwaitingApproval {
                op.phase = OperationPhase::Running;
                op.message = None;
            }
            let step_name = op.steps[index].name;
            let calls_before = op.steps[index].attempts;
            let retrying = pass
                .status
                .retry
                .as_ref()
                .filter(|r| r.step == Some(step_name))
                .map(|r| r.calls);
            let result = steps::run_step(
                self,
                steps::StepContext {
                    index,
                    desired: &admitted.desired,
                    credential: &admitted.credential,
                    just_observed: just_observed.take(),
                    retried_after_calls: retrying,
                },
                pass,
            )
            .await?;
            match result {
                steps::StepResult::Done(message) => {
                    pass.mark(index, StepState::Succeeded, Some(message));
                    pass.clear_retry();
                    // The last step's success is written with the pass's
                    // conclusion (the phase and Ready), not on its own.
                    if pass
                        .status
                        .operation
                        .as_ref()
                        .is_some_and(|op| plan::next(op, gate) != Next::Finish)
                    {
                        pass.write().await?;
                    }
                }
                steps::StepResult::Wait(message) => {
                    pass.mark(index, StepState::Running, Some(message.clone()));
                    let trigger = current_trigger(pass.status);
                    pass.set_conditions(
                        Summary::Progressing,
                        "Waiting",
                        &format!("{trigger}: {step_name}: {message}"),
                    );
                    pass.write().await?;
                    return Ok(Flow::Done(Outcome::Requeue(self.options.poll_interval)));
                }
                steps::StepResult::Failed(error) => {
                    let calls = pass
                        .status
                        .operation
                        .as_ref()
                        .and_then(|o| o.steps.get(index))
                        .map_or(calls_before, |s| s.attempts);
                    let situation = Situation {
                        // Only a failure of the new proxy is undone by
                        // going back to the old one; KMS's own errors are
                        // retried where they are.
                        rollback_available: error.implicates_the_proxy()
                            && pass.status.operation.as_ref().is_some_and(|op| {
                                plan::rollback_applies(
                                    op,
                                    pass.status.proxy.as_ref(),
                                    step_name,
                                    req.resource.spec.rollback,
                                    req.deleting,
                                )
                            }),
                        ..self.situation(pass.status, &admitted.desired)
                    };
                    let attempts = pass.failures(Some(step_name)) + 1;
                    match self
                        .options
                        .retry
                        .decide(error.class(), attempts, situation)
                    {
                        Verdict::RetryAfter(delay) => {
                            pass.mark(index, StepState::Running, Some(error.message.clone()));
                            let end = self.retrying(
                                pass,
                                Failure {
                                    step: Some(step_name),
                                    error: &error,
                                    situation,
                                    calls,
                                },
                                delay,
                            );
                            return done(pass.conclude(end).await);
                        }
                        Verdict::GiveUp => {
                            pass.mark(index, StepState::Failed, Some(error.message.clone()));
                            pass.clear_retry();
                            if let Some(rolled) = pass.status.operation.as_ref().and_then(|op| {
                                plan::rollback(
                                    op,
                                    pass.status.proxy.as_ref(),
                                    step_name,
                                    &error.message,
                                    req.resource.spec.rollback,
                                    req.deleting,
                                    error.class() == Class::Transient,
                                )
                            }) {
                                pass.status.operation = Some(rolled);
                                continue;
                            }
                            return done(self.fail_operation(pass, step_name, &error).await);
                        }
                    }
                }
            }
        }
    }

    /// The operation stops: a person must act.
    async fn fail_operation<S: StatusSink>(
        &self,
        pass: &mut Pass<'_, S>,
        step: crate::api::StepName,
        error: &StepError,
    ) -> Result<Outcome, EngineError> {
        let now = pass.now();
        let Some(op) = pass.status.operation.as_mut() else {
            return Ok(Outcome::Stalled);
        };
        let message = if op.phase == OperationPhase::RollingBack {
            format!(
                "{}; the rollback failed too at {step}: {}",
                op.message.clone().unwrap_or_default(),
                error.message
            )
        } else {
            format!("{step} failed: {}", error.message)
        };
        op.phase = OperationPhase::Failed;
        op.finished_at = Some(now);
        op.message = Some(message.clone());
        pass.conclude(Conclusion::stalled(error.reason(), message))
            .await
    }

    async fn finish<S: StatusSink>(&self, pass: &mut Pass<'_, S>) -> Result<Flow, EngineError> {
        let now = pass.now();
        let Some(op) = pass.status.operation.as_mut() else {
            return Ok(Flow::Done(Outcome::InSync));
        };
        op.finished_at = Some(now);
        if op.phase == OperationPhase::RollingBack {
            op.phase = OperationPhase::RolledBack;
            if op.retry_after_rollback {
                // The new proxy failed for a cause that can pass: try the
                // change again later, from Preflight, without a person.
                let message = format!(
                    "{}; rolled back: the store is connected at the previous location",
                    op.message.clone().unwrap_or_default()
                );
                op.message = Some(message.clone());
                let delay = self
                    .options
                    .retry
                    .delay_after_rollback(op.transient_rollbacks);
                pass.record_retry(None, ROLLED_BACK, &message, 0, delay);
                let end = retried_after_rollback(pass.status, &message, delay);
                return done(pass.conclude(end).await);
            }
            let message = format!(
                "{}; rolled back: the store is connected at the previous location. Fix the new proxy, then change the spec or request a reconcile to try again",
                op.message.clone().unwrap_or_default()
            );
            op.message = Some(message.clone());
            return done(
                pass.conclude(Conclusion::stalled(ROLLED_BACK, message))
                    .await,
            );
        }
        op.phase = OperationPhase::Succeeded;
        op.message = Some(format!("{}: done", op.trigger));
        if op
            .steps
            .iter()
            .any(|s| s.name == crate::api::StepName::Delete)
        {
            pass.write().await?;
            return Ok(Flow::Done(Outcome::Released));
        }
        // Whatever the steps did, Ready is decided by what KMS reports next.
        Ok(Flow::Finished)
    }

    /// Ask the retry policy about a failure outside a step's run loop, and
    /// conclude accordingly: retry later, or stall for a person.
    fn failed<S: StatusSink>(&self, pass: &mut Pass<'_, S>, failure: Failure<'_>) -> Conclusion {
        let attempts = pass.failures(failure.step) + 1;
        match self
            .options
            .retry
            .decide(failure.error.class(), attempts, failure.situation)
        {
            Verdict::RetryAfter(delay) => self.retrying(pass, failure, delay),
            Verdict::GiveUp => {
                pass.clear_retry();
                Conclusion::stalled(failure.error.reason(), failure.error.message.clone())
            }
        }
    }

    /// Record the retry in status and say so: Reconciling, not Stalled.
    fn retrying<S: StatusSink>(
        &self,
        pass: &mut Pass<'_, S>,
        failure: Failure<'_>,
        delay: Duration,
    ) -> Conclusion {
        let reason = failure.error.reason();
        pass.record_retry(
            failure.step,
            &reason,
            &failure.error.message,
            failure.calls,
            delay,
        );
        let (attempts, due) = pass
            .status
            .retry
            .as_ref()
            .map(|r| (r.attempts, r.next_attempt_at.clone()))
            .unwrap_or_default();
        let what = failure
            .step
            .map_or_else(|| "describing the store".to_string(), |s| s.to_string());
        Conclusion::new(
            Summary::Progressing,
            reason,
            format!(
                "{what} failed ({}); a cause that can pass: attempt {attempts} failed, retrying at {due}",
                failure.error.message
            ),
            Outcome::Requeue(delay),
        )
    }

    /// What the retry policy weighs besides the failure itself.
    fn situation(&self, status: &ExternalKeyStoreStatus, desired: &Desired) -> Situation {
        Situation {
            store_down: desired.connection == DesiredConnectionState::Connected
                && status.key_store_id.is_some()
                && status.connection_state != Some(ConnectionState::Connected),
            ..Situation::default()
        }
    }

    /// This resource's claim on a store, in this engine's account and Region.
    pub fn claimant(&self, res: &ExternalKeyStore, status: &ExternalKeyStoreStatus) -> Claimant {
        Claimant::of(res, Some(status), self.scope())
    }

    /// The account and Region this engine acts in.
    pub fn scope(&self) -> Scope {
        Scope {
            account: self.account.clone(),
            region: self.region.clone(),
        }
    }
}

/// Reason of a rollback's conclusion, and of its pending retry.
const ROLLED_BACK: &str = "RolledBack";

/// A change rolled back after failures that can pass, tried again by
/// itself when the retry recorded in `status` is due (in `wait`).
fn retried_after_rollback(
    status: &ExternalKeyStoreStatus,
    message: &str,
    wait: Duration,
) -> Conclusion {
    let due = status
        .retry
        .as_ref()
        .map_or("", |r| r.next_attempt_at.as_str());
    Conclusion::new(
        Summary::Progressing,
        ROLLED_BACK,
        format!("{message}; the cause can pass: the change is tried again at {due}"),
        Outcome::Requeue(wait),
    )
}

/// How long until a change rolled back after failures that can pass is
/// tried again; `None` when it is due (or none is pending). Only a
/// rolled-back operation whose status records such a retry waits.
fn rollback_retry_wait(status: &ExternalKeyStoreStatus, now: &str) -> Option<Duration> {
    let op = status.operation.as_ref()?;
    if op.phase != OperationPhase::RolledBack || !op.retry_after_rollback {
        return None;
    }
    let retry = status
        .retry
        .as_ref()
        .filter(|r| r.step.is_none() && r.reason == ROLLED_BACK)?;
    let due: jiff::Timestamp = retry.next_attempt_at.parse().ok()?;
    let now: jiff::Timestamp = now.parse().ok()?;
    let left = now.duration_until(due);
    Duration::try_from(left).ok().filter(|d| !d.is_zero())
}

/// How dispatching a decision ended.
enum Flow {
    /// The pass is over: status written, the caller does this.
    Done(Outcome),
    /// The operation succeeded (not yet written): look at KMS again.
    Finished,
}

fn done(concluded: Result<Outcome, EngineError>) -> Result<Flow, EngineError> {
    concluded.map(Flow::Done)
}

/// Another resource holds the store: say so, change nothing.
fn yielding(claimed: &Claimed) -> Conclusion {
    Conclusion::new(
        Summary::Stalled,
        claims::REASON,
        claimed.message(),
        Outcome::Claimed,
    )
}

/// The desired store: the spec with defaults applied and the Secret read.
pub fn desired_state(
    res: &ExternalKeyStore,
    credential: &ProxyCredential,
    fingerprint_key: &[u8],
) -> Desired {
    let proxy = &res.spec.proxy;
    Desired {
        name: res.key_store_name(),
        proxy: ProxyConfig {
            connectivity: proxy.connectivity.into(),
            uri_endpoint: proxy.uri_endpoint.clone(),
            uri_path: proxy.uri_path.clone(),
            vpc_endpoint_service_name: proxy.vpc_endpoint_service.as_ref().map(|v| v.name.clone()),
            vpc_endpoint_service_owner: proxy
                .vpc_endpoint_service
                .as_ref()
                .and_then(|v| v.owner.clone()),
            access_key_id: credential.access_key_id.clone(),
        },
        credential_fingerprint: credentials::fingerprint(credential, fingerprint_key),
        connection: res.spec.connection_state,
        proxy_checks: res.spec.proxy_checks,
        deletion_policy: res.spec.deletion_policy,
        pinned_id: res.spec.key_store_id.clone(),
    }
}

/// Find the store: by the pinned id, else the id status recorded, else by
/// name (adoption, and recovery of a create whose answer was lost).
pub async fn observe<K: KeyStores>(
    kms: &K,
    res: &ExternalKeyStore,
    status: &ExternalKeyStoreStatus,
) -> Result<Option<ObservedStore>, KmsError> {
    let pinned = res.spec.key_store_id.as_deref();
    if let Some(id) = pinned.or(status.key_store_id.as_deref())
        && let Some(store) = kms.describe_by_id(id).await?
    {
        return Ok(Some(store));
    }
    if pinned.is_some() {
        return Ok(None);
    }
    kms.describe_by_name(&res.key_store_name()).await
}

fn current_trigger(status: &ExternalKeyStoreStatus) -> String {
    status
        .operation
        .as_ref()
        .map(|o| o.trigger.clone())
        .unwrap_or_default()
}

pub(crate) fn record_observation(
    status: &mut ExternalKeyStoreStatus,
    observed: Option<&ObservedStore>,
) {
    match observed {
        Some(s) => {
            status.key_store_id = Some(s.id.clone());
            status.key_store_name = Some(s.name.clone());
            status.connection_state = Some(s.connection_state);
            status.connection_error_code = s.connection_error_code.clone();
            status.proxy = s.proxy.clone();
        }
        None => {
            status.connection_state = None;
            status.connection_error_code = None;
            status.proxy = None;
        }
    }
}

fn in_sync_words(observed: Option<&ObservedStore>) -> (&'static str, String) {
    match observed {
        Some(s) => match s.connection_state {
            ConnectionState::Connected => (
                "Connected",
                format!(
                    "store {} is CONNECTED with the declared configuration",
                    s.id
                ),
            ),
            _ => (
                "Disconnected",
                format!(
                    "store {} is DISCONNECTED, as declared, with the declared configuration",
                    s.id
                ),
            ),
        },
        None => ("Absent", "no store".to_string()),
    }
}

/// "Preflight → Disconnect → Update → HealthCheck → Connect"
pub fn describe_steps(steps: &[Step]) -> String {
    steps
        .iter()
        .map(|s| s.name.to_string())
        .collect::<Vec<_>>()
        .join(" → ")
}
