//! One cycle of DESIGN §2, in order: run the checks and record their findings; check in with
//! the control plane (compliance summary, chain head, agent key); run each returned order
//! through the pipeline; post the signed results waiting to be posted; drain the outbox to
//! every sink; and, at most once per [`CHECKPOINT_INTERVAL`] once the control plane holds the
//! whole chain, append a signed checkpoint of the head and hand it to the control plane, which
//! remembers it as the head this host vouched for (truncation becomes detectable there).
//!
//! A step that fails is logged and the cycle goes on with the next one: a control plane that is
//! down still leaves the checks recorded and the other sinks drained, and what could not be
//! done now (a check-in, a result, a batch of evidence) is done by a later cycle. Logs carry
//! ids, counts and codes, never finding texts or facts. Durable writes happen only between
//! awaits (see the `daemon` module docs on shutdown).

use jiff::Timestamp;
use msp_compliance_protocol::api::{ChainHead, CheckIn, ComplianceSummary};
use msp_compliance_protocol::finding::{Report, Status};

use crate::checks::{self, RegisteredCheck};
use crate::daemon::{Context, State, clock, pipeline, results};
use crate::evidence::keys;
use crate::evidence::store::StoreError;
use crate::mcp_client::{Client, ClientError};
use crate::orders::ClockState;
use crate::outbox::control_plane::ControlPlaneSink;
use crate::outbox::{self, Outcome};

/// Most orders taken from one check-in answer; the server serves the rest again next cycle.
pub const MAX_ORDERS_PER_CYCLE: usize = 64;

/// Shortest time between two checkpoints sent to the control plane (the first goes out in the
/// first cycle that finds the control plane caught up).
pub const CHECKPOINT_INTERVAL: jiff::SignedDuration = jiff::SignedDuration::from_hours(1);

/// What recording a check run did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckRun {
    /// Findings by status.
    pub summary: ComplianceSummary,
    /// Number of findings (one per check).
    pub n_findings: usize,
    /// The checks that ran, in registry order.
    pub check_ids: Vec<String>,
    /// Seq of the first `check` record appended.
    pub first_seq: Option<u64>,
    /// Seq of the last `check` record appended.
    pub last_seq: Option<u64>,
}

/// Why a check run could not be recorded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RecordError {
    /// A finding could not be turned into an evidence body.
    #[error("cannot serialize a finding: {0}")]
    Serialize(#[from] serde_json::Error),
    /// The store refused the records.
    #[error("{0}")]
    Store(#[from] StoreError),
}

/// Runs one whole cycle. Never fails: each step logs its own failure.
pub async fn run_cycle(context: &mut Context, state: &mut State) {
    // A heal an earlier image left unfinished (killed mid-heal) is finished first, so its
    // verification or rollback is in the evidence before this cycle's findings.
    match crate::heal::recover_interrupted(context) {
        Ok(0) => {}
        Ok(finished) => tracing::warn!(finished, "interrupted heals found and finished"),
        Err(err) => tracing::error!(error = %err, "interrupted heals could not be finished"),
    }
    let started = Timestamp::now();
    match run_checks(context, &checks::select(&[]).unwrap_or_default(), started) {
        Ok(run) => {
            tracing::info!(
                checks = run.n_findings,
                pass = run.summary.pass,
                warn = run.summary.warn,
                fail = run.summary.fail,
                unknown = run.summary.unknown,
                evidence_last_seq = run.last_seq,
                "checks recorded"
            );
            state.summary = run.summary;
        }
        Err(err) => tracing::error!(error = %err, "checks ran but were not recorded as evidence"),
    }
    if let Some(client) = context.client.clone() {
        // The clock is read once per cycle: the guardrails judge all of this cycle's orders
        // against the same observation.
        let host = crate::cli::build_host(context.root.clone(), &context.config);
        let synchronized = clock::synchronized(&host);
        check_in(context, state, &client, synchronized).await;
        post_results(context, &client).await;
        // Forget ids, deferrals and executions that can no longer matter (and raise the
        // memory's horizon, so a forgotten order is never fresh again).
        match context.memory.prune(Timestamp::now()) {
            Ok(0) => {}
            Ok(removed) => tracing::debug!(removed, "order memory pruned"),
            Err(err) => tracing::warn!(error = %err, "cannot prune the order memory"),
        }
    }
    let caught_up = drain(context).await;
    // The checkpoint is a record too: it is shipped at once, so a cycle ends with the control
    // plane holding the whole chain.
    if let Some(client) = context.client.clone()
        && caught_up.contains(&ControlPlaneSink::name_for(client.base_url()))
        && checkpoint(context, state, &client).await
    {
        drain(context).await;
    }
    // The page cache would otherwise grow with the chain up to SQLite's limit and stay
    // resident while the daemon sleeps.
    if let Err(err) = context.store.release_memory() {
        tracing::debug!(error = %err, "cannot release the store's cache");
    }
}

/// Runs the selected checks, appends one `check` record per finding (one transaction) and
/// returns the summary.
pub fn run_checks(
    context: &mut Context,
    selected: &[&'static dyn RegisteredCheck],
    now: Timestamp,
) -> Result<CheckRun, RecordError> {
    // A fresh host view per run, so a changed declared.json is seen.
    let host = crate::cli::build_host(context.root.clone(), &context.config);
    let report = checks::report(selected, &host, &context.baseline, &context.config, now);
    let drafts = crate::evidence::check_drafts(&report, &context.scrubber)?;
    let appended = if drafts.is_empty() {
        Vec::new()
    } else {
        context
            .store
            .append(&drafts, &context.author, now, &context.key)?
    };
    Ok(CheckRun {
        summary: summarize(&report),
        n_findings: report.findings.len(),
        check_ids: report.findings.iter().map(|it| it.check.clone()).collect(),
        first_seq: appended.first().map(|it| it.seq),
        last_seq: appended.last().map(|it| it.seq),
    })
}

/// Counts a report's findings by status.
pub fn summarize(report: &Report) -> ComplianceSummary {
    let mut summary = ComplianceSummary {
        checked_at: Some(report.observed_at),
        ..ComplianceSummary::default()
    };
    for finding in &report.findings {
        let count = match finding.status {
            Status::Pass => &mut summary.pass,
            Status::Warn => &mut summary.warn,
            Status::Fail => &mut summary.fail,
            Status::NotApplicable => &mut summary.not_applicable,
            Status::Exception => &mut summary.exception,
            // A status this agent does not know is counted as unknown: never as a pass.
            _ => &mut summary.unknown,
        };
        *count += 1;
    }
    summary
}

/// Checks in, judges the clock from the answer, and runs the orders it carries.
async fn check_in(
    context: &mut Context,
    state: &mut State,
    client: &Client,
    synchronized: Option<bool>,
) {
    let Some(site_id) = context.config.site_id.clone() else {
        tracing::error!("no site_id configured; cannot check in");
        return;
    };
    let chain_head = match context.store.head() {
        Ok(head) => head.map(|(seq, digest)| ChainHead { seq, digest }),
        Err(err) => {
            tracing::error!(error = %err, "cannot read the chain head; check-in skipped");
            return;
        }
    };
    let request = CheckIn {
        site_id,
        host_id: context.config.host_id.clone(),
        agent_version: env!("CARGO_PKG_VERSION").to_string(),
        agent_key: keys::encode_public_key(&context.key.verifying_key()),
        summary: state.summary.clone(),
        chain_head,
        agent_time: Timestamp::now(),
    };
    let response = match client.check_in(&request).await {
        Ok(it) => it,
        Err(err) => {
            log_client_error(
                "check-in failed; orders and results wait for the next cycle",
                &err,
            );
            return;
        }
    };
    let clock = ClockState::observed(synchronized, Timestamp::now(), response.server_time);
    state.clock = Some(clock);
    let n_orders = response.orders.len();
    tracing::info!(
        orders = n_orders,
        agent_minus_server_ms = clock.server_offset.map(|it| it.as_millis()),
        clock_synchronized = synchronized,
        server_head_seq = response.evidence_head.as_ref().map(|it| it.seq),
        "checked in"
    );
    if n_orders > MAX_ORDERS_PER_CYCLE {
        tracing::warn!(
            orders = n_orders,
            taken = MAX_ORDERS_PER_CYCLE,
            "more orders than one cycle takes; the rest wait for the next check-in"
        );
    }
    for envelope in response.orders.iter().take(MAX_ORDERS_PER_CYCLE) {
        pipeline::process(context, state, envelope, &clock);
    }
}

/// Posts every result waiting to be posted, oldest first; acknowledged ones are forgotten.
async fn post_results(context: &Context, client: &Client) {
    let (pending, unreadable) = match results::pending(&context.store) {
        Ok(it) => it,
        Err(err) => {
            tracing::error!(error = %err, "cannot read the pending order results");
            return;
        }
    };
    if unreadable > 0 {
        tracing::error!(
            unreadable,
            "pending order results that cannot be read are kept in the store (meta results.pending.*)"
        );
    }
    let mut n_posted = 0;
    for result in &pending {
        match client.post_result(&result.envelope).await {
            Ok(ack) if ack.ok => {
                if let Err(err) = results::forget(&context.store, &result.key) {
                    tracing::error!(error = %err, "posted result could not be marked; it will be posted again");
                }
                n_posted += 1;
            }
            Ok(_) => tracing::warn!(
                order_digest = %result.order_digest,
                "the server did not store an order result; kept for the next cycle"
            ),
            Err(err @ (ClientError::Status { .. } | ClientError::Malformed { .. })) => {
                log_client_error("an order result was refused; kept for the next cycle", &err);
            }
            Err(err) => {
                log_client_error(
                    "posting order results failed; kept for the next cycle",
                    &err,
                );
                break;
            }
        }
    }
    if !pending.is_empty() {
        tracing::info!(
            posted = n_posted,
            waiting = pending.len() - n_posted,
            "order results"
        );
    }
}

/// Appends a checkpoint of the chain head and posts it, when one is due (at most one per
/// [`CHECKPOINT_INTERVAL`], accepted or not); returns true if a checkpoint record was appended. Called only when the control plane has every record, so the
/// head it pins is stored there.
async fn checkpoint(context: &mut Context, state: &mut State, client: &Client) -> bool {
    let now = Timestamp::now();
    let due = state
        .last_checkpoint_at
        .is_none_or(|last| now.duration_since(last) >= CHECKPOINT_INTERVAL);
    if !due {
        return false;
    }
    let appended = match context
        .store
        .append_checkpoint(&context.author, now, &context.key)
    {
        Ok(Some(it)) => it,
        Ok(None) => return false,
        Err(err) => {
            tracing::error!(error = %err, "cannot append a checkpoint");
            return false;
        }
    };
    // One checkpoint per interval, accepted or not: a server that refuses them must not get a
    // new record every cycle.
    state.last_checkpoint_at = Some(now);
    let envelope = match context
        .store
        .records_from(appended.seq, 1)
        .map(|records| records.into_iter().next().map(|it| it.parse()))
    {
        Ok(Some(Ok(envelope))) => envelope,
        Ok(_) => {
            tracing::error!(
                seq = appended.seq,
                "the checkpoint just appended cannot be read back"
            );
            return true;
        }
        Err(err) => {
            tracing::error!(error = %err, "cannot read the checkpoint back");
            return true;
        }
    };
    match client.post_checkpoint(&envelope).await {
        Ok(response) if response.accepted => {
            tracing::info!(
                seq = appended.seq,
                "checkpoint accepted by the control plane"
            );
        }
        Ok(response) => tracing::warn!(
            seq = appended.seq,
            server_head_seq = response.head.as_ref().map(|it| it.seq),
            "the control plane did not accept the checkpoint; the next follows in an hour"
        ),
        Err(err) => log_client_error("posting the checkpoint failed", &err),
    }
    true
}

/// One outbox pass over every sink; returns the names of the sinks that caught up.
async fn drain(context: &mut Context) -> Vec<String> {
    let mut caught_up = Vec::new();
    if context.sinks.is_empty() {
        return caught_up;
    }
    let res = outbox::drain(
        &mut context.store,
        &context.sinks,
        &context.policy,
        &context.scrubber,
        &context.author,
        &context.key,
        &Timestamp::now,
    )
    .await;
    let reports = match res {
        Ok(it) => it,
        Err(err) => {
            tracing::error!(error = %err, "outbox drain stopped on a store error");
            return caught_up;
        }
    };
    for report in reports {
        match &report.outcome {
            Outcome::CaughtUp => {
                tracing::info!(
                    sink = %report.name,
                    delivered = report.delivered,
                    last_seq = report.last_delivered_seq,
                    "outbox caught up"
                );
                caught_up.push(report.name.clone());
            }
            Outcome::NotDue { next_attempt_at_ms } => tracing::info!(
                sink = %report.name,
                next_attempt_at_ms,
                "outbox backing off after failures"
            ),
            Outcome::Failed {
                failure,
                next_attempt_at_ms,
            } => tracing::warn!(
                sink = %report.name,
                delivered = report.delivered,
                next_attempt_at_ms,
                error = %failure.message(),
                "outbox delivery failed; records stay queued"
            ),
        }
        if let Some(overflow) = &report.overflow {
            tracing::error!(
                sink = %report.name,
                backlog = overflow.backlog,
                oldest_age_s = overflow.oldest_age_s,
                alarm_seq = overflow.alarm_seq,
                "outbox backlog past its limit; alarm recorded (nothing is dropped)"
            );
        }
    }
    caught_up
}

fn log_client_error(what: &str, err: &ClientError) {
    tracing::warn!(error = %err, "{what}");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::baseline::Baseline;
    use crate::config::Config;

    #[test]
    fn summary_counts_every_status() {
        let fixture = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/hosts/nixos-site");
        let host =
            crate::checks::testing::host_at(&fixture, crate::checks::testing::default_paths());
        let config = Config::unconfigured("nixos-1".to_string());
        let now = crate::checks::testing::ts("2026-11-27T12:00:00Z");
        let report = checks::report(
            &checks::select(&[]).unwrap(),
            &host,
            &Baseline::embedded(),
            &config,
            now,
        );
        let summary = summarize(&report);
        let total = summary.pass
            + summary.warn
            + summary.fail
            + summary.unknown
            + summary.not_applicable
            + summary.exception;
        assert_eq!(total as usize, report.findings.len());
        assert_eq!(total, 6);
        assert_eq!(summary.checked_at, Some(now));
    }
}
