//! The operator command line, run as a binary: exit statuses, messages, file modes, and
//! `evidence verify` on chains stored intact, edited and cut.
//!
//! Evidence is put into the database through the library (as the server stores it), so these
//! tests need no server.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use ed25519_dalek::SigningKey;
use jiff::Timestamp;
use msp_compliance_protocol::api::ChainHead;
use msp_compliance_protocol::dsse;
use msp_compliance_protocol::evidence::{Author, Draft, Position, RecordKind, seal};
use msp_mcp::db::evidence::StoredRecord;
use msp_mcp::db::{self, hosts};
use serde_json::json;

const BINARY: &str = env!("CARGO_BIN_EXE_msp-mcp");

fn run(state: &Path, args: &[&str]) -> Output {
    Command::new(BINARY)
        .arg("--state-dir")
        .arg(state)
        .args(args)
        .output()
        .unwrap()
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).to_string()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).to_string()
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

fn initialised() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let out = run(
        &state,
        &[
            "init",
            "--server-name",
            "mcp.example.org",
            "--server-name",
            "10.0.0.5",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    (dir, state)
}

fn enroll(state: &Path, host: &str, out: &Path, extra: &[&str]) -> Output {
    let mut args = vec![
        "enroll",
        "--site",
        "clinic-a",
        "--host",
        host,
        "--out",
        out.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    run(state, &args)
}

#[test]
fn init_creates_private_state_and_refuses_to_overwrite_it() {
    let (_dir, state) = initialised();
    assert_eq!(mode(&state), 0o700);
    for (name, expected) in [
        ("order-signing.key", 0o600),
        ("order-signing.key.pub", 0o644),
        ("ca.key", 0o600),
        ("ca.pem", 0o644),
        ("server.key", 0o600),
        ("server.pem", 0o644),
        ("mcp.db", 0o600),
    ] {
        assert_eq!(mode(&state.join(name)), expected, "{name}");
    }
    let key_before = std::fs::read(state.join("order-signing.key")).unwrap();
    let out = run(&state, &["init"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("already initialised"),
        "{}",
        stderr(&out)
    );
    assert_eq!(
        std::fs::read(state.join("order-signing.key")).unwrap(),
        key_before
    );

    // A service may run `init --existing-ok` before every start.
    let out = run(&state, &["init", "--existing-ok"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(stdout(&out).contains("already initialised; keeping it"));
    assert_eq!(
        std::fs::read(state.join("order-signing.key")).unwrap(),
        key_before
    );
    // Not when the directory is only partly there.
    std::fs::remove_file(state.join("server.pem")).unwrap();
    let out = run(&state, &["init", "--existing-ok"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("already initialised"),
        "{}",
        stderr(&out)
    );

    let dir = tempfile::tempdir().unwrap();
    let out = run(
        &dir.path().join("s"),
        &["init", "--server-name", "not a name"],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("neither a DNS name nor an IP address"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn enroll_writes_a_bundle_with_a_private_key_and_refuses_to_re_enroll() {
    let (dir, state) = initialised();
    let out_dir = dir.path().join("bundle");
    let out = enroll(&state, "nixos-1", &out_dir, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).starts_with("enrolled clinic-a/nixos-1: certificate sha256 "));
    assert_eq!(mode(&out_dir), 0o700);
    assert_eq!(mode(&out_dir.join("client.key")), 0o600);
    assert_eq!(mode(&out_dir.join("client.pem")), 0o644);
    assert_eq!(
        std::fs::read(out_dir.join("ca.pem")).unwrap(),
        std::fs::read(state.join("ca.pem")).unwrap()
    );

    let again = dir.path().join("again");
    let out = enroll(&state, "nixos-1", &again, &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("already enrolled"),
        "{}",
        stderr(&out)
    );
    assert!(!again.join("client.key").exists());
    // The bundle directory is never overwritten either.
    let out = enroll(&state, "nixos-2", &out_dir, &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("refusing to overwrite"),
        "{}",
        stderr(&out)
    );

    let out = enroll(&state, "nixos-1", &again, &["--danger-replace-agent-key"]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "the danger flag needs --replace-certificate"
    );
    let out = enroll(&state, "nixos-1", &again, &["--replace-certificate"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).starts_with("replaced the certificate of clinic-a/nixos-1"));

    let hosts = run(&state, &["hosts"]);
    assert!(
        stdout(&hosts).contains("clinic-a  nixos-1"),
        "{}",
        stdout(&hosts)
    );
    assert!(stdout(&hosts).contains("not pinned"), "{}", stdout(&hosts));
}

#[test]
fn enroll_pins_a_given_agent_key_and_refuses_private_keys() {
    let (dir, state) = initialised();
    let key = SigningKey::from_bytes(&[5; 32]);
    let public = dir.path().join("agent.key.pub");
    std::fs::write(
        &public,
        format!(
            "{}\n",
            msp_mcp::keys::encode_public_key(&key.verifying_key())
        ),
    )
    .unwrap();
    let private = dir.path().join("agent.key");
    std::fs::write(&private, "msp-compliance-ed25519-v1 c2VjcmV0\n").unwrap();
    let out = enroll(
        &state,
        "nixos-1",
        &dir.path().join("b0"),
        &["--agent-key", private.to_str().unwrap()],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("private key file"),
        "{}",
        stderr(&out)
    );
    assert!(!stderr(&out).contains("c2VjcmV0"));

    let out = enroll(
        &state,
        "nixos-1",
        &dir.path().join("b1"),
        &["--agent-key", public.to_str().unwrap()],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let hosts = stdout(&run(&state, &["hosts"]));
    let keyid = dsse::keyid(&key.verifying_key());
    assert!(hosts.contains(&keyid[..16]), "{hosts}");
}

#[test]
fn order_create_validates_and_prints_the_order_id() {
    let (dir, state) = initialised();
    assert!(
        enroll(&state, "nixos-1", &dir.path().join("b"), &[])
            .status
            .success()
    );
    let create = |extra: &[&str]| {
        let mut args = vec![
            "order",
            "create",
            "--site",
            "clinic-a",
            "--action",
            "run-checks",
        ];
        args.extend_from_slice(extra);
        run(&state, &args)
    };
    for (extra, message) in [
        (
            &["--host", "nixos-1", "--params", "[1]"][..],
            "expected a JSON object",
        ),
        (&["--host", "nixos-1", "--params", "{"], "not valid JSON"),
        (&["--host", "nixos-9"], "clinic-a/nixos-9 is not enrolled"),
        (&["--host", "nixos-1", "--ttl", "25h"], "ttl:"),
        (&["--host", "nixos-1", "--ttl", "soon"], "is not a duration"),
    ] {
        let out = create(extra);
        assert_eq!(out.status.code(), Some(2), "{extra:?}");
        assert!(
            stderr(&out).contains(message),
            "{extra:?}: {}",
            stderr(&out)
        );
    }
    let out = create(&["--host", "nixos-1", "--ttl", "1h", "--disruptive"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let order_id = stdout(&out).trim().to_string();
    assert!(
        order_id.starts_with("o-") && order_id.len() == 18,
        "{order_id}"
    );
    let orders = stdout(&run(&state, &["orders", "--site", "clinic-a"]));
    assert!(orders.contains(&order_id), "{orders}");
    assert!(orders.contains("run-checks [disruptive]"), "{orders}");
    assert!(orders.contains("pending"), "{orders}");
    let none = stdout(&run(&state, &["orders", "--host", "nixos-2"]));
    assert!(!none.contains(&order_id), "{none}");

    // A key kept outside the state directory (a systemd credential), in the same format.
    let elsewhere = dir.path().join("order.key");
    msp_mcp::keys::generate_signing_key(&elsewhere).unwrap();
    let out = create(&[
        "--host",
        "nixos-1",
        "--order-key",
        elsewhere.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let order_id = stdout(&out).trim().to_string();
    let conn = db::open(&state.join("mcp.db")).unwrap();
    let stored: Vec<u8> = conn
        .query_row(
            "SELECT envelope FROM orders WHERE order_id = ?1",
            [&order_id],
            |row| row.get(0),
        )
        .unwrap();
    let envelope: dsse::Envelope = serde_json::from_slice(&stored).unwrap();
    let public =
        msp_mcp::keys::load_public_key(&msp_mcp::keys::public_key_path(&elsewhere)).unwrap();
    assert!(dsse::verify(&envelope, &[public]).is_ok());
    let missing = dir.path().join("missing.key");
    let out = create(&[
        "--host",
        "nixos-1",
        "--order-key",
        missing.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn a_database_from_a_newer_msp_mcp_is_refused() {
    let (_dir, state) = initialised();
    let conn = rusqlite::Connection::open(state.join("mcp.db")).unwrap();
    conn.pragma_update(None, "user_version", db::schema_version() + 1)
        .unwrap();
    drop(conn);
    let out = run(&state, &["hosts"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("newer than this msp-mcp knows"),
        "{}",
        stderr(&out)
    );
    let uninitialised = tempfile::tempdir().unwrap();
    let out = run(uninitialised.path(), &["hosts"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("run `msp-mcp init` first"),
        "{}",
        stderr(&out)
    );
}

/// Enrolls a host through the library, pins `key` and stores a chain of `n` records as the
/// server does.
fn stored_chain(state: &Path, key: &SigningKey, n: u64) {
    let state_dir = msp_mcp::state::StateDir::new(state);
    msp_mcp::enroll::enroll_in_memory(
        &state_dir,
        &[msp_mcp::enroll::EnrollRequest {
            site_id: "clinic-a".into(),
            host_id: "nixos-1".into(),
            agent_key: Some(key.verifying_key()),
            policy: hosts::Reenroll::Refuse,
        }],
        Timestamp::now(),
    )
    .unwrap();
    let conn = db::open(&state_dir.database()).unwrap();
    let host = hosts::require(&conn, "clinic-a", "nixos-1").unwrap();
    let author = Author {
        site_id: Some("clinic-a".into()),
        host_id: "nixos-1".into(),
        agent_version: "0.1.0".into(),
    };
    let mut prev = None;
    for seq in 0..n {
        let draft = Draft {
            kind: RecordKind::Check,
            baseline: None,
            controls: vec![],
            body: json!({"n": seq}),
        };
        let envelope = seal(
            &draft,
            &Position {
                seq,
                prev: prev.clone(),
            },
            &author,
            Timestamp::now(),
            key,
        )
        .unwrap();
        let digest = dsse::digest(&envelope);
        db::evidence::insert(
            &conn,
            host.id,
            &StoredRecord {
                seq,
                digest: digest.clone(),
                envelope: dsse::canonical_bytes(&envelope),
            },
            0,
        )
        .unwrap();
        hosts::set_head(
            &conn,
            host.id,
            &ChainHead {
                seq,
                digest: digest.clone(),
            },
        )
        .unwrap();
        prev = Some(digest);
    }
}

fn verify(state: &Path) -> Output {
    run(
        state,
        &[
            "evidence", "verify", "--site", "clinic-a", "--host", "nixos-1",
        ],
    )
}

#[test]
fn evidence_verify_finds_edited_and_missing_records() {
    let (_dir, state) = initialised();
    let key = SigningKey::from_bytes(&[7; 32]);
    stored_chain(&state, &key, 50);
    let out = verify(&state);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stdout(&out).starts_with("ok: clinic-a/nixos-1: 50 records, seq 0..=49"),
        "{}",
        stdout(&out)
    );

    let conn = rusqlite::Connection::open(state.join("mcp.db")).unwrap();
    // An edited row whose digest column was "fixed up" too: the signature catches it.
    let (envelope, seq): (Vec<u8>, i64) = conn
        .query_row(
            "SELECT envelope, seq FROM evidence WHERE seq = 20",
            [],
            |row| Ok((row.get(0)?, row.get(1)?)),
        )
        .unwrap();
    let mut parsed: dsse::Envelope = serde_json::from_slice(&envelope).unwrap();
    parsed.payload = parsed.payload.replacen('A', "B", 1);
    let edited = dsse::canonical_bytes(&parsed);
    conn.execute(
        "UPDATE evidence SET envelope = ?1, digest = ?2 WHERE seq = ?3",
        rusqlite::params![edited, dsse::digest(&parsed), seq],
    )
    .unwrap();
    let out = verify(&state);
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    assert!(stdout(&out).contains("record #20"), "{}", stdout(&out));
    // The original bytes back, but a digest column that does not match them.
    conn.execute(
        "UPDATE evidence SET envelope = ?1, digest = 'sha256:00' WHERE seq = 20",
        [&envelope],
    )
    .unwrap();
    let out = verify(&state);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stdout(&out).contains("seq 20: stored digest"),
        "{}",
        stdout(&out)
    );

    // Seq 20 as it was; then a record deleted in the middle.
    let original: dsse::Envelope = serde_json::from_slice(&envelope).unwrap();
    conn.execute(
        "UPDATE evidence SET digest = ?1 WHERE seq = 20",
        [dsse::digest(&original)],
    )
    .unwrap();
    assert_eq!(verify(&state).status.code(), Some(0));
    conn.execute("DELETE FROM evidence WHERE seq = 30", [])
        .unwrap();
    let out = verify(&state);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stdout(&out).contains("records 30 are missing"),
        "{}",
        stdout(&out)
    );

    let exported = run(
        &state,
        &[
            "evidence", "export", "--site", "clinic-a", "--host", "nixos-1", "--since", "45",
        ],
    );
    assert!(exported.status.success());
    assert_eq!(stdout(&exported).lines().count(), 5);
}

#[test]
fn evidence_verify_needs_a_pinned_key() {
    let (dir, state) = initialised();
    assert!(
        enroll(&state, "nixos-1", &dir.path().join("b"), &[])
            .status
            .success()
    );
    let out = verify(&state);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("no pinned agent key"),
        "{}",
        stderr(&out)
    );
}
