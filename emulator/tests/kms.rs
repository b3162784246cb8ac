//! The KMS emulator driven by the real aws-sdk-kms client over HTTP: every
//! input, uniqueness, quota and state rule of the contract, the proxy health
//! checks KMS performs, async transitions, pagination, keys and faults.

mod common;
use common::Captured;
use std::net::SocketAddr;
use std::time::Duration;

use aws_sdk_kms::Client;
use aws_sdk_kms::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_kms::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_kms::types::{
    ConnectionStateType, CustomKeyStoreType, CustomKeyStoresListEntry, KeyState, OriginType,
    XksProxyAuthenticationCredentialType, XksProxyConnectivityType,
};
use aws_smithy_types::retry::RetryConfig;
use serde_json::{Value, json};
use xks_emulator::config::{
    DEMO_ACCESS_KEY_ID, DEMO_PRIMARY_HOST, DEMO_REPLICA_HOST, DEMO_ROTATED_SECRET, DEMO_SECRET,
    DEMO_URI_PATH,
};
use xks_emulator::faults::{OperationFaults, RateLimit};
use xks_emulator::xks_proxy::{
    ExternalKeyConfig, FailWith, KeyManagerHealth, ProxyConfig, ProxyFaults,
};
use xks_emulator::{self as emulator, EmulatorConfig, RunningEmulator, VpcEndpointServiceConfig};

const AKID: &str = "AKIAXKSTESTPROXY2345";
const SECRET: &str = "testSecretAccessKeyForTheEmulatorProxy0123456789";
const OTHER_SECRET: &str = "otherSecretAccessKeyNotKnownToTheProxy01234567890";
const HOST: &str = "xks.example.com";
const PATH: &str = "/test/kms/xks/v1";
const VPC_DNS: &str = "xks-vpc.example.com";
const VPC_SERVICE: &str = "com.amazonaws.vpce.us-east-1.vpce-svc-0123456789abcdef0";

// --- log capture: secrets must never reach the logs ----------------------

fn logs() -> &'static Captured {
    Captured::process_wide("trace")
}

// --- set-up ----------------------------------------------------------------

fn test_proxy() -> ProxyConfig {
    let mut key2 = ExternalKeyConfig::new("key-disabled");
    key2.key_status = "DISABLED".into();
    ProxyConfig::new(HOST, PATH)
        .with_credential(AKID, SECRET)
        .with_key(ExternalKeyConfig::new("key-1"))
        .with_key(ExternalKeyConfig::new("key-2"))
        .with_key(key2)
}

fn test_config() -> EmulatorConfig {
    let mut vpc_proxy = test_proxy();
    vpc_proxy.host = VPC_DNS.into();
    EmulatorConfig {
        connect_delay_ms: 40,
        disconnect_delay_ms: 40,
        proxy_timeout_ms: 1500,
        proxies: vec![test_proxy(), vpc_proxy],
        vpc_endpoint_services: vec![VpcEndpointServiceConfig {
            name: VPC_SERVICE.into(),
            owner: None,
            private_dns_name: VPC_DNS.into(),
        }],
        ..EmulatorConfig::empty()
    }
}

async fn start(config: EmulatorConfig) -> (RunningEmulator, Client) {
    logs();
    let addr: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let emu = emulator::start(config, addr).await.unwrap();
    let client = client(&emu.kms_endpoint());
    (emu, client)
}

fn client(endpoint: &str) -> Client {
    let conf = aws_sdk_kms::config::Builder::new()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .credentials_provider(Credentials::new(
            "AKIDKMSCLIENT",
            "kms-client-secret",
            None,
            None,
            "test",
        ))
        .endpoint_url(endpoint)
        .retry_config(RetryConfig::disabled())
        .build();
    Client::from_conf(conf)
}

fn cred(akid: &str, secret: &str) -> XksProxyAuthenticationCredentialType {
    XksProxyAuthenticationCredentialType::builder()
        .access_key_id(akid)
        .raw_secret_access_key(secret)
        .build()
        .unwrap()
}

/// A create request for a public store on the test proxy.
fn public_store(
    client: &Client,
    name: &str,
) -> aws_sdk_kms::operation::create_custom_key_store::builders::CreateCustomKeyStoreFluentBuilder {
    client
        .create_custom_key_store()
        .custom_key_store_name(name)
        .custom_key_store_type(CustomKeyStoreType::ExternalKeyStore)
        .xks_proxy_connectivity(XksProxyConnectivityType::PublicEndpoint)
        .xks_proxy_uri_endpoint(format!("https://{HOST}"))
        .xks_proxy_uri_path(PATH)
        .xks_proxy_authentication_credential(cred(AKID, SECRET))
}

/// A create request for a VPC store (not contacted before Connect).
fn vpc_store(
    client: &Client,
    name: &str,
    endpoint: &str,
    service: &str,
) -> aws_sdk_kms::operation::create_custom_key_store::builders::CreateCustomKeyStoreFluentBuilder {
    client
        .create_custom_key_store()
        .custom_key_store_name(name)
        .custom_key_store_type(CustomKeyStoreType::ExternalKeyStore)
        .xks_proxy_connectivity(XksProxyConnectivityType::VpcEndpointService)
        .xks_proxy_uri_endpoint(endpoint)
        .xks_proxy_uri_path(PATH)
        .xks_proxy_vpc_endpoint_service_name(service)
        .xks_proxy_authentication_credential(cred(AKID, SECRET))
}

fn vpc_service(n: usize) -> String {
    format!("com.amazonaws.vpce.us-east-1.vpce-svc-{n:017x}")
}

fn code<E: ProvideErrorMetadata + std::fmt::Debug, R: std::fmt::Debug>(
    result: Result<impl std::fmt::Debug, SdkError<E, R>>,
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

fn message<E: ProvideErrorMetadata + std::fmt::Debug, R: std::fmt::Debug>(
    result: Result<impl std::fmt::Debug, SdkError<E, R>>,
) -> String {
    match result {
        Ok(v) => panic!("expected an error, got {v:?}"),
        Err(e) => e
            .as_service_error()
            .and_then(|s| s.message())
            .unwrap_or_default()
            .to_string(),
    }
}

async fn describe(client: &Client, id: &str) -> CustomKeyStoresListEntry {
    client
        .describe_custom_key_stores()
        .custom_key_store_id(id)
        .send()
        .await
        .unwrap()
        .custom_key_stores()[0]
        .clone()
}

async fn state_of(client: &Client, id: &str) -> ConnectionStateType {
    describe(client, id)
        .await
        .connection_state()
        .unwrap()
        .clone()
}

/// Poll until the store reaches `want` (or fail after 5 s).
async fn wait_for(
    client: &Client,
    id: &str,
    want: ConnectionStateType,
) -> CustomKeyStoresListEntry {
    for _ in 0..500 {
        let entry = describe(client, id).await;
        if entry.connection_state() == Some(&want) {
            return entry;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("store {id} never reached {want:?}");
}

async fn connect(client: &Client, id: &str) -> CustomKeyStoresListEntry {
    client
        .connect_custom_key_store()
        .custom_key_store_id(id)
        .send()
        .await
        .unwrap();
    let mut entry = describe(client, id).await;
    while entry.connection_state() == Some(&ConnectionStateType::Connecting) {
        tokio::time::sleep(Duration::from_millis(10)).await;
        entry = describe(client, id).await;
    }
    entry
}

async fn disconnect(client: &Client, id: &str) {
    client
        .disconnect_custom_key_store()
        .custom_key_store_id(id)
        .send()
        .await
        .unwrap();
    wait_for(client, id, ConnectionStateType::Disconnected).await;
}

/// A raw awsJson1_1 call, for what the SDK cannot send or does not show.
async fn raw(endpoint: &str, operation: &str, body: Value) -> (u16, Option<String>, Value) {
    let response = reqwest::Client::new()
        .post(format!("{endpoint}/"))
        .header("content-type", "application/x-amz-json-1.1")
        .header("x-amz-target", format!("TrentService.{operation}"))
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let header = response
        .headers()
        .get("x-amzn-errortype")
        .map(|h| h.to_str().unwrap().to_string());
    let text = response.text().await.unwrap();
    (
        status,
        header,
        serde_json::from_str(&text).unwrap_or(Value::Null),
    )
}

// --- CreateCustomKeyStore / DescribeCustomKeyStores -------------------------

#[tokio::test]
async fn create_then_describe_by_id_and_name() {
    let (emu, client) = start(test_config()).await;
    let id = public_store(&client, "payments")
        .send()
        .await
        .unwrap()
        .custom_key_store_id()
        .unwrap()
        .to_string();
    assert!(id.starts_with("cks-") && id.len() == 21, "{id}");
    assert!(id[4..].chars().all(|c| c.is_ascii_hexdigit()));

    let entry = describe(&client, &id).await;
    assert_eq!(entry.custom_key_store_name(), Some("payments"));
    assert_eq!(
        entry.custom_key_store_type(),
        Some(&CustomKeyStoreType::ExternalKeyStore)
    );
    assert_eq!(
        entry.connection_state(),
        Some(&ConnectionStateType::Disconnected)
    );
    assert!(entry.connection_error_code().is_none());
    assert!(entry.creation_date().is_some());
    let proxy = entry.xks_proxy_configuration().unwrap();
    assert_eq!(
        proxy.connectivity(),
        Some(&XksProxyConnectivityType::PublicEndpoint)
    );
    assert_eq!(proxy.access_key_id(), Some(AKID));
    assert_eq!(proxy.uri_endpoint(), Some("https://xks.example.com"));
    assert_eq!(proxy.uri_path(), Some(PATH));
    assert!(proxy.vpc_endpoint_service_name().is_none());

    let by_name = client
        .describe_custom_key_stores()
        .custom_key_store_name("payments")
        .send()
        .await
        .unwrap();
    assert_eq!(
        by_name.custom_key_stores()[0].custom_key_store_id(),
        Some(id.as_str())
    );

    // The raw answer: CreationDate is a number, the secret is never returned.
    let (status, _, body) = raw(
        &emu.kms_endpoint(),
        "DescribeCustomKeyStores",
        json!({"CustomKeyStoreId": id}),
    )
    .await;
    assert_eq!(status, 200);
    assert!(body["CustomKeyStores"][0]["CreationDate"].is_number());
    assert!(!body.to_string().contains(SECRET));
    // KMS contacted the public proxy during create.
    assert_eq!(emu.fleet().request_count(HOST), 1);
    emu.shutdown().await;
}

#[tokio::test]
async fn describe_unknown_or_ambiguous() {
    let (emu, client) = start(test_config()).await;
    let r = client
        .describe_custom_key_stores()
        .custom_key_store_id("cks-00000000000000000")
        .send()
        .await;
    assert_eq!(code(r), "CustomKeyStoreNotFoundException");
    let r = client
        .describe_custom_key_stores()
        .custom_key_store_name("nope")
        .send()
        .await;
    assert_eq!(code(r), "CustomKeyStoreNotFoundException");
    let r = client
        .describe_custom_key_stores()
        .custom_key_store_name("a")
        .custom_key_store_id("cks-00000000000000000")
        .send()
        .await;
    assert_eq!(code(r), "ValidationException");
    let r = client
        .describe_custom_key_stores()
        .custom_key_store_id("x".repeat(65))
        .send()
        .await;
    assert_eq!(code(r), "ValidationException");
    for limit in [0, 1001] {
        let r = client
            .describe_custom_key_stores()
            .limit(limit)
            .send()
            .await;
        assert_eq!(code(r), "ValidationException", "limit {limit}");
    }
    let r = client
        .describe_custom_key_stores()
        .marker("not-a-marker")
        .send()
        .await;
    assert_eq!(code(r), "InvalidMarkerException");
    emu.shutdown().await;
}

#[tokio::test]
async fn name_length_bounds() {
    let (emu, client) = start(test_config()).await;
    let r = vpc_store(&client, "", &format!("https://{VPC_DNS}"), VPC_SERVICE)
        .send()
        .await;
    assert_eq!(code(r), "ValidationException");
    let r = vpc_store(
        &client,
        &"n".repeat(257),
        &format!("https://{VPC_DNS}"),
        VPC_SERVICE,
    )
    .send()
    .await;
    let msg = message(r);
    assert!(
        msg.contains("customKeyStoreName") && msg.contains("256"),
        "{msg}"
    );
    vpc_store(
        &client,
        &"n".repeat(256),
        &format!("https://{VPC_DNS}"),
        VPC_SERVICE,
    )
    .send()
    .await
    .unwrap();
    vpc_store(&client, "x", "https://other.example.com", &vpc_service(1))
        .send()
        .await
        .unwrap();
    emu.shutdown().await;
}

#[tokio::test]
async fn endpoint_bounds_and_pattern() {
    let (emu, client) = start(test_config()).await;
    let cases: Vec<(String, bool)> = vec![
        ("https://a".into(), false),                     // 9 chars
        ("https://ab".into(), true),                     // 10 chars
        (format!("https://{}", "a".repeat(120)), true),  // 128
        (format!("https://{}", "a".repeat(121)), false), // 129
        ("http://xks.example.com".into(), false),
        ("https://xks.example.com:443".into(), false),
        ("https://xks.example.com/path".into(), false),
    ];
    for (i, (endpoint, ok)) in cases.into_iter().enumerate() {
        let r = vpc_store(&client, &format!("e{i}"), &endpoint, &vpc_service(i))
            .send()
            .await;
        assert_eq!(r.is_ok(), ok, "{endpoint}: {r:?}");
        if !ok {
            assert_eq!(code(r), "ValidationException");
        }
    }
    emu.shutdown().await;
}

#[tokio::test]
async fn path_bounds_and_pattern() {
    let (emu, client) = start(test_config()).await;
    let long_ok = format!("/{}/kms/xks/v1", "p".repeat(116)); // 128
    let long_bad = format!("/{}/kms/xks/v1", "p".repeat(117)); // 129
    let cases: Vec<(String, bool)> = vec![
        ("/kms/xks/v1".into(), true),
        ("/kms/xks/v12".into(), true),
        ("/kms/xks/v123".into(), false),
        ("/a/b_c-d/kms/xks/v2".into(), true),
        ("kms/xks/v1/x".into(), false),
        ("/kms/xks/v".into(), false),
        ("/x/kms/xks".into(), false),
        (long_ok, true),
        (long_bad, false),
    ];
    for (i, (path, ok)) in cases.into_iter().enumerate() {
        let r = vpc_store(
            &client,
            &format!("p{i}"),
            &format!("https://p{i}.example.com"),
            &vpc_service(i),
        )
        .xks_proxy_uri_path(&path)
        .send()
        .await;
        assert_eq!(r.is_ok(), ok, "{path}: {r:?}");
        if !ok {
            assert_eq!(code(r), "ValidationException");
        }
    }
    emu.shutdown().await;
}

#[tokio::test]
async fn vpc_service_name_and_owner_rules() {
    let (emu, client) = start(test_config()).await;
    let max = format!("com.amazonaws.vpce.us-east-1.vpce-svc-{}", "a".repeat(26)); // 64
    let over = format!("com.amazonaws.vpce.us-east-1.vpce-svc-{}", "a".repeat(27)); // 65
    assert_eq!(max.len(), 64);
    let cases: Vec<(String, bool)> = vec![
        (max, true),
        (over, false),
        ("eu.amazonaws.vpce.eu-west-1.vpce-svc-0abc".into(), true),
        (
            "com.amazonaws.vpce.us-gov-west-1.vpce-svc-0abc".into(),
            true,
        ),
        ("org.amazonaws.vpce.us-east-1.vpce-svc-0abc".into(), false),
        ("com.amazonaws.vpce.us-east-1.vpce-0abc".into(), false),
        ("com.amazonaws.vpce.1".into(), false), // 20 chars, bad pattern
    ];
    for (i, (service, ok)) in cases.into_iter().enumerate() {
        let r = vpc_store(
            &client,
            &format!("v{i}"),
            &format!("https://v{i}.example.com"),
            &service,
        )
        .send()
        .await;
        assert_eq!(r.is_ok(), ok, "{service}: {r:?}");
        if !ok {
            assert_eq!(code(r), "ValidationException");
        }
    }
    // Owner: 12 digits, only for VPC stores.
    let r = vpc_store(&client, "o1", "https://o1.example.com", &vpc_service(100))
        .xks_proxy_vpc_endpoint_service_owner("111122223333")
        .send()
        .await;
    assert!(r.is_ok(), "{r:?}");
    let r = vpc_store(&client, "o2", "https://o2.example.com", &vpc_service(101))
        .xks_proxy_vpc_endpoint_service_owner("11112222333")
        .send()
        .await;
    assert_eq!(code(r), "ValidationException");
    let r = public_store(&client, "o3")
        .xks_proxy_vpc_endpoint_service_owner("111122223333")
        .send()
        .await;
    assert_eq!(code(r), "ValidationException");
    // VPC needs a service name; public forbids one.
    let r = vpc_store(&client, "o4", "https://o4.example.com", &vpc_service(102))
        .set_xks_proxy_vpc_endpoint_service_name(None)
        .send()
        .await;
    assert_eq!(code(r), "ValidationException");
    let r = public_store(&client, "o5")
        .xks_proxy_vpc_endpoint_service_name(vpc_service(103))
        .send()
        .await;
    assert_eq!(code(r), "ValidationException");
    let entry = describe(
        &client,
        client
            .describe_custom_key_stores()
            .custom_key_store_name("o1")
            .send()
            .await
            .unwrap()
            .custom_key_stores()[0]
            .custom_key_store_id()
            .unwrap(),
    )
    .await;
    let proxy = entry.xks_proxy_configuration().unwrap();
    assert_eq!(proxy.vpc_endpoint_service_owner(), Some("111122223333"));
    assert_eq!(
        proxy.vpc_endpoint_service_name(),
        Some(vpc_service(100).as_str())
    );
    emu.shutdown().await;
}

#[tokio::test]
async fn credential_bounds_and_patterns_never_echo_secrets() {
    let (emu, client) = start(test_config()).await;
    let akids: Vec<(String, bool)> = vec![
        ("A".repeat(19), false),
        ("A".repeat(20), true),
        ("A".repeat(30), true),
        ("A".repeat(31), false),
        ("AKIAXKSTESTPROXY234a".into(), false), // lower case
        ("AKIAXKSTESTPROXY2341".into(), false), // 1 is not base32
    ];
    for (i, (akid, ok)) in akids.into_iter().enumerate() {
        let r = vpc_store(
            &client,
            &format!("a{i}"),
            &format!("https://a{i}.example.com"),
            &vpc_service(i),
        )
        .xks_proxy_authentication_credential(cred(&akid, SECRET))
        .send()
        .await;
        assert_eq!(r.is_ok(), ok, "{akid}: {r:?}");
        if !ok {
            let msg = message(r);
            assert!(msg.contains("accessKeyId"), "{msg}");
            assert!(!msg.contains(&akid), "{msg}");
        }
    }
    let secrets: Vec<(String, bool)> = vec![
        ("s".repeat(42), false),
        ("s".repeat(43), true),
        ("s".repeat(64), true),
        ("s".repeat(65), false),
        (format!("{}/+=", "S".repeat(40)), true),
        (format!("{}!", "S".repeat(43)), false),
    ];
    for (i, (secret, ok)) in secrets.into_iter().enumerate() {
        let r = vpc_store(
            &client,
            &format!("s{i}"),
            &format!("https://s{i}.example.com"),
            &vpc_service(50 + i),
        )
        .xks_proxy_authentication_credential(cred(AKID, &secret))
        .send()
        .await;
        assert_eq!(r.is_ok(), ok, "secret #{i}: {r:?}");
        if !ok {
            let msg = message(r);
            assert!(msg.contains("rawSecretAccessKey"), "{msg}");
            assert!(!msg.contains(&secret), "{msg}");
        }
    }
    emu.shutdown().await;
}

#[tokio::test]
async fn store_type_and_required_members() {
    let (emu, client) = start(test_config()).await;
    // The type defaults to AWS_CLOUDHSM.
    let r = public_store(&client, "t1")
        .set_custom_key_store_type(None)
        .send()
        .await;
    assert_eq!(code(r), "ValidationException");
    let r = client
        .create_custom_key_store()
        .custom_key_store_name("t2")
        .cloud_hsm_cluster_id("cluster-1a23b4cdefg")
        .trust_anchor_certificate("cert")
        .key_store_password("password1")
        .send()
        .await;
    assert_eq!(code(r), "CloudHsmClusterNotFoundException");
    for missing in ["endpoint", "path", "cred", "connectivity"] {
        let mut b = public_store(&client, "t3");
        b = match missing {
            "endpoint" => b.set_xks_proxy_uri_endpoint(None),
            "path" => b.set_xks_proxy_uri_path(None),
            "cred" => b.set_xks_proxy_authentication_credential(None),
            _ => b.set_xks_proxy_connectivity(None),
        };
        assert_eq!(code(b.send().await), "ValidationException", "{missing}");
    }
    let r = public_store(&client, "t4")
        .key_store_password("password1")
        .send()
        .await;
    assert_eq!(code(r), "ValidationException");
    // Wrong JSON types are serialization errors; unknown enum values validation errors.
    let (status, header, body) = raw(
        &emu.kms_endpoint(),
        "CreateCustomKeyStore",
        json!({"CustomKeyStoreName": "t5", "CustomKeyStoreType": "EXTERNAL_KEY_STORE",
               "XksProxyConnectivity": "CARRIER_PIGEON", "XksProxyUriEndpoint": "https://x.example.com",
               "XksProxyUriPath": "/kms/xks/v1",
               "XksProxyAuthenticationCredential": {"AccessKeyId": AKID, "RawSecretAccessKey": SECRET}}),
    )
    .await;
    assert_eq!(
        (status, header.as_deref()),
        (400, Some("ValidationException"))
    );
    assert_eq!(body["__type"], "ValidationException");
    let (status, _, body) = raw(
        &emu.kms_endpoint(),
        "CreateCustomKeyStore",
        json!({"CustomKeyStoreName": 7}),
    )
    .await;
    assert_eq!(
        (status, body["__type"].as_str()),
        (400, Some("SerializationException"))
    );
    emu.shutdown().await;
}

#[tokio::test]
async fn uniqueness_of_name_uri_dns_name_and_service() {
    let (emu, client) = start(test_config()).await;
    public_store(&client, "first").send().await.unwrap();
    let r = vpc_store(&client, "first", "https://n.example.com", &vpc_service(1))
        .send()
        .await;
    assert_eq!(code(r), "CustomKeyStoreNameInUseException");
    let r = public_store(&client, "second").send().await;
    assert_eq!(code(r), "XksProxyUriInUseException");

    vpc_store(&client, "vpc-a", &format!("https://{VPC_DNS}"), VPC_SERVICE)
        .send()
        .await
        .unwrap();
    // Same private DNS name, other path: each VPC store needs its own name.
    let r = vpc_store(
        &client,
        "vpc-b",
        &format!("https://{VPC_DNS}"),
        &vpc_service(2),
    )
    .xks_proxy_uri_path("/other/kms/xks/v1")
    .send()
    .await;
    assert_eq!(code(r), "XksProxyUriEndpointInUseException");
    let r = vpc_store(&client, "vpc-c", "https://c.example.com", VPC_SERVICE)
        .send()
        .await;
    assert_eq!(code(r), "XksProxyVpcEndpointServiceInUseException");
    // Public stores may share an endpoint under different paths.
    let mut other_path = test_proxy();
    other_path.uri_path = "/kms/xks/v1".into();
    other_path.host = "shared.example.com".into();
    emu.control().upsert_proxy(other_path).unwrap();
    public_store(&client, "shared-1")
        .xks_proxy_uri_endpoint("https://shared.example.com")
        .xks_proxy_uri_path("/kms/xks/v1")
        .send()
        .await
        .unwrap();
    emu.shutdown().await;
}

#[tokio::test]
async fn quota_of_custom_key_stores() {
    let mut config = test_config();
    config.max_custom_key_stores = 3;
    let (emu, client) = start(config).await;
    for i in 0..3 {
        vpc_store(
            &client,
            &format!("q{i}"),
            &format!("https://q{i}.example.com"),
            &vpc_service(i),
        )
        .send()
        .await
        .unwrap();
    }
    let r = vpc_store(&client, "q3", "https://q3.example.com", &vpc_service(3))
        .send()
        .await;
    assert_eq!(code(r), "LimitExceededException");
    emu.control()
        .update_settings(xks_emulator::control::SettingsPatch {
            max_custom_key_stores: Some(1000),
            ..Default::default()
        });
    vpc_store(&client, "q3", "https://q3.example.com", &vpc_service(3))
        .send()
        .await
        .unwrap();
    emu.shutdown().await;
}

#[tokio::test]
async fn default_quota_is_ten() {
    let (emu, client) = start(test_config()).await;
    for i in 0..10 {
        vpc_store(
            &client,
            &format!("d{i}"),
            &format!("https://d{i}.example.com"),
            &vpc_service(i),
        )
        .send()
        .await
        .unwrap();
    }
    let r = vpc_store(&client, "d10", "https://d10.example.com", &vpc_service(10))
        .send()
        .await;
    assert_eq!(code(r), "LimitExceededException");
    emu.shutdown().await;
}

#[tokio::test]
async fn create_maps_proxy_failures() {
    let (emu, client) = start(test_config()).await;
    let ctl = emu.control();
    let r = public_store(&client, "c1")
        .xks_proxy_authentication_credential(cred(AKID, OTHER_SECRET))
        .send()
        .await;
    assert_eq!(
        code(r),
        "XksProxyIncorrectAuthenticationCredentialException"
    );
    let r = public_store(&client, "c2")
        .xks_proxy_uri_path("/wrong/kms/xks/v1")
        .send()
        .await;
    assert_eq!(code(r), "XksProxyInvalidConfigurationException");
    let r = public_store(&client, "c3")
        .xks_proxy_uri_endpoint("https://nowhere.example.com")
        .send()
        .await;
    assert_eq!(code(r), "XksProxyUriUnreachableException");

    let faults = |f: ProxyFaults| ctl.set_proxy_faults(HOST, f).unwrap();
    faults(ProxyFaults {
        malformed_responses: true,
        ..Default::default()
    });
    let r = public_store(&client, "c4").send().await;
    assert_eq!(code(r), "XksProxyInvalidResponseException");
    faults(ProxyFaults {
        fail_with: Some(FailWith {
            status: 429,
            error_name: "ThrottlingException".into(),
            error_message: None,
        }),
        ..Default::default()
    });
    let r = public_store(&client, "c5").send().await;
    assert_eq!(code(r), "XksProxyUriUnreachableException");
    faults(ProxyFaults::default());
    ctl.set_key_manager_health(HOST, "ekm-1", KeyManagerHealth::Unavailable)
        .unwrap();
    let r = public_store(&client, "c6").send().await;
    assert_eq!(code(r), "XksProxyUriUnreachableException");
    ctl.set_key_manager_health(HOST, "ekm-1", KeyManagerHealth::Degraded)
        .unwrap();
    public_store(&client, "c7").send().await.unwrap();
    emu.shutdown().await;
}

#[tokio::test]
async fn create_times_out_on_a_slow_proxy() {
    let mut config = test_config();
    config.proxy_timeout_ms = 100;
    let (emu, client) = start(config).await;
    emu.control()
        .set_proxy_faults(
            HOST,
            ProxyFaults {
                latency_ms: 400,
                ..Default::default()
            },
        )
        .unwrap();
    let r = public_store(&client, "slow").send().await;
    assert_eq!(code(r), "XksProxyUriUnreachableException");
    emu.shutdown().await;
}

// --- Connect / Disconnect -----------------------------------------------------

#[tokio::test]
async fn connect_and_disconnect_are_asynchronous() {
    let mut config = test_config();
    // Long enough that checks made during a transition see it on a loaded machine.
    config.connect_delay_ms = 400;
    config.disconnect_delay_ms = 400;
    let (emu, client) = start(config).await;
    let id = public_store(&client, "async")
        .send()
        .await
        .unwrap()
        .custom_key_store_id
        .unwrap();
    client
        .connect_custom_key_store()
        .custom_key_store_id(&id)
        .send()
        .await
        .unwrap();
    assert_eq!(
        state_of(&client, &id).await,
        ConnectionStateType::Connecting
    );
    // Connect while CONNECTING or CONNECTED succeeds and changes nothing.
    client
        .connect_custom_key_store()
        .custom_key_store_id(&id)
        .send()
        .await
        .unwrap();
    let entry = wait_for(&client, &id, ConnectionStateType::Connected).await;
    assert!(entry.connection_error_code().is_none());
    client
        .connect_custom_key_store()
        .custom_key_store_id(&id)
        .send()
        .await
        .unwrap();
    assert_eq!(state_of(&client, &id).await, ConnectionStateType::Connected);

    client
        .disconnect_custom_key_store()
        .custom_key_store_id(&id)
        .send()
        .await
        .unwrap();
    assert_eq!(
        state_of(&client, &id).await,
        ConnectionStateType::Disconnecting
    );
    let r = client
        .disconnect_custom_key_store()
        .custom_key_store_id(&id)
        .send()
        .await;
    assert_eq!(code(r), "CustomKeyStoreInvalidStateException");
    let r = client
        .connect_custom_key_store()
        .custom_key_store_id(&id)
        .send()
        .await;
    assert_eq!(code(r), "CustomKeyStoreInvalidStateException");
    wait_for(&client, &id, ConnectionStateType::Disconnected).await;
    let r = client
        .disconnect_custom_key_store()
        .custom_key_store_id(&id)
        .send()
        .await;
    assert_eq!(code(r), "CustomKeyStoreInvalidStateException");

    // Disconnect while CONNECTING wins over the pending connection.
    client
        .connect_custom_key_store()
        .custom_key_store_id(&id)
        .send()
        .await
        .unwrap();
    client
        .disconnect_custom_key_store()
        .custom_key_store_id(&id)
        .send()
        .await
        .unwrap();
    wait_for(&client, &id, ConnectionStateType::Disconnected).await;
    tokio::time::sleep(Duration::from_millis(450)).await;
    assert_eq!(
        state_of(&client, &id).await,
        ConnectionStateType::Disconnected
    );
    let r = client
        .connect_custom_key_store()
        .custom_key_store_id("cks-00000000000000000")
        .send()
        .await;
    assert_eq!(code(r), "CustomKeyStoreNotFoundException");
    emu.shutdown().await;
}

#[tokio::test]
async fn failed_connections_report_the_right_code() {
    let mut config = test_config();
    config.proxy_timeout_ms = 600;
    let (emu, client) = start(config).await;
    let ctl = emu.control();
    let id = public_store(&client, "f")
        .send()
        .await
        .unwrap()
        .custom_key_store_id
        .unwrap();

    let expect = async |code: &str| {
        let entry = connect(&client, &id).await;
        assert_eq!(
            entry.connection_state(),
            Some(&ConnectionStateType::Failed),
            "{code}"
        );
        assert_eq!(
            entry.connection_error_code().map(|c| c.as_str()),
            Some(code)
        );
        // A FAILED store must be disconnected before it connects again.
        let r = client
            .connect_custom_key_store()
            .custom_key_store_id(&id)
            .send()
            .await;
        assert_eq!(self::code(r), "CustomKeyStoreInvalidStateException");
        disconnect(&client, &id).await;
        assert!(
            describe(&client, &id)
                .await
                .connection_error_code()
                .is_none()
        );
    };

    ctl.add_credential(
        HOST,
        xks_emulator::xks_proxy::ProxyCredentialConfig::new(AKID, OTHER_SECRET),
    )
    .unwrap();
    expect("INVALID_CREDENTIALS").await;
    ctl.add_credential(
        HOST,
        xks_emulator::xks_proxy::ProxyCredentialConfig::new(AKID, SECRET),
    )
    .unwrap();

    let mut moved = test_proxy();
    moved.uri_path = "/moved/kms/xks/v1".into();
    ctl.upsert_proxy(moved).unwrap();
    expect("XKS_PROXY_INVALID_CONFIGURATION").await;
    ctl.upsert_proxy(test_proxy()).unwrap();

    let set = |f: ProxyFaults| ctl.set_proxy_faults(HOST, f).unwrap();
    set(ProxyFaults {
        malformed_responses: true,
        ..Default::default()
    });
    expect("XKS_PROXY_INVALID_RESPONSE").await;
    set(ProxyFaults {
        fail_with: Some(FailWith {
            status: 403,
            error_name: "AccessDeniedException".into(),
            error_message: None,
        }),
        ..Default::default()
    });
    expect("XKS_PROXY_ACCESS_DENIED").await;
    set(ProxyFaults {
        latency_ms: 2000,
        ..Default::default()
    });
    expect("XKS_PROXY_TIMED_OUT").await;
    set(ProxyFaults::default());

    ctl.set_key_manager_health(HOST, "ekm-1", KeyManagerHealth::Unavailable)
        .unwrap();
    expect("XKS_PROXY_NOT_REACHABLE").await;
    ctl.set_key_manager_health(HOST, "ekm-1", KeyManagerHealth::Active)
        .unwrap();

    assert!(ctl.remove_resolve(HOST));
    expect("XKS_PROXY_NOT_REACHABLE").await;
    ctl.set_resolve(HOST, &emu.kms_endpoint());

    let entry = connect(&client, &id).await;
    assert_eq!(
        entry.connection_state(),
        Some(&ConnectionStateType::Connected)
    );
    emu.shutdown().await;
}

#[tokio::test]
async fn vpc_stores_are_first_contacted_at_connect() {
    let (emu, client) = start(test_config()).await;
    let ctl = emu.control();
    let before = emu.fleet().request_count(VPC_DNS);
    let good = vpc_store(
        &client,
        "vpc-good",
        &format!("https://{VPC_DNS}"),
        VPC_SERVICE,
    )
    .send()
    .await
    .unwrap()
    .custom_key_store_id
    .unwrap();
    assert_eq!(emu.fleet().request_count(VPC_DNS), before);
    let entry = connect(&client, &good).await;
    assert_eq!(
        entry.connection_state(),
        Some(&ConnectionStateType::Connected)
    );
    assert_eq!(emu.fleet().request_count(VPC_DNS), before + 1);

    let missing = vpc_store(
        &client,
        "vpc-missing",
        "https://missing.example.com",
        &vpc_service(9),
    )
    .send()
    .await
    .unwrap()
    .custom_key_store_id
    .unwrap();
    let entry = connect(&client, &missing).await;
    assert_eq!(
        entry.connection_error_code().map(|c| c.as_str()),
        Some("XKS_VPC_ENDPOINT_SERVICE_NOT_FOUND")
    );
    // The service appears (control API) with another private DNS name.
    disconnect(&client, &missing).await;
    ctl.set_vpc_endpoint_service(VpcEndpointServiceConfig {
        name: vpc_service(9),
        owner: None,
        private_dns_name: "elsewhere.example.com".into(),
    });
    let entry = connect(&client, &missing).await;
    assert_eq!(
        entry.connection_error_code().map(|c| c.as_str()),
        Some("XKS_VPC_ENDPOINT_SERVICE_INVALID_CONFIGURATION")
    );
    emu.shutdown().await;
}

// --- UpdateCustomKeyStore ---------------------------------------------------

#[tokio::test]
async fn update_rules_by_connection_state() {
    let (emu, client) = start(test_config()).await;
    let ctl = emu.control();
    let id = public_store(&client, "u")
        .send()
        .await
        .unwrap()
        .custom_key_store_id
        .unwrap();
    connect(&client, &id).await;
    let update = || client.update_custom_key_store().custom_key_store_id(&id);

    // Allowed while CONNECTED: name, credential, path (health-checked first).
    update()
        .new_custom_key_store_name("u2")
        .send()
        .await
        .unwrap();
    assert_eq!(
        describe(&client, &id).await.custom_key_store_name(),
        Some("u2")
    );
    ctl.add_credential(
        HOST,
        xks_emulator::xks_proxy::ProxyCredentialConfig::new("AKIAXKSTESTPROXYROTA", OTHER_SECRET),
    )
    .unwrap();
    update()
        .xks_proxy_authentication_credential(cred("AKIAXKSTESTPROXYROTA", OTHER_SECRET))
        .send()
        .await
        .unwrap();
    assert_eq!(
        describe(&client, &id)
            .await
            .xks_proxy_configuration()
            .unwrap()
            .access_key_id(),
        Some("AKIAXKSTESTPROXYROTA")
    );
    let r = update()
        .xks_proxy_authentication_credential(cred(AKID, OTHER_SECRET))
        .send()
        .await;
    assert_eq!(
        code(r),
        "XksProxyIncorrectAuthenticationCredentialException"
    );
    let r = update()
        .xks_proxy_uri_path("/nothing/kms/xks/v1")
        .send()
        .await;
    assert_eq!(code(r), "XksProxyInvalidConfigurationException");
    assert_eq!(
        describe(&client, &id)
            .await
            .xks_proxy_configuration()
            .unwrap()
            .uri_path(),
        Some(PATH)
    );

    // Need DISCONNECTED: endpoint, connectivity, VPC service.
    let mut second = test_proxy();
    second.host = "xks2.example.com".into();
    ctl.upsert_proxy(second).unwrap();
    let r = update()
        .xks_proxy_uri_endpoint("https://xks2.example.com")
        .send()
        .await;
    assert_eq!(code(r), "CustomKeyStoreInvalidStateException");
    let r = update()
        .xks_proxy_connectivity(XksProxyConnectivityType::VpcEndpointService)
        .xks_proxy_uri_endpoint(format!("https://{VPC_DNS}"))
        .xks_proxy_vpc_endpoint_service_name(VPC_SERVICE)
        .send()
        .await;
    assert_eq!(code(r), "CustomKeyStoreInvalidStateException");
    // Same endpoint as now is not a change.
    update()
        .xks_proxy_uri_endpoint(format!("https://{HOST}"))
        .send()
        .await
        .unwrap();

    disconnect(&client, &id).await;
    let r = update()
        .xks_proxy_uri_endpoint("https://nowhere.example.com")
        .send()
        .await;
    assert_eq!(code(r), "XksProxyUriUnreachableException");
    update()
        .xks_proxy_uri_endpoint("https://xks2.example.com")
        .xks_proxy_authentication_credential(cred(AKID, SECRET))
        .send()
        .await
        .unwrap();
    // Switch to VPC: needs a new endpoint and a service name.
    let r = update()
        .xks_proxy_connectivity(XksProxyConnectivityType::VpcEndpointService)
        .xks_proxy_uri_endpoint(format!("https://{VPC_DNS}"))
        .send()
        .await;
    assert_eq!(code(r), "ValidationException");
    let r = update()
        .xks_proxy_connectivity(XksProxyConnectivityType::VpcEndpointService)
        .xks_proxy_vpc_endpoint_service_name(VPC_SERVICE)
        .send()
        .await;
    assert_eq!(code(r), "ValidationException");
    update()
        .xks_proxy_connectivity(XksProxyConnectivityType::VpcEndpointService)
        .xks_proxy_uri_endpoint(format!("https://{VPC_DNS}"))
        .xks_proxy_vpc_endpoint_service_name(VPC_SERVICE)
        .xks_proxy_vpc_endpoint_service_owner("111122223333")
        .send()
        .await
        .unwrap();
    let proxy = describe(&client, &id)
        .await
        .xks_proxy_configuration()
        .unwrap()
        .clone();
    assert_eq!(
        proxy.connectivity(),
        Some(&XksProxyConnectivityType::VpcEndpointService)
    );
    assert_eq!(proxy.vpc_endpoint_service_owner(), Some("111122223333"));
    // Back to public: new endpoint and an empty service name.
    update()
        .xks_proxy_connectivity(XksProxyConnectivityType::PublicEndpoint)
        .xks_proxy_uri_endpoint(format!("https://{HOST}"))
        .xks_proxy_vpc_endpoint_service_name("")
        .send()
        .await
        .unwrap();
    let proxy = describe(&client, &id)
        .await
        .xks_proxy_configuration()
        .unwrap()
        .clone();
    assert!(proxy.vpc_endpoint_service_name().is_none());
    assert!(proxy.vpc_endpoint_service_owner().is_none());

    // Input rules apply to Update too.
    let r = update().new_custom_key_store_name("").send().await;
    assert_eq!(code(r), "ValidationException");
    let r = update().xks_proxy_uri_path("/kms/xks/v").send().await;
    assert_eq!(code(r), "ValidationException");
    let r = client
        .update_custom_key_store()
        .custom_key_store_id("cks-00000000000000000")
        .new_custom_key_store_name("x")
        .send()
        .await;
    assert_eq!(code(r), "CustomKeyStoreNotFoundException");
    emu.shutdown().await;
}

#[tokio::test]
async fn update_uniqueness() {
    let (emu, client) = start(test_config()).await;
    public_store(&client, "one").send().await.unwrap();
    let two = vpc_store(&client, "two", &format!("https://{VPC_DNS}"), VPC_SERVICE)
        .send()
        .await
        .unwrap()
        .custom_key_store_id
        .unwrap();
    let three = vpc_store(
        &client,
        "three",
        "https://three.example.com",
        &vpc_service(3),
    )
    .send()
    .await
    .unwrap()
    .custom_key_store_id
    .unwrap();
    let r = client
        .update_custom_key_store()
        .custom_key_store_id(&two)
        .new_custom_key_store_name("one")
        .send()
        .await;
    assert_eq!(code(r), "CustomKeyStoreNameInUseException");
    let r = client
        .update_custom_key_store()
        .custom_key_store_id(&three)
        .xks_proxy_vpc_endpoint_service_name(VPC_SERVICE)
        .send()
        .await;
    assert_eq!(code(r), "XksProxyVpcEndpointServiceInUseException");
    let r = client
        .update_custom_key_store()
        .custom_key_store_id(&three)
        .xks_proxy_uri_endpoint(format!("https://{VPC_DNS}"))
        .send()
        .await;
    assert_eq!(code(r), "XksProxyUriInUseException");
    // Renaming a store to its own name is fine.
    client
        .update_custom_key_store()
        .custom_key_store_id(&two)
        .new_custom_key_store_name("two")
        .send()
        .await
        .unwrap();
    emu.shutdown().await;
}

#[tokio::test]
async fn strict_mode_allows_only_a_rename_unless_disconnected() {
    let mut config = test_config();
    config.strict_connected_updates = true;
    let (emu, client) = start(config).await;
    let id = public_store(&client, "s")
        .send()
        .await
        .unwrap()
        .custom_key_store_id
        .unwrap();
    connect(&client, &id).await;
    let update = || client.update_custom_key_store().custom_key_store_id(&id);
    update()
        .new_custom_key_store_name("s2")
        .send()
        .await
        .unwrap();
    let r = update()
        .xks_proxy_authentication_credential(cred(AKID, SECRET))
        .send()
        .await;
    assert!(r.is_ok(), "an unchanged credential is no change: {r:?}");
    emu.control()
        .add_credential(
            HOST,
            xks_emulator::xks_proxy::ProxyCredentialConfig::new(
                "AKIAXKSTESTPROXYROTA",
                OTHER_SECRET,
            ),
        )
        .unwrap();
    let r = update()
        .xks_proxy_authentication_credential(cred("AKIAXKSTESTPROXYROTA", OTHER_SECRET))
        .send()
        .await;
    assert_eq!(code(r), "CustomKeyStoreInvalidStateException");
    let r = update().xks_proxy_uri_path("/kms/xks/v1").send().await;
    assert_eq!(code(r), "CustomKeyStoreInvalidStateException");
    disconnect(&client, &id).await;
    update()
        .xks_proxy_authentication_credential(cred("AKIAXKSTESTPROXYROTA", OTHER_SECRET))
        .send()
        .await
        .unwrap();
    emu.shutdown().await;
}

// --- DeleteCustomKeyStore and keys ----------------------------------------------

#[tokio::test]
async fn keys_in_an_external_key_store() {
    let (emu, client) = start(test_config()).await;
    let id = public_store(&client, "k")
        .send()
        .await
        .unwrap()
        .custom_key_store_id
        .unwrap();
    let create = |xks: &str| {
        client
            .create_key()
            .origin(OriginType::ExternalKeyStore)
            .custom_key_store_id(&id)
            .xks_key_id(xks)
    };
    let r = create("key-1").send().await;
    assert_eq!(code(r), "CustomKeyStoreInvalidStateException");
    connect(&client, &id).await;
    let r = create("no-such-key").send().await;
    assert_eq!(code(r), "XksKeyNotFoundException");
    let r = create("key-disabled").send().await;
    assert_eq!(code(r), "XksKeyInvalidConfigurationException");
    let r = create("bad key id").send().await;
    assert_eq!(code(r), "ValidationException");
    let r = client
        .create_key()
        .origin(OriginType::ExternalKeyStore)
        .xks_key_id("key-1")
        .send()
        .await;
    assert_eq!(code(r), "ValidationException");
    let r = client
        .create_key()
        .origin(OriginType::ExternalKeyStore)
        .custom_key_store_id("cks-00000000000000000")
        .xks_key_id("key-1")
        .send()
        .await;
    assert_eq!(code(r), "CustomKeyStoreNotFoundException");

    let meta = create("key-1")
        .description("d")
        .send()
        .await
        .unwrap()
        .key_metadata
        .unwrap();
    assert_eq!(meta.origin(), Some(&OriginType::ExternalKeyStore));
    assert_eq!(meta.custom_key_store_id(), Some(id.as_str()));
    assert_eq!(meta.key_state(), Some(&KeyState::Enabled));
    assert_eq!(meta.xks_key_configuration().unwrap().id(), Some("key-1"));
    assert_eq!(
        meta.arn(),
        Some(format!("arn:aws:kms:us-east-1:111122223333:key/{}", meta.key_id()).as_str())
    );
    assert_eq!(meta.key_id().len(), 36);
    let r = create("key-1").send().await;
    assert_eq!(code(r), "XksKeyAlreadyInUseException");
    let key2 = create("key-2").send().await.unwrap().key_metadata.unwrap();

    // DescribeKey by id and by ARN.
    let d = client
        .describe_key()
        .key_id(meta.key_id())
        .send()
        .await
        .unwrap();
    assert_eq!(
        d.key_metadata()
            .unwrap()
            .xks_key_configuration()
            .unwrap()
            .id(),
        Some("key-1")
    );
    let d = client
        .describe_key()
        .key_id(meta.arn().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(d.key_metadata().unwrap().key_id(), meta.key_id());
    let r = client
        .describe_key()
        .key_id("00000000-0000-4000-8000-000000000000")
        .send()
        .await;
    assert_eq!(code(r), "NotFoundException");

    // Delete needs DISCONNECTED, then no keys (pending deletion still counts).
    let r = client
        .delete_custom_key_store()
        .custom_key_store_id(&id)
        .send()
        .await;
    assert_eq!(code(r), "CustomKeyStoreInvalidStateException");
    disconnect(&client, &id).await;
    let d = client
        .describe_key()
        .key_id(meta.key_id())
        .send()
        .await
        .unwrap();
    assert_eq!(
        d.key_metadata().unwrap().key_state(),
        Some(&KeyState::Unavailable)
    );
    let r = client
        .delete_custom_key_store()
        .custom_key_store_id(&id)
        .send()
        .await;
    assert_eq!(code(r), "CustomKeyStoreHasCMKsException");

    for days in [6, 31] {
        let r = client
            .schedule_key_deletion()
            .key_id(meta.key_id())
            .pending_window_in_days(days)
            .send()
            .await;
        assert_eq!(code(r), "ValidationException", "{days}");
    }
    let s = client
        .schedule_key_deletion()
        .key_id(meta.key_id())
        .pending_window_in_days(7)
        .send()
        .await
        .unwrap();
    assert_eq!(s.key_state(), Some(&KeyState::PendingDeletion));
    assert_eq!(s.pending_window_in_days(), Some(7));
    let r = client
        .schedule_key_deletion()
        .key_id(meta.key_id())
        .send()
        .await;
    assert_eq!(code(r), "KMSInvalidStateException");
    client
        .schedule_key_deletion()
        .key_id(key2.key_id())
        .pending_window_in_days(30)
        .send()
        .await
        .unwrap();
    let d = client
        .describe_key()
        .key_id(meta.key_id())
        .send()
        .await
        .unwrap();
    assert_eq!(
        d.key_metadata().unwrap().key_state(),
        Some(&KeyState::PendingDeletion)
    );
    let r = client
        .delete_custom_key_store()
        .custom_key_store_id(&id)
        .send()
        .await;
    assert_eq!(code(r), "CustomKeyStoreHasCMKsException");
    assert_eq!(emu.control().purge_pending_deletion(), 2);
    client
        .delete_custom_key_store()
        .custom_key_store_id(&id)
        .send()
        .await
        .unwrap();
    let r = client
        .describe_custom_key_stores()
        .custom_key_store_id(&id)
        .send()
        .await;
    assert_eq!(code(r), "CustomKeyStoreNotFoundException");
    let r = client
        .delete_custom_key_store()
        .custom_key_store_id(&id)
        .send()
        .await;
    assert_eq!(code(r), "CustomKeyStoreNotFoundException");
    emu.shutdown().await;
}

#[tokio::test]
async fn pagination_of_stores_and_keys() {
    let (emu, client) = start(test_config()).await;
    let mut ids = Vec::new();
    for i in 0..5 {
        let id = vpc_store(
            &client,
            &format!("pg{i}"),
            &format!("https://pg{i}.example.com"),
            &vpc_service(i),
        )
        .send()
        .await
        .unwrap()
        .custom_key_store_id
        .unwrap();
        ids.push(id);
    }
    let mut seen = Vec::new();
    let mut marker: Option<String> = None;
    let mut pages = 0;
    loop {
        let page = client
            .describe_custom_key_stores()
            .limit(2)
            .set_marker(marker.clone())
            .send()
            .await
            .unwrap();
        pages += 1;
        assert!(page.custom_key_stores().len() <= 2);
        seen.extend(
            page.custom_key_stores()
                .iter()
                .map(|s| s.custom_key_store_id().unwrap().to_string()),
        );
        assert_eq!(page.truncated(), page.next_marker().is_some());
        match page.next_marker() {
            Some(m) => marker = Some(m.to_string()),
            None => break,
        }
    }
    assert_eq!(pages, 3);
    assert_eq!(seen, ids);
    let all = client.describe_custom_key_stores().send().await.unwrap();
    assert_eq!(all.custom_key_stores().len(), 5);
    assert!(!all.truncated());

    for _ in 0..3 {
        client.create_key().send().await.unwrap();
    }
    let first = client.list_keys().limit(2).send().await.unwrap();
    assert_eq!(first.keys().len(), 2);
    assert!(first.truncated());
    let second = client
        .list_keys()
        .limit(2)
        .marker(first.next_marker().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(second.keys().len(), 1);
    assert!(!second.truncated() && second.next_marker().is_none());
    let r = client.list_keys().limit(1001).send().await;
    assert_eq!(code(r), "ValidationException");
    let r = client.list_keys().marker("garbage").send().await;
    assert_eq!(code(r), "InvalidMarkerException");
    emu.shutdown().await;
}

// --- faults, statistics and the control endpoint --------------------------------

#[tokio::test]
async fn injected_kms_faults() {
    let (emu, client) = start(test_config()).await;
    let ctl = emu.control();
    ctl.set_operation_faults(
        "DescribeCustomKeyStores",
        Some(OperationFaults {
            throttle_next: 2,
            ..Default::default()
        }),
    );
    for _ in 0..2 {
        let r = client.describe_custom_key_stores().send().await;
        assert_eq!(code(r), "ThrottlingException");
    }
    client.describe_custom_key_stores().send().await.unwrap();
    assert_eq!(ctl.throttled("DescribeCustomKeyStores"), 2);
    assert_eq!(ctl.requests("DescribeCustomKeyStores"), 3);

    ctl.set_operation_faults(
        "ListKeys",
        Some(OperationFaults {
            internal_error_next: 1,
            ..Default::default()
        }),
    );
    let err = client.list_keys().send().await.unwrap_err();
    assert_eq!(err.raw_response().map(|r| r.status().as_u16()), Some(500));
    assert_eq!(code::<_, _>(Err::<(), _>(err)), "KMSInternalException");
    client.list_keys().send().await.unwrap();

    ctl.set_operation_faults(
        "ListKeys",
        Some(OperationFaults {
            drop_next: 1,
            ..Default::default()
        }),
    );
    let err = client.list_keys().send().await.unwrap_err();
    assert!(
        err.as_service_error().is_none(),
        "a dropped connection is no answer: {err:?}"
    );
    client.list_keys().send().await.unwrap();

    ctl.set_operation_faults(
        "ListKeys",
        Some(OperationFaults {
            latency_ms: 150,
            ..Default::default()
        }),
    );
    let started = std::time::Instant::now();
    client.list_keys().send().await.unwrap();
    assert!(started.elapsed() >= Duration::from_millis(150));

    // The real quota: 5 requests per second per operation, with a token bucket.
    ctl.set_faults(
        [(
            "*".to_string(),
            OperationFaults {
                rate_limit: Some(RateLimit::default()),
                ..Default::default()
            },
        )]
        .into(),
    );
    let mut throttled = 0;
    for _ in 0..8 {
        if client.describe_custom_key_stores().send().await.is_err() {
            throttled += 1;
        }
    }
    assert!((1..=3).contains(&throttled), "{throttled}");
    // Other operations have their own bucket.
    client.list_keys().send().await.unwrap();
    let stats = ctl.stats();
    assert_eq!(stats["totals"]["throttled"], 2 + throttled);
    emu.shutdown().await;
}

#[tokio::test]
async fn control_endpoint_over_http() {
    let (emu, client) = start(test_config()).await;
    let base = format!("{}/_emulator", emu.kms_endpoint());
    let http = reqwest::Client::new();
    let put = |path: &str, body: Value| http.put(format!("{base}{path}")).json(&body).send();

    let r = put("/faults/ListKeys", json!({"throttleNext": 1}))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(code(client.list_keys().send().await), "ThrottlingException");
    let stats: Value = http
        .get(format!("{base}/stats"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(stats["operations"]["ListKeys"]["throttled"], 1);
    assert_eq!(stats["operations"]["ListKeys"]["requests"], 1);
    // Unknown fields are refused, so a typo cannot silently disable a fault.
    let r = put("/faults/ListKeys", json!({"throttleNxt": 1}))
        .await
        .unwrap();
    assert!(r.status().is_client_error());
    let r = put("/faults/ListKey", json!({"throttleNext": 1}))
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let mut bad_config = test_config();
    bad_config
        .faults
        .insert("DescribeCustomKeyStore".into(), OperationFaults::default());
    assert!(
        emulator::start(bad_config, "127.0.0.1:0".parse().unwrap())
            .await
            .is_err()
    );

    let id = public_store(&client, "ctl")
        .send()
        .await
        .unwrap()
        .custom_key_store_id
        .unwrap();
    let r = put(
        &format!("/proxies/{HOST}/key-managers/ekm-1"),
        json!({"health": "UNAVAILABLE"}),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 200);
    let entry = connect(&client, &id).await;
    assert_eq!(
        entry.connection_error_code().map(|c| c.as_str()),
        Some("XKS_PROXY_NOT_REACHABLE")
    );
    disconnect(&client, &id).await;
    put(
        &format!("/proxies/{HOST}/key-managers/ekm-1"),
        json!({"health": "ACTIVE"}),
    )
    .await
    .unwrap();
    let r = http
        .post(format!("{base}/proxies/{HOST}/credentials"))
        .json(&json!({"accessKeyId": "AKIAXKSTESTPROXYROTA", "secretAccessKey": OTHER_SECRET}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    client
        .update_custom_key_store()
        .custom_key_store_id(&id)
        .xks_proxy_authentication_credential(cred("AKIAXKSTESTPROXYROTA", OTHER_SECRET))
        .send()
        .await
        .unwrap();
    let r = http
        .delete(format!("{base}/resolve/{HOST}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        connect(&client, &id)
            .await
            .connection_error_code()
            .map(|c| c.as_str()),
        Some("XKS_PROXY_NOT_REACHABLE")
    );
    let r = put(
        "/proxies/nowhere.example.com/key-managers/ekm-1",
        json!({"health": "ACTIVE"}),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 404);

    let state: Value = http
        .get(format!("{base}/state"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(state["customKeyStores"][0]["CustomKeyStoreId"], id.as_str());
    let text = state.to_string();
    assert!(
        !text.contains(SECRET) && !text.contains(OTHER_SECRET),
        "state leaks a secret"
    );

    // A removed proxy is unreachable, not answered by the KMS API.
    let r = http
        .delete(format!("{base}/proxies/{VPC_DNS}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = public_store(&client, "gone")
        .xks_proxy_uri_endpoint(format!("https://{VPC_DNS}"))
        .send()
        .await;
    assert_eq!(code(r), "XksProxyUriUnreachableException");
    let health = http.get(format!("{base}/health")).send().await.unwrap();
    assert_eq!(health.status(), 200);

    let r = http.post(format!("{base}/reset")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        client
            .describe_custom_key_stores()
            .send()
            .await
            .unwrap()
            .custom_key_stores()
            .is_empty()
    );
    assert_eq!(emu.proxy_resolve_map().get(HOST), Some(&emu.kms_endpoint()));
    public_store(&client, "after-reset").send().await.unwrap();
    emu.shutdown().await;
}

#[tokio::test]
async fn unknown_operations_and_error_shape() {
    let (emu, _client) = start(test_config()).await;
    let (status, header, body) = raw(&emu.kms_endpoint(), "Frobnicate", json!({})).await;
    assert_eq!(status, 400);
    assert_eq!(header.as_deref(), Some("UnknownOperationException"));
    assert_eq!(body["__type"], "UnknownOperationException");
    assert!(body["message"].is_string());
    let r = client(&emu.kms_endpoint())
        .list_keys()
        .send()
        .await
        .unwrap();
    use aws_sdk_kms::operation::RequestId;
    assert!(r.request_id().is_some_and(|id| id.len() == 36));
    let (status, _, body) = raw(&emu.kms_endpoint(), "ConnectCustomKeyStore", json!({})).await;
    assert_eq!(
        (status, body["__type"].as_str()),
        (400, Some("ValidationException"))
    );
    emu.shutdown().await;
}

// --- the embedded demo ------------------------------------------------------

#[tokio::test]
async fn demo_config_primary_and_replica() {
    let config = EmulatorConfig {
        connect_delay_ms: 30,
        disconnect_delay_ms: 30,
        ..EmulatorConfig::default()
    };
    let (emu, client) = start(config).await;
    let resolve = emu.proxy_resolve_map();
    assert_eq!(resolve.get(DEMO_PRIMARY_HOST), Some(&emu.kms_endpoint()));
    assert_eq!(resolve.get(DEMO_REPLICA_HOST), Some(&emu.kms_endpoint()));
    let id = client
        .create_custom_key_store()
        .custom_key_store_name("demo")
        .custom_key_store_type(CustomKeyStoreType::ExternalKeyStore)
        .xks_proxy_connectivity(XksProxyConnectivityType::PublicEndpoint)
        .xks_proxy_uri_endpoint(format!("https://{DEMO_PRIMARY_HOST}"))
        .xks_proxy_uri_path(DEMO_URI_PATH)
        .xks_proxy_authentication_credential(cred(DEMO_ACCESS_KEY_ID, DEMO_SECRET))
        .send()
        .await
        .unwrap()
        .custom_key_store_id
        .unwrap();
    assert_eq!(
        connect(&client, &id).await.connection_state(),
        Some(&ConnectionStateType::Connected)
    );
    for key in ["demo-key-1", "demo-key-2"] {
        client
            .create_key()
            .origin(OriginType::ExternalKeyStore)
            .custom_key_store_id(&id)
            .xks_key_id(key)
            .send()
            .await
            .unwrap();
    }
    // Move to the replica: disconnect, update endpoint, connect.
    disconnect(&client, &id).await;
    client
        .update_custom_key_store()
        .custom_key_store_id(&id)
        .xks_proxy_uri_endpoint(format!("https://{DEMO_REPLICA_HOST}"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        connect(&client, &id).await.connection_state(),
        Some(&ConnectionStateType::Connected)
    );
    // The rotated secret under the same access key id, where the proxy fleet holds both.
    let creds = emu.fleet().describe()["proxies"][0]["credentials"]
        .as_array()
        .unwrap()
        .len();
    if creds == 2 {
        client
            .update_custom_key_store()
            .custom_key_store_id(&id)
            .xks_proxy_authentication_credential(cred(DEMO_ACCESS_KEY_ID, DEMO_ROTATED_SECRET))
            .send()
            .await
            .unwrap();
    }
    emu.shutdown().await;
}

// --- secrets never reach the logs ---------------------------------------------

#[tokio::test]
async fn secrets_never_appear_in_logs() {
    let (emu, client) = start(test_config()).await;
    let id = public_store(&client, "logged")
        .send()
        .await
        .unwrap()
        .custom_key_store_id
        .unwrap();
    connect(&client, &id).await;
    let _ = public_store(&client, "bad")
        .xks_proxy_authentication_credential(cred(AKID, OTHER_SECRET))
        .send()
        .await;
    let _ = client
        .update_custom_key_store()
        .custom_key_store_id(&id)
        .xks_proxy_authentication_credential(cred(AKID, &format!("{}!", "S".repeat(50))))
        .send()
        .await;
    emu.shutdown().await;
    let text = logs().text();
    assert!(
        text.contains("custom key store created"),
        "logs were not captured"
    );
    for secret in [SECRET, OTHER_SECRET, DEMO_SECRET, DEMO_ROTATED_SECRET] {
        assert!(!text.contains(secret), "a secret reached the logs");
    }
}

#[tokio::test]
async fn key_spec_usage_region_and_cancel_deletion() {
    let (emu, client) = start(test_config()).await;
    let id = public_store(&client, "ks")
        .send()
        .await
        .unwrap()
        .custom_key_store_id
        .unwrap();
    connect(&client, &id).await;
    let create = || {
        client
            .create_key()
            .origin(OriginType::ExternalKeyStore)
            .custom_key_store_id(&id)
            .xks_key_id("key-1")
    };
    let r = create()
        .key_spec(aws_sdk_kms::types::KeySpec::Rsa2048)
        .send()
        .await;
    assert_eq!(code(r), "UnsupportedOperationException");
    let r = create()
        .key_usage(aws_sdk_kms::types::KeyUsageType::SignVerify)
        .send()
        .await;
    assert_eq!(code(r), "UnsupportedOperationException");
    let r = create().multi_region(true).send().await;
    assert_eq!(code(r), "UnsupportedOperationException");
    // An AWS_KMS key cannot name a custom key store.
    let r = client.create_key().custom_key_store_id(&id).send().await;
    assert_eq!(code(r), "ValidationException");
    let key = create().send().await.unwrap().key_metadata.unwrap();
    let r = client
        .cancel_key_deletion()
        .key_id(key.key_id())
        .send()
        .await;
    assert_eq!(code(r), "KMSInvalidStateException");
    client
        .schedule_key_deletion()
        .key_id(key.key_id())
        .send()
        .await
        .unwrap();
    let d = client
        .describe_key()
        .key_id(key.key_id())
        .send()
        .await
        .unwrap();
    assert_eq!(
        d.key_metadata().unwrap().pending_deletion_window_in_days(),
        Some(30)
    );
    client
        .cancel_key_deletion()
        .key_id(key.key_id())
        .send()
        .await
        .unwrap();
    let d = client
        .describe_key()
        .key_id(key.key_id())
        .send()
        .await
        .unwrap();
    assert_eq!(
        d.key_metadata().unwrap().key_state(),
        Some(&KeyState::Disabled)
    );
    emu.shutdown().await;
}

#[tokio::test]
async fn vpc_owner_must_match_and_public_endpoint_cannot_take_a_vpc_name() {
    let mut config = test_config();
    config.vpc_endpoint_services[0].owner = Some("444455556666".into());
    let (emu, client) = start(config).await;
    let id = vpc_store(&client, "own", &format!("https://{VPC_DNS}"), VPC_SERVICE)
        .xks_proxy_vpc_endpoint_service_owner("111122223333")
        .send()
        .await
        .unwrap()
        .custom_key_store_id
        .unwrap();
    let entry = connect(&client, &id).await;
    assert_eq!(
        entry.connection_error_code().map(|c| c.as_str()),
        Some("XKS_VPC_ENDPOINT_SERVICE_NOT_FOUND")
    );
    disconnect(&client, &id).await;
    client
        .update_custom_key_store()
        .custom_key_store_id(&id)
        .xks_proxy_vpc_endpoint_service_owner("444455556666")
        .send()
        .await
        .unwrap();
    let entry = connect(&client, &id).await;
    assert_eq!(
        entry.connection_state(),
        Some(&ConnectionStateType::Connected)
    );
    // A public store cannot use a VPC store's private DNS name, even under another path.
    let r = public_store(&client, "pub")
        .xks_proxy_uri_endpoint(format!("https://{VPC_DNS}"))
        .xks_proxy_uri_path("/kms/xks/v1")
        .send()
        .await;
    assert_eq!(code(r), "XksProxyUriEndpointInUseException");
    // Emptying the service name of a VPC store is refused.
    disconnect(&client, &id).await;
    let r = client
        .update_custom_key_store()
        .custom_key_store_id(&id)
        .xks_proxy_vpc_endpoint_service_name("")
        .send()
        .await;
    assert_eq!(code(r), "ValidationException");
    emu.shutdown().await;
}

#[tokio::test]
async fn probabilistic_faults_at_certainty() {
    let (emu, client) = start(test_config()).await;
    let ctl = emu.control();
    let set = |f: OperationFaults| ctl.set_operation_faults("ListKeys", Some(f));
    set(OperationFaults {
        throttle_rate: 1.0,
        ..Default::default()
    });
    assert_eq!(code(client.list_keys().send().await), "ThrottlingException");
    set(OperationFaults {
        internal_error_rate: 1.0,
        ..Default::default()
    });
    assert_eq!(
        code(client.list_keys().send().await),
        "KMSInternalException"
    );
    set(OperationFaults {
        drop_rate: 1.0,
        ..Default::default()
    });
    assert!(
        client
            .list_keys()
            .send()
            .await
            .unwrap_err()
            .as_service_error()
            .is_none()
    );
    ctl.set_operation_faults("ListKeys", None);
    client.list_keys().send().await.unwrap();
    let stats = &ctl.operation_stats()["ListKeys"];
    assert_eq!(
        (
            stats.requests,
            stats.throttled,
            stats.internal_errors,
            stats.dropped
        ),
        (4, 1, 1, 1)
    );
    emu.shutdown().await;
}

/// `xks-emulator --config <the example of docs/emulator.md>`, as
/// an outside conformance suite runs it; SIGTERM stops it cleanly.
#[tokio::test]
async fn cli_serves_the_documented_config_and_stops_on_sigterm() {
    use std::io::BufRead;
    let doc = include_str!("../../docs/emulator.md");
    let yaml = doc
        .split("## Configuration file")
        .nth(1)
        .and_then(|s| s.split("```yaml\n").nth(1))
        .and_then(|s| s.split("```").next())
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("emulator.yaml");
    std::fs::write(&path, yaml).unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_xks-emulator"))
        .args(["--listen", "127.0.0.1:0", "--config"])
        .arg(&path)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut first = String::new();
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    out.read_line(&mut first).unwrap();
    let endpoint = first
        .trim()
        .rsplit(' ')
        .next()
        .unwrap_or_default()
        .to_string();
    assert!(endpoint.starts_with("http://127.0.0.1:"), "{first}");
    let client = client(&endpoint);
    let id = client
        .create_custom_key_store()
        .custom_key_store_name("cli")
        .custom_key_store_type(CustomKeyStoreType::ExternalKeyStore)
        .xks_proxy_connectivity(XksProxyConnectivityType::PublicEndpoint)
        .xks_proxy_uri_endpoint(format!("https://{DEMO_PRIMARY_HOST}"))
        .xks_proxy_uri_path(DEMO_URI_PATH)
        .xks_proxy_authentication_credential(cred(DEMO_ACCESS_KEY_ID, DEMO_SECRET))
        .send()
        .await
        .unwrap()
        .custom_key_store_id
        .unwrap();
    assert_eq!(
        state_of(&client, &id).await,
        ConnectionStateType::Disconnected
    );
    let status = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = child.wait().unwrap();
    drop(out);
    assert!(exit.success(), "{exit:?}");
}

#[tokio::test]
async fn remaining_bounds() {
    let (emu, client) = start(test_config()).await;
    let id = public_store(&client, "b")
        .send()
        .await
        .unwrap()
        .custom_key_store_id
        .unwrap();
    connect(&client, &id).await;
    let create = |xks: String| {
        client
            .create_key()
            .origin(OriginType::ExternalKeyStore)
            .custom_key_store_id(&id)
            .xks_key_id(xks)
    };
    // XksKeyId 1-128: inside passes validation (and the proxy lacks the key).
    let r = create("k".repeat(128)).send().await;
    assert_eq!(code(r), "XksKeyNotFoundException");
    let r = create("k".repeat(129)).send().await;
    assert_eq!(code(r), "ValidationException");
    let r = create(String::new()).send().await;
    assert_eq!(code(r), "ValidationException");
    let r = create("key-1".into())
        .description("d".repeat(8193))
        .send()
        .await;
    assert_eq!(code(r), "ValidationException");
    create("key-1".into())
        .description("d".repeat(8192))
        .send()
        .await
        .unwrap();
    for limit in [1, 1000] {
        client
            .describe_custom_key_stores()
            .limit(limit)
            .send()
            .await
            .unwrap();
        client.list_keys().limit(limit).send().await.unwrap();
    }
    let r = client
        .describe_custom_key_stores()
        .marker("m".repeat(1025))
        .send()
        .await;
    assert_eq!(code(r), "ValidationException");
    let r = client
        .describe_custom_key_stores()
        .custom_key_store_name("n".repeat(257))
        .send()
        .await;
    assert_eq!(code(r), "ValidationException");
    let r = client
        .update_custom_key_store()
        .custom_key_store_id(&id)
        .new_custom_key_store_name("n".repeat(257))
        .send()
        .await;
    assert_eq!(code(r), "ValidationException");
    client
        .update_custom_key_store()
        .custom_key_store_id(&id)
        .new_custom_key_store_name("n".repeat(256))
        .send()
        .await
        .unwrap();
    emu.shutdown().await;
}

/// `PUT /_emulator/proxies/{host}` takes the host from the path, as the
/// docs say, and every refusal of the control API is `{"error": ...}`.
#[tokio::test]
async fn control_api_takes_the_proxy_host_from_the_path_and_answers_errors_as_json() {
    let (emu, _client) = start(test_config()).await;
    let base = format!("{}/_emulator", emu.kms_endpoint());
    let http = reqwest::Client::new();
    let put = |path: &str, body: Value| http.put(format!("{base}{path}")).json(&body).send();

    let r = put(
        "/proxies/xks-new.example.com",
        json!({"uriPath": "/new/kms/xks/v1"}),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap_or_default());
    let proxies: Value = http
        .get(format!("{base}/proxies"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        proxies.to_string().contains("xks-new.example.com"),
        "{proxies}"
    );

    for (path, body, status) in [
        // A required field missing.
        ("/proxies/xks-new.example.com", json!({}), 422),
        // The body contradicts the path.
        (
            "/proxies/xks-new.example.com",
            json!({"host": "elsewhere.example.com", "uriPath": "/new/kms/xks/v1"}),
            400,
        ),
        // A field of the wrong type, on another route.
        ("/faults/ListKeys", json!({"throttleNext": "one"}), 422),
    ] {
        let r = put(path, body).await.unwrap();
        assert_eq!(r.status(), status, "{path}");
        let answer: Value = r.json().await.expect("a JSON error body");
        let error = answer["error"].as_str().unwrap_or_default();
        assert!(!error.is_empty(), "{path}: {answer}");
    }
    emu.shutdown().await;
}
