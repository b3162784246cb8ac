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
    /// STS refused to let the operator assume `spec.roleArn` (trust policy,
    /// external id), or the role cannot be used.
    AssumeRoleFailed,
    /// The cluster admin has not allowed `spec.roleArn` for the namespace.
    RoleNotAllowed,
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
            Self::AssumeRoleFailed => "AssumeRoleFailed",
            Self::RoleNotAllowed => "RoleNotAllowed",
            Self::Unsupported => "Unsupported",
            Self::Internal => "InternalError",
        }
    }

    /// Whether the failure can pass by itself (the operator retries it with
    /// backoff, for as long as it lasts) or needs a person to change
    /// something. The table of docs/troubleshooting.md ("Retries") is this.
    pub fn class(self) -> Class {
        match self {
            // KMS, the network or the proxy are momentarily unable: the
            // same call later succeeds.
            Self::Throttled
            | Self::Transient
            | Self::ProxyUnreachable
            | Self::ProxyUnhealthy
            // Someone else changed the store's state under us: the next
            // observation plans from the new state.
            | Self::InvalidState
            // Our own unexpected error: retry, carefully (capped backoff).
            | Self::Internal => Class::Transient,
            // What the resource, its Secret, the proxy, IAM or the account
            // must change; retrying the same call cannot help.
            Self::InvalidSpec
            | Self::CredentialSecret
            | Self::Conflict
            | Self::LimitExceeded
            | Self::NotFound
            | Self::ProxyCredentialRejected
            | Self::ProxyMisconfigured
            | Self::ProxyInvalidResponse
            | Self::KeyContinuity
            | Self::StoreHasKeys
            | Self::AccessDenied
            | Self::AssumeRoleFailed
            | Self::RoleNotAllowed
            | Self::Unsupported => Class::NeedsPerson,
            // Depends on the ConnectionErrorCode: see `connection_error_class`.
            Self::ConnectionFailed => Class::NeedsPerson,
        }
    }
}

/// Whether a failure passes by itself or needs a person.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Class {
    /// Retried by the operator, with backoff, for as long as it lasts.
    Transient,
    /// Stalled until someone changes the spec, the Secret, the proxy, IAM
    /// or the account (or requests a reconcile).
    NeedsPerson,
}

/// The class of a KMS `ConnectionErrorCode`, for a store that failed to
/// connect: codes that describe a passing condition are transient.
pub fn connection_error_class(code: &str) -> Class {
    match code {
        "NETWORK_ERRORS" | "XKS_PROXY_TIMED_OUT" | "XKS_PROXY_NOT_REACHABLE" | "INTERNAL_ERROR" => {
            Class::Transient
        }
        // INVALID_CREDENTIALS, XKS_PROXY_ACCESS_DENIED,
        // XKS_PROXY_INVALID_CONFIGURATION, XKS_PROXY_INVALID_RESPONSE,
        // XKS_PROXY_INVALID_TLS_CONFIGURATION,
        // XKS_VPC_ENDPOINT_SERVICE_INVALID_CONFIGURATION,
        // XKS_VPC_ENDPOINT_SERVICE_NOT_FOUND, and any code KMS may add.
        _ => Class::NeedsPerson,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_connection_codes_of_a_passing_condition_are_transient() {
        for code in [
            "NETWORK_ERRORS",
            "XKS_PROXY_TIMED_OUT",
            "XKS_PROXY_NOT_REACHABLE",
            "INTERNAL_ERROR",
        ] {
            assert_eq!(connection_error_class(code), Class::Transient, "{code}");
        }
        for code in [
            "INVALID_CREDENTIALS",
            "XKS_PROXY_ACCESS_DENIED",
            "XKS_PROXY_INVALID_CONFIGURATION",
            "XKS_PROXY_INVALID_RESPONSE",
            "XKS_PROXY_INVALID_TLS_CONFIGURATION",
            "XKS_VPC_ENDPOINT_SERVICE_INVALID_CONFIGURATION",
            "XKS_VPC_ENDPOINT_SERVICE_NOT_FOUND",
            "SOMETHING_KMS_ADDS_LATER",
        ] {
            assert_eq!(connection_error_class(code), Class::NeedsPerson, "{code}");
        }
    }
}
