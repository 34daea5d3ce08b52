//! Signed order results waiting for the control plane: kept in the evidence store's `meta`
//! table until `POST /v1/results` is acknowledged, so a result is never lost to a server that is
//! down, a timeout or a restart; every cycle retries them, oldest first.
//!
//! Keys are `results.pending.<queued at, Unix ms, 20 digits>.<order digest hex>`, so key order is
//! queue order; the value is `{"order_digest": …, "envelope": …}`. The order digest is the
//! SHA-256 of the order envelope as received: while a result for it is pending, the same order
//! re-sent by the server (it keeps serving an order until its result arrives) is not run
//! again. This module stores and reads; it never talks to the network.

use jiff::Timestamp;
use msp_compliance_protocol::dsse::Envelope;
use serde_json::json;

use crate::evidence::store::{Store, StoreError};

/// Prefix of the meta keys of pending results.
pub const PENDING_PREFIX: &str = "results.pending.";

/// A result waiting to be posted.
#[derive(Clone, Debug, PartialEq)]
pub struct PendingResult {
    /// Its meta key.
    pub key: String,
    /// `sha256:<hex>` of the order envelope it answers.
    pub order_digest: String,
    /// The signed `OrderResult` envelope.
    pub envelope: Envelope,
}

/// Queues a signed result (durable when this returns).
pub fn keep(
    store: &Store,
    order_digest: &str,
    envelope: &Envelope,
    now: Timestamp,
) -> Result<String, StoreError> {
    let digest_hex = order_digest.strip_prefix("sha256:").unwrap_or(order_digest);
    let key = format!(
        "{PENDING_PREFIX}{:020}.{digest_hex}",
        now.as_millisecond().max(0)
    );
    let value = json!({ "order_digest": order_digest, "envelope": envelope });
    store.set_meta(&key, &value.to_string())?;
    Ok(key)
}

/// Every pending result, oldest first, and the number of entries that could not be read
/// (written by a damaged store; they are left in place and reported, never dropped silently).
pub fn pending(store: &Store) -> Result<(Vec<PendingResult>, usize), StoreError> {
    let mut res = Vec::new();
    let mut unreadable = 0;
    for (key, value) in store.meta_with_prefix(PENDING_PREFIX)? {
        match parse(&key, &value) {
            Some(it) => res.push(it),
            None => unreadable += 1,
        }
    }
    Ok((res, unreadable))
}

/// Returns true if and only if a result for this order envelope is waiting to be posted.
pub fn is_pending(store: &Store, order_digest: &str) -> Result<bool, StoreError> {
    let digest_hex = order_digest.strip_prefix("sha256:").unwrap_or(order_digest);
    let suffix = format!(".{digest_hex}");
    Ok(store
        .meta_with_prefix(PENDING_PREFIX)?
        .iter()
        .any(|(key, _)| key.ends_with(&suffix)))
}

/// Forgets a result the server acknowledged.
pub fn forget(store: &Store, key: &str) -> Result<(), StoreError> {
    store.remove_meta(key)
}

fn parse(key: &str, value: &str) -> Option<PendingResult> {
    let value: serde_json::Value = serde_json::from_str(value).ok()?;
    let order_digest = value.get("order_digest")?.as_str()?.to_string();
    let envelope: Envelope = serde_json::from_value(value.get("envelope")?.clone()).ok()?;
    Some(PendingResult {
        key: key.to_string(),
        order_digest,
        envelope,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_queue_in_order_and_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("evidence.sqlite");
        let key = ed25519_dalek::SigningKey::from_bytes(&[9; 32]);
        let first = msp_compliance_protocol::dsse::sign("text/plain", b"first", &key);
        let second = msp_compliance_protocol::dsse::sign("text/plain", b"second", &key);
        let digest_a = format!("sha256:{}", "a".repeat(64));
        let digest_b = format!("sha256:{}", "b".repeat(64));
        {
            let store = Store::open(&path).unwrap();
            let at = |ms| Timestamp::from_millisecond(ms).unwrap();
            keep(&store, &digest_b, &second, at(2_000)).unwrap();
            keep(&store, &digest_a, &first, at(1_000)).unwrap();
            store
                .set_meta(
                    &format!("{PENDING_PREFIX}00000000000000000003.c"),
                    "garbage",
                )
                .unwrap();
        }
        let store = Store::open(&path).unwrap();
        let (queued, unreadable) = pending(&store).unwrap();
        assert_eq!(unreadable, 1);
        assert_eq!(
            queued.iter().map(|it| &it.envelope).collect::<Vec<_>>(),
            [&first, &second]
        );
        assert!(is_pending(&store, &digest_a).unwrap());
        forget(&store, &queued[0].key).unwrap();
        assert!(!is_pending(&store, &digest_a).unwrap());
        assert!(is_pending(&store, &digest_b).unwrap());
        assert_eq!(pending(&store).unwrap().0.len(), 1);
    }
}
