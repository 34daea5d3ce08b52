//! PHI scrubbing at egress: replaces protected health information in record bodies with stable
//! keyed-hash tokens before they are sealed, and tells a sink whether a text still holds any.
//!
//! It owns the token format and the report of what was replaced; the detectors (which formats
//! count as PHI, and which look-alikes never do) live in `phi/detect.rs`. It does no I/O and keeps
//! no state between calls: the token key comes from the caller (`evidence.phi_token_key_file`, or
//! derived from the signing key by `evidence::keys::phi_token_key`).
//!
//! # Tokens
//!
//! A value of category `C` becomes `[C:<first 12 hex digits of HMAC-SHA256(key, C || 0x00 ||
//! normalized value)>]`, e.g. `[SSN:3f9a0c1b2d4e]`. The value is normalized first (digits only for
//! SSNs, phone and card numbers; lower case for e-mail; `YYYY-MM-DD` for dates of birth; upper-case
//! letters and digits for MRNs and member ids), so one person's records still correlate whatever the
//! spelling, while the category in the MAC input keeps an SSN and a phone number with the same
//! digits apart. The key must stay secret: without it an attacker cannot test guesses (there are
//! only a billion SSNs), with it they can, so it never leaves the host and is never logged.
//! 48 bits of MAC make a collision between two values of one site vanishingly unlikely.
//!
//! # Properties the tests hold it to
//!
//! - Idempotent: scrubbing scrubbed text changes nothing, and `contains_phi(&scrub_text(x))` is
//!   false for every `x` (tokens are never re-detected, and `scrub_text` repeats until nothing is
//!   found).
//! - A scrubbed JSON value passes `contains_phi` also as JSON text (compact and RFC 8785), which is
//!   what the sinks' egress guard reads.
//! - Real evidence formats pass unchanged: versions, ISO timestamps, ports, IP addresses, digests,
//!   Nix store paths, UUIDs, HIPAA citations, CVE and KB ids (`agent/tests/phi_corpus.rs`).
//! - No input makes it panic. Each scan is linear in the input (the `regex` crate, and a rejected
//!   match resumes at the next word), so hostile text costs time in proportion to its size.

mod detect;

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;

use hmac::{Hmac, KeyInit, Mac};
use serde_json::Value;
use sha2::Sha256;

/// A kind of PHI, as it appears in tokens (`[SSN:…]`) and in reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum Category {
    /// A US street address, PO box, or `City, ST 12345` line.
    Address,
    /// A payment card number (issuer prefix and Luhn check digit valid).
    Card,
    /// A labelled date of birth.
    Dob,
    /// An e-mail address.
    Email,
    /// A labelled health plan member, subscriber, policy or Medicaid id.
    Insurance,
    /// A Medicare Beneficiary Identifier or a labelled legacy HICN.
    Mbi,
    /// A labelled medical record number or patient id.
    Mrn,
    /// A US (NANP) phone number.
    Phone,
    /// A US Social Security number.
    Ssn,
}

impl Category {
    /// Every category, in the order of the enum.
    pub const ALL: [Category; 9] = [
        Category::Address,
        Category::Card,
        Category::Dob,
        Category::Email,
        Category::Insurance,
        Category::Mbi,
        Category::Mrn,
        Category::Phone,
        Category::Ssn,
    ];

    /// The name in tokens and reports (`SSN`, `PHONE`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            Category::Address => "ADDRESS",
            Category::Card => "CARD",
            Category::Dob => "DOB",
            Category::Email => "EMAIL",
            Category::Insurance => "INSURANCE",
            Category::Mbi => "MBI",
            Category::Mrn => "MRN",
            Category::Phone => "PHONE",
            Category::Ssn => "SSN",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// How many values of each category one or more scrub calls replaced: evidence of the scrubbing
/// itself, which never holds the values.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ScrubReport {
    counts: [usize; Category::ALL.len()],
}

impl ScrubReport {
    /// Values of `category` replaced.
    pub fn count(&self, category: Category) -> usize {
        self.counts[category.index()]
    }

    /// Values replaced in all.
    pub fn total(&self) -> usize {
        self.counts.iter().sum()
    }

    /// Returns true if and only if nothing was replaced.
    pub fn is_empty(&self) -> bool {
        self.total() == 0
    }

    /// The categories with at least one replacement, with their counts, in category order.
    pub fn iter(&self) -> impl Iterator<Item = (Category, usize)> + '_ {
        Category::ALL
            .into_iter()
            .map(|it| (it, self.count(it)))
            .filter(|(_, count)| *count > 0)
    }

    /// `{"PHONE": 1, "SSN": 2}`: the non-zero counts, for an evidence record.
    pub fn to_json(&self) -> Value {
        Value::Object(
            self.iter()
                .map(|(category, count)| (category.as_str().to_string(), Value::from(count)))
                .collect(),
        )
    }

    fn add(&mut self, category: Category) {
        self.counts[category.index()] += 1;
    }

    fn merge(&mut self, other: &ScrubReport) {
        for (it, n) in self.counts.iter_mut().zip(other.counts) {
            *it += n;
        }
    }
}

/// Replaces PHI with keyed-hash tokens. Cheap to clone and shareable between threads; the
/// detectors are compiled once per process.
#[derive(Clone)]
pub struct Scrubber {
    /// HMAC-SHA256 keyed with the token key, cloned for each token (keying hashes the key once).
    /// Shared, so a scrubber is a pointer wide and clones without copying the keyed state.
    mac: Arc<Hmac<Sha256>>,
}

impl fmt::Debug for Scrubber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The key stays out of logs and error messages.
        f.debug_struct("Scrubber").finish_non_exhaustive()
    }
}

impl Scrubber {
    /// A scrubber whose tokens are keyed with `token_key`.
    pub fn new(token_key: &[u8]) -> Scrubber {
        // Invariant: HMAC accepts keys of any length (longer ones are hashed first), so
        // `new_from_slice` cannot fail; the hmac crate's own `KeyInit::new` relies on the same.
        let mac =
            Hmac::<Sha256>::new_from_slice(token_key).expect("HMAC accepts keys of any length");
        Scrubber { mac: Arc::new(mac) }
    }

    /// Scrubs one string.
    pub fn scrub_text(&self, text: &str) -> String {
        self.scrub_text_reporting(text, &mut ScrubReport::default())
    }

    /// Scrubs one string and counts what it replaced into `report`.
    pub fn scrub_text_reporting(&self, text: &str, report: &mut ScrubReport) -> String {
        let mut current = Cow::Borrowed(text);
        // Replacing a value can uncover another that overlapped it; so scan again until nothing
        // is found. This ends: each round turns at least one byte outside tokens into a token, and
        // tokens are never touched again, so there are at most `text.len()` rounds (in practice
        // one, or two when something was found).
        loop {
            let found = detect::find(&current);
            if found.is_empty() {
                return current.into_owned();
            }
            let mut res = String::with_capacity(current.len() + 8 * found.len());
            let mut copied_to = 0;
            for candidate in &found {
                res.push_str(&current[copied_to..candidate.start]);
                res.push_str(&self.token_normalized(candidate.category, &candidate.normalized));
                report.add(candidate.category);
                copied_to = candidate.end;
            }
            res.push_str(&current[copied_to..]);
            current = Cow::Owned(res);
        }
    }

    /// Scrubs every string in a JSON value, and every object key (our own keys hold no PHI and
    /// pass unchanged; keys taken from foreign data might).
    ///
    /// A scalar under a key that names PHI (`"ssn"`, `"dob"`, `"patient_id"`, `"member_id"`,
    /// `"phone"`, `"email"`, …) is replaced whole when it holds a digit (or an `@` for e-mail),
    /// even in a form the text detectors leave alone (`"ssn": 123456789`, `"dob": "1961-03-14"`),
    /// because the key is the label.
    ///
    /// The result also passes [`Scrubber::contains_phi`] as JSON text: sinks guard the serialized
    /// record, where a label in a key meets its value (`"patient_no":12345`), escapes add letters
    /// (`"\n"`), and numbers are text. A scalar that is clean alone but not in its serialized
    /// place becomes one token whole.
    pub fn scrub_value(&self, value: &Value) -> Value {
        self.scrub_value_reporting(value, &mut ScrubReport::default())
    }

    /// Scrubs a JSON value and counts what it replaced into `report`.
    pub fn scrub_value_reporting(&self, value: &Value, report: &mut ScrubReport) -> Value {
        match value {
            Value::Object(_) | Value::Array(_) => self.scrub_value_under(value, None, report),
            scalar => self.scrub_member(None, scalar, None, report),
        }
    }

    /// Returns true if and only if [`Scrubber::scrub_value`] would change `value`: the egress
    /// guard for a sink that holds the record as a value rather than as text.
    pub fn contains_phi_value(&self, value: &Value) -> bool {
        self.scrub_value(value) != *value
    }

    /// Returns true if and only if the text still contains something the scrubber would replace
    /// (the egress guard of every sink).
    pub fn contains_phi(&self, text: &str) -> bool {
        !detect::find(text).is_empty()
    }

    /// The token for `value` as a value of `category`, normalized as the detectors normalize it:
    /// for values the caller knows to be PHI without detection.
    pub fn token(&self, category: Category, value: &str) -> String {
        self.token_normalized(category, &detect::normalize(category, value))
    }

    fn token_normalized(&self, category: Category, normalized: &str) -> String {
        let mut mac = Hmac::clone(&self.mac);
        mac.update(category.as_str().as_bytes());
        mac.update(&[0]);
        mac.update(normalized.as_bytes());
        let digest = mac.finalize().into_bytes();
        format!("[{}:{}]", category.as_str(), hex::encode(&digest[..6]))
    }

    /// Scrubs the members of an object or the items of an array; `label` is the category of the
    /// key an array sits under, which its items inherit.
    fn scrub_value_under(
        &self,
        value: &Value,
        label: Option<Category>,
        report: &mut ScrubReport,
    ) -> Value {
        match value {
            Value::Array(items) => Value::Array(
                items
                    .iter()
                    .map(|it| match it {
                        Value::Object(_) | Value::Array(_) => {
                            self.scrub_value_under(it, label, report)
                        }
                        scalar => self.scrub_member(None, scalar, label, report),
                    })
                    .collect(),
            ),
            Value::Object(members) => {
                let mut res = serde_json::Map::new();
                for (key, it) in members {
                    let label = labelled_key(key);
                    let scrubbed_key = self.scrub_key(key, report);
                    let member = match it {
                        Value::Object(_) => self.scrub_value_under(it, None, report),
                        Value::Array(_) => self.scrub_value_under(it, label, report),
                        scalar => self.scrub_member(Some(&scrubbed_key), scalar, label, report),
                    };
                    // Two keys can scrub to one token (`123-45-6789` and `123 45 6789`); number
                    // the later ones rather than lose a member.
                    let mut unique_key = scrubbed_key.clone();
                    let mut n_same = 1;
                    while res.contains_key(&unique_key) {
                        n_same += 1;
                        unique_key = format!("{scrubbed_key}#{n_same}");
                    }
                    res.insert(unique_key, member);
                }
                Value::Object(res)
            }
            scalar => self.scrub_member(None, scalar, label, report),
        }
    }

    /// Scrubs an object key: as text, then as the JSON string it is serialized to.
    fn scrub_key(&self, key: &str, report: &mut ScrubReport) -> String {
        let res = self.scrub_text_reporting(key, report);
        if !needs_escaping(&res) {
            return res;
        }
        match detect::find(&json_string(&res)).first() {
            None => res,
            Some(candidate) => {
                report.add(candidate.category);
                self.token(candidate.category, key)
            }
        }
    }

    /// Scrubs a scalar under `key` (none for array items and the root), then checks it where a
    /// sink's guard sees it: serialized after its key.
    fn scrub_member(
        &self,
        key: Option<&str>,
        value: &Value,
        label: Option<Category>,
        report: &mut ScrubReport,
    ) -> Value {
        let (raw, res) = match (value, label) {
            (Value::String(text), Some(category)) => {
                (text.clone(), self.scrub_labelled(category, text, report))
            }
            (Value::String(text), None) => (text.clone(), self.scrub_text_reporting(text, report)),
            (Value::Number(number), Some(category)) => {
                let text = number.to_string();
                let res = self.scrub_labelled(category, &text, report);
                (text, res)
            }
            (Value::Number(number), None) => {
                // Numbers are ours (counts, sizes, epoch times) and only scanned where they could
                // be PHI as text: long enough for a card number, or after a label in the key.
                let short_integer = number
                    .as_i64()
                    .map(i64::unsigned_abs)
                    .or(number.as_u64())
                    .is_some_and(|it| it < 1_000_000_000_000);
                if short_integer && !key.is_some_and(could_be_label) {
                    return value.clone();
                }
                let texts = number_texts(number);
                let suspect = key.is_some_and(could_be_label)
                    || texts
                        .iter()
                        .any(|it| it.bytes().filter(u8::is_ascii_digit).count() >= 13);
                let found = match suspect {
                    true => texts
                        .iter()
                        .find_map(|text| detect::find(&member_json(key, text)).into_iter().next()),
                    false => None,
                };
                return match found {
                    None => value.clone(),
                    Some(candidate) => {
                        report.add(candidate.category);
                        Value::String(self.token(candidate.category, &number.to_string()))
                    }
                };
            }
            (other, _) => return other.clone(),
        };
        // Every detector needs a digit or an `@`; escapes add only letters, except `\u00xx` for
        // control characters. So most values need no second look.
        let escapes_add_digits = res
            .bytes()
            .any(|it| it < 0x20 && !matches!(it, b'\n' | b'\t' | b'\r' | 0x08 | 0x0c));
        let serialized_differs = needs_escaping(&res) || key.is_some_and(could_be_label);
        if !(escapes_add_digits || (detect::could_contain_phi(&res) && serialized_differs)) {
            return Value::String(res);
        }
        match detect::find(&member_json(key, &json_string(&res))).first() {
            None => Value::String(res),
            Some(candidate) => {
                report.add(candidate.category);
                Value::String(self.token(candidate.category, &raw))
            }
        }
    }

    /// A string the key says is PHI of `category`: detected values are replaced as usual; if what
    /// is left still holds a digit (or an `@` for e-mail), the whole string becomes one token.
    fn scrub_labelled(&self, category: Category, text: &str, report: &mut ScrubReport) -> String {
        if detect::is_token(text) {
            return text.to_string();
        }
        let mut inner = ScrubReport::default();
        let scrubbed = self.scrub_text_reporting(text, &mut inner);
        let rest = detect::without_tokens(&scrubbed);
        let identifying = rest.bytes().any(|it| it.is_ascii_digit())
            || (category == Category::Email && rest.contains('@'));
        if !identifying {
            report.merge(&inner);
            return scrubbed;
        }
        report.add(category);
        self.token(category, text)
    }
}

/// The category a JSON key names, for keys that can only hold PHI. `address` alone is not one:
/// in evidence it is an IP address.
fn labelled_key(key: &str) -> Option<Category> {
    let folded: String = key
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .map(|it| it.to_ascii_lowercase())
        .collect();
    let category = match folded.as_str() {
        "ssn" | "socialsecuritynumber" | "socialsecurity" => Category::Ssn,
        "mrn" | "medicalrecordnumber" | "patientid" | "patientnumber" | "chartnumber" => {
            Category::Mrn
        }
        "dob" | "dateofbirth" | "birthdate" | "birthday" => Category::Dob,
        "email" | "emailaddress" | "patientemail" => Category::Email,
        "phone" | "phonenumber" | "telephone" | "mobile" | "mobilephone" | "cellphone"
        | "homephone" | "fax" | "patientphone" => Category::Phone,
        "streetaddress" | "homeaddress" | "mailingaddress" | "postaladdress" | "patientaddress" => {
            Category::Address
        }
        "memberid" | "insuranceid" | "subscriberid" | "policynumber" | "medicaidid" => {
            Category::Insurance
        }
        "mbi" | "medicareid" | "medicarenumber" | "hicn" => Category::Mbi,
        _ => return None,
    };
    Some(category)
}

/// Returns true if and only if a key holds the start of a label (`patient_no`, `Member #`), so
/// that its serialized member `"key":value` may read as labelled PHI.
fn could_be_label(key: &str) -> bool {
    detect::could_start_a_label(key)
}

/// Returns true if and only if JSON escapes characters of `text` (quotes, backslashes, control
/// characters), so that its serialized form reads differently from the text.
fn needs_escaping(text: &str) -> bool {
    text.bytes()
        .any(|it| it < 0x20 || it == b'"' || it == b'\\')
}

/// `text` as a JSON string, escaped as serde_json and RFC 8785 escape it (`\"`, `\\`, `\n`,
/// `\t`, `\r`, `\b`, `\f`, other control characters as `\u00xx`).
fn json_string(text: &str) -> String {
    let mut res = String::with_capacity(text.len() + 2);
    res.push('"');
    for c in text.chars() {
        match c {
            '"' => res.push_str("\\\""),
            '\\' => res.push_str("\\\\"),
            '\n' => res.push_str("\\n"),
            '\t' => res.push_str("\\t"),
            '\r' => res.push_str("\\r"),
            '\u{8}' => res.push_str("\\b"),
            '\u{c}' => res.push_str("\\f"),
            c if u32::from(c) < 0x20 => res.push_str(&format!("\\u{:04x}", u32::from(c))),
            c => res.push(c),
        }
    }
    res.push('"');
    res
}

/// The serialized member: `"key":value`, or the value alone for array items.
fn member_json(key: Option<&str>, value_json: &str) -> String {
    match key {
        Some(key) => format!("{}:{value_json}", json_string(key)),
        None => value_json.to_string(),
    }
}

/// How a number may appear as text: serde_json's form, and for a float also the shortest form
/// without a fraction that RFC 8785 uses for integral values (`4111111111111111`, not `…1.0`).
fn number_texts(number: &serde_json::Number) -> Vec<String> {
    let mut texts = vec![number.to_string()];
    if let Some(float) = number.as_f64().filter(|_| number.is_f64()) {
        texts.push(format!("{float}"));
    }
    texts
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde_json::json;

    use super::*;

    fn scrubber() -> Scrubber {
        Scrubber::new(b"test token key, not a real one")
    }

    /// The one place the unit tests call `scrub_text`: the output, and what it must not contain.
    fn check(input: &str, expect: &str) {
        let scrubber = scrubber();
        let res = scrubber.scrub_text(input);
        assert_eq!(res, expect, "input: {input}");
        assert!(!scrubber.contains_phi(&res), "still PHI: {res}");
        assert_eq!(scrubber.scrub_text(&res), res, "not idempotent: {input}");
    }

    #[test]
    fn token_format_is_category_and_twelve_hex_digits() {
        let token = scrubber().token(Category::Ssn, "123-45-6789");
        assert_eq!(token.len(), "[SSN:".len() + 12 + 1, "{token}");
        assert!(token.starts_with("[SSN:") && token.ends_with(']'));
        assert!(detect::is_token(&token));
    }

    #[test]
    fn token_is_the_hmac_of_category_nul_and_normalized_value() {
        let mut mac = Hmac::<Sha256>::new_from_slice(b"k").expect("any key length");
        mac.update(b"SSN\x00123456789");
        let expect = hex::encode(&mac.finalize().into_bytes()[..6]);
        assert_eq!(
            Scrubber::new(b"k").token(Category::Ssn, "123 45 6789"),
            format!("[SSN:{expect}]")
        );
    }

    #[test]
    fn spellings_of_one_value_correlate() {
        let scrubber = scrubber();
        let ssn = scrubber.token(Category::Ssn, "123456789");
        assert_eq!(scrubber.scrub_text("SSN 123-45-6789"), format!("SSN {ssn}"));
        assert_eq!(
            scrubber.scrub_text("ssn: 123 45 6789"),
            format!("ssn: {ssn}")
        );
        let phone = scrubber.token(Category::Phone, "2175550143");
        assert_eq!(scrubber.scrub_text("(217) 555-0143"), phone);
        assert_eq!(scrubber.scrub_text("+1 217 555 0143"), phone);
        assert_eq!(scrubber.scrub_text("217.555.0143"), phone);
        let email = scrubber.token(Category::Email, "jane.roe@example.org");
        assert_eq!(scrubber.scrub_text("Jane.Roe@Example.ORG"), email);
        let dob = scrubber.token(Category::Dob, "1961-03-14");
        assert_eq!(
            scrubber.scrub_text("DOB: 03/14/1961"),
            format!("DOB: {dob}")
        );
        assert_eq!(
            scrubber.scrub_text("born March 14, 1961"),
            format!("born {dob}")
        );
    }

    #[test]
    fn categories_and_keys_separate_tokens() {
        let scrubber = scrubber();
        assert_ne!(
            scrubber.token(Category::Ssn, "2175550143"),
            scrubber.token(Category::Phone, "2175550143")
        );
        assert_ne!(
            scrubber.token(Category::Ssn, "123456789"),
            Scrubber::new(b"another key").token(Category::Ssn, "123456789")
        );
    }

    #[test]
    fn examples() {
        let s = scrubber();
        let ssn = s.token(Category::Ssn, "123456789");
        let mrn = s.token(Category::Mrn, "00482913");
        check("MRN: 00482913", &format!("MRN: {mrn}"));
        check(
            "Patient SSN 123-45-6789, MRN 00482913.",
            &format!("Patient SSN {ssn}, MRN {mrn}."),
        );
        check(
            "version 25.11.20260510.8fd9daa",
            "version 25.11.20260510.8fd9daa",
        );
        check("at 2026-11-27T12:00:00Z", "at 2026-11-27T12:00:00Z");
        check("000-12-3456 is no SSN", "000-12-3456 is no SSN");
        check("", "");
    }

    #[test]
    fn report_counts_by_category() {
        let s = scrubber();
        let mut report = ScrubReport::default();
        s.scrub_text_reporting(
            "SSN 123-45-6789, call (217) 555-0143 or 217-555-0199, mail jane.roe@example.org",
            &mut report,
        );
        assert_eq!(report.count(Category::Ssn), 1);
        assert_eq!(report.count(Category::Phone), 2);
        assert_eq!(report.count(Category::Email), 1);
        assert_eq!(report.total(), 4);
        assert_eq!(report.to_json(), json!({"EMAIL": 1, "PHONE": 2, "SSN": 1}));
        assert!(ScrubReport::default().is_empty());
    }

    #[test]
    fn labelled_keys_scrub_whole_values() {
        let s = scrubber();
        let mut report = ScrubReport::default();
        let value = json!({
            "ssn": 123456789,
            "dob": "1961-03-14",
            "patient_id": "A-0042",
            "phone": ["217 555 0143", "n/a"],
            "address": "10.0.0.7",
            "note": "DOB 1961-03-14, seen 2026-05-10",
            "observed_at": "2026-05-10T08:00:00Z",
        });
        let res = s.scrub_value_reporting(&value, &mut report);
        let dob = s.token(Category::Dob, "1961-03-14");
        assert_eq!(
            res,
            json!({
                "ssn": s.token(Category::Ssn, "123-45-6789"),
                "dob": dob,
                "patient_id": s.token(Category::Mrn, "A0042"),
                "phone": [s.token(Category::Phone, "(217) 555-0143"), "n/a"],
                "address": "10.0.0.7",
                "note": format!("DOB {dob}, seen 2026-05-10"),
                "observed_at": "2026-05-10T08:00:00Z",
            })
        );
        assert_eq!(
            report.to_json(),
            json!({"DOB": 2, "MRN": 1, "PHONE": 1, "SSN": 1})
        );
        assert_eq!(s.scrub_value(&res), res, "not idempotent");
        let text = serde_json::to_string(&value).expect("serializes");
        assert!(s.contains_phi(&text), "the serialized form is labelled too");
        assert!(!s.contains_phi(&serde_json::to_string(&res).expect("serializes")));
    }

    #[test]
    fn values_are_clean_where_a_sink_reads_them_serialized() {
        let s = scrubber();
        // A label in the key meets a number; a card number as a JSON number; an escape that
        // gives a mailbox its first letter; PHI in a key taken from foreign data.
        let value = json!({
            "patient_no": 4521339,
            "inode": 4111111111111111_u64,
            "size": 4096,
            "log": "a\n@example.org",
            "scans": {"/srv/scans/123-45-6789.pdf": "ok"},
        });
        let mut report = ScrubReport::default();
        let res = s.scrub_value_reporting(&value, &mut report);
        let text = serde_json::to_string(&res).expect("serializes");
        assert!(!s.contains_phi(&text), "{text}");
        assert_eq!(res["patient_no"], json!(s.token(Category::Mrn, "4521339")));
        assert_eq!(
            res["inode"],
            json!(s.token(Category::Card, "4111111111111111"))
        );
        assert_eq!(res["size"], json!(4096));
        let ssn = s.token(Category::Ssn, "123456789");
        assert_eq!(
            res["scans"],
            json!({ format!("/srv/scans/{ssn}.pdf"): "ok" })
        );
        assert!(s.contains_phi_value(&value) && !s.contains_phi_value(&res));
        assert_eq!(report.total(), 4, "{:?}", report.to_json());
    }

    #[test]
    fn keys_that_scrub_alike_keep_both_members() {
        let s = scrubber();
        let res = s.scrub_value(&json!({"Jane.Roe@example.org": 1, "jane.roe@example.org": 2}));
        let email = s.token(Category::Email, "jane.roe@example.org");
        assert_eq!(res, json!({ email.clone(): 1, format!("{email}#2"): 2 }));
        assert_eq!(s.scrub_value(&res), res);
    }

    #[test]
    fn debug_does_not_show_the_key() {
        let shown = format!("{:?}", Scrubber::new(b"very secret"));
        assert!(
            !shown.contains("very") && !shown.contains("secret"),
            "{shown}"
        );
    }

    /// Text made of the pieces PHI and its look-alikes are made of, so the properties meet the
    /// detectors' edge cases more often than uniform random text would.
    fn phi_like_text() -> impl Strategy<Value = String> {
        let piece = prop_oneof![
            "[0-9]{1,12}",
            "[-. /:()#+@,]",
            "[ \t\n]{1,2}",
            "[A-Za-z]{1,8}",
            Just("SSN ".to_string()),
            Just("MRN: ".to_string()),
            Just("DOB ".to_string()),
            Just("phone ".to_string()),
            Just("member id ".to_string()),
            Just("Medicare # ".to_string()),
            Just(" Main St".to_string()),
            Just(", IL 62704".to_string()),
            Just("jane.roe@example.org".to_string()),
            Just("[SSN:0123456789ab]".to_string()),
            Just("/nix/store/01l556piqzj5kqbd8cwxa7dvhyf1mldr-x".to_string()),
            "\\PC{1,3}",
        ];
        proptest::collection::vec(piece, 0..24).prop_map(|it| it.concat())
    }

    /// JSON values whose keys and strings are PHI-like, with escapes, control characters and
    /// numbers that look like card numbers.
    fn json_value() -> impl Strategy<Value = Value> {
        let text = prop_oneof![phi_like_text(), "[a-z\\n\\t\"\\\\\\x01@. 0-9]{0,16}",];
        let key = prop_oneof![
            Just("ssn".to_string()),
            Just("patient_no".to_string()),
            Just("Member #".to_string()),
            Just("dob".to_string()),
            Just("note".to_string()),
            Just("phone".to_string()),
            text.clone(),
        ];
        let leaf = prop_oneof![
            text.prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            any::<f64>().prop_map(Value::from),
            prop_oneof![
                Just(4111111111111111_u64),
                Just(378282246310005),
                Just(2175550143)
            ]
            .prop_map(Value::from),
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
        ];
        leaf.prop_recursive(3, 24, 6, move |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::from),
                proptest::collection::btree_map(key.clone(), inner, 0..6)
                    .prop_map(|it| Value::Object(it.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #[test]
        fn scrubbing_is_idempotent_and_leaves_no_phi(text in phi_like_text()) {
            let s = scrubber();
            let once = s.scrub_text(&text);
            prop_assert!(!s.contains_phi(&once), "still PHI: {once:?}");
            prop_assert_eq!(s.scrub_text(&once), once.clone());
            prop_assert_eq!(s.contains_phi(&text), once != text);
        }

        #[test]
        fn any_text_never_panics(text in "\\PC{0,200}") {
            let s = scrubber();
            let once = s.scrub_text(&text);
            prop_assert!(!s.contains_phi(&once));
        }

        #[test]
        fn json_strings_are_escaped_as_serde_json_escapes_them(text in "\\PC*|[\\x00-\\x20\"\\\\a-z]{0,20}") {
            prop_assert_eq!(json_string(&text), serde_json::to_string(&text).expect("a string serializes"));
        }

        #[test]
        fn scrubbed_values_pass_the_guard_as_json(value in json_value()) {
            let s = scrubber();
            let once = s.scrub_value(&value);
            let text = serde_json::to_string(&once).expect("serializes");
            prop_assert!(!s.contains_phi(&text), "still PHI: {text}");
            // The form the outbox guard reads: RFC 8785 canonical JSON (numbers it cannot
            // represent exactly are an error there, and such a record is never sealed).
            if let Ok(canonical) = msp_compliance_protocol::jcs::to_vec(&once) {
                let canonical = String::from_utf8(canonical).expect("JSON is UTF-8");
                prop_assert!(!s.contains_phi(&canonical), "still PHI: {canonical}");
            }
            prop_assert_eq!(s.scrub_value(&once), once.clone());
            prop_assert!(!s.contains_phi_value(&once));
        }

        #[test]
        fn values_are_idempotent(text in phi_like_text(), key in "(ssn|dob|phone|email|note|patient_id|mbi)") {
            let s = scrubber();
            let value = json!({ key: text });
            let once = s.scrub_value(&value);
            prop_assert_eq!(s.scrub_value(&once), once);
        }
    }
}
