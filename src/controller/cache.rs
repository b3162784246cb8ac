//! The controller's view of every watched ExternalKeyStore: one reflector
//! per watched namespace (or one for the whole cluster), each knowing
//! whether its first listing is complete. The claim rule reads it: a
//! resource may act only when every listing is complete, or a holder in a
//! namespace not yet listed would be missed.

use super::status::StatusMemory;
use crate::api::ExternalKeyStore;
use crate::claims::{Claimant, Scope};
use futures::{Stream, StreamExt};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, ResourceExt};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

/// One watched namespace (or the whole cluster).
#[derive(Clone)]
struct Listing {
    store: Store<ExternalKeyStore>,
    synced: Arc<AtomicBool>,
}

/// Every listing of the process, shared by its clones. Empty (tests that
/// call `reconcile` directly): no other resource is known, nothing waits.
#[derive(Clone, Default)]
pub struct ResourceCache {
    listings: Arc<RwLock<Vec<Listing>>>,
}

impl ResourceCache {
    /// Watch `api` into a new listing of this cache. Returns the reader and
    /// the stream of changed objects to drive a Controller with; the
    /// listing is complete once the stream has passed its first InitDone.
    pub fn watch(
        &self,
        api: Api<ExternalKeyStore>,
    ) -> (
        Store<ExternalKeyStore>,
        impl Stream<Item = Result<ExternalKeyStore, watcher::Error>> + Send + 'static,
    ) {
        let (reader, writer) = reflector::store();
        let synced = Arc::new(AtomicBool::new(false));
        let flag = synced.clone();
        let stream = watcher(api, watcher::Config::default())
            .default_backoff()
            .reflect(writer)
            .inspect(move |event| {
                if matches!(event, Ok(watcher::Event::InitDone)) {
                    flag.store(true, Ordering::Release);
                }
            })
            .applied_objects();
        self.write().push(Listing {
            store: reader.clone(),
            synced,
        });
        (reader, stream)
    }

    /// Whether every listing has completed its first list.
    pub fn synced(&self) -> bool {
        self.read().iter().all(|l| l.synced.load(Ordering::Acquire))
    }

    /// Every resource in the cache.
    pub fn resources(&self) -> Vec<Arc<ExternalKeyStore>> {
        self.read().iter().flat_map(|l| l.store.state()).collect()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Vec<Listing>> {
        self.listings.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Vec<Listing>> {
        self.listings.write().unwrap_or_else(|p| p.into_inner())
    }

    /// The claims of every cached resource but `uid`, each with the newest
    /// status this process knows (its own writes are newer than the watch).
    pub fn rivals(
        &self,
        uid: &str,
        statuses: &StatusMemory,
        scope_of: impl Fn(&ExternalKeyStore) -> Option<Scope>,
    ) -> Vec<Claimant> {
        self.resources()
            .iter()
            .filter(|r| r.uid().as_deref() != Some(uid))
            .filter_map(|r| {
                let scope = scope_of(r)?;
                let status = r.uid().and_then(|u| statuses.get(&u));
                Some(Claimant::of(r, status.as_ref(), scope))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::ExternalKeyStoreStatus;

    fn resource(ns: &str, name: &str, id: Option<&str>) -> ExternalKeyStore {
        let mut r: ExternalKeyStore = serde_json::from_value(serde_json::json!({
            "apiVersion": "xks-operator.io/v1alpha1",
            "kind": "ExternalKeyStore",
            "metadata": {"name": name, "namespace": ns, "uid": format!("{ns}-{name}")},
            "spec": {"keyStoreName": "payments", "proxy": {
                "uriEndpoint": "https://xks.example.com",
                "uriPath": "/kms/xks/v1",
                "credentialsSecretRef": {"name": "cred"}
            }}
        }))
        .expect("valid resource");
        r.status = id.map(|id| ExternalKeyStoreStatus {
            key_store_id: Some(id.into()),
            ..Default::default()
        });
        r
    }

    fn scope(_: &ExternalKeyStore) -> Option<Scope> {
        Some(Scope {
            account: None,
            region: "us-east-1".into(),
        })
    }

    /// A listing fed by hand, as the watcher would.
    fn listing(cache: &ResourceCache, objects: Vec<ExternalKeyStore>, done: bool) {
        let (reader, mut writer) = reflector::store();
        writer.apply_watcher_event(&watcher::Event::Init);
        for o in objects {
            writer.apply_watcher_event(&watcher::Event::InitApply(o));
        }
        writer.apply_watcher_event(&watcher::Event::InitDone);
        cache.write().push(Listing {
            store: reader,
            synced: Arc::new(AtomicBool::new(done)),
        });
    }

    #[test]
    fn rivals_span_every_listing_but_exclude_the_resource_itself() {
        let cache = ResourceCache::default();
        listing(&cache, vec![resource("team-a", "p", None)], true);
        listing(&cache, vec![resource("team-b", "p", None)], true);
        let rivals = cache.rivals("team-a-p", &StatusMemory::default(), scope);
        let keys: Vec<String> = rivals.iter().map(Claimant::key).collect();
        assert_eq!(keys, ["team-b/p"]);
    }

    #[test]
    fn a_status_this_process_wrote_wins_over_the_lagging_cache() {
        let cache = ResourceCache::default();
        listing(&cache, vec![resource("team-b", "p", None)], true);
        let memory = StatusMemory::default();
        let written = ExternalKeyStoreStatus {
            key_store_id: Some("cks-1".into()),
            ..Default::default()
        };
        memory.remember("team-b-p", &written);
        let rivals = cache.rivals("other", &memory, scope);
        assert_eq!(rivals[0].recorded_id.as_deref(), Some("cks-1"));
    }

    #[test]
    fn the_cache_is_synced_only_when_every_listing_is() {
        let cache = ResourceCache::default();
        assert!(cache.synced(), "no listing: nothing to wait for");
        listing(&cache, vec![], true);
        listing(&cache, vec![], false);
        assert!(!cache.synced());
    }
}
