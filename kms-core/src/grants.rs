//! Grants: which operations a grant may carry for a key type, and whether a request is
//! permitted by a grant's operations and encryption context constraints.

use std::collections::BTreeSet;

use crate::context::EncryptionContext;
use crate::error::{KmsError, KmsResult};
use crate::names::aws_names;
use crate::spec::{KeySpec, KeyUsage};

aws_names!(
    /// An operation a grant can allow (AWS `GrantOperation`).
    GrantOperation {
        /// Decrypt.
        Decrypt => "Decrypt",
        /// Encrypt.
        Encrypt => "Encrypt",
        /// GenerateDataKey.
        GenerateDataKey => "GenerateDataKey",
        /// GenerateDataKeyWithoutPlaintext.
        GenerateDataKeyWithoutPlaintext => "GenerateDataKeyWithoutPlaintext",
        /// GenerateDataKeyPair.
        GenerateDataKeyPair => "GenerateDataKeyPair",
        /// GenerateDataKeyPairWithoutPlaintext.
        GenerateDataKeyPairWithoutPlaintext => "GenerateDataKeyPairWithoutPlaintext",
        /// ReEncryptFrom.
        ReEncryptFrom => "ReEncryptFrom",
        /// ReEncryptTo.
        ReEncryptTo => "ReEncryptTo",
        /// Sign.
        Sign => "Sign",
        /// Verify.
        Verify => "Verify",
        /// GetPublicKey.
        GetPublicKey => "GetPublicKey",
        /// GenerateMac.
        GenerateMac => "GenerateMac",
        /// VerifyMac.
        VerifyMac => "VerifyMac",
        /// DeriveSharedSecret.
        DeriveSharedSecret => "DeriveSharedSecret",
        /// CreateGrant.
        CreateGrant => "CreateGrant",
        /// RetireGrant.
        RetireGrant => "RetireGrant",
        /// DescribeKey.
        DescribeKey => "DescribeKey",
    }
);

impl GrantOperation {
    /// Whether the operation takes an encryption context, so that grant constraints apply.
    #[must_use]
    pub fn takes_encryption_context(self) -> bool {
        use GrantOperation::*;
        matches!(
            self,
            Decrypt
                | Encrypt
                | GenerateDataKey
                | GenerateDataKeyWithoutPlaintext
                | GenerateDataKeyPair
                | GenerateDataKeyPairWithoutPlaintext
                | ReEncryptFrom
                | ReEncryptTo
        )
    }
}

/// The operations AWS lets a grant carry for a key of this spec and usage.
#[must_use]
pub fn allowed_operations(spec: KeySpec, usage: KeyUsage) -> &'static [GrantOperation] {
    use GrantOperation::*;
    match (spec.is_symmetric(), usage) {
        (true, _) => &[
            Decrypt,
            Encrypt,
            GenerateDataKey,
            GenerateDataKeyWithoutPlaintext,
            GenerateDataKeyPair,
            GenerateDataKeyPairWithoutPlaintext,
            ReEncryptFrom,
            ReEncryptTo,
            CreateGrant,
            RetireGrant,
            DescribeKey,
        ],
        (false, KeyUsage::EncryptDecrypt) => &[
            Decrypt,
            Encrypt,
            ReEncryptFrom,
            ReEncryptTo,
            GetPublicKey,
            CreateGrant,
            RetireGrant,
            DescribeKey,
        ],
        (false, KeyUsage::SignVerify) => &[
            Sign,
            Verify,
            GetPublicKey,
            CreateGrant,
            RetireGrant,
            DescribeKey,
        ],
        (false, KeyUsage::GenerateVerifyMac) => &[
            GenerateMac,
            VerifyMac,
            CreateGrant,
            RetireGrant,
            DescribeKey,
        ],
        (false, KeyUsage::KeyAgreement) => &[
            DeriveSharedSecret,
            GetPublicKey,
            CreateGrant,
            RetireGrant,
            DescribeKey,
        ],
    }
}

/// Encryption context constraints of a grant (AWS `GrantConstraints`); at most one is set.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GrantConstraints {
    /// The request's context must contain all these pairs (and may have more).
    pub encryption_context_subset: Option<EncryptionContext>,
    /// The request's context must be exactly this.
    pub encryption_context_equals: Option<EncryptionContext>,
}

impl GrantConstraints {
    fn is_empty(&self) -> bool {
        self.encryption_context_subset.is_none() && self.encryption_context_equals.is_none()
    }

    /// Whether a request with `context` satisfies the constraints.
    #[must_use]
    pub fn permits(&self, context: &EncryptionContext) -> bool {
        let subset_ok = self
            .encryption_context_subset
            .as_ref()
            .is_none_or(|subset| subset.is_subset_of(context));
        let equals_ok = self
            .encryption_context_equals
            .as_ref()
            .is_none_or(|equals| equals == context);
        subset_ok && equals_ok
    }

    /// Whether `child` is at least as strict as `self` (for CreateGrant under a grant).
    #[must_use]
    pub fn is_implied_by(&self, child: &GrantConstraints) -> bool {
        match (
            &self.encryption_context_equals,
            &self.encryption_context_subset,
        ) {
            (Some(equals), _) => child.encryption_context_equals.as_ref() == Some(equals),
            (None, Some(subset)) => {
                child
                    .encryption_context_equals
                    .as_ref()
                    .is_some_and(|eq| subset.is_subset_of(eq))
                    || child
                        .encryption_context_subset
                        .as_ref()
                        .is_some_and(|sub| subset.is_subset_of(sub))
            }
            (None, None) => true,
        }
    }
}

/// A grant as the domain sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// Allowed operations.
    pub operations: BTreeSet<GrantOperation>,
    /// Encryption context constraints.
    pub constraints: GrantConstraints,
}

impl Grant {
    /// Builds a grant for a key, as CreateGrant validates it.
    ///
    /// # Errors
    /// `ValidationException` when there is no operation, an operation is not valid for the
    /// key type, both constraints are set, or constraints are set on a key that takes no
    /// encryption context (asymmetric and HMAC keys).
    pub fn new(
        spec: KeySpec,
        usage: KeyUsage,
        operations: impl IntoIterator<Item = GrantOperation>,
        constraints: GrantConstraints,
    ) -> KmsResult<Self> {
        let operations: BTreeSet<_> = operations.into_iter().collect();
        if operations.is_empty() {
            return Err(KmsError::validation("a grant needs at least one operation"));
        }
        let allowed = allowed_operations(spec, usage);
        let invalid: Vec<_> = operations
            .iter()
            .filter(|op| !allowed.contains(op))
            .map(|op| op.as_str())
            .collect();
        if !invalid.is_empty() {
            return Err(KmsError::Validation(format!(
                "operations {} are not valid for a {spec} key with usage {usage}",
                invalid.join(", ")
            )));
        }
        if constraints.encryption_context_subset.is_some()
            && constraints.encryption_context_equals.is_some()
        {
            return Err(KmsError::validation(
                "specify at most one of EncryptionContextSubset and EncryptionContextEquals",
            ));
        }
        if !constraints.is_empty() && !spec.is_symmetric() {
            return Err(KmsError::Validation(format!(
                "encryption context grant constraints are not supported for {spec} keys"
            )));
        }
        Ok(Self {
            operations,
            constraints,
        })
    }

    /// Whether the grant permits `operation` with the request's encryption context.
    /// Constraints apply to operations that take a context; CreateGrant additionally needs
    /// the new grant's constraints (`child`) to be at least as strict. A CreateGrant whose
    /// child constraints are unknown (`None`) is permitted only by a grant without
    /// constraints: otherwise a constrained grantee could hand out an unconstrained grant.
    #[must_use]
    pub fn permits(
        &self,
        operation: GrantOperation,
        context: &EncryptionContext,
        child: Option<&GrantConstraints>,
    ) -> bool {
        if !self.operations.contains(&operation) {
            return false;
        }
        if operation == GrantOperation::CreateGrant {
            return match child {
                Some(child) => self.constraints.is_implied_by(child),
                None => self.constraints.is_empty(),
            };
        }
        !operation.takes_encryption_context() || self.constraints.permits(context)
    }

    /// As [`Grant::permits`], with AWS's exception.
    ///
    /// # Errors
    /// `AccessDeniedException` when the grant does not permit the request.
    pub fn authorize(
        &self,
        operation: GrantOperation,
        context: &EncryptionContext,
        child: Option<&GrantConstraints>,
    ) -> KmsResult<()> {
        if self.permits(operation, context, child) {
            Ok(())
        } else {
            Err(KmsError::AccessDenied(format!(
                "the grant does not allow {operation} with this encryption context"
            )))
        }
    }
}

/// Length of a grant id: 64 lowercase hex digits (256 bits).
pub const GRANT_ID_LEN: usize = 64;
/// AWS's maximum grant token length.
pub const MAX_GRANT_TOKEN_LEN: usize = 8192;

/// A grant id.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GrantId(String);

impl GrantId {
    /// A grant id from 32 random bytes.
    #[must_use]
    pub fn from_random(random: [u8; 32]) -> Self {
        Self(random.iter().map(|b| format!("{b:02x}")).collect())
    }

    /// Parses a grant id.
    ///
    /// # Errors
    /// `InvalidGrantIdException` unless it is 64 lowercase hex digits.
    pub fn parse(text: &str) -> KmsResult<Self> {
        if text.len() == GRANT_ID_LEN
            && text
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            Ok(Self(text.to_owned()))
        } else {
            Err(KmsError::InvalidGrantId(format!(
                "grant id {:?} is not {GRANT_ID_LEN} lowercase hex digits",
                text.chars().take(80).collect::<String>()
            )))
        }
    }

    /// The text form.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Checks the shape of a grant token (its meaning is up to the issuer).
///
/// # Errors
/// `InvalidGrantTokenException` for an empty or over-long token, or one with characters
/// outside URL-safe base64.
pub fn validate_grant_token(token: &str) -> KmsResult<()> {
    let shape_ok = (1..=MAX_GRANT_TOKEN_LEN).contains(&token.len())
        && token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'=' | b'+' | b'/'));
    if shape_ok {
        Ok(())
    } else {
        Err(KmsError::InvalidGrantToken(
            "the grant token is malformed".to_owned(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use GrantOperation::*;

    fn ctx(pairs: &[(&str, &str)]) -> EncryptionContext {
        EncryptionContext::from_pairs(pairs.iter().copied()).expect("ctx")
    }

    #[test]
    fn operations_per_key_type() {
        let sym = |ops: &[GrantOperation]| {
            Grant::new(
                KeySpec::SymmetricDefault,
                KeyUsage::EncryptDecrypt,
                ops.iter().copied(),
                GrantConstraints::default(),
            )
        };
        assert!(sym(&[Encrypt, Decrypt, GenerateDataKeyPair]).is_ok());
        assert_eq!(
            sym(&[Sign]).map_err(|e| e.aws_exception_name()),
            Err("ValidationException")
        );
        assert_eq!(
            sym(&[]).map_err(|e| e.aws_exception_name()),
            Err("ValidationException")
        );
        let hmac = Grant::new(
            KeySpec::Hmac256,
            KeyUsage::GenerateVerifyMac,
            [GenerateMac, Encrypt],
            GrantConstraints::default(),
        );
        assert!(hmac.is_err());
        assert!(
            Grant::new(
                KeySpec::EccNistP256,
                KeyUsage::KeyAgreement,
                [DeriveSharedSecret, GetPublicKey],
                GrantConstraints::default()
            )
            .is_ok()
        );
        assert!(
            Grant::new(
                KeySpec::Rsa2048,
                KeyUsage::EncryptDecrypt,
                [GenerateDataKey],
                GrantConstraints::default()
            )
            .is_err()
        );
    }

    #[test]
    fn constraints_only_on_symmetric_and_one_at_a_time() {
        let both = GrantConstraints {
            encryption_context_subset: Some(ctx(&[("a", "1")])),
            encryption_context_equals: Some(ctx(&[("a", "1")])),
        };
        assert!(
            Grant::new(
                KeySpec::SymmetricDefault,
                KeyUsage::EncryptDecrypt,
                [Decrypt],
                both
            )
            .is_err()
        );
        let subset = GrantConstraints {
            encryption_context_subset: Some(ctx(&[("a", "1")])),
            ..Default::default()
        };
        assert!(
            Grant::new(
                KeySpec::Rsa2048,
                KeyUsage::EncryptDecrypt,
                [Decrypt],
                subset
            )
            .is_err()
        );
    }

    #[test]
    fn subset_and_equals_evaluation() {
        let subset = Grant::new(
            KeySpec::SymmetricDefault,
            KeyUsage::EncryptDecrypt,
            [Decrypt, DescribeKey, CreateGrant],
            GrantConstraints {
                encryption_context_subset: Some(ctx(&[("Department", "IT")])),
                ..Default::default()
            },
        )
        .expect("grant");
        assert!(subset.permits(
            Decrypt,
            &ctx(&[("Department", "IT"), ("Purpose", "Test")]),
            None
        ));
        assert!(
            !subset.permits(Decrypt, &ctx(&[("Department", "it")]), None),
            "values are case-sensitive"
        );
        assert!(!subset.permits(Decrypt, &ctx(&[]), None));
        assert!(
            !subset.permits(Encrypt, &ctx(&[("Department", "IT")]), None),
            "operation not granted"
        );
        assert!(
            subset.permits(DescribeKey, &ctx(&[]), None),
            "no context: constraint does not apply"
        );
        let stricter = GrantConstraints {
            encryption_context_subset: Some(ctx(&[("Department", "IT"), ("Team", "a")])),
            ..Default::default()
        };
        assert!(subset.permits(CreateGrant, &ctx(&[]), Some(&stricter)));
        assert!(!subset.permits(CreateGrant, &ctx(&[]), Some(&GrantConstraints::default())));
        assert!(
            !subset.permits(CreateGrant, &ctx(&[]), None),
            "a constrained grant allows no CreateGrant whose child constraints are unknown"
        );
        let unconstrained = Grant::new(
            KeySpec::SymmetricDefault,
            KeyUsage::EncryptDecrypt,
            [CreateGrant],
            GrantConstraints::default(),
        )
        .expect("grant");
        assert!(unconstrained.permits(CreateGrant, &ctx(&[]), None));

        let equals = Grant::new(
            KeySpec::SymmetricDefault,
            KeyUsage::EncryptDecrypt,
            [Encrypt],
            GrantConstraints {
                encryption_context_equals: Some(ctx(&[("Department", "IT")])),
                ..Default::default()
            },
        )
        .expect("grant");
        assert!(equals.permits(Encrypt, &ctx(&[("Department", "IT")]), None));
        assert!(!equals.permits(Encrypt, &ctx(&[("Department", "IT"), ("x", "y")]), None));
        assert_eq!(
            equals
                .authorize(Encrypt, &ctx(&[]), None)
                .map_err(|e| e.aws_exception_name()),
            Err("AccessDeniedException")
        );
    }
}
