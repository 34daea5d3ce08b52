//! The logging check (placeholder until implemented; reports `unknown`, never a pass).

use jiff::Timestamp;
use msp_compliance_protocol::finding::Status;
use msp_compliance_protocol::ids::{check, hipaa};
use serde_json::Value;

use crate::baseline::Baseline;
use crate::checks::{Check, Judgement};
use crate::facts::Host;

/// The logging check.
pub struct Logging;

impl Check for Logging {
    type Observation = ();

    fn id(&self) -> &'static str {
        check::LOGGING
    }

    fn controls(&self) -> &'static [&'static str] {
        &[hipaa::AUDIT_CONTROLS, hipaa::ACTIVITY_REVIEW]
    }

    fn observe(&self, _host: &Host, _baseline: &Baseline) -> Self::Observation {}

    fn judge(&self, _observation: &Self::Observation, _baseline: &Baseline, _now: Timestamp) -> Judgement {
        let mut judgement = Judgement::new(Value::Null, Value::Null);
        judgement.rule("logging.implemented", Status::Unknown, "not implemented yet");
        judgement
    }
}
