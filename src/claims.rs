//! Who may act on a KMS store. Pure: the controller feeds it from its watch
//! caches, file mode from the manifests, and every replica computes the same
//! answer from the same facts.
//!
//! KMS custom key stores carry no tags, so ownership can only live in the
//! cluster. A store (account + Region + id, or its name while no id is known)
//! is held by exactly one resource: the one whose status records it (status
//! is written by the operator alone, so a namespace user cannot forge it);
//! otherwise the oldest `creationTimestamp`, ties broken by
//! `namespace/name`. Every other resource that names or pins the store
//! yields: it makes no KMS write and says who holds the store.

use crate::api::ExternalKeyStore;
use std::fmt;

/// Where a store lives: KMS names and ids are unique per account and Region.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Scope {
    /// The AWS account, when known; `None` is the operator's own identity.
    pub account: Option<String>,
    pub region: String,
}

/// One way of naming a store.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum StoreRef {
    Id(String),
    Name(String),
}

impl fmt::Display for StoreRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Id(id) => write!(f, "store {id}"),
            Self::Name(name) => write!(f, "the store named {name:?}"),
        }
    }
}

/// What the claim rule needs to know of one resource.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Claimant {
    pub namespace: String,
    pub name: String,
    /// `metadata.creationTimestamp` (RFC 3339); `None` sorts last (file mode).
    pub created: Option<jiff::Timestamp>,
    pub scope: Scope,
    /// `spec.keyStoreId`.
    pub pinned_id: Option<String>,
    /// `spec.keyStoreName`, else `metadata.name`.
    pub desired_name: String,
    /// `status.keyStoreId`: the store this resource created or adopted.
    pub recorded_id: Option<String>,
    /// `status.keyStoreName`: that store's name as KMS last reported it.
    pub recorded_name: Option<String>,
    /// A store this pass found in KMS (by id or by name) before acting on it.
    pub observed: Option<(String, String)>,
}

impl Claimant {
    /// The claimant of `resource` in `scope`, from its spec, metadata and
    /// the newest status known (which may be newer than `resource.status`).
    pub fn of(
        resource: &ExternalKeyStore,
        status: Option<&crate::api::ExternalKeyStoreStatus>,
        scope: Scope,
    ) -> Self {
        let status = status.or(resource.status.as_ref());
        Self {
            namespace: resource.metadata.namespace.clone().unwrap_or_default(),
            name: resource.metadata.name.clone().unwrap_or_default(),
            created: resource.metadata.creation_timestamp.as_ref().map(|t| t.0),
            scope,
            pinned_id: resource.spec.key_store_id.clone(),
            desired_name: resource.key_store_name(),
            recorded_id: status.and_then(|s| s.key_store_id.clone()),
            recorded_name: status.and_then(|s| s.key_store_name.clone()),
            observed: None,
        }
    }

    /// This claimant, having found `id` named `name` in KMS.
    pub fn having_observed(&self, id: &str, name: &str) -> Self {
        Self {
            observed: Some((id.to_string(), name.to_string())),
            ..self.clone()
        }
    }

    /// `namespace/name`.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// Every way this resource names a store it may act on: the ids it pins,
    /// recorded or found, and the names it wants, recorded or found (a
    /// resource whose recorded id vanished looks the store up by name).
    fn refs(&self) -> Vec<StoreRef> {
        let ids = [
            self.pinned_id.as_deref(),
            self.recorded_id.as_deref(),
            self.observed.as_ref().map(|(id, _)| id.as_str()),
        ];
        let names = [
            Some(self.desired_name.as_str()),
            self.recorded_name.as_deref(),
            self.observed.as_ref().map(|(_, name)| name.as_str()),
        ];
        let mut refs: Vec<StoreRef> = ids
            .into_iter()
            .flatten()
            .map(|id| StoreRef::Id(id.to_string()))
            .chain(
                names
                    .into_iter()
                    .flatten()
                    .filter(|n| !n.is_empty())
                    .map(|n| StoreRef::Name(n.to_string())),
            )
            .collect();
        refs.sort();
        refs.dedup();
        refs
    }

    /// Whether status records `store` as this resource's own: its recorded
    /// id, or the name KMS reported for that recorded store.
    fn records(&self, store: &StoreRef) -> bool {
        match store {
            StoreRef::Id(id) => self.recorded_id.as_deref() == Some(id),
            StoreRef::Name(name) => {
                self.recorded_id.is_some() && self.recorded_name.as_deref() == Some(name)
            }
        }
    }

    /// Lower holds. A total order: namespace/name is unique.
    fn rank(&self, store: &StoreRef) -> (bool, bool, Option<jiff::Timestamp>, &str, &str) {
        (
            !self.records(store),
            self.created.is_none(),
            self.created,
            &self.namespace,
            &self.name,
        )
    }
}

/// The resource another one yields to, and the store they both name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Claimed {
    /// `namespace/name` of the holder.
    pub holder: String,
    pub store: StoreRef,
    pub scope: Scope,
}

impl Claimed {
    /// The condition message: who holds the store and what to do.
    pub fn message(&self) -> String {
        format!(
            "{} in {} is held by ExternalKeyStore {}, which manages it; this resource makes no change to it. Name another store (spec.keyStoreName or spec.keyStoreId) or delete this resource; it takes over by itself if {} is deleted with deletionPolicy Retain or stops naming the store",
            self.store,
            self.scope_words(),
            self.holder,
            self.holder
        )
    }

    fn scope_words(&self) -> String {
        match &self.scope.account {
            Some(account) => format!("account {account}, {}", self.scope.region),
            None => self.scope.region.clone(),
        }
    }
}

/// Condition reason of a resource that yields to another.
pub const REASON: &str = "StoreClaimed";

/// The resource `me` must yield to, if any: among the others in the same
/// scope that name one of the stores `me` names, the best-ranked one that
/// outranks `me` for that store.
pub fn yields_to<'a>(
    me: &Claimant,
    others: impl IntoIterator<Item = &'a Claimant>,
) -> Option<Claimed> {
    let mine = me.refs();
    let mut best: Option<(&Claimant, StoreRef)> = None;
    for other in others {
        if other.scope != me.scope || (other.namespace == me.namespace && other.name == me.name) {
            continue;
        }
        let theirs = other.refs();
        for store in mine.iter().filter(|r| theirs.contains(r)) {
            if other.rank(store) >= me.rank(store) {
                continue;
            }
            let better = best
                .as_ref()
                .is_none_or(|(b, s)| (other.rank(store), store) < (b.rank(s), s));
            if better {
                best = Some((other, store.clone()));
            }
        }
    }
    best.map(|(holder, store)| Claimed {
        holder: holder.key(),
        store,
        scope: me.scope.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn claimant(ns: &str, name: &str, created: i64, desired: &str) -> Claimant {
        Claimant {
            namespace: ns.into(),
            name: name.into(),
            created: Some(jiff::Timestamp::from_second(created).expect("valid")),
            scope: Scope {
                account: None,
                region: "us-east-1".into(),
            },
            pinned_id: None,
            desired_name: desired.into(),
            recorded_id: None,
            recorded_name: None,
            observed: None,
        }
    }

    fn recording(mut c: Claimant, id: &str, name: &str) -> Claimant {
        c.recorded_id = Some(id.into());
        c.recorded_name = Some(name.into());
        c
    }

    #[test]
    fn the_resource_that_records_the_store_holds_it_even_if_younger() {
        let holder = recording(
            claimant("default", "payments", 200, "payments"),
            "cks-1",
            "payments",
        );
        let older = claimant("team-b", "payments-copy", 100, "payments");
        let claimed = yields_to(&older, [&holder]).expect("the older one yields");
        assert_eq!(claimed.holder, "default/payments");
        assert_eq!(claimed.store, StoreRef::Name("payments".into()));
        assert!(
            claimed.message().contains("default/payments"),
            "{}",
            claimed.message()
        );
        assert_eq!(yields_to(&holder, [&older]), None);
    }

    #[test]
    fn without_records_the_oldest_holds_and_ties_go_to_namespace_then_name() {
        let a = claimant("team-a", "p", 100, "payments");
        let b = claimant("team-b", "p", 200, "payments");
        assert_eq!(yields_to(&a, [&b]), None);
        assert_eq!(
            yields_to(&b, [&a]).map(|c| c.holder),
            Some("team-a/p".into())
        );
        let same_second = claimant("team-0", "p", 100, "payments");
        assert_eq!(
            yields_to(&a, [&same_second]).map(|c| c.holder),
            Some("team-0/p".into())
        );
    }

    #[test]
    fn a_pinned_id_yields_to_the_resource_that_records_it() {
        let holder = recording(
            claimant("default", "payments", 200, "payments"),
            "cks-1",
            "payments",
        );
        let mut pinning = claimant("team-b", "grab", 100, "other-name");
        pinning.pinned_id = Some("cks-1".into());
        assert_eq!(
            yields_to(&pinning, [&holder]).map(|c| (c.holder, c.store)),
            Some(("default/payments".into(), StoreRef::Id("cks-1".into())))
        );
    }

    #[test]
    fn a_store_found_by_name_is_checked_against_its_id() {
        // The holder's status still names the store by its old name: the
        // other resource finds it under the new one, then sees the id.
        let holder = recording(
            claimant("default", "payments", 200, "payments"),
            "cks-1",
            "old",
        );
        let other = claimant("team-b", "x", 100, "renamed-in-console");
        assert_eq!(yields_to(&other, [&holder]), None);
        let found = other.having_observed("cks-1", "renamed-in-console");
        assert_eq!(
            yields_to(&found, [&holder]).map(|c| c.holder),
            Some("default/payments".into())
        );
    }

    #[test]
    fn other_regions_and_accounts_do_not_conflict() {
        let a = claimant("a", "p", 100, "payments");
        let mut b = claimant("b", "p", 200, "payments");
        b.scope.region = "eu-west-1".into();
        assert_eq!(yields_to(&b, [&a]), None);
        b.scope.region = "us-east-1".into();
        b.scope.account = Some("222233334444".into());
        assert_eq!(yields_to(&b, [&a]), None);
    }

    #[test]
    fn a_rename_into_a_held_name_yields_without_taking_the_other_store() {
        // `renamer` manages cks-2 and wants the name cks-1 carries: it must
        // not outrank the holder of cks-1 just because it is older.
        let holder = recording(
            claimant("a", "holder", 200, "payments"),
            "cks-1",
            "payments",
        );
        let renamer = recording(claimant("b", "renamer", 100, "payments"), "cks-2", "ledger");
        assert_eq!(yields_to(&holder, [&renamer]), None);
        assert_eq!(
            yields_to(&renamer, [&holder]).map(|c| c.holder),
            Some("a/holder".into())
        );
    }

    fn arb_claimant(index: usize) -> impl Strategy<Value = Claimant> {
        let ids = prop::option::of(prop::sample::select(vec!["cks-1", "cks-2", "cks-3"]));
        let names = prop::sample::select(vec!["a", "b", "c"]);
        (
            0i64..4,
            names.clone(),
            ids.clone(),
            ids,
            prop::option::of(names),
            prop::bool::ANY,
            prop::sample::select(vec!["us-east-1", "eu-west-1"]),
        )
            .prop_map(
                move |(created, desired, pinned, recorded, recorded_name, has_time, region)| {
                    let mut c = claimant(
                        &format!("ns-{}", index % 2),
                        &format!("r{index}"),
                        created,
                        desired,
                    );
                    if !has_time {
                        c.created = None;
                    }
                    c.scope.region = region.into();
                    c.pinned_id = pinned.map(str::to_string);
                    c.recorded_name = recorded.and(recorded_name).map(str::to_string);
                    c.recorded_id = recorded.map(str::to_string);
                    c
                },
            )
    }

    fn arb_fleet() -> impl Strategy<Value = Vec<Claimant>> {
        (1usize..7).prop_flat_map(|n| (0..n).map(arb_claimant).collect::<Vec<_>>())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(3000))]

        /// Whatever the statuses say (after a crash at any write, a lost
        /// status, a stale cache), no two resources that act name a common
        /// store in one scope.
        #[test]
        fn at_most_one_resource_acts_on_a_store(fleet in arb_fleet()) {
            let acting: Vec<&Claimant> = fleet
                .iter()
                .filter(|c| yields_to(c, fleet.iter()).is_none())
                .collect();
            for (i, a) in acting.iter().enumerate() {
                for b in &acting[i + 1..] {
                    if a.scope != b.scope {
                        continue;
                    }
                    let shared: Vec<_> = a.refs().into_iter().filter(|r| b.refs().contains(r)).collect();
                    prop_assert!(shared.is_empty(), "{} and {} both act on {:?}", a.key(), b.key(), shared);
                }
            }
        }

        /// The answer depends on the facts, not on the order the cache
        /// lists them in: every replica computes the same holder.
        #[test]
        fn the_holder_does_not_depend_on_cache_order(fleet in arb_fleet()) {
            let mut reversed = fleet.clone();
            reversed.reverse();
            for c in &fleet {
                prop_assert_eq!(yields_to(c, fleet.iter()), yields_to(c, reversed.iter()));
            }
        }

        /// Resources that only name a store (nothing recorded yet): exactly
        /// one of those naming it acts, and when it goes away (deleted with
        /// Retain) exactly one of the rest takes over.
        #[test]
        fn each_named_store_has_exactly_one_actor_and_a_successor(
            names in prop::collection::vec(prop::sample::select(vec!["a", "b"]), 1..6),
            times in prop::collection::vec(0i64..3, 6),
        ) {
            let fleet: Vec<Claimant> = names
                .iter()
                .enumerate()
                .map(|(i, n)| claimant(&format!("ns-{i}"), "r", times[i], n))
                .collect();
            for name in ["a", "b"] {
                let acting = |fleet: &[Claimant]| -> Vec<String> {
                    fleet
                        .iter()
                        .filter(|c| c.desired_name == name && yields_to(c, fleet.iter()).is_none())
                        .map(Claimant::key)
                        .collect()
                };
                let naming = fleet.iter().filter(|c| c.desired_name == name).count();
                let actors = acting(&fleet);
                prop_assert_eq!(actors.len(), naming.min(1));
                if let Some(holder) = actors.first() {
                    let rest: Vec<Claimant> = fleet.iter().filter(|c| &c.key() != holder).cloned().collect();
                    prop_assert_eq!(acting(&rest).len(), (naming - 1).min(1));
                }
            }
        }
    }
}
