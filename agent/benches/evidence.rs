//! Budgets of the evidence chain: append one record (canonicalize + sign + durable commit)
//! >= 2,000/s unbatched and >= 20,000/s batched (100 records per transaction); `evidence verify`
//! >= 50,000 records/s.
//!
//! Two record sizes: real `check` records (the findings of the six checks on the fixture host
//! `agent/tests/fixtures/hosts/nixos-site`, 5 to 7.5 KiB per envelope) and small records (a
//! body of a few bytes, about 0.9 KiB per envelope: checkpoints, lifecycle records). Hashing and
//! base64 grow with the size; Ed25519's curve work does not. The stores live in a temporary
//! directory on the disk the benchmark runs on: a commit is a real fsync (`synchronous=FULL`),
//! so the unbatched figure is the disk's. Run with
//! `cargo bench -p msp-compliance-agent --bench evidence`.

use std::hint::black_box;
use std::path::Path;
use std::time::Duration;

use criterion::{BenchmarkGroup, Criterion, Throughput, criterion_group, criterion_main};
use ed25519_dalek::SigningKey;
use jiff::Timestamp;
use msp_compliance_agent::baseline::Baseline;
use msp_compliance_agent::checks::{self, CHECKS};
use msp_compliance_agent::cli::build_host;
use msp_compliance_agent::config::Config;
use msp_compliance_agent::evidence::store::Store;
use msp_compliance_agent::evidence::verify;
use msp_compliance_agent::facts::fs::Root;
use msp_compliance_protocol::evidence::{Author, Draft, RecordKind};
use serde_json::json;

/// Records in the chain that `verify` checks per iteration.
const VERIFY_RECORDS: u64 = 20_000;
/// Records per transaction in the batched case.
const BATCH: usize = 100;

fn real_drafts() -> Vec<Draft> {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/hosts/nixos-site");
    let config = Config::unconfigured("bench".to_string());
    let baseline = Baseline::embedded();
    let now = "2026-11-27T12:00:00Z".parse().expect("literal timestamp");
    let host = build_host(Root::new(&fixture), &config);
    checks::run(&CHECKS, &host, &baseline, now)
        .iter()
        .map(|finding| Draft {
            kind: RecordKind::Check,
            baseline: Some(baseline.reference()),
            controls: finding.controls.clone(),
            body: serde_json::to_value(finding).expect("a finding serializes"),
        })
        .collect()
}

fn small_drafts() -> Vec<Draft> {
    (0..6)
        .map(|n| Draft {
            kind: RecordKind::AgentLifecycle,
            baseline: None,
            controls: Vec::new(),
            body: json!({ "event": "start", "n": n }),
        })
        .collect()
}

fn author() -> Author {
    Author {
        site_id: Some("clinic-a".to_string()),
        host_id: "nixos-1".to_string(),
        agent_version: env!("CARGO_PKG_VERSION").to_string(),
    }
}

fn bench_size(
    group: &mut BenchmarkGroup<'_, criterion::measurement::WallTime>,
    size: &str,
    drafts: &[Draft],
    dir: &Path,
) {
    let key = SigningKey::from_bytes(&[42; 32]);
    let author = author();

    let mut store = Store::open(&dir.join(format!("{size}-batched.sqlite"))).expect("store");
    let batch: Vec<Draft> = drafts.iter().cycle().take(BATCH).cloned().collect();
    group.sample_size(20);
    group.throughput(Throughput::Elements(BATCH as u64));
    group.bench_function(
        format!("append, 100 records per durable commit ({size})"),
        |b| {
            b.iter(|| {
                black_box(
                    store
                        .append(&batch, &author, Timestamp::now(), &key)
                        .expect("append"),
                )
            })
        },
    );

    let mut store = Store::open(&dir.join(format!("{size}-verify.sqlite"))).expect("store");
    let big: Vec<Draft> = drafts.iter().cycle().take(1_000).cloned().collect();
    for _ in 0..VERIFY_RECORDS / 1_000 {
        store
            .append(&big, &author, Timestamp::now(), &key)
            .expect("append");
    }
    let trusted = [key.verifying_key()];
    group.sample_size(10);
    group.throughput(Throughput::Elements(VERIFY_RECORDS));
    group.bench_function(format!("verify, whole chain ({size})"), |b| {
        b.iter(|| {
            let verdict = verify::verify_records(verify::store_records(&store), &trusted, None)
                .expect("chain verifies");
            assert_eq!(verdict.summary.n_records, VERIFY_RECORDS);
            black_box(verdict)
        })
    });

    // Last: a commit per record writes a whole 64 KiB WAL frame per record (about 270 MB/s for
    // the whole measurement), after which this kind of virtual disk stays slow for tens of
    // seconds; measured first, it lowered the batched figure after it by 10-20 %.
    let mut store = Store::open(&dir.join(format!("{size}-unbatched.sqlite"))).expect("store");
    let mut next = 0;
    group.sample_size(20);
    group.throughput(Throughput::Elements(1));
    group.bench_function(
        format!("append, one durable commit per record ({size})"),
        |b| {
            b.iter(|| {
                next = (next + 1) % drafts.len();
                black_box(
                    store
                        .append(&drafts[next..=next], &author, Timestamp::now(), &key)
                        .expect("append"),
                )
            })
        },
    );
}

fn evidence(c: &mut Criterion) {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("temp dir");
    let mut group = c.benchmark_group("evidence");
    group.measurement_time(Duration::from_secs(10));
    bench_size(&mut group, "check records", &real_drafts(), dir.path());
    bench_size(&mut group, "small records", &small_drafts(), dir.path());
    group.finish();
}

criterion_group!(benches, evidence);
criterion_main!(benches);
