//! The daemon (`msp-compliance-agent run`) as a real process, against control planes on
//! 127.0.0.1: a small in-test TLS server (rustls, certificates from rcgen, client certificates
//! required) that behaves, answers garbage, hangs, refuses results or shows a certificate from
//! another CA. The same daemon against the real `msp-mcp` is `control_plane_e2e.rs`.
//!
//! What must hold (issue 4, agent half): the agent listens on no socket and has no UDP socket;
//! it checks in over mTLS with the pinned CA only; a server that answers garbage or hangs is a
//! clear log line within bounded time, the agent stays up and loses nothing; offline, evidence
//! queues, and after reconnecting every record arrives exactly once; SIGTERM stops it with exit
//! status 0 and a store that verifies; SIGHUP reloads a good configuration and keeps the running
//! one when the new one is bad; orders pass the guardrails, and their signed results survive a
//! server that refuses them, each posted once, no order run twice. Every wait here is bounded
//! in time; the servers stop with their guards and the agent is killed if a test fails.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use msp_compliance_agent::evidence::keys;
use msp_compliance_agent::evidence::store::Store;
use msp_compliance_protocol::api::{
    CheckIn, CheckInResponse, EvidenceBatch, EvidenceBatchResponse, RecordStatus, RecordVerdict,
};
use msp_compliance_protocol::dsse::{self, Envelope};
use msp_compliance_protocol::order::{
    Order, OrderResult, Outcome, RESULT_PAYLOAD_TYPE, RefusalCode,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

const AGENT: &str = env!("CARGO_BIN_EXE_msp-compliance-agent");

/// Longest wait for anything the agent should do within one cycle.
const CYCLE_WAIT: Duration = Duration::from_secs(60);

fn fixture_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/hosts/nixos-site")
}

// ---------------------------------------------------------------------------------------------
// Certificates.

/// A CA with a server certificate for 127.0.0.1 and a client certificate, as PEM files.
struct Pki {
    ca_file: PathBuf,
    client_certificate_file: PathBuf,
    client_key_file: PathBuf,
    ca_pem: String,
    server_chain_pem: String,
    server_key_pem: String,
}

impl Pki {
    fn new(dir: &Path, name: &str) -> Pki {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, format!("{name} test CA"));
        let ca_cert = ca_params.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca_params, ca_key);
        let server_key = KeyPair::generate().unwrap();
        let server_params =
            CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()]).unwrap();
        let server_cert = server_params.signed_by(&server_key, &issuer).unwrap();
        let client_key = KeyPair::generate().unwrap();
        let mut client_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        client_params
            .distinguished_name
            .push(DnType::CommonName, "clinic-a/nixos-1");
        let client_cert = client_params.signed_by(&client_key, &issuer).unwrap();
        let write = |file: &str, text: &str, mode: u32| {
            use std::os::unix::fs::PermissionsExt;
            let path = dir.join(format!("{name}-{file}"));
            std::fs::write(&path, text).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            path
        };
        Pki {
            ca_file: write("ca.pem", &ca_cert.pem(), 0o644),
            client_certificate_file: write("client.pem", &client_cert.pem(), 0o644),
            client_key_file: write("client.key", &client_key.serialize_pem(), 0o600),
            ca_pem: ca_cert.pem(),
            server_chain_pem: server_cert.pem(),
            server_key_pem: server_key.serialize_pem(),
        }
    }

    /// A rustls server configuration that requires a client certificate from `client_ca`.
    fn server_config(&self, client_ca: &Pki) -> Arc<rustls::ServerConfig> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(client_ca.ca_pem.as_bytes()) {
            roots.add(cert.unwrap()).unwrap();
        }
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            provider.clone(),
        )
        .build()
        .unwrap();
        let chain = CertificateDer::pem_slice_iter(self.server_chain_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        let key = PrivateKeyDer::from_pem_slice(self.server_key_pem.as_bytes()).unwrap();
        Arc::new(
            rustls::ServerConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_client_cert_verifier(verifier)
                .with_single_cert(chain, key)
                .unwrap(),
        )
    }
}

// ---------------------------------------------------------------------------------------------
// A fake control plane.

/// How the fake control plane answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// Answers like the API: check-in, evidence (deduplicated by digest), results.
    Good,
    /// Answers HTTP 200 with a body that is not JSON.
    BadJson,
    /// Answers bytes that are not HTTP.
    NotHttp,
    /// Completes the TLS handshake, reads the request and never answers.
    Hang,
    /// Like `Good`, but `/v1/results` answers 503.
    RefuseResults,
}

#[derive(Default)]
struct Received {
    /// Check-ins, in order.
    checkins: Vec<CheckIn>,
    /// Digest → times it was stored (must end at 1 for every digest).
    stores: BTreeMap<String, usize>,
    /// Digest → times it came again and was answered `duplicate`.
    duplicates: BTreeMap<String, usize>,
    /// Result envelopes, in order.
    results: Vec<Envelope>,
    /// Requests per path.
    requests: BTreeMap<String, usize>,
    /// Orders served on every check-in until a result names them.
    orders: Vec<Envelope>,
}

/// A control plane on 127.0.0.1 with mTLS; stops on drop.
struct FakeControlPlane {
    port: u16,
    mode: Arc<Mutex<Mode>>,
    received: Arc<Mutex<Received>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl FakeControlPlane {
    fn start(config: Arc<rustls::ServerConfig>, mode: Mode) -> FakeControlPlane {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        FakeControlPlane::serve_on(listener, config, mode)
    }

    fn serve_on(
        listener: TcpListener,
        config: Arc<rustls::ServerConfig>,
        mode: Mode,
    ) -> FakeControlPlane {
        let port = listener.local_addr().unwrap().port();
        let mode = Arc::new(Mutex::new(mode));
        let received = Arc::new(Mutex::new(Received::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (mode, received, stop) = (mode.clone(), received.clone(), stop.clone());
            std::thread::spawn(move || {
                for stream in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        return;
                    }
                    let Ok(stream) = stream else { continue };
                    let (mode, received, stop, config) =
                        (mode.clone(), received.clone(), stop.clone(), config.clone());
                    std::thread::spawn(move || {
                        serve_connection(stream, config, &mode, &received, &stop)
                    });
                }
            })
        };
        FakeControlPlane {
            port,
            mode,
            received,
            stop,
            thread: Some(thread),
        }
    }

    fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    fn set_mode(&self, mode: Mode) {
        *self.mode.lock().unwrap() = mode;
    }

    fn received<T>(&self, read: impl FnOnce(&Received) -> T) -> T {
        read(&self.received.lock().unwrap())
    }
}

impl Drop for FakeControlPlane {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the accept loop so it sees the flag.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn serve_connection(
    stream: TcpStream,
    config: Arc<rustls::ServerConfig>,
    mode: &Mutex<Mode>,
    received: &Mutex<Received>,
    stop: &AtomicBool,
) {
    stream
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let Ok(connection) = rustls::ServerConnection::new(config) else {
        return;
    };
    let mut tls = rustls::StreamOwned::new(connection, stream);
    let deadline = Instant::now() + Duration::from_secs(60);
    // Requests on one connection until the client closes it (reqwest keeps it alive).
    while Instant::now() < deadline && !stop.load(Ordering::SeqCst) {
        let Some((path, body)) = read_request(&mut tls, stop) else {
            return;
        };
        *received
            .lock()
            .unwrap()
            .requests
            .entry(path.clone())
            .or_default() += 1;
        let current = *mode.lock().unwrap();
        let answer: Vec<u8> = match current {
            Mode::Hang => {
                while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(50));
                }
                return;
            }
            Mode::NotHttp => b"\x00\x01\x02 this is not HTTP at all\r\n\r\n".to_vec(),
            Mode::BadJson => http(200, "<html>maintenance</html>"),
            Mode::RefuseResults if path == "/v1/results" => http(
                503,
                r#"{"code":"internal","message":"result store unavailable"}"#,
            ),
            Mode::Good | Mode::RefuseResults => answer(&path, &body, received),
        };
        if tls.write_all(&answer).is_err() || tls.flush().is_err() {
            return;
        }
        if !matches!(current, Mode::Good | Mode::RefuseResults) {
            return;
        }
    }
}

/// Reads one HTTP/1.1 request: its path and body.
fn read_request(
    tls: &mut rustls::StreamOwned<rustls::ServerConnection, TcpStream>,
    stop: &AtomicBool,
) -> Option<(String, Vec<u8>)> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match tls.read(&mut byte) {
            Ok(0) => return None,
            Ok(_) => head.push(byte[0]),
            Err(err)
                if matches!(
                    err.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                if stop.load(Ordering::SeqCst) {
                    return None;
                }
            }
            Err(_) => return None,
        }
        if head.len() > 64 * 1024 {
            return None;
        }
    }
    let head = String::from_utf8_lossy(&head).to_string();
    let path = head.split_whitespace().nth(1)?.to_string();
    let length: usize = head
        .lines()
        .find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse().ok())?
        })
        .unwrap_or(0);
    let mut body = vec![0u8; length];
    let mut filled = 0;
    while filled < length {
        match tls.read(&mut body[filled..]) {
            Ok(0) => return None,
            Ok(n) => filled += n,
            Err(err)
                if matches!(
                    err.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return None,
        }
    }
    Some((path, body))
}

fn payload_of(envelope: &Envelope) -> Vec<u8> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD
        .decode(envelope.payload.as_bytes())
        .unwrap_or_default()
}

fn http(status: u16, body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// The API, as far as the agent's tests need it.
fn answer(path: &str, body: &[u8], received: &Mutex<Received>) -> Vec<u8> {
    let mut received = received.lock().unwrap();
    match path {
        "/v1/checkin" => {
            let Ok(checkin) = serde_json::from_slice::<CheckIn>(body) else {
                return http(400, r#"{"code":"bad_request","message":"not a check-in"}"#);
            };
            received.checkins.push(checkin);
            let response = CheckInResponse {
                server_time: jiff::Timestamp::now(),
                orders: received.orders.clone(),
                evidence_head: None,
            };
            http(200, &serde_json::to_string(&response).unwrap())
        }
        "/v1/evidence" => {
            let Ok(batch) = serde_json::from_slice::<EvidenceBatch>(body) else {
                return http(400, r#"{"code":"bad_request","message":"not a batch"}"#);
            };
            let mut results = Vec::new();
            for envelope in &batch.envelopes {
                let digest = dsse::digest(envelope);
                let status = if received.stores.contains_key(&digest) {
                    *received.duplicates.entry(digest.clone()).or_default() += 1;
                    RecordStatus::Duplicate
                } else {
                    received.stores.insert(digest.clone(), 1);
                    RecordStatus::Accepted
                };
                results.push(RecordVerdict {
                    digest,
                    status,
                    reason: None,
                });
            }
            let response = EvidenceBatchResponse {
                results,
                head: None,
            };
            http(200, &serde_json::to_string(&response).unwrap())
        }
        "/v1/results" => {
            let Ok(envelope) = serde_json::from_slice::<Envelope>(body) else {
                return http(400, r#"{"code":"bad_request","message":"not an envelope"}"#);
            };
            // An order is served until a result names it, as the real control plane does.
            if let Ok(result) = serde_json::from_slice::<OrderResult>(&payload_of(&envelope)) {
                received
                    .orders
                    .retain(|it| dsse::digest(it) != result.order_digest);
            }
            received.results.push(envelope);
            http(200, r#"{"ok":true}"#)
        }
        _ => http(
            404,
            r#"{"code":"bad_request","message":"no such endpoint"}"#,
        ),
    }
}

// ---------------------------------------------------------------------------------------------
// The agent.

/// A test's files: signing key, PKI, state, config, log.
struct Setup {
    dir: tempfile::TempDir,
    pki: Pki,
}

impl Setup {
    fn new() -> Setup {
        let dir = tempfile::tempdir().unwrap();
        keys::keygen(&dir.path().join("signing.key")).unwrap();
        let pki = Pki::new(dir.path(), "site");
        Setup { dir, pki }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn state_dir(&self) -> PathBuf {
        self.path("state")
    }

    /// Writes the configuration; `url` None means no control plane.
    fn write_config(&self, url: Option<&str>, extra: serde_json::Value) -> PathBuf {
        let mut config = serde_json::json!({
            "site_id": "clinic-a",
            "host_id": "nixos-1",
            "state_dir": self.state_dir(),
            "poll_interval_secs": 10,
            "evidence": { "signing_key_file": self.path("signing.key") },
            // Retry at once: these tests restart the agent instead of waiting for backoff.
            "outbox": { "backoff_initial_ms": 1, "backoff_max_ms": 1 },
        });
        if let Some(url) = url {
            config["control_plane"] = serde_json::json!({
                "url": url,
                "server_ca_file": self.pki.ca_file,
                "client_certificate_file": self.pki.client_certificate_file,
                "client_key_file": self.pki.client_key_file,
                "request_timeout_secs": 2,
            });
        }
        if let serde_json::Value::Object(extra) = extra {
            for (key, value) in extra {
                config[key] = value;
            }
        }
        let path = self.path("config.json");
        std::fs::write(&path, serde_json::to_vec_pretty(&config).unwrap()).unwrap();
        path
    }

    fn start(&self, config: &Path, log_name: &str) -> Agent {
        let log = self.path(log_name);
        let child = Command::new(AGENT)
            .args(["run", "--config"])
            .arg(config)
            .arg("--root")
            .arg(fixture_root())
            .env("RUST_LOG", "info")
            .env_remove("JOURNAL_STREAM")
            .env_remove("CREDENTIALS_DIRECTORY")
            .env_remove("MSP_REAL_TOOLS")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        Agent {
            child: Some(child),
            log,
        }
    }

    fn store(&self) -> Store {
        Store::open(&self.state_dir().join("evidence.sqlite")).unwrap()
    }

    /// `evidence verify --config`: the whole chain verifies.
    fn assert_store_verifies(&self, config: &Path) {
        let out = Command::new(AGENT)
            .args(["evidence", "verify", "--config"])
            .arg(config)
            .env_remove("CREDENTIALS_DIRECTORY")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && text.contains("evidence verify: ok"),
            "evidence verify failed:\n{text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// The running agent; killed on drop if the test did not stop it.
struct Agent {
    child: Option<Child>,
    log: PathBuf,
}

impl Agent {
    fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the log contains `needle` `times` times; panics with the log otherwise.
    fn wait_for_log(&mut self, needle: &str, times: usize, limit: Duration) {
        let deadline = Instant::now() + limit;
        loop {
            let log = self.log();
            if log.matches(needle).count() >= times {
                return;
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("agent exited ({status}) before logging {needle:?}:\n{log}");
            }
            assert!(
                Instant::now() < deadline,
                "no {needle:?} (x{times}) within {limit:?}:\n{log}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn is_running(&mut self) -> bool {
        self.child.as_mut().unwrap().try_wait().unwrap().is_none()
    }

    fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([format!("-{name}"), self.pid().to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill -{name} failed");
    }

    /// Sends SIGTERM and waits (bounded) for the exit status.
    fn terminate(mut self, limit: Duration) -> (ExitStatus, Duration, String) {
        let started = Instant::now();
        self.signal("TERM");
        let mut child = self.child.take().unwrap();
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return (status, started.elapsed(), self.log());
            }
            if started.elapsed() > limit {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "agent did not stop within {limit:?} of SIGTERM:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Inodes of the sockets a process holds (`/proc/<pid>/fd/* -> socket:[inode]`).
fn socket_inodes(pid: u32) -> Vec<String> {
    let mut res = Vec::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
    {
        if let Ok(target) = std::fs::read_link(entry.path()) {
            let target = target.to_string_lossy().to_string();
            if let Some(inode) = target
                .strip_prefix("socket:[")
                .and_then(|it| it.strip_suffix(']'))
            {
                res.push(inode.to_string());
            }
        }
    }
    res
}

/// (table, local address, state) of every TCP/UDP socket of the process, from the tables of
/// its network namespace.
fn inet_sockets(pid: u32) -> Vec<(String, String, String)> {
    let inodes = socket_inodes(pid);
    let mut res = Vec::new();
    for table in ["tcp", "tcp6", "udp", "udp6"] {
        let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/net/{table}")) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.len() > 9 && inodes.iter().any(|it| it == fields[9]) {
                res.push((
                    table.to_string(),
                    fields[1].to_string(),
                    fields[3].to_string(),
                ));
            }
        }
    }
    res
}

fn assert_pull_only(pid: u32) {
    let sockets = inet_sockets(pid);
    for (table, local, state) in &sockets {
        assert!(
            !table.starts_with("udp"),
            "the agent holds a UDP socket ({table} {local})"
        );
        // TCP state 0A is LISTEN.
        assert_ne!(state, "0A", "the agent listens on {table} {local}");
    }
}

// ---------------------------------------------------------------------------------------------
// Tests.

#[test]
fn checks_in_over_mtls_listens_on_nothing_and_stops_cleanly_on_sigterm() {
    let setup = Setup::new();
    let server = FakeControlPlane::start(setup.pki.server_config(&setup.pki), Mode::Good);
    let config = setup.write_config(Some(&server.url()), serde_json::json!({}));
    let mut agent = setup.start(&config, "agent.log");
    agent.wait_for_log("checked in", 1, CYCLE_WAIT);
    agent.wait_for_log("cycle done", 1, CYCLE_WAIT);
    for _ in 0..5 {
        assert_pull_only(agent.pid());
        std::thread::sleep(Duration::from_millis(100));
    }
    let checkin = server.received(|it| it.checkins[0].clone());
    assert_eq!(
        (checkin.site_id.as_str(), checkin.host_id.as_str()),
        ("clinic-a", "nixos-1")
    );
    let public = keys::load_public_key(&keys::public_key_path(&setup.path("signing.key"))).unwrap();
    assert_eq!(checkin.agent_key, keys::encode_public_key(&public));
    let (status, took, log) = agent.terminate(Duration::from_secs(20));
    assert_eq!(status.code(), Some(0), "exit status after SIGTERM:\n{log}");
    assert!(log.contains("stopped"), "{log}");
    assert!(took < Duration::from_secs(10), "took {took:?}");
    // Everything recorded reached the server, each record once.
    let store = setup.store();
    let (head, _) = store.head().unwrap().unwrap();
    server.received(|it| {
        assert_eq!(it.stores.len() as u64, head + 1, "records at the server");
        assert!(it.stores.values().all(|n| *n == 1));
    });
    setup.assert_store_verifies(&config);
    // Nothing in the log quotes a key.
    let seed = std::fs::read_to_string(setup.path("signing.key")).unwrap();
    let encoded = seed.split_whitespace().nth(1).unwrap();
    assert!(!log.contains(encoded), "the log shows the signing key");
    let client_key = std::fs::read_to_string(&setup.pki.client_key_file).unwrap();
    let key_line = client_key.lines().nth(1).unwrap();
    assert!(!log.contains(key_line), "the log shows the client key");
}

#[test]
fn a_server_with_a_certificate_from_another_ca_is_refused() {
    let setup = Setup::new();
    let rogue = Pki::new(setup.dir.path(), "rogue");
    // The rogue server accepts our client certificate but shows its own CA's certificate.
    let server = FakeControlPlane::start(rogue.server_config(&setup.pki), Mode::Good);
    let config = setup.write_config(Some(&server.url()), serde_json::json!({}));
    let mut agent = setup.start(&config, "agent.log");
    agent.wait_for_log("check-in failed", 1, CYCLE_WAIT);
    let log = agent.log();
    assert!(
        log.contains("certificate") || log.contains("UnknownIssuer"),
        "the failure does not name the certificate:\n{log}"
    );
    assert_eq!(server.received(|it| it.checkins.len()), 0);
    assert!(agent.is_running());
    let (status, _, log) = agent.terminate(Duration::from_secs(20));
    assert_eq!(status.code(), Some(0), "{log}");
}

#[test]
fn garbage_and_hanging_servers_are_clear_errors_and_nothing_is_lost() {
    let setup = Setup::new();
    let server = FakeControlPlane::start(setup.pki.server_config(&setup.pki), Mode::BadJson);
    let config = setup.write_config(Some(&server.url()), serde_json::json!({}));

    // Answers that are not JSON: a typed error, the agent stays up.
    let mut agent = setup.start(&config, "bad-json.log");
    agent.wait_for_log("check-in failed", 1, CYCLE_WAIT);
    agent.wait_for_log("outbox delivery failed", 1, CYCLE_WAIT);
    assert!(agent.log().contains("malformed answer"), "{}", agent.log());
    assert!(agent.is_running());
    let (status, _, log) = agent.terminate(Duration::from_secs(20));
    assert_eq!(status.code(), Some(0), "{log}");

    // Bytes that are not HTTP.
    server.set_mode(Mode::NotHttp);
    let mut agent = setup.start(&config, "not-http.log");
    agent.wait_for_log("check-in failed", 1, CYCLE_WAIT);
    agent.wait_for_log("outbox delivery failed", 1, CYCLE_WAIT);
    assert!(agent.is_running());
    let (status, _, log) = agent.terminate(Duration::from_secs(20));
    assert_eq!(status.code(), Some(0), "{log}");

    // A server that never answers: the request times out (2 s configured), bounded.
    server.set_mode(Mode::Hang);
    let started = Instant::now();
    let mut agent = setup.start(&config, "hang.log");
    agent.wait_for_log("no answer within 2000 ms", 1, CYCLE_WAIT);
    assert!(started.elapsed() < Duration::from_secs(30));
    assert!(agent.is_running());
    // SIGTERM while a request hangs: the cycle is abandoned at the await, exit 0 at once.
    agent.wait_for_log("checks recorded", 1, CYCLE_WAIT);
    let (status, took, log) = agent.terminate(Duration::from_secs(20));
    assert_eq!(status.code(), Some(0), "{log}");
    assert!(took < Duration::from_secs(5), "stop took {took:?}:\n{log}");
    assert_eq!(server.received(|it| it.stores.len()), 0);

    // The server recovers: every record recorded meanwhile arrives, each exactly once.
    server.set_mode(Mode::Good);
    let mut agent = setup.start(&config, "good.log");
    agent.wait_for_log("cycle done", 1, CYCLE_WAIT);
    let (status, _, log) = agent.terminate(Duration::from_secs(20));
    assert_eq!(status.code(), Some(0), "{log}");
    let store = setup.store();
    let (head, _) = store.head().unwrap().unwrap();
    let mut digests = Vec::new();
    store
        .for_each_since(
            i64::MIN,
            |record| -> Result<(), msp_compliance_agent::evidence::store::StoreError> {
                digests.push(record.digest);
                Ok(())
            },
        )
        .unwrap();
    assert_eq!(digests.len() as u64, head + 1);
    server.received(|it| {
        for digest in &digests {
            assert_eq!(it.stores.get(digest), Some(&1), "{digest} stored once");
        }
        assert_eq!(it.stores.len(), digests.len());
    });
    setup.assert_store_verifies(&config);
}

#[test]
fn offline_evidence_queues_and_arrives_exactly_once_after_reconnecting() {
    let setup = Setup::new();
    // A port that is closed now and served later: bound, remembered, dropped.
    let port = {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let url = format!("https://127.0.0.1:{port}");
    let config = setup.write_config(Some(&url), serde_json::json!({}));
    for run in 0..2 {
        let mut agent = setup.start(&config, &format!("offline-{run}.log"));
        agent.wait_for_log("check-in failed", 1, CYCLE_WAIT);
        agent.wait_for_log("outbox delivery failed", 1, CYCLE_WAIT);
        let (status, _, log) = agent.terminate(Duration::from_secs(20));
        assert_eq!(status.code(), Some(0), "{log}");
    }
    let (queued_head, _) = setup.store().head().unwrap().unwrap();
    assert!(
        queued_head >= 11,
        "two runs record at least 12 check records"
    );
    let Ok(listener) = TcpListener::bind(("127.0.0.1", port)) else {
        eprintln!("port {port} was taken meanwhile; the reconnect half cannot run");
        return;
    };
    let server =
        FakeControlPlane::serve_on(listener, setup.pki.server_config(&setup.pki), Mode::Good);
    let mut agent = setup.start(&config, "online.log");
    agent.wait_for_log("cycle done", 1, CYCLE_WAIT);
    let (status, _, log) = agent.terminate(Duration::from_secs(20));
    assert_eq!(status.code(), Some(0), "{log}");
    let (head, _) = setup.store().head().unwrap().unwrap();
    server.received(|it| {
        assert_eq!(it.stores.len() as u64, head + 1, "every record arrived");
        assert!(it.stores.values().all(|n| *n == 1), "each record once");
    });
    // And again: nothing more to send, nothing sent twice.
    let mut agent = setup.start(&config, "again.log");
    agent.wait_for_log("cycle done", 1, CYCLE_WAIT);
    let (status, _, _) = agent.terminate(Duration::from_secs(20));
    assert_eq!(status.code(), Some(0));
    let (head, _) = setup.store().head().unwrap().unwrap();
    server.received(|it| {
        assert_eq!(it.stores.len() as u64, head + 1);
        assert!(it.stores.values().all(|n| *n == 1));
    });
    setup.assert_store_verifies(&config);
}

#[test]
fn standalone_without_a_control_plane_records_and_ships_to_its_directory() {
    let setup = Setup::new();
    let shipped = setup.path("shipped");
    std::fs::create_dir(&shipped).unwrap();
    let config = setup.write_config(
        None,
        serde_json::json!({
            "outbox": {
                "backoff_initial_ms": 1,
                "backoff_max_ms": 1,
                "directory": { "path": shipped },
            }
        }),
    );
    let mut agent = setup.start(&config, "agent.log");
    agent.wait_for_log("no control_plane configured", 1, CYCLE_WAIT);
    agent.wait_for_log("cycle done", 1, CYCLE_WAIT);
    assert_pull_only(agent.pid());
    let (status, _, log) = agent.terminate(Duration::from_secs(20));
    assert_eq!(status.code(), Some(0), "{log}");
    let files = std::fs::read_dir(shipped.join("clinic-a/nixos-1"))
        .unwrap()
        .count();
    let (head, _) = setup.store().head().unwrap().unwrap();
    assert_eq!(files as u64, head + 1);
    setup.assert_store_verifies(&config);
}

#[test]
fn sighup_reloads_a_good_configuration_and_keeps_the_running_one_otherwise() {
    let setup = Setup::new();
    let config = setup.write_config(None, serde_json::json!({}));
    let mut agent = setup.start(&config, "agent.log");
    agent.wait_for_log("checks recorded", 1, CYCLE_WAIT);
    // A configuration that does not validate: logged, the old one kept.
    std::fs::write(
        &config,
        br#"{"site_id":"clinic-a","host_id":"nixos-1","poll_interval_secs":1}"#,
    )
    .unwrap();
    agent.signal("HUP");
    agent.wait_for_log("reload refused", 1, CYCLE_WAIT);
    assert!(
        agent
            .log()
            .contains("poll_interval_secs: expected 10 to 86400 seconds, found 1"),
        "{}",
        agent.log()
    );
    assert!(agent.is_running());
    // A good one (another baseline file): applied.
    let baseline = setup.path("baseline.json");
    let out = Command::new(AGENT)
        .args(["baseline", "show"])
        .output()
        .unwrap();
    std::fs::write(&baseline, &out.stdout).unwrap();
    setup.write_config(None, serde_json::json!({ "baseline_file": baseline }));
    agent.signal("HUP");
    agent.wait_for_log("reloaded the configuration and the baseline", 1, CYCLE_WAIT);
    let (status, _, log) = agent.terminate(Duration::from_secs(20));
    assert_eq!(status.code(), Some(0), "{log}");
}

#[test]
fn a_bad_configuration_or_missing_key_stops_at_startup_with_status_2() {
    let setup = Setup::new();
    let config = setup.path("bad.json");
    std::fs::write(
        &config,
        br#"{"site_id":"clinic-a","host_id":"nixos-1","control_plane":{"url":"http://127.0.0.1:1","server_ca_file":"/ca.pem","client_certificate_file":"/c.pem"}}"#,
    )
    .unwrap();
    let out = Command::new(AGENT)
        .args(["run", "--config"])
        .arg(&config)
        .env_remove("CREDENTIALS_DIRECTORY")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("control_plane.url: expected an https:// URL"),
        "{stderr}"
    );
    let config = setup.path("nokey.json");
    std::fs::write(
        &config,
        format!(
            r#"{{"site_id":"clinic-a","host_id":"nixos-1","state_dir":{:?}}}"#,
            setup.state_dir()
        ),
    )
    .unwrap();
    let out = Command::new(AGENT)
        .args(["run", "--config"])
        .arg(&config)
        .env_remove("CREDENTIALS_DIRECTORY")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no signing key"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// An order for this host, signed with `key`.
fn order(
    key: &ed25519_dalek::SigningKey,
    id: &str,
    host: &str,
    action: &str,
    params: serde_json::Value,
) -> Envelope {
    let now = jiff::Timestamp::now();
    let mut nonce = [0u8; 16];
    getrandom::fill(&mut nonce).unwrap();
    Order {
        v: 1,
        order_id: id.to_string(),
        nonce: hex::encode(nonce),
        site_id: "clinic-a".to_string(),
        host_id: host.to_string(),
        action: action.to_string(),
        params,
        issued_at: now,
        expires_at: now + jiff::SignedDuration::from_mins(10),
        disruptive: false,
        dry_run: false,
    }
    .sign(key)
    .unwrap()
}

/// The results the server got, verified with the agent's key, by order id.
fn verified_results(
    setup: &Setup,
    server: &FakeControlPlane,
) -> BTreeMap<String, Vec<OrderResult>> {
    let public = keys::load_public_key(&keys::public_key_path(&setup.path("signing.key"))).unwrap();
    let mut res: BTreeMap<String, Vec<OrderResult>> = BTreeMap::new();
    for envelope in server.received(|it| it.results.clone()) {
        let verified = dsse::verify_typed(&envelope, RESULT_PAYLOAD_TYPE, &[public])
            .expect("results are signed with the agent's evidence key");
        let result: OrderResult = serde_json::from_slice(verified.payload()).unwrap();
        res.entry(result.order_id.clone()).or_default().push(result);
    }
    res
}

#[test]
fn orders_run_through_the_guardrails_and_every_result_is_posted_once() {
    let setup = Setup::new();
    keys::keygen(&setup.path("order.key")).unwrap();
    keys::keygen(&setup.path("forger.key")).unwrap();
    let order_key = keys::load_signing_key(&setup.path("order.key")).unwrap();
    let forger = keys::load_signing_key(&setup.path("forger.key")).unwrap();
    let server = FakeControlPlane::start(setup.pki.server_config(&setup.pki), Mode::RefuseResults);
    let orders = vec![
        order(
            &order_key,
            "o-checks",
            "nixos-1",
            "run-checks",
            serde_json::json!({"only": ["firewall"]}),
        ),
        order(
            &order_key,
            "o-collect",
            "nixos-1",
            "collect-evidence",
            serde_json::json!({"since_seq": 0, "until_seq": 3}),
        ),
        order(
            &forger,
            "o-forged",
            "nixos-1",
            "run-checks",
            serde_json::json!({}),
        ),
        order(
            &order_key,
            "o-elsewhere",
            "nixos-2",
            "run-checks",
            serde_json::json!({}),
        ),
        order(
            &order_key,
            "o-reboot",
            "nixos-1",
            "reboot",
            serde_json::json!({}),
        ),
    ];
    server.received.lock().unwrap().orders = orders;
    let config = setup.write_config(
        Some(&server.url()),
        serde_json::json!({
            "orders": { "order_public_key_files": [keys::public_key_path(&setup.path("order.key"))] }
        }),
    );

    // The server cannot store results: they are kept, the orders are not run twice.
    let mut agent = setup.start(&config, "refused.log");
    agent.wait_for_log("order ran", 2, CYCLE_WAIT);
    agent.wait_for_log("an order result was refused", 5, CYCLE_WAIT);
    let (status, _, log) = agent.terminate(Duration::from_secs(20));
    assert_eq!(status.code(), Some(0), "{log}");
    assert!(server.received(|it| it.results.is_empty()));

    // The server recovers: the queued results arrive, one per order; nothing runs again.
    server.set_mode(Mode::Good);
    let mut agent = setup.start(&config, "good.log");
    agent.wait_for_log("cycle done", 1, CYCLE_WAIT);
    let (status, _, log) = agent.terminate(Duration::from_secs(20));
    assert_eq!(status.code(), Some(0), "{log}");
    assert!(!log.contains("order ran"), "an order ran again:\n{log}");
    let results = verified_results(&setup, &server);
    assert_eq!(
        results.keys().map(String::as_str).collect::<Vec<_>>(),
        [
            "o-checks",
            "o-collect",
            "o-elsewhere",
            "o-forged",
            "o-reboot"
        ]
    );
    assert!(results.values().all(|it| it.len() == 1), "{results:#?}");
    let one = |id: &str| results[id][0].clone();

    let checks = one("o-checks");
    assert_eq!(checks.outcome, Outcome::Executed, "{checks:#?}");
    assert_eq!(checks.output["checks"], serde_json::json!(["firewall"]));
    assert!(checks.evidence_seq.is_some());

    let collect = one("o-collect");
    assert_eq!(collect.outcome, Outcome::Executed, "{collect:#?}");
    assert_eq!(collect.output["records"], 4);
    assert_eq!(
        (
            collect.output["first_seq"].clone(),
            collect.output["last_seq"].clone()
        ),
        (0.into(), 3.into())
    );
    let file = PathBuf::from(collect.output["file"].as_str().unwrap());
    assert_eq!(file, setup.state_dir().join("exports/o-collect.jsonl"));
    let bytes = std::fs::read(&file).unwrap();
    use sha2::Digest;
    assert_eq!(
        collect.output["sha256"],
        hex::encode(sha2::Sha256::digest(&bytes))
    );
    let store = setup.store();
    let expected: Vec<u8> = store
        .records_from(0, 4)
        .unwrap()
        .iter()
        .flat_map(|it| [it.envelope.clone(), b"\n".to_vec()].concat())
        .collect();
    assert_eq!(
        bytes, expected,
        "the export holds the stored bytes of seq 0..=3"
    );

    for (id, code) in [
        ("o-forged", RefusalCode::UnknownKey),
        ("o-elsewhere", RefusalCode::WrongHost),
        ("o-reboot", RefusalCode::ActionNotAllowed),
    ] {
        let result = one(id);
        assert_eq!(
            (result.outcome, result.code),
            (Outcome::Refused, Some(code)),
            "{result:#?}"
        );
        assert!(
            result.evidence_seq.is_some(),
            "a refusal is evidence: {result:#?}"
        );
    }
    // Every result's evidence record is in the chain, which verifies.
    let (head, _) = store.head().unwrap().unwrap();
    assert!(
        results
            .values()
            .all(|it| it[0].evidence_seq.unwrap() <= head)
    );
    setup.assert_store_verifies(&config);
}

/// `VmRSS`, `RssAnon`, `RssFile` (KiB) and utime+stime (clock ticks) of a process.
fn usage(pid: u32) -> (u64, u64, u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| -> u64 {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|it| it.parse().ok())
            .unwrap_or(0)
    };
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name (which may hold spaces) start at index 2 (`state`).
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    (field("VmRSS:"), field("RssAnon:"), field("RssFile:"), ticks)
}

/// Memory and CPU of the daemon between cycles, printed for the record
/// (`cargo test --release --test daemon idle -- --nocapture`); asserts only that memory does not
/// grow from cycle to cycle beyond allocator noise.
#[test]
fn idle_memory_stays_flat_between_cycles() {
    let setup = Setup::new();
    let server = FakeControlPlane::start(setup.pki.server_config(&setup.pki), Mode::Good);
    let config = setup.write_config(Some(&server.url()), serde_json::json!({}));
    let mut agent = setup.start(&config, "agent.log");
    let mut samples = Vec::new();
    for cycle in 1..=3 {
        agent.wait_for_log("cycle done", cycle, CYCLE_WAIT);
        // Between cycles: the next one is 9 to 11 s away.
        std::thread::sleep(Duration::from_secs(2));
        let sample = usage(agent.pid());
        eprintln!(
            "after cycle {cycle}: VmRSS {} KiB (anon {} KiB, file {} KiB), cpu {} ticks",
            sample.0, sample.1, sample.2, sample.3
        );
        samples.push(sample);
    }
    let (status, _, log) = agent.terminate(Duration::from_secs(20));
    assert_eq!(status.code(), Some(0), "{log}");
    let growth = samples[2].1.saturating_sub(samples[0].1);
    assert!(
        growth < 2048,
        "anonymous memory grew {growth} KiB over two idle cycles: {samples:?}"
    );
}

/// SIGTERM sent the moment a cycle ends, while the daemon hands over to its next image: it is
/// never lost (it would leave systemd waiting for its stop timeout). Each round stops the
/// daemon right after its first `cycle done`.
#[test]
fn sigterm_at_the_end_of_a_cycle_is_never_lost() {
    let setup = Setup::new();
    let server = FakeControlPlane::start(setup.pki.server_config(&setup.pki), Mode::Good);
    let config = setup.write_config(Some(&server.url()), serde_json::json!({}));
    for round in 0..8 {
        let mut agent = setup.start(&config, &format!("round-{round}.log"));
        agent.wait_for_log("cycle done", 1, CYCLE_WAIT);
        let (status, took, log) = agent.terminate(Duration::from_secs(20));
        assert_eq!(status.code(), Some(0), "round {round}:\n{log}");
        assert!(
            took < Duration::from_secs(5),
            "round {round}: stop took {took:?}:\n{log}"
        );
    }
}
