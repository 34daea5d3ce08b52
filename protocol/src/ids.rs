//! Identifiers both ends agree on: check ids, runbook ids and HIPAA Security Rule citations.
//!
//! They are defined once here so that a typo is a compile error, not a silent mismatch between
//! what the agent emits and what a rule or the server matches on.

/// Check ids, as they appear in findings, baselines, waivers and `--only`.
pub mod check {
    /// Patch level of the host (NixOS generation age, apt state, pending reboots).
    pub const PATCHING: &str = "patching";
    /// Anti-malware / EDR presence, liveness and signature age.
    pub const AV_EDR: &str = "av_edr";
    /// Backup recency against the recovery point objective, and restore tests.
    pub const BACKUP: &str = "backup";
    /// Audit logging: journald persistence and retention, auditd, time sync.
    pub const LOGGING: &str = "logging";
    /// Host firewall: default deny, open ports, listening sockets.
    pub const FIREWALL: &str = "firewall";
    /// Encryption at rest of the data paths, swap and `/tmp`.
    pub const ENCRYPTION: &str = "encryption";

    /// Every check id, in the order checks run and are reported.
    pub const ALL: [&str; 6] = [PATCHING, AV_EDR, BACKUP, LOGGING, FIREWALL, ENCRYPTION];
}

/// Runbook ids: the `action` of an order (the agent's whitelist is its runbook registry).
pub mod runbook {
    /// Run the checks now (all, or the listed ones) and record their findings.
    pub const RUN_CHECKS: &str = "run-checks";
    /// Re-send evidence records from a sequence number on.
    pub const COLLECT_EVIDENCE: &str = "collect-evidence";
    /// Start a stopped or failed unit the generation declares restartable; verify it stays up.
    pub const RESTART_UNIT: &str = "restart-unit";
    /// Reload the generation's firewall; verified by the firewall check.
    pub const RESTORE_FIREWALL: &str = "restore-firewall";
    /// Refresh antivirus signatures now; verified by the AV/EDR check.
    pub const REFRESH_AV_SIGNATURES: &str = "refresh-av-signatures";
    /// Run a declared backup job now; verified by the backup check.
    pub const RUN_BACKUP: &str = "run-backup";
    /// Re-activate the current NixOS generation (`switch-to-configuration switch`).
    pub const REACTIVATE_GENERATION: &str = "reactivate-generation";
    /// Switch to a NixOS generation named by a signed order, rolling back on failure.
    pub const SWITCH_GENERATION: &str = "switch-generation";
}

/// HIPAA Security Rule citations (45 CFR Part 164) used by the checks.
pub mod hipaa {
    /// Protection from malicious software.
    pub const MALICIOUS_SOFTWARE: &str = "164.308(a)(5)(ii)(B)";
    /// Risk management.
    pub const RISK_MANAGEMENT: &str = "164.308(a)(1)(ii)(B)";
    /// Information system activity review.
    pub const ACTIVITY_REVIEW: &str = "164.308(a)(1)(ii)(D)";
    /// Security incident procedures.
    pub const INCIDENT_PROCEDURES: &str = "164.308(a)(6)";
    /// Data backup plan.
    pub const DATA_BACKUP_PLAN: &str = "164.308(a)(7)(ii)(A)";
    /// Contingency plan (keeping systems available in an emergency).
    pub const CONTINGENCY_PLAN: &str = "164.308(a)(7)(i)";
    /// Disaster recovery plan.
    pub const DISASTER_RECOVERY: &str = "164.308(a)(7)(ii)(B)";
    /// Testing and revision procedures (restore tests).
    pub const TESTING_AND_REVISION: &str = "164.308(a)(7)(ii)(D)";
    /// Audit controls.
    pub const AUDIT_CONTROLS: &str = "164.312(b)";
    /// Access control.
    pub const ACCESS_CONTROL: &str = "164.312(a)(1)";
    /// Transmission security.
    pub const TRANSMISSION_SECURITY: &str = "164.312(e)(1)";
    /// Encryption and decryption (at rest).
    pub const ENCRYPTION_AT_REST: &str = "164.312(a)(2)(iv)";
}
