//! The logging check: are audit records kept, complete and comparable in time?
//!
//! It owns the reading of journald's effective configuration and coverage, of the kernel audit
//! subsystem (status, loaded rules, auditd) and of time synchronisation (chrony, timesyncd).
//! It only reads: it never loads audit rules, never restarts a unit and never vacuums the
//! journal; the fixes it names are carried out by the healer under its guardrails.

use std::collections::BTreeMap;
use std::path::Path;

use jiff::Timestamp;
use msp_compliance_protocol::finding::{SafetyClass, Status};
use msp_compliance_protocol::ids::{check, hipaa};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::baseline::{Baseline, LoggingPolicy};
use crate::checks::{Check, Judgement, format_age};
use crate::facts::command::{Invocation, Output};
use crate::facts::declared::{DeclaredAudit, DeclaredJournald, DeclaredTimeSync};
use crate::facts::probe::Probe;
use crate::facts::{DeclaredState, FactError, Host};

/// The logging check (164.312(b), supporting 164.308(a)(1)(ii)(D)).
///
/// **Facts.**
/// - journald's effective `[Journal]` settings: `/etc/systemd/journald.conf` (or the first main
///   file systemd finds), then the `journald.conf.d/*.conf` drop-ins of `/usr/lib`,
///   `/usr/local/lib`, `/run` and `/etc`, applied in file-name order across directories, a name
///   in a later directory replacing the same name in an earlier one (journald.conf(5));
///   whether `/var/log/journal` exists (it decides persistence under `Storage=auto`);
///   `journalctl --list-boots -o json` for the oldest entry still on disk.
/// - kernel audit, through the privileged probes `auditctl -s` and `auditctl -l`, with the
///   unprivileged hints `audit=` on `/proc/cmdline` and `systemctl is-active auditd.service`.
/// - time: `chronyc -c tracking` (offset and leap status) and
///   `timedatectl show --property=NTPSynchronized --value` (timesyncd).
/// - declared.json's `journald`, `audit` and `timeSync` sections, to tell drift from a wrong
///   configuration.
///
/// **Rules and thresholds** (baseline `checks.logging`):
/// - `logging.journald_persistent`: journald stores on disk (`Storage=persistent`, or `auto`
///   with `/var/log/journal`); otherwise fail, or warn when a forwarder is declared.
/// - `logging.journald_retention`: `MaxRetentionSec` does not delete entries younger than
///   `coverage_min_days`, and the oldest local entry is at least that old unless a forwarder
///   is declared (warn otherwise).
/// - `logging.auditd`: kernel audit `enabled` is 1 or 2 and `auditd.service` is active.
/// - `logging.audit_rules`: every `required_audit_watches` path is watched for writes and every
///   `required_audit_syscalls` syscall is audited by a loaded `always,exit` rule.
/// - `logging.audit_lock`: rules are immutable (`enabled 2`) when `audit_lock_recommended`.
/// - `logging.time_sync`: chrony's offset is below `time_offset_warn_ms` (pass) or
///   `time_offset_fail_ms` (warn) with a normal leap status, or timesyncd reports synchronised.
///
/// **Why an auditor accepts this.** These are the settings `research/checks.md` §4.1 and §8.1
/// derive from 164.312(b): records must survive a reboot, cover the review period, capture the
/// changes to identity, privilege and time that the CIS benchmarks watch, be tamper-resistant
/// (locked rules) and carry comparable timestamps. Every fact is the tool's own output, kept raw in
/// the finding; a privileged fact that could not be read is `unknown`, never a pass.
pub struct Logging;

/// What the logging check read.
pub struct Observation {
    /// journald's effective configuration.
    journald: Result<JournaldConfig, FactError>,
    /// `/var/log/journal` exists.
    var_log_journal: Result<bool, FactError>,
    /// `journalctl --list-boots -o json`.
    boots: Result<Vec<JournalBoot>, FactError>,
    /// The declared sections this check compares with.
    declared: DeclaredFacts,
    /// `auditctl -s`.
    audit_status: Result<AuditStatus, FactError>,
    /// `auditctl -l`.
    audit_rules: Result<Vec<AuditRule>, FactError>,
    /// The `audit=` value on the kernel command line, if any.
    cmdline_audit: Result<Option<String>, FactError>,
    /// `systemctl is-active auditd.service`.
    auditd_active: Result<String, FactError>,
    /// `timedatectl show --property=NTPSynchronized --value`.
    ntp_synchronized: Result<bool, FactError>,
    /// `chronyc -c tracking`.
    chrony: Result<ChronyTracking, FactError>,
}

/// The sections of declared.json this check uses.
enum DeclaredFacts {
    /// No declared.json (not a NixOS host with the module).
    Absent,
    /// declared.json exists but is invalid.
    Invalid(String),
    /// A valid declared.json.
    Present {
        journald: DeclaredJournald,
        audit: DeclaredAudit,
        time_sync: DeclaredTimeSync,
    },
}

/// journald's effective `[Journal]` settings.
struct JournaldConfig {
    /// Files read, in the order they were applied.
    files: Vec<String>,
    /// Effective settings: key to value and the file that set it.
    settings: BTreeMap<String, (String, String)>,
    /// Assignments journald ignores (invalid values), for the evidence.
    ignored: Vec<String>,
}

/// One boot in the journal.
struct JournalBoot {
    boot_id: String,
    first_entry: Timestamp,
    last_entry: Option<Timestamp>,
}

/// `auditctl -s`.
struct AuditStatus {
    /// 0 disabled, 1 enabled, 2 enabled and locked.
    enabled: i64,
    /// Every `key value` pair, raw.
    fields: BTreeMap<String, String>,
}

/// One loaded audit rule, as far as coverage is concerned.
struct AuditRule {
    text: String,
    /// `-a always,exit` (or `exit,always`).
    always_exit: bool,
    /// `-w` paths (a `-w` directory watch is recursive).
    watch_paths: Vec<String>,
    /// `-F path=` values (exactly that object).
    field_paths: Vec<String>,
    /// `-F dir=` values (recursive).
    field_dirs: Vec<String>,
    /// `-p` or `-F perm=`; `None` means all permissions.
    perms: Option<String>,
    /// `-S` syscall names.
    syscalls: Vec<String>,
}

/// `chronyc -c tracking`.
struct ChronyTracking {
    reference: String,
    stratum: String,
    /// System time offset from NTP time, in seconds.
    system_offset: f64,
    leap_status: String,
}

const JOURNALD_MAIN: [&str; 4] = [
    "/etc/systemd/journald.conf",
    "/run/systemd/journald.conf",
    "/usr/local/lib/systemd/journald.conf",
    "/usr/lib/systemd/journald.conf",
];
/// Drop-in directories from lowest to highest priority.
const JOURNALD_DROPIN_DIRS: [&str; 4] = [
    "/usr/lib/systemd/journald.conf.d",
    "/usr/local/lib/systemd/journald.conf.d",
    "/run/systemd/journald.conf.d",
    "/etc/systemd/journald.conf.d",
];
const VAR_LOG_JOURNAL: &str = "/var/log/journal";
const SECONDS_PER_DAY: f64 = 86_400.0;
/// States `systemctl is-active` prints.
const UNIT_STATES: [&str; 8] = [
    "active",
    "activating",
    "deactivating",
    "failed",
    "inactive",
    "maintenance",
    "refreshing",
    "reloading",
];

const FIX_JOURNALD_REACTIVATE: &str = "re-activate the current generation (`switch-to-configuration switch`) and restart systemd-journald; \
     escalate if an override outside the generation remains";
const FIX_JOURNALD_PINNED: &str = "declare `services.journald.storage = \"persistent\"` and switch to the pinned generation inside the maintenance window";
const FIX_JOURNALD_DEBIAN: &str = "set `Storage=persistent` in a journald.conf.d drop-in (or create /var/log/journal) and restart systemd-journald";
const FIX_RETENTION: &str = "keep at least the coverage period: raise MaxRetentionSec/SystemMaxUse (NixOS: \
     `services.journald.extraConfig`, then the pinned generation) or declare a log forwarder";
const FIX_AUDITD_RESTART: &str = "restart auditd.service";
const FIX_AUDITD_PINNED: &str = "enable `security.auditd.enable` and `security.audit.enable` and switch to the pinned generation inside the maintenance window";
const FIX_AUDITD_DEBIAN: &str = "install auditd and start auditd.service";
const FIX_RULES_LOADER: &str = "re-run the audit rules loader (`systemctl restart audit-rules-nixos.service`, `audit.service` on older releases)";
const FIX_RULES_REBOOT: &str =
    "reboot inside the maintenance window: the rules are locked and load only at boot";
const FIX_RULES_PINNED: &str = "declare the missing rules in `security.audit.rules` and switch to the pinned generation \
     inside the maintenance window (a reboot follows when rules are locked)";
const FIX_RULES_DEBIAN: &str =
    "add the missing rules under /etc/audit/rules.d and load them with `augenrules --load`";
const FIX_LOCK_LOADER: &str = "re-run the audit rules loader (`systemctl restart audit-rules-nixos.service`) to load and lock the declared rules";
const FIX_LOCK_PINNED: &str = "declare `security.audit.enable = \"lock\"` and switch to the pinned generation; \
     the lock takes effect at the next boot";
const FIX_LOCK_DEBIAN: &str = "end the audit rules with `-e 2` (/etc/audit/rules.d/99-finalize.rules) and reboot in the maintenance window";
const FIX_TIME_SYNC: &str =
    "restart the time synchronisation daemon (systemd-timesyncd.service or chronyd.service)";

impl Check for Logging {
    type Observation = Observation;

    fn id(&self) -> &'static str {
        check::LOGGING
    }

    fn controls(&self) -> &'static [&'static str] {
        &[hipaa::AUDIT_CONTROLS, hipaa::ACTIVITY_REVIEW]
    }

    fn observe(&self, host: &Host, _baseline: &Baseline) -> Observation {
        let declared = match host.declared() {
            DeclaredState::Absent => DeclaredFacts::Absent,
            DeclaredState::Invalid(why) => DeclaredFacts::Invalid(why.clone()),
            DeclaredState::Present(it) => DeclaredFacts::Present {
                journald: it.journald.clone(),
                audit: it.audit.clone(),
                time_sync: it.time_sync.clone(),
            },
        };
        let var_log_journal = match host.root.metadata(Path::new(VAR_LOG_JOURNAL)) {
            Ok(meta) => Ok(meta.is_dir()),
            Err(err) if err.is_absent() => Ok(false),
            Err(err) => Err(err),
        };
        let list_boots = Invocation::new(
            "journalctl-list-boots",
            "journalctl",
            &["--list-boots", "-o", "json", "--no-pager"],
        );
        let boots = host
            .run(&list_boots)
            .and_then(|out| journal_boots(&list_boots, out));
        let audit_status =
            read_probe(host, &Probe::AuditStatus).and_then(|text| parse_audit_status(&text));
        let audit_rules =
            read_probe(host, &Probe::AuditRules).and_then(|text| parse_audit_rules(&text));
        let cmdline_audit = match host.root.read_text(Path::new("/proc/cmdline")) {
            Ok(text) => Ok(text
                .split_whitespace()
                .find_map(|it| it.strip_prefix("audit="))
                .map(str::to_string)),
            Err(err) if err.is_absent() => Ok(None),
            Err(err) => Err(err),
        };
        let is_active = Invocation::new(
            "systemctl-is-active-auditd",
            "systemctl",
            &["is-active", "auditd.service"],
        );
        let auditd_active = host
            .run(&is_active)
            .and_then(|out| unit_state(&is_active, out));
        let timedatectl = Invocation::new(
            "timedatectl-ntp-synchronized",
            "timedatectl",
            &["show", "--property=NTPSynchronized", "--value"],
        );
        let ntp_synchronized = host
            .run(&timedatectl)
            .and_then(|out| out.success(&timedatectl))
            .and_then(|out| parse_yes_no(&out.stdout_text()));
        let tracking = Invocation::new("chronyc-tracking", "chronyc", &["-c", "tracking"]);
        let chrony = host.run(&tracking).and_then(|out| {
            // chronyc reports "506 Cannot talk to daemon" on standard output, not standard error.
            if out.status != 0 && out.stderr.iter().all(u8::is_ascii_whitespace) {
                return Err(FactError::CommandFailed {
                    command: tracking.display(),
                    status: out.status,
                    stderr: out.stdout_text().trim().to_string(),
                });
            }
            parse_chrony_tracking(&out.success(&tracking)?.stdout_text())
        });
        Observation {
            journald: read_journald_config(host),
            var_log_journal,
            boots,
            declared,
            audit_status,
            audit_rules,
            cmdline_audit,
            auditd_active,
            ntp_synchronized,
            chrony,
        }
    }

    fn judge(&self, observation: &Observation, baseline: &Baseline, now: Timestamp) -> Judgement {
        let policy = &baseline.policy().checks.logging;
        let mut judgement = Judgement::new(observed_json(observation), expected_json(policy));
        judge_journald_persistent(&mut judgement, observation, policy);
        judge_journald_retention(&mut judgement, observation, policy, now);
        judge_auditd(&mut judgement, observation, policy);
        judge_audit_rules(&mut judgement, observation, policy);
        judge_audit_lock(&mut judgement, observation, policy);
        judge_time_sync(&mut judgement, observation, policy);
        judgement
    }
}

// ---------------------------------------------------------------------------------------------
// Observation
// ---------------------------------------------------------------------------------------------

fn read_journald_config(host: &Host) -> Result<JournaldConfig, FactError> {
    let mut files: Vec<(String, String)> = Vec::new();
    for main in JOURNALD_MAIN {
        match host.root.read_text(Path::new(main)) {
            Ok(text) => {
                files.push((main.to_string(), text));
                break;
            }
            Err(err) if err.is_absent() => {}
            Err(err) => return Err(err),
        }
    }
    // A drop-in name in a later (higher-priority) directory replaces the same name earlier.
    let mut dropins: BTreeMap<String, String> = BTreeMap::new();
    for dir in JOURNALD_DROPIN_DIRS {
        match host.root.list_dir(Path::new(dir)) {
            Ok(names) => {
                for name in names.into_iter().filter(|it| it.ends_with(".conf")) {
                    let path = format!("{dir}/{name}");
                    dropins.insert(name, path);
                }
            }
            Err(err) if err.is_absent() => {}
            Err(err) => return Err(err),
        }
    }
    for path in dropins.into_values() {
        match host.root.read_text(Path::new(&path)) {
            Ok(text) => files.push((path, text)),
            // A drop-in masked by a link to /dev/null, or removed meanwhile, sets nothing.
            Err(err) if err.is_absent() => {}
            Err(err) => return Err(err),
        }
    }
    Ok(effective_journald_config(&files))
}

/// Applies journald configuration files in order: the last assignment of a key wins, an empty
/// assignment restores the default, and an invalid `Storage=` is ignored as journald does.
fn effective_journald_config(files: &[(String, String)]) -> JournaldConfig {
    let mut config = JournaldConfig {
        files: Vec::new(),
        settings: BTreeMap::new(),
        ignored: Vec::new(),
    };
    for (path, text) in files {
        config.files.push(path.clone());
        for (key, value) in parse_unit_file_section(text, "Journal") {
            if value.is_empty() {
                config.settings.remove(&key);
                continue;
            }
            if key == "Storage"
                && !["persistent", "volatile", "auto", "none"].contains(&value.as_str())
            {
                config.ignored.push(format!("{path}: Storage={value}"));
                continue;
            }
            config.settings.insert(key, (value, path.clone()));
        }
    }
    config
}

/// `key=value` assignments of one section of a systemd configuration file, in order.
fn parse_unit_file_section(text: &str, wanted: &str) -> Vec<(String, String)> {
    let mut res = Vec::new();
    let mut section = String::new();
    let mut pending = String::new();
    for raw in text.lines() {
        // A trailing backslash continues the line (systemd.syntax(7)).
        if let Some(head) = raw.strip_suffix('\\') {
            pending.push_str(head);
            pending.push(' ');
            continue;
        }
        pending.push_str(raw);
        let line = std::mem::take(&mut pending);
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|it| it.strip_suffix(']')) {
            section = name.trim().to_string();
            continue;
        }
        if section != wanted {
            continue;
        }
        if let Some((key, value)) = line.split_once('=') {
            res.push((key.trim().to_string(), value.trim().to_string()));
        }
    }
    res
}

/// Parses a systemd time span (`90d`, `1year`, `2h 30min`, `3600`) into seconds; a bare number
/// is seconds (systemd.time(7)).
fn parse_timespan(text: &str) -> Result<f64, String> {
    let text = text.trim();
    if text == "infinity" {
        return Ok(f64::INFINITY);
    }
    let mut total = 0.0;
    let mut rest = text;
    let mut n_parts = 0;
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if number_len == 0 {
            return Err(format!("time span {text:?}: expected a number at {rest:?}"));
        }
        let number: f64 = rest[..number_len]
            .parse()
            .map_err(|_| format!("time span {text:?}: bad number"))?;
        rest = rest[number_len..].trim_start();
        let unit_len = rest
            .find(|c: char| !c.is_alphabetic())
            .unwrap_or(rest.len());
        let unit = &rest[..unit_len];
        let scale = match unit {
            "" | "s" | "sec" | "second" | "seconds" => 1.0,
            "us" | "usec" | "µs" => 1e-6,
            "ms" | "msec" => 1e-3,
            "m" | "min" | "minute" | "minutes" => 60.0,
            "h" | "hr" | "hour" | "hours" => 3_600.0,
            "d" | "day" | "days" => SECONDS_PER_DAY,
            "w" | "week" | "weeks" => 7.0 * SECONDS_PER_DAY,
            "M" | "month" | "months" => 30.44 * SECONDS_PER_DAY,
            "y" | "year" | "years" => 365.25 * SECONDS_PER_DAY,
            other => return Err(format!("time span {text:?}: unknown unit {other:?}")),
        };
        total += number * scale;
        n_parts += 1;
        rest = rest[unit_len..].trim_start();
    }
    if n_parts == 0 {
        return Err("empty time span".to_string());
    }
    Ok(total)
}

#[derive(Deserialize)]
struct RawBoot {
    boot_id: Option<String>,
    first_entry: Option<i64>,
    last_entry: Option<i64>,
}

fn journal_boots(invocation: &Invocation, out: Output) -> Result<Vec<JournalBoot>, FactError> {
    // Without the systemd-journal group journalctl still exits 0 but sees only the caller's own
    // journal; that is not the system's coverage.
    let stderr = String::from_utf8_lossy(&out.stderr).to_ascii_lowercase();
    if stderr.contains("insufficient permissions")
        || stderr.contains("not seeing messages from other users")
    {
        return Err(FactError::PrivilegeRequired {
            command: invocation.display(),
            stderr: out.stderr_excerpt(),
        });
    }
    let out = out.success(invocation)?;
    parse_list_boots(&out.stdout_text())
}

/// Parses `journalctl --list-boots -o json` (systemd 251+): an array of objects with `boot_id`,
/// `first_entry` and `last_entry` in microseconds since the epoch. No output means no boots.
fn parse_list_boots(text: &str) -> Result<Vec<JournalBoot>, FactError> {
    let what = "journalctl --list-boots -o json";
    let text = text.trim();
    if text.is_empty() {
        return Ok(Vec::new());
    }
    let raw: Vec<RawBoot> = serde_json::from_str(text).map_err(|err| {
        FactError::parse(
            what,
            format!("{err} (systemd older than 251 prints no JSON here)"),
        )
    })?;
    let micros =
        |value: i64| Timestamp::from_microsecond(value).map_err(|err| FactError::parse(what, err));
    let mut res = Vec::new();
    for boot in raw {
        let first = boot
            .first_entry
            .ok_or_else(|| FactError::parse(what, "a boot without first_entry"))?;
        res.push(JournalBoot {
            boot_id: boot.boot_id.unwrap_or_default(),
            first_entry: micros(first)?,
            last_entry: boot.last_entry.map(micros).transpose()?,
        });
    }
    Ok(res)
}

/// Runs a privileged probe and returns its output if it exited 0.
fn read_probe(host: &Host, probe: &Probe) -> Result<String, FactError> {
    let out = host.probe(probe)?;
    let invocation = probe.invocation()?;
    Ok(out.success(&invocation)?.stdout_text())
}

/// Parses `auditctl -s`: `key value` lines (audit 2.3+) or one `AUDIT_STATUS: key=value …` line.
fn parse_audit_status(text: &str) -> Result<AuditStatus, FactError> {
    let mut fields = BTreeMap::new();
    for line in text.lines() {
        let line = line
            .trim()
            .strip_prefix("AUDIT_STATUS:")
            .unwrap_or(line.trim());
        if line.contains('=') {
            for token in line.split_whitespace() {
                if let Some((key, value)) = token.split_once('=') {
                    fields.insert(key.to_string(), value.to_string());
                }
            }
        } else {
            let mut tokens = line.split_whitespace();
            if let (Some(key), Some(value)) = (tokens.next(), tokens.next()) {
                fields.insert(key.to_string(), value.to_string());
            }
        }
    }
    let enabled = fields
        .get("enabled")
        .and_then(|it| it.parse::<i64>().ok())
        .ok_or_else(|| FactError::parse("auditctl -s", "no `enabled` value"))?;
    Ok(AuditStatus { enabled, fields })
}

/// Parses `auditctl -l`: one rule per line in auditctl's own syntax, or `No rules`.
fn parse_audit_rules(text: &str) -> Result<Vec<AuditRule>, FactError> {
    let mut rules = Vec::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line == "No rules" {
            continue;
        }
        if !line.starts_with('-') {
            return Err(FactError::parse(
                "auditctl -l",
                format!("unexpected line {line:?}"),
            ));
        }
        rules.push(parse_audit_rule(line));
    }
    Ok(rules)
}

fn parse_audit_rule(line: &str) -> AuditRule {
    let mut rule = AuditRule {
        text: line.to_string(),
        always_exit: false,
        watch_paths: Vec::new(),
        field_paths: Vec::new(),
        field_dirs: Vec::new(),
        perms: None,
        syscalls: Vec::new(),
    };
    let mut tokens = line.split_whitespace();
    while let Some(token) = tokens.next() {
        match token {
            "-w" => rule.watch_paths.extend(tokens.next().map(normalize_path)),
            "-p" => rule.perms = tokens.next().map(str::to_string),
            "-a" | "-A" => {
                let parts: Vec<&str> = tokens.next().unwrap_or_default().split(',').collect();
                rule.always_exit = parts.contains(&"always") && parts.contains(&"exit");
            }
            "-S" => {
                let list = tokens.next().unwrap_or_default();
                rule.syscalls.extend(
                    list.split(',')
                        .filter(|it| !it.is_empty())
                        .map(str::to_string),
                );
            }
            "-F" => match tokens.next().and_then(|it| it.split_once('=')) {
                Some(("path", value)) => rule.field_paths.push(normalize_path(value)),
                Some(("dir", value)) => rule.field_dirs.push(normalize_path(value)),
                Some(("perm", value)) => rule.perms = Some(value.to_string()),
                _ => {}
            },
            _ => {}
        }
    }
    rule
}

fn normalize_path(path: &str) -> String {
    let trimmed = path.trim_end_matches('/');
    if trimmed.is_empty() {
        "/".to_string()
    } else {
        trimmed.to_string()
    }
}

fn is_within(path: &str, dir: &str) -> bool {
    path == dir
        || dir == "/"
        || path
            .strip_prefix(dir)
            .is_some_and(|rest| rest.starts_with('/'))
}

/// A rule watches a path for changes: `-w` of the path or of a directory above it (`-w` on a
/// directory is recursive), `-F path=` of exactly the path, `-F dir=` of it or a directory above,
/// with write permission among the watched ones.
fn watches(rule: &AuditRule, path: &str) -> bool {
    let path = normalize_path(path);
    let writes = rule.perms.as_deref().is_none_or(|it| it.contains('w'));
    let watched = rule.watch_paths.iter().any(|it| is_within(&path, it))
        || (rule.always_exit && rule.field_paths.contains(&path))
        || (rule.always_exit && rule.field_dirs.iter().any(|it| is_within(&path, it)));
    writes && watched
}

fn audits_syscall(rule: &AuditRule, syscall: &str) -> bool {
    rule.always_exit && rule.syscalls.iter().any(|it| it == syscall)
}

/// What of the baseline the rules do not cover: (watches, syscalls).
fn missing_rules<'a>(
    rules: &[AuditRule],
    policy: &'a LoggingPolicy,
) -> (Vec<&'a str>, Vec<&'a str>) {
    let watches_missing = policy
        .required_audit_watches
        .iter()
        .filter(|path| !rules.iter().any(|rule| watches(rule, path)))
        .map(String::as_str)
        .collect();
    let syscalls_missing = policy
        .required_audit_syscalls
        .iter()
        .filter(|syscall| !rules.iter().any(|rule| audits_syscall(rule, syscall)))
        .map(String::as_str)
        .collect();
    (watches_missing, syscalls_missing)
}

/// `systemctl is-active` prints the state and exits non-zero for anything but active.
fn unit_state(invocation: &Invocation, out: Output) -> Result<String, FactError> {
    let text = out.stdout_text();
    let state = text.lines().next().unwrap_or_default().trim();
    if UNIT_STATES.contains(&state) {
        return Ok(state.to_string());
    }
    Err(FactError::CommandFailed {
        command: invocation.display(),
        status: out.status,
        stderr: out.stderr_excerpt(),
    })
}

fn parse_yes_no(text: &str) -> Result<bool, FactError> {
    match text.trim() {
        "yes" => Ok(true),
        "no" => Ok(false),
        other => Err(FactError::parse(
            "timedatectl NTPSynchronized",
            format!("expected yes or no, found {other:?}"),
        )),
    }
}

/// Parses `chronyc -c tracking`: one CSV line of 14 fields (reference id, reference name,
/// stratum, reference time, system time offset, last offset, RMS offset, frequency, residual
/// frequency, skew, root delay, root dispersion, update interval, leap status).
fn parse_chrony_tracking(text: &str) -> Result<ChronyTracking, FactError> {
    let what = "chronyc -c tracking";
    let line = text
        .lines()
        .find(|it| !it.trim().is_empty())
        .unwrap_or_default();
    let fields: Vec<&str> = line.trim().split(',').collect();
    if fields.len() < 14 {
        return Err(FactError::parse(
            what,
            format!("expected 14 comma-separated fields, found {}", fields.len()),
        ));
    }
    let system_offset: f64 = fields[4]
        .parse()
        .ok()
        .filter(|it: &f64| it.is_finite())
        .ok_or_else(|| FactError::parse(what, format!("system time offset {:?}", fields[4])))?;
    Ok(ChronyTracking {
        reference: format!("{} ({})", fields[0], fields[1]),
        stratum: fields[2].to_string(),
        system_offset,
        leap_status: fields[13].to_string(),
    })
}

// ---------------------------------------------------------------------------------------------
// Judgement
// ---------------------------------------------------------------------------------------------

fn judge_journald_persistent(judgement: &mut Judgement, obs: &Observation, policy: &LoggingPolicy) {
    const RULE: &str = "logging.journald_persistent";
    let config = match &obs.journald {
        Ok(it) => it,
        Err(err) => {
            judgement.unknown(RULE, err);
            return;
        }
    };
    let (storage, source) = match config.settings.get("Storage") {
        Some((value, path)) => (value.as_str(), path.as_str()),
        None => ("auto", "the default"),
    };
    let persistent = match storage {
        "persistent" => true,
        "auto" => match &obs.var_log_journal {
            Ok(exists) => *exists,
            Err(err) => {
                judgement.rule(
                    RULE,
                    Status::Unknown,
                    format!("Storage=auto and {VAR_LOG_JOURNAL} cannot be checked: {err}"),
                );
                return;
            }
        },
        _ => false,
    };
    let effective = if storage == "auto" {
        let dir = if persistent { "exists" } else { "is missing" };
        format!("Storage=auto (from {source}) and {VAR_LOG_JOURNAL} {dir}")
    } else {
        format!("Storage={storage} (from {source})")
    };
    let declared = match &obs.declared {
        DeclaredFacts::Present { journald, .. } => Some(journald),
        DeclaredFacts::Absent | DeclaredFacts::Invalid(_) => None,
    };
    let comparison = match declared {
        Some(journald) if journald.storage != storage => {
            format!(
                "; the generation declares storage = {}, so the live configuration differs",
                journald.storage
            )
        }
        Some(journald) => format!(
            "; as the generation declares (storage = {})",
            journald.storage
        ),
        None => String::new(),
    };
    if persistent {
        judgement.rule(
            RULE,
            Status::Pass,
            format!("journal is persistent: {effective}{comparison}"),
        );
        return;
    }
    if !policy.journald_persistent_required {
        judgement.rule(
            RULE,
            Status::NotApplicable,
            format!("journal is not persistent ({effective}), which the baseline allows"),
        );
        return;
    }
    let (fix, safety) = match declared {
        Some(journald) if journald.storage == "persistent" => {
            (FIX_JOURNALD_REACTIVATE, SafetyClass::Safe)
        }
        Some(_) => (FIX_JOURNALD_PINNED, SafetyClass::Disruptive),
        None => (FIX_JOURNALD_DEBIAN, SafetyClass::Safe),
    };
    let message = format!("journal is not persistent: {effective}{comparison}");
    if declared.is_some_and(|it| it.forwarding) {
        judgement.rule_with_fix(
            RULE,
            Status::Warn,
            format!("{message}; a log forwarder is declared but not verified end to end"),
            fix,
            safety,
        );
    } else {
        judgement.rule_with_fix(
            RULE,
            Status::Fail,
            format!("{message}, and no log forwarder is declared"),
            fix,
            safety,
        );
    }
}

fn judge_journald_retention(
    judgement: &mut Judgement,
    obs: &Observation,
    policy: &LoggingPolicy,
    now: Timestamp,
) {
    const RULE: &str = "logging.journald_retention";
    let min_seconds = f64::from(policy.coverage_min_days) * SECONDS_PER_DAY;
    let forwarding =
        matches!(&obs.declared, DeclaredFacts::Present { journald, .. } if journald.forwarding);
    let mut warnings: Vec<String> = Vec::new();
    let mut notes: Vec<String> = Vec::new();
    match &obs.journald {
        Ok(config) => match config.settings.get("MaxRetentionSec") {
            Some((value, path)) => match parse_timespan(value) {
                Ok(seconds) if seconds > 0.0 && seconds < min_seconds => warnings.push(format!(
                    "MaxRetentionSec={value} (from {path}) deletes entries after {:.0} days, less than {} days",
                    seconds / SECONDS_PER_DAY,
                    policy.coverage_min_days
                )),
                Ok(_) => notes.push(format!("MaxRetentionSec={value}")),
                Err(why) => notes.push(format!("MaxRetentionSec={value} is invalid and ignored by journald ({why})")),
            },
            None => notes.push("no MaxRetentionSec".to_string()),
        },
        Err(err) => notes.push(format!("journald configuration unreadable: {err}")),
    }
    let coverage = match &obs.boots {
        Ok(boots) => boots.iter().map(|it| it.first_entry).min(),
        Err(err) => {
            let retention = if warnings.is_empty() {
                String::new()
            } else {
                format!("; {}", warnings.join("; "))
            };
            judgement.rule(
                RULE,
                Status::Unknown,
                format!("cannot measure journal coverage: {err}{retention}"),
            );
            return;
        }
    };
    match coverage {
        None if forwarding => {
            notes.push("the journal holds no entries; a log forwarder is declared".to_string())
        }
        None => warnings
            .push("the journal holds no entries and no log forwarder is declared".to_string()),
        Some(oldest) => {
            let age = now.duration_since(oldest).as_secs().max(0);
            let reach = format!("the oldest entry is {} old ({oldest})", format_age(age));
            if (age as f64) >= min_seconds {
                notes.insert(0, reach);
            } else if forwarding {
                notes.insert(
                    0,
                    format!(
                        "{reach}, less than {} days, but a log forwarder is declared",
                        policy.coverage_min_days
                    ),
                );
            } else {
                warnings.push(format!(
                    "{reach}, less than {} days, and no log forwarder is declared",
                    policy.coverage_min_days
                ));
            }
        }
    }
    if warnings.is_empty() {
        judgement.rule(RULE, Status::Pass, notes.join("; "));
    } else {
        judgement.rule_with_fix(
            RULE,
            Status::Warn,
            warnings.join("; "),
            FIX_RETENTION,
            SafetyClass::Disruptive,
        );
    }
}

fn judge_auditd(judgement: &mut Judgement, obs: &Observation, policy: &LoggingPolicy) {
    const RULE: &str = "logging.auditd";
    if !policy.auditd_required {
        judgement.rule(
            RULE,
            Status::NotApplicable,
            "auditd is not required by the baseline",
        );
        return;
    }
    let mut failures: Vec<String> = Vec::new();
    let mut unknowns: Vec<String> = Vec::new();
    match &obs.auditd_active {
        Ok(state) if state == "active" => {}
        Ok(state) => failures.push(format!("auditd.service is {state}")),
        Err(err) => unknowns.push(err.to_string()),
    }
    match &obs.audit_status {
        Ok(status) if matches!(status.enabled, 1 | 2) => {}
        Ok(status) => failures.push(format!(
            "kernel audit is disabled (enabled {})",
            status.enabled
        )),
        Err(err) => unknowns.push(err.to_string()),
    }
    if let Ok(Some(value)) = &obs.cmdline_audit
        && value == "0"
    {
        failures.push("the kernel was booted with audit=0".to_string());
    }
    let declared = match &obs.declared {
        DeclaredFacts::Present { audit, .. } => Some(audit),
        DeclaredFacts::Absent | DeclaredFacts::Invalid(_) => None,
    };
    if !failures.is_empty() {
        let (context, fix, safety) = match declared {
            Some(audit) if !audit.auditd || audit.enable == "false" => (
                format!(
                    "; the generation does not enable it (security.auditd.enable = {}, security.audit.enable = {})",
                    audit.auditd, audit.enable
                ),
                FIX_AUDITD_PINNED,
                SafetyClass::Disruptive,
            ),
            Some(_) => (
                "; the generation enables it, so this is runtime drift".to_string(),
                FIX_AUDITD_RESTART,
                SafetyClass::Safe,
            ),
            None => (String::new(), FIX_AUDITD_DEBIAN, SafetyClass::Safe),
        };
        judgement.rule_with_fix(
            RULE,
            Status::Fail,
            format!("{}{context}", failures.join("; ")),
            fix,
            safety,
        );
        return;
    }
    // Without a failure, both facts were read (otherwise `unknowns` holds their errors).
    let (Ok(status), true) = (&obs.audit_status, unknowns.is_empty()) else {
        judgement.rule(RULE, Status::Unknown, unknowns.join("; "));
        return;
    };
    let enabled = status.enabled;
    let pid = status.fields.get("pid").map(String::as_str).unwrap_or("?");
    let locked = if enabled == 2 { " (locked)" } else { "" };
    judgement.rule(
        RULE,
        Status::Pass,
        format!("kernel audit enabled {enabled}{locked}, auditd.service active (pid {pid})"),
    );
}

fn judge_audit_rules(judgement: &mut Judgement, obs: &Observation, policy: &LoggingPolicy) {
    const RULE: &str = "logging.audit_rules";
    if !policy.auditd_required {
        judgement.rule(
            RULE,
            Status::NotApplicable,
            "auditd is not required by the baseline",
        );
        return;
    }
    let rules = match &obs.audit_rules {
        Ok(it) => it,
        Err(err) => {
            judgement.unknown(RULE, err);
            return;
        }
    };
    let (watches_missing, syscalls_missing) = missing_rules(rules, policy);
    if watches_missing.is_empty() && syscalls_missing.is_empty() {
        judgement.rule(
            RULE,
            Status::Pass,
            format!(
                "{} loaded rules cover the {} required watches and {} required syscalls",
                rules.len(),
                policy.required_audit_watches.len(),
                policy.required_audit_syscalls.len()
            ),
        );
        return;
    }
    let mut missing = Vec::new();
    if !watches_missing.is_empty() {
        missing.push(format!("no write watch on {}", watches_missing.join(", ")));
    }
    if !syscalls_missing.is_empty() {
        missing.push(format!(
            "syscalls not audited: {}",
            syscalls_missing.join(", ")
        ));
    }
    let locked = matches!(&obs.audit_status, Ok(status) if status.enabled == 2);
    let (fix, safety) = match &obs.declared {
        DeclaredFacts::Present { audit, .. } => {
            // Declared rules that would cover what is missing mean the loaded set drifted.
            let declared_rules: Vec<AuditRule> =
                audit.rules.iter().map(|it| parse_audit_rule(it)).collect();
            let declared_cover = watches_missing
                .iter()
                .all(|path| declared_rules.iter().any(|rule| watches(rule, path)))
                && syscalls_missing
                    .iter()
                    .all(|name| declared_rules.iter().any(|rule| audits_syscall(rule, name)));
            match (declared_cover, locked) {
                (true, false) => (FIX_RULES_LOADER, SafetyClass::Safe),
                (true, true) => (FIX_RULES_REBOOT, SafetyClass::Disruptive),
                (false, _) => (FIX_RULES_PINNED, SafetyClass::Disruptive),
            }
        }
        DeclaredFacts::Absent | DeclaredFacts::Invalid(_) => (FIX_RULES_DEBIAN, SafetyClass::Safe),
    };
    judgement.rule_with_fix(
        RULE,
        Status::Fail,
        format!("missing audit rules: {}", missing.join("; ")),
        fix,
        safety,
    );
}

fn judge_audit_lock(judgement: &mut Judgement, obs: &Observation, policy: &LoggingPolicy) {
    const RULE: &str = "logging.audit_lock";
    if !policy.audit_lock_recommended {
        judgement.rule(
            RULE,
            Status::NotApplicable,
            "locked audit rules are not recommended by the baseline",
        );
        return;
    }
    let status = match &obs.audit_status {
        Ok(it) => it,
        Err(err) => {
            judgement.unknown(RULE, err);
            return;
        }
    };
    if status.enabled == 2 {
        judgement.rule(
            RULE,
            Status::Pass,
            "audit rules are locked (enabled 2): changes need a reboot",
        );
        return;
    }
    let (fix, safety) = match &obs.declared {
        DeclaredFacts::Present { audit, .. } if audit.enable == "lock" => {
            (FIX_LOCK_LOADER, SafetyClass::Safe)
        }
        DeclaredFacts::Present { .. } => (FIX_LOCK_PINNED, SafetyClass::Disruptive),
        DeclaredFacts::Absent | DeclaredFacts::Invalid(_) => {
            (FIX_LOCK_DEBIAN, SafetyClass::Disruptive)
        }
    };
    judgement.rule_with_fix(
        RULE,
        Status::Warn,
        format!(
            "audit rules are not locked (enabled {}): root can change or delete them at run time",
            status.enabled
        ),
        fix,
        safety,
    );
}

fn judge_time_sync(judgement: &mut Judgement, obs: &Observation, policy: &LoggingPolicy) {
    const RULE: &str = "logging.time_sync";
    if let Ok(tracking) = &obs.chrony {
        let offset_ms = tracking.system_offset.abs() * 1_000.0;
        let source = format!(
            "chrony reference {}, stratum {}",
            tracking.reference, tracking.stratum
        );
        if tracking.leap_status == "Not synchronised" {
            judgement.rule_with_fix(
                RULE,
                Status::Fail,
                format!("chrony is not synchronised ({source})"),
                FIX_TIME_SYNC,
                SafetyClass::Safe,
            );
        } else if offset_ms < policy.time_offset_warn_ms as f64 {
            judgement.rule(
                RULE,
                Status::Pass,
                format!(
                    "clock offset {offset_ms:.3} ms ({source}, leap status {})",
                    tracking.leap_status
                ),
            );
        } else if offset_ms < policy.time_offset_fail_ms as f64 {
            judgement.rule_with_fix(
                RULE,
                Status::Warn,
                format!(
                    "clock offset {offset_ms:.0} ms, at least {} ms ({source})",
                    policy.time_offset_warn_ms
                ),
                FIX_TIME_SYNC,
                SafetyClass::Safe,
            );
        } else {
            judgement.rule_with_fix(
                RULE,
                Status::Fail,
                format!(
                    "clock offset {offset_ms:.0} ms, at least {} ms ({source})",
                    policy.time_offset_fail_ms
                ),
                FIX_TIME_SYNC,
                SafetyClass::Safe,
            );
        }
        return;
    }
    match &obs.ntp_synchronized {
        Ok(true) => {
            judgement.rule(
                RULE,
                Status::Pass,
                "the system clock is synchronised (timedatectl NTPSynchronized=yes)",
            );
        }
        Ok(false) => {
            judgement.rule_with_fix(
                RULE,
                Status::Fail,
                "the system clock is not synchronised (timedatectl NTPSynchronized=no)",
                FIX_TIME_SYNC,
                SafetyClass::Safe,
            );
        }
        Err(timedatectl_err) => {
            let chrony_err = obs
                .chrony
                .as_ref()
                .err()
                .map(|it| it.to_string())
                .unwrap_or_default();
            judgement.rule(
                RULE,
                Status::Unknown,
                format!("no time synchronisation tool answered: chrony: {chrony_err}; timedatectl: {timedatectl_err}"),
            );
        }
    }
}

fn observed_json(obs: &Observation) -> Value {
    let err = |err: &FactError| json!({ "error": err.to_string() });
    json!({
        "journald": match &obs.journald {
            Ok(config) => json!({
                "files": config.files,
                "settings": config.settings.iter().map(|(key, (value, path))| {
                    (key.clone(), json!({ "value": value, "source": path }))
                }).collect::<serde_json::Map<String, Value>>(),
                "ignored": config.ignored,
            }),
            Err(it) => err(it),
        },
        "var_log_journal_exists": match &obs.var_log_journal { Ok(it) => json!(it), Err(it) => err(it) },
        "journalctl-list-boots": match &obs.boots {
            Ok(boots) => json!({
                "n_boots": boots.len(),
                "oldest_entry": boots.iter().map(|it| it.first_entry).min().map(|it| it.to_string()),
                "newest_entry": boots.iter().filter_map(|it| it.last_entry).max().map(|it| it.to_string()),
                "oldest_boot_id": boots.iter().min_by_key(|it| it.first_entry).map(|it| it.boot_id.clone()),
            }),
            Err(it) => err(it),
        },
        "declared": match &obs.declared {
            DeclaredFacts::Absent => Value::Null,
            DeclaredFacts::Invalid(why) => json!({ "error": why }),
            DeclaredFacts::Present { journald, audit, time_sync } => json!({
                "journald": {
                    "storage": journald.storage,
                    "maxRetentionSec": journald.max_retention_sec,
                    "systemMaxUse": journald.system_max_use,
                    "forwarding": journald.forwarding,
                },
                "audit": { "auditd": audit.auditd, "enable": audit.enable, "n_rules": audit.rules.len() },
                "timeSync": { "timesyncd": time_sync.timesyncd, "chrony": time_sync.chrony },
            }),
        },
        "auditctl-status": match &obs.audit_status {
            Ok(status) => json!(status.fields),
            Err(it) => err(it),
        },
        "auditctl-rules": match &obs.audit_rules {
            Ok(rules) => json!(rules.iter().map(|it| it.text.as_str()).collect::<Vec<_>>()),
            Err(it) => err(it),
        },
        "cmdline_audit": match &obs.cmdline_audit { Ok(it) => json!(it), Err(it) => err(it) },
        "systemctl-is-active-auditd": match &obs.auditd_active { Ok(it) => json!(it), Err(it) => err(it) },
        "timedatectl-ntp-synchronized": match &obs.ntp_synchronized { Ok(it) => json!(it), Err(it) => err(it) },
        "chronyc-tracking": match &obs.chrony {
            Ok(it) => json!({
                "reference": it.reference,
                "stratum": it.stratum,
                "system_offset_seconds": it.system_offset,
                "leap_status": it.leap_status,
            }),
            Err(it) => err(it),
        },
    })
}

fn expected_json(policy: &LoggingPolicy) -> Value {
    json!({
        "journald_persistent": policy.journald_persistent_required,
        "coverage_min_days": policy.coverage_min_days,
        "auditd_enabled": if policy.auditd_required { json!([1, 2]) } else { Value::Null },
        "auditd_active": policy.auditd_required,
        "required_audit_watches": policy.required_audit_watches,
        "required_audit_syscalls": policy.required_audit_syscalls,
        "audit_locked": policy.audit_lock_recommended,
        "time_offset_warn_ms": policy.time_offset_warn_ms,
        "time_offset_fail_ms": policy.time_offset_fail_ms,
    })
}

#[cfg(test)]
mod tests {
    use std::process::{Command, Stdio};
    use std::time::{Duration, Instant};

    use msp_compliance_protocol::finding::Status;
    use proptest::prelude::*;

    use super::*;
    use crate::checks::testing::{KillOnDrop, check_fixture, message, ts};

    // Fixture formats and their sources are listed in tests/fixtures/logging/README.md.

    const NOW: &str = "2026-11-27T12:00:00Z";

    #[test]
    fn fixture_cases() {
        let all_pass = [
            ("logging.journald_persistent", Status::Pass),
            ("logging.journald_retention", Status::Pass),
            ("logging.auditd", Status::Pass),
            ("logging.audit_rules", Status::Pass),
            ("logging.audit_lock", Status::Pass),
            ("logging.time_sync", Status::Pass),
        ];
        check_fixture(&Logging, "nixos-good", NOW, Status::Pass, &all_pass);
        check_fixture(
            &Logging,
            "no-auditd",
            NOW,
            Status::Fail,
            &[
                ("logging.auditd", Status::Fail),
                ("logging.audit_rules", Status::Fail),
                ("logging.audit_lock", Status::Warn),
                ("logging.journald_persistent", Status::Pass),
            ],
        );
        check_fixture(
            &Logging,
            "missing-rules",
            NOW,
            Status::Fail,
            &[
                ("logging.auditd", Status::Pass),
                ("logging.audit_rules", Status::Fail),
                ("logging.audit_lock", Status::Warn),
            ],
        );
        check_fixture(
            &Logging,
            "volatile-journal",
            NOW,
            Status::Fail,
            &[
                ("logging.journald_persistent", Status::Fail),
                ("logging.journald_retention", Status::Warn),
            ],
        );
        check_fixture(
            &Logging,
            "auditctl-unprivileged",
            NOW,
            Status::Unknown,
            &[
                ("logging.auditd", Status::Unknown),
                ("logging.audit_rules", Status::Unknown),
                ("logging.audit_lock", Status::Unknown),
                ("logging.journald_persistent", Status::Pass),
                ("logging.time_sync", Status::Pass),
            ],
        );
        check_fixture(
            &Logging,
            "time-unsynced",
            NOW,
            Status::Fail,
            &[
                ("logging.time_sync", Status::Fail),
                ("logging.auditd", Status::Pass),
            ],
        );
        check_fixture(
            &Logging,
            "no-time-tools",
            NOW,
            Status::Unknown,
            &[
                ("logging.time_sync", Status::Unknown),
                ("logging.auditd", Status::Pass),
            ],
        );
        check_fixture(
            &Logging,
            "debian-auto",
            NOW,
            Status::Fail,
            &[
                ("logging.journald_persistent", Status::Pass),
                ("logging.journald_retention", Status::Warn),
                ("logging.auditd", Status::Fail),
                ("logging.time_sync", Status::Warn),
            ],
        );
    }

    #[test]
    fn messages_name_what_is_wrong() {
        let missing = check_fixture(&Logging, "missing-rules", NOW, Status::Fail, &[]);
        assert_eq!(
            message(&missing, "logging.audit_rules"),
            "missing audit rules: no write watch on /etc/sudoers; syscalls not audited: clock_settime, mount"
        );
        // The generation declares the missing rules: the loaded set drifted, reload it.
        assert!(
            missing
                .fixes
                .iter()
                .any(|it| it.action == FIX_RULES_LOADER && it.safety == SafetyClass::Safe)
        );

        let volatile = check_fixture(&Logging, "volatile-journal", NOW, Status::Fail, &[]);
        let text = message(&volatile, "logging.journald_persistent");
        assert!(
            text.contains("Storage=volatile (from /run/systemd/journald.conf.d/90-volatile.conf)"),
            "{text}"
        );
        assert!(
            text.contains(
                "the generation declares storage = persistent, so the live configuration differs"
            ),
            "{text}"
        );
        assert_eq!(
            volatile.observed["journald"]["settings"]["MaxRetentionSec"]["value"],
            "1year"
        );

        let no_auditd = check_fixture(&Logging, "no-auditd", NOW, Status::Fail, &[]);
        let text = message(&no_auditd, "logging.auditd");
        assert!(
            text.starts_with("auditd.service is inactive; kernel audit is disabled (enabled 0)"),
            "{text}"
        );
        assert!(text.contains("security.auditd.enable = false"), "{text}");

        let unprivileged =
            check_fixture(&Logging, "auditctl-unprivileged", NOW, Status::Unknown, &[]);
        assert!(
            message(&unprivileged, "logging.audit_rules")
                .contains("You must be root to run this program")
        );

        let no_tools = check_fixture(&Logging, "no-time-tools", NOW, Status::Unknown, &[]);
        let text = message(&no_tools, "logging.time_sync");
        assert!(
            text.contains("506 Cannot talk to daemon")
                && text.contains("not been booted with systemd"),
            "{text}"
        );

        let debian = check_fixture(&Logging, "debian-auto", NOW, Status::Fail, &[]);
        let text = message(&debian, "logging.journald_retention");
        assert!(
            text.contains("MaxRetentionSec=1month") && text.contains("oldest entry is 33 d"),
            "{text}"
        );
        assert!(message(&debian, "logging.time_sync").starts_with("clock offset 1523 ms"));
    }

    #[test]
    fn journald_dropins_follow_systemd_precedence() {
        let files = vec![
            (
                "/etc/systemd/journald.conf".to_string(),
                "[Journal]\n#Storage=auto\nStorage=persistent\nSystemMaxUse=2G\n".to_string(),
            ),
            (
                "/usr/lib/systemd/journald.conf.d/10-a.conf".to_string(),
                "[Journal]\nStorage=volatile\n".to_string(),
            ),
            (
                "/etc/systemd/journald.conf.d/20-b.conf".to_string(),
                "[Journal]\nStorage=bogus\nSystemMaxUse=\n".to_string(),
            ),
            (
                "/run/systemd/journald.conf.d/30-c.conf".to_string(),
                "[Other]\nStorage=none\n".to_string(),
            ),
        ];
        let config = effective_journald_config(&files);
        assert_eq!(
            config.settings.get("Storage").map(|it| it.0.as_str()),
            Some("volatile")
        );
        assert!(!config.settings.contains_key("SystemMaxUse"));
        assert_eq!(
            config.ignored,
            vec!["/etc/systemd/journald.conf.d/20-b.conf: Storage=bogus"]
        );
        let continued =
            parse_unit_file_section("[Journal]\nMaxRetentionSec=1month \\\n 2w\n", "Journal");
        assert_eq!(
            continued,
            vec![("MaxRetentionSec".to_string(), "1month   2w".to_string())]
        );
    }

    #[test]
    fn timespans() {
        let days = |text: &str| {
            parse_timespan(text).map(|it| (it / SECONDS_PER_DAY * 100.0).round() / 100.0)
        };
        assert_eq!(days("90d"), Ok(90.0));
        assert_eq!(days("1year"), Ok(365.25));
        assert_eq!(days("3month"), Ok(91.32));
        assert_eq!(days("2w 1d"), Ok(15.0));
        assert_eq!(parse_timespan("3600"), Ok(3600.0));
        assert_eq!(parse_timespan("1h30min"), Ok(5400.0));
        assert!(parse_timespan("soon").is_err());
        assert!(parse_timespan("").is_err());
    }

    #[test]
    fn audit_rule_coverage() {
        let rules = parse_audit_rules(
            "-w /etc/ -p wa -k etc\n-w /etc/shadow -p r -k read-only\n\
             -a always,exit -F arch=b64 -S mount,umount2 -F auid>=1000 -F auid!=-1 -F key=mounts\n\
             -a never,exit -F arch=b64 -S adjtimex -F key=excluded\n\
             -a always,exit -S all -F path=/etc/group -F perm=wa -F auid>=1000 -F key=x\n\
             -a always,exit -S all -F dir=/var/log/audit -F perm=wa -F auid>=1000 -F key=y\n",
        )
        .unwrap();
        let covered = |path: &str| rules.iter().any(|rule| watches(rule, path));
        assert!(
            covered("/etc/passwd")
                && covered("/etc/sudoers")
                && covered("/var/log/audit/audit.log")
        );
        assert!(!covered("/var/log") && !covered("/etc2/passwd"));
        assert!(rules.iter().any(|rule| audits_syscall(rule, "mount")));
        assert!(!rules.iter().any(|rule| audits_syscall(rule, "adjtimex")));
        let only_read = parse_audit_rules("-w /etc/shadow -p r\n").unwrap();
        assert!(!only_read.iter().any(|rule| watches(rule, "/etc/shadow")));
        assert!(parse_audit_rules("No rules\n").unwrap().is_empty());
        assert!(parse_audit_rules("You must be root to run this program.\n").is_err());
    }

    #[test]
    fn audit_status_formats() {
        let modern =
            parse_audit_status("enabled 2\nfailure 1\npid 612\nloginuid_immutable 0 unlocked\n")
                .unwrap();
        assert_eq!(
            (modern.enabled, modern.fields.get("pid").map(String::as_str)),
            (2, Some("612"))
        );
        let old = parse_audit_status("AUDIT_STATUS: enabled=1 flag=1 pid=612 rate_limit=0 backlog_limit=320 lost=0 backlog=0\n").unwrap();
        assert_eq!(
            (
                old.enabled,
                old.fields.get("backlog_limit").map(String::as_str)
            ),
            (1, Some("320"))
        );
        assert!(parse_audit_status("No rules\n").is_err());
    }

    #[test]
    fn chrony_and_timedatectl_texts() {
        let synced = parse_chrony_tracking(
            "C0A80001,ntp.example.invalid,3,1795797830.046441825,-0.000012345,0.000001,0.000020,-3.1,0.001,0.02,0.01,0.0005,64.4,Normal\n",
        )
        .unwrap();
        assert!((synced.system_offset + 0.000012345).abs() < 1e-12);
        assert!(parse_chrony_tracking("506 Cannot talk to daemon\n").is_err());
        assert!(parse_chrony_tracking("a,b,c,d,NaN,f,g,h,i,j,k,l,m,Normal").is_err());
        assert_eq!(parse_yes_no("yes\n").ok(), Some(true));
        assert!(parse_yes_no("").is_err());
    }

    #[test]
    fn list_boots_format() {
        // Real output of journalctl 252 over a journal built with systemd-journal-remote.
        let boots = parse_list_boots(
            r#"[{"index":-1,"boot_id":"4f9e1d2c8b7a4e6f9d0c1b2a3e4f5a6b","first_entry":1756684800000000,"last_entry":1756684802000000},{"index":0,"boot_id":"a1b2c3d4e5f60718293a4b5c6d7e8f90","first_entry":1763200000000000,"last_entry":1763200002000000}]"#,
        )
        .unwrap();
        assert_eq!(
            boots.iter().map(|it| it.first_entry).min(),
            Some(ts("2025-09-01T00:00:00Z"))
        );
        assert!(parse_list_boots("").unwrap().is_empty());
        // systemd 250 and older print a table instead of JSON: unknown, not "no boots".
        assert!(parse_list_boots("-1 4f9e1d2c8b7a4e6f9d0c1b2a3e4f5a6b Mon 2025-09-01 00:00:00 UTC—Mon 2025-09-01 00:00:02 UTC").is_err());
    }

    fn policy() -> LoggingPolicy {
        Baseline::embedded().policy().checks.logging.clone()
    }

    /// An observation whose every fact is the given error, then patched by the caller.
    fn failing_observation() -> Observation {
        let missing = || FactError::ToolMissing {
            program: "x".into(),
        };
        Observation {
            journald: Err(missing()),
            var_log_journal: Err(missing()),
            boots: Err(missing()),
            declared: DeclaredFacts::Absent,
            audit_status: Err(missing()),
            audit_rules: Err(missing()),
            cmdline_audit: Err(missing()),
            auditd_active: Err(missing()),
            ntp_synchronized: Err(missing()),
            chrony: Err(missing()),
        }
    }

    #[test]
    fn unreadable_facts_are_unknown_never_pass() {
        let judgement = Logging.judge(&failing_observation(), &Baseline::embedded(), ts(NOW));
        for result in &judgement.results {
            assert_eq!(result.status, Status::Unknown, "{result:?}");
        }
        assert_eq!(judgement.results.len(), 6);
    }

    /// Starts the real auditd tools against this kernel: status and rules parse, and rules added
    /// with a private key are found by the coverage logic. The rules are removed by key on drop.
    #[test]
    fn real_auditctl_status_and_rules() {
        if !crate::checks::testing::real_tools("real_auditctl_status_and_rules") {
            return;
        }
        const KEY: &str = "msp-compliance-test";
        struct RemoveRules;
        impl Drop for RemoveRules {
            fn drop(&mut self) {
                let _ = Command::new("auditctl")
                    .args(["-D", "-k", KEY])
                    .stdout(Stdio::null())
                    .status();
            }
        }
        let status_text = run_real("auditctl", &["-s"]);
        let status = parse_audit_status(&status_text).unwrap();
        assert!(status.fields.contains_key("backlog_limit"), "{status_text}");
        if status.enabled == 2 {
            eprintln!("audit rules are locked on this host; only the status was checked");
            return;
        }
        let _guard = RemoveRules;
        run_real("auditctl", &["-w", "/etc/passwd", "-p", "wa", "-k", KEY]);
        run_real(
            "auditctl",
            &[
                "-a",
                "always,exit",
                "-F",
                "arch=b64",
                "-S",
                "adjtimex,settimeofday",
                "-F",
                &format!("key={KEY}"),
            ],
        );
        run_real(
            "auditctl",
            &[
                "-a",
                "always,exit",
                "-F",
                "path=/etc/shadow",
                "-F",
                "perm=wa",
                "-k",
                KEY,
            ],
        );
        let rules = parse_audit_rules(&run_real("auditctl", &["-l"])).unwrap();
        let ours: Vec<&AuditRule> = rules.iter().filter(|it| it.text.contains(KEY)).collect();
        assert_eq!(
            ours.len(),
            3,
            "{:?}",
            rules.iter().map(|it| &it.text).collect::<Vec<_>>()
        );
        for path in ["/etc/passwd", "/etc/shadow"] {
            assert!(ours.iter().any(|rule| watches(rule, path)), "{path}");
        }
        for syscall in ["adjtimex", "settimeofday"] {
            assert!(
                ours.iter().any(|rule| audits_syscall(rule, syscall)),
                "{syscall}"
            );
        }
    }

    /// journalctl's real `--list-boots -o json` output over a journal written by
    /// systemd-journal-remote from an export stream with two boots.
    #[test]
    fn real_journalctl_list_boots() {
        if !crate::checks::testing::real_tools("real_journalctl_list_boots") {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let mut export = String::new();
        for (boot, start) in [
            (
                "4f9e1d2c8b7a4e6f9d0c1b2a3e4f5a6b",
                1_756_684_800_000_000_i64,
            ),
            ("a1b2c3d4e5f60718293a4b5c6d7e8f90", 1_763_200_000_000_000),
        ] {
            for idx in 0..3 {
                export.push_str(&format!(
                    "__REALTIME_TIMESTAMP={}\n__MONOTONIC_TIMESTAMP={}\n_BOOT_ID={boot}\n_MACHINE_ID=0123456789abcdef0123456789abcdef\nMESSAGE=entry {idx}\n\n",
                    start + idx * 1_000_000,
                    1_000_000 + idx * 1_000_000
                ));
            }
        }
        let journal = dir.path().join("remote.journal");
        let mut child = Command::new("/lib/systemd/systemd-journal-remote")
            .arg(format!("--output={}", journal.display()))
            .arg("-")
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::io::Write::write_all(&mut child.stdin.take().unwrap(), export.as_bytes()).unwrap();
        assert!(child.wait().unwrap().success());
        let directory = format!("--directory={}", dir.path().display());
        let text = run_real(
            "journalctl",
            &[&directory, "--list-boots", "-o", "json", "--no-pager"],
        );
        let boots = parse_list_boots(&text).unwrap();
        assert_eq!(boots.len(), 2, "{text}");
        assert_eq!(
            boots.iter().map(|it| it.first_entry).min(),
            Some(ts("2025-09-01T00:00:00Z"))
        );
        assert_eq!(
            boots.iter().filter_map(|it| it.last_entry).max(),
            Some(ts("2025-11-15T09:46:42Z"))
        );
    }

    /// A real chronyd (not touching the clock: `-x`) on a private socket: synchronised to its
    /// local reference it passes; pointed at a silent loopback server it is not synchronised.
    #[test]
    fn real_chronyc_tracking() {
        if !crate::checks::testing::real_tools("real_chronyc_tracking") {
            return;
        }
        for (name, source, expect) in [
            ("local", "local stratum 10", Status::Pass),
            ("silent", "server 127.0.0.2 iburst", Status::Fail),
        ] {
            let dir = tempfile::tempdir().unwrap();
            let socket = dir.path().join("chronyd.sock");
            let mut perms = std::fs::metadata(dir.path()).unwrap().permissions();
            // chronyd refuses a command socket in a directory that others may enter.
            std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o700);
            std::fs::set_permissions(dir.path(), perms).unwrap();
            let conf = dir.path().join("chrony.conf");
            std::fs::write(
                &conf,
                format!(
                    "{source}\nbindcmdaddress {}\ncmdport 0\nport 0\npidfile {}\ndriftfile {}\n",
                    socket.display(),
                    dir.path().join("chronyd.pid").display(),
                    dir.path().join("drift").display()
                ),
            )
            .unwrap();
            let _daemon = KillOnDrop(
                Command::new("chronyd")
                    .args(["-d", "-x", "-u", "root", "-f"])
                    .arg(&conf)
                    .stdout(Stdio::null())
                    .stderr(std::fs::File::create(dir.path().join("chronyd.log")).unwrap())
                    .spawn()
                    .unwrap(),
            );
            let host_arg = socket.display().to_string();
            // The local reference takes a few seconds to be selected, longer on a loaded
            // machine; poll until the expected state or the (generous, bounded) deadline.
            let deadline = Instant::now() + Duration::from_secs(60);
            let mut status = Status::Unknown;
            while Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(500));
                let Ok(out) = Command::new("chronyc")
                    .args(["-h", &host_arg, "-c", "tracking"])
                    .output()
                else {
                    continue;
                };
                let Ok(tracking) = parse_chrony_tracking(&String::from_utf8_lossy(&out.stdout))
                else {
                    continue;
                };
                let mut observation = failing_observation();
                observation.chrony = Ok(tracking);
                let mut judgement = Judgement::default();
                judge_time_sync(&mut judgement, &observation, &policy());
                status = judgement.status();
                if status == expect {
                    break;
                }
            }
            let log = std::fs::read_to_string(dir.path().join("chronyd.log")).unwrap_or_default();
            assert_eq!(status, expect, "{name}: chronyd said {log}");
        }
    }

    fn run_real(program: &str, args: &[&str]) -> String {
        let out = Command::new(program).args(args).output().unwrap();
        assert!(
            out.status.success(),
            "{program} {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    proptest! {
        #[test]
        fn audit_parsers_never_pass_on_garbage(text in "\\PC*") {
            let mut observation = failing_observation();
            observation.audit_status = parse_audit_status(&text);
            observation.audit_rules = parse_audit_rules(&text);
            observation.auditd_active = Ok("active".to_string());
            let mut judgement = Judgement::default();
            judge_auditd(&mut judgement, &observation, &policy());
            judge_audit_rules(&mut judgement, &observation, &policy());
            if !text.contains("enabled") {
                prop_assert_ne!(judgement.results[0].status, Status::Pass);
            }
            // Garbage cannot name every required watch and syscall.
            prop_assert_ne!(judgement.results[1].status, Status::Pass);
        }

        #[test]
        fn time_parsers_never_pass_on_garbage(text in "\\PC*") {
            let mut observation = failing_observation();
            observation.chrony = parse_chrony_tracking(&text);
            observation.ntp_synchronized = parse_yes_no(&text);
            let mut judgement = Judgement::default();
            judge_time_sync(&mut judgement, &observation, &policy());
            if text.trim() != "yes" && text.matches(',').count() < 13 {
                prop_assert_ne!(judgement.status(), Status::Pass);
            }
        }

        #[test]
        fn journald_parsers_never_panic(text in "\\PC*") {
            let _ = parse_timespan(&text);
            let config = effective_journald_config(&[("/etc/systemd/journald.conf".to_string(), text.clone())]);
            if let Some((storage, _)) = config.settings.get("Storage") {
                prop_assert!(["persistent", "volatile", "auto", "none"].contains(&storage.as_str()));
                prop_assert!(text.contains("[Journal]"));
            }
        }

        #[test]
        fn list_boots_garbage_is_never_coverage(text in "\\PC*") {
            let mut observation = failing_observation();
            observation.boots = parse_list_boots(&text);
            let mut judgement = Judgement::default();
            judge_journald_retention(&mut judgement, &observation, &policy(), ts(NOW));
            prop_assert_ne!(judgement.status(), Status::Pass);
        }
    }
}
