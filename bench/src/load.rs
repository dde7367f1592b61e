//! The load client: N keep-alive HTTP/1.1 connections (hyper 1) to one KMS endpoint on
//! loopback, each with one request in flight at a time (closed loop), every request signed
//! anew with SigV4. A warm-up, then a timed phase; throughput, latency percentiles from an
//! HDR histogram, and every failed request counted by its AWS error type.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt as _, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::time::{sleep_until, timeout};

use crate::cpu::{CpuError, CpuSnapshot, CpuUsage};
use crate::kms::{
    KmsEndpoint, Operation, RequestBody, RequestSigner, SignError, decrypt_body, encrypt_body,
    error_type, generate_data_key_body, plaintext_4k,
};

/// The largest latency the histogram holds (a slower request is recorded as this).
const HISTOGRAM_MAX: Duration = Duration::from_secs(60);
/// Pause after a failed connection attempt, so a dead server is not hammered.
const RECONNECT_PAUSE: Duration = Duration::from_millis(50);

/// One run of the load client.
#[derive(Debug, Clone)]
pub struct LoadConfig {
    /// The server and how to sign for it.
    pub endpoint: KmsEndpoint,
    /// The key every request names (an id, an ARN or an alias).
    pub key_id: String,
    /// The operation every request makes.
    pub operation: Operation,
    /// Keep-alive connections, each with one request in flight.
    pub connections: usize,
    /// Load before the timed phase, not measured (connections opened, the server's caches,
    /// allocator and thread pools warm).
    pub warmup: Duration,
    /// The timed phase.
    pub duration: Duration,
    /// How long one request may take before it counts as an error (`timeout`).
    pub request_timeout: Duration,
    /// How long a connection may take to open.
    pub connect_timeout: Duration,
    /// The server's process, whose CPU time the report then shows.
    pub server_pid: Option<u32>,
}

impl LoadConfig {
    /// A run of `operation` on `endpoint` with the usual timeouts.
    #[must_use]
    pub fn new(endpoint: KmsEndpoint, key_id: impl Into<String>, operation: Operation) -> Self {
        Self {
            endpoint,
            key_id: key_id.into(),
            operation,
            connections: 32,
            warmup: Duration::from_secs(2),
            duration: Duration::from_secs(10),
            request_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(5),
            server_pid: None,
        }
    }
}

/// Why a run could not be made (failed requests are not this: they are counted).
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// No connection could be opened.
    #[error("connecting to {addr}: {reason}")]
    Connect {
        /// The endpoint.
        addr: std::net::SocketAddr,
        /// What failed.
        reason: String,
    },
    /// A request could not be signed.
    #[error(transparent)]
    Sign(#[from] SignError),
    /// The Encrypt that makes Decrypt's blob failed.
    #[error("preparing {operation}: {reason}")]
    Prepare {
        /// The operation.
        operation: Operation,
        /// What failed.
        reason: String,
    },
    /// CPU counters could not be read (the server exited during the run).
    #[error(transparent)]
    Cpu(#[from] CpuError),
    /// A connection's task panicked.
    #[error("a connection task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
    /// The configuration cannot run.
    #[error("invalid configuration: {0}")]
    Config(&'static str),
}

/// What one run measured.
#[derive(Debug, Clone)]
pub struct LoadReport {
    /// The operation.
    pub operation: Operation,
    /// Connections used.
    pub connections: usize,
    /// The timed phase.
    pub duration: Duration,
    /// Replies 200 that completed within the timed phase.
    pub ok: u64,
    /// Failed requests completed within the timed phase, by AWS error type (or
    /// `timeout`, `transport: ...`).
    pub errors: BTreeMap<String, u64>,
    /// Replies 200 outside the timed phase: in the warm-up, and the replies to requests
    /// still in flight when it ended.
    pub untimed_ok: u64,
    /// Failed requests outside the timed phase (never dropped: a warm-up full of errors
    /// invalidates the run as much as a timed phase).
    pub untimed_errors: BTreeMap<String, u64>,
    /// Latency of the successful requests of the timed phase, in nanoseconds, from the
    /// signed request handed to hyper to the last byte of the reply.
    pub latency: Histogram<u64>,
    /// CPU used during the timed phase.
    pub cpu: CpuUsage,
}

impl LoadReport {
    /// Successful requests per second in the timed phase.
    #[must_use]
    pub fn throughput(&self) -> f64 {
        let secs = self.duration.as_secs_f64();
        if secs > 0.0 {
            self.ok as f64 / secs
        } else {
            0.0
        }
    }

    /// The latency at `quantile` (0.5 = median).
    #[must_use]
    pub fn latency_at(&self, quantile: f64) -> Duration {
        Duration::from_nanos(self.latency.value_at_quantile(quantile))
    }

    /// The slowest successful request.
    #[must_use]
    pub fn latency_max(&self) -> Duration {
        Duration::from_nanos(self.latency.max())
    }

    /// Failed requests in the timed phase.
    #[must_use]
    pub fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }

    /// Failed requests in and outside the timed phase.
    #[must_use]
    pub fn all_errors(&self) -> BTreeMap<String, u64> {
        let mut all = self.untimed_errors.clone();
        for (k, v) in &self.errors {
            *all.entry(k.clone()).or_default() += v;
        }
        all
    }
}

/// Runs the load described by `config` and reports what it measured.
///
/// # Errors
/// When the endpoint cannot be reached at all, a request cannot be signed, the blob for
/// Decrypt cannot be made, or the server's CPU counters vanish (it exited). Failed
/// requests are counted in the report, not returned as errors.
pub async fn run_load(config: &LoadConfig) -> Result<LoadReport, LoadError> {
    if config.connections == 0 {
        return Err(LoadError::Config("at least one connection is needed"));
    }
    if config.duration.is_zero() {
        return Err(LoadError::Config("the timed phase must not be empty"));
    }
    let signer = RequestSigner::new(&config.endpoint);
    let body = request_body(config, &signer).await?;

    let mut senders = Vec::with_capacity(config.connections);
    for _ in 0..config.connections {
        senders.push(connect(config).await?);
    }

    let start = tokio::time::Instant::now();
    let measure_start = start + config.warmup;
    let measure_end = measure_start + config.duration;
    let shared = Arc::new(Shared {
        signer,
        body,
        operation: config.operation,
        request_timeout: config.request_timeout,
        measure_start: measure_start.into_std(),
        measure_end: measure_end.into_std(),
        config: config.clone(),
    });
    let tasks: Vec<_> = senders
        .into_iter()
        .map(|sender| tokio::spawn(drive_connection(Arc::clone(&shared), sender)))
        .collect();

    sleep_until(measure_start).await;
    let cpu_start = CpuSnapshot::take(config.server_pid)?;
    sleep_until(measure_end).await;
    let cpu_end = CpuSnapshot::take(config.server_pid)?;

    let mut total = ConnectionStats::new();
    for task in tasks {
        total.merge(task.await??);
    }
    Ok(LoadReport {
        operation: config.operation,
        connections: config.connections,
        duration: config.duration,
        ok: total.ok,
        errors: total.errors,
        untimed_ok: total.untimed_ok,
        untimed_errors: total.untimed_errors,
        latency: total.latency,
        cpu: cpu_start.usage_until(&cpu_end),
    })
}

struct Shared {
    signer: RequestSigner,
    body: RequestBody,
    operation: Operation,
    request_timeout: Duration,
    measure_start: Instant,
    measure_end: Instant,
    config: LoadConfig,
}

struct ConnectionStats {
    ok: u64,
    errors: BTreeMap<String, u64>,
    untimed_ok: u64,
    untimed_errors: BTreeMap<String, u64>,
    latency: Histogram<u64>,
}

impl ConnectionStats {
    fn new() -> Self {
        let max = u64::try_from(HISTOGRAM_MAX.as_nanos()).unwrap_or(u64::MAX);
        Self {
            ok: 0,
            errors: BTreeMap::new(),
            untimed_ok: 0,
            untimed_errors: BTreeMap::new(),
            latency: Histogram::new_with_bounds(1, max, 3)
                .expect("constant bounds: 3 significant digits from 1 ns to a minute"),
        }
    }

    fn merge(&mut self, other: Self) {
        self.ok += other.ok;
        self.untimed_ok += other.untimed_ok;
        for (k, v) in other.errors {
            *self.errors.entry(k).or_default() += v;
        }
        for (k, v) in other.untimed_errors {
            *self.untimed_errors.entry(k).or_default() += v;
        }
        // Same bounds on both sides: adding cannot fail.
        let _ = self.latency.add(&other.latency);
    }

    fn record(&mut self, measured: bool, outcome: Result<Duration, String>) {
        match (measured, outcome) {
            (true, Ok(latency)) => {
                self.ok += 1;
                self.latency
                    .saturating_record(u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX));
            }
            (true, Err(kind)) => *self.errors.entry(kind).or_default() += 1,
            (false, Ok(_)) => self.untimed_ok += 1,
            (false, Err(kind)) => *self.untimed_errors.entry(kind).or_default() += 1,
        }
    }
}

/// The body every request of the run sends.
async fn request_body(
    config: &LoadConfig,
    signer: &RequestSigner,
) -> Result<RequestBody, LoadError> {
    Ok(RequestBody::new(match config.operation {
        Operation::Encrypt4k => encrypt_body(&config.key_id, &plaintext_4k()),
        Operation::GenerateDataKey => generate_data_key_body(&config.key_id),
        Operation::Decrypt4k => {
            let prepare_error = |reason: String| LoadError::Prepare {
                operation: config.operation,
                reason,
            };
            let mut sender = connect(config).await?;
            let body = RequestBody::new(encrypt_body(&config.key_id, &plaintext_4k()));
            let request = signer.signed_request(Operation::Encrypt4k, &body, SystemTime::now())?;
            let (status, headers, reply) =
                match timeout(config.request_timeout, exchange(&mut sender, request)).await {
                    Ok(Ok(r)) => r,
                    Ok(Err(e)) => return Err(prepare_error(format!("Encrypt failed: {e}"))),
                    Err(_) => return Err(prepare_error("Encrypt timed out".to_owned())),
                };
            if status != http::StatusCode::OK {
                return Err(prepare_error(format!(
                    "Encrypt answered {}",
                    error_type(status, &headers, &reply)
                )));
            }
            let blob = serde_json::from_slice::<serde_json::Value>(&reply)
                .ok()
                .and_then(|v| v.get("CiphertextBlob")?.as_str().map(str::to_owned))
                .ok_or_else(|| {
                    prepare_error("the Encrypt reply has no CiphertextBlob".to_owned())
                })?;
            decrypt_body(&blob)
        }
    }))
}

/// Opens one keep-alive HTTP/1.1 connection; its driver runs as its own task and ends when
/// the sender is dropped.
async fn connect(config: &LoadConfig) -> Result<SendRequest<Full<Bytes>>, LoadError> {
    let addr = config.endpoint.addr;
    let failed = |reason: String| LoadError::Connect { addr, reason };
    let stream = match timeout(config.connect_timeout, TcpStream::connect(addr)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return Err(failed(e.to_string())),
        Err(_) => return Err(failed(format!("no answer in {:?}", config.connect_timeout))),
    };
    stream
        .set_nodelay(true)
        .map_err(|e| failed(e.to_string()))?;
    let (sender, connection) = match timeout(
        config.connect_timeout,
        hyper::client::conn::http1::handshake(TokioIo::new(stream)),
    )
    .await
    {
        Ok(Ok(pair)) => pair,
        Ok(Err(e)) => return Err(failed(e.to_string())),
        Err(_) => return Err(failed("HTTP handshake timed out".to_owned())),
    };
    tokio::spawn(async move {
        // A broken connection shows as a failed request on its sender.
        let _ = connection.await;
    });
    Ok(sender)
}

async fn exchange(
    sender: &mut SendRequest<Full<Bytes>>,
    request: http::Request<Full<Bytes>>,
) -> Result<(http::StatusCode, http::HeaderMap, Bytes), hyper::Error> {
    sender.ready().await?;
    let (parts, body) = sender.send_request(request).await?.into_parts();
    let bytes = body.collect().await?.to_bytes();
    Ok((parts.status, parts.headers, bytes))
}

/// One connection's closed loop until the end of the timed phase; reconnects after a
/// transport failure (which is counted).
async fn drive_connection(
    shared: Arc<Shared>,
    sender: SendRequest<Full<Bytes>>,
) -> Result<ConnectionStats, LoadError> {
    let mut stats = ConnectionStats::new();
    let mut connection = Some(sender);
    loop {
        if Instant::now() >= shared.measure_end {
            return Ok(stats);
        }
        let Some(sender) = connection.as_mut() else {
            match connect(&shared.config).await {
                Ok(s) => connection = Some(s),
                Err(e) => {
                    let measured = Instant::now() >= shared.measure_start;
                    stats.record(measured, Err(format!("connect: {e}")));
                    tokio::time::sleep(RECONNECT_PAUSE).await;
                }
            }
            continue;
        };
        let request =
            shared
                .signer
                .signed_request(shared.operation, &shared.body, SystemTime::now())?;
        let sent = Instant::now();
        let result = timeout(shared.request_timeout, exchange(sender, request)).await;
        let done = Instant::now();
        let outcome = match result {
            Ok(Ok((status, _, _))) if status == http::StatusCode::OK => Ok(done - sent),
            Ok(Ok((status, headers, body))) => Err(error_type(status, &headers, &body)),
            Ok(Err(e)) => {
                connection = None;
                Err(format!("transport: {}", transport_kind(&e)))
            }
            Err(_) => {
                // The reply may still come: the connection is in an unknown state.
                connection = None;
                Err("timeout".to_owned())
            }
        };
        let measured = done >= shared.measure_start && done < shared.measure_end;
        stats.record(measured, outcome);
    }
}

/// A short, stable name of a transport failure (error counts are keyed by it).
fn transport_kind(e: &hyper::Error) -> String {
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(cause) = source {
        if let Some(io) = cause.downcast_ref::<std::io::Error>() {
            return match io.kind() {
                std::io::ErrorKind::ConnectionReset => "connection reset".to_owned(),
                std::io::ErrorKind::BrokenPipe => "broken pipe".to_owned(),
                kind => format!("I/O error ({kind})"),
            };
        }
        source = cause.source();
    }
    if e.is_closed() || e.is_incomplete_message() {
        "connection closed"
    } else if e.is_parse() {
        "malformed reply"
    } else if e.is_timeout() {
        "timeout"
    } else {
        "HTTP error"
    }
    .to_owned()
}
