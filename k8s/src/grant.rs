//! The KmsGrant resource.

use std::collections::BTreeMap;

use kms_core::grants::{Grant, GrantConstraints, GrantOperation};
use kms_core::keystore::{DerivedKeyPurpose, RootKeyStore};
use kms_core::primitives::HmacKey;
use kms_core::{EncryptionContext, KeySpec};
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use crate::alias::KeyRef;
use crate::condition::Condition;
use crate::convert::effective_usage;
use crate::key::KmsKeySpec;
use crate::names::GrantOperationName;

/// Permission for one Kubernetes identity to use a key (AWS CreateGrant). Deleting the
/// object revokes the grant.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "kubekms.io",
    version = "v1alpha1",
    kind = "KmsGrant",
    namespaced,
    status = "KmsGrantStatus",
    shortname = "kg",
    category = "kubekms",
    printcolumn(name = "Key", type_ = "string", json_path = ".spec.keyRef.name"),
    printcolumn(name = "Grant ID", type_ = "string", json_path = ".status.grantId"),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    ),
    doc = "A grant on a KmsKey."
)]
#[x_kube(validation = Rule::new("!has(self.constraints) || !(has(self.constraints.encryptionContextSubset) && has(self.constraints.encryptionContextEquals))").message("set at most one of encryptionContextSubset and encryptionContextEquals"))]
#[serde(rename_all = "camelCase")]
pub struct KmsGrantSpec {
    /// The key, in this namespace. Immutable.
    #[x_kube(validation = Rule::new("self == oldSelf").message("keyRef is immutable"))]
    pub key_ref: KeyRef,
    /// Who receives the permissions. Immutable.
    #[x_kube(validation = Rule::new("self == oldSelf").message("grantee is immutable"))]
    pub grantee: Principal,
    /// The operations granted; they must suit the key's type (for example Sign and Verify
    /// for a signing key). Immutable.
    #[schemars(length(min = 1, max = 17))]
    #[x_kube(validation = Rule::new("self == oldSelf").message("operations are immutable"))]
    pub operations: Vec<GrantOperationName>,
    /// Encryption context constraints; symmetric encryption keys only. Immutable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub constraints: Option<GrantConstraintsSpec>,
    /// Who may retire the grant besides the grantee.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retiring_principal: Option<Principal>,
    /// A friendly name (AWS Name): makes CreateGrant idempotent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256), regex(pattern = r"^[a-zA-Z0-9:/_-]+$"))]
    pub name: Option<String>,
}

/// A Kubernetes identity: exactly one of serviceAccount, user or group.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(validation = Rule::new("(has(self.serviceAccount) ? 1 : 0) + (has(self.user) ? 1 : 0) + (has(self.group) ? 1 : 0) == 1").message("set exactly one of serviceAccount, user and group"))]
#[serde(rename_all = "camelCase")]
pub struct Principal {
    /// A ServiceAccount.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account: Option<ServiceAccountRef>,
    /// A user name as authentication reports it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub user: Option<String>,
    /// A group name as authentication reports it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub group: Option<String>,
}

/// A ServiceAccount.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ServiceAccountRef {
    /// Its name.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Its namespace; the grant's namespace when omitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

/// Encryption context constraints (AWS GrantConstraints).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct GrantConstraintsSpec {
    /// The request's encryption context must contain all these pairs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("maxProperties" = 64))]
    pub encryption_context_subset: Option<BTreeMap<String, String>>,
    /// The request's encryption context must be exactly these pairs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("maxProperties" = 64))]
    pub encryption_context_equals: Option<BTreeMap<String, String>>,
}

/// The observed state of a grant.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct KmsGrantStatus {
    /// The grant id (64 hex digits, an HMAC of the object's uid under a key derived from
    /// the root key: the same for the object's whole life, rebuilt identically if the status
    /// is lost).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grant_id: Option<String>,
    /// A token that lets the grantee use the grant before it is visible everywhere (64 hex
    /// digits, derived like the id under another label: the uid alone does not give it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grant_token: Option<String>,
    /// The key's id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_id: Option<String>,
    /// Ready (reasons: Granted, KeyNotFound, InvalidOperations, KeyPendingDeletion).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The metadata.generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// 64 hex digits derived from the object's UID under a key derived from the root key
/// (HMAC-SHA-256 keyed with [`DerivedKeyPurpose::GrantToken`]): the grant id and token stay
/// the same for the object's whole life and come out the same if its status is lost (status
/// must be reconstructible); a new object under the same name gets new ones. Knowing the
/// uid (anyone who reads the KmsGrant or its Events does) is not enough to compute them:
/// that takes the root key. The operator writes them into status; kubekms-server derives
/// them again rather than trusting status.
fn derived_hex(key: &HmacKey, label: &str, uid: &str) -> String {
    let tag = key.sign(format!("kubekms.io/{label}\0{uid}").as_bytes());
    let mut out = String::with_capacity(tag.len() * 2);
    for b in tag {
        out.push(char::from(HEX[usize::from(b >> 4)]));
        out.push(char::from(HEX[usize::from(b & 15)]));
    }
    out
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// The grant id and token of the KmsGrant with `uid`.
///
/// # Errors
/// When the root key store cannot derive the key.
pub fn grant_id_and_token(
    root_keys: &dyn RootKeyStore,
    uid: &str,
) -> Result<(String, String), kms_core::KmsError> {
    let derived = root_keys.derive_key(DerivedKeyPurpose::GrantToken)?;
    let key = HmacKey::sha256_prf(derived.expose());
    Ok((
        derived_hex(&key, "grant-id", uid),
        derived_hex(&key, "grant-token", uid),
    ))
}

fn context(
    pairs: Option<&BTreeMap<String, String>>,
) -> Result<Option<EncryptionContext>, kms_core::KmsError> {
    pairs
        .map(|pairs| EncryptionContext::from_map(pairs.clone()))
        .transpose()
}

/// The grant as AWS CreateGrant would build it for a key with this spec: its operations
/// must suit the key's type, and constraints only a symmetric key.
///
/// # Errors
/// `ValidationException` from [`Grant::new`] or a bad context.
pub fn to_grant(grant: &KmsGrantSpec, key: &KmsKeySpec) -> Result<Grant, kms_core::KmsError> {
    let constraints = grant.constraints.as_ref();
    Grant::new(
        KeySpec::from(key.key_spec),
        effective_usage(key),
        grant.operations.iter().map(|op| GrantOperation::from(*op)),
        GrantConstraints {
            encryption_context_subset: context(
                constraints.and_then(|c| c.encryption_context_subset.as_ref()),
            )?,
            encryption_context_equals: context(
                constraints.and_then(|c| c.encryption_context_equals.as_ref()),
            )?,
        },
    )
}

/// Who a grant is for, as the caller's identity is matched against it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Grantee {
    /// A Kubernetes username (`system:serviceaccount:<ns>:<name>` for a ServiceAccount).
    User(String),
    /// A Kubernetes group.
    Group(String),
}

impl Grantee {
    /// The grantee of a grant in `namespace` (a ServiceAccount without a namespace is of
    /// the grant's).
    #[must_use]
    pub fn of(principal: &Principal, namespace: &str) -> Option<Self> {
        match (
            &principal.service_account,
            &principal.user,
            &principal.group,
        ) {
            (Some(sa), None, None) => Some(Self::User(format!(
                "system:serviceaccount:{}:{}",
                sa.namespace.as_deref().unwrap_or(namespace),
                sa.name
            ))),
            (None, Some(user), None) => Some(Self::User(user.clone())),
            (None, None, Some(group)) => Some(Self::Group(group.clone())),
            _ => None,
        }
    }

    /// Whether a caller with this username and these groups is the grantee.
    #[must_use]
    pub fn matches(&self, username: &str, groups: &[String]) -> bool {
        match self {
            Self::User(user) => user == username,
            Self::Group(group) => groups.iter().any(|g| g == group),
        }
    }

    /// The name ListGrants reports (`GranteePrincipal`).
    #[must_use]
    pub fn name(&self) -> &str {
        match self {
            Self::User(name) | Self::Group(name) => name,
        }
    }
}
