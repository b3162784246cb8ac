//! How the emulated KMS calls an XKS proxy: SigV4-signed (service
//! `kms-xks-proxy`) POSTs to `https://<host><uriPath>/...`, sent to the base
//! URL the host resolves to in a private map (usually the emulator's own
//! listener on 127.0.0.1) with `Host: <host>`. A host missing from the map is
//! unreachable: the emulator never goes to the real internet.

use std::collections::HashMap;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, SystemTime};

use aws_credential_types::Credentials;
use aws_sigv4::http_request::{SignableBody, SignableRequest, SigningSettings, sign};
use aws_sigv4::sign::v4;
use aws_smithy_runtime_api::client::identity::Identity;
use serde_json::{Value, json};

const SIGNING_SERVICE: &str = "kms-xks-proxy";

/// Where and how to reach one proxy, as a custom key store records it.
#[derive(Clone, Copy)]
pub struct ProxyCall<'a> {
    /// `https://<host>` (the store's `XksProxyUriEndpoint`).
    pub uri_endpoint: &'a str,
    /// e.g. `/example/kms/xks/v1`.
    pub uri_path: &'a str,
    pub access_key_id: &'a str,
    pub secret_access_key: &'a str,
    /// The KMS Region, signed into the credential scope.
    pub region: &'a str,
}

impl std::fmt::Debug for ProxyCall<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProxyCall")
            .field("uri_endpoint", &self.uri_endpoint)
            .field("uri_path", &self.uri_path)
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"** redacted **")
            .field("region", &self.region)
            .finish()
    }
}

/// Why a proxy call failed, in the terms KMS maps to its own errors.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProxyCallError {
    #[error("the proxy rejected the SigV4 signature (401)")]
    AuthenticationFailed,
    #[error("the proxy denied access (403)")]
    AccessDenied,
    #[error("the proxy does not serve this URI path (404 InvalidUriPathException)")]
    InvalidUriPath,
    #[error("the proxy has no such external key (404 KeyNotFoundException)")]
    KeyNotFound,
    #[error("the proxy throttled the request (429)")]
    Throttled,
    #[error("the proxy is unreachable: {0}")]
    Unreachable(String),
    #[error("the proxy did not answer in time")]
    TimedOut,
    #[error("TLS with the proxy failed: {0}")]
    TlsFailure(String),
    #[error("the proxy answer cannot be interpreted: {0}")]
    InvalidResponse(String),
    #[error("the proxy answered HTTP {0}")]
    ServerError(u16),
    #[error("every external key manager behind the proxy is UNAVAILABLE")]
    NoHealthyKeyManager,
}

/// A valid GetHealthStatus answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthStatus {
    pub fleet_size: u32,
    /// `(id, healthStatus)` per external key manager, in answer order.
    pub key_managers: Vec<(String, String)>,
    pub xks_proxy_vendor: String,
    pub xks_proxy_model: String,
    pub ekm_vendor: String,
}

/// A valid GetKeyMetadata answer (values are not judged here).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyMetadataAnswer {
    pub key_spec: String,
    pub key_usage: Vec<String>,
    pub key_status: String,
}

/// Calls proxies on behalf of the emulated KMS. Cheap to clone.
#[derive(Clone)]
pub struct ProxyCaller {
    client: reqwest::Client,
    /// Lower-cased host -> base URL (scheme, address, port; no path).
    resolve: Arc<RwLock<HashMap<String, String>>>,
}

impl std::fmt::Debug for ProxyCaller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProxyCaller").finish_non_exhaustive()
    }
}

fn normalize_base(base_url: &str) -> String {
    base_url.trim_end_matches('/').to_owned()
}

impl ProxyCaller {
    /// `resolve` maps proxy host names to base URLs such as
    /// `http://127.0.0.1:4566`; `timeout` bounds each whole call (KMS waits
    /// about 250 ms).
    pub fn new(resolve: HashMap<String, String>, timeout: Duration) -> Self {
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap_or_default();
        let resolve = resolve
            .into_iter()
            .map(|(host, base)| (host.to_ascii_lowercase(), normalize_base(&base)))
            .collect();
        Self {
            client,
            resolve: Arc::new(RwLock::new(resolve)),
        }
    }

    pub fn set_resolve(&self, host: &str, base_url: &str) {
        self.resolve
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(host.to_ascii_lowercase(), normalize_base(base_url));
    }

    pub fn remove_resolve(&self, host: &str) {
        self.resolve
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&host.to_ascii_lowercase());
    }

    /// GetHealthStatus; `kms_operation` is what KMS reports it is doing
    /// (`CreateCustomKeyStore`, `ConnectCustomKeyStore`, `UpdateCustomKeyStore`
    /// or `KmsHealthCheck`). All key managers UNAVAILABLE gives
    /// [`ProxyCallError::NoHealthyKeyManager`].
    pub async fn get_health_status(
        &self,
        call: &ProxyCall<'_>,
        kms_operation: &str,
    ) -> Result<HealthStatus, ProxyCallError> {
        let body = json!({
            "requestMetadata": {
                "kmsRequestId": new_request_id(),
                "kmsOperation": kms_operation,
            }
        });
        let answer = self.post(call, "/health", &body).await?;
        parse_health(&answer)
    }

    /// GetKeyMetadata, as KMS sends it for DescribeKey.
    pub async fn get_key_metadata(
        &self,
        call: &ProxyCall<'_>,
        external_key_id: &str,
    ) -> Result<KeyMetadataAnswer, ProxyCallError> {
        self.get_key_metadata_for(call, external_key_id, "DescribeKey")
            .await
    }

    /// GetKeyMetadata with the KMS operation that causes it (`CreateKey` or
    /// `DescribeKey`).
    pub async fn get_key_metadata_for(
        &self,
        call: &ProxyCall<'_>,
        external_key_id: &str,
        kms_operation: &str,
    ) -> Result<KeyMetadataAnswer, ProxyCallError> {
        if !is_external_key_id(external_key_id) {
            // It could not form a valid URI; KMS validates this before calling.
            return Err(ProxyCallError::KeyNotFound);
        }
        let body = json!({
            "requestMetadata": {
                "awsPrincipalArn": "AWS Internal",
                "kmsOperation": kms_operation,
                "kmsRequestId": new_request_id(),
            }
        });
        let answer = self
            .post(call, &format!("/keys/{external_key_id}/metadata"), &body)
            .await?;
        parse_key_metadata(&answer)
    }

    /// Signs and sends one POST; returns the JSON of a 200 answer.
    async fn post(
        &self,
        call: &ProxyCall<'_>,
        operation_path: &str,
        body: &Value,
    ) -> Result<Value, ProxyCallError> {
        let host = call
            .uri_endpoint
            .strip_prefix("https://")
            .filter(|h| !h.is_empty() && !h.contains(['/', '?', '#', '@']))
            .ok_or_else(|| {
                ProxyCallError::Unreachable(format!(
                    "endpoint {:?} is not https://<host>",
                    call.uri_endpoint
                ))
            })?;
        let base = self
            .resolve
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&host.to_ascii_lowercase())
            .cloned()
            .ok_or_else(|| ProxyCallError::Unreachable(format!("{host} does not resolve")))?;
        let path = format!("{}{operation_path}", call.uri_path);
        let body = serde_json::to_vec(body)
            .map_err(|e| ProxyCallError::InvalidResponse(format!("cannot encode request: {e}")))?;
        let signed = sign_request(host, &path, &body, call, SystemTime::now())?;

        let mut request = self
            .client
            .post(format!("{base}{path}"))
            .header(reqwest::header::HOST, host)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body);
        for (name, value) in &signed {
            request = request.header(name.as_str(), value.as_str());
        }
        let response = request.send().await.map_err(transport_error)?;
        let status = response.status().as_u16();
        let bytes = response.bytes().await.map_err(transport_error)?;
        let json: Option<Value> = serde_json::from_slice(&bytes).ok();
        if status == 200 {
            return json
                .ok_or_else(|| ProxyCallError::InvalidResponse("answer is not JSON".into()));
        }
        let error_name = json
            .as_ref()
            .and_then(|j| j.get("errorName"))
            .and_then(Value::as_str)
            .unwrap_or("");
        Err(match (status, error_name) {
            (401, _) => ProxyCallError::AuthenticationFailed,
            (403, _) => ProxyCallError::AccessDenied,
            (404, "InvalidUriPathException") => ProxyCallError::InvalidUriPath,
            (404, "KeyNotFoundException") => ProxyCallError::KeyNotFound,
            (429, _) => ProxyCallError::Throttled,
            (500..=599, _) => ProxyCallError::ServerError(status),
            (_, "") => ProxyCallError::InvalidResponse(format!("HTTP {status} without errorName")),
            (_, name) => ProxyCallError::InvalidResponse(format!("HTTP {status} {name}")),
        })
    }
}

/// SigV4 headers (`x-amz-date`, `authorization`) for a POST to
/// `https://<host><path>`, signing `host` and `x-amz-date` as KMS does.
fn sign_request(
    host: &str,
    path: &str,
    body: &[u8],
    call: &ProxyCall<'_>,
    now: SystemTime,
) -> Result<Vec<(String, String)>, ProxyCallError> {
    let invalid =
        |what: &str| ProxyCallError::Unreachable(format!("cannot sign the request: {what}"));
    let identity: Identity = Credentials::new(
        call.access_key_id,
        call.secret_access_key,
        None,
        None,
        "kms-emulator",
    )
    .into();
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(call.region)
        .name(SIGNING_SERVICE)
        .time(now)
        .settings(SigningSettings::default())
        .build()
        .map_err(|_| invalid("signing parameters"))?
        .into();
    let signable = SignableRequest::new(
        "POST",
        format!("https://{host}{path}"),
        [("host", host)].into_iter(),
        SignableBody::Bytes(body),
    )
    .map_err(|_| invalid("URI"))?;
    let (instructions, _signature) = sign(signable, &params)
        .map_err(|_| invalid("canonical request"))?
        .into_parts();
    Ok(instructions
        .headers()
        .map(|(name, value)| (name.to_owned(), value.to_owned()))
        .collect())
}

/// Classifies a reqwest failure: timeout, TLS, or unreachable.
fn transport_error(error: reqwest::Error) -> ProxyCallError {
    if error.is_timeout() {
        return ProxyCallError::TimedOut;
    }
    let mut chain = String::new();
    let mut source: Option<&dyn std::error::Error> = Some(&error);
    while let Some(e) = source {
        if !chain.is_empty() {
            chain.push_str(": ");
        }
        chain.push_str(&e.to_string());
        source = e.source();
    }
    let lower = chain.to_ascii_lowercase();
    if lower.contains("certificate") || lower.contains("tls") || lower.contains("handshake") {
        return ProxyCallError::TlsFailure(chain);
    }
    ProxyCallError::Unreachable(chain)
}

fn is_external_key_id(id: &str) -> bool {
    (1..=128).contains(&id.len())
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'))
}

/// A UUID-shaped random request id, as KMS's `kmsRequestId` looks.
fn new_request_id() -> String {
    let b: [u8; 16] = rand::random();
    let h = hex::encode(b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

fn str_field(answer: &Value, name: &str) -> Result<String, ProxyCallError> {
    answer
        .get(name)
        .and_then(Value::as_str)
        .map(str::to_owned)
        .ok_or_else(|| {
            ProxyCallError::InvalidResponse(format!("{name} is missing or not a string"))
        })
}

/// Checks a GetHealthStatus answer against the spec's required fields.
fn parse_health(answer: &Value) -> Result<HealthStatus, ProxyCallError> {
    let invalid = |m: &str| ProxyCallError::InvalidResponse(m.to_owned());
    let fleet_size = answer
        .get("xksProxyFleetSize")
        .and_then(Value::as_u64)
        .filter(|n| *n > 0)
        .and_then(|n| u32::try_from(n).ok())
        .ok_or_else(|| invalid("xksProxyFleetSize must be an integer > 0"))?;
    let details = answer
        .get("ekmFleetDetails")
        .and_then(Value::as_array)
        .filter(|d| (1..=10).contains(&d.len()))
        .ok_or_else(|| invalid("ekmFleetDetails must list 1-10 key managers"))?;
    let mut key_managers = Vec::with_capacity(details.len());
    for entry in details {
        let id = str_field(entry, "id")?;
        str_field(entry, "model")?;
        let health = str_field(entry, "healthStatus")?;
        if !matches!(health.as_str(), "ACTIVE" | "DEGRADED" | "UNAVAILABLE") {
            return Err(invalid(
                "healthStatus must be ACTIVE, DEGRADED or UNAVAILABLE",
            ));
        }
        key_managers.push((id, health));
    }
    let status = HealthStatus {
        fleet_size,
        xks_proxy_vendor: str_field(answer, "xksProxyVendor")?,
        xks_proxy_model: str_field(answer, "xksProxyModel")?,
        ekm_vendor: str_field(answer, "ekmVendor")?,
        key_managers,
    };
    if status.key_managers.iter().all(|(_, h)| h == "UNAVAILABLE") {
        return Err(ProxyCallError::NoHealthyKeyManager);
    }
    Ok(status)
}

fn parse_key_metadata(answer: &Value) -> Result<KeyMetadataAnswer, ProxyCallError> {
    let key_usage = answer
        .get("keyUsage")
        .and_then(Value::as_array)
        .and_then(|a| {
            a.iter()
                .map(|u| u.as_str().map(str::to_owned))
                .collect::<Option<Vec<_>>>()
        })
        .ok_or_else(|| {
            ProxyCallError::InvalidResponse("keyUsage must be a list of strings".into())
        })?;
    Ok(KeyMetadataAnswer {
        key_spec: str_field(answer, "keySpec")?,
        key_usage,
        key_status: str_field(answer, "keyStatus")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_answer_validation() {
        let good = json!({
            "xksProxyFleetSize": 2, "xksProxyVendor": "v", "xksProxyModel": "m",
            "ekmVendor": "e",
            "ekmFleetDetails": [{"id": "a", "model": "x", "healthStatus": "DEGRADED"}]
        });
        assert_eq!(parse_health(&good).unwrap().fleet_size, 2);
        let mut zero = good.clone();
        zero["xksProxyFleetSize"] = json!(0);
        assert!(matches!(
            parse_health(&zero),
            Err(ProxyCallError::InvalidResponse(_))
        ));
        let mut none = good.clone();
        none["ekmFleetDetails"] = json!([]);
        assert!(matches!(
            parse_health(&none),
            Err(ProxyCallError::InvalidResponse(_))
        ));
        let mut down = good;
        down["ekmFleetDetails"][0]["healthStatus"] = json!("UNAVAILABLE");
        assert_eq!(
            parse_health(&down),
            Err(ProxyCallError::NoHealthyKeyManager)
        );
    }

    #[test]
    fn request_ids_look_like_uuids() {
        let id = new_request_id();
        assert_eq!(id.len(), 36);
        assert_eq!(id.matches('-').count(), 4);
    }

    #[test]
    fn debug_redacts_the_secret() {
        let call = ProxyCall {
            uri_endpoint: "https://x.example.com",
            uri_path: "/kms/xks/v1",
            access_key_id: "AKID",
            secret_access_key: "s3cr3t-value",
            region: "eu-west-1",
        };
        assert!(!format!("{call:?}").contains("s3cr3t-value"));
    }
}
