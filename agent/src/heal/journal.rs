//! The heal journal: `<state_dir>/heals.sqlite`, one row per heal, moved through its phases
//! with a durable commit before each step that changes the host. A heal whose row is not
//! `done` was interrupted (the agent was killed, the host lost power); the engine finds it on
//! the next start and finishes it: verify, roll back if needed, record the outcome. So no heal
//! ends in silence.

use std::path::{Path, PathBuf};

use rusqlite::{Connection, OptionalExtension, params};
use serde_json::Value;

/// The journal's schema version (`user_version`).
const SCHEMA_VERSION: i64 = 1;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS heals (
    heal_id    TEXT PRIMARY KEY,
    runbook    TEXT NOT NULL,
    instance   TEXT NOT NULL,
    phase      TEXT NOT NULL,
    pre_state  TEXT NOT NULL,
    started_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS heals_open ON heals (phase) WHERE phase != 'done';
";

/// The journal file below the state directory.
pub fn journal_path(state_dir: &Path) -> PathBuf {
    state_dir.join("heals.sqlite")
}

/// Where a heal stands. Each phase is committed before the step it names begins.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Pre-state taken; the heal unit is about to be started.
    Acting,
    /// The action returned; verification runs.
    Verifying,
    /// Verification failed; the rollback unit is about to be started.
    RollingBack,
    /// Finished; its outcome is in the evidence.
    Done,
}

impl Phase {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Acting => "acting",
            Phase::Verifying => "verifying",
            Phase::RollingBack => "rolling_back",
            Phase::Done => "done",
        }
    }

    fn parse(text: &str) -> Option<Phase> {
        Some(match text {
            "acting" => Phase::Acting,
            "verifying" => Phase::Verifying,
            "rolling_back" => Phase::RollingBack,
            "done" => Phase::Done,
            _ => return None,
        })
    }
}

/// A heal that has not reached `done`.
#[derive(Clone, Debug, PartialEq)]
pub struct OpenHeal {
    /// The heal's id (the order id that asked for it).
    pub heal_id: String,
    /// Runbook id.
    pub runbook: String,
    /// Instance name of its heal unit.
    pub instance: String,
    /// Its phase when it was interrupted (`None`: a phase this agent does not know).
    pub phase: Option<Phase>,
    /// The pre-state snapshot the heal took.
    pub pre_state: Value,
    /// When the heal began.
    pub started_at: jiff::Timestamp,
}

/// Why the journal could not be read or written.
#[derive(Debug, thiserror::Error)]
#[error("heal journal {path}: {message}")]
pub struct JournalError {
    path: PathBuf,
    message: String,
}

/// The durable heal journal.
pub struct Journal {
    conn: Connection,
    path: PathBuf,
}

impl Journal {
    /// Opens (or creates) the journal.
    pub fn open(path: &Path) -> Result<Journal, JournalError> {
        let conn = crate::durable::open(
            path,
            SCHEMA,
            SCHEMA_VERSION,
            crate::durable::Layout::SmallRows,
        )
        .map_err(|err| JournalError {
            path: path.to_path_buf(),
            message: err.to_string(),
        })?;
        Ok(Journal {
            conn,
            path: path.to_path_buf(),
        })
    }

    /// Records a new heal in phase `acting`. Refuses an id already used, so one order can
    /// never heal twice.
    pub fn begin(
        &self,
        heal_id: &str,
        runbook: &str,
        instance: &str,
        pre_state: &Value,
    ) -> Result<(), JournalError> {
        let now = jiff::Timestamp::now().to_string();
        self.conn
            .execute(
                "INSERT INTO heals (heal_id, runbook, instance, phase, pre_state, started_at, updated_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6)",
                params![
                    heal_id,
                    runbook,
                    instance,
                    Phase::Acting.as_str(),
                    pre_state.to_string(),
                    now
                ],
            )
            .map(drop)
            .map_err(|err| self.error(err))
    }

    /// Moves a heal to `phase` (committed on return).
    pub fn advance(&self, heal_id: &str, phase: Phase) -> Result<(), JournalError> {
        self.conn
            .execute(
                "UPDATE heals SET phase = ?2, updated_at = ?3 WHERE heal_id = ?1",
                params![heal_id, phase.as_str(), jiff::Timestamp::now().to_string()],
            )
            .map(drop)
            .map_err(|err| self.error(err))
    }

    /// Heals not `done`, oldest first.
    pub fn open_heals(&self) -> Result<Vec<OpenHeal>, JournalError> {
        let mut statement = self
            .conn
            .prepare(
                "SELECT heal_id, runbook, instance, phase, pre_state, started_at FROM heals
                 WHERE phase != 'done' ORDER BY started_at, heal_id",
            )
            .map_err(|err| self.error(err))?;
        let rows = statement
            .query_map([], |row| {
                let phase: String = row.get(3)?;
                let pre_state: String = row.get(4)?;
                let started_at: String = row.get(5)?;
                Ok(OpenHeal {
                    // Written by `begin` from a Timestamp; a damaged value counts as long ago.
                    started_at: started_at.parse().unwrap_or(jiff::Timestamp::UNIX_EPOCH),
                    heal_id: row.get(0)?,
                    runbook: row.get(1)?,
                    instance: row.get(2)?,
                    phase: Phase::parse(&phase),
                    pre_state: serde_json::from_str(&pre_state).unwrap_or(Value::Null),
                })
            })
            .map_err(|err| self.error(err))?;
        rows.collect::<Result<_, _>>()
            .map_err(|err| self.error(err))
    }

    /// The phase of one heal, if it exists.
    pub fn phase(&self, heal_id: &str) -> Result<Option<Phase>, JournalError> {
        self.conn
            .query_row(
                "SELECT phase FROM heals WHERE heal_id = ?1",
                [heal_id],
                |row| row.get::<_, String>(0),
            )
            .optional()
            .map(|it| it.and_then(|phase| Phase::parse(&phase)))
            .map_err(|err| self.error(err))
    }

    /// Moves a heal's start back by `age` (tests of time-based decisions).
    #[cfg(test)]
    pub fn backdate_for_tests(&self, heal_id: &str, age: jiff::SignedDuration) {
        let started = jiff::Timestamp::now() - age;
        self.conn
            .execute(
                "UPDATE heals SET started_at = ?2 WHERE heal_id = ?1",
                params![heal_id, started.to_string()],
            )
            .unwrap();
    }

    fn error(&self, err: rusqlite::Error) -> JournalError {
        JournalError {
            path: self.path.clone(),
            message: err.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn open_heals_survive_reopening_and_done_ones_leave() {
        let dir = tempfile::tempdir().unwrap();
        let path = journal_path(dir.path());
        {
            let journal = Journal::open(&path).unwrap();
            journal
                .begin(
                    "o-1",
                    "restart-unit",
                    "restart-x",
                    &json!({"ActiveState": "failed"}),
                )
                .unwrap();
            journal
                .begin("o-2", "restore-firewall", "restore-firewall", &json!({}))
                .unwrap();
            journal.advance("o-2", Phase::Verifying).unwrap();
            assert!(
                journal
                    .begin("o-1", "restart-unit", "restart-x", &json!({}))
                    .is_err()
            );
        }
        let journal = Journal::open(&path).unwrap();
        let open = journal.open_heals().unwrap();
        assert_eq!(open.len(), 2);
        assert_eq!(open[0].heal_id, "o-1");
        assert_eq!(open[0].phase, Some(Phase::Acting));
        assert_eq!(open[0].pre_state["ActiveState"], "failed");
        assert_eq!(open[1].phase, Some(Phase::Verifying));
        journal.advance("o-1", Phase::Done).unwrap();
        assert_eq!(journal.open_heals().unwrap().len(), 1);
        assert_eq!(journal.phase("o-1").unwrap(), Some(Phase::Done));
        assert_eq!(journal.phase("nope").unwrap(), None);
    }
}
