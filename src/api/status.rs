use crate::model::{ConnectionState, ProxyConfig};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::fmt;

/// What the operator observed and did. Never holds the proxy secret.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ExternalKeyStoreStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The KMS store this resource manages (created or adopted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_store_id: Option<String>,
    /// `CustomKeyStoreName` as KMS reports it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_store_name: Option<String>,
    /// `ConnectionState` as KMS last reported it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<String>")]
    pub connection_state: Option<ConnectionState>,
    /// `ConnectionErrorCode` when the store is FAILED; the Ready condition's
    /// message says what to do about it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection_error_code: Option<String>,
    /// The proxy configuration KMS reports (no secret).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy: Option<ProxyConfig>,
    /// Keyed fingerprint of the proxy secret the operator last applied, to
    /// detect a rotated secret behind an unchanged access key id. Not the secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential_fingerprint: Option<String>,
    /// kstatus conditions: Ready, Reconciling, Stalled.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The sequence running now, or the last one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operation: Option<Operation>,
    /// Echo of the `reconcile.fluxcd.io/requestedAt` annotation last handled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_handled_reconcile_at: Option<String>,
    /// A failure that can pass by itself, which the operator is retrying:
    /// absent when nothing is being retried.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<RetryStatus>,
    /// The store's proxy as the operator's own GetHealthStatus call last
    /// saw it (`proxyChecks: Direct` only); the `ProxyHealthy` condition
    /// says whether it is healthy and, when the call failed, why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy_health: Option<ProxyHealth>,
}

/// What the proxy health watch found. Key manager ids and vendor names are
/// the proxy's own words, never a secret.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProxyHealth {
    /// When the operator called GetHealthStatus (RFC 3339). Written when
    /// the result changes, else at most every 15 minutes (each status write
    /// costs the API server a write and every watcher an event); the metric
    /// `xks_operator_proxy_health_checked_timestamp_seconds` has every call.
    pub checked_at: String,
    /// `xksProxyFleetSize`: proxy instances behind the endpoint. Absent
    /// when the call failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "optional_count_schema")]
    pub fleet_size: Option<u32>,
    /// `xksProxyVendor`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy_vendor: Option<String>,
    /// `xksProxyModel`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy_model: Option<String>,
    /// `ekmVendor`: the vendor of the external key managers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ekm_vendor: Option<String>,
    /// `ekmFleetDetails`: each external key manager and its health. Empty
    /// when the call failed (the health is then unknown).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub key_managers: Vec<KeyManagerHealthStatus>,
}

/// One external key manager behind the proxy.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct KeyManagerHealthStatus {
    /// Its id, as the proxy reports it.
    pub id: String,
    /// Its model, as the proxy reports it.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub model: String,
    pub health: KeyManagerHealthState,
}

/// `healthStatus` of a key manager, as the XKS proxy API spells it.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum KeyManagerHealthState {
    /// Serves requests.
    Active,
    /// Serves requests, with less capacity or redundancy.
    Degraded,
    /// Serves nothing.
    Unavailable,
}

impl KeyManagerHealthState {
    pub const ALL: [Self; 3] = [Self::Active, Self::Degraded, Self::Unavailable];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "ACTIVE",
            Self::Degraded => "DEGRADED",
            Self::Unavailable => "UNAVAILABLE",
        }
    }
}

impl fmt::Display for KeyManagerHealthState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A failure the operator retries by itself, with backoff.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RetryStatus {
    /// How many times it has failed in a row.
    #[schemars(schema_with = "count_schema")]
    pub attempts: u32,
    /// The step that failed; absent when describing the store failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<StepName>,
    /// The condition reason of the last failure.
    pub reason: String,
    /// The last failure, in words (never a secret).
    pub last_error: String,
    /// When the next attempt is due (RFC 3339).
    pub next_attempt_at: String,
    /// How many calls the step had issued when it failed: a Connect that
    /// ended FAILED is disconnected first when it is retried.
    #[serde(default, skip_serializing_if = "is_zero")]
    #[schemars(schema_with = "count_schema")]
    pub calls: u32,
}

/// A kstatus-style condition.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    #[serde(rename = "type")]
    pub type_: String,
    /// `True`, `False` or `Unknown`.
    #[schemars(with = "String")]
    pub status: ConditionStatus,
    pub reason: String,
    pub message: String,
    /// RFC 3339.
    pub last_transition_time: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

impl Condition {
    pub fn is_true(&self) -> bool {
        self.status == ConditionStatus::True
    }
}

/// The value of a condition, as Kubernetes spells it.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum ConditionStatus {
    True,
    False,
    #[default]
    Unknown,
}

impl fmt::Display for ConditionStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::True => "True",
            Self::False => "False",
            Self::Unknown => "Unknown",
        })
    }
}

impl ConditionStatus {
    pub fn from_bool(value: bool) -> Self {
        if value { Self::True } else { Self::False }
    }
}

/// A sequence of steps brought to KMS, recorded so that a crash anywhere
/// resumes it instead of starting over.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Operation {
    /// Why it runs, e.g. "uriEndpoint changed".
    pub trigger: String,
    pub phase: OperationPhase,
    /// Whether it disconnects the store (its KMS keys are unusable meanwhile).
    pub disruptive: bool,
    /// Digest of the desired state this operation converges to; a different
    /// digest means the spec or secret changed and the plan is made afresh.
    pub target: String,
    /// The generation it was planned for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<i64>,
    pub started_at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
    pub steps: Vec<Step>,
    /// The proxy location before the update, recorded before it is changed,
    /// to roll back to if the store fails to connect afterwards.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous: Option<ProxyConfig>,
    /// Outcome in words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The rollback followed failures that can pass (the new proxy timed
    /// out, was unreachable...): the change is tried again after a wait,
    /// from Preflight, instead of waiting for a person.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub retry_after_rollback: bool,
    /// Rollbacks of this change after failures that can pass, in a row: the
    /// wait before the next try grows with it.
    #[serde(default, skip_serializing_if = "is_zero")]
    #[schemars(schema_with = "count_schema")]
    pub transient_rollbacks: u32,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum OperationPhase {
    /// Planned under `managementPolicy: ObserveOnly`: not run.
    Planned,
    Running,
    /// Waiting for the approval annotation before disconnecting.
    AwaitingApproval,
    Succeeded,
    /// A terminal error stopped it; see the failed step.
    Failed,
    /// Restoring the previous proxy location after a failed reconnect.
    RollingBack,
    /// The previous proxy location was restored and the store reconnected.
    RolledBack,
}

impl fmt::Display for OperationPhase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Planned => "Planned",
            Self::Running => "Running",
            Self::AwaitingApproval => "AwaitingApproval",
            Self::Succeeded => "Succeeded",
            Self::Failed => "Failed",
            Self::RollingBack => "RollingBack",
            Self::RolledBack => "RolledBack",
        })
    }
}

impl OperationPhase {
    pub fn is_finished(self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed | Self::RolledBack)
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Step {
    pub name: StepName,
    pub state: StepState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// How many times its KMS or proxy call was issued.
    #[serde(default, skip_serializing_if = "is_zero")]
    #[schemars(schema_with = "count_schema")]
    pub attempts: u32,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// A count as Kubernetes knows it: `format: int32` (schemars would say
/// `uint32`, which the API server warns about on every apply).
fn count_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "integer",
        "format": "int32",
        "minimum": 0
    })
}

fn optional_count_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
    count_schema(generator)
}

impl Step {
    pub fn pending(name: StepName) -> Self {
        Self {
            name,
            state: StepState::Pending,
            started_at: None,
            finished_at: None,
            message: None,
            attempts: 0,
        }
    }
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
pub enum StepName {
    /// The operator calls the NEW proxy: health, and every key of the store.
    Preflight,
    /// CreateCustomKeyStore (guarded: a retry adopts by name first).
    Create,
    /// DisconnectCustomKeyStore, then wait for DISCONNECTED.
    Disconnect,
    /// UpdateCustomKeyStore with every field that differs.
    Update,
    /// The operator calls the proxy at the configuration now in KMS.
    HealthCheck,
    /// ConnectCustomKeyStore, then wait for CONNECTED.
    Connect,
    /// DeleteCustomKeyStore.
    Delete,
    /// Rollback: disconnect the store that failed to connect.
    RollbackDisconnect,
    /// Rollback: UpdateCustomKeyStore back to the recorded previous location.
    RestorePrevious,
    /// Rollback: connect again at the previous location.
    RollbackConnect,
}

impl fmt::Display for StepName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Preflight => "Preflight",
            Self::Create => "Create",
            Self::Disconnect => "Disconnect",
            Self::Update => "Update",
            Self::HealthCheck => "HealthCheck",
            Self::Connect => "Connect",
            Self::Delete => "Delete",
            Self::RollbackDisconnect => "RollbackDisconnect",
            Self::RestorePrevious => "RestorePrevious",
            Self::RollbackConnect => "RollbackConnect",
        })
    }
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum StepState {
    Pending,
    Running,
    Succeeded,
    Failed,
    Skipped,
}

impl fmt::Display for StepState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Pending => "Pending",
            Self::Running => "Running",
            Self::Succeeded => "Succeeded",
            Self::Failed => "Failed",
            Self::Skipped => "Skipped",
        })
    }
}

impl StepState {
    pub fn is_done(self) -> bool {
        matches!(self, Self::Succeeded | Self::Skipped)
    }
}
