//! The control-plane sink: evidence records to `POST /v1/evidence` over the agent's mTLS client.
//!
//! A batch from the outbox is cut into requests that fit the API's limits
//! ([`api::MAX_BATCH_RECORDS`] envelopes, [`api::MAX_BODY_BYTES`] bytes); each request body is
//! built from the stored canonical envelope bytes as they are (no re-serialization), so the
//! server computes the very digests the chain holds. The server answers one verdict per
//! envelope, in order; only the prefix of `accepted` or `duplicate` verdicts counts as
//! delivered ([`delivered_prefix`], a pure function), so the outbox cursor never passes a record
//! the server did not store, and a redelivery after a lost answer is a harmless `duplicate`.
//!
//! This sink only moves bytes and reads verdicts; the network is `mcp_client`'s, the cursor the
//! outbox's. It deletes nothing and never rewrites a record.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use msp_compliance_protocol::api::{self, EvidenceBatchResponse, RecordStatus};

use crate::mcp_client::{Client, ClientError};
use crate::outbox::{Delivery, Outgoing, Sink, SinkError};

/// Bytes of the `{"envelopes":[` … `]}` wrapper and a comma per envelope, kept free below the
/// body limit.
const WRAPPER_BYTES: usize = 32;

/// The control-plane sink.
#[derive(Debug)]
pub struct ControlPlaneSink {
    name: String,
    client: Arc<Client>,
}

impl ControlPlaneSink {
    /// A sink over a client.
    pub fn new(client: Arc<Client>) -> ControlPlaneSink {
        ControlPlaneSink {
            name: ControlPlaneSink::name_for(client.base_url()),
            client,
        }
    }

    /// The sink name (cursor key) of a control plane: `control-plane:<url>`, so a new server
    /// starts from the first record (its dedup by digest makes that harmless).
    pub fn name_for(url: &str) -> String {
        format!("control-plane:{}", url.trim_end_matches('/'))
    }

    async fn deliver_batch(&self, batch: &[Outgoing]) -> Delivery {
        let mut delivered = 0;
        for request in requests(batch) {
            let body = batch_body(request);
            let answer = self.client.post_evidence(body).await;
            let (count, error) = match answer {
                Ok(response) => delivered_prefix(request, &response),
                Err(err) => (0, Some(client_error(request, err))),
            };
            delivered += count;
            if error.is_some() || count < request.len() {
                return Delivery {
                    delivered,
                    error: error.or_else(|| {
                        Some(SinkError::Transport {
                            operation: "POST",
                            name: api::EVIDENCE_PATH.to_string(),
                            message: "the server stored only part of the batch".into(),
                        })
                    }),
                };
            }
        }
        Delivery {
            delivered,
            error: None,
        }
    }
}

impl Sink for ControlPlaneSink {
    fn name(&self) -> &str {
        &self.name
    }

    fn deliver<'a>(
        &'a self,
        batch: &'a [Outgoing],
    ) -> Pin<Box<dyn Future<Output = Delivery> + Send + 'a>> {
        Box::pin(self.deliver_batch(batch))
    }
}

/// How many leading records of `sent` the server durably holds according to `response`, and
/// why it stopped short, if it did. A verdict counts only when it names the digest sent at its
/// position; a missing, reordered or unknown verdict ends the prefix.
pub fn delivered_prefix(
    sent: &[Outgoing],
    response: &EvidenceBatchResponse,
) -> (usize, Option<SinkError>) {
    for (idx, outgoing) in sent.iter().enumerate() {
        let name = outgoing.object_name();
        let Some(verdict) = response.results.get(idx) else {
            let error = SinkError::Transport {
                operation: "POST",
                name,
                message: format!(
                    "the server answered {} verdicts for {} envelopes",
                    response.results.len(),
                    sent.len()
                ),
            };
            return (idx, Some(error));
        };
        let expected = format!("sha256:{}", outgoing.digest_hex);
        if verdict.digest != expected {
            let error = SinkError::Transport {
                operation: "POST",
                name,
                message: format!(
                    "verdict {idx} names digest {:?}, not the envelope sent there",
                    one_line(&verdict.digest)
                ),
            };
            return (idx, Some(error));
        }
        match verdict.status {
            RecordStatus::Accepted | RecordStatus::Duplicate => {}
            RecordStatus::Rejected => {
                let reason = verdict.reason.as_deref().map_or("-".to_string(), one_line);
                return (idx, Some(SinkError::Rejected { name, reason }));
            }
        }
    }
    (sent.len(), None)
}

/// Cuts a batch into requests within the API's count and size limits. A single envelope larger
/// than the limit still goes alone (the server then refuses it, loudly, rather than the sink
/// skipping it silently).
fn requests(batch: &[Outgoing]) -> Vec<&[Outgoing]> {
    let mut res = Vec::new();
    let mut start = 0;
    let mut size = WRAPPER_BYTES;
    for (idx, outgoing) in batch.iter().enumerate() {
        let len = outgoing.envelope.len() + 1;
        let full = idx - start >= api::MAX_BATCH_RECORDS || size + len > api::MAX_BODY_BYTES;
        if idx > start && full {
            res.push(&batch[start..idx]);
            start = idx;
            size = WRAPPER_BYTES;
        }
        size += len;
    }
    if start < batch.len() {
        res.push(&batch[start..]);
    }
    res
}

/// The `EvidenceBatch` JSON of some records, from their stored canonical bytes.
fn batch_body(records: &[Outgoing]) -> Vec<u8> {
    let size: usize = records.iter().map(|it| it.envelope.len() + 1).sum();
    let mut body = Vec::with_capacity(size + WRAPPER_BYTES);
    body.extend_from_slice(b"{\"envelopes\":[");
    for (idx, outgoing) in records.iter().enumerate() {
        if idx > 0 {
            body.push(b',');
        }
        body.extend_from_slice(&outgoing.envelope);
    }
    body.extend_from_slice(b"]}");
    body
}

fn client_error(request: &[Outgoing], err: ClientError) -> SinkError {
    let name = request
        .first()
        .map_or_else(|| api::EVIDENCE_PATH.to_string(), Outgoing::object_name);
    match err {
        ClientError::TimedOut { timeout_ms, .. } => SinkError::TimedOut {
            operation: "POST",
            name,
            timeout_ms,
        },
        ClientError::Status {
            status,
            code,
            message,
            ..
        } => SinkError::Refused {
            operation: "POST",
            name,
            status,
            code: code
                .and_then(|it| serde_json::to_value(it).ok())
                .and_then(|it| it.as_str().map(str::to_string))
                .unwrap_or_else(|| "-".to_string()),
            message,
        },
        other => SinkError::Transport {
            operation: "POST",
            name,
            message: other.to_string(),
        },
    }
}

fn one_line(text: &str) -> String {
    text.chars()
        .map(|it| if it.is_control() { ' ' } else { it })
        .take(200)
        .collect()
}

#[cfg(test)]
mod tests {
    use jiff::Timestamp;
    use msp_compliance_protocol::api::RecordVerdict;

    use super::*;

    fn outgoing(seq: u64, len: usize) -> Outgoing {
        Outgoing {
            seq,
            digest_hex: format!("{seq:064x}"),
            site_id: "clinic-a".into(),
            host_id: "nixos-1".into(),
            retain_until: Timestamp::UNIX_EPOCH,
            envelope: vec![b'x'; len],
        }
    }

    fn verdict(seq: u64, status: RecordStatus) -> RecordVerdict {
        RecordVerdict {
            digest: format!("sha256:{seq:064x}"),
            status,
            reason: (status == RecordStatus::Rejected).then(|| "bad signature".to_string()),
        }
    }

    fn check(verdicts: Vec<RecordVerdict>, expect: usize, expect_error: Option<&str>) {
        let sent: Vec<Outgoing> = (10..14).map(|it| outgoing(it, 10)).collect();
        let response = EvidenceBatchResponse {
            results: verdicts,
            head: None,
        };
        let (delivered, error) = delivered_prefix(&sent, &response);
        assert_eq!(delivered, expect);
        match (error, expect_error) {
            (None, None) => {}
            (Some(error), Some(text)) => {
                let error = error.to_string();
                assert!(error.contains(text), "{error:?} lacks {text:?}");
            }
            (error, expect) => panic!("error {error:?}, expected {expect:?}"),
        }
    }

    #[test]
    fn verdicts_map_to_the_delivered_prefix() {
        use RecordStatus::{Accepted, Duplicate, Rejected};
        check((10..14).map(|it| verdict(it, Accepted)).collect(), 4, None);
        check(
            vec![
                verdict(10, Duplicate),
                verdict(11, Duplicate),
                verdict(12, Accepted),
                verdict(13, Accepted),
            ],
            4,
            None,
        );
        check(
            vec![
                verdict(10, Accepted),
                verdict(11, Rejected),
                verdict(12, Accepted),
                verdict(13, Accepted),
            ],
            1,
            Some("rejected by the server: bad signature"),
        );
        check(
            vec![verdict(10, Accepted), verdict(11, Accepted)],
            2,
            Some("the server answered 2 verdicts for 4 envelopes"),
        );
        check(
            vec![verdict(11, Accepted), verdict(10, Accepted)],
            0,
            Some("verdict 0 names digest"),
        );
        check(Vec::new(), 0, Some("answered 0 verdicts"));
        // Extra verdicts beyond the batch change nothing.
        check((10..16).map(|it| verdict(it, Accepted)).collect(), 4, None);
    }

    #[test]
    fn requests_respect_count_and_size_limits() {
        let small: Vec<Outgoing> = (0..2_500).map(|it| outgoing(it, 10)).collect();
        let cut = requests(&small);
        assert_eq!(
            cut.iter().map(|it| it.len()).collect::<Vec<_>>(),
            [1024, 1024, 452]
        );
        let big: Vec<Outgoing> = (0..5).map(|it| outgoing(it, 6 * 1024 * 1024)).collect();
        let cut = requests(&big);
        assert_eq!(cut.iter().map(|it| it.len()).collect::<Vec<_>>(), [2, 2, 1]);
        for request in &cut {
            assert!(batch_body(request).len() <= api::MAX_BODY_BYTES);
        }
        let huge = [outgoing(0, api::MAX_BODY_BYTES + 1)];
        assert_eq!(requests(&huge).len(), 1);
        assert!(requests(&[]).is_empty());
    }

    #[test]
    fn the_body_is_an_evidence_batch_of_the_stored_bytes() {
        let key = ed25519_dalek::SigningKey::from_bytes(&[5; 32]);
        let envelopes: Vec<_> = (0..3)
            .map(|it| {
                msp_compliance_protocol::dsse::sign("text/plain", format!("r{it}").as_bytes(), &key)
            })
            .collect();
        let records: Vec<Outgoing> = envelopes
            .iter()
            .enumerate()
            .map(|(idx, envelope)| Outgoing {
                envelope: msp_compliance_protocol::dsse::canonical_bytes(envelope),
                ..outgoing(idx as u64, 0)
            })
            .collect();
        let parsed: api::EvidenceBatch = serde_json::from_slice(&batch_body(&records)).unwrap();
        assert_eq!(parsed.envelopes, envelopes);
    }
}
