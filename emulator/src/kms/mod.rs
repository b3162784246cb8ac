//! The KMS side of the emulator: the awsJson1_1 `TrentService` API for
//! custom key stores and the KMS keys in them, written from the contract
//! (shared/design/kms-xks-contract.md) and sharing no code with the operator.
//! Each account and Region is a [`KmsService`] of its own, created on first
//! use by [`accounts::KmsAccounts`].

pub mod accounts;
pub mod error;
mod input;
mod ops;
mod proxy;
pub mod state;
mod validate;

use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::Value;

use super::config::VpcEndpointServiceConfig;
use super::faults::{FaultEngine, Verdict};
use super::proxy_client::ProxyCaller;
use error::KmsError;
use state::KmsState;

/// Settings of one account and Region; the control API may change all but
/// the account and Region at run time.
#[derive(Debug, Clone)]
pub struct Settings {
    pub region: String,
    pub account_id: String,
    pub connect_delay: Duration,
    pub disconnect_delay: Duration,
    pub max_custom_key_stores: usize,
    pub strict_connected_updates: bool,
}

/// VPC endpoint services that exist, shared by every account and Region
/// (a service is reachable from any account its owner allows).
pub type VpcServices = Arc<RwLock<Vec<VpcEndpointServiceConfig>>>;

/// Emulated KMS for one account and Region: its stores, keys, settings,
/// faults (with their token buckets) and counters. The proxy fleet, the
/// resolve map and the VPC endpoint services are shared.
pub struct KmsService {
    state: Mutex<KmsState>,
    settings: RwLock<Settings>,
    pub faults: FaultEngine,
    pub caller: Arc<ProxyCaller>,
    vpc_services: VpcServices,
}

/// Operations this emulator answers.
pub const OPERATIONS: &[&str] = &[
    "CreateCustomKeyStore",
    "DescribeCustomKeyStores",
    "UpdateCustomKeyStore",
    "ConnectCustomKeyStore",
    "DisconnectCustomKeyStore",
    "DeleteCustomKeyStore",
    "CreateKey",
    "DescribeKey",
    "ListKeys",
    "ScheduleKeyDeletion",
    "CancelKeyDeletion",
];

/// Fault keys must name an emulated operation or `*`: a typo must not
/// silently disable a fault.
pub fn check_fault_keys<'a>(keys: impl IntoIterator<Item = &'a String>) -> Result<(), String> {
    for key in keys {
        if key != crate::faults::ALL_OPERATIONS && !OPERATIONS.contains(&key.as_str()) {
            return Err(format!(
                "faults: unknown KMS operation {key:?} (use one of {} or \"*\")",
                OPERATIONS.join(", ")
            ));
        }
    }
    Ok(())
}

impl KmsService {
    pub fn new(
        settings: Settings,
        faults: FaultEngine,
        caller: Arc<ProxyCaller>,
        vpc_services: VpcServices,
    ) -> Self {
        Self {
            state: Mutex::new(KmsState::default()),
            settings: RwLock::new(settings),
            faults,
            caller,
            vpc_services,
        }
    }

    pub fn account_id(&self) -> String {
        self.settings().account_id
    }

    pub fn region(&self) -> String {
        self.settings().region
    }

    pub fn vpc_endpoint_services(&self) -> Vec<VpcEndpointServiceConfig> {
        self.vpc_services
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Number of stores and keys, for `GET /_emulator/accounts`.
    pub fn counts(&self) -> (usize, usize) {
        let state = self.lock();
        (state.stores.len(), state.keys.len())
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, KmsState> {
        // No handler panics while holding the lock on data it half-changed;
        // keep serving after a poisoned lock.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn settings(&self) -> Settings {
        self.settings
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn update_settings(&self, f: impl FnOnce(&mut Settings)) {
        f(&mut self.settings.write().unwrap_or_else(|p| p.into_inner()));
    }

    /// Forget every store and key.
    pub fn reset(&self) {
        *self.lock() = KmsState::default();
    }

    /// Stores and keys without secrets, for `GET /_emulator/state`.
    pub fn describe_state(&self) -> Value {
        let state = self.lock();
        let stores: Vec<Value> = state.stores.iter().map(|s| s.to_json()).collect();
        let keys: Vec<Value> = state
            .keys
            .iter()
            .map(|k| k.metadata(state.store_state(k.custom_key_store_id.as_deref())))
            .collect();
        serde_json::json!({"customKeyStores": stores, "keys": keys})
    }

    /// Remove keys pending deletion, as if their waiting period had passed.
    pub fn purge_pending_deletion(&self) -> usize {
        let mut state = self.lock();
        let before = state.keys.len();
        state.keys.retain(|k| k.deletion_date.is_none());
        before - state.keys.len()
    }

    /// Answer one `POST /` request, with a request id like KMS's.
    pub async fn handle(self: Arc<Self>, headers: &HeaderMap, body: Bytes) -> Response {
        with_request_id(self.answer(headers, body).await)
    }

    /// Refuse a request whose credentials are expired or invalid, before
    /// any fault or quota applies (as AWS authenticates first); it counts
    /// as a request and an error of its operation.
    pub fn reject(&self, headers: &HeaderMap, error: KmsError) -> Response {
        if let Some(operation) = operation_of(headers) {
            self.faults.record_rejected(operation, error.code);
        }
        tracing::debug!(error = error.code, "KMS request refused: credentials");
        with_request_id(error.into_response())
    }

    async fn answer(self: Arc<Self>, headers: &HeaderMap, body: Bytes) -> Response {
        let Some(operation) = operation_of(headers) else {
            return KmsError::new(
                "UnknownOperationException",
                "The operation is not supported by this emulator.",
            )
            .into_response();
        };
        let latency = self.faults.latency(operation);
        if !latency.is_zero() {
            tokio::time::sleep(latency).await;
        }
        let result = match self.faults.admit(operation) {
            Verdict::Drop => {
                tracing::debug!(operation, "fault: dropping the connection");
                return dropped_connection();
            }
            Verdict::Throttle => Err(KmsError::throttling(operation)),
            Verdict::InternalError => Err(KmsError::internal("Injected internal error.")),
            Verdict::Proceed => match input::parse(&body) {
                Ok(body) => Arc::clone(&self).dispatch(operation, body).await,
                Err(e) => Err(e),
            },
        };
        match result {
            Ok(value) => {
                tracing::debug!(operation, "ok");
                let mut response = (StatusCode::OK, value.to_string()).into_response();
                response.headers_mut().insert(
                    "content-type",
                    HeaderValue::from_static("application/x-amz-json-1.1"),
                );
                response
            }
            Err(e) => {
                tracing::debug!(operation, error = e.code, "error");
                self.faults.record_error(operation, e.code);
                e.into_response()
            }
        }
    }

    async fn dispatch(
        self: Arc<Self>,
        operation: &str,
        body: input::Body,
    ) -> Result<Value, KmsError> {
        match operation {
            "CreateCustomKeyStore" => self.create_custom_key_store(&body).await,
            "DescribeCustomKeyStores" => self.describe_custom_key_stores(&body),
            "UpdateCustomKeyStore" => self.update_custom_key_store(&body).await,
            "ConnectCustomKeyStore" => self.connect_custom_key_store(&body),
            "DisconnectCustomKeyStore" => self.disconnect_custom_key_store(&body),
            "DeleteCustomKeyStore" => self.delete_custom_key_store(&body),
            "CreateKey" => self.create_key(&body).await,
            "DescribeKey" => self.describe_key(&body),
            "ListKeys" => self.list_keys(&body),
            "ScheduleKeyDeletion" => self.schedule_key_deletion(&body),
            "CancelKeyDeletion" => self.cancel_key_deletion(&body),
            _ => Err(KmsError::new(
                "UnknownOperationException",
                "Unknown operation.",
            )),
        }
    }
}

/// The emulated operation an `X-Amz-Target: TrentService.<Op>` names.
fn operation_of(headers: &HeaderMap) -> Option<&'static str> {
    let target = headers.get("x-amz-target").and_then(|v| v.to_str().ok())?;
    let op = target.strip_prefix("TrentService.")?;
    OPERATIONS.iter().copied().find(|o| *o == op)
}

fn with_request_id(mut response: Response) -> Response {
    if let Ok(id) = HeaderValue::from_str(&state::new_key_id()) {
        response.headers_mut().insert("x-amzn-requestid", id);
    }
    response
}

/// A response whose body fails at once: the connection is cut before a
/// complete answer, which clients see as a transport error.
fn dropped_connection() -> Response {
    let stream = futures::stream::once(async {
        Err::<Bytes, std::io::Error>(std::io::Error::other("fault: connection dropped"))
    });
    Response::new(Body::from_stream(stream))
}
