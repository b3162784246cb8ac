//! Stores in several AWS accounts and Regions: the engine assumes
//! `spec.roleArn` through the AWS SDK's own AssumeRole provider, against
//! the emulator's STS and per-account KMS, over real HTTP.

mod common;

use common::*;
use xks_emulator::config::{DEMO_ACCOUNT_ID, DEMO_ROLE_ARN, DEMO_SECOND_ACCOUNT_ID, RoleConfig};
use xks_operator::api::{DeletionPolicy, ExternalKeyStore, ExternalKeyStoreStatus};
use xks_operator::engine::conditions;
use xks_operator::engine::{Engine, Outcome};
use xks_operator::kms::aws::AwsKeyStores;
use xks_operator::kms::identity::AssumedRole;
use xks_operator::model::ConnectionState;
use xks_operator::xks::probe::HttpProxyProbe;

fn in_account(role: Option<&str>, region: &str) -> ExternalKeyStore {
    let mut res = public(PRIMARY);
    res.spec.role_arn = role.map(str::to_string);
    res.spec.region = Some(region.to_string());
    res
}

async fn converge_with(
    engine: &Engine<AwsKeyStores, HttpProxyProbe>,
    res: &ExternalKeyStore,
    status: &mut ExternalKeyStoreStatus,
) -> Outcome {
    xks_operator::cli::settle(
        engine,
        &request(res, credential()),
        status,
        &mut Recorder::default(),
        std::time::Duration::from_secs(30),
    )
    .await
    .expect("settles")
}

fn stores_of(h: &Harness, account: &str, region: &str) -> serde_json::Value {
    h.emu.control().account(account, region).state()["customKeyStores"].clone()
}

/// One operator, four stores of the same name: two accounts × two Regions.
/// Each lands in its own account and Region, none claims another's, and a
/// rotation and a deletion in one leave the others alone.
#[tokio::test]
async fn stores_in_two_accounts_and_two_regions() {
    let h = harness().await;
    let role = AssumedRole::new(DEMO_ROLE_ARN, None);
    let places = [
        (None, "us-east-1"),
        (Some(&role), "us-east-1"),
        (None, "eu-west-1"),
        (Some(&role), "eu-west-1"),
    ];
    let mut engines = Vec::new();
    for (role, region) in places {
        let engine = engine_as(&h, region, role).await;
        let res = in_account(role.map(|r| r.arn.as_str()), region);
        let mut status = ExternalKeyStoreStatus::default();
        assert_eq!(
            converge_with(&engine, &res, &mut status).await,
            Outcome::InSync
        );
        engines.push((engine, res, status));
    }
    for (account, region) in [
        (DEMO_ACCOUNT_ID, "us-east-1"),
        (DEMO_SECOND_ACCOUNT_ID, "us-east-1"),
        (DEMO_ACCOUNT_ID, "eu-west-1"),
        (DEMO_SECOND_ACCOUNT_ID, "eu-west-1"),
    ] {
        let stores = stores_of(&h, account, region);
        assert_eq!(
            stores.as_array().map(Vec::len),
            Some(1),
            "{account} {region}: {stores}"
        );
    }

    // Rotate the endpoint of the store in the second account, us-east-1.
    let (engine, res, status) = &mut engines[1];
    res.spec.proxy.uri_endpoint = REPLICA.into();
    assert_eq!(converge_with(engine, res, status).await, Outcome::InSync);
    let rotated = stores_of(&h, DEMO_SECOND_ACCOUNT_ID, "us-east-1");
    assert!(rotated.to_string().contains("xks-replica"), "{rotated}");
    let untouched = stores_of(&h, DEMO_ACCOUNT_ID, "us-east-1");
    assert!(untouched.to_string().contains("xks-primary"), "{untouched}");

    // Delete the store in the second account, eu-west-1.
    let (engine, res, status) = &mut engines[3];
    res.spec.deletion_policy = DeletionPolicy::Delete;
    let mut req = request(res, credential());
    req.deleting = true;
    let outcome = xks_operator::cli::settle(
        engine,
        &req,
        status,
        &mut Recorder::default(),
        std::time::Duration::from_secs(30),
    )
    .await
    .expect("settles");
    assert_eq!(outcome, Outcome::Released);
    assert_eq!(
        stores_of(&h, DEMO_SECOND_ACCOUNT_ID, "eu-west-1")
            .as_array()
            .map(Vec::len),
        Some(0)
    );
    assert_eq!(
        stores_of(&h, DEMO_ACCOUNT_ID, "eu-west-1")
            .as_array()
            .map(Vec::len),
        Some(1)
    );
}

/// STS refuses the role: a specific condition that names the role and
/// what to check, no KMS call in the role's account; once the trust
/// policy allows the operator, the next pass succeeds.
#[tokio::test]
async fn assume_role_denied_then_recovers_when_the_trust_is_fixed() {
    let h = harness().await;
    let sts = h.emu.control().sts();
    sts.upsert_role(RoleConfig::new(DEMO_ROLE_ARN).trusting("999988887777"))
        .expect("role trusts someone else");
    let role = AssumedRole::new(DEMO_ROLE_ARN, None);
    let engine = engine_as(&h, "us-east-1", Some(&role)).await;
    let res = in_account(Some(DEMO_ROLE_ARN), "us-east-1");
    let mut status = ExternalKeyStoreStatus::default();
    let outcome = converge_with(&engine, &res, &mut status).await;
    assert_eq!(outcome, Outcome::Stalled);
    let stalled = conditions::get(&status, conditions::STALLED).expect("stalled");
    assert_eq!(stalled.reason, "AssumeRoleFailed");
    assert!(
        stalled.message.contains(DEMO_ROLE_ARN),
        "{}",
        stalled.message
    );
    assert!(
        stalled.message.contains("AccessDenied"),
        "{}",
        stalled.message
    );
    let second = h.emu.control().account(DEMO_SECOND_ACCOUNT_ID, "us-east-1");
    assert_eq!(second.requests("DescribeCustomKeyStores"), 0);

    sts.upsert_role(RoleConfig::new(DEMO_ROLE_ARN).trusting(DEMO_ACCOUNT_ID))
        .expect("trust fixed");
    assert_eq!(
        converge_with(&engine, &res, &mut status).await,
        Outcome::InSync
    );
    assert_eq!(status.connection_state, Some(ConnectionState::Connected));
}

/// A role that requires an external id: without it STS refuses; with it
/// the store is created. The id never appears in status.
#[tokio::test]
async fn the_external_id_is_sent_and_never_shown() {
    let h = harness().await;
    let external_id = "tenant-b-external-id-7f3a";
    h.emu
        .control()
        .sts()
        .upsert_role(
            RoleConfig::new(DEMO_ROLE_ARN)
                .trusting(DEMO_ACCOUNT_ID)
                .with_external_id(external_id),
        )
        .expect("role");
    let res = in_account(Some(DEMO_ROLE_ARN), "us-east-1");

    let without = engine_as(
        &h,
        "us-east-1",
        Some(&AssumedRole::new(DEMO_ROLE_ARN, None)),
    )
    .await;
    let mut status = ExternalKeyStoreStatus::default();
    assert_eq!(
        converge_with(&without, &res, &mut status).await,
        Outcome::Stalled
    );
    assert_eq!(
        conditions::get(&status, conditions::STALLED).map(|c| c.reason.as_str()),
        Some("AssumeRoleFailed")
    );

    let role = AssumedRole::new(DEMO_ROLE_ARN, Some(external_id.into()));
    let with = engine_as(&h, "us-east-1", Some(&role)).await;
    assert_eq!(
        converge_with(&with, &res, &mut status).await,
        Outcome::InSync
    );
    let text = serde_json::to_string(&status).expect("status");
    assert!(!text.contains(external_id), "the external id is in status");
}

/// Sessions of one second: a rotation outlives several of them, and the
/// SDK's provider assumes the role again as each expires.
#[tokio::test]
async fn credentials_expiring_mid_rotation_are_refreshed() {
    let h = harness_with(
        |c| {
            c.connect_delay_ms = 600;
            c.disconnect_delay_ms = 600;
        },
        |kms| kms,
    )
    .await;
    h.emu.control().sts().set_session_duration(Some(1));
    let role = AssumedRole::new(DEMO_ROLE_ARN, None);
    let engine = engine_as(&h, "us-east-1", Some(&role)).await;
    let mut res = in_account(Some(DEMO_ROLE_ARN), "us-east-1");
    let mut status = ExternalKeyStoreStatus::default();
    assert_eq!(
        converge_with(&engine, &res, &mut status).await,
        Outcome::InSync
    );
    let assumed_before = assume_role_calls(&h);
    res.spec.proxy.uri_endpoint = REPLICA.into();
    assert_eq!(
        converge_with(&engine, &res, &mut status).await,
        Outcome::InSync
    );
    assert!(all_succeeded(&status), "{:?}", status.operation);
    assert!(
        assume_role_calls(&h) > assumed_before + 1,
        "the role was not assumed again as sessions expired"
    );
}

fn assume_role_calls(h: &Harness) -> u64 {
    h.emu.control().sts().describe()["operations"]["AssumeRole"]["requests"]
        .as_u64()
        .unwrap_or(0)
}

/// Throttling in one account does not reach another: while every KMS
/// call of the second account is throttled (and that client backs off, as
/// the SDK's adaptive mode does), the store of the default account is
/// created and connected, and its account saw no throttle.
#[tokio::test]
async fn throttling_in_one_account_spares_the_others() {
    let h = harness().await;
    let role = AssumedRole::new(DEMO_ROLE_ARN, None);
    let second = h.emu.control().account(DEMO_SECOND_ACCOUNT_ID, "us-east-1");
    second.set_operation_faults(
        "*",
        Some(xks_emulator::faults::OperationFaults {
            throttle_next: 1000,
            ..Default::default()
        }),
    );
    let throttled = engine_as(&h, "us-east-1", Some(&role)).await;
    let res = in_account(Some(DEMO_ROLE_ARN), "us-east-1");
    let mut throttled_status = ExternalKeyStoreStatus::default();
    let own = engine_as(&h, "us-east-1", None).await;
    let mine = in_account(None, "us-east-1");
    let mut mine_status = ExternalKeyStoreStatus::default();

    let req = request(&res, credential());
    let mut sink = Recorder::default();
    let hammering = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        throttled.reconcile(&req, &mut throttled_status, &mut sink),
    );
    let (_, converged) = tokio::join!(hammering, converge_with(&own, &mine, &mut mine_status));
    assert_eq!(converged, Outcome::InSync);
    assert!(second.throttled("DescribeCustomKeyStores") > 0);
    let default = h.emu.control().default_account();
    for op in [
        "DescribeCustomKeyStores",
        "CreateCustomKeyStore",
        "ConnectCustomKeyStore",
    ] {
        assert_eq!(default.throttled(op), 0, "{op}");
    }
}
