//! How facts are read: files under a root prefix, fixed external commands, privileged probes.
//!
//! Everything a check knows about the host comes through a [`Host`]:
//! - [`fs::Root`] reads files, links and directories under a root prefix (`/` on a live host, a
//!   fixture tree in tests, a mounted image for offline inspection), following symlinks *inside*
//!   the prefix so a fixture's `/run/current-system -> /nix/store/…` resolves within the fixture;
//! - [`command`] runs fixed argument vectors (never a shell string) with a timeout and a bounded
//!   output, or replays recorded outputs when facts come from a fixture tree;
//! - [`probe`] is the one interface for facts that need privilege (the nft ruleset, auditd
//!   status, LUKS headers, backup repositories), so the least-privilege probe units plug in
//!   without touching the checks;
//! - [`declared`] is what the NixOS generation declares (`/etc/msp-compliance/declared.json`);
//! - [`systemd`] parses what systemd's tools print (`systemctl show` blocks, timestamps), for
//!   the checks that ran them through [`command`].
//!
//! This module reads and never writes. A fact that cannot be read is a [`FactError`], which the
//! checks turn into an `unknown` rule result with the error as its reason.

pub mod command;
pub mod declared;
pub mod fs;
pub mod probe;
pub mod systemd;

use std::path::PathBuf;

use crate::facts::command::{CommandSource, Invocation, Output};
use crate::facts::declared::Declared;
use crate::facts::fs::Root;
use crate::facts::probe::{Probe, ProbeSource};

/// A fact that could not be read. Its `Display` is the reason shown in an `unknown` result.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FactError {
    /// A command ran but exited with a status the caller does not accept.
    #[error("`{command}` exited with status {status}: {stderr}")]
    CommandFailed {
        command: String,
        status: i32,
        stderr: String,
    },
    /// A command printed more than the configured limit.
    #[error("`{command}` printed more than {limit} bytes")]
    CommandOutputTooLarge { command: String, limit: usize },
    /// A command ran longer than the configured timeout and was killed.
    #[error("`{command}` did not finish within {seconds} s and was killed")]
    CommandTimeout { command: String, seconds: u64 },
    /// A file exists but is larger than what the reader accepts.
    #[error("{path} is larger than {limit} bytes")]
    FileTooLarge { path: PathBuf, limit: u64 },
    /// An I/O error other than not-found or permission-denied.
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The file or directory does not exist.
    #[error("{path} does not exist")]
    NotFound { path: PathBuf },
    /// The content could not be understood.
    #[error("cannot parse {what}: {message}")]
    Parse { what: String, message: String },
    /// Permission denied; the fact needs privilege.
    #[error("permission denied reading {path} (needs root or the msp-compliance-probe units)")]
    PermissionDenied { path: PathBuf },
    /// A privileged probe failed because this process has no privilege.
    #[error(
        "`{command}` needs privilege (run as root, or through the msp-compliance-probe units): {stderr}"
    )]
    PrivilegeRequired { command: String, stderr: String },
    /// The command is not served in this mode (for example a live command under `--root`).
    #[error("`{command}` is not available: {why}")]
    CommandUnavailable { command: String, why: String },
    /// Symlinks loop or nest too deeply.
    #[error("too many levels of symbolic links resolving {path}")]
    SymlinkLoop { path: PathBuf },
    /// The program is not installed in any of the searched directories.
    #[error("`{program}` is not installed")]
    ToolMissing { program: String },
}

impl FactError {
    /// Returns true if and only if the error says the thing is simply absent (file or program).
    pub fn is_absent(&self) -> bool {
        matches!(
            self,
            FactError::NotFound { .. } | FactError::ToolMissing { .. }
        )
    }

    /// Builds a parse error.
    pub fn parse(what: impl Into<String>, message: impl std::fmt::Display) -> FactError {
        FactError::Parse {
            what: what.into(),
            message: message.to_string(),
        }
    }
}

/// What the checks read the host through. Built once per run and shared by all checks.
pub struct Host {
    /// Files, links and directories, under the root prefix.
    pub root: Root,
    /// Unprivileged commands, live or recorded.
    commands: CommandSource,
    /// Privileged facts.
    probes: ProbeSource,
    /// What the NixOS generation declares, if the host has it.
    declared: DeclaredState,
    /// Paths on the host that are policy-independent (sockets, state directory).
    pub paths: HostPaths,
}

/// Host-specific locations, from the configuration (not from the baseline: they say where
/// things are, not what is required).
#[derive(Clone, Debug)]
pub struct HostPaths {
    /// The agent's state directory (backup status and restore-test records live below it).
    pub state_dir: PathBuf,
    /// clamd's local socket; `None` means read it from clamd.conf or use the default.
    pub clamd_socket: Option<PathBuf>,
    /// ClamAV's database directory.
    pub clamav_database_dir: PathBuf,
    /// Backup jobs configured for hosts without a declared.json (non-NixOS).
    pub backup_jobs: Vec<declared::DeclaredBackupJob>,
}

/// The declared state, as far as it could be read.
#[derive(Debug)]
pub enum DeclaredState {
    /// No declared.json on this host (not NixOS, or the module is not enabled).
    Absent,
    /// declared.json exists but is not valid; checks say so instead of comparing.
    Invalid(String),
    /// A valid declared.json.
    Present(Box<Declared>),
}

impl Host {
    /// Builds a host view. Reads declared.json once, here.
    pub fn new(
        root: Root,
        commands: CommandSource,
        probes: ProbeSource,
        declared_path: &std::path::Path,
        paths: HostPaths,
    ) -> Host {
        let declared = declared::read(&root, declared_path);
        Host {
            root,
            commands,
            probes,
            declared,
            paths,
        }
    }

    /// Runs an unprivileged command.
    pub fn run(&self, invocation: &Invocation) -> Result<Output, FactError> {
        self.commands.run(invocation)
    }

    /// Reads a privileged fact through the configured probe source.
    pub fn probe(&self, probe: &Probe) -> Result<Output, FactError> {
        self.probes.read(probe, &self.commands)
    }

    /// What the generation declares.
    pub fn declared(&self) -> &DeclaredState {
        &self.declared
    }

    /// The declared state if present and valid.
    pub fn declared_ok(&self) -> Option<&Declared> {
        match &self.declared {
            DeclaredState::Present(it) => Some(it),
            DeclaredState::Absent | DeclaredState::Invalid(_) => None,
        }
    }
}
