//! Run-time control of the emulator: the Rust API ([`EmulatorControl`]) and
//! the same operations over HTTP under `/_emulator/` (JSON), documented in
//! docs/emulator.md. Nothing here ever returns a secret.
//!
//! KMS state is kept per account and Region: [`EmulatorControl::account`]
//! (over HTTP, `?account=...&region=...`) addresses one; without it the
//! operations act on the default account in the config's Region, except
//! the resets, the purge and the settings, which act on every one.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use axum::extract::{FromRequest, FromRequestParts, Path, Request, State};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use super::config::{EmulatorConfig, IdentityConfig, RoleConfig, VpcEndpointServiceConfig};
use super::faults::{KmsFaults, OperationFaults, OperationStats};
use super::iam;
use super::kms::accounts::{self, KmsAccounts};
use super::kms::{KmsService, check_fault_keys};
use super::sts::{self, StsService};
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

/// Handle on a running emulator: faults, stats, state, proxies, STS.
pub struct EmulatorControl {
    kms: Arc<KmsAccounts>,
    sts: Arc<StsService>,
    fleet: ProxyFleet,
    resolve: RwLock<BTreeMap<String, String>>,
    self_url: String,
    base: EmulatorConfig,
    base_resolve: BTreeMap<String, String>,
}

/// KMS of one account in one Region: its faults, counters, state and settings.
pub struct AccountControl<'a> {
    control: &'a EmulatorControl,
    kms: Arc<KmsService>,
}

impl AccountControl<'_> {
    pub fn account_id(&self) -> String {
        self.kms.account_id()
    }

    pub fn region(&self) -> String {
        self.kms.region()
    }

    /// Replace every KMS fault of this account+Region (`*` applies to
    /// operations without an entry).
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

    /// Per-operation counters.
    pub fn operation_stats(&self) -> BTreeMap<String, OperationStats> {
        self.kms.faults.stats()
    }

    /// Requests of one operation (0 when never called).
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

    /// `GET /_emulator/stats`: this account+Region's KMS counters, and the
    /// requests each proxy received (from every account).
    pub fn stats(&self) -> Value {
        let ops = self.operation_stats();
        let sum = |f: fn(&OperationStats) -> u64| ops.values().map(f).sum::<u64>();
        json!({
            "accountId": self.account_id(),
            "region": self.region(),
            "operations": ops,
            "totals": {
                "requests": sum(|s| s.requests),
                "throttled": sum(|s| s.throttled),
                "internalErrors": sum(|s| s.internal_errors),
                "dropped": sum(|s| s.dropped),
            },
            "proxyRequests": self.control.proxy_requests(),
        })
    }

    /// `GET /_emulator/state`: stores, keys, settings and faults of this
    /// account+Region, and the shared proxies and resolve map, without any
    /// secret.
    pub fn state(&self) -> Value {
        let settings = self.kms.settings();
        let mut state = self.kms.describe_state();
        state["proxies"] = self.control.fleet.describe()["proxies"].clone();
        state["resolve"] = json!(self.control.resolve_map());
        state["settings"] = json!({
            "region": settings.region,
            "accountId": settings.account_id,
            "connectDelayMs": settings.connect_delay.as_millis() as u64,
            "disconnectDelayMs": settings.disconnect_delay.as_millis() as u64,
            "maxCustomKeyStores": settings.max_custom_key_stores,
            "strictConnectedUpdates": settings.strict_connected_updates,
            "vpcEndpointServices": self.kms.vpc_endpoint_services(),
        });
        state["faults"] = json!(self.faults());
        state
    }

    /// No stores or keys, the configured settings and faults, zero counters.
    pub fn reset(&self) {
        self.control.kms.reset_scope(&self.kms);
    }

    pub fn update_settings(&self, patch: SettingsPatch) {
        accounts::apply(&self.kms, &patch);
    }

    /// Drop this account+Region's keys pending deletion.
    pub fn purge_pending_deletion(&self) -> usize {
        self.kms.purge_pending_deletion()
    }
}

impl EmulatorControl {
    pub(super) fn new(
        kms: Arc<KmsAccounts>,
        sts: Arc<StsService>,
        fleet: ProxyFleet,
        resolve: BTreeMap<String, String>,
        self_url: String,
        base: EmulatorConfig,
    ) -> Self {
        Self {
            kms,
            sts,
            fleet,
            base_resolve: resolve.clone(),
            resolve: RwLock::new(resolve),
            self_url,
            base,
        }
    }

    pub(super) fn kms_accounts(&self) -> &KmsAccounts {
        &self.kms
    }

    pub fn fleet(&self) -> &ProxyFleet {
        &self.fleet
    }

    /// STS: roles, identities, sessions, its faults and counters.
    pub fn sts(&self) -> &StsService {
        &self.sts
    }

    /// KMS of `account_id` in `region` (created on first use).
    pub fn account(&self, account_id: &str, region: &str) -> AccountControl<'_> {
        AccountControl {
            control: self,
            kms: self.kms.get(account_id, region),
        }
    }

    /// KMS of the default account in the config's Region.
    pub fn default_account(&self) -> AccountControl<'_> {
        AccountControl {
            control: self,
            kms: self.kms.default_scope(),
        }
    }

    /// `GET /_emulator/accounts`: every account+Region KMS has seen.
    pub fn accounts(&self) -> Value {
        let list: Vec<Value> = self
            .kms
            .all()
            .into_iter()
            .map(|svc| {
                let (stores, keys) = svc.counts();
                let stats = svc.faults.stats();
                json!({
                    "accountId": svc.account_id(),
                    "region": svc.region(),
                    "customKeyStores": stores,
                    "keys": keys,
                    "requests": stats.values().map(|s| s.requests).sum::<u64>(),
                    "throttled": stats.values().map(|s| s.throttled).sum::<u64>(),
                })
            })
            .collect();
        json!({
            "default": {"accountId": self.kms.default_account(), "region": self.kms.default_region()},
            "accounts": list,
        })
    }

    fn proxy_requests(&self) -> BTreeMap<String, u64> {
        self.fleet
            .hosts()
            .into_iter()
            .map(|h| {
                let n = self.fleet.request_count(&h);
                (h, n)
            })
            .collect()
    }

    // --- KMS faults and statistics of the default account ------------------

    /// Replace every KMS fault of the default account+Region.
    pub fn set_faults(&self, faults: KmsFaults) {
        self.default_account().set_faults(faults);
    }

    /// Set or clear (`None`) the faults of one operation, or of `*`, in
    /// the default account+Region.
    pub fn set_operation_faults(&self, operation: &str, faults: Option<OperationFaults>) {
        self.default_account()
            .set_operation_faults(operation, faults);
    }

    pub fn faults(&self) -> KmsFaults {
        self.default_account().faults()
    }

    /// Per-operation counters of the default account+Region.
    pub fn operation_stats(&self) -> BTreeMap<String, OperationStats> {
        self.default_account().operation_stats()
    }

    /// Requests and throttles of one operation in the default
    /// account+Region (0 when never called).
    pub fn requests(&self, operation: &str) -> u64 {
        self.default_account().requests(operation)
    }

    pub fn throttled(&self, operation: &str) -> u64 {
        self.default_account().throttled(operation)
    }

    /// Zero the counters of every account+Region and of STS.
    pub fn reset_stats(&self) {
        for svc in self.kms.all() {
            svc.faults.reset_stats();
        }
        self.sts.faults.reset_stats();
    }

    /// `GET /_emulator/stats` of the default account+Region.
    pub fn stats(&self) -> Value {
        self.default_account().stats()
    }

    // --- state ----------------------------------------------------------

    /// `GET /_emulator/state` of the default account+Region.
    pub fn state(&self) -> Value {
        self.default_account().state()
    }

    /// Back to the configuration the emulator started with: no stores or
    /// keys in any account, configured proxies, resolve map, settings,
    /// faults, roles and identities, zeroed statistics; issued STS
    /// sessions expire.
    pub fn reset(&self) {
        self.kms.reset_all();
        self.sts.reset();
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
    }

    /// Change settings in every account+Region (and those created later),
    /// except what an override of the configuration sets for one.
    pub fn update_settings(&self, patch: SettingsPatch) {
        self.kms.update_settings_everywhere(&patch);
    }

    /// Drop keys pending deletion in every account+Region, as if their
    /// waiting period had ended.
    pub fn purge_pending_deletion(&self) -> usize {
        self.kms
            .all()
            .iter()
            .map(|svc| svc.purge_pending_deletion())
            .sum()
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

    /// Make a VPC endpoint service "exist" (replacing one of the same name),
    /// for every account.
    pub fn set_vpc_endpoint_service(&self, service: VpcEndpointServiceConfig) {
        self.kms.set_vpc_endpoint_service(service);
    }

    pub fn remove_vpc_endpoint_service(&self, name: &str) -> bool {
        self.kms.remove_vpc_endpoint_service(name)
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

/// A query string whose rejection answers `{"error": ...}` too.
struct QueryParams<T>(T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for QueryParams<T> {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Response> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(value)) => Ok(Self(value)),
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

/// `?account=...&region=...` of the routes that address one account+Region
/// of KMS: `None` when neither is given (either alone defaults to the
/// default account, or the config's Region). Any other query parameter is
/// refused, so a typo cannot silently address the default account.
struct Scope(Option<(String, String)>);

impl FromRequestParts<Arc<EmulatorControl>> for Scope {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut Parts,
        control: &Arc<EmulatorControl>,
    ) -> Result<Self, Response> {
        let (mut account, mut region) = (None, None);
        for (k, v) in form_urlencoded::parse(parts.uri.query().unwrap_or_default().as_bytes()) {
            match k.as_ref() {
                "account" if iam::is_account_id(&v) => account = Some(v.into_owned()),
                "account" => {
                    return Err(bad(
                        StatusCode::BAD_REQUEST,
                        format!("account {v:?} is not a 12-digit account id"),
                    ));
                }
                "region" if iam::is_region(&v) => region = Some(v.into_owned()),
                "region" => {
                    return Err(bad(
                        StatusCode::BAD_REQUEST,
                        format!("region {v:?} is not a Region name"),
                    ));
                }
                other => {
                    return Err(bad(
                        StatusCode::BAD_REQUEST,
                        format!("unknown query parameter {other:?} (use account and region)"),
                    ));
                }
            }
        }
        if account.is_none() && region.is_none() {
            return Ok(Self(None));
        }
        let kms = control.kms_accounts();
        Ok(Self(Some((
            account.unwrap_or_else(|| kms.default_account().to_string()),
            region.unwrap_or_else(|| kms.default_region().to_string()),
        ))))
    }
}

impl Scope {
    /// The addressed account+Region, or the default one.
    fn of<'c>(&self, c: &'c EmulatorControl) -> AccountControl<'c> {
        match &self.0 {
            Some((account, region)) => c.account(account, region),
            None => c.default_account(),
        }
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct StsSettingsBody {
    session_duration_seconds: Option<u64>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RoleFilter {
    role_arn: Option<String>,
}

/// A body whose `field` names the same thing as the path, or nothing.
fn named_by_path<T: DeserializeOwned>(
    field: &str,
    name: String,
    mut body: Value,
) -> Result<T, (StatusCode, String)> {
    let Some(fields) = body.as_object_mut() else {
        return Err((
            StatusCode::BAD_REQUEST,
            "the body must be a JSON object".into(),
        ));
    };
    if let Some(other) = fields.get(field).and_then(Value::as_str)
        && other != name
    {
        return Err((
            StatusCode::BAD_REQUEST,
            format!("the body names {field} {other:?} but the path names {name:?}"),
        ));
    }
    fields.insert(field.into(), Value::String(name));
    serde_json::from_value(body).map_err(|e| (StatusCode::UNPROCESSABLE_ENTITY, e.to_string()))
}

/// Routes under `/_emulator/sts`.
fn sts_router() -> Router<Arc<EmulatorControl>> {
    Router::new()
        .route(
            "/",
            get(|State(c): Ctl| async move { Json(c.sts().describe()) }),
        )
        .route(
            "/settings",
            put(|State(c): Ctl, Body(b): Body<StsSettingsBody>| async move {
                c.sts().set_session_duration(b.session_duration_seconds);
                ok()
            }),
        )
        .route(
            "/expire-sessions",
            post(
                |State(c): Ctl, QueryParams(query): QueryParams<RoleFilter>| async move {
                    Json(json!({"expired": c.sts().expire_sessions(query.role_arn.as_deref())}))
                },
            ),
        )
        .route(
            "/roles",
            get(|State(c): Ctl| async move { Json(c.sts().describe()["roles"].clone()) }),
        )
        .route(
            "/roles/{*arn}",
            put(
                |State(c): Ctl, Path(arn): Path<String>, Body(body): Body<Value>| async move {
                    match named_by_path::<RoleConfig>("arn", arn, body) {
                        Ok(role) => done(c.sts().upsert_role(role)),
                        Err((status, message)) => bad(status, message),
                    }
                },
            )
            .delete(|State(c): Ctl, Path(arn): Path<String>| async move {
                found(c.sts().remove_role(&arn), "role")
            }),
        )
        .route(
            "/identities/{access_key_id}",
            put(
                |State(c): Ctl, Path(akid): Path<String>, Body(body): Body<Value>| async move {
                    match named_by_path::<IdentityConfig>("accessKeyId", akid, body) {
                        Ok(identity) => done(c.sts().upsert_identity(identity)),
                        Err((status, message)) => bad(status, message),
                    }
                },
            )
            .delete(|State(c): Ctl, Path(akid): Path<String>| async move {
                found(c.sts().remove_identity(&akid), "identity")
            }),
        )
        .route(
            "/faults",
            get(|State(c): Ctl| async move { Json(json!(c.sts().faults.faults())) })
                .put(|State(c): Ctl, Body(f): Body<KmsFaults>| async move {
                    if let Err(e) = sts::check_fault_keys(f.keys()) {
                        return bad(StatusCode::BAD_REQUEST, e);
                    }
                    c.sts().set_faults(f);
                    ok()
                })
                .delete(|State(c): Ctl| async move {
                    c.sts().set_faults(KmsFaults::new());
                    ok()
                }),
        )
        .route(
            "/faults/{operation}",
            put(
                |State(c): Ctl, Path(op): Path<String>, Body(f): Body<OperationFaults>| async move {
                    if let Err(e) = sts::check_fault_keys([&op]) {
                        return bad(StatusCode::BAD_REQUEST, e);
                    }
                    c.sts().set_operation_faults(&op, Some(f));
                    ok()
                },
            )
            .delete(|State(c): Ctl, Path(op): Path<String>| async move {
                c.sts().set_operation_faults(&op, None);
                ok()
            }),
        )
        .route(
            "/stats/reset",
            post(|State(c): Ctl| async move {
                c.sts().faults.reset_stats();
                ok()
            }),
        )
}

/// Routes under `/_emulator`.
pub(super) fn router() -> Router<Arc<EmulatorControl>> {
    Router::new()
        .route("/health", get(|| async { ok() }))
        .route(
            "/state",
            get(|State(c): Ctl, scope: Scope| async move { Json(scope.of(&c).state()) }),
        )
        .route(
            "/stats",
            get(|State(c): Ctl, scope: Scope| async move { Json(scope.of(&c).stats()) }),
        )
        .route(
            "/accounts",
            get(|State(c): Ctl| async move { Json(c.accounts()) }),
        )
        .route(
            "/stats/reset",
            post(|State(c): Ctl, scope: Scope| async move {
                match scope.0 {
                    Some(_) => scope.of(&c).reset_stats(),
                    None => c.reset_stats(),
                }
                ok()
            }),
        )
        .route(
            "/reset",
            post(|State(c): Ctl, scope: Scope| async move {
                match scope.0 {
                    Some(_) => scope.of(&c).reset(),
                    None => c.reset(),
                }
                ok()
            }),
        )
        .route(
            "/faults",
            get(|State(c): Ctl, scope: Scope| async move { Json(json!(scope.of(&c).faults())) })
                .put(
                    |State(c): Ctl, scope: Scope, Body(f): Body<KmsFaults>| async move {
                        if let Err(e) = check_fault_keys(f.keys()) {
                            return bad(StatusCode::BAD_REQUEST, e);
                        }
                        scope.of(&c).set_faults(f);
                        ok()
                    },
                )
                .delete(|State(c): Ctl, scope: Scope| async move {
                    scope.of(&c).set_faults(KmsFaults::new());
                    ok()
                }),
        )
        .route(
            "/faults/{operation}",
            put(
                |State(c): Ctl,
                 scope: Scope,
                 Path(op): Path<String>,
                 Body(f): Body<OperationFaults>| async move {
                    if let Err(e) = check_fault_keys([&op]) {
                        return bad(StatusCode::BAD_REQUEST, e);
                    }
                    scope.of(&c).set_operation_faults(&op, Some(f));
                    ok()
                },
            )
            .delete(
                |State(c): Ctl, scope: Scope, Path(op): Path<String>| async move {
                    scope.of(&c).set_operation_faults(&op, None);
                    ok()
                },
            ),
        )
        .route(
            "/settings",
            put(
                |State(c): Ctl, scope: Scope, Body(p): Body<SettingsPatch>| async move {
                    match scope.0 {
                        Some(_) => scope.of(&c).update_settings(p),
                        None => c.update_settings(p),
                    }
                    ok()
                },
            ),
        )
        .route(
            "/keys/purge-pending-deletion",
            post(|State(c): Ctl, scope: Scope| async move {
                let purged = match scope.0 {
                    Some(_) => scope.of(&c).purge_pending_deletion(),
                    None => c.purge_pending_deletion(),
                };
                Json(json!({"purged": purged}))
            }),
        )
        .nest("/sts", sts_router())
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
