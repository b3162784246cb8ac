//! aws-sdk-kms adapter: the `KeyStores` port over the real KMS client.
//!
//! Two additions over a bare client, both for running many stores in one
//! account and Region:
//! - an optional client-side token bucket per custom-key-store operation, so a
//!   burst waits here instead of being throttled by KMS (5 requests/s per
//!   operation per account and Region); the clients `run` builds send each
//!   call once, so a throttle (from other callers of the quota) goes back
//!   to the engine's retry policy instead of holding a reconcile worker;
//! - counters of calls by operation and outcome, read as a [`KmsCallStats`]
//!   snapshot by metrics and benchmarks.
//!
//! Requests carrying the proxy secret are never logged or put in errors: only
//! the operation name and the KMS error code/message are.

use super::identity::AssumedRole;
use super::{CreateStore, KeyStores, KmsError, UpdateStore};
use crate::model::{ConnectionState, Connectivity, ObservedStore, ProxyConfig, StoreKey};
use aws_config::{BehaviorVersion, SdkConfig};
use aws_credential_types::Credentials;
use aws_sdk_kms::config::Region;
use aws_sdk_kms::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_kms::types::{
    CustomKeyStoreType, CustomKeyStoresListEntry, XksProxyAuthenticationCredentialType,
    XksProxyConnectivityType,
};
use aws_smithy_runtime::client::retries::RetryPartition;
use aws_smithy_runtime_api::client::orchestrator::HttpResponse;
use aws_smithy_types::retry::{RetryConfig, RetryMode};
use aws_smithy_types::timeout::TimeoutConfig;
use futures::{StreamExt, TryStreamExt};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Default client-side rate in `from_env`: KMS's quota of 5 requests/s per
/// custom-key-store operation. Spaced evenly, these calls never exceed it
/// on their own; when other callers share the quota, the throttles go to
/// the engine, which backs off per resource (BENCHMARKS.md: 4.5/s cost 11%
/// of throughput and bought no throttle less).
pub const DEFAULT_RATE_PER_SECOND: f64 = 5.0;
/// Attempts per call of the SDK's retry (its default).
const DEFAULT_MAX_ATTEMPTS: u32 = 3;

const PAGE_LIMIT: i32 = 1000;
/// DescribeKey calls in flight at once while listing a store's keys.
const DESCRIBE_KEY_CONCURRENCY: usize = 8;
/// Outcome label for calls that never got a KMS error code.
pub const OUTCOME_OK: &str = "ok";
pub const OUTCOME_TRANSPORT: &str = "transport";
/// Code of the errors this adapter raises itself when KMS answers something
/// it cannot map (unknown enum value, missing id...). Its category is Internal.
pub const UNEXPECTED_RESPONSE: &str = "UnexpectedKmsResponse";

/// The custom-key-store operations that share KMS's 5/s quota, one bucket each.
/// ListKeys and DescribeKey have far larger quotas of their own and are not
/// limited here (the SDK's retry handles the rare throttle).
const RATE_LIMITED_OPERATIONS: [&str; 6] = [
    "DescribeCustomKeyStores",
    "CreateCustomKeyStore",
    "UpdateCustomKeyStore",
    "ConnectCustomKeyStore",
    "DisconnectCustomKeyStore",
    "DeleteCustomKeyStore",
];

/// Counters of KMS calls since the adapter was built (shared by its clones).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KmsCallStats {
    /// (operation, outcome) → calls. Outcome is `ok`, the KMS error code
    /// (e.g. `ThrottlingException`) or `transport`.
    pub calls: BTreeMap<(String, String), u64>,
    /// operation → calls that had to wait for the client-side rate limiter.
    pub rate_limited: BTreeMap<String, u64>,
}

impl KmsCallStats {
    pub fn count(&self, operation: &str, outcome: &str) -> u64 {
        self.calls
            .get(&(operation.to_owned(), outcome.to_owned()))
            .copied()
            .unwrap_or(0)
    }

    /// Calls of `operation` whatever their outcome.
    pub fn total(&self, operation: &str) -> u64 {
        self.calls
            .iter()
            .filter(|((op, _), _)| op == operation)
            .map(|(_, n)| n)
            .sum()
    }

    pub fn waits(&self, operation: &str) -> u64 {
        self.rate_limited.get(operation).copied().unwrap_or(0)
    }
}

/// `KeyStores` over aws-sdk-kms. Cheap to clone; clones share the rate
/// limiter and the counters.
#[derive(Clone)]
pub struct AwsKeyStores {
    client: aws_sdk_kms::Client,
    limiter: Option<Arc<DefaultKeyedRateLimiter<&'static str>>>,
    stats: Arc<Mutex<KmsCallStats>>,
    /// The role whose credentials the client uses, if not its own.
    role: Option<String>,
}

impl fmt::Debug for AwsKeyStores {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AwsKeyStores")
            .field("region", &self.client.config().region())
            .field("rate_limited", &self.limiter.is_some())
            .finish_non_exhaustive()
    }
}

/// Bounds so that a silent KMS cannot hold an engine worker forever.
fn default_timeouts() -> TimeoutConfig {
    TimeoutConfig::builder()
        .connect_timeout(Duration::from_secs(3))
        .operation_attempt_timeout(Duration::from_secs(10))
        .operation_timeout(Duration::from_secs(30))
        .build()
}

/// The operator's own AWS configuration: the standard chain (env, profile,
/// IRSA/Pod Identity, IMDS), so `AWS_REGION`, `AWS_ENDPOINT_URL_KMS`,
/// `AWS_ENDPOINT_URL_STS` and `AWS_ENDPOINT_URL` apply; `region` overrides
/// the chain's Region.
pub async fn own_config(region: Option<String>) -> SdkConfig {
    let mut loader =
        aws_config::defaults(BehaviorVersion::latest()).timeout_config(default_timeouts());
    if let Some(region) = region {
        loader = loader.region(Region::new(region));
    }
    loader.load().await
}

/// A configuration for an emulator at `endpoint_url` (KMS and STS on one
/// listener), with static dummy credentials. For tests and file mode.
pub async fn emulator_config(endpoint_url: &str, region: &str) -> SdkConfig {
    aws_config::defaults(BehaviorVersion::latest())
        .region(Region::new(region.to_owned()))
        .endpoint_url(endpoint_url)
        .credentials_provider(dummy_credentials())
        .timeout_config(default_timeouts())
        .load()
        .await
}

fn dummy_credentials() -> Credentials {
    Credentials::new(
        "AKIAXKSOPERATORTEST0",
        "xks-operator-dummy-secret-for-emulators",
        None,
        None,
        "xks-operator-static",
    )
}

impl AwsKeyStores {
    /// The standard AWS config chain (see [`own_config`]). Rate limited at
    /// [`DEFAULT_RATE_PER_SECOND`] per operation, each call sent once.
    pub async fn from_env(region: Option<String>) -> Self {
        let config = own_config(region).await;
        Self::from_client(aws_sdk_kms::Client::new(&config))
            .with_rate_limit(DEFAULT_RATE_PER_SECOND)
            .with_max_attempts(1)
    }

    /// KMS in `region`, as `base`'s identity or, given `role`, as that role
    /// (assumed with `base`'s identity; the client's identity cache keeps
    /// the credentials and refreshes them before they expire). Rate limited
    /// at [`DEFAULT_RATE_PER_SECOND`] per operation.
    ///
    /// Each call is sent once: the SDK does not retry (nor, in its adaptive
    /// mode, hold calls back) on its own. A throttle or a dropped connection
    /// returns at once to the engine, whose retry policy (`crate::retry`)
    /// requeues the resource with backoff and frees its worker. Retrying
    /// inside the call held the worker, so an account KMS throttles took
    /// every worker and stalled the stores of every other account
    /// (BENCHMARKS.md, "Several accounts": 0.04 s → 90 s).
    pub async fn new(base: &SdkConfig, region: &str, role: Option<&AssumedRole>) -> Self {
        let mut config =
            aws_sdk_kms::config::Builder::from(base).region(Region::new(region.to_owned()));
        if let Some(role) = role {
            config = config.credentials_provider(role.provider(base, region).await);
        }
        let mut kms = Self::from_client(aws_sdk_kms::Client::from_conf(config.build()))
            .with_rate_limit(DEFAULT_RATE_PER_SECOND)
            .with_max_attempts(1);
        kms.role = role.map(|r| r.arn.clone());
        kms
    }

    /// Wraps a ready client, without rate limiting.
    pub fn from_client(client: aws_sdk_kms::Client) -> Self {
        Self {
            client,
            limiter: None,
            stats: Arc::default(),
            role: None,
        }
    }

    /// A client for a KMS emulator at `endpoint_url`, with static dummy AWS
    /// credentials. For tests and the demo; no rate limiting unless asked.
    pub fn for_endpoint(endpoint_url: &str, region: &str) -> Self {
        let config = aws_sdk_kms::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new(region.to_owned()))
            .endpoint_url(endpoint_url)
            .credentials_provider(dummy_credentials())
            .timeout_config(default_timeouts())
            .build();
        Self::from_client(aws_sdk_kms::Client::from_conf(config))
    }

    /// One token bucket per custom-key-store operation refilling at
    /// `per_second`, with a burst of one: calls are spaced evenly, so at
    /// most ⌈rate⌉ start in any one-second window (5 at 5/s, KMS's
    /// quota). SDK retries happen inside one admitted call. A non-positive or
    /// non-finite rate removes the limit.
    pub fn with_rate_limit(mut self, per_second: f64) -> Self {
        self.limiter = (per_second.is_finite() && per_second > 0.0)
            .then(|| Duration::from_secs_f64(1.0 / per_second))
            .and_then(Quota::with_period)
            .map(|quota| Arc::new(RateLimiter::keyed(quota)));
        self
    }

    pub fn without_rate_limit(mut self) -> Self {
        self.limiter = None;
        self
    }

    /// Attempts per call made by the SDK's retry (1 disables retries: the
    /// engine then sees every throttle and 5xx itself). Keeps the mode.
    pub fn with_max_attempts(mut self, attempts: u32) -> Self {
        let retry = self
            .client
            .config()
            .retry_config()
            .cloned()
            .unwrap_or_else(RetryConfig::standard)
            .with_max_attempts(attempts.max(1));
        let config = self
            .client
            .config()
            .to_builder()
            .retry_config(retry)
            .build();
        self.client = aws_sdk_kms::Client::from_conf(config);
        self
    }

    /// The SDK's adaptive retry mode: after a ThrottlingException its
    /// client-side rate limiter (CUBIC) slows every call of this client
    /// down, then probes back up. A partition of its own, so that clients of
    /// other Regions (or other tests in one process) do not share its state.
    pub fn with_adaptive_retry(mut self) -> Self {
        let attempts = self
            .client
            .config()
            .retry_config()
            .map_or(DEFAULT_MAX_ATTEMPTS, |r| r.max_attempts());
        let region = self
            .client
            .config()
            .region()
            .map_or_else(|| "default".to_owned(), |r| r.to_string());
        let config = self
            .client
            .config()
            .to_builder()
            .retry_config(RetryConfig::adaptive().with_max_attempts(attempts))
            // Per account (role) and Region, as KMS's quota is: throttling
            // in one account must not slow another's calls down.
            .retry_partition(
                RetryPartition::custom(format!(
                    "xks-operator-kms-{region}-{}",
                    self.role.as_deref().unwrap_or("own")
                ))
                .build(),
            )
            .build();
        self.client = aws_sdk_kms::Client::from_conf(config);
        self
    }

    /// The SDK retry mode in use, e.g. for the startup log.
    pub fn retry_mode(&self) -> Option<RetryMode> {
        self.client.config().retry_config().map(RetryConfig::mode)
    }

    pub fn client(&self) -> &aws_sdk_kms::Client {
        &self.client
    }

    /// A snapshot of the call counters.
    pub fn stats(&self) -> KmsCallStats {
        self.stats
            .lock()
            .map(|s| s.clone())
            .unwrap_or_else(|poisoned| poisoned.into_inner().clone())
    }

    fn with_stats(&self, f: impl FnOnce(&mut KmsCallStats)) {
        let mut guard = match self.stats.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        f(&mut guard);
    }

    /// Waits for a token of `operation`'s bucket, if it has one.
    async fn admit(&self, operation: &'static str) {
        let Some(limiter) = &self.limiter else {
            return;
        };
        if !RATE_LIMITED_OPERATIONS.contains(&operation) {
            return;
        }
        if limiter.check_key(&operation).is_err() {
            self.with_stats(|s| *s.rate_limited.entry(operation.to_owned()).or_default() += 1);
            limiter.until_key_ready(&operation).await;
        }
    }

    /// Counts the outcome and classifies the error.
    fn settle<T, E>(
        &self,
        operation: &'static str,
        result: Result<T, SdkError<E, HttpResponse>>,
    ) -> Result<T, KmsError>
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
    {
        let result = result.map_err(|e| self.classify(e));
        let outcome = match &result {
            Ok(_) => OUTCOME_OK,
            Err(e) => e.code().unwrap_or(OUTCOME_TRANSPORT),
        };
        tracing::debug!(operation, outcome, "KMS call");
        self.with_stats(|s| {
            *s.calls
                .entry((operation.to_owned(), outcome.to_owned()))
                .or_default() += 1;
        });
        result
    }

    async fn describe_one(
        &self,
        id: Option<&str>,
        name: Option<&str>,
    ) -> Result<Option<ObservedStore>, KmsError> {
        const OP: &str = "DescribeCustomKeyStores";
        self.admit(OP).await;
        let sent = self
            .client
            .describe_custom_key_stores()
            .set_custom_key_store_id(id.map(str::to_owned))
            .set_custom_key_store_name(name.map(str::to_owned))
            .send()
            .await;
        match self.settle(OP, sent) {
            Ok(out) => out.custom_key_stores().first().map(observe).transpose(),
            Err(e) if e.code() == Some("CustomKeyStoreNotFoundException") => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// DescribeKey of one key: `None` if it vanished since ListKeys or lives
    /// in another store.
    async fn store_key(
        &self,
        key_id: String,
        store_id: &str,
    ) -> Result<Option<StoreKey>, KmsError> {
        const OP: &str = "DescribeKey";
        self.admit(OP).await;
        let sent = self.client.describe_key().key_id(&key_id).send().await;
        let out = match self.settle(OP, sent) {
            Ok(out) => out,
            Err(e) if e.code() == Some("NotFoundException") => return Ok(None),
            Err(e) => return Err(e),
        };
        let Some(meta) = out.key_metadata() else {
            return Err(unexpected(format!(
                "DescribeKey of {key_id} has no KeyMetadata"
            )));
        };
        if meta.custom_key_store_id() != Some(store_id) {
            return Ok(None);
        }
        Ok(Some(StoreKey {
            key_id: meta.key_id().to_owned(),
            external_key_id: meta
                .xks_key_configuration()
                .and_then(|x| x.id())
                .unwrap_or_default()
                .to_owned(),
            key_state: meta
                .key_state()
                .map(|s| s.as_str().to_owned())
                .unwrap_or_default(),
        }))
    }
}

fn unexpected(message: String) -> KmsError {
    KmsError::Service {
        code: UNEXPECTED_RESPONSE.to_owned(),
        message,
    }
}

impl AwsKeyStores {
    /// Service errors keep KMS's code and message; a failure to assume the
    /// role is an AssumeRole error with STS's code; everything else that did
    /// not yield an error code (no connection, timeout, unreadable answer)
    /// is Transport. Only the error and its sources are rendered: the SDK
    /// never includes the request body there.
    fn classify<E>(&self, err: SdkError<E, HttpResponse>) -> KmsError
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
    {
        match &err {
            SdkError::ServiceError(ctx) => match ctx.err().code().filter(|c| !c.is_empty()) {
                Some(code) => KmsError::Service {
                    code: code.to_owned(),
                    message: ctx.err().message().unwrap_or_default().to_owned(),
                },
                None => KmsError::Transport(format!(
                    "KMS answered HTTP {} without an error code",
                    ctx.raw().status().as_u16()
                )),
            },
            SdkError::TimeoutError(_) => {
                KmsError::Transport("KMS did not answer in time".to_owned())
            }
            _ => self
                .role
                .as_deref()
                .and_then(|role| super::identity::assume_role_failure(role, &err))
                .unwrap_or_else(|| KmsError::Transport(DisplayErrorContext(&err).to_string())),
        }
    }
}

/// `None` for absent or empty strings: KMS may report a cleared VPC service
/// either way, and the planner must see one value.
fn non_empty(s: Option<&str>) -> Option<String> {
    s.filter(|s| !s.is_empty()).map(str::to_owned)
}

/// One DescribeCustomKeyStores entry as the domain sees it. Values this code
/// does not know (a newer KMS) become an Internal error, never a panic or a
/// guess that could drive a wrong plan.
fn observe(entry: &CustomKeyStoresListEntry) -> Result<ObservedStore, KmsError> {
    let id = entry
        .custom_key_store_id()
        .ok_or_else(|| unexpected("a custom key store without CustomKeyStoreId".to_owned()))?;
    let state = entry.connection_state().map(|s| s.as_str()).unwrap_or("");
    let connection_state = ConnectionState::parse(state).ok_or_else(|| {
        unexpected(format!(
            "custom key store {id} has unknown ConnectionState {state:?}"
        ))
    })?;
    let proxy = entry
        .xks_proxy_configuration()
        .map(|x| {
            let connectivity = x.connectivity().map(|c| c.as_str()).unwrap_or("");
            let connectivity = Connectivity::from_kms(connectivity).ok_or_else(|| {
                unexpected(format!(
                    "custom key store {id} has unknown XksProxyConnectivity {connectivity:?}"
                ))
            })?;
            Ok(ProxyConfig {
                connectivity,
                uri_endpoint: x.uri_endpoint().unwrap_or_default().to_owned(),
                uri_path: x.uri_path().unwrap_or_default().to_owned(),
                vpc_endpoint_service_name: non_empty(x.vpc_endpoint_service_name()),
                vpc_endpoint_service_owner: non_empty(x.vpc_endpoint_service_owner()),
                access_key_id: x.access_key_id().unwrap_or_default().to_owned(),
            })
        })
        .transpose()?;
    // KMS's default type is AWS_CLOUDHSM; an entry without the field but with
    // an XKS configuration can only be an external key store.
    let store_type = match entry.custom_key_store_type() {
        Some(t) => t.as_str().to_owned(),
        None if proxy.is_some() => CustomKeyStoreType::ExternalKeyStore.as_str().to_owned(),
        None => CustomKeyStoreType::AwsCloudhsm.as_str().to_owned(),
    };
    Ok(ObservedStore {
        id: id.to_owned(),
        name: entry.custom_key_store_name().unwrap_or_default().to_owned(),
        store_type,
        connection_state,
        connection_error_code: entry.connection_error_code().map(|c| c.as_str().to_owned()),
        proxy,
    })
}

fn credential(
    c: &crate::model::ProxyCredential,
) -> Result<XksProxyAuthenticationCredentialType, KmsError> {
    XksProxyAuthenticationCredentialType::builder()
        .access_key_id(&c.access_key_id)
        .raw_secret_access_key(c.expose_secret())
        // The builder only fails on a missing field, and its error names the
        // field, never a value.
        .build()
        .map_err(|e| unexpected(format!("cannot build the proxy credential: {e}")))
}

impl KeyStores for AwsKeyStores {
    async fn describe_by_id(&self, id: &str) -> Result<Option<ObservedStore>, KmsError> {
        self.describe_one(Some(id), None).await
    }

    async fn describe_by_name(&self, name: &str) -> Result<Option<ObservedStore>, KmsError> {
        self.describe_one(None, Some(name)).await
    }

    async fn describe_all(&self) -> Result<Vec<ObservedStore>, KmsError> {
        const OP: &str = "DescribeCustomKeyStores";
        let mut stores = Vec::new();
        let mut marker: Option<String> = None;
        loop {
            self.admit(OP).await;
            let sent = self
                .client
                .describe_custom_key_stores()
                .limit(PAGE_LIMIT)
                .set_marker(marker.clone())
                .send()
                .await;
            let out = self.settle(OP, sent)?;
            for entry in out.custom_key_stores() {
                stores.push(observe(entry)?);
            }
            if !out.truncated() {
                return Ok(stores);
            }
            // A truncated page must move the marker on; otherwise the list
            // would be silently incomplete or the loop endless.
            match out.next_marker() {
                Some(next) if marker.as_deref() != Some(next) => marker = Some(next.to_owned()),
                _ => {
                    return Err(unexpected(
                        "DescribeCustomKeyStores is truncated without a new NextMarker".to_owned(),
                    ));
                }
            }
        }
    }

    async fn create(&self, req: &CreateStore) -> Result<String, KmsError> {
        const OP: &str = "CreateCustomKeyStore";
        let credential = credential(&req.credential)?;
        self.admit(OP).await;
        let sent = self
            .client
            .create_custom_key_store()
            .custom_key_store_name(&req.name)
            .custom_key_store_type(CustomKeyStoreType::ExternalKeyStore)
            .xks_proxy_connectivity(XksProxyConnectivityType::from(
                req.proxy.connectivity.as_kms(),
            ))
            .xks_proxy_uri_endpoint(&req.proxy.uri_endpoint)
            .xks_proxy_uri_path(&req.proxy.uri_path)
            .set_xks_proxy_vpc_endpoint_service_name(req.proxy.vpc_endpoint_service_name.clone())
            .set_xks_proxy_vpc_endpoint_service_owner(req.proxy.vpc_endpoint_service_owner.clone())
            .xks_proxy_authentication_credential(credential)
            .send()
            .await;
        let out = self.settle(OP, sent)?;
        out.custom_key_store_id().map(str::to_owned).ok_or_else(|| {
            unexpected("CreateCustomKeyStore returned no CustomKeyStoreId".to_owned())
        })
    }

    async fn update(&self, req: &UpdateStore) -> Result<(), KmsError> {
        const OP: &str = "UpdateCustomKeyStore";
        let credential = req.credential.as_ref().map(credential).transpose()?;
        self.admit(OP).await;
        let sent = self
            .client
            .update_custom_key_store()
            .custom_key_store_id(&req.id)
            .set_new_custom_key_store_name(req.new_name.clone())
            .set_xks_proxy_authentication_credential(credential)
            .set_xks_proxy_uri_path(req.uri_path.clone())
            .set_xks_proxy_uri_endpoint(req.uri_endpoint.clone())
            .set_xks_proxy_connectivity(
                req.connectivity
                    .map(|c| XksProxyConnectivityType::from(c.as_kms())),
            )
            // Some("") goes out as "", which is how KMS is told to clear it.
            .set_xks_proxy_vpc_endpoint_service_name(req.vpc_endpoint_service_name.clone())
            .set_xks_proxy_vpc_endpoint_service_owner(req.vpc_endpoint_service_owner.clone())
            .send()
            .await;
        self.settle(OP, sent).map(|_| ())
    }

    async fn connect(&self, id: &str) -> Result<(), KmsError> {
        const OP: &str = "ConnectCustomKeyStore";
        self.admit(OP).await;
        let sent = self
            .client
            .connect_custom_key_store()
            .custom_key_store_id(id)
            .send()
            .await;
        self.settle(OP, sent).map(|_| ())
    }

    async fn disconnect(&self, id: &str) -> Result<(), KmsError> {
        const OP: &str = "DisconnectCustomKeyStore";
        self.admit(OP).await;
        let sent = self
            .client
            .disconnect_custom_key_store()
            .custom_key_store_id(id)
            .send()
            .await;
        self.settle(OP, sent).map(|_| ())
    }

    async fn delete(&self, id: &str) -> Result<(), KmsError> {
        const OP: &str = "DeleteCustomKeyStore";
        self.admit(OP).await;
        let sent = self
            .client
            .delete_custom_key_store()
            .custom_key_store_id(id)
            .send()
            .await;
        self.settle(OP, sent).map(|_| ())
    }

    async fn list_store_keys(&self, id: &str) -> Result<Vec<StoreKey>, KmsError> {
        const OP: &str = "ListKeys";
        // ListKeys does not say where a key lives, so every key of the
        // account is described; collect the ids first, then describe a few at
        // a time.
        let mut key_ids = Vec::new();
        let mut marker: Option<String> = None;
        loop {
            self.admit(OP).await;
            let sent = self
                .client
                .list_keys()
                .limit(PAGE_LIMIT)
                .set_marker(marker.clone())
                .send()
                .await;
            let out = self.settle(OP, sent)?;
            key_ids.extend(
                out.keys()
                    .iter()
                    .filter_map(|k| k.key_id())
                    .map(str::to_owned),
            );
            if !out.truncated() {
                break;
            }
            match out.next_marker() {
                Some(next) if marker.as_deref() != Some(next) => marker = Some(next.to_owned()),
                _ => {
                    return Err(unexpected(
                        "ListKeys is truncated without a new NextMarker".to_owned(),
                    ));
                }
            }
        }
        futures::stream::iter(key_ids)
            .map(|key_id| self.store_key(key_id, id))
            .buffered(DESCRIBE_KEY_CONCURRENCY)
            .try_filter_map(|k| async move { Ok(k) })
            .try_collect()
            .await
    }
}
