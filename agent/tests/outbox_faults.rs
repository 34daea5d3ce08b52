//! Outbox fault tests: the S3 sink against a local fake server that refuses, hangs or answers
//! garbage, the directory sink with its disk gone, and the `queue` commands end to end.
//!
//! What must hold: the outbox backs off (exponentially, jittered, capped), keeps every record,
//! and once the sink is healthy again delivers everything, each record stored once. The fake
//! server listens on 127.0.0.1 only, on a port the OS picks, and stops with its guard.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use ed25519_dalek::SigningKey;
use jiff::Timestamp;
use msp_compliance_agent::evidence::keys;
use msp_compliance_agent::evidence::store::Store;
use msp_compliance_agent::outbox::directory::DirectorySink;
use msp_compliance_agent::outbox::s3::{S3Settings, S3Sink};
use msp_compliance_agent::outbox::{self, Failure, Outcome, Policy, Sink, SinkReport};
use msp_compliance_agent::phi::Scrubber;
use msp_compliance_protocol::evidence::{Author, Draft, RecordKind};
use serde_json::json;
use zeroize::Zeroizing;

/// How the fake server answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// Reads the request and never answers.
    Hang,
    /// Answers bytes that are not HTTP.
    Garbage,
    /// Answers 503 with an S3 `SlowDown` error document.
    Unavailable,
    /// Behaves like S3 with `If-None-Match` support.
    Good,
}

#[derive(Default)]
struct Objects {
    /// Key → stored bytes.
    stored: BTreeMap<String, Vec<u8>>,
    /// Key → PUTs that stored it (must end at 1 for every key).
    stores: BTreeMap<String, usize>,
    /// Key → PUTs refused with 412 because the key existed.
    preconditions: BTreeMap<String, usize>,
}

/// A fake S3 endpoint on 127.0.0.1; stops on drop.
struct FakeS3 {
    port: u16,
    mode: Arc<Mutex<Mode>>,
    objects: Arc<Mutex<Objects>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl FakeS3 {
    fn start(mode: Mode) -> FakeS3 {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let mode = Arc::new(Mutex::new(mode));
        let objects = Arc::new(Mutex::new(Objects::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (mode, objects, stop) = (mode.clone(), objects.clone(), stop.clone());
            std::thread::spawn(move || {
                for stream in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        return;
                    }
                    let Ok(stream) = stream else { continue };
                    let (mode, objects, stop) = (mode.clone(), objects.clone(), stop.clone());
                    std::thread::spawn(move || serve(stream, &mode, &objects, &stop));
                }
            })
        };
        FakeS3 {
            port,
            mode,
            objects,
            stop,
            thread: Some(thread),
        }
    }

    fn set(&self, mode: Mode) {
        *self.mode.lock().unwrap() = mode;
    }

    fn sink(&self, request_timeout: Duration) -> S3Sink {
        S3Sink::new(S3Settings {
            endpoint: format!("http://127.0.0.1:{}", self.port),
            bucket: "evidence".into(),
            region: "us-east-1".into(),
            prefix: "worm/".into(),
            path_style: true,
            access_key_id: "fake".into(),
            secret_access_key: Zeroizing::new("fake-secret".into()),
            connect_timeout: Duration::from_secs(2),
            request_timeout,
        })
        .unwrap()
    }
}

impl Drop for FakeS3 {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn serve(stream: TcpStream, mode: &Mutex<Mode>, objects: &Mutex<Objects>, stop: &AtomicBool) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut request_line = String::new();
    if reader.read_line(&mut request_line).is_err() || request_line.is_empty() {
        return;
    }
    let mut headers = BTreeMap::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).is_err() || line.is_empty() {
            return;
        }
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            headers.insert(name.trim().to_ascii_lowercase(), value.trim().to_string());
        }
    }
    let length: usize = headers
        .get("content-length")
        .and_then(|it| it.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0; length];
    if reader.read_exact(&mut body).is_err() {
        return;
    }
    let mut parts = request_line.split_whitespace();
    let method = parts.next().unwrap_or("").to_string();
    let path = parts.next().unwrap_or("").to_string();
    let key = path.strip_prefix("/evidence/").unwrap_or(&path).to_string();
    let mut stream = stream;
    let current = *mode.lock().unwrap();
    match current {
        Mode::Hang => {
            // Hold the connection without answering, until the test ends.
            let started = Instant::now();
            while !stop.load(Ordering::SeqCst) && started.elapsed() < Duration::from_secs(20) {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        Mode::Garbage => {
            let _ = stream.write_all(b"\x00\x17\xffSSH-2.0-not-http\r\n\r\n{{{garbage");
        }
        Mode::Unavailable => respond(
            &mut stream,
            "503 Service Unavailable",
            b"<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>",
        ),
        Mode::Good => {
            let mut objects = objects.lock().unwrap();
            match method.as_str() {
                "PUT" => {
                    // Checked like S3 would: a lock needs a content checksum.
                    assert!(headers.contains_key("content-md5"));
                    assert_eq!(
                        headers.get("x-amz-object-lock-mode").map(String::as_str),
                        Some("COMPLIANCE")
                    );
                    if objects.stored.contains_key(&key)
                        && headers.get("if-none-match").map(String::as_str) == Some("*")
                    {
                        *objects.preconditions.entry(key).or_default() += 1;
                        drop(objects);
                        respond(
                            &mut stream,
                            "412 Precondition Failed",
                            b"<Error><Code>PreconditionFailed</Code><Message>At least one of the pre-conditions you specified did not hold</Message></Error>",
                        );
                    } else {
                        objects.stored.insert(key.clone(), body);
                        *objects.stores.entry(key).or_default() += 1;
                        drop(objects);
                        respond(&mut stream, "200 OK", b"");
                    }
                }
                "GET" => match objects.stored.get(&key).cloned() {
                    Some(bytes) => {
                        drop(objects);
                        respond(&mut stream, "200 OK", &bytes);
                    }
                    None => {
                        drop(objects);
                        respond(
                            &mut stream,
                            "404 Not Found",
                            b"<Error><Code>NoSuchKey</Code><Message>no</Message></Error>",
                        );
                    }
                },
                _ => respond(&mut stream, "405 Method Not Allowed", b""),
            }
        }
    }
}

fn respond(stream: &mut TcpStream, status: &str, body: &[u8]) {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Length: {}\r\nContent-Type: application/xml\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let _ = stream.write_all(head.as_bytes());
    let _ = stream.write_all(body);
}

fn author() -> Author {
    Author {
        site_id: Some("clinic-a".into()),
        host_id: "nixos-1".into(),
        agent_version: "0.1.0".into(),
    }
}

fn signing_key() -> SigningKey {
    SigningKey::from_bytes(&[9; 32])
}

fn fill(store: &mut Store, n: u64, at: Timestamp) {
    let drafts: Vec<Draft> = (0..n)
        .map(|idx| Draft {
            kind: RecordKind::Check,
            baseline: None,
            controls: vec!["164.312(b)".into()],
            body: json!({ "check": "firewall", "n": idx, "status": "pass" }),
        })
        .collect();
    store
        .append(&drafts, &author(), at, &signing_key())
        .unwrap();
}

/// A test clock: moves only when told.
struct Clock(AtomicI64);

impl Clock {
    fn now(&self) -> Timestamp {
        Timestamp::from_millisecond(self.0.load(Ordering::SeqCst)).unwrap()
    }
    fn set(&self, ms: i64) {
        self.0.store(ms, Ordering::SeqCst);
    }
}

fn drain(
    store: &mut Store,
    sinks: &[Box<dyn Sink>],
    policy: &Policy,
    clock: &Clock,
) -> Vec<SinkReport> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let scrubber = Scrubber::new(b"fault test token key");
    runtime
        .block_on(outbox::drain(
            store,
            sinks,
            policy,
            &scrubber,
            &author(),
            &signing_key(),
            &|| clock.now(),
        ))
        .unwrap()
}

fn policy() -> Policy {
    Policy {
        backoff_initial: Duration::from_millis(100),
        backoff_max: Duration::from_millis(800),
        max_backlog_records: 1_000_000,
        max_backlog_age: Duration::from_secs(72 * 3600),
        batch_records: 16,
    }
}

#[test]
fn a_refusing_hanging_or_garbage_sink_backs_off_keeps_everything_and_recovers_once() {
    let server = FakeS3::start(Mode::Unavailable);
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open(&dir.path().join("evidence.sqlite")).unwrap();
    let start = 1_800_000_000_000;
    fill(&mut store, 40, Timestamp::from_millisecond(start).unwrap());
    let sinks: Vec<Box<dyn Sink>> = vec![Box::new(server.sink(Duration::from_millis(300)))];
    let name = sinks[0].name().to_string();
    let clock = Clock(AtomicI64::new(start));
    let policy = policy();
    let modes = [
        Mode::Unavailable,
        Mode::Hang,
        Mode::Garbage,
        Mode::Unavailable,
        Mode::Hang,
        Mode::Garbage,
        Mode::Unavailable,
        Mode::Garbage,
    ];
    let mut delays = Vec::new();
    for (idx, mode) in modes.iter().enumerate() {
        server.set(*mode);
        let failures = idx as u32 + 1;
        let reports = drain(&mut store, &sinks, &policy, &clock);
        let Outcome::Failed {
            failure: Failure::Sink(message),
            next_attempt_at_ms,
        } = &reports[0].outcome
        else {
            panic!("{mode:?}: expected a sink failure, got {:?}", reports[0]);
        };
        match mode {
            Mode::Unavailable => assert!(message.contains("HTTP 503 SlowDown"), "{message}"),
            Mode::Hang => assert!(message.contains("no answer within 300 ms"), "{message}"),
            Mode::Garbage => assert!(
                message.starts_with("PUT worm/clinic-a/nixos-1/"),
                "{message}"
            ),
            Mode::Good => unreachable!(),
        }
        assert_eq!(reports[0].delivered, 0);
        let state = store.sink(&name).unwrap();
        assert_eq!(state.attempts, failures);
        assert_eq!(state.last_error.as_deref(), Some(message.as_str()));
        assert_eq!(state.delivered_seq, -1);
        let delay = next_attempt_at_ms - clock.now().as_millisecond();
        let full = (100i64 << (failures - 1)).min(800);
        assert!(
            (full / 2..=full).contains(&delay),
            "failure {failures}: delay {delay} outside [{}, {full}]",
            full / 2
        );
        delays.push(delay);
        // Not retried before it is due.
        clock.set(next_attempt_at_ms - 1);
        let reports = drain(&mut store, &sinks, &policy, &clock);
        assert!(matches!(reports[0].outcome, Outcome::NotDue { .. }));
        clock.set(*next_attempt_at_ms);
    }
    // Grows, then stays at the cap with jitter.
    assert!(delays[3] > delays[0]);
    let capped = &delays[4..];
    assert!(
        capped.iter().all(|it| (400..=800).contains(it)),
        "{delays:?}"
    );
    assert!(
        capped.windows(2).any(|it| it[0] != it[1]),
        "no jitter: {delays:?}"
    );
    assert_eq!(store.len().unwrap(), 40, "nothing dropped while failing");
    assert!(server.objects.lock().unwrap().stored.is_empty());

    server.set(Mode::Good);
    let reports = drain(&mut store, &sinks, &policy, &clock);
    assert_eq!(reports[0].outcome, Outcome::CaughtUp);
    assert_eq!(reports[0].delivered, 40);
    let state = store.sink(&name).unwrap();
    assert_eq!(
        (state.delivered_seq, state.attempts, state.last_error),
        (39, 0, None)
    );
    let objects = server.objects.lock().unwrap();
    assert_eq!(objects.stored.len(), 40);
    assert!(
        objects.stores.values().all(|it| *it == 1),
        "each record stored once"
    );
    for record in store.records_from(0, 100).unwrap() {
        let key = format!(
            "worm/clinic-a/nixos-1/{:020}-{}.json",
            record.seq,
            &record.digest["sha256:".len()..]
        );
        assert_eq!(objects.stored.get(&key), Some(&record.envelope), "{key}");
    }
}

#[test]
fn redelivery_after_a_crash_before_the_cursor_was_saved_is_harmless() {
    let server = FakeS3::start(Mode::Good);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    std::fs::create_dir(&out).unwrap();
    let mut store = Store::open(&dir.path().join("evidence.sqlite")).unwrap();
    let start = 1_800_000_000_000;
    fill(&mut store, 30, Timestamp::from_millisecond(start).unwrap());
    let s3 = server.sink(Duration::from_secs(5));
    let directory = DirectorySink::new(out.clone());
    // Deliver the first 20 as the crashed run did, without saving the cursor.
    let scrubber = Scrubber::new(b"fault test token key");
    let early: Vec<_> = store
        .records_from(0, 20)
        .unwrap()
        .iter()
        .map(|it| outbox::prepare(it, &scrubber).unwrap())
        .collect();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    assert_eq!(runtime.block_on(s3.deliver(&early)).delivered, 20);
    assert_eq!(directory.deliver_blocking(&early).delivered, 20);
    let sinks: Vec<Box<dyn Sink>> = vec![Box::new(directory), Box::new(s3)];
    let clock = Clock(AtomicI64::new(start));
    let reports = drain(&mut store, &sinks, &policy(), &clock);
    for report in &reports {
        assert_eq!(report.outcome, Outcome::CaughtUp, "{report:?}");
        assert_eq!(report.delivered, 30);
    }
    let objects = server.objects.lock().unwrap();
    assert_eq!(objects.stored.len(), 30);
    assert!(objects.stores.values().all(|it| *it == 1));
    assert_eq!(
        objects.preconditions.len(),
        20,
        "the redelivered ones met If-None-Match"
    );
    let files = std::fs::read_dir(out.join("clinic-a/nixos-1"))
        .unwrap()
        .count();
    assert_eq!(files, 30);
}

#[test]
fn an_s3_object_with_other_bytes_under_the_key_is_a_conflict_not_a_success() {
    let server = FakeS3::start(Mode::Good);
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open(&dir.path().join("evidence.sqlite")).unwrap();
    fill(
        &mut store,
        2,
        Timestamp::from_second(1_800_000_000).unwrap(),
    );
    let scrubber = Scrubber::new(b"fault test token key");
    let record = outbox::prepare(&store.records_from(1, 1).unwrap()[0], &scrubber).unwrap();
    let sink = server.sink(Duration::from_secs(5));
    server
        .objects
        .lock()
        .unwrap()
        .stored
        .insert(sink.object_key(&record), b"forged".to_vec());
    let sinks: Vec<Box<dyn Sink>> = vec![Box::new(sink)];
    let clock = Clock(AtomicI64::new(1_800_000_000_000));
    let reports = drain(&mut store, &sinks, &policy(), &clock);
    assert_eq!(reports[0].delivered, 1);
    let Outcome::Failed { failure, .. } = &reports[0].outcome else {
        panic!("{:?}", reports[0]);
    };
    assert!(
        failure
            .message()
            .contains("already holds different content"),
        "{failure:?}"
    );
}

fn agent(args: &[&str]) -> (i32, String, String) {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_msp-compliance-agent"))
        .args(args)
        .env_remove("CREDENTIALS_DIRECTORY")
        .output()
        .unwrap();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn write_config(dir: &Path, outbox: serde_json::Value) -> std::path::PathBuf {
    let key_path = dir.join("signing.key");
    if !key_path.exists() {
        keys::write_new(&key_path, &signing_key()).unwrap();
    }
    let path = dir.join("agent.json");
    let config = json!({
        "site_id": "clinic-a",
        "host_id": "nixos-1",
        "state_dir": dir.join("state"),
        "evidence": { "signing_key_file": key_path },
        "outbox": outbox,
    });
    std::fs::write(&path, serde_json::to_vec_pretty(&config).unwrap()).unwrap();
    path
}

#[test]
fn queue_status_and_drain_report_backlog_delivery_and_errors() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    std::fs::create_dir(&state).unwrap();
    let out = dir.path().join("usb");
    std::fs::create_dir(&out).unwrap();
    let config = write_config(
        dir.path(),
        json!({ "directory": { "path": out }, "max_backlog_records": 10 }),
    );
    let config = config.to_str().unwrap();
    let (code, stdout, stderr) = agent(&["queue", "status", "--config", config]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(stdout.contains("no evidence store yet"), "{stdout}");

    {
        let mut store = Store::open(&state.join("evidence.sqlite")).unwrap();
        fill(&mut store, 5, Timestamp::now());
    }
    let (code, stdout, stderr) = agent(&["queue", "status", "--config", config]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    let sink = format!("sink directory:{}", out.display());
    assert!(stdout.contains(&sink), "{stdout}");
    assert!(stdout.contains("chain head: seq 4 sha256:"), "{stdout}");
    assert!(
        stdout.contains("backlog:      5 records (nothing delivered yet)"),
        "{stdout}"
    );
    assert!(
        stdout.contains("oldest:       seq 0, recorded "),
        "{stdout}"
    );
    assert!(stdout.contains("last error:   -"), "{stdout}");

    let (code, stdout, stderr) = agent(&["queue", "drain", "--config", config]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(
        stdout.contains("delivered 5 records (seq 0..=4); caught up"),
        "{stdout}"
    );
    assert_eq!(
        std::fs::read_dir(out.join("clinic-a/nixos-1"))
            .unwrap()
            .count(),
        5
    );
    let (_, stdout, _) = agent(&["queue", "status", "--config", config]);
    assert!(
        stdout.contains("backlog:      0 records (delivered up to seq 4)"),
        "{stdout}"
    );
    assert!(!stdout.contains("last success: -"), "{stdout}");

    // The disk goes away: the drain fails loudly, keeps everything and backs off.
    std::fs::rename(&out, dir.path().join("usb-unplugged")).unwrap();
    {
        let mut store = Store::open(&state.join("evidence.sqlite")).unwrap();
        fill(&mut store, 12, Timestamp::now());
    }
    let (code, stdout, _) = agent(&["queue", "drain", "--config", config]);
    assert_eq!(code, 1, "{stdout}");
    assert!(stdout.contains("FAILED: "), "{stdout}");
    assert!(
        stdout.contains("OVERFLOW: 12 undelivered records"),
        "{stdout}"
    );
    let (_, stdout, _) = agent(&["queue", "status", "--config", config]);
    assert!(
        stdout.contains("attempts:     1 failed since the last success"),
        "{stdout}"
    );
    assert!(stdout.contains("No such file or directory"), "{stdout}");
    assert!(
        stdout.contains("overflow:     alarm recorded at"),
        "{stdout}"
    );
    assert!(
        stdout.contains("chain head: seq 17 "),
        "the alarm is a record: {stdout}"
    );
}

#[test]
fn queue_drain_without_a_signing_key_says_what_is_missing() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    std::fs::create_dir(&state).unwrap();
    let out = dir.path().join("out");
    std::fs::create_dir(&out).unwrap();
    {
        let mut store = Store::open(&state.join("evidence.sqlite")).unwrap();
        fill(&mut store, 1, Timestamp::now());
    }
    let path = dir.path().join("agent.json");
    let config = json!({
        "site_id": "clinic-a",
        "host_id": "nixos-1",
        "state_dir": state,
        "outbox": { "directory": { "path": out } },
    });
    std::fs::write(&path, serde_json::to_vec(&config).unwrap()).unwrap();
    let (code, stdout, stderr) = agent(&["queue", "drain", "--config", path.to_str().unwrap()]);
    assert_eq!(code, 2, "{stdout}{stderr}");
    assert!(stderr.contains("no signing key"), "{stderr}");
}
