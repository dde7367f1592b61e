//! Key material: generated here or imported, parsed once, serialized only to be wrapped.

use crate::error::{KmsError, KmsResult};
use crate::primitives::{self, EcPrivateKey, HmacKey, RsaPrivateKey};
use crate::secret::SecretBytes;
use crate::spec::KeySpec;

/// Length of symmetric (AES-256) material.
pub const SYMMETRIC_MATERIAL_LEN: usize = 32;

/// One version of a key's material, ready for use. `Debug` shows the spec only.
pub struct KeyMaterial {
    spec: KeySpec,
    serialized: SecretBytes,
    parsed: Parsed,
}

enum Parsed {
    /// The pre-keyed PRF from which per-message AES keys are derived.
    Symmetric(HmacKey),
    Hmac(HmacKey),
    Rsa(RsaPrivateKey),
    Ecc(EcPrivateKey),
}

impl std::fmt::Debug for KeyMaterial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyMaterial")
            .field("spec", &self.spec)
            .finish_non_exhaustive()
    }
}

impl KeyMaterial {
    /// Generates fresh material of `spec` from the backend's CSPRNG.
    ///
    /// # Errors
    /// `KMSInternalException` on a backend failure.
    pub fn generate(spec: KeySpec) -> KmsResult<Self> {
        let serialized = if spec.is_symmetric() {
            primitives::random_secret(SYMMETRIC_MATERIAL_LEN)?
        } else if let Some(len) = spec.hmac_key_len() {
            primitives::random_secret(len)?
        } else {
            primitives::generate_private_key_pkcs8(spec)?
        };
        Self::from_serialized(spec, serialized)
    }

    /// Rebuilds material from its serialized form: 32 raw bytes (symmetric), the raw HMAC key,
    /// or PKCS#8 v1 DER (RSA, ECC). Used after unwrapping and for imported material.
    ///
    /// # Errors
    /// `ValidationException` when the bytes are not material of `spec`.
    pub fn from_serialized(spec: KeySpec, serialized: SecretBytes) -> KmsResult<Self> {
        let parsed = if spec.is_symmetric() {
            if serialized.len() != SYMMETRIC_MATERIAL_LEN {
                return Err(KmsError::Validation(format!(
                    "symmetric key material must be {SYMMETRIC_MATERIAL_LEN} bytes, got {}",
                    serialized.len()
                )));
            }
            Parsed::Symmetric(HmacKey::sha256_prf(serialized.expose()))
        } else if spec.is_hmac() {
            let expected = spec.hmac_key_len().unwrap_or_default();
            if serialized.len() != expected {
                return Err(KmsError::Validation(format!(
                    "{spec} key material must be {expected} bytes, got {}",
                    serialized.len()
                )));
            }
            let algorithm = spec.mac_algorithms()[0];
            Parsed::Hmac(HmacKey::new(algorithm, serialized.expose())?)
        } else if spec.is_rsa() {
            let key = RsaPrivateKey::from_pkcs8(serialized.expose())?;
            if Some(key.bits()) != spec.rsa_bits() {
                return Err(KmsError::Validation(format!(
                    "the RSA key has {} bits, {spec} needs {}",
                    key.bits(),
                    spec.rsa_bits().unwrap_or_default()
                )));
            }
            Parsed::Rsa(key)
        } else {
            Parsed::Ecc(EcPrivateKey::from_pkcs8(spec, serialized.expose())?)
        };
        Ok(Self {
            spec,
            serialized,
            parsed,
        })
    }

    /// The key spec.
    #[must_use]
    pub fn spec(&self) -> KeySpec {
        self.spec
    }

    /// The serialized material, for wrapping under the root key and nothing else.
    #[must_use]
    pub fn serialized(&self) -> &SecretBytes {
        &self.serialized
    }

    /// The public key (DER SubjectPublicKeyInfo) of asymmetric material.
    #[must_use]
    pub fn public_key_der(&self) -> Option<&[u8]> {
        match &self.parsed {
            Parsed::Rsa(key) => Some(key.public_key_der()),
            Parsed::Ecc(key) => Some(key.public_key_der()),
            Parsed::Symmetric(_) | Parsed::Hmac(_) => None,
        }
    }

    /// Constant-time comparison with other material (re-import must bring the same bytes).
    #[must_use]
    pub fn same_as(&self, other: &Self) -> bool {
        use subtle::ConstantTimeEq;
        self.spec == other.spec
            && bool::from(self.serialized.expose().ct_eq(other.serialized.expose()))
    }

    pub(crate) fn symmetric_prf(&self) -> Option<&HmacKey> {
        match &self.parsed {
            Parsed::Symmetric(prf) => Some(prf),
            _ => None,
        }
    }

    pub(crate) fn hmac(&self) -> Option<&HmacKey> {
        match &self.parsed {
            Parsed::Hmac(key) => Some(key),
            _ => None,
        }
    }

    pub(crate) fn rsa(&self) -> Option<&RsaPrivateKey> {
        match &self.parsed {
            Parsed::Rsa(key) => Some(key),
            _ => None,
        }
    }

    pub(crate) fn ecc(&self) -> Option<&EcPrivateKey> {
        match &self.parsed {
            Parsed::Ecc(key) => Some(key),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_spec_generates_and_reloads() {
        for spec in KeySpec::ALL {
            let material = KeyMaterial::generate(*spec).expect("generate");
            let again = KeyMaterial::from_serialized(*spec, material.serialized().duplicate())
                .expect("reload");
            assert!(material.same_as(&again), "{spec}");
            assert_eq!(
                material.public_key_der().is_some(),
                spec.is_asymmetric(),
                "{spec}"
            );
            assert!(!format!("{material:?}").contains("serialized"));
        }
    }

    #[test]
    fn wrong_material_is_refused() {
        let err = KeyMaterial::from_serialized(KeySpec::SymmetricDefault, SecretBytes::zeroed(16))
            .expect_err("short");
        assert_eq!(err.aws_exception_name(), "ValidationException");
        let rsa2048 = KeyMaterial::generate(KeySpec::Rsa2048).expect("rsa");
        let err = KeyMaterial::from_serialized(KeySpec::Rsa3072, rsa2048.serialized().duplicate())
            .expect_err("size");
        assert_eq!(err.aws_exception_name(), "ValidationException");
        let p256 = KeyMaterial::generate(KeySpec::EccNistP256).expect("p256");
        assert!(
            KeyMaterial::from_serialized(KeySpec::EccNistP384, p256.serialized().duplicate())
                .is_err()
        );
        assert!(
            KeyMaterial::from_serialized(KeySpec::EccNistP256, SecretBytes::from_slice(b"garbage"))
                .is_err()
        );
    }
}
