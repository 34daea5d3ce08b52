//! The `orders` table: signed order envelopes (canonical bytes, as signed by `order create`),
//! their deliveries and the agent's signed result.
//!
//! An order is pending until a result arrives or it expires; a pending order is handed out on
//! every check-in of its host (at least once: the agent's replay store drops repeats), and each
//! hand-out is counted. SQL only: `api` decides what a result means.

use rusqlite::{Connection, OptionalExtension, params};

use crate::db::DbError;

/// An order to store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewOrder<'a> {
    /// Order id.
    pub order_id: &'a str,
    /// Target host (row id).
    pub host: i64,
    /// Runbook id.
    pub action: &'a str,
    /// Canonical envelope bytes.
    pub envelope: &'a [u8],
    /// `sha256:<hex>` of those bytes.
    pub digest: &'a str,
    /// The order's dry-run flag.
    pub dry_run: bool,
    /// The order's disruptive flag.
    pub disruptive: bool,
    /// When it was created.
    pub created_at_ms: i64,
    /// When it expires.
    pub expires_at_ms: i64,
}

/// An order as `orders` lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OrderRow {
    /// Order id.
    pub order_id: String,
    /// Target site.
    pub site_id: String,
    /// Target host.
    pub host_id: String,
    /// Runbook id.
    pub action: String,
    /// Dry run.
    pub dry_run: bool,
    /// Disruptive.
    pub disruptive: bool,
    /// Created.
    pub created_at_ms: i64,
    /// Expires.
    pub expires_at_ms: i64,
    /// Times handed out on a check-in.
    pub deliveries: i64,
    /// Last hand-out.
    pub last_delivered_at_ms: Option<i64>,
    /// When the result arrived.
    pub result_at_ms: Option<i64>,
    /// The result's outcome (`executed`, `refused`…).
    pub outcome: Option<String>,
    /// The result's refusal code.
    pub code: Option<String>,
    /// The result's detail.
    pub detail: Option<String>,
}

/// What a result stores.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResultRecord<'a> {
    /// Outcome wire name.
    pub outcome: &'a str,
    /// Refusal code wire name.
    pub code: Option<&'a str>,
    /// Detail.
    pub detail: &'a str,
    /// Canonical bytes of the result envelope.
    pub envelope: &'a [u8],
}

/// Stores a new pending order.
pub fn insert(conn: &Connection, order: &NewOrder<'_>) -> Result<(), DbError> {
    conn.prepare_cached(
        "INSERT INTO orders (order_id, host, action, envelope, digest, dry_run, disruptive,
                             created_at_ms, expires_at_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
    )?
    .execute(params![
        order.order_id,
        order.host,
        order.action,
        order.envelope,
        order.digest,
        order.dry_run,
        order.disruptive,
        order.created_at_ms,
        order.expires_at_ms,
    ])?;
    Ok(())
}

/// The host's pending, unexpired orders (envelope bytes, oldest first), counted as delivered.
pub fn deliver_pending(conn: &Connection, host: i64, now_ms: i64) -> Result<Vec<Vec<u8>>, DbError> {
    let mut statement = conn.prepare_cached(
        "SELECT envelope FROM orders
         WHERE host = ?1 AND result_at_ms IS NULL AND expires_at_ms > ?2
         ORDER BY created_at_ms, rowid",
    )?;
    let envelopes = statement
        .query_map(params![host, now_ms], |row| row.get::<_, Vec<u8>>(0))?
        .collect::<Result<Vec<_>, _>>()?;
    if !envelopes.is_empty() {
        conn.prepare_cached(
            "UPDATE orders SET deliveries = deliveries + 1,
                first_delivered_at_ms = COALESCE(first_delivered_at_ms, ?3),
                last_delivered_at_ms = ?3
             WHERE host = ?1 AND result_at_ms IS NULL AND expires_at_ms > ?2",
        )?
        .execute(params![host, now_ms, now_ms])?;
    }
    Ok(envelopes)
}

/// The digest of one of this host's orders, if it has an order with this id.
pub fn digest_for_host(
    conn: &Connection,
    order_id: &str,
    host: i64,
) -> Result<Option<String>, DbError> {
    Ok(conn
        .prepare_cached("SELECT digest FROM orders WHERE order_id = ?1 AND host = ?2")?
        .query_row(params![order_id, host], |row| row.get(0))
        .optional()?)
}

/// Stores a result (the latest one wins: a `deferred` is followed by the real outcome).
pub fn record_result(
    conn: &Connection,
    order_id: &str,
    result: &ResultRecord<'_>,
    now_ms: i64,
) -> Result<(), DbError> {
    conn.prepare_cached(
        "UPDATE orders SET result_at_ms = ?2, outcome = ?3, code = ?4, detail = ?5,
            result_envelope = ?6
         WHERE order_id = ?1",
    )?
    .execute(params![
        order_id,
        now_ms,
        result.outcome,
        result.code,
        result.detail,
        result.envelope
    ])?;
    Ok(())
}

/// Orders, newest first, optionally of one site and/or host.
pub fn list(
    conn: &Connection,
    site_id: Option<&str>,
    host_id: Option<&str>,
) -> Result<Vec<OrderRow>, DbError> {
    let mut statement = conn.prepare(
        "SELECT o.order_id, h.site_id, h.host_id, o.action, o.dry_run, o.disruptive,
                o.created_at_ms, o.expires_at_ms, o.deliveries, o.last_delivered_at_ms,
                o.result_at_ms, o.outcome, o.code, o.detail
         FROM orders o JOIN hosts h ON h.id = o.host
         WHERE (?1 IS NULL OR h.site_id = ?1) AND (?2 IS NULL OR h.host_id = ?2)
         ORDER BY o.created_at_ms DESC, o.rowid DESC",
    )?;
    let rows = statement.query_map(params![site_id, host_id], |row| {
        Ok(OrderRow {
            order_id: row.get(0)?,
            site_id: row.get(1)?,
            host_id: row.get(2)?,
            action: row.get(3)?,
            dry_run: row.get(4)?,
            disruptive: row.get(5)?,
            created_at_ms: row.get(6)?,
            expires_at_ms: row.get(7)?,
            deliveries: row.get(8)?,
            last_delivered_at_ms: row.get(9)?,
            result_at_ms: row.get(10)?,
            outcome: row.get(11)?,
            code: row.get(12)?,
            detail: row.get(13)?,
        })
    })?;
    Ok(rows.collect::<Result<Vec<_>, _>>()?)
}
