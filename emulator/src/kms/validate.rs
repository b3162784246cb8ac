//! Input constraints of the KMS model (lengths, patterns, enums), reported
//! the way KMS does: one `ValidationException` listing every violation.
//! Values of sensitive members are never echoed back.

use std::sync::LazyLock;

use regex::Regex;

use super::error::KmsError;

static URI_ENDPOINT: LazyLock<Regex> = LazyLock::new(|| re(r"^https://[a-zA-Z0-9.-]+$"));
static URI_PATH: LazyLock<Regex> =
    LazyLock::new(|| re(r"^(/[a-zA-Z0-9/_-]+/kms/xks/v\d{1,2})$|^(/kms/xks/v\d{1,2})$"));
static VPC_SERVICE: LazyLock<Regex> =
    LazyLock::new(|| re(r"^(com|eu)\.amazonaws\.vpce\.([a-z]+-){2,3}\d+\.vpce-svc-[0-9a-z]+$"));
static ACCOUNT_ID: LazyLock<Regex> = LazyLock::new(|| re(r"^[0-9]{12}$"));
static ACCESS_KEY_ID: LazyLock<Regex> = LazyLock::new(|| re(r"^[A-Z2-7]+$"));
static SECRET: LazyLock<Regex> = LazyLock::new(|| re(r"^[a-zA-Z0-9/+=]+$"));
static XKS_KEY_ID: LazyLock<Regex> = LazyLock::new(|| re(r"^[a-zA-Z0-9\-_.]+$"));

fn re(pattern: &str) -> Regex {
    // The patterns are constants of this file: a failure is a programming error.
    Regex::new(pattern).unwrap_or_else(|e| panic!("bad built-in pattern {pattern}: {e}"))
}

/// Collects violations; `finish` turns them into one ValidationException.
#[derive(Default)]
pub struct Validator {
    errors: Vec<String>,
}

impl Validator {
    pub fn new() -> Self {
        Self::default()
    }

    fn push(&mut self, value: Option<&str>, member: &str, constraint: String) {
        let shown = match value {
            Some(v) => format!("Value '{v}' at '{member}'"),
            None => format!("Value at '{member}'"),
        };
        self.errors.push(format!(
            "{shown} failed to satisfy constraint: {constraint}"
        ));
    }

    /// Length in characters, as KMS counts it.
    pub fn length(
        &mut self,
        member: &str,
        value: &str,
        min: usize,
        max: usize,
        sensitive: bool,
    ) -> bool {
        let shown = (!sensitive).then_some(value);
        let n = value.chars().count();
        if n < min {
            self.push(
                shown,
                member,
                format!("Member must have length greater than or equal to {min}"),
            );
            false
        } else if n > max {
            self.push(
                shown,
                member,
                format!("Member must have length less than or equal to {max}"),
            );
            false
        } else {
            true
        }
    }

    fn pattern(&mut self, member: &str, value: &str, re: &Regex, sensitive: bool) {
        if !re.is_match(value) {
            let shown = (!sensitive).then_some(value);
            self.push(
                shown,
                member,
                format!(
                    "Member must satisfy regular expression pattern: {}",
                    re.as_str()
                ),
            );
        }
    }

    pub fn one_of(&mut self, member: &str, value: &str, allowed: &[&str]) {
        if !allowed.contains(&value) {
            self.push(
                Some(value),
                member,
                format!(
                    "Member must satisfy enum value set: [{}]",
                    allowed.join(", ")
                ),
            );
        }
    }

    pub fn range(&mut self, member: &str, value: i64, min: i64, max: i64) {
        if value < min {
            self.push(
                Some(&value.to_string()),
                member,
                format!("Member must have value greater than or equal to {min}"),
            );
        } else if value > max {
            self.push(
                Some(&value.to_string()),
                member,
                format!("Member must have value less than or equal to {max}"),
            );
        }
    }

    pub fn store_id(&mut self, member: &str, value: &str) {
        self.length(member, value, 1, 64, false);
    }

    pub fn store_name(&mut self, member: &str, value: &str) {
        self.length(member, value, 1, 256, false);
    }

    pub fn uri_endpoint(&mut self, value: &str) {
        if self.length("xksProxyUriEndpoint", value, 10, 128, false) {
            self.pattern("xksProxyUriEndpoint", value, &URI_ENDPOINT, false);
        }
    }

    pub fn uri_path(&mut self, value: &str) {
        if self.length("xksProxyUriPath", value, 10, 128, false) {
            self.pattern("xksProxyUriPath", value, &URI_PATH, false);
        }
    }

    /// An empty service name is allowed by Update (it clears the field when
    /// switching to public connectivity); the caller decides.
    pub fn vpc_service_name(&mut self, value: &str) {
        if self.length("xksProxyVpcEndpointServiceName", value, 20, 64, false) {
            self.pattern("xksProxyVpcEndpointServiceName", value, &VPC_SERVICE, false);
        }
    }

    pub fn vpc_service_owner(&mut self, value: &str) {
        self.pattern("xksProxyVpcEndpointServiceOwner", value, &ACCOUNT_ID, false);
    }

    pub fn access_key_id(&mut self, value: &str) {
        let member = "xksProxyAuthenticationCredential.accessKeyId";
        if self.length(member, value, 20, 30, true) {
            self.pattern(member, value, &ACCESS_KEY_ID, true);
        }
    }

    pub fn secret(&mut self, value: &str) {
        let member = "xksProxyAuthenticationCredential.rawSecretAccessKey";
        if self.length(member, value, 43, 64, true) {
            self.pattern(member, value, &SECRET, true);
        }
    }

    pub fn xks_key_id(&mut self, value: &str) {
        if self.length("xksKeyId", value, 1, 128, false) {
            self.pattern("xksKeyId", value, &XKS_KEY_ID, false);
        }
    }

    pub fn marker(&mut self, value: &str) {
        self.length("marker", value, 1, 1024, false);
    }

    pub fn limit(&mut self, value: i64) {
        self.range("limit", value, 1, 1000);
    }

    /// A semantic rule that is not a model constraint (required together,
    /// forbidden together): KMS reports these as plain messages.
    pub fn rule(&mut self, message: impl Into<String>) {
        self.errors.push(message.into());
    }

    pub fn finish(self) -> Result<(), KmsError> {
        match self.errors.len() {
            0 => Ok(()),
            1 => Err(KmsError::validation(format!(
                "1 validation error detected: {}",
                self.errors[0]
            ))),
            n => Err(KmsError::validation(format!(
                "{n} validation errors detected: {}",
                self.errors.join("; ")
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_not_echoed() {
        let mut v = Validator::new();
        v.secret("short-secret-value");
        let err = v.finish().unwrap_err();
        assert!(!err.message.contains("short-secret-value"));
        assert!(err.message.contains("rawSecretAccessKey"));
    }

    #[test]
    fn path_pattern_accepts_prefix_and_plain() {
        assert!(URI_PATH.is_match("/kms/xks/v1"));
        assert!(URI_PATH.is_match("/example/kms/xks/v12"));
        assert!(!URI_PATH.is_match("/example/kms/xks/v123"));
        assert!(!URI_PATH.is_match("example/kms/xks/v1"));
    }
}
