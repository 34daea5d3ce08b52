//! PHI scrubbing at egress (placeholder API; the detector comes next): replaces protected health
//! information in record bodies with stable keyed-hash tokens before they are sealed.

use serde_json::Value;

/// Replaces PHI with keyed-hash tokens.
pub struct Scrubber {
    /// HMAC key for the tokens.
    key: Vec<u8>,
}

impl Scrubber {
    /// A scrubber whose tokens are keyed with `token_key`.
    pub fn new(token_key: &[u8]) -> Scrubber {
        Scrubber { key: token_key.to_vec() }
    }

    /// Scrubs one string.
    pub fn scrub_text(&self, text: &str) -> String {
        let _ = &self.key;
        text.to_string()
    }

    /// Scrubs every string in a JSON value (object keys are ours and left alone).
    pub fn scrub_value(&self, value: &Value) -> Value {
        match value {
            Value::String(text) => Value::String(self.scrub_text(text)),
            Value::Array(items) => Value::Array(items.iter().map(|it| self.scrub_value(it)).collect()),
            Value::Object(members) => {
                Value::Object(members.iter().map(|(k, v)| (k.clone(), self.scrub_value(v))).collect())
            }
            other => other.clone(),
        }
    }

    /// Returns true if and only if the text still contains something the scrubber would replace
    /// (the egress guard of every sink).
    pub fn contains_phi(&self, text: &str) -> bool {
        self.scrub_text(text) != text
    }
}
