//! The operations of the `TrentService` JSON 1.1 API this server answers, by their
//! `X-Amz-Target` names. Management operations (CreateKey, aliases, grants, policies,
//! import) are added here as variants when they are served; the compiler then points at
//! every match that must learn them (decode, authorization action, execution).

/// The `X-Amz-Target` prefix of AWS KMS.
pub const TARGET_PREFIX: &str = "TrentService.";

macro_rules! operations {
    ($($(#[$meta:meta])* $variant:ident,)+) => {
        /// An operation of the KMS API, named as in `X-Amz-Target: TrentService.<name>`.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum ApiOperation {
            $($(#[$meta])* $variant,)+
        }

        impl ApiOperation {
            /// Every operation served, in declaration order.
            pub const ALL: &'static [ApiOperation] = &[$(ApiOperation::$variant,)+];

            /// The AWS name (`Encrypt`, `GenerateDataKey`, ...).
            #[must_use]
            pub fn as_str(self) -> &'static str {
                match self {
                    $(ApiOperation::$variant => stringify!($variant),)+
                }
            }

            /// The operation of an AWS name, exactly (case-sensitive, as AWS).
            #[must_use]
            pub fn from_name(name: &str) -> Option<Self> {
                match name {
                    $(stringify!($variant) => Some(ApiOperation::$variant),)+
                    _ => None,
                }
            }
        }
    };
}

operations! {
    /// Encrypt.
    Encrypt,
    /// Decrypt.
    Decrypt,
    /// ReEncrypt.
    ReEncrypt,
    /// GenerateDataKey.
    GenerateDataKey,
    /// GenerateDataKeyWithoutPlaintext.
    GenerateDataKeyWithoutPlaintext,
    /// GenerateDataKeyPair.
    GenerateDataKeyPair,
    /// GenerateDataKeyPairWithoutPlaintext.
    GenerateDataKeyPairWithoutPlaintext,
    /// GenerateRandom.
    GenerateRandom,
    /// GetPublicKey.
    GetPublicKey,
    /// Sign.
    Sign,
    /// Verify.
    Verify,
    /// GenerateMac.
    GenerateMac,
    /// VerifyMac.
    VerifyMac,
    /// DeriveSharedSecret.
    DeriveSharedSecret,
    /// DescribeKey.
    DescribeKey,
    /// ListKeys.
    ListKeys,
    /// ListAliases.
    ListAliases,
    /// ListGrants.
    ListGrants,
    /// GetKeyRotationStatus.
    GetKeyRotationStatus,
    /// ListKeyRotations.
    ListKeyRotations,
    /// ListResourceTags.
    ListResourceTags,
}

impl ApiOperation {
    /// The operation an `X-Amz-Target` header names, or `None` for anything else
    /// (another service's prefix, an operation not served, or no dot at all).
    #[must_use]
    pub fn from_target(target: &str) -> Option<Self> {
        Self::from_name(target.strip_prefix(TARGET_PREFIX)?)
    }
}

impl std::fmt::Display for ApiOperation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_round_trip_and_foreign_targets_are_unknown() {
        for op in ApiOperation::ALL {
            assert_eq!(
                ApiOperation::from_target(&format!("TrentService.{op}")),
                Some(*op)
            );
        }
        assert_eq!(ApiOperation::ALL.len(), 21);
        for bad in [
            "",
            "Encrypt",
            "TrentService.",
            "TrentService.encrypt",
            "TrentService.CreateKey",
            "DynamoDB_20120810.Encrypt",
            "trentservice.Encrypt",
        ] {
            assert_eq!(ApiOperation::from_target(bad), None, "{bad:?}");
        }
    }
}
