//! One function per step. Each first looks at what KMS reports now, so that
//! a step that already took effect before a crash is recognised instead of
//! repeated, and records "about to call" in status before its side effect.

use super::pass::Pass;
use super::{Engine, EngineError, StatusSink, record_observation};
use crate::api::{ExternalKeyStoreStatus, StepName, StepState};
use crate::error::{Class, ErrorCategory, connection_error_class};
use crate::kms::{CreateStore, KeyStores, KmsError, UpdateStore};
use crate::model::{ConnectionState, ObservedStore, ProxyConfig, ProxyCredential};
use crate::plan::{self, Desired};
use crate::xks::{KeyManagerHealth, ProbeError, ProxyProbe, ProxyTarget};

/// Why a step did not succeed, in words for the user. Never holds a secret.
#[derive(Clone, Debug)]
pub struct StepError {
    pub category: ErrorCategory,
    pub message: String,
    /// A more specific condition reason than the category's: the KMS
    /// exception or ConnectionErrorCode, in CamelCase.
    pub reason: Option<String>,
    /// The store's `ConnectionErrorCode`, for a failed connection.
    pub connection_error_code: Option<String>,
}

impl StepError {
    pub fn new(category: ErrorCategory, message: impl Into<String>) -> Self {
        Self {
            category,
            message: message.into(),
            reason: None,
            connection_error_code: None,
        }
    }

    /// A KMS error while `doing` something.
    pub fn from_kms(e: &KmsError, doing: &str) -> Self {
        Self {
            category: e.category(),
            message: if doing.is_empty() {
                e.to_string()
            } else {
                format!("{doing}: {e}")
            },
            // STS's code says less than "AssumeRoleFailed" would.
            reason: match e {
                KmsError::AssumeRole { .. } => None,
                _ => e.code().map(camel_reason),
            },
            connection_error_code: None,
        }
    }

    /// The condition reason: specific when known, else the category's.
    pub fn reason(&self) -> String {
        self.reason
            .clone()
            .unwrap_or_else(|| self.category.reason().to_string())
    }

    /// Whether the proxy (or KMS's connection to it) failed, rather than
    /// KMS's API or the operator itself.
    pub fn implicates_the_proxy(&self) -> bool {
        matches!(
            self.category,
            ErrorCategory::ConnectionFailed
                | ErrorCategory::ProxyUnreachable
                | ErrorCategory::ProxyUnhealthy
                | ErrorCategory::ProxyInvalidResponse
                | ErrorCategory::ProxyMisconfigured
                | ErrorCategory::ProxyCredentialRejected
        )
    }

    /// Whether it can pass by itself (the retry policy's input).
    pub fn class(&self) -> Class {
        match (&self.category, &self.connection_error_code) {
            (ErrorCategory::ConnectionFailed, Some(code)) => connection_error_class(code),
            (category, _) => category.class(),
        }
    }
}

/// What a step that waits on KMS says, the same before its call and while
/// it waits, so that waiting writes no status.
const WAITING_DISCONNECTED: &str = "waiting for DISCONNECTED";
const WAITING_CONNECTED: &str = "waiting for CONNECTED";

/// `XKS_PROXY_NOT_REACHABLE` → `XksProxyNotReachable`;
/// `XksProxyUriUnreachableException` → `XksProxyUriUnreachable`.
pub fn camel_reason(code: &str) -> String {
    if code.contains('_') {
        code.split('_')
            .filter(|w| !w.is_empty())
            .map(|w| {
                let lower = w.to_ascii_lowercase();
                let mut chars = lower.chars();
                chars
                    .next()
                    .map(|c| c.to_ascii_uppercase().to_string() + chars.as_str())
                    .unwrap_or_default()
            })
            .collect()
    } else {
        code.trim_end_matches("Exception").to_string()
    }
}

/// KMS's answer to a create whose name another store holds.
const NAME_IN_USE: &str = "CustomKeyStoreNameInUseException";

pub(super) enum StepResult {
    Done(String),
    /// KMS is transitioning; look again later.
    Wait(String),
    /// The step failed; the retry policy decides what follows.
    Failed(StepError),
}

/// What a step needs besides the engine and the pass.
pub(super) struct StepContext<'a> {
    pub index: usize,
    pub desired: &'a Desired,
    pub credential: &'a ProxyCredential,
    /// What this pass described just before the step (`None`: nothing was
    /// described). Used once, before any side effect of the step.
    pub just_observed: Option<Option<ObservedStore>>,
    /// When the step is being retried: how many calls it had issued when
    /// it failed.
    pub retried_after_calls: Option<u32>,
}

pub(super) async fn run_step<K: KeyStores, P: ProxyProbe, S: StatusSink>(
    engine: &Engine<K, P>,
    ctx: StepContext<'_>,
    pass: &mut Pass<'_, S>,
) -> Result<StepResult, EngineError> {
    let Some(step) = pass
        .status
        .operation
        .as_ref()
        .and_then(|o| o.steps.get(ctx.index))
    else {
        return Ok(StepResult::Done(String::new()));
    };
    let name = step.name;
    let calls = step.attempts;
    let desired = ctx.desired;
    let mut run = StepRun {
        engine,
        index: ctx.index,
        desired,
        credential: ctx.credential,
        just_observed: ctx.just_observed,
    };
    match name {
        StepName::Preflight => run.preflight(pass).await,
        StepName::Create => run.create(pass, calls).await,
        StepName::Disconnect | StepName::RollbackDisconnect => run.disconnect(pass).await,
        StepName::Update => run.update(pass, desired.clone()).await,
        StepName::RestorePrevious => {
            let previous = pass
                .status
                .operation
                .as_ref()
                .and_then(|o| o.previous.clone());
            match previous {
                Some(previous) => {
                    let target = restore_target(desired, &previous, pass.status);
                    run.update(pass, target).await
                }
                None => Ok(StepResult::Failed(StepError::new(
                    ErrorCategory::Internal,
                    "no previous proxy configuration was recorded",
                ))),
            }
        }
        StepName::HealthCheck => run.health_check(pass).await,
        StepName::Connect | StepName::RollbackConnect => {
            // A retry of a connection that ended FAILED disconnects first
            // (KMS connects only a DISCONNECTED store): no connect call was
            // issued since the failure was recorded.
            let reconnecting = ctx.retried_after_calls.is_some_and(|at| calls <= at);
            run.connect(pass, calls, reconnecting).await
        }
        StepName::Delete => run.delete(pass).await,
    }
}

struct StepRun<'a, K, P> {
    engine: &'a Engine<K, P>,
    index: usize,
    desired: &'a Desired,
    credential: &'a ProxyCredential,
    /// What this pass described just before the step (`None`: nothing was
    /// described). Used once, before any side effect of the step.
    just_observed: Option<Option<ObservedStore>>,
}

impl<K: KeyStores, P: ProxyProbe> StepRun<'_, K, P> {
    /// Record "about to call" (state Running, one more call, what it does
    /// and that the pass waits on it) before a side effect, so a crash right
    /// after the call is recognised on resume. The step's later `Wait` with
    /// the same words writes nothing new.
    async fn begin_call<S: StatusSink>(
        &self,
        pass: &mut Pass<'_, S>,
        doing: &str,
    ) -> Result<(), EngineError> {
        self.count_call(pass, Some(doing));
        let (trigger, step) = pass
            .status
            .operation
            .as_ref()
            .map(|o| (o.trigger.clone(), o.steps.get(self.index).map(|s| s.name)))
            .unwrap_or_default();
        let step = step.map(|s| s.to_string()).unwrap_or_default();
        pass.set_conditions(
            super::conditions::Summary::Progressing,
            "Waiting",
            &format!("{trigger}: {step}: {doing}"),
        );
        pass.write().await
    }

    /// One more call of a step without a side effect on KMS (the proxy
    /// checks): counted, not written on its own.
    fn count_call<S: StatusSink>(&self, pass: &mut Pass<'_, S>, doing: Option<&str>) {
        let now = pass.now();
        if let Some(step) = pass
            .status
            .operation
            .as_mut()
            .and_then(|o| o.steps.get_mut(self.index))
        {
            step.state = StepState::Running;
            step.attempts += 1;
            if let Some(doing) = doing {
                step.message = Some(doing.to_string());
            }
            if step.started_at.is_none() {
                step.started_at = Some(now);
            }
        }
    }

    fn target(&self, uri_endpoint: &str, uri_path: &str) -> ProxyTarget {
        ProxyTarget {
            uri_endpoint: uri_endpoint.to_string(),
            uri_path: uri_path.to_string(),
            region: self.engine.region.clone(),
            credential: self.credential.clone(),
        }
    }

    /// What the pass described just now, if it is the store with `id`.
    fn just_seen(&mut self, id: &str) -> Option<ObservedStore> {
        self.just_observed
            .take()
            .flatten()
            .filter(|store| store.id == id)
    }

    /// Describe the store this operation works on, fresh.
    async fn current(
        &mut self,
        status: &mut ExternalKeyStoreStatus,
    ) -> Result<ObservedStore, StepResult> {
        let Some(id) = status.key_store_id.clone() else {
            return Err(StepResult::Failed(StepError::new(
                ErrorCategory::Internal,
                "no key store id recorded",
            )));
        };
        // The observation of this pass was already recorded in status.
        if let Some(store) = self.just_seen(&id) {
            return Ok(store);
        }
        match self.engine.kms.describe_by_id(&id).await {
            Ok(Some(store)) => {
                record_observation(status, Some(&store));
                Ok(store)
            }
            Ok(None) => Err(StepResult::Failed(StepError::new(
                ErrorCategory::NotFound,
                format!("store {id} no longer exists in KMS"),
            ))),
            Err(e) => Err(kms_failed(&e)),
        }
    }

    async fn preflight<S: StatusSink>(
        &mut self,
        pass: &mut Pass<'_, S>,
    ) -> Result<StepResult, EngineError> {
        self.count_call(pass, None);
        let proxy = &self.desired.proxy;
        let target = self.target(&proxy.uri_endpoint, &proxy.uri_path);
        let health = match self.engine.probe.health(&target).await {
            Ok(h) => h,
            Err(e) => return Ok(proxy_failed(&e, "the new proxy")),
        };
        if !health.is_usable() {
            return Ok(StepResult::Failed(StepError::new(
                ErrorCategory::ProxyUnhealthy,
                format!(
                    "the new proxy at {}{} answers, but all {} of its key managers are UNAVAILABLE",
                    proxy.uri_endpoint,
                    proxy.uri_path,
                    health.key_managers.len()
                ),
            )));
        }
        let active = health
            .key_managers
            .iter()
            .filter(|m| m.health == KeyManagerHealth::Active)
            .count();
        let mut message = format!(
            "new proxy {}{} is healthy ({} {}, {active}/{} key managers ACTIVE)",
            proxy.uri_endpoint,
            proxy.uri_path,
            health.proxy_vendor,
            health.proxy_model,
            health.key_managers.len()
        );

        // Key continuity: every KMS key of the store must be served by the
        // new proxy, or switching would strand its ciphertext.
        if let Some(id) = pass.status.key_store_id.clone() {
            let keys = match self.engine.kms.list_store_keys(&id).await {
                Ok(keys) => keys,
                Err(e) => return Ok(kms_failed(&e)),
            };
            let mut missing = Vec::new();
            for key in &keys {
                match self
                    .engine
                    .probe
                    .key_metadata(&target, &key.external_key_id)
                    .await
                {
                    Ok(meta) if meta.is_usable() => {}
                    Ok(meta) => missing.push(format!(
                        "{} (external key {}: {} {})",
                        key.key_id, key.external_key_id, meta.key_spec, meta.key_status
                    )),
                    Err(ProbeError::KeyNotFound) => missing.push(format!(
                        "{} (external key {} not found)",
                        key.key_id, key.external_key_id
                    )),
                    Err(e) => return Ok(proxy_failed(&e, "the new proxy")),
                }
            }
            if !missing.is_empty() {
                return Ok(StepResult::Failed(StepError::new(
                    ErrorCategory::KeyContinuity,
                    format!(
                        "refusing to switch: the new proxy does not serve {} of the {} KMS keys of the store, whose ciphertext would become undecryptable: {}",
                        missing.len(),
                        keys.len(),
                        missing.join(", ")
                    ),
                )));
            }
            message.push_str(&format!(
                "; serves all {} external keys of the store",
                keys.len()
            ));
        }
        Ok(StepResult::Done(message))
    }

    async fn create<S: StatusSink>(
        &mut self,
        pass: &mut Pass<'_, S>,
        earlier_calls: u32,
    ) -> Result<StepResult, EngineError> {
        // KMS's create takes no idempotency token: if an earlier attempt may
        // have gone through, adopt what it made instead of making a second.
        if earlier_calls > 0 {
            let lookup = match self.just_observed.take() {
                // observe() just looked this name up (no pinned id).
                Some(seen) if self.desired.pinned_id.is_none() => Ok(seen),
                _ => self.engine.kms.describe_by_name(&self.desired.name).await,
            };
            let why = "made by an earlier attempt whose answer was lost";
            if let Some(adopted) = self.adopt(pass, lookup, why) {
                return Ok(adopted);
            }
        }
        self.begin_call(pass, "creating the store").await?;
        let req = CreateStore {
            name: self.desired.name.clone(),
            proxy: self.desired.proxy.clone(),
            credential: self.credential.clone(),
        };
        match self.engine.kms.create(&req).await {
            Ok(id) => {
                let status = &mut *pass.status;
                status.key_store_id = Some(id.clone());
                status.key_store_name = Some(self.desired.name.clone());
                status.connection_state = Some(ConnectionState::Disconnected);
                status.proxy = Some(self.desired.proxy.clone());
                status.credential_fingerprint = Some(self.desired.credential_fingerprint.clone());
                Ok(StepResult::Done(format!("created store {id}")))
            }
            // KMS keeps names unique per account and Region, so the name is
            // held by a store younger than the listing the observation came
            // from (the describe cache trusts a listing's miss; KMS decides
            // here, where a race would be lost anyway). The lookup is fresh:
            // the create made this name stale in the cache.
            Err(e) if e.code() == Some(NAME_IN_USE) => {
                let lookup = self.engine.kms.describe_by_name(&self.desired.name).await;
                Ok(self
                    .adopt(pass, lookup, "already in KMS under this name")
                    .unwrap_or_else(|| kms_failed(&e)))
            }
            Err(e) => Ok(kms_failed(&e)),
        }
    }

    /// The store `lookup` found under the desired name, recorded as this
    /// resource's, as observing it by name would have; `None` when none
    /// was found.
    fn adopt<S: StatusSink>(
        &self,
        pass: &mut Pass<'_, S>,
        lookup: Result<Option<ObservedStore>, KmsError>,
        why: &str,
    ) -> Option<StepResult> {
        match lookup.map(|found| found.filter(|s| s.name == self.desired.name)) {
            Ok(Some(store)) => {
                record_observation(pass.status, Some(&store));
                Some(StepResult::Done(format!(
                    "adopted store {} {why}",
                    store.id
                )))
            }
            Ok(None) => None,
            Err(e) => Some(kms_failed(&e)),
        }
    }

    async fn disconnect<S: StatusSink>(
        &mut self,
        pass: &mut Pass<'_, S>,
    ) -> Result<StepResult, EngineError> {
        let store = match self.current(pass.status).await {
            Ok(s) => s,
            Err(r) => return Ok(r),
        };
        match store.connection_state {
            ConnectionState::Disconnected => Ok(StepResult::Done("store is DISCONNECTED".into())),
            ConnectionState::Disconnecting => Ok(StepResult::Wait(WAITING_DISCONNECTED.into())),
            ConnectionState::Connected | ConnectionState::Connecting | ConnectionState::Failed => {
                self.request_disconnect(pass, &store.id, WAITING_DISCONNECTED)
                    .await
            }
        }
    }

    async fn request_disconnect<S: StatusSink>(
        &self,
        pass: &mut Pass<'_, S>,
        id: &str,
        waiting: &str,
    ) -> Result<StepResult, EngineError> {
        self.begin_call(pass, waiting).await?;
        Ok(match self.engine.kms.disconnect(id).await {
            Ok(()) => StepResult::Wait(waiting.to_string()),
            Err(e) => kms_failed(&e),
        })
    }

    async fn update<S: StatusSink>(
        &mut self,
        pass: &mut Pass<'_, S>,
        target: Desired,
    ) -> Result<StepResult, EngineError> {
        let store = match self.current(pass.status).await {
            Ok(s) => s,
            Err(r) => return Ok(r),
        };
        let d = plan::diff(
            &target,
            &store,
            pass.status.credential_fingerprint.as_deref(),
        );
        if !d.any() {
            return Ok(StepResult::Done(
                "KMS already has the new configuration".into(),
            ));
        }
        if d.needs_disconnect() && store.connection_state != ConnectionState::Disconnected {
            // Never send a disconnect-only field to a store that is not
            // DISCONNECTED; someone reconnected it underneath us.
            return Ok(StepResult::Failed(StepError::new(
                ErrorCategory::InvalidState,
                format!(
                    "the store is {} but {} can only change while DISCONNECTED",
                    store.connection_state,
                    d.changed_fields().join(", ")
                ),
            )));
        }
        let want = &target.proxy;
        let vpc = want.connectivity == crate::model::Connectivity::VpcEndpointService;
        let req = UpdateStore {
            id: store.id.clone(),
            new_name: d.name.then(|| target.name.clone()),
            credential: d.credential.then(|| self.credential.clone()),
            uri_path: d.uri_path.then(|| want.uri_path.clone()),
            uri_endpoint: d.uri_endpoint.then(|| want.uri_endpoint.clone()),
            connectivity: d.connectivity.then_some(want.connectivity),
            // Switching to a public endpoint clears the service with "".
            vpc_endpoint_service_name: (d.vpc_endpoint_service_name || d.connectivity).then(|| {
                if vpc {
                    want.vpc_endpoint_service_name.clone().unwrap_or_default()
                } else {
                    String::new()
                }
            }),
            vpc_endpoint_service_owner: (vpc && d.vpc_endpoint_service_owner)
                .then(|| want.vpc_endpoint_service_owner.clone().unwrap_or_default()),
        };
        self.begin_call(pass, &format!("updating {}", d.changed_fields().join(", ")))
            .await?;
        match self.engine.kms.update(&req).await {
            Ok(()) => {
                if d.credential {
                    pass.status.credential_fingerprint =
                        Some(target.credential_fingerprint.clone());
                }
                Ok(StepResult::Done(format!(
                    "updated {}",
                    d.changed_fields().join(", ")
                )))
            }
            Err(e) => Ok(kms_failed(&e)),
        }
    }

    async fn health_check<S: StatusSink>(
        &mut self,
        pass: &mut Pass<'_, S>,
    ) -> Result<StepResult, EngineError> {
        let store = match self.current(pass.status).await {
            Ok(s) => s,
            Err(r) => return Ok(r),
        };
        let Some(proxy) = store.proxy.as_ref() else {
            return Ok(StepResult::Done("not an XKS store".into()));
        };
        self.count_call(pass, None);
        let target = self.target(&proxy.uri_endpoint, &proxy.uri_path);
        match self.engine.probe.health(&target).await {
            Ok(h) if h.is_usable() => Ok(StepResult::Done(format!(
                "proxy at {}{} (now in KMS) is healthy",
                proxy.uri_endpoint, proxy.uri_path
            ))),
            Ok(_) => Ok(StepResult::Failed(StepError::new(
                ErrorCategory::ProxyUnhealthy,
                "all key managers of the proxy are UNAVAILABLE",
            ))),
            Err(e) => Ok(proxy_failed(&e, "the proxy now in KMS")),
        }
    }

    async fn connect<S: StatusSink>(
        &mut self,
        pass: &mut Pass<'_, S>,
        earlier_calls: u32,
        reconnecting: bool,
    ) -> Result<StepResult, EngineError> {
        let store = match self.current(pass.status).await {
            Ok(s) => s,
            Err(r) => return Ok(r),
        };
        match store.connection_state {
            ConnectionState::Connected => Ok(StepResult::Done("store is CONNECTED".into())),
            ConnectionState::Connecting => Ok(StepResult::Wait(WAITING_CONNECTED.into())),
            ConnectionState::Disconnecting => Ok(StepResult::Wait(
                "waiting for DISCONNECTED before connecting".into(),
            )),
            ConnectionState::Failed if reconnecting => {
                // The Disconnect call counts as a call of this step: move
                // the retry's mark with it, so a crash right after the write
                // below resumes by disconnecting again, not by counting a
                // connection failure no Connect caused.
                if let Some(retry) = pass.status.retry.as_mut() {
                    retry.calls = earlier_calls + 1;
                }
                self.request_disconnect(
                    pass,
                    &store.id,
                    "disconnecting the FAILED store to connect it again",
                )
                .await
            }
            ConnectionState::Failed => {
                let code = store
                    .connection_error_code
                    .as_deref()
                    .unwrap_or("no ConnectionErrorCode");
                let why = super::remediation::connection_error_advice(code);
                let message = if earlier_calls > 0 {
                    format!("the store failed to connect: {code}: {why}")
                } else {
                    format!("the store is FAILED ({code}): {why}")
                };
                Ok(StepResult::Failed(StepError {
                    category: ErrorCategory::ConnectionFailed,
                    message,
                    reason: store.connection_error_code.as_deref().map(camel_reason),
                    connection_error_code: store.connection_error_code.clone(),
                }))
            }
            ConnectionState::Disconnected => {
                self.begin_call(pass, WAITING_CONNECTED).await?;
                match self.engine.kms.connect(&store.id).await {
                    Ok(()) => Ok(StepResult::Wait(WAITING_CONNECTED.into())),
                    Err(e) => Ok(kms_failed(&e)),
                }
            }
        }
    }

    async fn delete<S: StatusSink>(
        &mut self,
        pass: &mut Pass<'_, S>,
    ) -> Result<StepResult, EngineError> {
        let Some(id) = pass.status.key_store_id.clone() else {
            return Ok(StepResult::Done("no store to delete".into()));
        };
        if self.just_seen(&id).is_none() {
            match self.engine.kms.describe_by_id(&id).await {
                Ok(None) => return Ok(StepResult::Done(format!("store {id} is already gone"))),
                Ok(Some(_)) => {}
                Err(e) => return Ok(kms_failed(&e)),
            }
        }
        self.begin_call(pass, &format!("deleting store {id}"))
            .await?;
        match self.engine.kms.delete(&id).await {
            Ok(()) => {
                record_observation(pass.status, None);
                Ok(StepResult::Done(format!("deleted store {id}")))
            }
            Err(e) if e.category() == ErrorCategory::StoreHasKeys => {
                let count = self
                    .engine
                    .kms
                    .list_store_keys(&id)
                    .await
                    .map(|k| k.len().to_string())
                    .unwrap_or_else(|_| "some".into());
                Ok(StepResult::Failed(StepError::new(
                    ErrorCategory::StoreHasKeys,
                    format!(
                        "KMS refuses to delete store {id}: it still holds {count} KMS keys. Schedule their deletion and wait for it to complete, or set deletionPolicy: Retain to release the store untouched"
                    ),
                )))
            }
            Err(e) => Ok(kms_failed(&e)),
        }
    }
}

fn proxy_failed(e: &ProbeError, which: &str) -> StepResult {
    StepResult::Failed(StepError::new(e.category(), format!("{which}: {e}")))
}

fn kms_failed(e: &KmsError) -> StepResult {
    StepResult::Failed(StepError::from_kms(e, ""))
}

/// The configuration to restore on rollback: the recorded previous proxy
/// location, with today's name and credential (the old secret is not kept).
fn restore_target(
    desired: &Desired,
    previous: &ProxyConfig,
    status: &ExternalKeyStoreStatus,
) -> Desired {
    let mut target = desired.clone();
    target.proxy.connectivity = previous.connectivity;
    target.proxy.uri_endpoint = previous.uri_endpoint.clone();
    target.proxy.uri_path = previous.uri_path.clone();
    target.proxy.vpc_endpoint_service_name = previous.vpc_endpoint_service_name.clone();
    target.proxy.vpc_endpoint_service_owner = previous.vpc_endpoint_service_owner.clone();
    if let Some(fp) = &status.credential_fingerprint {
        target.credential_fingerprint = fp.clone();
    }
    target
}

#[cfg(test)]
mod tests {
    use super::camel_reason;

    #[test]
    fn reasons_are_camel_case() {
        assert_eq!(
            camel_reason("XKS_PROXY_NOT_REACHABLE"),
            "XksProxyNotReachable"
        );
        assert_eq!(camel_reason("INVALID_CREDENTIALS"), "InvalidCredentials");
        assert_eq!(
            camel_reason("XksProxyUriUnreachableException"),
            "XksProxyUriUnreachable"
        );
    }
}
