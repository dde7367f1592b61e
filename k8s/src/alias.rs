//! The KmsAlias resource.

use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use crate::condition::Condition;

/// A friendly name for a key in the same namespace (AWS CreateAlias / UpdateAlias).
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "kubekms.io",
    version = "v1alpha1",
    kind = "KmsAlias",
    namespaced,
    status = "KmsAliasStatus",
    shortname = "ka",
    category = "kubekms",
    printcolumn(name = "Alias", type_ = "string", json_path = ".spec.aliasName"),
    printcolumn(
        name = "Target",
        type_ = "string",
        json_path = ".spec.targetKeyRef.name"
    ),
    printcolumn(name = "Key ID", type_ = "string", json_path = ".status.targetKeyId"),
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
    doc = "An alias of a KmsKey."
)]
#[serde(rename_all = "camelCase")]
pub struct KmsAliasSpec {
    /// The alias name: `alias/` and then letters, digits, `/`, `_` or `-`, at most 256
    /// characters, never under the reserved `alias/aws/`. Unique in the namespace. Immutable.
    #[schemars(
        length(min = 7, max = 256),
        regex(pattern = r"^alias/[a-zA-Z0-9/_-]+$")
    )]
    #[x_kube(validation = Rule::new("!self.startsWith('alias/aws/')").message("the alias/aws/ prefix is reserved"))]
    #[x_kube(validation = Rule::new("self == oldSelf").message("aliasName is immutable; create another alias"))]
    pub alias_name: String,
    /// The key the alias points at. It may be changed to another key of the same key spec
    /// family and usage (AWS UpdateAlias).
    pub target_key_ref: KeyRef,
}

/// A reference to a KmsKey in the same namespace.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct KeyRef {
    /// The KmsKey's metadata.name.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

/// The observed state of an alias.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct KmsAliasStatus {
    /// The target key's id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_key_id: Option<String>,
    /// The target key's ARN.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_key_arn: Option<String>,
    /// The alias's ARN.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alias_arn: Option<String>,
    /// Ready (reasons: Ready, TargetNotFound, TargetPendingDeletion, TargetDeleted,
    /// IncompatibleTarget, NameConflict).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The metadata.generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}
