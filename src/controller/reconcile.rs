//! One reconcile of one ExternalKeyStore: finalizer, initial status, the
//! credential Secret, the engine, and the mapping of its outcome to when
//! the controller should look again.

use super::status::StatusWriter;
use super::{Backend, Context, health, parse_duration, secrets};
use crate::api::{DeletionPolicy, ExternalKeyStore, FINALIZER, FLUX_REQUESTED_AT};
use crate::claims::Scope;
use crate::engine::conditions::{self, STALLED, Summary};
use crate::engine::{Clock, EngineError, Outcome, Request, SinkError, StatusSink, SystemClock};
use crate::error::ErrorCategory;
use crate::kms::identity::AssumedRole;
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

async fn reconcile_once<B: Backend>(
    obj: &Arc<ExternalKeyStore>,
    ctx: &Arc<Context<B>>,
) -> Result<Action, Error> {
    ctx.metrics.reconcile_started();
    let (Some(namespace), Some(name)) = (obj.metadata.namespace.clone(), obj.metadata.name.clone())
    else {
        return Err(Error::Unnamed);
    };
    let api: Api<ExternalKeyStore> = Api::namespaced(ctx.client.clone(), &namespace);
    let uid = obj.metadata.uid.clone().unwrap_or_default();
    let recorded = ctx.statuses.get(&uid).or_else(|| obj.status.clone());
    let account = ctx
        .account_of(obj.spec.role_arn.as_deref())
        .unwrap_or_default();
    let store_region = obj
        .spec
        .region
        .clone()
        .or_else(|| ctx.backend.default_region())
        .unwrap_or_default();
    let mut sink = StatusWriter::new(
        api.clone(),
        obj,
        recorded.clone(),
        &ctx.recorder,
        &ctx.metrics,
        &ctx.statuses,
    )
    .in_scope(account, store_region);
    let deleting = obj.metadata.deletion_timestamp.is_some();
    let has_finalizer = obj.finalizers().iter().any(|f| f == FINALIZER);
    let generation = obj.metadata.generation;

    if deleting && !has_finalizer {
        // Not ours to hold up (or already released).
        ctx.statuses.forget(&uid);
        return Ok(Action::await_change());
    }
    let first_sight = recorded.is_none();
    let mut status = recorded.unwrap_or_default();
    if first_sight && !deleting {
        // Written before anything else so kstatus-aware tools (Flux, Argo
        // CD, kubectl wait) see the resource is being worked on at once.
        conditions::set(
            &mut status,
            Summary::Progressing,
            "Initializing",
            "the operator has seen the resource and is reconciling it",
            generation,
            &SystemClock.now(),
        );
        sink.write(&status).await?;
    }
    if !deleting && !has_finalizer {
        let mut finalizers = obj.finalizers().to_vec();
        finalizers.push(FINALIZER.to_string());
        let rv = set_finalizers(&api, &name, finalizers, sink.resource_version()).await?;
        sink.set_resource_version(rv);
    }
    if deleting && obj.spec.deletion_policy == DeletionPolicy::Retain {
        // Retain leaves the store as it is: no need to even look at it.
        remove_finalizer(&api, obj, sink.resource_version()).await?;
        ctx.statuses.forget(&uid);
        sink.event(
            EventType::Normal,
            "Released",
            "Delete",
            "deletionPolicy is Retain: the store is left untouched in KMS",
        )
        .await;
        tracing::info!(%namespace, %name, "released (deletionPolicy Retain)");
        return Ok(Action::await_change());
    }

    let target = match resolve_target(obj, ctx, &namespace).await? {
        Ok(target) => target,
        Err((category, message)) => {
            // Refused before any AWS call: only the resource can fix it.
            status.observed_generation = generation;
            conditions::set(
                &mut status,
                Summary::Stalled,
                category.reason(),
                &message,
                generation,
                &SystemClock.now(),
            );
            sink.write(&status).await?;
            ctx.metrics.failed(category.reason());
            return Ok(Action::await_change());
        }
    };

    // The claim rule needs every watched resource: until each listing is
    // complete, a holder could be missing from it.
    if !ctx.cache.synced() {
        return Ok(Action::requeue(CACHE_WAIT));
    }
    let default_region = ctx.backend.default_region();
    let rivals = ctx.cache.rivals(&uid, &ctx.statuses, |other| {
        Some(Scope {
            account: ctx.account_of(other.spec.role_arn.as_deref()),
            region: other
                .spec
                .region
                .clone()
                .or_else(|| default_region.clone())?,
        })
    });

    let credential = secrets::read_credential(
        ctx.client.clone(),
        &namespace,
        &obj.spec.proxy.credentials_secret_ref,
    )
    .await
    .map_err(Error::Kube)?;
    let request = Request {
        resource: obj,
        credential,
        approved: crate::api::is_approved(obj),
        deleting,
        requested_at: obj.annotations().get(FLUX_REQUESTED_AT).cloned(),
        rivals,
    };
    let region = target.region;
    let engine = ctx.engine(&region, target.role.as_ref()).await;
    let outcome = engine.reconcile(&request, &mut status, &mut sink).await?;
    tracing::debug!(%namespace, %name, %region, ?outcome, "reconciled");
    // After the engine, so a check never delays a change; None when the
    // watch has nothing to say about the requeue.
    let next_check = if deleting {
        None
    } else {
        health::watch(
            &engine.probe,
            ctx.settings.proxy_health_interval,
            obj,
            &region,
            &request.credential,
            outcome,
            &mut status,
            &mut sink,
        )
        .await?
    };
    let settled = |after: Duration| next_check.map_or(after, |check| after.min(check));

    let drift = drift_interval(obj, ctx.settings.drift_interval);
    Ok(match outcome {
        Outcome::Released if deleting => {
            remove_finalizer(&api, obj, sink.resource_version()).await?;
            ctx.statuses.forget(&uid);
            sink.event(
                EventType::Normal,
                "Released",
                "Delete",
                "deletionPolicy is Delete: the store is deleted from KMS (or was already gone)",
            )
            .await;
            tracing::info!(%namespace, %name, "released (deletionPolicy Delete)");
            Action::await_change()
        }
        Outcome::Claimed if deleting => {
            // Not the holder: the store is someone else's, leave it be.
            remove_finalizer(&api, obj, sink.resource_version()).await?;
            ctx.statuses.forget(&uid);
            let held =
                conditions::get(&status, STALLED).map_or_else(String::new, |c| c.message.clone());
            sink.event(
                EventType::Normal,
                "Released",
                "Delete",
                &format!("the store was left untouched: {held}"),
            )
            .await;
            tracing::info!(%namespace, %name, "released without touching a store another resource holds");
            Action::await_change()
        }
        // Nothing wakes a resource when its holder goes away: look again
        // soon (a cache lookup, no API or KMS call while nothing changes).
        Outcome::Claimed => Action::requeue(jitter(CLAIM_RECHECK.min(drift))),
        // Not shortened for a health check: the engine does not wait for a
        // retry's due time by itself, the requeue is what paces it.
        Outcome::Requeue(after) => Action::requeue(after),
        Outcome::Stalled => {
            let reason = conditions::get(&status, STALLED).map_or("Stalled", |c| c.reason.as_str());
            ctx.metrics.failed(reason);
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
    let Some(region) = obj
        .spec
        .region
        .clone()
        .or_else(|| ctx.backend.default_region())
    else {
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
