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

/// Wait until this process holds the Lease `name` in `namespace`.
pub async fn acquire(client: Client, name: &str, namespace: &str) -> anyhow::Result<Leadership> {
    let identity = identity();
    let manager = LeaseManagerBuilder::new(client, name)
        .with_namespace(namespace)
        .with_identity(identity.clone())
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
