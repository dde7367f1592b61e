//! kube-apiserver's stored KMS v2 envelope, shared by the plugin tests.

use anyhow::{Context as _, Result, anyhow, ensure};
use kubekms_e2e::{KMS_PROVIDER_NAME, check_kms_encrypted, kms_v2_prefix, preview};

/// kube-apiserver's stored envelope (`k8s.io/apiserver/.../kmsv2/v2:EncryptedObject`):
/// field numbers from the published API.
#[derive(Clone, PartialEq, prost::Message)]
pub struct EncryptedObject {
    #[prost(bytes = "vec", tag = "1")]
    pub encrypted_data: Vec<u8>,
    #[prost(string, tag = "2")]
    pub key_id: String,
    #[prost(bytes = "vec", tag = "3")]
    pub encrypted_dek_source: Vec<u8>,
    #[prost(map = "string, bytes", tag = "4")]
    pub annotations: std::collections::HashMap<String, Vec<u8>>,
}

/// Parses a value etcd holds for a Secret and checks it: the `k8s:enc:kms:v2:kubekms:`
/// prefix, none of `plaintexts` visible, a key_id of the plugin's form whose key and
/// version are those of the DEK source blob, and encrypted data.
pub fn parse_stored(bytes: &[u8], plaintexts: &[&[u8]]) -> Result<EncryptedObject> {
    check_kms_encrypted(bytes, KMS_PROVIDER_NAME, plaintexts)?;
    let prefix = kms_v2_prefix(KMS_PROVIDER_NAME);
    let body = bytes
        .get(prefix.len()..)
        .ok_or_else(|| anyhow!("short value"))?;
    let obj = <EncryptedObject as prost::Message>::decode(body)
        .with_context(|| format!("not an EncryptedObject: {}", preview(bytes)))?;
    let (key, version) = kms_plugin::parse_key_id(&obj.key_id)
        .with_context(|| format!("stored key_id {:?}", obj.key_id))?;
    let (blob_key, blob_version) = kms_core::blob::peek(&obj.encrypted_dek_source)
        .context("the encrypted DEK source is not a KubeKMS blob")?;
    ensure!(
        (key, version) == (blob_key, blob_version),
        "stored key_id {} but the DEK source is under {blob_key} v{blob_version}",
        obj.key_id
    );
    ensure!(!obj.encrypted_data.is_empty(), "no encrypted data");
    Ok(obj)
}
