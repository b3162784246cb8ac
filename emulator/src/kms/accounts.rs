//! KMS kept per account and Region: each (account, Region) a
//! [`KmsService`] of its own, created on first use from the top-level
//! settings and faults and the `overrides` that apply to it. Store names,
//! URIs and the quota are per account+Region, like the token buckets of
//! the faults (so throttling in one account never slows another); store
//! ids stay globally unique.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::Duration;

use super::{KmsService, Settings, VpcServices};
use crate::config::{AccountOverride, EmulatorConfig, VpcEndpointServiceConfig};
use crate::control::SettingsPatch;
use crate::faults::{FaultEngine, KmsFaults};
use crate::proxy_client::ProxyCaller;

/// What a new account+Region starts with before its overrides.
#[derive(Debug, Clone)]
struct Defaults {
    connect_delay_ms: u64,
    disconnect_delay_ms: u64,
    max_custom_key_stores: usize,
    strict_connected_updates: bool,
    faults: KmsFaults,
}

impl Defaults {
    fn from_config(config: &EmulatorConfig) -> Self {
        Self {
            connect_delay_ms: config.connect_delay_ms,
            disconnect_delay_ms: config.disconnect_delay_ms,
            max_custom_key_stores: config.max_custom_key_stores,
            strict_connected_updates: config.strict_connected_updates,
            faults: config.faults.clone(),
        }
    }

    fn for_scope(&self, o: &AccountOverride, account: &str, region: &str) -> (Settings, KmsFaults) {
        let settings = Settings {
            region: region.to_string(),
            account_id: account.to_string(),
            connect_delay: Duration::from_millis(
                o.connect_delay_ms.unwrap_or(self.connect_delay_ms),
            ),
            disconnect_delay: Duration::from_millis(
                o.disconnect_delay_ms.unwrap_or(self.disconnect_delay_ms),
            ),
            max_custom_key_stores: o
                .max_custom_key_stores
                .unwrap_or(self.max_custom_key_stores),
            strict_connected_updates: o
                .strict_connected_updates
                .unwrap_or(self.strict_connected_updates),
        };
        let faults = o.faults.clone().unwrap_or_else(|| self.faults.clone());
        (settings, faults)
    }
}

/// Every account and Region KMS has seen.
pub struct KmsAccounts {
    scopes: Mutex<BTreeMap<(String, String), Arc<KmsService>>>,
    defaults: RwLock<Defaults>,
    base: EmulatorConfig,
    pub caller: Arc<ProxyCaller>,
    vpc_services: VpcServices,
}

impl KmsAccounts {
    pub fn new(config: &EmulatorConfig, caller: ProxyCaller) -> Self {
        let accounts = Self {
            scopes: Mutex::new(BTreeMap::new()),
            defaults: RwLock::new(Defaults::from_config(config)),
            base: config.clone(),
            caller: Arc::new(caller),
            vpc_services: Arc::new(RwLock::new(config.vpc_endpoint_services.clone())),
        };
        // The default account+Region exists from the start.
        accounts.default_scope();
        accounts
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<(String, String), Arc<KmsService>>> {
        self.scopes.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn defaults(&self) -> Defaults {
        self.defaults
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The config's `accountId`: the default identity's account.
    pub fn default_account(&self) -> &str {
        &self.base.account_id
    }

    /// The config's `region`: requests with no readable scope use it.
    pub fn default_region(&self) -> &str {
        &self.base.region
    }

    /// KMS of `account` in `region`, created on first use.
    pub fn get(&self, account: &str, region: &str) -> Arc<KmsService> {
        let key = (account.to_string(), region.to_string());
        if let Some(svc) = self.lock().get(&key) {
            return Arc::clone(svc);
        }
        let (settings, faults) =
            self.defaults()
                .for_scope(&self.base.override_for(account, region), account, region);
        let mut scopes = self.lock();
        let svc = scopes.entry(key).or_insert_with(|| {
            tracing::debug!(account, region, "KMS account+Region created");
            Arc::new(KmsService::new(
                settings,
                FaultEngine::new(faults),
                Arc::clone(&self.caller),
                Arc::clone(&self.vpc_services),
            ))
        });
        Arc::clone(svc)
    }

    /// The default account in the config's Region.
    pub fn default_scope(&self) -> Arc<KmsService> {
        self.get(&self.base.account_id, &self.base.region)
    }

    /// Every account+Region created so far, by account then Region.
    pub fn all(&self) -> Vec<Arc<KmsService>> {
        self.lock().values().cloned().collect()
    }

    /// One account+Region back to what the configuration gives it: no
    /// stores or keys, configured settings and faults, zero counters.
    pub fn reset_scope(&self, svc: &KmsService) {
        let account = svc.account_id();
        let region = svc.region();
        let (settings, faults) = Defaults::from_config(&self.base).for_scope(
            &self.base.override_for(&account, &region),
            &account,
            &region,
        );
        svc.reset();
        svc.update_settings(|s| *s = settings);
        svc.faults.set_all(faults);
        svc.faults.reset_stats();
    }

    /// Everything back to the configuration: every account+Region but the
    /// default one forgotten, configured defaults and VPC endpoint services.
    pub fn reset_all(&self) {
        *self.defaults.write().unwrap_or_else(|p| p.into_inner()) =
            Defaults::from_config(&self.base);
        *self.vpc_services.write().unwrap_or_else(|p| p.into_inner()) =
            self.base.vpc_endpoint_services.clone();
        self.lock().clear();
        self.default_scope();
    }

    /// Change the settings of every account+Region (those created later
    /// too), except what an override of the configuration sets for one.
    pub fn update_settings_everywhere(&self, patch: &SettingsPatch) {
        {
            let mut d = self.defaults.write().unwrap_or_else(|p| p.into_inner());
            if let Some(ms) = patch.connect_delay_ms {
                d.connect_delay_ms = ms;
            }
            if let Some(ms) = patch.disconnect_delay_ms {
                d.disconnect_delay_ms = ms;
            }
            if let Some(n) = patch.max_custom_key_stores {
                d.max_custom_key_stores = n;
            }
            if let Some(b) = patch.strict_connected_updates {
                d.strict_connected_updates = b;
            }
        }
        for svc in self.all() {
            let o = self.base.override_for(&svc.account_id(), &svc.region());
            let unpinned = SettingsPatch {
                connect_delay_ms: patch
                    .connect_delay_ms
                    .filter(|_| o.connect_delay_ms.is_none()),
                disconnect_delay_ms: patch
                    .disconnect_delay_ms
                    .filter(|_| o.disconnect_delay_ms.is_none()),
                max_custom_key_stores: patch
                    .max_custom_key_stores
                    .filter(|_| o.max_custom_key_stores.is_none()),
                strict_connected_updates: patch
                    .strict_connected_updates
                    .filter(|_| o.strict_connected_updates.is_none()),
            };
            apply(&svc, &unpinned);
        }
    }

    pub fn vpc_endpoint_services(&self) -> Vec<VpcEndpointServiceConfig> {
        self.vpc_services
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Make a VPC endpoint service "exist" (replacing one of the same name).
    pub fn set_vpc_endpoint_service(&self, service: VpcEndpointServiceConfig) {
        let mut services = self.vpc_services.write().unwrap_or_else(|p| p.into_inner());
        services.retain(|v| v.name != service.name);
        services.push(service);
    }

    pub fn remove_vpc_endpoint_service(&self, name: &str) -> bool {
        let mut services = self.vpc_services.write().unwrap_or_else(|p| p.into_inner());
        let before = services.len();
        services.retain(|v| v.name != name);
        services.len() != before
    }
}

/// Apply a settings patch to one account+Region.
pub fn apply(svc: &KmsService, patch: &SettingsPatch) {
    svc.update_settings(|s| {
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
