//! End-to-end test of the firewall check against the real nft, inside a network namespace.
//!
//! It owns one throw-away namespace per run (`msp-fw-<pid>`): a NixOS-style `inet nixos-fw`
//! ruleset is loaded there, a listener is started there, and the built agent binary runs there
//! (`ip netns exec`), so `nft -j list ruleset` and `/proc/net/*` show the namespace, never the
//! host. It must not touch the host's own ruleset, and it addresses no IP address at all.
//! Guards delete the namespace and kill the listeners even when an assertion fails.
//!
//! Gated by `MSP_REAL_TOOLS=1` (set by `.ci/run`); needs root, iproute2, nftables and python3.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// Returns true if and only if real-tool tests should run; otherwise says why they are skipped.
fn real_tools(test: &str) -> bool {
    if std::env::var_os("MSP_REAL_TOOLS").is_some_and(|it| it == "1") {
        return true;
    }
    eprintln!(
        "skipped {test}: set MSP_REAL_TOOLS=1 to run tests that need real tools (.ci/run does)"
    );
    false
}

/// A network namespace, deleted on drop (which also drops its ruleset and sockets).
struct Namespace {
    name: String,
}

impl Namespace {
    fn create(name: String) -> Namespace {
        // A namespace left over from a crashed run with the same pid would make `add` fail.
        let _ = Command::new("ip")
            .args(["netns", "delete", &name])
            .stderr(Stdio::null())
            .status();
        let status = Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .expect("run ip");
        assert!(
            status.success(),
            "ip netns add {name} failed (needs root and iproute2)"
        );
        let namespace = Namespace { name };
        namespace.exec_ok(&["ip", "link", "set", "lo", "up"]);
        namespace
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.name]).args(args);
        command
    }

    fn exec(&self, args: &[&str]) -> Output {
        self.command(args).output().expect("run ip netns exec")
    }

    fn exec_ok(&self, args: &[&str]) {
        let out = self.exec(args);
        assert!(
            out.status.success(),
            "{args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Starts a TCP listener on `port` inside the namespace and waits (bounded) until the
    /// kernel shows it in LISTEN state.
    fn listen(&self, port: u16) -> Listener {
        let port_text = port.to_string();
        let child = self
            .command(&[
                "python3",
                "-m",
                "http.server",
                &port_text,
                "--bind",
                "0.0.0.0",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start python3 -m http.server");
        let listener = Listener { child };
        let needle = format!(":{port:04X} 00000000:0000 0A");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let table =
                String::from_utf8_lossy(&self.exec(&["cat", "/proc/net/tcp"]).stdout).into_owned();
            if table.contains(&needle) {
                return listener;
            }
            assert!(
                Instant::now() < deadline,
                "listener on port {port} did not come up:\n{table}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "delete", &self.name])
            .status();
    }
}

/// A listener process, killed on drop.
struct Listener {
    child: Child,
}

impl Drop for Listener {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn fixture_sources() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/firewall/sources")
}

/// Runs `check --only firewall` inside the namespace; returns the firewall finding and the
/// exit status.
fn run_check(namespace: &Namespace, config: &Path) -> (Value, i32) {
    let agent = env!("CARGO_BIN_EXE_msp-compliance-agent");
    let config = config.display().to_string();
    let out = namespace.exec(&[
        agent, "check", "--only", "firewall", "--config", &config, "--format", "json",
    ]);
    let report: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|err| {
        panic!(
            "agent printed no JSON ({err}): {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (
        report["findings"][0].clone(),
        out.status.code().unwrap_or(-1),
    )
}

fn rule<'a>(finding: &'a Value, id: &str) -> &'a Value {
    finding["results"]
        .as_array()
        .and_then(|it| it.iter().find(|result| result["rule"] == id))
        .unwrap_or_else(|| panic!("rule {id} missing in {finding:#}"))
}

#[test]
fn firewall_check_in_a_network_namespace() {
    if !real_tools("firewall_check_in_a_network_namespace") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let declared = dir.path().join("declared.json");
    std::fs::write(
        &declared,
        r#"{
  "version": 1,
  "firewall": { "enable": true, "backend": "nftables", "allowedTCPPorts": [22], "allowedUDPPorts": [], "trustedInterfaces": ["lo"] },
  "journald": { "storage": "persistent" },
  "audit": { "auditd": true, "enable": "true" },
  "backups": [],
  "luks": {},
  "swap": [],
  "tmpOnTmpfs": true,
  "autoUpgrade": { "enable": false },
  "clamav": { "daemon": true, "updater": true },
  "timeSync": { "timesyncd": true }
}"#,
    )
    .expect("write declared.json");
    let config = dir.path().join("config.json");
    let config_json = serde_json::json!({
        "site_id": "test-site",
        "host_id": "netns-host",
        "declared_file": declared,
    });
    std::fs::write(&config, config_json.to_string()).expect("write config");

    let namespace = Namespace::create(format!("msp-fw-{}", std::process::id()));
    let source = |name: &str| fixture_sources().join(name).display().to_string();

    // Case 1: the NixOS ruleset for allowedTCPPorts = [ 22 ], sshd-like listener on 22.
    namespace.exec_ok(&["nft", "-f", &source("nixos-22.nft")]);
    let ssh = namespace.listen(22);
    let (finding, code) = run_check(&namespace, &config);
    assert_eq!(finding["status"], "pass", "{finding:#}");
    assert_eq!(code, 0);
    assert_eq!(
        rule(&finding, "firewall.open_ports")["message"],
        "open to the network: tcp 22"
    );
    assert_eq!(
        rule(&finding, "firewall.listeners")["status"],
        "pass",
        "{finding:#}"
    );
    assert_eq!(
        finding["observed"]["ruleset"]["source"],
        "nft -j list ruleset"
    );

    // Case 2: 8080 accepted in input-allow and something listening there.
    namespace.exec_ok(&["nft", "flush", "ruleset"]);
    namespace.exec_ok(&["nft", "-f", &source("nixos-extra-8080.nft")]);
    let web = namespace.listen(8080);
    let (finding, code) = run_check(&namespace, &config);
    assert_eq!(finding["status"], "fail", "{finding:#}");
    assert_eq!(code, 1);
    for id in [
        "firewall.open_ports",
        "firewall.declared_ports",
        "firewall.listeners",
    ] {
        let result = rule(&finding, id);
        assert_eq!(result["status"], "fail", "{id} in {finding:#}");
        assert!(
            result["message"]
                .as_str()
                .unwrap_or_default()
                .contains("8080"),
            "{id} in {finding:#}"
        );
    }
    assert_eq!(rule(&finding, "firewall.default_deny")["status"], "pass");

    // Case 3: the ruleset flushed (what `nft flush ruleset` by hand or a failed reload leaves).
    namespace.exec_ok(&["nft", "flush", "ruleset"]);
    let (finding, code) = run_check(&namespace, &config);
    assert_eq!(finding["status"], "fail", "{finding:#}");
    assert_eq!(code, 1);
    assert_eq!(
        rule(&finding, "firewall.ruleset")["status"],
        "fail",
        "{finding:#}"
    );
    assert_eq!(
        rule(&finding, "firewall.default_deny")["status"],
        "fail",
        "{finding:#}"
    );
    let fix = &rule(&finding, "firewall.ruleset")["fix"];
    assert_eq!(fix["action"], "systemctl restart nftables.service");
    assert_eq!(fix["safety"], "safe");
    drop((ssh, web));
}
