//! The backup check (placeholder until implemented; reports `unknown`, never a pass).

use jiff::Timestamp;
use msp_compliance_protocol::finding::Status;
use msp_compliance_protocol::ids::{check, hipaa};
use serde_json::Value;

use crate::baseline::Baseline;
use crate::checks::{Check, Judgement};
use crate::facts::Host;

/// The backup check.
pub struct Backup;

impl Check for Backup {
    type Observation = ();

    fn id(&self) -> &'static str {
        check::BACKUP
    }

    fn controls(&self) -> &'static [&'static str] {
        &[hipaa::DATA_BACKUP_PLAN, hipaa::DISASTER_RECOVERY, hipaa::TESTING_AND_REVISION]
    }

    fn observe(&self, _host: &Host, _baseline: &Baseline) -> Self::Observation {}

    fn judge(&self, _observation: &Self::Observation, _baseline: &Baseline, _now: Timestamp) -> Judgement {
        let mut judgement = Judgement::new(Value::Null, Value::Null);
        judgement.rule("backup.implemented", Status::Unknown, "not implemented yet");
        judgement
    }
}
