//! Decode: AWS JSON 1.1 body → typed, validated request.
//!
//! Two passes. serde reads the body into a wire struct whose members are all optional
//! (wrong JSON types and malformed JSON are `SerializationException`); then every model
//! constraint is checked and all violations are reported at once in AWS's words
//! (`ValidationException`: "2 validation errors detected: Value null at 'keyId' failed to
//! satisfy constraint: Member must not be null; ..."). Values are never echoed except
//! numbers and enum names, so no plaintext can reach a message or a log. Unknown members
//! are ignored, as AWS does, so newer SDKs keep working.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::str::FromStr;

use kms_core::{EncryptionContext, KmsError, SecretBytes};
use serde::Deserialize;

use super::operation::ApiOperation;
use super::request::*;
use crate::error::ApiError;

/// Model limits (botocore `kms/2014-11-01/service-2.json`).
pub mod limits {
    /// `KeyIdType`.
    pub const KEY_ID: (usize, usize) = (1, 2048);
    /// `PlaintextType` (Plaintext, Message).
    pub const PLAINTEXT: (usize, usize) = (1, 4096);
    /// `CiphertextType` (CiphertextBlob, Signature, Mac).
    pub const CIPHERTEXT: (usize, usize) = (1, 6144);
    /// `PublicKeyType`.
    pub const PUBLIC_KEY: (usize, usize) = (1, 8192);
    /// `GrantTokenList` length.
    pub const GRANT_TOKENS: usize = 10;
    /// `GrantTokenType`.
    pub const GRANT_TOKEN: (usize, usize) = (1, 8192);
    /// `NumberOfBytesType`.
    pub const NUMBER_OF_BYTES: (i64, i64) = (1, 1024);
    /// `LimitType`.
    pub const LIMIT: (i64, i64) = (1, 1000);
    /// `MarkerType`.
    pub const MARKER: (usize, usize) = (1, 1024);
    /// `GrantIdType`.
    pub const GRANT_ID: (usize, usize) = (1, 128);
    /// `PrincipalIdType`.
    pub const PRINCIPAL_ID: (usize, usize) = (1, 256);
    /// `CustomKeyStoreIdType`.
    pub const CUSTOM_KEY_STORE_ID: (usize, usize) = (1, 64);
}

/// The model's enum value sets. Values the model has but KubeKMS does not implement (SM2,
/// ML-DSA, Ed25519, ...) pass validation and are refused with UnsupportedOperationException.
pub mod enums {
    /// `EncryptionAlgorithmSpec`.
    pub const ENCRYPTION_ALGORITHM: &[&str] = &[
        "SYMMETRIC_DEFAULT",
        "RSAES_OAEP_SHA_1",
        "RSAES_OAEP_SHA_256",
        "SM2PKE",
    ];
    /// `DataKeySpec`.
    pub const DATA_KEY_SPEC: &[&str] = &["AES_256", "AES_128"];
    /// `DataKeyPairSpec`.
    pub const DATA_KEY_PAIR_SPEC: &[&str] = &[
        "RSA_2048",
        "RSA_3072",
        "RSA_4096",
        "ECC_NIST_P256",
        "ECC_NIST_P384",
        "ECC_NIST_P521",
        "ECC_SECG_P256K1",
        "SM2",
        "ECC_NIST_EDWARDS25519",
        "ML_KEM_512",
        "ML_KEM_768",
        "ML_KEM_1024",
    ];
    /// `MessageType`.
    pub const MESSAGE_TYPE: &[&str] = &["RAW", "DIGEST", "EXTERNAL_MU"];
    /// `SigningAlgorithmSpec`.
    pub const SIGNING_ALGORITHM: &[&str] = &[
        "RSASSA_PSS_SHA_256",
        "RSASSA_PSS_SHA_384",
        "RSASSA_PSS_SHA_512",
        "RSASSA_PKCS1_V1_5_SHA_256",
        "RSASSA_PKCS1_V1_5_SHA_384",
        "RSASSA_PKCS1_V1_5_SHA_512",
        "ECDSA_SHA_256",
        "ECDSA_SHA_384",
        "ECDSA_SHA_512",
        "SM2DSA",
        "ML_DSA_SHAKE_256",
        "ED25519_SHA_512",
        "ED25519_PH_SHA_512",
    ];
    /// `MacAlgorithmSpec`.
    pub const MAC_ALGORITHM: &[&str] = &[
        "HMAC_SHA_224",
        "HMAC_SHA_256",
        "HMAC_SHA_384",
        "HMAC_SHA_512",
    ];
    /// `KeyAgreementAlgorithmSpec`.
    pub const KEY_AGREEMENT_ALGORITHM: &[&str] = &["ECDH"];
    /// `ResourceOwnerType`.
    pub const RESOURCE_OWNER: &[&str] = &["SELF", "OTHER_ACCOUNTS_VIA_RAM"];
    /// `IncludeKeyMaterial`.
    pub const INCLUDE_KEY_MATERIAL: &[&str] = &["ALL_KEY_MATERIAL", "ROTATIONS_ONLY"];
    /// `DryRunModifierType`.
    pub const DRY_RUN_MODIFIER: &[&str] = &["IGNORE_CIPHERTEXT"];
}

type Str<'a> = Option<Cow<'a, str>>;

/// A string member borrowed from the body when it holds no escape (serde never borrows an
/// `Option<Cow<str>>` by itself, so every plaintext was copied once more).
struct BorrowedStr<'a>(Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for BorrowedStr<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = Cow<'de, str>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E>(self, value: &'de str) -> Result<Self::Value, E> {
                Ok(Cow::Borrowed(value))
            }
            fn visit_str<E>(self, value: &str) -> Result<Self::Value, E> {
                Ok(Cow::Owned(value.to_owned()))
            }
            fn visit_string<E>(self, value: String) -> Result<Self::Value, E> {
                Ok(Cow::Owned(value))
            }
        }
        deserializer.deserialize_str(Visitor).map(BorrowedStr)
    }
}

/// `deserialize_with` of every optional string member: null or absent is `None`.
fn borrowed<'de: 'a, 'a, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Str<'a>, D::Error> {
    Ok(Option::<BorrowedStr<'a>>::deserialize(deserializer)?.map(|s| s.0))
}
type Context = Option<BTreeMap<String, String>>;

/// AWS's name of a member in validation messages: the first letter in lower case.
fn member_path(name: &str) -> String {
    let mut chars = name.chars();
    match chars.next() {
        Some(first) => first.to_lowercase().chain(chars).collect(),
        None => String::new(),
    }
}

/// Collects model violations, then reports them in AWS's format.
#[derive(Debug, Default)]
struct Check {
    violations: Vec<String>,
    unsupported: Option<String>,
}

impl Check {
    fn violation(&mut self, value: Option<&str>, member: &str, constraint: String) {
        let value = match value {
            Some(v) => format!("Value '{v}' at"),
            None => "Value at".to_owned(),
        };
        self.violations.push(format!(
            "{value} '{}' failed to satisfy constraint: {constraint}",
            member_path(member)
        ));
    }

    fn null(&mut self, member: &str) {
        self.violations.push(format!(
            "Value null at '{}' failed to satisfy constraint: Member must not be null",
            member_path(member)
        ));
    }

    fn required<T>(&mut self, member: &str, value: Option<T>) -> Option<T> {
        if value.is_none() {
            self.null(member);
        }
        value
    }

    /// A member that must be present, then checked as [`Check::string`].
    fn required_string(
        &mut self,
        member: &str,
        value: Str<'_>,
        bounds: (usize, usize),
    ) -> Option<String> {
        let value = self.required(member, value);
        self.string(member, value, bounds)
    }

    /// The `KeyId` of an operation on one key.
    fn key_id(&mut self, value: Str<'_>) -> Option<String> {
        self.required_string("KeyId", value, limits::KEY_ID)
    }

    fn length(&mut self, member: &str, len: usize, (min, max): (usize, usize)) -> bool {
        if len < min {
            self.violation(
                None,
                member,
                format!("Member must have length greater than or equal to {min}"),
            );
            false
        } else if len > max {
            self.violation(
                None,
                member,
                format!("Member must have length less than or equal to {max}"),
            );
            false
        } else {
            true
        }
    }

    fn string(&mut self, member: &str, value: Str<'_>, bounds: (usize, usize)) -> Option<String> {
        let value = value?;
        let len = value.chars().count();
        self.length(member, len, bounds).then(|| value.into_owned())
    }

    fn integer(&mut self, member: &str, value: Option<i64>, (min, max): (i64, i64)) -> Option<i64> {
        let value = value?;
        if value < min {
            self.violation(
                Some(&value.to_string()),
                member,
                format!("Member must have value greater than or equal to {min}"),
            );
            None
        } else if value > max {
            self.violation(
                Some(&value.to_string()),
                member,
                format!("Member must have value less than or equal to {max}"),
            );
            None
        } else {
            Some(value)
        }
    }

    /// A blob: base64 text decoded, then its decoded length checked.
    fn blob(
        &mut self,
        member: &str,
        value: Str<'_>,
        bounds: (usize, usize),
    ) -> Result<Option<Vec<u8>>, ApiError> {
        let Some(text) = value else { return Ok(None) };
        let bytes = super::base64::decode(text.as_bytes()).map_err(|_| {
            ApiError::Serialization(format!(
                "Value at '{}' is not valid base64",
                member_path(member)
            ))
        })?;
        Ok(self.length(member, bytes.len(), bounds).then_some(bytes))
    }

    /// A blob that must be present.
    fn required_blob(
        &mut self,
        member: &str,
        value: Str<'_>,
        bounds: (usize, usize),
    ) -> Result<Option<Vec<u8>>, ApiError> {
        let value = self.required(member, value);
        self.blob(member, value, bounds)
    }

    /// A blob that must be present and is secret once decoded (plaintexts, messages).
    fn required_secret_blob(
        &mut self,
        member: &str,
        value: Str<'_>,
        bounds: (usize, usize),
    ) -> Result<Option<SecretBytes>, ApiError> {
        Ok(self
            .required_blob(member, value, bounds)?
            .map(SecretBytes::new))
    }

    /// The `CiphertextBlob` of Decrypt and ReEncrypt: required, unless DryRun with the
    /// IGNORE_CIPHERTEXT modifier. Returns the blob, DryRun and whether the blob is
    /// ignored.
    fn ciphertext_blob(
        &mut self,
        value: Str<'_>,
        dry_run: Option<bool>,
        modifiers: Option<Vec<String>>,
    ) -> Result<(Option<Vec<u8>>, bool, bool), ApiError> {
        let ignore_ciphertext = dry_run_ignores_ciphertext(self, modifiers);
        let dry_run = dry_run.unwrap_or(false);
        let blob = if dry_run && ignore_ciphertext {
            value
        } else {
            self.required("CiphertextBlob", value)
        };
        let blob = self.blob("CiphertextBlob", blob, limits::CIPHERTEXT)?;
        Ok((blob, dry_run, ignore_ciphertext))
    }

    /// An enum: outside the model's set is a violation; in the set but not implemented
    /// here is UnsupportedOperationException.
    fn enumeration<T: FromStr>(&mut self, member: &str, value: Str<'_>, set: &[&str]) -> Option<T> {
        let value = value?;
        if !set.contains(&value.as_ref()) {
            let shown: String = value.chars().take(64).collect();
            self.violation(
                Some(&shown),
                member,
                format!("Member must satisfy enum value set: [{}]", set.join(", ")),
            );
            return None;
        }
        match value.parse::<T>() {
            Ok(parsed) => Some(parsed),
            Err(_) => {
                if self.unsupported.is_none() {
                    self.unsupported =
                        Some(format!("{} {value} is not supported by KubeKMS", member));
                }
                None
            }
        }
    }

    /// An enum member that must be present.
    fn required_enumeration<T: FromStr>(
        &mut self,
        member: &str,
        value: Str<'_>,
        set: &[&str],
    ) -> Option<T> {
        let value = self.required(member, value);
        self.enumeration(member, value, set)
    }

    fn grant_tokens(&mut self, value: Option<Vec<String>>) -> Result<Vec<String>, ApiError> {
        let tokens = value.unwrap_or_default();
        if tokens.len() > limits::GRANT_TOKENS {
            self.violation(
                None,
                "GrantTokens",
                format!(
                    "Member must have length less than or equal to {}",
                    limits::GRANT_TOKENS
                ),
            );
        }
        for (i, token) in tokens.iter().enumerate() {
            let member = format!("GrantTokens.{}.member", i + 1);
            if self.length(&member, token.chars().count(), limits::GRANT_TOKEN) {
                kms_core::grants::validate_grant_token(token)?;
            }
        }
        Ok(tokens)
    }

    fn context(&mut self, value: Context) -> Result<EncryptionContext, ApiError> {
        Ok(EncryptionContext::from_map(value.unwrap_or_default())?)
    }

    fn finish(self) -> Result<(), ApiError> {
        match self.violations.len() {
            0 => match self.unsupported {
                Some(message) => Err(KmsError::UnsupportedOperation(message).into()),
                None => Ok(()),
            },
            1 => Err(ApiError::validation(format!(
                "1 validation error detected: {}",
                self.violations[0]
            ))),
            n => Err(ApiError::validation(format!(
                "{n} validation errors detected: {}",
                self.violations.join("; ")
            ))),
        }
    }
}

fn parse<'a, T: Deserialize<'a>>(operation: ApiOperation, body: &'a [u8]) -> Result<T, ApiError> {
    // An empty body is an empty input structure, as the SDKs send `{}` for it.
    let body: &[u8] = if body.iter().all(u8::is_ascii_whitespace) {
        b"{}"
    } else {
        body
    };
    serde_json::from_slice(body).map_err(|e| {
        let what = match e.classify() {
            serde_json::error::Category::Data => "a member has the wrong type",
            serde_json::error::Category::Eof => "the JSON ends early",
            serde_json::error::Category::Syntax | serde_json::error::Category::Io => {
                "the body is not valid JSON"
            }
        };
        ApiError::Serialization(format!(
            "Cannot read the {operation} request: {what} (line {}, column {})",
            e.line(),
            e.column()
        ))
    })
}

fn dry_run_ignores_ciphertext(check: &mut Check, modifiers: Option<Vec<String>>) -> bool {
    let mut ignore = false;
    for (i, modifier) in modifiers.unwrap_or_default().into_iter().enumerate() {
        let member = format!("DryRunModifiers.{}.member", i + 1);
        if check
            .enumeration::<DryRunModifier>(
                &member,
                Some(Cow::Owned(modifier)),
                enums::DRY_RUN_MODIFIER,
            )
            .is_some()
        {
            ignore = true;
        }
    }
    ignore
}

struct DryRunModifier;

impl FromStr for DryRunModifier {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        (s == "IGNORE_CIPHERTEXT").then_some(Self).ok_or(())
    }
}

fn unsupported_recipient<T>(recipient: &Option<T>) -> Result<(), ApiError> {
    if recipient.is_some() {
        return Err(KmsError::UnsupportedOperation(
            "Recipient (attested AWS Nitro Enclaves) is not supported by KubeKMS".to_owned(),
        )
        .into());
    }
    Ok(())
}

fn page(check: &mut Check, limit: Option<i64>, marker: Str<'_>) -> Page {
    let limit = check
        .integer("Limit", limit, limits::LIMIT)
        .and_then(|l| u32::try_from(l).ok());
    let marker = marker.and_then(|m| {
        if !check.length("Marker", m.chars().count(), limits::MARKER) {
            return None;
        }
        if !m.chars().all(|c| ('\u{20}'..='\u{ff}').contains(&c)) {
            check.violation(
                None,
                "Marker",
                "Member must satisfy regular expression pattern: [\\u0020-\\u00FF]*".to_owned(),
            );
            return None;
        }
        Some(m.into_owned())
    });
    Page { limit, marker }
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct EncryptWire<'a> {
    #[serde(borrow, default, deserialize_with = "borrowed")]
    key_id: Str<'a>,
    #[serde(borrow, default, deserialize_with = "borrowed")]
    plaintext: Str<'a>,
    encryption_context: Context,
    grant_tokens: Option<Vec<String>>,
    #[serde(borrow, default, deserialize_with = "borrowed")]
    encryption_algorithm: Str<'a>,
    dry_run: Option<bool>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DecryptWire<'a> {
    #[serde(borrow, default, deserialize_with = "borrowed")]
    ciphertext_blob: Str<'a>,
    encryption_context: Context,
    grant_tokens: Option<Vec<String>>,
    #[serde(borrow, default, deserialize_with = "borrowed")]
    key_id: Str<'a>,
    #[serde(borrow, default, deserialize_with = "borrowed")]
    encryption_algorithm: Str<'a>,
    recipient: Option<serde_json::Value>,
    dry_run: Option<bool>,
    dry_run_modifiers: Option<Vec<String>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ReEncryptWire<'a> {
    #[serde(borrow, default, deserialize_with = "borrowed")]
    ciphertext_blob: Str<'a>,
    source_encryption_context: Context,
    #[serde(borrow, default, deserialize_with = "borrowed")]
    source_key_id: Str<'a>,
    #[serde(borrow, default, deserialize_with = "borrowed")]
    destination_key_id: Str<'a>,
    destination_encryption_context: Context,
    #[serde(borrow, default, deserialize_with = "borrowed")]
    source_encryption_algorithm: Str<'a>,
    #[serde(borrow, default, deserialize_with = "borrowed")]
    destination_encryption_algorithm: Str<'a>,
    grant_tokens: Option<Vec<String>>,
    dry_run: Option<bool>,
    dry_run_modifiers: Option<Vec<String>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct GenerateDataKeyWire<'a> {
    #[serde(borrow, default, deserialize_with = "borrowed")]
    key_id: Str<'a>,
    encryption_context: Context,
    number_of_bytes: Option<i64>,
    #[serde(borrow, default, deserialize_with = "borrowed")]
    key_spec: Str<'a>,
    grant_tokens: Option<Vec<String>>,
    recipient: Option<serde_json::Value>,
    dry_run: Option<bool>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct GenerateDataKeyPairWire<'a> {
    encryption_context: Context,
    #[serde(borrow, default, deserialize_with = "borrowed")]
    key_id: Str<'a>,
    #[serde(borrow, default, deserialize_with = "borrowed")]
    key_pair_spec: Str<'a>,
    grant_tokens: Option<Vec<String>>,
    recipient: Option<serde_json::Value>,
    dry_run: Option<bool>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct GenerateRandomWire<'a> {
    number_of_bytes: Option<i64>,
    #[serde(borrow, default, deserialize_with = "borrowed")]
    custom_key_store_id: Str<'a>,
    recipient: Option<serde_json::Value>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct KeyWire<'a> {
    #[serde(borrow, default, deserialize_with = "borrowed")]
    key_id: Str<'a>,
    grant_tokens: Option<Vec<String>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct SignWire<'a> {
    #[serde(borrow, default, deserialize_with = "borrowed")]
    key_id: Str<'a>,
    #[serde(borrow, default, deserialize_with = "borrowed")]
    message: Str<'a>,
    #[serde(borrow, default, deserialize_with = "borrowed")]
    message_type: Str<'a>,
    #[serde(borrow, default, deserialize_with = "borrowed")]
    signature: Str<'a>,
    grant_tokens: Option<Vec<String>>,
    #[serde(borrow, default, deserialize_with = "borrowed")]
    signing_algorithm: Str<'a>,
    dry_run: Option<bool>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct MacWire<'a> {
    #[serde(borrow, default, deserialize_with = "borrowed")]
    message: Str<'a>,
    #[serde(borrow, default, deserialize_with = "borrowed")]
    key_id: Str<'a>,
    #[serde(borrow, default, deserialize_with = "borrowed")]
    mac_algorithm: Str<'a>,
    #[serde(borrow, default, deserialize_with = "borrowed")]
    mac: Str<'a>,
    grant_tokens: Option<Vec<String>>,
    dry_run: Option<bool>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DeriveSharedSecretWire<'a> {
    #[serde(borrow, default, deserialize_with = "borrowed")]
    key_id: Str<'a>,
    #[serde(borrow, default, deserialize_with = "borrowed")]
    key_agreement_algorithm: Str<'a>,
    #[serde(borrow, default, deserialize_with = "borrowed")]
    public_key: Str<'a>,
    grant_tokens: Option<Vec<String>>,
    dry_run: Option<bool>,
    recipient: Option<serde_json::Value>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ListWire<'a> {
    limit: Option<i64>,
    #[serde(borrow, default, deserialize_with = "borrowed")]
    marker: Str<'a>,
    #[serde(borrow, default, deserialize_with = "borrowed")]
    key_id: Str<'a>,
    resource_owners: Option<Vec<String>>,
    #[serde(borrow, default, deserialize_with = "borrowed")]
    grant_id: Str<'a>,
    #[serde(borrow, default, deserialize_with = "borrowed")]
    grantee_principal: Str<'a>,
    #[serde(borrow, default, deserialize_with = "borrowed")]
    grantee_service_principal: Str<'a>,
    #[serde(borrow, default, deserialize_with = "borrowed")]
    include_key_material: Str<'a>,
}

struct ResourceOwner;

impl FromStr for ResourceOwner {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        matches!(s, "SELF" | "OTHER_ACCOUNTS_VIA_RAM")
            .then_some(Self)
            .ok_or(())
    }
}

/// Decodes and validates the body of `operation`.
///
/// # Errors
/// `SerializationException` for a body that is not JSON or has members of the wrong type
/// or blobs that are not base64; `ValidationException` for model constraint violations;
/// `UnsupportedOperationException` for model values KubeKMS does not implement;
/// `InvalidGrantTokenException` for malformed grant tokens; the context errors of kms-core.
pub fn decode(operation: ApiOperation, body: &[u8]) -> Result<KmsRequest, ApiError> {
    use ApiOperation as Op;
    let mut c = Check::default();
    let request = match operation {
        Op::Encrypt => {
            let w: EncryptWire<'_> = parse(operation, body)?;
            let key_id = c.key_id(w.key_id);
            let plaintext = c.required_secret_blob("Plaintext", w.plaintext, limits::PLAINTEXT)?;
            let algorithm = c.enumeration(
                "EncryptionAlgorithm",
                w.encryption_algorithm,
                enums::ENCRYPTION_ALGORITHM,
            );
            let grant_tokens = c.grant_tokens(w.grant_tokens)?;
            let encryption_context = c.context(w.encryption_context)?;
            c.finish()?;
            let (Some(key_id), Some(plaintext)) = (key_id, plaintext) else {
                return Err(incomplete());
            };
            KmsRequest::Encrypt(EncryptRequest {
                key_id,
                plaintext,
                encryption_context,
                algorithm: algorithm.unwrap_or_default_algorithm(),
                grant_tokens,
                dry_run: w.dry_run.unwrap_or(false),
            })
        }
        Op::Decrypt => {
            let w: DecryptWire<'_> = parse(operation, body)?;
            unsupported_recipient(&w.recipient)?;
            let (ciphertext_blob, dry_run, ignore_ciphertext) =
                c.ciphertext_blob(w.ciphertext_blob, w.dry_run, w.dry_run_modifiers)?;
            let key_id = c.string("KeyId", w.key_id, limits::KEY_ID);
            let algorithm = c.enumeration(
                "EncryptionAlgorithm",
                w.encryption_algorithm,
                enums::ENCRYPTION_ALGORITHM,
            );
            let grant_tokens = c.grant_tokens(w.grant_tokens)?;
            let encryption_context = c.context(w.encryption_context)?;
            c.finish()?;
            KmsRequest::Decrypt(DecryptRequest {
                ciphertext_blob,
                key_id,
                encryption_context,
                algorithm: algorithm.unwrap_or_default_algorithm(),
                grant_tokens,
                dry_run,
                ignore_ciphertext,
            })
        }
        Op::ReEncrypt => {
            let w: ReEncryptWire<'_> = parse(operation, body)?;
            let (ciphertext_blob, dry_run, ignore_ciphertext) =
                c.ciphertext_blob(w.ciphertext_blob, w.dry_run, w.dry_run_modifiers)?;
            let source_key_id = c.string("SourceKeyId", w.source_key_id, limits::KEY_ID);
            let destination_key_id =
                c.required_string("DestinationKeyId", w.destination_key_id, limits::KEY_ID);
            let source_algorithm = c.enumeration(
                "SourceEncryptionAlgorithm",
                w.source_encryption_algorithm,
                enums::ENCRYPTION_ALGORITHM,
            );
            let destination_algorithm = c.enumeration(
                "DestinationEncryptionAlgorithm",
                w.destination_encryption_algorithm,
                enums::ENCRYPTION_ALGORITHM,
            );
            let grant_tokens = c.grant_tokens(w.grant_tokens)?;
            let source_encryption_context = c.context(w.source_encryption_context)?;
            let destination_encryption_context = c.context(w.destination_encryption_context)?;
            c.finish()?;
            let Some(destination_key_id) = destination_key_id else {
                return Err(incomplete());
            };
            KmsRequest::ReEncrypt(ReEncryptRequest {
                ciphertext_blob,
                source_key_id,
                source_encryption_context,
                source_algorithm: source_algorithm.unwrap_or_default_algorithm(),
                destination_key_id,
                destination_encryption_context,
                destination_algorithm: destination_algorithm.unwrap_or_default_algorithm(),
                grant_tokens,
                dry_run,
                ignore_ciphertext,
            })
        }
        Op::GenerateDataKey | Op::GenerateDataKeyWithoutPlaintext => {
            let w: GenerateDataKeyWire<'_> = parse(operation, body)?;
            unsupported_recipient(&w.recipient)?;
            let key_id = c.key_id(w.key_id);
            let number_of_bytes =
                c.integer("NumberOfBytes", w.number_of_bytes, limits::NUMBER_OF_BYTES);
            let key_spec = c.enumeration("KeySpec", w.key_spec, enums::DATA_KEY_SPEC);
            let grant_tokens = c.grant_tokens(w.grant_tokens)?;
            let encryption_context = c.context(w.encryption_context)?;
            c.finish()?;
            let Some(key_id) = key_id else {
                return Err(incomplete());
            };
            let request = GenerateDataKeyRequest {
                key_id,
                encryption_context,
                key_spec,
                number_of_bytes: number_of_bytes.and_then(|n| usize::try_from(n).ok()),
                grant_tokens,
                dry_run: w.dry_run.unwrap_or(false),
            };
            if operation == Op::GenerateDataKey {
                KmsRequest::GenerateDataKey(request)
            } else {
                KmsRequest::GenerateDataKeyWithoutPlaintext(request)
            }
        }
        Op::GenerateDataKeyPair | Op::GenerateDataKeyPairWithoutPlaintext => {
            let w: GenerateDataKeyPairWire<'_> = parse(operation, body)?;
            unsupported_recipient(&w.recipient)?;
            let key_id = c.key_id(w.key_id);
            let key_pair_spec =
                c.required_enumeration("KeyPairSpec", w.key_pair_spec, enums::DATA_KEY_PAIR_SPEC);
            let grant_tokens = c.grant_tokens(w.grant_tokens)?;
            let encryption_context = c.context(w.encryption_context)?;
            c.finish()?;
            let (Some(key_id), Some(key_pair_spec)) = (key_id, key_pair_spec) else {
                return Err(incomplete());
            };
            let request = GenerateDataKeyPairRequest {
                key_id,
                encryption_context,
                key_pair_spec,
                grant_tokens,
                dry_run: w.dry_run.unwrap_or(false),
            };
            if operation == Op::GenerateDataKeyPair {
                KmsRequest::GenerateDataKeyPair(request)
            } else {
                KmsRequest::GenerateDataKeyPairWithoutPlaintext(request)
            }
        }
        Op::GenerateRandom => {
            let w: GenerateRandomWire<'_> = parse(operation, body)?;
            unsupported_recipient(&w.recipient)?;
            let n = c.required("NumberOfBytes", w.number_of_bytes);
            let n = c.integer("NumberOfBytes", n, limits::NUMBER_OF_BYTES);
            let store = c.string(
                "CustomKeyStoreId",
                w.custom_key_store_id,
                limits::CUSTOM_KEY_STORE_ID,
            );
            c.finish()?;
            if let Some(store) = store {
                return Err(ApiError::CustomKeyStoreNotFound(format!(
                    "Custom key store {:?} does not exist: KubeKMS has no custom key stores",
                    store.chars().take(64).collect::<String>()
                )));
            }
            let Some(n) = n.and_then(|n| usize::try_from(n).ok()) else {
                return Err(incomplete());
            };
            KmsRequest::GenerateRandom(GenerateRandomRequest { number_of_bytes: n })
        }
        Op::GetPublicKey | Op::DescribeKey => {
            let w: KeyWire<'_> = parse(operation, body)?;
            let key_id = c.key_id(w.key_id);
            let grant_tokens = c.grant_tokens(w.grant_tokens)?;
            c.finish()?;
            let Some(key_id) = key_id else {
                return Err(incomplete());
            };
            let request = KeyRequest {
                key_id,
                grant_tokens,
            };
            if operation == Op::GetPublicKey {
                KmsRequest::GetPublicKey(request)
            } else {
                KmsRequest::DescribeKey(request)
            }
        }
        Op::Sign | Op::Verify => {
            let w: SignWire<'_> = parse(operation, body)?;
            let key_id = c.key_id(w.key_id);
            let message = c.required_secret_blob("Message", w.message, limits::PLAINTEXT)?;
            let message_type = c.enumeration("MessageType", w.message_type, enums::MESSAGE_TYPE);
            let algorithm = c.required_enumeration(
                "SigningAlgorithm",
                w.signing_algorithm,
                enums::SIGNING_ALGORITHM,
            );
            let signature = if operation == Op::Verify {
                c.required_blob("Signature", w.signature, limits::CIPHERTEXT)?
            } else {
                None
            };
            let grant_tokens = c.grant_tokens(w.grant_tokens)?;
            c.finish()?;
            let (Some(key_id), Some(message), Some(algorithm)) = (key_id, message, algorithm)
            else {
                return Err(incomplete());
            };
            let message_type = message_type.unwrap_or(kms_core::MessageType::Raw);
            let dry_run = w.dry_run.unwrap_or(false);
            if operation == Op::Sign {
                KmsRequest::Sign(SignRequest {
                    key_id,
                    message,
                    message_type,
                    algorithm,
                    grant_tokens,
                    dry_run,
                })
            } else {
                let Some(signature) = signature else {
                    return Err(incomplete());
                };
                KmsRequest::Verify(VerifyRequest {
                    key_id,
                    message,
                    message_type,
                    signature,
                    algorithm,
                    grant_tokens,
                    dry_run,
                })
            }
        }
        Op::GenerateMac | Op::VerifyMac => {
            let w: MacWire<'_> = parse(operation, body)?;
            let message = c.required_secret_blob("Message", w.message, limits::PLAINTEXT)?;
            let key_id = c.key_id(w.key_id);
            let algorithm =
                c.required_enumeration("MacAlgorithm", w.mac_algorithm, enums::MAC_ALGORITHM);
            let mac = if operation == Op::VerifyMac {
                c.required_blob("Mac", w.mac, limits::CIPHERTEXT)?
            } else {
                None
            };
            let grant_tokens = c.grant_tokens(w.grant_tokens)?;
            c.finish()?;
            let (Some(key_id), Some(message), Some(algorithm)) = (key_id, message, algorithm)
            else {
                return Err(incomplete());
            };
            let dry_run = w.dry_run.unwrap_or(false);
            if operation == Op::GenerateMac {
                KmsRequest::GenerateMac(GenerateMacRequest {
                    key_id,
                    message,
                    algorithm,
                    grant_tokens,
                    dry_run,
                })
            } else {
                let Some(mac) = mac else {
                    return Err(incomplete());
                };
                KmsRequest::VerifyMac(VerifyMacRequest {
                    key_id,
                    message,
                    mac,
                    algorithm,
                    grant_tokens,
                    dry_run,
                })
            }
        }
        Op::DeriveSharedSecret => {
            let w: DeriveSharedSecretWire<'_> = parse(operation, body)?;
            unsupported_recipient(&w.recipient)?;
            let key_id = c.key_id(w.key_id);
            let algorithm = c.required_enumeration(
                "KeyAgreementAlgorithm",
                w.key_agreement_algorithm,
                enums::KEY_AGREEMENT_ALGORITHM,
            );
            let public_key = c.required_blob("PublicKey", w.public_key, limits::PUBLIC_KEY)?;
            let grant_tokens = c.grant_tokens(w.grant_tokens)?;
            c.finish()?;
            let (Some(key_id), Some(algorithm), Some(public_key)) = (key_id, algorithm, public_key)
            else {
                return Err(incomplete());
            };
            KmsRequest::DeriveSharedSecret(DeriveSharedSecretRequest {
                key_id,
                algorithm,
                public_key,
                grant_tokens,
                dry_run: w.dry_run.unwrap_or(false),
            })
        }
        Op::ListKeys
        | Op::ListAliases
        | Op::ListGrants
        | Op::GetKeyRotationStatus
        | Op::ListKeyRotations
        | Op::ListResourceTags => {
            let w: ListWire<'_> = parse(operation, body)?;
            let key_required = !matches!(operation, Op::ListKeys | Op::ListAliases);
            let key_id = if key_required {
                c.required("KeyId", w.key_id)
            } else {
                w.key_id
            };
            // ListKeys has no KeyId member: a stray one is ignored like any unknown member.
            let key_id = if operation == Op::ListKeys {
                None
            } else {
                c.string("KeyId", key_id, limits::KEY_ID)
            };
            let page = if operation == Op::GetKeyRotationStatus {
                Page::default()
            } else {
                page(&mut c, w.limit, w.marker)
            };
            if operation == Op::ListKeys {
                let owners = w.resource_owners.unwrap_or_default();
                if owners.len() > 2 {
                    c.violation(
                        None,
                        "ResourceOwners",
                        "Member must have length less than or equal to 2".to_owned(),
                    );
                }
                for (i, owner) in owners.into_iter().enumerate() {
                    let member = format!("ResourceOwners.{}.member", i + 1);
                    let _: Option<ResourceOwner> =
                        c.enumeration(&member, Some(Cow::Owned(owner)), enums::RESOURCE_OWNER);
                }
            }
            let grant_id = c.string("GrantId", w.grant_id, limits::GRANT_ID);
            let grantee_principal = c.string(
                "GranteePrincipal",
                w.grantee_principal,
                limits::PRINCIPAL_ID,
            );
            let include_all_material =
                w.include_key_material.as_deref() == Some("ALL_KEY_MATERIAL");
            if operation == Op::ListKeyRotations {
                let _: Option<IncludeKeyMaterial> = c.enumeration(
                    "IncludeKeyMaterial",
                    w.include_key_material,
                    enums::INCLUDE_KEY_MATERIAL,
                );
            }
            let service_principal = w.grantee_service_principal.is_some();
            c.finish()?;
            match operation {
                Op::ListKeys => KmsRequest::ListKeys(page),
                Op::ListAliases => KmsRequest::ListAliases(ListAliasesRequest { key_id, page }),
                _ => {
                    let Some(key_id) = key_id else {
                        return Err(incomplete());
                    };
                    match operation {
                        Op::ListGrants => {
                            if service_principal {
                                return Err(KmsError::UnsupportedOperation(
                                    "GranteeServicePrincipal: KubeKMS has no AWS service principals"
                                        .to_owned(),
                                )
                                .into());
                            }
                            KmsRequest::ListGrants(ListGrantsRequest {
                                key_id,
                                grant_id,
                                grantee_principal,
                                page,
                            })
                        }
                        Op::GetKeyRotationStatus => KmsRequest::GetKeyRotationStatus(key_id),
                        Op::ListKeyRotations => {
                            KmsRequest::ListKeyRotations(ListKeyRotationsRequest {
                                key_id,
                                include_all_material,
                                page,
                            })
                        }
                        _ => KmsRequest::ListResourceTags(KeyPageRequest { key_id, page }),
                    }
                }
            }
        }
    };
    Ok(request)
}

struct IncludeKeyMaterial;

impl FromStr for IncludeKeyMaterial {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        matches!(s, "ALL_KEY_MATERIAL" | "ROTATIONS_ONLY")
            .then_some(Self)
            .ok_or(())
    }
}

/// A required member was missing but no violation was recorded: cannot happen, reported
/// as a validation error rather than a panic.
fn incomplete() -> ApiError {
    ApiError::validation("1 validation error detected: a required member is missing")
}

trait DefaultAlgorithm {
    fn unwrap_or_default_algorithm(self) -> kms_core::EncryptionAlgorithm;
}

impl DefaultAlgorithm for Option<kms_core::EncryptionAlgorithm> {
    fn unwrap_or_default_algorithm(self) -> kms_core::EncryptionAlgorithm {
        self.unwrap_or(kms_core::EncryptionAlgorithm::SymmetricDefault)
    }
}

#[cfg(test)]
mod tests;
