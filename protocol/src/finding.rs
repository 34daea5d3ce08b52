//! Findings: the judgement of one check on one host against one baseline.
//!
//! A finding is made of rule results (each a status and a reason), the raw facts that were
//! observed, the values that were expected, the thresholds applied, and the fixes that would
//! remedy the non-passing rules with their safety class.
//! Its overall status is the worst of its rule results, except that a waiver in the baseline can
//! turn a `fail` into an `exception`.

use jiff::Timestamp;
use jiff::civil::Date;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The outcome of a check or of one of its rules.
///
/// The order of the variants is the one the product documents, not alphabetical.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Status {
    /// The rule holds.
    Pass,
    /// The rule holds but something is close to a threshold or weaker than recommended.
    Warn,
    /// The rule does not hold.
    Fail,
    /// The facts could not be read or understood; a failure of monitoring, never a pass.
    Unknown,
    /// The rule does not apply to this host (for example an apt rule on NixOS).
    NotApplicable,
    /// A `fail` that an unexpired waiver in the baseline covers.
    Exception,
}

impl Status {
    /// All statuses, in documented order.
    pub const ALL: [Status; 6] = [
        Status::Pass,
        Status::Warn,
        Status::Fail,
        Status::Unknown,
        Status::NotApplicable,
        Status::Exception,
    ];

    /// The wire name of the status.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pass => "pass",
            Status::Warn => "warn",
            Status::Fail => "fail",
            Status::Unknown => "unknown",
            Status::NotApplicable => "not_applicable",
            Status::Exception => "exception",
        }
    }

    /// Returns true if and only if the status lets the host count as compliant for this check.
    ///
    /// `unknown` is not acceptable: a check that could not look is a failure of monitoring.
    pub fn is_acceptable(self) -> bool {
        match self {
            Status::Pass | Status::Warn | Status::NotApplicable | Status::Exception => true,
            Status::Fail | Status::Unknown => false,
        }
    }

    /// How bad the status is, for combining rule results: the worst one wins.
    ///
    /// `fail` outranks `unknown` because a definite non-compliance is the more useful answer
    /// when both are present; the unknown rule is still listed among the results.
    pub fn badness(self) -> u8 {
        match self {
            Status::NotApplicable => 0,
            Status::Pass => 1,
            Status::Exception => 2,
            Status::Warn => 3,
            Status::Unknown => 4,
            Status::Fail => 5,
        }
    }

    /// The worse of two statuses.
    pub fn worst(self, other: Status) -> Status {
        if other.badness() > self.badness() {
            other
        } else {
            self
        }
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How much harm a non-passing check stands for, as set by the baseline.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Severity {
    /// Low impact.
    Low,
    /// Medium impact.
    Medium,
    /// High impact.
    High,
    /// Critical impact.
    Critical,
}

/// Who may trigger a fix (`research/checks.md` §0.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum SafetyClass {
    /// Idempotent; cannot cut access, lose data or reboot. The agent may run it unattended.
    Safe,
    /// Can restart workloads or reboot; only inside the maintenance window, and reversible.
    Disruptive,
    /// Deletes data or keys, changes identity, turns security off: a human approves it.
    NeverAutomatic,
}

impl SafetyClass {
    /// The wire name of the class.
    pub fn as_str(self) -> &'static str {
        match self {
            SafetyClass::Safe => "safe",
            SafetyClass::Disruptive => "disruptive",
            SafetyClass::NeverAutomatic => "never_automatic",
        }
    }
}

/// A remedy for a non-passing rule.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fix {
    /// What would fix it, for a human (and, later, the runbook id that does it).
    pub action: String,
    /// Who may trigger it.
    pub safety: SafetyClass,
}

/// The outcome of one rule of a check.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleResult {
    /// Stable rule id, `<check>.<rule>`, e.g. `patching.nixpkgs_age`.
    pub rule: String,
    /// The rule's status.
    pub status: Status,
    /// Why, in one sentence with the observed value and the threshold.
    pub message: String,
    /// The remedy, for non-passing rules that have one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fix: Option<Fix>,
}

/// Which baseline judged the facts.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BaselineRef {
    /// Baseline id, e.g. `hipaa`.
    pub id: String,
    /// Baseline version.
    pub version: String,
    /// `sha256:<hex>` of the effective baseline in canonical JSON.
    pub digest: String,
}

/// A waiver of the baseline that matched this finding.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WaiverRef {
    /// Why the fail is accepted.
    pub justification: String,
    /// Ticket that tracks it.
    pub ticket: String,
    /// Last day (UTC) on which the waiver applies.
    pub expires: Date,
    /// True if the waiver has expired, in which case the finding stays a `fail`.
    pub expired: bool,
}

/// The judgement of one check.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Finding {
    /// Check id (see [`crate::ids::check`]).
    pub check: String,
    /// Overall status: the worst rule result, or `exception` under a valid waiver.
    pub status: Status,
    /// Impact if not passing, from the baseline.
    pub severity: Severity,
    /// One-line reason: the message of the worst rule result.
    pub summary: String,
    /// HIPAA Security Rule citations the check supports.
    pub controls: Vec<String>,
    /// Every rule that was evaluated, in evaluation order.
    pub results: Vec<RuleResult>,
    /// Raw observed facts (PHI-free host facts such as paths, versions, ports).
    pub observed: Value,
    /// Expected values from the baseline and from what the generation declares.
    pub expected: Value,
    /// The baseline section (thresholds) that was applied.
    pub thresholds: Value,
    /// Fixes of the non-passing rules, without duplicates, in rule order.
    pub fixes: Vec<Fix>,
    /// The baseline that judged.
    pub baseline: BaselineRef,
    /// The waiver that matched, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiver: Option<WaiverRef>,
    /// When the facts were judged.
    pub observed_at: Timestamp,
}

/// The result of one `check` run on one host.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Report {
    /// Version of the agent that made the report.
    pub agent_version: String,
    /// Site id from the configuration, if configured.
    pub site_id: Option<String>,
    /// Host id from the configuration, or the host name.
    pub host_id: String,
    /// When the run started.
    pub observed_at: Timestamp,
    /// The baseline that judged.
    pub baseline: BaselineRef,
    /// One finding per check that ran.
    pub findings: Vec<Finding>,
}

impl Report {
    /// The process exit status `check` documents: 0 when every finding is acceptable, 1 when
    /// any finding fails, 2 when none fails but any is unknown.
    pub fn exit_code(&self) -> u8 {
        let statuses = self.findings.iter().map(|it| it.status);
        let worst = statuses.fold(Status::NotApplicable, Status::worst);
        match worst {
            Status::Fail => 1,
            Status::Unknown => 2,
            Status::Pass | Status::Warn | Status::NotApplicable | Status::Exception => 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_is_never_acceptable() {
        assert!(!Status::Unknown.is_acceptable());
        assert!(!Status::Fail.is_acceptable());
        for status in Status::ALL {
            // Nothing combined with unknown may come out better than unknown.
            assert!(Status::Unknown.worst(status).badness() >= Status::Unknown.badness());
        }
    }

    #[test]
    fn wire_names_round_trip() {
        for status in Status::ALL {
            let json = serde_json::to_string(&status).unwrap();
            assert_eq!(json, format!("\"{}\"", status.as_str()));
            let back: Status = serde_json::from_str(&json).unwrap();
            assert_eq!(back, status);
        }
        assert!(serde_json::from_str::<Status>("\"ok\"").is_err());
    }

    #[test]
    fn exit_code_prefers_fail_over_unknown() {
        let mut report = Report {
            agent_version: "0".into(),
            site_id: None,
            host_id: "h".into(),
            observed_at: Timestamp::UNIX_EPOCH,
            baseline: BaselineRef {
                id: "b".into(),
                version: "1".into(),
                digest: "d".into(),
            },
            findings: vec![],
        };
        assert_eq!(report.exit_code(), 0);
        let finding = |status| Finding {
            check: "x".into(),
            status,
            severity: Severity::High,
            summary: String::new(),
            controls: vec![],
            results: vec![],
            observed: Value::Null,
            expected: Value::Null,
            thresholds: Value::Null,
            fixes: vec![],
            baseline: report.baseline.clone(),
            waiver: None,
            observed_at: Timestamp::UNIX_EPOCH,
        };
        report.findings = vec![finding(Status::Warn), finding(Status::Exception)];
        assert_eq!(report.exit_code(), 0);
        report.findings.push(finding(Status::Unknown));
        assert_eq!(report.exit_code(), 2);
        report.findings.push(finding(Status::Fail));
        assert_eq!(report.exit_code(), 1);
    }
}
