//! What an admitted order does: a dispatch on the runbook id. The whitelist and the parameter
//! schemas are data in `runbooks`; this module only performs, and only for an
//! `orders::Approved` (which `orders::admit` alone makes), so nothing here can run unverified.
//!
//! - `run-checks`: runs the checks now (all, or the `only` ones) and records their findings as
//!   `check` evidence, exactly as a cycle does;
//! - `collect-evidence`: exports records `since_seq..=until_seq` (the head when absent) as JSON
//!   Lines to `<state_dir>/exports/<order_id>.jsonl`, written to a temporary file, fsync'd and
//!   renamed, so the file is whole or absent; the output names the file, the count, the first
//!   and last seq and the file's SHA-256.
//!
//! An action that fails reports [`ActionReport::failed`]; it never panics on its input, which
//! came from the server.

use std::io::Write;
use std::path::{Path, PathBuf};

use jiff::Timestamp;
use msp_compliance_protocol::ids::runbook;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::checks;
use crate::daemon::{Context, State, cycle};
use crate::orders::Approved;

/// Directory below the state directory that receives `collect-evidence` exports.
pub const EXPORTS_DIR: &str = "exports";

/// Most records read from the store at once while exporting.
const EXPORT_BATCH: usize = 512;

/// What an action did.
#[derive(Clone, Debug, PartialEq)]
pub struct ActionReport {
    /// The action ran to its end.
    pub succeeded: bool,
    /// One sentence for the result and the evidence (ids and counts, no finding texts).
    pub detail: String,
    /// Structured output for the result.
    pub output: Value,
}

impl ActionReport {
    /// A successful action.
    pub fn done(detail: String, output: Value) -> ActionReport {
        ActionReport {
            succeeded: true,
            detail,
            output,
        }
    }

    /// A failed action and why.
    pub fn failed(detail: String) -> ActionReport {
        ActionReport {
            succeeded: false,
            detail,
            output: Value::Null,
        }
    }
}

/// Runs an approved order's action.
pub fn execute(approved: &Approved, context: &mut Context, state: &mut State) -> ActionReport {
    let params = approved.params();
    match approved.runbook().id {
        runbook::RUN_CHECKS => {
            let only: Vec<String> = params
                .subset("only")
                .map(|it| it.iter().map(|id| id.to_string()).collect())
                .unwrap_or_default();
            run_checks(context, state, &only)
        }
        runbook::COLLECT_EVIDENCE => {
            let since = params.integer("since_seq").unwrap_or(0);
            let until = params.integer("until_seq");
            collect_evidence(context, approved.order_id(), since, until)
        }
        _ if approved.runbook().heal.is_some() => crate::heal::run_order(approved, context),
        // The whitelist has an entry this dispatch does not know: a bug, reported as a failed
        // action rather than a crash.
        other => ActionReport::failed(format!(
            "runbook {other} is whitelisted but this agent has no implementation for it"
        )),
    }
}

fn run_checks(context: &mut Context, state: &mut State, only: &[String]) -> ActionReport {
    let selected = match checks::select(only) {
        Ok(it) => it,
        Err(message) => return ActionReport::failed(message),
    };
    match cycle::run_checks(context, &selected, Timestamp::now()) {
        Ok(run) => {
            if only.is_empty() {
                state.summary = run.summary.clone();
            }
            let summary = &run.summary;
            let detail = format!(
                "ran {} checks: {} pass, {} warn, {} fail, {} unknown, {} not applicable, {} exception",
                run.n_findings,
                summary.pass,
                summary.warn,
                summary.fail,
                summary.unknown,
                summary.not_applicable,
                summary.exception
            );
            ActionReport::done(
                detail,
                json!({
                    "checks": run.check_ids,
                    "summary": summary,
                    "evidence_first_seq": run.first_seq,
                    "evidence_last_seq": run.last_seq,
                }),
            )
        }
        Err(err) => ActionReport::failed(format!("checks ran but were not recorded: {err}")),
    }
}

fn collect_evidence(
    context: &Context,
    order_id: &str,
    since_seq: i64,
    until_seq: Option<i64>,
) -> ActionReport {
    let head = match context.store.head() {
        Ok(Some((seq, _))) => seq,
        Ok(None) => return ActionReport::failed("the evidence store is empty".to_string()),
        Err(err) => return ActionReport::failed(err.to_string()),
    };
    let since = u64::try_from(since_seq).unwrap_or(0);
    let until = until_seq.map_or(head, |it| u64::try_from(it).unwrap_or(0).min(head));
    if since > until {
        return ActionReport::failed(format!(
            "empty range: since_seq {since} is after {until} (the chain head is seq {head})"
        ));
    }
    let dir = context.config.state_dir.join(EXPORTS_DIR);
    match export_range(context, &dir, order_id, since, until) {
        Ok(export) => ActionReport::done(
            format!(
                "exported {} records (seq {} to {}) to {}",
                export.count,
                export.first_seq,
                export.last_seq,
                export.path.display()
            ),
            json!({
                "file": export.path.display().to_string(),
                "records": export.count,
                "first_seq": export.first_seq,
                "last_seq": export.last_seq,
                "sha256": export.sha256_hex,
            }),
        ),
        Err(err) => ActionReport::failed(format!("export failed: {err}")),
    }
}

/// A written export.
struct Export {
    path: PathBuf,
    count: u64,
    first_seq: u64,
    last_seq: u64,
    sha256_hex: String,
}

/// Writes records `since..=until` to `<dir>/<order_id>.jsonl` (temporary file, fsync, rename,
/// directory fsync). `order_id` is a token (verified order), so it is a safe file name.
fn export_range(
    context: &Context,
    dir: &Path,
    order_id: &str,
    since: u64,
    until: u64,
) -> Result<Export, Box<dyn std::error::Error>> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    let path = dir.join(format!("{order_id}.jsonl"));
    let temporary = dir.join(format!(".{order_id}.jsonl.tmp"));
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&temporary)?;
    let mut writer = std::io::BufWriter::new(file);
    let mut hasher = Sha256::new();
    let mut count = 0;
    let mut first_seq = None;
    let mut last_seq = since;
    let mut next = since;
    while next <= until {
        let limit =
            usize::try_from(until - next + 1).map_or(EXPORT_BATCH, |it| it.min(EXPORT_BATCH));
        let records = context.store.records_from(next, limit)?;
        let Some(last) = records.last().map(|it| it.seq) else {
            break;
        };
        for record in records.iter().filter(|it| it.seq <= until) {
            // The stored bytes are the canonical envelope, exported unchanged: SHA-256 of a
            // line is the record's digest.
            writer.write_all(&record.envelope)?;
            writer.write_all(b"\n")?;
            hasher.update(&record.envelope);
            hasher.update(b"\n");
            count += 1;
            first_seq.get_or_insert(record.seq);
            last_seq = record.seq;
        }
        next = last + 1;
    }
    let file = writer.into_inner().map_err(|err| err.into_error())?;
    file.sync_all()?;
    drop(file);
    std::fs::rename(&temporary, &path)?;
    std::fs::File::open(dir)?.sync_all()?;
    Ok(Export {
        path,
        count,
        first_seq: first_seq.unwrap_or(since),
        last_seq,
        sha256_hex: hex::encode(hasher.finalize()),
    })
}
