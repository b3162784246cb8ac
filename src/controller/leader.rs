//! Leader election on a Lease (kube-lease-manager): only the holder runs
//! the controller. Losing the Lease stops reconciling; the process then
//! exits so Kubernetes restarts it as a follower, which is simpler and
//! safer than trying to resume in place.

use anyhow::{Context as _, bail};
use futures::FutureExt;
use futures::channel::oneshot;
use kube::Client;
use kube_lease_manager::LeaseManagerBuilder;
use std::future::Future;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Held while this process is the leader.
pub struct Leadership {
    lost: Option<oneshot::Receiver<()>>,
    release: oneshot::Sender<()>,
    task: JoinHandle<bool>,
}

/// Who this replica is in the Lease: the pod name when the Downward API
/// provides it, else a random id.
pub fn identity() -> String {
    std::env::var("POD_NAME")
        .ok()
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| format!("xks-operator-{}", uuid::Uuid::new_v4()))
}

/// Which Lease, and how long a holder keeps it without renewing.
#[derive(Clone, Debug)]
pub struct LeaseConfig {
    pub name: String,
    pub namespace: String,
    pub identity: String,
    /// Seconds a lock lasts after its last renewal.
    pub duration: u64,
    /// The holder renews this many seconds before expiry.
    pub grace: u64,
}

impl LeaseConfig {
    pub fn new(name: impl Into<String>, namespace: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            namespace: namespace.into(),
            identity: identity(),
            duration: 15,
            grace: 5,
        }
    }
}

/// Wait until this process holds the Lease.
pub async fn acquire(client: Client, config: LeaseConfig) -> anyhow::Result<Leadership> {
    let LeaseConfig {
        name,
        namespace,
        identity,
        duration,
        grace,
    } = config;
    let name = name.as_str();
    let duration = duration.max(2);
    let manager = LeaseManagerBuilder::new(client, name)
        .with_namespace(namespace.as_str())
        .with_identity(identity.clone())
        // Grace first: each setter checks grace < duration against the
        // other's current value (default duration 30 s).
        .with_grace(grace.min(duration.saturating_sub(1)))
        .with_duration(duration)
        .build()
        .await
        .with_context(|| format!("preparing the leader-election Lease {namespace}/{name}"))?;
    let (mut state, manager_task) = manager.watch().await;
    tracing::info!(lease = name, %namespace, %identity, "waiting to become the leader");
    while !*state.borrow_and_update() {
        if state.changed().await.is_err() {
            bail!("the leader-election task stopped before this replica became the leader");
        }
    }
    tracing::info!(lease = name, %identity, "became the leader");

    let (lost_tx, lost_rx) = oneshot::channel();
    let (release_tx, release_rx) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let lost = tokio::select! {
            lost = wait_for_loss(&mut state) => lost,
            _ = release_rx => false,
        };
        if lost {
            let _ = lost_tx.send(());
        }
        // Closing the channel makes the manager release the Lease and stop.
        drop(state);
        if let Ok(Err(e)) = manager_task.await {
            tracing::warn!(error = %e, "releasing the leader-election Lease failed");
        }
        lost
    });
    Ok(Leadership {
        lost: Some(lost_rx),
        release: release_tx,
        task,
    })
}

async fn wait_for_loss(state: &mut watch::Receiver<bool>) -> bool {
    loop {
        if state.changed().await.is_err() {
            tracing::error!("the leader-election task stopped: no longer sure to be the leader");
            return true;
        }
        if !*state.borrow_and_update() {
            tracing::error!("lost the leader-election Lease");
            return true;
        }
    }
}

impl Leadership {
    /// Resolves when the Lease is lost (once; later calls never resolve).
    pub fn lost(&mut self) -> impl Future<Output = ()> + Send + Sync + 'static {
        match self.lost.take() {
            Some(rx) => async move {
                // A dropped sender means released, not lost.
                if rx.await.is_err() {
                    futures::future::pending::<()>().await;
                }
            }
            .left_future(),
            None => futures::future::pending().right_future(),
        }
    }

    /// Give the Lease up; returns whether it had been lost before.
    pub async fn release(self) -> bool {
        let _ = self.release.send(());
        self.task.await.unwrap_or(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{Request, Response, StatusCode};
    use http_body_util::BodyExt;
    use kube::client::Body;
    use serde_json::{Value, json};
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    const LEASE_PATH: &str =
        "/apis/coordination.k8s.io/v1/namespaces/ops/leases/xks-operator-leader";

    /// A Lease endpoint: get, create, and patches merged into the spec
    /// (null removes a field), which is all the lease manager uses.
    fn lease_server(lease: Arc<Mutex<Option<Value>>>) -> (Client, tokio::task::JoinHandle<()>) {
        let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let task = tokio::spawn(async move {
            while let Some((request, respond)) = handle.next_request().await {
                let (parts, body) = request.into_parts();
                let bytes = body
                    .collect()
                    .await
                    .map(|b| b.to_bytes())
                    .unwrap_or_default();
                let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
                let (status, reply) = {
                    let mut lease = lease.lock().unwrap();
                    match (parts.method.as_str(), parts.uri.path()) {
                        ("GET", LEASE_PATH) => match lease.as_ref() {
                            Some(l) => (StatusCode::OK, l.clone()),
                            None => (
                                StatusCode::NOT_FOUND,
                                json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404, "message": "not found"}),
                            ),
                        },
                        ("POST", "/apis/coordination.k8s.io/v1/namespaces/ops/leases") => {
                            let mut created = body.clone();
                            created["metadata"]["resourceVersion"] = "1".into();
                            *lease = Some(created.clone());
                            (StatusCode::CREATED, created)
                        }
                        ("PATCH", LEASE_PATH) => {
                            let current = lease.get_or_insert_with(|| json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": {"name": "xks-operator-leader", "namespace": "ops"}, "spec": {}}));
                            if let Some(spec) = body["spec"].as_object() {
                                for (k, v) in spec {
                                    if v.is_null() {
                                        if let Some(s) = current["spec"].as_object_mut() {
                                            s.remove(k);
                                        }
                                    } else {
                                        current["spec"][k] = v.clone();
                                    }
                                }
                            }
                            (StatusCode::OK, current.clone())
                        }
                        _ => (
                            StatusCode::NOT_FOUND,
                            json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404, "message": "no route"}),
                        ),
                    }
                };
                respond.send_response(
                    Response::builder()
                        .status(status)
                        .header(http::header::CONTENT_TYPE, "application/json")
                        .body(Body::from(serde_json::to_vec(&reply).unwrap()))
                        .unwrap(),
                );
            }
        });
        (Client::new(service, "ops"), task)
    }

    fn config() -> LeaseConfig {
        LeaseConfig {
            name: "xks-operator-leader".into(),
            namespace: "ops".into(),
            identity: "pod-a".into(),
            duration: 2,
            grace: 1,
        }
    }

    fn holder(lease: &Arc<Mutex<Option<Value>>>) -> Value {
        lease
            .lock()
            .unwrap()
            .as_ref()
            .map_or(Value::Null, |l| l["spec"]["holderIdentity"].clone())
    }

    #[tokio::test]
    async fn takes_a_free_lease_and_gives_it_back_on_release() {
        let lease = Arc::new(Mutex::new(None));
        let (client, task) = lease_server(lease.clone());
        let leadership = tokio::time::timeout(Duration::from_secs(10), acquire(client, config()))
            .await
            .expect("acquired in time")
            .expect("acquired");
        assert_eq!(holder(&lease), "pod-a");
        assert!(!leadership.release().await, "released, not lost");
        assert_eq!(holder(&lease), Value::Null);
        task.abort();
    }

    #[tokio::test]
    async fn notices_when_another_replica_takes_the_lease() {
        let lease = Arc::new(Mutex::new(None));
        let (client, task) = lease_server(lease.clone());
        let mut leadership =
            tokio::time::timeout(Duration::from_secs(10), acquire(client, config()))
                .await
                .expect("acquired in time")
                .expect("acquired");
        let lost = leadership.lost();
        // Another replica holds it now, freshly renewed for a long time.
        {
            let mut l = lease.lock().unwrap();
            let spec = &mut l.as_mut().expect("lease")["spec"];
            spec["holderIdentity"] = "pod-b".into();
            spec["renewTime"] = jiff::Timestamp::now().to_string().into();
            spec["leaseDurationSeconds"] = 3600.into();
        }
        tokio::time::timeout(Duration::from_secs(10), lost)
            .await
            .expect("the loss is noticed within a lease duration");
        assert!(leadership.release().await, "reported as lost");
        task.abort();
    }
}
