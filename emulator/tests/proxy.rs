//! The XKS proxy emulator over real HTTP on 127.0.0.1: raw requests signed
//! here with aws-sigv4, and the emulated KMS side's `ProxyCaller`.

mod common;
use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use aws_credential_types::Credentials;
use aws_sigv4::http_request::{SignableBody, SignableRequest, SigningSettings, sign};
use aws_sigv4::sign::v4;
use aws_smithy_runtime_api::client::identity::Identity;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde_json::{Value, json};
use xks_emulator::proxy_client::{ProxyCall, ProxyCallError, ProxyCaller};
use xks_emulator::xks_proxy::{
    ExternalKeyConfig, FailWith, KeyManagerConfig, KeyManagerHealth, ProxyConfig,
    ProxyCredentialConfig, ProxyFaults, ProxyFleet,
};

const HOST: &str = "xks-primary.example.com";
const OTHER_HOST: &str = "xks-secondary.example.com";
const PATH: &str = "/example/kms/xks/v1";
const AKID: &str = "AKIAXKSEMULATORPRIMARY2";
const SECRET: &str = "K7MDENG/bPxRfiCYEXAMPLEKEYprimarySecretValue0=";
const AKID2: &str = "AKIAXKSEMULATORROTATED3";
const SECRET2: &str = "Q2xOtherRotatedSecretValueForTheProxyEmulator=";
const REGION: &str = "eu-west-1";
const KEY_MATERIAL: [u8; 32] = [0x42; 32];

fn primary_config() -> ProxyConfig {
    let mut key = ExternalKeyConfig::new("key-1");
    key.material = Some(B64.encode(KEY_MATERIAL));
    let mut cfg = ProxyConfig::new(HOST, PATH)
        .with_credential(AKID, SECRET)
        .with_key(key)
        .with_key(ExternalKeyConfig::new("key-2"));
    cfg.key_managers = vec![
        KeyManagerConfig::new("hsm-a"),
        KeyManagerConfig::new("hsm-b"),
    ];
    cfg
}

fn fleet() -> ProxyFleet {
    let other = ProxyConfig::new(OTHER_HOST, "/kms/xks/v1").with_credential(AKID2, SECRET2);
    ProxyFleet::new(vec![primary_config(), other]).unwrap()
}

/// Serves the fleet on 127.0.0.1:0; returns the base URL.
async fn serve(fleet: &ProxyFleet) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let router = fleet.router();
    tokio::spawn(async move {
        axum::serve(listener, router).await.unwrap();
    });
    format!("http://{addr}")
}

/// How a raw test request is signed.
struct Signer<'a> {
    akid: &'a str,
    secret: &'a str,
    service: &'a str,
    time: SystemTime,
}

impl Default for Signer<'_> {
    fn default() -> Self {
        Signer {
            akid: AKID,
            secret: SECRET,
            service: "kms-xks-proxy",
            time: SystemTime::now(),
        }
    }
}

fn sigv4_headers(host: &str, path: &str, body: &[u8], s: &Signer<'_>) -> Vec<(String, String)> {
    let identity: Identity = Credentials::new(s.akid, s.secret, None, None, "test").into();
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(REGION)
        .name(s.service)
        .time(s.time)
        .settings(SigningSettings::default())
        .build()
        .unwrap()
        .into();
    let request = SignableRequest::new(
        "POST",
        format!("https://{host}{path}"),
        [("host", host)].into_iter(),
        SignableBody::Bytes(body),
    )
    .unwrap();
    let (instructions, _) = sign(request, &params).unwrap().into_parts();
    instructions
        .headers()
        .map(|(n, v)| (n.to_owned(), v.to_owned()))
        .collect()
}

fn metadata(op: &str) -> Value {
    json!({"kmsRequestId": "4112f4d6-db54-4af4-ae30-c55a22a8dfae", "kmsOperation": op,
           "awsPrincipalArn": "arn:aws:iam::111122223333:user/Alice"})
}

/// POSTs `body` (signed unless `signer` is None) to `path` on `host`.
async fn post_raw(
    base: &str,
    host: &str,
    path: &str,
    body: &[u8],
    signer: Option<&Signer<'_>>,
) -> (u16, Value) {
    let mut req = reqwest::Client::new()
        .post(format!("{base}{path}"))
        .header("host", host)
        .header("content-type", "application/json")
        .body(body.to_vec());
    if let Some(s) = signer {
        for (n, v) in sigv4_headers(host, path, body, s) {
            req = req.header(n, v);
        }
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let json = resp.json().await.unwrap_or(Value::Null);
    (status, json)
}

async fn post(base: &str, op_path: &str, body: Value, signer: &Signer<'_>) -> (u16, Value) {
    let body = serde_json::to_vec(&body).unwrap();
    post_raw(base, HOST, &format!("{PATH}{op_path}"), &body, Some(signer)).await
}

async fn health(base: &str, signer: &Signer<'_>) -> (u16, Value) {
    post(
        base,
        "/health",
        json!({"requestMetadata": metadata("KmsHealthCheck")}),
        signer,
    )
    .await
}

fn error_name(v: &Value) -> &str {
    v["errorName"].as_str().unwrap_or("")
}

fn call<'a>(akid: &'a str, secret: &'a str) -> ProxyCall<'a> {
    ProxyCall {
        uri_endpoint: "https://xks-primary.example.com",
        uri_path: PATH,
        access_key_id: akid,
        secret_access_key: secret,
        region: REGION,
    }
}

fn caller(base: &str, timeout_ms: u64) -> ProxyCaller {
    ProxyCaller::new(
        HashMap::from([(HOST.to_string(), base.to_string())]),
        Duration::from_millis(timeout_ms),
    )
}

// --- authentication -------------------------------------------------------

#[tokio::test]
async fn good_signature_gets_health() {
    let fleet = fleet();
    let base = serve(&fleet).await;
    let (status, body) = health(&base, &Signer::default()).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["xksProxyFleetSize"], 1);
    for field in ["xksProxyVendor", "xksProxyModel", "ekmVendor"] {
        assert!(body[field].is_string(), "{field} missing: {body}");
    }
    let details = body["ekmFleetDetails"].as_array().unwrap();
    assert_eq!(details.len(), 2);
    assert_eq!(details[0]["id"], "hsm-a");
    assert_eq!(details[0]["healthStatus"], "ACTIVE");
    assert!(details[0]["model"].is_string());
    assert_eq!(fleet.request_count(HOST), 1);
}

#[tokio::test]
async fn bad_signatures_get_401() {
    let fleet = fleet();
    let base = serve(&fleet).await;
    let cases = [
        (
            "wrong secret",
            Signer {
                secret: SECRET2,
                ..Signer::default()
            },
        ),
        (
            "unknown access key id",
            Signer {
                akid: "AKIAUNKNOWNUNKNOWN2345",
                ..Signer::default()
            },
        ),
        (
            "another proxy's credential",
            Signer {
                akid: AKID2,
                secret: SECRET2,
                ..Signer::default()
            },
        ),
        (
            "wrong service in scope",
            Signer {
                service: "kms",
                ..Signer::default()
            },
        ),
        (
            "signed 6 minutes ago",
            Signer {
                time: SystemTime::now() - Duration::from_secs(360),
                ..Signer::default()
            },
        ),
        (
            "signed 6 minutes ahead",
            Signer {
                time: SystemTime::now() + Duration::from_secs(360),
                ..Signer::default()
            },
        ),
    ];
    for (what, signer) in &cases {
        let (status, body) = health(&base, signer).await;
        assert_eq!(status, 401, "{what}: {body}");
        assert_eq!(error_name(&body), "AuthenticationFailedException", "{what}");
    }
    // Within the 5-minute window is fine.
    let recent = Signer {
        time: SystemTime::now() - Duration::from_secs(200),
        ..Signer::default()
    };
    assert_eq!(health(&base, &recent).await.0, 200);
}

#[tokio::test]
async fn unsigned_or_tampered_requests_get_401() {
    let fleet = fleet();
    let base = serve(&fleet).await;
    let path = format!("{PATH}/health");
    let body = serde_json::to_vec(&json!({"requestMetadata": metadata("KmsHealthCheck")})).unwrap();
    let (status, _) = post_raw(&base, HOST, &path, &body, None).await;
    assert_eq!(status, 401);

    // Signature over one body, another body sent.
    let headers = sigv4_headers(HOST, &path, &body, &Signer::default());
    let mut req = reqwest::Client::new()
        .post(format!("{base}{path}"))
        .header("host", HOST)
        .body(br#"{"requestMetadata":{"kmsRequestId":"x","kmsOperation":"Tampered"}}"#.to_vec());
    for (n, v) in headers {
        req = req.header(n, v);
    }
    assert_eq!(req.send().await.unwrap().status().as_u16(), 401);
}

#[tokio::test]
async fn rotation_accepts_both_credentials_until_one_is_removed() {
    let fleet = fleet();
    let base = serve(&fleet).await;
    let old = Signer::default();
    let new = Signer {
        akid: AKID2,
        secret: SECRET2,
        ..Signer::default()
    };
    assert_eq!(health(&base, &new).await.0, 401);
    fleet
        .add_credential(HOST, ProxyCredentialConfig::new(AKID2, SECRET2))
        .unwrap();
    assert_eq!(health(&base, &old).await.0, 200);
    assert_eq!(health(&base, &new).await.0, 200);
    fleet.remove_credential(HOST, AKID).unwrap();
    assert_eq!(health(&base, &old).await.0, 401);
    assert_eq!(health(&base, &new).await.0, 200);
    assert!(fleet.remove_credential(HOST, AKID).is_err());

    // A new secret under the same access key id replaces the old secret.
    fleet
        .add_credential(HOST, ProxyCredentialConfig::new(AKID2, SECRET))
        .unwrap();
    assert_eq!(health(&base, &new).await.0, 401);
    let same_id = Signer {
        akid: AKID2,
        secret: SECRET,
        ..Signer::default()
    };
    assert_eq!(health(&base, &same_id).await.0, 200);

    // Through the KMS-side caller too.
    let c = caller(&base, 2000);
    assert!(
        c.get_health_status(&call(AKID2, SECRET), "UpdateCustomKeyStore")
            .await
            .is_ok()
    );
    assert_eq!(
        c.get_health_status(&call(AKID, SECRET), "UpdateCustomKeyStore")
            .await,
        Err(ProxyCallError::AuthenticationFailed)
    );
}

// --- routing and validation -------------------------------------------------

#[tokio::test]
async fn routes_by_host_case_insensitively_and_counts_per_host() {
    let fleet = fleet();
    let base = serve(&fleet).await;
    assert!(fleet.serves_host("XKS-Primary.Example.com:443"));
    assert!(!fleet.serves_host("unknown.example.com"));
    // The other proxy has its own path and credentials.
    let body = serde_json::to_vec(&json!({"requestMetadata": metadata("KmsHealthCheck")})).unwrap();
    let other = Signer {
        akid: AKID2,
        secret: SECRET2,
        ..Signer::default()
    };
    let (status, _) = post_raw(&base, OTHER_HOST, "/kms/xks/v1/health", &body, Some(&other)).await;
    assert_eq!(status, 200);
    let (status, _) = post_raw(
        &base,
        OTHER_HOST,
        "/kms/xks/v1/health",
        &body,
        Some(&Signer::default()),
    )
    .await;
    assert_eq!(status, 401);
    assert_eq!(fleet.request_count(OTHER_HOST), 2);
    assert_eq!(fleet.request_count(HOST), 0);
    // A host no proxy serves.
    let (status, body) = post_raw(
        &base,
        "nobody.example.com",
        "/kms/xks/v1/health",
        &body,
        None,
    )
    .await;
    assert_eq!(
        (status, error_name(&body)),
        (404, "InvalidUriPathException")
    );
}

#[tokio::test]
async fn wrong_path_is_invalid_uri_path() {
    let fleet = fleet();
    let base = serve(&fleet).await;
    let body = serde_json::to_vec(&json!({"requestMetadata": metadata("KmsHealthCheck")})).unwrap();
    for path in [
        "/other/kms/xks/v1/health",
        "/example/kms/xks/v2/health",
        "/example/kms/xks/v1/status",
    ] {
        let (status, resp) = post_raw(&base, HOST, path, &body, Some(&Signer::default())).await;
        assert_eq!(
            (status, error_name(&resp)),
            (404, "InvalidUriPathException"),
            "{path}"
        );
    }
    let c = caller(&base, 2000);
    let wrong = ProxyCall {
        uri_path: "/wrong/kms/xks/v1",
        ..call(AKID, SECRET)
    };
    assert_eq!(
        c.get_health_status(&wrong, "CreateCustomKeyStore").await,
        Err(ProxyCallError::InvalidUriPath)
    );
}

#[tokio::test]
async fn get_is_rejected_with_405() {
    let fleet = fleet();
    let base = serve(&fleet).await;
    let resp = reqwest::Client::new()
        .get(format!("{base}{PATH}/health"))
        .header("host", HOST)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 405);
}

#[tokio::test]
async fn request_metadata_and_json_are_required() {
    let fleet = fleet();
    let base = serve(&fleet).await;
    let s = Signer::default();
    for body in [
        json!({}),
        json!({"requestMetadata": {"kmsRequestId": "x"}}),
        json!([1]),
    ] {
        let (status, resp) = post(&base, "/keys/key-1/metadata", body.clone(), &s).await;
        assert_eq!(
            (status, error_name(&resp)),
            (400, "ValidationException"),
            "{body}"
        );
    }
    let path = format!("{PATH}/health");
    let (status, resp) = post_raw(&base, HOST, &path, b"not json", Some(&s)).await;
    assert_eq!((status, error_name(&resp)), (400, "ValidationException"));
}

// --- keys -------------------------------------------------------------------

#[tokio::test]
async fn key_metadata_and_unknown_keys() {
    let fleet = fleet();
    let base = serve(&fleet).await;
    let s = Signer::default();
    let (status, body) = post(
        &base,
        "/keys/key-1/metadata",
        json!({"requestMetadata": metadata("DescribeKey")}),
        &s,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body,
        json!({"keySpec": "AES_256", "keyUsage": ["ENCRYPT", "DECRYPT"], "keyStatus": "ENABLED"})
    );
    let (status, body) = post(
        &base,
        "/keys/nope/metadata",
        json!({"requestMetadata": metadata("CreateKey")}),
        &s,
    )
    .await;
    assert_eq!((status, error_name(&body)), (404, "KeyNotFoundException"));

    let c = caller(&base, 2000);
    let answer = c
        .get_key_metadata(&call(AKID, SECRET), "key-2")
        .await
        .unwrap();
    assert_eq!(answer.key_spec, "AES_256");
    assert_eq!(answer.key_usage, vec!["ENCRYPT", "DECRYPT"]);
    assert_eq!(answer.key_status, "ENABLED");
    assert_eq!(
        c.get_key_metadata(&call(AKID, SECRET), "missing").await,
        Err(ProxyCallError::KeyNotFound)
    );
    let mut disabled = ExternalKeyConfig::new("key-2");
    disabled.key_status = "DISABLED".into();
    fleet.upsert_key(HOST, disabled).unwrap();
    let answer = c
        .get_key_metadata(&call(AKID, SECRET), "key-2")
        .await
        .unwrap();
    assert_eq!(answer.key_status, "DISABLED");
}

async fn encrypt(base: &str, key: &str, plaintext: &[u8], aad: Option<&[u8]>) -> (u16, Value) {
    let mut body = json!({
        "requestMetadata": metadata("Encrypt"),
        "plaintext": B64.encode(plaintext),
        "encryptionAlgorithm": "AES_GCM",
        "ciphertextDataIntegrityValueAlgorithm": "SHA_256",
    });
    if let Some(aad) = aad {
        body["additionalAuthenticatedData"] = json!(B64.encode(aad));
    }
    post(
        base,
        &format!("/keys/{key}/encrypt"),
        body,
        &Signer::default(),
    )
    .await
}

async fn decrypt(base: &str, key: &str, sealed: &Value, aad: Option<&[u8]>) -> (u16, Value) {
    let mut body = json!({
        "requestMetadata": metadata("Decrypt"),
        "ciphertext": sealed["ciphertext"],
        "initializationVector": sealed["initializationVector"],
        "authenticationTag": sealed["authenticationTag"],
        "encryptionAlgorithm": "AES_GCM",
    });
    if let Some(aad) = aad {
        body["additionalAuthenticatedData"] = json!(B64.encode(aad));
    }
    post(
        base,
        &format!("/keys/{key}/decrypt"),
        body,
        &Signer::default(),
    )
    .await
}

fn b64(v: &Value) -> Vec<u8> {
    B64.decode(v.as_str().unwrap()).unwrap()
}

#[tokio::test]
async fn encrypt_decrypt_round_trip_and_integrity() {
    let fleet = fleet();
    let base = serve(&fleet).await;
    let aad: &[u8] = b"project=nile,department=marketing";
    let (status, sealed) = encrypt(&base, "key-1", b"Hello World!", Some(aad)).await;
    assert_eq!(status, 200, "{sealed}");
    assert_eq!(b64(&sealed["initializationVector"]).len(), 12);
    assert_eq!(b64(&sealed["authenticationTag"]).len(), 16);
    assert_eq!(b64(&sealed["ciphertext"]).len(), 12);
    assert!(!b64(&sealed["ciphertext"]).starts_with(b"Hello"));
    // CDIV = SHA-256(aad || iv || ciphertext || tag), spec Appendix C.
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    for part in [
        aad.to_vec(),
        b64(&sealed["initializationVector"]),
        b64(&sealed["ciphertext"]),
        b64(&sealed["authenticationTag"]),
    ] {
        h.update(part);
    }
    assert_eq!(
        b64(&sealed["ciphertextDataIntegrityValue"]),
        h.finalize().to_vec()
    );

    let (status, opened) = decrypt(&base, "key-1", &sealed, Some(aad)).await;
    assert_eq!(status, 200, "{opened}");
    assert_eq!(b64(&opened["plaintext"]), b"Hello World!");

    let (status, resp) = decrypt(&base, "key-1", &sealed, Some(b"project=amazon")).await;
    assert_eq!(
        (status, error_name(&resp)),
        (400, "InvalidCiphertextException"),
        "AAD mismatch"
    );
    let (status, resp) = decrypt(&base, "key-1", &sealed, None).await;
    assert_eq!(
        (status, error_name(&resp)),
        (400, "InvalidCiphertextException"),
        "AAD missing"
    );
    let mut tag = b64(&sealed["authenticationTag"]);
    tag[3] ^= 0x01;
    let mut tampered = sealed.clone();
    tampered["authenticationTag"] = json!(B64.encode(&tag));
    let (status, resp) = decrypt(&base, "key-1", &tampered, Some(aad)).await;
    assert_eq!(
        (status, error_name(&resp)),
        (400, "InvalidCiphertextException"),
        "tampered tag"
    );
    // Another key cannot open it.
    let (status, resp) = decrypt(&base, "key-2", &sealed, Some(aad)).await;
    assert_eq!(
        (status, error_name(&resp)),
        (400, "InvalidCiphertextException"),
        "other key"
    );
}

#[tokio::test]
async fn disabled_key_is_invalid_state_and_keeps_its_material() {
    let fleet = fleet();
    let base = serve(&fleet).await;
    let (_, sealed) = encrypt(&base, "key-2", b"data key", None).await;
    let mut disabled = ExternalKeyConfig::new("key-2");
    disabled.key_status = "DISABLED".into();
    fleet.upsert_key(HOST, disabled).unwrap();
    let (status, resp) = encrypt(&base, "key-2", b"data key", None).await;
    assert_eq!((status, error_name(&resp)), (400, "InvalidStateException"));
    fleet
        .upsert_key(HOST, ExternalKeyConfig::new("key-2"))
        .unwrap();
    let (status, opened) = decrypt(&base, "key-2", &sealed, None).await;
    assert_eq!(
        status, 200,
        "re-enabled key must keep its material: {opened}"
    );
    assert_eq!(b64(&opened["plaintext"]), b"data key");
}

#[tokio::test]
async fn configured_material_is_shared_between_proxies() {
    // A second proxy with the same material (a backup EKM) opens the ciphertext.
    let mut backup_key = ExternalKeyConfig::new("key-1");
    backup_key.material = Some(B64.encode(KEY_MATERIAL));
    let backup = ProxyConfig::new(OTHER_HOST, PATH)
        .with_credential(AKID, SECRET)
        .with_key(backup_key);
    let fleet = ProxyFleet::new(vec![primary_config(), backup]).unwrap();
    let base = serve(&fleet).await;
    let (_, sealed) = encrypt(&base, "key-1", b"secret", None).await;
    let body = serde_json::to_vec(&json!({
        "requestMetadata": metadata("Decrypt"),
        "ciphertext": sealed["ciphertext"],
        "initializationVector": sealed["initializationVector"],
        "authenticationTag": sealed["authenticationTag"],
        "encryptionAlgorithm": "AES_GCM",
    }))
    .unwrap();
    let path = format!("{PATH}/keys/key-1/decrypt");
    let (status, opened) =
        post_raw(&base, OTHER_HOST, &path, &body, Some(&Signer::default())).await;
    assert_eq!(status, 200, "{opened}");
    assert_eq!(b64(&opened["plaintext"]), b"secret");
}

// --- key manager health --------------------------------------------------------

#[tokio::test]
async fn health_reports_each_key_manager_and_all_unavailable_is_unusable() {
    let fleet = fleet();
    let base = serve(&fleet).await;
    let c = caller(&base, 2000);
    let creds = call(AKID, SECRET);
    fleet
        .set_key_manager_health(HOST, "hsm-a", KeyManagerHealth::Degraded)
        .unwrap();
    fleet
        .set_key_manager_health(HOST, "hsm-b", KeyManagerHealth::Unavailable)
        .unwrap();
    let status = c
        .get_health_status(&creds, "ConnectCustomKeyStore")
        .await
        .unwrap();
    assert_eq!(status.fleet_size, 1);
    assert_eq!(
        status.key_managers,
        vec![
            ("hsm-a".to_string(), "DEGRADED".to_string()),
            ("hsm-b".to_string(), "UNAVAILABLE".to_string())
        ]
    );
    assert_eq!(
        encrypt(&base, "key-1", b"x", None).await.0,
        200,
        "one DEGRADED manager serves"
    );

    fleet
        .set_key_manager_health(HOST, "hsm-a", KeyManagerHealth::Unavailable)
        .unwrap();
    // The proxy still answers health; the caller judges it unusable.
    let (code, body) = health(&base, &Signer::default()).await;
    assert_eq!(code, 200);
    assert_eq!(body["ekmFleetDetails"][0]["healthStatus"], "UNAVAILABLE");
    assert_eq!(
        c.get_health_status(&creds, "ConnectCustomKeyStore").await,
        Err(ProxyCallError::NoHealthyKeyManager)
    );
    let (code, resp) = encrypt(&base, "key-1", b"x", None).await;
    assert_eq!(
        (code, error_name(&resp)),
        (503, "DependencyTimeoutException")
    );
    assert!(
        fleet
            .set_key_manager_health(HOST, "hsm-z", KeyManagerHealth::Active)
            .is_err()
    );
    assert!(
        fleet
            .set_key_manager_health("nobody.example.com", "hsm-a", KeyManagerHealth::Active)
            .is_err()
    );
}

// --- faults and transport -------------------------------------------------------

#[tokio::test]
async fn faults_map_to_caller_errors() {
    let fleet = fleet();
    let base = serve(&fleet).await;
    let creds = call(AKID, SECRET);
    let fail = |status: u16, name: &str| ProxyFaults {
        fail_with: Some(FailWith {
            status,
            error_name: name.into(),
            error_message: None,
        }),
        ..ProxyFaults::default()
    };
    let cases = [
        (fail(429, "ThrottlingException"), ProxyCallError::Throttled),
        (
            fail(500, "InternalException"),
            ProxyCallError::ServerError(500),
        ),
        (
            fail(503, "DependencyTimeoutException"),
            ProxyCallError::ServerError(503),
        ),
        (
            fail(403, "AccessDeniedException"),
            ProxyCallError::AccessDenied,
        ),
        (
            fail(401, "AuthenticationFailedException"),
            ProxyCallError::AuthenticationFailed,
        ),
    ];
    let c = caller(&base, 2000);
    for (faults, expected) in cases {
        fleet.set_faults(HOST, faults).unwrap();
        assert_eq!(
            c.get_health_status(&creds, "KmsHealthCheck").await,
            Err(expected)
        );
    }

    fleet
        .set_faults(
            HOST,
            ProxyFaults {
                malformed_responses: true,
                ..ProxyFaults::default()
            },
        )
        .unwrap();
    assert!(matches!(
        c.get_health_status(&creds, "KmsHealthCheck").await,
        Err(ProxyCallError::InvalidResponse(_))
    ));
    assert!(matches!(
        c.get_key_metadata(&creds, "key-1").await,
        Err(ProxyCallError::InvalidResponse(_))
    ));

    fleet
        .set_faults(
            HOST,
            ProxyFaults {
                drop_connections: true,
                ..ProxyFaults::default()
            },
        )
        .unwrap();
    let dropped = c.get_health_status(&creds, "KmsHealthCheck").await;
    assert!(
        matches!(dropped, Err(ProxyCallError::Unreachable(_))),
        "{dropped:?}"
    );

    fleet
        .set_faults(
            HOST,
            ProxyFaults {
                latency_ms: 400,
                ..ProxyFaults::default()
            },
        )
        .unwrap();
    let quick = caller(&base, 100);
    assert_eq!(
        quick.get_health_status(&creds, "KmsHealthCheck").await,
        Err(ProxyCallError::TimedOut)
    );
    // The same latency within a longer timeout is fine.
    assert!(c.get_health_status(&creds, "KmsHealthCheck").await.is_ok());

    fleet.set_faults(HOST, ProxyFaults::default()).unwrap();
    assert!(c.get_health_status(&creds, "KmsHealthCheck").await.is_ok());
    assert!(fleet.set_faults(HOST, fail(200, "Nope")).is_err());
}

#[tokio::test]
async fn unresolved_or_refusing_hosts_are_unreachable() {
    let fleet = fleet();
    let base = serve(&fleet).await;
    let c = caller(&base, 2000);
    let elsewhere = ProxyCall {
        uri_endpoint: "https://not-resolved.example.com",
        ..call(AKID, SECRET)
    };
    assert!(matches!(
        c.get_health_status(&elsewhere, "CreateCustomKeyStore")
            .await,
        Err(ProxyCallError::Unreachable(_))
    ));
    c.remove_resolve(HOST);
    assert!(matches!(
        c.get_health_status(&call(AKID, SECRET), "CreateCustomKeyStore")
            .await,
        Err(ProxyCallError::Unreachable(_))
    ));
    assert_eq!(fleet.request_count(HOST), 0);

    // A port nobody listens on: connection refused.
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let dead = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    c.set_resolve(HOST, &dead);
    assert!(matches!(
        c.get_health_status(&call(AKID, SECRET), "CreateCustomKeyStore")
            .await,
        Err(ProxyCallError::Unreachable(_))
    ));
    c.set_resolve(HOST, &base);
    assert!(
        c.get_health_status(&call(AKID, SECRET), "CreateCustomKeyStore")
            .await
            .is_ok()
    );
}

#[tokio::test]
async fn fleet_changes_at_run_time() {
    let fleet = fleet();
    let base = serve(&fleet).await;
    let c = caller(&base, 2000);
    let (_, sealed) = encrypt(&base, "key-2", b"kept", None).await;
    // Replace the proxy with a new path; generated material of key-2 is kept.
    let mut moved = primary_config();
    moved.uri_path = "/moved/kms/xks/v1".into();
    fleet.try_upsert(moved).unwrap();
    assert_eq!(
        c.get_health_status(&call(AKID, SECRET), "UpdateCustomKeyStore")
            .await,
        Err(ProxyCallError::InvalidUriPath)
    );
    let moved_call = ProxyCall {
        uri_path: "/moved/kms/xks/v1",
        ..call(AKID, SECRET)
    };
    assert!(
        c.get_health_status(&moved_call, "UpdateCustomKeyStore")
            .await
            .is_ok()
    );
    let body = serde_json::to_vec(&json!({
        "requestMetadata": metadata("Decrypt"),
        "ciphertext": sealed["ciphertext"],
        "initializationVector": sealed["initializationVector"],
        "authenticationTag": sealed["authenticationTag"],
        "encryptionAlgorithm": "AES_GCM",
    }))
    .unwrap();
    let path = "/moved/kms/xks/v1/keys/key-2/decrypt";
    let (status, opened) = post_raw(&base, HOST, path, &body, Some(&Signer::default())).await;
    assert_eq!(status, 200, "{opened}");
    assert!(fleet.request_count(HOST) >= 4, "counter survives upsert");

    let mut bad = primary_config();
    bad.keys[0].material = Some("dG9vIHNob3J0".into());
    assert!(fleet.try_upsert(bad).is_err());
    assert!(fleet.remove(HOST));
    assert!(!fleet.serves_host(HOST));
    assert!(!fleet.remove(HOST));
}

// --- secrets ------------------------------------------------------------------

#[tokio::test]
async fn secrets_never_reach_describe_logs_or_answers() {
    // current-thread runtime: the server tasks log through this subscriber too.
    let (logs, _guard) = common::Captured::on_this_thread();

    let fleet = fleet();
    let base = serve(&fleet).await;
    let c = caller(&base, 2000);
    c.get_health_status(&call(AKID, SECRET), "ConnectCustomKeyStore")
        .await
        .unwrap();
    let _ = c
        .get_health_status(&call(AKID, SECRET2), "UpdateCustomKeyStore")
        .await;
    let (_, sealed) = encrypt(&base, "key-1", b"plaintext-must-not-leak", None).await;
    let (_, bad) = health(
        &base,
        &Signer {
            secret: SECRET2,
            ..Signer::default()
        },
    )
    .await;
    fleet.upsert(ProxyConfig::new(HOST, "no-leading-slash").with_credential(AKID, SECRET));

    let describe = fleet.describe().to_string();
    let logs = logs.text();
    assert!(
        logs.contains("ConnectCustomKeyStore"),
        "kmsOperation is logged"
    );
    assert!(logs.contains("AuthenticationFailedException"));
    assert!(describe.contains(AKID), "access key ids are shown");
    let material = B64.encode(KEY_MATERIAL);
    let plaintext = B64.encode(b"plaintext-must-not-leak");
    for (what, text) in [
        ("describe", describe.as_str()),
        ("logs", logs.as_str()),
        ("answers", &format!("{sealed}{bad}")),
        ("debug", &format!("{:?}{:?}", primary_config(), fleet)),
    ] {
        for secret in [
            SECRET,
            SECRET2,
            material.as_str(),
            plaintext.as_str(),
            "plaintext-must-not-leak",
        ] {
            assert!(!text.contains(secret), "{what} leaks {secret}");
        }
    }
    let proxies = fleet.describe()["proxies"].as_array().unwrap().clone();
    assert_eq!(proxies.len(), 2);
    assert_eq!(proxies[0]["keys"][0]["id"], "key-1");
    assert!(proxies[0]["keys"][0].get("material").is_none());
}
