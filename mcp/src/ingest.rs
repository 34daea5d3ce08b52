//! What the server verifies about what agents send: evidence batches, checkpoints and order
//! results. Sans-I/O: values in, verdicts out; the caller reads the stored head and digests and
//! writes what is accepted.
//!
//! An evidence batch goes through two halves, like the agent's `evidence verify`:
//! - [`examine`] (stateless, expensive, run off the async threads): canonical bytes and digest
//!   of each envelope, signatures against the host's pinned key with
//!   `protocol::evidence::open_many` (batched Ed25519), and the statement's chain facts;
//! - [`plan`] (stateful, cheap, run inside the write transaction): ownership (the statement
//!   names this host), continuity with the stored head (`seq = head + 1`, `prev = head digest`,
//!   seq 0 without `prev`), duplicates (same digest at a stored seq) and conflicts. The first
//!   rejection stops the batch; the records before it are accepted.
//!
//! [`check_owner`] is also what the API applies to a whole batch first: a verified record naming
//! another host is an impersonation attempt, refused before planning. This module must not
//! touch the database, the network or the clock.

use std::collections::HashMap;

use ed25519_dalek::VerifyingKey;
use msp_compliance_protocol::api::{ChainHead, RecordStatus, RecordVerdict};
use msp_compliance_protocol::dsse::{self, Envelope};
use msp_compliance_protocol::evidence::{self, CheckpointBody, EnvelopeRef, RecordKind};
use msp_compliance_protocol::order::{OrderResult, RESULT_PAYLOAD_TYPE};
use serde::Deserialize;
use sha2::{Digest, Sha256};

/// Reason given for the records after a rejected one.
pub const AFTER_REJECTED: &str = "after a rejected record";

/// The host a request comes from (by its certificate).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Owner<'a> {
    /// Site id of the enrollment.
    pub site_id: &'a str,
    /// Host id of the enrollment.
    pub host_id: &'a str,
}

/// One envelope after the stateless checks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Candidate {
    /// `sha256:<hex>` of the canonical bytes.
    pub digest: String,
    /// The canonical envelope bytes: what is stored and exported.
    pub canonical: Vec<u8>,
    /// The statement's chain facts, or why the envelope was refused.
    pub facts: Result<RecordFacts, String>,
}

/// What places a verified record in its chain and names its owner.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordFacts {
    /// Record kind.
    pub kind: RecordKind,
    /// Seq.
    pub seq: u64,
    /// Digest of the previous record.
    pub prev: Option<String>,
    /// Site named by the statement.
    pub site_id: Option<String>,
    /// Host named by the statement.
    pub host_id: String,
}

/// What to do with a batch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    /// One verdict per candidate, in order.
    pub verdicts: Vec<RecordVerdict>,
    /// The candidates to store, in chain order.
    pub accepted: Vec<Accepted>,
    /// The head after storing them.
    pub head: Option<ChainHead>,
}

/// A candidate to store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Accepted {
    /// Its index in the batch.
    pub index: usize,
    /// Its seq.
    pub seq: u64,
}

/// Why a checkpoint or result envelope was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// Not the JSON or payload this endpoint takes.
    #[error("{0}")]
    BadRequest(String),
    /// The signature does not verify against the pinned key.
    #[error("{0}")]
    BadSignature(String),
    /// The payload names another site or host.
    #[error("{0}")]
    IdentityMismatch(String),
}

/// `sha256:<hex>` of canonical envelope bytes: [`dsse::digest`] without canonicalizing twice.
pub fn digest_of_canonical(canonical: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(canonical)))
}

/// The stateless half: canonical bytes, digests, signatures (batched) and chain facts.
pub fn examine(envelopes: &[Envelope], key: &VerifyingKey) -> Vec<Candidate> {
    let trusted = [*key];
    let refs: Vec<EnvelopeRef<'_>> = envelopes.iter().map(EnvelopeRef::Json).collect();
    let opened = evidence::open_many(&refs, &trusted);
    envelopes
        .iter()
        .zip(opened)
        .map(|(envelope, opened)| {
            let canonical = dsse::canonical_bytes(envelope);
            let digest = digest_of_canonical(&canonical);
            let facts = match opened {
                // `open_many` verified the signature over exactly these payload bytes and parsed
                // them as a statement; the facts are read from the same bytes.
                Ok(_) => record_facts(envelope),
                Err(err) => Err(err.to_string()),
            };
            Candidate {
                digest,
                canonical,
                facts,
            }
        })
        .collect()
}

/// The stateful half: decides each candidate against the stored head. `stored_digest(seq)`
/// answers the digest stored at a seq at or below the head.
pub fn plan<E>(
    owner: Owner<'_>,
    stored_head: Option<ChainHead>,
    candidates: &[Candidate],
    mut stored_digest: impl FnMut(u64) -> Result<Option<String>, E>,
) -> Result<Plan, E> {
    let mut head = stored_head;
    let mut verdicts = Vec::with_capacity(candidates.len());
    let mut accepted = Vec::new();
    // Records accepted earlier in this batch are not in storage yet.
    let mut batch_digests: HashMap<u64, &str> = HashMap::new();
    let mut stopped = false;
    for (idx, candidate) in candidates.iter().enumerate() {
        let verdict = |status, reason: Option<String>| RecordVerdict {
            digest: candidate.digest.clone(),
            status,
            reason,
        };
        if stopped {
            verdicts.push(verdict(
                RecordStatus::Rejected,
                Some(AFTER_REJECTED.to_string()),
            ));
            continue;
        }
        let decision = decide(
            owner,
            head.as_ref(),
            candidate,
            &batch_digests,
            &mut stored_digest,
        )?;
        match decision {
            Decision::Accept(facts) => {
                batch_digests.insert(facts.seq, &candidate.digest);
                head = Some(ChainHead {
                    seq: facts.seq,
                    digest: candidate.digest.clone(),
                });
                accepted.push(Accepted {
                    index: idx,
                    seq: facts.seq,
                });
                verdicts.push(verdict(RecordStatus::Accepted, None));
            }
            Decision::Duplicate => verdicts.push(verdict(RecordStatus::Duplicate, None)),
            Decision::Reject(reason) => {
                stopped = true;
                verdicts.push(verdict(RecordStatus::Rejected, Some(reason)));
            }
        }
    }
    Ok(Plan {
        verdicts,
        accepted,
        head,
    })
}

/// Verifies a checkpoint envelope and returns the head it pins.
pub fn open_checkpoint(
    envelope: &Envelope,
    key: &VerifyingKey,
    owner: Owner<'_>,
) -> Result<ChainHead, Refusal> {
    let opened = evidence::open(envelope, &[*key]).map_err(|err| match err {
        evidence::OpenError::Envelope(err) => Refusal::BadSignature(err.to_string()),
        other => Refusal::BadRequest(other.to_string()),
    })?;
    let predicate = &opened.statement().predicate;
    if predicate.kind != RecordKind::Checkpoint {
        return Err(Refusal::BadRequest(format!(
            "record kind is {}, not checkpoint",
            predicate.kind.as_str()
        )));
    }
    check_owner(owner, predicate.site_id.as_deref(), &predicate.host_id)
        .map_err(Refusal::IdentityMismatch)?;
    let body: CheckpointBody = serde_json::from_value(predicate.body.clone())
        .map_err(|err| Refusal::BadRequest(format!("checkpoint body: {err}")))?;
    Ok(ChainHead {
        seq: body.head_seq,
        digest: body.head_digest,
    })
}

/// Verifies an order-result envelope and returns the result.
pub fn open_result(
    envelope: &Envelope,
    key: &VerifyingKey,
    owner: Owner<'_>,
) -> Result<OrderResult, Refusal> {
    let verified =
        dsse::verify_typed(envelope, RESULT_PAYLOAD_TYPE, &[*key]).map_err(|err| match err {
            dsse::DsseError::WrongPayloadType { .. } | dsse::DsseError::BadPayloadEncoding => {
                Refusal::BadRequest(err.to_string())
            }
            other => Refusal::BadSignature(other.to_string()),
        })?;
    let result: OrderResult = serde_json::from_slice(verified.payload())
        .map_err(|err| Refusal::BadRequest(format!("order result: {err}")))?;
    check_owner(owner, Some(&result.site_id), &result.host_id)
        .map_err(Refusal::IdentityMismatch)?;
    Ok(result)
}

enum Decision {
    Accept(RecordFacts),
    Duplicate,
    Reject(String),
}

fn decide<E>(
    owner: Owner<'_>,
    head: Option<&ChainHead>,
    candidate: &Candidate,
    batch_digests: &HashMap<u64, &str>,
    stored_digest: &mut impl FnMut(u64) -> Result<Option<String>, E>,
) -> Result<Decision, E> {
    let facts = match &candidate.facts {
        Ok(facts) => facts,
        Err(reason) => return Ok(Decision::Reject(reason.clone())),
    };
    if let Err(reason) = check_owner(owner, facts.site_id.as_deref(), &facts.host_id) {
        return Ok(Decision::Reject(reason));
    }
    let next = head.map_or(0, |it| it.seq + 1);
    if facts.seq < next {
        let stored = match batch_digests.get(&facts.seq) {
            Some(digest) => Some((*digest).to_string()),
            None => stored_digest(facts.seq)?,
        };
        return Ok(match stored {
            Some(stored) if stored == candidate.digest => Decision::Duplicate,
            Some(_) => Decision::Reject(format!("conflicts with stored record seq {}", facts.seq)),
            None => Decision::Reject(format!(
                "seq {} is below the stored head but no record is stored there",
                facts.seq
            )),
        });
    }
    if facts.seq > next {
        let missing = if facts.seq == next + 1 {
            next.to_string()
        } else {
            format!("{next}..={}", facts.seq - 1)
        };
        return Ok(Decision::Reject(format!(
            "gap: expected seq {next}, found seq {}: records {missing} are missing",
            facts.seq
        )));
    }
    match (head, &facts.prev) {
        (None, Some(_)) => Ok(Decision::Reject("seq 0 must not have a prev".into())),
        (Some(head), prev) if prev.as_deref() != Some(head.digest.as_str()) => {
            Ok(Decision::Reject(format!(
                "prev {} is not the digest of stored record seq {} ({})",
                prev.as_deref().unwrap_or("(none)"),
                head.seq,
                head.digest
            )))
        }
        _ => Ok(Decision::Accept(facts.clone())),
    }
}

/// Whether a record or result names the owner; the error says whom it names instead.
pub fn check_owner(owner: Owner<'_>, site_id: Option<&str>, host_id: &str) -> Result<(), String> {
    if site_id == Some(owner.site_id) && host_id == owner.host_id {
        return Ok(());
    }
    Err(format!(
        "record names {}/{host_id}, but the certificate is enrolled as {}/{}",
        site_id.unwrap_or("(no site)"),
        owner.site_id,
        owner.host_id
    ))
}

/// The chain facts of a statement. A partial view of `protocol::evidence::Statement`:
/// `open_many` already parsed the whole statement strictly and dropped it, so this reads only
/// the fields the server needs and skips the body without building it.
#[derive(Deserialize)]
struct StatementFacts {
    predicate: PredicateFacts,
}

#[derive(Deserialize)]
struct PredicateFacts {
    kind: RecordKind,
    seq: u64,
    #[serde(default)]
    prev: Option<String>,
    site_id: Option<String>,
    host_id: String,
}

fn record_facts(envelope: &Envelope) -> Result<RecordFacts, String> {
    use base64::Engine;
    let payload = base64::engine::general_purpose::STANDARD
        .decode(envelope.payload.as_bytes())
        .map_err(|_| "payload is not valid base64".to_string())?;
    let facts: StatementFacts = serde_json::from_slice(&payload)
        .map_err(|err| format!("not an msp-compliance evidence statement: {err}"))?;
    Ok(RecordFacts {
        kind: facts.predicate.kind,
        seq: facts.predicate.seq,
        prev: facts.predicate.prev,
        site_id: facts.predicate.site_id,
        host_id: facts.predicate.host_id,
    })
}

#[cfg(test)]
mod tests {
    use ed25519_dalek::SigningKey;
    use jiff::Timestamp;
    use msp_compliance_protocol::evidence::{Author, Draft, Position, seal};
    use serde_json::json;

    use super::*;

    const OWNER: Owner<'static> = Owner {
        site_id: "clinic-a",
        host_id: "nixos-1",
    };

    fn key() -> SigningKey {
        SigningKey::from_bytes(&[9; 32])
    }

    fn author(host: &str) -> Author {
        Author {
            site_id: Some("clinic-a".into()),
            host_id: host.into(),
            agent_version: "0.1.0".into(),
        }
    }

    fn draft(kind: RecordKind, body: serde_json::Value) -> Draft {
        Draft {
            kind,
            baseline: None,
            controls: vec![],
            body,
        }
    }

    /// A chain of `n` records from seq 0.
    fn chain(n: u64) -> Vec<Envelope> {
        let mut res: Vec<Envelope> = Vec::new();
        for seq in 0..n {
            let prev = res.last().map(dsse::digest);
            res.push(
                seal(
                    &draft(RecordKind::Check, json!({"n": seq})),
                    &Position { seq, prev },
                    &author("nixos-1"),
                    Timestamp::UNIX_EPOCH,
                    &key(),
                )
                .unwrap(),
            );
        }
        res
    }

    /// Storage as a map from seq to digest.
    fn stored(records: &[Envelope]) -> (Option<ChainHead>, HashMap<u64, String>) {
        let map: HashMap<u64, String> = records
            .iter()
            .enumerate()
            .map(|(seq, it)| (seq as u64, dsse::digest(it)))
            .collect();
        let head = records.last().map(|it| ChainHead {
            seq: records.len() as u64 - 1,
            digest: dsse::digest(it),
        });
        (head, map)
    }

    fn run(stored_records: &[Envelope], batch: &[Envelope]) -> Plan {
        let (head, map) = stored(stored_records);
        let candidates = examine(batch, &key().verifying_key());
        plan::<()>(OWNER, head, &candidates, |seq| Ok(map.get(&seq).cloned())).unwrap()
    }

    fn indexes(plan: &Plan) -> Vec<usize> {
        plan.accepted.iter().map(|it| it.index).collect()
    }

    fn statuses(plan: &Plan) -> Vec<RecordStatus> {
        plan.verdicts.iter().map(|it| it.status).collect()
    }

    #[test]
    fn digests_are_the_protocol_digests() {
        for envelope in chain(3) {
            let candidate = &examine(std::slice::from_ref(&envelope), &key().verifying_key())[0];
            assert_eq!(candidate.digest, dsse::digest(&envelope));
            assert_eq!(candidate.canonical, dsse::canonical_bytes(&envelope));
        }
    }

    #[test]
    fn a_fresh_chain_is_accepted_and_moves_the_head() {
        let records = chain(5);
        let plan = run(&[], &records);
        assert_eq!(statuses(&plan), vec![RecordStatus::Accepted; 5]);
        assert_eq!(indexes(&plan), vec![0, 1, 2, 3, 4]);
        assert_eq!(plan.head, stored(&records).0);
    }

    #[test]
    fn redelivery_is_duplicate_and_continues() {
        let records = chain(6);
        let plan = run(&records[..4], &records[2..]);
        assert_eq!(
            statuses(&plan),
            vec![
                RecordStatus::Duplicate,
                RecordStatus::Duplicate,
                RecordStatus::Accepted,
                RecordStatus::Accepted
            ]
        );
        assert_eq!(indexes(&plan), vec![2, 3]);
        assert_eq!(plan.head.unwrap().seq, 5);
        // The same envelope twice in one batch: the second is a duplicate.
        let plan = run(&[], &[records[0].clone(), records[0].clone()]);
        assert_eq!(
            statuses(&plan),
            vec![RecordStatus::Accepted, RecordStatus::Duplicate]
        );
    }

    #[test]
    fn a_gap_is_rejected_with_the_missing_seqs_and_stops_the_batch() {
        let records = chain(6);
        let plan = run(&records[..2], &[records[4].clone(), records[5].clone()]);
        assert_eq!(
            statuses(&plan),
            vec![RecordStatus::Rejected, RecordStatus::Rejected]
        );
        let reason = plan.verdicts[0].reason.as_deref().unwrap();
        assert!(reason.contains("expected seq 2, found seq 4"), "{reason}");
        assert!(reason.contains("2..=3"), "{reason}");
        assert_eq!(plan.verdicts[1].reason.as_deref(), Some(AFTER_REJECTED));
        assert!(plan.accepted.is_empty());
        assert_eq!(plan.head.unwrap().seq, 1);
        // Without any stored record the chain must start at seq 0.
        let plan = run(&[], &records[1..2]);
        assert!(
            plan.verdicts[0]
                .reason
                .as_deref()
                .unwrap()
                .contains("expected seq 0")
        );
    }

    #[test]
    fn a_conflicting_record_at_a_stored_seq_is_rejected() {
        let records = chain(3);
        let other = seal(
            &draft(RecordKind::Check, json!({"n": "other"})),
            &Position {
                seq: 1,
                prev: Some(dsse::digest(&records[0])),
            },
            &author("nixos-1"),
            Timestamp::UNIX_EPOCH,
            &key(),
        )
        .unwrap();
        let plan = run(&records, &[other]);
        assert_eq!(
            plan.verdicts[0].reason.as_deref(),
            Some("conflicts with stored record seq 1")
        );
    }

    #[test]
    fn tampering_and_foreign_keys_are_rejected_after_an_accepted_prefix() {
        let records = chain(4);
        let mut tampered = records[2].clone();
        tampered.payload = tampered.payload.replacen('e', "f", 1);
        let batch = [
            records[0].clone(),
            records[1].clone(),
            tampered,
            records[3].clone(),
        ];
        let plan = run(&[], &batch);
        assert_eq!(
            statuses(&plan),
            vec![
                RecordStatus::Accepted,
                RecordStatus::Accepted,
                RecordStatus::Rejected,
                RecordStatus::Rejected
            ]
        );
        assert_eq!(indexes(&plan), vec![0, 1]);
        assert_eq!(plan.head.as_ref().unwrap().seq, 1);

        let stranger = SigningKey::from_bytes(&[1; 32]);
        let foreign = seal(
            &draft(RecordKind::Check, json!({})),
            &Position { seq: 0, prev: None },
            &author("nixos-1"),
            Timestamp::UNIX_EPOCH,
            &stranger,
        )
        .unwrap();
        let plan = run(&[], &[foreign]);
        let reason = plan.verdicts[0].reason.as_deref().unwrap();
        assert!(reason.contains("no signature by a trusted key"), "{reason}");
    }

    #[test]
    fn prev_must_name_the_stored_head() {
        let records = chain(3);
        let wrong_prev = seal(
            &draft(RecordKind::Check, json!({})),
            &Position {
                seq: 3,
                prev: Some(dsse::digest(&records[0])),
            },
            &author("nixos-1"),
            Timestamp::UNIX_EPOCH,
            &key(),
        )
        .unwrap();
        let plan = run(&records, &[wrong_prev]);
        let reason = plan.verdicts[0].reason.as_deref().unwrap();
        assert!(
            reason.contains("not the digest of stored record seq 2"),
            "{reason}"
        );
    }

    #[test]
    fn records_of_another_host_are_rejected() {
        let other = seal(
            &draft(RecordKind::Check, json!({})),
            &Position { seq: 0, prev: None },
            &author("nixos-2"),
            Timestamp::UNIX_EPOCH,
            &key(),
        )
        .unwrap();
        let plan = run(&[], &[other]);
        let reason = plan.verdicts[0].reason.as_deref().unwrap();
        assert!(
            reason.contains(
                "record names clinic-a/nixos-2, but the certificate is enrolled as clinic-a/nixos-1"
            ),
            "{reason}"
        );
    }

    #[test]
    fn checkpoints_are_verified_and_return_their_pinned_head() {
        let records = chain(2);
        let body = json!({"head_seq": 1, "head_digest": dsse::digest(&records[1])});
        let checkpoint = seal(
            &draft(RecordKind::Checkpoint, body),
            &Position {
                seq: 2,
                prev: Some(dsse::digest(&records[1])),
            },
            &author("nixos-1"),
            Timestamp::UNIX_EPOCH,
            &key(),
        )
        .unwrap();
        let head = open_checkpoint(&checkpoint, &key().verifying_key(), OWNER).unwrap();
        assert_eq!(head.seq, 1);
        assert!(matches!(
            open_checkpoint(&records[0], &key().verifying_key(), OWNER),
            Err(Refusal::BadRequest(_))
        ));
        let stranger = SigningKey::from_bytes(&[1; 32]).verifying_key();
        assert!(matches!(
            open_checkpoint(&checkpoint, &stranger, OWNER),
            Err(Refusal::BadSignature(_))
        ));
        let elsewhere = Owner {
            site_id: "clinic-b",
            host_id: "nixos-1",
        };
        assert!(matches!(
            open_checkpoint(&checkpoint, &key().verifying_key(), elsewhere),
            Err(Refusal::IdentityMismatch(_))
        ));
    }
}
