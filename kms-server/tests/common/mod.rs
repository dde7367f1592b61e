//! A real server on loopback over the in-memory directory, for the integration tests.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use kms_core::{KeyId, KeySpec, KeyUsage, KmsKey, SecretBytes};
use kubekms_server::audit::SharedBuffer;
use kubekms_server::memory::{MemoryAuthorizer, MemoryDirectory, MemoryReviewer};
use kubekms_server::{
    AuditLog, Dependencies, Readiness, ResolvedKey, Server, ServerConfig, SessionSealer,
    StaticCredentials, Transport,
};
use time::OffsetDateTime;
use tokio::sync::oneshot;

pub const REGION: &str = "local";
pub const NAMESPACE: &str = "team-a";
pub const ACCESS_KEY: &str = "AKIAKUBEKMSTESTAPP01";
pub const SECRET_KEY: &str = "app-secret-key-0123456789abcdefghijkl";
pub const OTHER_ACCESS_KEY: &str = "AKIAKUBEKMSTESTOTHER";
pub const OTHER_SECRET_KEY: &str = "other-secret-key-0123456789abcdefghij";
pub const APP: &str = "system:serviceaccount:team-a:app";

pub fn credentials_yaml() -> String {
    format!(
        "credentials:\n  - accessKeyId: {ACCESS_KEY}\n    secretAccessKey: \"{SECRET_KEY}\"\n    serviceAccount: team-a/app\n  - accessKeyId: {OTHER_ACCESS_KEY}\n    secretAccessKey: \"{OTHER_SECRET_KEY}\"\n    serviceAccount: team-a/other\n"
    )
}

/// Every key the tests use, by name.
pub struct Keys {
    pub symmetric: Arc<ResolvedKey>,
    pub second: Arc<ResolvedKey>,
    pub disabled: Arc<ResolvedKey>,
    pub served: Arc<ResolvedKey>,
    pub rsa_encrypt: Arc<ResolvedKey>,
    pub rsa_sign: Arc<ResolvedKey>,
    pub ecc_sign: Arc<ResolvedKey>,
    pub ecc_agree: Arc<ResolvedKey>,
    pub hmac: Arc<ResolvedKey>,
    pub foreign: Arc<ResolvedKey>,
}

pub struct Harness {
    pub addr: SocketAddr,
    pub health: SocketAddr,
    pub directory: Arc<MemoryDirectory>,
    pub authorizer: Arc<MemoryAuthorizer>,
    pub reviewer: Arc<MemoryReviewer>,
    pub audit: SharedBuffer,
    pub audit_log: AuditLog,
    pub keys: Keys,
    pub clock_offset: Arc<AtomicI64>,
    pub readiness: Readiness,
    pub sealer: Arc<SessionSealer>,
    pub metrics: Arc<kubekms_server::metrics::ServerMetrics>,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

fn key(spec: KeySpec, usage: KeyUsage) -> KmsKey {
    KmsKey::generate(
        KeyId::generate().expect("id"),
        spec,
        usage,
        OffsetDateTime::now_utc(),
    )
    .expect("key")
}

pub fn new_directory() -> (Arc<MemoryDirectory>, Keys) {
    let directory = Arc::new(MemoryDirectory::new("aws", REGION));
    let symmetric = directory.add_key(
        NAMESPACE,
        "app-key",
        key(KeySpec::SymmetricDefault, KeyUsage::EncryptDecrypt),
        false,
    );
    let second = directory.add_key(
        NAMESPACE,
        "second-key",
        key(KeySpec::SymmetricDefault, KeyUsage::EncryptDecrypt),
        false,
    );
    let mut disabled_key = key(KeySpec::SymmetricDefault, KeyUsage::EncryptDecrypt);
    disabled_key.metadata.disable().expect("disable");
    let disabled = directory.add_key(NAMESPACE, "disabled-key", disabled_key, false);
    let served = directory.add_key(
        NAMESPACE,
        "apiserver-key",
        key(KeySpec::SymmetricDefault, KeyUsage::EncryptDecrypt),
        true,
    );
    let rsa_encrypt = directory.add_key(
        NAMESPACE,
        "rsa-encrypt",
        key(KeySpec::Rsa2048, KeyUsage::EncryptDecrypt),
        false,
    );
    let rsa_sign = directory.add_key(
        NAMESPACE,
        "rsa-sign",
        key(KeySpec::Rsa2048, KeyUsage::SignVerify),
        false,
    );
    let ecc_sign = directory.add_key(
        NAMESPACE,
        "ecc-sign",
        key(KeySpec::EccNistP256, KeyUsage::SignVerify),
        false,
    );
    let ecc_agree = directory.add_key(
        NAMESPACE,
        "ecc-agree",
        key(KeySpec::EccNistP256, KeyUsage::KeyAgreement),
        false,
    );
    let hmac = directory.add_key(
        NAMESPACE,
        "hmac",
        key(KeySpec::Hmac256, KeyUsage::GenerateVerifyMac),
        false,
    );
    let foreign = directory.add_key(
        "team-b",
        "theirs",
        key(KeySpec::SymmetricDefault, KeyUsage::EncryptDecrypt),
        false,
    );
    directory
        .add_alias(NAMESPACE, "alias/app", symmetric.key().key_id())
        .expect("alias");
    directory
        .add_alias(NAMESPACE, "alias/apiserver", served.key().key_id())
        .expect("alias");
    (
        directory,
        Keys {
            symmetric,
            second,
            disabled,
            served,
            rsa_encrypt,
            rsa_sign,
            ecc_sign,
            ecc_agree,
            hmac,
            foreign,
        },
    )
}

pub struct Options {
    pub transport: Transport,
    pub configure: Box<dyn FnOnce(&mut ServerConfig) + Send>,
    pub credentials: Option<Arc<StaticCredentials>>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            transport: Transport::PlainHttp,
            configure: Box::new(|_| {}),
            credentials: None,
        }
    }
}

pub async fn start() -> Harness {
    start_with(Options::default()).await
}

pub async fn start_with(options: Options) -> Harness {
    let (directory, keys) = new_directory();
    let authorizer = Arc::new(MemoryAuthorizer::new());
    authorizer.allow_all(APP, NAMESPACE);
    let reviewer = Arc::new(MemoryReviewer::new());
    let (audit_log, audit) = AuditLog::in_memory().expect("audit");
    let sealer = Arc::new(SessionSealer::new(&SecretBytes::from_slice(&[42; 32])).expect("sealer"));
    let clock_offset = Arc::new(AtomicI64::new(0));
    let offset = Arc::clone(&clock_offset);
    let readiness = Readiness::new(true);
    let credentials = options.credentials.unwrap_or_else(|| {
        Arc::new(StaticCredentials::from_yaml(&credentials_yaml()).expect("credentials"))
    });
    let mut config = ServerConfig::new(
        "127.0.0.1:0".parse().expect("addr"),
        options.transport,
        REGION,
    );
    config.health_listen = Some("127.0.0.1:0".parse().expect("addr"));
    (options.configure)(&mut config);
    let dependencies = Dependencies {
        directory: directory.clone(),
        authorizer: authorizer.clone(),
        reviewer: reviewer.clone(),
        sealer: Arc::clone(&sealer),
        credentials,
        audit: audit_log.clone(),
        readiness: readiness.clone(),
        clock: Arc::new(move || {
            OffsetDateTime::now_utc() + time::Duration::seconds(offset.load(Ordering::Relaxed))
        }),
    };
    let server = Server::bind(config, dependencies).await.expect("bind");
    let addr = server.local_addr().expect("addr");
    let health = server.health_addr().expect("health addr");
    let metrics = server.metrics();
    let (shutdown, stop) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        server
            .run(async move {
                let _ = stop.await;
            })
            .await
            .expect("run");
    });
    Harness {
        addr,
        health,
        directory,
        authorizer,
        reviewer,
        audit,
        audit_log,
        keys,
        clock_offset,
        readiness,
        sealer,
        metrics,
        shutdown: Some(shutdown),
        task: Some(task),
    }
}

impl Harness {
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops the server and waits for it (in-flight requests finish, audit flushed).
    pub async fn stop(mut self) -> String {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.expect("server task");
        }
        self.audit_log.flush().await;
        self.audit.text()
    }

    pub async fn audit_text(&self) -> String {
        self.audit_log.flush().await;
        self.audit.text()
    }

    pub fn kms_client(
        &self,
        access_key: &str,
        secret: &str,
        token: Option<&str>,
    ) -> aws_sdk_kms::Client {
        let credentials = aws_credential_types::Credentials::new(
            access_key,
            secret,
            token.map(str::to_owned),
            None,
            "kubekms-test",
        );
        let config = aws_sdk_kms::Config::builder()
            .behavior_version(aws_sdk_kms::config::BehaviorVersion::latest())
            .region(aws_sdk_kms::config::Region::new(REGION))
            .credentials_provider(credentials)
            .endpoint_url(self.endpoint())
            .build();
        aws_sdk_kms::Client::from_conf(config)
    }

    pub fn app_client(&self) -> aws_sdk_kms::Client {
        self.kms_client(ACCESS_KEY, SECRET_KEY, None)
    }
}

/// A request signed by `aws-sigv4` (as the Rust SDK signs), for raw HTTP tests.
pub fn signed_request(
    endpoint: &str,
    target: Option<&str>,
    body: &[u8],
    access_key: &str,
    secret: &str,
    token: Option<&str>,
    at: OffsetDateTime,
) -> http::Request<http_body_util::Full<bytes::Bytes>> {
    use kubekms_server::test_util::sign_v4;
    let uri: http::Uri = format!("{endpoint}/").parse().expect("uri");
    let host = uri.authority().expect("authority").to_string();
    let mut builder = http::Request::builder()
        .method("POST")
        .uri(uri)
        .header("host", host)
        .header("content-type", "application/x-amz-json-1.1");
    if let Some(target) = target {
        builder = builder.header("x-amz-target", target);
    }
    let mut request = builder.body(body.to_vec()).expect("request");
    sign_v4(
        &mut request,
        access_key,
        secret,
        token,
        REGION,
        std::time::SystemTime::from(at),
    );
    request.map(|b| http_body_util::Full::new(bytes::Bytes::from(b)))
}

/// Sends a request over HTTP/1.1 (or HTTP/2 with prior knowledge) and returns status,
/// headers and body.
pub async fn send(
    request: http::Request<http_body_util::Full<bytes::Bytes>>,
    http2: bool,
) -> (u16, http::HeaderMap, Vec<u8>) {
    use http_body_util::BodyExt as _;
    let mut builder =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new());
    if http2 {
        builder.http2_only(true);
    }
    let client = builder.build_http();
    let response = client.request(request).await.expect("response");
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes()
        .to_vec();
    (status, headers, body)
}

/// `__type` of a JSON error body.
pub fn error_type(body: &[u8]) -> String {
    let value: serde_json::Value = serde_json::from_slice(body).expect("json error body");
    value["__type"].as_str().expect("__type").to_owned()
}
