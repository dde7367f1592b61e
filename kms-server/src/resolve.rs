//! Resolve: a request's key identifier (key id, key ARN, alias name, alias ARN) or a
//! ciphertext blob → the key, in the caller's account; and the protocol's own rules that no
//! authorizer can override: keys served to kube-apiserver are refused, and the `kubekms:`
//! encryption context prefix is reserved.

use std::sync::Arc;

use kms_core::{EncryptionContext, KeyIdentifier, KmsError, blob};

use crate::directory::{KeyDirectory, ResolvedKey};
use crate::error::ApiError;
use crate::principal::Principal;

/// Encryption context keys with this prefix are KubeKMS's own (the KMS v2 plugin binds
/// `kubekms:purpose` into the DEK seeds etcd holds); requests may not use them.
pub const RESERVED_CONTEXT_PREFIX: &str = "kubekms:";

/// Refuses a key a KMS v2 plugin serves to kube-apiserver.
///
/// # Errors
/// `UnsupportedOperationException`.
pub fn refuse_served(key: &ResolvedKey) -> Result<(), ApiError> {
    if key.served_by_plugin() {
        return Err(KmsError::UnsupportedOperation(format!(
            "{} is served to kube-apiserver by a KMS v2 plugin; it cannot be used through the KMS API",
            key.arn_text()
        ))
        .into());
    }
    Ok(())
}

/// Refuses encryption contexts with a reserved key.
///
/// # Errors
/// `ValidationException` naming the prefix (not the caller's key or value).
pub fn refuse_reserved_context<'a>(
    contexts: impl IntoIterator<Item = &'a EncryptionContext>,
) -> Result<(), ApiError> {
    for context in contexts {
        if context
            .as_map()
            .keys()
            .any(|k| k.starts_with(RESERVED_CONTEXT_PREFIX))
        {
            return Err(ApiError::validation(format!(
                "Encryption context keys beginning with '{RESERVED_CONTEXT_PREFIX}' are reserved for KubeKMS"
            )));
        }
    }
    Ok(())
}

/// Resolves a `KeyId` parameter in the caller's account.
///
/// # Errors
/// `NotFoundException` (also for malformed key ids, as AWS), `InvalidArnException`,
/// `InvalidAliasNameException`, `UnsupportedOperationException` for a served key.
pub fn resolve(
    directory: &dyn KeyDirectory,
    principal: &Principal,
    key_id: &str,
) -> Result<Arc<ResolvedKey>, ApiError> {
    let identifier = KeyIdentifier::parse(key_id)?;
    let key = directory.resolve(&principal.namespace, &identifier)?;
    refuse_served(&key)?;
    Ok(key)
}

/// Resolves the key a symmetric ciphertext blob names (Decrypt and ReEncrypt without a
/// key id). A blob that is not ours, or names a key the caller's account does not hold, is
/// `InvalidCiphertextException`, as kms-core treats a blob of an unknown key.
///
/// # Errors
/// `InvalidCiphertextException`; `UnsupportedOperationException` for a served key.
pub fn resolve_from_blob(
    directory: &dyn KeyDirectory,
    principal: &Principal,
    ciphertext_blob: &[u8],
) -> Result<Arc<ResolvedKey>, ApiError> {
    let (key_id, _) = blob::peek(ciphertext_blob)?;
    let key = directory
        .resolve(&principal.namespace, &KeyIdentifier::KeyId(key_id))
        .map_err(|e| match e {
            KmsError::NotFound(_) => KmsError::InvalidCiphertext,
            other => other,
        })?;
    refuse_served(&key)?;
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserved_prefix_is_refused_in_any_context() {
        let ok =
            EncryptionContext::from_pairs([("purpose", "x"), ("Kubekms:case", "y")]).expect("ctx");
        let reserved =
            EncryptionContext::from_pairs([("kubekms:purpose", "dek-seed")]).expect("ctx");
        assert!(
            refuse_reserved_context([&ok]).is_ok(),
            "the prefix is case-sensitive, as contexts are"
        );
        let error = refuse_reserved_context([&ok, &reserved]).expect_err("reserved");
        assert_eq!(error.aws_exception_name(), "ValidationException");
        assert!(!error.to_string().contains("dek-seed"));
    }
}
