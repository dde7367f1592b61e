//! TLS from a certificate and key file pair (PEM), reloaded when either file changes, with
//! rustls on the aws-lc-rs provider; ALPN offers HTTP/2 and HTTP/1.1.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use aws_lc_rs::digest;
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::auth::credentials::read_private_file;

/// Why the certificate or key could not be used. Never quotes the key file.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("{path}: {error}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        error: String,
    },
    /// The certificate file holds no PEM certificate.
    #[error("{0}: no PEM certificate found")]
    NoCertificate(PathBuf),
    /// The key file holds no usable PEM private key.
    #[error("{0}: no usable PEM private key (PKCS#8, PKCS#1 or SEC1)")]
    NoKey(PathBuf),
    /// The key does not match the certificate, or rustls refused them.
    #[error("certificate {cert} and key {key} cannot be used together: {error}")]
    Mismatch {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
        /// rustls's reason.
        error: String,
    },
}

/// The certificate in force, swapped whole when the files change.
#[derive(Debug)]
pub struct CertificateStore {
    certificate: PathBuf,
    private_key: PathBuf,
    provider: Arc<CryptoProvider>,
    current: RwLock<Arc<CertifiedKey>>,
    digest: Mutex<Vec<u8>>,
}

impl CertificateStore {
    /// Loads the pair.
    ///
    /// # Errors
    /// I/O, PEM and mismatch errors; the key file must not be readable by others.
    pub fn load(certificate: &Path, private_key: &Path) -> Result<Arc<Self>, TlsError> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let (key, digest) = load_pair(certificate, private_key, &provider)?;
        Ok(Arc::new(Self {
            certificate: certificate.to_path_buf(),
            private_key: private_key.to_path_buf(),
            provider,
            current: RwLock::new(Arc::new(key)),
            digest: Mutex::new(digest),
        }))
    }

    /// Re-reads the files; swaps in the new pair when they changed and are valid.
    /// Returns whether a new pair is in force.
    ///
    /// # Errors
    /// As [`CertificateStore::load`]; the previous pair stays in force.
    pub fn reload(&self) -> Result<bool, TlsError> {
        let (key, digest) = load_pair(&self.certificate, &self.private_key, &self.provider)?;
        let mut current_digest = self.digest.lock().map_err(|_| TlsError::Io {
            path: self.certificate.clone(),
            error: "poisoned lock".to_owned(),
        })?;
        if *current_digest == digest {
            return Ok(false);
        }
        if let Ok(mut current) = self.current.write() {
            *current = Arc::new(key);
        }
        *current_digest = digest;
        Ok(true)
    }

    /// The rustls server configuration (ALPN h2, http/1.1) resolving to this store.
    ///
    /// # Errors
    /// When rustls refuses the provider's protocol versions.
    pub fn server_config(self: &Arc<Self>) -> Result<Arc<rustls::ServerConfig>, rustls::Error> {
        let mut config = rustls::ServerConfig::builder_with_provider(Arc::clone(&self.provider))
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_cert_resolver(Arc::clone(self) as Arc<dyn ResolvesServerCert>);
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }

    /// The end-entity certificate in force (DER), for tests and logs.
    #[must_use]
    pub fn current_certificate(&self) -> Option<CertificateDer<'static>> {
        self.current
            .read()
            .ok()
            .and_then(|k| k.cert.first().cloned())
    }
}

impl ResolvesServerCert for CertificateStore {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current.read().ok().map(|k| Arc::clone(&k))
    }
}

fn load_pair(
    certificate: &Path,
    private_key: &Path,
    provider: &CryptoProvider,
) -> Result<(CertifiedKey, Vec<u8>), TlsError> {
    let cert_pem = std::fs::read(certificate).map_err(|e| TlsError::Io {
        path: certificate.to_path_buf(),
        error: e.to_string(),
    })?;
    let key_pem = read_private_file(private_key).map_err(|e| TlsError::Io {
        path: private_key.to_path_buf(),
        error: e.to_string(),
    })?;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
        .filter_map(Result::ok)
        .collect();
    if certs.is_empty() {
        return Err(TlsError::NoCertificate(certificate.to_path_buf()));
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
        .map_err(|_| TlsError::NoKey(private_key.to_path_buf()))?;
    let mut context = digest::Context::new(&digest::SHA256);
    context.update(&cert_pem);
    context.update(key_pem.as_bytes());
    let digest = context.finish().as_ref().to_vec();
    let certified =
        CertifiedKey::from_der(certs, key, provider).map_err(|e| TlsError::Mismatch {
            cert: certificate.to_path_buf(),
            key: private_key.to_path_buf(),
            error: e.to_string(),
        })?;
    Ok((certified, digest))
}
