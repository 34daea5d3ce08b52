//! Corpus tests of the PHI scrubber, both kinds: `fixtures/phi/phi.txt` (every marked value must be
//! replaced by its token, and nothing else changed) and `fixtures/phi/guard.txt` (every line must
//! pass unchanged); then the false-positive test on real formats: every fixture file of the six
//! checks and a whole-host `check --format json` report must pass through the scrubber unchanged,
//! because none of them holds PHI.

use std::path::{Path, PathBuf};

use msp_compliance_agent::baseline::Baseline;
use msp_compliance_agent::checks::{self, CHECKS};
use msp_compliance_agent::cli::build_host;
use msp_compliance_agent::config::Config;
use msp_compliance_agent::facts::fs::Root;
use msp_compliance_agent::phi::{Category, ScrubReport, Scrubber};
use msp_compliance_protocol::finding::Report;

/// The fixture directories of the six checks, and the whole host made of them.
const CHECK_FIXTURES: [&str; 7] = [
    "patching",
    "av_edr",
    "backup",
    "logging",
    "firewall",
    "encryption",
    "hosts/nixos-site",
];

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn scrubber() -> Scrubber {
    Scrubber::new(b"phi corpus test key")
}

/// The case lines of a corpus file: no blank lines, no `#` comments.
fn corpus_lines(name: &str) -> Vec<String> {
    let path = fixtures().join("phi").join(name);
    let text =
        std::fs::read_to_string(&path).unwrap_or_else(|err| panic!("{}: {err}", path.display()));
    text.lines()
        .filter(|it| !it.trim().is_empty() && !it.starts_with('#'))
        .map(str::to_string)
        .collect()
}

fn category(name: &str) -> Category {
    Category::ALL
        .into_iter()
        .find(|it| it.as_str() == name)
        .unwrap_or_else(|| panic!("unknown category {name:?}"))
}

/// Splits a marked text (`call «(217) 555-0143» today`) into the input, the marked values, and
/// the expected output (each marked value replaced by its token).
fn unmark(scrubber: &Scrubber, category: Category, marked: &str) -> (String, Vec<String>, String) {
    let (mut input, mut values, mut expect) = (String::new(), Vec::new(), String::new());
    let mut rest = marked;
    while let Some(open) = rest.find('«') {
        let close = rest[open..]
            .find('»')
            .map(|it| open + it)
            .unwrap_or_else(|| panic!("unclosed « in {marked:?}"));
        let value = &rest[open + '«'.len_utf8()..close];
        input.push_str(&rest[..open]);
        input.push_str(value);
        expect.push_str(&rest[..open]);
        expect.push_str(&scrubber.token(category, value));
        values.push(value.to_string());
        rest = &rest[close + '»'.len_utf8()..];
    }
    input.push_str(rest);
    expect.push_str(rest);
    (input, values, expect)
}

#[test]
fn every_phi_case_is_scrubbed_to_its_token() {
    let scrubber = scrubber();
    let lines = corpus_lines("phi.txt");
    assert!(lines.len() >= 60, "only {} PHI cases", lines.len());
    let mut failures = Vec::new();
    let mut report = ScrubReport::default();
    for line in &lines {
        let (name, marked) = line
            .split_once('\t')
            .unwrap_or_else(|| panic!("expected CATEGORY<TAB>text: {line:?}"));
        let category = category(name);
        let (input, values, expect) = unmark(&scrubber, category, marked);
        assert!(!values.is_empty(), "no «…» value in {line:?}");
        let res = scrubber.scrub_text_reporting(&input, &mut report);
        let leaked: Vec<_> = values
            .iter()
            .filter(|it| res.contains(it.as_str()))
            .collect();
        if res != expect || !leaked.is_empty() {
            failures.push(format!(
                "{name} {input:?}\n    got  {res:?}\n    want {expect:?}"
            ));
        }
        if !scrubber.contains_phi(&input) || scrubber.contains_phi(&res) {
            failures.push(format!(
                "{name} {input:?}: contains_phi disagrees with scrub_text"
            ));
        }
        if scrubber.scrub_text(&res) != res {
            failures.push(format!("{name} {input:?}: scrubbing twice changed {res:?}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    // Every category has cases.
    for category in Category::ALL {
        assert!(
            report.count(category) > 0,
            "no case of {}",
            category.as_str()
        );
    }
}

#[test]
fn every_guard_case_passes_unchanged() {
    let scrubber = scrubber();
    let lines = corpus_lines("guard.txt");
    assert!(lines.len() >= 60, "only {} guard cases", lines.len());
    let failures: Vec<_> = lines
        .iter()
        .filter_map(|line| {
            let res = scrubber.scrub_text(line);
            let changed = res != *line || scrubber.contains_phi(line);
            changed.then(|| format!("{line:?}\n    became {res:?}"))
        })
        .collect();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Regular files under `dir`, symlinks not followed (fixtures keep links to absolute targets).
fn files_under(dir: &Path, out: &mut Vec<PathBuf>) {
    let entries = std::fs::read_dir(dir).unwrap_or_else(|err| panic!("{}: {err}", dir.display()));
    for entry in entries {
        let entry = entry.unwrap_or_else(|err| panic!("{}: {err}", dir.display()));
        let file_type = entry.file_type().expect("file type");
        if file_type.is_dir() {
            files_under(&entry.path(), out);
        } else if file_type.is_file() {
            out.push(entry.path());
        }
    }
}

#[test]
fn check_fixtures_hold_no_phi() {
    let scrubber = scrubber();
    let mut files = Vec::new();
    for dir in CHECK_FIXTURES {
        files_under(&fixtures().join(dir), &mut files);
    }
    let mut n_text_files = 0;
    let mut failures = Vec::new();
    for path in &files {
        // Binary fixtures (LUKS headers, CVD databases) are not text a record would carry.
        let Ok(text) = std::fs::read_to_string(path) else {
            continue;
        };
        n_text_files += 1;
        let res = scrubber.scrub_text(&text);
        if res == text {
            continue;
        }
        for (idx, (before, after)) in text.lines().zip(res.lines()).enumerate() {
            if before != after {
                failures.push(format!(
                    "{}:{}: {before:?}\n    became {after:?}",
                    path.display(),
                    idx + 1
                ));
            }
        }
    }
    assert!(
        n_text_files > 300,
        "only {n_text_files} text fixture files found"
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn a_whole_host_report_holds_no_phi() {
    // The report `check --format json --root tests/fixtures/hosts/nixos-site` prints.
    let root = Root::new(fixtures().join("hosts/nixos-site"));
    let config = Config::unconfigured("clinic-host-1".to_string());
    let baseline = Baseline::embedded();
    let now = "2026-11-27T12:00:00Z".parse().expect("literal timestamp");
    let host = build_host(root, &config);
    let findings = checks::run(&CHECKS, &host, &baseline, now);
    let report = Report {
        agent_version: env!("CARGO_PKG_VERSION").to_string(),
        site_id: config.site_id.clone(),
        host_id: config.host_id.clone(),
        observed_at: now,
        baseline: baseline.reference(),
        findings,
    };
    let value = serde_json::to_value(&report).expect("a report serializes");
    let text = serde_json::to_string_pretty(&value).expect("a report serializes");
    assert!(text.len() > 5_000, "suspiciously small report: {text}");

    let scrubber = scrubber();
    let mut scrubbed_report = ScrubReport::default();
    let res = scrubber.scrub_value_reporting(&value, &mut scrubbed_report);
    assert!(
        scrubbed_report.is_empty(),
        "replaced {:?}",
        scrubbed_report.to_json()
    );
    assert_eq!(res, value);
    assert!(!scrubber.contains_phi(&text));
    assert_eq!(scrubber.scrub_text(&text), text);
}

#[test]
fn injected_phi_in_a_report_is_found_and_the_rest_kept() {
    // The same report with a patient's details pasted into one finding's message: only those go.
    let root = Root::new(fixtures().join("hosts/nixos-site"));
    let config = Config::unconfigured("clinic-host-1".to_string());
    let baseline = Baseline::embedded();
    let now = "2026-11-27T12:00:00Z".parse().expect("literal timestamp");
    let host = build_host(root, &config);
    let findings = checks::run(&CHECKS, &host, &baseline, now);
    let mut value = serde_json::to_value(&findings).expect("findings serialize");
    let pasted = "restore of /srv/ehr/exports/jane_roe.csv: MRN 00482913, DOB 03/14/1961, \
                  SSN 123-45-6789, (217) 555-0143, jane.roe@example.org, 742 Evergreen Terrace";
    value[0]["summary"] = serde_json::Value::String(pasted.to_string());
    let scrubber = scrubber();
    let mut report = ScrubReport::default();
    let res = scrubber.scrub_value_reporting(&value, &mut report);
    assert_eq!(report.total(), 6, "{:?}", report.to_json());
    let summary = res[0]["summary"].as_str().expect("a string");
    assert!(
        summary.starts_with("restore of /srv/ehr/exports/jane_roe.csv: MRN [MRN:"),
        "{summary}"
    );
    for gone in [
        "00482913",
        "03/14/1961",
        "123-45-6789",
        "555-0143",
        "jane.roe@",
        "Evergreen",
    ] {
        assert!(!summary.contains(gone), "{gone} left in {summary}");
    }
    value[0]["summary"] = res[0]["summary"].clone();
    assert_eq!(res, value, "only the pasted summary changed");
}
