//! One heal, from a decision to a verified change or a clean escalation:
//! observe (drift detected?) → journal `acting` → start the heal unit → journal `verifying` →
//! settle → observe again (the verifying check or unit state, and the health probe: no unit
//! newly failed) → verified, or journal `rolling_back` → rollback unit → re-observe →
//! escalate. Every step appends its own evidence record (kinds `heal`, `rollback`,
//! `escalation`), so the chain shows drift detected, heal attempted, heal verified or rolled
//! back as separate records. A heal that cannot be verified is never reported as a success.
//!
//! The engine is sans-I/O: everything it touches goes through [`HealHost`], so the daemon
//! runs it against systemd and the tests against a scripted host.

use msp_compliance_protocol::evidence::RecordKind;
use msp_compliance_protocol::finding::Status;
use serde_json::{Value, json};

use crate::heal::helper::HelperReport;
use crate::heal::instance::Instance;
use crate::heal::journal::{Journal, JournalError, OpenHeal, Phase};
use crate::heal::systemd::{UnitError, UnitState};
use crate::runbooks::{Runbook, VerifySpec};

/// Units whose names start with this are the agent's own (`msp-compliance.service`, the heal
/// and probe templates); the health probe leaves them out.
const AGENT_UNIT_PREFIX: &str = "msp-compliance";

/// Wire names of the `event` field of heal records.
pub mod event {
    /// The pre-observation found the drift the heal is for.
    pub const DRIFT_DETECTED: &str = "drift_detected";
    /// The pre-observation found nothing to heal; nothing was changed.
    pub const NO_DRIFT: &str = "no_drift";
    /// The heal unit is about to be started.
    pub const ATTEMPTED: &str = "attempted";
    /// The heal unit finished (its report, or why there is none).
    pub const ACTED: &str = "acted";
    /// Verification passed.
    pub const VERIFIED: &str = "verified";
    /// Verification failed.
    pub const VERIFICATION_FAILED: &str = "verification_failed";
    /// The rollback unit finished and the state was observed again.
    pub const ROLLED_BACK: &str = "rolled_back";
    /// The rollback could not be performed.
    pub const ROLLBACK_FAILED: &str = "rollback_failed";
    /// A heal interrupted by a crash was found and is being finished.
    pub const RESUMED: &str = "resumed";
    /// The new generation is the boot default and the host is rebooting into it; the heal is
    /// verified (or rolled back) by the first run after the boot.
    pub const AWAITING_REBOOT: &str = "awaiting_reboot";
}

/// What the engine needs from the host.
pub trait HealHost {
    /// Starts the heal unit of `instance` and returns its report.
    fn start(&mut self, instance: &Instance) -> Result<HelperReport, UnitError>;
    /// A unit's state.
    fn unit_state(&mut self, unit: &str) -> Result<UnitState, UnitError>;
    /// Units in the `failed` state.
    fn failed_units(&mut self) -> Result<Vec<String>, UnitError>;
    /// The generation the system profile points at, and whether the running system is it.
    fn generation(&mut self) -> Result<(u32, bool), String>;
    /// Runs one check, records its finding, returns its status.
    fn check(&mut self, check_id: &'static str) -> Result<Status, String>;
    /// Appends an evidence record; returns its seq.
    fn record(&mut self, kind: RecordKind, controls: &[&str], body: Value) -> Result<u64, String>;
    /// Waits for the change to settle before the health probe.
    fn settle(&mut self);
    /// The kernel's boot id (`/proc/sys/kernel/random/boot_id`), to tell whether a reboot
    /// happened since a heal started.
    fn boot_id(&mut self) -> Option<String>;
}

/// How long a heal waits for the reboot it asked for; after that, no reboot came and the heal
/// is judged (and rolled back) as it stands.
const REBOOT_GRACE: jiff::SignedDuration = jiff::SignedDuration::from_mins(30);

/// What verifies an instance.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verify {
    /// The unit is active, and still the same run after the settle time.
    UnitActive(String),
    /// The check passes (pass, warn, not applicable or a waived exception).
    Check(&'static str),
    /// The system profile points at this generation and the running system is it.
    Generation(u32),
}

impl Verify {
    /// What verifies `instance` under its runbook's spec; for a reactivation, the generation
    /// it started from. `None` when the spec and the instance do not fit together.
    pub fn from_spec(
        spec: VerifySpec,
        instance: &Instance,
        current_generation: Option<u32>,
    ) -> Option<Verify> {
        Some(match (spec, instance) {
            (VerifySpec::UnitActive, Instance::Restart(stem)) => {
                Verify::UnitActive(format!("{stem}.service"))
            }
            (VerifySpec::Check(check_id), _) => Verify::Check(check_id),
            (
                VerifySpec::Generation,
                Instance::SwitchGeneration(number) | Instance::BootGeneration(number),
            ) => Verify::Generation(*number),
            (VerifySpec::Generation, Instance::ReactivateGeneration) => {
                Verify::Generation(current_generation?)
            }
            _ => return None,
        })
    }

    /// A healthy pre-observation means there is nothing to do: heals converge a state, so a
    /// running unit is never restarted. A reactivation is the one explicit operation that runs
    /// whatever it finds (it is disruptive, so only inside the window).
    fn skips_when_healthy(&self, instance: &Instance) -> bool {
        !matches!(instance, Instance::ReactivateGeneration)
    }
}

/// How a heal ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HealOutcome {
    /// Nothing to heal; nothing changed.
    NoDrift,
    /// Changed and verified.
    Verified,
    /// The host is rebooting into the new generation; the first run after the boot verifies.
    AwaitingReboot,
    /// Verification failed; rolled back (or nothing to roll back) and escalated.
    Escalated {
        /// Why the heal failed.
        reason: String,
        /// The rollback ran and the state after it was observed.
        rolled_back: bool,
    },
}

/// A heal to run.
#[derive(Clone, Debug)]
pub struct HealRequest<'a> {
    /// Unique id (the order id).
    pub heal_id: &'a str,
    /// The runbook (its id, controls and heal spec).
    pub runbook: &'static Runbook,
    /// What verifies it.
    pub verify: VerifySpec,
    /// The heal unit's instance.
    pub instance: Instance,
}

/// The engine's own failure: the journal, which must be written before the host is changed.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The journal refused a write; the heal was not started (or not continued).
    #[error(transparent)]
    Journal(#[from] JournalError),
    /// The evidence store refused a record; the heal stopped before the next step.
    #[error("recording heal evidence: {0}")]
    Record(String),
}

/// One observation of the state a heal is verified by.
#[derive(Clone, Debug)]
struct Observation {
    healthy: bool,
    detail: String,
    state: Value,
    invocation_id: Option<String>,
}

/// Runs one heal to its end.
pub fn heal(
    host: &mut dyn HealHost,
    journal: &Journal,
    request: &HealRequest<'_>,
) -> Result<HealOutcome, EngineError> {
    let mut run = Run {
        host,
        journal,
        heal_id: request.heal_id,
        runbook: request.runbook.id,
        controls: request.runbook.controls,
        instance: &request.instance,
        pre_observed: Value::Null,
    };
    run.heal(request.verify)
}

/// Finds heals interrupted before `done` and finishes each: verified if the state is good,
/// else rolled back (again, rollbacks are idempotent) and escalated. Returns how many.
pub fn recover(
    host: &mut dyn HealHost,
    journal: &Journal,
    runbook_of: &dyn Fn(&str) -> Option<&'static Runbook>,
) -> Result<usize, EngineError> {
    let open = journal.open_heals()?;
    let mut finished = 0;
    for heal in &open {
        let runbook = runbook_of(&heal.runbook);
        let controls = runbook.map_or(&[][..], |it| it.controls);
        let spec = runbook.and_then(|it| it.heal.as_ref()).map(|it| it.verify);
        let (Ok(instance), Some(spec)) = (Instance::parse(&heal.instance), spec) else {
            // Written by this agent, so only a newer or damaged journal gets here; say so.
            host.record(
                RecordKind::Escalation,
                controls,
                json!({
                    "heal_id": heal.heal_id,
                    "runbook": heal.runbook,
                    "reason": "an interrupted heal names a runbook or instance this agent does not know; its outcome is unknown",
                }),
            )
            .map_err(EngineError::Record)?;
            journal.advance(&heal.heal_id, Phase::Done)?;
            finished += 1;
            continue;
        };
        let mut run = Run {
            host,
            journal,
            heal_id: &heal.heal_id,
            runbook: &heal.runbook,
            controls,
            instance: &instance,
            pre_observed: heal.pre_state["observed"].clone(),
        };
        if run.resume(heal, spec)? {
            finished += 1;
        }
    }
    Ok(finished)
}

struct Run<'a> {
    host: &'a mut dyn HealHost,
    journal: &'a Journal,
    heal_id: &'a str,
    runbook: &'a str,
    controls: &'a [&'static str],
    instance: &'a Instance,
    /// What the pre-observation saw; a rollback is judged by whether it is back.
    pre_observed: Value,
}

impl Run<'_> {
    fn heal(&mut self, spec: VerifySpec) -> Result<HealOutcome, EngineError> {
        let current_generation = self.host.generation().ok().map(|it| it.0);
        let Some(verify) = Verify::from_spec(spec, self.instance, current_generation) else {
            return self.escalate(
                "this instance has no verification; it cannot be run as a heal".to_string(),
                false,
            );
        };
        let failed_before = self.host.failed_units().unwrap_or_default();
        let before = self.observe(&verify, None);
        self.pre_observed = before.state.clone();
        let pre_state = json!({
            "observed": before.state,
            "failed_units": failed_before,
            "boot_id": self.host.boot_id(),
        });
        let drift = !before.healthy;
        self.record_heal(
            if drift {
                event::DRIFT_DETECTED
            } else {
                event::NO_DRIFT
            },
            &before.detail,
            json!({ "pre_state": pre_state }),
        )?;
        if !drift && verify.skips_when_healthy(self.instance) {
            return Ok(HealOutcome::NoDrift);
        }

        self.journal.begin(
            self.heal_id,
            self.runbook,
            &self.instance.to_string(),
            &pre_state,
        )?;
        self.record_heal(
            event::ATTEMPTED,
            &format!("starting {}", self.instance.unit_name()),
            json!({}),
        )?;
        let acted = self.act(self.instance)?;
        self.journal.advance(self.heal_id, Phase::Verifying)?;
        if let (Instance::BootGeneration(number), Ok(Some(_))) = (self.instance, &acted) {
            self.record_heal(
                event::AWAITING_REBOOT,
                &format!("generation {number} is the boot default and the host is rebooting; the first run after the boot verifies it"),
                json!({}),
            )?;
            return Ok(HealOutcome::AwaitingReboot);
        }
        self.verify_or_roll_back(&verify, &failed_before, acted)
    }

    /// Finishes an interrupted heal from its journal row; `false` when it is left open because
    /// the reboot it waits for has not happened yet.
    fn resume(&mut self, open: &OpenHeal, spec: VerifySpec) -> Result<bool, EngineError> {
        let rebooting = matches!(self.instance, Instance::BootGeneration(_))
            && open.phase == Some(Phase::Verifying);
        let same_boot = open.pre_state["boot_id"]
            .as_str()
            .is_some_and(|it| self.host.boot_id().as_deref() == Some(it));
        let waited = jiff::Timestamp::now().duration_since(open.started_at);
        if rebooting && same_boot && waited < REBOOT_GRACE {
            return Ok(false);
        }
        let failed_before: Vec<String> = open.pre_state["failed_units"]
            .as_array()
            .map(|it| {
                it.iter()
                    .filter_map(|unit| unit.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        self.record_heal(
            event::RESUMED,
            &format!(
                "found interrupted in phase {}; finishing it",
                open.phase.map_or("unknown", Phase::as_str)
            ),
            json!({ "pre_state": open.pre_state }),
        )?;
        let pre_generation = open.pre_state["observed"]["generation"]
            .as_u64()
            .and_then(|it| u32::try_from(it).ok());
        let Some(verify) = Verify::from_spec(spec, self.instance, pre_generation) else {
            self.journal.advance(self.heal_id, Phase::Done)?;
            self.escalate(
                "an interrupted heal could not be verified (its verification is unknown here)"
                    .to_string(),
                false,
            )?;
            return Ok(true);
        };
        match open.phase {
            Some(Phase::RollingBack) => {
                self.roll_back_and_escalate(
                    &verify,
                    "interrupted while rolling back; the rollback was run again".to_string(),
                )?;
            }
            Some(Phase::Done) => {}
            // The action may or may not have run: the state decides.
            Some(Phase::Acting | Phase::Verifying) | None => {
                let acted = if rebooting && same_boot {
                    Err(ActFailure::Failed(format!(
                        "no reboot within {} min of setting the boot default",
                        REBOOT_GRACE.as_mins()
                    )))
                } else {
                    Ok(None)
                };
                self.verify_or_roll_back(&verify, &failed_before, acted)?;
            }
        }
        Ok(true)
    }

    /// Starts a heal unit and records what it reported. `Err(reason)` when the action did not
    /// succeed (refused, failed, hung, garbage); `Ok(report)` otherwise (`None` when resuming).
    fn act(
        &mut self,
        instance: &Instance,
    ) -> Result<Result<Option<HelperReport>, ActFailure>, EngineError> {
        let result = self.host.start(instance);
        let (detail, fields, outcome) = match result {
            Ok(report) => {
                let fields = json!({
                    "unit": instance.unit_name(),
                    "ok": report.ok,
                    "steps": report.steps.iter().map(|it| json!({ "argv": it.argv, "exit": it.exit })).collect::<Vec<_>>(),
                    "helper_pre_state": report.pre_state,
                });
                if report.ok {
                    (report.detail.clone(), fields, Ok(Some(report)))
                } else {
                    let why = format!("the heal unit reported failure: {}", report.detail);
                    (why.clone(), fields, Err(ActFailure::Failed(why)))
                }
            }
            Err(err) => {
                let refused = matches!(err, UnitError::Refused { .. });
                let why = err.to_string();
                (
                    why.clone(),
                    json!({ "unit": instance.unit_name(), "error": why }),
                    Err(if refused {
                        ActFailure::Refused(why)
                    } else {
                        ActFailure::Failed(why)
                    }),
                )
            }
        };
        self.record_heal(event::ACTED, &detail, fields)?;
        Ok(outcome)
    }

    fn verify_or_roll_back(
        &mut self,
        verify: &Verify,
        failed_before: &[String],
        acted: Result<Option<HelperReport>, ActFailure>,
    ) -> Result<HealOutcome, EngineError> {
        if let Err(ActFailure::Refused(why)) = &acted {
            // Nothing ran: there is nothing to verify or roll back, only a human to tell.
            self.journal.advance(self.heal_id, Phase::Done)?;
            return self.escalate(
                format!("the heal unit was not allowed to run: {why}"),
                false,
            );
        }
        let first = self.observe(verify, None);
        self.host.settle();
        let after = self.observe(verify, first.invocation_id.as_deref());
        let failed_after = self.host.failed_units().unwrap_or_default();
        let newly_failed: Vec<&String> = failed_after
            .iter()
            .filter(|unit| !failed_before.contains(unit))
            .filter(|unit| !matches!(verify, Verify::UnitActive(target) if target == *unit))
            // The agent's own units (its service, killed mid-heal; the heal and probe units,
            // judged by their reports) say nothing about what the heal did to the host.
            .filter(|unit| !unit.starts_with(AGENT_UNIT_PREFIX))
            .collect();
        let healthy = after.healthy && newly_failed.is_empty();
        let state = json!({
            "observed": after.state,
            "newly_failed_units": newly_failed,
        });
        if healthy {
            let mut detail = after.detail.clone();
            if let Err(ActFailure::Failed(why)) = &acted {
                detail =
                    format!("{detail} (the state is verified although the heal unit said: {why})");
            }
            self.record_heal(event::VERIFIED, &detail, json!({ "post_state": state }))?;
            self.journal.advance(self.heal_id, Phase::Done)?;
            return Ok(HealOutcome::Verified);
        }
        let mut reason = after.detail.clone();
        if !newly_failed.is_empty() {
            reason = format!("{reason}; health probe: units newly failed: {newly_failed:?}");
        }
        if let Err(ActFailure::Failed(why)) = &acted {
            reason = format!("{why}; {reason}");
        }
        self.record_heal(
            event::VERIFICATION_FAILED,
            &reason,
            json!({ "post_state": state }),
        )?;
        self.roll_back_and_escalate(verify, reason)
    }

    fn roll_back_and_escalate(
        &mut self,
        verify: &Verify,
        reason: String,
    ) -> Result<HealOutcome, EngineError> {
        let Some(rollback) = self.instance.rollback() else {
            self.journal.advance(self.heal_id, Phase::Done)?;
            return self.escalate(format!("{reason}; this heal has no rollback"), false);
        };
        self.journal.advance(self.heal_id, Phase::RollingBack)?;
        let (rolled_back, detail, fields) = match self.host.start(&rollback) {
            Ok(report) => (
                report.ok,
                report.detail.clone(),
                json!({
                    "unit": rollback.unit_name(),
                    "ok": report.ok,
                    "steps": report.steps.iter().map(|it| json!({ "argv": it.argv, "exit": it.exit })).collect::<Vec<_>>(),
                }),
            ),
            Err(err) => (
                false,
                err.to_string(),
                json!({ "unit": rollback.unit_name(), "error": err.to_string() }),
            ),
        };
        self.host.settle();
        // Re-check after the rollback: is the state from before the heal back? The escalation
        // then says what state the host is left in.
        let after = self.observe(verify, None);
        let restored = restored(verify, &self.pre_observed, &after);
        let mut body = json!({
            "heal_id": self.heal_id,
            "runbook": self.runbook,
            "instance": rollback.to_string(),
            "event": if rolled_back { event::ROLLED_BACK } else { event::ROLLBACK_FAILED },
            "detail": detail,
            "re_check": {
                "restored": restored,
                "detail": after.detail,
                "observed": after.state,
                "before_heal": self.pre_observed,
            },
        });
        merge(&mut body, fields);
        self.host
            .record(RecordKind::Rollback, self.controls, body)
            .map_err(EngineError::Record)?;
        self.journal.advance(self.heal_id, Phase::Done)?;
        let reason = if rolled_back && !restored {
            format!(
                "{reason}; after the rollback the state from before the heal is not back ({})",
                after.detail
            )
        } else {
            reason
        };
        self.escalate(reason, rolled_back && restored)
    }

    fn escalate(&mut self, reason: String, rolled_back: bool) -> Result<HealOutcome, EngineError> {
        self.host
            .record(
                RecordKind::Escalation,
                self.controls,
                json!({
                    "heal_id": self.heal_id,
                    "runbook": self.runbook,
                    "instance": self.instance.to_string(),
                    "level": "L3",
                    "reason": reason,
                    "rolled_back": rolled_back,
                }),
            )
            .map_err(EngineError::Record)?;
        Ok(HealOutcome::Escalated {
            reason,
            rolled_back,
        })
    }

    fn observe(&mut self, verify: &Verify, same_run_as: Option<&str>) -> Observation {
        match verify {
            Verify::UnitActive(unit) => match self.host.unit_state(unit) {
                Ok(state) => {
                    let active = state.active == "active";
                    let same_run = same_run_as.is_none_or(|id| id == state.invocation_id);
                    let detail = if !active {
                        format!(
                            "{unit} is {} ({}, result {})",
                            state.active, state.sub, state.result
                        )
                    } else if !same_run {
                        format!(
                            "{unit} is active but was restarted since the heal (a restart loop)"
                        )
                    } else {
                        format!("{unit} is active ({})", state.sub)
                    };
                    Observation {
                        healthy: active && same_run,
                        detail,
                        state: state.to_json(),
                        invocation_id: Some(state.invocation_id),
                    }
                }
                Err(err) => unobservable(format!("state of {unit}: {err}")),
            },
            Verify::Check(check_id) => match self.host.check(check_id) {
                Ok(status) => Observation {
                    healthy: matches!(
                        status,
                        Status::Pass | Status::Warn | Status::NotApplicable | Status::Exception
                    ),
                    detail: format!("check {check_id}: {}", status.as_str()),
                    state: json!({ "check": check_id, "status": status.as_str() }),
                    invocation_id: None,
                },
                Err(err) => unobservable(format!("check {check_id}: {err}")),
            },
            Verify::Generation(target) => match self.host.generation() {
                Ok((current, running)) => Observation {
                    healthy: current == *target && running,
                    detail: if current != *target {
                        format!("the system profile is at generation {current}, not {target}")
                    } else if !running {
                        format!(
                            "the system profile is at generation {current} but the running system is not"
                        )
                    } else {
                        format!("generation {current} is the profile and the running system")
                    },
                    state: json!({ "generation": current, "running": running }),
                    invocation_id: None,
                },
                Err(err) => unobservable(format!("system generation: {err}")),
            },
        }
    }

    fn record_heal(
        &mut self,
        event: &str,
        detail: &str,
        fields: Value,
    ) -> Result<u64, EngineError> {
        let mut body = json!({
            "heal_id": self.heal_id,
            "runbook": self.runbook,
            "instance": self.instance.to_string(),
            "event": event,
            "detail": detail,
        });
        merge(&mut body, fields);
        self.host
            .record(RecordKind::Heal, self.controls, body)
            .map_err(EngineError::Record)
    }
}

/// Why an action did not succeed.
#[derive(Clone, Debug)]
enum ActFailure {
    /// polkit or systemd refused to start the unit: nothing ran.
    Refused(String),
    /// It ran and failed, hung, or left no usable report: the state must be observed.
    Failed(String),
}

/// Whether the state after a rollback is the state before the heal, in the terms of the heal's
/// verification: the unit running or not as before; the check's status as before (or passing);
/// the profile and the running system back at the earlier generation.
fn restored(verify: &Verify, before: &Value, after: &Observation) -> bool {
    match verify {
        Verify::UnitActive(_) => {
            (before["ActiveState"] == "active") == (after.state["ActiveState"] == "active")
                && after.state.get("error").is_none()
        }
        Verify::Check(_) => {
            after.healthy
                || (after.state.get("status").is_some()
                    && before["status"] == after.state["status"])
        }
        Verify::Generation(_) => {
            before["generation"].is_u64()
                && before["generation"] == after.state["generation"]
                && after.state["running"] == true
        }
    }
}

/// A state that could not be read is not healthy: a heal that cannot be verified has failed.
fn unobservable(detail: String) -> Observation {
    Observation {
        healthy: false,
        state: json!({ "error": detail }),
        detail,
        invocation_id: None,
    }
}

fn merge(body: &mut Value, fields: Value) {
    if let (Value::Object(body), Value::Object(fields)) = (body, fields) {
        body.extend(fields);
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use jiff::Timestamp;

    use super::*;
    use crate::heal::journal::journal_path;
    use crate::runbooks;
    use msp_compliance_protocol::ids::runbook as ids;

    /// A host whose answers are scripted per call, recording everything the engine does.
    #[derive(Default)]
    struct Scripted {
        /// Unit states returned in order (the last one repeats).
        states: VecDeque<UnitState>,
        /// Reports of heal units by instance name; absent: refused by polkit.
        reports: Vec<(String, Result<bool, &'static str>)>,
        checks: VecDeque<Status>,
        failed_after_start: Vec<String>,
        started: Vec<String>,
        records: Vec<(RecordKind, Value)>,
        settled: usize,
        /// (profile generation, running) answers in order (the last one repeats).
        generations: VecDeque<(u32, bool)>,
        boot: String,
    }

    fn state(active: &str, invocation: &str) -> UnitState {
        UnitState {
            active: active.to_string(),
            sub: if active == "active" {
                "running"
            } else {
                "dead"
            }
            .to_string(),
            result: "success".to_string(),
            restarts: Some(0),
            invocation_id: invocation.to_string(),
        }
    }

    impl HealHost for Scripted {
        fn start(&mut self, instance: &Instance) -> Result<HelperReport, UnitError> {
            let name = instance.to_string();
            self.started.push(name.clone());
            let unit = instance.unit_name();
            match self
                .reports
                .iter()
                .find(|(it, _)| *it == name)
                .map(|it| it.1)
            {
                Some(Ok(ok)) => Ok(HelperReport {
                    v: 1,
                    instance: name,
                    invocation_id: "i".into(),
                    started_at: Timestamp::now(),
                    finished_at: Timestamp::now(),
                    ok,
                    detail: if ok { "done" } else { "exit 1" }.into(),
                    steps: Vec::new(),
                    pre_state: Value::Null,
                }),
                Some(Err("hang")) => Err(UnitError::Timeout { unit, seconds: 5 }),
                Some(Err(why)) => Err(UnitError::Garbage {
                    unit,
                    why: why.into(),
                }),
                None => Err(UnitError::Refused {
                    unit,
                    stderr: "Access denied".into(),
                }),
            }
        }
        fn unit_state(&mut self, _unit: &str) -> Result<UnitState, UnitError> {
            let next = if self.states.len() > 1 {
                self.states.pop_front()
            } else {
                self.states.front().cloned()
            };
            Ok(next.unwrap_or_default())
        }
        fn failed_units(&mut self) -> Result<Vec<String>, UnitError> {
            Ok(if self.started.is_empty() {
                Vec::new()
            } else {
                self.failed_after_start.clone()
            })
        }
        fn generation(&mut self) -> Result<(u32, bool), String> {
            let next = if self.generations.len() > 1 {
                self.generations.pop_front()
            } else {
                self.generations.front().copied()
            };
            next.ok_or_else(|| "not NixOS".to_string())
        }
        fn check(&mut self, _check_id: &'static str) -> Result<Status, String> {
            let next = if self.checks.len() > 1 {
                self.checks.pop_front()
            } else {
                self.checks.front().copied()
            };
            next.ok_or_else(|| "no answer".to_string())
        }
        fn record(
            &mut self,
            kind: RecordKind,
            _controls: &[&str],
            body: Value,
        ) -> Result<u64, String> {
            self.records.push((kind, body));
            Ok(self.records.len() as u64)
        }
        fn settle(&mut self) {
            self.settled += 1;
        }
        fn boot_id(&mut self) -> Option<String> {
            Some(self.boot.clone())
        }
    }

    impl Scripted {
        fn events(&self) -> Vec<String> {
            self.records
                .iter()
                .map(|(kind, body)| match body["event"].as_str() {
                    Some(event) => format!("{}:{event}", kind.as_str()),
                    None => kind.as_str().to_string(),
                })
                .collect()
        }
    }

    fn request(runbook_id: &str, instance: Instance) -> HealRequest<'static> {
        let runbook = runbooks::find(runbook_id).unwrap();
        HealRequest {
            heal_id: "order-1",
            runbook,
            verify: runbook.heal.as_ref().unwrap().verify,
            instance,
        }
    }

    /// Runs the `restart-unit` heal of `unit` on the scripted host.
    fn restart(host: &mut Scripted, journal: &Journal, unit: &str) -> HealOutcome {
        let request = request(ids::RESTART_UNIT, Instance::restart(unit).unwrap());
        heal(host, journal, &request).unwrap()
    }

    fn new_journal() -> (tempfile::TempDir, Journal) {
        let dir = tempfile::tempdir().unwrap();
        let journal = Journal::open(&journal_path(dir.path())).unwrap();
        (dir, journal)
    }

    #[test]
    fn a_stopped_unit_is_restarted_and_verified_after_settling() {
        let (_dir, journal) = new_journal();
        let mut host = Scripted {
            states: [
                state("failed", "a"),
                state("active", "b"),
                state("active", "b"),
            ]
            .into(),
            reports: vec![("restart-pacs".into(), Ok(true))],
            ..Scripted::default()
        };
        let outcome = heal(
            &mut host,
            &journal,
            &request(
                ids::RESTART_UNIT,
                Instance::restart("pacs.service").unwrap(),
            ),
        )
        .unwrap();
        assert_eq!(outcome, HealOutcome::Verified);
        assert_eq!(host.started, ["restart-pacs"]);
        assert_eq!(host.settled, 1);
        assert_eq!(
            host.events(),
            [
                "heal:drift_detected",
                "heal:attempted",
                "heal:acted",
                "heal:verified"
            ]
        );
        assert!(journal.open_heals().unwrap().is_empty());
    }

    #[test]
    fn a_running_unit_is_left_alone() {
        let (_dir, journal) = new_journal();
        let mut host = Scripted {
            states: [state("active", "a")].into(),
            ..Scripted::default()
        };
        let outcome = heal(
            &mut host,
            &journal,
            &request(
                ids::RESTART_UNIT,
                Instance::restart("pacs.service").unwrap(),
            ),
        )
        .unwrap();
        assert_eq!(outcome, HealOutcome::NoDrift);
        assert!(host.started.is_empty());
        assert_eq!(host.events(), ["heal:no_drift"]);
    }

    #[test]
    fn a_unit_that_dies_after_starting_is_rolled_back_and_escalated() {
        let (_dir, journal) = new_journal();
        let mut host = Scripted {
            // Before; right after the restart (active); after settling (failed); after rollback.
            states: [
                state("inactive", "a"),
                state("active", "b"),
                state("failed", "b"),
                state("inactive", "b"),
            ]
            .into(),
            reports: vec![
                ("restart-hl7".into(), Ok(true)),
                ("rollback-restart-hl7".into(), Ok(true)),
            ],
            ..Scripted::default()
        };
        let outcome = restart(&mut host, &journal, "hl7.service");
        assert!(
            matches!(
                outcome,
                HealOutcome::Escalated {
                    rolled_back: true,
                    ..
                }
            ),
            "{outcome:?}"
        );
        assert_eq!(host.started, ["restart-hl7", "rollback-restart-hl7"]);
        assert_eq!(
            host.events(),
            [
                "heal:drift_detected",
                "heal:attempted",
                "heal:acted",
                "heal:verification_failed",
                "rollback:rolled_back",
                "escalation"
            ]
        );
        let rollback = &host.records[4].1;
        assert_eq!(rollback["re_check"]["observed"]["ActiveState"], "inactive");
    }

    #[test]
    fn a_restart_loop_is_not_a_success() {
        let (_dir, journal) = new_journal();
        let mut host = Scripted {
            states: [
                state("failed", "a"),
                state("active", "b"),
                state("active", "c"),
                state("inactive", "c"),
            ]
            .into(),
            reports: vec![
                ("restart-x".into(), Ok(true)),
                ("rollback-restart-x".into(), Ok(true)),
            ],
            ..Scripted::default()
        };
        let outcome = restart(&mut host, &journal, "x.service");
        let HealOutcome::Escalated { reason, .. } = outcome else {
            panic!("{outcome:?}");
        };
        assert!(reason.contains("restart loop"), "{reason}");
    }

    #[test]
    fn polkit_refusal_changes_nothing_and_escalates() {
        let (_dir, journal) = new_journal();
        let mut host = Scripted {
            states: [state("failed", "a")].into(),
            reports: Vec::new(),
            ..Scripted::default()
        };
        let outcome = restart(&mut host, &journal, "x.service");
        assert!(matches!(
            outcome,
            HealOutcome::Escalated {
                rolled_back: false,
                ..
            }
        ));
        assert_eq!(
            host.started,
            ["restart-x"],
            "no rollback unit after a refusal"
        );
        assert_eq!(
            host.events(),
            [
                "heal:drift_detected",
                "heal:attempted",
                "heal:acted",
                "escalation"
            ]
        );
        assert!(
            host.records[2].1["error"]
                .as_str()
                .unwrap()
                .contains("refused")
        );
    }

    #[test]
    fn a_firewall_restore_is_verified_by_the_firewall_check_or_rolled_back() {
        let (_dir, journal) = new_journal();
        let mut host = Scripted {
            checks: [Status::Fail, Status::Pass].into(),
            reports: vec![("restore-firewall".into(), Ok(true))],
            ..Scripted::default()
        };
        let outcome = heal(
            &mut host,
            &journal,
            &request(ids::RESTORE_FIREWALL, Instance::RestoreFirewall),
        )
        .unwrap();
        assert_eq!(outcome, HealOutcome::Verified);

        let (_dir, journal) = new_journal();
        let mut host = Scripted {
            checks: [Status::Fail, Status::Fail, Status::Fail, Status::Fail].into(),
            reports: vec![
                ("restore-firewall".into(), Ok(true)),
                ("rollback-firewall".into(), Ok(true)),
            ],
            ..Scripted::default()
        };
        let outcome = heal(
            &mut host,
            &journal,
            &request(ids::RESTORE_FIREWALL, Instance::RestoreFirewall),
        )
        .unwrap();
        assert!(matches!(
            outcome,
            HealOutcome::Escalated {
                rolled_back: true,
                ..
            }
        ));
        assert_eq!(host.started, ["restore-firewall", "rollback-firewall"]);
    }

    #[test]
    fn hung_or_garbage_units_are_judged_by_the_state_they_leave() {
        for answer in [Err("hang"), Err("not json")] {
            let (_dir, journal) = new_journal();
            let mut host = Scripted {
                checks: [Status::Fail, Status::Fail].into(),
                reports: vec![
                    ("restore-firewall".into(), answer),
                    ("rollback-firewall".into(), Ok(true)),
                ],
                ..Scripted::default()
            };
            let outcome = heal(
                &mut host,
                &journal,
                &request(ids::RESTORE_FIREWALL, Instance::RestoreFirewall),
            )
            .unwrap();
            assert!(
                matches!(
                    outcome,
                    HealOutcome::Escalated {
                        rolled_back: true,
                        ..
                    }
                ),
                "{answer:?}: {outcome:?}"
            );
        }
    }

    #[test]
    fn a_newly_failed_unit_fails_the_health_probe() {
        let (_dir, journal) = new_journal();
        let mut host = Scripted {
            checks: [Status::Fail, Status::Pass].into(),
            reports: vec![
                ("restore-firewall".into(), Ok(true)),
                ("rollback-firewall".into(), Ok(true)),
            ],
            failed_after_start: vec!["sshd.service".into()],
            ..Scripted::default()
        };
        let outcome = heal(
            &mut host,
            &journal,
            &request(ids::RESTORE_FIREWALL, Instance::RestoreFirewall),
        )
        .unwrap();
        let HealOutcome::Escalated { reason, .. } = outcome else {
            panic!("{outcome:?}");
        };
        assert!(reason.contains("sshd.service"), "{reason}");
    }

    #[test]
    fn an_interrupted_heal_is_finished_on_restart() {
        // Killed after the unit was started, before verification: the state decides.
        for (state_now, expect) in [
            (state("active", "b"), vec!["heal:resumed", "heal:verified"]),
            (
                state("failed", "b"),
                vec![
                    "heal:resumed",
                    "heal:verification_failed",
                    "rollback:rolled_back",
                    "escalation",
                ],
            ),
        ] {
            let (_dir, journal) = new_journal();
            journal
                .begin(
                    "order-9",
                    ids::RESTART_UNIT,
                    "restart-pacs",
                    &serde_json::json!({ "failed_units": [] }),
                )
                .unwrap();
            journal.advance("order-9", Phase::Verifying).unwrap();
            let mut host = Scripted {
                states: [state_now].into(),
                reports: vec![("rollback-restart-pacs".into(), Ok(true))],
                ..Scripted::default()
            };
            let finished = recover(&mut host, &journal, &runbooks::find).unwrap();
            assert_eq!(finished, 1);
            assert_eq!(host.events(), expect);
            assert!(journal.open_heals().unwrap().is_empty());
            assert_eq!(recover(&mut host, &journal, &runbooks::find).unwrap(), 0);
        }
    }

    #[test]
    fn every_heal_runbook_has_a_verification_and_its_rollback_matches_the_grammar() {
        for runbook in runbooks::RUNBOOKS.iter().filter(|it| it.heal.is_some()) {
            let spec = runbook.heal.as_ref().unwrap();
            let instance = match runbook.id {
                ids::RESTART_UNIT => Instance::restart("x.service").unwrap(),
                ids::RESTORE_FIREWALL => Instance::RestoreFirewall,
                ids::REFRESH_AV_SIGNATURES => Instance::RefreshAv,
                ids::RUN_BACKUP => Instance::Backup("ehr".into()),
                ids::REACTIVATE_GENERATION => Instance::ReactivateGeneration,
                ids::SWITCH_GENERATION => Instance::SwitchGeneration(3),
                other => panic!("heal runbook {other} without a test instance"),
            };
            assert!(
                Verify::from_spec(spec.verify, &instance, Some(2)).is_some(),
                "{}",
                runbook.id
            );
            assert_eq!(
                spec.rollback.is_some(),
                instance.rollback().is_some(),
                "{}",
                runbook.id
            );
            assert_eq!(
                runbook.disruptive,
                runbook.safety == msp_compliance_protocol::finding::SafetyClass::Disruptive,
                "{}",
                runbook.id
            );
        }
    }

    #[test]
    fn a_boot_generation_heal_is_verified_by_the_first_run_after_the_reboot() {
        let (_dir, journal) = new_journal();
        let mut host = Scripted {
            generations: [(2, true)].into(),
            reports: vec![("boot-generation-3".into(), Ok(true))],
            boot: "boot-1".into(),
            ..Scripted::default()
        };
        let outcome = heal(
            &mut host,
            &journal,
            &request(ids::SWITCH_GENERATION, Instance::BootGeneration(3)),
        )
        .unwrap();
        assert_eq!(outcome, HealOutcome::AwaitingReboot);
        assert_eq!(
            host.events(),
            [
                "heal:drift_detected",
                "heal:attempted",
                "heal:acted",
                "heal:awaiting_reboot"
            ]
        );
        assert_eq!(
            journal.open_heals().unwrap()[0].phase,
            Some(Phase::Verifying)
        );

        // Before the reboot (same boot id): left open, nothing recorded, nothing rolled back.
        host.generations = [(3, false)].into();
        assert_eq!(recover(&mut host, &journal, &runbooks::find).unwrap(), 0);
        assert_eq!(host.records.len(), 4);
        assert_eq!(host.started, ["boot-generation-3"]);

        // After the reboot, running generation 3: verified.
        host.boot = "boot-2".into();
        host.generations = [(3, true)].into();
        assert_eq!(recover(&mut host, &journal, &runbooks::find).unwrap(), 1);
        assert_eq!(&host.events()[4..], ["heal:resumed", "heal:verified"]);
        assert!(journal.open_heals().unwrap().is_empty());
    }

    #[test]
    fn a_boot_into_the_wrong_generation_is_rolled_back_after_the_reboot() {
        let (_dir, journal) = new_journal();
        let mut host = Scripted {
            generations: [(2, true)].into(),
            reports: vec![
                ("boot-generation-3".into(), Ok(true)),
                ("rollback-generation".into(), Ok(true)),
            ],
            boot: "boot-1".into(),
            ..Scripted::default()
        };
        heal(
            &mut host,
            &journal,
            &request(ids::SWITCH_GENERATION, Instance::BootGeneration(3)),
        )
        .unwrap();
        // The bootloader fell back: the profile says 3, the running system is not 3.
        host.boot = "boot-2".into();
        host.generations = [(3, false), (3, false), (2, true)].into();
        assert_eq!(recover(&mut host, &journal, &runbooks::find).unwrap(), 1);
        assert_eq!(
            &host.events()[4..],
            [
                "heal:resumed",
                "heal:verification_failed",
                "rollback:rolled_back",
                "escalation"
            ]
        );
        assert_eq!(host.started, ["boot-generation-3", "rollback-generation"]);
    }

    #[test]
    fn a_reboot_that_never_comes_is_judged_after_the_grace_time() {
        let (_dir, journal) = new_journal();
        // Begun long ago (a journal row from an earlier run), still the same boot.
        journal
            .begin(
                "order-old",
                ids::SWITCH_GENERATION,
                "boot-generation-3",
                &serde_json::json!({ "boot_id": "boot-1", "observed": { "generation": 2 } }),
            )
            .unwrap();
        journal.advance("order-old", Phase::Verifying).unwrap();
        journal.backdate_for_tests("order-old", jiff::SignedDuration::from_hours(2));
        let mut host = Scripted {
            generations: [(3, false), (3, false), (2, true)].into(),
            reports: vec![("rollback-generation".into(), Ok(true))],
            boot: "boot-1".into(),
            ..Scripted::default()
        };
        assert_eq!(recover(&mut host, &journal, &runbooks::find).unwrap(), 1);
        let escalation = &host.records.last().unwrap().1;
        assert!(
            escalation["reason"]
                .as_str()
                .unwrap()
                .contains("no reboot within 30 min"),
            "{escalation:#}"
        );
        assert_eq!(host.started, ["rollback-generation"]);
    }
}
