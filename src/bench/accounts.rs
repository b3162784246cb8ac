//! `bench --only accounts`: one operator over 3 accounts × 2 Regions, as
//! `run` builds it (an engine per role and Region, each behind its own
//! describe cache, rate limit and adaptive-retry partition; the roles
//! assumed through the emulator's STS). Measured: the KMS calls of a
//! steady-state drift round per account and Region (target: one listing
//! each), and whether KMS throttling every call of one account slows the
//! drift round of the others (target: no).

use super::emulator_process::EmulatorProcess;
use super::report::Table;
use super::{KMS_QUOTA_PER_SECOND, Sink, fleet_config, probe};
use crate::api::{ExternalKeyStore, ExternalKeyStoreStatus};
use crate::controller::describe_cache::DescribeCache;
use crate::engine::{Engine, Outcome, Request};
use crate::kms::aws::AwsKeyStores;
use crate::kms::identity::AssumedRole;
use crate::model::ProxyCredential;
use crate::xks::probe::HttpProxyProbe;
use anyhow::bail;
use serde::Serialize;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{Mutex, Semaphore};
use xks_emulator::config::{
    DEMO_ACCESS_KEY_ID, DEMO_ACCOUNT_ID, DEMO_SECRET, DEMO_URI_PATH, RoleConfig,
};
use xks_emulator::faults::OperationFaults;
use xks_emulator::xks_proxy::ProxyConfig as EmulatedProxy;

const ACCOUNTS: [&str; 3] = [DEMO_ACCOUNT_ID, "222233334444", "333344445555"];
const REGIONS: [&str; 2] = ["us-east-1", "eu-west-1"];
/// The account and Region whose every KMS call is throttled in the
/// isolation run.
const THROTTLED: (&str, &str) = ("222233334444", "us-east-1");

#[derive(Serialize)]
pub struct AccountsReport {
    pub stores_per_scope: usize,
    pub scopes: Vec<ScopeRound>,
    /// Drift round of the other five accounts and Regions, in seconds.
    pub others_round_s: f64,
    /// The same while every KMS call of `throttled` is throttled.
    pub others_round_with_throttling_s: f64,
    pub throttled: String,
    /// ThrottlingExceptions the throttled account and Region answered.
    pub throttles: u64,
}

#[derive(Serialize)]
pub struct ScopeRound {
    pub account: String,
    pub region: String,
    pub stores: usize,
    /// DescribeCustomKeyStores calls of one drift round.
    pub listings: u64,
    pub other_calls: u64,
    pub in_sync: usize,
}

/// One account and Region: its resources and the engine `run` would build.
struct Scope {
    account: &'static str,
    region: &'static str,
    resources: Vec<ExternalKeyStore>,
    statuses: Vec<Mutex<ExternalKeyStoreStatus>>,
}

type ScopeEngine = Engine<DescribeCache<AwsKeyStores>, HttpProxyProbe>;

fn role(account: &str) -> Option<AssumedRole> {
    (account != DEMO_ACCOUNT_ID)
        .then(|| AssumedRole::new(format!("arn:aws:iam::{account}:role/xks-operator"), None))
}

pub async fn run(stores_per_scope: usize, concurrency: usize) -> anyhow::Result<AccountsReport> {
    // The store quota applies per account and Region.
    let mut config = fleet_config(
        stores_per_scope,
        Duration::from_millis(300),
        KMS_QUOTA_PER_SECOND,
    );
    for account in &ACCOUNTS[1..] {
        let arn = format!("arn:aws:iam::{account}:role/xks-operator");
        // The embedded default already serves the second account's role.
        if !config.roles.iter().any(|r| r.arn == arn) {
            config
                .roles
                .push(RoleConfig::new(&arn).trusting(DEMO_ACCOUNT_ID));
        }
    }
    let mut scopes = Vec::new();
    for account in ACCOUNTS {
        for region in REGIONS {
            let mut resources = Vec::new();
            for i in 0..stores_per_scope {
                let host = format!("xks-{account}-{region}-{i}.example.com");
                config.proxies.push(
                    EmulatedProxy::new(host.as_str(), DEMO_URI_PATH)
                        .with_credential(DEMO_ACCESS_KEY_ID, DEMO_SECRET),
                );
                let mut res = super::resource(
                    &format!("s-{account}-{region}-{i}"),
                    &format!("https://{host}"),
                )?;
                res.spec.region = Some(region.to_string());
                res.spec.role_arn = role(account).map(|r| r.arn);
                resources.push(res);
            }
            scopes.push(Scope {
                account,
                region,
                statuses: resources
                    .iter()
                    .map(|_| Mutex::new(ExternalKeyStoreStatus::default()))
                    .collect(),
                resources,
            });
        }
    }
    let emu = EmulatorProcess::spawn(&config).await?;
    let result = measure(&emu, &scopes, stores_per_scope, concurrency).await;
    emu.stop().await;
    result
}

async fn measure(
    emu: &EmulatorProcess,
    scopes: &[Scope],
    stores_per_scope: usize,
    concurrency: usize,
) -> anyhow::Result<AccountsReport> {
    // Create and connect everything.
    eprintln!("bench: accounts: create + connect");
    let created = reconcile(
        scopes,
        &build_engines(emu, scopes).await?,
        concurrency,
        None,
    )
    .await;
    if created.iter().any(|o| !matches!(o, Some(Outcome::InSync))) {
        bail!("not every store of the accounts run reached CONNECTED: {created:?}");
    }

    // A drift round with fresh caches, as after `run`'s drift interval.
    eprintln!("bench: accounts: drift round");
    emu.reset_stats().await?;
    let round = reconcile(
        scopes,
        &build_engines(emu, scopes).await?,
        concurrency,
        None,
    )
    .await;
    let mut rounds = Vec::new();
    for (i, scope) in scopes.iter().enumerate() {
        let stats = emu.operation_stats_in(scope.account, scope.region).await?;
        let listings = stats
            .get("DescribeCustomKeyStores")
            .map_or(0, |s| s.requests);
        let all: u64 = stats.values().map(|s| s.requests).sum();
        rounds.push(ScopeRound {
            account: scope.account.into(),
            region: scope.region.into(),
            stores: scope.resources.len(),
            listings,
            other_calls: all - listings,
            in_sync: round[i * stores_per_scope..(i + 1) * stores_per_scope]
                .iter()
                .filter(|o| matches!(o, Some(Outcome::InSync)))
                .count(),
        });
    }

    // The other scopes' drift round, without and then with one account's
    // every KMS call throttled, all resources sharing the workers as in
    // `run` (the throttled ones keep retrying meanwhile).
    let throttled = scopes
        .iter()
        .position(|s| (s.account, s.region) == THROTTLED)
        .unwrap_or(0);
    eprintln!("bench: accounts: the others' round");
    let engines_now = build_engines(emu, scopes).await?;
    let started = Instant::now();
    reconcile(scopes, &engines_now, concurrency, Some(throttled)).await;
    let others_round_s = started.elapsed().as_secs_f64();

    emu.set_operation_faults_in(
        THROTTLED.0,
        THROTTLED.1,
        "*",
        Some(OperationFaults {
            throttle_next: 1_000_000,
            ..OperationFaults::default()
        }),
    )
    .await?;
    eprintln!("bench: accounts: the others' round, one account throttled");
    let engines_now = build_engines(emu, scopes).await?;
    let started = Instant::now();
    let others = reconcile_while_one_is_throttled(scopes, &engines_now, concurrency, throttled);
    others.await;
    let others_round_with_throttling_s = started.elapsed().as_secs_f64();
    let throttles = emu
        .operation_stats_in(THROTTLED.0, THROTTLED.1)
        .await?
        .values()
        .map(|s| s.throttled)
        .sum();
    Ok(AccountsReport {
        stores_per_scope,
        scopes: rounds,
        others_round_s,
        others_round_with_throttling_s,
        throttled: format!("{} {}", THROTTLED.0, THROTTLED.1),
        throttles,
    })
}

/// The engines `run` would build for these scopes: one per role and
/// Region, each with its own describe cache (`run`'s 10 s TTL).
async fn build_engines(
    emu: &EmulatorProcess,
    scopes: &[Scope],
) -> anyhow::Result<Vec<ScopeEngine>> {
    let options = crate::controller::Settings::default();
    let mut engines = Vec::new();
    for scope in scopes {
        let base = crate::kms::aws::emulator_config(&emu.kms_endpoint(), scope.region).await;
        let role = role(scope.account);
        let kms = AwsKeyStores::new(&base, scope.region, role.as_ref()).await;
        engines.push(
            Engine::new(
                DescribeCache::new(kms, options.describe_cache_ttl),
                probe(emu)?,
                scope.region,
                options.engine.clone(),
            )
            .in_account(Some(scope.account.to_string())),
        );
    }
    Ok(engines)
}

/// Every resource (but those of scope `skip`) reconciled until it settles,
/// `concurrency` passes at a time; the outcome of each, in scope order.
async fn reconcile(
    scopes: &[Scope],
    engines: &[ScopeEngine],
    concurrency: usize,
    skip: Option<usize>,
) -> Vec<Option<Outcome>> {
    let workers = Arc::new(Semaphore::new(concurrency.max(1)));
    let tasks = scopes
        .iter()
        .zip(engines)
        .enumerate()
        .flat_map(|(i, (scope, engine))| {
            let workers = workers.clone();
            scope
                .resources
                .iter()
                .zip(&scope.statuses)
                .map(move |(res, status)| {
                    let workers = workers.clone();
                    async move {
                        if skip == Some(i) {
                            return None;
                        }
                        settle(engine, res, status, &workers, Duration::from_secs(600)).await
                    }
                })
        });
    futures::future::join_all(tasks).await
}

/// The others' round while the resources of `throttled` keep retrying on
/// the same workers; returns when the others are done.
async fn reconcile_while_one_is_throttled(
    scopes: &[Scope],
    engines: &[ScopeEngine],
    concurrency: usize,
    throttled: usize,
) {
    let workers = Arc::new(Semaphore::new(concurrency.max(1)));
    let others = reconcile_on(scopes, engines, &workers, Some(throttled));
    let stuck = futures::future::join_all(
        scopes[throttled]
            .resources
            .iter()
            .zip(&scopes[throttled].statuses)
            .map(|(res, status)| {
                settle(
                    &engines[throttled],
                    res,
                    status,
                    &workers,
                    Duration::from_secs(3600),
                )
            }),
    );
    tokio::select! {
        _ = others => {}
        _ = stuck => {}
    }
}

async fn reconcile_on(
    scopes: &[Scope],
    engines: &[ScopeEngine],
    workers: &Arc<Semaphore>,
    skip: Option<usize>,
) {
    let tasks = scopes
        .iter()
        .zip(engines)
        .enumerate()
        .filter(|(i, _)| Some(*i) != skip)
        .flat_map(|(_, (scope, engine))| {
            scope
                .resources
                .iter()
                .zip(&scope.statuses)
                .map(move |(res, status)| {
                    settle(engine, res, status, workers, Duration::from_secs(600))
                })
        });
    futures::future::join_all(tasks).await;
}

/// Passes of one resource until it stops asking to be called again (or
/// `limit` passes), each holding a worker, requeue delays slept outside.
async fn settle(
    engine: &ScopeEngine,
    res: &ExternalKeyStore,
    status: &Mutex<ExternalKeyStoreStatus>,
    workers: &Semaphore,
    limit: Duration,
) -> Option<Outcome> {
    let deadline = Instant::now() + limit;
    let credential = ProxyCredential::new(DEMO_ACCESS_KEY_ID, DEMO_SECRET);
    let req = Request::alone(res, Ok(credential));
    loop {
        let outcome = {
            let _worker = workers.acquire().await.ok()?;
            let mut status = status.lock().await;
            engine
                .reconcile(&req, &mut status, &mut Sink::default())
                .await
                .ok()?
        };
        match outcome {
            Outcome::Requeue(delay) if Instant::now() < deadline => {
                tokio::time::sleep(delay).await;
            }
            other => return Some(other),
        }
    }
}

impl AccountsReport {
    pub(super) fn table(&self) -> Table {
        Table {
            head: vec![
                "account",
                "Region",
                "stores",
                "listings per drift round",
                "other KMS calls",
                "in sync",
            ],
            rows: self
                .scopes
                .iter()
                .map(|s| {
                    vec![
                        s.account.clone(),
                        s.region.clone(),
                        s.stores.to_string(),
                        s.listings.to_string(),
                        s.other_calls.to_string(),
                        s.in_sync.to_string(),
                    ]
                })
                .collect(),
        }
    }

    pub(super) fn isolation(&self) -> String {
        format!(
            "Drift round of the other five accounts and Regions: {:.2} s; with every KMS call of {} throttled ({} ThrottlingExceptions answered meanwhile): {:.2} s.",
            self.others_round_s,
            self.throttled,
            self.throttles,
            self.others_round_with_throttling_s
        )
    }

    pub(super) fn one_listing_each(&self) -> bool {
        self.scopes
            .iter()
            .all(|s| s.listings == 1 && s.in_sync == s.stores)
    }
}
