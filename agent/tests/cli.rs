//! The command line as a user meets it: exit statuses, error messages that name the file and the
//! field, schemas, and `check` on trees that must never come out as a pass.

use std::path::Path;
use std::process::{Command, Output};

use msp_compliance_protocol::finding::{Report, Status};

fn agent(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_msp-compliance-agent"))
        .args(args)
        .env_remove("MSP_REAL_TOOLS")
        .output()
        .expect("the agent binary runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn write(dir: &Path, name: &str, content: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, content).expect("write test file");
    path.display().to_string()
}

#[test]
fn config_validate_accepts_json_and_yaml_and_names_bad_fields() {
    let dir = tempfile::tempdir().unwrap();
    let good_json = write(
        dir.path(),
        "agent.json",
        r#"{"site_id":"clinic-a","host_id":"nixos-1"}"#,
    );
    let good_yaml = write(
        dir.path(),
        "agent.yaml",
        "site_id: clinic-a\nhost_id: nixos-1\npoll_interval_secs: 120\n",
    );
    for file in [&good_json, &good_yaml] {
        let out = agent(&["config", "validate", file]);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
        assert!(text(&out.stdout).contains("valid"));
    }
    let bad = write(
        dir.path(),
        "bad.yaml",
        "site_id: clinic-a\nhost_id: nixos-1\ncommands:\n  timeout_secs: soon\n",
    );
    let out = agent(&["config", "validate", &bad]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("bad.yaml") && stderr.contains("commands.timeout_secs"),
        "{stderr}"
    );
    assert!(stderr.contains("expected u64"), "{stderr}");
    let missing = agent(&[
        "config",
        "validate",
        &dir.path().join("nope.json").display().to_string(),
    ]);
    assert_eq!(missing.status.code(), Some(2));
    assert!(text(&missing.stderr).contains("nope.json: cannot read"));
}

#[test]
fn schemas_are_json_schema_documents() {
    for (what, key) in [
        ("config", "site_id"),
        ("declared", "firewall"),
        ("baseline", "waivers"),
    ] {
        let out = agent(&[what, "schema"]);
        assert_eq!(out.status.code(), Some(0));
        let schema: serde_json::Value =
            serde_json::from_slice(&out.stdout).expect("schema is JSON");
        assert!(
            schema["$schema"]
                .as_str()
                .is_some_and(|it| it.contains("json-schema.org")),
            "{what}"
        );
        assert!(
            schema["properties"].get(key).is_some(),
            "{what} schema lacks {key}"
        );
    }
}

#[test]
fn embedded_baseline_validates_and_shows_its_digest() {
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("../baselines/hipaa.json");
    let out = agent(&["baseline", "validate", &file.display().to_string()]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let shown = agent(&["baseline", "show"]);
    assert_eq!(shown.status.code(), Some(0));
    let digest = text(&shown.stderr);
    assert!(
        text(&out.stdout).contains(digest.split_whitespace().last().unwrap()),
        "same digest for file and embedded"
    );
}

#[test]
fn unknown_check_is_a_usage_error() {
    let out = agent(&["check", "--only", "firewal"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("unknown check \"firewal\""));
    let out = agent(&["check", "--format", "xml"]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn an_empty_root_never_passes() {
    // A tree with nothing in it has nothing compliant in it: every check must say fail or
    // unknown (or not applicable), never pass.
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().display().to_string();
    let out = agent(&["check", "--root", &root, "--format", "json"]);
    let report: Report =
        serde_json::from_slice(&out.stdout).expect("check --format json prints a report");
    assert_eq!(report.findings.len(), 6);
    for finding in &report.findings {
        assert!(
            matches!(finding.status, Status::Fail | Status::Unknown),
            "{} came out {} on an empty root",
            finding.check,
            finding.status
        );
        assert!(!finding.summary.is_empty());
    }
    assert_eq!(out.status.code(), Some(i32::from(report.exit_code())));
    assert_ne!(out.status.code(), Some(0));
}

#[test]
fn table_output_has_the_documented_columns() {
    let dir = tempfile::tempdir().unwrap();
    let out = agent(&[
        "check",
        "--root",
        &dir.path().display().to_string(),
        "--only",
        "backup",
    ]);
    let stdout = text(&out.stdout);
    let header = stdout.lines().next().unwrap_or_default();
    for column in ["CHECK", "STATUS", "HIPAA", "WHY", "FIX"] {
        assert!(header.contains(column), "{header}");
    }
    assert!(stdout.contains("backup"));
    assert!(stdout.contains("baseline hipaa"));
}

#[test]
fn waivers_turn_a_fail_into_an_exception_until_they_expire() {
    // An empty root has no backup job, which the default baseline requires: a definite fail.
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    std::fs::create_dir(&root).unwrap();
    let root = root.display().to_string();
    let run = |expires: &str| {
        let baseline = write(
            dir.path(),
            "baseline.yaml",
            &format!(
                "id: clinic\nversion: '1'\nwaivers:\n  - check: backup\n    justification: backups run on the NAS, verified monthly\n    ticket: OPS-17\n    expires: {expires}\n"
            ),
        );
        let out = agent(&[
            "check",
            "--root",
            &root,
            "--only",
            "backup",
            "--baseline",
            &baseline,
            "--format",
            "json",
        ]);
        let report: Report = serde_json::from_slice(&out.stdout).expect("report");
        (out.status.code(), report.findings[0].clone())
    };
    let (code, finding) = run("2999-12-31");
    assert_eq!(finding.status, Status::Exception, "{finding:?}");
    assert_eq!(code, Some(0));
    assert_eq!(
        finding.waiver.as_ref().map(|it| it.ticket.as_str()),
        Some("OPS-17")
    );
    let (code, finding) = run("2020-01-01");
    assert_eq!(finding.status, Status::Fail);
    assert!(finding.waiver.as_ref().is_some_and(|it| it.expired));
    assert!(finding.summary.contains("expired"), "{}", finding.summary);
    assert_eq!(code, Some(1));
}

#[test]
fn bad_baseline_stops_check_with_the_field_named() {
    let dir = tempfile::tempdir().unwrap();
    let baseline = write(
        dir.path(),
        "b.json",
        r#"{"id":"x","version":"1","checks":{"firewall":{"allowed_tcp_ports":[22,"ssh"]}}}"#,
    );
    let out = agent(&["check", "--baseline", &baseline]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("b.json") && stderr.contains("checks.firewall.allowed_tcp_ports[1]"),
        "{stderr}"
    );
}
