//! STS on the emulator's listener: `AssumeRole` and `GetCallerIdentity` in
//! the query protocol the SDKs speak (`POST /`, form body,
//! `Action=...&Version=2011-06-15`), XML answers and errors in STS's shape,
//! trust rules from the configuration, and the identity of every request
//! (KMS's too): the credentials this STS issued act as the assumed role,
//! configured identities as themselves, anything else as the default
//! identity. Written from the STS API reference; signatures are not
//! verified, session tokens are.
//!
//! No secret access key or session token is kept (only a digest of each
//! token) or ever written to a log or an answer other than the AssumeRole
//! answer that issues them.

mod xml;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::{Body, Bytes};
use axum::http::{HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use rand::Rng;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::auth::RequestAuth;
use crate::config::{EmulatorConfig, IdentityConfig, RoleConfig, StsConfig};
use crate::faults::{ALL_OPERATIONS, FaultEngine, KmsFaults, OperationFaults, Verdict};
use crate::iam;
use xml::Xml;

pub const API_VERSION: &str = "2011-06-15";

/// Operations this emulator answers (fault keys besides `*`).
pub const OPERATIONS: &[&str] = &["AssumeRole", "GetCallerIdentity"];

/// STS's own default and bounds of `DurationSeconds`.
const DEFAULT_DURATION: u64 = 3600;
const CHAINED_MAX_DURATION: u64 = 3600;

/// Fault keys must name an emulated STS operation or `*`.
pub fn check_fault_keys<'a>(keys: impl IntoIterator<Item = &'a String>) -> Result<(), String> {
    for key in keys {
        if key != ALL_OPERATIONS && !OPERATIONS.contains(&key.as_str()) {
            return Err(format!(
                "sts faults: unknown STS operation {key:?} (use one of {} or \"*\")",
                OPERATIONS.join(", ")
            ));
        }
    }
    Ok(())
}

// --- identities ------------------------------------------------------------

/// The principal a request acts as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub account: String,
    /// `arn:aws:iam::A:user/N`, or `arn:aws:sts::A:assumed-role/R/S` for a session.
    pub arn: String,
    /// What GetCallerIdentity reports as `UserId`.
    pub user_id: String,
    /// The role, for a session of an assumed role (and for a configured
    /// identity whose ARN is a role): trust rules naming it match.
    pub role_arn: Option<String>,
    /// A session issued by this STS (AssumeRole from it is role chaining).
    pub is_session: bool,
}

/// Why a request's credentials are refused. Both carry the account of the
/// session, so its KMS statistics can count the refusal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthFailure {
    /// Temporary credentials past their `Expiration`.
    Expired { account: String },
    /// An issued access key id without its session token (or with another).
    InvalidToken { account: String },
}

impl AuthFailure {
    pub fn account(&self) -> &str {
        match self {
            Self::Expired { account } | Self::InvalidToken { account } => account,
        }
    }
}

/// One set of temporary credentials issued by AssumeRole.
struct Session {
    access_key_id: String,
    /// SHA-256 of the session token; the token itself is not kept.
    token_digest: [u8; 32],
    role_arn: String,
    role_session_name: String,
    account: String,
    assumed_role_arn: String,
    assumed_role_id: String,
    caller_arn: String,
    expiration: SystemTime,
}

impl Session {
    fn expired(&self, now: SystemTime) -> bool {
        now >= self.expiration
    }

    fn describe(&self, now: SystemTime) -> Value {
        json!({
            "accessKeyId": self.access_key_id,
            "roleArn": self.role_arn,
            "roleSessionName": self.role_session_name,
            "account": self.account,
            "arn": self.assumed_role_arn,
            "assumedRoleId": self.assumed_role_id,
            "callerArn": self.caller_arn,
            "expiration": format_time(self.expiration),
            "expired": self.expired(now),
        })
    }
}

struct Inner {
    roles: BTreeMap<String, RoleConfig>,
    identities: BTreeMap<String, IdentityConfig>,
    sessions: HashMap<String, Session>,
    session_duration: Option<u64>,
}

impl Inner {
    fn from_config(config: &EmulatorConfig) -> Self {
        Self {
            roles: config
                .roles
                .iter()
                .map(|r| (r.arn.clone(), r.clone()))
                .collect(),
            identities: config
                .identities
                .iter()
                .map(|i| (i.access_key_id.clone(), i.clone()))
                .collect(),
            sessions: HashMap::new(),
            session_duration: config.sts.session_duration_seconds,
        }
    }
}

/// The emulated STS and the identities of every request.
pub struct StsService {
    inner: Mutex<Inner>,
    pub faults: FaultEngine,
    default_account: String,
    base: EmulatorConfig,
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// `2024-01-02T03:04:05Z`, as STS writes `Expiration`.
fn format_time(t: SystemTime) -> String {
    let secs = t
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default();
    jiff::Timestamp::from_second(secs as i64)
        .map(|ts| ts.strftime("%Y-%m-%dT%H:%M:%SZ").to_string())
        .unwrap_or_default()
}

/// Now, whole seconds: an issued `Expiration` is exactly when the emulator
/// starts refusing the credentials.
fn now_seconds() -> SystemTime {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default();
    UNIX_EPOCH + Duration::from_secs(secs)
}

fn random_string(len: usize, alphabet: &[u8]) -> String {
    let mut rng = rand::rng();
    (0..len)
        .map(|_| alphabet[rng.random_range(0..alphabet.len())] as char)
        .collect()
}

fn new_request_id() -> String {
    crate::kms::state::new_key_id()
}

impl StsService {
    pub fn new(config: &EmulatorConfig) -> Self {
        Self {
            inner: Mutex::new(Inner::from_config(config)),
            faults: FaultEngine::new(config.sts.faults.clone()),
            default_account: config.account_id.clone(),
            base: config.clone(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // No code panics while holding it with data half-changed.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Any credentials this STS did not issue and no identity names.
    pub fn default_caller(&self) -> Caller {
        let arn = iam::default_identity_arn(&self.default_account);
        Caller {
            account: self.default_account.clone(),
            user_id: iam::unique_id("AIDA", &arn),
            arn,
            role_arn: None,
            is_session: false,
        }
    }

    /// Who sent a request with these credentials.
    pub fn identify(&self, auth: &RequestAuth) -> Result<Caller, AuthFailure> {
        let Some(akid) = auth.access_key_id.as_deref() else {
            return Ok(self.default_caller());
        };
        let inner = self.lock();
        if let Some(s) = inner.sessions.get(akid) {
            let token_ok = auth
                .session_token
                .as_deref()
                .is_some_and(|t| constant_time_eq(&digest(t), &s.token_digest));
            if !token_ok {
                return Err(AuthFailure::InvalidToken {
                    account: s.account.clone(),
                });
            }
            if s.expired(SystemTime::now()) {
                return Err(AuthFailure::Expired {
                    account: s.account.clone(),
                });
            }
            return Ok(Caller {
                account: s.account.clone(),
                arn: s.assumed_role_arn.clone(),
                user_id: s.assumed_role_id.clone(),
                role_arn: Some(s.role_arn.clone()),
                is_session: true,
            });
        }
        if let Some(i) = inner.identities.get(akid) {
            let account = i.account_id();
            let user_id = i.user_id.clone().unwrap_or_else(|| {
                if i.arn.ends_with(":root") {
                    account.clone()
                } else if iam::parse_role_arn(&i.arn).is_some() {
                    iam::unique_id("AROA", &i.arn)
                } else {
                    iam::unique_id("AIDA", &i.arn)
                }
            });
            return Ok(Caller {
                account,
                arn: i.arn.clone(),
                user_id,
                role_arn: iam::parse_role_arn(&i.arn).map(|_| i.arn.clone()),
                is_session: false,
            });
        }
        Ok(self.default_caller())
    }

    // --- control --------------------------------------------------------

    /// Add or replace a role (by ARN).
    pub fn upsert_role(&self, role: RoleConfig) -> Result<(), String> {
        role.check()?;
        self.lock().roles.insert(role.arn.clone(), role);
        Ok(())
    }

    pub fn remove_role(&self, arn: &str) -> bool {
        self.lock().roles.remove(arn).is_some()
    }

    pub fn roles(&self) -> Vec<RoleConfig> {
        self.lock().roles.values().cloned().collect()
    }

    /// Add or replace long-term credentials (by access key id).
    pub fn upsert_identity(&self, identity: IdentityConfig) -> Result<(), String> {
        identity.check()?;
        self.lock()
            .identities
            .insert(identity.access_key_id.clone(), identity);
        Ok(())
    }

    pub fn remove_identity(&self, access_key_id: &str) -> bool {
        self.lock().identities.remove(access_key_id).is_some()
    }

    /// Issued credentials expire this long after AssumeRole (`None`: as asked).
    pub fn set_session_duration(&self, seconds: Option<u64>) {
        self.lock().session_duration = seconds;
    }

    pub fn session_duration(&self) -> Option<u64> {
        self.lock().session_duration
    }

    /// Expire every issued session now (only those of `role_arn` when
    /// given); answers how many were still valid.
    pub fn expire_sessions(&self, role_arn: Option<&str>) -> usize {
        let now = now_seconds();
        let mut inner = self.lock();
        let mut n = 0;
        for s in inner.sessions.values_mut() {
            if role_arn.is_none_or(|r| r == s.role_arn) && !s.expired(now) {
                s.expiration = now;
                n += 1;
            }
        }
        tracing::info!(expired = n, "STS sessions expired");
        n
    }

    pub fn set_faults(&self, faults: KmsFaults) {
        self.faults.set_all(faults);
    }

    pub fn set_operation_faults(&self, operation: &str, faults: Option<OperationFaults>) {
        self.faults.set(operation, faults);
    }

    /// Roles, identities and sessions without secrets, settings, faults and
    /// counters, for `GET /_emulator/sts`.
    pub fn describe(&self) -> Value {
        let now = SystemTime::now();
        let inner = self.lock();
        let default = self.default_caller();
        let roles: Vec<Value> = inner
            .roles
            .values()
            .map(|r| {
                json!({
                    "arn": r.arn,
                    "trustedPrincipals": r.trusted_principals,
                    "externalIdRequired": r.external_id.is_some(),
                    "maxSessionDurationSeconds": r.max_session_duration_seconds,
                })
            })
            .collect();
        let identities: Vec<Value> = inner
            .identities
            .values()
            .map(|i| json!({"accessKeyId": i.access_key_id, "account": i.account_id(), "arn": i.arn}))
            .collect();
        let mut sessions: Vec<&Session> = inner.sessions.values().collect();
        sessions.sort_by_key(|s| s.expiration);
        json!({
            "defaultIdentity": {"account": default.account, "arn": default.arn, "userId": default.user_id},
            "identities": identities,
            "roles": roles,
            "settings": {"sessionDurationSeconds": inner.session_duration},
            "faults": self.faults.faults(),
            "operations": self.faults.stats(),
            "sessions": sessions.iter().map(|s| s.describe(now)).collect::<Vec<_>>(),
        })
    }

    /// Back to the configuration: roles, identities, settings, faults,
    /// zero counters. Issued sessions are expired rather than forgotten, so
    /// a client still holding them is told so instead of silently acting
    /// as the default identity.
    pub fn reset(&self) {
        let mut fresh = Inner::from_config(&self.base);
        let now = now_seconds();
        let mut inner = self.lock();
        for (akid, mut s) in inner.sessions.drain() {
            if !s.expired(now) {
                s.expiration = now;
            }
            fresh.sessions.insert(akid, s);
        }
        *inner = fresh;
        drop(inner);
        self.faults.set_all(self.base.sts.faults.clone());
        self.faults.reset_stats();
    }

    pub fn base_config(&self) -> &StsConfig {
        &self.base.sts
    }

    // --- the API ----------------------------------------------------------

    /// Answer one STS request (already told apart from KMS by the caller).
    pub async fn handle(
        &self,
        method: &Method,
        query: Option<&str>,
        body: &[u8],
        auth: &RequestAuth,
    ) -> Response {
        let request_id = new_request_id();
        let mut params: Vec<(String, String)> = Vec::new();
        if *method == Method::POST {
            params.extend(form_urlencoded::parse(body).into_owned());
        }
        if let Some(q) = query {
            params.extend(form_urlencoded::parse(q.as_bytes()).into_owned());
        }
        let params = Params(params);
        let result = self.answer(&params, auth).await;
        match result {
            Ok(xml) => {
                let mut response = (StatusCode::OK, xml.finish_with(&request_id)).into_response();
                set_headers(&mut response, &request_id);
                response
            }
            Err(Failure::Drop) => dropped_connection(),
            Err(Failure::Error(e)) => e.into_response_with(&request_id),
        }
    }

    async fn answer(&self, params: &Params, auth: &RequestAuth) -> Result<Answer, Failure> {
        let Some(action) = params.get("Action") else {
            return Err(StsError::new(
                StatusCode::BAD_REQUEST,
                "MissingAction",
                "The request is missing an action or a required parameter.",
            )
            .into());
        };
        if let Some(version) = params.get("Version")
            && version != API_VERSION
        {
            return Err(StsError::invalid_action(format!(
                "Could not find operation {action} for version {version}"
            ))
            .into());
        }
        let Some(operation) = OPERATIONS.iter().copied().find(|op| *op == action) else {
            return Err(StsError::invalid_action(format!(
                "Could not find operation {action} for version {API_VERSION} (this emulator answers {})",
                OPERATIONS.join(" and ")
            ))
            .into());
        };
        let caller = match self.identify(auth) {
            Ok(caller) => caller,
            Err(failure) => {
                let e = StsError::from_auth(&failure);
                self.faults.record_rejected(operation, e.code);
                return Err(e.into());
            }
        };
        let latency = self.faults.latency(operation);
        if !latency.is_zero() {
            tokio::time::sleep(latency).await;
        }
        let result = match self.faults.admit(operation) {
            Verdict::Drop => {
                tracing::debug!(operation, "STS fault: dropping the connection");
                return Err(Failure::Drop);
            }
            Verdict::Throttle => Err(StsError::new(
                StatusCode::BAD_REQUEST,
                "Throttling",
                "Rate exceeded",
            )),
            Verdict::InternalError => Err(StsError::internal()),
            Verdict::Proceed => match operation {
                "AssumeRole" => self.assume_role(&caller, params),
                _ => Ok(get_caller_identity(&caller)),
            },
        };
        result.map_err(|e| {
            tracing::debug!(operation, error = e.code, "STS error");
            self.faults.record_error(operation, e.code);
            Failure::Error(e)
        })
    }

    fn assume_role(&self, caller: &Caller, params: &Params) -> Result<Answer, StsError> {
        let role_arn = params.get("RoleArn");
        let session_name = params.get("RoleSessionName");
        let duration = params.get("DurationSeconds");
        let external_id = params.get("ExternalId");
        let source_identity = params.get("SourceIdentity");

        let mut v = Validation::default();
        match role_arn {
            None => v.null("roleArn"),
            Some(arn) => {
                v.length("roleArn", Some(arn), arn, 20, 2048);
            }
        }
        match session_name {
            None => v.null("roleSessionName"),
            Some(name) => {
                if v.length("roleSessionName", Some(name), name, 2, 64) {
                    v.pattern(
                        "roleSessionName",
                        Some(name),
                        name,
                        r"[\w+=,.@-]*",
                        "+=,.@-",
                    );
                }
            }
        }
        let duration = match duration {
            None => None,
            Some(text) => match text.parse::<i64>() {
                Ok(d) => {
                    v.range("durationSeconds", d, 900, 43200);
                    u64::try_from(d).ok()
                }
                Err(_) => {
                    v.rule(format!(
                        "Value '{}' at 'durationSeconds' failed to satisfy constraint: Member must be an integer",
                        text
                    ));
                    None
                }
            },
        };
        if let Some(id) = external_id {
            // Treated as sensitive: its value is never echoed.
            if v.length("externalId", None, id, 2, 1224) {
                v.pattern("externalId", None, id, r"[\w+=,.@:\/-]*", "+=,.@:/-");
            }
        }
        if let Some(si) = source_identity
            && v.length("sourceIdentity", Some(si), si, 2, 64)
        {
            v.pattern("sourceIdentity", Some(si), si, r"[\w+=,.@-]*", "+=,.@-");
        }
        v.finish()?;
        let (Some(role_arn), Some(session_name)) = (role_arn, session_name) else {
            return Err(StsError::internal());
        };
        if iam::parse_arn(role_arn).is_none() {
            return Err(StsError::validation("Request ARN is invalid".to_string()));
        }

        let mut inner = self.lock();
        // STS does not say which rule denied: unknown role, untrusted caller
        // and a missing or wrong external id all read the same.
        let denied = || StsError::access_denied(&caller.arn, role_arn);
        let role = inner.roles.get(role_arn).ok_or_else(denied)?;
        if !trusts(role, caller) {
            tracing::debug!(role = %role_arn, caller = %caller.arn, "AssumeRole: caller not trusted");
            return Err(denied());
        }
        if let Some(required) = &role.external_id
            && !external_id
                .is_some_and(|given| constant_time_eq(given.as_bytes(), required.as_bytes()))
        {
            tracing::debug!(role = %role_arn, "AssumeRole: external id missing or wrong");
            return Err(denied());
        }
        let asked = duration.unwrap_or(DEFAULT_DURATION);
        if asked > u64::from(role.max_session_duration_seconds) {
            return Err(StsError::validation(
                "The requested DurationSeconds exceeds the MaxSessionDuration set for this role."
                    .to_string(),
            ));
        }
        if caller.is_session && asked > CHAINED_MAX_DURATION {
            return Err(StsError::validation(
                "The requested DurationSeconds exceeds the 1 hour session limit for roles assumed by role chaining."
                    .to_string(),
            ));
        }
        let Some(parsed) = iam::parse_role_arn(role_arn) else {
            return Err(denied());
        };
        let lifetime = inner.session_duration.unwrap_or(asked);
        let expiration = now_seconds() + Duration::from_secs(lifetime);
        let access_key_id = format!(
            "ASIA{}",
            random_string(16, b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567")
        );
        let secret = random_string(
            40,
            b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/",
        );
        let token = {
            use base64::Engine;
            let mut bytes = [0u8; 96];
            rand::rng().fill(&mut bytes[..]);
            base64::engine::general_purpose::STANDARD.encode(bytes)
        };
        let assumed_role_id = format!("{}:{session_name}", iam::unique_id("AROA", role_arn));
        let assumed_role_arn = format!(
            "arn:{}:sts::{}:assumed-role/{}/{session_name}",
            parsed.partition, parsed.account, parsed.name
        );
        let session = Session {
            access_key_id: access_key_id.clone(),
            token_digest: digest(&token),
            role_arn: role_arn.to_string(),
            role_session_name: session_name.to_string(),
            account: parsed.account.clone(),
            assumed_role_arn: assumed_role_arn.clone(),
            assumed_role_id: assumed_role_id.clone(),
            caller_arn: caller.arn.clone(),
            expiration,
        };
        inner.sessions.insert(access_key_id.clone(), session);
        drop(inner);
        tracing::info!(
            role = %role_arn,
            session = %session_name,
            caller = %caller.arn,
            access_key_id = %access_key_id,
            expiration = %format_time(expiration),
            "STS AssumeRole issued credentials"
        );

        let mut xml = Xml::root("AssumeRoleResponse");
        xml.open("AssumeRoleResult");
        if let Some(si) = source_identity {
            xml.text("SourceIdentity", si);
        }
        xml.open("AssumedRoleUser")
            .text("AssumedRoleId", &assumed_role_id)
            .text("Arn", &assumed_role_arn)
            .close();
        xml.open("Credentials")
            .text("AccessKeyId", &access_key_id)
            .text("SecretAccessKey", &secret)
            .text("SessionToken", &token)
            .text("Expiration", &format_time(expiration))
            .close();
        xml.close();
        Ok(Answer(xml))
    }
}

fn get_caller_identity(caller: &Caller) -> Answer {
    let mut xml = Xml::root("GetCallerIdentityResponse");
    xml.open("GetCallerIdentityResult")
        .text("Arn", &caller.arn)
        .text("UserId", &caller.user_id)
        .text("Account", &caller.account)
        .close();
    Answer(xml)
}

/// Whether the role's trust rules name the caller.
fn trusts(role: &RoleConfig, caller: &Caller) -> bool {
    role.trusted_principals.iter().any(|p| {
        p == "*"
            || *p == caller.account
            || *p == caller.arn
            || caller.role_arn.as_deref() == Some(p.as_str())
            || iam::parse_arn(p).is_some_and(|a| {
                a.service == "iam" && a.resource == "root" && a.account == caller.account
            })
    })
}

// --- answers and errors ------------------------------------------------------

/// The request parameters, in the order received (the first of a name wins).
struct Params(Vec<(String, String)>);

impl Params {
    fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A successful answer, still missing its ResponseMetadata.
struct Answer(Xml);

impl Answer {
    fn finish_with(mut self, request_id: &str) -> String {
        self.0
            .open("ResponseMetadata")
            .text("RequestId", request_id)
            .close();
        self.0.finish()
    }
}

enum Failure {
    Error(StsError),
    Drop,
}

impl From<StsError> for Failure {
    fn from(e: StsError) -> Self {
        Failure::Error(e)
    }
}

/// One STS error: HTTP status, `Code` and `Message`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StsError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

impl StsError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }

    fn validation(message: String) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "ValidationError", message)
    }

    fn invalid_action(message: String) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "InvalidAction", message)
    }

    fn internal() -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "InternalFailure",
            "The request processing has failed because of an unknown error, exception or failure.",
        )
    }

    fn access_denied(caller_arn: &str, role_arn: &str) -> Self {
        Self::new(
            StatusCode::FORBIDDEN,
            "AccessDenied",
            format!(
                "User: {caller_arn} is not authorized to perform: sts:AssumeRole on resource: {role_arn}"
            ),
        )
    }

    fn from_auth(failure: &AuthFailure) -> Self {
        match failure {
            AuthFailure::Expired { .. } => Self::new(
                StatusCode::BAD_REQUEST,
                "ExpiredToken",
                "The security token included in the request is expired",
            ),
            AuthFailure::InvalidToken { .. } => Self::new(
                StatusCode::FORBIDDEN,
                "InvalidClientTokenId",
                "The security token included in the request is invalid.",
            ),
        }
    }

    /// `Receiver` for STS's own failures, `Sender` for the caller's.
    fn fault_type(&self) -> &'static str {
        if self.status.is_server_error() {
            "Receiver"
        } else {
            "Sender"
        }
    }

    fn into_response_with(self, request_id: &str) -> Response {
        let mut xml = Xml::root("ErrorResponse");
        xml.open("Error")
            .text("Type", self.fault_type())
            .text("Code", self.code)
            .text("Message", &self.message)
            .close();
        xml.text("RequestId", request_id);
        let mut response = (self.status, xml.finish()).into_response();
        set_headers(&mut response, request_id);
        response
    }
}

fn set_headers(response: &mut Response, request_id: &str) {
    let headers = response.headers_mut();
    headers.insert("content-type", HeaderValue::from_static("text/xml"));
    if let Ok(id) = HeaderValue::from_str(request_id) {
        headers.insert("x-amzn-requestid", id);
    }
}

/// A response whose body fails at once: the connection is cut.
fn dropped_connection() -> Response {
    let stream = futures::stream::once(async {
        Err::<Bytes, std::io::Error>(std::io::Error::other("fault: connection dropped"))
    });
    Response::new(Body::from_stream(stream))
}

/// Collects violations of the STS model's constraints, reported the way
/// STS does: one `ValidationError` listing all of them.
#[derive(Default)]
struct Validation {
    errors: Vec<String>,
}

impl Validation {
    fn value(member: &str, shown: Option<&str>) -> String {
        match shown {
            Some(v) => format!("Value '{v}' at '{member}'"),
            None => format!("Value at '{member}'"),
        }
    }

    fn null(&mut self, member: &str) {
        self.errors.push(format!(
            "Value null at '{member}' failed to satisfy constraint: Member must not be null"
        ));
    }

    fn length(
        &mut self,
        member: &str,
        shown: Option<&str>,
        value: &str,
        min: usize,
        max: usize,
    ) -> bool {
        let n = value.chars().count();
        let constraint = if n < min {
            format!("Member must have length greater than or equal to {min}")
        } else if n > max {
            format!("Member must have length less than or equal to {max}")
        } else {
            return true;
        };
        self.errors.push(format!(
            "{} failed to satisfy constraint: {constraint}",
            Self::value(member, shown)
        ));
        false
    }

    /// `[\w<extra>]*` where `\w` is ASCII letters, digits and `_`.
    fn pattern(
        &mut self,
        member: &str,
        shown: Option<&str>,
        value: &str,
        pattern: &str,
        extra: &str,
    ) {
        let ok = value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || extra.contains(c));
        if !ok {
            self.errors.push(format!(
                "{} failed to satisfy constraint: Member must satisfy regular expression pattern: {pattern}",
                Self::value(member, shown)
            ));
        }
    }

    fn range(&mut self, member: &str, value: i64, min: i64, max: i64) {
        let constraint = if value < min {
            format!("Member must have value greater than or equal to {min}")
        } else if value > max {
            format!("Member must have value less than or equal to {max}")
        } else {
            return;
        };
        self.errors.push(format!(
            "Value '{value}' at '{member}' failed to satisfy constraint: {constraint}"
        ));
    }

    fn rule(&mut self, message: String) {
        self.errors.push(message);
    }

    fn finish(self) -> Result<(), StsError> {
        match self.errors.len() {
            0 => Ok(()),
            1 => Err(StsError::validation(format!(
                "1 validation error detected: {}",
                self.errors[0]
            ))),
            n => Err(StsError::validation(format!(
                "{n} validation errors detected: {}",
                self.errors.join("; ")
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{DEMO_ACCOUNT_ID, DEMO_ROLE_ARN};

    fn caller(account: &str, arn: &str, role: Option<&str>) -> Caller {
        Caller {
            account: account.into(),
            arn: arn.into(),
            user_id: "AIDAEXAMPLE".into(),
            role_arn: role.map(str::to_owned),
            is_session: role.is_some(),
        }
    }

    #[test]
    fn trust_rules() {
        let user = caller(
            DEMO_ACCOUNT_ID,
            "arn:aws:iam::111122223333:user/emulator",
            None,
        );
        let other = caller("999988887777", "arn:aws:iam::999988887777:user/x", None);
        let session = caller(
            "333344445555",
            "arn:aws:sts::333344445555:assumed-role/hop/s1",
            Some("arn:aws:iam::333344445555:role/hop"),
        );
        let role = |p: &str| RoleConfig::new(DEMO_ROLE_ARN).trusting(p);
        assert!(trusts(&role(DEMO_ACCOUNT_ID), &user));
        assert!(!trusts(&role(DEMO_ACCOUNT_ID), &other));
        assert!(trusts(&role("arn:aws:iam::111122223333:root"), &user));
        assert!(trusts(
            &role("arn:aws:iam::111122223333:user/emulator"),
            &user
        ));
        assert!(!trusts(
            &role("arn:aws:iam::111122223333:user/someone"),
            &user
        ));
        assert!(trusts(
            &role("arn:aws:iam::333344445555:role/hop"),
            &session
        ));
        assert!(trusts(&role("*"), &other));
        assert!(!trusts(&RoleConfig::new(DEMO_ROLE_ARN), &user));
    }

    #[test]
    fn expiration_has_the_sts_format() {
        let t = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(format_time(t), "2023-11-14T22:13:20Z");
    }
}
