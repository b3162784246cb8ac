//! The in-cluster controller (`xks-operator run`): a kube-runtime
//! `Controller` on ExternalKeyStores that also watches the credential
//! Secrets, drives the engine, writes status by server-side apply, records
//! Events, serves health/readiness/metrics and, when asked, runs only while
//! it holds a leader-election Lease.
//!
//! `reconcile` is generic over a [`Backend`] (where KMS and the proxy probe
//! come from) so tests run it against fakes and a mocked API server.

pub mod cache;
pub mod describe_cache;
pub mod health;
pub mod http;
pub mod leader;
pub mod metrics;
pub mod reconcile;
pub mod secrets;
pub mod status;

pub use reconcile::{Error, error_policy, reconcile};

use crate::api::{ExternalKeyStore, MANAGER};
use crate::engine::{Engine, EngineOptions};
use crate::kms::KeyStores;
use crate::kms::aws::AwsKeyStores;
use crate::kms::identity::AssumedRole;
use crate::xks::ProxyProbe;
use crate::xks::probe::{HttpProxyProbe, ProbeOptions};
use anyhow::{Context as _, bail};
use cache::ResourceCache;
use describe_cache::DescribeCache;
use futures::{FutureExt, StreamExt};
use k8s_openapi::api::core::v1::Secret;
use kube::api::ListParams;
use kube::runtime::controller::{self, Controller};
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::watcher;
use kube::{Api, Client};
use metrics::Metrics;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Resources reconciled at the same time by default: waits are requeues,
/// not held workers, so a few suffice to keep KMS's quota busy.
pub const DEFAULT_CONCURRENCY: u16 = 4;

/// Flags of `xks-operator run` (the Helm chart passes these).
#[derive(clap::Args, Clone, Debug)]
pub struct RunArgs {
    /// Address of the HTTP server for /health, /ready and /metrics.
    #[arg(long, default_value = "0.0.0.0:8080")]
    pub listen_addr: SocketAddr,
    /// Run the controller only while holding a Lease in POD_NAMESPACE, so
    /// that several replicas never act on the same store at once.
    #[arg(long)]
    pub leader_election: bool,
    /// Name of the leader-election Lease.
    #[arg(long, default_value = "xks-operator-leader")]
    pub lease_name: String,
    /// Watch ExternalKeyStores (and their Secrets) in this namespace only;
    /// repeat it, or separate names with commas, for several. Default: all
    /// namespaces.
    #[arg(long, value_delimiter = ',')]
    pub watch_namespace: Vec<String>,
    /// Default interval of the drift check against KMS (e.g. 30s, 5m, 1h);
    /// `spec.driftInterval` overrides it per resource.
    #[arg(long, default_value = "5m", value_parser = parse_duration)]
    pub drift_interval: Duration,
    /// Calls per second per KMS custom-key-store operation (KMS allows 5,
    /// shared with every other caller in the account and Region; after a
    /// throttle the client also slows down by itself).
    #[arg(long, default_value_t = crate::kms::aws::DEFAULT_RATE_PER_SECOND)]
    pub kms_rate_limit: f64,
    /// Resources reconciled at the same time.
    #[arg(long, default_value_t = DEFAULT_CONCURRENCY)]
    pub concurrency: u16,
    /// How often the operator calls the GetHealthStatus of the proxy of each
    /// store with `spec.proxyChecks: Direct` (status.proxyHealth, condition
    /// ProxyHealthy); jittered by ±10%. 0s disables the watch.
    #[arg(long, default_value = "1m", value_parser = parse_duration)]
    pub proxy_health_interval: Duration,
    /// How long one DescribeCustomKeyStores listing serves the drift checks
    /// of every resource of an account and Region (0s disables the cache).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub describe_cache_ttl: Duration,
    /// Reach a proxy host at another base URL for the operator's own proxy
    /// checks: host=URL (repeatable). For test environments such as the
    /// emulator; KMS resolves proxy hosts itself.
    #[arg(long = "proxy-resolve", value_parser = crate::cli::parse_resolve)]
    pub proxy_resolve: Vec<(String, String)>,
    /// Allow resources of NAMESPACE to name ROLE_ARN in spec.roleArn:
    /// NAMESPACE=ROLE_ARN (repeatable). A role not allowed for the
    /// resource's namespace is refused before any AWS call. Default: none.
    #[arg(long = "allow-role", value_parser = parse_allowed_role)]
    pub allow_role: Vec<(String, String)>,
}

fn parse_allowed_role(s: &str) -> Result<(String, String), String> {
    let (namespace, arn) = s
        .split_once('=')
        .ok_or_else(|| "expected NAMESPACE=ROLE_ARN".to_string())?;
    if namespace.is_empty() {
        return Err("expected NAMESPACE=ROLE_ARN: the namespace is empty".into());
    }
    if crate::kms::identity::account_of_role(arn).is_none() {
        return Err(format!(
            "{arn:?} is not an IAM role ARN (arn:aws:iam::<12-digit account>:role/<name>)"
        ));
    }
    Ok((namespace.to_string(), arn.to_string()))
}

/// Which namespace may use which role: the cluster admin's `--allow-role`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RoleAllowList(BTreeMap<String, BTreeSet<String>>);

impl RoleAllowList {
    pub fn new(entries: impl IntoIterator<Item = (String, String)>) -> Self {
        let mut map: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for (namespace, arn) in entries {
            map.entry(namespace).or_default().insert(arn);
        }
        Self(map)
    }

    pub fn allows(&self, namespace: &str, role_arn: &str) -> bool {
        self.0
            .get(namespace)
            .is_some_and(|arns| arns.contains(role_arn))
    }
}

/// Parses `30s`, `5m`, `1h`, or a sum of them such as `1h30m`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if text.is_empty() {
        return Err("empty duration: expected e.g. 30s, 5m or 1h".into());
    }
    let mut total = Duration::ZERO;
    let mut digits = String::new();
    for c in text.chars() {
        if c.is_ascii_digit() {
            digits.push(c);
            continue;
        }
        let unit = match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            _ => return Err(format!("invalid duration {text:?}: units are s, m and h")),
        };
        let n: u64 = digits
            .parse()
            .map_err(|_| format!("invalid duration {text:?}: a number must precede each unit"))?;
        total += Duration::from_secs(n.saturating_mul(unit));
        digits.clear();
    }
    if !digits.is_empty() {
        return Err(format!(
            "invalid duration {text:?}: the last number has no unit (s, m or h)"
        ));
    }
    Ok(total)
}

/// Where the engine's ports come from: AWS and HTTPS in production,
/// fakes in tests.
pub trait Backend: Send + Sync + 'static {
    type Kms: KeyStores + 'static;
    type Probe: ProxyProbe + 'static;
    /// The KMS client of `region`, as the operator itself or as `role`;
    /// called once per role and Region (the Context keeps one engine each).
    fn key_stores(
        &self,
        region: &str,
        role: Option<&AssumedRole>,
    ) -> impl Future<Output = Self::Kms> + Send;
    fn probe(&self) -> Self::Probe;
    /// The Region of a resource without `spec.region`.
    fn default_region(&self) -> Option<String>;
    /// The operator's own AWS account, when known.
    fn own_account(&self) -> Option<String> {
        None
    }
}

/// A KMS client with the account (when known) and Region it acts in.
type BuiltClient = (Option<String>, String, AwsKeyStores);

/// aws-sdk-kms with the standard AWS configuration chain (IRSA, Pod
/// Identity, env), or a role assumed with it, rate limited per operation,
/// and the HTTPS proxy probe.
pub struct AwsBackend {
    rate_limit: f64,
    /// The operator's own identity.
    base: aws_config::SdkConfig,
    own_account: Option<String>,
    probe: HttpProxyProbe,
    /// Every client built, with its account and Region, for the metrics.
    clients: Arc<Mutex<Vec<BuiltClient>>>,
}

impl AwsBackend {
    pub async fn new(rate_limit: f64, proxy_resolve: &[(String, String)]) -> anyhow::Result<Self> {
        let base = crate::kms::aws::own_config(None).await;
        match base.region() {
            Some(region) => tracing::info!(%region, "default AWS Region"),
            None => tracing::warn!("no default AWS Region: resources must set spec.region"),
        }
        let own_account = crate::kms::identity::own_account(&base).await;
        if let Some(account) = &own_account {
            tracing::info!(%account, "the operator's own AWS account");
        }
        let probe = HttpProxyProbe::new(ProbeOptions {
            resolve: proxy_resolve.iter().cloned().collect(),
            ..ProbeOptions::default()
        })
        .context("building the proxy HTTP client")?;
        Ok(Self {
            rate_limit,
            base,
            own_account,
            probe,
            clients: Arc::default(),
        })
    }

    /// KMS call counters per account and Region, for `/metrics`.
    pub fn stats_source(&self) -> metrics::KmsStatsSource {
        let clients = self.clients.clone();
        Box::new(move || {
            let clients = clients.lock().unwrap_or_else(|p| p.into_inner());
            clients
                .iter()
                .map(|(account, region, kms)| {
                    (
                        account.clone().unwrap_or_default(),
                        region.clone(),
                        kms.stats(),
                    )
                })
                .collect()
        })
    }
}

impl Backend for AwsBackend {
    type Kms = AwsKeyStores;
    type Probe = HttpProxyProbe;

    async fn key_stores(&self, region: &str, role: Option<&AssumedRole>) -> AwsKeyStores {
        let kms = AwsKeyStores::new(&self.base, region, role)
            .await
            .with_rate_limit(self.rate_limit);
        let account = role.map_or_else(|| self.own_account.clone(), AssumedRole::account);
        self.clients
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((account, region.to_string(), kms.clone()));
        kms
    }

    fn probe(&self) -> HttpProxyProbe {
        self.probe.clone()
    }

    fn default_region(&self) -> Option<String> {
        self.base.region().map(|r| r.to_string())
    }

    fn own_account(&self) -> Option<String> {
        self.own_account.clone()
    }
}

/// Tunables of the reconcile loop.
#[derive(Clone, Debug)]
pub struct Settings {
    pub drift_interval: Duration,
    pub describe_cache_ttl: Duration,
    /// The engine's, whose retry policy also paces retries after Kubernetes
    /// API errors (per object: conflicts, timeouts, 5xx).
    pub engine: EngineOptions,
    /// Which namespace may use which `spec.roleArn`.
    pub allowed_roles: RoleAllowList,
    /// How often each proxy's health is checked (zero: never); see `health`.
    pub proxy_health_interval: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            drift_interval: Duration::from_secs(300),
            proxy_health_interval: health::DEFAULT_INTERVAL,
            describe_cache_ttl: Duration::from_secs(10),
            engine: EngineOptions::default(),
            allowed_roles: RoleAllowList::default(),
        }
    }
}

/// Kubernetes API errors in a row, per object, for the retry policy.
#[derive(Default)]
pub struct ApiFailures(Mutex<HashMap<String, u32>>);

impl ApiFailures {
    /// One more failure of `key`; returns how many in a row.
    pub fn record(&self, key: &str) -> u32 {
        let mut failures = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let n = failures.entry(key.to_string()).or_insert(0);
        *n = n.saturating_add(1);
        *n
    }

    pub fn clear(&self, key: &str) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).remove(key);
    }
}

/// The engine of one Region, behind the shared describe cache.
pub type RegionEngine<B> = Engine<DescribeCache<<B as Backend>::Kms>, <B as Backend>::Probe>;

/// One engine per role (or the operator's own identity) and Region.
type EngineKey = (Option<AssumedRole>, String);

/// What every reconcile shares.
pub struct Context<B: Backend> {
    pub client: Client,
    pub backend: B,
    /// One per process, so repeated Events are counted as a series.
    pub recorder: Recorder,
    pub metrics: Arc<Metrics>,
    pub settings: Settings,
    /// The status last written per resource (newer than the watch cache).
    pub statuses: status::StatusMemory,
    /// Every watched resource, for the claim rule.
    pub cache: ResourceCache,
    /// Kubernetes API errors in a row per resource.
    pub api_failures: ApiFailures,
    engines: tokio::sync::Mutex<HashMap<EngineKey, Arc<RegionEngine<B>>>>,
}

impl<B: Backend> Context<B> {
    pub fn new(client: Client, backend: B, metrics: Arc<Metrics>, settings: Settings) -> Self {
        let reporter = Reporter {
            controller: MANAGER.to_string(),
            instance: std::env::var("POD_NAME").ok().filter(|n| !n.is_empty()),
        };
        Self {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            backend,
            metrics,
            settings,
            statuses: status::StatusMemory::default(),
            cache: ResourceCache::default(),
            api_failures: ApiFailures::default(),
            engines: tokio::sync::Mutex::default(),
        }
    }

    /// The engine of `region` acting as `role` (the operator itself when
    /// `None`), built on first use.
    pub async fn engine(&self, region: &str, role: Option<&AssumedRole>) -> Arc<RegionEngine<B>> {
        let key = (role.cloned(), region.to_string());
        let mut engines = self.engines.lock().await;
        if let Some(engine) = engines.get(&key) {
            return engine.clone();
        }
        let kms = DescribeCache::new(
            self.backend.key_stores(region, role).await,
            self.settings.describe_cache_ttl,
        );
        let engine = Arc::new(
            Engine::new(
                kms,
                self.backend.probe(),
                region,
                self.settings.engine.clone(),
            )
            .in_account(self.account_of(role.map(|r| r.arn.as_str()))),
        );
        engines.insert(key, engine.clone());
        engine
    }

    /// The Region of a resource's store: its own, else the operator's.
    pub fn region_of(&self, obj: &ExternalKeyStore) -> Option<String> {
        obj.spec
            .region
            .clone()
            .or_else(|| self.backend.default_region())
    }

    /// The account a store lives in: its role's, or the operator's own.
    pub fn account_of(&self, role_arn: Option<&str>) -> Option<String> {
        match role_arn {
            Some(arn) => crate::kms::identity::account_of_role(arn),
            None => self.backend.own_account(),
        }
    }

    /// Export the per-store metrics of every watched resource, computed at
    /// each scrape from the watch cache and the status memory (exported
    /// only while `Metrics::set_leader` says this replica leads).
    pub fn export_store_metrics(&self) {
        let cache = self.cache.clone();
        let statuses = self.statuses.clone();
        let default_region = self.backend.default_region();
        let own_account = self.backend.own_account();
        self.metrics.set_store_source(Box::new(move || {
            store_snapshots(
                &cache.resources(),
                &statuses,
                default_region.as_deref(),
                own_account.as_deref(),
            )
        }));
    }
}

/// The per-store metrics' view of `resources`, each with the newest status
/// this process knows.
pub fn store_snapshots(
    resources: &[Arc<ExternalKeyStore>],
    statuses: &status::StatusMemory,
    default_region: Option<&str>,
    own_account: Option<&str>,
) -> Vec<metrics::StoreSnapshot> {
    use crate::api::DesiredConnectionState;
    resources
        .iter()
        .map(|r| {
            let status = r
                .metadata
                .uid
                .as_deref()
                .and_then(|uid| statuses.get(uid))
                .or_else(|| r.status.clone())
                .unwrap_or_default();
            let account = match r.spec.role_arn.as_deref() {
                Some(arn) => crate::kms::identity::account_of_role(arn),
                None => own_account.map(str::to_string),
            };
            let yielding =
                crate::engine::conditions::get(&status, crate::engine::conditions::STALLED)
                    .is_some_and(|c| c.is_true() && c.reason == crate::claims::REASON);
            metrics::StoreSnapshot {
                namespace: r.metadata.namespace.clone().unwrap_or_default(),
                name: r.metadata.name.clone().unwrap_or_default(),
                account: account.unwrap_or_default(),
                region: r
                    .spec
                    .region
                    .clone()
                    .or_else(|| default_region.map(str::to_string))
                    .unwrap_or_default(),
                desired_connected: r.spec.connection_state == DesiredConnectionState::Connected
                    && r.metadata.deletion_timestamp.is_none()
                    && !yielding,
                status,
            }
        })
        .collect()
}

/// `xks-operator run`.
pub async fn run(args: RunArgs) -> anyhow::Result<()> {
    // Both ring (kube) and aws-lc-rs (the AWS SDK) are linked in, so rustls
    // cannot pick a process default by itself and kube's TLS setup would
    // panic. The SDK's client names its provider explicitly; this only
    // decides for kube. An error means one is installed already: fine.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = Client::try_default()
        .await
        .context("connecting to the Kubernetes API (in-cluster config or KUBECONFIG)")?;
    let metrics = Arc::new(Metrics::new());
    let readiness = http::Readiness::default();
    metrics.set_ready_source({
        let readiness = readiness.clone();
        Box::new(move || readiness.is_ready())
    });
    // A standby is 0 until it takes the Lease.
    metrics.set_leader(!args.leader_election);
    let (stop_http, http_stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(http::serve(
        args.listen_addr,
        readiness.clone(),
        metrics.clone(),
        async move {
            let _ = http_stopped.await;
        },
    ));

    let mut leadership = None;
    if args.leader_election {
        let namespace = pod_namespace()?;
        readiness.set_standby(true);
        tokio::select! {
            acquired = leader::acquire(client.clone(), leader::LeaseConfig::new(&args.lease_name, namespace)) => {
                leadership = Some(acquired?);
                metrics.set_leader(true);
            }
            () = shutdown_signal() => {
                tracing::info!("stopping before becoming the leader");
                let _ = stop_http.send(());
                return Ok(());
            }
        }
        readiness.set_standby(false);
    }

    // One watch per namespace (or one for the cluster): a namespaced
    // install has no right to list anything cluster-wide.
    let scopes: Vec<Option<&str>> = if args.watch_namespace.is_empty() {
        vec![None]
    } else {
        args.watch_namespace
            .iter()
            .map(|ns| Some(ns.as_str()))
            .collect()
    };
    let stores_api = |ns: Option<&str>| -> Api<ExternalKeyStore> {
        ns.map_or_else(
            || Api::all(client.clone()),
            |ns| Api::namespaced(client.clone(), ns),
        )
    };
    let any_resource;
    tokio::select! {
        any = wait_for_crd(scopes.iter().map(|ns| stores_api(*ns)).collect()) => any_resource = any,
        () = shutdown_signal() => {
            tracing::info!("stopping before the ExternalKeyStore CRD appeared");
            let _ = stop_http.send(());
            if let Some(l) = leadership {
                l.release().await;
            }
            return Ok(());
        }
    }

    let backend = AwsBackend::new(args.kms_rate_limit, &args.proxy_resolve).await?;
    metrics.set_kms_source(backend.stats_source());
    let settings = Settings {
        drift_interval: args.drift_interval,
        describe_cache_ttl: args.describe_cache_ttl,
        allowed_roles: RoleAllowList::new(args.allow_role.clone()),
        proxy_health_interval: args.proxy_health_interval,
        ..Settings::default()
    };
    let ctx = Arc::new(Context::new(
        client.clone(),
        backend,
        metrics.clone(),
        settings,
    ));
    ctx.export_store_metrics();
    // Readiness is not taken from `Store::wait_until_ready()`: that future
    // wakes only its latest poller, and the controller's own runner waits on
    // it too, so a second waiter could miss (or steal) the wake-up. The
    // runner reconciles only once the store has synced, so its first result
    // proves the sync; with no resource at all there is nothing to sync.
    if !any_resource {
        tracing::info!("no ExternalKeyStore yet: ready");
        readiness.set_synced(true);
    }
    let lost = leadership.as_mut().map(|l| l.lost().shared());
    let runs = scopes.iter().map(|ns| {
        let secrets_api: Api<Secret> = ns.map_or_else(
            || Api::all(client.clone()),
            |ns| Api::namespaced(client.clone(), ns),
        );
        // SIGTERM lets running reconciles finish: a step between its KMS
        // call and its status write is never abandoned.
        let mut controller =
            controller_for(&ctx.cache, stores_api(*ns), secrets_api, args.concurrency)
                .shutdown_on_signal();
        if let Some(lost) = &lost {
            controller = controller.graceful_shutdown_on(lost.clone());
        }
        controller.run(reconcile, error_policy, ctx.clone()).boxed()
    });
    tracing::info!(
        namespaces = %if args.watch_namespace.is_empty() { "<all>".to_string() } else { args.watch_namespace.join(",") },
        concurrency = args.concurrency,
        "controller started"
    );
    futures::stream::select_all(runs)
        .for_each(|result| {
            if matches!(result, Ok(_) | Err(controller::Error::ReconcilerFailed(..)))
                && !readiness.is_ready()
            {
                tracing::info!("ExternalKeyStore watcher synced: ready");
                readiness.set_synced(true);
            }
            async move {
                match result {
                    Ok((obj, _)) => tracing::trace!(name = %obj.name, "reconciled"),
                    // error_policy already logged it.
                    Err(controller::Error::ReconcilerFailed(..)) => {}
                    Err(e) => tracing::warn!(error = %e, "controller"),
                }
            }
        })
        .await;
    tracing::info!("controller stopped");

    readiness.set_synced(false);
    metrics.set_leader(false);
    let lost = match leadership {
        Some(l) => l.release().await,
        None => false,
    };
    let _ = stop_http.send(());
    match server.await {
        Ok(Err(e)) => tracing::warn!(error = %e, "the HTTP server failed"),
        Err(e) => tracing::warn!(error = %e, "the HTTP server task failed"),
        Ok(Ok(())) => {}
    }
    if lost {
        bail!(
            "lost the leader-election Lease; exiting so that Kubernetes restarts this replica as a follower"
        );
    }
    Ok(())
}

/// The Controller on `stores`, also woken by changes of the Secrets in
/// `secrets` that resources reference (a rotated credential is pushed to
/// KMS without anyone touching the resource). Its watch joins `cache`.
pub fn controller_for(
    cache: &ResourceCache,
    stores: Api<ExternalKeyStore>,
    secrets: Api<Secret>,
    concurrency: u16,
) -> Controller<ExternalKeyStore> {
    let (reader, changes) = cache.watch(stores);
    let store = reader.clone();
    Controller::for_stream(changes, reader)
        .watches(secrets, watcher::Config::default(), move |secret| {
            secrets::stores_using(&store, &secret)
        })
        .with_config(controller::Config::default().concurrency(concurrency))
}

fn pod_namespace() -> anyhow::Result<String> {
    if let Ok(ns) = std::env::var("POD_NAMESPACE")
        && !ns.is_empty()
    {
        return Ok(ns);
    }
    std::fs::read_to_string("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
        .map(|ns| ns.trim().to_string())
        .context("--leader-election needs POD_NAMESPACE (or the service account namespace file)")
}

/// Until the ExternalKeyStore API answers in every watched scope: while
/// the CRD (or RBAC) is missing, say so every few seconds instead of
/// crash-looping. Returns whether any resource exists.
async fn wait_for_crd(apis: Vec<Api<ExternalKeyStore>>) -> bool {
    let mut any = false;
    for api in apis {
        let mut delay = Duration::from_secs(2);
        loop {
            match api.list_metadata(&ListParams::default().limit(1)).await {
                Ok(list) => {
                    any |= !list.items.is_empty();
                    break;
                }
                Err(e) => {
                    tracing::warn!(
                        error = %e,
                        retry_in = ?delay,
                        "cannot list ExternalKeyStores: is the CRD installed (chart xks-operator-crds) and does RBAC allow it? Retrying"
                    );
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(30));
                }
            }
        }
    }
    any
}

/// SIGTERM or Ctrl+C, for the phases before the controller runs.
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_like_the_crd_pattern() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
        assert!(parse_duration("5").is_err());
        assert!(parse_duration("m").is_err());
        assert!(parse_duration("5d").is_err());
        assert!(parse_duration("").is_err());
    }

    fn resource(extra: serde_json::Value) -> Arc<ExternalKeyStore> {
        let mut obj = serde_json::json!({
            "apiVersion": "xks-operator.io/v1alpha1",
            "kind": "ExternalKeyStore",
            "metadata": {"name": "payments", "namespace": "team-a", "uid": "u1"},
            "spec": {"proxy": {
                "uriEndpoint": "https://xks.example.com",
                "uriPath": "/kms/xks/v1",
                "credentialsSecretRef": {"name": "cred"}
            }}
        });
        if let (Some(o), serde_json::Value::Object(e)) = (obj.as_object_mut(), extra) {
            for (k, v) in e {
                if let (Some(target), Some(fields)) =
                    (o.get_mut(&k).and_then(|t| t.as_object_mut()), v.as_object())
                {
                    target.extend(fields.clone());
                } else {
                    o.insert(k, v);
                }
            }
        }
        Arc::new(serde_json::from_value(obj).expect("valid resource"))
    }

    #[test]
    fn store_snapshots_label_each_resource_and_say_what_it_wants() {
        let memory = status::StatusMemory::default();
        let plain = resource(serde_json::json!({}));
        let snapshot = |r: &Arc<ExternalKeyStore>| {
            store_snapshots(
                std::slice::from_ref(r),
                &memory,
                Some("eu-west-1"),
                Some("111122223333"),
            )
            .pop()
            .expect("one")
        };
        let s = snapshot(&plain);
        assert_eq!(
            (
                s.namespace.as_str(),
                s.name.as_str(),
                s.account.as_str(),
                s.region.as_str()
            ),
            ("team-a", "payments", "111122223333", "eu-west-1")
        );
        assert!(s.desired_connected);

        // A deletion disconnects on purpose.
        let deleting = resource(
            serde_json::json!({"metadata": {"deletionTimestamp": "2026-01-01T00:00:00Z"}}),
        );
        assert!(!snapshot(&deleting).desired_connected);
        let disconnected =
            resource(serde_json::json!({"spec": {"connectionState": "Disconnected"}}));
        assert!(!snapshot(&disconnected).desired_connected);

        // The role's account and the resource's Region win.
        let other = resource(serde_json::json!({"spec": {
            "roleArn": "arn:aws:iam::222233334444:role/xks", "region": "us-east-1"}}));
        let s = snapshot(&other);
        assert_eq!(
            (s.account.as_str(), s.region.as_str()),
            ("222233334444", "us-east-1")
        );

        // The status memory is newer than the cached object; a resource
        // yielding its store to another one wants nothing of it.
        let mut yielding = crate::api::ExternalKeyStoreStatus::default();
        crate::engine::conditions::set(
            &mut yielding,
            crate::engine::conditions::Summary::Stalled,
            crate::claims::REASON,
            "held by team-b/payments",
            Some(1),
            "t",
        );
        memory.remember("u1", &yielding);
        let s = snapshot(&plain);
        assert!(!s.desired_connected);
        assert_eq!(s.status, yielding);
        let unknown = store_snapshots(std::slice::from_ref(&plain), &memory, None, None)
            .pop()
            .expect("one");
        assert_eq!(
            (unknown.account.as_str(), unknown.region.as_str()),
            ("", "")
        );
    }
}
