//! API v1 (`protocol::api`): the axum router and its handlers for check-in, evidence, order
//! results and checkpoints.
//!
//! Every request arrives with the [`Peer`] the connection's client certificate proved (the
//! server's accept loop inserts it); the host is the enrollment of that certificate's
//! fingerprint, never a name in the body. A body naming another site or host is refused with
//! `identity_mismatch`, an unknown certificate with `not_enrolled`, a second agent key with
//! `key_mismatch`. Bodies are read with a bound ([`MAX_BODY_BYTES`] for evidence,
//! [`MAX_SMALL_BODY_BYTES`] otherwise) and parsed here, so every error, including malformed
//! JSON and oversized bodies, answers with an [`ApiError`] body.
//!
//! Handlers parse, verify (signatures off the async threads) and hand one job per request to
//! the database writer (`pool`); they never hold a connection across an `await`. An evidence
//! batch holding a verified record that names another host is refused whole
//! (`identity_mismatch`); otherwise each envelope gets its verdict from `ingest::plan`.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Extension;
use axum::Router;
use axum::body::{Body, Bytes, HttpBody};
use axum::extract::State;
use axum::http::{HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use jiff::Timestamp;
use msp_compliance_protocol::api::{
    Ack, ApiError, CHECKIN_PATH, CHECKPOINT_PATH, ChainHead, CheckIn, CheckInResponse,
    CheckpointResponse, EVIDENCE_PATH, ErrorCode, EvidenceBatch, EvidenceBatchResponse,
    MAX_BATCH_RECORDS, MAX_BODY_BYTES, MAX_SMALL_BODY_BYTES, RESULTS_PATH, RecordStatus,
};
use msp_compliance_protocol::dsse::{self, Envelope};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::db::evidence::{self as stored_evidence, StoredRecord};
use crate::db::hosts::{self, Host};
use crate::db::orders::{self, ResultRecord};
use crate::db::{self, DbError};
use crate::ingest::{self, Owner, Refusal};
use crate::keys;
use crate::pool::{Database, PoolError};

/// Who is at the other end of a connection, as its client certificate proved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Peer {
    /// Lowercase hex SHA-256 of the client certificate's DER.
    pub fingerprint: Arc<str>,
    /// The TCP peer, for logs.
    pub address: SocketAddr,
}

/// Evidence batches read and verified at once. A batch may hold 16 MiB and is copied a few
/// times while it is verified, so this bounds the memory uploads can take (about 0.5 GiB)
/// whatever the number of connections; further uploads wait (within the request timeout).
pub const CONCURRENT_EVIDENCE_UPLOADS: usize = 8;

/// What the handlers share.
pub struct AppState {
    /// The database.
    pub database: Database,
    /// Permits for evidence uploads ([`CONCURRENT_EVIDENCE_UPLOADS`]); a handler holds one from
    /// before it reads the body until it answers.
    evidence_uploads: tokio::sync::Semaphore,
}

impl AppState {
    /// Handler state over a started database.
    pub fn new(database: Database) -> AppState {
        AppState {
            database,
            evidence_uploads: tokio::sync::Semaphore::new(CONCURRENT_EVIDENCE_UPLOADS),
        }
    }
}

/// An error answer: status, stable code, message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    status: StatusCode,
    code: ErrorCode,
    message: String,
}

impl Failure {
    /// Any failure.
    pub fn new(status: StatusCode, code: ErrorCode, message: impl Into<String>) -> Failure {
        Failure {
            status,
            code,
            message: message.into(),
        }
    }

    /// 400 `bad_request`.
    pub fn bad_request(message: impl Into<String>) -> Failure {
        Failure::new(StatusCode::BAD_REQUEST, ErrorCode::BadRequest, message)
    }

    /// 413 `too_large`.
    pub fn too_large(message: impl Into<String>) -> Failure {
        Failure::new(StatusCode::PAYLOAD_TOO_LARGE, ErrorCode::TooLarge, message)
    }

    /// 500 `internal`; the detail goes to the log, not to the client.
    pub fn internal(detail: &dyn std::fmt::Display) -> Failure {
        tracing::error!(error = %detail, "internal error");
        Failure::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            ErrorCode::Internal,
            "internal storage error",
        )
    }

    /// The answer's status.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    fn not_enrolled() -> Failure {
        Failure::new(
            StatusCode::FORBIDDEN,
            ErrorCode::NotEnrolled,
            "client certificate is not enrolled",
        )
    }

    fn identity_mismatch(message: impl Into<String>) -> Failure {
        Failure::new(StatusCode::FORBIDDEN, ErrorCode::IdentityMismatch, message)
    }

    fn key_mismatch(message: impl Into<String>) -> Failure {
        Failure::new(StatusCode::CONFLICT, ErrorCode::KeyMismatch, message)
    }

    fn from_refusal(refusal: Refusal) -> Failure {
        match refusal {
            Refusal::BadRequest(message) => Failure::bad_request(message),
            Refusal::BadSignature(message) => {
                Failure::new(StatusCode::BAD_REQUEST, ErrorCode::BadSignature, message)
            }
            Refusal::IdentityMismatch(message) => Failure::identity_mismatch(message),
        }
    }
}

impl From<PoolError> for Failure {
    fn from(err: PoolError) -> Failure {
        Failure::internal(&err)
    }
}

impl From<DbError> for Failure {
    fn from(err: DbError) -> Failure {
        Failure::internal(&err)
    }
}

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        if self.status.is_client_error() {
            tracing::debug!(status = %self.status, message = %self.message, "refused");
        }
        let body = ApiError {
            code: self.code,
            message: self.message,
        };
        json_response(self.status, &body)
    }
}

/// The API router.
pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route(CHECKIN_PATH, post(checkin).fallback(method_not_allowed))
        .route(EVIDENCE_PATH, post(evidence).fallback(method_not_allowed))
        .route(RESULTS_PATH, post(results).fallback(method_not_allowed))
        .route(
            CHECKPOINT_PATH,
            post(checkpoint).fallback(method_not_allowed),
        )
        .fallback(not_found)
        .with_state(state)
}

/// The answer to a request that did not complete within the request timeout.
pub fn timeout_response(limit: std::time::Duration) -> Response {
    Failure::new(
        StatusCode::REQUEST_TIMEOUT,
        ErrorCode::BadRequest,
        format!("request not completed within {} s", limit.as_secs_f64()),
    )
    .into_response()
}

async fn checkin(
    State(state): State<Arc<AppState>>,
    Extension(peer): Extension<Peer>,
    body: Body,
) -> Result<Response, Failure> {
    let request: CheckIn = parse(&read_body(body, MAX_SMALL_BODY_BYTES).await?)?;
    let key = keys::parse_public_key(&request.agent_key, "agent_key")
        .map_err(|err| Failure::bad_request(err.to_string()))?;
    let key_text = keys::encode_public_key(&key);
    let summary = serde_json::to_string(&request.summary).map_err(|err| Failure::internal(&err))?;
    let now = Timestamp::now();
    let now_ms = now.as_millisecond();
    let fingerprint = Arc::clone(&peer.fingerprint);
    let answer = state
        .database
        .write(move |conn| -> Result<CheckinAnswer, Failure> {
            let host = identify(conn, &fingerprint)?;
            check_names(&host, &request.site_id, &request.host_id)?;
            let mut pinned_now = false;
            match host.agent_key.as_deref() {
                Some(pinned) if pinned != key_text => {
                    tracing::warn!(
                        site = %host.site_id, host = %host.host_id,
                        "check-in with an agent key other than the pinned one; refused"
                    );
                    return Err(Failure::key_mismatch(format!(
                        "agent key {key_text} is not the key pinned for {}/{}; a pinned key is never replaced by a check-in",
                        host.site_id, host.host_id
                    )));
                }
                Some(_) => {}
                None => {
                    hosts::pin_agent_key(conn, host.id, &key_text, now_ms)?;
                    db::audit(
                        conn,
                        now_ms,
                        "pin-agent-key",
                        Some(&host.site_id),
                        Some(&host.host_id),
                        &format!("agent key {key_text} pinned at first check-in"),
                    )?;
                    pinned_now = true;
                }
            }
            hosts::record_checkin(
                conn,
                host.id,
                &hosts::CheckinRecord {
                    agent_version: &request.agent_version,
                    agent_time_ms: request.agent_time.as_millisecond(),
                    summary: &summary,
                    reported_head: request.chain_head.as_ref(),
                },
                now_ms,
            )?;
            let orders = orders::deliver_pending(conn, host.id, now_ms)?;
            Ok(CheckinAnswer {
                orders,
                head: host.head.clone(),
                pinned_now: pinned_now.then_some(host),
            })
        })
        .await?;
    if let Some(host) = answer.pinned_now {
        tracing::info!(site = %host.site_id, host = %host.host_id, "agent key pinned at first check-in");
    }
    let orders = answer
        .orders
        .iter()
        .map(|bytes| serde_json::from_slice::<Envelope>(bytes))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|err| Failure::internal(&format!("stored order envelope: {err}")))?;
    Ok(json_response(
        StatusCode::OK,
        &CheckInResponse {
            server_time: now,
            orders,
            evidence_head: answer.head,
        },
    ))
}

async fn evidence(
    State(state): State<Arc<AppState>>,
    Extension(peer): Extension<Peer>,
    body: Body,
) -> Result<Response, Failure> {
    // The semaphore is never closed, so acquiring only waits.
    let _permit = state
        .evidence_uploads
        .acquire()
        .await
        .map_err(|err| Failure::internal(&err))?;
    let batch: EvidenceBatch = parse(&read_body(body, MAX_BODY_BYTES).await?)?;
    if batch.envelopes.len() > MAX_BATCH_RECORDS {
        return Err(Failure::too_large(format!(
            "batch has {} envelopes, at most {MAX_BATCH_RECORDS} are accepted",
            batch.envelopes.len()
        )));
    }
    let host = lookup(&state, &peer).await?;
    let key = pinned_key(&host)?;
    let envelopes = batch.envelopes;
    // Ed25519 and hashing of up to a thousand records: CPU work that must not stall the
    // async threads serving check-ins.
    let candidates = tokio::task::spawn_blocking(move || ingest::examine(&envelopes, &key))
        .await
        .map_err(|err| Failure::internal(&err))?;
    // A verified record that names another host is an attempt to write as that host: the
    // whole batch is refused, as a check-in naming another host is.
    let owner = Owner {
        site_id: &host.site_id,
        host_id: &host.host_id,
    };
    if let Some(reason) = candidates
        .iter()
        .filter_map(|it| it.facts.as_ref().ok())
        .find_map(|facts| {
            ingest::check_owner(owner, facts.site_id.as_deref(), &facts.host_id).err()
        })
    {
        tracing::warn!(site = %host.site_id, host = %host.host_id, %reason, "evidence for another host refused");
        return Err(Failure::identity_mismatch(reason));
    }
    let now_ms = Timestamp::now().as_millisecond();
    let response = state
        .database
        .write(move |conn| -> Result<EvidenceBatchResponse, Failure> {
            // The pin cannot change under a check-in, but an operator's
            // `--danger-replace-agent-key` can; the records were verified with the old one.
            if hosts::agent_key(conn, host.id)? != host.agent_key {
                return Err(Failure::key_mismatch(
                    "the pinned agent key changed during the upload; retry",
                ));
            }
            let head = hosts::head(conn, host.id)?;
            let owner = Owner {
                site_id: &host.site_id,
                host_id: &host.host_id,
            };
            let plan = ingest::plan(owner, head, &candidates, |seq| {
                stored_evidence::digest_at(conn, host.id, seq)
            })?;
            for accepted in &plan.accepted {
                // `plan` indexes the slice it was given, so the index is in bounds.
                let candidate = &candidates[accepted.index];
                let record = StoredRecord {
                    seq: accepted.seq,
                    digest: candidate.digest.clone(),
                    envelope: candidate.canonical.clone(),
                };
                stored_evidence::insert(conn, host.id, &record, now_ms)?;
            }
            if let (false, Some(head)) = (plan.accepted.is_empty(), &plan.head) {
                hosts::set_head(conn, host.id, head)?;
            }
            if let Some(rejected) = plan
                .verdicts
                .iter()
                .find(|it| it.status == RecordStatus::Rejected)
            {
                tracing::warn!(
                    site = %host.site_id, host = %host.host_id,
                    reason = rejected.reason.as_deref().unwrap_or(""),
                    "evidence record rejected"
                );
            }
            Ok(EvidenceBatchResponse {
                results: plan.verdicts,
                head: plan.head,
            })
        })
        .await?;
    Ok(json_response(StatusCode::OK, &response))
}

async fn results(
    State(state): State<Arc<AppState>>,
    Extension(peer): Extension<Peer>,
    body: Body,
) -> Result<Response, Failure> {
    let envelope: Envelope = parse(&read_body(body, MAX_SMALL_BODY_BYTES).await?)?;
    let host = lookup(&state, &peer).await?;
    let key = pinned_key(&host)?;
    let owner = Owner {
        site_id: &host.site_id,
        host_id: &host.host_id,
    };
    let result = ingest::open_result(&envelope, &key, owner).map_err(Failure::from_refusal)?;
    let canonical = dsse::canonical_bytes(&envelope);
    let now_ms = Timestamp::now().as_millisecond();
    state
        .database
        .write(move |conn| -> Result<(), Failure> {
            let Some(digest) = orders::digest_for_host(conn, &result.order_id, host.id)? else {
                return Err(Failure::new(
                    StatusCode::NOT_FOUND,
                    ErrorCode::BadRequest,
                    format!(
                        "no order {:?} for {}/{}",
                        result.order_id, host.site_id, host.host_id
                    ),
                ));
            };
            if digest != result.order_digest {
                return Err(Failure::bad_request(format!(
                    "order_digest {} is not the digest of order {} ({digest})",
                    result.order_digest, result.order_id
                )));
            }
            let outcome = wire_name(&result.outcome)?;
            let code = result.code.map(|it| it.as_str());
            orders::record_result(
                conn,
                &result.order_id,
                &ResultRecord {
                    outcome: &outcome,
                    code,
                    detail: &result.detail,
                    envelope: &canonical,
                },
                now_ms,
            )?;
            tracing::info!(
                site = %host.site_id, host = %host.host_id, order = %result.order_id,
                outcome = %outcome, code = code.unwrap_or(""), "order result"
            );
            Ok(())
        })
        .await?;
    Ok(json_response(StatusCode::OK, &Ack { ok: true }))
}

async fn checkpoint(
    State(state): State<Arc<AppState>>,
    Extension(peer): Extension<Peer>,
    body: Body,
) -> Result<Response, Failure> {
    let envelope: Envelope = parse(&read_body(body, MAX_SMALL_BODY_BYTES).await?)?;
    let host = lookup(&state, &peer).await?;
    let key = pinned_key(&host)?;
    let owner = Owner {
        site_id: &host.site_id,
        host_id: &host.host_id,
    };
    let pinned = ingest::open_checkpoint(&envelope, &key, owner).map_err(Failure::from_refusal)?;
    let canonical = dsse::canonical_bytes(&envelope);
    let now_ms = Timestamp::now().as_millisecond();
    let response = state
        .database
        .write(move |conn| -> Result<CheckpointResponse, Failure> {
            let stored = stored_evidence::digest_at(conn, host.id, pinned.seq)?;
            let accepted = stored.as_deref() == Some(pinned.digest.as_str());
            if accepted {
                hosts::record_checkpoint(conn, host.id, &pinned, &canonical, now_ms)?;
            } else {
                tracing::warn!(
                    site = %host.site_id, host = %host.host_id, seq = pinned.seq,
                    "checkpoint pins a record the server does not store"
                );
            }
            Ok(CheckpointResponse {
                accepted,
                head: hosts::head(conn, host.id)?,
            })
        })
        .await?;
    Ok(json_response(StatusCode::OK, &response))
}

async fn not_found(method: Method, uri: Uri) -> Failure {
    Failure::new(
        StatusCode::NOT_FOUND,
        ErrorCode::BadRequest,
        format!("no endpoint {method} {}", uri.path()),
    )
}

async fn method_not_allowed(method: Method, uri: Uri) -> Failure {
    Failure::new(
        StatusCode::METHOD_NOT_ALLOWED,
        ErrorCode::BadRequest,
        format!("{} takes POST, not {method}", uri.path()),
    )
}

struct CheckinAnswer {
    orders: Vec<Vec<u8>>,
    head: Option<ChainHead>,
    /// The host, when its key was pinned by this check-in (for the log).
    pinned_now: Option<Host>,
}

/// The enrolled host of a certificate, from a reader connection.
async fn lookup(state: &AppState, peer: &Peer) -> Result<Host, Failure> {
    let fingerprint = Arc::clone(&peer.fingerprint);
    state
        .database
        .read(move |conn| identify(conn, &fingerprint))
        .await
}

fn identify(conn: &rusqlite::Connection, fingerprint: &str) -> Result<Host, Failure> {
    hosts::by_fingerprint(conn, fingerprint)?.ok_or_else(Failure::not_enrolled)
}

fn check_names(host: &Host, site_id: &str, host_id: &str) -> Result<(), Failure> {
    if host.site_id == site_id && host.host_id == host_id {
        return Ok(());
    }
    Err(Failure::identity_mismatch(format!(
        "the certificate is enrolled as {}/{}, the request names {site_id}/{host_id}",
        host.site_id, host.host_id
    )))
}

fn pinned_key(host: &Host) -> Result<ed25519_dalek::VerifyingKey, Failure> {
    let Some(text) = host.agent_key.as_deref() else {
        return Err(Failure::key_mismatch(format!(
            "no agent key is pinned for {}/{}; check in first",
            host.site_id, host.host_id
        )));
    };
    keys::parse_public_key(text, "pinned agent key").map_err(|err| Failure::internal(&err))
}

fn wire_name<T: Serialize>(value: &T) -> Result<String, Failure> {
    match serde_json::to_value(value) {
        Ok(serde_json::Value::String(name)) => Ok(name),
        _ => Err(Failure::internal(&"enum without a wire name")),
    }
}

/// Reads a body of at most `limit` bytes; a larger one is refused with 413, from its
/// `Content-Length` before reading when it has one.
async fn read_body(body: Body, limit: usize) -> Result<Bytes, Failure> {
    let too_large = || Failure::too_large(format!("body is larger than {limit} bytes"));
    let declared = HttpBody::size_hint(&body).lower();
    if declared > limit as u64 {
        return Err(too_large());
    }
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(err) if err.downcast_ref::<LengthLimitError>().is_some() => Err(too_large()),
        Err(err) => Err(Failure::bad_request(format!("cannot read the body: {err}"))),
    }
}

fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, Failure> {
    serde_json::from_slice(bytes)
        .map_err(|err| Failure::bad_request(format!("invalid JSON body: {err}")))
}

fn json_response<T: Serialize>(status: StatusCode, value: &T) -> Response {
    match serde_json::to_vec(value) {
        Ok(bytes) => {
            let mut response = (status, bytes).into_response();
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            response
        }
        Err(err) => {
            tracing::error!(error = %err, "cannot serialize a response");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use std::pin::Pin;
    use std::task::{Context, Poll};

    use axum::body::HttpBody;
    use hyper::body::Frame;

    use super::*;

    /// A body of `remaining` chunks of 1 KiB with no size hint, as a chunked upload arrives.
    struct Chunked {
        remaining: usize,
    }

    impl HttpBody for Chunked {
        type Data = Bytes;
        type Error = std::convert::Infallible;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
            if self.remaining == 0 {
                return Poll::Ready(None);
            }
            self.remaining -= 1;
            Poll::Ready(Some(Ok(Frame::data(Bytes::from(vec![b' '; 1024])))))
        }
    }

    #[tokio::test]
    async fn bodies_without_a_length_are_cut_at_the_limit() {
        let small = read_body(Body::new(Chunked { remaining: 4 }), 4096)
            .await
            .unwrap();
        assert_eq!(small.len(), 4096);
        let refused = read_body(Body::new(Chunked { remaining: 5 }), 4096)
            .await
            .unwrap_err();
        assert_eq!(refused.status(), StatusCode::PAYLOAD_TOO_LARGE);
        let declared = read_body(Body::from(vec![0_u8; 5000]), 4096)
            .await
            .unwrap_err();
        assert_eq!(declared.status(), StatusCode::PAYLOAD_TOO_LARGE);
    }
}
