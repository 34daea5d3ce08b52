//! Budget: outbox drain to a local sink >= 5,000 records/s (issue 3).
//!
//! A store holds 5,000 check records of a realistic size (about 1.3 KiB per envelope); each
//! iteration drains all of them, through the real `outbox::drain` (batch reads, PHI egress
//! guard, cursor commits), to a fresh directory-sink directory, so every file is written to a
//! temporary name, fsync'd, renamed and its directory fsync'd. Two more benchmarks split the
//! cost: the same drain into an in-memory sink (the outbox's own work without the disk), and
//! `prepare` alone (decode and PHI guard per record). The directory lives where `TMPDIR` points,
//! so run it once on the disk the sink will use. The RSS budget (100,000 queued records
//! <= 50 MB) is measured with the real binary, see the README.

use std::future::Future;
use std::hint::black_box;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use ed25519_dalek::SigningKey;
use jiff::Timestamp;
use msp_compliance_agent::evidence::store::Store;
use msp_compliance_agent::outbox::directory::DirectorySink;
use msp_compliance_agent::outbox::{self, Delivery, Outgoing, Policy, Sink};
use msp_compliance_agent::phi::Scrubber;
use msp_compliance_protocol::evidence::{Author, Draft, RecordKind};
use serde_json::json;

const RECORDS: u64 = 5_000;

fn author() -> Author {
    Author {
        site_id: Some("clinic-a".into()),
        host_id: "nixos-1".into(),
        agent_version: "0.1.0".into(),
    }
}

/// A check record body the size of a real finding (rules, observations, thresholds).
fn body(idx: u64) -> serde_json::Value {
    json!({
        "check": "encryption",
        "status": "pass",
        "summary": "all 3 block devices holding data are LUKS2 encrypted",
        "observed": {
            "devices": [
                { "name": "nvme0n1p2", "type": "crypt", "cipher": "aes-xts-plain64", "key_bits": 512 },
                { "name": "nvme0n1p3", "type": "crypt", "cipher": "aes-xts-plain64", "key_bits": 512 },
                { "name": "sda1", "type": "crypt", "cipher": "aes-xts-plain64", "key_bits": 512 }
            ],
            "store_path": "/nix/store/0c4hx6jg3mbwzxkzqv7f8q3hb5w2y1p9-cryptsetup-2.7.5",
            "cycle": idx
        },
        "rules": [
            { "id": "luks_on_data_devices", "status": "pass", "threshold": "all" },
            { "id": "cipher_strength", "status": "pass", "threshold": "aes-xts >= 256 bit keys" }
        ]
    })
}

fn filled_store(dir: &std::path::Path) -> Store {
    let mut store = Store::open(&dir.join("evidence.sqlite")).expect("store opens");
    let key = SigningKey::from_bytes(&[1; 32]);
    let drafts: Vec<Draft> = (0..RECORDS)
        .map(|idx| Draft {
            kind: RecordKind::Check,
            baseline: None,
            controls: vec!["164.312(a)(2)(iv)".into()],
            body: body(idx),
        })
        .collect();
    for chunk in drafts.chunks(1_000) {
        store
            .append(chunk, &author(), Timestamp::now(), &key)
            .expect("append");
    }
    store
}

fn policy() -> Policy {
    Policy {
        backoff_initial: Duration::from_secs(1),
        backoff_max: Duration::from_secs(300),
        max_backlog_records: 1_000_000,
        max_backlog_age: Duration::from_secs(72 * 3600),
        batch_records: outbox::BATCH_RECORDS,
    }
}

/// Accepts everything; named per run so each run starts from an empty cursor.
struct NullSink {
    name: String,
}

impl Sink for NullSink {
    fn name(&self) -> &str {
        &self.name
    }
    fn deliver<'a>(
        &'a self,
        batch: &'a [Outgoing],
    ) -> Pin<Box<dyn Future<Output = Delivery> + Send + 'a>> {
        Box::pin(async move {
            black_box(batch);
            Delivery {
                delivered: batch.len(),
                error: None,
            }
        })
    }
}

fn drain_all(store: &mut Store, sink: Box<dyn Sink>, runtime: &tokio::runtime::Runtime) {
    let key = SigningKey::from_bytes(&[1; 32]);
    let scrubber = Scrubber::new(b"bench token key, 32 bytes long!!");
    let sinks = vec![sink];
    let reports = runtime
        .block_on(outbox::drain(
            store,
            &sinks,
            &policy(),
            &scrubber,
            &author(),
            &key,
            &Timestamp::now,
        ))
        .expect("drain");
    assert_eq!(reports[0].delivered, RECORDS, "{:?}", reports[0]);
}

fn drain_benchmarks(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut store = filled_store(dir.path());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let run = AtomicU64::new(0);

    let mut group = c.benchmark_group("outbox drain");
    group.throughput(Throughput::Elements(RECORDS));
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(20));
    group.bench_function("5,000 records to the directory sink (fsync'd)", |b| {
        b.iter_custom(|iterations| {
            let mut total = Duration::ZERO;
            for _ in 0..iterations {
                let out = dir
                    .path()
                    .join(format!("out-{}", run.fetch_add(1, Ordering::SeqCst)));
                std::fs::create_dir(&out).expect("sink dir");
                let sink = Box::new(DirectorySink::new(out.clone()));
                let started = Instant::now();
                drain_all(&mut store, sink, &runtime);
                total += started.elapsed();
                // Kept until the end: deleting 5,000 files here would leave journal work that
                // the next measured run pays for (about 10 MB per run).
            }
            total
        })
    });
    group.bench_function("5,000 records to an in-memory sink", |b| {
        b.iter_custom(|iterations| {
            let started = Instant::now();
            for _ in 0..iterations {
                let name = format!("null-{}", run.fetch_add(1, Ordering::SeqCst));
                drain_all(&mut store, Box::new(NullSink { name }), &runtime);
            }
            started.elapsed()
        })
    });
    group.finish();

    let records = store.records_from(0, 1_000).expect("records");
    let scrubber = Scrubber::new(b"bench token key, 32 bytes long!!");
    let mut group = c.benchmark_group("outbox prepare");
    group.throughput(Throughput::Elements(records.len() as u64));
    group.bench_function("decode + PHI egress guard, 1,000 records", |b| {
        b.iter(|| {
            for record in &records {
                black_box(outbox::prepare(record, &scrubber).expect("prepare"));
            }
        })
    });
    group.finish();
}

criterion_group!(benches, drain_benchmarks);
criterion_main!(benches);
