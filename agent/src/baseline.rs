//! The baseline: versioned policy data that says what "compliant" means, with its digest.
//!
//! Every threshold of `research/checks.md` is a field here with that document's value as its
//! default, so a baseline file only states what it changes, and a finding records exactly which
//! thresholds judged it (the check's section) and which baseline (id, version, digest).
//! The digest is SHA-256 over the canonical JSON of the *effective* baseline (defaults filled
//! in, keys sorted, no whitespace), so the same policy written in JSON or YAML, in any key order,
//! has the same digest, and changing any default changes it.
//! The default baseline `baselines/hipaa.json` is embedded in the binary; the NixOS module reads
//! the same file for its option defaults.

use std::collections::BTreeMap;
use std::path::Path;

use jiff::civil::Date;
use msp_compliance_protocol::finding::{BaselineRef, Severity};
use msp_compliance_protocol::ids::check;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::config::{LoadError, parse_document, read_document};

/// The embedded default baseline.
pub const EMBEDDED_HIPAA: &str = include_str!("../../baselines/hipaa.json");

/// A baseline file, as written.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BaselineFile {
    /// Baseline id, e.g. `hipaa`.
    pub id: String,
    /// Baseline version; findings record it.
    pub version: String,
    /// What the baseline is for.
    #[serde(default)]
    pub description: String,
    /// Policy of the host checks.
    #[serde(default)]
    pub checks: ChecksPolicy,
    /// Policy of the Windows runbooks.
    #[serde(default)]
    pub windows: WindowsPolicy,
    /// Accepted exceptions.
    #[serde(default)]
    pub waivers: Vec<Waiver>,
}

/// Policy of each host check.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct ChecksPolicy {
    /// Patching.
    pub patching: PatchingPolicy,
    /// AV/EDR.
    pub av_edr: AvEdrPolicy,
    /// Backup.
    pub backup: BackupPolicy,
    /// Audit logging.
    pub logging: LoggingPolicy,
    /// Firewall.
    pub firewall: FirewallPolicy,
    /// Encryption at rest.
    pub encryption: EncryptionPolicy,
}

/// Patching thresholds (`research/checks.md` §1).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct PatchingPolicy {
    /// Run the check.
    pub enabled: bool,
    /// Impact when not passing.
    #[schemars(with = "SeverityName")]
    pub severity: Severity,
    /// nixpkgs commit of the running system older than this many days: warn.
    pub nixpkgs_age_warn_days: u32,
    /// nixpkgs commit of the running system older than this many days: fail.
    pub nixpkgs_age_fail_days: u32,
    /// End-of-life date per NixOS release (`YY.MM`); past it: fail.
    #[schemars(with = "BTreeMap<String, String>")]
    pub release_eol: BTreeMap<String, Date>,
    /// A pending reboot older than this many days: fail (younger: warn).
    pub reboot_pending_fail_days: u32,
    /// With autoUpgrade enabled, no successful upgrade for this many hours: fail.
    pub auto_upgrade_max_age_hours: u32,
    /// Running system differs from the pinned generation for longer than this: fail.
    pub pinned_rollout_grace_hours: u32,
    /// Unfixed CVE with CVSSv3 >= 9.0 for more than this many days (vulnix, in CI): fail.
    pub cve_critical_days: u32,
    /// Unfixed CVE with CVSSv3 >= 7.0 for more than this many days: fail.
    pub cve_high_days: u32,
    /// Debian/Ubuntu: package lists older than this many hours: warn.
    pub package_lists_warn_hours: u32,
    /// Debian/Ubuntu: package lists older than this many days: fail.
    pub package_lists_fail_days: u32,
    /// Debian/Ubuntu: more pending security upgrades than this: fail.
    pub max_pending_security_upgrades: u32,
}

impl Default for PatchingPolicy {
    fn default() -> PatchingPolicy {
        let eol = |text: &str| text.parse::<Date>().expect("literal date is valid"); // Literals below.
        PatchingPolicy {
            enabled: true,
            severity: Severity::High,
            nixpkgs_age_warn_days: 14,
            nixpkgs_age_fail_days: 30,
            release_eol: BTreeMap::from([
                ("24.05".to_string(), eol("2024-12-31")),
                ("24.11".to_string(), eol("2025-06-30")),
                ("25.05".to_string(), eol("2025-12-31")),
                ("25.11".to_string(), eol("2026-06-30")),
                ("26.05".to_string(), eol("2026-12-31")),
            ]),
            reboot_pending_fail_days: 7,
            auto_upgrade_max_age_hours: 48,
            pinned_rollout_grace_hours: 24,
            cve_critical_days: 15,
            cve_high_days: 30,
            package_lists_warn_hours: 48,
            package_lists_fail_days: 7,
            max_pending_security_upgrades: 0,
        }
    }
}

/// AV/EDR thresholds (`research/checks.md` §2.1).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct AvEdrPolicy {
    /// Run the check.
    pub enabled: bool,
    /// Impact when not passing.
    #[schemars(with = "SeverityName")]
    pub severity: Severity,
    /// Some AV/EDR must be present and alive; none installed is a fail.
    pub required: bool,
    /// Daily signature database older than this many hours: warn.
    pub signature_warn_hours: u32,
    /// Daily signature database older than this many days: fail.
    pub signature_fail_days: u32,
    /// A signature updater (freshclam) must be present and enabled.
    pub updater_required: bool,
    /// With a scheduled scanner, last successful scan older than this many days: fail.
    pub scan_max_age_days: u32,
    /// On-access scanning (clamonacc) is required.
    pub on_access_required: bool,
}

impl Default for AvEdrPolicy {
    fn default() -> AvEdrPolicy {
        AvEdrPolicy {
            enabled: true,
            severity: Severity::High,
            required: true,
            signature_warn_hours: 48,
            signature_fail_days: 7,
            updater_required: true,
            scan_max_age_days: 7,
            on_access_required: false,
        }
    }
}

/// Backup thresholds (`research/checks.md` §3.3).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct BackupPolicy {
    /// Run the check.
    pub enabled: bool,
    /// Impact when not passing.
    #[schemars(with = "SeverityName")]
    pub severity: Severity,
    /// At least one backup job must exist.
    pub required: bool,
    /// Newest snapshot older than this many hours: warn.
    pub rpo_warn_hours: u32,
    /// Newest snapshot older than this many hours: fail.
    pub rpo_fail_hours: u32,
    /// No successful structural check (`restic check`) for this many days: fail.
    pub check_max_age_days: u32,
    /// No successful data-read check for this many days: fail.
    pub data_check_max_age_days: u32,
    /// No successful restore test for this many days: fail.
    pub restore_test_max_age_days: u32,
    /// Incomplete runs (restic exit 3, borg checkpoints) in a row that fail the check.
    pub incomplete_fail_consecutive: u32,
}

impl Default for BackupPolicy {
    fn default() -> BackupPolicy {
        BackupPolicy {
            enabled: true,
            severity: Severity::High,
            required: true,
            rpo_warn_hours: 26,
            rpo_fail_hours: 48,
            check_max_age_days: 7,
            data_check_max_age_days: 30,
            restore_test_max_age_days: 90,
            incomplete_fail_consecutive: 2,
        }
    }
}

/// Audit logging thresholds (`research/checks.md` §4.1, §8.1).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct LoggingPolicy {
    /// Run the check.
    pub enabled: bool,
    /// Impact when not passing.
    #[schemars(with = "SeverityName")]
    pub severity: Severity,
    /// journald must store logs persistently (or forwarding must be verified).
    pub journald_persistent_required: bool,
    /// Oldest local journal entry younger than this many days (and no verified forwarding): warn.
    pub coverage_min_days: u32,
    /// The kernel audit subsystem and auditd must be enabled.
    pub auditd_required: bool,
    /// Warn when audit rules are not locked (immutable, `enabled 2`).
    pub audit_lock_recommended: bool,
    /// Paths that must be watched by an audit rule.
    pub required_audit_watches: Vec<String>,
    /// Syscalls that must be audited.
    pub required_audit_syscalls: Vec<String>,
    /// Clock offset above this many milliseconds: warn.
    pub time_offset_warn_ms: u64,
    /// Clock offset above this many milliseconds, or not synchronised: fail.
    pub time_offset_fail_ms: u64,
}

impl Default for LoggingPolicy {
    fn default() -> LoggingPolicy {
        let strings = |items: &[&str]| items.iter().map(|it| it.to_string()).collect();
        LoggingPolicy {
            enabled: true,
            severity: Severity::High,
            journald_persistent_required: true,
            coverage_min_days: 90,
            auditd_required: true,
            audit_lock_recommended: true,
            required_audit_watches: strings(&[
                "/etc/passwd",
                "/etc/shadow",
                "/etc/group",
                "/etc/sudoers",
                "/var/log/audit",
            ]),
            required_audit_syscalls: strings(&[
                "adjtimex",
                "settimeofday",
                "clock_settime",
                "init_module",
                "finit_module",
                "delete_module",
                "mount",
            ]),
            time_offset_warn_ms: 1_000,
            time_offset_fail_ms: 60_000,
        }
    }
}

/// Firewall policy (`research/checks.md` §5.1).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct FirewallPolicy {
    /// Run the check.
    pub enabled: bool,
    /// Impact when not passing.
    #[schemars(with = "SeverityName")]
    pub severity: Severity,
    /// TCP ports that may be open to the network.
    pub allowed_tcp_ports: Vec<u16>,
    /// UDP ports that may be open to the network.
    pub allowed_udp_ports: Vec<u16>,
    /// Interfaces that may be trusted (all traffic accepted).
    pub allowed_trusted_interfaces: Vec<String>,
    /// Ports opened at run time (`temp-ports`) are acceptable.
    pub allow_temp_ports: bool,
    /// Forwarding with accepting forward chains is acceptable.
    pub allow_forwarding: bool,
}

impl Default for FirewallPolicy {
    fn default() -> FirewallPolicy {
        FirewallPolicy {
            enabled: true,
            severity: Severity::High,
            allowed_tcp_ports: vec![22],
            allowed_udp_ports: Vec::new(),
            allowed_trusted_interfaces: vec!["lo".to_string()],
            allow_temp_ports: false,
            allow_forwarding: false,
        }
    }
}

/// Encryption-at-rest policy (`research/checks.md` §6.1).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct EncryptionPolicy {
    /// Run the check.
    pub enabled: bool,
    /// Impact when not passing.
    #[schemars(with = "SeverityName")]
    pub severity: Severity,
    /// Paths that may hold ePHI; each must sit on LUKS or an encrypted ZFS dataset.
    pub phi_paths: Vec<String>,
    /// Swap must be encrypted, zram, or absent.
    pub swap_encrypted_required: bool,
    /// `/tmp` must be tmpfs or encrypted.
    pub tmp_encrypted_required: bool,
    /// Smallest acceptable XTS key, in bits (512 = AES-256-XTS).
    pub min_xts_key_bits: u32,
}

impl Default for EncryptionPolicy {
    fn default() -> EncryptionPolicy {
        EncryptionPolicy {
            enabled: true,
            severity: Severity::Critical,
            phi_paths: ["/", "/var", "/var/lib", "/home", "/srv"]
                .iter()
                .map(|it| it.to_string())
                .collect(),
            swap_encrypted_required: true,
            tmp_encrypted_required: true,
            min_xts_key_bits: 512,
        }
    }
}

/// Thresholds of the Windows runbooks (`research/checks.md` §1.2–§7); used by the WinRM side.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct WindowsPolicy {
    /// Missing critical update released more than this many days ago: fail.
    pub critical_update_days: u32,
    /// Missing important update released more than this many days ago: fail.
    pub important_update_days: u32,
    /// Other missing security update: warn after this many days.
    pub other_security_update_warn_days: u32,
    /// Other missing security update: fail after this many days.
    pub other_security_update_fail_days: u32,
    /// No successful Windows Update search for this many days: fail.
    pub update_search_max_age_days: u32,
    /// Pending reboot older than this many days: fail.
    pub reboot_pending_fail_days: u32,
    /// Defender signatures older than this many days: warn.
    pub defender_signature_warn_days: u32,
    /// Defender signatures older than this many days: fail.
    pub defender_signature_fail_days: u32,
    /// Quick scan older than this many days: warn.
    pub quick_scan_warn_days: u32,
    /// Smallest Security event log, in bytes (CIS: 196,608 KB).
    pub security_log_min_bytes: u64,
    /// Smallest Application/System event log, in bytes (CIS: 32,768 KB).
    pub other_log_min_bytes: u64,
    /// TCP ports that must not be open to Any (only to management subnets).
    pub sensitive_ports: Vec<u16>,
    /// BitLocker suspended longer than this many hours: fail.
    pub bitlocker_suspended_max_hours: u32,
    /// AD replication largest delta: warn above this many hours.
    pub replication_warn_hours: u32,
    /// AD replication largest delta: fail above this many hours.
    pub replication_fail_hours: u32,
    /// DC time offset to the PDC: warn at or above this many milliseconds.
    pub dc_time_offset_warn_ms: u64,
    /// DC time offset to the PDC: fail at or above this many milliseconds.
    pub dc_time_offset_fail_ms: u64,
    /// DC time offset to the PDC: critical at or above this many milliseconds (Kerberos skew).
    pub dc_time_offset_critical_ms: u64,
}

impl Default for WindowsPolicy {
    fn default() -> WindowsPolicy {
        WindowsPolicy {
            critical_update_days: 15,
            important_update_days: 30,
            other_security_update_warn_days: 30,
            other_security_update_fail_days: 90,
            update_search_max_age_days: 7,
            reboot_pending_fail_days: 7,
            defender_signature_warn_days: 1,
            defender_signature_fail_days: 3,
            quick_scan_warn_days: 7,
            security_log_min_bytes: 201_326_592,
            other_log_min_bytes: 33_554_432,
            sensitive_ports: vec![445, 3389, 5985, 5986],
            bitlocker_suspended_max_hours: 24,
            replication_warn_hours: 3,
            replication_fail_hours: 24,
            dc_time_offset_warn_ms: 1_000,
            dc_time_offset_fail_ms: 60_000,
            dc_time_offset_critical_ms: 300_000,
        }
    }
}

/// Schema stand-in for [`Severity`] (the protocol crate does not depend on schemars).
#[derive(JsonSchema)]
#[serde(rename_all = "snake_case")]
#[allow(dead_code)] // Only its schema is used.
enum SeverityName {
    Low,
    Medium,
    High,
    Critical,
}

/// An accepted exception: a `fail` of `check` becomes `exception` until `expires`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Waiver {
    /// Check id the waiver covers.
    pub check: String,
    /// Why the fail is accepted (the compensating control, e.g. datastore encryption).
    pub justification: String,
    /// Ticket that tracks the exception.
    pub ticket: String,
    /// Last day (UTC) on which the waiver applies; from the next day the check fails again.
    #[schemars(with = "String")]
    pub expires: Date,
}

/// A loaded, validated baseline with its digest.
#[derive(Clone, Debug)]
pub struct Baseline {
    policy: BaselineFile,
    digest: String,
}

impl Baseline {
    /// The embedded default baseline.
    pub fn embedded() -> Baseline {
        // The embedded file is parsed by a unit test on every build, so this cannot fail at
        // run time without also failing `cargo test`.
        Baseline::parse(Path::new("baselines/hipaa.json"), EMBEDDED_HIPAA.as_bytes())
            .expect("embedded baseline is valid (tested)")
    }

    /// Reads a baseline file (JSON or YAML).
    pub fn load(path: &Path) -> Result<Baseline, LoadError> {
        let bytes = read_document(path)?;
        Baseline::parse(path, &bytes)
    }

    /// Parses and validates a baseline document.
    pub fn parse(path: &Path, bytes: &[u8]) -> Result<Baseline, LoadError> {
        let policy: BaselineFile = parse_document(path, bytes)?;
        validate(path, &policy)?;
        let canonical = serde_json::to_vec(&serde_json::to_value(&policy).map_err(|err| {
            LoadError::invalid(path, "", format!("cannot serialize baseline: {err}"))
        })?)
        .map_err(|err| LoadError::invalid(path, "", format!("cannot serialize baseline: {err}")))?;
        let digest = format!("sha256:{}", hex::encode(Sha256::digest(&canonical)));
        Ok(Baseline { policy, digest })
    }

    /// The effective policy.
    pub fn policy(&self) -> &BaselineFile {
        &self.policy
    }

    /// `sha256:<hex>` of the effective baseline.
    pub fn digest(&self) -> &str {
        &self.digest
    }

    /// The reference findings record.
    pub fn reference(&self) -> BaselineRef {
        BaselineRef {
            id: self.policy.id.clone(),
            version: self.policy.version.clone(),
            digest: self.digest.clone(),
        }
    }

    /// The waiver for a check, if any (validation guarantees at most one per check).
    pub fn waiver(&self, check_id: &str) -> Option<&Waiver> {
        self.policy.waivers.iter().find(|it| it.check == check_id)
    }

    /// The check's thresholds as JSON, as recorded in findings.
    pub fn thresholds(&self, check_id: &str) -> serde_json::Value {
        let value = serde_json::to_value(&self.policy.checks).unwrap_or_default();
        value.get(check_id).cloned().unwrap_or_default()
    }

    /// Returns true if and only if the check is enabled.
    pub fn is_enabled(&self, check_id: &str) -> bool {
        let checks = &self.policy.checks;
        match check_id {
            check::PATCHING => checks.patching.enabled,
            check::AV_EDR => checks.av_edr.enabled,
            check::BACKUP => checks.backup.enabled,
            check::LOGGING => checks.logging.enabled,
            check::FIREWALL => checks.firewall.enabled,
            check::ENCRYPTION => checks.encryption.enabled,
            _ => false,
        }
    }

    /// Impact of a check when not passing.
    pub fn severity(&self, check_id: &str) -> Severity {
        let checks = &self.policy.checks;
        match check_id {
            check::PATCHING => checks.patching.severity,
            check::AV_EDR => checks.av_edr.severity,
            check::BACKUP => checks.backup.severity,
            check::LOGGING => checks.logging.severity,
            check::FIREWALL => checks.firewall.severity,
            check::ENCRYPTION => checks.encryption.severity,
            _ => Severity::High,
        }
    }
}

/// JSON Schema of the baseline file.
pub fn schema() -> schemars::Schema {
    schemars::schema_for!(BaselineFile)
}

fn validate(path: &Path, policy: &BaselineFile) -> Result<(), LoadError> {
    let invalid = |field: String, message: String| Err(LoadError::invalid(path, &field, message));
    if !crate::config::is_identifier(&policy.id) {
        return invalid(
            "id".into(),
            format!("expected a plain identifier, found {:?}", policy.id),
        );
    }
    if policy.version.trim().is_empty() {
        return invalid("version".into(), "expected a non-empty version".into());
    }
    let checks = &policy.checks;
    let ordered: [(&str, u64, u64); 6] = [
        (
            "checks.patching.nixpkgs_age_warn_days",
            checks.patching.nixpkgs_age_warn_days.into(),
            checks.patching.nixpkgs_age_fail_days.into(),
        ),
        (
            "checks.patching.package_lists_warn_hours",
            checks.patching.package_lists_warn_hours.into(),
            u64::from(checks.patching.package_lists_fail_days) * 24,
        ),
        (
            "checks.av_edr.signature_warn_hours",
            checks.av_edr.signature_warn_hours.into(),
            u64::from(checks.av_edr.signature_fail_days) * 24,
        ),
        (
            "checks.backup.rpo_warn_hours",
            checks.backup.rpo_warn_hours.into(),
            checks.backup.rpo_fail_hours.into(),
        ),
        (
            "checks.logging.time_offset_warn_ms",
            checks.logging.time_offset_warn_ms,
            checks.logging.time_offset_fail_ms,
        ),
        (
            "windows.defender_signature_warn_days",
            policy.windows.defender_signature_warn_days.into(),
            policy.windows.defender_signature_fail_days.into(),
        ),
    ];
    for (field, warn, fail) in ordered {
        if warn > fail {
            return invalid(
                field.into(),
                format!("expected at most the fail threshold, found {warn} > {fail}"),
            );
        }
    }
    for (idx, phi_path) in checks.encryption.phi_paths.iter().enumerate() {
        if !phi_path.starts_with('/') {
            return invalid(
                format!("checks.encryption.phi_paths[{idx}]"),
                format!("expected an absolute path, found {phi_path:?}"),
            );
        }
    }
    for (idx, watch) in checks.logging.required_audit_watches.iter().enumerate() {
        if !watch.starts_with('/') {
            return invalid(
                format!("checks.logging.required_audit_watches[{idx}]"),
                format!("expected an absolute path, found {watch:?}"),
            );
        }
    }
    let mut seen = Vec::new();
    for (idx, waiver) in policy.waivers.iter().enumerate() {
        let field = |name: &str| format!("waivers[{idx}].{name}");
        if !check::ALL.contains(&waiver.check.as_str()) {
            return invalid(
                field("check"),
                format!(
                    "expected one of {}, found {:?}",
                    check::ALL.join(", "),
                    waiver.check
                ),
            );
        }
        if seen.contains(&waiver.check.as_str()) {
            return invalid(
                field("check"),
                format!("a second waiver for {:?}; keep one per check", waiver.check),
            );
        }
        seen.push(waiver.check.as_str());
        if waiver.justification.trim().is_empty() {
            return invalid(
                field("justification"),
                "expected a non-empty justification".into(),
            );
        }
        if waiver.ticket.trim().is_empty() {
            return invalid(
                field("ticket"),
                "expected a non-empty ticket reference".into(),
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_baseline_is_valid_and_complete() {
        let baseline = Baseline::embedded();
        assert_eq!(baseline.policy().id, "hipaa");
        assert!(baseline.digest().starts_with("sha256:"));
        // The embedded file states every threshold explicitly: it is equal to the defaults, so
        // an auditor reading it sees the effective policy, and a default change shows in a diff.
        let file: serde_json::Value = serde_json::from_str(EMBEDDED_HIPAA).unwrap();
        let effective = serde_json::to_value(baseline.policy()).unwrap();
        assert_eq!(file["checks"], effective["checks"]);
        assert_eq!(file["windows"], effective["windows"]);
        assert_eq!(
            effective["checks"],
            serde_json::to_value(ChecksPolicy::default()).unwrap()
        );
    }

    #[test]
    fn digest_is_format_and_order_independent_but_value_sensitive() {
        let json = Baseline::parse(Path::new("b.json"), br#"{"version":"1","id":"x"}"#).unwrap();
        let yaml = Baseline::parse(Path::new("b.yaml"), b"id: x\nversion: '1'\n").unwrap();
        assert_eq!(json.digest(), yaml.digest());
        let changed = Baseline::parse(
            Path::new("b.yaml"),
            b"id: x\nversion: '1'\nchecks:\n  backup:\n    rpo_fail_hours: 72\n",
        )
        .unwrap();
        assert_ne!(json.digest(), changed.digest());
    }

    #[test]
    fn bad_baselines_name_the_field() {
        let check = |text: &str, expect: &str| {
            let err = Baseline::parse(Path::new("b.yaml"), text.as_bytes())
                .unwrap_err()
                .to_string();
            assert!(err.contains(expect), "{err:?} does not contain {expect:?}");
        };
        check(
            "id: x\nversion: '1'\nchecks:\n  backup:\n    rpo_fail_hour: 3\n",
            "checks.backup.rpo_fail_hour: unknown field `rpo_fail_hour`, expected one of",
        );
        check(
            "id: x\nversion: '1'\nchecks:\n  backup:\n    rpo_warn_hours: 50\n",
            "checks.backup.rpo_warn_hours: expected at most",
        );
        check(
            "id: x\nversion: '1'\nwaivers:\n  - {check: encryptoin, justification: j, ticket: T-1, expires: 2027-01-01}\n",
            "waivers[0].check: expected one of",
        );
        check(
            "id: x\nversion: '1'\nwaivers:\n  - {check: encryption, justification: j, ticket: T-1}\n",
            "missing field `expires`",
        );
        check(
            "id: x\nversion: '1'\nwaivers:\n  - {check: encryption, justification: j, ticket: T-1, expires: 2027-13-01}\n",
            "waivers[0].expires",
        );
        check(
            "id: x\nversion: '1'\nchecks:\n  encryption:\n    phi_paths: [srv]\n",
            "checks.encryption.phi_paths[0]",
        );
    }
}
