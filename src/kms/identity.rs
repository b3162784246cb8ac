//! Who the operator is in AWS for a store: its own identity (the standard
//! chain: IRSA, Pod Identity, environment), or an IAM role it assumes in
//! another account (`spec.roleArn`), through the AWS SDK's own
//! `AssumeRoleProvider`. The KMS client caches the role's credentials and
//! refreshes them before they expire (the SDK's identity cache); nothing
//! here signs anything.

use crate::kms::KmsError;
use aws_config::SdkConfig;
use aws_config::sts::AssumeRoleProvider;
use aws_credential_types::provider::error::CredentialsError;
use aws_sdk_kms::config::Region;
use aws_sdk_sts::error::ProvideErrorMetadata;
use std::fmt;

/// Session name of the operator's AssumeRole calls (CloudTrail shows it).
pub const SESSION_NAME: &str = "xks-operator";

/// A role to assume, with its external id. `Debug` never shows the id.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct AssumedRole {
    pub arn: String,
    external_id: Option<String>,
}

impl AssumedRole {
    pub fn new(arn: impl Into<String>, external_id: Option<String>) -> Self {
        Self {
            arn: arn.into(),
            external_id,
        }
    }

    /// The account the role (and so the store) lives in.
    pub fn account(&self) -> Option<String> {
        account_of_role(&self.arn)
    }

    /// The provider of this role's credentials, calling STS with `base`'s
    /// identity, endpoint and settings.
    pub async fn provider(&self, base: &SdkConfig, region: &str) -> AssumeRoleProvider {
        let mut builder = AssumeRoleProvider::builder(&self.arn)
            .session_name(SESSION_NAME)
            .configure(base)
            .region(Region::new(region.to_owned()));
        if let Some(id) = &self.external_id {
            builder = builder.external_id(id);
        }
        builder.build().await
    }
}

impl fmt::Debug for AssumedRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AssumedRole")
            .field("arn", &self.arn)
            .field(
                "external_id",
                &self.external_id.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

/// `arn:aws:iam::222233334444:role/name` → `222233334444`.
pub fn account_of_role(arn: &str) -> Option<String> {
    let mut parts = arn.splitn(6, ':');
    let (Some("arn"), Some(_partition), Some("iam"), Some(""), Some(account), Some(resource)) = (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) else {
        return None;
    };
    (account.len() == 12
        && account.bytes().all(|b| b.is_ascii_digit())
        && resource.starts_with("role/"))
    .then(|| account.to_owned())
}

/// The operator's own account, from STS GetCallerIdentity; `None` when STS
/// cannot be asked (claims then tell the own identity apart from roles by
/// name only, see docs/security.md).
pub async fn own_account(base: &SdkConfig) -> Option<String> {
    let sts = aws_sdk_sts::Client::new(base);
    match sts.get_caller_identity().send().await {
        Ok(me) => me.account().map(str::to_owned),
        Err(e) => {
            tracing::warn!(
                error = %aws_sdk_sts::error::DisplayErrorContext(&e),
                "GetCallerIdentity failed: the operator's own account is unknown"
            );
            None
        }
    }
}

/// The AssumeRole failure inside a KMS call's error, if that is why it
/// failed: the SDK resolves the credentials before sending, and wraps what
/// STS answered in the dispatch error.
pub fn assume_role_failure(
    role: &str,
    err: &(dyn std::error::Error + 'static),
) -> Option<KmsError> {
    let mut credentials = None;
    let mut source = Some(err);
    while let Some(e) = source {
        if let Some(c) = e.downcast_ref::<CredentialsError>() {
            credentials = Some(c);
        }
        if let Some(sts) = e.downcast_ref::<aws_sdk_sts::error::SdkError<
            aws_sdk_sts::operation::assume_role::AssumeRoleError,
        >>() && let Some(code) = sts.code()
        {
            return Some(KmsError::AssumeRole {
                role: role.to_owned(),
                code: Some(code.to_owned()),
                message: sts.message().unwrap_or_default().to_owned(),
            });
        }
        source = e.source();
    }
    credentials.map(|c| KmsError::AssumeRole {
        role: role.to_owned(),
        code: None,
        message: aws_sdk_sts::error::DisplayErrorContext(c).to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_account_is_read_from_a_role_arn_only() {
        assert_eq!(
            account_of_role("arn:aws:iam::222233334444:role/xks-operator").as_deref(),
            Some("222233334444")
        );
        assert_eq!(
            account_of_role("arn:aws-us-gov:iam::222233334444:role/path/xks").as_deref(),
            Some("222233334444")
        );
        for not_a_role in [
            "arn:aws:iam::222233334444:user/bob",
            "arn:aws:iam::2222:role/x",
            "arn:aws:sts::222233334444:assumed-role/x/y",
            "role/x",
        ] {
            assert_eq!(account_of_role(not_a_role), None, "{not_a_role}");
        }
    }

    #[test]
    fn debug_never_shows_the_external_id() {
        let role = AssumedRole::new(
            "arn:aws:iam::222233334444:role/xks-operator",
            Some("tenant-secret-id".into()),
        );
        assert!(!format!("{role:?}").contains("tenant-secret-id"));
    }
}
