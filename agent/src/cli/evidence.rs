//! The `keygen` and `evidence` subcommands, and what `check` records as evidence.
//!
//! Part of the command line (the only place that prints): it resolves where the store and the
//! keys are, calls `evidence::{keys, store, verify}` and prints their results. It decides nothing
//! about validity itself: `evidence verify` reports exactly what `evidence::verify` (and through
//! it `protocol::evidence::ChainVerifier`) found. It must never print a private key.

use std::fs::File;
use std::io::{BufReader, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use clap::{Subcommand, ValueEnum};
use ed25519_dalek::VerifyingKey;
use jiff::Timestamp;
use msp_compliance_protocol::dsse;
use msp_compliance_protocol::evidence::{Author, Draft, Pin, RecordKind};
use msp_compliance_protocol::finding::Report;
use serde_json::json;

use crate::config::{Config, read_document};
use crate::evidence::keys::{self, LoadedKey};
use crate::evidence::store::Store;
use crate::evidence::verify::{self, BadRecord, Verdict, VerifyError};
use crate::phi::Scrubber;

/// `keygen` arguments.
#[derive(Debug, clap::Args)]
pub struct KeygenArgs {
    /// Where to write the private key (mode 0600; refused if it exists). The public key goes
    /// to FILE.pub.
    #[arg(long, value_name = "FILE")]
    output: PathBuf,
}

/// `evidence` subcommands.
#[derive(Debug, Subcommand)]
pub enum EvidenceCommand {
    /// Verify signatures and chain continuity of the store or of an export.
    ///
    /// Prints a summary and exits 0, or names the first bad record (tampered payload, bad
    /// signature, gap, reorder, truncation against a checkpoint, unknown key) and exits 1.
    /// Exit status 2: usage errors and unreadable inputs.
    Verify(VerifyArgs),
    /// Write records as JSON Lines for an auditor: one canonical DSSE envelope per line.
    Export(ExportArgs),
    /// Append a signed checkpoint of the chain head and print its envelope (keep it apart from
    /// the host: `evidence verify --checkpoint` then detects truncation).
    Checkpoint(StoreArgs),
    /// Append COUNT test records, printing `appended <seq> <digest>` after each commit.
    #[command(hide = true)]
    StressAppend(StressAppendArgs),
}

/// Where the store and the signing key are.
#[derive(Debug, clap::Args)]
pub struct StoreArgs {
    /// Agent configuration: the store is `<state_dir>/evidence.sqlite`, the key its signing
    /// key (or the systemd credential `evidence-signing-key`).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// The evidence store, instead of the configuration's.
    #[arg(long, value_name = "FILE")]
    store: Option<PathBuf>,
}

/// `evidence verify` arguments.
#[derive(Debug, clap::Args)]
pub struct VerifyArgs {
    #[command(flatten)]
    location: StoreArgs,
    /// Verify an exported JSON Lines file instead of the store.
    #[arg(long, value_name = "FILE", conflicts_with = "store")]
    input: Option<PathBuf>,
    /// Trust this public key (FILE.pub from `keygen`; repeatable, for rotation). Default: the
    /// public half of the configured signing key.
    #[arg(long, value_name = "FILE")]
    pubkey: Vec<PathBuf>,
    /// A checkpoint envelope (as `evidence checkpoint` printed it) the chain must contain.
    #[arg(long, value_name = "FILE")]
    checkpoint: Option<PathBuf>,
}

/// `evidence export` arguments.
#[derive(Debug, clap::Args)]
pub struct ExportArgs {
    #[command(flatten)]
    location: StoreArgs,
    /// Records recorded at or after this time: RFC 3339 (`2026-01-31T08:00:00Z`) or a date
    /// (`2026-01-31`, midnight UTC). Default: every record.
    #[arg(long, value_name = "TIME", value_parser = parse_since)]
    since: Option<Timestamp>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = ExportFormat::Jsonl)]
    format: ExportFormat,
    /// Write to FILE instead of standard output.
    #[arg(long, value_name = "FILE")]
    output: Option<PathBuf>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum ExportFormat {
    /// One canonical envelope per line; SHA-256 of a line is the record's digest.
    Jsonl,
}

/// `evidence stress-append` arguments.
#[derive(Debug, clap::Args)]
pub struct StressAppendArgs {
    /// The store (created if absent).
    #[arg(long, value_name = "FILE")]
    store: PathBuf,
    /// The signing key file.
    #[arg(long, value_name = "FILE")]
    key: PathBuf,
    /// Records to append.
    #[arg(long)]
    count: u64,
    /// Records per transaction.
    #[arg(long, default_value_t = 1)]
    batch: u64,
}

/// Runs `keygen`.
pub fn run_keygen(args: KeygenArgs, out: &mut dyn Write) -> Result<u8> {
    let generated = keys::keygen(&args.output)?;
    writeln!(
        out,
        "wrote {} (private, mode 0600) and {} (public, mode 0644)",
        args.output.display(),
        generated.public_path.display()
    )?;
    writeln!(
        out,
        "public key: {}",
        keys::encode_public_key(&generated.public)
    )?;
    writeln!(out, "keyid: {}", generated.keyid)?;
    Ok(0)
}

/// Runs an `evidence` subcommand.
pub fn run_evidence(command: EvidenceCommand, out: &mut dyn Write) -> Result<u8> {
    match command {
        EvidenceCommand::Verify(args) => run_verify(args, out),
        EvidenceCommand::Export(args) => run_export(args, out),
        EvidenceCommand::Checkpoint(args) => run_checkpoint(args, out),
        EvidenceCommand::StressAppend(args) => run_stress_append(args, out),
    }
}

/// What `check` does with its findings: record them, or say why it cannot.
pub enum CheckEvidence {
    /// A signing key is configured: findings become records.
    Record {
        /// The key and where it came from (boxed: a key is large, `Off` is small).
        key: Box<LoadedKey>,
        /// The scrubber keyed with the PHI token key.
        scrubber: Scrubber,
        /// The store.
        store: PathBuf,
    },
    /// No key: findings are printed only, for this reason.
    Off(String),
}

/// Loads the signing key and PHI token key before the checks run, so a misconfigured key
/// stops `check` before it does any work.
pub fn prepare_check(config: &Config) -> Result<CheckEvidence> {
    let Some(key) = keys::load_configured(config.signing_key_file.as_deref())? else {
        return Ok(CheckEvidence::Off(format!(
            "no signing key (set evidence.signing_key_file, or provide the systemd credential {})",
            keys::CREDENTIAL_NAME
        )));
    };
    let token_key = keys::phi_token_key(config.phi_token_key_file.as_deref(), &key.key)?;
    Ok(CheckEvidence::Record {
        scrubber: Scrubber::new(&token_key),
        key: Box::new(key),
        store: crate::evidence::store_path(&config.state_dir),
    })
}

/// Appends one `check` record per finding in one transaction; returns the footer line.
pub fn record_check(evidence: CheckEvidence, config: &Config, report: &Report) -> Result<String> {
    let (key, scrubber, store_path) = match evidence {
        CheckEvidence::Record {
            key,
            scrubber,
            store,
        } => (key, scrubber, store),
        CheckEvidence::Off(why) => return Ok(format!("evidence: none recorded: {why}")),
    };
    let drafts =
        crate::evidence::check_drafts(report, &scrubber).context("cannot serialize a finding")?;
    if drafts.is_empty() {
        return Ok("evidence: none recorded: no findings".to_string());
    }
    if let Some(dir) = store_path.parent() {
        create_private_dir(dir)?;
    }
    let mut store = Store::open(&store_path)?;
    let appended = store
        .append(&drafts, &author(config), Timestamp::now(), &key.key)
        .with_context(|| format!("findings were not recorded as evidence ({})", key.source))?;
    let Some(head) = appended.last() else {
        bail!("the store appended nothing");
    };
    Ok(format!(
        "evidence: {} check records appended to {} in one transaction; head seq {} {}",
        appended.len(),
        store_path.display(),
        head.seq,
        head.digest
    ))
}

fn run_verify(args: VerifyArgs, out: &mut dyn Write) -> Result<u8> {
    let config = load_config(args.location.config.as_deref())?;
    let trusted = trusted_keys(&args.pubkey, &config)?;
    let pin = match &args.checkpoint {
        None => None,
        Some(path) => {
            let bytes = read_document(path)?;
            match verify::checkpoint_pin(&bytes, &trusted) {
                Ok(pin) => Some(pin),
                Err(why) => {
                    writeln!(out, "evidence verify: FAILED")?;
                    writeln!(out, "checkpoint {}: {why}", path.display())?;
                    return Ok(1);
                }
            }
        }
    };
    let (source, res) = match &args.input {
        Some(input) => {
            let file =
                File::open(input).with_context(|| format!("cannot open {}", input.display()))?;
            let records = verify::jsonl_records(BufReader::new(file), input.display().to_string());
            (
                format!("export {}", input.display()),
                verify::verify_records(records, &trusted, pin.clone()),
            )
        }
        None => {
            let path = store_location(&args.location, &config);
            let store = open_existing(&path)?;
            (
                format!("store {}", path.display()),
                verify::verify_records(verify::store_records(&store), &trusted, pin.clone()),
            )
        }
    };
    match res {
        Ok(verdict) => {
            write_verdict(out, &source, &verdict, pin.as_ref())?;
            Ok(0)
        }
        Err(VerifyError::Bad(bad)) => {
            let BadRecord {
                location,
                digest,
                problem,
                note,
            } = *bad;
            writeln!(out, "evidence verify: FAILED")?;
            writeln!(out, "source: {source}")?;
            let at = location.map(|it| format!("{it}: ")).unwrap_or_default();
            let note = note.map(|it| format!(" ({it})")).unwrap_or_default();
            writeln!(out, "first bad record: {at}{problem}{note}")?;
            if let Some(digest) = digest {
                writeln!(out, "its digest: {digest}")?;
            }
            Ok(1)
        }
        Err(err) => Err(err.into()),
    }
}

fn write_verdict(
    out: &mut dyn Write,
    source: &str,
    verdict: &Verdict,
    pin: Option<&Pin>,
) -> Result<()> {
    let summary = &verdict.summary;
    writeln!(out, "evidence verify: ok")?;
    writeln!(out, "source: {source}")?;
    match (summary.first_seq, &summary.head) {
        (Some(first), Some((last, digest))) => {
            writeln!(
                out,
                "records: {} (seq {first} to {last})",
                summary.n_records
            )?;
            writeln!(out, "head: seq {last} {digest}")?;
        }
        _ => writeln!(out, "records: 0 (empty chain)")?,
    }
    writeln!(out, "checkpoints: {}", summary.n_checkpoints)?;
    let keyids: Vec<&str> = verdict.keyids.iter().map(String::as_str).collect();
    writeln!(out, "keyids: {}", keyids.join(", "))?;
    if let Some(pin) = pin {
        writeln!(
            out,
            "checkpoint: seq {} {} is in the chain",
            pin.seq, pin.digest
        )?;
    }
    Ok(())
}

fn run_export(args: ExportArgs, out: &mut dyn Write) -> Result<u8> {
    let ExportFormat::Jsonl = args.format;
    let config = load_config(args.location.config.as_deref())?;
    let path = store_location(&args.location, &config);
    let store = open_existing(&path)?;
    let since = args.since.map_or(i64::MIN, |it| it.as_second());
    let mut file = match &args.output {
        Some(output) => Some(
            File::create(output).with_context(|| format!("cannot create {}", output.display()))?,
        ),
        None => None,
    };
    let mut n_records: u64 = 0;
    let mut range: Option<(u64, u64)> = None;
    {
        let mut writer: Box<dyn Write + '_> = match &mut file {
            Some(file) => Box::new(std::io::BufWriter::new(file)),
            None => Box::new(std::io::BufWriter::new(&mut *out)),
        };
        store.for_each_since(since, |record| -> Result<()> {
            // The stored bytes are the canonical envelope: exported as they are, so SHA-256 of
            // a line is the digest the next record's `prev` names.
            writer.write_all(&record.envelope)?;
            writer.write_all(b"\n")?;
            n_records += 1;
            range = Some((range.map_or(record.seq, |it| it.0), record.seq));
            Ok(())
        })?;
        writer.flush()?;
    }
    if let (Some(file), Some(output)) = (&file, &args.output) {
        file.sync_all()
            .with_context(|| format!("cannot write {}", output.display()))?;
    }
    let target = args.output.as_ref().map_or_else(
        || "standard output".to_string(),
        |it| it.display().to_string(),
    );
    match range {
        Some((first, last)) => eprintln!(
            "exported {n_records} records (seq {first} to {last}) from {} to {target}",
            path.display()
        ),
        None => eprintln!("exported 0 records from {} to {target}", path.display()),
    }
    Ok(0)
}

fn run_checkpoint(args: StoreArgs, out: &mut dyn Write) -> Result<u8> {
    let config = load_config(args.config.as_deref())?;
    let key = keys::load_configured(config.signing_key_file.as_deref())?.ok_or_else(|| {
        anyhow!(
            "no signing key: set evidence.signing_key_file in the configuration (--config) or provide the systemd credential {}",
            keys::CREDENTIAL_NAME
        )
    })?;
    let path = store_location(&args, &config);
    let mut store = open_existing(&path)?;
    let appended = store
        .append_checkpoint(&author(&config), Timestamp::now(), &key.key)?
        .ok_or_else(|| {
            anyhow!(
                "evidence store {} is empty: nothing to checkpoint",
                path.display()
            )
        })?;
    let record = store
        .records_from(appended.seq, 1)?
        .into_iter()
        .next()
        .ok_or_else(|| anyhow!("checkpoint seq {} vanished from the store", appended.seq))?;
    out.write_all(&record.envelope)?;
    writeln!(out)?;
    eprintln!(
        "checkpoint seq {} {} pins seq {} (signed by {}, {})",
        appended.seq,
        appended.digest,
        appended.seq.saturating_sub(1),
        dsse::keyid(&key.key.verifying_key()),
        key.source
    );
    Ok(0)
}

fn run_stress_append(args: StressAppendArgs, out: &mut dyn Write) -> Result<u8> {
    let key = keys::load_signing_key(&args.key)?;
    let mut store = Store::open(&args.store)?;
    let author = Author {
        site_id: Some("stress".to_string()),
        host_id: "stress".to_string(),
        agent_version: env!("CARGO_PKG_VERSION").to_string(),
    };
    let batch = args.batch.max(1);
    let mut done: u64 = 0;
    while done < args.count {
        let n = batch.min(args.count - done);
        let drafts: Vec<Draft> = (done..done + n)
            .map(|it| Draft {
                kind: RecordKind::Check,
                baseline: None,
                controls: Vec::new(),
                body: json!({ "stress": it }),
            })
            .collect();
        let appended = store.append(&drafts, &author, Timestamp::now(), &key)?;
        // Printed only after the commit returned: every line is a promise the crash test
        // holds the store to.
        for it in &appended {
            writeln!(out, "appended {} {}", it.seq, it.digest)?;
        }
        out.flush()?;
        done += n;
    }
    Ok(0)
}

fn parse_since(text: &str) -> Result<Timestamp, String> {
    if let Ok(it) = text.parse::<Timestamp>() {
        return Ok(it);
    }
    if let Ok(date) = text.parse::<jiff::civil::Date>()
        && let Ok(it) = format!("{date}T00:00:00Z").parse::<Timestamp>()
    {
        return Ok(it);
    }
    Err(format!(
        "expected an RFC 3339 time (2026-01-31T08:00:00Z) or a date (2026-01-31), found {text:?}"
    ))
}

fn load_config(path: Option<&Path>) -> Result<Config> {
    match path {
        Some(path) => Ok(Config::load(path)?),
        None => Ok(Config::unconfigured(super::host_name(
            &crate::facts::fs::Root::new("/"),
        ))),
    }
}

fn store_location(args: &StoreArgs, config: &Config) -> PathBuf {
    args.store
        .clone()
        .unwrap_or_else(|| crate::evidence::store_path(&config.state_dir))
}

/// Opens a store that must already exist: verifying or exporting never creates one.
fn open_existing(path: &Path) -> Result<Store> {
    if !path.is_file() {
        bail!(
            "evidence store {} does not exist (pass --store FILE, or --config with the agent's state_dir)",
            path.display()
        );
    }
    Ok(Store::open(path)?)
}

/// The keys `evidence verify` trusts: the `--pubkey` files, else the configured key's public half.
fn trusted_keys(pubkeys: &[PathBuf], config: &Config) -> Result<Vec<VerifyingKey>> {
    if !pubkeys.is_empty() {
        return pubkeys
            .iter()
            .map(|it| keys::load_public_key(it).map_err(anyhow::Error::from))
            .collect();
    }
    match keys::load_configured(config.signing_key_file.as_deref())? {
        Some(LoadedKey { key, .. }) => Ok(vec![key.verifying_key()]),
        None => bail!(
            "no key to trust: pass --pubkey FILE (the .pub written by keygen), or --config with evidence.signing_key_file"
        ),
    }
}

fn author(config: &Config) -> Author {
    Author {
        site_id: config.site_id.clone(),
        host_id: config.host_id.clone(),
        agent_version: env!("CARGO_PKG_VERSION").to_string(),
    }
}

/// Creates the state directory (mode 0700) if it is missing.
fn create_private_dir(dir: &Path) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    if dir.as_os_str().is_empty() || dir.is_dir() {
        return Ok(());
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("cannot create the state directory {}", dir.display()))
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use base64::Engine;
    use base64::engine::general_purpose::STANDARD;

    use super::*;
    use crate::baseline::Baseline;
    use crate::checks;
    use crate::facts::fs::Root;

    #[test]
    fn check_records_are_scrubbed_before_they_are_signed() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("signing.key");
        keys::keygen(&key).unwrap();
        let mut config = Config::unconfigured("nixos-1".to_string());
        config.site_id = Some("clinic-a".to_string());
        config.state_dir = dir.path().join("state");
        config.signing_key_file = Some(key);
        let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/hosts/nixos-site");
        let baseline = Baseline::embedded();
        let host = super::super::build_host(Root::new(&fixture), &config);
        let selected = checks::select(&["backup".to_string()]).unwrap();
        let now = Timestamp::now();
        let mut findings = checks::run(&selected, &host, &baseline, now);
        findings[0].summary =
            "restore test for patient SSN 123-45-6789 failed; tell jane.doe@example.com".into();
        let report = Report {
            agent_version: "0.1.0".to_string(),
            site_id: config.site_id.clone(),
            host_id: config.host_id.clone(),
            observed_at: now,
            baseline: baseline.reference(),
            findings,
        };
        let evidence = prepare_check(&config).unwrap();
        let footer = record_check(evidence, &config, &report).unwrap();
        assert!(footer.contains("1 check records appended"), "{footer}");
        let store = Store::open(&crate::evidence::store_path(&config.state_dir)).unwrap();
        let record = store.records_from(0, 1).unwrap().remove(0);
        let envelope = record.parse().unwrap();
        let payload = String::from_utf8(STANDARD.decode(envelope.payload).unwrap()).unwrap();
        assert!(!payload.contains("123-45-6789"), "{payload}");
        assert!(!payload.contains("jane.doe@example.com"), "{payload}");
        assert!(
            payload.contains("restore test for patient SSN [SSN:"),
            "{payload}"
        );
    }
}
