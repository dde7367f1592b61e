//! Key specs, key usages and the algorithm names of AWS KMS, with AWS's valid combinations.

use crate::error::{KmsError, KmsResult};
use crate::names::aws_names;

aws_names!(
    /// The type of key material (AWS `KeySpec`).
    KeySpec {
        /// AES-256-GCM.
        SymmetricDefault => "SYMMETRIC_DEFAULT",
        /// RSA with a 2048-bit modulus.
        Rsa2048 => "RSA_2048",
        /// RSA with a 3072-bit modulus.
        Rsa3072 => "RSA_3072",
        /// RSA with a 4096-bit modulus.
        Rsa4096 => "RSA_4096",
        /// NIST P-256 (secp256r1).
        EccNistP256 => "ECC_NIST_P256",
        /// NIST P-384 (secp384r1).
        EccNistP384 => "ECC_NIST_P384",
        /// NIST P-521 (secp521r1).
        EccNistP521 => "ECC_NIST_P521",
        /// secp256k1.
        EccSecgP256k1 => "ECC_SECG_P256K1",
        /// HMAC with a 224-bit key.
        Hmac224 => "HMAC_224",
        /// HMAC with a 256-bit key.
        Hmac256 => "HMAC_256",
        /// HMAC with a 384-bit key.
        Hmac384 => "HMAC_384",
        /// HMAC with a 512-bit key.
        Hmac512 => "HMAC_512",
    }
);

aws_names!(
    /// What a key may be used for (AWS `KeyUsage`).
    KeyUsage {
        /// Encrypt and Decrypt.
        EncryptDecrypt => "ENCRYPT_DECRYPT",
        /// Sign and Verify.
        SignVerify => "SIGN_VERIFY",
        /// GenerateMac and VerifyMac.
        GenerateVerifyMac => "GENERATE_VERIFY_MAC",
        /// DeriveSharedSecret.
        KeyAgreement => "KEY_AGREEMENT",
    }
);

aws_names!(
    /// Where the key material comes from (AWS `Origin`).
    Origin {
        /// Generated inside KubeKMS.
        AwsKms => "AWS_KMS",
        /// Imported by the customer.
        External => "EXTERNAL",
    }
);

aws_names!(
    /// Encryption algorithms (AWS `EncryptionAlgorithmSpec`).
    EncryptionAlgorithm {
        /// AES-256-GCM through the ciphertext blob.
        SymmetricDefault => "SYMMETRIC_DEFAULT",
        /// RSA-OAEP with SHA-1 and MGF1-SHA-1.
        RsaesOaepSha1 => "RSAES_OAEP_SHA_1",
        /// RSA-OAEP with SHA-256 and MGF1-SHA-256.
        RsaesOaepSha256 => "RSAES_OAEP_SHA_256",
    }
);

aws_names!(
    /// Signing algorithms (AWS `SigningAlgorithmSpec`).
    SigningAlgorithm {
        /// RSASSA-PSS, SHA-256, MGF1-SHA-256, salt of 32 bytes.
        RsassaPssSha256 => "RSASSA_PSS_SHA_256",
        /// RSASSA-PSS, SHA-384, MGF1-SHA-384, salt of 48 bytes.
        RsassaPssSha384 => "RSASSA_PSS_SHA_384",
        /// RSASSA-PSS, SHA-512, MGF1-SHA-512, salt of 64 bytes.
        RsassaPssSha512 => "RSASSA_PSS_SHA_512",
        /// RSASSA-PKCS1-v1_5 with SHA-256.
        RsassaPkcs1V15Sha256 => "RSASSA_PKCS1_V1_5_SHA_256",
        /// RSASSA-PKCS1-v1_5 with SHA-384.
        RsassaPkcs1V15Sha384 => "RSASSA_PKCS1_V1_5_SHA_384",
        /// RSASSA-PKCS1-v1_5 with SHA-512.
        RsassaPkcs1V15Sha512 => "RSASSA_PKCS1_V1_5_SHA_512",
        /// ECDSA with SHA-256 (P-256, secp256k1), DER signature.
        EcdsaSha256 => "ECDSA_SHA_256",
        /// ECDSA with SHA-384 (P-384), DER signature.
        EcdsaSha384 => "ECDSA_SHA_384",
        /// ECDSA with SHA-512 (P-521), DER signature.
        EcdsaSha512 => "ECDSA_SHA_512",
    }
);

aws_names!(
    /// MAC algorithms (AWS `MacAlgorithmSpec`).
    MacAlgorithm {
        /// HMAC-SHA-224.
        HmacSha224 => "HMAC_SHA_224",
        /// HMAC-SHA-256.
        HmacSha256 => "HMAC_SHA_256",
        /// HMAC-SHA-384.
        HmacSha384 => "HMAC_SHA_384",
        /// HMAC-SHA-512.
        HmacSha512 => "HMAC_SHA_512",
    }
);

aws_names!(
    /// Key agreement algorithms (AWS `KeyAgreementAlgorithmSpec`).
    KeyAgreementAlgorithm {
        /// Elliptic-curve Diffie-Hellman (raw shared secret, as AWS returns it).
        Ecdh => "ECDH",
    }
);

aws_names!(
    /// How a signed message is given (AWS `MessageType`).
    MessageType {
        /// The message itself, hashed here.
        Raw => "RAW",
        /// A digest computed by the caller.
        Digest => "DIGEST",
    }
);

aws_names!(
    /// Data key lengths by name (AWS `DataKeySpec`).
    DataKeySpec {
        /// 16 bytes.
        Aes128 => "AES_128",
        /// 32 bytes.
        Aes256 => "AES_256",
    }
);

aws_names!(
    /// Data key pair types (AWS `DataKeyPairSpec`).
    DataKeyPairSpec {
        /// RSA 2048.
        Rsa2048 => "RSA_2048",
        /// RSA 3072.
        Rsa3072 => "RSA_3072",
        /// RSA 4096.
        Rsa4096 => "RSA_4096",
        /// NIST P-256.
        EccNistP256 => "ECC_NIST_P256",
        /// NIST P-384.
        EccNistP384 => "ECC_NIST_P384",
        /// NIST P-521.
        EccNistP521 => "ECC_NIST_P521",
        /// secp256k1.
        EccSecgP256k1 => "ECC_SECG_P256K1",
    }
);

aws_names!(
    /// Rotation types listed by ListKeyRotations.
    RotationType {
        /// Rotated by the schedule.
        Automatic => "AUTOMATIC",
        /// Rotated on request.
        OnDemand => "ON_DEMAND",
    }
);

/// Hash functions the signing algorithms use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HashAlgorithm {
    /// SHA-1 (OAEP only).
    Sha1,
    /// SHA-224 (HMAC only).
    Sha224,
    /// SHA-256.
    Sha256,
    /// SHA-384.
    Sha384,
    /// SHA-512.
    Sha512,
}

impl HashAlgorithm {
    /// Digest length in bytes.
    #[must_use]
    pub fn output_len(self) -> usize {
        match self {
            Self::Sha1 => 20,
            Self::Sha224 => 28,
            Self::Sha256 => 32,
            Self::Sha384 => 48,
            Self::Sha512 => 64,
        }
    }
}

impl KeySpec {
    /// The usages AWS allows for this key spec.
    #[must_use]
    pub fn allowed_usages(self) -> &'static [KeyUsage] {
        match self {
            Self::SymmetricDefault => &[KeyUsage::EncryptDecrypt],
            Self::Rsa2048 | Self::Rsa3072 | Self::Rsa4096 => {
                &[KeyUsage::EncryptDecrypt, KeyUsage::SignVerify]
            }
            Self::EccNistP256 | Self::EccNistP384 | Self::EccNistP521 => {
                &[KeyUsage::SignVerify, KeyUsage::KeyAgreement]
            }
            Self::EccSecgP256k1 => &[KeyUsage::SignVerify],
            Self::Hmac224 | Self::Hmac256 | Self::Hmac384 | Self::Hmac512 => {
                &[KeyUsage::GenerateVerifyMac]
            }
        }
    }

    /// Checks a spec/usage pair the way CreateKey does.
    ///
    /// # Errors
    /// `ValidationException` when AWS does not allow the combination.
    pub fn validate_usage(self, usage: KeyUsage) -> KmsResult<()> {
        if self.allowed_usages().contains(&usage) {
            Ok(())
        } else {
            Err(KmsError::Validation(format!(
                "KeyUsage {usage} is not compatible with KeySpec {self}; allowed: {}",
                join(self.allowed_usages())
            )))
        }
    }

    /// The usage AWS picks when CreateKey names none (ENCRYPT_DECRYPT, or the only allowed one).
    #[must_use]
    pub fn default_usage(self) -> KeyUsage {
        self.allowed_usages()[0]
    }

    /// Whether this is the symmetric encryption spec.
    #[must_use]
    pub fn is_symmetric(self) -> bool {
        self == Self::SymmetricDefault
    }

    /// Whether this is an RSA spec.
    #[must_use]
    pub fn is_rsa(self) -> bool {
        matches!(self, Self::Rsa2048 | Self::Rsa3072 | Self::Rsa4096)
    }

    /// Whether this is an elliptic-curve spec.
    #[must_use]
    pub fn is_ecc(self) -> bool {
        matches!(
            self,
            Self::EccNistP256 | Self::EccNistP384 | Self::EccNistP521 | Self::EccSecgP256k1
        )
    }

    /// Whether this is an HMAC spec.
    #[must_use]
    pub fn is_hmac(self) -> bool {
        matches!(
            self,
            Self::Hmac224 | Self::Hmac256 | Self::Hmac384 | Self::Hmac512
        )
    }

    /// Whether the key has a public half (RSA and ECC).
    #[must_use]
    pub fn is_asymmetric(self) -> bool {
        self.is_rsa() || self.is_ecc()
    }

    /// RSA modulus size in bits.
    #[must_use]
    pub fn rsa_bits(self) -> Option<usize> {
        match self {
            Self::Rsa2048 => Some(2048),
            Self::Rsa3072 => Some(3072),
            Self::Rsa4096 => Some(4096),
            _ => None,
        }
    }

    /// HMAC key length in bytes.
    #[must_use]
    pub fn hmac_key_len(self) -> Option<usize> {
        match self {
            Self::Hmac224 => Some(28),
            Self::Hmac256 => Some(32),
            Self::Hmac384 => Some(48),
            Self::Hmac512 => Some(64),
            _ => None,
        }
    }

    /// Encryption algorithms a key of this spec supports with ENCRYPT_DECRYPT usage.
    #[must_use]
    pub fn encryption_algorithms(self) -> &'static [EncryptionAlgorithm] {
        match self {
            Self::SymmetricDefault => &[EncryptionAlgorithm::SymmetricDefault],
            Self::Rsa2048 | Self::Rsa3072 | Self::Rsa4096 => &[
                EncryptionAlgorithm::RsaesOaepSha1,
                EncryptionAlgorithm::RsaesOaepSha256,
            ],
            _ => &[],
        }
    }

    /// Signing algorithms a key of this spec supports with SIGN_VERIFY usage.
    #[must_use]
    pub fn signing_algorithms(self) -> &'static [SigningAlgorithm] {
        use SigningAlgorithm as S;
        match self {
            Self::Rsa2048 | Self::Rsa3072 | Self::Rsa4096 => &[
                S::RsassaPssSha256,
                S::RsassaPssSha384,
                S::RsassaPssSha512,
                S::RsassaPkcs1V15Sha256,
                S::RsassaPkcs1V15Sha384,
                S::RsassaPkcs1V15Sha512,
            ],
            Self::EccNistP256 | Self::EccSecgP256k1 => &[S::EcdsaSha256],
            Self::EccNistP384 => &[S::EcdsaSha384],
            Self::EccNistP521 => &[S::EcdsaSha512],
            _ => &[],
        }
    }

    /// The MAC algorithm of an HMAC spec.
    #[must_use]
    pub fn mac_algorithms(self) -> &'static [MacAlgorithm] {
        match self {
            Self::Hmac224 => &[MacAlgorithm::HmacSha224],
            Self::Hmac256 => &[MacAlgorithm::HmacSha256],
            Self::Hmac384 => &[MacAlgorithm::HmacSha384],
            Self::Hmac512 => &[MacAlgorithm::HmacSha512],
            _ => &[],
        }
    }

    /// Key agreement algorithms of the NIST curves.
    #[must_use]
    pub fn key_agreement_algorithms(self) -> &'static [KeyAgreementAlgorithm] {
        match self {
            Self::EccNistP256 | Self::EccNistP384 | Self::EccNistP521 => {
                &[KeyAgreementAlgorithm::Ecdh]
            }
            _ => &[],
        }
    }
}

impl EncryptionAlgorithm {
    /// AWS's maximum plaintext for RSA-OAEP with this key size (modulus - 2*hash - 2).
    #[must_use]
    pub fn rsa_max_plaintext(self, spec: KeySpec) -> Option<usize> {
        let modulus = spec.rsa_bits()? / 8;
        let hash = match self {
            Self::RsaesOaepSha1 => 20,
            Self::RsaesOaepSha256 => 32,
            Self::SymmetricDefault => return None,
        };
        Some(modulus - 2 * hash - 2)
    }
}

impl SigningAlgorithm {
    /// The hash function the algorithm applies to a RAW message.
    #[must_use]
    pub fn hash(self) -> HashAlgorithm {
        match self {
            Self::RsassaPssSha256 | Self::RsassaPkcs1V15Sha256 | Self::EcdsaSha256 => {
                HashAlgorithm::Sha256
            }
            Self::RsassaPssSha384 | Self::RsassaPkcs1V15Sha384 | Self::EcdsaSha384 => {
                HashAlgorithm::Sha384
            }
            Self::RsassaPssSha512 | Self::RsassaPkcs1V15Sha512 | Self::EcdsaSha512 => {
                HashAlgorithm::Sha512
            }
        }
    }
}

impl MacAlgorithm {
    /// The hash function of the HMAC.
    #[must_use]
    pub fn hash(self) -> HashAlgorithm {
        match self {
            Self::HmacSha224 => HashAlgorithm::Sha224,
            Self::HmacSha256 => HashAlgorithm::Sha256,
            Self::HmacSha384 => HashAlgorithm::Sha384,
            Self::HmacSha512 => HashAlgorithm::Sha512,
        }
    }
}

impl DataKeySpec {
    /// Key length in bytes.
    #[must_use]
    pub fn byte_len(self) -> usize {
        match self {
            Self::Aes128 => 16,
            Self::Aes256 => 32,
        }
    }
}

impl DataKeyPairSpec {
    /// The key spec of the generated pair.
    #[must_use]
    pub fn key_spec(self) -> KeySpec {
        match self {
            Self::Rsa2048 => KeySpec::Rsa2048,
            Self::Rsa3072 => KeySpec::Rsa3072,
            Self::Rsa4096 => KeySpec::Rsa4096,
            Self::EccNistP256 => KeySpec::EccNistP256,
            Self::EccNistP384 => KeySpec::EccNistP384,
            Self::EccNistP521 => KeySpec::EccNistP521,
            Self::EccSecgP256k1 => KeySpec::EccSecgP256k1,
        }
    }
}

fn join<T: std::fmt::Display>(items: &[T]) -> String {
    items
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for spec in KeySpec::ALL {
            assert_eq!(spec.as_str().parse::<KeySpec>(), Ok(*spec));
        }
        for alg in SigningAlgorithm::ALL {
            assert_eq!(alg.as_str().parse::<SigningAlgorithm>(), Ok(*alg));
        }
    }

    #[test]
    fn unknown_name_is_validation_exception() {
        let err = "AES_512".parse::<KeySpec>().expect_err("unknown spec");
        assert_eq!(err.aws_exception_name(), "ValidationException");
        assert!(
            "symmetric_default".parse::<KeySpec>().is_err(),
            "case-sensitive"
        );
    }

    #[test]
    fn aws_usage_matrix() {
        use KeyUsage::*;
        let allowed = |spec: KeySpec, usage| spec.validate_usage(usage).is_ok();
        assert!(allowed(KeySpec::SymmetricDefault, EncryptDecrypt));
        assert!(!allowed(KeySpec::SymmetricDefault, SignVerify));
        assert!(allowed(KeySpec::Rsa3072, SignVerify));
        assert!(allowed(KeySpec::Rsa3072, EncryptDecrypt));
        assert!(!allowed(KeySpec::Rsa3072, KeyAgreement));
        assert!(allowed(KeySpec::EccNistP384, KeyAgreement));
        assert!(!allowed(KeySpec::EccNistP384, EncryptDecrypt));
        assert!(allowed(KeySpec::EccSecgP256k1, SignVerify));
        assert!(!allowed(KeySpec::EccSecgP256k1, KeyAgreement));
        assert!(allowed(KeySpec::Hmac384, GenerateVerifyMac));
        assert!(!allowed(KeySpec::Hmac384, EncryptDecrypt));
        let err = KeySpec::Hmac256
            .validate_usage(SignVerify)
            .expect_err("invalid combination");
        assert_eq!(err.aws_exception_name(), "ValidationException");
    }

    #[test]
    fn rsa_oaep_limits_match_aws() {
        use EncryptionAlgorithm::*;
        let max = |alg: EncryptionAlgorithm, spec| alg.rsa_max_plaintext(spec);
        assert_eq!(max(RsaesOaepSha1, KeySpec::Rsa2048), Some(214));
        assert_eq!(max(RsaesOaepSha256, KeySpec::Rsa2048), Some(190));
        assert_eq!(max(RsaesOaepSha1, KeySpec::Rsa3072), Some(342));
        assert_eq!(max(RsaesOaepSha256, KeySpec::Rsa3072), Some(318));
        assert_eq!(max(RsaesOaepSha1, KeySpec::Rsa4096), Some(470));
        assert_eq!(max(RsaesOaepSha256, KeySpec::Rsa4096), Some(446));
        assert_eq!(max(SymmetricDefault, KeySpec::Rsa4096), None);
    }
}
