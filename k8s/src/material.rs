//! The KmsKeyMaterial resource: a key's identity and its wrapped material versions.

use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use crate::names::{KeySpecName, KeyUsageName, OriginName, RotationTypeName};

/// The operator-owned record of a key: its id, its lifecycle dates and every material
/// version wrapped under the root key (AES-256-GCM, bound to key id, version and spec). It
/// has the name of its KmsKey. Only the operator writes it and only the operator and the KMS
/// plugin may read it (RBAC). It is deliberately not a Secret: Secrets are encrypted by this
/// very KMS, so restoring them would need the keys they hide. An etcd backup of these objects
/// plus the root key restores every key.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "kubekms.io",
    version = "v1alpha1",
    kind = "KmsKeyMaterial",
    namespaced,
    shortname = "kkm",
    category = "kubekms",
    printcolumn(name = "Key ID", type_ = "string", json_path = ".spec.keyId"),
    printcolumn(name = "Root Key", type_ = "string", json_path = ".spec.rootKeyId"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    ),
    doc = "Wrapped key material of a KmsKey (operator-owned)."
)]
#[serde(rename_all = "camelCase")]
pub struct KmsKeyMaterialSpec {
    /// The key id. Immutable.
    #[x_kube(validation = Rule::new("self == oldSelf").message("keyId is immutable"))]
    #[schemars(length(min = 36, max = 36))]
    pub key_id: String,
    /// The key spec the material is of. Immutable.
    #[x_kube(validation = Rule::new("self == oldSelf").message("keySpec is immutable"))]
    pub key_spec: KeySpecName,
    /// The effective key usage. Immutable.
    #[x_kube(validation = Rule::new("self == oldSelf").message("keyUsage is immutable"))]
    pub key_usage: KeyUsageName,
    /// The origin. Immutable.
    #[x_kube(validation = Rule::new("self == oldSelf").message("origin is immutable"))]
    pub origin: OriginName,
    /// When the key was created (RFC 3339). Immutable.
    #[x_kube(validation = Rule::new("self == oldSelf").message("createdAt is immutable"))]
    pub created_at: String,
    /// Fingerprint of the root key the versions are wrapped under.
    pub root_key_id: String,
    /// The material versions, oldest first. Versions are only ever added.
    #[serde(default)]
    #[x_kube(validation = Rule::new("size(self) >= size(oldSelf)").message("material versions are never removed"))]
    #[schemars(length(max = 64))]
    pub versions: Vec<WrappedVersion>,
    /// The material version kube-apiserver's plugins and kubekms-server encrypt under.
    /// Versions after it are staged: a rotation adds its version here first, every plugin
    /// loads it and can decrypt under it, and the operator makes it current only once every
    /// plugin with a heartbeat Lease for this key reports holding it (so a plugin cut off
    /// from the API servers never meets a Secret under a version it does not know). Absent
    /// (records written before staged versions existed): the newest version is current.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self >= oldSelf").message("currentVersion never moves back"))]
    pub current_version: Option<u32>,
    /// On-demand rotations done so far (of 25).
    #[serde(default)]
    pub on_demand_rotations: u32,
    /// The last on-demand rotation token acted on, so a token rotates once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_on_demand_token: Option<String>,
    /// Next automatic rotation (RFC 3339), while automatic rotation is on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_rotation_time: Option<String>,
    /// The automatic rotation period the next rotation time was computed with, so a changed
    /// period counts from the last rotation (as AWS EnableKeyRotation does).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotation_period_in_days: Option<u32>,
    /// When a scheduled deletion destroys the material (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deletion_date: Option<String>,
}

/// One wrapped material version.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct WrappedVersion {
    /// The version number.
    pub version: u32,
    /// When it was created (RFC 3339).
    pub created: String,
    /// AUTOMATIC or ON_DEMAND; absent for the original material.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotation_type: Option<RotationTypeName>,
    /// The material wrapped under the root key, base64.
    #[schemars(length(max = 8192))]
    pub wrapped: String,
}
