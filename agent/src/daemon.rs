//! The daemon behind `msp-compliance-agent run`: the cycle of DESIGN §2 on a timer, pull-only.
//!
//! # Layout
//!
//! After tokio's mini-redis: [`run`] takes its shutdown signal as a future and its reload
//! requests as a channel, so `main` passes signals and tests pass whatever they like; the main
//! loop consumes one closed enum, [`Event`], so every trigger of work is visible in one place.
//! - `daemon.rs`: [`run`], the main loop, and the [`Context`] built from the configuration
//!   (first start and SIGHUP reload go through the same [`Context::build`], after Vector's
//!   "one code path", so reload is exercised on every start);
//! - [`cycle`]: one cycle: checks → check-in → orders → results → outbox drain;
//! - [`pipeline`]: one order envelope: admit → evidence → execute → signed result;
//! - [`actions`]: what an admitted order does, a dispatch on the runbook id;
//! - [`results`]: signed order results waiting for the control plane, kept durably;
//! - [`clock`]: how far the host's clock can be trusted (for the guardrails).
//!
//! # Shutdown
//!
//! A cycle runs inside a `select!` with the shutdown future. When SIGTERM arrives during a
//! cycle, the cycle future is dropped at its next `.await`. That is safe by construction: every
//! durable write (evidence append, order memory, result queue, outbox cursor) is a SQLite
//! transaction in synchronous code *between* awaits, and the awaits are network requests whose
//! effect is recorded only after they complete. So a stop leaves only whole transactions; what
//! was in flight (a check-in, a result post, a batch of evidence) is simply done again by the
//! next start, and the server deduplicates (results by order, evidence by digest). Checks that
//! are running when the signal arrives finish first (their commands have timeouts).
//!
//! The agent opens no listening socket: everything here is a request it makes.

pub mod actions;
pub mod clock;
pub mod cycle;
pub mod pipeline;
pub mod results;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ed25519_dalek::SigningKey;
use msp_compliance_protocol::api::ComplianceSummary;
use msp_compliance_protocol::evidence::Author;
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::baseline::Baseline;
use crate::config::{Config, LoadError};
use crate::evidence::keys::{self, KeyError};
use crate::evidence::store::{Store, StoreError};
use crate::facts::fs::Root;
use crate::mcp_client::{self, Client};
use crate::orders::memory::{MemoryError, OrderMemory};
use crate::orders::{Guardrails, GuardrailsError};
use crate::outbox::{self, Policy, Sink};
use crate::phi::Scrubber;

/// What the daemon needs besides the configuration.
#[derive(Clone, Debug)]
pub struct Options {
    /// The configuration file, re-read on reload.
    pub config_path: PathBuf,
    /// The bytes the running configuration was read from (handed to the next image).
    pub config_bytes: Vec<u8>,
    /// Read facts under this prefix instead of `/` (fixture trees, mounted images).
    pub root: Option<PathBuf>,
    /// Set when this image continues a daemon that re-executed itself.
    pub resume: Option<Resume>,
    /// Return [`Exit::Reexec`] after each cycle instead of sleeping in this image.
    pub reexec: bool,
}

/// Where a re-executed daemon picks up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resume {
    /// When the next cycle is due.
    pub next_cycle_at: jiff::Timestamp,
    /// When the last checkpoint was sent, if one was since the daemon started.
    pub last_checkpoint_at: Option<jiff::Timestamp>,
}

/// How [`run`] ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Exit {
    /// A cycle ended: the caller re-executes the binary to wait for the next one with a fresh
    /// image. A cycle touches most of the binary's code and leaves allocator arenas behind;
    /// waiting in a new image keeps the resident set between cycles small.
    Reexec {
        /// What the next image continues with.
        resume: Resume,
        /// The running configuration's bytes.
        config_bytes: Vec<u8>,
        /// The state directory (where the configuration snapshot goes).
        state_dir: PathBuf,
    },
    /// Shutdown was requested.
    Stopped,
}

/// Everything that makes the main loop do something. Closed on purpose: a new trigger of
/// work is a new variant here, visible in the one `match` that handles them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    /// SIGHUP: re-read the configuration and the baseline; apply them from the next cycle.
    Reload,
    /// SIGTERM or SIGINT: stop after the current step.
    Shutdown,
    /// The poll interval has passed (or the daemon just started): run a cycle.
    Tick,
}

/// Why the daemon could not start (or reload).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DaemonError {
    /// The baseline could not be loaded.
    #[error("baseline: {0}")]
    Baseline(LoadError),
    /// The configuration could not be loaded.
    #[error("{0}")]
    Config(LoadError),
    /// The control-plane client could not be built.
    #[error("control_plane: {0}")]
    ControlPlane(#[from] mcp_client::SetupError),
    /// The signing key or the PHI token key could not be loaded.
    #[error("{0}")]
    Key(#[from] KeyError),
    /// The order guardrails could not be built (an order key file is unusable).
    #[error("{0}")]
    Guardrails(#[from] GuardrailsError),
    /// The order memory could not be opened.
    #[error("{0}")]
    Memory(#[from] MemoryError),
    /// No evidence signing key is configured.
    #[error(
        "no signing key: run records evidence and signs order results; set evidence.signing_key_file or provide the systemd credential {}",
        keys::CREDENTIAL_NAME
    )]
    NoSigningKey,
    /// A sink could not be built.
    #[error("{0}")]
    Sink(#[from] outbox::SetupError),
    /// The state directory could not be created.
    #[error("cannot create the state directory {path}: {source}")]
    StateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The evidence store could not be opened.
    #[error("{0}")]
    Store(#[from] StoreError),
}

/// What one configuration makes of the daemon: loaded keys, open databases, built clients.
/// Built whole by [`Context::build`] or not at all, so a reload with a bad configuration keeps
/// the old context untouched.
pub struct Context {
    /// The validated configuration.
    pub(crate) config: Config,
    /// The baseline the checks judge against.
    pub(crate) baseline: Baseline,
    /// Where facts are read (`/` unless `--root`).
    pub(crate) root: Root,
    /// The evidence signing key (also signs order results).
    pub(crate) key: SigningKey,
    /// Scrubs PHI from everything sealed.
    pub(crate) scrubber: Scrubber,
    /// Who signs: site, host, agent version.
    pub(crate) author: Author,
    /// The evidence chain, which is also the outbox queue and holds the pending results.
    pub(crate) store: Store,
    /// The order memory (replays, cooldowns, budget, deferrals).
    pub(crate) memory: OrderMemory,
    /// The guardrails orders pass; `None` without pinned order keys (orders are then not
    /// judged, and say so in the log).
    pub(crate) guardrails: Option<Guardrails>,
    /// Every configured sink, the control plane's last.
    pub(crate) sinks: Vec<Box<dyn Sink>>,
    /// Outbox backoff and backlog limits.
    pub(crate) policy: Policy,
    /// The control plane, when configured.
    pub(crate) client: Option<Client>,
}

impl Context {
    /// Loads everything a configuration names: baseline, keys, store, order memory, sinks and
    /// the control-plane client. The one path for first start and reload.
    pub fn build(config: Config, options: &Options) -> Result<Context, DaemonError> {
        let baseline = match &config.baseline_file {
            Some(path) => Baseline::load(path).map_err(DaemonError::Baseline)?,
            None => Baseline::embedded(),
        };
        let loaded = keys::load_configured(config.signing_key_file.as_deref())?
            .ok_or(DaemonError::NoSigningKey)?;
        let token_key = keys::phi_token_key(config.phi_token_key_file.as_deref(), &loaded.key)?;
        create_private_dir(&config.state_dir)?;
        let store = Store::open(&crate::evidence::store_path(&config.state_dir))?;
        let memory = OrderMemory::open(&crate::orders::memory::memory_path(&config.state_dir))?;
        let sinks = outbox::sinks_from_config(&config)?;
        let client = match &config.control_plane {
            Some(control_plane) => Some(Client::new(control_plane)?),
            None => None,
        };
        let guardrails = match Guardrails::from_config(&config) {
            Ok(it) => Some(it),
            Err(GuardrailsError::NoOrderKeys) => None,
            Err(err) => return Err(err.into()),
        };
        let root = match &options.root {
            Some(dir) => Root::new(dir.clone()),
            None => Root::live(),
        };
        Ok(Context {
            author: Author {
                site_id: config.site_id.clone(),
                host_id: config.host_id.clone(),
                agent_version: env!("CARGO_PKG_VERSION").to_string(),
            },
            policy: Policy::from_config(&config.outbox),
            scrubber: Scrubber::new(&token_key),
            key: loaded.key,
            baseline,
            root,
            store,
            memory,
            guardrails,
            sinks,
            client,
            config,
        })
    }
}

/// What the daemon remembers from one cycle to the next (kept across reloads).
#[derive(Clone, Debug, Default)]
pub struct State {
    /// The last cycle's findings by status, for the next check-in.
    pub summary: ComplianceSummary,
    /// The clock as the last check-in observed it (synchronization and server offset).
    pub clock: Option<crate::orders::ClockState>,
    /// When a checkpoint was last appended and sent (`None`: not since start).
    pub last_checkpoint_at: Option<jiff::Timestamp>,
}

/// Runs the daemon until `shutdown` completes: a cycle at once, then one every poll interval
/// (jittered ±10 %). `reload` delivers reload requests (SIGHUP). Errors only at startup; later
/// failures (a server that is down, a sink that refuses, a bad order) are logged, recorded as
/// evidence where they concern evidence, and retried by the next cycle.
pub async fn run(
    config: Config,
    options: Options,
    reload: &mut mpsc::Receiver<()>,
    shutdown: impl Future<Output = ()>,
) -> Result<Exit, DaemonError> {
    let mut config_bytes = options.config_bytes.clone();
    let mut state = State::default();
    let mut next_cycle = Instant::now();
    // A resumed image waits with only the configuration loaded: the context (store, keys,
    // scrubber, TLS client) is built when the cycle is due, so the waiting image stays small.
    // A first start builds it at once, so a bad key or store stops the start (exit 2).
    let mut loaded = match &options.resume {
        Some(resume) => {
            state.last_checkpoint_at = resume.last_checkpoint_at;
            let now = jiff::Timestamp::now();
            if resume.next_cycle_at > now {
                let wait = now
                    .duration_until(resume.next_cycle_at)
                    .unsigned_abs()
                    .min(config.poll_interval * 2);
                next_cycle += wait;
            }
            tracing::debug!("resumed in a fresh image");
            Loaded::Waiting(Box::new(config))
        }
        None => {
            let context = Context::build(config, &options)?;
            log_started(&context, &options);
            Loaded::Ready(Box::new(context))
        }
    };
    tokio::pin!(shutdown);
    loop {
        // `biased`: a pending shutdown wins over a due cycle, and a reload is applied before
        // the cycle it should affect.
        let event = tokio::select! {
            biased;
            () = &mut shutdown => Event::Shutdown,
            Some(()) = reload.recv() => Event::Reload,
            () = tokio::time::sleep_until(next_cycle) => Event::Tick,
        };
        match event {
            Event::Shutdown => break,
            Event::Reload => {
                if let Some((new, bytes)) = reload_context(&options) {
                    loaded = Loaded::Ready(Box::new(new));
                    config_bytes = bytes;
                }
            }
            Event::Tick => {
                loaded = match loaded {
                    Loaded::Waiting(config) => {
                        Loaded::Ready(Box::new(Context::build(*config, &options)?))
                    }
                    ready => ready,
                };
                let Loaded::Ready(context) = &mut loaded else {
                    continue;
                };
                let started = Instant::now();
                // The cycle races the shutdown signal; see the module docs for why dropping it
                // at an await point leaves no half-written state.
                tokio::select! {
                    biased;
                    () = &mut shutdown => {
                        tracing::info!("shutdown during a cycle; stopped between steps");
                        break;
                    }
                    () = cycle::run_cycle(context, &mut state) => {}
                }
                let delay = jittered(context.config.poll_interval);
                next_cycle = started + delay;
                tracing::info!(next_in_s = delay.as_secs(), "cycle done");
                if options.reexec {
                    let left = next_cycle.saturating_duration_since(Instant::now());
                    let now = jiff::Timestamp::now();
                    return Ok(Exit::Reexec {
                        resume: Resume {
                            next_cycle_at: now.checked_add(left).unwrap_or(now),
                            last_checkpoint_at: state.last_checkpoint_at,
                        },
                        config_bytes,
                        state_dir: context.config.state_dir.clone(),
                    });
                }
            }
        }
    }
    tracing::info!("stopped");
    Ok(Exit::Stopped)
}

/// What an image holds: the whole context, or, in a resumed image until its first cycle, only
/// the running configuration.
enum Loaded {
    /// Waiting for the first cycle of this image.
    Waiting(Box<Config>),
    /// Built: store, keys, scrubber, sinks, client.
    Ready(Box<Context>),
}

/// Re-reads the configuration file and builds a new context; a configuration or baseline that
/// does not load is logged and the running one kept (`None`).
fn reload_context(options: &Options) -> Option<(Context, Vec<u8>)> {
    let res = Config::load_with_bytes(&options.config_path)
        .map_err(DaemonError::Config)
        .and_then(|(config, bytes)| Context::build(config, options).map(|it| (it, bytes)));
    match res {
        Ok((new, bytes)) => {
            tracing::info!(
                config = %options.config_path.display(),
                baseline = new.baseline.digest(),
                "reloaded the configuration and the baseline; they apply from the next cycle"
            );
            Some((new, bytes))
        }
        Err(err) => {
            tracing::error!(
                config = %options.config_path.display(),
                error = %err,
                "reload refused; keeping the running configuration"
            );
            None
        }
    }
}

fn log_started(context: &Context, options: &Options) {
    let config = &context.config;
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        site = config.site_id.as_deref().unwrap_or("-"),
        host = %config.host_id,
        baseline = context.baseline.digest(),
        poll_interval_s = config.poll_interval.as_secs(),
        root = %context.root.base().display(),
        sinks = context.sinks.len(),
        config = %options.config_path.display(),
        "started"
    );
    match &context.client {
        Some(client) => tracing::info!(url = client.base_url(), "control plane configured (mTLS)"),
        None => tracing::info!(
            "no control_plane configured: running standalone (checks, evidence, other sinks); no orders are fetched"
        ),
    }
    if context.client.is_some() && context.guardrails.is_none() {
        tracing::warn!(
            "no order keys pinned (orders.order_public_key_files): orders from the control plane are not judged or run"
        );
    }
}

/// The poll interval with a uniform jitter of ±10 %, so a fleet started together spreads out.
pub fn jittered(interval: Duration) -> Duration {
    jittered_with(interval, random_u64())
}

/// [`jittered`] with the random value passed in (pure, for tests).
pub fn jittered_with(interval: Duration, random: u64) -> Duration {
    let millis = interval.as_millis().min(u128::from(u64::MAX)) as u64;
    let spread = millis / 5;
    let offset = if spread == 0 {
        0
    } else {
        random % (spread + 1)
    };
    Duration::from_millis(millis - millis / 10 + offset)
}

fn random_u64() -> u64 {
    let mut bytes = [0u8; 8];
    match getrandom::fill(&mut bytes) {
        Ok(()) => u64::from_le_bytes(bytes),
        // Without randomness the interval is simply not jittered.
        Err(_) => 0,
    }
}

/// Creates the state directory (mode 0700) if it is missing.
fn create_private_dir(dir: &Path) -> Result<(), DaemonError> {
    use std::os::unix::fs::DirBuilderExt;
    if dir.is_dir() {
        return Ok(());
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|source| DaemonError::StateDir {
            path: dir.to_path_buf(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_stays_within_ten_percent() {
        let interval = Duration::from_secs(300);
        for random in [0, 1, 59_999, 60_000, 60_001, u64::MAX] {
            let delay = jittered_with(interval, random);
            assert!(
                (Duration::from_secs(270)..=Duration::from_secs(330)).contains(&delay),
                "{delay:?}"
            );
        }
        assert_eq!(jittered_with(interval, 0), Duration::from_secs(270));
        assert_eq!(jittered_with(interval, 60_000), Duration::from_secs(330));
        assert_eq!(jittered_with(Duration::ZERO, 7), Duration::ZERO);
    }
}
