//! The engine against the emulator over real HTTP: aws-sdk-kms to the KMS
//! emulator, SigV4-signed proxy calls to the XKS proxy emulator.

mod common;

use common::*;

use std::time::Duration;

use xks_emulator::config::{
    DEMO_ACCESS_KEY_ID, DEMO_ROTATED_SECRET, DEMO_SECRET, VpcEndpointServiceConfig, demo_proxy,
};
use xks_emulator::xks_proxy::{KeyManagerHealth, ProxyFaults};
use xks_operator::api::{ExternalKeyStoreStatus, OperationPhase, StepName, StepState};
use xks_operator::cli::settle;
use xks_operator::controller::describe_cache::DescribeCache;
use xks_operator::controller::status::without_timestamps;
use xks_operator::engine::conditions;
use xks_operator::engine::{Engine, Outcome, Request};
use xks_operator::kms::aws::AwsKeyStores;
use xks_operator::kms::{CreateStore, KeyStores};
use xks_operator::model::{ConnectionState, Connectivity, ProxyConfig, ProxyCredential};

#[tokio::test]
async fn creates_and_connects_a_new_store() {
    let h = harness().await;
    let (_, status) = created(&h).await;
    assert_eq!(
        step_names(&status),
        vec![StepName::Preflight, StepName::Create, StepName::Connect]
    );
    assert!(all_succeeded(&status));
    assert_eq!(status.connection_state, Some(ConnectionState::Connected));
    assert!(conditions::is_true(&status, conditions::READY));
    let stores = kms_view(&h).await;
    assert_eq!(stores.len(), 1);
    assert_eq!(stores[0].connection_state, ConnectionState::Connected);
    assert_eq!(Some(stores[0].id.clone()), status.key_store_id);
}

#[tokio::test]
async fn adopts_an_existing_store_by_name_without_creating_another() {
    let h = harness().await;
    let id = payments_made_outside_the_operator(&h).await;
    let (_, status) = created(&h).await;
    assert_eq!(status.key_store_id.as_deref(), Some(id.as_str()));
    // The secret of an adopted store is unknown: pushed once, online.
    assert!(step_names(&status).contains(&StepName::Connect));
    assert_eq!(kms_view(&h).await.len(), 1);
    assert_eq!(calls(&h, "CreateCustomKeyStore"), 1);
}

/// A store named "payments" at the primary proxy, made directly in KMS
/// (as by the console): its id.
async fn payments_made_outside_the_operator(h: &Harness) -> String {
    h.engine
        .kms
        .create(&CreateStore {
            name: "payments".into(),
            proxy: ProxyConfig {
                connectivity: Connectivity::PublicEndpoint,
                uri_endpoint: PRIMARY.into(),
                uri_path: PATH.into(),
                vpc_endpoint_service_name: None,
                vpc_endpoint_service_owner: None,
                access_key_id: DEMO_ACCESS_KEY_ID.into(),
            },
            credential: credential(),
        })
        .await
        .expect("a store made outside the operator")
}

/// The describe cache (as `run` uses it) trusts a listing's miss of a
/// name. A store of that name made elsewhere after the listing was taken is
/// found by KMS's answer to the create, and adopted: no second store, no
/// stall.
#[tokio::test]
async fn a_store_made_after_the_listing_was_taken_is_adopted_when_the_create_finds_its_name_taken()
{
    let h = harness().await;
    let kms = DescribeCache::new(
        AwsKeyStores::for_endpoint(&h.emu.kms_endpoint(), "us-east-1"),
        Duration::from_secs(60),
    );
    let cached = Engine::new(kms, probe_of(&h), "us-east-1", fast_options());
    assert!(cached.kms.describe_all().await.expect("listing").is_empty());
    let made_elsewhere = payments_made_outside_the_operator(&h).await;

    let res = public(PRIMARY);
    let mut status = ExternalKeyStoreStatus::default();
    let mut sink = Recorder::default();
    let req = request(&res, credential());
    let outcome = settle(
        &cached,
        &req,
        &mut status,
        &mut sink,
        Duration::from_secs(30),
    )
    .await
    .expect("settles");

    assert_eq!(outcome, Outcome::InSync);
    assert_eq!(
        status.key_store_id.as_deref(),
        Some(made_elsewhere.as_str())
    );
    assert_eq!(kms_view(&h).await.len(), 1);
    assert_eq!(
        calls(&h, "CreateCustomKeyStore"),
        2,
        "the refused create included"
    );
    let adopted = format!("adopted store {made_elsewhere} already in KMS under this name");
    let said = sink.writes.iter().any(|w| {
        w.operation.as_ref().is_some_and(|o| {
            o.steps.iter().any(|st| {
                st.name == StepName::Create
                    && st.state == StepState::Succeeded
                    && st.message.as_deref() == Some(adopted.as_str())
            })
        })
    });
    assert!(said, "no Create step said: {adopted}");
}

#[tokio::test]
async fn rename_is_online() {
    let h = harness().await;
    let (mut res, mut status) = created(&h).await;
    res.spec.key_store_name = Some("payments-eu".into());
    let outcome = converge(
        &h,
        &res,
        credential(),
        &mut status,
        &mut Recorder::default(),
    )
    .await;
    assert_eq!(outcome, Outcome::InSync);
    assert_eq!(step_names(&status), vec![StepName::Update]);
    assert_eq!(kms_view(&h).await[0].name, "payments-eu");
    assert_eq!(calls(&h, "DisconnectCustomKeyStore"), 0);
}

#[tokio::test]
async fn rotated_secret_with_same_access_key_id_is_pushed_online() {
    let h = harness().await;
    let (res, mut status) = created(&h).await;
    let before = status.credential_fingerprint.clone();
    // The demo proxies accept the old and the new secret under one access
    // key id, as a proxy does during a rotation: nothing to change there.
    let rotated = ProxyCredential::new(DEMO_ACCESS_KEY_ID, DEMO_ROTATED_SECRET);
    let outcome = converge(&h, &res, rotated, &mut status, &mut Recorder::default()).await;
    assert_eq!(outcome, Outcome::InSync);
    assert_eq!(
        step_names(&status),
        vec![StepName::Preflight, StepName::Update]
    );
    assert_ne!(status.credential_fingerprint, before);
    assert_eq!(calls(&h, "UpdateCustomKeyStore"), 1);
    assert_eq!(calls(&h, "DisconnectCustomKeyStore"), 0);
    assert_eq!(status.connection_state, Some(ConnectionState::Connected));

    // KMS holds the new secret now: with the old one retired on the
    // proxies, a reconnect still authenticates.
    rotate_on_proxies(&h);
    let id = status.key_store_id.clone().expect("id");
    h.engine.kms.disconnect(&id).await.expect("disconnect");
    wait_state(&h, &id, ConnectionState::Disconnected).await;
    h.engine.kms.connect(&id).await.expect("connect");
    wait_state(&h, &id, ConnectionState::Connected).await;
}

#[tokio::test]
async fn uri_path_change_is_online_and_preflighted() {
    let h = harness().await;
    let (mut res, mut status) = created(&h).await;
    let mut moved = demo_proxy("xks-primary.example.com");
    moved.uri_path = "/tenant-a/kms/xks/v1".into();
    h.emu.control().upsert_proxy(moved).expect("proxy moves");
    res.spec.proxy.uri_path = "/tenant-a/kms/xks/v1".into();
    let outcome = converge(
        &h,
        &res,
        credential(),
        &mut status,
        &mut Recorder::default(),
    )
    .await;
    assert_eq!(outcome, Outcome::InSync);
    assert_eq!(
        step_names(&status),
        vec![StepName::Preflight, StepName::Update]
    );
    let store = &kms_view(&h).await[0];
    assert_eq!(
        store.proxy.as_ref().map(|p| p.uri_path.as_str()),
        Some("/tenant-a/kms/xks/v1")
    );
    assert_eq!(calls(&h, "DisconnectCustomKeyStore"), 0);
}

#[tokio::test]
async fn endpoint_change_disconnects_updates_checks_and_reconnects() {
    let h = harness().await;
    let (mut res, mut status) = created(&h).await;
    res.spec.proxy.uri_endpoint = REPLICA.into();
    let before = status.clone();
    let mut sink = Recorder::default();
    let outcome = converge(&h, &res, credential(), &mut status, &mut sink).await;
    assert_eq!(outcome, Outcome::InSync);
    assert_eq!(
        step_names(&status),
        vec![
            StepName::Preflight,
            StepName::Disconnect,
            StepName::Update,
            StepName::HealthCheck,
            StepName::Connect
        ]
    );
    assert!(all_succeeded(&status));
    assert!(status.operation.as_ref().is_some_and(|o| o.disruptive));
    assert_connected_at(&h, REPLICA).await;
    // Every step that changes KMS was recorded Running (about to call)
    // before it was recorded Succeeded.
    for name in [StepName::Disconnect, StepName::Update, StepName::Connect] {
        let states: Vec<StepState> = sink
            .writes
            .iter()
            .filter_map(|s| s.operation.as_ref())
            .filter_map(|o| o.steps.iter().find(|st| st.name == name))
            .map(|st| st.state)
            .collect();
        let running = states.iter().position(|s| *s == StepState::Running);
        let done = states.iter().position(|s| *s == StepState::Succeeded);
        assert!(
            matches!((running, done), (Some(r), Some(d)) if r < d),
            "{name:?}: {states:?}"
        );
    }
    // At most one status write per step transition (issue 11's budget for
    // the API server: 2 × 5 steps + 1), counting only writes that change
    // something, as the controller's writer does.
    let mut last = without_timestamps(&before);
    let mut changed = 0;
    for write in &sink.writes {
        let write = without_timestamps(write);
        if write != last {
            changed += 1;
            last = write;
        }
    }
    assert!(changed <= 11, "{changed} status changes for one rotation");
}

#[tokio::test]
async fn connectivity_change_to_vpc_and_back() {
    let h = harness().await;
    let (_, mut status) = created(&h).await;
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
    let vpc = resource(&format!(
        "  proxy:\n    connectivity: VpcEndpointService\n    uriEndpoint: https://{VPC_HOST}\n    uriPath: {PATH}\n    vpcEndpointService: {{name: {VPC_SERVICE}}}\n    credentialsSecretRef: {{name: cred}}\n"
    ));
    let outcome = converge(
        &h,
        &vpc,
        credential(),
        &mut status,
        &mut Recorder::default(),
    )
    .await;
    assert_eq!(outcome, Outcome::InSync, "{:?}", status.conditions);
    let store = &kms_view(&h).await[0];
    let proxy = store.proxy.as_ref().expect("xks");
    assert_eq!(proxy.connectivity, Connectivity::VpcEndpointService);
    assert_eq!(
        proxy.vpc_endpoint_service_name.as_deref(),
        Some(VPC_SERVICE)
    );
    assert_eq!(store.connection_state, ConnectionState::Connected);

    let back = public(PRIMARY);
    let outcome = converge(
        &h,
        &back,
        credential(),
        &mut status,
        &mut Recorder::default(),
    )
    .await;
    assert_eq!(outcome, Outcome::InSync, "{:?}", status.conditions);
    let store = &kms_view(&h).await[0];
    let proxy = store.proxy.as_ref().expect("xks");
    assert_eq!(proxy.connectivity, Connectivity::PublicEndpoint);
    assert_eq!(proxy.uri_endpoint, PRIMARY);
    assert_eq!(store.connection_state, ConnectionState::Connected);
}

#[tokio::test]
async fn desired_disconnected_disconnects_and_is_ready() {
    let h = harness().await;
    let (mut res, mut status) = created(&h).await;
    res.spec.connection_state = xks_operator::api::DesiredConnectionState::Disconnected;
    let outcome = converge(
        &h,
        &res,
        credential(),
        &mut status,
        &mut Recorder::default(),
    )
    .await;
    assert_eq!(outcome, Outcome::InSync);
    assert_eq!(step_names(&status), vec![StepName::Disconnect]);
    assert_eq!(
        kms_view(&h).await[0].connection_state,
        ConnectionState::Disconnected
    );
    assert!(conditions::is_true(&status, conditions::READY));
}

#[tokio::test]
async fn failed_store_is_recovered() {
    let h = harness().await;
    let (res, mut status) = created(&h).await;
    let id = status.key_store_id.clone().expect("id");
    // Break the proxy, cycle the connection by hand: KMS marks it FAILED.
    h.emu
        .fleet()
        .set_key_manager_health(
            "xks-primary.example.com",
            "ekm-1",
            KeyManagerHealth::Unavailable,
        )
        .expect("health");
    h.engine.kms.disconnect(&id).await.expect("disconnect");
    wait_state(&h, &id, ConnectionState::Disconnected).await;
    h.engine.kms.connect(&id).await.expect("connect");
    wait_state(&h, &id, ConnectionState::Failed).await;
    h.emu
        .fleet()
        .set_key_manager_health("xks-primary.example.com", "ekm-1", KeyManagerHealth::Active)
        .expect("health");

    let outcome = converge(
        &h,
        &res,
        credential(),
        &mut status,
        &mut Recorder::default(),
    )
    .await;
    assert_eq!(outcome, Outcome::InSync);
    assert_eq!(
        step_names(&status),
        vec![StepName::Disconnect, StepName::Connect]
    );
    assert_eq!(
        kms_view(&h).await[0].connection_state,
        ConnectionState::Connected
    );
}

#[tokio::test]
async fn wrong_credential_is_refused_before_anything_is_created() {
    let h = harness().await;
    let res = public(PRIMARY);
    let wrong = ProxyCredential::new(
        DEMO_ACCESS_KEY_ID,
        "wrongSecretAccessKeyThatTheProxyDoesNotKnow0000",
    );
    let mut status = ExternalKeyStoreStatus::default();
    let outcome = converge(&h, &res, wrong, &mut status, &mut Recorder::default()).await;
    assert_eq!(outcome, Outcome::Stalled);
    let stalled = conditions::get(&status, conditions::STALLED).expect("stalled");
    assert!(stalled.is_true());
    assert_eq!(stalled.reason, "ProxyCredentialRejected");
    assert!(kms_view(&h).await.is_empty(), "no store may be created");
}

/// A new proxy that does not answer (a network blip, a proxy restarting)
/// is a cause that can pass: Preflight is retried with backoff, the store
/// is never disconnected meanwhile, status says it retries and when, and
/// the change completes by itself once the proxy answers.
#[tokio::test]
async fn an_unreachable_new_proxy_is_retried_without_disconnecting_until_it_answers() {
    let h = harness().await;
    let (mut res, mut status) = created(&h).await;
    res.spec.proxy.uri_endpoint = REPLICA.into();
    let dropping = ProxyFaults {
        drop_connections: true,
        ..ProxyFaults::default()
    };
    h.emu
        .control()
        .set_proxy_faults("xks-replica.example.com", dropping)
        .expect("faults");
    let req = request(&res, credential());
    let mut sink = Recorder::default();
    for attempt in 1..=3 {
        let outcome = h
            .engine
            .reconcile(&req, &mut status, &mut sink)
            .await
            .expect("pass");
        assert!(matches!(outcome, Outcome::Requeue(_)), "{outcome:?}");
        let retry = status.retry.clone().expect("the retry is in status");
        assert_eq!(retry.attempts, attempt);
        assert_eq!(retry.step, Some(StepName::Preflight));
        assert_eq!(retry.reason, "ProxyUnreachable");
        assert!(!retry.next_attempt_at.is_empty());
        assert!(conditions::is_true(&status, conditions::RECONCILING));
        assert!(!conditions::is_true(&status, conditions::STALLED));
        assert_connected_at(&h, PRIMARY).await;
    }
    assert_eq!(calls(&h, "DisconnectCustomKeyStore"), 0);

    h.emu
        .control()
        .set_proxy_faults("xks-replica.example.com", ProxyFaults::default())
        .expect("faults cleared");
    let outcome = settle_request(&h, &req, &mut status, &mut sink).await;
    assert_eq!(outcome, Outcome::InSync);
    assert_eq!(status.retry, None);
    assert_connected_at(&h, REPLICA).await;
}

#[tokio::test]
async fn proxy_missing_a_key_of_the_store_is_refused() {
    let h = harness().await;
    let (mut res, mut status) = created(&h).await;
    let id = status.key_store_id.clone().expect("id");
    h.client
        .create_key()
        .origin(aws_sdk_kms::types::OriginType::ExternalKeyStore)
        .custom_key_store_id(&id)
        .xks_key_id("demo-key-2")
        .send()
        .await
        .expect("key");
    h.emu
        .control()
        .remove_key("xks-replica.example.com", "demo-key-2")
        .expect("remove key");
    res.spec.proxy.uri_endpoint = REPLICA.into();
    let outcome = converge(
        &h,
        &res,
        credential(),
        &mut status,
        &mut Recorder::default(),
    )
    .await;
    assert_eq!(outcome, Outcome::Stalled);
    let stalled = conditions::get(&status, conditions::STALLED).expect("stalled");
    assert_eq!(stalled.reason, "KeyContinuityNotProven");
    assert!(
        stalled.message.contains("demo-key-2"),
        "{}",
        stalled.message
    );
    assert_eq!(
        kms_view(&h).await[0].connection_state,
        ConnectionState::Connected
    );
    assert_eq!(calls(&h, "DisconnectCustomKeyStore"), 0);
}

#[tokio::test]
async fn failed_reconnect_rolls_back_to_the_previous_endpoint() {
    let h = harness().await;
    let (mut res, mut status) = created(&h).await;
    res.spec.proxy.uri_endpoint = REPLICA.into();
    // The replica dies right after the operator's health check passed.
    let mut sink = Recorder::replica_dies_after(&h, StepName::HealthCheck);
    let req = request(&res, credential());
    until_rolled_back(&h, &req, &mut status, &mut sink).await;
    let op = status.operation.as_ref().expect("operation");
    let message = op.message.clone().unwrap_or_default();
    assert!(message.contains("XKS_PROXY"), "{message}");
    assert!(message.contains(PRIMARY), "{message}");
    assert_connected_at(&h, PRIMARY).await;
    // A cause that can pass: tried again after a wait, but only through
    // Preflight, which the dead replica fails: the store is not disconnected
    // again, and the resource is Reconciling, not Stalled.
    let disconnects = calls(&h, "DisconnectCustomKeyStore");
    passes_until(&h, &req, &mut status, &mut sink, 30, |_| false).await;
    assert_eq!(calls(&h, "DisconnectCustomKeyStore"), disconnects);
    assert_connected_at(&h, PRIMARY).await;
    assert!(!conditions::is_true(&status, conditions::STALLED));
    assert!(conditions::is_true(&status, conditions::RECONCILING));
}

#[tokio::test]
async fn deletion_honours_each_policy() {
    let h = harness().await;
    let (res, status) = created(&h).await;
    let mut retained = status.clone();
    let request_retain = Request {
        deleting: true,
        ..request(&res, credential())
    };
    let outcome = settle(
        &h.engine,
        &request_retain,
        &mut retained,
        &mut Recorder::default(),
        Duration::from_secs(30),
    )
    .await
    .expect("settles");
    assert_eq!(outcome, Outcome::Released);
    assert_eq!(kms_view(&h).await.len(), 1, "Retain must keep the store");

    let mut res_delete = res.clone();
    res_delete.spec.deletion_policy = xks_operator::api::DeletionPolicy::Delete;
    let mut deleted = status.clone();
    let request_delete = Request {
        deleting: true,
        ..request(&res_delete, credential())
    };
    let outcome = settle(
        &h.engine,
        &request_delete,
        &mut deleted,
        &mut Recorder::default(),
        Duration::from_secs(30),
    )
    .await
    .expect("settles");
    assert_eq!(outcome, Outcome::Released);
    assert!(
        kms_view(&h).await.is_empty(),
        "Delete must delete the store"
    );
}

#[tokio::test]
async fn delete_refused_while_the_store_holds_keys_says_so() {
    let h = harness().await;
    let (mut res, status) = created(&h).await;
    let id = status.key_store_id.clone().expect("id");
    h.client
        .create_key()
        .origin(aws_sdk_kms::types::OriginType::ExternalKeyStore)
        .custom_key_store_id(&id)
        .xks_key_id("demo-key-1")
        .send()
        .await
        .expect("key");
    res.spec.deletion_policy = xks_operator::api::DeletionPolicy::Delete;
    let mut status = status;
    let req = Request {
        deleting: true,
        ..request(&res, credential())
    };
    let outcome = settle(
        &h.engine,
        &req,
        &mut status,
        &mut Recorder::default(),
        Duration::from_secs(30),
    )
    .await
    .expect("settles");
    assert_eq!(outcome, Outcome::Stalled);
    let stalled = conditions::get(&status, conditions::STALLED).expect("stalled");
    assert_eq!(stalled.reason, "StoreHasKeys");
    assert!(
        stalled.message.contains("1 KMS keys"),
        "{}",
        stalled.message
    );
}

/// Every status written and every log line (trace level) is free of the
/// secret, through create, rotation, a refused credential and an endpoint change.
#[tokio::test]
async fn the_secret_never_appears_in_status_or_logs() {
    let (logs, _guard) = logs::Captured::on_this_thread();

    let h = harness().await;
    let mut sink = Recorder::default();
    let mut res = public(PRIMARY);
    let mut status = ExternalKeyStoreStatus::default();
    converge(&h, &res, credential(), &mut status, &mut sink).await;
    rotate_on_proxies(&h);
    let rotated = ProxyCredential::new(DEMO_ACCESS_KEY_ID, DEMO_ROTATED_SECRET);
    converge(&h, &res, rotated.clone(), &mut status, &mut sink).await;
    let wrong = ProxyCredential::new(
        DEMO_ACCESS_KEY_ID,
        "wrongSecretAccessKeyThatTheProxyDoesNotKnow0000",
    );
    res.spec.proxy.uri_endpoint = REPLICA.into();
    converge(&h, &res, wrong, &mut status, &mut sink).await;
    res.metadata.generation = Some(2);
    converge(&h, &res, rotated, &mut status, &mut sink).await;

    let mut everything = String::new();
    for s in &sink.writes {
        everything.push_str(&serde_yaml::to_string(s).expect("yaml"));
    }
    everything.push_str(&logs.text());
    assert!(everything.len() > 1000, "nothing captured");
    for secret in [
        DEMO_SECRET,
        DEMO_ROTATED_SECRET,
        "wrongSecretAccessKeyThatTheProxyDoesNotKnow0000",
    ] {
        assert!(!everything.contains(secret), "secret leaked");
    }
}

/// After the update, the new proxy's key manager goes down: Connect ends
/// FAILED with XKS_PROXY_NOT_REACHABLE, a cause that can pass. Without
/// rollback the operator retries by itself (disconnecting the FAILED store
/// first) and reconnects once the key manager is back.
#[tokio::test]
async fn a_transient_connection_failure_without_rollback_reconnects_by_itself() {
    let h = harness().await;
    let (mut res, mut status) = created(&h).await;
    res.spec.proxy.uri_endpoint = REPLICA.into();
    res.spec.rollback = xks_operator::api::RollbackPolicy::Disabled;
    let mut sink = Recorder::replica_dies_after(&h, StepName::HealthCheck);
    let req = request(&res, credential());
    until_connect_is_retried(&h, &req, &mut status, &mut sink).await;
    let retry = status.retry.clone().expect("the failed Connect is retried");
    assert_eq!(retry.reason, "XksProxyNotReachable");
    assert!(
        retry.last_error.contains("XKS_PROXY_NOT_REACHABLE"),
        "{}",
        retry.last_error
    );
    assert!(!conditions::is_true(&status, conditions::STALLED));

    sink.hook = None;
    h.emu
        .fleet()
        .set_key_manager_health("xks-replica.example.com", "ekm-1", KeyManagerHealth::Active)
        .expect("key manager back");
    let outcome = settle_request(&h, &req, &mut status, &mut sink).await;
    assert_eq!(outcome, Outcome::InSync);
    assert_connected_at(&h, REPLICA).await;
    assert_eq!(
        status.operation.as_ref().map(|o| o.phase),
        Some(OperationPhase::Succeeded)
    );
}

/// A connection failure only a person can fix (the new proxy rejects the
/// credential) stalls at once, naming the ConnectionErrorCode, as before.
#[tokio::test]
async fn a_connection_failure_that_needs_a_person_stalls_with_its_code() {
    let h = harness().await;
    let (mut res, mut status) = created(&h).await;
    res.spec.proxy.uri_endpoint = REPLICA.into();
    res.spec.rollback = xks_operator::api::RollbackPolicy::Disabled;
    let fleet = h.emu.fleet().clone();
    let mut sink = Recorder {
        hook: Some(Box::new(move |s: &ExternalKeyStoreStatus| {
            if s.operation.as_ref().is_some_and(|o| {
                o.steps
                    .iter()
                    .any(|st| st.name == StepName::HealthCheck && st.state == StepState::Succeeded)
            }) {
                let _ = fleet.remove_credential("xks-replica.example.com", DEMO_ACCESS_KEY_ID);
            }
        })),
        ..Recorder::default()
    };
    let outcome = converge(&h, &res, credential(), &mut status, &mut sink).await;
    assert_eq!(outcome, Outcome::Stalled);
    let stalled = conditions::get(&status, conditions::STALLED).expect("stalled");
    assert_eq!(stalled.reason, "InvalidCredentials");
    assert!(
        stalled.message.contains("INVALID_CREDENTIALS"),
        "{}",
        stalled.message
    );
    assert_eq!(status.connection_state, Some(ConnectionState::Failed));
    assert_eq!(status.retry, None);
    assert_eq!(
        status.operation.as_ref().map(|o| o.phase),
        Some(OperationPhase::Failed)
    );
}

#[tokio::test]
async fn deletion_needs_no_credential_and_waits_while_suspended() {
    let h = harness().await;
    let (mut res, status) = created(&h).await;
    res.spec.deletion_policy = xks_operator::api::DeletionPolicy::Delete;
    res.spec.suspend = true;
    // The Secret was pruned together with the resource.
    let missing = Err(xks_operator::credentials::CredentialError::SecretNotFound(
        "default/cred".into(),
    ));
    let mut suspended = status.clone();
    let req = Request {
        deleting: true,
        ..Request::alone(&res, missing.clone())
    };
    let outcome = settle(
        &h.engine,
        &req,
        &mut suspended,
        &mut Recorder::default(),
        Duration::from_secs(30),
    )
    .await
    .expect("settles");
    assert_eq!(outcome, Outcome::Suspended);
    assert_eq!(kms_view(&h).await.len(), 1, "suspended: KMS untouched");

    res.spec.suspend = false;
    let req = Request {
        deleting: true,
        ..Request::alone(&res, missing)
    };
    let mut deleting = status.clone();
    let outcome = settle(
        &h.engine,
        &req,
        &mut deleting,
        &mut Recorder::default(),
        Duration::from_secs(30),
    )
    .await
    .expect("settles");
    assert_eq!(outcome, Outcome::Released);
    assert!(kms_view(&h).await.is_empty(), "deleted without the Secret");
}

/// Under a 5/s quota every DescribeCustomKeyStores counts: a pass waiting on
/// a CONNECTING store describes it once, and its step reuses that answer.
#[tokio::test]
async fn a_pass_waiting_on_kms_describes_the_store_once() {
    let h = harness_with(|c| c.connect_delay_ms = 10_000, |k| k).await;
    let res = public(PRIMARY);
    let mut status = ExternalKeyStoreStatus::default();
    let mut sink = Recorder::default();
    let req = request(&res, credential());
    let mut outcome = h.engine.reconcile(&req, &mut status, &mut sink).await;
    while matches!(outcome, Ok(Outcome::Requeue(_))) && calls(&h, "ConnectCustomKeyStore") == 0 {
        outcome = h.engine.reconcile(&req, &mut status, &mut sink).await;
    }
    assert_eq!(calls(&h, "ConnectCustomKeyStore"), 1, "{outcome:?}");

    let before = calls(&h, "DescribeCustomKeyStores");
    let outcome = h.engine.reconcile(&req, &mut status, &mut sink).await;
    assert!(matches!(outcome, Ok(Outcome::Requeue(_))), "{outcome:?}");
    assert_eq!(status.connection_state, Some(ConnectionState::Connecting));
    assert_eq!(calls(&h, "DescribeCustomKeyStores") - before, 1);
}

/// The new proxy passed Preflight, then fails the health check after the
/// update: connecting to it would fail, and stopping would leave the store
/// disconnected. The operator restores the previous location instead.
#[tokio::test]
async fn a_failed_health_check_after_the_update_rolls_back_and_reconnects() {
    let h = harness().await;
    let (mut res, mut status) = created(&h).await;
    res.spec.proxy.uri_endpoint = REPLICA.into();
    let mut sink = Recorder::replica_dies_after(&h, StepName::Update);
    until_rolled_back(&h, &request(&res, credential()), &mut status, &mut sink).await;
    let op = status.operation.as_ref().expect("operation");
    let state = |name: StepName| op.steps.iter().find(|s| s.name == name).map(|s| s.state);
    assert_eq!(state(StepName::HealthCheck), Some(StepState::Failed));
    // Never connected to the proxy that failed its check.
    assert_eq!(state(StepName::Connect), Some(StepState::Skipped));
    assert_eq!(state(StepName::RollbackConnect), Some(StepState::Succeeded));
    let message = op.message.clone().unwrap_or_default();
    assert!(
        message.contains("HealthCheck failed after the update"),
        "{message}"
    );
    assert_connected_at(&h, PRIMARY).await;
    assert_eq!(
        calls(&h, "ConnectCustomKeyStore"),
        2,
        "create + rollback only"
    );
}

/// The new proxy goes down for a cause that can pass right after the
/// update: Connect fails (XKS_PROXY_NOT_REACHABLE) a few times, the change
/// is rolled back so the store serves its keys from the old proxy, and then,
/// without anyone, the change is tried again after a wait (from Preflight)
/// and goes through once the new proxy is back.
#[tokio::test]
async fn a_rollback_after_failures_that_can_pass_is_tried_again_by_itself() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let h = harness().await;
    let (mut res, mut status) = created(&h).await;
    res.spec.proxy.uri_endpoint = REPLICA.into();
    let fleet = h.emu.fleet().clone();
    let fired = std::sync::Arc::new(AtomicBool::new(false));
    let once = fired.clone();
    let mut sink = Recorder {
        hook: Some(Box::new(move |s: &ExternalKeyStoreStatus| {
            let checked = s.operation.as_ref().is_some_and(|o| {
                o.steps
                    .iter()
                    .any(|st| st.name == StepName::HealthCheck && st.state == StepState::Succeeded)
            });
            if checked && !once.swap(true, Ordering::SeqCst) {
                let _ = fleet.set_key_manager_health(
                    "xks-replica.example.com",
                    "ekm-1",
                    KeyManagerHealth::Unavailable,
                );
            }
        })),
        ..Recorder::default()
    };
    let req = request(&res, credential());
    until_rolled_back(&h, &req, &mut status, &mut sink).await;
    let op = status.operation.clone().expect("operation");
    assert_eq!(op.phase, OperationPhase::RolledBack);
    assert!(op.retry_after_rollback);
    assert_eq!(op.transient_rollbacks, 1);
    assert_connected_at(&h, PRIMARY).await;
    assert!(conditions::is_true(&status, conditions::RECONCILING));
    assert!(!conditions::is_true(&status, conditions::STALLED));
    assert_eq!(
        status.retry.as_ref().map(|r| r.reason.as_str()),
        Some("RolledBack")
    );

    h.emu
        .fleet()
        .set_key_manager_health("xks-replica.example.com", "ekm-1", KeyManagerHealth::Active)
        .expect("back");
    let outcome = settle_request(&h, &req, &mut status, &mut sink).await;
    assert_eq!(outcome, Outcome::InSync);
    assert_connected_at(&h, REPLICA).await;
    let op = status.operation.as_ref().expect("operation");
    assert_eq!(op.phase, OperationPhase::Succeeded);
    assert_eq!(
        op.transient_rollbacks, 1,
        "the count carried into the new try"
    );
    assert!(fired.load(std::sync::atomic::Ordering::SeqCst));
}
