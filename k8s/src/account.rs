//! Accounts: a namespace is an AWS account, with a 12-digit account id that ARNs carry.
//!
//! The id is the Namespace's annotation `kubekms.io/account-id` when it holds exactly 12
//! digits, and otherwise [`kms_core::derive_account_id`] of the namespace's name (an
//! annotation that is not 12 digits is reported and ignored). The operator writes it into
//! `status.accountId` and the ARNs of KmsKeys and KmsAliases; kubekms-server maps the
//! account of an ARN back to its namespace. Two namespaces that claim one account id (two
//! annotations, or an annotation equal to another namespace's derived id) make that
//! account ambiguous: no ARN of it resolves, and [`Accounts::problems`] reports it.
//!
//! Pure: built from Namespace objects that a reflector holds.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use k8s_openapi::api::core::v1::Namespace;
use kms_core::{derive_account_id, is_account_id};

/// The Namespace annotation that sets the namespace's account id (12 digits).
pub const ANNOTATION_ACCOUNT_ID: &str = "kubekms.io/account-id";

/// Something wrong with the account ids of the cluster. Names and ids only.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, thiserror::Error)]
pub enum AccountProblem {
    /// An annotation that is not 12 digits: the derived id is used instead.
    #[error(
        "namespace {namespace}: annotation {ANNOTATION_ACCOUNT_ID} is not 12 digits; the derived account id {derived} is used"
    )]
    InvalidAnnotation {
        /// The namespace.
        namespace: String,
        /// The id used instead.
        derived: String,
    },
    /// Several namespaces claim one account id: no ARN of that account resolves.
    #[error(
        "account id {account} is claimed by namespaces {}; no ARN of that account resolves until one of them changes its {ANNOTATION_ACCOUNT_ID} annotation",
        namespaces.join(", ")
    )]
    Conflict {
        /// The account id.
        account: String,
        /// The namespaces claiming it, sorted.
        namespaces: Vec<String>,
    },
}

/// The account id of the namespace `name` with these annotations, and the problem with its
/// annotation if there is one.
#[must_use]
pub fn account_id(
    name: &str,
    annotations: Option<&BTreeMap<String, String>>,
) -> (String, Option<AccountProblem>) {
    match annotations.and_then(|a| a.get(ANNOTATION_ACCOUNT_ID)) {
        Some(value) if is_account_id(value.trim()) => (value.trim().to_owned(), None),
        Some(_) => {
            let derived = derive_account_id(name);
            (
                derived.clone(),
                Some(AccountProblem::InvalidAnnotation {
                    namespace: name.to_owned(),
                    derived,
                }),
            )
        }
        None => (derive_account_id(name), None),
    }
}

/// The account id of a Namespace object.
#[must_use]
pub fn account_id_of(namespace: &Namespace) -> (String, Option<AccountProblem>) {
    account_id(
        namespace.metadata.name.as_deref().unwrap_or_default(),
        namespace.metadata.annotations.as_ref(),
    )
}

/// Every known namespace's account id, and the way back from an account id to its one
/// namespace.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Accounts {
    by_namespace: HashMap<String, String>,
    by_account: HashMap<String, String>,
    problems: BTreeSet<AccountProblem>,
}

impl Accounts {
    /// The accounts of these namespaces (a reflector's contents).
    pub fn from_namespaces<'a>(namespaces: impl IntoIterator<Item = &'a Namespace>) -> Self {
        Self::from_pairs(namespaces.into_iter().filter_map(|ns| {
            let name = ns.metadata.name.as_deref()?;
            Some((name, ns.metadata.annotations.as_ref()))
        }))
    }

    /// The accounts of namespaces given by name and annotations.
    pub fn from_pairs<'a>(
        namespaces: impl IntoIterator<Item = (&'a str, Option<&'a BTreeMap<String, String>>)>,
    ) -> Self {
        let mut accounts = Self::default();
        let mut claims: HashMap<String, Vec<String>> = HashMap::new();
        for (name, annotations) in namespaces {
            let (account, problem) = account_id(name, annotations);
            if let Some(problem) = problem {
                accounts.problems.insert(problem);
            }
            claims
                .entry(account.clone())
                .or_default()
                .push(name.to_owned());
            accounts.by_namespace.insert(name.to_owned(), account);
        }
        for (account, mut namespaces) in claims {
            if namespaces.len() == 1 {
                if let Some(namespace) = namespaces.pop() {
                    accounts.by_account.insert(account, namespace);
                }
            } else {
                namespaces.sort();
                namespaces.dedup();
                accounts.problems.insert(AccountProblem::Conflict {
                    account,
                    namespaces,
                });
            }
        }
        accounts
    }

    /// The account id of a namespace: as its Namespace object says, or derived from the
    /// name for a namespace not (yet) known.
    #[must_use]
    pub fn account_of(&self, namespace: &str) -> String {
        self.by_namespace
            .get(namespace)
            .cloned()
            .unwrap_or_else(|| derive_account_id(namespace))
    }

    /// The one namespace whose account id this is; `None` for an unknown or ambiguous
    /// account.
    #[must_use]
    pub fn namespace_of(&self, account: &str) -> Option<&str> {
        self.by_account.get(account).map(String::as_str)
    }

    /// Whether the namespace is known.
    #[must_use]
    pub fn knows(&self, namespace: &str) -> bool {
        self.by_namespace.contains_key(namespace)
    }

    /// Invalid annotations and conflicts, sorted.
    pub fn problems(&self) -> impl Iterator<Item = &AccountProblem> {
        self.problems.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn annotated(value: &str) -> BTreeMap<String, String> {
        BTreeMap::from([(ANNOTATION_ACCOUNT_ID.to_owned(), value.to_owned())])
    }

    #[test]
    fn annotation_or_derived() {
        assert_eq!(
            account_id("team-a", Some(&annotated("123456789012"))),
            ("123456789012".to_owned(), None)
        );
        assert_eq!(
            account_id("team-a", None),
            (derive_account_id("team-a"), None)
        );
        for bad in ["12345", "1234567890123", "12345678901x", ""] {
            let (id, problem) = account_id("team-a", Some(&annotated(bad)));
            assert_eq!(id, derive_account_id("team-a"), "{bad}");
            assert!(
                matches!(problem, Some(AccountProblem::InvalidAnnotation { .. })),
                "{bad}"
            );
        }
    }

    #[test]
    fn conflicting_claims_resolve_to_neither() {
        let claimed = annotated("123456789012");
        let steals_derived = annotated(&derive_account_id("team-c"));
        let accounts = Accounts::from_pairs([
            ("team-a", Some(&claimed)),
            ("team-b", Some(&claimed)),
            ("team-c", None),
            ("team-d", Some(&steals_derived)),
            ("team-e", None),
        ]);
        assert_eq!(accounts.namespace_of("123456789012"), None);
        assert_eq!(accounts.namespace_of(&derive_account_id("team-c")), None);
        assert_eq!(
            accounts.namespace_of(&derive_account_id("team-e")),
            Some("team-e")
        );
        assert_eq!(accounts.account_of("team-a"), "123456789012");
        assert_eq!(accounts.account_of("unknown"), derive_account_id("unknown"));
        assert_eq!(accounts.namespace_of(&derive_account_id("unknown")), None);
        let problems: Vec<String> = accounts.problems().map(ToString::to_string).collect();
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems[0].contains("team-a, team-b"), "{problems:?}");
        assert!(problems[1].contains("team-c, team-d"), "{problems:?}");
    }
}
