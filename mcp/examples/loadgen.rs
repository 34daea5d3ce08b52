//! Load generator for `msp-mcp serve` (issue 4's budget): many simulated hosts checking in over
//! mTLS keep-alive connections, then evidence uploads in batches of pre-sealed envelopes.
//! Bounded in count and time, loopback only; it starts and stops its own server.
//!
//! Build the server and this example in release mode, then run the example:
//!
//! ```text
//! cargo build --release -p msp-mcp --bin msp-mcp --example loadgen
//! target/release/examples/loadgen --hosts 10000 --clients 64 --checkins 200000 --seconds 60
//! ```
//!
//! Setup (not measured): a temporary state directory (`init`), `--hosts` hosts enrolled through
//! the library (`enroll_in_memory`: one rcgen client certificate and key per host, agent keys
//! pinned at enrollment) and the real `msp-mcp serve` binary as a child on 127.0.0.1.
//!
//! Check-ins: `--clients` workers; worker `w` serves hosts `w, w + clients, …` round-robin, each
//! host over its own TLS connection with its own certificate, kept alive between its turns (a
//! closed one is re-opened and counted). The first round opens every connection and is reported
//! apart (handshakes); the measured phase then runs until `--checkins` check-ins or `--seconds`.
//! Evidence: `--evidence-hosts` uploaders in parallel, each sending `--evidence-batches`
//! batches of `--batch` envelopes of its own chain; every verdict must be `accepted`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use clap::Parser;
use ed25519_dalek::SigningKey;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use jiff::Timestamp;
use msp_compliance_protocol::api::{
    CheckIn, ComplianceSummary, EvidenceBatch, EvidenceBatchResponse, RecordStatus,
};
use msp_compliance_protocol::dsse::{self, Envelope};
use msp_compliance_protocol::evidence::{Author, Draft, Position, RecordKind, seal};
use msp_mcp::db::hosts::Reenroll;
use msp_mcp::enroll::{self, EnrollRequest};
use msp_mcp::state::{self, StateDir};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde_json::json;
use sha2::{Digest, Sha256};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// Load generator for msp-mcp (loopback only, bounded).
#[derive(Debug, Parser)]
struct Args {
    /// Simulated hosts (each enrolled with its own client certificate).
    #[arg(long, default_value_t = 10_000)]
    hosts: usize,
    /// Concurrent check-in workers (requests in flight).
    #[arg(long, default_value_t = 64)]
    clients: usize,
    /// Most check-ins in the measured phase.
    #[arg(long, default_value_t = 200_000)]
    checkins: usize,
    /// Longest measured check-in phase, seconds.
    #[arg(long, default_value_t = 60)]
    seconds: u64,
    /// Hosts uploading evidence in parallel.
    #[arg(long, default_value_t = 4)]
    evidence_hosts: usize,
    /// Batches per uploading host.
    #[arg(long, default_value_t = 20)]
    evidence_batches: usize,
    /// Envelopes per batch.
    #[arg(long, default_value_t = 256)]
    batch: usize,
    /// The msp-mcp binary (default: next to this example's directory).
    #[arg(long)]
    server_bin: Option<PathBuf>,
}

/// One simulated host: its TLS identity, agent key and prepared check-in body.
struct SimulatedHost {
    site_id: String,
    host_id: String,
    tls: Arc<rustls::ClientConfig>,
    agent_key: SigningKey,
    checkin_body: Bytes,
    /// The host's keep-alive connection, once opened.
    connection: Option<SendRequest<Full<Bytes>>>,
}

struct Target {
    address: SocketAddr,
}

/// Kills the server child if the generator stops early.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[derive(Default)]
struct Tally {
    latencies_us: Vec<u32>,
    errors: usize,
    reconnects: usize,
}

fn main() -> Result<()> {
    let args = Args::parse();
    ensure!(
        args.hosts > 0 && args.clients > 0,
        "--hosts and --clients must be positive"
    );
    let _ = rustls::crypto::ring::default_provider().install_default();
    let server_bin = match &args.server_bin {
        Some(path) => path.clone(),
        None => std::env::current_exe()?
            .parent()
            .and_then(Path::parent)
            .context("cannot locate the target directory")?
            .join("msp-mcp"),
    };
    ensure!(
        server_bin.is_file(),
        "{} not found; build it with `cargo build --release -p msp-mcp --bin msp-mcp` or pass --server-bin",
        server_bin.display()
    );

    let dir = tempfile::tempdir()?;
    let state_dir = StateDir::new(&dir.path().join("state"));
    state::init(&state_dir, &["localhost".to_string()], Timestamp::now())?;
    let started = Instant::now();
    let keys: Vec<SigningKey> = (0..args.hosts)
        .map(|idx| SigningKey::from_bytes(&Sha256::digest(format!("loadgen host {idx}")).into()))
        .collect();
    let requests: Vec<EnrollRequest> = (0..args.hosts)
        .map(|idx| EnrollRequest {
            site_id: format!("site-{}", idx / 100),
            host_id: format!("host-{idx}"),
            agent_key: Some(keys[idx].verifying_key()),
            policy: Reenroll::Refuse,
        })
        .collect();
    let issued = enroll::enroll_in_memory(&state_dir, &requests, Timestamp::now())?;
    println!(
        "setup: enrolled {} hosts (one client certificate each) in {:.2} s",
        args.hosts,
        started.elapsed().as_secs_f64()
    );

    let ca_pem = std::fs::read(state_dir.ca_certificate())?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&ca_pem) {
        roots.add(cert?)?;
    }
    let roots = Arc::new(roots);
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut hosts = Vec::with_capacity(args.hosts);
    for ((request, credentials), agent_key) in requests.into_iter().zip(issued).zip(keys) {
        let chain = vec![CertificateDer::from(credentials.certificate_der.clone())];
        let key = PrivateKeyDer::from_pem_slice(credentials.key_pem.as_bytes())?;
        let tls = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()?
            .with_root_certificates(Arc::clone(&roots))
            .with_client_auth_cert(chain, key)?;
        let checkin = CheckIn {
            site_id: request.site_id.clone(),
            host_id: request.host_id.clone(),
            agent_version: "0.1.0-loadgen".into(),
            agent_key: STANDARD.encode(agent_key.verifying_key().as_bytes()),
            summary: ComplianceSummary {
                pass: 5,
                fail: 1,
                checked_at: Some(Timestamp::now()),
                ..ComplianceSummary::default()
            },
            chain_head: None,
            agent_time: Timestamp::now(),
        };
        hosts.push(SimulatedHost {
            site_id: request.site_id,
            host_id: request.host_id,
            tls: Arc::new(tls),
            agent_key,
            checkin_body: Bytes::from(serde_json::to_vec(&checkin)?),
            connection: None,
        });
    }

    let mut child = Command::new(&server_bin)
        .arg("--state-dir")
        .arg(state_dir.root())
        .args(["serve", "--listen", "127.0.0.1:0", "--max-connections"])
        .arg((args.hosts + 1024).to_string())
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| format!("cannot start {}", server_bin.display()))?;
    let stdout = child.stdout.take().context("no stdout")?;
    let server = KillOnDrop(child);
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut line)?;
    let address: SocketAddr = line
        .trim()
        .strip_prefix("listening on ")
        .with_context(|| format!("unexpected first line {line:?}"))?
        .parse()?;
    let target = Arc::new(Target { address });

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let hosts = check_ins(&args, &target, hosts).await?;
        evidence(&args, &target, hosts).await
    })?;
    drop(server);
    Ok(())
}

async fn check_ins(
    args: &Args,
    target: &Arc<Target>,
    hosts: Vec<SimulatedHost>,
) -> Result<Vec<SimulatedHost>> {
    // Hosts dealt to workers round-robin: worker w owns hosts w, w + clients, ...
    let mut shares: Vec<Vec<SimulatedHost>> = (0..args.clients).map(|_| Vec::new()).collect();
    for (idx, host) in hosts.into_iter().enumerate() {
        shares[idx % args.clients].push(host);
    }

    // Round 1: every host opens its connection and checks in once.
    let started = Instant::now();
    let (shares, tallies) = run_workers(target, shares, |share| share.len(), None).await?;
    let connect = merge(tallies);
    let elapsed = started.elapsed().as_secs_f64();
    report(
        "first round (TLS handshake + check-in per host)",
        &connect,
        elapsed,
    );

    // Measured: keep-alive check-ins, round-robin, bounded by count and time.
    let per_worker = args.checkins.div_ceil(args.clients);
    let deadline = Instant::now() + Duration::from_secs(args.seconds);
    let started = Instant::now();
    let (shares, tallies) = run_workers(target, shares, |_| per_worker, Some(deadline)).await?;
    let measured = merge(tallies);
    let elapsed = started.elapsed().as_secs_f64();
    report("check-ins (keep-alive, round-robin)", &measured, elapsed);
    Ok(shares.into_iter().flatten().collect())
}

async fn run_workers(
    target: &Arc<Target>,
    shares: Vec<Vec<SimulatedHost>>,
    count: impl Fn(&[SimulatedHost]) -> usize,
    deadline: Option<Instant>,
) -> Result<(Vec<Vec<SimulatedHost>>, Vec<Tally>)> {
    let mut tasks = Vec::new();
    for mut share in shares {
        let target = Arc::clone(target);
        let n = count(&share);
        tasks.push(tokio::spawn(async move {
            let mut tally = Tally::default();
            tally.latencies_us.reserve(n);
            for idx in 0..n {
                if deadline.is_some_and(|it| Instant::now() >= it) || share.is_empty() {
                    break;
                }
                let slot = idx % share.len();
                let host = &mut share[slot];
                let started = Instant::now();
                match check_in(&target, host, &mut tally).await {
                    Ok(()) => tally
                        .latencies_us
                        .push(u32::try_from(started.elapsed().as_micros()).unwrap_or(u32::MAX)),
                    Err(err) => {
                        if tally.errors < 3 {
                            eprintln!(
                                "check-in of {}/{} failed: {err:#}",
                                host.site_id, host.host_id
                            );
                        }
                        tally.errors += 1;
                    }
                }
            }
            (share, tally)
        }));
    }
    let mut shares = Vec::new();
    let mut tallies = Vec::new();
    for task in tasks {
        let (share, tally) = task.await?;
        shares.push(share);
        tallies.push(tally);
    }
    Ok((shares, tallies))
}

async fn connect(
    target: &Target,
    tls: &Arc<rustls::ClientConfig>,
) -> Result<SendRequest<Full<Bytes>>> {
    let tcp = TcpStream::connect(target.address).await?;
    tcp.set_nodelay(true)?;
    let stream = TlsConnector::from(Arc::clone(tls))
        .connect(ServerName::try_from("localhost")?, tcp)
        .await?;
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(sender)
}

/// Sends one request on the host's connection, opening (or re-opening) it as needed.
async fn send(
    target: &Target,
    host: &mut SimulatedHost,
    path: &str,
    body: Bytes,
    tally: &mut Tally,
) -> Result<(hyper::StatusCode, Bytes)> {
    for attempt in 0..2 {
        let usable = match host.connection.as_mut() {
            Some(sender) => sender.ready().await.is_ok(),
            None => false,
        };
        if !usable {
            if host.connection.is_some() {
                tally.reconnects += 1;
            }
            host.connection = Some(connect(target, &host.tls).await?);
        }
        let Some(sender) = host.connection.as_mut() else {
            bail!("no connection");
        };
        let request = hyper::Request::post(path)
            .header("host", "localhost")
            .header("content-type", "application/json")
            .body(Full::new(body.clone()))?;
        match sender.send_request(request).await {
            Ok(response) => {
                let status = response.status();
                let bytes = response.into_body().collect().await?.to_bytes();
                return Ok((status, bytes));
            }
            // The server closed an idle connection just as the request went out: once more
            // on a fresh one.
            Err(err)
                if attempt == 0
                    && (err.is_canceled() || err.is_closed() || err.is_incomplete_message()) =>
            {
                host.connection = None;
                tally.reconnects += 1;
            }
            Err(err) => return Err(err.into()),
        }
    }
    bail!("request failed twice")
}

async fn check_in(target: &Target, host: &mut SimulatedHost, tally: &mut Tally) -> Result<()> {
    let body = host.checkin_body.clone();
    let (status, bytes) = send(target, host, "/v1/checkin", body, tally).await?;
    ensure!(
        status == hyper::StatusCode::OK,
        "status {status}: {}",
        String::from_utf8_lossy(&bytes)
    );
    Ok(())
}

async fn evidence(args: &Args, target: &Arc<Target>, hosts: Vec<SimulatedHost>) -> Result<()> {
    let uploaders: Vec<SimulatedHost> = hosts.into_iter().take(args.evidence_hosts).collect();
    let started = Instant::now();
    let mut chains = Vec::new();
    for host in &uploaders {
        chains.push(sealed_chain(host, args.evidence_batches * args.batch)?);
    }
    let n_total: usize = chains.iter().map(Vec::len).sum();
    println!(
        "setup: sealed {n_total} evidence envelopes in {:.2} s",
        started.elapsed().as_secs_f64()
    );
    let mut tasks = Vec::new();
    let started = Instant::now();
    for (mut host, chain) in uploaders.into_iter().zip(chains) {
        let target = Arc::clone(target);
        let batch_size = args.batch;
        tasks.push(tokio::spawn(async move {
            let mut tally = Tally::default();
            for batch in chain.chunks(batch_size) {
                let body = Bytes::from(serde_json::to_vec(&EvidenceBatch {
                    envelopes: batch.to_vec(),
                })?);
                let sent = Instant::now();
                let (status, bytes) =
                    send(&target, &mut host, "/v1/evidence", body, &mut tally).await?;
                ensure!(status == hyper::StatusCode::OK, "status {status}");
                let response: EvidenceBatchResponse = serde_json::from_slice(&bytes)?;
                let accepted = response
                    .results
                    .iter()
                    .filter(|it| it.status == RecordStatus::Accepted)
                    .count();
                ensure!(
                    accepted == batch.len(),
                    "{} of {} accepted: {:?}",
                    accepted,
                    batch.len(),
                    response
                        .results
                        .iter()
                        .find(|it| it.status != RecordStatus::Accepted)
                );
                tally
                    .latencies_us
                    .push(u32::try_from(sent.elapsed().as_micros()).unwrap_or(u32::MAX));
            }
            anyhow::Ok(tally)
        }));
    }
    let mut tallies = Vec::new();
    for task in tasks {
        tallies.push(task.await??);
    }
    let elapsed = started.elapsed().as_secs_f64();
    let tally = merge(tallies);
    report(
        &format!("evidence batches of {}", args.batch),
        &tally,
        elapsed,
    );
    println!(
        "evidence: {n_total} envelopes verified and stored in {elapsed:.2} s = {:.0} envelopes/s",
        n_total as f64 / elapsed
    );
    Ok(())
}

/// A chain of check records shaped like the agent's (a finding with its facts, ~1.5 KiB).
fn sealed_chain(host: &SimulatedHost, n: usize) -> Result<Vec<Envelope>> {
    let author = Author {
        site_id: Some(host.site_id.clone()),
        host_id: host.host_id.clone(),
        agent_version: "0.1.0-loadgen".into(),
    };
    let mut res: Vec<Envelope> = Vec::with_capacity(n);
    let mut prev = None;
    for seq in 0..n as u64 {
        let draft = Draft {
            kind: RecordKind::Check,
            baseline: None,
            controls: vec!["164.312(b)".into()],
            body: json!({
                "check": "logging",
                "status": "pass",
                "rules": (0..8).map(|rule| json!({
                    "id": format!("logging.rule-{rule}"),
                    "status": "pass",
                    "observed": {"journald_storage": "persistent", "audit_rules": 42, "n": seq},
                    "threshold": "journald persistent, auditd enabled with rules loaded",
                })).collect::<Vec<_>>(),
            }),
        };
        let envelope = seal(
            &draft,
            &Position {
                seq,
                prev: prev.clone(),
            },
            &author,
            Timestamp::now(),
            &host.agent_key,
        )?;
        prev = Some(dsse::digest(&envelope));
        res.push(envelope);
    }
    Ok(res)
}

fn merge(tallies: Vec<Tally>) -> Tally {
    let mut all = Tally::default();
    for tally in tallies {
        all.latencies_us.extend(tally.latencies_us);
        all.errors += tally.errors;
        all.reconnects += tally.reconnects;
    }
    all.latencies_us.sort_unstable();
    all
}

fn report(what: &str, tally: &Tally, elapsed: f64) {
    let n = tally.latencies_us.len();
    let percentile = |p: f64| {
        if n == 0 {
            return 0.0;
        }
        let idx = ((n as f64 * p).ceil() as usize).clamp(1, n) - 1;
        f64::from(tally.latencies_us[idx]) / 1000.0
    };
    println!(
        "{what}: {n} ok in {elapsed:.2} s = {:.0}/s; latency ms p50 {:.2} p90 {:.2} p99 {:.2} max {:.2}; errors {}, reconnects {}",
        n as f64 / elapsed,
        percentile(0.50),
        percentile(0.90),
        percentile(0.99),
        percentile(1.0),
        tally.errors,
        tally.reconnects
    );
}
