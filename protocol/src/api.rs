//! API v1 between agent and control plane. Every request is made by the agent (pull-only),
//! over HTTPS with a client certificate; the server knows the host by the SHA-256 fingerprint
//! of that certificate (recorded at enrollment), and a body naming another site or host is
//! refused with [`ErrorCode::IdentityMismatch`].
//!
//! | Method and path       | Body                     | Answer                  |
//! |-----------------------|--------------------------|-------------------------|
//! | `POST /v1/checkin`    | [`CheckIn`]              | [`CheckInResponse`]     |
//! | `POST /v1/evidence`   | [`EvidenceBatch`]        | [`EvidenceBatchResponse`] |
//! | `POST /v1/results`    | an [`Envelope`] of an [`crate::order::OrderResult`] | [`Ack`] |
//! | `POST /v1/checkpoint` | an [`Envelope`] of a checkpoint evidence record | [`CheckpointResponse`] |
//!
//! Errors come back with a 4xx/5xx status and an [`ApiError`] body. Bodies are JSON and bounded:
//! [`MAX_BODY_BYTES`] for evidence batches, [`MAX_SMALL_BODY_BYTES`] for everything else.

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::dsse::Envelope;

/// Path of the check-in endpoint.
pub const CHECKIN_PATH: &str = "/v1/checkin";
/// Path of the evidence upload endpoint.
pub const EVIDENCE_PATH: &str = "/v1/evidence";
/// Path of the order-result endpoint.
pub const RESULTS_PATH: &str = "/v1/results";
/// Path of the checkpoint endpoint.
pub const CHECKPOINT_PATH: &str = "/v1/checkpoint";

/// Largest evidence batch body the server accepts.
pub const MAX_BODY_BYTES: usize = 16 * 1024 * 1024;
/// Largest body of the other requests.
pub const MAX_SMALL_BODY_BYTES: usize = 256 * 1024;
/// Most envelopes in one evidence batch.
pub const MAX_BATCH_RECORDS: usize = 1024;

/// The head of a host's evidence chain.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChainHead {
    /// Seq of the last record.
    pub seq: u64,
    /// `sha256:<hex>` digest of its envelope.
    pub digest: String,
}

/// Counts of the last cycle's findings by status.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ComplianceSummary {
    /// Findings that passed.
    pub pass: u32,
    /// Warnings.
    pub warn: u32,
    /// Failures.
    pub fail: u32,
    /// Unknown (monitoring failures).
    pub unknown: u32,
    /// Not applicable.
    pub not_applicable: u32,
    /// Waived failures.
    pub exception: u32,
    /// When the cycle judged (absent before the first cycle).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checked_at: Option<Timestamp>,
}

/// Check-in: who the agent is and how the host stands.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckIn {
    /// Site id (must match the certificate's enrollment).
    pub site_id: String,
    /// Host id (must match the certificate's enrollment).
    pub host_id: String,
    /// Agent version.
    pub agent_version: String,
    /// The agent's evidence public key, standard base64 of the 32 raw bytes. Pinned at
    /// enrollment or on the first check-in over the certificate; never silently replaced.
    pub agent_key: String,
    /// Last cycle's summary.
    pub summary: ComplianceSummary,
    /// The agent's chain head (absent when it has no evidence yet).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chain_head: Option<ChainHead>,
    /// The agent's clock when it sent this.
    pub agent_time: Timestamp,
}

/// Answer to a check-in.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckInResponse {
    /// The server's clock (the agent compares it with its own to judge clock trust).
    pub server_time: Timestamp,
    /// Pending signed orders for this host, oldest first.
    pub orders: Vec<Envelope>,
    /// The last chain head the server stored for this host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub evidence_head: Option<ChainHead>,
}

/// A batch of evidence envelopes, in chain order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvidenceBatch {
    /// Envelopes, consecutive in the host's chain.
    pub envelopes: Vec<Envelope>,
}

/// What the server did with one envelope.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RecordStatus {
    /// Verified and stored now.
    Accepted,
    /// Already stored with the same digest (idempotent re-delivery).
    Duplicate,
    /// Refused; `reason` says why. Nothing after it in the batch is stored.
    Rejected,
}

/// The server's verdict on one envelope.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecordVerdict {
    /// Envelope digest, `sha256:<hex>`.
    pub digest: String,
    /// Accepted, duplicate or rejected.
    pub status: RecordStatus,
    /// Why it was rejected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// Answer to an evidence batch: one verdict per envelope, in order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvidenceBatchResponse {
    /// Verdicts, one per envelope of the request, same order.
    pub results: Vec<RecordVerdict>,
    /// The host's chain head at the server after this batch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub head: Option<ChainHead>,
}

/// Answer to a checkpoint upload.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckpointResponse {
    /// The checkpoint's signature and its pinned head agree with what the server stores.
    pub accepted: bool,
    /// The server's stored head for this host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub head: Option<ChainHead>,
}

/// A plain acknowledgement.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ack {
    /// True when stored (or already stored).
    pub ok: bool,
}

/// Stable error codes of the API.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The body is not the JSON this endpoint takes (or a field is invalid).
    BadRequest,
    /// The body is larger than the endpoint's limit.
    TooLarge,
    /// The client certificate is not enrolled.
    NotEnrolled,
    /// The body names another site or host than the certificate's.
    IdentityMismatch,
    /// The agent key differs from the one pinned for this host.
    KeyMismatch,
    /// A signature does not verify against the host's pinned key.
    BadSignature,
    /// Internal error (storage).
    Internal,
}

/// The body of every error answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiError {
    /// Stable code.
    pub code: ErrorCode,
    /// Human-readable message (never contains secrets).
    pub message: String,
}
