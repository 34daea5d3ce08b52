//! End to end with real processes on 127.0.0.1 (issue 4): the real `msp-mcp` (init, enroll,
//! serve, order create, orders, evidence verify/export) and the real agent daemon
//! (`msp-compliance-agent run`), certificates made by `msp-mcp` (rcgen), nothing mocked.
//!
//! Enroll → check-in → the operator creates orders (dry run and real) → the agent verifies and
//! executes them → the signed results and the evidence reach the server and verify there. Then
//! the server is stopped for several cycles and restarted on the same port: every record the
//! agent queued arrives once, and the server's copy of the chain is byte for byte the agent's.
//!
//! `msp-mcp` is looked up next to the agent binary (`cargo nextest run --workspace`, which CI
//! runs, builds both). Every wait is bounded; processes are killed by their guards if a test
//! fails.

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The daemon's shortest cycle (`poll_interval_secs` minimum).
const POLL_SECS: u64 = 10;

/// CI (`MSP_REAL_TOOLS=1`) builds the whole workspace; there a missing `msp-mcp` is a failure.
fn ci() -> bool {
    std::env::var("MSP_REAL_TOOLS").as_deref() == Ok("1")
}

fn agent_bin() -> &'static str {
    env!("CARGO_BIN_EXE_msp-compliance-agent")
}

/// The `msp-mcp` binary built next to the agent, if any.
fn mcp_bin() -> Option<PathBuf> {
    let path = Path::new(agent_bin()).with_file_name("msp-mcp");
    path.exists().then_some(path)
}

fn fixture_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/hosts/nixos-site")
}

/// Kills the child when dropped (a failed assertion must not leave processes behind).
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn run(program: &Path, args: &[&str]) -> Output {
    Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|err| panic!("{}: {err}", program.display()))
}

fn run_ok(program: &Path, args: &[&str]) -> String {
    let output = run(program, args);
    assert!(
        output.status.success(),
        "{} {args:?} failed: {}\n{}",
        program.display(),
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("UTF-8 output")
}

/// Starts `msp-mcp serve` and returns it with the address from its first line.
fn serve(mcp: &Path, state: &Path, listen: &str) -> (Guard, SocketAddr) {
    let mut child = Command::new(mcp)
        .args([
            "--state-dir",
            state.to_str().unwrap(),
            "serve",
            "--listen",
            listen,
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("msp-mcp serve starts");
    let stdout = child.stdout.take().expect("piped stdout");
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .expect("first line");
    let address = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .parse()
        .expect("an address");
    (Guard(child), address)
}

/// Stops a process with SIGTERM and returns its exit status (bounded wait).
fn terminate(mut guard: Guard) -> std::process::ExitStatus {
    let pid = guard.0.id().to_string();
    let status = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill runs");
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = guard.0.try_wait().expect("wait") {
            return status;
        }
        assert!(Instant::now() < deadline, "process {pid} ignored SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Polls `probe` until it returns `Some`, at most `limit` long.
fn wait_for<T>(what: &str, limit: Duration, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(it) = probe() {
            return it;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(250));
    }
}

struct Site {
    _dir: tempfile::TempDir,
    mcp: PathBuf,
    state: PathBuf,
    config: PathBuf,
}

impl Site {
    fn mcp(&self, args: &[&str]) -> String {
        let mut all = vec!["--state-dir", self.state.to_str().unwrap()];
        all.extend_from_slice(args);
        run_ok(&self.mcp, &all)
    }

    /// The `STATE` column of the order's row in `msp-mcp orders`.
    fn order_state(&self, order_id: &str) -> String {
        let table = self.mcp(&["orders", "--site", "clinic-a", "--host", "nixos-1"]);
        let row = table
            .lines()
            .find(|it| it.starts_with(order_id))
            .unwrap_or_else(|| panic!("order {order_id} not listed:\n{table}"));
        row.to_string()
    }

    fn server_export(&self) -> String {
        self.mcp(&[
            "evidence", "export", "--site", "clinic-a", "--host", "nixos-1", "--format", "jsonl",
        ])
    }

    fn agent_export(&self) -> String {
        run_ok(
            Path::new(agent_bin()),
            &[
                "evidence",
                "export",
                "--config",
                self.config.to_str().unwrap(),
            ],
        )
    }

    fn start_agent(&self) -> Guard {
        let log = self.state.parent().unwrap().join("agent.log");
        let child = Command::new(agent_bin())
            .args([
                "run",
                "--config",
                self.config.to_str().unwrap(),
                "--root",
                fixture_root().to_str().unwrap(),
            ])
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log).expect("log file"))
            .spawn()
            .expect("agent starts");
        Guard(child)
    }

    fn agent_log(&self) -> String {
        let mut text = String::new();
        if let Ok(mut file) = std::fs::File::open(self.state.parent().unwrap().join("agent.log")) {
            let _ = file.read_to_string(&mut text);
        }
        text
    }
}

/// Initialises a control plane, enrolls one host with its agent key pinned, and writes the
/// agent's configuration pointing at `address`.
fn site(mcp: PathBuf) -> (Site, (Guard, SocketAddr)) {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("temp dir");
    let state = dir.path().join("mcp");
    let agent_dir = dir.path().join("agent");
    std::fs::create_dir_all(&agent_dir).unwrap();
    run_ok(&mcp, &["--state-dir", state.to_str().unwrap(), "init"]);
    let key = agent_dir.join("evidence.key");
    run_ok(
        Path::new(agent_bin()),
        &["keygen", "--output", key.to_str().unwrap()],
    );
    let bundle = agent_dir.join("mtls");
    run_ok(
        &mcp,
        &[
            "--state-dir",
            state.to_str().unwrap(),
            "enroll",
            "--site",
            "clinic-a",
            "--host",
            "nixos-1",
            "--agent-key",
            agent_dir.join("evidence.key.pub").to_str().unwrap(),
            "--out",
            bundle.to_str().unwrap(),
        ],
    );
    let server = serve(&mcp, &state, "127.0.0.1:0");
    let port = server.1.port();
    let config = agent_dir.join("config.json");
    let order_key = state.join("order-signing.key.pub");
    assert!(
        order_key.exists(),
        "msp-mcp init writes {}",
        order_key.display()
    );
    let text = serde_json::json!({
        "site_id": "clinic-a",
        "host_id": "nixos-1",
        "state_dir": agent_dir.join("state"),
        "poll_interval_secs": POLL_SECS,
        "evidence": { "signing_key_file": key },
        "control_plane": {
            "url": format!("https://127.0.0.1:{port}"),
            "server_ca_file": bundle.join("ca.pem"),
            "client_certificate_file": bundle.join("client.pem"),
            "client_key_file": bundle.join("client.key"),
            "request_timeout_secs": 10,
        },
        "orders": { "order_public_key_files": [order_key] },
    });
    std::fs::write(&config, serde_json::to_vec_pretty(&text).unwrap()).unwrap();
    (
        Site {
            _dir: dir,
            mcp,
            state,
            config,
        },
        server,
    )
}

#[test]
fn enroll_check_in_orders_results_and_evidence_verify_at_the_server() {
    let Some(mcp) = mcp_bin() else {
        assert!(
            !ci(),
            "msp-mcp is not built next to the agent: run the workspace's tests (cargo nextest run --workspace)"
        );
        eprintln!("skipping: msp-mcp is not built next to the agent (cargo build -p msp-mcp)");
        return;
    };
    let (site, (server, address)) = site(mcp);
    let agent = site.start_agent();

    // Check-in: the server lists the host with the agent's version (known only from a
    // check-in) and the key pinned at enrollment.
    let row = wait_for("the first check-in", Duration::from_secs(60), || {
        let hosts = site.mcp(&["hosts"]);
        let row = hosts
            .lines()
            .find(|it| it.starts_with("clinic-a"))?
            .to_string();
        row.contains(env!("CARGO_PKG_VERSION")).then_some(row)
    });
    assert!(row.contains("keyid"), "{row}");

    // A dry run and a real run of `run-checks`: both come back signed, with their outcome.
    let dry = site
        .mcp(&[
            "order",
            "create",
            "--site",
            "clinic-a",
            "--host",
            "nixos-1",
            "--action",
            "run-checks",
            "--dry-run",
        ])
        .trim()
        .to_string();
    let real = site
        .mcp(&[
            "order",
            "create",
            "--site",
            "clinic-a",
            "--host",
            "nixos-1",
            "--action",
            "run-checks",
        ])
        .trim()
        .to_string();
    let limit = Duration::from_secs(3 * POLL_SECS + 30);
    let dry_state = wait_for("the dry-run result", limit, || {
        let row = site.order_state(&dry);
        row.contains("result").then_some(row)
    });
    assert!(dry_state.contains("result dry_run"), "{dry_state}");
    let real_state = wait_for("the real result", limit, || {
        let row = site.order_state(&real);
        row.contains("result").then_some(row)
    });
    assert!(real_state.contains("result executed"), "{real_state}");

    // The server's copy of the chain is the agent's, and both orders are records in it.
    let agent_records = wait_for("evidence at the server", limit, || {
        let agent = site.agent_export();
        let server = site.server_export();
        (!agent.is_empty() && agent == server).then_some(agent)
    });
    let kinds = kinds_of(&agent_records);
    assert!(kinds.iter().any(|it| it == "check"), "{kinds:?}");
    assert!(
        kinds.iter().filter(|it| *it == "order").count() >= 2,
        "both orders are evidence records: {kinds:?}"
    );
    let verified = site.mcp(&[
        "evidence", "verify", "--site", "clinic-a", "--host", "nixos-1",
    ]);
    assert!(verified.starts_with("ok: clinic-a/nixos-1:"), "{verified}");

    // The server goes away for several cycles; the agent keeps checking and queues.
    let before = agent_records.lines().count();
    assert!(
        terminate(server).success(),
        "msp-mcp stops cleanly on SIGTERM"
    );
    let queued = wait_for(
        "records queued while the server is down",
        Duration::from_secs(4 * POLL_SECS + 20),
        || {
            let n = site.agent_export().lines().count();
            (n >= before + 12).then_some(n)
        },
    );
    assert!(queued > before);
    // Back on the same address: everything arrives, once, in order.
    let (server, _) = serve(&site.mcp, &site.state, &address.to_string());
    let after = wait_for(
        "the backlog at the server",
        Duration::from_secs(3 * POLL_SECS + 30),
        || {
            let agent = site.agent_export();
            let server = site.server_export();
            (agent.lines().count() >= queued && agent == server).then_some(server)
        },
    );
    let mut seqs: Vec<u64> = after
        .lines()
        .map(|line| {
            let envelope: serde_json::Value = serde_json::from_str(line).unwrap();
            let payload = base64_decode(envelope["payload"].as_str().unwrap());
            let statement: serde_json::Value = serde_json::from_slice(&payload).unwrap();
            statement["predicate"]["seq"].as_u64().unwrap()
        })
        .collect();
    let n = seqs.len();
    seqs.dedup();
    assert_eq!(seqs.len(), n, "no record stored twice");
    assert_eq!(
        seqs,
        (0..n as u64).collect::<Vec<_>>(),
        "continuous from seq 0"
    );
    let verified = site.mcp(&[
        "evidence", "verify", "--site", "clinic-a", "--host", "nixos-1",
    ]);
    assert!(verified.starts_with("ok: clinic-a/nixos-1:"), "{verified}");
    // The agent vouched for its head with a signed checkpoint once the server had the chain;
    // the server's verification requires the chain to contain it.
    assert!(
        verified.contains("contains the checkpointed seq"),
        "{verified}"
    );
    assert!(kinds_of(&after).iter().any(|it| it == "checkpoint"));

    let log = site.agent_log();
    assert!(terminate(agent).success(), "agent stops cleanly:\n{log}");
    drop(server);
}

/// The record kinds of a JSON Lines export, in order.
fn kinds_of(export: &str) -> Vec<String> {
    export
        .lines()
        .map(|line| {
            let envelope: serde_json::Value = serde_json::from_str(line).unwrap();
            let payload = base64_decode(envelope["payload"].as_str().unwrap());
            let statement: serde_json::Value = serde_json::from_slice(&payload).unwrap();
            statement["predicate"]["kind"].as_str().unwrap().to_string()
        })
        .collect()
}

fn base64_decode(text: &str) -> Vec<u8> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD
        .decode(text)
        .expect("base64 payload")
}
