//! The patching check (placeholder until implemented; reports `unknown`, never a pass).

use jiff::Timestamp;
use msp_compliance_protocol::finding::Status;
use msp_compliance_protocol::ids::{check, hipaa};
use serde_json::Value;

use crate::baseline::Baseline;
use crate::checks::{Check, Judgement};
use crate::facts::Host;

/// The patching check.
pub struct Patching;

impl Check for Patching {
    type Observation = ();

    fn id(&self) -> &'static str {
        check::PATCHING
    }

    fn controls(&self) -> &'static [&'static str] {
        &[hipaa::MALICIOUS_SOFTWARE, hipaa::RISK_MANAGEMENT]
    }

    fn observe(&self, _host: &Host, _baseline: &Baseline) -> Self::Observation {}

    fn judge(&self, _observation: &Self::Observation, _baseline: &Baseline, _now: Timestamp) -> Judgement {
        let mut judgement = Judgement::new(Value::Null, Value::Null);
        judgement.rule("patching.implemented", Status::Unknown, "not implemented yet");
        judgement
    }
}
