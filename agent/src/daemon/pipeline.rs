//! One order envelope from the control plane, start to end: admit (every guardrail, in
//! `orders`) → evidence of the decision → the action, when approved → evidence of its end → a
//! signed `OrderResult` queued for `POST /v1/results`.
//!
//! Order of the durable steps, and why: `orders::admit` commits "seen" (and "executed") in the
//! order memory before it returns; the decision's evidence is appended next, before the action
//! runs, so a crash during the action leaves proof that it was about to run and no way to run
//! it twice; the result is queued only after its evidence is appended, and names that record's
//! seq. A crash between two of these steps loses nothing that was promised: the server serves
//! an order without a result again, and the memory then refuses it as a replay, on the record.
//!
//! This module decides nothing itself (the guardrails decide, the actions perform) and touches
//! no network (results are posted by the cycle). The envelope is hostile input: anything wrong
//! with it ends in a refusal result, never a panic.

use jiff::Timestamp;
use msp_compliance_protocol::dsse::{self, Envelope};
use msp_compliance_protocol::evidence::Draft;
use msp_compliance_protocol::order::{OrderResult, RESULT_PAYLOAD_TYPE};

use crate::daemon::{Context, State, actions, results};
use crate::orders::record::{self, Finished};
use crate::orders::{self, Admission, ClockState};

/// Runs one envelope through the pipeline and returns the result it queued (`None`: nothing
/// to answer, or the agent's storage failed, which is logged). Failures of the agent's own storage are logged; the
/// order is then served again by the server and judged again (as a replay if it was admitted).
pub fn process(
    context: &mut Context,
    state: &mut State,
    envelope: &Envelope,
    clock: &ClockState,
) -> Option<OrderResult> {
    let order_digest = dsse::digest(envelope);
    // A result for this very envelope is still waiting to be posted: the server serves an
    // order until its result arrives. Judging it again would only add a replay refusal.
    match results::is_pending(&context.store, &order_digest) {
        Ok(true) => {
            tracing::debug!(%order_digest, "order already answered; its result is queued");
            return None;
        }
        Ok(false) => {}
        Err(err) => {
            tracing::error!(%order_digest, error = %err, "cannot read the result queue; order skipped this cycle");
            return None;
        }
    }
    let Some(guardrails) = &context.guardrails else {
        tracing::warn!(
            %order_digest,
            "order received but no order keys are configured (orders.order_public_key_files); not judged"
        );
        return None;
    };
    let now = Timestamp::now();
    let admitted = orders::admit(envelope, guardrails, clock, &mut context.memory, now);
    let admission = match admitted {
        Ok(it) => it,
        Err(err) => {
            tracing::error!(%order_digest, error = %err, "order memory failed; nothing admitted");
            return None;
        }
    };
    log_admission(&admission, &order_digest);
    let decision_seq = match record::admission_draft(&admission, &context.scrubber) {
        Some(draft) => match append(context, draft, now) {
            Some(seq) => Some(seq),
            // Without its evidence an order must not run and no result may claim it.
            None => return None,
        },
        None => None,
    };
    let result = match admission {
        Admission::Execute(approved) => {
            let report = actions::execute(&approved, context, state);
            let finished = if report.succeeded {
                Finished::Executed
            } else {
                Finished::Failed
            };
            tracing::info!(
                order_id = approved.order_id(),
                action = approved.runbook().id,
                outcome = if report.succeeded {
                    "executed"
                } else {
                    "failed"
                },
                "order ran"
            );
            let finished_at = Timestamp::now();
            let draft = record::execution_draft(
                &approved,
                finished,
                &report.detail,
                &report.output,
                &context.scrubber,
            );
            let seq = append(context, draft, finished_at)?;
            let Some(guardrails) = &context.guardrails else {
                return None;
            };
            let mut result = record::execution_result(
                &approved,
                finished,
                &report.detail,
                &report.output,
                guardrails,
                &context.scrubber,
                finished_at,
            );
            result.evidence_seq = Some(seq);
            result
        }
        // Deferred before and still outside the window: its evidence and result exist already.
        Admission::AlreadyDeferred(_) => return None,
        other => {
            let Some(guardrails) = &context.guardrails else {
                return None;
            };
            let mut result = record::admission_result(&other, guardrails, &context.scrubber, now)?;
            result.evidence_seq = decision_seq;
            result
        }
    };
    queue_result(context, &order_digest, &result);
    Some(result)
}

/// Appends one draft; returns its seq, or `None` after logging why not.
fn append(context: &mut Context, draft: Draft, now: Timestamp) -> Option<u64> {
    match context
        .store
        .append(&[draft], &context.author, now, &context.key)
    {
        Ok(appended) => appended.first().map(|it| it.seq),
        Err(err) => {
            tracing::error!(error = %err, "order evidence could not be recorded");
            None
        }
    }
}

/// Signs a result with the evidence key and queues it durably for posting.
fn queue_result(context: &Context, order_digest: &str, result: &OrderResult) {
    let envelope = match sign_result(result, &context.key) {
        Ok(it) => it,
        Err(err) => {
            tracing::error!(order_id = %result.order_id, error = %err, "order result could not be signed");
            return;
        }
    };
    if let Err(err) = results::keep(&context.store, order_digest, &envelope, Timestamp::now()) {
        tracing::error!(order_id = %result.order_id, error = %err, "order result could not be queued");
    }
}

/// The result envelope: canonical JSON of the `OrderResult`, signed with the evidence key.
pub fn sign_result(
    result: &OrderResult,
    key: &ed25519_dalek::SigningKey,
) -> Result<Envelope, msp_compliance_protocol::jcs::JcsError> {
    let payload = msp_compliance_protocol::jcs::to_vec_of(result)?;
    Ok(dsse::sign(RESULT_PAYLOAD_TYPE, &payload, key))
}

fn log_admission(admission: &Admission, order_digest: &str) {
    match admission {
        Admission::Execute(approved) => tracing::info!(
            order_id = approved.order_id(),
            action = approved.runbook().id,
            "order admitted"
        ),
        Admission::DryRun(approved) => tracing::info!(
            order_id = approved.order_id(),
            action = approved.runbook().id,
            "order admitted as a dry run; nothing changes"
        ),
        Admission::Refused(refusal) => tracing::warn!(
            order_id = refusal.order_id.as_deref().unwrap_or("-"),
            %order_digest,
            code = refusal.code.as_str(),
            verified = refusal.verified,
            "order refused"
        ),
        Admission::Deferred(refusal) | Admission::AlreadyDeferred(refusal) => tracing::info!(
            order_id = refusal.order_id.as_deref().unwrap_or("-"),
            code = refusal.code.as_str(),
            "order deferred to the maintenance window"
        ),
    }
}
