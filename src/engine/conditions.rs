//! kstatus conditions: `Ready`, `Reconciling`, `Stalled`.

use crate::api::{Condition, ConditionStatus, ExternalKeyStoreStatus};

pub const READY: &str = "Ready";
pub const RECONCILING: &str = "Reconciling";
pub const STALLED: &str = "Stalled";

/// The three conditions at once, so they never contradict each other.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Summary {
    /// KMS matches the resource.
    Ready,
    /// Work is under way (or waiting on KMS / a retry).
    Progressing,
    /// Nothing will change without a person acting.
    Stalled,
    /// Not ready, not progressing, not an error: observe-only drift,
    /// awaiting approval, suspended.
    Waiting,
}

pub fn set(
    status: &mut ExternalKeyStoreStatus,
    summary: Summary,
    reason: &str,
    message: &str,
    generation: Option<i64>,
    now: &str,
) {
    let (ready, reconciling, stalled) = match summary {
        Summary::Ready => (true, false, false),
        Summary::Progressing => (false, true, false),
        Summary::Stalled => (false, false, true),
        Summary::Waiting => (false, false, false),
    };
    upsert(status, READY, ready, reason, message, generation, now);
    upsert(
        status,
        RECONCILING,
        reconciling,
        reason,
        message,
        generation,
        now,
    );
    upsert(status, STALLED, stalled, reason, message, generation, now);
}

fn upsert(
    status: &mut ExternalKeyStoreStatus,
    type_: &str,
    value: bool,
    reason: &str,
    message: &str,
    generation: Option<i64>,
    now: &str,
) {
    let value = ConditionStatus::from_bool(value);
    let (reason, message) = if value == ConditionStatus::True || type_ == READY {
        (reason, message)
    } else {
        ("", "")
    };
    let reason = if reason.is_empty() { type_ } else { reason };
    match status.conditions.iter_mut().find(|c| c.type_ == type_) {
        Some(c) => {
            if c.status != value {
                c.last_transition_time = now.to_string();
            }
            c.status = value;
            c.reason = reason.to_string();
            c.message = message.to_string();
            c.observed_generation = generation;
        }
        None => status.conditions.push(Condition {
            type_: type_.to_string(),
            status: value,
            reason: reason.to_string(),
            message: message.to_string(),
            last_transition_time: now.to_string(),
            observed_generation: generation,
        }),
    }
}

pub fn get<'a>(status: &'a ExternalKeyStoreStatus, type_: &str) -> Option<&'a Condition> {
    status.conditions.iter().find(|c| c.type_ == type_)
}

pub fn is_true(status: &ExternalKeyStoreStatus, type_: &str) -> bool {
    get(status, type_).is_some_and(|c| c.is_true())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transition_time_moves_only_when_status_changes() {
        let mut s = ExternalKeyStoreStatus::default();
        set(&mut s, Summary::Progressing, "Running", "a", Some(1), "t1");
        set(&mut s, Summary::Progressing, "Running", "b", Some(1), "t2");
        let r = get(&s, RECONCILING).expect("set");
        assert_eq!(r.last_transition_time, "t1");
        assert_eq!(r.message, "b");
        set(&mut s, Summary::Ready, "Connected", "ok", Some(1), "t3");
        assert!(is_true(&s, READY));
        assert!(!is_true(&s, RECONCILING));
        assert_eq!(
            get(&s, RECONCILING).map(|c| c.last_transition_time.as_str()),
            Some("t3")
        );
        assert_eq!(s.conditions.len(), 3);
    }

    #[test]
    fn other_conditions_are_left_as_they_are() {
        // ProxyHealthy (the proxy health watch's) is not kstatus's: the
        // three are set around it, never over it.
        let proxy = Condition {
            type_: "ProxyHealthy".into(),
            status: ConditionStatus::False,
            reason: "Unreachable".into(),
            message: "the proxy did not answer in time".into(),
            last_transition_time: "t0".into(),
            observed_generation: None,
        };
        let mut s = ExternalKeyStoreStatus {
            conditions: vec![proxy.clone()],
            ..Default::default()
        };
        for summary in [
            Summary::Progressing,
            Summary::Ready,
            Summary::Stalled,
            Summary::Waiting,
        ] {
            set(&mut s, summary, "Why", "what", Some(2), "t1");
            assert_eq!(get(&s, "ProxyHealthy"), Some(&proxy));
            assert_eq!(s.conditions.len(), 4);
        }
    }
}
