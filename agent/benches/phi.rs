//! Budget: scrubbing a typical finding (a few KB of JSON) takes well under a millisecond.
//!
//! Inputs are real: the findings of the whole-host fixture `agent/tests/fixtures/hosts/nixos-site`
//! (no PHI, the common case at egress), and the same finding with a patient's details pasted into
//! its summary (every detector fires, tokens are computed).

use std::hint::black_box;
use std::path::Path;

use criterion::{Criterion, criterion_group, criterion_main};
use msp_compliance_agent::baseline::Baseline;
use msp_compliance_agent::checks::{self, CHECKS};
use msp_compliance_agent::cli::build_host;
use msp_compliance_agent::config::Config;
use msp_compliance_agent::facts::fs::Root;
use msp_compliance_agent::phi::Scrubber;
use serde_json::Value;

fn scrub_findings(c: &mut Criterion) {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/hosts/nixos-site");
    let config = Config::unconfigured("bench".to_string());
    let baseline = Baseline::embedded();
    let now = "2026-11-27T12:00:00Z".parse().expect("literal timestamp");
    let host = build_host(Root::new(&fixture), &config);
    let findings = checks::run(&CHECKS, &host, &baseline, now);
    let findings: Vec<Value> = findings
        .iter()
        .map(|it| serde_json::to_value(it).expect("a finding serializes"))
        .collect();
    // The largest finding is the worst typical case.
    let finding = findings
        .iter()
        .max_by_key(|it| it.to_string().len())
        .expect("six findings")
        .clone();
    let all = Value::Array(findings);
    let mut with_phi = finding.clone();
    with_phi["summary"] = Value::String(
        "restore of /srv/ehr/exports/jane_roe.csv: MRN 00482913, DOB 03/14/1961, SSN 123-45-6789, \
         (217) 555-0143, jane.roe@example.org, 742 Evergreen Terrace, Springfield, IL 62704"
            .to_string(),
    );
    let finding_text = finding.to_string();
    let scrubber = Scrubber::new(b"bench token key");
    eprintln!(
        "largest finding: {} bytes of JSON; all six: {} bytes",
        finding_text.len(),
        all.to_string().len()
    );

    c.bench_function("phi: scrub_value, largest finding, no PHI", |b| {
        b.iter(|| black_box(scrubber.scrub_value(black_box(&finding))))
    });
    c.bench_function("phi: scrub_value, largest finding, 7 PHI values", |b| {
        b.iter(|| black_box(scrubber.scrub_value(black_box(&with_phi))))
    });
    c.bench_function("phi: contains_phi, largest finding as text", |b| {
        b.iter(|| black_box(scrubber.contains_phi(black_box(&finding_text))))
    });
    c.bench_function("phi: scrub_value, all six findings", |b| {
        b.iter(|| black_box(scrubber.scrub_value(black_box(&all))))
    });
}

criterion_group!(benches, scrub_findings);
criterion_main!(benches);
