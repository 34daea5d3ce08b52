//! API v1 against a real `msp-mcp serve` child on 127.0.0.1 (a port the OS picked, read from
//! its first line of stdout), with real enrollment bundles, mTLS and a reqwest client, the way
//! an agent talks to it.
//!
//! Proves: the first check-in pins the agent key and a second key is refused; orders reach only
//! their host, signed, until a signed result arrives; evidence batches verify, are idempotent,
//! and gaps, conflicts and tampering are rejected with reasons; one host cannot act as another;
//! certificates of another CA, or none, fail the handshake; oversized, malformed and slow
//! requests end in bounded, typed answers; checkpoints; `evidence verify`/`export` after an
//! upload; graceful shutdown on SIGTERM.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use ed25519_dalek::SigningKey;
use jiff::Timestamp;
use msp_compliance_protocol::api::{
    ApiError, CheckIn, CheckInResponse, CheckpointResponse, ComplianceSummary, ErrorCode,
    EvidenceBatch, EvidenceBatchResponse, RecordStatus,
};
use msp_compliance_protocol::dsse::{self, Envelope};
use msp_compliance_protocol::evidence::{Author, Draft, Position, RecordKind, seal};
use msp_compliance_protocol::order::{
    ORDER_PAYLOAD_TYPE, Order, OrderResult, Outcome, RESULT_PAYLOAD_TYPE,
};
use reqwest::StatusCode;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde_json::json;

const BINARY: &str = env!("CARGO_BIN_EXE_msp-mcp");
/// Longest wait for anything the server should do promptly.
const PROMPT: Duration = Duration::from_secs(20);

/// A state directory made by `msp-mcp init`.
struct Fixture {
    dir: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let fixture = Fixture { dir };
        let out = fixture.cli(&["init"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        fixture
    }

    fn state(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    fn cli(&self, args: &[&str]) -> Output {
        Command::new(BINARY)
            .arg("--state-dir")
            .arg(self.state())
            .args(args)
            .output()
            .unwrap()
    }

    fn cli_ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Enrolls a host; returns its bundle directory.
    fn enroll(&self, site: &str, host: &str) -> PathBuf {
        let out = self.dir.path().join(format!("bundle-{site}-{host}"));
        self.cli_ok(&[
            "enroll",
            "--site",
            site,
            "--host",
            host,
            "--out",
            out.to_str().unwrap(),
        ]);
        out
    }

    fn serve(&self, extra: &[&str]) -> Server {
        let mut child = Command::new(BINARY)
            .arg("--state-dir")
            .arg(self.state())
            .args(["serve", "--listen", "127.0.0.1:0"])
            .args(extra)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (sender, receiver) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = sender.send(line);
        });
        let child = KillOnDrop(child);
        let line = receiver
            .recv_timeout(PROMPT)
            .expect("serve prints its address");
        let address: SocketAddr = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .parse()
            .unwrap();
        Server { child, address }
    }
}

struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

struct Server {
    child: KillOnDrop,
    address: SocketAddr,
}

impl Server {
    fn url(&self, path: &str) -> String {
        format!("https://localhost:{}{path}", self.address.port())
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn roots(ca_pem: &Path) -> rustls::RootCertStore {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca_pem).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    roots
}

/// TLS as an agent configures it: the bundle's CA as the only root, its client certificate.
fn tls_config(bundle: &Path, server_ca: &Path) -> rustls::ClientConfig {
    let chain = CertificateDer::pem_file_iter(bundle.join("client.pem"))
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_file(bundle.join("client.key")).unwrap();
    rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots(server_ca))
        .with_client_auth_cert(chain, key)
        .unwrap()
}

fn client_for(server: &Server, config: rustls::ClientConfig) -> reqwest::Client {
    reqwest::Client::builder()
        .tls_backend_preconfigured(config)
        .resolve("localhost", server.address)
        .timeout(PROMPT)
        .build()
        .unwrap()
}

fn client(server: &Server, bundle: &Path) -> reqwest::Client {
    client_for(server, tls_config(bundle, &bundle.join("ca.pem")))
}

async fn post(
    client: &reqwest::Client,
    server: &Server,
    path: &str,
    body: Vec<u8>,
) -> (StatusCode, Vec<u8>) {
    let response = client
        .post(server.url(path))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    let status = response.status();
    (status, response.bytes().await.unwrap().to_vec())
}

async fn post_json<T: serde::Serialize>(
    client: &reqwest::Client,
    server: &Server,
    path: &str,
    value: &T,
) -> (StatusCode, Vec<u8>) {
    post(client, server, path, serde_json::to_vec(value).unwrap()).await
}

fn api_error(status: StatusCode, body: &[u8], expected: StatusCode, code: ErrorCode) -> ApiError {
    assert_eq!(status, expected, "{}", String::from_utf8_lossy(body));
    let error: ApiError = serde_json::from_slice(body).unwrap();
    assert_eq!(error.code, code, "{}", error.message);
    error
}

fn agent_key(seed: u8) -> SigningKey {
    SigningKey::from_bytes(&[seed; 32])
}

fn checkin(site: &str, host: &str, key: &SigningKey) -> CheckIn {
    CheckIn {
        site_id: site.into(),
        host_id: host.into(),
        agent_version: "0.1.0".into(),
        agent_key: STANDARD.encode(key.verifying_key().as_bytes()),
        summary: ComplianceSummary {
            pass: 4,
            fail: 1,
            unknown: 1,
            ..ComplianceSummary::default()
        },
        chain_head: None,
        agent_time: Timestamp::now(),
    }
}

async fn check_in(
    client: &reqwest::Client,
    server: &Server,
    site: &str,
    host: &str,
    key: &SigningKey,
) -> CheckInResponse {
    let (status, body) = post_json(client, server, "/v1/checkin", &checkin(site, host, key)).await;
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    serde_json::from_slice(&body).unwrap()
}

/// A chain of `n` records from seq 0, sealed as the agent seals them.
fn chain(site: &str, host: &str, key: &SigningKey, n: u64) -> Vec<Envelope> {
    let author = Author {
        site_id: Some(site.into()),
        host_id: host.into(),
        agent_version: "0.1.0".into(),
    };
    let mut res: Vec<Envelope> = Vec::new();
    for seq in 0..n {
        let prev = res.last().map(dsse::digest);
        let draft = Draft {
            kind: RecordKind::Check,
            baseline: None,
            controls: vec!["164.312(b)".into()],
            body: json!({"check": "logging", "status": "pass", "n": seq}),
        };
        res.push(
            seal(
                &draft,
                &Position { seq, prev },
                &author,
                Timestamp::now(),
                key,
            )
            .unwrap(),
        );
    }
    res
}

async fn upload(
    client: &reqwest::Client,
    server: &Server,
    envelopes: &[Envelope],
) -> EvidenceBatchResponse {
    let batch = EvidenceBatch {
        envelopes: envelopes.to_vec(),
    };
    let (status, body) = post_json(client, server, "/v1/evidence", &batch).await;
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    serde_json::from_slice(&body).unwrap()
}

fn statuses(response: &EvidenceBatchResponse) -> Vec<RecordStatus> {
    response.results.iter().map(|it| it.status).collect()
}

#[tokio::test]
async fn the_first_check_in_pins_the_agent_key_and_another_key_is_refused() {
    let fixture = Fixture::new();
    let bundle = fixture.enroll("clinic-a", "nixos-1");
    let server = fixture.serve(&[]);
    let client = client(&server, &bundle);
    let key = agent_key(1);
    let answer = check_in(&client, &server, "clinic-a", "nixos-1", &key).await;
    assert!(answer.orders.is_empty());
    assert_eq!(answer.evidence_head, None);
    let skew = Timestamp::now().duration_since(answer.server_time).abs();
    assert!(skew < jiff::SignedDuration::from_secs(60), "{skew:?}");

    let (status, body) = post_json(
        &client,
        &server,
        "/v1/checkin",
        &checkin("clinic-a", "nixos-1", &agent_key(2)),
    )
    .await;
    let error = api_error(status, &body, StatusCode::CONFLICT, ErrorCode::KeyMismatch);
    assert!(
        error.message.contains("never replaced"),
        "{}",
        error.message
    );
    // The pinned key still works, and the refused check-in changed nothing.
    check_in(&client, &server, "clinic-a", "nixos-1", &key).await;
    let hosts = fixture.cli_ok(&["hosts"]);
    let keyid = dsse::keyid(&key.verifying_key());
    assert!(
        hosts.contains(&format!("keyid {}", &keyid[..16])),
        "{hosts}"
    );
    assert!(hosts.contains("0.1.0"), "{hosts}");
}

#[tokio::test]
async fn orders_reach_their_host_signed_until_a_signed_result_arrives() {
    let fixture = Fixture::new();
    let bundle_a = fixture.enroll("clinic-a", "nixos-1");
    let bundle_b = fixture.enroll("clinic-a", "nixos-2");
    let order_id = fixture
        .cli_ok(&[
            "order",
            "create",
            "--site",
            "clinic-a",
            "--host",
            "nixos-1",
            "--action",
            "run-checks",
            "--params",
            r#"{"checks":["logging"]}"#,
            "--dry-run",
        ])
        .trim()
        .to_string();
    let server = fixture.serve(&[]);
    let client_a = client(&server, &bundle_a);
    let client_b = client(&server, &bundle_b);
    let key_a = agent_key(1);
    let key_b = agent_key(2);

    // Host B never sees A's order, and cannot ask for it with A's names.
    assert!(
        check_in(&client_b, &server, "clinic-a", "nixos-2", &key_b)
            .await
            .orders
            .is_empty()
    );
    let (status, body) = post_json(
        &client_b,
        &server,
        "/v1/checkin",
        &checkin("clinic-a", "nixos-1", &key_b),
    )
    .await;
    api_error(
        status,
        &body,
        StatusCode::FORBIDDEN,
        ErrorCode::IdentityMismatch,
    );

    let order_public =
        std::fs::read_to_string(fixture.state().join("order-signing.key.pub")).unwrap();
    let order_key = ed25519_dalek::VerifyingKey::from_bytes(
        &STANDARD
            .decode(order_public.trim())
            .unwrap()
            .try_into()
            .unwrap(),
    )
    .unwrap();
    let mut delivered = None;
    // At least once: re-sent on every check-in until a result arrives.
    for _ in 0..2 {
        let answer = check_in(&client_a, &server, "clinic-a", "nixos-1", &key_a).await;
        assert_eq!(answer.orders.len(), 1);
        let verified =
            dsse::verify_typed(&answer.orders[0], ORDER_PAYLOAD_TYPE, &[order_key]).unwrap();
        let order: Order = serde_json::from_slice(verified.payload()).unwrap();
        assert_eq!(order.order_id, order_id);
        assert!(order.dry_run && order.validate_fields().is_ok());
        delivered = Some((answer.orders[0].clone(), order));
    }
    let (envelope, order) = delivered.unwrap();
    let orders = fixture.cli_ok(&["orders", "--host", "nixos-1"]);
    assert!(orders.contains("delivered 2x"), "{orders}");

    let result = OrderResult {
        order_id: order.order_id.clone(),
        order_digest: dsse::digest(&envelope),
        site_id: "clinic-a".into(),
        host_id: "nixos-1".into(),
        outcome: Outcome::DryRun,
        code: None,
        detail: "would run logging".into(),
        output: json!(null),
        evidence_seq: None,
        finished_at: Timestamp::now(),
    };
    let sign = |result: &OrderResult, key: &SigningKey| {
        let payload = msp_compliance_protocol::jcs::to_vec_of(result).unwrap();
        dsse::sign(RESULT_PAYLOAD_TYPE, &payload, key)
    };
    // Signed by another key: refused.
    let (status, body) = post_json(&client_a, &server, "/v1/results", &sign(&result, &key_b)).await;
    api_error(
        status,
        &body,
        StatusCode::BAD_REQUEST,
        ErrorCode::BadSignature,
    );
    // B cannot report on A's order, even signed with B's own key.
    let mut as_b = result.clone();
    as_b.host_id = "nixos-2".into();
    let (status, body) = post_json(&client_b, &server, "/v1/results", &sign(&as_b, &key_b)).await;
    assert_eq!(
        status,
        StatusCode::NOT_FOUND,
        "{}",
        String::from_utf8_lossy(&body)
    );
    // An unknown order.
    let mut unknown = result.clone();
    unknown.order_id = "o-0000000000000000".into();
    let (status, body) =
        post_json(&client_a, &server, "/v1/results", &sign(&unknown, &key_a)).await;
    api_error(status, &body, StatusCode::NOT_FOUND, ErrorCode::BadRequest);

    let (status, body) = post_json(&client_a, &server, "/v1/results", &sign(&result, &key_a)).await;
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    assert!(
        check_in(&client_a, &server, "clinic-a", "nixos-1", &key_a)
            .await
            .orders
            .is_empty()
    );
    let orders = fixture.cli_ok(&["orders"]);
    assert!(orders.contains("result dry_run"), "{orders}");
}

#[tokio::test]
async fn evidence_verifies_deduplicates_and_rejects_with_reasons() {
    let fixture = Fixture::new();
    let bundle = fixture.enroll("clinic-a", "nixos-1");
    let server = fixture.serve(&[]);
    let client = client(&server, &bundle);
    let key = agent_key(1);
    let records = chain("clinic-a", "nixos-1", &key, 12);

    // Nothing to verify against before the key is pinned.
    let batch = EvidenceBatch {
        envelopes: records[..1].to_vec(),
    };
    let (status, body) = post_json(&client, &server, "/v1/evidence", &batch).await;
    api_error(status, &body, StatusCode::CONFLICT, ErrorCode::KeyMismatch);
    check_in(&client, &server, "clinic-a", "nixos-1", &key).await;

    let first = upload(&client, &server, &records[..5]).await;
    assert_eq!(statuses(&first), vec![RecordStatus::Accepted; 5]);
    assert_eq!(first.head.as_ref().unwrap().seq, 4);
    assert_eq!(first.results[4].digest, dsse::digest(&records[4]));

    // Re-delivery overlapping the stored head: duplicates, then new records.
    let second = upload(&client, &server, &records[3..8]).await;
    assert_eq!(
        statuses(&second),
        vec![
            RecordStatus::Duplicate,
            RecordStatus::Duplicate,
            RecordStatus::Accepted,
            RecordStatus::Accepted,
            RecordStatus::Accepted
        ]
    );
    assert_eq!(second.head.as_ref().unwrap().seq, 7);

    // A gap: seq 9 without seq 8; the record after it is not stored either.
    let gap = upload(&client, &server, &records[9..11]).await;
    assert_eq!(statuses(&gap), vec![RecordStatus::Rejected; 2]);
    let reason = gap.results[0].reason.as_deref().unwrap();
    assert!(reason.contains("expected seq 8, found seq 9"), "{reason}");
    assert_eq!(
        gap.results[1].reason.as_deref(),
        Some("after a rejected record")
    );

    // Tampering: the payload changed after signing.
    let mut tampered = records[8].clone();
    let mut payload = STANDARD.decode(&tampered.payload).unwrap();
    let at = payload.windows(4).position(|it| it == b"pass").unwrap();
    payload[at..at + 4].copy_from_slice(b"fail");
    tampered.payload = STANDARD.encode(payload);
    let refused = upload(&client, &server, &[tampered]).await;
    let reason = refused.results[0].reason.as_deref().unwrap();
    assert!(reason.contains("does not verify"), "{reason}");
    assert_eq!(refused.head.as_ref().unwrap().seq, 7);

    // A different record at a stored seq.
    let other = chain("clinic-a", "nixos-1", &agent_key(1), 3);
    let conflict = upload(&client, &server, &other[2..3]).await;
    assert_eq!(
        conflict.results[0].reason.as_deref(),
        Some("conflicts with stored record seq 2")
    );

    let rest = upload(&client, &server, &records[8..]).await;
    assert_eq!(statuses(&rest), vec![RecordStatus::Accepted; 4]);
    let answer = check_in(&client, &server, "clinic-a", "nixos-1", &key).await;
    assert_eq!(answer.evidence_head.unwrap().seq, 11);

    // A checkpoint of the stored head is accepted; one of a record never stored is not.
    let author = Author {
        site_id: Some("clinic-a".into()),
        host_id: "nixos-1".into(),
        agent_version: "0.1.0".into(),
    };
    let checkpoint = |head_seq: u64, head_digest: String| {
        let draft = Draft {
            kind: RecordKind::Checkpoint,
            baseline: None,
            controls: vec![],
            body: json!({"head_seq": head_seq, "head_digest": head_digest}),
        };
        let position = Position {
            seq: 12,
            prev: Some(dsse::digest(&records[11])),
        };
        seal(&draft, &position, &author, Timestamp::now(), &key).unwrap()
    };
    let good = checkpoint(11, dsse::digest(&records[11]));
    let (status, body) = post_json(&client, &server, "/v1/checkpoint", &good).await;
    assert_eq!(status, StatusCode::OK);
    let response: CheckpointResponse = serde_json::from_slice(&body).unwrap();
    assert!(response.accepted);
    assert_eq!(response.head.unwrap().seq, 11);
    let bad = checkpoint(11, dsse::digest(&records[10]));
    let (_, body) = post_json(&client, &server, "/v1/checkpoint", &bad).await;
    let response: CheckpointResponse = serde_json::from_slice(&body).unwrap();
    assert!(!response.accepted);

    // The operator's view: the stored chain verifies, and exports byte for byte.
    let verified = fixture.cli_ok(&[
        "evidence", "verify", "--site", "clinic-a", "--host", "nixos-1",
    ]);
    assert!(
        verified.starts_with("ok: clinic-a/nixos-1: 12 records, seq 0..=11"),
        "{verified}"
    );
    assert!(verified.contains("checkpointed seq 11"), "{verified}");
    let exported = fixture.cli_ok(&[
        "evidence", "export", "--site", "clinic-a", "--host", "nixos-1", "--since", "10",
        "--format", "jsonl",
    ]);
    let expected: String = records[10..]
        .iter()
        .map(|it| {
            format!(
                "{}\n",
                String::from_utf8(dsse::canonical_bytes(it)).unwrap()
            )
        })
        .collect();
    assert_eq!(exported, expected);
}

#[tokio::test]
async fn one_host_cannot_write_evidence_as_another() {
    let fixture = Fixture::new();
    let bundle_a = fixture.enroll("clinic-a", "nixos-1");
    let bundle_b = fixture.enroll("clinic-b", "nixos-1");
    let server = fixture.serve(&[]);
    let client_a = client(&server, &bundle_a);
    let client_b = client(&server, &bundle_b);
    let key_a = agent_key(1);
    let key_b = agent_key(2);
    check_in(&client_a, &server, "clinic-a", "nixos-1", &key_a).await;
    check_in(&client_b, &server, "clinic-b", "nixos-1", &key_b).await;

    // A signs records that name B: refused as a whole, nothing stored.
    let forged = chain("clinic-b", "nixos-1", &key_a, 2);
    let batch = EvidenceBatch { envelopes: forged };
    let (status, body) = post_json(&client_a, &server, "/v1/evidence", &batch).await;
    let error = api_error(
        status,
        &body,
        StatusCode::FORBIDDEN,
        ErrorCode::IdentityMismatch,
    );
    assert!(
        error.message.contains("clinic-b/nixos-1"),
        "{}",
        error.message
    );
    // B's own records, replayed over A's certificate, do not verify against A's key.
    let real_b = chain("clinic-b", "nixos-1", &key_b, 1);
    let response = upload(&client_a, &server, &real_b).await;
    assert_eq!(statuses(&response), vec![RecordStatus::Rejected]);
    assert_eq!(response.head, None);
    // B's chain is untouched and still accepts B's records.
    let response = upload(&client_b, &server, &real_b).await;
    assert_eq!(statuses(&response), vec![RecordStatus::Accepted]);
}

#[tokio::test]
async fn certificates_of_another_ca_or_none_fail_the_handshake() {
    let fixture = Fixture::new();
    let bundle = fixture.enroll("clinic-a", "nixos-1");
    let elsewhere = Fixture::new();
    let foreign = elsewhere.enroll("clinic-a", "nixos-1");
    let server = fixture.serve(&[]);

    // A client certificate from another CA, even for the same names.
    let config = tls_config(&foreign, &bundle.join("ca.pem"));
    let client = client_for(&server, config);
    let body = serde_json::to_vec(&checkin("clinic-a", "nixos-1", &agent_key(1))).unwrap();
    let err = client
        .post(server.url("/v1/checkin"))
        .body(body.clone())
        .send()
        .await
        .unwrap_err();
    assert!(err.is_connect() || err.is_request(), "{err:?}");

    // No client certificate at all.
    let config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots(&bundle.join("ca.pem")))
        .with_no_client_auth();
    let client = client_for(&server, config);
    assert!(
        client
            .post(server.url("/v1/checkin"))
            .body(body)
            .send()
            .await
            .is_err()
    );

    // The enrolled certificate still works.
    let client = self::client(&server, &bundle);
    check_in(&client, &server, "clinic-a", "nixos-1", &agent_key(1)).await;

    // An enrolled-looking certificate that is not enrolled (the host was re-issued).
    let out = fixture.dir.path().join("reissued");
    fixture.cli_ok(&[
        "enroll",
        "--site",
        "clinic-a",
        "--host",
        "nixos-1",
        "--out",
        out.to_str().unwrap(),
        "--replace-certificate",
    ]);
    let (status, body) = post_json(
        &client,
        &server,
        "/v1/checkin",
        &checkin("clinic-a", "nixos-1", &agent_key(1)),
    )
    .await;
    api_error(status, &body, StatusCode::FORBIDDEN, ErrorCode::NotEnrolled);
    let client = self::client(&server, &out);
    check_in(&client, &server, "clinic-a", "nixos-1", &agent_key(1)).await;
}

#[tokio::test]
async fn tls_files_can_live_outside_the_state_directory() {
    let fixture = Fixture::new();
    let bundle = fixture.enroll("clinic-a", "nixos-1");
    let tls = fixture.dir.path().join("tls");
    std::fs::create_dir(&tls).unwrap();
    for name in ["server.pem", "server.key", "ca.pem"] {
        std::fs::copy(fixture.state().join(name), tls.join(name)).unwrap();
    }
    let server = fixture.serve(&[
        "--tls-certificate",
        tls.join("server.pem").to_str().unwrap(),
        "--tls-key",
        tls.join("server.key").to_str().unwrap(),
        "--client-ca",
        tls.join("ca.pem").to_str().unwrap(),
    ]);
    let client = client(&server, &bundle);
    check_in(&client, &server, "clinic-a", "nixos-1", &agent_key(1)).await;
}

#[tokio::test]
async fn oversized_and_malformed_bodies_get_typed_errors() {
    let fixture = Fixture::new();
    let bundle = fixture.enroll("clinic-a", "nixos-1");
    let server = fixture.serve(&[]);
    let client = client(&server, &bundle);

    let (status, body) = post(&client, &server, "/v1/checkin", b"{\"site_id\": ".to_vec()).await;
    let error = api_error(
        status,
        &body,
        StatusCode::BAD_REQUEST,
        ErrorCode::BadRequest,
    );
    assert!(
        error.message.starts_with("invalid JSON body: "),
        "{}",
        error.message
    );
    let (status, body) = post(
        &client,
        &server,
        "/v1/checkin",
        b"{\"site_id\": 1}".to_vec(),
    )
    .await;
    let error = api_error(
        status,
        &body,
        StatusCode::BAD_REQUEST,
        ErrorCode::BadRequest,
    );
    assert!(
        error.message.contains("expected a string"),
        "{}",
        error.message
    );

    // Oversized bodies are refused from their Content-Length, before they are read. (A client
    // still sending a large body when the refusal comes may see the connection close instead;
    // the request head alone makes the answer deterministic.)
    for (path, length) in [
        ("/v1/checkin", 300 * 1024),
        ("/v1/evidence", 17 * 1024 * 1024),
    ] {
        let (status, body) = partial_request(&server, &bundle, path, length, b"");
        api_error(
            status,
            &body,
            StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::TooLarge,
        );
    }
    // Too many envelopes, although the body is small enough.
    let one = chain("clinic-a", "nixos-1", &agent_key(1), 1).remove(0);
    let batch = EvidenceBatch {
        envelopes: vec![one; 1025],
    };
    let (status, body) = post_json(&client, &server, "/v1/evidence", &batch).await;
    api_error(
        status,
        &body,
        StatusCode::PAYLOAD_TOO_LARGE,
        ErrorCode::TooLarge,
    );

    let response = client.get(server.url("/v1/checkin")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
    let (status, body) = post(&client, &server, "/v2/checkin", b"{}".to_vec()).await;
    api_error(status, &body, StatusCode::NOT_FOUND, ErrorCode::BadRequest);
    // The connection and the server are still fine.
    check_in(&client, &server, "clinic-a", "nixos-1", &agent_key(1)).await;
}

/// A TLS connection with the bundle's client certificate, handshake done.
fn tls_connect(server: &Server, bundle: &Path) -> (rustls::ClientConnection, TcpStream) {
    let config = Arc::new(tls_config(bundle, &bundle.join("ca.pem")));
    let name = ServerName::try_from("localhost").unwrap();
    let mut tls = rustls::ClientConnection::new(config, name).unwrap();
    let mut tcp = TcpStream::connect(server.address).unwrap();
    tcp.set_read_timeout(Some(PROMPT)).unwrap();
    while tls.is_handshaking() {
        tls.complete_io(&mut tcp).unwrap();
    }
    (tls, tcp)
}

/// Sends a request head announcing a body of `length` bytes and only `sent` of them; returns
/// the answer.
fn partial_request(
    server: &Server,
    bundle: &Path,
    path: &str,
    length: usize,
    sent: &[u8],
) -> (StatusCode, Vec<u8>) {
    let (mut tls, mut tcp) = tls_connect(server, bundle);
    let mut stream = rustls::Stream::new(&mut tls, &mut tcp);
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {length}\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).unwrap();
    stream.write_all(sent).unwrap();
    stream.flush().unwrap();
    let mut response = Vec::new();
    let mut buffer = [0_u8; 4096];
    let started = Instant::now();
    let (status, body) = loop {
        let n = stream.read(&mut buffer).unwrap_or(0);
        response.extend_from_slice(&buffer[..n]);
        let text = String::from_utf8_lossy(&response).to_string();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let length: usize = head
                .lines()
                .find_map(|it| {
                    it.to_ascii_lowercase()
                        .strip_prefix("content-length: ")
                        .map(str::to_string)
                })
                .and_then(|it| it.trim().parse().ok())
                .unwrap_or(0);
            if body.len() >= length {
                let status: u16 = head.split(' ').nth(1).unwrap().parse().unwrap();
                break (
                    StatusCode::from_u16(status).unwrap(),
                    body.as_bytes()[..length].to_vec(),
                );
            }
        }
        assert!(
            n > 0 && started.elapsed() < PROMPT,
            "no complete answer: {text:?}"
        );
    };
    (status, body)
}

/// Reads until the peer closes (or errors); returns how long that took.
fn time_until_closed(stream: &mut impl Read, started: Instant) -> Duration {
    let mut buffer = [0_u8; 4096];
    loop {
        match stream.read(&mut buffer) {
            Ok(0) | Err(_) => return started.elapsed(),
            Ok(_) => {}
        }
        assert!(started.elapsed() < PROMPT, "the server never closed");
    }
}

#[test]
fn slow_clients_are_disconnected_within_the_timeouts() {
    let fixture = Fixture::new();
    let bundle = fixture.enroll("clinic-a", "nixos-1");
    let server = fixture.serve(&[
        "--handshake-timeout-ms",
        "400",
        "--header-read-timeout-ms",
        "400",
        "--request-timeout-ms",
        "500",
    ]);

    // Connects and never starts the handshake.
    let started = Instant::now();
    let mut silent = TcpStream::connect(server.address).unwrap();
    silent.set_read_timeout(Some(PROMPT)).unwrap();
    let elapsed = time_until_closed(&mut silent, started);
    assert!(elapsed >= Duration::from_millis(300), "{elapsed:?}");
    assert!(elapsed < Duration::from_secs(5), "{elapsed:?}");

    // Completes the handshake, then sends headers slowly and never finishes them.
    let (mut tls, mut tcp) = tls_connect(&server, &bundle);
    let started = Instant::now();
    let mut stream = rustls::Stream::new(&mut tls, &mut tcp);
    stream
        .write_all(b"POST /v1/checkin HTTP/1.1\r\nHost: localhost\r\n")
        .unwrap();
    stream.flush().unwrap();
    for _ in 0..2 {
        std::thread::sleep(Duration::from_millis(100));
        // Still trickling: one more header line, never the blank line that ends them.
        if stream.write_all(b"X-Slow: 1\r\n").is_err() {
            break;
        }
    }
    let elapsed = time_until_closed(&mut stream, started);
    assert!(elapsed >= Duration::from_millis(300), "{elapsed:?}");
    assert!(elapsed < Duration::from_secs(5), "{elapsed:?}");

    // Sends its headers, then only part of the body: the whole-request timeout answers.
    let started = Instant::now();
    let (status, body) = partial_request(&server, &bundle, "/v1/checkin", 100, b"{\"site_id\"");
    let elapsed = started.elapsed();
    let error = api_error(
        status,
        &body,
        StatusCode::REQUEST_TIMEOUT,
        ErrorCode::BadRequest,
    );
    assert!(
        error.message.contains("not completed within"),
        "{}",
        error.message
    );
    assert!(elapsed >= Duration::from_millis(400), "{elapsed:?}");
    assert!(elapsed < Duration::from_secs(5), "{elapsed:?}");
}

#[test]
fn sigterm_finishes_the_request_in_flight_then_stops() {
    let fixture = Fixture::new();
    let bundle = fixture.enroll("clinic-a", "nixos-1");
    let mut server = fixture.serve(&["--shutdown-grace-ms", "10000"]);
    let body = serde_json::to_vec(&checkin("clinic-a", "nixos-1", &agent_key(1))).unwrap();
    let (mut tls, mut tcp) = tls_connect(&server, &bundle);
    let mut stream = rustls::Stream::new(&mut tls, &mut tcp);
    let head = format!(
        "POST /v1/checkin HTTP/1.1\r\nHost: localhost\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).unwrap();
    stream.write_all(&body[..10]).unwrap();
    stream.flush().unwrap();
    std::thread::sleep(Duration::from_millis(200));

    let pid = server.child.0.id().to_string();
    let status = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    assert!(status.success());
    std::thread::sleep(Duration::from_millis(300));
    // No new connections once shutdown began.
    assert!(TcpStream::connect(server.address).is_err());
    // The request in flight completes and is answered.
    stream.write_all(&body[10..]).unwrap();
    stream.flush().unwrap();
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response);
    let text = String::from_utf8_lossy(&response);
    assert!(text.starts_with("HTTP/1.1 200 OK"), "{text}");
    assert!(text.contains("\"server_time\""), "{text}");

    let started = Instant::now();
    loop {
        if let Some(status) = server.child.0.try_wait().unwrap() {
            assert!(status.success(), "{status:?}");
            break;
        }
        assert!(started.elapsed() < PROMPT, "serve did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    }
    // What the answered request stored is durable.
    let hosts = fixture.cli_ok(&["hosts"]);
    assert!(hosts.contains("0.1.0"), "{hosts}");
}
