//! Proves the site container harness (`support/site.rs`) on the real systemd it boots: the
//! agent's user runs as a hardened transient service, polkit lets it start exactly the unit a
//! rule names and nothing else, the agent binary bound in from the build runs inside, and two
//! sites boot side by side without sharing files or cgroups and leave nothing behind. A
//! persistent site keeps its files and journal across a reboot from inside, and a poweroff is
//! not mistaken for a reboot.
//!
//! Gated by `MSP_REAL_TOOLS=1` (set by `.ci/run`); needs root and the tree from
//! `scripts/site-root.sh build`.

mod support {
    pub mod site;
}

use std::path::Path;
use std::time::{Duration, Instant};

use support::site::{AGENT_USER, Site, site_tests_enabled};

/// How the agent runs on a site host, minus what this test does not need: its own user and
/// the core of the module's hardening, so a polkit or privilege result here is the agent's.
const AGENT_SERVICE: &[&str] = &[
    "User=msp-compliance",
    "NoNewPrivileges=yes",
    "CapabilityBoundingSet=",
    "ProtectSystem=strict",
    "ProtectHome=yes",
    "PrivateTmp=yes",
    "SystemCallFilter=@system-service",
];

/// A template whose instances leave a trace a test can look for.
const DEMO_UNIT: &str = "\
[Unit]
Description=demo action %i

[Service]
Type=oneshot
ExecStart=/usr/bin/touch /run/demo-%i
";

/// The shape of the module's rule: for the agent's user, one named unit and verb are allowed,
/// every other systemd unit action is refused outright (not left to the default, which would
/// ask for interactive authentication).
const DEMO_RULE: &str = r#"polkit.addRule(function (action, subject) {
    if (action.id == "org.freedesktop.systemd1.manage-units" && subject.user == "msp-compliance") {
        if (action.lookup("unit") == "demo@ok.service" && action.lookup("verb") == "start") {
            return polkit.Result.YES;
        }
        return polkit.Result.NO;
    }
});
"#;

const AGENT_IN_SITE: &str = "/usr/local/bin/msp-compliance-agent";

fn boot(name: &str) -> Site {
    let agent = Path::new(env!("CARGO_BIN_EXE_msp-compliance-agent"));
    Site::boot(name, &[(agent, AGENT_IN_SITE)]).unwrap_or_else(|err| panic!("{err}"))
}

fn stderr_of(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn assert_refused(out: &std::process::Output, what: &str) {
    let stderr = stderr_of(out);
    assert!(
        !out.status.success()
            && (stderr.contains("Access denied") || stderr.contains("Interactive authentication")),
        "{what} should be refused by polkit, got {} / {stderr}",
        out.status
    );
}

#[test]
fn agent_user_is_held_to_its_polkit_rule() {
    if !site_tests_enabled("agent_user_is_held_to_its_polkit_rule") {
        return;
    }
    let site = boot("smoke");
    eprintln!(
        "site {} booted in {} ms",
        site.machine(),
        site.boot_time().as_millis()
    );
    // The tree's own settings, and nspawn in our cgroup rather than the shared root.
    assert_eq!(site.root_ok(&["hostname"]).trim(), "site");
    let leader_cgroup = std::fs::read_to_string(format!("/proc/{}/cgroup", site.leader()))
        .expect("read the leader's cgroup");
    let own_cgroup = format!("/msp-site-{}/payload", site.machine());
    assert!(
        leader_cgroup
            .lines()
            .any(|it| it.starts_with("0::") && it.contains(&own_cgroup)),
        "PID 1 of the site is not under {own_cgroup}: {leader_cgroup}"
    );

    // The service channel applies the unit's user and hardening.
    let agent_uid = site.root_ok(&["id", "-u", AGENT_USER]).trim().to_string();
    assert_ne!(agent_uid, "0");
    let out = site.service(AGENT_SERVICE, &["id", "-u"]);
    assert!(
        out.status.success(),
        "id -u as the agent: {}",
        stderr_of(&out)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), agent_uid);
    let out = site.service(
        AGENT_SERVICE,
        &["grep", "-E", "^(CapEff|NoNewPrivs):", "/proc/self/status"],
    );
    let status = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        status.contains("CapEff:\t0000000000000000") && status.contains("NoNewPrivs:\t1"),
        "hardening not applied: {status} {}",
        stderr_of(&out)
    );
    // Arguments arrive literally: no environment or specifier expansion by systemd.
    let out = site.service(
        AGENT_SERVICE,
        &["printf", "%s|", "$HOME", "${HOME}", "%n", "$$"],
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "$HOME|${HOME}|%n|$$|");

    site.write_file(
        "/etc/systemd/system/demo@.service",
        DEMO_UNIT.as_bytes(),
        0o644,
    );
    site.write_file(
        "/etc/polkit-1/rules.d/50-msp-compliance-demo.rules",
        DEMO_RULE.as_bytes(),
        0o644,
    );
    assert_eq!(
        site.root_ok(&[
            "stat",
            "-c",
            "%a %U",
            "/etc/polkit-1/rules.d/50-msp-compliance-demo.rules"
        ])
        .trim(),
        "644 root"
    );
    site.root_ok(&["systemctl", "daemon-reload"]);

    // Allowed: exactly demo@ok.service, verb start.
    let out = site.service(AGENT_SERVICE, &["systemctl", "start", "demo@ok.service"]);
    assert!(
        out.status.success(),
        "the agent may start demo@ok.service: {}",
        stderr_of(&out)
    );
    assert!(
        site.read_file("/run/demo-ok").is_ok(),
        "demo@ok.service did not run"
    );

    // Refused: another instance, another verb on the allowed unit, and a unit outside the rule.
    let out = site.service(AGENT_SERVICE, &["systemctl", "start", "demo@other.service"]);
    assert_refused(&out, "start demo@other.service");
    assert!(
        site.read_file("/run/demo-other").is_err(),
        "demo@other.service ran"
    );
    let out = site.service(AGENT_SERVICE, &["systemctl", "restart", "demo@ok.service"]);
    assert_refused(&out, "restart demo@ok.service");
    let out = site.service(AGENT_SERVICE, &["systemctl", "stop", "dbus.service"]);
    assert_refused(&out, "stop dbus.service");
    assert_eq!(
        site.root_ok(&["systemctl", "is-active", "dbus.service"])
            .trim(),
        "active"
    );

    // The agent built by this workspace runs inside, under the same hardening.
    let out = site.service(AGENT_SERVICE, &[AGENT_IN_SITE, "--version"]);
    assert!(out.status.success(), "agent --version: {}", stderr_of(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("msp-compliance-agent {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn two_sites_boot_side_by_side_and_leave_nothing_behind() {
    if !site_tests_enabled("two_sites_boot_side_by_side_and_leave_nothing_behind") {
        return;
    }
    let tree = Site::available().expect("checked by site_tests_enabled");
    let (site_a, site_b) = std::thread::scope(|scope| {
        let a = scope.spawn(|| boot("pair-a"));
        let b = scope.spawn(|| boot("pair-b"));
        (
            a.join().expect("boot pair-a"),
            b.join().expect("boot pair-b"),
        )
    });
    eprintln!(
        "booted in parallel: {} in {} ms, {} in {} ms",
        site_a.machine(),
        site_a.boot_time().as_millis(),
        site_b.machine(),
        site_b.boot_time().as_millis()
    );
    assert_ne!(site_a.leader(), site_b.leader());
    for site in [&site_a, &site_b] {
        let state = site.root(&["systemctl", "is-system-running"]);
        let state = String::from_utf8_lossy(&state.stdout).trim().to_string();
        assert!(
            state == "running" || state == "degraded",
            "{}: {state}",
            site.machine()
        );
    }

    // Each site writes to its own overlay and runs its own units: nothing reaches the other
    // site or the shared tree.
    site_a.write_file("/etc/only-in-a", b"a\n", 0o600);
    assert_eq!(
        site_a.read_file("/etc/only-in-a").as_deref(),
        Ok(&b"a\n"[..])
    );
    assert!(site_b.read_file("/etc/only-in-a").is_err());
    assert!(!tree.join("etc/only-in-a").exists());
    site_b.root_ok(&["systemctl", "stop", "systemd-logind.service"]);
    assert_eq!(
        site_a
            .root_ok(&["systemctl", "is-active", "systemd-logind.service"])
            .trim(),
        "active"
    );

    let leftovers: Vec<_> = [&site_a, &site_b]
        .iter()
        .flat_map(|site| {
            let mut paths = site.cgroup_dirs();
            paths.push(Path::new("/run/systemd/nspawn/propagate").join(site.machine()));
            paths
        })
        .collect();
    assert!(leftovers.iter().all(|it| it.exists()), "{leftovers:?}");
    drop(site_a);
    drop(site_b);
    let left: Vec<_> = leftovers.iter().filter(|it| it.exists()).collect();
    assert!(left.is_empty(), "left behind after drop: {left:?}");
}

/// From `systemctl reboot` inside to nspawn's exit: measured at about 0.15 s.
const REBOOT_TIMEOUT: Duration = Duration::from_secs(60);

fn boot_id(site: &Site) -> String {
    let bytes = site
        .read_file("/proc/sys/kernel/random/boot_id")
        .unwrap_or_else(|err| panic!("read boot_id: {err}"));
    let boot_id = String::from_utf8_lossy(&bytes).trim().to_string();
    assert_eq!(boot_id.len(), 36, "boot id {boot_id:?}");
    boot_id
}

#[test]
fn persistent_site_keeps_its_files_and_journal_across_a_reboot() {
    if !site_tests_enabled("persistent_site_keeps_its_files_and_journal_across_a_reboot") {
        return;
    }
    let tree = Site::available().expect("checked by site_tests_enabled");
    let mut site = Site::boot_persistent("reboot", &[]).unwrap_or_else(|err| panic!("{err}"));
    let copy = site
        .persistent_root()
        .expect("a persistent site has a copy");
    let copy_time = site.copy_time().expect("a persistent site has a copy");
    eprintln!(
        "site {}: tree copied in {} ms, booted in {} ms",
        site.machine(),
        copy_time.as_millis(),
        site.boot_time().as_millis()
    );
    assert_ne!(copy, tree);
    assert!(copy.join("usr/lib/systemd/systemd").exists());

    let marker = "/var/lib/msp-site-reboot-marker";
    site.write_file(marker, b"written before the reboot\n", 0o600);
    let first_boot = boot_id(&site);
    let first_leader = site.leader();

    // A service still running when the reboot comes is stopped with the container; waiting
    // for it reports that end instead of failing the harness.
    let cut_short = site.service_spawn(&[], &["sleep", "600"]);
    // `systemctl reboot` asks logind, which can go down before it answers; systemctl then
    // falls back to PID 1 (seen as "Call to Reboot failed: Connection reset by peer" with exit
    // status 0). Whether the reboot happened is what `reboot_and_wait` checks.
    let out = site.root(&["systemctl", "reboot"]);
    if !out.status.success() {
        eprintln!("systemctl reboot: {} {}", out.status, stderr_of(&out));
    }
    let asked = Instant::now();
    let took = site
        .reboot_and_wait(REBOOT_TIMEOUT)
        .unwrap_or_else(|err| panic!("{err}"));
    eprintln!(
        "site {}: nspawn exited {} ms after `systemctl reboot` returned, running again {} ms \
         after that",
        site.machine(),
        asked.elapsed().saturating_sub(took).as_millis(),
        took.as_millis()
    );
    // `sleep 600` cannot have finished by itself. Either systemd-run saw its unit fail, or it
    // lost the bus in the reboot and says so, but exits 0 (systemd 252).
    let out = cut_short
        .wait(Duration::from_secs(10))
        .expect("the reboot ended the command");
    assert!(
        !out.status.success() || stderr_of(&out).contains("Failed to query unit state"),
        "sleep outlived the reboot: {out:?}"
    );

    assert_eq!(site.reboots(), 1);
    assert_ne!(site.leader(), first_leader);
    let state = site.root(&["systemctl", "is-system-running"]);
    let state = String::from_utf8_lossy(&state.stdout).trim().to_string();
    assert!(state == "running" || state == "degraded", "{state}");
    assert_eq!(
        site.read_file(marker).as_deref(),
        Ok(&b"written before the reboot\n"[..])
    );
    let second_boot = boot_id(&site);
    assert_ne!(first_boot, second_boot);

    // The journal on the copy holds both boots, in order (`--list-boots` prints the ids
    // without dashes, oldest first).
    let boots = site.root_ok(&["journalctl", "--list-boots", "--no-pager"]);
    let ids: Vec<&str> = boots
        .lines()
        .filter_map(|line| line.split_whitespace().nth(1))
        .filter(|it| it.len() == 32 && it.bytes().all(|byte| byte.is_ascii_hexdigit()))
        .collect();
    assert_eq!(
        ids,
        [first_boot.replace('-', ""), second_boot.replace('-', "")],
        "{boots}"
    );
    // The cached tree is untouched; the copy holds the marker.
    assert!(!tree.join(marker.trim_start_matches('/')).exists());
    assert!(copy.join(marker.trim_start_matches('/')).exists());

    let copy_dir = copy
        .parent()
        .expect("the copy sits in its own directory")
        .to_path_buf();
    let cgroups = site.cgroup_dirs();
    drop(site);
    assert!(!copy_dir.exists(), "{} left behind", copy_dir.display());
    let left: Vec<_> = cgroups.iter().filter(|it| it.exists()).collect();
    assert!(left.is_empty(), "cgroups left behind: {left:?}");
}

#[test]
fn a_poweroff_or_an_overlay_site_is_not_a_reboot() {
    if !site_tests_enabled("a_poweroff_or_an_overlay_site_is_not_a_reboot") {
        return;
    }
    // An overlay site would come back empty: refused at once, without waiting.
    let mut overlay = boot("overlay");
    let err = overlay
        .reboot_and_wait(REBOOT_TIMEOUT)
        .expect_err("an overlay site cannot reboot");
    assert!(err.contains("persistent site"), "{err}");
    drop(overlay);

    let mut site = Site::boot_persistent("poweroff", &[]).unwrap_or_else(|err| panic!("{err}"));
    let copy = site
        .persistent_root()
        .expect("a persistent site has a copy");
    // A command entered through nsenter and still running at the shutdown: systemd-shutdown
    // stops it, and nsenter's waiting parent outside the container stops itself to match.
    // The harness resumes it, so the shutdown waits at most 10 s for the command instead of
    // hanging 90 s until systemd-shutdown gives up.
    let cut_short = site.root_spawn(&["sleep", "600"]);
    let out = site.root(&["systemctl", "poweroff"]);
    if !out.status.success() {
        eprintln!("systemctl poweroff: {} {}", out.status, stderr_of(&out));
    }
    let asked = Instant::now();
    let err = site
        .reboot_and_wait(Duration::from_secs(45))
        .expect_err("a poweroff is not a reboot");
    eprintln!(
        "site {}: nspawn exited {} ms after `systemctl poweroff` returned",
        site.machine(),
        asked.elapsed().as_millis()
    );
    // nspawn's status and the container's own last words are in the error.
    assert!(err.contains("exited with exit status: 0"), "{err}");
    assert!(err.contains("console:") && err.contains("Power"), "{err}");
    assert_eq!(site.reboots(), 0);
    let out = cut_short
        .wait(Duration::from_secs(10))
        .expect("the poweroff ended the command");
    assert!(
        !out.status.success(),
        "sleep outlived the poweroff: {out:?}"
    );
    drop(site);
    assert!(!copy.exists(), "{} left behind", copy.display());
}
