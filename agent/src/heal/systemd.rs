//! The agent's side of the heal units: start one through systemd (polkit decides), read the
//! root helper's report, and read units' states. Unprivileged; fixed argument vectors only.

use std::path::PathBuf;

use jiff::Timestamp;
use serde_json::{Map, Value};

use crate::facts::FactError;
use crate::facts::command::{CommandSource, Invocation};
use crate::facts::fs::Root;
use crate::heal::helper::{HelperReport, REPORT_VERSION};
use crate::heal::instance::Instance;

/// Largest report accepted from a heal unit.
const MAX_REPORT_BYTES: u64 = 256 * 1024;

/// Why a heal unit gave no usable result.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UnitError {
    /// systemd (polkit) refused to start the unit for this user.
    #[error("starting {unit} was refused: {stderr}")]
    Refused { unit: String, stderr: String },
    /// The unit did not finish in time (`systemctl start` was stopped waiting).
    #[error("{unit} did not finish within {seconds} s")]
    Timeout { unit: String, seconds: u64 },
    /// The unit finished but left no report of this run.
    #[error("{unit} left no report of this run ({why})")]
    NoReport { unit: String, why: String },
    /// The unit's report is not a heal report.
    #[error("{unit} wrote a report that is not valid: {why}")]
    Garbage { unit: String, why: String },
    /// `systemctl` could not run.
    #[error(transparent)]
    Fact(#[from] FactError),
}

/// A unit's state, as `systemctl show` gives it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UnitState {
    /// `ActiveState` (active, inactive, failed, activating, …).
    pub active: String,
    /// `SubState` (running, dead, exited, …).
    pub sub: String,
    /// `Result` of the last run (success, exit-code, …).
    pub result: String,
    /// `NRestarts`.
    pub restarts: Option<u64>,
    /// `InvocationID` of the current or last run.
    pub invocation_id: String,
}

impl UnitState {
    /// As JSON for evidence.
    pub fn to_json(&self) -> Value {
        serde_json::json!({
            "ActiveState": self.active,
            "SubState": self.sub,
            "Result": self.result,
            "NRestarts": self.restarts,
        })
    }
}

/// Starts heal units and reads unit states through `systemctl`.
#[derive(Clone, Debug)]
pub struct Systemd {
    /// How `systemctl` runs (its limits set the start timeout).
    pub commands: CommandSource,
    /// Where the heal units write their reports.
    pub result_dir: PathBuf,
}

impl Systemd {
    /// Starts `msp-compliance-heal@<instance>.service` and returns its report of this run.
    /// The unit name comes from an [`Instance`], never from outside text.
    pub fn start(&self, instance: &Instance) -> Result<HelperReport, UnitError> {
        let unit = instance.unit_name();
        let requested_at = Timestamp::now();
        let start = Invocation::new(
            "systemctl-start-heal",
            "systemctl",
            &["start", "--no-ask-password", "--", &unit],
        );
        let output = match self.commands.run(&start) {
            Ok(it) => it,
            Err(FactError::CommandTimeout { seconds, .. }) => {
                return Err(UnitError::Timeout { unit, seconds });
            }
            Err(err) => return Err(err.into()),
        };
        let stderr = output.stderr_excerpt();
        if output.status != 0 && is_refusal(&stderr) {
            return Err(UnitError::Refused { unit, stderr });
        }
        // A failed oneshot still writes its report (the action failed, and says how); a unit
        // that failed before the helper could write has none, and `systemctl`'s words say why.
        let path = self.result_dir.join(format!("{instance}.json"));
        let bytes = match Root::live().read_bounded(&path, MAX_REPORT_BYTES) {
            Ok(it) => it,
            Err(err) => {
                return Err(UnitError::NoReport {
                    unit,
                    why: format!(
                        "{err}; systemctl exited {}: {}",
                        output.status,
                        stderr.trim()
                    ),
                });
            }
        };
        let report: HelperReport =
            serde_json::from_slice(&bytes).map_err(|err| UnitError::Garbage {
                unit: unit.clone(),
                why: err.to_string(),
            })?;
        if report.v != REPORT_VERSION || report.instance != instance.to_string() {
            return Err(UnitError::Garbage {
                unit,
                why: format!(
                    "version {} for instance {:?}, expected version {REPORT_VERSION} for {instance}",
                    report.v, report.instance
                ),
            });
        }
        // This run's report, not an earlier one: systemd's invocation id when it still knows
        // the unit, else the start time (one host clock, so a second of slack is plenty).
        let invocation_id = self
            .state(&unit)
            .map(|it| it.invocation_id)
            .unwrap_or_default();
        let fresh = if invocation_id.is_empty() || report.invocation_id.is_empty() {
            report.started_at.as_second() + 1 >= requested_at.as_second()
        } else {
            report.invocation_id == invocation_id
        };
        if !fresh {
            return Err(UnitError::NoReport {
                unit,
                why: format!(
                    "the report in {} is from an earlier run (started {}); systemctl exited {}: {}",
                    path.display(),
                    report.started_at,
                    output.status,
                    stderr.trim()
                ),
            });
        }
        Ok(report)
    }

    /// The state of a unit (any user may read it).
    pub fn state(&self, unit: &str) -> Result<UnitState, UnitError> {
        let show = Invocation::new(
            "systemctl-show",
            "systemctl",
            &[
                "show",
                "--property=ActiveState,SubState,Result,NRestarts,InvocationID",
                "--",
                unit,
            ],
        );
        let output = self.commands.run(&show)?.success(&show)?;
        let fields = parse_show(&output.stdout_text());
        let text = |key: &str| fields[key].as_str().unwrap_or_default().to_string();
        Ok(UnitState {
            active: text("ActiveState"),
            sub: text("SubState"),
            result: text("Result"),
            restarts: fields["NRestarts"].as_str().and_then(|it| it.parse().ok()),
            invocation_id: text("InvocationID"),
        })
    }

    /// When the service manager (PID 1) of this boot started, as systemd reports it
    /// (`UserspaceTimestampMonotonic`), which differs for every boot.
    pub fn manager_started(&self) -> Result<String, UnitError> {
        let show = Invocation::new(
            "systemctl-show-manager",
            "systemctl",
            &["show", "--property=UserspaceTimestampMonotonic"],
        );
        let output = self.commands.run(&show)?.success(&show)?;
        Ok(
            parse_show(&output.stdout_text())["UserspaceTimestampMonotonic"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
        )
    }

    /// Units in the `failed` state, sorted.
    pub fn failed_units(&self) -> Result<Vec<String>, UnitError> {
        let list = Invocation::new(
            "systemctl-failed",
            "systemctl",
            &[
                "list-units",
                "--state=failed",
                "--plain",
                "--no-legend",
                "--no-pager",
            ],
        );
        let output = self.commands.run(&list)?.success(&list)?;
        let mut units: Vec<String> = output
            .stdout_text()
            .lines()
            .filter_map(|line| line.split_whitespace().next())
            .map(str::to_string)
            .collect();
        units.sort();
        Ok(units)
    }
}

/// `KEY=VALUE` lines of `systemctl show` as a JSON object of strings.
pub fn parse_show(text: &str) -> Value {
    let mut object = Map::new();
    for line in text.lines() {
        if let Some((key, value)) = line.split_once('=') {
            object.insert(key.to_string(), Value::from(value));
        }
    }
    Value::Object(object)
}

/// polkit's and systemd's words for "this user may not": `Access denied` (a rule said no) and
/// `Interactive authentication required` (no rule said yes).
fn is_refusal(stderr: &str) -> bool {
    stderr.contains("Access denied") || stderr.contains("authentication required")
}
