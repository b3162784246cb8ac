//! Run-time control of the emulator: the Rust API ([`EmulatorControl`]) and
//! the same operations over HTTP under `/_emulator/` (JSON), documented in
//! docs/emulator.md. Nothing here ever returns a secret.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::extract::{FromRequest, Path, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use super::config::{EmulatorConfig, VpcEndpointServiceConfig};
use super::faults::{KmsFaults, OperationFaults, OperationStats};
use super::kms::{KmsService, check_fault_keys};
use super::xks_proxy::{
    ExternalKeyConfig, KeyManagerHealth, ProxyConfig, ProxyCredentialConfig, ProxyFaults,
    ProxyFleet,
};

/// Settings that can change at run time (all optional in a patch).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SettingsPatch {
    pub connect_delay_ms: Option<u64>,
    pub disconnect_delay_ms: Option<u64>,
    pub max_custom_key_stores: Option<usize>,
    pub strict_connected_updates: Option<bool>,
}

/// Handle on a running emulator: faults, stats, state, proxies.
pub struct EmulatorControl {
    kms: Arc<KmsService>,
    fleet: ProxyFleet,
    resolve: RwLock<BTreeMap<String, String>>,
    self_url: String,
    base: EmulatorConfig,
    base_resolve: BTreeMap<String, String>,
}

impl EmulatorControl {
    pub(super) fn new(
        kms: Arc<KmsService>,
        fleet: ProxyFleet,
        resolve: BTreeMap<String, String>,
        self_url: String,
        base: EmulatorConfig,
    ) -> Self {
        Self {
            kms,
            fleet,
            base_resolve: resolve.clone(),
            resolve: RwLock::new(resolve),
            self_url,
            base,
        }
    }

    pub(super) fn kms(&self) -> Arc<KmsService> {
        Arc::clone(&self.kms)
    }

    pub fn fleet(&self) -> &ProxyFleet {
        &self.fleet
    }

    // --- KMS faults and statistics -------------------------------------

    /// Replace every KMS fault (`*` applies to operations without an entry).
    pub fn set_faults(&self, faults: KmsFaults) {
        self.kms.faults.set_all(faults);
    }

    /// Set or clear (`None`) the faults of one operation, or of `*`.
    pub fn set_operation_faults(&self, operation: &str, faults: Option<OperationFaults>) {
        self.kms.faults.set(operation, faults);
    }

    pub fn faults(&self) -> KmsFaults {
        self.kms.faults.faults()
    }

    /// Per-operation counters of the KMS API.
    pub fn operation_stats(&self) -> BTreeMap<String, OperationStats> {
        self.kms.faults.stats()
    }

    /// Requests and throttles of one operation (0 when never called).
    pub fn requests(&self, operation: &str) -> u64 {
        self.operation_stats()
            .get(operation)
            .map_or(0, |s| s.requests)
    }

    pub fn throttled(&self, operation: &str) -> u64 {
        self.operation_stats()
            .get(operation)
            .map_or(0, |s| s.throttled)
    }

    pub fn reset_stats(&self) {
        self.kms.faults.reset_stats();
    }

    /// `GET /_emulator/stats`.
    pub fn stats(&self) -> Value {
        let ops = self.operation_stats();
        let sum = |f: fn(&OperationStats) -> u64| ops.values().map(f).sum::<u64>();
        let proxies: BTreeMap<String, u64> = self
            .fleet
            .hosts()
            .into_iter()
            .map(|h| {
                let n = self.fleet.request_count(&h);
                (h, n)
            })
            .collect();
        json!({
            "operations": ops,
            "totals": {
                "requests": sum(|s| s.requests),
                "throttled": sum(|s| s.throttled),
                "internalErrors": sum(|s| s.internal_errors),
                "dropped": sum(|s| s.dropped),
            },
            "proxyRequests": proxies,
        })
    }

    // --- state ----------------------------------------------------------

    /// `GET /_emulator/state`: stores, keys, proxies, resolve map, settings
    /// and faults, without any secret.
    pub fn state(&self) -> Value {
        let settings = self.kms.settings();
        let mut state = self.kms.describe_state();
        state["proxies"] = self.fleet.describe()["proxies"].clone();
        state["resolve"] = json!(self.resolve_map());
        state["settings"] = json!({
            "region": settings.region,
            "accountId": settings.account_id,
            "connectDelayMs": settings.connect_delay.as_millis() as u64,
            "disconnectDelayMs": settings.disconnect_delay.as_millis() as u64,
            "maxCustomKeyStores": settings.max_custom_key_stores,
            "strictConnectedUpdates": settings.strict_connected_updates,
            "vpcEndpointServices": settings.vpc_endpoint_services,
        });
        state["faults"] = json!(self.faults());
        state
    }

    /// Back to the configuration the emulator started with: no stores, no
    /// keys, configured proxies, faults and settings, zeroed statistics.
    pub fn reset(&self) {
        self.kms.reset();
        self.kms.faults.set_all(self.base.faults.clone());
        self.kms.faults.reset_stats();
        for host in self.fleet.hosts() {
            self.fleet.remove(&host);
        }
        for proxy in &self.base.proxies {
            self.fleet.upsert(proxy.clone());
        }
        let current: Vec<String> = self.resolve_map().into_keys().collect();
        for host in current {
            self.kms.caller.remove_resolve(&host);
        }
        for (host, url) in &self.base_resolve {
            self.kms.caller.set_resolve(host, url);
        }
        *self.resolve.write().unwrap_or_else(|p| p.into_inner()) = self.base_resolve.clone();
        let base = &self.base;
        self.kms.update_settings(|s| {
            s.connect_delay = Duration::from_millis(base.connect_delay_ms);
            s.disconnect_delay = Duration::from_millis(base.disconnect_delay_ms);
            s.max_custom_key_stores = base.max_custom_key_stores;
            s.strict_connected_updates = base.strict_connected_updates;
            s.vpc_endpoint_services = base.vpc_endpoint_services.clone();
        });
    }

    pub fn update_settings(&self, patch: SettingsPatch) {
        self.kms.update_settings(|s| {
            if let Some(ms) = patch.connect_delay_ms {
                s.connect_delay = Duration::from_millis(ms);
            }
            if let Some(ms) = patch.disconnect_delay_ms {
                s.disconnect_delay = Duration::from_millis(ms);
            }
            if let Some(n) = patch.max_custom_key_stores {
                s.max_custom_key_stores = n;
            }
            if let Some(b) = patch.strict_connected_updates {
                s.strict_connected_updates = b;
            }
        });
    }

    /// Drop keys pending deletion, as if their waiting period had ended.
    pub fn purge_pending_deletion(&self) -> usize {
        self.kms.purge_pending_deletion()
    }

    // --- resolve map ----------------------------------------------------

    pub fn resolve_map(&self) -> BTreeMap<String, String> {
        self.resolve
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Route a proxy host to a base URL (`http://127.0.0.1:4567`).
    pub fn set_resolve(&self, host: &str, url: &str) {
        let host = host.to_ascii_lowercase();
        self.kms.caller.set_resolve(&host, url);
        self.resolve
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(host, url.to_string());
    }

    /// Make a host unreachable.
    pub fn remove_resolve(&self, host: &str) -> bool {
        let host = host.to_ascii_lowercase();
        self.kms.caller.remove_resolve(&host);
        self.resolve
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&host)
            .is_some()
    }

    // --- proxies --------------------------------------------------------

    /// Add or replace a proxy; a host without a resolve entry resolves to
    /// this emulator's own listener.
    pub fn upsert_proxy(&self, proxy: ProxyConfig) -> Result<(), String> {
        let host = proxy.host.to_ascii_lowercase();
        self.fleet.try_upsert(proxy)?;
        if !self.resolve_map().contains_key(&host) {
            let url = self.self_url.clone();
            self.set_resolve(&host, &url);
        }
        Ok(())
    }

    /// Remove a proxy; a resolve entry pointing at this emulator goes too,
    /// so the host becomes unreachable rather than answered by the KMS API.
    pub fn remove_proxy(&self, host: &str) -> bool {
        let removed = self.fleet.remove(host);
        let host = host.to_ascii_lowercase();
        if self.resolve_map().get(&host) == Some(&self.self_url) {
            self.remove_resolve(&host);
        }
        removed
    }

    pub fn add_credential(&self, host: &str, cred: ProxyCredentialConfig) -> Result<(), String> {
        self.fleet.add_credential(host, cred)
    }

    pub fn remove_credential(&self, host: &str, access_key_id: &str) -> Result<(), String> {
        self.fleet.remove_credential(host, access_key_id)
    }

    pub fn set_key_manager_health(
        &self,
        host: &str,
        key_manager_id: &str,
        health: KeyManagerHealth,
    ) -> Result<(), String> {
        self.fleet
            .set_key_manager_health(host, key_manager_id, health)
    }

    pub fn set_proxy_faults(&self, host: &str, faults: ProxyFaults) -> Result<(), String> {
        self.fleet.set_faults(host, faults)
    }

    pub fn upsert_key(&self, host: &str, key: ExternalKeyConfig) -> Result<(), String> {
        self.fleet.upsert_key(host, key)
    }

    pub fn remove_key(&self, host: &str, external_key_id: &str) -> Result<(), String> {
        self.fleet.remove_key(host, external_key_id)
    }

    // --- VPC endpoint services --------------------------------------------

    /// Make a VPC endpoint service "exist" (replacing one of the same name).
    pub fn set_vpc_endpoint_service(&self, service: VpcEndpointServiceConfig) {
        self.kms.update_settings(|s| {
            s.vpc_endpoint_services.retain(|v| v.name != service.name);
            s.vpc_endpoint_services.push(service);
        });
    }

    pub fn remove_vpc_endpoint_service(&self, name: &str) -> bool {
        let mut removed = false;
        self.kms.update_settings(|s| {
            let before = s.vpc_endpoint_services.len();
            s.vpc_endpoint_services.retain(|v| v.name != name);
            removed = s.vpc_endpoint_services.len() != before;
        });
        removed
    }
}

// --- HTTP -----------------------------------------------------------------

type Ctl = State<Arc<EmulatorControl>>;

fn ok() -> Response {
    Json(json!({"ok": true})).into_response()
}

fn bad(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(json!({"error": message.into()}))).into_response()
}

/// A JSON request body whose rejection answers `{"error": ...}`, like every
/// other control error (axum's own `Json` answers in plain text).
struct Body<T>(T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for Body<T> {
    type Rejection = Response;

    async fn from_request(req: Request, state: &S) -> Result<Self, Response> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(value)) => Ok(Self(value)),
            Err(rejection) => Err(bad(rejection.status(), rejection.body_text())),
        }
    }
}

/// A proxy from the body of `PUT /proxies/{host}`: the host is the path's
/// (a body may repeat it, but not contradict it).
fn proxy_from_body(host: String, mut body: Value) -> Result<ProxyConfig, (StatusCode, String)> {
    let Some(fields) = body.as_object_mut() else {
        return Err((
            StatusCode::BAD_REQUEST,
            "the body must be a JSON object".into(),
        ));
    };
    if let Some(other) = fields.get("host").and_then(Value::as_str)
        && other != host
    {
        return Err((
            StatusCode::BAD_REQUEST,
            format!("the body names host {other:?} but the path names {host:?}"),
        ));
    }
    fields.insert("host".into(), Value::String(host));
    serde_json::from_value(body).map_err(|e| {
        (
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("invalid proxy: {e}"),
        )
    })
}

fn done(result: Result<(), String>) -> Response {
    match result {
        Ok(()) => ok(),
        Err(e) if e.starts_with("no emulated XKS proxy") => bad(StatusCode::NOT_FOUND, e),
        Err(e) => bad(StatusCode::BAD_REQUEST, e),
    }
}

fn found(found: bool, what: &str) -> Response {
    if found {
        ok()
    } else {
        bad(StatusCode::NOT_FOUND, format!("{what} not found"))
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct HealthBody {
    health: KeyManagerHealth,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct UrlBody {
    url: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct VpcServiceBody {
    #[serde(default)]
    owner: Option<String>,
    private_dns_name: String,
}

/// Routes under `/_emulator`.
pub(super) fn router() -> Router<Arc<EmulatorControl>> {
    Router::new()
        .route("/health", get(|| async { ok() }))
        .route("/state", get(|State(c): Ctl| async move { Json(c.state()) }))
        .route("/stats", get(|State(c): Ctl| async move { Json(c.stats()) }))
        .route(
            "/stats/reset",
            post(|State(c): Ctl| async move {
                c.reset_stats();
                ok()
            }),
        )
        .route(
            "/reset",
            post(|State(c): Ctl| async move {
                c.reset();
                ok()
            }),
        )
        .route(
            "/faults",
            get(|State(c): Ctl| async move { Json(json!(c.faults())) })
                .put(|State(c): Ctl, Body(f): Body<KmsFaults>| async move {
                    if let Err(e) = check_fault_keys(f.keys()) {
                        return bad(StatusCode::BAD_REQUEST, e);
                    }
                    c.set_faults(f);
                    ok()
                })
                .delete(|State(c): Ctl| async move {
                    c.set_faults(KmsFaults::new());
                    ok()
                }),
        )
        .route(
            "/faults/{operation}",
            put(
                |State(c): Ctl, Path(op): Path<String>, Body(f): Body<OperationFaults>| async move {
                    if let Err(e) = check_fault_keys([&op]) {
                        return bad(StatusCode::BAD_REQUEST, e);
                    }
                    c.set_operation_faults(&op, Some(f));
                    ok()
                },
            )
            .delete(|State(c): Ctl, Path(op): Path<String>| async move {
                c.set_operation_faults(&op, None);
                ok()
            }),
        )
        .route(
            "/settings",
            put(|State(c): Ctl, Body(p): Body<SettingsPatch>| async move {
                c.update_settings(p);
                ok()
            }),
        )
        .route(
            "/keys/purge-pending-deletion",
            post(|State(c): Ctl| async move {
                Json(json!({"purged": c.purge_pending_deletion()}))
            }),
        )
        .route(
            "/proxies",
            get(|State(c): Ctl| async move { Json(c.fleet().describe()) }),
        )
        .route(
            "/proxies/{host}",
            put(
                |State(c): Ctl, Path(host): Path<String>, Body(body): Body<Value>| async move {
                    match proxy_from_body(host, body) {
                        Ok(p) => done(c.upsert_proxy(p)),
                        Err((status, message)) => bad(status, message),
                    }
                },
            )
            .delete(|State(c): Ctl, Path(host): Path<String>| async move {
                found(c.remove_proxy(&host), "proxy")
            }),
        )
        .route(
            "/proxies/{host}/credentials",
            post(
                |State(c): Ctl,
                 Path(host): Path<String>,
                 Body(cred): Body<ProxyCredentialConfig>| async move {
                    done(c.add_credential(&host, cred))
                },
            ),
        )
        .route(
            "/proxies/{host}/credentials/{access_key_id}",
            axum::routing::delete(
                |State(c): Ctl, Path((host, akid)): Path<(String, String)>| async move {
                    done(c.remove_credential(&host, &akid))
                },
            ),
        )
        .route(
            "/proxies/{host}/key-managers/{id}",
            put(
                |State(c): Ctl,
                 Path((host, id)): Path<(String, String)>,
                 Body(b): Body<HealthBody>| async move {
                    done(c.set_key_manager_health(&host, &id, b.health))
                },
            ),
        )
        .route(
            "/proxies/{host}/faults",
            put(
                |State(c): Ctl, Path(host): Path<String>, Body(f): Body<ProxyFaults>| async move {
                    done(c.set_proxy_faults(&host, f))
                },
            ),
        )
        .route(
            "/proxies/{host}/keys/{id}",
            put(
                |State(c): Ctl,
                 Path((host, id)): Path<(String, String)>,
                 Body(mut k): Body<ExternalKeyConfig>| async move {
                    k.id = id;
                    done(c.upsert_key(&host, k))
                },
            )
            .delete(
                |State(c): Ctl, Path((host, id)): Path<(String, String)>| async move {
                    done(c.remove_key(&host, &id))
                },
            ),
        )
        .route(
            "/resolve/{host}",
            put(
                |State(c): Ctl, Path(host): Path<String>, Body(b): Body<UrlBody>| async move {
                    c.set_resolve(&host, &b.url);
                    ok()
                },
            )
            .delete(|State(c): Ctl, Path(host): Path<String>| async move {
                found(c.remove_resolve(&host), "resolve entry")
            }),
        )
        .route(
            "/vpc-endpoint-services/{name}",
            put(
                |State(c): Ctl, Path(name): Path<String>, Body(b): Body<VpcServiceBody>| async move {
                    c.set_vpc_endpoint_service(VpcEndpointServiceConfig {
                        name,
                        owner: b.owner,
                        private_dns_name: b.private_dns_name,
                    });
                    ok()
                },
            )
            .delete(|State(c): Ctl, Path(name): Path<String>| async move {
                found(c.remove_vpc_endpoint_service(&name), "VPC endpoint service")
            }),
        )
}
