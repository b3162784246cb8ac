//! The input rules of KMS (contract §3), repeated in Rust for the file-driven
//! modes and as a second line of defence behind the CRD's OpenAPI and CEL
//! rules. Messages say which field is wrong and what it must look like.

use super::{ConnectivitySpec, ExternalKeyStore, ExternalKeyStoreSpec};
use regex::Regex;
use std::sync::LazyLock;

static URI_ENDPOINT: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^https://[a-zA-Z0-9.-]+$").expect("static regex"));
static URI_PATH: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^(/[a-zA-Z0-9/_-]+)?/kms/xks/v[0-9]{1,2}$").expect("static regex")
});
static VPC_SERVICE: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^(com|eu)\.amazonaws\.vpce\.([a-z]+-){2,3}[0-9]+\.vpce-svc-[0-9a-z]+$")
        .expect("static regex")
});
static ACCOUNT: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^[0-9]{12}$").expect("static regex"));
static REGION: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^[a-z]{2}(-[a-z]+)+-[0-9]+$").expect("static regex"));
static DURATION: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^[1-9][0-9]{0,5}(s|m|h)$").expect("static regex"));
static ROLE_ARN: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^arn:aws[a-z-]*:iam::[0-9]{12}:role/.+$").expect("static regex"));
static SECRET_KEY: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^[-._a-zA-Z0-9]{1,253}$").expect("static regex"));

fn check_len(field: &str, value: &str, min: usize, max: usize) -> Result<(), String> {
    let n = value.chars().count();
    if n < min || n > max {
        return Err(format!(
            "{field} must be {min} to {max} characters long (it has {n})"
        ));
    }
    Ok(())
}

/// Every static rule of the spec; the first violation, in words.
pub fn validate_spec(spec: &ExternalKeyStoreSpec) -> Result<(), String> {
    if let Some(name) = &spec.key_store_name {
        check_len("keyStoreName", name, 1, 256)?;
    }
    if let Some(id) = &spec.key_store_id {
        check_len("keyStoreId", id, 1, 64)?;
    }
    if let Some(region) = &spec.region
        && !REGION.is_match(region)
    {
        return Err(format!("region must look like eu-west-1 (got {region:?})"));
    }
    if let Some(role) = &spec.role_arn {
        check_len("roleArn", role, 20, 2048)?;
        if !ROLE_ARN.is_match(role) {
            return Err(
                "roleArn must be an IAM role ARN: arn:aws:iam::<12-digit account>:role/<name>"
                    .to_string(),
            );
        }
    }
    if let Some(external_id) = &spec.external_id_secret_ref {
        if spec.role_arn.is_none() {
            return Err(
                "externalIdSecretRef needs roleArn: the external id is sent when assuming that role"
                    .to_string(),
            );
        }
        check_len("externalIdSecretRef.name", &external_id.name, 1, 253)?;
        if !SECRET_KEY.is_match(&external_id.key) {
            return Err(
                "externalIdSecretRef.key must be a Secret key: letters, digits, '-', '_' and '.'"
                    .to_string(),
            );
        }
    }
    if let Some(interval) = &spec.drift_interval
        && !DURATION.is_match(interval)
    {
        return Err(
            "driftInterval must be a positive number (at most 6 digits) followed by s, m or h, e.g. 5m"
                .to_string(),
        );
    }
    let proxy = &spec.proxy;
    check_len("proxy.uriEndpoint", &proxy.uri_endpoint, 10, 128)?;
    if !URI_ENDPOINT.is_match(&proxy.uri_endpoint) {
        return Err(
            "proxy.uriEndpoint must be https:// followed by a host name, with no port, path or trailing slash"
                .to_string(),
        );
    }
    check_len("proxy.uriPath", &proxy.uri_path, 10, 128)?;
    if !URI_PATH.is_match(&proxy.uri_path) {
        return Err(
            "proxy.uriPath must end in /kms/xks/vN, with an optional prefix of letters, digits, /, _ and -"
                .to_string(),
        );
    }
    match (proxy.connectivity, &proxy.vpc_endpoint_service) {
        (ConnectivitySpec::VpcEndpointService, None) => {
            return Err(
                "proxy.vpcEndpointService is required when connectivity is VpcEndpointService"
                    .to_string(),
            );
        }
        (ConnectivitySpec::PublicEndpoint, Some(_)) => {
            return Err(
                "proxy.vpcEndpointService must be omitted when connectivity is PublicEndpoint"
                    .to_string(),
            );
        }
        (_, Some(vpc)) => {
            check_len("proxy.vpcEndpointService.name", &vpc.name, 20, 64)?;
            if !VPC_SERVICE.is_match(&vpc.name) {
                return Err("vpcEndpointService.name must look like com.amazonaws.vpce.<region>.vpce-svc-<id>".to_string());
            }
            if let Some(owner) = &vpc.owner
                && !ACCOUNT.is_match(owner)
            {
                return Err(
                    "vpcEndpointService.owner must be a 12-digit AWS account id".to_string()
                );
            }
        }
        (ConnectivitySpec::PublicEndpoint, None) => {}
    }
    let secret_ref = &proxy.credentials_secret_ref;
    for (field, key) in [
        ("accessKeyIdKey", &secret_ref.access_key_id_key),
        ("secretAccessKeyKey", &secret_ref.secret_access_key_key),
    ] {
        if let Some(key) = key
            && !SECRET_KEY.is_match(key)
        {
            return Err(format!(
                "{field} must be a Secret key: letters, digits, '-', '_' and '.'"
            ));
        }
    }
    check_len(
        "proxy.credentialsSecretRef.name",
        &proxy.credentials_secret_ref.name,
        1,
        253,
    )?;
    Ok(())
}

/// Everything `kubectl apply` would check that can be checked here: the
/// CRD's CEL rules (evaluated client-side) and the Rust rules. `old` enables
/// the transition rules (immutable fields).
pub fn validate_resource(
    resource: &ExternalKeyStore,
    old: Option<&ExternalKeyStore>,
) -> Result<(), String> {
    let cel = match old {
        Some(old) => resource.validate_cel_update(old),
        None => resource.validate_cel(),
    };
    if let Err(errors) = cel {
        return Err(errors.to_string());
    }
    validate_spec(&resource.spec)
}
