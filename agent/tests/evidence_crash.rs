//! Crash and fault tests of the evidence store: SIGKILL at random instants during thousands of
//! appends, and a full disk.
//!
//! The writer is the real binary (`evidence stress-append`, hidden), which prints
//! `appended <seq> <digest>` only after each commit returned. Every line it printed before it
//! was killed is a promise: afterwards the record must be in the store with that digest, the
//! chain must verify, and the next run must continue the same chain. Digests are unique in the
//! store (the outbox's idempotent delivery id), so a sink that de-duplicates by id never sees a
//! record twice.
//!
//! SIGKILL tests process crashes: SQLite's WAL with `synchronous=FULL` is what makes a commit
//! durable against power loss too, which no test here can cut.
//!
//! Gated by `MSP_REAL_TOOLS=1` (set by `.ci/run`) because they are slow; the disk-full test also
//! needs root to mount a small tmpfs, which a guard unmounts.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ed25519_dalek::SigningKey;
use jiff::Timestamp;
use msp_compliance_agent::evidence::store::{Store, StoreError};
use msp_compliance_agent::evidence::verify;
use msp_compliance_protocol::evidence::{Author, Draft, RecordKind};
use serde_json::json;

/// Returns true if and only if real-tool tests should run; otherwise says why they are skipped.
fn real_tools(test: &str) -> bool {
    if std::env::var_os("MSP_REAL_TOOLS").is_some_and(|it| it == "1") {
        return true;
    }
    eprintln!("skipped {test}: set MSP_REAL_TOOLS=1 to run the slow crash tests (.ci/run does)");
    false
}

/// xorshift64*: random delays and batch sizes without a dependency; the seed is printed so a
/// failing run can be replayed with `MSP_CRASH_SEED`.
struct Rng(u64);

impl Rng {
    fn from_env_or_clock() -> Rng {
        let seed = std::env::var("MSP_CRASH_SEED")
            .ok()
            .and_then(|it| it.parse().ok())
            .unwrap_or_else(|| {
                let nanos = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|it| it.as_nanos() as u64)
                    .unwrap_or(1);
                nanos ^ u64::from(std::process::id())
            });
        eprintln!("crash test seed: MSP_CRASH_SEED={seed}");
        Rng(seed.max(1))
    }

    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n
    }
}

fn agent() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_msp-compliance-agent"));
    command.env_remove("CREDENTIALS_DIRECTORY");
    command
}

fn head(store: &Path) -> Option<(u64, String)> {
    Store::open(store).unwrap().head().unwrap()
}

#[test]
fn sigkill_at_random_instants_loses_nothing_that_was_reported() {
    if !real_tools("sigkill_at_random_instants_loses_nothing_that_was_reported") {
        return;
    }
    const RUNS: usize = 30;
    const COUNT_PER_RUN: u64 = 4_000;
    let budget = Duration::from_secs(60);
    let mut rng = Rng::from_env_or_clock();
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("signing.key");
    let store = dir.path().join("evidence.sqlite");
    let status = agent()
        .args(["keygen", "--output"])
        .arg(&key)
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());

    let started = Instant::now();
    let mut promised: BTreeMap<u64, String> = BTreeMap::new();
    let (mut n_killed, mut n_runs) = (0, 0);
    for run in 0..RUNS {
        if started.elapsed() > budget {
            break;
        }
        n_runs += 1;
        let batch = [1, 1, 1, 10, 100][rng.below(5) as usize];
        let before = if store.exists() { head(&store) } else { None };
        let mut child = agent()
            .args(["evidence", "stress-append", "--store"])
            .arg(&store)
            .arg("--key")
            .arg(&key)
            .args([
                "--count",
                &COUNT_PER_RUN.to_string(),
                "--batch",
                &batch.to_string(),
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let reader = std::thread::spawn(move || {
            // Only complete lines count: a line cut by the kill was never fully promised.
            let mut lines = Vec::new();
            let mut reader = BufReader::new(stdout);
            loop {
                let mut line = Vec::new();
                match reader.read_until(b'\n', &mut line) {
                    Ok(0) | Err(_) => break,
                    Ok(_) if line.ends_with(b"\n") => {
                        lines.push(String::from_utf8(line).unwrap().trim_end().to_string())
                    }
                    Ok(_) => break,
                }
            }
            lines
        });
        std::thread::sleep(Duration::from_millis(1 + rng.below(700)));
        // Child::kill sends SIGKILL: no destructor, no flush, no SQLite close.
        let _ = child.kill();
        let status = child.wait().unwrap();
        let lines = reader.join().unwrap();
        if status.signal() == Some(9) {
            n_killed += 1;
        } else {
            let mut stderr = String::new();
            std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
            assert!(status.success(), "run {run} failed: {status}: {stderr}");
        }
        let first_seq = before.as_ref().map_or(0, |it| it.0 + 1);
        for (expected_seq, line) in (first_seq..).zip(&lines) {
            let mut parts = line.split(' ');
            assert_eq!(parts.next(), Some("appended"), "{line}");
            let seq: u64 = parts.next().unwrap().parse().unwrap();
            let digest = parts.next().unwrap().to_string();
            // Each run continues the chain exactly where the previous one (killed or not) left it.
            assert_eq!(seq, expected_seq, "run {run} (batch {batch}): {line}");
            promised.insert(seq, digest);
        }
        // Every promise so far holds after this kill.
        let reopened = Store::open(&store).unwrap();
        for (seq, digest) in promised.range(promised.len().saturating_sub(lines.len()) as u64..) {
            let record = reopened.records_from(*seq, 1).unwrap();
            assert_eq!(
                record.first().map(|it| (&it.seq, &it.digest)),
                Some((seq, digest)),
                "run {run}: reported record seq {seq} is missing or different"
            );
        }
    }
    eprintln!(
        "{n_runs} runs, {n_killed} killed mid-way, {} records promised, {:?}",
        promised.len(),
        started.elapsed()
    );
    assert!(n_killed >= n_runs / 3, "too few runs were actually killed");
    assert!(promised.len() > 1_000, "too few appends to mean anything");

    // The whole chain verifies, holds every promised record, and nothing more than one run's
    // unreported tail beyond.
    let reopened = Store::open(&store).unwrap();
    let public = msp_compliance_agent::evidence::keys::load_signing_key(&key)
        .unwrap()
        .verifying_key();
    let verdict = verify::verify_records(verify::store_records(&reopened), &[public], None)
        .unwrap_or_else(|err| panic!("chain does not verify after kills: {err}"));
    assert_eq!(verdict.summary.first_seq, Some(0));
    for (seq, digest) in &promised {
        let record = reopened.records_from(*seq, 1).unwrap().remove(0);
        assert_eq!(&record.digest, digest, "seq {seq}");
    }
    let out = agent()
        .args(["evidence", "verify", "--store"])
        .arg(&store)
        .arg("--pubkey")
        .arg(dir.path().join("signing.key.pub"))
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );

    // De-duplication by id: every digest is unique (distinct seqs give distinct payloads, so
    // the store needs no index for it), and a second record at a taken seq is refused.
    let sql = rusqlite::Connection::open(&store).unwrap();
    let (rows, distinct): (i64, i64) = sql
        .query_row(
            "SELECT COUNT(*), COUNT(DISTINCT digest) FROM records",
            [],
            |row| Ok((row.get(0)?, row.get(1)?)),
        )
        .unwrap();
    assert_eq!(rows, distinct);
    let (_, digest) = promised.iter().next().unwrap();
    let duplicate = sql.execute(
        "INSERT INTO records (seq, digest, kind, recorded_at, envelope) VALUES (0, ?1, 'check', 0, x'00')",
        rusqlite::params![digest],
    );
    assert!(
        matches!(&duplicate, Err(rusqlite::Error::SqliteFailure(err, _)) if err.code == rusqlite::ErrorCode::ConstraintViolation),
        "{duplicate:?}"
    );
}

/// A tmpfs mounted for one test, unmounted on drop (lazily if something still holds it).
struct Tmpfs {
    path: PathBuf,
}

impl Tmpfs {
    fn mount(path: PathBuf, size: &str) -> Tmpfs {
        std::fs::create_dir_all(&path).unwrap();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size},mode=0700")])
            .arg("tmpfs")
            .arg(&path)
            .status()
            .expect("run mount");
        assert!(status.success(), "mount -t tmpfs failed (needs root)");
        Tmpfs { path }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let ok = Command::new("umount")
            .arg(&self.path)
            .status()
            .is_ok_and(|it| it.success());
        if !ok {
            let _ = Command::new("umount").arg("-l").arg(&self.path).status();
        }
    }
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status").is_ok_and(|status| {
        status
            .lines()
            .find_map(|it| it.strip_prefix("Uid:"))
            .and_then(|it| it.split_whitespace().nth(1))
            == Some("0")
    })
}

#[test]
fn a_full_disk_is_a_clear_error_and_loses_nothing() {
    if !real_tools("a_full_disk_is_a_clear_error_and_loses_nothing") {
        return;
    }
    assert!(
        is_root(),
        "MSP_REAL_TOOLS=1 but not root: the disk-full test mounts a tmpfs"
    );
    let dir = tempfile::tempdir().unwrap();
    let tmpfs = Tmpfs::mount(dir.path().join("small"), "4m");
    let path = tmpfs.path.join("evidence.sqlite");
    let key = SigningKey::from_bytes(&[11; 32]);
    let author = Author {
        site_id: Some("clinic-a".into()),
        host_id: "nixos-1".into(),
        agent_version: "0.1.0".into(),
    };
    let padding = "x".repeat(900);
    let mut accepted = Vec::new();
    let mut store = Store::open(&path).unwrap();
    let mut failure = None;
    for n in 0..10_000_u64 {
        let draft = Draft {
            kind: RecordKind::Check,
            baseline: None,
            controls: vec![],
            body: json!({ "n": n, "padding": padding }),
        };
        match store.append(&[draft], &author, Timestamp::now(), &key) {
            Ok(appended) => accepted.extend(appended),
            Err(err) => {
                failure = Some(err);
                break;
            }
        }
    }
    let failure = failure.expect("a 4 MiB filesystem filled up");
    assert!(
        matches!(failure, StoreError::DiskFull { .. }),
        "expected DiskFull, got {failure:?}"
    );
    let message = failure.to_string();
    assert!(
        message.contains("disk full") && message.contains("nothing earlier is lost"),
        "{message}"
    );
    // Each durable commit adds whole 64 KiB pages to the WAL, so a few dozen records fill 4 MiB.
    assert!(accepted.len() >= 10, "only {} records fit", accepted.len());
    // Still full: a second attempt fails the same way and breaks nothing.
    let again = store.append(
        &[Draft {
            kind: RecordKind::Check,
            baseline: None,
            controls: vec![],
            body: json!({ "again": padding }),
        }],
        &author,
        Timestamp::now(),
        &key,
    );
    assert!(
        matches!(again, Err(StoreError::DiskFull { .. })),
        "{again:?}"
    );
    drop(store);

    // Everything accepted is there and verifies, read by a fresh connection.
    let reopened = Store::open(&path).unwrap();
    let verdict = verify::verify_records(
        verify::store_records(&reopened),
        &[key.verifying_key()],
        None,
    )
    .unwrap_or_else(|err| panic!("chain does not verify after disk full: {err}"));
    assert_eq!(verdict.summary.n_records, accepted.len() as u64);
    let last = accepted.last().unwrap();
    assert_eq!(verdict.summary.head, Some((last.seq, last.digest.clone())));
    drop(reopened);
    drop(tmpfs);
}
