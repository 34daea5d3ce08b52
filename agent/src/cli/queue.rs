//! `queue status` and `queue drain`: the outbox seen from the command line.
//!
//! `status` reads the store and prints, per configured sink, the backlog, the oldest
//! undelivered record, the failures since the last success, the next attempt, the last error and
//! the last success, and the chain head. `drain` runs one [`crate::outbox::drain`] pass (the
//! function the daemon calls every cycle) on a small current-thread runtime and prints what was
//! delivered. Neither changes any record; `drain` only appends overflow alarms.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, Result};
use jiff::Timestamp;
use msp_compliance_protocol::evidence::Author;

use crate::config::Config;
use crate::evidence::keys;
use crate::evidence::store::Store;
use crate::outbox::{self, Outcome, Policy};
use crate::phi::Scrubber;

/// Prints the outbox state of every configured sink. Exit status 0.
pub(super) fn status(config: &Config, out: &mut dyn Write) -> Result<u8> {
    let path = crate::evidence::store_path(&config.state_dir);
    writeln!(out, "store: {}", path.display())?;
    if !path.exists() {
        writeln!(out, "chain: no evidence store yet (nothing recorded)")?;
        return Ok(0);
    }
    let store = Store::open(&path)?;
    match store.head()? {
        Some((seq, digest)) => writeln!(out, "chain head: seq {seq} {digest}")?,
        None => writeln!(out, "chain head: empty")?,
    }
    // Names only: status reads no credentials.
    let configured = outbox::sink_names(config);
    if configured.is_empty() {
        writeln!(
            out,
            "sinks: none configured (outbox.directory, outbox.s3, control_plane); records stay in the store"
        )?;
    }
    let now = Timestamp::now();
    for name in &configured {
        let name = name.as_str();
        let state = store.sink(name)?;
        let (backlog, _) = store.backlog(name)?;
        writeln!(out)?;
        writeln!(out, "sink {name}")?;
        let delivered = if state.delivered_seq < 0 {
            "nothing delivered yet".to_string()
        } else {
            format!("delivered up to seq {}", state.delivered_seq)
        };
        writeln!(out, "  backlog:      {backlog} records ({delivered})")?;
        let from = u64::try_from(state.delivered_seq + 1).unwrap_or(0);
        match store.records_from(from, 1)?.first() {
            Some(oldest) => writeln!(
                out,
                "  oldest:       seq {}, recorded {} ({} ago)",
                oldest.seq,
                seconds(oldest.recorded_at),
                age(now.as_second() - oldest.recorded_at)
            )?,
            None => writeln!(out, "  oldest:       -")?,
        }
        writeln!(
            out,
            "  attempts:     {} failed since the last success",
            state.attempts
        )?;
        if state.next_attempt_at > now.as_millisecond() {
            writeln!(
                out,
                "  next attempt: {} (in {})",
                millis(state.next_attempt_at),
                age((state.next_attempt_at - now.as_millisecond()) / 1000)
            )?;
        } else {
            writeln!(out, "  next attempt: now (next drain)")?;
        }
        writeln!(
            out,
            "  last error:   {}",
            state.last_error.as_deref().unwrap_or("-")
        )?;
        writeln!(
            out,
            "  last success: {}",
            state.last_success_at.map_or("-".to_string(), seconds)
        )?;
        if let Some(raised) = store.meta(&outbox::overflow_meta_key(name))? {
            let raised = raised.parse::<i64>().map_or(raised.clone(), seconds);
            writeln!(
                out,
                "  overflow:     alarm recorded at {raised}; backlog still past a limit"
            )?;
        }
    }
    for state in store.sinks()? {
        if !configured.contains(&state.name) {
            writeln!(out)?;
            writeln!(
                out,
                "sink {} (no longer configured): delivered up to seq {}",
                state.name, state.delivered_seq
            )?;
        }
    }
    Ok(0)
}

/// One drain pass over every configured sink. Exit status 0 when every sink is caught up or
/// backing off, 1 when a delivery failed in this pass.
pub(super) fn drain(config: &Config, out: &mut dyn Write) -> Result<u8> {
    let sinks = outbox::sinks_from_config(config)?;
    if sinks.is_empty() {
        writeln!(
            out,
            "no sinks configured (outbox.directory, outbox.s3, control_plane); nothing to drain"
        )?;
        return Ok(0);
    }
    let path = crate::evidence::store_path(&config.state_dir);
    if !path.exists() {
        writeln!(
            out,
            "no evidence store at {} yet; nothing to drain",
            path.display()
        )?;
        return Ok(0);
    }
    // The key signs overflow alarms; the PHI token key only has to match `check`'s.
    let loaded = keys::load_configured(config.signing_key_file.as_deref())?.context(
        "no signing key: queue drain records overflow alarms and needs evidence.signing_key_file \
         (or the systemd credential evidence-signing-key)",
    )?;
    let token_key = keys::phi_token_key(config.phi_token_key_file.as_deref(), &loaded.key)?;
    let scrubber = Scrubber::new(&token_key);
    let author = Author {
        site_id: config.site_id.clone(),
        host_id: config.host_id.clone(),
        agent_version: env!("CARGO_PKG_VERSION").to_string(),
    };
    let policy = Policy::from_config(&config.outbox);
    let mut store = Store::open(&path)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the I/O runtime")?;
    let reports = runtime.block_on(outbox::drain(
        &mut store,
        &sinks,
        &policy,
        &scrubber,
        &author,
        &loaded.key,
        &Timestamp::now,
    ))?;
    let mut status = 0;
    for report in &reports {
        let delivered = match (report.delivered, report.last_delivered_seq) {
            (0, _) | (_, None) => "delivered nothing".to_string(),
            (count, Some(last)) => format!(
                "delivered {count} records (seq {}..={last})",
                last + 1 - count
            ),
        };
        match &report.outcome {
            Outcome::CaughtUp => writeln!(out, "{}: {delivered}; caught up", report.name)?,
            Outcome::NotDue { next_attempt_at_ms } => writeln!(
                out,
                "{}: backing off after failures; next attempt at {}",
                report.name,
                millis(*next_attempt_at_ms)
            )?,
            Outcome::Failed {
                failure,
                next_attempt_at_ms,
            } => {
                status = 1;
                writeln!(
                    out,
                    "{}: {delivered}; FAILED: {}; next attempt at {}",
                    report.name,
                    failure.message(),
                    millis(*next_attempt_at_ms)
                )?;
            }
        }
        if let Some(overflow) = &report.overflow {
            writeln!(
                out,
                "{}: OVERFLOW: {} undelivered records, oldest {} old; alarm recorded as seq {} (nothing is dropped)",
                report.name,
                overflow.backlog,
                age(i64::try_from(overflow.oldest_age_s).unwrap_or(i64::MAX)),
                overflow.alarm_seq
            )?;
        }
    }
    Ok(status)
}

/// The configuration `queue` commands use: the file given, else defaults for this host.
pub(super) fn load_config(path: Option<&PathBuf>, host: impl FnOnce() -> String) -> Result<Config> {
    Ok(match path {
        Some(path) => Config::load(path)?,
        None => Config::unconfigured(host()),
    })
}

fn seconds(unix: i64) -> String {
    Timestamp::from_second(unix).map_or_else(|_| unix.to_string(), |it| it.to_string())
}

fn millis(unix_ms: i64) -> String {
    Timestamp::from_millisecond(unix_ms).map_or_else(
        |_| unix_ms.to_string(),
        |it| {
            it.round(jiff::Unit::Second)
                .map_or_else(|_| it.to_string(), |it| it.to_string())
        },
    )
}

/// A duration in seconds as `3h 2m 1s`.
fn age(seconds: i64) -> String {
    let seconds = seconds.max(0);
    let (hours, minutes, secs) = (seconds / 3600, seconds % 3600 / 60, seconds % 60);
    match (hours, minutes) {
        (0, 0) => format!("{secs}s"),
        (0, _) => format!("{minutes}m {secs}s"),
        _ => format!("{hours}h {minutes}m {secs}s"),
    }
}
