//! The `evidence` table: each host's chain, one row per record, holding the canonical envelope
//! bytes exactly as verified (and so as exported), keyed by (host, seq), digest `UNIQUE`.
//!
//! Rows are only ever inserted: nothing here updates or deletes a record. SQL only; which
//! records may be stored is decided by `ingest`.

use rusqlite::{Connection, OptionalExtension, params};

use crate::db::DbError;
use crate::db::hosts::{seq_from_sql, seq_to_sql};

/// One stored record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredRecord {
    /// Seq.
    pub seq: u64,
    /// `sha256:<hex>` as stored.
    pub digest: String,
    /// Canonical envelope bytes.
    pub envelope: Vec<u8>,
}

/// The digest stored for a host's record at `seq`.
pub fn digest_at(conn: &Connection, host: i64, seq: u64) -> Result<Option<String>, DbError> {
    Ok(conn
        .prepare_cached("SELECT digest FROM evidence WHERE host = ?1 AND seq = ?2")?
        .query_row(params![host, seq_to_sql(seq)?], |row| row.get(0))
        .optional()?)
}

/// Stores one record.
pub fn insert(
    conn: &Connection,
    host: i64,
    record: &StoredRecord,
    now_ms: i64,
) -> Result<(), DbError> {
    conn.prepare_cached(
        "INSERT INTO evidence (host, seq, digest, envelope, received_at_ms)
         VALUES (?1, ?2, ?3, ?4, ?5)",
    )?
    .execute(params![
        host,
        seq_to_sql(record.seq)?,
        record.digest,
        record.envelope,
        now_ms
    ])?;
    Ok(())
}

/// Calls `each` for the host's records from `since_seq` on, in seq order, one row in memory at
/// a time (a chain can be millions of records).
pub fn for_each<E: From<DbError>>(
    conn: &Connection,
    host: i64,
    since_seq: u64,
    mut each: impl FnMut(StoredRecord) -> Result<(), E>,
) -> Result<(), E> {
    let mut statement = conn
        .prepare(
            "SELECT seq, digest, envelope FROM evidence WHERE host = ?1 AND seq >= ?2 ORDER BY seq",
        )
        .map_err(DbError::from)?;
    let mut rows = statement
        .query(params![host, seq_to_sql(since_seq)?])
        .map_err(DbError::from)?;
    while let Some(row) = rows.next().map_err(DbError::from)? {
        let seq: i64 = row.get(0).map_err(DbError::from)?;
        let record = StoredRecord {
            seq: seq_from_sql(seq)?,
            digest: row.get(1).map_err(DbError::from)?,
            envelope: row.get(2).map_err(DbError::from)?,
        };
        each(record)?;
    }
    Ok(())
}

/// How many records a host has stored.
pub fn count(conn: &Connection, host: i64) -> Result<u64, DbError> {
    let count: i64 = conn
        .prepare_cached("SELECT count(*) FROM evidence WHERE host = ?1")?
        .query_row(params![host], |row| row.get(0))?;
    seq_from_sql(count)
}
