//! A short-lived cache in front of `KeyStores` so that the drift checks of
//! every resource of one account and Region share one paginated
//! `DescribeCustomKeyStores` listing instead of one call each: KMS allows
//! only a few describe calls per second per account.
//!
//! A mutating call makes only the store it touched stale: a lookup of that
//! store needs a listing started after the call, so the engine sees its own
//! changes at once, while every other store is still served from the
//! listing (under load some store mutates every few hundred milliseconds,
//! and invalidating everything would list about as often as no cache).
//! Changes made by others show after at most the TTL. A store id missing
//! from a listing is looked up afresh before anyone concludes the store is
//! gone (it may be younger than the listing: adopted by id seconds after it
//! was made). A name missing from a listing is trusted: its only use is to
//! create a store of that name, and KMS, which keeps names unique, answers
//! that create with CustomKeyStoreNameInUse if a younger store holds it; the
//! engine then adopts that store (confirming every miss cost one more
//! describe per new resource and halved the create rate under the quota).
//! A store in
//! transition (CONNECTING, DISCONNECTING) is always read afresh, from a
//! listing that started after the lookup did: lookups that wait on the same
//! listing share it, so polls of many stores in transition cost one call
//! per round rather than one per store.

use crate::kms::{CreateStore, KeyStores, KmsError, UpdateStore};
use crate::model::{ConnectionState, ObservedStore, StoreKey};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub struct DescribeCache<K> {
    inner: K,
    ttl: Duration,
    /// Held while listing, so concurrent reconciles wait for one listing
    /// instead of each starting their own.
    listing: tokio::sync::Mutex<Option<Snapshot>>,
    /// Bumped after every mutating call.
    epoch: AtomicU64,
    /// Store id or name → the epoch right after its last mutation: only a
    /// listing started at or after it speaks for that store.
    touched: Mutex<HashMap<String, u64>>,
    /// Epoch of the last rename: the old name is not known to the cache,
    /// so every lookup by name needs a listing started after it.
    rename_floor: AtomicU64,
}

struct Snapshot {
    taken: Instant,
    epoch: u64,
    stores: Arc<Vec<ObservedStore>>,
}

/// A listing handed to one lookup.
struct Listing {
    stores: Arc<Vec<ObservedStore>>,
    /// The epoch it started at.
    epoch: u64,
    /// When its request was sent.
    taken: Instant,
}

impl Listing {
    /// `store` as this listing shows it, unless it is in transition and the
    /// listing started before `asked` (the start of the lookup), in which
    /// case it must be read afresh.
    fn current(&self, store: &ObservedStore, asked: Instant) -> bool {
        !in_transition(store) || self.taken >= asked
    }
}

impl<K: KeyStores> DescribeCache<K> {
    /// A zero `ttl` disables caching: every call goes to `inner`.
    pub fn new(inner: K, ttl: Duration) -> Self {
        Self {
            inner,
            ttl,
            listing: tokio::sync::Mutex::new(None),
            epoch: AtomicU64::new(0),
            touched: Mutex::default(),
            rename_floor: AtomicU64::new(0),
        }
    }

    pub fn inner(&self) -> &K {
        &self.inner
    }

    /// The epoch a listing must have started at to speak for `key`.
    fn needed(&self, key: &str) -> u64 {
        // A poisoned lock only means another thread panicked mid-insert:
        // demand a fresh listing rather than trust the map.
        self.touched
            .lock()
            .map_or(u64::MAX, |t| t.get(key).copied().unwrap_or(0))
    }

    fn touch(&self, keys: &[&str]) {
        let epoch = self.epoch.fetch_add(1, Ordering::AcqRel) + 1;
        if let Ok(mut touched) = self.touched.lock() {
            for key in keys {
                touched.insert((*key).to_string(), epoch);
            }
        }
    }

    /// A listing younger than the TTL that started at or after epoch
    /// `needed` (and after the instant `after`, when given).
    async fn stores(&self, needed: u64, after: Option<Instant>) -> Result<Listing, KmsError> {
        let mut listing = self.listing.lock().await;
        if let Some(s) = listing.as_ref()
            && s.epoch >= needed
            && s.taken.elapsed() < self.ttl
            && after.is_none_or(|after| s.taken >= after)
        {
            return Ok(Listing {
                stores: s.stores.clone(),
                epoch: s.epoch,
                taken: s.taken,
            });
        }
        // Read before the request: a mutation completing during the listing
        // bumps past it, so the listing never speaks for that store.
        let epoch = self.epoch.load(Ordering::Acquire);
        let taken = Instant::now();
        let stores = Arc::new(self.inner.describe_all().await?);
        *listing = Some(Snapshot {
            taken,
            epoch,
            stores: stores.clone(),
        });
        Ok(Listing {
            stores,
            epoch,
            taken,
        })
    }

    /// Runs a mutating call and marks `keys` stale whatever its result (a
    /// failed call may still have changed something, e.g. on a timeout).
    async fn mutate<T>(
        &self,
        keys: &[&str],
        call: impl Future<Output = Result<T, KmsError>>,
    ) -> Result<T, KmsError> {
        let result = call.await;
        self.touch(keys);
        result
    }
}

/// A store CONNECTING or DISCONNECTING is being waited on by a step that
/// polls it: a listing up to a TTL old would stretch every such wait to the
/// TTL, so it is read afresh.
fn in_transition(store: &ObservedStore) -> bool {
    matches!(
        store.connection_state,
        ConnectionState::Connecting | ConnectionState::Disconnecting
    )
}

impl<K: KeyStores> KeyStores for DescribeCache<K> {
    async fn describe_by_id(&self, id: &str) -> Result<Option<ObservedStore>, KmsError> {
        if self.ttl.is_zero() {
            return self.inner.describe_by_id(id).await;
        }
        let asked = Instant::now();
        let needed = self.needed(id);
        let mut listing = self.stores(needed, None).await?;
        if listing
            .stores
            .iter()
            .find(|s| s.id == id)
            .is_some_and(|s| !listing.current(s, asked))
        {
            listing = self.stores(needed, Some(asked)).await?;
        }
        match listing.stores.iter().find(|s| s.id == id) {
            Some(store) => Ok(Some(store.clone())),
            // A listing older than the store proves nothing: only KMS,
            // asked now, says a store is absent.
            None => self.inner.describe_by_id(id).await,
        }
    }

    async fn describe_by_name(&self, name: &str) -> Result<Option<ObservedStore>, KmsError> {
        if self.ttl.is_zero() {
            return self.inner.describe_by_name(name).await;
        }
        let asked = Instant::now();
        let needed = self
            .needed(name)
            .max(self.rename_floor.load(Ordering::Acquire));
        let mut listing = self.stores(needed, None).await?;
        // Mutations are recorded by id too: the store found under this name
        // must not have changed since the listing started.
        if let Some(id_needed) = listing
            .stores
            .iter()
            .find(|s| s.name == name)
            .map(|s| self.needed(&s.id))
            .filter(|n| *n > listing.epoch)
        {
            listing = self.stores(id_needed, None).await?;
        }
        if listing
            .stores
            .iter()
            .find(|s| s.name == name)
            .is_some_and(|s| !listing.current(s, asked))
        {
            listing = self.stores(needed.max(listing.epoch), Some(asked)).await?;
        }
        Ok(listing.stores.iter().find(|s| s.name == name).cloned())
    }

    async fn describe_all(&self) -> Result<Vec<ObservedStore>, KmsError> {
        if self.ttl.is_zero() {
            return self.inner.describe_all().await;
        }
        let now = self.epoch.load(Ordering::Acquire);
        Ok(self.stores(now, None).await?.stores.as_ref().clone())
    }

    async fn create(&self, req: &CreateStore) -> Result<String, KmsError> {
        let result = self.inner.create(req).await;
        match &result {
            Ok(id) => self.touch(&[&req.name, id]),
            Err(_) => self.touch(&[&req.name]),
        }
        result
    }

    async fn update(&self, req: &UpdateStore) -> Result<(), KmsError> {
        let result = self.inner.update(req).await;
        self.touch(&[&req.id]);
        if req.new_name.is_some() {
            self.rename_floor
                .store(self.epoch.load(Ordering::Acquire), Ordering::Release);
        }
        result
    }

    async fn connect(&self, id: &str) -> Result<(), KmsError> {
        self.mutate(&[id], self.inner.connect(id)).await
    }

    async fn disconnect(&self, id: &str) -> Result<(), KmsError> {
        self.mutate(&[id], self.inner.disconnect(id)).await
    }

    async fn delete(&self, id: &str) -> Result<(), KmsError> {
        self.mutate(&[id], self.inner.delete(id)).await
    }

    async fn list_store_keys(&self, id: &str) -> Result<Vec<StoreKey>, KmsError> {
        self.inner.list_store_keys(id).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ProxyConfig;
    use std::sync::Mutex;
    use std::sync::atomic::AtomicUsize;

    /// Counts calls; `describe_all` is slow enough for callers to overlap.
    #[derive(Default)]
    struct Counting {
        describe_all: AtomicUsize,
        describe_one: AtomicUsize,
        mutations: AtomicUsize,
        stores: Mutex<Vec<ObservedStore>>,
    }

    fn store(id: &str, name: &str, state: ConnectionState) -> ObservedStore {
        ObservedStore {
            id: id.into(),
            name: name.into(),
            store_type: "EXTERNAL_KEY_STORE".into(),
            connection_state: state,
            connection_error_code: None,
            proxy: Some(ProxyConfig::default()),
        }
    }

    impl Counting {
        fn with(stores: Vec<ObservedStore>) -> Self {
            Self {
                stores: Mutex::new(stores),
                ..Self::default()
            }
        }
        fn snapshot(&self) -> Vec<ObservedStore> {
            self.stores.lock().expect("lock").clone()
        }
    }

    impl KeyStores for Counting {
        async fn describe_by_id(&self, id: &str) -> Result<Option<ObservedStore>, KmsError> {
            self.describe_one.fetch_add(1, Ordering::SeqCst);
            Ok(self.snapshot().into_iter().find(|s| s.id == id))
        }
        async fn describe_by_name(&self, name: &str) -> Result<Option<ObservedStore>, KmsError> {
            self.describe_one.fetch_add(1, Ordering::SeqCst);
            Ok(self.snapshot().into_iter().find(|s| s.name == name))
        }
        async fn describe_all(&self) -> Result<Vec<ObservedStore>, KmsError> {
            self.describe_all.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(20)).await;
            Ok(self.snapshot())
        }
        async fn create(&self, req: &CreateStore) -> Result<String, KmsError> {
            self.mutations.fetch_add(1, Ordering::SeqCst);
            if self.snapshot().iter().any(|s| s.name == req.name) {
                return Err(KmsError::Service {
                    code: "CustomKeyStoreNameInUseException".into(),
                    message: format!("name {} is in use", req.name),
                });
            }
            let id = format!("cks-{}", req.name);
            self.stores.lock().expect("lock").push(store(
                &id,
                &req.name,
                ConnectionState::Disconnected,
            ));
            Ok(id)
        }
        async fn update(&self, _: &UpdateStore) -> Result<(), KmsError> {
            self.mutations.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
        async fn connect(&self, id: &str) -> Result<(), KmsError> {
            self.mutations.fetch_add(1, Ordering::SeqCst);
            for s in self
                .stores
                .lock()
                .expect("lock")
                .iter_mut()
                .filter(|s| s.id == id)
            {
                s.connection_state = ConnectionState::Connecting;
            }
            Ok(())
        }
        async fn disconnect(&self, _: &str) -> Result<(), KmsError> {
            self.mutations.fetch_add(1, Ordering::SeqCst);
            Err(KmsError::Transport("timed out".into()))
        }
        async fn delete(&self, _: &str) -> Result<(), KmsError> {
            self.mutations.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
        async fn list_store_keys(&self, _: &str) -> Result<Vec<StoreKey>, KmsError> {
            Ok(Vec::new())
        }
    }

    fn two_stores() -> Vec<ObservedStore> {
        vec![
            store("cks-1", "payments", ConnectionState::Connected),
            store("cks-2", "ledger", ConnectionState::Disconnected),
        ]
    }

    #[tokio::test]
    async fn many_lookups_share_one_listing() {
        let cache = DescribeCache::new(Counting::with(two_stores()), Duration::from_secs(10));
        let lookups = (0..20).map(|i| {
            let cache = &cache;
            async move {
                if i % 2 == 0 {
                    cache.describe_by_id("cks-1").await
                } else {
                    cache.describe_by_name("ledger").await
                }
            }
        });
        let results = futures::future::join_all(lookups).await;
        assert!(results.iter().all(|r| matches!(r, Ok(Some(_)))));
        assert_eq!(cache.inner().describe_all.load(Ordering::SeqCst), 1);
        assert_eq!(cache.inner().describe_one.load(Ordering::SeqCst), 0);
        // A miss is confirmed by KMS itself, not by the listing.
        assert_eq!(cache.describe_by_id("cks-404").await.ok(), Some(None));
        assert_eq!(cache.inner().describe_all.load(Ordering::SeqCst), 1);
        assert_eq!(cache.inner().describe_one.load(Ordering::SeqCst), 1);
    }

    /// Found in a real cluster: a store created outside the operator, then
    /// adopted seconds later by id, was "not found" for as long as the
    /// listing that predated it was served. A name's miss is served from
    /// the listing, at no cost: KMS's answer to the create it leads to
    /// decides, and from then on the name is read afresh.
    #[tokio::test]
    async fn a_store_younger_than_the_listing_is_found_by_id_at_once_and_by_name_after_a_create() {
        let cache = DescribeCache::new(Counting::with(two_stores()), Duration::from_secs(60));
        assert!(matches!(cache.describe_by_id("cks-1").await, Ok(Some(_))));
        cache.inner().stores.lock().expect("lock").push(store(
            "cks-3",
            "made-elsewhere",
            ConnectionState::Connected,
        ));
        let by_id = cache.describe_by_id("cks-3").await.ok().flatten();
        assert_eq!(by_id.map(|s| s.name), Some("made-elsewhere".to_string()));
        assert_eq!(
            cache.describe_by_name("made-elsewhere").await.ok(),
            Some(None)
        );
        assert_eq!(cache.inner().describe_all.load(Ordering::SeqCst), 1);
        assert_eq!(cache.inner().describe_one.load(Ordering::SeqCst), 1);

        let create = CreateStore {
            name: "made-elsewhere".into(),
            proxy: ProxyConfig::default(),
            credential: crate::model::ProxyCredential::new("AKID", "secret"),
        };
        let refused = cache.create(&create).await;
        assert_eq!(
            refused.err().and_then(|e| e.code().map(str::to_string)),
            Some("CustomKeyStoreNameInUseException".to_string())
        );
        let by_name = cache
            .describe_by_name("made-elsewhere")
            .await
            .ok()
            .flatten();
        assert_eq!(by_name.map(|s| s.id), Some("cks-3".to_string()));
        assert_eq!(cache.inner().describe_all.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_mutation_invalidates_even_when_it_fails() {
        let cache = DescribeCache::new(Counting::with(two_stores()), Duration::from_secs(10));
        let before = cache.describe_by_id("cks-1").await.ok().flatten();
        assert_eq!(
            before.map(|s| s.connection_state),
            Some(ConnectionState::Connected)
        );

        let id = cache
            .create(&CreateStore {
                name: "new".into(),
                proxy: ProxyConfig::default(),
                credential: crate::model::ProxyCredential::new("A", "B"),
            })
            .await
            .expect("create");
        let created = cache.describe_by_id(&id).await.ok().flatten();
        assert!(created.is_some(), "the cache must show a store it created");
        assert_eq!(cache.inner().describe_all.load(Ordering::SeqCst), 2);

        cache.connect(&id).await.expect("connect");
        let connecting = cache.describe_by_name("new").await.ok().flatten();
        assert_eq!(
            connecting.map(|s| s.connection_state),
            Some(ConnectionState::Connecting)
        );
        assert_eq!(cache.inner().describe_all.load(Ordering::SeqCst), 3);

        assert!(cache.disconnect(&id).await.is_err());
        // Another store is still served from the listing...
        let _ = cache.describe_by_id("cks-1").await;
        assert_eq!(cache.inner().describe_all.load(Ordering::SeqCst), 3);
        // ...the one the failed call touched is listed afresh.
        let _ = cache.describe_by_id(&id).await;
        assert_eq!(cache.inner().describe_all.load(Ordering::SeqCst), 4);
    }

    #[tokio::test]
    async fn a_store_in_transition_is_read_afresh_so_waits_are_not_stretched() {
        let cache = DescribeCache::new(Counting::with(two_stores()), Duration::from_secs(10));
        cache.connect("cks-2").await.expect("connect");
        let state = |s: Result<Option<ObservedStore>, KmsError>| {
            s.ok().flatten().map(|s| s.connection_state)
        };
        assert_eq!(
            state(cache.describe_by_id("cks-2").await),
            Some(ConnectionState::Connecting)
        );
        // The connect made the store stale, so that lookup started a
        // listing: fresh enough, nothing more.
        assert_eq!(cache.inner().describe_all.load(Ordering::SeqCst), 1);
        // KMS finishes connecting; the listing (within its TTL) still says
        // CONNECTING, but the waiting step sees CONNECTED.
        for s in cache.inner().stores.lock().expect("lock").iter_mut() {
            s.connection_state = ConnectionState::Connected;
        }
        assert_eq!(
            state(cache.describe_by_id("cks-2").await),
            Some(ConnectionState::Connected)
        );
        // By name too, from the listing that lookup started.
        assert_eq!(
            state(cache.describe_by_name("ledger").await),
            Some(ConnectionState::Connected)
        );
        assert_eq!(cache.inner().describe_all.load(Ordering::SeqCst), 2);
        // Steady stores still come from the listing.
        let _ = cache.describe_by_id("cks-1").await;
        assert_eq!(cache.inner().describe_all.load(Ordering::SeqCst), 2);
        assert_eq!(cache.inner().describe_one.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn polls_of_many_stores_in_transition_share_listings() {
        let stores: Vec<ObservedStore> = (0..20)
            .map(|i| {
                store(
                    &format!("cks-{i}"),
                    &format!("s{i}"),
                    ConnectionState::Connecting,
                )
            })
            .collect();
        let cache = DescribeCache::new(Counting::with(stores), Duration::from_secs(10));
        let _ = cache.describe_all().await;
        // Every store's wait polls at once, as after a shared requeue delay.
        let polls = (0..20).map(|i| {
            let cache = &cache;
            async move { cache.describe_by_id(&format!("cks-{i}")).await }
        });
        let seen = futures::future::join_all(polls).await;
        assert!(seen.iter().all(|s| matches!(s, Ok(Some(_)))));
        // Each poll needs a listing started after it asked: the first poll
        // starts one, the 19 that queued behind it share the next one.
        assert_eq!(cache.inner().describe_all.load(Ordering::SeqCst), 3);
        assert_eq!(cache.inner().describe_one.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn a_rename_is_seen_by_name_at_once() {
        let cache = DescribeCache::new(Counting::with(two_stores()), Duration::from_secs(10));
        let _ = cache.describe_by_id("cks-1").await;
        cache
            .update(&UpdateStore {
                id: "cks-1".into(),
                new_name: Some("renamed".into()),
                ..UpdateStore::default()
            })
            .await
            .expect("update");
        let _ = cache.describe_by_name("renamed").await;
        assert_eq!(cache.inner().describe_all.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn the_listing_expires_after_the_ttl() {
        let cache = DescribeCache::new(Counting::with(two_stores()), Duration::from_millis(50));
        let _ = cache.describe_by_id("cks-1").await;
        let _ = cache.describe_by_id("cks-2").await;
        assert_eq!(cache.inner().describe_all.load(Ordering::SeqCst), 1);
        tokio::time::sleep(Duration::from_millis(60)).await;
        let _ = cache.describe_by_id("cks-1").await;
        assert_eq!(cache.inner().describe_all.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn zero_ttl_passes_every_call_through() {
        let cache = DescribeCache::new(Counting::with(two_stores()), Duration::ZERO);
        let _ = cache.describe_by_id("cks-1").await;
        let _ = cache.describe_by_name("ledger").await;
        assert_eq!(cache.inner().describe_all.load(Ordering::SeqCst), 0);
        assert_eq!(cache.inner().describe_one.load(Ordering::SeqCst), 2);
    }
}
