//! What orders leave behind: evidence drafts (kind `order` for admitted, executed, failed,
//! dry-run and deferred orders; kind `refusal` for refusals) and the `OrderResult` the server
//! gets.
//!
//! Bodies hold the order id, the envelope digest, the key ids, the action, the parameters as
//! they passed the runbook's schema, the code and the detail. For an envelope that did not
//! verify, nothing of its payload is copied: only its digest, its key ids and a claimed order
//! id that is a token, marked `"verified": false`. Everything is PHI-scrubbed here, before the
//! caller seals it, since a signature cannot survive scrubbing afterwards. This module builds
//! values; it does not append, send or run anything.

use jiff::Timestamp;
use msp_compliance_protocol::evidence::{Draft, RecordKind};
use msp_compliance_protocol::order::{OrderResult, Outcome};
use serde_json::{Map, Value};

use crate::orders::{Admission, Approved, Guardrails, Refusal};
use crate::phi::Scrubber;

/// How an executed action ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Finished {
    /// The action ran and succeeded.
    Executed,
    /// The action ran and failed.
    Failed,
}

/// Wire name of `event` in an order record made when an order is admitted, before it runs.
pub const EVENT_ADMITTED: &str = "admitted";
/// Wire name of `event` in an order record that states an outcome.
pub const EVENT_OUTCOME: &str = "outcome";

/// The evidence of an admission decision; `None` for [`Admission::AlreadyDeferred`], whose
/// evidence was recorded when it was first deferred.
///
/// An order to execute gets an `admitted` record, so a crash during the action still leaves
/// proof that it was about to run; its outcome is [`execution_draft`].
pub fn admission_draft(admission: &Admission, scrubber: &Scrubber) -> Option<Draft> {
    let (kind, body, controls) = match admission {
        Admission::Execute(approved) => (
            RecordKind::Order,
            approved_body(
                approved,
                EVENT_ADMITTED,
                None,
                &format!("admitted; running {}", approved.runbook().id),
                None,
            ),
            approved.runbook().controls,
        ),
        Admission::DryRun(approved) => (
            RecordKind::Order,
            approved_body(
                approved,
                EVENT_OUTCOME,
                Some(Outcome::DryRun),
                &dry_run_detail(approved),
                None,
            ),
            approved.runbook().controls,
        ),
        Admission::Refused(refusal) => (
            RecordKind::Refusal,
            refusal_body(refusal, Outcome::Refused),
            refusal.controls,
        ),
        Admission::Deferred(refusal) => (
            RecordKind::Order,
            refusal_body(refusal, Outcome::Deferred),
            refusal.controls,
        ),
        Admission::AlreadyDeferred(_) => return None,
    };
    Some(draft(kind, controls, &body, scrubber))
}

/// The evidence of an action's end. `output` is the action's result (already bounded by the
/// action); it is scrubbed here.
pub fn execution_draft(
    approved: &Approved,
    finished: Finished,
    detail: &str,
    output: &Value,
    scrubber: &Scrubber,
) -> Draft {
    let body = approved_body(
        approved,
        EVENT_OUTCOME,
        Some(outcome_of(finished)),
        detail,
        Some(output),
    );
    draft(
        RecordKind::Order,
        approved.runbook().controls,
        &body,
        scrubber,
    )
}

/// The result the server gets for an admission decision; `None` for an order to execute,
/// whose result comes when the action has run ([`execution_result`]). `evidence_seq` is left
/// for the caller to fill in once the evidence is appended.
pub fn admission_result(
    admission: &Admission,
    guardrails: &Guardrails,
    scrubber: &Scrubber,
    finished_at: Timestamp,
) -> Option<OrderResult> {
    let (order_id, order_digest, outcome, code, detail) = match admission {
        Admission::Execute(_) => return None,
        Admission::DryRun(approved) => (
            approved.order_id(),
            approved.order_digest(),
            Outcome::DryRun,
            None,
            dry_run_detail(approved),
        ),
        Admission::Refused(refusal) => refusal_result_parts(refusal, Outcome::Refused),
        Admission::Deferred(refusal) | Admission::AlreadyDeferred(refusal) => {
            refusal_result_parts(refusal, Outcome::Deferred)
        }
    };
    Some(OrderResult {
        order_id: order_id.to_string(),
        order_digest: order_digest.to_string(),
        site_id: guardrails.site_id().to_string(),
        host_id: guardrails.host_id().to_string(),
        outcome,
        code,
        detail: scrubber.scrub_text(&detail),
        output: Value::Null,
        evidence_seq: None,
        finished_at,
    })
}

/// The result the server gets when an action has run. `evidence_seq` is left for the caller.
pub fn execution_result(
    approved: &Approved,
    finished: Finished,
    detail: &str,
    output: &Value,
    guardrails: &Guardrails,
    scrubber: &Scrubber,
    finished_at: Timestamp,
) -> OrderResult {
    OrderResult {
        order_id: approved.order_id().to_string(),
        order_digest: approved.order_digest().to_string(),
        site_id: guardrails.site_id().to_string(),
        host_id: guardrails.host_id().to_string(),
        outcome: outcome_of(finished),
        code: None,
        detail: scrubber.scrub_text(detail),
        output: scrubber.scrub_value(output),
        evidence_seq: None,
        finished_at,
    }
}

fn outcome_of(finished: Finished) -> Outcome {
    match finished {
        Finished::Executed => Outcome::Executed,
        Finished::Failed => Outcome::Failed,
    }
}

fn outcome_name(outcome: Outcome) -> &'static str {
    match outcome {
        Outcome::Executed => "executed",
        Outcome::DryRun => "dry_run",
        Outcome::Failed => "failed",
        Outcome::Refused => "refused",
        Outcome::Deferred => "deferred",
    }
}

fn dry_run_detail(approved: &Approved) -> String {
    let detail = format!(
        "dry run requested by {}: would run {} with params {}",
        approved.dry_run_by().unwrap_or("the configuration"),
        approved.runbook().id,
        approved.params().to_json()
    );
    match crate::heal::describe(approved.runbook(), approved.params()) {
        Some(plan) => format!("{detail}; it {plan}; nothing was changed"),
        None => detail,
    }
}

fn refusal_result_parts(
    refusal: &Refusal,
    outcome: Outcome,
) -> (
    &str,
    &str,
    Outcome,
    Option<msp_compliance_protocol::order::RefusalCode>,
    String,
) {
    (
        refusal.order_id.as_deref().unwrap_or("-"),
        &refusal.order_digest,
        outcome,
        Some(refusal.code),
        refusal.detail.clone(),
    )
}

fn approved_body(
    approved: &Approved,
    event: &str,
    outcome: Option<Outcome>,
    detail: &str,
    output: Option<&Value>,
) -> Value {
    let mut body = Map::new();
    body.insert("event".into(), event.into());
    if let Some(outcome) = outcome {
        body.insert("outcome".into(), outcome_name(outcome).into());
    }
    body.insert("order_id".into(), approved.order_id().into());
    body.insert("order_digest".into(), approved.order_digest().into());
    body.insert("verified".into(), true.into());
    body.insert("keyids".into(), Value::from(vec![approved.keyid()]));
    body.insert("action".into(), approved.runbook().id.into());
    body.insert("params".into(), approved.params().to_json());
    body.insert("disruptive".into(), approved.is_disruptive().into());
    body.insert("dry_run".into(), approved.dry_run_by().is_some().into());
    body.insert("detail".into(), detail.into());
    if let Some(output) = output {
        body.insert("output".into(), output.clone());
    }
    Value::Object(body)
}

fn refusal_body(refusal: &Refusal, outcome: Outcome) -> Value {
    let mut body = Map::new();
    body.insert("event".into(), EVENT_OUTCOME.into());
    body.insert("outcome".into(), outcome_name(outcome).into());
    body.insert("code".into(), refusal.code.as_str().into());
    if let Some(order_id) = &refusal.order_id {
        body.insert("order_id".into(), order_id.as_str().into());
    }
    body.insert("order_digest".into(), refusal.order_digest.as_str().into());
    body.insert("verified".into(), refusal.verified.into());
    body.insert("keyids".into(), Value::from(refusal.keyids.clone()));
    if let Some(action) = &refusal.action {
        body.insert("action".into(), action.as_str().into());
    }
    if let Some(params) = &refusal.params {
        body.insert("params".into(), params.clone());
    }
    body.insert("detail".into(), refusal.detail.as_str().into());
    Value::Object(body)
}

fn draft(kind: RecordKind, controls: &[&str], body: &Value, scrubber: &Scrubber) -> Draft {
    Draft {
        kind,
        baseline: None,
        controls: controls.iter().map(|it| it.to_string()).collect(),
        // Scrubbed before sealing: a signature cannot survive scrubbing afterwards.
        body: scrubber.scrub_value(body),
    }
}
