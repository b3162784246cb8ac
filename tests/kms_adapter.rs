//! `AwsKeyStores` (the real aws-sdk-kms client) against a small mock of the
//! KMS JSON 1.1 protocol on 127.0.0.1. The mock records each request
//! (operation from `X-Amz-Target`, JSON body) and answers with a per-test
//! function, so each test states exactly what KMS says.

#[path = "common/logs.rs"]
mod logs;

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use xks_operator::error::{Class, ErrorCategory};
use xks_operator::kms::aws::AwsKeyStores;
use xks_operator::kms::{CreateStore, KeyStores, KmsError, UpdateStore};
use xks_operator::model::{ConnectionState, Connectivity, ProxyConfig, ProxyCredential};

const REGION: &str = "eu-west-1";
const SECRET: &str = "KmsAdapterTestSecret/DoNotLeak0123456789abcdefXYZ=";

enum Reply {
    Ok(Value),
    Err(u16, &'static str, &'static str),
}

type Handler = dyn Fn(&str, &Value) -> Reply + Send + Sync;

#[derive(Clone)]
struct Mock {
    calls: Arc<Mutex<Vec<(String, Value)>>>,
    handler: Arc<Handler>,
}

impl Mock {
    fn calls(&self) -> Vec<(String, Value)> {
        self.calls.lock().unwrap().clone()
    }

    fn bodies(&self, op: &str) -> Vec<Value> {
        self.calls()
            .into_iter()
            .filter(|(o, _)| o == op)
            .map(|(_, b)| b)
            .collect()
    }
}

async fn handle(mock: Mock, headers: HeaderMap, body: Bytes) -> Response {
    let target = headers
        .get("x-amz-target")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let op = target
        .strip_prefix("TrentService.")
        .unwrap_or(target)
        .to_owned();
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    mock.calls.lock().unwrap().push((op.clone(), body.clone()));
    match (mock.handler)(&op, &body) {
        Reply::Ok(v) => (
            StatusCode::OK,
            [("content-type", "application/x-amz-json-1.1")],
            v.to_string(),
        )
            .into_response(),
        Reply::Err(status, "", _) => StatusCode::from_u16(status).unwrap().into_response(),
        Reply::Err(status, code, message) => (
            StatusCode::from_u16(status).unwrap(),
            [
                ("content-type", "application/x-amz-json-1.1"),
                ("x-amzn-errortype", code),
            ],
            json!({"__type": code, "message": message}).to_string(),
        )
            .into_response(),
    }
}

/// Starts the mock; returns its base URL and its record.
async fn serve(handler: impl Fn(&str, &Value) -> Reply + Send + Sync + 'static) -> (String, Mock) {
    let mock = Mock {
        calls: Arc::default(),
        handler: Arc::new(handler),
    };
    let state = mock.clone();
    let router = axum::Router::new().fallback(move |headers: HeaderMap, body: Bytes| {
        let mock = state.clone();
        async move { handle(mock, headers, body).await }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(listener, router).await.unwrap();
    });
    (format!("http://{addr}"), mock)
}

/// The mock and an adapter to it without SDK retries (so each error reaches
/// the test once).
async fn start(
    handler: impl Fn(&str, &Value) -> Reply + Send + Sync + 'static,
) -> (AwsKeyStores, Mock) {
    let (endpoint, mock) = serve(handler).await;
    let kms = AwsKeyStores::for_endpoint(&endpoint, REGION).with_max_attempts(1);
    (kms, mock)
}

fn xks_entry(id: &str, state: &str) -> Value {
    json!({
        "CustomKeyStoreId": id,
        "CustomKeyStoreName": format!("name-{id}"),
        "CustomKeyStoreType": "EXTERNAL_KEY_STORE",
        "ConnectionState": state,
        "CreationDate": 1.7e9,
        "XksProxyConfiguration": {
            "Connectivity": "PUBLIC_ENDPOINT",
            "AccessKeyId": "AKIAXKSADAPTERTEST22",
            "UriEndpoint": format!("https://{id}.example.com"),
            "UriPath": "/kms/xks/v1",
            "VpcEndpointServiceName": ""
        }
    })
}

fn credential() -> ProxyCredential {
    ProxyCredential::new("AKIAXKSADAPTERTEST22", SECRET)
}

#[tokio::test]
async fn describe_all_follows_every_page() {
    // 5 stores served 2 per page, whatever Limit says.
    let (kms, mock) = start(|op, body| {
        assert_eq!(op, "DescribeCustomKeyStores");
        let start: usize = body["Marker"].as_str().map_or(0, |m| m.parse().unwrap());
        let all: Vec<Value> = (0..5)
            .map(|i| {
                if i == 4 {
                    // A CloudHSM store: no XKS configuration.
                    json!({"CustomKeyStoreId": "cks-4", "CustomKeyStoreName": "hsm",
                           "CustomKeyStoreType": "AWS_CLOUDHSM", "ConnectionState": "CONNECTED",
                           "CloudHsmClusterId": "cluster-1"})
                } else {
                    xks_entry(&format!("cks-{i}"), "DISCONNECTED")
                }
            })
            .collect();
        let end = (start + 2).min(all.len());
        let mut page = json!({"CustomKeyStores": all[start..end], "Truncated": end < all.len()});
        if end < all.len() {
            page["NextMarker"] = json!(end.to_string());
        }
        Reply::Ok(page)
    })
    .await;

    let stores = kms.describe_all().await.unwrap();
    let ids: Vec<_> = stores.iter().map(|s| s.id.as_str()).collect();
    assert_eq!(ids, ["cks-0", "cks-1", "cks-2", "cks-3", "cks-4"]);

    let bodies = mock.bodies("DescribeCustomKeyStores");
    assert_eq!(bodies.len(), 3);
    assert!(bodies.iter().all(|b| b["Limit"] == 1000));
    assert_eq!(bodies[0].get("Marker"), None);
    assert_eq!(bodies[1]["Marker"], "2");
    assert_eq!(bodies[2]["Marker"], "4");

    let first = &stores[0];
    assert_eq!(first.name, "name-cks-0");
    assert_eq!(first.store_type, "EXTERNAL_KEY_STORE");
    assert_eq!(first.connection_state, ConnectionState::Disconnected);
    let proxy = first.proxy.as_ref().unwrap();
    assert_eq!(proxy.connectivity, Connectivity::PublicEndpoint);
    assert_eq!(proxy.uri_endpoint, "https://cks-0.example.com");
    assert_eq!(
        proxy.vpc_endpoint_service_name, None,
        "empty string reads as None"
    );
    assert_eq!(stores[4].store_type, "AWS_CLOUDHSM");
    assert!(stores[4].proxy.is_none());
    assert_eq!(kms.stats().count("DescribeCustomKeyStores", "ok"), 3);
}

#[tokio::test]
async fn truncated_page_without_marker_is_an_error_not_a_loop() {
    let (kms, _) = start(|_, _| Reply::Ok(json!({"CustomKeyStores": [], "Truncated": true}))).await;
    let err = kms.describe_all().await.unwrap_err();
    assert_eq!(err.category(), ErrorCategory::Internal);
}

#[tokio::test]
async fn describe_by_id_and_name() {
    let (kms, mock) = start(|_, body| match body["CustomKeyStoreId"].as_str() {
        Some("cks-missing") => Reply::Err(400, "CustomKeyStoreNotFoundException", "no such store"),
        Some(id) => {
            Reply::Ok(json!({"CustomKeyStores": [xks_entry(id, "FAILED")], "Truncated": false}))
        }
        None => {
            let mut e = xks_entry("cks-byname", "CONNECTED");
            e["CustomKeyStoreName"] = body["CustomKeyStoreName"].clone();
            Reply::Ok(json!({"CustomKeyStores": [e], "Truncated": false}))
        }
    })
    .await;

    assert_eq!(kms.describe_by_id("cks-missing").await.unwrap(), None);
    let found = kms.describe_by_id("cks-7").await.unwrap().unwrap();
    assert_eq!(found.connection_state, ConnectionState::Failed);
    let named = kms.describe_by_name("payments").await.unwrap().unwrap();
    assert_eq!(named.id, "cks-byname");
    assert_eq!(named.name, "payments");

    let bodies = mock.bodies("DescribeCustomKeyStores");
    assert_eq!(bodies[0], json!({"CustomKeyStoreId": "cks-missing"}));
    assert_eq!(bodies[2], json!({"CustomKeyStoreName": "payments"}));
    let stats = kms.stats();
    assert_eq!(
        stats.count("DescribeCustomKeyStores", "CustomKeyStoreNotFoundException"),
        1
    );
    assert_eq!(stats.count("DescribeCustomKeyStores", "ok"), 2);
}

#[tokio::test]
async fn unknown_values_from_kms_do_not_panic() {
    let (kms, _) = start(|_, body| {
        let mut e = xks_entry("cks-1", "FAILED");
        match body["CustomKeyStoreId"].as_str() {
            Some("odd-state") => e["ConnectionState"] = json!("HIBERNATING"),
            Some("odd-code") => e["ConnectionErrorCode"] = json!("BRAND_NEW_ERROR_CODE"),
            Some("odd-connectivity") => {
                e["XksProxyConfiguration"]["Connectivity"] = json!("CARRIER_PIGEON")
            }
            _ => {}
        }
        Reply::Ok(json!({"CustomKeyStores": [e], "Truncated": false}))
    })
    .await;
    let err = kms.describe_by_id("odd-state").await.unwrap_err();
    assert_eq!(err.category(), ErrorCategory::Internal, "{err}");
    let err = kms.describe_by_id("odd-connectivity").await.unwrap_err();
    assert_eq!(err.category(), ErrorCategory::Internal, "{err}");
    let store = kms.describe_by_id("odd-code").await.unwrap().unwrap();
    assert_eq!(
        store.connection_error_code.as_deref(),
        Some("BRAND_NEW_ERROR_CODE")
    );
}

#[tokio::test]
async fn service_errors_keep_code_message_and_category() {
    let (kms, _) = start(|op, _| match op {
        "ConnectCustomKeyStore" => Reply::Err(400, "ThrottlingException", "Rate exceeded"),
        "DisconnectCustomKeyStore" => Reply::Err(
            400,
            "CustomKeyStoreInvalidStateException",
            "store is DISCONNECTED",
        ),
        "DeleteCustomKeyStore" => Reply::Err(400, "CustomKeyStoreHasCMKsException", "has keys"),
        "CreateCustomKeyStore" => Reply::Err(400, "XksProxyUriInUseException", "in use"),
        "UpdateCustomKeyStore" => Reply::Err(500, "KMSInternalException", "oops"),
        _ => Reply::Err(500, "", ""),
    })
    .await;

    let err = kms.connect("cks-1").await.unwrap_err();
    assert_eq!(err.code(), Some("ThrottlingException"));
    assert!(err.to_string().contains("Rate exceeded"));
    assert_eq!(err.category(), ErrorCategory::Throttled);
    assert_eq!(err.class(), Class::Transient);

    let err = kms.disconnect("cks-1").await.unwrap_err();
    assert_eq!(err.code(), Some("CustomKeyStoreInvalidStateException"));
    assert_eq!(err.category(), ErrorCategory::InvalidState);

    let err = kms.delete("cks-1").await.unwrap_err();
    assert_eq!(err.category(), ErrorCategory::StoreHasKeys);
    assert_eq!(err.class(), Class::NeedsPerson);

    let req = CreateStore {
        name: "payments".into(),
        proxy: public_proxy(),
        credential: credential(),
    };
    let err = kms.create(&req).await.unwrap_err();
    assert_eq!(err.code(), Some("XksProxyUriInUseException"));
    assert_eq!(err.category(), ErrorCategory::Conflict);

    let err = kms
        .update(&UpdateStore {
            id: "cks-1".into(),
            new_name: Some("x".into()),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some("KMSInternalException"));
    assert_eq!(err.category(), ErrorCategory::Transient);

    // A 500 without any error code is not a KMS answer we can classify.
    let err = kms.describe_by_id("cks-1").await.unwrap_err();
    assert!(matches!(err, KmsError::Transport(_)), "{err:?}");

    let stats = kms.stats();
    assert_eq!(
        stats.count("ConnectCustomKeyStore", "ThrottlingException"),
        1
    );
    assert_eq!(stats.count("DescribeCustomKeyStores", "transport"), 1);
}

#[tokio::test]
async fn unreachable_kms_is_transport() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let kms = AwsKeyStores::for_endpoint(&format!("http://{addr}"), REGION).with_max_attempts(1);
    let err = kms.describe_all().await.unwrap_err();
    assert!(matches!(err, KmsError::Transport(_)), "{err:?}");
    assert_eq!(err.category(), ErrorCategory::Transient);
}

fn public_proxy() -> ProxyConfig {
    ProxyConfig {
        connectivity: Connectivity::PublicEndpoint,
        uri_endpoint: "https://xks.example.com".into(),
        uri_path: "/example/kms/xks/v1".into(),
        vpc_endpoint_service_name: None,
        vpc_endpoint_service_owner: None,
        access_key_id: "AKIAXKSADAPTERTEST22".into(),
    }
}

#[tokio::test]
async fn create_sends_every_xks_field() {
    let (kms, mock) = start(|_, _| Reply::Ok(json!({"CustomKeyStoreId": "cks-new"}))).await;
    let id = kms
        .create(&CreateStore {
            name: "payments".into(),
            proxy: public_proxy(),
            credential: credential(),
        })
        .await
        .unwrap();
    assert_eq!(id, "cks-new");

    let vpc = ProxyConfig {
        connectivity: Connectivity::VpcEndpointService,
        uri_endpoint: "https://xks.private.example.com".into(),
        vpc_endpoint_service_name: Some(
            "com.amazonaws.vpce.eu-west-1.vpce-svc-0123456789abcdef0".into(),
        ),
        vpc_endpoint_service_owner: Some("111122223333".into()),
        ..public_proxy()
    };
    kms.create(&CreateStore {
        name: "private".into(),
        proxy: vpc,
        credential: credential(),
    })
    .await
    .unwrap();

    let bodies = mock.bodies("CreateCustomKeyStore");
    assert_eq!(
        bodies[0],
        json!({
            "CustomKeyStoreName": "payments",
            "CustomKeyStoreType": "EXTERNAL_KEY_STORE",
            "XksProxyConnectivity": "PUBLIC_ENDPOINT",
            "XksProxyUriEndpoint": "https://xks.example.com",
            "XksProxyUriPath": "/example/kms/xks/v1",
            "XksProxyAuthenticationCredential": {
                "AccessKeyId": "AKIAXKSADAPTERTEST22",
                "RawSecretAccessKey": SECRET
            }
        })
    );
    assert_eq!(bodies[1]["XksProxyConnectivity"], "VPC_ENDPOINT_SERVICE");
    assert_eq!(
        bodies[1]["XksProxyVpcEndpointServiceName"],
        "com.amazonaws.vpce.eu-west-1.vpce-svc-0123456789abcdef0"
    );
    assert_eq!(bodies[1]["XksProxyVpcEndpointServiceOwner"], "111122223333");
}

fn keys_of(v: &Value) -> BTreeSet<String> {
    v.as_object().unwrap().keys().cloned().collect()
}

#[tokio::test]
async fn update_sends_only_what_is_set() {
    let (kms, mock) = start(|_, _| Reply::Ok(json!({}))).await;

    kms.update(&UpdateStore {
        id: "cks-1".into(),
        new_name: Some("renamed".into()),
        ..Default::default()
    })
    .await
    .unwrap();
    kms.update(&UpdateStore {
        id: "cks-1".into(),
        credential: Some(credential()),
        uri_path: Some("/v2/kms/xks/v1".into()),
        ..Default::default()
    })
    .await
    .unwrap();
    // VPC → public: the service name is cleared with "".
    kms.update(&UpdateStore {
        id: "cks-1".into(),
        uri_endpoint: Some("https://xks-public.example.com".into()),
        connectivity: Some(Connectivity::PublicEndpoint),
        vpc_endpoint_service_name: Some(String::new()),
        ..Default::default()
    })
    .await
    .unwrap();

    let bodies = mock.bodies("UpdateCustomKeyStore");
    assert_eq!(
        bodies[0],
        json!({"CustomKeyStoreId": "cks-1", "NewCustomKeyStoreName": "renamed"})
    );
    assert_eq!(
        keys_of(&bodies[1]),
        BTreeSet::from([
            "CustomKeyStoreId".to_owned(),
            "XksProxyAuthenticationCredential".to_owned(),
            "XksProxyUriPath".to_owned()
        ])
    );
    assert_eq!(
        bodies[1]["XksProxyAuthenticationCredential"],
        json!({"AccessKeyId": "AKIAXKSADAPTERTEST22", "RawSecretAccessKey": SECRET})
    );
    assert_eq!(
        bodies[2],
        json!({
            "CustomKeyStoreId": "cks-1",
            "XksProxyUriEndpoint": "https://xks-public.example.com",
            "XksProxyConnectivity": "PUBLIC_ENDPOINT",
            "XksProxyVpcEndpointServiceName": ""
        })
    );
}

#[tokio::test]
async fn connect_disconnect_delete_send_the_id() {
    let (kms, mock) = start(|_, _| Reply::Ok(json!({}))).await;
    kms.connect("cks-1").await.unwrap();
    kms.disconnect("cks-2").await.unwrap();
    kms.delete("cks-3").await.unwrap();
    let calls = mock.calls();
    assert_eq!(
        calls[0],
        (
            "ConnectCustomKeyStore".into(),
            json!({"CustomKeyStoreId": "cks-1"})
        )
    );
    assert_eq!(
        calls[1],
        (
            "DisconnectCustomKeyStore".into(),
            json!({"CustomKeyStoreId": "cks-2"})
        )
    );
    assert_eq!(
        calls[2],
        (
            "DeleteCustomKeyStore".into(),
            json!({"CustomKeyStoreId": "cks-3"})
        )
    );
}

#[tokio::test]
async fn list_store_keys_filters_by_store() {
    let (kms, mock) = start(|op, body| match op {
        "ListKeys" => match body["Marker"].as_str() {
            None => Reply::Ok(json!({
                "Keys": [{"KeyId": "k1", "KeyArn": "arn:k1"}, {"KeyId": "k2", "KeyArn": "arn:k2"},
                         {"KeyId": "k3", "KeyArn": "arn:k3"}],
                "NextMarker": "m1", "Truncated": true
            })),
            Some("m1") => Reply::Ok(json!({
                "Keys": [{"KeyId": "k4", "KeyArn": "arn:k4"}, {"KeyId": "k5", "KeyArn": "arn:k5"}],
                "Truncated": false
            })),
            Some(m) => panic!("unexpected marker {m}"),
        },
        "DescribeKey" => {
            let id = body["KeyId"].as_str().unwrap();
            let meta = match id {
                "k1" | "k3" => json!({"KeyId": id, "KeyState": "Enabled", "Origin": "EXTERNAL_KEY_STORE",
                    "CustomKeyStoreId": "cks-1", "XksKeyConfiguration": {"Id": format!("ext-{id}")}}),
                "k2" => json!({"KeyId": id, "KeyState": "Disabled", "Origin": "EXTERNAL_KEY_STORE",
                    "CustomKeyStoreId": "cks-other", "XksKeyConfiguration": {"Id": "ext-k2"}}),
                "k4" => json!({"KeyId": id, "KeyState": "Enabled", "Origin": "AWS_KMS"}),
                _ => return Reply::Err(400, "NotFoundException", "deleted meanwhile"),
            };
            Reply::Ok(json!({"KeyMetadata": meta}))
        }
        other => panic!("unexpected {other}"),
    })
    .await;

    let keys = kms.list_store_keys("cks-1").await.unwrap();
    let got: Vec<_> = keys
        .iter()
        .map(|k| {
            (
                k.key_id.as_str(),
                k.external_key_id.as_str(),
                k.key_state.as_str(),
            )
        })
        .collect();
    assert_eq!(
        got,
        [("k1", "ext-k1", "Enabled"), ("k3", "ext-k3", "Enabled")]
    );
    let list = mock.bodies("ListKeys");
    assert_eq!(list.len(), 2);
    assert_eq!(list[0]["Limit"], 1000);
    assert_eq!(mock.bodies("DescribeKey").len(), 5);
}

#[tokio::test]
async fn list_store_keys_fails_when_a_key_cannot_be_described() {
    // Skipping a key we may not read could hide a key of the store.
    let (kms, _) = start(|op, _| match op {
        "ListKeys" => Reply::Ok(json!({"Keys": [{"KeyId": "k1"}], "Truncated": false})),
        _ => Reply::Err(400, "AccessDeniedException", "not allowed"),
    })
    .await;
    let err = kms.list_store_keys("cks-1").await.unwrap_err();
    assert_eq!(err.category(), ErrorCategory::AccessDenied);
}

#[tokio::test]
async fn rate_limiter_spaces_calls_per_operation() {
    let (kms, mock) = start(|_, _| Reply::Ok(json!({}))).await;
    let kms = kms.with_rate_limit(20.0);
    let started = Instant::now();
    let connects = (0..5).map(|i| {
        let kms = kms.clone();
        async move { kms.connect(&format!("cks-{i}")).await }
    });
    for r in futures::future::join_all(connects).await {
        r.unwrap();
    }
    // Another operation has its own bucket: its first call does not wait.
    kms.disconnect("cks-0").await.unwrap();

    let stats = kms.stats();
    assert_eq!(stats.count("ConnectCustomKeyStore", "ok"), 5);
    assert_eq!(mock.bodies("ConnectCustomKeyStore").len(), 5);
    assert!(stats.waits("ConnectCustomKeyStore") >= 3, "{stats:?}");
    assert_eq!(stats.waits("DisconnectCustomKeyStore"), 0);
    // 5 calls at 20/s take at least ~4 intervals of 50 ms; allow slack.
    assert!(started.elapsed() >= Duration::from_millis(150));

    // Without a limit nothing waits.
    let unlimited = kms.without_rate_limit();
    for i in 0..5 {
        unlimited.connect(&format!("cks-{i}")).await.unwrap();
    }
    assert_eq!(
        unlimited.stats().waits("ConnectCustomKeyStore"),
        stats.waits("ConnectCustomKeyStore")
    );
}

#[tokio::test]
async fn the_secret_never_shows() {
    let (logs, _guard) = logs::Captured::on_this_thread();

    let (kms, mock) = start(|op, _| match op {
        "CreateCustomKeyStore" => Reply::Err(
            400,
            "XksProxyIncorrectAuthenticationCredentialException",
            "bad credential",
        ),
        _ => Reply::Err(400, "XksProxyUriUnreachableException", "unreachable"),
    })
    .await;
    let create = CreateStore {
        name: "payments".into(),
        proxy: public_proxy(),
        credential: credential(),
    };
    let update = UpdateStore {
        id: "cks-1".into(),
        credential: Some(credential()),
        ..Default::default()
    };
    let mut outputs = vec![
        format!("{kms:?}"),
        format!("{create:?}"),
        format!("{update:?}"),
    ];
    let e = kms.create(&create).await.unwrap_err();
    outputs.push(format!("{e:?} {e}"));
    let e = kms.update(&update).await.unwrap_err();
    outputs.push(format!("{e:?} {e}"));
    outputs.push(format!("{:?}", kms.stats()));
    // The secret did go to KMS, in the body only.
    assert_eq!(
        mock.bodies("CreateCustomKeyStore")[0]["XksProxyAuthenticationCredential"]["RawSecretAccessKey"],
        SECRET
    );

    let logged = logs.text();
    assert!(
        logged.contains("CreateCustomKeyStore"),
        "trace logs were captured"
    );
    for text in outputs.iter().chain(std::iter::once(&logged)) {
        assert!(!text.contains(SECRET), "secret leaked in: {text}");
    }
}

/// `from_env` reads the process environment, which a test must not change
/// while other tests run in its process: the check runs in a child process
/// (this binary again) with the variables set, against this test's mock.
#[tokio::test]
async fn from_env_uses_the_standard_chain_and_a_default_rate_limit() {
    let (endpoint, mock) = serve(|_, _| Reply::Ok(json!({}))).await;
    let child = tokio::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "from_env_child", "--ignored", "--nocapture"])
        .env("XKS_TEST_FROM_ENV_CHILD", "1")
        .env("AWS_ENDPOINT_URL_KMS", &endpoint)
        .env("AWS_ACCESS_KEY_ID", "AKIDFROMENVIRONMENT1")
        .env("AWS_SECRET_ACCESS_KEY", "secret-from-the-environment")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("AWS_CONFIG_FILE", "/nonexistent/xks-operator-test")
        .env(
            "AWS_SHARED_CREDENTIALS_FILE",
            "/nonexistent/xks-operator-test",
        )
        .env_remove("AWS_PROFILE")
        .env_remove("AWS_ENDPOINT_URL")
        .output()
        .await
        .unwrap();
    assert!(
        child.status.success(),
        "the child's checks failed:\n{}{}",
        String::from_utf8_lossy(&child.stdout),
        String::from_utf8_lossy(&child.stderr)
    );
    assert_eq!(mock.bodies("ConnectCustomKeyStore").len(), 3);
}

#[tokio::test]
#[ignore = "run by from_env_uses_the_standard_chain_and_a_default_rate_limit"]
async fn from_env_child() {
    if std::env::var_os("XKS_TEST_FROM_ENV_CHILD").is_none() {
        return;
    }
    let kms = AwsKeyStores::from_env(Some("ap-south-1".to_owned())).await;
    assert_eq!(
        kms.client().config().region().map(|r| r.as_ref()),
        Some("ap-south-1")
    );
    for i in 0..3 {
        kms.connect(&format!("cks-{i}")).await.unwrap();
    }
    // 5/s (KMS's quota) with a burst of one: the 2nd and 3rd calls waited.
    assert_eq!(kms.stats().waits("ConnectCustomKeyStore"), 2);
    // Each call sent once: the operator's retry policy decides retries.
    assert_eq!(
        kms.client()
            .config()
            .retry_config()
            .map(|r| r.max_attempts()),
        Some(1)
    );
}
