use super::status::ExternalKeyStoreStatus;
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

/// An AWS KMS external key store (XKS), declared.
///
/// The operator creates or adopts the store, keeps its proxy configuration and
/// connection state as declared, and runs disconnect → update → health check →
/// reconnect when a change needs the store disconnected.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "xks-operator.io",
    version = "v1alpha1",
    kind = "ExternalKeyStore",
    plural = "externalkeystores",
    shortname = "xks",
    category = "kms",
    namespaced,
    cel,
    status = "ExternalKeyStoreStatus",
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"State","type":"string","jsonPath":".status.connectionState"}"#,
    printcolumn = r#"{"name":"KeyStoreId","type":"string","jsonPath":".status.keyStoreId"}"#,
    printcolumn = r#"{"name":"Endpoint","type":"string","jsonPath":".spec.proxy.uriEndpoint"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[x_kube(validation = Rule::new(
    "!has(oldSelf.keyStoreId) || (has(self.keyStoreId) && self.keyStoreId == oldSelf.keyStoreId)"
).message("keyStoreId is immutable once set: create a new resource to manage another store"))]
#[x_kube(validation = Rule::new(
    "!has(oldSelf.roleArn) || (has(self.roleArn) && self.roleArn == oldSelf.roleArn)"
).message("roleArn cannot be changed or removed once set: a store lives in one account; create a new resource to manage a store in another account"))]
#[x_kube(validation = Rule::new(
    "!has(self.externalIdSecretRef) || has(self.roleArn)"
).message("externalIdSecretRef needs roleArn: the external id is sent when assuming that role"))]
#[serde(rename_all = "camelCase")]
pub struct ExternalKeyStoreSpec {
    /// KMS `CustomKeyStoreName`, unique in the account and Region. Defaults to
    /// `metadata.name`. It appears in CloudTrail logs: put no secret in it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256))]
    pub key_store_name: Option<String>,

    /// AWS Region of the store. Defaults to the operator's AWS configuration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self.matches('^[a-z]{2}(-[a-z]+)+-[0-9]+$')").message("region must look like eu-west-1"))]
    pub region: Option<String>,

    /// An IAM role the operator assumes (STS AssumeRole) for every KMS call
    /// of this store: the store lives in the role's account. Used only if
    /// the cluster admin allowed it for this namespace (the operator's
    /// `--allow-role`, chart value `roleAllowList`). Absent: the operator's
    /// own identity. May be added, not changed or removed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 20, max = 2048))]
    #[x_kube(validation = Rule::new("self.matches('^arn:aws[a-z-]*:iam::[0-9]{12}:role/.+$')").message("roleArn must be an IAM role ARN: arn:aws:iam::<12-digit account>:role/<name>"))]
    pub role_arn: Option<String>,

    /// The STS external id of `roleArn`, read from a Secret in this
    /// namespace. Never shown in status, logs or Events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external_id_secret_ref: Option<SecretKeyRef>,

    /// Adopt exactly this existing store (`cks-...`) instead of creating or
    /// adopting by name. Immutable once set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 64))]
    pub key_store_id: Option<String>,

    /// How KMS reaches the external key store proxy.
    pub proxy: ProxySpec,

    /// Desired connection state of the store.
    #[serde(default)]
    pub connection_state: DesiredConnectionState,

    /// What deleting this resource does to the store. `Retain` (default) leaves
    /// it untouched; `Delete` disconnects and deletes it (refused by KMS while
    /// it still holds KMS keys).
    #[serde(default)]
    pub deletion_policy: DeletionPolicy,

    /// `Full` manages the store; `ObserveOnly` reports drift and the plan but
    /// changes nothing.
    #[serde(default)]
    pub management_policy: ManagementPolicy,

    /// `RequireApproval` stops before any disconnect until the annotation
    /// `xks-operator.io/approve-generation` equals `metadata.generation`.
    #[serde(default)]
    pub disruptive_updates: DisruptiveUpdates,

    /// `Direct` (default): the operator itself calls the new proxy
    /// (GetHealthStatus, and GetKeyMetadata for every key of the store) before
    /// any disconnect. `KmsOnly`: skip those calls, for proxies the cluster
    /// cannot reach (VPC-only); KMS still health-checks the new values on
    /// update and connect. The status says when checks were skipped.
    #[serde(default)]
    pub proxy_checks: ProxyChecks,

    /// `Automatic` (default): if the new proxy fails its health check or the
    /// store fails to connect after a disruptive update, restore the
    /// previous proxy location and reconnect.
    #[serde(default)]
    pub rollback: RollbackPolicy,

    /// Interval of the drift check against KMS, e.g. `5m`, `30s`, `1h`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self.matches('^[1-9][0-9]{0,5}(s|m|h)$')").message("driftInterval must be a positive number (at most 6 digits) followed by s, m or h, e.g. 5m"))]
    pub drift_interval: Option<String>,

    /// Stop all reconciliation (checked before any AWS call).
    #[serde(default)]
    pub suspend: bool,
}

/// The proxy configuration (`XksProxy*` fields of KMS).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(validation = Rule::new(
    "self.connectivity != 'VpcEndpointService' || has(self.vpcEndpointService)"
).message("proxy.vpcEndpointService is required when connectivity is VpcEndpointService"))]
#[x_kube(validation = Rule::new(
    "self.connectivity != 'PublicEndpoint' || !has(self.vpcEndpointService)"
).message("proxy.vpcEndpointService must be omitted when connectivity is PublicEndpoint"))]
#[serde(rename_all = "camelCase")]
pub struct ProxySpec {
    /// `PublicEndpoint` or `VpcEndpointService`.
    #[serde(default)]
    pub connectivity: ConnectivitySpec,

    /// `https://` and a host name: no port, no path, no trailing slash. For a
    /// VPC endpoint service, its private DNS name.
    #[schemars(length(min = 10, max = 128))]
    #[x_kube(validation = Rule::new("self.matches('^https://[a-zA-Z0-9.-]+$')").message("uriEndpoint must be https:// followed by a host name, with no port, path or trailing slash"))]
    pub uri_endpoint: String,

    /// Path of the proxy API, ending in `/kms/xks/v1` (or another version).
    #[schemars(length(min = 10, max = 128))]
    #[x_kube(validation = Rule::new("self.matches('^(/[a-zA-Z0-9/_-]+)?/kms/xks/v[0-9]{1,2}$')").message("uriPath must end in /kms/xks/vN, with an optional prefix of letters, digits, /, _ and -"))]
    pub uri_path: String,

    /// Required for `VpcEndpointService`, omitted otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vpc_endpoint_service: Option<VpcEndpointService>,

    /// Secret holding the proxy credential, in this resource's namespace.
    pub credentials_secret_ref: CredentialsSecretRef,
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct VpcEndpointService {
    /// e.g. `com.amazonaws.vpce.eu-west-1.vpce-svc-0123456789abcdef0`.
    #[schemars(length(min = 20, max = 64))]
    #[x_kube(validation = Rule::new("self.matches('^(com|eu)[.]amazonaws[.]vpce[.]([a-z]+-){2,3}[0-9]+[.]vpce-svc-[0-9a-z]+$')").message("vpcEndpointService.name must look like com.amazonaws.vpce.<region>.vpce-svc-<id>"))]
    pub name: String,
    /// Account that owns the endpoint service, when it is not the store's account.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self.matches('^[0-9]{12}$')").message("vpcEndpointService.owner must be a 12-digit AWS account id"))]
    pub owner: Option<String>,
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CredentialsSecretRef {
    /// Name of the Secret.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Key of the access key id in the Secret (default `accessKeyId`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    #[x_kube(validation = Rule::new("self.matches('^[-._a-zA-Z0-9]+$')").message("accessKeyIdKey must be a Secret key: letters, digits, '-', '_' and '.'"))]
    pub access_key_id_key: Option<String>,
    /// Key of the secret access key in the Secret (default `secretAccessKey`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    #[x_kube(validation = Rule::new("self.matches('^[-._a-zA-Z0-9]+$')").message("secretAccessKeyKey must be a Secret key: letters, digits, '-', '_' and '.'"))]
    pub secret_access_key_key: Option<String>,
}

/// A key of a Secret in the resource's namespace.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// Name of the Secret.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Key in the Secret.
    #[schemars(length(min = 1, max = 253))]
    #[x_kube(validation = Rule::new("self.matches('^[-._a-zA-Z0-9]+$')").message("key must be a Secret key: letters, digits, '-', '_' and '.'"))]
    pub key: String,
}

impl CredentialsSecretRef {
    pub fn access_key_id_key(&self) -> &str {
        self.access_key_id_key.as_deref().unwrap_or("accessKeyId")
    }
    pub fn secret_access_key_key(&self) -> &str {
        self.secret_access_key_key
            .as_deref()
            .unwrap_or("secretAccessKey")
    }
}

macro_rules! spec_enum {
    ($(#[$doc:meta])* $name:ident { $default:ident $(, $other:ident)* }) => {
        $(#[$doc])*
        #[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
        pub enum $name {
            #[default]
            $default,
            $($other,)*
        }
    };
}

spec_enum!(
    /// How KMS reaches the proxy.
    ConnectivitySpec { PublicEndpoint, VpcEndpointService }
);
spec_enum!(
    /// Desired KMS connection state.
    DesiredConnectionState { Connected, Disconnected }
);
spec_enum!(
    /// What deleting the resource does to the store.
    DeletionPolicy { Retain, Delete }
);
spec_enum!(
    /// Whether the operator changes the store or only reports.
    ManagementPolicy { Full, ObserveOnly }
);
spec_enum!(
    /// Whether changes that disconnect the store need approval.
    DisruptiveUpdates { Allow, RequireApproval }
);
spec_enum!(
    /// Whether the operator calls the proxy itself before switching.
    ProxyChecks { Direct, KmsOnly }
);
spec_enum!(
    /// Whether a failed reconnect restores the previous proxy location.
    RollbackPolicy { Automatic, Disabled }
);

impl From<ConnectivitySpec> for crate::model::Connectivity {
    fn from(c: ConnectivitySpec) -> Self {
        match c {
            ConnectivitySpec::PublicEndpoint => Self::PublicEndpoint,
            ConnectivitySpec::VpcEndpointService => Self::VpcEndpointService,
        }
    }
}

impl ExternalKeyStore {
    /// The KMS store name: `spec.keyStoreName`, else `metadata.name`.
    pub fn key_store_name(&self) -> String {
        self.spec
            .key_store_name
            .clone()
            .or_else(|| self.metadata.name.clone())
            .unwrap_or_default()
    }
}
