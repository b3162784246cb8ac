//! The retry policy: the one place that decides, from a failure's class and
//! the attempts so far, whether the operator tries again by itself and
//! after how long. The engine asks it for every failed step and every
//! failed observation, the controller for every Kubernetes API error.
//!
//! The KMS clients send each call once (no SDK retries): a retry inside a
//! call would hold a reconcile worker while it waits, and an account that
//! KMS throttles would then starve every other account's stores.

use crate::error::Class;
use std::time::Duration;

#[derive(Clone, Debug, PartialEq)]
pub struct RetryPolicy {
    /// The first retry comes after about this long; each one doubles it.
    pub base: Duration,
    /// The longest wait between two attempts.
    pub cap: Duration,
    /// The longest wait while the store is disconnected although declared
    /// Connected: every minute down leaves all its KMS keys unusable, and
    /// one more KMS call per half minute costs little.
    pub cap_while_down: Duration,
    /// A transient failure of the health check or Connect after the proxy
    /// location was updated is retried this many times, then rolled back
    /// to the previous location (when rollback applies).
    pub attempts_before_rollback: u32,
    /// `spec.keyStoreId` not found is retried this many times before it
    /// stalls: a store just created may not be listed yet.
    pub attempts_for_a_missing_pinned_store: u32,
    /// A change rolled back after failures that can pass is tried again
    /// after about this long, doubling with each rollback in a row (capped
    /// at `cap`): each try disconnects the store again, so not soon.
    pub after_rollback: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            base: Duration::from_secs(1),
            cap: Duration::from_secs(300),
            cap_while_down: Duration::from_secs(30),
            attempts_before_rollback: 3,
            attempts_for_a_missing_pinned_store: 6,
            after_rollback: Duration::from_secs(30),
        }
    }
}

/// What the caller knows about the failure besides its class.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Situation {
    /// The store is declared Connected and is not CONNECTED now.
    pub store_down: bool,
    /// A rollback to the previous proxy location is possible.
    pub rollback_available: bool,
    /// The failure is a pinned `spec.keyStoreId` that KMS does not list.
    pub pinned_store_missing: bool,
}

/// The policy's answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Try the same thing again after this long.
    RetryAfter(Duration),
    /// Stop retrying: roll back where that applies, else stall for a person.
    GiveUp,
}

impl RetryPolicy {
    /// The default policy with other waits: first retry after about `base`,
    /// never more than `cap` apart (tests, file mode, benchmarks).
    pub fn scaled(base: Duration, cap: Duration) -> Self {
        Self {
            base,
            cap,
            cap_while_down: cap,
            after_rollback: base,
            ..Self::default()
        }
    }

    /// `attempts`: how many times it has failed so far, this one included.
    pub fn decide(&self, class: Class, attempts: u32, situation: Situation) -> Verdict {
        let attempts = attempts.max(1);
        if situation.pinned_store_missing {
            return if attempts < self.attempts_for_a_missing_pinned_store {
                Verdict::RetryAfter(self.delay(attempts, situation.store_down))
            } else {
                Verdict::GiveUp
            };
        }
        match class {
            Class::NeedsPerson => Verdict::GiveUp,
            Class::Transient
                if situation.rollback_available && attempts >= self.attempts_before_rollback =>
            {
                Verdict::GiveUp
            }
            Class::Transient => Verdict::RetryAfter(self.delay(attempts, situation.store_down)),
        }
    }

    /// The wait before a change rolled back `rollbacks` times in a row (for
    /// causes that can pass) is tried again.
    pub fn delay_after_rollback(&self, rollbacks: u32) -> Duration {
        let exp = rollbacks.saturating_sub(1).min(20);
        let full = self.after_rollback.saturating_mul(1 << exp).min(self.cap);
        full.mul_f64(rand::random_range(0.5..=1.0))
    }

    /// Exponential backoff with jitter: between half and all of
    /// `base × 2^(attempts-1)`, capped, so that resources that failed
    /// together do not retry together.
    pub fn delay(&self, attempts: u32, store_down: bool) -> Duration {
        let cap = if store_down {
            self.cap_while_down.min(self.cap)
        } else {
            self.cap
        };
        let exp = attempts.saturating_sub(1).min(20);
        let full = self.base.saturating_mul(1 << exp).min(cap);
        full.mul_f64(rand::random_range(0.5..=1.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_person_is_needed_at_once_and_a_transient_failure_is_retried_indefinitely() {
        let p = RetryPolicy::default();
        assert_eq!(
            p.decide(Class::NeedsPerson, 1, Situation::default()),
            Verdict::GiveUp
        );
        for attempts in [1, 10, 1000] {
            assert!(matches!(
                p.decide(Class::Transient, attempts, Situation::default()),
                Verdict::RetryAfter(_)
            ));
        }
    }

    #[test]
    fn a_transient_failure_after_the_update_rolls_back_after_a_few_attempts() {
        let p = RetryPolicy::default();
        let s = Situation {
            rollback_available: true,
            store_down: true,
            ..Situation::default()
        };
        assert!(matches!(
            p.decide(Class::Transient, 1, s),
            Verdict::RetryAfter(_)
        ));
        assert_eq!(
            p.decide(Class::Transient, p.attempts_before_rollback, s),
            Verdict::GiveUp
        );
    }

    #[test]
    fn a_missing_pinned_store_is_retried_for_a_while_then_stalls() {
        let p = RetryPolicy::default();
        let s = Situation {
            pinned_store_missing: true,
            ..Situation::default()
        };
        assert!(matches!(
            p.decide(Class::NeedsPerson, 1, s),
            Verdict::RetryAfter(_)
        ));
        assert_eq!(
            p.decide(Class::NeedsPerson, p.attempts_for_a_missing_pinned_store, s),
            Verdict::GiveUp
        );
    }

    proptest! {
        /// The first retry comes within seconds; no wait ever exceeds the
        /// cap, nor 30 s while the store is down; waits grow with attempts.
        #[test]
        fn delays_are_bounded_and_grow(attempts in 1u32..200, down in any::<bool>()) {
            let p = RetryPolicy::default();
            let d = p.delay(attempts, down);
            prop_assert!(d <= p.cap);
            if down {
                prop_assert!(d <= p.cap_while_down);
            }
            if attempts == 1 {
                prop_assert!(d <= p.base && d >= p.base / 2);
            }
            let ceiling = p.base.saturating_mul(1 << (attempts - 1).min(20));
            prop_assert!(d <= ceiling);
        }
    }
}
