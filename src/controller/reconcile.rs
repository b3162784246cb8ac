//! One reconcile of one ExternalKeyStore: finalizer, initial status, the
//! credential Secret, the engine, and the mapping of its outcome to when
//! the controller should look again.

use super::status::StatusWriter;
use super::{Backend, Context, health, parse_duration, secrets};
use crate::api::{
    DeletionPolicy, ExternalKeyStore, ExternalKeyStoreStatus, FINALIZER, FLUX_REQUESTED_AT,
};
use crate::claims::Scope;
use crate::engine::conditions::{self, STALLED, Summary};
use crate::engine::{Clock, EngineError, Outcome, Request, SinkError, StatusSink, SystemClock};
use crate::error::ErrorCategory;
use crate::kms::identity::AssumedRole;
use crate::xks::ProxyProbe;
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::{Api, ResourceExt};
use std::sync::Arc;
use std::time::Duration;

/// How soon a resource that yields to another looks again.
const CLAIM_RECHECK: Duration = Duration::from_secs(15);
/// How soon to look again while the watch caches are still listing.
const CACHE_WAIT: Duration = Duration::from_secs(1);

/// Why a reconcile pass stopped without a status record of it; the
/// controller retries after `Settings::error_requeue`.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[source] kube::Error),
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error(transparent)]
    Status(#[from] SinkError),
    #[error("the resource has no name or namespace")]
    Unnamed,
}

impl Error {
    /// Metric label and log field.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Kube(_) => "KubernetesApiError",
            Self::Engine(_) | Self::Status(_) => "StatusWriteFailed",
            Self::Unnamed => "InvalidResource",
        }
    }
}

pub async fn reconcile<B: Backend>(
    obj: Arc<ExternalKeyStore>,
    ctx: Arc<Context<B>>,
) -> Result<Action, Error> {
    let action = reconcile_once(&obj, &ctx).await?;
    ctx.api_failures.clear(&failure_key(&obj));
    Ok(action)
}

/// Guards → observe → decide (the engine) → dispatch.
async fn reconcile_once<B: Backend>(
    obj: &Arc<ExternalKeyStore>,
    ctx: &Arc<Context<B>>,
) -> Result<Action, Error> {
    ctx.metrics.reconcile_started();
    let mut pass = Pass::new(obj, ctx)?;
    if let Some(done) = pass.lifecycle().await? {
        return Ok(done);
    }
    let target = match resolve_target(obj, ctx, &pass.namespace).await? {
        Ok(target) => target,
        Err(refusal) => return pass.refuse(refusal).await,
    };
    // The claim rule needs every watched resource: until each listing is
    // complete, a holder could be missing from it.
    if !ctx.cache.synced() {
        return Ok(Action::requeue(CACHE_WAIT));
    }
    let request = pass.request().await?;
    let engine = ctx.engine(&target.region, target.role.as_ref()).await;
    let outcome = engine
        .reconcile(&request, &mut pass.status, &mut pass.sink)
        .await?;
    tracing::debug!(namespace = %pass.namespace, name = %pass.name, region = %target.region, ?outcome, "reconciled");
    let next_check = pass
        .watch_health(&engine.probe, &target.region, &request, outcome)
        .await?;
    pass.dispatch(outcome, next_check).await
}

/// One pass over one resource: what it read once, and the status it
/// computes and writes through `sink`.
struct Pass<'a, B: Backend> {
    obj: &'a ExternalKeyStore,
    ctx: &'a Context<B>,
    api: Api<ExternalKeyStore>,
    namespace: String,
    name: String,
    uid: String,
    deleting: bool,
    /// No status recorded yet: the operator sees the resource first.
    first_sight: bool,
    status: ExternalKeyStoreStatus,
    sink: StatusWriter<'a>,
}

impl<'a, B: Backend> Pass<'a, B> {
    fn new(obj: &'a ExternalKeyStore, ctx: &'a Context<B>) -> Result<Self, Error> {
        let (Some(namespace), Some(name)) =
            (obj.metadata.namespace.clone(), obj.metadata.name.clone())
        else {
            return Err(Error::Unnamed);
        };
        let api: Api<ExternalKeyStore> = Api::namespaced(ctx.client.clone(), &namespace);
        let uid = obj.metadata.uid.clone().unwrap_or_default();
        // The memory is newer than the watch cache: it holds our own writes.
        let recorded = ctx.statuses.get(&uid).or_else(|| obj.status.clone());
        let sink = StatusWriter::new(
            api.clone(),
            obj,
            recorded.clone(),
            &ctx.recorder,
            &ctx.metrics,
            &ctx.statuses,
        )
        .in_scope(
            ctx.account_of(obj.spec.role_arn.as_deref())
                .unwrap_or_default(),
            ctx.region_of(obj).unwrap_or_default(),
        );
        Ok(Self {
            obj,
            ctx,
            api,
            namespace,
            name,
            uid,
            deleting: obj.metadata.deletion_timestamp.is_some(),
            first_sight: recorded.is_none(),
            status: recorded.unwrap_or_default(),
            sink,
        })
    }

    /// The finalizer and the first status; deletion where KMS has no say.
    /// `Some` when the pass is over.
    async fn lifecycle(&mut self) -> Result<Option<Action>, Error> {
        let has_finalizer = self.obj.finalizers().iter().any(|f| f == FINALIZER);
        if self.deleting && !has_finalizer {
            // Not ours to hold up (or already released).
            self.ctx.statuses.forget(&self.uid);
            return Ok(Some(Action::await_change()));
        }
        if self.first_sight && !self.deleting {
            // Written before anything else so kstatus-aware tools (Flux, Argo
            // CD, kubectl wait) see the resource is being worked on at once.
            conditions::set(
                &mut self.status,
                Summary::Progressing,
                "Initializing",
                "the operator has seen the resource and is reconciling it",
                self.obj.metadata.generation,
                &SystemClock.now(),
            );
            self.sink.write(&self.status).await?;
        }
        if !self.deleting && !has_finalizer {
            let mut finalizers = self.obj.finalizers().to_vec();
            finalizers.push(FINALIZER.to_string());
            let rv = set_finalizers(
                &self.api,
                &self.name,
                finalizers,
                self.sink.resource_version(),
            )
            .await?;
            self.sink.set_resource_version(rv);
        }
        if self.deleting && self.obj.spec.deletion_policy == DeletionPolicy::Retain {
            // Retain leaves the store as it is: no need to even look at it.
            self.release("deletionPolicy is Retain: the store is left untouched in KMS")
                .await?;
            return Ok(Some(Action::await_change()));
        }
        Ok(None)
    }

    /// Refused before any AWS call: only a change of the resource (or of
    /// what the cluster admin allows) can fix it.
    async fn refuse(
        &mut self,
        (category, message): (ErrorCategory, String),
    ) -> Result<Action, Error> {
        let generation = self.obj.metadata.generation;
        self.status.observed_generation = generation;
        conditions::set(
            &mut self.status,
            Summary::Stalled,
            category.reason(),
            &message,
            generation,
            &SystemClock.now(),
        );
        self.sink.write(&self.status).await?;
        self.ctx.metrics.failed(category.reason());
        Ok(Action::await_change())
    }

    /// What the engine needs besides the resource: the credential, the
    /// approval, and the other resources that may name the same store.
    async fn request(&self) -> Result<Request<'a>, Error> {
        let ctx = self.ctx;
        let rivals = ctx.cache.rivals(&self.uid, &ctx.statuses, |other| {
            Some(Scope {
                account: ctx.account_of(other.spec.role_arn.as_deref()),
                region: ctx.region_of(other)?,
            })
        });
        let credential = secrets::read_credential(
            ctx.client.clone(),
            &self.namespace,
            &self.obj.spec.proxy.credentials_secret_ref,
        )
        .await
        .map_err(Error::Kube)?;
        Ok(Request {
            resource: self.obj,
            credential,
            approved: crate::api::is_approved(self.obj),
            deleting: self.deleting,
            requested_at: self.obj.annotations().get(FLUX_REQUESTED_AT).cloned(),
            rivals,
        })
    }

    /// The proxy's health, after the engine so a check never delays a
    /// change. When the next check is due; `None` when the watch has
    /// nothing to say about the requeue.
    async fn watch_health<P: ProxyProbe>(
        &mut self,
        probe: &P,
        region: &str,
        request: &Request<'_>,
        outcome: Outcome,
    ) -> Result<Option<Duration>, Error> {
        if self.deleting {
            return Ok(None);
        }
        Ok(health::watch(
            probe,
            self.ctx.settings.proxy_health_interval,
            self.obj,
            region,
            &request.credential,
            outcome,
            &mut self.status,
            &mut self.sink,
        )
        .await?)
    }

    /// When the controller looks again, from the engine's outcome; a
    /// deletion the engine finished releases the resource.
    async fn dispatch(
        &mut self,
        outcome: Outcome,
        next_check: Option<Duration>,
    ) -> Result<Action, Error> {
        let drift = drift_interval(self.obj, self.ctx.settings.drift_interval);
        let settled = |after: Duration| next_check.map_or(after, |check| after.min(check));
        Ok(match outcome {
            Outcome::Released if self.deleting => {
                self.release(
                    "deletionPolicy is Delete: the store is deleted from KMS (or was already gone)",
                )
                .await?;
                Action::await_change()
            }
            Outcome::Claimed if self.deleting => {
                // Not the holder: the store is someone else's, leave it be.
                let held = conditions::get(&self.status, STALLED)
                    .map_or_else(String::new, |c| c.message.clone());
                self.release(&format!("the store was left untouched: {held}"))
                    .await?;
                Action::await_change()
            }
            // Nothing wakes a resource when its holder goes away: look again
            // soon (a cache lookup, no API or KMS call while nothing changes).
            Outcome::Claimed => Action::requeue(jitter(CLAIM_RECHECK.min(drift))),
            // Not shortened for a health check: the engine does not wait for a
            // retry's due time by itself, the requeue is what paces it.
            Outcome::Requeue(after) => Action::requeue(after),
            Outcome::Stalled => {
                let reason =
                    conditions::get(&self.status, STALLED).map_or("Stalled", |c| c.reason.as_str());
                self.ctx.metrics.failed(reason);
                Action::requeue(settled(jitter(drift)))
            }
            Outcome::InSync | Outcome::Observed | Outcome::Released => {
                Action::requeue(settled(jitter(drift)))
            }
            // Only a change of the resource (approval annotation, spec) moves
            // these on, and every change wakes the controller; meanwhile the
            // store still serves at its current proxy, which stays watched.
            Outcome::AwaitingApproval | Outcome::Suspended => match next_check {
                Some(check) => Action::requeue(check),
                None => Action::await_change(),
            },
        })
    }

    /// Lets Kubernetes delete the resource, and says why.
    async fn release(&mut self, why: &str) -> Result<(), Error> {
        remove_finalizer(&self.api, self.obj, self.sink.resource_version()).await?;
        self.ctx.statuses.forget(&self.uid);
        self.sink
            .event(EventType::Normal, "Released", "Delete", why)
            .await;
        tracing::info!(namespace = %self.namespace, name = %self.name, why, "released");
        Ok(())
    }
}

/// After an error the controller retries later, backing off per object as
/// the retry policy says (Kubernetes API errors pass: a conflict, a
/// timeout, a restarting API server). The error is logged here (it never
/// holds a secret: messages name Secrets and keys, not values).
pub fn error_policy<B: Backend>(
    obj: Arc<ExternalKeyStore>,
    error: &Error,
    ctx: Arc<Context<B>>,
) -> Action {
    ctx.metrics.failed(error.reason());
    let attempts = ctx.api_failures.record(&failure_key(&obj));
    let delay = ctx.settings.engine.retry.delay(attempts, false);
    tracing::warn!(
        namespace = obj.namespace().unwrap_or_default(),
        name = obj.name_any(),
        reason = error.reason(),
        attempts,
        retry_in = ?delay,
        %error,
        "reconcile failed; will retry"
    );
    Action::requeue(delay)
}

/// The key of an object's failure count: its uid, else namespace/name.
fn failure_key(obj: &ExternalKeyStore) -> String {
    obj.metadata
        .uid
        .clone()
        .unwrap_or_else(|| format!("{}/{}", obj.namespace().unwrap_or_default(), obj.name_any()))
}

/// Where a resource's store lives and as whom the operator reaches it.
struct Target {
    region: String,
    role: Option<AssumedRole>,
}

/// The Region and the role of a resource, or why it cannot be reached at
/// all (no Region; a role the cluster admin has not allowed for the
/// namespace; an external id that cannot be read), decided before any AWS
/// call.
async fn resolve_target<B: Backend>(
    obj: &ExternalKeyStore,
    ctx: &Context<B>,
    namespace: &str,
) -> Result<Result<Target, (ErrorCategory, String)>, Error> {
    let Some(region) = ctx.region_of(obj) else {
        return Ok(Err((
            ErrorCategory::InvalidSpec,
            "no AWS Region: set spec.region, or give the operator one (AWS_REGION or its AWS configuration)".into(),
        )));
    };
    let Some(arn) = obj.spec.role_arn.clone() else {
        return Ok(Ok(Target { region, role: None }));
    };
    if !ctx.settings.allowed_roles.allows(namespace, &arn) {
        return Ok(Err((
            ErrorCategory::RoleNotAllowed,
            format!(
                "role {arn} is not allowed for namespace {namespace}: the cluster admin allows it with the operator's --allow-role {namespace}={arn} (chart value roleAllowList)"
            ),
        )));
    }
    let external_id = match &obj.spec.external_id_secret_ref {
        None => None,
        Some(reference) => {
            match secrets::read_key(ctx.client.clone(), namespace, reference)
                .await
                .map_err(Error::Kube)?
            {
                Ok(id) => Some(id),
                Err(e) => return Ok(Err((ErrorCategory::CredentialSecret, e.to_string()))),
            }
        }
    };
    Ok(Ok(Target {
        region,
        role: Some(AssumedRole::new(arn, external_id)),
    }))
}

/// `spec.driftInterval` when set and valid, else the operator's default.
pub fn drift_interval(obj: &ExternalKeyStore, default: Duration) -> Duration {
    obj.spec
        .drift_interval
        .as_deref()
        .and_then(|d| parse_duration(d).ok())
        .filter(|d| !d.is_zero())
        .unwrap_or(default)
}

/// ±10%, so resources created together do not all check drift together.
pub fn jitter(d: Duration) -> Duration {
    d.mul_f64(rand::random_range(0.9..1.1))
}

/// Merge patch guarded by `resource_version` (the object's latest known
/// one: status writes move it): a concurrent change of the finalizer list
/// makes it fail with 409 and retry instead of clobbering another
/// controller's finalizer. Returns the new resourceVersion.
async fn set_finalizers(
    api: &Api<ExternalKeyStore>,
    name: &str,
    finalizers: Vec<String>,
    resource_version: Option<&str>,
) -> Result<Option<String>, Error> {
    let mut metadata = serde_json::json!({ "finalizers": finalizers });
    if let Some(rv) = resource_version {
        metadata["resourceVersion"] = rv.into();
    }
    let patch = serde_json::json!({ "metadata": metadata });
    match api
        .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        Ok(obj) => Ok(obj.metadata.resource_version),
        // Gone already: nothing left to hold.
        Err(kube::Error::Api(s))
            if s.is_not_found() && !finalizers.iter().any(|f| f == FINALIZER) =>
        {
            Ok(None)
        }
        Err(e) => Err(Error::Kube(e)),
    }
}

async fn remove_finalizer(
    api: &Api<ExternalKeyStore>,
    obj: &ExternalKeyStore,
    resource_version: Option<&str>,
) -> Result<(), Error> {
    let finalizers = obj
        .finalizers()
        .iter()
        .filter(|f| *f != FINALIZER)
        .cloned()
        .collect();
    set_finalizers(api, &obj.name_any(), finalizers, resource_version)
        .await
        .map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resource(drift: Option<&str>) -> ExternalKeyStore {
        let mut s: ExternalKeyStore = serde_json::from_value(serde_json::json!({
            "apiVersion": "xks-operator.io/v1alpha1",
            "kind": "ExternalKeyStore",
            "metadata": {"name": "payments", "namespace": "default"},
            "spec": {"proxy": {
                "uriEndpoint": "https://xks.example.com",
                "uriPath": "/kms/xks/v1",
                "credentialsSecretRef": {"name": "cred"}
            }}
        }))
        .expect("valid resource");
        s.spec.drift_interval = drift.map(str::to_string);
        s
    }

    #[test]
    fn the_resource_drift_interval_overrides_the_default() {
        let default = Duration::from_secs(300);
        assert_eq!(drift_interval(&resource(None), default), default);
        assert_eq!(
            drift_interval(&resource(Some("30s")), default),
            Duration::from_secs(30)
        );
        assert_eq!(drift_interval(&resource(Some("bad")), default), default);
        assert_eq!(drift_interval(&resource(Some("0s")), default), default);
    }

    #[test]
    fn jitter_stays_within_ten_percent() {
        for _ in 0..100 {
            let d = jitter(Duration::from_secs(100));
            assert!(
                d >= Duration::from_secs(90) && d <= Duration::from_secs(110),
                "{d:?}"
            );
        }
    }
}
