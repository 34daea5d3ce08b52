//! A booted "site": a real systemd (Debian bookworm's 252) in a `systemd-nspawn` container, for
//! integration tests that need real units, polkit, journald, hardening and nftables.
//!
//! The root tree comes from `scripts/site-root.sh build` and is never modified: every `Site`
//! boots it with `--volatile=overlay` (a tmpfs on top), so each boot starts clean and several
//! sites can run at once. A site owns its nspawn process, its own cgroups (one per cgroup
//! hierarchy nspawn uses, so parallel sites do not share `payload/` and `supervisor/`), and a
//! console log; dropping it halts the container (bounded) and removes all three.
//!
//! Commands reach the container through two channels (shared/research/systemd.md §3):
//! `root` runs a fixed argv as root via `nsenter` into the container's PID 1 namespaces (for
//! setup and inspection; it keeps the host's capabilities), and `service` runs one as a
//! transient unit of the container's systemd (`systemd-run --wait --pipe`), so it gets the
//! unit's user, capabilities, seccomp filter and cgroup. The latter is how a test runs the
//! agent as `User=msp-compliance` with its hardening.
//!
//! A persistent site (`Site::boot_persistent`) boots a private copy of the tree instead, with
//! `--volatile=no`, so files and the journal survive a reboot of the container. When its
//! systemd reboots (`systemctl reboot` inside, or the code under test), nspawn exits with
//! status 133 and `reboot_and_wait` boots the same copy again. The copy sits beside the cached
//! tree and is removed on drop, or by the next boot of any site once its owner process is gone.
//!
//! Use from an integration test with `mod support { pub mod site; }` (the repository has no
//! `mod.rs` files) and gate the test with `site_tests_enabled`.

// Each test crate uses a different part of the harness.
#![allow(dead_code)]

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, BorrowedFd};
use std::os::unix::fs::DirBuilderExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// From nspawn's start to `systemctl is-system-running` answering running or degraded.
/// Measured at under a second; the bound is for a machine under heavy load.
const BOOT_TIMEOUT: Duration = Duration::from_secs(90);
/// From SIGTERM to nspawn's exit (an orderly halt, measured at about 0.4-1.5 s).
const STOP_TIMEOUT: Duration = Duration::from_secs(30);
/// After SIGKILL: for the processes to be gone and their cgroups removable.
const KILL_TIMEOUT: Duration = Duration::from_secs(10);
/// Any single command run inside the container.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(120);
/// Copying the tree for a persistent site: about 220 MB in 8.6k files, a plain copy on ext4
/// (no reflinks), measured at 1 s on an idle machine and 5-10 s with two copies at once on a
/// busy one; the bound is for a slow disk.
const COPY_TIMEOUT: Duration = Duration::from_secs(300);
/// nspawn's exit status when the container asked for a reboot (what `systemd-nspawn@.service`
/// restarts on). Observed with systemd 252 here after `systemctl reboot` inside.
const NSPAWN_EXIT_REBOOT: i32 = 133;
/// A persistent site's private copy of the tree is `<cache>/msp-site-copy-<machine>/root`.
const COPY_PREFIX: &str = "msp-site-copy-";
/// The unprivileged user the agent runs as (created in the tree by `scripts/site-root.sh`).
pub const AGENT_USER: &str = "msp-compliance";
/// nspawn keeps a directory per machine here and, because the host's `/run` is not a tmpfs,
/// refuses to remove it itself on exit.
const PROPAGATE_DIR: &str = "/run/systemd/nspawn/propagate";
/// The environment of every command sent into the container: nothing of the test process
/// leaks in (cargo's variables, `SYSTEMD_*` switches), so commands behave as on a host.
const CONTAINER_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Numbers the sites of this process, so machine names stay unique when a test boots several.
static SITE_SEQUENCE: AtomicU32 = AtomicU32::new(0);

/// A booted container; halted and cleaned up on drop.
pub struct Site {
    /// The nspawn machine name, unique per process and boot (`<name>-<pid>-<n>`).
    machine: String,
    /// The nspawn supervisor. Drop sends it SIGTERM (an orderly halt of the container), then
    /// kills what is left in `cgroups`.
    nspawn: Child,
    /// The container's PID 1 (systemd) in the host's PID namespace; 0 until it is known.
    leader: u32,
    /// Our cgroup in each hierarchy, created before the boot and removed by drop after the
    /// container is gone. nspawn creates `payload/` and `supervisor/` inside them.
    cgroups: Vec<PathBuf>,
    /// Holds `console.log`, the container's console and nspawn's own messages; removed on drop.
    console_dir: tempfile::TempDir,
    /// From spawning nspawn to the system reporting running or degraded (the first boot).
    boot_time: Duration,
    /// nspawn's arguments, kept so that `reboot_and_wait` starts the same container again.
    nspawn_args: Vec<String>,
    /// A persistent site's private copy of the tree; `None` for an overlay site. A field, so it
    /// is removed only after `Drop for Site` has stopped the container that uses it.
    copy: Option<PrivateCopy>,
    /// How many times `reboot_and_wait` booted the container again.
    reboots: u32,
}

/// Where a site's root file system comes from.
enum RootMode {
    /// The cached tree under a tmpfs overlay: clean on every boot, shared by parallel sites.
    Overlay,
    /// A private copy of the tree, written through: state survives a reboot.
    PrivateCopy,
}

/// A command started inside a site without waiting for it (`root_spawn`, `service_spawn`).
/// A thread supervises it (see `supervise`); dropping this kills the host side (nsenter) if
/// it still runs.
pub struct SpawnedCommand {
    /// The supervising thread's answer: the command's output, or why there is none.
    result: mpsc::Receiver<Result<Output, String>>,
    /// Set by a timed-out `wait` or by drop: the supervising thread then kills the command,
    /// reaps it and stops.
    abandon: Arc<AtomicBool>,
}

/// A persistent site's directory `<cache>/msp-site-copy-<machine>` (mode 0700) holding `root/`,
/// a copy of the tree; removed on drop.
struct PrivateCopy {
    dir: PathBuf,
    /// How long `cp` took.
    copy_time: Duration,
}

/// Whether a test that boots a site should run: yes with `MSP_REAL_TOOLS=1` (and then an
/// unavailable site fails the test, so CI never skips silently); otherwise it prints why it is
/// skipped, like the other real-tool tests.
pub fn site_tests_enabled(test: &str) -> bool {
    let real_tools = std::env::var_os("MSP_REAL_TOOLS").is_some_and(|it| it == "1");
    match (Site::available(), real_tools) {
        (Ok(_), true) => true,
        (Err(why), true) => panic!("{test}: MSP_REAL_TOOLS=1 but no site container here: {why}"),
        (Ok(_), false) => {
            eprintln!("skipped {test}: set MSP_REAL_TOOLS=1 to boot the site container");
            false
        }
        (Err(why), false) => {
            eprintln!("skipped {test}: {why} (and MSP_REAL_TOOLS=1 is not set)");
            false
        }
    }
}

impl Site {
    /// Checks that a site can boot here and returns the root tree: root, the tools, a cgroup2
    /// hierarchy and a built tree.
    pub fn available() -> Result<PathBuf, String> {
        if effective_uid() != Some(0) {
            return Err("booting a site needs root (nspawn, cgroups, nsenter)".to_string());
        }
        for tool in ["systemd-nspawn", "nsenter"] {
            if find_in_path(tool).is_none() {
                return Err(format!(
                    "{tool} not found; `scripts/site-root.sh build` installs it"
                ));
            }
        }
        let hierarchies = cgroup_hierarchies()?;
        if !hierarchies.iter().any(|it| it.unified) {
            return Err("no cgroup2 hierarchy is mounted; nspawn needs one here".to_string());
        }
        let tree = tree_path()?;
        let passwd = fs::read_to_string(tree.join("etc/passwd")).unwrap_or_default();
        let user_line = format!("{AGENT_USER}:");
        if !tree.join("usr/lib/systemd/systemd").exists()
            || !passwd.lines().any(|it| it.starts_with(&user_line))
        {
            return Err(format!(
                "the site tree {} is not built; run `scripts/site-root.sh build`",
                tree.display()
            ));
        }
        Ok(tree)
    }

    /// Boots a container named after `name` (`[a-z0-9-]`, at most 32 characters) with the given
    /// read-only binds `(host path, container path)`, and waits (bounded) until its systemd
    /// reports running or degraded. The cached tree is mounted under a tmpfs overlay: every
    /// write is lost when the container stops.
    pub fn boot(name: &str, binds_ro: &[(&Path, &str)]) -> Result<Site, String> {
        Site::boot_with_root(name, binds_ro, RootMode::Overlay)
    }

    /// Like `boot`, but on a private copy of the tree (`cp -a --reflink=auto`, bounded) booted
    /// with `--volatile=no`, so what the container writes, its journal included, survives a
    /// reboot (`reboot_and_wait`). The copy is removed when the site is dropped.
    pub fn boot_persistent(name: &str, binds_ro: &[(&Path, &str)]) -> Result<Site, String> {
        Site::boot_with_root(name, binds_ro, RootMode::PrivateCopy)
    }

    fn boot_with_root(
        name: &str,
        binds_ro: &[(&Path, &str)],
        root_mode: RootMode,
    ) -> Result<Site, String> {
        let tree = Site::available()?;
        let name_ok = !name.is_empty()
            && name.len() <= 32
            && name
                .bytes()
                .all(|it| it.is_ascii_lowercase() || it.is_ascii_digit() || it == b'-');
        if !name_ok {
            return Err(format!(
                "site name {name:?}: use [a-z0-9-], at most 32 characters"
            ));
        }
        let machine = format!(
            "{name}-{}-{}",
            std::process::id(),
            SITE_SEQUENCE.fetch_add(1, Ordering::Relaxed)
        );

        let mut bind_args = Vec::new();
        for (host_path, container_path) in binds_ro {
            let host = host_path.to_str().unwrap_or_default();
            // nspawn separates source, destination and options with colons.
            if !host_path.is_absolute()
                || host.is_empty()
                || host.contains(':')
                || !container_path.starts_with('/')
                || container_path.contains(':')
            {
                return Err(format!(
                    "bind {host_path:?} -> {container_path:?}: both absolute, without colons"
                ));
            }
            if !host_path.exists() {
                return Err(format!(
                    "bind source {} does not exist",
                    host_path.display()
                ));
            }
            bind_args.push(format!("--bind-ro={host}:{container_path}"));
        }

        let console_dir = tempfile::Builder::new()
            .prefix("msp-site-")
            .tempdir()
            .map_err(|err| format!("console log directory: {err}"))?;
        let console = File::create(console_dir.path().join("console.log"))
            .map_err(|err| format!("console log: {err}"))?;

        // Leftovers of killed test processes first: their containers are stopped by the
        // cgroup sweep before the copy sweep removes their root trees.
        let hierarchies = cgroup_hierarchies()?;
        for hierarchy in &hierarchies {
            sweep_stale_cgroups(&hierarchy.current);
        }
        if let Some(cache) = tree.parent() {
            sweep_stale_copies(cache);
        }

        let copy = match root_mode {
            RootMode::Overlay => None,
            RootMode::PrivateCopy => Some(PrivateCopy::create(&tree, &machine)?),
        };
        let (directory, volatile) = match &copy {
            // The tree is the lower layer, a tmpfs takes the writes: a clean boot every time,
            // and parallel sites share the tree.
            None => (tree.clone(), "--volatile=overlay"),
            // Writes go to this site's own copy and outlive the container's reboots.
            Some(copy) => (copy.root(), "--volatile=no"),
        };
        let mut nspawn_args = vec![
            "--quiet".to_string(),
            "--boot".to_string(),
            format!("--directory={}", directory.display()),
            format!("--machine={machine}"),
            // No machined and no system bus on these hosts: without both flags nspawn asks the
            // bus for a scope and dies.
            "--register=no".to_string(),
            "--keep-unit".to_string(),
            // Only `lo` inside; the host's interfaces and nft ruleset stay out of reach.
            "--private-network".to_string(),
            // Keep the host's /var/log/journal untouched.
            "--link-journal=no".to_string(),
            "--console=read-only".to_string(),
            volatile.to_string(),
            // Without bpf(2) the container's systemd cannot load its cgroup-BPF programs and
            // silently ignores IPAddressDeny=/IPAddressAllow=.
            "--system-call-filter=bpf".to_string(),
            "--capability=CAP_BPF,CAP_PERFMON".to_string(),
        ];
        nspawn_args.extend(bind_args);

        // Our own cgroups, one per hierarchy: nspawn creates its sub-cgroups inside them
        // instead of in the shared root.
        let mut cgroups = Vec::new();
        for hierarchy in &hierarchies {
            let dir = hierarchy.current.join(format!("msp-site-{machine}"));
            if let Err(err) = fs::create_dir(&dir) {
                remove_cgroup_trees(&cgroups, Instant::now() + KILL_TIMEOUT);
                return Err(format!("create cgroup {}: {err}", dir.display()));
            }
            cgroups.push(dir);
        }

        let started = Instant::now();
        let nspawn = match spawn_nspawn(&nspawn_args, &cgroups, console) {
            Ok(child) => child,
            Err(err) => {
                remove_cgroup_trees(&cgroups, Instant::now() + KILL_TIMEOUT);
                return Err(err);
            }
        };
        // From here on, dropping `site` (on any error below) halts and cleans up.
        let mut site = Site {
            machine,
            nspawn,
            leader: 0,
            cgroups,
            console_dir,
            boot_time: Duration::ZERO,
            nspawn_args,
            copy,
            reboots: 0,
        };
        let deadline = started + BOOT_TIMEOUT;
        site.leader = site.wait_for_leader(deadline)?;
        site.wait_until_running(deadline)?;
        site.boot_time = started.elapsed();
        Ok(site)
    }

    /// For a persistent site whose container reboots itself (`systemctl reboot` inside, or the
    /// code under test): waits up to `timeout` for nspawn to exit with its reboot status (133),
    /// then boots the same copy again (a new nspawn and PID 1, the same binds and cgroups) and
    /// waits, bounded like `boot`, until it runs. Returns the time from nspawn's exit to the
    /// system running. Any other exit of nspawn (a poweroff, a crash) is an error quoting the
    /// console. Every process of the old boot is gone by then, commands entered with `root`
    /// included; start a command whose end the test wants to see with `root_spawn`.
    pub fn reboot_and_wait(&mut self, timeout: Duration) -> Result<Duration, String> {
        if self.copy.is_none() {
            return Err(format!(
                "site {}: reboot_and_wait needs a persistent site (Site::boot_persistent); \
                 an overlay site's state ends with its nspawn",
                self.machine
            ));
        }
        let deadline = Instant::now() + timeout;
        let mut pause = Duration::from_millis(2);
        // Short pauses: the time returned starts when the exit is seen.
        let status = loop {
            match self.nspawn.try_wait() {
                Ok(Some(status)) => break status,
                Ok(None) => {}
                Err(err) => {
                    return Err(self.boot_error(&format!("wait for systemd-nspawn: {err}")));
                }
            }
            if Instant::now() >= deadline {
                return Err(
                    self.boot_error(&format!("no reboot within {:.1} s", timeout.as_secs_f64()))
                );
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(10));
        };
        let exited = Instant::now();
        if status.code() != Some(NSPAWN_EXIT_REBOOT) {
            return Err(self.boot_error(&format!(
                "systemd-nspawn exited with {status}, not with {NSPAWN_EXIT_REBOOT} (reboot)"
            )));
        }
        self.leader = 0;
        self.reset_cgroups()?;
        let console_path = self.console_dir.path().join("console.log");
        let mut console = OpenOptions::new()
            .append(true)
            .open(&console_path)
            .map_err(|err| format!("console log: {err}"))?;
        let _ = writeln!(
            console,
            "--- site harness: booting again after reboot {} ---",
            self.reboots + 1
        );
        match spawn_nspawn(&self.nspawn_args, &self.cgroups, console) {
            Ok(child) => self.nspawn = child,
            Err(err) => return Err(self.boot_error(&err)),
        }
        self.reboots += 1;
        let deadline = Instant::now() + BOOT_TIMEOUT;
        self.leader = self.wait_for_leader(deadline)?;
        self.wait_until_running(deadline)?;
        Ok(exited.elapsed())
    }

    /// A persistent site's root directory on the host (its private copy of the tree); `None`
    /// for an overlay site.
    pub fn persistent_root(&self) -> Option<PathBuf> {
        self.copy.as_ref().map(PrivateCopy::root)
    }

    /// How long copying the tree took for a persistent site; `None` for an overlay site.
    pub fn copy_time(&self) -> Option<Duration> {
        self.copy.as_ref().map(|it| it.copy_time)
    }

    /// How many times `reboot_and_wait` booted the container again.
    pub fn reboots(&self) -> u32 {
        self.reboots
    }

    /// The nspawn machine name (also the name of our cgroups, with a `msp-site-` prefix).
    pub fn machine(&self) -> &str {
        &self.machine
    }

    /// The container's PID 1 as seen from the host (a new one after each reboot).
    pub fn leader(&self) -> u32 {
        self.leader
    }

    /// From spawning nspawn to the system reporting running or degraded, for the first boot.
    pub fn boot_time(&self) -> Duration {
        self.boot_time
    }

    /// Our cgroups on the host (each removed when the site is dropped).
    pub fn cgroup_dirs(&self) -> Vec<PathBuf> {
        self.cgroups.clone()
    }

    /// The container's console so far (boot messages, nspawn's warnings).
    pub fn console_log(&self) -> String {
        fs::read_to_string(self.console_dir.path().join("console.log")).unwrap_or_default()
    }

    /// Runs `argv` as root inside the container (its mount, UTS, IPC, network, PID and cgroup
    /// namespaces), with a clean environment and a bounded wait. A command that cannot be
    /// started or times out fails the test.
    pub fn root(&self, argv: &[&str]) -> Output {
        self.root_with_stdin(argv, None)
    }

    /// `root`, requiring exit status 0; returns stdout.
    pub fn root_ok(&self, argv: &[&str]) -> String {
        let out = self.root(argv);
        assert!(
            out.status.success(),
            "{}: {argv:?} failed ({}): {}",
            self.machine,
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Writes `bytes` to `path` inside the container with permission bits `mode`, creating
    /// parent directories. It goes through the root channel rather than through the leader's
    /// `root` link in /proc from the host: that works with the overlay, but absolute symlinks
    /// met on the way would resolve against the host's root.
    pub fn write_file(&self, path: &str, bytes: &[u8], mode: u32) {
        assert!(
            path.starts_with('/'),
            "write_file: {path:?} is not absolute"
        );
        let mode_text = format!("{mode:o}");
        // install(1) creates the file with its mode before any content is written, replaces a
        // symlink instead of following it, and reads the content from the pipe.
        let out = self.root_with_stdin(
            &["install", "-D", "-m", &mode_text, "/dev/stdin", path],
            Some(bytes),
        );
        assert!(
            out.status.success(),
            "{}: write {path}: {}",
            self.machine,
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Reads `path` inside the container; the error is `cat`'s message (missing, unreadable).
    pub fn read_file(&self, path: &str) -> Result<Vec<u8>, String> {
        let out = self.root(&["cat", "--", path]);
        if out.status.success() {
            Ok(out.stdout)
        } else {
            Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
        }
    }

    /// Runs `argv` as a transient service of the container's systemd with the given unit
    /// properties (`User=msp-compliance`, `NoNewPrivileges=yes`, ...) and waits for it; its
    /// stdout, stderr and exit status come back. The argv reaches the process literally: `$`
    /// is doubled because systemd would otherwise expand `${VAR}` in the command line
    /// (systemd 252 has no `--expand-environment=no`), and `%` specifiers are not expanded
    /// for transient units.
    pub fn service(&self, properties: &[&str], argv: &[&str]) -> Output {
        let full = service_argv(properties, argv);
        let full: Vec<&str> = full.iter().map(String::as_str).collect();
        self.root(&full)
    }

    /// Starts `argv` as root inside the container like `root`, without waiting for it: for a
    /// command a test expects to be cut short, such as one that reboots the container while
    /// the test waits in `reboot_and_wait`. A reboot kills every process inside;
    /// `SpawnedCommand::wait` then returns that end (a signal or a failed status), never a
    /// panic. Prefer `service_spawn` for a command that is still running when the container
    /// shuts down: systemd-shutdown is not woken when a process it did not start ends, so a
    /// command entered through nsenter can hold the shutdown up to 10 s (measured 0.1-10 s;
    /// a transient unit is stopped like any other, about 0.2 s). `systemctl reboot` itself
    /// returns as soon as the reboot is queued, so `root(&["systemctl", "reboot"])` needs no
    /// spawn.
    /// Fails the test only if nsenter cannot be started.
    pub fn root_spawn(&self, argv: &[&str]) -> SpawnedCommand {
        assert!(!argv.is_empty(), "root_spawn: empty argv");
        let mut command = self.nsenter_command(argv);
        match spawn_collecting(&mut command, None) {
            Ok(spawned) => spawned,
            Err(err) => panic!("{}: {argv:?}: {err}", self.machine),
        }
    }

    /// `service`, started like `root_spawn` without waiting for it: the channel for a command
    /// that reboots or halts the container (the agent applying such an order). When the
    /// reboot cuts it short, systemd-run may lose the bus and exit 0 all the same, printing
    /// "Failed to query unit state: Connection reset by peer" or "...: Message recipient
    /// disconnected from message bus without replying" (systemd 252): its status then says
    /// nothing about the command's, so look for the command's effects instead.
    pub fn service_spawn(&self, properties: &[&str], argv: &[&str]) -> SpawnedCommand {
        let full = service_argv(properties, argv);
        let full: Vec<&str> = full.iter().map(String::as_str).collect();
        self.root_spawn(&full)
    }

    fn root_with_stdin(&self, argv: &[&str], stdin: Option<&[u8]>) -> Output {
        assert!(!argv.is_empty(), "root: empty argv");
        let mut command = self.nsenter_command(argv);
        match run_bounded(&mut command, stdin, COMMAND_TIMEOUT) {
            Ok(out) => out,
            Err(err) => panic!("{}: {argv:?}: {err}", self.machine),
        }
    }

    /// nsenter into the namespaces of the container's PID 1, with a clean environment.
    fn nsenter_command(&self, argv: &[&str]) -> Command {
        let leader = self.leader.to_string();
        let mut command = Command::new("nsenter");
        command
            .args([
                "--target", &leader, "--mount", "--uts", "--ipc", "--net", "--pid", "--cgroup",
                "--",
            ])
            .args(argv)
            .env_clear()
            .env("PATH", CONTAINER_PATH)
            .env("LANG", "C.UTF-8");
        command
    }

    /// Empties our cgroups after the container has exited: anything still in them is killed
    /// and the sub-cgroups of the old nspawn and container are removed, so the next nspawn
    /// starts as on the first boot.
    fn reset_cgroups(&self) -> Result<(), String> {
        let deadline = Instant::now() + KILL_TIMEOUT;
        loop {
            let pids = pids_in_cgroup_trees(&self.cgroups);
            if pids.is_empty() {
                break;
            }
            if Instant::now() >= deadline {
                return Err(self.boot_error(&format!(
                    "processes {pids:?} outlived the container's reboot"
                )));
            }
            for pid in pids {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let mut below = Vec::new();
        for cgroup in &self.cgroups {
            for entry in fs::read_dir(cgroup).into_iter().flatten().flatten() {
                if entry.file_type().is_ok_and(|it| it.is_dir()) {
                    below.push(entry.path());
                }
            }
        }
        let left = remove_cgroup_trees(&below, deadline);
        if let Some((dir, err)) = left.first() {
            return Err(self.boot_error(&format!(
                "cannot remove cgroup {} before booting again: {err}",
                dir.display()
            )));
        }
        Ok(())
    }
}

/// The argv of `systemd-run` running `argv` as a transient service with `properties`.
fn service_argv(properties: &[&str], argv: &[&str]) -> Vec<String> {
    let mut full = vec![
        "systemd-run".to_string(),
        "--quiet".to_string(),
        "--wait".to_string(),
        "--pipe".to_string(),
        "--collect".to_string(),
    ];
    for property in properties {
        full.push(format!("--property={property}"));
    }
    full.push("--".to_string());
    full.extend(argv.iter().map(|it| it.replace('$', "$$")));
    full
}

impl Site {
    /// nspawn is a subreaper, so the container's PID 1 is its direct child; it is the child
    /// whose command name is `systemd` (before the exec it is still `systemd-nspawn`).
    fn wait_for_leader(&mut self, deadline: Instant) -> Result<u32, String> {
        let nspawn_pid = self.nspawn.id();
        let mut pause = Duration::from_millis(2);
        loop {
            if let Ok(Some(status)) = self.nspawn.try_wait() {
                return Err(self.boot_error(&format!("systemd-nspawn exited early ({status})")));
            }
            for child in children_of(nspawn_pid) {
                let comm = fs::read_to_string(format!("/proc/{child}/comm")).unwrap_or_default();
                if comm.trim_end() == "systemd" {
                    return Ok(child);
                }
            }
            if Instant::now() >= deadline {
                return Err(self.boot_error("no systemd under nspawn before the boot timeout"));
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(50));
        }
    }

    /// Polls `systemctl is-system-running` until running or degraded. Before dbus and PID 1's
    /// private socket are up it fails or says initializing/starting; maintenance or stopping
    /// mean the boot failed.
    fn wait_until_running(&mut self, deadline: Instant) -> Result<(), String> {
        let leader = self.leader.to_string();
        let mut pause = Duration::from_millis(10);
        loop {
            if let Ok(Some(status)) = self.nspawn.try_wait() {
                return Err(
                    self.boot_error(&format!("systemd-nspawn exited during boot ({status})"))
                );
            }
            let mut command = Command::new("nsenter");
            command
                .args([
                    "--target",
                    &leader,
                    "--mount",
                    "--uts",
                    "--ipc",
                    "--net",
                    "--pid",
                    "--cgroup",
                    "--",
                    "systemctl",
                    "is-system-running",
                ])
                .env_clear()
                .env("PATH", CONTAINER_PATH);
            let remaining = deadline.saturating_duration_since(Instant::now());
            let state = run_bounded(&mut command, None, remaining.max(Duration::from_secs(1)))
                .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_string())
                .unwrap_or_default();
            match state.as_str() {
                "running" | "degraded" => return Ok(()),
                "maintenance" | "stopping" => {
                    return Err(self.boot_error(&format!("the system is {state}")));
                }
                _ => {}
            }
            if Instant::now() >= deadline {
                return Err(self.boot_error(&format!(
                    "not running after {} s (last state {state:?})",
                    BOOT_TIMEOUT.as_secs()
                )));
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(100));
        }
    }

    /// A boot error with the end of the console log, where nspawn and systemd say what failed.
    fn boot_error(&self, what: &str) -> String {
        let log = self.console_log();
        let lines: Vec<&str> = log.lines().collect();
        let tail = lines[lines.len().saturating_sub(40)..].join("\n");
        format!("site {}: {what}; console:\n{tail}", self.machine)
    }

    /// SIGTERM to nspawn makes it halt the container in order; true if it exited in time.
    fn stop_orderly(&mut self) -> bool {
        if let Ok(Some(_)) = self.nspawn.try_wait() {
            return true;
        }
        let pid = Pid::from_raw(self.nspawn.id() as i32);
        if kill(pid, Signal::SIGTERM).is_err() {
            return matches!(self.nspawn.try_wait(), Ok(Some(_)));
        }
        wait_child(&mut self.nspawn, Instant::now() + STOP_TIMEOUT)
    }

    /// SIGKILL to everything in our cgroups (which holds the whole container and nspawn) and to
    /// nspawn itself; the kernel then ends the container's PID namespace.
    fn kill_everything(&mut self) {
        let deadline = Instant::now() + KILL_TIMEOUT;
        loop {
            let pids = pids_in_cgroup_trees(&self.cgroups);
            for pid in &pids {
                let _ = kill(Pid::from_raw(*pid), Signal::SIGKILL);
            }
            let _ = self.nspawn.kill();
            let exited = matches!(self.nspawn.try_wait(), Ok(Some(_)));
            if (exited && pids.is_empty()) || Instant::now() >= deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.nspawn.try_wait();
    }
}

impl Drop for Site {
    fn drop(&mut self) {
        let started = Instant::now();
        let orderly = self.stop_orderly();
        if !orderly {
            eprintln!(
                "site {}: no orderly halt within {} s; killing it",
                self.machine,
                STOP_TIMEOUT.as_secs()
            );
            self.kill_everything();
        }
        let left = remove_cgroup_trees(&self.cgroups, Instant::now() + KILL_TIMEOUT);
        for (dir, err) in left {
            eprintln!(
                "site {}: cannot remove cgroup {}: {err}",
                self.machine,
                dir.display()
            );
        }
        let propagate = Path::new(PROPAGATE_DIR).join(&self.machine);
        if propagate.exists()
            && let Err(err) = fs::remove_dir_all(&propagate)
        {
            eprintln!(
                "site {}: cannot remove {}: {err}",
                self.machine,
                propagate.display()
            );
        }
        let mut boot = if self.boot_time.is_zero() {
            "boot failed".to_string()
        } else {
            format!("booted in {} ms", self.boot_time.as_millis())
        };
        if let Some(copy) = &self.copy {
            boot = format!(
                "copied in {} ms, {boot}, rebooted {} times",
                copy.copy_time.as_millis(),
                self.reboots
            );
        }
        eprintln!(
            "site {}: {boot}, {} in {} ms",
            self.machine,
            if orderly { "halted" } else { "killed" },
            started.elapsed().as_millis()
        );
    }
}

/// One cgroup hierarchy nspawn places itself in: the cgroup2 one and, on hybrid hosts, the
/// named v1 `name=systemd` one.
struct Hierarchy {
    /// The directory of this process's current cgroup in the hierarchy.
    current: PathBuf,
    /// Whether it is the cgroup2 hierarchy.
    unified: bool,
}

/// The hierarchies from `/proc/self/mounts` joined with this process's place in them
/// (`/proc/self/cgroup`), so our cgroups nest under wherever the test runs.
fn cgroup_hierarchies() -> Result<Vec<Hierarchy>, String> {
    let mounts = fs::read_to_string("/proc/self/mounts")
        .map_err(|err| format!("read /proc/self/mounts: {err}"))?;
    let own = fs::read_to_string("/proc/self/cgroup")
        .map_err(|err| format!("read /proc/self/cgroup: {err}"))?;
    let own_path = |wanted: &dyn Fn(&str, &str) -> bool| {
        own.lines().find_map(|line| {
            let mut fields = line.splitn(3, ':');
            let (id, controllers, path) = (fields.next()?, fields.next()?, fields.next()?);
            wanted(id, controllers).then(|| path.trim_start_matches('/').to_string())
        })
    };
    let mut hierarchies = Vec::new();
    for line in mounts.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        let [_, mount_point, fs_type, options, ..] = fields[..] else {
            continue;
        };
        let (unified, path) = if fs_type == "cgroup2" {
            (true, own_path(&|id, _| id == "0"))
        } else if fs_type == "cgroup" && options.split(',').any(|it| it == "name=systemd") {
            (
                false,
                own_path(&|_, controllers| controllers == "name=systemd"),
            )
        } else {
            continue;
        };
        let Some(path) = path else {
            continue;
        };
        hierarchies.push(Hierarchy {
            current: Path::new(mount_point).join(path),
            unified,
        });
    }
    Ok(hierarchies)
}

/// Removes what is left of sites whose test process is gone, killed before its drop ran: on a
/// test timeout the runner's SIGTERM to the process group halts nspawn but leaves its cgroups;
/// after a SIGKILL of the test alone the container itself is still running, so it is killed.
/// The owner's pid is part of the name, `msp-site-<name>-<pid>-<n>`; a live owner (or a reused
/// pid) keeps its site.
fn sweep_stale_cgroups(parent: &Path) {
    let Ok(entries) = fs::read_dir(parent) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(machine) = name.strip_prefix("msp-site-") else {
            continue;
        };
        if owner_is_alive(machine) {
            continue;
        }
        let tree = [entry.path()];
        let deadline = Instant::now() + KILL_TIMEOUT;
        loop {
            let pids = pids_in_cgroup_trees(&tree);
            if pids.is_empty() || Instant::now() >= deadline {
                break;
            }
            for pid in pids {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        remove_cgroup_trees(&tree, deadline);
        let _ = fs::remove_dir_all(Path::new(PROPAGATE_DIR).join(machine));
    }
}

/// Removes the private copies of persistent sites whose test process is gone. Runs after
/// `sweep_stale_cgroups`, which has stopped their containers.
fn sweep_stale_copies(cache: &Path) {
    let Ok(entries) = fs::read_dir(cache) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(machine) = name.strip_prefix(COPY_PREFIX) else {
            continue;
        };
        if owner_is_alive(machine) {
            continue;
        }
        if let Err(err) = remove_private_copy(&entry.path()) {
            eprintln!(
                "cannot remove the stale site copy {}: {err}",
                entry.path().display()
            );
        }
    }
}

/// Whether the test process that named `machine` (`<name>-<pid>-<n>`) still runs. A name
/// without a pid counts as alive, so it is never swept; a reused pid keeps its leftovers too.
fn owner_is_alive(machine: &str) -> bool {
    let owner = machine
        .rsplit('-')
        .nth(1)
        .and_then(|it| it.parse::<u32>().ok());
    match owner {
        Some(owner) => Path::new(&format!("/proc/{owner}")).exists(),
        None => true,
    }
}

impl PrivateCopy {
    /// Copies `tree` to `<its parent>/msp-site-copy-<machine>/root`: on the tree's file system,
    /// so `--reflink=auto` can share blocks where the file system supports it. A failed or
    /// timed-out copy is removed before the error returns.
    fn create(tree: &Path, machine: &str) -> Result<PrivateCopy, String> {
        let cache = tree
            .parent()
            .ok_or_else(|| format!("the site tree {} has no parent", tree.display()))?;
        let dir = cache.join(format!("{COPY_PREFIX}{machine}"));
        fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .map_err(|err| format!("create {}: {err}", dir.display()))?;
        // From here on, dropping `copy` removes whatever was copied.
        let mut copy = PrivateCopy {
            dir,
            copy_time: Duration::ZERO,
        };
        let started = Instant::now();
        let mut command = Command::new("cp");
        command
            .args(["-a", "--reflink=auto", "--"])
            .arg(tree)
            .arg(copy.root());
        let out = run_bounded(&mut command, None, COPY_TIMEOUT)
            .map_err(|err| format!("copy {} for a persistent site: {err}", tree.display()))?;
        if !out.status.success() {
            return Err(format!(
                "copy {} for a persistent site failed ({}): {}",
                tree.display(),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        copy.copy_time = started.elapsed();
        Ok(copy)
    }

    fn root(&self) -> PathBuf {
        self.dir.join("root")
    }
}

impl Drop for PrivateCopy {
    fn drop(&mut self) {
        if let Err(err) = remove_private_copy(&self.dir) {
            eprintln!("cannot remove the site copy {}: {err}", self.dir.display());
        }
    }
}

/// Removes a persistent site's copy. nspawn mounts inside its own mount namespace, so nothing
/// below the copy is mounted in ours; if something is, removing it would reach into another
/// file system, so the copy is left alone.
fn remove_private_copy(dir: &Path) -> Result<(), String> {
    let mounts = fs::read_to_string("/proc/self/mounts")
        .map_err(|err| format!("read /proc/self/mounts: {err}"))?;
    let prefix = format!("{}/", dir.display());
    let mounted = mounts
        .lines()
        .filter_map(|line| line.split(' ').nth(1))
        .find(|mount_point| mount_point.starts_with(&prefix));
    if let Some(mount_point) = mounted {
        return Err(format!("{mount_point} is mounted below it"));
    }
    fs::remove_dir_all(dir).map_err(|err| err.to_string())
}

/// Starts nspawn with `args` inside our `cgroups` (one per hierarchy), its output going to
/// `console`.
fn spawn_nspawn(args: &[String], cgroups: &[PathBuf], console: File) -> Result<Child, String> {
    let console_err = console
        .try_clone()
        .map_err(|err| format!("console log: {err}"))?;
    // The files that move a process into our cgroups are opened now: the forked child only
    // has to write to them (allocation-free).
    let mut procs_files = Vec::new();
    for dir in cgroups {
        let file = OpenOptions::new()
            .write(true)
            .open(dir.join("cgroup.procs"))
            .map_err(|err| format!("open {}/cgroup.procs: {err}", dir.display()))?;
        procs_files.push(file);
    }
    let procs_fds: Vec<i32> = procs_files.iter().map(|it| it.as_raw_fd()).collect();
    let mut command = Command::new("systemd-nspawn");
    command
        .args(args)
        // A pure cgroup2 /sys/fs/cgroup inside, like NixOS.
        .env("SYSTEMD_NSPAWN_UNIFIED_HIERARCHY", "1")
        .stdin(Stdio::null())
        .stdout(console)
        .stderr(console_err);
    // SAFETY: between fork and exec the child only calls write(2) on descriptors opened
    // above, which is async-signal-safe and allocates nothing. Writing "0" to cgroup.procs
    // moves the writing process; nspawn then creates its sub-cgroups inside ours instead of
    // in the shared root.
    unsafe {
        command.pre_exec(move || {
            for fd in &procs_fds {
                let fd = BorrowedFd::borrow_raw(*fd);
                nix::unistd::write(fd, b"0").map_err(std::io::Error::from)?;
            }
            Ok(())
        });
    }
    let spawned = command.spawn();
    drop(procs_files);
    spawned.map_err(|err| format!("spawn systemd-nspawn: {err}"))
}

/// Asks the script for the tree's path, so the cache key is computed in one place.
fn tree_path() -> Result<PathBuf, String> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/site-root.sh");
    let out = Command::new(&script)
        .arg("path")
        .output()
        .map_err(|err| format!("run {}: {err}", script.display()))?;
    if !out.status.success() {
        return Err(format!(
            "{} path failed: {}",
            script.display(),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
}

/// The effective uid from `/proc/self/status` (`Uid: real effective saved fs`).
fn effective_uid() -> Option<u32> {
    let status = fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|it| it.starts_with("Uid:"))?;
    line.split_whitespace().nth(2)?.parse().ok()
}

fn find_in_path(tool: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(tool))
        .find(|it| it.is_file())
}

/// The children of `pid`, from every thread's `children` file.
fn children_of(pid: u32) -> Vec<u32> {
    let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    let mut children = Vec::new();
    for task in tasks.flatten() {
        let text = fs::read_to_string(task.path().join("children")).unwrap_or_default();
        children.extend(
            text.split_whitespace()
                .filter_map(|it| it.parse::<u32>().ok()),
        );
    }
    children
}

/// Every cgroup directory below (and including) `dir`, deepest first.
fn cgroup_dirs_deepest_first(dir: &Path, out: &mut Vec<PathBuf>) {
    if let Ok(entries) = fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|it| it.is_dir()) {
                cgroup_dirs_deepest_first(&entry.path(), out);
            }
        }
    }
    if dir.is_dir() {
        out.push(dir.to_path_buf());
    }
}

fn pids_in_cgroup_trees(roots: &[PathBuf]) -> Vec<i32> {
    let mut dirs = Vec::new();
    for root in roots {
        cgroup_dirs_deepest_first(root, &mut dirs);
    }
    let mut pids = Vec::new();
    for dir in dirs {
        let text = fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
        pids.extend(text.lines().filter_map(|it| it.trim().parse::<i32>().ok()));
    }
    pids
}

/// Removes the cgroup trees (rmdir, deepest first), retrying until `deadline` because a
/// cgroup stays busy for a moment after its last process exits. Returns what is left.
fn remove_cgroup_trees(roots: &[PathBuf], deadline: Instant) -> Vec<(PathBuf, String)> {
    loop {
        let mut left = Vec::new();
        for root in roots {
            let mut dirs = Vec::new();
            cgroup_dirs_deepest_first(root, &mut dirs);
            for dir in dirs {
                if let Err(err) = fs::remove_dir(&dir) {
                    left.push((dir, err.to_string()));
                }
            }
        }
        if left.is_empty() || Instant::now() >= deadline {
            return left;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Polls until `child` exits or `deadline`; true if it exited.
fn wait_child(child: &mut Child, deadline: Instant) -> bool {
    let mut pause = Duration::from_millis(2);
    loop {
        if let Ok(Some(_)) = child.try_wait() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(50));
    }
}

/// Runs `command` with `stdin` fed from another thread and stdout/stderr collected by two more,
/// so no pipe can fill up and block it; kills it at `timeout`.
fn run_bounded(
    command: &mut Command,
    stdin: Option<&[u8]>,
    timeout: Duration,
) -> Result<Output, String> {
    spawn_collecting(command, stdin)?.wait(timeout)
}

/// Starts `command` with `stdin` fed from another thread, stdout/stderr read by two more, and
/// a supervising thread that owns the process.
fn spawn_collecting(command: &mut Command, stdin: Option<&[u8]>) -> Result<SpawnedCommand, String> {
    command
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command.spawn().map_err(|err| format!("spawn: {err}"))?;
    if let (Some(mut pipe), Some(bytes)) = (child.stdin.take(), stdin) {
        let bytes = bytes.to_vec();
        // Dropping the pipe at the end of the thread is the end of input.
        std::thread::spawn(move || {
            let _ = pipe.write_all(&bytes);
        });
    }
    let (stdout_tx, stdout) = mpsc::channel();
    let (stderr_tx, stderr) = mpsc::channel();
    if let Some(mut pipe) = child.stdout.take() {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            let _ = pipe.read_to_end(&mut bytes);
            let _ = stdout_tx.send(bytes);
        });
    }
    if let Some(mut pipe) = child.stderr.take() {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            let _ = pipe.read_to_end(&mut bytes);
            let _ = stderr_tx.send(bytes);
        });
    }
    let abandon = Arc::new(AtomicBool::new(false));
    let (result_tx, result) = mpsc::channel();
    let abandoned = Arc::clone(&abandon);
    std::thread::spawn(move || {
        let _ = result_tx.send(supervise(child, &stdout, &stderr, &abandoned));
    });
    Ok(SpawnedCommand { result, abandon })
}

/// Waits for `child` and its output until it ends or `abandon` is set (then kills it).
///
/// While it waits, it resumes the process whenever it is stopped. A reboot or halt of the
/// container makes systemd-shutdown stop every process in the container's PID namespace
/// (`kill(-1, SIGSTOP)`), signal them, and continue them. nsenter's waiting parent sits outside
/// that namespace: it sees its child stop, stops itself to mirror it, and is never continued,
/// so it never reaps the child. systemd-shutdown then waits 90 s for that zombie (observed with
/// `sleep` under `nsenter --pid` and systemd 252). This thread is the only one that reaps
/// `child`, so the pid it signals cannot have been reused.
fn supervise(
    mut child: Child,
    stdout: &mpsc::Receiver<Vec<u8>>,
    stderr: &mpsc::Receiver<Vec<u8>>,
    abandon: &AtomicBool,
) -> Result<Output, String> {
    let mut pause = Duration::from_millis(2);
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) => {}
            Err(err) => return Err(format!("wait: {err}")),
        }
        if abandon.load(Ordering::Relaxed) {
            let _ = child.kill();
            let _ = child.wait();
            return Err("abandoned".to_string());
        }
        resume_if_stopped(child.id());
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(50));
    };
    // A process the command left behind may still hold a pipe open; the waiter's bound ends
    // that wait.
    let collect = |rx: &mpsc::Receiver<Vec<u8>>| loop {
        match rx.recv_timeout(Duration::from_millis(50)) {
            Ok(bytes) => return Ok(bytes),
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                return Err("output lost".to_string());
            }
            Err(mpsc::RecvTimeoutError::Timeout) if abandon.load(Ordering::Relaxed) => {
                return Err("output still open after the command exited".to_string());
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
        }
    };
    let stdout = collect(stdout)?;
    let stderr = collect(stderr)?;
    Ok(Output {
        status,
        stdout,
        stderr,
    })
}

/// Sends SIGCONT to `pid` if it is stopped by a signal (state `T` in `/proc/<pid>/stat`, after
/// the command name in parentheses).
fn resume_if_stopped(pid: u32) {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let state = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().next());
    if state == Some("T") {
        let _ = kill(Pid::from_raw(pid as i32), Signal::SIGCONT);
    }
}

impl SpawnedCommand {
    /// Waits up to `timeout` for the command to end and returns its output and status. A
    /// command killed by a reboot of the container ends with a signal or a failed status like
    /// any other end; `Err` means it did not end in time (it is killed then) or its output
    /// stayed open.
    pub fn wait(self, timeout: Duration) -> Result<Output, String> {
        match self.result.recv_timeout(timeout) {
            Ok(result) => result,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                self.abandon.store(true, Ordering::Relaxed);
                let detail = match self.result.recv_timeout(KILL_TIMEOUT) {
                    Ok(Err(err)) if err != "abandoned" => format!(" ({err})"),
                    _ => String::new(),
                };
                Err(format!(
                    "no end within {:.1} s; killed{detail}",
                    timeout.as_secs_f64()
                ))
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                Err("the supervising thread is gone".to_string())
            }
        }
    }
}

impl Drop for SpawnedCommand {
    fn drop(&mut self) {
        self.abandon.store(true, Ordering::Relaxed);
    }
}
