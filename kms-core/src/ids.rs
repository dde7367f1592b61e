//! Key ids, ARNs, alias names, and the resolution of the four ways a request names a key.

use std::fmt;

use crate::error::{KmsError, KmsResult};

/// Prefix of multi-cluster (AWS: multi-Region) key ids.
const MRK_PREFIX: &str = "mrk-";
/// Prefix every alias name carries.
pub const ALIAS_PREFIX: &str = "alias/";
/// Prefix reserved for AWS managed keys; customers may not create aliases under it.
pub const RESERVED_ALIAS_PREFIX: &str = "alias/aws/";
/// AWS's maximum alias name length, prefix included.
pub const MAX_ALIAS_NAME_LEN: usize = 256;
/// AWS's maximum length of a `KeyId` parameter.
pub const MAX_KEY_IDENTIFIER_LEN: usize = 2048;
/// Digits of an account id (AWS account ids are 12 decimal digits; SDKs and tools such as
/// SOPS and the Encryption SDK check that shape in ARNs).
pub const ACCOUNT_ID_LEN: usize = 12;
/// The ARN partition of every installation unless configured otherwise: real clients
/// parse ARNs and some accept only AWS's own partitions.
pub const DEFAULT_PARTITION: &str = "aws";
/// The ARN region of every installation unless configured otherwise (the operator and
/// kubekms-server share it; SigV4 requests are scoped to it).
pub const DEFAULT_REGION: &str = "local";
/// What the derived account id hashes in front of the namespace name.
const ACCOUNT_ID_LABEL: &[u8] = b"kubekms/account-id/v1\0";

/// The account id KubeKMS derives for a namespace that does not set one: the first 8 bytes
/// of SHA-256(`"kubekms/account-id/v1\0"` ‖ namespace name) as a big-endian integer,
/// modulo 10^12, as 12 decimal digits with leading zeros. Deterministic (every replica and
/// the operator agree without talking), stable for the life of the name, and spread
/// evenly: two namespaces collide with probability about n²/2·10^-12.
#[must_use]
pub fn derive_account_id(namespace: &str) -> String {
    let mut context = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    context.update(ACCOUNT_ID_LABEL);
    context.update(namespace.as_bytes());
    let hash = context.finish();
    let mut first = [0u8; 8];
    first.copy_from_slice(&hash.as_ref()[..8]);
    format!("{:012}", u64::from_be_bytes(first) % 1_000_000_000_000)
}

/// Whether `text` has the shape of an account id: exactly 12 ASCII digits.
#[must_use]
pub fn is_account_id(text: &str) -> bool {
    text.len() == ACCOUNT_ID_LEN && text.bytes().all(|b| b.is_ascii_digit())
}

/// The identifier of a key: a UUID, or `mrk-` and 32 hex digits for a multi-cluster key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum KeyId {
    /// A single-cluster key (`1234abcd-12ab-34cd-56ef-1234567890ab`).
    Single(uuid::Uuid),
    /// A multi-cluster key (`mrk-1234abcd12ab34cd56ef1234567890ab`).
    MultiCluster([u8; 16]),
}

impl KeyId {
    /// A fresh random single-cluster key id. Randomness is a parameter so the core stays
    /// deterministic under test: pass 16 bytes from a CSPRNG.
    #[must_use]
    pub fn single_from_random(random: [u8; 16]) -> Self {
        Self::Single(uuid::Builder::from_random_bytes(random).into_uuid())
    }

    /// A fresh random multi-cluster key id.
    #[must_use]
    pub fn multi_cluster_from_random(random: [u8; 16]) -> Self {
        Self::MultiCluster(random)
    }

    /// A new random single-cluster key id from the system CSPRNG.
    ///
    /// # Errors
    /// `KMSInternalException` when the RNG fails.
    pub fn generate() -> KmsResult<Self> {
        let mut random = [0u8; 16];
        crate::primitives::fill_random(&mut random)?;
        Ok(Self::single_from_random(random))
    }

    /// Parses the exact textual forms AWS uses (lowercase, hyphenated UUID or `mrk-` + 32
    /// lowercase hex digits).
    ///
    /// # Errors
    /// `NotFoundException` (AWS's answer to a malformed key id).
    pub fn parse(text: &str) -> KmsResult<Self> {
        let invalid = || KmsError::NotFound(format!("Invalid keyId {}", printable(text)));
        if let Some(hex) = text.strip_prefix(MRK_PREFIX) {
            if hex.len() != 32
                || !hex
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
            {
                return Err(invalid());
            }
            let mut bytes = [0u8; 16];
            for (i, chunk) in hex.as_bytes().chunks_exact(2).enumerate() {
                bytes[i] = (hex_value(chunk[0]) << 4) | hex_value(chunk[1]);
            }
            return Ok(Self::MultiCluster(bytes));
        }
        if text.len() != 36 {
            return Err(invalid());
        }
        let parsed = uuid::Uuid::try_parse(text).map_err(|_| invalid())?;
        if parsed.hyphenated().to_string() != text {
            return Err(invalid());
        }
        Ok(Self::Single(parsed))
    }

    /// Whether this is a multi-cluster key id.
    #[must_use]
    pub fn is_multi_cluster(&self) -> bool {
        matches!(self, Self::MultiCluster(_))
    }

    /// The 17-byte binary form used in ciphertext blobs: a kind byte, then 16 bytes.
    #[must_use]
    pub fn to_wire(&self) -> [u8; 17] {
        let mut out = [0u8; 17];
        match self {
            Self::Single(id) => {
                out[0] = 1;
                out[1..].copy_from_slice(id.as_bytes());
            }
            Self::MultiCluster(bytes) => {
                out[0] = 2;
                out[1..].copy_from_slice(bytes);
            }
        }
        out
    }

    /// Inverse of [`KeyId::to_wire`].
    #[must_use]
    pub fn from_wire(wire: &[u8; 17]) -> Option<Self> {
        let mut bytes = [0u8; 16];
        bytes.copy_from_slice(&wire[1..]);
        match wire[0] {
            1 => Some(Self::Single(uuid::Uuid::from_bytes(bytes))),
            2 => Some(Self::MultiCluster(bytes)),
            _ => None,
        }
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Single(id) => write!(f, "{}", id.hyphenated()),
            Self::MultiCluster(bytes) => {
                f.write_str(MRK_PREFIX)?;
                for b in bytes {
                    write!(f, "{b:02x}")?;
                }
                Ok(())
            }
        }
    }
}

fn hex_value(digit: u8) -> u8 {
    match digit {
        b'0'..=b'9' => digit - b'0',
        _ => digit - b'a' + 10,
    }
}

/// Quotes user input for an error message, cut short so a huge input cannot bloat logs.
fn printable(text: &str) -> String {
    let cut: String = text.chars().take(80).collect();
    format!("{cut:?}")
}

/// An alias name: `alias/` followed by letters, digits, `/`, `_` and `-`, 256 characters at most.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AliasName(String);

impl AliasName {
    /// Parses an alias name as a reference (the `alias/aws/` prefix is accepted: such
    /// aliases can be named even though they cannot be created).
    ///
    /// # Errors
    /// `InvalidAliasNameException` when the name breaks AWS's pattern or length.
    pub fn parse(text: &str) -> KmsResult<Self> {
        let invalid = |why: &str| {
            KmsError::InvalidAliasName(format!("Alias name {} is invalid: {why}", printable(text)))
        };
        let Some(rest) = text.strip_prefix(ALIAS_PREFIX) else {
            return Err(invalid("it must begin with alias/"));
        };
        if text.len() > MAX_ALIAS_NAME_LEN {
            return Err(invalid("it is longer than 256 characters"));
        }
        if rest.is_empty() {
            return Err(invalid("the name after alias/ is empty"));
        }
        if !rest
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'/' | b'_' | b'-'))
        {
            return Err(invalid(
                "it may contain only letters, digits, '/', '_' and '-'",
            ));
        }
        Ok(Self(text.to_owned()))
    }

    /// Parses a name for CreateAlias/UpdateAlias: as [`AliasName::parse`], and the
    /// `alias/aws/` prefix is refused.
    ///
    /// # Errors
    /// `InvalidAliasNameException`.
    pub fn parse_for_create(text: &str) -> KmsResult<Self> {
        let name = Self::parse(text)?;
        if name.is_reserved() {
            return Err(KmsError::InvalidAliasName(format!(
                "Alias name {} is invalid: the alias/aws/ prefix is reserved",
                printable(text)
            )));
        }
        Ok(name)
    }

    /// Whether the alias is in the reserved `alias/aws/` namespace.
    #[must_use]
    pub fn is_reserved(&self) -> bool {
        self.0.starts_with(RESERVED_ALIAS_PREFIX)
    }

    /// The full name, `alias/` included.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for AliasName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Where an ARN points.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ArnResource {
    /// `key/<key id>`.
    Key(KeyId),
    /// `alias/<name>`.
    Alias(AliasName),
}

/// An ARN of a key or alias: `arn:<partition>:kms:<region>:<account>:key/<id>` or
/// `...:alias/<name>`. In KubeKMS the account is the 12-digit account id of the key's
/// namespace and the region names the cluster.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Arn {
    /// The partition (`aws` on AWS; configurable here).
    pub partition: String,
    /// The region (the cluster's name here).
    pub region: String,
    /// The 12-digit account id (of the key's namespace here).
    pub account: String,
    /// The key or alias.
    pub resource: ArnResource,
}

impl Arn {
    /// The ARN of a key.
    #[must_use]
    pub fn for_key(scope: &ArnScope, account: &str, key_id: KeyId) -> Self {
        Self {
            partition: scope.partition.clone(),
            region: scope.region.clone(),
            account: account.to_owned(),
            resource: ArnResource::Key(key_id),
        }
    }

    /// The ARN of an alias.
    #[must_use]
    pub fn for_alias(scope: &ArnScope, account: &str, alias: AliasName) -> Self {
        Self {
            partition: scope.partition.clone(),
            region: scope.region.clone(),
            account: account.to_owned(),
            resource: ArnResource::Alias(alias),
        }
    }

    /// Parses a KMS key or alias ARN.
    ///
    /// # Errors
    /// `InvalidArnException` when the text is not a KMS ARN of a key or alias.
    pub fn parse(text: &str) -> KmsResult<Self> {
        let invalid =
            |why: &str| KmsError::InvalidArn(format!("ARN {} is invalid: {why}", printable(text)));
        let mut parts = text.splitn(6, ':');
        let (
            Some("arn"),
            Some(partition),
            Some(service),
            Some(region),
            Some(account),
            Some(resource),
        ) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        )
        else {
            return Err(invalid(
                "expected arn:<partition>:kms:<region>:<account>:<resource>",
            ));
        };
        if service != "kms" {
            return Err(invalid("the service is not kms"));
        }
        let field_ok = |field: &str| {
            !field.is_empty()
                && field
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.'))
        };
        if !field_ok(partition) || !field_ok(region) {
            return Err(invalid("partition and region must be non-empty names"));
        }
        if !is_account_id(account) {
            return Err(invalid("the account must be 12 digits"));
        }
        let resource = if let Some(id) = resource.strip_prefix("key/") {
            ArnResource::Key(KeyId::parse(id).map_err(|_| invalid("the key id is malformed"))?)
        } else if resource.starts_with(ALIAS_PREFIX) {
            ArnResource::Alias(
                AliasName::parse(resource).map_err(|_| invalid("the alias name is malformed"))?,
            )
        } else {
            return Err(invalid("the resource is neither key/<id> nor alias/<name>"));
        };
        Ok(Self {
            partition: partition.to_owned(),
            region: region.to_owned(),
            account: account.to_owned(),
            resource,
        })
    }
}

impl fmt::Display for Arn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "arn:{}:kms:{}:{}:",
            self.partition, self.region, self.account
        )?;
        match &self.resource {
            ArnResource::Key(id) => write!(f, "key/{id}"),
            ArnResource::Alias(alias) => write!(f, "{alias}"),
        }
    }
}

/// The partition and region that every ARN of one KubeKMS installation carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArnScope {
    /// ARN partition.
    pub partition: String,
    /// ARN region: the name of the cluster.
    pub region: String,
}

impl Default for ArnScope {
    /// [`DEFAULT_PARTITION`] and [`DEFAULT_REGION`].
    fn default() -> Self {
        Self {
            partition: DEFAULT_PARTITION.to_owned(),
            region: DEFAULT_REGION.to_owned(),
        }
    }
}

impl ArnScope {
    /// Whether an ARN carries this partition and region.
    #[must_use]
    pub fn contains(&self, arn: &Arn) -> bool {
        arn.partition == self.partition && arn.region == self.region
    }
}

/// What a key identifier names once its ARN (if any) is taken apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyTarget<'a> {
    /// A key id.
    KeyId(KeyId),
    /// An alias name.
    Alias(&'a AliasName),
}

/// The four ways a request can name a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyIdentifier {
    /// A bare key id.
    KeyId(KeyId),
    /// A key ARN.
    KeyArn(Arn),
    /// An alias name.
    AliasName(AliasName),
    /// An alias ARN.
    AliasArn(Arn),
}

impl KeyIdentifier {
    /// Parses a `KeyId` request parameter.
    ///
    /// # Errors
    /// `ValidationException` for an empty or over-long value, `NotFoundException` for a
    /// malformed key id, `InvalidArnException` for a malformed ARN,
    /// `InvalidAliasNameException` for a malformed alias.
    pub fn parse(text: &str) -> KmsResult<Self> {
        if text.is_empty() || text.len() > MAX_KEY_IDENTIFIER_LEN {
            return Err(KmsError::validation(
                "KeyId must be between 1 and 2048 characters long",
            ));
        }
        if text.starts_with("arn:") {
            let arn = Arn::parse(text)?;
            return Ok(match arn.resource {
                ArnResource::Key(_) => Self::KeyArn(arn),
                ArnResource::Alias(_) => Self::AliasArn(arn),
            });
        }
        if text.starts_with(ALIAS_PREFIX) {
            return Ok(Self::AliasName(AliasName::parse(text)?));
        }
        Ok(Self::KeyId(KeyId::parse(text)?))
    }

    /// Whether the identifier names an alias (some operations, such as ScheduleKeyDeletion,
    /// accept only key ids and key ARNs).
    #[must_use]
    pub fn is_alias(&self) -> bool {
        matches!(self, Self::AliasName(_) | Self::AliasArn(_))
    }

    /// The account an identifier names (`None` for a bare key id or alias name: the
    /// caller's account) and what it names there. An ARN of another partition or region
    /// names nothing in this installation.
    ///
    /// # Errors
    /// `NotFoundException` for an ARN outside `scope`.
    pub fn target(&self, scope: &ArnScope) -> KmsResult<(Option<&str>, KeyTarget<'_>)> {
        match self {
            Self::KeyId(id) => Ok((None, KeyTarget::KeyId(*id))),
            Self::AliasName(alias) => Ok((None, KeyTarget::Alias(alias))),
            Self::KeyArn(arn) | Self::AliasArn(arn) => {
                if !scope.contains(arn) {
                    return Err(KmsError::NotFound(format!(
                        "{arn} is not found in this partition and region"
                    )));
                }
                let target = match &arn.resource {
                    ArnResource::Key(id) => KeyTarget::KeyId(*id),
                    ArnResource::Alias(alias) => KeyTarget::Alias(alias),
                };
                Ok((Some(arn.account.as_str()), target))
            }
        }
    }

    /// Resolves the identifier to a key id within one account (namespace).
    ///
    /// `lookup_alias` maps an alias name of `account` to its target key id. ARNs of another
    /// partition, region or account resolve to nothing, as AWS does for a key that the caller's
    /// account does not hold.
    ///
    /// # Errors
    /// `NotFoundException` when the alias does not exist or the ARN is of another scope.
    pub fn resolve(
        &self,
        scope: &ArnScope,
        account: &str,
        lookup_alias: impl FnOnce(&AliasName) -> Option<KeyId>,
    ) -> KmsResult<KeyId> {
        let alias = match self {
            Self::KeyId(id) => return Ok(*id),
            Self::KeyArn(arn) | Self::AliasArn(arn) => {
                let in_scope = arn.partition == scope.partition
                    && arn.region == scope.region
                    && arn.account == account;
                if !in_scope {
                    return Err(KmsError::NotFound(format!(
                        "{arn} is not found in this cluster and namespace"
                    )));
                }
                match &arn.resource {
                    ArnResource::Key(id) => return Ok(*id),
                    ArnResource::Alias(alias) => alias,
                }
            }
            Self::AliasName(alias) => alias,
        };
        lookup_alias(alias).ok_or_else(|| KmsError::NotFound(format!("Alias {alias} is not found")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const UUID: &str = "1234abcd-12ab-34cd-56ef-1234567890ab";
    const ACCOUNT: &str = "123456789012";

    #[test]
    fn derived_account_ids_are_twelve_digits_stable_and_spread() {
        let a = derive_account_id("team-a");
        assert!(is_account_id(&a), "{a}");
        assert_eq!(a, derive_account_id("team-a"));
        assert_ne!(a, derive_account_id("team-b"));
        // Pinned: the operator writes it into status and clients keep ARNs; a change of
        // the derivation would change every ARN of every installation.
        assert_eq!(derive_account_id("kubekms-demo"), "257274334697");
        let ids: std::collections::BTreeSet<String> = (0..2000)
            .map(|i| derive_account_id(&format!("ns-{i}")))
            .collect();
        assert_eq!(ids.len(), 2000);
        assert!(ids.iter().all(|id| is_account_id(id)));
        // Leading zeros are kept: the shape is the point.
        assert!(ids.iter().any(|id| id.starts_with('0')));
    }

    #[test]
    fn account_id_shape() {
        assert!(is_account_id("000000000000"));
        assert!(is_account_id("123456789012"));
        for bad in [
            "",
            "12345678901",
            "1234567890123",
            "12345678901a",
            "-12345678901",
            "１23456789012",
        ] {
            assert!(!is_account_id(bad), "{bad}");
        }
    }

    #[test]
    fn targets_split_account_and_name() {
        let scope = ArnScope::default();
        let id = KeyId::parse(UUID).expect("uuid");
        let arn =
            KeyIdentifier::parse(&format!("arn:aws:kms:local:{ACCOUNT}:key/{UUID}")).expect("arn");
        assert_eq!(
            arn.target(&scope),
            Ok((Some(ACCOUNT), KeyTarget::KeyId(id)))
        );
        let bare = KeyIdentifier::parse(UUID).expect("id");
        assert_eq!(bare.target(&scope), Ok((None, KeyTarget::KeyId(id))));
        let alias = AliasName::parse("alias/app").expect("alias");
        let alias_arn = KeyIdentifier::parse(&format!("arn:aws:kms:local:{ACCOUNT}:alias/app"))
            .expect("alias arn");
        assert_eq!(
            alias_arn.target(&scope),
            Ok((Some(ACCOUNT), KeyTarget::Alias(&alias)))
        );
        for elsewhere in [
            format!("arn:aws:kms:us-east-1:{ACCOUNT}:key/{UUID}"),
            format!("arn:aws-cn:kms:local:{ACCOUNT}:key/{UUID}"),
        ] {
            let parsed = KeyIdentifier::parse(&elsewhere).expect("arn");
            assert_eq!(
                parsed.target(&scope).map_err(|e| e.aws_exception_name()),
                Err("NotFoundException"),
                "{elsewhere}"
            );
        }
    }

    #[test]
    fn key_ids_round_trip_exact_text() {
        let id = KeyId::parse(UUID).expect("uuid");
        assert_eq!(id.to_string(), UUID);
        let mrk = "mrk-1234abcd12ab34cd56ef1234567890ab";
        let id = KeyId::parse(mrk).expect("mrk");
        assert!(id.is_multi_cluster());
        assert_eq!(id.to_string(), mrk);
        assert_eq!(KeyId::from_wire(&id.to_wire()), Some(id));
    }

    #[test]
    fn malformed_key_ids_are_not_found() {
        for bad in [
            "",
            "1234ABCD-12AB-34CD-56EF-1234567890AB",
            "1234abcd12ab34cd56ef1234567890ab",
            "mrk-1234",
            "mrk-1234abcd12ab34cd56ef1234567890aG",
            "{1234abcd-12ab-34cd-56ef-1234567890ab}",
        ] {
            let err = KeyId::parse(bad).expect_err(bad);
            assert_eq!(err.aws_exception_name(), "NotFoundException", "{bad}");
        }
    }

    #[test]
    fn alias_rules() {
        assert!(AliasName::parse("alias/my-app/key_1").is_ok());
        let long_ok = format!("alias/{}", "a".repeat(250));
        assert!(AliasName::parse(&long_ok).is_ok());
        for bad in [
            "my-key",
            "alias/",
            "alias/has space",
            "alias/ünïcode",
            &format!("alias/{}", "a".repeat(251)),
        ] {
            let err = AliasName::parse(bad).expect_err(bad);
            assert_eq!(
                err.aws_exception_name(),
                "InvalidAliasNameException",
                "{bad}"
            );
        }
        assert!(AliasName::parse("alias/aws/ebs").is_ok());
        let err = AliasName::parse_for_create("alias/aws/ebs").expect_err("reserved");
        assert_eq!(err.aws_exception_name(), "InvalidAliasNameException");
    }

    #[test]
    fn arns_build_and_parse() {
        let scope = ArnScope::default();
        let id = KeyId::parse(UUID).expect("uuid");
        let arn = Arn::for_key(&scope, "123456789012", id);
        let text = arn.to_string();
        assert_eq!(text, format!("arn:aws:kms:local:123456789012:key/{UUID}"));
        assert_eq!(Arn::parse(&text), Ok(arn));
        let alias =
            Arn::parse("arn:aws:kms:us-east-1:111122223333:alias/ExampleAlias").expect("alias arn");
        assert_eq!(
            alias.resource,
            ArnResource::Alias(AliasName::parse("alias/ExampleAlias").expect("alias"))
        );
        for bad in [
            "arn:aws:s3:us-east-1:111122223333:key/x",
            "arn:aws:kms:us-east-1:111122223333:key/not-a-uuid",
            "arn:aws:kms:us-east-1::key/1234abcd-12ab-34cd-56ef-1234567890ab",
            "arn:aws:kms:us-east-1:team-a:key/1234abcd-12ab-34cd-56ef-1234567890ab",
            "arn:aws:kms:us-east-1:11112222333:key/1234abcd-12ab-34cd-56ef-1234567890ab",
            "arn:aws:kms:us-east-1:1111222233334:key/1234abcd-12ab-34cd-56ef-1234567890ab",
            "arn:aws:kms:us-east-1:11112222333x:key/1234abcd-12ab-34cd-56ef-1234567890ab",
            "arn:aws:kms:us-east-1:+11122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab",
            "arn:aws:kms:us-east-1:111122223333:grant/abc",
            "arn:aws:kms",
        ] {
            let err = Arn::parse(bad).expect_err(bad);
            assert_eq!(err.aws_exception_name(), "InvalidArnException", "{bad}");
        }
    }

    #[test]
    fn resolution_of_all_four_forms() {
        let scope = ArnScope::default();
        let id = KeyId::parse(UUID).expect("uuid");
        let alias = AliasName::parse("alias/app").expect("alias");
        let lookup = |name: &AliasName| (name.as_str() == "alias/app").then_some(id);
        let forms = [
            UUID.to_owned(),
            Arn::for_key(&scope, ACCOUNT, id).to_string(),
            "alias/app".to_owned(),
            Arn::for_alias(&scope, ACCOUNT, alias).to_string(),
        ];
        for form in &forms {
            let parsed = KeyIdentifier::parse(form).expect(form);
            assert_eq!(parsed.resolve(&scope, ACCOUNT, lookup), Ok(id), "{form}");
        }
        let other_account = KeyIdentifier::parse(&forms[1]).expect("arn");
        let err = other_account
            .resolve(&scope, "210987654321", lookup)
            .expect_err("other account");
        assert_eq!(err.aws_exception_name(), "NotFoundException");
        let missing = KeyIdentifier::parse("alias/missing").expect("alias");
        assert_eq!(
            missing
                .resolve(&scope, ACCOUNT, lookup)
                .map_err(|e| e.aws_exception_name()),
            Err("NotFoundException")
        );
        let err = KeyIdentifier::parse(&"x".repeat(2049)).expect_err("too long");
        assert_eq!(err.aws_exception_name(), "ValidationException");
    }
}
