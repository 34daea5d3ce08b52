//! The control plane's SQLite database: one file in the state directory (WAL,
//! `synchronous=FULL`), its schema and numbered migrations, and every SQL statement.
//!
//! - `hosts`: one row per enrolled host: the certificate fingerprint that identifies it, the
//!   pinned agent key, the last check-in, the stored evidence head and the last checkpoint;
//! - `evidence`: each host's chain, one row per record: the canonical envelope bytes exactly as
//!   verified (what `evidence export` prints), keyed by (host, seq), digest `UNIQUE`;
//! - `orders`: signed order envelopes and what became of them;
//! - `audit`: what operators did (enrollments, key pins and replacements, orders created).
//!
//! The schema version is `PRAGMA user_version`; [`open`] applies the migrations this build
//! knows, in order, each in its own transaction, and refuses a database whose version is newer
//! (written by a later msp-mcp) rather than guess at its meaning. `PRAGMA application_id` marks
//! the file as ours. This module runs SQL and nothing else: deciding what a request means is
//! the caller's (`api`, `cli`), and how async code reaches the connection is `pool`'s.

pub mod evidence;
pub mod hosts;
pub mod orders;

use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags, params};

/// Marks the file as an msp-mcp database ("MSPM").
pub const APPLICATION_ID: i32 = 0x4d53_504d;
/// How long a statement waits for another process's write lock (the CLI beside `serve`).
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// Prepared statements kept per connection: every statement of the request paths fits, so a
/// check-in never re-parses SQL.
const STATEMENT_CACHE_CAPACITY: usize = 64;

/// The migrations, in order: entry `n` takes the schema from version `n` to `n + 1`.
/// Never edit an entry once released; append a new one.
const MIGRATIONS: &[&str] = &[
    // 1: the first schema. Times are Unix milliseconds (`*_ms`), so they sort and compare as
    // integers; the CLI formats them.
    "
    CREATE TABLE hosts (
        id INTEGER PRIMARY KEY,
        site_id TEXT NOT NULL,
        host_id TEXT NOT NULL,
        cert_fingerprint TEXT NOT NULL UNIQUE,
        enrolled_at_ms INTEGER NOT NULL,
        agent_key TEXT,
        agent_key_pinned_at_ms INTEGER,
        last_checkin_ms INTEGER,
        agent_version TEXT,
        agent_time_ms INTEGER,
        summary TEXT,
        reported_head_seq INTEGER,
        reported_head_digest TEXT,
        head_seq INTEGER,
        head_digest TEXT,
        checkpoint_seq INTEGER,
        checkpoint_digest TEXT,
        checkpoint_at_ms INTEGER,
        checkpoint_envelope BLOB,
        UNIQUE (site_id, host_id)
    );
    CREATE TABLE evidence (
        id INTEGER PRIMARY KEY,
        host INTEGER NOT NULL REFERENCES hosts (id),
        seq INTEGER NOT NULL,
        digest TEXT NOT NULL UNIQUE,
        envelope BLOB NOT NULL,
        received_at_ms INTEGER NOT NULL,
        UNIQUE (host, seq)
    );
    CREATE TABLE orders (
        order_id TEXT PRIMARY KEY,
        host INTEGER NOT NULL REFERENCES hosts (id),
        action TEXT NOT NULL,
        envelope BLOB NOT NULL,
        digest TEXT NOT NULL,
        dry_run INTEGER NOT NULL,
        disruptive INTEGER NOT NULL,
        created_at_ms INTEGER NOT NULL,
        expires_at_ms INTEGER NOT NULL,
        deliveries INTEGER NOT NULL DEFAULT 0,
        first_delivered_at_ms INTEGER,
        last_delivered_at_ms INTEGER,
        result_at_ms INTEGER,
        outcome TEXT,
        code TEXT,
        detail TEXT,
        result_envelope BLOB
    );
    CREATE INDEX orders_by_host ON orders (host, created_at_ms);
    CREATE INDEX orders_pending ON orders (host, created_at_ms) WHERE result_at_ms IS NULL;
    CREATE TABLE audit (
        id INTEGER PRIMARY KEY,
        at_ms INTEGER NOT NULL,
        event TEXT NOT NULL,
        site_id TEXT,
        host_id TEXT,
        detail TEXT NOT NULL
    );
    ",
];

/// A database that could not be opened, migrated or used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DbError {
    /// A host names an agent key other than the pinned one.
    #[error(
        "{site_id}/{host_id} has another agent key pinned; pass --danger-replace-agent-key to replace it"
    )]
    AgentKeyPinned {
        /// Site.
        site_id: String,
        /// Host.
        host_id: String,
    },
    /// The host is enrolled already.
    #[error(
        "{site_id}/{host_id} is already enrolled; pass --replace-certificate to issue a new certificate"
    )]
    AlreadyEnrolled {
        /// Site.
        site_id: String,
        /// Host.
        host_id: String,
    },
    /// The database file could not be created.
    #[error("cannot create {path}: {source}")]
    Create {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Stored data does not have the shape this code wrote.
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    /// `init` found a database already there.
    #[error("{path} already exists; refusing to overwrite it")]
    Exists {
        /// The file.
        path: PathBuf,
    },
    /// No database at the path.
    #[error("{path} does not exist; run `msp-mcp init` first")]
    Missing {
        /// The file.
        path: PathBuf,
    },
    /// The file is an SQLite database of someone else.
    #[error("{path} is not an msp-mcp database (application id {found:#x})")]
    NotOurs {
        /// The file.
        path: PathBuf,
        /// The application id found.
        found: i32,
    },
    /// The host is not enrolled.
    #[error("{site_id}/{host_id} is not enrolled")]
    NotEnrolled {
        /// Site.
        site_id: String,
        /// Host.
        host_id: String,
    },
    /// The file could not be opened or configured.
    #[error("cannot open {path}: {source}")]
    Open {
        /// The file.
        path: PathBuf,
        /// Why.
        source: rusqlite::Error,
    },
    /// A statement failed.
    #[error("database: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// The writer thread of `pool` could not be started.
    #[error("cannot start the database writer thread: {0}")]
    Writer(std::io::Error),
    /// The schema is newer than this build knows.
    #[error(
        "{path} has schema version {found}, newer than this msp-mcp knows ({known}); run a newer msp-mcp"
    )]
    TooNew {
        /// The file.
        path: PathBuf,
        /// Version found.
        found: i64,
        /// Latest version known.
        known: i64,
    },
}

/// The schema version this build migrates to.
pub fn schema_version() -> i64 {
    MIGRATIONS.len() as i64
}

/// Creates a new database file (mode 0600, refusing an existing one) with the current schema.
pub fn create(path: &Path) -> Result<Connection, DbError> {
    // Created here, not by SQLite, so its mode is exact and an existing file is never reused.
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(crate::files::SECRET_MODE)
        .open(path)
        .map_err(|source| {
            if source.kind() == std::io::ErrorKind::AlreadyExists {
                DbError::Exists {
                    path: path.to_path_buf(),
                }
            } else {
                DbError::Create {
                    path: path.to_path_buf(),
                    source,
                }
            }
        })?;
    let conn = connect(path)?;
    let open_error = |source| DbError::Open {
        path: path.to_path_buf(),
        source,
    };
    conn.pragma_update(None, "application_id", APPLICATION_ID)
        .map_err(open_error)?;
    migrate(&conn, path)?;
    Ok(conn)
}

/// Opens the existing database and brings its schema up to date.
pub fn open(path: &Path) -> Result<Connection, DbError> {
    if !path.exists() {
        return Err(DbError::Missing {
            path: path.to_path_buf(),
        });
    }
    let conn = connect(path)?;
    let found: i32 = conn
        .pragma_query_value(None, "application_id", |row| row.get(0))
        .map_err(|source| DbError::Open {
            path: path.to_path_buf(),
            source,
        })?;
    if found != APPLICATION_ID {
        return Err(DbError::NotOurs {
            path: path.to_path_buf(),
            found,
        });
    }
    migrate(&conn, path)?;
    Ok(conn)
}

/// Opens another connection to a database already opened (and migrated) with [`open`], for
/// the readers of `pool`.
pub fn reopen(path: &Path) -> Result<Connection, DbError> {
    connect(path)
}

/// Records what an operator (or a first check-in) did.
pub fn audit(
    conn: &Connection,
    at_ms: i64,
    event: &str,
    site_id: Option<&str>,
    host_id: Option<&str>,
    detail: &str,
) -> Result<(), DbError> {
    conn.prepare_cached(
        "INSERT INTO audit (at_ms, event, site_id, host_id, detail) VALUES (?1, ?2, ?3, ?4, ?5)",
    )?
    .execute(params![at_ms, event, site_id, host_id, detail])?;
    Ok(())
}

fn connect(path: &Path) -> Result<Connection, DbError> {
    let open_error = |source| DbError::Open {
        path: path.to_path_buf(),
        source,
    };
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags).map_err(open_error)?;
    conn.busy_timeout(BUSY_TIMEOUT).map_err(open_error)?;
    // WAL: readers (the CLI, the API's readers) never block the writer; FULL: a commit is on
    // disk before an agent is told its evidence is stored.
    let mode: String = conn
        .pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))
        .map_err(open_error)?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(open_error(rusqlite::Error::InvalidParameterName(format!(
            "journal_mode is {mode}, expected wal"
        ))));
    }
    conn.pragma_update(None, "synchronous", "FULL")
        .map_err(open_error)?;
    conn.pragma_update(None, "foreign_keys", true)
        .map_err(open_error)?;
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE_CAPACITY);
    Ok(conn)
}

fn migrate(conn: &Connection, path: &Path) -> Result<(), DbError> {
    let known = schema_version();
    loop {
        // Each step re-reads the version inside its write transaction, so two processes
        // opening an old database at once apply each migration once.
        conn.execute_batch("BEGIN IMMEDIATE")?;
        let step = (|| -> Result<bool, DbError> {
            let found: i64 = conn.pragma_query_value(None, "user_version", |row| row.get(0))?;
            if found > known {
                return Err(DbError::TooNew {
                    path: path.to_path_buf(),
                    found,
                    known,
                });
            }
            let Some(migration) = usize::try_from(found)
                .ok()
                .and_then(|it| MIGRATIONS.get(it))
            else {
                return Ok(false);
            };
            conn.execute_batch(migration)?;
            conn.pragma_update(None, "user_version", found + 1)?;
            Ok(true)
        })();
        match step {
            Ok(true) => conn.execute_batch("COMMIT")?,
            Ok(false) => {
                conn.execute_batch("COMMIT")?;
                return Ok(());
            }
            Err(err) => {
                let _ = conn.execute_batch("ROLLBACK");
                return Err(err);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_then_open_migrates_once_and_refuses_newer_schemas() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mcp.db");
        drop(create(&path).unwrap());
        assert!(matches!(create(&path), Err(DbError::Exists { .. })));
        let conn = open(&path).unwrap();
        let version: i64 = conn
            .pragma_query_value(None, "user_version", |row| row.get(0))
            .unwrap();
        assert_eq!(version, schema_version());
        conn.pragma_update(None, "user_version", schema_version() + 1)
            .unwrap();
        drop(conn);
        let err = open(&path).unwrap_err();
        assert!(matches!(err, DbError::TooNew { .. }), "{err}");
        assert!(err.to_string().contains("newer than this msp-mcp knows"));
    }

    #[test]
    fn foreign_databases_and_missing_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("other.db");
        Connection::open(&path)
            .unwrap()
            .execute_batch("CREATE TABLE t (x)")
            .unwrap();
        assert!(matches!(open(&path), Err(DbError::NotOurs { .. })));
        assert!(matches!(
            open(&dir.path().join("none.db")),
            Err(DbError::Missing { .. })
        ));
    }

    #[test]
    fn the_database_file_is_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mcp.db");
        drop(create(&path).unwrap());
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }
}
