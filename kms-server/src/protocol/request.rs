//! Typed, validated requests: what the decode step produces and the rest of the path uses.
//! Field names, types and limits are botocore's KMS service model (2014-11-01).

use kms_core::spec::{
    DataKeyPairSpec, DataKeySpec, EncryptionAlgorithm, KeyAgreementAlgorithm, MacAlgorithm,
    MessageType, SigningAlgorithm,
};
use kms_core::{EncryptionContext, SecretBytes};

use super::operation::ApiOperation;

/// Pagination of the List operations.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Page {
    /// `Limit` (1..=1000 by the model; each operation caps it further, as AWS does).
    pub limit: Option<u32>,
    /// `Marker`, as a previous page's `NextMarker` gave it.
    pub marker: Option<String>,
}

/// Encrypt.
#[derive(Debug)]
pub struct EncryptRequest {
    /// `KeyId`.
    pub key_id: String,
    /// `Plaintext`.
    pub plaintext: SecretBytes,
    /// `EncryptionContext`.
    pub encryption_context: EncryptionContext,
    /// `EncryptionAlgorithm` (default SYMMETRIC_DEFAULT).
    pub algorithm: EncryptionAlgorithm,
    /// `GrantTokens`.
    pub grant_tokens: Vec<String>,
    /// `DryRun`.
    pub dry_run: bool,
}

/// Decrypt.
#[derive(Debug)]
pub struct DecryptRequest {
    /// `CiphertextBlob`; absent only with `DryRun` and the `IGNORE_CIPHERTEXT` modifier.
    pub ciphertext_blob: Option<Vec<u8>>,
    /// `KeyId`: optional for symmetric blobs (the blob names its key).
    pub key_id: Option<String>,
    /// `EncryptionContext`.
    pub encryption_context: EncryptionContext,
    /// `EncryptionAlgorithm` (default SYMMETRIC_DEFAULT).
    pub algorithm: EncryptionAlgorithm,
    /// `GrantTokens`.
    pub grant_tokens: Vec<String>,
    /// `DryRun`.
    pub dry_run: bool,
    /// `DryRunModifiers` contains `IGNORE_CIPHERTEXT`.
    pub ignore_ciphertext: bool,
}

/// ReEncrypt.
#[derive(Debug)]
pub struct ReEncryptRequest {
    /// `CiphertextBlob`; absent only with `DryRun` and `IGNORE_CIPHERTEXT`.
    pub ciphertext_blob: Option<Vec<u8>>,
    /// `SourceKeyId`.
    pub source_key_id: Option<String>,
    /// `SourceEncryptionContext`.
    pub source_encryption_context: EncryptionContext,
    /// `SourceEncryptionAlgorithm`.
    pub source_algorithm: EncryptionAlgorithm,
    /// `DestinationKeyId`.
    pub destination_key_id: String,
    /// `DestinationEncryptionContext`.
    pub destination_encryption_context: EncryptionContext,
    /// `DestinationEncryptionAlgorithm`.
    pub destination_algorithm: EncryptionAlgorithm,
    /// `GrantTokens`.
    pub grant_tokens: Vec<String>,
    /// `DryRun`.
    pub dry_run: bool,
    /// `DryRunModifiers` contains `IGNORE_CIPHERTEXT`.
    pub ignore_ciphertext: bool,
}

/// GenerateDataKey and GenerateDataKeyWithoutPlaintext.
#[derive(Debug)]
pub struct GenerateDataKeyRequest {
    /// `KeyId`.
    pub key_id: String,
    /// `EncryptionContext`.
    pub encryption_context: EncryptionContext,
    /// `KeySpec`.
    pub key_spec: Option<DataKeySpec>,
    /// `NumberOfBytes`.
    pub number_of_bytes: Option<usize>,
    /// `GrantTokens`.
    pub grant_tokens: Vec<String>,
    /// `DryRun`.
    pub dry_run: bool,
}

/// GenerateDataKeyPair and GenerateDataKeyPairWithoutPlaintext.
#[derive(Debug)]
pub struct GenerateDataKeyPairRequest {
    /// `KeyId`.
    pub key_id: String,
    /// `EncryptionContext`.
    pub encryption_context: EncryptionContext,
    /// `KeyPairSpec`.
    pub key_pair_spec: DataKeyPairSpec,
    /// `GrantTokens`.
    pub grant_tokens: Vec<String>,
    /// `DryRun`.
    pub dry_run: bool,
}

/// GenerateRandom.
#[derive(Debug)]
pub struct GenerateRandomRequest {
    /// `NumberOfBytes`.
    pub number_of_bytes: usize,
}

/// GetPublicKey and DescribeKey: a key and grant tokens.
#[derive(Debug)]
pub struct KeyRequest {
    /// `KeyId`.
    pub key_id: String,
    /// `GrantTokens`.
    pub grant_tokens: Vec<String>,
}

/// Sign.
#[derive(Debug)]
pub struct SignRequest {
    /// `KeyId`.
    pub key_id: String,
    /// `Message`.
    pub message: SecretBytes,
    /// `MessageType` (default RAW).
    pub message_type: MessageType,
    /// `SigningAlgorithm`.
    pub algorithm: SigningAlgorithm,
    /// `GrantTokens`.
    pub grant_tokens: Vec<String>,
    /// `DryRun`.
    pub dry_run: bool,
}

/// Verify.
#[derive(Debug)]
pub struct VerifyRequest {
    /// `KeyId`.
    pub key_id: String,
    /// `Message`.
    pub message: SecretBytes,
    /// `MessageType` (default RAW).
    pub message_type: MessageType,
    /// `Signature`.
    pub signature: Vec<u8>,
    /// `SigningAlgorithm`.
    pub algorithm: SigningAlgorithm,
    /// `GrantTokens`.
    pub grant_tokens: Vec<String>,
    /// `DryRun`.
    pub dry_run: bool,
}

/// GenerateMac.
#[derive(Debug)]
pub struct GenerateMacRequest {
    /// `KeyId`.
    pub key_id: String,
    /// `Message`.
    pub message: SecretBytes,
    /// `MacAlgorithm`.
    pub algorithm: MacAlgorithm,
    /// `GrantTokens`.
    pub grant_tokens: Vec<String>,
    /// `DryRun`.
    pub dry_run: bool,
}

/// VerifyMac.
#[derive(Debug)]
pub struct VerifyMacRequest {
    /// `KeyId`.
    pub key_id: String,
    /// `Message`.
    pub message: SecretBytes,
    /// `Mac`.
    pub mac: Vec<u8>,
    /// `MacAlgorithm`.
    pub algorithm: MacAlgorithm,
    /// `GrantTokens`.
    pub grant_tokens: Vec<String>,
    /// `DryRun`.
    pub dry_run: bool,
}

/// DeriveSharedSecret.
#[derive(Debug)]
pub struct DeriveSharedSecretRequest {
    /// `KeyId`.
    pub key_id: String,
    /// `KeyAgreementAlgorithm`.
    pub algorithm: KeyAgreementAlgorithm,
    /// `PublicKey` (DER SubjectPublicKeyInfo of the peer).
    pub public_key: Vec<u8>,
    /// `GrantTokens`.
    pub grant_tokens: Vec<String>,
    /// `DryRun`.
    pub dry_run: bool,
}

/// ListAliases.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListAliasesRequest {
    /// `KeyId`: only the aliases of this key.
    pub key_id: Option<String>,
    /// Pagination.
    pub page: Page,
}

/// ListGrants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListGrantsRequest {
    /// `KeyId`.
    pub key_id: String,
    /// `GrantId`: only this grant.
    pub grant_id: Option<String>,
    /// `GranteePrincipal`: only grants for this principal.
    pub grantee_principal: Option<String>,
    /// Pagination.
    pub page: Page,
}

/// ListKeyRotations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListKeyRotationsRequest {
    /// `KeyId`.
    pub key_id: String,
    /// `IncludeKeyMaterial` is `ALL_KEY_MATERIAL` (the original material too).
    pub include_all_material: bool,
    /// Pagination.
    pub page: Page,
}

/// A key and a page (ListResourceTags).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyPageRequest {
    /// `KeyId`.
    pub key_id: String,
    /// Pagination.
    pub page: Page,
}

/// A decoded request of any operation.
#[derive(Debug)]
pub enum KmsRequest {
    /// Encrypt.
    Encrypt(EncryptRequest),
    /// Decrypt.
    Decrypt(DecryptRequest),
    /// ReEncrypt.
    ReEncrypt(ReEncryptRequest),
    /// GenerateDataKey.
    GenerateDataKey(GenerateDataKeyRequest),
    /// GenerateDataKeyWithoutPlaintext.
    GenerateDataKeyWithoutPlaintext(GenerateDataKeyRequest),
    /// GenerateDataKeyPair.
    GenerateDataKeyPair(GenerateDataKeyPairRequest),
    /// GenerateDataKeyPairWithoutPlaintext.
    GenerateDataKeyPairWithoutPlaintext(GenerateDataKeyPairRequest),
    /// GenerateRandom.
    GenerateRandom(GenerateRandomRequest),
    /// GetPublicKey.
    GetPublicKey(KeyRequest),
    /// Sign.
    Sign(SignRequest),
    /// Verify.
    Verify(VerifyRequest),
    /// GenerateMac.
    GenerateMac(GenerateMacRequest),
    /// VerifyMac.
    VerifyMac(VerifyMacRequest),
    /// DeriveSharedSecret.
    DeriveSharedSecret(DeriveSharedSecretRequest),
    /// DescribeKey.
    DescribeKey(KeyRequest),
    /// ListKeys.
    ListKeys(Page),
    /// ListAliases.
    ListAliases(ListAliasesRequest),
    /// ListGrants.
    ListGrants(ListGrantsRequest),
    /// GetKeyRotationStatus.
    GetKeyRotationStatus(String),
    /// ListKeyRotations.
    ListKeyRotations(ListKeyRotationsRequest),
    /// ListResourceTags.
    ListResourceTags(KeyPageRequest),
}

impl KmsRequest {
    /// The operation.
    #[must_use]
    pub fn operation(&self) -> ApiOperation {
        match self {
            Self::Encrypt(_) => ApiOperation::Encrypt,
            Self::Decrypt(_) => ApiOperation::Decrypt,
            Self::ReEncrypt(_) => ApiOperation::ReEncrypt,
            Self::GenerateDataKey(_) => ApiOperation::GenerateDataKey,
            Self::GenerateDataKeyWithoutPlaintext(_) => {
                ApiOperation::GenerateDataKeyWithoutPlaintext
            }
            Self::GenerateDataKeyPair(_) => ApiOperation::GenerateDataKeyPair,
            Self::GenerateDataKeyPairWithoutPlaintext(_) => {
                ApiOperation::GenerateDataKeyPairWithoutPlaintext
            }
            Self::GenerateRandom(_) => ApiOperation::GenerateRandom,
            Self::GetPublicKey(_) => ApiOperation::GetPublicKey,
            Self::Sign(_) => ApiOperation::Sign,
            Self::Verify(_) => ApiOperation::Verify,
            Self::GenerateMac(_) => ApiOperation::GenerateMac,
            Self::VerifyMac(_) => ApiOperation::VerifyMac,
            Self::DeriveSharedSecret(_) => ApiOperation::DeriveSharedSecret,
            Self::DescribeKey(_) => ApiOperation::DescribeKey,
            Self::ListKeys(_) => ApiOperation::ListKeys,
            Self::ListAliases(_) => ApiOperation::ListAliases,
            Self::ListGrants(_) => ApiOperation::ListGrants,
            Self::GetKeyRotationStatus(_) => ApiOperation::GetKeyRotationStatus,
            Self::ListKeyRotations(_) => ApiOperation::ListKeyRotations,
            Self::ListResourceTags(_) => ApiOperation::ListResourceTags,
        }
    }

    /// Every encryption context the request carries (for the reserved-prefix rule and
    /// the audit record).
    pub fn encryption_contexts(&self) -> impl Iterator<Item = &EncryptionContext> {
        let (first, second) = match self {
            Self::Encrypt(r) => (Some(&r.encryption_context), None),
            Self::Decrypt(r) => (Some(&r.encryption_context), None),
            Self::ReEncrypt(r) => (
                Some(&r.source_encryption_context),
                Some(&r.destination_encryption_context),
            ),
            Self::GenerateDataKey(r) | Self::GenerateDataKeyWithoutPlaintext(r) => {
                (Some(&r.encryption_context), None)
            }
            Self::GenerateDataKeyPair(r) | Self::GenerateDataKeyPairWithoutPlaintext(r) => {
                (Some(&r.encryption_context), None)
            }
            _ => (None, None),
        };
        first.into_iter().chain(second)
    }

    /// How many grant tokens the request carries.
    #[must_use]
    pub fn grant_token_count(&self) -> usize {
        match self {
            Self::Encrypt(r) => r.grant_tokens.len(),
            Self::Decrypt(r) => r.grant_tokens.len(),
            Self::ReEncrypt(r) => r.grant_tokens.len(),
            Self::GenerateDataKey(r) | Self::GenerateDataKeyWithoutPlaintext(r) => {
                r.grant_tokens.len()
            }
            Self::GenerateDataKeyPair(r) | Self::GenerateDataKeyPairWithoutPlaintext(r) => {
                r.grant_tokens.len()
            }
            Self::GetPublicKey(r) | Self::DescribeKey(r) => r.grant_tokens.len(),
            Self::Sign(r) => r.grant_tokens.len(),
            Self::Verify(r) => r.grant_tokens.len(),
            Self::GenerateMac(r) => r.grant_tokens.len(),
            Self::VerifyMac(r) => r.grant_tokens.len(),
            Self::DeriveSharedSecret(r) => r.grant_tokens.len(),
            _ => 0,
        }
    }

    /// Whether `DryRun` is set.
    #[must_use]
    pub fn dry_run(&self) -> bool {
        match self {
            Self::Encrypt(r) => r.dry_run,
            Self::Decrypt(r) => r.dry_run,
            Self::ReEncrypt(r) => r.dry_run,
            Self::GenerateDataKey(r) | Self::GenerateDataKeyWithoutPlaintext(r) => r.dry_run,
            Self::GenerateDataKeyPair(r) | Self::GenerateDataKeyPairWithoutPlaintext(r) => {
                r.dry_run
            }
            Self::Sign(r) => r.dry_run,
            Self::Verify(r) => r.dry_run,
            Self::GenerateMac(r) => r.dry_run,
            Self::VerifyMac(r) => r.dry_run,
            Self::DeriveSharedSecret(r) => r.dry_run,
            _ => false,
        }
    }
}
