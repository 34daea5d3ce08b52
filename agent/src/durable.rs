//! Opening the agent's own SQLite files (the evidence store, the order memory) the one way
//! they are all opened: created with mode 0600, WAL (readers never block the writer),
//! `synchronous=FULL` (a commit is on disk before it returns, which is what every caller
//! promises its own callers), a busy timeout, and the schema brought up to date by
//! `user_version`, refusing a file from a newer agent.
//!
//! It owns no schema and no queries; each caller passes its own.

use std::path::Path;

use rusqlite::Connection;

/// Why a durable file could not be opened.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpenError {
    /// The file was written by a newer agent (`user_version` above ours).
    #[error("schema version {found} is newer than this agent's {supported}")]
    SchemaTooNew {
        /// Version found in the file.
        found: i64,
        /// Version this agent writes.
        supported: i64,
    },
    /// SQLite refused.
    #[error(transparent)]
    Sqlite(#[from] rusqlite::Error),
}

/// Opens (or creates) `path` and applies `schema` (idempotent `CREATE … IF NOT EXISTS`
/// statements) when the file's `user_version` is below `version`.
pub fn open(path: &Path, schema: &str, version: i64) -> Result<Connection, OpenError> {
    let existed = path.exists();
    let conn = Connection::open(path)?;
    if !existed {
        use std::os::unix::fs::PermissionsExt;
        // Not secret, but the agent's record: only the agent writes it.
        let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600));
    }
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    conn.busy_timeout(std::time::Duration::from_secs(10))?;
    let found: i64 = conn.pragma_query_value(None, "user_version", |row| row.get(0))?;
    if found > version {
        return Err(OpenError::SchemaTooNew {
            found,
            supported: version,
        });
    }
    if found < version {
        conn.execute_batch(schema)?;
        conn.pragma_update(None, "user_version", version)?;
    }
    Ok(conn)
}
