//! Healing against a real systemd: a Debian site booted with `systemd-nspawn`
//! (`support/site.rs`), the agent installed as the unprivileged `msp-compliance` user under the
//! hardening the NixOS module renders, and the heal and probe units and the polkit rule the
//! module renders, taken from its golden files (`nix/tests/golden/full`) with Nix store paths
//! mapped to Debian ones. Orders are signed here and applied with `order apply`, through every
//! guardrail, exactly as the daemon runs them.
//!
//! Scenarios: a stopped unit restarted and verified (timed); a unit that dies after starting
//! rolled back and escalated; a flushed firewall restored; polkit refusing everything else;
//! a disruptive heal outside the window deferred; dry run; a heal unit that returns garbage
//! or hangs; the agent killed mid-heal and the heal finished on restart; a generation switch
//! that fails rolled back on a fake system profile (the real switch runs only on NixOS).

mod support {
    pub mod site;
}

use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant};

use base64::Engine as _;
use msp_compliance_agent::evidence::keys;
use msp_compliance_protocol::dsse::Envelope;
use msp_compliance_protocol::order::Order;
use serde_json::{Value, json};
use support::site::{AGENT_USER, Site, site_tests_enabled};

const AGENT: &str = "/usr/local/bin/msp-compliance-agent";
const CONFIG: &str = "/etc/msp-compliance/config.json";
const ORDERS: &str = "/var/lib/msp-compliance-orders";

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap()
}

fn golden(path: &str) -> String {
    std::fs::read_to_string(repo().join("nix/tests/golden/full").join(path))
        .unwrap_or_else(|err| panic!("golden {path}: {err}"))
}

/// A unit file rendered by the module, for Debian: Nix store paths become the paths the
/// programs have here, and the store-only environment (PATH, TZDIR, locales) is dropped.
fn debianize(unit: &str) -> String {
    unit.lines()
        .filter(|line| !line.starts_with("Environment="))
        .map(|line| {
            line.split(' ')
                .map(|word| {
                    let Some(rest) = word.strip_prefix("ExecStart=").or(Some(word)) else {
                        return word.to_string();
                    };
                    let prefix = if word.starts_with("ExecStart=") {
                        "ExecStart="
                    } else {
                        ""
                    };
                    if !rest.starts_with("/nix/store/") {
                        return word.to_string();
                    }
                    let program = rest.rsplit('/').next().unwrap();
                    let mapped = if program == "msp-compliance-agent" {
                        AGENT.to_string()
                    } else if program.ends_with("-msp-compliance-probe") {
                        "/usr/local/lib/msp-compliance-probe".to_string()
                    } else if program == "kill" {
                        "/bin/kill".to_string()
                    } else {
                        format!("/usr/sbin/{program}")
                    };
                    format!("{prefix}{mapped}")
                })
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect::<Vec<_>>()
        .join("\n")
        + "\n"
}

/// The module's agent unit, as `systemd-run` properties: identity, sandbox and state, without
/// what only the long-running service needs (start command, restart policy, credentials).
fn agent_properties() -> Vec<String> {
    let skip = [
        "ExecStart",
        "ExecReload",
        "Environment",
        "LoadCredential",
        "Restart",
        "RestartSec",
        "RestartPreventExitStatus",
        "Type",
        "TimeoutStopSec",
        "SyslogIdentifier",
    ];
    let unit = golden("units/msp-compliance.service");
    let mut service = false;
    let mut properties = Vec::new();
    for line in unit.lines() {
        if line.starts_with('[') {
            service = line == "[Service]";
            continue;
        }
        let Some((key, _)) = line.split_once('=') else {
            continue;
        };
        if service && !skip.contains(&key) {
            properties.push(line.to_string());
        }
    }
    assert!(properties.iter().any(|it| it == "User=msp-compliance"));
    assert!(properties.iter().any(|it| it == "ProtectSystem=strict"));
    properties
}

/// The module's probe runner (`probeRunner` in modules/msp-compliance.nix), with Debian paths.
const PROBE_RUNNER: &str = r#"#!/bin/sh
set -eu
name=$1
shift
tmp=$(mktemp -d /run/msp-compliance/probe/.run.XXXXXXXX)
status=0
"$@" >"$tmp/stdout" 2>"$tmp/stderr" || status=$?
printf '%s\n' "$status" >"$tmp/exit"
for part in stdout stderr exit; do
  mv -f "$tmp/$part" "/run/msp-compliance/probe/$name.$part"
done
rmdir "$tmp"
"#;

/// What this Debian host declares (an administrator's declared.json): the firewall of the
/// NixOS layout with port 22, and what may be healed.
fn declared() -> Value {
    json!({
        "version": 1,
        "firewall": { "enable": true, "backend": "nftables", "allowedTCPPorts": [22], "allowedUDPPorts": [], "trustedInterfaces": ["lo"] },
        "journald": { "storage": "persistent" },
        "audit": { "auditd": false, "enable": "false" },
        "backups": [],
        "luks": {},
        "swap": [],
        "tmpOnTmpfs": false,
        "autoUpgrade": { "enable": false },
        "clamav": { "daemon": false, "updater": false },
        "timeSync": { "timesyncd": false },
        "heal": {
            "restartableUnits": ["pacs-bridge.service", "hl7-listener.service"],
            "firewallUnit": "nftables.service",
            "avUpdateUnit": null,
            "backupUnits": {}
        }
    })
}

/// The module's heal and probe units (Debian paths), polkit rule and runtime directories, from
/// its golden rendering of the `full` case.
fn install_module_units(site: &Site) {
    site.write_file(
        "/etc/systemd/system/msp-compliance-heal@.service",
        debianize(&golden("units/msp-compliance-heal@.service")).as_bytes(),
        0o644,
    );
    site.write_file(
        "/etc/systemd/system/msp-compliance-probe@.service",
        debianize(&golden("units/msp-compliance-probe@.service")).as_bytes(),
        0o644,
    );
    for part in std::fs::read_dir(
        repo().join("nix/tests/golden/full/units/msp-compliance-probe@nft-ruleset.service.d"),
    )
    .unwrap()
    {
        let part = part.unwrap();
        let name = part.file_name().to_string_lossy().into_owned();
        let text = std::fs::read_to_string(part.path()).unwrap();
        site.write_file(
            &format!("/etc/systemd/system/msp-compliance-probe@nft-ruleset.service.d/{name}"),
            debianize(&text).as_bytes(),
            0o644,
        );
    }
    site.write_file(
        "/usr/local/lib/msp-compliance-probe",
        PROBE_RUNNER.as_bytes(),
        0o755,
    );
    site.write_file(
        "/etc/polkit-1/rules.d/50-msp-compliance.rules",
        golden("polkit/10-nixos.rules").as_bytes(),
        0o644,
    );
    site.write_file(
        "/etc/tmpfiles.d/msp-compliance.conf",
        golden("tmpfiles.conf").as_bytes(),
        0o644,
    );
}

struct Fixture {
    site: Site,
    order_key: ed25519_dalek::SigningKey,
    properties: Vec<String>,
    orders: u32,
}

impl Fixture {
    fn boot() -> Fixture {
        let agent = Path::new(env!("CARGO_BIN_EXE_msp-compliance-agent"));
        let site = Site::boot("heal", &[(agent, AGENT)]).expect("boot the site");
        let dir = tempfile::tempdir().unwrap();
        keys::keygen(&dir.path().join("order.key")).unwrap();
        let order_key = keys::load_signing_key(&dir.path().join("order.key")).unwrap();
        let order_pub = std::fs::read(dir.path().join("order.key.pub")).unwrap();

        install_module_units(&site);

        // Two clinic services: one healthy when started, one that dies a second after starting.
        site.write_file(
            "/etc/systemd/system/pacs-bridge.service",
            b"[Unit]\nDescription=PACS bridge (test)\n[Service]\nExecStart=/bin/sleep infinity\n",
            0o644,
        );
        site.write_file(
            "/etc/systemd/system/hl7-listener.service",
            b"[Unit]\nDescription=HL7 listener that crashes (test)\n[Service]\nExecStart=/bin/sh -c 'sleep 1; exit 3'\n",
            0o644,
        );
        // The generation's firewall: the NixOS `nixos-fw` layout for port 22.
        let ruleset = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("tests/fixtures/firewall/sources/nixos-22.nft"),
        )
        .unwrap();
        site.write_file(
            "/etc/nftables.conf",
            format!("flush ruleset\n{ruleset}").as_bytes(),
            0o644,
        );
        site.write_file(
            "/etc/msp-compliance/declared.json",
            declared().to_string().as_bytes(),
            0o644,
        );
        site.write_file("/etc/msp-compliance/order.key.pub", &order_pub, 0o644);
        let config = json!({
            "site_id": "clinic-a",
            "host_id": "site",
            "state_dir": "/var/lib/msp-compliance",
            "privileged_facts": "units",
            "evidence": { "signing_key_file": "/var/lib/msp-compliance/evidence.key" },
            "orders": {
                "order_public_key_files": ["/etc/msp-compliance/order.key.pub"],
                "maintenance_window": closed_window(),
                "timezone": "UTC",
                "max_actions_per_hour": 1000,
                "cooldown_secs": { "restart-unit": 1, "restore-firewall": 1 }
            },
            "heal": { "settle_secs": 2, "unit_timeout_secs": 10 }
        });
        site.write_file(CONFIG, config.to_string().as_bytes(), 0o644);

        site.root_ok(&["systemctl", "daemon-reload"]);
        site.root_ok(&[
            "systemd-tmpfiles",
            "--create",
            "/etc/tmpfiles.d/msp-compliance.conf",
        ]);
        site.root_ok(&["systemctl", "restart", "nftables.service"]);
        site.root_ok(&[
            "install",
            "-d",
            "-o",
            AGENT_USER,
            "-g",
            AGENT_USER,
            "-m",
            "0700",
            "/var/lib/msp-compliance",
            ORDERS,
        ]);
        site.root_ok(&[
            "runuser",
            "-u",
            AGENT_USER,
            "--",
            AGENT,
            "keygen",
            "--output",
            "/var/lib/msp-compliance/evidence.key",
        ]);
        let properties = agent_properties();
        Fixture {
            site,
            order_key,
            properties,
            orders: 0,
        }
    }

    /// Runs the agent as its service user under the module's hardening.
    fn agent(&self, args: &[&str]) -> Output {
        let properties: Vec<&str> = self.properties.iter().map(String::as_str).collect();
        let mut argv = vec![AGENT];
        argv.extend_from_slice(args);
        self.site.service(&properties, &argv)
    }

    /// Signs an order, puts it on the site, applies it; returns the result and the exit status.
    fn apply(&mut self, action: &str, params: Value, dry_run: bool) -> (Value, i32, Duration) {
        self.orders += 1;
        let id = format!("o-{}-{action}", self.orders);
        let now = jiff::Timestamp::now();
        let mut nonce = [0u8; 16];
        getrandom::fill(&mut nonce).unwrap();
        let envelope: Envelope = Order {
            v: 1,
            order_id: id.clone(),
            nonce: hex::encode(nonce),
            site_id: "clinic-a".to_string(),
            host_id: "site".to_string(),
            action: action.to_string(),
            params,
            issued_at: now,
            expires_at: now + jiff::SignedDuration::from_mins(10),
            disruptive: false,
            dry_run,
        }
        .sign(&self.order_key)
        .unwrap();
        let path = format!("{ORDERS}/{id}.json");
        self.site
            .write_file(&path, &serde_json::to_vec(&envelope).unwrap(), 0o644);
        let started = Instant::now();
        let out = self.agent(&["order", "apply", "--config", CONFIG, &path]);
        let took = started.elapsed();
        let result: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|err| {
            panic!(
                "order {id}: no result ({err}): {}\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )
        });
        (result, out.status.code().unwrap_or(-1), took)
    }

    /// The evidence records' predicates, from the agent's own export.
    fn evidence(&self) -> Vec<Value> {
        predicates(&self.agent(&["evidence", "export", "--config", CONFIG]))
    }

    /// `kind:event` of the records about one heal, in chain order.
    fn heal_events(&self, heal_id: &str) -> Vec<String> {
        events_of(&self.evidence(), heal_id)
    }

    /// The record of one heal step.
    fn step(&self, heal_id: &str, event: &str) -> Value {
        self.evidence()
            .into_iter()
            .find(|it| it["body"]["heal_id"] == heal_id && it["body"]["event"] == event)
            .unwrap_or_else(|| panic!("no {event} record for {heal_id}"))
    }

    fn active(&self, unit: &str) -> String {
        let out = self.site.root(&["systemctl", "is-active", unit]);
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    fn as_agent_user(&self, argv: &[&str]) -> Output {
        let mut full = vec!["runuser", "-u", AGENT_USER, "--"];
        full.extend_from_slice(argv);
        self.site.root(&full)
    }
}

/// The predicates of an `evidence export` (JSON Lines of DSSE envelopes).
fn predicates(export: &Output) -> Vec<Value> {
    assert!(export.status.success(), "{}", stderr(export));
    String::from_utf8_lossy(&export.stdout)
        .lines()
        .map(|line| {
            let envelope: Value = serde_json::from_str(line).unwrap();
            let payload = base64::engine::general_purpose::STANDARD
                .decode(envelope["payload"].as_str().unwrap())
                .unwrap();
            serde_json::from_slice::<Value>(&payload).unwrap()["predicate"].clone()
        })
        .collect()
}

/// `kind:event` of the records about one heal, in chain order.
fn events_of(predicates: &[Value], heal_id: &str) -> Vec<String> {
    predicates
        .iter()
        .filter(|it| it["body"]["heal_id"] == heal_id)
        .map(|it| match it["body"]["event"].as_str() {
            Some(event) => format!("{}:{event}", it["kind"].as_str().unwrap()),
            None => it["kind"].as_str().unwrap().to_string(),
        })
        .collect()
}

/// A one-minute window twelve hours from now: always closed during the test.
fn closed_window() -> String {
    let now = jiff::tz::TimeZone::UTC.to_datetime(jiff::Timestamp::now());
    let hour = (now.hour() + 12) % 24;
    format!("{hour:02}:00-{hour:02}:01")
}

/// Where a symlink in the site points (a profile link, `/run/current-system`).
fn readlink(site: &Site, path: &str) -> String {
    site.root_ok(&["readlink", path]).trim().to_string()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn heals_against_a_real_systemd() {
    if !site_tests_enabled("heals_against_a_real_systemd") {
        return;
    }
    let mut fx = Fixture::boot();
    assert_eq!(fx.active("pacs-bridge.service"), "inactive");
    let uid = fx.agent(&["--version"]);
    assert!(
        uid.status.success(),
        "the agent runs under the module's hardening: {}",
        stderr(&uid)
    );

    // 1. A stopped unit is restarted and verified; timed from the decision (the order applied)
    //    to the verified heal, which includes the 2 s settle time of the health probe.
    let mut times = Vec::new();
    // `scripts/bench-heal.sh` asks for more rounds; the figure is printed, never asserted.
    let rounds: usize = std::env::var("MSP_HEAL_ROUNDS")
        .ok()
        .and_then(|it| it.parse().ok())
        .unwrap_or(5)
        .clamp(1, 200);
    for round in 0..rounds {
        let (result, code, took) = fx.apply(
            "restart-unit",
            json!({"unit": "pacs-bridge.service"}),
            false,
        );
        assert_eq!(code, 0, "round {round}: {result:#}");
        assert_eq!(result["outcome"], "executed", "{result:#}");
        assert_eq!(fx.active("pacs-bridge.service"), "active");
        let id = result["order_id"].as_str().unwrap().to_string();
        assert_eq!(
            fx.heal_events(&id),
            [
                "heal:drift_detected",
                "heal:attempted",
                "heal:acted",
                "heal:verified"
            ]
        );
        times.push(took);
        fx.site
            .root_ok(&["systemctl", "stop", "pacs-bridge.service"]);
        std::thread::sleep(Duration::from_millis(1100)); // the runbook's cooldown (1 s here)
    }
    times.sort();
    // Nearest rank: the smallest time at least 95 % of the rounds did not exceed.
    let p95 = times[(times.len() * 95).div_ceil(100) - 1];
    eprintln!(
        "decision -> verified heal of a unit restart ({rounds} rounds, settle 2 s included): median {:?}, p95 {p95:?}, min {:?}, max {:?}",
        times[times.len() / 2],
        times[0],
        times[times.len() - 1]
    );

    // A running unit is not restarted: no drift, nothing changed.
    fx.site
        .root_ok(&["systemctl", "start", "pacs-bridge.service"]);
    let before = fx.site.root_ok(&[
        "systemctl",
        "show",
        "--property=InvocationID",
        "pacs-bridge.service",
    ]);
    let (result, code, _) = fx.apply(
        "restart-unit",
        json!({"unit": "pacs-bridge.service"}),
        false,
    );
    assert_eq!(code, 0, "{result:#}");
    assert!(
        result["detail"].as_str().unwrap().contains("no drift"),
        "{result:#}"
    );
    let after = fx.site.root_ok(&[
        "systemctl",
        "show",
        "--property=InvocationID",
        "pacs-bridge.service",
    ]);
    assert_eq!(before, after, "the running unit was not restarted");
    fx.site
        .root_ok(&["systemctl", "stop", "pacs-bridge.service"]);
    std::thread::sleep(Duration::from_millis(1100));

    // 2. A unit that dies a second after starting: verification fails after settling, the
    //    rollback puts it back (stopped), the re-check is recorded and the case escalated,
    //    all within this one run.
    let (result, code, took) = fx.apply(
        "restart-unit",
        json!({"unit": "hl7-listener.service"}),
        false,
    );
    assert_eq!(code, 1, "{result:#}");
    assert_eq!(result["outcome"], "failed");
    assert!(
        result["detail"].as_str().unwrap().contains("rolled back"),
        "{result:#}"
    );
    let id = result["order_id"].as_str().unwrap().to_string();
    assert_eq!(
        fx.heal_events(&id),
        [
            "heal:drift_detected",
            "heal:attempted",
            "heal:acted",
            "heal:verification_failed",
            "rollback:rolled_back",
            "escalation"
        ]
    );
    assert_ne!(fx.active("hl7-listener.service"), "active");
    eprintln!("failed verification -> rollback -> escalation in one run: {took:?}");
    std::thread::sleep(Duration::from_millis(1100));

    // 3. A flushed firewall is restored from the generation and verified by the firewall check.
    fx.site.root_ok(&["nft", "flush", "ruleset"]);
    let (result, code, _) = fx.apply("restore-firewall", json!({}), false);
    assert_eq!(code, 0, "{result:#}");
    assert!(
        fx.site
            .root_ok(&["nft", "list", "tables"])
            .contains("nixos-fw")
    );
    let id = result["order_id"].as_str().unwrap().to_string();
    let verified = fx.step(&id, "verified");
    assert_eq!(
        verified["body"]["post_state"]["observed"]["status"], "pass",
        "{verified:#}"
    );
    let drift = fx.step(&id, "drift_detected");
    assert_eq!(
        drift["body"]["pre_state"]["observed"]["status"], "fail",
        "{drift:#}"
    );
    // The firewall already restored: nothing to do the second time.
    std::thread::sleep(Duration::from_millis(1100));
    let (result, _, _) = fx.apply("restore-firewall", json!({}), false);
    assert!(
        result["detail"].as_str().unwrap().contains("no drift"),
        "{result:#}"
    );

    // 4. polkit: the agent user may start exactly the listed heal and probe units.
    for (argv, what) in [
        (
            vec![
                "systemctl",
                "--no-ask-password",
                "start",
                "nftables.service",
            ],
            "another unit",
        ),
        (
            vec!["systemctl", "--no-ask-password", "stop", "dbus.service"],
            "stop",
        ),
        (
            vec![
                "systemctl",
                "--no-ask-password",
                "restart",
                "msp-compliance-heal@restart-pacs-bridge.service",
            ],
            "verb restart on a heal unit",
        ),
        (
            vec![
                "systemctl",
                "--no-ask-password",
                "start",
                "msp-compliance-heal@restart-sshd.service",
            ],
            "an undeclared heal instance",
        ),
        (
            vec![
                "systemctl",
                "--no-ask-password",
                "start",
                "msp-compliance-heal@switch-generation-012.service",
            ],
            "a generation with a leading zero",
        ),
    ] {
        let out = fx.as_agent_user(&argv);
        assert!(!out.status.success(), "{what} was allowed");
        assert!(
            stderr(&out).contains("Access denied")
                || stderr(&out).contains("authentication required"),
            "{what}: {}",
            stderr(&out)
        );
    }
    // Even root starting an instance the generation does not declare gets a refusal from the
    // helper itself (exit 2), and nothing runs.
    let out = fx.site.root(&[
        "systemctl",
        "start",
        "msp-compliance-heal@restart-ssh.service",
    ]);
    assert!(!out.status.success());
    let status = fx.site.root_ok(&[
        "systemctl",
        "show",
        "--property=ExecMainStatus",
        "msp-compliance-heal@restart-ssh.service",
    ]);
    assert_eq!(status.trim(), "ExecMainStatus=2");

    // 5. A disruptive heal outside the maintenance window is deferred; nothing runs.
    let (result, code, _) = fx.apply("reactivate-generation", json!({}), false);
    assert_eq!(code, 1, "{result:#}");
    assert_eq!(result["outcome"], "deferred", "{result:#}");
    assert_eq!(result["code"], "outside_window");
    assert!(
        fx.site
            .read_file("/run/msp-compliance/heal/reactivate-generation.json")
            .is_err()
    );

    // 6. Dry run: says what it would do, changes nothing.
    let (result, code, _) = fx.apply("restart-unit", json!({"unit": "pacs-bridge.service"}), true);
    assert_eq!(code, 0, "{result:#}");
    assert_eq!(result["outcome"], "dry_run");
    let detail = result["detail"].as_str().unwrap();
    assert!(
        detail.contains("would") && detail.contains("nothing was changed"),
        "{detail}"
    );
    assert_eq!(fx.active("pacs-bridge.service"), "inactive");

    // 7. A heal unit that writes garbage, then one that hangs: judged by the state they leave
    //    (pacs-bridge still stopped), rolled back and escalated, never a success.
    let dropin =
        "/etc/systemd/system/msp-compliance-heal@restart-pacs-bridge.service.d/broken.conf";
    for (exec_start, error) in [
        (
            "/bin/sh -c 'echo not-json > /run/msp-compliance/heal/restart-pacs-bridge.json'",
            "not valid",
        ),
        ("/bin/sleep 600", "did not finish"),
    ] {
        fx.site.write_file(
            dropin,
            format!("[Service]\nExecStart=\nExecStart={exec_start}\n").as_bytes(),
            0o644,
        );
        fx.site.root_ok(&["systemctl", "daemon-reload"]);
        std::thread::sleep(Duration::from_millis(1100));
        let (result, code, took) = fx.apply(
            "restart-unit",
            json!({"unit": "pacs-bridge.service"}),
            false,
        );
        assert_eq!(code, 1, "{result:#}");
        let id = result["order_id"].as_str().unwrap().to_string();
        let acted = fx.step(&id, "acted");
        assert!(
            acted["body"]["error"].as_str().unwrap().contains(error),
            "{acted:#}"
        );
        assert_eq!(fx.heal_events(&id).last().unwrap(), "escalation");
        // Bounded by heal.unit_timeout_secs (10 s here) plus the settle times.
        assert!(took < Duration::from_secs(40), "{exec_start}: {took:?}");
        fx.site.root_ok(&[
            "systemctl",
            "stop",
            "msp-compliance-heal@restart-pacs-bridge.service",
        ]);
    }
    fx.site.root_ok(&["rm", "-f", dropin]);

    // 8. The agent killed mid-heal: the restart takes 4 s (a slow ExecStartPre); the agent,
    //    running as `msp-compliance.service` like on a host, is killed while it waits.
    //    `heal status` shows the interrupted heal; `heal recover` finds the unit up and
    //    records the heal verified. Nothing ends in silence.
    fx.site.write_file(
        "/etc/systemd/system/pacs-bridge.service.d/slow.conf",
        b"[Service]\nExecStartPre=/bin/sleep 4\n",
        0o644,
    );
    fx.site.root_ok(&["systemctl", "daemon-reload"]);
    fx.site
        .root_ok(&["systemctl", "stop", "pacs-bridge.service"]);
    std::thread::sleep(Duration::from_millis(1100));
    fx.orders += 1;
    let id = format!("o-{}-killed", fx.orders);
    let now = jiff::Timestamp::now();
    let envelope = Order {
        v: 1,
        order_id: id.clone(),
        nonce: hex::encode([7u8; 16]),
        site_id: "clinic-a".into(),
        host_id: "site".into(),
        action: "restart-unit".into(),
        params: json!({"unit": "pacs-bridge.service"}),
        issued_at: now,
        expires_at: now + jiff::SignedDuration::from_mins(10),
        disruptive: false,
        dry_run: false,
    }
    .sign(&fx.order_key)
    .unwrap();
    let path = format!("{ORDERS}/{id}.json");
    fx.site
        .write_file(&path, &serde_json::to_vec(&envelope).unwrap(), 0o644);
    let mut argv = vec![
        "systemd-run".to_string(),
        "--unit=msp-compliance.service".to_string(),
        "--quiet".to_string(),
    ];
    argv.extend(fx.properties.iter().map(|it| format!("--property={it}")));
    argv.extend(["--", AGENT, "order", "apply", "--config", CONFIG, &path].map(String::from));
    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
    fx.site.root_ok(&argv);
    let deadline = Instant::now() + Duration::from_secs(30);
    while fx.active("pacs-bridge.service") != "activating" {
        assert!(Instant::now() < deadline, "the heal never started the unit");
        std::thread::sleep(Duration::from_millis(100));
    }
    fx.site.root_ok(&[
        "systemctl",
        "kill",
        "--signal=KILL",
        "msp-compliance.service",
    ]);
    let out = fx.agent(&["heal", "status", "--config", CONFIG]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let listed = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        listed.contains(&id) && listed.contains("interrupted in phase acting"),
        "{listed}"
    );
    while fx.active("pacs-bridge.service") != "active" {
        assert!(Instant::now() < deadline, "the restart never finished");
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = fx.agent(&["heal", "recover", "--config", CONFIG]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("finished 1"));
    let events = fx.heal_events(&id);
    let bodies: Vec<Value> = fx
        .evidence()
        .into_iter()
        .filter(|it| it["body"]["heal_id"] == id.as_str())
        .map(|it| it["body"].clone())
        .collect();
    assert_eq!(
        &events[events.len() - 2..],
        ["heal:resumed", "heal:verified"],
        "{bodies:#?}"
    );
    let out = fx.agent(&["heal", "status", "--config", CONFIG]);
    assert_eq!(out.status.code(), Some(0));

    // 9. Generation switch and rollback on a fake system profile (the shape of
    //    /nix/var/nix/profiles; the real switch is verified only on NixOS). The agent user
    //    starts the units through polkit's generation pattern; generation 3's activation fails.
    fx.site.root_ok(&["mkdir", "-p", "/nix/var/nix/profiles"]);
    for (number, status) in [(2, 0), (3, 1)] {
        fx.site.write_file(
            &format!("/nix/store/fake-nixos-system-{number}/bin/switch-to-configuration"),
            format!("#!/bin/sh\nln -sfn /nix/store/fake-nixos-system-{number} /run/current-system\necho \"{number} $1\" >> /run/switch.log\nexit {status}\n").as_bytes(),
            0o755,
        );
        fx.site.root_ok(&[
            "ln",
            "-sfn",
            &format!("/nix/store/fake-nixos-system-{number}"),
            &format!("/nix/var/nix/profiles/system-{number}-link"),
        ]);
    }
    fx.site.root_ok(&[
        "ln",
        "-sfn",
        "system-2-link",
        "/nix/var/nix/profiles/system",
    ]);
    let out = fx.as_agent_user(&[
        "systemctl",
        "--no-ask-password",
        "start",
        "msp-compliance-heal@switch-generation-3.service",
    ]);
    assert!(!out.status.success(), "generation 3's activation fails");
    assert!(
        !stderr(&out).contains("Access denied"),
        "polkit allows it: {}",
        stderr(&out)
    );
    let report: Value = serde_json::from_slice(
        &fx.site
            .read_file("/run/msp-compliance/heal/switch-generation-3.json")
            .unwrap(),
    )
    .unwrap();
    assert_eq!(report["ok"], false);
    assert_eq!(report["pre_state"]["generation"], 2);
    let out = fx.as_agent_user(&[
        "systemctl",
        "--no-ask-password",
        "start",
        "msp-compliance-heal@rollback-generation.service",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        readlink(&fx.site, "/nix/var/nix/profiles/system"),
        "system-2-link"
    );
    assert_eq!(
        readlink(&fx.site, "/run/current-system"),
        "/nix/store/fake-nixos-system-2"
    );
    assert_eq!(
        String::from_utf8_lossy(&fx.site.read_file("/run/switch.log").unwrap()),
        "3 switch\n2 switch\n"
    );

    // The whole chain verifies.
    let out = fx.agent(&["evidence", "verify", "--config", CONFIG]);
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        stderr(&out)
    );
}

const MCP: &str = "/usr/local/bin/msp-mcp";
const MCP_STATE: &str = "/var/lib/msp-mcp";

/// A fake NixOS generation: `switch-to-configuration` that makes itself the running system
/// (`/run/current-system`) and the boot default (`/boot/fake-default`) for `switch`, only the
/// boot default for `boot`, like the real script's two main goals. `extra` runs on `switch`.
fn fake_generation(site: &Site, number: u32, extra: &str) {
    let toplevel = format!("/nix/store/fake-nixos-system-{number}");
    site.write_file(
        &format!("{toplevel}/bin/switch-to-configuration"),
        format!(
            "#!/bin/sh\nset -e\ncase \"$1\" in\n  switch) ln -sfn {toplevel} /run/current-system; echo {toplevel} > /boot/fake-default; {extra} ;;\n  boot) echo {toplevel} > /boot/fake-default ;;\n  *) exit 1 ;;\nesac\necho \"{number} $1\" >> /var/log/fake-switch.log\n"
        )
        .as_bytes(),
        0o755,
    );
    site.root_ok(&[
        "ln",
        "-sfn",
        &toplevel,
        &format!("/nix/var/nix/profiles/system-{number}-link"),
    ]);
}

/// The `STATE` column of an order in `msp-mcp orders`, once it has a result.
fn order_result(site: &Site, order_id: &str, limit: Duration) -> String {
    let deadline = Instant::now() + limit;
    loop {
        let table = site.root_ok(&[
            MCP,
            "--state-dir",
            MCP_STATE,
            "orders",
            "--site",
            "clinic-a",
            "--host",
            "site",
        ]);
        if let Some(row) = table.lines().find(|it| it.starts_with(order_id))
            && row.contains("result ")
        {
            return row.to_string();
        }
        assert!(
            Instant::now() < deadline,
            "no result for {order_id} within {limit:?}:\n{table}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn create_order(site: &Site, params: &str) -> String {
    site.root_ok(&[
        MCP,
        "--state-dir",
        MCP_STATE,
        "order",
        "create",
        "--site",
        "clinic-a",
        "--host",
        "site",
        "--action",
        "switch-generation",
        "--params",
        params,
    ])
    .trim()
    .to_string()
}

/// `kind:event` of one heal's records, read with the agent's own export (as its user).
fn heal_events_of(site: &Site, heal_id: &str) -> Vec<String> {
    let out = site.root(&[
        "runuser", "-u", AGENT_USER, "--", AGENT, "evidence", "export", "--config", CONFIG,
    ]);
    events_of(&predicates(&out), heal_id)
}

/// A window around now (two hours each side), so disruptive orders are admitted.
fn open_window() -> String {
    let now = jiff::tz::TimeZone::UTC.to_datetime(jiff::Timestamp::now());
    let start = (now.hour() + 22) % 24;
    let end = (now.hour() + 2) % 24;
    format!("{start:02}:00-{end:02}:00")
}

/// Disruptive heals through the whole product: `msp-mcp` signs the orders, the agent daemon
/// (the module's unit, `msp-compliance.service`) checks in, the guardrails admit them in the
/// window, the heal engine switches generations on a fake system profile, and a boot-mode
/// switch reboots the container and is verified by the daemon's first cycle after the boot.
///
/// The container's clock cannot be synchronized (the host kernel reports STA_UNSYNC and nspawn
/// withholds CAP_SYS_TIME), so a `timedatectl` first in the agent's search path answers `yes`,
/// as systemd-timedated does on a synchronized host; everything else is real.
#[test]
fn generations_switch_and_boot_through_the_daemon() {
    if !site_tests_enabled("generations_switch_and_boot_through_the_daemon") {
        return;
    }
    let agent = Path::new(env!("CARGO_BIN_EXE_msp-compliance-agent"));
    let mcp = agent.with_file_name("msp-mcp");
    assert!(
        mcp.exists(),
        "msp-mcp is not built next to the agent: run the workspace's tests (cargo nextest run --workspace)"
    );
    let mut site = Site::boot_persistent("gens", &[(agent, AGENT), (&mcp, MCP)]).expect("boot");
    install_module_units(&site);
    site.write_file(
        "/usr/local/lib/msp-test-bin/timedatectl",
        b"#!/bin/sh\necho yes\n",
        0o755,
    );
    site.write_file(
        "/etc/msp-compliance/declared.json",
        declared().to_string().as_bytes(),
        0o644,
    );

    // The control plane and the agent's identity, as an MSP sets up a site.
    site.root_ok(&[MCP, "--state-dir", MCP_STATE, "init"]);
    site.root_ok(&[
        "install",
        "-d",
        "-o",
        AGENT_USER,
        "-g",
        AGENT_USER,
        "-m",
        "0700",
        "/var/lib/msp-compliance",
    ]);
    site.root_ok(&[
        "runuser",
        "-u",
        AGENT_USER,
        "--",
        AGENT,
        "keygen",
        "--output",
        "/var/lib/msp-compliance/evidence.key",
    ]);
    site.root_ok(&[
        MCP,
        "--state-dir",
        MCP_STATE,
        "enroll",
        "--site",
        "clinic-a",
        "--host",
        "site",
        "--agent-key",
        "/var/lib/msp-compliance/evidence.key.pub",
        "--out",
        "/etc/msp-compliance/mcp",
    ]);
    site.root_ok(&[
        "cp",
        &format!("{MCP_STATE}/order-signing.key.pub"),
        "/etc/msp-compliance/mcp/",
    ]);
    site.root_ok(&["chown", "-R", AGENT_USER, "/etc/msp-compliance/mcp"]);
    let config = json!({
        "site_id": "clinic-a",
        "host_id": "site",
        "state_dir": "/var/lib/msp-compliance",
        "poll_interval_secs": 10,
        "privileged_facts": "units",
        "commands": { "search_path": ["/usr/local/lib/msp-test-bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin"] },
        "evidence": { "signing_key_file": "/var/lib/msp-compliance/evidence.key" },
        "control_plane": {
            "url": "https://127.0.0.1:8443",
            "server_ca_file": "/etc/msp-compliance/mcp/ca.pem",
            "client_certificate_file": "/etc/msp-compliance/mcp/client.pem",
            "client_key_file": "/etc/msp-compliance/mcp/client.key",
            "request_timeout_secs": 10
        },
        "orders": {
            "order_public_key_files": ["/etc/msp-compliance/mcp/order-signing.key.pub"],
            "maintenance_window": open_window(),
            "timezone": "UTC",
            "max_actions_per_hour": 100,
            "cooldown_secs": { "switch-generation": 1 }
        },
        "heal": { "settle_secs": 2 }
    });
    site.write_file(CONFIG, config.to_string().as_bytes(), 0o644);

    // The module's agent unit (without the credentials this test passes as files), started at
    // boot; the control plane and a stand-in for NixOS's stage 2 (which makes the boot default
    // the running system) too.
    let unit: String = debianize(&golden("units/msp-compliance.service"))
        .lines()
        .filter(|it| !it.starts_with("LoadCredential="))
        .map(|it| format!("{it}\n"))
        .collect();
    site.write_file(
        "/etc/systemd/system/msp-compliance.service",
        format!("{unit}\n[Install]\nWantedBy=multi-user.target\n").as_bytes(),
        0o644,
    );
    site.write_file(
        "/etc/systemd/system/msp-mcp.service",
        format!("[Unit]\nDescription=msp-mcp (test)\n[Service]\nExecStart={MCP} --state-dir {MCP_STATE} serve --listen 127.0.0.1:8443\n[Install]\nWantedBy=multi-user.target\n").as_bytes(),
        0o644,
    );
    site.write_file(
        "/usr/local/lib/fake-nixos-stage2",
        b"#!/bin/sh\nln -sfn \"$(cat /boot/fake-default)\" /run/current-system\n",
        0o755,
    );
    site.write_file(
        "/etc/systemd/system/fake-nixos-stage2.service",
        b"[Unit]\nDescription=the boot default becomes the running system (stand-in for NixOS stage 2)\nBefore=msp-compliance.service\n[Service]\nType=oneshot\nRemainAfterExit=yes\nExecStart=/usr/local/lib/fake-nixos-stage2\n[Install]\nWantedBy=multi-user.target\n",
        0o644,
    );
    site.write_file(
        "/etc/systemd/system/gen3-broken.service",
        b"[Unit]\nDescription=a service generation 3 breaks\n[Service]\nExecStart=/bin/false\n",
        0o644,
    );
    site.root_ok(&["mkdir", "-p", "/nix/var/nix/profiles", "/boot"]);
    fake_generation(&site, 2, "true");
    fake_generation(&site, 3, "systemctl start gen3-broken.service || true");
    fake_generation(&site, 4, "true");
    fake_generation(&site, 5, "true");
    site.root_ok(&[
        "ln",
        "-sfn",
        "system-2-link",
        "/nix/var/nix/profiles/system",
    ]);
    site.write_file(
        "/boot/fake-default",
        b"/nix/store/fake-nixos-system-2\n",
        0o644,
    );
    site.root_ok(&["systemctl", "daemon-reload"]);
    site.root_ok(&[
        "systemd-tmpfiles",
        "--create",
        "/etc/tmpfiles.d/msp-compliance.conf",
    ]);
    site.root_ok(&[
        "systemctl",
        "enable",
        "--now",
        "fake-nixos-stage2.service",
        "msp-mcp.service",
        "msp-compliance.service",
    ]);
    assert_eq!(
        readlink(&site, "/run/current-system"),
        "/nix/store/fake-nixos-system-2"
    );

    // A generation whose activation breaks a service: the health probe sees the newly failed
    // unit, the engine rolls back to generation 2 and escalates, within the same cycle.
    let order = create_order(&site, r#"{"generation": 3}"#);
    let result = order_result(&site, &order, Duration::from_secs(90));
    assert!(result.contains("result failed"), "{result}");
    assert_eq!(
        heal_events_of(&site, &order),
        [
            "heal:drift_detected",
            "heal:attempted",
            "heal:acted",
            "heal:verification_failed",
            "rollback:rolled_back",
            "escalation"
        ]
    );
    assert_eq!(
        readlink(&site, "/nix/var/nix/profiles/system"),
        "system-2-link"
    );
    assert_eq!(
        readlink(&site, "/run/current-system"),
        "/nix/store/fake-nixos-system-2"
    );

    // A good generation, switched to live and verified.
    let order = create_order(&site, r#"{"generation": 4}"#);
    let result = order_result(&site, &order, Duration::from_secs(90));
    assert!(result.contains("result executed"), "{result}");
    assert_eq!(
        heal_events_of(&site, &order).last().unwrap(),
        "heal:verified"
    );
    assert_eq!(
        readlink(&site, "/run/current-system"),
        "/nix/store/fake-nixos-system-4"
    );

    // Boot mode: generation 5 becomes the boot default and the host reboots into it; the
    // daemon's first cycle after the boot finds the heal in its journal and verifies it.
    let boot_before = site.root_ok(&["cat", "/proc/sys/kernel/random/boot_id"]);
    let order = create_order(&site, r#"{"generation": 5, "reboot": true}"#);
    let rebooted = site
        .reboot_and_wait(Duration::from_secs(180))
        .expect("the heal reboots the site");
    eprintln!("boot-mode heal: the site came back {rebooted:?} after the reboot");
    assert_ne!(
        site.root_ok(&["cat", "/proc/sys/kernel/random/boot_id"]),
        boot_before
    );
    let deadline = Instant::now() + Duration::from_secs(90);
    let events = loop {
        let events = heal_events_of(&site, &order);
        if events
            .last()
            .is_some_and(|it| it == "heal:verified" || it == "escalation")
        {
            break events;
        }
        assert!(
            Instant::now() < deadline,
            "the heal was not finished after the boot: {events:?}\n{}",
            String::from_utf8_lossy(
                &site
                    .root(&[
                        "journalctl",
                        "-b",
                        "-u",
                        "msp-compliance.service",
                        "--no-pager"
                    ])
                    .stdout
            )
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    assert_eq!(
        events,
        [
            "heal:drift_detected",
            "heal:attempted",
            "heal:acted",
            "heal:awaiting_reboot",
            "heal:resumed",
            "heal:verified"
        ]
    );
    assert_eq!(
        readlink(&site, "/run/current-system"),
        "/nix/store/fake-nixos-system-5"
    );
    let result = order_result(&site, &order, Duration::from_secs(60));
    assert!(result.contains("result executed"), "{result}");

    // The server holds the agent's chain and it verifies there.
    let out = site.root(&[
        MCP,
        "--state-dir",
        MCP_STATE,
        "evidence",
        "verify",
        "--site",
        "clinic-a",
        "--host",
        "site",
    ]);
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        stderr(&out)
    );
}
