//! The plugin's errors and their gRPC status codes. Messages carry identifiers, sizes and
//! names only: never plaintext, ciphertext or key material.

use std::path::PathBuf;

use kms_core::{ErrorClass, KeyId, KmsError};

/// Every error of the plugin library.
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    /// The ciphertext is not a KubeKMS blob, was modified, or does not authenticate.
    #[error("the ciphertext is invalid or was modified ({0})")]
    InvalidCiphertext(&'static str),
    /// The request's key_id is malformed.
    #[error("key_id {0:?} is not a KubeKMS key id (expected <key-id>/v<version>)")]
    MalformedKeyId(String),
    /// The request's key_id names another key or version than the ciphertext.
    #[error("key_id {request:?} does not match the ciphertext, which is under {blob:?}")]
    KeyIdMismatch {
        /// The key_id sent.
        request: String,
        /// The key_id the blob names.
        blob: String,
    },
    /// An annotation this plugin did not write, or with another value.
    #[error("annotation {0:?} does not match what this plugin writes")]
    BadAnnotation(String),
    /// The plaintext is empty or too long for a ciphertext of at most 1024 bytes.
    #[error("plaintext of {0} bytes is outside 1..={max}", max = crate::service::MAX_PLAINTEXT)]
    PlaintextSize(usize),
    /// The ciphertext names a key that is not in the keyring.
    #[error("key {0} is not known to this plugin")]
    UnknownKey(KeyId),
    /// The ciphertext names a material version that is not retained.
    #[error("material version {version} of key {key_id} is not known to this plugin")]
    UnknownVersion {
        /// The key.
        key_id: KeyId,
        /// The version.
        version: u32,
    },
    /// No usable key is loaded.
    #[error("no usable key: {0}")]
    NoKey(String),
    /// The state folder was never initialised.
    #[error("the state folder {0} is not initialised; run `kubekms-plugin init --state-dir {0}`")]
    NotInitialized(PathBuf),
    /// The root key file is gone from a folder (or a restore) whose records need it.
    #[error(
        "the root key file {path} is missing, and {what} is wrapped under root key {needed}: \
         put back the root.key of your backup (32 bytes, mode 0600, owned by this user). Do not \
         run `kubekms-plugin init`: a new root key unwraps none of the existing material"
    )]
    RootKeyMissing {
        /// Where the root key should be.
        path: PathBuf,
        /// What needs it (`the active key <id>`, `KmsKeyMaterial ns/name`).
        what: String,
        /// The fingerprint of the root key it needs (not secret).
        needed: String,
    },
    /// `restore` cannot rebuild the folder from the objects given.
    #[error("restore: {0}")]
    Restore(String),
    /// `init` would overwrite something.
    #[error("{0} already exists; refusing to overwrite a state folder (keys would be lost)")]
    AlreadyInitialized(PathBuf),
    /// The state folder is unreadable, malformed, or open to others.
    #[error("state folder: {0}")]
    StateFolder(String),
    /// The followed KmsKey and its record cannot be adopted (not a symmetric encryption
    /// key, no material, damaged, would drop a version this plugin holds, ...).
    #[error("KmsKey {target}: {reason}")]
    FollowedKey {
        /// The KmsKey, `namespace/name`.
        target: String,
        /// Why.
        reason: String,
    },
    /// The followed KmsKey's record names another key than the one this plugin adopted
    /// from it (docs/plugin.md: the key-switch rule).
    #[error(
        "KmsKey {target}: its KmsKeyMaterial now holds key {offered}, but this plugin serves \
         key {pinned}, adopted from that KmsKey; refusing to switch keys (a replaced record \
         must not move kube-apiserver to a key nothing protects). If the switch is intended, \
         restart the plugin with --allow-key-switch"
    )]
    KeySwitch {
        /// The KmsKey, `namespace/name`.
        target: String,
        /// The key adopted earlier.
        pinned: KeyId,
        /// The key the record holds now.
        offered: KeyId,
    },
    /// The Unix socket path is taken by something that must not be deleted, or cannot be
    /// bound or served.
    #[error("socket {0}")]
    Socket(String),
    /// The HTTP listener (/healthz, /readyz, /metrics) cannot be bound.
    #[error("HTTP listener: {0}")]
    Http(String),
    /// The signal handlers cannot be installed.
    #[error("signal handlers: {0}")]
    Signal(String),
    /// An error of kms-core.
    #[error(transparent)]
    Core(KmsError),
}

impl PluginError {
    /// The gRPC status code for this error.
    #[must_use]
    pub fn code(&self) -> tonic::Code {
        use tonic::Code;
        match self {
            Self::InvalidCiphertext(_)
            | Self::MalformedKeyId(_)
            | Self::KeyIdMismatch { .. }
            | Self::BadAnnotation(_)
            | Self::PlaintextSize(_) => Code::InvalidArgument,
            Self::UnknownKey(_) | Self::UnknownVersion { .. } => Code::NotFound,
            Self::NoKey(_)
            | Self::NotInitialized(_)
            | Self::RootKeyMissing { .. }
            | Self::Restore(_)
            | Self::StateFolder(_)
            | Self::FollowedKey { .. }
            | Self::KeySwitch { .. } => Code::FailedPrecondition,
            Self::AlreadyInitialized(_) => Code::AlreadyExists,
            Self::Socket(_) | Self::Http(_) | Self::Signal(_) => Code::Internal,
            Self::Core(e) => match e.class() {
                ErrorClass::NotFound => Code::NotFound,
                ErrorClass::InvalidArgument => Code::InvalidArgument,
                ErrorClass::FailedPrecondition | ErrorClass::Unsupported => {
                    Code::FailedPrecondition
                }
                ErrorClass::PermissionDenied => Code::PermissionDenied,
                ErrorClass::AlreadyExists => Code::AlreadyExists,
                ErrorClass::ResourceExhausted => Code::ResourceExhausted,
                ErrorClass::Unavailable => Code::Unavailable,
                ErrorClass::Internal => Code::Internal,
            },
        }
    }
}

impl From<PluginError> for tonic::Status {
    fn from(e: PluginError) -> Self {
        tonic::Status::new(e.code(), e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes() {
        assert_eq!(
            PluginError::InvalidCiphertext("x").code(),
            tonic::Code::InvalidArgument
        );
        assert_eq!(
            PluginError::Core(KmsError::InvalidCiphertext).code(),
            tonic::Code::InvalidArgument
        );
        assert_eq!(
            PluginError::Core(KmsError::Disabled("k".into())).code(),
            tonic::Code::FailedPrecondition
        );
        let key_id = KeyId::single_from_random([7; 16]);
        assert_eq!(
            PluginError::UnknownVersion { key_id, version: 9 }.code(),
            tonic::Code::NotFound
        );
        assert_eq!(
            PluginError::NoKey("x".into()).code(),
            tonic::Code::FailedPrecondition
        );
    }
}
