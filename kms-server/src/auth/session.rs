//! Stateless STS sessions. The session token seals the session (its secret access key,
//! the Kubernetes identity, audience and expiry) with AES-256-GCM under a key derived from
//! the root key (`DerivedKeyPurpose::StsSession`), the access key id bound as associated
//! data. Any replica holding the same root key opens it; nothing is stored.
//!
//! Token: `kks1.` + base64url(nonce ‖ ciphertext ‖ tag). Plaintext: version byte, issue and
//! expiry times (i64 BE seconds), then length-prefixed (u16 BE) fields.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use kms_core::keystore::{DerivedKeyPurpose, RootKeyStore};
use kms_core::primitives::{self, AesGcmKey, GCM_NONCE_LEN, GCM_TAG_LEN};
use kms_core::{KmsResult, SecretBytes};
use time::OffsetDateTime;

/// Prefix of every session token.
pub const TOKEN_PREFIX: &str = "kks1.";
const PLAINTEXT_VERSION: u8 = 1;
const AAD_LABEL: &[u8] = b"kubekms/sts-session/v1\0";
/// Largest token accepted (bounds the work an attacker can ask for).
pub const MAX_TOKEN_LEN: usize = 16 * 1024;

/// What a session token carries.
#[derive(Debug)]
pub struct SessionClaims {
    /// The session's access key id (`ASIA…`).
    pub access_key_id: String,
    /// The session's secret access key.
    pub secret_access_key: SecretBytes,
    /// The Kubernetes username.
    pub username: String,
    /// The Kubernetes uid.
    pub uid: Option<String>,
    /// The Kubernetes groups.
    pub groups: Vec<String>,
    /// The namespace (the caller's account).
    pub namespace: String,
    /// The audience the web identity token was reviewed for.
    pub audience: String,
    /// When the session was issued.
    pub issued_at: OffsetDateTime,
    /// When it ends.
    pub expires_at: OffsetDateTime,
}

/// The session token could not be opened: forged, tampered with, truncated, for another
/// access key id, or sealed under another root key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the session token is not valid")]
pub struct InvalidSessionToken;

/// Seals and opens session tokens.
pub struct SessionSealer {
    key: AesGcmKey,
}

impl std::fmt::Debug for SessionSealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SessionSealer(<key redacted>)")
    }
}

fn push_field(out: &mut Vec<u8>, field: &[u8]) -> KmsResult<()> {
    let len = u16::try_from(field.len())
        .map_err(|_| kms_core::KmsError::Validation("a session field is too long".to_owned()))?;
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(field);
    Ok(())
}

struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], InvalidSessionToken> {
        if self.bytes.len() < n {
            return Err(InvalidSessionToken);
        }
        let (head, tail) = self.bytes.split_at(n);
        self.bytes = tail;
        Ok(head)
    }

    fn u16(&mut self) -> Result<usize, InvalidSessionToken> {
        let b = self.take(2)?;
        Ok(usize::from(u16::from_be_bytes([b[0], b[1]])))
    }

    fn time(&mut self) -> Result<OffsetDateTime, InvalidSessionToken> {
        let b = self.take(8)?;
        let mut raw = [0u8; 8];
        raw.copy_from_slice(b);
        OffsetDateTime::from_unix_timestamp(i64::from_be_bytes(raw))
            .map_err(|_| InvalidSessionToken)
    }

    fn field(&mut self) -> Result<&'a [u8], InvalidSessionToken> {
        let n = self.u16()?;
        self.take(n)
    }

    fn string(&mut self) -> Result<String, InvalidSessionToken> {
        String::from_utf8(self.field()?.to_vec()).map_err(|_| InvalidSessionToken)
    }
}

impl SessionSealer {
    /// A sealer with a 32-byte key.
    ///
    /// # Errors
    /// `ValidationException` when the key is not 16, 24 or 32 bytes.
    pub fn new(key: &SecretBytes) -> KmsResult<Self> {
        Ok(Self {
            key: AesGcmKey::new(key.expose())?,
        })
    }

    /// The sealer every replica with this root key shares.
    ///
    /// # Errors
    /// `KeyUnavailableException` from the store.
    pub fn from_root_store(store: &dyn RootKeyStore) -> KmsResult<Self> {
        Self::new(&store.derive_key(DerivedKeyPurpose::StsSession)?)
    }

    fn aad(access_key_id: &str) -> Vec<u8> {
        let mut aad = AAD_LABEL.to_vec();
        aad.extend_from_slice(access_key_id.as_bytes());
        aad
    }

    /// Seals a session into a token.
    ///
    /// # Errors
    /// `ValidationException` for a field over 65535 bytes; `KMSInternalException` on a
    /// backend failure.
    pub fn seal(&self, claims: &SessionClaims) -> KmsResult<String> {
        let mut plain = Vec::with_capacity(256);
        plain.push(PLAINTEXT_VERSION);
        plain.extend_from_slice(&claims.issued_at.unix_timestamp().to_be_bytes());
        plain.extend_from_slice(&claims.expires_at.unix_timestamp().to_be_bytes());
        push_field(&mut plain, claims.access_key_id.as_bytes())?;
        push_field(&mut plain, claims.secret_access_key.expose())?;
        push_field(&mut plain, claims.username.as_bytes())?;
        match &claims.uid {
            Some(uid) => {
                plain.push(1);
                push_field(&mut plain, uid.as_bytes())?;
            }
            None => plain.push(0),
        }
        push_field(&mut plain, claims.namespace.as_bytes())?;
        push_field(&mut plain, claims.audience.as_bytes())?;
        let count = u16::try_from(claims.groups.len())
            .map_err(|_| kms_core::KmsError::Validation("too many groups".to_owned()))?;
        plain.extend_from_slice(&count.to_be_bytes());
        for group in &claims.groups {
            push_field(&mut plain, group.as_bytes())?;
        }
        let plain = SecretBytes::new(plain);
        let mut nonce = [0u8; GCM_NONCE_LEN];
        primitives::fill_random(&mut nonce)?;
        let (ciphertext, tag) =
            self.key
                .seal(&nonce, &Self::aad(&claims.access_key_id), plain.expose())?;
        let mut sealed = Vec::with_capacity(GCM_NONCE_LEN + ciphertext.len() + GCM_TAG_LEN);
        sealed.extend_from_slice(&nonce);
        sealed.extend_from_slice(&ciphertext);
        sealed.extend_from_slice(&tag);
        Ok(format!("{TOKEN_PREFIX}{}", URL_SAFE_NO_PAD.encode(sealed)))
    }

    /// Opens a token presented with `access_key_id`. Expiry is the caller's to check
    /// (it needs the clock).
    ///
    /// # Errors
    /// [`InvalidSessionToken`] for anything but an authentic token of this access key id.
    pub fn open(
        &self,
        access_key_id: &str,
        token: &str,
    ) -> Result<SessionClaims, InvalidSessionToken> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(InvalidSessionToken);
        }
        let body = token
            .strip_prefix(TOKEN_PREFIX)
            .ok_or(InvalidSessionToken)?;
        let sealed = URL_SAFE_NO_PAD
            .decode(body)
            .map_err(|_| InvalidSessionToken)?;
        if sealed.len() < GCM_NONCE_LEN + GCM_TAG_LEN {
            return Err(InvalidSessionToken);
        }
        let (nonce, rest) = sealed.split_at(GCM_NONCE_LEN);
        let (ciphertext, tag) = rest.split_at(rest.len() - GCM_TAG_LEN);
        let plain = self
            .key
            .open(nonce, &Self::aad(access_key_id), ciphertext, tag)
            .map_err(|_| InvalidSessionToken)?;
        let mut r = Reader {
            bytes: plain.expose(),
        };
        if r.take(1)? != [PLAINTEXT_VERSION] {
            return Err(InvalidSessionToken);
        }
        let issued_at = r.time()?;
        let expires_at = r.time()?;
        let sealed_access_key_id = r.string()?;
        if sealed_access_key_id != access_key_id {
            return Err(InvalidSessionToken);
        }
        let secret_access_key = SecretBytes::from_slice(r.field()?);
        let username = r.string()?;
        let uid = match r.take(1)? {
            [0] => None,
            [1] => Some(r.string()?),
            _ => return Err(InvalidSessionToken),
        };
        let namespace = r.string()?;
        let audience = r.string()?;
        let count = r.u16()?;
        let mut groups = Vec::with_capacity(count.min(64));
        for _ in 0..count {
            groups.push(r.string()?);
        }
        if !r.bytes.is_empty() {
            return Err(InvalidSessionToken);
        }
        Ok(SessionClaims {
            access_key_id: sealed_access_key_id,
            secret_access_key,
            username,
            uid,
            groups,
            namespace,
            audience,
            issued_at,
            expires_at,
        })
    }
}

/// A new session access key id: `ASIA` and 16 characters of base32 (as AWS's shape).
///
/// # Errors
/// `KMSInternalException` when the RNG fails.
pub fn new_access_key_id() -> KmsResult<String> {
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let mut random = [0u8; 16];
    primitives::fill_random(&mut random)?;
    let mut id = String::from("ASIA");
    for b in random {
        id.push(char::from(ALPHABET[usize::from(b & 31)]));
    }
    Ok(id)
}

/// A new secret access key: 40 characters of base64 (30 random bytes).
///
/// # Errors
/// `KMSInternalException` when the RNG fails.
pub fn new_secret_access_key() -> KmsResult<SecretBytes> {
    let random = primitives::random_secret(30)?;
    Ok(SecretBytes::new(
        base64::engine::general_purpose::STANDARD
            .encode(random.expose())
            .into_bytes(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(access_key_id: &str) -> SessionClaims {
        SessionClaims {
            access_key_id: access_key_id.to_owned(),
            secret_access_key: SecretBytes::from_slice(b"session-secret-0123456789"),
            username: "system:serviceaccount:team-a:app".to_owned(),
            uid: Some("uid-1".to_owned()),
            groups: vec!["system:serviceaccounts".to_owned(), "g2".to_owned()],
            namespace: "team-a".to_owned(),
            audience: "kubekms".to_owned(),
            issued_at: OffsetDateTime::from_unix_timestamp(1_800_000_000).expect("t"),
            expires_at: OffsetDateTime::from_unix_timestamp(1_800_003_600).expect("t"),
        }
    }

    fn sealer(byte: u8) -> SessionSealer {
        SessionSealer::new(&SecretBytes::from_slice(&[byte; 32])).expect("sealer")
    }

    #[test]
    fn seal_open_round_trip_and_nothing_in_clear() {
        let sealer = sealer(7);
        let id = new_access_key_id().expect("id");
        assert!(id.starts_with("ASIA") && id.len() == 20);
        let token = sealer.seal(&claims(&id)).expect("seal");
        assert!(token.starts_with(TOKEN_PREFIX));
        assert!(!token.contains("team-a") && !token.contains("session-secret"));
        let opened = sealer.open(&id, &token).expect("open");
        assert_eq!(opened.username, "system:serviceaccount:team-a:app");
        assert_eq!(
            opened.secret_access_key.expose(),
            b"session-secret-0123456789"
        );
        assert_eq!(opened.groups, ["system:serviceaccounts", "g2"]);
        assert_eq!(opened.uid.as_deref(), Some("uid-1"));
        assert_eq!(opened.expires_at.unix_timestamp(), 1_800_003_600);
        assert_eq!(new_secret_access_key().expect("secret").len(), 40);
    }

    #[test]
    fn forged_tampered_and_foreign_tokens_fail() {
        let sealer = sealer(7);
        let id = "ASIAAAAAAAAAAAAAAAAA";
        let token = sealer.seal(&claims(id)).expect("seal");
        assert_eq!(
            sealer.open("ASIABBBBBBBBBBBBBBBB", &token).map(|_| ()),
            Err(InvalidSessionToken),
            "bound to its access key id"
        );
        assert!(sealer_other_key_fails(&token, id));
        let body = token.strip_prefix(TOKEN_PREFIX).expect("prefix");
        let mut bytes = URL_SAFE_NO_PAD.decode(body).expect("b64");
        for i in [0, 13, bytes.len() / 2, bytes.len() - 1] {
            bytes[i] ^= 1;
            let tampered = format!("{TOKEN_PREFIX}{}", URL_SAFE_NO_PAD.encode(&bytes));
            assert_eq!(
                sealer.open(id, &tampered).map(|_| ()),
                Err(InvalidSessionToken),
                "byte {i}"
            );
            bytes[i] ^= 1;
        }
        for forged in [
            "",
            "kks1.",
            "kks1.!!!!",
            "nope",
            &token[..token.len() - 4],
            &"k".repeat(MAX_TOKEN_LEN + 1),
        ] {
            assert_eq!(
                sealer.open(id, forged).map(|_| ()),
                Err(InvalidSessionToken),
                "{forged:.20}"
            );
        }
    }

    fn sealer_other_key_fails(token: &str, id: &str) -> bool {
        sealer(8).open(id, token).is_err()
    }
}
