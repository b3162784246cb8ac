//! The claim rule end to end through the engine, over HTTP against the
//! emulator: a KMS store is acted on by one ExternalKeyStore only, and any
//! other resource naming it makes no KMS write and names the holder.

mod common;

use common::*;
use xks_operator::api::{ExternalKeyStore, ExternalKeyStoreStatus};
use xks_operator::claims::{Claimant, Scope};
use xks_operator::engine::Outcome;

/// The KMS operations that change something.
const WRITES: [&str; 5] = [
    "CreateCustomKeyStore",
    "UpdateCustomKeyStore",
    "ConnectCustomKeyStore",
    "DisconnectCustomKeyStore",
    "DeleteCustomKeyStore",
];

fn writes(h: &Harness) -> u64 {
    WRITES.iter().map(|op| calls(h, op)).sum()
}

/// `namespace/name`, created at `created` (seconds), with `spec`.
fn named(namespace: &str, name: &str, created: i64, spec: &str) -> ExternalKeyStore {
    let created = jiff::Timestamp::from_second(1_800_000_000 + created).expect("valid time");
    let text = format!(
        "apiVersion: xks-operator.io/v1alpha1\nkind: ExternalKeyStore\nmetadata:\n  name: {name}\n  namespace: {namespace}\n  generation: 1\n  uid: {namespace}-{name}\n  creationTimestamp: \"{created}\"\nspec:\n{spec}"
    );
    serde_yaml::from_str(&text).expect("valid test resource")
}

fn proxy_spec(endpoint: &str) -> String {
    format!(
        "  proxy:\n    uriEndpoint: {endpoint}\n    uriPath: {PATH}\n    credentialsSecretRef: {{name: cred}}\n"
    )
}

/// The holder: default/payments, store name "payments", at the primary proxy.
fn holder(created: i64) -> ExternalKeyStore {
    named("default", "payments", created, &proxy_spec(PRIMARY))
}

/// A resource in another namespace that names the same store and wants it
/// at the replica proxy.
fn copy(created: i64, extra: &str) -> ExternalKeyStore {
    named(
        "team-b",
        "payments-copy",
        created,
        &format!("  keyStoreName: payments\n{extra}{}", proxy_spec(REPLICA)),
    )
}

/// default/payments, created at `created`, holding the store it created.
async fn holding(h: &Harness, created: i64) -> (ExternalKeyStore, ExternalKeyStoreStatus) {
    let a = holder(created);
    let mut status = ExternalKeyStoreStatus::default();
    assert_eq!(
        pass(h, &a, &mut status, vec![], false).await,
        Outcome::InSync
    );
    (a, status)
}

fn claimant(h: &Harness, res: &ExternalKeyStore, status: &ExternalKeyStoreStatus) -> Claimant {
    Claimant::of(
        res,
        Some(status),
        Scope {
            account: None,
            region: h.engine.region.clone(),
        },
    )
}

/// One pass of `res` with `rivals`, from `status`.
async fn pass(
    h: &Harness,
    res: &ExternalKeyStore,
    status: &mut ExternalKeyStoreStatus,
    rivals: Vec<Claimant>,
    deleting: bool,
) -> Outcome {
    let mut req = request(res, credential());
    req.rivals = rivals;
    req.deleting = deleting;
    settle_request(h, &req, status, &mut Recorder::default()).await
}

fn assert_claimed_by(status: &ExternalKeyStoreStatus, holder: &str) {
    let stalled = status
        .conditions
        .iter()
        .find(|c| c.type_ == "Stalled")
        .expect("a Stalled condition");
    assert!(stalled.is_true());
    assert_eq!(stalled.reason, "StoreClaimed");
    assert!(
        stalled.message.contains(holder),
        "the message names the holder {holder}: {}",
        stalled.message
    );
    let ready = status
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .expect("a Ready condition");
    assert!(!ready.is_true());
}

#[tokio::test]
async fn a_second_resource_naming_the_store_changes_nothing_and_names_the_holder() {
    let h = harness().await;
    let (a, mut a_status) = holding(&h, 200).await;
    let before = writes(&h);

    // Older than the holder, but the holder's status records the store.
    let b = copy(100, "");
    let mut b_status = ExternalKeyStoreStatus::default();
    let rivals = vec![claimant(&h, &a, &a_status)];
    assert_eq!(
        pass(&h, &b, &mut b_status, rivals, false).await,
        Outcome::Claimed
    );
    assert_claimed_by(&b_status, "default/payments");
    assert_eq!(writes(&h), before, "the second resource wrote to KMS");
    assert_eq!(
        b_status.key_store_id, None,
        "the holder's store is not recorded as its own"
    );
    assert_connected_at(&h, PRIMARY).await;

    // The holder, meanwhile, is not held back by the newcomer.
    let rivals = vec![claimant(&h, &b, &b_status)];
    assert_eq!(
        pass(&h, &a, &mut a_status, rivals, false).await,
        Outcome::InSync
    );
}

#[tokio::test]
async fn a_resource_pinning_the_holders_id_changes_nothing() {
    let h = harness().await;
    let (a, a_status) = holding(&h, 200).await;
    let id = a_status.key_store_id.clone().expect("created");
    let before = writes(&h);

    let b = named(
        "team-b",
        "adopter",
        100,
        &format!(
            "  keyStoreName: other\n  keyStoreId: {id}\n{}",
            proxy_spec(REPLICA)
        ),
    );
    let mut b_status = ExternalKeyStoreStatus::default();
    let rivals = vec![claimant(&h, &a, &a_status)];
    assert_eq!(
        pass(&h, &b, &mut b_status, rivals, false).await,
        Outcome::Claimed
    );
    assert_claimed_by(&b_status, "default/payments");
    assert!(b_status.conditions.iter().any(|c| c.message.contains(&id)));
    assert_eq!(writes(&h), before);
    assert_connected_at(&h, PRIMARY).await;
}

#[tokio::test]
async fn when_the_holder_is_deleted_with_retain_the_next_one_takes_over() {
    let h = harness().await;
    let (a, a_status) = holding(&h, 100).await;
    let b = copy(200, "");
    let mut b_status = ExternalKeyStoreStatus::default();
    let rivals = vec![claimant(&h, &a, &a_status)];
    assert_eq!(
        pass(&h, &b, &mut b_status, rivals, false).await,
        Outcome::Claimed
    );

    // The holder is gone from the cache (Retain: the store stays as it is).
    assert_eq!(
        pass(&h, &b, &mut b_status, vec![], false).await,
        Outcome::InSync
    );
    assert_eq!(
        b_status.key_store_id, a_status.key_store_id,
        "adopted, not a second store"
    );
    assert_eq!(kms_view(&h).await.len(), 1);
    assert_connected_at(&h, REPLICA).await;
}

#[tokio::test]
async fn a_non_holder_deleted_with_delete_leaves_the_store_alone() {
    let h = harness().await;
    let (a, a_status) = holding(&h, 100).await;
    let before = writes(&h);

    let b = copy(200, "  deletionPolicy: Delete\n");
    let mut b_status = ExternalKeyStoreStatus::default();
    let rivals = vec![claimant(&h, &a, &a_status)];
    assert_eq!(
        pass(&h, &b, &mut b_status, rivals, true).await,
        Outcome::Claimed
    );
    assert_eq!(writes(&h), before);
    assert_eq!(kms_view(&h).await.len(), 1);
    assert_connected_at(&h, PRIMARY).await;
}

#[tokio::test]
async fn a_lost_status_does_not_change_the_holder() {
    let h = harness().await;
    let (a, _a_status) = holding(&h, 100).await;
    let b = copy(200, "");

    // Both statuses lost (a restore without status): the oldest holds, and
    // it is the one that held the store before.
    let lost = ExternalKeyStoreStatus::default();
    let mut b_status = ExternalKeyStoreStatus::default();
    let before = writes(&h);
    let rivals = vec![claimant(&h, &a, &lost)];
    assert_eq!(
        pass(&h, &b, &mut b_status, rivals, false).await,
        Outcome::Claimed
    );
    assert_eq!(writes(&h), before);
    let mut a_status = lost.clone();
    let rivals = vec![claimant(&h, &b, &b_status)];
    assert_eq!(
        pass(&h, &a, &mut a_status, rivals, false).await,
        Outcome::InSync
    );
    assert_connected_at(&h, PRIMARY).await;
}

/// A crash at any status write of the holder's create leaves a status from
/// which exactly one of the two resources acts: the other makes no KMS
/// write, whether it is younger than the holder or older.
#[tokio::test]
async fn a_crash_at_each_status_write_keeps_at_most_one_actor() {
    for b_created in [50, 200] {
        let mut index = 0;
        loop {
            let h = harness().await;
            let a = holder(100);
            let b = copy(b_created, "");
            let mut sink = Recorder::crashing_at(index);
            let mut a_status = ExternalKeyStoreStatus::default();
            let mut req = request(&a, credential());
            // The holder acted while the other was not yet in its cache.
            req.rivals = vec![];
            let crashed = xks_operator::cli::settle(
                &h.engine,
                &req,
                &mut a_status,
                &mut sink,
                std::time::Duration::from_secs(30),
            )
            .await
            .is_err();
            if !crashed {
                break; // every write index has been tried
            }
            let a_status = sink.persisted();
            let b_status = ExternalKeyStoreStatus::default();

            // From here both are in the cache. Whoever the rule names acts
            // alone; the other changes nothing, however many passes it gets.
            let a_yields = xks_operator::claims::yields_to(
                &claimant(&h, &a, &a_status),
                &[claimant(&h, &b, &b_status)],
            )
            .is_some();
            let (actor, actor_status, idle, idle_status) = if a_yields {
                (&b, b_status.clone(), &a, a_status.clone())
            } else {
                (&a, a_status.clone(), &b, b_status.clone())
            };
            let mut actor_status = actor_status;
            let mut idle_status = idle_status;
            for _ in 0..2 {
                let writes_before = writes(&h);
                let rivals = vec![claimant(&h, actor, &actor_status)];
                assert_eq!(
                    pass(&h, idle, &mut idle_status, rivals, false).await,
                    Outcome::Claimed,
                    "crash at write {index}, other created at {b_created}"
                );
                assert_eq!(
                    writes(&h),
                    writes_before,
                    "crash at write {index}: the idle one wrote"
                );
                let rivals = vec![claimant(&h, idle, &idle_status)];
                assert_eq!(
                    pass(&h, actor, &mut actor_status, rivals, false).await,
                    Outcome::InSync,
                    "crash at write {index}: the holder converges"
                );
            }
            assert_eq!(
                kms_view(&h).await.len(),
                1,
                "crash at write {index}: one store"
            );
            index += 1;
        }
        assert!(index > 3, "the create crashed at only {index} writes");
    }
}
