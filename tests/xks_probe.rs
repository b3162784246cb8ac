//! `HttpProxyProbe` against a small mock XKS proxy on 127.0.0.1: the mock
//! checks the SigV4 signature (recomputed with aws-sigv4) and the Host
//! header, then answers per scenario, named by the first segment of the URI
//! path. Every `ProbeError` mapping is covered, and no output carries the
//! secret.

#[path = "common/logs.rs"]
mod logs;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use aws_credential_types::Credentials;
use aws_sigv4::http_request::{SignableBody, SignableRequest, SigningSettings, sign};
use aws_sigv4::sign::v4;
use aws_smithy_runtime_api::client::identity::Identity;
use axum::Json;
use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use xks_operator::model::ProxyCredential;
use xks_operator::xks::probe::{HttpProxyProbe, ProbeOptions};
use xks_operator::xks::{KeyManagerHealth, ProbeError, ProxyProbe, ProxyTarget};

const HOST: &str = "xks-primary.example.com";
const REGION: &str = "eu-west-1";
const AKID: &str = "AKIAXKSPROBETESTKEYAA";
const SECRET: &str = "ProbeTestSecret/DoNotLeakThisValue0123456789ab=";
const OTHER_SECRET: &str = "AnotherSecretThatTheProxyDoesNotKnow0123456789=";

#[derive(Clone, Debug)]
struct Seen {
    host: String,
    path: String,
    body: Value,
}

#[derive(Clone, Default)]
struct Mock {
    seen: Arc<Mutex<Vec<Seen>>>,
}

fn xks_error(status: StatusCode, name: &str) -> Response {
    (
        status,
        [("content-type", "application/json")],
        json!({"errorName": name, "errorMessage": "mock"}).to_string(),
    )
        .into_response()
}

fn healthy_body() -> Value {
    json!({
        "xksProxyFleetSize": 2,
        "xksProxyVendor": "Mock Corp",
        "xksProxyModel": "MockProxy 1.0",
        "ekmVendor": "Mock HSM",
        "ekmFleetDetails": [
            {"id": "hsm-a", "model": "M1", "healthStatus": "ACTIVE"},
            {"id": "hsm-b", "model": "M1", "healthStatus": "DEGRADED"}
        ]
    })
}

/// What the proxy's SigV4 check would compute for this request.
fn expected_authorization(headers: &HeaderMap, path: &str, body: &[u8]) -> Option<String> {
    let amz_date = headers.get("x-amz-date")?.to_str().ok()?;
    let time: SystemTime = jiff::fmt::strtime::parse("%Y%m%dT%H%M%SZ", amz_date)
        .ok()?
        .to_datetime()
        .ok()?
        .to_zoned(jiff::tz::TimeZone::UTC)
        .ok()?
        .timestamp()
        .into();
    let identity: Identity = Credentials::new(AKID, SECRET, None, None, "mock").into();
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(REGION)
        .name("kms-xks-proxy")
        .time(time)
        .settings(SigningSettings::default())
        .build()
        .ok()?
        .into();
    let host = headers.get("host")?.to_str().ok()?;
    let content_type = headers.get("content-type")?.to_str().ok()?;
    let url = format!("https://{host}{path}");
    let signable = SignableRequest::new(
        "POST",
        url,
        [("host", host), ("content-type", content_type)].into_iter(),
        SignableBody::Bytes(body),
    )
    .ok()?;
    let (instructions, _) = sign(signable, &params).ok()?.into_parts();
    instructions
        .headers()
        .find(|(n, _)| n.eq_ignore_ascii_case("authorization"))
        .map(|(_, v)| v.to_owned())
}

async fn handle(mock: Mock, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
    let path = uri.path().to_owned();
    let host = headers
        .get("host")
        .and_then(|h| h.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let auth = headers
        .get("authorization")
        .and_then(|h| h.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    mock.seen.lock().unwrap().push(Seen {
        host: host.clone(),
        path: path.clone(),
        body: serde_json::from_slice(&body).unwrap_or(Value::Null),
    });

    // The checks a real proxy makes, strictest first.
    let today = jiff::Timestamp::now().strftime("%Y%m%d").to_string();
    let scope = format!("Credential={AKID}/{today}/{REGION}/kms-xks-proxy/aws4_request");
    if host != HOST || !auth.starts_with("AWS4-HMAC-SHA256 ") || !auth.contains(&scope) {
        return xks_error(StatusCode::BAD_REQUEST, "MockWrongHostOrScope");
    }
    if expected_authorization(&headers, &path, &body).as_deref() != Some(auth.as_str()) {
        return xks_error(StatusCode::UNAUTHORIZED, "AuthenticationFailedException");
    }

    let scenario = path.trim_start_matches('/').split('/').next().unwrap_or("");
    let is_metadata = path.ends_with("/metadata");
    match scenario {
        "healthy" if is_metadata => {
            if path.contains("/keys/unknown-key/") {
                return xks_error(StatusCode::NOT_FOUND, "KeyNotFoundException");
            }
            Json(json!({"keySpec": "AES_256", "keyUsage": ["ENCRYPT", "DECRYPT"], "keyStatus": "ENABLED"}))
                .into_response()
        }
        "healthy" => Json(healthy_body()).into_response(),
        "unauthorized" => xks_error(StatusCode::UNAUTHORIZED, "AuthenticationFailedException"),
        "denied" => xks_error(StatusCode::FORBIDDEN, "AccessDeniedException"),
        "throttled" => xks_error(StatusCode::TOO_MANY_REQUESTS, "ThrottlingException"),
        "broken" => xks_error(StatusCode::INTERNAL_SERVER_ERROR, "InternalException"),
        "dependency" => (StatusCode::SERVICE_UNAVAILABLE, "no json here").into_response(),
        "notjson" => (StatusCode::OK, "<html>hello</html>").into_response(),
        "fleet0" => {
            let mut b = healthy_body();
            b["xksProxyFleetSize"] = json!(0);
            Json(b).into_response()
        }
        "nofleet" => {
            let mut b = healthy_body();
            b["ekmFleetDetails"] = json!([]);
            Json(b).into_response()
        }
        "oddstatus" => {
            let mut b = healthy_body();
            b["ekmFleetDetails"][0]["healthStatus"] = json!("SUPERB");
            Json(b).into_response()
        }
        "badmeta" => Json(json!({"keySpec": "AES_256"})).into_response(),
        "slow" => {
            tokio::time::sleep(Duration::from_secs(2)).await;
            Json(healthy_body()).into_response()
        }
        _ => xks_error(StatusCode::NOT_FOUND, "InvalidUriPathException"),
    }
}

async fn start() -> (String, Mock) {
    let mock = Mock::default();
    let state = mock.clone();
    let router = axum::Router::new().fallback(move |uri: Uri, headers: HeaderMap, body: Bytes| {
        let mock = state.clone();
        async move { handle(mock, uri, headers, body).await }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(listener, router).await.unwrap();
    });
    (format!("http://{addr}"), mock)
}

fn probe_to(base: &str, timeout: Duration) -> HttpProxyProbe {
    HttpProxyProbe::new(ProbeOptions {
        resolve: HashMap::from([(HOST.to_owned(), base.to_owned())]),
        timeout,
        ..ProbeOptions::default()
    })
    .unwrap()
}

fn target(scenario: &str) -> ProxyTarget {
    target_with(scenario, SECRET)
}

fn target_with(scenario: &str, secret: &str) -> ProxyTarget {
    ProxyTarget {
        uri_endpoint: format!("https://{HOST}"),
        uri_path: format!("/{scenario}/kms/xks/v1"),
        region: REGION.to_owned(),
        credential: ProxyCredential::new(AKID, secret),
    }
}

#[tokio::test]
async fn healthy_proxy_is_signed_right_and_parsed() {
    let (base, mock) = start().await;
    let probe = probe_to(&base, Duration::from_secs(2));
    let report = probe.health(&target("healthy")).await.unwrap();
    assert_eq!(report.fleet_size, 2);
    assert_eq!(report.proxy_vendor, "Mock Corp");
    assert_eq!(report.key_managers.len(), 2);
    assert_eq!(report.key_managers[1].health, KeyManagerHealth::Degraded);
    assert!(report.is_usable());

    let seen = mock.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].host, HOST, "the Host header keeps the proxy's name");
    assert_eq!(seen[0].path, "/healthy/kms/xks/v1/health");
    let meta = &seen[0].body["requestMetadata"];
    assert_eq!(meta["kmsOperation"], "KmsHealthCheck");
    assert!(meta["kmsRequestId"].as_str().is_some_and(|s| s.len() >= 32));
}

#[tokio::test]
async fn key_metadata_is_signed_right_and_parsed() {
    let (base, mock) = start().await;
    let probe = probe_to(&base, Duration::from_secs(2));
    let meta = probe
        .key_metadata(&target("healthy"), "key-1")
        .await
        .unwrap();
    assert!(meta.is_usable());
    assert_eq!(meta.key_usage, ["ENCRYPT", "DECRYPT"]);

    let seen = mock.seen.lock().unwrap().clone();
    assert_eq!(seen[0].path, "/healthy/kms/xks/v1/keys/key-1/metadata");
    let rm = &seen[0].body["requestMetadata"];
    assert_eq!(rm["kmsOperation"], "DescribeKey");
    assert!(
        rm["awsPrincipalArn"]
            .as_str()
            .is_some_and(|s| !s.is_empty())
    );
    assert!(rm["kmsRequestId"].as_str().is_some_and(|s| !s.is_empty()));
}

#[tokio::test]
async fn request_ids_differ_between_calls() {
    let (base, mock) = start().await;
    let probe = probe_to(&base, Duration::from_secs(2));
    probe.health(&target("healthy")).await.unwrap();
    probe.health(&target("healthy")).await.unwrap();
    let seen = mock.seen.lock().unwrap().clone();
    assert_ne!(
        seen[0].body["requestMetadata"]["kmsRequestId"],
        seen[1].body["requestMetadata"]["kmsRequestId"]
    );
}

#[tokio::test]
async fn wrong_secret_is_authentication_failed() {
    let (base, _) = start().await;
    let probe = probe_to(&base, Duration::from_secs(2));
    let err = probe
        .health(&target_with("healthy", OTHER_SECRET))
        .await
        .unwrap_err();
    assert!(matches!(err, ProbeError::AuthenticationFailed), "{err:?}");
}

#[tokio::test]
async fn error_answers_map_exactly() {
    let (base, _) = start().await;
    let probe = probe_to(&base, Duration::from_secs(2));
    let health = |s: &'static str| {
        let probe = probe.clone();
        async move { probe.health(&target(s)).await.unwrap_err() }
    };
    assert!(matches!(
        health("unauthorized").await,
        ProbeError::AuthenticationFailed
    ));
    assert!(matches!(health("denied").await, ProbeError::AccessDenied));
    assert!(matches!(
        health("no-such-prefix").await,
        ProbeError::InvalidUriPath
    ));
    assert!(matches!(health("throttled").await, ProbeError::Throttled));
    match health("broken").await {
        ProbeError::ServerError { status, error_name } => {
            assert_eq!(status, 500);
            assert_eq!(error_name, "InternalException");
        }
        other => panic!("{other:?}"),
    }
    match health("dependency").await {
        ProbeError::ServerError { status, error_name } => {
            assert_eq!(status, 503);
            assert_eq!(error_name, "");
        }
        other => panic!("{other:?}"),
    }
    for s in ["notjson", "fleet0", "nofleet", "oddstatus"] {
        assert!(
            matches!(health(s).await, ProbeError::InvalidResponse(_)),
            "{s}"
        );
    }

    let err = probe
        .key_metadata(&target("healthy"), "unknown-key")
        .await
        .unwrap_err();
    assert!(matches!(err, ProbeError::KeyNotFound), "{err:?}");
    let err = probe
        .key_metadata(&target("badmeta"), "key-1")
        .await
        .unwrap_err();
    assert!(matches!(err, ProbeError::InvalidResponse(_)), "{err:?}");
    // An id no proxy can hold is not sent at all.
    let err = probe
        .key_metadata(&target("healthy"), "../../health")
        .await
        .unwrap_err();
    assert!(matches!(err, ProbeError::KeyNotFound), "{err:?}");
}

#[tokio::test]
async fn slow_proxy_times_out() {
    let (base, _) = start().await;
    let probe = probe_to(&base, Duration::from_millis(200));
    let started = std::time::Instant::now();
    let err = probe.health(&target("slow")).await.unwrap_err();
    assert!(matches!(err, ProbeError::TimedOut), "{err:?}");
    assert!(started.elapsed() < Duration::from_millis(1500));
}

#[tokio::test]
async fn closed_port_is_unreachable() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let probe = probe_to(&format!("http://{addr}"), Duration::from_secs(2));
    let err = probe.health(&target("healthy")).await.unwrap_err();
    assert!(matches!(err, ProbeError::Unreachable(_)), "{err:?}");
}

#[tokio::test]
async fn reset_connection_is_unreachable() {
    // Accepts, reads a little, then closes without answering.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            use tokio::io::AsyncReadExt;
            let mut buf = [0u8; 64];
            let _ = sock.read(&mut buf).await;
            drop(sock);
        }
    });
    let probe = probe_to(&format!("http://{addr}"), Duration::from_secs(2));
    let err = probe.health(&target("healthy")).await.unwrap_err();
    assert!(matches!(err, ProbeError::Unreachable(_)), "{err:?}");
}

#[tokio::test]
async fn unresolvable_host_is_unreachable() {
    let probe = HttpProxyProbe::new(ProbeOptions {
        timeout: Duration::from_secs(5),
        ..ProbeOptions::default()
    })
    .unwrap();
    let mut t = target("healthy");
    t.uri_endpoint = "https://xks-proxy.does-not-exist.invalid".to_owned();
    let err = probe.health(&t).await.unwrap_err();
    assert!(matches!(err, ProbeError::Unreachable(_)), "{err:?}");
}

#[tokio::test]
async fn tls_handshake_failure_is_tls() {
    // https to a plain-HTTP server: the handshake cannot succeed.
    let (base, _) = start().await;
    let https = base.replacen("http://", "https://", 1);
    let probe = probe_to(&https, Duration::from_secs(2));
    let err = probe.health(&target("healthy")).await.unwrap_err();
    assert!(matches!(err, ProbeError::Tls(_)), "{err:?}");
}

#[tokio::test]
async fn the_secret_never_shows() {
    let (logs, _guard) = logs::Captured::on_this_thread();

    let (base, _) = start().await;
    let probe = probe_to(&base, Duration::from_millis(200));
    let mut outputs = vec![format!("{probe:?}"), format!("{:?}", target("healthy"))];
    let _ = probe.health(&target("healthy")).await.unwrap();
    for s in [
        "unauthorized",
        "denied",
        "nowhere",
        "throttled",
        "broken",
        "notjson",
        "fleet0",
        "slow",
    ] {
        let e = probe.health(&target(s)).await.unwrap_err();
        outputs.push(format!("{e:?} {e}"));
    }
    let e = probe
        .key_metadata(&target("healthy"), "unknown-key")
        .await
        .unwrap_err();
    outputs.push(format!("{e:?} {e}"));
    let tls = probe_to(
        &base.replacen("http://", "https://", 1),
        Duration::from_secs(2),
    );
    let e = tls.health(&target("healthy")).await.unwrap_err();
    outputs.push(format!("{e:?} {e} {tls:?}"));

    let logged = logs.text();
    assert!(
        !logged.is_empty(),
        "the probe logs something at trace level"
    );
    for text in outputs.iter().chain(std::iter::once(&logged)) {
        assert!(!text.contains(SECRET), "secret leaked in: {text}");
    }
}
