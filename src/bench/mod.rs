//! `xks-operator bench`: what users trusting the operator with their keys
//! care about, measured against the embedded emulator.
//!
//! - disruption window of an endpoint rotation (Disconnect call → CONNECTED
//!   observed) against the emulator's own disconnect + connect times;
//! - create-and-connect throughput of N stores under KMS's 5 requests/s
//!   per-operation quota, enforced by the emulator;
//! - DescribeCustomKeyStores calls of one drift round over N stores;
//! - CPU and memory of the operator side for the largest N;
//! - with `--soak`, a longer run under random changes, faults and crashes
//!   (see [`soak`]).
//!
//! The emulator runs beside it as a child process (this binary's
//! `emulator` command), so the operator's CPU and memory are this
//! process's own (see [`cpu`]).

pub mod accounts;
mod cpu;
mod emulator_process;
mod report;
pub mod soak;

use crate::api::{ExternalKeyStore, ExternalKeyStoreStatus, StepName, StepState};
use crate::controller::describe_cache::DescribeCache;
use crate::engine::{Engine, EngineOptions, Outcome, Request, SinkError, StatusSink};
use crate::kms::KeyStores;
use crate::kms::aws::AwsKeyStores;
use crate::model::ProxyCredential;
use crate::xks::probe::{HttpProxyProbe, ProbeOptions};
use anyhow::{Context, bail};
use emulator_process::EmulatorProcess;
use serde::Serialize;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{Mutex, Semaphore};
use xks_emulator::EmulatorConfig;
use xks_emulator::config::{DEMO_ACCESS_KEY_ID, DEMO_SECRET, DEMO_URI_PATH};
use xks_emulator::faults::{ALL_OPERATIONS, OperationFaults, RateLimit};
use xks_emulator::xks_proxy::ProxyConfig as EmulatedProxy;

/// KMS's request quota per custom-key-store operation, account and Region.
const KMS_QUOTA_PER_SECOND: f64 = 5.0;
/// The token bucket of KMS (and of the emulator) starts full.
const KMS_BURST: f64 = 5.0;
const PRIMARY: &str = "https://xks-primary.example.com";
/// What `--only` can name.
const PARTS: [&str; 5] = [
    "disruption",
    "throughput",
    "shared-quota",
    "accounts",
    "soak",
];
/// The share of the 5/s quota other callers leave in the shared-quota run.
const SHARED_QUOTA_LEFT: f64 = 3.0;
const SHARED_QUOTA_MAX_STORES: usize = 100;
/// Default length of `--only soak` without `--soak`.
const DEFAULT_SOAK: Duration = Duration::from_secs(120);
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
    /// Reconciles running at the same time in the throughput run (as
    /// `run`'s `--concurrency`).
    #[arg(long, default_value_t = crate::controller::DEFAULT_CONCURRENCY.into())]
    pub concurrency: usize,
    /// Client-side calls per second per KMS operation (as `run`'s
    /// `--kms-rate-limit`).
    #[arg(long, default_value_t = crate::kms::aws::DEFAULT_RATE_PER_SECOND)]
    pub client_rate: f64,
    /// Run only these parts (disruption, throughput, shared-quota,
    /// accounts, soak);
    /// default all but soak, which runs when `--soak` is given.
    #[arg(long, value_delimiter = ',')]
    pub only: Option<Vec<String>>,
    /// Also run the soak for this long (e.g. 30s, 10m): random changes,
    /// KMS and proxy faults and crashes, then convergence checks.
    #[arg(long, value_parser = crate::controller::parse_duration)]
    pub soak: Option<Duration>,
    /// Stores in the soak.
    #[arg(long, default_value_t = 8)]
    pub soak_stores: usize,
    /// Seed of the soak's random choices (default: from the clock; the
    /// report prints it so a run can be repeated).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Throughput without the describe cache only up to this many stores
    /// (it costs about one second per store).
    #[arg(long, default_value_t = 10)]
    pub direct_max: usize,
}

struct Plan {
    sizes: Vec<usize>,
    runs: usize,
    transition: Duration,
    poll_sweep: bool,
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
            // More poll intervals of the tuned configuration.
            poll_sweep: !self.quick,
        }
    }
}

#[derive(Serialize)]
pub struct Report {
    pub machine: Machine,
    pub command: String,
    /// Client-side calls per second per KMS operation.
    pub client_rate: f64,
    /// Reconciles at a time in the throughput runs.
    pub concurrency: usize,
    pub disruption: Vec<Disruption>,
    pub throughput: Vec<Throughput>,
    /// Throughput when KMS throttles below the client's rate.
    pub shared_quota: Vec<Throughput>,
    pub steady_state: Vec<SteadyState>,
    /// 3 accounts × 2 Regions from one operator.
    pub accounts: Option<accounts::AccountsReport>,
    pub cost: Option<Cost>,
    pub soak: Option<soak::SoakReport>,
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
    /// Emulated DISCONNECTING + CONNECTING time (median over the runs,
    /// which spread it over one poll interval).
    pub emulated_transitions_s: f64,
    /// Median, Disconnect call → CONNECTED observed.
    pub window_s: f64,
    /// Median of window − emulated time: what the operator adds.
    pub overhead_s: f64,
    /// Median of overhead / window.
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
    /// Calls per second per operation KMS let through.
    pub kms_quota: f64,
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
    /// Of the operator (the bench process) alone.
    pub peak_rss_mib: f64,
    pub emulator_peak_rss_mib: f64,
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
        client_rate: args.client_rate,
        concurrency: args.concurrency,
        disruption: Vec::new(),
        throughput: Vec::new(),
        shared_quota: Vec::new(),
        steady_state: Vec::new(),
        accounts: None,
        cost: None,
        soak: None,
    };

    let wanted = |part: &str| {
        args.only
            .as_ref()
            .is_none_or(|o| o.iter().any(|p| p == part))
    };
    if let Some(parts) = &args.only
        && let Some(unknown) = parts.iter().find(|p| !PARTS.contains(&p.as_str()))
    {
        bail!(
            "unknown part {unknown:?} in --only: expected some of {}",
            PARTS.join(", ")
        );
    }
    let run_defaults = crate::controller::Settings::default();
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
        if plan.poll_sweep {
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
        }
        progress(&args, "disruption window, `run` defaults");
        report.disruption.push(
            disruption(
                &args,
                &plan,
                "`run` defaults",
                run_defaults.engine.poll_interval,
                run_defaults.describe_cache_ttl,
            )
            .await?,
        );
    }
    let largest = plan.sizes.iter().copied().max().unwrap_or(0);
    for &n in plan.sizes.iter().filter(|_| wanted("throughput")) {
        let ttl = run_defaults.describe_cache_ttl;
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
            let fleet = Fleet::start(n, plan.transition, KMS_QUOTA_PER_SECOND).await?;
            let before = (cpu::sample(None), cpu::sample(Some(fleet.emu.pid())));
            let started = Instant::now();
            report
                .throughput
                .push(fleet.create_all(&args, cache, rate, Retry::Once).await?);
            if i == last {
                progress(&args, &format!("steady state, {n} stores"));
                report.steady_state.push(fleet.drift_round(None).await?);
                report
                    .steady_state
                    .push(fleet.drift_round(Some(Duration::from_secs(10))).await?);
                if n == largest {
                    let after = (cpu::sample(None), cpu::sample(Some(fleet.emu.pid())));
                    report.cost = Some(Cost::between(n, before, after, started.elapsed()));
                }
            }
            fleet.stop().await;
        }
    }
    if wanted("shared-quota") && !args.quick {
        // Other callers take part of the account's quota: KMS leaves this
        // operator 3 of its 5 calls per second, unknown to it.
        let n = plan
            .sizes
            .iter()
            .copied()
            .filter(|&n| n <= SHARED_QUOTA_MAX_STORES)
            .max()
            .unwrap_or(SHARED_QUOTA_MAX_STORES);
        for retry in [Retry::Standard, Retry::Adaptive, Retry::Once] {
            progress(&args, &format!("shared quota, {n} stores, {retry:?} retry"));
            let fleet = Fleet::start(n, plan.transition, SHARED_QUOTA_LEFT).await?;
            let cache = Cache::Shared(run_defaults.describe_cache_ttl);
            report.shared_quota.push(
                fleet
                    .create_all(&args, cache, args.client_rate, retry)
                    .await?,
            );
            fleet.stop().await;
        }
    }

    if wanted("accounts") {
        let per_scope = if args.quick { 2 } else { 6 };
        progress(
            &args,
            &format!("3 accounts × 2 Regions, {per_scope} stores each"),
        );
        report.accounts = Some(accounts::run(per_scope, args.concurrency).await?);
    }

    let soak_for = args.soak.or_else(|| {
        args.only
            .as_ref()
            .is_some_and(|o| o.iter().any(|p| p == "soak"))
            .then_some(DEFAULT_SOAK)
    });
    if let Some(duration) = soak_for {
        let seed = args.seed.unwrap_or_else(rand::random);
        progress(
            &args,
            &format!(
                "soak, {} stores, {duration:?}, seed {seed}",
                args.soak_stores
            ),
        );
        report.soak = Some(soak::run(duration, args.soak_stores, seed).await?);
    }

    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else if args.markdown {
        print!("{}", report.markdown());
    } else {
        print!("{}", report.text());
    }
    if let Some(a) = report.accounts.as_ref().filter(|a| !a.one_listing_each()) {
        bail!(
            "a drift round over several accounts cost more than one listing per account and Region, or left a store out of sync: {:?}",
            a.scopes
                .iter()
                .map(|s| (&s.account, &s.region, s.listings, s.in_sync))
                .collect::<Vec<_>>()
        );
    }
    // A failed create or connect is a correctness problem, not a figure.
    let failed: usize = report.throughput.iter().map(|t| t.failed).sum();
    if failed > 0 {
        bail!("{failed} stores did not reach CONNECTED in the throughput runs");
    }
    if let Some(soak) = report.soak.as_ref().filter(|s| !s.violations.is_empty()) {
        bail!(
            "the soak found {} violation(s): {}",
            soak.violations.len(),
            soak.violations.join("; ")
        );
    }
    Ok(())
}

fn progress(args: &BenchArgs, what: &str) {
    if !args.json {
        eprintln!("bench: {what}...");
    }
}

/// Faults of every operation that enforce `per_second` calls, with KMS's
/// burst, and nothing else.
fn quota_faults(per_second: f64) -> OperationFaults {
    OperationFaults {
        rate_limit: Some(RateLimit {
            per_second,
            burst: Some(KMS_BURST),
        }),
        ..OperationFaults::default()
    }
}

/// An emulator for `stores` stores and no proxies yet, whose stores spend
/// `transition` CONNECTING and DISCONNECTING, under a quota of `per_second`.
fn fleet_config(stores: usize, transition: Duration, per_second: f64) -> EmulatorConfig {
    let mut config = EmulatorConfig {
        connect_delay_ms: transition.as_millis() as u64,
        disconnect_delay_ms: transition.as_millis() as u64,
        max_custom_key_stores: stores,
        proxies: Vec::new(),
        ..EmulatorConfig::default()
    };
    rate_limited(&mut config, per_second);
    config
}

/// The emulator enforces `per_second` calls per operation, KMS's burst.
fn rate_limited(config: &mut EmulatorConfig, per_second: f64) {
    config
        .faults
        .insert(ALL_OPERATIONS.to_string(), quota_faults(per_second));
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
    Request::alone(res, Ok(credential()))
}

fn probe(emu: &EmulatorProcess) -> anyhow::Result<HttpProxyProbe> {
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
    rate_limited(&mut emulated, KMS_QUOTA_PER_SECOND);
    let emu = EmulatorProcess::spawn(&emulated).await?;
    let kms = AwsKeyStores::for_endpoint(&emu.kms_endpoint(), "us-east-1")
        .with_rate_limit(args.client_rate)
        .with_max_attempts(1);
    let engine = Engine::new(
        DescribeCache::new(kms, cache_ttl),
        probe(&emu)?,
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
    let mut overheads = Vec::new();
    let mut windows = Vec::new();
    let mut gaps = Vec::new();
    let mut emulated = Vec::new();
    let mut shares = Vec::new();
    for run in 0..plan.runs {
        // Transition times spread over one poll interval around the
        // nominal one, so that the runs land at evenly spread phases of the
        // poll ticks, as real transitions of varying length do.
        let phase = poll.mul_f64((run as f64 + 0.5) / plan.runs as f64);
        let transition = plan.transition.saturating_sub(poll / 2) + phase;
        emu.set_transition_delays(transition).await?;
        let expected = transition * 2;
        emulated.push(expected.as_secs_f64());
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
        let window = end.duration_since(start).as_secs_f64();
        let overhead = window - expected.as_secs_f64();
        windows.push(window);
        overheads.push(overhead);
        shares.push(if window > 0.0 { overhead / window } else { 0.0 });
        gaps.push(call.duration_since(down).as_secs_f64());
    }
    emu.stop().await;
    let window = median(&windows);
    let overhead = median(&overheads);
    Ok(Disruption {
        config: config.to_string(),
        poll_interval_ms: poll.as_millis() as u64,
        describe_cache_ttl_ms: cache_ttl.as_millis() as u64,
        runs: plan.runs,
        emulated_transitions_s: median(&emulated),
        window_s: window,
        overhead_s: overhead,
        overhead_share: median(&shares),
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

/// The SDK retry mode of the operator's KMS client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Retry {
    /// Each call sent once; the engine's retry policy retries: `run`'s.
    Once,
    /// The SDK retries throttles itself, never slows down by itself.
    Standard,
    /// The SDK retries and slows the client down after a throttle.
    Adaptive,
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
    emu: EmulatorProcess,
    resources: Vec<ExternalKeyStore>,
    statuses: Vec<Mutex<ExternalKeyStoreStatus>>,
    transition: Duration,
    /// Calls per second per operation the emulator lets through.
    quota: f64,
}

impl Fleet {
    async fn start(n: usize, transition: Duration, quota: f64) -> anyhow::Result<Self> {
        let mut config = fleet_config(n, transition, quota);
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
            emu: EmulatorProcess::spawn(&config).await?,
            statuses: (0..n)
                .map(|_| Mutex::new(ExternalKeyStoreStatus::default()))
                .collect(),
            resources,
            transition,
            quota,
        })
    }

    async fn stop(self) {
        self.emu.stop().await;
    }

    /// Every resource reconciled until it settles, `concurrency` at a
    /// time, sleeping requeue delays outside the limit like the controller.
    async fn create_all(
        &self,
        args: &BenchArgs,
        cache: Cache,
        rate: f64,
        retry: Retry,
    ) -> anyhow::Result<Throughput> {
        let mut kms =
            AwsKeyStores::for_endpoint(&self.emu.kms_endpoint(), "us-east-1").with_rate_limit(rate);
        kms = match retry {
            Retry::Once => kms.with_max_attempts(1),
            Retry::Standard => kms,
            Retry::Adaptive => kms.with_adaptive_retry(),
        };
        // `run`'s poll interval and backoff.
        let options = crate::controller::Settings::default().engine;
        let probe = probe(&self.emu)?;
        match cache {
            Cache::None => {
                let engine = Engine::new(kms.clone(), probe, "us-east-1", options);
                self.measure_creates(args, &engine, &kms, cache, rate, retry)
                    .await
            }
            Cache::Shared(ttl) => {
                let engine = Engine::new(
                    DescribeCache::new(kms.clone(), ttl),
                    probe,
                    "us-east-1",
                    options,
                );
                self.measure_creates(args, &engine, &kms, cache, rate, retry)
                    .await
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
        retry: Retry,
    ) -> anyhow::Result<Throughput> {
        let n = self.resources.len();
        self.emu.reset_stats().await?;
        let started = Instant::now();
        let outcomes = self.reconcile_all(engine, args.concurrency.max(1)).await;
        let elapsed = started.elapsed().as_secs_f64();
        let failed = outcomes
            .iter()
            .filter(|o| !matches!(o, Ok(Outcome::InSync)))
            .count();
        let stats = self.emu.operation_stats().await?;
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
            (n as f64 - KMS_BURST).max(0.0) / self.quota + self.transition.as_secs_f64();
        let retry_label = match retry {
            Retry::Once => "",
            Retry::Standard => ", SDK standard retry",
            Retry::Adaptive => ", SDK adaptive retry",
        };
        Ok(Throughput {
            config: format!("{}, client {rate}/s{retry_label}", cache.label()),
            kms_quota: self.quota,
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
        self.emu.set_operation_faults(ALL_OPERATIONS, None).await?;
        let kms = AwsKeyStores::for_endpoint(&self.emu.kms_endpoint(), "us-east-1");
        let engine = Engine::new(
            DescribeCache::new(kms, cache.unwrap_or(Duration::ZERO)),
            probe(&self.emu)?,
            "us-east-1",
            EngineOptions::default(),
        );
        self.emu.reset_stats().await?;
        let outcomes = self.reconcile_all(&engine, 16).await;
        let stats = self.emu.operation_stats().await?;
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
    /// From (operator, emulator) samples before and after.
    fn between(
        stores: usize,
        before: (cpu::Sample, cpu::Sample),
        after: (cpu::Sample, cpu::Sample),
        wall: Duration,
    ) -> Self {
        let mib = |kib: u64| kib as f64 / 1024.0;
        Self {
            stores,
            operator_cpu_s: after.0.cpu_s - before.0.cpu_s,
            emulator_cpu_s: after.1.cpu_s - before.1.cpu_s,
            wall_s: wall.as_secs_f64(),
            peak_rss_mib: mib(after.0.peak_rss_kib),
            emulator_peak_rss_mib: mib(after.1.peak_rss_kib),
            rss_before_mib: mib(before.0.rss_kib),
            rss_after_mib: mib(after.0.rss_kib),
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
