//! `xks-operator bench --soak 10m`: a fleet of stores under random changes,
//! random KMS and proxy faults and random crashes for a while; then the
//! faults stop and every store must converge to its spec. Checked
//! throughout and at the end:
//!
//! - never a second store: KMS never holds more stores than resources;
//! - nothing stranded: every store ends in its declared state (CONNECTED
//!   unless declared Disconnected), at its declared location and name;
//! - the credential is not lost: with the proxies accepting only the
//!   current secret, KMS can still connect every store;
//! - no persisted status ever contains a secret.
//!
//! A crash drops the engine in the middle of a pass (any call or write) and
//! resumes from the last status written, as a restarted operator resumes
//! from what the API server holds. A failed status write ends the pass the
//! same way.

use super::emulator_process::EmulatorProcess;
use super::report::Table;
use super::{KMS_QUOTA_PER_SECOND, fleet_config, probe, quota_faults};
use crate::api::{ExternalKeyStore, ExternalKeyStoreStatus, OperationPhase};
use crate::controller::describe_cache::DescribeCache;
use crate::engine::{Engine, EngineOptions, Outcome, Request, SinkError, StatusSink};
use crate::kms::KeyStores;
use crate::kms::aws::AwsKeyStores;
use crate::model::{ConnectionState, ProxyCredential};
use crate::xks::probe::HttpProxyProbe;
use anyhow::{Context, bail};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use xks_emulator::config::DEMO_URI_PATH;
use xks_emulator::faults::{ALL_OPERATIONS, OperationFaults};
use xks_emulator::xks_proxy::{
    ExternalKeyConfig, KeyManagerConfig, KeyManagerHealth, ProxyConfig as EmulatedProxy,
    ProxyCredentialConfig,
};

/// Emulated DISCONNECTING and CONNECTING time.
const TRANSITION: Duration = Duration::from_millis(300);
/// How long the fleet may take to converge once the faults stop.
const CONVERGE_WITHIN: Duration = Duration::from_secs(180);
const KEY_MANAGER: &str = "ekm-1";

// Probabilities of the chaos, per pass unless said otherwise.

/// The pass is dropped when a 0-300 ms timer fires, wherever it is then:
/// most often inside a KMS or proxy call.
const P_CRASH_TIMER: f64 = 0.15;
/// The process dies right after one of the pass's status writes reached
/// the API server: just before the side effect that write announced.
const P_CRASH_AFTER_WRITE: f64 = 0.15;
/// One status write of the pass fails (the API server refused it).
const P_FAILED_WRITE: f64 = 0.05;
/// Writes of a pass that a crash or failure may pick.
const WRITES_PICKED: usize = 6;
/// A new spec change once the last one settled (or stalled).
const P_CHANGE_WHEN_SETTLED: f64 = 0.5;
/// A new spec change while an operation is still running.
const P_CHANGE_MID_OPERATION: f64 = 0.05;
/// A rotated secret reaches the proxies only after the operator tried it.
const P_LATE_PROXY_CREDENTIAL: f64 = 0.35;

#[derive(Serialize, Default)]
pub struct SoakReport {
    pub seed: u64,
    pub duration_s: f64,
    pub stores: usize,
    pub passes: u64,
    pub crashes: u64,
    pub failed_status_writes: u64,
    pub changes: BTreeMap<String, u64>,
    pub fault_episodes: BTreeMap<String, u64>,
    /// Operations by how they ended (Succeeded, Failed, RolledBack).
    pub operations: BTreeMap<String, u64>,
    /// Operations that ended Failed or RolledBack, by step and condition
    /// reason (e.g. `Connect: XksProxyNotReachable`).
    pub failures: BTreeMap<String, u64>,
    pub kms_calls: BTreeMap<String, u64>,
    pub kms_throttled: u64,
    pub kms_errors_injected: u64,
    pub max_stores_seen: usize,
    /// Longest time one store declared Connected was seen not CONNECTED
    /// (endpoint rotations and faults included).
    pub longest_unavailable_s: f64,
    /// From the end of the faults to the last store in sync.
    pub converged_in_s: f64,
    pub credential_checks_passed: usize,
    /// Stores that got their KMS key (key continuity then checked).
    pub stores_with_keys: usize,
    /// Broken promises; the soak fails when there is any.
    pub violations: Vec<String>,
}

/// What the test driver declares for one store, and the secrets it used.
#[derive(Clone)]
struct Declared {
    resource: ExternalKeyStore,
    credential: ProxyCredential,
    /// Rotated secrets not yet on the proxies (they arrive late).
    pending_on_proxy: Option<(ProxyCredential, Instant)>,
}

/// One store of the fleet.
struct Member {
    index: usize,
    declared: Mutex<Declared>,
    /// The status as the API server would hold it: the last write.
    persisted: Mutex<ExternalKeyStoreStatus>,
    /// Every secret this store has used, to scan its status for.
    secrets: Mutex<Vec<String>>,
    unavailable_since: Mutex<Option<Instant>>,
    /// The last operation counted as ended (its start and trigger).
    counted: Mutex<Option<(String, String)>>,
    /// Its store holds a KMS key (made once it first connected).
    has_key: std::sync::atomic::AtomicBool,
}

#[derive(Default)]
struct Tally {
    passes: u64,
    crashes: u64,
    failed_writes: u64,
    changes: BTreeMap<String, u64>,
    episodes: BTreeMap<String, u64>,
    operations: BTreeMap<String, u64>,
    failures: BTreeMap<String, u64>,
    max_stores: usize,
    longest_unavailable: Duration,
    violations: Vec<String>,
}

struct Soak {
    emu: EmulatorProcess,
    engine: Engine<DescribeCache<AwsKeyStores>, HttpProxyProbe>,
    /// Unlimited and uncached: for the final checks, not the operator.
    direct: AwsKeyStores,
    members: Vec<Member>,
    tally: Mutex<Tally>,
}

/// A poisoned lock only means another task panicked mid-update; the soak
/// reads on, and its checks report what is wrong.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

fn host(index: usize, side: char) -> String {
    format!("soak-{index:02}-{side}.example.com")
}

fn external_key(index: usize) -> String {
    format!("soak-key-{index:02}")
}

/// Access key ids are `[A-Z2-7]{20,30}`: digits 0, 1, 8 and 9 are not
/// allowed, so numbers are spelled in letters.
fn letters(mut n: usize, width: usize) -> String {
    let mut out = vec![b'A'; width];
    for slot in out.iter_mut().rev() {
        *slot = b'A' + (n % 26) as u8;
        n /= 26;
    }
    String::from_utf8(out).unwrap_or_default()
}

/// The credential of `generation`: every other rotation changes only the
/// secret (invisible to Describe), the others the access key id too.
fn credential(index: usize, generation: usize) -> ProxyCredential {
    let id = format!(
        "SOAKXKS{}{}ID",
        letters(index, 3),
        letters(generation.div_ceil(2), 8)
    );
    let secret = format!("soakSecretForStore{index:02}Generation{generation:06}OfTheXksProxy0123");
    ProxyCredential::new(id, secret)
}

fn resource(index: usize) -> anyhow::Result<ExternalKeyStore> {
    let text = format!(
        "apiVersion: xks-operator.io/v1alpha1\nkind: ExternalKeyStore\nmetadata:\n  name: soak-{index:02}\n  namespace: soak\n  generation: 1\nspec:\n  proxy:\n    uriEndpoint: https://{}\n    uriPath: {DEMO_URI_PATH}\n    credentialsSecretRef: {{name: cred-{index:02}}}\n",
        host(index, 'a')
    );
    serde_yaml::from_str(&text).context("soak resource")
}

/// Both proxies of a store serve its key with the same material (a
/// replicated key manager), so rotations between them keep ciphertext.
fn proxies(index: usize, credentials: &[ProxyCredential]) -> Vec<EmulatedProxy> {
    ['a', 'b']
        .into_iter()
        .map(|side| {
            let mut proxy = EmulatedProxy::new(host(index, side), DEMO_URI_PATH);
            for c in credentials {
                proxy = proxy.with_credential(&c.access_key_id, c.expose_secret());
            }
            proxy.key_managers = vec![KeyManagerConfig::new(KEY_MANAGER)];
            let mut key = ExternalKeyConfig::new(&external_key(index));
            key.material = Some(BASE64.encode([index as u8; 32]));
            proxy.with_key(key)
        })
        .collect()
}

/// KMS's quota and no fault: the calm between episodes.
fn quota() -> OperationFaults {
    quota_faults(KMS_QUOTA_PER_SECOND)
}

/// Records every write as the API server would, scans it for secrets,
/// fails the write numbered `fail_at` (an API server error) and stops the
/// pass after persisting the write numbered `crash_after` (a crash).
struct PassSink<'a> {
    member: &'a Member,
    writes: usize,
    fail_at: Option<usize>,
    crash_after: Option<usize>,
    crashed: bool,
    leaked: Option<String>,
}

impl StatusSink for PassSink<'_> {
    async fn write(&mut self, status: &ExternalKeyStoreStatus) -> Result<(), SinkError> {
        let n = self.writes;
        self.writes += 1;
        if self.fail_at == Some(n) {
            return Err(SinkError("injected API server error".into()));
        }
        let text = serde_json::to_string(status).unwrap_or_default();
        let secrets = lock(&self.member.secrets);
        if secrets.iter().any(|s| text.contains(s.as_str())) {
            self.leaked = Some(format!(
                "store {}: a status write contains a proxy secret",
                self.member.index
            ));
        }
        *lock(&self.member.persisted) = status.clone();
        if self.crash_after == Some(n) {
            self.crashed = true;
            return Err(SinkError("crash injected after the write".into()));
        }
        Ok(())
    }
}

impl Soak {
    async fn start(stores: usize) -> anyhow::Result<Self> {
        let mut config = fleet_config(stores, TRANSITION, KMS_QUOTA_PER_SECOND);
        let mut members = Vec::with_capacity(stores);
        for index in 0..stores {
            let first = credential(index, 0);
            config
                .proxies
                .extend(proxies(index, std::slice::from_ref(&first)));
            members.push(Member {
                index,
                declared: Mutex::new(Declared {
                    resource: resource(index)?,
                    credential: first.clone(),
                    pending_on_proxy: None,
                }),
                persisted: Mutex::default(),
                secrets: Mutex::new(vec![first.expose_secret().to_owned()]),
                unavailable_since: Mutex::default(),
                counted: Mutex::default(),
                has_key: Default::default(),
            });
        }
        let emu = EmulatorProcess::spawn(&config).await?;
        let endpoint = emu.kms_endpoint();
        // As `run` builds it: the quota as client rate, adaptive retry,
        // the shared describe cache with its default TTL.
        let kms = AwsKeyStores::for_endpoint(&endpoint, "us-east-1")
            .with_rate_limit(crate::kms::aws::DEFAULT_RATE_PER_SECOND)
            .with_adaptive_retry();
        let defaults = crate::controller::Settings::default();
        let engine = Engine::new(
            DescribeCache::new(kms, defaults.describe_cache_ttl),
            probe(&emu)?,
            "us-east-1",
            EngineOptions {
                // Retries within seconds rather than minutes, so a few
                // minutes of soak see many of them.
                retry: crate::retry::RetryPolicy::scaled(
                    Duration::from_millis(200),
                    Duration::from_secs(5),
                ),
                ..defaults.engine
            },
        );
        Ok(Self {
            direct: AwsKeyStores::for_endpoint(&endpoint, "us-east-1"),
            emu,
            engine,
            members,
            tally: Mutex::default(),
        })
    }

    fn tally(&self) -> std::sync::MutexGuard<'_, Tally> {
        lock(&self.tally)
    }

    fn violation(&self, what: String) {
        let mut tally = self.tally();
        if !tally.violations.contains(&what) {
            tally.violations.push(what);
        }
    }

    /// One reconcile pass of `member`, from its persisted status; maybe
    /// crashed part-way or with a failed status write.
    async fn pass(
        &self,
        member: &Member,
        rng: &mut StdRng,
        chaos: bool,
        requested_at: Option<String>,
    ) -> Option<Outcome> {
        let declared = lock(&member.declared).clone();
        let mut status = lock(&member.persisted).clone();
        let request = Request {
            resource: &declared.resource,
            credential: Ok(declared.credential.clone()),
            approved: false,
            deleting: false,
            requested_at,
            rivals: Vec::new(),
        };
        let mut pick =
            |p: f64| (chaos && rng.random_bool(p)).then(|| rng.random_range(0..WRITES_PICKED));
        let mut sink = PassSink {
            member,
            writes: 0,
            fail_at: pick(P_FAILED_WRITE),
            crash_after: pick(P_CRASH_AFTER_WRITE),
            crashed: false,
            leaked: None,
        };
        let timer = (chaos && rng.random_bool(P_CRASH_TIMER))
            .then(|| Duration::from_millis(rng.random_range(0..300)));
        let pass = self.engine.reconcile(&request, &mut status, &mut sink);
        let result = match timer {
            Some(after) => tokio::time::timeout(after, pass).await.ok(),
            None => Some(pass.await),
        };
        let leaked = sink.leaked.take();
        let mut tally = self.tally();
        tally.passes += 1;
        if let Some(leak) = leaked
            && !tally.violations.contains(&leak)
        {
            tally.violations.push(leak);
        }
        match result {
            None => {
                tally.crashes += 1;
                None
            }
            Some(Err(_)) if sink.crashed => {
                tally.crashes += 1;
                None
            }
            Some(Err(_)) => {
                tally.failed_writes += 1;
                None
            }
            Some(Ok(outcome)) => {
                if let Some(op) = status.operation.as_ref().filter(|op| {
                    matches!(
                        op.phase,
                        OperationPhase::Succeeded
                            | OperationPhase::Failed
                            | OperationPhase::RolledBack
                    )
                }) {
                    let this = (op.started_at.clone(), op.trigger.clone());
                    let mut counted = lock(&member.counted);
                    if counted.as_ref() != Some(&this) {
                        *counted = Some(this);
                        *tally
                            .operations
                            .entry(format!("{:?}", op.phase))
                            .or_default() += 1;
                        if op.phase != OperationPhase::Succeeded {
                            *tally.failures.entry(failure(&status)).or_default() += 1;
                        }
                    }
                }
                Some(outcome)
            }
        }
    }

    /// A random change of the spec or the credential, as a user would make.
    async fn change(&self, member: &Member, rng: &mut StdRng) {
        if let Some(credential) = self.change_spec(member, rng) {
            self.give_proxies(member.index, &credential).await;
        }
    }

    /// Changes the declared spec; returns a rotated credential the proxies
    /// must accept now (the documented order: proxies first, then KMS).
    fn change_spec(&self, member: &Member, rng: &mut StdRng) -> Option<ProxyCredential> {
        let mut give_now = None;
        let mut declared = lock(&member.declared);
        let index = member.index;
        let spec = &mut declared.resource.spec;
        let kind = match rng.random_range(0..10) {
            0..=3 => {
                let to = if spec.proxy.uri_endpoint.ends_with(&host(index, 'a')) {
                    host(index, 'b')
                } else {
                    host(index, 'a')
                };
                spec.proxy.uri_endpoint = format!("https://{to}");
                "endpoint rotation"
            }
            4..=5 => {
                spec.key_store_name = match spec.key_store_name {
                    Some(_) => None,
                    None => Some(format!("soak-{index:02}-renamed")),
                };
                "rename"
            }
            6..=8 => {
                let generation = lock(&member.secrets).len();
                let next = credential(index, generation);
                lock(&member.secrets).push(next.expose_secret().to_owned());
                declared.credential = next.clone();
                if rng.random_bool(P_LATE_PROXY_CREDENTIAL) {
                    let after = Duration::from_millis(rng.random_range(500..4000));
                    declared.pending_on_proxy = Some((next, Instant::now() + after));
                    "credential rotation, proxy late"
                } else {
                    give_now = Some(next);
                    "credential rotation"
                }
            }
            _ => {
                spec.connection_state = match spec.connection_state {
                    crate::api::DesiredConnectionState::Connected => {
                        crate::api::DesiredConnectionState::Disconnected
                    }
                    crate::api::DesiredConnectionState::Disconnected => {
                        crate::api::DesiredConnectionState::Connected
                    }
                };
                "connectionState toggled"
            }
        };
        let generation = declared.resource.metadata.generation.unwrap_or(1);
        declared.resource.metadata.generation = Some(generation + 1);
        drop(declared);
        *self.tally().changes.entry(kind.into()).or_default() += 1;
        give_now
    }

    async fn give_proxies(&self, index: usize, credential: &ProxyCredential) {
        let cred =
            ProxyCredentialConfig::new(&credential.access_key_id, credential.expose_secret());
        for side in ['a', 'b'] {
            if let Err(e) = self.emu.add_credential(&host(index, side), &cred).await {
                self.violation(format!("emulator refused a proxy credential: {e}"));
            }
        }
    }

    /// Rotated secrets whose time has come reach the proxies.
    async fn deliver_late_credentials(&self, member: &Member, now: bool) {
        let due = {
            let mut declared = lock(&member.declared);
            match &declared.pending_on_proxy {
                Some((_, at)) if now || Instant::now() >= *at => {
                    declared.pending_on_proxy.take().map(|(c, _)| c)
                }
                _ => None,
            }
        };
        if let Some(credential) = due {
            self.give_proxies(member.index, &credential).await;
        }
    }

    /// Once the store first connects, it gets a KMS key, so that every
    /// later rotation's key-continuity check has something to check. Under
    /// faults this may take a few tries.
    async fn give_key(&self, member: &Member) {
        use std::sync::atomic::Ordering;
        if member.has_key.load(Ordering::Relaxed) {
            return;
        }
        let status = lock(&member.persisted).clone();
        let (Some(id), Some(ConnectionState::Connected)) =
            (status.key_store_id, status.connection_state)
        else {
            return;
        };
        let made = self
            .direct
            .client()
            .create_key()
            .custom_key_store_id(id)
            .origin(aws_sdk_kms::types::OriginType::ExternalKeyStore)
            .xks_key_id(external_key(member.index))
            .send()
            .await;
        if made.is_ok() {
            member.has_key.store(true, Ordering::Relaxed);
        }
    }

    /// One store's life during the soak, from creation on: passes,
    /// requeues, changes.
    async fn worker(&self, member: &Member, seed: u64, until: Instant) {
        let mut rng = StdRng::seed_from_u64(seed);
        while Instant::now() < until {
            self.deliver_late_credentials(member, false).await;
            let outcome = self.pass(member, &mut rng, true, None).await;
            self.give_key(member).await;
            let settled = matches!(
                outcome,
                Some(Outcome::InSync | Outcome::Stalled | Outcome::Observed)
            );
            let p = if settled {
                P_CHANGE_WHEN_SETTLED
            } else {
                P_CHANGE_MID_OPERATION
            };
            if rng.random_bool(p) {
                self.change(member, &mut rng).await;
            }
            let delay = match outcome {
                Some(Outcome::Requeue(d)) => d,
                // A crash: the restarted operator looks again soon.
                None => Duration::from_millis(rng.random_range(50..500)),
                // In sync or stalled: the next change or drift check.
                Some(_) => Duration::from_millis(rng.random_range(500..2500)),
            };
            tokio::time::sleep(delay.min(until.saturating_duration_since(Instant::now()))).await;
        }
    }

    /// Random KMS and proxy faults, one episode after another.
    async fn chaos(&self, seed: u64, until: Instant) {
        let mut rng = StdRng::seed_from_u64(seed);
        while Instant::now() < until {
            let mut faults = quota();
            let mut flapping = None;
            let kind = match rng.random_range(0..20) {
                0..=6 => "calm",
                7..=9 => {
                    faults.throttle_rate = 0.3;
                    "throttling (30% of calls)"
                }
                10..=12 => {
                    faults.internal_error_rate = 0.2;
                    "KMSInternalException (20% of calls)"
                }
                13..=14 => {
                    faults.latency_ms = rng.random_range(200..1500);
                    "latency (0.2-1.5 s per call)"
                }
                15..=16 => {
                    faults.drop_rate = 0.2;
                    "dropped connections (20% of calls)"
                }
                _ => {
                    let index = rng.random_range(0..self.members.len());
                    flapping = Some(index);
                    "proxy health flap (all key managers UNAVAILABLE)"
                }
            };
            self.set_kms_faults(faults).await;
            if let Some(index) = flapping {
                self.set_health(index, KeyManagerHealth::Unavailable).await;
            }
            *self.tally().episodes.entry(kind.into()).or_default() += 1;
            let episode = Duration::from_millis(rng.random_range(1000..4000));
            tokio::time::sleep(episode.min(until.saturating_duration_since(Instant::now()))).await;
            if let Some(index) = flapping {
                self.set_health(index, KeyManagerHealth::Active).await;
            }
        }
        self.set_kms_faults(quota()).await;
    }

    async fn set_kms_faults(&self, faults: OperationFaults) {
        if let Err(e) = self
            .emu
            .set_operation_faults(ALL_OPERATIONS, Some(faults))
            .await
        {
            self.violation(format!("emulator refused KMS faults: {e}"));
        }
    }

    async fn set_health(&self, index: usize, health: KeyManagerHealth) {
        for side in ['a', 'b'] {
            if let Err(e) = self
                .emu
                .set_key_manager_health(&host(index, side), KEY_MANAGER, health)
                .await
            {
                self.violation(format!("emulator refused a health change: {e}"));
            }
        }
    }

    /// Watches KMS (the emulator's own state, outside the quota): never more
    /// stores than resources; how long stores that should serve are down.
    async fn monitor(&self, until: Instant) {
        while Instant::now() < until {
            self.look().await;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn look(&self) {
        let state = match self.emu.state().await {
            Ok(state) => state,
            Err(e) => {
                self.violation(format!("reading the emulator's state: {e}"));
                return;
            }
        };
        let stores = state["customKeyStores"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let now = Instant::now();
        let mut tally = self.tally();
        tally.max_stores = tally.max_stores.max(stores.len());
        if stores.len() > self.members.len() {
            let what = format!(
                "KMS held {} stores for {} resources: a second store was created",
                stores.len(),
                self.members.len()
            );
            if !tally.violations.contains(&what) {
                tally.violations.push(what);
            }
        }
        for member in &self.members {
            let wants_connected = lock(&member.declared).resource.spec.connection_state
                == crate::api::DesiredConnectionState::Connected;
            let id = lock(&member.persisted).key_store_id.clone();
            let connected = stores.iter().any(|s| {
                s["CustomKeyStoreId"].as_str() == id.as_deref()
                    && s["ConnectionState"] == "CONNECTED"
            });
            let mut since = lock(&member.unavailable_since);
            match (*since, wants_connected && !connected) {
                (None, true) => *since = Some(now),
                (Some(start), false) => {
                    tally.longest_unavailable = tally.longest_unavailable.max(now - start);
                    *since = None;
                }
                (Some(start), true) => {
                    tally.longest_unavailable = tally.longest_unavailable.max(now - start);
                }
                (None, false) => {}
            }
        }
    }

    /// Faults off, late secrets delivered, a reconcile requested (as a
    /// person would after a Stalled change): every store must get in sync.
    async fn converge(&self, member: &Member, seed: u64) -> Option<Duration> {
        let mut rng = StdRng::seed_from_u64(seed);
        self.deliver_late_credentials(member, true).await;
        let started = Instant::now();
        let requested = Some(format!("soak-final-{seed}"));
        while started.elapsed() < CONVERGE_WITHIN {
            match self.pass(member, &mut rng, false, requested.clone()).await {
                Some(Outcome::InSync) => return Some(started.elapsed()),
                Some(Outcome::Requeue(d)) => tokio::time::sleep(d).await,
                _ => tokio::time::sleep(Duration::from_millis(500)).await,
            }
        }
        let status = lock(&member.persisted).clone();
        let why = status
            .conditions
            .iter()
            .find(|c| c.is_true() && c.type_ != "Ready")
            .map(|c| format!("{}: {}", c.reason, c.message))
            .unwrap_or_default();
        self.violation(format!(
            "store {} did not converge within {CONVERGE_WITHIN:?} after the faults stopped ({why})",
            member.index
        ));
        None
    }

    /// KMS matches every declared spec, and holds the current secret.
    async fn verify(&self, report: &mut SoakReport) -> anyhow::Result<()> {
        let stores = self.direct.describe_all().await?;
        if stores.len() != self.members.len() {
            self.violation(format!(
                "KMS holds {} stores for {} resources",
                stores.len(),
                self.members.len()
            ));
        }
        for member in &self.members {
            let declared = lock(&member.declared).clone();
            let status = lock(&member.persisted).clone();
            let Some(store) = stores
                .iter()
                .find(|s| Some(&s.id) == status.key_store_id.as_ref())
            else {
                self.violation(format!(
                    "store {}: its recorded store is gone",
                    member.index
                ));
                continue;
            };
            let spec = &declared.resource.spec;
            let want_state = match spec.connection_state {
                crate::api::DesiredConnectionState::Connected => ConnectionState::Connected,
                crate::api::DesiredConnectionState::Disconnected => ConnectionState::Disconnected,
            };
            let proxy = store.proxy.clone().unwrap_or_default();
            let mut wrong = Vec::new();
            if store.connection_state != want_state {
                wrong.push(format!(
                    "{} instead of {want_state}",
                    store.connection_state
                ));
            }
            if store.name != declared.resource.key_store_name() {
                wrong.push(format!("named {}", store.name));
            }
            if proxy.uri_endpoint != spec.proxy.uri_endpoint {
                wrong.push(format!("at {}", proxy.uri_endpoint));
            }
            if proxy.access_key_id != declared.credential.access_key_id {
                wrong.push(format!("access key id {}", proxy.access_key_id));
            }
            if !wrong.is_empty() {
                self.violation(format!(
                    "store {} does not match its spec: {}",
                    member.index,
                    wrong.join(", ")
                ));
                continue;
            }
            if self
                .credential_check(member, &declared, &store.id, want_state)
                .await?
            {
                report.credential_checks_passed += 1;
            }
        }
        Ok(())
    }

    /// Proxies keep only the current credential; KMS must still connect.
    async fn credential_check(
        &self,
        member: &Member,
        declared: &Declared,
        id: &str,
        end_state: ConnectionState,
    ) -> anyhow::Result<bool> {
        for proxy in proxies(member.index, std::slice::from_ref(&declared.credential)) {
            self.emu.upsert_proxy(&proxy).await?;
        }
        if end_state == ConnectionState::Connected {
            self.direct.disconnect(id).await?;
            self.wait(id, ConnectionState::Disconnected).await?;
        }
        self.direct.connect(id).await?;
        let reached = self.wait(id, ConnectionState::Connected).await;
        if let Err(e) = reached {
            self.violation(format!(
                "store {}: KMS cannot connect with the proxies holding only the current secret ({e}): the credential KMS holds is stale",
                member.index
            ));
            return Ok(false);
        }
        if end_state == ConnectionState::Disconnected {
            self.direct.disconnect(id).await?;
        }
        Ok(true)
    }

    async fn wait(&self, id: &str, want: ConnectionState) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let store = self.direct.describe_by_id(id).await?;
            match store.map(|s| (s.connection_state, s.connection_error_code)) {
                Some((state, _)) if state == want => return Ok(()),
                Some((ConnectionState::Failed, code)) => {
                    bail!("FAILED with {}", code.unwrap_or_default())
                }
                _ if Instant::now() > deadline => bail!("not {want} within 30 s"),
                _ => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }
}

/// Run the soak for `duration` over `stores` stores.
pub async fn run(duration: Duration, stores: usize, seed: u64) -> anyhow::Result<SoakReport> {
    let stores = stores.max(1);
    let soak = Soak::start(stores).await?;

    soak.emu.reset_stats().await?;

    let until = Instant::now() + duration;
    let workers = soak
        .members
        .iter()
        .enumerate()
        .map(|(i, m)| soak.worker(m, seed.wrapping_add(i as u64 + 1), until));
    futures::future::join3(
        futures::future::join_all(workers),
        soak.chaos(seed, until),
        soak.monitor(until),
    )
    .await;

    for member in &soak.members {
        soak.set_health(member.index, KeyManagerHealth::Active)
            .await;
    }
    let calm = Instant::now();
    let converged = futures::future::join_all(
        soak.members
            .iter()
            .enumerate()
            .map(|(i, m)| soak.converge(m, seed.wrapping_mul(31).wrapping_add(i as u64))),
    )
    .await;
    let converged_in = converged
        .iter()
        .flatten()
        .max()
        .copied()
        .unwrap_or_else(|| calm.elapsed());
    soak.look().await;

    let stats = soak.emu.operation_stats().await?;
    let mut report = SoakReport {
        seed,
        duration_s: duration.as_secs_f64(),
        stores,
        converged_in_s: converged_in.as_secs_f64(),
        kms_calls: stats
            .iter()
            .map(|(op, s)| (op.clone(), s.requests))
            .collect(),
        kms_throttled: stats.values().map(|s| s.throttled).sum(),
        kms_errors_injected: stats.values().map(|s| s.internal_errors + s.dropped).sum(),
        ..SoakReport::default()
    };
    soak.verify(&mut report).await?;

    let tally = std::mem::take(&mut *soak.tally());
    report.passes = tally.passes;
    report.crashes = tally.crashes;
    report.failed_status_writes = tally.failed_writes;
    report.changes = tally.changes;
    report.fault_episodes = tally.episodes;
    report.operations = tally.operations;
    report.failures = tally.failures;
    report.max_stores_seen = tally.max_stores;
    report.longest_unavailable_s = tally.longest_unavailable.as_secs_f64();
    report.violations = tally.violations;
    report.stores_with_keys = soak
        .members
        .iter()
        .filter(|m| m.has_key.load(std::sync::atomic::Ordering::Relaxed))
        .count();
    soak.emu.stop().await;
    Ok(report)
}

impl SoakReport {
    /// What the soak checked and found, one (check, result) row each; the
    /// text and the Markdown render the same rows.
    fn table(&self) -> Table {
        let rows = [
            (
                "passes / crashes mid-pass / failed status writes",
                format!(
                    "{} / {} / {}",
                    self.passes, self.crashes, self.failed_status_writes
                ),
            ),
            ("changes", list(&self.changes)),
            ("fault episodes", list(&self.fault_episodes)),
            ("operations ended", list(&self.operations)),
            (
                "failed or rolled back at (step: reason)",
                list(&self.failures),
            ),
            (
                "KMS answers injected",
                format!(
                    "{} throttled, {} 5xx or dropped",
                    self.kms_throttled, self.kms_errors_injected
                ),
            ),
            ("KMS calls", list(&self.kms_calls)),
            (
                "most stores KMS held (never a second store)",
                format!("{} for {} resources", self.max_stores_seen, self.stores),
            ),
            (
                "longest a store declared Connected was not CONNECTED",
                format!("{:.1} s", self.longest_unavailable_s),
            ),
            (
                "in sync after the faults stopped",
                format!("within {:.1} s", self.converged_in_s),
            ),
            (
                "KMS connects with only the current secret on the proxies",
                format!("{}/{}", self.credential_checks_passed, self.stores),
            ),
            (
                "stores holding a KMS key (key continuity checked on each rotation)",
                format!("{}/{}", self.stores_with_keys, self.stores),
            ),
            (
                "violations",
                if self.violations.is_empty() {
                    "none".to_string()
                } else {
                    self.violations.join("; ")
                },
            ),
        ];
        Table {
            head: vec!["check", "result"],
            rows: rows
                .into_iter()
                .map(|(check, result)| vec![check.to_string(), result])
                .collect(),
        }
    }

    pub fn text(&self) -> String {
        format!(
            "SOAK ({} stores, {:.0} s of random changes, faults and crashes, seed {})\n{}",
            self.stores,
            self.duration_s,
            self.seed,
            self.table().text()
        )
    }

    pub fn markdown(&self, command: &str) -> String {
        let mut out = String::from("## Soak: random changes, faults and crashes\n\n");
        out.push_str(&format!(
            "`{command}`: {} stores for {:.0} s (seed {}), from creation on. Each store gets a KMS key once it first connects. Each store's driver makes random spec changes (endpoint rotations between two proxies serving the same key, renames, credential rotations, half of them with a new secret under the same access key id and some reaching the proxies only after the operator tried them, connectionState toggles), passes crash and resume from the last status written: {:.0}% when a 0-300 ms timer fires (wherever the pass is then, most often inside a KMS or proxy call), {:.0}% right after one of their first {WRITES_PICKED} status writes (just before the side effect it announced); {:.0}% fail one status write; fault episodes of 1-4 s follow one another on KMS (throttling, KMSInternalException, latency, dropped connections, on top of the 5/s quota) and on the proxies (health flaps). Then the faults stop, late secrets reach the proxies, one reconcile is requested, and every store must converge.\n\n",
            self.stores,
            self.duration_s,
            self.seed,
            P_CRASH_TIMER * 100.0,
            P_CRASH_AFTER_WRITE * 100.0,
            P_FAILED_WRITE * 100.0
        ));
        out.push_str(&self.table().markdown());
        out
    }
}

/// `Connect: XksProxyNotReachable`: the first failed step of the
/// operation and the reason its Stalled condition gives.
fn failure(status: &ExternalKeyStoreStatus) -> String {
    let step = status
        .operation
        .as_ref()
        .and_then(|op| {
            op.steps
                .iter()
                .find(|s| s.state == crate::api::StepState::Failed)
        })
        .map_or_else(|| "?".to_string(), |s| format!("{:?}", s.name));
    let reason = status
        .conditions
        .iter()
        .find(|c| c.type_ == "Stalled" && c.is_true())
        .map_or("?", |c| c.reason.as_str());
    format!("{step}: {reason}")
}

fn list(map: &BTreeMap<String, u64>) -> String {
    if map.is_empty() {
        return "none".into();
    }
    map.iter()
        .map(|(k, v)| format!("{k}: {v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// KMS's own rules (contract §3): a credential the soak makes up must
    /// be one KMS accepts, or the soak would test a validation error.
    #[test]
    fn rotated_credentials_are_valid_for_kms_and_alternate_the_access_key_id() {
        let id_ok = |id: &str| {
            (20..=30).contains(&id.len())
                && id
                    .bytes()
                    .all(|b| b.is_ascii_uppercase() || (b'2'..=b'7').contains(&b))
        };
        let secret_ok = |s: &str| {
            (43..=64).contains(&s.len())
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"/+=".contains(&b))
        };
        let creds: Vec<ProxyCredential> = (0..6).map(|g| credential(42, g)).collect();
        for c in &creds {
            assert!(id_ok(&c.access_key_id), "{}", c.access_key_id);
            assert!(secret_ok(c.expose_secret()));
        }
        // Every other rotation keeps the id (only the secret changes).
        assert_ne!(creds[0].access_key_id, creds[1].access_key_id);
        assert_eq!(creds[1].access_key_id, creds[2].access_key_id);
        assert_ne!(creds[2].access_key_id, creds[3].access_key_id);
        let secrets: std::collections::BTreeSet<&str> =
            creds.iter().map(|c| c.expose_secret()).collect();
        assert_eq!(secrets.len(), creds.len());
        assert_ne!(
            credential(1, 0).access_key_id,
            credential(2, 0).access_key_id
        );
    }

    #[test]
    fn both_proxies_of_a_store_serve_the_same_key_material() {
        let pair = proxies(3, &[credential(3, 0)]);
        assert_eq!(pair.len(), 2);
        assert_ne!(pair[0].host, pair[1].host);
        assert_eq!(pair[0].keys[0].id, pair[1].keys[0].id);
        let material = pair[0].keys[0].material.clone().unwrap_or_default();
        assert_eq!(BASE64.decode(&material).map(|m| m.len()).ok(), Some(32));
        assert_eq!(pair[0].keys[0].material, pair[1].keys[0].material);
    }
}
