//! XKS proxy emulator: a fleet of external key store proxies, each serving the
//! four XKS proxy API operations (GetHealthStatus, GetKeyMetadata, Encrypt,
//! Decrypt; spec `aws/aws-kms-xksproxy-api-spec`) for one host.
//!
//! Proxies are chosen by the request's Host header, so one listener on
//! 127.0.0.1 can stand in for `https://xks-a.example.com`,
//! `https://xks-b.example.com`, ... (clients connect to the listener and send
//! `Host: <proxy host>`, which SigV4 signs).
//!
//! Order of checks for a request: host → faults (latency, dropped connection,
//! fixed error) → URI path (404 `InvalidUriPathException`) → method (405) →
//! SigV4 (401) → JSON and `requestMetadata` (400 `ValidationException`) →
//! operation. A proxy whose key managers are all UNAVAILABLE still answers
//! GetHealthStatus (KMS decides what that means) but fails key operations with
//! 503 `DependencyTimeoutException`.
//!
//! Secret access keys and key material never appear in logs, in `describe()`
//! or in any answer; `Debug` of the config types redacts them.

mod crypto;
mod sigv4;

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant, SystemTime};

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::Request;
use axum::http::{Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

/// SigV4 service name in the credential scope of every XKS proxy request.
pub const SIGNING_SERVICE: &str = "kms-xks-proxy";
/// Largest request body read (spec maxima: 4300 bytes of data and 8192 of AAD,
/// base64-encoded, plus metadata ARNs up to 2048 characters).
const MAX_BODY_BYTES: usize = 256 * 1024;
const REDACTED: &str = "** redacted **";

fn lock_read<T>(lock: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(PoisonError::into_inner)
}

fn lock_write<T>(lock: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(PoisonError::into_inner)
}

// ---------------------------------------------------------------------------
// Configuration
// ---------------------------------------------------------------------------

/// One emulated XKS proxy.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProxyConfig {
    /// DNS name, e.g. `xks-primary.example.com`; a store's `XksProxyUriEndpoint`
    /// is `https://<host>`.
    pub host: String,
    /// e.g. `/example/kms/xks/v1`.
    pub uri_path: String,
    /// Accepted SigV4 credentials; several at once for rotation.
    #[serde(default)]
    pub credentials: Vec<ProxyCredentialConfig>,
    /// External key managers behind the proxy (1-10); default one ACTIVE.
    #[serde(default = "default_key_managers")]
    pub key_managers: Vec<KeyManagerConfig>,
    #[serde(default)]
    pub keys: Vec<ExternalKeyConfig>,
    #[serde(default)]
    pub faults: ProxyFaults,
    /// `xksProxyFleetSize` reported by GetHealthStatus.
    #[serde(default = "default_fleet_size")]
    pub fleet_size: u32,
    #[serde(default = "default_proxy_vendor")]
    pub xks_proxy_vendor: String,
    #[serde(default = "default_proxy_model")]
    pub xks_proxy_model: String,
    #[serde(default = "default_ekm_vendor")]
    pub ekm_vendor: String,
}

fn default_key_managers() -> Vec<KeyManagerConfig> {
    vec![KeyManagerConfig::new("ekm-1")]
}
fn default_fleet_size() -> u32 {
    1
}
fn default_proxy_vendor() -> String {
    "xks-operator".into()
}
fn default_proxy_model() -> String {
    "XKS proxy emulator 1.0".into()
}
fn default_ekm_vendor() -> String {
    "Emulated EKM".into()
}
fn default_key_manager_model() -> String {
    "Emulated HSM 1.0".into()
}

impl ProxyConfig {
    /// A proxy with defaults: no credentials, one ACTIVE key manager, no keys.
    pub fn new(host: impl Into<String>, uri_path: impl Into<String>) -> Self {
        Self {
            host: host.into(),
            uri_path: uri_path.into(),
            credentials: Vec::new(),
            key_managers: default_key_managers(),
            keys: Vec::new(),
            faults: ProxyFaults::default(),
            fleet_size: default_fleet_size(),
            xks_proxy_vendor: default_proxy_vendor(),
            xks_proxy_model: default_proxy_model(),
            ekm_vendor: default_ekm_vendor(),
        }
    }

    pub fn with_credential(mut self, access_key_id: &str, secret_access_key: &str) -> Self {
        self.credentials
            .push(ProxyCredentialConfig::new(access_key_id, secret_access_key));
        self
    }

    pub fn with_key(mut self, key: ExternalKeyConfig) -> Self {
        self.keys.push(key);
        self
    }
}

/// A SigV4 credential the proxy accepts. `Debug` redacts the secret.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProxyCredentialConfig {
    pub access_key_id: String,
    pub secret_access_key: String,
}

impl ProxyCredentialConfig {
    pub fn new(access_key_id: &str, secret_access_key: &str) -> Self {
        Self {
            access_key_id: access_key_id.into(),
            secret_access_key: secret_access_key.into(),
        }
    }
}

impl fmt::Debug for ProxyCredentialConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProxyCredentialConfig")
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &REDACTED)
            .finish()
    }
}

/// `ekmFleetDetails[].healthStatus`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum KeyManagerHealth {
    #[default]
    Active,
    Degraded,
    Unavailable,
}

impl KeyManagerHealth {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "ACTIVE",
            Self::Degraded => "DEGRADED",
            Self::Unavailable => "UNAVAILABLE",
        }
    }
}

impl std::str::FromStr for KeyManagerHealth {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "ACTIVE" => Ok(Self::Active),
            "DEGRADED" => Ok(Self::Degraded),
            "UNAVAILABLE" => Ok(Self::Unavailable),
            other => Err(format!(
                "unknown key manager health {other:?} (ACTIVE|DEGRADED|UNAVAILABLE)"
            )),
        }
    }
}

/// One external key manager (an HSM in a cluster).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct KeyManagerConfig {
    pub id: String,
    #[serde(default = "default_key_manager_model")]
    pub model: String,
    #[serde(default)]
    pub health: KeyManagerHealth,
}

impl KeyManagerConfig {
    pub fn new(id: &str) -> Self {
        Self {
            id: id.into(),
            model: default_key_manager_model(),
            health: KeyManagerHealth::Active,
        }
    }
}

/// A key held by the external key manager. `Debug` redacts the material.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExternalKeyConfig {
    /// The `externalKeyId`: 1-128 of `A-Za-z0-9-._`.
    pub id: String,
    #[serde(default = "default_key_spec")]
    pub key_spec: String,
    /// `ENABLED` or `DISABLED` (other strings are served as-is, to test KMS).
    #[serde(default = "default_key_status")]
    pub key_status: String,
    #[serde(default = "default_key_usage")]
    pub key_usage: Vec<String>,
    /// Base64 of 32 bytes. Generated when absent; when a key with the same id
    /// already exists its material is kept, so updates never strand ciphertext.
    /// Give two proxies the same material to emulate a shared or backed-up EKM.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub material: Option<String>,
}

fn default_key_spec() -> String {
    "AES_256".into()
}
fn default_key_status() -> String {
    "ENABLED".into()
}
fn default_key_usage() -> Vec<String> {
    vec!["ENCRYPT".into(), "DECRYPT".into()]
}

impl ExternalKeyConfig {
    /// An ENABLED AES_256 ENCRYPT/DECRYPT key with generated material.
    pub fn new(id: &str) -> Self {
        Self {
            id: id.into(),
            key_spec: default_key_spec(),
            key_status: default_key_status(),
            key_usage: default_key_usage(),
            material: None,
        }
    }
}

impl fmt::Debug for ExternalKeyConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ExternalKeyConfig")
            .field("id", &self.id)
            .field("key_spec", &self.key_spec)
            .field("key_status", &self.key_status)
            .field("key_usage", &self.key_usage)
            .field("material", &self.material.as_ref().map(|_| REDACTED))
            .finish()
    }
}

/// Injected failures, all off by default. Applied before routing and
/// authentication, in this order: latency, dropped connection, fixed error.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ProxyFaults {
    /// Added before answering (use with a short client timeout to get a timeout).
    pub latency_ms: u64,
    /// Answer every request with this error.
    pub fail_with: Option<FailWith>,
    /// Close the connection without an answer. The response head is never
    /// sent: the body fails at once, which makes hyper abort the connection, so
    /// a client sees "connection closed before message completed".
    pub drop_connections: bool,
    /// After authentication, answer 200 with a body missing required fields
    /// (e.g. GetHealthStatus with `xksProxyFleetSize: 0`, no `ekmFleetDetails`).
    pub malformed_responses: bool,
}

/// A fixed error answer: `{"errorName", "errorMessage"}` with `status`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FailWith {
    pub status: u16,
    pub error_name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_message: Option<String>,
}

// ---------------------------------------------------------------------------
// Validation
// ---------------------------------------------------------------------------

fn is_host_name(host: &str) -> bool {
    !host.is_empty()
        && host.len() <= 253
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-')
}

fn is_external_key_id(id: &str) -> bool {
    (1..=128).contains(&id.len())
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'))
}

fn decode_material(material: &str) -> Result<[u8; crypto::KEY_LEN], String> {
    B64.decode(material)
        .ok()
        .and_then(|bytes| <[u8; crypto::KEY_LEN]>::try_from(bytes.as_slice()).ok())
        .ok_or_else(|| "key material must be base64 of exactly 32 bytes".to_string())
}

fn validate_credential(cred: &ProxyCredentialConfig) -> Result<(), String> {
    if cred.access_key_id.is_empty() || cred.access_key_id.contains(['/', ',', ' ']) {
        return Err("access key id must be non-empty, without '/', ',' or spaces".into());
    }
    if cred.secret_access_key.is_empty() {
        return Err(format!(
            "credential {} has an empty secret access key",
            cred.access_key_id
        ));
    }
    Ok(())
}

fn validate_faults(faults: &ProxyFaults) -> Result<(), String> {
    if let Some(fail) = &faults.fail_with {
        if !(400..=599).contains(&fail.status) {
            return Err(format!("failWith.status {} must be 400-599", fail.status));
        }
        if fail.error_name.is_empty() {
            return Err("failWith.errorName must not be empty".into());
        }
    }
    Ok(())
}

/// Checks a key and fills in its material (kept from `previous`, else random).
fn normalize_key(
    key: &mut ExternalKeyConfig,
    previous: Option<&ExternalKeyConfig>,
) -> Result<(), String> {
    if !is_external_key_id(&key.id) {
        return Err(format!(
            "external key id {:?} must be 1-128 of A-Za-z0-9-._",
            key.id
        ));
    }
    match &key.material {
        Some(material) => {
            decode_material(material).map_err(|e| format!("key {}: {e}", key.id))?;
        }
        None => {
            key.material = Some(match previous.and_then(|p| p.material.clone()) {
                Some(kept) => kept,
                None => B64.encode(rand::random::<[u8; crypto::KEY_LEN]>()),
            });
        }
    }
    Ok(())
}

/// Validates a whole proxy config and fills in key material.
fn normalize_config(cfg: &mut ProxyConfig, previous: Option<&ProxyConfig>) -> Result<(), String> {
    if !is_host_name(&cfg.host) {
        return Err(format!(
            "proxy host {:?} must be a DNS name (A-Za-z0-9.-, no scheme, port or path)",
            cfg.host
        ));
    }
    if !cfg.uri_path.starts_with('/') || cfg.uri_path.ends_with('/') || cfg.uri_path.len() < 2 {
        return Err(format!(
            "proxy {}: uriPath {:?} must start with '/' and not end with '/'",
            cfg.host, cfg.uri_path
        ));
    }
    for (i, cred) in cfg.credentials.iter().enumerate() {
        validate_credential(cred).map_err(|e| format!("proxy {}: {e}", cfg.host))?;
        // The same id may carry several secrets (rotation under one id),
        // but listing the very same credential twice is a mistake.
        if cfg.credentials[..i].iter().any(|c| {
            c.access_key_id == cred.access_key_id && c.secret_access_key == cred.secret_access_key
        }) {
            return Err(format!(
                "proxy {}: duplicate credential for access key id {}",
                cfg.host, cred.access_key_id
            ));
        }
    }
    if cfg.key_managers.is_empty() || cfg.key_managers.len() > 10 {
        return Err(format!(
            "proxy {}: needs 1-10 key managers (ekmFleetDetails)",
            cfg.host
        ));
    }
    for (i, km) in cfg.key_managers.iter().enumerate() {
        if km.id.is_empty() || cfg.key_managers[..i].iter().any(|k| k.id == km.id) {
            return Err(format!(
                "proxy {}: key manager ids must be non-empty and unique",
                cfg.host
            ));
        }
    }
    if cfg.fleet_size == 0 {
        return Err(format!(
            "proxy {}: fleetSize must be > 0 (use faults.malformedResponses for a bad answer)",
            cfg.host
        ));
    }
    validate_faults(&cfg.faults).map_err(|e| format!("proxy {}: {e}", cfg.host))?;
    for i in 0..cfg.keys.len() {
        if cfg.keys[..i].iter().any(|k| k.id == cfg.keys[i].id) {
            return Err(format!(
                "proxy {}: duplicate external key id {}",
                cfg.host, cfg.keys[i].id
            ));
        }
        let previous_key = previous.and_then(|p| p.keys.iter().find(|k| k.id == cfg.keys[i].id));
        normalize_key(&mut cfg.keys[i], previous_key)?;
    }
    Ok(())
}

/// Lower-cased host without `:port`, the fleet's lookup key.
fn host_key(host: &str) -> String {
    let host = host.trim();
    let without_port = match host.rsplit_once(':') {
        Some((name, port)) if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    };
    without_port.trim_end_matches('.').to_ascii_lowercase()
}

// ---------------------------------------------------------------------------
// The fleet
// ---------------------------------------------------------------------------

/// One proxy's state. Immutable once shared: changes replace the `Arc`, so a
/// request in flight keeps a consistent view; the counter survives updates.
#[derive(Clone)]
struct ProxyState {
    cfg: ProxyConfig,
    requests: Arc<AtomicU64>,
}

/// A set of emulated XKS proxies keyed by host. Cheap to clone (shared state).
#[derive(Clone, Default)]
pub struct ProxyFleet {
    proxies: Arc<RwLock<BTreeMap<String, Arc<ProxyState>>>>,
}

impl fmt::Debug for ProxyFleet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProxyFleet")
            .field("hosts", &self.hosts())
            .finish()
    }
}

impl ProxyFleet {
    /// Builds a fleet; fails on an invalid config or a host served twice.
    pub fn new(configs: Vec<ProxyConfig>) -> Result<Self, String> {
        let mut proxies = BTreeMap::new();
        for mut cfg in configs {
            normalize_config(&mut cfg, None)?;
            let key = host_key(&cfg.host);
            if proxies.contains_key(&key) {
                return Err(format!("two proxies serve host {}", cfg.host));
            }
            proxies.insert(
                key,
                Arc::new(ProxyState {
                    cfg,
                    requests: Arc::default(),
                }),
            );
        }
        Ok(Self {
            proxies: Arc::new(RwLock::new(proxies)),
        })
    }

    /// Hosts served, lower-cased and sorted.
    pub fn hosts(&self) -> Vec<String> {
        lock_read(&self.proxies).keys().cloned().collect()
    }

    /// Whether a proxy serves `host` (`:port` ignored, case-insensitive).
    pub fn serves_host(&self, host: &str) -> bool {
        lock_read(&self.proxies).contains_key(&host_key(host))
    }

    fn lookup(&self, host: &str) -> Option<Arc<ProxyState>> {
        lock_read(&self.proxies).get(&host_key(host)).cloned()
    }

    /// Adds or replaces a proxy. Keys given without material keep the material
    /// they had; the request counter is kept. An invalid config is logged and
    /// ignored (see [`ProxyFleet::try_upsert`] to get the error).
    pub fn upsert(&self, cfg: ProxyConfig) {
        if let Err(error) = self.try_upsert(cfg) {
            tracing::warn!(%error, "XKS proxy emulator: invalid proxy config ignored");
        }
    }

    /// [`ProxyFleet::upsert`] that reports an invalid config.
    pub fn try_upsert(&self, mut cfg: ProxyConfig) -> Result<(), String> {
        let key = host_key(&cfg.host);
        let mut proxies = lock_write(&self.proxies);
        let previous = proxies.get(&key);
        normalize_config(&mut cfg, previous.map(|p| &p.cfg))?;
        let requests = previous.map(|p| p.requests.clone()).unwrap_or_default();
        proxies.insert(key, Arc::new(ProxyState { cfg, requests }));
        Ok(())
    }

    /// Removes a proxy; false when no proxy served `host`.
    pub fn remove(&self, host: &str) -> bool {
        lock_write(&self.proxies).remove(&host_key(host)).is_some()
    }

    /// Applies `change` to a copy of the proxy's config and swaps it in.
    fn modify(
        &self,
        host: &str,
        change: impl FnOnce(&mut ProxyConfig) -> Result<(), String>,
    ) -> Result<(), String> {
        let key = host_key(host);
        let mut proxies = lock_write(&self.proxies);
        let current = proxies
            .get(&key)
            .ok_or_else(|| format!("no emulated XKS proxy serves host {host}"))?;
        let mut cfg = current.cfg.clone();
        change(&mut cfg)?;
        let next = ProxyState {
            cfg,
            requests: current.requests.clone(),
        };
        proxies.insert(key, Arc::new(next));
        Ok(())
    }

    pub fn set_key_manager_health(
        &self,
        host: &str,
        key_manager_id: &str,
        health: KeyManagerHealth,
    ) -> Result<(), String> {
        self.modify(host, |cfg| {
            let km = cfg
                .key_managers
                .iter_mut()
                .find(|k| k.id == key_manager_id)
                .ok_or_else(|| format!("proxy {host} has no key manager {key_manager_id}"))?;
            km.health = health;
            Ok(())
        })
    }

    /// Adds a credential, or replaces the secret of the same access key id
    /// (a rotated secret under an unchanged id).
    pub fn add_credential(&self, host: &str, cred: ProxyCredentialConfig) -> Result<(), String> {
        validate_credential(&cred)?;
        self.modify(host, |cfg| {
            match cfg
                .credentials
                .iter_mut()
                .find(|c| c.access_key_id == cred.access_key_id)
            {
                Some(existing) => *existing = cred,
                None => cfg.credentials.push(cred),
            }
            Ok(())
        })
    }

    pub fn remove_credential(&self, host: &str, access_key_id: &str) -> Result<(), String> {
        self.modify(host, |cfg| {
            let before = cfg.credentials.len();
            cfg.credentials.retain(|c| c.access_key_id != access_key_id);
            if cfg.credentials.len() == before {
                return Err(format!("proxy {host} has no credential {access_key_id}"));
            }
            Ok(())
        })
    }

    pub fn set_faults(&self, host: &str, faults: ProxyFaults) -> Result<(), String> {
        validate_faults(&faults)?;
        self.modify(host, |cfg| {
            cfg.faults = faults;
            Ok(())
        })
    }

    /// Adds or replaces an external key; without material an existing key
    /// keeps its own (so e.g. disabling a key keeps its ciphertext readable).
    pub fn upsert_key(&self, host: &str, mut key: ExternalKeyConfig) -> Result<(), String> {
        self.modify(host, |cfg| {
            let slot = cfg.keys.iter().position(|k| k.id == key.id);
            normalize_key(&mut key, slot.map(|i| &cfg.keys[i]))?;
            match slot {
                Some(i) => cfg.keys[i] = key,
                None => cfg.keys.push(key),
            }
            Ok(())
        })
    }

    /// Removes an external key.
    pub fn remove_key(&self, host: &str, external_key_id: &str) -> Result<(), String> {
        self.modify(host, |cfg| {
            let before = cfg.keys.len();
            cfg.keys.retain(|k| k.id != external_key_id);
            if cfg.keys.len() == before {
                return Err(format!("proxy {host} has no key {external_key_id}"));
            }
            Ok(())
        })
    }

    /// State for `GET /_emulator/proxies`: access key ids but never secrets,
    /// key metadata but never material.
    pub fn describe(&self) -> Value {
        let proxies = lock_read(&self.proxies);
        let list: Vec<Value> = proxies
            .values()
            .map(|p| {
                let cfg = &p.cfg;
                json!({
                    "host": cfg.host,
                    "uriPath": cfg.uri_path,
                    "credentials": cfg.credentials.iter()
                        .map(|c| json!({"accessKeyId": c.access_key_id}))
                        .collect::<Vec<_>>(),
                    "keyManagers": cfg.key_managers,
                    "keys": cfg.keys.iter().map(|k| json!({
                        "id": k.id,
                        "keySpec": k.key_spec,
                        "keyStatus": k.key_status,
                        "keyUsage": k.key_usage,
                    })).collect::<Vec<_>>(),
                    "faults": cfg.faults,
                    "fleetSize": cfg.fleet_size,
                    "xksProxyVendor": cfg.xks_proxy_vendor,
                    "xksProxyModel": cfg.xks_proxy_model,
                    "ekmVendor": cfg.ekm_vendor,
                    "requestCount": p.requests.load(Ordering::Relaxed),
                })
            })
            .collect();
        json!({ "proxies": list })
    }

    /// Requests received by the proxy for `host` (0 for an unknown host).
    pub fn request_count(&self, host: &str) -> u64 {
        self.lookup(host)
            .map(|p| p.requests.load(Ordering::Relaxed))
            .unwrap_or(0)
    }

    /// A router sending every request to [`ProxyFleet::handle`], for a
    /// dedicated listener.
    pub fn router(&self) -> axum::Router {
        let fleet = self.clone();
        axum::Router::new().fallback(move |req: Request| {
            let fleet = fleet.clone();
            async move { fleet.handle(req).await }
        })
    }

    /// Serves one request for whichever proxy its Host header names.
    pub async fn handle(&self, req: Request) -> Response {
        let Some(raw_host) = request_host(&req) else {
            return XksError::validation("request has no Host header").into_response();
        };
        let Some(proxy) = self.lookup(&raw_host) else {
            tracing::debug!(host = %raw_host, "XKS proxy emulator: no proxy serves this host");
            return XksError::new(
                StatusCode::NOT_FOUND,
                "InvalidUriPathException",
                "no XKS proxy serves this host",
            )
            .into_response();
        };
        proxy.requests.fetch_add(1, Ordering::Relaxed);
        let started = Instant::now();
        let mut log = RequestLog::default();
        let answer = proxy.serve(req, &mut log).await;
        let (status, error_name, response) = match answer {
            Answer::Ok(body) => (200, None, (StatusCode::OK, Json(body)).into_response()),
            Answer::Error(e) => (e.status.as_u16(), Some(e.name.clone()), e.into_response()),
            Answer::Drop => (
                0,
                Some(Cow::Borrowed("DroppedConnection")),
                dropped_connection(),
            ),
        };
        tracing::info!(
            host = %proxy.cfg.host,
            operation = log.operation,
            kms_request_id = log.kms_request_id.as_deref().unwrap_or("-"),
            kms_operation = log.kms_operation.as_deref().unwrap_or("-"),
            access_key_id = log.access_key_id.as_deref().unwrap_or("-"),
            status,
            error_name = error_name.as_deref().unwrap_or("-"),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "XKS proxy request"
        );
        response
    }
}

/// The Host header (HTTP/1.1) or the URI authority (HTTP/2), as received.
fn request_host(req: &Request) -> Option<String> {
    req.headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_owned)
        .or_else(|| req.uri().authority().map(|a| a.as_str().to_owned()))
}

/// A response whose body fails before the head is flushed, so hyper aborts
/// the connection and the client gets no answer.
fn dropped_connection() -> Response {
    let failing = futures::stream::once(async {
        Err::<Bytes, std::io::Error>(std::io::Error::new(
            std::io::ErrorKind::ConnectionAborted,
            "emulated dropped connection",
        ))
    });
    Response::new(Body::from_stream(failing))
}

// ---------------------------------------------------------------------------
// Request handling
// ---------------------------------------------------------------------------

#[derive(Default)]
struct RequestLog {
    operation: &'static str,
    kms_request_id: Option<String>,
    kms_operation: Option<String>,
    access_key_id: Option<String>,
}

enum Answer {
    Ok(Value),
    Error(XksError),
    Drop,
}

impl From<XksError> for Answer {
    fn from(e: XksError) -> Self {
        Answer::Error(e)
    }
}

/// An XKS API error answer.
#[derive(Debug)]
struct XksError {
    status: StatusCode,
    name: Cow<'static, str>,
    message: Cow<'static, str>,
}

impl XksError {
    fn new(
        status: StatusCode,
        name: impl Into<Cow<'static, str>>,
        message: impl Into<Cow<'static, str>>,
    ) -> Self {
        Self {
            status,
            name: name.into(),
            message: message.into(),
        }
    }
    fn validation(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "ValidationException", message)
    }
    fn invalid_ciphertext() -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "InvalidCiphertextException",
            "The ciphertext, initialization vector, additional authenticated data or authentication tag is corrupted, missing, or otherwise invalid.",
        )
    }
    fn internal(message: &'static str) -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "InternalException",
            message,
        )
    }
}

impl IntoResponse for XksError {
    fn into_response(self) -> Response {
        (
            self.status,
            Json(json!({"errorName": self.name, "errorMessage": self.message})),
        )
            .into_response()
    }
}

#[derive(Clone, Copy)]
enum OperationKind {
    Metadata,
    Encrypt,
    Decrypt,
}

enum Operation<'a> {
    Health,
    Key(OperationKind, &'a str),
}

impl Operation<'_> {
    fn name(&self) -> &'static str {
        match self {
            Operation::Health => "GetHealthStatus",
            Operation::Key(OperationKind::Metadata, _) => "GetKeyMetadata",
            Operation::Key(OperationKind::Encrypt, _) => "Encrypt",
            Operation::Key(OperationKind::Decrypt, _) => "Decrypt",
        }
    }
}

/// Maps a request path under this proxy's `uriPath` to an operation.
fn route<'p>(uri_path: &str, path: &'p str) -> Option<Operation<'p>> {
    let rest = path.strip_prefix(uri_path)?.strip_prefix('/')?;
    if rest == "health" {
        return Some(Operation::Health);
    }
    let (key_id, op) = rest.strip_prefix("keys/")?.split_once('/')?;
    if key_id.is_empty() {
        return None;
    }
    let kind = match op {
        "metadata" => OperationKind::Metadata,
        "encrypt" => OperationKind::Encrypt,
        "decrypt" => OperationKind::Decrypt,
        _ => return None,
    };
    Some(Operation::Key(kind, key_id))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct EncryptRequest {
    plaintext: Option<String>,
    encryption_algorithm: Option<String>,
    additional_authenticated_data: Option<String>,
    ciphertext_data_integrity_value_algorithm: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct DecryptRequest {
    ciphertext: Option<String>,
    ciphertext_metadata: Option<String>,
    encryption_algorithm: Option<String>,
    additional_authenticated_data: Option<String>,
    initialization_vector: Option<String>,
    authentication_tag: Option<String>,
}

fn required_b64(field: Option<String>, name: &'static str) -> Result<Vec<u8>, XksError> {
    let text = field.ok_or_else(|| XksError::validation(format!("{name} is required")))?;
    B64.decode(text)
        .map_err(|_| XksError::validation(format!("{name} is not valid base64")))
}

fn optional_b64(field: Option<String>, name: &'static str) -> Result<Vec<u8>, XksError> {
    match field {
        None => Ok(Vec::new()),
        some => required_b64(some, name),
    }
}

fn check_algorithm(algorithm: Option<&str>) -> Result<(), XksError> {
    match algorithm {
        Some("AES_GCM") => Ok(()),
        Some(_) => Err(XksError::validation("encryptionAlgorithm must be AES_GCM")),
        None => Err(XksError::validation("encryptionAlgorithm is required")),
    }
}

impl ProxyState {
    async fn serve(&self, req: Request, log: &mut RequestLog) -> Answer {
        let cfg = &self.cfg;
        if cfg.faults.latency_ms > 0 {
            tokio::time::sleep(Duration::from_millis(cfg.faults.latency_ms)).await;
        }
        if cfg.faults.drop_connections {
            return Answer::Drop;
        }
        if let Some(fail) = &cfg.faults.fail_with {
            let status =
                StatusCode::from_u16(fail.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            let message = fail
                .error_message
                .clone()
                .unwrap_or_else(|| "emulated failure".into());
            return XksError::new(status, fail.error_name.clone(), message).into();
        }

        let (parts, body) = req.into_parts();
        let Some(operation) = route(&cfg.uri_path, parts.uri.path()) else {
            return XksError::new(
                StatusCode::NOT_FOUND,
                "InvalidUriPathException",
                "The URI path is not valid for this XKS proxy.",
            )
            .into();
        };
        log.operation = operation.name();
        if parts.method != Method::POST {
            return XksError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "ValidationException",
                "XKS proxy API operations accept POST only.",
            )
            .into();
        }
        let Ok(body) = axum::body::to_bytes(body, MAX_BODY_BYTES).await else {
            return XksError::validation("request body is unreadable or too large").into();
        };

        let path_and_query = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());
        match sigv4::verify(
            parts.method.as_str(),
            path_and_query,
            &parts.headers,
            &body,
            &cfg.credentials,
            SystemTime::now(),
        ) {
            Ok(access_key_id) => log.access_key_id = Some(access_key_id.to_owned()),
            Err(reason) => {
                tracing::debug!(host = %cfg.host, reason, "XKS proxy emulator: authentication failed");
                return XksError::new(
                    StatusCode::UNAUTHORIZED,
                    "AuthenticationFailedException",
                    "The request signature could not be verified.",
                )
                .into();
            }
        }

        let request: Value = match serde_json::from_slice(&body) {
            Ok(value @ Value::Object(_)) => value,
            _ => return XksError::validation("request body must be a JSON object").into(),
        };
        let metadata = request.get("requestMetadata").and_then(Value::as_object);
        let field = |name: &str| {
            metadata
                .and_then(|m| m.get(name))
                .and_then(Value::as_str)
                .map(str::to_owned)
        };
        log.kms_request_id = field("kmsRequestId");
        log.kms_operation = field("kmsOperation");
        if metadata.is_none() || log.kms_request_id.is_none() || log.kms_operation.is_none() {
            return XksError::validation(
                "requestMetadata with kmsRequestId and kmsOperation is required",
            )
            .into();
        }

        if cfg.faults.malformed_responses {
            return Answer::Ok(match operation {
                Operation::Health => {
                    json!({"xksProxyFleetSize": 0, "xksProxyVendor": cfg.xks_proxy_vendor})
                }
                Operation::Key(..) => json!({}),
            });
        }

        match operation {
            Operation::Health => Answer::Ok(self.health()),
            Operation::Key(kind, key_id) => match self.key_operation(kind, key_id, request) {
                Ok(value) => Answer::Ok(value),
                Err(e) => Answer::Error(e),
            },
        }
    }

    fn health(&self) -> Value {
        let cfg = &self.cfg;
        json!({
            "xksProxyFleetSize": cfg.fleet_size,
            "xksProxyVendor": cfg.xks_proxy_vendor,
            "xksProxyModel": cfg.xks_proxy_model,
            "ekmVendor": cfg.ekm_vendor,
            "ekmFleetDetails": cfg.key_managers.iter().map(|k| json!({
                "id": k.id,
                "model": k.model,
                "healthStatus": k.health.as_str(),
            })).collect::<Vec<_>>(),
        })
    }

    fn key_operation(
        &self,
        kind: OperationKind,
        key_id: &str,
        request: Value,
    ) -> Result<Value, XksError> {
        let cfg = &self.cfg;
        let key = cfg.keys.iter().find(|k| k.id == key_id).ok_or_else(|| {
            XksError::new(
                StatusCode::NOT_FOUND,
                "KeyNotFoundException",
                "The external key is not found.",
            )
        })?;
        // The keys live in the key managers: none reachable, no key operation.
        if cfg
            .key_managers
            .iter()
            .all(|k| k.health == KeyManagerHealth::Unavailable)
        {
            return Err(XksError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "DependencyTimeoutException",
                "No external key manager is available.",
            ));
        }
        if let OperationKind::Metadata = kind {
            return Ok(json!({
                "keySpec": key.key_spec,
                "keyUsage": key.key_usage,
                "keyStatus": key.key_status,
            }));
        }
        if key.key_status != "ENABLED" {
            return Err(XksError::new(
                StatusCode::BAD_REQUEST,
                "InvalidStateException",
                "The external key is not enabled.",
            ));
        }
        let usage = match kind {
            OperationKind::Encrypt => "ENCRYPT",
            _ => "DECRYPT",
        };
        if key.key_spec != "AES_256" || !key.key_usage.iter().any(|u| u == usage) {
            return Err(XksError::new(
                StatusCode::BAD_REQUEST,
                "InvalidKeyUsageException",
                "The external key does not support this operation.",
            ));
        }
        let material = key
            .material
            .as_deref()
            .and_then(|m| decode_material(m).ok())
            .ok_or_else(|| XksError::internal("external key has no usable material"))?;
        match kind {
            OperationKind::Encrypt => {
                let req: EncryptRequest = serde_json::from_value(request)
                    .map_err(|_| XksError::validation("malformed Encrypt request"))?;
                encrypt(&material, req)
            }
            _ => {
                let req: DecryptRequest = serde_json::from_value(request)
                    .map_err(|_| XksError::validation("malformed Decrypt request"))?;
                decrypt(&material, req)
            }
        }
    }
}

fn encrypt(key: &[u8; crypto::KEY_LEN], req: EncryptRequest) -> Result<Value, XksError> {
    check_algorithm(req.encryption_algorithm.as_deref())?;
    let plaintext = required_b64(req.plaintext, "plaintext")?;
    let aad = optional_b64(
        req.additional_authenticated_data,
        "additionalAuthenticatedData",
    )?;
    if aad.len() > crypto::MAX_AAD_LEN {
        return Err(XksError::validation(
            "additionalAuthenticatedData is too long",
        ));
    }
    let want_cdiv = match req.ciphertext_data_integrity_value_algorithm.as_deref() {
        None => false,
        Some("SHA_256") => true,
        Some(_) => {
            return Err(XksError::validation(
                "ciphertextDataIntegrityValueAlgorithm must be SHA_256",
            ));
        }
    };
    let gcm_aad = crypto::gcm_aad(&aad, &[])
        .ok_or_else(|| XksError::validation("additionalAuthenticatedData is too long"))?;
    let sealed = crypto::seal(key, &plaintext, &gcm_aad)
        .ok_or_else(|| XksError::internal("encryption failed"))?;
    let mut answer = json!({
        "ciphertext": B64.encode(&sealed.ciphertext),
        "initializationVector": B64.encode(sealed.iv),
        "authenticationTag": B64.encode(sealed.tag),
    });
    if want_cdiv {
        // Spec Appendix C: SHA-256 over aad || metadata || iv || ciphertext || tag.
        let mut hash = Sha256::new();
        hash.update(&aad);
        hash.update(sealed.iv);
        hash.update(&sealed.ciphertext);
        hash.update(sealed.tag);
        answer["ciphertextDataIntegrityValue"] = Value::String(B64.encode(hash.finalize()));
    }
    Ok(answer)
}

fn decrypt(key: &[u8; crypto::KEY_LEN], req: DecryptRequest) -> Result<Value, XksError> {
    check_algorithm(req.encryption_algorithm.as_deref())?;
    let ciphertext = required_b64(req.ciphertext, "ciphertext")?;
    let iv = required_b64(req.initialization_vector, "initializationVector")?;
    let tag = required_b64(req.authentication_tag, "authenticationTag")?;
    let aad = optional_b64(
        req.additional_authenticated_data,
        "additionalAuthenticatedData",
    )?;
    let metadata = optional_b64(req.ciphertext_metadata, "ciphertextMetadata")?;
    let gcm_aad = crypto::gcm_aad(&aad, &metadata).ok_or_else(XksError::invalid_ciphertext)?;
    let plaintext = crypto::open(key, &iv, &ciphertext, &tag, &gcm_aad)
        .ok_or_else(XksError::invalid_ciphertext)?;
    Ok(json!({ "plaintext": B64.encode(plaintext) }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_only_under_the_uri_path() {
        let p = "/example/kms/xks/v1";
        assert!(matches!(
            route(p, "/example/kms/xks/v1/health"),
            Some(Operation::Health)
        ));
        assert!(matches!(
            route(p, "/example/kms/xks/v1/keys/k1/decrypt"),
            Some(Operation::Key(OperationKind::Decrypt, "k1"))
        ));
        assert!(route(p, "/other/kms/xks/v1/health").is_none());
        assert!(route(p, "/example/kms/xks/v1health").is_none());
        assert!(route(p, "/example/kms/xks/v1/keys//metadata").is_none());
        assert!(route(p, "/example/kms/xks/v1/keys/k1/sign").is_none());
    }

    #[test]
    fn host_key_ignores_port_and_case() {
        assert_eq!(host_key("XKS.Example.com:8443"), "xks.example.com");
        assert_eq!(host_key("xks.example.com"), "xks.example.com");
    }

    #[test]
    fn debug_redacts_secrets_and_material() {
        let mut key = ExternalKeyConfig::new("k1");
        key.material = Some(B64.encode([9u8; 32]));
        let cfg = ProxyConfig::new("xks.example.com", "/kms/xks/v1")
            .with_credential("AKIDEXAMPLE", "very-secret-value")
            .with_key(key.clone());
        let text = format!("{cfg:?}");
        assert!(!text.contains("very-secret-value"));
        assert!(!text.contains(key.material.as_deref().unwrap()));
    }

    #[test]
    fn new_rejects_bad_configs() {
        let ok = ProxyConfig::new("xks.example.com", "/kms/xks/v1");
        assert!(ProxyFleet::new(vec![ok.clone()]).is_ok());
        let mut upper = ok.clone();
        upper.host = "XKS.example.com".into();
        assert!(ProxyFleet::new(vec![ok.clone(), upper]).is_err());
        let mut bad_key = ExternalKeyConfig::new("k1");
        bad_key.material = Some(B64.encode([1u8; 16]));
        assert!(ProxyFleet::new(vec![ok.clone().with_key(bad_key)]).is_err());
        assert!(ProxyFleet::new(vec![ProxyConfig::new("https://x", "/kms/xks/v1")]).is_err());
        let mut no_ekm = ok;
        no_ekm.key_managers.clear();
        assert!(ProxyFleet::new(vec![no_ekm]).is_err());
    }
}
