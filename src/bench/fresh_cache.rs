//! A prototype of the change proposed for `controller::describe_cache`,
//! measured by the bench next to the shared cache: a mutation makes only
//! the store it touched stale, instead of the whole listing.
//!
//! Why: under load (many stores being created and connected) some store
//! mutates every ~100 ms, so with the shared cache's global invalidation
//! almost every lookup finds the listing invalidated and lists again: about
//! as many DescribeCustomKeyStores calls as without a cache, and those calls
//! share the same 5/s quota as the creates. Here a listing taken after a
//! store's last mutation answers for that store, so one listing serves every
//! reconcile waiting at that moment.

use crate::kms::{CreateStore, KeyStores, KmsError, UpdateStore};
use crate::model::{ObservedStore, StoreKey};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub struct FreshCache<K> {
    inner: K,
    ttl: Duration,
    listing: tokio::sync::Mutex<Option<Snapshot>>,
    /// Bumped after every mutating call.
    epoch: AtomicU64,
    /// Store id or name → epoch right after its last mutation: a listing
    /// must have started at or after it to speak for that store.
    touched: Mutex<HashMap<String, u64>>,
    /// Epoch of the last rename: lookups by name need a listing after it.
    rename_floor: AtomicU64,
}

struct Snapshot {
    taken: Instant,
    /// Epoch read before the listing was requested.
    epoch: u64,
    stores: Arc<Vec<ObservedStore>>,
}

impl<K: KeyStores> FreshCache<K> {
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

    fn needed(&self, key: &str) -> u64 {
        self.touched
            .lock()
            .map_or(u64::MAX, |t| t.get(key).copied().unwrap_or(0))
    }

    fn touch(&self, keys: &[&str]) {
        let epoch = self.epoch.fetch_add(1, Ordering::AcqRel) + 1;
        if let Ok(mut t) = self.touched.lock() {
            for key in keys {
                t.insert((*key).to_string(), epoch);
            }
        }
    }

    /// A listing that started after epoch `needed` and is younger than the TTL.
    async fn stores(&self, needed: u64) -> Result<Arc<Vec<ObservedStore>>, KmsError> {
        let mut listing = self.listing.lock().await;
        if let Some(s) = listing.as_ref()
            && s.epoch >= needed
            && s.taken.elapsed() < self.ttl
        {
            return Ok(s.stores.clone());
        }
        let epoch = self.epoch.load(Ordering::Acquire);
        let taken = Instant::now();
        let stores = Arc::new(self.inner.describe_all().await?);
        *listing = Some(Snapshot {
            taken,
            epoch,
            stores: stores.clone(),
        });
        Ok(stores)
    }

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

impl<K: KeyStores> KeyStores for FreshCache<K> {
    async fn describe_by_id(&self, id: &str) -> Result<Option<ObservedStore>, KmsError> {
        let stores = self.stores(self.needed(id)).await?;
        Ok(stores.iter().find(|s| s.id == id).cloned())
    }

    async fn describe_by_name(&self, name: &str) -> Result<Option<ObservedStore>, KmsError> {
        let needed = self
            .needed(name)
            .max(self.rename_floor.load(Ordering::Acquire));
        let stores = self.stores(needed).await?;
        Ok(stores.iter().find(|s| s.name == name).cloned())
    }

    async fn describe_all(&self) -> Result<Vec<ObservedStore>, KmsError> {
        let now = self.epoch.load(Ordering::Acquire);
        Ok(self.stores(now).await?.as_ref().clone())
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
            // The old name is not known here: every lookup by name must see
            // a listing taken after the rename.
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
    use crate::model::ProxyCredential;
    use std::sync::atomic::AtomicUsize;

    /// Counts listings; Connect flips the store to CONNECTING.
    #[derive(Default)]
    struct Fake {
        listings: AtomicUsize,
        stores: Mutex<Vec<ObservedStore>>,
    }

    fn store(id: &str) -> ObservedStore {
        ObservedStore {
            id: id.into(),
            name: format!("name-{id}"),
            store_type: "EXTERNAL_KEY_STORE".into(),
            connection_state: crate::model::ConnectionState::Disconnected,
            connection_error_code: None,
            proxy: None,
        }
    }

    impl KeyStores for Fake {
        async fn describe_by_id(&self, _: &str) -> Result<Option<ObservedStore>, KmsError> {
            unreachable!("the cache lists")
        }
        async fn describe_by_name(&self, _: &str) -> Result<Option<ObservedStore>, KmsError> {
            unreachable!("the cache lists")
        }
        async fn describe_all(&self) -> Result<Vec<ObservedStore>, KmsError> {
            self.listings.fetch_add(1, Ordering::SeqCst);
            Ok(self.stores.lock().expect("lock").clone())
        }
        async fn create(&self, req: &CreateStore) -> Result<String, KmsError> {
            let mut s = store("new");
            s.name = req.name.clone();
            self.stores.lock().expect("lock").push(s);
            Ok("new".into())
        }
        async fn update(&self, _: &UpdateStore) -> Result<(), KmsError> {
            Ok(())
        }
        async fn connect(&self, id: &str) -> Result<(), KmsError> {
            for s in self.stores.lock().expect("lock").iter_mut() {
                if s.id == id {
                    s.connection_state = crate::model::ConnectionState::Connecting;
                }
            }
            Ok(())
        }
        async fn disconnect(&self, _: &str) -> Result<(), KmsError> {
            Ok(())
        }
        async fn delete(&self, _: &str) -> Result<(), KmsError> {
            Ok(())
        }
        async fn list_store_keys(&self, _: &str) -> Result<Vec<StoreKey>, KmsError> {
            Ok(Vec::new())
        }
    }

    #[tokio::test]
    async fn a_mutation_makes_only_its_store_stale() {
        let fake = Fake::default();
        fake.stores
            .lock()
            .expect("lock")
            .extend([store("a"), store("b")]);
        let cache = FreshCache::new(fake, Duration::from_secs(60));
        let listings = |c: &FreshCache<Fake>| c.inner.listings.load(Ordering::SeqCst);
        assert!(cache.describe_by_id("a").await.expect("a").is_some());
        assert_eq!(listings(&cache), 1);

        cache.connect("a").await.expect("connect");
        // Another store is served from the listing taken before.
        assert!(cache.describe_by_id("b").await.expect("b").is_some());
        assert_eq!(listings(&cache), 1);
        // The mutated one is looked up afresh and shows the change.
        let a = cache.describe_by_id("a").await.expect("a").expect("exists");
        assert_eq!(
            a.connection_state,
            crate::model::ConnectionState::Connecting
        );
        assert_eq!(listings(&cache), 2);

        // A create is seen by name at once.
        let req = CreateStore {
            name: "fresh".into(),
            proxy: crate::model::ProxyConfig::default(),
            credential: ProxyCredential::new("A", "B"),
        };
        cache.create(&req).await.expect("create");
        assert!(
            cache
                .describe_by_name("fresh")
                .await
                .expect("by name")
                .is_some()
        );
        assert_eq!(listings(&cache), 3);
    }
}
