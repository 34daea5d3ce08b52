//! External commands: fixed argument vectors, a timeout, a bounded output, a clean environment.
//!
//! A command is an [`Invocation`]: a record name, a program looked up in a fixed list of
//! directories (never `$PATH`), and arguments that are fixed strings or values validated by the
//! caller. Nothing here builds or runs a shell string.
//!
//! Two sources serve invocations:
//! - [`CommandSource::Live`] spawns the program with `LC_ALL=C` and an empty environment
//!   otherwise, kills it at the timeout, and refuses output beyond the limit;
//! - [`CommandSource::Recorded`] replays outputs recorded in a fixture tree, so the same check
//!   code runs against a captured host: `<dir>/<name>.stdout`, optional `<name>.exit` (the exit
//!   status, default 0) and `<name>.stderr`; `<name>.missing` means the program is not installed;
//!   no file at all means the command was not recorded, which is an error, never a pass.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::facts::FactError;

/// Directories searched for programs, in order: NixOS system profile first, then the FHS ones.
pub const DEFAULT_SEARCH_PATH: [&str; 6] = [
    "/run/current-system/sw/bin",
    "/run/wrappers/bin",
    "/usr/sbin",
    "/usr/bin",
    "/sbin",
    "/bin",
];

/// One command to run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Invocation {
    /// Stable name used for recorded outputs and messages, e.g. `nixos-version-json`.
    pub name: String,
    /// Program name (looked up in the search path) or absolute path.
    pub program: String,
    /// Arguments, passed as they are.
    pub args: Vec<String>,
}

impl Invocation {
    /// An invocation with fixed arguments.
    pub fn new(name: impl Into<String>, program: &str, args: &[&str]) -> Invocation {
        Invocation {
            name: name.into(),
            program: program.to_string(),
            args: args.iter().map(|it| it.to_string()).collect(),
        }
    }

    /// The command line for messages (arguments are never secrets: secrets travel in files).
    pub fn display(&self) -> String {
        let mut res = self.program.clone();
        for arg in &self.args {
            res.push(' ');
            res.push_str(arg);
        }
        res
    }
}

/// What a command printed and how it exited.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Output {
    /// Exit status; -1 when killed by a signal.
    pub status: i32,
    /// Standard output, at most the configured limit.
    pub stdout: Vec<u8>,
    /// Standard error, at most the configured limit.
    pub stderr: Vec<u8>,
}

impl Output {
    /// Standard output as text (invalid UTF-8 replaced).
    pub fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    /// A short excerpt of standard error for messages.
    pub fn stderr_excerpt(&self) -> String {
        excerpt(&self.stderr)
    }

    /// Standard output if the command exited 0, else a [`FactError::CommandFailed`].
    pub fn success(self, invocation: &Invocation) -> Result<Output, FactError> {
        if self.status == 0 {
            return Ok(self);
        }
        Err(FactError::CommandFailed {
            command: invocation.display(),
            status: self.status,
            stderr: self.stderr_excerpt(),
        })
    }
}

/// Limits for live commands.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Killed after this long.
    pub timeout: Duration,
    /// Refused beyond this many bytes on stdout or stderr.
    pub max_output: usize,
    /// Where programs are looked up.
    pub search_path: Vec<PathBuf>,
}

/// Where command outputs come from.
#[derive(Clone, Debug)]
pub enum CommandSource {
    /// Run the program on this host.
    Live(Limits),
    /// Replay outputs recorded in a directory of a fixture tree.
    Recorded(PathBuf),
    /// Commands are not available (e.g. `--root` on an image without recordings).
    Disabled(String),
}

impl CommandSource {
    /// Runs or replays an invocation.
    pub fn run(&self, invocation: &Invocation) -> Result<Output, FactError> {
        match self {
            CommandSource::Live(limits) => run_live(invocation, limits),
            CommandSource::Recorded(dir) => replay(invocation, dir),
            CommandSource::Disabled(why) => Err(FactError::CommandUnavailable {
                command: invocation.display(),
                why: why.clone(),
            }),
        }
    }
}

/// Finds a program in the search path; an absolute program path is taken as it is.
pub fn find_program(program: &str, search_path: &[PathBuf]) -> Option<PathBuf> {
    let as_path = Path::new(program);
    if as_path.is_absolute() {
        return as_path.is_file().then(|| as_path.to_path_buf());
    }
    search_path
        .iter()
        .map(|dir| dir.join(program))
        .find(|it| it.is_file())
}

fn run_live(invocation: &Invocation, limits: &Limits) -> Result<Output, FactError> {
    let Some(path) = find_program(&invocation.program, &limits.search_path) else {
        return Err(FactError::ToolMissing {
            program: invocation.program.clone(),
        });
    };
    let search_path = std::env::join_paths(&limits.search_path).unwrap_or_default();
    let mut child = Command::new(&path)
        .args(&invocation.args)
        .env_clear()
        .env("LC_ALL", "C")
        .env("PATH", search_path)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|err| FactError::Io {
            path: path.clone(),
            source: err,
        })?;
    let stdout = child
        .stdout
        .take()
        .map(|it| spawn_reader(it, limits.max_output));
    let stderr = child
        .stderr
        .take()
        .map(|it| spawn_reader(it, limits.max_output));
    let status = wait_with_timeout(&mut child, limits.timeout);
    let stdout = stdout.map_or(Some(Vec::new()), join_reader);
    let stderr = stderr.map_or(Some(Vec::new()), join_reader);
    let Some(status) = status else {
        return Err(FactError::CommandTimeout {
            command: invocation.display(),
            seconds: limits.timeout.as_secs(),
        });
    };
    let (Some(stdout), Some(stderr)) = (stdout, stderr) else {
        return Err(FactError::CommandOutputTooLarge {
            command: invocation.display(),
            limit: limits.max_output,
        });
    };
    Ok(Output {
        status,
        stdout,
        stderr,
    })
}

/// Reads a pipe up to `limit` bytes; `None` if the command printed more. Reading stops there and
/// the pipe is closed, so a runaway command gets EPIPE instead of filling memory.
fn spawn_reader(
    mut pipe: impl Read + Send + 'static,
    limit: usize,
) -> std::thread::JoinHandle<Option<Vec<u8>>> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 16 * 1024];
        loop {
            match pipe.read(&mut chunk) {
                Ok(0) => return Some(buf),
                Ok(n) => {
                    if buf.len() + n > limit {
                        return None;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                }
                Err(err) if err.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => return Some(buf),
            }
        }
    })
}

fn join_reader(handle: std::thread::JoinHandle<Option<Vec<u8>>>) -> Option<Vec<u8>> {
    handle.join().ok().flatten()
}

/// Waits for the child; kills it at the deadline. `None` means it timed out.
fn wait_with_timeout(child: &mut Child, timeout: Duration) -> Option<i32> {
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(1);
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status.code().unwrap_or(-1)),
            Ok(None) => {}
            Err(_) => return Some(-1),
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(20));
    }
}

fn replay(invocation: &Invocation, dir: &Path) -> Result<Output, FactError> {
    let file = |ext: &str| dir.join(format!("{}.{ext}", invocation.name));
    if file("missing").exists() {
        return Err(FactError::ToolMissing {
            program: invocation.program.clone(),
        });
    }
    let stdout = match std::fs::read(file("stdout")) {
        Ok(it) => it,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
            return Err(FactError::CommandUnavailable {
                command: invocation.display(),
                why: format!(
                    "no recorded output `{}` in {}",
                    invocation.name,
                    dir.display()
                ),
            });
        }
        Err(err) => {
            return Err(FactError::Io {
                path: file("stdout"),
                source: err,
            });
        }
    };
    let stderr = std::fs::read(file("stderr")).unwrap_or_default();
    let status = match std::fs::read_to_string(file("exit")) {
        Ok(text) => text
            .trim()
            .parse::<i32>()
            .map_err(|err| FactError::parse(file("exit").display().to_string(), err))?,
        Err(_) => 0,
    };
    Ok(Output {
        status,
        stdout,
        stderr,
    })
}

fn excerpt(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    // One line: reasons end up in table cells and single-line log fields.
    let text = text
        .split('\n')
        .map(str::trim)
        .filter(|it| !it.is_empty())
        .collect::<Vec<_>>()
        .join(" / ");
    let mut res: String = text.chars().take(300).collect();
    if text.chars().count() > 300 {
        res.push('…');
    }
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(timeout_ms: u64, max_output: usize) -> Limits {
        Limits {
            timeout: Duration::from_millis(timeout_ms),
            max_output,
            search_path: DEFAULT_SEARCH_PATH.iter().map(PathBuf::from).collect(),
        }
    }

    #[test]
    fn live_command_runs_with_fixed_argv() {
        let it = Invocation::new("echo", "echo", &["a b", "$HOME;"]);
        let out = CommandSource::Live(limits(5_000, 1024)).run(&it).unwrap();
        // No shell: the metacharacters arrive verbatim.
        assert_eq!(out.stdout_text(), "a b $HOME;\n");
        assert_eq!(out.status, 0);
    }

    #[test]
    fn timeout_kills_and_reports() {
        let it = Invocation::new("sleep", "sleep", &["5"]);
        let started = Instant::now();
        let res = CommandSource::Live(limits(200, 1024)).run(&it);
        assert!(
            matches!(res, Err(FactError::CommandTimeout { .. })),
            "{res:?}"
        );
        assert!(started.elapsed() < Duration::from_secs(3));
    }

    #[test]
    fn oversized_output_is_refused() {
        let it = Invocation::new("yes", "yes", &[]);
        let res = CommandSource::Live(limits(5_000, 64 * 1024)).run(&it);
        assert!(
            matches!(res, Err(FactError::CommandOutputTooLarge { .. })),
            "{res:?}"
        );
    }

    #[test]
    fn missing_tool_and_missing_recording_are_errors() {
        let it = Invocation::new("nope", "no-such-tool-msp", &[]);
        assert!(matches!(
            CommandSource::Live(limits(1_000, 1024)).run(&it),
            Err(FactError::ToolMissing { .. })
        ));
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            CommandSource::Recorded(dir.path().to_path_buf()).run(&it),
            Err(FactError::CommandUnavailable { .. })
        ));
        std::fs::write(dir.path().join("nope.stdout"), "out").unwrap();
        std::fs::write(dir.path().join("nope.exit"), "3\n").unwrap();
        let out = CommandSource::Recorded(dir.path().to_path_buf())
            .run(&it)
            .unwrap();
        assert_eq!((out.status, out.stdout_text().as_str()), (3, "out"));
    }
}
