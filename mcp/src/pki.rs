//! The control plane's private certificate authority (rcgen on ring): the CA made by `init`,
//! the server certificate for the names the agents dial, and one client certificate per
//! enrolled host.
//!
//! A host's identity is the SHA-256 fingerprint of its client certificate's DER
//! ([`fingerprint`]), recorded at enrollment; the certificate's names are informational. Every
//! key is a fresh ECDSA P-256 key, so serial numbers (rcgen derives them from the public key)
//! never repeat.
//!
//! The CA's subject is derived from its key ([`Authority::load`] rebuilds it from `ca.key`
//! alone), so issuing needs no certificate parser. This module makes certificates and nothing
//! else: it reads and writes no files and never puts key material into an error.

use jiff::Timestamp;
use jiff::tz::TimeZone;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

/// Years the CA certificate is valid.
pub const CA_VALIDITY_YEARS: i16 = 20;
/// Years server and client certificates are valid; renew a host's with
/// `enroll --replace-certificate` before then.
pub const LEAF_VALIDITY_YEARS: i16 = 5;
/// Certificates start a day in the past, so a host whose clock lags accepts them.
const BACKDATE_DAYS: i64 = 1;

/// A certificate could not be made.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PkiError {
    /// rcgen refused (a name that is not a valid DNS name, a key it cannot use).
    #[error("cannot make the {what}: {source}")]
    Certificate {
        /// Which certificate or key.
        what: &'static str,
        /// Why.
        source: rcgen::Error,
    },
    /// The CA key file is not a PEM private key rcgen can use (its content is never quoted).
    #[error("the CA key is not a usable PEM private key: {0}")]
    AuthorityKey(rcgen::Error),
    /// A server name is not a DNS name or IP address.
    #[error("server name: {0}")]
    ServerName(String),
    /// The validity period does not fit the calendar.
    #[error("cannot compute the certificate validity: {0}")]
    Validity(String),
}

/// A certificate and its new private key, both PEM, with the certificate's fingerprint.
pub struct Issued {
    /// The certificate, PEM.
    pub certificate_pem: String,
    /// The certificate, DER.
    pub certificate_der: Vec<u8>,
    /// The private key, PKCS#8 PEM (wiped when dropped).
    pub key_pem: Zeroizing<String>,
    /// [`fingerprint`] of the certificate.
    pub fingerprint: String,
}

impl std::fmt::Debug for Issued {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        f.debug_struct("Issued")
            .field("fingerprint", &self.fingerprint)
            .finish_non_exhaustive()
    }
}

/// The CA, able to issue certificates.
pub struct Authority {
    issuer: Issuer<'static, KeyPair>,
}

impl std::fmt::Debug for Authority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authority").finish_non_exhaustive()
    }
}

impl Authority {
    /// A new CA with a fresh key; returns it and its self-signed certificate.
    pub fn create(now: Timestamp) -> Result<(Authority, Issued), PkiError> {
        let key = KeyPair::generate().map_err(|source| PkiError::Certificate {
            what: "CA key",
            source,
        })?;
        let mut params = authority_params(&key);
        set_validity(&mut params, now, CA_VALIDITY_YEARS)?;
        let certificate = params
            .self_signed(&key)
            .map_err(|source| PkiError::Certificate {
                what: "CA certificate",
                source,
            })?;
        let issued = Issued {
            certificate_pem: certificate.pem(),
            certificate_der: certificate.der().to_vec(),
            key_pem: Zeroizing::new(key.serialize_pem()),
            fingerprint: fingerprint(certificate.der()),
        };
        Ok((
            Authority {
                issuer: Issuer::new(params, key),
            },
            issued,
        ))
    }

    /// The CA of an existing `ca.key` (PEM).
    pub fn load(key_pem: &str) -> Result<Authority, PkiError> {
        let key = KeyPair::from_pem(key_pem).map_err(PkiError::AuthorityKey)?;
        let params = authority_params(&key);
        Ok(Authority {
            issuer: Issuer::new(params, key),
        })
    }

    /// A server certificate for `names` (DNS names or IP addresses, as the agents dial them).
    pub fn issue_server(&self, names: &[String], now: Timestamp) -> Result<Issued, PkiError> {
        let mut params =
            CertificateParams::new(names.to_vec()).map_err(|source| PkiError::Certificate {
                what: "server certificate",
                source,
            })?;
        let mut name = DistinguishedName::new();
        name.push(DnType::OrganizationName, "msp-mcp");
        name.push(
            DnType::CommonName,
            names.first().map_or("msp-mcp", String::as_str),
        );
        params.distinguished_name = name;
        params
            .extended_key_usages
            .push(ExtendedKeyUsagePurpose::ServerAuth);
        self.issue_leaf(params, "server certificate", now)
    }

    /// A client certificate for a host: subject `O=<site>, CN=<host>`, client authentication
    /// only. The identity the server trusts is its fingerprint, not these names.
    pub fn issue_client(
        &self,
        site_id: &str,
        host_id: &str,
        now: Timestamp,
    ) -> Result<Issued, PkiError> {
        let mut params = CertificateParams::default();
        let mut name = DistinguishedName::new();
        name.push(DnType::OrganizationName, site_id);
        name.push(DnType::CommonName, host_id);
        params.distinguished_name = name;
        params
            .extended_key_usages
            .push(ExtendedKeyUsagePurpose::ClientAuth);
        self.issue_leaf(params, "client certificate", now)
    }

    fn issue_leaf(
        &self,
        mut params: CertificateParams,
        what: &'static str,
        now: Timestamp,
    ) -> Result<Issued, PkiError> {
        let key = KeyPair::generate().map_err(|source| PkiError::Certificate {
            what: "certificate key",
            source,
        })?;
        set_validity(&mut params, now, LEAF_VALIDITY_YEARS)?;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.use_authority_key_identifier_extension = true;
        let certificate = params
            .signed_by(&key, &self.issuer)
            .map_err(|source| PkiError::Certificate { what, source })?;
        Ok(Issued {
            certificate_pem: certificate.pem(),
            certificate_der: certificate.der().to_vec(),
            key_pem: Zeroizing::new(key.serialize_pem()),
            fingerprint: fingerprint(certificate.der()),
        })
    }
}

/// A certificate's identity: lowercase hex SHA-256 of its DER.
pub fn fingerprint(der: &[u8]) -> String {
    hex::encode(Sha256::digest(der))
}

/// Whether `names` are all usable as server certificate names: what a TLS client accepts as
/// a server name (a valid DNS name or an IP address), checked with rustls's own parser.
pub fn check_server_names(names: &[String]) -> Result<(), PkiError> {
    if names.is_empty() {
        return Err(PkiError::ServerName(
            "at least one server name is needed".into(),
        ));
    }
    for name in names {
        rustls::pki_types::ServerName::try_from(name.as_str()).map_err(|_| {
            PkiError::ServerName(format!("{name:?} is neither a DNS name nor an IP address"))
        })?;
    }
    Ok(())
}

/// The CA's parameters, a pure function of its key: `Issuer` needs the subject, key usages and
/// key identifier method exactly as in the CA certificate, and deriving them from the key means
/// `ca.key` alone can issue.
fn authority_params(key: &KeyPair) -> CertificateParams {
    let key_digest = hex::encode(Sha256::digest(key.public_key_raw()));
    let mut params = CertificateParams::default();
    let mut name = DistinguishedName::new();
    name.push(DnType::OrganizationName, "msp-mcp");
    name.push(
        DnType::CommonName,
        format!("msp-mcp CA {}", &key_digest[..16]),
    );
    params.distinguished_name = name;
    // Path length 0: the CA signs leaf certificates only, never another CA.
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.subject_alt_names = Vec::<SanType>::new();
    params
}

/// Sets `not_before` a day before `now` and `not_after` `years` later, at whole days (UTC).
fn set_validity(
    params: &mut CertificateParams,
    now: Timestamp,
    years: i16,
) -> Result<(), PkiError> {
    let invalid = |err: jiff::Error| PkiError::Validity(err.to_string());
    let start = now
        .checked_sub(jiff::SignedDuration::from_hours(24 * BACKDATE_DAYS))
        .map_err(invalid)?
        .to_zoned_datetime(TimeZone::UTC)
        .date();
    let end = start
        .checked_add(jiff::Span::new().years(years))
        .map_err(invalid)?;
    let to_rcgen = |date: jiff::civil::Date| {
        // Calendar months and days are 1..=12 and 1..=31, so they always fit a u8.
        rcgen::date_time_ymd(
            i32::from(date.year()),
            u8::try_from(date.month()).unwrap_or(1),
            u8::try_from(date.day()).unwrap_or(1),
        )
    };
    params.not_before = to_rcgen(start);
    params.not_after = to_rcgen(end);
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime, pem::PemObject};
    use rustls::server::WebPkiClientVerifier;

    use super::*;

    fn now() -> Timestamp {
        "2026-03-01T12:00:00Z".parse().unwrap()
    }

    #[test]
    fn client_certificates_chain_to_the_ca_even_after_reloading_it() {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let (_, ca) = Authority::create(now()).unwrap();
        let reloaded = Authority::load(&ca.key_pem).unwrap();
        let client = reloaded.issue_client("clinic-a", "nixos-1", now()).unwrap();
        assert_eq!(client.fingerprint.len(), 64);
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from(ca.certificate_der.clone()))
            .unwrap();
        let verifier = WebPkiClientVerifier::builder(Arc::new(roots))
            .build()
            .unwrap();
        let end_entity = CertificateDer::from(client.certificate_der.clone());
        let at = UnixTime::since_unix_epoch(std::time::Duration::from_secs(
            now().as_second().try_into().unwrap(),
        ));
        verifier
            .verify_client_cert(&end_entity, &[], at)
            .expect("client certificate verifies against the CA");
        assert!(PrivateKeyDer::from_pem_slice(client.key_pem.as_bytes()).is_ok());
        assert!(!format!("{client:?}").contains("PRIVATE"));
    }

    #[test]
    fn another_ca_does_not_verify() {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let (_, ca) = Authority::create(now()).unwrap();
        let (other, _) = Authority::create(now()).unwrap();
        let client = other.issue_client("clinic-a", "nixos-1", now()).unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(CertificateDer::from(ca.certificate_der)).unwrap();
        let verifier = WebPkiClientVerifier::builder(Arc::new(roots))
            .build()
            .unwrap();
        let at = UnixTime::since_unix_epoch(std::time::Duration::from_secs(
            now().as_second().try_into().unwrap(),
        ));
        assert!(
            verifier
                .verify_client_cert(&CertificateDer::from(client.certificate_der), &[], at)
                .is_err()
        );
    }

    #[test]
    fn server_names_are_validated() {
        assert!(
            check_server_names(&["localhost".into(), "127.0.0.1".into(), "::1".into()]).is_ok()
        );
        assert!(check_server_names(&["bad name".into()]).is_err());
        assert!(check_server_names(&["a/b".into()]).is_err());
        assert!(check_server_names(&[]).is_err());
    }
}
