//! `run`: the daemon's edge. It sets up logging, loads the configuration, starts a
//! current-thread tokio runtime (one thread keeps the idle footprint small; the checks bring
//! their own scoped threads while they run), turns SIGTERM/SIGINT into the shutdown future and
//! SIGHUP into reload requests, and hands all of it to [`crate::daemon::run`].
//!
//! Logging goes to journald when the process runs under systemd with its output connected to
//! the journal (`JOURNAL_STREAM` is set), else to standard error; the filter is `RUST_LOG`
//! (default `info`). The daemon logs ids, counts and codes, never finding texts, facts or keys.
//! This module decides nothing about the cycle itself.

use std::path::PathBuf;

use anyhow::{Context, Result};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use crate::config::Config;
use crate::daemon::{self, Options};

/// `run` arguments. These flags are a compatibility promise (the NixOS module's unit and the
/// end-to-end tests use them).
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// Agent configuration (JSON or YAML); re-read on SIGHUP.
    #[arg(long, value_name = "FILE")]
    config: PathBuf,
    /// Read facts under this prefix instead of `/` (a fixture tree or a mounted image).
    /// Commands are then replayed from DIR/.msp-compliance/commands, or reported unavailable.
    #[arg(long, value_name = "DIR")]
    root: Option<PathBuf>,
}

/// Runs the daemon until SIGTERM or SIGINT. Exit status 0 after a clean stop; a startup error
/// (configuration, keys, store) is returned and exits 2.
pub fn run_daemon(args: RunArgs) -> Result<u8> {
    init_logging();
    let config = Config::load(&args.config)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the runtime")?;
    let options = Options {
        config_path: args.config,
        root: args.root,
    };
    runtime.block_on(async move {
        let mut terminate = signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?;
        let mut interrupt = signal(SignalKind::interrupt()).context("cannot listen for SIGINT")?;
        let mut hangup = signal(SignalKind::hangup()).context("cannot listen for SIGHUP")?;
        // One slot: reload requests that arrive while one is pending collapse into it.
        let (reload_sender, reload_receiver) = mpsc::channel(1);
        // Forwards SIGHUP to the daemon's reload channel. It ends when the daemon drops the
        // receiver (the send fails) or with the runtime, after `daemon::run` returns.
        tokio::spawn(async move {
            while hangup.recv().await.is_some() {
                if let Err(mpsc::error::TrySendError::Closed(())) = reload_sender.try_send(()) {
                    return;
                }
            }
        });
        let shutdown = async move {
            tokio::select! {
                _ = terminate.recv() => tracing::info!(signal = "SIGTERM", "shutdown requested"),
                _ = interrupt.recv() => tracing::info!(signal = "SIGINT", "shutdown requested"),
            }
        };
        daemon::run(config, options, reload_receiver, shutdown)
            .await
            .map_err(anyhow::Error::from)
    })?;
    Ok(0)
}

/// Installs the global log subscriber: journald under systemd, standard error otherwise.
fn init_logging() {
    let filter = || EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let under_journald = std::env::var_os("JOURNAL_STREAM").is_some_and(|it| !it.is_empty());
    if under_journald {
        match tracing_journald::layer() {
            Ok(layer) => {
                let layer = layer.with_syslog_identifier("msp-compliance-agent".to_string());
                // `try_init` fails only when a subscriber is already installed (tests).
                let _ = tracing_subscriber::registry()
                    .with(filter())
                    .with(layer)
                    .try_init();
                return;
            }
            Err(err) => {
                let _ = stderr_subscriber(filter()).try_init();
                tracing::warn!(error = %err, "journald is not reachable; logging to standard error");
                return;
            }
        }
    }
    let _ = stderr_subscriber(filter()).try_init();
}

fn stderr_subscriber(filter: EnvFilter) -> impl SubscriberInitExt {
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_target(false)
        .finish()
}
