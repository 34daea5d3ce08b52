//! Evidence records: in-toto Statement v1 payloads with our predicate, signed as DSSE envelopes,
//! chained by `seq` and `prev`.
//!
//! Each record's predicate carries its position (`seq`, from 0) and the digest of the previous
//! envelope (`prev`, absent only at seq 0), so deleting, reordering or truncating records is
//! detectable; a `checkpoint` record, also kept by the server, pins the head so truncation of the
//! tail is detectable too. The payload is serialized as RFC 8785 canonical JSON, so the signed
//! bytes are reproducible from the parsed statement.
//!
//! [`seal`] builds and signs one record; [`prepare`] and [`PreparedRecord::seal`] make the same
//! bytes in two steps, so a batch does everything but the part that depends on the record before
//! it ahead of time (see [`PreparedRecord`]).
//!
//! [`ChainVerifier`] is the sans-I/O verifier the agent (`evidence verify`) and the server use:
//! feed it envelopes in order, it reports the first bad one precisely.

use std::collections::BTreeMap;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use ed25519_dalek::hazmat::ExpandedSecretKey;
use ed25519_dalek::{Signature as Ed25519Signature, SigningKey, VerifyingKey};
use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256, Sha512};

use crate::batch;
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
    /// Something that cannot happen did (a bug, never input).
    #[error("record could not be sealed: {0}")]
    Unexpected(&'static str),
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
    let (payload, _) = statement_payload(draft, body, position, author, recorded_at)?;
    Ok(dsse::sign(IN_TOTO_PAYLOAD_TYPE, payload.as_bytes(), key))
}

/// The payload of a record: its statement's canonical JSON, and the offset in it of the
/// `prev` member's value (its opening quote), when there is one.
fn statement_payload(
    draft: &Draft,
    body: &CanonicalBody,
    position: &Position,
    author: &Author,
    recorded_at: Timestamp,
) -> Result<(String, Option<usize>), RecordError> {
    let retain_until = recorded_at
        .checked_add(jiff::SignedDuration::from_hours(24 * RETENTION_DAYS))
        .unwrap_or(Timestamp::MAX);
    if position.seq > crate::jcs::MAX_SAFE_INTEGER {
        return Err(crate::jcs::JcsError::UnsafeInteger(position.seq.to_string()).into());
    }
    // The canonical JSON of the `Statement`, written member by member in JCS order (every
    // member name is ASCII, so byte order is UTF-16 order), strings through JCS's own escaping,
    // and the body (kilobytes of facts) as `CanonicalBody::of` canonicalized it once. A
    // `serde_json::Value` of the statement is not built: that was a third of the work here.
    // Tests hold the bytes to canonicalizing the whole statement, and to pinned digests.
    use crate::jcs::write_string as string;
    use std::fmt::Write;
    let mut out = String::with_capacity(body.text.len() + 1024);
    out.push_str("{\"_type\":");
    string(&mut out, STATEMENT_TYPE);
    out.push_str(",\"predicate\":{\"agent_version\":");
    string(&mut out, &author.agent_version);
    if let Some(baseline) = &draft.baseline {
        out.push_str(",\"baseline\":{\"digest\":");
        string(&mut out, &baseline.digest);
        out.push_str(",\"id\":");
        string(&mut out, &baseline.id);
        out.push_str(",\"version\":");
        string(&mut out, &baseline.version);
        out.push('}');
    }
    out.push_str(",\"body\":");
    out.push_str(&body.text);
    out.push_str(",\"controls\":[");
    for (idx, control) in draft.controls.iter().enumerate() {
        if idx > 0 {
            out.push(',');
        }
        string(&mut out, control);
    }
    out.push_str("],\"host_id\":");
    string(&mut out, &author.host_id);
    out.push_str(",\"kind\":");
    string(&mut out, draft.kind.as_str());
    let mut prev_quote_at = None;
    if let Some(prev) = &position.prev {
        out.push_str(",\"prev\":");
        prev_quote_at = Some(out.len());
        string(&mut out, prev);
    }
    // jiff serializes a timestamp as its `Display` text (RFC 3339, UTC).
    out.push_str(",\"recorded_at\":");
    string(&mut out, &recorded_at.to_string());
    out.push_str(",\"retain_until\":");
    string(&mut out, &retain_until.to_string());
    let _ = write!(out, ",\"seq\":{},\"site_id\":", position.seq);
    match &author.site_id {
        Some(site) => string(&mut out, site),
        None => out.push_str("null"),
    }
    out.push_str("},\"predicateType\":");
    string(&mut out, EVIDENCE_PREDICATE_TYPE);
    out.push_str(",\"subject\":[{\"digest\":{\"sha256\":");
    string(&mut out, &body.sha256_hex);
    out.push_str("},\"name\":");
    string(
        &mut out,
        &format!(
            "{}/{}/{}/{}",
            author.site_id.as_deref().unwrap_or("-"),
            author.host_id,
            draft.kind.as_str(),
            position.seq
        ),
    );
    out.push_str("}]}");
    Ok((out, prev_quote_at))
}

/// What every `prev` looks like: `sha256:` and 64 hex digits, as [`dsse::digest`] writes it.
/// [`prepare`] leaves room for exactly this many bytes.
const PREV_LEN: usize = "sha256:".len() + 64;

/// A signing key as sealing uses it: expanded once (Ed25519 derives the signing scalar and the
/// nonce key from SHA-512 of the seed), with its public half and key id.
///
/// Ed25519 (RFC 8032, 5.1.6) hashes the message twice: the nonce `r = SHA-512(prefix || M)`,
/// with `prefix` the secret second half of the expanded key, then the challenge
/// `k = SHA-512(R || A || M)`, which needs `R = rB` first. For a record, `M` is kilobytes of
/// which only the tail depends on the record before it, so [`prepare`] runs the nonce hash over
/// the head ahead of time and [`PreparedRecord::seal`] continues it; the signature is the one
/// `SigningKey::sign` makes, bit for bit. The started hash is as secret as the key (with it and
/// the signature, anyone could solve for the signing scalar), so it is built in place on the
/// heap, never moved, and wiped when dropped (sha2's `zeroize`, checked below).
pub struct SealingKey {
    /// The key itself, for records that take [`seal`]'s general way.
    signing: SigningKey,
    expanded: ExpandedSecretKey,
    verifying: VerifyingKey,
    keyid: String,
    /// The key id's 32 bytes, for the compact form.
    keyid_bytes: [u8; 32],
    /// SHA-512 of `prefix` alone, which identifies a hasher that has absorbed `prefix` and
    /// nothing else: the one ed25519-dalek hands over for the nonce.
    nonce_start_digest: [u8; 64],
}

// A started nonce hash must be wiped when dropped: sha2's `zeroize` feature does it.
const _: fn() = || {
    fn wiped_on_drop<T: zeroize::ZeroizeOnDrop>() {}
    wiped_on_drop::<Sha512>();
};

impl SealingKey {
    /// Expands `key` for sealing.
    pub fn new(key: &SigningKey) -> SealingKey {
        let expanded = ExpandedSecretKey::from(key.as_bytes());
        let nonce_start_digest = Sha512::digest(expanded.hash_prefix).into();
        let verifying = key.verifying_key();
        SealingKey {
            signing: key.clone(),
            keyid: dsse::keyid(&verifying),
            keyid_bytes: dsse::keyid_bytes(&verifying),
            expanded,
            verifying,
            nonce_start_digest,
        }
    }
}

/// A record prepared for sealing at a known seq: everything that does not depend on the record
/// before it, so a batch prepares its records in parallel (or while the previous one is being
/// signed) and the part that must run in chain order is only [`PreparedRecord::seal`].
///
/// Signing is sequential by nature: a record's `prev` is the digest of the previous envelope,
/// signature included. But `prev` is a few bytes near the end of a payload of kilobytes, and
/// everything before it in the canonical JSON (the body among it: JCS orders `body` before
/// `prev`) is known in advance. So the payload is written here with a placeholder `prev`, ready
/// to sign in place; the nonce hash of the signature is run over the message up to the
/// placeholder (see [`SealingKey`]); SHA-256 of the canonical envelope is run over its head and
/// the base64 of the payload up to the placeholder. Sealing then overwrites the placeholder,
/// finishes the nonce hash, signs, and encodes and hashes only the tail. The envelope is
/// exactly the one [`seal`] makes.
pub struct PreparedRecord<'a> {
    /// The key the nonce hash was started for, and the only one that may continue it.
    key: &'a SealingKey,
    draft: &'a Draft,
    author: &'a Author,
    recorded_at: Timestamp,
    seq: u64,
    body: CanonicalBody,
    /// PAE(type, payload) with the placeholder `prev`: the message that is signed.
    message: Vec<u8>,
    /// Where in `message` the payload starts.
    payload_at: usize,
    /// Where the `prev` digest's bytes (without quotes) start in `message`; None at seq 0.
    prev_at: Option<usize>,
    /// The nonce hash over the key's prefix and `message[..prev_at]` (all of it at seq 0),
    /// boxed so that moving the record does not copy it.
    nonce: Box<Sha512>,
    /// Where in `message` the payload's base64 hashed into `envelope_hash` stops (a multiple of
    /// three payload bytes, so the rest encodes on its own).
    encoded_to: usize,
    /// SHA-256 over the canonical envelope up to `encoded_to`: `{"payload":"` and base64.
    envelope_hash: Sha256,
}

/// Prepares `draft` as the record `seq` signed by `key`, with a `prev` (a digest) unless `seq`
/// is 0.
pub fn prepare<'a>(
    draft: &'a Draft,
    seq: u64,
    author: &'a Author,
    recorded_at: Timestamp,
    key: &'a SealingKey,
) -> Result<PreparedRecord<'a>, RecordError> {
    let body = CanonicalBody::of(draft)?;
    // The placeholder has the length of every digest and needs no JSON escape, so the payload's
    // layout is the final one and the digest is later written over it byte for byte.
    let placeholder = (seq > 0).then(|| format!("sha256:{}", "0".repeat(64)));
    let position = Position {
        seq,
        prev: placeholder,
    };
    let (payload, prev_quote_at) = statement_payload(draft, &body, &position, author, recorded_at)?;
    let mut message = Vec::with_capacity(payload.len() + IN_TOTO_PAYLOAD_TYPE.len() + 32);
    dsse::pae_head(&mut message, IN_TOTO_PAYLOAD_TYPE, payload.len());
    let payload_at = message.len();
    message.extend_from_slice(payload.as_bytes());
    let prev_at = match (seq > 0, prev_quote_at) {
        (true, Some(quote)) => Some(payload_at + quote + 1),
        (false, _) => None,
        // A placeholder `prev` is always written; without it the layout is unknown.
        (true, None) => return Err(RecordError::Unexpected("no prev in the statement")),
    };
    let fixed_to = prev_at.unwrap_or(message.len());
    let mut nonce = Box::new(Sha512::new());
    nonce.update(key.expanded.hash_prefix);
    nonce.update(&message[..fixed_to]);
    let encoded_to = payload_at + (fixed_to - payload_at) / 3 * 3;
    let mut envelope_hash = Sha256::new();
    envelope_hash.update(dsse::CANONICAL_HEAD);
    dsse::base64_pieces(&message[payload_at..encoded_to], &mut |piece| {
        envelope_hash.update(piece)
    });
    Ok(PreparedRecord {
        key,
        draft,
        author,
        recorded_at,
        seq,
        body,
        message,
        payload_at,
        prev_at,
        nonce,
        encoded_to,
        envelope_hash,
    })
}

/// A sealed record: its envelope in the compact form the evidence store keeps, and its digest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SealedRecord {
    /// Seq of the record.
    pub seq: u64,
    /// The envelope [`seal`] returns, in the compact form ([`dsse::Compact`]).
    pub compact: Vec<u8>,
    /// [`dsse::digest`] of the envelope (SHA-256 of its canonical JSON), the next record's
    /// `prev`.
    pub digest: String,
}

impl PreparedRecord<'_> {
    /// The seq this record was prepared for.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// The record's kind.
    pub fn kind(&self) -> RecordKind {
        self.draft.kind
    }

    /// Signs the record after the one whose digest is `prev`, with the key it was prepared for:
    /// exactly what [`seal`] gives for this draft at `Position { seq, prev }`, in the compact
    /// form with its digest. A `prev` that does not have the shape prepared for (absent at
    /// seq 0, a digest otherwise) takes [`seal`]'s general way, with the same result.
    pub fn seal(mut self, prev: Option<&str>) -> Result<SealedRecord, RecordError> {
        let key = self.key;
        let fits = match (self.prev_at, prev) {
            (Some(_), Some(prev)) => prev.len() == PREV_LEN && crate::jcs::is_verbatim(prev),
            (None, None) => true,
            _ => false,
        };
        if !fits {
            let position = Position {
                seq: self.seq,
                prev: prev.map(str::to_string),
            };
            let envelope = seal_canonical(
                self.draft,
                &self.body,
                &position,
                self.author,
                self.recorded_at,
                &key.signing,
            )?;
            // `seal` signs an in-toto payload once, with canonical base64 and a hex key id.
            let compact = dsse::Compact::of(&envelope).ok_or(RecordError::Unexpected(
                "sealed envelope has no compact form",
            ))?;
            return Ok(SealedRecord {
                seq: self.seq,
                compact,
                digest: dsse::digest(&envelope),
            });
        }
        let fixed_to = match (self.prev_at, prev) {
            (Some(at), Some(prev)) => {
                self.message[at..at + PREV_LEN].copy_from_slice(prev.as_bytes());
                at
            }
            _ => self.message.len(),
        };
        let message = &self.message;
        let (signature, _) = sign_continuing(key, message, fixed_to, self.nonce)?;
        let sig = signature.to_bytes();
        // The rest of `dsse::canonical_bytes`, hashed as it is written: every string in it
        // (base64, hex, the payload type) is written verbatim by JCS.
        let mut hash = self.envelope_hash;
        let mut feed = |piece: &[u8]| hash.update(piece);
        dsse::base64_pieces(&message[self.encoded_to..], &mut feed);
        dsse::canonical_tail(IN_TOTO_PAYLOAD_TYPE, &key.keyid, &sig, &mut feed);
        Ok(SealedRecord {
            seq: self.seq,
            compact: dsse::Compact::write(&key.keyid_bytes, &sig, &message[self.payload_at..]),
            digest: format!("sha256:{}", hex::encode(hash.finalize())),
        })
    }
}

/// Signs `message` with `key`, continuing the nonce hash from `nonce`, which must have absorbed
/// the key's prefix and `message[..fixed_to]` (only [`prepare`] makes one: a nonce hash of
/// anything else would make a signature that gives the key away). Also says whether `nonce`
/// was used.
fn sign_continuing(
    key: &SealingKey,
    message: &[u8],
    fixed_to: usize,
    nonce: Box<Sha512>,
) -> Result<(Ed25519Signature, bool), RecordError> {
    let started = std::cell::Cell::new(Some(nonce));
    // ed25519-dalek hands this closure a fresh hasher twice: for the nonce, having absorbed
    // the key's prefix, then for the challenge, having absorbed R and A. The started nonce hash
    // replaces the hasher only when the hasher is exactly in the state it was started from
    // (same digest); any other hasher is fed the whole message, so the signature is Ed25519's
    // in every case.
    let signature = ed25519_dalek::hazmat::raw_sign_byupdate::<Sha512, _>(
        &key.expanded,
        |hasher: &mut Sha512| {
            match started.take() {
                Some(nonce) if hasher.clone().finalize().as_slice() == key.nonce_start_digest => {
                    // Cloned rather than moved out of its box, so the only copy left behind
                    // is the boxed one, which is wiped when dropped here.
                    *hasher = Sha512::clone(&nonce);
                    hasher.update(&message[fixed_to..]);
                }
                unused => {
                    started.set(unused);
                    hasher.update(message);
                }
            }
            Ok(())
        },
        &key.verifying,
    )
    // Signing fails only if the closure does, and it never does.
    .map_err(|_| RecordError::Unexpected("signing failed"))?;
    Ok((signature, started.take().is_none()))
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

/// Signatures checked per Ed25519 batch: large enough that the multiscalar multiplication
/// (`n + 2` points for one key) takes Pippenger's method, which curve25519-dalek picks from 190
/// points and is about 10 % cheaper per point here than Straus's at 64 signatures; small enough
/// that a failed batch costs few single re-verifications.
const SIGNATURE_BATCH: usize = 256;

/// An envelope for [`open_many`]: parsed from JSON, or in the evidence store's compact form.
#[derive(Clone, Copy, Debug)]
pub enum EnvelopeRef<'a> {
    /// A parsed envelope.
    Json(&'a Envelope),
    /// An envelope in the compact form, whose payload needs no decoding.
    Compact(dsse::Compact<'a>),
}

impl EnvelopeRef<'_> {
    /// [`open`] of this envelope.
    fn open(&self, trusted: &[VerifyingKey]) -> Result<Link, OpenError> {
        match self {
            EnvelopeRef::Json(envelope) => open(envelope, trusted),
            EnvelopeRef::Compact(compact) => open(&compact.to_envelope(), trusted),
        }
        .map(|it| it.link())
    }
}

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
    envelopes: &[EnvelopeRef<'_>],
    trusted: &[VerifyingKey],
) -> Vec<Result<Link, OpenError>> {
    struct Candidate {
        idx: usize,
        message: Vec<u8>,
        payload_len: usize,
        signature: Ed25519Signature,
        key: usize,
    }
    let keyids: Vec<String> = trusted.iter().map(dsse::keyid).collect();
    let keyid_bytes: Vec<[u8; 32]> = trusted.iter().map(dsse::keyid_bytes).collect();
    let mut res: Vec<Option<Result<Link, OpenError>>> =
        (0..envelopes.len()).map(|_| None).collect();
    let mut candidates = Vec::with_capacity(envelopes.len());
    for (idx, envelope) in envelopes.iter().enumerate() {
        let candidate = match envelope {
            EnvelopeRef::Json(envelope) => json_candidate(envelope, &keyids),
            EnvelopeRef::Compact(compact) => {
                // The compact form is an in-toto envelope with one signature by construction.
                keyid_bytes
                    .iter()
                    .position(|it| it == compact.keyid_bytes())
                    .map(|key| {
                        let payload = compact.payload();
                        let message = dsse::pae(IN_TOTO_PAYLOAD_TYPE, payload);
                        (message, payload.len(), *compact.signature(), key)
                    })
            }
        };
        match candidate {
            Some((message, payload_len, sig, key)) => candidates.push(Candidate {
                idx,
                message,
                payload_len,
                signature: Ed25519Signature::from_bytes(&sig),
                key,
            }),
            None => res[idx] = Some(envelope.open(trusted)),
        }
    }
    for chunk in candidates.chunks(SIGNATURE_BATCH) {
        let items: Vec<batch::Item<'_>> = chunk
            .iter()
            .map(|it| batch::Item {
                message: &it.message,
                signature: &it.signature,
                key: it.key,
            })
            .collect();
        let all_valid = batch::verify(&items, trusted);
        for candidate in chunk {
            res[candidate.idx] = Some(if all_valid {
                // The payload is the tail of the PAE message, exactly as signed.
                let payload = &candidate.message[candidate.message.len() - candidate.payload_len..];
                parse_link(payload, &keyids[candidate.key])
            } else {
                envelopes[candidate.idx].open(trusted)
            });
        }
    }
    res.into_iter()
        .map(|it| it.unwrap_or_else(|| Err(OpenError::NotEvidence("not examined".into()))))
        .collect()
}

/// The PAE message, payload length, signature and key index of a parsed envelope that can join
/// a signature batch; None for anything else (bad base64 included), which [`open`] then names.
fn json_candidate(
    envelope: &Envelope,
    keyids: &[String],
) -> Option<(Vec<u8>, usize, [u8; 64], usize)> {
    if envelope.payload_type != IN_TOTO_PAYLOAD_TYPE {
        return None;
    }
    let [signature] = envelope.signatures.as_slice() else {
        return None;
    };
    let key = keyids.iter().position(|it| *it == signature.keyid)?;
    let sig: [u8; 64] = BASE64
        .decode(signature.sig.as_bytes())
        .ok()?
        .try_into()
        .ok()?;
    // The payload is decoded straight into its place in the PAE message, whose head needs its
    // length first: the exact length of padded base64.
    let encoded = envelope.payload.as_bytes();
    if !encoded.len().is_multiple_of(4) {
        return None;
    }
    let padding = encoded
        .iter()
        .rev()
        .take(2)
        .filter(|it| **it == b'=')
        .count();
    let payload_len = encoded.len() / 4 * 3 - padding;
    let mut message = Vec::with_capacity(payload_len + envelope.payload_type.len() + 32);
    dsse::pae_head(&mut message, &envelope.payload_type, payload_len);
    let payload_at = message.len();
    BASE64.decode_vec(encoded, &mut message).ok()?;
    if message.len() - payload_at != payload_len {
        return None;
    }
    Some((message, payload_len, sig, key))
}

/// What [`parse_opened`] accepts, reduced to the record's [`Link`]: the body is checked to be
/// JSON but not built, which is most of the work of opening a large record.
fn parse_link(payload: &[u8], keyid: &str) -> Result<Link, OpenError> {
    // One UTF-8 check of the whole payload, then a parser that trusts it, instead of one check
    // per string; invalid UTF-8 is refused by the slice parser, with its message.
    let statement: Statement<CheckedJson> = match std::str::from_utf8(payload) {
        Ok(text) => serde_json::from_str(text),
        Err(_) => serde_json::from_slice(payload),
    }
    .map_err(|err| OpenError::NotEvidence(err.to_string()))?;
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
        // The payload is written member by member with the body canonicalized once; it must be
        // exactly what canonicalizing the whole `Statement` gives, for bodies with nesting,
        // escapes, numbers and keys that sort differently in UTF-16, a body that itself holds
        // `null`s, with and without baseline, `prev`, site and controls, and strings to escape.
        let key = SigningKey::from_bytes(&[3; 32]);
        let bodies = [
            json!(null),
            json!({"z": 1, "a": [1.5, 0.25, 1e21, "x\"y\n"], "body": null, "\u{e000}": 1, "\u{1f600}": 2}),
            json!(["\u{1}", {"b": {"c": null}}, 9007199254740991u64]),
            check_sized_body(),
        ];
        let baseline = BaselineRef {
            id: "hipaa \"x\"".into(),
            version: "2026.1".into(),
            digest: format!("sha256:{}", "cd".repeat(32)),
        };
        let authors = [
            author(),
            Author {
                site_id: None,
                host_id: "h\u{e9}st\t\"2\"\\".into(),
                agent_version: "0.1.0-\u{1f600}".into(),
            },
        ];
        let times: [Timestamp; 2] = [
            Timestamp::UNIX_EPOCH,
            "2026-11-27T12:00:00.1234Z".parse().unwrap(),
        ];
        for (n, body) in bodies.into_iter().enumerate() {
            let draft = Draft {
                kind: [RecordKind::Check, RecordKind::AgentLifecycle][n % 2],
                baseline: (n % 2 == 0).then(|| baseline.clone()),
                controls: [vec![], vec!["164.312(b)".into(), "164.308(a)(1)".into()]][n / 2 % 2]
                    .clone(),
                body,
            };
            let author = &authors[n / 2 % 2];
            let recorded_at = times[n % 2];
            for position in [
                Position { seq: 0, prev: None },
                Position {
                    seq: 9_007_199_254_740_991,
                    prev: Some(format!("sha256:{}", "ab".repeat(32))),
                },
            ] {
                let envelope = seal(&draft, &position, author, recorded_at, &key).unwrap();
                let verified = dsse::verify(&envelope, &[key.verifying_key()]).unwrap();
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
                        digest: BTreeMap::from([(
                            "sha256".to_string(),
                            hex::encode(Sha256::digest(crate::jcs::to_vec(&draft.body).unwrap())),
                        )]),
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
                        retain_until: recorded_at
                            .checked_add(jiff::SignedDuration::from_hours(24 * RETENTION_DAYS))
                            .unwrap(),
                        baseline: draft.baseline.clone(),
                        controls: draft.controls.clone(),
                        body: draft.body.clone(),
                    },
                };
                assert_eq!(
                    String::from_utf8_lossy(verified.payload()),
                    String::from_utf8(crate::jcs::to_vec_of(&statement).unwrap()).unwrap(),
                    "body {n}, seq {}",
                    position.seq
                );
            }
        }
        // Beyond 2^53 - 1 a seq is refused, as canonicalizing the statement refuses it.
        let draft = Draft {
            kind: RecordKind::Check,
            baseline: None,
            controls: vec![],
            body: json!(null),
        };
        let position = Position {
            seq: 1 << 53,
            prev: Some(format!("sha256:{}", "ab".repeat(32))),
        };
        assert!(matches!(
            seal(&draft, &position, &author(), Timestamp::UNIX_EPOCH, &key),
            Err(RecordError::NotCanonical(
                crate::jcs::JcsError::UnsafeInteger(_)
            ))
        ));
    }

    /// A body of kilobytes, like a check's finding, with what canonicalization must get right:
    /// keys out of byte order and above U+E000, escapes, non-ASCII text, doubles, negative and
    /// large safe integers, nesting.
    fn check_sized_body() -> Value {
        let facts: Vec<Value> = (0..40_i64)
            .map(|n| {
                json!({
                    "path": format!("/etc/nixos/module-{n}.nix"),
                    "z_value": n * 1_000_003 - 7,
                    "ratio": (n as f64) / 7.0,
                    "note": format!("line {n}: \"quoted\"\tand\\ back\u{1}slash, caf\u{e9} \u{1f600}"),
                    "\u{e000}": [n % 3 == 0, null, -0.5e-7, 1e21],
                    "a": { "enabled": n % 2 == 0, "max": 9_007_199_254_740_991_u64 },
                })
            })
            .collect();
        json!({ "check": "ssh", "status": "fail", "facts": facts, "summary": "x".repeat(300) })
    }

    /// Pins the bytes `seal` writes: any change to them is a change of the wire format (every
    /// verifier and auditor hashes and checks exactly these bytes), so a performance change
    /// that alters one byte fails here. The digests were recorded from the code before the
    /// sealing path was reworked for speed.
    #[test]
    fn sealed_bytes_are_pinned() {
        let key = SigningKey::from_bytes(&[11; 32]);
        let recorded_at: Timestamp = "2026-11-27T12:00:00.123456789Z".parse().unwrap();
        let baseline = BaselineRef {
            id: "hipaa".into(),
            version: "2026.1".into(),
            digest: format!("sha256:{}", "cd".repeat(32)),
        };
        let drafts = [
            Draft {
                kind: RecordKind::Check,
                baseline: Some(baseline),
                controls: vec!["164.312(b)".into(), "164.308(a)(1)(ii)(D)".into()],
                body: check_sized_body(),
            },
            Draft {
                kind: RecordKind::AgentLifecycle,
                baseline: None,
                controls: vec![],
                body: json!({"event": "start"}),
            },
        ];
        let authors = [
            author(),
            Author {
                site_id: None,
                host_id: "h\u{e9}st \"2\"".into(),
                agent_version: "0.1.0".into(),
            },
        ];
        let mut prev = None;
        let mut digests = Vec::new();
        for seq in 0..4_u64 {
            let draft = &drafts[seq as usize % 2];
            let author = &authors[(seq as usize / 2) % 2];
            let position = Position {
                seq,
                prev: prev.clone(),
            };
            let envelope = seal(draft, &position, author, recorded_at, &key).unwrap();
            let digest = dsse::digest(&envelope);
            prev = Some(digest.clone());
            digests.push(digest);
        }
        assert_eq!(
            digests,
            [
                "sha256:e2a2c57ea3e2e303adf1e52eed38062402259158d0f42195e25a34a4cae167a4",
                "sha256:ab48e9bf521eb066029808e0e24bd6385fbec456414ad3702a4ef0b97bc1f374",
                "sha256:6f2f298fecb8dc0ad5e914fdc9481bacfb86d96c885b95342700821f4af62355",
                "sha256:70d46740174fe031c6943d5f44a69a3a8bbb3626f20c191aa878bac6f687ac7f",
            ]
        );
    }

    /// `prepare` then `PreparedRecord::seal` gives `seal`'s bytes and digest, whatever the
    /// payload's length modulo 3 (where the base64 of the tail starts), the number of digits of
    /// the seq, the author's strings, and whether `prev` has the prepared shape or not.
    #[test]
    fn prepared_records_seal_to_exactly_what_seal_writes() {
        let key = SigningKey::from_bytes(&[12; 32]);
        let sealing = SealingKey::new(&key);
        let recorded_at: Timestamp = "2026-11-27T12:00:00Z".parse().unwrap();
        let digest = format!("sha256:{}", "7f".repeat(32));
        let authors = [
            author(),
            Author {
                site_id: None,
                host_id: "h\u{e9}st \"2\"\n".into(),
                agent_version: "0.1.0-rc.1".into(),
            },
        ];
        let mut bodies: Vec<Value> = (0..3)
            .map(|pad| json!({ "pad": "x".repeat(pad) }))
            .collect();
        bodies.push(check_sized_body());
        bodies.push(json!(null));
        let prevs: [Option<&str>; 5] = [
            None,
            Some(&digest),
            Some("sha256:short"),
            Some("sha256:\"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"),
            Some("sha256:\u{e9}aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"),
        ];
        let mut n_checked = 0;
        for seq in [0, 1, 9, 10, 99, 100, 12_345, (1 << 53) - 1, 1 << 53] {
            for (n, body) in bodies.iter().enumerate() {
                let draft = Draft {
                    kind: if n % 2 == 0 {
                        RecordKind::Check
                    } else {
                        RecordKind::Heal
                    },
                    baseline: None,
                    controls: vec!["164.312(b)".into()],
                    body: body.clone(),
                };
                for author in &authors {
                    for prev in prevs {
                        let position = Position {
                            seq,
                            prev: prev.map(str::to_string),
                        };
                        let expected = seal(&draft, &position, author, recorded_at, &key)
                            .map(|it| (dsse::canonical_bytes(&it), dsse::digest(&it)));
                        let sealed = prepare(&draft, seq, author, recorded_at, &sealing)
                            .and_then(|it| it.seal(prev))
                            .map(|it| {
                                assert_eq!(it.seq, seq);
                                let compact = dsse::Compact::parse(&it.compact).unwrap();
                                (compact.canonical_bytes(), it.digest)
                            });
                        assert_eq!(sealed, expected, "seq {seq}, body {n}, prev {prev:?}");
                        n_checked += usize::from(expected.is_ok());
                    }
                }
            }
        }
        assert_eq!(n_checked, 8 * 5 * 2 * 5);
    }

    /// The nonce hash started by `prepare` is the one the signature continues (else sealing
    /// would be correct but hash the whole message twice in chain order).
    #[test]
    fn sealing_continues_the_started_nonce_hash() {
        use ed25519_dalek::Signer;
        let key = SigningKey::from_bytes(&[13; 32]);
        let sealing = SealingKey::new(&key);
        let draft = Draft {
            kind: RecordKind::Check,
            baseline: None,
            controls: vec![],
            body: check_sized_body(),
        };
        let author = author();
        for seq in [0, 7] {
            let prepared = prepare(&draft, seq, &author, Timestamp::UNIX_EPOCH, &sealing).unwrap();
            let fixed_to = prepared.prev_at.unwrap_or(prepared.message.len());
            let (signature, continued) =
                sign_continuing(&sealing, &prepared.message, fixed_to, prepared.nonce).unwrap();
            assert!(continued, "seq {seq}");
            assert_eq!(signature, key.sign(&prepared.message));
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
        // Base64 of a whole number of quads that still does not decode (a bad character,
        // non-zero trailing bits): the batch path sizes the PAE from the padding first.
        envelopes[78].payload = "%%%%".into();
        envelopes[79].payload = "QR==".into();
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
        let refs: Vec<EnvelopeRef<'_>> = envelopes.iter().map(EnvelopeRef::Json).collect();
        let many = open_many(&refs, &keys);
        assert_eq!(many.len(), envelopes.len());
        for (idx, (envelope, batched)) in envelopes.iter().zip(&many).enumerate() {
            let single = open(envelope, &keys).map(|it| it.link());
            assert_eq!(batched, &single, "envelope {idx}");
        }
        // The same envelopes with every other one in the compact form where it has one (the
        // damaged signature and payloads, the signed non-statements and the foreign key do).
        let compact: Vec<Option<Vec<u8>>> = envelopes
            .iter()
            .enumerate()
            .map(|(idx, it)| dsse::Compact::of(it).filter(|_| idx % 2 == 1))
            .collect();
        assert!(compact[3].is_some() && compact[71].is_some() && compact[145].is_some());
        let mixed: Vec<EnvelopeRef<'_>> = envelopes
            .iter()
            .zip(&compact)
            .map(|(envelope, compact)| match compact {
                Some(bytes) => EnvelopeRef::Compact(dsse::Compact::parse(bytes).unwrap()),
                None => EnvelopeRef::Json(envelope),
            })
            .collect();
        assert_eq!(open_many(&mixed, &keys), many);
        let n_ok = many.iter().filter(|it| it.is_ok()).count();
        // Eleven damaged envelopes, and three bodies no `Value` holds (two numbers out of range,
        // a lone surrogate); duplicate keys and the plain body open.
        assert_eq!(n_ok, 150 - 11 - 3);
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
