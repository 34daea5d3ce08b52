//! The host checks: one file each under `checks/`, one registry ([`CHECKS`]), one trait.
//!
//! A check reads facts through a [`Host`] (`observe`) and judges them against the baseline
//! (`judge`, a pure function of the observation, the policy and the time). Observation never
//! fails: a fact that could not be read is kept as its error and judged `unknown` with the
//! error as the reason. Checks only read; they never write to the host.
//!
//! [`run`] runs the selected checks in parallel (their time is spent waiting on external
//! tools), applies waivers, and returns one finding per check. A panic inside a check is caught
//! and reported as `unknown`, so one bad parser cannot take the other findings down.

pub mod av_edr;
pub mod backup;
pub mod encryption;
pub mod firewall;
pub mod logging;
pub mod patching;

use jiff::Timestamp;
use msp_compliance_protocol::finding::{
    Finding, Fix, Report, RuleResult, SafetyClass, Status, WaiverRef,
};
use serde_json::Value;

use crate::baseline::Baseline;
use crate::config::Config;
use crate::facts::{FactError, Host};

/// One host check.
pub trait Check: Sync {
    /// What `observe` found; judged by `judge`.
    type Observation;

    /// Check id (a constant of `msp_compliance_protocol::ids::check`).
    fn id(&self) -> &'static str;

    /// HIPAA citations the check supports.
    fn controls(&self) -> &'static [&'static str];

    /// Reads the facts. Never fails: unreadable facts are kept as errors in the observation.
    fn observe(&self, host: &Host, baseline: &Baseline) -> Self::Observation;

    /// Judges the observation. Pure: no I/O, time passed in.
    fn judge(
        &self,
        observation: &Self::Observation,
        baseline: &Baseline,
        now: Timestamp,
    ) -> Judgement;
}

/// The object-safe face of [`Check`], for the registry.
pub trait RegisteredCheck: Sync {
    /// Check id.
    fn id(&self) -> &'static str;
    /// HIPAA citations.
    fn controls(&self) -> &'static [&'static str];
    /// Observe, then judge.
    fn evaluate(&self, host: &Host, baseline: &Baseline, now: Timestamp) -> Judgement;
}

impl<C: Check> RegisteredCheck for C {
    fn id(&self) -> &'static str {
        Check::id(self)
    }
    fn controls(&self) -> &'static [&'static str] {
        Check::controls(self)
    }
    fn evaluate(&self, host: &Host, baseline: &Baseline, now: Timestamp) -> Judgement {
        let observation = self.observe(host, baseline);
        self.judge(&observation, baseline, now)
    }
}

/// Every check, in report order. Nothing else knows the list.
pub static CHECKS: [&dyn RegisteredCheck; 6] = [
    &patching::Patching,
    &av_edr::AvEdr,
    &backup::Backup,
    &logging::Logging,
    &firewall::Firewall,
    &encryption::Encryption,
];

/// What a check concluded: rule results plus the facts and expectations behind them.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Judgement {
    /// Rule results in evaluation order.
    pub results: Vec<RuleResult>,
    /// Raw observed facts.
    pub observed: Value,
    /// Expected values.
    pub expected: Value,
}

impl Judgement {
    /// An empty judgement with the given facts.
    pub fn new(observed: Value, expected: Value) -> Judgement {
        Judgement {
            results: Vec::new(),
            observed,
            expected,
        }
    }

    /// Records a rule result.
    pub fn rule(
        &mut self,
        rule: &str,
        status: Status,
        message: impl Into<String>,
    ) -> &mut Judgement {
        self.results.push(RuleResult {
            rule: rule.to_string(),
            status,
            message: message.into(),
            fix: None,
        });
        self
    }

    /// Records a non-passing rule result with its fix.
    pub fn rule_with_fix(
        &mut self,
        rule: &str,
        status: Status,
        message: impl Into<String>,
        action: impl Into<String>,
        safety: SafetyClass,
    ) -> &mut Judgement {
        let fix = Some(Fix {
            action: action.into(),
            safety,
        });
        self.results.push(RuleResult {
            rule: rule.to_string(),
            status,
            message: message.into(),
            fix,
        });
        self
    }

    /// Records an `unknown` rule result for a fact that could not be read.
    pub fn unknown(&mut self, rule: &str, error: &FactError) -> &mut Judgement {
        self.rule(rule, Status::Unknown, error.to_string())
    }

    /// The worst status among the results; `unknown` when there are none, because a check that
    /// evaluated nothing has not shown anything.
    pub fn status(&self) -> Status {
        if self.results.is_empty() {
            return Status::Unknown;
        }
        self.results
            .iter()
            .map(|it| it.status)
            .fold(Status::NotApplicable, Status::worst)
    }
}

/// Which checks to run.
pub fn select(only: &[String]) -> Result<Vec<&'static dyn RegisteredCheck>, String> {
    for name in only {
        if !CHECKS.iter().any(|it| it.id() == name) {
            let known: Vec<&str> = CHECKS.iter().map(|it| it.id()).collect();
            return Err(format!(
                "unknown check {name:?}; expected one of {}",
                known.join(", ")
            ));
        }
    }
    Ok(CHECKS
        .iter()
        .copied()
        .filter(|it| only.is_empty() || only.iter().any(|name| name == it.id()))
        .collect())
}

/// Runs checks in parallel and returns their findings in registry order.
pub fn run(
    checks: &[&'static dyn RegisteredCheck],
    host: &Host,
    baseline: &Baseline,
    now: Timestamp,
) -> Vec<Finding> {
    std::thread::scope(|scope| {
        let handles: Vec<_> = checks
            .iter()
            .map(|check| {
                let handle = scope.spawn(move || evaluate_guarded(*check, host, baseline, now));
                (*check, handle)
            })
            .collect();
        handles
            .into_iter()
            .map(|(check, handle)| {
                let judgement = handle.join().unwrap_or_else(|_| panicked());
                finish(check, judgement, baseline, now)
            })
            .collect()
    })
}

/// Runs the selected checks ([`run`]) and wraps their findings in this agent's report: what
/// `check` prints and what every daemon cycle records, built in one place.
pub fn report(
    checks: &[&'static dyn RegisteredCheck],
    host: &Host,
    baseline: &Baseline,
    config: &Config,
    now: Timestamp,
) -> Report {
    Report {
        agent_version: env!("CARGO_PKG_VERSION").to_string(),
        site_id: config.site_id.clone(),
        host_id: config.host_id.clone(),
        observed_at: now,
        baseline: baseline.reference(),
        findings: run(checks, host, baseline, now),
    }
}

/// Observes and judges one check without letting a panic escape.
fn evaluate_guarded(
    check: &dyn RegisteredCheck,
    host: &Host,
    baseline: &Baseline,
    now: Timestamp,
) -> Judgement {
    if !baseline.is_enabled(check.id()) {
        let mut judgement = Judgement::new(Value::Null, Value::Null);
        judgement.rule(
            &format!("{}.enabled", check.id()),
            Status::NotApplicable,
            "disabled by the baseline",
        );
        return judgement;
    }
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        check.evaluate(host, baseline, now)
    }))
    .unwrap_or_else(|_| panicked())
}

fn panicked() -> Judgement {
    let mut judgement = Judgement::new(Value::Null, Value::Null);
    judgement.rule(
        "internal",
        Status::Unknown,
        "the check failed internally (a bug); see the agent log",
    );
    judgement
}

/// Turns a judgement into a finding: overall status, waiver, fixes, references.
pub fn finish(
    check: &dyn RegisteredCheck,
    judgement: Judgement,
    baseline: &Baseline,
    now: Timestamp,
) -> Finding {
    let mut status = judgement.status();
    let today = now.to_zoned_datetime(jiff::tz::TimeZone::UTC).date();
    let waiver = baseline.waiver(check.id()).map(|it| WaiverRef {
        justification: it.justification.clone(),
        ticket: it.ticket.clone(),
        expires: it.expires,
        expired: today > it.expires,
    });
    let mut summary = summarize(&judgement.results, status);
    // Only a definite fail can be waived: an unknown is a monitoring failure, not a known risk.
    if status == Status::Fail
        && let Some(waiver) = &waiver
    {
        if waiver.expired {
            summary = format!(
                "{summary} (waiver {} expired on {})",
                waiver.ticket, waiver.expires
            );
        } else {
            status = Status::Exception;
            summary = format!(
                "{summary} (waived until {} by {})",
                waiver.expires, waiver.ticket
            );
        }
    }
    // Worst rules first, so the first fix remedies the rule the summary names.
    let mut by_badness: Vec<&RuleResult> = judgement.results.iter().collect();
    by_badness.sort_by_key(|it| std::cmp::Reverse(it.status.badness()));
    let mut fixes: Vec<Fix> = Vec::new();
    for result in by_badness {
        if let Some(fix) = &result.fix
            && !is_acceptable_rule(result.status)
            && !fixes.contains(fix)
        {
            fixes.push(fix.clone());
        }
    }
    Finding {
        check: check.id().to_string(),
        status,
        severity: baseline.severity(check.id()),
        summary,
        controls: check.controls().iter().map(|it| it.to_string()).collect(),
        results: judgement.results,
        observed: judgement.observed,
        expected: judgement.expected,
        thresholds: baseline.thresholds(check.id()),
        fixes,
        baseline: baseline.reference(),
        waiver,
        observed_at: now,
    }
}

/// The one-line reason of a finding: the first of its worst rule results, or a count when
/// every rule holds (the last passing rule says little about the others).
fn summarize(results: &[RuleResult], status: Status) -> String {
    if status == Status::Pass {
        let n_pass = results
            .iter()
            .filter(|it| it.status == Status::Pass)
            .count();
        return match n_pass {
            1 => results
                .iter()
                .find(|it| it.status == Status::Pass)
                .map(|it| it.message.clone())
                .unwrap_or_default(),
            _ => format!("all {n_pass} rules pass"),
        };
    }
    let worst = results
        .iter()
        .map(|it| it.status.badness())
        .max()
        .unwrap_or(0);
    results
        .iter()
        .find(|it| it.status.badness() == worst)
        .map(|it| it.message.clone())
        .unwrap_or_default()
}

/// Fixes are listed for warn, fail and unknown rules, not for those that hold.
fn is_acceptable_rule(status: Status) -> bool {
    matches!(
        status,
        Status::Pass | Status::NotApplicable | Status::Exception
    )
}

/// How far in the future a recorded time (a build, a backup, a restore test) may lie before it
/// is a clock problem rather than a fact; beyond it an age is `unknown`, never a pass.
pub const CLOCK_SKEW_SECONDS: i64 = 3_600;

/// Grades an amount that is worse when larger (an age, a count of days) against two inclusive
/// limits: `pass` up to `pass_up_to`, `warn` up to `warn_up_to`, `fail` beyond. The pass limit
/// is tested first, so a baseline whose warn limit lies below its pass limit never warns.
pub fn grade(amount: i64, pass_up_to: i64, warn_up_to: i64) -> Status {
    if amount <= pass_up_to {
        Status::Pass
    } else if amount <= warn_up_to {
        Status::Warn
    } else {
        Status::Fail
    }
}

/// Formats a duration in seconds the way findings say ages: "3 d 4 h", "5 h 2 min", "40 s".
pub fn format_age(seconds: i64) -> String {
    let seconds = seconds.max(0);
    let (days, hours, minutes) = (
        seconds / 86_400,
        seconds % 86_400 / 3_600,
        seconds % 3_600 / 60,
    );
    if days > 0 {
        format!("{days} d {hours} h")
    } else if hours > 0 {
        format!("{hours} h {minutes} min")
    } else if minutes > 0 {
        format!("{minutes} min")
    } else {
        format!("{seconds} s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_judgement_is_unknown_not_pass() {
        assert_eq!(Judgement::default().status(), Status::Unknown);
    }

    #[test]
    fn selection_rejects_unknown_names() {
        assert_eq!(select(&[]).unwrap().len(), 6);
        assert_eq!(select(&["firewall".into()]).unwrap().len(), 1);
        let err = select(&["firewal".into()]).err().unwrap_or_default();
        assert!(err.contains("expected one of patching"), "{err}");
    }

    #[test]
    fn grades_include_their_limits() {
        assert_eq!(grade(10, 10, 20), Status::Pass);
        assert_eq!(grade(11, 10, 20), Status::Warn);
        assert_eq!(grade(20, 10, 20), Status::Warn);
        assert_eq!(grade(21, 10, 20), Status::Fail);
        assert_eq!(grade(-5, 10, 20), Status::Pass);
        assert_eq!(grade(15, 20, 10), Status::Pass);
    }

    #[test]
    fn ages_read_naturally() {
        assert_eq!(format_age(3 * 86_400 + 4 * 3_600 + 5), "3 d 4 h");
        assert_eq!(format_age(2 * 3_600 + 120), "2 h 2 min");
        assert_eq!(format_age(-5), "0 s");
    }
}

/// Test support shared by the check files: fixture hosts and the one `check_fixture` helper.
#[cfg(test)]
pub mod testing {
    use std::path::{Path, PathBuf};
    use std::process::Child;

    use jiff::Timestamp;
    use msp_compliance_protocol::finding::{Finding, RuleResult, Status};

    use crate::baseline::Baseline;
    use crate::checks::RegisteredCheck;
    use crate::cli::RECORDED_COMMANDS_DIR;
    use crate::facts::command::CommandSource;
    use crate::facts::fs::Root;
    use crate::facts::probe::ProbeSource;
    use crate::facts::{Host, HostPaths};

    /// `agent/tests/fixtures/<check>/<case>`.
    pub fn fixture_root(check: &str, case: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures")
            .join(check)
            .join(case)
    }

    /// Host paths as the unconfigured CLI uses them.
    pub fn default_paths() -> HostPaths {
        HostPaths {
            state_dir: PathBuf::from("/var/lib/msp-compliance"),
            clamd_socket: None,
            clamav_database_dir: PathBuf::from("/var/lib/clamav"),
            backup_jobs: Vec::new(),
        }
    }

    /// A host over a fixture tree at `base`: files under it, commands and probes replayed from
    /// `<base>/.msp-compliance/commands`, declared.json at its default path.
    pub fn host_at(base: &Path, paths: HostPaths) -> Host {
        let recorded = base.join(RECORDED_COMMANDS_DIR);
        Host::new(
            Root::new(base),
            CommandSource::Recorded(recorded.clone()),
            ProbeSource::Recorded(recorded),
            Path::new("/etc/msp-compliance/declared.json"),
            paths,
        )
    }

    /// Runs one check on a host and returns its finding.
    pub fn run_on(
        check: &'static dyn RegisteredCheck,
        host: &Host,
        baseline: &Baseline,
        now: Timestamp,
    ) -> Finding {
        crate::checks::run(&[check], host, baseline, now).remove(0)
    }

    /// Runs a check against `tests/fixtures/<check>/<case>` with the embedded baseline and asserts
    /// the overall status and the status of each listed rule. Returns the finding for more asserts.
    pub fn check_fixture(
        check: &'static dyn RegisteredCheck,
        case: &str,
        now: &str,
        expect_status: Status,
        expect_rules: &[(&str, Status)],
    ) -> Finding {
        let host = host_at(&fixture_root(check.id(), case), default_paths());
        let finding = run_on(check, &host, &Baseline::embedded(), ts(now));
        assert_finding(&finding, expect_status, expect_rules);
        finding
    }

    /// Asserts a finding's status and rule statuses, printing the whole finding on mismatch.
    pub fn assert_finding(
        finding: &Finding,
        expect_status: Status,
        expect_rules: &[(&str, Status)],
    ) {
        let pretty = serde_json::to_string_pretty(finding).unwrap_or_default();
        assert_eq!(finding.status, expect_status, "overall status of\n{pretty}");
        for (rule, status) in expect_rules {
            let found: Vec<Status> = finding
                .results
                .iter()
                .filter(|it| it.rule == *rule)
                .map(|it| it.status)
                .collect();
            assert!(!found.is_empty(), "rule {rule} missing in\n{pretty}");
            assert!(
                found.contains(status),
                "rule {rule}: expected {status}, found {found:?} in\n{pretty}"
            );
        }
    }

    /// The first result of `rule` in a finding; panics, printing the finding, when it has none.
    pub fn rule<'a>(finding: &'a Finding, rule: &str) -> &'a RuleResult {
        finding
            .results
            .iter()
            .find(|it| it.rule == rule)
            .unwrap_or_else(|| panic!("no {rule} in {finding:?}"))
    }

    /// The message of the first result of `rule`, empty when the finding has none (an
    /// assertion on the text then fails and prints what was expected).
    pub fn message<'a>(finding: &'a Finding, rule: &str) -> &'a str {
        finding
            .results
            .iter()
            .find(|it| it.rule == rule)
            .map(|it| it.message.as_str())
            .unwrap_or_default()
    }

    /// Copies a fixture tree, recreating symlinks as symlinks (their targets are absolute paths
    /// inside the fixture's root and must stay links for the root prefix to resolve them).
    /// Tests copy a fixture to change what git cannot keep (mtimes) or to add live parts (a
    /// socket).
    pub fn copy_tree(from: &Path, to: &Path) {
        std::fs::create_dir_all(to).unwrap();
        for entry in std::fs::read_dir(from).unwrap() {
            let entry = entry.unwrap();
            let kind = entry.file_type().unwrap();
            let target = to.join(entry.file_name());
            if kind.is_symlink() {
                std::os::unix::fs::symlink(std::fs::read_link(entry.path()).unwrap(), &target)
                    .unwrap();
            } else if kind.is_dir() {
                copy_tree(&entry.path(), &target);
            } else {
                std::fs::copy(entry.path(), &target).unwrap();
            }
        }
    }

    /// A daemon a real-tool test started; killed (SIGKILL) and reaped on drop, so it never
    /// outlives the test, even when an assertion fails.
    pub struct KillOnDrop(pub Child);

    impl Drop for KillOnDrop {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    /// Parses an RFC 3339 timestamp literal.
    pub fn ts(text: &str) -> Timestamp {
        text.parse().expect("test timestamp literal")
    }

    /// Returns true if and only if tests that need real tools (nft, restic, clamd, cryptsetup,
    /// network namespaces, loop devices) should run; `.ci/run` sets `MSP_REAL_TOOLS=1` after
    /// installing them. Otherwise prints why the test is skipped.
    pub fn real_tools(test: &str) -> bool {
        if std::env::var_os("MSP_REAL_TOOLS").is_some_and(|it| it == "1") {
            return true;
        }
        eprintln!(
            "skipped {test}: set MSP_REAL_TOOLS=1 to run tests that need real tools (.ci/run does)"
        );
        false
    }
}
