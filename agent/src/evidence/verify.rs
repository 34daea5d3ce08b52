//! Verifying a whole chain fast: signatures in parallel, chain links in order.
//!
//! `evidence verify` reads records from the store or from an exported JSON Lines file and must
//! report the *first* bad record precisely. The expensive, independent half of the work (parse
//! the envelope, check it is canonical, check its Ed25519 signature, parse its statement) runs on
//! every core over a window of records (`protocol::evidence::open_many`, which checks signatures
//! in batches and gives exactly `open`'s result per record); the stateful half (seq, `prev`, the
//! pin) then runs in input order (`ChainVerifier::push_link`), so the verdict and the record
//! it names are those of feeding the records one by one to `ChainVerifier::push`. The next
//! window is read while one is checked. A store row in the compact form (`dsse::Compact`) is
//! checked as it is, its digest hashed as its canonical JSON is written, its payload signed
//! as it lies; an exported line is read by the fixed layout of canonical JSON
//! (`dsse::parse_canonical`) rather than parsed as JSON and written back to compare.
//!
//! A record's digest is SHA-256 of its envelope's RFC 8785 canonical form, and an exported
//! line must be exactly that form: that is the rule an auditor applies without our code
//! (README, "Verifying evidence without our code"), so a non-canonical line is refused here too.
//!
//! This module reads what it is given and judges; it prints nothing and writes nothing.

use std::collections::BTreeSet;
use std::io::BufRead;

use ed25519_dalek::VerifyingKey;
use msp_compliance_protocol::dsse::{self, Envelope};
use msp_compliance_protocol::evidence::{
    ChainError, ChainSummary, ChainVerifier, EnvelopeRef, Link, OpenError, Pin, RecordKind,
};
use sha2::{Digest, Sha256};

use crate::evidence::store::{Store, StoreError, StoredRow};

/// Records checked in parallel at a time: large enough to keep every core busy, small enough
/// that memory stays flat (about 2 KiB per record).
const WINDOW: usize = 2_048;
/// Below this many records in a window, threads cost more than they save.
const MIN_PARALLEL: usize = 64;
/// Records a worker checks at a time: one signature batch, a few milliseconds of work.
const WORK_UNIT: usize = 256;
/// Longest line accepted from a JSON Lines file.
const MAX_LINE_BYTES: usize = 16 * 1024 * 1024;
/// How far past a gap the verifier looks for the missing records, to tell a reorder from a
/// deletion.
const MAX_LOOKAHEAD: usize = 100_000;

/// Where a record came from, for messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Location {
    /// A row of the store, by its seq column.
    Store {
        /// The row's seq.
        seq: u64,
    },
    /// A line of a JSON Lines file, from 1.
    Line {
        /// Line number.
        line: u64,
    },
}

impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Location::Store { seq } => write!(f, "store row seq {seq}"),
            Location::Line { line } => write!(f, "line {line}"),
        }
    }
}

/// One record as read: its bytes and where they came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RawRecord {
    /// Where it was read.
    pub location: Location,
    /// The envelope's bytes: canonical JSON (no newline), or for a store row, the store's
    /// compact form ([`dsse::Compact`]).
    pub bytes: Vec<u8>,
    /// The digest the store keeps beside it (the outbox id), to be checked too.
    pub stored_digest: Option<String>,
}

impl From<StoredRow> for RawRecord {
    fn from(row: StoredRow) -> RawRecord {
        RawRecord {
            location: Location::Store { seq: row.seq },
            bytes: row.stored,
            stored_digest: Some(row.digest),
        }
    }
}

impl RawRecord {
    /// The record in the compact form, if it is a store row in that form (a line of a file is
    /// always JSON).
    fn compact(&self) -> Option<dsse::Compact<'_>> {
        match self.location {
            Location::Store { .. } => dsse::Compact::parse(&self.bytes),
            Location::Line { .. } => None,
        }
    }
}

/// What is wrong with the first bad record.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Problem {
    /// Signature, key, seq, `prev` or pin: see [`ChainError`].
    #[error("{0}")]
    Chain(ChainError),
    /// The store's digest column disagrees with the envelope it holds.
    #[error("the store's digest column says {stored} but the envelope hashes to {computed}")]
    DigestColumn {
        /// Digest in the column.
        stored: String,
        /// SHA-256 of the envelope bytes.
        computed: String,
    },
    /// The bytes are a JSON envelope but not in RFC 8785 canonical form.
    #[error(
        "record #{index} is not in RFC 8785 canonical form, so its digest cannot link the chain"
    )]
    NotCanonical {
        /// Position in the input.
        index: u64,
    },
    /// The bytes are not a DSSE envelope.
    #[error("record #{index} is not a DSSE envelope: {message}")]
    NotEnvelope {
        /// Position in the input.
        index: u64,
        /// Parser message.
        message: String,
    },
    /// A checkpoint pins a record before the first one in the input: it cannot be checked.
    #[error(
        "the checkpoint pins seq {pinned}, before the first record given (seq {first}); export from an earlier --since"
    )]
    PinBeforeStart {
        /// Seq pinned.
        pinned: u64,
        /// First seq in the input.
        first: u64,
    },
}

/// Why verification stopped: the first bad record, or the input could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum VerifyError {
    /// A record is bad (or, with no location, the chain as a whole: truncation).
    #[error("{0}")]
    Bad(Box<BadRecord>),
    /// The input file could not be read.
    #[error("cannot read {what}: {source}")]
    Io {
        /// What was being read.
        what: String,
        /// Why not.
        source: std::io::Error,
    },
    /// The store could not be read.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The first bad record, precisely.
#[derive(Debug, thiserror::Error)]
#[error("{}{problem}{}", location_prefix(.location), note_suffix(.note))]
pub struct BadRecord {
    /// Where the bad record was read, when one record is to blame.
    pub location: Option<Location>,
    /// Digest of the bad record's bytes, when it has one.
    pub digest: Option<String>,
    /// What is wrong.
    pub problem: Problem,
    /// What else was seen that explains it (e.g. the missing records appear later).
    pub note: Option<String>,
}

impl VerifyError {
    fn bad(
        location: Option<Location>,
        digest: Option<String>,
        problem: Problem,
        note: Option<String>,
    ) -> VerifyError {
        VerifyError::Bad(Box::new(BadRecord {
            location,
            digest,
            problem,
            note,
        }))
    }
}

fn location_prefix(location: &Option<Location>) -> String {
    location.map(|it| format!("{it}: ")).unwrap_or_default()
}

fn note_suffix(note: &Option<String>) -> String {
    note.as_ref()
        .map(|it| format!(" ({it})"))
        .unwrap_or_default()
}

/// A chain that verified.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Verdict {
    /// Counts, first seq, head.
    pub summary: ChainSummary,
    /// Key ids whose signatures verified.
    pub keyids: BTreeSet<String>,
}

/// Verifies records in order against trusted keys and an optional pin; see the module doc.
pub fn verify_records(
    records: impl Iterator<Item = Result<RawRecord, VerifyError>>,
    trusted: &[VerifyingKey],
    pin: Option<Pin>,
) -> Result<Verdict, VerifyError> {
    verify_in_windows(records, trusted, pin, WINDOW)
}

fn verify_in_windows(
    mut records: impl Iterator<Item = Result<RawRecord, VerifyError>>,
    trusted: &[VerifyingKey],
    pin: Option<Pin>,
    window_size: usize,
) -> Result<Verdict, VerifyError> {
    let threads = std::thread::available_parallelism()
        .map(|it| it.get())
        .unwrap_or(1)
        .clamp(1, 16);
    let mut chain = ChainVerifier::new(trusted, pin.clone());
    let mut keyids = BTreeSet::new();
    let mut index: u64 = 0;
    let mut next = read_window(&mut records, window_size);
    loop {
        // A read error surfaces here, after every record before the window it hit is checked,
        // as if the records were read one by one.
        let window = match next {
            (records, None) => records,
            (_, Some(err)) => return Err(err),
        };
        if window.is_empty() {
            break;
        }
        // Reading (SQLite or a file) is the one serial step before the checks; the window is
        // checked on worker threads while this thread reads the next one, so the cores do not
        // wait for it.
        let (prepared, read) = std::thread::scope(|scope| {
            let worker = scope.spawn(|| prepare_window(&window, trusted, index, threads));
            let read = read_window(&mut records, window_size);
            (worker.join(), read)
        });
        let prepared = prepared.unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        next = read;
        for (offset, (record, prepared)) in window.iter().zip(prepared).enumerate() {
            let Prepared { digest, outcome } = prepared;
            let fail = |problem| {
                VerifyError::bad(Some(record.location), Some(digest.clone()), problem, None)
            };
            let opened = outcome.map_err(fail)?;
            if let Ok(it) = &opened
                && !keyids.contains(it.keyid())
            {
                keyids.insert(it.keyid().to_string());
            }
            if let Err(err) = chain.push_link(opened, &digest) {
                let note = match &err {
                    ChainError::Gap {
                        previous, found, ..
                    } => {
                        // The records after this one: the rest of the window, the next window
                        // (read already), then the input; a read error ends the search.
                        let (read_ahead, error) = &next;
                        let readable = if error.is_some() { 0 } else { usize::MAX };
                        let rest = window[offset + 1..]
                            .iter()
                            .chain(read_ahead)
                            .cloned()
                            .map(Ok)
                            .chain(records.by_ref().take(readable));
                        find_later(rest, trusted, previous + 1, found - 1)
                    }
                    _ => None,
                };
                return Err(VerifyError::bad(
                    Some(record.location),
                    Some(digest),
                    Problem::Chain(err),
                    note,
                ));
            }
            index += 1;
        }
    }
    let summary = chain
        .finish()
        .map_err(|err| VerifyError::bad(None, None, Problem::Chain(err), None))?;
    if let (Some(pin), Some(first)) = (pin, summary.first_seq)
        && pin.seq < first
    {
        return Err(VerifyError::bad(
            None,
            None,
            Problem::PinBeforeStart {
                pinned: pin.seq,
                first,
            },
            None,
        ));
    }
    Ok(Verdict { summary, keyids })
}

/// The next `size` records (fewer at the end of the input), up to the first read error if
/// there is one: the records before it are not checked, but a gap's search for missing records
/// still looks at them.
fn read_window(
    records: &mut impl Iterator<Item = Result<RawRecord, VerifyError>>,
    size: usize,
) -> (Vec<RawRecord>, Option<VerifyError>) {
    let mut window = Vec::with_capacity(size);
    for record in records.take(size) {
        match record {
            Ok(record) => window.push(record),
            Err(err) => return (window, Some(err)),
        }
    }
    (window, None)
}

/// Every record of a store from seq 0, in order, read in bounded pages.
pub fn store_records(store: &Store) -> impl Iterator<Item = Result<RawRecord, VerifyError>> + '_ {
    const PAGE: usize = 1_000;
    let mut next: u64 = 0;
    let mut page: std::vec::IntoIter<StoredRow> = Vec::new().into_iter();
    let mut done = false;
    std::iter::from_fn(move || {
        if let Some(record) = page.next() {
            return Some(Ok(RawRecord::from(record)));
        }
        if done {
            return None;
        }
        match store.rows_from(next, PAGE) {
            Ok(records) => {
                let Some(last) = records.last().map(|it| it.seq) else {
                    done = true;
                    return None;
                };
                next = last + 1;
                page = records.into_iter();
                page.next().map(|it| Ok(RawRecord::from(it)))
            }
            Err(err) => {
                done = true;
                Some(Err(VerifyError::Store(err)))
            }
        }
    })
}

/// Every line of a JSON Lines file (empty lines skipped), numbered from 1.
pub fn jsonl_records<R: BufRead>(
    mut reader: R,
    what: String,
) -> impl Iterator<Item = Result<RawRecord, VerifyError>> {
    let mut line: u64 = 0;
    let mut done = false;
    std::iter::from_fn(move || {
        loop {
            if done {
                return None;
            }
            line += 1;
            let mut bytes = Vec::new();
            let res = <&mut R as std::io::Read>::take(&mut reader, MAX_LINE_BYTES as u64 + 1)
                .read_until(b'\n', &mut bytes);
            match res {
                Ok(0) => {
                    done = true;
                    return None;
                }
                Ok(_) => {}
                Err(source) => {
                    done = true;
                    return Some(Err(VerifyError::Io {
                        what: what.clone(),
                        source,
                    }));
                }
            }
            if bytes.len() > MAX_LINE_BYTES {
                done = true;
                return Some(Err(VerifyError::Io {
                    what: what.clone(),
                    source: std::io::Error::other(format!(
                        "line {line} is longer than {MAX_LINE_BYTES} bytes"
                    )),
                }));
            }
            if bytes.last() == Some(&b'\n') {
                bytes.pop();
            }
            if bytes.is_empty() {
                continue;
            }
            return Some(Ok(RawRecord {
                location: Location::Line { line },
                bytes,
                stored_digest: None,
            }));
        }
    })
}

/// `sha256:<hex>` of bytes: a record's digest when the bytes are its canonical envelope.
pub fn digest_of(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// Parses and checks a single checkpoint envelope (JSON, as `evidence checkpoint` prints it):
/// its signature by a trusted key, its kind, and that its body pins the record before it.
/// Returns the pin the chain must contain: the checkpoint record itself.
pub fn checkpoint_pin(bytes: &[u8], trusted: &[VerifyingKey]) -> Result<Pin, String> {
    let envelope: Envelope =
        serde_json::from_slice(bytes).map_err(|err| format!("not a DSSE envelope: {err}"))?;
    let opened = msp_compliance_protocol::evidence::open(&envelope, trusted)
        .map_err(|err| err.to_string())?;
    let predicate = &opened.statement().predicate;
    if predicate.kind != RecordKind::Checkpoint {
        return Err(format!(
            "record seq {} is a {} record, not a checkpoint",
            predicate.seq,
            predicate.kind.as_str()
        ));
    }
    let body: msp_compliance_protocol::evidence::CheckpointBody =
        serde_json::from_value(predicate.body.clone())
            .map_err(|err| format!("checkpoint body is malformed: {err}"))?;
    if predicate.seq == 0
        || body.head_seq + 1 != predicate.seq
        || predicate.prev.as_deref() != Some(body.head_digest.as_str())
    {
        return Err(format!(
            "checkpoint seq {} pins seq {} ({}), which is not the record before it",
            predicate.seq, body.head_seq, body.head_digest
        ));
    }
    Ok(Pin {
        seq: predicate.seq,
        digest: dsse::digest(&envelope),
    })
}

/// The independent half of verifying one record.
struct Prepared {
    /// SHA-256 of the bytes.
    digest: String,
    /// The record's own problems, else the outcome of `open` for the chain verifier.
    outcome: Result<Result<Link, OpenError>, Problem>,
}

fn prepare_window(
    window: &[RawRecord],
    trusted: &[VerifyingKey],
    first_index: u64,
    threads: usize,
) -> Vec<Prepared> {
    if threads <= 1 || window.len() < MIN_PARALLEL {
        return prepare_slice(window, trusted, first_index);
    }
    // Workers take units from a shared counter rather than a fixed share each: a worker that
    // shares its core (with the reader, or another process) takes fewer, so no core idles
    // while the last share is finished.
    let units: Vec<(&[RawRecord], u64)> = window
        .chunks(WORK_UNIT)
        .zip((first_index..).step_by(WORK_UNIT))
        .collect();
    let next_unit = std::sync::atomic::AtomicUsize::new(0);
    let mut done: Vec<Option<Vec<Prepared>>> = units.iter().map(|_| None).collect();
    std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads.min(units.len()))
            .map(|_| {
                scope.spawn(|| {
                    let mut finished = Vec::new();
                    loop {
                        let unit = next_unit.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let Some((slice, start)) = units.get(unit) else {
                            return finished;
                        };
                        finished.push((unit, prepare_slice(slice, trusted, *start)));
                    }
                })
            })
            .collect();
        for worker in workers {
            if let Ok(finished) = worker.join() {
                for (unit, prepared) in finished {
                    done[unit] = Some(prepared);
                }
            }
        }
    });
    // A unit left undone had its worker panic, which would be a bug in a parser; it is redone
    // on this thread so the panic surfaces here with its own message instead of being
    // swallowed.
    units
        .iter()
        .zip(done)
        .flat_map(|((slice, start), prepared)| {
            prepared.unwrap_or_else(|| prepare_slice(slice, trusted, *start))
        })
        .collect()
}

/// The independent half for consecutive records: each record's own checks, then their
/// signatures and statements together (`open_many` batches the signatures).
fn prepare_slice(slice: &[RawRecord], trusted: &[VerifyingKey], start: u64) -> Vec<Prepared> {
    let parsed: Vec<(String, Result<Parsed<'_>, Problem>)> = slice
        .iter()
        .zip(start..)
        .map(|(record, index)| match record.compact() {
            Some(compact) => {
                let digest = compact.digest();
                let checked =
                    check_digest_column(record, &digest).map(|()| Parsed::Compact(compact));
                (digest, checked)
            }
            None => {
                let digest = digest_of(&record.bytes);
                let envelope = parse_record(record, &digest, index).map(Parsed::Json);
                (digest, envelope)
            }
        })
        .collect();
    let envelopes: Vec<EnvelopeRef<'_>> = parsed
        .iter()
        .filter_map(|(_, parsed)| match parsed.as_ref().ok()? {
            Parsed::Json(envelope) => Some(EnvelopeRef::Json(envelope)),
            Parsed::Compact(compact) => Some(EnvelopeRef::Compact(*compact)),
        })
        .collect();
    let mut opened = msp_compliance_protocol::evidence::open_many(&envelopes, trusted).into_iter();
    parsed
        .into_iter()
        .map(|(digest, parsed)| Prepared {
            digest,
            outcome: parsed.map(|_| {
                // `open_many` answers once per envelope, in order.
                opened.next().unwrap_or_else(|| {
                    Err(OpenError::NotEvidence("record was not examined".into()))
                })
            }),
        })
        .collect()
}

/// A record whose own checks passed, ready for its signature.
enum Parsed<'a> {
    Json(Envelope),
    Compact(dsse::Compact<'a>),
}

/// The store's digest column must be the digest of the envelope beside it.
fn check_digest_column(record: &RawRecord, digest: &str) -> Result<(), Problem> {
    match &record.stored_digest {
        Some(stored) if stored != digest => Err(Problem::DigestColumn {
            stored: stored.clone(),
            computed: digest.to_string(),
        }),
        _ => Ok(()),
    }
}

/// A record's own checks before its signature: the store's digest column, the envelope's
/// syntax, and its canonical form.
fn parse_record(record: &RawRecord, digest: &str, index: u64) -> Result<Envelope, Problem> {
    check_digest_column(record, digest)?;
    // Stored and exported records are canonical, and reading that layout directly is the same
    // check as parsing the JSON and comparing its canonical form with the bytes.
    if let Some(envelope) = dsse::parse_canonical(&record.bytes) {
        return Ok(envelope);
    }
    let envelope: Envelope =
        serde_json::from_slice(&record.bytes).map_err(|err| Problem::NotEnvelope {
            index,
            message: err.to_string(),
        })?;
    if dsse::canonical_bytes(&envelope) != record.bytes {
        return Err(Problem::NotCanonical { index });
    }
    Ok(envelope)
}

/// After a gap `lo..=hi`, looks whether a validly signed record with a seq in that range comes
/// later: then the records were reordered, not deleted.
fn find_later(
    rest: impl Iterator<Item = Result<RawRecord, VerifyError>>,
    trusted: &[VerifyingKey],
    lo: u64,
    hi: u64,
) -> Option<String> {
    for record in rest.take(MAX_LOOKAHEAD) {
        let Ok(record) = record else {
            return None;
        };
        let envelope = match record.compact() {
            Some(compact) => compact.to_envelope(),
            None => match serde_json::from_slice::<Envelope>(&record.bytes) {
                Ok(envelope) => envelope,
                Err(_) => continue,
            },
        };
        let Ok(opened) = msp_compliance_protocol::evidence::open(&envelope, trusted) else {
            continue;
        };
        let seq = opened.statement().predicate.seq;
        if (lo..=hi).contains(&seq) {
            return Some(format!(
                "seq {seq} comes later, at {}: records are out of order",
                record.location
            ));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use ed25519_dalek::SigningKey;
    use jiff::Timestamp;
    use msp_compliance_protocol::evidence::{Author, Draft};
    use serde_json::json;

    use super::*;

    fn chain(n: u64, key: &SigningKey) -> Vec<RawRecord> {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(&dir.path().join("e.sqlite")).unwrap();
        let author = Author {
            site_id: Some("clinic-a".into()),
            host_id: "nixos-1".into(),
            agent_version: "0.1.0".into(),
        };
        let drafts: Vec<Draft> = (0..n)
            .map(|it| Draft {
                kind: RecordKind::Check,
                baseline: None,
                controls: vec![],
                body: json!({ "n": it }),
            })
            .collect();
        store
            .append(&drafts, &author, Timestamp::UNIX_EPOCH, key)
            .unwrap();
        store_records(&store).collect::<Result<_, _>>().unwrap()
    }

    /// The rows as a schema-2 store holds them: canonical JSON.
    fn as_json(records: &[RawRecord]) -> Vec<RawRecord> {
        records
            .iter()
            .map(|it| {
                assert!(it.compact().is_some());
                RawRecord {
                    bytes: dsse::stored_to_canonical(&it.bytes).into_owned(),
                    ..it.clone()
                }
            })
            .collect()
    }

    /// The digest of a record as a tampering writer would put it in the digest column.
    fn digest_column(record: &RawRecord) -> Option<String> {
        Some(match record.compact() {
            Some(compact) => compact.digest(),
            None => digest_of(&record.bytes),
        })
    }

    /// A small window, so a few hundred records span several windows and threads.
    const TEST_WINDOW: usize = 2 * MIN_PARALLEL;

    fn run(records: Vec<RawRecord>, key: &SigningKey) -> Result<Verdict, VerifyError> {
        verify_in_windows(
            records.into_iter().map(Ok),
            &[key.verifying_key()],
            None,
            TEST_WINDOW,
        )
    }

    #[test]
    fn parallel_verification_matches_the_sequential_verifier() {
        let key = SigningKey::from_bytes(&[4; 32]);
        let compact = chain(3 * TEST_WINDOW as u64 + 17, &key);
        let json = as_json(&compact);
        // A store that schema 2 began and schema 3 continued.
        let mixed: Vec<RawRecord> = json[..TEST_WINDOW + 9]
            .iter()
            .chain(&compact[TEST_WINDOW + 9..])
            .cloned()
            .collect();
        for records in [&compact, &json, &mixed] {
            let verdict = run(records.clone(), &key).unwrap();
            assert_eq!(verdict.summary.n_records, 3 * TEST_WINDOW as u64 + 17);
            assert_eq!(verdict.keyids.len(), 1);
        }
        // Damage one record in the middle of a window on another thread: the first bad
        // record is the one named, whichever thread checked it.
        for (victim, records) in [5_usize, TEST_WINDOW + 100, 2 * TEST_WINDOW + 3]
            .into_iter()
            .flat_map(|victim| [(victim, &compact), (victim, &json)])
        {
            let mut damaged = records.clone();
            let at = match damaged[victim].compact() {
                // One byte of the payload itself.
                Some(_) => 1 + 32 + 64 + 20,
                // One base64 character of the payload: still valid JSON and base64.
                None => {
                    damaged[victim]
                        .bytes
                        .windows(9)
                        .position(|it| it == b"\"payload\"")
                        .unwrap()
                        + 12
                }
            };
            damaged[victim].bytes[at] = if damaged[victim].bytes[at] == b'A' {
                b'B'
            } else {
                b'A'
            };
            damaged[victim].stored_digest = digest_column(&damaged[victim]);
            let err = run(damaged, &key).unwrap_err();
            let VerifyError::Bad(bad) = err else {
                panic!("unexpected {err}");
            };
            match *bad {
                BadRecord {
                    location: Some(Location::Store { seq }),
                    problem: Problem::Chain(ChainError::Envelope { index, .. }),
                    ..
                } => {
                    assert_eq!(seq, victim as u64);
                    assert_eq!(index, victim as u64);
                }
                other => panic!("unexpected {other}"),
            }
        }
    }

    #[test]
    fn swapped_records_are_called_out_of_order() {
        let key = SigningKey::from_bytes(&[4; 32]);
        let mut records = chain(6, &key);
        records.swap(3, 4);
        let err = run(records, &key).unwrap_err().to_string();
        assert!(err.contains("records 3 are missing"), "{err}");
        assert!(
            err.contains("seq 3 comes later, at store row seq 3: records are out of order"),
            "{err}"
        );
        // Across a window boundary: the missing record is in the window read ahead.
        let last = TEST_WINDOW as u64 - 1;
        let mut records = chain(2 * TEST_WINDOW as u64 + 5, &key);
        records.swap(TEST_WINDOW - 1, TEST_WINDOW);
        let err = run(records, &key).unwrap_err().to_string();
        assert!(
            err.contains(&format!("records {last} are missing")),
            "{err}"
        );
        assert!(
            err.contains(&format!(
                "seq {last} comes later, at store row seq {last}: records are out of order"
            )),
            "{err}"
        );
    }

    /// A read error is reported once every record before it is checked, and a bad record
    /// before it is reported instead, although the window holding the error is read while the
    /// one before it is checked.
    #[test]
    fn read_errors_come_in_input_order() {
        let key = SigningKey::from_bytes(&[4; 32]);
        let records = chain(3 * TEST_WINDOW as u64, &key);
        let failing = |records: Vec<RawRecord>| {
            let n_before = TEST_WINDOW + 7;
            records
                .into_iter()
                .take(n_before)
                .map(Ok)
                .chain(std::iter::once(Err(VerifyError::Io {
                    what: "input".into(),
                    source: std::io::Error::other("disk on fire"),
                })))
        };
        let verify = |records| {
            verify_in_windows(failing(records), &[key.verifying_key()], None, TEST_WINDOW)
                .unwrap_err()
                .to_string()
        };
        assert!(verify(records.clone()).contains("disk on fire"));
        let mut damaged = records;
        damaged[TEST_WINDOW - 2].stored_digest = Some("sha256:00".into());
        let err = verify(damaged);
        assert!(err.contains("digest column says sha256:00"), "{err}");
    }

    #[test]
    fn non_canonical_lines_and_digest_columns_are_refused() {
        let key = SigningKey::from_bytes(&[4; 32]);
        let mut records = as_json(&chain(3, &key));
        records[1].bytes.insert(1, b' ');
        records[1].stored_digest = digest_column(&records[1]);
        let err = run(records.clone(), &key).unwrap_err().to_string();
        assert!(
            err.contains("record #1 is not in RFC 8785 canonical form"),
            "{err}"
        );

        let mut records = chain(3, &key);
        records[2].stored_digest = Some("sha256:00".into());
        let err = run(records, &key).unwrap_err().to_string();
        assert!(err.contains("digest column says sha256:00"), "{err}");

        // A compact row cut short of its fixed part is not read as one, and a line of a file
        // is never read in the compact form.
        let mut records = chain(3, &key);
        records[1].bytes.truncate(90);
        records[1].stored_digest = digest_column(&records[1]);
        let err = run(records, &key).unwrap_err().to_string();
        assert!(err.contains("record #1 is not a DSSE envelope"), "{err}");
        let mut records = chain(3, &key);
        records[0].location = Location::Line { line: 1 };
        records[0].stored_digest = None;
        let err = run(records, &key).unwrap_err().to_string();
        assert!(
            err.starts_with("line 1: record #0 is not a DSSE envelope"),
            "{err}"
        );
    }

    #[test]
    fn jsonl_lines_are_numbered_and_bounded() {
        let text = b"{\"a\":1}\n\n{\"b\":2}".to_vec();
        let records: Vec<RawRecord> = jsonl_records(std::io::Cursor::new(text), "x".into())
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(records.len(), 2);
        assert_eq!(records[1].location, Location::Line { line: 3 });
        assert_eq!(records[1].bytes, b"{\"b\":2}");
    }
}
