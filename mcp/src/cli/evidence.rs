//! `evidence verify` and `evidence export`: a host's stored chain, re-verified from seq 0 with
//! its pinned key, or printed as it was stored.
//!
//! `verify` reads the chain in windows: per window, every stored row's bytes must be the
//! canonical form of an envelope whose digest is the stored digest; signatures are checked in
//! batches (`protocol::evidence::open_many`); then `ChainVerifier::push_link` checks seq, `prev`
//! and the last accepted checkpoint in order, so the first bad record is the one reported.
//! `export` prints each stored envelope's exact bytes, one per line (JSON Lines), so what an
//! auditor hashes is what the agent signed.

use std::io::{BufWriter, Write};

use anyhow::{Context, Result, anyhow};
use msp_compliance_protocol::dsse::{self, Envelope};
use msp_compliance_protocol::evidence::{self, ChainVerifier, EnvelopeRef, Pin};

use crate::db::evidence::{self as stored_evidence, StoredRecord};
use crate::db::hosts::{self};
use crate::db::{self, DbError};
use crate::ingest::digest_of_canonical;
use crate::keys;
use crate::state::StateDir;

/// Records verified per window.
const WINDOW: usize = 1024;

#[derive(Debug, clap::Subcommand)]
pub enum EvidenceCommand {
    /// Re-verify a host's stored chain from seq 0 with its pinned key; exit 1 on a bad chain.
    Verify(HostArgs),
    /// Print a host's stored envelopes, exactly as stored, one per line.
    Export(ExportArgs),
}

#[derive(Debug, clap::Args)]
pub struct HostArgs {
    /// Site id.
    #[arg(long, value_name = "SITE")]
    site: String,
    /// Host id.
    #[arg(long, value_name = "HOST")]
    host: String,
}

#[derive(Debug, clap::Args)]
pub struct ExportArgs {
    #[command(flatten)]
    host: HostArgs,
    /// First seq to print (inclusive); default 0.
    #[arg(long, value_name = "SEQ", default_value_t = 0)]
    since: u64,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Jsonl)]
    format: Format,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// One envelope per line.
    Jsonl,
}

/// Runs an evidence command; returns the exit status.
pub fn run(state: &StateDir, command: EvidenceCommand) -> Result<u8> {
    match command {
        EvidenceCommand::Verify(args) => verify(state, &args),
        EvidenceCommand::Export(args) => export(state, &args),
    }
}

/// Why verification stopped early.
enum Stop {
    Bad(String),
    Database(DbError),
}

impl From<DbError> for Stop {
    fn from(err: DbError) -> Stop {
        Stop::Database(err)
    }
}

fn verify(state: &StateDir, args: &HostArgs) -> Result<u8> {
    let conn = db::open(&state.database())?;
    let host = hosts::require(&conn, &args.site, &args.host)?;
    let pinned = host.agent_key.as_deref().ok_or_else(|| {
        anyhow!(
            "{}/{} has no pinned agent key; there is nothing to verify against",
            host.site_id,
            host.host_id
        )
    })?;
    let key = keys::parse_public_key(pinned, "pinned agent key")?;
    let trusted = [key];
    let checkpoint = hosts::checkpoint(&conn, host.id)?;
    let pin = checkpoint.as_ref().map(|it| Pin {
        seq: it.seq,
        digest: it.digest.clone(),
    });
    let mut verifier = ChainVerifier::new(&trusted, pin);
    let mut window: Vec<(Envelope, String)> = Vec::with_capacity(WINDOW);
    let res = stored_evidence::for_each(
        &conn,
        host.id,
        0,
        |record: StoredRecord| -> Result<(), Stop> {
            window.push(check_stored(&record)?);
            if window.len() == WINDOW {
                push_window(&mut verifier, &trusted, &mut window)?;
            }
            Ok(())
        },
    )
    .and_then(|()| push_window(&mut verifier, &trusted, &mut window));
    let mut out = std::io::stdout().lock();
    match res {
        Ok(()) => {}
        Err(Stop::Bad(message)) => {
            writeln!(
                out,
                "bad chain for {}/{}: {message}",
                host.site_id, host.host_id
            )?;
            return Ok(1);
        }
        Err(Stop::Database(err)) => return Err(err.into()),
    }
    let summary = match verifier.finish() {
        Ok(summary) => summary,
        Err(err) => {
            writeln!(
                out,
                "bad chain for {}/{}: {err}",
                host.site_id, host.host_id
            )?;
            return Ok(1);
        }
    };
    let verified_head = summary
        .head
        .as_ref()
        .map(|(seq, digest)| (*seq, digest.as_str()));
    let stored_head = host.head.as_ref().map(|it| (it.seq, it.digest.as_str()));
    if verified_head != stored_head {
        writeln!(
            out,
            "bad chain for {}/{}: the chain ends at {:?} but the stored head is {:?}",
            host.site_id, host.host_id, verified_head, stored_head
        )?;
        return Ok(1);
    }
    match &summary.head {
        Some((seq, digest)) => writeln!(
            out,
            "ok: {}/{}: {} records, seq 0..={seq}, head {digest}{}",
            host.site_id,
            host.host_id,
            summary.n_records,
            checkpoint.map_or(String::new(), |it| format!(
                ", contains the checkpointed seq {}",
                it.seq
            ))
        )?,
        None => writeln!(
            out,
            "ok: {}/{}: no records stored",
            host.site_id, host.host_id
        )?,
    }
    Ok(0)
}

/// The stored bytes must be the canonical form of an envelope, and the stored digest theirs:
/// a row edited in the database is reported here even if its signature still verifies.
fn check_stored(record: &StoredRecord) -> Result<(Envelope, String), Stop> {
    let envelope: Envelope = serde_json::from_slice(&record.envelope).map_err(|err| {
        Stop::Bad(format!(
            "seq {}: stored bytes are not an envelope: {err}",
            record.seq
        ))
    })?;
    if dsse::canonical_bytes(&envelope) != record.envelope {
        return Err(Stop::Bad(format!(
            "seq {}: stored bytes are not in canonical form",
            record.seq
        )));
    }
    let digest = digest_of_canonical(&record.envelope);
    if digest != record.digest {
        return Err(Stop::Bad(format!(
            "seq {}: stored digest {} is not the digest of its bytes ({digest})",
            record.seq, record.digest
        )));
    }
    Ok((envelope, digest))
}

fn push_window(
    verifier: &mut ChainVerifier<'_>,
    trusted: &[ed25519_dalek::VerifyingKey],
    window: &mut Vec<(Envelope, String)>,
) -> Result<(), Stop> {
    let envelopes: Vec<EnvelopeRef<'_>> = window
        .iter()
        .map(|(envelope, _)| EnvelopeRef::Json(envelope))
        .collect();
    let links = evidence::open_many(&envelopes, trusted);
    for (link, (_, digest)) in links.into_iter().zip(window.iter()) {
        verifier
            .push_link(link, digest)
            .map_err(|err| Stop::Bad(err.to_string()))?;
    }
    window.clear();
    Ok(())
}

fn export(state: &StateDir, args: &ExportArgs) -> Result<u8> {
    let Format::Jsonl = args.format;
    let conn = db::open(&state.database())?;
    let host = hosts::require(&conn, &args.host.site, &args.host.host)?;
    let mut out = BufWriter::new(std::io::stdout().lock());
    stored_evidence::for_each(&conn, host.id, args.since, |record| -> Result<()> {
        out.write_all(&record.envelope)?;
        out.write_all(b"\n")?;
        Ok(())
    })?;
    out.flush().context("cannot write to stdout")?;
    Ok(0)
}
