//! The emulated account+Region: custom key stores and KMS keys.
//! Pure data; the handlers in `ops` apply the rules of the contract.

use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

/// `ConnectionState` of a custom key store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Connection {
    Connected,
    Connecting,
    Disconnected,
    Disconnecting,
    Failed,
}

impl Connection {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Connected => "CONNECTED",
            Self::Connecting => "CONNECTING",
            Self::Disconnected => "DISCONNECTED",
            Self::Disconnecting => "DISCONNECTING",
            Self::Failed => "FAILED",
        }
    }
}

/// A secret that never shows in Debug output.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

pub const PUBLIC: &str = "PUBLIC_ENDPOINT";
pub const VPC: &str = "VPC_ENDPOINT_SERVICE";

/// How KMS reaches a store's proxy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxySettings {
    pub connectivity: String,
    pub uri_endpoint: String,
    pub uri_path: String,
    pub vpc_service_name: Option<String>,
    pub vpc_service_owner: Option<String>,
    pub access_key_id: String,
    pub secret: Secret,
}

impl ProxySettings {
    pub fn is_vpc(&self) -> bool {
        self.connectivity == VPC
    }

    /// Host part of `https://host`.
    pub fn host(&self) -> &str {
        self.uri_endpoint
            .strip_prefix("https://")
            .unwrap_or(&self.uri_endpoint)
    }
}

#[derive(Debug, Clone)]
pub struct Store {
    pub id: String,
    pub name: String,
    pub seq: u64,
    pub creation_date: f64,
    pub proxy: ProxySettings,
    pub state: Connection,
    pub error_code: Option<&'static str>,
    /// Bumped by every Connect/Disconnect so a stale transition task
    /// cannot overwrite a newer one.
    pub generation: u64,
}

impl Store {
    /// DescribeCustomKeyStores entry; never the secret.
    pub fn to_json(&self) -> Value {
        let mut proxy = json!({
            "Connectivity": self.proxy.connectivity,
            "AccessKeyId": self.proxy.access_key_id,
            "UriEndpoint": self.proxy.uri_endpoint,
            "UriPath": self.proxy.uri_path,
        });
        if let Some(name) = &self.proxy.vpc_service_name {
            proxy["VpcEndpointServiceName"] = json!(name);
        }
        if let Some(owner) = &self.proxy.vpc_service_owner {
            proxy["VpcEndpointServiceOwner"] = json!(owner);
        }
        let mut entry = json!({
            "CustomKeyStoreId": self.id,
            "CustomKeyStoreName": self.name,
            "CustomKeyStoreType": "EXTERNAL_KEY_STORE",
            "ConnectionState": self.state.as_str(),
            "CreationDate": self.creation_date,
            "XksProxyConfiguration": proxy,
        });
        if let (Connection::Failed, Some(code)) = (self.state, self.error_code) {
            entry["ConnectionErrorCode"] = json!(code);
        }
        entry
    }
}

#[derive(Debug, Clone)]
pub struct Key {
    pub id: String,
    pub arn: String,
    pub seq: u64,
    pub account: String,
    pub creation_date: f64,
    pub description: String,
    /// `None` for an ordinary AWS_KMS key.
    pub custom_key_store_id: Option<String>,
    pub xks_key_id: Option<String>,
    pub deletion_date: Option<f64>,
    pub pending_window_days: Option<i64>,
    pub enabled: bool,
}

impl Key {
    /// Keys of a store that is not connected are `Unavailable`.
    pub fn key_state(&self, store_state: Option<Connection>) -> &'static str {
        if self.deletion_date.is_some() {
            "PendingDeletion"
        } else if matches!(store_state, Some(s) if s != Connection::Connected) {
            "Unavailable"
        } else if self.enabled {
            "Enabled"
        } else {
            "Disabled"
        }
    }

    pub fn metadata(&self, store_state: Option<Connection>) -> Value {
        let mut m = json!({
            "AWSAccountId": self.account,
            "KeyId": self.id,
            "Arn": self.arn,
            "CreationDate": self.creation_date,
            "Enabled": self.enabled && self.deletion_date.is_none(),
            "Description": self.description,
            "KeyUsage": "ENCRYPT_DECRYPT",
            "KeyState": self.key_state(store_state),
            "Origin": if self.custom_key_store_id.is_some() { "EXTERNAL_KEY_STORE" } else { "AWS_KMS" },
            "KeyManager": "CUSTOMER",
            "CustomerMasterKeySpec": "SYMMETRIC_DEFAULT",
            "KeySpec": "SYMMETRIC_DEFAULT",
            "EncryptionAlgorithms": ["SYMMETRIC_DEFAULT"],
            "MultiRegion": false,
        });
        if let Some(store) = &self.custom_key_store_id {
            m["CustomKeyStoreId"] = json!(store);
        }
        if let Some(xks) = &self.xks_key_id {
            m["XksKeyConfiguration"] = json!({"Id": xks});
        }
        if let Some(d) = self.deletion_date {
            m["DeletionDate"] = json!(d);
            if let Some(days) = self.pending_window_days {
                m["PendingDeletionWindowInDays"] = json!(days);
            }
        }
        m
    }
}

/// Everything KMS knows, in creation order.
#[derive(Debug, Default)]
pub struct KmsState {
    pub stores: Vec<Store>,
    pub keys: Vec<Key>,
    pub next_seq: u64,
}

impl KmsState {
    pub fn next_seq(&mut self) -> u64 {
        self.next_seq += 1;
        self.next_seq
    }

    pub fn store(&self, id: &str) -> Option<&Store> {
        self.stores.iter().find(|s| s.id == id)
    }

    pub fn store_mut(&mut self, id: &str) -> Option<&mut Store> {
        self.stores.iter_mut().find(|s| s.id == id)
    }

    pub fn store_state(&self, id: Option<&str>) -> Option<Connection> {
        id.and_then(|id| self.store(id)).map(|s| s.state)
    }

    pub fn keys_in_store(&self, id: &str) -> usize {
        self.keys
            .iter()
            .filter(|k| k.custom_key_store_id.as_deref() == Some(id))
            .count()
    }
}

/// Epoch seconds with millisecond precision, as KMS reports dates.
pub fn now_epoch() -> f64 {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    (since.as_millis() as f64) / 1000.0
}

/// `cks-` followed by 17 lowercase hex digits.
pub fn new_store_id() -> String {
    let n: u128 = rand::random();
    format!("cks-{:017x}", n & ((1u128 << 68) - 1))
}

/// A random (version 4) UUID.
pub fn new_key_id() -> String {
    let mut b: [u8; 16] = rand::random();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_have_the_kms_shape() {
        let id = new_store_id();
        assert_eq!(id.len(), 21);
        assert!(id[4..].chars().all(|c| c.is_ascii_hexdigit()));
        let key = new_key_id();
        assert_eq!(key.len(), 36);
        assert_eq!(&key[14..15], "4");
    }
}
