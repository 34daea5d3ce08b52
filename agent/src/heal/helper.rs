//! The root side of healing: `msp-compliance-agent heal-unit <instance>`, run only as the
//! `ExecStart` of the root oneshot template `msp-compliance-heal@.service`.
//!
//! It trusts nothing the agent user can write. The instance name comes from the unit name
//! (which polkit let the agent start), must parse as an [`Instance`], and every unit or job it
//! names must be listed in the generation's declared.json (root-owned, from the Nix store on
//! NixOS). Commands are fixed argument vectors; the pre-state each action may need for its
//! rollback is kept in the helper's own state directory (root, 0700), never handed to the agent
//! and back. The result is one JSON document, written atomically to
//! `<result_dir>/<instance>.json` (0640, group of the directory), with the unit's
//! `$INVOCATION_ID`, so the agent can tell this run's result from an older one.
//!
//! Exit status: 0 the action succeeded, 1 it failed (the JSON says why), 2 the instance or the
//! host was refused before anything ran.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::facts::command::{CommandSource, DEFAULT_SEARCH_PATH, Invocation, Limits};
use crate::facts::declared::{self, Declared, DeclaredHeal};
use crate::heal::instance::{Instance, MAX_GENERATION};

/// Format version of the helper's result document.
pub const REPORT_VERSION: u32 = 1;

/// Where the heal units write their results (the agent reads them there).
pub const RESULT_DIR: &str = "/run/msp-compliance/heal";

/// The helper's own state (pre-state snapshots for rollbacks).
pub const STATE_DIR: &str = "/var/lib/msp-compliance-heal";

/// The Nix profiles directory holding `system` and `system-<n>-link`.
pub const PROFILES_DIR: &str = "/nix/var/nix/profiles";

/// Longest a single command of the helper may run (a backup job or a switch can be long; the
/// unit's own `TimeoutStartSec` bounds the whole run).
const COMMAND_TIMEOUT: Duration = Duration::from_secs(280);

/// Most stderr kept per step in the result.
const STDERR_EXCERPT_BYTES: usize = 2048;

/// Where the helper reads and writes. The unit runs it with the defaults; tests point it at a
/// scratch tree.
#[derive(Clone, Debug)]
pub struct HelperPaths {
    /// The generation's declared.json.
    pub declared: PathBuf,
    /// Where results go.
    pub result_dir: PathBuf,
    /// Pre-state snapshots.
    pub state_dir: PathBuf,
    /// Nix profiles (`system`, `system-<n>-link`).
    pub profiles: PathBuf,
    /// Act on the live system: `switch-to-configuration` as a transient unit (`systemd-run`)
    /// and a real reboot for `boot-generation`. Tests of the profile logic set it false: the
    /// activation runs directly and the reboot is recorded as skipped, never performed.
    pub live: bool,
}

impl Default for HelperPaths {
    fn default() -> HelperPaths {
        HelperPaths {
            declared: PathBuf::from("/etc/msp-compliance/declared.json"),
            result_dir: PathBuf::from(RESULT_DIR),
            state_dir: PathBuf::from(STATE_DIR),
            profiles: PathBuf::from(PROFILES_DIR),
            live: true,
        }
    }
}

/// The result document of one helper run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HelperReport {
    /// [`REPORT_VERSION`].
    pub v: u32,
    /// The instance, as the unit name gave it (only instances that parse get a report file).
    pub instance: String,
    /// systemd's `$INVOCATION_ID` of the run (empty outside systemd).
    pub invocation_id: String,
    /// When the helper started.
    pub started_at: Timestamp,
    /// When it finished.
    pub finished_at: Timestamp,
    /// The action succeeded.
    pub ok: bool,
    /// One sentence on what happened.
    pub detail: String,
    /// The commands run, in order.
    pub steps: Vec<Step>,
    /// What the helper saw before acting (unit state, previous generation), for evidence.
    pub pre_state: Value,
}

/// One command the helper ran.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Step {
    /// Its argument vector.
    pub argv: Vec<String>,
    /// Its exit status (-1: killed, or it could not run).
    pub exit: i32,
    /// The start of its stderr (or why it could not run).
    pub stderr: String,
}

/// Why the helper refused to act.
#[derive(Debug, thiserror::Error)]
pub enum HelperError {
    /// The instance is outside the grammar.
    #[error(transparent)]
    Instance(#[from] crate::heal::instance::NotAnInstance),
    /// declared.json is missing or invalid.
    #[error("declared state {path}: {message}")]
    Declared { path: PathBuf, message: String },
    /// The generation does not declare what the instance names.
    #[error("{0}")]
    NotDeclared(String),
    /// The result could not be written.
    #[error("writing {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Runs one instance as root and writes its report. Refusals (exit 2) write no report: there is
/// no instance name that could safely be a file name.
pub fn run(instance_text: &str, paths: &HelperPaths) -> Result<HelperReport, HelperError> {
    let instance = Instance::parse(instance_text)?;
    let started_at = Timestamp::now();
    let mut helper = Helper {
        paths,
        commands: CommandSource::Live(Limits {
            timeout: COMMAND_TIMEOUT,
            max_output: 8 << 20,
            search_path: DEFAULT_SEARCH_PATH.iter().map(PathBuf::from).collect(),
        }),
        steps: Vec::new(),
        pre_state: Value::Null,
    };
    let outcome = helper.perform(&instance)?;
    let reboot = outcome.is_ok() && matches!(instance, Instance::BootGeneration(_));
    let mut report = HelperReport {
        v: REPORT_VERSION,
        instance: instance.to_string(),
        invocation_id: std::env::var("INVOCATION_ID").unwrap_or_default(),
        started_at,
        finished_at: Timestamp::now(),
        ok: outcome.is_ok(),
        detail: match outcome {
            Ok(detail) | Err(detail) => detail,
        },
        steps: std::mem::take(&mut helper.steps),
        pre_state: helper.pre_state.clone(),
    };
    write_report(&paths.result_dir, &report)?;
    if reboot {
        // The report is on disk first: the reboot stops this unit, and the agent (or the agent
        // after the reboot) must find what was done. `--no-block` queues the reboot and
        // returns, so a refusal is still reported.
        let rebooted = if paths.live {
            helper.command("systemctl", &["reboot", "--no-block"])
        } else {
            helper.steps.push(Step {
                argv: vec!["systemctl".into(), "reboot".into(), "--no-block".into()],
                exit: 0,
                stderr: "not performed: the helper is not live (a test)".into(),
            });
            Ok(())
        };
        if let Err(detail) = rebooted {
            report.ok = false;
            report.detail = format!("{}; but the reboot was refused: {detail}", report.detail);
        }
        // Written again with the reboot step (atomically: a shutdown racing this leaves the
        // first report, which already says the boot default is set).
        report.steps.append(&mut helper.steps);
        report.finished_at = Timestamp::now();
        write_report(&paths.result_dir, &report)?;
    }
    Ok(report)
}

struct Helper<'a> {
    paths: &'a HelperPaths,
    commands: CommandSource,
    steps: Vec<Step>,
    pre_state: Value,
}

/// What an action ended with: `Ok(detail)` or `Err(detail)`; either way a report is written.
type Outcome = Result<String, String>;

/// What `switch-to-configuration` is asked for.
#[derive(Clone, Copy)]
enum Goal {
    /// Activate now and make it the boot default.
    Switch,
    /// Only make it the boot default (activated by the reboot that follows).
    Boot,
}

impl Helper<'_> {
    fn perform(&mut self, instance: &Instance) -> Result<Outcome, HelperError> {
        match instance {
            Instance::Restart(stem) => {
                let unit = self.declared_restartable(stem)?;
                let pre = self.unit_state(&unit);
                self.pre_state = json!({ "unit": unit, "state": pre });
                self.save(&format!("restart-{stem}.pre.json"), &pre.to_string())?;
                Ok(self
                    .command("systemctl", &["restart", "--", &unit])
                    .map(|()| format!("restarted {unit}")))
            }
            Instance::RollbackRestart(stem) => {
                let unit = self.declared_restartable(stem)?;
                let pre: Value = self
                    .load(&format!("restart-{stem}.pre.json"))
                    .and_then(|it| serde_json::from_str(&it).ok())
                    .unwrap_or(Value::Null);
                self.pre_state = json!({ "unit": unit, "state_before_heal": pre });
                let was_active = pre["ActiveState"] == "active";
                // Back to what it was: a unit that was not running before the heal is stopped,
                // so a failed restart does not leave it flapping; one that was running is
                // started again, the best this side can do for it.
                let verb = if was_active { "restart" } else { "stop" };
                Ok(self
                    .command("systemctl", &[verb, "--", &unit])
                    .map(|()| format!("{unit}: {verb} (state before the heal)")))
            }
            Instance::RestoreFirewall => {
                let unit = self.declared_unit(|it| it.firewall_unit, "no firewall unit")?;
                match self.capture("nft", &["list", "ruleset"]) {
                    Ok(ruleset) => {
                        self.save("firewall.pre.nft", &ruleset)?;
                        self.pre_state =
                            json!({ "unit": unit, "ruleset_lines": ruleset.lines().count() });
                    }
                    Err(detail) => return Ok(Err(detail)),
                }
                Ok(self
                    .command("systemctl", &["restart", "--", &unit])
                    .map(|()| format!("reloaded the generation's firewall ({unit})")))
            }
            Instance::RollbackFirewall => {
                let Some(snapshot) = self.load("firewall.pre.nft") else {
                    return Ok(Err("no firewall snapshot to roll back to".to_string()));
                };
                // One transaction: flush and the old ruleset load together or not at all.
                let file = self.save(
                    "firewall.rollback.nft",
                    &format!("flush ruleset\n{snapshot}"),
                )?;
                self.pre_state = json!({ "snapshot_lines": snapshot.lines().count() });
                let file = file.display().to_string();
                Ok(self
                    .command("nft", &["-f", &file])
                    .map(|()| "loaded the ruleset from before the restore".to_string()))
            }
            Instance::RefreshAv => {
                let unit = self.declared_unit(|it| it.av_update_unit, "no AV update unit")?;
                Ok(self
                    .command("systemctl", &["start", "--", &unit])
                    .map(|()| format!("ran {unit}")))
            }
            Instance::Backup(job) => {
                let unit = self.declared_unit(
                    |mut it| it.backup_units.remove(job),
                    &format!("no backup job {job}"),
                )?;
                Ok(self
                    .command("systemctl", &["start", "--", &unit])
                    .map(|()| format!("ran backup job {job} ({unit})")))
            }
            Instance::ReactivateGeneration => {
                let current = self.current_generation()?;
                self.pre_state = json!({ "generation": current });
                self.save("generation.pre", &current.to_string())?;
                Ok(self.activate(current, Goal::Switch))
            }
            Instance::SwitchGeneration(target) | Instance::BootGeneration(target) => {
                let current = self.current_generation()?;
                self.pre_state = json!({ "generation": current });
                if !self
                    .generation_link(*target)
                    .join("bin/switch-to-configuration")
                    .is_file()
                {
                    return Ok(Err(format!(
                        "generation {target} is not in the system profile (no system-{target}-link with a switch-to-configuration)"
                    )));
                }
                self.save("generation.pre", &current.to_string())?;
                let goal = if matches!(instance, Instance::BootGeneration(_)) {
                    Goal::Boot
                } else {
                    Goal::Switch
                };
                Ok(self
                    .point_profile(*target)
                    .and_then(|_| self.activate(*target, goal)))
            }
            Instance::RollbackGeneration => {
                let previous = self
                    .load("generation.pre")
                    .and_then(|it| it.trim().parse::<u32>().ok())
                    .filter(|it| (1..=MAX_GENERATION).contains(it));
                let Some(previous) = previous else {
                    return Ok(Err(
                        "no previous generation recorded to roll back to".to_string()
                    ));
                };
                let current = self.current_generation()?;
                self.pre_state = json!({ "generation": current, "rolling_back_to": previous });
                Ok(self
                    .point_profile(previous)
                    .and_then(|_| self.activate(previous, Goal::Switch)))
            }
        }
    }

    fn declared(&self) -> Result<Declared, HelperError> {
        let path = &self.paths.declared;
        let bytes = std::fs::read(path).map_err(|err| HelperError::Declared {
            path: path.clone(),
            message: err.to_string(),
        })?;
        declared::parse(path, &bytes).map_err(|err| HelperError::Declared {
            path: path.clone(),
            message: err.to_string(),
        })
    }

    fn declared_heal(&self) -> Result<DeclaredHeal, HelperError> {
        self.declared()?
            .heal
            .ok_or_else(|| HelperError::NotDeclared("declared.json has no heal section".into()))
    }

    /// The unit the declared heal section names for an action (`pick`), if it is a plain
    /// `<name>.service`; `missing` completes "declared.json has …" otherwise.
    fn declared_unit(
        &self,
        pick: impl FnOnce(DeclaredHeal) -> Option<String>,
        missing: &str,
    ) -> Result<String, HelperError> {
        pick(self.declared_heal()?)
            .filter(|it| crate::heal::instance::service_stem(it).is_ok())
            .ok_or_else(|| HelperError::NotDeclared(format!("declared.json has {missing}")))
    }

    /// `<stem>.service`, if the generation lists it as restartable.
    fn declared_restartable(&self, stem: &str) -> Result<String, HelperError> {
        let unit = format!("{stem}.service");
        if self.declared_heal()?.restartable_units.contains(&unit) {
            Ok(unit)
        } else {
            Err(HelperError::NotDeclared(format!(
                "{unit} is not in declared.json's heal.restartableUnits"
            )))
        }
    }

    fn unit_state(&mut self, unit: &str) -> Value {
        match self.capture(
            "systemctl",
            &["show", "--property=ActiveState,SubState,Result", "--", unit],
        ) {
            Ok(text) => crate::heal::systemd::parse_show(&text),
            Err(detail) => json!({ "error": detail }),
        }
    }

    /// Runs a command; `Err(detail)` when it could not run or exited non-zero.
    fn command(&mut self, program: &str, args: &[&str]) -> Result<(), String> {
        self.capture(program, args).map(|_| ())
    }

    /// Runs a command and returns its stdout; every run is a step of the report.
    fn capture(&mut self, program: &str, args: &[&str]) -> Outcome {
        let invocation = Invocation::new(program, program, args);
        let mut argv = vec![program.to_string()];
        argv.extend(args.iter().map(|it| it.to_string()));
        match self.commands.run(&invocation) {
            Ok(output) => {
                let stderr = excerpt(&output.stderr);
                self.steps.push(Step {
                    argv,
                    exit: output.status,
                    stderr: stderr.clone(),
                });
                if output.status == 0 {
                    Ok(output.stdout_text())
                } else {
                    Err(format!(
                        "{} exited {}: {}",
                        invocation.display(),
                        output.status,
                        stderr.trim()
                    ))
                }
            }
            Err(err) => {
                self.steps.push(Step {
                    argv,
                    exit: -1,
                    stderr: err.to_string(),
                });
                Err(err.to_string())
            }
        }
    }

    fn generation_link(&self, number: u32) -> PathBuf {
        self.paths.profiles.join(format!("system-{number}-link"))
    }

    /// The generation the `system` profile points at (`system-<n>-link`).
    fn current_generation(&self) -> Result<u32, HelperError> {
        let link = self.paths.profiles.join("system");
        let target = std::fs::read_link(&link).map_err(|err| {
            HelperError::NotDeclared(format!(
                "{} is not a system profile ({err}): generations exist only on NixOS",
                link.display()
            ))
        })?;
        target
            .to_str()
            .and_then(|it| it.strip_prefix("system-"))
            .and_then(|it| it.strip_suffix("-link"))
            .and_then(|it| it.parse::<u32>().ok())
            .ok_or_else(|| {
                HelperError::NotDeclared(format!(
                    "{} points at {}, not at a system-<n>-link",
                    link.display(),
                    target.display()
                ))
            })
    }

    /// Points `system` at `system-<n>-link` atomically (a new link renamed over the old one),
    /// as `nix-env --switch-generation` does.
    fn point_profile(&mut self, number: u32) -> Outcome {
        let temporary = self.paths.profiles.join(".system.msp-compliance-heal");
        let _ = std::fs::remove_file(&temporary);
        let result = std::os::unix::fs::symlink(format!("system-{number}-link"), &temporary)
            .and_then(|()| std::fs::rename(&temporary, self.paths.profiles.join("system")))
            .and_then(|()| std::fs::File::open(&self.paths.profiles)?.sync_all());
        self.steps.push(Step {
            argv: vec![
                "set-profile".to_string(),
                self.paths.profiles.join("system").display().to_string(),
                format!("system-{number}-link"),
            ],
            exit: i32::from(result.is_err()),
            stderr: result
                .as_ref()
                .err()
                .map(|it| it.to_string())
                .unwrap_or_default(),
        });
        result
            .map(|()| format!("system profile now points at generation {number}"))
            .map_err(|err| {
                format!("could not point the system profile at generation {number}: {err}")
            })
    }

    /// Runs the generation's `switch-to-configuration` as its own transient unit, as
    /// `nixos-rebuild` does: outside this unit's sandbox (mounts the activation makes, homes it
    /// creates) and outside its timeout, so a long activation is never killed half-way.
    fn activate(&mut self, number: u32, goal: Goal) -> Outcome {
        let program = self
            .generation_link(number)
            .join("bin/switch-to-configuration")
            .display()
            .to_string();
        let verb = match goal {
            Goal::Switch => "switch",
            Goal::Boot => "boot",
        };
        let ran = if self.paths.live {
            self.command(
                "systemd-run",
                &[
                    "--collect",
                    "--no-ask-password",
                    "--pipe",
                    "--quiet",
                    "--wait",
                    "--service-type=exec",
                    "--unit=msp-compliance-switch-to-configuration",
                    "--",
                    &program,
                    verb,
                ],
            )
        } else {
            self.command(&program, &[verb])
        };
        ran.map(|()| match goal {
            Goal::Switch => format!("switched to generation {number}"),
            Goal::Boot => format!("generation {number} is the boot default; rebooting into it"),
        })
    }

    /// Writes a state file (0600) and returns its path.
    fn save(&self, name: &str, contents: &str) -> Result<PathBuf, HelperError> {
        let path = self.paths.state_dir.join(name);
        write_atomic(&path, contents.as_bytes(), 0o600).map_err(|source| HelperError::Write {
            path: path.clone(),
            source,
        })?;
        Ok(path)
    }

    fn load(&self, name: &str) -> Option<String> {
        std::fs::read_to_string(self.paths.state_dir.join(name)).ok()
    }
}

fn excerpt(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(&bytes[..bytes.len().min(STDERR_EXCERPT_BYTES)]);
    text.into_owned()
}

fn write_report(dir: &Path, report: &HelperReport) -> Result<(), HelperError> {
    let path = dir.join(format!("{}.json", report.instance));
    // A struct of strings, numbers and JSON values always serializes.
    let bytes = serde_json::to_vec(report).unwrap_or_default();
    write_atomic(&path, &bytes, 0o640).map_err(|source| HelperError::Write { path, source })
}

/// Temporary file, fsync, rename, directory fsync: a reader sees the old file or the new one.
fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|it| it.to_string_lossy())
        .unwrap_or_default();
    let temporary = dir.join(format!(".{name}.tmp"));
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&temporary)?;
    file.set_permissions(std::fs::Permissions::from_mode(mode))?;
    file.write_all(bytes)?;
    file.sync_all()?;
    drop(file);
    std::fs::rename(&temporary, path)?;
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;

    use super::*;

    /// A scratch tree: a profiles directory with generations whose `switch-to-configuration`
    /// is a real script (it logs its generation and exits with the given status), shaped like
    /// NixOS's `/nix/var/nix/profiles`.
    fn tree(generations: &[(u32, i32)]) -> (tempfile::TempDir, HelperPaths) {
        let dir = tempfile::tempdir().unwrap();
        let paths = HelperPaths {
            declared: dir.path().join("declared.json"),
            result_dir: dir.path().join("results"),
            state_dir: dir.path().join("state"),
            profiles: dir.path().join("profiles"),
            live: false,
        };
        for it in [&paths.result_dir, &paths.state_dir, &paths.profiles] {
            std::fs::create_dir_all(it).unwrap();
        }
        let log = dir.path().join("switch.log");
        for (number, status) in generations {
            let toplevel = dir.path().join(format!("store/system-{number}"));
            std::fs::create_dir_all(toplevel.join("bin")).unwrap();
            let script = toplevel.join("bin/switch-to-configuration");
            std::fs::write(
                &script,
                format!(
                    "#!/bin/sh\necho \"{number} $1\" >> {}\nexit {status}\n",
                    log.display()
                ),
            )
            .unwrap();
            std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
            symlink(
                &toplevel,
                paths.profiles.join(format!("system-{number}-link")),
            )
            .unwrap();
        }
        symlink("system-2-link", paths.profiles.join("system")).unwrap();
        (dir, paths)
    }

    fn profile(paths: &HelperPaths) -> String {
        std::fs::read_link(paths.profiles.join("system"))
            .unwrap()
            .display()
            .to_string()
    }

    #[test]
    fn a_generation_switch_that_fails_is_rolled_back_to_the_previous_one() {
        let (dir, paths) = tree(&[(2, 0), (3, 1)]);
        let report = run("switch-generation-3", &paths).unwrap();
        assert!(!report.ok, "{report:?}");
        assert_eq!(profile(&paths), "system-3-link");
        assert_eq!(report.pre_state["generation"], 2);
        assert!(report.detail.contains("exited 1"), "{}", report.detail);
        // The report is on disk for the agent, readable by its group only.
        let written: HelperReport = serde_json::from_slice(
            &std::fs::read(paths.result_dir.join("switch-generation-3.json")).unwrap(),
        )
        .unwrap();
        assert_eq!(written, report);
        let mode = std::fs::metadata(paths.result_dir.join("switch-generation-3.json"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o640);

        let report = run("rollback-generation", &paths).unwrap();
        assert!(report.ok, "{report:?}");
        assert_eq!(profile(&paths), "system-2-link");
        let log = std::fs::read_to_string(dir.path().join("switch.log")).unwrap();
        assert_eq!(log, "3 switch\n2 switch\n");
    }

    #[test]
    fn a_missing_generation_is_not_switched_to() {
        let (_dir, paths) = tree(&[(2, 0)]);
        let report = run("switch-generation-7", &paths).unwrap();
        assert!(!report.ok);
        assert_eq!(profile(&paths), "system-2-link");
        assert!(
            report.detail.contains("not in the system profile"),
            "{}",
            report.detail
        );
        // Nothing recorded to roll back to: a rollback now refuses rather than guessing.
        let report = run("rollback-generation", &paths).unwrap();
        assert!(!report.ok);
        assert_eq!(profile(&paths), "system-2-link");
    }

    #[test]
    fn instances_outside_the_grammar_or_the_declared_state_are_refused_without_a_report() {
        let (_dir, paths) = tree(&[(2, 0)]);
        assert!(matches!(
            run("restart-../../etc/passwd", &paths),
            Err(HelperError::Instance(_))
        ));
        // No declared.json: nothing is restartable.
        assert!(matches!(
            run("restart-sshd", &paths),
            Err(HelperError::Declared { .. })
        ));
        // The NixOS module's own rendering (its `full` golden case), so the helper is tested
        // against what the module really writes.
        let declared =
            include_str!("../../../nix/tests/golden/full/etc/msp-compliance/declared.json");
        std::fs::write(&paths.declared, declared).unwrap();
        let err = run("restart-sshd", &paths).unwrap_err();
        assert!(err.to_string().contains("not in declared.json"), "{err}");
        assert!(matches!(
            run("backup-photos", &paths),
            Err(HelperError::NotDeclared(_))
        ));
        assert_eq!(std::fs::read_dir(&paths.result_dir).unwrap().count(), 0);
    }

    #[test]
    fn a_boot_generation_sets_the_profile_and_the_boot_default_then_asks_for_a_reboot() {
        let (dir, paths) = tree(&[(2, 0), (3, 0)]);
        let report = run("boot-generation-3", &paths).unwrap();
        assert!(report.ok, "{report:?}");
        assert_eq!(profile(&paths), "system-3-link");
        let log = std::fs::read_to_string(dir.path().join("switch.log")).unwrap();
        assert_eq!(log, "3 boot\n");
        let last = report.steps.last().unwrap();
        assert_eq!(last.argv, ["systemctl", "reboot", "--no-block"]);
        assert!(last.stderr.contains("not performed"));
        // Its rollback switches back live.
        let report = run("rollback-generation", &paths).unwrap();
        assert!(report.ok, "{report:?}");
        assert_eq!(profile(&paths), "system-2-link");
    }
}
