//! Stable error categories shared by every layer. A category is what metrics
//! label, what an Event reason says and what a condition reason says, so its
//! names are part of the operator's interface: do not rename them lightly.

use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ErrorCategory {
    /// KMS or the proxy throttled us; retry with backoff.
    Throttled,
    /// 5xx, timeouts, dropped connections: retry with backoff.
    Transient,
    /// The resource asks for something KMS will never accept.
    InvalidSpec,
    /// The credential Secret is missing or malformed.
    CredentialSecret,
    /// The store is in a state that does not allow the call (someone else acted).
    InvalidState,
    /// Name, URI endpoint+path or VPC endpoint service already used by another store.
    Conflict,
    /// The account's custom key store quota is reached.
    LimitExceeded,
    /// The store does not exist (any more).
    NotFound,
    /// The proxy rejected the credential.
    ProxyCredentialRejected,
    /// The proxy answered but its URI path or configuration is wrong.
    ProxyMisconfigured,
    /// The proxy could not be reached, or timed out.
    ProxyUnreachable,
    /// The proxy answered something that is not a valid XKS answer.
    ProxyInvalidResponse,
    /// The proxy is up but none of its key managers is available.
    ProxyUnhealthy,
    /// The new proxy does not serve every external key of the store.
    KeyContinuity,
    /// The store still holds KMS keys, so it cannot be deleted.
    StoreHasKeys,
    /// The store connected and then failed (ConnectionErrorCode says why).
    ConnectionFailed,
    /// IAM denied the operator's call.
    AccessDenied,
    /// The store is not an external key store, or other unmanageable situation.
    Unsupported,
    /// Anything else.
    Internal,
}

impl ErrorCategory {
    /// CamelCase reason for conditions, Events and metric labels.
    pub fn reason(self) -> &'static str {
        match self {
            Self::Throttled => "Throttled",
            Self::Transient => "TransientError",
            Self::InvalidSpec => "InvalidSpec",
            Self::CredentialSecret => "CredentialSecretInvalid",
            Self::InvalidState => "InvalidState",
            Self::Conflict => "Conflict",
            Self::LimitExceeded => "LimitExceeded",
            Self::NotFound => "NotFound",
            Self::ProxyCredentialRejected => "ProxyCredentialRejected",
            Self::ProxyMisconfigured => "ProxyMisconfigured",
            Self::ProxyUnreachable => "ProxyUnreachable",
            Self::ProxyInvalidResponse => "ProxyInvalidResponse",
            Self::ProxyUnhealthy => "ProxyUnhealthy",
            Self::KeyContinuity => "KeyContinuityNotProven",
            Self::StoreHasKeys => "StoreHasKeys",
            Self::ConnectionFailed => "ConnectionFailed",
            Self::AccessDenied => "AccessDenied",
            Self::Unsupported => "Unsupported",
            Self::Internal => "InternalError",
        }
    }

    /// Whether retrying the same call later can succeed without anyone acting.
    pub fn is_retryable(self) -> bool {
        matches!(
            self,
            Self::Throttled
                | Self::Transient
                | Self::InvalidState
                | Self::ProxyUnreachable
                | Self::ProxyUnhealthy
                | Self::Internal
        )
    }
}
