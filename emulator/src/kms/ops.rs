//! The operations, each applying contract §2-§4: validate the input, check
//! uniqueness, quota and connection state, call the proxy like KMS does,
//! then change the state.

use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Value, json};
use tokio::time::Instant;

use super::KmsService;
use super::error::KmsError;
use super::input::{Body, opt_int, opt_obj, opt_str, req_str};
use super::proxy::{self, Target};
use super::state::{
    Connection, Key, KmsState, PUBLIC, ProxySettings, Secret, Store, VPC, new_key_id, new_store_id,
    now_epoch,
};
use super::validate::Validator;

const STORE_TYPES: &[&str] = &["AWS_CLOUDHSM", "EXTERNAL_KEY_STORE"];
const CONNECTIVITIES: &[&str] = &[PUBLIC, VPC];
const HSM_MEMBERS: &[&str] = &[
    "CloudHsmClusterId",
    "TrustAnchorCertificate",
    "KeyStorePassword",
];

/// The credential member, validated; both parts are required.
fn credential(body: &Body, v: &mut Validator) -> Result<Option<(String, String)>, KmsError> {
    let Some(cred) = opt_obj(body, "XksProxyAuthenticationCredential")? else {
        return Ok(None);
    };
    let akid = opt_str(cred, "AccessKeyId")?;
    let secret = opt_str(cred, "RawSecretAccessKey")?;
    match (akid, secret) {
        (Some(a), Some(s)) => {
            v.access_key_id(&a);
            v.secret(&s);
            Ok(Some((a, s)))
        }
        (a, s) => {
            if a.is_none() {
                v.rule("Value null at 'xksProxyAuthenticationCredential.accessKeyId' failed to satisfy constraint: Member must not be null");
            }
            if s.is_none() {
                v.rule("Value null at 'xksProxyAuthenticationCredential.rawSecretAccessKey' failed to satisfy constraint: Member must not be null");
            }
            Ok(None)
        }
    }
}

fn hsm_members_present(body: &Body) -> Vec<&'static str> {
    HSM_MEMBERS
        .iter()
        .copied()
        .filter(|m| body.get(*m).is_some_and(|v| !v.is_null()))
        .collect()
}

/// Name, URI and VPC uniqueness against every store but `exclude`.
fn check_conflicts(
    state: &KmsState,
    exclude: Option<&str>,
    name: &str,
    proxy: &ProxySettings,
) -> Result<(), KmsError> {
    let others = || {
        state
            .stores
            .iter()
            .filter(|s| Some(s.id.as_str()) != exclude)
    };
    if others().any(|s| s.name == name) {
        return Err(KmsError::new(
            "CustomKeyStoreNameInUseException",
            format!("A custom key store named {name} already exists in this account and Region."),
        ));
    }
    let endpoint = proxy.uri_endpoint.to_ascii_lowercase();
    let same_endpoint = |s: &Store| s.proxy.uri_endpoint.to_ascii_lowercase() == endpoint;
    if others().any(|s| same_endpoint(s) && s.proxy.uri_path == proxy.uri_path) {
        return Err(KmsError::new(
            "XksProxyUriInUseException",
            format!(
                "The proxy URI {}{} is already used by another external key store in this Region.",
                proxy.uri_endpoint, proxy.uri_path
            ),
        ));
    }
    if others().any(|s| same_endpoint(s) && (proxy.is_vpc() || s.proxy.is_vpc())) {
        return Err(KmsError::new(
            "XksProxyUriEndpointInUseException",
            format!(
                "The private DNS name in {} is already used by another external key store; each VPC endpoint service connectivity store needs its own.",
                proxy.uri_endpoint
            ),
        ));
    }
    if let Some(service) = proxy.vpc_service_name.as_deref().filter(|_| proxy.is_vpc())
        && others()
            .any(|s| s.proxy.is_vpc() && s.proxy.vpc_service_name.as_deref() == Some(service))
    {
        return Err(KmsError::new(
            "XksProxyVpcEndpointServiceInUseException",
            format!(
                "The VPC endpoint service {service} is already associated with another external key store in this Region."
            ),
        ));
    }
    Ok(())
}

fn find_store<'a>(state: &'a mut KmsState, id: &str) -> Result<&'a mut Store, KmsError> {
    state
        .store_mut(id)
        .ok_or_else(|| KmsError::store_not_found(id))
}

fn encode_marker(kind: &str, seq: u64) -> String {
    URL_SAFE_NO_PAD.encode(format!("{kind}:{seq}"))
}

fn decode_marker(kind: &str, marker: &str) -> Result<u64, KmsError> {
    URL_SAFE_NO_PAD
        .decode(marker)
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .and_then(|s| {
            s.strip_prefix(&format!("{kind}:"))
                .and_then(|n| n.parse().ok())
        })
        .ok_or_else(|| KmsError::new("InvalidMarkerException", "The marker is not valid."))
}

/// One page of items with a sequence number, after `marker`.
fn page<'a, T>(
    items: &'a [T],
    seq: impl Fn(&T) -> u64,
    kind: &str,
    marker: Option<&str>,
    limit: usize,
) -> Result<(Vec<&'a T>, Option<String>), KmsError> {
    let from = marker
        .map(|m| decode_marker(kind, m))
        .transpose()?
        .unwrap_or(0);
    let mut rest = items.iter().filter(|i| seq(i) >= from);
    let chosen: Vec<&T> = rest.by_ref().take(limit).collect();
    let next = rest.next().map(|i| encode_marker(kind, seq(i)));
    Ok((chosen, next))
}

fn paged_response(field: &str, items: Vec<Value>, next: Option<String>) -> Value {
    let mut out = json!({ field: items, "Truncated": next.is_some() });
    if let Some(next) = next {
        out["NextMarker"] = json!(next);
    }
    out
}

impl KmsService {
    fn target(&self, proxy: &ProxySettings) -> Target {
        Target {
            uri_endpoint: proxy.uri_endpoint.clone(),
            uri_path: proxy.uri_path.clone(),
            access_key_id: proxy.access_key_id.clone(),
            secret: proxy.secret.clone(),
            region: self.settings().region,
        }
    }

    pub(super) async fn create_custom_key_store(
        self: &Arc<Self>,
        body: &Body,
    ) -> Result<Value, KmsError> {
        let name = req_str(body, "CustomKeyStoreName")?;
        let store_type = opt_str(body, "CustomKeyStoreType")?;
        let endpoint = opt_str(body, "XksProxyUriEndpoint")?;
        let path = opt_str(body, "XksProxyUriPath")?;
        let vpc_name = opt_str(body, "XksProxyVpcEndpointServiceName")?;
        let vpc_owner = opt_str(body, "XksProxyVpcEndpointServiceOwner")?;
        let connectivity = opt_str(body, "XksProxyConnectivity")?;
        for m in HSM_MEMBERS {
            opt_str(body, m)?;
        }

        let mut v = Validator::new();
        v.store_name("customKeyStoreName", &name);
        if let Some(t) = &store_type {
            v.one_of("customKeyStoreType", t, STORE_TYPES);
        }
        if let Some(e) = &endpoint {
            v.uri_endpoint(e);
        }
        if let Some(p) = &path {
            v.uri_path(p);
        }
        if let Some(n) = &vpc_name {
            v.vpc_service_name(n);
        }
        if let Some(o) = &vpc_owner {
            v.vpc_service_owner(o);
        }
        if let Some(c) = &connectivity {
            v.one_of("xksProxyConnectivity", c, CONNECTIVITIES);
        }
        let cred = credential(body, &mut v)?;
        v.finish()?;

        if store_type.as_deref() != Some("EXTERNAL_KEY_STORE") {
            // Only external key stores are emulated; a CloudHSM cluster never exists here.
            if let Some(cluster) = opt_str(body, "CloudHsmClusterId")? {
                return Err(KmsError::new(
                    "CloudHsmClusterNotFoundException",
                    format!("CloudHSM cluster {cluster} was not found."),
                ));
            }
            return Err(KmsError::validation(
                "CustomKeyStoreType defaults to AWS_CLOUDHSM, which requires CloudHsmClusterId, TrustAnchorCertificate and KeyStorePassword. For an external key store set CustomKeyStoreType to EXTERNAL_KEY_STORE.",
            ));
        }
        let mut v = Validator::new();
        let hsm = hsm_members_present(body);
        if !hsm.is_empty() {
            v.rule(format!(
                "{} can only be used with an AWS_CLOUDHSM custom key store",
                hsm.join(", ")
            ));
        }
        for (member, present) in [
            ("XksProxyUriEndpoint", endpoint.is_some()),
            ("XksProxyUriPath", path.is_some()),
            ("XksProxyAuthenticationCredential", cred.is_some()),
            ("XksProxyConnectivity", connectivity.is_some()),
        ] {
            if !present {
                v.rule(format!(
                    "{member} is required for an EXTERNAL_KEY_STORE custom key store"
                ));
            }
        }
        let is_vpc = connectivity.as_deref() == Some(VPC);
        if is_vpc && vpc_name.is_none() {
            v.rule("XksProxyVpcEndpointServiceName is required when XksProxyConnectivity is VPC_ENDPOINT_SERVICE");
        }
        if !is_vpc && vpc_name.is_some() {
            v.rule("XksProxyVpcEndpointServiceName is valid only when XksProxyConnectivity is VPC_ENDPOINT_SERVICE");
        }
        if !is_vpc && vpc_owner.is_some() {
            v.rule("XksProxyVpcEndpointServiceOwner is valid only when XksProxyConnectivity is VPC_ENDPOINT_SERVICE");
        }
        v.finish()?;
        let (Some(uri_endpoint), Some(uri_path), Some((access_key_id, secret)), Some(connectivity)) =
            (endpoint, path, cred, connectivity)
        else {
            return Err(KmsError::internal("inconsistent validation"));
        };
        let proxy = ProxySettings {
            connectivity,
            uri_endpoint,
            uri_path,
            vpc_service_name: vpc_name,
            vpc_service_owner: vpc_owner,
            access_key_id,
            secret: Secret(secret),
        };

        let admit = |state: &KmsState| -> Result<(), KmsError> {
            check_conflicts(state, None, &name, &proxy)?;
            let max = self.settings().max_custom_key_stores;
            if state.stores.len() >= max {
                return Err(KmsError::new(
                    "LimitExceededException",
                    format!(
                        "This account and Region already has the maximum of {max} custom key stores."
                    ),
                ));
            }
            Ok(())
        };
        admit(&self.lock())?;
        // KMS checks a public proxy before it creates the store; VPC stores
        // are first contacted at Connect.
        if !proxy.is_vpc() {
            proxy::health(&self.caller, &self.target(&proxy), "CreateCustomKeyStore")
                .await
                .map_err(|e| proxy::create_update_error(&e))?;
        }
        let mut state = self.lock();
        admit(&state)?;
        let id = new_store_id();
        let seq = state.next_seq();
        state.stores.push(Store {
            id: id.clone(),
            name,
            seq,
            creation_date: now_epoch(),
            proxy,
            state: Connection::Disconnected,
            error_code: None,
            generation: 0,
        });
        tracing::info!(store = %id, "custom key store created");
        Ok(json!({"CustomKeyStoreId": id}))
    }

    pub(super) fn describe_custom_key_stores(&self, body: &Body) -> Result<Value, KmsError> {
        let id = opt_str(body, "CustomKeyStoreId")?;
        let name = opt_str(body, "CustomKeyStoreName")?;
        let limit = opt_int(body, "Limit")?;
        let marker = opt_str(body, "Marker")?;
        let mut v = Validator::new();
        if let Some(id) = &id {
            v.store_id("customKeyStoreId", id);
        }
        if let Some(name) = &name {
            v.store_name("customKeyStoreName", name);
        }
        if let Some(l) = limit {
            v.limit(l);
        }
        if let Some(m) = &marker {
            v.marker(m);
        }
        if id.is_some() && name.is_some() {
            v.rule("Specify either CustomKeyStoreId or CustomKeyStoreName, not both");
        }
        v.finish()?;
        let state = self.lock();
        if let Some(id) = id {
            let store = state
                .store(&id)
                .ok_or_else(|| KmsError::store_not_found(&id))?;
            return Ok(paged_response(
                "CustomKeyStores",
                vec![store.to_json()],
                None,
            ));
        }
        if let Some(name) = name {
            let store = state
                .stores
                .iter()
                .find(|s| s.name == name)
                .ok_or_else(|| KmsError::store_not_found(&name))?;
            return Ok(paged_response(
                "CustomKeyStores",
                vec![store.to_json()],
                None,
            ));
        }
        let limit = limit.map_or(1000, |l| l as usize);
        let (stores, next) = page(&state.stores, |s| s.seq, "stores", marker.as_deref(), limit)?;
        Ok(paged_response(
            "CustomKeyStores",
            stores.into_iter().map(Store::to_json).collect(),
            next,
        ))
    }

    pub(super) async fn update_custom_key_store(
        self: &Arc<Self>,
        body: &Body,
    ) -> Result<Value, KmsError> {
        let id = req_str(body, "CustomKeyStoreId")?;
        let new_name = opt_str(body, "NewCustomKeyStoreName")?;
        let endpoint = opt_str(body, "XksProxyUriEndpoint")?;
        let path = opt_str(body, "XksProxyUriPath")?;
        let vpc_name = opt_str(body, "XksProxyVpcEndpointServiceName")?;
        let vpc_owner = opt_str(body, "XksProxyVpcEndpointServiceOwner")?;
        let connectivity = opt_str(body, "XksProxyConnectivity")?;
        let mut v = Validator::new();
        v.store_id("customKeyStoreId", &id);
        if let Some(n) = &new_name {
            v.store_name("newCustomKeyStoreName", n);
        }
        if let Some(e) = &endpoint {
            v.uri_endpoint(e);
        }
        if let Some(p) = &path {
            v.uri_path(p);
        }
        // An empty service name is how a store switches back to public.
        if let Some(n) = vpc_name.as_deref().filter(|n| !n.is_empty()) {
            v.vpc_service_name(n);
        }
        if let Some(o) = &vpc_owner {
            v.vpc_service_owner(o);
        }
        if let Some(c) = &connectivity {
            v.one_of("xksProxyConnectivity", c, CONNECTIVITIES);
        }
        let cred = credential(body, &mut v)?;
        let hsm = hsm_members_present(body);
        if !hsm.is_empty() {
            v.rule(format!(
                "{} can only be used with an AWS_CLOUDHSM custom key store",
                hsm.join(", ")
            ));
        }
        v.finish()?;

        // Decides the new name and settings from the store as it is now;
        // run again after the proxy check to catch a concurrent change.
        let plan = |state: &KmsState| -> Result<(String, ProxySettings, bool), KmsError> {
            let store = state
                .store(&id)
                .ok_or_else(|| KmsError::store_not_found(&id))?;
            let current = store.proxy.clone();
            let mut next = current.clone();
            let mut v = Validator::new();
            let target_connectivity = connectivity.clone().unwrap_or(current.connectivity.clone());
            let connectivity_changed = target_connectivity != current.connectivity;
            if let Some(e) = &endpoint {
                next.uri_endpoint = e.clone();
            }
            if let Some(p) = &path {
                next.uri_path = p.clone();
            }
            if let Some((a, s)) = &cred {
                next.access_key_id = a.clone();
                next.secret = Secret(s.clone());
            }
            next.connectivity = target_connectivity.clone();
            let endpoint_changed = next.uri_endpoint != current.uri_endpoint;
            if target_connectivity == VPC {
                match vpc_name.as_deref() {
                    Some("") => v.rule("XksProxyVpcEndpointServiceName is required when XksProxyConnectivity is VPC_ENDPOINT_SERVICE"),
                    Some(n) => next.vpc_service_name = Some(n.to_string()),
                    None if connectivity_changed => v.rule("Changing XksProxyConnectivity to VPC_ENDPOINT_SERVICE also requires XksProxyVpcEndpointServiceName"),
                    None => {}
                }
                if let Some(o) = &vpc_owner {
                    next.vpc_service_owner = Some(o.clone());
                }
            } else {
                if vpc_name.as_deref().is_some_and(|n| !n.is_empty()) {
                    v.rule("XksProxyVpcEndpointServiceName is valid only when XksProxyConnectivity is VPC_ENDPOINT_SERVICE");
                }
                if vpc_owner.is_some() {
                    v.rule("XksProxyVpcEndpointServiceOwner is valid only when XksProxyConnectivity is VPC_ENDPOINT_SERVICE");
                }
                next.vpc_service_name = None;
                next.vpc_service_owner = None;
            }
            if connectivity_changed && !endpoint_changed {
                v.rule("Changing XksProxyConnectivity also requires a new XksProxyUriEndpoint");
            }
            v.finish()?;

            let needs_disconnect = connectivity_changed
                || endpoint_changed
                || next.vpc_service_name != current.vpc_service_name
                || next.vpc_service_owner != current.vpc_service_owner;
            let proxy_changed = next != current;
            let name_target = new_name.clone().unwrap_or(store.name.clone());
            if store.state != Connection::Disconnected {
                if needs_disconnect {
                    return Err(KmsError::invalid_state(format!(
                        "The custom key store {id} is {}: changing its connectivity, endpoint or VPC endpoint service requires DISCONNECTED.",
                        store.state.as_str()
                    )));
                }
                if proxy_changed && self.settings().strict_connected_updates {
                    return Err(KmsError::invalid_state(format!(
                        "The custom key store {id} is {}: only its name can change unless it is DISCONNECTED.",
                        store.state.as_str()
                    )));
                }
            }
            let conn = store.state;
            check_conflicts(state, Some(&id), &name_target, &next)?;
            let check = proxy_changed && (!next.is_vpc() || conn == Connection::Connected);
            Ok((name_target, next, check))
        };
        let (current_name, proposed, needs_check) = plan(&self.lock())?;
        if needs_check {
            proxy::health(
                &self.caller,
                &self.target(&proposed),
                "UpdateCustomKeyStore",
            )
            .await
            .map_err(|e| proxy::create_update_error(&e))?;
        }
        let mut state = self.lock();
        let (again_name, again, _) = plan(&state)?;
        if again_name != current_name || again != proposed {
            return Err(KmsError::internal(format!(
                "The custom key store {id} changed during the update; retry."
            )));
        }
        let store = find_store(&mut state, &id)?;
        store.name = current_name;
        store.proxy = proposed;
        tracing::info!(store = %id, "custom key store updated");
        Ok(json!({}))
    }

    pub(super) fn connect_custom_key_store(
        self: &Arc<Self>,
        body: &Body,
    ) -> Result<Value, KmsError> {
        let id = req_str(body, "CustomKeyStoreId")?;
        let mut v = Validator::new();
        v.store_id("customKeyStoreId", &id);
        v.finish()?;
        let mut state = self.lock();
        let store = find_store(&mut state, &id)?;
        match store.state {
            // Connecting a connected (or connecting) store succeeds and changes nothing.
            Connection::Connected | Connection::Connecting => return Ok(json!({})),
            Connection::Failed | Connection::Disconnecting => {
                return Err(KmsError::invalid_state(format!(
                    "The custom key store {id} is {}; disconnect it before connecting.",
                    store.state.as_str()
                )));
            }
            Connection::Disconnected => {}
        }
        store.state = Connection::Connecting;
        store.error_code = None;
        store.generation += 1;
        let generation = store.generation;
        let proxy = store.proxy.clone();
        drop(state);
        let delay = self.settings().connect_delay;
        let svc = Arc::clone(self);
        tokio::spawn(async move {
            let started = Instant::now();
            let failure = svc.connection_failure(&proxy).await;
            tokio::time::sleep_until(started + delay).await;
            let mut state = svc.lock();
            if let Some(store) = state.store_mut(&id)
                && store.generation == generation
                && store.state == Connection::Connecting
            {
                match failure {
                    None => store.state = Connection::Connected,
                    Some(code) => {
                        store.state = Connection::Failed;
                        store.error_code = Some(code);
                    }
                }
                tracing::info!(store = %id, state = store.state.as_str(), "connection finished");
            }
        });
        Ok(json!({}))
    }

    /// Why connecting fails, as a `ConnectionErrorCode`, or `None`.
    async fn connection_failure(&self, proxy: &ProxySettings) -> Option<&'static str> {
        if proxy.is_vpc() {
            let services = self.vpc_endpoint_services();
            let wanted = proxy.vpc_service_name.as_deref().unwrap_or_default();
            let found = services.iter().find(|s| {
                s.name == wanted
                    && match (&s.owner, &proxy.vpc_service_owner) {
                        (Some(a), Some(b)) => a == b,
                        _ => true,
                    }
            });
            let Some(service) = found else {
                return Some("XKS_VPC_ENDPOINT_SERVICE_NOT_FOUND");
            };
            if !service.private_dns_name.eq_ignore_ascii_case(proxy.host()) {
                return Some("XKS_VPC_ENDPOINT_SERVICE_INVALID_CONFIGURATION");
            }
        }
        proxy::health(&self.caller, &self.target(proxy), "ConnectCustomKeyStore")
            .await
            .err()
            .map(|e| proxy::connection_error_code(&e))
    }

    pub(super) fn disconnect_custom_key_store(
        self: &Arc<Self>,
        body: &Body,
    ) -> Result<Value, KmsError> {
        let id = req_str(body, "CustomKeyStoreId")?;
        let mut v = Validator::new();
        v.store_id("customKeyStoreId", &id);
        v.finish()?;
        let mut state = self.lock();
        let store = find_store(&mut state, &id)?;
        if matches!(
            store.state,
            Connection::Disconnected | Connection::Disconnecting
        ) {
            return Err(KmsError::invalid_state(format!(
                "The custom key store {id} is already {}.",
                store.state.as_str()
            )));
        }
        store.state = Connection::Disconnecting;
        store.error_code = None;
        store.generation += 1;
        let generation = store.generation;
        drop(state);
        let delay = self.settings().disconnect_delay;
        let svc = Arc::clone(self);
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let mut state = svc.lock();
            if let Some(store) = state.store_mut(&id)
                && store.generation == generation
                && store.state == Connection::Disconnecting
            {
                store.state = Connection::Disconnected;
                tracing::info!(store = %id, "disconnected");
            }
        });
        Ok(json!({}))
    }

    pub(super) fn delete_custom_key_store(&self, body: &Body) -> Result<Value, KmsError> {
        let id = req_str(body, "CustomKeyStoreId")?;
        let mut v = Validator::new();
        v.store_id("customKeyStoreId", &id);
        v.finish()?;
        let mut state = self.lock();
        let store = find_store(&mut state, &id)?;
        if store.state != Connection::Disconnected {
            return Err(KmsError::invalid_state(format!(
                "The custom key store {id} is {}; it must be DISCONNECTED to be deleted.",
                store.state.as_str()
            )));
        }
        let keys = state.keys_in_store(&id);
        if keys > 0 {
            return Err(KmsError::new(
                "CustomKeyStoreHasCMKsException",
                format!(
                    "The custom key store {id} still contains {keys} KMS keys (including keys pending deletion)."
                ),
            ));
        }
        state.stores.retain(|s| s.id != id);
        tracing::info!(store = %id, "custom key store deleted");
        Ok(json!({}))
    }

    pub(super) async fn create_key(self: &Arc<Self>, body: &Body) -> Result<Value, KmsError> {
        let origin = opt_str(body, "Origin")?.unwrap_or_else(|| "AWS_KMS".to_string());
        let store_id = opt_str(body, "CustomKeyStoreId")?;
        let xks_key_id = opt_str(body, "XksKeyId")?;
        let description = opt_str(body, "Description")?.unwrap_or_default();
        let key_spec = opt_str(body, "KeySpec")?.or(opt_str(body, "CustomerMasterKeySpec")?);
        let key_usage = opt_str(body, "KeyUsage")?;
        let multi_region = match body.get("MultiRegion") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(_) => {
                return Err(KmsError::new(
                    "SerializationException",
                    "Member 'MultiRegion' must be a boolean.",
                ));
            }
        };
        let mut v = Validator::new();
        v.one_of(
            "origin",
            &origin,
            &["AWS_KMS", "EXTERNAL", "AWS_CLOUDHSM", "EXTERNAL_KEY_STORE"],
        );
        if let Some(id) = &store_id {
            v.store_id("customKeyStoreId", id);
        }
        if let Some(x) = &xks_key_id {
            v.xks_key_id(x);
        }
        v.length("description", &description, 0, 8192, false);
        v.finish()?;

        let settings = self.settings();
        let key_id = new_key_id();
        let arn = format!(
            "arn:aws:kms:{}:{}:key/{key_id}",
            settings.region, settings.account_id
        );
        let mut key = Key {
            id: key_id,
            arn,
            seq: 0,
            account: settings.account_id.clone(),
            creation_date: now_epoch(),
            description,
            custom_key_store_id: None,
            xks_key_id: None,
            deletion_date: None,
            pending_window_days: None,
            enabled: true,
        };
        match origin.as_str() {
            "AWS_KMS" => {
                if store_id.is_some() || xks_key_id.is_some() {
                    return Err(KmsError::validation(
                        "CustomKeyStoreId and XksKeyId require Origin EXTERNAL_KEY_STORE for an external key store",
                    ));
                }
                let mut state = self.lock();
                key.seq = state.next_seq();
                let metadata = key.metadata(None);
                state.keys.push(key);
                return Ok(json!({"KeyMetadata": metadata}));
            }
            "EXTERNAL_KEY_STORE" => {}
            _ => {
                return Err(KmsError::new(
                    "UnsupportedOperationException",
                    format!("Origin {origin} is not emulated; use AWS_KMS or EXTERNAL_KEY_STORE."),
                ));
            }
        }
        let mut v = Validator::new();
        if store_id.is_none() {
            v.rule("CustomKeyStoreId is required when Origin is EXTERNAL_KEY_STORE");
        }
        if xks_key_id.is_none() {
            v.rule("XksKeyId is required when Origin is EXTERNAL_KEY_STORE");
        }
        v.finish()?;
        let (Some(store_id), Some(xks_key_id)) = (store_id, xks_key_id) else {
            return Err(KmsError::internal("inconsistent validation"));
        };
        if key_spec
            .as_deref()
            .is_some_and(|s| s != "SYMMETRIC_DEFAULT")
            || key_usage.as_deref().is_some_and(|u| u != "ENCRYPT_DECRYPT")
            || multi_region
        {
            return Err(KmsError::new(
                "UnsupportedOperationException",
                "KMS keys in an external key store must be single-Region SYMMETRIC_DEFAULT keys for ENCRYPT_DECRYPT.",
            ));
        }
        let admit = |state: &KmsState| -> Result<ProxySettings, KmsError> {
            let store = state
                .store(&store_id)
                .ok_or_else(|| KmsError::store_not_found(&store_id))?;
            if store.state != Connection::Connected {
                return Err(KmsError::invalid_state(format!(
                    "The custom key store {store_id} is {}; it must be CONNECTED to create KMS keys in it.",
                    store.state.as_str()
                )));
            }
            if state.keys.iter().any(|k| {
                k.custom_key_store_id.as_deref() == Some(store_id.as_str())
                    && k.xks_key_id.as_deref() == Some(xks_key_id.as_str())
            }) {
                return Err(KmsError::new(
                    "XksKeyAlreadyInUseException",
                    format!(
                        "The external key {xks_key_id} is already associated with a KMS key in this external key store."
                    ),
                ));
            }
            Ok(store.proxy.clone())
        };
        let proxy_settings = admit(&self.lock())?;
        proxy::check_external_key(&self.caller, &self.target(&proxy_settings), &xks_key_id).await?;
        let mut state = self.lock();
        admit(&state)?;
        key.seq = state.next_seq();
        key.custom_key_store_id = Some(store_id);
        key.xks_key_id = Some(xks_key_id);
        let metadata = key.metadata(Some(Connection::Connected));
        state.keys.push(key);
        Ok(json!({"KeyMetadata": metadata}))
    }

    fn find_key<'a>(&self, state: &'a KmsState, key_id: &str) -> Result<&'a Key, KmsError> {
        let settings = self.settings();
        let arn_prefix = format!(
            "arn:aws:kms:{}:{}:key/",
            settings.region, settings.account_id
        );
        let id = key_id.strip_prefix(&arn_prefix).unwrap_or(key_id);
        state.keys.iter().find(|k| k.id == id).ok_or_else(|| {
            KmsError::new(
                "NotFoundException",
                format!("Key '{key_id}' does not exist"),
            )
        })
    }

    fn key_id_input(body: &Body) -> Result<String, KmsError> {
        let key_id = req_str(body, "KeyId")?;
        let mut v = Validator::new();
        v.length("keyId", &key_id, 1, 2048, false);
        v.finish()?;
        Ok(key_id)
    }

    pub(super) fn describe_key(&self, body: &Body) -> Result<Value, KmsError> {
        let key_id = Self::key_id_input(body)?;
        let state = self.lock();
        let key = self.find_key(&state, &key_id)?;
        Ok(
            json!({"KeyMetadata": key.metadata(state.store_state(key.custom_key_store_id.as_deref()))}),
        )
    }

    pub(super) fn list_keys(&self, body: &Body) -> Result<Value, KmsError> {
        let limit = opt_int(body, "Limit")?;
        let marker = opt_str(body, "Marker")?;
        let mut v = Validator::new();
        if let Some(l) = limit {
            v.limit(l);
        }
        if let Some(m) = &marker {
            v.marker(m);
        }
        v.finish()?;
        let state = self.lock();
        let limit = limit.map_or(100, |l| l as usize);
        let (keys, next) = page(&state.keys, |k| k.seq, "keys", marker.as_deref(), limit)?;
        Ok(paged_response(
            "Keys",
            keys.into_iter()
                .map(|k| json!({"KeyId": k.id, "KeyArn": k.arn}))
                .collect(),
            next,
        ))
    }

    pub(super) fn schedule_key_deletion(&self, body: &Body) -> Result<Value, KmsError> {
        let key_id = Self::key_id_input(body)?;
        let days = opt_int(body, "PendingWindowInDays")?;
        let mut v = Validator::new();
        if let Some(d) = days {
            v.range("pendingWindowInDays", d, 7, 30);
        }
        v.finish()?;
        let days = days.unwrap_or(30);
        let mut state = self.lock();
        let id = self.find_key(&state, &key_id)?.id.clone();
        let Some(key) = state.keys.iter_mut().find(|k| k.id == id) else {
            return Err(KmsError::internal("key vanished"));
        };
        if key.deletion_date.is_some() {
            return Err(KmsError::new(
                "KMSInvalidStateException",
                format!("{} is pending deletion.", key.arn),
            ));
        }
        let deletion_date = (now_epoch() + (days * 86_400) as f64).floor();
        key.deletion_date = Some(deletion_date);
        key.pending_window_days = Some(days);
        Ok(json!({
            "KeyId": key.arn,
            "DeletionDate": deletion_date,
            "KeyState": "PendingDeletion",
            "PendingWindowInDays": days,
        }))
    }

    pub(super) fn cancel_key_deletion(&self, body: &Body) -> Result<Value, KmsError> {
        let key_id = Self::key_id_input(body)?;
        let mut state = self.lock();
        let id = self.find_key(&state, &key_id)?.id.clone();
        let Some(key) = state.keys.iter_mut().find(|k| k.id == id) else {
            return Err(KmsError::internal("key vanished"));
        };
        if key.deletion_date.is_none() {
            return Err(KmsError::new(
                "KMSInvalidStateException",
                format!("{} is not pending deletion.", key.arn),
            ));
        }
        key.deletion_date = None;
        key.pending_window_days = None;
        key.enabled = false;
        Ok(json!({"KeyId": key.arn}))
    }
}
