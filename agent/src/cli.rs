//! The command line: `check`, `config validate|schema`, `baseline show|validate|schema`,
//! `declared validate|schema`, `queue status|drain`, `keygen`, `evidence verify|export|checkpoint`,
//! `run` (the daemon).
//!
//! This is the edge of the binary: it parses arguments, builds the configuration, the baseline
//! and the host view, runs the checks and prints. It is the only module that prints.
//!
//! Exit status of `check`: 0 when every finding is pass, warn, not_applicable or exception;
//! 1 when any finding fails; 2 when none fails but any is unknown, and for usage or
//! configuration errors.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use msp_compliance_protocol::finding::{Finding, Report, Status};

use crate::baseline::Baseline;
use crate::checks;
use crate::config::{Config, PrivilegedFactsMode, read_document};
use crate::facts::command::{CommandSource, Limits};
use crate::facts::fs::Root;
use crate::facts::probe::{PROBE_RESULT_DIR, ProbeSource};
use crate::facts::{Host, HostPaths};

mod evidence;
mod heal;
mod queue;
mod run;

/// Where a fixture or image root keeps recorded command outputs.
pub const RECORDED_COMMANDS_DIR: &str = ".msp-compliance/commands";

/// msp-compliance-agent: HIPAA compliance checks for a site host.
#[derive(Debug, Parser)]
#[command(name = "msp-compliance-agent", version, about, long_about = None)]
pub struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Check this host against the baseline and print the findings.
    ///
    /// Exit status: 0 all acceptable (pass, warn, not_applicable, exception), 1 some check
    /// fails, 2 some check is unknown (and none fails) or a usage/configuration error.
    Check(CheckArgs),
    /// Validate a configuration file or print its JSON Schema.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Show, validate or describe baselines.
    #[command(subcommand)]
    Baseline(BaselineCommand),
    /// Validate a declared.json or print its JSON Schema.
    #[command(subcommand)]
    Declared(DeclaredCommand),
    /// Show or drain the outbox (evidence waiting for its sinks).
    #[command(subcommand)]
    Queue(QueueCommand),
    /// Generate an Ed25519 evidence signing key; prints its public key and keyid.
    Keygen(evidence::KeygenArgs),
    /// Verify, export or checkpoint the signed evidence chain.
    #[command(subcommand)]
    Evidence(evidence::EvidenceCommand),
    /// Run the agent daemon: checks every poll interval, check-in with the control plane,
    /// orders, evidence shipping. Stops cleanly on SIGTERM/SIGINT (exit 0), reloads on SIGHUP.
    Run(run::RunArgs),
    /// Apply a signed order from a file, through every guardrail, as the daemon would
    /// (air-gapped sites, tests); finishes interrupted heals first. Prints the signed result.
    ///
    /// Exit status: 0 executed or dry run, 1 refused, deferred or failed, 2 error.
    #[command(subcommand)]
    Order(heal::OrderCommand),
    /// Interrupted heals: list them, or finish them (verify, roll back, escalate) now.
    #[command(subcommand)]
    Heal(heal::HealCommand),
    /// The root side of a heal unit; run only by `msp-compliance-heal@<instance>.service`.
    ///
    /// Exit status: 0 done, 1 the action failed (see the report), 2 refused.
    #[command(name = "heal-unit")]
    HealUnit(heal::HealUnitArgs),
}

#[derive(Debug, clap::Args)]
struct CheckArgs {
    /// Agent configuration (JSON or YAML); without it, defaults and the host name are used.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Baseline (JSON or YAML); overrides the configuration's, default the embedded `hipaa`.
    #[arg(long, value_name = "FILE")]
    baseline: Option<PathBuf>,
    /// Read facts under this prefix instead of `/` (a fixture tree or a mounted image).
    /// Commands are then replayed from DIR/.msp-compliance/commands, or reported unavailable.
    #[arg(long, value_name = "DIR")]
    root: Option<PathBuf>,
    /// Run only this check (repeatable).
    #[arg(long, value_name = "CHECK")]
    only: Vec<String>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    format: Format,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Format {
    Json,
    Table,
}

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// Validate a configuration file; prints the first error with its field path.
    Validate { file: PathBuf },
    /// Print the JSON Schema of the configuration file.
    Schema,
}

#[derive(Debug, Subcommand)]
enum BaselineCommand {
    /// Print the effective baseline (defaults filled in) as JSON, and its digest on stderr.
    Show {
        /// Baseline file; default the embedded `hipaa`.
        #[arg(long, value_name = "FILE")]
        baseline: Option<PathBuf>,
    },
    /// Validate a baseline file.
    Validate { file: PathBuf },
    /// Print the JSON Schema of baseline files.
    Schema,
}

#[derive(Debug, Subcommand)]
enum QueueCommand {
    /// Per sink: backlog, oldest undelivered record, failed attempts, next attempt, last error
    /// and last success; and the chain head.
    Status {
        /// Agent configuration (JSON or YAML); without it, defaults and the host name are used.
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
    },
    /// Run one delivery pass over every configured sink and print what was delivered.
    ///
    /// Exit status: 0 every sink caught up (or backing off after earlier failures), 1 a
    /// delivery failed in this pass, 2 a usage or configuration error.
    Drain {
        /// Agent configuration (JSON or YAML); without it, defaults and the host name are used.
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
enum DeclaredCommand {
    /// Validate a declared.json.
    Validate { file: PathBuf },
    /// Print the JSON Schema of declared.json (what the NixOS module renders).
    Schema,
}

/// Parses the process arguments and runs. Returns the exit status.
pub fn main() -> Result<u8> {
    let args = Args::parse();
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    run(args, &mut out)
}

/// Runs parsed arguments, writing to `out`.
pub fn run(args: Args, out: &mut dyn Write) -> Result<u8> {
    match args.command {
        Command::Check(check_args) => run_check(check_args, out),
        Command::Config(ConfigCommand::Validate { file }) => {
            Config::load(&file)?;
            writeln!(out, "{}: valid", file.display())?;
            Ok(0)
        }
        Command::Config(ConfigCommand::Schema) => print_json(out, &crate::config::schema()),
        Command::Baseline(BaselineCommand::Show { baseline }) => {
            let baseline = load_baseline(baseline.as_deref())?;
            eprintln!(
                "{} {} {}",
                baseline.policy().id,
                baseline.policy().version,
                baseline.digest()
            );
            print_json(out, baseline.policy())
        }
        Command::Baseline(BaselineCommand::Validate { file }) => {
            let baseline = Baseline::load(&file)?;
            writeln!(
                out,
                "{}: valid, digest {}",
                file.display(),
                baseline.digest()
            )?;
            Ok(0)
        }
        Command::Baseline(BaselineCommand::Schema) => print_json(out, &crate::baseline::schema()),
        Command::Declared(DeclaredCommand::Validate { file }) => {
            let bytes = read_document(&file)?;
            crate::facts::declared::parse(&file, &bytes)?;
            writeln!(out, "{}: valid", file.display())?;
            Ok(0)
        }
        Command::Declared(DeclaredCommand::Schema) => {
            print_json(out, &crate::facts::declared::schema())
        }
        Command::Queue(QueueCommand::Status { config }) => {
            let config = queue::load_config(config.as_ref(), || host_name(&Root::live()))?;
            queue::status(&config, out)
        }
        Command::Queue(QueueCommand::Drain { config }) => {
            let config = queue::load_config(config.as_ref(), || host_name(&Root::live()))?;
            queue::drain(&config, out)
        }
        Command::Keygen(keygen_args) => evidence::run_keygen(keygen_args, out),
        Command::Evidence(command) => evidence::run_evidence(command, out),
        Command::Run(run_args) => run::run_daemon(run_args),
        Command::Order(command) => heal::run_order_command(command, out),
        Command::Heal(command) => heal::run_heal_command(command, out),
        Command::HealUnit(args) => heal::run_heal_unit(args, out),
    }
}

fn run_check(args: CheckArgs, out: &mut dyn Write) -> Result<u8> {
    let root = Root::new(args.root.clone().unwrap_or_else(|| PathBuf::from("/")));
    let config = match &args.config {
        Some(path) => Config::load(path)?,
        None => Config::unconfigured(host_name(&root)),
    };
    let baseline_path = args.baseline.as_deref().or(config.baseline_file.as_deref());
    let baseline = load_baseline(baseline_path)?;
    let selected = checks::select(&args.only).map_err(anyhow::Error::msg)?;
    // The keys load before any check runs: a misconfigured key stops here, not after the work.
    let check_evidence = evidence::prepare_check(&config)?;
    let host = build_host(root, &config);
    let report = checks::report(&selected, &host, &baseline, &config, jiff::Timestamp::now());
    match args.format {
        Format::Json => {
            print_json(out, &report)?;
        }
        Format::Table => write_table(out, &report)?,
    }
    // Findings are printed first, so a store that cannot take them (disk full) still leaves
    // the operator the findings and a clear error (exit 2).
    let footer = evidence::record_check(check_evidence, &config, &report)?;
    match args.format {
        Format::Json => eprintln!("{footer}"),
        Format::Table => writeln!(out, "{footer}")?,
    }
    Ok(report.exit_code())
}

/// Builds the host view for a root and configuration.
pub fn build_host(root: Root, config: &Config) -> Host {
    let recorded = root.base().join(RECORDED_COMMANDS_DIR);
    let (commands, probes) = if root.is_live() {
        let limits = Limits {
            timeout: config.command_timeout,
            max_output: config.max_output_bytes,
            search_path: config.search_path.clone(),
        };
        let probes = match config.privileged_facts {
            PrivilegedFactsMode::Direct => ProbeSource::Direct,
            PrivilegedFactsMode::Units => ProbeSource::Units(PathBuf::from(PROBE_RESULT_DIR)),
        };
        (CommandSource::Live(limits), probes)
    } else if recorded.is_dir() {
        (
            CommandSource::Recorded(recorded.clone()),
            ProbeSource::Recorded(recorded),
        )
    } else {
        let why = format!(
            "commands are not run under --root (record their outputs in {})",
            recorded.display()
        );
        (
            CommandSource::Disabled(why.clone()),
            ProbeSource::Recorded(recorded),
        )
    };
    let paths = HostPaths {
        state_dir: config.state_dir.clone(),
        clamd_socket: config.clamd_socket.clone(),
        clamav_database_dir: config.clamav_database_dir.clone(),
        backup_jobs: config.backup_jobs.clone(),
    };
    Host::new(root, commands, probes, &config.declared_file, paths)
}

fn load_baseline(path: Option<&Path>) -> Result<Baseline> {
    match path {
        Some(path) => Ok(Baseline::load(path)?),
        None => Ok(Baseline::embedded()),
    }
}

fn host_name(root: &Root) -> String {
    ["/etc/hostname", "/proc/sys/kernel/hostname"]
        .iter()
        .filter_map(|it| root.read_text(Path::new(it)).ok())
        .map(|it| it.trim().to_string())
        .find(|it| crate::config::is_identifier(it))
        .unwrap_or_else(|| "localhost".to_string())
}

fn print_json(out: &mut dyn Write, value: &impl serde::Serialize) -> Result<u8> {
    serde_json::to_writer_pretty(&mut *out, value).context("cannot write JSON")?;
    writeln!(out)?;
    Ok(0)
}

/// Writes the human-readable report: one row per check, then the reasons of every rule that
/// did not pass, then which baseline judged and what the exit status means.
fn write_table(out: &mut dyn Write, report: &Report) -> std::io::Result<()> {
    let rows: Vec<[String; 5]> = report
        .findings
        .iter()
        .map(|finding| {
            let fix = finding
                .fixes
                .first()
                .map(|it| format!("{} [{}]", one_line(&it.action, 60), it.safety.as_str()))
                .unwrap_or_else(|| "-".to_string());
            [
                finding.check.clone(),
                finding.status.to_string(),
                finding.controls.first().cloned().unwrap_or_default(),
                one_line(&finding.summary, 70),
                fix,
            ]
        })
        .collect();
    let header = ["CHECK", "STATUS", "HIPAA", "WHY", "FIX"].map(String::from);
    let mut widths = header.clone().map(|it| it.chars().count());
    for row in &rows {
        for (idx, cell) in row.iter().enumerate() {
            widths[idx] = widths[idx].max(cell.chars().count());
        }
    }
    for row in std::iter::once(&header).chain(rows.iter()) {
        let mut line = String::new();
        for (idx, cell) in row.iter().enumerate() {
            if idx + 1 == row.len() {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:<width$}  ", width = widths[idx]));
            }
        }
        writeln!(out, "{}", line.trim_end())?;
    }
    let details: Vec<&Finding> = report
        .findings
        .iter()
        .filter(|it| it.status != Status::Pass)
        .collect();
    if !details.is_empty() {
        writeln!(out)?;
        for finding in details {
            for result in finding
                .results
                .iter()
                .filter(|it| !matches!(it.status, Status::Pass))
            {
                writeln!(
                    out,
                    "  {:<14} {}: {}",
                    result.status.to_string(),
                    result.rule,
                    result.message
                )?;
                if let Some(fix) = &result.fix {
                    writeln!(
                        out,
                        "                 fix: {} [{}]",
                        fix.action,
                        fix.safety.as_str()
                    )?;
                }
            }
        }
    }
    writeln!(out)?;
    let verdict = match report.exit_code() {
        0 => "all checks acceptable",
        1 => "some checks fail",
        _ => "some checks could not be evaluated",
    };
    writeln!(
        out,
        "baseline {} {} ({}) · host {} · {} · exit {} ({verdict})",
        report.baseline.id,
        report.baseline.version,
        report.baseline.digest,
        report.host_id,
        report.observed_at.strftime("%Y-%m-%dT%H:%M:%SZ"),
        report.exit_code()
    )?;
    Ok(())
}

fn one_line(text: &str, max_chars: usize) -> String {
    let flat = text.replace('\n', " ");
    if flat.chars().count() <= max_chars {
        return flat;
    }
    let mut res: String = flat.chars().take(max_chars - 1).collect();
    res.push('…');
    res
}
