//! DSSE envelopes signed with Ed25519: the one signing format for everything that crosses a
//! trust boundary (evidence, orders, results, rule bundles).
//!
//! An envelope carries a `payloadType`, the payload bytes in base64, and signatures
//! `{keyid, sig}`. A signature is Ed25519 over DSSE's pre-authentication encoding
//! `PAE(type, body) = "DSSEv1" SP LEN(type) SP type SP LEN(body) SP body` (lengths in ASCII
//! decimal), so the type is bound to the bytes and nothing has to be re-serialized to verify.
//! The `keyid` is the lowercase hex SHA-256 of the raw 32-byte public key.
//!
//! Verification works on the *exact payload bytes received*: the payload is decoded from
//! base64, the PAE is rebuilt from those bytes, and only after a signature checks out does the
//! caller get to parse them ([`Verified`], which only [`verify`] can make). Nothing is parsed,
//! canonicalized or trusted before that.
//!
//! An auditor can verify without our code: base64-decode `payload`, build the PAE above, and
//! check `sig` (base64) with any Ed25519 implementation against the published public key.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use ed25519_dalek::{Signature as Ed25519Signature, Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The payload type of in-toto statements.
pub const IN_TOTO_PAYLOAD_TYPE: &str = "application/vnd.in-toto+json";

/// A DSSE envelope, as it travels and is stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Envelope {
    /// What the payload is, e.g. [`IN_TOTO_PAYLOAD_TYPE`].
    #[serde(rename = "payloadType")]
    pub payload_type: String,
    /// The payload bytes, standard base64 with padding.
    pub payload: String,
    /// One or more signatures over PAE(payloadType, payload bytes).
    pub signatures: Vec<Signature>,
}

/// One signature of an envelope.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Signature {
    /// Lowercase hex SHA-256 of the signer's raw public key.
    pub keyid: String,
    /// Ed25519 signature, standard base64.
    pub sig: String,
}

/// Why an envelope was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DsseError {
    /// The payload is not valid base64.
    #[error("payload is not valid base64")]
    BadPayloadEncoding,
    /// A signature is not valid base64 or not 64 bytes.
    #[error("signature by key {keyid} is malformed")]
    MalformedSignature {
        /// Key id of the malformed signature.
        keyid: String,
    },
    /// No signature was made by a key we trust.
    #[error("no signature by a trusted key (signed by: {keyids})")]
    UnknownKey {
        /// Key ids that signed, comma-separated.
        keyids: String,
    },
    /// A trusted key's signature does not verify: the payload or type was altered.
    #[error("signature by key {keyid} does not verify (payload or type altered)")]
    BadSignature {
        /// Key id whose signature failed.
        keyid: String,
    },
    /// The envelope has no signature at all.
    #[error("envelope has no signature")]
    Unsigned,
    /// The payload type is not the one expected.
    #[error("payload type {found:?} is not {expected:?}")]
    WrongPayloadType {
        /// Expected type.
        expected: String,
        /// Type found.
        found: String,
    },
}

/// DSSE's pre-authentication encoding.
pub fn pae(payload_type: &str, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + payload_type.len() + 32);
    pae_head(&mut out, payload_type, payload.len());
    out.extend_from_slice(payload);
    out
}

/// Appends the PAE up to the payload (which the caller appends, or decodes in place).
pub(crate) fn pae_head(out: &mut Vec<u8>, payload_type: &str, payload_len: usize) {
    out.extend_from_slice(b"DSSEv1 ");
    out.extend_from_slice(payload_type.len().to_string().as_bytes());
    out.push(b' ');
    out.extend_from_slice(payload_type.as_bytes());
    out.push(b' ');
    out.extend_from_slice(payload_len.to_string().as_bytes());
    out.push(b' ');
}

/// The key id of a public key: lowercase hex SHA-256 of its 32 raw bytes.
pub fn keyid(key: &VerifyingKey) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

/// Signs payload bytes into an envelope.
pub fn sign(payload_type: &str, payload: &[u8], key: &SigningKey) -> Envelope {
    let signature: Ed25519Signature = key.sign(&pae(payload_type, payload));
    Envelope {
        payload_type: payload_type.to_string(),
        payload: STANDARD.encode(payload),
        signatures: vec![Signature {
            keyid: keyid(&key.verifying_key()),
            sig: STANDARD.encode(signature.to_bytes()),
        }],
    }
}

/// Proof that an envelope's payload was signed by a trusted key. Only [`verify`] makes one, so
/// code that needs verified bytes takes this type and cannot be handed unverified ones.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verified {
    payload_type: String,
    payload: Vec<u8>,
    keyid: String,
}

impl Verified {
    /// The verified payload bytes, exactly as signed.
    pub fn payload(&self) -> &[u8] {
        &self.payload
    }

    /// The payload type that was signed.
    pub fn payload_type(&self) -> &str {
        &self.payload_type
    }

    /// The key id whose signature verified.
    pub fn keyid(&self) -> &str {
        &self.keyid
    }
}

/// Verifies an envelope against trusted public keys (a list, for rotation).
///
/// Succeeds if at least one signature by a trusted key verifies and no signature by a trusted
/// key fails: a failing signature of a key we trust means the content was altered, which is
/// refused even if another trusted key's signature holds. Signatures by unknown keys are
/// ignored unless none is known.
pub fn verify(envelope: &Envelope, trusted: &[VerifyingKey]) -> Result<Verified, DsseError> {
    if envelope.signatures.is_empty() {
        return Err(DsseError::Unsigned);
    }
    let payload = STANDARD
        .decode(envelope.payload.as_bytes())
        .map_err(|_| DsseError::BadPayloadEncoding)?;
    let message = pae(&envelope.payload_type, &payload);
    let mut verified_by = None;
    for signature in &envelope.signatures {
        let Some(key) = trusted.iter().find(|it| keyid(it) == signature.keyid) else {
            continue;
        };
        let malformed = || DsseError::MalformedSignature {
            keyid: signature.keyid.clone(),
        };
        let bytes = STANDARD
            .decode(signature.sig.as_bytes())
            .map_err(|_| malformed())?;
        let bytes: [u8; 64] = bytes.try_into().map_err(|_| malformed())?;
        let sig = Ed25519Signature::from_bytes(&bytes);
        // `verify_strict` rejects small-order keys and non-canonical signatures, so one
        // message has exactly one valid signature per key (no malleability for digests).
        if key.verify_strict(&message, &sig).is_err() {
            return Err(DsseError::BadSignature {
                keyid: signature.keyid.clone(),
            });
        }
        verified_by.get_or_insert_with(|| signature.keyid.clone());
    }
    match verified_by {
        Some(keyid) => Ok(Verified {
            payload_type: envelope.payload_type.clone(),
            payload,
            keyid,
        }),
        None => Err(DsseError::UnknownKey {
            keyids: envelope
                .signatures
                .iter()
                .map(|it| it.keyid.as_str())
                .collect::<Vec<_>>()
                .join(", "),
        }),
    }
}

/// Verifies an envelope and requires a payload type.
pub fn verify_typed(
    envelope: &Envelope,
    payload_type: &str,
    trusted: &[VerifyingKey],
) -> Result<Verified, DsseError> {
    if envelope.payload_type != payload_type {
        return Err(DsseError::WrongPayloadType {
            expected: payload_type.to_string(),
            found: envelope.payload_type.clone(),
        });
    }
    verify(envelope, trusted)
}

/// SHA-256 of an envelope's canonical JSON (RFC 8785), `sha256:<hex>`: the envelope's identity
/// in the evidence chain (`prev`) and in the outbox (idempotent delivery id).
pub fn digest(envelope: &Envelope) -> String {
    format!(
        "sha256:{}",
        hex::encode(Sha256::digest(canonical_bytes(envelope)))
    )
}

/// An envelope's RFC 8785 canonical JSON: the bytes that are stored, exported and hashed.
///
/// Envelopes hold base64, hex and a media type, which JCS writes verbatim; that common case is
/// assembled directly (members in JCS order: payload < payloadType < signatures; keyid < sig),
/// since the general canonicalizer first copies the kilobytes of payload into a JSON tree.
pub fn canonical_bytes(envelope: &Envelope) -> Vec<u8> {
    use crate::jcs::is_verbatim;
    let verbatim = is_verbatim(&envelope.payload)
        && is_verbatim(&envelope.payload_type)
        && envelope
            .signatures
            .iter()
            .all(|it| is_verbatim(&it.keyid) && is_verbatim(&it.sig));
    if !verbatim {
        // An envelope holds only strings, so its canonical form always exists.
        return crate::jcs::to_vec_of(envelope).unwrap_or_default();
    }
    let mut out = Vec::with_capacity(envelope.payload.len() + 200 * envelope.signatures.len() + 64);
    out.extend_from_slice(b"{\"payload\":\"");
    out.extend_from_slice(envelope.payload.as_bytes());
    out.extend_from_slice(b"\",\"payloadType\":\"");
    out.extend_from_slice(envelope.payload_type.as_bytes());
    out.extend_from_slice(b"\",\"signatures\":[");
    for (idx, signature) in envelope.signatures.iter().enumerate() {
        if idx > 0 {
            out.push(b',');
        }
        out.extend_from_slice(b"{\"keyid\":\"");
        out.extend_from_slice(signature.keyid.as_bytes());
        out.extend_from_slice(b"\",\"sig\":\"");
        out.extend_from_slice(signature.sig.as_bytes());
        out.extend_from_slice(b"\"}");
    }
    out.extend_from_slice(b"]}");
    out
}

/// The envelope whose canonical JSON is exactly `bytes`, when every string in it is written
/// verbatim (no escapes: base64, hex and a media type, the form [`canonical_bytes`] assembles
/// directly); None for anything else, which the caller then parses in full.
///
/// Some(envelope) means what a JSON parse of `bytes` followed by a comparison of
/// `canonical_bytes` with `bytes` would find, without building the JSON or the canonical copy:
/// reading the fixed layout in order is the comparison. Stored and exported records are in
/// this form, so verifying a chain rarely takes the long way.
pub fn parse_canonical(bytes: &[u8]) -> Option<Envelope> {
    let rest = bytes.strip_prefix(b"{\"payload\":\"")?;
    let (payload, rest) = verbatim_string(rest)?;
    let rest = rest.strip_prefix(b",\"payloadType\":\"")?;
    let (payload_type, rest) = verbatim_string(rest)?;
    let mut rest = rest.strip_prefix(b",\"signatures\":[")?;
    let mut signatures = Vec::with_capacity(1);
    if rest != b"]}" {
        loop {
            rest = rest.strip_prefix(b"{\"keyid\":\"")?;
            let (keyid, after) = verbatim_string(rest)?;
            let after = after.strip_prefix(b",\"sig\":\"")?;
            let (sig, after) = verbatim_string(after)?;
            signatures.push(Signature {
                keyid: keyid.to_string(),
                sig: sig.to_string(),
            });
            match after {
                b"}]}" => break,
                _ => rest = after.strip_prefix(b"},")?,
            }
        }
    }
    Some(Envelope {
        payload_type: payload_type.to_string(),
        payload: payload.to_string(),
        signatures,
    })
}

/// The text up to the next quote, and what follows that quote, if the text is one that JCS
/// writes verbatim: valid UTF-8 with no byte that needs an escape (a quote ends it; a backslash
/// or a control character means the string is not in the verbatim form).
fn verbatim_string(bytes: &[u8]) -> Option<(&str, &[u8])> {
    let end = crate::jcs::first_escape(bytes)?;
    if bytes[end] != b'"' {
        return None;
    }
    let text = std::str::from_utf8(&bytes[..end]).ok()?;
    Some((text, &bytes[end + 1..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(seed: u8) -> SigningKey {
        SigningKey::from_bytes(&[seed; 32])
    }

    #[test]
    fn pae_matches_the_dsse_specification_example() {
        // DSSE protocol.md: PAE("http://example.com/HelloWorld", "hello world").
        assert_eq!(
            pae("http://example.com/HelloWorld", b"hello world"),
            b"DSSEv1 29 http://example.com/HelloWorld 11 hello world".to_vec()
        );
    }

    #[test]
    fn sign_then_verify_round_trips() {
        let signer = key(1);
        let envelope = sign(IN_TOTO_PAYLOAD_TYPE, br#"{"a":1}"#, &signer);
        let verified = verify(&envelope, &[signer.verifying_key()]).unwrap();
        assert_eq!(verified.payload(), br#"{"a":1}"#);
        assert_eq!(verified.keyid(), keyid(&signer.verifying_key()));
        assert_eq!(verified.keyid().len(), 64);
    }

    #[test]
    fn every_kind_of_tampering_is_refused() {
        let signer = key(1);
        let trusted = [signer.verifying_key()];
        let envelope = sign(IN_TOTO_PAYLOAD_TYPE, br#"{"a":1}"#, &signer);

        let mut altered = envelope.clone();
        altered.payload = STANDARD.encode(br#"{"a":2}"#);
        assert!(matches!(
            verify(&altered, &trusted),
            Err(DsseError::BadSignature { .. })
        ));

        let mut retyped = envelope.clone();
        retyped.payload_type = "application/json".into();
        assert!(matches!(
            verify(&retyped, &trusted),
            Err(DsseError::BadSignature { .. })
        ));

        let stranger = sign(IN_TOTO_PAYLOAD_TYPE, br#"{"a":1}"#, &key(2));
        assert!(matches!(
            verify(&stranger, &trusted),
            Err(DsseError::UnknownKey { .. })
        ));

        let mut unsigned = envelope.clone();
        unsigned.signatures.clear();
        assert_eq!(verify(&unsigned, &trusted), Err(DsseError::Unsigned));

        let mut garbled = envelope.clone();
        garbled.signatures[0].sig = "AAAA".into();
        assert!(matches!(
            verify(&garbled, &trusted),
            Err(DsseError::MalformedSignature { .. })
        ));

        let mut bad_base64 = envelope.clone();
        bad_base64.payload = "%%%".into();
        assert_eq!(
            verify(&bad_base64, &trusted),
            Err(DsseError::BadPayloadEncoding)
        );

        assert!(matches!(
            verify_typed(&envelope, "application/json", &trusted),
            Err(DsseError::WrongPayloadType { .. })
        ));
    }

    #[test]
    fn rotation_accepts_any_trusted_key_but_not_a_failing_one() {
        let old = key(1);
        let new = key(2);
        let envelope = sign(IN_TOTO_PAYLOAD_TYPE, b"x", &new);
        assert!(verify(&envelope, &[old.verifying_key(), new.verifying_key()]).is_ok());
        // A second signature by a trusted key that does not verify poisons the envelope.
        let mut doubled = envelope.clone();
        let mut forged = sign(IN_TOTO_PAYLOAD_TYPE, b"y", &old).signatures.remove(0);
        forged.keyid = keyid(&old.verifying_key());
        doubled.signatures.push(forged);
        assert!(matches!(
            verify(&doubled, &[old.verifying_key(), new.verifying_key()]),
            Err(DsseError::BadSignature { .. })
        ));
    }

    #[test]
    fn canonical_bytes_are_the_canonicalizer_s() {
        let mut envelope = sign(IN_TOTO_PAYLOAD_TYPE, b"{}", &key(1));
        let check = |it: &Envelope| {
            assert_eq!(
                canonical_bytes(it),
                crate::jcs::to_vec_of(it).unwrap(),
                "{it:?}"
            );
        };
        check(&envelope);
        envelope.signatures.push(envelope.signatures[0].clone());
        check(&envelope);
        envelope.signatures.clear();
        check(&envelope);
        for odd in [
            "a\"b",
            "back\\slash",
            "tab\t",
            "\u{1}",
            "é",
            "\u{7f}",
            "\u{2028}",
        ] {
            envelope.payload_type = odd.to_string();
            check(&envelope);
            envelope.payload = format!("{odd}{}", "x".repeat(40));
            check(&envelope);
        }
    }

    /// `parse_canonical` finds an envelope exactly when parsing the bytes and writing them in
    /// canonical form gives the same bytes (for envelopes whose strings need no escape), and
    /// then the same envelope; checked on canonical envelopes and on every one-byte edit,
    /// insertion and deletion of a few.
    #[test]
    fn parse_canonical_agrees_with_parsing_and_canonicalizing() {
        let check = |bytes: &[u8]| {
            let full = serde_json::from_slice::<Envelope>(bytes)
                .ok()
                .filter(|it| canonical_bytes(it) == bytes);
            let verbatim = full.as_ref().is_some_and(|it| {
                crate::jcs::is_verbatim(&it.payload)
                    && crate::jcs::is_verbatim(&it.payload_type)
                    && it.signatures.iter().all(|sig| {
                        crate::jcs::is_verbatim(&sig.keyid) && crate::jcs::is_verbatim(&sig.sig)
                    })
            });
            let fast = parse_canonical(bytes);
            match (&fast, verbatim) {
                (Some(_), _) => assert_eq!(fast, full, "{:?}", String::from_utf8_lossy(bytes)),
                (None, true) => panic!("missed {:?}", String::from_utf8_lossy(bytes)),
                (None, false) => {}
            }
        };
        let mut envelope = sign(IN_TOTO_PAYLOAD_TYPE, b"{\"a\":[1,2]}", &key(1));
        let one = canonical_bytes(&envelope);
        envelope.signatures.push(
            sign(IN_TOTO_PAYLOAD_TYPE, b"x", &key(2))
                .signatures
                .remove(0),
        );
        let two = canonical_bytes(&envelope);
        envelope.signatures.clear();
        let none = canonical_bytes(&envelope);
        envelope.payload = String::new();
        let empty = canonical_bytes(&envelope);
        for bytes in [&one, &two, &none, &empty] {
            assert!(parse_canonical(bytes).is_some());
            check(bytes);
            for at in 0..bytes.len() {
                let mut removed = bytes.clone();
                removed.remove(at);
                check(&removed);
                for byte in [
                    b'"', b'\\', b' ', b'\n', 0x01, b',', b'}', b']', b'A', 0xc3, 0xff,
                ] {
                    let mut edited = bytes.clone();
                    edited[at] = byte;
                    check(&edited);
                    let mut inserted = bytes.clone();
                    inserted.insert(at, byte);
                    check(&inserted);
                }
            }
        }
        // Non-ASCII text and trailing bytes.
        check("{\"payload\":\"é\",\"payloadType\":\"t\",\"signatures\":[]}".as_bytes());
        check(b"{\"payload\":\"\",\"payloadType\":\"t\",\"signatures\":[]} ");
        check(b"{\"payload\":\"\",\"payloadType\":\"t\",\"signatures\":[]}}");
    }

    #[test]
    fn digest_ignores_whitespace_but_not_content() {
        let envelope = sign(IN_TOTO_PAYLOAD_TYPE, b"x", &key(1));
        let pretty: Envelope =
            serde_json::from_str(&serde_json::to_string_pretty(&envelope).unwrap()).unwrap();
        assert_eq!(digest(&envelope), digest(&pretty));
        assert_ne!(
            digest(&envelope),
            digest(&sign(IN_TOTO_PAYLOAD_TYPE, b"y", &key(1)))
        );
    }
}
