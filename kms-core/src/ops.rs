//! The AWS KMS cryptographic operations over a [`KmsKey`], with AWS's limits, algorithm
//! rules and exceptions. The caller has already resolved the key and authorized the caller.

use crate::blob::{self, HEADER_LEN, SALT_LEN};
use crate::context::EncryptionContext;
use crate::error::{KmsError, KmsResult};
use crate::ids::KeyId;
use crate::key::KmsKey;
use crate::material::KeyMaterial;
use crate::primitives::{self, AesGcmKey, GCM_NONCE_LEN, SignInput};
use crate::secret::SecretBytes;
use crate::spec::{
    DataKeyPairSpec, DataKeySpec, EncryptionAlgorithm, HashAlgorithm, KeyAgreementAlgorithm,
    KeySpec, KeyUsage, MacAlgorithm, MessageType, SigningAlgorithm,
};
use crate::state::Operation;

/// Largest plaintext Encrypt accepts.
pub const MAX_PLAINTEXT: usize = 4096;
/// Largest ciphertext blob Decrypt accepts.
pub const MAX_CIPHERTEXT: usize = 6144;
/// Largest message Sign and GenerateMac accept.
pub const MAX_MESSAGE: usize = 4096;
/// Largest signature or MAC Verify and VerifyMac accept.
pub const MAX_SIGNATURE: usize = 6144;
/// Largest NumberOfBytes of GenerateDataKey and GenerateRandom.
pub const MAX_RANDOM_BYTES: usize = 1024;
/// Largest public key DeriveSharedSecret accepts.
pub const MAX_PUBLIC_KEY: usize = 8192;

fn check_len(what: &str, len: usize, max: usize) -> KmsResult<()> {
    if (1..=max).contains(&len) {
        Ok(())
    } else {
        Err(KmsError::Validation(format!(
            "{what} must be between 1 and {max} bytes, got {len}"
        )))
    }
}

fn check_usage(key: &KmsKey, usage: KeyUsage, operation: Operation) -> KmsResult<()> {
    if key.metadata.usage == usage {
        Ok(())
    } else {
        Err(KmsError::InvalidKeyUsage(format!(
            "{} has KeyUsage {}; {operation} needs {usage}",
            key.key_id(),
            key.metadata.usage
        )))
    }
}

fn unsupported_algorithm(key: &KmsKey, algorithm: &dyn std::fmt::Display) -> KmsError {
    KmsError::InvalidKeyUsage(format!(
        "{} ({}) does not support the algorithm {algorithm}",
        key.key_id(),
        key.metadata.spec
    ))
}

/// Checks state and usage for an operation on `key`.
fn prepare(key: &KmsKey, operation: Operation, usage: KeyUsage) -> KmsResult<()> {
    key.metadata.check(operation)?;
    check_usage(key, usage, operation)
}

fn oaep_hash(algorithm: EncryptionAlgorithm) -> HashAlgorithm {
    match algorithm {
        EncryptionAlgorithm::RsaesOaepSha1 => HashAlgorithm::Sha1,
        _ => HashAlgorithm::Sha256,
    }
}

fn message_key(material: &KeyMaterial, header: &[u8; HEADER_LEN]) -> KmsResult<AesGcmKey> {
    let prf = material
        .symmetric_prf()
        .ok_or_else(|| KmsError::internal("symmetric key without symmetric material"))?;
    let key = primitives::sp800_108_ctr_hmac_sha256(prf.backend(), &blob::kdf_fixed_info(header));
    AesGcmKey::new(key.expose())
}

fn aad(header: &[u8], context: &EncryptionContext) -> Vec<u8> {
    let mut aad = Vec::with_capacity(header.len() + 64);
    aad.extend_from_slice(header);
    aad.extend_from_slice(&context.canonical_bytes());
    aad
}

fn seal_symmetric(
    key: &KmsKey,
    plaintext: &[u8],
    context: &EncryptionContext,
) -> KmsResult<Vec<u8>> {
    let (version, material) = key.current_material()?;
    // One RNG call for salt and nonce: each call into the backend's RNG costs about as
    // much as sealing 2 KiB.
    let mut random = [0u8; SALT_LEN + GCM_NONCE_LEN];
    primitives::fill_random(&mut random)?;
    let mut salt = [0u8; SALT_LEN];
    let mut nonce = [0u8; GCM_NONCE_LEN];
    salt.copy_from_slice(&random[..SALT_LEN]);
    nonce.copy_from_slice(&random[SALT_LEN..]);
    let header = blob::encode_header(key.key_id(), version, &salt, &nonce);
    let (ciphertext, tag) =
        message_key(material, &header)?.seal(&nonce, &aad(&header, context), plaintext)?;
    let mut out = Vec::with_capacity(HEADER_LEN + ciphertext.len() + tag.len());
    out.extend_from_slice(&header);
    out.extend_from_slice(&ciphertext);
    out.extend_from_slice(&tag);
    Ok(out)
}

fn open_symmetric(
    key: &KmsKey,
    ciphertext_blob: &[u8],
    context: &EncryptionContext,
) -> KmsResult<SecretBytes> {
    let parsed = blob::parse(ciphertext_blob)?;
    if parsed.key_id != key.key_id() {
        return Err(KmsError::IncorrectKey);
    }
    let material = key
        .material(parsed.material_version)
        .ok_or(KmsError::InvalidCiphertext)?;
    let mut header = [0u8; HEADER_LEN];
    header.copy_from_slice(parsed.header);
    message_key(material, &header)?.open(
        parsed.nonce,
        &aad(parsed.header, context),
        parsed.ciphertext,
        parsed.tag,
    )
}

/// The checks Encrypt, Decrypt and both sides of ReEncrypt share: state, usage, input
/// length (`(name, length, max)`), algorithm, and no encryption context on RSA keys.
fn check_encryption(
    key: &KmsKey,
    operation: Operation,
    algorithm: EncryptionAlgorithm,
    context: &EncryptionContext,
    (what, len, max): (&str, usize, usize),
) -> KmsResult<()> {
    prepare(key, operation, KeyUsage::EncryptDecrypt)?;
    check_len(what, len, max)?;
    if !key
        .metadata
        .spec
        .encryption_algorithms()
        .contains(&algorithm)
    {
        return Err(unsupported_algorithm(key, &algorithm));
    }
    if !key.metadata.spec.is_symmetric() && !context.is_empty() {
        return Err(KmsError::validation(
            "EncryptionContext is not supported with asymmetric KMS keys",
        ));
    }
    Ok(())
}

/// Encrypt. Symmetric keys write a ciphertext blob bound to the encryption context; RSA
/// keys write raw RSA-OAEP ciphertext and take no encryption context.
///
/// # Errors
/// `ValidationException` for a plaintext outside 1..=4096 bytes (or over the RSA limit) or
/// an encryption context on an asymmetric key; `InvalidKeyUsageException` for a key or
/// algorithm that cannot encrypt; state errors as AWS.
pub fn encrypt(
    key: &KmsKey,
    plaintext: &[u8],
    context: &EncryptionContext,
    algorithm: EncryptionAlgorithm,
) -> KmsResult<Vec<u8>> {
    encrypt_as(key, plaintext, context, algorithm, Operation::Encrypt)
}

fn encrypt_as(
    key: &KmsKey,
    plaintext: &[u8],
    context: &EncryptionContext,
    algorithm: EncryptionAlgorithm,
    operation: Operation,
) -> KmsResult<Vec<u8>> {
    check_encryption(
        key,
        operation,
        algorithm,
        context,
        ("Plaintext", plaintext.len(), MAX_PLAINTEXT),
    )?;
    if key.metadata.spec.is_symmetric() {
        return seal_symmetric(key, plaintext, context);
    }
    let (_, material) = key.current_material()?;
    let public = material
        .public_key_der()
        .ok_or_else(|| KmsError::internal("RSA key without a public key"))?;
    let max = algorithm
        .rsa_max_plaintext(key.metadata.spec)
        .unwrap_or_default();
    if plaintext.len() > max {
        return Err(KmsError::Validation(format!(
            "Plaintext of {} bytes exceeds the {max}-byte limit of {} with {algorithm}",
            plaintext.len(),
            key.metadata.spec
        )));
    }
    primitives::rsa_oaep_encrypt(public, oaep_hash(algorithm), plaintext)
}

/// Decrypt. A symmetric blob names its key and material version: every retained version
/// decrypts after rotation. Returns the plaintext and the material version used.
///
/// # Errors
/// `InvalidCiphertextException` for a malformed or tampered blob, a wrong encryption
/// context, or a version that is not retained; `IncorrectKeyException` for a blob of
/// another key; `ValidationException` for a blob outside 1..=6144 bytes; usage and state
/// errors as AWS.
pub fn decrypt(
    key: &KmsKey,
    ciphertext_blob: &[u8],
    context: &EncryptionContext,
    algorithm: EncryptionAlgorithm,
) -> KmsResult<(SecretBytes, u32)> {
    decrypt_as(key, ciphertext_blob, context, algorithm, Operation::Decrypt)
}

fn decrypt_as(
    key: &KmsKey,
    ciphertext_blob: &[u8],
    context: &EncryptionContext,
    algorithm: EncryptionAlgorithm,
    operation: Operation,
) -> KmsResult<(SecretBytes, u32)> {
    check_encryption(
        key,
        operation,
        algorithm,
        context,
        ("CiphertextBlob", ciphertext_blob.len(), MAX_CIPHERTEXT),
    )?;
    if key.metadata.spec.is_symmetric() {
        let (_, version) = blob::peek(ciphertext_blob)?;
        return Ok((open_symmetric(key, ciphertext_blob, context)?, version));
    }
    let (version, material) = key.current_material()?;
    let rsa = material
        .rsa()
        .ok_or_else(|| KmsError::internal("RSA key without RSA material"))?;
    Ok((
        rsa.decrypt_oaep(oaep_hash(algorithm), ciphertext_blob)?,
        version,
    ))
}

/// Decrypt of a symmetric blob when the key is found from the blob itself, as AWS's
/// Decrypt does when KeyId is omitted. `named` is the key the caller named, if any.
///
/// A blob whose key id names no known key is corrupt (InvalidCiphertextException); a blob
/// of another existing key than the one named is IncorrectKeyException.
///
/// # Errors
/// As [`decrypt`].
pub fn decrypt_symmetric<'k>(
    lookup: impl Fn(&KeyId) -> Option<&'k KmsKey>,
    named: Option<KeyId>,
    ciphertext_blob: &[u8],
    context: &EncryptionContext,
) -> KmsResult<(SecretBytes, u32)> {
    check_len("CiphertextBlob", ciphertext_blob.len(), MAX_CIPHERTEXT)?;
    let (blob_key, _) = blob::peek(ciphertext_blob)?;
    let key = lookup(&blob_key).ok_or(KmsError::InvalidCiphertext)?;
    if named.is_some_and(|id| id != blob_key) {
        return Err(KmsError::IncorrectKey);
    }
    decrypt(
        key,
        ciphertext_blob,
        context,
        EncryptionAlgorithm::SymmetricDefault,
    )
}

/// One side of a ReEncrypt.
#[derive(Debug, Clone, Copy)]
pub struct ReEncryptSide<'a> {
    /// The key.
    pub key: &'a KmsKey,
    /// Its encryption context.
    pub context: &'a EncryptionContext,
    /// Its algorithm.
    pub algorithm: EncryptionAlgorithm,
}

/// ReEncrypt: decrypts under the source and encrypts under the destination; the plaintext
/// never leaves this function.
///
/// # Errors
/// As [`decrypt`] for the source and [`encrypt`] for the destination.
pub fn re_encrypt(
    ciphertext_blob: &[u8],
    source: ReEncryptSide<'_>,
    destination: ReEncryptSide<'_>,
) -> KmsResult<Vec<u8>> {
    let (plaintext, _) = decrypt_as(
        source.key,
        ciphertext_blob,
        source.context,
        source.algorithm,
        Operation::ReEncryptFrom,
    )?;
    encrypt_as(
        destination.key,
        plaintext.expose(),
        destination.context,
        destination.algorithm,
        Operation::ReEncryptTo,
    )
}

/// The length of a data key: by name or by byte count, exactly one of them.
///
/// # Errors
/// `ValidationException` when both or neither are given or the count is outside 1..=1024.
pub fn data_key_length(
    key_spec: Option<DataKeySpec>,
    number_of_bytes: Option<usize>,
) -> KmsResult<usize> {
    match (key_spec, number_of_bytes) {
        (Some(spec), None) => Ok(spec.byte_len()),
        (None, Some(n)) => {
            check_len("NumberOfBytes", n, MAX_RANDOM_BYTES)?;
            Ok(n)
        }
        _ => Err(KmsError::validation(
            "specify exactly one of KeySpec and NumberOfBytes",
        )),
    }
}

/// A data key: plaintext and its encryption under the KMS key.
#[derive(Debug)]
pub struct DataKey {
    /// The data key itself.
    pub plaintext: SecretBytes,
    /// The data key encrypted under the KMS key.
    pub ciphertext_blob: Vec<u8>,
}

fn symmetric_encryption_key(key: &KmsKey, operation: Operation) -> KmsResult<()> {
    prepare(key, operation, KeyUsage::EncryptDecrypt)?;
    if key.metadata.spec.is_symmetric() {
        Ok(())
    } else {
        Err(KmsError::InvalidKeyUsage(format!(
            "{operation} needs a symmetric encryption key; {} is {}",
            key.key_id(),
            key.metadata.spec
        )))
    }
}

/// GenerateDataKey (and, dropping the plaintext, GenerateDataKeyWithoutPlaintext).
///
/// # Errors
/// As [`data_key_length`]; `InvalidKeyUsageException` for a key that is not a symmetric
/// encryption key; state errors as AWS.
pub fn generate_data_key(
    key: &KmsKey,
    length: usize,
    context: &EncryptionContext,
) -> KmsResult<DataKey> {
    generate_data_key_as(key, length, context, Operation::GenerateDataKey)
}

/// GenerateDataKeyWithoutPlaintext: only the encrypted data key leaves.
///
/// # Errors
/// As [`generate_data_key`].
pub fn generate_data_key_without_plaintext(
    key: &KmsKey,
    length: usize,
    context: &EncryptionContext,
) -> KmsResult<Vec<u8>> {
    Ok(generate_data_key_as(
        key,
        length,
        context,
        Operation::GenerateDataKeyWithoutPlaintext,
    )?
    .ciphertext_blob)
}

fn generate_data_key_as(
    key: &KmsKey,
    length: usize,
    context: &EncryptionContext,
    operation: Operation,
) -> KmsResult<DataKey> {
    symmetric_encryption_key(key, operation)?;
    check_len("NumberOfBytes", length, MAX_RANDOM_BYTES)?;
    let plaintext = primitives::random_secret(length)?;
    let ciphertext_blob = seal_symmetric(key, plaintext.expose(), context)?;
    Ok(DataKey {
        plaintext,
        ciphertext_blob,
    })
}

/// A data key pair.
#[derive(Debug)]
pub struct DataKeyPair {
    /// Public key, DER SubjectPublicKeyInfo.
    pub public_key: Vec<u8>,
    /// Private key, PKCS#8 DER (absent for ...WithoutPlaintext).
    pub private_key_plaintext: Option<SecretBytes>,
    /// Private key encrypted under the KMS key.
    pub private_key_ciphertext_blob: Vec<u8>,
}

/// GenerateDataKeyPair / GenerateDataKeyPairWithoutPlaintext.
///
/// # Errors
/// `InvalidKeyUsageException` for a key that is not a symmetric encryption key; state
/// errors as AWS.
pub fn generate_data_key_pair(
    key: &KmsKey,
    pair_spec: DataKeyPairSpec,
    context: &EncryptionContext,
    with_plaintext: bool,
) -> KmsResult<DataKeyPair> {
    let operation = if with_plaintext {
        Operation::GenerateDataKeyPair
    } else {
        Operation::GenerateDataKeyPairWithoutPlaintext
    };
    symmetric_encryption_key(key, operation)?;
    let private = primitives::generate_private_key_pkcs8(pair_spec.key_spec())?;
    let public_key = primitives::public_key_of(pair_spec.key_spec(), private.expose())?;
    let private_key_ciphertext_blob = seal_symmetric(key, private.expose(), context)?;
    Ok(DataKeyPair {
        public_key,
        private_key_plaintext: with_plaintext.then_some(private),
        private_key_ciphertext_blob,
    })
}

fn sign_input<'a>(
    message: &'a [u8],
    message_type: MessageType,
    algorithm: SigningAlgorithm,
) -> KmsResult<SignInput<'a>> {
    check_len("Message", message.len(), MAX_MESSAGE)?;
    match message_type {
        MessageType::Raw => Ok(SignInput::Raw(message)),
        MessageType::Digest => {
            let expected = algorithm.hash().output_len();
            if message.len() != expected {
                return Err(KmsError::Validation(format!(
                    "a DIGEST message for {algorithm} must be {expected} bytes, got {}",
                    message.len()
                )));
            }
            Ok(SignInput::Digest(message))
        }
    }
}

fn signing_material(
    key: &KmsKey,
    operation: Operation,
    algorithm: SigningAlgorithm,
) -> KmsResult<&KeyMaterial> {
    prepare(key, operation, KeyUsage::SignVerify)?;
    if !key.metadata.spec.signing_algorithms().contains(&algorithm) {
        return Err(unsupported_algorithm(key, &algorithm));
    }
    Ok(key.current_material()?.1)
}

/// Sign with the current material.
///
/// # Errors
/// `ValidationException` for a message outside 1..=4096 bytes or a digest of the wrong
/// length; `InvalidKeyUsageException` for a key or algorithm that cannot sign; state
/// errors as AWS.
pub fn sign(
    key: &KmsKey,
    message: &[u8],
    message_type: MessageType,
    algorithm: SigningAlgorithm,
) -> KmsResult<Vec<u8>> {
    let material = signing_material(key, Operation::Sign, algorithm)?;
    let input = sign_input(message, message_type, algorithm)?;
    if let Some(rsa) = material.rsa() {
        rsa.sign(algorithm, input)
    } else if let Some(ec) = material.ecc() {
        ec.sign(algorithm, input)
    } else {
        Err(KmsError::internal("signing key without signing material"))
    }
}

/// Verify against the current material's public key.
///
/// # Errors
/// `KMSInvalidSignatureException` when the signature does not verify; otherwise as [`sign`].
pub fn verify(
    key: &KmsKey,
    message: &[u8],
    message_type: MessageType,
    signature: &[u8],
    algorithm: SigningAlgorithm,
) -> KmsResult<()> {
    let material = signing_material(key, Operation::Verify, algorithm)?;
    let input = sign_input(message, message_type, algorithm)?;
    check_len("Signature", signature.len(), MAX_SIGNATURE)?;
    let public = material
        .public_key_der()
        .ok_or_else(|| KmsError::internal("signing key without a public key"))?;
    primitives::verify_signature(key.metadata.spec, public, algorithm, input, signature)
}

fn mac_material<'k>(
    key: &'k KmsKey,
    operation: Operation,
    algorithm: MacAlgorithm,
    message: &[u8],
) -> KmsResult<&'k KeyMaterial> {
    prepare(key, operation, KeyUsage::GenerateVerifyMac)?;
    if !key.metadata.spec.mac_algorithms().contains(&algorithm) {
        return Err(unsupported_algorithm(key, &algorithm));
    }
    check_len("Message", message.len(), MAX_MESSAGE)?;
    Ok(key.current_material()?.1)
}

/// GenerateMac.
///
/// # Errors
/// `ValidationException` for a message outside 1..=4096 bytes; `InvalidKeyUsageException`
/// for a key or algorithm that cannot MAC; state errors as AWS.
pub fn generate_mac(key: &KmsKey, message: &[u8], algorithm: MacAlgorithm) -> KmsResult<Vec<u8>> {
    let material = mac_material(key, Operation::GenerateMac, algorithm, message)?;
    let hmac = material
        .hmac()
        .ok_or_else(|| KmsError::internal("HMAC key without HMAC material"))?;
    Ok(hmac.sign(message))
}

/// VerifyMac, in constant time.
///
/// # Errors
/// `KMSInvalidMacException` when the MAC does not verify; otherwise as [`generate_mac`].
pub fn verify_mac(
    key: &KmsKey,
    message: &[u8],
    mac: &[u8],
    algorithm: MacAlgorithm,
) -> KmsResult<()> {
    let material = mac_material(key, Operation::VerifyMac, algorithm, message)?;
    check_len("Mac", mac.len(), MAX_SIGNATURE)?;
    let hmac = material
        .hmac()
        .ok_or_else(|| KmsError::internal("HMAC key without HMAC material"))?;
    hmac.verify(message, mac)
}

/// DeriveSharedSecret: ECDH with a peer's DER SubjectPublicKeyInfo.
///
/// # Errors
/// `InvalidKeyUsageException` for a key without KEY_AGREEMENT usage; `ValidationException`
/// for a malformed peer key or one on another curve; state errors as AWS.
pub fn derive_shared_secret(
    key: &KmsKey,
    algorithm: KeyAgreementAlgorithm,
    peer_public_key: &[u8],
) -> KmsResult<SecretBytes> {
    prepare(key, Operation::DeriveSharedSecret, KeyUsage::KeyAgreement)?;
    if !key
        .metadata
        .spec
        .key_agreement_algorithms()
        .contains(&algorithm)
    {
        return Err(unsupported_algorithm(key, &algorithm));
    }
    check_len("PublicKey", peer_public_key.len(), MAX_PUBLIC_KEY)?;
    let (_, material) = key.current_material()?;
    let ec = material
        .ecc()
        .ok_or_else(|| KmsError::internal("key agreement key without EC material"))?;
    ec.derive_shared_secret(peer_public_key)
}

/// GenerateRandom.
///
/// # Errors
/// `ValidationException` outside 1..=1024 bytes.
pub fn generate_random(number_of_bytes: usize) -> KmsResult<SecretBytes> {
    check_len("NumberOfBytes", number_of_bytes, MAX_RANDOM_BYTES)?;
    primitives::random_secret(number_of_bytes)
}

/// What GetPublicKey returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicKeyInfo {
    /// DER SubjectPublicKeyInfo.
    pub public_key: Vec<u8>,
    /// Key spec.
    pub key_spec: KeySpec,
    /// Key usage.
    pub key_usage: KeyUsage,
    /// Encryption algorithms, for ENCRYPT_DECRYPT keys.
    pub encryption_algorithms: Vec<EncryptionAlgorithm>,
    /// Signing algorithms, for SIGN_VERIFY keys.
    pub signing_algorithms: Vec<SigningAlgorithm>,
    /// Key agreement algorithms, for KEY_AGREEMENT keys.
    pub key_agreement_algorithms: Vec<KeyAgreementAlgorithm>,
}

/// GetPublicKey.
///
/// # Errors
/// `UnsupportedOperationException` for symmetric and HMAC keys; state errors as AWS.
pub fn get_public_key(key: &KmsKey) -> KmsResult<PublicKeyInfo> {
    key.metadata.check(Operation::GetPublicKey)?;
    let spec = key.metadata.spec;
    if !spec.is_asymmetric() {
        return Err(KmsError::UnsupportedOperation(format!(
            "{} is {spec}: only asymmetric keys have a public key",
            key.key_id()
        )));
    }
    let (_, material) = key.current_material()?;
    let public_key = material
        .public_key_der()
        .ok_or_else(|| KmsError::internal("asymmetric key without a public key"))?
        .to_vec();
    let usage = key.metadata.usage;
    let only = |wanted: KeyUsage| usage == wanted;
    Ok(PublicKeyInfo {
        public_key,
        key_spec: spec,
        key_usage: usage,
        encryption_algorithms: if only(KeyUsage::EncryptDecrypt) {
            spec.encryption_algorithms().to_vec()
        } else {
            Vec::new()
        },
        signing_algorithms: if only(KeyUsage::SignVerify) {
            spec.signing_algorithms().to_vec()
        } else {
            Vec::new()
        },
        key_agreement_algorithms: if only(KeyUsage::KeyAgreement) {
            spec.key_agreement_algorithms().to_vec()
        } else {
            Vec::new()
        },
    })
}
