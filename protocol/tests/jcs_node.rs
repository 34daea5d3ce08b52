//! Cross-checks our RFC 8785 canonicalizer against an independent implementation: ECMAScript
//! itself. JCS is defined as ES6 `JSON.stringify` of numbers and strings plus member sorting by
//! UTF-16 code units, which is what Node.js does natively; a few lines of JavaScript sort the
//! members, and the two outputs must be byte-identical for many random values.
//! Needs `node` (in the base image; `.ci/run` sets MSP_REAL_TOOLS=1).

use std::io::Write;
use std::process::{Command, Stdio};

use msp_compliance_protocol::jcs;
use serde_json::{Value, json};

const CANONICALIZE_JS: &str = r#"
const lines = require('fs').readFileSync(0, 'utf8').split('\n').filter(l => l.length);
function canon(v) {
  if (v === null || typeof v !== 'object') return JSON.stringify(v);
  if (Array.isArray(v)) return '[' + v.map(canon).join(',') + ']';
  // Default JS sort compares UTF-16 code units, which is what RFC 8785 asks for.
  return '{' + Object.keys(v).sort().map(k => JSON.stringify(k) + ':' + canon(v[k])).join(',') + '}';
}
for (const line of lines) process.stdout.write(canon(JSON.parse(line)) + '\n');
"#;

/// A small deterministic generator, so a failure reproduces.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        self.0
    }
}

fn sample_values() -> Vec<Value> {
    let mut rng = Lcg(0x5eed);
    let mut values = vec![
        json!({"numbers": [333333333.3333333, 1e30, 4.5, 0.002, 1e-27]}),
        json!({"\u{20ac}": 1, "\r": 2, "\u{fb33}": 3, "1": 4, "\u{1f600}": 5, "\u{80}": 6, "\u{f6}": 7}),
        json!({"s": "\u{0}\u{1f}\"\\/\u{7f}\u{2028}\u{2029}é"}),
    ];
    for _ in 0..2_000 {
        let bits = rng.next();
        let float = f64::from_bits(bits);
        if float.is_finite() {
            values.push(json!([float]));
        }
        let small = (rng.next() % 2_000_000) as f64 / 1_000.0 - 1_000.0;
        values.push(json!({"v": small, "e": small * 1e-9, "big": small * 1e18}));
    }
    values
}

#[test]
fn our_canonical_json_equals_ecmascript() {
    if std::env::var("MSP_REAL_TOOLS").as_deref() != Ok("1") {
        eprintln!("skipped: set MSP_REAL_TOOLS=1 to cross-check with node (.ci/run does)");
        return;
    }
    let values = sample_values();
    let mut input = String::new();
    for value in &values {
        input.push_str(&serde_json::to_string(value).unwrap());
        input.push('\n');
    }
    let mut child = Command::new("node")
        .args(["-e", CANONICALIZE_JS])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("node runs");
    let mut stdin = child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || stdin.write_all(input.as_bytes()));
    let output = child.wait_with_output().unwrap();
    writer.join().unwrap().unwrap();
    assert!(output.status.success());
    let theirs: Vec<&str> = std::str::from_utf8(&output.stdout)
        .unwrap()
        .lines()
        .collect();
    assert_eq!(theirs.len(), values.len());
    for (value, their_line) in values.iter().zip(theirs) {
        let ours = String::from_utf8(jcs::to_vec(value).unwrap()).unwrap();
        assert_eq!(ours, their_line, "value {value}");
    }
}
