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
    hex::encode(keyid_bytes(key))
}

/// The key id's 32 bytes, as the compact form ([`Compact`]) holds them.
pub fn keyid_bytes(key: &VerifyingKey) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
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
    out.extend_from_slice(CANONICAL_HEAD);
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

/// How a canonical envelope starts: its first member is the payload, whose base64 follows.
pub(crate) const CANONICAL_HEAD: &[u8] = b"{\"payload\":\"";

/// Hands the base64 of `bytes` to `out` in pieces, without building the whole string. `bytes`
/// is a multiple of 3 bytes long unless it ends the payload, so pieces of one payload can be
/// encoded by separate calls.
pub(crate) fn base64_pieces(bytes: &[u8], out: &mut impl FnMut(&[u8])) {
    const IN: usize = 3 * 1024;
    let mut buf = [0_u8; IN / 3 * 4];
    for chunk in bytes.chunks(IN) {
        // `buf` holds the base64 of `IN` bytes, the most a chunk has.
        let n = STANDARD.encode_slice(chunk, &mut buf).unwrap_or(0);
        out(&buf[..n]);
    }
}

/// Hands `out` the canonical JSON of a single-signature envelope after its payload's base64:
/// the payload type, the key id and the signature (all written verbatim by JCS).
pub(crate) fn canonical_tail(
    payload_type: &str,
    keyid: &str,
    sig: &[u8; 64],
    out: &mut impl FnMut(&[u8]),
) {
    let mut sig_base64 = [0_u8; 88];
    let n = STANDARD.encode_slice(sig, &mut sig_base64).unwrap_or(0);
    out(b"\",\"payloadType\":\"");
    out(payload_type.as_bytes());
    out(b"\",\"signatures\":[{\"keyid\":\"");
    out(keyid.as_bytes());
    out(b"\",\"sig\":\"");
    out(&sig_base64[..n]);
    out(b"\"}]}");
}

/// An in-toto envelope with one signature in the compact form the agent's evidence store keeps
/// it in: the byte [`Compact::TAG`], the key id's 32 bytes, the signature's 64 bytes, then the
/// payload bytes as signed.
///
/// It holds exactly what the canonical JSON holds, without base64 (a quarter fewer bytes to
/// write, and nothing to decode before verifying), and maps back to that JSON byte for byte
/// ([`Compact::canonical_bytes`]), which is what is hashed, exported and sent. Canonical JSON
/// starts with `{`, so the first byte tells the two forms apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Compact<'a> {
    keyid: &'a [u8; 32],
    sig: &'a [u8; 64],
    payload: &'a [u8],
}

impl<'a> Compact<'a> {
    /// The first byte of the compact form.
    pub const TAG: u8 = 0x01;

    /// Reads the compact form; None for anything else (canonical JSON included).
    pub fn parse(bytes: &'a [u8]) -> Option<Compact<'a>> {
        let rest = bytes.strip_prefix(&[Self::TAG])?;
        let (keyid, rest) = rest.split_first_chunk::<32>()?;
        let (sig, payload) = rest.split_first_chunk::<64>()?;
        Some(Compact {
            keyid,
            sig,
            payload,
        })
    }

    /// Writes the compact form of an in-toto envelope signed once, by the key whose key id
    /// (SHA-256 of the public key) is `keyid`.
    pub fn write(keyid: &[u8; 32], sig: &[u8; 64], payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(1 + 32 + 64 + payload.len());
        out.push(Self::TAG);
        out.extend_from_slice(keyid);
        out.extend_from_slice(sig);
        out.extend_from_slice(payload);
        out
    }

    /// The compact form of `envelope` if it has one: an in-toto payload, exactly one signature,
    /// a lowercase hex key id of 32 bytes, and canonical base64 throughout (so that the
    /// envelope is exactly what [`Compact::canonical_bytes`] gives back).
    pub fn of(envelope: &Envelope) -> Option<Vec<u8>> {
        let [signature] = envelope.signatures.as_slice() else {
            return None;
        };
        if envelope.payload_type != IN_TOTO_PAYLOAD_TYPE {
            return None;
        }
        let keyid: [u8; 32] = hex::decode(&signature.keyid).ok()?.try_into().ok()?;
        let sig: [u8; 64] = STANDARD.decode(&signature.sig).ok()?.try_into().ok()?;
        let payload = STANDARD.decode(&envelope.payload).ok()?;
        let out = Compact::write(&keyid, &sig, &payload);
        // Upper-case hex decodes too; such an envelope is kept as it is.
        let round_trip = Compact::parse(&out)?.to_envelope() == *envelope;
        round_trip.then_some(out)
    }

    /// The payload bytes, as signed.
    pub fn payload(&self) -> &'a [u8] {
        self.payload
    }

    /// The signature's 64 bytes.
    pub fn signature(&self) -> &'a [u8; 64] {
        self.sig
    }

    /// The key id's 32 bytes.
    pub fn keyid_bytes(&self) -> &'a [u8; 32] {
        self.keyid
    }

    /// The key id, lowercase hex as in the envelope.
    pub fn keyid(&self) -> String {
        hex::encode(self.keyid)
    }

    /// Hands the envelope's canonical JSON to `out` in pieces.
    fn write_canonical(&self, out: &mut impl FnMut(&[u8])) {
        out(CANONICAL_HEAD);
        base64_pieces(self.payload, out);
        canonical_tail(IN_TOTO_PAYLOAD_TYPE, &self.keyid(), self.sig, out);
    }

    /// The envelope's canonical JSON: [`canonical_bytes`] of [`Compact::to_envelope`].
    pub fn canonical_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.payload.len().div_ceil(3) * 4 + 256);
        self.write_canonical(&mut |piece| out.extend_from_slice(piece));
        out
    }

    /// The envelope's digest ([`digest`] of [`Compact::to_envelope`]), hashed as the canonical
    /// JSON is written, without building it.
    pub fn digest(&self) -> String {
        let mut hash = Sha256::new();
        self.write_canonical(&mut |piece| hash.update(piece));
        format!("sha256:{}", hex::encode(hash.finalize()))
    }

    /// The envelope.
    pub fn to_envelope(&self) -> Envelope {
        Envelope {
            payload_type: IN_TOTO_PAYLOAD_TYPE.to_string(),
            payload: STANDARD.encode(self.payload),
            signatures: vec![Signature {
                keyid: self.keyid(),
                sig: STANDARD.encode(self.sig),
            }],
        }
    }
}

/// The canonical JSON of a stored envelope: the bytes themselves, or those of the compact form.
pub fn stored_to_canonical(stored: &[u8]) -> std::borrow::Cow<'_, [u8]> {
    match Compact::parse(stored) {
        Some(compact) => std::borrow::Cow::Owned(compact.canonical_bytes()),
        None => std::borrow::Cow::Borrowed(stored),
    }
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

    /// The compact form holds exactly the canonical envelope: for payloads of every length
    /// modulo 3 and across the base64 pieces' boundary, it writes back the same canonical bytes
    /// and digest, the same envelope, and the payload and signature as signed.
    #[test]
    fn the_compact_form_maps_back_to_the_canonical_envelope() {
        for len in [0, 1, 2, 3, 4, 5, 3071, 3072, 3073, 6144, 6145, 20_000] {
            let payload: Vec<u8> = (0..len).map(|it| (it * 7 + len) as u8).collect();
            let envelope = sign(IN_TOTO_PAYLOAD_TYPE, &payload, &key(3));
            let stored = Compact::of(&envelope).unwrap();
            assert_eq!(stored[0], Compact::TAG);
            assert_eq!(stored.len(), 1 + 32 + 64 + len);
            let compact = Compact::parse(&stored).unwrap();
            assert_eq!(
                compact.canonical_bytes(),
                canonical_bytes(&envelope),
                "{len}"
            );
            assert_eq!(compact.digest(), digest(&envelope));
            assert_eq!(compact.to_envelope(), envelope);
            assert_eq!(compact.payload(), payload);
            assert_eq!(compact.keyid(), keyid(&key(3).verifying_key()));
            assert_eq!(
                *compact.signature(),
                <[u8; 64]>::try_from(STANDARD.decode(&envelope.signatures[0].sig).unwrap())
                    .unwrap()
            );
            assert_eq!(stored_to_canonical(&stored), canonical_bytes(&envelope));
            let canonical = canonical_bytes(&envelope);
            assert!(Compact::parse(&canonical).is_none());
            assert_eq!(stored_to_canonical(&canonical), canonical);
        }
    }

    /// Envelopes the compact form cannot hold exactly are left without one, and a stored value
    /// too short for the fixed part is not read as one.
    #[test]
    fn only_envelopes_the_compact_form_holds_exactly_get_one() {
        let envelope = sign(IN_TOTO_PAYLOAD_TYPE, b"{\"a\":1}", &key(1));
        let with = |edit: &dyn Fn(&mut Envelope)| {
            let mut it = envelope.clone();
            edit(&mut it);
            Compact::of(&it)
        };
        assert!(with(&|_| {}).is_some());
        let refused: [&dyn Fn(&mut Envelope); 8] = [
            &|it| it.payload_type = "application/json".into(),
            &|it| it.signatures.clear(),
            &|it| {
                let second = sign(IN_TOTO_PAYLOAD_TYPE, b"{\"a\":1}", &key(2));
                it.signatures.push(second.signatures[0].clone())
            },
            &|it| it.signatures[0].keyid = it.signatures[0].keyid.to_uppercase(),
            &|it| it.signatures[0].keyid.truncate(62),
            &|it| it.signatures[0].sig = STANDARD.encode([1_u8; 63]),
            // Non-zero trailing bits: decodes to the same bytes as another string.
            &|it| it.payload = "QR==".into(),
            &|it| it.payload = "%%%%".into(),
        ];
        for (n, edit) in refused.iter().enumerate() {
            assert_eq!(with(edit), None, "edit {n}");
        }
        let stored = Compact::of(&envelope).unwrap();
        assert!(Compact::parse(&stored[..96]).is_none());
        assert!(Compact::parse(&stored[..97]).is_some());
        assert!(Compact::parse(&[]).is_none());
    }
}
