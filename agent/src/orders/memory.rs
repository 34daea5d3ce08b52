//! The agent's durable memory of orders: `<state_dir>/orders.sqlite` (WAL, `synchronous=FULL`).
//!
//! It holds what the guardrails must remember across restarts: the order ids and nonces seen
//! (until the order's expiry plus the clock skew, after which the order would be refused as
//! expired anyway), the actions executed (for cooldowns and the hourly budget), and the orders
//! deferred to the maintenance window (so a re-sent deferred order is recognized and recorded
//! once). Decisions are made in `orders`; this module only stores and reads, inside one
//! `IMMEDIATE` transaction per order ([`MemoryTransaction`]), so "seen" and "executed" become
//! durable together, before the action runs: a crash during the action cannot lead to a re-run.

use std::path::{Path, PathBuf};

use crate::durable::{self, Layout, OpenError};
use jiff::Timestamp;
use rusqlite::{Connection, OptionalExtension, Transaction, TransactionBehavior, params};

/// File name of the order memory inside the agent's state directory.
pub const MEMORY_FILE: &str = "orders.sqlite";

/// Schema version (SQLite `user_version`).
const SCHEMA_VERSION: i64 = 1;

/// Times are Unix milliseconds.
const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS seen (
    order_id       TEXT PRIMARY KEY,
    nonce          TEXT NOT NULL UNIQUE,
    payload_digest TEXT NOT NULL,
    verdict        TEXT NOT NULL,
    seen_at        INTEGER NOT NULL,
    remember_until INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS deferred (
    order_id       TEXT PRIMARY KEY,
    nonce          TEXT NOT NULL UNIQUE,
    payload_digest TEXT NOT NULL,
    deferred_at    INTEGER NOT NULL,
    remember_until INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS executed (
    id             INTEGER PRIMARY KEY,
    action         TEXT NOT NULL,
    order_id       TEXT NOT NULL,
    executed_at    INTEGER NOT NULL,
    relevant_until INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS executed_by_action ON executed (action, executed_at);
CREATE INDEX IF NOT EXISTS executed_by_time ON executed (executed_at);
CREATE TABLE IF NOT EXISTS horizon (
    id             INTEGER PRIMARY KEY CHECK (id = 1),
    pruned_through INTEGER NOT NULL
);
";

/// Where the order memory of a state directory lives: `<state_dir>/orders.sqlite`.
pub fn memory_path(state_dir: &Path) -> PathBuf {
    state_dir.join(MEMORY_FILE)
}

/// A memory operation that failed. Any of these stops the order (nothing runs on a memory
/// that could not record it).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MemoryError {
    /// The disk is full; the transaction was rolled back.
    #[error("order memory {path}: disk full; the order was not admitted")]
    DiskFull { path: PathBuf },
    /// The database was written by a newer agent.
    #[error(
        "order memory {path}: schema version {found} is newer than this agent's {SCHEMA_VERSION}"
    )]
    SchemaTooNew { path: PathBuf, found: i64 },
    /// Any other SQLite error.
    #[error("order memory {path}: {source}")]
    Sqlite {
        path: PathBuf,
        source: rusqlite::Error,
    },
}

/// An order id or nonce found in the memory.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Remembered {
    /// Deferred to the maintenance window; `payload_digest` identifies the signed payload.
    Deferred {
        order_id: String,
        payload_digest: String,
    },
    /// Seen before with a final verdict (wire name of the outcome or refusal code).
    Seen { order_id: String, verdict: String },
}

/// The order memory.
pub struct OrderMemory {
    conn: Connection,
    path: PathBuf,
}

/// One order's reads and writes, committed together or not at all.
pub struct MemoryTransaction<'m> {
    tx: Transaction<'m>,
    path: &'m Path,
}

impl OrderMemory {
    /// Opens (or creates, mode 0600) the memory and brings its schema up to date.
    pub fn open(path: &Path) -> Result<OrderMemory, MemoryError> {
        // FULL: a commit is on disk before `admit` returns an order to execute.
        let conn = durable::open(path, SCHEMA, SCHEMA_VERSION, Layout::SmallRows).map_err(
            |err| match err {
                OpenError::SchemaTooNew { found, .. } => MemoryError::SchemaTooNew {
                    path: path.to_path_buf(),
                    found,
                },
                OpenError::Sqlite(source) => sqlite(path, source),
            },
        )?;
        Ok(OrderMemory {
            conn,
            path: path.to_path_buf(),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Starts the transaction of one order (`IMMEDIATE`: the write lock is taken before the
    /// first read, so what was read is still true at commit).
    pub fn transaction(&mut self) -> Result<MemoryTransaction<'_>, MemoryError> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|source| sqlite(&self.path, source))?;
        Ok(MemoryTransaction {
            tx,
            path: &self.path,
        })
    }

    /// Forgets what can no longer matter at `now`: ids and nonces of orders past expiry plus
    /// skew, deferrals of expired orders, executions older than their cooldown and the budget
    /// hour. Returns the number of rows removed.
    ///
    /// It also raises the memory's horizon to `now` (never lowers it): an order that expires
    /// before the horizon may have been forgotten, so `admit` refuses it as a replay. Without
    /// that, a clock that jumped forward (pruning early) and back again would make a forgotten,
    /// still-valid order acceptable a second time.
    pub fn prune(&mut self, now: Timestamp) -> Result<u64, MemoryError> {
        let now = now.as_millisecond();
        let tx = self.transaction()?;
        tx.tx
            .execute(
                "INSERT INTO horizon (id, pruned_through) VALUES (1, ?1) ON CONFLICT (id) DO UPDATE SET pruned_through = max(pruned_through, excluded.pruned_through)",
                params![now],
            )
            .map_err(|source| sqlite(tx.path, source))?;
        let mut removed = 0;
        for statement in [
            "DELETE FROM seen WHERE remember_until < ?1",
            "DELETE FROM deferred WHERE remember_until < ?1",
            "DELETE FROM executed WHERE relevant_until < ?1",
        ] {
            removed += tx
                .tx
                .execute(statement, params![now])
                .map_err(|source| sqlite(tx.path, source))? as u64;
        }
        tx.commit()?;
        Ok(removed)
    }

    /// Actions executed after `since` (for status output).
    pub fn executed_since(&self, since: Timestamp) -> Result<u64, MemoryError> {
        self.conn
            .query_row(
                "SELECT COUNT(*) FROM executed WHERE executed_at > ?1",
                params![since.as_millisecond()],
                |row| row.get::<_, i64>(0),
            )
            .map(|it| it as u64)
            .map_err(|source| sqlite(&self.path, source))
    }
}

impl MemoryTransaction<'_> {
    /// The latest instant the memory was pruned at (see [`OrderMemory::prune`]).
    pub fn horizon(&self) -> Result<Option<Timestamp>, MemoryError> {
        let millis: Option<i64> = self
            .tx
            .query_row(
                "SELECT pruned_through FROM horizon WHERE id = 1",
                [],
                |row| row.get(0),
            )
            .optional()
            .map_err(|source| sqlite(self.path, source))?;
        Ok(millis.and_then(|it| Timestamp::from_millisecond(it).ok()))
    }

    /// The entry, if any, that holds this order id or this nonce: a seen order first, then a
    /// deferred one.
    pub fn remembered(
        &self,
        order_id: &str,
        nonce: &str,
    ) -> Result<Option<Remembered>, MemoryError> {
        let seen = self
            .tx
            .query_row(
                "SELECT order_id, verdict FROM seen WHERE order_id = ?1 OR nonce = ?2 LIMIT 1",
                params![order_id, nonce],
                |row| {
                    Ok(Remembered::Seen {
                        order_id: row.get(0)?,
                        verdict: row.get(1)?,
                    })
                },
            )
            .optional()
            .map_err(|source| sqlite(self.path, source))?;
        if seen.is_some() {
            return Ok(seen);
        }
        self.tx
            .query_row(
                "SELECT order_id, payload_digest FROM deferred WHERE order_id = ?1 OR nonce = ?2 LIMIT 1",
                params![order_id, nonce],
                |row| {
                    Ok(Remembered::Deferred {
                        order_id: row.get(0)?,
                        payload_digest: row.get(1)?,
                    })
                },
            )
            .optional()
            .map_err(|source| sqlite(self.path, source))
    }

    /// When `action` last executed, if it is still remembered.
    pub fn last_executed(&self, action: &str) -> Result<Option<Timestamp>, MemoryError> {
        let millis: Option<i64> = self
            .tx
            .query_row(
                "SELECT MAX(executed_at) FROM executed WHERE action = ?1",
                params![action],
                |row| row.get(0),
            )
            .map_err(|source| sqlite(self.path, source))?;
        // Stored by `record_execution` from a valid timestamp, so it converts back.
        Ok(millis.and_then(|it| Timestamp::from_millisecond(it).ok()))
    }

    /// Actions executed after `since` (any action).
    pub fn executed_since(&self, since: Timestamp) -> Result<u64, MemoryError> {
        self.tx
            .query_row(
                "SELECT COUNT(*) FROM executed WHERE executed_at > ?1",
                params![since.as_millisecond()],
                |row| row.get::<_, i64>(0),
            )
            .map(|it| it as u64)
            .map_err(|source| sqlite(self.path, source))
    }

    /// Remembers an order's id and nonce with its final verdict until `remember_until`, and
    /// forgets its deferral, if any. An id or nonce already remembered keeps its first verdict.
    pub fn mark_seen(
        &self,
        order_id: &str,
        nonce: &str,
        payload_digest: &str,
        verdict: &str,
        now: Timestamp,
        remember_until: Timestamp,
    ) -> Result<(), MemoryError> {
        let err = |source| sqlite(self.path, source);
        self.tx
            .execute(
                "DELETE FROM deferred WHERE order_id = ?1 OR nonce = ?2",
                params![order_id, nonce],
            )
            .map_err(err)?;
        self.tx
            .execute(
                "INSERT OR IGNORE INTO seen (order_id, nonce, payload_digest, verdict, seen_at, remember_until) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![
                    order_id,
                    nonce,
                    payload_digest,
                    verdict,
                    now.as_millisecond(),
                    remember_until.as_millisecond()
                ],
            )
            .map_err(err)?;
        Ok(())
    }

    /// Records that `action` executes now; it counts against cooldowns and the budget until
    /// `relevant_until`.
    pub fn record_execution(
        &self,
        action: &str,
        order_id: &str,
        now: Timestamp,
        relevant_until: Timestamp,
    ) -> Result<(), MemoryError> {
        self.tx
            .execute(
                "INSERT INTO executed (action, order_id, executed_at, relevant_until) VALUES (?1, ?2, ?3, ?4)",
                params![
                    action,
                    order_id,
                    now.as_millisecond(),
                    relevant_until.as_millisecond()
                ],
            )
            .map_err(|source| sqlite(self.path, source))?;
        Ok(())
    }

    /// Remembers a deferred order until `remember_until`.
    pub fn defer(
        &self,
        order_id: &str,
        nonce: &str,
        payload_digest: &str,
        now: Timestamp,
        remember_until: Timestamp,
    ) -> Result<(), MemoryError> {
        self.tx
            .execute(
                "INSERT INTO deferred (order_id, nonce, payload_digest, deferred_at, remember_until) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![
                    order_id,
                    nonce,
                    payload_digest,
                    now.as_millisecond(),
                    remember_until.as_millisecond()
                ],
            )
            .map_err(|source| sqlite(self.path, source))?;
        Ok(())
    }

    /// Makes every write of this transaction durable.
    pub fn commit(self) -> Result<(), MemoryError> {
        let path = self.path;
        self.tx.commit().map_err(|source| sqlite(path, source))
    }
}

fn sqlite(path: &Path, source: rusqlite::Error) -> MemoryError {
    if let rusqlite::Error::SqliteFailure(err, _) = &source
        && err.code == rusqlite::ErrorCode::DiskFull
    {
        return MemoryError::DiskFull {
            path: path.to_path_buf(),
        };
    }
    MemoryError::Sqlite {
        path: path.to_path_buf(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(text: &str) -> Timestamp {
        text.parse().unwrap()
    }

    #[test]
    fn remembers_across_reopening_and_prunes_after_expiry() {
        let dir = tempfile::tempdir().unwrap();
        let path = memory_path(dir.path());
        let now = ts("2026-05-04T12:00:00Z");
        {
            let mut memory = OrderMemory::open(&path).unwrap();
            let tx = memory.transaction().unwrap();
            tx.mark_seen(
                "o-1",
                "aa",
                "sha256:1",
                "executed",
                now,
                ts("2026-05-04T12:17:00Z"),
            )
            .unwrap();
            tx.record_execution("run-checks", "o-1", now, ts("2026-05-04T13:00:00Z"))
                .unwrap();
            tx.defer("o-2", "bb", "sha256:2", now, ts("2026-05-04T12:30:00Z"))
                .unwrap();
            tx.commit().unwrap();
            // An uncommitted transaction leaves nothing behind.
            let tx = memory.transaction().unwrap();
            tx.mark_seen("o-3", "cc", "sha256:3", "executed", now, now)
                .unwrap();
            drop(tx);
        }
        let mut memory = OrderMemory::open(&path).unwrap();
        let tx = memory.transaction().unwrap();
        assert_eq!(
            tx.remembered("other", "aa").unwrap(),
            Some(Remembered::Seen {
                order_id: "o-1".into(),
                verdict: "executed".into()
            })
        );
        assert_eq!(
            tx.remembered("o-2", "zz").unwrap(),
            Some(Remembered::Deferred {
                order_id: "o-2".into(),
                payload_digest: "sha256:2".into()
            })
        );
        assert_eq!(tx.remembered("o-3", "cc").unwrap(), None);
        assert_eq!(tx.last_executed("run-checks").unwrap(), Some(now));
        assert_eq!(tx.executed_since(ts("2026-05-04T11:00:00Z")).unwrap(), 1);
        // Seeing a deferred order forgets its deferral.
        tx.mark_seen(
            "o-2",
            "bb",
            "sha256:2",
            "executed",
            now,
            ts("2026-05-04T12:30:00Z"),
        )
        .unwrap();
        tx.commit().unwrap();
        assert_eq!(memory.prune(ts("2026-05-04T12:20:00Z")).unwrap(), 1);
        assert_eq!(memory.prune(ts("2026-05-04T14:00:00Z")).unwrap(), 2);
        let tx = memory.transaction().unwrap();
        assert_eq!(tx.remembered("o-1", "aa").unwrap(), None);
        assert_eq!(tx.last_executed("run-checks").unwrap(), None);
    }

    #[test]
    fn a_newer_schema_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = memory_path(dir.path());
        drop(OrderMemory::open(&path).unwrap());
        let conn = Connection::open(&path).unwrap();
        conn.pragma_update(None, "user_version", 99).unwrap();
        drop(conn);
        assert!(matches!(
            OrderMemory::open(&path),
            Err(MemoryError::SchemaTooNew { found: 99, .. })
        ));
    }
}
