//! `xks-operator bench`: what users trusting the operator with their keys
//! care about, measured against the embedded emulator.
//!
//! - disruption window of an endpoint rotation (Disconnect call → CONNECTED
//!   observed) against the emulator's own disconnect + connect times;
//! - create-and-connect throughput of N stores under KMS's 5 requests/s
//!   per-operation quota, enforced by the emulator;
//! - DescribeCustomKeyStores calls of one drift round over N stores;
//! - CPU and memory of the operator side for the largest N.
//!
//! The emulator runs on a runtime of its own (threads named `emulator`), so
//! the CPU it burns can be told apart from the operator's (see [`cpu`]).

mod cpu;

use crate::api::{ExternalKeyStore, ExternalKeyStoreStatus, StepName, StepState};
use crate::controller::describe_cache::DescribeCache;
use crate::emulator::config::{DEMO_ACCESS_KEY_ID, DEMO_SECRET, DEMO_URI_PATH};
use crate::emulator::faults::{ALL_OPERATIONS, OperationFaults, RateLimit};
use crate::emulator::xks_proxy::ProxyConfig as EmulatedProxy;
use crate::emulator::{self, EmulatorConfig, RunningEmulator};
use crate::engine::{Engine, EngineOptions, Outcome, Request, SinkError, StatusSink};
use crate::kms::KeyStores;
use crate::kms::aws::AwsKeyStores;
use crate::model::ProxyCredential;
use crate::xks::probe::{HttpProxyProbe, ProbeOptions};
use anyhow::{Context, bail};
use serde::Serialize;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{Mutex, Semaphore};

/// KMS's request quota per custom-key-store operation, account and Region.
const KMS_QUOTA_PER_SECOND: f64 = 5.0;
/// The token bucket of KMS (and of the emulator) starts full.
const KMS_BURST: f64 = 5.0;
const PRIMARY: &str = "https://xks-primary.example.com";
const REPLICA: &str = "https://xks-replica.example.com";

#[derive(clap::Args, Clone, Debug)]
pub struct BenchArgs {
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    /// Print the report as Markdown with the machine description
    /// (what BENCHMARKS.md holds).
    #[arg(long, conflicts_with = "json")]
    pub markdown: bool,
    /// Small sizes and few runs, for CI (under a minute).
    #[arg(long)]
    pub quick: bool,
    /// Numbers of stores for the throughput and steady-state runs.
    #[arg(long, value_delimiter = ',')]
    pub sizes: Option<Vec<usize>>,
    /// Endpoint rotations measured per configuration (the median is reported).
    #[arg(long)]
    pub runs: Option<usize>,
    /// The engine's poll interval while KMS is CONNECTING or DISCONNECTING,
    /// in milliseconds, for the tuned configuration.
    #[arg(long, default_value_t = 250)]
    pub poll_ms: u64,
    /// Emulated time a store spends DISCONNECTING and CONNECTING (ms).
    #[arg(long)]
    pub transition_ms: Option<u64>,
    /// Reconciles running at the same time in the throughput run.
    #[arg(long, default_value_t = 16)]
    pub concurrency: usize,
    /// Client-side calls per second per KMS operation (`run` defaults to 4.5).
    #[arg(long, default_value_t = 4.5)]
    pub client_rate: f64,
    /// Run only these parts (disruption, throughput); default all.
    #[arg(long, value_delimiter = ',')]
    pub only: Option<Vec<String>>,
    /// Throughput without the describe cache only up to this many stores
    /// (it costs about one second per store).
    #[arg(long, default_value_t = 10)]
    pub direct_max: usize,
}

struct Plan {
    sizes: Vec<usize>,
    runs: usize,
    transition: Duration,
    controller_defaults: bool,
}

impl BenchArgs {
    fn plan(&self) -> Plan {
        let sizes = self.sizes.clone().unwrap_or_else(|| {
            if self.quick {
                vec![10]
            } else {
                vec![10, 100, 1000]
            }
        });
        Plan {
            sizes,
            runs: self.runs.unwrap_or(if self.quick { 3 } else { 7 }).max(1),
            transition: Duration::from_millis(self.transition_ms.unwrap_or(if self.quick {
                300
            } else {
                1000
            })),
            // Its 5 s poll and 10 s cache make each rotation take ~15 s.
            controller_defaults: !self.quick,
        }
    }
}

#[derive(Serialize)]
pub struct Report {
    pub machine: Machine,
    pub command: String,
    pub disruption: Vec<Disruption>,
    pub throughput: Vec<Throughput>,
    pub steady_state: Vec<SteadyState>,
    pub cost: Option<Cost>,
}

#[derive(Serialize)]
pub struct Machine {
    pub cpus: usize,
    pub cpu_model: String,
    pub memory: String,
    pub kernel: String,
    pub build: &'static str,
}

#[derive(Serialize)]
pub struct Disruption {
    pub config: String,
    pub poll_interval_ms: u64,
    pub describe_cache_ttl_ms: u64,
    pub runs: usize,
    /// Emulated DISCONNECTING + CONNECTING time.
    pub emulated_transitions_s: f64,
    /// Median, Disconnect call → CONNECTED observed.
    pub window_s: f64,
    pub overhead_s: f64,
    pub overhead_share: f64,
    pub overhead_min_s: f64,
    pub overhead_max_s: f64,
    /// Median time from DISCONNECTED observed to the Connect call (update
    /// and health check included).
    pub disconnected_to_connect_call_s: f64,
}

#[derive(Serialize)]
pub struct Throughput {
    pub config: String,
    pub stores: usize,
    pub concurrency: usize,
    pub client_rate: f64,
    pub elapsed_s: f64,
    /// (N − burst) / 5 per second + emulated CONNECTING time: the fastest
    /// that N creates and N connects can pass KMS's quota.
    pub quota_minimum_s: f64,
    pub ratio: f64,
    /// The same minimum at the client-side rate (burst 1).
    pub client_minimum_s: f64,
    pub throttled_by_kms: u64,
    pub throttles_seen_by_engine: u64,
    pub failed: usize,
    pub calls: std::collections::BTreeMap<String, u64>,
    pub describe_per_store: f64,
}

#[derive(Serialize)]
pub struct SteadyState {
    pub stores: usize,
    pub config: String,
    pub describe_calls: u64,
    pub other_kms_calls: u64,
    pub in_sync: usize,
}

#[derive(Serialize)]
pub struct Cost {
    pub stores: usize,
    pub operator_cpu_s: f64,
    pub emulator_cpu_s: f64,
    pub wall_s: f64,
    pub peak_rss_mib: f64,
    pub rss_before_mib: f64,
    pub rss_after_mib: f64,
    pub how: String,
}

/// Run the benchmarks and print the report.
pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    let plan = args.plan();
    let mut report = Report {
        machine: Machine::describe(),
        command: std::env::args().collect::<Vec<_>>().join(" "),
        disruption: Vec::new(),
        throughput: Vec::new(),
        steady_state: Vec::new(),
        cost: None,
    };

    let wanted = |part: &str| {
        args.only
            .as_ref()
            .is_none_or(|o| o.iter().any(|p| p == part))
    };
    if wanted("disruption") {
        progress(&args, "disruption window, tuned");
        report.disruption.push(
            disruption(
                &args,
                &plan,
                "tuned: no describe cache",
                Duration::from_millis(args.poll_ms),
                Duration::ZERO,
            )
            .await?,
        );
        report.disruption.push(
            disruption(
                &args,
                &plan,
                "tuned: describe cache (TTL = poll / 2)",
                Duration::from_millis(args.poll_ms),
                Duration::from_millis(args.poll_ms / 2),
            )
            .await?,
        );
        if plan.controller_defaults {
            for factor in [2, 4] {
                let poll = Duration::from_millis(args.poll_ms * factor);
                report.disruption.push(
                    disruption(
                        &args,
                        &plan,
                        "tuned: describe cache (TTL = poll / 2)",
                        poll,
                        poll / 2,
                    )
                    .await?,
                );
            }
            progress(&args, "disruption window, controller defaults");
            let defaults = crate::controller::Settings::default();
            report.disruption.push(
                disruption(
                    &args,
                    &plan,
                    "`run` defaults",
                    defaults.engine.poll_interval,
                    defaults.describe_cache_ttl,
                )
                .await?,
            );
        }
    }
    let largest = plan.sizes.iter().copied().max().unwrap_or(0);
    for &n in plan.sizes.iter().filter(|_| wanted("throughput")) {
        let ttl = Duration::from_secs(1);
        let rate = args.client_rate;
        let mut runs = Vec::new();
        if n <= args.direct_max {
            runs.push((Cache::None, rate));
        }
        if !args.quick && rate < KMS_QUOTA_PER_SECOND {
            // Can the quota minimum itself be reached? Only at KMS's rate.
            runs.push((Cache::Shared(ttl), KMS_QUOTA_PER_SECOND));
        }
        runs.push((Cache::Shared(ttl), rate));
        let last = runs.len() - 1;
        for (i, (cache, rate)) in runs.into_iter().enumerate() {
            progress(
                &args,
                &format!("throughput, {n} stores, {}, {rate}/s", cache.label()),
            );
            let fleet = Fleet::start(n, plan.transition).await?;
            let before = cpu::sample();
            let started = Instant::now();
            report
                .throughput
                .push(fleet.create_all(&args, cache, rate).await?);
            if i == last {
                progress(&args, &format!("steady state, {n} stores"));
                report.steady_state.push(fleet.drift_round(None).await?);
                report
                    .steady_state
                    .push(fleet.drift_round(Some(Duration::from_secs(10))).await?);
                if n == largest {
                    let after = cpu::sample();
                    report.cost = Some(Cost::between(n, &before, &after, started.elapsed()));
                }
            }
            fleet.stop();
        }
    }

    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else if args.markdown {
        print!("{}", report.markdown(&args));
    } else {
        print!("{}", report.tables());
    }
    // A failed create or connect is a correctness problem, not a figure.
    let failed: usize = report.throughput.iter().map(|t| t.failed).sum();
    if failed > 0 {
        bail!("{failed} stores did not reach CONNECTED in the throughput runs");
    }
    Ok(())
}

fn progress(args: &BenchArgs, what: &str) {
    if !args.json {
        eprintln!("bench: {what}...");
    }
}

/// The emulator on a runtime of its own, so its CPU time is attributable.
struct Hosted {
    emu: RunningEmulator,
    runtime: tokio::runtime::Runtime,
}

impl Hosted {
    async fn start(config: EmulatorConfig) -> anyhow::Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name(cpu::EMULATOR_THREAD)
            .enable_all()
            .build()
            .context("building the emulator runtime")?;
        let emu = runtime
            .spawn(emulator::start(config, ([127, 0, 0, 1], 0).into()))
            .await
            .context("emulator task")??;
        Ok(Self { emu, runtime })
    }

    fn stop(self) {
        drop(self.emu);
        self.runtime.shutdown_background();
    }
}

fn rate_limited(config: &mut EmulatorConfig) {
    config.faults.insert(
        ALL_OPERATIONS.to_string(),
        OperationFaults {
            rate_limit: Some(RateLimit {
                per_second: KMS_QUOTA_PER_SECOND,
                burst: Some(KMS_BURST),
            }),
            ..OperationFaults::default()
        },
    );
}

fn resource(name: &str, endpoint: &str) -> anyhow::Result<ExternalKeyStore> {
    let text = format!(
        "apiVersion: xks-operator.io/v1alpha1\nkind: ExternalKeyStore\nmetadata:\n  name: {name}\n  namespace: bench\n  generation: 1\nspec:\n  proxy:\n    uriEndpoint: {endpoint}\n    uriPath: {DEMO_URI_PATH}\n    credentialsSecretRef: {{name: cred}}\n"
    );
    serde_yaml::from_str(&text).context("bench resource")
}

fn credential() -> ProxyCredential {
    ProxyCredential::new(DEMO_ACCESS_KEY_ID, DEMO_SECRET)
}

fn request(res: &ExternalKeyStore) -> Request<'_> {
    Request {
        resource: res,
        credential: Ok(credential()),
        approved: false,
        deleting: false,
        requested_at: None,
    }
}

fn probe(emu: &RunningEmulator) -> anyhow::Result<HttpProxyProbe> {
    HttpProxyProbe::new(ProbeOptions {
        resolve: emu.proxy_resolve_map(),
        ..ProbeOptions::default()
    })
    .context("proxy client")
}

/// Counts writes, and for the rotation, when each step boundary was seen.
#[derive(Default)]
struct Sink {
    writes: u64,
    disconnect_call: Option<Instant>,
    disconnected: Option<Instant>,
    connect_call: Option<Instant>,
    connected: Option<Instant>,
}

impl StatusSink for Sink {
    async fn write(&mut self, status: &ExternalKeyStoreStatus) -> Result<(), SinkError> {
        self.writes += 1;
        let now = Instant::now();
        let step = |name: StepName| {
            status
                .operation
                .as_ref()
                .and_then(|o| o.steps.iter().find(|s| s.name == name))
        };
        // begin_call writes Running with attempts ≥ 1 just before the call.
        let called = |name| step(name).is_some_and(|s| s.attempts > 0);
        let done = |name| step(name).is_some_and(|s| s.state == StepState::Succeeded);
        if self.disconnect_call.is_none() && called(StepName::Disconnect) {
            self.disconnect_call = Some(now);
        }
        if self.disconnected.is_none() && done(StepName::Disconnect) {
            self.disconnected = Some(now);
        }
        if self.connect_call.is_none() && called(StepName::Connect) {
            self.connect_call = Some(now);
        }
        if self.connected.is_none() && done(StepName::Connect) {
            self.connected = Some(now);
        }
        Ok(())
    }
}

async fn settle<K: KeyStores, P: crate::xks::ProxyProbe>(
    engine: &Engine<K, P>,
    res: &ExternalKeyStore,
    status: &mut ExternalKeyStoreStatus,
    sink: &mut Sink,
) -> anyhow::Result<Outcome> {
    crate::cli::settle(
        engine,
        &request(res),
        status,
        sink,
        Duration::from_secs(300),
    )
    .await
}

async fn disruption(
    args: &BenchArgs,
    plan: &Plan,
    config: &str,
    poll: Duration,
    cache_ttl: Duration,
) -> anyhow::Result<Disruption> {
    let mut emulated = EmulatorConfig {
        connect_delay_ms: plan.transition.as_millis() as u64,
        disconnect_delay_ms: plan.transition.as_millis() as u64,
        ..EmulatorConfig::default()
    };
    rate_limited(&mut emulated);
    let hosted = Hosted::start(emulated).await?;
    let kms = AwsKeyStores::for_endpoint(&hosted.emu.kms_endpoint(), "us-east-1")
        .with_rate_limit(args.client_rate);
    let engine = Engine::new(
        DescribeCache::new(kms, cache_ttl),
        probe(&hosted.emu)?,
        "us-east-1",
        EngineOptions {
            poll_interval: poll,
            ..EngineOptions::default()
        },
    );
    let mut res = resource("payments", PRIMARY)?;
    let mut status = ExternalKeyStoreStatus::default();
    let outcome = settle(&engine, &res, &mut status, &mut Sink::default()).await?;
    if outcome != Outcome::InSync {
        bail!("the store did not come up: {outcome:?}");
    }
    let expected = plan.transition * 2;
    let mut overheads = Vec::new();
    let mut windows = Vec::new();
    let mut gaps = Vec::new();
    for run in 0..plan.runs {
        let to = if run % 2 == 0 { REPLICA } else { PRIMARY };
        res.spec.proxy.uri_endpoint = to.to_string();
        res.metadata.generation = Some(run as i64 + 2);
        let mut sink = Sink::default();
        let outcome = settle(&engine, &res, &mut status, &mut sink).await?;
        let (Some(start), Some(down), Some(call), Some(end)) = (
            sink.disconnect_call,
            sink.disconnected,
            sink.connect_call,
            sink.connected,
        ) else {
            bail!("rotation {run} did not go through every step ({outcome:?})");
        };
        if outcome != Outcome::InSync {
            bail!("rotation {run} ended {outcome:?}");
        }
        let window = end.duration_since(start);
        windows.push(window.as_secs_f64());
        overheads.push(window.as_secs_f64() - expected.as_secs_f64());
        gaps.push(call.duration_since(down).as_secs_f64());
    }
    hosted.stop();
    let window = median(&windows);
    let overhead = median(&overheads);
    Ok(Disruption {
        config: config.to_string(),
        poll_interval_ms: poll.as_millis() as u64,
        describe_cache_ttl_ms: cache_ttl.as_millis() as u64,
        runs: plan.runs,
        emulated_transitions_s: expected.as_secs_f64(),
        window_s: window,
        overhead_s: overhead,
        overhead_share: if window > 0.0 { overhead / window } else { 0.0 },
        overhead_min_s: overheads.iter().copied().fold(f64::INFINITY, f64::min),
        overhead_max_s: overheads.iter().copied().fold(f64::NEG_INFINITY, f64::max),
        disconnected_to_connect_call_s: median(&gaps),
    })
}

fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// Which describe cache the engine sees.
#[derive(Clone, Copy, Debug)]
enum Cache {
    None,
    /// `controller::describe_cache::DescribeCache`, as `run` uses it.
    Shared(Duration),
}

impl Cache {
    fn label(self) -> String {
        match self {
            Self::None => "no describe cache".into(),
            Self::Shared(ttl) => format!("shared DescribeCache, TTL {}s", ttl.as_secs_f64()),
        }
    }
}

/// N stores, each with its own emulated proxy (KMS wants endpoint + path
/// unique per account and Region), and their statuses.
struct Fleet {
    hosted: Hosted,
    resources: Vec<ExternalKeyStore>,
    statuses: Vec<Mutex<ExternalKeyStoreStatus>>,
    transition: Duration,
}

impl Fleet {
    async fn start(n: usize, transition: Duration) -> anyhow::Result<Self> {
        let mut config = EmulatorConfig {
            connect_delay_ms: transition.as_millis() as u64,
            disconnect_delay_ms: transition.as_millis() as u64,
            max_custom_key_stores: n,
            proxies: Vec::new(),
            ..EmulatorConfig::default()
        };
        rate_limited(&mut config);
        let mut resources = Vec::with_capacity(n);
        for i in 0..n {
            let host = format!("xks-bench-{i:04}.example.com");
            config.proxies.push(
                EmulatedProxy::new(host.as_str(), DEMO_URI_PATH)
                    .with_credential(DEMO_ACCESS_KEY_ID, DEMO_SECRET),
            );
            resources.push(resource(
                &format!("bench-{i:04}"),
                &format!("https://{host}"),
            )?);
        }
        Ok(Self {
            hosted: Hosted::start(config).await?,
            statuses: (0..n)
                .map(|_| Mutex::new(ExternalKeyStoreStatus::default()))
                .collect(),
            resources,
            transition,
        })
    }

    fn stop(self) {
        self.hosted.stop();
    }

    fn control(&self) -> &crate::emulator::EmulatorControl {
        self.hosted.emu.control()
    }

    /// Every resource reconciled until it settles, `concurrency` at a
    /// time, sleeping requeue delays outside the limit like the controller.
    async fn create_all(
        &self,
        args: &BenchArgs,
        cache: Cache,
        rate: f64,
    ) -> anyhow::Result<Throughput> {
        let kms = AwsKeyStores::for_endpoint(&self.hosted.emu.kms_endpoint(), "us-east-1")
            .with_rate_limit(rate);
        let options = EngineOptions {
            poll_interval: Duration::from_secs(1),
            ..EngineOptions::default()
        };
        let probe = probe(&self.hosted.emu)?;
        match cache {
            Cache::None => {
                let engine = Engine::new(kms.clone(), probe, "us-east-1", options);
                self.measure_creates(args, &engine, &kms, cache, rate).await
            }
            Cache::Shared(ttl) => {
                let engine = Engine::new(
                    DescribeCache::new(kms.clone(), ttl),
                    probe,
                    "us-east-1",
                    options,
                );
                self.measure_creates(args, &engine, &kms, cache, rate).await
            }
        }
    }

    async fn measure_creates<K: KeyStores, P: crate::xks::ProxyProbe>(
        &self,
        args: &BenchArgs,
        engine: &Engine<K, P>,
        kms: &AwsKeyStores,
        cache: Cache,
        rate: f64,
    ) -> anyhow::Result<Throughput> {
        let n = self.resources.len();
        self.control().reset_stats();
        let started = Instant::now();
        let outcomes = self.reconcile_all(engine, args.concurrency.max(1)).await;
        let elapsed = started.elapsed().as_secs_f64();
        let failed = outcomes
            .iter()
            .filter(|o| !matches!(o, Ok(Outcome::InSync)))
            .count();
        let stats = self.control().operation_stats();
        let calls: std::collections::BTreeMap<String, u64> = stats
            .iter()
            .map(|(op, s)| (op.clone(), s.requests))
            .collect();
        let throttled_by_kms = stats.values().map(|s| s.throttled).sum();
        let seen = kms.stats();
        let throttles_seen_by_engine = seen
            .calls
            .iter()
            .filter(|((_, outcome), _)| outcome == "ThrottlingException")
            .map(|(_, c)| c)
            .sum();
        let describes = calls.get("DescribeCustomKeyStores").copied().unwrap_or(0);
        let quota_minimum_s =
            (n as f64 - KMS_BURST).max(0.0) / KMS_QUOTA_PER_SECOND + self.transition.as_secs_f64();
        Ok(Throughput {
            config: format!("{}, client {rate}/s", cache.label()),
            stores: n,
            concurrency: args.concurrency,
            client_rate: rate,
            elapsed_s: elapsed,
            quota_minimum_s,
            ratio: elapsed / quota_minimum_s,
            client_minimum_s: if rate > 0.0 {
                (n as f64 - 1.0).max(0.0) / rate + self.transition.as_secs_f64()
            } else {
                0.0
            },
            throttled_by_kms,
            throttles_seen_by_engine,
            failed,
            describe_per_store: describes as f64 / n.max(1) as f64,
            calls,
        })
    }

    async fn reconcile_all<K: KeyStores, P: crate::xks::ProxyProbe>(
        &self,
        engine: &Engine<K, P>,
        concurrency: usize,
    ) -> Vec<anyhow::Result<Outcome>> {
        let workers = Arc::new(Semaphore::new(concurrency));
        let tasks = self
            .resources
            .iter()
            .zip(&self.statuses)
            .map(|(res, status)| {
                let workers = workers.clone();
                async move {
                    let mut sink = Sink::default();
                    let deadline = Instant::now() + Duration::from_secs(3600);
                    loop {
                        let outcome = {
                            let _permit = workers.acquire().await?;
                            let mut status = status.lock().await;
                            engine
                                .reconcile(&request(res), &mut status, &mut sink)
                                .await?
                        };
                        match outcome {
                            Outcome::Requeue(delay) if Instant::now() < deadline => {
                                tokio::time::sleep(delay).await;
                            }
                            other => return Ok(other),
                        }
                    }
                }
            });
        futures::future::join_all(tasks).await
    }

    /// One drift check of every store, as the controller does each drift
    /// interval; `cache` is the describe cache's TTL, `None` for none. The
    /// quota is lifted: only the number of calls matters here.
    async fn drift_round(&self, cache: Option<Duration>) -> anyhow::Result<SteadyState> {
        self.control().set_operation_faults(ALL_OPERATIONS, None);
        let kms = AwsKeyStores::for_endpoint(&self.hosted.emu.kms_endpoint(), "us-east-1");
        let engine = Engine::new(
            DescribeCache::new(kms, cache.unwrap_or(Duration::ZERO)),
            probe(&self.hosted.emu)?,
            "us-east-1",
            EngineOptions::default(),
        );
        self.control().reset_stats();
        let outcomes = self.reconcile_all(&engine, 16).await;
        let stats = self.control().operation_stats();
        let describe_calls = stats
            .get("DescribeCustomKeyStores")
            .map_or(0, |s| s.requests);
        let all: u64 = stats.values().map(|s| s.requests).sum();
        Ok(SteadyState {
            stores: self.resources.len(),
            config: match cache {
                Some(ttl) => format!("describe cache, TTL {}s", ttl.as_secs()),
                None => "no describe cache".into(),
            },
            describe_calls,
            other_kms_calls: all - describe_calls,
            in_sync: outcomes
                .iter()
                .filter(|o| matches!(o, Ok(Outcome::InSync)))
                .count(),
        })
    }
}

impl Cost {
    fn between(stores: usize, before: &cpu::Sample, after: &cpu::Sample, wall: Duration) -> Self {
        let emulator = after.emulator_since(before);
        let total = after.process_s - before.process_s;
        Self {
            stores,
            operator_cpu_s: total - emulator,
            emulator_cpu_s: emulator,
            wall_s: wall.as_secs_f64(),
            peak_rss_mib: after.peak_rss_kib as f64 / 1024.0,
            rss_before_mib: before.rss_kib as f64 / 1024.0,
            rss_after_mib: after.rss_kib as f64 / 1024.0,
            how: cpu::HOW.to_string(),
        }
    }
}

impl Machine {
    fn describe() -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu_model = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name"))
            .and_then(|l| l.split_once(':'))
            .map(|(_, m)| m.trim().to_string())
            .unwrap_or_else(|| "unknown".into());
        let memory = std::fs::read_to_string("/proc/meminfo")
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .map_or_else(
                || "unknown".into(),
                |kib| format!("{:.1} GiB", kib / 1024.0 / 1024.0),
            );
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|_| "unknown".into());
        Self {
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
            cpu_model,
            memory,
            kernel,
            build: if cfg!(debug_assertions) {
                "debug"
            } else {
                "release"
            },
        }
    }
}

impl Report {
    fn tables(&self) -> String {
        let mut out = String::new();
        let m = &self.machine;
        out.push_str(&format!(
            "machine: {} CPUs, {}, {}, {} build\n\n",
            m.cpus, m.cpu_model, m.memory, m.build
        ));
        out.push_str("DISRUPTION WINDOW (Disconnect call -> CONNECTED observed, median)\n");
        out.push_str(&format!(
            "{:<42} {:>6} {:>6} {:>5} {:>9} {:>8} {:>9} {:>6} {:>15}\n",
            "config", "poll", "ttl", "runs", "emulated", "window", "overhead", "share", "min..max"
        ));
        for d in &self.disruption {
            out.push_str(&format!(
                "{:<42} {:>5}ms {:>4}ms {:>5} {:>8.2}s {:>7.2}s {:>8.2}s {:>5.0}% {:>6.2}..{:.2}s\n",
                d.config,
                d.poll_interval_ms,
                d.describe_cache_ttl_ms,
                d.runs,
                d.emulated_transitions_s,
                d.window_s,
                d.overhead_s,
                d.overhead_share * 100.0,
                d.overhead_min_s,
                d.overhead_max_s
            ));
        }
        out.push_str("\nTHROUGHPUT (create + connect N stores, KMS quota 5/s per operation)\n");
        out.push_str(&format!(
            "{:<50} {:>6} {:>9} {:>9} {:>6} {:>10} {:>10} {:>10} {:>7} {:>10}\n",
            "config",
            "stores",
            "elapsed",
            "minimum",
            "ratio",
            "min@client",
            "throttled",
            "eng.retry",
            "failed",
            "desc/store"
        ));
        for t in &self.throughput {
            out.push_str(&format!(
                "{:<50} {:>6} {:>8.1}s {:>8.1}s {:>6.2} {:>9.1}s {:>10} {:>10} {:>7} {:>10.1}\n",
                t.config,
                t.stores,
                t.elapsed_s,
                t.quota_minimum_s,
                t.ratio,
                t.client_minimum_s,
                t.throttled_by_kms,
                t.throttles_seen_by_engine,
                t.failed,
                t.describe_per_store
            ));
        }
        out.push_str("\nSTEADY STATE (KMS calls of one drift check of every store)\n");
        out.push_str(&format!(
            "{:<34} {:>6} {:>10} {:>8} {:>8}\n",
            "config", "stores", "describes", "other", "in sync"
        ));
        for s in &self.steady_state {
            out.push_str(&format!(
                "{:<34} {:>6} {:>10} {:>8} {:>8}\n",
                s.config, s.stores, s.describe_calls, s.other_kms_calls, s.in_sync
            ));
        }
        if let Some(c) = &self.cost {
            out.push_str(&format!(
                "\nCOST ({} stores: create + connect + two drift rounds)\noperator CPU {:.2}s, emulator CPU {:.2}s, wall {:.1}s\npeak RSS {:.1} MiB (process, emulator included); RSS {:.1} -> {:.1} MiB\nhow: {}\n",
                c.stores,
                c.operator_cpu_s,
                c.emulator_cpu_s,
                c.wall_s,
                c.peak_rss_mib,
                c.rss_before_mib,
                c.rss_after_mib,
                c.how
            ));
        }
        out
    }

    /// The targets, and whether these figures meet them.
    fn verdicts(&self) -> String {
        let mut out = String::from("## Summary against the targets\n\n");
        let best = self
            .disruption
            .iter()
            .min_by(|a, b| a.overhead_s.total_cmp(&b.overhead_s));
        if let Some(d) = best {
            out.push_str(&format!(
                "- Rotation overhead under 1 s: {} — best {:.2} s ({:.0}% of the window) with {} at {} ms polling.\n",
                if d.overhead_s < 1.0 { "**met**" } else { "**not met**" },
                d.overhead_s,
                d.overhead_share * 100.0,
                d.config,
                d.poll_interval_ms
            ));
        }
        if let Some(d) = self.disruption.iter().find(|d| d.config.contains("`run`")) {
            out.push_str(&format!(
                "- With `xks-operator run`'s defaults (poll {} s, describe cache TTL {} s) the overhead is {:.2} s.\n",
                d.poll_interval_ms / 1000,
                d.describe_cache_ttl_ms / 1000,
                d.overhead_s
            ));
        }
        if let Some(n) = self.throughput.iter().map(|t| t.stores).max() {
            for t in self.throughput.iter().filter(|t| t.stores == n) {
                out.push_str(&format!(
                    "- {n} stores, {}: {:.2} × the quota minimum ({}), {} throttled, {} failed.\n",
                    t.config,
                    t.ratio,
                    if t.ratio <= 1.10 {
                        "within 10%: **met**"
                    } else {
                        "**not within 10%**"
                    },
                    t.throttled_by_kms,
                    t.failed
                ));
            }
        }
        for s in self
            .steady_state
            .iter()
            .filter(|s| !s.config.starts_with("no "))
        {
            out.push_str(&format!(
                "- Drift round over {} stores with the describe cache: {} DescribeCustomKeyStores call(s) (target: one paginated listing per account and Region).\n",
                s.stores, s.describe_calls
            ));
        }
        out.push('\n');
        out
    }

    fn markdown(&self, args: &BenchArgs) -> String {
        let m = &self.machine;
        let mut out = String::from("# Benchmarks\n\n");
        out.push_str(
            "Generated by `ci/bench.sh` (`cargo build --release && ./target/release/xks-operator bench --markdown > BENCHMARKS.md`); do not edit by hand.\n\n",
        );
        out.push_str(&format!(
            "Machine: {} CPUs ({}), {} memory, Linux {}, {} build.\n\nCommand: `{}`\n\n",
            m.cpus, m.cpu_model, m.memory, m.kernel, m.build, self.command
        ));
        out.push_str(&self.verdicts());
        out.push_str("## Disruption window of an endpoint rotation\n\n");
        out.push_str("From the DisconnectCustomKeyStore call to the status write that records CONNECTED, against the emulator's DISCONNECTING + CONNECTING time; overhead = window − emulated time (median, min and max over the runs). KMS quota (5/s per operation) enforced by the emulator, client-side limit ");
        out.push_str(&format!("{}/s.\n\n", args.client_rate));
        out.push_str("| configuration | poll | describe cache TTL | runs | emulated | window | overhead | share of window | overhead min..max | DISCONNECTED → Connect call |\n|---|---|---|---|---|---|---|---|---|---|\n");
        for d in &self.disruption {
            out.push_str(&format!(
                "| {} | {} ms | {} ms | {} | {:.2} s | {:.2} s | **{:.2} s** | {:.0}% | {:.2}..{:.2} s | {:.2} s |\n",
                d.config,
                d.poll_interval_ms,
                d.describe_cache_ttl_ms,
                d.runs,
                d.emulated_transitions_s,
                d.window_s,
                d.overhead_s,
                d.overhead_share * 100.0,
                d.overhead_min_s,
                d.overhead_max_s,
                d.disconnected_to_connect_call_s
            ));
        }
        out.push_str("\nThe emulated transition times are fixed, so every run lands at the same phase between poll ticks and transitions: min and max agree, and the difference between poll intervals mostly reflects that phase (1000 ms polling lines up with 1000 ms transitions). With real, variable transition times expect about half a poll interval per wait (there are two waits) plus about 0.22 s per DescribeCustomKeyStores on the critical path at the 4.5/s client limit (the last column: DISCONNECTED observed → Connect call).\n");
        out.push_str("\n## Create and connect N stores under the KMS quota\n\n");
        out.push_str(&format!("The emulator enforces 5 requests/s per operation (token bucket, burst 5) on every operation. {} reconciles at a time, each calling `Engine::reconcile` and sleeping its requeue delays outside the limit (as the controller does). Minimum = (N − 5) / 5 s + the emulated CONNECTING time: N creates and N connects each need N/5 s of quota and overlap. `throttled` counts ThrottlingExceptions the emulator answered (SDK retries included); `engine retries` those that reached the engine.\n\n", args.concurrency));
        out.push_str("| configuration | stores | elapsed | minimum (KMS 5/s) | ratio | minimum at the client rate | throttled | engine retries | failed | Describe calls per store | calls by operation |\n|---|---|---|---|---|---|---|---|---|---|---|\n");
        for t in &self.throughput {
            let calls: Vec<String> = t
                .calls
                .iter()
                .map(|(op, n)| {
                    format!(
                        "{}: {n}",
                        op.trim_end_matches("CustomKeyStores")
                            .trim_end_matches("CustomKeyStore")
                    )
                })
                .collect();
            out.push_str(&format!(
                "| {} | {} | {:.1} s | {:.1} s | **{:.2}** | {:.1} s | {} | {} | {} | {:.1} | {} |\n",
                t.config,
                t.stores,
                t.elapsed_s,
                t.quota_minimum_s,
                t.ratio,
                t.client_minimum_s,
                t.throttled_by_kms,
                t.throttles_seen_by_engine,
                t.failed,
                t.describe_per_store,
                calls.join(", ")
            ));
        }
        out.push_str("\n## Steady state: KMS calls of one drift check of every store\n\n");
        out.push_str("Every store reconciled once (in sync), counted by the emulator (quota lifted: only the count matters).\n\n| configuration | stores | DescribeCustomKeyStores | other KMS calls | in sync |\n|---|---|---|---|---|\n");
        for s in &self.steady_state {
            out.push_str(&format!(
                "| {} | {} | {} | {} | {} |\n",
                s.config, s.stores, s.describe_calls, s.other_kms_calls, s.in_sync
            ));
        }
        if let Some(c) = &self.cost {
            out.push_str(&format!(
                "\n## Operator cost for {} resources\n\nCreate + connect of {} stores, then two drift rounds, in {:.1} s wall time.\n\n| operator CPU | emulator CPU | peak RSS (process, emulator included) | RSS before → after |\n|---|---|---|---|\n| {:.2} s | {:.2} s | {:.1} MiB | {:.1} → {:.1} MiB |\n\nHow: {}\n",
                c.stores,
                c.stores,
                c.wall_s,
                c.operator_cpu_s,
                c.emulator_cpu_s,
                c.peak_rss_mib,
                c.rss_before_mib,
                c.rss_after_mib,
                c.how
            ));
        }
        out
    }
}
