//! The outbox: ships evidence records from the store to every configured sink, at least once.
//!
//! The queue is the store's `records` table (payloads, never file paths); each sink keeps a
//! cursor (`sinks.delivered_seq`), so a sink that is down simply falls behind and catches up
//! later, and one path serves first start and recovery after a crash alike. A record's
//! idempotent id is its envelope digest, which every sink puts in the object or file name, so a
//! redelivery after a crash between "delivered" and "cursor saved" writes the same name with the
//! same bytes and changes nothing.
//!
//! [`drain`] is the one routine that moves records: for each sink whose backoff has expired it
//! reads records after the cursor in batches, runs the PHI egress guard, delivers, advances the
//! cursor to the last record the sink confirmed, and on failure records the error and when to
//! try again (exponential backoff with equal jitter, capped). It never deletes anything: when a
//! backlog passes a configured size or age it appends an `outbox_overflow` alarm record, once per
//! crossing. This module and `mcp_client` are the only ones that touch the network; it prints
//! nothing (the CLI and the daemon report what [`drain`] returns).
//!
//! Sinks sit behind one trait, [`Sink`], rather than a closed enum: the fault tests plug in
//! sinks that fail on purpose, and a sink is built from its configuration section alone. The
//! sinks are `directory`, `s3` and `control_plane` (over `mcp_client`'s mTLS connection). The
//! trait returns a boxed future so `dyn Sink` works without a macro crate.

pub mod control_plane;
pub mod directory;
pub mod s3;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use ed25519_dalek::SigningKey;
use jiff::Timestamp;
use msp_compliance_protocol::dsse::Envelope;
use msp_compliance_protocol::evidence::{Author, Draft, RecordKind, Statement};
use msp_compliance_protocol::ids::hipaa;
use serde_json::json;

use crate::config::{Config, OutboxFile};
use crate::evidence::store::{Store, StoreError, StoredRecord};
use crate::phi::Scrubber;

/// Records read from the store and handed to a sink at once. Large enough that the per-batch
/// costs (one SQLite commit for the cursor, one directory fsync) vanish, small enough that
/// memory stays flat however long the backlog is (a record is a few KiB).
pub const BATCH_RECORDS: usize = 512;

/// Prefix of the `Store::meta` keys that remember a raised overflow alarm, per sink.
const OVERFLOW_META_PREFIX: &str = "outbox.overflow.";

/// Event name of the overflow alarm record.
pub const OVERFLOW_EVENT: &str = "outbox_overflow";

/// One record on its way to a sink: what every sink needs to name and store it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outgoing {
    /// Position in the chain.
    pub seq: u64,
    /// The envelope digest without its `sha256:` prefix (64 lowercase hex digits): the
    /// idempotent id.
    pub digest_hex: String,
    /// Site id of the record (`-` when it was written without one).
    pub site_id: String,
    /// Host id of the record.
    pub host_id: String,
    /// The record's `retain_until`.
    pub retain_until: Timestamp,
    /// The stored canonical envelope bytes, exactly as signed and chained.
    pub envelope: Vec<u8>,
}

impl Outgoing {
    /// `<seq, 20 digits>-<digest hex>.json`: sorts in chain order and names the content.
    pub fn file_name(&self) -> String {
        format!("{:020}-{}.json", self.seq, self.digest_hex)
    }

    /// `<site>/<host>/<file name>`: the object key below a sink's prefix.
    pub fn object_name(&self) -> String {
        format!("{}/{}/{}", self.site_id, self.host_id, self.file_name())
    }
}

/// What a sink did with a batch: the first `delivered` records are durably stored there (in
/// order); `error` says why it stopped before the end, if it did.
#[derive(Debug)]
pub struct Delivery {
    /// Length of the delivered prefix of the batch.
    pub delivered: usize,
    /// Why delivery stopped early; `None` when the whole batch was delivered.
    pub error: Option<SinkError>,
}

/// Somewhere evidence is shipped to.
///
/// A sink must be idempotent by [`Outgoing::object_name`] (or at least by `digest_hex`):
/// delivering a record it already holds is a success that changes nothing, and finding
/// *different* bytes under that name is an error, never an overwrite.
pub trait Sink: Send + Sync {
    /// Stable name; the store keys the cursor by it, so it names the destination (a sink
    /// pointed somewhere new starts from the first record, which idempotence makes harmless).
    fn name(&self) -> &str;

    /// Delivers records in order and reports the prefix that is durably stored. Must not
    /// return before what it reports as delivered is durable, and must bound its own waiting
    /// (timeouts), since the drain waits for it.
    fn deliver<'a>(
        &'a self,
        batch: &'a [Outgoing],
    ) -> Pin<Box<dyn Future<Output = Delivery> + Send + 'a>>;
}

/// Why a sink could not store a record. The `Display` text becomes the sink's `last_error`, so
/// it never contains credentials.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SinkError {
    /// Something else sits under the record's name: evidence is never overwritten.
    #[error("{name}: already holds different content; not overwritten")]
    Conflict { name: String },
    /// A local file operation failed.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The server answered with an error status.
    #[error("{operation} {name}: HTTP {status} {code}: {message}")]
    Refused {
        operation: &'static str,
        name: String,
        status: u16,
        /// The S3 error code (`AccessDenied`, `SlowDown`…) or `-` when the body had none.
        code: String,
        message: String,
    },
    /// No answer in time.
    #[error("{operation} {name}: no answer within {timeout_ms} ms")]
    TimedOut {
        operation: &'static str,
        name: String,
        timeout_ms: u128,
    },
    /// The connection failed or the answer was not HTTP.
    #[error("{operation} {name}: {message}")]
    Transport {
        operation: &'static str,
        name: String,
        message: String,
    },
    /// The destination read the record and refused to store it (the control plane's
    /// `rejected` verdict); nothing after it is delivered until someone looks.
    #[error("{name}: rejected by the server: {reason}")]
    Rejected { name: String, reason: String },
}

/// Why a sink could not be built from the configuration.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SetupError {
    /// A credentials file could not be read (its content is never quoted).
    #[error("cannot read {path}: {source}")]
    Credentials {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A credentials file is not usable.
    #[error("{path}: {message}")]
    CredentialsFormat { path: PathBuf, message: String },
    /// The HTTP client could not be built.
    #[error("cannot build the HTTP client: {0}")]
    Client(String),
    /// The endpoint is not a usable URL.
    #[error("outbox.s3.endpoint: {0}")]
    Endpoint(String),
    /// The control-plane client could not be built.
    #[error("control_plane: {0}")]
    ControlPlane(#[from] crate::mcp_client::SetupError),
}

/// Backoff and backlog limits, from the configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    /// Delay after the first failure.
    pub backoff_initial: Duration,
    /// Longest delay.
    pub backoff_max: Duration,
    /// Backlog (records) above which an overflow alarm is recorded.
    pub max_backlog_records: u64,
    /// Age of the oldest undelivered record above which an overflow alarm is recorded.
    pub max_backlog_age: Duration,
    /// Records per batch.
    pub batch_records: usize,
}

impl Policy {
    /// The policy of an `outbox` configuration section.
    pub fn from_config(outbox: &OutboxFile) -> Policy {
        Policy {
            backoff_initial: Duration::from_millis(outbox.backoff_initial_ms),
            backoff_max: Duration::from_millis(outbox.backoff_max_ms),
            max_backlog_records: outbox.max_backlog_records,
            max_backlog_age: Duration::from_secs(outbox.max_backlog_age_hours.saturating_mul(3600)),
            batch_records: BATCH_RECORDS,
        }
    }
}

/// What one drain pass did for one sink.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SinkReport {
    /// The sink's name.
    pub name: String,
    /// Records delivered in this pass.
    pub delivered: u64,
    /// Seq of the last record delivered in this pass.
    pub last_delivered_seq: Option<u64>,
    /// What ended the pass for this sink.
    pub outcome: Outcome,
    /// The overflow alarm appended in this pass, if the backlog crossed a limit.
    pub overflow: Option<Overflow>,
}

/// How a sink's part of a drain pass ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Every record up to the head is delivered.
    CaughtUp,
    /// The sink is backing off after a failure; nothing was attempted.
    NotDue {
        /// Unix milliseconds of the next attempt.
        next_attempt_at_ms: i64,
    },
    /// Delivery failed; the error is recorded and the sink backs off.
    Failed {
        /// Why.
        failure: Failure,
        /// Unix milliseconds of the next attempt.
        next_attempt_at_ms: i64,
    },
}

/// A failed delivery, by cause.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Failure {
    /// The sink refused, timed out or could not be reached (retried with backoff).
    Sink(String),
    /// The PHI egress guard matched a record: it is not shipped, and nothing after it either,
    /// until someone looks. This must not happen, since bodies are scrubbed before sealing.
    PhiGuard {
        /// The record.
        seq: u64,
    },
    /// A stored record could not be read as an evidence envelope (damaged outside the agent).
    Corrupt {
        /// The record.
        seq: u64,
        /// What is wrong.
        message: String,
    },
}

impl Failure {
    /// The text stored as the sink's `last_error`.
    pub fn message(&self) -> String {
        match self {
            Failure::Sink(message) => message.clone(),
            Failure::PhiGuard { seq } => format!(
                "record seq {seq}: the PHI egress guard matched its payload; not shipped (bodies are scrubbed before sealing, so this is a bug: report it)"
            ),
            Failure::Corrupt { seq, message } => {
                format!("record seq {seq}: not a readable evidence envelope: {message}")
            }
        }
    }
}

/// An overflow alarm that a drain pass recorded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Overflow {
    /// Seq of the alarm record.
    pub alarm_seq: u64,
    /// Undelivered records when it was raised.
    pub backlog: u64,
    /// Age of the oldest undelivered record, in seconds.
    pub oldest_age_s: u64,
}

/// One drain pass over every sink: delivers what is due, records failures and backoff, raises
/// overflow alarms. Errors are store errors only (a sink's failure is part of the report).
///
/// `author` and `key` sign the overflow alarm records; `now` is the clock (read whenever a
/// time is recorded, so a long pass stamps its results with the time they happened).
///
/// The pass does blocking disk I/O (SQLite commits, the directory sink's fsyncs) between its
/// awaits; the daemon runs it where blocking is allowed, the CLI on its own small runtime.
pub async fn drain(
    store: &mut Store,
    sinks: &[Box<dyn Sink>],
    policy: &Policy,
    scrubber: &Scrubber,
    author: &Author,
    key: &SigningKey,
    now: &(dyn Fn() -> Timestamp + Sync),
) -> Result<Vec<SinkReport>, StoreError> {
    let mut reports = Vec::with_capacity(sinks.len());
    for sink in sinks {
        let mut report = drain_sink(store, sink.as_ref(), policy, scrubber, now).await?;
        report.overflow = check_overflow(store, sink.name(), policy, author, key, now())?;
        reports.push(report);
    }
    Ok(reports)
}

/// The delay before attempt `failures + 1`, after `failures` consecutive failures (from 1):
/// `d = min(max, initial × 2^(failures-1))`, then equal jitter, a uniform pick in `[d/2, d]`.
///
/// Equal rather than full jitter (a pick in `[0, d]`): a failing sink is never retried almost
/// at once, which full jitter allows on any attempt, while a fleet of agents that failed
/// together still spreads its retries over half the window. `random` is any uniformly
/// distributed value (the caller draws it, so this stays a pure function).
pub fn backoff_delay(policy: &Policy, failures: u32, random: u64) -> Duration {
    let initial = policy.backoff_initial.as_millis().max(1);
    let max = policy.backoff_max.as_millis().max(initial);
    let doublings = failures.saturating_sub(1).min(63);
    let full = initial
        .checked_mul(1u128 << doublings)
        .map_or(max, |it| it.min(max));
    let half = full / 2;
    let spread = full - half;
    let millis = half + u128::from(random) % (spread + 1);
    Duration::from_millis(u64::try_from(millis).unwrap_or(u64::MAX))
}

/// Builds the sinks the configuration names, in a fixed order (directory, S3, control plane).
pub fn sinks_from_config(config: &Config) -> Result<Vec<Box<dyn Sink>>, SetupError> {
    let mut sinks: Vec<Box<dyn Sink>> = Vec::new();
    if let Some(directory) = &config.outbox.directory {
        sinks.push(Box::new(directory::DirectorySink::new(
            directory.path.clone(),
        )));
    }
    if let Some(s3) = &config.outbox.s3 {
        let settings = s3::S3Settings::from_config(s3)?;
        sinks.push(Box::new(s3::S3Sink::new(settings)?));
    }
    if let Some(control_plane) = &config.control_plane {
        let client = crate::mcp_client::Client::new(control_plane)?;
        sinks.push(Box::new(control_plane::ControlPlaneSink::new(
            std::sync::Arc::new(client),
        )));
    }
    Ok(sinks)
}

/// The names of the sinks the configuration names, in [`sinks_from_config`]'s order, without
/// building them (no credentials are read).
pub fn sink_names(config: &Config) -> Vec<String> {
    let mut names = Vec::new();
    if let Some(directory) = &config.outbox.directory {
        names.push(directory::DirectorySink::name_for(&directory.path));
    }
    if let Some(s3) = &config.outbox.s3 {
        names.push(s3::S3Sink::name_for(&s3.endpoint, &s3.bucket, &s3.prefix));
    }
    if let Some(control_plane) = &config.control_plane {
        names.push(control_plane::ControlPlaneSink::name_for(
            &control_plane.url,
        ));
    }
    names
}

/// The `Store::meta` key remembering a raised overflow alarm of a sink.
pub fn overflow_meta_key(sink: &str) -> String {
    format!("{OVERFLOW_META_PREFIX}{sink}")
}

/// Reads a record for shipping: decodes the payload, runs the PHI egress guard on it, and takes
/// the fields sinks name records by.
pub fn prepare(record: &StoredRecord, scrubber: &Scrubber) -> Result<Outgoing, Failure> {
    let corrupt = |message: String| Failure::Corrupt {
        seq: record.seq,
        message,
    };
    let envelope: Envelope = serde_json::from_slice(&record.envelope)
        .map_err(|err| corrupt(format!("envelope: {err}")))?;
    let payload = STANDARD
        .decode(envelope.payload.as_bytes())
        .map_err(|_| corrupt("payload is not valid base64".into()))?;
    let text = std::str::from_utf8(&payload).map_err(|_| corrupt("payload is not UTF-8".into()))?;
    if scrubber.contains_phi(text) {
        return Err(Failure::PhiGuard { seq: record.seq });
    }
    let statement: Statement =
        serde_json::from_str(text).map_err(|err| corrupt(format!("statement: {err}")))?;
    let predicate = statement.predicate;
    if predicate.seq != record.seq {
        return Err(corrupt(format!(
            "stored at seq {} but its predicate says seq {}",
            record.seq, predicate.seq
        )));
    }
    let site_id = match predicate.site_id {
        Some(site) if crate::config::is_identifier(&site) => site,
        Some(site) => return Err(corrupt(format!("site id {site:?} is not an identifier"))),
        None => "-".to_string(),
    };
    if !crate::config::is_identifier(&predicate.host_id) {
        return Err(corrupt(format!(
            "host id {:?} is not an identifier",
            predicate.host_id
        )));
    }
    let digest_hex = record
        .digest
        .strip_prefix("sha256:")
        .filter(|it| it.len() == 64 && it.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
        .ok_or_else(|| corrupt(format!("digest {:?} is not sha256:<hex>", record.digest)))?
        .to_string();
    Ok(Outgoing {
        seq: record.seq,
        digest_hex,
        site_id,
        host_id: predicate.host_id,
        retain_until: predicate.retain_until,
        envelope: record.envelope.clone(),
    })
}

async fn drain_sink(
    store: &mut Store,
    sink: &dyn Sink,
    policy: &Policy,
    scrubber: &Scrubber,
    now: &(dyn Fn() -> Timestamp + Sync),
) -> Result<SinkReport, StoreError> {
    let name = sink.name().to_string();
    let state = store.sink(&name)?;
    let mut report = SinkReport {
        name: name.clone(),
        delivered: 0,
        last_delivered_seq: None,
        outcome: Outcome::CaughtUp,
        overflow: None,
    };
    if now().as_millisecond() < state.next_attempt_at {
        report.outcome = Outcome::NotDue {
            next_attempt_at_ms: state.next_attempt_at,
        };
        return Ok(report);
    }
    // The pass ends at the head it started with, so it terminates even while records are
    // appended (the next pass takes those).
    let Some((head, _)) = store.head()? else {
        return Ok(report);
    };
    // delivered_seq is -1 before anything was delivered.
    let mut next = u64::try_from(state.delivered_seq + 1).unwrap_or(0);
    let batch_records = policy.batch_records.max(1);
    while next <= head {
        let limit =
            usize::try_from(head - next + 1).map_or(batch_records, |it| it.min(batch_records));
        let records = store.records_from(next, limit)?;
        let Some(last) = records.last().map(|it| it.seq) else {
            break;
        };
        let mut batch = Vec::with_capacity(records.len());
        let mut blocked = None;
        for record in &records {
            match prepare(record, scrubber) {
                Ok(outgoing) => batch.push(outgoing),
                Err(failure) => {
                    blocked = Some(failure);
                    break;
                }
            }
        }
        drop(records);
        let mut failure = blocked;
        if !batch.is_empty() {
            let delivery = sink.deliver(&batch).await;
            let delivered = delivery.delivered.min(batch.len());
            if delivered > 0 {
                let seq = batch[delivered - 1].seq;
                store.mark_delivered(&name, seq, now())?;
                report.delivered += delivered as u64;
                report.last_delivered_seq = Some(seq);
            }
            // A sink error takes precedence: it is what stopped delivery first.
            if let Some(error) = delivery.error {
                failure = Some(Failure::Sink(error.to_string()));
            } else if delivered < batch.len() {
                failure = Some(Failure::Sink(format!(
                    "sink stopped after {delivered} of {} records without saying why",
                    batch.len()
                )));
            }
        }
        if let Some(failure) = failure {
            let failures = store.sink(&name)?.attempts.saturating_add(1);
            let delay = backoff_delay(policy, failures, random_u64());
            let delay_ms = i64::try_from(delay.as_millis()).unwrap_or(i64::MAX);
            let next_attempt_at_ms = now().as_millisecond().saturating_add(delay_ms);
            store.mark_failed(&name, &failure.message(), next_attempt_at_ms)?;
            report.outcome = Outcome::Failed {
                failure,
                next_attempt_at_ms,
            };
            return Ok(report);
        }
        next = last + 1;
    }
    Ok(report)
}

/// Appends an overflow alarm when the sink's backlog is past a limit and no alarm is raised
/// for it yet; re-arms (forgets the raised alarm) once the backlog is within both limits.
fn check_overflow(
    store: &mut Store,
    sink: &str,
    policy: &Policy,
    author: &Author,
    key: &SigningKey,
    now: Timestamp,
) -> Result<Option<Overflow>, StoreError> {
    let (backlog, oldest) = store.backlog(sink)?;
    let oldest_age_s = oldest.map_or(0, |it| u64::try_from(now.as_second() - it).unwrap_or(0));
    let over_records = backlog > policy.max_backlog_records;
    let over_age = backlog > 0 && oldest_age_s > policy.max_backlog_age.as_secs();
    let meta_key = overflow_meta_key(sink);
    let raised = store.meta(&meta_key)?.is_some();
    if !(over_records || over_age) {
        if raised {
            store.remove_meta(&meta_key)?;
        }
        return Ok(None);
    }
    if raised {
        return Ok(None);
    }
    let mut limit = serde_json::Map::new();
    if over_records {
        limit.insert(
            "max_backlog_records".into(),
            json!(policy.max_backlog_records),
        );
    }
    if over_age {
        limit.insert(
            "max_backlog_age_hours".into(),
            json!(policy.max_backlog_age.as_secs() / 3600),
        );
    }
    let draft = Draft {
        kind: RecordKind::AgentLifecycle,
        baseline: None,
        controls: vec![hipaa::AUDIT_CONTROLS.to_string()],
        body: json!({
            "event": OVERFLOW_EVENT,
            "sink": sink,
            "backlog": backlog,
            "oldest_age_s": oldest_age_s,
            "limit": limit,
        }),
    };
    let appended = store.append(&[draft], author, now, key)?;
    store.set_meta(&meta_key, &now.as_second().to_string())?;
    Ok(appended.first().map(|it| Overflow {
        alarm_seq: it.seq,
        backlog,
        oldest_age_s,
    }))
}

/// A uniformly distributed value for the jitter. Failing randomness only loses the jitter
/// (the delay is then the upper bound), never the backoff itself.
fn random_u64() -> u64 {
    let mut bytes = [0u8; 8];
    match getrandom::fill(&mut bytes) {
        Ok(()) => u64::from_le_bytes(bytes),
        Err(_) => u64::MAX,
    }
}

/// Reads a small credentials file (one line), refusing large files; trailing whitespace is
/// dropped. The content never appears in an error.
fn read_credential(path: &Path, secret: bool) -> Result<String, SetupError> {
    use std::io::Read;
    use std::os::unix::fs::PermissionsExt;

    const MAX_CREDENTIAL_BYTES: u64 = 4096;
    let io = |source| SetupError::Credentials {
        path: path.to_path_buf(),
        source,
    };
    let format = |message: &str| SetupError::CredentialsFormat {
        path: path.to_path_buf(),
        message: message.to_string(),
    };
    let file = std::fs::File::open(path).map_err(io)?;
    let mode = file.metadata().map_err(io)?.permissions().mode();
    // Same rule as the signing key: a secret others could read is not a secret.
    if secret && mode & 0o077 != 0 {
        return Err(format(&format!(
            "secret file is readable by group or others (mode {:04o}); restrict it with chmod 600",
            mode & 0o7777
        )));
    }
    let mut bytes = Vec::new();
    file.take(MAX_CREDENTIAL_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(io)?;
    if bytes.len() as u64 > MAX_CREDENTIAL_BYTES {
        return Err(format("larger than 4 KiB; expected one line"));
    }
    let text = String::from_utf8(bytes).map_err(|_| format("not UTF-8 text"))?;
    let value = text.trim_end().to_string();
    if value.is_empty() || value.contains(['\n', '\r']) {
        return Err(format("expected exactly one non-empty line"));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicI64, Ordering};

    use msp_compliance_protocol::dsse;

    use super::*;

    fn author() -> Author {
        Author {
            site_id: Some("clinic-a".into()),
            host_id: "nixos-1".into(),
            agent_version: "0.1.0".into(),
        }
    }

    fn key() -> SigningKey {
        SigningKey::from_bytes(&[7; 32])
    }

    fn draft(n: u64) -> Draft {
        Draft {
            kind: RecordKind::Check,
            baseline: None,
            controls: vec![hipaa::AUDIT_CONTROLS.into()],
            body: json!({ "n": n, "status": "pass" }),
        }
    }

    fn policy() -> Policy {
        Policy {
            backoff_initial: Duration::from_millis(1_000),
            backoff_max: Duration::from_millis(60_000),
            max_backlog_records: 1_000_000,
            max_backlog_age: Duration::from_secs(72 * 3600),
            batch_records: 4,
        }
    }

    struct Clock(AtomicI64);

    impl Clock {
        fn at(ms: i64) -> Clock {
            Clock(AtomicI64::new(ms))
        }
        fn now(&self) -> Timestamp {
            Timestamp::from_millisecond(self.0.load(Ordering::SeqCst)).unwrap()
        }
        fn set(&self, ms: i64) {
            self.0.store(ms, Ordering::SeqCst);
        }
    }

    /// An in-process sink: keeps what it was given by name, can be told to fail or to stop
    /// after some records.
    #[derive(Default)]
    struct MemorySink {
        stored: Mutex<Vec<(String, Vec<u8>)>>,
        fail: Mutex<bool>,
        stop_after: Mutex<Option<usize>>,
        calls: Mutex<usize>,
    }

    impl Sink for MemorySink {
        fn name(&self) -> &str {
            "memory"
        }
        fn deliver<'a>(
            &'a self,
            batch: &'a [Outgoing],
        ) -> Pin<Box<dyn Future<Output = Delivery> + Send + 'a>> {
            Box::pin(async move {
                *self.calls.lock().unwrap() += 1;
                if *self.fail.lock().unwrap() {
                    return Delivery {
                        delivered: 0,
                        error: Some(SinkError::Transport {
                            operation: "PUT",
                            name: batch[0].object_name(),
                            message: "connection refused".into(),
                        }),
                    };
                }
                let take = self
                    .stop_after
                    .lock()
                    .unwrap()
                    .unwrap_or(batch.len())
                    .min(batch.len());
                let mut stored = self.stored.lock().unwrap();
                for outgoing in &batch[..take] {
                    let name = outgoing.object_name();
                    if !stored.iter().any(|(it, _)| *it == name) {
                        stored.push((name, outgoing.envelope.clone()));
                    }
                }
                Delivery {
                    delivered: take,
                    error: None,
                }
            })
        }
    }

    fn block_on<F: Future>(future: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(future)
    }

    fn fill(store: &mut Store, n: u64, at_ms: i64) {
        let drafts: Vec<Draft> = (0..n).map(draft).collect();
        store
            .append(
                &drafts,
                &author(),
                Timestamp::from_millisecond(at_ms).unwrap(),
                &key(),
            )
            .unwrap();
    }

    fn run(
        store: &mut Store,
        sinks: &[Box<dyn Sink>],
        policy: &Policy,
        clock: &Clock,
    ) -> Vec<SinkReport> {
        let scrubber = Scrubber::new(b"test token key 0123");
        block_on(drain(
            store,
            sinks,
            policy,
            &scrubber,
            &author(),
            &key(),
            &|| clock.now(),
        ))
        .unwrap()
    }

    fn overflow_alarms(store: &Store) -> Vec<serde_json::Value> {
        let mut res = Vec::new();
        store
            .for_each_since(0, |record| -> Result<(), StoreError> {
                let envelope = record.parse().unwrap();
                let payload = STANDARD.decode(envelope.payload).unwrap();
                let statement: Statement = serde_json::from_slice(&payload).unwrap();
                if statement.predicate.body["event"] == OVERFLOW_EVENT {
                    res.push(statement.predicate.body);
                }
                Ok(())
            })
            .unwrap();
        res
    }

    #[test]
    fn backoff_doubles_from_initial_to_the_cap_with_equal_jitter() {
        let policy = policy();
        let expected_full: [u64; 8] = [1_000, 2_000, 4_000, 8_000, 16_000, 32_000, 60_000, 60_000];
        for (idx, full) in expected_full.iter().enumerate() {
            let failures = idx as u32 + 1;
            assert_eq!(
                backoff_delay(&policy, failures, 0),
                Duration::from_millis(full / 2),
                "lowest pick of failure {failures}"
            );
            assert_eq!(
                backoff_delay(&policy, failures, *full - full / 2),
                Duration::from_millis(*full),
                "highest pick of failure {failures}"
            );
            for random in [1, 77, 123_456_789, u64::MAX] {
                let delay = backoff_delay(&policy, failures, random).as_millis() as u64;
                assert!(
                    (full / 2..=*full).contains(&delay),
                    "{delay} for {failures}"
                );
            }
        }
        // Absurd attempt counts saturate at the cap instead of overflowing.
        let delay = backoff_delay(&policy, u32::MAX, u64::MAX);
        assert!(delay <= Duration::from_millis(60_000));
    }

    #[test]
    fn drain_delivers_everything_in_batches_and_moves_the_cursor_to_the_head() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(&dir.path().join("e.sqlite")).unwrap();
        fill(&mut store, 10, 1_800_000_000_000);
        let sink = std::sync::Arc::new(MemorySink::default());
        let sinks: Vec<Box<dyn Sink>> = vec![Box::new(ArcSink(sink.clone()))];
        let clock = Clock::at(1_800_000_001_000);
        let reports = run(&mut store, &sinks, &policy(), &clock);
        assert_eq!(reports[0].outcome, Outcome::CaughtUp);
        assert_eq!(reports[0].delivered, 10);
        assert_eq!(reports[0].last_delivered_seq, Some(9));
        assert_eq!(*sink.calls.lock().unwrap(), 3, "batches of 4, 4 and 2");
        assert_eq!(store.sink("memory").unwrap().delivered_seq, 9);
        let stored = sink.stored.lock().unwrap();
        assert_eq!(stored.len(), 10);
        let first = store.records_from(0, 1).unwrap().remove(0);
        assert_eq!(stored[0].1, first.envelope);
        assert_eq!(
            stored[0].0,
            format!(
                "clinic-a/nixos-1/{:020}-{}.json",
                0,
                first.digest.strip_prefix("sha256:").unwrap()
            )
        );
        drop(stored);
        // A second pass finds nothing to do.
        let reports = run(&mut store, &sinks, &policy(), &clock);
        assert_eq!(
            (reports[0].delivered, &reports[0].outcome),
            (0, &Outcome::CaughtUp)
        );
    }

    #[test]
    fn a_failing_sink_backs_off_keeps_everything_and_recovers_once() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(&dir.path().join("e.sqlite")).unwrap();
        fill(&mut store, 6, 1_800_000_000_000);
        let sink = std::sync::Arc::new(MemorySink::default());
        *sink.fail.lock().unwrap() = true;
        let sinks: Vec<Box<dyn Sink>> = vec![Box::new(ArcSink(sink.clone()))];
        let clock = Clock::at(1_800_000_000_000);
        let policy = policy();
        let mut delays = Vec::new();
        for failures in 1..=9u32 {
            let reports = run(&mut store, &sinks, &policy, &clock);
            let Outcome::Failed {
                next_attempt_at_ms,
                failure,
            } = &reports[0].outcome
            else {
                panic!("expected a failure, got {:?}", reports[0].outcome);
            };
            assert!(failure.message().contains("connection refused"));
            let delay = next_attempt_at_ms - clock.now().as_millisecond();
            let full = (1_000i64 << (failures - 1)).min(60_000);
            assert!(
                (full / 2..=full).contains(&delay),
                "delay {delay} after {failures}"
            );
            delays.push(delay);
            let state = store.sink("memory").unwrap();
            assert_eq!(state.attempts, failures);
            assert!(state.last_error.unwrap().contains("connection refused"));
            // Before the next attempt is due, nothing is tried.
            clock.set(next_attempt_at_ms - 1);
            let calls = *sink.calls.lock().unwrap();
            let reports = run(&mut store, &sinks, &policy, &clock);
            assert_eq!(
                reports[0].outcome,
                Outcome::NotDue {
                    next_attempt_at_ms: *next_attempt_at_ms
                }
            );
            assert_eq!(*sink.calls.lock().unwrap(), calls);
            clock.set(*next_attempt_at_ms);
        }
        assert!(delays.windows(2).take(5).all(|it| it[1] > it[0] / 2));
        assert!(delays.iter().all(|it| *it <= 60_000));
        assert_eq!(store.len().unwrap(), 6, "nothing dropped");
        *sink.fail.lock().unwrap() = false;
        let reports = run(&mut store, &sinks, &policy, &clock);
        assert_eq!(reports[0].outcome, Outcome::CaughtUp);
        assert_eq!(reports[0].delivered, 6);
        let state = store.sink("memory").unwrap();
        assert_eq!(
            (state.attempts, state.last_error, state.next_attempt_at),
            (0, None, 0)
        );
        assert_eq!(sink.stored.lock().unwrap().len(), 6);
    }

    #[test]
    fn a_partial_delivery_moves_the_cursor_to_the_delivered_prefix_only() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(&dir.path().join("e.sqlite")).unwrap();
        fill(&mut store, 4, 1_800_000_000_000);
        let sink = std::sync::Arc::new(MemorySink::default());
        *sink.stop_after.lock().unwrap() = Some(3);
        let sinks: Vec<Box<dyn Sink>> = vec![Box::new(ArcSink(sink.clone()))];
        let clock = Clock::at(1_800_000_000_000);
        let reports = run(&mut store, &sinks, &policy(), &clock);
        assert_eq!(reports[0].delivered, 3);
        assert!(matches!(reports[0].outcome, Outcome::Failed { .. }));
        assert_eq!(store.sink("memory").unwrap().delivered_seq, 2);
    }

    #[test]
    fn the_phi_guard_stops_shipping_at_the_record_and_says_so() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(&dir.path().join("e.sqlite")).unwrap();
        fill(&mut store, 2, 1_800_000_000_000);
        // A body that bypassed the scrubber (which `append` callers must apply).
        let leaked = Draft {
            kind: RecordKind::Check,
            baseline: None,
            controls: vec![],
            body: json!({ "note": "patient SSN 123-45-6789, call 555-867-5309" }),
        };
        store
            .append(
                &[leaked, draft(3)],
                &author(),
                Timestamp::from_second(1_800_000_000).unwrap(),
                &key(),
            )
            .unwrap();
        let sink = std::sync::Arc::new(MemorySink::default());
        let sinks: Vec<Box<dyn Sink>> = vec![Box::new(ArcSink(sink.clone()))];
        let clock = Clock::at(1_800_000_000_000);
        let reports = run(&mut store, &sinks, &policy(), &clock);
        let Outcome::Failed { failure, .. } = &reports[0].outcome else {
            panic!("expected the guard to stop delivery: {:?}", reports[0]);
        };
        assert_eq!(*failure, Failure::PhiGuard { seq: 2 });
        assert_eq!(reports[0].delivered, 2);
        assert_eq!(sink.stored.lock().unwrap().len(), 2);
        let state = store.sink("memory").unwrap();
        assert_eq!(state.delivered_seq, 1);
        assert!(state.last_error.unwrap().contains("PHI egress guard"));
    }

    #[test]
    fn overflow_alarm_is_recorded_once_per_crossing_and_nothing_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(&dir.path().join("e.sqlite")).unwrap();
        let sink = std::sync::Arc::new(MemorySink::default());
        *sink.fail.lock().unwrap() = true;
        let sinks: Vec<Box<dyn Sink>> = vec![Box::new(ArcSink(sink.clone()))];
        let policy = Policy {
            max_backlog_records: 10,
            ..policy()
        };
        let clock = Clock::at(1_800_000_000_000);
        fill(&mut store, 10, 1_800_000_000_000);
        let reports = run(&mut store, &sinks, &policy, &clock);
        assert_eq!(reports[0].overflow, None, "10 is the limit, not past it");
        fill(&mut store, 1, 1_800_000_000_000);
        let reports = run(&mut store, &sinks, &policy, &clock);
        let overflow = reports[0].overflow.clone().unwrap();
        assert_eq!((overflow.alarm_seq, overflow.backlog), (11, 11));
        for _ in 0..5 {
            clock.set(clock.now().as_millisecond() + 120_000);
            fill(&mut store, 1, clock.now().as_millisecond());
            let reports = run(&mut store, &sinks, &policy, &clock);
            assert_eq!(reports[0].overflow, None);
        }
        let alarms = overflow_alarms(&store);
        assert_eq!(alarms.len(), 1);
        assert_eq!(
            alarms[0],
            json!({
                "event": "outbox_overflow",
                "sink": "memory",
                "backlog": 11,
                "oldest_age_s": 0,
                "limit": { "max_backlog_records": 10 },
            })
        );
        assert_eq!(
            store.len().unwrap(),
            17,
            "every record kept, the alarm added"
        );
        // Recovery empties the backlog and re-arms the alarm.
        *sink.fail.lock().unwrap() = false;
        clock.set(clock.now().as_millisecond() + 3_600_000);
        let reports = run(&mut store, &sinks, &policy, &clock);
        assert_eq!(reports[0].delivered, 17);
        assert_eq!(store.meta(&overflow_meta_key("memory")).unwrap(), None);
        *sink.fail.lock().unwrap() = true;
        fill(&mut store, 11, clock.now().as_millisecond());
        let reports = run(&mut store, &sinks, &policy, &clock);
        assert!(
            reports[0].overflow.is_some(),
            "a new crossing raises a new alarm"
        );
        assert_eq!(overflow_alarms(&store).len(), 2);
    }

    #[test]
    fn overflow_alarm_fires_on_age_too() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(&dir.path().join("e.sqlite")).unwrap();
        let sink = std::sync::Arc::new(MemorySink::default());
        *sink.fail.lock().unwrap() = true;
        let sinks: Vec<Box<dyn Sink>> = vec![Box::new(ArcSink(sink.clone()))];
        let policy = Policy {
            max_backlog_age: Duration::from_secs(3600),
            ..policy()
        };
        fill(&mut store, 1, 1_800_000_000_000);
        let clock = Clock::at(1_800_000_000_000 + 3_601_000);
        let reports = run(&mut store, &sinks, &policy, &clock);
        let overflow = reports[0].overflow.clone().unwrap();
        assert_eq!((overflow.backlog, overflow.oldest_age_s), (1, 3601));
        assert_eq!(
            overflow_alarms(&store)[0]["limit"],
            json!({ "max_backlog_age_hours": 1 })
        );
    }

    #[test]
    fn prepare_names_records_by_site_host_seq_and_digest() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(&dir.path().join("e.sqlite")).unwrap();
        fill(&mut store, 1, 1_800_000_000_123);
        let record = store.records_from(0, 1).unwrap().remove(0);
        let outgoing = prepare(&record, &Scrubber::new(b"0123456789abcdef")).unwrap();
        assert_eq!(outgoing.site_id, "clinic-a");
        assert_eq!(outgoing.host_id, "nixos-1");
        assert_eq!(
            outgoing.file_name(),
            format!("00000000000000000000-{}.json", &record.digest[7..])
        );
        let envelope = record.parse().unwrap();
        assert_eq!(dsse::digest(&envelope), record.digest);
        assert_eq!(
            outgoing.retain_until,
            Timestamp::from_millisecond(1_800_000_000_123)
                .unwrap()
                .checked_add(jiff::SignedDuration::from_hours(
                    24 * msp_compliance_protocol::evidence::RETENTION_DAYS
                ))
                .unwrap()
        );
        let mut damaged = record.clone();
        damaged.envelope = b"{\"payloadType\":1}".to_vec();
        assert!(matches!(
            prepare(&damaged, &Scrubber::new(b"0123456789abcdef")),
            Err(Failure::Corrupt { seq: 0, .. })
        ));
    }

    #[test]
    fn configured_sinks_are_named_without_reading_credentials() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.json");
        let config = |endpoint: &str| {
            json!({
                "site_id": "clinic-a",
                "host_id": "nixos-1",
                "outbox": {
                    "directory": { "path": "/mnt/evidence" },
                    "s3": {
                        "endpoint": endpoint,
                        "bucket": "worm",
                        "prefix": "hipaa/",
                        "access_key_id_file": "/nonexistent/id",
                        "secret_access_key_file": "/nonexistent/secret",
                    },
                },
            })
        };
        std::fs::write(&path, config("https://s3.example.test").to_string()).unwrap();
        let loaded = Config::load(&path).unwrap();
        assert_eq!(
            sink_names(&loaded),
            [
                "directory:/mnt/evidence",
                "s3:https://s3.example.test/worm/hipaa/"
            ]
        );
        let err = sinks_from_config(&loaded).err().unwrap().to_string();
        assert!(err.contains("/nonexistent/id"), "{err}");
        std::fs::write(
            &path,
            config("https://key:hunter2@s3.example.test").to_string(),
        )
        .unwrap();
        let err = Config::load(&path).err().unwrap().to_string();
        assert!(err.contains("outbox.s3.endpoint"), "{err}");
        assert!(!err.contains("hunter2"), "{err}");
    }

    #[test]
    fn the_drain_future_is_send_so_the_daemon_can_spawn_it() {
        fn assert_send<T: Send>(_: &T) {}
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(&dir.path().join("e.sqlite")).unwrap();
        let sinks: Vec<Box<dyn Sink>> = Vec::new();
        let scrubber = Scrubber::new(b"0123456789abcdef");
        let (policy, author, key) = (policy(), author(), key());
        let now = Timestamp::now;
        let future = drain(&mut store, &sinks, &policy, &scrubber, &author, &key, &now);
        assert_send(&future);
    }

    /// Lets a test keep a handle on a sink it hands to the drain.
    struct ArcSink(std::sync::Arc<MemorySink>);

    impl Sink for ArcSink {
        fn name(&self) -> &str {
            self.0.name()
        }
        fn deliver<'a>(
            &'a self,
            batch: &'a [Outgoing],
        ) -> Pin<Box<dyn Future<Output = Delivery> + Send + 'a>> {
            self.0.deliver(batch)
        }
    }
}
