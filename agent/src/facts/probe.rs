//! Privileged facts: the one interface through which checks read what needs root.
//!
//! A [`Probe`] names a privileged fact; each variant maps to one fixed argument vector, and its
//! parameters (a device path, a job name) are validated before they reach an argument.
//! A [`ProbeSource`] decides how the fact is obtained:
//! - `Direct` runs the fixed command as this process (works when `check` runs as root; an
//!   unprivileged run gets an error that says privilege is needed, never a pass);
//! - `Recorded` replays a fixture tree's recordings.
//!
//! The least-privilege probe units (`msp-compliance-probe@<name>`) of the NixOS module are a
//! third source that starts the unit and reads its JSON result; they plug in here, and the
//! checks do not change.

use std::path::{Path, PathBuf};

use crate::facts::FactError;
use crate::facts::command::{CommandSource, Invocation, Output};

/// A privileged fact.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Probe {
    /// `auditctl -l`: the loaded audit rules.
    AuditRules,
    /// `auditctl -s`: kernel audit status (enabled, failure, pid, lost, backlog).
    AuditStatus,
    /// `borg list --json --last 1 <repo>` for a job.
    BorgList {
        job: String,
        repository: String,
        passphrase_file: Option<PathBuf>,
    },
    /// `ip6tables-save`: the IPv6 legacy/xt ruleset.
    Ip6tablesSave,
    /// `iptables-save`: the IPv4 legacy/xt ruleset.
    IptablesSave,
    /// `cryptsetup luksDump <device>`: LUKS header summary (never key material).
    LuksDump { device: PathBuf },
    /// `nft -j list ruleset`: the live nftables ruleset as JSON.
    NftRuleset,
    /// `restic snapshots --json` for a job's repository.
    ResticSnapshots {
        job: String,
        repository: String,
        password_file: PathBuf,
    },
}

impl Probe {
    /// The fixed command of the probe. Parameters are validated first.
    pub fn invocation(&self) -> Result<Invocation, FactError> {
        let res = match self {
            Probe::AuditRules => Invocation::new("auditctl-rules", "auditctl", &["-l"]),
            Probe::AuditStatus => Invocation::new("auditctl-status", "auditctl", &["-s"]),
            Probe::BorgList {
                job,
                repository,
                passphrase_file,
            } => {
                let job = record_safe(job)?;
                let repository = not_an_option(repository)?;
                let mut invocation = Invocation::new(
                    format!("borg-list.{job}"),
                    "borg",
                    &[
                        "list",
                        "--json",
                        "--last",
                        "1",
                        "--bypass-lock",
                        "--",
                        repository,
                    ],
                );
                // borg reads the passphrase from a file descriptor or command; the file variant
                // is passed as an argument so nothing secret enters the environment or argv.
                if let Some(file) = passphrase_file {
                    invocation.args.insert(
                        0,
                        format!("--passphrase-file={}", absolute(file)?.display()),
                    );
                }
                invocation
            }
            Probe::Ip6tablesSave => Invocation::new("ip6tables-save", "ip6tables-save", &[]),
            Probe::IptablesSave => Invocation::new("iptables-save", "iptables-save", &[]),
            Probe::LuksDump { device } => {
                let device = absolute(device)?;
                let flat = device
                    .display()
                    .to_string()
                    .trim_start_matches('/')
                    .replace('/', "-");
                let key = record_safe(&flat)?;
                Invocation::new(
                    format!("luks-dump.{key}"),
                    "cryptsetup",
                    &["luksDump", &device.display().to_string()],
                )
            }
            Probe::NftRuleset => Invocation::new("nft-ruleset", "nft", &["-j", "list", "ruleset"]),
            Probe::ResticSnapshots {
                job,
                repository,
                password_file,
            } => {
                let job = record_safe(job)?;
                let repository = not_an_option(repository)?;
                let password_file = absolute(password_file)?;
                Invocation {
                    name: format!("restic-snapshots.{job}"),
                    program: "restic".to_string(),
                    // `--no-lock` keeps the probe read-only: it must never block a running backup.
                    args: vec![
                        format!("--repo={repository}"),
                        format!("--password-file={}", password_file.display()),
                        "--no-lock".to_string(),
                        "--no-cache".to_string(),
                        "snapshots".to_string(),
                        "--json".to_string(),
                    ],
                }
            }
        };
        Ok(res)
    }
}

/// How privileged facts are obtained.
#[derive(Clone, Debug)]
pub enum ProbeSource {
    /// Run the fixed command as this process.
    Direct,
    /// Replay recordings (fixture trees).
    Recorded(PathBuf),
    /// Start the fixed root unit `msp-compliance-probe@<name>.service` (allowed by the NixOS
    /// module's polkit rule) and read the result it writes to `<dir>/<name>.{stdout,stderr,exit}`.
    Units(PathBuf),
}

/// Where the NixOS module's probe units write their results.
pub const PROBE_RESULT_DIR: &str = "/run/msp-compliance/probe";

impl ProbeSource {
    /// Reads a privileged fact.
    pub fn read(&self, probe: &Probe, commands: &CommandSource) -> Result<Output, FactError> {
        let invocation = probe.invocation()?;
        match self {
            ProbeSource::Direct => {
                let out = commands.run(&invocation)?;
                if out.status != 0 && !is_root() && looks_like_permission_error(&out.stderr) {
                    return Err(FactError::PrivilegeRequired {
                        command: invocation.display(),
                        stderr: out.stderr_excerpt(),
                    });
                }
                Ok(out)
            }
            ProbeSource::Recorded(dir) => CommandSource::Recorded(dir.clone()).run(&invocation),
            ProbeSource::Units(dir) => read_through_unit(&invocation, dir, commands),
        }
    }
}

/// Starts the probe's root oneshot unit and reads what it recorded. The unit name is built from
/// the probe's fixed record name, never from outside input; `systemctl start` of a oneshot
/// returns when it has finished, and the unit moves its result files into place atomically.
fn read_through_unit(
    invocation: &Invocation,
    dir: &Path,
    commands: &CommandSource,
) -> Result<Output, FactError> {
    let unit = format!("msp-compliance-probe@{}.service", invocation.name);
    let start = Invocation::new(
        format!("systemctl-start-{}", invocation.name),
        "systemctl",
        &["start", &unit],
    );
    let started_at = std::time::SystemTime::now();
    commands.run(&start)?.success(&start)?;
    // A result older than this start means the unit did not write one (it would be stale).
    let exit_file = dir.join(format!("{}.exit", invocation.name));
    let written = std::fs::metadata(&exit_file)
        .and_then(|it| it.modified())
        .map_err(|err| FactError::Io {
            path: exit_file.clone(),
            source: err,
        })?;
    if written + std::time::Duration::from_secs(1) < started_at {
        return Err(FactError::CommandUnavailable {
            command: invocation.display(),
            why: format!("{unit} left no fresh result in {}", dir.display()),
        });
    }
    CommandSource::Recorded(dir.to_path_buf()).run(invocation)
}

/// Returns true if and only if this process runs with effective uid 0.
pub fn is_root() -> bool {
    // /proc/self/status "Uid:" has real, effective, saved, fs uids; the second is effective.
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else {
        return false;
    };
    status
        .lines()
        .find_map(|line| line.strip_prefix("Uid:"))
        .and_then(|rest| rest.split_whitespace().nth(1))
        .is_some_and(|euid| euid == "0")
}

fn looks_like_permission_error(stderr: &[u8]) -> bool {
    let text = String::from_utf8_lossy(stderr).to_ascii_lowercase();
    [
        "permission denied",
        "operation not permitted",
        "must be root",
        "you must be root",
        // cryptsetup luksDump without read access to the device.
        "access denied",
    ]
    .iter()
    .any(|it| text.contains(it))
}

/// Returns true if and only if `name` is safe as a record file name and a unit instance:
/// `[A-Za-z0-9_.-]`, not empty, not starting with `.` or `-` (so it can become neither a hidden
/// file, a path step nor an option), at most 100 bytes. The backup check applies the same rule
/// to job names before it reads anything named after them.
pub fn is_plain_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 100
        && !name.starts_with(['.', '-'])
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// `name` if it is a plain name ([`is_plain_name`]).
fn record_safe(name: &str) -> Result<&str, FactError> {
    if is_plain_name(name) {
        Ok(name)
    } else {
        Err(FactError::parse(
            "probe parameter",
            format!("{name:?} is not a plain name"),
        ))
    }
}

/// A value that must not be mistaken for an option by the tool.
fn not_an_option(value: &str) -> Result<&str, FactError> {
    if value.is_empty() || value.starts_with('-') || value.contains('\n') || value.contains('\0') {
        return Err(FactError::parse(
            "probe parameter",
            format!("{value:?} is not a repository"),
        ));
    }
    Ok(value)
}

fn absolute(path: &Path) -> Result<&Path, FactError> {
    let text = path.to_string_lossy();
    if !path.is_absolute() || text.contains('\n') || text.contains("/../") || text.ends_with("/..")
    {
        return Err(FactError::parse(
            "probe parameter",
            format!("{} is not a plain absolute path", path.display()),
        ));
    }
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters_cannot_become_options() {
        let bad = Probe::ResticSnapshots {
            job: "daily".into(),
            repository: "--insecure-tls".into(),
            password_file: "/run/keys/restic".into(),
        };
        assert!(bad.invocation().is_err());
        let bad_job = Probe::ResticSnapshots {
            job: "../x".into(),
            repository: "/srv/restic".into(),
            password_file: "/run/keys/restic".into(),
        };
        assert!(bad_job.invocation().is_err());
        let relative = Probe::LuksDump {
            device: "dev/sda2".into(),
        };
        assert!(relative.invocation().is_err());
        let good = Probe::LuksDump {
            device: "/dev/disk/by-uuid/0b7d".into(),
        };
        let it = good.invocation().unwrap();
        assert_eq!(it.name, "luks-dump.dev-disk-by-uuid-0b7d");
        assert_eq!(it.args, vec!["luksDump", "/dev/disk/by-uuid/0b7d"]);
    }

    /// The probe-unit source against a stand-in `systemctl` (a script in a private search path)
    /// that behaves like the NixOS module's unit: writes the result files, or is refused.
    #[test]
    fn units_source_starts_the_unit_and_reads_its_fresh_result() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("bin");
        let results = dir.path().join("probe");
        std::fs::create_dir_all(&bin).unwrap();
        std::fs::create_dir_all(&results).unwrap();
        let limits = |search: &Path| crate::facts::command::Limits {
            timeout: std::time::Duration::from_secs(5),
            max_output: 1 << 20,
            search_path: vec![search.to_path_buf()],
        };
        let write_systemctl = |body: &str| {
            let path = bin.join("systemctl");
            std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        };
        let source = ProbeSource::Units(results.clone());
        let results_text = results.display().to_string();

        write_systemctl(&format!(
            "[ \"$1 $2\" = \"start msp-compliance-probe@nft-ruleset.service\" ] || exit 9\nprintf '{{\"nftables\":[]}}' > {results_text}/nft-ruleset.stdout\necho 0 > {results_text}/nft-ruleset.exit"
        ));
        let out = source
            .read(&Probe::NftRuleset, &CommandSource::Live(limits(&bin)))
            .unwrap();
        assert_eq!(out.stdout_text(), r#"{"nftables":[]}"#);

        write_systemctl(
            "echo 'Failed to start msp-compliance-probe@auditctl-status.service: Access denied' >&2\nexit 4",
        );
        let err = source
            .read(&Probe::AuditStatus, &CommandSource::Live(limits(&bin)))
            .unwrap_err();
        assert!(err.to_string().contains("Access denied"), "{err}");

        // The unit "succeeds" but writes nothing new: an old result must not be served.
        std::fs::write(
            results.join("auditctl-rules.stdout"),
            "-w /etc/passwd -p wa",
        )
        .unwrap();
        std::fs::write(results.join("auditctl-rules.exit"), "0").unwrap();
        let old = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
        std::fs::File::options()
            .write(true)
            .open(results.join("auditctl-rules.exit"))
            .unwrap()
            .set_modified(old)
            .unwrap();
        write_systemctl("exit 0");
        let err = source
            .read(&Probe::AuditRules, &CommandSource::Live(limits(&bin)))
            .unwrap_err();
        assert!(err.to_string().contains("no fresh result"), "{err}");
    }
}
