//! An auditor verifies our evidence without our code: the export of a chain made by the real
//! binary is checked by `agent/tests/auditor/verify_dsse.py`, an independent implementation of
//! the README's procedure on Python's `cryptography` (Ed25519) and standard library (base64,
//! SHA-256, JSON). It must accept the export and reject every kind of tampering, and agree with
//! `evidence verify --input` on each.
//!
//! Gated by `MSP_REAL_TOOLS=1`; the Python venv with `cryptography` is made by `.ci/run` and
//! found through `MSP_PY_VENV`. With MSP_REAL_TOOLS=1 and no venv, the test fails.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;

/// Returns true if and only if real-tool tests should run; otherwise says why they are skipped.
fn real_tools(test: &str) -> bool {
    if std::env::var_os("MSP_REAL_TOOLS").is_some_and(|it| it == "1") {
        return true;
    }
    eprintln!(
        "skipped {test}: set MSP_REAL_TOOLS=1 and MSP_PY_VENV to run tests that need real tools (.ci/run does)"
    );
    false
}

/// The venv's Python, which must have `cryptography`.
fn auditor_python() -> PathBuf {
    let venv = std::env::var_os("MSP_PY_VENV")
        .expect("MSP_REAL_TOOLS=1 but MSP_PY_VENV is unset: run .ci/run, which makes the venv");
    let python = Path::new(&venv).join("bin/python3");
    let probe = Command::new(&python)
        .args(["-c", "import cryptography"])
        .status();
    assert!(
        probe.is_ok_and(|it| it.success()),
        "{} cannot import cryptography: run .ci/run, which makes the venv",
        python.display()
    );
    python
}

fn agent(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_msp-compliance-agent"))
        .args(args)
        .env_remove("CREDENTIALS_DIRECTORY")
        .output()
        .expect("the agent binary runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("test paths are UTF-8")
}

struct Auditor {
    python: PathBuf,
    script: PathBuf,
    pubkey: PathBuf,
}

impl Auditor {
    fn run(&self, export: &Path) -> Output {
        Command::new(&self.python)
            .arg(&self.script)
            .arg("--pubkey")
            .arg(&self.pubkey)
            .arg(export)
            .output()
            .expect("python runs")
    }
}

#[test]
fn an_independent_python_verifier_accepts_our_export_and_rejects_tampering() {
    if !real_tools("an_independent_python_verifier_accepts_our_export_and_rejects_tampering") {
        return;
    }
    let python = auditor_python();
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("signing.key");
    assert_eq!(
        agent(&["keygen", "--output", path_str(&key)]).status.code(),
        Some(0)
    );
    let config = dir.path().join("agent.json");
    std::fs::write(
        &config,
        format!(
            r#"{{"site_id":"clinic-a","host_id":"nixos-1","state_dir":"{}","evidence":{{"signing_key_file":"{}"}}}}"#,
            dir.path().join("state").display(),
            key.display()
        ),
    )
    .unwrap();
    // A real chain: two `check` runs on the fixture host (real findings), a checkpoint, more.
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/hosts/nixos-site");
    for _ in 0..2 {
        let out = agent(&[
            "check",
            "--config",
            path_str(&config),
            "--root",
            path_str(&fixture),
        ]);
        assert!(
            text(&out.stdout).contains("check records appended"),
            "{}",
            text(&out.stdout)
        );
    }
    let out = agent(&["evidence", "checkpoint", "--config", path_str(&config)]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let out = agent(&[
        "check",
        "--config",
        path_str(&config),
        "--root",
        path_str(&fixture),
    ]);
    assert!(text(&out.stdout).contains("head seq 18"));
    let export = dir.path().join("export.jsonl");
    let out = agent(&[
        "evidence",
        "export",
        "--config",
        path_str(&config),
        "--since",
        "2000-01-01",
        "--format",
        "jsonl",
        "--output",
        path_str(&export),
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));

    let auditor = Auditor {
        python,
        script: Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/auditor/verify_dsse.py"),
        pubkey: dir.path().join("signing.key.pub"),
    };
    let ours = |path: &Path| {
        agent(&[
            "evidence",
            "verify",
            "--input",
            path_str(path),
            "--pubkey",
            path_str(&auditor.pubkey),
        ])
    };
    let out = auditor.run(&export);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    assert!(
        text(&out.stdout).starts_with("ok: 19 records, seq 0 to 18"),
        "{}",
        text(&out.stdout)
    );
    assert_eq!(ours(&export).status.code(), Some(0));

    let lines: Vec<String> = std::fs::read_to_string(&export)
        .unwrap()
        .lines()
        .map(String::from)
        .collect();
    let tampered_payload = {
        let mut lines = lines.clone();
        let mut envelope: serde_json::Value = serde_json::from_str(&lines[7]).unwrap();
        let payload = STANDARD
            .decode(envelope["payload"].as_str().unwrap())
            .unwrap();
        let original = String::from_utf8(payload).unwrap();
        let altered = original.replacen("\"host_id\":\"nixos-1\"", "\"host_id\":\"nixos-2\"", 1);
        assert_ne!(altered, original);
        envelope["payload"] = STANDARD.encode(altered).into();
        lines[7] =
            String::from_utf8(msp_compliance_protocol::jcs::to_vec(&envelope).unwrap()).unwrap();
        lines
    };
    let deleted = {
        let mut lines = lines.clone();
        lines.remove(4);
        lines
    };
    let reordered = {
        let mut lines = lines.clone();
        lines.swap(10, 11);
        lines
    };
    let bad_signature = {
        let mut lines = lines.clone();
        let mut envelope: serde_json::Value = serde_json::from_str(&lines[2]).unwrap();
        let mut sig = STANDARD
            .decode(envelope["signatures"][0]["sig"].as_str().unwrap())
            .unwrap();
        sig[0] ^= 0x80;
        envelope["signatures"][0]["sig"] = STANDARD.encode(sig).into();
        lines[2] =
            String::from_utf8(msp_compliance_protocol::jcs::to_vec(&envelope).unwrap()).unwrap();
        lines
    };
    let cases = [
        (
            "tampered payload",
            tampered_payload,
            "line 8: signature by key",
        ),
        (
            "deleted record",
            deleted,
            "line 5: seq 5 does not follow seq 3",
        ),
        (
            "reordered records",
            reordered,
            "line 11: seq 11 does not follow seq 9",
        ),
        ("bad signature", bad_signature, "line 3: signature by key"),
    ];
    for (what, lines, expect) in cases {
        let damaged = dir.path().join("damaged.jsonl");
        std::fs::write(&damaged, lines.join("\n") + "\n").unwrap();
        let out = auditor.run(&damaged);
        let stdout = text(&out.stdout);
        assert_eq!(out.status.code(), Some(1), "{what}: {stdout}");
        assert!(
            stdout.contains(expect),
            "{what}: {stdout:?} lacks {expect:?}"
        );
        assert_eq!(
            ours(&damaged).status.code(),
            Some(1),
            "{what}: evidence verify disagrees with the auditor"
        );
    }

    // A key the auditor was not given: nothing verifies.
    let other = dir.path().join("other.key");
    assert_eq!(
        agent(&["keygen", "--output", path_str(&other)])
            .status
            .code(),
        Some(0)
    );
    let stranger = Auditor {
        pubkey: dir.path().join("other.key.pub"),
        ..auditor
    };
    let out = stranger.run(&export);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stdout).contains("line 1: no signature by a trusted key"),
        "{}",
        text(&out.stdout)
    );
}
