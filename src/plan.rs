//! The planner: pure. From what the user wants, what KMS reports and what the
//! status recorded, decide what to do next. No I/O and no clock, so every
//! decision can be tested exhaustively (see the property tests below).
//!
//! The plan for one change is computed once, recorded in status as an
//! [`Operation`], and then continued step by step; re-planning happens only
//! when the desired state changes (a new target digest). That is what makes a
//! crash between any two steps resume the sequence instead of restarting it.

use crate::api::{
    DeletionPolicy, DesiredConnectionState, Operation, OperationPhase, ProxyChecks, RollbackPolicy,
    Step, StepName, StepState,
};
use crate::error::ErrorCategory;
use crate::model::{ConnectionState, Connectivity, ObservedStore, ProxyConfig};
use sha2::{Digest, Sha256};

/// The store as the user declares it, resolved (Secret read, defaults applied).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Desired {
    pub name: String,
    /// The proxy configuration, including the access key id from the Secret.
    pub proxy: ProxyConfig,
    /// Keyed fingerprint of the secret in the Secret (never the secret).
    pub credential_fingerprint: String,
    pub connection: DesiredConnectionState,
    pub proxy_checks: ProxyChecks,
    pub deletion_policy: DeletionPolicy,
    /// `spec.keyStoreId`: adopt exactly this store, never create one.
    pub pinned_id: Option<String>,
}

/// Everything the planner looks at.
#[derive(Clone, Copy, Debug)]
pub struct PlanInput<'a> {
    pub desired: &'a Desired,
    pub observed: Option<&'a ObservedStore>,
    /// `status.credentialFingerprint`: the secret the operator last applied.
    pub applied_fingerprint: Option<&'a str>,
    /// `status.operation`.
    pub recorded: Option<&'a Operation>,
    /// The resource is being deleted.
    pub deleting: bool,
    /// A change rolled back after failures that can pass is due to be
    /// tried again.
    pub rollback_retry_due: bool,
}

/// Which KMS fields differ between the desired and the observed store.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Diff {
    pub name: bool,
    pub credential: bool,
    pub uri_path: bool,
    pub uri_endpoint: bool,
    pub connectivity: bool,
    pub vpc_endpoint_service_name: bool,
    pub vpc_endpoint_service_owner: bool,
}

impl Diff {
    /// Fields KMS accepts only while the store is DISCONNECTED.
    pub fn needs_disconnect(&self) -> bool {
        self.uri_endpoint
            || self.connectivity
            || self.vpc_endpoint_service_name
            || self.vpc_endpoint_service_owner
    }

    /// Fields that change how KMS reaches or authenticates to the proxy, so
    /// the new values must be proven before they are applied.
    pub fn changes_proxy_access(&self) -> bool {
        self.credential || self.uri_path || self.needs_disconnect()
    }

    pub fn any(&self) -> bool {
        self.name || self.changes_proxy_access()
    }

    /// The changed fields, in the resource's own words.
    pub fn changed_fields(&self) -> Vec<&'static str> {
        [
            (self.name, "keyStoreName"),
            (self.credential, "credential"),
            (self.uri_path, "uriPath"),
            (self.uri_endpoint, "uriEndpoint"),
            (self.connectivity, "connectivity"),
            (self.vpc_endpoint_service_name, "vpcEndpointService.name"),
            (self.vpc_endpoint_service_owner, "vpcEndpointService.owner"),
        ]
        .into_iter()
        .filter_map(|(changed, field)| changed.then_some(field))
        .collect()
    }
}

/// Compare the desired store with what KMS reports. The credential differs
/// when the access key id differs, or when the secret's fingerprint is not the
/// one the operator last applied (KMS never shows the secret; an adopted store
/// whose secret the operator never applied gets it pushed once).
pub fn diff(
    desired: &Desired,
    observed: &ObservedStore,
    applied_fingerprint: Option<&str>,
) -> Diff {
    let want = &desired.proxy;
    let Some(have) = observed.proxy.as_ref() else {
        // Not an XKS store: nothing comparable. Callers refuse such stores.
        return Diff::default();
    };
    let vpc_name = |c: &ProxyConfig| {
        (c.connectivity == Connectivity::VpcEndpointService)
            .then(|| c.vpc_endpoint_service_name.clone().unwrap_or_default())
    };
    let vpc_owner = |c: &ProxyConfig| {
        (c.connectivity == Connectivity::VpcEndpointService)
            .then(|| c.vpc_endpoint_service_owner.clone())
            .flatten()
    };
    Diff {
        name: desired.name != observed.name,
        credential: want.access_key_id != have.access_key_id
            || applied_fingerprint != Some(desired.credential_fingerprint.as_str()),
        uri_path: want.uri_path != have.uri_path,
        uri_endpoint: want.uri_endpoint != have.uri_endpoint,
        connectivity: want.connectivity != have.connectivity,
        vpc_endpoint_service_name: vpc_name(want) != vpc_name(have),
        vpc_endpoint_service_owner: vpc_owner(want) != vpc_owner(have),
    }
}

/// A new operation to record and then run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewOperation {
    pub trigger: String,
    /// Whether it makes a usable store unusable for a while.
    pub disruptive: bool,
    pub target: String,
    pub steps: Vec<StepName>,
}

/// What to do now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// KMS matches the resource.
    InSync,
    /// The recorded operation is still under way: continue it.
    Continue,
    /// Record this operation, then run its first step.
    Start(NewOperation),
    /// The same target already failed terminally or was rolled back; it is
    /// retried when the spec or the Secret changes, or a reconcile is requested.
    Blocked { message: String },
    /// Deletion needs nothing from KMS: remove the finalizer.
    Release,
    /// The operator cannot manage what it found.
    Refuse {
        category: ErrorCategory,
        message: String,
    },
}

/// Digest of the desired state: an operation belongs to the target it was
/// planned for.
pub fn target_digest(desired: &Desired, deleting: bool) -> String {
    let mut h = Sha256::new();
    let p = &desired.proxy;
    let fields: [&str; 10] = [
        if deleting { "delete" } else { "apply" },
        &desired.name,
        p.connectivity.as_kms(),
        &p.uri_endpoint,
        &p.uri_path,
        p.vpc_endpoint_service_name.as_deref().unwrap_or(""),
        p.vpc_endpoint_service_owner.as_deref().unwrap_or(""),
        &p.access_key_id,
        &desired.credential_fingerprint,
        match desired.connection {
            DesiredConnectionState::Connected => "Connected",
            DesiredConnectionState::Disconnected => "Disconnected",
        },
    ];
    for f in fields {
        // Length-prefixed so that no two field lists collide.
        h.update((f.len() as u64).to_be_bytes());
        h.update(f.as_bytes());
    }
    hex::encode(&h.finalize()[..12])
}

/// Decide what to do next. See the module docs for the model.
pub fn decide(input: &PlanInput<'_>) -> Decision {
    let desired = input.desired;
    let target = target_digest(desired, input.deleting);

    if let Some(op) = input.recorded.filter(|op| op.target == target) {
        match op.phase {
            OperationPhase::Running
            | OperationPhase::RollingBack
            | OperationPhase::AwaitingApproval => return Decision::Continue,
            // Rolled back after failures that can pass, and the wait is
            // over: plan afresh (from Preflight, which proves the new proxy
            // again before anything disconnects).
            OperationPhase::RolledBack if op.retry_after_rollback && input.rollback_retry_due => {}
            OperationPhase::Failed | OperationPhase::RolledBack => {
                return Decision::Blocked {
                    message: format!(
                        "the last attempt at this change ended {}: {}; change the spec or the Secret, or request a reconcile, to try again",
                        op.phase,
                        op.message.as_deref().unwrap_or("see status.operation")
                    ),
                };
            }
            OperationPhase::Succeeded | OperationPhase::Planned => {}
        }
    }

    if input.deleting {
        return plan_deletion(desired, input.observed, target);
    }

    let Some(store) = input.observed else {
        if let Some(id) = &desired.pinned_id {
            return Decision::Refuse {
                category: ErrorCategory::NotFound,
                message: format!(
                    "spec.keyStoreId {id} does not exist in KMS in this account and Region; the operator never creates a store in place of a pinned id"
                ),
            };
        }
        let mut steps = vec![StepName::Preflight, StepName::Create];
        if desired.connection == DesiredConnectionState::Connected {
            steps.push(StepName::Connect);
        }
        return Decision::Start(NewOperation {
            trigger: format!("store {:?} does not exist in KMS", desired.name),
            disruptive: false,
            target,
            steps,
        });
    };

    if store.store_type != "EXTERNAL_KEY_STORE" || store.proxy.is_none() {
        return Decision::Refuse {
            category: ErrorCategory::Unsupported,
            message: format!(
                "store {} is of type {}, not EXTERNAL_KEY_STORE; the operator manages external key stores only",
                store.id, store.store_type
            ),
        };
    }

    let d = diff(desired, store, input.applied_fingerprint);
    let steps = steps_for(desired, store.connection_state, &d);
    if steps.is_empty() {
        return Decision::InSync;
    }
    Decision::Start(NewOperation {
        trigger: trigger_text(desired, store, &d),
        disruptive: d.needs_disconnect()
            && matches!(
                store.connection_state,
                ConnectionState::Connected | ConnectionState::Connecting
            ),
        target,
        steps,
    })
}

/// The ordered steps that bring a store in `state` with difference `d` to
/// the desired state. The order is the safety argument:
/// - Preflight proves the NEW proxy values before anything changes;
/// - Disconnect precedes any Update of a field that needs DISCONNECTED,
///   and a FAILED store is always disconnected first (KMS requires it);
/// - HealthCheck proves the proxy at the values now in KMS before Connect.
pub fn steps_for(desired: &Desired, state: ConnectionState, d: &Diff) -> Vec<StepName> {
    use ConnectionState as S;
    let want_connected = desired.connection == DesiredConnectionState::Connected;
    let live = matches!(state, S::Connected | S::Connecting);
    let must_disconnect = matches!(state, S::Failed | S::Disconnecting)
        || (live && (d.needs_disconnect() || !want_connected));

    let mut steps = Vec::new();
    if d.changes_proxy_access() {
        steps.push(StepName::Preflight);
    }
    if must_disconnect {
        steps.push(StepName::Disconnect);
    }
    if d.any() {
        steps.push(StepName::Update);
    }
    if d.needs_disconnect() {
        steps.push(StepName::HealthCheck);
    }
    let disconnected_after = must_disconnect || state == S::Disconnected;
    if want_connected && (disconnected_after || state == S::Connecting) {
        steps.push(StepName::Connect);
    }
    steps
}

fn plan_deletion(desired: &Desired, observed: Option<&ObservedStore>, target: String) -> Decision {
    if desired.deletion_policy == DeletionPolicy::Retain {
        return Decision::Release;
    }
    let Some(store) = observed else {
        return Decision::Release;
    };
    let mut steps = Vec::new();
    if store.connection_state != ConnectionState::Disconnected {
        steps.push(StepName::Disconnect);
    }
    steps.push(StepName::Delete);
    Decision::Start(NewOperation {
        trigger: format!(
            "resource deleted with deletionPolicy Delete: deleting store {}",
            store.id
        ),
        disruptive: matches!(
            store.connection_state,
            ConnectionState::Connected | ConnectionState::Connecting
        ),
        target,
        steps,
    })
}

/// The operation to record for `new`: its steps pending, except the
/// operator's own proxy calls under `proxyChecks: KmsOnly`, which are
/// skipped and say so; planned only (not run) under `ObserveOnly`.
/// `previous` is the proxy location before anything changes: what a
/// rollback restores.
pub fn operation(
    new: NewOperation,
    checks: ProxyChecks,
    observe_only: bool,
    generation: Option<i64>,
    started_at: &str,
    previous: Option<ProxyConfig>,
    recorded: Option<&Operation>,
) -> Operation {
    // A change tried again after a rollback keeps its count of them.
    let transient_rollbacks = recorded
        .filter(|op| op.target == new.target && op.retry_after_rollback)
        .map_or(0, |op| op.transient_rollbacks);
    let steps = new
        .steps
        .into_iter()
        .map(|name| {
            let mut step = Step::pending(name);
            if checks == ProxyChecks::KmsOnly && calls_the_proxy(name) {
                step.state = StepState::Skipped;
                step.message = Some(
                    "skipped: proxyChecks is KmsOnly, so the operator does not call the proxy itself; KMS health-checks the new values on update and connect".into(),
                );
            }
            step
        })
        .collect();
    Operation {
        trigger: new.trigger,
        phase: if observe_only {
            OperationPhase::Planned
        } else {
            OperationPhase::Running
        },
        disruptive: new.disruptive,
        target: new.target,
        generation,
        started_at: started_at.to_string(),
        finished_at: None,
        steps,
        previous,
        message: None,
        retry_after_rollback: false,
        transient_rollbacks,
    }
}

/// The steps in which the operator itself calls the proxy.
pub fn calls_the_proxy(step: StepName) -> bool {
    matches!(step, StepName::Preflight | StepName::HealthCheck)
}

/// What gates a recorded operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Gate {
    /// `disruptiveUpdates: RequireApproval`.
    pub require_approval: bool,
    /// The approval annotation names the current generation.
    pub approved: bool,
    /// The resource is being deleted (deletion needs no approval).
    pub deleting: bool,
}

/// What a recorded operation does next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Next {
    /// Run the step at this index.
    Run(usize),
    /// Stop before the disconnect until the change is approved.
    AwaitApproval,
    /// Every step is done (or failed, during a rollback): conclude it.
    Finish,
}

/// The next step of `op`. A failed step stays failed: during a rollback the
/// steps after it run, and the failed one is history. A disruptive change
/// that needs approval never starts its Disconnect unapproved.
pub fn next(op: &Operation, gate: Gate) -> Next {
    let Some(index) = op
        .steps
        .iter()
        .position(|s| matches!(s.state, StepState::Pending | StepState::Running))
    else {
        return Next::Finish;
    };
    let step = &op.steps[index];
    if step.name == StepName::Disconnect
        && step.state == StepState::Pending
        && op.disruptive
        && gate.require_approval
        && !gate.approved
        && !gate.deleting
    {
        return Next::AwaitApproval;
    }
    Next::Run(index)
}

/// The rollback of `op` once `failed` has failed for good (`why`): after
/// the health check or Connect fails following an update that moved the
/// proxy, put the previous location back and reconnect, rather than leave
/// the store disconnected until a person acts. `None` when it does not
/// apply: other steps, deletion, `rollback: Disabled`, a rollback already
/// under way, no update done, or the location unchanged.
pub fn rollback(
    op: &Operation,
    current: Option<&ProxyConfig>,
    failed: StepName,
    why: &str,
    policy: RollbackPolicy,
    deleting: bool,
    transient: bool,
) -> Option<Operation> {
    if !rollback_applies(op, current, failed, policy, deleting) {
        return None;
    }
    let previous = op.previous.as_ref()?;
    let mut rolled = op.clone();
    rolled.phase = OperationPhase::RollingBack;
    rolled.retry_after_rollback = transient;
    if transient {
        rolled.transient_rollbacks = rolled.transient_rollbacks.saturating_add(1);
    }
    // The rest of the plan (Connect, after a failed health check) would go
    // to the proxy that just failed: the rollback replaces it.
    for step in rolled
        .steps
        .iter_mut()
        .filter(|s| s.state == StepState::Pending)
    {
        step.state = StepState::Skipped;
        step.message = Some(format!("skipped: {failed} failed, rolling back"));
    }
    rolled.message = Some(format!(
        "{failed} failed after the update: {why}; rolling back to {}{}",
        previous.uri_endpoint, previous.uri_path
    ));
    rolled.steps.extend(
        [
            StepName::RollbackDisconnect,
            StepName::RestorePrevious,
            StepName::RollbackConnect,
        ]
        .into_iter()
        .map(Step::pending),
    );
    Some(rolled)
}

/// Whether a failure of `failed` would be rolled back (see [`rollback`]):
/// the retry policy retries such failures only a few times.
pub fn rollback_applies(
    op: &Operation,
    current: Option<&ProxyConfig>,
    failed: StepName,
    policy: RollbackPolicy,
    deleting: bool,
) -> bool {
    let updated = op
        .steps
        .iter()
        .any(|s| s.name == StepName::Update && s.state == StepState::Succeeded);
    let moved = match (current, op.previous.as_ref()) {
        (Some(c), Some(p)) => {
            c.uri_endpoint != p.uri_endpoint
                || c.uri_path != p.uri_path
                || c.connectivity != p.connectivity
                || c.vpc_endpoint_service_name != p.vpc_endpoint_service_name
                || c.vpc_endpoint_service_owner != p.vpc_endpoint_service_owner
        }
        _ => false,
    };
    matches!(failed, StepName::HealthCheck | StepName::Connect)
        && !deleting
        && policy == RollbackPolicy::Automatic
        && op.phase != OperationPhase::RollingBack
        && updated
        && moved
}

fn trigger_text(desired: &Desired, store: &ObservedStore, d: &Diff) -> String {
    let mut parts: Vec<String> = d
        .changed_fields()
        .into_iter()
        .map(|f| {
            if f == "credential" {
                "credential rotated".to_string()
            } else {
                format!("{f} changed")
            }
        })
        .collect();
    if store.connection_state == ConnectionState::Failed {
        parts.push(format!(
            "store is FAILED ({})",
            store
                .connection_error_code
                .as_deref()
                .unwrap_or("no error code")
        ));
    }
    let want = match desired.connection {
        DesiredConnectionState::Connected => ConnectionState::Connected,
        DesiredConnectionState::Disconnected => ConnectionState::Disconnected,
    };
    if parts.is_empty() && store.connection_state != want {
        parts.push(format!(
            "desired {want}, store is {}",
            store.connection_state
        ));
    }
    parts.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{Step, StepState};
    use proptest::prelude::*;

    fn desired() -> Desired {
        Desired {
            name: "payments".into(),
            proxy: ProxyConfig {
                connectivity: Connectivity::PublicEndpoint,
                uri_endpoint: "https://xks-a.example.com".into(),
                uri_path: "/example/kms/xks/v1".into(),
                vpc_endpoint_service_name: None,
                vpc_endpoint_service_owner: None,
                access_key_id: "AKIDAAAAAAAAAAAAAAAA".into(),
            },
            credential_fingerprint: "fp1".into(),
            connection: DesiredConnectionState::Connected,
            proxy_checks: ProxyChecks::Direct,
            deletion_policy: DeletionPolicy::Retain,
            pinned_id: None,
        }
    }

    fn observed_from(d: &Desired, state: ConnectionState) -> ObservedStore {
        ObservedStore {
            id: "cks-0123456789abcdef0".into(),
            name: d.name.clone(),
            store_type: "EXTERNAL_KEY_STORE".into(),
            connection_state: state,
            connection_error_code: (state == ConnectionState::Failed)
                .then(|| "NETWORK_ERRORS".to_string()),
            proxy: Some(d.proxy.clone()),
        }
    }

    /// Input with no operation recorded.
    fn fresh<'a>(
        desired: &'a Desired,
        observed: Option<&'a ObservedStore>,
        applied_fingerprint: Option<&'a str>,
        deleting: bool,
    ) -> PlanInput<'a> {
        PlanInput {
            desired,
            observed,
            applied_fingerprint,
            recorded: None,
            deleting,
            rollback_retry_due: false,
        }
    }

    fn start_steps(decision: Decision) -> Vec<StepName> {
        match decision {
            Decision::Start(op) => op.steps,
            other => panic!("expected Start, got {other:?}"),
        }
    }

    #[test]
    fn in_sync_store_needs_nothing() {
        let d = desired();
        let s = observed_from(&d, ConnectionState::Connected);
        let input = fresh(&d, Some(&s), Some("fp1"), false);
        assert_eq!(decide(&input), Decision::InSync);
    }

    #[test]
    fn endpoint_change_on_connected_store_runs_the_full_sequence() {
        let mut d = desired();
        let s = observed_from(&d, ConnectionState::Connected);
        d.proxy.uri_endpoint = "https://xks-b.example.com".into();
        let input = fresh(&d, Some(&s), Some("fp1"), false);
        let Decision::Start(op) = decide(&input) else {
            panic!("expected an operation")
        };
        assert!(op.disruptive);
        assert_eq!(op.trigger, "uriEndpoint changed");
        assert_eq!(
            op.steps,
            vec![
                StepName::Preflight,
                StepName::Disconnect,
                StepName::Update,
                StepName::HealthCheck,
                StepName::Connect
            ]
        );
    }

    #[test]
    fn rotation_with_same_access_key_id_is_online() {
        let mut d = desired();
        let s = observed_from(&d, ConnectionState::Connected);
        d.credential_fingerprint = "fp2".into();
        let input = fresh(&d, Some(&s), Some("fp1"), false);
        assert_eq!(
            start_steps(decide(&input)),
            vec![StepName::Preflight, StepName::Update]
        );
    }

    #[test]
    fn rename_alone_needs_no_preflight_and_no_disconnect() {
        let mut d = desired();
        let s = observed_from(&d, ConnectionState::Connected);
        d.name = "payments-eu".into();
        let input = fresh(&d, Some(&s), Some("fp1"), false);
        assert_eq!(start_steps(decide(&input)), vec![StepName::Update]);
    }

    #[test]
    fn failed_store_is_disconnected_before_reconnecting() {
        let d = desired();
        let s = observed_from(&d, ConnectionState::Failed);
        let input = fresh(&d, Some(&s), Some("fp1"), false);
        let Decision::Start(op) = decide(&input) else {
            panic!()
        };
        assert_eq!(op.steps, vec![StepName::Disconnect, StepName::Connect]);
        assert!(op.trigger.contains("NETWORK_ERRORS"), "{}", op.trigger);
    }

    #[test]
    fn missing_store_is_created_then_connected() {
        let d = desired();
        let input = fresh(&d, None, None, false);
        assert_eq!(
            start_steps(decide(&input)),
            vec![StepName::Preflight, StepName::Create, StepName::Connect]
        );
    }

    #[test]
    fn pinned_id_that_does_not_exist_is_refused_not_created() {
        let mut d = desired();
        d.pinned_id = Some("cks-1111111111111111a".into());
        let input = fresh(&d, None, None, false);
        assert!(matches!(
            decide(&input),
            Decision::Refuse {
                category: ErrorCategory::NotFound,
                ..
            }
        ));
    }

    #[test]
    fn cloudhsm_store_is_refused() {
        let d = desired();
        let mut s = observed_from(&d, ConnectionState::Connected);
        s.store_type = "AWS_CLOUDHSM".into();
        s.proxy = None;
        let input = fresh(&d, Some(&s), Some("fp1"), false);
        assert!(matches!(
            decide(&input),
            Decision::Refuse {
                category: ErrorCategory::Unsupported,
                ..
            }
        ));
    }

    #[test]
    fn adopted_store_gets_its_credential_pushed_once() {
        let d = desired();
        let s = observed_from(&d, ConnectionState::Connected);
        let input = fresh(&d, Some(&s), None, false);
        assert_eq!(
            start_steps(decide(&input)),
            vec![StepName::Preflight, StepName::Update]
        );
    }

    #[test]
    fn switching_to_vpc_compares_service_fields_only_for_vpc() {
        let mut d = desired();
        let s = observed_from(&d, ConnectionState::Connected);
        d.proxy.connectivity = Connectivity::VpcEndpointService;
        d.proxy.uri_endpoint = "https://xks.vpce.example.com".into();
        d.proxy.vpc_endpoint_service_name =
            Some("com.amazonaws.vpce.us-east-1.vpce-svc-0123456789abcdef0".into());
        let diff = diff(&d, &s, Some("fp1"));
        assert!(diff.connectivity && diff.uri_endpoint && diff.vpc_endpoint_service_name);
        assert!(!diff.vpc_endpoint_service_owner);
    }

    /// An operation toward `d` that ended RolledBack.
    fn rolled_back(d: &Desired, retry_after_rollback: bool) -> Operation {
        Operation {
            trigger: "uriEndpoint changed".into(),
            phase: OperationPhase::RolledBack,
            disruptive: true,
            target: target_digest(d, false),
            generation: Some(2),
            started_at: "t".into(),
            finished_at: None,
            steps: vec![],
            previous: None,
            message: Some("Connect failed".into()),
            retry_after_rollback,
            transient_rollbacks: u32::from(retry_after_rollback),
        }
    }

    #[test]
    fn same_target_that_failed_is_blocked_until_something_changes() {
        let mut d = desired();
        let s = observed_from(&d, ConnectionState::Connected);
        d.proxy.uri_endpoint = "https://xks-b.example.com".into();
        let op = rolled_back(&d, false);
        let input = PlanInput {
            desired: &d,
            observed: Some(&s),
            applied_fingerprint: Some("fp1"),
            recorded: Some(&op),
            deleting: false,
            rollback_retry_due: false,
        };
        assert!(matches!(decide(&input), Decision::Blocked { .. }));
        let mut changed = d.clone();
        changed.proxy.uri_endpoint = "https://xks-c.example.com".into();
        let input = PlanInput {
            desired: &changed,
            ..input
        };
        assert!(matches!(decide(&input), Decision::Start(_)));
    }

    /// A change rolled back after failures that can pass is tried again,
    /// afresh from Preflight, once its wait is over; not before, and never
    /// a change rolled back for a cause only a person can fix.
    #[test]
    fn a_transient_rollback_is_tried_again_when_due() {
        let mut d = desired();
        let s = observed_from(&d, ConnectionState::Connected);
        d.proxy.uri_endpoint = "https://xks-b.example.com".into();
        let op = Operation {
            transient_rollbacks: 2,
            ..rolled_back(&d, true)
        };
        let waiting = PlanInput {
            desired: &d,
            observed: Some(&s),
            applied_fingerprint: Some("fp1"),
            recorded: Some(&op),
            deleting: false,
            rollback_retry_due: false,
        };
        assert!(matches!(decide(&waiting), Decision::Blocked { .. }));
        let due = PlanInput {
            rollback_retry_due: true,
            ..waiting
        };
        let Decision::Start(new) = decide(&due) else {
            panic!("expected the change to start again");
        };
        assert_eq!(new.steps.first(), Some(&StepName::Preflight));
        let again = operation(
            new,
            ProxyChecks::Direct,
            false,
            Some(2),
            "t1",
            None,
            Some(&op),
        );
        assert_eq!(again.transient_rollbacks, 2, "the count carries over");
        let by_a_person = Operation {
            retry_after_rollback: false,
            ..op.clone()
        };
        let input = PlanInput {
            recorded: Some(&by_a_person),
            ..due
        };
        assert!(matches!(decide(&input), Decision::Blocked { .. }));
    }

    #[test]
    fn deletion_policies() {
        let d = desired();
        let s = observed_from(&d, ConnectionState::Connected);
        let input = fresh(&d, Some(&s), Some("fp1"), true);
        assert_eq!(decide(&input), Decision::Release);
        let mut deleting = d.clone();
        deleting.deletion_policy = DeletionPolicy::Delete;
        let input = PlanInput {
            desired: &deleting,
            ..input
        };
        assert_eq!(
            start_steps(decide(&input)),
            vec![StepName::Disconnect, StepName::Delete]
        );
        let input = PlanInput {
            observed: None,
            ..input
        };
        assert_eq!(decide(&input), Decision::Release);
    }

    // ---- property tests -------------------------------------------------

    /// A model of a KMS store, enough to execute plans against.
    #[derive(Clone, Debug)]
    struct ModelStore {
        name: String,
        proxy: ProxyConfig,
        fingerprint: Option<String>,
        state: ConnectionState,
        exists: bool,
        deleted: bool,
    }

    impl ModelStore {
        fn observed(&self) -> Option<ObservedStore> {
            self.exists.then(|| ObservedStore {
                id: "cks-0123456789abcdef0".into(),
                name: self.name.clone(),
                store_type: "EXTERNAL_KEY_STORE".into(),
                connection_state: self.state,
                connection_error_code: None,
                proxy: Some(self.proxy.clone()),
            })
        }

        /// Apply one step as a successful KMS would, asserting KMS's rules.
        fn apply(&mut self, step: StepName, desired: &Desired) -> Result<(), String> {
            use ConnectionState as S;
            match step {
                StepName::Preflight | StepName::HealthCheck => {}
                StepName::Create => {
                    if self.exists {
                        return Err("Create on an existing store".into());
                    }
                    self.exists = true;
                    self.name = desired.name.clone();
                    self.proxy = desired.proxy.clone();
                    self.fingerprint = Some(desired.credential_fingerprint.clone());
                    self.state = S::Disconnected;
                }
                StepName::Disconnect | StepName::RollbackDisconnect => {
                    if matches!(self.state, S::Disconnected) && step == StepName::Disconnect {
                        return Err("Disconnect on a DISCONNECTED store".into());
                    }
                    self.state = S::Disconnected;
                }
                StepName::Update | StepName::RestorePrevious => {
                    let d = diff(
                        desired,
                        &self.observed().ok_or("no store")?,
                        self.fingerprint.as_deref(),
                    );
                    if d.needs_disconnect() && self.state != S::Disconnected {
                        return Err(format!(
                            "Update of a disconnect-only field while {}",
                            self.state
                        ));
                    }
                    self.name = desired.name.clone();
                    self.proxy = desired.proxy.clone();
                    self.fingerprint = Some(desired.credential_fingerprint.clone());
                }
                StepName::Connect | StepName::RollbackConnect => {
                    if matches!(self.state, S::Failed | S::Disconnecting) {
                        return Err(format!("Connect while {}", self.state));
                    }
                    self.state = S::Connected;
                }
                StepName::Delete => {
                    if self.state != S::Disconnected {
                        return Err("Delete while not DISCONNECTED".into());
                    }
                    self.exists = false;
                    self.deleted = true;
                }
            }
            Ok(())
        }
    }

    fn arb_state() -> impl Strategy<Value = ConnectionState> {
        prop_oneof![
            Just(ConnectionState::Connected),
            Just(ConnectionState::Connecting),
            Just(ConnectionState::Disconnected),
            Just(ConnectionState::Disconnecting),
            Just(ConnectionState::Failed),
        ]
    }

    /// A random desired state and a random store that differs from it in
    /// random fields.
    fn arb_case() -> impl Strategy<Value = (Desired, ModelStore, bool)> {
        (
            any::<[bool; 7]>(),
            arb_state(),
            any::<bool>(),
            any::<bool>(),
            any::<bool>(),
            any::<bool>(),
        )
            .prop_map(
                |(flip, state, connected, delete_policy, exists, deleting)| {
                    let mut d = desired();
                    d.connection = if connected {
                        DesiredConnectionState::Connected
                    } else {
                        DesiredConnectionState::Disconnected
                    };
                    d.deletion_policy = if delete_policy {
                        DeletionPolicy::Delete
                    } else {
                        DeletionPolicy::Retain
                    };
                    if flip[4] {
                        d.proxy.connectivity = Connectivity::VpcEndpointService;
                        d.proxy.vpc_endpoint_service_name =
                            Some("com.amazonaws.vpce.us-east-1.vpce-svc-0123456789abcdef0".into());
                        if flip[6] {
                            d.proxy.vpc_endpoint_service_owner = Some("444455556666".into());
                        }
                    }
                    let mut store = ModelStore {
                        name: d.name.clone(),
                        proxy: desired().proxy,
                        fingerprint: Some(d.credential_fingerprint.clone()),
                        state,
                        exists,
                        deleted: false,
                    };
                    if flip[0] {
                        store.name = "old-name".into();
                    }
                    if flip[1] {
                        store.fingerprint = Some("old-fp".into());
                    }
                    if flip[2] {
                        store.proxy.uri_path = "/old/kms/xks/v1".into();
                    }
                    if flip[3] {
                        store.proxy.uri_endpoint = "https://xks-old.example.com".into();
                    }
                    if flip[5] {
                        store.proxy.access_key_id = "AKIDOLDAAAAAAAAAAAAA".into();
                    }
                    (d, store, deleting)
                },
            )
    }

    fn recorded_op(op: &NewOperation, done: usize) -> Operation {
        Operation {
            trigger: op.trigger.clone(),
            phase: OperationPhase::Running,
            disruptive: op.disruptive,
            target: op.target.clone(),
            generation: Some(1),
            started_at: "t0".into(),
            finished_at: None,
            steps: op
                .steps
                .iter()
                .enumerate()
                .map(|(i, name)| Step {
                    state: if i < done {
                        StepState::Succeeded
                    } else {
                        StepState::Pending
                    },
                    ..Step::pending(*name)
                })
                .collect(),
            previous: None,
            message: None,
            retry_after_rollback: false,
            transient_rollbacks: 0,
        }
    }

    fn input<'a>(
        d: &'a Desired,
        observed: Option<&'a ObservedStore>,
        store: &'a ModelStore,
        recorded: Option<&'a Operation>,
        deleting: bool,
    ) -> PlanInput<'a> {
        PlanInput {
            desired: d,
            observed,
            applied_fingerprint: store.fingerprint.as_deref(),
            recorded,
            deleting,
            rollback_retry_due: false,
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// Running the plan on a KMS-like model never breaks a KMS rule
        /// (no disconnect-only field sent to a store that is not
        /// DISCONNECTED, no Connect of a FAILED store, no Delete of a
        /// connected one) and ends in the desired state.
        #[test]
        fn plans_obey_kms_rules_and_converge((d, mut store, deleting) in arb_case()) {
            let observed = store.observed();
            let decision = decide(&input(&d, observed.as_ref(), &store, None, deleting));
            if let Decision::Start(op) = &decision {
                for step in &op.steps {
                    store.apply(*step, &d).map_err(TestCaseError::fail)?;
                }
            }
            let after = store.observed();
            let again = decide(&input(&d, after.as_ref(), &store, None, deleting));
            if deleting {
                prop_assert!(matches!(again, Decision::Release));
                if d.deletion_policy == DeletionPolicy::Retain {
                    prop_assert!(!store.deleted, "Retain deleted the store");
                }
            } else {
                prop_assert_eq!(&again, &Decision::InSync);
                let want = match d.connection {
                    DesiredConnectionState::Connected => ConnectionState::Connected,
                    DesiredConnectionState::Disconnected => ConnectionState::Disconnected,
                };
                prop_assert_eq!(store.state, want);
            }
        }

        /// `Retain` never plans a Delete.
        #[test]
        fn retain_never_deletes((mut d, store, _) in arb_case()) {
            d.deletion_policy = DeletionPolicy::Retain;
            let observed = store.observed();
            let decision = decide(&input(&d, observed.as_ref(), &store, None, true));
            prop_assert_eq!(decision, Decision::Release);
        }

        /// After any prefix of its own steps has run, the recorded plan is
        /// continued, not started over; and even with the status lost, a
        /// fresh plan never repeats a side effect already done (no second
        /// Create, no Disconnect of a DISCONNECTED store) and still converges.
        #[test]
        fn replanning_after_any_prefix_continues((d, store, deleting) in arb_case(), cut in 0usize..8) {
            let observed = store.observed();
            let Decision::Start(op) = decide(&input(&d, observed.as_ref(), &store, None, deleting)) else {
                return Ok(());
            };
            let cut = cut.min(op.steps.len());
            let mut model = store.clone();
            for step in &op.steps[..cut] {
                model.apply(*step, &d).map_err(TestCaseError::fail)?;
            }
            let now = model.observed();
            let recorded = recorded_op(&op, cut);
            let resumed = decide(&input(&d, now.as_ref(), &model, Some(&recorded), deleting));
            prop_assert_eq!(resumed, Decision::Continue);

            // Status lost: plan afresh from what KMS reports now.
            let fresh = decide(&input(&d, now.as_ref(), &model, None, deleting));
            if let Decision::Start(again) = fresh {
                for step in &again.steps {
                    model.apply(*step, &d).map_err(TestCaseError::fail)?;
                }
            }
            let end = model.observed();
            let settled = decide(&input(&d, end.as_ref(), &model, None, deleting));
            prop_assert!(matches!(settled, Decision::InSync | Decision::Release), "{:?}", settled);
        }

        /// Under `proxyChecks: KmsOnly` the operator never calls the proxy
        /// itself; under `Direct` every step is there to run.
        #[test]
        fn kms_only_skips_exactly_the_operators_own_proxy_calls((d, store, deleting) in arb_case(), kms_only in any::<bool>()) {
            let observed = store.observed();
            let Decision::Start(new) = decide(&input(&d, observed.as_ref(), &store, None, deleting)) else {
                return Ok(());
            };
            let checks = if kms_only { ProxyChecks::KmsOnly } else { ProxyChecks::Direct };
            let names = new.steps.clone();
            let op = operation(new, checks, false, Some(1), "t0", None, None);
            prop_assert_eq!(op.steps.iter().map(|s| s.name).collect::<Vec<_>>(), names);
            for step in &op.steps {
                let skipped = step.state == StepState::Skipped;
                prop_assert_eq!(skipped, kms_only && calls_the_proxy(step.name), "{:?}", step);
            }
        }

        /// A disruptive change that needs approval never reaches its
        /// Disconnect unapproved, whatever prefix already ran; approved (or
        /// on deletion) it runs to the end.
        #[test]
        fn an_unapproved_disruptive_change_never_disconnects(
            (d, store, deleting) in arb_case(),
            cut in 0usize..8,
            approved in any::<bool>(),
        ) {
            let observed = store.observed();
            let Decision::Start(new) = decide(&input(&d, observed.as_ref(), &store, None, deleting)) else {
                return Ok(());
            };
            let mut op = recorded_op(&new, cut.min(new.steps.len()));
            let gate = Gate { require_approval: true, approved, deleting };
            let mut ran = Vec::new();
            loop {
                match next(&op, gate) {
                    Next::Run(i) => {
                        ran.push(op.steps[i].name);
                        op.steps[i].state = StepState::Succeeded;
                    }
                    Next::AwaitApproval => {
                        prop_assert!(op.disruptive && !approved && !deleting);
                        break;
                    }
                    Next::Finish => {
                        prop_assert!(op.steps.iter().all(|s| s.state.is_done()));
                        break;
                    }
                }
            }
            if op.disruptive && !approved && !deleting {
                prop_assert!(!ran.contains(&StepName::Disconnect), "disconnected unapproved: {:?}", ran);
            }
        }

        /// A rollback happens only after an update that moved the proxy,
        /// for a failed health check or Connect, never on deletion, never
        /// twice, never when disabled; it replaces what was left of the
        /// plan with disconnect → restore → connect.
        #[test]
        fn rollback_only_undoes_an_update_that_moved_the_proxy(
            done in 0usize..6,
            failed_index in 0usize..5,
            moved in any::<bool>(),
            deleting in any::<bool>(),
            disabled in any::<bool>(),
            rolling_back in any::<bool>(),
        ) {
            let names = [
                StepName::Preflight,
                StepName::Disconnect,
                StepName::Update,
                StepName::HealthCheck,
                StepName::Connect,
            ];
            let new = NewOperation {
                trigger: "uriEndpoint changed".into(),
                disruptive: true,
                target: "t".into(),
                steps: names.to_vec(),
            };
            let mut op = recorded_op(&new, done.min(names.len()));
            let previous = desired().proxy;
            op.previous = Some(previous.clone());
            if rolling_back {
                op.phase = OperationPhase::RollingBack;
            }
            let mut current = previous.clone();
            if moved {
                current.uri_endpoint = "https://xks-new.example.com".into();
            }
            let failed = names[failed_index];
            let policy = if disabled { RollbackPolicy::Disabled } else { RollbackPolicy::Automatic };
            let rolled = rollback(&op, Some(&current), failed, "boom", policy, deleting, false);
            let updated = done > 2;
            let expected = matches!(failed, StepName::HealthCheck | StepName::Connect)
                && updated && moved && !deleting && !disabled && !rolling_back;
            prop_assert_eq!(rolled.is_some(), expected);
            if let Some(r) = rolled {
                prop_assert_eq!(r.phase, OperationPhase::RollingBack);
                let pending: Vec<StepName> = r.steps.iter()
                    .filter(|s| s.state == StepState::Pending)
                    .map(|s| s.name)
                    .collect();
                prop_assert_eq!(pending, vec![
                    StepName::RollbackDisconnect,
                    StepName::RestorePrevious,
                    StepName::RollbackConnect,
                ]);
                prop_assert!(rollback(&r, Some(&current), StepName::Connect, "again", policy, deleting, false).is_none());
            }
        }
    }
}
