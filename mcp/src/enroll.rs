//! Enrollment: a client certificate for a host, its bundle for the agent (`client.pem`,
//! `client.key`, `ca.pem`), and the host's row (certificate fingerprint, optional agent key).
//!
//! Re-enrolling a host refuses unless the operator asks to replace the certificate; the pinned
//! agent key survives that, and only `--danger-replace-agent-key` replaces it (recorded in the
//! audit table). Bundle files are created exclusively and removed again if the database refuses,
//! so a failed enrollment leaves no certificate behind that the server does not know.

use std::path::{Path, PathBuf};

use ed25519_dalek::VerifyingKey;
use jiff::Timestamp;
use msp_compliance_protocol::order::is_token;

use crate::db::hosts::{self, Enrolled, Enrollment, Reenroll};
use crate::db::{self, DbError};
use crate::files::{self, FileError, PUBLIC_MODE, SECRET_MODE};
use crate::keys;
use crate::pki::{Issued, PkiError};
use crate::state::{AuthorityError, StateDir};

/// Names of the bundle files.
pub const CLIENT_CERTIFICATE_FILE: &str = "client.pem";
/// The client key (mode 0600).
pub const CLIENT_KEY_FILE: &str = "client.key";
/// The CA certificate the agent pins.
pub const CA_CERTIFICATE_FILE: &str = "ca.pem";

/// An enrollment that could not be done.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EnrollError {
    /// The CA could not be loaded.
    #[error(transparent)]
    Authority(#[from] AuthorityError),
    /// The database refused (already enrolled, another key pinned) or failed.
    #[error(transparent)]
    Database(#[from] DbError),
    /// A bundle file could not be written.
    #[error(transparent)]
    File(#[from] FileError),
    /// A site or host id is not a token.
    #[error("{field}: {value:?} is not 1-64 of [A-Za-z0-9._-] (not starting with . or -)")]
    Name {
        /// Which argument.
        field: &'static str,
        /// Its value.
        value: String,
    },
    /// The certificate could not be made.
    #[error(transparent)]
    Pki(#[from] PkiError),
}

/// Who to enroll, and what to do if they are enrolled already.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EnrollRequest {
    /// Site id.
    pub site_id: String,
    /// Host id.
    pub host_id: String,
    /// The agent's evidence key, to pin now.
    pub agent_key: Option<VerifyingKey>,
    /// Re-enrollment policy.
    pub policy: Reenroll,
}

/// What an enrollment did.
#[derive(Debug)]
pub struct EnrollOutcome {
    /// New host or which replacement.
    pub enrolled: Enrolled,
    /// Fingerprint of the new certificate.
    pub fingerprint: String,
    /// The bundle files written.
    pub files: Vec<PathBuf>,
}

/// Enrolls a host and writes its bundle into `out_dir` (created 0700 if missing).
pub fn enroll(
    state: &StateDir,
    request: &EnrollRequest,
    out_dir: &Path,
    now: Timestamp,
) -> Result<EnrollOutcome, EnrollError> {
    check_names(request)?;
    let mut conn = db::open(&state.database())?;
    // Refuse before writing anything; the transaction below decides again, race-free.
    if request.policy == Reenroll::Refuse
        && hosts::by_name(&conn, &request.site_id, &request.host_id)?.is_some()
    {
        return Err(DbError::AlreadyEnrolled {
            site_id: request.site_id.clone(),
            host_id: request.host_id.clone(),
        }
        .into());
    }
    let authority = state.authority()?;
    let issued = authority.issue_client(&request.site_id, &request.host_id, now)?;
    let ca_pem = files::read_public(&state.ca_certificate())?;
    files::ensure_private_dir(out_dir)?;
    let bundle = [
        (
            out_dir.join(CLIENT_CERTIFICATE_FILE),
            issued.certificate_pem.as_bytes(),
            PUBLIC_MODE,
        ),
        (
            out_dir.join(CLIENT_KEY_FILE),
            issued.key_pem.as_bytes(),
            SECRET_MODE,
        ),
        (out_dir.join(CA_CERTIFICATE_FILE), &ca_pem[..], PUBLIC_MODE),
    ];
    for (path, _, _) in &bundle {
        if path.symlink_metadata().is_ok() {
            return Err(FileError::Exists { path: path.clone() }.into());
        }
    }
    let mut written = Vec::new();
    let res = (|| -> Result<Enrolled, EnrollError> {
        for (path, bytes, mode) in &bundle {
            files::write_new(path, bytes, *mode)?;
            written.push(path.clone());
        }
        files::sync_dir(out_dir);
        let tx = conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(DbError::from)?;
        let enrolled = hosts::enroll(
            &tx,
            &enrollment(request, &issued),
            request.policy,
            now.as_millisecond(),
        )?;
        tx.commit().map_err(DbError::from)?;
        Ok(enrolled)
    })();
    match res {
        Ok(enrolled) => Ok(EnrollOutcome {
            enrolled,
            fingerprint: issued.fingerprint,
            files: written,
        }),
        Err(err) => {
            for path in &written {
                let _ = std::fs::remove_file(path);
            }
            Err(err)
        }
    }
}

/// Enrolls many hosts at once and returns their certificates and keys instead of writing
/// bundles: for load generators and tooling that hold the credentials in memory. One
/// transaction for all; new hosts only.
pub fn enroll_in_memory(
    state: &StateDir,
    requests: &[EnrollRequest],
    now: Timestamp,
) -> Result<Vec<Issued>, EnrollError> {
    for request in requests {
        check_names(request)?;
    }
    let authority = state.authority()?;
    let mut conn = db::open(&state.database())?;
    let mut issued = Vec::with_capacity(requests.len());
    for request in requests {
        issued.push(authority.issue_client(&request.site_id, &request.host_id, now)?);
    }
    let tx = conn
        .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
        .map_err(DbError::from)?;
    for (request, issued) in requests.iter().zip(&issued) {
        hosts::enroll(
            &tx,
            &enrollment(request, issued),
            Reenroll::Refuse,
            now.as_millisecond(),
        )?;
    }
    tx.commit().map_err(DbError::from)?;
    Ok(issued)
}

fn enrollment(request: &EnrollRequest, issued: &Issued) -> Enrollment {
    Enrollment {
        site_id: request.site_id.clone(),
        host_id: request.host_id.clone(),
        fingerprint: issued.fingerprint.clone(),
        agent_key: request.agent_key.as_ref().map(keys::encode_public_key),
    }
}

fn check_names(request: &EnrollRequest) -> Result<(), EnrollError> {
    for (field, value) in [("site", &request.site_id), ("host", &request.host_id)] {
        if !is_token(value) {
            return Err(EnrollError::Name {
                field,
                value: value.clone(),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use ed25519_dalek::SigningKey;

    use super::*;
    use crate::state;

    fn setup() -> (tempfile::TempDir, StateDir) {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::new(&dir.path().join("state"));
        state::init(&state, &["localhost".into()], Timestamp::now()).unwrap();
        (dir, state)
    }

    fn request(policy: Reenroll, key: Option<u8>) -> EnrollRequest {
        EnrollRequest {
            site_id: "clinic-a".into(),
            host_id: "nixos-1".into(),
            agent_key: key.map(|it| SigningKey::from_bytes(&[it; 32]).verifying_key()),
            policy,
        }
    }

    #[test]
    fn enroll_writes_a_private_bundle_and_refuses_a_second_time() {
        let (dir, state) = setup();
        let out = dir.path().join("bundle");
        let outcome = enroll(
            &state,
            &request(Reenroll::Refuse, Some(1)),
            &out,
            Timestamp::now(),
        )
        .unwrap();
        assert_eq!(outcome.enrolled, Enrolled::New);
        let mode = |name: &str| {
            std::fs::metadata(out.join(name))
                .unwrap()
                .permissions()
                .mode()
                & 0o777
        };
        assert_eq!(mode(CLIENT_KEY_FILE), 0o600);
        assert_eq!(mode(CLIENT_CERTIFICATE_FILE), 0o644);
        assert_eq!(
            std::fs::read(out.join(CA_CERTIFICATE_FILE)).unwrap(),
            std::fs::read(state.ca_certificate()).unwrap()
        );
        let other = dir.path().join("bundle2");
        let err = enroll(
            &state,
            &request(Reenroll::Refuse, None),
            &other,
            Timestamp::now(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("already enrolled"), "{err}");
        assert!(!other.join(CLIENT_KEY_FILE).exists());
    }

    #[test]
    fn replacing_a_certificate_keeps_the_key_pin_unless_told_otherwise() {
        let (dir, state) = setup();
        let first = enroll(
            &state,
            &request(Reenroll::Refuse, Some(1)),
            &dir.path().join("b1"),
            Timestamp::now(),
        )
        .unwrap();
        let err = enroll(
            &state,
            &request(Reenroll::ReplaceCertificate, Some(2)),
            &dir.path().join("b2"),
            Timestamp::now(),
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("--danger-replace-agent-key"),
            "{err}"
        );
        assert!(
            !dir.path().join("b2").join(CLIENT_KEY_FILE).exists(),
            "files removed"
        );
        let second = enroll(
            &state,
            &request(Reenroll::ReplaceCertificate, None),
            &dir.path().join("b3"),
            Timestamp::now(),
        )
        .unwrap();
        assert_ne!(first.fingerprint, second.fingerprint);
        let conn = db::open(&state.database()).unwrap();
        let host = hosts::require(&conn, "clinic-a", "nixos-1").unwrap();
        let pinned = keys::encode_public_key(&SigningKey::from_bytes(&[1; 32]).verifying_key());
        assert_eq!(host.agent_key.as_deref(), Some(pinned.as_str()));
        assert!(
            hosts::by_fingerprint(&conn, &first.fingerprint)
                .unwrap()
                .is_none()
        );
        enroll(
            &state,
            &request(Reenroll::DangerReplaceCertificateAndAgentKey, Some(2)),
            &dir.path().join("b4"),
            Timestamp::now(),
        )
        .unwrap();
        let host = hosts::require(&conn, "clinic-a", "nixos-1").unwrap();
        let replaced = keys::encode_public_key(&SigningKey::from_bytes(&[2; 32]).verifying_key());
        assert_eq!(host.agent_key.as_deref(), Some(replaced.as_str()));
        let events: Vec<String> = conn
            .prepare("SELECT event FROM audit ORDER BY id")
            .unwrap()
            .query_map([], |row| row.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(
            events,
            ["enroll", "replace-certificate", "danger-replace-agent-key"]
        );
    }

    #[test]
    fn names_must_be_tokens() {
        let (dir, state) = setup();
        let mut bad = request(Reenroll::Refuse, None);
        bad.host_id = "../etc".into();
        let err = enroll(&state, &bad, &dir.path().join("b"), Timestamp::now()).unwrap_err();
        assert!(err.to_string().starts_with("host: "), "{err}");
    }
}
