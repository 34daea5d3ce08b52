//! Healing: a decision (a signed order now, the L1/L2 healer later) turned into a verified
//! change or a clean escalation, with rollback (DESIGN §2, §5, §8).
//!
//! - [`instance`]: the grammar of the root heal units' instance names, shared by both sides;
//! - [`helper`]: the root side, `heal-unit <instance>`, run only by `msp-compliance-heal@.service`;
//! - [`systemd`]: the agent's side of those units (start through polkit, read the report);
//! - [`journal`]: the durable heal journal that lets a restarted agent finish a heal;
//! - [`engine`]: the steps of one heal and their evidence, sans-I/O behind `HealHost`.
//!
//! This module joins them for the daemon: [`plan`] turns a runbook and its validated
//! parameters into an instance, naming only units and jobs the generation's declared.json
//! lists (an order's text never becomes a unit name), and [`DaemonHost`] is the engine's host
//! over the agent's context.

pub mod engine;
pub mod helper;
pub mod instance;
pub mod journal;
pub mod systemd;

use std::time::Duration;

use jiff::Timestamp;
use msp_compliance_protocol::evidence::{Draft, RecordKind};
use msp_compliance_protocol::finding::Status;
use msp_compliance_protocol::ids::runbook;
use serde_json::Value;

use crate::checks;
use crate::daemon::{Context, cycle};
use crate::facts::command::{CommandSource, Limits};
use crate::facts::declared::DeclaredHeal;
use crate::heal::engine::HealHost;
use crate::heal::helper::HelperReport;
use crate::heal::instance::Instance;
use crate::heal::systemd::{Systemd, UnitError, UnitState};
use crate::runbooks::{Runbook, ValidParams};

/// Builds the instance for a heal runbook. `Err` says, in one sentence, why this host cannot
/// run it (nothing declared, a unit or job not listed); it never quotes more than the
/// validated parameter.
pub fn plan(
    runbook: &Runbook,
    params: &ValidParams,
    declared: Option<&DeclaredHeal>,
) -> Result<Instance, String> {
    let empty = DeclaredHeal::default();
    let declared = declared.unwrap_or(&empty);
    match runbook.id {
        runbook::RESTART_UNIT => {
            let unit = params.text("unit").unwrap_or_default();
            // The instance is built from the declared entry, so what runs is the generation's
            // string, equal to the order's only because it was found in the list.
            let declared_unit = declared
                .restartable_units
                .iter()
                .find(|it| it.as_str() == unit)
                .ok_or_else(|| format!("{unit} is not in declared.json's heal.restartableUnits"))?;
            Instance::restart(declared_unit)
                .map_err(|_| format!("{unit} is not a plain `<name>.service` unit"))
        }
        runbook::RESTORE_FIREWALL => declared
            .firewall_unit
            .as_ref()
            .map(|_| Instance::RestoreFirewall)
            .ok_or_else(|| "declared.json names no firewall unit".to_string()),
        runbook::REFRESH_AV_SIGNATURES => declared
            .av_update_unit
            .as_ref()
            .map(|_| Instance::RefreshAv)
            .ok_or_else(|| "declared.json names no antivirus update unit".to_string()),
        runbook::RUN_BACKUP => {
            let job = params.text("job").unwrap_or_default();
            let (declared_job, _) = declared
                .backup_units
                .iter()
                .find(|(name, _)| name.as_str() == job)
                .ok_or_else(|| {
                    format!("backup job {job} is not in declared.json's heal.backupUnits")
                })?;
            Instance::parse(&format!("backup-{declared_job}"))
                .map_err(|_| format!("backup job {job} is not a plain name"))
        }
        runbook::REACTIVATE_GENERATION => Ok(Instance::ReactivateGeneration),
        runbook::SWITCH_GENERATION => {
            let number = params
                .integer("generation")
                .and_then(|it| u32::try_from(it).ok())
                .filter(|it| (1..=instance::MAX_GENERATION).contains(it))
                .ok_or_else(|| "params.generation: expected 1 to 999999999".to_string())?;
            Ok(if params.boolean("reboot") == Some(true) {
                Instance::BootGeneration(number)
            } else {
                Instance::SwitchGeneration(number)
            })
        }
        other => Err(format!("{other} is not a heal runbook")),
    }
}

/// What a dry run of a heal would do, in one sentence (nothing is read or changed).
pub fn describe(runbook: &Runbook, params: &ValidParams) -> Option<String> {
    let spec = runbook.heal.as_ref()?;
    let target = match runbook.id {
        runbook::RESTART_UNIT => params.text("unit").map(|unit| format!(" for {unit}")),
        runbook::RUN_BACKUP => params.text("job").map(|job| format!(" for job {job}")),
        runbook::SWITCH_GENERATION => params.integer("generation").map(|number| {
            if params.boolean("reboot") == Some(true) {
                format!(" to generation {number} (as the boot default, then a reboot)")
            } else {
                format!(" to generation {number}")
            }
        }),
        _ => None,
    }
    .unwrap_or_default();
    let verify = match spec.verify {
        crate::runbooks::VerifySpec::UnitActive => "the unit is active and stays up".to_string(),
        crate::runbooks::VerifySpec::Check(id) => format!("the {id} check passes"),
        crate::runbooks::VerifySpec::Generation => {
            "the profile and the running system are that generation".to_string()
        }
    };
    Some(format!(
        "would {}{target} through a msp-compliance-heal@ unit if drift is found, verify that {verify} and {}, else {}",
        runbook.description,
        spec.health_probe,
        spec.rollback
            .map_or("escalate".to_string(), |it| format!("{it} and escalate"))
    ))
}

/// The engine's host over the daemon's context: systemd for units, the agent's checks for
/// verification, the evidence store for records.
pub struct DaemonHost<'a> {
    context: &'a mut Context,
    systemd: Systemd,
    settle: Duration,
    profiles: std::path::PathBuf,
}

impl<'a> DaemonHost<'a> {
    /// A host for heals run by this context.
    pub fn new(context: &'a mut Context) -> DaemonHost<'a> {
        let config = &context.config;
        let systemd = Systemd {
            commands: CommandSource::Live(Limits {
                timeout: Duration::from_secs(config.heal.unit_timeout_secs),
                max_output: config.max_output_bytes,
                search_path: config.search_path.clone(),
            }),
            result_dir: std::path::PathBuf::from(helper::RESULT_DIR),
        };
        DaemonHost {
            settle: Duration::from_secs(config.heal.settle_secs),
            systemd,
            profiles: std::path::PathBuf::from(helper::PROFILES_DIR),
            context,
        }
    }
}

impl HealHost for DaemonHost<'_> {
    fn start(&mut self, instance: &Instance) -> Result<HelperReport, UnitError> {
        self.systemd.start(instance)
    }

    fn unit_state(&mut self, unit: &str) -> Result<UnitState, UnitError> {
        self.systemd.state(unit)
    }

    fn failed_units(&mut self) -> Result<Vec<String>, UnitError> {
        self.systemd.failed_units()
    }

    fn generation(&mut self) -> Result<(u32, bool), String> {
        let profile = self.profiles.join("system");
        let target =
            std::fs::read_link(&profile).map_err(|err| format!("{}: {err}", profile.display()))?;
        let number = target
            .to_str()
            .and_then(|it| it.strip_prefix("system-"))
            .and_then(|it| it.strip_suffix("-link"))
            .and_then(|it| it.parse::<u32>().ok())
            .ok_or_else(|| format!("{} points at {}", profile.display(), target.display()))?;
        // The running system is the generation when /run/current-system resolves to the same
        // store path as the profile's link.
        let running = match (
            std::fs::canonicalize("/run/current-system"),
            std::fs::canonicalize(&profile),
        ) {
            (Ok(current), Ok(profile)) => current == profile,
            _ => false,
        };
        Ok((number, running))
    }

    fn check(&mut self, check_id: &'static str) -> Result<Status, String> {
        let selected = checks::select(&[check_id.to_string()])?;
        let run = cycle::run_checks(self.context, &selected, Timestamp::now())
            .map_err(|err| err.to_string())?;
        let summary = &run.summary;
        // One check ran: its status is the one counted.
        Ok(if summary.fail > 0 {
            Status::Fail
        } else if summary.unknown > 0 {
            Status::Unknown
        } else if summary.exception > 0 {
            Status::Exception
        } else if summary.warn > 0 {
            Status::Warn
        } else if summary.pass > 0 {
            Status::Pass
        } else {
            Status::NotApplicable
        })
    }

    fn record(&mut self, kind: RecordKind, controls: &[&str], body: Value) -> Result<u64, String> {
        let draft = Draft {
            kind,
            baseline: None,
            controls: controls.iter().map(|it| it.to_string()).collect(),
            body: self.context.scrubber.scrub_value(&body),
        };
        let context = &mut *self.context;
        context
            .store
            .append(&[draft], &context.author, Timestamp::now(), &context.key)
            .map_err(|err| err.to_string())?
            .first()
            .map(|it| it.seq)
            .ok_or_else(|| "the store appended nothing".to_string())
    }

    fn settle(&mut self) {
        std::thread::sleep(self.settle);
    }

    fn boot_id(&mut self) -> Option<String> {
        // The kernel's boot id, and when the service manager of this boot started: inside a
        // container a sandboxed unit may see the host kernel's boot id (which a container
        // reboot does not change), while PID 1's start changes with every boot of the OS
        // instance, host or container.
        let kernel = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?;
        let manager = self.systemd.manager_started().ok()?;
        Some(format!("{}/{manager}", kernel.trim()))
    }
}

/// Runs an approved heal order: plan against the generation's declared state, then the
/// engine. The report's detail is one sentence for the order result.
pub fn run_order(
    approved: &crate::orders::Approved,
    context: &mut Context,
) -> crate::daemon::actions::ActionReport {
    use crate::daemon::actions::ActionReport;
    let runbook = approved.runbook();
    let Some(spec) = runbook.heal.as_ref() else {
        return ActionReport::failed(format!("{} is not a heal runbook", runbook.id));
    };
    let host_view = crate::cli::build_host(context.root.clone(), &context.config);
    let declared = host_view.declared_ok().and_then(|it| it.heal.clone());
    let instance = match plan(runbook, approved.params(), declared.as_ref()) {
        Ok(it) => it,
        Err(why) => return ActionReport::failed(format!("not healable on this host: {why}")),
    };
    let journal = match journal::Journal::open(&journal::journal_path(&context.config.state_dir)) {
        Ok(it) => it,
        Err(err) => return ActionReport::failed(format!("heal not started: {err}")),
    };
    let request = engine::HealRequest {
        heal_id: approved.order_id(),
        runbook,
        verify: spec.verify,
        instance,
    };
    let unit = request.instance.unit_name();
    let mut host = DaemonHost::new(context);
    match engine::heal(&mut host, &journal, &request) {
        Ok(engine::HealOutcome::NoDrift) => ActionReport::done(
            format!("no drift found; nothing changed ({unit} not started)"),
            serde_json::json!({ "heal": "no_drift", "unit": unit }),
        ),
        Ok(engine::HealOutcome::AwaitingReboot) => ActionReport::done(
            format!(
                "{unit} set the boot default and is rebooting the host; the first run after the boot verifies the heal or rolls it back"
            ),
            serde_json::json!({ "heal": "awaiting_reboot", "unit": unit }),
        ),
        Ok(engine::HealOutcome::Verified) => ActionReport::done(
            format!("healed through {unit} and verified"),
            serde_json::json!({ "heal": "verified", "unit": unit }),
        ),
        Ok(engine::HealOutcome::Escalated {
            reason,
            rolled_back,
        }) => ActionReport {
            succeeded: false,
            detail: format!(
                "heal through {unit} not verified{}; escalated: {reason}",
                if rolled_back { ", rolled back" } else { "" }
            ),
            output: serde_json::json!({
                "heal": "escalated",
                "unit": unit,
                "rolled_back": rolled_back,
            }),
        },
        Err(err) => ActionReport::failed(format!("heal stopped: {err}")),
    }
}

/// Finishes heals an earlier run of the agent left unfinished (killed mid-heal). Cheap when
/// there is no journal yet. Returns how many were finished.
pub fn recover_interrupted(context: &mut Context) -> Result<usize, String> {
    let path = journal::journal_path(&context.config.state_dir);
    if !path.exists() {
        return Ok(0);
    }
    let journal = journal::Journal::open(&path).map_err(|err| err.to_string())?;
    if journal
        .open_heals()
        .map_err(|err| err.to_string())?
        .is_empty()
    {
        return Ok(0);
    }
    let mut host = DaemonHost::new(context);
    engine::recover(&mut host, &journal, &crate::runbooks::find).map_err(|err| err.to_string())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::runbooks::{self, ParamError};

    fn declared() -> DeclaredHeal {
        DeclaredHeal {
            restartable_units: vec!["pacs-bridge.service".into(), "hl7-listener.service".into()],
            firewall_unit: Some("nftables.service".into()),
            av_update_unit: None,
            backup_units: [("ehr".to_string(), "restic-backups-ehr.service".to_string())].into(),
        }
    }

    fn planned(
        id: &str,
        params: serde_json::Value,
        declared: Option<&DeclaredHeal>,
    ) -> Result<Instance, String> {
        let runbook = runbooks::find(id).unwrap();
        let params = runbooks::validate_params(runbook, &params).map_err(|it| it.to_string())?;
        plan(runbook, &params, declared)
    }

    #[test]
    fn instances_come_from_the_declared_lists_only() {
        let declared = declared();
        let it = |id, params| planned(id, params, Some(&declared));
        assert_eq!(
            it(
                runbook::RESTART_UNIT,
                json!({"unit": "pacs-bridge.service"})
            ),
            Ok(Instance::Restart("pacs-bridge".into()))
        );
        assert_eq!(
            it(runbook::RESTORE_FIREWALL, json!({})),
            Ok(Instance::RestoreFirewall)
        );
        assert_eq!(
            it(runbook::RUN_BACKUP, json!({"job": "ehr"})),
            Ok(Instance::Backup("ehr".into()))
        );
        assert_eq!(
            it(
                runbook::SWITCH_GENERATION,
                json!({"generation": 12, "reboot": true})
            ),
            Ok(Instance::BootGeneration(12))
        );
        assert_eq!(
            it(runbook::SWITCH_GENERATION, json!({"generation": 12})),
            Ok(Instance::SwitchGeneration(12))
        );
        let not_declared = it(runbook::RESTART_UNIT, json!({"unit": "sshd.service"})).unwrap_err();
        assert!(
            not_declared.contains("not in declared.json"),
            "{not_declared}"
        );
        assert!(it(runbook::RUN_BACKUP, json!({"job": "photos"})).is_err());
        assert!(
            it(runbook::REFRESH_AV_SIGNATURES, json!({}))
                .unwrap_err()
                .contains("no antivirus")
        );
        // Without a declared heal section nothing is healable.
        assert!(planned(runbook::RESTORE_FIREWALL, json!({}), None).is_err());
    }

    #[test]
    fn unit_names_with_path_or_template_characters_never_reach_a_plan() {
        let runbook = runbooks::find(runbook::RESTART_UNIT).unwrap();
        for bad in [
            "../pacs-bridge.service",
            "a/b.service",
            "getty@tty1.service",
            "-x.service",
            "x\n.service",
        ] {
            let err = runbooks::validate_params(runbook, &json!({"unit": bad})).unwrap_err();
            assert!(
                matches!(err, ParamError::Invalid { name: "unit", .. }),
                "{bad:?}: {err}"
            );
            // The message names the parameter, never the text that was sent.
            assert!(!err.to_string().contains(bad), "{err}");
        }
        let err = runbooks::validate_params(runbook, &json!({"unit": "x.service", "shell": "rm"}))
            .unwrap_err();
        assert!(matches!(err, ParamError::Unknown { .. }), "{err}");
        assert!(runbooks::validate_params(runbook, &json!({})).is_err());
        let switch = runbooks::find(runbook::SWITCH_GENERATION).unwrap();
        for bad in [
            json!({"generation": 0}),
            json!({"generation": 1_000_000_000u64}),
            json!({"generation": "3"}),
        ] {
            assert!(runbooks::validate_params(switch, &bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_dry_run_says_what_it_would_do() {
        let runbook = runbooks::find(runbook::SWITCH_GENERATION).unwrap();
        let params =
            runbooks::validate_params(runbook, &json!({"generation": 7, "reboot": true})).unwrap();
        let text = describe(runbook, &params).unwrap();
        assert!(
            text.contains("generation 7 (as the boot default, then a reboot)"),
            "{text}"
        );
        assert!(text.contains("and escalate"), "{text}");
        assert!(describe(runbooks::find(runbook::RUN_CHECKS).unwrap(), &params).is_none());
    }
}
