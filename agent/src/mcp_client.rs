//! The agent's client of the control plane: HTTPS with mutual TLS, every request made by the
//! agent (pull-only), one typed method per endpoint of `protocol::api`.
//!
//! Security choices, written down where they are made:
//! - The server is trusted only if its certificate chains to the CA in `server_ca_file`: that
//!   file is the *only* root store (no webpki or system roots), so a certificate from any public
//!   CA for the same name is refused. The host name in the URL is still checked.
//! - The client certificate and key come from files (or the systemd credential
//!   [`CLIENT_KEY_CREDENTIAL`]); the key must not be readable by group or others, its bytes are
//!   wiped after the TLS configuration is built, and no error, log line or `Debug` output shows it.
//! - rustls runs on ring, installed as the process default; reqwest is built without a provider
//!   of its own, so aws-lc-rs is not in the tree.
//! - Every request has a connect timeout ([`CONNECT_TIMEOUT`]) and a whole-request timeout
//!   (configured, covering the body); answers are read incrementally and abandoned above the
//!   endpoint's limit, so a hostile or broken server costs bounded memory and time.
//! - Whatever the server answers ends in a typed [`ClientError`], never a panic: non-JSON, JSON of
//!   the wrong shape, an oversized body, an error status (with its `ApiError` code when the body
//!   has one) or bytes that are not HTTP at all.
//!
//! This module talks to the network and decides nothing: what to send and what an answer means
//! for orders and evidence is the daemon's and the outbox's business. It never opens a
//! listening socket.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use msp_compliance_protocol::api::{
    self, Ack, ApiError, CheckIn, CheckInResponse, CheckpointResponse, ErrorCode,
    EvidenceBatchResponse,
};
use msp_compliance_protocol::dsse::Envelope;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde::de::DeserializeOwned;
use zeroize::Zeroizing;

use crate::config::ControlPlane;

/// Longest wait for a TCP connection and the TLS handshake.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Name of the systemd credential holding the client key when no `client_key_file` is set.
pub const CLIENT_KEY_CREDENTIAL: &str = "mtls-client-key";

/// Largest PEM file read (a certificate chain or a key is a few KiB).
const MAX_PEM_BYTES: u64 = 256 * 1024;

/// Why the client could not be built. Messages name files, never their contents.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SetupError {
    /// The HTTP client could not be built.
    #[error("cannot build the HTTP client: {0}")]
    Client(String),
    /// No `client_key_file` and no systemd credential.
    #[error(
        "no client key: set control_plane.client_key_file or provide the systemd credential {CLIENT_KEY_CREDENTIAL}"
    )]
    NoClientKey,
    /// A PEM file holds nothing usable.
    #[error("{path}: {message}")]
    Pem { path: PathBuf, message: String },
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// rustls refused the certificates or the key.
    #[error("TLS configuration: {0}")]
    Tls(String),
    /// The URL is not usable.
    #[error("control_plane.url: {0}")]
    Url(String),
}

/// Why a request failed. The `Display` text goes into logs and the outbox's `last_error`, so it
/// names the endpoint and the cause, never a credential.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The server answered 2xx with a body that is not the expected JSON.
    #[error("{endpoint}: malformed answer: {message}")]
    Malformed {
        endpoint: &'static str,
        message: String,
    },
    /// The server answered with an error status.
    #[error("{endpoint}: HTTP {status} {}: {message}", code.map_or("-", error_code_name))]
    Status {
        endpoint: &'static str,
        status: u16,
        /// The API error code, when the body was an `ApiError`.
        code: Option<ErrorCode>,
        message: String,
    },
    /// No complete answer within the request timeout.
    #[error("{endpoint}: no answer within {timeout_ms} ms")]
    TimedOut {
        endpoint: &'static str,
        timeout_ms: u128,
    },
    /// The answer's body is larger than the endpoint's limit; the rest was not read.
    #[error("{endpoint}: answer larger than {limit} bytes; abandoned")]
    TooLarge {
        endpoint: &'static str,
        limit: usize,
    },
    /// The connection or TLS failed, or the answer was not HTTP.
    #[error("{endpoint}: {message}")]
    Transport {
        endpoint: &'static str,
        message: String,
    },
}

/// A client of one control plane.
#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    /// Base URL without a trailing `/`.
    base_url: String,
    request_timeout: Duration,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("base_url", &self.base_url)
            .field("request_timeout", &self.request_timeout)
            .finish_non_exhaustive()
    }
}

/// PEM material for a client, as read from files.
pub struct Identity {
    /// The pinned CA certificate(s) of the server, PEM.
    pub server_ca_pem: Vec<u8>,
    /// The client certificate chain, PEM.
    pub client_certificate_pem: Vec<u8>,
    /// The client key, PEM (wiped on drop).
    pub client_key_pem: Zeroizing<Vec<u8>>,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity").finish_non_exhaustive()
    }
}

impl Client {
    /// A client for the configured control plane: reads the CA, the certificate and the key
    /// (file or systemd credential).
    pub fn new(settings: &ControlPlane) -> Result<Client, SetupError> {
        let credentials = std::env::var_os("CREDENTIALS_DIRECTORY")
            .filter(|it| !it.is_empty())
            .map(PathBuf::from);
        let key_path = match (&settings.client_key_file, credentials) {
            (Some(path), _) => path.clone(),
            (None, Some(dir)) => dir.join(CLIENT_KEY_CREDENTIAL),
            (None, None) => return Err(SetupError::NoClientKey),
        };
        let identity = Identity {
            server_ca_pem: read_pem_file(&settings.server_ca_file, false)?.to_vec(),
            client_certificate_pem: read_pem_file(&settings.client_certificate_file, false)?
                .to_vec(),
            client_key_pem: read_pem_file(&key_path, true)?,
        };
        let paths = PemPaths {
            server_ca: &settings.server_ca_file,
            client_certificate: &settings.client_certificate_file,
            client_key: &key_path,
        };
        Client::from_identity(&settings.url, &identity, &paths, settings.request_timeout)
    }

    /// A client from PEM material already read; `paths` only name the sources in errors.
    pub fn from_identity(
        url: &str,
        identity: &Identity,
        paths: &PemPaths<'_>,
        request_timeout: Duration,
    ) -> Result<Client, SetupError> {
        let base_url = url.trim_end_matches('/').to_string();
        let parsed = reqwest::Url::parse(&base_url)
            .map_err(|err| SetupError::Url(format!("not a URL: {err}")))?;
        if parsed.scheme() != "https" || parsed.host_str().is_none() {
            return Err(SetupError::Url("expected https://host[:port]".into()));
        }
        if !parsed.username().is_empty() || parsed.password().is_some() {
            return Err(SetupError::Url("must not carry credentials".into()));
        }
        let tls = tls_config(identity, paths)?;
        let http = reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(request_timeout)
            // The control plane is reached directly: proxy variables in the environment must
            // not reroute orders and evidence (mTLS would still hold, but failures would be
            // someone else's).
            .no_proxy()
            // A redirect would send the same body somewhere the operator did not configure.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("msp-compliance-agent/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|err| SetupError::Client(error_chain(&err)))?;
        Ok(Client {
            http,
            base_url,
            request_timeout,
        })
    }

    /// The base URL (printed in logs and used in the sink's name).
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// `POST /v1/checkin`.
    pub async fn check_in(&self, body: &CheckIn) -> Result<CheckInResponse, ClientError> {
        let bytes = to_json(api::CHECKIN_PATH, body)?;
        self.post(api::CHECKIN_PATH, bytes, api::MAX_BODY_BYTES)
            .await
    }

    /// `POST /v1/evidence` with a body that is already an `EvidenceBatch` document (the
    /// outbox sink builds it from the stored canonical envelope bytes, unchanged).
    pub async fn post_evidence(
        &self,
        batch_json: Vec<u8>,
    ) -> Result<EvidenceBatchResponse, ClientError> {
        self.post(api::EVIDENCE_PATH, batch_json, api::MAX_BODY_BYTES)
            .await
    }

    /// `POST /v1/results` with a signed `OrderResult` envelope.
    pub async fn post_result(&self, envelope: &Envelope) -> Result<Ack, ClientError> {
        let bytes = to_json(api::RESULTS_PATH, envelope)?;
        self.post(api::RESULTS_PATH, bytes, api::MAX_SMALL_BODY_BYTES)
            .await
    }

    /// `POST /v1/checkpoint` with a checkpoint evidence envelope.
    pub async fn post_checkpoint(
        &self,
        envelope: &Envelope,
    ) -> Result<CheckpointResponse, ClientError> {
        let bytes = to_json(api::CHECKPOINT_PATH, envelope)?;
        self.post(api::CHECKPOINT_PATH, bytes, api::MAX_SMALL_BODY_BYTES)
            .await
    }

    async fn post<T: DeserializeOwned>(
        &self,
        endpoint: &'static str,
        body: Vec<u8>,
        limit: usize,
    ) -> Result<T, ClientError> {
        let url = format!("{}{endpoint}", self.base_url);
        let response = self
            .http
            .post(url)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .map_err(|err| self.transport(endpoint, &err))?;
        let status = response.status().as_u16();
        let bytes = self.read_bounded(endpoint, response, limit).await?;
        parse_answer(endpoint, status, &bytes)
    }

    /// Reads a body chunk by chunk and gives up as soon as it passes `limit`.
    async fn read_bounded(
        &self,
        endpoint: &'static str,
        mut response: reqwest::Response,
        limit: usize,
    ) -> Result<Vec<u8>, ClientError> {
        if response
            .content_length()
            .is_some_and(|it| it > limit as u64)
        {
            return Err(ClientError::TooLarge { endpoint, limit });
        }
        let mut bytes = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|err| self.transport(endpoint, &err))?
        {
            if bytes.len() + chunk.len() > limit {
                return Err(ClientError::TooLarge { endpoint, limit });
            }
            bytes.extend_from_slice(&chunk);
        }
        Ok(bytes)
    }

    fn transport(&self, endpoint: &'static str, err: &reqwest::Error) -> ClientError {
        if err.is_timeout() {
            return ClientError::TimedOut {
                endpoint,
                timeout_ms: self.request_timeout.as_millis(),
            };
        }
        ClientError::Transport {
            endpoint,
            message: error_chain(err),
        }
    }
}

/// Names of the PEM sources, for error messages.
#[derive(Clone, Copy, Debug)]
pub struct PemPaths<'a> {
    /// The server CA file.
    pub server_ca: &'a Path,
    /// The client certificate file.
    pub client_certificate: &'a Path,
    /// The client key file or credential.
    pub client_key: &'a Path,
}

/// Turns an answer into `T`: a 2xx body must be `T`'s JSON; anything else is an error that
/// carries the `ApiError` code when the body has one. Pure, so hostile answers are unit-tested.
pub fn parse_answer<T: DeserializeOwned>(
    endpoint: &'static str,
    status: u16,
    body: &[u8],
) -> Result<T, ClientError> {
    if !(200..300).contains(&status) {
        let (code, message) = match serde_json::from_slice::<ApiError>(body) {
            Ok(error) => (Some(error.code), one_line(&error.message)),
            Err(_) => (None, excerpt(body)),
        };
        return Err(ClientError::Status {
            endpoint,
            status,
            code,
            message,
        });
    }
    serde_json::from_slice(body).map_err(|err| ClientError::Malformed {
        endpoint,
        message: err.to_string(),
    })
}

/// Builds the rustls client configuration: the pinned CA as the only root, the client
/// certificate chain and key, ring as the provider.
pub fn tls_config(
    identity: &Identity,
    paths: &PemPaths<'_>,
) -> Result<rustls::ClientConfig, SetupError> {
    install_crypto_provider();
    let pem_error = |path: &Path, message: String| SetupError::Pem {
        path: path.to_path_buf(),
        message,
    };
    let mut roots = rustls::RootCertStore::empty();
    for (idx, cert) in CertificateDer::pem_slice_iter(&identity.server_ca_pem).enumerate() {
        let cert =
            cert.map_err(|err| pem_error(paths.server_ca, format!("certificate {idx}: {err}")))?;
        roots
            .add(cert)
            .map_err(|err| pem_error(paths.server_ca, format!("certificate {idx}: {err}")))?;
    }
    if roots.is_empty() {
        return Err(pem_error(
            paths.server_ca,
            "no CERTIFICATE in the file; expected the control plane's CA in PEM".into(),
        ));
    }
    let chain = CertificateDer::pem_slice_iter(&identity.client_certificate_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|err| pem_error(paths.client_certificate, err.to_string()))?;
    if chain.is_empty() {
        return Err(pem_error(
            paths.client_certificate,
            "no CERTIFICATE in the file; expected this host's client certificate in PEM".into(),
        ));
    }
    // The error of a key parse is generic (it does not quote the key), but it is replaced by
    // a fixed text anyway: nothing derived from key bytes leaves this function.
    let key = PrivateKeyDer::from_pem_slice(&identity.client_key_pem).map_err(|_| {
        pem_error(
            paths.client_key,
            "no usable PRIVATE KEY in the file (PKCS#8, PKCS#1 or SEC1 PEM expected)".into(),
        )
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|err| SetupError::Tls(err.to_string()))?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .map_err(|err| SetupError::Tls(format!("client certificate or key: {err}")))?;
    Ok(config)
}

/// Installs ring as rustls's process-wide crypto provider (the first call wins; later calls
/// find it installed, which is what the ignored `Err` means).
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Reads a PEM file with a size limit. A `secret` file must not be readable by group or
/// others, like the evidence signing key.
fn read_pem_file(path: &Path, secret: bool) -> Result<Zeroizing<Vec<u8>>, SetupError> {
    use std::os::unix::fs::PermissionsExt;
    let io = |source| SetupError::Read {
        path: path.to_path_buf(),
        source,
    };
    let file = std::fs::File::open(path).map_err(io)?;
    let mode = file.metadata().map_err(io)?.permissions().mode();
    if secret && mode & 0o077 != 0 {
        return Err(SetupError::Pem {
            path: path.to_path_buf(),
            message: format!(
                "key file is readable by group or others (mode {:04o}); restrict it with chmod 600",
                mode & 0o7777
            ),
        });
    }
    let mut bytes = Zeroizing::new(Vec::new());
    file.take(MAX_PEM_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(io)?;
    if bytes.len() as u64 > MAX_PEM_BYTES {
        return Err(SetupError::Pem {
            path: path.to_path_buf(),
            message: format!("larger than {MAX_PEM_BYTES} bytes"),
        });
    }
    Ok(bytes)
}

fn to_json(endpoint: &'static str, value: &impl serde::Serialize) -> Result<Vec<u8>, ClientError> {
    serde_json::to_vec(value).map_err(|err| ClientError::Malformed {
        endpoint,
        message: format!("cannot serialize the request: {err}"),
    })
}

/// The snake_case name of an API error code.
fn error_code_name(code: ErrorCode) -> &'static str {
    match code {
        ErrorCode::BadRequest => "bad_request",
        ErrorCode::TooLarge => "too_large",
        ErrorCode::NotEnrolled => "not_enrolled",
        ErrorCode::IdentityMismatch => "identity_mismatch",
        ErrorCode::KeyMismatch => "key_mismatch",
        ErrorCode::BadSignature => "bad_signature",
        ErrorCode::Internal => "internal",
    }
}

/// The first 200 characters of a body, on one line, for messages.
fn excerpt(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(&body[..body.len().min(800)]);
    let text = one_line(&text);
    if text.is_empty() {
        return "-".to_string();
    }
    text
}

fn one_line(text: &str) -> String {
    let flat: String = text
        .chars()
        .map(|it| if it.is_control() { ' ' } else { it })
        .take(200)
        .collect();
    flat.trim().to_string()
}

/// An error and its sources on one line (reqwest's own `Display` hides the cause).
fn error_chain(err: &dyn std::error::Error) -> String {
    let mut res = err.to_string();
    let mut source = err.source();
    while let Some(it) = source {
        let text = it.to_string();
        if !res.contains(&text) {
            res.push_str(": ");
            res.push_str(&text);
        }
        source = it.source();
    }
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn garbage_answers_are_typed_errors() {
        let endpoint = api::CHECKIN_PATH;
        let check = |status: u16, body: &[u8], expect: &str| {
            let err = parse_answer::<CheckInResponse>(endpoint, status, body).unwrap_err();
            let text = err.to_string();
            assert!(
                text.contains(expect),
                "{text:?} does not contain {expect:?}"
            );
            err
        };
        assert!(matches!(
            check(200, b"", "malformed answer"),
            ClientError::Malformed { .. }
        ));
        check(
            200,
            b"<html>hello</html>",
            "malformed answer: expected value",
        );
        check(
            200,
            br#"{"server_time":"yesterday","orders":[]}"#,
            "malformed answer",
        );
        check(
            200,
            br#"{"server_time":"2026-11-27T12:00:00Z","orders":[],"extra":1}"#,
            "unknown field `extra`",
        );
        check(200, &[0xff, 0xfe, 0x00], "malformed answer");
        let err = check(
            403,
            br#"{"code":"not_enrolled","message":"unknown client\ncertificate"}"#,
            "/v1/checkin: HTTP 403 not_enrolled: unknown client certificate",
        );
        assert!(matches!(
            err,
            ClientError::Status {
                code: Some(ErrorCode::NotEnrolled),
                ..
            }
        ));
        check(502, b"Bad Gateway", "HTTP 502 -: Bad Gateway");
        check(500, b"", "HTTP 500 -: -");
        let ok: CheckInResponse = parse_answer(
            endpoint,
            200,
            br#"{"server_time":"2026-11-27T12:00:00Z","orders":[]}"#,
        )
        .unwrap();
        assert!(ok.orders.is_empty());
    }

    proptest::proptest! {
        #[test]
        fn any_answer_is_a_value_or_an_error_never_a_panic(
            status in 100u16..600,
            body in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512),
        ) {
            let _ = parse_answer::<CheckInResponse>(api::CHECKIN_PATH, status, &body);
            let _ = parse_answer::<EvidenceBatchResponse>(api::EVIDENCE_PATH, status, &body);
            let _ = parse_answer::<Ack>(api::RESULTS_PATH, status, &body);
        }
    }

    #[test]
    fn bad_pem_names_the_file_and_never_the_key() {
        let paths = PemPaths {
            server_ca: Path::new("/etc/ca.pem"),
            client_certificate: Path::new("/etc/client.pem"),
            client_key: Path::new("/etc/client.key"),
        };
        let identity = Identity {
            server_ca_pem: b"not a pem".to_vec(),
            client_certificate_pem: Vec::new(),
            client_key_pem: Zeroizing::new(
                b"-----BEGIN PRIVATE KEY-----\nc2VjcmV0\n-----END PRIVATE KEY-----\n".to_vec(),
            ),
        };
        let err = tls_config(&identity, &paths).unwrap_err().to_string();
        assert!(err.starts_with("/etc/ca.pem: no CERTIFICATE"), "{err}");
        let key_err = Client::from_identity(
            "http://127.0.0.1:1",
            &identity,
            &paths,
            Duration::from_secs(1),
        )
        .unwrap_err()
        .to_string();
        assert!(key_err.contains("expected https://"), "{key_err}");
        assert!(!key_err.contains("c2VjcmV0"), "{key_err}");
    }
}
