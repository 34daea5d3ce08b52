//! The HTTPS server: TLS 1.3 with a required client certificate from our CA (rustls on ring),
//! one HTTP/1.1 keep-alive connection per agent (hyper), the API router (axum) as the service,
//! and the limits that keep one slow or hostile client from holding the server.
//!
//! The accept loop owns the listener; each connection is a task that owns its socket and a
//! permit of the connection semaphore ([`Limits::max_connections`]), released when the task
//! ends. After the handshake the task computes the client certificate's fingerprint once and
//! inserts it as an `api::Peer` into every request of the connection, which is how handlers
//! know the host without trusting anything in the body.
//!
//! Shutdown (the future passed to [`Server::run`]): stop accepting, ask every connection to
//! close after its in-flight request (hyper's graceful shutdown), wait at most
//! [`Limits::shutdown_grace`], then stop the database writer after its queued jobs.
//!
//! This module owns sockets, TLS and timeouts; it decides nothing about requests.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use hyper::Request;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use rustls::RootCertStore;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tower::Service;

use crate::api::{self, AppState, Peer};
use crate::db::DbError;
use crate::files::{self, FileError};
use crate::pki;
use crate::pool::Database;
use crate::state::StateDir;

/// A TLS handshake must finish within this; a client that connects and stays silent is
/// dropped.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// A request's headers must arrive within this after the server starts waiting for them
/// (slow-loris). hyper starts this clock when it waits for the next request on a keep-alive
/// connection too, so it is also how long an idle connection is kept.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(15);
/// A whole request (body read, verification, storage, answer) must finish within this, or it
/// is answered with 408.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// How long shutdown waits for in-flight requests.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);
/// Connections served at once; more wait in the kernel's accept queue. Each costs a socket,
/// TLS buffers (~40 KiB) and a task.
pub const MAX_CONNECTIONS: usize = 4096;
/// Pause after a failed `accept` (e.g. out of file descriptors), so the loop does not spin.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(50);

/// The server could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    /// The listen address could not be bound.
    #[error("cannot listen on {address}: {source}")]
    Bind {
        /// The address.
        address: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// A certificate or key file is not usable.
    #[error("{path}: {message}")]
    Certificate {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The database could not be opened.
    #[error(transparent)]
    Database(#[from] DbError),
    /// A file could not be read.
    #[error(transparent)]
    File(#[from] FileError),
    /// rustls refused the configuration.
    #[error("tls configuration: {0}")]
    Tls(String),
}

/// Timeouts and bounds of the server (see the constants for each one's reason).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// [`HANDSHAKE_TIMEOUT`].
    pub handshake_timeout: Duration,
    /// [`HEADER_READ_TIMEOUT`].
    pub header_read_timeout: Duration,
    /// [`REQUEST_TIMEOUT`].
    pub request_timeout: Duration,
    /// [`SHUTDOWN_GRACE`].
    pub shutdown_grace: Duration,
    /// [`MAX_CONNECTIONS`].
    pub max_connections: usize,
}

impl Limits {
    /// The documented defaults.
    pub const STANDARD: Limits = Limits {
        handshake_timeout: HANDSHAKE_TIMEOUT,
        header_read_timeout: HEADER_READ_TIMEOUT,
        request_timeout: REQUEST_TIMEOUT,
        shutdown_grace: SHUTDOWN_GRACE,
        max_connections: MAX_CONNECTIONS,
    };
}

/// The TLS files `serve` reads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    /// Server certificate chain (PEM), leaf first.
    pub certificate: PathBuf,
    /// Its private key (PEM, mode 0600 or stricter).
    pub key: PathBuf,
    /// CA certificates (PEM) whose client certificates are accepted.
    pub client_ca: PathBuf,
}

impl TlsFiles {
    /// The files `init` wrote into the state directory.
    pub fn of_state(state: &StateDir) -> TlsFiles {
        TlsFiles {
            certificate: state.server_certificate(),
            key: state.server_key(),
            client_ca: state.ca_certificate(),
        }
    }
}

/// What `serve` runs with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerConfig {
    /// Listen address.
    pub listen: SocketAddr,
    /// The state directory.
    pub state: StateDir,
    /// Certificates and key.
    pub tls: TlsFiles,
    /// Timeouts and bounds.
    pub limits: Limits,
}

/// A bound server, ready to run.
pub struct Server {
    listener: TcpListener,
    acceptor: TlsAcceptor,
    app_state: Arc<AppState>,
    limits: Limits,
}

/// Installs ring as rustls's process-wide crypto provider (the one provider in the tree).
/// Later calls find it installed, which is what the ignored `Err` means.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// The TLS configuration: TLS 1.3 only (every client is our agent, built on rustls), the
/// server certificate, and client certificates required and verified against the client CA.
pub fn tls_config(files: &TlsFiles) -> Result<rustls::ServerConfig, ServerError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let ca_path = files.client_ca.clone();
    let ca_pem = files::read_public(&ca_path)?;
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&ca_pem) {
        let cert = cert.map_err(|err| ServerError::Certificate {
            path: ca_path.clone(),
            message: err.to_string(),
        })?;
        roots.add(cert).map_err(|err| ServerError::Certificate {
            path: ca_path.clone(),
            message: err.to_string(),
        })?;
    }
    let verifier =
        WebPkiClientVerifier::builder_with_provider(Arc::new(roots), Arc::clone(&provider))
            .build()
            .map_err(|err| ServerError::Tls(err.to_string()))?;
    let cert_path = files.certificate.clone();
    let cert_pem = files::read_public(&cert_path)?;
    let chain = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|err| ServerError::Certificate {
            path: cert_path.clone(),
            message: err.to_string(),
        })?;
    let key_path = files.key.clone();
    let key_pem = files::read_secret(&key_path)?;
    // The error of a PEM parse names the section kind, never key bytes.
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|err| ServerError::Certificate {
        path: key_path.clone(),
        message: err.to_string(),
    })?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|err| ServerError::Tls(err.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|err| ServerError::Tls(err.to_string()))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

impl Server {
    /// Loads TLS material, opens the database and binds the listen address.
    pub async fn bind(config: &ServerConfig) -> Result<Server, ServerError> {
        let tls = tls_config(&config.tls)?;
        let database = Database::start(&config.state.database())?;
        let listener =
            TcpListener::bind(config.listen)
                .await
                .map_err(|source| ServerError::Bind {
                    address: config.listen,
                    source,
                })?;
        Ok(Server {
            listener,
            acceptor: TlsAcceptor::from(Arc::new(tls)),
            app_state: Arc::new(AppState::new(database)),
            limits: config.limits,
        })
    }

    /// The bound address (the port the OS picked for `:0`).
    pub fn local_addr(&self) -> Result<SocketAddr, std::io::Error> {
        self.listener.local_addr()
    }

    /// Serves until `shutdown` completes, then shuts down gracefully.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let Server {
            listener,
            acceptor,
            app_state,
            limits,
        } = self;
        let app = api::router(Arc::clone(&app_state));
        let permits = Arc::new(Semaphore::new(limits.max_connections));
        let graceful = GracefulShutdown::new();
        tokio::pin!(shutdown);
        loop {
            let permit = tokio::select! {
                () = &mut shutdown => break,
                permit = Arc::clone(&permits).acquire_owned() => permit,
            };
            // The semaphore is never closed, so a permit always comes.
            let Ok(permit) = permit else { break };
            let (tcp, address) = tokio::select! {
                () = &mut shutdown => break,
                accepted = listener.accept() => match accepted {
                    Ok(it) => it,
                    Err(err) => {
                        tracing::warn!(error = %err, "accept failed");
                        tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                        continue;
                    }
                },
            };
            let acceptor = acceptor.clone();
            let app = app.clone();
            let watcher = graceful.watcher();
            tokio::spawn(async move {
                serve_connection(tcp, address, acceptor, app, limits, watcher).await;
                // Held for the connection's life: one permit per open connection.
                drop(permit);
            });
        }
        drop(listener);
        tracing::info!("shutting down: no new connections; finishing in-flight requests");
        tokio::select! {
            () = graceful.shutdown() => tracing::info!("all connections closed"),
            () = tokio::time::sleep(limits.shutdown_grace) => {
                tracing::warn!(grace = ?limits.shutdown_grace, "connections still open after the grace period; closing them");
            }
        }
        drop(app);
        if let Some(state) = Arc::into_inner(app_state) {
            let _ = tokio::task::spawn_blocking(move || state.database.shutdown()).await;
        }
    }
}

async fn serve_connection(
    tcp: TcpStream,
    address: SocketAddr,
    acceptor: TlsAcceptor,
    app: axum::Router,
    limits: Limits,
    watcher: Watcher,
) {
    // Requests and answers are small; waiting to fill packets only adds latency.
    let _ = tcp.set_nodelay(true);
    let tls = match tokio::time::timeout(limits.handshake_timeout, acceptor.accept(tcp)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(err)) => {
            tracing::debug!(%address, error = %err, "tls handshake failed");
            return;
        }
        Err(_) => {
            tracing::debug!(%address, "tls handshake timed out");
            return;
        }
    };
    // The verifier requires a client certificate, so a completed handshake has one.
    let Some(fingerprint) = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|chain| chain.first())
        .map(|cert| pki::fingerprint(cert))
    else {
        return;
    };
    let peer = Peer {
        fingerprint: fingerprint.into(),
        address,
    };
    let request_timeout = limits.request_timeout;
    let service = hyper::service::service_fn(move |request: Request<Incoming>| {
        let mut app = app.clone();
        let peer = peer.clone();
        async move {
            let mut request = request.map(Body::new);
            request.extensions_mut().insert(peer);
            let response = match tokio::time::timeout(request_timeout, app.call(request)).await {
                Ok(Ok(response)) => response,
                Ok(Err(never)) => match never {},
                Err(_) => api::timeout_response(request_timeout),
            };
            Ok::<_, Infallible>(response)
        }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .keep_alive(true);
    let connection = builder.serve_connection(TokioIo::new(tls), service);
    if let Err(err) = watcher.watch(connection).await {
        tracing::debug!(%address, error = %err, "connection ended with an error");
    }
}
