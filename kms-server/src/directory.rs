//! The resolve seam: where keys come from. The Kubernetes layer implements
//! [`KeyDirectory`] over the keyring's `Arc<KeySet>` snapshots (KmsKey, KmsKeyMaterial,
//! KmsAlias, KmsGrant of every namespace); tests use [`crate::memory::MemoryDirectory`].
//! Every method is synchronous and must not block: it reads an in-memory snapshot.

use std::sync::Arc;

use kms_core::grants::{GrantConstraints, GrantOperation};
use kms_core::{Arn, KeyIdentifier, KmsKey, KmsResult};
use time::OffsetDateTime;

/// A key found by [`KeyDirectory::resolve`]: everything the request path needs about it.
#[derive(Debug)]
pub struct ResolvedKey {
    arn: Arn,
    arn_text: String,
    namespace: String,
    name: String,
    key: Arc<KmsKey>,
    served_by_plugin: bool,
}

impl ResolvedKey {
    /// A resolved key. `arn` has the key's account (the 12-digit id of its namespace);
    /// `served_by_plugin` is true while a KMS v2 plugin serves the key to kube-apiserver,
    /// which makes it unusable through this API.
    #[must_use]
    pub fn new(
        arn: Arn,
        namespace: impl Into<String>,
        name: impl Into<String>,
        key: Arc<KmsKey>,
        served_by_plugin: bool,
    ) -> Self {
        let arn_text = arn.to_string();
        Self {
            arn,
            arn_text,
            namespace: namespace.into(),
            name: name.into(),
            key,
            served_by_plugin,
        }
    }

    /// The key's ARN.
    #[must_use]
    pub fn arn(&self) -> &Arn {
        &self.arn
    }

    /// The key's ARN as text (what responses carry in `KeyId`).
    #[must_use]
    pub fn arn_text(&self) -> &str {
        &self.arn_text
    }

    /// The KmsKey's namespace.
    #[must_use]
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The KmsKey's name (the `resourceName` of RBAC checks).
    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The key with its unwrapped material.
    #[must_use]
    pub fn key(&self) -> &Arc<KmsKey> {
        &self.key
    }

    /// Whether a KMS v2 plugin serves this key to kube-apiserver.
    #[must_use]
    pub fn served_by_plugin(&self) -> bool {
        self.served_by_plugin
    }
}

/// An alias, as ListAliases reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AliasEntry {
    /// `alias/<name>`.
    pub alias_name: String,
    /// The alias ARN.
    pub alias_arn: String,
    /// The key id (not ARN) the alias points at.
    pub target_key_id: Option<String>,
    /// Creation time.
    pub creation_date: Option<OffsetDateTime>,
    /// Last change.
    pub last_updated_date: Option<OffsetDateTime>,
}

/// A grant, as ListGrants reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrantEntry {
    /// ARN of the key.
    pub key_arn: String,
    /// The grant id.
    pub grant_id: String,
    /// The grant's name (the KmsGrant's name).
    pub name: Option<String>,
    /// Creation time.
    pub creation_date: Option<OffsetDateTime>,
    /// The grantee (a Kubernetes username).
    pub grantee_principal: String,
    /// Who may retire it.
    pub retiring_principal: Option<String>,
    /// The account that issued it.
    pub issuing_account: String,
    /// Allowed operations.
    pub operations: Vec<GrantOperation>,
    /// Encryption context constraints.
    pub constraints: GrantConstraints,
}

/// A tag of a key.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Tag {
    /// TagKey.
    pub key: String,
    /// TagValue.
    pub value: String,
}

/// A key as ListKeys reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyEntry {
    /// The key id.
    pub key_id: String,
    /// The key ARN.
    pub key_arn: String,
    /// Served to kube-apiserver: left out of listings.
    pub served_by_plugin: bool,
}

/// Where keys, aliases, grants and tags are found. Implemented by the Kubernetes layer over
/// the keyring's snapshots; every method reads memory and returns at once.
pub trait KeyDirectory: Send + Sync + 'static {
    /// The 12-digit AWS account id of a namespace (deterministic, or set by annotation).
    fn account_id(&self, namespace: &str) -> String;

    /// Resolves a key id, key ARN, alias name or alias ARN. Bare key ids and alias names
    /// resolve in the caller's account (`namespace`) only; an ARN resolves in the
    /// namespace whose account id it carries (authorization then decides: RBAC in that
    /// namespace, or a grant on the key). An ARN of another partition or region, of an
    /// unknown or ambiguous account, and a key that does not exist are
    /// `NotFoundException`.
    ///
    /// # Errors
    /// `NotFoundException`; `KMSInternalException` when the key's material could not be
    /// unwrapped.
    fn resolve(&self, namespace: &str, key: &KeyIdentifier) -> KmsResult<Arc<ResolvedKey>>;

    /// Every key of the namespace, in a stable order (by key id).
    fn list_keys(&self, namespace: &str) -> Vec<KeyEntry>;

    /// Every alias of the namespace, in a stable order (by name).
    fn list_aliases(&self, namespace: &str) -> Vec<AliasEntry>;

    /// Every grant of a key, in a stable order (by grant id).
    fn list_grants(&self, key: &ResolvedKey) -> Vec<GrantEntry>;

    /// The tags of a key, in a stable order (by tag key).
    fn list_tags(&self, key: &ResolvedKey) -> Vec<Tag>;
}
