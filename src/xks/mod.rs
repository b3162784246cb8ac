//! The `ProxyProbe` port: the operator's own, SigV4-signed calls to an XKS
//! proxy, made with the NEW configuration before anything disruptive.
//! `probe` holds the HTTP implementation.

pub mod probe;

use crate::error::ErrorCategory;
use crate::model::ProxyCredential;
use std::future::Future;

/// Where and how to call a proxy.
#[derive(Clone, Debug)]
pub struct ProxyTarget {
    /// `https://host` as in the store's `XksProxyUriEndpoint`.
    pub uri_endpoint: String,
    /// e.g. `/example/kms/xks/v1`.
    pub uri_path: String,
    /// The KMS Region: part of the SigV4 credential scope.
    pub region: String,
    pub credential: ProxyCredential,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyManagerHealth {
    Active,
    Degraded,
    Unavailable,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyManagerStatus {
    pub id: String,
    pub model: String,
    pub health: KeyManagerHealth,
}

/// A parsed GetHealthStatus answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthReport {
    pub fleet_size: u32,
    pub proxy_vendor: String,
    pub proxy_model: String,
    pub ekm_vendor: String,
    pub key_managers: Vec<KeyManagerStatus>,
}

impl HealthReport {
    /// KMS treats a proxy whose key managers are all UNAVAILABLE as unusable.
    pub fn is_usable(&self) -> bool {
        self.key_managers
            .iter()
            .any(|m| m.health != KeyManagerHealth::Unavailable)
    }
}

/// A parsed GetKeyMetadata answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyMetadata {
    pub key_spec: String,
    pub key_usage: Vec<String>,
    pub key_status: String,
}

impl KeyMetadata {
    /// What an XKS key must look like for KMS to use it.
    pub fn is_usable(&self) -> bool {
        self.key_spec == "AES_256"
            && self.key_status == "ENABLED"
            && self.key_usage.iter().any(|u| u == "ENCRYPT")
            && self.key_usage.iter().any(|u| u == "DECRYPT")
    }
}

/// Why a proxy call failed. Never carries the secret.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ProbeError {
    #[error(
        "the proxy rejected the credential (401 AuthenticationFailedException): it does not (or no longer) accept this access key id and secret; the credentials Secret and the proxy's configuration disagree"
    )]
    AuthenticationFailed,
    #[error(
        "the proxy denied access (403 AccessDeniedException): its authorization policy does not (or no longer) allow this credential"
    )]
    AccessDenied,
    #[error(
        "the proxy does not serve this URI path (404 InvalidUriPathException): compare spec.proxy.uriPath with the proxy's configuration"
    )]
    InvalidUriPath,
    #[error("the proxy does not know this external key (404 KeyNotFoundException)")]
    KeyNotFound,
    #[error("the proxy throttled the request (429)")]
    Throttled,
    #[error("the proxy could not be reached: {0}")]
    Unreachable(String),
    #[error(
        "the proxy did not answer in time: it is overloaded or hangs, or a firewall drops the traffic without refusing it"
    )]
    TimedOut,
    #[error("TLS handshake with the proxy failed: {0}")]
    Tls(String),
    #[error("the proxy answered HTTP {status} {error_name}")]
    ServerError { status: u16, error_name: String },
    #[error("the proxy's answer is not a valid XKS response: {0}")]
    InvalidResponse(String),
}

impl ProbeError {
    pub fn category(&self) -> ErrorCategory {
        match self {
            Self::AuthenticationFailed => ErrorCategory::ProxyCredentialRejected,
            Self::AccessDenied | Self::InvalidUriPath => ErrorCategory::ProxyMisconfigured,
            Self::KeyNotFound => ErrorCategory::KeyContinuity,
            Self::Throttled => ErrorCategory::Throttled,
            Self::Unreachable(_) | Self::TimedOut | Self::Tls(_) => ErrorCategory::ProxyUnreachable,
            Self::ServerError { .. } => ErrorCategory::Transient,
            Self::InvalidResponse(_) => ErrorCategory::ProxyInvalidResponse,
        }
    }
}

/// The operator's direct view of a proxy.
pub trait ProxyProbe: Send + Sync {
    fn health(
        &self,
        target: &ProxyTarget,
    ) -> impl Future<Output = Result<HealthReport, ProbeError>> + Send;
    fn key_metadata(
        &self,
        target: &ProxyTarget,
        external_key_id: &str,
    ) -> impl Future<Output = Result<KeyMetadata, ProbeError>> + Send;
}
