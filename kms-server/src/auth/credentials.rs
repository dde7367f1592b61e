//! Credentials: a secret access key and the Kubernetes identity it acts as, with the
//! derived SigV4 signing key cached per scope; and the static credentials file, reloaded
//! when it changes.
//!
//! File format (YAML; JSON is YAML too):
//!
//! ```yaml
//! credentials:
//!   - accessKeyId: AKIAKUBEKMSEXAMPLE01      # 16..128 letters, digits, '_'
//!     secretAccessKey: "…40 characters…"      # at least 16 printable ASCII characters
//!     serviceAccount: team-a/app              # acts as system:serviceaccount:team-a:app
//!   - accessKeyId: AKIAKUBEKMSEXAMPLE02
//!     secretAccessKey: "…"
//!     user: alice                             # a Kubernetes user name
//!     groups: [developers]                    # its groups (system:authenticated is added)
//!     namespace: team-a                       # its account: where bare key ids resolve
//! ```
//!
//! The file must not be accessible by others nor writable by its group (a Secret volume
//! with `defaultMode: 0440` or `0400` passes). Errors never quote the file's content.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use aws_lc_rs::{digest, hmac};
use kms_core::SecretBytes;
use serde::Deserialize;

use super::sigv4;
use crate::principal::{CredentialKind, Principal};

/// A secret and the identity it authenticates.
pub struct Credential {
    /// Shared with the audit record of every request it signs.
    principal: Arc<Principal>,
    secret: SecretBytes,
    /// The signing key of the last scope used: requests of one day, one region and one
    /// service all hit it, so the hot path computes one HMAC, not five.
    signing_key: RwLock<Option<(String, Arc<hmac::Key>)>>,
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credential")
            .field("principal", &self.principal)
            .finish_non_exhaustive()
    }
}

impl Credential {
    /// A credential.
    #[must_use]
    pub fn new(principal: Principal, secret: SecretBytes) -> Self {
        Self {
            principal: Arc::new(principal),
            secret,
            signing_key: RwLock::new(None),
        }
    }

    /// Who it acts as.
    #[must_use]
    pub fn principal(&self) -> &Principal {
        &self.principal
    }

    /// Who it acts as, shared (the audit record keeps it without copying).
    #[must_use]
    pub fn shared_principal(&self) -> &Arc<Principal> {
        &self.principal
    }

    /// The SigV4 signing key for `date/region/service`, derived once per scope.
    #[must_use]
    pub fn signing_key(&self, date: &str, region: &str, service: &str) -> Arc<hmac::Key> {
        let scope_matches = |scope: &str| {
            let mut parts = scope.split('/');
            parts.next() == Some(date)
                && parts.next() == Some(region)
                && parts.next() == Some(service)
        };
        if let Ok(cached) = self.signing_key.read()
            && let Some((scope, key)) = cached.as_ref()
            && scope_matches(scope)
        {
            return Arc::clone(key);
        }
        let key = Arc::new(sigv4::derive_signing_key(
            self.secret.expose(),
            date,
            region,
            service,
        ));
        if let Ok(mut cached) = self.signing_key.write() {
            *cached = Some((format!("{date}/{region}/{service}"), Arc::clone(&key)));
        }
        key
    }
}

/// Why the credentials file was refused. Never carries a secret or a line of the file.
#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    /// The file could not be read.
    #[error("credentials file {path}: {error}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        error: std::io::Error,
    },
    /// The file's permissions let others read it.
    #[error(
        "credentials file {path}: mode {mode:04o} lets others access it or its group write it; use 0400, 0440 or 0600"
    )]
    Permissions {
        /// The file.
        path: PathBuf,
        /// Its mode.
        mode: u32,
    },
    /// The file is not valid YAML of the expected shape.
    #[error("credentials file{}: not a valid credentials document{}", .path.as_ref().map(|p| format!(" {}", p.display())).unwrap_or_default(), .location.map(|(l, c)| format!(" (line {l}, column {c})")).unwrap_or_default())]
    Parse {
        /// The file.
        path: Option<PathBuf>,
        /// Line and column of the error.
        location: Option<(usize, usize)>,
    },
    /// An entry breaks a rule.
    #[error("credentials entry {index} (accessKeyId {access_key_id:?}): {problem}")]
    Entry {
        /// 1-based index of the entry.
        index: usize,
        /// Its access key id (not secret).
        access_key_id: String,
        /// What is wrong.
        problem: String,
    },
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct FileDocument {
    #[serde(default)]
    credentials: Vec<FileEntry>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct FileEntry {
    access_key_id: String,
    secret_access_key: SecretString,
    service_account: Option<String>,
    user: Option<String>,
    #[serde(default)]
    groups: Vec<String>,
    namespace: Option<String>,
    uid: Option<String>,
}

/// A string wiped when dropped, read from the file.
struct SecretString(zeroize::Zeroizing<String>);

impl<'de> Deserialize<'de> for SecretString {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Ok(Self(zeroize::Zeroizing::new(String::deserialize(
            deserializer,
        )?)))
    }
}

fn valid_access_key_id(id: &str) -> bool {
    (16..=128).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

fn valid_namespace(ns: &str) -> bool {
    !ns.is_empty()
        && ns.len() <= 63
        && ns
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// The credentials of one version of the file, by access key id.
#[derive(Debug, Default)]
pub struct CredentialSet {
    by_access_key_id: HashMap<String, Arc<Credential>>,
}

impl CredentialSet {
    /// Parses and validates a credentials document.
    ///
    /// # Errors
    /// `Parse` for YAML that is not a credentials document; `Entry` for a rule broken.
    pub fn parse(text: &str, path: Option<&Path>) -> Result<Self, CredentialsError> {
        let document: FileDocument =
            serde_yaml::from_str(text).map_err(|e| CredentialsError::Parse {
                path: path.map(Path::to_path_buf),
                location: e.location().map(|l| (l.line(), l.column())),
            })?;
        let mut by_access_key_id = HashMap::new();
        for (i, entry) in document.credentials.into_iter().enumerate() {
            let fail = |problem: &str| CredentialsError::Entry {
                index: i + 1,
                access_key_id: entry.access_key_id.chars().take(128).collect(),
                problem: problem.to_owned(),
            };
            if !valid_access_key_id(&entry.access_key_id) {
                return Err(fail("accessKeyId must be 16 to 128 letters, digits or '_'"));
            }
            let secret = entry.secret_access_key.0.as_str();
            if secret.len() < 16 || !secret.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(fail(
                    "secretAccessKey must be at least 16 printable ASCII characters without spaces",
                ));
            }
            let (username, namespace, groups) = match (&entry.service_account, &entry.user) {
                (Some(sa), None) => {
                    let Some((namespace, name)) = sa.split_once('/') else {
                        return Err(fail("serviceAccount must be <namespace>/<name>"));
                    };
                    let username = format!(
                        "{}{namespace}:{name}",
                        crate::principal::SERVICE_ACCOUNT_PREFIX
                    );
                    if Principal::parse_service_account(&username).is_none() {
                        return Err(fail(
                            "serviceAccount must be <namespace>/<name> of valid names",
                        ));
                    }
                    if entry.namespace.as_deref().is_some_and(|n| n != namespace) {
                        return Err(fail(
                            "namespace differs from the ServiceAccount's namespace",
                        ));
                    }
                    let mut groups = Principal::service_account_groups(namespace);
                    groups.extend(entry.groups.iter().cloned());
                    (username, namespace.to_owned(), groups)
                }
                (None, Some(user)) => {
                    if user.is_empty() || user.starts_with("system:") {
                        return Err(fail(
                            "user must be a non-empty name outside the system: prefix",
                        ));
                    }
                    let Some(namespace) = entry.namespace.clone() else {
                        return Err(fail(
                            "a user needs namespace: the account its key ids resolve in",
                        ));
                    };
                    let mut groups = entry.groups.clone();
                    if !groups.iter().any(|g| g == "system:authenticated") {
                        groups.push("system:authenticated".to_owned());
                    }
                    (user.clone(), namespace, groups)
                }
                _ => return Err(fail("give exactly one of serviceAccount and user")),
            };
            if !valid_namespace(&namespace) {
                return Err(fail("namespace is not a valid Kubernetes namespace name"));
            }
            let principal = Principal {
                username,
                uid: entry.uid.clone(),
                groups,
                namespace,
                access_key_id: entry.access_key_id.clone(),
                credential: CredentialKind::Static,
            };
            let credential = Credential::new(principal, SecretBytes::from_slice(secret.as_bytes()));
            if by_access_key_id
                .insert(entry.access_key_id.clone(), Arc::new(credential))
                .is_some()
            {
                return Err(fail("accessKeyId appears twice"));
            }
        }
        Ok(Self { by_access_key_id })
    }

    /// Number of credentials.
    #[must_use]
    pub fn len(&self) -> usize {
        self.by_access_key_id.len()
    }

    /// Whether there are none.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.by_access_key_id.is_empty()
    }
}

/// The static credentials in force: a snapshot swapped whole on reload, so a removed or
/// changed key stops working at once (its cached signing keys go with the old snapshot).
#[derive(Debug, Default)]
pub struct StaticCredentials {
    current: RwLock<Arc<CredentialSet>>,
    path: Option<PathBuf>,
    digest: Mutex<Option<Vec<u8>>>,
}

impl StaticCredentials {
    /// No static credentials (STS sessions only).
    #[must_use]
    pub fn empty() -> Self {
        Self::default()
    }

    /// Credentials from a document in memory (tests, or a Secret read through the API).
    ///
    /// # Errors
    /// As [`CredentialSet::parse`].
    pub fn from_yaml(text: &str) -> Result<Self, CredentialsError> {
        Ok(Self {
            current: RwLock::new(Arc::new(CredentialSet::parse(text, None)?)),
            path: None,
            digest: Mutex::new(None),
        })
    }

    /// Loads the credentials file; [`StaticCredentials::reload`] re-reads it.
    ///
    /// # Errors
    /// I/O, permission, parse and entry errors.
    pub fn load(path: &Path) -> Result<Self, CredentialsError> {
        let credentials = Self {
            current: RwLock::new(Arc::new(CredentialSet::default())),
            path: Some(path.to_path_buf()),
            digest: Mutex::new(None),
        };
        credentials.reload()?;
        Ok(credentials)
    }

    /// Re-reads the file when its content changed. Returns whether a new set is in force.
    /// On error the previous set stays in force.
    ///
    /// # Errors
    /// I/O, permission, parse and entry errors.
    pub fn reload(&self) -> Result<bool, CredentialsError> {
        let Some(path) = &self.path else {
            return Ok(false);
        };
        let text = read_private_file(path)?;
        let digest = digest::digest(&digest::SHA256, text.as_bytes())
            .as_ref()
            .to_vec();
        if self
            .digest
            .lock()
            .map(|d| d.as_deref() == Some(digest.as_slice()))
            .unwrap_or(false)
        {
            return Ok(false);
        }
        let set = CredentialSet::parse(&text, Some(path))?;
        if let Ok(mut current) = self.current.write() {
            *current = Arc::new(set);
        }
        if let Ok(mut d) = self.digest.lock() {
            *d = Some(digest);
        }
        Ok(true)
    }

    /// The credential of an access key id.
    #[must_use]
    pub fn get(&self, access_key_id: &str) -> Option<Arc<Credential>> {
        self.current
            .read()
            .ok()
            .and_then(|set| set.by_access_key_id.get(access_key_id).cloned())
    }

    /// Number of credentials in force.
    #[must_use]
    pub fn len(&self) -> usize {
        self.current.read().map(|s| s.len()).unwrap_or(0)
    }

    /// Whether none are in force.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The file, if loaded from one.
    #[must_use]
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }
}

/// Reads a file that holds secrets, refusing it when others may read it or its group may
/// write it. Symbolic links are followed (Secret volumes are made of them).
///
/// # Errors
/// `Io` or `Permissions`.
pub fn read_private_file(path: &Path) -> Result<zeroize::Zeroizing<String>, CredentialsError> {
    use std::io::Read as _;
    use std::os::unix::fs::PermissionsExt as _;
    let io = |error| CredentialsError::Io {
        path: path.to_path_buf(),
        error,
    };
    let mut file = std::fs::File::open(path).map_err(io)?;
    let mode = file.metadata().map_err(io)?.permissions().mode() & 0o777;
    if mode & 0o027 != 0 {
        return Err(CredentialsError::Permissions {
            path: path.to_path_buf(),
            mode,
        });
    }
    let mut text = zeroize::Zeroizing::new(String::new());
    file.read_to_string(&mut text).map_err(io)?;
    Ok(text)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    const DOC: &str = r#"
credentials:
  - accessKeyId: AKIAKUBEKMSTEST0001
    secretAccessKey: "secret-one-0123456789"
    serviceAccount: team-a/app
  - accessKeyId: AKIAKUBEKMSTEST0002
    secretAccessKey: "secret-two-0123456789"
    user: alice
    groups: [developers]
    namespace: team-b
"#;

    #[test]
    fn parses_service_accounts_and_users() {
        let set = StaticCredentials::from_yaml(DOC).expect("valid");
        let sa = set.get("AKIAKUBEKMSTEST0001").expect("sa");
        assert_eq!(sa.principal().username, "system:serviceaccount:team-a:app");
        assert_eq!(sa.principal().namespace, "team-a");
        assert!(
            sa.principal()
                .groups
                .contains(&"system:serviceaccounts:team-a".to_owned())
        );
        let user = set.get("AKIAKUBEKMSTEST0002").expect("user");
        assert_eq!(user.principal().username, "alice");
        assert_eq!(user.principal().namespace, "team-b");
        assert_eq!(
            user.principal().groups,
            ["developers", "system:authenticated"]
        );
        assert!(set.get("AKIAUNKNOWN00000000").is_none());
    }

    #[test]
    fn bad_entries_are_refused_without_quoting_secrets() {
        let cases = [
            (
                "credentials: [{accessKeyId: short, secretAccessKey: s3cr3t-value-0123456, user: a, namespace: n}]",
                "accessKeyId",
            ),
            (
                "credentials: [{accessKeyId: AKIAKUBEKMSTEST0001, secretAccessKey: tiny, user: a, namespace: n}]",
                "secretAccessKey",
            ),
            (
                "credentials: [{accessKeyId: AKIAKUBEKMSTEST0001, secretAccessKey: s3cr3t-value-0123456, user: a}]",
                "namespace",
            ),
            (
                "credentials: [{accessKeyId: AKIAKUBEKMSTEST0001, secretAccessKey: s3cr3t-value-0123456, serviceAccount: x/y, user: a}]",
                "exactly one",
            ),
            (
                "credentials: [{accessKeyId: AKIAKUBEKMSTEST0001, secretAccessKey: s3cr3t-value-0123456, serviceAccount: noslash}]",
                "serviceAccount",
            ),
            (
                "credentials: [{accessKeyId: AKIAKUBEKMSTEST0001, secretAccessKey: s3cr3t-value-0123456, user: system:admin, namespace: n}]",
                "system:",
            ),
            (
                "credentials:\n- {accessKeyId: AKIAKUBEKMSTEST0001, secretAccessKey: s3cr3t-value-0123456, user: a, namespace: n}\n- {accessKeyId: AKIAKUBEKMSTEST0001, secretAccessKey: s3cr3t-value-0123456, user: b, namespace: n}",
                "twice",
            ),
            (
                "credentials: [{accessKeyId: AKIAKUBEKMSTEST0001, secretAccessKey: {s3cr3t-value-0123456: 1}, user: a, namespace: n}]",
                "not a valid",
            ),
        ];
        for (doc, expected) in cases {
            let error = StaticCredentials::from_yaml(doc)
                .expect_err(doc)
                .to_string();
            assert!(error.contains(expected), "{doc}: {error}");
            assert!(!error.contains("s3cr3t"), "secret quoted: {error}");
        }
    }

    #[test]
    fn file_permissions_and_reload() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("credentials.yaml");
        std::fs::write(&path, DOC).expect("write");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        assert!(matches!(
            StaticCredentials::load(&path),
            Err(CredentialsError::Permissions { mode: 0o644, .. })
        ));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o440)).expect("chmod");
        let credentials = StaticCredentials::load(&path).expect("0440 is fine");
        assert_eq!(credentials.len(), 2);
        let before = credentials.get("AKIAKUBEKMSTEST0001").expect("present");
        assert!(
            !credentials.reload().expect("unchanged"),
            "same content: no swap"
        );

        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        let only_user = DOC
            .split("  - accessKeyId: AKIAKUBEKMSTEST0002")
            .collect::<Vec<_>>();
        let second = format!(
            "credentials:\n  - accessKeyId: AKIAKUBEKMSTEST0002{}",
            only_user[1]
        );
        std::fs::write(&path, &second).expect("rewrite");
        assert!(credentials.reload().expect("changed"));
        assert!(
            credentials.get("AKIAKUBEKMSTEST0001").is_none(),
            "removed key stops at once"
        );
        assert_eq!(credentials.len(), 1);
        drop(before);

        std::fs::write(&path, "credentials: [nonsense").expect("break");
        assert!(credentials.reload().is_err());
        assert_eq!(credentials.len(), 1, "a broken file keeps the previous set");
    }

    #[test]
    fn signing_key_is_cached_per_scope() {
        let set = StaticCredentials::from_yaml(DOC).expect("valid");
        let credential = set.get("AKIAKUBEKMSTEST0001").expect("sa");
        let a = credential.signing_key("20260101", "local", "kms");
        let b = credential.signing_key("20260101", "local", "kms");
        assert!(Arc::ptr_eq(&a, &b), "same scope: the cached key");
        let c = credential.signing_key("20260102", "local", "kms");
        assert!(!Arc::ptr_eq(&a, &c), "next day: a new key");
        let expected =
            sigv4::derive_signing_key(b"secret-one-0123456789", "20260102", "local", "kms");
        assert_eq!(
            hmac::sign(&c, b"x").as_ref(),
            hmac::sign(&expected, b"x").as_ref()
        );
    }
}
