//! Budget: all six checks against a fixture host, without external processes, median <= 5 ms.
//!
//! The fixture `agent/tests/fixtures/hosts/nixos-site` is a whole NixOS site host (files plus
//! recorded command and probe outputs), so this measures the agent's own work: resolving paths
//! under the root, reading and parsing facts, judging, building findings.

use std::hint::black_box;
use std::path::Path;

use criterion::{Criterion, criterion_group, criterion_main};
use msp_compliance_agent::baseline::Baseline;
use msp_compliance_agent::checks::{self, CHECKS};
use msp_compliance_agent::cli::build_host;
use msp_compliance_agent::config::Config;
use msp_compliance_agent::facts::fs::Root;

fn all_checks_on_fixture_host(c: &mut Criterion) {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/hosts/nixos-site");
    let config = Config::unconfigured("bench".to_string());
    let baseline = Baseline::embedded();
    let now = "2026-11-27T12:00:00Z".parse().expect("literal timestamp");
    c.bench_function("six checks, fixture host", |b| {
        b.iter(|| {
            // The host view is built per run, as `check` does: declared.json is read here.
            let host = build_host(Root::new(&fixture), &config);
            let findings = checks::run(&CHECKS, &host, &baseline, now);
            black_box(findings)
        })
    });
}

criterion_group!(benches, all_checks_on_fixture_host);
criterion_main!(benches);
