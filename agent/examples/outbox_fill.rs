//! Prepares an agent state with a large outbox backlog, for measuring `queue status` and
//! `queue drain` of the real binary (RSS budget: 100,000 queued records <= 50 MB).
//!
//! `cargo run --release --example outbox_fill -- DIR [N]` writes `DIR/agent.json` (a directory
//! sink at `DIR/out`), `DIR/signing.key` and `DIR/state/evidence.sqlite` holding N check records
//! (default 100,000) of a realistic size, none delivered. Then, for example:
//! `/usr/bin/time -v target/release/msp-compliance-agent queue drain --config DIR/agent.json`.
//! It refuses a DIR that exists, so it never touches real agent state.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use ed25519_dalek::SigningKey;
use jiff::Timestamp;
use msp_compliance_agent::evidence::keys;
use msp_compliance_agent::evidence::store::Store;
use msp_compliance_protocol::evidence::{Author, Draft, RecordKind};
use serde_json::json;

fn main() -> Result<()> {
    let mut args = std::env::args_os().skip(1);
    let dir = PathBuf::from(args.next().context("usage: outbox_fill DIR [N]")?);
    let records: u64 = match args.next() {
        Some(it) => it.to_string_lossy().replace('_', "").parse()?,
        None => 100_000,
    };
    if dir.exists() {
        bail!("{} exists; give a new directory", dir.display());
    }
    let state = dir.join("state");
    std::fs::create_dir_all(&state)?;
    std::fs::create_dir(dir.join("out"))?;
    let key = keys::generate()?;
    keys::write_new(&dir.join("signing.key"), &key)?;
    let config = json!({
        "site_id": "clinic-a",
        "host_id": "nixos-1",
        "state_dir": state,
        "evidence": { "signing_key_file": dir.join("signing.key") },
        "outbox": { "directory": { "path": dir.join("out") } },
    });
    std::fs::write(dir.join("agent.json"), serde_json::to_vec_pretty(&config)?)?;
    fill(&state, records, &key)?;
    println!(
        "{records} records queued; config {}",
        dir.join("agent.json").display()
    );
    Ok(())
}

fn fill(state: &std::path::Path, records: u64, key: &SigningKey) -> Result<()> {
    let mut store = Store::open(&msp_compliance_agent::evidence::store_path(state))?;
    let author = Author {
        site_id: Some("clinic-a".into()),
        host_id: "nixos-1".into(),
        agent_version: env!("CARGO_PKG_VERSION").into(),
    };
    let mut next = 0;
    while next < records {
        let drafts: Vec<Draft> = (next..records.min(next + 1_000))
            .map(|idx| Draft {
                kind: RecordKind::Check,
                baseline: None,
                controls: vec!["164.312(a)(2)(iv)".into()],
                body: json!({
                    "check": "encryption",
                    "status": "pass",
                    "summary": "all 3 block devices holding data are LUKS2 encrypted",
                    "observed": {
                        "devices": ["nvme0n1p2", "nvme0n1p3", "sda1"],
                        "cipher": "aes-xts-plain64",
                        "key_bits": 512,
                        "cycle": idx
                    },
                    "rules": [
                        { "id": "luks_on_data_devices", "status": "pass", "threshold": "all" },
                        { "id": "cipher_strength", "status": "pass", "threshold": "aes-xts >= 256 bit keys" }
                    ]
                }),
            })
            .collect();
        next += drafts.len() as u64;
        store.append(&drafts, &author, Timestamp::now(), key)?;
    }
    Ok(())
}
