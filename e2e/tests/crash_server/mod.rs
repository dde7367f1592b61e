//! kubekms-server in the crash drill: a server whose keyring follows the KmsKeys of an
//! account namespace, and a client of its AWS API (the AWS SDK for Rust, static
//! credentials) that keeps calling it for the whole trial: Encrypt under a symmetric key
//! the drill rotates with kube-apiserver's, GenerateDataKey, Decrypt of a ciphertext it got
//! back earlier (any trial, so any key version), Sign and Verify with an ECC key.
//!
//! Every blob and signature the server returned is kept with its plaintext or message;
//! after each trial the ones of the trial (and a sample of older ones) must decrypt to
//! their plaintext or verify, and at the end of the drill every one must. A call that
//! fails or gets no answer (the server, kube-apiserver or etcd is down) is counted, not an
//! error; an answered call is "acknowledged", and an acknowledged blob that later does not
//! decrypt to its plaintext (or a signature that no longer verifies) is lost.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, anyhow, ensure};
use aws_sdk_kms::error::ProvideErrorMetadata as _;
use aws_sdk_kms::primitives::Blob;
use aws_sdk_kms::types::{DataKeySpec, MessageType, SigningAlgorithmSpec};
use futures::StreamExt as _;
use kubekms_e2e::ControlPlane;
use kubekms_e2e::crash::DrillRng;
use kubekms_e2e::drill::Site;
use kubekms_e2e::kms_server::{
    self, KmsServer, ServerOptions, ServingCert, StaticCredential, write_static_credentials,
};
use serde_json::json;

/// The account (namespace) of the server's keys.
pub const APP_NS: &str = "crash-app";
/// The symmetric key, rotated in every trial.
pub const APP_KEY: &str = "app-key";
/// The signing key (asymmetric keys do not rotate).
pub const SIGN_KEY: &str = "sign-key";
/// The Kubernetes user the client's static credential acts as.
const CLIENT_USER: &str = "crash-kms-client";
/// A call that takes longer has an unknown outcome.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause between two rounds of the client's calls.
const ROUND_PAUSE: Duration = Duration::from_millis(200);
/// Older blobs re-checked after each trial besides the trial's own.
const OLDER_SAMPLE: usize = 200;
/// Checks in flight at once.
const CHECK_CONCURRENCY: usize = 8;

/// A blob the server returned, with what it must decrypt to.
#[derive(Debug, Clone)]
pub struct Sealed {
    blob: Vec<u8>,
    plaintext: Vec<u8>,
    context: HashMap<String, String>,
    trial: usize,
    /// `Encrypt` or `GenerateDataKey`.
    op: &'static str,
}

/// A signature the server returned, with its message.
#[derive(Debug, Clone)]
pub struct Signed {
    message: Vec<u8>,
    signature: Vec<u8>,
    trial: usize,
}

/// What the client knows of its calls.
#[derive(Debug, Default)]
pub struct ServerLedger {
    pub sealed: Vec<Sealed>,
    pub signed: Vec<Signed>,
    /// Acknowledged blobs by the key's material version (from the blob's header).
    pub by_version: BTreeMap<u32, u64>,
    /// Answered calls, by operation.
    pub acked: BTreeMap<&'static str, u64>,
    /// Calls with no answer or an error answer, by operation.
    pub unanswered: BTreeMap<&'static str, u64>,
    /// Refusals of a blob or signature the server itself returned, while the trial ran
    /// (error code → count): what a client would see as a wrong answer.
    pub refused: BTreeMap<String, u64>,
    /// The last error of a call that was not answered (for failure messages).
    pub last_error: String,
    /// First examples of `refused`.
    pub refused_examples: Vec<String>,
    /// Acknowledged blobs or signatures that did not decrypt or verify (lost).
    pub lost: Vec<String>,
    /// Blobs decrypted and signatures verified (during trials and in checks).
    pub decrypted_ok: u64,
    pub verified_ok: u64,
    /// How far the per-trial check got: blobs and signatures before these were checked.
    checked_sealed: usize,
    checked_signed: usize,
}

pub type SharedServerLedger = Arc<Mutex<ServerLedger>>;

pub fn lock(ledger: &SharedServerLedger) -> std::sync::MutexGuard<'_, ServerLedger> {
    ledger
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl ServerLedger {
    /// Every answered call.
    pub fn acked_total(&self) -> u64 {
        self.acked.values().sum()
    }

    /// Every call without a successful answer.
    pub fn unanswered_total(&self) -> u64 {
        self.unanswered.values().sum()
    }

    fn seal(&mut self, sealed: Sealed) {
        *self.acked.entry(sealed.op).or_default() += 1;
        if let Ok((_, version)) = kms_core::blob::peek(&sealed.blob) {
            *self.by_version.entry(version).or_default() += 1;
        }
        self.sealed.push(sealed);
    }

    fn refusal(&mut self, code: &str, what: String) {
        *self.refused.entry(code.to_owned()).or_default() += 1;
        if self.refused_examples.len() < 10 {
            self.refused_examples.push(what);
        }
    }
}

/// The server's side of the drill: its keys, credential and certificate.
pub struct ServerSetup {
    pub options: ServerOptions,
    pub credential: StaticCredential,
    pub app_key_id: String,
    pub sign_key_id: String,
    ca_pem: Vec<u8>,
}

impl ServerSetup {
    /// deploy/rbac (the server's ServiceAccount), the account namespace with its two
    /// keys (Enabled), a Role letting the client's user call them, a static credential
    /// and a serving certificate. `root_key` is the operator's.
    pub fn prepare(site: &Site, root_key: &Path) -> Result<Self> {
        let cp = &site.cp;
        let rbac = kubekms_e2e::repo_root().join("deploy/rbac");
        cp.kubectl(["apply".as_ref(), "-f".as_ref(), rbac.as_os_str()])?;
        cp.apply(&json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": APP_NS}}))?;
        cp.apply(&json!([
            {
                "apiVersion": "kubekms.io/v1alpha1", "kind": "KmsKey",
                "metadata": {"name": APP_KEY, "namespace": APP_NS},
                "spec": {"keySpec": "SYMMETRIC_DEFAULT"},
            },
            {
                "apiVersion": "kubekms.io/v1alpha1", "kind": "KmsKey",
                "metadata": {"name": SIGN_KEY, "namespace": APP_NS},
                "spec": {"keySpec": "ECC_NIST_P256", "keyUsage": "SIGN_VERIFY"},
            },
            {
                "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
                "metadata": {"name": CLIENT_USER, "namespace": APP_NS},
                "rules": [{
                    "apiGroups": ["kubekms.io"], "resources": ["kmskeys"],
                    "verbs": ["encrypt", "decrypt", "generatedatakey", "sign", "verify", "describekey"],
                }],
            },
            {
                "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
                "metadata": {"name": CLIENT_USER, "namespace": APP_NS},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": CLIENT_USER},
                "subjects": [{"kind": "User", "apiGroup": "rbac.authorization.k8s.io", "name": CLIENT_USER}],
            },
        ]))?;
        let key_id_of = |name: &str| -> Result<String> {
            let key = site.wait_key(APP_NS, name, "Enabled", |k| {
                k.pointer("/status/keyState").and_then(|s| s.as_str()) == Some("Enabled")
                    && k.pointer("/status/keyId").is_some()
            })?;
            // The key id, not the ARN: the ARN names the operator's region, the server
            // serves its own.
            key.pointer("/status/keyId")
                .and_then(|a| a.as_str())
                .map(str::to_owned)
                .ok_or_else(|| anyhow!("no keyId: {key}"))
        };
        let app_key_id = key_id_of(APP_KEY)?;
        let sign_key_id = key_id_of(SIGN_KEY)?;
        let dir = site.base.join("kubekms-server");
        std::fs::create_dir_all(&dir)?;
        let credential = StaticCredential::new(CLIENT_USER, APP_NS);
        let credentials = dir.join("static-credentials.json");
        write_static_credentials(&credentials, std::slice::from_ref(&credential))?;
        let cert = ServingCert::issue(cp, &dir.join("tls"))?;
        let ca_pem = std::fs::read(&cert.ca_bundle)?;
        Ok(Self {
            options: ServerOptions {
                root_key: root_key.to_path_buf(),
                cert,
                static_credentials: Some(credentials),
                authz_cache_seconds: kms_server::AUTHZ_CACHE_SECONDS,
                rust_log: "info".to_owned(),
                dir,
            },
            credential,
            app_key_id,
            sign_key_id,
            ca_pem,
        })
    }

    /// Starts a server process named `name` (a new name per start: the harness finds
    /// the bound port in the first "serving" line of the process's log).
    pub fn start(&self, cp: &ControlPlane, name: &str) -> Result<KmsServer> {
        KmsServer::start(cp, name, &self.options)
    }

    /// An SDK client of `endpoint`: one attempt per call (no retries), so that every
    /// call the drill counts is one request.
    pub fn client(&self, endpoint: &str) -> Result<aws_sdk_kms::Client> {
        let config = kms_server::sdk_config(
            endpoint,
            self.ca_pem.clone(),
            &self.credential,
            "crash-drill",
        )?
        .retry_config(aws_sdk_kms::config::retry::RetryConfig::disabled())
        .timeout_config(
            aws_sdk_kms::config::timeout::TimeoutConfig::builder()
                .connect_timeout(Duration::from_secs(5))
                .operation_timeout(CALL_TIMEOUT)
                .build(),
        )
        .build();
        Ok(aws_sdk_kms::Client::from_conf(config))
    }
}

/// Where the server listens now (a restarted server binds a new port).
pub type SharedEndpoint = Arc<Mutex<String>>;

fn endpoint_now(endpoint: &SharedEndpoint) -> String {
    endpoint
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone()
}

/// Codes that say "this blob or signature is bad": the server's answer about something
/// it returned itself. Others (throttling, dependency timeouts, internal errors while
/// kube-apiserver is away, no answer) are an outage.
fn is_refusal(code: Option<&str>) -> bool {
    matches!(
        code,
        Some(
            "InvalidCiphertextException"
                | "IncorrectKeyException"
                | "NotFoundException"
                | "KMSInvalidSignatureException"
                | "KMSInvalidStateException"
                | "DisabledException"
        )
    )
}

fn describe(e: &(dyn std::error::Error + 'static)) -> String {
    format!("{}", aws_sdk_kms::error::DisplayErrorContext(e))
}

/// The client: rounds of Encrypt, GenerateDataKey, Decrypt of an earlier blob, and every
/// third round Sign and Verify, until `stop`.
pub async fn client(
    setup: Arc<ServerSetup>,
    endpoint: SharedEndpoint,
    seed: u64,
    trial: usize,
    stop: Arc<AtomicBool>,
    ledger: SharedServerLedger,
) {
    let mut rng = DrillRng::new(seed);
    let mut current: Option<(String, aws_sdk_kms::Client)> = None;
    let mut round = 0u64;
    while !stop.load(Ordering::Relaxed) {
        round += 1;
        let now = endpoint_now(&endpoint);
        if current.as_ref().is_none_or(|(e, _)| *e != now) {
            match setup.client(&now) {
                Ok(c) => current = Some((now, c)),
                Err(e) => {
                    eprintln!("[crash-drill] kms client for {now}: {e:#}");
                    tokio::time::sleep(ROUND_PAUSE).await;
                    continue;
                }
            }
        }
        let Some((_, kms)) = current.as_ref() else {
            continue;
        };
        let context = HashMap::from([
            ("drill".to_owned(), "crash".to_owned()),
            ("call".to_owned(), format!("{trial}-{round}")),
        ]);

        let plaintext = format!("trial{trial}-round{round}-{:016x}", rng.next_u64()).into_bytes();
        let encrypted = kms
            .encrypt()
            .key_id(&setup.app_key_id)
            .plaintext(Blob::new(plaintext.clone()))
            .set_encryption_context(Some(context.clone()))
            .send()
            .await;
        if let Err(e) = &encrypted {
            lock(&ledger).last_error = describe(e);
        }
        match encrypted.map(|o| o.ciphertext_blob) {
            Ok(Some(blob)) => lock(&ledger).seal(Sealed {
                blob: blob.into_inner(),
                plaintext,
                context: context.clone(),
                trial,
                op: "Encrypt",
            }),
            _ => *lock(&ledger).unanswered.entry("Encrypt").or_default() += 1,
        }

        let data_key = kms
            .generate_data_key()
            .key_id(&setup.app_key_id)
            .key_spec(DataKeySpec::Aes256)
            .set_encryption_context(Some(context.clone()))
            .send()
            .await;
        match data_key.map(|o| (o.ciphertext_blob, o.plaintext)) {
            Ok((Some(blob), Some(plain))) => lock(&ledger).seal(Sealed {
                blob: blob.into_inner(),
                plaintext: plain.into_inner(),
                context: context.clone(),
                trial,
                op: "GenerateDataKey",
            }),
            _ => {
                *lock(&ledger)
                    .unanswered
                    .entry("GenerateDataKey")
                    .or_default() += 1
            }
        }

        // An earlier blob, any trial's: old key versions too.
        let earlier = {
            let l = lock(&ledger);
            let n = l.sealed.len() as u64;
            (n > 0).then(|| l.sealed[usize::try_from(rng.below(n)).unwrap_or(0)].clone())
        };
        if let Some(sealed) = earlier {
            let answer = kms
                .decrypt()
                .ciphertext_blob(Blob::new(sealed.blob.clone()))
                .set_encryption_context(Some(sealed.context.clone()))
                .send()
                .await;
            let mut l = lock(&ledger);
            match answer {
                Ok(out) => {
                    *l.acked.entry("Decrypt").or_default() += 1;
                    if out.plaintext.map(Blob::into_inner).as_deref() == Some(&sealed.plaintext[..])
                    {
                        l.decrypted_ok += 1;
                    } else {
                        l.lost.push(format!(
                            "Decrypt of the {} blob of trial {} returned another plaintext",
                            sealed.op, sealed.trial
                        ));
                    }
                }
                Err(e) => {
                    *l.unanswered.entry("Decrypt").or_default() += 1;
                    if is_refusal(e.code()) {
                        l.refusal(
                            e.code().unwrap_or_default(),
                            format!(
                                "trial {trial}: Decrypt of the {} blob of trial {}: {}: {}",
                                sealed.op,
                                sealed.trial,
                                e.code().unwrap_or_default(),
                                e.message().unwrap_or_default()
                            ),
                        );
                    }
                }
            }
        }

        if round.is_multiple_of(3) {
            sign_and_verify(kms, &setup, trial, round, &ledger).await;
        }
        tokio::time::sleep(ROUND_PAUSE).await;
    }
}

async fn sign_and_verify(
    kms: &aws_sdk_kms::Client,
    setup: &ServerSetup,
    trial: usize,
    round: u64,
    ledger: &SharedServerLedger,
) {
    let message = format!("trial{trial}-round{round}-signed").into_bytes();
    let signed = kms
        .sign()
        .key_id(&setup.sign_key_id)
        .message(Blob::new(message.clone()))
        .message_type(MessageType::Raw)
        .signing_algorithm(SigningAlgorithmSpec::EcdsaSha256)
        .send()
        .await;
    let Ok(Some(signature)) = signed.map(|o| o.signature) else {
        *lock(ledger).unanswered.entry("Sign").or_default() += 1;
        return;
    };
    let signature = signature.into_inner();
    {
        let mut l = lock(ledger);
        *l.acked.entry("Sign").or_default() += 1;
        l.signed.push(Signed {
            message: message.clone(),
            signature: signature.clone(),
            trial,
        });
    }
    let verified = kms
        .verify()
        .key_id(&setup.sign_key_id)
        .message(Blob::new(message))
        .message_type(MessageType::Raw)
        .signature(Blob::new(signature))
        .signing_algorithm(SigningAlgorithmSpec::EcdsaSha256)
        .send()
        .await;
    let mut l = lock(ledger);
    match verified {
        Ok(out) if out.signature_valid => {
            *l.acked.entry("Verify").or_default() += 1;
            l.verified_ok += 1;
        }
        Ok(_) => l.lost.push(format!(
            "trial {trial}: Verify says a signature it just made is invalid"
        )),
        Err(e) => {
            *l.unanswered.entry("Verify").or_default() += 1;
            if is_refusal(e.code()) {
                l.refusal(
                    e.code().unwrap_or_default(),
                    format!(
                        "trial {trial}: Verify of its own signature: {}: {}",
                        e.code().unwrap_or_default(),
                        e.message().unwrap_or_default()
                    ),
                );
            }
        }
    }
}

/// One check call, retried (a few times, 1 s apart) when the answer is an outage rather
/// than a refusal: the check runs with every process up, but the server may still be
/// reconnecting to a restarted kube-apiserver.
async fn check_one<T, F, Fut>(what: &str, mut call: F) -> std::result::Result<T, String>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = std::result::Result<T, (Option<String>, String)>>,
{
    let mut last = String::new();
    for _ in 0..10 {
        match call().await {
            Ok(v) => return Ok(v),
            Err((code, message)) if is_refusal(code.as_deref()) => {
                return Err(format!("{what}: {}: {message}", code.unwrap_or_default()));
            }
            Err((code, message)) => last = format!("{code:?}: {message}"),
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    Err(format!(
        "{what}: no answer after 10 attempts (last: {last})"
    ))
}

fn sdk_error<E: aws_sdk_kms::error::ProvideErrorMetadata + std::error::Error>(
    e: &E,
) -> (Option<String>, String) {
    (
        e.code().map(str::to_owned),
        e.message().map_or_else(|| format!("{e}"), str::to_owned),
    )
}

/// Decrypts `sealed` and verifies `signed` through the server at `endpoint`; every
/// mismatch or refusal is a loss (added to the ledger). Returns (blobs, signatures)
/// checked.
async fn check(
    setup: &ServerSetup,
    endpoint: &str,
    sealed: Vec<Sealed>,
    signed: Vec<Signed>,
    ledger: &SharedServerLedger,
) -> Result<(usize, usize)> {
    let kms = setup.client(endpoint)?;
    let counts = (sealed.len(), signed.len());
    let decrypts = futures::stream::iter(sealed)
        .map(|s| {
            let kms = kms.clone();
            async move {
                let what = format!("{} blob of trial {}", s.op, s.trial);
                let got = check_one(&what, || {
                    let request = kms
                        .decrypt()
                        .ciphertext_blob(Blob::new(s.blob.clone()))
                        .set_encryption_context(Some(s.context.clone()));
                    async move {
                        request
                            .send()
                            .await
                            .map(|o| o.plaintext.map(Blob::into_inner))
                            .map_err(|e| sdk_error(&e.into_service_error()))
                    }
                })
                .await?;
                if got.as_deref() == Some(&s.plaintext[..]) {
                    Ok(())
                } else {
                    Err(format!("{what}: decrypted to another plaintext"))
                }
            }
        })
        .buffer_unordered(CHECK_CONCURRENCY)
        .collect::<Vec<_>>()
        .await;
    let verifies = futures::stream::iter(signed)
        .map(|s| {
            let kms = kms.clone();
            async move {
                let what = format!("signature of trial {}", s.trial);
                let valid = check_one(&what, || {
                    let request = kms
                        .verify()
                        .key_id(&setup.sign_key_id)
                        .message(Blob::new(s.message.clone()))
                        .message_type(MessageType::Raw)
                        .signature(Blob::new(s.signature.clone()))
                        .signing_algorithm(SigningAlgorithmSpec::EcdsaSha256);
                    async move {
                        request
                            .send()
                            .await
                            .map(|o| o.signature_valid)
                            .map_err(|e| sdk_error(&e.into_service_error()))
                    }
                })
                .await?;
                if valid {
                    Ok(())
                } else {
                    Err(format!("{what}: no longer valid"))
                }
            }
        })
        .buffer_unordered(CHECK_CONCURRENCY)
        .collect::<Vec<_>>()
        .await;
    let mut l = lock(ledger);
    for (i, result) in decrypts.into_iter().enumerate() {
        match result {
            Ok(()) => l.decrypted_ok += 1,
            Err(e) => l.lost.push(format!("check {i}: {e}")),
        }
    }
    for result in verifies {
        match result {
            Ok(()) => l.verified_ok += 1,
            Err(e) => l.lost.push(e),
        }
    }
    Ok(counts)
}

/// After a trial: every blob and signature acknowledged since the last check, and a
/// seeded sample of [`OLDER_SAMPLE`] older blobs (older key versions).
pub async fn check_trial(
    setup: &ServerSetup,
    endpoint: &str,
    ledger: &SharedServerLedger,
    rng: &mut DrillRng,
) -> Result<(usize, usize)> {
    let (sealed, signed) = {
        let mut l = lock(ledger);
        let mut sealed: Vec<Sealed> = l.sealed[l.checked_sealed..].to_vec();
        let older = l.checked_sealed as u64;
        for _ in 0..OLDER_SAMPLE.min(l.checked_sealed) {
            let i = usize::try_from(rng.below(older)).unwrap_or(0);
            sealed.push(l.sealed[i].clone());
        }
        let signed = l.signed[l.checked_signed..].to_vec();
        l.checked_sealed = l.sealed.len();
        l.checked_signed = l.signed.len();
        (sealed, signed)
    };
    check(setup, endpoint, sealed, signed, ledger).await
}

/// At the end of the drill: every blob and signature ever acknowledged.
pub async fn check_all(
    setup: &ServerSetup,
    endpoint: &str,
    ledger: &SharedServerLedger,
) -> Result<(usize, usize)> {
    let (sealed, signed) = {
        let l = lock(ledger);
        (l.sealed.clone(), l.signed.clone())
    };
    check(setup, endpoint, sealed, signed, ledger).await
}

/// Waits until the client has an acknowledged call after `before` (evidence that it
/// reaches the server again).
pub fn acked_since(ledger: &SharedServerLedger, before: u64) -> bool {
    lock(ledger).acked_total() > before
}

/// Waits (up to `limit`) until an Encrypt under the app key through the server at
/// `endpoint` makes a blob of material `version`: the server's keyring has followed the
/// rotation (across its own restarts and those of kube-apiserver and etcd).
pub async fn wait_encrypts_under(
    setup: &ServerSetup,
    endpoint: &str,
    version: u64,
    limit: Duration,
) -> Result<()> {
    let kms = setup.client(endpoint)?;
    let deadline = Instant::now() + limit;
    loop {
        let answer = kms
            .encrypt()
            .key_id(&setup.app_key_id)
            .plaintext(Blob::new(b"which version".to_vec()))
            .send()
            .await;
        let last = match answer.map(|o| o.ciphertext_blob) {
            Ok(Some(blob)) => match kms_core::blob::peek(blob.as_ref()) {
                Ok((_, v)) if u64::from(v) == version => return Ok(()),
                Ok((_, v)) => format!("a blob of version {v}"),
                Err(e) => format!("a blob that does not parse: {e}"),
            },
            Ok(None) => "no blob".to_owned(),
            Err(e) => describe(&e),
        };
        ensure!(
            Instant::now() < deadline,
            "kubekms-server does not encrypt under version {version} of {APP_NS}/{APP_KEY} {}s after the KmsKey shows it; last answer: {last}",
            limit.as_secs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The KmsKey's current version (`status.currentVersion`).
pub fn current_version(site: &Site, name: &str) -> Result<u64> {
    let key = site.get_json("kmskey", APP_NS, name)?;
    key.pointer("/status/currentVersion")
        .and_then(serde_json::Value::as_u64)
        .ok_or_else(|| anyhow!("KmsKey {APP_NS}/{name} has no currentVersion: {key}"))
}

/// Rotates the app key on demand and returns at once.
pub fn rotate(site: &Site, token: &str) -> Result<()> {
    site.cp
        .kubectl([
            "patch",
            "kmskey",
            APP_KEY,
            "-n",
            APP_NS,
            "--type",
            "merge",
            "-p",
            &json!({"spec": {"rotation": {"onDemandToken": token}}}).to_string(),
        ])
        .context("rotating the app key")?;
    Ok(())
}

/// Waits (up to `limit`) until the app key's current version is `version`.
pub fn wait_version(site: &Site, version: u64, limit: Duration) -> Result<()> {
    let deadline = Instant::now() + limit;
    loop {
        let now = current_version(site, APP_KEY).ok();
        if now == Some(version) {
            return Ok(());
        }
        ensure!(
            Instant::now() < deadline,
            "KmsKey {APP_NS}/{APP_KEY} at version {now:?}, not {version}, after {}s",
            limit.as_secs()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}
