//! One error type for the whole domain. Every variant is an AWS KMS exception, so the
//! AWS-compatible API can return its name verbatim and the gRPC adapter can map it to a
//! status code without guessing.
//!
//! Messages never carry key material, plaintext or ciphertext bytes: they are built from
//! identifiers, sizes and names only.

/// The error of every fallible operation in this crate.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KmsError {
    /// The key, alias, grant or material version does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The key is disabled.
    #[error("{0}")]
    Disabled(String),
    /// The key's state does not allow the operation.
    #[error("{0}")]
    InvalidState(String),
    /// The ciphertext is malformed, was tampered with, or does not match its encryption context.
    #[error("The ciphertext is invalid, was modified, or its encryption context does not match")]
    InvalidCiphertext,
    /// The ciphertext was made under another key than the one named in the request.
    #[error("The ciphertext was encrypted under a different KMS key than the one specified")]
    IncorrectKey,
    /// The key's usage or spec does not support the operation or algorithm.
    #[error("{0}")]
    InvalidKeyUsage(String),
    /// A signature did not verify.
    #[error("The signature is not valid for this message, key and signing algorithm")]
    InvalidSignature,
    /// A MAC did not verify.
    #[error("The MAC is not valid for this message, key and MAC algorithm")]
    InvalidMac,
    /// A parameter is out of range or malformed.
    #[error("{0}")]
    Validation(String),
    /// An ARN could not be parsed.
    #[error("{0}")]
    InvalidArn(String),
    /// An alias name breaks AWS's rules.
    #[error("{0}")]
    InvalidAliasName(String),
    /// A grant token is malformed or unknown.
    #[error("{0}")]
    InvalidGrantToken(String),
    /// A grant id is malformed or unknown.
    #[error("{0}")]
    InvalidGrantId(String),
    /// The caller is not allowed to perform the operation.
    #[error("{0}")]
    AccessDenied(String),
    /// A name that must be unique is taken.
    #[error("{0}")]
    AlreadyExists(String),
    /// A quota was reached (for example 25 on-demand rotations of one key).
    #[error("{0}")]
    LimitExceeded(String),
    /// The operation is not supported for this key (for example automatic rotation of an RSA key).
    #[error("{0}")]
    UnsupportedOperation(String),
    /// Imported key material does not match the key's earlier material.
    #[error("{0}")]
    IncorrectKeyMaterial(String),
    /// The key store that holds the root key cannot be reached.
    #[error("{0}")]
    KeyUnavailable(String),
    /// A failure inside the service that the caller cannot fix.
    #[error("{0}")]
    Internal(String),
}

/// Result alias for this crate.
pub type KmsResult<T> = Result<T, KmsError>;

/// Transport-neutral category of an error, used by adapters to pick a status code
/// (gRPC `Code`, HTTP status) without knowing each variant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// The thing named does not exist (gRPC NOT_FOUND, HTTP 400 for AWS).
    NotFound,
    /// The request is malformed or its data does not verify (gRPC INVALID_ARGUMENT).
    InvalidArgument,
    /// The request is well-formed but the system's state forbids it (gRPC FAILED_PRECONDITION).
    FailedPrecondition,
    /// The caller lacks permission (gRPC PERMISSION_DENIED).
    PermissionDenied,
    /// A name is taken (gRPC ALREADY_EXISTS).
    AlreadyExists,
    /// A quota is exhausted (gRPC RESOURCE_EXHAUSTED).
    ResourceExhausted,
    /// The operation is not supported (gRPC UNIMPLEMENTED is wrong here: the RPC exists; FAILED_PRECONDITION).
    Unsupported,
    /// A dependency is down (gRPC UNAVAILABLE).
    Unavailable,
    /// A bug or backend failure (gRPC INTERNAL).
    Internal,
}

impl KmsError {
    /// Every AWS exception name this crate can return.
    pub const ALL_EXCEPTION_NAMES: &'static [&'static str] = &[
        "NotFoundException",
        "DisabledException",
        "KMSInvalidStateException",
        "InvalidCiphertextException",
        "IncorrectKeyException",
        "InvalidKeyUsageException",
        "KMSInvalidSignatureException",
        "KMSInvalidMacException",
        "ValidationException",
        "InvalidArnException",
        "InvalidAliasNameException",
        "InvalidGrantTokenException",
        "InvalidGrantIdException",
        "AccessDeniedException",
        "AlreadyExistsException",
        "LimitExceededException",
        "UnsupportedOperationException",
        "IncorrectKeyMaterialException",
        "KeyUnavailableException",
        "KMSInternalException",
    ];

    /// The AWS KMS exception name, exactly as the AWS API returns it in `__type`.
    #[must_use]
    pub fn aws_exception_name(&self) -> &'static str {
        match self {
            Self::NotFound(_) => "NotFoundException",
            Self::Disabled(_) => "DisabledException",
            Self::InvalidState(_) => "KMSInvalidStateException",
            Self::InvalidCiphertext => "InvalidCiphertextException",
            Self::IncorrectKey => "IncorrectKeyException",
            Self::InvalidKeyUsage(_) => "InvalidKeyUsageException",
            Self::InvalidSignature => "KMSInvalidSignatureException",
            Self::InvalidMac => "KMSInvalidMacException",
            Self::Validation(_) => "ValidationException",
            Self::InvalidArn(_) => "InvalidArnException",
            Self::InvalidAliasName(_) => "InvalidAliasNameException",
            Self::InvalidGrantToken(_) => "InvalidGrantTokenException",
            Self::InvalidGrantId(_) => "InvalidGrantIdException",
            Self::AccessDenied(_) => "AccessDeniedException",
            Self::AlreadyExists(_) => "AlreadyExistsException",
            Self::LimitExceeded(_) => "LimitExceededException",
            Self::UnsupportedOperation(_) => "UnsupportedOperationException",
            Self::IncorrectKeyMaterial(_) => "IncorrectKeyMaterialException",
            Self::KeyUnavailable(_) => "KeyUnavailableException",
            Self::Internal(_) => "KMSInternalException",
        }
    }

    /// The transport-neutral category of this error.
    #[must_use]
    pub fn class(&self) -> ErrorClass {
        match self {
            Self::NotFound(_) => ErrorClass::NotFound,
            Self::InvalidCiphertext
            | Self::IncorrectKey
            | Self::InvalidKeyUsage(_)
            | Self::InvalidSignature
            | Self::InvalidMac
            | Self::Validation(_)
            | Self::InvalidArn(_)
            | Self::InvalidAliasName(_)
            | Self::InvalidGrantToken(_)
            | Self::InvalidGrantId(_)
            | Self::IncorrectKeyMaterial(_) => ErrorClass::InvalidArgument,
            Self::Disabled(_) | Self::InvalidState(_) => ErrorClass::FailedPrecondition,
            Self::AccessDenied(_) => ErrorClass::PermissionDenied,
            Self::AlreadyExists(_) => ErrorClass::AlreadyExists,
            Self::LimitExceeded(_) => ErrorClass::ResourceExhausted,
            Self::UnsupportedOperation(_) => ErrorClass::Unsupported,
            Self::KeyUnavailable(_) => ErrorClass::Unavailable,
            Self::Internal(_) => ErrorClass::Internal,
        }
    }

    /// HTTP status AWS uses for this exception (4xx for the caller's faults, 5xx otherwise).
    #[must_use]
    pub fn http_status(&self) -> u16 {
        match self {
            Self::Internal(_) => 500,
            Self::KeyUnavailable(_) => 500,
            _ => 400,
        }
    }

    pub(crate) fn validation(msg: impl Into<String>) -> Self {
        Self::Validation(msg.into())
    }

    pub(crate) fn internal(what: &str) -> Self {
        Self::Internal(format!("internal cryptographic failure in {what}"))
    }
}
