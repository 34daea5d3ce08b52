//! `order apply`, `heal status|recover` and `heal-unit`: the command line of healing.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};
use msp_compliance_protocol::dsse::Envelope;
use msp_compliance_protocol::order::Outcome;

use crate::config::Config;
use crate::daemon::{Context, Options, State, clock, pipeline};
use crate::heal::helper::{self, HelperError, HelperPaths};
use crate::heal::journal::{Journal, journal_path};
use crate::orders::ClockState;

#[derive(Debug, clap::Subcommand)]
pub enum OrderCommand {
    /// Apply one signed order (a DSSE envelope as JSON) through every guardrail.
    Apply {
        /// Agent configuration (its `orders` section pins the order keys).
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        /// The signed order.
        order: PathBuf,
    },
}

#[derive(Debug, clap::Subcommand)]
pub enum HealCommand {
    /// List heals that were interrupted before they finished.
    Status {
        /// Agent configuration.
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
    },
    /// Finish interrupted heals now (verify, roll back, escalate; every step is evidence).
    Recover {
        /// Agent configuration.
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
    },
}

#[derive(Debug, clap::Args)]
pub struct HealUnitArgs {
    /// The unit's instance name (`%i`), e.g. `restart-chronyd`.
    instance: String,
}

fn build_context(config_path: &Path) -> Result<Context> {
    let (config, config_bytes) = Config::load_with_bytes(config_path)?;
    let options = Options {
        config_path: config_path.to_path_buf(),
        config_bytes,
        root: None,
        resume: None,
        reexec: false,
    };
    Context::build(config, &options).context("cannot load what the configuration names")
}

pub fn run_order_command(command: OrderCommand, out: &mut dyn Write) -> Result<u8> {
    let OrderCommand::Apply { config, order } = command;
    let mut context = build_context(&config)?;
    let finished = crate::heal::recover_interrupted(&mut context).map_err(anyhow::Error::msg)?;
    if finished > 0 {
        eprintln!("finished {finished} interrupted heals first");
    }
    // The one bounded reader of documents: 1 MiB, errors name the file.
    let bytes = crate::config::read_document(&order)?;
    let envelope: Envelope = serde_json::from_slice(&bytes)
        .with_context(|| format!("{}: not a DSSE envelope", order.display()))?;
    // No check-in here: the server's time is unknown, so a disruptive order is refused
    // (`clock_untrusted`) unless the window defers it first. Safe by construction.
    let host = crate::cli::build_host(context.root.clone(), &context.config);
    let clock = ClockState {
        synchronized: clock::synchronized(&host),
        server_offset: None,
    };
    let mut state = State::default();
    let Some(result) = pipeline::process(&mut context, &mut state, &envelope, &clock) else {
        anyhow::bail!(
            "the order was not answered (already answered, or the agent's storage failed; see the log)"
        );
    };
    serde_json::to_writer_pretty(&mut *out, &result)?;
    writeln!(out)?;
    Ok(match result.outcome {
        Outcome::Executed | Outcome::DryRun => 0,
        _ => 1,
    })
}

pub fn run_heal_command(command: HealCommand, out: &mut dyn Write) -> Result<u8> {
    match command {
        HealCommand::Status { config } => {
            let config = Config::load(&config)?;
            let path = journal_path(&config.state_dir);
            if !path.exists() {
                writeln!(out, "no heal has run on this host")?;
                return Ok(0);
            }
            let journal = Journal::open(&path)?;
            let open = journal.open_heals()?;
            if open.is_empty() {
                writeln!(out, "no interrupted heal")?;
            }
            for heal in &open {
                writeln!(
                    out,
                    "{}  {}  {}  interrupted in phase {}",
                    heal.heal_id,
                    heal.runbook,
                    heal.instance,
                    heal.phase.map_or("unknown", |it| it.as_str())
                )?;
            }
            Ok(u8::from(!open.is_empty()))
        }
        HealCommand::Recover { config } => {
            let mut context = build_context(&config)?;
            let finished =
                crate::heal::recover_interrupted(&mut context).map_err(anyhow::Error::msg)?;
            writeln!(out, "finished {finished} interrupted heals")?;
            Ok(0)
        }
    }
}

pub fn run_heal_unit(args: HealUnitArgs, out: &mut dyn Write) -> Result<u8> {
    match helper::run(&args.instance, &HelperPaths::default()) {
        Ok(report) => {
            serde_json::to_writer(&mut *out, &report)?;
            writeln!(out)?;
            Ok(if report.ok { 0 } else { 1 })
        }
        Err(err @ HelperError::Write { .. }) => Err(err.into()),
        Err(err) => {
            eprintln!("refused: {err}");
            Ok(2)
        }
    }
}
