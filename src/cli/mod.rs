//! The commands that work without a cluster: `plan`, `reconcile`, `demo`.

#[cfg(feature = "emulator")]
pub mod demo;
pub mod files;
pub mod table;

use crate::api::{ExternalKeyStore, ExternalKeyStoreStatus};
use crate::claims::{self, Claimant, Scope};
use crate::engine::{Engine, EngineOptions, Outcome, Request, StatusSink};
use crate::kms::KeyStores;
use crate::kms::aws::AwsKeyStores;
use crate::plan::{self, Decision, PlanInput};
use crate::xks::ProxyProbe;
use crate::xks::probe::{HttpProxyProbe, ProbeOptions};
use anyhow::{Context, bail};
use files::Manifests;
use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Where KMS and the proxies are, for the file-mode commands.
#[derive(clap::Args, Clone, Debug)]
pub struct Target {
    /// KMS endpoint URL (e.g. the emulator's http://127.0.0.1:4566). Default:
    /// the standard AWS configuration (AWS_ENDPOINT_URL_KMS, AWS_REGION, ...).
    #[arg(long, env = "XKS_KMS_ENDPOINT")]
    pub kms_endpoint: Option<String>,
    /// AWS Region when the resource and the AWS configuration name none.
    #[arg(long, env = "AWS_REGION")]
    pub region: Option<String>,
    /// Reach a proxy host at another base URL: host=URL (repeatable), e.g.
    /// xks-primary.example.com=http://127.0.0.1:4566 for the emulator.
    #[arg(long = "proxy-resolve", value_parser = parse_resolve)]
    pub proxy_resolve: Vec<(String, String)>,
}

pub fn parse_resolve(s: &str) -> Result<(String, String), String> {
    let (host, url) = s
        .split_once('=')
        .ok_or_else(|| "expected host=URL".to_string())?;
    Ok((host.to_string(), url.to_string()))
}

impl Manifests {
    /// The claim of `store` on a KMS store, in file mode.
    fn claimant(&self, store: &ExternalKeyStore, target: &Target) -> Claimant {
        Claimant::of(store, None, target.scope_for(store))
    }

    /// The claims of every other resource of the manifests: two resources
    /// naming one store are refused just as in a cluster.
    fn rivals(&self, store: &ExternalKeyStore, target: &Target) -> Vec<Claimant> {
        self.stores
            .iter()
            .filter(|other| !std::ptr::eq(*other, store))
            .map(|other| self.claimant(other, target))
            .collect()
    }
}

impl Target {
    pub fn scope_for(&self, store: &ExternalKeyStore) -> Scope {
        Scope {
            account: None,
            region: self.region_for(store),
        }
    }

    pub fn region_for(&self, store: &ExternalKeyStore) -> String {
        store
            .spec
            .region
            .clone()
            .or_else(|| self.region.clone())
            .unwrap_or_else(|| "us-east-1".to_string())
    }

    pub async fn key_stores(&self, region: &str) -> AwsKeyStores {
        match &self.kms_endpoint {
            Some(url) => AwsKeyStores::for_endpoint(url, region),
            None => AwsKeyStores::from_env(Some(region.to_string())).await,
        }
    }

    pub fn probe(&self) -> anyhow::Result<HttpProxyProbe> {
        let resolve: HashMap<String, String> = self.proxy_resolve.iter().cloned().collect();
        HttpProxyProbe::new(ProbeOptions {
            resolve,
            ..ProbeOptions::default()
        })
        .context("building the proxy HTTP client")
    }
}

/// `plan`: what a change would do, changing nothing.
pub async fn plan_command(
    files: &[PathBuf],
    target: &Target,
    fail_on_disruptive: bool,
) -> anyhow::Result<i32> {
    let manifests = Manifests::load(files)?;
    if manifests.stores.is_empty() {
        bail!("no ExternalKeyStore found in the given files");
    }
    let mut disruptive_any = false;
    let mut invalid_any = false;
    let options = EngineOptions::default();
    for store in &manifests.stores {
        let name = store.metadata.name.clone().unwrap_or_default();
        println!(
            "ExternalKeyStore {}/{name}:",
            store.metadata.namespace.as_deref().unwrap_or("default")
        );
        if let Err(problem) = crate::api::validate::validate_resource(store, None) {
            println!("  INVALID: {problem}\n");
            invalid_any = true;
            continue;
        }
        if let Some(claimed) = claims::yields_to(
            &manifests.claimant(store, target),
            &manifests.rivals(store, target),
        ) {
            println!("  REFUSED ({}): {}\n", claims::REASON, claimed.message());
            invalid_any = true;
            continue;
        }
        let kms = target.key_stores(&target.region_for(store)).await;
        let status = store.status.clone().unwrap_or_default();
        let observed = crate::engine::observe(&kms, store, &status)
            .await
            .context("describing the store")?;
        // Without the Secret (a GitOps repository rarely holds it) the
        // credential is taken as the one KMS has.
        let (credential, note) = match manifests.credential_for(store) {
            Ok(c) => (c, None),
            Err(e) => {
                let akid = observed
                    .as_ref()
                    .and_then(|s| s.proxy.as_ref())
                    .map(|p| p.access_key_id.clone())
                    .unwrap_or_else(|| "UNKNOWNACCESSKEYIDAAAA".into());
                (
                    crate::model::ProxyCredential::new(akid, "x".repeat(43)),
                    Some(format!("credential not compared ({e})")),
                )
            }
        };
        let desired = desired_for(store, &credential, &options);
        // A store that exists and whose status we do not have: assume its
        // secret is the one in the Secret; the operator pushes it once anyway.
        let applied = status
            .credential_fingerprint
            .clone()
            .or_else(|| Some(desired.credential_fingerprint.clone()));
        let decision = plan::decide(&PlanInput {
            desired: &desired,
            observed: observed.as_ref(),
            applied_fingerprint: applied.as_deref(),
            recorded: status.operation.as_ref(),
            deleting: false,
        });
        match &observed {
            Some(s) => println!("  store {} ({}) is {}", s.id, s.name, s.connection_state),
            None if store.spec.key_store_id.is_some() => {
                println!("  the pinned store is not in KMS")
            }
            None => println!(
                "  no store named {:?} in KMS yet (a renamed store is recognised only through its status.keyStoreId or spec.keyStoreId)",
                store.key_store_name()
            ),
        }
        match decision {
            Decision::InSync => println!("  in sync: no change"),
            Decision::Continue => println!("  an operation is under way (see status.operation)"),
            Decision::Release => println!("  nothing to do"),
            Decision::Blocked { message } => println!("  blocked: {message}"),
            Decision::Refuse { message, .. } => println!("  refused: {message}"),
            Decision::Start(op) => {
                println!("  change: {}", op.trigger);
                for (i, step) in op.steps.iter().enumerate() {
                    println!("    {}. {step:?}", i + 1);
                }
                if op.disruptive {
                    disruptive_any = true;
                    println!(
                        "  DISRUPTIVE: the store is disconnected from Disconnect until Connect completes; its KMS keys cannot be used meanwhile"
                    );
                } else if op.steps.contains(&crate::api::StepName::Create) {
                    println!("  creates a new store: nothing existing is disrupted");
                } else {
                    println!("  online: the store stays usable");
                }
            }
        }
        if let Some(note) = note {
            println!("  note: {note}");
        }
        println!();
    }
    Ok(if invalid_any {
        1
    } else if fail_on_disruptive && disruptive_any {
        2
    } else {
        0
    })
}

/// `reconcile`: run the engine to completion for each resource, print the
/// resources with their final status as YAML.
pub async fn reconcile_command(
    files: &[PathBuf],
    target: &Target,
    delete: bool,
    timeout: Duration,
) -> anyhow::Result<i32> {
    let manifests = Manifests::load(files)?;
    if manifests.stores.is_empty() {
        bail!("no ExternalKeyStore found in the given files");
    }
    let mut code = 0;
    for store in &manifests.stores {
        let region = target.region_for(store);
        let kms = target.key_stores(&region).await;
        let engine = Engine::new(
            kms,
            target.probe()?,
            region,
            EngineOptions {
                poll_interval: Duration::from_millis(500),
                retry: crate::retry::RetryPolicy::scaled(
                    Duration::from_millis(500),
                    Duration::from_secs(10),
                ),
                ..EngineOptions::default()
            },
        );
        let name = store.metadata.name.clone().unwrap_or_default();
        eprintln!("reconciling {name}:");
        let mut sink = table::LiveTable::new(name, false);
        let mut status = store.status.clone().unwrap_or_default();
        let request = Request {
            resource: store,
            credential: manifests.credential_for(store),
            approved: crate::api::is_approved(store),
            deleting: delete,
            requested_at: None,
            rivals: manifests.rivals(store, target),
        };
        let outcome = settle(&engine, &request, &mut status, &mut sink, timeout).await?;
        if !matches!(
            outcome,
            Outcome::InSync | Outcome::Released | Outcome::Observed
        ) {
            code = 1;
        }
        let mut done = store.clone();
        done.status = Some(status);
        println!("---\n{}", serde_yaml::to_string(&done)?);
    }
    Ok(code)
}

/// Call the engine until it stops asking to be called again (sleeping the
/// requeue delays here, in the driver, never inside the engine).
pub async fn settle<K: KeyStores, P: ProxyProbe, S: StatusSink>(
    engine: &Engine<K, P>,
    request: &Request<'_>,
    status: &mut ExternalKeyStoreStatus,
    sink: &mut S,
    timeout: Duration,
) -> anyhow::Result<Outcome> {
    let started = Instant::now();
    loop {
        match engine.reconcile(request, status, sink).await? {
            Outcome::Requeue(delay) => {
                if started.elapsed() > timeout {
                    bail!("did not settle within {timeout:?}; status shows where it is");
                }
                tokio::time::sleep(delay).await;
            }
            other => return Ok(other),
        }
    }
}

pub fn desired_for(
    store: &ExternalKeyStore,
    credential: &crate::model::ProxyCredential,
    options: &EngineOptions,
) -> plan::Desired {
    crate::engine::desired_state(store, credential, &options.fingerprint_key)
}
