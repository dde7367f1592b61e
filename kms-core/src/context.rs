//! Encryption context: a string map authenticated as AAD, matched exactly on decrypt.

use std::collections::BTreeMap;

use crate::error::{KmsError, KmsResult};

/// Largest encryption context accepted, in bytes of keys and values together.
pub const MAX_ENCRYPTION_CONTEXT_BYTES: usize = 8192;

/// An encryption context. Order of insertion does not matter: the canonical form sorts
/// pairs by key bytes, so `{a:1,b:2}` and `{b:2,a:1}` are the same context. Keys and values
/// are compared exactly (case-sensitive).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EncryptionContext(BTreeMap<String, String>);

impl EncryptionContext {
    /// The empty context.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Builds and validates a context.
    ///
    /// # Errors
    /// `ValidationException` when a key is empty or the whole context exceeds 8192 bytes.
    pub fn from_map(map: BTreeMap<String, String>) -> KmsResult<Self> {
        let context = Self(map);
        context.validate()?;
        Ok(context)
    }

    /// Builds from pairs (later duplicates win, as in a JSON object).
    ///
    /// # Errors
    /// As [`EncryptionContext::from_map`].
    pub fn from_pairs<K: Into<String>, V: Into<String>>(
        pairs: impl IntoIterator<Item = (K, V)>,
    ) -> KmsResult<Self> {
        Self::from_map(
            pairs
                .into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        )
    }

    fn validate(&self) -> KmsResult<()> {
        if self.0.keys().any(String::is_empty) {
            return Err(KmsError::validation(
                "encryption context keys must not be empty",
            ));
        }
        let size: usize = self.0.iter().map(|(k, v)| k.len() + v.len()).sum();
        if size > MAX_ENCRYPTION_CONTEXT_BYTES {
            return Err(KmsError::Validation(format!(
                "encryption context of {size} bytes exceeds the {MAX_ENCRYPTION_CONTEXT_BYTES}-byte limit"
            )));
        }
        Ok(())
    }

    /// Whether there are no pairs.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The pairs, sorted by key.
    #[must_use]
    pub fn as_map(&self) -> &BTreeMap<String, String> {
        &self.0
    }

    /// Whether every pair of `self` is in `other` (grant constraint EncryptionContextSubset).
    #[must_use]
    pub fn is_subset_of(&self, other: &Self) -> bool {
        self.0.iter().all(|(k, v)| other.0.get(k) == Some(v))
    }

    /// The canonical, unambiguous byte form bound into ciphertexts: for each pair in key
    /// order, `u32 BE key length, key, u32 BE value length, value`. Empty context: no bytes.
    #[must_use]
    pub fn canonical_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for (key, value) in &self.0 {
            for field in [key, value] {
                // Lengths fit u32: the whole context is at most 8192 bytes.
                out.extend_from_slice(
                    &u32::try_from(field.len()).unwrap_or(u32::MAX).to_be_bytes(),
                );
                out.extend_from_slice(field.as_bytes());
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_form_ignores_order_and_is_unambiguous() {
        let a = EncryptionContext::from_pairs([("a", "1"), ("b", "2")]).expect("ctx");
        let b = EncryptionContext::from_pairs([("b", "2"), ("a", "1")]).expect("ctx");
        assert_eq!(a.canonical_bytes(), b.canonical_bytes());
        let shifted = EncryptionContext::from_pairs([("a1", ""), ("b", "2")]).expect("ctx");
        assert_ne!(a.canonical_bytes(), shifted.canonical_bytes());
        let case = EncryptionContext::from_pairs([("A", "1"), ("b", "2")]).expect("ctx");
        assert_ne!(a.canonical_bytes(), case.canonical_bytes());
        assert!(EncryptionContext::new().canonical_bytes().is_empty());
    }

    #[test]
    fn limits() {
        let big = EncryptionContext::from_pairs([("k", "v".repeat(MAX_ENCRYPTION_CONTEXT_BYTES))]);
        assert_eq!(
            big.map_err(|e| e.aws_exception_name()),
            Err("ValidationException")
        );
        let empty_key = EncryptionContext::from_pairs([("", "v")]);
        assert_eq!(
            empty_key.map_err(|e| e.aws_exception_name()),
            Err("ValidationException")
        );
    }

    #[test]
    fn subset() {
        let small = EncryptionContext::from_pairs([("a", "1")]).expect("ctx");
        let large = EncryptionContext::from_pairs([("a", "1"), ("b", "2")]).expect("ctx");
        assert!(small.is_subset_of(&large));
        assert!(!large.is_subset_of(&small));
        assert!(EncryptionContext::new().is_subset_of(&small));
    }
}
