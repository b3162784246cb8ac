//! The emulator as a child process (`xks-operator emulator`, this same
//! binary) beside the benchmarked operator: the operator's CPU time and
//! memory are then this process's own, and the emulator is driven through
//! its documented control API (`/_emulator/`), as a user would drive it.

use anyhow::{Context, bail};
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};
use xks_emulator::EmulatorConfig;
use xks_emulator::faults::{OperationFaults, OperationStats};
use xks_emulator::xks_proxy::{KeyManagerHealth, ProxyConfig, ProxyCredentialConfig};

const BANNER: &str = "KMS emulator listening on ";

pub struct EmulatorProcess {
    child: tokio::process::Child,
    pid: u32,
    endpoint: String,
    http: reqwest::Client,
    hosts: Vec<String>,
}

/// Writes the config for the child to read; it holds proxy secrets, so it
/// is readable by this user only and removed once the child has read it.
fn config_file(config: &EmulatorConfig) -> anyhow::Result<std::path::PathBuf> {
    static N: AtomicU64 = AtomicU64::new(0);
    let path = std::env::temp_dir().join(format!(
        "xks-operator-bench-{}-{}.yaml",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options
        .open(&path)
        .with_context(|| format!("writing {}", path.display()))?;
    file.write_all(serde_yaml::to_string(config)?.as_bytes())?;
    Ok(path)
}

impl EmulatorProcess {
    /// Starts `xks-operator emulator --listen 127.0.0.1:0 --config FILE`
    /// and waits for its banner, which names the port it got.
    pub async fn spawn(config: &EmulatorConfig) -> anyhow::Result<Self> {
        let path = config_file(config)?;
        // Its complaints (a bad config) go to a file: a pipe nobody reads
        // would block it once full.
        let errors = path.with_extension("stderr");
        let exe = std::env::current_exe().context("finding this binary")?;
        let spawned = tokio::process::Command::new(exe)
            .arg("emulator")
            .args(["--listen", "127.0.0.1:0", "--config"])
            .arg(&path)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&errors).map_or_else(|_| Stdio::null(), Stdio::from))
            .kill_on_drop(true)
            .spawn();
        let banner = match spawned {
            Ok(mut child) => {
                let line = read_banner(&mut child).await;
                line.map(|endpoint| (child, endpoint))
            }
            Err(e) => Err(e).context("starting `xks-operator emulator`"),
        };
        let said = std::fs::read_to_string(&errors).unwrap_or_default();
        let _ = std::fs::remove_file(&path);
        let _ = std::fs::remove_file(&errors);
        let banner = banner.with_context(|| format!("the emulator said: {}", said.trim()));
        let (child, endpoint) = banner?;
        let pid = child.id().context("the emulator exited at once")?;
        Ok(Self {
            child,
            pid,
            endpoint,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()?,
            hosts: config.proxies.iter().map(|p| p.host.clone()).collect(),
        })
    }

    pub fn kms_endpoint(&self) -> String {
        self.endpoint.clone()
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Every proxy of the config is served by the emulator's own listener.
    pub fn proxy_resolve_map(&self) -> HashMap<String, String> {
        self.hosts
            .iter()
            .map(|h| (h.to_ascii_lowercase(), self.endpoint.clone()))
            .collect()
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<Value> {
        let url = format!("{}/_emulator/{path}", self.endpoint);
        let mut request = self.http.request(method.clone(), &url);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request
            .send()
            .await
            .with_context(|| format!("{method} {url}"))?;
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        if !status.is_success() {
            bail!("{method} {url}: {status}: {text}");
        }
        Ok(serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// KMS requests by operation since the last reset.
    pub async fn operation_stats(&self) -> anyhow::Result<BTreeMap<String, OperationStats>> {
        let stats = self.call(reqwest::Method::GET, "stats", None).await?;
        serde_json::from_value(stats["operations"].clone()).context("reading /_emulator/stats")
    }

    /// KMS requests by operation of one account and Region.
    pub async fn operation_stats_in(
        &self,
        account: &str,
        region: &str,
    ) -> anyhow::Result<BTreeMap<String, OperationStats>> {
        let path = format!("stats?account={account}&region={region}");
        let stats = self.call(reqwest::Method::GET, &path, None).await?;
        serde_json::from_value(stats["operations"].clone()).context("reading /_emulator/stats")
    }

    /// Sets the faults of one operation (or `*`) in one account and Region.
    pub async fn set_operation_faults_in(
        &self,
        account: &str,
        region: &str,
        operation: &str,
        faults: Option<OperationFaults>,
    ) -> anyhow::Result<()> {
        self.put_faults(
            &format!("faults/{operation}?account={account}&region={region}"),
            faults,
        )
        .await
    }

    pub async fn reset_stats(&self) -> anyhow::Result<()> {
        self.call(reqwest::Method::POST, "stats/reset", None)
            .await
            .map(drop)
    }

    /// Sets (or with `None` clears) the faults of one operation or `*`.
    pub async fn set_operation_faults(
        &self,
        operation: &str,
        faults: Option<OperationFaults>,
    ) -> anyhow::Result<()> {
        self.put_faults(&format!("faults/{operation}"), faults)
            .await
    }

    /// PUT (or with `None` DELETE) the faults at `path`.
    async fn put_faults(&self, path: &str, faults: Option<OperationFaults>) -> anyhow::Result<()> {
        match faults {
            Some(f) => {
                self.call(reqwest::Method::PUT, path, Some(serde_json::to_value(f)?))
                    .await
            }
            None => self.call(reqwest::Method::DELETE, path, None).await,
        }
        .map(drop)
    }

    /// Time a store spends CONNECTING and DISCONNECTING from now on.
    pub async fn set_transition_delays(&self, delay: Duration) -> anyhow::Result<()> {
        let ms = delay.as_millis() as u64;
        self.call(
            reqwest::Method::PUT,
            "settings",
            Some(json!({"connectDelayMs": ms, "disconnectDelayMs": ms})),
        )
        .await
        .map(drop)
    }

    /// Stores, keys, proxies and settings as the emulator holds them.
    pub async fn state(&self) -> anyhow::Result<Value> {
        self.call(reqwest::Method::GET, "state", None).await
    }

    pub async fn add_credential(
        &self,
        host: &str,
        credential: &ProxyCredentialConfig,
    ) -> anyhow::Result<()> {
        let body = serde_json::to_value(credential)?;
        self.call(
            reqwest::Method::POST,
            &format!("proxies/{host}/credentials"),
            Some(body),
        )
        .await
        .map(drop)
    }

    pub async fn set_key_manager_health(
        &self,
        host: &str,
        key_manager: &str,
        health: KeyManagerHealth,
    ) -> anyhow::Result<()> {
        self.call(
            reqwest::Method::PUT,
            &format!("proxies/{host}/key-managers/{key_manager}"),
            Some(json!({"health": health.as_str()})),
        )
        .await
        .map(drop)
    }

    /// Adds or replaces a proxy (its credentials included).
    pub async fn upsert_proxy(&self, proxy: &ProxyConfig) -> anyhow::Result<()> {
        let body = serde_json::to_value(proxy)?;
        self.call(
            reqwest::Method::PUT,
            &format!("proxies/{}", proxy.host),
            Some(body),
        )
        .await
        .map(drop)
    }

    pub async fn stop(mut self) {
        let _ = self.child.kill().await;
    }
}

async fn read_banner(child: &mut tokio::process::Child) -> anyhow::Result<String> {
    let stdout = child.stdout.take().context("the emulator's stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let first = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
        .await
        .context("the emulator printed no banner within 30 s")?
        .context("reading the emulator's banner")?;
    let Some(line) = first else {
        bail!("the emulator exited before printing its banner (a bad config?)");
    };
    let Some(endpoint) = line.strip_prefix(BANNER) else {
        bail!("unexpected first line from the emulator: {line:?}");
    };
    // The rest of its output (one line per proxy) is not needed; the
    // emulator ignores a closed stdout.
    Ok(endpoint.trim().to_string())
}
