//! What the NixOS generation declares: `/etc/msp-compliance/declared.json`.
//!
//! The NixOS module renders this file from the evaluated configuration (DESIGN §8), so checks
//! can compare *declared* state with *live* state without evaluating Nix at run time.
//! Its schema is printed by `msp-compliance-agent declared schema`; the module renders exactly
//! that, with NixOS option names (camelCase) so a reviewer can map each key to its option.
//! Unknown keys are refused: the module and the agent ship together, and a key the agent does
//! not know is a mismatch to fix, not something to ignore.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::facts::DeclaredState;
use crate::facts::fs::Root;

/// The only declared.json format version this agent reads.
pub const DECLARED_VERSION: u32 = 1;

/// The declared state of one NixOS generation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Declared {
    /// Format version; must be 1.
    pub version: u32,
    /// `networking.firewall`.
    pub firewall: DeclaredFirewall,
    /// `services.journald`.
    pub journald: DeclaredJournald,
    /// `security.auditd` and `security.audit`.
    pub audit: DeclaredAudit,
    /// `services.restic.backups` and `services.borgbackup.jobs`, one entry per job.
    pub backups: Vec<DeclaredBackupJob>,
    /// `boot.initrd.luks.devices`, by name.
    pub luks: BTreeMap<String, DeclaredLuksDevice>,
    /// `swapDevices`.
    pub swap: Vec<DeclaredSwap>,
    /// `boot.tmp.useTmpfs`.
    pub tmp_on_tmpfs: bool,
    /// `system.autoUpgrade`.
    pub auto_upgrade: DeclaredAutoUpgrade,
    /// `services.clamav`.
    pub clamav: DeclaredClamav,
    /// Time synchronisation daemons.
    pub time_sync: DeclaredTimeSync,
    /// What the heal units may act on (`services.msp-compliance.heal` and the units the
    /// generation runs). Absent: nothing on this host is healable.
    #[serde(default)]
    pub heal: Option<DeclaredHeal>,
}

/// The units the root heal helper may act on. The helper reads this section and nothing the
/// agent writes, so the list of units that can be restarted is the generation's, not an order's.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct DeclaredHeal {
    /// `services.msp-compliance.heal.restartableUnits`: `<name>.service` units that may be
    /// restarted (no templates).
    #[serde(default)]
    pub restartable_units: Vec<String>,
    /// The unit that loads the generation's firewall (`nftables.service`, `firewall.service`);
    /// `null` without a firewall.
    #[serde(default)]
    pub firewall_unit: Option<String>,
    /// The unit that refreshes antivirus signatures (`clamav-freshclam.service`).
    #[serde(default)]
    pub av_update_unit: Option<String>,
    /// Backup job name → the unit that runs it now.
    #[serde(default)]
    pub backup_units: BTreeMap<String, String>,
}

/// `networking.firewall`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct DeclaredFirewall {
    /// `networking.firewall.enable`.
    pub enable: bool,
    /// `networking.firewall.backend` (or `nftables` when `networking.nftables.enable`).
    pub backend: FirewallBackend,
    /// `allowedTCPPorts`.
    #[serde(rename = "allowedTCPPorts")]
    pub allowed_tcp_ports: Vec<u16>,
    /// `allowedUDPPorts`.
    #[serde(rename = "allowedUDPPorts")]
    pub allowed_udp_ports: Vec<u16>,
    /// `allowedTCPPortRanges`.
    #[serde(rename = "allowedTCPPortRanges", default)]
    pub allowed_tcp_port_ranges: Vec<PortRange>,
    /// `allowedUDPPortRanges`.
    #[serde(rename = "allowedUDPPortRanges", default)]
    pub allowed_udp_port_ranges: Vec<PortRange>,
    /// `trustedInterfaces`.
    #[serde(default)]
    pub trusted_interfaces: Vec<String>,
    /// `interfaces.<name>.allowed{TCP,UDP}Ports`.
    #[serde(default)]
    pub interfaces: BTreeMap<String, DeclaredInterfacePorts>,
}

/// Ports allowed on one interface.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DeclaredInterfacePorts {
    /// `allowedTCPPorts` of the interface.
    #[serde(rename = "allowedTCPPorts", default)]
    pub allowed_tcp_ports: Vec<u16>,
    /// `allowedUDPPorts` of the interface.
    #[serde(rename = "allowedUDPPorts", default)]
    pub allowed_udp_ports: Vec<u16>,
}

/// An inclusive port range, as NixOS writes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PortRange {
    /// First port.
    pub from: u16,
    /// Last port (inclusive).
    pub to: u16,
}

/// Which firewall implementation the generation uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum FirewallBackend {
    /// `iptables` (the `nixos-fw` chains).
    Iptables,
    /// `nftables` (the `inet nixos-fw` table).
    Nftables,
}

/// `services.journald`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct DeclaredJournald {
    /// `services.journald.storage`: `persistent`, `volatile`, `auto` or `none`.
    pub storage: String,
    /// `MaxRetentionSec=` from `extraConfig`, in seconds, when set.
    #[serde(default)]
    pub max_retention_sec: Option<u64>,
    /// `SystemMaxUse=` from `extraConfig`, verbatim, when set.
    #[serde(default)]
    pub system_max_use: Option<String>,
    /// A log forwarder is declared (journal-upload, rsyslog, syslog-ng, vector, fluent-bit).
    #[serde(default)]
    pub forwarding: bool,
}

/// `security.auditd` and `security.audit`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct DeclaredAudit {
    /// `security.auditd.enable`.
    pub auditd: bool,
    /// `security.audit.enable`: `"false"`, `"true"` or `"lock"`.
    pub enable: String,
    /// `security.audit.rules`.
    #[serde(default)]
    pub rules: Vec<String>,
}

/// One backup job.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct DeclaredBackupJob {
    /// Job name (`restic-backups-<name>` / `borgbackup-job-<name>`).
    pub name: String,
    /// `restic` or `borg`.
    pub tool: BackupTool,
    /// Repository, when given inline.
    #[serde(default)]
    pub repository: Option<String>,
    /// File holding the repository (restic `repositoryFile`).
    #[serde(default)]
    pub repository_file: Option<PathBuf>,
    /// Password file (restic `passwordFile`; borg passphrase file).
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// A timer schedules the job.
    pub timer: bool,
    /// Backed-up paths.
    #[serde(default)]
    pub paths: Vec<String>,
}

/// Backup tool of a job.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum BackupTool {
    /// BorgBackup.
    Borg,
    /// restic.
    Restic,
}

/// One `boot.initrd.luks.devices` entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct DeclaredLuksDevice {
    /// `device`.
    pub device: String,
    /// `keyFile`, when set (a key on an unencrypted disk defeats the control).
    #[serde(default)]
    pub key_file: Option<String>,
}

/// One `swapDevices` entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct DeclaredSwap {
    /// `device`.
    pub device: String,
    /// `randomEncryption.enable`.
    #[serde(default)]
    pub random_encryption: bool,
}

/// `system.autoUpgrade`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct DeclaredAutoUpgrade {
    /// `enable`.
    pub enable: bool,
    /// `operation`: `switch` or `boot`.
    #[serde(default)]
    pub operation: Option<String>,
    /// `flake`, when set.
    #[serde(default)]
    pub flake: Option<String>,
    /// `channel`, when set.
    #[serde(default)]
    pub channel: Option<String>,
    /// `dates`.
    #[serde(default)]
    pub dates: Option<String>,
    /// `allowReboot`.
    #[serde(default)]
    pub allow_reboot: bool,
}

/// `services.clamav`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct DeclaredClamav {
    /// `daemon.enable`.
    pub daemon: bool,
    /// `updater.enable`.
    pub updater: bool,
    /// `scanner.enable`.
    #[serde(default)]
    pub scanner: bool,
}

/// Time synchronisation daemons that are enabled.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct DeclaredTimeSync {
    /// `services.timesyncd.enable`.
    pub timesyncd: bool,
    /// `services.chrony.enable`.
    #[serde(default)]
    pub chrony: bool,
}

/// JSON Schema of declared.json.
pub fn schema() -> schemars::Schema {
    schemars::schema_for!(Declared)
}

/// Reads declared.json under the root. Absent is normal; invalid is reported, never ignored.
pub(crate) fn read(root: &Root, path: &Path) -> DeclaredState {
    let bytes = match root.read_bounded(path, crate::facts::fs::SMALL_FILE_LIMIT) {
        Ok(it) => it,
        Err(err) if err.is_absent() => return DeclaredState::Absent,
        Err(err) => return DeclaredState::Invalid(err.to_string()),
    };
    match parse(path, &bytes) {
        Ok(it) => DeclaredState::Present(Box::new(it)),
        Err(err) => DeclaredState::Invalid(err.to_string()),
    }
}

/// Parses and validates declared.json.
pub fn parse(path: &Path, bytes: &[u8]) -> Result<Declared, crate::config::LoadError> {
    let declared: Declared = crate::config::parse_document(path, bytes)?;
    if declared.version != DECLARED_VERSION {
        return Err(crate::config::LoadError::invalid(
            path,
            "version",
            format!("expected {DECLARED_VERSION}, found {}", declared.version),
        ));
    }
    Ok(declared)
}
