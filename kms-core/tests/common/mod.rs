//! Shared builders for the integration tests.
#![allow(dead_code)]

use std::collections::BTreeMap;

use kms_core::{KeyId, KeyMaterial, KeyMetadata, KeySpec, KeyUsage, KmsKey, Origin};
use time::OffsetDateTime;
use time::macros::datetime;

pub const T0: OffsetDateTime = datetime!(2026-06-01 12:00 UTC);

pub fn key(spec: KeySpec, usage: KeyUsage) -> KmsKey {
    KmsKey::generate(KeyId::generate().expect("key id"), spec, usage, T0).expect("generate key")
}

pub fn symmetric() -> KmsKey {
    key(KeySpec::SymmetricDefault, KeyUsage::EncryptDecrypt)
}

/// A key around given material (for known-answer and interop tests).
pub fn key_with_material(spec: KeySpec, usage: KeyUsage, material: KeyMaterial) -> KmsKey {
    let metadata = KeyMetadata::new(
        KeyId::generate().expect("key id"),
        spec,
        usage,
        Origin::AwsKms,
        T0,
    )
    .expect("metadata");
    KmsKey::new(metadata, BTreeMap::from([(1, material)])).expect("key")
}
