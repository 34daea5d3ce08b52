//! The backup check: does every backup job have a recent complete backup and a recent passing
//! restore test (`research/checks.md` §3).
//!
//! It owns the backup facts: the jobs (declared by the NixOS generation, or configured by hand
//! on other hosts), their newest snapshots or archives, the state of their systemd units, and
//! the restore-test records. It only reads: it never runs a backup, never unlocks, prunes or
//! checks a repository, and never reads a repository password (restic and borg read their own
//! password files, through the privileged probe).
//!
//! Two files in the agent's state directory (under the root prefix) are part of its interface:
//!
//! - `<state_dir>/backup/<job>.json`: the output of `restic snapshots --json` (or of
//!   `borg list --json`) for the job's repository, written by the backup unit itself
//!   (`ExecStartPost` added by the agent's NixOS module), so the agent needs no credentials.
//!   When it exists it is the source of snapshot facts; otherwise the check asks the probe.
//! - `<state_dir>/restore-tests/<job>.json`: the record of the job's last restore test, written
//!   by the restore-test runbook:
//!   `{"job": "<job>", "finished_at": "<RFC 3339>", "ok": true, "files_checked": <n>, "duration_ms": <n>}`.
//!   `job` must name the job, `finished_at` is when the test ended, `ok` says whether every
//!   restored file matched its expected SHA-256, `files_checked` how many files were compared
//!   (a test that compared none proves nothing), `duration_ms` how long the restore took (the
//!   measured RTO). Further fields are allowed and ignored.

use std::path::{Path, PathBuf};

use jiff::Timestamp;
use jiff::civil::DateTime;
use jiff::tz::TimeZone;
use msp_compliance_protocol::finding::{SafetyClass, Status};
use msp_compliance_protocol::ids::{check, hipaa};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::baseline::{BackupPolicy, Baseline};
use crate::checks::{CLOCK_SKEW_SECONDS, Check, Judgement, format_age, grade};
use crate::facts::command::Invocation;
use crate::facts::declared::{BackupTool, DeclaredBackupJob};
use crate::facts::probe::{self, Probe};
use crate::facts::systemd::{self, Properties, property};
use crate::facts::{DeclaredState, FactError, Host};

/// Largest status file read: a `restic snapshots --json` of thousands of snapshots fits.
const STATUS_FILE_LIMIT: u64 = 16 * 1024 * 1024;
/// Largest restore-test record read.
const RESTORE_TEST_LIMIT: u64 = 64 * 1024;
/// Where the host's name is read, to pick this host's snapshots from a shared repository.
const HOSTNAME_FILES: [&str; 2] = ["/proc/sys/kernel/hostname", "/etc/hostname"];
/// Unit properties read for a job's service and timer.
const UNIT_PROPERTIES: &str =
    "--property=Id,LoadState,ActiveState,UnitFileState,Result,ExecMainStatus,ExecMainExitTimestamp";
/// Newest backups listed in the evidence.
const EVIDENCE_POINTS: usize = 3;

/// The backup check.
///
/// Facts read, per job:
/// - the newest snapshot (restic: `summary.backup_end`, else `time`) or archive (borg: `time`),
///   from the job's status file, else from the repository through the probe
///   (`restic snapshots --json` / `borg list --json --last 1`);
/// - `systemctl show <service> <timer>` (record `systemctl-show-restic-backups-<job>` or
///   `systemctl-show-borgbackup-job-<job>`): the last run's `Result`, `ExecMainStatus`,
///   `ExecMainExitTimestamp`, and whether the timer is active;
/// - the restore-test record (see the module documentation).
///
/// Thresholds (baseline `checks.backup`): newest complete backup `pass` up to `rpo_warn_hours`
/// (26 h: a daily job plus slack), `warn` up to `rpo_fail_hours` (48 h, the proposed HIPAA
/// clock), `fail` beyond; a restore test older than `restore_test_max_age_days` (90 d) or failed
/// is a `fail`; `required` makes "no job at all" a fail. An incomplete last run (restic exit 3,
/// borg warnings, a borg checkpoint) is a `warn`: one run of `systemctl show` sees one run, so
/// `incomplete_fail_consecutive` needs the journal and is not evaluated yet.
///
/// Why an auditor accepts this: 164.308(a)(7)(ii)(A) asks for retrievable exact copies of ePHI.
/// The age comes from the repository itself (the time restic or borg recorded in the snapshot),
/// not from a log line or a unit state that a reboot erases, and it is judged per job and per
/// host; (D) asks that restores are tested, which the restore-test record shows with its date,
/// outcome and the number of files compared.
pub struct Backup;

/// What [`Backup`] observed.
pub struct Observation {
    /// declared.json exists but is invalid: its jobs are unknown.
    declared_error: Option<String>,
    /// The host has a valid declared.json (NixOS).
    nixos: bool,
    /// This host's name, to pick its own restic snapshots.
    hostname: Option<String>,
    /// One entry per job.
    jobs: Vec<JobObservation>,
}

/// Facts of one backup job.
struct JobObservation {
    job: DeclaredBackupJob,
    origin: Origin,
    /// Where the snapshot facts came from (a status file or the probe), for messages.
    source: String,
    /// The job's snapshots or archives.
    points: Result<Vec<BackupPoint>, FactError>,
    /// `systemctl show` of the job's service and timer.
    units: Result<Vec<Properties>, FactError>,
    /// The restore-test record and its path.
    restore_test_path: PathBuf,
    restore_test: Result<RestoreTest, FactError>,
}

/// Where a job is defined.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Origin {
    /// The agent configuration (`backup_jobs`, hosts without declared.json).
    Configured,
    /// declared.json (`services.restic.backups` / `services.borgbackup.jobs`).
    Declared,
}

/// One restic snapshot or borg archive.
#[derive(Clone, Debug)]
struct BackupPoint {
    id: String,
    /// `short_id` or the archive name.
    label: String,
    /// When the backup ended (restic ≥ 0.17 `summary.backup_end`), else when it started.
    finished_at: Timestamp,
    hostname: Option<String>,
    paths: Vec<String>,
    /// A borg `.checkpoint` archive: an interrupted run.
    incomplete: bool,
}

/// The last restore test of a job.
struct RestoreTest {
    finished_at: Timestamp,
    ok: bool,
    files_checked: u64,
    duration_ms: u64,
}

/// The state of a job's service unit.
enum UnitView<'a> {
    Unreadable(&'a FactError),
    NotLoaded(&'a str),
    NeverRan,
    Ran {
        status: i64,
        result: &'a str,
        exited_at: &'a str,
        running: bool,
    },
}

impl Check for Backup {
    type Observation = Observation;

    fn id(&self) -> &'static str {
        check::BACKUP
    }

    fn controls(&self) -> &'static [&'static str] {
        &[
            hipaa::DATA_BACKUP_PLAN,
            hipaa::DISASTER_RECOVERY,
            hipaa::TESTING_AND_REVISION,
        ]
    }

    fn observe(&self, host: &Host, _baseline: &Baseline) -> Observation {
        let (declared_jobs, declared_error, nixos) = match host.declared() {
            DeclaredState::Absent => (Vec::new(), None, false),
            DeclaredState::Invalid(err) => (Vec::new(), Some(err.clone()), false),
            DeclaredState::Present(it) => (it.backups.clone(), None, true),
        };
        let mut jobs: Vec<(DeclaredBackupJob, Origin)> = declared_jobs
            .into_iter()
            .map(|it| (it, Origin::Declared))
            .collect();
        for job in &host.paths.backup_jobs {
            if !jobs
                .iter()
                .any(|(it, _)| it.name == job.name && it.tool == job.tool)
            {
                jobs.push((job.clone(), Origin::Configured));
            }
        }
        let hostname = HOSTNAME_FILES
            .iter()
            .filter_map(|it| host.root.read_text(Path::new(it)).ok())
            .map(|it| it.trim().to_string())
            .find(|it| !it.is_empty());
        let jobs = jobs
            .into_iter()
            .map(|(job, origin)| observe_job(host, job, origin))
            .collect();
        Observation {
            declared_error,
            nixos,
            hostname,
            jobs,
        }
    }

    fn judge(&self, obs: &Observation, baseline: &Baseline, now: Timestamp) -> Judgement {
        let policy = &baseline.policy().checks.backup;
        let mut judgement = Judgement::new(observed(obs), expected(policy));
        judge_jobs(&mut judgement, obs, policy);
        for job in &obs.jobs {
            judge_rpo(&mut judgement, job, obs.hostname.as_deref(), policy, now);
            judge_last_run(&mut judgement, job);
            judge_incomplete(&mut judgement, job, obs.hostname.as_deref());
            judge_timer(&mut judgement, job);
            judge_restore_test(&mut judgement, job, policy, now);
        }
        judgement
    }
}

fn observe_job(host: &Host, job: DeclaredBackupJob, origin: Origin) -> JobObservation {
    let restore_test_path = host
        .paths
        .state_dir
        .join("restore-tests")
        .join(format!("{}.json", job.name));
    if let Err(err) = plain_name(&job.name) {
        // The name becomes a file name and a unit name: nothing is read for a name that could
        // escape the state directory.
        let (units, restore_test) = (
            Err(FactError::parse("backup job name", &err)),
            Err(FactError::parse("backup job name", &err)),
        );
        return JobObservation {
            job,
            origin,
            source: "nothing (invalid job name)".to_string(),
            points: Err(err),
            units,
            restore_test_path,
            restore_test,
        };
    }
    let status_path = host
        .paths
        .state_dir
        .join("backup")
        .join(format!("{}.json", job.name));
    let (source, points) = match host.root.read_bounded(&status_path, STATUS_FILE_LIMIT) {
        Ok(bytes) => {
            let what = status_path.display().to_string();
            (
                format!("status file {what}"),
                parse_points(job.tool, &bytes, &what),
            )
        }
        Err(err) if err.is_absent() => probe_points(host, &job),
        Err(err) => (format!("status file {}", status_path.display()), Err(err)),
    };
    let (service, timer) = unit_names(&job);
    let invocation = Invocation::new(
        format!("systemctl-show-{}", service.trim_end_matches(".service")),
        "systemctl",
        &["show", &service, &timer, UNIT_PROPERTIES],
    );
    let units = host
        .run(&invocation)
        .and_then(|out| out.success(&invocation))
        .and_then(|out| systemd::parse_show_units(&out.stdout_text()));
    let restore_test = host
        .root
        .read_bounded(&restore_test_path, RESTORE_TEST_LIMIT)
        .and_then(|bytes| {
            parse_restore_test(&bytes, &job.name, &restore_test_path.display().to_string())
        });
    JobObservation {
        job,
        origin,
        source,
        points,
        units,
        restore_test_path,
        restore_test,
    }
}

/// Asks the repository through the privileged probe (no status file).
fn probe_points(
    host: &Host,
    job: &DeclaredBackupJob,
) -> (String, Result<Vec<BackupPoint>, FactError>) {
    let repository = match (&job.repository, &job.repository_file) {
        (Some(it), _) => Ok(it.clone()),
        // The repository file holds a location, not a secret; an unreadable one is unknown.
        (None, Some(file)) => host.root.read_text(file).and_then(|text| {
            let text = text.trim().to_string();
            if text.is_empty() {
                Err(FactError::parse(
                    file.display().to_string(),
                    "empty repository file",
                ))
            } else {
                Ok(text)
            }
        }),
        (None, None) => Err(FactError::parse(
            format!("backup job {}", job.name),
            "no repository configured",
        )),
    };
    let (source, probe) = match job.tool {
        BackupTool::Restic => {
            let source = format!("restic snapshots (probe restic-snapshots.{})", job.name);
            let probe = repository.and_then(|repository| match &job.password_file {
                Some(password_file) => Ok(Probe::ResticSnapshots {
                    job: job.name.clone(),
                    repository,
                    password_file: password_file.clone(),
                }),
                None => Err(FactError::parse(
                    format!("backup job {}", job.name),
                    "no password file configured",
                )),
            });
            (source, probe)
        }
        BackupTool::Borg => {
            let source = format!("borg list (probe borg-list.{})", job.name);
            let probe = repository.map(|repository| Probe::BorgList {
                job: job.name.clone(),
                repository,
                passphrase_file: job.password_file.clone(),
            });
            (source, probe)
        }
    };
    let points = probe.and_then(|probe| {
        let out = host.probe(&probe)?;
        if out.status != 0 {
            // The command line names the repository; the message names the job instead.
            return Err(FactError::CommandFailed {
                command: format!("{} of backup job {}", source_tool(job.tool), job.name),
                status: out.status,
                stderr: out.stderr_excerpt(),
            });
        }
        parse_points(job.tool, &out.stdout, &source)
    });
    (source, points)
}

fn source_tool(tool: BackupTool) -> &'static str {
    match tool {
        BackupTool::Borg => "borg list --json",
        BackupTool::Restic => "restic snapshots --json",
    }
}

/// `restic-backups-<job>.{service,timer}` or `borgbackup-job-<job>.{service,timer}`.
fn unit_names(job: &DeclaredBackupJob) -> (String, String) {
    let base = match job.tool {
        BackupTool::Borg => format!("borgbackup-job-{}", job.name),
        BackupTool::Restic => format!("restic-backups-{}", job.name),
    };
    (format!("{base}.service"), format!("{base}.timer"))
}

fn judge_jobs(judgement: &mut Judgement, obs: &Observation, policy: &BackupPolicy) {
    let rule = "backup.jobs";
    if let Some(err) = &obs.declared_error {
        judgement.rule(
            rule,
            Status::Unknown,
            format!("declared.json is invalid, its backup jobs cannot be read: {err}"),
        );
        return;
    }
    if obs.jobs.is_empty() {
        if !policy.required {
            judgement.rule(
                rule,
                Status::NotApplicable,
                "no backup job; the baseline does not require one",
            );
        } else if obs.nixos {
            judgement.rule_with_fix(
                rule,
                Status::Fail,
                "no backup job declared or configured",
                "switch to the pinned generation that declares services.restic.backups.<name>",
                SafetyClass::Disruptive,
            );
        } else {
            judgement.rule_with_fix(
                rule,
                Status::Fail,
                "no backup job declared or configured",
                "set up a restic job with a timer and list it under backup_jobs in the agent configuration",
                SafetyClass::NeverAutomatic,
            );
        }
        return;
    }
    let names: Vec<String> = obs
        .jobs
        .iter()
        .map(|it| {
            let origin = if it.origin == Origin::Declared {
                "declared"
            } else {
                "configured"
            };
            format!("{} ({}, {origin})", it.job.name, tool_name(it.job.tool))
        })
        .collect();
    judgement.rule(
        rule,
        Status::Pass,
        format!("{} backup job(s): {}", names.len(), names.join(", ")),
    );
}

/// The points to judge: on a shared restic repository, this host's snapshots. `note` says when
/// no snapshot carries the host's name (a `--host` override, or another host's snapshots only).
fn own_points<'a>(
    job: &'a JobObservation,
    points: &'a [BackupPoint],
    hostname: Option<&str>,
) -> (Vec<&'a BackupPoint>, Option<String>) {
    let all: Vec<&BackupPoint> = points.iter().collect();
    let Some(hostname) = hostname else {
        return (all, None);
    };
    if job.job.tool != BackupTool::Restic || all.is_empty() {
        return (all, None);
    }
    let same = |other: &str| {
        other.eq_ignore_ascii_case(hostname)
            || other
                .split('.')
                .next()
                .is_some_and(|short| short.eq_ignore_ascii_case(hostname))
            || hostname
                .split('.')
                .next()
                .is_some_and(|short| short.eq_ignore_ascii_case(other))
    };
    let own: Vec<&BackupPoint> = all
        .iter()
        .copied()
        .filter(|it| it.hostname.as_deref().is_some_and(same))
        .collect();
    if own.is_empty() {
        let note = format!(
            "no snapshot carries this host's name {hostname:?}; all snapshots of the repository were judged"
        );
        return (all, Some(note));
    }
    (own, None)
}

fn newest<'a>(points: &[&'a BackupPoint], complete_only: bool) -> Option<&'a BackupPoint> {
    points
        .iter()
        .copied()
        .filter(|it| !complete_only || !it.incomplete)
        .max_by_key(|it| it.finished_at)
}

fn judge_rpo(
    judgement: &mut Judgement,
    job: &JobObservation,
    hostname: Option<&str>,
    policy: &BackupPolicy,
    now: Timestamp,
) {
    let rule = "backup.rpo";
    let name = &job.job.name;
    let (service, _) = unit_names(&job.job);
    let start = format!("systemctl start {service}");
    let points = match &job.points {
        Ok(it) => it,
        Err(err) => {
            judgement.rule(
                rule,
                Status::Unknown,
                format!(
                    "job {name}: {}: {}",
                    job.source,
                    redact_userinfo(&err.to_string())
                ),
            );
            return;
        }
    };
    if points.is_empty() {
        judgement.rule_with_fix(
            rule,
            Status::Fail,
            format!("job {name}: no snapshot in the repository ({})", job.source),
            start,
            SafetyClass::Safe,
        );
        return;
    }
    let (considered, note) = own_points(job, points, hostname);
    let Some(point) = newest(&considered, true) else {
        let label = newest(&considered, false)
            .map(|it| it.label.clone())
            .unwrap_or_default();
        judgement.rule_with_fix(
            rule,
            Status::Unknown,
            format!("job {name}: the newest archive {label} is a checkpoint (an interrupted run); no complete archive is listed"),
            start,
            SafetyClass::Safe,
        );
        return;
    };
    let age = now.as_second() - point.finished_at.as_second();
    let what = format!(
        "job {name}: newest {} {} finished {} ({} ago)",
        if job.job.tool == BackupTool::Borg {
            "archive"
        } else {
            "snapshot"
        },
        point.label,
        point.finished_at,
        format_age(age)
    );
    if age < -CLOCK_SKEW_SECONDS {
        judgement.rule(
            rule,
            Status::Unknown,
            format!("{what}: the time lies in the future (clock skew?)"),
        );
        return;
    }
    let mut status = grade(
        age,
        i64::from(policy.rpo_warn_hours) * 3_600,
        i64::from(policy.rpo_fail_hours) * 3_600,
    );
    let mut message = match status {
        Status::Warn => format!("{what}: older than {} h", policy.rpo_warn_hours),
        Status::Fail => format!("{what}: older than {} h", policy.rpo_fail_hours),
        _ => what,
    };
    if let Some(note) = note {
        // Another host's fresh snapshot must not pass for ours.
        if status == Status::Pass {
            status = Status::Warn;
        }
        message = format!("{message}; {note}");
    }
    if status == Status::Pass {
        judgement.rule(rule, Status::Pass, message);
    } else {
        judgement.rule_with_fix(rule, status, message, start, SafetyClass::Safe);
    }
}

fn unit_view<'a>(job: &'a JobObservation, unit: &str) -> UnitView<'a> {
    let units = match &job.units {
        Ok(it) => it,
        Err(err) => return UnitView::Unreadable(err),
    };
    let Some(properties) = units.iter().find(|it| property(it, "Id") == Some(unit)) else {
        return UnitView::NotLoaded("not-found");
    };
    // A property systemctl did not print reads like one it printed unset (`Key=`).
    let value = |key: &str| property(properties, key).unwrap_or_default();
    let load_state = value("LoadState");
    if !(load_state.is_empty() || load_state == "loaded") {
        return UnitView::NotLoaded(load_state);
    }
    let exited_at = value("ExecMainExitTimestamp");
    let running = matches!(
        value("ActiveState"),
        "activating" | "reloading" | "deactivating"
    );
    if exited_at.is_empty() || exited_at == "n/a" {
        return UnitView::NeverRan;
    }
    let status = value("ExecMainStatus").trim().parse::<i64>().unwrap_or(0);
    UnitView::Ran {
        status,
        result: value("Result"),
        exited_at,
        running,
    }
}

/// The rule result when the service state says nothing about the last run, `None` when it does.
///
/// Unit state is volatile and absent for hand-configured jobs, so its absence only makes the
/// rule `unknown` when the job is declared (its unit must exist) or when the snapshot facts are
/// unreadable too; otherwise the rule does not apply and `backup.rpo` is the control.
fn run_unseen(job: &JobObservation, view: &UnitView) -> Option<(Status, String)> {
    let (service, _) = unit_names(&job.job);
    let name = &job.job.name;
    let res = match view {
        UnitView::Ran { .. } => return None,
        UnitView::NeverRan => (
            Status::NotApplicable,
            format!(
                "job {name}: {service} has not run since boot; backup.rpo judges the snapshots"
            ),
        ),
        UnitView::NotLoaded(state) if job.origin == Origin::Declared => (
            Status::Unknown,
            format!("job {name}: {service} is {state} although the job is declared"),
        ),
        UnitView::NotLoaded(_) => (
            Status::NotApplicable,
            format!(
                "job {name}: hand-configured job without a {service} unit; its runs are not visible, backup.rpo judges the snapshots"
            ),
        ),
        UnitView::Unreadable(err) if job.points.is_ok() => (
            Status::NotApplicable,
            format!("job {name}: unit state unreadable ({err}); backup.rpo judges the snapshots"),
        ),
        UnitView::Unreadable(err) => (
            Status::Unknown,
            format!("job {name}: unit state unreadable: {err}"),
        ),
    };
    Some(res)
}

/// Exit statuses after which a backup exists but is not whole.
fn completed_with_warnings(tool: BackupTool, status: i64) -> bool {
    match tool {
        // restic 3: snapshot created, some source files could not be read.
        BackupTool::Restic => status == 3,
        // borg 1: warning (e.g. a file changed or vanished while read); 100–127: borg ≥ 1.4's
        // modern warning codes.
        BackupTool::Borg => status == 1 || (100..=127).contains(&status),
    }
}

fn exit_meaning(tool: BackupTool, status: i64) -> &'static str {
    match (tool, status) {
        (BackupTool::Restic, 1) => "fatal error, no snapshot created",
        (BackupTool::Restic, 3) => "snapshot created, some source files unreadable",
        (BackupTool::Restic, 10) => "repository does not exist",
        (BackupTool::Restic, 11) => "repository is locked",
        (BackupTool::Restic, 12) => "wrong password",
        (BackupTool::Restic, 130) => "interrupted",
        (BackupTool::Borg, 1) => "warning",
        (BackupTool::Borg, 2) => "error",
        _ => "see the unit's journal",
    }
}

fn judge_last_run(judgement: &mut Judgement, job: &JobObservation) {
    let rule = "backup.last_run";
    let (service, _) = unit_names(&job.job);
    let view = unit_view(job, &service);
    if let Some((status, message)) = run_unseen(job, &view) {
        judgement.rule(rule, status, message);
        return;
    }
    let UnitView::Ran {
        status,
        result,
        exited_at,
        running,
    } = view
    else {
        return;
    };
    let name = &job.job.name;
    let running = if running {
        "; a run is in progress"
    } else {
        ""
    };
    if status == 0 && result == "success" {
        judgement.rule(
            rule,
            Status::Pass,
            format!("job {name}: last run of {service} succeeded (exited {exited_at}){running}"),
        );
    } else if completed_with_warnings(job.job.tool, status) {
        judgement.rule(
            rule,
            Status::Pass,
            format!("job {name}: last run of {service} made a backup with warnings (exit {status}; see backup.incomplete){running}"),
        );
    } else {
        judgement.rule_with_fix(
            rule,
            Status::Warn,
            format!(
                "job {name}: last run of {service} failed: exit {status} ({}), Result={result}, exited {exited_at}{running}",
                exit_meaning(job.job.tool, status)
            ),
            format!("systemctl start {service}"),
            SafetyClass::Safe,
        );
    }
}

fn judge_incomplete(judgement: &mut Judgement, job: &JobObservation, hostname: Option<&str>) {
    let rule = "backup.incomplete";
    let name = &job.job.name;
    let (service, _) = unit_names(&job.job);
    let start = format!("systemctl start {service}");
    // A borg checkpoint as the newest archive shows an interrupted run whatever the unit says.
    let checkpoint = match &job.points {
        Ok(points) => {
            let (considered, _) = own_points(job, points, hostname);
            newest(&considered, false)
                .filter(|it| it.incomplete)
                .map(|it| it.label.clone())
        }
        Err(_) => None,
    };
    let view = unit_view(job, &service);
    match view {
        UnitView::Ran {
            status, exited_at, ..
        } if completed_with_warnings(job.job.tool, status) => {
            judgement.rule_with_fix(
                rule,
                Status::Warn,
                format!(
                    "job {name}: last run of {service} (exited {exited_at}) was incomplete: exit {status} ({})",
                    exit_meaning(job.job.tool, status)
                ),
                start,
                SafetyClass::Safe,
            );
        }
        _ if checkpoint.is_some() => {
            judgement.rule_with_fix(
                rule,
                Status::Warn,
                format!(
                    "job {name}: the newest archive {} is a checkpoint of an interrupted run",
                    checkpoint.unwrap_or_default()
                ),
                start,
                SafetyClass::Safe,
            );
        }
        UnitView::Ran {
            status: 0,
            exited_at,
            ..
        } => {
            judgement.rule(
                rule,
                Status::Pass,
                format!("job {name}: last run of {service} (exited {exited_at}) was complete"),
            );
        }
        UnitView::Ran { status, .. } => {
            judgement.rule(
                rule,
                Status::NotApplicable,
                format!(
                    "job {name}: last run failed outright (exit {status}; see backup.last_run)"
                ),
            );
        }
        view => {
            if let Some((status, message)) = run_unseen(job, &view) {
                judgement.rule(rule, status, message);
            }
        }
    }
}

fn judge_timer(judgement: &mut Judgement, job: &JobObservation) {
    let rule = "backup.timer";
    let name = &job.job.name;
    let (_, timer) = unit_names(&job.job);
    if job.origin == Origin::Declared && !job.job.timer {
        judgement.rule_with_fix(
            rule,
            Status::Fail,
            format!("job {name} is declared without a timer: nothing runs it"),
            "switch to the pinned generation that gives the job a timer (timerConfig / startAt)",
            SafetyClass::Disruptive,
        );
        return;
    }
    let live = match &job.units {
        Ok(units) => units
            .iter()
            .find(|it| property(it, "Id") == Some(timer.as_str())),
        Err(_) => None,
    };
    let loaded = live.filter(|it| matches!(property(it, "LoadState"), None | Some("" | "loaded")));
    match (job.origin, loaded) {
        (_, Some(unit)) if property(unit, "ActiveState") == Some("active") => {
            judgement.rule(rule, Status::Pass, format!("job {name}: {timer} is active"));
        }
        (_, Some(unit)) => {
            judgement.rule_with_fix(
                rule,
                Status::Fail,
                format!(
                    "job {name}: {timer} is {} ({})",
                    property(unit, "ActiveState").unwrap_or_default(),
                    property(unit, "UnitFileState").unwrap_or_default()
                ),
                format!("systemctl start {timer}"),
                SafetyClass::Safe,
            );
        }
        (Origin::Declared, None) => match &job.units {
            Err(err) => {
                // The generation declares the timer; only its live state could not be read.
                judgement.rule(
                    rule,
                    Status::Pass,
                    format!("job {name}: {timer} is declared (live state unreadable: {err})"),
                );
            }
            Ok(_) => {
                judgement.rule_with_fix(
                    rule,
                    Status::Fail,
                    format!("job {name}: {timer} is declared but not loaded"),
                    "/run/current-system/bin/switch-to-configuration switch",
                    SafetyClass::Safe,
                );
            }
        },
        (Origin::Configured, None) => {
            judgement.rule(
                rule,
                Status::NotApplicable,
                format!(
                    "job {name}: hand-configured job without a {timer} unit (configuration says timer: {}); its schedule is not visible, backup.rpo is the control",
                    job.job.timer
                ),
            );
        }
    }
}

fn judge_restore_test(
    judgement: &mut Judgement,
    job: &JobObservation,
    policy: &BackupPolicy,
    now: Timestamp,
) {
    let rule = "backup.restore_test";
    let name = &job.job.name;
    let path = job.restore_test_path.display();
    let fix = format!(
        "run the restore test of job {name} (restore the canary and sample files into a scratch directory, compare their SHA-256, record {path})"
    );
    let test = match &job.restore_test {
        Ok(it) => it,
        Err(FactError::NotFound { .. }) => {
            judgement.rule_with_fix(
                rule,
                Status::Fail,
                format!("job {name}: no restore test recorded ({path})"),
                fix,
                SafetyClass::Safe,
            );
            return;
        }
        Err(err) => {
            judgement.rule_with_fix(
                rule,
                Status::Unknown,
                format!("job {name}: {err}"),
                fix,
                SafetyClass::Safe,
            );
            return;
        }
    };
    let age = now.as_second() - test.finished_at.as_second();
    let what = format!(
        "job {name}: last restore test finished {} ({} ago), {} file(s) compared in {} ms",
        test.finished_at,
        format_age(age),
        test.files_checked,
        test.duration_ms
    );
    let (status, message) = if age < -CLOCK_SKEW_SECONDS {
        (
            Status::Unknown,
            format!("{what}: the time lies in the future (clock skew?)"),
        )
    } else if !test.ok {
        (Status::Fail, format!("{what}: it failed"))
    } else if test.files_checked == 0 {
        (
            Status::Fail,
            format!("{what}: it compared no file, which proves nothing"),
        )
    } else if age > i64::from(policy.restore_test_max_age_days) * 86_400 {
        (
            Status::Fail,
            format!("{what}: older than {} d", policy.restore_test_max_age_days),
        )
    } else {
        (Status::Pass, what)
    };
    if status == Status::Pass {
        judgement.rule(rule, status, message);
    } else {
        judgement.rule_with_fix(rule, status, message, fix, SafetyClass::Safe);
    }
}

fn expected(policy: &BackupPolicy) -> Value {
    json!({
        "backup_job_present": policy.required,
        "newest_backup_pass_hours": policy.rpo_warn_hours,
        "newest_backup_fail_hours": policy.rpo_fail_hours,
        "last_run": "exit 0, Result=success",
        "timer": "active",
        "restore_test": {"ok": true, "max_age_days": policy.restore_test_max_age_days},
    })
}

fn observed(obs: &Observation) -> Value {
    let jobs: Vec<Value> = obs
        .jobs
        .iter()
        .map(|it| {
            let mut sorted: Vec<&BackupPoint> = it
                .points
                .as_ref()
                .map(|points| points.iter().collect())
                .unwrap_or_default();
            sorted.sort_by_key(|point| std::cmp::Reverse(point.finished_at));
            let points = match &it.points {
                Ok(points) => json!({
                    "count": points.len(),
                    "newest": sorted.iter().take(EVIDENCE_POINTS).map(|point| json!({
                        "id": point.id,
                        "label": point.label,
                        "finished_at": point.finished_at.to_string(),
                        "hostname": point.hostname,
                        "paths": point.paths,
                        "incomplete": point.incomplete,
                    })).collect::<Vec<_>>(),
                }),
                Err(err) => json!({"error": redact_userinfo(&err.to_string())}),
            };
            let units = match &it.units {
                Ok(units) => systemd::units_json(units),
                Err(err) => json!({"error": err.to_string()}),
            };
            let restore_test = match &it.restore_test {
                Ok(test) => json!({
                    "finished_at": test.finished_at.to_string(),
                    "ok": test.ok,
                    "files_checked": test.files_checked,
                    "duration_ms": test.duration_ms,
                }),
                Err(err) => json!({"error": err.to_string()}),
            };
            json!({
                "name": it.job.name,
                "tool": tool_name(it.job.tool),
                "origin": if it.origin == Origin::Declared { "declared" } else { "configured" },
                "repository": it.job.repository.as_deref().map(redact_userinfo),
                "repository_file": it.job.repository_file,
                "password_file": it.job.password_file,
                "timer": it.job.timer,
                "paths": it.job.paths,
                "source": it.source,
                "backups": points,
                "units": units,
                "restore_test_file": it.restore_test_path,
                "restore_test": restore_test,
            })
        })
        .collect();
    json!({
        "declared_error": obs.declared_error,
        "hostname": obs.hostname,
        "jobs": jobs,
    })
}

fn tool_name(tool: BackupTool) -> &'static str {
    match tool {
        BackupTool::Borg => "borg",
        BackupTool::Restic => "restic",
    }
}

/// Hides the user-info part of URLs (`rest:https://user:pass@host/`, `s3:https://key@…`) so a
/// repository given with inline credentials never reaches a finding.
fn redact_userinfo(text: &str) -> String {
    let mut res = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("://") {
        let (head, tail) = rest.split_at(at + 3);
        res.push_str(head);
        let authority_end = tail
            .find(|it: char| it == '/' || it.is_whitespace())
            .unwrap_or(tail.len());
        match tail[..authority_end].rfind('@') {
            Some(user_end) => {
                res.push_str("***");
                rest = &tail[user_end..];
            }
            None => rest = tail,
        }
    }
    res.push_str(rest);
    res
}

/// A job name that is safe as a file name and a unit instance: the probe's rule
/// ([`probe::is_plain_name`]), so a job the check reads is one the probe accepts.
fn plain_name(name: &str) -> Result<(), FactError> {
    if probe::is_plain_name(name) {
        Ok(())
    } else {
        Err(FactError::parse(
            "backup job name",
            format!("{name:?} is not a plain name"),
        ))
    }
}

/// `restic snapshots --json`: an array of snapshots.
#[derive(Deserialize)]
struct ResticSnapshot {
    time: String,
    id: String,
    #[serde(default)]
    short_id: Option<String>,
    #[serde(default)]
    hostname: Option<String>,
    #[serde(default)]
    paths: Option<Vec<String>>,
    #[serde(default)]
    summary: Option<ResticSummary>,
}

/// `summary` of restic ≥ 0.17.
#[derive(Deserialize)]
struct ResticSummary {
    #[serde(default)]
    backup_end: Option<String>,
}

/// `borg list --json`: `{"archives": [...], "encryption": …, "repository": …}`.
#[derive(Deserialize)]
struct BorgList {
    archives: Vec<BorgArchive>,
}

#[derive(Deserialize)]
struct BorgArchive {
    name: String,
    id: String,
    time: String,
}

fn parse_points(tool: BackupTool, bytes: &[u8], what: &str) -> Result<Vec<BackupPoint>, FactError> {
    let parse_error = |err: &dyn std::fmt::Display| FactError::parse(what, err);
    match tool {
        BackupTool::Restic => {
            let snapshots: Vec<ResticSnapshot> =
                serde_json::from_slice(bytes).map_err(|err| parse_error(&err))?;
            snapshots
                .into_iter()
                .map(|it| {
                    let end = it.summary.and_then(|summary| summary.backup_end);
                    let finished_at = parse_rfc3339(end.as_deref().unwrap_or(&it.time))
                        .map_err(|err| parse_error(&err))?;
                    let label = it
                        .short_id
                        .unwrap_or_else(|| it.id.chars().take(8).collect());
                    Ok(BackupPoint {
                        id: it.id,
                        label,
                        finished_at,
                        hostname: it.hostname,
                        paths: it.paths.unwrap_or_default(),
                        incomplete: false,
                    })
                })
                .collect()
        }
        BackupTool::Borg => {
            let list: BorgList = serde_json::from_slice(bytes).map_err(|err| parse_error(&err))?;
            list.archives
                .into_iter()
                .map(|it| {
                    let finished_at = parse_borg_time(&it.time).map_err(|err| parse_error(&err))?;
                    Ok(BackupPoint {
                        incomplete: it.name.ends_with(".checkpoint"),
                        id: it.id,
                        label: it.name,
                        finished_at,
                        hostname: None,
                        paths: Vec::new(),
                    })
                })
                .collect()
        }
    }
}

fn parse_rfc3339(text: &str) -> Result<Timestamp, String> {
    text.parse::<Timestamp>()
        .map_err(|err| format!("time {text:?}: {err}"))
}

/// borg 1.x writes archive times as local ISO 8601 without an offset
/// (`2026-11-27T02:00:03.000000`). The agent cannot know the zone borg ran in, so it reads
/// them as UTC: on a host east of UTC that makes a backup look younger by the offset, which is
/// why the zone of backup hosts should be UTC (the NixOS default). A time with an offset is
/// read with it.
fn parse_borg_time(text: &str) -> Result<Timestamp, String> {
    if let Ok(it) = text.parse::<Timestamp>() {
        return Ok(it);
    }
    let civil = text
        .parse::<DateTime>()
        .map_err(|err| format!("time {text:?}: {err}"))?;
    civil
        .to_zoned_datetime(TimeZone::UTC)
        .map(|it| it.timestamp())
        .map_err(|err| format!("time {text:?}: {err}"))
}

/// The restore-test record (see the module documentation).
#[derive(Deserialize)]
struct RestoreTestFile {
    job: String,
    finished_at: String,
    ok: bool,
    files_checked: u64,
    duration_ms: u64,
}

fn parse_restore_test(bytes: &[u8], job: &str, what: &str) -> Result<RestoreTest, FactError> {
    let raw: RestoreTestFile =
        serde_json::from_slice(bytes).map_err(|err| FactError::parse(what, err))?;
    if raw.job != job {
        return Err(FactError::parse(
            what,
            format!("the record is for job {:?}, not {job:?}", raw.job),
        ));
    }
    let finished_at = parse_rfc3339(&raw.finished_at).map_err(|err| FactError::parse(what, err))?;
    Ok(RestoreTest {
        finished_at,
        ok: raw.ok,
        files_checked: raw.files_checked,
        duration_ms: raw.duration_ms,
    })
}

#[cfg(test)]
mod tests {
    use std::process::Command;

    use proptest::prelude::*;

    use super::*;
    use crate::checks::testing::{
        assert_finding, check_fixture, default_paths, fixture_root, host_at, real_tools, rule,
        run_on, ts,
    };
    use crate::facts::HostPaths;
    use crate::facts::command::{CommandSource, DEFAULT_SEARCH_PATH, Limits};
    use crate::facts::fs::Root;
    use crate::facts::probe::ProbeSource;

    // Fixture formats (see tests/fixtures/backup/README.md for each file's source): status
    // files hold `restic snapshots --json` output as restic 0.17 prints it, `borg list --json`
    // as borg 1.1 prints it, unit state as `systemctl show` prints it.
    const NOW: &str = "2026-11-27T12:00:00Z";

    #[test]
    fn restic_fresh_passes() {
        let finding = check_fixture(
            &Backup,
            "restic-fresh",
            NOW,
            Status::Pass,
            &[
                ("backup.jobs", Status::Pass),
                ("backup.rpo", Status::Pass),
                ("backup.last_run", Status::Pass),
                ("backup.incomplete", Status::Pass),
                ("backup.timer", Status::Pass),
                ("backup.restore_test", Status::Pass),
            ],
        );
        // The newest snapshot is judged by summary.backup_end, and only this host's counts.
        let rpo = rule(&finding, "backup.rpo");
        assert!(
            rpo.message
                .contains("1e0c9b7a finished 2026-11-27T02:14:09.102938475Z"),
            "{}",
            rpo.message
        );
        assert_eq!(
            finding.observed["jobs"][0]["repository"],
            "rest:https://***@backup.clinic.example:8000/host1"
        );
    }

    #[test]
    fn restic_stale_fails_even_with_another_hosts_fresh_snapshot() {
        let finding = check_fixture(
            &Backup,
            "restic-stale",
            NOW,
            Status::Fail,
            &[
                ("backup.rpo", Status::Fail),
                ("backup.last_run", Status::Warn),
                ("backup.restore_test", Status::Pass),
            ],
        );
        let rpo = rule(&finding, "backup.rpo");
        assert!(
            rpo.message.contains("job daily") && rpo.message.contains("3 d 9 h ago"),
            "{}",
            rpo.message
        );
        let last_run = rule(&finding, "backup.last_run");
        assert!(
            last_run.message.contains("exit 12 (wrong password)"),
            "{}",
            last_run.message
        );
        assert!(
            finding
                .fixes
                .iter()
                .any(|it| it.action == "systemctl start restic-backups-daily.service")
        );
    }

    #[test]
    fn rpo_grades_with_time() {
        // restic-fresh's newest own snapshot ended 2026-11-27T02:14:09Z.
        for (now, status) in [
            ("2026-11-28T04:14:00Z", Status::Pass),
            ("2026-11-28T04:15:00Z", Status::Warn),
            ("2026-11-29T02:14:00Z", Status::Warn),
            ("2026-11-29T02:15:00Z", Status::Fail),
            ("2026-11-27T00:00:00Z", Status::Unknown),
        ] {
            let host = host_at(&fixture_root("backup", "restic-fresh"), default_paths());
            let finding = run_on(&Backup, &host, &Baseline::embedded(), ts(now));
            assert_eq!(rule(&finding, "backup.rpo").status, status, "at {now}");
        }
    }

    #[test]
    fn no_jobs_fails() {
        let finding = check_fixture(
            &Backup,
            "no-jobs",
            NOW,
            Status::Fail,
            &[("backup.jobs", Status::Fail)],
        );
        assert_eq!(finding.summary, "no backup job declared or configured");
        assert_eq!(finding.fixes[0].safety, SafetyClass::Disruptive);
    }

    #[test]
    fn restic_exit_3_is_incomplete() {
        check_fixture(
            &Backup,
            "restic-incomplete",
            NOW,
            Status::Warn,
            &[
                ("backup.rpo", Status::Pass),
                ("backup.incomplete", Status::Warn),
                ("backup.last_run", Status::Pass),
            ],
        );
    }

    #[test]
    fn restore_test_missing_fails() {
        let finding = check_fixture(
            &Backup,
            "restore-test-missing",
            NOW,
            Status::Fail,
            &[
                ("backup.rpo", Status::Pass),
                ("backup.restore_test", Status::Fail),
            ],
        );
        assert!(
            finding.summary.contains("no restore test recorded"),
            "{}",
            finding.summary
        );
        assert!(
            finding
                .fixes
                .iter()
                .any(|it| it.action.starts_with("run the restore test of job daily"))
        );
    }

    #[test]
    fn bad_json_is_unknown() {
        let finding = check_fixture(
            &Backup,
            "bad-json",
            NOW,
            Status::Unknown,
            &[("backup.rpo", Status::Unknown)],
        );
        assert!(
            rule(&finding, "backup.rpo")
                .message
                .contains("cannot parse /var/lib/msp-compliance/backup/daily.json")
        );
    }

    #[test]
    fn borg_checkpoint_is_incomplete_and_leaves_the_rpo_unknown() {
        let finding = check_fixture(
            &Backup,
            "borg-checkpoint",
            NOW,
            Status::Unknown,
            &[
                ("backup.rpo", Status::Unknown),
                ("backup.incomplete", Status::Warn),
                ("backup.timer", Status::Pass),
                ("backup.restore_test", Status::Pass),
            ],
        );
        assert!(
            rule(&finding, "backup.incomplete")
                .message
                .contains("nightly-2026-11-27T02:00:03.checkpoint")
        );
    }

    #[test]
    fn declared_job_without_timer_fails() {
        let finding = check_fixture(
            &Backup,
            "no-timer",
            NOW,
            Status::Fail,
            &[("backup.timer", Status::Fail)],
        );
        assert_eq!(
            rule(&finding, "backup.timer").fix.as_ref().unwrap().safety,
            SafetyClass::Disruptive
        );
    }

    fn configured(
        name: &str,
        repository: Option<&str>,
        repository_file: Option<&str>,
    ) -> DeclaredBackupJob {
        DeclaredBackupJob {
            name: name.to_string(),
            tool: BackupTool::Restic,
            repository: repository.map(str::to_string),
            repository_file: repository_file.map(PathBuf::from),
            password_file: Some(PathBuf::from("/etc/restic/password")),
            timer: true,
            paths: Vec::new(),
        }
    }

    #[test]
    fn configured_jobs_use_the_probe() {
        // Debian host: jobs from the agent configuration, snapshots from the recorded probe,
        // no restic-backups-* units (hand-made cron job).
        let paths = HostPaths {
            backup_jobs: vec![
                configured("offsite", None, Some("/etc/restic/repository")),
                configured("lost", None, Some("/etc/restic/no-such-file")),
            ],
            ..default_paths()
        };
        let host = host_at(&fixture_root("backup", "configured-probe"), paths);
        let finding = run_on(&Backup, &host, &Baseline::embedded(), ts(NOW));
        assert_finding(
            &finding,
            Status::Unknown,
            &[
                ("backup.jobs", Status::Pass),
                ("backup.rpo", Status::Pass),
                ("backup.rpo", Status::Unknown),
                ("backup.timer", Status::NotApplicable),
                ("backup.last_run", Status::NotApplicable),
                ("backup.restore_test", Status::Pass),
            ],
        );
        let lost = finding
            .results
            .iter()
            .find(|it| it.rule == "backup.rpo" && it.message.contains("job lost"))
            .unwrap();
        assert!(
            lost.message
                .contains("/etc/restic/no-such-file does not exist"),
            "{}",
            lost.message
        );
    }

    #[test]
    fn no_job_is_not_applicable_when_not_required() {
        let host = host_at(&fixture_root("backup", "no-jobs"), default_paths());
        let baseline = Baseline::parse(
            Path::new("b.yaml"),
            b"id: x\nversion: '1'\nchecks:\n  backup:\n    required: false\n",
        )
        .unwrap();
        let finding = run_on(&Backup, &host, &baseline, ts(NOW));
        assert_finding(
            &finding,
            Status::NotApplicable,
            &[("backup.jobs", Status::NotApplicable)],
        );
    }

    #[test]
    fn parsers_read_real_layouts() {
        let restic = br#"[{"time":"2026-11-20T03:00:00Z","tree":"74","paths":["/srv"],"hostname":"vm","username":"root","id":"68dbdbac90af","short_id":"68dbdbac"}]"#;
        let points = parse_points(BackupTool::Restic, restic, "x").unwrap();
        assert_eq!(
            (points[0].label.as_str(), points[0].finished_at),
            ("68dbdbac", ts("2026-11-20T03:00:00Z"))
        );
        let offset = br#"[{"time":"2026-11-27T03:00:04.712359341+01:00","id":"ab","tags":null,"paths":null}]"#;
        assert_eq!(
            parse_points(BackupTool::Restic, offset, "x").unwrap()[0]
                .finished_at
                .as_second(),
            ts("2026-11-27T02:00:04Z").as_second()
        );
        let borg = br#"{"archives":[{"archive":"a","barchive":"a","id":"f0","name":"a","start":"2026-11-27T02:00:03.000000","time":"2026-11-27T02:00:03.000000"}],"encryption":{"mode":"repokey"},"repository":{"id":"1","last_modified":"2026-11-27T02:10:00.000000","location":"/srv/borg"}}"#;
        assert_eq!(
            parse_points(BackupTool::Borg, borg, "x").unwrap()[0].finished_at,
            ts("2026-11-27T02:00:03Z")
        );
        assert!(parse_points(BackupTool::Restic, borg, "x").is_err());
        assert!(
            parse_points(
                BackupTool::Restic,
                br#"[{"time":"yesterday","id":"a"}]"#,
                "x"
            )
            .is_err()
        );
        let test = br#"{"job":"daily","finished_at":"2026-11-20T04:00:00Z","ok":true,"files_checked":3,"duration_ms":5,"extra":1}"#;
        assert!(parse_restore_test(test, "daily", "x").is_ok());
        assert!(parse_restore_test(test, "other", "x").is_err());
        assert_eq!(
            redact_userinfo("rest:https://u:p@h:8000/x and s3:https://k@s3/b"),
            "rest:https://***@h:8000/x and s3:https://***@s3/b"
        );
        assert_eq!(
            redact_userinfo("sftp:backup@nas:/srv /no/scheme"),
            "sftp:backup@nas:/srv /no/scheme"
        );
        assert!(plain_name("../etc").is_err() && plain_name("daily-1.b_2").is_ok());
    }

    fn observation(
        points: Result<Vec<BackupPoint>, FactError>,
        restore_test: Result<RestoreTest, FactError>,
    ) -> Observation {
        let job = configured("daily", Some("/srv/restic"), None);
        Observation {
            declared_error: None,
            nixos: false,
            hostname: Some("vm".to_string()),
            jobs: vec![JobObservation {
                job,
                origin: Origin::Configured,
                source: "status file".to_string(),
                points,
                units: Err(FactError::ToolMissing {
                    program: "systemctl".to_string(),
                }),
                restore_test_path: PathBuf::from(
                    "/var/lib/msp-compliance/restore-tests/daily.json",
                ),
                restore_test,
            }],
        }
    }

    proptest! {
        #[test]
        fn foreign_bytes_never_pass(bytes in proptest::collection::vec(any::<u8>(), 0..400), text in "\\PC{0,300}") {
            let now = ts(NOW);
            for input in [bytes.as_slice(), text.as_bytes()] {
                let points = parse_points(BackupTool::Restic, input, "x");
                let borg = parse_points(BackupTool::Borg, input, "x");
                let test = parse_restore_test(input, "daily", "x");
                let _ = systemd::parse_show_units(&String::from_utf8_lossy(input));
                let _ = redact_userinfo(&String::from_utf8_lossy(input));
                let _ = parse_borg_time(&String::from_utf8_lossy(input));
                // Random input is never a recent snapshot nor a passing restore test.
                let points_ok = points.as_ref().is_ok_and(|it| !it.is_empty());
                let test_ok = test.is_ok();
                let judgement = Backup.judge(&observation(points, test), &Baseline::embedded(), now);
                for result in &judgement.results {
                    let parsed = match result.rule.as_str() {
                        "backup.rpo" => points_ok,
                        "backup.restore_test" => test_ok,
                        _ => true,
                    };
                    prop_assert!(result.status != Status::Pass || parsed, "{result:?}");
                }
                let _ = borg;
            }
        }
    }

    // ---- Real restic, gated by MSP_REAL_TOOLS=1. ----

    /// Runs restic for test setup with a clean environment: no cache outside the tempdir, UTC,
    /// local repositories only (restic never touches the network here).
    fn restic(work: &Path, args: &[&str]) {
        let out = Command::new("/usr/bin/restic")
            .args(args)
            .arg("--no-cache")
            .env_clear()
            .env("HOME", work)
            .env("RESTIC_CACHE_DIR", work.join("cache"))
            .env("TZ", "UTC")
            .env("LC_ALL", "C")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "restic {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// A repository in `work/<name>` with one snapshot of a small tree, taken at `time` (restic's
    /// `--time`, `YYYY-MM-DD hh:mm:ss` in UTC here) or now.
    fn repository(work: &Path, name: &str, time: Option<&str>) -> (PathBuf, PathBuf) {
        let repo = work.join(name);
        let password = work.join(format!("{name}.password"));
        std::fs::write(&password, format!("test password of {name}\n")).unwrap();
        let data = work.join(format!("{name}-data"));
        std::fs::create_dir_all(&data).unwrap();
        std::fs::write(data.join("canary.txt"), "msp-compliance restore canary\n").unwrap();
        let (repo_arg, password_arg) = (repo.to_str().unwrap(), password.to_str().unwrap());
        restic(
            work,
            &["init", "--repo", repo_arg, "--password-file", password_arg],
        );
        let mut args = vec![
            "backup",
            "--repo",
            repo_arg,
            "--password-file",
            password_arg,
        ];
        if let Some(time) = time {
            args.extend(["--time", time]);
        }
        args.push(data.to_str().unwrap());
        restic(work, &args);
        (repo, password)
    }

    fn live_host(state_dir: &Path, jobs: Vec<DeclaredBackupJob>) -> Host {
        Host::new(
            Root::live(),
            CommandSource::Live(Limits {
                timeout: std::time::Duration::from_secs(30),
                max_output: 8 * 1024 * 1024,
                search_path: DEFAULT_SEARCH_PATH.iter().map(PathBuf::from).collect(),
            }),
            ProbeSource::Direct,
            Path::new("/nonexistent/declared.json"),
            HostPaths {
                backup_jobs: jobs,
                state_dir: state_dir.to_path_buf(),
                ..default_paths()
            },
        )
    }

    fn job(name: &str, repo: &Path, password: &Path) -> DeclaredBackupJob {
        DeclaredBackupJob {
            name: name.to_string(),
            tool: BackupTool::Restic,
            repository: Some(repo.display().to_string()),
            repository_file: None,
            password_file: Some(password.to_path_buf()),
            timer: false,
            paths: Vec::new(),
        }
    }

    fn write_restore_test(state_dir: &Path, name: &str, finished_at: Timestamp) {
        let dir = state_dir.join("restore-tests");
        std::fs::create_dir_all(&dir).unwrap();
        let record = json!({"job": name, "finished_at": finished_at.to_string(), "ok": true, "files_checked": 1, "duration_ms": 40});
        std::fs::write(dir.join(format!("{name}.json")), record.to_string()).unwrap();
    }

    #[test]
    fn real_restic_repositories_fresh_stale_and_locked_out() {
        if !real_tools("real_restic_repositories_fresh_stale_and_locked_out") {
            return;
        }
        let work = tempfile::tempdir().unwrap();
        let now = Timestamp::now();
        let (fresh_repo, fresh_password) = repository(work.path(), "fresh", None);
        let five_days_ago = now
            .checked_sub(jiff::SignedDuration::from_hours(5 * 24))
            .unwrap();
        let old = five_days_ago
            .to_zoned_datetime(TimeZone::UTC)
            .strftime("%Y-%m-%d %H:%M:%S")
            .to_string();
        let (stale_repo, stale_password) = repository(work.path(), "stale", Some(&old));
        let state_dir = work.path().join("state");
        for name in ["fresh", "stale", "locked"] {
            write_restore_test(&state_dir, name, now);
        }

        // Fresh: the probe runs the real restic against the repository.
        let host = live_host(&state_dir, vec![job("fresh", &fresh_repo, &fresh_password)]);
        let finding = run_on(&Backup, &host, &Baseline::embedded(), now);
        assert_finding(
            &finding,
            Status::Pass,
            &[
                ("backup.rpo", Status::Pass),
                ("backup.restore_test", Status::Pass),
            ],
        );
        assert!(
            rule(&finding, "backup.rpo")
                .message
                .contains("job fresh: newest snapshot"),
            "{}",
            rule(&finding, "backup.rpo").message
        );

        // Stale: a snapshot taken with --time five days back. restic 0.14 (Debian 12) records no
        // summary, so the snapshot time is what --time set; from 0.17 on, summary.backup_end
        // records the real end, so the clock of the judgement moves five days ahead instead.
        let host = live_host(&state_dir, vec![job("stale", &stale_repo, &stale_password)]);
        let observation = Backup.observe(&host, &Baseline::embedded());
        let has_summary = observation.jobs[0].points.as_ref().is_ok_and(|points| {
            points
                .iter()
                .any(|it| it.finished_at.as_second() > five_days_ago.as_second() + 3_600)
        });
        let judged_at = if has_summary {
            now.checked_add(jiff::SignedDuration::from_hours(5 * 24))
                .unwrap()
        } else {
            now
        };
        let finding = run_on(&Backup, &host, &Baseline::embedded(), judged_at);
        assert_finding(&finding, Status::Fail, &[("backup.rpo", Status::Fail)]);
        assert!(
            rule(&finding, "backup.rpo")
                .message
                .contains("(5 d 0 h ago)"),
            "{}",
            rule(&finding, "backup.rpo").message
        );

        // Wrong password: restic refuses, the rule is unknown, never a pass.
        let wrong = work.path().join("wrong.password");
        std::fs::write(&wrong, "not the password\n").unwrap();
        let host = live_host(&state_dir, vec![job("locked", &fresh_repo, &wrong)]);
        let finding = run_on(&Backup, &host, &Baseline::embedded(), now);
        assert_finding(
            &finding,
            Status::Unknown,
            &[("backup.rpo", Status::Unknown)],
        );
        let message = &rule(&finding, "backup.rpo").message;
        assert!(
            message.contains("restic snapshots --json of backup job locked")
                && message.contains("wrong password"),
            "{message}"
        );
    }

    #[test]
    fn real_restic_status_file_needs_no_credentials() {
        if !real_tools("real_restic_status_file_needs_no_credentials") {
            return;
        }
        // What the backup unit's ExecStartPost writes: the real `restic snapshots --json`.
        let work = tempfile::tempdir().unwrap();
        let now = Timestamp::now();
        let (repo, password) = repository(work.path(), "unit", None);
        let out = Command::new("/usr/bin/restic")
            .args([
                "--repo",
                repo.to_str().unwrap(),
                "--password-file",
                password.to_str().unwrap(),
                "--no-cache",
            ])
            .args(["snapshots", "--json"])
            .env_clear()
            .env("HOME", work.path())
            .env("LC_ALL", "C")
            .output()
            .unwrap();
        assert!(out.status.success());
        let state_dir = work.path().join("state");
        std::fs::create_dir_all(state_dir.join("backup")).unwrap();
        std::fs::write(state_dir.join("backup/unit.json"), &out.stdout).unwrap();
        write_restore_test(&state_dir, "unit", now);
        // The agent's job points at a repository it cannot open: the status file is enough.
        let unreadable = job(
            "unit",
            &work.path().join("no-such-repository"),
            &work.path().join("no-such-password"),
        );
        let finding = run_on(
            &Backup,
            &live_host(&state_dir, vec![unreadable]),
            &Baseline::embedded(),
            now,
        );
        assert_finding(&finding, Status::Pass, &[("backup.rpo", Status::Pass)]);
        assert!(
            finding.observed["jobs"][0]["source"]
                .as_str()
                .unwrap()
                .starts_with("status file")
        );
    }
}
