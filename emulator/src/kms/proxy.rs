//! KMS's own calls to a store's XKS proxy, and how KMS reports their
//! failures (contract §5): exceptions on Create/Update/CreateKey, a
//! `ConnectionErrorCode` on Connect.

use super::error::KmsError;
use super::state::Secret;
use crate::proxy_client::{ProxyCall, ProxyCallError, ProxyCaller};

/// Where and how to reach one proxy.
pub struct Target {
    pub uri_endpoint: String,
    pub uri_path: String,
    pub access_key_id: String,
    pub secret: Secret,
    pub region: String,
}

impl Target {
    fn call(&self) -> ProxyCall<'_> {
        ProxyCall {
            uri_endpoint: &self.uri_endpoint,
            uri_path: &self.uri_path,
            access_key_id: &self.access_key_id,
            secret_access_key: &self.secret.0,
            region: &self.region,
        }
    }
}

/// GetHealthStatus; all key managers UNAVAILABLE counts as a failure.
pub async fn health(
    caller: &ProxyCaller,
    target: &Target,
    kms_operation: &str,
) -> Result<(), ProxyCallError> {
    caller
        .get_health_status(&target.call(), kms_operation)
        .await
        .map(|_| ())
}

/// The exception CreateCustomKeyStore / UpdateCustomKeyStore answer.
pub fn create_update_error(err: &ProxyCallError) -> KmsError {
    use ProxyCallError as E;
    match err {
        E::AuthenticationFailed => KmsError::new(
            "XksProxyIncorrectAuthenticationCredentialException",
            "The external key store proxy rejected the proxy authentication credential.",
        ),
        E::InvalidUriPath => KmsError::new(
            "XksProxyInvalidConfigurationException",
            "The external key store proxy did not recognize the proxy URI path.",
        ),
        E::AccessDenied => KmsError::new(
            "XksProxyInvalidConfigurationException",
            "The external key store proxy denied access to KMS.",
        ),
        E::InvalidResponse(_) | E::KeyNotFound => KmsError::new(
            "XksProxyInvalidResponseException",
            "KMS cannot interpret the response from the external key store proxy.",
        ),
        E::NoHealthyKeyManager => KmsError::new(
            "XksProxyUriUnreachableException",
            "The external key store proxy reports that all external key managers are unavailable.",
        ),
        E::Unreachable(_) | E::Throttled | E::TimedOut | E::TlsFailure(_) | E::ServerError(_) => {
            KmsError::new(
                "XksProxyUriUnreachableException",
                format!(
                    "KMS was unable to reach the external key store proxy ({}).",
                    kind(err)
                ),
            )
        }
    }
}

/// The `ConnectionErrorCode` of a store whose Connect failed.
pub fn connection_error_code(err: &ProxyCallError) -> &'static str {
    use ProxyCallError as E;
    match err {
        E::AuthenticationFailed => "INVALID_CREDENTIALS",
        E::AccessDenied => "XKS_PROXY_ACCESS_DENIED",
        E::InvalidUriPath => "XKS_PROXY_INVALID_CONFIGURATION",
        E::InvalidResponse(_) | E::KeyNotFound => "XKS_PROXY_INVALID_RESPONSE",
        E::TimedOut | E::ServerError(503) => "XKS_PROXY_TIMED_OUT",
        E::TlsFailure(_) => "XKS_PROXY_INVALID_TLS_CONFIGURATION",
        E::Unreachable(_) | E::Throttled | E::ServerError(_) | E::NoHealthyKeyManager => {
            "XKS_PROXY_NOT_REACHABLE"
        }
    }
}

/// A short, secret-free name of the failure for messages.
fn kind(err: &ProxyCallError) -> &'static str {
    use ProxyCallError as E;
    match err {
        E::Unreachable(_) => "unreachable",
        E::Throttled => "throttled",
        E::TimedOut => "timed out",
        E::TlsFailure(_) => "TLS failure",
        E::ServerError(_) => "server error",
        _ => "failed",
    }
}

/// CreateKey: the proxy must hold an enabled AES_256 key for ENCRYPT and DECRYPT.
pub async fn check_external_key(
    caller: &ProxyCaller,
    target: &Target,
    xks_key_id: &str,
) -> Result<(), KmsError> {
    use ProxyCallError as E;
    match caller
        .get_key_metadata_for(&target.call(), xks_key_id, "CreateKey")
        .await
    {
        Ok(meta) => {
            let usable = meta.key_spec == "AES_256"
                && meta.key_status == "ENABLED"
                && ["ENCRYPT", "DECRYPT"]
                    .iter()
                    .all(|u| meta.key_usage.iter().any(|k| k == u));
            if usable {
                Ok(())
            } else {
                Err(KmsError::new(
                    "XksKeyInvalidConfigurationException",
                    format!(
                        "The external key {xks_key_id} must be an ENABLED AES_256 key that can ENCRYPT and DECRYPT."
                    ),
                ))
            }
        }
        Err(E::KeyNotFound) => Err(KmsError::new(
            "XksKeyNotFoundException",
            format!("The external key store proxy could not find the external key {xks_key_id}."),
        )),
        Err(E::TimedOut | E::Unreachable(_) | E::Throttled) => Err(KmsError::new(
            "DependencyTimeoutException",
            "The external key store proxy did not respond in time.",
        )),
        Err(e) => Err(KmsError::new(
            "KMSInvalidStateException",
            format!(
                "The external key store proxy could not be used ({}).",
                connection_error_code(&e)
            ),
        )),
    }
}
