//! The only module that calls the cryptographic backend (aws-lc-rs). Everything above it
//! speaks in key specs and AWS algorithm names; everything here is a thin, total wrapper:
//! backend failures become [`KmsError`] values, never panics.
//!
//! These functions are public so the Wycheproof suites and the benchmarks exercise the
//! exact code paths the KMS operations use.

use aws_lc_rs::{
    aead, agreement, digest,
    encoding::{AsDer, Pkcs8V1Der, PublicKeyX509Der},
    hmac, rand, rsa,
    signature::{self, EcdsaKeyPair, KeyPair as _},
};

use crate::error::{KmsError, KmsResult};
use crate::secret::SecretBytes;
use crate::spec::{HashAlgorithm, KeySpec, MacAlgorithm, SigningAlgorithm};

/// AES-GCM nonce length (96 bits).
pub const GCM_NONCE_LEN: usize = 12;
/// AES-GCM tag length (128 bits).
pub const GCM_TAG_LEN: usize = 16;

/// Fills `dest` from the backend's CSPRNG.
///
/// # Errors
/// `KMSInternalException` when the RNG fails.
pub fn fill_random(dest: &mut [u8]) -> KmsResult<()> {
    rand::fill(dest).map_err(|_| KmsError::internal("random number generation"))
}

/// Random secret bytes.
///
/// # Errors
/// `KMSInternalException` when the RNG fails.
pub fn random_secret(len: usize) -> KmsResult<SecretBytes> {
    let mut out = SecretBytes::zeroed(len);
    fill_random(out.expose_mut())?;
    Ok(out)
}

/// An AES-GCM key ready for use (128, 192 or 256 bits).
pub struct AesGcmKey(aead::LessSafeKey);

impl AesGcmKey {
    /// Builds the key schedule.
    ///
    /// # Errors
    /// `ValidationException` when the key is not 16, 24 or 32 bytes.
    pub fn new(key: &[u8]) -> KmsResult<Self> {
        let algorithm = match key.len() {
            16 => &aead::AES_128_GCM,
            24 => &aead::AES_192_GCM,
            32 => &aead::AES_256_GCM,
            n => {
                return Err(KmsError::Validation(format!(
                    "AES key of {n} bytes is not supported"
                )));
            }
        };
        let unbound = aead::UnboundKey::new(algorithm, key)
            .map_err(|_| KmsError::internal("AES-GCM key setup"))?;
        Ok(Self(aead::LessSafeKey::new(unbound)))
    }

    /// Encrypts `plaintext`, returning ciphertext and tag separately.
    ///
    /// # Errors
    /// `KMSInternalException` on a backend failure.
    pub fn seal(
        &self,
        nonce: &[u8; GCM_NONCE_LEN],
        aad: &[u8],
        plaintext: &[u8],
    ) -> KmsResult<(Vec<u8>, [u8; GCM_TAG_LEN])> {
        let mut buffer = plaintext.to_vec();
        let tag = self
            .0
            .seal_in_place_separate_tag(
                aead::Nonce::assume_unique_for_key(*nonce),
                aead::Aad::from(aad),
                &mut buffer,
            )
            .map_err(|_| KmsError::internal("AES-GCM seal"))?;
        let mut tag_bytes = [0u8; GCM_TAG_LEN];
        tag_bytes.copy_from_slice(tag.as_ref());
        Ok((buffer, tag_bytes))
    }

    /// Decrypts and authenticates; the result is secret.
    ///
    /// # Errors
    /// `InvalidCiphertextException` when authentication fails or the nonce or tag has the
    /// wrong size.
    pub fn open(
        &self,
        nonce: &[u8],
        aad: &[u8],
        ciphertext: &[u8],
        tag: &[u8],
    ) -> KmsResult<SecretBytes> {
        let nonce = aead::Nonce::try_assume_unique_for_key(nonce)
            .map_err(|_| KmsError::InvalidCiphertext)?;
        if tag.len() != GCM_TAG_LEN {
            return Err(KmsError::InvalidCiphertext);
        }
        let mut buffer = SecretBytes::zeroed(ciphertext.len() + GCM_TAG_LEN);
        buffer.expose_mut()[..ciphertext.len()].copy_from_slice(ciphertext);
        buffer.expose_mut()[ciphertext.len()..].copy_from_slice(tag);
        let plain_len = self
            .0
            .open_in_place(nonce, aead::Aad::from(aad), buffer.expose_mut())
            .map_err(|_| KmsError::InvalidCiphertext)?
            .len();
        buffer.truncate(plain_len);
        Ok(buffer)
    }
}

/// NIST SP 800-108r1 KDF in counter mode with HMAC-SHA-256, one 256-bit block:
/// `HMAC(K, [1]_32 || fixed_info)`. `prf_key` is the pre-keyed HMAC of the key material,
/// so a derivation costs one HMAC over `fixed_info`. AWS KMS derives its per-request keys
/// the same way; it lifts the 2^32-messages-per-key bound of random 96-bit GCM nonces.
#[must_use]
pub fn sp800_108_ctr_hmac_sha256(prf_key: &hmac::Key, fixed_info: &[u8]) -> SecretBytes {
    let mut ctx = hmac::Context::with_key(prf_key);
    ctx.update(&1u32.to_be_bytes());
    ctx.update(fixed_info);
    SecretBytes::from_slice(ctx.sign().as_ref())
}

/// The backend's HMAC algorithm for a hash.
fn hmac_algorithm(hash: HashAlgorithm) -> KmsResult<hmac::Algorithm> {
    match hash {
        HashAlgorithm::Sha224 => Ok(hmac::HMAC_SHA224),
        HashAlgorithm::Sha256 => Ok(hmac::HMAC_SHA256),
        HashAlgorithm::Sha384 => Ok(hmac::HMAC_SHA384),
        HashAlgorithm::Sha512 => Ok(hmac::HMAC_SHA512),
        HashAlgorithm::Sha1 => Err(KmsError::validation("HMAC-SHA-1 is not offered")),
    }
}

/// A pre-keyed HMAC.
pub struct HmacKey(hmac::Key);

impl HmacKey {
    /// Keys an HMAC of `algorithm`.
    ///
    /// # Errors
    /// None today; kept fallible so every algorithm lookup stays total.
    pub fn new(algorithm: MacAlgorithm, key: &[u8]) -> KmsResult<Self> {
        Ok(Self(hmac::Key::new(hmac_algorithm(algorithm.hash())?, key)))
    }

    /// Keys an HMAC-SHA-256 used as a PRF.
    #[must_use]
    pub fn sha256_prf(key: &[u8]) -> Self {
        Self(hmac::Key::new(hmac::HMAC_SHA256, key))
    }

    /// The tag of `message`.
    #[must_use]
    pub fn sign(&self, message: &[u8]) -> Vec<u8> {
        hmac::sign(&self.0, message).as_ref().to_vec()
    }

    /// Constant-time verification of `tag` (a tag of another length never verifies).
    ///
    /// # Errors
    /// `KMSInvalidMacException` when the tag does not match.
    pub fn verify(&self, message: &[u8], tag: &[u8]) -> KmsResult<()> {
        hmac::verify(&self.0, message, tag).map_err(|_| KmsError::InvalidMac)
    }

    pub(crate) fn backend(&self) -> &hmac::Key {
        &self.0
    }
}

fn digest_algorithm(hash: HashAlgorithm) -> &'static digest::Algorithm {
    match hash {
        HashAlgorithm::Sha1 => &digest::SHA1_FOR_LEGACY_USE_ONLY,
        HashAlgorithm::Sha224 => &digest::SHA224,
        HashAlgorithm::Sha256 => &digest::SHA256,
        HashAlgorithm::Sha384 => &digest::SHA384,
        HashAlgorithm::Sha512 => &digest::SHA512,
    }
}

/// A message or a digest of it, as Sign and Verify accept them.
#[derive(Debug, Clone, Copy)]
pub enum SignInput<'a> {
    /// The message; it is hashed with the algorithm's hash.
    Raw(&'a [u8]),
    /// The digest; its length must equal the hash's output length.
    Digest(&'a [u8]),
}

fn import_digest(bytes: &[u8], hash: HashAlgorithm) -> KmsResult<digest::Digest> {
    digest::Digest::import_less_safe(bytes, digest_algorithm(hash)).map_err(|_| {
        KmsError::Validation(format!(
            "a DIGEST message for this algorithm must be {} bytes, got {}",
            hash.output_len(),
            bytes.len()
        ))
    })
}

fn rsa_encoding(algorithm: SigningAlgorithm) -> Option<&'static signature::RsaSignatureEncoding> {
    use SigningAlgorithm as S;
    match algorithm {
        S::RsassaPssSha256 => Some(&signature::RSA_PSS_SHA256),
        S::RsassaPssSha384 => Some(&signature::RSA_PSS_SHA384),
        S::RsassaPssSha512 => Some(&signature::RSA_PSS_SHA512),
        S::RsassaPkcs1V15Sha256 => Some(&signature::RSA_PKCS1_SHA256),
        S::RsassaPkcs1V15Sha384 => Some(&signature::RSA_PKCS1_SHA384),
        S::RsassaPkcs1V15Sha512 => Some(&signature::RSA_PKCS1_SHA512),
        S::EcdsaSha256 | S::EcdsaSha384 | S::EcdsaSha512 => None,
    }
}

fn rsa_verification(algorithm: SigningAlgorithm) -> Option<&'static signature::RsaParameters> {
    use SigningAlgorithm as S;
    match algorithm {
        S::RsassaPssSha256 => Some(&signature::RSA_PSS_2048_8192_SHA256),
        S::RsassaPssSha384 => Some(&signature::RSA_PSS_2048_8192_SHA384),
        S::RsassaPssSha512 => Some(&signature::RSA_PSS_2048_8192_SHA512),
        S::RsassaPkcs1V15Sha256 => Some(&signature::RSA_PKCS1_2048_8192_SHA256),
        S::RsassaPkcs1V15Sha384 => Some(&signature::RSA_PKCS1_2048_8192_SHA384),
        S::RsassaPkcs1V15Sha512 => Some(&signature::RSA_PKCS1_2048_8192_SHA512),
        S::EcdsaSha256 | S::EcdsaSha384 | S::EcdsaSha512 => None,
    }
}

/// ECDSA signing parameters (DER signatures, as AWS returns them) of a curve spec.
fn ecdsa_signing(spec: KeySpec) -> Option<&'static signature::EcdsaSigningAlgorithm> {
    match spec {
        KeySpec::EccNistP256 => Some(&signature::ECDSA_P256_SHA256_ASN1_SIGNING),
        KeySpec::EccNistP384 => Some(&signature::ECDSA_P384_SHA384_ASN1_SIGNING),
        KeySpec::EccNistP521 => Some(&signature::ECDSA_P521_SHA512_ASN1_SIGNING),
        KeySpec::EccSecgP256k1 => Some(&signature::ECDSA_P256K1_SHA256_ASN1_SIGNING),
        _ => None,
    }
}

/// ECDSA verification parameters (DER signatures) of a curve spec.
#[must_use]
pub fn ecdsa_verification(spec: KeySpec) -> Option<&'static signature::EcdsaVerificationAlgorithm> {
    match spec {
        KeySpec::EccNistP256 => Some(&signature::ECDSA_P256_SHA256_ASN1),
        KeySpec::EccNistP384 => Some(&signature::ECDSA_P384_SHA384_ASN1),
        KeySpec::EccNistP521 => Some(&signature::ECDSA_P521_SHA512_ASN1),
        KeySpec::EccSecgP256k1 => Some(&signature::ECDSA_P256K1_SHA256_ASN1),
        _ => None,
    }
}

fn ecdh_algorithm(spec: KeySpec) -> Option<&'static agreement::Algorithm> {
    match spec {
        KeySpec::EccNistP256 => Some(&agreement::ECDH_P256),
        KeySpec::EccNistP384 => Some(&agreement::ECDH_P384),
        KeySpec::EccNistP521 => Some(&agreement::ECDH_P521),
        _ => None,
    }
}

fn rsa_key_size(spec: KeySpec) -> KmsResult<rsa::KeySize> {
    match spec {
        KeySpec::Rsa2048 => Ok(rsa::KeySize::Rsa2048),
        KeySpec::Rsa3072 => Ok(rsa::KeySize::Rsa3072),
        KeySpec::Rsa4096 => Ok(rsa::KeySize::Rsa4096),
        _ => Err(KmsError::validation("not an RSA key spec")),
    }
}

/// Generates an asymmetric private key of `spec` as PKCS#8 v1 DER.
///
/// # Errors
/// `ValidationException` for a spec without a private key; `KMSInternalException` on a
/// backend failure.
pub fn generate_private_key_pkcs8(spec: KeySpec) -> KmsResult<SecretBytes> {
    if spec.is_rsa() {
        let pair = rsa::KeyPair::generate(rsa_key_size(spec)?)
            .map_err(|_| KmsError::internal("RSA key generation"))?;
        let der: Pkcs8V1Der<'static> = pair
            .as_der()
            .map_err(|_| KmsError::internal("RSA key encoding"))?;
        return Ok(SecretBytes::from_slice(der.as_ref()));
    }
    let algorithm =
        ecdsa_signing(spec).ok_or_else(|| KmsError::validation("not an asymmetric key spec"))?;
    let pair =
        EcdsaKeyPair::generate(algorithm).map_err(|_| KmsError::internal("EC key generation"))?;
    let der = pair
        .to_pkcs8v1()
        .map_err(|_| KmsError::internal("EC key encoding"))?;
    Ok(SecretBytes::from_slice(der.as_ref()))
}

/// An RSA private key, parsed once for signing and once for OAEP decryption.
pub struct RsaPrivateKey {
    signing: rsa::KeyPair,
    decrypting: rsa::OaepPrivateDecryptingKey,
    public_der: Vec<u8>,
    bits: usize,
}

impl RsaPrivateKey {
    /// Parses a PKCS#8 RSA private key.
    ///
    /// # Errors
    /// `ValidationException` when the bytes are not an acceptable RSA key.
    pub fn from_pkcs8(pkcs8: &[u8]) -> KmsResult<Self> {
        let rejected = |_| KmsError::validation("the private key is not a valid PKCS#8 RSA key");
        let signing = rsa::KeyPair::from_pkcs8(pkcs8).map_err(rejected)?;
        let decrypting_key = rsa::PrivateDecryptingKey::from_pkcs8(pkcs8).map_err(rejected)?;
        let public: PublicKeyX509Der<'static> = decrypting_key
            .public_key()
            .as_der()
            .map_err(|_| KmsError::internal("RSA public key encoding"))?;
        let bits = decrypting_key.key_size_bits();
        let decrypting = rsa::OaepPrivateDecryptingKey::new(decrypting_key)
            .map_err(|_| KmsError::internal("RSA-OAEP key setup"))?;
        Ok(Self {
            signing,
            decrypting,
            public_der: public.as_ref().to_vec(),
            bits,
        })
    }

    /// Modulus size in bits.
    #[must_use]
    pub fn bits(&self) -> usize {
        self.bits
    }

    /// The public key as DER SubjectPublicKeyInfo.
    #[must_use]
    pub fn public_key_der(&self) -> &[u8] {
        &self.public_der
    }

    /// Signs with PSS (salt length = hash length, as AWS) or PKCS#1 v1.5.
    ///
    /// # Errors
    /// `ValidationException` for an ECDSA algorithm or a digest of the wrong length.
    pub fn sign(&self, algorithm: SigningAlgorithm, input: SignInput<'_>) -> KmsResult<Vec<u8>> {
        let encoding = rsa_encoding(algorithm)
            .ok_or_else(|| KmsError::validation("not an RSA signing algorithm"))?;
        let mut signature = vec![0u8; self.signing.public_modulus_len()];
        let result = match input {
            SignInput::Raw(message) => self.signing.sign(
                encoding,
                &rand::SystemRandom::new(),
                message,
                &mut signature,
            ),
            SignInput::Digest(bytes) => {
                let digest = import_digest(bytes, algorithm.hash())?;
                self.signing.sign_digest(encoding, &digest, &mut signature)
            }
        };
        result.map_err(|_| KmsError::internal("RSA signing"))?;
        Ok(signature)
    }

    /// RSA-OAEP decryption (no label, as AWS).
    ///
    /// # Errors
    /// `InvalidCiphertextException` when the ciphertext does not decrypt.
    pub fn decrypt_oaep(&self, hash: HashAlgorithm, ciphertext: &[u8]) -> KmsResult<SecretBytes> {
        self.decrypt_oaep_with_label(hash, ciphertext, None)
    }

    /// RSA-OAEP decryption with an optional label (labels are exercised only by Wycheproof).
    ///
    /// # Errors
    /// `InvalidCiphertextException` when the ciphertext does not decrypt.
    pub fn decrypt_oaep_with_label(
        &self,
        hash: HashAlgorithm,
        ciphertext: &[u8],
        label: Option<&[u8]>,
    ) -> KmsResult<SecretBytes> {
        let algorithm = oaep_algorithm(hash)?;
        let mut out = SecretBytes::zeroed(self.decrypting.min_output_size());
        let len = self
            .decrypting
            .decrypt(algorithm, ciphertext, out.expose_mut(), label)
            .map_err(|_| KmsError::InvalidCiphertext)?
            .len();
        out.truncate(len);
        Ok(out)
    }
}

fn oaep_algorithm(hash: HashAlgorithm) -> KmsResult<&'static rsa::OaepAlgorithm> {
    match hash {
        HashAlgorithm::Sha1 => Ok(&rsa::OAEP_SHA1_MGF1SHA1),
        HashAlgorithm::Sha256 => Ok(&rsa::OAEP_SHA256_MGF1SHA256),
        HashAlgorithm::Sha384 => Ok(&rsa::OAEP_SHA384_MGF1SHA384),
        HashAlgorithm::Sha512 => Ok(&rsa::OAEP_SHA512_MGF1SHA512),
        HashAlgorithm::Sha224 => Err(KmsError::validation("RSA-OAEP with SHA-224 is not offered")),
    }
}

/// RSA-OAEP encryption to a DER SubjectPublicKeyInfo (no label).
///
/// # Errors
/// `ValidationException` when the public key does not parse or the plaintext is too long
/// for the key and hash.
pub fn rsa_oaep_encrypt(
    public_key_der: &[u8],
    hash: HashAlgorithm,
    plaintext: &[u8],
) -> KmsResult<Vec<u8>> {
    let algorithm = oaep_algorithm(hash)?;
    let public = rsa::PublicEncryptingKey::from_der(public_key_der).map_err(|_| {
        KmsError::validation("the public key is not a valid RSA SubjectPublicKeyInfo")
    })?;
    let key = rsa::OaepPublicEncryptingKey::new(public)
        .map_err(|_| KmsError::internal("RSA-OAEP key setup"))?;
    let max = key.max_plaintext_size(algorithm);
    if plaintext.len() > max {
        return Err(KmsError::Validation(format!(
            "plaintext of {} bytes exceeds the {max}-byte limit of this key and algorithm",
            plaintext.len()
        )));
    }
    let mut out = vec![0u8; key.ciphertext_size()];
    let len = key
        .encrypt(algorithm, plaintext, &mut out, None)
        .map_err(|_| KmsError::internal("RSA-OAEP encryption"))?
        .len();
    out.truncate(len);
    Ok(out)
}

/// An EC private key for ECDSA, and for ECDH on the NIST curves.
pub struct EcPrivateKey {
    spec: KeySpec,
    signing: EcdsaKeyPair,
    agreement: Option<agreement::PrivateKey>,
    public_der: Vec<u8>,
}

impl EcPrivateKey {
    /// Parses a PKCS#8 EC private key of the curve of `spec`.
    ///
    /// # Errors
    /// `ValidationException` when the key is not a valid key on that curve.
    pub fn from_pkcs8(spec: KeySpec, pkcs8: &[u8]) -> KmsResult<Self> {
        let rejected =
            |_| KmsError::Validation(format!("the private key is not a valid PKCS#8 {spec} key"));
        let algorithm = ecdsa_signing(spec)
            .ok_or_else(|| KmsError::validation("not an elliptic-curve key spec"))?;
        let signing = EcdsaKeyPair::from_pkcs8(algorithm, pkcs8).map_err(rejected)?;
        let agreement = match ecdh_algorithm(spec) {
            Some(alg) => {
                Some(agreement::PrivateKey::from_private_key_der(alg, pkcs8).map_err(rejected)?)
            }
            None => None,
        };
        let public: PublicKeyX509Der<'static> = signing
            .public_key()
            .as_der()
            .map_err(|_| KmsError::internal("EC public key encoding"))?;
        Ok(Self {
            spec,
            signing,
            agreement,
            public_der: public.as_ref().to_vec(),
        })
    }

    /// The public key as DER SubjectPublicKeyInfo.
    #[must_use]
    pub fn public_key_der(&self) -> &[u8] {
        &self.public_der
    }

    /// ECDSA signature, DER-encoded.
    ///
    /// # Errors
    /// `ValidationException` for a digest of the wrong length.
    pub fn sign(&self, algorithm: SigningAlgorithm, input: SignInput<'_>) -> KmsResult<Vec<u8>> {
        let signature = match input {
            SignInput::Raw(message) => self.signing.sign(&rand::SystemRandom::new(), message),
            SignInput::Digest(bytes) => {
                let digest = import_digest(bytes, algorithm.hash())?;
                self.signing.sign_digest(&digest)
            }
        }
        .map_err(|_| KmsError::internal("ECDSA signing"))?;
        Ok(signature.as_ref().to_vec())
    }

    /// ECDH with a peer's DER SubjectPublicKeyInfo: the raw shared secret (x coordinate).
    ///
    /// # Errors
    /// `InvalidKeyUsageException` for a curve without ECDH; `ValidationException` when the
    /// peer key is malformed, off the curve, or of another curve.
    pub fn derive_shared_secret(&self, peer_public_key: &[u8]) -> KmsResult<SecretBytes> {
        let private = self.agreement.as_ref().ok_or_else(|| {
            KmsError::InvalidKeyUsage(format!("{} keys do not support key agreement", self.spec))
        })?;
        ecdh(private, peer_public_key)
    }
}

/// Splits one DER TLV off `input`: (tag, contents, rest). Definite lengths up to 2^16.
fn der_tlv(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = match first {
        0..=0x7f => (usize::from(first), rest),
        0x81 => {
            let (&len, rest) = rest.split_first()?;
            (usize::from(len), rest)
        }
        0x82 => {
            let (bytes, rest) = rest.split_at_checked(2)?;
            (usize::from(u16::from_be_bytes([bytes[0], bytes[1]])), rest)
        }
        _ => return None,
    };
    let (contents, rest) = rest.split_at_checked(len)?;
    Some((tag, contents, rest))
}

const OID_EC_PUBLIC_KEY: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];

fn named_curve_oid(algorithm: &'static agreement::Algorithm) -> &'static [u8] {
    if algorithm == &agreement::ECDH_P256 {
        &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07]
    } else if algorithm == &agreement::ECDH_P384 {
        &[0x2b, 0x81, 0x04, 0x00, 0x22]
    } else {
        &[0x2b, 0x81, 0x04, 0x00, 0x23]
    }
}

/// RFC 5480 requires named curves in SubjectPublicKeyInfo; explicit curve parameters are
/// refused so a crafted curve can never reach the ECDH arithmetic.
fn is_named_curve_spki(algorithm: &'static agreement::Algorithm, der: &[u8]) -> bool {
    let parse = || {
        let (0x30, spki, []) = der_tlv(der)? else {
            return None;
        };
        let (0x30, algorithm_id, key) = der_tlv(spki)? else {
            return None;
        };
        let (0x06, oid, params) = der_tlv(algorithm_id)? else {
            return None;
        };
        let (0x06, curve, []) = der_tlv(params)? else {
            return None;
        };
        let (0x03, _, []) = der_tlv(key)? else {
            return None;
        };
        Some(oid == OID_EC_PUBLIC_KEY && curve == named_curve_oid(algorithm))
    };
    parse().unwrap_or(false)
}

fn ecdh(private: &agreement::PrivateKey, peer_public_key: &[u8]) -> KmsResult<SecretBytes> {
    let invalid = || KmsError::validation("the public key is not a valid key on this key's curve");
    if !is_named_curve_spki(private.algorithm(), peer_public_key) {
        return Err(KmsError::validation(
            "the public key must be a DER SubjectPublicKeyInfo on this key's named curve",
        ));
    }
    let peer = agreement::UnparsedPublicKey::new(private.algorithm(), peer_public_key);
    agreement::agree(private, peer, invalid(), |secret| {
        Ok(SecretBytes::from_slice(secret))
    })
}

/// ECDH of a raw big-endian private scalar with a peer DER SubjectPublicKeyInfo:
/// the path Wycheproof's ECDH vectors take.
///
/// # Errors
/// `ValidationException` when either key is rejected.
pub fn ecdh_raw_private(
    spec: KeySpec,
    private_scalar: &[u8],
    peer_public_key: &[u8],
) -> KmsResult<SecretBytes> {
    let algorithm =
        ecdh_algorithm(spec).ok_or_else(|| KmsError::validation("not an ECDH curve"))?;
    let private = agreement::PrivateKey::from_private_key(algorithm, private_scalar)
        .map_err(|_| KmsError::validation("the private key is not valid"))?;
    ecdh(&private, peer_public_key)
}

/// Verifies a signature with a DER SubjectPublicKeyInfo (ECDSA keys may also be X9.62 points).
///
/// # Errors
/// `KMSInvalidSignatureException` when it does not verify (including a malformed key or
/// signature); `ValidationException` for a digest of the wrong length.
pub fn verify_signature(
    spec: KeySpec,
    public_key: &[u8],
    algorithm: SigningAlgorithm,
    input: SignInput<'_>,
    signature_bytes: &[u8],
) -> KmsResult<()> {
    let verification: &'static dyn signature::VerificationAlgorithm = if spec.is_rsa() {
        rsa_verification(algorithm)
            .ok_or_else(|| KmsError::validation("not an RSA signing algorithm"))?
    } else {
        ecdsa_verification(spec).ok_or_else(|| KmsError::validation("not a signing key spec"))?
    };
    let parsed = signature::ParsedPublicKey::new(verification, public_key)
        .map_err(|_| KmsError::InvalidSignature)?;
    let result = match input {
        SignInput::Raw(message) => parsed.verify_sig(message, signature_bytes),
        SignInput::Digest(bytes) => {
            let digest = import_digest(bytes, algorithm.hash())?;
            parsed.verify_digest_sig(&digest, signature_bytes)
        }
    };
    result.map_err(|_| KmsError::InvalidSignature)
}

/// Verifies an RSA signature under explicit parameters (Wycheproof's PSS and PKCS#1 sets).
///
/// # Errors
/// `KMSInvalidSignatureException` when it does not verify.
pub fn verify_rsa_with(
    parameters: &'static signature::RsaParameters,
    public_key_der: &[u8],
    message: &[u8],
    signature_bytes: &[u8],
) -> KmsResult<()> {
    signature::UnparsedPublicKey::new(parameters, public_key_der)
        .verify(message, signature_bytes)
        .map_err(|_| KmsError::InvalidSignature)
}

/// The public half of a PKCS#8 key pair of `spec`, as DER SubjectPublicKeyInfo.
///
/// # Errors
/// `ValidationException` when the key does not parse.
pub fn public_key_of(spec: KeySpec, pkcs8: &[u8]) -> KmsResult<Vec<u8>> {
    if spec.is_rsa() {
        Ok(RsaPrivateKey::from_pkcs8(pkcs8)?.public_der)
    } else {
        Ok(EcPrivateKey::from_pkcs8(spec, pkcs8)?.public_der)
    }
}

/// Hash of `data`.
#[must_use]
pub fn hash(hash: HashAlgorithm, data: &[u8]) -> Vec<u8> {
    digest::digest(digest_algorithm(hash), data)
        .as_ref()
        .to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sp800_108_matches_backend_kbkdf() {
        use aws_lc_rs::kdf::{
            KbkdfCtrHmacAlgorithmId, get_kbkdf_ctr_hmac_algorithm, kbkdf_ctr_hmac,
        };
        let secret = [7u8; 32];
        let info = b"label\0context-bytes\x00\x00\x01\x00";
        let ours = sp800_108_ctr_hmac_sha256(HmacKey::sha256_prf(&secret).backend(), info);
        let mut theirs = [0u8; 32];
        let algorithm =
            get_kbkdf_ctr_hmac_algorithm(KbkdfCtrHmacAlgorithmId::Sha256).expect("sha256 kbkdf");
        kbkdf_ctr_hmac(algorithm, &secret, info, &mut theirs).expect("kbkdf");
        assert_eq!(ours.expose(), &theirs);
    }

    #[test]
    fn gcm_rejects_bad_sizes_without_panic() {
        let key = AesGcmKey::new(&[1u8; 32]).expect("key");
        assert_eq!(
            key.open(&[0u8; 11], b"", b"", &[0u8; 16]).err(),
            Some(KmsError::InvalidCiphertext)
        );
        assert_eq!(
            key.open(&[0u8; 12], b"", b"", &[0u8; 15]).err(),
            Some(KmsError::InvalidCiphertext)
        );
        assert!(AesGcmKey::new(&[1u8; 31]).is_err());
    }
}
