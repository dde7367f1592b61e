//! Opening the root key at start, and the guard of `--init-root-key`: a new root key is made
//! only when the cluster holds no KmsKeyMaterial record. On a restored cluster whose root
//! key file was lost or not put back, a new root key would unwrap none of the records, and
//! every key would turn Invalid behind a running operator; refusing to start says instead
//! exactly which root key the records need (docs/disaster-recovery.md).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use keystore_pkcs11::args::RootKeyLocation;
use kms_core::keystore::RootKeyStore;
use kube::api::ListParams;
use kube::{Api, Client};
use kubekms_k8s::KmsKeyMaterial;

/// How long the guard's list call may take.
const LIST_TIMEOUT: Duration = Duration::from_secs(30);

/// Why the operator cannot get its root key.
#[derive(Debug, thiserror::Error)]
pub enum RootKeyError {
    /// `--init-root-key` with records in the cluster: they need the lost root key.
    #[error(
        "refusing to create a new root key at {path}: the cluster holds {records} KmsKeyMaterial \
         records wrapped under root key {needed}, which a new root key cannot unwrap. Put back \
         the root key of your backup at {path} (a root key file: 32 bytes, mode 0600; a \
         PKCS#11 token: its keys from the HSM's own backup) and start without --init-root-key"
    )]
    RecordsNeedAnotherRootKey {
        /// Where the root key was looked for (a file or a PKCS#11 token).
        path: String,
        /// How many records exist.
        records: usize,
        /// The root key ids they carry, with counts.
        needed: String,
    },
    /// The records could not be listed, so it is unknown whether a new root key is safe.
    #[error(
        "--init-root-key: cannot tell whether KmsKeyMaterial records exist ({0}); not creating a root key"
    )]
    CannotList(String),
    /// The key store refused the file.
    #[error(transparent)]
    Store(#[from] kms_core::KmsError),
}

/// The root key ids of `records`, with counts: `id (n records), ...`.
#[must_use]
pub fn describe_root_keys(records: &[KmsKeyMaterial]) -> String {
    let mut ids: BTreeMap<&str, usize> = BTreeMap::new();
    for record in records {
        *ids.entry(record.spec.root_key_id.as_str()).or_insert(0) += 1;
    }
    ids.iter()
        .map(|(id, n)| format!("{id} ({n} record{})", if *n == 1 { "" } else { "s" }))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Opens the root key file; with `init` and no file, creates one, but only when no
/// KmsKeyMaterial exists in `namespace` (or anywhere).
///
/// # Errors
/// [`RootKeyError`].
pub async fn open_or_init(
    path: &Path,
    init: bool,
    client: &Client,
    namespace: Option<&str>,
) -> Result<Arc<dyn RootKeyStore>, RootKeyError> {
    open_or_init_at(
        &RootKeyLocation::File(path.to_owned()),
        init,
        client,
        namespace,
    )
    .await
}

/// As [`open_or_init`] for a root key file or root keys in a PKCS#11 token (created in
/// the token under the same guard).
///
/// # Errors
/// [`RootKeyError`].
pub async fn open_or_init_at(
    location: &RootKeyLocation,
    init: bool,
    client: &Client,
    namespace: Option<&str>,
) -> Result<Arc<dyn RootKeyStore>, RootKeyError> {
    open_or_init_migrating(location, init, None, client, namespace).await
}

/// As [`open_or_init_at`], during a migration from `previous` to `location`: records
/// wrapped under `previous` do not stop `--init-root-key` from creating the new root key
/// (they are what is being migrated); records under any third root key still do.
///
/// # Errors
/// [`RootKeyError`].
pub async fn open_or_init_migrating(
    location: &RootKeyLocation,
    init: bool,
    previous: Option<&dyn RootKeyStore>,
    client: &Client,
    namespace: Option<&str>,
) -> Result<Arc<dyn RootKeyStore>, RootKeyError> {
    if !init || location.exists()? {
        return Ok(location.open()?);
    }
    let api: Api<KmsKeyMaterial> = match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    let records = match tokio::time::timeout(LIST_TIMEOUT, api.list(&ListParams::default())).await {
        Err(_) => {
            return Err(RootKeyError::CannotList(format!(
                "no answer in {}s",
                LIST_TIMEOUT.as_secs()
            )));
        }
        // No CRD yet: a brand-new installation, nothing to protect.
        Ok(Err(kube::Error::Api(status))) if status.code == 404 => Vec::new(),
        Ok(Err(e)) => return Err(RootKeyError::CannotList(e.to_string())),
        Ok(Ok(list)) => list.items,
    };
    let records: Vec<KmsKeyMaterial> = records
        .into_iter()
        .filter(|record| previous.is_none_or(|p| !p.holds(&record.spec.root_key_id)))
        .collect();
    if !records.is_empty() {
        return Err(RootKeyError::RecordsNeedAnotherRootKey {
            path: location.to_string(),
            records: records.len(),
            needed: describe_root_keys(&records),
        });
    }
    tracing::info!(root_key = %location, "creating a new root key (no KmsKeyMaterial exists)");
    Ok(location.init()?)
}
