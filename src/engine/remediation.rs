//! What a user should do about each KMS `ConnectionErrorCode`.

/// A sentence telling the user what the code means and what to fix.
pub fn connection_error_advice(code: &str) -> &'static str {
    match code {
        "INVALID_CREDENTIALS" => {
            "the proxy rejected the credential: make the proxy accept the access key id and secret in the credentials Secret (or fix the Secret)"
        }
        "XKS_PROXY_ACCESS_DENIED" => {
            "the proxy's authorization policy denied KMS: allow this key store's requests in the proxy's access policy"
        }
        "XKS_PROXY_INVALID_CONFIGURATION" => {
            "the proxy answered but does not serve spec.proxy.uriPath: check the path and the proxy's configuration"
        }
        "XKS_PROXY_INVALID_RESPONSE" => {
            "the proxy's answer is not a valid XKS response: check the proxy's version and logs"
        }
        "XKS_PROXY_INVALID_TLS_CONFIGURATION" => {
            "TLS with the proxy failed: its certificate must be issued by a public CA for the uriEndpoint host name"
        }
        "XKS_PROXY_NOT_REACHABLE" => {
            "KMS cannot reach the proxy: check DNS, firewalls and that the proxy is running at uriEndpoint"
        }
        "XKS_PROXY_TIMED_OUT" => {
            "the proxy did not answer in time (KMS waits about 250 ms): check the proxy's latency and its key manager"
        }
        "XKS_VPC_ENDPOINT_SERVICE_INVALID_CONFIGURATION" => {
            "the VPC endpoint service is misconfigured: check acceptance settings, the private DNS name and that KMS's principal is allowed"
        }
        "XKS_VPC_ENDPOINT_SERVICE_NOT_FOUND" => {
            "KMS cannot find the VPC endpoint service: check spec.proxy.vpcEndpointService.name and owner"
        }
        "NETWORK_ERRORS" => {
            "network errors between KMS and the proxy: check the proxy's network path; the store is retried"
        }
        "INTERNAL_ERROR" => {
            "KMS reported an internal error: the operator retries; contact AWS support if it persists"
        }
        _ => "see the AWS KMS documentation for this connection error code",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_documented_code_has_specific_advice() {
        let generic = connection_error_advice("SOMETHING_NEW");
        for code in [
            "INTERNAL_ERROR",
            "NETWORK_ERRORS",
            "INVALID_CREDENTIALS",
            "XKS_PROXY_ACCESS_DENIED",
            "XKS_PROXY_INVALID_CONFIGURATION",
            "XKS_PROXY_INVALID_RESPONSE",
            "XKS_PROXY_INVALID_TLS_CONFIGURATION",
            "XKS_PROXY_NOT_REACHABLE",
            "XKS_PROXY_TIMED_OUT",
            "XKS_VPC_ENDPOINT_SERVICE_INVALID_CONFIGURATION",
            "XKS_VPC_ENDPOINT_SERVICE_NOT_FOUND",
        ] {
            assert_ne!(connection_error_advice(code), generic, "{code}");
        }
    }
}
