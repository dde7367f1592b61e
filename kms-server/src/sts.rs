//! The STS endpoint: `AssumeRoleWithWebIdentity` in AWS's query protocol (form-encoded,
//! unsigned, XML replies), so the SDKs' own web-identity flow (`AWS_WEB_IDENTITY_TOKEN_FILE`,
//! `AWS_ROLE_ARN`, `AWS_ENDPOINT_URL_STS`) exchanges a projected ServiceAccount token for
//! short-lived credentials.
//!
//! The token is checked by a [`TokenReviewer`] (the Kubernetes layer does a TokenReview
//! bound to the configured audiences); the session is sealed, not stored (see
//! [`crate::auth::session`]). It ends no later than the ServiceAccount token and at most
//! `DurationSeconds` after issue.

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use aws_lc_rs::digest;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use kms_core::SecretBytes;
use serde::Deserialize;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use zeroize::Zeroizing;

use crate::auth::session::{self, SessionClaims, SessionSealer};
use crate::principal::Principal;

/// The XML namespace of STS replies.
pub const XML_NAMESPACE: &str = "https://sts.amazonaws.com/doc/2011-06-15/";
/// The only API version.
pub const VERSION: &str = "2011-06-15";
/// Default session length when DurationSeconds is absent.
pub const DEFAULT_DURATION: Duration = Duration::from_secs(3600);
/// Shortest DurationSeconds (model).
pub const MIN_DURATION_SECONDS: i64 = 900;
/// Longest DurationSeconds (model).
pub const MAX_DURATION_SECONDS: i64 = 43_200;

/// What a TokenReview says about a token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReviewedIdentity {
    /// Kubernetes username (`system:serviceaccount:<ns>:<name>`).
    pub username: String,
    /// Kubernetes uid.
    pub uid: Option<String>,
    /// Kubernetes groups.
    pub groups: Vec<String>,
    /// The audiences the token was accepted for (a subset of those asked).
    pub audiences: Vec<String>,
}

/// Why a review failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReviewError {
    /// The token is not valid (forged, expired, revoked, wrong audience).
    #[error("the token was rejected: {0}")]
    Rejected(String),
    /// The reviewer could not answer (API server down, timeout).
    #[error("the token could not be reviewed: {0}")]
    Unavailable(String),
}

/// Checks web identity tokens. The Kubernetes layer implements it with a TokenReview whose
/// `spec.audiences` are the configured audiences.
#[async_trait]
pub trait TokenReviewer: Send + Sync + 'static {
    /// Reviews a token for `audiences`.
    async fn review(
        &self,
        token: &str,
        audiences: &[String],
    ) -> Result<ReviewedIdentity, ReviewError>;
}

/// Settings of the STS endpoint.
#[derive(Debug, Clone)]
pub struct StsConfig {
    /// Audiences a token must be bound to (TokenReview `spec.audiences`).
    pub audiences: Vec<String>,
    /// Longest session issued, whatever DurationSeconds asks (at most 12 hours).
    pub max_duration: Duration,
    /// Longest wait for a review.
    pub review_timeout: Duration,
}

impl Default for StsConfig {
    fn default() -> Self {
        Self {
            audiences: vec!["kubekms".to_owned()],
            max_duration: Duration::from_secs(43_200),
            review_timeout: Duration::from_secs(10),
        }
    }
}

/// An STS error, in the query protocol's terms.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct StsError {
    /// The error code (`InvalidIdentityToken`, `ValidationError`, ...).
    pub code: &'static str,
    /// The message.
    pub message: String,
    /// HTTP status.
    pub status: u16,
}

impl StsError {
    fn new(code: &'static str, status: u16, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            status,
        }
    }

    fn validation(message: impl Into<String>) -> Self {
        Self::new("ValidationError", 400, message)
    }

    /// Whether the fault is the server's (5xx).
    #[must_use]
    pub fn is_server_fault(&self) -> bool {
        self.status >= 500
    }
}

/// A parsed AssumeRoleWithWebIdentity request.
#[derive(Debug)]
pub struct AssumeRoleWithWebIdentity {
    /// RoleArn (recorded; KubeKMS has no IAM roles: the identity is the ServiceAccount's).
    pub role_arn: String,
    /// RoleSessionName.
    pub role_session_name: String,
    /// The ServiceAccount token.
    pub web_identity_token: Zeroizing<String>,
    /// DurationSeconds.
    pub duration_seconds: Option<i64>,
}

/// The STS actions served.
#[derive(Debug)]
pub enum StsRequest {
    /// AssumeRoleWithWebIdentity.
    AssumeRoleWithWebIdentity(AssumeRoleWithWebIdentity),
}

/// Parses a form-encoded STS request body.
///
/// # Errors
/// `InvalidAction` for a missing or unknown Action or Version; `ValidationError` for
/// model violations, and for session policies (not supported).
pub fn parse_request(body: &[u8]) -> Result<StsRequest, StsError> {
    let mut params: HashMap<String, Zeroizing<String>> = HashMap::new();
    for (name, value) in form_urlencoded::parse(body) {
        params.insert(name.into_owned(), Zeroizing::new(value.into_owned()));
    }
    let action = params.get("Action").map(|a| a.as_str().to_owned());
    let Some(action) = action else {
        return Err(StsError::new("MissingAction", 400, "Missing Action"));
    };
    if params.get("Version").map(|v| v.as_str()) != Some(VERSION) {
        return Err(StsError::new(
            "InvalidAction",
            400,
            format!(
                "Could not find operation {} for the requested version",
                shown(&action)
            ),
        ));
    }
    if action != "AssumeRoleWithWebIdentity" {
        return Err(StsError::new(
            "InvalidAction",
            400,
            format!(
                "Could not find operation {} for version {VERSION}",
                shown(&action)
            ),
        ));
    }
    let mut violations = Vec::new();
    let mut string = |name: &str, min: usize, max: usize| -> Option<String> {
        let path = lower_first(name);
        match params.get(name) {
            None => {
                violations.push(format!(
                    "Value null at '{path}' failed to satisfy constraint: Member must not be null"
                ));
                None
            }
            Some(v) if v.chars().count() < min => {
                violations.push(format!(
                    "Value at '{path}' failed to satisfy constraint: Member must have length greater than or equal to {min}"
                ));
                None
            }
            Some(v) if v.chars().count() > max => {
                violations.push(format!(
                    "Value at '{path}' failed to satisfy constraint: Member must have length less than or equal to {max}"
                ));
                None
            }
            Some(v) => Some(v.as_str().to_owned()),
        }
    };
    let role_arn = string("RoleArn", 20, 2048);
    let role_session_name = string("RoleSessionName", 2, 64);
    let web_identity_token = string("WebIdentityToken", 4, 20_000).map(Zeroizing::new);
    if let Some(name) = &role_session_name
        && !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_+=,.@-".contains(&b))
    {
        violations.push(
            "Value at 'roleSessionName' failed to satisfy constraint: Member must satisfy regular expression pattern: [\\w+=,.@-]*"
                .to_owned(),
        );
    }
    let duration_seconds = match params.get("DurationSeconds") {
        None => None,
        Some(text) => match text.parse::<i64>() {
            Ok(n) if (MIN_DURATION_SECONDS..=MAX_DURATION_SECONDS).contains(&n) => Some(n),
            Ok(n) => {
                violations.push(format!(
                    "Value '{n}' at 'durationSeconds' failed to satisfy constraint: Member must have value between {MIN_DURATION_SECONDS} and {MAX_DURATION_SECONDS}"
                ));
                None
            }
            Err(_) => {
                violations.push("Value at 'durationSeconds' failed to satisfy constraint: Member must be an integer".to_owned());
                None
            }
        },
    };
    if params.contains_key("Policy") || params.keys().any(|k| k.starts_with("PolicyArns.")) {
        violations
            .push("Session policies (Policy, PolicyArns) are not supported by KubeKMS".to_owned());
    }
    if !violations.is_empty() {
        let n = violations.len();
        return Err(StsError::validation(format!(
            "{n} validation error{} detected: {}",
            if n == 1 { "" } else { "s" },
            violations.join("; ")
        )));
    }
    let (Some(role_arn), Some(role_session_name), Some(web_identity_token)) =
        (role_arn, role_session_name, web_identity_token)
    else {
        return Err(StsError::validation(
            "1 validation error detected: a required member is missing",
        ));
    };
    Ok(StsRequest::AssumeRoleWithWebIdentity(
        AssumeRoleWithWebIdentity {
            role_arn,
            role_session_name,
            web_identity_token,
            duration_seconds,
        },
    ))
}

fn lower_first(name: &str) -> String {
    let mut chars = name.chars();
    match chars.next() {
        Some(c) => c.to_lowercase().chain(chars).collect(),
        None => String::new(),
    }
}

fn shown(text: &str) -> String {
    text.chars()
        .take(64)
        .filter(|c| c.is_ascii_alphanumeric())
        .collect()
}

/// The claims of a JWT that matter here, read without verifying the signature (the
/// TokenReview verifies; these only bound the session and name the issuer).
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
pub struct JwtClaims {
    /// Expiry (seconds since the epoch).
    pub exp: Option<i64>,
    /// Issuer.
    pub iss: Option<String>,
    /// Subject.
    pub sub: Option<String>,
}

/// Reads the payload of a compact JWS, if the token is one.
#[must_use]
pub fn jwt_claims(token: &str) -> Option<JwtClaims> {
    let mut parts = token.split('.');
    let (Some(_), Some(payload), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return None;
    };
    let bytes = URL_SAFE_NO_PAD.decode(payload.trim_end_matches('=')).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// Issued credentials and what the reply says about them.
#[derive(Debug)]
pub struct IssuedSession {
    /// Access key id.
    pub access_key_id: String,
    /// Secret access key.
    pub secret_access_key: SecretBytes,
    /// The sealed session token.
    pub session_token: Zeroizing<String>,
    /// Expiry.
    pub expiration: OffsetDateTime,
    /// `arn:<partition>:sts::<account>:assumed-role/<role>/<session>`.
    pub assumed_role_arn: String,
    /// `AROA…:<session>`.
    pub assumed_role_id: String,
    /// The token's subject.
    pub subject: String,
    /// The audience.
    pub audience: String,
    /// The issuer.
    pub provider: String,
    /// The Kubernetes username.
    pub username: String,
    /// The namespace.
    pub namespace: String,
}

/// What AssumeRoleWithWebIdentity needs.
pub struct WebIdentityExchange<'a> {
    /// The reviewer.
    pub reviewer: &'a dyn TokenReviewer,
    /// Seals sessions.
    pub sealer: &'a SessionSealer,
    /// Settings.
    pub config: &'a StsConfig,
    /// The ARN partition.
    pub partition: &'a str,
    /// The account id of a namespace.
    pub account_id: &'a (dyn Fn(&str) -> String + Send + Sync),
}

fn role_name(role_arn: &str) -> &str {
    role_arn
        .rsplit_once(":role/")
        .map(|(_, path)| path.rsplit('/').next().unwrap_or(path))
        .filter(|name| !name.is_empty() && name.len() <= 64)
        .unwrap_or("kubekms")
}

fn assumed_role_id(role_arn: &str) -> String {
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let hash = digest::digest(&digest::SHA256, role_arn.as_bytes());
    let mut id = String::from("AROA");
    for b in &hash.as_ref()[..16] {
        id.push(char::from(ALPHABET[usize::from(b & 31)]));
    }
    id
}

impl WebIdentityExchange<'_> {
    /// Checks the token and issues a session.
    ///
    /// # Errors
    /// `ExpiredTokenException` for an expired token; `InvalidIdentityToken` when the
    /// reviewer rejects it or it is not a ServiceAccount's; `IDPCommunicationError` when
    /// the reviewer cannot answer in time; `InternalFailure` on a sealing failure.
    pub async fn assume_role(
        &self,
        request: &AssumeRoleWithWebIdentity,
        now: OffsetDateTime,
    ) -> Result<IssuedSession, StsError> {
        let claims = jwt_claims(&request.web_identity_token).unwrap_or_default();
        let token_expiry = match claims.exp {
            Some(exp) => Some(OffsetDateTime::from_unix_timestamp(exp).map_err(|_| {
                StsError::new(
                    "InvalidIdentityToken",
                    400,
                    "The web identity token has an invalid expiry",
                )
            })?),
            None => None,
        };
        if let Some(exp) = token_expiry
            && exp <= now
        {
            return Err(StsError::new(
                "ExpiredTokenException",
                400,
                format!(
                    "Token expired: current date/time {} must be before the expiration date/time {}",
                    now.format(&Rfc3339).unwrap_or_default(),
                    exp.format(&Rfc3339).unwrap_or_default()
                ),
            ));
        }
        let reviewed = tokio::time::timeout(
            self.config.review_timeout,
            self.reviewer
                .review(&request.web_identity_token, &self.config.audiences),
        )
        .await
        .unwrap_or_else(|_| Err(ReviewError::Unavailable("the review timed out".to_owned())));
        let identity = match reviewed {
            Ok(identity) => identity,
            Err(ReviewError::Rejected(reason)) => {
                tracing::debug!(%reason, "web identity token rejected");
                return Err(StsError::new(
                    "InvalidIdentityToken",
                    400,
                    "The web identity token was rejected by the Kubernetes TokenReview (invalid, expired, revoked or not bound to the audience)",
                ));
            }
            Err(ReviewError::Unavailable(reason)) => {
                tracing::warn!(%reason, "web identity token could not be reviewed");
                return Err(StsError::new(
                    "IDPCommunicationError",
                    400,
                    "The Kubernetes TokenReview could not be completed; retry",
                ));
            }
        };
        let Some((namespace, _)) = Principal::parse_service_account(&identity.username) else {
            return Err(StsError::new(
                "InvalidIdentityToken",
                400,
                "Only ServiceAccount tokens can be exchanged for credentials",
            ));
        };
        let namespace = namespace.to_owned();
        let requested = request
            .duration_seconds
            .map_or(DEFAULT_DURATION, |s| Duration::from_secs(s.unsigned_abs()))
            .min(self.config.max_duration);
        let mut expiration = now + requested;
        if let Some(exp) = token_expiry {
            expiration = expiration.min(exp);
        }
        let expiration = expiration.replace_nanosecond(0).unwrap_or(expiration);
        let internal = |_| StsError::new("InternalFailure", 500, "The session could not be issued");
        let access_key_id = session::new_access_key_id().map_err(internal)?;
        let secret_access_key = session::new_secret_access_key().map_err(internal)?;
        let audience = identity
            .audiences
            .first()
            .or_else(|| self.config.audiences.first())
            .cloned()
            .unwrap_or_default();
        let sealed = SessionClaims {
            access_key_id: access_key_id.clone(),
            secret_access_key: secret_access_key.duplicate(),
            username: identity.username.clone(),
            uid: identity.uid.clone(),
            groups: identity.groups.clone(),
            namespace: namespace.clone(),
            audience: audience.clone(),
            issued_at: now,
            expires_at: expiration,
        };
        let session_token = Zeroizing::new(self.sealer.seal(&sealed).map_err(internal)?);
        let account = (self.account_id)(&namespace);
        Ok(IssuedSession {
            access_key_id,
            secret_access_key,
            session_token,
            expiration,
            assumed_role_arn: format!(
                "arn:{}:sts::{account}:assumed-role/{}/{}",
                self.partition,
                role_name(&request.role_arn),
                request.role_session_name
            ),
            assumed_role_id: format!(
                "{}:{}",
                assumed_role_id(&request.role_arn),
                request.role_session_name
            ),
            subject: claims.sub.unwrap_or_else(|| identity.username.clone()),
            audience,
            provider: claims.iss.unwrap_or_else(|| "kubernetes".to_owned()),
            username: identity.username,
            namespace,
        })
    }
}

/// Appends `text` with XML's five special characters escaped.
fn xml_escape(out: &mut String, text: &str) {
    for c in text.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c if (c as u32) < 0x20 && c != '\n' && c != '\t' && c != '\r' => {}
            c => out.push(c),
        }
    }
}

fn element(out: &mut String, name: &str, text: &str) {
    out.push('<');
    out.push_str(name);
    out.push('>');
    xml_escape(out, text);
    out.push_str("</");
    out.push_str(name);
    out.push('>');
}

/// The XML reply of a successful AssumeRoleWithWebIdentity.
#[must_use]
pub fn encode_assume_role(session: &IssuedSession, request_id: &str) -> Zeroizing<String> {
    let mut out = Zeroizing::new(String::with_capacity(2048));
    out.push_str("<AssumeRoleWithWebIdentityResponse xmlns=\"");
    out.push_str(XML_NAMESPACE);
    out.push_str("\">\n  <AssumeRoleWithWebIdentityResult>\n    ");
    element(&mut out, "SubjectFromWebIdentityToken", &session.subject);
    out.push_str("\n    ");
    element(&mut out, "Audience", &session.audience);
    out.push_str("\n    <AssumedRoleUser>\n      ");
    element(&mut out, "Arn", &session.assumed_role_arn);
    out.push_str("\n      ");
    element(&mut out, "AssumedRoleId", &session.assumed_role_id);
    out.push_str("\n    </AssumedRoleUser>\n    <Credentials>\n      ");
    element(&mut out, "SessionToken", &session.session_token);
    out.push_str("\n      ");
    element(
        &mut out,
        "SecretAccessKey",
        std::str::from_utf8(session.secret_access_key.expose()).unwrap_or_default(),
    );
    out.push_str("\n      ");
    element(
        &mut out,
        "Expiration",
        &session.expiration.format(&Rfc3339).unwrap_or_default(),
    );
    out.push_str("\n      ");
    element(&mut out, "AccessKeyId", &session.access_key_id);
    out.push_str("\n    </Credentials>\n    ");
    element(&mut out, "Provider", &session.provider);
    out.push_str("\n  </AssumeRoleWithWebIdentityResult>\n  <ResponseMetadata>\n    ");
    element(&mut out, "RequestId", request_id);
    out.push_str("\n  </ResponseMetadata>\n</AssumeRoleWithWebIdentityResponse>\n");
    out
}

/// The XML reply of an error.
#[must_use]
pub fn encode_error(error: &StsError, request_id: &str) -> String {
    let mut out = String::with_capacity(512);
    out.push_str("<ErrorResponse xmlns=\"");
    out.push_str(XML_NAMESPACE);
    out.push_str("\">\n  <Error>\n    ");
    element(
        &mut out,
        "Type",
        if error.is_server_fault() {
            "Receiver"
        } else {
            "Sender"
        },
    );
    out.push_str("\n    ");
    element(&mut out, "Code", error.code);
    out.push_str("\n    ");
    element(&mut out, "Message", &error.message);
    out.push_str("\n  </Error>\n  ");
    element(&mut out, "RequestId", request_id);
    out.push_str("\n</ErrorResponse>\n");
    out
}

#[cfg(test)]
mod tests;
