//! Emulator configuration (YAML, camelCase), documented in docs/emulator.md.
//!
//! A config file starts from empty lists (no proxies, no VPC endpoint
//! services); `EmulatorConfig::default()` is the embedded demo setup used
//! when no file is given.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::faults::KmsFaults;
use super::xks_proxy::{ExternalKeyConfig, KeyManagerConfig, ProxyConfig, ProxyFleet};

/// Demo proxy hosts and their shared settings.
pub const DEMO_PRIMARY_HOST: &str = "xks-primary.example.com";
pub const DEMO_REPLICA_HOST: &str = "xks-replica.example.com";
pub const DEMO_URI_PATH: &str = "/example/kms/xks/v1";
pub const DEMO_ACCESS_KEY_ID: &str = "XKSDEMOKEYIDPRIMARYA";
pub const DEMO_SECRET: &str = "demoSecretAccessKeyForTheXksProxyPrimary0123456789";
pub const DEMO_ROTATED_SECRET: &str = "demoRotatedSecretAccessKeyForTheXksProxyPrimary9876543";
pub const DEMO_KEYS: [&str; 2] = ["demo-key-1", "demo-key-2"];
/// Fixed demo key material (base64 of 32 bytes), the same on both proxies so
/// the replica can decrypt what the primary encrypted.
const DEMO_MATERIAL: [&str; 2] = [
    "ZGVtby1rZXktMS1tYXRlcmlhbC0zMi1ieXRlcy0hISE=",
    "ZGVtby1rZXktMi1tYXRlcmlhbC0zMi1ieXRlcy0hISE=",
];

/// A VPC endpoint service that "exists" for Connect.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VpcEndpointServiceConfig {
    /// e.g. `com.amazonaws.vpce.us-east-1.vpce-svc-0123456789abcdef0`.
    pub name: String,
    /// Owning account (12 digits); when both this and the store's
    /// `XksProxyVpcEndpointServiceOwner` are set they must match.
    #[serde(default)]
    pub owner: Option<String>,
    /// Private DNS name; a store's `XksProxyUriEndpoint` must be `https://` + it.
    pub private_dns_name: String,
}

/// Everything the emulator can be configured with.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EmulatorConfig {
    #[serde(default = "default_region")]
    pub region: String,
    #[serde(default = "default_account")]
    pub account_id: String,
    /// Time a store spends CONNECTING (at least as long as the proxy check).
    #[serde(default = "default_delay")]
    pub connect_delay_ms: u64,
    /// Time a store spends DISCONNECTING.
    #[serde(default = "default_delay")]
    pub disconnect_delay_ms: u64,
    /// How long KMS waits for a proxy answer (real KMS: about 250 ms).
    #[serde(default = "default_proxy_timeout")]
    pub proxy_timeout_ms: u64,
    #[serde(default = "default_max_stores")]
    pub max_custom_key_stores: usize,
    /// The stricter reading: a store that is not DISCONNECTED accepts only a
    /// name change.
    #[serde(default)]
    pub strict_connected_updates: bool,
    /// Proxy host → base URL (`http://127.0.0.1:4567`). Proxies of this
    /// config not listed here resolve to the emulator's own listener.
    #[serde(default)]
    pub resolve: BTreeMap<String, String>,
    #[serde(default)]
    pub vpc_endpoint_services: Vec<VpcEndpointServiceConfig>,
    #[serde(default)]
    pub proxies: Vec<ProxyConfig>,
    /// KMS API faults by operation name, or `*` for all.
    #[serde(default)]
    pub faults: KmsFaults,
}

fn default_region() -> String {
    "us-east-1".into()
}
fn default_account() -> String {
    "111122223333".into()
}
fn default_delay() -> u64 {
    300
}
/// Far above KMS's ~250 ms so a loaded 2-core CI machine does not turn a
/// slow but healthy proxy into XKS_PROXY_TIMED_OUT.
fn default_proxy_timeout() -> u64 {
    2000
}
fn default_max_stores() -> usize {
    10
}

/// One demo proxy serving both demo keys and accepting both demo secrets.
pub fn demo_proxy(host: &str) -> ProxyConfig {
    let mut proxy = ProxyConfig::new(host, DEMO_URI_PATH)
        .with_credential(DEMO_ACCESS_KEY_ID, DEMO_SECRET)
        .with_credential(DEMO_ACCESS_KEY_ID, DEMO_ROTATED_SECRET);
    proxy.key_managers = vec![KeyManagerConfig::new("ekm-1")];
    for (id, material) in DEMO_KEYS.iter().zip(DEMO_MATERIAL) {
        let mut key = ExternalKeyConfig::new(id);
        key.material = Some(material.to_string());
        proxy = proxy.with_key(key);
    }
    // A fleet that cannot hold two secrets under one access key id would
    // refuse the whole demo; keep the demo usable with the first secret then.
    if ProxyFleet::new(vec![proxy.clone()]).is_err() {
        proxy.credentials.truncate(1);
    }
    proxy
}

impl Default for EmulatorConfig {
    /// The demo: a primary proxy and its replica serving the same keys.
    fn default() -> Self {
        Self {
            region: default_region(),
            account_id: default_account(),
            connect_delay_ms: default_delay(),
            disconnect_delay_ms: default_delay(),
            proxy_timeout_ms: default_proxy_timeout(),
            max_custom_key_stores: default_max_stores(),
            strict_connected_updates: false,
            resolve: BTreeMap::new(),
            vpc_endpoint_services: Vec::new(),
            proxies: vec![demo_proxy(DEMO_PRIMARY_HOST), demo_proxy(DEMO_REPLICA_HOST)],
            faults: KmsFaults::new(),
        }
    }
}

impl EmulatorConfig {
    /// A config with no proxies and no delays worth waiting for; a base for tests.
    pub fn empty() -> Self {
        Self {
            proxies: Vec::new(),
            ..Self::default()
        }
    }

    pub fn from_yaml_str(text: &str) -> anyhow::Result<Self> {
        Ok(serde_yaml::from_str(text)?)
    }

    pub fn from_yaml_file(path: impl AsRef<Path>) -> anyhow::Result<Self> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("reading {}: {e}", path.display()))?;
        Self::from_yaml_str(&text).map_err(|e| anyhow::anyhow!("parsing {}: {e}", path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_starts_from_empty_lists() {
        let cfg = EmulatorConfig::from_yaml_str("maxCustomKeyStores: 1000\n").unwrap();
        assert_eq!(cfg.max_custom_key_stores, 1000);
        assert!(cfg.proxies.is_empty());
        assert_eq!(cfg.region, "us-east-1");
    }

    #[test]
    fn unknown_fields_are_refused() {
        assert!(EmulatorConfig::from_yaml_str("maxStores: 3\n").is_err());
    }

    /// The full example of docs/emulator.md parses and builds a fleet.
    #[test]
    fn documented_example_is_valid() {
        let doc = include_str!("../../docs/emulator.md");
        let section = doc.split("## Configuration file").nth(1).unwrap();
        let yaml = section
            .split("```yaml\n")
            .nth(1)
            .and_then(|s| s.split("```").next())
            .unwrap();
        let cfg = EmulatorConfig::from_yaml_str(yaml).unwrap();
        assert_eq!(cfg.proxies.len(), 2);
        assert_eq!(cfg.vpc_endpoint_services.len(), 1);
        assert!(cfg.faults.contains_key("*"));
        ProxyFleet::new(cfg.proxies).unwrap();
    }

    #[test]
    fn demo_material_is_32_bytes() {
        use base64::Engine;
        for m in DEMO_MATERIAL {
            let bytes = base64::engine::general_purpose::STANDARD.decode(m).unwrap();
            assert_eq!(bytes.len(), 32);
        }
    }
}
