//! SigV4 verification for the proxy emulator (spec, Appendix A).
//!
//! aws-sigv4 only signs, so verifying means re-signing what was received
//! (method, path and query, exactly the headers named in `SignedHeaders`,
//! body) with the secret the access key id names, at the request's own
//! `X-Amz-Date` and region, and comparing signatures in constant time.
//! Reasons returned on failure never contain a secret.

use std::time::{Duration, SystemTime};

use aws_credential_types::Credentials;
use aws_sigv4::http_request::{SignableBody, SignableRequest, SigningSettings, sign};
use aws_sigv4::sign::v4;
use aws_smithy_runtime_api::client::identity::Identity;
use axum::http::HeaderMap;
use axum::http::header::AUTHORIZATION;

use super::{ProxyCredentialConfig, SIGNING_SERVICE};

const ALGORITHM: &str = "AWS4-HMAC-SHA256";
/// Spec: requests more than 5 minutes in the past or future fail authentication.
pub(super) const MAX_CLOCK_SKEW: Duration = Duration::from_secs(5 * 60);

/// The parts of `Authorization` needed to verify.
struct AuthorizationHeader<'a> {
    access_key_id: &'a str,
    scope_date: &'a str,
    region: &'a str,
    service: &'a str,
    signed_headers: Vec<String>,
    signature: &'a str,
}

fn parse_authorization(value: &str) -> Result<AuthorizationHeader<'_>, &'static str> {
    let rest = value
        .strip_prefix(ALGORITHM)
        .and_then(|r| r.strip_prefix(' '))
        .ok_or("Authorization is not AWS4-HMAC-SHA256")?;
    let (mut credential, mut signed_headers, mut signature) = (None, None, None);
    for part in rest.split(',') {
        let Some((name, val)) = part.trim().split_once('=') else {
            return Err("malformed Authorization component");
        };
        match name {
            "Credential" => credential = Some(val),
            "SignedHeaders" => signed_headers = Some(val),
            "Signature" => signature = Some(val),
            _ => return Err("unknown Authorization component"),
        }
    }
    let credential = credential.ok_or("Authorization has no Credential")?;
    let signed_headers = signed_headers.ok_or("Authorization has no SignedHeaders")?;
    let signature = signature.ok_or("Authorization has no Signature")?;
    let scope: Vec<&str> = credential.split('/').collect();
    let [access_key_id, scope_date, region, service, terminator] = scope[..] else {
        return Err("malformed credential scope");
    };
    if terminator != "aws4_request" || access_key_id.is_empty() || region.is_empty() {
        return Err("malformed credential scope");
    }
    let signed_headers: Vec<String> = signed_headers
        .split(';')
        .map(|h| h.trim().to_ascii_lowercase())
        .collect();
    if signed_headers.iter().any(String::is_empty) {
        return Err("malformed SignedHeaders");
    }
    Ok(AuthorizationHeader {
        access_key_id,
        scope_date,
        region,
        service,
        signed_headers,
        signature,
    })
}

fn parse_amz_date(value: &str) -> Option<SystemTime> {
    let civil = jiff::civil::DateTime::strptime("%Y%m%dT%H%M%SZ", value).ok()?;
    let zoned = civil.to_zoned(jiff::tz::TimeZone::UTC).ok()?;
    Some(SystemTime::from(zoned.timestamp()))
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Verifies a request; on success returns the access key id that signed it.
pub(super) fn verify<'c>(
    method: &str,
    path_and_query: &str,
    headers: &HeaderMap,
    body: &[u8],
    credentials: &'c [ProxyCredentialConfig],
    now: SystemTime,
) -> Result<&'c str, &'static str> {
    let authorization = headers
        .get(AUTHORIZATION)
        .ok_or("missing Authorization header")?
        .to_str()
        .map_err(|_| "Authorization is not ASCII")?;
    let auth = parse_authorization(authorization)?;
    if auth.service != SIGNING_SERVICE {
        return Err("credential scope names another service than kms-xks-proxy");
    }
    if !auth.signed_headers.iter().any(|h| h == "host")
        || !auth.signed_headers.iter().any(|h| h == "x-amz-date")
    {
        return Err("SignedHeaders must include host and x-amz-date");
    }
    let amz_date = headers
        .get("x-amz-date")
        .and_then(|v| v.to_str().ok())
        .ok_or("missing X-Amz-Date header")?;
    let signed_at = parse_amz_date(amz_date).ok_or("malformed X-Amz-Date")?;
    if !amz_date.starts_with(auth.scope_date) || auth.scope_date.len() != 8 {
        return Err("credential scope date does not match X-Amz-Date");
    }
    let skew = now
        .duration_since(signed_at)
        .or_else(|_| signed_at.duration_since(now))
        .unwrap_or(Duration::MAX);
    if skew > MAX_CLOCK_SKEW {
        return Err("X-Amz-Date is more than 5 minutes from the proxy clock");
    }
    // Several secrets may share one access key id while a secret rotates
    // under an unchanged id: any of them may have signed.
    let candidates: Vec<&ProxyCredentialConfig> = credentials
        .iter()
        .filter(|c| c.access_key_id == auth.access_key_id)
        .collect();
    if candidates.is_empty() {
        return Err("unknown access key id");
    }

    // Exactly the signed headers (x-amz-date is added by the signer from the time).
    let mut signed_values: Vec<(&str, &str)> = Vec::new();
    let mut host = None;
    for name in auth.signed_headers.iter().filter(|h| *h != "x-amz-date") {
        let mut found = false;
        for value in headers.get_all(name.as_str()) {
            let value = value.to_str().map_err(|_| "signed header is not ASCII")?;
            if name == "host" {
                host = Some(value);
            }
            signed_values.push((name.as_str(), value));
            found = true;
        }
        if !found {
            return Err("a signed header is missing from the request");
        }
    }
    let host = host.ok_or("missing Host header")?;
    let mut settings = SigningSettings::default();
    // Sign exactly what the client listed, even headers the SDK would skip.
    settings.excluded_headers = None;
    for credential in candidates {
        let signable = SignableRequest::new(
            method,
            format!("https://{host}{path_and_query}"),
            signed_values.iter().copied(),
            SignableBody::Bytes(body),
        )
        .map_err(|_| "request URI cannot be canonicalized")?;
        let identity: Identity = Credentials::new(
            credential.access_key_id.clone(),
            credential.secret_access_key.clone(),
            None,
            None,
            "xks-proxy-emulator",
        )
        .into();
        let params = v4::SigningParams::builder()
            .identity(&identity)
            .region(auth.region)
            .name(SIGNING_SERVICE)
            .time(signed_at)
            .settings(settings.clone())
            .build()
            .map_err(|_| "cannot build signing parameters")?
            .into();
        let expected = sign(signable, &params).map_err(|_| "request cannot be canonicalized")?;
        if constant_time_eq(expected.signature().as_bytes(), auth.signature.as_bytes()) {
            return Ok(credential.access_key_id.as_str());
        }
    }
    Err("signature does not match")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_spec_example_header() {
        let h = "AWS4-HMAC-SHA256 Credential=MUBSXM6K3KMXHN6RRCXI7TWQH4NU76HYFKRSESPMTSTIBADXQQXQ/20211009/us-west-2/kms-xks-proxy/aws4_request, SignedHeaders=host;x-amz-date, Signature=1164eaa8e79eacaa9c0df54aa42f3b300380d14bedfc08e3b319648d4abfff66";
        let a = parse_authorization(h).unwrap();
        assert_eq!(a.region, "us-west-2");
        assert_eq!(a.service, "kms-xks-proxy");
        assert_eq!(a.scope_date, "20211009");
        assert_eq!(a.signed_headers, vec!["host", "x-amz-date"]);
    }

    #[test]
    fn rejects_malformed_headers() {
        assert!(parse_authorization("Basic abc").is_err());
        assert!(parse_authorization("AWS4-HMAC-SHA256 Credential=A/B, Signature=x").is_err());
        assert!(parse_amz_date("2021-10-09T00:00:00Z").is_none());
        assert!(parse_amz_date("20211009T000000Z").is_some());
    }

    #[test]
    fn constant_time_eq_compares_fully() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }
}
