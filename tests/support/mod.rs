//! The fake Kubernetes API server of the controller tests: kube's `Client`
//! over `tower_test::mock::pair`, answering the calls the controller makes
//! for one ExternalKeyStore (`default/payments`) and its Secret, keeping the
//! object (and feeding the watches) so a test can run several passes the
//! way the controller would; plus the fixtures of that resource.
#![allow(dead_code)] // each test crate uses a different subset

use axum::body::{Body as ResponseBody, Bytes};
use futures::channel::mpsc;
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use kube::client::Body;
use serde_json::{Value, json};
use std::sync::{Arc, Mutex};
use xks_operator::api::{ExternalKeyStore, FINALIZER};

pub const NS: &str = "default";
pub const NAME: &str = "payments";
pub const AKID: &str = "XKSDEMOKEYIDPRIMARYA";
pub const SECRET: &str = "demoSecretAccessKeyForTheXksProxyPrimary0123456789";
pub const STORE_PATH: &str =
    "/apis/xks-operator.io/v1alpha1/namespaces/default/externalkeystores/payments";
pub const STATUS_PATH: &str =
    "/apis/xks-operator.io/v1alpha1/namespaces/default/externalkeystores/payments/status";
pub const SECRET_PATH: &str = "/api/v1/namespaces/default/secrets/xks-proxy-credential";
pub const EVENTS_PATH: &str = "/apis/events.k8s.io/v1/namespaces/default/events";
/// The cluster-wide list/watch paths the Controller uses.
pub const STORES_PATH: &str = "/apis/xks-operator.io/v1alpha1/externalkeystores";
pub const SECRETS_PATH: &str = "/api/v1/secrets";

// --------------------------------------------------------- fake API server

#[derive(Clone, Debug)]
pub struct Call {
    pub method: String,
    pub path: String,
    pub query: String,
    pub content_type: String,
    pub body: Value,
}

impl Call {
    pub fn is(&self, method: &str, path: &str) -> bool {
        self.method == method && self.path == path
    }
}

pub type WatchSender = mpsc::UnboundedSender<Result<Bytes, std::io::Error>>;

#[derive(Default)]
pub struct ApiState {
    /// None once deleted (the last finalizer went away while deleting).
    pub object: Option<Value>,
    pub secret: Option<Value>,
    pub calls: Vec<Call>,
    pub resource_version: u64,
    /// Open watches, fed with the changes this fake makes.
    pub store_watch: Option<WatchSender>,
    pub secret_watch: Option<WatchSender>,
}

impl ApiState {
    pub fn notify(watch: &Option<WatchSender>, type_: &str, object: &Value) {
        if let Some(tx) = watch {
            let mut line = serde_json::to_vec(&json!({"type": type_, "object": object})).unwrap();
            line.push(b'\n');
            let _ = tx.unbounded_send(Ok(Bytes::from(line)));
        }
    }
}

#[derive(Clone)]
pub struct ApiServer(pub Arc<Mutex<ApiState>>);

impl ApiServer {
    /// A client whose every request is answered by this fake.
    pub fn start(
        object: Value,
        secret: Option<Value>,
    ) -> (Self, kube::Client, tokio::task::JoinHandle<()>) {
        let server = Self(Arc::new(Mutex::new(ApiState {
            object: Some(object),
            secret,
            resource_version: 100,
            ..ApiState::default()
        })));
        let (service, mut handle) =
            tower_test::mock::pair::<Request<Body>, Response<ResponseBody>>();
        let task = tokio::spawn({
            let server = server.clone();
            async move {
                while let Some((request, respond)) = handle.next_request().await {
                    let response = server.answer(request).await;
                    respond.send_response(response);
                }
            }
        });
        (server, kube::Client::new(service, NS), task)
    }

    pub async fn answer(&self, request: Request<Body>) -> Response<ResponseBody> {
        let (parts, body) = request.into_parts();
        let bytes = body
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        let call = Call {
            method: parts.method.to_string(),
            path: parts.uri.path().to_string(),
            query: parts.uri.query().unwrap_or_default().to_string(),
            content_type: parts
                .headers
                .get(http::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_string(),
            body: body.clone(),
        };
        let mut state = self.0.lock().unwrap();
        state.calls.push(call.clone());
        let watching = call.query.split('&').any(|q| q == "watch=true");
        let (status, payload) = match (call.method.as_str(), call.path.as_str()) {
            ("GET", STORES_PATH | SECRETS_PATH) if watching => {
                let (tx, rx) = mpsc::unbounded();
                if call.path == STORES_PATH {
                    state.store_watch = Some(tx);
                } else {
                    state.secret_watch = Some(tx);
                }
                return Response::builder()
                    .header(http::header::CONTENT_TYPE, "application/json")
                    .body(ResponseBody::from_stream(rx))
                    .unwrap();
            }
            ("GET", STORES_PATH) => {
                let items: Vec<Value> = state.object.iter().cloned().collect();
                let rv = state.resource_version.to_string();
                (
                    StatusCode::OK,
                    json!({"apiVersion": "xks-operator.io/v1alpha1", "kind": "ExternalKeyStoreList",
                                        "metadata": {"resourceVersion": rv}, "items": items}),
                )
            }
            ("GET", SECRETS_PATH) => {
                let items: Vec<Value> = state.secret.iter().cloned().collect();
                let rv = state.resource_version.to_string();
                (
                    StatusCode::OK,
                    json!({"apiVersion": "v1", "kind": "SecretList",
                                        "metadata": {"resourceVersion": rv}, "items": items}),
                )
            }
            ("GET", SECRET_PATH) => match &state.secret {
                Some(s) => (StatusCode::OK, s.clone()),
                None => not_found("secrets", "xks-proxy-credential"),
            },
            ("PATCH", STATUS_PATH) => {
                state.resource_version += 1;
                let rv = state.resource_version.to_string();
                match state.object.as_mut() {
                    Some(obj) => {
                        obj["status"] = body["status"].clone();
                        obj["metadata"]["resourceVersion"] = rv.into();
                        let updated = obj.clone();
                        ApiState::notify(&state.store_watch, "MODIFIED", &updated);
                        (StatusCode::OK, updated)
                    }
                    None => not_found("externalkeystores", NAME),
                }
            }
            ("PATCH", STORE_PATH) => {
                let current_rv = state.resource_version.to_string();
                state.resource_version += 1;
                let rv = state.resource_version.to_string();
                let Some(obj) = state.object.as_mut() else {
                    let (s, v) = not_found("externalkeystores", NAME);
                    return respond_with(s, v);
                };
                let wanted_rv = &body["metadata"]["resourceVersion"];
                if !wanted_rv.is_null() && wanted_rv != &Value::String(current_rv) {
                    (
                        StatusCode::CONFLICT,
                        json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "Conflict", "code": 409, "message": "the object has been modified"}),
                    )
                } else {
                    obj["metadata"]["finalizers"] = body["metadata"]["finalizers"].clone();
                    obj["metadata"]["resourceVersion"] = rv.into();
                    let updated = obj.clone();
                    let released = updated["metadata"]["deletionTimestamp"].is_string()
                        && updated["metadata"]["finalizers"]
                            .as_array()
                            .is_none_or(|f| f.is_empty());
                    if released {
                        state.object = None;
                        ApiState::notify(&state.store_watch, "DELETED", &updated);
                    } else {
                        ApiState::notify(&state.store_watch, "MODIFIED", &updated);
                    }
                    (StatusCode::OK, updated)
                }
            }
            ("POST", EVENTS_PATH) => (StatusCode::CREATED, body),
            ("PATCH", p) if p.starts_with(EVENTS_PATH) => (StatusCode::OK, body),
            _ => not_found("unknown", &call.path),
        };
        respond_with(status, payload)
    }

    pub fn object(&self) -> Option<ExternalKeyStore> {
        let state = self.0.lock().unwrap();
        state
            .object
            .clone()
            .map(|o| serde_json::from_value(o).expect("a valid ExternalKeyStore"))
    }

    pub fn calls(&self) -> Vec<Call> {
        self.0.lock().unwrap().calls.clone()
    }

    pub fn clear_calls(&self) {
        self.0.lock().unwrap().calls.clear();
    }

    /// Someone edits the spec (fields merged in, one level deep under
    /// `spec`): a new generation, and the watch says so.
    pub fn set_spec(&self, fields: Value) {
        let mut state = self.0.lock().unwrap();
        state.resource_version += 1;
        let rv = state.resource_version.to_string();
        let Some(obj) = state.object.as_mut() else {
            return;
        };
        if let Value::Object(fields) = fields {
            for (k, v) in fields {
                match (obj["spec"].get_mut(&k), v) {
                    (Some(Value::Object(current)), Value::Object(new)) => current.extend(new),
                    (_, v) => obj["spec"][k.as_str()] = v,
                }
            }
        }
        let generation = obj["metadata"]["generation"].as_i64().unwrap_or(1) + 1;
        obj["metadata"]["generation"] = generation.into();
        obj["metadata"]["resourceVersion"] = rv.into();
        let updated = obj.clone();
        ApiState::notify(&state.store_watch, "MODIFIED", &updated);
    }

    /// The Secret is deleted (or put back).
    pub fn set_secret(&self, secret: Option<Value>) {
        let mut state = self.0.lock().unwrap();
        state.resource_version += 1;
        let rv = state.resource_version.to_string();
        state.secret = secret.map(|mut s| {
            s["metadata"]["resourceVersion"] = rv.into();
            s
        });
        let (type_, object) = match &state.secret {
            Some(s) => ("MODIFIED", s.clone()),
            None => ("DELETED", self::secret()),
        };
        ApiState::notify(&state.secret_watch, type_, &object);
    }

    /// The bodies of the Events published (created or repeated).
    pub fn events(&self) -> Vec<Value> {
        self.calls()
            .into_iter()
            .filter(|c| c.path.starts_with(EVENTS_PATH))
            .map(|c| c.body)
            .collect()
    }

    /// Status writes so far.
    pub fn status_writes(&self) -> usize {
        self.calls()
            .iter()
            .filter(|c| c.path == STATUS_PATH)
            .count()
    }

    /// Someone rotates the credential: the Secret changes, the resource not.
    pub fn rotate_secret(&self, new_secret: &str) {
        use base64::Engine;
        let mut state = self.0.lock().unwrap();
        state.resource_version += 1;
        let rv = state.resource_version.to_string();
        if let Some(secret) = state.secret.as_mut() {
            secret["data"]["secretAccessKey"] = base64::engine::general_purpose::STANDARD
                .encode(new_secret)
                .into();
            secret["metadata"]["resourceVersion"] = rv.into();
            let updated = secret.clone();
            ApiState::notify(&state.secret_watch, "MODIFIED", &updated);
        }
    }
}

pub fn respond_with(status: StatusCode, body: Value) -> Response<ResponseBody> {
    Response::builder()
        .status(status)
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(ResponseBody::from(serde_json::to_vec(&body).unwrap()))
        .unwrap()
}

pub fn not_found(kind: &str, name: &str) -> (StatusCode, Value) {
    (
        StatusCode::NOT_FOUND,
        json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404,
               "message": format!("{kind} \"{name}\" not found")}),
    )
}

// ---------------------------------------------------------------- fixtures

pub fn resource(spec_extra: Value, metadata_extra: Value, status: Option<Value>) -> Value {
    let mut obj = json!({
        "apiVersion": "xks-operator.io/v1alpha1",
        "kind": "ExternalKeyStore",
        "metadata": {
            "name": NAME, "namespace": NS, "uid": "8b0c7e42-0000-4000-8000-000000000001",
            "generation": 1, "resourceVersion": "100"
        },
        "spec": {
            "region": "eu-west-1",
            "proxy": {
                "uriEndpoint": "https://xks.example.com",
                "uriPath": "/kms/xks/v1",
                "credentialsSecretRef": {"name": "xks-proxy-credential"}
            }
        }
    });
    merge(&mut obj["spec"], spec_extra);
    merge(&mut obj["metadata"], metadata_extra);
    if let Some(s) = status {
        obj["status"] = s;
    }
    obj
}

pub fn merge(target: &mut Value, extra: Value) {
    if let (Some(t), Value::Object(e)) = (target.as_object_mut(), extra) {
        for (k, v) in e {
            t.insert(k, v);
        }
    }
}

pub fn secret() -> Value {
    use base64::Engine;
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "xks-proxy-credential", "namespace": NS},
        "data": {"accessKeyId": b64(AKID), "secretAccessKey": b64(SECRET)}
    })
}

pub fn with_finalizer() -> Value {
    json!({"finalizers": [FINALIZER]})
}

/// A status as the operator left it after an earlier pass that found the
/// store in sync (so no initial status is written).
pub fn recorded_status(id: &str) -> Value {
    json!({
        "observedGeneration": 1,
        "keyStoreId": id,
        "conditions": [{"type": "Ready", "status": "True", "reason": "Connected", "message": "ok",
                        "lastTransitionTime": "2026-01-01T00:00:00Z", "observedGeneration": 1}]
    })
}

pub fn condition<'a>(status: &'a Value, type_: &str) -> &'a Value {
    status["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == type_))
        .unwrap_or(&Value::Null)
}

pub fn set_annotation(api: &ApiServer, key: &str, value: &str) {
    let mut state = api.0.lock().unwrap();
    if let Some(obj) = state.object.as_mut() {
        obj["metadata"]["annotations"][key] = value.into();
    }
}

pub async fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    while !done() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting until {what}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}
