//! The S3 Object Lock (WORM) sink: one object per envelope, locked in COMPLIANCE mode until the
//! record's `retain_until`, so not even the bucket's owner can delete or shorten it before then.
//!
//! Each record is a `PUT <prefix><site>/<host>/<seq, 20 digits>-<digest hex>.json` whose body is
//! the stored canonical envelope (so the SHA-256 of the object is the digest in its name), with
//! `x-amz-object-lock-mode: COMPLIANCE`, `x-amz-object-lock-retain-until-date` (the record's
//! `retain_until` rounded *up* to the second, so the lock is never shorter), `Content-MD5`
//! (required by S3 for any PUT that sets a lock, and verified by SeaweedFS and Ceph RGW) and
//! `x-amz-checksum-sha256` (verified end to end by AWS). `If-None-Match: *` makes a
//! redelivery create no second version: the server answers 412, the sink reads the existing
//! object back, and identical bytes count as delivered; different bytes are a conflict.
//!
//! Requests are signed with AWS SigV4 by the `aws-sigv4` crate (not the SDK) and sent by
//! `reqwest` with rustls on ring, with a connect and a whole-request timeout on every request.
//! The secret key lives in the signing credentials only; no error, log or `Debug` output shows
//! it. This module must not delete objects, change retention or touch buckets: the agent only
//! adds evidence (the tests' own S3 client does the rest, to prove the server refuses).

use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, SystemTime};

use aws_credential_types::Credentials;
use aws_sigv4::http_request::{
    PayloadChecksumKind, PercentEncodingMode, SignableBody, SignableRequest, SigningSettings,
    UriPathNormalizationMode,
};
use aws_sigv4::sign::v4;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use jiff::Timestamp;
use md5::{Digest as _, Md5};
use sha2::Sha256;
use zeroize::Zeroizing;

use crate::config::S3SinkFile;
use crate::outbox::{Delivery, Outgoing, SetupError, Sink, SinkError};

/// Longest wait for a TCP and TLS connection.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest wait for a whole request (an envelope is a few KiB).
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Most bytes read from an error answer (S3 errors are a short XML document).
const MAX_ERROR_BODY: usize = 64 * 1024;

/// Where and how to reach the bucket.
pub struct S3Settings {
    /// Endpoint URL, `http(s)://host[:port]`.
    pub endpoint: String,
    /// Bucket (created with Object Lock enabled).
    pub bucket: String,
    /// SigV4 region.
    pub region: String,
    /// Key prefix, e.g. `evidence/`.
    pub prefix: String,
    /// `endpoint/bucket/key` rather than `bucket.endpoint/key`.
    pub path_style: bool,
    /// Access key id.
    pub access_key_id: String,
    /// Secret access key (wiped on drop).
    pub secret_access_key: Zeroizing<String>,
    /// Connect timeout.
    pub connect_timeout: Duration,
    /// Whole-request timeout.
    pub request_timeout: Duration,
}

impl std::fmt::Debug for S3Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Settings")
            .field("endpoint", &self.endpoint)
            .field("bucket", &self.bucket)
            .field("region", &self.region)
            .field("prefix", &self.prefix)
            .field("path_style", &self.path_style)
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"<redacted>")
            .finish()
    }
}

impl S3Settings {
    /// Settings from the configuration, reading the credential files (the secret one must
    /// not be readable by group or others).
    pub fn from_config(file: &S3SinkFile) -> Result<S3Settings, SetupError> {
        let access_key_id = super::read_credential(&file.access_key_id_file, false)?;
        let secret_access_key =
            Zeroizing::new(super::read_credential(&file.secret_access_key_file, true)?);
        Ok(S3Settings {
            endpoint: file.endpoint.clone(),
            bucket: file.bucket.clone(),
            region: file.region.clone(),
            prefix: file.prefix.clone(),
            path_style: file.path_style,
            access_key_id,
            secret_access_key,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
        })
    }
}

/// SigV4 signing for S3: credentials and region.
pub struct Signer {
    credentials: Credentials,
    region: String,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer")
            .field("access_key_id", &self.credentials.access_key_id())
            .field("region", &self.region)
            .finish_non_exhaustive()
    }
}

impl Signer {
    /// A signer for `region` with these keys.
    pub fn new(access_key_id: &str, secret_access_key: &str, region: &str) -> Signer {
        Signer {
            credentials: Credentials::new(
                access_key_id,
                secret_access_key,
                None,
                None,
                "msp-compliance",
            ),
            region: region.to_string(),
        }
    }

    /// The headers that sign a request (`authorization`, `x-amz-date`,
    /// `x-amz-content-sha256`). `url` must be percent-encoded already; every header in
    /// `headers` is signed and must be sent as given.
    pub fn sign(
        &self,
        method: &str,
        url: &str,
        headers: &[(&str, &str)],
        body: &[u8],
        time: SystemTime,
    ) -> Result<Vec<(String, String)>, String> {
        let mut settings = SigningSettings::default();
        // S3 signs the path as sent (no double encoding, no dot-segment normalization) and
        // wants the payload hash in a header.
        settings.percent_encoding_mode = PercentEncodingMode::Single;
        settings.payload_checksum_kind = PayloadChecksumKind::XAmzSha256;
        settings.uri_path_normalization_mode = UriPathNormalizationMode::Disabled;
        let identity = self.credentials.clone().into();
        let params = v4::SigningParams::builder()
            .identity(&identity)
            .region(&self.region)
            .name("s3")
            .time(time)
            .settings(settings)
            .build()
            .map_err(|err| format!("cannot sign: {err}"))?
            .into();
        let request = SignableRequest::new(
            method,
            url,
            headers.iter().copied(),
            SignableBody::Bytes(body),
        )
        .map_err(|err| format!("cannot sign: {err}"))?;
        let (instructions, _signature) = aws_sigv4::http_request::sign(request, &params)
            .map_err(|err| format!("cannot sign: {err}"))?
            .into_parts();
        Ok(instructions
            .headers()
            .map(|(name, value)| (name.to_string(), value.to_string()))
            .collect())
    }
}

/// The S3 Object Lock sink.
pub struct S3Sink {
    name: String,
    client: reqwest::Client,
    signer: Signer,
    /// `scheme://authority` and the path prefix of every object URL (bucket included for
    /// path-style addressing).
    base: String,
    prefix: String,
    request_timeout: Duration,
}

impl std::fmt::Debug for S3Sink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Sink")
            .field("name", &self.name)
            .field("base", &self.base)
            .finish_non_exhaustive()
    }
}

impl S3Sink {
    /// A sink for these settings. Installs ring as rustls's process-wide crypto provider if
    /// none is installed yet.
    pub fn new(settings: S3Settings) -> Result<S3Sink, SetupError> {
        install_crypto_provider();
        // The text is not quoted in this error: it could carry credentials.
        let endpoint = reqwest::Url::parse(&settings.endpoint)
            .map_err(|err| SetupError::Endpoint(format!("not a URL: {err}")))?;
        let Some(host) = endpoint.host_str() else {
            return Err(SetupError::Endpoint(format!(
                "{:?} has no host",
                settings.endpoint
            )));
        };
        if !endpoint.username().is_empty() || endpoint.password().is_some() {
            // Credentials belong in the key files; a URL is printed in status and errors.
            return Err(SetupError::Endpoint(
                "the endpoint URL must not carry credentials; use access_key_id_file and secret_access_key_file".into(),
            ));
        }
        if !matches!(endpoint.scheme(), "http" | "https")
            || endpoint.query().is_some()
            || !matches!(endpoint.path(), "" | "/")
        {
            return Err(SetupError::Endpoint(format!(
                "{:?}: expected http(s)://host[:port] with no path or query",
                settings.endpoint
            )));
        }
        let authority = match endpoint.port() {
            Some(port) => format!("{host}:{port}"),
            None => host.to_string(),
        };
        let bucket = encode_path(&settings.bucket);
        let base = if settings.path_style {
            format!("{}://{authority}/{bucket}/", endpoint.scheme())
        } else {
            format!("{}://{bucket}.{authority}/", endpoint.scheme())
        };
        let client = reqwest::Client::builder()
            .connect_timeout(settings.connect_timeout)
            .timeout(settings.request_timeout)
            .user_agent(concat!("msp-compliance-agent/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|err| SetupError::Client(error_chain(&err)))?;
        Ok(S3Sink {
            name: S3Sink::name_for(&settings.endpoint, &settings.bucket, &settings.prefix),
            client,
            signer: Signer::new(
                &settings.access_key_id,
                &settings.secret_access_key,
                &settings.region,
            ),
            base,
            prefix: settings.prefix,
            request_timeout: settings.request_timeout,
        })
    }

    /// The sink name (cursor key) of a destination: `s3:<endpoint>/<bucket>/<prefix>`, so a
    /// new bucket or prefix starts from the first record.
    pub fn name_for(endpoint: &str, bucket: &str, prefix: &str) -> String {
        format!("s3:{}/{bucket}/{prefix}", endpoint.trim_end_matches('/'))
    }

    /// The object key of a record.
    pub fn object_key(&self, outgoing: &Outgoing) -> String {
        format!("{}{}", self.prefix, outgoing.object_name())
    }

    /// The URL of an object key.
    pub fn object_url(&self, key: &str) -> String {
        format!("{}{}", self.base, encode_path(key))
    }

    /// Stores one record (or finds it stored already).
    pub async fn put(&self, outgoing: &Outgoing) -> Result<(), SinkError> {
        let key = self.object_key(outgoing);
        let url = self.object_url(&key);
        let content_md5 = STANDARD.encode(Md5::digest(&outgoing.envelope));
        let checksum = STANDARD.encode(Sha256::digest(&outgoing.envelope));
        let retain_until = lock_date(outgoing.retain_until);
        let headers = [
            ("content-md5", content_md5.as_str()),
            ("content-type", "application/json"),
            ("if-none-match", "*"),
            ("x-amz-checksum-sha256", checksum.as_str()),
            ("x-amz-object-lock-mode", "COMPLIANCE"),
            ("x-amz-object-lock-retain-until-date", retain_until.as_str()),
        ];
        let response = self
            .send("PUT", &key, &url, &headers, outgoing.envelope.clone())
            .await?;
        let status = response.status().as_u16();
        if (200..300).contains(&status) {
            // A server that says which bytes it stored must name ours.
            if let Some(stored) = response.headers().get("x-amz-checksum-sha256")
                && stored.as_bytes() != checksum.as_bytes()
            {
                return Err(SinkError::Refused {
                    operation: "PUT",
                    name: key,
                    status,
                    code: "ChecksumMismatch".into(),
                    message: "the server acknowledged a different SHA-256".into(),
                });
            }
            return Ok(());
        }
        if status == 412 {
            // If-None-Match failed: something is stored under the key already.
            return self.confirm_existing(&key, &url, &outgoing.envelope).await;
        }
        Err(refused("PUT", key, response).await)
    }

    /// After a 412: reads the existing object; identical bytes mean an earlier delivery.
    async fn confirm_existing(
        &self,
        key: &str,
        url: &str,
        expected: &[u8],
    ) -> Result<(), SinkError> {
        let response = self.send("GET", key, url, &[], Vec::new()).await?;
        let status = response.status().as_u16();
        if !(200..300).contains(&status) {
            return Err(refused("GET", key.to_string(), response).await);
        }
        let found = read_bounded("GET", key, response, expected.len() + 1).await?;
        if found != expected {
            return Err(SinkError::Conflict {
                name: key.to_string(),
            });
        }
        Ok(())
    }

    async fn send(
        &self,
        method: &'static str,
        key: &str,
        url: &str,
        headers: &[(&str, &str)],
        body: Vec<u8>,
    ) -> Result<reqwest::Response, SinkError> {
        let signed = self
            .signer
            .sign(method, url, headers, &body, SystemTime::now())
            .map_err(|message| SinkError::Transport {
                operation: method,
                name: key.to_string(),
                message,
            })?;
        let method_value = match method {
            "PUT" => reqwest::Method::PUT,
            _ => reqwest::Method::GET,
        };
        let mut request = self.client.request(method_value, url);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        for (name, value) in &signed {
            request = request.header(name.as_str(), value.as_str());
        }
        if method == "PUT" {
            request = request.body(body);
        }
        request
            .send()
            .await
            .map_err(|err| self.transport(method, key, &err))
    }

    fn transport(&self, operation: &'static str, key: &str, err: &reqwest::Error) -> SinkError {
        if err.is_timeout() {
            SinkError::TimedOut {
                operation,
                name: key.to_string(),
                timeout_ms: self.request_timeout.as_millis(),
            }
        } else {
            SinkError::Transport {
                operation,
                name: key.to_string(),
                message: error_chain(err),
            }
        }
    }
}

impl Sink for S3Sink {
    fn name(&self) -> &str {
        &self.name
    }

    fn deliver<'a>(
        &'a self,
        batch: &'a [Outgoing],
    ) -> Pin<Box<dyn Future<Output = Delivery> + Send + 'a>> {
        Box::pin(async move {
            // One PUT at a time: the cursor can only count a prefix, and a clinic's uplink
            // gains little from parallel uploads of few-KiB objects.
            for (idx, outgoing) in batch.iter().enumerate() {
                if let Err(error) = self.put(outgoing).await {
                    return Delivery {
                        delivered: idx,
                        error: Some(error),
                    };
                }
            }
            Delivery {
                delivered: batch.len(),
                error: None,
            }
        })
    }
}

/// Installs ring as rustls's process-wide crypto provider (once; later calls find it
/// installed, which is what the ignored `Err` means). reqwest is built without a provider of
/// its own, so nothing in the tree pulls in aws-lc-rs beside ring.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// `retain_until` as S3 wants it, ISO 8601 UTC to the second, rounded up so the lock is never
/// shorter than the record's retention.
pub fn lock_date(retain_until: Timestamp) -> String {
    let seconds = retain_until.as_second() + i64::from(retain_until.subsec_nanosecond() > 0);
    Timestamp::from_second(seconds)
        .unwrap_or(Timestamp::MAX)
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

/// Percent-encodes an object key for a URL path: everything but RFC 3986 unreserved
/// characters and `/`, as SigV4's canonical URI expects.
pub fn encode_path(key: &str) -> String {
    let mut out = String::with_capacity(key.len());
    for byte in key.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.' | b'~' | b'/') {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// The `<Code>` and `<Message>` of an S3 error document, if it has them.
pub fn error_code(body: &str) -> (Option<String>, Option<String>) {
    let element = |name: &str| {
        let open = format!("<{name}>");
        let close = format!("</{name}>");
        let start = body.find(&open)? + open.len();
        let end = body[start..].find(&close)? + start;
        let text = body[start..end].trim();
        // An error code is a word; anything else is not an S3 error document.
        (!text.is_empty()).then(|| text.chars().take(200).collect::<String>())
    };
    (element("Code"), element("Message"))
}

async fn refused(operation: &'static str, key: String, response: reqwest::Response) -> SinkError {
    let status = response.status().as_u16();
    let body = read_bounded(operation, &key, response, MAX_ERROR_BODY)
        .await
        .unwrap_or_default();
    let text = String::from_utf8_lossy(&body);
    let (code, message) = error_code(&text);
    SinkError::Refused {
        operation,
        name: key,
        status,
        code: code
            .filter(|it| it.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.'))
            .unwrap_or_else(|| "-".into()),
        message: message.unwrap_or_else(|| "no S3 error document in the answer".into()),
    }
}

async fn read_bounded(
    operation: &'static str,
    key: &str,
    mut response: reqwest::Response,
    limit: usize,
) -> Result<Vec<u8>, SinkError> {
    let mut body = Vec::new();
    loop {
        let chunk = response.chunk().await.map_err(|err| SinkError::Transport {
            operation,
            name: key.to_string(),
            message: error_chain(&err),
        })?;
        let Some(chunk) = chunk else {
            return Ok(body);
        };
        let room = limit.saturating_sub(body.len());
        body.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if body.len() >= limit {
            return Ok(body);
        }
    }
}

/// An error and its causes on one line (reqwest's own message is only the outermost).
fn error_chain(err: &dyn std::error::Error) -> String {
    let mut message = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(path_style: bool) -> S3Settings {
        S3Settings {
            endpoint: "http://127.0.0.1:9000".into(),
            bucket: "evidence".into(),
            region: "us-east-1".into(),
            prefix: "hipaa/".into(),
            path_style,
            access_key_id: "AKIDEXAMPLE".into(),
            secret_access_key: Zeroizing::new("wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY".into()),
            connect_timeout: Duration::from_secs(1),
            request_timeout: Duration::from_secs(1),
        }
    }

    fn outgoing() -> Outgoing {
        Outgoing {
            seq: 42,
            digest_hex: "ab".repeat(32),
            site_id: "clinic-a".into(),
            host_id: "nixos-1".into(),
            retain_until: Timestamp::from_second(1_989_000_000).unwrap(),
            envelope: b"{}".to_vec(),
        }
    }

    #[test]
    fn object_keys_and_urls_follow_the_layout() {
        let sink = S3Sink::new(settings(true)).unwrap();
        let key = sink.object_key(&outgoing());
        assert_eq!(
            key,
            format!(
                "hipaa/clinic-a/nixos-1/00000000000000000042-{}.json",
                "ab".repeat(32)
            )
        );
        assert_eq!(
            sink.object_url(&key),
            format!("http://127.0.0.1:9000/evidence/{key}")
        );
        assert_eq!(sink.name(), "s3:http://127.0.0.1:9000/evidence/hipaa/");
        let virtual_host = S3Sink::new(settings(false)).unwrap();
        assert_eq!(
            virtual_host.object_url("a b"),
            "http://evidence.127.0.0.1:9000/a%20b"
        );
    }

    #[test]
    fn endpoints_with_credentials_paths_or_queries_are_refused() {
        for endpoint in [
            "http://user:secret@127.0.0.1:9000",
            "http://127.0.0.1:9000/bucket",
            "http://127.0.0.1:9000/?x=1",
            "ftp://127.0.0.1",
        ] {
            let err = S3Sink::new(S3Settings {
                endpoint: endpoint.into(),
                ..settings(true)
            })
            .unwrap_err()
            .to_string();
            assert!(err.starts_with("outbox.s3.endpoint: "), "{err}");
            assert!(!err.contains("user:secret"), "{err}");
        }
    }

    #[test]
    fn lock_dates_round_up_to_the_second() {
        assert_eq!(
            lock_date(Timestamp::from_second(1_989_000_000).unwrap()),
            "2033-01-10T20:00:00Z"
        );
        assert_eq!(
            lock_date(Timestamp::from_millisecond(1_989_000_000_001).unwrap()),
            "2033-01-10T20:00:01Z"
        );
    }

    #[test]
    fn paths_are_percent_encoded_except_unreserved_and_slash() {
        assert_eq!(encode_path("a/b-c_d.e~f"), "a/b-c_d.e~f");
        assert_eq!(encode_path("a b+c%ä"), "a%20b%2Bc%25%C3%A4");
    }

    #[test]
    fn s3_error_documents_give_code_and_message() {
        let body = "<?xml version=\"1.0\"?><Error><Code>AccessDenied</Code><Message>forbidden by object lock</Message></Error>";
        assert_eq!(
            error_code(body),
            (
                Some("AccessDenied".into()),
                Some("forbidden by object lock".into())
            )
        );
        assert_eq!(error_code("\u{0}\u{1}garbage<Code>"), (None, None));
    }

    #[test]
    fn signing_matches_the_aws_sigv4_reference_for_s3() {
        // AWS "Signature Calculations for the Authorization Header: Transferring Payload in a
        // Single Chunk", the GET Object example (with a Range header).
        let signer = Signer::new(
            "AKIAIOSFODNN7EXAMPLE",
            "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
            "us-east-1",
        );
        let time = SystemTime::UNIX_EPOCH + Duration::from_secs(1_369_353_600);
        let headers = signer
            .sign(
                "GET",
                "https://examplebucket.s3.amazonaws.com/test.txt",
                &[("range", "bytes=0-9")],
                b"",
                time,
            )
            .unwrap();
        let authorization = headers
            .iter()
            .find(|(name, _)| name == "authorization")
            .map(|(_, value)| value.as_str())
            .unwrap();
        assert_eq!(
            authorization,
            "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request, SignedHeaders=host;range;x-amz-content-sha256;x-amz-date, Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41"
        );
    }

    #[test]
    fn debug_output_never_shows_the_secret() {
        let settings = settings(true);
        let text = format!("{settings:?}");
        assert!(!text.contains("wJalr"), "{text}");
        let sink = S3Sink::new(settings).unwrap();
        let text = format!("{sink:?} {:?}", sink.signer);
        assert!(!text.contains("wJalr"), "{text}");
    }
}
