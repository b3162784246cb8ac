//! Domain types shared by the planner, the engine and the ports: what KMS
//! reports about a store, and the proxy configuration the user wants.
//! No I/O here.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::fmt;

/// KMS `ConnectionState` of a custom key store, serialized as KMS spells it
/// (it is also `status.connectionState`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ConnectionState {
    Connected,
    Connecting,
    Disconnected,
    Disconnecting,
    Failed,
}

impl ConnectionState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Connected => "CONNECTED",
            Self::Connecting => "CONNECTING",
            Self::Disconnected => "DISCONNECTED",
            Self::Disconnecting => "DISCONNECTING",
            Self::Failed => "FAILED",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "CONNECTED" => Self::Connected,
            "CONNECTING" => Self::Connecting,
            "DISCONNECTED" => Self::Disconnected,
            "DISCONNECTING" => Self::Disconnecting,
            "FAILED" => Self::Failed,
            _ => return None,
        })
    }
}

impl fmt::Display for ConnectionState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How KMS reaches the proxy (`XksProxyConnectivity`), serialized as KMS
/// spells it (it is also `status.proxy.connectivity`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Connectivity {
    #[default]
    PublicEndpoint,
    VpcEndpointService,
}

impl Connectivity {
    /// The KMS wire value.
    pub fn as_kms(self) -> &'static str {
        match self {
            Self::PublicEndpoint => "PUBLIC_ENDPOINT",
            Self::VpcEndpointService => "VPC_ENDPOINT_SERVICE",
        }
    }

    pub fn from_kms(s: &str) -> Option<Self> {
        match s {
            "PUBLIC_ENDPOINT" => Some(Self::PublicEndpoint),
            "VPC_ENDPOINT_SERVICE" => Some(Self::VpcEndpointService),
            _ => None,
        }
    }
}

/// The proxy configuration of a store as KMS knows it, minus the secret
/// (KMS never returns the secret; see [`ProxyCredential`]). Also the shape
/// of `status.proxy` and of the location a rollback restores.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProxyConfig {
    /// `PUBLIC_ENDPOINT` or `VPC_ENDPOINT_SERVICE`.
    #[schemars(with = "String")]
    pub connectivity: Connectivity,
    pub uri_endpoint: String,
    pub uri_path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vpc_endpoint_service_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vpc_endpoint_service_owner: Option<String>,
    pub access_key_id: String,
}

/// A store as `DescribeCustomKeyStores` reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObservedStore {
    pub id: String,
    pub name: String,
    /// `CustomKeyStoreType`; anything but `EXTERNAL_KEY_STORE` cannot be managed.
    pub store_type: String,
    pub connection_state: ConnectionState,
    pub connection_error_code: Option<String>,
    /// `None` for a store that is not an XKS store.
    pub proxy: Option<ProxyConfig>,
}

/// The XKS proxy authentication credential. The secret is wrapped so that it
/// cannot be printed by accident: `Debug` redacts it and it has no `Display`.
#[derive(Clone, PartialEq, Eq)]
pub struct ProxyCredential {
    pub access_key_id: String,
    secret_access_key: String,
}

impl ProxyCredential {
    pub fn new(access_key_id: impl Into<String>, secret_access_key: impl Into<String>) -> Self {
        Self {
            access_key_id: access_key_id.into(),
            secret_access_key: secret_access_key.into(),
        }
    }

    /// The raw secret, for the two places that need it: the KMS request body
    /// and the SigV4 signer.
    pub fn expose_secret(&self) -> &str {
        &self.secret_access_key
    }
}

impl fmt::Debug for ProxyCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProxyCredential")
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"<redacted>")
            .finish()
    }
}

/// A KMS key that lives in an external key store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoreKey {
    pub key_id: String,
    /// `XksKeyConfiguration.Id`: the key's id in the external key manager.
    pub external_key_id: String,
    /// `KeyState` (Enabled, Disabled, PendingDeletion, ...).
    pub key_state: String,
}
