//! Material generation: new versions are generated and wrapped under the root key at once,
//! bound to the version's context (key id, version, spec, usage, origin and the KmsKey's
//! namespace and name). The plaintext lives only inside [`wrap_new_versions`]'s blocking
//! task (zeroized on drop by kms-core). Generation runs on tokio's blocking threads: an
//! RSA-4096 key takes seconds, which would stall every reconciliation (and the leader
//! Lease renewal) sharing an async worker thread.

use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use kms_core::KeyMaterial;
use kms_core::keystore::RootKeyStore;
use kubekms_k8s::KmsKeyMaterialSpec;
use kubekms_k8s::convert::{self, format_time};
use kubekms_k8s::material::WrappedVersion;

use super::plan::NewVersion;
use crate::Error;

/// Generates and wraps `versions` of the key `record` describes (KmsKey `namespace/name`),
/// on a blocking thread.
///
/// # Errors
/// A record whose key id does not parse, a generation or wrap failure, or a panicked task.
pub async fn wrap_new_versions(
    root_keys: Arc<dyn RootKeyStore>,
    record: &KmsKeyMaterialSpec,
    namespace: &str,
    name: &str,
    versions: Vec<NewVersion>,
) -> Result<Vec<WrappedVersion>, Error> {
    if versions.is_empty() {
        return Ok(Vec::new());
    }
    let contexts = versions
        .into_iter()
        .map(|v| {
            Ok((
                convert::wrap_context(record, namespace, name, v.version)?,
                v,
            ))
        })
        .collect::<Result<Vec<_>, Error>>()?;
    tokio::task::spawn_blocking(move || {
        contexts
            .into_iter()
            .map(|(context, version)| {
                let material = KeyMaterial::generate(context.spec)?;
                let wrapped = root_keys.wrap(&context, material.serialized())?;
                Ok(WrappedVersion {
                    version: version.version,
                    created: format_time(version.created),
                    rotation_type: version.rotation_type.map(Into::into),
                    wrapped: BASE64.encode(wrapped),
                })
            })
            .collect::<Result<Vec<_>, Error>>()
    })
    .await?
}
