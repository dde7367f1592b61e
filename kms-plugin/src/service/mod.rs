//! The KMS v2 service:
//!
//! - [`ring`]: the keys in memory ([`ServingKeys`]) and Encrypt / Decrypt / the self-test;
//! - [`plugin`]: the [`Plugin`]: keeps the keys fresh (reloads of the state folder, keys
//!   adopted from Kubernetes) and says whether it is healthy;
//! - [`grpc`]: the gRPC handlers.

pub mod grpc;
pub mod plugin;
pub mod ring;

use kms_core::{EncryptionContext, KeyId};

pub use plugin::Plugin;
pub use ring::ServingKeys;

use crate::error::PluginError;

/// The API version reported by Status.
pub const API_VERSION: &str = "v2";
/// What Status reports when healthy.
pub const HEALTHZ_OK: &str = "ok";
/// kube-apiserver refuses ciphertexts over 1024 bytes; a blob adds 82 bytes.
pub const MAX_PLAINTEXT: usize = 1024 - kms_core::blob::MIN_BLOB_LEN + 1;
/// The one annotation Encrypt writes: the plugin's envelope format.
pub const ANNOTATION_FORMAT: &str = "format.kubekms.io";
/// Its value.
pub const ANNOTATION_FORMAT_VALUE: &[u8] = b"1";
/// Encryption context bound to every ciphertext of this plugin, so a blob made for
/// another purpose (the workload API) is refused here and vice versa.
const CONTEXT_KEY: &str = "kubekms:purpose";
const CONTEXT_VALUE: &str = "kube-apiserver-kms-v2";

/// The KMS v2 key_id for a key and material version: `<key-id>/v<version>`. A new
/// version gives a new key_id; versions are never reused, so neither are key_ids.
#[must_use]
pub fn format_key_id(key_id: KeyId, version: u32) -> String {
    format!("{key_id}/v{version}")
}

/// Parses [`format_key_id`]'s output.
///
/// # Errors
/// `MalformedKeyId`.
pub fn parse_key_id(text: &str) -> Result<(KeyId, u32), PluginError> {
    let bad = || PluginError::MalformedKeyId(truncate(text, 80));
    let (key, version) = text.rsplit_once("/v").ok_or_else(bad)?;
    if version.is_empty() || !version.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let version: u32 = version.parse().map_err(|_| bad())?;
    let key_id = KeyId::parse(key).map_err(|_| bad())?;
    if version == 0 {
        return Err(bad());
    }
    Ok((key_id, version))
}

pub(crate) fn truncate(text: &str, max: usize) -> String {
    text.chars().take(max).collect()
}

fn context() -> Result<EncryptionContext, PluginError> {
    EncryptionContext::from_pairs([(CONTEXT_KEY, CONTEXT_VALUE)]).map_err(PluginError::Core)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_id_format_round_trips_and_rejects_junk() {
        let key = KeyId::single_from_random([3; 16]);
        let text = format_key_id(key, 42);
        assert_eq!(parse_key_id(&text).expect("parse"), (key, 42));
        for bad in [
            "",
            "v1",
            "/v1",
            "abc/v1",
            &format!("{key}/v"),
            &format!("{key}/v0"),
            &format!("{key}/v-1"),
            &format!("{key}/v1x"),
            &format!("{key}/v99999999999"),
        ] {
            assert!(parse_key_id(bad).is_err(), "{bad:?} parsed");
        }
    }
}
