//! `/health`, `/ready` and `/metrics` on `--listen-addr`.

use super::metrics::Metrics;
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// What `/ready` answers.
#[derive(Clone, Default)]
pub struct Readiness {
    /// The ExternalKeyStore watcher has listed everything once.
    synced: Arc<AtomicBool>,
    /// Waiting for the leader-election Lease: a healthy follower, ready so
    /// that rolling updates of several replicas can proceed.
    standby: Arc<AtomicBool>,
}

impl Readiness {
    pub fn set_synced(&self, synced: bool) {
        self.synced.store(synced, Ordering::Release);
    }
    pub fn set_standby(&self, standby: bool) {
        self.standby.store(standby, Ordering::Release);
    }
    pub fn is_ready(&self) -> bool {
        self.synced.load(Ordering::Acquire) || self.standby.load(Ordering::Acquire)
    }
}

#[derive(Clone)]
struct AppState {
    readiness: Readiness,
    metrics: Arc<Metrics>,
}

pub fn router(readiness: Readiness, metrics: Arc<Metrics>) -> Router {
    Router::new()
        .route("/health", get(|| async { "ok\n" }))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics_text))
        .with_state(AppState { readiness, metrics })
}

async fn ready(State(state): State<AppState>) -> (StatusCode, &'static str) {
    if state.readiness.is_ready() {
        (StatusCode::OK, "ready\n")
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: the ExternalKeyStore watcher has not synced yet (see the logs)\n",
        )
    }
}

async fn metrics_text(State(state): State<AppState>) -> Response {
    match state.metrics.render() {
        Ok(text) => (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

/// Serve until `shutdown` resolves.
pub async fn serve(
    addr: SocketAddr,
    readiness: Readiness,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(%addr, "serving /health, /ready and /metrics");
    axum::serve(listener, router(readiness, metrics))
        .with_graceful_shutdown(shutdown)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn health_ready_and_metrics_answer() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let readiness = Readiness::default();
        let metrics = Arc::new(Metrics::new());
        metrics.reconcile_started();
        let app = router(readiness.clone(), metrics);
        let server = tokio::spawn(async move { axum::serve(listener, app).await });
        let http = reqwest::Client::new();
        let get = |path: &str| {
            let req = http.get(format!("http://{addr}{path}"));
            async move { req.send().await.expect("answer") }
        };

        assert_eq!(get("/health").await.status(), 200);
        assert_eq!(get("/ready").await.status(), 503);
        readiness.set_standby(true);
        assert_eq!(get("/ready").await.status(), 200);
        readiness.set_standby(false);
        readiness.set_synced(true);
        assert_eq!(get("/ready").await.status(), 200);
        let text = get("/metrics").await.text().await.expect("body");
        assert!(text.contains("xks_operator_reconciles_total 1"), "{text}");
        server.abort();
    }
}
