//! HTTP: the axum router (`POST /` for KMS and STS), the accept loop (HTTP/1.1 and HTTP/2:
//! h2c by prior knowledge when plain, ALPN with TLS), TLS and credential reloads, the
//! health/readiness/metrics listener, and graceful shutdown.
//!
//! One request, one straight path: read the body (bounded) → dispatch on the content type
//! (form → STS, otherwise KMS) → authenticate → decode → execute (resolve, rules,
//! authorize, core) → encode → audit.

use std::borrow::Cow;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, Request, Response, StatusCode, header};
use axum::routing::get;
use bytes::Bytes;
use http_body_util::BodyExt as _;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};

use crate::audit::{AuditLog, AuditRecord, UserIdentity};
use crate::auth::{Authenticator, SessionSealer, SignedParts, StaticCredentials};
use crate::authorize::Authorizer;
use crate::directory::KeyDirectory;
use crate::error::ApiError;
use crate::execute::{Services, Trail, execute};
use crate::metrics::ServerMetrics;
use crate::protocol::json::JsonWriter;
use crate::protocol::operation::ApiOperation;
use crate::protocol::{decode, response};
use crate::sts::{self, StsConfig, StsError, StsRequest, TokenReviewer, WebIdentityExchange};
use crate::tls::CertificateStore;

/// `Content-Type` of KMS replies.
pub const KMS_CONTENT_TYPE: &str = "application/x-amz-json-1.1";
/// The request id header.
pub const REQUEST_ID_HEADER: &str = "x-amzn-requestid";

/// How the API listener speaks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transport {
    /// TLS with this certificate chain and private key (PEM files, reloaded on change).
    Tls {
        /// Certificate chain file.
        certificate: std::path::PathBuf,
        /// Private key file (not readable by others).
        private_key: std::path::PathBuf,
    },
    /// Plain HTTP: only when asked explicitly (behind a mesh or on loopback in tests).
    PlainHttp,
}

/// Settings of the server.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Address of the KMS/STS API.
    pub listen: SocketAddr,
    /// Address of /healthz, /readyz and /metrics (none: not served).
    pub health_listen: Option<SocketAddr>,
    /// TLS or plain HTTP.
    pub transport: Transport,
    /// The region requests are scoped to and ARNs carry.
    pub region: String,
    /// The ARN partition.
    pub partition: String,
    /// Largest request body, in bytes.
    pub body_limit: usize,
    /// Longest time to receive a request body.
    pub body_timeout: Duration,
    /// Longest time to receive HTTP/1 request headers.
    pub header_timeout: Duration,
    /// Longest TLS handshake.
    pub handshake_timeout: Duration,
    /// Longest wait for an authorization decision.
    pub authorize_timeout: Duration,
    /// Concurrent private-key operations on the blocking pool.
    pub max_blocking: usize,
    /// How often the credentials file and the certificate are checked for changes.
    pub reload_interval: Duration,
    /// How long in-flight requests may finish after shutdown starts.
    pub shutdown_grace: Duration,
    /// The STS endpoint.
    pub sts: StsConfig,
}

impl ServerConfig {
    /// Settings with defaults: 256 KiB bodies, 10 s timeouts, reloads every 10 s.
    #[must_use]
    pub fn new(listen: SocketAddr, transport: Transport, region: impl Into<String>) -> Self {
        Self {
            listen,
            health_listen: None,
            transport,
            region: region.into(),
            partition: "aws".to_owned(),
            body_limit: 256 * 1024,
            body_timeout: Duration::from_secs(10),
            header_timeout: Duration::from_secs(10),
            handshake_timeout: Duration::from_secs(10),
            authorize_timeout: Duration::from_secs(5),
            max_blocking: std::thread::available_parallelism().map_or(2, |n| n.get() * 2),
            reload_interval: Duration::from_secs(10),
            shutdown_grace: Duration::from_secs(20),
            sts: StsConfig::default(),
        }
    }
}

/// The clock requests are judged by (SigV4 skew, session expiry); tests inject a skewed one.
pub type Clock = Arc<dyn Fn() -> OffsetDateTime + Send + Sync>;

/// Readiness as /readyz reports it: the Kubernetes layer sets it once its keyring has
/// synced.
#[derive(Debug, Clone, Default)]
pub struct Readiness(Arc<AtomicBool>);

impl Readiness {
    /// A flag, initially `ready`.
    #[must_use]
    pub fn new(ready: bool) -> Self {
        Self(Arc::new(AtomicBool::new(ready)))
    }

    /// Sets the flag.
    pub fn set(&self, ready: bool) {
        self.0.store(ready, Ordering::Release);
    }

    /// Reads the flag.
    #[must_use]
    pub fn is_ready(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

/// What the server is built on: the seams of the Kubernetes layer and the identity stores.
#[derive(Clone)]
pub struct Dependencies {
    /// Keys, aliases, grants, tags, account ids.
    pub directory: Arc<dyn KeyDirectory>,
    /// Authorization.
    pub authorizer: Arc<dyn Authorizer>,
    /// Web identity token review.
    pub reviewer: Arc<dyn TokenReviewer>,
    /// Seals STS sessions (`SessionSealer::from_root_store`).
    pub sealer: Arc<SessionSealer>,
    /// Static credentials (`StaticCredentials::load` or `empty`).
    pub credentials: Arc<StaticCredentials>,
    /// Where audit records go.
    pub audit: AuditLog,
    /// /readyz.
    pub readiness: Readiness,
    /// The clock.
    pub clock: Clock,
}

impl std::fmt::Debug for Dependencies {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dependencies").finish_non_exhaustive()
    }
}

/// The system clock.
#[must_use]
pub fn system_clock() -> Clock {
    Arc::new(OffsetDateTime::now_utc)
}

/// Why the server could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// A listener could not be bound.
    #[error("cannot listen on {address}: {error}")]
    Bind {
        /// The address.
        address: SocketAddr,
        /// The error.
        error: std::io::Error,
    },
    /// TLS could not be set up.
    #[error("TLS: {0}")]
    Tls(String),
}

/// Shared by every request.
struct AppState {
    config: ServerConfig,
    authenticator: Authenticator,
    services: Services,
    reviewer: Arc<dyn TokenReviewer>,
    audit: AuditLog,
    metrics: Arc<ServerMetrics>,
    clock: Clock,
}

/// The peer address of a connection, put into each request's extensions.
#[derive(Debug, Clone, Copy)]
pub struct SourceAddress(pub SocketAddr);

/// A request id: a random UUID (version 4). Random rather than a counter: ids are
/// returned to every caller, and a counter would tell each account how many requests
/// the other accounts make.
fn request_id() -> String {
    let mut random = [0u8; 16];
    if kms_core::primitives::fill_random(&mut random).is_err() {
        return uuid::Uuid::new_v4().to_string();
    }
    uuid::Builder::from_random_bytes(random)
        .into_uuid()
        .hyphenated()
        .to_string()
}

fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

fn is_form(headers: &HeaderMap) -> bool {
    const FORM: &str = "application/x-www-form-urlencoded";
    header_str(headers, header::CONTENT_TYPE.as_str()).is_some_and(|ct| {
        ct.trim_start()
            .get(..FORM.len())
            .is_some_and(|start| start.eq_ignore_ascii_case(FORM))
    })
}

/// The body of every API reply: one buffer, its length known (hyper writes
/// `Content-Length` from it).
pub type ReplyBody = http_body_util::Full<Bytes>;

fn reply(
    status: StatusCode,
    content_type: &'static str,
    request_id: &str,
    body: Bytes,
) -> Response<ReplyBody> {
    static REQUEST_ID: header::HeaderName = header::HeaderName::from_static(REQUEST_ID_HEADER);
    let mut response = Response::new(ReplyBody::new(body));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.reserve(2);
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    if let Ok(id) = HeaderValue::from_str(request_id) {
        headers.insert(REQUEST_ID.clone(), id);
    }
    response
}

/// The JSON body of an error: `{"__type": "<name>", "message": "..."}`.
#[must_use]
pub fn error_body(error: &ApiError) -> Vec<u8> {
    let message = error.to_string();
    let mut w = JsonWriter::with_capacity(64 + message.len());
    w.string("__type", error.aws_exception_name())
        .string("message", &message);
    w.finish()
}

enum BodyError {
    TooLarge,
    Timeout,
    Broken,
}

/// How much of an oversized body is read and thrown away before the 413 reply, and for
/// how long at most. A client that is still sending when the server closes gets a
/// connection reset instead of the reply (the kernel answers unread data with RST, which
/// also discards the reply from the client's receive queue); reading the rest first lets
/// it read the 413. Bounded, so a huge or endless body costs at most this much.
const DRAIN_LIMIT: usize = 4 * 1024 * 1024;
const DRAIN_TIME: Duration = Duration::from_secs(2);

async fn read_body<B>(
    mut body: B,
    headers: &HeaderMap,
    limit: usize,
    timeout: Duration,
) -> Result<Bytes, BodyError>
where
    B: hyper::body::Body<Data = Bytes> + Unpin,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    if header_str(headers, header::CONTENT_LENGTH.as_str())
        .and_then(|l| l.parse::<u64>().ok())
        .is_some_and(|l| l > limit as u64)
    {
        // A client that asked `Expect: 100-continue` sends nothing until the body is read:
        // reading it would invite the very body that is refused.
        if !expects_continue(headers) {
            drain(&mut body, timeout.min(DRAIN_TIME)).await;
        }
        return Err(BodyError::TooLarge);
    }
    let limited = http_body_util::Limited::new(&mut body, limit);
    let result = match tokio::time::timeout(timeout, limited.collect()).await {
        Err(_) => Err(BodyError::Timeout),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => Err(BodyError::TooLarge),
        Ok(Err(_)) => Err(BodyError::Broken),
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
    };
    if matches!(result, Err(BodyError::TooLarge)) {
        drain(&mut body, timeout.min(DRAIN_TIME)).await;
    }
    result
}

fn expects_continue(headers: &HeaderMap) -> bool {
    header_str(headers, header::EXPECT.as_str())
        .is_some_and(|e| e.trim().eq_ignore_ascii_case("100-continue"))
}

/// Reads and discards the rest of `body`: until its end, [`DRAIN_LIMIT`] bytes, an error
/// or `within`, whichever comes first.
async fn drain<B>(body: &mut B, within: Duration)
where
    B: hyper::body::Body<Data = Bytes> + Unpin,
{
    let deadline = tokio::time::Instant::now() + within;
    let mut drained = 0usize;
    while drained <= DRAIN_LIMIT {
        match tokio::time::timeout_at(deadline, body.frame()).await {
            Ok(Some(Ok(frame))) => {
                drained += frame.data_ref().map_or(0, bytes::Buf::remaining);
            }
            Ok(None | Some(Err(_))) | Err(_) => return,
        }
    }
}

/// One request to the API listener: `POST /` is a KMS or STS call; anything else is 404
/// (UnknownOperationException).
async fn api<B>(
    state: &AppState,
    source: Option<SocketAddr>,
    request: Request<B>,
) -> Response<ReplyBody>
where
    B: hyper::body::Body<Data = Bytes> + Unpin,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    if request.method() != http::Method::POST || request.uri().path() != "/" {
        return not_found();
    }
    let started = Instant::now();
    let now = (state.clock)();
    let request_id = request_id();
    let (parts, body) = request.into_parts();
    let form = is_form(&parts.headers);
    let body = match read_body(
        body,
        &parts.headers,
        state.config.body_limit,
        state.config.body_timeout,
    )
    .await
    {
        Ok(body) => Ok(body),
        Err(BodyError::TooLarge) => Err(ApiError::RequestTooLarge {
            limit: state.config.body_limit,
        }),
        Err(BodyError::Timeout) => Err(ApiError::Serialization(
            "The request body was not received in time".to_owned(),
        )),
        Err(BodyError::Broken) => Err(ApiError::Serialization(
            "The request body could not be read".to_owned(),
        )),
    };
    if form {
        handle_sts(state, &parts, body, now, &request_id, source, started).await
    } else {
        handle_kms(state, &parts, body, now, &request_id, source, started).await
    }
}

fn new_record(
    source: &'static str,
    parts: &http::request::Parts,
    request_id: &str,
    now: OffsetDateTime,
    peer: Option<SocketAddr>,
) -> AuditRecord {
    let mut record = AuditRecord::new(source, request_id, now);
    record.source_ip_address = peer.map(|a| a.ip().to_string());
    record.user_agent = header_str(&parts.headers, header::USER_AGENT.as_str())
        .map(|ua| ua.chars().take(256).collect());
    record
}

async fn handle_kms(
    state: &AppState,
    parts: &http::request::Parts,
    body: Result<Bytes, ApiError>,
    now: OffsetDateTime,
    request_id: &str,
    peer: Option<SocketAddr>,
    started: Instant,
) -> Response<ReplyBody> {
    let mut record = new_record("kms", parts, request_id, now, peer);
    let mut trail = Trail::default();
    let mut operation = None;
    let result = match body {
        Ok(body) => {
            kms_path(
                state,
                parts,
                &body,
                now,
                &mut record,
                &mut trail,
                &mut operation,
            )
            .await
        }
        Err(e) => Err(e),
    };
    record.resources = trail.key_arns;
    record.authorized_by = trail
        .allowed
        .iter()
        .map(|a| match a {
            crate::authorize::Allowed::Rbac => Cow::Borrowed("rbac"),
            crate::authorize::Allowed::Grant { grant_id } => {
                Cow::Owned(format!("grant:{grant_id}"))
            }
            crate::authorize::Allowed::Other(what) => Cow::Owned(what.clone()),
        })
        .collect();
    record.deny_reason = trail.denied;
    let (status, body, outcome) = match result {
        Ok(response) => (StatusCode::OK, response::encode(&response), "Success"),
        Err(error) => {
            if error.status().is_server_error() {
                tracing::warn!(request_id, error = %error, code = error.aws_exception_name(), "KMS request failed");
            } else {
                tracing::debug!(
                    request_id,
                    code = error.aws_exception_name(),
                    "KMS request refused"
                );
            }
            record.error_code = Some(error.aws_exception_name());
            record.error_message = Some(error.to_string());
            (
                error.status(),
                error_body(&error),
                error.aws_exception_name(),
            )
        }
    };
    record.status = status.as_u16();
    let elapsed = started.elapsed();
    record.duration_us = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
    state.audit.record(&record).await;
    state
        .metrics
        .observe_kms(operation, outcome, elapsed.as_secs_f64());
    reply(status, KMS_CONTENT_TYPE, request_id, Bytes::from(body))
}

async fn kms_path(
    state: &AppState,
    parts: &http::request::Parts,
    body: &[u8],
    now: OffsetDateTime,
    record: &mut AuditRecord,
    trail: &mut Trail,
    operation_out: &mut Option<ApiOperation>,
) -> Result<response::KmsResponse, ApiError> {
    let target = header_str(&parts.headers, "x-amz-target");
    let operation = target.and_then(ApiOperation::from_target);
    *operation_out = operation;
    record.event_name = match (operation, target) {
        (Some(op), _) => op.as_str().to_owned(),
        (None, Some(target)) => target.chars().take(128).collect(),
        (None, None) => String::new(),
    };
    let signed = SignedParts {
        method: &parts.method,
        uri: &parts.uri,
        headers: &parts.headers,
    };
    let credential = state.authenticator.authenticate("kms", signed, body, now)?;
    let principal = credential.principal();
    record.user_identity = Some(UserIdentity::of(credential.shared_principal()));
    let Some(operation) = operation else {
        return Err(ApiError::UnknownOperation(match target {
            Some(_) => "The X-Amz-Target header names no operation this server offers".to_owned(),
            None => "The X-Amz-Target header is missing".to_owned(),
        }));
    };
    let request = decode::decode(operation, body)?;
    {
        let mut contexts = request.encryption_contexts();
        if let Some(first) = contexts.next().filter(|c| !c.is_empty()) {
            record.encryption_context = Some(first.as_map().clone());
        }
        if let Some(second) = contexts.next().filter(|c| !c.is_empty()) {
            record.destination_encryption_context = Some(second.as_map().clone());
        }
    }
    record.grant_token_count = request.grant_token_count();
    record.dry_run = request.dry_run();
    execute(&state.services, principal, request, trail).await
}

async fn handle_sts(
    state: &AppState,
    parts: &http::request::Parts,
    body: Result<Bytes, ApiError>,
    now: OffsetDateTime,
    request_id: &str,
    peer: Option<SocketAddr>,
    started: Instant,
) -> Response<ReplyBody> {
    let mut record = new_record("sts", parts, request_id, now, peer);
    record.event_name = "AssumeRoleWithWebIdentity".to_owned();
    let result = match body {
        Ok(body) => sts_path(state, &body, now, &mut record).await,
        Err(ApiError::RequestTooLarge { limit }) => Err(StsError {
            code: "RequestEntityTooLarge",
            message: format!("The request body exceeds the limit of {limit} bytes"),
            status: 413,
        }),
        Err(e) => Err(StsError {
            code: "MalformedInput",
            message: e.to_string(),
            status: 400,
        }),
    };
    let (status, body, outcome): (u16, Bytes, &'static str) = match result {
        Ok(xml) => (200, Bytes::from(xml.as_bytes().to_vec()), "Success"),
        Err(error) => {
            tracing::debug!(request_id, code = error.code, "STS request refused");
            record.error_code = Some(error.code);
            record.error_message = Some(error.message.clone());
            (
                error.status,
                Bytes::from(sts::encode_error(&error, request_id)),
                error.code,
            )
        }
    };
    record.status = status;
    let elapsed = started.elapsed();
    record.duration_us = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
    state.audit.record(&record).await;
    state.metrics.observe(
        "sts",
        "AssumeRoleWithWebIdentity",
        outcome,
        elapsed.as_secs_f64(),
    );
    reply(
        StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST),
        "text/xml",
        request_id,
        body,
    )
}

async fn sts_path(
    state: &AppState,
    body: &[u8],
    now: OffsetDateTime,
    record: &mut AuditRecord,
) -> Result<zeroize::Zeroizing<String>, StsError> {
    let StsRequest::AssumeRoleWithWebIdentity(request) = sts::parse_request(body)?;
    record
        .request_parameters
        .insert("roleArn", request.role_arn.clone());
    record
        .request_parameters
        .insert("roleSessionName", request.role_session_name.clone());
    let directory = Arc::clone(&state.services.directory);
    let account_id = move |namespace: &str| directory.account_id(namespace);
    let exchange = WebIdentityExchange {
        reviewer: state.reviewer.as_ref(),
        sealer: state.authenticator.sealer(),
        config: &state.config.sts,
        partition: &state.config.partition,
        account_id: &account_id,
    };
    let issued = exchange.assume_role(&request, now).await?;
    record.user_identity = Some(UserIdentity::web_identity(
        &issued.username,
        &issued.namespace,
        &issued.access_key_id,
    ));
    record.request_parameters.insert(
        "expiration",
        issued.expiration.format(&Rfc3339).unwrap_or_default(),
    );
    Ok(sts::encode_assume_role(&issued, &record.request_id))
}

fn not_found() -> Response<ReplyBody> {
    let error = ApiError::UnknownOperation(
        "KubeKMS answers POST / only (AWS JSON 1.1 KMS requests and STS query requests)".to_owned(),
    );
    reply(
        StatusCode::NOT_FOUND,
        KMS_CONTENT_TYPE,
        &request_id(),
        Bytes::from(error_body(&error)),
    )
}

/// The server, bound and ready to run.
pub struct Server {
    state: Arc<AppState>,
    listener: TcpListener,
    health_listener: Option<TcpListener>,
    certificates: Option<Arc<CertificateStore>>,
    readiness: Readiness,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("listen", &self.listener.local_addr().ok())
            .finish_non_exhaustive()
    }
}

async fn bind(address: SocketAddr) -> Result<TcpListener, ServeError> {
    TcpListener::bind(address)
        .await
        .map_err(|error| ServeError::Bind { address, error })
}

impl Server {
    /// Binds the listeners and loads TLS; nothing is served until [`Server::run`].
    ///
    /// # Errors
    /// Bind and TLS errors.
    pub async fn bind(
        config: ServerConfig,
        dependencies: Dependencies,
    ) -> Result<Self, ServeError> {
        Self::bind_with_metrics(config, dependencies, Arc::new(ServerMetrics::new())).await
    }

    /// As [`Server::bind`], counting into `metrics` (made with
    /// [`ServerMetrics::with_extra`] to serve other metrics on /metrics too).
    ///
    /// # Errors
    /// Bind and TLS errors.
    pub async fn bind_with_metrics(
        config: ServerConfig,
        dependencies: Dependencies,
        metrics: Arc<ServerMetrics>,
    ) -> Result<Self, ServeError> {
        let certificates = match &config.transport {
            Transport::Tls {
                certificate,
                private_key,
            } => Some(
                CertificateStore::load(certificate, private_key)
                    .map_err(|e| ServeError::Tls(e.to_string()))?,
            ),
            Transport::PlainHttp => None,
        };
        let listener = bind(config.listen).await?;
        let health_listener = match config.health_listen {
            Some(address) => Some(bind(address).await?),
            None => None,
        };
        let state = Arc::new(AppState {
            authenticator: Authenticator::new(
                config.region.clone(),
                Arc::clone(&dependencies.credentials),
                Arc::clone(&dependencies.sealer),
            ),
            services: Services {
                directory: dependencies.directory,
                authorizer: dependencies.authorizer,
                blocking: Arc::new(Semaphore::new(config.max_blocking.max(1))),
                authorize_timeout: config.authorize_timeout,
            },
            reviewer: dependencies.reviewer,
            audit: dependencies.audit,
            metrics,
            clock: dependencies.clock,
            config,
        });
        Ok(Self {
            state,
            listener,
            health_listener,
            certificates,
            readiness: dependencies.readiness,
        })
    }

    /// The API's address.
    ///
    /// # Errors
    /// When the socket has no address.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// The health listener's address.
    #[must_use]
    pub fn health_addr(&self) -> Option<SocketAddr> {
        self.health_listener
            .as_ref()
            .and_then(|l| l.local_addr().ok())
    }

    /// The metrics.
    #[must_use]
    pub fn metrics(&self) -> Arc<ServerMetrics> {
        Arc::clone(&self.state.metrics)
    }

    /// The API router (tests drive it without sockets).
    pub fn router(&self) -> Router {
        api_router(Arc::clone(&self.state))
    }

    /// Serves until `shutdown` completes, then stops accepting, lets in-flight requests
    /// finish (up to the grace period) and flushes the audit log.
    ///
    /// # Errors
    /// TLS setup errors.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send) -> Result<(), ServeError> {
        let Self {
            state,
            listener,
            health_listener,
            certificates,
            readiness,
        } = self;
        let (stop_tx, stop_rx) = watch::channel(false);
        let tls = match &certificates {
            Some(store) => Some(tokio_rustls::TlsAcceptor::from(
                store
                    .server_config()
                    .map_err(|e| ServeError::Tls(e.to_string()))?,
            )),
            None => None,
        };
        let reloads = tokio::spawn(reload_loop(
            Arc::clone(&state),
            certificates,
            stop_rx.clone(),
        ));
        let health = health_listener.map(|listener| {
            let router = health_router(Arc::clone(&state.metrics), readiness);
            let mut stop = stop_rx.clone();
            tokio::spawn(async move {
                let stopped = async move {
                    let _ = stop.wait_for(|s| *s).await;
                };
                if let Err(e) = axum::serve(listener, router)
                    .with_graceful_shutdown(stopped)
                    .await
                {
                    tracing::error!(error = %e, "health listener stopped");
                }
            })
        });
        let graceful = GracefulShutdown::new();
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(state.config.header_timeout)
            .keep_alive(true);
        builder
            .http2()
            .timer(TokioTimer::new())
            .max_concurrent_streams(256)
            .keep_alive_interval(Some(Duration::from_secs(30)))
            .keep_alive_timeout(Duration::from_secs(20));
        let builder = Arc::new(builder);
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                () = &mut shutdown => break,
                accepted = listener.accept() => {
                    let (stream, peer) = match accepted {
                        Ok(accepted) => accepted,
                        Err(e) => {
                            tracing::warn!(error = %e, "accept failed");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    };
                    let _ = stream.set_nodelay(true);
                    let watcher = graceful.watcher();
                    let state = Arc::clone(&state);
                    let builder = Arc::clone(&builder);
                    let tls = tls.clone();
                    let handshake_timeout = state.config.handshake_timeout;
                    tokio::spawn(async move {
                        let service = hyper::service::service_fn(move |request: Request<hyper::body::Incoming>| {
                            let state = Arc::clone(&state);
                            async move { Ok::<_, std::convert::Infallible>(api(&state, Some(peer), request).await) }
                        });
                        let served = match tls {
                            None => watcher.watch(builder.serve_connection(TokioIo::new(stream), service).into_owned()).await,
                            Some(acceptor) => {
                                let stream = match tokio::time::timeout(handshake_timeout, acceptor.accept(stream)).await {
                                    Ok(Ok(stream)) => stream,
                                    Ok(Err(e)) => {
                                        tracing::debug!(%peer, error = %e, "TLS handshake failed");
                                        return;
                                    }
                                    Err(_) => {
                                        tracing::debug!(%peer, "TLS handshake timed out");
                                        return;
                                    }
                                };
                                watcher.watch(builder.serve_connection(TokioIo::new(stream), service).into_owned()).await
                            }
                        };
                        if let Err(e) = served {
                            tracing::debug!(%peer, error = %e, "connection ended with an error");
                        }
                    });
                }
            }
        }
        drop(listener);
        tracing::info!(
            connections = graceful.count(),
            "shutting down: draining connections"
        );
        if tokio::time::timeout(state.config.shutdown_grace, graceful.shutdown())
            .await
            .is_err()
        {
            tracing::warn!("connections still open after the grace period; closing them");
        }
        let _ = stop_tx.send(true);
        let _ = reloads.await;
        if let Some(health) = health {
            let _ = health.await;
        }
        state.audit.flush().await;
        Ok(())
    }
}

/// Binds and serves until `shutdown` completes: what `kubekms-server`'s `main` calls.
///
/// # Errors
/// Bind and TLS errors.
pub async fn serve(
    config: ServerConfig,
    dependencies: Dependencies,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    Server::bind(config, dependencies)
        .await?
        .run(shutdown)
        .await
}

/// The API as an axum router (what [`Server::router`] gives tests): the same [`api`] as
/// the listener serves, with the peer address from the request's [`SourceAddress`]
/// extension when a test sets one.
fn api_router(state: Arc<AppState>) -> Router {
    Router::new().fallback(move |request: Request<Body>| {
        let state = Arc::clone(&state);
        async move {
            let source = request.extensions().get::<SourceAddress>().map(|s| s.0);
            api(&state, source, request).await.map(Body::new)
        }
    })
}

fn health_router(metrics: Arc<ServerMetrics>, readiness: Readiness) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(move || {
                let ready = readiness.is_ready();
                async move {
                    if ready {
                        (StatusCode::OK, "ok")
                    } else {
                        (StatusCode::SERVICE_UNAVAILABLE, "not ready")
                    }
                }
            }),
        )
        .route(
            "/metrics",
            get(move || {
                let text = metrics.encode();
                async move {
                    (
                        [(
                            header::CONTENT_TYPE,
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        )],
                        text,
                    )
                }
            }),
        )
}

async fn reload_loop(
    state: Arc<AppState>,
    certificates: Option<Arc<CertificateStore>>,
    mut stop: watch::Receiver<bool>,
) {
    let credentials = Arc::clone(state.authenticator.credentials());
    let mut interval = tokio::time::interval(state.config.reload_interval);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    interval.tick().await;
    loop {
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            _ = interval.tick() => {}
        }
        if credentials.path().is_some() {
            let c = Arc::clone(&credentials);
            match tokio::task::spawn_blocking(move || c.reload()).await {
                Ok(Ok(true)) => {
                    tracing::info!(
                        credentials = credentials.len(),
                        "static credentials reloaded"
                    );
                    state.metrics.credential_reload("changed");
                }
                Ok(Ok(false)) => {}
                Ok(Err(e)) => {
                    tracing::error!(error = %e, "static credentials not reloaded; the previous ones stay in force");
                    state.metrics.credential_reload("failed");
                }
                Err(e) => tracing::error!(error = %e, "credentials reload task failed"),
            }
        }
        if let Some(store) = &certificates {
            let s = Arc::clone(store);
            match tokio::task::spawn_blocking(move || s.reload()).await {
                Ok(Ok(true)) => {
                    tracing::info!("TLS certificate reloaded");
                    state.metrics.certificate_reload("changed");
                }
                Ok(Ok(false)) => {}
                Ok(Err(e)) => {
                    tracing::error!(error = %e, "TLS certificate not reloaded; the previous one stays in force");
                    state.metrics.certificate_reload("failed");
                }
                Err(e) => tracing::error!(error = %e, "certificate reload task failed"),
            }
        }
    }
}
