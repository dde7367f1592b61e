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

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};

    use kms_core::keystore::FileKeyStore;
    use kms_core::{KeyId, RotationType};
    use kubekms_k8s::KmsKeySpec;
    use time::OffsetDateTime;

    use super::*;

    /// Item 10 of issue 13: on a single-threaded runtime, another task keeps running while
    /// an RSA-4096 key is generated; it could not if the generation ran on that thread.
    #[tokio::test(flavor = "current_thread")]
    async fn generation_leaves_the_async_thread_free() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root: Arc<dyn RootKeyStore> =
            Arc::new(FileKeyStore::init(&dir.path().join("root.key")).expect("root key"));
        let spec: KmsKeySpec =
            serde_json::from_value(serde_json::json!({"keySpec": "RSA_4096"})).expect("spec");
        let now = OffsetDateTime::UNIX_EPOCH;
        let (record, _) = super::super::plan::new_record(
            &spec,
            KeyId::single_from_random([3; 16]),
            &root.root_key_id(),
            now,
        )
        .expect("record");
        let ticks = Arc::new(AtomicU64::new(0));
        let ticker = {
            let ticks = ticks.clone();
            tokio::spawn(async move {
                loop {
                    ticks.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(std::time::Duration::from_millis(1)).await;
                }
            })
        };
        tokio::task::yield_now().await;
        let before = ticks.load(Ordering::Relaxed);
        let wrapped = wrap_new_versions(
            root,
            &record,
            "ns",
            "k",
            vec![NewVersion {
                version: 2,
                created: now,
                rotation_type: Some(RotationType::OnDemand),
            }],
        )
        .await
        .expect("wrapped");
        let during = ticks.load(Ordering::Relaxed) - before;
        ticker.abort();
        assert_eq!(wrapped.len(), 1);
        assert!(
            during > 0,
            "the runtime's only thread was blocked by key generation"
        );
    }
}
