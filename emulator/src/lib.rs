//! KMS custom-key-store emulator, STS and XKS proxy emulator.
//!
//! One listener serves four things: requests whose Host header names an
//! emulated proxy go to the XKS proxy fleet; `/_emulator/...` is the control
//! API; STS query-protocol requests (a form body, or a SigV4 scope of
//! service `sts`) go to STS; everything else is the KMS JSON 1.1 API
//! (`POST /`), kept per account (from the credentials) and Region (from
//! the SigV4 scope). The KMS side is written from the contract alone and
//! shares no code with the operator. See docs/emulator.md.

pub mod auth;
pub mod config;
pub mod control;
pub mod faults;
pub mod iam;
pub mod kms;
pub mod proxy_client;
pub mod sts;
pub mod xks_proxy;

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::http::{HeaderMap, Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use auth::RequestAuth;
pub use config::{EmulatorConfig, IdentityConfig, RoleConfig, VpcEndpointServiceConfig};
pub use control::{AccountControl, EmulatorControl};
use kms::accounts::KmsAccounts;
use kms::error::KmsError;
use proxy_client::ProxyCaller;
use sts::{AuthFailure, StsService};
use xks_proxy::ProxyFleet;

/// Largest KMS or STS request body accepted.
const MAX_KMS_BODY: usize = 1024 * 1024;

/// A running emulator; stop it with [`RunningEmulator::shutdown`].
pub struct RunningEmulator {
    addr: SocketAddr,
    control: Arc<EmulatorControl>,
    stop: oneshot::Sender<()>,
    server: JoinHandle<()>,
}

impl RunningEmulator {
    /// `http://127.0.0.1:PORT`, for `endpoint_url` of aws-sdk-kms.
    pub fn kms_endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The same listener, for `endpoint_url` of aws-sdk-sts.
    pub fn sts_endpoint(&self) -> String {
        self.kms_endpoint()
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Proxy host → base URL, so a client of the operator's own (its
    /// proxy probe) reaches the same proxies KMS reaches.
    pub fn proxy_resolve_map(&self) -> HashMap<String, String> {
        self.control.resolve_map().into_iter().collect()
    }

    pub fn fleet(&self) -> &ProxyFleet {
        self.control.fleet()
    }

    pub fn control(&self) -> &EmulatorControl {
        &self.control
    }

    pub async fn shutdown(self) {
        let _ = self.stop.send(());
        let _ = self.server.await;
    }
}

/// Configured resolve entries, plus the emulator's own listener for every
/// configured proxy that has none.
fn initial_resolve(config: &EmulatorConfig, self_url: &str) -> BTreeMap<String, String> {
    let mut resolve: BTreeMap<String, String> = config
        .resolve
        .iter()
        .map(|(h, u)| (h.to_ascii_lowercase(), u.clone()))
        .collect();
    for proxy in &config.proxies {
        resolve
            .entry(proxy.host.to_ascii_lowercase())
            .or_insert_with(|| self_url.to_string());
    }
    resolve
}

/// Start serving on `listen` (`127.0.0.1:0` picks a free port).
pub async fn start(config: EmulatorConfig, listen: SocketAddr) -> anyhow::Result<RunningEmulator> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding {listen}"))?;
    let addr = listener.local_addr()?;
    let self_url = format!("http://{addr}");
    config.validate().map_err(|e| anyhow::anyhow!(e))?;
    let fleet = ProxyFleet::new(config.proxies.clone())
        .map_err(|e| anyhow::anyhow!("invalid proxy configuration: {e}"))?;
    let resolve = initial_resolve(&config, &self_url);
    let caller = ProxyCaller::new(
        resolve.clone().into_iter().collect(),
        Duration::from_millis(config.proxy_timeout_ms),
    );
    let kms = Arc::new(KmsAccounts::new(&config, caller));
    let sts = Arc::new(StsService::new(&config));
    let control = Arc::new(EmulatorControl::new(
        kms, sts, fleet, resolve, self_url, config,
    ));
    // Proxy hosts first (whatever the path), then control, then STS or KMS.
    let app = Router::new()
        .nest("/_emulator", control::router())
        .fallback(serve_aws)
        .layer(axum::middleware::from_fn_with_state(
            Arc::clone(&control),
            serve_proxies,
        ))
        .with_state(Arc::clone(&control));
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        let shutdown = async {
            let _ = stopped.await;
        };
        if let Err(error) = axum::serve(listener, app)
            .with_graceful_shutdown(shutdown)
            .await
        {
            tracing::error!(%error, "emulator server stopped");
        }
    });
    tracing::info!(%addr, "KMS emulator listening");
    Ok(RunningEmulator {
        addr,
        control,
        stop,
        server,
    })
}

/// Requests whose Host header names an emulated proxy go to the fleet.
async fn serve_proxies(
    State(control): State<Arc<EmulatorControl>>,
    req: Request,
    next: Next,
) -> Response {
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_owned)
        .or_else(|| req.uri().authority().map(|a| a.to_string()));
    if host.is_some_and(|h| control.fleet().serves_host(&h)) {
        return control.fleet().handle(req).await;
    }
    next.run(req).await
}

/// Whether a request is for STS rather than KMS: KMS requests name a
/// `TrentService.*` target; STS requests are query-protocol forms (or, for
/// a GET, carry `Action` in the query) or are signed for service `sts`.
fn is_sts(method: &Method, headers: &HeaderMap, query: Option<&str>, auth: &RequestAuth) -> bool {
    if headers.contains_key("x-amz-target") {
        return false;
    }
    let form = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| {
            ct.trim_start()
                .to_ascii_lowercase()
                .starts_with("application/x-www-form-urlencoded")
        });
    let action_in_query = *method == Method::GET
        && query.is_some_and(|q| form_urlencoded::parse(q.as_bytes()).any(|(k, _)| k == "Action"));
    form || action_in_query || auth.service.as_deref() == Some("sts")
}

/// STS or KMS, on `/`.
async fn serve_aws(State(control): State<Arc<EmulatorControl>>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let auth = RequestAuth::from_request(&parts.headers, parts.uri.query());
    let at_root = parts.uri.path() == "/";
    if at_root && is_sts(&parts.method, &parts.headers, parts.uri.query(), &auth) {
        let Ok(body) = axum::body::to_bytes(body, MAX_KMS_BODY).await else {
            return (StatusCode::PAYLOAD_TOO_LARGE, "request body too large").into_response();
        };
        return control
            .sts()
            .handle(&parts.method, parts.uri.query(), &body, &auth)
            .await;
    }
    if parts.method != Method::POST || !at_root {
        return KmsError::new(
            "UnknownOperationException",
            "The KMS emulator answers POST / with an X-Amz-Target header.",
        )
        .into_response();
    }
    let body = match axum::body::to_bytes(body, MAX_KMS_BODY).await {
        Ok(b) => b,
        Err(_) => {
            return KmsError::new(
                "SerializationException",
                "The request body could not be read.",
            )
            .into_response();
        }
    };
    let kms = control.kms_accounts();
    let region = auth
        .region
        .clone()
        .unwrap_or_else(|| kms.default_region().to_string());
    match control.sts().identify(&auth) {
        Ok(caller) => {
            kms.get(&caller.account, &region)
                .handle(&parts.headers, body)
                .await
        }
        Err(failure) => {
            let error = match failure {
                AuthFailure::Expired { .. } => KmsError::expired_token(),
                AuthFailure::InvalidToken { .. } => KmsError::unrecognized_client(),
            };
            kms.get(failure.account(), &region)
                .reject(&parts.headers, error)
        }
    }
}

/// What `xks-operator emulator` runs: serve until Ctrl-C or SIGTERM.
pub async fn run_cli(listen: SocketAddr, config: Option<PathBuf>) -> anyhow::Result<()> {
    let config = match config {
        Some(path) => EmulatorConfig::from_yaml_file(&path)?,
        None => EmulatorConfig::default(),
    };
    // Handlers first, so a SIGTERM right after the banner stops us cleanly.
    let stop = stop_signal()?;
    let running = start(config, listen).await?;
    // A closed stdout (a supervisor that read the banner and went away)
    // must not stop the emulator: write errors are ignored.
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "KMS emulator listening on {}", running.kms_endpoint());
    for (host, url) in running.proxy_resolve_map() {
        let _ = writeln!(out, "  XKS proxy https://{host} -> {url}");
    }
    let _ = out.flush();
    drop(out);
    stop.await;
    running.shutdown().await;
    Ok(())
}

/// Resolves on Ctrl-C or (on Unix) SIGTERM; the handlers are installed now.
fn stop_signal() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    #[cfg(unix)]
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    let ctrl_c = tokio::signal::ctrl_c();
    Ok(async move {
        #[cfg(unix)]
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
        #[cfg(not(unix))]
        let _ = ctrl_c.await;
    })
}
