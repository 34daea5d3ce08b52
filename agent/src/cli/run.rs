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
use nix::sys::signal::{SigSet, SigmaskHow, Signal, sigprocmask};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use crate::config::Config;
use crate::daemon::{self, Options};

/// `run` arguments. These flags are a compatibility promise (the NixOS module's unit and the
/// end-to-end tests use them); the hidden ones are how the daemon hands over to its next image.
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// Agent configuration (JSON or YAML); re-read on SIGHUP.
    #[arg(long, value_name = "FILE")]
    config: PathBuf,
    /// Read facts under this prefix instead of `/` (a fixture tree or a mounted image).
    /// Commands are then replayed from DIR/.msp-compliance/commands, or reported unavailable.
    #[arg(long, value_name = "DIR")]
    root: Option<PathBuf>,
    /// Stay in one image instead of re-executing between cycles.
    #[arg(long)]
    no_reexec: bool,
    /// Handover: the running configuration's snapshot (instead of `--config`'s current file).
    #[arg(long, hide = true, value_name = "FILE", requires = "resume_at")]
    resume_from: Option<PathBuf>,
    /// Handover: when the next cycle is due.
    #[arg(long, hide = true, value_name = "TIME")]
    resume_at: Option<jiff::Timestamp>,
    /// Handover: when the last checkpoint was sent.
    #[arg(long, hide = true, value_name = "TIME")]
    last_checkpoint_at: Option<jiff::Timestamp>,
}

/// The signals the daemon handles. They are blocked from process start until tokio's handlers
/// are installed, and again across a re-exec, so one that arrives in between stays pending
/// (and is handled) instead of killing a half-started process.
fn handled_signals() -> SigSet {
    let mut set = SigSet::empty();
    for it in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP] {
        set.add(it);
    }
    set
}

/// Runs the daemon until SIGTERM or SIGINT. Exit status 0 after a clean stop; a startup error
/// (configuration, keys, store) is returned and exits 2.
///
/// After each cycle the daemon re-executes its own binary (same process id, so systemd and
/// signals are unaffected) to wait for the next cycle in a fresh image: a cycle touches most
/// of the binary's code and leaves allocator arenas behind, which would otherwise stay resident
/// while it sleeps. The running configuration's bytes go along (a snapshot in the state
/// directory), so a file changed without SIGHUP still applies only on SIGHUP. If the re-exec
/// fails, the daemon goes on in this image.
pub fn run_daemon(args: RunArgs) -> Result<u8> {
    sigprocmask(SigmaskHow::SIG_BLOCK, Some(&handled_signals()), None)
        .context("cannot block signals during start-up")?;
    init_logging();
    let (config, config_bytes) = match &args.resume_from {
        Some(snapshot) => {
            let bytes = crate::config::read_document(snapshot)?;
            (Config::from_bytes(&args.config, &bytes)?, bytes)
        }
        None => Config::load_with_bytes(&args.config)?,
    };
    let resume = args.resume_at.map(|next_cycle_at| daemon::Resume {
        next_cycle_at,
        last_checkpoint_at: args.last_checkpoint_at,
    });
    let mut options = Options {
        config_path: args.config.clone(),
        config_bytes,
        root: args.root.clone(),
        resume,
        reexec: !args.no_reexec,
    };
    let mut config = Some(config);
    loop {
        let config = match config.take() {
            Some(it) => it,
            // After a failed re-exec: the running configuration, again from its bytes.
            None => Config::from_bytes(&options.config_path, &options.config_bytes)?,
        };
        match run_image(config, options.clone())? {
            daemon::Exit::Stopped => return Ok(0),
            daemon::Exit::Reexec {
                resume,
                config_bytes,
                state_dir,
            } => {
                let err = reexec(&args, &resume, &config_bytes, &state_dir);
                // Only reached when the exec failed: go on in this image.
                let _ = sigprocmask(SigmaskHow::SIG_UNBLOCK, Some(&handled_signals()), None);
                tracing::warn!(error = %err, "cannot re-execute; the daemon goes on in this image");
                options.config_bytes = config_bytes;
                options.resume = Some(resume);
                options.reexec = false;
            }
        }
    }
}

/// One image's share of the daemon: a runtime, the signal handlers, `daemon::run`.
fn run_image(config: Config, options: Options) -> Result<daemon::Exit> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the runtime")?;
    runtime.block_on(async move {
        let mut terminate = signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?;
        let mut interrupt = signal(SignalKind::interrupt()).context("cannot listen for SIGINT")?;
        let mut hangup = signal(SignalKind::hangup()).context("cannot listen for SIGHUP")?;
        // The handlers are in place: signals that arrived meanwhile are delivered now.
        sigprocmask(SigmaskHow::SIG_UNBLOCK, Some(&handled_signals()), None)
            .context("cannot unblock signals")?;
        // One slot: reload requests that arrive while one is pending collapse into it.
        let (reload_sender, mut reload_receiver) = mpsc::channel(1);
        // The signal streams stay owned here (the daemon only borrows them), so a signal that
        // arrives after the daemon decided to re-execute is still seen below, not lost.
        let forward_reloads = async {
            while hangup.recv().await.is_some() {
                // Full: a reload is already pending, this one collapses into it.
                let _ = reload_sender.try_send(());
            }
        };
        let shutdown = async {
            tokio::select! {
                _ = terminate.recv() => tracing::info!(signal = "SIGTERM", "shutdown requested"),
                _ = interrupt.recv() => tracing::info!(signal = "SIGINT", "shutdown requested"),
            }
        };
        let exit = tokio::select! {
            exit = daemon::run(config, options, &mut reload_receiver, shutdown) => exit,
            () = forward_reloads => unreachable!("the SIGHUP stream never ends while the runtime runs"),
        }
        .map_err(anyhow::Error::from)?;
        if !matches!(exit, daemon::Exit::Reexec { .. }) {
            return Ok(exit);
        }
        // Blocked before the handlers go away with the runtime, so a signal arriving from here
        // on waits, pending, for the next image's handlers.
        sigprocmask(SigmaskHow::SIG_BLOCK, Some(&handled_signals()), None)
            .context("cannot block signals for the re-exec")?;
        // One that arrived between the daemon's last look and the block is in tokio's registry:
        // give its driver a turn to deliver it. A stop ends here; a reload is raised again so it
        // stays pending across the exec.
        tokio::select! {
            biased;
            _ = terminate.recv() => {
                tracing::info!(signal = "SIGTERM", "shutdown requested");
                return Ok(daemon::Exit::Stopped);
            }
            _ = interrupt.recv() => {
                tracing::info!(signal = "SIGINT", "shutdown requested");
                return Ok(daemon::Exit::Stopped);
            }
            _ = hangup.recv() => {
                nix::sys::signal::raise(nix::sys::signal::Signal::SIGHUP)
                    .context("cannot keep the reload request for the next image")?;
            }
            () = tokio::time::sleep(std::time::Duration::from_millis(10)) => {
                // Forwarded, but the daemon had already finished its cycle: not lost either.
                if reload_receiver.try_recv().is_ok() {
                    nix::sys::signal::raise(nix::sys::signal::Signal::SIGHUP)
                        .context("cannot keep the reload request for the next image")?;
                }
            }
        }
        Ok(exit)
    })
}

/// Replaces this image with a fresh one of the same binary that continues at `resume`.
/// Returns only if that fails.
fn reexec(
    args: &RunArgs,
    resume: &daemon::Resume,
    config_bytes: &[u8],
    state_dir: &std::path::Path,
) -> anyhow::Error {
    let snapshot = state_dir.join("running-config");
    let temporary = state_dir.join("running-config.tmp");
    let written = (|| -> std::io::Result<()> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&temporary)?;
        file.write_all(config_bytes)?;
        file.sync_all()?;
        std::fs::rename(&temporary, &snapshot)
    })();
    if let Err(err) = written {
        return anyhow::anyhow!("cannot write {}: {err}", snapshot.display());
    }
    let exe = match std::env::current_exe() {
        Ok(it) => it,
        Err(err) => return anyhow::anyhow!("cannot find the running binary: {err}"),
    };
    let mut command = std::process::Command::new(exe);
    command
        .arg("run")
        .arg("--config")
        .arg(&args.config)
        .arg("--resume-from")
        .arg(&snapshot)
        .arg("--resume-at")
        .arg(resume.next_cycle_at.to_string());
    if let Some(root) = &args.root {
        command.arg("--root").arg(root);
    }
    if let Some(at) = resume.last_checkpoint_at {
        command.arg("--last-checkpoint-at").arg(at.to_string());
    }
    use std::os::unix::process::CommandExt;
    anyhow::Error::from(command.exec())
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
