//! What on-call people see of a store, from a real run: the controller
//! (kube-runtime, the mocked API server of `support`), aws-sdk-kms against
//! the KMS emulator and the SigV4 proxy probe against its XKS proxies.
//!
//! - the proxy health watch: `status.proxyHealth`, the `ProxyHealthy`
//!   condition and its words, one Event per transition, no status write
//!   while nothing changes, and the metrics, as key managers turn DEGRADED
//!   and UNAVAILABLE and the proxy stops answering;
//! - `/metrics` after a run with a rotation, a FAILED store and a stall
//!   holds every metric the alert rules and the Grafana dashboard query
//!   (read from ci/monitoring/xks-operator.rules.yaml and the chart's
//!   dashboard), so renaming a metric cannot silently break them.

mod support;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use support::*;
use xks_emulator::xks_proxy::{
    KeyManagerConfig, KeyManagerHealth, ProxyCredentialConfig, ProxyFaults,
};
use xks_emulator::{self as emulator, EmulatorConfig, RunningEmulator};
use xks_operator::api::{ExternalKeyStore, ExternalKeyStoreStatus};
use xks_operator::controller::metrics::Metrics;
use xks_operator::controller::{
    Backend, Context, Settings, controller_for, error_policy, reconcile,
};
use xks_operator::kms::aws::AwsKeyStores;
use xks_operator::kms::identity::AssumedRole;
use xks_operator::model::ConnectionState;
use xks_operator::xks::probe::{HttpProxyProbe, ProbeOptions};

const PRIMARY_HOST: &str = "xks-primary.example.com";
const REPLICA_HOST: &str = "xks-replica.example.com";
const PROXY_PATH: &str = "/example/kms/xks/v1";
const STORE: &str = r#"namespace="default",name="payments",account="",region="us-east-1""#;

/// aws-sdk-kms and the HTTPS probe, pointed at the emulator.
struct EmulatorBackend {
    kms: AwsKeyStores,
    probe: HttpProxyProbe,
}

impl Backend for EmulatorBackend {
    type Kms = AwsKeyStores;
    type Probe = HttpProxyProbe;
    async fn key_stores(&self, _region: &str, _role: Option<&AssumedRole>) -> AwsKeyStores {
        self.kms.clone()
    }
    fn probe(&self) -> HttpProxyProbe {
        self.probe.clone()
    }
    fn default_region(&self) -> Option<String> {
        Some("us-east-1".into())
    }
}

/// A TCP port that forwards to the emulator until it is closed: the
/// operator's own way to the proxy, which a test can cut (a closed port)
/// while KMS still reaches the proxy.
struct Forwarder {
    addr: SocketAddr,
    tasks: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>>,
}

impl Forwarder {
    async fn to(target: SocketAddr) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let tasks: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>> = Arc::default();
        let accepted = tasks.clone();
        let accept = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let conn = tokio::spawn(async move {
                    if let Ok(mut out) = tokio::net::TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut out).await;
                    }
                });
                accepted.lock().unwrap().push(conn);
            }
        });
        tasks.lock().unwrap().push(accept);
        Self { addr, tasks }
    }

    /// Nothing listens any more, and open connections are cut.
    fn close(&self) {
        for task in self.tasks.lock().unwrap().drain(..) {
            task.abort();
        }
    }
}

struct Run {
    emu: RunningEmulator,
    api: ApiServer,
    _ctx: Arc<Context<EmulatorBackend>>,
    metrics: Arc<Metrics>,
    forwarder: Forwarder,
    kms: AwsKeyStores,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Run {
    /// The operator on `default/payments` at the primary proxy (plus
    /// `spec_extra`), checking proxy health every `interval`. The primary
    /// has two key managers, ekm-1 and ekm-2.
    async fn start(spec_extra: Value, interval: Duration) -> Self {
        let mut config = EmulatorConfig {
            connect_delay_ms: 30,
            disconnect_delay_ms: 30,
            ..EmulatorConfig::default()
        };
        for proxy in &mut config.proxies {
            if proxy.host == PRIMARY_HOST {
                proxy.key_managers.push(KeyManagerConfig::new("ekm-2"));
            }
        }
        let emu = emulator::start(config, ([127, 0, 0, 1], 0).into())
            .await
            .expect("emulator starts");
        let forwarder = Forwarder::to(emu.local_addr()).await;
        let mut resolve = emu.proxy_resolve_map();
        resolve.insert(PRIMARY_HOST.into(), format!("http://{}", forwarder.addr));
        let probe = HttpProxyProbe::new(ProbeOptions {
            resolve,
            timeout: Duration::from_millis(500),
            ..ProbeOptions::default()
        })
        .expect("probe");
        // A low client-side rate so that some calls wait for it (the
        // rate-limited counter is one of the dashboard's).
        let kms = AwsKeyStores::for_endpoint(&emu.kms_endpoint(), "us-east-1").with_rate_limit(4.0);
        let mut spec = json!({
            "region": "us-east-1",
            "proxy": {
                "uriEndpoint": format!("https://{PRIMARY_HOST}"),
                "uriPath": PROXY_PATH,
                "credentialsSecretRef": {"name": "xks-proxy-credential"}
            }
        });
        if let (Some(spec), Value::Object(extra)) = (spec.as_object_mut(), spec_extra) {
            spec.extend(extra);
        }
        let (api, client, api_task) =
            ApiServer::start(resource(spec, json!({}), None), Some(secret()));
        let metrics = Arc::new(Metrics::new());
        metrics.set_kms_source({
            let kms = kms.clone();
            Box::new(move || vec![(String::new(), "us-east-1".to_string(), kms.stats())])
        });
        let mut settings = Settings::default();
        settings.engine.poll_interval = Duration::from_millis(50);
        settings.engine.retry.base = Duration::from_millis(100);
        settings.engine.retry.cap_while_down = Duration::from_millis(400);
        settings.proxy_health_interval = interval;
        let ctx = Arc::new(Context::new(
            client.clone(),
            EmulatorBackend {
                kms: kms.clone(),
                probe,
            },
            metrics.clone(),
            settings,
        ));
        // As `run` wires them: this replica leads and is ready.
        ctx.export_store_metrics();
        metrics.set_leader(true);
        metrics.set_ready_source(Box::new(|| true));
        let controller = tokio::spawn(
            controller_for(
                &ctx.cache,
                Api::<ExternalKeyStore>::all(client.clone()),
                Api::<Secret>::all(client),
                2,
            )
            .run(reconcile, error_policy, ctx.clone())
            .for_each(|_| async {}),
        );
        Self {
            emu,
            api,
            _ctx: ctx,
            metrics,
            forwarder,
            kms,
            tasks: vec![api_task, controller],
        }
    }

    fn status(&self) -> ExternalKeyStoreStatus {
        self.api.object().and_then(|o| o.status).unwrap_or_default()
    }

    fn status_json(&self) -> Value {
        serde_json::to_value(self.status()).expect("json")
    }

    async fn wait(&self, what: &str, seconds: u64, mut done: impl FnMut(&Self) -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(seconds);
        while !done(self) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting until {what}; status: {}",
                serde_json::to_string_pretty(&self.status_json()).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn wait_ready(&self, what: &str) {
        self.wait(what, 30, |r| {
            let s = r.status_json();
            condition(&s, "Ready")["status"] == "True"
                && r.api.object().is_some_and(|o| {
                    o.status.and_then(|s| s.observed_generation) == o.metadata.generation
                })
        })
        .await;
    }

    /// (status, reason) of ProxyHealthy.
    fn proxy_healthy(&self) -> (String, String) {
        let s = self.status_json();
        let c = condition(&s, "ProxyHealthy");
        (
            c["status"].as_str().unwrap_or_default().to_string(),
            c["reason"].as_str().unwrap_or_default().to_string(),
        )
    }

    async fn wait_proxy(&self, status: &str, reason: &str) {
        let want = (status.to_string(), reason.to_string());
        self.wait(&format!("ProxyHealthy {status} {reason}"), 15, |r| {
            r.proxy_healthy() == want
        })
        .await;
    }

    /// (type, reason) of the health watch's Events, in order.
    fn health_events(&self) -> Vec<(String, String)> {
        self.api
            .events()
            .into_iter()
            .filter(|e| e["action"] == "ProxyHealthCheck")
            .map(|e| {
                (
                    e["type"].as_str().unwrap_or_default().to_string(),
                    e["reason"].as_str().unwrap_or_default().to_string(),
                )
            })
            .collect()
    }

    fn set_health(&self, host: &str, key_manager: &str, health: KeyManagerHealth) {
        self.emu
            .fleet()
            .set_key_manager_health(host, key_manager, health)
            .expect("known key manager");
    }

    fn metrics_text(&self) -> String {
        self.metrics.render().expect("metrics render")
    }

    /// Nothing the operator sent to the API server, nor /metrics, holds
    /// the secret.
    fn assert_no_secret(&self, extra: &str) {
        for call in self.api.calls() {
            assert!(
                !call.body.to_string().contains(SECRET),
                "{} {} carries the secret",
                call.method,
                call.path
            );
        }
        assert!(!extra.contains(SECRET), "/metrics carries the secret");
    }

    async fn stop(self) {
        for task in &self.tasks {
            task.abort();
        }
        self.forwarder.close();
        self.emu.shutdown().await;
    }
}

fn health_of(status: &Value) -> Vec<(String, String)> {
    status["proxyHealth"]["keyManagers"]
        .as_array()
        .map(|kms| {
            kms.iter()
                .map(|k| {
                    (
                        k["id"].as_str().unwrap_or_default().to_string(),
                        k["health"].as_str().unwrap_or_default().to_string(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

fn pairs(items: &[(&str, &str)]) -> Vec<(String, String)> {
    items
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
}

#[tokio::test]
async fn the_health_watch_follows_the_key_managers_with_one_event_per_transition() {
    let run = Run::start(json!({}), Duration::from_millis(150)).await;
    run.wait_ready("created, connected and Ready").await;
    run.wait_proxy("True", "Healthy").await;
    let s = run.status_json();
    assert_eq!(
        health_of(&s),
        pairs(&[("ekm-1", "ACTIVE"), ("ekm-2", "ACTIVE")])
    );
    assert_eq!(s["proxyHealth"]["fleetSize"], 1, "{s}");
    assert!(s["proxyHealth"]["checkedAt"].is_string(), "{s}");
    assert!(s["proxyHealth"]["proxyVendor"].is_string(), "{s}");
    assert!(
        run.health_events().is_empty(),
        "a healthy first check is no news"
    );
    // kstatus sees a healthy store, whatever ProxyHealthy says.
    assert_eq!(condition(&s, "Reconciling")["status"], "False");

    // One key manager DEGRADED: still healthy (one is ACTIVE), one Warning.
    run.set_health(PRIMARY_HOST, "ekm-2", KeyManagerHealth::Degraded);
    run.wait_proxy("True", "Degraded").await;
    let message = condition(&run.status_json(), "ProxyHealthy")["message"].clone();
    assert!(
        message
            .as_str()
            .unwrap_or_default()
            .contains("ekm-2 DEGRADED"),
        "{message}"
    );
    let text = run.metrics_text();
    for line in [
        format!("xks_operator_proxy_healthy{{{STORE}}} 1"),
        format!(
            "xks_operator_proxy_key_manager_health{{{STORE},key_manager=\"ekm-2\",health=\"DEGRADED\"}} 1"
        ),
        format!(
            "xks_operator_proxy_key_manager_health{{{STORE},key_manager=\"ekm-1\",health=\"ACTIVE\"}} 1"
        ),
    ] {
        assert!(text.contains(&line), "missing {line} in\n{text}");
    }

    // None ACTIVE: not healthy, though KMS still uses the DEGRADED one.
    run.set_health(PRIMARY_HOST, "ekm-1", KeyManagerHealth::Unavailable);
    run.wait_proxy("False", "Degraded").await;
    // All UNAVAILABLE.
    run.set_health(PRIMARY_HOST, "ekm-2", KeyManagerHealth::Unavailable);
    run.wait_proxy("False", "Unavailable").await;
    let text = run.metrics_text();
    assert!(
        text.contains(&format!("xks_operator_proxy_healthy{{{STORE}}} 0")),
        "{text}"
    );
    assert_eq!(
        condition(&run.status_json(), "Ready")["status"],
        "True",
        "the store itself is still CONNECTED in KMS"
    );

    // And back.
    run.set_health(PRIMARY_HOST, "ekm-1", KeyManagerHealth::Active);
    run.set_health(PRIMARY_HOST, "ekm-2", KeyManagerHealth::Active);
    run.wait_proxy("True", "Healthy").await;

    // Many checks later: nothing new, and nothing written.
    let writes = run.api.status_writes();
    let checked = run.metrics_text();
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(
        run.api.status_writes(),
        writes,
        "unchanged checks wrote status"
    );
    let later = run.metrics_text();
    let stamp = |t: &str| {
        t.lines()
            .find(|l| l.starts_with("xks_operator_proxy_health_checked_timestamp_seconds{"))
            .map(str::to_string)
    };
    assert!(stamp(&later).is_some(), "{later}");
    assert_ne!(
        stamp(&checked),
        stamp(&later),
        "the metric shows every check"
    );
    assert_eq!(
        run.health_events(),
        vec![
            ("Warning".into(), "ProxyDegraded".into()),
            ("Warning".into(), "ProxyDegraded".into()),
            ("Warning".into(), "ProxyUnavailable".into()),
            ("Normal".into(), "ProxyHealthy".into()),
        ],
        "one Event per transition: Degraded (True), Degraded (False), Unavailable, Healthy"
    );
    run.assert_no_secret(&later);
    run.stop().await;
}

#[tokio::test]
async fn a_proxy_that_stops_answering_says_why() {
    let run = Run::start(json!({}), Duration::from_millis(150)).await;
    run.wait_ready("created, connected and Ready").await;
    run.wait_proxy("True", "Healthy").await;

    // It closes every connection without answering.
    let faults = ProxyFaults {
        drop_connections: true,
        ..ProxyFaults::default()
    };
    run.emu
        .fleet()
        .set_faults(PRIMARY_HOST, faults)
        .expect("faults");
    run.wait_proxy("False", "Unreachable").await;
    let s = run.status_json();
    let message = condition(&s, "ProxyHealthy")["message"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        message.contains(&format!("https://{PRIMARY_HOST}{PROXY_PATH}"))
            && message.contains("was closed before the proxy answered"),
        "{message}"
    );
    assert!(
        health_of(&s).is_empty(),
        "no key manager health is known: {s}"
    );
    let text = run.metrics_text();
    assert!(
        text.contains(&format!("xks_operator_proxy_healthy{{{STORE}}} 0")),
        "{text}"
    );
    assert!(
        !text.contains("xks_operator_proxy_key_manager_health{"),
        "{text}"
    );

    // Slower than the probe waits: a timeout, in words.
    run.emu
        .fleet()
        .set_faults(
            PRIMARY_HOST,
            ProxyFaults {
                latency_ms: 1500,
                ..ProxyFaults::default()
            },
        )
        .expect("faults");
    run.wait("the timeout is reported", 15, |r| {
        condition(&r.status_json(), "ProxyHealthy")["message"]
            .as_str()
            .is_some_and(|m| m.contains("did not answer in time"))
    })
    .await;
    run.emu
        .fleet()
        .set_faults(PRIMARY_HOST, ProxyFaults::default())
        .expect("faults");
    run.wait_proxy("True", "Healthy").await;

    // The proxy no longer accepts the store's credential: 401, with the
    // access key id (never the secret).
    run.emu
        .fleet()
        .remove_credential(PRIMARY_HOST, AKID)
        .expect("credential");
    run.wait_proxy("False", "CredentialRejected").await;
    let message = condition(&run.status_json(), "ProxyHealthy")["message"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        message.contains("401") && message.contains(AKID),
        "{message}"
    );
    run.emu
        .fleet()
        .add_credential(
            PRIMARY_HOST,
            ProxyCredentialConfig {
                access_key_id: AKID.into(),
                secret_access_key: SECRET.into(),
            },
        )
        .expect("credential");
    run.wait_proxy("True", "Healthy").await;

    // Nothing listens on the port any more.
    run.forwarder.close();
    run.wait_proxy("False", "Unreachable").await;
    let message = condition(&run.status_json(), "ProxyHealthy")["message"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(message.contains("refused the connection"), "{message}");

    assert_eq!(
        run.health_events(),
        vec![
            ("Warning".into(), "ProxyUnreachable".into()),
            ("Normal".into(), "ProxyHealthy".into()),
            ("Warning".into(), "ProxyCredentialRejected".into()),
            ("Normal".into(), "ProxyHealthy".into()),
            ("Warning".into(), "ProxyUnreachable".into()),
        ],
        "the timeout was the same Unreachable: no Event of its own"
    );
    // kstatus: still Ready, not in progress.
    let s = run.status_json();
    assert_eq!(condition(&s, "Ready")["status"], "True", "{s}");
    assert_eq!(condition(&s, "Reconciling")["status"], "False", "{s}");
    run.assert_no_secret(&run.metrics_text());
    run.stop().await;
}

#[tokio::test]
async fn kms_only_stores_are_not_watched() {
    let run = Run::start(
        json!({"proxyChecks": "KmsOnly"}),
        Duration::from_millis(100),
    )
    .await;
    run.wait_ready("created, connected and Ready").await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    let s = run.status_json();
    assert!(s.get("proxyHealth").is_none(), "{s}");
    assert!(condition(&s, "ProxyHealthy").is_null(), "{s}");
    assert!(!run.metrics_text().contains("xks_operator_proxy_healthy{"));
    run.stop().await;
}

// ------------------------------------------------------- the metric contract

/// Every `xks_operator_*` name in the alert rules and the dashboard.
fn queried_names() -> BTreeSet<String> {
    let root = env!("CARGO_MANIFEST_DIR");
    let name = regex::Regex::new(r"xks_operator_[a-z_]+").expect("regex");
    let mut names = BTreeSet::new();
    for file in [
        "ci/monitoring/xks-operator.rules.yaml",
        "charts/xks-operator/dashboards/xks-operator.json",
    ] {
        let text = std::fs::read_to_string(format!("{root}/{file}"))
            .unwrap_or_else(|e| panic!("reading {file}: {e}"));
        let found: Vec<String> = name
            .find_iter(&text)
            .map(|m| m.as_str().to_string())
            .collect();
        assert!(!found.is_empty(), "{file} queries no xks_operator_ metric");
        names.extend(found);
    }
    names
}

/// The metric family of a sample name, per the `# TYPE` lines of `text`
/// (ci/monitoring/metric-names.sh's mapping: counters end in _total,
/// histograms in _bucket, _sum and _count).
fn family_of(sample: &str, text: &str) -> Option<String> {
    let typed = |family: &str, kind: &str| text.contains(&format!("# TYPE {family} {kind}\n"));
    if typed(sample, "gauge") || typed(sample, "counter") || typed(sample, "histogram") {
        return Some(sample.to_string());
    }
    if let Some(f) = sample.strip_suffix("_total")
        && typed(f, "counter")
    {
        return Some(f.to_string());
    }
    for suffix in ["_bucket", "_sum", "_count"] {
        if let Some(f) = sample.strip_suffix(suffix)
            && typed(f, "histogram")
        {
            return Some(f.to_string());
        }
    }
    None
}

/// The sample names of an OpenMetrics text.
fn sample_names(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(str::to_string)
        .collect()
}

#[tokio::test]
async fn metrics_after_a_real_run_hold_every_metric_the_alerts_and_the_dashboard_query() {
    let run = Run::start(json!({}), Duration::from_millis(150)).await;
    // /metrics as Prometheus would scrape it, all along: some series exist
    // only while something is going on (an operation running, a store
    // FAILED).
    let seen: Arc<Mutex<BTreeSet<String>>> = Arc::default();
    let scraper = tokio::spawn({
        let metrics = run.metrics.clone();
        let seen = seen.clone();
        async move {
            loop {
                let text = metrics.render().expect("metrics render");
                assert!(!text.contains(SECRET), "/metrics carries the secret");
                seen.lock().unwrap().extend(sample_names(&text));
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    });

    run.wait_ready("created, connected and Ready").await;
    run.wait_proxy("True", "Healthy").await;

    // A rotation: the endpoint moves to the replica (disconnects the store).
    run.api
        .set_spec(json!({"proxy": {"uriEndpoint": format!("https://{REPLICA_HOST}")}}));
    run.wait_ready("rotated to the replica").await;
    let s = run.status();
    assert_eq!(
        s.proxy.as_ref().map(|p| p.uri_endpoint.as_str()),
        Some(format!("https://{REPLICA_HOST}").as_str())
    );

    // A FAILED store: disconnected on purpose, then connected while the
    // proxy's only key manager is UNAVAILABLE.
    run.api.set_spec(json!({"connectionState": "Disconnected"}));
    run.wait_ready("disconnected as declared").await;
    run.set_health(REPLICA_HOST, "ekm-1", KeyManagerHealth::Unavailable);
    run.api.set_spec(json!({"connectionState": "Connected"}));
    run.wait("KMS reports the store FAILED", 30, |r| {
        r.metrics_text()
            .contains("xks_operator_store_connection_error{")
    })
    .await;
    run.set_health(REPLICA_HOST, "ekm-1", KeyManagerHealth::Active);
    run.wait_ready("recovered and CONNECTED").await;
    assert_eq!(
        run.status().connection_state,
        Some(ConnectionState::Connected)
    );

    // A stall: the credentials Secret disappears.
    run.api.set_secret(None);
    run.wait("stalled on the missing Secret", 15, |r| {
        condition(&r.status_json(), "Stalled")["reason"] == "CredentialSecretInvalid"
    })
    .await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    scraper.abort();

    let text = run.metrics_text();
    let seen = seen.lock().unwrap().clone();
    let mut missing = Vec::new();
    for name in queried_names() {
        if family_of(&name, &text).is_none() {
            missing.push(format!("{name}: no such metric family (# TYPE)"));
        } else if !seen.contains(&name) {
            missing.push(format!("{name}: declared, but no sample during the run"));
        }
    }
    assert!(
        missing.is_empty(),
        "/metrics lacks what the alert rules or the dashboard query:\n{}\n\n{text}",
        missing.join("\n")
    );
    // The run did what the names promise.
    for line in [
        "xks_operator_operations_total{trigger=\"Create\",outcome=\"Succeeded\"} 1",
        "xks_operator_operations_total{trigger=\"Endpoint\",outcome=\"Succeeded\"} 1",
        "xks_operator_operations_total{trigger=\"Disconnect\",outcome=\"Succeeded\"} 1",
        "xks_operator_disruption_seconds_count{account=\"\",region=\"us-east-1\"} 1",
        "xks_operator_reconcile_failures_total{reason=\"CredentialSecretInvalid\"}",
        "xks_operator_leader 1",
        "xks_operator_ready 1",
    ] {
        assert!(text.contains(line), "missing {line} in\n{text}");
    }
    assert!(run.kms.stats().total("ConnectCustomKeyStore") >= 3);
    run.assert_no_secret(&text);
    run.stop().await;
}

#[tokio::test]
async fn a_proxy_that_cannot_be_reached_is_described_in_words() {
    use xks_operator::model::ProxyCredential;
    use xks_operator::xks::{ProxyProbe, ProxyTarget};
    let emu = emulator::start(EmulatorConfig::default(), ([127, 0, 0, 1], 0).into())
        .await
        .expect("emulator starts");
    let target = |endpoint: &str| ProxyTarget {
        uri_endpoint: endpoint.to_string(),
        uri_path: PROXY_PATH.into(),
        region: "us-east-1".into(),
        credential: ProxyCredential::new(AKID, SECRET),
    };
    let probe = |resolve: Vec<(&str, String)>| {
        HttpProxyProbe::new(ProbeOptions {
            resolve: resolve
                .into_iter()
                .map(|(h, u)| (h.to_string(), u))
                .collect(),
            timeout: Duration::from_secs(5),
            ..ProbeOptions::default()
        })
        .expect("probe")
    };

    // A name nobody resolves.
    let err = probe(vec![])
        .health(&target("https://xks-proxy.does-not-exist.invalid"))
        .await
        .expect_err("no such host");
    let words = err.to_string();
    assert!(
        words.contains("host name xks-proxy.does-not-exist.invalid does not resolve (DNS"),
        "{words}"
    );

    // HTTPS to a server that speaks plain HTTP.
    let plain = format!("https://{}", emu.local_addr());
    let err = probe(vec![(PRIMARY_HOST, plain)])
        .health(&target(&format!("https://{PRIMARY_HOST}")))
        .await
        .expect_err("no TLS there");
    let words = err.to_string();
    assert!(
        words.starts_with("TLS handshake with the proxy failed: ")
            && words.contains("does not speak TLS"),
        "{words}"
    );

    // A closed port.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = closed.local_addr().expect("addr");
    drop(closed);
    let err = probe(vec![(PRIMARY_HOST, format!("http://{addr}"))])
        .health(&target(&format!("https://{PRIMARY_HOST}")))
        .await
        .expect_err("nothing listens");
    let words = err.to_string();
    assert!(
        words.contains(&format!("{PRIMARY_HOST} refused the connection")),
        "{words}"
    );
    assert!(!words.contains(SECRET));
    emu.shutdown().await;
}
