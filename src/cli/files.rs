//! File mode: ExternalKeyStores and Secrets read from YAML manifests, as
//! `kubectl apply -f` would take them (files or directories, multi-document).

use crate::api::ExternalKeyStore;
use crate::credentials::{self, CredentialError};
use crate::model::ProxyCredential;
use anyhow::{Context, bail};
use k8s_openapi::api::core::v1::Secret;
use serde::Deserialize;
use std::path::{Path, PathBuf};

/// The manifests of one `-f` argument set.
#[derive(Default, Debug)]
pub struct Manifests {
    pub stores: Vec<ExternalKeyStore>,
    pub secrets: Vec<Secret>,
}

impl Manifests {
    pub fn load(paths: &[PathBuf]) -> anyhow::Result<Self> {
        let mut out = Self::default();
        for path in paths {
            for file in yaml_files(path)? {
                let text = std::fs::read_to_string(&file)
                    .with_context(|| format!("reading {}", file.display()))?;
                out.add_yaml(&text)
                    .with_context(|| format!("in {}", file.display()))?;
            }
        }
        Ok(out)
    }

    /// Add every ExternalKeyStore and Secret of a (multi-document) YAML text;
    /// other kinds are ignored.
    pub fn add_yaml(&mut self, text: &str) -> anyhow::Result<()> {
        for doc in serde_yaml::Deserializer::from_str(text) {
            let value = serde_yaml::Value::deserialize(doc)?;
            if value.is_null() {
                continue;
            }
            let kind = value.get("kind").and_then(|k| k.as_str()).unwrap_or("");
            match kind {
                "ExternalKeyStore" => {
                    let mut store: ExternalKeyStore =
                        serde_yaml::from_value(value).context("not a valid ExternalKeyStore")?;
                    store
                        .metadata
                        .namespace
                        .get_or_insert_with(|| "default".into());
                    store.metadata.generation.get_or_insert(1);
                    self.stores.push(store);
                }
                "Secret" => {
                    // Deserialize without echoing values into any error.
                    let mut secret: Secret = serde_yaml::from_value(value)
                        .map_err(|_| anyhow::anyhow!("a Secret manifest is malformed"))?;
                    secret
                        .metadata
                        .namespace
                        .get_or_insert_with(|| "default".into());
                    self.secrets.push(secret);
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// The credential a store references, from the Secret manifests given.
    pub fn credential_for(
        &self,
        store: &ExternalKeyStore,
    ) -> Result<ProxyCredential, CredentialError> {
        let reference = &store.spec.proxy.credentials_secret_ref;
        credentials::from_secret(self.secret(store, &reference.name)?, reference)
    }

    /// One key of a Secret manifest in the store's namespace.
    pub fn secret_key(
        &self,
        store: &ExternalKeyStore,
        name: &str,
        key: &str,
    ) -> Result<String, CredentialError> {
        credentials::key_of(self.secret(store, name)?, key)
    }

    /// The Secret manifest `name` in the store's namespace.
    fn secret(&self, store: &ExternalKeyStore, name: &str) -> Result<&Secret, CredentialError> {
        let namespace = store.metadata.namespace.as_deref().unwrap_or("default");
        self.secrets
            .iter()
            .find(|s| {
                s.metadata.name.as_deref() == Some(name)
                    && s.metadata.namespace.as_deref() == Some(namespace)
            })
            .ok_or_else(|| CredentialError::SecretNotFound(format!("{namespace}/{name}")))
    }
}

fn yaml_files(path: &Path) -> anyhow::Result<Vec<PathBuf>> {
    if path.is_file() {
        return Ok(vec![path.to_path_buf()]);
    }
    if !path.is_dir() {
        bail!("{} is neither a file nor a directory", path.display());
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(path)
        .with_context(|| format!("listing {}", path.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .collect();
    files.sort();
    Ok(files)
}
