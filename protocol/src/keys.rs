//! The text formats of Ed25519 keys that agent, control plane and operators exchange as files:
//! a private key is one line `msp-compliance-ed25519-v1 <standard base64 of the 32-byte seed>`,
//! a public key is one line of the standard base64 of its 32 raw bytes (`.pub` files, pins,
//! the check-in's `agent_key`).
//!
//! Parsing only: reading files (and refusing secrets that others can read) is the caller's.
//! Error messages never contain key material.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use ed25519_dalek::{SigningKey, VerifyingKey};
use zeroize::Zeroizing;

/// First word of a private key file.
pub const SIGNING_KEY_FORMAT: &str = "msp-compliance-ed25519-v1";

/// What is wrong with a key's text (never the text itself).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct KeyFormatError(pub String);

/// The private key file's line, with its newline.
pub fn encode_signing_key(key: &SigningKey) -> Zeroizing<String> {
    Zeroizing::new(format!(
        "{SIGNING_KEY_FORMAT} {}\n",
        STANDARD.encode(key.to_bytes())
    ))
}

/// Parses a private key file's content.
pub fn parse_signing_key(bytes: &[u8]) -> Result<SigningKey, KeyFormatError> {
    let invalid = |message: String| KeyFormatError(message);
    let text = std::str::from_utf8(bytes).map_err(|_| invalid("not UTF-8 text".into()))?;
    let line = text.strip_suffix('\n').unwrap_or(text);
    let Some((format, encoded)) = line.split_once(' ') else {
        return Err(invalid(format!(
            "expected one line `{SIGNING_KEY_FORMAT} <base64 seed>`"
        )));
    };
    if format != SIGNING_KEY_FORMAT {
        return Err(invalid(format!(
            "expected the line to start with `{SIGNING_KEY_FORMAT}`"
        )));
    }
    let seed = Zeroizing::new(
        STANDARD
            .decode(encoded.trim_end().as_bytes())
            .map_err(|_| invalid("the seed is not valid base64".into()))?,
    );
    let seed: &[u8; 32] = seed
        .as_slice()
        .try_into()
        .map_err(|_| invalid(format!("the seed has {} bytes, expected 32", seed.len())))?;
    Ok(SigningKey::from_bytes(seed))
}

/// The public key's text: standard base64 of the 32 raw bytes.
pub fn encode_public_key(key: &VerifyingKey) -> String {
    STANDARD.encode(key.as_bytes())
}

/// Parses a public key (surrounding whitespace ignored). A private key line is refused without
/// being echoed; small-order (weak) keys are refused, since they verify forged signatures.
pub fn parse_public_key(text: &str) -> Result<VerifyingKey, KeyFormatError> {
    let invalid = |message: &str| KeyFormatError(message.to_string());
    let line = text.trim();
    if line.starts_with(SIGNING_KEY_FORMAT) {
        return Err(invalid("this is a private key, not a public key"));
    }
    let bytes = STANDARD
        .decode(line.as_bytes())
        .map_err(|_| invalid("expected the base64 of 32 bytes on one line"))?;
    let bytes: [u8; 32] = bytes
        .try_into()
        .map_err(|it: Vec<u8>| KeyFormatError(format!("expected 32 bytes, found {}", it.len())))?;
    let key = VerifyingKey::from_bytes(&bytes).map_err(|_| invalid("not a curve point"))?;
    if key.is_weak() {
        return Err(invalid("a small-order (weak) key cannot sign anything"));
    }
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_and_bad_text_is_named_without_echo() {
        let key = SigningKey::from_bytes(&[5; 32]);
        let line = encode_signing_key(&key);
        assert_eq!(
            parse_signing_key(line.as_bytes()).unwrap().to_bytes(),
            key.to_bytes()
        );
        let public = encode_public_key(&key.verifying_key());
        assert_eq!(
            parse_public_key(&format!(" {public}\n")).unwrap(),
            key.verifying_key()
        );
        for (text, expected) in [
            ("AAAA", "expected 32 bytes, found 3"),
            ("%%%", "expected the base64 of 32 bytes on one line"),
            (line.as_str(), "this is a private key, not a public key"),
        ] {
            let err = parse_public_key(text).unwrap_err().to_string();
            assert_eq!(err, expected);
        }
        // The identity point is a small-order key.
        let mut identity = [0u8; 32];
        identity[0] = 1;
        assert_eq!(
            parse_public_key(&STANDARD.encode(identity))
                .unwrap_err()
                .to_string(),
            "a small-order (weak) key cannot sign anything"
        );
        for (bytes, expected) in [
            (&b"other-format AAAA"[..], "expected the line to start with"),
            (&b"nospace"[..], "expected one line"),
            (
                &b"msp-compliance-ed25519-v1 AAAA"[..],
                "the seed has 3 bytes",
            ),
            (&[0xff, 0xfe][..], "not UTF-8 text"),
        ] {
            let err = parse_signing_key(bytes).unwrap_err().to_string();
            assert!(err.starts_with(expected), "{err}");
        }
    }
}
