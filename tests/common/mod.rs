//! Shared harness of the integration tests that drive the engine over real
//! HTTP against the emulator: aws-sdk-kms to the KMS emulator, SigV4-signed
//! proxy calls to the XKS proxy emulator, and a status sink that records
//! every write and can "crash" at any of them.
#![allow(dead_code)] // each test crate uses a different subset

pub mod logs;

use std::collections::HashMap;
use std::time::Duration;

use xks_emulator::config::{
    DEMO_ACCESS_KEY_ID, DEMO_ROTATED_SECRET, DEMO_SECRET, VpcEndpointServiceConfig, demo_proxy,
};
use xks_emulator::xks_proxy::{KeyManagerHealth, ProxyCredentialConfig};
use xks_emulator::{self as emulator, EmulatorConfig, RunningEmulator};
use xks_operator::api::{ExternalKeyStore, ExternalKeyStoreStatus, StepName, StepState};
use xks_operator::cli::settle;
use xks_operator::engine::{Engine, EngineOptions, Outcome, Request, SinkError, StatusSink};
use xks_operator::kms::KeyStores;
use xks_operator::kms::aws::AwsKeyStores;
use xks_operator::model::{ConnectionState, ObservedStore, ProxyCredential};
use xks_operator::xks::probe::{HttpProxyProbe, ProbeOptions};

pub const PRIMARY: &str = "https://xks-primary.example.com";
pub const REPLICA: &str = "https://xks-replica.example.com";
pub const PATH: &str = "/example/kms/xks/v1";
pub const VPC_HOST: &str = "xks-vpc.example.com";
pub const VPC_SERVICE: &str = "com.amazonaws.vpce.us-east-1.vpce-svc-0123456789abcdef0";
/// A port nothing listens on: "unreachable" without leaving the machine.
pub const CLOSED: &str = "http://127.0.0.1:1";

pub struct Harness {
    pub emu: RunningEmulator,
    pub engine: Engine<AwsKeyStores, HttpProxyProbe>,
    pub client: aws_sdk_kms::Client,
}

pub async fn harness() -> Harness {
    harness_with(|_| {}, |kms| kms).await
}

/// A harness whose emulator config and KMS adapter the caller may adjust.
pub async fn harness_with(
    config: impl FnOnce(&mut EmulatorConfig),
    kms: impl FnOnce(AwsKeyStores) -> AwsKeyStores,
) -> Harness {
    let mut cfg = EmulatorConfig {
        connect_delay_ms: 30,
        disconnect_delay_ms: 30,
        ..EmulatorConfig::default()
    };
    config(&mut cfg);
    let emu = emulator::start(cfg, ([127, 0, 0, 1], 0).into())
        .await
        .expect("emulator starts");
    let kms = kms(AwsKeyStores::for_endpoint(&emu.kms_endpoint(), "us-east-1"));
    let client = kms.client().clone();
    let mut resolve: HashMap<String, String> = emu.proxy_resolve_map();
    resolve.insert(VPC_HOST.into(), emu.kms_endpoint());
    resolve.insert("xks-nowhere.example.com".into(), CLOSED.into());
    emu.control().set_resolve("xks-nowhere.example.com", CLOSED);
    let probe = HttpProxyProbe::new(ProbeOptions {
        resolve,
        timeout: Duration::from_secs(2),
        ..ProbeOptions::default()
    })
    .expect("probe");
    let engine = Engine::new(kms, probe, "us-east-1", fast_options());
    Harness {
        emu,
        engine,
        client,
    }
}

pub fn resource(yaml_spec: &str) -> ExternalKeyStore {
    let text = format!(
        "apiVersion: xks-operator.io/v1alpha1\nkind: ExternalKeyStore\nmetadata:\n  name: payments\n  namespace: default\n  generation: 1\nspec:\n{yaml_spec}"
    );
    serde_yaml::from_str(&text).expect("valid test resource")
}

pub fn public(endpoint: &str) -> ExternalKeyStore {
    resource(&format!(
        "  proxy:\n    uriEndpoint: {endpoint}\n    uriPath: {PATH}\n    credentialsSecretRef: {{name: cred}}\n"
    ))
}

pub fn vpc() -> ExternalKeyStore {
    resource(&format!(
        "  proxy:\n    connectivity: VpcEndpointService\n    uriEndpoint: https://{VPC_HOST}\n    uriPath: {PATH}\n    vpcEndpointService: {{name: {VPC_SERVICE}}}\n    credentialsSecretRef: {{name: cred}}\n"
    ))
}

/// Make the VPC endpoint service and its proxy exist.
pub fn offer_vpc_service(h: &Harness) {
    h.emu
        .control()
        .set_vpc_endpoint_service(VpcEndpointServiceConfig {
            name: VPC_SERVICE.into(),
            owner: None,
            private_dns_name: VPC_HOST.into(),
        });
    h.emu
        .control()
        .upsert_proxy(demo_proxy(VPC_HOST))
        .expect("vpc proxy");
    h.emu.control().set_resolve(VPC_HOST, &h.emu.kms_endpoint());
}

pub fn credential() -> ProxyCredential {
    ProxyCredential::new(DEMO_ACCESS_KEY_ID, DEMO_SECRET)
}

pub fn rotated() -> ProxyCredential {
    ProxyCredential::new(DEMO_ACCESS_KEY_ID, DEMO_ROTATED_SECRET)
}

/// Acts on each persisted status, e.g. to break a proxy between two steps.
pub type Hook = Box<dyn FnMut(&ExternalKeyStoreStatus) + Send>;

/// Keeps every status written, like the API server would.
#[derive(Default)]
pub struct Recorder {
    pub writes: Vec<ExternalKeyStoreStatus>,
    /// Fail the write with this index (0-based): a crash at that point.
    pub crash_at: Option<usize>,
    /// Called on every successful write, to act between steps.
    pub hook: Option<Hook>,
}

impl StatusSink for Recorder {
    async fn write(&mut self, status: &ExternalKeyStoreStatus) -> Result<(), SinkError> {
        if self.crash_at == Some(self.writes.len()) {
            self.crash_at = None;
            return Err(SinkError("crash injected".into()));
        }
        self.writes.push(status.clone());
        if let Some(hook) = self.hook.as_mut() {
            hook(status);
        }
        Ok(())
    }
}

impl Recorder {
    /// A recorder that sets the replica proxy's key manager to `health` on
    /// every write for which `when` holds.
    pub fn replica_health_when(
        h: &Harness,
        health: KeyManagerHealth,
        when: impl Fn(&ExternalKeyStoreStatus) -> bool + Send + 'static,
    ) -> Self {
        let fleet = h.emu.fleet().clone();
        Self {
            hook: Some(Box::new(move |s: &ExternalKeyStoreStatus| {
                if when(s) {
                    let _ =
                        fleet.set_key_manager_health("xks-replica.example.com", "ekm-1", health);
                }
            })),
            ..Self::default()
        }
    }

    /// The replica dies (its key manager UNAVAILABLE) once a write shows
    /// `step` Succeeded.
    pub fn replica_dies_after(h: &Harness, step: StepName) -> Self {
        Self::replica_health_when(h, KeyManagerHealth::Unavailable, move |s| {
            s.operation.as_ref().is_some_and(|o| {
                o.steps
                    .iter()
                    .any(|st| st.name == step && st.state == StepState::Succeeded)
            })
        })
    }

    pub fn crashing_at(index: usize) -> Self {
        Self {
            crash_at: Some(index),
            ..Self::default()
        }
    }

    pub fn persisted(&self) -> ExternalKeyStoreStatus {
        self.writes.last().cloned().unwrap_or_default()
    }
}

pub fn request(res: &ExternalKeyStore, credential: ProxyCredential) -> Request<'_> {
    Request::alone(res, Ok(credential))
}

pub async fn converge(
    h: &Harness,
    res: &ExternalKeyStore,
    credential: ProxyCredential,
    status: &mut ExternalKeyStoreStatus,
    sink: &mut Recorder,
) -> Outcome {
    settle_request(h, &request(res, credential), status, sink).await
}

pub async fn settle_request(
    h: &Harness,
    req: &Request<'_>,
    status: &mut ExternalKeyStoreStatus,
    sink: &mut Recorder,
) -> Outcome {
    settle(&h.engine, req, status, sink, Duration::from_secs(30))
        .await
        .expect("settles")
}

pub fn step_names(status: &ExternalKeyStoreStatus) -> Vec<StepName> {
    status
        .operation
        .as_ref()
        .map(|o| o.steps.iter().map(|s| s.name).collect())
        .unwrap_or_default()
}

pub fn all_succeeded(status: &ExternalKeyStoreStatus) -> bool {
    status
        .operation
        .as_ref()
        .is_some_and(|o| o.steps.iter().all(|s| s.state == StepState::Succeeded))
}

pub async fn created(h: &Harness) -> (ExternalKeyStore, ExternalKeyStoreStatus) {
    let res = public(PRIMARY);
    let mut status = ExternalKeyStoreStatus::default();
    let outcome = converge(h, &res, credential(), &mut status, &mut Recorder::default()).await;
    assert_eq!(outcome, Outcome::InSync);
    (res, status)
}

/// KMS's first store is CONNECTED at `endpoint`.
pub async fn assert_connected_at(h: &Harness, endpoint: &str) {
    let store = &kms_view(h).await[0];
    assert_eq!(store.connection_state, ConnectionState::Connected);
    assert_eq!(
        store.proxy.as_ref().map(|p| p.uri_endpoint.as_str()),
        Some(endpoint)
    );
}

pub async fn kms_view(h: &Harness) -> Vec<ObservedStore> {
    h.engine.kms.describe_all().await.expect("describe")
}

pub fn calls(h: &Harness, op: &str) -> u64 {
    h.emu.control().requests(op)
}

/// The proxy side of a rotation: the proxies take the new secret first.
pub fn rotate_on_proxies(h: &Harness) {
    for host in ["xks-primary.example.com", "xks-replica.example.com"] {
        h.emu
            .control()
            .add_credential(
                host,
                ProxyCredentialConfig::new(DEMO_ACCESS_KEY_ID, DEMO_ROTATED_SECRET),
            )
            .expect("rotate on proxy");
    }
}

pub async fn wait_state(h: &Harness, id: &str, want: ConnectionState) {
    for _ in 0..200 {
        if let Ok(Some(s)) = h.engine.kms.describe_by_id(id).await
            && s.connection_state == want
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("store never reached {want}");
}

/// An engine of `h`'s emulator in `region`, acting as `role` (assumed
/// through the emulator's STS) or as the default identity.
pub async fn engine_as(
    h: &Harness,
    region: &str,
    role: Option<&xks_operator::kms::identity::AssumedRole>,
) -> Engine<AwsKeyStores, HttpProxyProbe> {
    let base = xks_operator::kms::aws::emulator_config(&h.emu.kms_endpoint(), region).await;
    let kms = AwsKeyStores::new(&base, region, role)
        .await
        .without_rate_limit();
    Engine::new(kms, probe_of(h), region, fast_options()).in_account(role.and_then(|r| r.account()))
}

/// A proxy probe that reaches `h`'s emulated proxies.
pub fn probe_of(h: &Harness) -> HttpProxyProbe {
    HttpProxyProbe::new(ProbeOptions {
        resolve: h.emu.proxy_resolve_map(),
        timeout: Duration::from_secs(2),
        ..ProbeOptions::default()
    })
    .expect("probe")
}

/// The engine's waits at test speed: polls every 20 ms, retries after
/// 10-100 ms.
pub fn fast_options() -> EngineOptions {
    EngineOptions {
        poll_interval: Duration::from_millis(20),
        retry: xks_operator::retry::RetryPolicy::scaled(
            Duration::from_millis(10),
            Duration::from_millis(100),
        ),
        ..EngineOptions::default()
    }
}

/// Up to `max` passes of `req` (sleeping their requeue delays, as the
/// controller would), until `done` holds; every pass must ask to be called
/// again. Returns whether `done` held.
pub async fn passes_until(
    h: &Harness,
    req: &Request<'_>,
    status: &mut ExternalKeyStoreStatus,
    sink: &mut Recorder,
    max: usize,
    done: impl Fn(&ExternalKeyStoreStatus) -> bool,
) -> bool {
    for _ in 0..max {
        match h.engine.reconcile(req, status, sink).await.expect("pass") {
            Outcome::Requeue(d) => tokio::time::sleep(d).await,
            other => panic!("stopped retrying: {other:?}"),
        }
        if done(status) {
            return true;
        }
    }
    false
}

/// Passes of `req` until its operation is RolledBack.
pub async fn until_rolled_back(
    h: &Harness,
    req: &Request<'_>,
    status: &mut ExternalKeyStoreStatus,
    sink: &mut Recorder,
) {
    let rolled_back = passes_until(h, req, status, sink, 500, |s| {
        s.operation
            .as_ref()
            .is_some_and(|o| o.phase == xks_operator::api::OperationPhase::RolledBack)
    })
    .await;
    assert!(rolled_back, "never rolled back");
}

/// Passes of `req` until a failed Connect is being retried.
pub async fn until_connect_is_retried(
    h: &Harness,
    req: &Request<'_>,
    status: &mut ExternalKeyStoreStatus,
    sink: &mut Recorder,
) {
    let retried = passes_until(h, req, status, sink, 200, |s| {
        s.retry
            .as_ref()
            .is_some_and(|r| r.step == Some(StepName::Connect))
    })
    .await;
    assert!(retried, "the failed Connect was never retried");
}
