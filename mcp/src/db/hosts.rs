//! The `hosts` table: enrollment (who a certificate is), the pinned agent key, what the last
//! check-in reported, the stored evidence head and the last accepted checkpoint.
//!
//! SQL only; whether a key may be pinned or a certificate replaced is decided by the callers,
//! except for the enrollment rules [`enroll`] enforces inside its transaction.

use msp_compliance_protocol::api::ChainHead;
use rusqlite::{Connection, OptionalExtension, Row, params};

use crate::db::{self, DbError};

/// An enrolled host as the request paths need it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Host {
    /// Row id (the `host` column of the other tables).
    pub id: i64,
    /// Site id.
    pub site_id: String,
    /// Host id.
    pub host_id: String,
    /// Pinned agent key, standard base64 of the 32 raw bytes.
    pub agent_key: Option<String>,
    /// The stored evidence chain's head.
    pub head: Option<ChainHead>,
}

/// A host with everything the `hosts` table shows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostStatus {
    /// The host.
    pub host: Host,
    /// Fingerprint of its client certificate.
    pub fingerprint: String,
    /// When it was enrolled.
    pub enrolled_at_ms: i64,
    /// Its last check-in.
    pub last_checkin_ms: Option<i64>,
    /// Agent version of the last check-in.
    pub agent_version: Option<String>,
    /// The last check-in's summary, as JSON.
    pub summary: Option<String>,
    /// The agent's own chain head at its last check-in.
    pub reported_head: Option<ChainHead>,
    /// The last accepted checkpoint's pinned seq and digest.
    pub checkpoint: Option<ChainHead>,
}

/// What an enrollment records.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Enrollment {
    /// Site id.
    pub site_id: String,
    /// Host id.
    pub host_id: String,
    /// Fingerprint of the new client certificate.
    pub fingerprint: String,
    /// Agent key to pin now (else it is pinned at the first check-in).
    pub agent_key: Option<String>,
}

/// What to do when the host is enrolled already.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reenroll {
    /// Refuse.
    Refuse,
    /// Replace the certificate; keep the pinned agent key.
    ReplaceCertificate,
    /// Replace the certificate and the agent key pin (cleared when no new key is given).
    DangerReplaceCertificateAndAgentKey,
}

/// What an enrollment did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Enrolled {
    /// A new host.
    New,
    /// The certificate was replaced; the agent key pin stays.
    CertificateReplaced,
    /// The certificate and the agent key pin were replaced.
    CertificateAndAgentKeyReplaced,
}

/// What a check-in reports, stored as the host's latest state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckinRecord<'a> {
    /// Agent version.
    pub agent_version: &'a str,
    /// The agent's clock.
    pub agent_time_ms: i64,
    /// The summary, as JSON.
    pub summary: &'a str,
    /// The agent's chain head.
    pub reported_head: Option<&'a ChainHead>,
}

const HOST_COLUMNS: &str = "id, site_id, host_id, agent_key, head_seq, head_digest";

/// The host a certificate fingerprint identifies.
pub fn by_fingerprint(conn: &Connection, fingerprint: &str) -> Result<Option<Host>, DbError> {
    let mut statement = conn.prepare_cached(&format!(
        "SELECT {HOST_COLUMNS} FROM hosts WHERE cert_fingerprint = ?1"
    ))?;
    let host = statement
        .query_row(params![fingerprint], host_from_row)
        .optional()?;
    host.transpose()
}

/// The host with this site and host id.
pub fn by_name(conn: &Connection, site_id: &str, host_id: &str) -> Result<Option<Host>, DbError> {
    let mut statement = conn.prepare_cached(&format!(
        "SELECT {HOST_COLUMNS} FROM hosts WHERE site_id = ?1 AND host_id = ?2"
    ))?;
    let host = statement
        .query_row(params![site_id, host_id], host_from_row)
        .optional()?;
    host.transpose()
}

/// The host with this site and host id, or [`DbError::NotEnrolled`].
pub fn require(conn: &Connection, site_id: &str, host_id: &str) -> Result<Host, DbError> {
    by_name(conn, site_id, host_id)?.ok_or_else(|| DbError::NotEnrolled {
        site_id: site_id.to_string(),
        host_id: host_id.to_string(),
    })
}

/// Every host, by site and host id.
pub fn list(conn: &Connection) -> Result<Vec<HostStatus>, DbError> {
    let mut statement = conn.prepare(&format!(
        "SELECT {HOST_COLUMNS}, cert_fingerprint, enrolled_at_ms, last_checkin_ms, agent_version,
                summary, reported_head_seq, reported_head_digest, checkpoint_seq, checkpoint_digest
         FROM hosts ORDER BY site_id, host_id"
    ))?;
    let rows = statement.query_map([], |row| {
        Ok((
            host_from_row(row)?,
            HostStatusTail {
                fingerprint: row.get(6)?,
                enrolled_at_ms: row.get(7)?,
                last_checkin_ms: row.get(8)?,
                agent_version: row.get(9)?,
                summary: row.get(10)?,
                reported_head: head_of(row.get(11)?, row.get(12)?),
                checkpoint: head_of(row.get(13)?, row.get(14)?),
            },
        ))
    })?;
    let mut res = Vec::new();
    for row in rows {
        let (host, tail) = row?;
        res.push(HostStatus {
            host: host?,
            fingerprint: tail.fingerprint,
            enrolled_at_ms: tail.enrolled_at_ms,
            last_checkin_ms: tail.last_checkin_ms,
            agent_version: tail.agent_version,
            summary: tail.summary,
            reported_head: tail.reported_head.transpose()?,
            checkpoint: tail.checkpoint.transpose()?,
        });
    }
    Ok(res)
}

/// Enrolls a host or replaces its certificate, by `policy`; call inside a transaction.
pub fn enroll(
    conn: &Connection,
    enrollment: &Enrollment,
    policy: Reenroll,
    now_ms: i64,
) -> Result<Enrolled, DbError> {
    let existing = by_name(conn, &enrollment.site_id, &enrollment.host_id)?;
    let Some(existing) = existing else {
        conn.prepare_cached(
            "INSERT INTO hosts (site_id, host_id, cert_fingerprint, enrolled_at_ms, agent_key,
                                agent_key_pinned_at_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, CASE WHEN ?5 IS NULL THEN NULL ELSE ?4 END)",
        )?
        .execute(params![
            enrollment.site_id,
            enrollment.host_id,
            enrollment.fingerprint,
            now_ms,
            enrollment.agent_key,
        ])?;
        let detail = match &enrollment.agent_key {
            Some(key) => format!(
                "certificate {}, agent key {key} pinned",
                enrollment.fingerprint
            ),
            None => format!("certificate {}", enrollment.fingerprint),
        };
        db::audit(
            conn,
            now_ms,
            "enroll",
            Some(&enrollment.site_id),
            Some(&enrollment.host_id),
            &detail,
        )?;
        return Ok(Enrolled::New);
    };
    let already = || DbError::AlreadyEnrolled {
        site_id: enrollment.site_id.clone(),
        host_id: enrollment.host_id.clone(),
    };
    match policy {
        Reenroll::Refuse => Err(already()),
        Reenroll::ReplaceCertificate => {
            let key_conflict = matches!(
                (&existing.agent_key, &enrollment.agent_key),
                (Some(pinned), Some(new)) if pinned != new
            );
            if key_conflict {
                return Err(DbError::AgentKeyPinned {
                    site_id: enrollment.site_id.clone(),
                    host_id: enrollment.host_id.clone(),
                });
            }
            // A key given for a host without a pin is pinned now; a pin is never touched.
            conn.prepare_cached(
                "UPDATE hosts SET cert_fingerprint = ?2,
                    agent_key = COALESCE(agent_key, ?3),
                    agent_key_pinned_at_ms = CASE WHEN agent_key IS NULL AND ?3 IS NOT NULL
                        THEN ?4 ELSE agent_key_pinned_at_ms END
                 WHERE id = ?1",
            )?
            .execute(params![
                existing.id,
                enrollment.fingerprint,
                enrollment.agent_key,
                now_ms
            ])?;
            db::audit(
                conn,
                now_ms,
                "replace-certificate",
                Some(&enrollment.site_id),
                Some(&enrollment.host_id),
                &format!("new certificate {}", enrollment.fingerprint),
            )?;
            Ok(Enrolled::CertificateReplaced)
        }
        Reenroll::DangerReplaceCertificateAndAgentKey => {
            conn.prepare_cached(
                "UPDATE hosts SET cert_fingerprint = ?2, agent_key = ?3,
                    agent_key_pinned_at_ms = CASE WHEN ?3 IS NULL THEN NULL ELSE ?4 END
                 WHERE id = ?1",
            )?
            .execute(params![
                existing.id,
                enrollment.fingerprint,
                enrollment.agent_key,
                now_ms
            ])?;
            db::audit(
                conn,
                now_ms,
                "danger-replace-agent-key",
                Some(&enrollment.site_id),
                Some(&enrollment.host_id),
                &format!(
                    "new certificate {}, agent key {} replaced by {}",
                    enrollment.fingerprint,
                    existing.agent_key.as_deref().unwrap_or("(none)"),
                    enrollment
                        .agent_key
                        .as_deref()
                        .unwrap_or("(none: pinned at the next check-in)")
                ),
            )?;
            Ok(Enrolled::CertificateAndAgentKeyReplaced)
        }
    }
}

/// Pins an agent key on a host that has none (the first check-in).
pub fn pin_agent_key(
    conn: &Connection,
    id: i64,
    agent_key: &str,
    now_ms: i64,
) -> Result<(), DbError> {
    let changed = conn
        .prepare_cached(
            "UPDATE hosts SET agent_key = ?2, agent_key_pinned_at_ms = ?3
             WHERE id = ?1 AND agent_key IS NULL",
        )?
        .execute(params![id, agent_key, now_ms])?;
    if changed != 1 {
        return Err(DbError::Corrupt(format!(
            "host {id} has no row without a pinned key"
        )));
    }
    Ok(())
}

/// Stores what a check-in reported.
pub fn record_checkin(
    conn: &Connection,
    id: i64,
    record: &CheckinRecord<'_>,
    now_ms: i64,
) -> Result<(), DbError> {
    conn.prepare_cached(
        "UPDATE hosts SET last_checkin_ms = ?2, agent_version = ?3, agent_time_ms = ?4,
            summary = ?5, reported_head_seq = ?6, reported_head_digest = ?7
         WHERE id = ?1",
    )?
    .execute(params![
        id,
        now_ms,
        record.agent_version,
        record.agent_time_ms,
        record.summary,
        record
            .reported_head
            .map(|it| seq_to_sql(it.seq))
            .transpose()?,
        record.reported_head.map(|it| it.digest.as_str()),
    ])?;
    Ok(())
}

/// The stored evidence head of a host.
pub fn head(conn: &Connection, id: i64) -> Result<Option<ChainHead>, DbError> {
    let found = conn
        .prepare_cached("SELECT head_seq, head_digest FROM hosts WHERE id = ?1")?
        .query_row(params![id], |row| Ok(head_of(row.get(0)?, row.get(1)?)))
        .optional()?;
    match found {
        Some(head) => head.transpose(),
        None => Err(DbError::Corrupt(format!("host {id} vanished"))),
    }
}

/// The agent key pinned on a host now.
pub fn agent_key(conn: &Connection, id: i64) -> Result<Option<String>, DbError> {
    let found = conn
        .prepare_cached("SELECT agent_key FROM hosts WHERE id = ?1")?
        .query_row(params![id], |row| row.get(0))
        .optional()?;
    found.ok_or_else(|| DbError::Corrupt(format!("host {id} vanished")))
}

/// Moves the stored evidence head.
pub fn set_head(conn: &Connection, id: i64, head: &ChainHead) -> Result<(), DbError> {
    conn.prepare_cached("UPDATE hosts SET head_seq = ?2, head_digest = ?3 WHERE id = ?1")?
        .execute(params![id, seq_to_sql(head.seq)?, head.digest])?;
    Ok(())
}

/// Stores an accepted checkpoint (its pinned head and the envelope's canonical bytes).
pub fn record_checkpoint(
    conn: &Connection,
    id: i64,
    pinned: &ChainHead,
    envelope: &[u8],
    now_ms: i64,
) -> Result<(), DbError> {
    conn.prepare_cached(
        "UPDATE hosts SET checkpoint_seq = ?2, checkpoint_digest = ?3, checkpoint_at_ms = ?4,
            checkpoint_envelope = ?5
         WHERE id = ?1",
    )?
    .execute(params![
        id,
        seq_to_sql(pinned.seq)?,
        pinned.digest,
        now_ms,
        envelope
    ])?;
    Ok(())
}

/// The last accepted checkpoint's pinned head.
pub fn checkpoint(conn: &Connection, id: i64) -> Result<Option<ChainHead>, DbError> {
    let found = conn
        .prepare_cached("SELECT checkpoint_seq, checkpoint_digest FROM hosts WHERE id = ?1")?
        .query_row(params![id], |row| Ok(head_of(row.get(0)?, row.get(1)?)))
        .optional()?;
    match found {
        Some(head) => head.transpose(),
        None => Err(DbError::Corrupt(format!("host {id} vanished"))),
    }
}

/// A seq as SQLite stores it (a signed 64-bit integer).
pub fn seq_to_sql(seq: u64) -> Result<i64, DbError> {
    i64::try_from(seq).map_err(|_| DbError::Corrupt(format!("seq {seq} does not fit SQLite")))
}

/// A seq read back from SQLite.
pub fn seq_from_sql(seq: i64) -> Result<u64, DbError> {
    u64::try_from(seq).map_err(|_| DbError::Corrupt(format!("negative seq {seq}")))
}

struct HostStatusTail {
    fingerprint: String,
    enrolled_at_ms: i64,
    last_checkin_ms: Option<i64>,
    agent_version: Option<String>,
    summary: Option<String>,
    reported_head: Option<Result<ChainHead, DbError>>,
    checkpoint: Option<Result<ChainHead, DbError>>,
}

fn host_from_row(row: &Row<'_>) -> rusqlite::Result<Result<Host, DbError>> {
    let id = row.get(0)?;
    let site_id = row.get(1)?;
    let host_id = row.get(2)?;
    let agent_key = row.get(3)?;
    let head = head_of(row.get(4)?, row.get(5)?).transpose();
    Ok(head.map(|head| Host {
        id,
        site_id,
        host_id,
        agent_key,
        head,
    }))
}

fn head_of(seq: Option<i64>, digest: Option<String>) -> Option<Result<ChainHead, DbError>> {
    match (seq, digest) {
        (Some(seq), Some(digest)) => Some(seq_from_sql(seq).map(|seq| ChainHead { seq, digest })),
        _ => None,
    }
}
