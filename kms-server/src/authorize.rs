//! The authorize seam: may this principal do this action on this key with this
//! encryption context? The Kubernetes layer implements [`Authorizer`] with a key policy
//! Deny check, a SubjectAccessReview (group `kubekms.io`, resource `kmskeys`, the key's
//! namespace and name, verb [`Action::verb`]) with a short decision cache, and KmsGrant
//! evaluation (`kms_core::grants::Grant::authorize`) with grant tokens.
//!
//! Rules that belong to the protocol and are enforced before an authorizer is asked
//! (so no authorizer can grant around them): keys served by a KMS v2 plugin are refused,
//! and encryption context keys starting with `kubekms:` are refused.

use async_trait::async_trait;
use kms_core::EncryptionContext;
use kms_core::grants::GrantOperation;

use crate::directory::ResolvedKey;
use crate::principal::Principal;

macro_rules! actions {
    ($($(#[$meta:meta])* $variant:ident ($verb:literal) => $grant:expr,)+) => {
        /// A KMS action, as IAM names it (`kms:<Action>`); ReEncrypt is two actions.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum Action {
            $($(#[$meta])* $variant,)+
        }

        impl Action {
            /// Every action.
            pub const ALL: &'static [Action] = &[$(Action::$variant,)+];

            /// The AWS name (`Encrypt`, `ReEncryptFrom`, ...).
            #[must_use]
            pub fn as_str(self) -> &'static str {
                match self {
                    $(Action::$variant => stringify!($variant),)+
                }
            }

            /// The RBAC verb: the action name in lower case (`encrypt`, `reencryptfrom`,
            /// `generatedatakey`, ...), on resource `kmskeys` of group `kubekms.io`.
            #[must_use]
            pub fn verb(self) -> &'static str {
                match self {
                    $(Action::$variant => $verb,)+
                }
            }

            /// The grant operation that can allow this action, if any.
            #[must_use]
            pub fn grant_operation(self) -> Option<GrantOperation> {
                match self {
                    $(Action::$variant => $grant,)+
                }
            }
        }
    };
}

actions! {
    /// Encrypt.
    Encrypt ("encrypt") => Some(GrantOperation::Encrypt),
    /// Decrypt.
    Decrypt ("decrypt") => Some(GrantOperation::Decrypt),
    /// ReEncrypt, on the source key.
    ReEncryptFrom ("reencryptfrom") => Some(GrantOperation::ReEncryptFrom),
    /// ReEncrypt, on the destination key.
    ReEncryptTo ("reencryptto") => Some(GrantOperation::ReEncryptTo),
    /// GenerateDataKey.
    GenerateDataKey ("generatedatakey") => Some(GrantOperation::GenerateDataKey),
    /// GenerateDataKeyWithoutPlaintext.
    GenerateDataKeyWithoutPlaintext ("generatedatakeywithoutplaintext") => Some(GrantOperation::GenerateDataKeyWithoutPlaintext),
    /// GenerateDataKeyPair.
    GenerateDataKeyPair ("generatedatakeypair") => Some(GrantOperation::GenerateDataKeyPair),
    /// GenerateDataKeyPairWithoutPlaintext.
    GenerateDataKeyPairWithoutPlaintext ("generatedatakeypairwithoutplaintext") => Some(GrantOperation::GenerateDataKeyPairWithoutPlaintext),
    /// GenerateRandom (no key: authorized on the caller's account).
    GenerateRandom ("generaterandom") => None,
    /// GetPublicKey.
    GetPublicKey ("getpublickey") => Some(GrantOperation::GetPublicKey),
    /// Sign.
    Sign ("sign") => Some(GrantOperation::Sign),
    /// Verify.
    Verify ("verify") => Some(GrantOperation::Verify),
    /// GenerateMac.
    GenerateMac ("generatemac") => Some(GrantOperation::GenerateMac),
    /// VerifyMac.
    VerifyMac ("verifymac") => Some(GrantOperation::VerifyMac),
    /// DeriveSharedSecret.
    DeriveSharedSecret ("derivesharedsecret") => Some(GrantOperation::DeriveSharedSecret),
    /// DescribeKey.
    DescribeKey ("describekey") => Some(GrantOperation::DescribeKey),
    /// ListKeys (on the account).
    ListKeys ("listkeys") => None,
    /// ListAliases (on the account).
    ListAliases ("listaliases") => None,
    /// ListGrants.
    ListGrants ("listgrants") => None,
    /// GetKeyRotationStatus.
    GetKeyRotationStatus ("getkeyrotationstatus") => None,
    /// ListKeyRotations.
    ListKeyRotations ("listkeyrotations") => None,
    /// ListResourceTags.
    ListResourceTags ("listresourcetags") => None,
}

impl std::fmt::Display for Action {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What an action is on.
#[derive(Debug, Clone, Copy)]
pub enum Resource<'a> {
    /// A key.
    Key(&'a ResolvedKey),
    /// The caller's account as a whole (ListKeys, ListAliases, GenerateRandom): RBAC on
    /// `kmskeys` in the namespace without a resourceName.
    Account {
        /// The namespace.
        namespace: &'a str,
    },
}

/// One authorization question.
#[derive(Debug, Clone, Copy)]
pub struct AuthorizationRequest<'a> {
    /// The caller.
    pub principal: &'a Principal,
    /// The action.
    pub action: Action,
    /// What it is on.
    pub resource: Resource<'a>,
    /// The request's encryption context (empty when the operation takes none); grant
    /// constraints are evaluated against it.
    pub encryption_context: &'a EncryptionContext,
    /// The request's grant tokens (shape already checked).
    pub grant_tokens: &'a [String],
}

/// Why a request was allowed (recorded in the audit record).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Allowed {
    /// Kubernetes RBAC allowed it.
    Rbac,
    /// A grant allowed it.
    Grant {
        /// The grant id.
        grant_id: String,
    },
    /// Something else the implementation names (tests, a key policy Allow).
    Other(String),
}

/// Why a request was not allowed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    /// The caller may not (AccessDeniedException). The reason goes to the audit record and
    /// the log, not to the caller: the caller learns only who and which verb.
    #[error("access denied: {reason}")]
    Forbidden {
        /// Why (for the audit record).
        reason: String,
    },
    /// The decision could not be made in time (DependencyTimeoutException, retryable).
    #[error("authorization unavailable: {reason}")]
    Unavailable {
        /// Why.
        reason: String,
    },
}

/// Decides whether a principal may perform an action. Implementations cache decisions
/// (seconds, bounded) so the hot path does not call kube-apiserver per request, and bound
/// every call with a timeout.
#[async_trait]
pub trait Authorizer: Send + Sync + 'static {
    /// Allows or denies one request.
    async fn authorize(&self, request: &AuthorizationRequest<'_>) -> Result<Allowed, Denied>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verbs_are_lower_case_action_names() {
        assert_eq!(Action::Encrypt.verb(), "encrypt");
        assert_eq!(Action::GenerateDataKey.verb(), "generatedatakey");
        assert_eq!(Action::ReEncryptFrom.verb(), "reencryptfrom");
        for action in Action::ALL {
            assert_eq!(action.verb(), action.as_str().to_ascii_lowercase());
        }
    }
}
