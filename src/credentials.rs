//! The proxy credential: read from a Kubernetes Secret (or its manifest in
//! file mode), checked against KMS's constraints, and fingerprinted so that a
//! rotated secret behind the same access key id is noticed. Errors name the
//! Secret and the key, never the value.

use crate::api::CredentialsSecretRef;
use crate::model::ProxyCredential;
use hmac::{Hmac, Mac};
use k8s_openapi::api::core::v1::Secret;
use sha2::Sha256;

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum CredentialError {
    #[error("Secret {0} not found")]
    SecretNotFound(String),
    #[error("Secret {secret} has no key {key}")]
    MissingKey { secret: String, key: String },
    #[error("Secret {secret} key {key} is not valid UTF-8")]
    NotUtf8 { secret: String, key: String },
    #[error("Secret {secret} key {key}: the access key id must be 20-30 characters of A-Z and 2-7")]
    BadAccessKeyId { secret: String, key: String },
    #[error(
        "Secret {secret} key {key}: the secret access key must be 43-64 characters of a-z, A-Z, 0-9, /, + and ="
    )]
    BadSecretAccessKey { secret: String, key: String },
}

/// The text of `key` in `secret` (`data`, else `stringData`), trimmed.
/// Errors name the Secret and the key, never a value.
pub fn key_of(secret: &Secret, key: &str) -> Result<String, CredentialError> {
    let name = secret.metadata.name.clone().unwrap_or_default();
    let bytes = secret
        .data
        .as_ref()
        .and_then(|d| d.get(key))
        .map(|b| b.0.clone())
        .or_else(|| {
            secret
                .string_data
                .as_ref()
                .and_then(|d| d.get(key))
                .map(|s| s.clone().into_bytes())
        })
        .ok_or_else(|| CredentialError::MissingKey {
            secret: name.clone(),
            key: key.to_string(),
        })?;
    let text = String::from_utf8(bytes).map_err(|_| CredentialError::NotUtf8 {
        secret: name,
        key: key.to_string(),
    })?;
    // Secrets made with `echo ... | base64` often carry a trailing newline.
    Ok(text.trim().to_string())
}

/// Read and check the credential in `secret` as `reference` describes.
pub fn from_secret(
    secret: &Secret,
    reference: &CredentialsSecretRef,
) -> Result<ProxyCredential, CredentialError> {
    let name = secret.metadata.name.clone().unwrap_or_default();
    let read = |key: &str| key_of(secret, key);
    let akid_key = reference.access_key_id_key();
    let secret_key = reference.secret_access_key_key();
    let access_key_id = read(akid_key)?;
    let secret_access_key = read(secret_key)?;
    if !(20..=30).contains(&access_key_id.len())
        || !access_key_id
            .bytes()
            .all(|b| b.is_ascii_uppercase() || (b'2'..=b'7').contains(&b))
    {
        return Err(CredentialError::BadAccessKeyId {
            secret: name,
            key: akid_key.to_string(),
        });
    }
    if !(43..=64).contains(&secret_access_key.len())
        || !secret_access_key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/+=".contains(&b))
    {
        return Err(CredentialError::BadSecretAccessKey {
            secret: name,
            key: secret_key.to_string(),
        });
    }
    Ok(ProxyCredential::new(access_key_id, secret_access_key))
}

/// Keyed fingerprint of the credential, safe to store in status: HMAC-SHA256
/// under a key the operator holds, truncated. Without the key it cannot be
/// used to test guesses of the secret.
pub fn fingerprint(credential: &ProxyCredential, key: &[u8]) -> String {
    // HMAC accepts keys of any length, so this cannot fail.
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key)
        .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
    mac.update(credential.access_key_id.as_bytes());
    mac.update(&[0]);
    mac.update(credential.expose_secret().as_bytes());
    format!(
        "hmac-sha256:{}",
        hex::encode(&mac.finalize().into_bytes()[..16])
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::ByteString;
    use std::collections::BTreeMap;

    const AKID: &str = "XKSDEMOKEYIDPRIMARYA";
    const SECRET: &str = "demoSecretAccessKeyForTheXksProxyPrimary0123456789";

    fn secret(data: &[(&str, &str)]) -> Secret {
        Secret {
            metadata: kube::api::ObjectMeta {
                name: Some("xks-proxy-credential".into()),
                ..Default::default()
            },
            data: Some(
                data.iter()
                    .map(|(k, v)| (k.to_string(), ByteString(v.as_bytes().to_vec())))
                    .collect::<BTreeMap<_, _>>(),
            ),
            ..Default::default()
        }
    }

    fn reference() -> CredentialsSecretRef {
        CredentialsSecretRef {
            name: "xks-proxy-credential".into(),
            access_key_id_key: None,
            secret_access_key_key: None,
        }
    }

    #[test]
    fn reads_and_trims_a_valid_secret() {
        let s = secret(&[
            ("accessKeyId", AKID),
            ("secretAccessKey", &format!("{SECRET}\n")),
        ]);
        let c = from_secret(&s, &reference()).expect("valid");
        assert_eq!(c.access_key_id, AKID);
        assert_eq!(c.expose_secret(), SECRET);
    }

    #[test]
    fn errors_name_the_key_but_never_the_value() {
        let bad = "short/secret";
        let s = secret(&[("accessKeyId", AKID), ("secretAccessKey", bad)]);
        let err = from_secret(&s, &reference()).expect_err("too short");
        let text = err.to_string();
        assert!(text.contains("secretAccessKey"), "{text}");
        assert!(!text.contains(bad), "{text}");

        let s = secret(&[("accessKeyId", "lowercase-not-allowed-here")]);
        assert!(matches!(
            from_secret(&s, &reference()),
            Err(CredentialError::MissingKey { .. }) | Err(CredentialError::BadAccessKeyId { .. })
        ));
        let s = secret(&[("secretAccessKey", SECRET)]);
        assert_eq!(
            from_secret(&s, &reference()),
            Err(CredentialError::MissingKey {
                secret: "xks-proxy-credential".into(),
                key: "accessKeyId".into()
            })
        );
    }

    #[test]
    fn fingerprint_changes_with_the_secret_and_hides_it() {
        let a = ProxyCredential::new(AKID, SECRET);
        let b = ProxyCredential::new(
            AKID,
            "demoRotatedSecretAccessKeyForTheXksProxyPrimary9876543",
        );
        let fa = fingerprint(&a, b"k");
        assert_ne!(fa, fingerprint(&b, b"k"));
        assert_ne!(fa, fingerprint(&a, b"other key"));
        assert_eq!(fa, fingerprint(&a, b"k"));
        assert!(!fa.contains(SECRET));
        assert!(!format!("{a:?}").contains(SECRET));
    }
}
