//! RFC 8785 JSON Canonicalization Scheme (JCS): one byte sequence per JSON value.
//!
//! Signatures and digests are computed over these bytes, so two parties that hold the same JSON
//! value (whatever whitespace, key order or number spelling it arrived with) compute the same
//! digest. The rules, from the RFC:
//! - object members are sorted by their names compared as UTF-16 code units (not UTF-8 bytes:
//!   the two orders differ for characters above U+FFFF against U+E000–U+FFFF);
//! - strings are written as ECMAScript's `JSON.stringify` writes them: only `"`, `\` and the
//!   control characters are escaped, `\b \t \n \f \r` in short form, the others as `\u00xx`;
//! - numbers are IEEE 754 doubles written as ECMAScript's `Number.prototype.toString`:
//!   the shortest digits that round-trip, plain notation from 1e-6 to below 1e21, otherwise
//!   `d.ddde±x`; `-0` is written `0`;
//! - no whitespace.
//!
//! Integers beyond ±2^53 cannot be represented exactly as doubles; instead of silently changing
//! them (which would make a signature cover a different number than the one stored), they are
//! refused with [`JcsError::UnsafeInteger`].

use std::fmt::Write;

use serde_json::Value;

/// A value that has no canonical form.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum JcsError {
    /// An integer outside ±(2^53 − 1), which a double cannot hold exactly.
    #[error("integer {0} is outside the range a JSON number can carry exactly (±2^53 - 1)")]
    UnsafeInteger(String),
    /// A number that is not finite (cannot come from JSON text, but can from a built value).
    #[error("number is not finite")]
    NotFinite,
}

/// The largest integer every double can represent together with its neighbours.
pub(crate) const MAX_SAFE_INTEGER: u64 = (1 << 53) - 1;

/// Canonical bytes of a JSON value.
pub fn to_vec(value: &Value) -> Result<Vec<u8>, JcsError> {
    to_string(value).map(String::into_bytes)
}

/// Canonical text of a JSON value.
pub(crate) fn to_string(value: &Value) -> Result<String, JcsError> {
    let mut writer = Writer {
        // Most of what is canonicalized is a record's body of a few KiB; growing from empty
        // would copy it about ten times.
        out: String::with_capacity(4096),
    };
    writer.write_value(value)?;
    Ok(writer.out)
}

/// Canonical text of a serializable value (serialized to JSON first).
pub fn to_vec_of<T: serde::Serialize>(value: &T) -> Result<Vec<u8>, JcsError> {
    // serde_json only fails to serialize maps with non-string keys or non-finite floats, which
    // our wire types do not contain; report it as a non-finite number rather than panic.
    let value = serde_json::to_value(value).map_err(|_| JcsError::NotFinite)?;
    to_vec(&value)
}

/// The canonical text being written.
struct Writer {
    out: String,
}

impl Writer {
    fn write_value(&mut self, value: &Value) -> Result<(), JcsError> {
        match value {
            Value::Null => self.out.push_str("null"),
            Value::Bool(true) => self.out.push_str("true"),
            Value::Bool(false) => self.out.push_str("false"),
            Value::Number(number) => write_number(&mut self.out, number)?,
            Value::String(text) => write_string(&mut self.out, text),
            Value::Array(items) => {
                self.out.push('[');
                for (idx, item) in items.iter().enumerate() {
                    if idx > 0 {
                        self.out.push(',');
                    }
                    self.write_value(item)?;
                }
                self.out.push(']');
            }
            Value::Object(members) => {
                self.out.push('{');
                // serde_json's map is a `BTreeMap` (its `preserve_order` feature is off, which
                // a test pins), so members come in UTF-8 byte order: that is UTF-16 order unless
                // a key holds a character at or above U+E000 (lead byte 0xEE or more), and only
                // then are they sorted again.
                if members.keys().all(|name| name.bytes().all(|b| b < 0xee)) {
                    for (idx, (name, member)) in members.iter().enumerate() {
                        self.write_member(idx, name, member)?;
                    }
                } else {
                    let mut sorted: Vec<(&String, &Value)> = members.iter().collect();
                    sorted.sort_by(|(a, _), (b, _)| a.encode_utf16().cmp(b.encode_utf16()));
                    for (idx, (name, member)) in sorted.into_iter().enumerate() {
                        self.write_member(idx, name, member)?;
                    }
                }
                self.out.push('}');
            }
        }
        Ok(())
    }

    fn write_member(&mut self, idx: usize, name: &str, member: &Value) -> Result<(), JcsError> {
        if idx > 0 {
            self.out.push(',');
        }
        write_string(&mut self.out, name);
        self.out.push(':');
        self.write_value(member)
    }
}

fn write_number(out: &mut String, number: &serde_json::Number) -> Result<(), JcsError> {
    if let Some(it) = number.as_u64() {
        if it > MAX_SAFE_INTEGER {
            return Err(JcsError::UnsafeInteger(it.to_string()));
        }
        let _ = write!(out, "{it}");
        return Ok(());
    }
    if let Some(it) = number.as_i64() {
        if it.unsigned_abs() > MAX_SAFE_INTEGER {
            return Err(JcsError::UnsafeInteger(it.to_string()));
        }
        let _ = write!(out, "{it}");
        return Ok(());
    }
    let Some(float) = number.as_f64() else {
        return Err(JcsError::NotFinite);
    };
    write_double(out, float)
}

/// ECMAScript `Number.prototype.toString` for a finite double (ECMA-262, 7.1.12.1).
fn write_double(out: &mut String, value: f64) -> Result<(), JcsError> {
    if !value.is_finite() {
        return Err(JcsError::NotFinite);
    }
    if value == 0.0 {
        out.push('0');
        return Ok(());
    }
    if value < 0.0 {
        out.push('-');
    }
    // Rust's `{:e}` prints the shortest digits that round-trip, like `1.2345e-7`, which is the
    // digit count ECMAScript wants. When two digit strings of that length round-trip and are
    // equally close to the exact value, ECMAScript takes the even one; Rust's shortest form
    // need not. The exact value rounded to that many digits (Rust rounds exact ties to even) is
    // the closest candidate, so use it whenever it round-trips.
    let value = value.abs();
    let shortest = format!("{value:e}");
    let (mantissa, _) = shortest.split_once('e').unwrap_or((&shortest, "0"));
    let n_digits = mantissa.chars().filter(char::is_ascii_digit).count();
    let closest = format!("{value:.*e}", n_digits.saturating_sub(1));
    let scientific = if closest.parse::<f64>() == Ok(value) {
        closest
    } else {
        shortest
    };
    let (mantissa, exponent) = scientific.split_once('e').unwrap_or((&scientific, "0"));
    let mut digits: String = mantissa.chars().filter(char::is_ascii_digit).collect();
    // Precision formatting keeps trailing zeros ("1.0e21"); ECMAScript's digit string has none.
    while digits.len() > 1 && digits.ends_with('0') {
        digits.pop();
    }
    let exponent: i32 = exponent.parse().unwrap_or(0);
    let k = digits.len() as i32;
    // `n` is the position of the decimal point relative to the start of the digits.
    let n = exponent + 1;
    if k <= n && n <= 21 {
        out.push_str(&digits);
        out.extend(std::iter::repeat_n('0', (n - k) as usize));
    } else if 0 < n && n <= 21 {
        out.push_str(&digits[..n as usize]);
        out.push('.');
        out.push_str(&digits[n as usize..]);
    } else if -6 < n && n <= 0 {
        out.push_str("0.");
        out.extend(std::iter::repeat_n('0', (-n) as usize));
        out.push_str(&digits);
    } else {
        out.push_str(&digits[..1]);
        if k > 1 {
            out.push('.');
            out.push_str(&digits[1..]);
        }
        let sign = if n > 0 { '+' } else { '-' };
        let _ = write!(out, "e{sign}{}", (n - 1).abs());
    }
    Ok(())
}

/// Returns true if and only if a byte must be escaped in a JSON string (JCS escapes exactly
/// these: the quote, the backslash and the control characters).
fn needs_escape(byte: u8) -> bool {
    byte < 0x20 || byte == b'"' || byte == b'\\'
}

/// Position of the first byte of `bytes` that needs an escape.
///
/// Evidence payloads are kilobytes of base64 and prose with few escapes; scanning 16 bytes at a
/// time without an early exit inside a block lets the compiler use vector instructions.
pub(crate) fn first_escape(bytes: &[u8]) -> Option<usize> {
    let mut blocks = bytes.chunks_exact(16);
    let mut offset = 0;
    for block in &mut blocks {
        if block.iter().fold(false, |acc, it| acc | needs_escape(*it)) {
            return block
                .iter()
                .position(|it| needs_escape(*it))
                .map(|it| offset + it);
        }
        offset += 16;
    }
    blocks
        .remainder()
        .iter()
        .position(|it| needs_escape(*it))
        .map(|it| offset + it)
}

/// Returns true if and only if JCS writes `text` verbatim between quotes.
pub(crate) fn is_verbatim(text: &str) -> bool {
    first_escape(text.as_bytes()).is_none()
}

pub(crate) fn write_string(out: &mut String, text: &str) {
    out.push('"');
    // Runs of characters that need no escape are copied as one slice. Every byte that needs an
    // escape is ASCII, so each position found is a char boundary.
    let mut rest = text;
    while let Some(at) = first_escape(rest.as_bytes()) {
        out.push_str(&rest[..at]);
        let byte = rest.as_bytes()[at];
        match byte {
            b'"' => out.push_str("\\\""),
            b'\\' => out.push_str("\\\\"),
            0x08 => out.push_str("\\b"),
            b'\t' => out.push_str("\\t"),
            b'\n' => out.push_str("\\n"),
            0x0c => out.push_str("\\f"),
            b'\r' => out.push_str("\\r"),
            _ => {
                let _ = write!(out, "\\u{:04x}", byte);
            }
        }
        rest = &rest[at + 1..];
    }
    out.push_str(rest);
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn canonical(json: &str) -> String {
        let value: Value = serde_json::from_str(json).unwrap();
        String::from_utf8(to_vec(&value).unwrap()).unwrap()
    }

    /// RFC 8785 §3.2.2, the example of the specification.
    #[test]
    fn rfc_example_of_serialization() {
        let input = r#"{
            "numbers": [333333333.33333329, 1E30, 4.50, 2e-3, 0.000000000000000000000000001],
            "string": "\u20ac$\u000F\u000aA'\u0042\u0022\u005c\\\"\/",
            "literals": [null, true, false]
        }"#;
        assert_eq!(
            canonical(input),
            r#"{"literals":[null,true,false],"numbers":[333333333.3333333,1e+30,4.5,0.002,1e-27],"string":"€$\u000f\nA'B\"\\\\\"/"}"#
        );
    }

    /// RFC 8785 §3.2.3, sorting by UTF-16 code units.
    #[test]
    fn rfc_example_of_sorting() {
        let input = r#"{
            "\u20ac": "Euro Sign",
            "\r": "Carriage Return",
            "\ufb33": "Hebrew Letter Dalet With Dagesh",
            "1": "One",
            "\ud83d\ude00": "Emoji: Grinning Face",
            "\u0080": "Control",
            "\u00f6": "Latin Small Letter O With Diaeresis"
        }"#;
        let value: Value = serde_json::from_str(input).unwrap();
        let text = String::from_utf8(to_vec(&value).unwrap()).unwrap();
        let reparsed: serde_json::Map<String, Value> = serde_json::from_str(&text).unwrap();
        let order: Vec<&str> = text
            .split("\":\"")
            .skip(1)
            .map(|it| it.split('"').next().unwrap())
            .collect();
        assert_eq!(reparsed.len(), 7);
        assert_eq!(
            order,
            [
                "Carriage Return",
                "One",
                "Control",
                "Latin Small Letter O With Diaeresis",
                "Euro Sign",
                "Emoji: Grinning Face",
                "Hebrew Letter Dalet With Dagesh"
            ]
        );
    }

    /// RFC 8785 Appendix B: IEEE 754 bit patterns and their canonical text.
    #[test]
    fn rfc_number_samples() {
        let samples: [(u64, &str); 24] = [
            (0x0000000000000000, "0"),
            (0x8000000000000000, "0"),
            (0x0000000000000001, "5e-324"),
            (0x8000000000000001, "-5e-324"),
            (0x7fefffffffffffff, "1.7976931348623157e+308"),
            (0xffefffffffffffff, "-1.7976931348623157e+308"),
            (0x4340000000000000, "9007199254740992"),
            (0xc340000000000000, "-9007199254740992"),
            (0x4430000000000000, "295147905179352830000"),
            (0x44b52d02c7e14af5, "9.999999999999997e+22"),
            (0x44b52d02c7e14af6, "1e+23"),
            (0x44b52d02c7e14af7, "1.0000000000000001e+23"),
            (0x444b1ae4d6e2ef4e, "999999999999999700000"),
            (0x444b1ae4d6e2ef4f, "999999999999999900000"),
            (0x444b1ae4d6e2ef50, "1e+21"),
            (0x3eb0c6f7a0b5ed8c, "9.999999999999997e-7"),
            (0x3eb0c6f7a0b5ed8d, "0.000001"),
            (0x41b3de4355555553, "333333333.3333332"),
            (0x41b3de4355555554, "333333333.33333325"),
            (0x41b3de4355555555, "333333333.3333333"),
            (0x41b3de4355555556, "333333333.3333334"),
            (0x41b3de4355555557, "333333333.33333343"),
            (0xbecbf647612f3696, "-0.0000033333333333333333"),
            (0x43143ff3c1cb0959, "1424953923781206.2"),
        ];
        for (bits, expect) in samples {
            let mut out = String::new();
            write_double(&mut out, f64::from_bits(bits)).unwrap();
            assert_eq!(out, expect, "bits {bits:016x}");
        }
    }

    #[test]
    fn integers_beyond_2_pow_53_are_refused_not_rounded() {
        assert_eq!(
            canonical("[9007199254740991,-9007199254740991,0,-0]"),
            "[9007199254740991,-9007199254740991,0,0]"
        );
        let too_big: Value = serde_json::from_str("9007199254740993").unwrap();
        assert!(matches!(to_vec(&too_big), Err(JcsError::UnsafeInteger(_))));
    }

    #[test]
    fn serde_json_maps_iterate_in_byte_order() {
        // `write_value` writes members in the map's order unless a key needs the UTF-16 sort:
        // that order must be byte order, which it is while no crate in the build turns on
        // serde_json's `preserve_order`.
        let value: Value = serde_json::from_str(r#"{"b":1,"a":2,"\u00e9":3,"A":4}"#).unwrap();
        let keys: Vec<&str> = value
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(keys, ["A", "a", "b", "\u{e9}"]);
    }

    #[test]
    fn whitespace_and_order_do_not_matter() {
        assert_eq!(
            canonical(r#"{ "b" : [1 , 2.0], "a":{"d":1,"c":"x"} }"#),
            r#"{"a":{"c":"x","d":1},"b":[1,2]}"#
        );
    }

    proptest::proptest! {
        #[test]
        fn canonical_text_is_json_with_the_same_value(bits in proptest::prelude::any::<u64>()) {
            let float = f64::from_bits(bits);
            proptest::prop_assume!(float.is_finite());
            let mut out = String::new();
            write_double(&mut out, float).unwrap();
            let back: f64 = out.parse().unwrap();
            proptest::prop_assert_eq!(back, float.abs() * float.signum());
        }

        #[test]
        fn canonicalization_is_idempotent(text in "\\PC{0,40}") {
            let value = Value::String(text);
            let once = to_vec(&value).unwrap();
            let reparsed: Value = serde_json::from_slice(&once).unwrap();
            proptest::prop_assert_eq!(to_vec(&reparsed).unwrap(), once);
        }
    }
}
