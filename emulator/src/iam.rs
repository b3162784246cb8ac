//! IAM names the emulator needs: account ids, ARNs of users and roles, the
//! unique ids IAM gives principals, and the default identity.

use sha2::{Digest, Sha256};

/// The user every request with unknown credentials acts as.
pub const DEFAULT_IDENTITY_USER: &str = "emulator";

/// `arn:aws:iam::<account>:user/emulator`.
pub fn default_identity_arn(account_id: &str) -> String {
    format!("arn:aws:iam::{account_id}:user/{DEFAULT_IDENTITY_USER}")
}

/// Twelve decimal digits.
pub fn is_account_id(s: &str) -> bool {
    s.len() == 12 && s.bytes().all(|b| b.is_ascii_digit())
}

/// A plausible Region name (`us-east-1`, `eu-west-1`, `local`): lowercase
/// letters, digits and dashes, 1-32 characters.
pub fn is_region(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 32
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// The parts of `arn:PARTITION:SERVICE:REGION:ACCOUNT:RESOURCE`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Arn<'a> {
    pub partition: &'a str,
    pub service: &'a str,
    pub region: &'a str,
    pub account: &'a str,
    pub resource: &'a str,
}

pub fn parse_arn(s: &str) -> Option<Arn<'_>> {
    let mut parts = s.splitn(6, ':');
    if parts.next()? != "arn" {
        return None;
    }
    let arn = Arn {
        partition: parts.next()?,
        service: parts.next()?,
        region: parts.next()?,
        account: parts.next()?,
        resource: parts.next()?,
    };
    (!arn.partition.is_empty() && !arn.service.is_empty() && !arn.resource.is_empty())
        .then_some(arn)
}

/// An IAM role ARN: `arn:aws:iam::ACCOUNT:role/[PATH/]NAME`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoleArn {
    pub partition: String,
    pub account: String,
    /// The last segment of the resource (a role's path is not part of its
    /// assumed-role ARN).
    pub name: String,
}

pub fn parse_role_arn(s: &str) -> Option<RoleArn> {
    let arn = parse_arn(s)?;
    let path_and_name = arn.resource.strip_prefix("role/")?;
    let name = path_and_name.rsplit('/').next()?;
    let valid = arn.service == "iam"
        && arn.region.is_empty()
        && is_account_id(arn.account)
        && !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "+=,.@_-".contains(c));
    valid.then(|| RoleArn {
        partition: arn.partition.to_string(),
        account: arn.account.to_string(),
        name: name.to_string(),
    })
}

/// A stable IAM-style unique id (`AROA...`, `AIDA...`): the prefix and 17
/// characters derived from `seed`, so the same principal always gets the
/// same id.
pub fn unique_id(prefix: &str, seed: &str) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let digest = Sha256::digest(seed.as_bytes());
    let tail: String = digest
        .iter()
        .take(17)
        .map(|b| ALPHABET[usize::from(b % 32)] as char)
        .collect();
    format!("{prefix}{tail}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn role_arns() {
        let r = parse_role_arn("arn:aws:iam::222233334444:role/xks-operator").unwrap();
        assert_eq!(
            (r.account.as_str(), r.name.as_str()),
            ("222233334444", "xks-operator")
        );
        let r = parse_role_arn("arn:aws:iam::222233334444:role/team/a/ops").unwrap();
        assert_eq!(r.name, "ops");
        for bad in [
            "arn:aws:iam:222233334444:role/x",
            "arn:aws:iam::22223333444:role/x",
            "arn:aws:iam::222233334444:user/x",
            "arn:aws:sts::222233334444:role/x",
            "arn:aws:iam:us-east-1:222233334444:role/x",
            "arn:aws:iam::222233334444:role/",
            "not-an-arn",
        ] {
            assert!(parse_role_arn(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn unique_ids_are_stable() {
        let a = unique_id("AROA", "arn:aws:iam::222233334444:role/x");
        assert_eq!(a.len(), 21);
        assert_eq!(a, unique_id("AROA", "arn:aws:iam::222233334444:role/x"));
        assert_ne!(a, unique_id("AROA", "arn:aws:iam::222233334444:role/y"));
    }
}
