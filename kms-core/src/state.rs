//! Key states, the operations that use a key, and which operation each state allows, with
//! AWS's exception otherwise.

use crate::error::{KmsError, KmsResult};
use crate::ids::KeyId;

macro_rules! named_enum {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident,)+ }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum $name {
            $($(#[$vmeta])* $variant,)+
        }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant,)+];

            /// The AWS name.
            #[must_use]
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => stringify!($variant),)+
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl std::str::FromStr for $name {
            type Err = KmsError;

            fn from_str(text: &str) -> KmsResult<Self> {
                Self::ALL
                    .iter()
                    .copied()
                    .find(|v| v.as_str() == text)
                    .ok_or_else(|| KmsError::Validation(format!("{text:?} is not a valid {}", stringify!($name))))
            }
        }
    };
}

named_enum!(
    /// The state of a key (AWS `KeyState`).
    KeyState {
        /// Being created; only DescribeKey works.
        Creating,
        /// Usable.
        Enabled,
        /// Not usable in cryptographic operations until enabled.
        Disabled,
        /// Scheduled for deletion; cancel to use it again.
        PendingDeletion,
        /// EXTERNAL origin without material yet.
        PendingImport,
        /// Its key store is disconnected.
        Unavailable,
    }
);

named_enum!(
    /// Every API operation that acts on an existing key.
    Operation {
        /// Encrypt.
        Encrypt,
        /// Decrypt.
        Decrypt,
        /// ReEncrypt, source side.
        ReEncryptFrom,
        /// ReEncrypt, destination side.
        ReEncryptTo,
        /// GenerateDataKey.
        GenerateDataKey,
        /// GenerateDataKeyWithoutPlaintext.
        GenerateDataKeyWithoutPlaintext,
        /// GenerateDataKeyPair.
        GenerateDataKeyPair,
        /// GenerateDataKeyPairWithoutPlaintext.
        GenerateDataKeyPairWithoutPlaintext,
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
        /// GetPublicKey.
        GetPublicKey,
        /// DescribeKey.
        DescribeKey,
        /// EnableKey.
        EnableKey,
        /// DisableKey.
        DisableKey,
        /// ScheduleKeyDeletion.
        ScheduleKeyDeletion,
        /// CancelKeyDeletion.
        CancelKeyDeletion,
        /// EnableKeyRotation.
        EnableKeyRotation,
        /// DisableKeyRotation.
        DisableKeyRotation,
        /// GetKeyRotationStatus.
        GetKeyRotationStatus,
        /// RotateKeyOnDemand.
        RotateKeyOnDemand,
        /// ListKeyRotations.
        ListKeyRotations,
        /// ImportKeyMaterial.
        ImportKeyMaterial,
        /// GetParametersForImport.
        GetParametersForImport,
        /// CreateAlias / UpdateAlias (target side).
        CreateAlias,
        /// CreateGrant.
        CreateGrant,
        /// RetireGrant / RevokeGrant / ListGrants.
        ManageGrants,
        /// TagResource / UntagResource / UpdateKeyDescription.
        UpdateKeyAttributes,
    }
);

impl Operation {
    /// Whether the operation performs cryptography with the key's material.
    #[must_use]
    pub fn is_cryptographic(self) -> bool {
        use Operation::*;
        matches!(
            self,
            Encrypt
                | Decrypt
                | ReEncryptFrom
                | ReEncryptTo
                | GenerateDataKey
                | GenerateDataKeyWithoutPlaintext
                | GenerateDataKeyPair
                | GenerateDataKeyPairWithoutPlaintext
                | Sign
                | Verify
                | GenerateMac
                | VerifyMac
                | DeriveSharedSecret
                | GetPublicKey
        )
    }
}

/// Whether `operation` may run on a key in `state`, with AWS's exception when it may not.
///
/// The table follows AWS's "Key states of AWS KMS keys": cryptographic operations need
/// Enabled (Disabled gives DisabledException, other states KMSInvalidStateException);
/// DescribeKey and grant and tag management work in every state but Creating; deletion can
/// be scheduled from any settled state but PendingDeletion and cancelled only from it.
///
/// # Errors
/// `DisabledException` or `KMSInvalidStateException`.
pub fn check(key_id: &KeyId, state: KeyState, operation: Operation) -> KmsResult<()> {
    use KeyState as S;
    use Operation as O;
    let invalid = || {
        Err(KmsError::InvalidState(format!(
            "{key_id} is {state}: {operation} is not allowed in that state"
        )))
    };
    let disabled = || Err(KmsError::Disabled(format!("{key_id} is disabled")));
    if state == S::Creating {
        return if operation == O::DescribeKey {
            Ok(())
        } else {
            invalid()
        };
    }
    if operation.is_cryptographic() {
        return match state {
            S::Enabled => Ok(()),
            S::Disabled => disabled(),
            _ => invalid(),
        };
    }
    match operation {
        O::DescribeKey
        | O::ManageGrants
        | O::UpdateKeyAttributes
        | O::ListKeyRotations
        | O::GetKeyRotationStatus => Ok(()),
        O::EnableKey | O::DisableKey => match state {
            S::Enabled | S::Disabled => Ok(()),
            _ => invalid(),
        },
        O::ScheduleKeyDeletion => match state {
            S::PendingDeletion => invalid(),
            _ => Ok(()),
        },
        O::CancelKeyDeletion => match state {
            S::PendingDeletion => Ok(()),
            _ => invalid(),
        },
        O::EnableKeyRotation | O::DisableKeyRotation | O::RotateKeyOnDemand => match state {
            S::Enabled => Ok(()),
            S::Disabled => disabled(),
            _ => invalid(),
        },
        O::ImportKeyMaterial | O::GetParametersForImport => match state {
            S::PendingImport | S::Enabled | S::Disabled => Ok(()),
            _ => invalid(),
        },
        O::CreateAlias | O::CreateGrant => match state {
            S::Enabled | S::Disabled | S::PendingImport | S::Unavailable => Ok(()),
            _ => invalid(),
        },
        _ => invalid(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(state: KeyState, op: Operation) -> &'static str {
        let id = KeyId::single_from_random([1; 16]);
        match check(&id, state, op) {
            Ok(()) => "ok",
            Err(e) => e.aws_exception_name(),
        }
    }

    #[test]
    fn cryptographic_operations_need_enabled() {
        for op in Operation::ALL
            .iter()
            .copied()
            .filter(|o| o.is_cryptographic())
        {
            assert_eq!(name(KeyState::Enabled, op), "ok", "{op}");
            assert_eq!(name(KeyState::Disabled, op), "DisabledException", "{op}");
            for state in [
                KeyState::PendingDeletion,
                KeyState::PendingImport,
                KeyState::Unavailable,
                KeyState::Creating,
            ] {
                assert_eq!(
                    name(state, op),
                    "KMSInvalidStateException",
                    "{op} in {state}"
                );
            }
        }
    }

    #[test]
    fn lifecycle_operations() {
        use KeyState::*;
        use Operation::*;
        assert_eq!(name(Creating, DescribeKey), "ok");
        assert_eq!(name(PendingDeletion, DescribeKey), "ok");
        assert_eq!(name(PendingDeletion, EnableKey), "KMSInvalidStateException");
        assert_eq!(name(PendingImport, DisableKey), "KMSInvalidStateException");
        assert_eq!(
            name(PendingDeletion, ScheduleKeyDeletion),
            "KMSInvalidStateException"
        );
        assert_eq!(name(PendingImport, ScheduleKeyDeletion), "ok");
        assert_eq!(name(Disabled, ScheduleKeyDeletion), "ok");
        assert_eq!(name(Enabled, CancelKeyDeletion), "KMSInvalidStateException");
        assert_eq!(name(PendingDeletion, CancelKeyDeletion), "ok");
        assert_eq!(name(Disabled, RotateKeyOnDemand), "DisabledException");
        assert_eq!(name(PendingImport, ImportKeyMaterial), "ok");
        assert_eq!(
            name(PendingDeletion, ImportKeyMaterial),
            "KMSInvalidStateException"
        );
        assert_eq!(
            name(PendingDeletion, CreateGrant),
            "KMSInvalidStateException"
        );
        assert_eq!(name(PendingDeletion, ManageGrants), "ok");
    }

    #[test]
    fn state_names_parse() {
        for state in KeyState::ALL {
            assert_eq!(state.as_str().parse::<KeyState>(), Ok(*state));
        }
        assert!("enabled".parse::<KeyState>().is_err());
    }
}
