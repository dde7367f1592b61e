//! The KmsGrant resource.

use std::collections::BTreeMap;

use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use crate::alias::KeyRef;
use crate::condition::Condition;
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
