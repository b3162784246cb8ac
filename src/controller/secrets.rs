//! The credential Secrets: reading the one a resource names, and mapping a
//! changed Secret back to the resources that name it, so a rotated
//! credential is pushed to KMS without anyone touching the resource.
//! Nothing here logs or returns a Secret's data.

use crate::api::{CredentialsSecretRef, ExternalKeyStore, SecretKeyRef};
use crate::credentials::{self, CredentialError};
use crate::model::ProxyCredential;
use k8s_openapi::api::core::v1::Secret;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Api, Client, ResourceExt};

/// The credential of `reference` in `namespace`. The outer error is the API
/// call failing (retried); the inner one is a missing or malformed Secret
/// (reported in status until someone fixes the Secret).
pub async fn read_credential(
    client: Client,
    namespace: &str,
    reference: &CredentialsSecretRef,
) -> Result<Result<ProxyCredential, CredentialError>, kube::Error> {
    let api: Api<Secret> = Api::namespaced(client, namespace);
    Ok(match api.get_opt(&reference.name).await? {
        Some(secret) => credentials::from_secret(&secret, reference),
        None => Err(CredentialError::SecretNotFound(reference.name.clone())),
    })
}

/// One key of a Secret, e.g. the external id of `spec.roleArn`. The outer
/// error is the API call failing; the inner one names what is missing
/// (never the value).
pub async fn read_key(
    client: Client,
    namespace: &str,
    reference: &SecretKeyRef,
) -> Result<Result<String, CredentialError>, kube::Error> {
    let api: Api<Secret> = Api::namespaced(client, namespace);
    Ok(match api.get_opt(&reference.name).await? {
        Some(secret) => credentials::key_of(&secret, &reference.key),
        None => Err(CredentialError::SecretNotFound(reference.name.clone())),
    })
}

/// The resources in the Secret's namespace that name the Secret: for the
/// proxy credential or for the external id of their role.
pub fn stores_using(
    stores: &Store<ExternalKeyStore>,
    secret: &Secret,
) -> Vec<ObjectRef<ExternalKeyStore>> {
    let (Some(namespace), Some(name)) = (
        secret.metadata.namespace.as_deref(),
        secret.metadata.name.as_deref(),
    ) else {
        return Vec::new();
    };
    stores
        .state()
        .iter()
        .filter(|s| {
            s.namespace().as_deref() == Some(namespace)
                && (s.spec.proxy.credentials_secret_ref.name == name
                    || s.spec
                        .external_id_secret_ref
                        .as_ref()
                        .is_some_and(|r| r.name == name))
        })
        .map(|s| ObjectRef::from_obj(s.as_ref()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::runtime::reflector;
    use kube::runtime::watcher;

    fn store(ns: &str, name: &str, secret: &str) -> ExternalKeyStore {
        let mut s: ExternalKeyStore = serde_json::from_value(serde_json::json!({
            "apiVersion": "xks-operator.io/v1alpha1",
            "kind": "ExternalKeyStore",
            "metadata": {"name": name, "namespace": ns},
            "spec": {"proxy": {
                "uriEndpoint": "https://xks.example.com",
                "uriPath": "/kms/xks/v1",
                "credentialsSecretRef": {"name": secret}
            }}
        }))
        .expect("valid resource");
        s.metadata.uid = Some(format!("{ns}-{name}"));
        s
    }

    #[test]
    fn a_secret_maps_to_the_stores_of_its_namespace_that_name_it() {
        let (reader, mut writer) = reflector::store::<ExternalKeyStore>();
        for s in [
            store("team-a", "payments", "cred"),
            store("team-a", "ledger", "cred"),
            store("team-a", "other", "another-secret"),
            store("team-b", "payments", "cred"),
        ] {
            writer.apply_watcher_event(&watcher::Event::Apply(s));
        }
        let secret = Secret {
            metadata: kube::api::ObjectMeta {
                name: Some("cred".into()),
                namespace: Some("team-a".into()),
                ..Default::default()
            },
            ..Default::default()
        };
        let mut names: Vec<String> = stores_using(&reader, &secret)
            .into_iter()
            .map(|r| format!("{}/{}", r.namespace.unwrap_or_default(), r.name))
            .collect();
        names.sort();
        assert_eq!(names, ["team-a/ledger", "team-a/payments"]);
    }
}
