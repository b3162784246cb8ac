//! Failure behaviour, proved against the emulator over real HTTP.
//!
//! 1. Crashes: for every kind of change, the operator "dies" at each status
//!    write of the change in turn (the write fails and the pass is abandoned,
//!    so whatever KMS call ran since the previous write is unrecorded: that
//!    covers both between steps and after a call, before its result was
//!    written), then a new pass resumes from what was persisted. It always
//!    converges, never makes a second store and never leaves a store
//!    disconnected that should be connected.
//! 2. Injected faults: throttling, 5xx, latency, dropped connections, proxy
//!    health flaps and a credential rejected mid-rotation converge with the
//!    right conditions, or stall with the right reason.

mod common;

use common::*;
use xks_emulator::config::{DEMO_ACCESS_KEY_ID, demo_proxy};
use xks_emulator::faults::OperationFaults;
use xks_emulator::xks_proxy::{KeyManagerHealth, ProxyCredentialConfig};
use xks_operator::api::{
    DeletionPolicy, DesiredConnectionState, ExternalKeyStore, ExternalKeyStoreStatus,
    OperationPhase, StepName,
};
use xks_operator::engine::{EngineOptions, Outcome, SinkError, StatusSink, conditions};
use xks_operator::kms::KeyStores;
use xks_operator::model::{ConnectionState, Connectivity, ProxyCredential};

// ---------------------------------------------------------------------------
// 1. Crash at every status write of every kind of change.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Change {
    Create,
    Rename,
    RotateCredential,
    NewPath,
    NewEndpoint,
    ToVpc,
    DesiredDisconnected,
    FailedRecovery,
    DeleteWithDeletePolicy,
}

const NEW_PATH: &str = "/tenant-a/kms/xks/v1";

/// What a change starts from and asks for.
struct Start {
    resource: ExternalKeyStore,
    status: ExternalKeyStoreStatus,
    credential: ProxyCredential,
    deleting: bool,
}

/// Bring the emulator to the state before `change` and describe the change.
async fn prepare(h: &Harness, change: Change) -> Start {
    if change == Change::Create {
        return Start {
            resource: public(PRIMARY),
            status: ExternalKeyStoreStatus::default(),
            credential: credential(),
            deleting: false,
        };
    }
    let (mut resource, status) = created(h).await;
    let mut credential = credential();
    let mut deleting = false;
    match change {
        Change::Create => {}
        Change::Rename => resource.spec.key_store_name = Some("payments-eu".into()),
        Change::RotateCredential => {
            rotate_on_proxies(h);
            credential = rotated();
        }
        Change::NewPath => {
            let mut moved = demo_proxy("xks-primary.example.com");
            moved.uri_path = NEW_PATH.into();
            h.emu.control().upsert_proxy(moved).expect("proxy moves");
            resource.spec.proxy.uri_path = NEW_PATH.into();
        }
        Change::NewEndpoint => resource.spec.proxy.uri_endpoint = REPLICA.into(),
        Change::ToVpc => {
            offer_vpc_service(h);
            resource = vpc();
        }
        Change::DesiredDisconnected => {
            resource.spec.connection_state = DesiredConnectionState::Disconnected;
        }
        Change::FailedRecovery => make_failed(h, &status).await,
        Change::DeleteWithDeletePolicy => {
            resource.spec.deletion_policy = DeletionPolicy::Delete;
            deleting = true;
        }
    }
    resource.metadata.generation = Some(2);
    Start {
        resource,
        status,
        credential,
        deleting,
    }
}

/// Break the proxy and cycle the connection by hand: KMS marks the store
/// FAILED; then heal the proxy so that a reconnect can work.
async fn make_failed(h: &Harness, status: &ExternalKeyStoreStatus) {
    let id = status.key_store_id.clone().expect("id");
    let fleet = h.emu.fleet();
    fleet
        .set_key_manager_health(
            "xks-primary.example.com",
            "ekm-1",
            KeyManagerHealth::Unavailable,
        )
        .expect("health");
    h.engine.kms.disconnect(&id).await.expect("disconnect");
    wait_state(h, &id, ConnectionState::Disconnected).await;
    h.engine.kms.connect(&id).await.expect("connect");
    wait_state(h, &id, ConnectionState::Failed).await;
    fleet
        .set_key_manager_health("xks-primary.example.com", "ekm-1", KeyManagerHealth::Active)
        .expect("health");
}

/// What a user would check once the change is done.
async fn assert_done(
    h: &Harness,
    change: Change,
    status: &ExternalKeyStoreStatus,
    outcome: Outcome,
    at: &str,
) {
    let stores = kms_view(h).await;
    if change == Change::DeleteWithDeletePolicy {
        assert_eq!(outcome, Outcome::Released, "{at}");
        assert!(stores.is_empty(), "{at}: the store must be deleted");
        return;
    }
    assert_eq!(outcome, Outcome::InSync, "{at}: {:?}", status.conditions);
    assert!(conditions::is_true(status, conditions::READY), "{at}");
    assert_eq!(stores.len(), 1, "{at}: exactly one store");
    let store = &stores[0];
    assert_eq!(
        status.key_store_id.as_deref(),
        Some(store.id.as_str()),
        "{at}"
    );
    let proxy = store.proxy.as_ref().expect("xks store");
    let want_state = if change == Change::DesiredDisconnected {
        ConnectionState::Disconnected
    } else {
        ConnectionState::Connected
    };
    assert_eq!(store.connection_state, want_state, "{at}");
    match change {
        Change::Create => assert_eq!(calls(h, "CreateCustomKeyStore"), 1, "{at}"),
        Change::Rename => assert_eq!(store.name, "payments-eu", "{at}"),
        Change::RotateCredential => {
            let want = xks_operator::credentials::fingerprint(
                &rotated(),
                &EngineOptions::default().fingerprint_key,
            );
            assert_eq!(
                status.credential_fingerprint.as_deref(),
                Some(want.as_str()),
                "{at}"
            );
        }
        Change::NewPath => assert_eq!(proxy.uri_path, NEW_PATH, "{at}"),
        Change::NewEndpoint => assert_eq!(proxy.uri_endpoint, REPLICA, "{at}"),
        Change::ToVpc => {
            assert_eq!(proxy.connectivity, Connectivity::VpcEndpointService, "{at}");
            assert_eq!(
                proxy.vpc_endpoint_service_name.as_deref(),
                Some(VPC_SERVICE),
                "{at}"
            );
        }
        Change::DesiredDisconnected | Change::FailedRecovery | Change::DeleteWithDeletePolicy => {}
    }
    if matches!(
        change,
        Change::Rename | Change::RotateCredential | Change::NewPath
    ) {
        assert_eq!(
            calls(h, "DisconnectCustomKeyStore"),
            0,
            "{at}: an online change disconnected"
        );
    }
}

/// Indices of the writes that come right after a call was recorded as
/// about to happen (a step's attempts went up): crashing there loses the
/// answer of a call that went through.
fn after_call_indices(writes: &[ExternalKeyStoreStatus]) -> Vec<usize> {
    let attempts = |s: &ExternalKeyStoreStatus| -> Vec<u32> {
        s.operation
            .as_ref()
            .map(|o| o.steps.iter().map(|st| st.attempts).collect())
            .unwrap_or_default()
    };
    (1..writes.len())
        .filter(|&k| {
            let before = if k >= 2 {
                attempts(&writes[k - 2])
            } else {
                Vec::new()
            };
            let now = attempts(&writes[k - 1]);
            now.iter()
                .enumerate()
                .any(|(i, n)| *n > before.get(i).copied().unwrap_or(0))
        })
        .collect()
}

async fn crash_everywhere(change: Change) {
    // How many writes does an uncrashed run make, and which follow a call?
    let h = harness().await;
    let start = prepare(&h, change).await;
    let mut probe = Recorder::default();
    let mut status = start.status.clone();
    let req = xks_operator::engine::Request {
        deleting: start.deleting,
        ..request(&start.resource, start.credential.clone())
    };
    let outcome = settle_request(&h, &req, &mut status, &mut probe).await;
    assert_done(
        &h,
        change,
        &status,
        outcome,
        &format!("{change:?} without crash"),
    )
    .await;
    let total = probe.writes.len();
    let after_calls = after_call_indices(&probe.writes);
    assert!(
        !after_calls.is_empty(),
        "{change:?}: no KMS or proxy call was recorded as about to happen"
    );
    h.emu.shutdown().await;

    for crash_at in 0..total {
        let at = format!(
            "{change:?}, crash at write {crash_at}/{total}{}",
            if after_calls.contains(&crash_at) {
                " (after a call, before its result was written)"
            } else {
                ""
            }
        );
        let h = harness().await;
        let start = prepare(&h, change).await;
        let req = xks_operator::engine::Request {
            deleting: start.deleting,
            ..request(&start.resource, start.credential.clone())
        };
        let mut sink = Recorder::crashing_at(crash_at);
        let mut status = start.status.clone();
        loop {
            match h.engine.reconcile(&req, &mut status, &mut sink).await {
                Err(_) => break,
                Ok(Outcome::Requeue(d)) => tokio::time::sleep(d).await,
                Ok(_) => break,
            }
        }
        assert!(
            kms_view(&h).await.len() <= 1,
            "{at}: a second store was created"
        );
        // A new process starts from what the API server holds.
        let mut resumed = if sink.writes.is_empty() {
            start.status.clone()
        } else {
            sink.persisted()
        };
        let outcome = settle_request(&h, &req, &mut resumed, &mut Recorder::default()).await;
        assert_done(&h, change, &resumed, outcome, &at).await;
        h.emu.shutdown().await;
    }
}

macro_rules! crash_suite {
    ($($test:ident => $change:ident,)*) => {$(
        #[tokio::test]
        async fn $test() {
            crash_everywhere(Change::$change).await;
        }
    )*};
}

crash_suite! {
    crash_anywhere_in_create_resumes => Create,
    crash_anywhere_in_rename_resumes => Rename,
    crash_anywhere_in_credential_rotation_resumes => RotateCredential,
    crash_anywhere_in_path_change_resumes => NewPath,
    crash_anywhere_in_endpoint_change_resumes => NewEndpoint,
    crash_anywhere_in_change_to_vpc_resumes => ToVpc,
    crash_anywhere_in_desired_disconnect_resumes => DesiredDisconnected,
    crash_anywhere_in_failed_recovery_resumes => FailedRecovery,
    crash_anywhere_in_delete_resumes => DeleteWithDeletePolicy,
}

// ---------------------------------------------------------------------------
// 2. Injected faults.

/// Whether some write had condition `type_` True with `reason`.
fn was(sink: &Recorder, type_: &str, reason: &str) -> bool {
    sink.writes
        .iter()
        .any(|s| conditions::get(s, type_).is_some_and(|c| c.is_true() && c.reason == reason))
}

fn ready(status: &ExternalKeyStoreStatus) -> bool {
    conditions::is_true(status, conditions::READY)
}

fn stalled_reason(status: &ExternalKeyStoreStatus) -> Option<String> {
    conditions::get(status, conditions::STALLED)
        .filter(|c| c.is_true())
        .map(|c| c.reason.clone())
}

fn faults(f: impl FnOnce(&mut OperationFaults)) -> Option<OperationFaults> {
    let mut faults = OperationFaults::default();
    f(&mut faults);
    Some(faults)
}

/// A harness whose KMS client makes one attempt per call, so the engine
/// itself sees every injected fault.
async fn bare_harness() -> Harness {
    harness_with(|_| {}, |kms| kms.with_max_attempts(1)).await
}

#[tokio::test]
async fn throttling_is_retried_while_reconciling_and_ends_ready() {
    let h = bare_harness().await;
    h.emu
        .control()
        .set_operation_faults("CreateCustomKeyStore", faults(|f| f.throttle_next = 3));
    let res = public(PRIMARY);
    let mut status = ExternalKeyStoreStatus::default();
    let mut sink = Recorder::default();
    let outcome = converge(&h, &res, credential(), &mut status, &mut sink).await;
    assert_eq!(outcome, Outcome::InSync);
    assert!(was(&sink, conditions::RECONCILING, "Throttling"));
    assert!(ready(&status));
    assert_eq!(kms_view(&h).await.len(), 1, "retries made no second store");
    assert_eq!(h.emu.control().throttled("CreateCustomKeyStore"), 3);
}

#[tokio::test]
async fn a_short_throttle_burst_is_absorbed_by_the_sdk_retry() {
    let h = harness().await;
    h.emu
        .control()
        .set_operation_faults("CreateCustomKeyStore", faults(|f| f.throttle_next = 1));
    let mut status = ExternalKeyStoreStatus::default();
    let mut sink = Recorder::default();
    let outcome = converge(&h, &public(PRIMARY), credential(), &mut status, &mut sink).await;
    assert_eq!(outcome, Outcome::InSync);
    assert_eq!(h.emu.control().throttled("CreateCustomKeyStore"), 1);
    assert!(
        !was(&sink, conditions::RECONCILING, "Throttling"),
        "the engine never saw it"
    );
    assert_eq!(kms_view(&h).await.len(), 1);
}

#[tokio::test]
async fn kms_internal_errors_are_retried_and_the_store_connects() {
    let h = bare_harness().await;
    let (mut res, mut status) = created(&h).await;
    res.spec.proxy.uri_endpoint = REPLICA.into();
    h.emu.control().set_operation_faults(
        "ConnectCustomKeyStore",
        faults(|f| f.internal_error_next = 3),
    );
    let mut sink = Recorder::default();
    let outcome = converge(&h, &res, credential(), &mut status, &mut sink).await;
    assert_eq!(outcome, Outcome::InSync);
    assert!(was(&sink, conditions::RECONCILING, "KMSInternal"));
    assert!(ready(&status));
    assert_connected_at(&h, REPLICA).await;
}

#[tokio::test]
async fn slow_kms_is_waited_for_not_mistaken_for_failure() {
    let h = harness().await;
    let (mut res, mut status) = created(&h).await;
    h.emu
        .control()
        .set_operation_faults("*", faults(|f| f.latency_ms = 150));
    res.spec.proxy.uri_endpoint = REPLICA.into();
    let mut sink = Recorder::default();
    let outcome = converge(&h, &res, credential(), &mut status, &mut sink).await;
    assert_eq!(outcome, Outcome::InSync, "{:?}", status.conditions);
    assert!(ready(&status));
    assert!(
        sink.writes.iter().all(|s| stalled_reason(s).is_none()),
        "latency must not stall the change"
    );
    assert_eq!(
        kms_view(&h).await[0].connection_state,
        ConnectionState::Connected
    );
}

#[tokio::test]
async fn dropped_connections_on_create_never_make_a_second_store() {
    let h = bare_harness().await;
    h.emu
        .control()
        .set_operation_faults("CreateCustomKeyStore", faults(|f| f.drop_next = 2));
    let mut status = ExternalKeyStoreStatus::default();
    let mut sink = Recorder::default();
    let outcome = converge(&h, &public(PRIMARY), credential(), &mut status, &mut sink).await;
    assert_eq!(outcome, Outcome::InSync);
    assert!(was(&sink, conditions::RECONCILING, "TransientError"));
    let stores = kms_view(&h).await;
    assert_eq!(stores.len(), 1);
    assert_eq!(stores[0].connection_state, ConnectionState::Connected);
    assert_eq!(calls(&h, "CreateCustomKeyStore"), 3);
}

#[tokio::test]
async fn dropped_connections_while_polling_are_retried() {
    let h = bare_harness().await;
    let (mut res, mut status) = created(&h).await;
    res.spec.proxy.uri_endpoint = REPLICA.into();
    h.emu
        .control()
        .set_operation_faults("DescribeCustomKeyStores", faults(|f| f.drop_rate = 0.3));
    let outcome = converge(
        &h,
        &res,
        credential(),
        &mut status,
        &mut Recorder::default(),
    )
    .await;
    h.emu
        .control()
        .set_operation_faults("DescribeCustomKeyStores", None);
    assert_eq!(outcome, Outcome::InSync, "{:?}", status.conditions);
    assert_connected_at(&h, REPLICA).await;
}

#[tokio::test]
async fn a_proxy_health_flap_is_retried_then_the_change_goes_through() {
    let h = harness().await;
    let (mut res, mut status) = created(&h).await;
    res.spec.proxy.uri_endpoint = REPLICA.into();
    h.emu
        .fleet()
        .set_key_manager_health(
            "xks-replica.example.com",
            "ekm-1",
            KeyManagerHealth::Unavailable,
        )
        .expect("health");
    // The key manager comes back once the operator reported it is waiting.
    let mut sink = Recorder::replica_health_when(&h, KeyManagerHealth::Active, |s| {
        conditions::get(s, conditions::RECONCILING)
            .is_some_and(|c| c.is_true() && c.reason == "ProxyUnhealthy")
    });
    let outcome = converge(&h, &res, credential(), &mut status, &mut sink).await;
    assert_eq!(outcome, Outcome::InSync, "{:?}", status.conditions);
    assert!(was(&sink, conditions::RECONCILING, "ProxyUnhealthy"));
    assert!(ready(&status));
    assert_connected_at(&h, REPLICA).await;
}

#[tokio::test]
async fn a_proxy_that_stays_unavailable_is_retried_before_any_disconnect() {
    let h = harness().await;
    let (mut res, mut status) = created(&h).await;
    res.spec.proxy.uri_endpoint = REPLICA.into();
    h.emu
        .fleet()
        .set_key_manager_health(
            "xks-replica.example.com",
            "ekm-1",
            KeyManagerHealth::Unavailable,
        )
        .expect("health");
    let req = request(&res, credential());
    let mut sink = Recorder::default();
    for _ in 0..5 {
        let outcome = h
            .engine
            .reconcile(&req, &mut status, &mut sink)
            .await
            .expect("pass");
        let Outcome::Requeue(delay) = outcome else {
            panic!("stopped retrying: {outcome:?}");
        };
        tokio::time::sleep(delay).await;
    }
    assert!(was(&sink, conditions::RECONCILING, "ProxyUnhealthy"));
    assert_eq!(stalled_reason(&status), None);
    assert_eq!(status.retry.as_ref().map(|r| r.attempts), Some(5));
    assert_connected_at(&h, PRIMARY).await;
    assert_eq!(calls(&h, "DisconnectCustomKeyStore"), 0);

    h.emu
        .fleet()
        .set_key_manager_health("xks-replica.example.com", "ekm-1", KeyManagerHealth::Active)
        .expect("health");
    let outcome = settle_request(&h, &req, &mut status, &mut sink).await;
    assert_eq!(outcome, Outcome::InSync);
    assert_connected_at(&h, REPLICA).await;
}

/// The proxy accepted the new credential at preflight, then dropped it
/// before KMS was told: KMS refuses the update, the store stays connected
/// with the old credential, and status says why. Once the proxy has the
/// credential again, a requested reconcile completes the rotation.
#[tokio::test]
async fn a_credential_rejected_mid_rotation_stalls_then_recovers() {
    const NEW_ID: &str = "XKSROTATEDKEYIDBBBBB";
    const NEW_SECRET: &str = "rotatedSecretAccessKeyWithANewAccessKeyId0123456";
    let h = harness().await;
    let (res, mut status) = created(&h).await;
    let hosts = ["xks-primary.example.com", "xks-replica.example.com"];
    for host in hosts {
        h.emu
            .control()
            .add_credential(host, ProxyCredentialConfig::new(NEW_ID, NEW_SECRET))
            .expect("add credential");
    }
    let fleet = h.emu.fleet().clone();
    let mut sink = Recorder {
        hook: Some(Box::new(move |s: &ExternalKeyStoreStatus| {
            let preflighted = s.operation.as_ref().is_some_and(|o| {
                o.steps.iter().any(|st| {
                    st.name == xks_operator::api::StepName::Preflight
                        && st.state == xks_operator::api::StepState::Succeeded
                })
            });
            if preflighted {
                for host in hosts {
                    let _ = fleet.remove_credential(host, NEW_ID);
                }
            }
        })),
        ..Recorder::default()
    };
    let new_credential = ProxyCredential::new(NEW_ID, NEW_SECRET);
    let outcome = converge(&h, &res, new_credential.clone(), &mut status, &mut sink).await;
    assert_eq!(outcome, Outcome::Stalled);
    assert_eq!(
        stalled_reason(&status).as_deref(),
        Some("XksProxyIncorrectAuthenticationCredential")
    );
    let store = &kms_view(&h).await[0];
    assert_eq!(store.connection_state, ConnectionState::Connected);
    assert_eq!(
        store.proxy.as_ref().map(|p| p.access_key_id.as_str()),
        Some(DEMO_ACCESS_KEY_ID)
    );
    assert_eq!(calls(&h, "DisconnectCustomKeyStore"), 0);

    for host in hosts {
        h.emu
            .control()
            .add_credential(host, ProxyCredentialConfig::new(NEW_ID, NEW_SECRET))
            .expect("add credential");
    }
    let req = xks_operator::engine::Request {
        requested_at: Some("2026-11-23T20:00:00Z".into()),
        ..request(&res, new_credential)
    };
    let outcome = settle_request(&h, &req, &mut status, &mut Recorder::default()).await;
    assert_eq!(outcome, Outcome::InSync, "{:?}", status.conditions);
    assert!(ready(&status));
    let store = &kms_view(&h).await[0];
    assert_eq!(
        store.proxy.as_ref().map(|p| p.access_key_id.as_str()),
        Some(NEW_ID)
    );
    assert_eq!(store.connection_state, ConnectionState::Connected);
}

/// Persists the write, then "crashes": the pass ends before the call the
/// write announced.
struct CrashAfterFirstWrite(Option<ExternalKeyStoreStatus>);

impl StatusSink for CrashAfterFirstWrite {
    async fn write(&mut self, s: &ExternalKeyStoreStatus) -> Result<(), SinkError> {
        self.0 = Some(s.clone());
        Err(SinkError("crash after write".into()))
    }
}

/// A Connect that ended FAILED for a cause that can pass is retried by
/// disconnecting the store first. A crash right after that is announced
/// (before the Disconnect call) must resume by disconnecting again, not
/// count a second connection failure that no Connect caused (which, with
/// rollback on, would roll a change back after failures that never were).
#[tokio::test]
async fn a_crash_before_the_reconnecting_disconnect_counts_no_failure() {
    let h = harness().await;
    let (mut res, mut status) = created(&h).await;
    res.spec.proxy.uri_endpoint = REPLICA.into();
    let mut sink = Recorder::replica_dies_after(&h, StepName::HealthCheck);
    let req = request(&res, credential());
    until_connect_is_retried(&h, &req, &mut status, &mut sink).await;
    let failures = status.retry.as_ref().map(|r| r.attempts);
    assert_eq!(failures, Some(1), "one real connection failure");
    let connects = calls(&h, "ConnectCustomKeyStore");
    for _ in 0..2 {
        tokio::time::sleep(std::time::Duration::from_millis(150)).await;
        let mut crash = CrashAfterFirstWrite(None);
        let _ = h.engine.reconcile(&req, &mut status, &mut crash).await;
        status = crash.0.expect("the pass wrote before its call");
    }
    assert_eq!(
        calls(&h, "ConnectCustomKeyStore"),
        connects,
        "no Connect since"
    );
    assert_eq!(
        status.retry.as_ref().map(|r| r.attempts),
        failures,
        "crashes counted as connection failures"
    );
    assert_ne!(
        status.operation.as_ref().map(|o| o.phase),
        Some(OperationPhase::RollingBack)
    );
}
