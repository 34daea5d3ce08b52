//! The av_edr check (placeholder until implemented; reports `unknown`, never a pass).

use jiff::Timestamp;
use msp_compliance_protocol::finding::Status;
use msp_compliance_protocol::ids::{check, hipaa};
use serde_json::Value;

use crate::baseline::Baseline;
use crate::checks::{Check, Judgement};
use crate::facts::Host;

/// The av_edr check.
pub struct AvEdr;

impl Check for AvEdr {
    type Observation = ();

    fn id(&self) -> &'static str {
        check::AV_EDR
    }

    fn controls(&self) -> &'static [&'static str] {
        &[hipaa::MALICIOUS_SOFTWARE, hipaa::INCIDENT_PROCEDURES]
    }

    fn observe(&self, _host: &Host, _baseline: &Baseline) -> Self::Observation {}

    fn judge(&self, _observation: &Self::Observation, _baseline: &Baseline, _now: Timestamp) -> Judgement {
        let mut judgement = Judgement::new(Value::Null, Value::Null);
        judgement.rule("av_edr.implemented", Status::Unknown, "not implemented yet");
        judgement
    }
}
