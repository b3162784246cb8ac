//! Emulator configuration (YAML, camelCase), documented in docs/emulator.md.
//!
//! A config file starts from empty lists (no proxies, no VPC endpoint
//! services, no roles); `EmulatorConfig::default()` is the embedded demo
//! setup used when no file is given.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::faults::KmsFaults;
use super::iam;
use super::xks_proxy::{ExternalKeyConfig, KeyManagerConfig, ProxyConfig, ProxyFleet};

pub use super::iam::default_identity_arn;

/// The embedded default's account and Region (the default identity's).
pub const DEMO_ACCOUNT_ID: &str = "111122223333";
pub const DEMO_REGION: &str = "us-east-1";
/// The default identity of the embedded default: any credentials the
/// emulator did not issue act as this user of [`DEMO_ACCOUNT_ID`].
pub const DEMO_DEFAULT_IDENTITY_ARN: &str = "arn:aws:iam::111122223333:user/emulator";
/// The embedded default's second account, reached by assuming [`DEMO_ROLE_ARN`].
pub const DEMO_SECOND_ACCOUNT_ID: &str = "222233334444";
/// A role in [`DEMO_SECOND_ACCOUNT_ID`] that [`DEMO_ACCOUNT_ID`] may assume
/// (no external id, sessions of up to one hour).
pub const DEMO_ROLE_ARN: &str = "arn:aws:iam::222233334444:role/xks-operator";

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
    /// KMS API faults by operation name, or `*` for all; every account and
    /// Region starts with them (each with its own token buckets).
    #[serde(default)]
    pub faults: KmsFaults,
    /// Long-term credentials that act as a given principal; any other access
    /// key id the emulator did not issue is the default identity.
    #[serde(default)]
    pub identities: Vec<IdentityConfig>,
    /// IAM roles that STS AssumeRole may issue credentials for.
    #[serde(default)]
    pub roles: Vec<RoleConfig>,
    /// STS settings and faults.
    #[serde(default)]
    pub sts: StsConfig,
    /// Settings of one account (and optionally one Region) that differ from
    /// the top-level ones.
    #[serde(default)]
    pub overrides: Vec<AccountOverride>,
}

/// Long-term credentials of a principal other than the default identity.
/// Signatures are not verified: the access key id alone identifies it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IdentityConfig {
    pub access_key_id: String,
    /// The principal: `arn:aws:iam::ACCOUNT:user/NAME`, `...:root`, or a role
    /// (`arn:aws:iam::ACCOUNT:role/NAME`, as a workload's role would be).
    pub arn: String,
    /// Defaults to the account of `arn`; when given it must be the same.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account: Option<String>,
    /// What GetCallerIdentity reports as `UserId`; derived from `arn` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
}

impl IdentityConfig {
    pub fn new(access_key_id: &str, arn: &str) -> Self {
        Self {
            access_key_id: access_key_id.to_string(),
            arn: arn.to_string(),
            account: None,
            user_id: None,
        }
    }

    /// The identity's account: `account`, or the one in `arn`.
    pub fn account_id(&self) -> String {
        self.account.clone().unwrap_or_else(|| {
            iam::parse_arn(&self.arn)
                .map(|a| a.account.to_string())
                .unwrap_or_default()
        })
    }

    pub(crate) fn check(&self) -> Result<(), String> {
        let what = format!("identities: {}", self.arn);
        if self.access_key_id.is_empty() || self.access_key_id.len() > 128 {
            return Err(format!("{what}: accessKeyId must have 1-128 characters"));
        }
        let arn = iam::parse_arn(&self.arn)
            .filter(|a| iam::is_account_id(a.account))
            .ok_or_else(|| format!("{what}: arn must be an ARN with a 12-digit account"))?;
        if let Some(account) = &self.account
            && account != arn.account
        {
            return Err(format!(
                "{what}: account {account} is not the account of the ARN"
            ));
        }
        Ok(())
    }
}

/// An IAM role and its trust policy, reduced to what AssumeRole checks.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RoleConfig {
    /// `arn:aws:iam::ACCOUNT:role/[PATH/]NAME`; the role's account is the
    /// account its sessions act in.
    pub arn: String,
    /// Who may assume it: account ids (`"111122223333"`, or
    /// `"arn:aws:iam::111122223333:root"`: any principal of that account),
    /// principal ARNs (a user, or a role: then any session of that role),
    /// or `"*"` for anyone. Empty: nobody.
    #[serde(default)]
    pub trusted_principals: Vec<String>,
    /// The `sts:ExternalId` the caller must give, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external_id: Option<String>,
    /// The role's maximum session duration (IAM: 3600-43200, default 3600).
    #[serde(default = "default_max_session")]
    pub max_session_duration_seconds: u32,
}

impl fmt::Debug for RoleConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RoleConfig")
            .field("arn", &self.arn)
            .field("trusted_principals", &self.trusted_principals)
            .field(
                "external_id",
                &self.external_id.as_ref().map(|_| "<redacted>"),
            )
            .field(
                "max_session_duration_seconds",
                &self.max_session_duration_seconds,
            )
            .finish()
    }
}

fn default_max_session() -> u32 {
    3600
}

impl RoleConfig {
    /// A role nobody may assume yet.
    pub fn new(arn: &str) -> Self {
        Self {
            arn: arn.to_string(),
            trusted_principals: Vec::new(),
            external_id: None,
            max_session_duration_seconds: default_max_session(),
        }
    }

    /// Also trust `principal` (an account id, a principal ARN, or `*`).
    pub fn trusting(mut self, principal: &str) -> Self {
        self.trusted_principals.push(principal.to_string());
        self
    }

    /// Require this external id.
    pub fn with_external_id(mut self, external_id: &str) -> Self {
        self.external_id = Some(external_id.to_string());
        self
    }

    pub(crate) fn check(&self) -> Result<(), String> {
        let what = format!("roles: {}", self.arn);
        if iam::parse_role_arn(&self.arn).is_none() {
            return Err(format!(
                "{what}: arn must be arn:aws:iam::<12 digits>:role/[path/]name"
            ));
        }
        if !(3600..=43200).contains(&self.max_session_duration_seconds) {
            return Err(format!(
                "{what}: maxSessionDurationSeconds must be 3600-43200"
            ));
        }
        for p in &self.trusted_principals {
            let ok = p == "*"
                || iam::is_account_id(p)
                || iam::parse_arn(p).is_some_and(|a| iam::is_account_id(a.account));
            if !ok {
                return Err(format!(
                    "{what}: trusted principal {p:?} is neither \"*\", an account id nor a principal ARN"
                ));
            }
        }
        if let Some(e) = &self.external_id {
            let n = e.chars().count();
            let chars_ok = e
                .chars()
                .all(|c| c.is_alphanumeric() || c == '_' || "+=,.@:/-".contains(c));
            if !(2..=1224).contains(&n) || !chars_ok {
                return Err(format!(
                    "{what}: externalId must have 2-1224 characters of [\\w+=,.@:/-]"
                ));
            }
        }
        Ok(())
    }
}

/// STS settings.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StsConfig {
    /// For tests: issued credentials expire this many seconds after
    /// AssumeRole, whatever `DurationSeconds` asked (which is still
    /// validated as STS does). Absent: the asked duration (default 3600).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_duration_seconds: Option<u64>,
    /// STS faults by operation (`AssumeRole`, `GetCallerIdentity`) or `*`,
    /// the same fields as the KMS faults.
    #[serde(default)]
    pub faults: KmsFaults,
}

/// Settings of one account, or of one account in one Region, that differ
/// from the top-level ones (an account+Region entry wins over an
/// account-wide one). `faults`, when given, replaces the top-level faults.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AccountOverride {
    pub account_id: String,
    /// Absent: every Region of the account.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connect_delay_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disconnect_delay_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_custom_key_stores: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strict_connected_updates: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub faults: Option<KmsFaults>,
}

impl AccountOverride {
    /// Whether it applies to `account` in `region`.
    pub fn applies_to(&self, account: &str, region: &str) -> bool {
        self.account_id == account && self.region.as_deref().is_none_or(|r| r == region)
    }

    /// `other` (more specific) on top of `self`.
    pub fn merged_with(&self, other: &AccountOverride) -> AccountOverride {
        AccountOverride {
            account_id: other.account_id.clone(),
            region: other.region.clone().or(self.region.clone()),
            connect_delay_ms: other.connect_delay_ms.or(self.connect_delay_ms),
            disconnect_delay_ms: other.disconnect_delay_ms.or(self.disconnect_delay_ms),
            max_custom_key_stores: other.max_custom_key_stores.or(self.max_custom_key_stores),
            strict_connected_updates: other
                .strict_connected_updates
                .or(self.strict_connected_updates),
            faults: other.faults.clone().or(self.faults.clone()),
        }
    }
}

fn default_region() -> String {
    DEMO_REGION.into()
}
fn default_account() -> String {
    DEMO_ACCOUNT_ID.into()
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
    /// The demo: a primary proxy and its replica serving the same keys, and
    /// a second account whose role the default identity may assume.
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
            identities: Vec::new(),
            roles: vec![RoleConfig::new(DEMO_ROLE_ARN).trusting(DEMO_ACCOUNT_ID)],
            sts: StsConfig::default(),
            overrides: Vec::new(),
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

    /// Rules serde cannot express: ARNs, account ids, fault keys, duplicates.
    pub fn validate(&self) -> Result<(), String> {
        crate::kms::check_fault_keys(self.faults.keys())?;
        let mut keys = BTreeSet::new();
        for identity in &self.identities {
            identity.check()?;
            if !keys.insert(identity.access_key_id.as_str()) {
                return Err(format!(
                    "identities: access key id {} is listed twice",
                    identity.access_key_id
                ));
            }
        }
        let mut arns = BTreeSet::new();
        for role in &self.roles {
            role.check()?;
            if !arns.insert(role.arn.as_str()) {
                return Err(format!("roles: {} is listed twice", role.arn));
            }
        }
        crate::sts::check_fault_keys(self.sts.faults.keys())?;
        let mut scopes = BTreeSet::new();
        for o in &self.overrides {
            if !iam::is_account_id(&o.account_id) {
                return Err(format!(
                    "overrides: accountId {:?} is not a 12-digit account id",
                    o.account_id
                ));
            }
            if let Some(r) = &o.region
                && !iam::is_region(r)
            {
                return Err(format!("overrides: region {r:?} is not a Region name"));
            }
            if let Some(f) = &o.faults {
                crate::kms::check_fault_keys(f.keys())?;
            }
            if !scopes.insert((o.account_id.as_str(), o.region.as_deref())) {
                return Err(format!(
                    "overrides: account {} (region {}) is listed twice",
                    o.account_id,
                    o.region.as_deref().unwrap_or("any")
                ));
            }
        }
        Ok(())
    }

    /// The overrides that apply to `account` in `region`, merged (the
    /// account+Region entry on top of the account-wide one).
    pub fn override_for(&self, account: &str, region: &str) -> AccountOverride {
        let wide = self
            .overrides
            .iter()
            .find(|o| o.region.is_none() && o.applies_to(account, region));
        let exact = self
            .overrides
            .iter()
            .find(|o| o.region.is_some() && o.applies_to(account, region));
        let empty = AccountOverride::default();
        wide.unwrap_or(&empty).merged_with(exact.unwrap_or(&empty))
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
    fn the_embedded_default_has_a_second_account() {
        let cfg = EmulatorConfig::default();
        cfg.validate().unwrap();
        assert_eq!(cfg.account_id, DEMO_ACCOUNT_ID);
        assert_eq!(
            default_identity_arn(DEMO_ACCOUNT_ID),
            DEMO_DEFAULT_IDENTITY_ARN
        );
        let role = &cfg.roles[0];
        assert_eq!(role.arn, DEMO_ROLE_ARN);
        assert!(role.arn.contains(DEMO_SECOND_ACCOUNT_ID));
        assert_eq!(role.trusted_principals, [DEMO_ACCOUNT_ID]);
        assert_eq!(role.external_id, None);
        // A file starts with no roles.
        assert!(
            EmulatorConfig::from_yaml_str("{}")
                .unwrap()
                .roles
                .is_empty()
        );
    }

    /// The bench hands a config to a child emulator as YAML.
    #[test]
    fn a_full_config_round_trips_through_yaml() {
        let mut cfg = EmulatorConfig::default();
        cfg.roles
            .push(RoleConfig::new("arn:aws:iam::333344445555:role/r").with_external_id("ext-id"));
        cfg.identities.push(IdentityConfig::new(
            "AKIAROUNDTRIP",
            "arn:aws:iam::333344445555:user/u",
        ));
        cfg.sts.session_duration_seconds = Some(5);
        cfg.overrides.push(AccountOverride {
            account_id: DEMO_SECOND_ACCOUNT_ID.into(),
            max_custom_key_stores: Some(3),
            ..AccountOverride::default()
        });
        let back = EmulatorConfig::from_yaml_str(&serde_yaml::to_string(&cfg).unwrap()).unwrap();
        back.validate().unwrap();
        assert_eq!(back.roles, cfg.roles);
        assert_eq!(back.identities, cfg.identities);
        assert_eq!(back.sts, cfg.sts);
        assert_eq!(back.overrides, cfg.overrides);
    }

    #[test]
    fn overrides_merge_account_then_region() {
        let cfg = EmulatorConfig::from_yaml_str(
            "overrides:\n  - {accountId: \"222233334444\", region: eu-west-1, maxCustomKeyStores: 2}\n  - {accountId: \"222233334444\", maxCustomKeyStores: 5, connectDelayMs: 7}\n",
        )
        .unwrap();
        cfg.validate().unwrap();
        let o = cfg.override_for("222233334444", "eu-west-1");
        assert_eq!(
            (o.max_custom_key_stores, o.connect_delay_ms),
            (Some(2), Some(7))
        );
        let o = cfg.override_for("222233334444", "us-east-1");
        assert_eq!(o.max_custom_key_stores, Some(5));
        assert_eq!(
            cfg.override_for("111122223333", "eu-west-1")
                .max_custom_key_stores,
            None
        );
    }

    #[test]
    fn bad_identities_roles_and_overrides_are_refused() {
        for yaml in [
            "roles: [{arn: \"arn:aws:iam::2222:role/x\"}]",
            "roles: [{arn: \"arn:aws:iam::222233334444:role/x\", maxSessionDurationSeconds: 100}]",
            "roles: [{arn: \"arn:aws:iam::222233334444:role/x\", trustedPrincipals: [\"someone\"]}]",
            "roles: [{arn: \"arn:aws:iam::222233334444:role/x\", externalId: \"a b\"}]",
            "roles: [{arn: \"arn:aws:iam::222233334444:role/x\"}, {arn: \"arn:aws:iam::222233334444:role/x\"}]",
            "identities: [{accessKeyId: AKIA1, arn: \"arn:aws:iam::333344445555:user/ci\", account: \"111122223333\"}]",
            "identities: [{accessKeyId: AKIA1, arn: \"user/ci\"}]",
            "overrides: [{accountId: \"12\"}]",
            "overrides: [{accountId: \"222233334444\", faults: {Frobnicate: {}}}]",
            "sts: {faults: {AssumeRol: {throttleNext: 1}}}",
        ] {
            let cfg = EmulatorConfig::from_yaml_str(yaml).unwrap();
            assert!(cfg.validate().is_err(), "accepted: {yaml}");
        }
    }

    #[test]
    fn external_ids_stay_out_of_debug_output() {
        let role = RoleConfig::new(DEMO_ROLE_ARN).with_external_id("very-private-id");
        assert!(!format!("{role:?}").contains("very-private-id"));
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
        cfg.validate().unwrap();
        assert_eq!(cfg.proxies.len(), 2);
        assert_eq!(cfg.vpc_endpoint_services.len(), 1);
        assert!(cfg.faults.contains_key("*"));
        assert_eq!((cfg.identities.len(), cfg.roles.len()), (1, 2));
        assert!(cfg.roles[1].external_id.is_some());
        assert_eq!(cfg.overrides.len(), 2);
        assert!(cfg.sts.faults.contains_key("AssumeRole"));
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
