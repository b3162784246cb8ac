//! `xks-operator demo`: the operator's engine against the embedded emulator,
//! over real HTTP. Creates and connects the example store, rotates its
//! endpoint to a replica proxy (disconnect → update → health check →
//! reconnect), and shows bad changes being refused, then exits 0.

use super::files::Manifests;
use super::settle;
use super::table::{self, LiveTable};
use crate::api::{ExternalKeyStore, ExternalKeyStoreStatus, OperationPhase};
use crate::engine::{Engine, EngineOptions, Outcome, Request};
use crate::kms::aws::AwsKeyStores;
use crate::model::ConnectionState;
use crate::xks::probe::{HttpProxyProbe, ProbeOptions};
use anyhow::{Context, bail, ensure};
use std::time::Duration;
use xks_emulator::xks_proxy::ProxyConfig;
use xks_emulator::{self as emulator, EmulatorConfig};

const SECRET_YAML: &str = include_str!("../../examples/credentials-secret.yaml");
const STORE_YAML: &str = include_str!("../../examples/public-endpoint.yaml");
const REPLICA: &str = "https://xks-replica.example.com";
const FRESH_HOST: &str = "xks-other-ekm.example.com";
const SETTLE: Duration = Duration::from_secs(60);

pub async fn run() -> anyhow::Result<()> {
    println!("xks-operator demo");
    println!("  An embedded KMS + XKS proxy emulator listens on 127.0.0.1; the operator's engine");
    println!("  talks to it with the real aws-sdk-kms client and SigV4-signed proxy calls.\n");

    let mut manifests = Manifests::default();
    manifests.add_yaml(SECRET_YAML)?;
    manifests.add_yaml(STORE_YAML)?;
    let mut store = manifests
        .stores
        .first()
        .cloned()
        .context("examples/public-endpoint.yaml holds no ExternalKeyStore")?;
    let emu = emulator::start(EmulatorConfig::default(), ([127, 0, 0, 1], 0).into())
        .await
        .context("starting the embedded emulator")?;
    println!("  emulator: KMS at {}", emu.kms_endpoint());
    let region = store
        .spec
        .region
        .clone()
        .unwrap_or_else(|| "us-east-1".into());
    let kms = AwsKeyStores::for_endpoint(&emu.kms_endpoint(), &region);
    let client = kms.client().clone();
    // A third proxy that answers but serves none of the keys: switching to
    // it would strand ciphertext, and the preflight must say so.
    let mut fresh = ProxyConfig::new(FRESH_HOST, "/example/kms/xks/v1");
    if let Ok(c) = manifests.credential_for(&store) {
        fresh = fresh.with_credential(&c.access_key_id, c.expose_secret());
    }
    emu.control()
        .upsert_proxy(fresh)
        .map_err(|e| anyhow::anyhow!("adding the demo's third proxy: {e}"))?;
    emu.control().set_resolve(FRESH_HOST, &emu.kms_endpoint());
    let mut resolve = emu.proxy_resolve_map();
    resolve.insert(FRESH_HOST.to_string(), emu.kms_endpoint());
    let probe = HttpProxyProbe::new(ProbeOptions {
        resolve,
        ..ProbeOptions::default()
    })
    .context("building the proxy HTTP client")?;
    let engine = Engine::new(
        kms,
        probe,
        region,
        EngineOptions {
            poll_interval: Duration::from_millis(100),
            retry: crate::retry::RetryPolicy::scaled(
                Duration::from_millis(100),
                Duration::from_secs(1),
            ),
            ..EngineOptions::default()
        },
    );
    let mut status = ExternalKeyStoreStatus::default();

    println!(
        "\n1. kubectl apply -f examples/credentials-secret.yaml -f examples/public-endpoint.yaml"
    );
    let outcome = apply(&engine, &manifests, &store, &mut status).await?;
    ensure!(
        outcome == Outcome::InSync,
        "the store did not become ready: {outcome:?}"
    );
    summary(&status);
    let id = status
        .key_store_id
        .clone()
        .context("no key store id after create")?;

    let key = client
        .create_key()
        .origin(aws_sdk_kms::types::OriginType::ExternalKeyStore)
        .custom_key_store_id(&id)
        .xks_key_id("demo-key-1")
        .description("xks-operator demo key")
        .send()
        .await
        .context("creating a KMS key in the store")?;
    let key_id = key
        .key_metadata()
        .map(|m| m.key_id().to_string())
        .unwrap_or_default();
    println!("\n   a KMS key lives in the store now: {key_id} (external key demo-key-1)");

    println!(
        "\n2. Endpoint change: spec.proxy.uriEndpoint → {REPLICA} (a replica serving the same keys)"
    );
    store.spec.proxy.uri_endpoint = REPLICA.into();
    store.metadata.generation = Some(2);
    let outcome = apply(&engine, &manifests, &store, &mut status).await?;
    ensure!(
        outcome == Outcome::InSync,
        "the endpoint change did not converge: {outcome:?}"
    );
    summary(&status);
    let at = status.proxy.as_ref().map(|p| p.uri_endpoint.as_str());
    ensure!(
        status.connection_state == Some(ConnectionState::Connected) && at == Some(REPLICA),
        "expected CONNECTED at {REPLICA}, got {:?} at {at:?}",
        status.connection_state
    );

    println!("\n3. Bad changes are refused, and the store stays as it is");
    let mut bad = store.clone();
    bad.spec.proxy.uri_endpoint = format!("{REPLICA}:8443");
    match crate::api::validate::validate_resource(&bad, Some(&store)) {
        Err(problem) => println!("   uriEndpoint with a port → rejected: {problem}"),
        Ok(()) => bail!("a uriEndpoint with a port was accepted"),
    }
    let mut stranded = store.clone();
    stranded.spec.proxy.uri_endpoint = format!("https://{FRESH_HOST}");
    stranded.metadata.generation = Some(3);
    println!(
        "   uriEndpoint → https://{FRESH_HOST} (a healthy proxy, but for another key manager: it lacks demo-key-1):"
    );
    let outcome = apply(&engine, &manifests, &stranded, &mut status).await?;
    ensure!(
        outcome == Outcome::Stalled,
        "expected the change to be refused, got {outcome:?}"
    );
    let phase = status.operation.as_ref().map(|o| o.phase);
    ensure!(
        phase == Some(OperationPhase::Failed),
        "expected a failed operation, got {phase:?}"
    );
    summary(&status);
    let still = crate::engine::observe(&engine.kms, &store, &status)
        .await?
        .context("the store vanished")?;
    ensure!(
        still.connection_state == crate::model::ConnectionState::Connected,
        "the refused change disturbed the store"
    );
    println!(
        "   KMS still reports {} CONNECTED at {}: the store was never disconnected.",
        still.id,
        still.proxy.map(|p| p.uri_endpoint).unwrap_or_default()
    );

    emu.shutdown().await;
    println!(
        "\ndemo finished: created, connected, rotated the endpoint with a health-checked switch, refused bad changes."
    );
    Ok(())
}

async fn apply(
    engine: &Engine<AwsKeyStores, HttpProxyProbe>,
    manifests: &Manifests,
    store: &ExternalKeyStore,
    status: &mut ExternalKeyStoreStatus,
) -> anyhow::Result<Outcome> {
    let mut sink = LiveTable::new(store.metadata.name.clone().unwrap_or_default(), false)
        .start_with(status.clone());
    let request = Request::alone(store, manifests.credential_for(store));
    let outcome = settle(engine, &request, status, &mut sink, SETTLE).await?;
    if let Some(op) = &status.operation {
        println!();
        for line in table::render(op).lines() {
            println!("   {line}");
        }
    }
    Ok(outcome)
}

fn summary(status: &ExternalKeyStoreStatus) {
    let ready = crate::engine::conditions::get(status, crate::engine::conditions::READY);
    println!(
        "   status: keyStoreId={} state={} endpoint={} Ready={} ({})",
        status.key_store_id.as_deref().unwrap_or("-"),
        status
            .connection_state
            .map_or_else(|| "-".to_string(), |s| s.to_string()),
        status
            .proxy
            .as_ref()
            .map_or("-", |p| p.uri_endpoint.as_str()),
        ready.map_or_else(|| "-".to_string(), |c| c.status.to_string()),
        ready.map_or("", |c| c.message.as_str()),
    );
}
