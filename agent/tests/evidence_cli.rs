//! The evidence commands as an operator and an auditor meet them: `keygen`, `check` recording
//! evidence, `evidence verify|export|checkpoint`, and every kind of damage `evidence verify`
//! must name precisely (tampered payload, bad signature, gap, reorder, truncation against a
//! signed checkpoint, unknown key) with exit status 1.
//!
//! Stores are damaged with SQL the way an attacker with file access would: rewriting a row and
//! its digest column together, deleting rows, swapping rows.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use msp_compliance_protocol::dsse::{self, Envelope};
use sha2::{Digest, Sha256};

const FIXTURE_HOST: &str = "tests/fixtures/hosts/nixos-site";

fn agent_command(args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_msp-compliance-agent"));
    command
        .args(args)
        .env_remove("MSP_REAL_TOOLS")
        .env_remove("CREDENTIALS_DIRECTORY");
    command
}

fn agent(args: &[&str]) -> Output {
    agent_command(args).output().expect("the agent binary runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("test paths are UTF-8")
}

fn fixture_host() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(FIXTURE_HOST)
        .display()
        .to_string()
}

/// A key, a store with `n` records signed by it, and a configuration naming both.
struct Chain {
    dir: tempfile::TempDir,
}

impl Chain {
    fn new(n: u64) -> Chain {
        let dir = tempfile::tempdir().unwrap();
        let chain = Chain { dir };
        let out = agent(&["keygen", "--output", path_str(&chain.key())]);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
        let config = format!(
            r#"{{"site_id":"clinic-a","host_id":"nixos-1","state_dir":"{}","evidence":{{"signing_key_file":"{}"}}}}"#,
            chain.dir.path().join("state").display(),
            chain.key().display()
        );
        std::fs::write(chain.config(), config).unwrap();
        if n > 0 {
            chain.append(n);
        }
        chain
    }

    fn key(&self) -> PathBuf {
        self.dir.path().join("signing.key")
    }

    fn pubkey(&self) -> PathBuf {
        self.dir.path().join("signing.key.pub")
    }

    fn config(&self) -> PathBuf {
        self.dir.path().join("agent.json")
    }

    fn store(&self) -> PathBuf {
        self.dir.path().join("state/evidence.sqlite")
    }

    fn append(&self, n: u64) {
        std::fs::create_dir_all(self.dir.path().join("state")).unwrap();
        let out = agent(&[
            "evidence",
            "stress-append",
            "--store",
            path_str(&self.store()),
            "--key",
            path_str(&self.key()),
            "--count",
            &n.to_string(),
            "--batch",
            "7",
        ]);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    }

    fn verify(&self, extra: &[&str]) -> Output {
        let (store, pubkey) = (self.store(), self.pubkey());
        let mut args = vec![
            "evidence",
            "verify",
            "--store",
            path_str(&store),
            "--pubkey",
            path_str(&pubkey),
        ];
        args.extend_from_slice(extra);
        agent(&args)
    }

    /// `evidence export` of the whole chain to `path`, as JSON Lines.
    fn export(&self, path: &Path) -> Output {
        agent(&[
            "evidence",
            "export",
            "--config",
            path_str(&self.config()),
            "--since",
            "2000-01-01",
            "--format",
            "jsonl",
            "--output",
            path_str(path),
        ])
    }

    fn sql(&self) -> rusqlite::Connection {
        rusqlite::Connection::open(self.store()).unwrap()
    }

    fn envelope(&self, seq: u64) -> Envelope {
        let bytes: Vec<u8> = self
            .sql()
            .query_row(
                "SELECT envelope FROM records WHERE seq = ?1",
                [seq as i64],
                |row| row.get(0),
            )
            .unwrap();
        serde_json::from_slice(&dsse::stored_to_canonical(&bytes)).unwrap()
    }

    /// Rewrites a row as an attacker would: in the form the agent writes (compact when the
    /// envelope has one, else canonical JSON) with a matching digest column.
    fn replace(&self, seq: u64, envelope: &Envelope) {
        let bytes = dsse::Compact::of(envelope)
            .unwrap_or_else(|| msp_compliance_protocol::jcs::to_vec_of(envelope).unwrap());
        let digest = dsse::digest(envelope);
        self.sql()
            .execute(
                "UPDATE records SET envelope = ?2, digest = ?3 WHERE seq = ?1",
                rusqlite::params![seq as i64, bytes, digest],
            )
            .unwrap();
    }
}

/// Asserts a failed verification naming `expect` (all of them) in its report.
fn assert_fails(out: &Output, expect: &[&str]) {
    let stdout = text(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(1),
        "stdout: {stdout}\nstderr: {}",
        text(&out.stderr)
    );
    assert!(stdout.contains("evidence verify: FAILED"), "{stdout}");
    for it in expect {
        assert!(stdout.contains(it), "{stdout:?} does not contain {it:?}");
    }
}

fn keyid_of(pubkey: &Path) -> String {
    let raw = STANDARD
        .decode(std::fs::read_to_string(pubkey).unwrap().trim())
        .unwrap();
    hex::encode(Sha256::digest(&raw))
}

#[test]
fn keygen_prints_the_public_key_and_keyid_and_never_overwrites() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("k");
    let out = agent(&["keygen", "--output", path_str(&key)]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let public = std::fs::read_to_string(dir.path().join("k.pub")).unwrap();
    assert!(
        stdout.contains(&format!("public key: {}", public.trim())),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("keyid: {}", keyid_of(&dir.path().join("k.pub")))),
        "{stdout}"
    );
    let secret = std::fs::read_to_string(&key).unwrap();
    let seed = secret.split(' ').nth(1).unwrap().trim();
    assert!(!stdout.contains(seed), "keygen printed the private key");
    let mode = |path: &Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&key), 0o600);
    assert_eq!(mode(&dir.path().join("k.pub")), 0o644);

    let again = agent(&["keygen", "--output", path_str(&key)]);
    assert_eq!(again.status.code(), Some(2));
    assert!(
        text(&again.stderr).contains("already exists; refusing to overwrite"),
        "{}",
        text(&again.stderr)
    );
    assert_eq!(std::fs::read_to_string(&key).unwrap(), secret);
}

#[test]
fn check_records_one_record_per_finding_in_one_transaction() {
    let chain = Chain::new(0);
    let config = path_str(&chain.config()).to_string();
    let out = agent(&["check", "--config", &config, "--root", &fixture_host()]);
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("evidence: 6 check records appended to")
            && stdout.contains("in one transaction; head seq 5 sha256:"),
        "{stdout}"
    );
    // JSON output stays pure JSON: the evidence line goes to stderr.
    let out = agent(&[
        "check",
        "--config",
        &config,
        "--root",
        &fixture_host(),
        "--format",
        "json",
    ]);
    serde_json::from_slice::<serde_json::Value>(&out.stdout).expect("stdout is JSON");
    assert!(
        text(&out.stderr).contains("head seq 11 sha256:"),
        "{}",
        text(&out.stderr)
    );
    let out = chain.verify(&[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stdout));
    let stdout = text(&out.stdout);
    assert!(stdout.contains("records: 12 (seq 0 to 11)"), "{stdout}");
    assert!(stdout.contains(&keyid_of(&chain.pubkey())), "{stdout}");

    // Each record is a check record of this site and host, with its finding as the body.
    let envelope = chain.envelope(3);
    let payload = STANDARD.decode(envelope.payload).unwrap();
    let statement: serde_json::Value = serde_json::from_slice(&payload).unwrap();
    let predicate = &statement["predicate"];
    assert_eq!(predicate["kind"], "check");
    assert_eq!(predicate["site_id"], "clinic-a");
    assert_eq!(predicate["host_id"], "nixos-1");
    assert_eq!(predicate["baseline"]["id"], "hipaa");
    assert!(predicate["body"]["check"].is_string());
    assert!(!predicate["controls"].as_array().unwrap().is_empty());
}

#[test]
fn check_without_a_key_says_no_evidence_was_recorded() {
    let out = agent(&["check", "--root", &fixture_host()]);
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("evidence: none recorded: no signing key"),
        "{stdout}"
    );
}

#[test]
fn check_refuses_a_readable_key_before_running() {
    let chain = Chain::new(0);
    std::fs::set_permissions(chain.key(), std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = agent(&[
        "check",
        "--config",
        path_str(&chain.config()),
        "--root",
        &fixture_host(),
    ]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("readable by group or others (mode 0644)"),
        "{stderr}"
    );
    assert!(out.stdout.is_empty(), "checks ran despite the bad key");
}

#[test]
fn the_systemd_credential_is_the_key_when_no_file_is_configured() {
    let dir = tempfile::tempdir().unwrap();
    let credentials = dir.path().join("credentials");
    std::fs::create_dir(&credentials).unwrap();
    let out = agent(&[
        "keygen",
        "--output",
        path_str(&credentials.join("evidence-signing-key")),
    ]);
    assert_eq!(out.status.code(), Some(0));
    let config = dir.path().join("agent.json");
    std::fs::write(
        &config,
        format!(
            r#"{{"site_id":"clinic-a","host_id":"nixos-1","state_dir":"{}"}}"#,
            dir.path().join("state").display()
        ),
    )
    .unwrap();
    let run = |args: &[&str]| {
        agent_command(args)
            .env("CREDENTIALS_DIRECTORY", &credentials)
            .output()
            .unwrap()
    };
    let out = run(&[
        "check",
        "--config",
        path_str(&config),
        "--root",
        &fixture_host(),
    ]);
    assert!(
        text(&out.stdout).contains("evidence: 6 check records appended"),
        "{}",
        text(&out.stdout)
    );
    // Without --pubkey, verify trusts the credential's public half.
    let out = run(&["evidence", "verify", "--config", path_str(&config)]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stdout));
    assert!(text(&out.stdout).contains("records: 6"));
}

#[test]
fn verify_names_a_tampered_payload() {
    let chain = Chain::new(10);
    let mut envelope = chain.envelope(4);
    let payload = STANDARD.decode(&envelope.payload).unwrap();
    let altered = String::from_utf8(payload)
        .unwrap()
        .replace("\"stress\":4", "\"stress\":5");
    envelope.payload = STANDARD.encode(altered);
    chain.replace(4, &envelope);
    assert_fails(
        &chain.verify(&[]),
        &[
            "first bad record: store row seq 4: record #4: signature by key",
            "does not verify (payload or type altered)",
        ],
    );
}

/// Rows written by schema 2 hold canonical JSON: such a store still verifies, exports the same
/// lines, takes new records after them, and tampering in a JSON row is named like any other.
#[test]
fn a_store_of_canonical_json_rows_verifies_exports_and_grows() {
    let chain = Chain::new(10);
    let export = |name: &str| {
        let path = chain.dir.path().join(name);
        let out = chain.export(&path);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
        std::fs::read(path).unwrap()
    };
    let before = export("before.jsonl");
    {
        let sql = chain.sql();
        let rows: Vec<(i64, Vec<u8>)> = sql
            .prepare("SELECT seq, envelope FROM records")
            .unwrap()
            .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        for (seq, stored) in rows {
            assert_eq!(stored[0], dsse::Compact::TAG, "seq {seq}");
            let json = dsse::stored_to_canonical(&stored).into_owned();
            assert!(json.len() > stored.len() * 5 / 4, "seq {seq}");
            sql.execute(
                "UPDATE records SET envelope = ?2 WHERE seq = ?1",
                rusqlite::params![seq, json],
            )
            .unwrap();
        }
        sql.execute_batch("PRAGMA user_version = 2").unwrap();
    }
    let out = chain.verify(&[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stdout));
    assert!(text(&out.stdout).contains("records: 10 (seq 0 to 9)"));
    assert_eq!(export("after.jsonl"), before);
    chain.append(5);
    let out = chain.verify(&[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stdout));
    assert!(text(&out.stdout).contains("records: 15 (seq 0 to 14)"));
    let mut envelope = chain.envelope(6);
    envelope.payload = STANDARD.encode(
        String::from_utf8(STANDARD.decode(&envelope.payload).unwrap())
            .unwrap()
            .replace("\"stress\":6", "\"stress\":7"),
    );
    let json = msp_compliance_protocol::jcs::to_vec_of(&envelope).unwrap();
    chain
        .sql()
        .execute(
            "UPDATE records SET envelope = ?2, digest = ?3 WHERE seq = 6",
            rusqlite::params![
                6,
                json,
                format!("sha256:{}", hex::encode(Sha256::digest(&json)))
            ],
        )
        .unwrap();
    assert_fails(
        &chain.verify(&[]),
        &[
            "first bad record: store row seq 6: record #6: signature by key",
            "does not verify (payload or type altered)",
        ],
    );
}

#[test]
fn verify_names_a_bad_signature() {
    let chain = Chain::new(10);
    let mut envelope = chain.envelope(7);
    let mut sig = STANDARD.decode(&envelope.signatures[0].sig).unwrap();
    sig[10] ^= 0x01;
    envelope.signatures[0].sig = STANDARD.encode(sig);
    chain.replace(7, &envelope);
    assert_fails(
        &chain.verify(&[]),
        &[
            "store row seq 7: record #7: signature by key",
            "does not verify",
        ],
    );
    // A signature that is not even 64 bytes is called malformed.
    envelope.signatures[0].sig = STANDARD.encode([1_u8; 10]);
    chain.replace(7, &envelope);
    assert_fails(
        &chain.verify(&[]),
        &["record #7: signature by key", "is malformed"],
    );
}

#[test]
fn verify_names_a_gap() {
    let chain = Chain::new(10);
    chain
        .sql()
        .execute("DELETE FROM records WHERE seq IN (5, 6)", [])
        .unwrap();
    assert_fails(
        &chain.verify(&[]),
        &["store row seq 7: record #5: seq 7 follows seq 4: records 5..=6 are missing"],
    );
}

#[test]
fn verify_names_a_reorder() {
    let chain = Chain::new(10);
    let (three, four) = (chain.envelope(3), chain.envelope(4));
    // Digests are unique: park row 4's first, as an attacker swapping rows would.
    chain
        .sql()
        .execute("UPDATE records SET digest = 'parked' WHERE seq = 4", [])
        .unwrap();
    chain.replace(3, &four);
    chain.replace(4, &three);
    assert_fails(
        &chain.verify(&[]),
        &[
            "store row seq 3: record #3: seq 4 follows seq 2: records 3 are missing",
            "seq 3 comes later, at store row seq 4: records are out of order",
        ],
    );
}

#[test]
fn verify_names_a_truncation_against_a_signed_checkpoint() {
    let chain = Chain::new(10);
    let config = path_str(&chain.config()).to_string();
    let out = agent(&["evidence", "checkpoint", "--config", &config]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    // The printed envelope is one canonical line: its SHA-256 is the digest reported.
    let line = text(&out.stdout);
    let line = line.strip_suffix('\n').unwrap();
    let digest = format!("sha256:{}", hex::encode(Sha256::digest(line.as_bytes())));
    assert!(
        text(&out.stderr).contains(&format!("checkpoint seq 10 {digest} pins seq 9")),
        "{}",
        text(&out.stderr)
    );
    let checkpoint = chain.dir.path().join("checkpoint.json");
    std::fs::write(&checkpoint, line).unwrap();
    chain.append(5);
    let ok = chain.verify(&["--checkpoint", path_str(&checkpoint)]);
    assert_eq!(ok.status.code(), Some(0), "{}", text(&ok.stdout));
    assert!(
        text(&ok.stdout).contains(&format!("checkpoint: seq 10 {digest} is in the chain")),
        "{}",
        text(&ok.stdout)
    );
    assert!(text(&ok.stdout).contains("checkpoints: 1"));

    chain
        .sql()
        .execute("DELETE FROM records WHERE seq >= 8", [])
        .unwrap();
    // Without the checkpoint the shorter chain is consistent; with it, the cut is named.
    assert_eq!(chain.verify(&[]).status.code(), Some(0));
    assert_fails(
        &chain.verify(&["--checkpoint", path_str(&checkpoint)]),
        &[&format!(
            "chain ends at seq 7 but a signed checkpoint pins seq 10 ({digest}): records were truncated"
        )],
    );
}

#[test]
fn verify_refuses_a_checkpoint_that_is_not_one() {
    let chain = Chain::new(3);
    let not_checkpoint = chain.dir.path().join("not-checkpoint.json");
    let bytes = msp_compliance_protocol::jcs::to_vec_of(&chain.envelope(1)).unwrap();
    std::fs::write(&not_checkpoint, bytes).unwrap();
    assert_fails(
        &chain.verify(&["--checkpoint", path_str(&not_checkpoint)]),
        &["record seq 1 is a check record, not a checkpoint"],
    );
    let empty = Chain::new(0);
    std::fs::create_dir_all(empty.dir.path().join("state")).unwrap();
    let out = agent(&[
        "evidence",
        "checkpoint",
        "--config",
        path_str(&empty.config()),
        "--store",
        path_str(&empty.store()),
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("does not exist"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn verify_names_an_unknown_key() {
    let chain = Chain::new(3);
    let other = Chain::new(0);
    let out = agent(&[
        "evidence",
        "verify",
        "--store",
        path_str(&chain.store()),
        "--pubkey",
        path_str(&other.pubkey()),
    ]);
    assert_fails(
        &out,
        &[&format!(
            "store row seq 0: record #0: no signature by a trusted key (signed by: {})",
            keyid_of(&chain.pubkey())
        )],
    );
    // Both keys trusted (rotation): verifies.
    let out = agent(&[
        "evidence",
        "verify",
        "--store",
        path_str(&chain.store()),
        "--pubkey",
        path_str(&other.pubkey()),
        "--pubkey",
        path_str(&chain.pubkey()),
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stdout));
}

#[test]
fn exports_verify_line_by_line_and_damage_is_named_by_line() {
    let chain = Chain::new(20);
    let export = chain.dir.path().join("export.jsonl");
    let out = chain.export(&export);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("exported 20 records (seq 0 to 19)"));
    let lines: Vec<String> = std::fs::read_to_string(&export)
        .unwrap()
        .lines()
        .map(String::from)
        .collect();
    assert_eq!(lines.len(), 20);
    // Each line's SHA-256 is the next record's prev.
    let next = chain.envelope(1);
    let statement: serde_json::Value =
        serde_json::from_slice(&STANDARD.decode(next.payload).unwrap()).unwrap();
    assert_eq!(
        statement["predicate"]["prev"],
        format!(
            "sha256:{}",
            hex::encode(Sha256::digest(lines[0].as_bytes()))
        )
    );
    let verify_input = |path: &Path| {
        agent(&[
            "evidence",
            "verify",
            "--input",
            path_str(path),
            "--pubkey",
            path_str(&chain.pubkey()),
        ])
    };
    let out = verify_input(&export);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stdout));
    assert!(text(&out.stdout).contains("records: 20 (seq 0 to 19)"));

    // An export from the middle of the chain verifies on its own.
    let tail = chain.dir.path().join("tail.jsonl");
    std::fs::write(&tail, lines[12..].join("\n") + "\n").unwrap();
    assert!(
        text(&verify_input(&tail).stdout).contains("records: 8 (seq 12 to 19)"),
        "{}",
        text(&verify_input(&tail).stdout)
    );

    let damaged = chain.dir.path().join("damaged.jsonl");
    let mut swapped = lines.clone();
    swapped.swap(5, 6);
    std::fs::write(&damaged, swapped.join("\n")).unwrap();
    assert_fails(
        &verify_input(&damaged),
        &[
            "line 6: record #5: seq 6 follows seq 4",
            "seq 5 comes later, at line 7",
        ],
    );
    let mut spaced = lines.clone();
    spaced[2] = spaced[2].replacen(':', ": ", 1);
    std::fs::write(&damaged, spaced.join("\n")).unwrap();
    assert_fails(
        &verify_input(&damaged),
        &["line 3: record #2 is not in RFC 8785 canonical form"],
    );

    // --since later than every record exports nothing; a bad --since is a usage error.
    let out = agent(&[
        "evidence",
        "export",
        "--store",
        path_str(&chain.store()),
        "--since",
        "2999-01-01T00:00:00Z",
    ]);
    assert_eq!(out.status.code(), Some(0));
    assert!(out.stdout.is_empty());
    let out = agent(&[
        "evidence",
        "export",
        "--store",
        path_str(&chain.store()),
        "--since",
        "last tuesday",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("expected an RFC 3339 time"));
}

#[test]
fn verify_and_export_never_create_a_store() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.sqlite");
    let out = agent(&[
        "evidence",
        "verify",
        "--store",
        path_str(&missing),
        "--pubkey",
        path_str(&missing),
    ]);
    assert_eq!(out.status.code(), Some(2));
    let out = agent(&["evidence", "export", "--store", path_str(&missing)]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("does not exist"));
    assert!(!missing.exists());
}

#[test]
fn a_checkpoint_before_an_export_cannot_vouch_for_it() {
    let chain = Chain::new(5);
    let out = agent(&[
        "evidence",
        "checkpoint",
        "--config",
        path_str(&chain.config()),
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let checkpoint = chain.dir.path().join("checkpoint.json");
    std::fs::write(&checkpoint, &out.stdout).unwrap();
    chain.append(5);
    let export = chain.dir.path().join("all.jsonl");
    let out = agent(&[
        "evidence",
        "export",
        "--store",
        path_str(&chain.store()),
        "--output",
        path_str(&export),
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let lines: Vec<String> = std::fs::read_to_string(&export)
        .unwrap()
        .lines()
        .map(String::from)
        .collect();
    let tail = chain.dir.path().join("tail.jsonl");
    std::fs::write(&tail, lines[8..].join("\n")).unwrap();
    let verify = |input: &Path| {
        agent(&[
            "evidence",
            "verify",
            "--input",
            path_str(input),
            "--pubkey",
            path_str(&chain.pubkey()),
            "--checkpoint",
            path_str(&checkpoint),
        ])
    };
    assert_eq!(verify(&export).status.code(), Some(0));
    assert_fails(
        &verify(&tail),
        &["the checkpoint pins seq 5, before the first record given (seq 8)"],
    );
}
