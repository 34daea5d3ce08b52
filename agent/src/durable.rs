//! Opening the agent's own SQLite files (the evidence store, the order memory) the one way
//! they are all opened: created with mode 0600, WAL (readers never block the writer),
//! `synchronous=FULL` (a commit is on disk before it returns, which is what every caller
//! promises its own callers), a busy timeout, and the schema brought up to date by
//! `user_version`, refusing a file from a newer agent.
//!
//! It owns no schema and no queries; each caller passes its own, and the [`Layout`] its rows
//! want.

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

/// How a file's pages are sized, for the rows it holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// SQLite's defaults (4 KiB pages, a checkpoint every 1000 pages of WAL): files of small
    /// rows (orders seen, heal phases).
    SmallRows,
    /// An append log of kilobyte rows (the evidence store): SQLite's largest page, 64 KiB, so
    /// a check record (5–7.5 KiB as JSON, a quarter less in the store's compact form) fits in
    /// one page instead of a page and an overflow chain, and a batch of 100 is about 10 WAL
    /// frames instead of about 200; a checkpoint every 256 pages (16 MiB of WAL) keeps
    /// checkpoints rare. `cargo bench -p msp-compliance-agent --bench evidence` measured
    /// batched appends at 21–22k/s against 16–17k/s with the defaults (19.2k/s with 64 KiB
    /// pages and a 4 MiB WAL), `verify` 6 % faster, one record per commit 3.6–4.0k/s against
    /// 4.4k/s (the budget is 2k/s). With compact rows, 32 KiB and 16 KiB pages were measured
    /// again, alternating with 64 KiB: 22.3–23.0k and 19.8–20.4k against 23.2k/s.
    AppendLog,
}

impl Layout {
    fn page_size(self) -> u32 {
        match self {
            Layout::SmallRows => 4096,
            Layout::AppendLog => 65536,
        }
    }

    fn checkpoint_pages(self) -> u32 {
        match self {
            Layout::SmallRows => 1000,
            Layout::AppendLog => 256,
        }
    }
}

/// Opens (or creates) `path` and applies `schema` (idempotent `CREATE … IF NOT EXISTS`
/// statements) when the file's `user_version` is below `version`. The page size of `layout`
/// applies to a new file only; an existing file keeps the one it was created with.
pub fn open(
    path: &Path,
    schema: &str,
    version: i64,
    layout: Layout,
) -> Result<Connection, OpenError> {
    let existed = path.exists();
    let conn = Connection::open(path)?;
    if !existed {
        use std::os::unix::fs::PermissionsExt;
        // Not secret, but the agent's record: only the agent writes it.
        let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600));
    }
    // Before WAL mode, which fixes the page size of a new file.
    conn.pragma_update(None, "page_size", layout.page_size())?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "wal_autocheckpoint", layout.checkpoint_pages())?;
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

#[cfg(test)]
mod tests {
    use super::*;

    fn pragma(conn: &Connection, name: &str) -> i64 {
        conn.pragma_query_value(None, name, |row| row.get(0))
            .expect("pragma")
    }

    #[test]
    fn a_new_file_takes_its_layout_and_an_existing_one_keeps_its_page_size() {
        const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS t (x BLOB);";
        let dir = tempfile::tempdir().expect("temp dir");
        let log = dir.path().join("log.sqlite");
        let conn = open(&log, SCHEMA, 1, Layout::AppendLog).expect("open");
        conn.execute("INSERT INTO t VALUES (zeroblob(7000))", [])
            .expect("insert");
        assert_eq!(pragma(&conn, "page_size"), 65536);
        assert_eq!(pragma(&conn, "wal_autocheckpoint"), 256);
        assert_eq!(
            conn.pragma_query_value(None, "journal_mode", |row| row.get::<_, String>(0))
                .expect("journal mode"),
            "wal"
        );
        drop(conn);

        // Reopened with the other layout: the page size is the file's, the checkpoint the caller's.
        let conn = open(&log, SCHEMA, 1, Layout::SmallRows).expect("reopen");
        assert_eq!(pragma(&conn, "page_size"), 65536);
        assert_eq!(pragma(&conn, "wal_autocheckpoint"), 1000);
        let n: i64 = conn
            .query_row("SELECT length(x) FROM t", [], |row| row.get(0))
            .expect("row");
        assert_eq!(n, 7000);

        let small = open(
            &dir.path().join("small.sqlite"),
            SCHEMA,
            1,
            Layout::SmallRows,
        )
        .expect("open small");
        assert_eq!(pragma(&small, "page_size"), 4096);
        assert_eq!(pragma(&small, "synchronous"), 2, "FULL");
    }
}
