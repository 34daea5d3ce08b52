//! Signed orders from the control plane, and the agent's signed results.
//!
//! An order is a DSSE envelope ([`crate::dsse`]) of type [`ORDER_PAYLOAD_TYPE`] over the
//! canonical JSON ([`crate::jcs`]) of an [`Order`]. The agent verifies the exact payload bytes
//! against the order keys pinned in its config *before* parsing them, then runs its guardrails
//! (DESIGN §5). The result goes back as an envelope of type [`RESULT_PAYLOAD_TYPE`] over an
//! [`OrderResult`], signed with the agent's evidence key.
//!
//! Field rules both ends enforce (the agent refuses an order that breaks them with
//! [`RefusalCode::Malformed`]):
//! - `order_id`: 1–64 of `[A-Za-z0-9._-]`; `nonce`: 32 to 64 lowercase hex digits;
//! - `action`: a runbook id, 1–64 of `[A-Za-z0-9._-]`;
//! - `params`: a JSON object (the runbook's schema decides the rest);
//! - `issued_at < expires_at`.

use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::dsse::{self, Envelope};

/// Payload type of an order envelope.
pub const ORDER_PAYLOAD_TYPE: &str = "application/vnd.msp-compliance.order+json";

/// Payload type of an order-result envelope.
pub const RESULT_PAYLOAD_TYPE: &str = "application/vnd.msp-compliance.order-result+json";

/// Version of the order payload; the agent refuses any other.
pub const ORDER_VERSION: u32 = 1;

/// An order, as signed by the control plane.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Order {
    /// Payload version, [`ORDER_VERSION`].
    pub v: u32,
    /// Unique id chosen by the server; with `nonce`, remembered by the agent until expiry.
    pub order_id: String,
    /// Random, 128 bits or more, lowercase hex.
    pub nonce: String,
    /// Target site.
    pub site_id: String,
    /// Target host.
    pub host_id: String,
    /// Runbook id; must be in the agent's whitelist.
    pub action: String,
    /// Parameters, checked against the runbook's schema.
    pub params: Value,
    /// When the order was signed.
    pub issued_at: Timestamp,
    /// After this instant the order is refused.
    pub expires_at: Timestamp,
    /// The operator's view: the action changes service. The agent treats an action as
    /// disruptive when either this flag or its own runbook registry says so.
    #[serde(default)]
    pub disruptive: bool,
    /// Run the whole pipeline but change nothing; evidence says what would have been done.
    #[serde(default)]
    pub dry_run: bool,
}

impl Order {
    /// Canonical payload bytes and the envelope signed with `key`.
    pub fn sign(&self, key: &ed25519_dalek::SigningKey) -> Result<Envelope, crate::jcs::JcsError> {
        let payload = crate::jcs::to_vec_of(self)?;
        Ok(dsse::sign(ORDER_PAYLOAD_TYPE, &payload, key))
    }

    /// Checks the field rules of the module docs; the message names the field.
    pub fn validate_fields(&self) -> Result<(), String> {
        if self.v != ORDER_VERSION {
            return Err(format!("v: version {} is not {ORDER_VERSION}", self.v));
        }
        if !is_token(&self.order_id) {
            return Err("order_id: expected 1-64 of [A-Za-z0-9._-]".into());
        }
        let nonce_ok = (32..=64).contains(&self.nonce.len())
            && self
                .nonce
                .bytes()
                .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        if !nonce_ok {
            return Err("nonce: expected 32-64 lowercase hex digits".into());
        }
        if !is_token(&self.action) {
            return Err("action: expected 1-64 of [A-Za-z0-9._-]".into());
        }
        if !is_token(&self.site_id) || !is_token(&self.host_id) {
            return Err("site_id/host_id: expected 1-64 of [A-Za-z0-9._-]".into());
        }
        if !self.params.is_object() {
            return Err("params: expected a JSON object".into());
        }
        if self.issued_at >= self.expires_at {
            return Err("expires_at: must be after issued_at".into());
        }
        Ok(())
    }
}

/// 1 to 64 characters of `[A-Za-z0-9._-]`, not starting with `.` or `-`: safe in file names,
/// unit instance names and URLs without escaping.
pub fn is_token(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= 64
        && !text.starts_with(['.', '-'])
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Why the agent refused an order. The code is stable (evidence, the server and operators
/// match on it); the wire form is the snake_case name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RefusalCode {
    /// The envelope is not valid DSSE, or not an order payload type.
    Malformed,
    /// No signature by a pinned order key.
    UnknownKey,
    /// A pinned key's signature does not verify (forged, or payload altered after signing).
    BadSignature,
    /// The order names another site.
    WrongSite,
    /// The order names another host.
    WrongHost,
    /// `expires_at` has passed.
    Expired,
    /// `issued_at` is later than now plus the allowed clock skew.
    FutureDated,
    /// `expires_at - issued_at` exceeds the allowed TTL.
    TtlTooLong,
    /// The order id or nonce was seen before.
    Replayed,
    /// The action is not in the whitelist.
    ActionNotAllowed,
    /// The params fail the runbook's schema.
    BadParams,
    /// A disruptive action outside the maintenance window (deferred, not executed).
    OutsideWindow,
    /// The action ran too recently.
    Cooldown,
    /// The hourly budget of heals is spent.
    BudgetExceeded,
    /// The clock is not trustworthy (time sync lost or skew too large) for a disruptive action.
    ClockUntrusted,
}

impl RefusalCode {
    /// The wire name, e.g. `wrong_host`.
    pub fn as_str(self) -> &'static str {
        match self {
            RefusalCode::Malformed => "malformed",
            RefusalCode::UnknownKey => "unknown_key",
            RefusalCode::BadSignature => "bad_signature",
            RefusalCode::WrongSite => "wrong_site",
            RefusalCode::WrongHost => "wrong_host",
            RefusalCode::Expired => "expired",
            RefusalCode::FutureDated => "future_dated",
            RefusalCode::TtlTooLong => "ttl_too_long",
            RefusalCode::Replayed => "replayed",
            RefusalCode::ActionNotAllowed => "action_not_allowed",
            RefusalCode::BadParams => "bad_params",
            RefusalCode::OutsideWindow => "outside_window",
            RefusalCode::Cooldown => "cooldown",
            RefusalCode::BudgetExceeded => "budget_exceeded",
            RefusalCode::ClockUntrusted => "clock_untrusted",
        }
    }
}

/// What became of an order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// The action ran and succeeded.
    Executed,
    /// Dry run: nothing changed; `detail` says what would have been done.
    DryRun,
    /// The action ran and failed.
    Failed,
    /// A guardrail refused the order (`code` says which).
    Refused,
    /// A disruptive action waits for the maintenance window (`code` = `outside_window`).
    Deferred,
}

/// The agent's report on one order, signed with its evidence key.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OrderResult {
    /// The order's id (as far as it could be read; `-` for an unreadable envelope).
    pub order_id: String,
    /// Digest of the order envelope as received (`sha256:<hex>` of its canonical form).
    pub order_digest: String,
    /// Reporting site.
    pub site_id: String,
    /// Reporting host.
    pub host_id: String,
    /// What happened.
    pub outcome: Outcome,
    /// Refusal code, for `refused` and `deferred`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<RefusalCode>,
    /// Human-readable detail (PHI-scrubbed).
    pub detail: String,
    /// Action output, if any (PHI-scrubbed).
    #[serde(default)]
    pub output: Value,
    /// Seq of the evidence record that proves this outcome.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub evidence_seq: Option<u64>,
    /// When the agent finished with the order.
    pub finished_at: Timestamp,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn order() -> Order {
        Order {
            v: 1,
            order_id: "o-1".into(),
            nonce: "00112233445566778899aabbccddeeff".into(),
            site_id: "clinic-a".into(),
            host_id: "nixos-1".into(),
            action: "run-checks".into(),
            params: serde_json::json!({}),
            issued_at: "2026-11-27T12:00:00Z".parse().unwrap(),
            expires_at: "2026-11-27T12:10:00Z".parse().unwrap(),
            disruptive: false,
            dry_run: false,
        }
    }

    #[test]
    fn signed_order_verifies_and_round_trips() {
        let key = ed25519_dalek::SigningKey::from_bytes(&[7; 32]);
        let envelope = order().sign(&key).unwrap();
        let verified = dsse::verify_typed(&envelope, ORDER_PAYLOAD_TYPE, &[key.verifying_key()])
            .expect("verifies");
        let back: Order = serde_json::from_slice(verified.payload()).unwrap();
        assert_eq!(back, order());
        assert!(back.validate_fields().is_ok());
    }

    #[test]
    fn field_rules_name_the_field() {
        let mut bad = order();
        bad.nonce = "short".into();
        assert!(bad.validate_fields().unwrap_err().starts_with("nonce"));
        let mut bad = order();
        bad.action = "../etc".into();
        assert!(bad.validate_fields().unwrap_err().starts_with("action"));
        let mut bad = order();
        bad.params = serde_json::json!([1]);
        assert!(bad.validate_fields().unwrap_err().starts_with("params"));
        let mut bad = order();
        bad.expires_at = bad.issued_at;
        assert!(bad.validate_fields().unwrap_err().starts_with("expires_at"));
    }

    #[test]
    fn tokens() {
        for ok in ["a", "run-checks", "RB-1.2_x", &"x".repeat(64)] {
            assert!(is_token(ok), "{ok}");
        }
        for bad in ["", "-x", ".x", "a/b", "a b", "ä", &"x".repeat(65)] {
            assert!(!is_token(bad), "{bad}");
        }
    }

    #[test]
    fn refusal_codes_serialize_as_their_names() {
        for code in [
            RefusalCode::WrongHost,
            RefusalCode::TtlTooLong,
            RefusalCode::ClockUntrusted,
        ] {
            assert_eq!(serde_json::to_value(code).unwrap(), code.as_str());
        }
    }
}
