//! The operator command line: `init`, `enroll`, `order create`, `orders`, `hosts`,
//! `evidence verify|export` and `serve`.
//!
//! This is the edge of the binary: it parses arguments (clap), calls the library and prints.
//! It is the only module that prints (the server logs through `tracing` to stderr instead).
//! Exit status: 0 on success, 1 when `evidence verify` finds a bad chain, 2 for every error
//! (`main` maps errors to 2).

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use jiff::{SignedDuration, Timestamp};
use msp_compliance_protocol::api::ComplianceSummary;
use msp_compliance_protocol::dsse;

use crate::db::hosts::{self, Enrolled, Reenroll};
use crate::db::{self, orders};
use crate::enroll::{self, EnrollRequest};
use crate::keys;
use crate::order::{self, OrderRequest};
use crate::server::{self, Limits, Server, ServerConfig, TlsFiles};
use crate::state::{self, DEFAULT_SERVER_NAMES, DEFAULT_STATE_DIR, StateDir};

mod evidence;

/// msp-mcp: the reference control plane for msp-compliance agents.
#[derive(Debug, Parser)]
#[command(name = "msp-mcp", version, about, long_about = None)]
pub struct Args {
    /// State directory: database, CA, server certificate, order-signing key.
    #[arg(long, value_name = "DIR", global = true, default_value = DEFAULT_STATE_DIR)]
    state_dir: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create the state directory: order-signing key, CA, server certificate, database.
    /// Refuses a directory that is already initialised.
    Init(InitArgs),
    /// Enroll a host: write its client certificate, key and the CA into a bundle directory
    /// and record the certificate's fingerprint as the host's identity.
    Enroll(EnrollArgs),
    /// Create signed orders.
    #[command(subcommand)]
    Order(OrderCommand),
    /// List orders and what became of them.
    Orders(OrdersArgs),
    /// List enrolled hosts: last check-in, summary, evidence head, key pin.
    Hosts,
    /// Verify or export a host's stored evidence chain.
    #[command(subcommand)]
    Evidence(evidence::EvidenceCommand),
    /// Serve the agent API over mTLS until SIGTERM or SIGINT. Prints `listening on ADDR` as
    /// its first line on stdout; logs to stderr (RUST_LOG sets the filter, default info).
    Serve(ServeArgs),
}

#[derive(Debug, clap::Args)]
struct InitArgs {
    /// DNS name or IP address for the server certificate (repeat for several).
    /// Default: localhost and 127.0.0.1.
    #[arg(long = "server-name", value_name = "NAME")]
    server_names: Vec<String>,
    /// Succeed without changing anything when the directory is already initialised (every
    /// file present), so a service can run `init` before each start. A partly initialised
    /// directory is still an error.
    #[arg(long)]
    existing_ok: bool,
}

#[derive(Debug, clap::Args)]
struct EnrollArgs {
    /// Site id.
    #[arg(long, value_name = "SITE")]
    site: String,
    /// Host id.
    #[arg(long, value_name = "HOST")]
    host: String,
    /// The agent's evidence public key (`.pub` file) to pin now; otherwise it is pinned at
    /// the host's first check-in.
    #[arg(long, value_name = "FILE.pub")]
    agent_key: Option<PathBuf>,
    /// Directory for the bundle (client.pem, client.key, ca.pem); created 0700 if missing.
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// Issue a new certificate for a host that is enrolled already (the old one stops
    /// working; the pinned agent key stays).
    #[arg(long)]
    replace_certificate: bool,
    /// Also replace the pinned agent key (with --agent-key, or pin at the next check-in).
    /// Evidence signed with the old key no longer verifies against the pin; recorded in the
    /// audit table.
    #[arg(long, requires = "replace_certificate")]
    danger_replace_agent_key: bool,
}

#[derive(Debug, Subcommand)]
enum OrderCommand {
    /// Sign an order with the order-signing key and queue it for the host; prints its id.
    Create(OrderCreateArgs),
}

#[derive(Debug, clap::Args)]
struct OrderCreateArgs {
    /// Target site.
    #[arg(long, value_name = "SITE")]
    site: String,
    /// Target host (must be enrolled).
    #[arg(long, value_name = "HOST")]
    host: String,
    /// Runbook id.
    #[arg(long, value_name = "ACTION")]
    action: String,
    /// Parameters, a JSON object.
    #[arg(long, value_name = "JSON", default_value = "{}")]
    params: String,
    /// Time to live (e.g. 10m, 1h; at most 24h; the agent may accept less).
    #[arg(long, value_name = "DURATION", value_parser = order::parse_ttl, default_value = "10m")]
    ttl: SignedDuration,
    /// Ask the agent to run the whole pipeline but change nothing.
    #[arg(long)]
    dry_run: bool,
    /// Mark the action as disruptive (the agent defers it to the maintenance window).
    #[arg(long)]
    disruptive: bool,
    /// Sign with this order-signing key instead of the state directory's.
    #[arg(long, value_name = "FILE")]
    order_key: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
struct OrdersArgs {
    /// Only this site.
    #[arg(long, value_name = "SITE")]
    site: Option<String>,
    /// Only this host.
    #[arg(long, value_name = "HOST")]
    host: Option<String>,
}

#[derive(Debug, clap::Args)]
struct ServeArgs {
    /// Address to listen on (port 0: any free port, printed on the first line).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8443")]
    listen: SocketAddr,
    /// Connections served at once.
    #[arg(long, value_name = "N", default_value_t = server::MAX_CONNECTIONS)]
    max_connections: usize,
    /// Server certificate chain (PEM) instead of the state directory's server.pem.
    #[arg(long, value_name = "FILE", requires_all = ["tls_key", "client_ca"])]
    tls_certificate: Option<PathBuf>,
    /// Server key (PEM, mode 0600) instead of the state directory's server.key.
    #[arg(long, value_name = "FILE", requires_all = ["tls_certificate", "client_ca"])]
    tls_key: Option<PathBuf>,
    /// CA (PEM) of the agents' client certificates instead of the state directory's ca.pem.
    #[arg(long, value_name = "FILE", requires_all = ["tls_certificate", "tls_key"])]
    client_ca: Option<PathBuf>,
    /// TLS handshake timeout, milliseconds (tests shorten it).
    #[arg(long, hide = true, value_name = "MS")]
    handshake_timeout_ms: Option<u64>,
    /// Header read timeout, milliseconds (tests shorten it).
    #[arg(long, hide = true, value_name = "MS")]
    header_read_timeout_ms: Option<u64>,
    /// Whole-request timeout, milliseconds (tests shorten it).
    #[arg(long, hide = true, value_name = "MS")]
    request_timeout_ms: Option<u64>,
    /// Shutdown grace period, milliseconds (tests shorten it).
    #[arg(long, hide = true, value_name = "MS")]
    shutdown_grace_ms: Option<u64>,
}

/// Parses the arguments and runs the command; returns the exit status.
pub fn main() -> Result<u8> {
    let args = Args::parse();
    let state = StateDir::new(&args.state_dir);
    match args.command {
        Command::Init(args) => init(&state, args),
        Command::Enroll(args) => enroll(&state, args),
        Command::Order(OrderCommand::Create(args)) => order_create(&state, args),
        Command::Orders(args) => list_orders(&state, args),
        Command::Hosts => list_hosts(&state),
        Command::Evidence(command) => evidence::run(&state, command),
        Command::Serve(args) => serve(state, args),
    }
}

fn init(state: &StateDir, args: InitArgs) -> Result<u8> {
    let names = if args.server_names.is_empty() {
        DEFAULT_SERVER_NAMES
            .iter()
            .map(|it| it.to_string())
            .collect()
    } else {
        args.server_names
    };
    if args.existing_ok && state.files().iter().all(|it| it.exists()) {
        writeln!(
            std::io::stdout().lock(),
            "{} is already initialised; keeping it",
            state.root().display()
        )?;
        return Ok(0);
    }
    let made = state::init(state, &names, Timestamp::now())?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "initialised {}", state.root().display())?;
    writeln!(
        out,
        "order-signing key: {} (keyid {}); agents pin {}",
        keys::encode_public_key(&made.order_key),
        dsse::keyid(&made.order_key),
        keys::public_key_path(&state.order_key()).display()
    )?;
    writeln!(
        out,
        "CA certificate: {} (sha256 {})",
        state.ca_certificate().display(),
        made.ca_fingerprint
    )?;
    writeln!(
        out,
        "server certificate names: {}",
        made.server_names.join(", ")
    )?;
    Ok(0)
}

fn enroll(state: &StateDir, args: EnrollArgs) -> Result<u8> {
    let agent_key = args
        .agent_key
        .as_deref()
        .map(keys::load_public_key)
        .transpose()?;
    let policy = match (args.replace_certificate, args.danger_replace_agent_key) {
        (false, _) => Reenroll::Refuse,
        (true, false) => Reenroll::ReplaceCertificate,
        (true, true) => Reenroll::DangerReplaceCertificateAndAgentKey,
    };
    let request = EnrollRequest {
        site_id: args.site,
        host_id: args.host,
        agent_key,
        policy,
    };
    let outcome = enroll::enroll(state, &request, &args.out, Timestamp::now())?;
    let what = match outcome.enrolled {
        Enrolled::New => "enrolled",
        Enrolled::CertificateReplaced => "replaced the certificate of",
        Enrolled::CertificateAndAgentKeyReplaced => "replaced the certificate and agent key of",
    };
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "{what} {}/{}: certificate sha256 {}",
        request.site_id, request.host_id, outcome.fingerprint
    )?;
    for file in &outcome.files {
        writeln!(out, "wrote {}", file.display())?;
    }
    Ok(0)
}

fn order_create(state: &StateDir, args: OrderCreateArgs) -> Result<u8> {
    let params: serde_json::Value =
        serde_json::from_str(&args.params).context("--params: not valid JSON")?;
    if !params.is_object() {
        bail!("--params: expected a JSON object");
    }
    let request = OrderRequest {
        site_id: args.site,
        host_id: args.host,
        action: args.action,
        params,
        ttl: args.ttl,
        dry_run: args.dry_run,
        disruptive: args.disruptive,
    };
    let key = args.order_key.unwrap_or_else(|| state.order_key());
    let order = order::create_signed_with(state, &key, &request, Timestamp::now())?;
    writeln!(std::io::stdout().lock(), "{}", order.order_id)?;
    Ok(0)
}

fn list_orders(state: &StateDir, args: OrdersArgs) -> Result<u8> {
    let conn = db::open(&state.database())?;
    let rows = orders::list(&conn, args.site.as_deref(), args.host.as_deref())?;
    let now_ms = Timestamp::now().as_millisecond();
    let mut table = vec![row(["ID", "HOST", "ACTION", "STATE", "CREATED", "EXPIRES"])];
    for order in rows {
        let state = match (&order.outcome, order.result_at_ms) {
            (Some(outcome), Some(_)) => match &order.code {
                Some(code) => format!("result {outcome} ({code})"),
                None => format!("result {outcome}"),
            },
            _ if order.expires_at_ms <= now_ms => {
                format!("expired (delivered {}x)", order.deliveries)
            }
            _ if order.deliveries > 0 => format!("delivered {}x", order.deliveries),
            _ => "pending".to_string(),
        };
        let mut action = order.action.clone();
        if order.dry_run {
            action.push_str(" [dry-run]");
        }
        if order.disruptive {
            action.push_str(" [disruptive]");
        }
        table.push(vec![
            order.order_id,
            format!("{}/{}", order.site_id, order.host_id),
            action,
            state,
            time_text(Some(order.created_at_ms)),
            time_text(Some(order.expires_at_ms)),
        ]);
    }
    print_table(&table)?;
    Ok(0)
}

fn list_hosts(state: &StateDir) -> Result<u8> {
    let conn = db::open(&state.database())?;
    let mut table = vec![row([
        "SITE",
        "HOST",
        "LAST CHECK-IN",
        "VERSION",
        "PASS",
        "WARN",
        "FAIL",
        "UNKNOWN",
        "HEAD",
        "AGENT KEY",
    ])];
    for status in hosts::list(&conn)? {
        let summary = status
            .summary
            .as_deref()
            .and_then(|it| serde_json::from_str::<ComplianceSummary>(it).ok());
        let count = |pick: fn(&ComplianceSummary) -> u32| {
            summary
                .as_ref()
                .map_or("-".to_string(), |it| pick(it).to_string())
        };
        let key = match status.host.agent_key.as_deref() {
            Some(text) => match keys::parse_public_key(text, "pinned key") {
                Ok(key) => format!("keyid {}", &dsse::keyid(&key)[..16]),
                Err(_) => "corrupt".to_string(),
            },
            None => "not pinned".to_string(),
        };
        table.push(vec![
            status.host.site_id.clone(),
            status.host.host_id.clone(),
            time_text(status.last_checkin_ms),
            status.agent_version.clone().unwrap_or_else(|| "-".into()),
            count(|it| it.pass),
            count(|it| it.warn),
            count(|it| it.fail),
            count(|it| it.unknown),
            status
                .host
                .head
                .as_ref()
                .map_or("-".to_string(), |it| it.seq.to_string()),
            key,
        ]);
    }
    print_table(&table)?;
    Ok(0)
}

fn serve(state: StateDir, args: ServeArgs) -> Result<u8> {
    let millis =
        |value: Option<u64>, default: Duration| value.map_or(default, Duration::from_millis);
    let limits = Limits {
        handshake_timeout: millis(args.handshake_timeout_ms, server::HANDSHAKE_TIMEOUT),
        header_read_timeout: millis(args.header_read_timeout_ms, server::HEADER_READ_TIMEOUT),
        request_timeout: millis(args.request_timeout_ms, server::REQUEST_TIMEOUT),
        shutdown_grace: millis(args.shutdown_grace_ms, server::SHUTDOWN_GRACE),
        max_connections: args.max_connections.max(1),
    };
    let tls = match (args.tls_certificate, args.tls_key, args.client_ca) {
        (Some(certificate), Some(key), Some(client_ca)) => TlsFiles {
            certificate,
            key,
            client_ca,
        },
        _ => TlsFiles::of_state(&state),
    };
    let config = ServerConfig {
        listen: args.listen,
        state,
        tls,
        limits,
    };
    server::install_crypto_provider();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("msp-mcp")
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        let shutdown = shutdown_signal()?;
        let server = Server::bind(&config).await?;
        let address = server.local_addr()?;
        // The first line of stdout, for supervisors and tests that asked for port 0.
        let mut out = std::io::stdout().lock();
        writeln!(out, "listening on {address}")?;
        out.flush()?;
        drop(out);
        tracing::info!(%address, state = %config.state.root().display(), "serving API v1");
        server.run(shutdown).await;
        tracing::info!("stopped");
        anyhow::Ok(())
    })?;
    Ok(0)
}

/// Installs the SIGTERM and SIGINT handlers now (so a signal sent as soon as the address is
/// printed is not lost) and returns the future that completes on either.
fn shutdown_signal() -> Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut terminate = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
    Ok(async move {
        tokio::select! {
            _ = terminate.recv() => tracing::info!("SIGTERM received"),
            _ = interrupt.recv() => tracing::info!("SIGINT received"),
        }
    })
}

/// `2026-03-01T12:00:00Z`, or `-`.
pub(crate) fn time_text(ms: Option<i64>) -> String {
    ms.and_then(|it| Timestamp::from_millisecond(it).ok())
        .map_or("-".to_string(), |it| {
            it.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
        })
}

fn row<const N: usize>(cells: [&str; N]) -> Vec<String> {
    cells.iter().map(|it| it.to_string()).collect()
}

fn print_table(rows: &[Vec<String>]) -> Result<()> {
    let n_columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..n_columns)
        .map(|column| {
            rows.iter()
                .filter_map(|it| it.get(column))
                .map(|it| it.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = std::io::stdout().lock();
    for cells in rows {
        let mut line = String::new();
        for (column, cell) in cells.iter().enumerate() {
            if column + 1 == cells.len() {
                line.push_str(cell);
            } else {
                let pad = widths[column] - cell.chars().count();
                line.push_str(cell);
                line.push_str(&" ".repeat(pad + 2));
            }
        }
        writeln!(out, "{}", line.trim_end())?;
    }
    Ok(())
}
