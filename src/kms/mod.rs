//! The `KeyStores` port: what the engine needs from KMS, and the error
//! classification of KMS answers. `aws` holds the adapter over aws-sdk-kms.

pub mod aws;
pub mod identity;

use crate::error::{Class, ErrorCategory};
use crate::model::{ObservedStore, ProxyConfig, ProxyCredential, StoreKey};
use std::future::Future;

/// `CreateCustomKeyStore` for an external key store.
#[derive(Clone, Debug)]
pub struct CreateStore {
    pub name: String,
    pub proxy: ProxyConfig,
    pub credential: ProxyCredential,
}

/// `UpdateCustomKeyStore`: only the fields that are `Some` are sent.
#[derive(Clone, Debug, Default)]
pub struct UpdateStore {
    pub id: String,
    pub new_name: Option<String>,
    /// Always sent whole (KMS wants both halves together).
    pub credential: Option<ProxyCredential>,
    pub uri_path: Option<String>,
    pub uri_endpoint: Option<String>,
    pub connectivity: Option<crate::model::Connectivity>,
    /// `Some("")` clears it, as KMS wants when switching to a public endpoint.
    pub vpc_endpoint_service_name: Option<String>,
    pub vpc_endpoint_service_owner: Option<String>,
}

/// An error from KMS, classified. Messages come from KMS and never contain
/// the proxy secret (KMS does not echo it, and the adapter sends it only in
/// the request body).
#[derive(Debug, Clone, thiserror::Error)]
pub enum KmsError {
    #[error("KMS {code}: {message}")]
    Service { code: String, message: String },
    #[error("could not reach KMS: {0}")]
    Transport(String),
    /// The credentials of an assumed role could not be had: STS refused or
    /// failed. `code` is STS's error code, when it answered.
    #[error("could not assume role {role}: {}{message}", code.as_deref().map(|c| format!("{c}: ")).unwrap_or_default())]
    AssumeRole {
        role: String,
        code: Option<String>,
        message: String,
    },
}

impl KmsError {
    pub fn code(&self) -> Option<&str> {
        match self {
            Self::Service { code, .. } => Some(code),
            Self::AssumeRole { code, .. } => code.as_deref(),
            Self::Transport(_) => None,
        }
    }

    pub fn category(&self) -> ErrorCategory {
        let code = match self {
            Self::Transport(_) => return ErrorCategory::Transient,
            Self::AssumeRole { code, .. } => {
                return match code.as_deref() {
                    // STS answers these when a call can pass by itself.
                    Some("Throttling" | "ThrottlingException") => ErrorCategory::Throttled,
                    Some(
                        "ExpiredToken" | "RequestExpired" | "InternalFailure"
                        | "ServiceUnavailable",
                    )
                    | None => ErrorCategory::Transient,
                    // AccessDenied (trust policy, external id), a disabled
                    // Region, a malformed role: for a person to fix.
                    Some(_) => ErrorCategory::AssumeRoleFailed,
                };
            }
            Self::Service { code, .. } => code,
        };
        match code.as_str() {
            "ThrottlingException" => ErrorCategory::Throttled,
            // The SDK fetches fresh credentials on the next call.
            "ExpiredTokenException" => ErrorCategory::Transient,
            "LimitExceededException" => ErrorCategory::LimitExceeded,
            "KMSInternalException"
            | "DependencyTimeoutException"
            | "ServiceUnavailableException" => ErrorCategory::Transient,
            "CustomKeyStoreInvalidStateException" | "KMSInvalidStateException" => {
                ErrorCategory::InvalidState
            }
            "CustomKeyStoreNameInUseException"
            | "XksProxyUriInUseException"
            | "XksProxyUriEndpointInUseException"
            | "XksProxyVpcEndpointServiceInUseException" => ErrorCategory::Conflict,
            "CustomKeyStoreNotFoundException" | "NotFoundException" => ErrorCategory::NotFound,
            "CustomKeyStoreHasCMKsException" => ErrorCategory::StoreHasKeys,
            "XksProxyIncorrectAuthenticationCredentialException" => {
                ErrorCategory::ProxyCredentialRejected
            }
            "XksProxyInvalidConfigurationException" => ErrorCategory::ProxyMisconfigured,
            "XksProxyUriUnreachableException" => ErrorCategory::ProxyUnreachable,
            "XksProxyInvalidResponseException" => ErrorCategory::ProxyInvalidResponse,
            "XksProxyVpcEndpointServiceNotFoundException"
            | "XksProxyVpcEndpointServiceInvalidConfigurationException"
            | "ValidationException"
            | "InvalidArnException"
            | "IncorrectTrustAnchorException" => ErrorCategory::InvalidSpec,
            "AccessDeniedException" | "UnrecognizedClientException" => ErrorCategory::AccessDenied,
            _ => ErrorCategory::Internal,
        }
    }

    /// Whether it passes by itself (see `ErrorCategory::class`).
    pub fn class(&self) -> Class {
        self.category().class()
    }
}

/// What the engine needs from KMS in one account and Region.
pub trait KeyStores: Send + Sync {
    /// `None` when KMS says `CustomKeyStoreNotFoundException`.
    fn describe_by_id(
        &self,
        id: &str,
    ) -> impl Future<Output = Result<Option<ObservedStore>, KmsError>> + Send;
    /// `None` when KMS says `CustomKeyStoreNotFoundException`.
    fn describe_by_name(
        &self,
        name: &str,
    ) -> impl Future<Output = Result<Option<ObservedStore>, KmsError>> + Send;
    /// Every store, following `NextMarker` until `Truncated` is false.
    fn describe_all(&self) -> impl Future<Output = Result<Vec<ObservedStore>, KmsError>> + Send;
    /// Returns the new store's id.
    fn create(&self, req: &CreateStore) -> impl Future<Output = Result<String, KmsError>> + Send;
    fn update(&self, req: &UpdateStore) -> impl Future<Output = Result<(), KmsError>> + Send;
    fn connect(&self, id: &str) -> impl Future<Output = Result<(), KmsError>> + Send;
    fn disconnect(&self, id: &str) -> impl Future<Output = Result<(), KmsError>> + Send;
    fn delete(&self, id: &str) -> impl Future<Output = Result<(), KmsError>> + Send;
    /// The KMS keys whose `CustomKeyStoreId` is `id` (ListKeys + DescribeKey).
    fn list_store_keys(
        &self,
        id: &str,
    ) -> impl Future<Output = Result<Vec<StoreKey>, KmsError>> + Send;
}
