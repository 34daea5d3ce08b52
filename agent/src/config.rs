//! The agent's configuration: read from JSON (what Nix renders) or YAML (what people write).
//!
//! Two stages, after ripgrep's low/high args: [`ConfigFile`] mirrors the file and only
//! deserializes (unknown fields refused); [`Config::from_file`] validates it and builds the
//! [`Config`] the rest of the agent uses. `Config` has no `Default` and is never mutated after
//! start-up. Every error names the file, the field path and what was expected.
//!
//! [`parse_document`] is the one reader of JSON/YAML documents (config, baseline, declared.json),
//! so all of them report errors the same way.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use schemars::JsonSchema;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::facts::command::DEFAULT_SEARCH_PATH;
use crate::facts::declared::{BackupTool, DeclaredBackupJob};
use crate::orders::window::MaintenanceWindow;

/// Largest configuration, baseline or declared.json accepted.
pub const MAX_DOCUMENT_BYTES: usize = 1024 * 1024;

/// The configuration file, as written.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    /// Site (clinic) identifier, as enrolled at the control plane.
    pub site_id: String,
    /// Host identifier within the site.
    pub host_id: String,
    /// Baseline file (JSON or YAML); the embedded `hipaa` baseline when absent.
    #[serde(default)]
    pub baseline_file: Option<PathBuf>,
    /// What the NixOS generation declares.
    #[serde(default = "default_declared_file")]
    pub declared_file: PathBuf,
    /// The agent's state directory.
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
    /// Seconds between check cycles of the daemon (10 to 86400).
    #[serde(default = "default_poll_interval")]
    pub poll_interval_secs: u64,
    /// Limits for the external commands the checks run.
    #[serde(default)]
    pub commands: CommandsFile,
    /// How privileged facts are read.
    #[serde(default)]
    pub privileged_facts: PrivilegedFactsMode,
    /// Where ClamAV lives on this host.
    #[serde(default)]
    pub clamav: ClamavFile,
    /// Backup jobs of hosts without a declared.json (Debian/Ubuntu).
    #[serde(default)]
    pub backup_jobs: Vec<BackupJobFile>,
    /// Signed, hash-chained evidence.
    #[serde(default)]
    pub evidence: EvidenceFile,
    /// Where evidence is shipped, and the backlog limits.
    #[serde(default)]
    pub outbox: OutboxFile,
    /// The control plane the daemon (`run`) checks in with over HTTPS with mTLS. Absent: `run`
    /// works standalone (checks, evidence, the other sinks) and says so in its log.
    #[serde(default)]
    pub control_plane: Option<ControlPlaneFile>,
    /// Signed orders from the control plane, and the guardrails they must pass.
    #[serde(default)]
    pub orders: OrdersFile,
    /// Healing: how long a heal may take and how long the engine waits before verifying.
    #[serde(default)]
    pub heal: HealFile,
}

/// The `heal` section: timing of heals (what may be healed is the generation's declared.json).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HealFile {
    /// Seconds to wait after a heal (and after a rollback) before the health probe, so a
    /// service that dies just after starting is caught (1 to 300).
    #[serde(default = "default_heal_settle")]
    pub settle_secs: u64,
    /// Longest a heal unit may run before the agent stops waiting for it (10 to 3600); the
    /// unit's own `TimeoutStartSec` stops the unit itself.
    #[serde(default = "default_heal_unit_timeout")]
    pub unit_timeout_secs: u64,
}

impl Default for HealFile {
    fn default() -> HealFile {
        HealFile {
            settle_secs: default_heal_settle(),
            unit_timeout_secs: default_heal_unit_timeout(),
        }
    }
}

fn default_heal_settle() -> u64 {
    5
}

fn default_heal_unit_timeout() -> u64 {
    300
}

/// The control plane: where it is, which CA signs its certificate, and this host's client
/// certificate.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ControlPlaneFile {
    /// Base URL, `https://host[:port]` (no credentials, query or fragment; a path prefix is
    /// allowed). Plain HTTP is refused: orders and evidence travel only over mTLS.
    pub url: String,
    /// PEM file with the CA certificate(s) that sign the server's certificate. These are the
    /// only roots trusted for the control plane (pinned); the system's roots are not used.
    pub server_ca_file: PathBuf,
    /// PEM file with this host's client certificate (chain), as enrolled at the control plane.
    pub client_certificate_file: PathBuf,
    /// PEM file with the client certificate's private key (mode 0600). When absent, the
    /// systemd credential `mtls-client-key` (`$CREDENTIALS_DIRECTORY/mtls-client-key`) is used.
    #[serde(default)]
    pub client_key_file: Option<PathBuf>,
    /// Seconds before a whole request to the control plane is abandoned (1 to 300); connecting
    /// is limited to 10 seconds.
    #[serde(default = "default_request_timeout")]
    pub request_timeout_secs: u64,
}

/// The validated control-plane settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ControlPlane {
    /// Base URL without a trailing `/`, `https://` only.
    pub url: String,
    /// The pinned server CA file.
    pub server_ca_file: PathBuf,
    /// The client certificate file.
    pub client_certificate_file: PathBuf,
    /// The client key file; `None` for the systemd credential `mtls-client-key`.
    pub client_key_file: Option<PathBuf>,
    /// Whole-request timeout.
    pub request_timeout: Duration,
}

/// Signed orders and their guardrails (DESIGN §5). The defaults are the safe choice; see
/// `docs/defaults.md`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OrdersFile {
    /// Files with the control plane's order public keys (standard base64 of the raw 32 bytes,
    /// one line each). Orders must carry a valid signature by one of them; several keys allow
    /// rotation. At least one is needed to accept orders (`run` with a `control_plane`).
    #[serde(default)]
    pub order_public_key_files: Vec<PathBuf>,
    /// Longest lifetime (`expires_at - issued_at`) of an order, in seconds (1 to 86400).
    #[serde(default = "default_max_ttl")]
    pub max_ttl_secs: u64,
    /// Clock difference tolerated, in seconds (0 to 3600): how far in the future an order may
    /// be issued, and how far the agent's clock may differ from the server's before disruptive
    /// actions are refused.
    #[serde(default = "default_max_clock_skew")]
    pub max_clock_skew_secs: u64,
    /// Run every order as a dry run: all guardrails are checked and recorded, nothing changes.
    #[serde(default)]
    pub dry_run: bool,
    /// Daily maintenance window for disruptive actions, `"HH:MM-HH:MM"` of local time in
    /// `timezone`; it may cross midnight (`"22:00-04:00"`). Disruptive actions outside it are
    /// deferred. When absent, disruptive actions are refused (`outside_window`): there is no
    /// time they may run.
    #[serde(default)]
    pub maintenance_window: Option<String>,
    /// IANA time zone of the site (e.g. `America/New_York`), for the maintenance window.
    #[serde(default = "default_timezone")]
    pub timezone: String,
    /// Most actions executed per rolling hour, all runbooks together (1 to 3600). Dry runs
    /// do not count.
    #[serde(default = "default_max_actions_per_hour")]
    pub max_actions_per_hour: u32,
    /// Cooldown per runbook id, in seconds (1 to 604800), overriding the runbook's default.
    #[serde(default)]
    pub cooldown_secs: BTreeMap<String, u64>,
}

impl Default for OrdersFile {
    fn default() -> OrdersFile {
        OrdersFile {
            order_public_key_files: Vec::new(),
            max_ttl_secs: default_max_ttl(),
            max_clock_skew_secs: default_max_clock_skew(),
            dry_run: false,
            maintenance_window: None,
            timezone: default_timezone(),
            max_actions_per_hour: default_max_actions_per_hour(),
            cooldown_secs: BTreeMap::new(),
        }
    }
}

/// The validated `orders` section. Keys are loaded when the guardrails are built
/// (`orders::Guardrails::from_config`), so `check` does not need them.
#[derive(Clone, Debug)]
pub struct OrdersConfig {
    /// Order public key files (absolute paths).
    pub order_public_key_files: Vec<PathBuf>,
    /// Longest order lifetime.
    pub max_ttl: Duration,
    /// Clock difference tolerated.
    pub max_clock_skew: Duration,
    /// Every order is a dry run.
    pub dry_run: bool,
    /// The maintenance window; `None` refuses disruptive actions.
    pub maintenance_window: Option<MaintenanceWindow>,
    /// The site's time zone.
    pub timezone: jiff::tz::TimeZone,
    /// Most actions per rolling hour.
    pub max_actions_per_hour: u32,
    /// Cooldown overrides per runbook id (every id is a known runbook).
    pub cooldowns: BTreeMap<String, Duration>,
}

/// Evidence settings.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EvidenceFile {
    /// Ed25519 signing key written by `keygen` (mode 0600). When absent, the systemd credential
    /// `evidence-signing-key` (`$CREDENTIALS_DIRECTORY/evidence-signing-key`) is used if present;
    /// without either, `check` prints findings but records no evidence.
    #[serde(default)]
    pub signing_key_file: Option<PathBuf>,
    /// Secret for the keyed-hash tokens that replace PHI (so scrubbed records still correlate).
    /// When absent, a key derived from the signing key is used.
    #[serde(default)]
    pub phi_token_key_file: Option<PathBuf>,
}

/// Outbox settings: sinks and backlog limits.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OutboxFile {
    /// Undelivered records (per sink) above which an overflow alarm is recorded. Nothing is
    /// ever dropped: the alarm is evidence, the records stay.
    #[serde(default = "default_max_backlog_records")]
    pub max_backlog_records: u64,
    /// Age of the oldest undelivered record (per sink), in hours, above which an alarm is recorded.
    #[serde(default = "default_max_backlog_age_hours")]
    pub max_backlog_age_hours: u64,
    /// First retry delay after a failed delivery, in milliseconds (doubles per failure, jittered).
    #[serde(default = "default_backoff_initial_ms")]
    pub backoff_initial_ms: u64,
    /// Longest retry delay, in milliseconds.
    #[serde(default = "default_backoff_max_ms")]
    pub backoff_max_ms: u64,
    /// A local directory sink (air-gapped sites): one fsync'd file per envelope.
    #[serde(default)]
    pub directory: Option<DirectorySinkFile>,
    /// An S3 Object Lock (WORM) sink.
    #[serde(default)]
    pub s3: Option<S3SinkFile>,
}

impl Default for OutboxFile {
    fn default() -> OutboxFile {
        OutboxFile {
            max_backlog_records: default_max_backlog_records(),
            max_backlog_age_hours: default_max_backlog_age_hours(),
            backoff_initial_ms: default_backoff_initial_ms(),
            backoff_max_ms: default_backoff_max_ms(),
            directory: None,
            s3: None,
        }
    }
}

/// The directory sink.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DirectorySinkFile {
    /// Directory that receives `<site>/<host>/<seq>-<digest>.json` files.
    pub path: PathBuf,
}

/// The S3 Object Lock sink.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct S3SinkFile {
    /// Endpoint URL, e.g. `https://s3.eu-central-1.amazonaws.com` or an S3-compatible server.
    pub endpoint: String,
    /// Bucket, created with Object Lock enabled.
    pub bucket: String,
    /// Region for SigV4.
    #[serde(default = "default_s3_region")]
    pub region: String,
    /// Key prefix inside the bucket.
    #[serde(default)]
    pub prefix: String,
    /// Path-style addressing (`endpoint/bucket/key`), as most S3-compatible servers need.
    #[serde(default = "default_true")]
    pub path_style: bool,
    /// File holding the access key id.
    pub access_key_id_file: PathBuf,
    /// File holding the secret access key.
    pub secret_access_key_file: PathBuf,
}

/// Limits for external commands.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CommandsFile {
    /// Seconds before a command is killed (1 to 600).
    #[serde(default = "default_command_timeout")]
    pub timeout_secs: u64,
    /// Most bytes read from a command's stdout or stderr (4 KiB to 64 MiB).
    #[serde(default = "default_max_output")]
    pub max_output_bytes: usize,
    /// Directories searched for programs, in order (absolute paths).
    #[serde(default = "default_search_path")]
    pub search_path: Vec<PathBuf>,
}

impl Default for CommandsFile {
    fn default() -> CommandsFile {
        CommandsFile {
            timeout_secs: default_command_timeout(),
            max_output_bytes: default_max_output(),
            search_path: default_search_path(),
        }
    }
}

/// How privileged facts (nft ruleset, auditd status, LUKS headers, backup repositories) are read.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum PrivilegedFactsMode {
    /// Run the fixed commands as this process (needs root for a complete answer).
    #[default]
    Direct,
    /// Start the fixed root units `msp-compliance-probe@<name>` that the NixOS module installs
    /// (a polkit rule lets the agent user start exactly those) and read their results.
    Units,
}

/// Where ClamAV lives.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ClamavFile {
    /// clamd's local socket; read from clamd.conf, else `/run/clamav/clamd.ctl`, when absent.
    #[serde(default)]
    pub socket: Option<PathBuf>,
    /// Signature database directory.
    #[serde(default = "default_clamav_db")]
    pub database_dir: PathBuf,
}

impl Default for ClamavFile {
    fn default() -> ClamavFile {
        ClamavFile {
            socket: None,
            database_dir: default_clamav_db(),
        }
    }
}

/// A backup job configured by hand.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BackupJobFile {
    /// Job name (letters, digits, `_`, `-`, `.`).
    pub name: String,
    /// `restic` or `borg`.
    pub tool: BackupTool,
    /// Repository location.
    #[serde(default)]
    pub repository: Option<String>,
    /// File holding the repository location.
    #[serde(default)]
    pub repository_file: Option<PathBuf>,
    /// File holding the repository password (read by the tool, never by the agent).
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// A timer schedules the job.
    #[serde(default)]
    pub timer: bool,
}

fn default_declared_file() -> PathBuf {
    PathBuf::from("/etc/msp-compliance/declared.json")
}
fn default_state_dir() -> PathBuf {
    PathBuf::from("/var/lib/msp-compliance")
}
fn default_poll_interval() -> u64 {
    300
}
fn default_command_timeout() -> u64 {
    30
}
fn default_max_output() -> usize {
    8 * 1024 * 1024
}
fn default_search_path() -> Vec<PathBuf> {
    DEFAULT_SEARCH_PATH.iter().map(PathBuf::from).collect()
}
fn default_clamav_db() -> PathBuf {
    PathBuf::from("/var/lib/clamav")
}
fn default_max_backlog_records() -> u64 {
    1_000_000
}
fn default_max_backlog_age_hours() -> u64 {
    72
}
fn default_backoff_initial_ms() -> u64 {
    1_000
}
fn default_backoff_max_ms() -> u64 {
    300_000
}
fn default_s3_region() -> String {
    "us-east-1".to_string()
}
fn default_true() -> bool {
    true
}
fn default_max_ttl() -> u64 {
    900
}
fn default_max_clock_skew() -> u64 {
    120
}
fn default_timezone() -> String {
    "UTC".to_string()
}
fn default_max_actions_per_hour() -> u32 {
    6
}
fn default_request_timeout() -> u64 {
    30
}

/// The validated configuration.
#[derive(Clone, Debug)]
pub struct Config {
    /// Site id; `None` for an unconfigured one-off `check`.
    pub site_id: Option<String>,
    /// Host id.
    pub host_id: String,
    /// Baseline file, or `None` for the embedded default.
    pub baseline_file: Option<PathBuf>,
    /// declared.json location (logical path under the root).
    pub declared_file: PathBuf,
    /// State directory (logical path under the root).
    pub state_dir: PathBuf,
    /// Daemon cycle interval.
    pub poll_interval: Duration,
    /// Command timeout.
    pub command_timeout: Duration,
    /// Command output limit.
    pub max_output_bytes: usize,
    /// Program search path.
    pub search_path: Vec<PathBuf>,
    /// Privileged facts mode.
    pub privileged_facts: PrivilegedFactsMode,
    /// clamd socket override.
    pub clamd_socket: Option<PathBuf>,
    /// ClamAV database directory.
    pub clamav_database_dir: PathBuf,
    /// Hand-configured backup jobs.
    pub backup_jobs: Vec<DeclaredBackupJob>,
    /// Evidence signing key file, if configured (else the systemd credential, else none).
    pub signing_key_file: Option<PathBuf>,
    /// PHI token key file, if configured.
    pub phi_token_key_file: Option<PathBuf>,
    /// Outbox settings (validated).
    pub outbox: OutboxFile,
    /// The control plane, if configured.
    pub control_plane: Option<ControlPlane>,
    /// Order guardrail settings (validated).
    pub orders: OrdersConfig,
    /// The validated `heal` section.
    pub heal: HealFile,
}

impl Config {
    /// Reads, parses and validates a configuration file.
    pub fn load(path: &Path) -> Result<Config, LoadError> {
        Config::load_with_bytes(path).map(|(config, _)| config)
    }

    /// [`Config::load`], also returning the bytes it was read from (the daemon hands them to
    /// its next image, so a re-exec keeps the running configuration even if the file changed).
    pub fn load_with_bytes(path: &Path) -> Result<(Config, Vec<u8>), LoadError> {
        let bytes = read_document(path)?;
        let config = Config::from_bytes(path, &bytes)?;
        Ok((config, bytes))
    }

    /// Parses and validates configuration bytes; errors name `path`.
    pub fn from_bytes(path: &Path, bytes: &[u8]) -> Result<Config, LoadError> {
        let file: ConfigFile = parse_document(path, bytes)?;
        Config::from_file(path, file)
    }

    /// Validates a parsed file.
    pub fn from_file(path: &Path, file: ConfigFile) -> Result<Config, LoadError> {
        let invalid = |field: &str, message: String| LoadError::invalid(path, field, message);
        if !is_identifier(&file.site_id) {
            return Err(invalid("site_id", identifier_expectation(&file.site_id)));
        }
        if !is_identifier(&file.host_id) {
            return Err(invalid("host_id", identifier_expectation(&file.host_id)));
        }
        if !(10..=86_400).contains(&file.poll_interval_secs) {
            return Err(invalid(
                "poll_interval_secs",
                format!(
                    "expected 10 to 86400 seconds, found {}",
                    file.poll_interval_secs
                ),
            ));
        }
        if !(1..=600).contains(&file.commands.timeout_secs) {
            return Err(invalid(
                "commands.timeout_secs",
                format!(
                    "expected 1 to 600 seconds, found {}",
                    file.commands.timeout_secs
                ),
            ));
        }
        if !(4096..=64 * 1024 * 1024).contains(&file.commands.max_output_bytes) {
            return Err(invalid(
                "commands.max_output_bytes",
                format!(
                    "expected 4096 to 67108864, found {}",
                    file.commands.max_output_bytes
                ),
            ));
        }
        let absolute_fields = [
            ("declared_file", Some(&file.declared_file)),
            ("state_dir", Some(&file.state_dir)),
            ("clamav.database_dir", Some(&file.clamav.database_dir)),
            ("clamav.socket", file.clamav.socket.as_ref()),
        ];
        for (field, value) in absolute_fields {
            if let Some(value) = value
                && !value.is_absolute()
            {
                return Err(invalid(
                    field,
                    format!("expected an absolute path, found {}", value.display()),
                ));
            }
        }
        for (idx, dir) in file.commands.search_path.iter().enumerate() {
            if !dir.is_absolute() {
                return Err(invalid(
                    &format!("commands.search_path[{idx}]"),
                    format!("expected an absolute path, found {}", dir.display()),
                ));
            }
        }
        let outbox = &file.outbox;
        if outbox.backoff_initial_ms == 0 || outbox.backoff_initial_ms > outbox.backoff_max_ms {
            return Err(invalid(
                "outbox.backoff_initial_ms",
                format!(
                    "expected 1 to outbox.backoff_max_ms ({}), found {}",
                    outbox.backoff_max_ms, outbox.backoff_initial_ms
                ),
            ));
        }
        if outbox.max_backlog_records == 0 {
            return Err(invalid(
                "outbox.max_backlog_records",
                "expected at least 1, found 0".to_string(),
            ));
        }
        let key_paths = [
            (
                "evidence.signing_key_file",
                file.evidence.signing_key_file.as_ref(),
            ),
            (
                "evidence.phi_token_key_file",
                file.evidence.phi_token_key_file.as_ref(),
            ),
            (
                "outbox.directory.path",
                outbox.directory.as_ref().map(|it| &it.path),
            ),
            (
                "outbox.s3.access_key_id_file",
                outbox.s3.as_ref().map(|it| &it.access_key_id_file),
            ),
            (
                "outbox.s3.secret_access_key_file",
                outbox.s3.as_ref().map(|it| &it.secret_access_key_file),
            ),
        ];
        for (field, value) in key_paths {
            if let Some(value) = value
                && !value.is_absolute()
            {
                return Err(invalid(
                    field,
                    format!("expected an absolute path, found {}", value.display()),
                ));
            }
        }
        if let Some(s3) = &outbox.s3 {
            // `user:secret@host` would put a secret where status and errors print the URL;
            // the message does not quote it.
            let authority = s3.endpoint.split("://").nth(1).unwrap_or("");
            if authority
                .split(['/', '?', '#'])
                .next()
                .unwrap_or("")
                .contains('@')
            {
                return Err(invalid(
                    "outbox.s3.endpoint",
                    "expected a URL without credentials (use access_key_id_file and secret_access_key_file)".to_string(),
                ));
            }
            if !(s3.endpoint.starts_with("https://") || s3.endpoint.starts_with("http://")) {
                return Err(invalid(
                    "outbox.s3.endpoint",
                    format!("expected an http(s) URL, found {:?}", s3.endpoint),
                ));
            }
            if s3.bucket.is_empty() || s3.bucket.contains('/') {
                return Err(invalid(
                    "outbox.s3.bucket",
                    format!("expected a bucket name, found {:?}", s3.bucket),
                ));
            }
        }
        let control_plane = match &file.control_plane {
            Some(control_plane) => Some(validate_control_plane(path, control_plane)?),
            None => None,
        };
        let orders = validate_orders(path, &file.orders)?;
        if !(1..=300).contains(&file.heal.settle_secs) {
            return Err(invalid(
                "heal.settle_secs",
                format!("expected 1 to 300 seconds, found {}", file.heal.settle_secs),
            ));
        }
        if !(10..=3600).contains(&file.heal.unit_timeout_secs) {
            return Err(invalid(
                "heal.unit_timeout_secs",
                format!(
                    "expected 10 to 3600 seconds, found {}",
                    file.heal.unit_timeout_secs
                ),
            ));
        }
        let mut backup_jobs = Vec::new();
        for (idx, job) in file.backup_jobs.into_iter().enumerate() {
            let field = |name: &str| format!("backup_jobs[{idx}].{name}");
            if !is_identifier(&job.name) {
                return Err(invalid(&field("name"), identifier_expectation(&job.name)));
            }
            if job.repository.is_none() == job.repository_file.is_none() {
                return Err(invalid(
                    &field("repository"),
                    "expected exactly one of `repository` or `repository_file`".to_string(),
                ));
            }
            backup_jobs.push(DeclaredBackupJob {
                name: job.name,
                tool: job.tool,
                repository: job.repository,
                repository_file: job.repository_file,
                password_file: job.password_file,
                timer: job.timer,
                paths: Vec::new(),
            });
        }
        Ok(Config {
            site_id: Some(file.site_id),
            host_id: file.host_id,
            baseline_file: file.baseline_file,
            declared_file: file.declared_file,
            state_dir: file.state_dir,
            poll_interval: Duration::from_secs(file.poll_interval_secs),
            command_timeout: Duration::from_secs(file.commands.timeout_secs),
            max_output_bytes: file.commands.max_output_bytes,
            search_path: file.commands.search_path,
            privileged_facts: file.privileged_facts,
            clamd_socket: file.clamav.socket,
            clamav_database_dir: file.clamav.database_dir,
            backup_jobs,
            signing_key_file: file.evidence.signing_key_file,
            phi_token_key_file: file.evidence.phi_token_key_file,
            outbox: file.outbox,
            control_plane,
            orders,
            heal: file.heal,
        })
    }

    /// The configuration of a one-off `check` without a file: the documented defaults and the
    /// host name as host id.
    pub fn unconfigured(host_id: String) -> Config {
        let commands = CommandsFile::default();
        Config {
            site_id: None,
            host_id,
            baseline_file: None,
            declared_file: default_declared_file(),
            state_dir: default_state_dir(),
            poll_interval: Duration::from_secs(default_poll_interval()),
            command_timeout: Duration::from_secs(commands.timeout_secs),
            max_output_bytes: commands.max_output_bytes,
            search_path: commands.search_path,
            privileged_facts: PrivilegedFactsMode::Direct,
            clamd_socket: None,
            clamav_database_dir: default_clamav_db(),
            backup_jobs: Vec::new(),
            signing_key_file: None,
            phi_token_key_file: None,
            outbox: OutboxFile::default(),
            control_plane: None,
            orders: OrdersConfig {
                order_public_key_files: Vec::new(),
                max_ttl: Duration::from_secs(default_max_ttl()),
                max_clock_skew: Duration::from_secs(default_max_clock_skew()),
                dry_run: false,
                maintenance_window: None,
                timezone: jiff::tz::TimeZone::UTC,
                max_actions_per_hour: default_max_actions_per_hour(),
                cooldowns: BTreeMap::new(),
            },
            heal: HealFile::default(),
        }
    }
}

/// Validates the `control_plane` section; errors name the field path.
fn validate_control_plane(path: &Path, file: &ControlPlaneFile) -> Result<ControlPlane, LoadError> {
    let invalid = |field: &str, message: String| {
        LoadError::invalid(path, &format!("control_plane.{field}"), message)
    };
    let Some(rest) = file.url.strip_prefix("https://") else {
        // Quoting only the scheme: the rest of a bad URL could hold credentials.
        let scheme = file.url.split("://").next().unwrap_or("");
        return Err(invalid(
            "url",
            format!("expected an https:// URL, found scheme {scheme:?}"),
        ));
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    if authority.contains('@') {
        return Err(invalid(
            "url",
            "expected a URL without credentials (the client certificate identifies this host)"
                .to_string(),
        ));
    }
    if authority.is_empty() || rest.contains(['?', '#']) || rest.contains(char::is_whitespace) {
        return Err(invalid(
            "url",
            format!(
                "expected https://host[:port][/prefix], found {:?}",
                file.url
            ),
        ));
    }
    let files = [
        ("server_ca_file", Some(&file.server_ca_file)),
        (
            "client_certificate_file",
            Some(&file.client_certificate_file),
        ),
        ("client_key_file", file.client_key_file.as_ref()),
    ];
    for (field, value) in files {
        if let Some(value) = value
            && !value.is_absolute()
        {
            return Err(invalid(
                field,
                format!("expected an absolute path, found {}", value.display()),
            ));
        }
    }
    if !(1..=300).contains(&file.request_timeout_secs) {
        return Err(invalid(
            "request_timeout_secs",
            format!(
                "expected 1 to 300 seconds, found {}",
                file.request_timeout_secs
            ),
        ));
    }
    Ok(ControlPlane {
        url: file.url.trim_end_matches('/').to_string(),
        server_ca_file: file.server_ca_file.clone(),
        client_certificate_file: file.client_certificate_file.clone(),
        client_key_file: file.client_key_file.clone(),
        request_timeout: Duration::from_secs(file.request_timeout_secs),
    })
}

/// Validates the `orders` section; errors name the field path.
fn validate_orders(path: &Path, file: &OrdersFile) -> Result<OrdersConfig, LoadError> {
    let invalid = |field: &str, message: String| {
        LoadError::invalid(path, &format!("orders.{field}"), message)
    };
    for (idx, key_file) in file.order_public_key_files.iter().enumerate() {
        if !key_file.is_absolute() {
            return Err(invalid(
                &format!("order_public_key_files[{idx}]"),
                format!("expected an absolute path, found {}", key_file.display()),
            ));
        }
    }
    let ranges = [
        ("max_ttl_secs", file.max_ttl_secs, 1, 86_400),
        ("max_clock_skew_secs", file.max_clock_skew_secs, 0, 3_600),
        (
            "max_actions_per_hour",
            u64::from(file.max_actions_per_hour),
            1,
            3_600,
        ),
    ];
    for (field, value, min, max) in ranges {
        if !(min..=max).contains(&value) {
            return Err(invalid(
                field,
                format!("expected {min} to {max}, found {value}"),
            ));
        }
    }
    let maintenance_window = match &file.maintenance_window {
        Some(text) => Some(
            MaintenanceWindow::parse(text)
                .map_err(|err| invalid("maintenance_window", format!("{err}, found {text:?}")))?,
        ),
        None => None,
    };
    // An empty name would make jiff pick no zone at all; a zone is always named here.
    let timezone = match jiff::tz::TimeZone::get(&file.timezone) {
        Ok(it) if !file.timezone.is_empty() => it,
        _ => {
            return Err(invalid(
                "timezone",
                format!(
                    "expected an IANA time zone name such as \"America/New_York\" (from the system's tz database), found {:?}",
                    file.timezone
                ),
            ));
        }
    };
    let mut cooldowns = BTreeMap::new();
    for (id, secs) in &file.cooldown_secs {
        if crate::runbooks::find(id).is_none() {
            let known: Vec<&str> = crate::runbooks::RUNBOOKS.iter().map(|it| it.id).collect();
            return Err(invalid(
                &format!("cooldown_secs.{id}"),
                format!("expected a runbook id (one of {})", known.join(", ")),
            ));
        }
        if !(1..=604_800).contains(secs) {
            return Err(invalid(
                &format!("cooldown_secs.{id}"),
                format!("expected 1 to 604800 seconds, found {secs}"),
            ));
        }
        cooldowns.insert(id.clone(), Duration::from_secs(*secs));
    }
    Ok(OrdersConfig {
        order_public_key_files: file.order_public_key_files.clone(),
        max_ttl: Duration::from_secs(file.max_ttl_secs),
        max_clock_skew: Duration::from_secs(file.max_clock_skew_secs),
        dry_run: file.dry_run,
        maintenance_window,
        timezone,
        max_actions_per_hour: file.max_actions_per_hour,
        cooldowns,
    })
}

/// JSON Schema of the configuration file.
pub fn schema() -> schemars::Schema {
    schemars::schema_for!(ConfigFile)
}

/// A configuration, baseline or declared.json that could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LoadError {
    /// The document is not valid JSON/YAML, or a field has the wrong type or is unknown.
    #[error("{file}: {path}: {message}")]
    Field {
        file: PathBuf,
        path: String,
        message: String,
    },
    /// A field is well-typed but its value is not acceptable.
    #[error("{file}: {path}: {message}")]
    Invalid {
        file: PathBuf,
        path: String,
        message: String,
    },
    /// The file cannot be read.
    #[error("{file}: cannot read: {source}")]
    Read {
        file: PathBuf,
        source: std::io::Error,
    },
    /// The file is larger than [`MAX_DOCUMENT_BYTES`].
    #[error("{file}: larger than {MAX_DOCUMENT_BYTES} bytes")]
    TooLarge { file: PathBuf },
    /// The document is not well-formed JSON or YAML.
    #[error("{file}: not valid {format}: {message}")]
    Syntax {
        file: PathBuf,
        format: &'static str,
        message: String,
    },
}

impl LoadError {
    /// A value error at a field path.
    pub fn invalid(file: &Path, path: &str, message: String) -> LoadError {
        LoadError::Invalid {
            file: file.to_path_buf(),
            path: path.to_string(),
            message,
        }
    }
}

/// Reads a document with the size limit.
pub fn read_document(path: &Path) -> Result<Vec<u8>, LoadError> {
    use std::io::Read;
    let file = std::fs::File::open(path).map_err(|err| LoadError::Read {
        file: path.to_path_buf(),
        source: err,
    })?;
    let mut bytes = Vec::new();
    file.take(MAX_DOCUMENT_BYTES as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(|err| LoadError::Read {
            file: path.to_path_buf(),
            source: err,
        })?;
    if bytes.len() > MAX_DOCUMENT_BYTES {
        return Err(LoadError::TooLarge {
            file: path.to_path_buf(),
        });
    }
    Ok(bytes)
}

/// Parses a JSON or YAML document into `T`, reporting the field path of any error.
///
/// The format is chosen by extension (`.json`, `.yaml`, `.yml`), else by content: a document
/// whose first non-blank byte is `{` is JSON. YAML is first read into a JSON value, so both
/// formats then go through the same typed deserialization and the same error paths.
pub fn parse_document<T: DeserializeOwned>(path: &Path, bytes: &[u8]) -> Result<T, LoadError> {
    if bytes.len() > MAX_DOCUMENT_BYTES {
        return Err(LoadError::TooLarge {
            file: path.to_path_buf(),
        });
    }
    let extension = path.extension().and_then(|it| it.to_str()).unwrap_or("");
    let looks_like_json = bytes.iter().find(|it| !it.is_ascii_whitespace()) == Some(&b'{');
    let is_yaml = matches!(extension, "yaml" | "yml") || (extension != "json" && !looks_like_json);
    let field_error = |err: serde_path_to_error::Error<serde_json::Error>| {
        let path_text = err.path().to_string();
        let inner = err.into_inner();
        let message = strip_position(&inner.to_string());
        LoadError::Field {
            file: path.to_path_buf(),
            path: path_text,
            message,
        }
    };
    if is_yaml {
        let text = std::str::from_utf8(bytes).map_err(|_| LoadError::Syntax {
            file: path.to_path_buf(),
            format: "YAML",
            message: "not UTF-8".to_string(),
        })?;
        let value: serde_json::Value =
            serde_saphyr::from_str(text).map_err(|err| LoadError::Syntax {
                file: path.to_path_buf(),
                format: "YAML",
                message: err.to_string(),
            })?;
        return serde_path_to_error::deserialize(value).map_err(field_error);
    }
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let res: Result<T, _> = serde_path_to_error::deserialize(&mut deserializer);
    match res {
        Ok(it) => {
            deserializer.end().map_err(|err| LoadError::Syntax {
                file: path.to_path_buf(),
                format: "JSON",
                message: err.to_string(),
            })?;
            Ok(it)
        }
        Err(err) if err.inner().is_syntax() || err.inner().is_eof() => Err(LoadError::Syntax {
            file: path.to_path_buf(),
            format: "JSON",
            message: err.into_inner().to_string(),
        }),
        Err(err) => Err(field_error(err)),
    }
}

/// serde_json appends " at line L column C" to data errors; the field path says more.
fn strip_position(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(idx) => message[..idx].to_string(),
        None => message.to_string(),
    }
}

/// An identifier: 1 to 64 of `[A-Za-z0-9._-]`, not starting with `.` or `-`.
pub fn is_identifier(value: &str) -> bool {
    !value.is_empty()
        && value.len() <= 64
        && !value.starts_with(['.', '-'])
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

fn identifier_expectation(found: &str) -> String {
    format!(
        "expected 1 to 64 of letters, digits, `.`, `_`, `-` (not starting with `.` or `-`), found {found:?}"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load_text(name: &str, text: &str) -> Result<Config, LoadError> {
        let path = Path::new(name);
        let file: ConfigFile = parse_document(path, text.as_bytes())?;
        Config::from_file(path, file)
    }

    #[test]
    fn json_and_yaml_give_the_same_config() {
        let json = load_text(
            "a.json",
            r#"{"site_id":"clinic-a","host_id":"nixos-1","poll_interval_secs":60}"#,
        )
        .unwrap();
        let yaml = load_text(
            "a.yaml",
            "site_id: clinic-a\nhost_id: nixos-1\npoll_interval_secs: 60\n",
        )
        .unwrap();
        assert_eq!(json.host_id, yaml.host_id);
        assert_eq!(json.poll_interval, Duration::from_secs(60));
        assert_eq!(yaml.poll_interval, Duration::from_secs(60));
    }

    #[test]
    fn errors_name_file_field_and_expectation() {
        let check = |name: &str, text: &str, expect: &str| {
            let err = load_text(name, text).unwrap_err().to_string();
            assert!(err.contains(expect), "{err:?} does not contain {expect:?}");
            assert!(err.starts_with(name), "{err:?} does not name the file");
        };
        check(
            "c.json",
            r#"{"site_id":"a","host_id":"b","poll_intervall_secs":5}"#,
            "unknown field `poll_intervall_secs`",
        );
        check(
            "c.json",
            r#"{"site_id":"a","host_id":"b","commands":{"timeout_secs":"x"}}"#,
            "commands.timeout_secs: invalid type: string \"x\", expected u64",
        );
        check(
            "c.yaml",
            "site_id: a\nhost_id: b\ncommands:\n  timeout_secs: -3\n",
            "commands.timeout_secs",
        );
        check(
            "c.json",
            r#"{"site_id":"a","host_id":"b","poll_interval_secs":1}"#,
            "poll_interval_secs: expected 10 to 86400 seconds, found 1",
        );
        check(
            "c.json",
            r#"{"site_id":"a b","host_id":"b"}"#,
            "site_id: expected 1 to 64",
        );
        check("c.json", r#"{"host_id":"b"}"#, "missing field `site_id`");
        check(
            "c.json",
            r#"{"site_id":"a","host_id":"b","state_dir":"rel"}"#,
            "state_dir: expected an absolute path",
        );
        check("c.json", r#"{"site_id":"a","#, "not valid JSON");
        check("c.yaml", "site_id: [a\n", "not valid YAML");
        check(
            "c.json",
            r#"{"site_id":"a","host_id":"b","backup_jobs":[{"name":"x","tool":"restic"}]}"#,
            "backup_jobs[0].repository: expected exactly one",
        );
        check(
            "c.json",
            r#"{"site_id":"a","host_id":"b"} trailing"#,
            "not valid JSON",
        );
    }

    #[test]
    fn control_plane_errors_name_the_field() {
        let files = r#""server_ca_file":"/ca.pem","client_certificate_file":"/c.pem""#;
        let load = |section: String| {
            let text = format!(r#"{{"site_id":"a","host_id":"b","control_plane":{section}}}"#);
            load_text("c.json", &text)
        };
        let check = |section: String, expect: &str| {
            let err = load(section).unwrap_err().to_string();
            assert!(err.contains(expect), "{err:?} does not contain {expect:?}");
        };
        check(
            format!(r#"{{"url":"http://cp.example",{files}}}"#),
            r#"control_plane.url: expected an https:// URL, found scheme "http""#,
        );
        check(
            format!(r#"{{"url":"https://user:hunter2@cp.example",{files}}}"#),
            "control_plane.url: expected a URL without credentials",
        );
        check(
            format!(r#"{{"url":"https://",{files}}}"#),
            "control_plane.url: expected https://host",
        );
        check(
            r#"{"url":"https://cp.example","server_ca_file":"ca.pem","client_certificate_file":"/c.pem"}"#.to_string(),
            "control_plane.server_ca_file: expected an absolute path",
        );
        check(
            format!(r#"{{"url":"https://cp.example","request_timeout_secs":0,{files}}}"#),
            "control_plane.request_timeout_secs: expected 1 to 300 seconds, found 0",
        );
        check(
            format!(r#"{{"url":"https://cp.example","client_key":"/k",{files}}}"#),
            "control_plane.client_key: unknown field `client_key`",
        );
        check(
            r#"{"url":"https://cp.example"}"#.to_string(),
            "missing field `server_ca_file`",
        );
        let secret = load(format!(r#"{{"url":"https://u:hunter2@x",{files}}}"#))
            .unwrap_err()
            .to_string();
        assert!(!secret.contains("hunter2"), "{secret}");
        let config = load(format!(
            r#"{{"url":"https://cp.example:8443/api/",{files}}}"#
        ))
        .unwrap();
        let control_plane = config.control_plane.unwrap();
        assert_eq!(control_plane.url, "https://cp.example:8443/api");
        assert_eq!(control_plane.request_timeout, Duration::from_secs(30));
        assert_eq!(control_plane.client_key_file, None);
    }

    #[test]
    fn oversized_documents_are_refused() {
        let big = vec![b' '; MAX_DOCUMENT_BYTES + 1];
        let err = parse_document::<ConfigFile>(Path::new("big.json"), &big).unwrap_err();
        assert!(matches!(err, LoadError::TooLarge { .. }));
    }

    #[test]
    fn schema_lists_known_fields() {
        let schema = serde_json::to_value(schema()).unwrap();
        let properties = schema["properties"].as_object().unwrap();
        for key in [
            "site_id",
            "host_id",
            "poll_interval_secs",
            "commands",
            "backup_jobs",
        ] {
            assert!(properties.contains_key(key), "schema lacks {key}");
        }
        assert_eq!(schema["additionalProperties"], serde_json::json!(false));
    }

    proptest::proptest! {
        #[test]
        fn any_document_is_an_error_or_a_config_never_a_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512)) {
            for name in ["c.json", "c.yaml", "c"] {
                let _ = parse_document::<ConfigFile>(Path::new(name), &bytes);
                let _ = crate::baseline::Baseline::parse(Path::new(name), &bytes);
                let _ = crate::facts::declared::parse(Path::new(name), &bytes);
            }
        }

        #[test]
        fn yaml_like_text_never_panics(text in "[a-z_{}\\[\\]:, \n'\"0-9.-]{0,200}") {
            let _ = parse_document::<ConfigFile>(Path::new("c.yaml"), text.as_bytes());
            let _ = crate::baseline::Baseline::parse(Path::new("b.yaml"), text.as_bytes());
        }
    }
}
