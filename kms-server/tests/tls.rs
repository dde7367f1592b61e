//! TLS: ALPN h2 over a certificate file pair, reload when the files change, refusal of a
//! key file others can read.

mod common;

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use http_body_util::BodyExt as _;
use kubekms_server::Transport;
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, ServerName};

fn openssl(args: &[&str], dir: &Path) {
    let status = std::process::Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .stderr(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .status()
        .expect("openssl");
    assert!(status.success(), "openssl {args:?}");
}

/// A CA (ca.crt) and a leaf for 127.0.0.1 signed by it (tls.crt, tls.key mode 0600).
fn make_certificate(dir: &Path) {
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
    ];
    let mut ca = vec![
        "req",
        "-x509",
        "-days",
        "1",
        "-subj",
        "/CN=kubekms-test-ca",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
    ];
    ca.extend(ec);
    openssl(&ca, dir);
    let mut csr = vec![
        "req",
        "-subj",
        "/CN=localhost",
        "-keyout",
        "tls.key",
        "-out",
        "tls.csr",
    ];
    csr.extend(ec);
    openssl(&csr, dir);
    std::fs::write(
        dir.join("leaf.ext"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .expect("ext");
    openssl(
        &[
            "x509",
            "-req",
            "-in",
            "tls.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "1",
            "-extfile",
            "leaf.ext",
            "-out",
            "tls.crt",
        ],
        dir,
    );
    std::fs::set_permissions(dir.join("tls.key"), std::fs::Permissions::from_mode(0o600))
        .expect("chmod");
}

fn ca(dir: &Path) -> CertificateDer<'static> {
    CertificateDer::from_pem_file(dir.join("ca.crt")).expect("ca")
}

fn certificate(dir: &Path) -> CertificateDer<'static> {
    CertificateDer::from_pem_file(dir.join("tls.crt")).expect("cert")
}

/// Connects, checks the negotiated protocol, sends one signed Encrypt over HTTP/2 and
/// returns the server's certificate and the status.
async fn call(h: &Harness, trusted: &CertificateDer<'static>) -> (CertificateDer<'static>, u16) {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(trusted.clone()).expect("root");
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(h.addr)
        .await
        .expect("connect");
    let tls = connector
        .connect(
            ServerName::try_from("127.0.0.1").expect("name").to_owned(),
            tcp,
        )
        .await
        .expect("TLS handshake");
    let (_, session) = tls.get_ref();
    assert_eq!(
        session.alpn_protocol(),
        Some(&b"h2"[..]),
        "ALPN picks HTTP/2"
    );
    let served = session.peer_certificates().expect("certs")[0]
        .clone()
        .into_owned();
    let (mut sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tls),
    )
    .await
    .expect("h2 handshake");
    tokio::spawn(conn);
    let request = signed_request(
        &format!("https://{}", h.addr),
        Some("TrentService.Encrypt"),
        br#"{"KeyId":"alias/app","Plaintext":"dGxz"}"#,
        ACCESS_KEY,
        SECRET_KEY,
        None,
        time::OffsetDateTime::now_utc(),
    );
    let response = sender.send_request(request).await.expect("send");
    let status = response.status().as_u16();
    response.into_body().collect().await.expect("body");
    (served, status)
}

#[tokio::test]
async fn tls_with_alpn_and_reload_on_change() {
    let dir = tempfile::tempdir().expect("dir");
    make_certificate(dir.path());
    let first = certificate(dir.path());
    let first_ca = ca(dir.path());
    let (cert, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
    let h = start_with(Options {
        transport: Transport::Tls {
            certificate: cert,
            private_key: key,
        },
        configure: Box::new(|c| c.reload_interval = Duration::from_millis(100)),
        ..Options::default()
    })
    .await;
    let (served, status) = call(&h, &first_ca).await;
    assert_eq!((served, status), (first.clone(), 200));

    let next = tempfile::tempdir().expect("dir");
    make_certificate(next.path());
    std::fs::copy(next.path().join("tls.key"), dir.path().join("tls.key")).expect("key");
    std::fs::copy(next.path().join("tls.crt"), dir.path().join("tls.crt")).expect("cert");
    let second = certificate(dir.path());
    let second_ca = ca(next.path());
    assert_ne!(first, second);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !h
        .metrics
        .encode()
        .contains(r#"kubekms_server_certificate_reloads_total{result="changed"} 1"#)
    {
        assert!(
            std::time::Instant::now() < deadline,
            "no reload: {}",
            h.metrics.encode()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (served, status) = call(&h, &second_ca).await;
    assert_eq!(
        (served, status),
        (second, 200),
        "new connections get the new certificate"
    );
    h.stop().await;
}

#[tokio::test]
async fn a_key_file_others_can_read_is_refused() {
    let dir = tempfile::tempdir().expect("dir");
    make_certificate(dir.path());
    std::fs::set_permissions(
        dir.path().join("tls.key"),
        std::fs::Permissions::from_mode(0o644),
    )
    .expect("chmod");
    let config = kubekms_server::ServerConfig::new(
        "127.0.0.1:0".parse().expect("addr"),
        Transport::Tls {
            certificate: dir.path().join("tls.crt"),
            private_key: dir.path().join("tls.key"),
        },
        REGION,
    );
    let (directory, _) = new_directory();
    let dependencies = kubekms_server::Dependencies {
        directory,
        authorizer: Arc::new(kubekms_server::memory::MemoryAuthorizer::new()),
        reviewer: Arc::new(kubekms_server::memory::MemoryReviewer::new()),
        sealer: Arc::new(
            kubekms_server::SessionSealer::new(&kms_core::SecretBytes::from_slice(&[1; 32]))
                .expect("sealer"),
        ),
        credentials: Arc::new(kubekms_server::StaticCredentials::empty()),
        audit: kubekms_server::AuditLog::disabled(),
        readiness: kubekms_server::Readiness::new(true),
        clock: kubekms_server::system_clock(),
    };
    let error = kubekms_server::Server::bind(config, dependencies)
        .await
        .expect_err("refused");
    assert!(error.to_string().contains("0644"), "{error}");
}
