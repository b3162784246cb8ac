//! SigV4 HTTP probe: the operator's own GetHealthStatus and GetKeyMetadata
//! calls to an XKS proxy, signed like KMS signs them (service
//! `kms-xks-proxy`, the store's Region, the proxy credential).
//!
//! The secret is used only by the signer: it is never logged, put in an
//! error or in this type's `Debug`.

use super::{
    HealthReport, KeyManagerHealth, KeyManagerStatus, KeyMetadata, ProbeError, ProxyProbe,
    ProxyTarget,
};
use aws_credential_types::Credentials;
use aws_sigv4::http_request::{SignableBody, SignableRequest, SigningSettings, sign};
use aws_sigv4::sign::v4;
use aws_smithy_runtime_api::client::identity::Identity;
use serde::Deserialize;
use serde_json::json;
use std::collections::HashMap;
use std::error::Error as _;
use std::time::{Duration, SystemTime};

/// SigV4 service name of the XKS proxy API.
pub const SIGNING_SERVICE: &str = "kms-xks-proxy";
/// Default per-call budget. KMS itself waits about 250 ms, but the operator
/// may run far from the proxy, so it is more patient.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);
/// Sent as `awsPrincipalArn` when no ARN is configured: the spec makes the
/// field required, so strict proxies reject a request without it.
pub const DEFAULT_PRINCIPAL: &str = "xks-operator";
/// A proxy answer larger than this is not an XKS answer.
const MAX_RESPONSE_BYTES: usize = 64 * 1024;

/// How the probe reaches proxies.
#[derive(Clone, Debug)]
pub struct ProbeOptions {
    /// host (or `host:port`) → base URL, e.g. `xks-primary.example.com` →
    /// `http://127.0.0.1:4566`. The request goes to the base URL while the
    /// signed Host header keeps the original host. Empty in production.
    pub resolve: HashMap<String, String>,
    /// Whole-call budget (connect, TLS, request, answer).
    pub timeout: Duration,
    /// `awsPrincipalArn` of GetKeyMetadata: who is asking, for proxies that
    /// authorize on request metadata.
    pub principal_arn: String,
}

impl Default for ProbeOptions {
    fn default() -> Self {
        Self {
            resolve: HashMap::new(),
            timeout: DEFAULT_TIMEOUT,
            principal_arn: DEFAULT_PRINCIPAL.to_owned(),
        }
    }
}

/// `ProxyProbe` over HTTPS (reqwest + rustls, public CA roots).
#[derive(Clone, Debug)]
pub struct HttpProxyProbe {
    client: reqwest::Client,
    options: ProbeOptions,
}

impl HttpProxyProbe {
    /// Fails only if the TLS backend cannot start.
    pub fn new(options: ProbeOptions) -> Result<Self, reqwest::Error> {
        let client = reqwest::Client::builder()
            .timeout(options.timeout)
            .connect_timeout(options.timeout)
            // KMS does not follow redirects, and a redirected request would
            // carry a signature for another URL.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("xks-operator/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Self { client, options })
    }

    pub fn with_defaults() -> Result<Self, reqwest::Error> {
        Self::new(ProbeOptions::default())
    }

    pub fn options(&self) -> &ProbeOptions {
        &self.options
    }

    /// POSTs a signed JSON body to `<endpoint><path><suffix>`; returns the
    /// 2xx answer's body or the mapped error.
    async fn call(
        &self,
        target: &ProxyTarget,
        suffix: &str,
        body: serde_json::Value,
    ) -> Result<Vec<u8>, ProbeError> {
        let endpoint = reqwest::Url::parse(&target.uri_endpoint)
            .map_err(|e| ProbeError::Unreachable(format!("invalid proxy URI endpoint: {e}")))?;
        let host = endpoint.host_str().ok_or_else(|| {
            ProbeError::Unreachable("the proxy URI endpoint has no host".to_owned())
        })?;
        let host_header = match endpoint.port() {
            Some(port) => format!("{host}:{port}"),
            None => host.to_owned(),
        };
        let path = format!(
            "{}{}{suffix}",
            if target.uri_path.starts_with('/') {
                ""
            } else {
                "/"
            },
            target.uri_path.trim_end_matches('/'),
        );
        let origin = format!("{}://{host_header}", endpoint.scheme());
        let resolved = self
            .options
            .resolve
            .get(&host_header)
            .or_else(|| self.options.resolve.get(host));
        let send_url = format!(
            "{}{path}",
            resolved.map_or(origin.as_str(), |b| b.trim_end_matches('/'))
        );

        let body = serde_json::to_vec(&body)
            .map_err(|e| ProbeError::Unreachable(format!("cannot encode the request: {e}")))?;
        let signed = sign_request(target, &format!("{origin}{path}"), &host_header, &body)?;

        let mut request = self
            .client
            .post(&send_url)
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(body);
        // Only when redirected: otherwise the client derives the same Host
        // from the URL (and HTTP/2 wants it as :authority).
        if resolved.is_some() {
            request = request.header(http::header::HOST, &host_header);
        }
        for (name, value) in &signed {
            request = request.header(name.as_str(), value.as_str());
        }

        let outcome = self.exchange(request, &host_header).await;
        tracing::debug!(
            proxy = %host_header,
            path = %path,
            outcome = match &outcome { Ok(_) => "ok", Err(e) => e.category().reason() },
            "XKS proxy call"
        );
        outcome
    }

    async fn exchange(
        &self,
        request: reqwest::RequestBuilder,
        host: &str,
    ) -> Result<Vec<u8>, ProbeError> {
        let failed = |e| transport_error(e, host);
        let mut response = request.send().await.map_err(failed)?;
        let status = response.status();
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(failed)? {
            if body.len() + chunk.len() > MAX_RESPONSE_BYTES {
                return Err(ProbeError::InvalidResponse(format!(
                    "the answer is larger than {MAX_RESPONSE_BYTES} bytes"
                )));
            }
            body.extend_from_slice(&chunk);
        }
        if status.is_success() {
            return Ok(body);
        }
        let error_name = error_name(&body);
        Err(match (status.as_u16(), error_name.as_str()) {
            (401, _) => ProbeError::AuthenticationFailed,
            (403, _) => ProbeError::AccessDenied,
            (404, "InvalidUriPathException") => ProbeError::InvalidUriPath,
            (404, "KeyNotFoundException") => ProbeError::KeyNotFound,
            (429, _) => ProbeError::Throttled,
            (status, _) => ProbeError::ServerError { status, error_name },
        })
    }
}

/// The SigV4 headers (Authorization, X-Amz-Date) for this request.
fn sign_request(
    target: &ProxyTarget,
    url: &str,
    host: &str,
    body: &[u8],
) -> Result<Vec<(String, String)>, ProbeError> {
    // Errors here come from the URL, the Region or the clock, never the
    // secret; they still name no value but the URL.
    let fail = |e: &dyn std::fmt::Display| {
        ProbeError::Unreachable(format!("cannot sign the request: {e}"))
    };
    let identity: Identity = Credentials::new(
        target.credential.access_key_id.clone(),
        target.credential.expose_secret().to_owned(),
        None,
        None,
        "xks-proxy-credential",
    )
    .into();
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(&target.region)
        .name(SIGNING_SERVICE)
        .time(SystemTime::now())
        .settings(SigningSettings::default())
        .build()
        .map_err(|e| fail(&e))?
        .into();
    let headers = [("host", host), ("content-type", "application/json")];
    let signable =
        SignableRequest::new("POST", url, headers.into_iter(), SignableBody::Bytes(body))
            .map_err(|e| fail(&e))?;
    let (instructions, _signature) = sign(signable, &params).map_err(|e| fail(&e))?.into_parts();
    Ok(instructions
        .headers()
        .map(|(n, v)| (n.to_owned(), v.to_owned()))
        .collect())
}

/// `errorName` of an XKS error body, cut to something safe to show; empty
/// when the body is not an XKS error.
fn error_name(body: &[u8]) -> String {
    #[derive(Deserialize)]
    struct Wire {
        #[serde(rename = "errorName")]
        error_name: Option<String>,
    }
    serde_json::from_slice::<Wire>(body)
        .ok()
        .and_then(|w| w.error_name)
        .unwrap_or_default()
        .chars()
        .filter(|c| c.is_ascii_graphic())
        .take(64)
        .collect()
}

/// A transport failure in words a person can act on: which of DNS, the
/// TCP connection, TLS or the wait failed, and what usually causes it.
/// `host` is the proxy's (`host[:port]` of the URI endpoint), not where a
/// test's resolve map sent the request; the error chain keeps the details.
fn transport_error(e: reqwest::Error, host: &str) -> ProbeError {
    if e.is_timeout() {
        return ProbeError::TimedOut;
    }
    if let Some(tls) = tls_error(&e, host) {
        return ProbeError::Tls(tls);
    }
    ProbeError::Unreachable(unreachable_words(&e, host))
}

fn unreachable_words(e: &reqwest::Error, host: &str) -> String {
    use std::io::ErrorKind;
    let chain = error_chain(e);
    let lower = chain.to_ascii_lowercase();
    let name = host.rsplit_once(':').map_or(host, |(name, _)| name);
    if lower.contains("dns error")
        || lower.contains("failed to lookup address")
        || lower.contains("name or service not known")
        || lower.contains("no such host")
    {
        return format!(
            "the host name {name} does not resolve (DNS lookup failed): check spec.proxy.uriEndpoint and that DNS, as the operator's pod sees it, knows the name ({chain})"
        );
    }
    match io_error_kind(e) {
        Some(ErrorKind::ConnectionRefused) => format!(
            "{host} refused the connection: nothing listens on the proxy's port, or a firewall rejects the connection ({chain})"
        ),
        Some(ErrorKind::HostUnreachable | ErrorKind::NetworkUnreachable) => format!(
            "no network route from the operator to {host}: check the network path (routes, NetworkPolicy, egress rules) ({chain})"
        ),
        Some(
            ErrorKind::ConnectionReset
            | ErrorKind::ConnectionAborted
            | ErrorKind::BrokenPipe
            | ErrorKind::UnexpectedEof,
        ) => closed_words(host, &chain),
        _ if lower.contains("connection closed") || lower.contains("incomplete message") => {
            closed_words(host, &chain)
        }
        _ => format!("cannot connect to {host}: {chain}"),
    }
}

fn closed_words(host: &str, chain: &str) -> String {
    format!(
        "the connection to {host} was closed before the proxy answered: the proxy (or a load balancer in front of it) dropped the request ({chain})"
    )
}

/// The kind of the first `io::Error` in the chain (connectors nest them).
fn io_error_kind(e: &reqwest::Error) -> Option<std::io::ErrorKind> {
    let mut next: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = next {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            return match io.get_ref() {
                Some(inner) if inner.downcast_ref::<std::io::Error>().is_some() => inner
                    .downcast_ref::<std::io::Error>()
                    .map(std::io::Error::kind),
                _ => Some(io.kind()),
            };
        }
        next = err.source();
    }
    None
}

/// The rustls error somewhere in the chain, in words, if the failure is a
/// TLS one. Connectors wrap it in `io::Error`s (even nested ones), which
/// hide their inner error from `source()`, so those are unwrapped too.
fn tls_error(e: &reqwest::Error, host: &str) -> Option<String> {
    fn unwrap<'a>(err: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
        if let Some(tls) = err.downcast_ref::<rustls::Error>() {
            return Some(tls);
        }
        if let Some(inner) = err
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            return unwrap(inner);
        }
        None
    }
    let mut next: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = next {
        if let Some(tls) = unwrap(err) {
            return Some(tls_words(tls, host));
        }
        next = err.source();
    }
    None
}

fn tls_words(e: &rustls::Error, host: &str) -> String {
    use rustls::CertificateError as C;
    let name = host.rsplit_once(':').map_or(host, |(name, _)| name);
    let words = match e {
        rustls::Error::InvalidCertificate(C::UnknownIssuer) => "the proxy's certificate is not signed by a public certificate authority (KMS requires one, and the operator trusts the same roots)".to_string(),
        rustls::Error::InvalidCertificate(
            C::NotValidForName | C::NotValidForNameContext { .. },
        ) => {
            format!("the proxy's certificate is not valid for the host name {name}")
        }
        rustls::Error::InvalidCertificate(C::Expired | C::ExpiredContext { .. }) => {
            "the proxy's certificate has expired".to_string()
        }
        rustls::Error::InvalidCertificate(C::NotValidYet | C::NotValidYetContext { .. }) => {
            "the proxy's certificate is not valid yet (or a clock is wrong)".to_string()
        }
        rustls::Error::InvalidCertificate(C::Revoked) => {
            "the proxy's certificate is revoked".to_string()
        }
        rustls::Error::InvalidMessage(_) => {
            format!("{host} does not speak TLS (plain HTTP on an HTTPS endpoint?)")
        }
        _ => return e.to_string(),
    };
    format!("{words} ({e})")
}

fn error_chain(e: &reqwest::Error) -> String {
    let mut text = e.to_string();
    let mut next = e.source();
    while let Some(err) = next {
        text.push_str(": ");
        text.push_str(&err.to_string());
        next = err.source();
    }
    text
}

fn invalid(what: impl std::fmt::Display) -> ProbeError {
    ProbeError::InvalidResponse(what.to_string())
}

fn parse_health(body: &[u8]) -> Result<HealthReport, ProbeError> {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Wire {
        xks_proxy_fleet_size: u32,
        xks_proxy_vendor: String,
        xks_proxy_model: String,
        ekm_vendor: String,
        ekm_fleet_details: Vec<Ekm>,
    }
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Ekm {
        id: String,
        model: String,
        health_status: String,
    }
    let wire: Wire = serde_json::from_slice(body).map_err(invalid)?;
    if wire.xks_proxy_fleet_size == 0 {
        return Err(invalid("xksProxyFleetSize must be greater than zero"));
    }
    if !(1..=10).contains(&wire.ekm_fleet_details.len()) {
        return Err(invalid(format!(
            "ekmFleetDetails must have 1 to 10 entries, not {}",
            wire.ekm_fleet_details.len()
        )));
    }
    let key_managers = wire
        .ekm_fleet_details
        .into_iter()
        .map(|m| {
            let health = match m.health_status.as_str() {
                "ACTIVE" => KeyManagerHealth::Active,
                "DEGRADED" => KeyManagerHealth::Degraded,
                "UNAVAILABLE" => KeyManagerHealth::Unavailable,
                other => return Err(invalid(format!("unknown healthStatus {other:?}"))),
            };
            Ok(KeyManagerStatus {
                id: m.id,
                model: m.model,
                health,
            })
        })
        .collect::<Result<_, _>>()?;
    Ok(HealthReport {
        fleet_size: wire.xks_proxy_fleet_size,
        proxy_vendor: wire.xks_proxy_vendor,
        proxy_model: wire.xks_proxy_model,
        ekm_vendor: wire.ekm_vendor,
        key_managers,
    })
}

fn parse_key_metadata(body: &[u8]) -> Result<KeyMetadata, ProbeError> {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Wire {
        key_spec: String,
        key_usage: Vec<String>,
        key_status: String,
    }
    let wire: Wire = serde_json::from_slice(body).map_err(invalid)?;
    Ok(KeyMetadata {
        key_spec: wire.key_spec,
        key_usage: wire.key_usage,
        key_status: wire.key_status,
    })
}

/// The spec's external key id: 1-128 of `[A-Za-z0-9._-]`. Anything else
/// (or a dot segment) could not name a key and would change the URL path.
fn valid_external_key_id(id: &str) -> bool {
    (1..=128).contains(&id.len())
        && id != "."
        && id != ".."
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
}

fn request_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

impl ProxyProbe for HttpProxyProbe {
    async fn health(&self, target: &ProxyTarget) -> Result<HealthReport, ProbeError> {
        let body = json!({
            "requestMetadata": {
                "kmsRequestId": request_id(),
                "kmsOperation": "KmsHealthCheck",
            }
        });
        let answer = self.call(target, "/health", body).await?;
        parse_health(&answer)
    }

    async fn key_metadata(
        &self,
        target: &ProxyTarget,
        external_key_id: &str,
    ) -> Result<KeyMetadata, ProbeError> {
        if !valid_external_key_id(external_key_id) {
            // No proxy can serve it; do not send a request whose path it
            // would rewrite.
            return Err(ProbeError::KeyNotFound);
        }
        let body = json!({
            "requestMetadata": {
                "awsPrincipalArn": self.options.principal_arn,
                "kmsRequestId": request_id(),
                "kmsOperation": "DescribeKey",
            }
        });
        let answer = self
            .call(target, &format!("/keys/{external_key_id}/metadata"), body)
            .await?;
        parse_key_metadata(&answer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_rejects_what_the_spec_forbids() {
        let ok =
            br#"{"xksProxyFleetSize":2,"xksProxyVendor":"v","xksProxyModel":"m","ekmVendor":"e",
            "ekmFleetDetails":[{"id":"a","model":"x","healthStatus":"DEGRADED"}]}"#;
        let report = parse_health(ok).expect("valid");
        assert_eq!(report.key_managers[0].health, KeyManagerHealth::Degraded);
        for bad in [
            &br#"{"xksProxyFleetSize":0,"xksProxyVendor":"v","xksProxyModel":"m","ekmVendor":"e","ekmFleetDetails":[{"id":"a","model":"x","healthStatus":"ACTIVE"}]}"#[..],
            br#"{"xksProxyFleetSize":1,"xksProxyVendor":"v","xksProxyModel":"m","ekmVendor":"e","ekmFleetDetails":[]}"#,
            br#"{"xksProxyFleetSize":1,"xksProxyVendor":"v","xksProxyModel":"m","ekmVendor":"e","ekmFleetDetails":[{"id":"a","model":"x","healthStatus":"OK"}]}"#,
            br#"{"xksProxyFleetSize":-1}"#,
            b"not json",
        ] {
            assert!(matches!(parse_health(bad), Err(ProbeError::InvalidResponse(_))));
        }
    }

    #[test]
    fn external_key_ids_follow_the_spec() {
        assert!(valid_external_key_id("key-1_a.b"));
        for bad in ["", ".", "..", "a/b", "a%2Fb", &"k".repeat(129)] {
            assert!(!valid_external_key_id(bad), "{bad}");
        }
    }
}
