//! `order create`: builds a `protocol::order::Order` for an enrolled host, signs it with the
//! order-signing key of the state directory and stores it pending, to be handed out on the
//! host's next check-ins until a result arrives or it expires.
//!
//! The order id (`o-<16 hex>`) and the nonce (128 bits) come from the operating system's
//! randomness. The TTL is bounded here by [`MAX_TTL`]; the agent applies its own, usually
//! shorter, maximum and refuses longer orders with `ttl_too_long`.

use std::path::Path;

use jiff::{SignedDuration, Timestamp};
use msp_compliance_protocol::dsse;
use msp_compliance_protocol::order::{ORDER_VERSION, Order};
use serde_json::Value;

use crate::db::hosts;
use crate::db::orders::{self, NewOrder};
use crate::db::{self, DbError};
use crate::ingest::digest_of_canonical;
use crate::keys::{self, KeyError};
use crate::state::StateDir;

/// TTL when none is given: the agent's default maximum.
pub const DEFAULT_TTL: SignedDuration = SignedDuration::from_mins(10);
/// Longest TTL `order create` signs.
pub const MAX_TTL: SignedDuration = SignedDuration::from_hours(24);

/// An order that could not be created.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OrderError {
    /// The database failed, or the host is not enrolled.
    #[error(transparent)]
    Database(#[from] DbError),
    /// A field breaks the order rules (the message names it).
    #[error("{0}")]
    Invalid(String),
    /// The order key could not be loaded.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// The operating system gave no randomness.
    #[error("cannot read randomness from the operating system: {0}")]
    Random(String),
    /// The order has no canonical JSON form.
    #[error("order has no canonical JSON form: {0}")]
    Sign(String),
}

/// What the operator asked for.
#[derive(Clone, Debug, PartialEq)]
pub struct OrderRequest {
    /// Target site.
    pub site_id: String,
    /// Target host.
    pub host_id: String,
    /// Runbook id.
    pub action: String,
    /// Parameters (a JSON object).
    pub params: Value,
    /// Time to live.
    pub ttl: SignedDuration,
    /// Dry run.
    pub dry_run: bool,
    /// Disruptive.
    pub disruptive: bool,
}

/// Signs and stores an order; returns it.
pub fn create(
    state: &StateDir,
    request: &OrderRequest,
    now: Timestamp,
) -> Result<Order, OrderError> {
    create_signed_with(state, &state.order_key(), request, now)
}

/// [`create`], signing with the key in `order_key` instead of the state directory's (a key
/// kept elsewhere, e.g. a systemd credential).
pub fn create_signed_with(
    state: &StateDir,
    order_key: &Path,
    request: &OrderRequest,
    now: Timestamp,
) -> Result<Order, OrderError> {
    if !request.params.is_object() {
        return Err(OrderError::Invalid("params: expected a JSON object".into()));
    }
    if request.ttl <= SignedDuration::ZERO || request.ttl > MAX_TTL {
        return Err(OrderError::Invalid(format!(
            "ttl: {:#} is not between 1s and {MAX_TTL:#}",
            request.ttl
        )));
    }
    let expires_at = now
        .checked_add(request.ttl)
        .map_err(|err| OrderError::Invalid(format!("ttl: {err}")))?;
    let order = Order {
        v: ORDER_VERSION,
        order_id: format!("o-{}", random_hex(8)?),
        nonce: random_hex(16)?,
        site_id: request.site_id.clone(),
        host_id: request.host_id.clone(),
        action: request.action.clone(),
        params: request.params.clone(),
        issued_at: now,
        expires_at,
        disruptive: request.disruptive,
        dry_run: request.dry_run,
    };
    order.validate_fields().map_err(OrderError::Invalid)?;
    let mut conn = db::open(&state.database())?;
    // The host is checked before the key is read, so a typo costs no key access.
    hosts::require(&conn, &request.site_id, &request.host_id)?;
    let key = keys::load_signing_key(order_key)?;
    let envelope = order
        .sign(&key)
        .map_err(|err| OrderError::Sign(err.to_string()))?;
    let canonical = dsse::canonical_bytes(&envelope);
    let digest = digest_of_canonical(&canonical);
    let tx = conn
        .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
        .map_err(DbError::from)?;
    let host = hosts::require(&tx, &request.site_id, &request.host_id)?;
    orders::insert(
        &tx,
        &NewOrder {
            order_id: &order.order_id,
            host: host.id,
            action: &order.action,
            envelope: &canonical,
            digest: &digest,
            dry_run: order.dry_run,
            disruptive: order.disruptive,
            created_at_ms: now.as_millisecond(),
            expires_at_ms: expires_at.as_millisecond(),
        },
    )?;
    db::audit(
        &tx,
        now.as_millisecond(),
        "order-create",
        Some(&order.site_id),
        Some(&order.host_id),
        &format!("{} {} {digest}", order.order_id, order.action),
    )?;
    tx.commit().map_err(DbError::from)?;
    Ok(order)
}

/// Parses a TTL: a friendly duration (`10m`, `1h30m`, `90s`) or ISO 8601 (`PT10M`).
pub fn parse_ttl(text: &str) -> Result<SignedDuration, String> {
    text.parse::<SignedDuration>()
        .map_err(|err| format!("{text:?} is not a duration like 10m, 1h or 90s: {err}"))
}

fn random_hex(n_bytes: usize) -> Result<String, OrderError> {
    let mut bytes = vec![0_u8; n_bytes];
    getrandom::fill(&mut bytes).map_err(|err| OrderError::Random(err.to_string()))?;
    Ok(hex::encode(bytes))
}

#[cfg(test)]
mod tests {
    use msp_compliance_protocol::order::ORDER_PAYLOAD_TYPE;
    use serde_json::json;

    use super::*;
    use crate::enroll::{self, EnrollRequest};
    use crate::state;

    fn setup() -> (tempfile::TempDir, StateDir) {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::new(&dir.path().join("state"));
        state::init(&state, &["localhost".into()], Timestamp::now()).unwrap();
        enroll::enroll_in_memory(
            &state,
            &[EnrollRequest {
                site_id: "clinic-a".into(),
                host_id: "nixos-1".into(),
                agent_key: None,
                policy: hosts::Reenroll::Refuse,
            }],
            Timestamp::now(),
        )
        .unwrap();
        (dir, state)
    }

    fn request() -> OrderRequest {
        OrderRequest {
            site_id: "clinic-a".into(),
            host_id: "nixos-1".into(),
            action: "run-checks".into(),
            params: json!({}),
            ttl: DEFAULT_TTL,
            dry_run: true,
            disruptive: false,
        }
    }

    #[test]
    fn orders_are_signed_with_the_order_key_and_stored_pending() {
        let (_dir, state) = setup();
        let now = Timestamp::now();
        let order = create(&state, &request(), now).unwrap();
        assert!(order.order_id.starts_with("o-") && order.order_id.len() == 18);
        assert_eq!(order.nonce.len(), 32);
        assert_eq!(order.expires_at, now.checked_add(DEFAULT_TTL).unwrap());
        let conn = db::open(&state.database()).unwrap();
        let host = hosts::require(&conn, "clinic-a", "nixos-1").unwrap();
        let pending = orders::deliver_pending(&conn, host.id, now.as_millisecond()).unwrap();
        assert_eq!(pending.len(), 1);
        let envelope: dsse::Envelope = serde_json::from_slice(&pending[0]).unwrap();
        let public = keys::load_public_key(&keys::public_key_path(&state.order_key())).unwrap();
        let verified = dsse::verify_typed(&envelope, ORDER_PAYLOAD_TYPE, &[public]).unwrap();
        let back: Order = serde_json::from_slice(verified.payload()).unwrap();
        assert_eq!(back, order);
        let later = order.expires_at.as_millisecond();
        assert!(
            orders::deliver_pending(&conn, host.id, later)
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn requests_are_validated() {
        let (_dir, state) = setup();
        let now = Timestamp::now();
        let mut bad = request();
        bad.params = json!([1]);
        assert!(
            create(&state, &bad, now)
                .unwrap_err()
                .to_string()
                .starts_with("params")
        );
        let mut bad = request();
        bad.ttl = SignedDuration::from_hours(25);
        assert!(
            create(&state, &bad, now)
                .unwrap_err()
                .to_string()
                .starts_with("ttl")
        );
        let mut bad = request();
        bad.host_id = "nixos-9".into();
        assert!(
            create(&state, &bad, now)
                .unwrap_err()
                .to_string()
                .contains("not enrolled")
        );
        let mut bad = request();
        bad.action = "rm -rf".into();
        assert!(
            create(&state, &bad, now)
                .unwrap_err()
                .to_string()
                .starts_with("action")
        );
    }

    #[test]
    fn ttls_parse_in_friendly_form() {
        assert_eq!(parse_ttl("10m").unwrap(), SignedDuration::from_mins(10));
        assert_eq!(parse_ttl("1h30m").unwrap(), SignedDuration::from_mins(90));
        assert_eq!(parse_ttl("PT90S").unwrap(), SignedDuration::from_secs(90));
        assert!(parse_ttl("soon").is_err());
    }
}
