//! The controller's reconcile against a mocked Kubernetes API server
//! (kube's `Client` over `tower_test::mock::pair`) and fake KMS and proxy
//! ports: the exact API calls (finalizer, server-side-applied status,
//! Secret read, Events) and the KMS calls each situation makes or must not
//! make. The fake API server keeps the object, so a test can run several
//! passes the way the controller would.

mod support;

use kube::runtime::controller::Action;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use support::*;
use xks_operator::api::{ExternalKeyStore, FINALIZER};
use xks_operator::controller::metrics::Metrics;
use xks_operator::controller::{Backend, Context, Settings, reconcile};
use xks_operator::kms::identity::AssumedRole;
use xks_operator::kms::{CreateStore, KeyStores, KmsError, UpdateStore};
use xks_operator::model::{ConnectionState, Connectivity, ObservedStore, ProxyConfig, StoreKey};
use xks_operator::xks::{
    HealthReport, KeyManagerHealth, KeyManagerStatus, KeyMetadata, ProbeError, ProxyProbe,
    ProxyTarget,
};

// ---------------------------------------------------------------- fake KMS

#[derive(Default)]
struct KmsState {
    stores: Mutex<Vec<ObservedStore>>,
    /// Operation names in call order.
    calls: Mutex<Vec<String>>,
    mutations: AtomicUsize,
}

#[derive(Clone, Default)]
struct FakeKms(Arc<KmsState>);

impl FakeKms {
    fn with_store(state: ConnectionState, endpoint: &str) -> Self {
        let kms = Self::default();
        kms.0.stores.lock().unwrap().push(ObservedStore {
            id: "cks-1234567890abcdef0".into(),
            name: NAME.into(),
            store_type: "EXTERNAL_KEY_STORE".into(),
            connection_state: state,
            connection_error_code: None,
            proxy: Some(ProxyConfig {
                connectivity: Connectivity::PublicEndpoint,
                uri_endpoint: endpoint.into(),
                uri_path: "/kms/xks/v1".into(),
                vpc_endpoint_service_name: None,
                vpc_endpoint_service_owner: None,
                access_key_id: AKID.into(),
            }),
        });
        kms
    }
    fn log(&self, op: &str) {
        self.0.calls.lock().unwrap().push(op.to_string());
    }
    fn mutate(
        &self,
        op: &str,
        id: &str,
        f: impl FnOnce(&mut ObservedStore),
    ) -> Result<(), KmsError> {
        self.log(op);
        self.0.mutations.fetch_add(1, Ordering::SeqCst);
        let mut stores = self.0.stores.lock().unwrap();
        let store = stores
            .iter_mut()
            .find(|s| s.id == id)
            .ok_or(KmsError::Service {
                code: "CustomKeyStoreNotFoundException".into(),
                message: "no such store".into(),
            })?;
        f(store);
        Ok(())
    }
    fn calls(&self) -> Vec<String> {
        self.0.calls.lock().unwrap().clone()
    }
    fn mutations(&self) -> usize {
        self.0.mutations.load(Ordering::SeqCst)
    }
    fn store(&self) -> Option<ObservedStore> {
        self.0.stores.lock().unwrap().first().cloned()
    }
}

impl KeyStores for FakeKms {
    async fn describe_by_id(&self, id: &str) -> Result<Option<ObservedStore>, KmsError> {
        self.log("DescribeCustomKeyStores");
        Ok(self
            .0
            .stores
            .lock()
            .unwrap()
            .iter()
            .find(|s| s.id == id)
            .cloned())
    }
    async fn describe_by_name(&self, name: &str) -> Result<Option<ObservedStore>, KmsError> {
        self.log("DescribeCustomKeyStores");
        Ok(self
            .0
            .stores
            .lock()
            .unwrap()
            .iter()
            .find(|s| s.name == name)
            .cloned())
    }
    async fn describe_all(&self) -> Result<Vec<ObservedStore>, KmsError> {
        self.log("DescribeCustomKeyStores");
        Ok(self.0.stores.lock().unwrap().clone())
    }
    async fn create(&self, req: &CreateStore) -> Result<String, KmsError> {
        self.log("CreateCustomKeyStore");
        self.0.mutations.fetch_add(1, Ordering::SeqCst);
        let id = "cks-00000000000000001".to_string();
        self.0.stores.lock().unwrap().push(ObservedStore {
            id: id.clone(),
            name: req.name.clone(),
            store_type: "EXTERNAL_KEY_STORE".into(),
            connection_state: ConnectionState::Disconnected,
            connection_error_code: None,
            proxy: Some(req.proxy.clone()),
        });
        Ok(id)
    }
    async fn update(&self, req: &UpdateStore) -> Result<(), KmsError> {
        self.mutate("UpdateCustomKeyStore", &req.id, |s| {
            if let Some(p) = s.proxy.as_mut() {
                if let Some(e) = &req.uri_endpoint {
                    p.uri_endpoint = e.clone();
                }
                if let Some(path) = &req.uri_path {
                    p.uri_path = path.clone();
                }
                if let Some(c) = &req.credential {
                    p.access_key_id = c.access_key_id.clone();
                }
            }
            if let Some(n) = &req.new_name {
                s.name = n.clone();
            }
        })
    }
    async fn connect(&self, id: &str) -> Result<(), KmsError> {
        self.mutate("ConnectCustomKeyStore", id, |s| {
            s.connection_state = ConnectionState::Connected
        })
    }
    async fn disconnect(&self, id: &str) -> Result<(), KmsError> {
        self.mutate("DisconnectCustomKeyStore", id, |s| {
            s.connection_state = ConnectionState::Disconnected
        })
    }
    async fn delete(&self, id: &str) -> Result<(), KmsError> {
        self.mutate("DeleteCustomKeyStore", id, |_| {})?;
        self.0.stores.lock().unwrap().retain(|s| s.id != id);
        Ok(())
    }
    async fn list_store_keys(&self, _id: &str) -> Result<Vec<StoreKey>, KmsError> {
        self.log("ListKeys");
        Ok(Vec::new())
    }
}

/// A healthy proxy that serves every key.
#[derive(Clone, Default)]
struct FakeProbe {
    calls: Arc<AtomicUsize>,
    /// The proxy rejects the credential (401).
    rejects: Arc<std::sync::atomic::AtomicBool>,
}

impl ProxyProbe for FakeProbe {
    async fn health(&self, _: &ProxyTarget) -> Result<HealthReport, ProbeError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        if self.rejects.load(Ordering::SeqCst) {
            return Err(ProbeError::AuthenticationFailed);
        }
        Ok(HealthReport {
            fleet_size: 1,
            proxy_vendor: "test".into(),
            proxy_model: "test".into(),
            ekm_vendor: "test".into(),
            key_managers: vec![KeyManagerStatus {
                id: "km-1".into(),
                model: "test".into(),
                health: KeyManagerHealth::Active,
            }],
        })
    }
    async fn key_metadata(&self, _: &ProxyTarget, _: &str) -> Result<KeyMetadata, ProbeError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        Ok(KeyMetadata {
            key_spec: "AES_256".into(),
            key_usage: vec!["ENCRYPT".into(), "DECRYPT".into()],
            key_status: "ENABLED".into(),
        })
    }
}

struct FakeBackend {
    kms: FakeKms,
    probe: FakeProbe,
}

impl Backend for FakeBackend {
    type Kms = FakeKms;
    type Probe = FakeProbe;
    async fn key_stores(&self, _region: &str, _role: Option<&AssumedRole>) -> FakeKms {
        self.kms.clone()
    }
    fn probe(&self) -> FakeProbe {
        self.probe.clone()
    }
    fn default_region(&self) -> Option<String> {
        Some("eu-west-1".into())
    }
}

struct Harness {
    api: ApiServer,
    kms: FakeKms,
    probe: FakeProbe,
    ctx: Arc<Context<FakeBackend>>,
    task: tokio::task::JoinHandle<()>,
}

impl Harness {
    fn new(object: Value, kms: FakeKms) -> Self {
        let (api, client, task) = ApiServer::start(object, Some(secret()));
        let probe = FakeProbe::default();
        let backend = FakeBackend {
            kms: kms.clone(),
            probe: probe.clone(),
        };
        let ctx = Arc::new(Context::new(
            client,
            backend,
            Arc::new(Metrics::new()),
            Settings::default(),
        ));
        Self {
            api,
            kms,
            probe,
            ctx,
            task,
        }
    }

    async fn pass(&self) -> Action {
        let obj = self.api.object().expect("the object still exists");
        tokio::time::timeout(
            std::time::Duration::from_secs(10),
            reconcile(Arc::new(obj), self.ctx.clone()),
        )
        .await
        .expect("reconcile finishes quickly")
        .expect("reconcile succeeds")
    }

    /// Every recorded call except Events.
    fn api_calls(&self) -> Vec<Call> {
        self.api
            .calls()
            .into_iter()
            .filter(|c| !c.path.starts_with(EVENTS_PATH))
            .collect()
    }

    fn events(&self) -> Vec<Value> {
        self.api
            .calls()
            .into_iter()
            .filter(|c| c.path.starts_with(EVENTS_PATH))
            .map(|c| c.body)
            .collect()
    }

    /// Nothing the operator sent to the API server holds the secret.
    fn assert_secret_never_sent(&self) {
        for call in self.api.calls() {
            let text = call.body.to_string();
            assert!(
                !text.contains(SECRET),
                "{} {} carries the secret",
                call.method,
                call.path
            );
        }
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The controller looks again after a while (not only on a change).
fn requeued(action: &Action) -> bool {
    format!("{action:?}").contains("requeue_after: Some")
}

fn assert_ssa_status(call: &Call) {
    assert!(call.is("PATCH", STATUS_PATH), "{call:?}");
    assert!(
        call.query.contains("fieldManager=xks-operator"),
        "{}",
        call.query
    );
    assert!(call.query.contains("force=true"), "{}", call.query);
    assert_eq!(call.content_type, "application/apply-patch+yaml");
    assert_eq!(call.body["apiVersion"], "xks-operator.io/v1alpha1");
    assert_eq!(call.body["kind"], "ExternalKeyStore");
}

// ------------------------------------------------------------------- tests

#[tokio::test]
async fn first_sight_writes_initial_status_adds_the_finalizer_reads_the_secret_then_creates() {
    let h = Harness::new(resource(json!({}), json!({}), None), FakeKms::default());
    let action = h.pass().await;

    let calls = h.api_calls();
    // 1. the initial status, by server-side apply, before anything else.
    assert_ssa_status(&calls[0]);
    let initial = &calls[0].body["status"];
    assert_eq!(condition(initial, "Reconciling")["status"], "True");
    assert_eq!(condition(initial, "Reconciling")["reason"], "Initializing");
    // 2. the finalizer, guarded by the resourceVersion the status write
    // returned (a status write moves it; the one read would conflict).
    assert!(calls[1].is("PATCH", STORE_PATH), "{:?}", calls[1]);
    assert_eq!(calls[1].content_type, "application/merge-patch+json");
    assert_eq!(calls[1].body["metadata"]["finalizers"], json!([FINALIZER]));
    assert_eq!(calls[1].body["metadata"]["resourceVersion"], "101");
    // 3. the Secret.
    assert!(calls[2].is("GET", SECRET_PATH), "{:?}", calls[2]);
    // then only status writes, all server-side applied.
    assert!(calls.len() > 3);
    for call in &calls[3..] {
        assert_ssa_status(call);
    }

    // The engine created and connected the store in the same pass.
    assert!(
        h.kms.calls().contains(&"CreateCustomKeyStore".to_string()),
        "{:?}",
        h.kms.calls()
    );
    assert!(
        h.probe.calls.load(Ordering::SeqCst) > 0,
        "preflight called the proxy"
    );
    let obj = h.api.object().expect("exists");
    assert_eq!(obj.metadata.finalizers, Some(vec![FINALIZER.to_string()]));
    let status = obj.status.expect("status");
    assert_eq!(
        status.key_store_id.as_deref(),
        Some("cks-00000000000000001")
    );
    assert!(status.credential_fingerprint.is_some());
    assert!(matches!(action, a if a != Action::await_change()));

    // Events name each step; none carries the secret.
    let events = h.events();
    let reasons: Vec<&str> = events.iter().filter_map(|e| e["reason"].as_str()).collect();
    assert!(reasons.contains(&"StepSucceeded"), "{reasons:?}");
    assert!(events.iter().any(|e| e["action"] == "Create"), "{events:?}");
    assert!(events.iter().all(|e| e["regarding"]["name"] == NAME));
    h.assert_secret_never_sent();
}

#[tokio::test]
async fn an_in_sync_store_is_not_rewritten_when_only_timestamps_would_change() {
    let kms = FakeKms::default();
    let h = Harness::new(resource(json!({}), json!({}), None), kms);
    // Converge: create, connect, then a pass that finds it in sync.
    for _ in 0..5 {
        h.pass().await;
    }
    let status = h.api.object().and_then(|o| o.status).expect("status");
    assert_eq!(status.connection_state, Some(ConnectionState::Connected));
    assert!(
        status
            .conditions
            .iter()
            .any(|c| c.type_ == "Ready" && c.is_true()),
        "{status:?}"
    );

    h.api.clear_calls();
    let action = h.pass().await;
    let calls = h.api_calls();
    assert_eq!(calls.len(), 1, "only the Secret is read: {calls:?}");
    assert!(calls[0].is("GET", SECRET_PATH));
    assert!(h.events().is_empty());
    // Drift is checked again after the default interval, ±10%.
    let requeue = format!("{action:?}");
    assert!(requeue.contains("requeue_after: Some"), "{requeue}");
}

#[tokio::test]
async fn suspend_makes_no_aws_call() {
    let kms = FakeKms::with_store(ConnectionState::Connected, "https://old.example.com");
    let h = Harness::new(
        resource(
            json!({"suspend": true}),
            with_finalizer(),
            Some(recorded_status("cks-1234567890abcdef0")),
        ),
        kms,
    );
    let action = h.pass().await;
    assert_eq!(action, Action::await_change());
    assert!(h.kms.calls().is_empty(), "{:?}", h.kms.calls());
    assert_eq!(h.probe.calls.load(Ordering::SeqCst), 0);
    let calls = h.api_calls();
    let status_writes: Vec<&Call> = calls.iter().filter(|c| c.path == STATUS_PATH).collect();
    assert_eq!(status_writes.len(), 1, "{calls:?}");
    assert_ssa_status(status_writes[0]);
    let ready = condition(&status_writes[0].body["status"], "Ready");
    assert_eq!(ready["reason"], "Suspended");
    assert!(
        !calls.iter().any(|c| c.path == STORE_PATH),
        "no finalizer change"
    );
}

#[tokio::test]
async fn deletion_with_retain_removes_the_finalizer_without_a_kms_call() {
    let kms = FakeKms::with_store(ConnectionState::Connected, "https://xks.example.com");
    let h = Harness::new(
        resource(
            json!({"deletionPolicy": "Retain"}),
            json!({"finalizers": [FINALIZER, "example.com/other"], "deletionTimestamp": "2026-01-01T00:00:00Z"}),
            Some(recorded_status("cks-1234567890abcdef0")),
        ),
        kms,
    );
    assert_eq!(h.pass().await, Action::await_change());
    assert!(h.kms.calls().is_empty(), "{:?}", h.kms.calls());
    let calls = h.api_calls();
    assert_eq!(calls.len(), 1, "{calls:?}");
    assert!(calls[0].is("PATCH", STORE_PATH));
    // Only our finalizer goes; another controller's stays.
    assert_eq!(
        calls[0].body["metadata"]["finalizers"],
        json!(["example.com/other"])
    );
    assert!(h.events().iter().any(|e| e["reason"] == "Released"));
    assert!(h.kms.store().is_some(), "the store is kept");
}

#[tokio::test]
async fn deletion_with_delete_disconnects_and_deletes_before_releasing() {
    let kms = FakeKms::with_store(ConnectionState::Connected, "https://xks.example.com");
    let h = Harness::new(
        resource(
            json!({"deletionPolicy": "Delete"}),
            json!({"finalizers": [FINALIZER], "deletionTimestamp": "2026-01-01T00:00:00Z"}),
            Some(recorded_status("cks-1234567890abcdef0")),
        ),
        kms,
    );
    for _ in 0..6 {
        if h.api.object().is_none() {
            break;
        }
        h.pass().await;
    }
    assert!(
        h.api.object().is_none(),
        "the finalizer was removed and the object is gone"
    );
    let mutations: Vec<String> = h
        .kms
        .calls()
        .into_iter()
        .filter(|c| !c.starts_with("Describe") && c != "ListKeys")
        .collect();
    assert_eq!(
        mutations,
        ["DisconnectCustomKeyStore", "DeleteCustomKeyStore"]
    );
    assert!(h.kms.store().is_none());
    // The finalizer goes last, after the store is deleted.
    let calls = h.api_calls();
    let last = calls.last().expect("calls");
    assert!(last.is("PATCH", STORE_PATH), "{last:?}");
    assert_eq!(last.body["metadata"]["finalizers"], json!([]));
    h.assert_secret_never_sent();
}

#[tokio::test]
async fn a_disruptive_change_awaits_approval_and_leaves_the_store_untouched() {
    let kms = FakeKms::with_store(ConnectionState::Connected, "https://old.example.com");
    let h = Harness::new(
        resource(
            json!({"disruptiveUpdates": "RequireApproval"}),
            with_finalizer(),
            Some(recorded_status("cks-1234567890abcdef0")),
        ),
        kms,
    );
    // Only a change of the resource moves it on; meanwhile the store keeps
    // serving at its current proxy, whose health is still watched.
    let action = h.pass().await;
    assert!(requeued(&action), "{action:?}");
    // Preflight (the new proxy), then the health watch (the current one).
    assert_eq!(h.probe.calls.load(Ordering::SeqCst), 2);
    assert_eq!(h.kms.mutations(), 0, "{:?}", h.kms.calls());
    let store = h.kms.store().expect("store");
    assert_eq!(store.connection_state, ConnectionState::Connected);
    assert_eq!(
        store.proxy.map(|p| p.uri_endpoint).as_deref(),
        Some("https://old.example.com")
    );
    let status = h.api.object().and_then(|o| o.status).expect("status");
    let op = status.operation.expect("operation");
    assert_eq!(format!("{:?}", op.phase), "AwaitingApproval");
    assert!(
        op.message
            .as_deref()
            .unwrap_or_default()
            .contains("xks-operator.io/approve-generation=1"),
        "{:?}",
        op.message
    );
    assert!(h.events().iter().any(|e| e["reason"] == "AwaitingApproval"));

    // An approval of another generation is no approval.
    set_annotation(&h.api, "xks-operator.io/approve-generation", "2");
    assert!(requeued(&h.pass().await));
    assert_eq!(h.kms.mutations(), 0);
    assert_eq!(h.probe.calls.load(Ordering::SeqCst), 2, "not due again yet");

    // Approving this generation lets it disconnect, update and reconnect.
    set_annotation(&h.api, "xks-operator.io/approve-generation", "1");
    for _ in 0..5 {
        h.pass().await;
    }
    let mutations: Vec<String> = h
        .kms
        .calls()
        .into_iter()
        .filter(|c| !c.starts_with("Describe") && c != "ListKeys")
        .collect();
    assert_eq!(
        mutations,
        [
            "DisconnectCustomKeyStore",
            "UpdateCustomKeyStore",
            "ConnectCustomKeyStore"
        ]
    );
    let store = h.kms.store().expect("store");
    assert_eq!(
        store.proxy.map(|p| p.uri_endpoint).as_deref(),
        Some("https://xks.example.com")
    );
}

#[tokio::test]
async fn a_requested_reconcile_is_echoed_into_status() {
    let kms = FakeKms::default();
    let h = Harness::new(
        resource(
            json!({}),
            json!({"annotations": {"reconcile.fluxcd.io/requestedAt": "2026-11-23T19:00:00Z"}}),
            None,
        ),
        kms,
    );
    h.pass().await;
    let status = h.api.object().and_then(|o| o.status).expect("status");
    assert_eq!(
        status.last_handled_reconcile_at.as_deref(),
        Some("2026-11-23T19:00:00Z")
    );
}

#[tokio::test]
async fn a_missing_secret_stalls_with_its_name_and_no_kms_change() {
    let (api, client, task) = ApiServer::start(resource(json!({}), with_finalizer(), None), None);
    let kms = FakeKms::default();
    let backend = FakeBackend {
        kms: kms.clone(),
        probe: FakeProbe::default(),
    };
    let ctx = Arc::new(Context::new(
        client,
        backend,
        Arc::new(Metrics::new()),
        Settings::default(),
    ));
    let obj = api.object().expect("object");
    reconcile(Arc::new(obj), ctx).await.expect("reconcile");
    task.abort();
    assert_eq!(kms.mutations(), 0);
    let status = api.object().and_then(|o| o.status).expect("status");
    let stalled = status
        .conditions
        .iter()
        .find(|c| c.type_ == "Stalled")
        .expect("Stalled");
    assert!(stalled.is_true());
    assert_eq!(stalled.reason, "CredentialSecretInvalid");
    assert!(
        stalled.message.contains("xks-proxy-credential"),
        "{}",
        stalled.message
    );
    let events: BTreeMap<String, String> = api
        .calls()
        .into_iter()
        .filter(|c| c.path == EVENTS_PATH)
        .map(|c| {
            (
                c.body["reason"].as_str().unwrap_or_default().to_string(),
                c.body["type"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    assert_eq!(
        events.get("CredentialSecretInvalid").map(String::as_str),
        Some("Warning")
    );
}

#[tokio::test]
async fn the_controller_pushes_a_rotated_secret_without_a_change_of_the_resource() {
    use futures::StreamExt;
    use k8s_openapi::api::core::v1::Secret;
    use kube::Api;
    use xks_operator::controller::{controller_for, error_policy};

    let h = Harness::new(resource(json!({}), json!({}), None), FakeKms::default());
    let client = h.ctx.client.clone();
    let controller = controller_for(
        &h.ctx.cache,
        Api::<ExternalKeyStore>::all(client.clone()),
        Api::<Secret>::all(client),
        2,
    );
    let running = tokio::spawn(
        controller
            .run(reconcile, error_policy, h.ctx.clone())
            .for_each(|_| async {}),
    );

    let ready = |h: &Harness| {
        h.api.object().and_then(|o| o.status).is_some_and(|s| {
            s.conditions
                .iter()
                .any(|c| c.type_ == "Ready" && c.is_true())
        })
    };
    wait_until("the store is created, connected and Ready", || ready(&h)).await;
    let fingerprint = h
        .api
        .object()
        .and_then(|o| o.status)
        .and_then(|s| s.credential_fingerprint);
    assert!(!h.kms.calls().contains(&"UpdateCustomKeyStore".to_string()));

    h.api
        .rotate_secret("rotatedSecretAccessKeyForTheXksProxyPrimary9876543210");
    wait_until("the rotated credential reaches KMS", || {
        h.kms.calls().contains(&"UpdateCustomKeyStore".to_string())
    })
    .await;
    wait_until("status records the new credential", || {
        h.api
            .object()
            .and_then(|o| o.status)
            .and_then(|s| s.credential_fingerprint)
            != fingerprint
    })
    .await;
    wait_until("Ready again", || ready(&h)).await;
    running.abort();
    h.assert_secret_never_sent();

    // /metrics counted the passes and steps, and holds neither secret.
    let metrics = h.ctx.metrics.render().expect("metrics render");
    assert!(
        metrics.contains("xks_operator_step_duration_seconds_count{step=\"Update\"} 1"),
        "{metrics}"
    );
    for secret in [
        SECRET,
        "rotatedSecretAccessKeyForTheXksProxyPrimary9876543210",
    ] {
        assert!(!metrics.contains(secret), "/metrics carries a secret");
    }
}

#[tokio::test]
async fn a_pass_on_a_stale_cached_object_resumes_from_the_status_last_written() {
    let h = Harness::new(resource(json!({}), json!({}), None), FakeKms::default());
    for _ in 0..5 {
        h.pass().await;
    }
    let current = h.api.object().expect("object");
    assert!(
        current
            .status
            .as_ref()
            .is_some_and(|s| s.credential_fingerprint.is_some())
    );
    let mutations = h.kms.mutations();

    // The watch cache has not caught up: the object as it was before the
    // operator's status writes (finalizer already there).
    let mut stale = current.clone();
    stale.status = None;
    h.api.clear_calls();
    let action = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        reconcile(Arc::new(stale), h.ctx.clone()),
    )
    .await
    .expect("in time")
    .expect("reconcile");
    assert_eq!(
        h.kms.mutations(),
        mutations,
        "nothing is redone: {:?}",
        h.kms.calls()
    );
    let calls = h.api_calls();
    assert_eq!(calls.len(), 1, "only the Secret is read: {calls:?}");
    assert!(calls[0].is("GET", SECRET_PATH));
    assert_ne!(action, Action::await_change());
}

/// aws-sdk-kms and the HTTPS probe, pointed at the emulator.
struct EmulatorBackend {
    kms: xks_operator::kms::aws::AwsKeyStores,
    probe: xks_operator::xks::probe::HttpProxyProbe,
}

impl Backend for EmulatorBackend {
    type Kms = xks_operator::kms::aws::AwsKeyStores;
    type Probe = xks_operator::xks::probe::HttpProxyProbe;
    async fn key_stores(&self, _region: &str, _role: Option<&AssumedRole>) -> Self::Kms {
        self.kms.clone()
    }
    fn probe(&self) -> Self::Probe {
        self.probe.clone()
    }
    fn default_region(&self) -> Option<String> {
        Some("us-east-1".into())
    }
}

#[tokio::test]
async fn the_controller_runs_the_real_kms_adapter_against_the_emulator() {
    use futures::StreamExt;
    use k8s_openapi::api::core::v1::Secret;
    use kube::Api;
    use xks_emulator::{self as emulator, EmulatorConfig};
    use xks_operator::controller::{controller_for, error_policy};
    use xks_operator::kms::aws::AwsKeyStores;
    use xks_operator::xks::probe::{HttpProxyProbe, ProbeOptions};

    let emu = emulator::start(
        EmulatorConfig {
            connect_delay_ms: 30,
            disconnect_delay_ms: 30,
            ..EmulatorConfig::default()
        },
        ([127, 0, 0, 1], 0).into(),
    )
    .await
    .expect("emulator starts");
    let kms = AwsKeyStores::for_endpoint(&emu.kms_endpoint(), "us-east-1");
    let probe = HttpProxyProbe::new(ProbeOptions {
        resolve: emu.proxy_resolve_map(),
        timeout: std::time::Duration::from_secs(2),
        ..ProbeOptions::default()
    })
    .expect("probe");
    let object = resource(
        json!({
            "region": "us-east-1",
            "proxy": {
                "uriEndpoint": "https://xks-primary.example.com",
                "uriPath": "/example/kms/xks/v1",
                "credentialsSecretRef": {"name": "xks-proxy-credential"}
            }
        }),
        json!({}),
        None,
    );
    let (api, client, task) = ApiServer::start(object, Some(secret()));
    let metrics = Arc::new(Metrics::new());
    metrics.set_kms_source({
        let kms = kms.clone();
        Box::new(move || vec![(String::new(), "us-east-1".to_string(), kms.stats())])
    });
    let mut settings = Settings::default();
    settings.engine.poll_interval = std::time::Duration::from_millis(50);
    let ctx = Arc::new(Context::new(
        client.clone(),
        EmulatorBackend {
            kms: kms.clone(),
            probe,
        },
        metrics.clone(),
        settings,
    ));
    let running = tokio::spawn(
        controller_for(
            &ctx.cache,
            Api::<ExternalKeyStore>::all(client.clone()),
            Api::<Secret>::all(client),
            2,
        )
        .run(reconcile, error_policy, ctx.clone())
        .for_each(|_| async {}),
    );

    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    let status = loop {
        let status = api.object().and_then(|o| o.status);
        // Ready, and the proxy health watch's first check written (it
        // follows the pass that ends Ready).
        if status.as_ref().is_some_and(|s| {
            s.proxy_health.is_some()
                && s.conditions
                    .iter()
                    .any(|c| c.type_ == "Ready" && c.is_true())
        }) {
            break status.expect("status");
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not Ready in time: {status:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    running.abort();
    assert_eq!(status.connection_state, Some(ConnectionState::Connected));
    let id = status.key_store_id.clone().expect("id");
    assert!(id.starts_with("cks-"), "{id}");
    let stats = kms.stats();
    assert_eq!(stats.count("CreateCustomKeyStore", "ok"), 1);
    assert_eq!(stats.count("ConnectCustomKeyStore", "ok"), 1);

    // A drift pass on the in-sync store: one DescribeCustomKeyStores
    // listing, no change, no status write.
    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    let describes = kms.stats().total("DescribeCustomKeyStores");
    api.clear_calls();
    let obj = api.object().expect("object");
    reconcile(Arc::new(obj), ctx.clone())
        .await
        .expect("drift pass");
    let after = kms.stats();
    assert!(
        after.total("DescribeCustomKeyStores") - describes <= 1,
        "{} describe calls",
        after.total("DescribeCustomKeyStores") - describes
    );
    assert_eq!(after.count("UpdateCustomKeyStore", "ok"), 0);
    assert!(!api.calls().iter().any(|c| c.path == STATUS_PATH));

    let text = metrics.render().expect("metrics");
    assert!(
        text.contains("xks_operator_kms_calls_total{account=\"\",region=\"us-east-1\",operation=\"CreateCustomKeyStore\",outcome=\"ok\"} 1"),
        "{text}"
    );
    assert!(!text.contains(SECRET));
    task.abort();
    emu.shutdown().await;
}

#[tokio::test]
async fn a_failed_step_is_a_warning_event_with_its_category_and_the_step_name() {
    let h = Harness::new(
        resource(json!({}), with_finalizer(), None),
        FakeKms::default(),
    );
    h.probe.rejects.store(true, Ordering::SeqCst);
    let action = h.pass().await;
    assert_ne!(
        action,
        Action::await_change(),
        "a stall is looked at again later"
    );
    assert_eq!(
        h.kms.mutations(),
        0,
        "nothing is created behind a failed preflight"
    );
    let failed: Vec<Value> = h
        .events()
        .into_iter()
        .filter(|e| e["type"] == "Warning")
        .collect();
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert_eq!(failed[0]["reason"], "ProxyCredentialRejected");
    assert_eq!(failed[0]["action"], "Preflight");
    assert!(
        failed[0]["note"]
            .as_str()
            .unwrap_or_default()
            .starts_with("Preflight failed: "),
        "{failed:?}"
    );
    let text = h.ctx.metrics.render().expect("metrics");
    assert!(
        text.contains(
            "xks_operator_reconcile_failures_total{reason=\"ProxyCredentialRejected\"} 1"
        ),
        "{text}"
    );
    assert!(
        text.contains("xks_operator_step_duration_seconds_count{step=\"Preflight\"} 1"),
        "{text}"
    );

    // Looked at again, still stalled: no second Warning for the same stall.
    h.api.clear_calls();
    h.pass().await;
    assert!(
        h.events().iter().all(|e| e["type"] != "Warning"),
        "{:?}",
        h.events()
    );
    h.assert_secret_never_sent();
}

/// `spec.roleArn` that the cluster admin has not allowed for the namespace
/// is refused before any AWS call, naming the role and the namespace; the
/// same role allowed for the namespace is assumed (the backend is asked for
/// a client acting as it).
#[tokio::test]
async fn a_role_not_allowed_for_the_namespace_is_refused_before_any_aws_call() {
    const ROLE: &str = "arn:aws:iam::222233334444:role/xks-operator";
    let object = resource(json!({"roleArn": ROLE}), with_finalizer(), None);
    let kms = FakeKms::default();
    let h = Harness::new(object, kms);
    h.pass().await;
    assert!(h.kms.calls().is_empty(), "{:?}", h.kms.calls());
    let status = h.api.object().and_then(|o| o.status).expect("status");
    let stalled = condition(&serde_json::to_value(&status).expect("json"), "Stalled").clone();
    assert_eq!(stalled["status"], "True");
    assert_eq!(stalled["reason"], "RoleNotAllowed");
    let message = stalled["message"].as_str().unwrap_or_default();
    assert!(
        message.contains(ROLE) && message.contains("namespace default"),
        "{message}"
    );
    assert!(message.contains("--allow-role default="), "{message}");
}

#[tokio::test]
async fn a_role_allowed_for_the_namespace_is_used() {
    const ROLE: &str = "arn:aws:iam::222233334444:role/xks-operator";
    let (api, client, task) = ApiServer::start(
        resource(json!({"roleArn": ROLE}), with_finalizer(), None),
        Some(secret()),
    );
    let kms = FakeKms::default();
    let backend = FakeBackend {
        kms: kms.clone(),
        probe: FakeProbe::default(),
    };
    let settings = Settings {
        allowed_roles: xks_operator::controller::RoleAllowList::new([(
            NS.to_string(),
            ROLE.to_string(),
        )]),
        ..Settings::default()
    };
    let ctx = Arc::new(Context::new(
        client,
        backend,
        Arc::new(Metrics::new()),
        settings,
    ));
    let obj = api.object().expect("object");
    reconcile(Arc::new(obj), ctx.clone())
        .await
        .expect("reconcile");
    task.abort();
    assert!(
        kms.calls().contains(&"CreateCustomKeyStore".to_string()),
        "{:?}",
        kms.calls()
    );
    assert_eq!(ctx.account_of(Some(ROLE)).as_deref(), Some("222233334444"));
    let status = api.object().and_then(|o| o.status).expect("status");
    assert!(
        !status
            .conditions
            .iter()
            .any(|c| c.reason == "RoleNotAllowed")
    );
}
