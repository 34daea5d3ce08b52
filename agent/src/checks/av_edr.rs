//! The av_edr check: is an anti-malware scanner present, alive and current (`research/checks.md` §2.1).
//!
//! It owns the ClamAV facts (clamd's local socket, the signature database headers, the freshclam
//! units) and the cheap presence-and-health facts of the Linux EDRs Microsoft Defender for
//! Endpoint (`mdatp`) and CrowdStrike Falcon (`falconctl`). It only reads: to clamd it sends
//! nothing but `PING` and `VERSION` (never `RELOAD`, `SCAN` or `SHUTDOWN`), and it never starts,
//! stops or updates anything. Talking to clamd is a local fact read over a Unix socket of the
//! host, not network egress: the agent opens no IP connection here.

use std::io::{ErrorKind, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

use jiff::Timestamp;
use jiff::civil::{Date, DateTime, Time};
use jiff::tz::{Offset, TimeZone};
use msp_compliance_protocol::finding::{SafetyClass, Status};
use msp_compliance_protocol::ids::{check, hipaa};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::baseline::{AvEdrPolicy, Baseline};
use crate::checks::{CLOCK_SKEW_SECONDS, Check, Judgement, format_age, grade};
use crate::facts::command::Invocation;
use crate::facts::declared::DeclaredClamav;
use crate::facts::systemd::{self, Properties, property};
use crate::facts::{DeclaredState, FactError, Host};

/// clamd's configuration; Debian's clamav-daemon and NixOS's `services.clamav` both render it here.
const CLAMD_CONF: &str = "/etc/clamav/clamd.conf";
/// clamd's socket when neither the agent configuration nor clamd.conf names one.
const DEFAULT_CLAMD_SOCKET: &str = "/run/clamav/clamd.ctl";
/// Read and write timeout on clamd's socket.
const CLAMD_IO_TIMEOUT: Duration = Duration::from_secs(2);
/// Upper bound for one whole exchange with clamd, connect included (connect has no timeout of
/// its own and blocks while clamd's listen backlog is full).
const CLAMD_DEADLINE: Duration = Duration::from_secs(5);
/// Longest clamd reply accepted; `PONG` and the version line are far shorter.
const CLAMD_REPLY_LIMIT: usize = 1024;
/// Size of a CVD/CLD/CUD header.
const CVD_HEADER_LEN: usize = 512;
/// Signature databases read, in order; only `daily` matters for age, the others are evidence.
const DATABASES: [&str; 3] = ["daily", "main", "bytecode"];
/// Database file kinds in the order clamd prefers them: the incrementally updated `.cld`, the
/// downloaded `.cvd`, then `.cud` (ClamAV's unsigned container, used by private signature builds).
const DATABASE_EXTENSIONS: [&str; 3] = ["cld", "cvd", "cud"];
/// The updater's units: the Debian daemon service, the NixOS timer, Debian's alternative timer.
const FRESHCLAM_UNITS: [&str; 3] = [
    "clamav-freshclam.service",
    "clamav-freshclam.timer",
    "clamav-freshclam-once.timer",
];
/// Debian's cron alternative to the freshclam daemon (its service then refuses to start).
const FRESHCLAM_CRON: &str = "/etc/cron.d/clamav-freshclam";
/// CrowdStrike's control tool; the sensor is not packaged, it is installed under /opt.
const FALCONCTL: &str = "/opt/CrowdStrike/falconctl";
const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

/// The av_edr check.
///
/// Facts read:
/// - clamd's local socket (`clamav.socket` of the agent configuration, else `LocalSocket` of
///   `/etc/clamav/clamd.conf`, else `/run/clamav/clamd.ctl`): `zPING` must answer `PONG`;
///   `zVERSION` gives the daily database version clamd has *loaded*;
/// - the headers of `daily`, `main` and `bytecode` (`.cld`, else `.cvd`, else `.cud`) in the
///   database directory: version and build time of the signatures *on disk*;
/// - the freshclam units (`systemctl show`, record `systemctl-show-freshclam`) and Debian's cron
///   alternative; on NixOS the declared `services.clamav.{daemon,updater}.enable`;
/// - `mdatp health --output json` and `falconctl -g --rfm-state` when those EDRs are installed.
///
/// Thresholds (baseline `checks.av_edr`): signature age `pass` up to `signature_warn_hours`
/// (48 h), `warn` up to `signature_fail_days` (7 d, where clamd itself starts warning), `fail`
/// beyond; `required` makes "nothing installed" a fail; `updater_required` demands freshclam.
///
/// Why an auditor accepts this: 164.308(a)(5)(ii)(B) asks for protection from malicious
/// software. The answer is shown by a live engine (clamd answered on its socket, or the EDR
/// reports itself healthy), current signatures (the build time the signature publisher wrote
/// into the database header, not a file mtime anyone can touch), an updater that keeps them
/// current, and an engine that has actually loaded what is on disk.
pub struct AvEdr;

/// What [`AvEdr`] observed.
pub struct Observation {
    /// The declared `services.clamav` (NixOS), `Ok(None)` without declared.json, `Err` if invalid.
    declared: Result<Option<DeclaredClamav>, String>,
    /// clamd.conf, `Ok(None)` when absent.
    clamd_conf: Result<Option<ClamdConf>, FactError>,
    /// True when the agent configuration names clamd's socket.
    socket_configured: bool,
    /// The socket's logical path and where it came from; `Err` when it cannot be determined.
    socket: Result<(PathBuf, &'static str), FactError>,
    /// clamd's answer to `zPING`.
    ping: Result<String, FactError>,
    /// clamd's answer to `zVERSION`; `None` when PING failed and VERSION was not tried.
    version: Option<Result<String, FactError>>,
    /// The database directory read.
    database_dir: PathBuf,
    /// One entry per database name of [`DATABASES`].
    databases: Vec<Database>,
    /// `systemctl show` of [`FRESHCLAM_UNITS`], one property map per unit.
    freshclam_units: Result<Vec<Properties>, FactError>,
    /// Debian's freshclam cron file exists.
    freshclam_cron: bool,
    /// Microsoft Defender for Endpoint; `Ok(None)` when `mdatp` is not installed.
    mdatp: Result<Option<MdatpHealth>, FactError>,
    /// CrowdStrike Falcon; `Ok(None)` when falconctl is not installed.
    falcon: Result<Option<FalconState>, FactError>,
}

/// The clamd.conf settings the check uses.
struct ClamdConf {
    local_socket: Option<String>,
    tcp_socket: Option<String>,
    database_directory: Option<String>,
}

/// One signature database (`daily`, `main`, `bytecode`).
struct Database {
    name: &'static str,
    /// The file found and its parsed header; `None` when no file of that name exists.
    found: Option<(PathBuf, Result<CvdHeader, FactError>)>,
}

/// The header of a CVD/CLD/CUD file:
/// `ClamAV-VDB:<build time>:<version>:<sigs>:<flevel>:<md5>:<dsig>:<builder>:<stime>`.
#[derive(Clone, Debug, PartialEq, Eq)]
struct CvdHeader {
    build_time: String,
    version: u64,
    signatures: u64,
    functionality_level: u32,
    md5: String,
    builder: String,
    /// Field 9, the build time in epoch seconds (absent in old files).
    stime: Option<i64>,
    /// The build time: `stime`, else field 2 parsed.
    built_at: Timestamp,
}

/// The fields of `mdatp health --output json` the check judges.
struct MdatpHealth {
    healthy: bool,
    health_issues: Vec<String>,
    licensed: Option<bool>,
    real_time_protection: Option<bool>,
    definitions_minutes_ago: Option<u64>,
    definitions_status: Option<String>,
    app_version: Option<String>,
    definitions_version: Option<String>,
}

/// `falconctl -g --rfm-state`.
struct FalconState {
    rfm: bool,
    reason: Option<String>,
}

/// Whether a product is there.
enum Presence {
    Absent,
    Installed,
    Unknown(String),
}

impl Check for AvEdr {
    type Observation = Observation;

    fn id(&self) -> &'static str {
        check::AV_EDR
    }

    fn controls(&self) -> &'static [&'static str] {
        &[hipaa::MALICIOUS_SOFTWARE, hipaa::INCIDENT_PROCEDURES]
    }

    fn observe(&self, host: &Host, _baseline: &Baseline) -> Observation {
        let declared = match host.declared() {
            DeclaredState::Absent => Ok(None),
            DeclaredState::Invalid(err) => Err(err.clone()),
            DeclaredState::Present(it) => Ok(Some(it.clamav.clone())),
        };
        let clamd_conf = match host.root.read_text(Path::new(CLAMD_CONF)) {
            Ok(text) => Ok(Some(parse_clamd_conf(&text))),
            Err(err) if err.is_absent() => Ok(None),
            Err(err) => Err(err),
        };
        let socket = socket_location(host.paths.clamd_socket.as_deref(), &clamd_conf);
        let ping = match &socket {
            Ok((path, _)) => clamd_command(host, path, b"zPING\0"),
            Err(err) => Err(FactError::parse("clamd socket", err)),
        };
        let version = match (&socket, &ping) {
            (Ok((path, _)), Ok(_)) => Some(clamd_command(host, path, b"zVERSION\0")),
            _ => None,
        };
        let database_dir = host.paths.clamav_database_dir.clone();
        let databases = DATABASES
            .iter()
            .map(|name| read_database(host, &database_dir, name))
            .collect();
        let freshclam_units = systemctl_show(host);
        let freshclam_cron = host.root.exists(Path::new(FRESHCLAM_CRON));
        let mdatp_health =
            Invocation::new("mdatp-health", "mdatp", &["health", "--output", "json"]);
        let mdatp = match host
            .run(&mdatp_health)
            .and_then(|out| out.success(&mdatp_health))
        {
            Ok(out) => parse_mdatp_health(&out.stdout).map(Some),
            Err(FactError::ToolMissing { .. }) => Ok(None),
            Err(err) => Err(err),
        };
        let rfm_state = Invocation::new("falconctl-rfm-state", FALCONCTL, &["-g", "--rfm-state"]);
        let falcon = match host.run(&rfm_state).and_then(|out| out.success(&rfm_state)) {
            Ok(out) => parse_falcon_rfm(&out.stdout_text()).map(Some),
            Err(FactError::ToolMissing { .. }) => Ok(None),
            Err(err) => Err(err),
        };
        Observation {
            declared,
            clamd_conf,
            socket_configured: host.paths.clamd_socket.is_some(),
            socket,
            ping,
            version,
            database_dir,
            databases,
            freshclam_units,
            freshclam_cron,
            mdatp,
            falcon,
        }
    }

    fn judge(&self, obs: &Observation, baseline: &Baseline, now: Timestamp) -> Judgement {
        let policy = &baseline.policy().checks.av_edr;
        let mut judgement = Judgement::new(observed(obs), expected(policy));
        let declared = obs.declared.as_ref().ok().and_then(|it| it.as_ref());
        let clamav = clamav_evidence(obs, declared);
        let mdatp = presence(&obs.mdatp);
        let falcon = presence(&obs.falcon);
        let other_edr =
            matches!(mdatp, Presence::Installed) || matches!(falcon, Presence::Installed);

        judge_present(
            &mut judgement,
            policy,
            declared.is_some(),
            &clamav,
            &mdatp,
            &falcon,
        );
        if !clamav.is_empty() {
            judge_daemon(&mut judgement, obs, declared, other_edr);
            judge_signature_age(&mut judgement, obs, policy, now);
            judge_loaded_version(&mut judgement, obs);
            judge_updater(&mut judgement, obs, policy, declared);
        }
        if !matches!(mdatp, Presence::Absent) {
            judge_mdatp(&mut judgement, &obs.mdatp, policy);
        }
        if !matches!(falcon, Presence::Absent) {
            judge_falcon(&mut judgement, &obs.falcon);
        }
        judgement
    }
}

/// What shows that ClamAV is meant to run here. On NixOS the generation decides (a leftover
/// database of an earlier generation is not an installation); elsewhere any of its traces do.
fn clamav_evidence(obs: &Observation, declared: Option<&DeclaredClamav>) -> Vec<String> {
    let mut res = Vec::new();
    if let Some(declared) = declared {
        if declared.daemon {
            res.push("services.clamav.daemon declared".to_string());
        }
        if declared.updater {
            res.push("services.clamav.updater declared".to_string());
        }
        return res;
    }
    if !matches!(obs.clamd_conf, Ok(None)) {
        res.push(CLAMD_CONF.to_string());
    }
    if obs.socket_configured {
        res.push("clamd socket configured".to_string());
    }
    for database in &obs.databases {
        if let Some((path, _)) = &database.found {
            res.push(path.display().to_string());
        }
    }
    if let Ok(units) = &obs.freshclam_units {
        for unit in units {
            if unit_installed(unit) {
                res.push(property(unit, "Id").unwrap_or_default().to_string());
            }
        }
    }
    if obs.freshclam_cron {
        res.push(FRESHCLAM_CRON.to_string());
    }
    res
}

fn presence<T>(fact: &Result<Option<T>, FactError>) -> Presence {
    match fact {
        Ok(None) => Presence::Absent,
        Ok(Some(_)) => Presence::Installed,
        // The program exists and ran: installed, whatever its answer was.
        Err(
            FactError::CommandFailed { .. }
            | FactError::CommandTimeout { .. }
            | FactError::CommandOutputTooLarge { .. }
            | FactError::Parse { .. },
        ) => Presence::Installed,
        Err(err) => Presence::Unknown(err.to_string()),
    }
}

fn judge_present(
    judgement: &mut Judgement,
    policy: &AvEdrPolicy,
    nixos: bool,
    clamav: &[String],
    mdatp: &Presence,
    falcon: &Presence,
) {
    let mut found = Vec::new();
    if !clamav.is_empty() {
        found.push(format!("ClamAV ({})", clamav.join(", ")));
    }
    let mut unknown = Vec::new();
    for (name, state) in [
        ("Microsoft Defender for Endpoint", mdatp),
        ("CrowdStrike Falcon", falcon),
    ] {
        match state {
            Presence::Installed => found.push(name.to_string()),
            Presence::Unknown(why) => unknown.push(format!("{name}: {why}")),
            Presence::Absent => {}
        }
    }
    let rule = "av_edr.present";
    if !found.is_empty() {
        judgement.rule(rule, Status::Pass, format!("present: {}", found.join("; ")));
    } else if !unknown.is_empty() {
        judgement.rule(
            rule,
            Status::Unknown,
            format!(
                "no AV/EDR found, and cannot tell for {}",
                unknown.join("; ")
            ),
        );
    } else if !policy.required {
        judgement.rule(
            rule,
            Status::NotApplicable,
            "no AV/EDR installed; the baseline does not require one",
        );
    } else if nixos {
        judgement.rule_with_fix(
            rule,
            Status::Fail,
            "no AV/EDR installed or declared (services.clamav is off, no mdatp, no falconctl)",
            "switch to the pinned generation with services.clamav.daemon.enable and services.clamav.updater.enable",
            SafetyClass::Disruptive,
        );
    } else {
        judgement.rule_with_fix(
            rule,
            Status::Fail,
            "no AV/EDR installed (no clamd.conf or ClamAV database, no mdatp, no falconctl)",
            "install an AV/EDR, e.g. the clamav-daemon and clamav-freshclam packages",
            SafetyClass::NeverAutomatic,
        );
    }
}

fn judge_daemon(
    judgement: &mut Judgement,
    obs: &Observation,
    declared: Option<&DeclaredClamav>,
    other_edr: bool,
) {
    let rule = "av_edr.daemon";
    let expected = match declared {
        Some(declared) => declared.daemon,
        None => !matches!(obs.clamd_conf, Ok(None)) || obs.socket_configured || !other_edr,
    };
    if !expected {
        if other_edr {
            judgement.rule(
                rule,
                Status::NotApplicable,
                "clamd is not configured; another EDR is the live scanner",
            );
        } else {
            judgement.rule_with_fix(
                rule,
                Status::Fail,
                "services.clamav.daemon.enable is false: ClamAV signatures are kept but nothing scans",
                "switch to the pinned generation with services.clamav.daemon.enable",
                SafetyClass::Disruptive,
            );
        }
        return;
    }
    let socket = match &obs.socket {
        Ok((path, _)) => path.display().to_string(),
        Err(err) => {
            judgement.unknown(rule, err);
            return;
        }
    };
    let restart = "systemctl restart clamav-daemon.service";
    match &obs.ping {
        Ok(reply) if reply == "PONG" => {
            judgement.rule(
                rule,
                Status::Pass,
                format!("clamd answered PONG on {socket}"),
            );
        }
        Ok(reply) => {
            judgement.rule_with_fix(
                rule,
                Status::Fail,
                format!(
                    "clamd answered {:?} instead of PONG on {socket}",
                    excerpt(reply)
                ),
                restart,
                SafetyClass::Safe,
            );
        }
        Err(FactError::NotFound { .. }) => {
            judgement.rule_with_fix(
                rule,
                Status::Fail,
                format!("clamd is not running: its socket {socket} does not exist"),
                restart,
                SafetyClass::Safe,
            );
        }
        Err(err @ FactError::Io { source, .. }) if daemon_is_down(source.kind()) => {
            judgement.rule_with_fix(
                rule,
                Status::Fail,
                format!("clamd did not answer PING: {err}"),
                restart,
                SafetyClass::Safe,
            );
        }
        Err(err) => {
            judgement.unknown(rule, err);
        }
    }
}

/// Socket errors that mean "nobody answers", as opposed to "we may not ask".
fn daemon_is_down(kind: ErrorKind) -> bool {
    matches!(
        kind,
        ErrorKind::ConnectionRefused
            | ErrorKind::ConnectionReset
            | ErrorKind::ConnectionAborted
            | ErrorKind::BrokenPipe
            | ErrorKind::TimedOut
            | ErrorKind::WouldBlock
            | ErrorKind::UnexpectedEof
    )
}

fn judge_signature_age(
    judgement: &mut Judgement,
    obs: &Observation,
    policy: &AvEdrPolicy,
    now: Timestamp,
) {
    let rule = "av_edr.signature_age";
    let update = "systemctl start clamav-freshclam.service";
    let daily = obs
        .databases
        .iter()
        .find(|it| it.name == "daily")
        .and_then(|it| it.found.as_ref());
    let Some((path, header)) = daily else {
        judgement.rule_with_fix(
            rule,
            Status::Fail,
            format!(
                "no daily signature database (daily.cld, daily.cvd or daily.cud) in {}",
                obs.database_dir.display()
            ),
            update,
            SafetyClass::Safe,
        );
        return;
    };
    let header = match header {
        Ok(it) => it,
        Err(err) => {
            // A damaged database is replaced by the next successful update.
            judgement.rule_with_fix(
                rule,
                Status::Unknown,
                err.to_string(),
                update,
                SafetyClass::Safe,
            );
            return;
        }
    };
    let age = now.as_second() - header.built_at.as_second();
    let what = format!(
        "{} version {} built {} ({} ago)",
        path.display(),
        header.version,
        header.built_at,
        format_age(age)
    );
    match grade_age(age, policy) {
        Some(Status::Pass) => {
            judgement.rule(rule, Status::Pass, what);
        }
        Some(status) => {
            let limit = if status == Status::Warn {
                format!("older than {} h", policy.signature_warn_hours)
            } else {
                format!("older than {} d", policy.signature_fail_days)
            };
            judgement.rule_with_fix(
                rule,
                status,
                format!("{what}: {limit}"),
                update,
                SafetyClass::Safe,
            );
        }
        None => {
            judgement.rule(
                rule,
                Status::Unknown,
                format!("{what}: the build time lies in the future (clock skew?)"),
            );
        }
    }
}

/// Grades a signature age in seconds; `None` when it lies too far in the future to be judged.
fn grade_age(age: i64, policy: &AvEdrPolicy) -> Option<Status> {
    if age < -CLOCK_SKEW_SECONDS {
        return None;
    }
    Some(grade(
        age,
        i64::from(policy.signature_warn_hours) * 3_600,
        i64::from(policy.signature_fail_days) * 86_400,
    ))
}

fn judge_loaded_version(judgement: &mut Judgement, obs: &Observation) {
    let rule = "av_edr.loaded_version";
    let restart = "systemctl restart clamav-daemon.service";
    let reply = match (&obs.ping, &obs.version) {
        (Ok(pong), Some(Ok(reply))) if pong == "PONG" => reply,
        (Ok(pong), Some(Err(err))) if pong == "PONG" => {
            judgement.unknown(rule, err);
            return;
        }
        _ => {
            judgement.rule(
                rule,
                Status::NotApplicable,
                "clamd did not answer (see av_edr.daemon)",
            );
            return;
        }
    };
    let loaded = match parse_clamd_version(reply) {
        Ok(Some(it)) => it,
        Ok(None) => {
            judgement.rule(
                rule,
                Status::NotApplicable,
                "clamd has the VERSION command disabled (EnableVersionCommand no); the loaded version cannot be compared",
            );
            return;
        }
        Err(err) => {
            judgement.unknown(rule, &err);
            return;
        }
    };
    let on_disk = obs
        .databases
        .iter()
        .find(|it| it.name == "daily")
        .and_then(|it| it.found.as_ref())
        .and_then(|(_, header)| header.as_ref().ok());
    let Some(on_disk) = on_disk else {
        judgement.rule(
            rule,
            Status::NotApplicable,
            "no readable daily database on disk to compare with",
        );
        return;
    };
    match loaded.daily {
        Some(version) if version >= on_disk.version => {
            judgement.rule(
                rule,
                Status::Pass,
                format!(
                    "clamd {} has daily {version} loaded; on disk: {}",
                    loaded.engine, on_disk.version
                ),
            );
        }
        Some(version) => {
            judgement.rule_with_fix(
                rule,
                Status::Warn,
                format!(
                    "clamd has not reloaded: daily {version} loaded, {} on disk (clamd {})",
                    on_disk.version, loaded.engine
                ),
                restart,
                SafetyClass::Safe,
            );
        }
        None => {
            judgement.rule_with_fix(
                rule,
                Status::Warn,
                format!(
                    "clamd has not reloaded: it runs without a daily database, {} on disk (clamd {})",
                    on_disk.version, loaded.engine
                ),
                restart,
                SafetyClass::Safe,
            );
        }
    }
}

fn judge_updater(
    judgement: &mut Judgement,
    obs: &Observation,
    policy: &AvEdrPolicy,
    declared: Option<&DeclaredClamav>,
) {
    let rule = "av_edr.updater";
    if !policy.updater_required {
        judgement.rule(
            rule,
            Status::NotApplicable,
            "the baseline does not require a signature updater",
        );
        return;
    }
    if let Some(declared) = declared
        && !declared.updater
    {
        judgement.rule_with_fix(
            rule,
            Status::Fail,
            "services.clamav.updater.enable is false: signatures are never updated",
            "switch to the pinned generation with services.clamav.updater.enable",
            SafetyClass::Disruptive,
        );
        return;
    }
    if declared.is_none() && obs.freshclam_cron {
        judgement.rule(
            rule,
            Status::Pass,
            format!("freshclam runs from cron ({FRESHCLAM_CRON})"),
        );
        return;
    }
    let units = match &obs.freshclam_units {
        Ok(it) => it,
        Err(err) => {
            judgement.unknown(rule, err);
            return;
        }
    };
    let unit = |id: &str| units.iter().find(|it| property(it, "Id") == Some(id));
    let active =
        |id: &str| unit(id).is_some_and(|it| property(it, "ActiveState") == Some("active"));
    let service = unit("clamav-freshclam.service");
    let service_state = service
        .map(|it| {
            (
                property(it, "ActiveState").unwrap_or_default(),
                property(it, "Result").unwrap_or_default(),
            )
        })
        .unwrap_or(("", ""));
    if active("clamav-freshclam.service") {
        judgement.rule(
            rule,
            Status::Pass,
            "clamav-freshclam.service is running (freshclam daemon)",
        );
        return;
    }
    if let Some(timer) = ["clamav-freshclam.timer", "clamav-freshclam-once.timer"]
        .into_iter()
        .find(|it| active(it))
    {
        let (state, result) = service_state;
        if state == "failed" || !(result.is_empty() || result == "success") {
            judgement.rule_with_fix(
                rule,
                Status::Warn,
                format!("{timer} is active but the last freshclam run failed (ActiveState={state}, Result={result})"),
                "systemctl start clamav-freshclam.service",
                SafetyClass::Safe,
            );
        } else {
            judgement.rule(
                rule,
                Status::Pass,
                format!("{timer} is active; last freshclam run Result={result}"),
            );
        }
        return;
    }
    let installed: Vec<String> = units
        .iter()
        .filter(|it| unit_installed(it))
        .map(|it| {
            format!(
                "{} ({}, {})",
                property(it, "Id").unwrap_or_default(),
                property(it, "ActiveState").unwrap_or_default(),
                property(it, "UnitFileState").unwrap_or_default()
            )
        })
        .collect();
    if !installed.is_empty() {
        let timer_based =
            declared.is_some() || unit("clamav-freshclam.timer").is_some_and(unit_installed);
        let action = if timer_based {
            "systemctl start clamav-freshclam.timer"
        } else {
            "systemctl start clamav-freshclam.service"
        };
        judgement.rule_with_fix(
            rule,
            Status::Fail,
            format!(
                "the signature updater is installed but not active: {}",
                installed.join(", ")
            ),
            action,
            SafetyClass::Safe,
        );
    } else if declared.is_some() {
        judgement.rule_with_fix(
            rule,
            Status::Fail,
            "services.clamav.updater is declared but no clamav-freshclam unit is loaded",
            "/run/current-system/bin/switch-to-configuration switch",
            SafetyClass::Safe,
        );
    } else {
        judgement.rule_with_fix(
            rule,
            Status::Fail,
            "no signature updater: no clamav-freshclam unit and no freshclam cron job",
            "install the clamav-freshclam package",
            SafetyClass::NeverAutomatic,
        );
    }
}

fn judge_mdatp(
    judgement: &mut Judgement,
    fact: &Result<Option<MdatpHealth>, FactError>,
    policy: &AvEdrPolicy,
) {
    let health = match fact {
        Ok(Some(it)) => it,
        Ok(None) => return,
        Err(err) => {
            judgement.unknown("av_edr.mdatp_health", err);
            return;
        }
    };
    let rule = "av_edr.mdatp_health";
    if !health.healthy {
        let issues = if health.health_issues.is_empty() {
            "none listed".to_string()
        } else {
            health.health_issues.join(", ")
        };
        judgement.rule_with_fix(
            rule,
            Status::Fail,
            format!("Microsoft Defender reports itself unhealthy (health issues: {issues})"),
            "systemctl restart mdatp.service",
            SafetyClass::Safe,
        );
    } else if health.licensed == Some(false) {
        judgement.rule_with_fix(
            rule,
            Status::Fail,
            "Microsoft Defender is not onboarded (licensed=false)",
            "onboard the device to the Defender tenant (mdatp onboarding package)",
            SafetyClass::NeverAutomatic,
        );
    } else {
        match health.real_time_protection {
            Some(true) => {
                judgement.rule(
                    rule,
                    Status::Pass,
                    format!(
                        "Microsoft Defender {} is healthy with real-time protection enabled",
                        health.app_version.as_deref().unwrap_or("(version unknown)")
                    ),
                );
            }
            Some(false) => {
                judgement.rule_with_fix(
                    rule,
                    Status::Fail,
                    "Microsoft Defender real-time protection is disabled",
                    "mdatp config real-time-protection --value enabled",
                    SafetyClass::Safe,
                );
            }
            None => {
                judgement.rule(
                    rule,
                    Status::Unknown,
                    "mdatp health does not report realTimeProtectionEnabled",
                );
            }
        }
    }
    let rule = "av_edr.mdatp_signature_age";
    let update = "mdatp definitions update";
    let version = health
        .definitions_version
        .as_deref()
        .unwrap_or("(version unknown)");
    let status_text = health.definitions_status.as_deref().unwrap_or("");
    let Some(minutes) = health.definitions_minutes_ago else {
        judgement.rule(
            rule,
            Status::Unknown,
            "mdatp health does not report definitionsUpdatedMinutesAgo",
        );
        return;
    };
    let age = i64::try_from(minutes.saturating_mul(60)).unwrap_or(i64::MAX);
    let what = format!(
        "Defender definitions {version} updated {} ago",
        format_age(age)
    );
    let mut status = grade_age(age, policy).unwrap_or(Status::Unknown);
    let up_to_date = status_text.is_empty()
        || status_text.eq_ignore_ascii_case("upToDate")
        || status_text == "up_to_date";
    if !up_to_date && status == Status::Pass {
        status = Status::Warn;
    }
    if status == Status::Pass {
        judgement.rule(rule, Status::Pass, what);
    } else {
        judgement.rule_with_fix(
            rule,
            status,
            format!("{what} (definitionsStatus {status_text:?})"),
            update,
            SafetyClass::Safe,
        );
    }
}

fn judge_falcon(judgement: &mut Judgement, fact: &Result<Option<FalconState>, FactError>) {
    let rule = "av_edr.falcon";
    match fact {
        Ok(None) => {}
        Ok(Some(state)) if !state.rfm => {
            judgement.rule(
                rule,
                Status::Pass,
                "CrowdStrike Falcon sensor runs in full functionality (rfm-state=false)",
            );
        }
        Ok(Some(state)) => {
            let reason = state.reason.as_deref().unwrap_or("no reason given");
            judgement.rule_with_fix(
                rule,
                Status::Fail,
                format!("CrowdStrike Falcon sensor is in Reduced Functionality Mode ({reason})"),
                "boot a kernel the sensor supports (falcon-kernel-check) or update the sensor",
                SafetyClass::Disruptive,
            );
        }
        Err(err) => {
            judgement.unknown(rule, err);
        }
    }
}

fn expected(policy: &AvEdrPolicy) -> Value {
    json!({
        "av_edr_present": policy.required,
        "clamd_ping_reply": "PONG",
        "signature_age_pass_hours": policy.signature_warn_hours,
        "signature_age_fail_days": policy.signature_fail_days,
        "loaded_daily_version": "at least the on-disk daily version",
        "updater_active": policy.updater_required,
        "mdatp": {"healthy": true, "realTimeProtectionEnabled": true},
        "falcon_rfm_state": false,
    })
}

fn observed(obs: &Observation) -> Value {
    let declared = match &obs.declared {
        Ok(Some(it)) => json!({"daemon": it.daemon, "updater": it.updater, "scanner": it.scanner}),
        Ok(None) => Value::Null,
        Err(err) => json!({"error": err}),
    };
    let clamd_conf = match &obs.clamd_conf {
        Ok(Some(conf)) => json!({
            "LocalSocket": conf.local_socket,
            "TCPSocket": conf.tcp_socket,
            "DatabaseDirectory": conf.database_directory,
        }),
        Ok(None) => Value::Null,
        Err(err) => json!({"error": err.to_string()}),
    };
    let socket = match &obs.socket {
        Ok((path, source)) => json!({"path": path, "source": source}),
        Err(err) => json!({"error": err.to_string()}),
    };
    let databases: Vec<Value> = obs
        .databases
        .iter()
        .map(|it| match &it.found {
            None => json!({"name": it.name, "file": null}),
            Some((path, Ok(header))) => json!({
                "name": it.name,
                "file": path,
                "version": header.version,
                "signatures": header.signatures,
                "functionality_level": header.functionality_level,
                "build_time": header.build_time,
                "built_at": header.built_at.to_string(),
                "stime": header.stime,
                "builder": header.builder,
                "md5": header.md5,
            }),
            Some((path, Err(err))) => {
                json!({"name": it.name, "file": path, "error": err.to_string()})
            }
        })
        .collect();
    let units = match &obs.freshclam_units {
        Ok(units) => systemd::units_json(units),
        Err(err) => json!({"error": err.to_string()}),
    };
    let mdatp = match &obs.mdatp {
        Ok(Some(it)) => json!({
            "healthy": it.healthy,
            "healthIssues": it.health_issues,
            "licensed": it.licensed,
            "realTimeProtectionEnabled": it.real_time_protection,
            "definitionsUpdatedMinutesAgo": it.definitions_minutes_ago,
            "definitionsStatus": it.definitions_status,
            "definitionsVersion": it.definitions_version,
            "appVersion": it.app_version,
        }),
        Ok(None) => json!("not installed"),
        Err(err) => json!({"error": err.to_string()}),
    };
    let falcon = match &obs.falcon {
        Ok(Some(it)) => json!({"rfm_state": it.rfm, "rfm_reason": it.reason}),
        Ok(None) => json!("not installed"),
        Err(err) => json!({"error": err.to_string()}),
    };
    json!({
        "clamav": {
            "declared": declared,
            "clamd_conf": clamd_conf,
            "socket": socket,
            "ping": reply_json(&obs.ping),
            "version": obs.version.as_ref().map(reply_json),
            "database_dir": obs.database_dir,
            "databases": databases,
            "freshclam_units": units,
            "freshclam_cron": obs.freshclam_cron,
        },
        "mdatp": mdatp,
        "falcon": falcon,
    })
}

fn reply_json(reply: &Result<String, FactError>) -> Value {
    match reply {
        Ok(text) => json!(text),
        Err(err) => json!({"error": err.to_string()}),
    }
}

/// Where clamd listens: the agent configuration, else clamd.conf's `LocalSocket`, else the
/// default. A clamd that listens on TCP only is not asked: the agent makes no IP connections.
fn socket_location(
    configured: Option<&Path>,
    conf: &Result<Option<ClamdConf>, FactError>,
) -> Result<(PathBuf, &'static str), FactError> {
    if let Some(path) = configured {
        return Ok((path.to_path_buf(), "agent configuration"));
    }
    if let Ok(Some(conf)) = conf {
        if let Some(socket) = &conf.local_socket {
            let path = PathBuf::from(socket);
            if !path.is_absolute() {
                return Err(FactError::parse(
                    CLAMD_CONF,
                    format!("LocalSocket {socket:?} is not an absolute path"),
                ));
            }
            return Ok((path, "clamd.conf LocalSocket"));
        }
        if conf.tcp_socket.is_some() {
            return Err(FactError::parse(
                CLAMD_CONF,
                "clamd listens on TCPSocket only; the agent talks to clamd on its local socket only",
            ));
        }
    }
    Ok((PathBuf::from(DEFAULT_CLAMD_SOCKET), "default"))
}

/// Parses clamd.conf: `Option value` lines, `#` comments. Never fails: unknown lines are ignored.
fn parse_clamd_conf(text: &str) -> ClamdConf {
    let mut res = ClamdConf {
        local_socket: None,
        tcp_socket: None,
        database_directory: None,
    };
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (key, value) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
        let value = value.trim().trim_matches('"').to_string();
        if value.is_empty() {
            continue;
        }
        // The last occurrence wins, as in clamd's own parser.
        if key.eq_ignore_ascii_case("LocalSocket") {
            res.local_socket = Some(value);
        } else if key.eq_ignore_ascii_case("TCPSocket") {
            res.tcp_socket = Some(value);
        } else if key.eq_ignore_ascii_case("DatabaseDirectory") {
            res.database_directory = Some(value);
        }
    }
    res
}

/// Sends one `z`-command to clamd and returns its reply without the terminating NUL.
///
/// This reads a local fact through a Unix socket of the host (under the root prefix, like any
/// file); it is not network egress and opens no IP connection. The exchange runs on a helper thread so that a clamd that accepts nothing (a full listen
/// backlog blocks `connect`, which has no timeout) cannot stall the check beyond
/// [`CLAMD_DEADLINE`]; such a thread ends when clamd finally answers or goes away.
fn clamd_command(host: &Host, logical: &Path, command: &'static [u8]) -> Result<String, FactError> {
    let real = host.root.real_path(logical)?;
    let (sender, receiver) = mpsc::channel();
    let logical_owned = logical.to_path_buf();
    std::thread::spawn(move || {
        let _ = sender.send(clamd_exchange(&real, &logical_owned, command));
    });
    match receiver.recv_timeout(CLAMD_DEADLINE) {
        Ok(res) => res,
        Err(_) => Err(FactError::Io {
            path: logical.to_path_buf(),
            source: std::io::Error::new(ErrorKind::TimedOut, "clamd did not answer within 5 s"),
        }),
    }
}

fn clamd_exchange(real: &Path, logical: &Path, command: &[u8]) -> Result<String, FactError> {
    let map = |err: std::io::Error| socket_error(logical, err);
    let mut stream = UnixStream::connect(real).map_err(map)?;
    stream
        .set_read_timeout(Some(CLAMD_IO_TIMEOUT))
        .map_err(map)?;
    stream
        .set_write_timeout(Some(CLAMD_IO_TIMEOUT))
        .map_err(map)?;
    stream.write_all(command).map_err(map)?;
    let mut reply = Vec::new();
    let mut chunk = [0u8; 256];
    // Each pass either adds bytes (bounded by the reply limit) or ends: a read times out after
    // CLAMD_IO_TIMEOUT, so the loop is bounded.
    loop {
        let n = match stream.read(&mut chunk) {
            Ok(n) => n,
            Err(err) if err.kind() == ErrorKind::Interrupted => continue,
            Err(err) => return Err(map(err)),
        };
        if n == 0 {
            break;
        }
        reply.extend_from_slice(&chunk[..n]);
        if let Some(end) = reply.iter().position(|it| *it == 0) {
            reply.truncate(end);
            break;
        }
        if reply.len() > CLAMD_REPLY_LIMIT {
            return Err(FactError::parse(
                "clamd reply",
                format!("longer than {CLAMD_REPLY_LIMIT} bytes"),
            ));
        }
    }
    if reply.is_empty() {
        return Err(socket_error(
            logical,
            std::io::Error::new(ErrorKind::UnexpectedEof, "clamd closed without a reply"),
        ));
    }
    Ok(String::from_utf8_lossy(&reply).trim_end().to_string())
}

fn socket_error(logical: &Path, err: std::io::Error) -> FactError {
    let path = logical.to_path_buf();
    match err.kind() {
        ErrorKind::NotFound => FactError::NotFound { path },
        ErrorKind::PermissionDenied => FactError::PermissionDenied { path },
        _ => FactError::Io { path, source: err },
    }
}

/// clamd's VERSION reply.
struct ClamdVersion {
    engine: String,
    daily: Option<u64>,
}

/// Parses `ClamAV <engine>[/<daily version>/<daily build date>]`; `Ok(None)` for
/// `COMMAND UNAVAILABLE` (VERSION disabled in clamd.conf).
fn parse_clamd_version(reply: &str) -> Result<Option<ClamdVersion>, FactError> {
    let reply = reply.trim();
    if reply.eq_ignore_ascii_case("COMMAND UNAVAILABLE") {
        return Ok(None);
    }
    let bad = || {
        FactError::parse(
            "clamd VERSION reply",
            format!(
                "{:?} is not `ClamAV <engine>/<daily>/<date>`",
                excerpt(reply)
            ),
        )
    };
    let rest = reply.strip_prefix("ClamAV ").ok_or_else(bad)?;
    let mut parts = rest.splitn(3, '/');
    let engine = parts.next().unwrap_or_default().trim();
    if engine.is_empty() {
        return Err(bad());
    }
    let daily = match parts.next() {
        Some(version) => Some(version.trim().parse::<u64>().map_err(|_| bad())?),
        None => None,
    };
    Ok(Some(ClamdVersion {
        engine: engine.to_string(),
        daily,
    }))
}

fn read_database(host: &Host, dir: &Path, name: &'static str) -> Database {
    for extension in DATABASE_EXTENSIONS {
        let path = dir.join(format!("{name}.{extension}"));
        match host.root.read_prefix(&path, CVD_HEADER_LEN as u64) {
            Ok(bytes) => {
                let header = parse_cvd_header(&bytes)
                    .map_err(|message| FactError::parse(path.display().to_string(), message));
                return Database {
                    name,
                    found: Some((path, header)),
                };
            }
            Err(err) if err.is_absent() => continue,
            Err(err) => {
                return Database {
                    name,
                    found: Some((path, Err(err))),
                };
            }
        }
    }
    Database { name, found: None }
}

/// Parses the 512-byte header of a ClamAV database (`.cvd`, `.cld`, `.cud`). Never panics.
fn parse_cvd_header(bytes: &[u8]) -> Result<CvdHeader, String> {
    if bytes.len() < CVD_HEADER_LEN {
        return Err(format!(
            "header truncated: {} of {CVD_HEADER_LEN} bytes",
            bytes.len()
        ));
    }
    let head = std::str::from_utf8(&bytes[..CVD_HEADER_LEN])
        .map_err(|_| "header is not text".to_string())?;
    let head = head.trim_end_matches([' ', '\0', '\n', '\r']);
    let fields: Vec<&str> = head.split(':').collect();
    if fields.first() != Some(&"ClamAV-VDB") {
        return Err("not a ClamAV database (no ClamAV-VDB header)".to_string());
    }
    if fields.len() < 8 {
        return Err(format!(
            "header has {} fields, expected at least 8",
            fields.len()
        ));
    }
    let number = |idx: usize, what: &str| -> Result<u64, String> {
        fields[idx]
            .trim()
            .parse::<u64>()
            .map_err(|_| format!("{what} {:?} is not a number", excerpt(fields[idx])))
    };
    let version = number(2, "version")?;
    let signatures = number(3, "signature count")?;
    let functionality_level = u32::try_from(number(4, "functionality level")?)
        .map_err(|_| "functionality level out of range".to_string())?;
    let build_time = fields[1].trim().to_string();
    let stime = fields
        .get(8)
        .and_then(|it| it.trim().parse::<i64>().ok())
        .filter(|it| *it > 0);
    let built_at = match stime {
        Some(seconds) => {
            Timestamp::from_second(seconds).map_err(|err| format!("build time {seconds}: {err}"))?
        }
        None => parse_build_time(&build_time)?,
    };
    Ok(CvdHeader {
        build_time,
        version,
        signatures,
        functionality_level,
        md5: fields[5].trim().to_string(),
        builder: fields[7].trim().to_string(),
        stime,
        built_at,
    })
}

/// Parses a header's build time text, `27 Nov 2026 07-43 +0000` (sigtool writes `%d %b %Y %H-%M %z`;
/// the hyphen keeps the colon-separated header parseable).
fn parse_build_time(text: &str) -> Result<Timestamp, String> {
    let bad = || {
        format!(
            "build time {:?} is not `DD Mon YYYY HH-MM +ZZZZ`",
            excerpt(text)
        )
    };
    let parts: Vec<&str> = text.split_whitespace().collect();
    let [day, month, year, clock, offset] = parts.as_slice() else {
        return Err(bad());
    };
    let digits = |it: &str, max_len: usize| -> Result<i16, String> {
        if it.is_empty() || it.len() > max_len || !it.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        it.parse::<i16>().map_err(|_| bad())
    };
    let day = i8::try_from(digits(day, 2)?).map_err(|_| bad())?;
    let month = MONTHS
        .iter()
        .position(|it| it.eq_ignore_ascii_case(month))
        .ok_or_else(bad)?;
    let month = i8::try_from(month + 1).map_err(|_| bad())?;
    let year = digits(year, 4)?;
    let (hour, minute) = clock.split_once('-').ok_or_else(bad)?;
    let hour = i8::try_from(digits(hour, 2)?).map_err(|_| bad())?;
    let minute = i8::try_from(digits(minute, 2)?).map_err(|_| bad())?;
    let (sign, zone) = match offset.split_at_checked(1) {
        Some(("+", zone)) => (1, zone),
        Some(("-", zone)) => (-1, zone),
        _ => return Err(bad()),
    };
    if zone.len() != 4 {
        return Err(bad());
    }
    let zone = digits(zone, 4)?;
    let offset_seconds = sign * (i32::from(zone / 100) * 3_600 + i32::from(zone % 100) * 60);
    let date = Date::new(year, month, day).map_err(|err| format!("{}: {err}", bad()))?;
    let time = Time::new(hour, minute, 0, 0).map_err(|err| format!("{}: {err}", bad()))?;
    let offset = Offset::from_seconds(offset_seconds).map_err(|err| format!("{}: {err}", bad()))?;
    let zoned = DateTime::from_parts(date, time)
        .to_zoned_datetime(TimeZone::fixed(offset))
        .map_err(|err| format!("{}: {err}", bad()))?;
    Ok(zoned.timestamp())
}

/// `systemctl show` of the freshclam units.
fn systemctl_show(host: &Host) -> Result<Vec<Properties>, FactError> {
    let mut args = vec!["show"];
    args.extend(FRESHCLAM_UNITS);
    args.push("--property=Id,ActiveState,UnitFileState,Result");
    let invocation = Invocation::new("systemctl-show-freshclam", "systemctl", &args);
    let out = host.run(&invocation)?.success(&invocation)?;
    systemd::parse_show_units(&out.stdout_text())
}

/// A unit whose file exists (an empty UnitFileState means "not found") or that runs anyway.
fn unit_installed(unit: &Properties) -> bool {
    property(unit, "UnitFileState").is_some_and(|it| !it.is_empty())
        || property(unit, "ActiveState") == Some("active")
}

/// `mdatp health --output json`. The JSON spelling is camelCase, settings that a policy can
/// manage are objects `{"value": …, "scope": …}` and enumerations are `{"$type": …}`; the text
/// output's snake_case names are accepted too so either form of a recording parses.
#[derive(Deserialize)]
struct MdatpJson {
    healthy: Option<bool>,
    #[serde(rename = "healthIssues", alias = "health_issues", default)]
    health_issues: Vec<Value>,
    licensed: Option<Value>,
    #[serde(
        rename = "realTimeProtectionEnabled",
        alias = "real_time_protection_enabled"
    )]
    real_time_protection: Option<Value>,
    #[serde(
        rename = "definitionsUpdatedMinutesAgo",
        alias = "definitions_updated_minutes_ago"
    )]
    definitions_minutes_ago: Option<Value>,
    #[serde(rename = "definitionsStatus", alias = "definitions_status")]
    definitions_status: Option<Value>,
    #[serde(rename = "appVersion", alias = "app_version")]
    app_version: Option<Value>,
    #[serde(rename = "definitionsVersion", alias = "definitions_version")]
    definitions_version: Option<Value>,
}

fn parse_mdatp_health(bytes: &[u8]) -> Result<MdatpHealth, FactError> {
    let raw: MdatpJson = serde_json::from_slice(bytes)
        .map_err(|err| FactError::parse("mdatp health --output json", err))?;
    let healthy = raw
        .healthy
        .ok_or_else(|| FactError::parse("mdatp health --output json", "no `healthy` field"))?;
    Ok(MdatpHealth {
        healthy,
        health_issues: raw.health_issues.iter().map(scalar_text).collect(),
        licensed: raw.licensed.as_ref().and_then(managed_bool),
        real_time_protection: raw.real_time_protection.as_ref().and_then(managed_bool),
        definitions_minutes_ago: raw
            .definitions_minutes_ago
            .as_ref()
            .and_then(|it| match it {
                Value::Number(n) => n.as_u64(),
                Value::String(s) => s.trim().parse().ok(),
                _ => None,
            }),
        definitions_status: raw.definitions_status.as_ref().map(|it| match it {
            Value::Object(map) => map
                .get("$type")
                .map(scalar_text)
                .unwrap_or_else(|| it.to_string()),
            other => scalar_text(other),
        }),
        app_version: raw.app_version.as_ref().map(scalar_text),
        definitions_version: raw.definitions_version.as_ref().map(scalar_text),
    })
}

/// A boolean that may be wrapped as `{"value": true, "scope": "managed"}`.
fn managed_bool(value: &Value) -> Option<bool> {
    match value {
        Value::Bool(it) => Some(*it),
        Value::Object(map) => map.get("value").and_then(Value::as_bool),
        _ => None,
    }
}

fn scalar_text(value: &Value) -> String {
    match value {
        Value::String(it) => it.clone(),
        other => other.to_string(),
    }
}

/// Parses `falconctl -g --rfm-state`: `rfm-state=false.`, or `rfm-state=true.` possibly
/// followed by `rfm-reason=<text>, code=0x…`.
fn parse_falcon_rfm(text: &str) -> Result<FalconState, FactError> {
    let bad = || {
        FactError::parse(
            "falconctl -g --rfm-state",
            format!("no rfm-state in {:?}", excerpt(text)),
        )
    };
    let start = text.find("rfm-state=").ok_or_else(bad)?;
    let value: String = text[start + "rfm-state=".len()..]
        .chars()
        .take_while(|it| it.is_ascii_alphabetic())
        .collect();
    let rfm = match value.to_ascii_lowercase().as_str() {
        "true" => true,
        "false" => false,
        _ => return Err(bad()),
    };
    let reason = text.find("rfm-reason=").map(|at| {
        let rest = &text[at + "rfm-reason=".len()..];
        rest.lines()
            .next()
            .unwrap_or_default()
            .trim()
            .trim_end_matches('.')
            .to_string()
    });
    Ok(FalconState { rfm, reason })
}

/// At most 80 characters of a foreign string, for messages.
fn excerpt(text: &str) -> String {
    let mut res: String = text.chars().take(80).collect();
    if text.chars().count() > 80 {
        res.push('…');
    }
    res
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};
    use std::process::{Command, Stdio};
    use std::time::{Duration, Instant};

    use msp_compliance_protocol::finding::Status;
    use proptest::prelude::*;

    use super::*;
    use crate::checks::testing::{
        KillOnDrop, assert_finding, check_fixture, copy_tree, default_paths, fixture_root, host_at,
        real_tools, rule, run_on, ts,
    };

    // Fixture formats (see tests/fixtures/av_edr/README.md for each file's source):
    // clamd.conf as Debian's clamav-daemon postinst writes it, database headers in the layout
    // sigtool writes (cross-checked against the real sigtool below), `systemctl show` blocks as
    // systemd prints them, `mdatp health --output json` in its camelCase JSON form.
    const NOW: &str = "2026-11-27T12:00:00Z";

    #[test]
    fn clamav_fresh_without_a_running_clamd_fails_only_the_daemon_rule() {
        // The daemon cannot be recorded; a recorded tree has no socket, so the daemon fails.
        // The passing case with a live clamd is `real_clamd_answers_then_dies` below.
        let finding = check_fixture(
            &AvEdr,
            "clamav-fresh",
            NOW,
            Status::Fail,
            &[
                ("av_edr.present", Status::Pass),
                ("av_edr.daemon", Status::Fail),
                ("av_edr.signature_age", Status::Pass),
                ("av_edr.loaded_version", Status::NotApplicable),
                ("av_edr.updater", Status::Pass),
            ],
        );
        assert_eq!(finding.observed["clamav"]["databases"][0]["version"], 27835);
        assert_eq!(
            finding.observed["clamav"]["socket"]["source"],
            "clamd.conf LocalSocket"
        );
        assert!(
            finding
                .fixes
                .iter()
                .any(|it| it.action == "systemctl restart clamav-daemon.service")
        );
    }

    #[test]
    fn clamav_signature_age_grades_with_time() {
        // daily.cld of the fixture was built 2026-11-27 07:43 UTC.
        for (now, status) in [
            ("2026-11-29T07:43:00Z", Status::Pass),
            ("2026-11-29T08:00:00Z", Status::Warn),
            ("2026-12-04T07:43:00Z", Status::Warn),
            ("2026-12-04T08:00:00Z", Status::Fail),
            ("2026-11-27T06:00:00Z", Status::Unknown),
        ] {
            check_fixture(
                &AvEdr,
                "clamav-fresh",
                now,
                Status::Fail,
                &[("av_edr.signature_age", status)],
            );
        }
    }

    #[test]
    fn clamav_stale_database_fails() {
        let finding = check_fixture(
            &AvEdr,
            "clamav-stale-db",
            NOW,
            Status::Fail,
            &[
                ("av_edr.signature_age", Status::Fail),
                ("av_edr.updater", Status::Fail),
            ],
        );
        let message = &rule(&finding, "av_edr.signature_age").message;
        assert!(
            message.contains("daily.cld version 27826") && message.contains("older than 7 d"),
            "{message}"
        );
        assert!(
            finding
                .fixes
                .iter()
                .any(|it| it.action == "systemctl start clamav-freshclam.service")
        );
    }

    #[test]
    fn nothing_installed_fails() {
        let finding = check_fixture(
            &AvEdr,
            "nothing-installed",
            NOW,
            Status::Fail,
            &[("av_edr.present", Status::Fail)],
        );
        assert_eq!(finding.results.len(), 1, "no ClamAV rules without ClamAV");
        assert_eq!(finding.fixes[0].safety, SafetyClass::NeverAutomatic);
    }

    #[test]
    fn nothing_installed_is_not_applicable_when_not_required() {
        let host = host_at(
            &fixture_root("av_edr", "nothing-installed"),
            default_paths(),
        );
        let baseline = Baseline::parse(
            Path::new("b.yaml"),
            b"id: x\nversion: '1'\nchecks:\n  av_edr:\n    required: false\n",
        )
        .unwrap();
        let finding = run_on(&AvEdr, &host, &baseline, ts(NOW));
        assert_finding(
            &finding,
            Status::NotApplicable,
            &[("av_edr.present", Status::NotApplicable)],
        );
    }

    #[test]
    fn mdatp_healthy_passes() {
        check_fixture(
            &AvEdr,
            "mdatp-healthy",
            NOW,
            Status::Pass,
            &[
                ("av_edr.present", Status::Pass),
                ("av_edr.mdatp_health", Status::Pass),
                ("av_edr.mdatp_signature_age", Status::Pass),
            ],
        );
    }

    #[test]
    fn mdatp_unreadable_is_unknown() {
        check_fixture(
            &AvEdr,
            "mdatp-unreadable",
            NOW,
            Status::Unknown,
            &[
                ("av_edr.present", Status::Pass),
                ("av_edr.mdatp_health", Status::Unknown),
            ],
        );
    }

    #[test]
    fn falcon_in_reduced_functionality_mode_fails() {
        let finding = check_fixture(
            &AvEdr,
            "falcon-rfm",
            NOW,
            Status::Fail,
            &[
                ("av_edr.present", Status::Pass),
                ("av_edr.falcon", Status::Fail),
            ],
        );
        assert!(
            finding.summary.contains("Modules file was not found"),
            "{}",
            finding.summary
        );
    }

    #[test]
    fn corrupt_header_is_unknown_with_reason() {
        let finding = check_fixture(
            &AvEdr,
            "corrupt-header",
            NOW,
            Status::Fail,
            &[
                ("av_edr.signature_age", Status::Unknown),
                ("av_edr.daemon", Status::Fail),
            ],
        );
        let message = &rule(&finding, "av_edr.signature_age").message;
        assert!(
            message.contains("version \"27x35\" is not a number"),
            "{message}"
        );
    }

    #[test]
    fn nixos_declared_timer_updater_passes() {
        check_fixture(
            &AvEdr,
            "nixos-timer",
            NOW,
            Status::Fail,
            &[
                ("av_edr.present", Status::Pass),
                ("av_edr.updater", Status::Pass),
                ("av_edr.signature_age", Status::Pass),
                ("av_edr.daemon", Status::Fail),
            ],
        );
    }

    #[test]
    fn configured_socket_overrides_clamd_conf() {
        let mut paths = default_paths();
        paths.clamd_socket = Some(PathBuf::from("/srv/clamd/socket"));
        let host = host_at(&fixture_root("av_edr", "clamav-fresh"), paths);
        let finding = run_on(&AvEdr, &host, &Baseline::embedded(), ts(NOW));
        assert_eq!(
            finding.observed["clamav"]["socket"]["path"],
            "/srv/clamd/socket"
        );
        let daemon = rule(&finding, "av_edr.daemon");
        assert!(
            daemon.message.contains("/srv/clamd/socket does not exist"),
            "{}",
            daemon.message
        );
    }

    #[test]
    fn header_parser_reads_real_layouts() {
        let header = pad(
            "ClamAV-VDB:27 Nov 2026 07-43 +0000:27835:2077865:90:0c1d7b3c2c8cb08ac6b3dde0d5e7f4c1:sig:svc.clamav-publisher:1795765380",
        );
        let parsed = parse_cvd_header(&header).unwrap();
        assert_eq!(
            (
                parsed.version,
                parsed.signatures,
                parsed.functionality_level
            ),
            (27835, 2077865, 90)
        );
        assert_eq!(parsed.built_at, ts("2026-11-27T07:43:00Z"));
        // Old files have no stime: field 2 is parsed, with its offset.
        let old = pad("ClamAV-VDB:09 Mar 2007 15-50 +0100:3000:100:10:md5:sig:tkojm");
        assert_eq!(
            parse_cvd_header(&old).unwrap().built_at,
            ts("2007-03-09T14:50:00Z")
        );
        for (bad, why) in [
            (pad("ClamAV-VDB:27 Nov 2026 07-43 +0000:27835"), "fields"),
            (pad("XClamAV-VDB:x:1:2:3:4:5:6:7"), "no ClamAV-VDB"),
            (
                b"ClamAV-VDB:27 Nov 2026 07-43 +0000:1:2:3:4:5:6:7".to_vec(),
                "truncated",
            ),
            (
                pad("ClamAV-VDB:31 Feb 2026 07-43 +0000:1:2:3:md5:sig:b"),
                "build time",
            ),
            (
                pad("ClamAV-VDB:27 Nov 2026 07-43 +0000:1:2:99999999999:md5:sig:b:1"),
                "out of range",
            ),
        ] {
            let err = parse_cvd_header(&bad).unwrap_err();
            assert!(err.contains(why), "{err:?} should mention {why:?}");
        }
    }

    #[test]
    fn version_and_rfm_replies_parse() {
        let v = parse_clamd_version("ClamAV 1.4.6/27835/Fri Nov 27 15:43:57 2026")
            .unwrap()
            .unwrap();
        assert_eq!((v.engine.as_str(), v.daily), ("1.4.6", Some(27835)));
        assert_eq!(
            parse_clamd_version("ClamAV 1.4.6").unwrap().unwrap().daily,
            None
        );
        assert!(
            parse_clamd_version("COMMAND UNAVAILABLE")
                .unwrap()
                .is_none()
        );
        assert!(parse_clamd_version("ClamAV 1.4.6/x/y").is_err());
        assert!(!parse_falcon_rfm("rfm-state=false.\n").unwrap().rfm);
        let rfm = parse_falcon_rfm(
            "rfm-state=true.\nrfm-reason=Modules file was not found, code=0xC0000034.\n",
        )
        .unwrap();
        assert!(rfm.rfm);
        assert_eq!(
            rfm.reason.as_deref(),
            Some("Modules file was not found, code=0xC0000034")
        );
        assert!(parse_falcon_rfm("rfm-state is not set.").is_err());
    }

    fn pad(text: &str) -> Vec<u8> {
        let mut res = text.as_bytes().to_vec();
        res.resize(CVD_HEADER_LEN.max(res.len()), b' ');
        res
    }

    fn observation_with_daily(header: Result<CvdHeader, FactError>) -> Observation {
        Observation {
            declared: Ok(None),
            clamd_conf: Ok(None),
            socket_configured: false,
            socket: Ok((PathBuf::from(DEFAULT_CLAMD_SOCKET), "default")),
            ping: Ok("PONG".to_string()),
            version: Some(Ok("ClamAV 1.4.6".to_string())),
            database_dir: PathBuf::from("/var/lib/clamav"),
            databases: vec![Database {
                name: "daily",
                found: Some((PathBuf::from("/var/lib/clamav/daily.cld"), header)),
            }],
            freshclam_units: Ok(Vec::new()),
            freshclam_cron: true,
            mdatp: Ok(None),
            falcon: Ok(None),
        }
    }

    proptest! {
        #[test]
        fn header_parser_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..700)) {
            let res = parse_cvd_header(&bytes);
            if !bytes.starts_with(b"ClamAV-VDB:") {
                prop_assert!(res.is_err());
            }
        }

        #[test]
        fn garbage_headers_never_pass(tail in "[ -~]{0,600}") {
            let bytes = pad(&format!("ClamAV-VDB:{tail}"));
            let header = parse_cvd_header(&bytes).map_err(|it| FactError::parse("daily.cld", it));
            let now = ts(NOW);
            let parsed_fresh = header.as_ref().is_ok_and(|it| (now.as_second() - it.built_at.as_second()).abs() <= 48 * 3_600);
            let judgement = AvEdr.judge(&observation_with_daily(header), &Baseline::embedded(), now);
            let age = judgement.results.iter().find(|it| it.rule == "av_edr.signature_age").unwrap();
            // Only a header that really parses to a recent build time may pass.
            prop_assert!(age.status != Status::Pass || parsed_fresh);
        }

        #[test]
        fn foreign_replies_never_panic(text in "\\PC{0,200}", bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = parse_clamd_version(&text);
            let _ = parse_falcon_rfm(&text);
            let _ = parse_clamd_conf(&text);
            let _ = systemd::parse_show_units(&text);
            let _ = parse_mdatp_health(&bytes);
            let _ = parse_mdatp_health(text.as_bytes());
            let _ = parse_build_time(&text);
        }
    }

    // ---- Real tools (clamd, sigtool), gated by MSP_REAL_TOOLS=1. ----

    /// Builds a ClamAV database in the unsigned container format (`.cud`): the 512-byte header,
    /// then a gzip'ed tar holding `<name>.info` (the header line and one line per file with its
    /// size and SHA-256) and one hash signature file. clamd and sigtool accept `.cud` without a
    /// digital signature; they refuse our `.cld`/`.cvd` because only ClamAV can sign those.
    fn write_cud(dir: &Path, name: &str, version: u64, stime: i64) -> PathBuf {
        let work = tempfile::tempdir().unwrap();
        let build_time = build_time_text(stime);
        let header = format!(
            "ClamAV-VDB:{build_time}:{version}:1:90:00000000000000000000000000000000:none:msp-test:{stime}"
        );
        let hdb = b"44d88612fea8a8f36de82e1278abb02f:68:Msp.Test.Eicar.Hash\n";
        std::fs::write(work.path().join(format!("{name}.hdb")), hdb).unwrap();
        let sha256 = sha256_hex(hdb);
        let info = format!("{header}\n{name}.hdb:{}:{sha256}\n", hdb.len());
        std::fs::write(work.path().join(format!("{name}.info")), info).unwrap();
        let tar = work.path().join("db.tar.gz");
        let status = Command::new("tar")
            .args(["--format=ustar", "--owner=0", "--group=0", "-czf"])
            .arg(&tar)
            .arg("-C")
            .arg(work.path())
            .args([format!("{name}.info"), format!("{name}.hdb")])
            .status()
            .unwrap();
        assert!(status.success());
        let mut bytes = pad(&header);
        bytes.extend(std::fs::read(&tar).unwrap());
        let path = dir.join(format!("{name}.cud"));
        std::fs::write(&path, bytes).unwrap();
        path
    }

    fn sha256_hex(bytes: &[u8]) -> String {
        use sha2::{Digest, Sha256};
        hex::encode(Sha256::digest(bytes))
    }

    /// `%d %b %Y %H-%M %z` in UTC, as sigtool writes it.
    fn build_time_text(stime: i64) -> String {
        let dt = Timestamp::from_second(stime)
            .unwrap()
            .to_zoned_datetime(TimeZone::UTC);
        format!(
            "{:02} {} {} {:02}-{:02} +0000",
            dt.day(),
            MONTHS[usize::try_from(dt.month() - 1).unwrap()],
            dt.year(),
            dt.hour(),
            dt.minute()
        )
    }

    /// Starts `/usr/sbin/clamd` in the foreground with our own configuration and waits (at most
    /// 30 s) until it answers PING on `socket`. Dropping the guard kills clamd with SIGKILL, so
    /// its socket file stays behind as after a crash.
    fn start_clamd(work: &Path, socket: &Path, database_dir: &Path) -> KillOnDrop {
        let conf = work.join("clamd-test.conf");
        std::fs::write(
            &conf,
            format!(
                "Foreground yes\nLocalSocket {}\nDatabaseDirectory {}\nLogFile {}\nPidFile {}\nTemporaryDirectory {}\nSelfCheck 3600\n",
                socket.display(),
                database_dir.display(),
                work.join("clamd.log").display(),
                work.join("clamd.pid").display(),
                work.display(),
            ),
        )
        .unwrap();
        let child = Command::new("/usr/sbin/clamd")
            .arg("-c")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut clamd = KillOnDrop(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(reply) = clamd_exchange(socket, socket, b"zPING\0")
                && reply == "PONG"
            {
                return clamd;
            }
            if let Ok(Some(status)) = clamd.0.try_wait() {
                let log = std::fs::read_to_string(work.join("clamd.log")).unwrap_or_default();
                panic!("clamd exited with {status} before answering:\n{log}");
            }
            assert!(
                Instant::now() < deadline,
                "clamd did not answer PING within 30 s"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    #[test]
    fn real_clamd_answers_then_dies() {
        if !real_tools("real_clamd_answers_then_dies") {
            return;
        }
        // The clamav-fresh fixture (Debian clamd.conf with LocalSocket /run/clamav/clamd.ctl,
        // recorded freshclam units) copied into a root where a real clamd listens on that socket.
        let root = tempfile::tempdir().unwrap();
        let base = root.path();
        copy_tree(&fixture_root("av_edr", "clamav-fresh"), base);
        let database_dir = base.join("var/lib/clamav");
        for entry in std::fs::read_dir(&database_dir).unwrap() {
            std::fs::remove_file(entry.unwrap().path()).unwrap();
        }
        let now = Timestamp::now();
        write_cud(&database_dir, "daily", 27900, now.as_second() - 3_600);
        std::fs::create_dir_all(base.join("run/clamav")).unwrap();
        let socket = base.join("run/clamav/clamd.ctl");
        let clamd = start_clamd(base, &socket, &database_dir);

        let host = host_at(base, default_paths());
        let finding = run_on(&AvEdr, &host, &Baseline::embedded(), now);
        assert_finding(
            &finding,
            Status::Pass,
            &[
                ("av_edr.present", Status::Pass),
                ("av_edr.daemon", Status::Pass),
                ("av_edr.signature_age", Status::Pass),
                ("av_edr.loaded_version", Status::Pass),
                ("av_edr.updater", Status::Pass),
            ],
        );
        let version = finding.observed["clamav"]["version"]
            .as_str()
            .unwrap()
            .to_string();
        assert!(
            version.starts_with("ClamAV ") && version.contains("/27900/"),
            "{version}"
        );

        // A newer database on disk that clamd has not loaded yet: warn until clamd reloads.
        std::fs::remove_file(database_dir.join("daily.cud")).unwrap();
        write_cud(&database_dir, "daily", 27901, now.as_second() - 60);
        let finding = run_on(&AvEdr, &host, &Baseline::embedded(), now);
        assert_finding(
            &finding,
            Status::Warn,
            &[("av_edr.loaded_version", Status::Warn)],
        );
        // The test (never the agent) asks clamd to reload, then waits for the new version.
        assert_eq!(
            clamd_exchange(&socket, &socket, b"zRELOAD\0").unwrap(),
            "RELOADING"
        );
        let deadline = Instant::now() + Duration::from_secs(30);
        while !clamd_exchange(&socket, &socket, b"zVERSION\0")
            .is_ok_and(|it| it.contains("/27901/"))
        {
            assert!(
                Instant::now() < deadline,
                "clamd did not reload within 30 s"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        let finding = run_on(&AvEdr, &host, &Baseline::embedded(), now);
        assert_finding(
            &finding,
            Status::Pass,
            &[("av_edr.loaded_version", Status::Pass)],
        );

        // clamd killed: the stale socket refuses connections and the daemon rule fails.
        drop(clamd);
        let finding = run_on(&AvEdr, &host, &Baseline::embedded(), now);
        assert_finding(
            &finding,
            Status::Fail,
            &[
                ("av_edr.daemon", Status::Fail),
                ("av_edr.loaded_version", Status::NotApplicable),
            ],
        );
    }

    #[test]
    fn real_clamd_through_a_configured_socket_on_the_live_root() {
        if !real_tools("real_clamd_through_a_configured_socket_on_the_live_root") {
            return;
        }
        // As the brief's host: the live root, the socket named in the agent configuration.
        let work = tempfile::tempdir().unwrap();
        let database_dir = work.path().join("db");
        std::fs::create_dir_all(&database_dir).unwrap();
        let now = Timestamp::now();
        write_cud(&database_dir, "daily", 27950, now.as_second() - 7_200);
        let socket = work.path().join("clamd.ctl");
        let clamd = start_clamd(work.path(), &socket, &database_dir);
        let host = crate::facts::Host::new(
            crate::facts::fs::Root::live(),
            crate::facts::command::CommandSource::Disabled("no commands in this test".into()),
            crate::facts::probe::ProbeSource::Recorded(work.path().join("none")),
            Path::new("/nonexistent/declared.json"),
            crate::facts::HostPaths {
                clamd_socket: Some(socket.clone()),
                clamav_database_dir: database_dir.clone(),
                ..default_paths()
            },
        );
        let observation = AvEdr.observe(&host, &Baseline::embedded());
        assert_eq!(observation.ping.as_deref().ok(), Some("PONG"));
        let version = observation.version.as_ref().unwrap().as_deref().unwrap();
        assert!(version.contains("/27950/"), "{version}");
        let judgement = AvEdr.judge(&observation, &Baseline::embedded(), now);
        let status = |rule: &str| {
            judgement
                .results
                .iter()
                .find(|it| it.rule == rule)
                .map(|it| it.status)
        };
        assert_eq!(status("av_edr.daemon"), Some(Status::Pass));
        assert_eq!(status("av_edr.loaded_version"), Some(Status::Pass));
        assert_eq!(status("av_edr.signature_age"), Some(Status::Pass));
        drop(clamd);
        let judgement = AvEdr.judge(
            &AvEdr.observe(&host, &Baseline::embedded()),
            &Baseline::embedded(),
            now,
        );
        let daemon = judgement
            .results
            .iter()
            .find(|it| it.rule == "av_edr.daemon")
            .unwrap();
        assert_eq!(daemon.status, Status::Fail, "{}", daemon.message);
    }

    /// What `sigtool --info` printed: its header fields and whether it accepted the file.
    struct SigtoolInfo {
        fields: Vec<(String, String)>,
        accepted: bool,
        stderr: String,
    }

    fn sigtool_info(path: &Path) -> SigtoolInfo {
        let out = Command::new("/usr/bin/sigtool")
            .arg("--info")
            .arg(path)
            .env("LC_ALL", "C")
            .output()
            .unwrap();
        let fields = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|line| {
                line.split_once(": ")
                    .map(|(k, v)| (k.to_string(), v.to_string()))
            })
            .collect();
        SigtoolInfo {
            fields,
            accepted: out.status.success(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    #[test]
    fn real_sigtool_agrees_with_our_header_parser() {
        if !real_tools("real_sigtool_agrees_with_our_header_parser") {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let stime = 1_795_765_380; // 2026-11-27 07:43 UTC
        let cud = write_cud(dir.path(), "daily", 27835, stime);
        let body = std::fs::read(&cud).unwrap();
        // The same header in front of the same body as .cvd and .cld (an uncompressed tar in a
        // real .cld; sigtool prints the header before it looks at the body).
        let cvd = dir.path().join("daily.cvd");
        std::fs::write(&cvd, &body).unwrap();
        let cld = dir.path().join("main.cld");
        std::fs::write(&cld, &body).unwrap();
        // An old-format header without stime.
        let old = dir.path().join("bytecode.cvd");
        let mut old_body = pad(
            "ClamAV-VDB:09 Mar 2007 15-50 +0100:3000:100:10:d41d8cd98f00b204e9800998ecf8427e:sig:tkojm",
        );
        old_body.extend_from_slice(&body[CVD_HEADER_LEN..]);
        std::fs::write(&old, &old_body).unwrap();

        for (path, expect_accepted) in [(&cud, true), (&cvd, false), (&cld, false), (&old, false)] {
            let info = sigtool_info(path);
            // sigtool accepts only the unsigned container: a .cvd needs ClamAV's digital
            // signature over its MD5, a .cld's daily.info needs a DSIG line.
            assert_eq!(
                info.accepted,
                expect_accepted,
                "{}: {}",
                path.display(),
                info.stderr
            );
            let ours = parse_cvd_header(&std::fs::read(path).unwrap()).unwrap();
            let field = |key: &str| {
                info.fields
                    .iter()
                    .find(|(k, _)| k == key)
                    .map(|(_, v)| v.clone())
                    .unwrap_or_default()
            };
            assert_eq!(field("Version"), ours.version.to_string());
            assert_eq!(field("Signatures"), ours.signatures.to_string());
            assert_eq!(
                field("Functionality level"),
                ours.functionality_level.to_string()
            );
            assert_eq!(field("Builder"), ours.builder);
            // sigtool shows the build time text with the hyphen turned back into a colon.
            assert_eq!(field("Build time"), ours.build_time.replacen('-', ":", 1));
            if path.extension().is_some_and(|it| it == "cvd") {
                assert_eq!(field("MD5"), ours.md5);
            }
        }
        // A file that is no database: both refuse.
        let junk = dir.path().join("junk.cvd");
        let mut bytes = vec![0x1fu8; 600];
        bytes[..4].copy_from_slice(b"JUNK");
        std::fs::write(&junk, &bytes).unwrap();
        assert!(!sigtool_info(&junk).accepted);
        assert!(parse_cvd_header(&bytes).is_err());
    }
}
