//! The agent's configuration: read from JSON (what Nix renders) or YAML (what people write).
//!
//! Two stages, after ripgrep's low/high args: [`ConfigFile`] mirrors the file and only
//! deserializes (unknown fields refused); [`Config::from_file`] validates it and builds the
//! [`Config`] the rest of the agent uses. `Config` has no `Default` and is never mutated after
//! start-up. Every error names the file, the field path and what was expected.
//!
//! [`parse_document`] is the one reader of JSON/YAML documents (config, baseline, declared.json),
//! so all of them report errors the same way.

use std::path::{Path, PathBuf};
use std::time::Duration;

use schemars::JsonSchema;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::facts::command::DEFAULT_SEARCH_PATH;
use crate::facts::declared::{BackupTool, DeclaredBackupJob};

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
}

impl Config {
    /// Reads, parses and validates a configuration file.
    pub fn load(path: &Path) -> Result<Config, LoadError> {
        let bytes = read_document(path)?;
        let file: ConfigFile = parse_document(path, &bytes)?;
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
        }
    }
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
