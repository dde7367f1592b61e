//! The audit trail: one JSON line per request, shaped like a CloudTrail record: when, which
//! request, which operation, who (username, groups, access key id), from where, which
//! keys, which encryption context, what allowed it, and the outcome or error code.
//!
//! A record is built from typed fields only; there is no field that could carry a
//! plaintext, data key, message, signature, ciphertext, secret or session token, and the
//! redaction test greps a run of every operation for them.
//!
//! Records go through a bounded queue to a writer thread (blocking writes never run on the
//! async workers; a full queue makes requests wait rather than lose records), which flushes
//! whenever the queue runs empty.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::io::Write;
use std::sync::{Arc, Mutex};

use serde::Serialize;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tokio::sync::{mpsc, oneshot};

use crate::principal::{CredentialKind, Principal};

/// Records waiting for the writer before requests wait.
const QUEUE: usize = 8192;
/// Pause between batches while records keep arriving.
const BATCH_PAUSE: std::time::Duration = std::time::Duration::from_millis(2);

/// Who made the request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserIdentity {
    /// `static`, `session` or `webIdentity`.
    pub kind: &'static str,
    /// The identity: its username, uid, groups, namespace (account) and access key id are
    /// recorded; shared with the credential, not copied per request.
    pub principal: Arc<Principal>,
}

impl UserIdentity {
    /// The identity of an authenticated request.
    #[must_use]
    pub fn of(principal: &Arc<Principal>) -> Self {
        Self {
            kind: match principal.credential {
                CredentialKind::Static => "static",
                CredentialKind::Session { .. } => "session",
            },
            principal: Arc::clone(principal),
        }
    }

    /// The identity an AssumeRoleWithWebIdentity was answered for.
    #[must_use]
    pub fn web_identity(user_name: &str, namespace: &str, access_key_id: &str) -> Self {
        Self {
            kind: "webIdentity",
            principal: Arc::new(Principal {
                username: user_name.to_owned(),
                uid: None,
                groups: Vec::new(),
                namespace: namespace.to_owned(),
                access_key_id: access_key_id.to_owned(),
                credential: CredentialKind::Static,
            }),
        }
    }
}

impl Serialize for UserIdentity {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct as _;
        let principal = &self.principal;
        let mut out = serializer.serialize_struct("UserIdentity", 6)?;
        out.serialize_field("type", self.kind)?;
        out.serialize_field("userName", &principal.username)?;
        match &principal.uid {
            Some(uid) => out.serialize_field("uid", uid)?,
            None => out.skip_field("uid")?,
        }
        out.serialize_field("groups", &principal.groups)?;
        out.serialize_field("namespace", &principal.namespace)?;
        out.serialize_field("accessKeyId", &principal.access_key_id)?;
        out.end()
    }
}

/// One audit record.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AuditRecord {
    /// When the request arrived (RFC 3339, UTC).
    pub event_time: String,
    /// `kms` or `sts`.
    pub event_source: &'static str,
    /// The operation (`Encrypt`, `AssumeRoleWithWebIdentity`, ...), or the target as sent
    /// when it names no operation (cut to 128 characters).
    pub event_name: String,
    /// The request id (also in `x-amzn-RequestId`).
    pub request_id: String,
    /// The peer address.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source_ip_address: Option<String>,
    /// The User-Agent (cut to 256 characters).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_agent: Option<String>,
    /// The caller, once authenticated.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_identity: Option<UserIdentity>,
    /// ARNs of the keys involved.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub resources: Vec<String>,
    /// The encryption context (ReEncrypt: the source's).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub encryption_context: Option<BTreeMap<String, String>>,
    /// ReEncrypt's destination encryption context.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub destination_encryption_context: Option<BTreeMap<String, String>>,
    /// Non-secret parameters worth keeping (algorithms, STS role and session name, the
    /// access key id a session was issued, its expiry).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub request_parameters: BTreeMap<&'static str, String>,
    /// Number of grant tokens sent (the tokens are bearer values and are not recorded).
    #[serde(skip_serializing_if = "is_zero")]
    pub grant_token_count: usize,
    /// Whether DryRun was set.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub dry_run: bool,
    /// What allowed the request (`rbac`, `grant:<id>`, ...).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub authorized_by: Vec<Cow<'static, str>>,
    /// Why an authorization denied (never sent to the caller).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deny_reason: Option<String>,
    /// HTTP status of the reply.
    pub status: u16,
    /// The AWS exception name, when the request failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_code: Option<&'static str>,
    /// Its message.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_message: Option<String>,
    /// Time spent, in microseconds.
    pub duration_us: u64,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

impl AuditRecord {
    /// A record for a request that arrived at `now`.
    #[must_use]
    pub fn new(event_source: &'static str, request_id: &str, now: OffsetDateTime) -> Self {
        Self {
            event_time: now.format(&Rfc3339).unwrap_or_default(),
            event_source,
            event_name: String::new(),
            request_id: request_id.to_owned(),
            source_ip_address: None,
            user_agent: None,
            user_identity: None,
            resources: Vec::new(),
            encryption_context: None,
            destination_encryption_context: None,
            request_parameters: BTreeMap::new(),
            grant_token_count: 0,
            dry_run: false,
            authorized_by: Vec::new(),
            deny_reason: None,
            status: 200,
            error_code: None,
            error_message: None,
            duration_us: 0,
        }
    }
}

enum Message {
    Line(Vec<u8>),
    Flush(oneshot::Sender<()>),
}

/// Where audit records go. Cloning shares the writer.
#[derive(Clone, Debug)]
pub struct AuditLog {
    sender: Option<mpsc::Sender<Message>>,
}

impl std::fmt::Debug for Message {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AuditMessage")
    }
}

impl AuditLog {
    /// Records go nowhere (tests that do not look at them).
    #[must_use]
    pub fn disabled() -> Self {
        Self { sender: None }
    }

    /// Records are written, one JSON line each, to `writer` by a dedicated thread.
    ///
    /// # Errors
    /// When the thread cannot be started.
    pub fn to_writer(writer: impl Write + Send + 'static) -> std::io::Result<Self> {
        let (sender, mut receiver) = mpsc::channel::<Message>(QUEUE);
        std::thread::Builder::new()
            .name("kubekms-audit".to_owned())
            .spawn(move || {
                let mut writer = std::io::BufWriter::with_capacity(64 * 1024, writer);
                let mut pending_flushes = Vec::new();
                while let Some(first) = receiver.blocking_recv() {
                    let mut next = Some(first);
                    loop {
                        while let Some(message) = next {
                            match message {
                                Message::Line(line) => {
                                    if let Err(e) = writer.write_all(&line) {
                                        tracing::error!(error = %e, "cannot write the audit log");
                                    }
                                }
                                Message::Flush(done) => pending_flushes.push(done),
                            }
                            next = receiver.try_recv().ok();
                        }
                        if let Err(e) = writer.flush() {
                            tracing::error!(error = %e, "cannot flush the audit log");
                        }
                        for done in pending_flushes.drain(..) {
                            let _ = done.send(());
                        }
                        // Under load records keep coming: pausing before the next batch makes
                        // this thread wake a few hundred times a second instead of once per
                        // request (each wake-up costs both cores a context switch).
                        std::thread::sleep(BATCH_PAUSE);
                        next = receiver.try_recv().ok();
                        if next.is_none() {
                            break;
                        }
                    }
                }
                let _ = writer.flush();
            })?;
        Ok(Self {
            sender: Some(sender),
        })
    }

    /// An audit log kept in memory (tests read it back).
    ///
    /// # Errors
    /// When the thread cannot be started.
    pub fn in_memory() -> std::io::Result<(Self, SharedBuffer)> {
        let buffer = SharedBuffer::default();
        Ok((Self::to_writer(buffer.clone())?, buffer))
    }

    /// Queues a record; waits when the writer is behind.
    pub async fn record(&self, record: &AuditRecord) {
        let Some(sender) = &self.sender else { return };
        // A record is a few hundred bytes: one allocation, not four growing ones.
        let mut line = Vec::with_capacity(1024);
        if let Err(e) = serde_json::to_writer(&mut line, record) {
            tracing::error!(error = %e, "cannot encode an audit record");
            return;
        }
        line.push(b'\n');
        if sender.send(Message::Line(line)).await.is_err() {
            tracing::error!("the audit writer has stopped; a record was lost");
        }
    }

    /// Waits until every record queued so far is written and flushed.
    pub async fn flush(&self) {
        let Some(sender) = &self.sender else { return };
        let (done, wait) = oneshot::channel();
        if sender.send(Message::Flush(done)).await.is_ok() {
            let _ = wait.await;
        }
    }
}

/// A clonable in-memory writer.
#[derive(Clone, Debug, Default)]
pub struct SharedBuffer(Arc<Mutex<Vec<u8>>>);

impl SharedBuffer {
    /// What was written so far.
    #[must_use]
    pub fn contents(&self) -> Vec<u8> {
        self.0.lock().map(|b| b.clone()).unwrap_or_default()
    }

    /// What was written so far, as text.
    #[must_use]
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.contents()).into_owned()
    }
}

impl Write for SharedBuffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if let Ok(mut b) = self.0.lock() {
            b.extend_from_slice(buf);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn records_are_json_lines_flushed_on_demand() {
        let (log, buffer) = AuditLog::in_memory().expect("log");
        let mut record = AuditRecord::new("kms", "req-1", OffsetDateTime::UNIX_EPOCH);
        record.event_name = "Encrypt".to_owned();
        record.error_code = Some("NotFoundException");
        log.record(&record).await;
        record.request_id = "req-2".to_owned();
        log.record(&record).await;
        log.flush().await;
        let text = buffer.text();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).expect("json line"))
            .collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0]["eventName"], "Encrypt");
        assert_eq!(lines[1]["requestId"], "req-2");
        assert_eq!(lines[0]["errorCode"], "NotFoundException");
        assert_eq!(lines[0]["eventTime"], "1970-01-01T00:00:00Z");
    }
}
