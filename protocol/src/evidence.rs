//! Evidence records: in-toto Statement v1 payloads with our predicate, signed as DSSE envelopes,
//! chained by `seq` and `prev`.
//!
//! Each record's predicate carries its position (`seq`, from 0) and the digest of the previous
//! envelope (`prev`, absent only at seq 0), so deleting, reordering or truncating records is
//! detectable; a `checkpoint` record, also kept by the server, pins the head so truncation of the
//! tail is detectable too. The payload is serialized as RFC 8785 canonical JSON, so the signed
//! bytes are reproducible from the parsed statement.
//!
//! [`ChainVerifier`] is the sans-I/O verifier the agent (`evidence verify`) and the server use:
//! feed it envelopes in order, it reports the first bad one precisely.

use std::collections::BTreeMap;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use ed25519_dalek::{Signature as Ed25519Signature, SigningKey, VerifyingKey};
use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::dsse::{self, DsseError, Envelope, IN_TOTO_PAYLOAD_TYPE};
use crate::finding::BaselineRef;

/// in-toto Statement v1 type.
pub const STATEMENT_TYPE: &str = "https://in-toto.io/Statement/v1";
/// Our predicate type.
pub const EVIDENCE_PREDICATE_TYPE: &str = "urn:msp-compliance:evidence:v1";
/// How long evidence is kept: six years (45 CFR 164.316(b)(2)(i)), as days (leap days included).
pub const RETENTION_DAYS: i64 = 6 * 365 + 2;

/// What a record is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum RecordKind {
    /// Agent start, stop, key rotation, configuration change, overflow alarm.
    AgentLifecycle,
    /// One check's finding.
    Check,
    /// A signed statement of the chain head.
    Checkpoint,
    /// A case handed to a human (L3).
    Escalation,
    /// A heal attempted, verified or failed.
    Heal,
    /// An order received and executed.
    Order,
    /// An L2 fix promoted to an L1 rule.
    Promotion,
    /// An order or action refused by a guardrail, with its code.
    Refusal,
    /// A heal rolled back.
    Rollback,
    /// A waiver applied or expired.
    Waiver,
}

impl RecordKind {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            RecordKind::AgentLifecycle => "agent_lifecycle",
            RecordKind::Check => "check",
            RecordKind::Checkpoint => "checkpoint",
            RecordKind::Escalation => "escalation",
            RecordKind::Heal => "heal",
            RecordKind::Order => "order",
            RecordKind::Promotion => "promotion",
            RecordKind::Refusal => "refusal",
            RecordKind::Rollback => "rollback",
            RecordKind::Waiver => "waiver",
        }
    }
}

/// An in-toto Statement v1 with our predicate.
///
/// `B` is the type the predicate body is read as: a JSON value normally; the chain verifier
/// reads it as a private type that accepts exactly what a JSON value accepts without building
/// it, since the chain needs only the header fields and the body is most of the bytes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Statement<B = Value> {
    /// Always [`STATEMENT_TYPE`].
    #[serde(rename = "_type")]
    pub statement_type: String,
    /// What the record is about, with the digest of the predicate body.
    pub subject: Vec<Subject>,
    /// Always [`EVIDENCE_PREDICATE_TYPE`].
    #[serde(rename = "predicateType")]
    pub predicate_type: String,
    /// The record.
    pub predicate: Predicate<B>,
}

/// in-toto resource descriptor (the subset we use).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Subject {
    /// `<site>/<host>/<kind>/<seq>`.
    pub name: String,
    /// `{"sha256": <hex of the canonical body>}`.
    pub digest: BTreeMap<String, String>,
}

/// Our predicate: one evidence record.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Predicate<B = Value> {
    /// Record kind.
    pub kind: RecordKind,
    /// Position in the host's chain, from 0.
    pub seq: u64,
    /// `sha256:<hex>` of the previous envelope; absent only at seq 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prev: Option<String>,
    /// Site id.
    pub site_id: Option<String>,
    /// Host id.
    pub host_id: String,
    /// Agent version that wrote the record.
    pub agent_version: String,
    /// When the record was written.
    pub recorded_at: Timestamp,
    /// Keep until (at least six years after `recorded_at`).
    pub retain_until: Timestamp,
    /// Baseline that judged, when the record involves one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baseline: Option<BaselineRef>,
    /// HIPAA citations.
    #[serde(default)]
    pub controls: Vec<String>,
    /// Kind-specific content (a finding, an order, a checkpoint…), PHI-scrubbed.
    pub body: B,
}

/// The body of a checkpoint record: the head it pins.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckpointBody {
    /// Seq of the record before the checkpoint.
    pub head_seq: u64,
    /// Digest of that record's envelope.
    pub head_digest: String,
}

/// A record to append, before the chain gives it a position.
#[derive(Clone, Debug, PartialEq)]
pub struct Draft {
    /// Record kind.
    pub kind: RecordKind,
    /// Baseline, when relevant.
    pub baseline: Option<BaselineRef>,
    /// HIPAA citations.
    pub controls: Vec<String>,
    /// Kind-specific content, already PHI-scrubbed.
    pub body: Value,
}

/// Where a draft goes: the chain position and identity, from the store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Position {
    /// Seq of the new record.
    pub seq: u64,
    /// Digest of the previous envelope (None at seq 0).
    pub prev: Option<String>,
}

/// Who writes the records.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Author {
    /// Site id.
    pub site_id: Option<String>,
    /// Host id.
    pub host_id: String,
    /// Agent version.
    pub agent_version: String,
}

/// Why a record could not be built.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RecordError {
    /// The body has no canonical form (see [`crate::jcs`]).
    #[error("record body has no canonical JSON form: {0}")]
    NotCanonical(#[from] crate::jcs::JcsError),
}

/// A draft's body in canonical form with its digest: the part of sealing that does not depend
/// on the chain position, so a batch can prepare its bodies in parallel and only sign in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CanonicalBody {
    text: String,
    sha256_hex: String,
}

impl CanonicalBody {
    /// Length of the canonical text in bytes.
    pub fn len(&self) -> usize {
        self.text.len()
    }

    /// Returns true if and only if the canonical text is empty (it never is: `null` at least).
    pub fn is_empty(&self) -> bool {
        self.text.is_empty()
    }

    /// Canonicalizes and hashes a draft's body.
    pub fn of(draft: &Draft) -> Result<CanonicalBody, RecordError> {
        let text = crate::jcs::to_string(&draft.body)?;
        let sha256_hex = hex::encode(Sha256::digest(text.as_bytes()));
        Ok(CanonicalBody { text, sha256_hex })
    }
}

/// Builds and signs a record at a position. Pure: time and key are passed in.
pub fn seal(
    draft: &Draft,
    position: &Position,
    author: &Author,
    recorded_at: Timestamp,
    key: &SigningKey,
) -> Result<Envelope, RecordError> {
    let body = CanonicalBody::of(draft)?;
    seal_canonical(draft, &body, position, author, recorded_at, key)
}

/// [`seal`] with the draft's body already canonicalized (`body` must be
/// `CanonicalBody::of(draft)`).
pub fn seal_canonical(
    draft: &Draft,
    body: &CanonicalBody,
    position: &Position,
    author: &Author,
    recorded_at: Timestamp,
    key: &SigningKey,
) -> Result<Envelope, RecordError> {
    let retain_until = recorded_at
        .checked_add(jiff::SignedDuration::from_hours(24 * RETENTION_DAYS))
        .unwrap_or(Timestamp::MAX);
    let statement = Statement {
        statement_type: STATEMENT_TYPE.to_string(),
        subject: vec![Subject {
            name: format!(
                "{}/{}/{}/{}",
                author.site_id.as_deref().unwrap_or("-"),
                author.host_id,
                draft.kind.as_str(),
                position.seq
            ),
            digest: BTreeMap::from([("sha256".to_string(), body.sha256_hex.clone())]),
        }],
        predicate_type: EVIDENCE_PREDICATE_TYPE.to_string(),
        predicate: Predicate {
            kind: draft.kind,
            seq: position.seq,
            prev: position.prev.clone(),
            site_id: author.site_id.clone(),
            host_id: author.host_id.clone(),
            agent_version: author.agent_version.clone(),
            recorded_at,
            retain_until,
            baseline: draft.baseline.clone(),
            controls: draft.controls.clone(),
            body: Value::Null,
        },
    };
    // The body (kilobytes of facts) is canonicalized once, in `CanonicalBody::of`: the
    // statement is converted with a null body, and the body's canonical text is spliced in at
    // that node while the statement is written.
    let value = serde_json::to_value(&statement).map_err(|_| crate::jcs::JcsError::NotFinite)?;
    let payload = match value.get("predicate").and_then(|it| it.get("body")) {
        Some(node) => crate::jcs::to_string_splicing(&value, node, &body.text)?,
        // A `Predicate` always serializes its `body` member; this arm is never taken.
        None => crate::jcs::to_string(&value)?,
    };
    Ok(dsse::sign(IN_TOTO_PAYLOAD_TYPE, payload.as_bytes(), key))
}

/// Where and why a chain is broken. `index` counts envelopes as fed, from 0.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ChainError {
    /// A signature does not verify, a key is unknown, or the envelope is malformed.
    #[error("record #{index}: {source}")]
    Envelope {
        /// Position in the input.
        index: u64,
        /// What is wrong.
        source: DsseError,
    },
    /// A seq is missing: records were deleted.
    #[error("record #{index}: seq {found} follows seq {previous}: records {missing} are missing")]
    Gap {
        /// Position in the input.
        index: u64,
        /// Seq before.
        previous: u64,
        /// Seq found.
        found: u64,
        /// Missing range, e.g. `5..=7`.
        missing: String,
    },
    /// The payload is not a statement of ours.
    #[error("record #{index}: not an msp-compliance evidence statement: {message}")]
    NotEvidence {
        /// Position in the input.
        index: u64,
        /// Why.
        message: String,
    },
    /// `prev` does not name the previous envelope: a record was replaced or reordered.
    #[error(
        "record #{index} (seq {seq}): prev {found} is not the previous record's digest {expected}"
    )]
    PrevMismatch {
        /// Position in the input.
        index: u64,
        /// Its seq.
        seq: u64,
        /// Digest expected.
        expected: String,
        /// Digest found.
        found: String,
    },
    /// Seq goes backwards or repeats: records were reordered or duplicated.
    #[error(
        "record #{index}: seq {found} does not follow seq {previous} (reordered or duplicated)"
    )]
    Reorder {
        /// Position in the input.
        index: u64,
        /// Seq before.
        previous: u64,
        /// Seq found.
        found: u64,
    },
    /// The chain ends before a checkpoint's head, or disagrees with it: the tail was cut.
    #[error(
        "chain ends at seq {last} but a signed checkpoint pins seq {head_seq} ({head_digest}): records were truncated"
    )]
    Truncated {
        /// Last seq present.
        last: String,
        /// Seq pinned by the checkpoint.
        head_seq: u64,
        /// Digest pinned by the checkpoint.
        head_digest: String,
    },
    /// The checkpoint pins a record whose digest differs from the one in the chain.
    #[error("checkpoint pins seq {seq} as {expected} but the chain has {found}")]
    CheckpointMismatch {
        /// Seq pinned.
        seq: u64,
        /// Digest pinned.
        expected: String,
        /// Digest in the chain.
        found: String,
    },
}

/// What a verified chain holds.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ChainSummary {
    /// Envelopes verified.
    pub n_records: u64,
    /// Seq of the first record (a export may start mid-chain).
    pub first_seq: Option<u64>,
    /// Seq and digest of the last record.
    pub head: Option<(u64, String)>,
    /// Checkpoints seen in the chain, by seq of the head they pin.
    pub n_checkpoints: u64,
}

/// A record the chain must contain: typically the last checkpoint the server acknowledged.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pin {
    /// Seq of the pinned record.
    pub seq: u64,
    /// Digest of its envelope.
    pub digest: String,
}

/// A record whose signature by a trusted key verified and whose payload is one of our
/// statements: the stateless half of chain verification. Only [`open`] makes one.
#[derive(Clone, Debug, PartialEq)]
pub struct Opened {
    statement: Statement,
    keyid: String,
}

impl Opened {
    /// The verified statement.
    pub fn statement(&self) -> &Statement {
        &self.statement
    }

    /// The key id whose signature verified.
    pub fn keyid(&self) -> &str {
        &self.keyid
    }

    /// What the chain verifier needs of this record.
    pub fn link(&self) -> Link {
        Link {
            keyid: self.keyid.clone(),
            kind: self.statement.predicate.kind,
            seq: self.statement.predicate.seq,
            prev: self.statement.predicate.prev.clone(),
        }
    }

    /// The statement, giving up the proof.
    pub fn into_statement(self) -> Statement {
        self.statement
    }
}

/// The part of an opened record that places it in the chain: kind, seq, prev and the key that
/// signed. Only [`Opened::link`] and [`open_many`] make one, so [`ChainVerifier::push_link`]
/// is only ever fed verified records.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Link {
    keyid: String,
    kind: RecordKind,
    seq: u64,
    prev: Option<String>,
}

impl Link {
    /// The key id whose signature verified.
    pub fn keyid(&self) -> &str {
        &self.keyid
    }

    /// The record's seq.
    pub fn seq(&self) -> u64 {
        self.seq
    }
}

/// Why [`open`] refused a record (positioned by [`ChainVerifier::push_opened`]).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum OpenError {
    /// A signature does not verify, a key is unknown, or the envelope is malformed.
    #[error("{0}")]
    Envelope(DsseError),
    /// The payload is not a statement of ours.
    #[error("not an msp-compliance evidence statement: {0}")]
    NotEvidence(String),
}

/// Verifies an envelope's signature against trusted keys and parses its statement, without
/// looking at its place in the chain. Independent per record, so it can run in parallel.
pub fn open(envelope: &Envelope, trusted: &[VerifyingKey]) -> Result<Opened, OpenError> {
    let verified =
        dsse::verify_typed(envelope, IN_TOTO_PAYLOAD_TYPE, trusted).map_err(OpenError::Envelope)?;
    parse_opened(verified.payload(), verified.keyid())
}

/// Signatures checked per Ed25519 batch: large enough to amortize the multiscalar
/// multiplication, small enough that a failed batch costs few single re-verifications.
const SIGNATURE_BATCH: usize = 64;

/// [`open`] for many envelopes at once, with the same results, about twice as fast.
///
/// The common case (one signature, by a trusted key, on an in-toto payload) is checked with
/// Ed25519 batch verification; every other envelope, and every envelope of a batch that fails,
/// goes through [`open`], so a bad record gets exactly `open`'s error.
///
/// A batch accepts every signature that `open` (`verify_strict`) accepts. It fails, except
/// with probability about 2^-128, when any signature in it was forged or altered without the
/// private key. The one difference: a signature whose nonce the *holder of a trusted key*
/// deliberately gave a small-order component can pass a batch although `verify_strict`
/// refuses it. No Ed25519 signer makes such signatures, and a key holder can sign anything
/// anyway, so this changes nothing about who could have written a record.
///
/// Statements are parsed (so a payload that `open` refuses is refused here too) and dropped
/// where they were parsed; only each record's [`Link`] comes back.
pub fn open_many(
    envelopes: &[&Envelope],
    trusted: &[VerifyingKey],
) -> Vec<Result<Link, OpenError>> {
    struct Candidate {
        idx: usize,
        message: Vec<u8>,
        payload_len: usize,
        signature: Ed25519Signature,
        key: VerifyingKey,
    }
    let keyids: Vec<String> = trusted.iter().map(dsse::keyid).collect();
    let mut res: Vec<Option<Result<Link, OpenError>>> =
        (0..envelopes.len()).map(|_| None).collect();
    let mut candidates = Vec::with_capacity(envelopes.len());
    for (idx, envelope) in envelopes.iter().enumerate() {
        let candidate = (|| {
            if envelope.payload_type != IN_TOTO_PAYLOAD_TYPE {
                return None;
            }
            let [signature] = envelope.signatures.as_slice() else {
                return None;
            };
            let key = keyids.iter().position(|it| *it == signature.keyid)?;
            let payload = BASE64.decode(envelope.payload.as_bytes()).ok()?;
            let sig: [u8; 64] = BASE64
                .decode(signature.sig.as_bytes())
                .ok()?
                .try_into()
                .ok()?;
            Some(Candidate {
                idx,
                payload_len: payload.len(),
                message: dsse::pae(&envelope.payload_type, &payload),
                signature: Ed25519Signature::from_bytes(&sig),
                key: trusted[key],
            })
        })();
        match candidate {
            Some(it) => candidates.push(it),
            None => res[idx] = Some(open(envelope, trusted).map(|it| it.link())),
        }
    }
    for batch in candidates.chunks(SIGNATURE_BATCH) {
        let messages: Vec<&[u8]> = batch.iter().map(|it| it.message.as_slice()).collect();
        let signatures: Vec<Ed25519Signature> = batch.iter().map(|it| it.signature).collect();
        let keys: Vec<VerifyingKey> = batch.iter().map(|it| it.key).collect();
        let all_valid = ed25519_dalek::verify_batch(&messages, &signatures, &keys).is_ok();
        for candidate in batch {
            let envelope = envelopes[candidate.idx];
            res[candidate.idx] = Some(if all_valid {
                // The payload is the tail of the PAE message, exactly as signed.
                let payload = &candidate.message[candidate.message.len() - candidate.payload_len..];
                parse_link(payload, &envelope.signatures[0].keyid)
            } else {
                open(envelope, trusted).map(|it| it.link())
            });
        }
    }
    res.into_iter()
        .map(|it| it.unwrap_or_else(|| Err(OpenError::NotEvidence("not examined".into()))))
        .collect()
}

/// What [`parse_opened`] accepts, reduced to the record's [`Link`]: the body is checked to be
/// JSON but not built, which is most of the work of opening a large record.
fn parse_link(payload: &[u8], keyid: &str) -> Result<Link, OpenError> {
    let statement: Statement<CheckedJson> =
        serde_json::from_slice(payload).map_err(|err| OpenError::NotEvidence(err.to_string()))?;
    check_types(&statement)?;
    let predicate = statement.predicate;
    Ok(Link {
        keyid: keyid.to_string(),
        kind: predicate.kind,
        seq: predicate.seq,
        prev: predicate.prev,
    })
}

/// A JSON value that is read and dropped as it is read: it accepts exactly the documents a
/// `serde_json::Value` accepts (numbers out of range refused like `Value` refuses them, which
/// `serde::de::IgnoredAny` would not), without allocating the tree.
struct CheckedJson;

impl<'de> Deserialize<'de> for CheckedJson {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<CheckedJson, D::Error> {
        deserializer.deserialize_any(CheckedJsonVisitor)
    }
}

struct CheckedJsonVisitor;

impl<'de> serde::de::Visitor<'de> for CheckedJsonVisitor {
    type Value = CheckedJson;

    fn expecting(&self, formatter: &mut std::fmt::Formatter) -> std::fmt::Result {
        formatter.write_str("any valid JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<CheckedJson, E> {
        Ok(CheckedJson)
    }

    fn visit_i64<E>(self, _: i64) -> Result<CheckedJson, E> {
        Ok(CheckedJson)
    }

    fn visit_u64<E>(self, _: u64) -> Result<CheckedJson, E> {
        Ok(CheckedJson)
    }

    fn visit_f64<E: serde::de::Error>(self, value: f64) -> Result<CheckedJson, E> {
        // As `Value`: a JSON number always parses to a finite double or is refused earlier.
        if value.is_finite() {
            Ok(CheckedJson)
        } else {
            Err(E::custom("number is not finite"))
        }
    }

    fn visit_str<E>(self, _: &str) -> Result<CheckedJson, E> {
        Ok(CheckedJson)
    }

    fn visit_unit<E>(self) -> Result<CheckedJson, E> {
        Ok(CheckedJson)
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<CheckedJson, A::Error> {
        while seq.next_element::<CheckedJson>()?.is_some() {}
        Ok(CheckedJson)
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<CheckedJson, A::Error> {
        while map.next_entry::<CheckedJson, CheckedJson>()?.is_some() {}
        Ok(CheckedJson)
    }
}

fn check_types<B>(statement: &Statement<B>) -> Result<(), OpenError> {
    if statement.statement_type != STATEMENT_TYPE
        || statement.predicate_type != EVIDENCE_PREDICATE_TYPE
    {
        return Err(OpenError::NotEvidence(
            "wrong statement or predicate type".into(),
        ));
    }
    Ok(())
}

fn parse_opened(payload: &[u8], keyid: &str) -> Result<Opened, OpenError> {
    let statement: Statement =
        serde_json::from_slice(payload).map_err(|err| OpenError::NotEvidence(err.to_string()))?;
    check_types(&statement)?;
    Ok(Opened {
        statement,
        keyid: keyid.to_string(),
    })
}

/// Verifies envelopes in order. Sans-I/O: the caller reads, this judges.
pub struct ChainVerifier<'k> {
    /// Keys whose signatures are accepted.
    trusted: &'k [VerifyingKey],
    /// A record the chain must reach and contain, if known.
    pin: Option<Pin>,
    /// What has been verified so far.
    summary: ChainSummary,
    /// Envelopes fed so far (for error positions).
    index: u64,
}

impl<'k> ChainVerifier<'k> {
    /// A verifier trusting these keys, optionally requiring a pinned record.
    pub fn new(trusted: &'k [VerifyingKey], pin: Option<Pin>) -> ChainVerifier<'k> {
        ChainVerifier {
            trusted,
            pin,
            summary: ChainSummary::default(),
            index: 0,
        }
    }

    /// Verifies the next envelope; returns its statement. `digest` is [`dsse::digest`] of it,
    /// passed in so a caller that already has it (the store) does not compute it twice.
    pub fn push(&mut self, envelope: &Envelope, digest: &str) -> Result<Statement, ChainError> {
        let (link, statement) = match open(envelope, self.trusted) {
            Ok(opened) => (Ok(opened.link()), Some(opened.into_statement())),
            Err(err) => (Err(err), None),
        };
        self.push_link(link, digest)?;
        // `push_link` refuses an `Err`, so a statement is always there at this point.
        statement.ok_or_else(|| ChainError::NotEvidence {
            index: self.index.saturating_sub(1),
            message: "record was not opened".into(),
        })
    }

    /// Checks the next record's place in the chain, given the outcome of [`open`] (its
    /// [`Opened::link`]) or [`open_many`] on it with this verifier's trusted keys. `push` is
    /// `push_link(open(..))`; callers that verify signatures in parallel (the expensive,
    /// stateless half) feed the results here in input order, so the first bad record is still
    /// the one reported, with its position.
    pub fn push_link(
        &mut self,
        link: Result<Link, OpenError>,
        digest: &str,
    ) -> Result<(), ChainError> {
        let index = self.index;
        self.index += 1;
        match link {
            Ok(link) => self.check_link(index, &link, digest),
            Err(OpenError::Envelope(source)) => Err(ChainError::Envelope { index, source }),
            Err(OpenError::NotEvidence(message)) => Err(ChainError::NotEvidence { index, message }),
        }
    }

    /// The chain checks of one record (seq, prev, pin); updates the summary when they pass.
    fn check_link(&mut self, index: u64, link: &Link, digest: &str) -> Result<(), ChainError> {
        let seq = link.seq;
        match &self.summary.head {
            Some((previous, previous_digest)) => {
                let previous = *previous;
                if seq <= previous {
                    return Err(ChainError::Reorder {
                        index,
                        previous,
                        found: seq,
                    });
                }
                if seq > previous + 1 {
                    let missing = if seq == previous + 2 {
                        (previous + 1).to_string()
                    } else {
                        format!("{}..={}", previous + 1, seq - 1)
                    };
                    return Err(ChainError::Gap {
                        index,
                        previous,
                        found: seq,
                        missing,
                    });
                }
                if link.prev.as_deref() != Some(previous_digest.as_str()) {
                    return Err(ChainError::PrevMismatch {
                        index,
                        seq,
                        expected: previous_digest.clone(),
                        found: link.prev.clone().unwrap_or_else(|| "(none)".into()),
                    });
                }
            }
            None if seq == 0 && link.prev.is_some() => {
                return Err(ChainError::NotEvidence {
                    index,
                    message: "seq 0 must not have a prev".into(),
                });
            }
            None => {}
        }
        if let Some(pin) = &self.pin
            && pin.seq == seq
            && pin.digest != digest
        {
            return Err(ChainError::CheckpointMismatch {
                seq,
                expected: pin.digest.clone(),
                found: digest.to_string(),
            });
        }
        if link.kind == RecordKind::Checkpoint {
            self.summary.n_checkpoints += 1;
        }
        self.summary.n_records += 1;
        self.summary.first_seq.get_or_insert(seq);
        self.summary.head = Some((seq, digest.to_string()));
        Ok(())
    }

    /// Ends verification: a pinned record past the end means the tail was cut.
    pub fn finish(self) -> Result<ChainSummary, ChainError> {
        if let Some(pin) = &self.pin {
            let last = self.summary.head.as_ref().map(|it| it.0);
            if last.is_none_or(|last| last < pin.seq) {
                return Err(ChainError::Truncated {
                    last: last.map_or_else(|| "(empty)".to_string(), |it| it.to_string()),
                    head_seq: pin.seq,
                    head_digest: pin.digest.clone(),
                });
            }
        }
        Ok(self.summary)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn author() -> Author {
        Author {
            site_id: Some("clinic-a".into()),
            host_id: "nixos-1".into(),
            agent_version: "0.1.0".into(),
        }
    }

    fn chain(n: u64, key: &SigningKey) -> Vec<(Envelope, String)> {
        let mut res: Vec<(Envelope, String)> = Vec::new();
        for seq in 0..n {
            let prev = res.last().map(|(_, digest)| digest.clone());
            let draft = Draft {
                kind: RecordKind::Check,
                baseline: None,
                controls: vec![],
                body: json!({"n": seq}),
            };
            let envelope = seal(
                &draft,
                &Position { seq, prev },
                &author(),
                Timestamp::UNIX_EPOCH,
                key,
            )
            .unwrap();
            let digest = dsse::digest(&envelope);
            res.push((envelope, digest));
        }
        res
    }

    #[test]
    fn sealed_payload_is_the_canonical_form_of_the_whole_statement() {
        // The body is canonicalized once and spliced in; the result must be exactly what
        // canonicalizing the whole statement gives, for bodies with nesting, escapes, numbers
        // and keys that sort differently in UTF-16, and for a body that itself holds `null`s.
        let key = SigningKey::from_bytes(&[3; 32]);
        let bodies = [
            json!(null),
            json!({"z": 1, "a": [1.5, 0.25, 1e21, "x\"y\n"], "body": null, "\u{e000}": 1, "\u{1f600}": 2}),
            json!(["\u{1}", {"b": {"c": null}}, 9007199254740991u64]),
        ];
        for body in bodies {
            let draft = Draft {
                kind: RecordKind::Check,
                baseline: None,
                controls: vec!["164.312(b)".into()],
                body: body.clone(),
            };
            let position = Position {
                seq: 4,
                prev: Some(format!("sha256:{}", "ab".repeat(32))),
            };
            let envelope = seal(&draft, &position, &author(), Timestamp::UNIX_EPOCH, &key).unwrap();
            let verified = dsse::verify(&envelope, &[key.verifying_key()]).unwrap();
            let mut whole: Value = serde_json::from_slice(verified.payload()).unwrap();
            assert_eq!(whole["predicate"]["body"], body);
            whole["predicate"]["body"] = body;
            assert_eq!(
                verified.payload(),
                crate::jcs::to_vec(&whole).unwrap().as_slice()
            );
        }
    }

    fn verify_all(
        records: &[(Envelope, String)],
        keys: &[VerifyingKey],
    ) -> Result<ChainSummary, ChainError> {
        let mut verifier = ChainVerifier::new(keys, None);
        for (envelope, digest) in records {
            verifier.push(envelope, digest)?;
        }
        verifier.finish()
    }

    #[test]
    fn a_sealed_chain_verifies_and_retains_six_years() {
        let key = SigningKey::from_bytes(&[7; 32]);
        let records = chain(5, &key);
        let summary = verify_all(&records, &[key.verifying_key()]).unwrap();
        assert_eq!(summary.n_records, 5);
        assert_eq!(summary.head.as_ref().map(|it| it.0), Some(4));
        let statement: Statement = serde_json::from_slice(
            dsse::verify(&records[0].0, &[key.verifying_key()])
                .unwrap()
                .payload(),
        )
        .unwrap();
        let years = statement.predicate.retain_until.as_second() / (365 * 86_400);
        assert!(years >= 6, "{years}");
        // The signed payload is the statement's canonical JSON, body included.
        for (envelope, _) in &records {
            let verified = dsse::verify(envelope, &[key.verifying_key()]).unwrap();
            let statement: Statement = serde_json::from_slice(verified.payload()).unwrap();
            assert_eq!(
                verified.payload(),
                crate::jcs::to_vec_of(&statement).unwrap().as_slice()
            );
            assert_eq!(statement.predicate.body["n"], statement.predicate.seq);
        }
    }

    #[test]
    fn each_kind_of_damage_is_named() {
        let key = SigningKey::from_bytes(&[7; 32]);
        let keys = [key.verifying_key()];
        let records = chain(6, &key);

        let mut gap = records.clone();
        gap.remove(2);
        assert!(matches!(
            verify_all(&gap, &keys),
            Err(ChainError::Gap {
                index: 2,
                previous: 1,
                found: 3,
                ..
            })
        ));

        let mut reordered = records.clone();
        reordered.swap(3, 4);
        assert!(matches!(
            verify_all(&reordered, &keys),
            Err(ChainError::Gap { index: 3, .. })
        ));

        let mut duplicated = records.clone();
        duplicated.insert(3, records[2].clone());
        assert!(matches!(
            verify_all(&duplicated, &keys),
            Err(ChainError::Reorder { index: 3, .. })
        ));

        // A record re-signed with the right key but a different body: prev of the next fails.
        let mut replaced = records.clone();
        let draft = Draft {
            kind: RecordKind::Check,
            baseline: None,
            controls: vec![],
            body: json!({"n": "forged"}),
        };
        let forged = seal(
            &draft,
            &Position {
                seq: 2,
                prev: Some(records[1].1.clone()),
            },
            &author(),
            Timestamp::UNIX_EPOCH,
            &key,
        )
        .unwrap();
        replaced[2] = (forged.clone(), dsse::digest(&forged));
        assert!(matches!(
            verify_all(&replaced, &keys),
            Err(ChainError::PrevMismatch {
                index: 3,
                seq: 3,
                ..
            })
        ));

        let mut tampered = records.clone();
        tampered[1].0.payload = tampered[0].0.payload.clone();
        assert!(matches!(
            verify_all(&tampered, &keys),
            Err(ChainError::Envelope {
                index: 1,
                source: DsseError::BadSignature { .. }
            })
        ));

        let stranger = SigningKey::from_bytes(&[9; 32]);
        assert!(matches!(
            verify_all(&records, &[stranger.verifying_key()]),
            Err(ChainError::Envelope {
                index: 0,
                source: DsseError::UnknownKey { .. }
            })
        ));
    }

    #[test]
    fn open_many_gives_exactly_the_results_of_open() {
        let key = SigningKey::from_bytes(&[7; 32]);
        let stranger = SigningKey::from_bytes(&[9; 32]);
        let keys = [key.verifying_key()];
        let mut envelopes: Vec<Envelope> = chain(150, &key).into_iter().map(|it| it.0).collect();
        // Damage of every kind, spread over several batches.
        envelopes[3].payload = envelopes[4].payload.clone();
        let mut sig = BASE64.decode(&envelopes[70].signatures[0].sig).unwrap();
        sig[5] ^= 1;
        envelopes[70].signatures[0].sig = BASE64.encode(sig);
        envelopes[71] = dsse::sign(IN_TOTO_PAYLOAD_TYPE, b"{}", &stranger);
        let extra = envelopes[73].signatures[0].clone();
        envelopes[72].signatures.push(extra);
        envelopes[74].payload_type = "application/json".into();
        envelopes[75].payload = "%%%".into();
        envelopes[76].signatures[0].sig = "AAAA".into();
        envelopes[77] = dsse::sign(IN_TOTO_PAYLOAD_TYPE, b"not json", &key);
        envelopes[140].signatures.clear();
        // Payloads signed by the trusted key that are JSON but not statements a `Value` reads:
        // the reduced parse of the batch path must refuse exactly what `open` refuses.
        let first = String::from_utf8(BASE64.decode(&envelopes[0].payload).unwrap()).unwrap();
        let statement_with_body = |body: &str| {
            let text = &first;
            let at = text.find("\"body\":").unwrap() + "\"body\":".len();
            let end = text[at..].find(",\"controls\"").unwrap() + at;
            format!("{}{body}{}", &text[..at], &text[end..])
        };
        for (idx, body) in [
            (141, "1e999"),
            (142, "[1,{\"a\":-1e400}]"),
            (143, "{\"a\":1,\"a\":2}"),
            (144, "\"\\ud800\""),
            (145, "{\"k\":[true,null,\"x\",-0.5]}"),
        ] {
            let payload = statement_with_body(body);
            envelopes[idx] = dsse::sign(IN_TOTO_PAYLOAD_TYPE, payload.as_bytes(), &key);
        }
        let refs: Vec<&Envelope> = envelopes.iter().collect();
        let many = open_many(&refs, &keys);
        assert_eq!(many.len(), envelopes.len());
        for (idx, (envelope, batched)) in envelopes.iter().zip(&many).enumerate() {
            let single = open(envelope, &keys).map(|it| it.link());
            assert_eq!(batched, &single, "envelope {idx}");
        }
        let n_ok = many.iter().filter(|it| it.is_ok()).count();
        // Nine damaged envelopes, and three bodies no `Value` holds (two numbers out of range, a
        // lone surrogate); duplicate keys and the plain body open.
        assert_eq!(n_ok, 150 - 9 - 3);
        assert!(matches!(
            many[3],
            Err(OpenError::Envelope(DsseError::BadSignature { .. }))
        ));
    }

    #[test]
    fn truncation_is_caught_against_a_checkpoint() {
        let key = SigningKey::from_bytes(&[7; 32]);
        let records = chain(6, &key);
        let keys = [key.verifying_key()];
        let pin = Pin {
            seq: 5,
            digest: records[5].1.clone(),
        };
        let mut verifier = ChainVerifier::new(&keys, Some(pin.clone()));
        for (envelope, digest) in &records[..4] {
            verifier.push(envelope, digest).unwrap();
        }
        assert!(matches!(
            verifier.finish(),
            Err(ChainError::Truncated { head_seq: 5, .. })
        ));
        let mut verifier = ChainVerifier::new(
            &keys,
            Some(Pin {
                seq: 3,
                digest: records[5].1.clone(),
            }),
        );
        let res: Result<Vec<_>, _> = records
            .iter()
            .map(|(envelope, digest)| verifier.push(envelope, digest))
            .collect();
        assert!(matches!(
            res,
            Err(ChainError::CheckpointMismatch { seq: 3, .. })
        ));
        let mut verifier = ChainVerifier::new(&keys, Some(pin));
        for (envelope, digest) in &records {
            verifier.push(envelope, digest).unwrap();
        }
        assert_eq!(verifier.finish().unwrap().n_records, 6);
    }
}
