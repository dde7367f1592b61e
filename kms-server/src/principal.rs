//! Who is calling: the Kubernetes identity a request acts as, established by authentication
//! (static credentials or an STS session) and used by resolution (the caller's account is
//! its namespace), authorization and the audit record.

use time::OffsetDateTime;

/// The username prefix of ServiceAccounts.
pub const SERVICE_ACCOUNT_PREFIX: &str = "system:serviceaccount:";

/// How the caller authenticated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CredentialKind {
    /// Long-term credentials from the static credentials file.
    Static,
    /// Short-term credentials issued by this server's STS; expire at the time given.
    Session {
        /// When the session ends.
        expires_at: OffsetDateTime,
    },
}

/// The authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The Kubernetes username (`system:serviceaccount:<ns>:<name>` for a ServiceAccount).
    pub username: String,
    /// The Kubernetes uid of the user, when known (TokenReview gives it).
    pub uid: Option<String>,
    /// The Kubernetes groups.
    pub groups: Vec<String>,
    /// The caller's account: the namespace in which bare key ids and aliases resolve.
    pub namespace: String,
    /// The access key id the request was signed with (not secret; it is in the
    /// Authorization header and in CloudTrail records).
    pub access_key_id: String,
    /// Static or session credentials.
    pub credential: CredentialKind,
}

impl Principal {
    /// The groups Kubernetes gives a ServiceAccount.
    #[must_use]
    pub fn service_account_groups(namespace: &str) -> Vec<String> {
        vec![
            "system:serviceaccounts".to_owned(),
            format!("system:serviceaccounts:{namespace}"),
            "system:authenticated".to_owned(),
        ]
    }

    /// The (namespace, name) of a ServiceAccount username.
    #[must_use]
    pub fn parse_service_account(username: &str) -> Option<(&str, &str)> {
        let rest = username.strip_prefix(SERVICE_ACCOUNT_PREFIX)?;
        let (namespace, name) = rest.split_once(':')?;
        let valid = |part: &str| {
            !part.is_empty()
                && part.len() <= 253
                && part
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        };
        (valid(namespace) && valid(name)).then_some((namespace, name))
    }

    /// Whether the caller is a ServiceAccount.
    #[must_use]
    pub fn is_service_account(&self) -> bool {
        Self::parse_service_account(&self.username).is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_account_usernames() {
        assert_eq!(
            Principal::parse_service_account("system:serviceaccount:team-a:app"),
            Some(("team-a", "app"))
        );
        for bad in [
            "system:serviceaccount:team-a",
            "system:serviceaccount::app",
            "system:serviceaccount:Team:app",
            "alice",
            "system:serviceaccount:a:b:c",
        ] {
            assert_eq!(Principal::parse_service_account(bad), None, "{bad}");
        }
    }
}
