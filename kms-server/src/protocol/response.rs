//! Typed responses and their encoding to AWS JSON 1.1 (member names, blob and timestamp
//! forms as botocore's model has them).

use std::sync::Arc;

use kms_core::ops::PublicKeyInfo;
use kms_core::spec::{
    DataKeyPairSpec, EncryptionAlgorithm, KeyAgreementAlgorithm, MacAlgorithm, SigningAlgorithm,
};
use kms_core::{KeyState, KeyUsage, Origin, RotationType, SecretBytes};
use time::OffsetDateTime;

use super::json::JsonWriter;
use crate::directory::{AliasEntry, GrantEntry, ResolvedKey, Tag};

/// One entry of ListKeyRotations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RotationEntry {
    /// The key id (not the ARN, as AWS).
    pub key_id: String,
    /// When the material version was created.
    pub rotation_date: OffsetDateTime,
    /// AUTOMATIC or ON_DEMAND; `None` for the original material (ALL_KEY_MATERIAL only).
    pub rotation_type: Option<RotationType>,
    /// Whether this is the current material.
    pub current: bool,
}

/// A successful answer of any operation.
#[derive(Debug)]
pub enum KmsResponse {
    /// Encrypt.
    Encrypt {
        /// ARN of the key used.
        key_arn: String,
        /// The ciphertext.
        ciphertext_blob: Vec<u8>,
        /// The algorithm used.
        algorithm: EncryptionAlgorithm,
    },
    /// Decrypt.
    Decrypt {
        /// ARN of the key used.
        key_arn: String,
        /// The plaintext.
        plaintext: SecretBytes,
        /// The algorithm used.
        algorithm: EncryptionAlgorithm,
    },
    /// ReEncrypt.
    ReEncrypt {
        /// The new ciphertext.
        ciphertext_blob: Vec<u8>,
        /// ARN of the source key.
        source_key_arn: String,
        /// ARN of the destination key.
        key_arn: String,
        /// Source algorithm.
        source_algorithm: EncryptionAlgorithm,
        /// Destination algorithm.
        destination_algorithm: EncryptionAlgorithm,
    },
    /// GenerateDataKey (`plaintext` set) and GenerateDataKeyWithoutPlaintext.
    GenerateDataKey {
        /// ARN of the key used.
        key_arn: String,
        /// The encrypted data key.
        ciphertext_blob: Vec<u8>,
        /// The data key.
        plaintext: Option<SecretBytes>,
    },
    /// GenerateDataKeyPair (`private_key_plaintext` set) and ...WithoutPlaintext.
    GenerateDataKeyPair {
        /// ARN of the key used.
        key_arn: String,
        /// The pair's type.
        key_pair_spec: DataKeyPairSpec,
        /// DER SubjectPublicKeyInfo.
        public_key: Vec<u8>,
        /// The private key encrypted under the KMS key.
        private_key_ciphertext_blob: Vec<u8>,
        /// PKCS#8 DER private key.
        private_key_plaintext: Option<SecretBytes>,
    },
    /// GenerateRandom.
    GenerateRandom {
        /// The random bytes.
        plaintext: SecretBytes,
    },
    /// GetPublicKey.
    GetPublicKey {
        /// ARN of the key.
        key_arn: String,
        /// Public key and algorithms.
        info: PublicKeyInfo,
    },
    /// Sign.
    Sign {
        /// ARN of the key used.
        key_arn: String,
        /// The signature.
        signature: Vec<u8>,
        /// The algorithm used.
        algorithm: SigningAlgorithm,
    },
    /// Verify (a signature that does not verify is an exception, as AWS).
    Verify {
        /// ARN of the key used.
        key_arn: String,
        /// The algorithm used.
        algorithm: SigningAlgorithm,
    },
    /// GenerateMac.
    GenerateMac {
        /// ARN of the key used.
        key_arn: String,
        /// The MAC.
        mac: Vec<u8>,
        /// The algorithm used.
        algorithm: MacAlgorithm,
    },
    /// VerifyMac (a MAC that does not verify is an exception, as AWS).
    VerifyMac {
        /// ARN of the key used.
        key_arn: String,
        /// The algorithm used.
        algorithm: MacAlgorithm,
    },
    /// DeriveSharedSecret.
    DeriveSharedSecret {
        /// ARN of the key used.
        key_arn: String,
        /// The raw shared secret.
        shared_secret: SecretBytes,
        /// The algorithm used.
        algorithm: KeyAgreementAlgorithm,
        /// Origin of the key.
        origin: Origin,
    },
    /// DescribeKey.
    DescribeKey {
        /// The key.
        key: Arc<ResolvedKey>,
        /// The 12-digit account id of the key's namespace.
        account_id: String,
    },
    /// ListKeys.
    ListKeys {
        /// (key id, key ARN) pairs.
        keys: Vec<(String, String)>,
        /// Marker of the next page.
        next_marker: Option<String>,
    },
    /// ListAliases.
    ListAliases {
        /// The aliases.
        aliases: Vec<AliasEntry>,
        /// Marker of the next page.
        next_marker: Option<String>,
    },
    /// ListGrants.
    ListGrants {
        /// The grants.
        grants: Vec<GrantEntry>,
        /// Marker of the next page.
        next_marker: Option<String>,
    },
    /// GetKeyRotationStatus.
    GetKeyRotationStatus {
        /// The key id.
        key_id: String,
        /// Whether automatic rotation is on.
        enabled: bool,
        /// Its period.
        period_days: Option<u32>,
        /// When it is next due.
        next_rotation: Option<OffsetDateTime>,
    },
    /// ListKeyRotations.
    ListKeyRotations {
        /// The rotations.
        rotations: Vec<RotationEntry>,
        /// Marker of the next page.
        next_marker: Option<String>,
    },
    /// ListResourceTags.
    ListResourceTags {
        /// The tags.
        tags: Vec<Tag>,
        /// Marker of the next page.
        next_marker: Option<String>,
    },
}

fn page_end(w: &mut JsonWriter, next_marker: Option<&String>) {
    match next_marker {
        Some(marker) => {
            w.string("NextMarker", marker).bool("Truncated", true);
        }
        None => {
            w.bool("Truncated", false);
        }
    }
}

fn blob_capacity(len: usize) -> usize {
    len.div_ceil(3) * 4 + 160
}

/// The JSON body of a response.
#[must_use]
pub fn encode(response: &KmsResponse) -> Vec<u8> {
    match response {
        KmsResponse::Encrypt {
            key_arn,
            ciphertext_blob,
            algorithm,
        } => {
            let mut w =
                JsonWriter::with_capacity(blob_capacity(ciphertext_blob.len()) + key_arn.len());
            w.blob("CiphertextBlob", ciphertext_blob)
                .string("KeyId", key_arn)
                .string("EncryptionAlgorithm", algorithm.as_str());
            w.finish()
        }
        KmsResponse::Decrypt {
            key_arn,
            plaintext,
            algorithm,
        } => {
            let mut w = JsonWriter::with_capacity(blob_capacity(plaintext.len()) + key_arn.len());
            w.string("KeyId", key_arn)
                .blob("Plaintext", plaintext.expose())
                .string("EncryptionAlgorithm", algorithm.as_str());
            w.finish()
        }
        KmsResponse::ReEncrypt {
            ciphertext_blob,
            source_key_arn,
            key_arn,
            source_algorithm,
            destination_algorithm,
        } => {
            let mut w =
                JsonWriter::with_capacity(blob_capacity(ciphertext_blob.len()) + 2 * key_arn.len());
            w.blob("CiphertextBlob", ciphertext_blob)
                .string("SourceKeyId", source_key_arn)
                .string("KeyId", key_arn)
                .string("SourceEncryptionAlgorithm", source_algorithm.as_str())
                .string(
                    "DestinationEncryptionAlgorithm",
                    destination_algorithm.as_str(),
                );
            w.finish()
        }
        KmsResponse::GenerateDataKey {
            key_arn,
            ciphertext_blob,
            plaintext,
        } => {
            let mut w = JsonWriter::with_capacity(blob_capacity(ciphertext_blob.len() + 1024));
            w.blob("CiphertextBlob", ciphertext_blob);
            if let Some(plaintext) = plaintext {
                w.blob("Plaintext", plaintext.expose());
            }
            w.string("KeyId", key_arn);
            w.finish()
        }
        KmsResponse::GenerateDataKeyPair {
            key_arn,
            key_pair_spec,
            public_key,
            private_key_ciphertext_blob,
            private_key_plaintext,
        } => {
            let mut w = JsonWriter::with_capacity(blob_capacity(
                public_key.len() + 2 * private_key_ciphertext_blob.len(),
            ));
            w.blob("PrivateKeyCiphertextBlob", private_key_ciphertext_blob);
            if let Some(private) = private_key_plaintext {
                w.blob("PrivateKeyPlaintext", private.expose());
            }
            w.blob("PublicKey", public_key)
                .string("KeyId", key_arn)
                .string("KeyPairSpec", key_pair_spec.as_str());
            w.finish()
        }
        KmsResponse::GenerateRandom { plaintext } => {
            let mut w = JsonWriter::with_capacity(blob_capacity(plaintext.len()));
            w.blob("Plaintext", plaintext.expose());
            w.finish()
        }
        KmsResponse::GetPublicKey { key_arn, info } => {
            let mut w = JsonWriter::with_capacity(blob_capacity(info.public_key.len()) + 256);
            w.string("KeyId", key_arn)
                .blob("PublicKey", &info.public_key)
                .string("CustomerMasterKeySpec", info.key_spec.as_str())
                .string("KeySpec", info.key_spec.as_str())
                .string("KeyUsage", info.key_usage.as_str());
            if !info.encryption_algorithms.is_empty() {
                w.strings(
                    "EncryptionAlgorithms",
                    info.encryption_algorithms.iter().map(|a| a.as_str()),
                );
            }
            if !info.signing_algorithms.is_empty() {
                w.strings(
                    "SigningAlgorithms",
                    info.signing_algorithms.iter().map(|a| a.as_str()),
                );
            }
            if !info.key_agreement_algorithms.is_empty() {
                w.strings(
                    "KeyAgreementAlgorithms",
                    info.key_agreement_algorithms.iter().map(|a| a.as_str()),
                );
            }
            w.finish()
        }
        KmsResponse::Sign {
            key_arn,
            signature,
            algorithm,
        } => {
            let mut w = JsonWriter::with_capacity(blob_capacity(signature.len()) + key_arn.len());
            w.string("KeyId", key_arn)
                .blob("Signature", signature)
                .string("SigningAlgorithm", algorithm.as_str());
            w.finish()
        }
        KmsResponse::Verify { key_arn, algorithm } => {
            let mut w = JsonWriter::with_capacity(256);
            w.string("KeyId", key_arn)
                .bool("SignatureValid", true)
                .string("SigningAlgorithm", algorithm.as_str());
            w.finish()
        }
        KmsResponse::GenerateMac {
            key_arn,
            mac,
            algorithm,
        } => {
            let mut w = JsonWriter::with_capacity(blob_capacity(mac.len()) + key_arn.len());
            w.blob("Mac", mac)
                .string("MacAlgorithm", algorithm.as_str())
                .string("KeyId", key_arn);
            w.finish()
        }
        KmsResponse::VerifyMac { key_arn, algorithm } => {
            let mut w = JsonWriter::with_capacity(256);
            w.string("KeyId", key_arn)
                .bool("MacValid", true)
                .string("MacAlgorithm", algorithm.as_str());
            w.finish()
        }
        KmsResponse::DeriveSharedSecret {
            key_arn,
            shared_secret,
            algorithm,
            origin,
        } => {
            let mut w = JsonWriter::with_capacity(blob_capacity(shared_secret.len()) + 256);
            w.string("KeyId", key_arn)
                .blob("SharedSecret", shared_secret.expose())
                .string("KeyAgreementAlgorithm", algorithm.as_str())
                .string("KeyOrigin", origin.as_str());
            w.finish()
        }
        KmsResponse::DescribeKey { key, account_id } => {
            let mut w = JsonWriter::with_capacity(1024);
            w.begin_object("KeyMetadata");
            write_key_metadata(&mut w, key, account_id);
            w.end();
            w.finish()
        }
        KmsResponse::ListKeys { keys, next_marker } => {
            let mut w = JsonWriter::with_capacity(64 + keys.len() * 160);
            w.begin_array("Keys");
            for (id, arn) in keys {
                w.element().string("KeyId", id).string("KeyArn", arn).end();
            }
            w.end_array();
            page_end(&mut w, next_marker.as_ref());
            w.finish()
        }
        KmsResponse::ListAliases {
            aliases,
            next_marker,
        } => {
            let mut w = JsonWriter::with_capacity(64 + aliases.len() * 256);
            w.begin_array("Aliases");
            for alias in aliases {
                w.element()
                    .string("AliasName", &alias.alias_name)
                    .string("AliasArn", &alias.alias_arn);
                if let Some(target) = &alias.target_key_id {
                    w.string("TargetKeyId", target);
                }
                if let Some(created) = alias.creation_date {
                    w.timestamp("CreationDate", created);
                }
                if let Some(updated) = alias.last_updated_date {
                    w.timestamp("LastUpdatedDate", updated);
                }
                w.end();
            }
            w.end_array();
            page_end(&mut w, next_marker.as_ref());
            w.finish()
        }
        KmsResponse::ListGrants {
            grants,
            next_marker,
        } => {
            let mut w = JsonWriter::with_capacity(64 + grants.len() * 512);
            w.begin_array("Grants");
            for grant in grants {
                write_grant(&mut w, grant);
            }
            w.end_array();
            page_end(&mut w, next_marker.as_ref());
            w.finish()
        }
        KmsResponse::GetKeyRotationStatus {
            key_id,
            enabled,
            period_days,
            next_rotation,
        } => {
            let mut w = JsonWriter::with_capacity(256);
            w.bool("KeyRotationEnabled", *enabled)
                .string("KeyId", key_id);
            if let Some(days) = period_days {
                w.integer("RotationPeriodInDays", i64::from(*days));
            }
            if let Some(next) = next_rotation {
                w.timestamp("NextRotationDate", *next);
            }
            w.finish()
        }
        KmsResponse::ListKeyRotations {
            rotations,
            next_marker,
        } => {
            let mut w = JsonWriter::with_capacity(64 + rotations.len() * 160);
            w.begin_array("Rotations");
            for rotation in rotations {
                w.element()
                    .string("KeyId", &rotation.key_id)
                    .timestamp("RotationDate", rotation.rotation_date);
                if let Some(kind) = rotation.rotation_type {
                    w.string("RotationType", kind.as_str());
                }
                w.string(
                    "KeyMaterialState",
                    if rotation.current {
                        "CURRENT"
                    } else {
                        "NON_CURRENT"
                    },
                );
                w.end();
            }
            w.end_array();
            page_end(&mut w, next_marker.as_ref());
            w.finish()
        }
        KmsResponse::ListResourceTags { tags, next_marker } => {
            let mut w = JsonWriter::with_capacity(64 + tags.len() * 128);
            w.begin_array("Tags");
            for tag in tags {
                w.element()
                    .string("TagKey", &tag.key)
                    .string("TagValue", &tag.value)
                    .end();
            }
            w.end_array();
            page_end(&mut w, next_marker.as_ref());
            w.finish()
        }
    }
}

fn write_key_metadata(w: &mut JsonWriter, key: &ResolvedKey, account_id: &str) {
    let metadata = &key.key().metadata;
    let spec = metadata.spec;
    w.string("AWSAccountId", account_id)
        .string("KeyId", &metadata.key_id.to_string())
        .string("Arn", key.arn_text())
        .timestamp("CreationDate", metadata.created)
        .bool("Enabled", metadata.state == KeyState::Enabled)
        .string("Description", &metadata.description)
        .string("KeyUsage", metadata.usage.as_str())
        .string("KeyState", metadata.state.as_str());
    if let Some(date) = metadata.deletion_date {
        w.timestamp("DeletionDate", date);
    }
    w.string("Origin", metadata.origin.as_str());
    if metadata.origin == Origin::External {
        w.string("ExpirationModel", "KEY_MATERIAL_DOES_NOT_EXPIRE");
    }
    w.string("KeyManager", "CUSTOMER")
        .string("CustomerMasterKeySpec", spec.as_str())
        .string("KeySpec", spec.as_str());
    match metadata.usage {
        KeyUsage::EncryptDecrypt => {
            w.strings(
                "EncryptionAlgorithms",
                spec.encryption_algorithms().iter().map(|a| a.as_str()),
            );
        }
        KeyUsage::SignVerify => {
            w.strings(
                "SigningAlgorithms",
                spec.signing_algorithms().iter().map(|a| a.as_str()),
            );
        }
        KeyUsage::GenerateVerifyMac => {
            w.strings(
                "MacAlgorithms",
                spec.mac_algorithms().iter().map(|a| a.as_str()),
            );
        }
        KeyUsage::KeyAgreement => {
            w.strings(
                "KeyAgreementAlgorithms",
                spec.key_agreement_algorithms().iter().map(|a| a.as_str()),
            );
        }
    }
    w.bool("MultiRegion", metadata.key_id.is_multi_cluster());
}

fn write_grant(w: &mut JsonWriter, grant: &GrantEntry) {
    w.element()
        .string("KeyId", &grant.key_arn)
        .string("GrantId", &grant.grant_id);
    if let Some(name) = &grant.name {
        w.string("Name", name);
    }
    if let Some(created) = grant.creation_date {
        w.timestamp("CreationDate", created);
    }
    w.string("GranteePrincipal", &grant.grantee_principal);
    if let Some(retiring) = &grant.retiring_principal {
        w.string("RetiringPrincipal", retiring);
    }
    w.string("IssuingAccount", &grant.issuing_account)
        .strings("Operations", grant.operations.iter().map(|op| op.as_str()));
    let constraints = &grant.constraints;
    if constraints.encryption_context_subset.is_some()
        || constraints.encryption_context_equals.is_some()
    {
        w.begin_object("Constraints");
        if let Some(subset) = &constraints.encryption_context_subset {
            w.string_map(
                "EncryptionContextSubset",
                subset
                    .as_map()
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str())),
            );
        }
        if let Some(equals) = &constraints.encryption_context_equals {
            w.string_map(
                "EncryptionContextEquals",
                equals
                    .as_map()
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str())),
            );
        }
        w.end();
    }
    w.end();
}
