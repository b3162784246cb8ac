//! The engine: observes the store, asks the planner what to do, and runs the
//! recorded operation one step at a time through the `KeyStores` and
//! `ProxyProbe` ports, writing status before and after every step.
//!
//! It never sleeps waiting for KMS: a step that waits (DISCONNECTING,
//! CONNECTING) records where it is and returns [`Outcome::Requeue`]. Every
//! side effect is preceded by a status write that says it is about to happen,
//! so a crash at any point resumes from what KMS reports plus what status
//! recorded (see `steps` for how each step recognises it already ran).

pub mod conditions;
pub mod remediation;
mod steps;

use crate::api::{
    DisruptiveUpdates, ExternalKeyStore, ExternalKeyStoreStatus, ManagementPolicy, ObservedProxy,
    Operation, OperationPhase, Step, StepName, StepState,
};
use crate::claims::{self, Claimant, Claimed, Scope};
use crate::credentials::{self, CredentialError};
use crate::error::ErrorCategory;
use crate::kms::{KeyStores, KmsError};
use crate::model::{ObservedStore, ProxyConfig, ProxyCredential};
use crate::plan::{self, Decision, Desired};
use crate::xks::ProxyProbe;
use conditions::Summary;
use std::future::Future;
use std::time::Duration;

pub use steps::StepError;

/// Tunables of the engine.
#[derive(Clone, Debug)]
pub struct EngineOptions {
    /// How soon to look again while KMS is CONNECTING or DISCONNECTING.
    pub poll_interval: Duration,
    /// First retry delay after a retryable error; doubles per attempt.
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    /// Proxy errors that may be transient (unreachable, unhealthy) are
    /// retried this many times before the step fails.
    pub max_proxy_attempts: u32,
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
            backoff_base: Duration::from_secs(2),
            backoff_max: Duration::from_secs(300),
            max_proxy_attempts: 3,
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
    pub options: EngineOptions,
    pub clock: Box<dyn Clock>,
}

impl<K: KeyStores, P: ProxyProbe> Engine<K, P> {
    pub fn new(kms: K, probe: P, region: impl Into<String>, options: EngineOptions) -> Self {
        Self {
            kms,
            probe,
            region: region.into(),
            options,
            clock: Box::new(SystemClock),
        }
    }

    /// One reconcile pass: runs as many steps as can run without waiting,
    /// writing `status` through `sink` before and after each.
    pub async fn reconcile<S: StatusSink>(
        &self,
        req: &Request<'_>,
        status: &mut ExternalKeyStoreStatus,
        sink: &mut S,
    ) -> Result<Outcome, EngineError> {
        let res = req.resource;
        let generation = res.metadata.generation;
        let now = self.clock.now();

        // Suspend wins even over deletion: it is how a person stops the
        // operator from touching KMS, e.g. during an incident. A deleted
        // resource with deletionPolicy Delete waits until it is resumed.
        if res.spec.suspend {
            status.observed_generation = generation;
            conditions::set(
                status,
                Summary::Waiting,
                "Suspended",
                "spec.suspend is true: the operator makes no AWS call",
                generation,
                &now,
            );
            sink.write(status).await?;
            return Ok(Outcome::Suspended);
        }

        if let Some(requested) = &req.requested_at
            && status.last_handled_reconcile_at.as_ref() != Some(requested)
        {
            // A requested reconcile retries a change that ended Failed or
            // RolledBack: forget the target so the planner starts afresh.
            if let Some(op) = status.operation.as_mut()
                && matches!(
                    op.phase,
                    OperationPhase::Failed | OperationPhase::RolledBack
                )
            {
                op.target.clear();
            }
            status.last_handled_reconcile_at = Some(requested.clone());
        }

        // Before any KMS call: a store another resource holds is not ours.
        let me = self.claimant(res, status);
        if let Some(claimed) = claims::yields_to(&me, &req.rivals) {
            return self.yield_to(status, sink, &claimed, generation).await;
        }

        // An invalid spec must not keep a deleted resource Terminating:
        // deletion only needs the store the status recorded.
        if !req.deleting
            && let Err(problem) = crate::api::validate::validate_spec(&res.spec)
        {
            return self
                .stall(
                    status,
                    sink,
                    ErrorCategory::InvalidSpec,
                    &problem,
                    generation,
                )
                .await;
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
                return self
                    .stall(
                        status,
                        sink,
                        ErrorCategory::CredentialSecret,
                        &e.to_string(),
                        generation,
                    )
                    .await;
            }
        };
        let desired = desired_state(res, &credential, &self.options.fingerprint_key);

        let observed = match observe(&self.kms, res, status).await {
            Ok(o) => o,
            Err(e) => return self.kms_trouble(status, sink, &e, generation).await,
        };
        // The store found by name may be one another resource records by
        // id: checked before this resource records it as its own.
        if let Some(store) = &observed
            && let Some(claimed) =
                claims::yields_to(&me.having_observed(&store.id, &store.name), &req.rivals)
        {
            return self.yield_to(status, sink, &claimed, generation).await;
        }
        record_observation(status, observed.as_ref());
        status.observed_generation = generation;

        let decision = plan::decide(&plan::PlanInput {
            desired: &desired,
            observed: observed.as_ref(),
            applied_fingerprint: status.credential_fingerprint.as_deref(),
            recorded: status.operation.as_ref(),
            deleting: req.deleting,
        });

        match decision {
            Decision::InSync => {
                let (reason, message) = in_sync_words(observed.as_ref());
                conditions::set(status, Summary::Ready, reason, &message, generation, &now);
                sink.write(status).await?;
                Ok(Outcome::InSync)
            }
            Decision::Release => Ok(Outcome::Released),
            Decision::Refuse { category, message } => {
                self.stall(status, sink, category, &message, generation)
                    .await
            }
            Decision::Blocked { message } => {
                // Keep the reason the change failed with, so it stays visible.
                let reason = conditions::get(status, conditions::STALLED)
                    .filter(|c| c.status == "True")
                    .map_or_else(|| "Blocked".to_string(), |c| c.reason.clone());
                self.stall_with(status, sink, &reason, &message, generation)
                    .await
            }
            Decision::Start(new) => {
                let observe_only = res.spec.management_policy == ManagementPolicy::ObserveOnly;
                let op =
                    self.new_operation(new, &desired, observed.as_ref(), generation, observe_only);
                let planned = describe_steps(&op.steps);
                status.operation = Some(op);
                if observe_only {
                    conditions::set(
                        status,
                        Summary::Waiting,
                        "DriftDetected",
                        &format!(
                            "managementPolicy is ObserveOnly: would run {planned}; nothing was changed"
                        ),
                        generation,
                        &now,
                    );
                    sink.write(status).await?;
                    return Ok(Outcome::Observed);
                }
                let trigger = current_trigger(status);
                conditions::set(
                    status,
                    Summary::Progressing,
                    "OperationStarted",
                    &format!("{trigger}: {planned}"),
                    generation,
                    &now,
                );
                sink.write(status).await?;
                self.run(req, &desired, &credential, observed, status, sink)
                    .await
            }
            Decision::Continue => {
                if res.spec.management_policy == ManagementPolicy::ObserveOnly {
                    // The policy changed mid-way: stop changing things.
                    sink.write(status).await?;
                    return Ok(Outcome::Observed);
                }
                self.run(req, &desired, &credential, observed, status, sink)
                    .await
            }
        }
    }

    fn new_operation(
        &self,
        new: plan::NewOperation,
        desired: &Desired,
        observed: Option<&ObservedStore>,
        generation: Option<i64>,
        observe_only: bool,
    ) -> Operation {
        let mut steps: Vec<Step> = new.steps.into_iter().map(Step::pending).collect();
        if desired.proxy_checks == crate::api::ProxyChecks::KmsOnly {
            for step in steps
                .iter_mut()
                .filter(|s| matches!(s.name, StepName::Preflight | StepName::HealthCheck))
            {
                step.state = StepState::Skipped;
                step.message = Some(
                    "skipped: proxyChecks is KmsOnly, so the operator does not call the proxy itself; KMS health-checks the new values on update and connect".into(),
                );
            }
        }
        Operation {
            trigger: new.trigger,
            phase: if observe_only {
                OperationPhase::Planned
            } else {
                OperationPhase::Running
            },
            disruptive: new.disruptive,
            target: new.target,
            generation,
            started_at: self.clock.now(),
            finished_at: None,
            steps,
            // Recorded before anything changes: what to roll back to.
            previous: observed.and_then(|s| s.proxy.as_ref()).map(observed_proxy),
            message: None,
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
        desired: &Desired,
        credential: &ProxyCredential,
        observed: Option<ObservedStore>,
        status: &mut ExternalKeyStoreStatus,
        sink: &mut S,
    ) -> Result<Outcome, EngineError> {
        let generation = req.resource.metadata.generation;
        let mut just_observed = Some(observed);
        loop {
            let Some(op) = status.operation.as_mut() else {
                return Ok(Outcome::InSync);
            };
            // A Failed step stays failed: during a rollback the steps after
            // it run, and the failed one is history.
            let Some(index) = op
                .steps
                .iter()
                .position(|s| matches!(s.state, StepState::Pending | StepState::Running))
            else {
                return self.finish(status, sink, generation).await;
            };
            let step_name = op.steps[index].name;

            if step_name == StepName::Disconnect
                && op.disruptive
                && !req.deleting
                && req.resource.spec.disruptive_updates == DisruptiveUpdates::RequireApproval
                && !req.approved
                && op.steps[index].state == StepState::Pending
            {
                op.phase = OperationPhase::AwaitingApproval;
                let name = req.resource.metadata.name.clone().unwrap_or_default();
                let message = format!(
                    "{} needs the store disconnected: {}. Approve with: kubectl annotate externalkeystore {name} {}={} --overwrite",
                    op.trigger,
                    describe_steps(&op.steps),
                    crate::api::APPROVE_ANNOTATION,
                    generation.unwrap_or_default()
                );
                op.message = Some(message.clone());
                let now = self.clock.now();
                conditions::set(
                    status,
                    Summary::Waiting,
                    "AwaitingApproval",
                    &message,
                    generation,
                    &now,
                );
                sink.write(status).await?;
                return Ok(Outcome::AwaitingApproval);
            }
            if op.phase == OperationPhase::AwaitingApproval {
                op.phase = OperationPhase::Running;
                op.message = None;
            }

            let observation = just_observed.take();
            let result =
                steps::run_step(self, index, desired, credential, observation, status, sink)
                    .await?;
            let now = self.clock.now();
            match result {
                steps::StepResult::Done(message) => {
                    mark(status, index, StepState::Succeeded, Some(message), &now);
                    sink.write(status).await?;
                }
                steps::StepResult::Wait(message) => {
                    mark(
                        status,
                        index,
                        StepState::Running,
                        Some(message.clone()),
                        &now,
                    );
                    let trigger = current_trigger(status);
                    conditions::set(
                        status,
                        Summary::Progressing,
                        "Waiting",
                        &format!("{trigger}: {step_name:?}: {message}"),
                        generation,
                        &now,
                    );
                    sink.write(status).await?;
                    return Ok(Outcome::Requeue(self.options.poll_interval));
                }
                steps::StepResult::Retry(err) => {
                    let attempts = status
                        .operation
                        .as_ref()
                        .map_or(1, |o| o.steps[index].attempts);
                    mark(
                        status,
                        index,
                        StepState::Running,
                        Some(err.message.clone()),
                        &now,
                    );
                    conditions::set(
                        status,
                        Summary::Progressing,
                        &err.reason(),
                        &format!("{step_name:?} will be retried: {}", err.message),
                        generation,
                        &now,
                    );
                    sink.write(status).await?;
                    return Ok(Outcome::Requeue(self.backoff(attempts)));
                }
                steps::StepResult::Fail(err) => {
                    mark(
                        status,
                        index,
                        StepState::Failed,
                        Some(err.message.clone()),
                        &now,
                    );
                    if self.start_rollback(req, status, step_name, &err) {
                        sink.write(status).await?;
                        continue;
                    }
                    let Some(op) = status.operation.as_mut() else {
                        return Ok(Outcome::Stalled);
                    };
                    let rolling_back = op.phase == OperationPhase::RollingBack;
                    op.phase = OperationPhase::Failed;
                    op.finished_at = Some(now.clone());
                    let message = if rolling_back {
                        format!(
                            "{}; the rollback failed too at {step_name:?}: {}",
                            op.message.clone().unwrap_or_default(),
                            err.message
                        )
                    } else {
                        format!("{step_name:?} failed: {}", err.message)
                    };
                    op.message = Some(message.clone());
                    conditions::set(
                        status,
                        Summary::Stalled,
                        &err.reason(),
                        &message,
                        generation,
                        &now,
                    );
                    sink.write(status).await?;
                    return Ok(Outcome::Stalled);
                }
            }
        }
    }

    /// After the health check or Connect fails following an update of the
    /// proxy location, put the previous location back and reconnect (unless
    /// disabled): the store is disconnected, and stopping there would leave
    /// its keys unusable until a person acts.
    fn start_rollback(
        &self,
        req: &Request<'_>,
        status: &mut ExternalKeyStoreStatus,
        failed: StepName,
        err: &StepError,
    ) -> bool {
        if !matches!(failed, StepName::HealthCheck | StepName::Connect)
            || req.deleting
            || status
                .operation
                .as_ref()
                .is_some_and(|o| o.phase == OperationPhase::RollingBack)
            || req.resource.spec.rollback != crate::api::RollbackPolicy::Automatic
        {
            return false;
        }
        let current = status.proxy.clone();
        let Some(op) = status.operation.as_mut() else {
            return false;
        };
        let updated = op
            .steps
            .iter()
            .any(|s| s.name == StepName::Update && s.state == StepState::Succeeded);
        let Some(previous) = op.previous.as_ref() else {
            return false;
        };
        let location_changed = current.as_ref().is_some_and(|c| {
            c.uri_endpoint != previous.uri_endpoint
                || c.uri_path != previous.uri_path
                || c.connectivity != previous.connectivity
                || c.vpc_endpoint_service_name != previous.vpc_endpoint_service_name
                || c.vpc_endpoint_service_owner != previous.vpc_endpoint_service_owner
        });
        if !updated || !location_changed {
            return false;
        }
        op.phase = OperationPhase::RollingBack;
        // The rest of the plan (Connect, after a failed health check) would
        // go to the proxy that just failed: the rollback replaces it.
        for step in op
            .steps
            .iter_mut()
            .filter(|s| s.state == StepState::Pending)
        {
            step.state = StepState::Skipped;
            step.message = Some(format!("skipped: {failed:?} failed, rolling back"));
        }
        op.message = Some(format!(
            "{failed:?} failed after the update: {}; rolling back to {}{}",
            err.message, previous.uri_endpoint, previous.uri_path
        ));
        op.steps.extend(
            [
                StepName::RollbackDisconnect,
                StepName::RestorePrevious,
                StepName::RollbackConnect,
            ]
            .into_iter()
            .map(Step::pending),
        );
        true
    }

    async fn finish<S: StatusSink>(
        &self,
        status: &mut ExternalKeyStoreStatus,
        sink: &mut S,
        generation: Option<i64>,
    ) -> Result<Outcome, EngineError> {
        let now = self.clock.now();
        let Some(op) = status.operation.as_mut() else {
            return Ok(Outcome::InSync);
        };
        op.finished_at = Some(now.clone());
        if op.phase == OperationPhase::RollingBack {
            op.phase = OperationPhase::RolledBack;
            let message = format!(
                "{}; rolled back: the store is connected at the previous location. Fix the new proxy, then change the spec or request a reconcile to try again",
                op.message.clone().unwrap_or_default()
            );
            op.message = Some(message.clone());
            conditions::set(
                status,
                Summary::Stalled,
                "RolledBack",
                &message,
                generation,
                &now,
            );
            sink.write(status).await?;
            return Ok(Outcome::Stalled);
        }
        op.phase = OperationPhase::Succeeded;
        let deleted = op.steps.iter().any(|s| s.name == StepName::Delete);
        op.message = Some(format!("{}: done", op.trigger));
        if deleted {
            sink.write(status).await?;
            return Ok(Outcome::Released);
        }
        // Whatever the steps did, Ready is decided by what KMS reports next.
        sink.write(status).await?;
        Ok(Outcome::Requeue(Duration::ZERO))
    }

    /// This resource's claim on a store, in this engine's account and Region.
    pub fn claimant(&self, res: &ExternalKeyStore, status: &ExternalKeyStoreStatus) -> Claimant {
        Claimant::of(res, Some(status), self.scope())
    }

    /// The account and Region this engine acts in.
    pub fn scope(&self) -> Scope {
        Scope {
            account: None,
            region: self.region.clone(),
        }
    }

    /// Another resource holds the store: say so, change nothing.
    async fn yield_to<S: StatusSink>(
        &self,
        status: &mut ExternalKeyStoreStatus,
        sink: &mut S,
        claimed: &Claimed,
        generation: Option<i64>,
    ) -> Result<Outcome, EngineError> {
        self.stall_with(status, sink, claims::REASON, &claimed.message(), generation)
            .await?;
        Ok(Outcome::Claimed)
    }

    async fn stall<S: StatusSink>(
        &self,
        status: &mut ExternalKeyStoreStatus,
        sink: &mut S,
        category: ErrorCategory,
        message: &str,
        generation: Option<i64>,
    ) -> Result<Outcome, EngineError> {
        self.stall_with(status, sink, category.reason(), message, generation)
            .await
    }

    async fn stall_with<S: StatusSink>(
        &self,
        status: &mut ExternalKeyStoreStatus,
        sink: &mut S,
        reason: &str,
        message: &str,
        generation: Option<i64>,
    ) -> Result<Outcome, EngineError> {
        status.observed_generation = generation;
        let now = self.clock.now();
        conditions::set(status, Summary::Stalled, reason, message, generation, &now);
        sink.write(status).await?;
        Ok(Outcome::Stalled)
    }

    async fn kms_trouble<S: StatusSink>(
        &self,
        status: &mut ExternalKeyStoreStatus,
        sink: &mut S,
        err: &KmsError,
        generation: Option<i64>,
    ) -> Result<Outcome, EngineError> {
        let category = err.category();
        if !category.is_retryable() {
            return self
                .stall(
                    status,
                    sink,
                    category,
                    &format!("describing the store: {err}"),
                    generation,
                )
                .await;
        }
        let now = self.clock.now();
        conditions::set(
            status,
            Summary::Progressing,
            category.reason(),
            &format!("describing the store failed, will retry: {err}"),
            generation,
            &now,
        );
        sink.write(status).await?;
        Ok(Outcome::Requeue(self.backoff(1)))
    }

    /// Exponential backoff with ±25% jitter, so many resources that failed
    /// together do not retry together.
    fn backoff(&self, attempts: u32) -> Duration {
        let exp = attempts.saturating_sub(1).min(16);
        let base = self.options.backoff_base.saturating_mul(1 << exp);
        let capped = base.min(self.options.backoff_max);
        let jitter = rand::random_range(0.75..1.25);
        capped.mul_f64(jitter)
    }
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

fn mark(
    status: &mut ExternalKeyStoreStatus,
    index: usize,
    state: StepState,
    message: Option<String>,
    now: &str,
) {
    if let Some(step) = status
        .operation
        .as_mut()
        .and_then(|o| o.steps.get_mut(index))
    {
        step.state = state;
        step.message = message;
        if step.started_at.is_none() {
            step.started_at = Some(now.to_string());
        }
        if matches!(
            state,
            StepState::Succeeded | StepState::Failed | StepState::Skipped
        ) {
            step.finished_at = Some(now.to_string());
        }
    }
}

pub(crate) fn observed_proxy(p: &ProxyConfig) -> ObservedProxy {
    ObservedProxy {
        connectivity: p.connectivity.as_kms().to_string(),
        uri_endpoint: p.uri_endpoint.clone(),
        uri_path: p.uri_path.clone(),
        vpc_endpoint_service_name: p.vpc_endpoint_service_name.clone(),
        vpc_endpoint_service_owner: p.vpc_endpoint_service_owner.clone(),
        access_key_id: p.access_key_id.clone(),
    }
}

pub(crate) fn record_observation(
    status: &mut ExternalKeyStoreStatus,
    observed: Option<&ObservedStore>,
) {
    match observed {
        Some(s) => {
            status.key_store_id = Some(s.id.clone());
            status.key_store_name = Some(s.name.clone());
            status.connection_state = Some(s.connection_state.to_string());
            status.connection_error_code = s.connection_error_code.clone();
            status.proxy = s.proxy.as_ref().map(observed_proxy);
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
            crate::model::ConnectionState::Connected => (
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
        .map(|s| format!("{:?}", s.name))
        .collect::<Vec<_>>()
        .join(" → ")
}
