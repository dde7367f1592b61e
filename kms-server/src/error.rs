//! The one error type of a KMS request, mapped one-to-one to the AWS exception name that
//! goes into `__type` and to the HTTP status AWS uses for it.
//!
//! Status codes: AWS's JSON 1.1 services (KMS, DynamoDB, Kinesis, ...) answer every
//! client fault with 400, signature and credential failures included
//! (`InvalidSignatureException`, `UnrecognizedClientException`,
//! `MissingAuthenticationTokenException`, `ExpiredTokenException` all come back as 400 from
//! those services); 403 is what the REST and query protocols use. Server faults are 500,
//! `DryRunOperationException` is 412, an oversize body 413.
//!
//! Messages are built from names, sizes and identifiers only: never a byte of plaintext,
//! ciphertext, key material, secret or session token.

use http::StatusCode;
use kms_core::KmsError;

/// An authentication failure (SigV4 or session token), with AWS's exception names.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No `Authorization` header at all.
    #[error("Missing Authentication Token")]
    MissingAuthenticationToken,
    /// The `Authorization` header or a header it needs is malformed or missing a part.
    #[error("{0}")]
    IncompleteSignature(String),
    /// The signature, its scope or its date is wrong.
    #[error("{0}")]
    InvalidSignature(String),
    /// The access key id is unknown, or the session token is forged, tampered with or does
    /// not belong to the access key id.
    #[error("The security token included in the request is invalid.")]
    UnrecognizedClient,
    /// The session token has expired.
    #[error("The security token included in the request is expired")]
    ExpiredToken,
}

impl AuthError {
    /// The AWS exception name.
    #[must_use]
    pub fn aws_exception_name(&self) -> &'static str {
        match self {
            Self::MissingAuthenticationToken => "MissingAuthenticationTokenException",
            Self::IncompleteSignature(_) => "IncompleteSignatureException",
            Self::InvalidSignature(_) => "InvalidSignatureException",
            Self::UnrecognizedClient => "UnrecognizedClientException",
            Self::ExpiredToken => "ExpiredTokenException",
        }
    }
}

/// Every way a KMS request can fail.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// A domain error from kms-core (or raised by a seam with kms-core's vocabulary:
    /// NotFoundException, AccessDeniedException, ...).
    #[error(transparent)]
    Kms(#[from] KmsError),
    /// Authentication failed.
    #[error(transparent)]
    Auth(#[from] AuthError),
    /// `X-Amz-Target` is missing or names no operation served here.
    #[error("{0}")]
    UnknownOperation(String),
    /// The body is not JSON, or a member has the wrong JSON type.
    #[error("{0}")]
    Serialization(String),
    /// The body is larger than the configured limit.
    #[error("The request body exceeds the limit of {limit} bytes")]
    RequestTooLarge {
        /// The limit, in bytes.
        limit: usize,
    },
    /// Every check passed, and `DryRun` was set.
    #[error("The request would have succeeded, but the DryRun option is set.")]
    DryRun,
    /// A pagination marker this server did not issue.
    #[error("{0}")]
    InvalidMarker(String),
    /// A custom key store was named; there are none.
    #[error("{0}")]
    CustomKeyStoreNotFound(String),
    /// A dependency (the authorizer, the token reviewer) did not answer in time.
    #[error("{0}")]
    DependencyTimeout(String),
}

impl ApiError {
    /// The AWS exception name, for `__type`.
    #[must_use]
    pub fn aws_exception_name(&self) -> &'static str {
        match self {
            Self::Kms(e) => e.aws_exception_name(),
            Self::Auth(e) => e.aws_exception_name(),
            Self::UnknownOperation(_) => "UnknownOperationException",
            Self::Serialization(_) => "SerializationException",
            Self::RequestTooLarge { .. } => "RequestEntityTooLargeException",
            Self::DryRun => "DryRunOperationException",
            Self::InvalidMarker(_) => "InvalidMarkerException",
            Self::CustomKeyStoreNotFound(_) => "CustomKeyStoreNotFoundException",
            Self::DependencyTimeout(_) => "DependencyTimeoutException",
        }
    }

    /// The HTTP status AWS answers with.
    #[must_use]
    pub fn status(&self) -> StatusCode {
        match self {
            Self::Kms(e) => {
                StatusCode::from_u16(e.http_status()).unwrap_or(StatusCode::BAD_REQUEST)
            }
            Self::DryRun => StatusCode::PRECONDITION_FAILED,
            Self::RequestTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::DependencyTimeout(_) => StatusCode::INTERNAL_SERVER_ERROR,
            Self::UnknownOperation(_)
            | Self::Auth(_)
            | Self::Serialization(_)
            | Self::InvalidMarker(_)
            | Self::CustomKeyStoreNotFound(_) => StatusCode::BAD_REQUEST,
        }
    }

    /// A `ValidationException`.
    pub(crate) fn validation(message: impl Into<String>) -> Self {
        Self::Kms(KmsError::Validation(message.into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_statuses() {
        let cases: Vec<(ApiError, &str, u16)> = vec![
            (
                KmsError::InvalidCiphertext.into(),
                "InvalidCiphertextException",
                400,
            ),
            (
                KmsError::Internal("x".into()).into(),
                "KMSInternalException",
                500,
            ),
            (
                AuthError::MissingAuthenticationToken.into(),
                "MissingAuthenticationTokenException",
                400,
            ),
            (
                AuthError::UnrecognizedClient.into(),
                "UnrecognizedClientException",
                400,
            ),
            (AuthError::ExpiredToken.into(), "ExpiredTokenException", 400),
            (
                AuthError::InvalidSignature("x".into()).into(),
                "InvalidSignatureException",
                400,
            ),
            (
                AuthError::IncompleteSignature("x".into()).into(),
                "IncompleteSignatureException",
                400,
            ),
            (
                ApiError::UnknownOperation("x".into()),
                "UnknownOperationException",
                400,
            ),
            (
                ApiError::Serialization("x".into()),
                "SerializationException",
                400,
            ),
            (ApiError::DryRun, "DryRunOperationException", 412),
            (
                ApiError::RequestTooLarge { limit: 1 },
                "RequestEntityTooLargeException",
                413,
            ),
            (
                ApiError::DependencyTimeout("x".into()),
                "DependencyTimeoutException",
                500,
            ),
        ];
        for (error, name, status) in cases {
            assert_eq!(error.aws_exception_name(), name);
            assert_eq!(error.status().as_u16(), status, "{name}");
        }
    }
}
