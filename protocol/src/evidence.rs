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

use ed25519_dalek::{SigningKey, VerifyingKey};
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
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Statement {
    /// Always [`STATEMENT_TYPE`].
    #[serde(rename = "_type")]
    pub statement_type: String,
    /// What the record is about, with the digest of the predicate body.
    pub subject: Vec<Subject>,
    /// Always [`EVIDENCE_PREDICATE_TYPE`].
    #[serde(rename = "predicateType")]
    pub predicate_type: String,
    /// The record.
    pub predicate: Predicate,
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
pub struct Predicate {
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
    pub body: Value,
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

/// Builds and signs a record at a position. Pure: time and key are passed in.
pub fn seal(
    draft: &Draft,
    position: &Position,
    author: &Author,
    recorded_at: Timestamp,
    key: &SigningKey,
) -> Result<Envelope, RecordError> {
    let body_digest = hex::encode(Sha256::digest(crate::jcs::to_vec(&draft.body)?));
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
            digest: BTreeMap::from([("sha256".to_string(), body_digest)]),
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
            body: draft.body.clone(),
        },
    };
    let payload = crate::jcs::to_vec_of(&statement)?;
    Ok(dsse::sign(IN_TOTO_PAYLOAD_TYPE, &payload, key))
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
    let statement: Statement = serde_json::from_slice(verified.payload())
        .map_err(|err| OpenError::NotEvidence(err.to_string()))?;
    if statement.statement_type != STATEMENT_TYPE
        || statement.predicate_type != EVIDENCE_PREDICATE_TYPE
    {
        return Err(OpenError::NotEvidence(
            "wrong statement or predicate type".into(),
        ));
    }
    Ok(Opened {
        statement,
        keyid: verified.keyid().to_string(),
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
        let opened = open(envelope, self.trusted);
        self.push_opened(opened, digest)
    }

    /// Checks the next record's place in the chain, given the outcome of [`open`] on it with
    /// this verifier's trusted keys. `push` is `push_opened(open(..))`; callers that verify
    /// signatures in parallel (the expensive, stateless half) feed the results here in input
    /// order, so the first bad record is still the one reported, with its position.
    pub fn push_opened(
        &mut self,
        opened: Result<Opened, OpenError>,
        digest: &str,
    ) -> Result<Statement, ChainError> {
        let index = self.index;
        self.index += 1;
        let statement = match opened {
            Ok(it) => it.statement,
            Err(OpenError::Envelope(source)) => {
                return Err(ChainError::Envelope { index, source });
            }
            Err(OpenError::NotEvidence(message)) => {
                return Err(ChainError::NotEvidence { index, message });
            }
        };
        let seq = statement.predicate.seq;
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
                if statement.predicate.prev.as_deref() != Some(previous_digest.as_str()) {
                    return Err(ChainError::PrevMismatch {
                        index,
                        seq,
                        expected: previous_digest.clone(),
                        found: statement
                            .predicate
                            .prev
                            .clone()
                            .unwrap_or_else(|| "(none)".into()),
                    });
                }
            }
            None if seq == 0 && statement.predicate.prev.is_some() => {
                return Err(ChainError::NotEvidence {
                    index,
                    message: "seq 0 must not have a prev".into(),
                });
            }
            None => {}
        }
        if statement.predicate.kind == RecordKind::Checkpoint {
            self.summary.n_checkpoints += 1;
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
        self.summary.n_records += 1;
        self.summary.first_seq.get_or_insert(seq);
        self.summary.head = Some((seq, digest.to_string()));
        Ok(statement)
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
