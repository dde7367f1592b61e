//! Key states, the operations that use a key, and which operation each state allows, with
//! AWS's exception otherwise.

use crate::error::{KmsError, KmsResult};
use crate::ids::KeyId;
use crate::names::aws_names;

aws_names!(
    /// The state of a key (AWS `KeyState`).
    KeyState {
        /// Being created; only DescribeKey works.
        Creating => "Creating",
        /// Usable.
        Enabled => "Enabled",
        /// Not usable in cryptographic operations until enabled.
        Disabled => "Disabled",
        /// Scheduled for deletion; cancel to use it again.
        PendingDeletion => "PendingDeletion",
        /// EXTERNAL origin without material yet.
        PendingImport => "PendingImport",
        /// Its key store is disconnected.
        Unavailable => "Unavailable",
    }
);

aws_names!(
    /// Every API operation that acts on an existing key.
    Operation {
        /// Encrypt.
        Encrypt => "Encrypt",
        /// Decrypt.
        Decrypt => "Decrypt",
        /// ReEncrypt, source side.
        ReEncryptFrom => "ReEncryptFrom",
        /// ReEncrypt, destination side.
        ReEncryptTo => "ReEncryptTo",
        /// GenerateDataKey.
        GenerateDataKey => "GenerateDataKey",
        /// GenerateDataKeyWithoutPlaintext.
        GenerateDataKeyWithoutPlaintext => "GenerateDataKeyWithoutPlaintext",
        /// GenerateDataKeyPair.
        GenerateDataKeyPair => "GenerateDataKeyPair",
        /// GenerateDataKeyPairWithoutPlaintext.
        GenerateDataKeyPairWithoutPlaintext => "GenerateDataKeyPairWithoutPlaintext",
        /// Sign.
        Sign => "Sign",
        /// Verify.
        Verify => "Verify",
        /// GenerateMac.
        GenerateMac => "GenerateMac",
        /// VerifyMac.
        VerifyMac => "VerifyMac",
        /// DeriveSharedSecret.
        DeriveSharedSecret => "DeriveSharedSecret",
        /// GetPublicKey.
        GetPublicKey => "GetPublicKey",
        /// DescribeKey.
        DescribeKey => "DescribeKey",
        /// EnableKey.
        EnableKey => "EnableKey",
        /// DisableKey.
        DisableKey => "DisableKey",
        /// ScheduleKeyDeletion.
        ScheduleKeyDeletion => "ScheduleKeyDeletion",
        /// CancelKeyDeletion.
        CancelKeyDeletion => "CancelKeyDeletion",
        /// EnableKeyRotation.
        EnableKeyRotation => "EnableKeyRotation",
        /// DisableKeyRotation.
        DisableKeyRotation => "DisableKeyRotation",
        /// GetKeyRotationStatus.
        GetKeyRotationStatus => "GetKeyRotationStatus",
        /// RotateKeyOnDemand.
        RotateKeyOnDemand => "RotateKeyOnDemand",
        /// ListKeyRotations.
        ListKeyRotations => "ListKeyRotations",
        /// ImportKeyMaterial.
        ImportKeyMaterial => "ImportKeyMaterial",
        /// GetParametersForImport.
        GetParametersForImport => "GetParametersForImport",
        /// CreateAlias / UpdateAlias (target side).
        CreateAlias => "CreateAlias",
        /// CreateGrant.
        CreateGrant => "CreateGrant",
        /// RetireGrant / RevokeGrant / ListGrants.
        ManageGrants => "ManageGrants",
        /// TagResource / UntagResource / UpdateKeyDescription.
        UpdateKeyAttributes => "UpdateKeyAttributes",
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
