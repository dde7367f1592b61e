//! Authenticate: SigV4 over the request, with static credentials or an STS session token,
//! giving the [`Principal`] the request acts as.

pub mod credentials;
pub mod session;
pub mod sigv4;

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use http::HeaderMap;
use subtle::ConstantTimeEq as _;
use time::OffsetDateTime;

pub use credentials::{Credential, CredentialsError, StaticCredentials};
pub use session::{SessionClaims, SessionSealer};
pub use sigv4::SignedParts;

use crate::error::AuthError;
use crate::principal::{CredentialKind, Principal};

/// The header that carries a session token.
pub const SECURITY_TOKEN_HEADER: &str = "x-amz-security-token";
/// Sessions kept opened in memory; beyond, expired ones are dropped, then all.
const SESSION_CACHE_CAPACITY: usize = 65_536;

struct CachedSession {
    token: Box<str>,
    expires_at: OffsetDateTime,
    credential: Arc<Credential>,
}

/// Verifies requests: signature, scope, clock, credentials.
pub struct Authenticator {
    region: String,
    credentials: Arc<StaticCredentials>,
    sealer: Arc<SessionSealer>,
    sessions: RwLock<HashMap<Box<str>, Arc<CachedSession>>>,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field("region", &self.region)
            .field("static_credentials", &self.credentials.len())
            .finish_non_exhaustive()
    }
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

impl Authenticator {
    /// An authenticator for `region`.
    #[must_use]
    pub fn new(
        region: impl Into<String>,
        credentials: Arc<StaticCredentials>,
        sealer: Arc<SessionSealer>,
    ) -> Self {
        Self {
            region: region.into(),
            credentials,
            sealer,
            sessions: RwLock::new(HashMap::new()),
        }
    }

    /// The region requests must be scoped to.
    #[must_use]
    pub fn region(&self) -> &str {
        &self.region
    }

    /// The session sealer (the STS endpoint seals with it).
    #[must_use]
    pub fn sealer(&self) -> &Arc<SessionSealer> {
        &self.sealer
    }

    /// The static credentials.
    #[must_use]
    pub fn credentials(&self) -> &Arc<StaticCredentials> {
        &self.credentials
    }

    /// Verifies a request for `service` at `now`.
    ///
    /// # Errors
    /// The [`AuthError`] AWS would answer.
    pub fn authenticate(
        &self,
        service: &str,
        parts: SignedParts<'_>,
        body: &[u8],
        now: OffsetDateTime,
    ) -> Result<Arc<Credential>, AuthError> {
        let auth = sigv4::parse_authorization(parts.headers)?;
        let Some(amz_date) = header(parts.headers, "x-amz-date") else {
            return Err(AuthError::IncompleteSignature(
                "Authorization header requires existence of a 'X-Amz-Date' header.".to_owned(),
            ));
        };
        let request_time = sigv4::parse_amz_date(amz_date)?;
        sigv4::check_scope(&auth, amz_date, &self.region, service)?;
        sigv4::check_clock(request_time, now)?;
        let credential = self.credential(
            auth.access_key_id,
            header(parts.headers, SECURITY_TOKEN_HEADER),
            now,
        )?;
        let payload_hash = sigv4::payload_hash(body);
        if let Some(declared) = header(parts.headers, "x-amz-content-sha256")
            && declared != payload_hash
        {
            return Err(AuthError::InvalidSignature(
                "The provided 'x-amz-content-sha256' header does not match what was computed (the payload must be signed)."
                    .to_owned(),
            ));
        }
        let canonical = sigv4::canonical_request(parts, auth.signed_headers, &payload_hash)?;
        let string_to_sign = sigv4::string_to_sign(amz_date, auth.scope(), &canonical);
        let key = credential.signing_key(auth.scope_date, &self.region, service);
        sigv4::verify_signature(&key, &string_to_sign, auth.signature)?;
        Ok(credential)
    }

    /// The credential of an access key id: static without a token, an STS session with one.
    fn credential(
        &self,
        access_key_id: &str,
        token: Option<&str>,
        now: OffsetDateTime,
    ) -> Result<Arc<Credential>, AuthError> {
        let Some(token) = token else {
            return self
                .credentials
                .get(access_key_id)
                .ok_or(AuthError::UnrecognizedClient);
        };
        if let Ok(sessions) = self.sessions.read()
            && let Some(cached) = sessions.get(access_key_id)
            && bool::from(cached.token.as_bytes().ct_eq(token.as_bytes()))
        {
            if now >= cached.expires_at {
                return Err(AuthError::ExpiredToken);
            }
            return Ok(Arc::clone(&cached.credential));
        }
        let claims = self
            .sealer
            .open(access_key_id, token)
            .map_err(|_| AuthError::UnrecognizedClient)?;
        if now >= claims.expires_at {
            return Err(AuthError::ExpiredToken);
        }
        let expires_at = claims.expires_at;
        let principal = Principal {
            username: claims.username,
            uid: claims.uid,
            groups: claims.groups,
            namespace: claims.namespace,
            access_key_id: claims.access_key_id,
            credential: CredentialKind::Session { expires_at },
        };
        let credential = Arc::new(Credential::new(principal, claims.secret_access_key));
        if let Ok(mut sessions) = self.sessions.write() {
            if sessions.len() >= SESSION_CACHE_CAPACITY {
                sessions.retain(|_, s| s.expires_at > now);
                if sessions.len() >= SESSION_CACHE_CAPACITY {
                    sessions.clear();
                }
            }
            sessions.insert(
                access_key_id.into(),
                Arc::new(CachedSession {
                    token: token.into(),
                    expires_at,
                    credential: Arc::clone(&credential),
                }),
            );
        }
        Ok(credential)
    }
}

#[cfg(test)]
mod tests;
