//! The symmetric ciphertext blob, version 1. Byte layout (see docs/ciphertext-format.md):
//!
//! ```text
//! offset  size  field
//!      0     1  format version (0x01)
//!      1     1  key id kind (0x01 UUID, 0x02 multi-cluster)
//!      2    16  key id bytes
//!     18     4  material version, u32 big-endian, >= 1
//!     22    32  KDF salt (random)
//!     54    12  AES-GCM nonce (random)
//!     66     n  AES-256-GCM ciphertext, 1 <= n <= 4096
//!   66+n    16  AES-GCM tag
//! ```
//!
//! The message key is `SP800-108-CTR-HMAC-SHA256(material, "kubekms/v1/encrypt" || 0x00 ||
//! bytes 1..54 || [256]_32)`; the AAD is bytes 0..66 followed by the canonical encryption
//! context. Every header byte is authenticated, so any change fails the tag check.

use crate::error::{KmsError, KmsResult};
use crate::ids::KeyId;
use crate::primitives::{GCM_NONCE_LEN, GCM_TAG_LEN};

/// The only format version written and read today.
pub const FORMAT_VERSION: u8 = 1;
/// Length of the KDF salt.
pub const SALT_LEN: usize = 32;
/// Length of everything before the ciphertext.
pub const HEADER_LEN: usize = 1 + 17 + 4 + SALT_LEN + GCM_NONCE_LEN;
/// The smallest valid blob (one byte of plaintext).
pub const MIN_BLOB_LEN: usize = HEADER_LEN + 1 + GCM_TAG_LEN;
/// KDF label of the message key.
pub const KDF_LABEL: &[u8] = b"kubekms/v1/encrypt";

/// A parsed (not yet authenticated) blob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CiphertextBlob<'a> {
    /// The key the blob claims to be under.
    pub key_id: KeyId,
    /// The material version it claims.
    pub material_version: u32,
    /// Bytes 0..HEADER_LEN, bound as AAD.
    pub header: &'a [u8],
    /// KDF salt.
    pub salt: &'a [u8],
    /// GCM nonce.
    pub nonce: &'a [u8],
    /// GCM ciphertext.
    pub ciphertext: &'a [u8],
    /// GCM tag.
    pub tag: &'a [u8],
}

/// Builds the header for a new blob.
#[must_use]
pub fn encode_header(
    key_id: KeyId,
    material_version: u32,
    salt: &[u8; SALT_LEN],
    nonce: &[u8; GCM_NONCE_LEN],
) -> [u8; HEADER_LEN] {
    let mut header = [0u8; HEADER_LEN];
    header[0] = FORMAT_VERSION;
    header[1..18].copy_from_slice(&key_id.to_wire());
    header[18..22].copy_from_slice(&material_version.to_be_bytes());
    header[22..54].copy_from_slice(salt);
    header[54..66].copy_from_slice(nonce);
    header
}

/// The KDF fixed input: label, separator, key id, version and salt, then the output length.
#[must_use]
pub fn kdf_fixed_info(header: &[u8; HEADER_LEN]) -> Vec<u8> {
    let mut info = Vec::with_capacity(KDF_LABEL.len() + 1 + 53 + 4);
    info.extend_from_slice(KDF_LABEL);
    info.push(0);
    info.extend_from_slice(&header[1..54]);
    info.extend_from_slice(&256u32.to_be_bytes());
    info
}

/// Splits a blob into its fields, checking only sizes and the version byte.
///
/// # Errors
/// `InvalidCiphertextException` for anything that is not a version-1 blob.
pub fn parse(blob: &[u8]) -> KmsResult<CiphertextBlob<'_>> {
    if blob.len() < MIN_BLOB_LEN || blob[0] != FORMAT_VERSION {
        return Err(KmsError::InvalidCiphertext);
    }
    let mut wire = [0u8; 17];
    wire.copy_from_slice(&blob[1..18]);
    let key_id = KeyId::from_wire(&wire).ok_or(KmsError::InvalidCiphertext)?;
    let mut version = [0u8; 4];
    version.copy_from_slice(&blob[18..22]);
    let material_version = u32::from_be_bytes(version);
    if material_version == 0 {
        return Err(KmsError::InvalidCiphertext);
    }
    let tag_start = blob.len() - GCM_TAG_LEN;
    Ok(CiphertextBlob {
        key_id,
        material_version,
        header: &blob[..HEADER_LEN],
        salt: &blob[22..54],
        nonce: &blob[54..HEADER_LEN],
        ciphertext: &blob[HEADER_LEN..tag_start],
        tag: &blob[tag_start..],
    })
}

/// Reads the key id and material version of a blob without decrypting it.
///
/// # Errors
/// `InvalidCiphertextException` when the blob is malformed.
pub fn peek(blob: &[u8]) -> KmsResult<(KeyId, u32)> {
    let parsed = parse(blob)?;
    Ok((parsed.key_id, parsed.material_version))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_or_foreign_blobs_are_invalid_ciphertext() {
        assert_eq!(parse(&[]), Err(KmsError::InvalidCiphertext));
        assert_eq!(
            parse(&[1u8; MIN_BLOB_LEN - 1]),
            Err(KmsError::InvalidCiphertext)
        );
        let mut blob = vec![0u8; MIN_BLOB_LEN];
        blob[0] = 2;
        assert_eq!(parse(&blob), Err(KmsError::InvalidCiphertext));
        blob[0] = 1;
        blob[1] = 9;
        assert_eq!(
            parse(&blob),
            Err(KmsError::InvalidCiphertext),
            "unknown key id kind"
        );
        blob[1] = 1;
        assert_eq!(
            parse(&blob),
            Err(KmsError::InvalidCiphertext),
            "material version 0"
        );
        blob[21] = 1;
        let parsed = parse(&blob).expect("well-formed");
        assert_eq!(parsed.material_version, 1);
        assert_eq!(parsed.ciphertext.len(), 1);
    }
}
