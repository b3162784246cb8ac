//! Who sent an AWS request, as far as the emulator looks: the access key
//! id, Region and service of the SigV4 credential scope
//! (`Credential=AKID/yyyymmdd/REGION/SERVICE/aws4_request` in the
//! `Authorization` header, or `X-Amz-Credential` in a presigned query), and
//! the session token of temporary credentials. Signatures are not verified.

use axum::http::HeaderMap;
use axum::http::header::AUTHORIZATION;

use crate::iam;

/// What the credential scope and headers of one request say.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct RequestAuth {
    pub access_key_id: Option<String>,
    pub region: Option<String>,
    pub service: Option<String>,
    /// `X-Amz-Security-Token` (temporary credentials only).
    pub session_token: Option<String>,
}

impl std::fmt::Debug for RequestAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequestAuth")
            .field("access_key_id", &self.access_key_id)
            .field("region", &self.region)
            .field("service", &self.service)
            .field(
                "session_token",
                &self.session_token.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

/// `AKID/DATE/REGION/SERVICE/aws4_request` (SigV4) or
/// `AKID/DATE/SERVICE/aws4_request` (SigV4a, whose Region is in
/// `X-Amz-Region-Set`).
fn parse_scope(credential: &str) -> (Option<&str>, Option<&str>, Option<&str>) {
    let parts: Vec<&str> = credential.split('/').collect();
    match parts[..] {
        [akid, _date, region, service, "aws4_request"] => (Some(akid), Some(region), Some(service)),
        [akid, _date, service, "aws4_request"] => (Some(akid), None, Some(service)),
        _ => (None, None, None),
    }
}

/// The `Credential=` value of an `Authorization` header.
fn credential_of(authorization: &str) -> Option<&str> {
    let (algorithm, rest) = authorization.trim().split_once(char::is_whitespace)?;
    if !algorithm.starts_with("AWS4-") {
        return None;
    }
    rest.split(',')
        .filter_map(|part| part.trim().split_once('='))
        .find(|(name, _)| *name == "Credential")
        .map(|(_, value)| value.trim())
}

fn sane_key_id(s: &str) -> bool {
    !s.is_empty() && s.len() <= 128 && s.bytes().all(|b| b.is_ascii_alphanumeric())
}

impl RequestAuth {
    /// Read the request's headers and query string (for presigned requests).
    pub fn from_request(headers: &HeaderMap, query: Option<&str>) -> Self {
        let header = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let query_params: Vec<(String, String)> = query
            .map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
            .unwrap_or_default();
        let query_param = |name: &str| {
            query_params
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
        };
        let credential = header(AUTHORIZATION.as_str())
            .and_then(|a| credential_of(&a).map(str::to_owned))
            .or_else(|| query_param("X-Amz-Credential"));
        let (akid, region, service) = credential
            .as_deref()
            .map(parse_scope)
            .unwrap_or((None, None, None));
        let region = region.map(str::to_owned).or_else(|| {
            header("x-amz-region-set")
                .and_then(|set| set.split(',').next().map(|r| r.trim().to_owned()))
        });
        Self {
            access_key_id: akid.filter(|a| sane_key_id(a)).map(str::to_owned),
            region: region.filter(|r| iam::is_region(r)),
            service: service.map(str::to_owned),
            session_token: header("x-amz-security-token")
                .or_else(|| query_param("X-Amz-Security-Token"))
                .filter(|t| !t.is_empty()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn auth(value: &str) -> RequestAuth {
        let mut headers = HeaderMap::new();
        headers.insert(AUTHORIZATION, HeaderValue::from_str(value).unwrap());
        RequestAuth::from_request(&headers, None)
    }

    #[test]
    fn reads_the_credential_scope() {
        let a = auth(
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20240101/eu-west-1/kms/aws4_request, SignedHeaders=host;x-amz-date, Signature=abc",
        );
        assert_eq!(a.access_key_id.as_deref(), Some("AKIDEXAMPLE"));
        assert_eq!(a.region.as_deref(), Some("eu-west-1"));
        assert_eq!(a.service.as_deref(), Some("kms"));
        assert_eq!(a.session_token, None);
    }

    #[test]
    fn tolerates_missing_or_odd_headers() {
        assert_eq!(
            RequestAuth::from_request(&HeaderMap::new(), None),
            RequestAuth::default()
        );
        assert_eq!(auth("Basic dXNlcjpwYXNz"), RequestAuth::default());
        let a = auth("AWS4-HMAC-SHA256 Credential=A/B/C, Signature=x");
        assert_eq!(a.access_key_id, None);
        let a =
            auth("AWS4-HMAC-SHA256 Credential=AKID/20240101/EU WEST/kms/aws4_request, Signature=x");
        assert_eq!((a.access_key_id.as_deref(), a.region), (Some("AKID"), None));
    }

    #[test]
    fn presigned_queries_and_sigv4a() {
        let a = RequestAuth::from_request(
            &HeaderMap::new(),
            Some(
                "Action=GetCallerIdentity&X-Amz-Credential=AKID%2F20240101%2Fus-west-2%2Fsts%2Faws4_request&X-Amz-Security-Token=tok",
            ),
        );
        assert_eq!(a.region.as_deref(), Some("us-west-2"));
        assert_eq!(a.service.as_deref(), Some("sts"));
        assert_eq!(a.session_token.as_deref(), Some("tok"));
        let mut headers = HeaderMap::new();
        headers.insert(
            AUTHORIZATION,
            HeaderValue::from_static(
                "AWS4-ECDSA-P256-SHA256 Credential=AKID/20240101/sts/aws4_request, Signature=x",
            ),
        );
        headers.insert("x-amz-region-set", HeaderValue::from_static("ap-south-1"));
        let a = RequestAuth::from_request(&headers, None);
        assert_eq!(a.region.as_deref(), Some("ap-south-1"));
    }

    #[test]
    fn debug_hides_the_session_token() {
        let a = RequestAuth {
            session_token: Some("secret-token".into()),
            ..RequestAuth::default()
        };
        assert!(!format!("{a:?}").contains("secret-token"));
    }
}
