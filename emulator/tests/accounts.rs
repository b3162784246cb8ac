//! Several accounts and Regions, identities and STS, driven by the real
//! aws-sdk-kms and aws-sdk-sts clients (and aws-config's AssumeRoleProvider)
//! over HTTP, plus raw HTTP for the shapes of STS answers and errors.

mod common;
use common::Captured;
use std::net::SocketAddr;
use std::time::Duration;

use aws_credential_types::Credentials;
use aws_sdk_kms::config::{BehaviorVersion, Region};
use aws_sdk_kms::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_kms::types::{
    CustomKeyStoreType, XksProxyAuthenticationCredentialType, XksProxyConnectivityType,
};
use aws_smithy_types::retry::RetryConfig;
use serde_json::{Value, json};
use xks_emulator::config::{
    AccountOverride, DEMO_ACCESS_KEY_ID, DEMO_ACCOUNT_ID, DEMO_DEFAULT_IDENTITY_ARN,
    DEMO_PRIMARY_HOST, DEMO_REGION, DEMO_ROLE_ARN, DEMO_SECOND_ACCOUNT_ID, DEMO_SECRET,
    DEMO_URI_PATH, StsConfig,
};
use xks_emulator::faults::{ALL_OPERATIONS, OperationFaults, RateLimit};
use xks_emulator::{self as emulator, EmulatorConfig, IdentityConfig, RoleConfig, RunningEmulator};

const THIRD_ACCOUNT: &str = "333344445555";
const CI_KEY: &str = "AKIAEMULATORCITESTS1";
const CI_ARN: &str = "arn:aws:iam::333344445555:user/ci";
const GUARDED_ROLE: &str = "arn:aws:iam::222233334444:role/guarded";
const EXTERNAL_ID: &str = "tenant-7f3a-external-id";

// --- log capture: issued secrets and tokens must never reach the logs -------

/// The emulator's own logs (the SDK clients of these tests log too).
fn logs() -> &'static Captured {
    Captured::process_wide("xks_emulator=trace")
}

// --- set-up ----------------------------------------------------------------

/// The embedded default with short transitions, an identity in a third
/// account, and a role that requires an external id.
fn config() -> EmulatorConfig {
    let mut cfg = EmulatorConfig {
        connect_delay_ms: 30,
        disconnect_delay_ms: 30,
        ..EmulatorConfig::default()
    };
    cfg.identities.push(IdentityConfig::new(CI_KEY, CI_ARN));
    cfg.roles.push(
        RoleConfig::new(GUARDED_ROLE)
            .trusting(DEMO_ACCOUNT_ID)
            .with_external_id(EXTERNAL_ID),
    );
    cfg
}

async fn start(config: EmulatorConfig) -> RunningEmulator {
    logs();
    let addr: SocketAddr = "127.0.0.1:0".parse().unwrap();
    emulator::start(config, addr).await.unwrap()
}

fn default_creds() -> Credentials {
    Credentials::new("AKIDANYTHINGGOES", "any-secret", None, None, "test")
}

fn kms(emu: &RunningEmulator, region: &str, creds: Credentials) -> aws_sdk_kms::Client {
    let conf = aws_sdk_kms::config::Builder::new()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new(region.to_string()))
        .credentials_provider(creds)
        .endpoint_url(emu.kms_endpoint())
        .retry_config(RetryConfig::disabled())
        .build();
    aws_sdk_kms::Client::from_conf(conf)
}

fn sts(emu: &RunningEmulator, creds: Credentials) -> aws_sdk_sts::Client {
    let conf = aws_sdk_sts::config::Builder::new()
        .behavior_version(aws_sdk_sts::config::BehaviorVersion::latest())
        .region(aws_sdk_sts::config::Region::new("us-east-1"))
        .credentials_provider(creds)
        .endpoint_url(emu.sts_endpoint())
        .retry_config(RetryConfig::disabled())
        .build();
    aws_sdk_sts::Client::from_conf(conf)
}

/// AssumeRole as the default identity; the issued credentials.
async fn assume(emu: &RunningEmulator, role: &str, session: &str) -> Credentials {
    let out = sts(emu, default_creds())
        .assume_role()
        .role_arn(role)
        .role_session_name(session)
        .send()
        .await
        .unwrap();
    let c = out.credentials().unwrap();
    Credentials::new(
        c.access_key_id(),
        c.secret_access_key(),
        Some(c.session_token().to_string()),
        None,
        "assumed",
    )
}

fn code<T: std::fmt::Debug, E: ProvideErrorMetadata + std::fmt::Debug, R: std::fmt::Debug>(
    result: Result<T, SdkError<E, R>>,
) -> String {
    match result {
        Ok(v) => panic!("expected an error, got {v:?}"),
        Err(e) => e
            .as_service_error()
            .and_then(|s| s.code())
            .unwrap_or_else(|| panic!("not a service error: {e:?}"))
            .to_string(),
    }
}

/// A VPC store (no proxy contacted before Connect), distinct per `i`.
async fn create_vpc_store(
    client: &aws_sdk_kms::Client,
    name: &str,
    i: usize,
) -> Result<String, String> {
    client
        .create_custom_key_store()
        .custom_key_store_name(name)
        .custom_key_store_type(CustomKeyStoreType::ExternalKeyStore)
        .xks_proxy_connectivity(XksProxyConnectivityType::VpcEndpointService)
        .xks_proxy_uri_endpoint(format!("https://xks-vpc-{i}.example.com"))
        .xks_proxy_uri_path(DEMO_URI_PATH)
        .xks_proxy_vpc_endpoint_service_name(format!(
            "com.amazonaws.vpce.us-east-1.vpce-svc-{i:017x}"
        ))
        .xks_proxy_authentication_credential(
            XksProxyAuthenticationCredentialType::builder()
                .access_key_id(DEMO_ACCESS_KEY_ID)
                .raw_secret_access_key(DEMO_SECRET)
                .build()
                .unwrap(),
        )
        .send()
        .await
        .map(|o| o.custom_key_store_id.unwrap())
        .map_err(|e| {
            e.as_service_error()
                .and_then(|s| s.code())
                .unwrap_or("?")
                .to_string()
        })
}

async fn store_names(client: &aws_sdk_kms::Client) -> Vec<String> {
    client
        .describe_custom_key_stores()
        .send()
        .await
        .unwrap()
        .custom_key_stores()
        .iter()
        .map(|s| s.custom_key_store_name().unwrap_or_default().to_string())
        .collect()
}

/// POST / with a form body, signed (in scope only) by `akid`.
async fn raw_sts(
    emu: &RunningEmulator,
    form: &str,
    akid: &str,
    token: Option<&str>,
) -> (u16, String) {
    let mut req = reqwest::Client::new()
        .post(emu.sts_endpoint())
        .header("content-type", "application/x-www-form-urlencoded; charset=utf-8")
        .header(
            "authorization",
            format!(
                "AWS4-HMAC-SHA256 Credential={akid}/20260101/us-east-1/sts/aws4_request, SignedHeaders=host;x-amz-date, Signature=00"
            ),
        )
        .body(form.to_string());
    if let Some(t) = token {
        req = req.header("x-amz-security-token", t);
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    assert_eq!(
        r.headers().get("content-type").unwrap(),
        "text/xml",
        "STS answers XML"
    );
    (status, r.text().await.unwrap())
}

async fn control(
    emu: &RunningEmulator,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let url = format!("{}/_emulator/{path}", emu.kms_endpoint());
    let http = reqwest::Client::new();
    let mut req = http.request(method.parse().unwrap(), url);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

// --- identities --------------------------------------------------------------

#[tokio::test]
async fn get_caller_identity_for_each_kind_of_identity() {
    let emu = start(config()).await;
    let me = sts(&emu, default_creds())
        .get_caller_identity()
        .send()
        .await
        .unwrap();
    assert_eq!(me.account(), Some(DEMO_ACCOUNT_ID));
    assert_eq!(me.arn(), Some(DEMO_DEFAULT_IDENTITY_ARN));
    assert!(me.user_id().unwrap().starts_with("AIDA"));

    let ci = sts(&emu, Credentials::new(CI_KEY, "whatever", None, None, "t"))
        .get_caller_identity()
        .send()
        .await
        .unwrap();
    assert_eq!(
        (ci.account(), ci.arn()),
        (Some(THIRD_ACCOUNT), Some(CI_ARN))
    );

    let assumed = assume(&emu, DEMO_ROLE_ARN, "operator-1").await;
    assert!(assumed.access_key_id().starts_with("ASIA"));
    assert_eq!(assumed.access_key_id().len(), 20);
    let role = sts(&emu, assumed)
        .get_caller_identity()
        .send()
        .await
        .unwrap();
    assert_eq!(role.account(), Some(DEMO_SECOND_ACCOUNT_ID));
    assert_eq!(
        role.arn(),
        Some("arn:aws:sts::222233334444:assumed-role/xks-operator/operator-1")
    );
    let user_id = role.user_id().unwrap();
    assert!(user_id.starts_with("AROA") && user_id.ends_with(":operator-1"));
    emu.shutdown().await;
}

#[tokio::test]
async fn assume_role_answers_in_the_shape_of_sts() {
    let emu = start(config()).await;
    let out = sts(&emu, default_creds())
        .assume_role()
        .role_arn(DEMO_ROLE_ARN)
        .role_session_name("shape")
        .duration_seconds(900)
        .source_identity("alice")
        .send()
        .await
        .unwrap();
    let user = out.assumed_role_user().unwrap();
    assert_eq!(
        user.arn(),
        "arn:aws:sts::222233334444:assumed-role/xks-operator/shape"
    );
    assert!(user.assumed_role_id().ends_with(":shape"));
    assert_eq!(out.source_identity(), Some("alice"));
    let c = out.credentials().unwrap();
    let left = c.expiration().secs()
        - aws_smithy_types::DateTime::from(std::time::SystemTime::now()).secs();
    assert!((890..=901).contains(&left), "expires in {left}s");
    assert_eq!(c.secret_access_key().len(), 40);
    assert!(c.session_token().len() > 100);
    use aws_sdk_sts::operation::RequestId;
    assert!(out.request_id().is_some_and(|id| id.len() == 36));

    // Raw: the XML itself, and the request id in the metadata.
    let (status, body) = raw_sts(
        &emu,
        "Action=AssumeRole&Version=2011-06-15&RoleArn=arn%3Aaws%3Aiam%3A%3A222233334444%3Arole%2Fxks-operator&RoleSessionName=raw",
        "AKIDRAW",
        None,
    )
    .await;
    assert_eq!(status, 200);
    for part in [
        "<AssumeRoleResponse xmlns=\"https://sts.amazonaws.com/doc/2011-06-15/\">",
        "<AssumeRoleResult>",
        "<AssumedRoleUser><AssumedRoleId>AROA",
        "<Arn>arn:aws:sts::222233334444:assumed-role/xks-operator/raw</Arn>",
        "<Credentials><AccessKeyId>ASIA",
        "<SecretAccessKey>",
        "<SessionToken>",
        "<Expiration>",
        "<ResponseMetadata><RequestId>",
    ] {
        assert!(body.contains(part), "missing {part} in {body}");
    }
    emu.shutdown().await;
}

// --- denials and validation ----------------------------------------------------

#[tokio::test]
async fn assume_role_denied_as_sts_denies() {
    let emu = start(config()).await;
    let me = sts(&emu, default_creds());
    let ci = sts(&emu, Credentials::new(CI_KEY, "x", None, None, "t"));
    let send = |client: &aws_sdk_sts::Client, role: &str, external: Option<&str>| {
        client
            .assume_role()
            .role_arn(role)
            .role_session_name("ss")
            .set_external_id(external.map(str::to_owned))
            .send()
    };
    // Unknown role, untrusted caller, missing or wrong external id: all the same.
    for result in [
        send(&me, "arn:aws:iam::222233334444:role/nobody", None).await,
        send(&ci, DEMO_ROLE_ARN, None).await,
        send(&me, GUARDED_ROLE, None).await,
        send(&me, GUARDED_ROLE, Some("wrong-external-id")).await,
    ] {
        let e = result.unwrap_err();
        let service = e.as_service_error().unwrap();
        assert_eq!(service.code(), Some("AccessDenied"));
        assert_eq!(e.raw_response().unwrap().status().as_u16(), 403);
        assert!(
            !service.message().unwrap().contains(EXTERNAL_ID),
            "the external id must not be echoed"
        );
    }
    send(&me, GUARDED_ROLE, Some(EXTERNAL_ID)).await.unwrap();
    // A role that requires no external id accepts one anyway.
    send(&me, DEMO_ROLE_ARN, Some("unneeded")).await.unwrap();

    // The error document itself.
    let (status, body) = raw_sts(
        &emu,
        "Action=AssumeRole&Version=2011-06-15&RoleArn=arn:aws:iam::222233334444:role/nobody&RoleSessionName=s1",
        "AKIDRAW",
        None,
    )
    .await;
    assert_eq!(status, 403);
    assert!(body.starts_with("<ErrorResponse xmlns=\"https://sts.amazonaws.com/doc/2011-06-15/\"><Error><Type>Sender</Type><Code>AccessDenied</Code>"));
    assert!(body.contains(
        "<Message>User: arn:aws:iam::111122223333:user/emulator is not authorized to perform: sts:AssumeRole on resource: arn:aws:iam::222233334444:role/nobody</Message>"
    ));
    assert!(body.contains("</Error><RequestId>") && body.ends_with("</RequestId></ErrorResponse>"));

    // Trust fixed at run time: the same call succeeds.
    let (status, _) = control(
        &emu,
        "PUT",
        "sts/roles/arn:aws:iam::222233334444:role/nobody",
        Some(json!({"trustedPrincipals": [THIRD_ACCOUNT]})),
    )
    .await;
    assert_eq!(status, 200);
    send(&ci, "arn:aws:iam::222233334444:role/nobody", None)
        .await
        .unwrap();
    assert_eq!(
        code(send(&me, "arn:aws:iam::222233334444:role/nobody", None).await),
        "AccessDenied"
    );
    let (status, _) = control(
        &emu,
        "DELETE",
        "sts/roles/arn:aws:iam::222233334444:role/nobody",
        None,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        code(send(&ci, "arn:aws:iam::222233334444:role/nobody", None).await),
        "AccessDenied"
    );
    emu.shutdown().await;
}

#[tokio::test]
async fn assume_role_input_is_validated_as_sts_does() {
    let emu = start(config()).await;
    let role = "RoleArn=arn:aws:iam::222233334444:role/xks-operator";
    let cases: &[(&str, &str)] = &[
        (
            "RoleSessionName=x",
            "Value 'x' at 'roleSessionName' failed to satisfy constraint: Member must have length greater than or equal to 2",
        ),
        (
            "RoleSessionName=has%20space",
            "Value 'has space' at 'roleSessionName' failed to satisfy constraint: Member must satisfy regular expression pattern: [\\w+=,.@-]*",
        ),
        (
            "RoleSessionName=ok&DurationSeconds=899",
            "Value '899' at 'durationSeconds' failed to satisfy constraint: Member must have value greater than or equal to 900",
        ),
        (
            "RoleSessionName=ok&DurationSeconds=43201",
            "Value '43201' at 'durationSeconds' failed to satisfy constraint: Member must have value less than or equal to 43200",
        ),
        (
            "RoleSessionName=ok&DurationSeconds=7200",
            "The requested DurationSeconds exceeds the MaxSessionDuration set for this role.",
        ),
        (
            "RoleSessionName=ok&ExternalId=x",
            "Value at 'externalId' failed to satisfy constraint: Member must have length greater than or equal to 2",
        ),
    ];
    for (extra, message) in cases {
        let form = format!("Action=AssumeRole&Version=2011-06-15&{role}&{extra}");
        let (status, body) = raw_sts(&emu, &form, "AKIDRAW", None).await;
        assert_eq!(status, 400, "{extra}: {body}");
        assert!(
            body.contains("<Code>ValidationError</Code>"),
            "{extra}: {body}"
        );
        assert!(body.contains(&xml_escape(message)), "{extra}: {body}");
    }
    // Several violations in one message; a missing member is null.
    let (status, body) = raw_sts(
        &emu,
        "Action=AssumeRole&Version=2011-06-15&RoleArn=short&DurationSeconds=1",
        "AKIDRAW",
        None,
    )
    .await;
    assert_eq!(status, 400);
    assert!(
        body.contains(
            "3 validation errors detected: Value &apos;short&apos; at &apos;roleArn&apos;"
        ),
        "{body}"
    );
    assert!(body.contains("Value null at &apos;roleSessionName&apos; failed to satisfy constraint: Member must not be null"));
    // Not an ARN at all.
    let (status, body) = raw_sts(
        &emu,
        "Action=AssumeRole&Version=2011-06-15&RoleArn=definitely-not-an-arn&RoleSessionName=ok",
        "AKIDRAW",
        None,
    )
    .await;
    assert_eq!(
        (status, body.contains("<Code>ValidationError</Code>")),
        (400, true)
    );
    // Actions and versions.
    let (status, body) = raw_sts(
        &emu,
        "Action=GetSessionToken&Version=2011-06-15",
        "AKIDRAW",
        None,
    )
    .await;
    assert_eq!(
        (status, body.contains("<Code>InvalidAction</Code>")),
        (400, true)
    );
    let (status, body) = raw_sts(
        &emu,
        "Action=GetCallerIdentity&Version=2010-01-01",
        "AKIDRAW",
        None,
    )
    .await;
    assert_eq!(
        (status, body.contains("<Code>InvalidAction</Code>")),
        (400, true)
    );
    let (status, body) = raw_sts(&emu, "Version=2011-06-15", "AKIDRAW", None).await;
    assert_eq!(
        (status, body.contains("<Code>MissingAction</Code>")),
        (400, true)
    );
    // Markup in a value comes back escaped, never as markup.
    let (_, body) = raw_sts(
        &emu,
        "Action=AssumeRole&Version=2011-06-15&RoleArn=arn:aws:iam::222233334444:role/%3Cx%3E%26&RoleSessionName=ok",
        "AKIDRAW",
        None,
    )
    .await;
    assert!(body.contains("role/&lt;x&gt;&amp;</Message>"), "{body}");
    emu.shutdown().await;
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('\'', "&apos;")
        .replace('"', "&quot;")
}

#[tokio::test]
async fn role_chaining_is_trusted_by_role_and_limited_to_an_hour() {
    let mut cfg = config();
    let hop = "arn:aws:iam::333344445555:role/hop";
    cfg.roles.push(RoleConfig {
        max_session_duration_seconds: 43200,
        ..RoleConfig::new(hop).trusting(DEMO_ROLE_ARN)
    });
    let emu = start(cfg).await;
    let first = sts(&emu, assume(&emu, DEMO_ROLE_ARN, "first").await);
    let second = first
        .assume_role()
        .role_arn(hop)
        .role_session_name("second")
        .send()
        .await
        .unwrap();
    assert_eq!(
        second.assumed_role_user().unwrap().arn(),
        "arn:aws:sts::333344445555:assumed-role/hop/second"
    );
    let e = first
        .assume_role()
        .role_arn(hop)
        .role_session_name("long")
        .duration_seconds(7200)
        .send()
        .await
        .unwrap_err();
    let e = e.as_service_error().unwrap();
    assert_eq!(e.code(), Some("ValidationError"));
    assert!(e.message().unwrap().contains("role chaining"));
    // The default identity is not trusted by the hop role.
    assert_eq!(
        code(
            sts(&emu, default_creds())
                .assume_role()
                .role_arn(hop)
                .role_session_name("direct")
                .send()
                .await
        ),
        "AccessDenied"
    );
    emu.shutdown().await;
}

// --- expiry ------------------------------------------------------------------------

#[tokio::test]
async fn expired_and_invalid_session_credentials_are_refused() {
    let emu = start(config()).await;
    let creds = assume(&emu, DEMO_ROLE_ARN, "expiring").await;
    let client = kms(&emu, DEMO_REGION, creds.clone());
    client.list_keys().send().await.unwrap();

    let (status, body) = control(&emu, "POST", "sts/expire-sessions", None).await;
    assert_eq!((status, &body["expired"]), (200, &json!(1)));
    let e = client.list_keys().send().await.unwrap_err();
    assert_eq!(e.raw_response().unwrap().status().as_u16(), 400);
    let e = e.as_service_error().unwrap();
    assert_eq!(e.code(), Some("ExpiredTokenException"));
    assert_eq!(
        e.message(),
        Some("The security token included in the request is expired")
    );
    let e = sts(&emu, creds.clone())
        .get_caller_identity()
        .send()
        .await
        .unwrap_err();
    assert_eq!(e.raw_response().unwrap().status().as_u16(), 400);
    assert_eq!(e.as_service_error().unwrap().code(), Some("ExpiredToken"));
    // Counted in the session's account, not the default one.
    let account = emu.control().account(DEMO_SECOND_ACCOUNT_ID, DEMO_REGION);
    assert_eq!(account.requests("ListKeys"), 2);
    assert_eq!(
        account.operation_stats()["ListKeys"].errors["ExpiredTokenException"],
        1
    );
    assert_eq!(emu.control().requests("ListKeys"), 0);

    // An issued access key id with another session token, or none.
    let fresh = assume(&emu, DEMO_ROLE_ARN, "fresh").await;
    let forged = Credentials::new(
        fresh.access_key_id(),
        fresh.secret_access_key(),
        Some("not-the-issued-token".into()),
        None,
        "forged",
    );
    assert_eq!(
        code(kms(&emu, DEMO_REGION, forged).list_keys().send().await),
        "UnrecognizedClientException"
    );
    let (status, body) = raw_sts(
        &emu,
        "Action=GetCallerIdentity&Version=2011-06-15",
        fresh.access_key_id(),
        None,
    )
    .await;
    assert_eq!(
        (status, body.contains("<Code>InvalidClientTokenId</Code>")),
        (403, true)
    );
    let (status, _) = raw_sts(
        &emu,
        "Action=GetCallerIdentity&Version=2011-06-15",
        fresh.access_key_id(),
        fresh.session_token(),
    )
    .await;
    assert_eq!(status, 200);
    emu.shutdown().await;
}

#[tokio::test]
async fn short_sessions_expire_on_their_own() {
    let emu = start(EmulatorConfig {
        sts: StsConfig {
            session_duration_seconds: Some(1),
            ..StsConfig::default()
        },
        ..config()
    })
    .await;
    let out = sts(&emu, default_creds())
        .assume_role()
        .role_arn(DEMO_ROLE_ARN)
        .role_session_name("short")
        .duration_seconds(3600)
        .send()
        .await
        .unwrap();
    let c = out.credentials().unwrap();
    let creds = Credentials::new(
        c.access_key_id(),
        c.secret_access_key(),
        Some(c.session_token().to_string()),
        None,
        "t",
    );
    let now = aws_smithy_types::DateTime::from(std::time::SystemTime::now()).secs();
    assert!(
        c.expiration().secs() - now <= 1,
        "Expiration tells the short life"
    );
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_eq!(
        code(kms(&emu, DEMO_REGION, creds).list_keys().send().await),
        "ExpiredTokenException"
    );
    // Back to the asked duration at run time.
    emu.control().sts().set_session_duration(None);
    let out = sts(&emu, default_creds())
        .assume_role()
        .role_arn(DEMO_ROLE_ARN)
        .role_session_name("normal")
        .send()
        .await
        .unwrap();
    let now = aws_smithy_types::DateTime::from(std::time::SystemTime::now()).secs();
    assert!(out.credentials().unwrap().expiration().secs() - now > 3500);
    emu.shutdown().await;
}

/// aws-config's AssumeRoleProvider (what an operator uses) against the
/// emulator: it assumes the role, and re-assumes it when the credentials
/// come near their expiry, so calls keep working across expirations.
#[tokio::test]
async fn the_sdk_assume_role_provider_refreshes_expiring_credentials() {
    let emu = start(EmulatorConfig {
        sts: StsConfig {
            session_duration_seconds: Some(1),
            ..StsConfig::default()
        },
        ..config()
    })
    .await;
    let base = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new(DEMO_REGION))
        .endpoint_url(emu.kms_endpoint())
        .credentials_provider(default_creds())
        .retry_config(RetryConfig::disabled())
        .load()
        .await;
    let provider = aws_config::sts::AssumeRoleProvider::builder(DEMO_ROLE_ARN)
        .session_name("xks-operator")
        .configure(&base)
        .build()
        .await;
    let conf = aws_sdk_kms::config::Builder::from(&base)
        .credentials_provider(provider)
        .build();
    let client = aws_sdk_kms::Client::from_conf(conf);
    create_vpc_store(&client, "role-store", 1).await.unwrap();
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(1100)).await;
        assert_eq!(store_names(&client).await, ["role-store"]);
    }
    assert!(emu.control().sts().faults.stats()["AssumeRole"].requests >= 3);
    // The store lives in the role's account.
    assert!(
        store_names(&kms(&emu, DEMO_REGION, default_creds()))
            .await
            .is_empty()
    );
    assert_eq!(
        emu.control()
            .account(DEMO_SECOND_ACCOUNT_ID, DEMO_REGION)
            .state()["customKeyStores"][0]["CustomKeyStoreName"],
        "role-store"
    );
    emu.shutdown().await;
}

// --- KMS per account and Region -----------------------------------------------------

#[tokio::test]
async fn stores_names_and_quotas_are_per_account_and_region() {
    let emu = start(EmulatorConfig {
        max_custom_key_stores: 2,
        ..config()
    })
    .await;
    let mine = kms(&emu, DEMO_REGION, default_creds());
    let role = kms(&emu, DEMO_REGION, assume(&emu, DEMO_ROLE_ARN, "qq").await);
    let mine_eu = kms(&emu, "eu-west-1", default_creds());

    // The same name (and URI) in three account+Regions.
    let a = create_vpc_store(&mine, "shared-name", 1).await.unwrap();
    let b = create_vpc_store(&role, "shared-name", 1).await.unwrap();
    let c = create_vpc_store(&mine_eu, "shared-name", 1).await.unwrap();
    assert!(a != b && b != c && a != c, "store ids stay globally unique");
    assert_eq!(
        create_vpc_store(&mine, "shared-name", 2).await,
        Err("CustomKeyStoreNameInUseException".into())
    );
    // Each has its own quota of 2.
    create_vpc_store(&mine, "second", 2).await.unwrap();
    assert_eq!(
        create_vpc_store(&mine, "third", 3).await,
        Err("LimitExceededException".into())
    );
    create_vpc_store(&role, "second", 2).await.unwrap();
    create_vpc_store(&mine_eu, "second", 2).await.unwrap();
    // Each sees only its own.
    assert_eq!(store_names(&role).await, ["shared-name", "second"]);
    assert_eq!(
        code(
            role.describe_custom_key_stores()
                .custom_key_store_id(&a)
                .send()
                .await
        ),
        "CustomKeyStoreNotFoundException"
    );
    // Key ARNs name the account and Region.
    let key = role.create_key().send().await.unwrap();
    let arn = key.key_metadata().unwrap().arn().unwrap().to_string();
    assert!(
        arn.starts_with("arn:aws:kms:us-east-1:222233334444:key/"),
        "{arn}"
    );
    assert_eq!(
        key.key_metadata().unwrap().aws_account_id(),
        Some(DEMO_SECOND_ACCOUNT_ID)
    );
    let key = mine_eu.create_key().send().await.unwrap();
    assert!(
        key.key_metadata()
            .unwrap()
            .arn()
            .unwrap()
            .starts_with("arn:aws:kms:eu-west-1:111122223333:key/")
    );
    assert_eq!(
        code(
            role.describe_key()
                .key_id(key.key_metadata().unwrap().key_id())
                .send()
                .await
        ),
        "NotFoundException"
    );

    // The control API addresses each one.
    let (status, state) = control(&emu, "GET", "state?account=222233334444", None).await;
    assert_eq!(status, 200);
    assert_eq!(state["settings"]["accountId"], DEMO_SECOND_ACCOUNT_ID);
    assert_eq!(state["customKeyStores"].as_array().unwrap().len(), 2);
    assert_eq!(state["keys"].as_array().unwrap().len(), 1);
    let (_, state) = control(&emu, "GET", "state?region=eu-west-1", None).await;
    assert_eq!(state["settings"]["accountId"], DEMO_ACCOUNT_ID);
    assert_eq!(state["settings"]["region"], "eu-west-1");
    let (_, accounts) = control(&emu, "GET", "accounts", None).await;
    let list = accounts["accounts"].as_array().unwrap();
    assert_eq!(list.len(), 3);
    assert!(list.iter().all(|a| a["customKeyStores"] == 2));
    for bad in [
        "state?account=12",
        "state?region=EU%20WEST",
        "state?acount=222233334444",
    ] {
        let (status, body) = control(&emu, "GET", bad, None).await;
        assert_eq!(status, 400, "{bad}");
        assert!(body["error"].is_string());
    }

    // A scoped settings change and a scoped reset touch one account only.
    let (status, _) = control(
        &emu,
        "PUT",
        "settings?account=222233334444",
        Some(json!({"maxCustomKeyStores": 3})),
    )
    .await;
    assert_eq!(status, 200);
    create_vpc_store(&role, "third", 3).await.unwrap();
    assert_eq!(
        create_vpc_store(&mine, "third", 3).await,
        Err("LimitExceededException".into())
    );
    let (status, _) = control(&emu, "POST", "reset?account=222233334444", None).await;
    assert_eq!(status, 200);
    assert!(store_names(&role).await.is_empty());
    assert_eq!(store_names(&mine).await.len(), 2);
    // An unscoped settings change reaches every account.
    control(
        &emu,
        "PUT",
        "settings",
        Some(json!({"maxCustomKeyStores": 5})),
    )
    .await;
    create_vpc_store(&mine, "third", 3).await.unwrap();
    let (_, state) = control(&emu, "GET", "state?account=222233334444", None).await;
    assert_eq!(state["settings"]["maxCustomKeyStores"], 5);
    emu.shutdown().await;
}

#[tokio::test]
async fn throttles_and_faults_are_per_account_and_region() {
    let mut cfg = config();
    cfg.faults.insert(
        ALL_OPERATIONS.into(),
        OperationFaults {
            rate_limit: Some(RateLimit::default()),
            ..OperationFaults::default()
        },
    );
    let emu = start(cfg).await;
    let mine = kms(&emu, DEMO_REGION, default_creds());
    let role = kms(&emu, DEMO_REGION, assume(&emu, DEMO_ROLE_ARN, "tt").await);
    let mine_eu = kms(&emu, "eu-west-1", default_creds());

    // Exhaust the default account's bucket: the other account and the
    // other Region still have all of theirs.
    for _ in 0..5 {
        mine.list_keys().send().await.unwrap();
    }
    assert_eq!(code(mine.list_keys().send().await), "ThrottlingException");
    for _ in 0..5 {
        role.list_keys().send().await.unwrap();
        mine_eu.list_keys().send().await.unwrap();
    }
    assert_eq!(emu.control().throttled("ListKeys"), 1);
    let other = emu.control().account(DEMO_SECOND_ACCOUNT_ID, DEMO_REGION);
    assert_eq!(
        (other.requests("ListKeys"), other.throttled("ListKeys")),
        (5, 0)
    );

    // A fault set for one account is not seen by another.
    let (status, _) = control(
        &emu,
        "PUT",
        "faults/DescribeKey?account=222233334444",
        Some(json!({"throttleNext": 1})),
    )
    .await;
    assert_eq!(status, 200);
    let key = role.create_key().send().await.unwrap();
    let key_id = key.key_metadata().unwrap().key_id().to_string();
    let mine_key = mine_eu.create_key().send().await.unwrap();
    mine_eu
        .describe_key()
        .key_id(mine_key.key_metadata().unwrap().key_id())
        .send()
        .await
        .unwrap();
    assert_eq!(
        code(role.describe_key().key_id(&key_id).send().await),
        "ThrottlingException"
    );
    role.describe_key().key_id(&key_id).send().await.unwrap();
    let (_, faults) = control(&emu, "GET", "faults?account=222233334444", None).await;
    assert_eq!(faults["DescribeKey"]["throttleNext"], 0);
    let (_, faults) = control(&emu, "GET", "faults", None).await;
    assert!(faults.get("DescribeKey").is_none());
    let (_, stats) = control(&emu, "GET", "stats?account=222233334444", None).await;
    assert_eq!(stats["accountId"], DEMO_SECOND_ACCOUNT_ID);
    assert_eq!(stats["operations"]["DescribeKey"]["throttled"], 1);
    let (_, stats) = control(&emu, "GET", "stats", None).await;
    assert!(stats["operations"].get("DescribeKey").is_none());

    // The Rust API does the same.
    emu.control()
        .account(DEMO_SECOND_ACCOUNT_ID, "eu-west-1")
        .set_operation_faults(
            "ListKeys",
            Some(OperationFaults {
                internal_error_next: 1,
                ..OperationFaults::default()
            }),
        );
    let role_eu = kms(&emu, "eu-west-1", assume(&emu, DEMO_ROLE_ARN, "eu").await);
    assert_eq!(
        code(role_eu.list_keys().send().await),
        "KMSInternalException"
    );
    role_eu.list_keys().send().await.unwrap();
    emu.shutdown().await;
}

#[tokio::test]
async fn overrides_apply_to_their_account_and_region() {
    let mut cfg = config();
    cfg.overrides = vec![
        AccountOverride {
            account_id: DEMO_SECOND_ACCOUNT_ID.into(),
            max_custom_key_stores: Some(1),
            ..AccountOverride::default()
        },
        AccountOverride {
            account_id: DEMO_SECOND_ACCOUNT_ID.into(),
            region: Some("eu-west-1".into()),
            max_custom_key_stores: Some(3),
            faults: Some(
                [(
                    "ListKeys".to_string(),
                    OperationFaults {
                        throttle_next: 1,
                        ..OperationFaults::default()
                    },
                )]
                .into(),
            ),
            ..AccountOverride::default()
        },
    ];
    let emu = start(cfg).await;
    let creds = assume(&emu, DEMO_ROLE_ARN, "oo").await;
    let role = kms(&emu, DEMO_REGION, creds.clone());
    let role_eu = kms(&emu, "eu-west-1", creds);
    create_vpc_store(&role, "one", 1).await.unwrap();
    assert_eq!(
        create_vpc_store(&role, "two", 2).await,
        Err("LimitExceededException".into())
    );
    for i in 0..3 {
        create_vpc_store(&role_eu, &format!("s{i}"), i)
            .await
            .unwrap();
    }
    assert_eq!(
        code(role_eu.list_keys().send().await),
        "ThrottlingException"
    );
    role.list_keys().send().await.unwrap();
    // An unscoped settings change does not undo an override.
    emu.control()
        .update_settings(xks_emulator::control::SettingsPatch {
            max_custom_key_stores: Some(10),
            ..Default::default()
        });
    assert_eq!(
        create_vpc_store(&role, "two", 2).await,
        Err("LimitExceededException".into())
    );
    create_vpc_store(&kms(&emu, DEMO_REGION, default_creds()), "mine", 1)
        .await
        .unwrap();
    emu.shutdown().await;
}

#[tokio::test]
async fn an_identity_and_unsigned_requests_pick_their_account() {
    let emu = start(config()).await;
    let ci = kms(
        &emu,
        "ap-south-1",
        Credentials::new(CI_KEY, "x", None, None, "t"),
    );
    create_vpc_store(&ci, "ci-store", 1).await.unwrap();
    let state = emu.control().account(THIRD_ACCOUNT, "ap-south-1").state();
    assert_eq!(
        state["customKeyStores"][0]["CustomKeyStoreName"],
        "ci-store"
    );
    // No Authorization header at all: the default account and Region.
    let r = reqwest::Client::new()
        .post(emu.kms_endpoint())
        .header("x-amz-target", "TrentService.ListKeys")
        .header("content-type", "application/x-amz-json-1.1")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(emu.control().requests("ListKeys"), 1);
    emu.shutdown().await;
}

// --- the embedded default, STS faults, control, reset, secrets ----------------------

#[tokio::test]
async fn the_embedded_default_serves_a_second_account_with_a_real_proxy() {
    let emu = start(EmulatorConfig {
        connect_delay_ms: 20,
        disconnect_delay_ms: 20,
        ..EmulatorConfig::default()
    })
    .await;
    let role = kms(&emu, DEMO_REGION, assume(&emu, DEMO_ROLE_ARN, "demo").await);
    let id = role
        .create_custom_key_store()
        .custom_key_store_name("second-account")
        .custom_key_store_type(CustomKeyStoreType::ExternalKeyStore)
        .xks_proxy_connectivity(XksProxyConnectivityType::PublicEndpoint)
        .xks_proxy_uri_endpoint(format!("https://{DEMO_PRIMARY_HOST}"))
        .xks_proxy_uri_path(DEMO_URI_PATH)
        .xks_proxy_authentication_credential(
            XksProxyAuthenticationCredentialType::builder()
                .access_key_id(DEMO_ACCESS_KEY_ID)
                .raw_secret_access_key(DEMO_SECRET)
                .build()
                .unwrap(),
        )
        .send()
        .await
        .unwrap()
        .custom_key_store_id
        .unwrap();
    role.connect_custom_key_store()
        .custom_key_store_id(&id)
        .send()
        .await
        .unwrap();
    let mut state = String::new();
    for _ in 0..100 {
        state = role
            .describe_custom_key_stores()
            .custom_key_store_id(&id)
            .send()
            .await
            .unwrap()
            .custom_key_stores()[0]
            .connection_state()
            .unwrap()
            .as_str()
            .to_string();
        if state == "CONNECTED" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(state, "CONNECTED");
    // The same proxy can serve a store of the default account too.
    assert!(
        store_names(&kms(&emu, DEMO_REGION, default_creds()))
            .await
            .is_empty()
    );
    emu.shutdown().await;
}

#[tokio::test]
async fn sts_faults_control_and_reset() {
    let emu = start(config()).await;
    let client = sts(&emu, default_creds());
    let (status, _) = control(
        &emu,
        "PUT",
        "sts/faults/AssumeRole",
        Some(json!({"throttleNext": 2})),
    )
    .await;
    assert_eq!(status, 200);
    for _ in 0..2 {
        let e = client
            .assume_role()
            .role_arn(DEMO_ROLE_ARN)
            .role_session_name("tt")
            .send()
            .await
            .unwrap_err();
        assert_eq!(e.raw_response().unwrap().status().as_u16(), 400);
        assert_eq!(e.as_service_error().unwrap().code(), Some("Throttling"));
    }
    let ok = client
        .assume_role()
        .role_arn(DEMO_ROLE_ARN)
        .role_session_name("tt")
        .send()
        .await
        .unwrap();
    client.get_caller_identity().send().await.unwrap();
    let (status, _) = control(
        &emu,
        "PUT",
        "sts/faults/AssumeRol",
        Some(json!({"throttleNext": 1})),
    )
    .await;
    assert_eq!(status, 400);
    let (status, _) = control(
        &emu,
        "PUT",
        "sts/faults",
        Some(json!({"*": {"internalErrorNext": 1}})),
    )
    .await;
    assert_eq!(status, 200);
    let e = client.get_caller_identity().send().await.unwrap_err();
    assert_eq!(e.raw_response().unwrap().status().as_u16(), 500);
    assert_eq!(
        e.as_service_error().unwrap().code(),
        Some("InternalFailure")
    );

    let (_, described) = control(&emu, "GET", "sts", None).await;
    assert_eq!(described["operations"]["AssumeRole"]["throttled"], 2);
    assert_eq!(described["operations"]["AssumeRole"]["requests"], 3);
    assert_eq!(
        described["defaultIdentity"]["arn"],
        DEMO_DEFAULT_IDENTITY_ARN
    );
    let session = &described["sessions"][0];
    let c = ok.credentials().unwrap();
    assert_eq!(session["accessKeyId"], c.access_key_id());
    assert_eq!(session["expired"], false);
    let text = described.to_string();
    assert!(!text.contains(c.secret_access_key()) && !text.contains(c.session_token()));
    assert!(!text.contains(EXTERNAL_ID), "external ids stay hidden");
    let guarded = described["roles"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["arn"] == GUARDED_ROLE)
        .unwrap();
    assert_eq!(guarded["externalIdRequired"], true);

    // Identities at run time.
    let (status, _) = control(
        &emu,
        "PUT",
        "sts/identities/AKIANEWIDENTITY00001",
        Some(json!({"arn": "arn:aws:iam::444455556666:user/new"})),
    )
    .await;
    assert_eq!(status, 200);
    let who = sts(
        &emu,
        Credentials::new("AKIANEWIDENTITY00001", "x", None, None, "t"),
    )
    .get_caller_identity()
    .send()
    .await
    .unwrap();
    assert_eq!(who.account(), Some("444455556666"));
    let (status, _) = control(
        &emu,
        "PUT",
        "sts/identities/AKIANEWIDENTITY00002",
        Some(json!({"arn": "user/new"})),
    )
    .await;
    assert_eq!(status, 400);

    // A full reset: faults and identities back to the config, sessions expire.
    let (status, _) = control(&emu, "POST", "reset", None).await;
    assert_eq!(status, 200);
    let creds = Credentials::new(
        c.access_key_id(),
        c.secret_access_key(),
        Some(c.session_token().to_string()),
        None,
        "t",
    );
    assert_eq!(
        code(kms(&emu, DEMO_REGION, creds).list_keys().send().await),
        "ExpiredTokenException"
    );
    let who = sts(
        &emu,
        Credentials::new("AKIANEWIDENTITY00001", "x", None, None, "t"),
    )
    .get_caller_identity()
    .send()
    .await
    .unwrap();
    assert_eq!(who.account(), Some(DEMO_ACCOUNT_ID));
    let (_, described) = control(&emu, "GET", "sts", None).await;
    assert_eq!(described["faults"], json!({}));
    assert_eq!(described["operations"]["GetCallerIdentity"]["requests"], 1);

    // Sessions can be expired by role.
    assume(&emu, DEMO_ROLE_ARN, "aa").await;
    let (_, r) = control(
        &emu,
        "POST",
        &format!("sts/expire-sessions?roleArn={GUARDED_ROLE}"),
        None,
    )
    .await;
    assert_eq!(r["expired"], 0);
    let (_, r) = control(
        &emu,
        "POST",
        &format!("sts/expire-sessions?roleArn={DEMO_ROLE_ARN}"),
        None,
    )
    .await;
    assert_eq!(r["expired"], 1);
    let (status, body) = control(
        &emu,
        "PUT",
        "sts/settings",
        Some(json!({"sessionDurationSeconds": 30})),
    )
    .await;
    assert_eq!((status, body), (200, json!({"ok": true})));
    assert_eq!(emu.control().sts().session_duration(), Some(30));
    emu.shutdown().await;
}

#[tokio::test]
async fn issued_secrets_never_appear_in_logs() {
    let emu = start(config()).await;
    let out = sts(&emu, default_creds())
        .assume_role()
        .role_arn(GUARDED_ROLE)
        .role_session_name("logged")
        .external_id(EXTERNAL_ID)
        .send()
        .await
        .unwrap();
    let c = out.credentials().unwrap();
    let creds = Credentials::new(
        c.access_key_id(),
        c.secret_access_key(),
        Some(c.session_token().to_string()),
        None,
        "t",
    );
    kms(&emu, DEMO_REGION, creds.clone())
        .list_keys()
        .send()
        .await
        .unwrap();
    emu.control().sts().expire_sessions(None);
    let _ = kms(&emu, DEMO_REGION, creds).list_keys().send().await;
    let _ = sts(&emu, default_creds())
        .assume_role()
        .role_arn(GUARDED_ROLE)
        .role_session_name("logged")
        .external_id("a-wrong-external-id")
        .send()
        .await;
    let text = logs().text();
    assert!(
        text.contains("STS AssumeRole issued credentials"),
        "the issue is logged"
    );
    for secret in [
        c.secret_access_key(),
        c.session_token(),
        EXTERNAL_ID,
        "a-wrong-external-id",
    ] {
        assert!(!text.contains(secret), "a log line holds a secret");
    }
    emu.shutdown().await;
}
