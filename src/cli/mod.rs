//! The commands that work without a cluster: `plan`, `reconcile`, `demo`.

#[cfg(feature = "emulator")]
pub mod demo;
pub mod files;
pub mod table;

use crate::api::{ExternalKeyStore, ExternalKeyStoreStatus};
use crate::claims::{Claimant, Scope};
use crate::engine::{Engine, EngineOptions, Outcome, PreviewVerdict, Request, StatusSink};
use crate::kms::KeyStores;
use crate::kms::aws::AwsKeyStores;
use crate::kms::identity::AssumedRole;
use crate::plan::{self, Decision};
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

    /// The role `store` names, with its external id from the Secret
    /// manifests given. In file mode every role is allowed: the person
    /// running the command acts with their own AWS identity.
    fn role(&self, store: &ExternalKeyStore) -> anyhow::Result<Option<AssumedRole>> {
        let Some(arn) = store.spec.role_arn.clone() else {
            return Ok(None);
        };
        let external_id = match &store.spec.external_id_secret_ref {
            Some(reference) => Some(self.secret_key(store, &reference.name, &reference.key)?),
            None => None,
        };
        Ok(Some(AssumedRole::new(arn, external_id)))
    }

    /// The engine of `store`: KMS in its Region, as its role if it names one.
    async fn engine(
        &self,
        store: &ExternalKeyStore,
        target: &Target,
        options: EngineOptions,
    ) -> anyhow::Result<Engine<AwsKeyStores, HttpProxyProbe>> {
        let region = target.region_for(store);
        let role = self.role(store)?;
        let kms = target.key_stores(&region, role.as_ref()).await;
        Ok(Engine::new(kms, target.probe()?, region, options)
            .in_account(role.as_ref().and_then(AssumedRole::account)))
    }

    /// The request of one pass over `store`.
    fn request<'a>(
        &self,
        store: &'a ExternalKeyStore,
        target: &Target,
        deleting: bool,
    ) -> Request<'a> {
        Request {
            resource: store,
            credential: self.credential_for(store),
            approved: crate::api::is_approved(store),
            deleting,
            requested_at: None,
            rivals: self.rivals(store, target),
        }
    }
}

impl Target {
    pub fn scope_for(&self, store: &ExternalKeyStore) -> Scope {
        Scope {
            account: store
                .spec
                .role_arn
                .as_deref()
                .and_then(crate::kms::identity::account_of_role),
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

    /// KMS in `region`, at `--kms-endpoint` (an emulator, which also serves
    /// STS) or through the standard AWS configuration; as `role` if given.
    pub async fn key_stores(&self, region: &str, role: Option<&AssumedRole>) -> AwsKeyStores {
        let base = match &self.kms_endpoint {
            Some(url) => crate::kms::aws::emulator_config(url, region).await,
            None => crate::kms::aws::own_config(Some(region.to_string())).await,
        };
        AwsKeyStores::new(&base, region, role).await
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

/// `plan`: what a change would do, changing nothing. The engine's own
/// preview decides, as a pass in the cluster would.
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
    let mut refused_any = false;
    for store in &manifests.stores {
        let name = store.metadata.name.clone().unwrap_or_default();
        println!(
            "ExternalKeyStore {}/{name}:",
            store.metadata.namespace.as_deref().unwrap_or("default")
        );
        if let Err(problem) = crate::api::validate::validate_resource(store, None) {
            println!("  INVALID: {problem}\n");
            refused_any = true;
            continue;
        }
        let engine = manifests
            .engine(store, target, EngineOptions::default())
            .await?;
        let status = store.status.clone().unwrap_or_default();
        let preview = engine
            .preview(&manifests.request(store, target, false), &status)
            .await
            .context("describing the store")?;
        match &preview.observed {
            Some(s) => println!("  store {} ({}) is {}", s.id, s.name, s.connection_state),
            None if store.spec.key_store_id.is_some() => {
                println!("  the pinned store is not in KMS")
            }
            None => println!(
                "  no store named {:?} in KMS yet (a renamed store is recognised only through its status.keyStoreId or spec.keyStoreId)",
                store.key_store_name()
            ),
        }
        match preview.verdict {
            PreviewVerdict::Refused { reason, message } => {
                println!("  REFUSED ({reason}): {message}");
                refused_any = true;
            }
            PreviewVerdict::Decided(decision) => {
                disruptive_any |= print_decision(decision);
            }
        }
        if !preview.credential_compared {
            println!(
                "  note: credential not compared (no Secret {:?} in the given files)",
                store.spec.proxy.credentials_secret_ref.name
            );
        }
        println!();
    }
    Ok(if refused_any {
        1
    } else if fail_on_disruptive && disruptive_any {
        2
    } else {
        0
    })
}

/// Prints a decision; returns whether it disconnects a store.
fn print_decision(decision: Decision) -> bool {
    match decision {
        Decision::InSync => println!("  in sync: no change"),
        Decision::Continue => println!("  an operation is under way (see status.operation)"),
        Decision::Release => println!("  nothing to do"),
        Decision::Blocked { message } => println!("  blocked: {message}"),
        Decision::Refuse { message, .. } => println!("  refused: {message}"),
        Decision::Start(op) => {
            println!("  change: {}", op.trigger);
            for (i, step) in op.steps.iter().enumerate() {
                println!("    {}. {step}", i + 1);
            }
            if op.disruptive {
                println!(
                    "  DISRUPTIVE: the store is disconnected from Disconnect until Connect completes; its KMS keys cannot be used meanwhile"
                );
                return true;
            }
            if op.steps.contains(&crate::api::StepName::Create) {
                println!("  creates a new store: nothing existing is disrupted");
            } else {
                println!("  online: the store stays usable");
            }
        }
    }
    false
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
        let engine = manifests
            .engine(
                store,
                target,
                EngineOptions {
                    poll_interval: Duration::from_millis(500),
                    retry: crate::retry::RetryPolicy::scaled(
                        Duration::from_millis(500),
                        Duration::from_secs(10),
                    ),
                    ..EngineOptions::default()
                },
            )
            .await?;
        let name = store.metadata.name.clone().unwrap_or_default();
        eprintln!("reconciling {name}:");
        let mut sink = table::LiveTable::new(name, false);
        let mut status = store.status.clone().unwrap_or_default();
        let request = manifests.request(store, target, delete);
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
