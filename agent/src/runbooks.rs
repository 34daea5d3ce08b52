//! The runbook whitelist, as data: what an order may ask this agent to do, with each action's
//! safety class, HIPAA controls, parameter schema and default cooldown.
//!
//! An order's `action` is a runbook id; [`find`] is the whitelist and [`validate_params`] is
//! the schema check, which refuses unknown keys and names the parameter that failed. Adding a
//! runbook (the heal runbooks of a later issue, the Windows ones) is one more entry in
//! [`RUNBOOKS`] and nothing else. This module decides what is allowed; it never performs an
//! action, reads the host or touches the network (the daemon runs an admitted order).

use std::collections::BTreeMap;
use std::time::Duration;

use msp_compliance_protocol::finding::SafetyClass;
use msp_compliance_protocol::ids::{check, hipaa, runbook};
use msp_compliance_protocol::order::is_token;
use serde_json::{Map, Value};

/// One whitelisted action.
#[derive(Debug)]
pub struct Runbook {
    /// Runbook id (a constant of `msp_compliance_protocol::ids::runbook`); an order's `action`.
    pub id: &'static str,
    /// What it does, for operators and evidence readers.
    pub description: &'static str,
    /// Who may trigger it.
    pub safety: SafetyClass,
    /// It can interrupt service: only inside the maintenance window and with a trusted clock.
    pub disruptive: bool,
    /// HIPAA citations its evidence supports.
    pub controls: &'static [&'static str],
    /// Its parameters; any other key is refused.
    pub params: &'static [ParamSpec],
    /// Least time between two executions, unless `orders.cooldown_secs` overrides it.
    pub cooldown: Duration,
    /// For a heal: what verifies it and what undoes it. `None` for actions that change nothing
    /// on the host (they need no verification or rollback).
    pub heal: Option<HealSpec>,
}

/// How a heal runbook is verified and undone (the heal engine runs it; `heal::plan` turns the
/// runbook and its parameters into the root unit's instance).
#[derive(Debug)]
pub struct HealSpec {
    /// What must hold afterwards, after the settle time.
    pub verify: VerifySpec,
    /// The health probe, besides `verify`: no unit may have newly failed.
    pub health_probe: &'static str,
    /// What the rollback unit does when verification fails (`None`: nothing to undo; the heal
    /// escalates).
    pub rollback: Option<&'static str>,
}

/// What verifies a heal.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VerifySpec {
    /// The unit is active and still the same run after the settle time.
    UnitActive,
    /// This check passes (pass, warn, not applicable or a waived exception).
    Check(&'static str),
    /// The system profile and the running system are the intended generation.
    Generation,
}

/// The health probe every heal runs.
const NO_NEW_FAILED_UNITS: &str = "no unit is newly in the failed state";

/// One parameter of a runbook.
#[derive(Debug)]
pub struct ParamSpec {
    /// Key in the order's `params` object.
    pub name: &'static str,
    /// Its type and bounds.
    pub kind: ParamKind,
    /// An order without it is refused.
    pub required: bool,
    /// What it means.
    pub description: &'static str,
}

/// The type of a parameter. Closed on purpose: every kind here has bounds, so no parameter can
/// carry an unbounded or free-form value into an action.
#[derive(Debug)]
#[non_exhaustive]
pub enum ParamKind {
    /// `true` or `false`.
    Bool,
    /// A JSON integer within `min..=max` (a number with a fraction is refused).
    Integer {
        /// Smallest value accepted.
        min: i64,
        /// Largest value accepted.
        max: i64,
    },
    /// A non-empty list of distinct strings, each one of `allowed`.
    Subset {
        /// The values a list may hold.
        allowed: &'static [&'static str],
    },
    /// A string of at most `max_len` bytes without control characters; with `token_only`, it
    /// must also be a token (`msp_compliance_protocol::order::is_token`).
    Text {
        /// Longest value accepted, in bytes.
        max_len: usize,
        /// Only `[A-Za-z0-9._-]`, not starting with `.` or `-`.
        token_only: bool,
    },
}

/// Parameters that passed their runbook's schema, typed. Only [`validate_params`] makes one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ValidParams {
    values: BTreeMap<&'static str, ParamValue>,
}

/// One validated parameter value.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ParamValue {
    /// From [`ParamKind::Bool`].
    Bool(bool),
    /// From [`ParamKind::Integer`].
    Integer(i64),
    /// From [`ParamKind::Subset`], in the order of the runbook's `allowed` list.
    Subset(Vec<&'static str>),
    /// From [`ParamKind::Text`].
    Text(String),
}

/// Why parameters failed their runbook's schema. Messages name the parameter and never quote
/// a value the order sent, except integers, which cannot carry text.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ParamError {
    /// A parameter has the wrong type or is out of bounds.
    #[error("params.{name}: {message}")]
    Invalid { name: &'static str, message: String },
    /// A required parameter is absent.
    #[error("params.{name}: required parameter is missing")]
    Missing { name: &'static str },
    /// `params` is not a JSON object.
    #[error("params: expected a JSON object")]
    NotAnObject,
    /// A key the runbook does not define.
    #[error("params.{name}: unknown parameter")]
    Unknown { name: String },
    /// A key the runbook does not define, whose name is not even a token (so it is not quoted).
    #[error("params: unknown parameter (its name is not a token)")]
    UnknownUnnamed,
}

/// Every runbook an order may name. Nothing else knows the list.
pub static RUNBOOKS: &[Runbook] = &[
    Runbook {
        id: runbook::RUN_CHECKS,
        description: "run the checks now (all, or the listed ones) and record their findings",
        safety: SafetyClass::Safe,
        disruptive: false,
        controls: &[hipaa::RISK_MANAGEMENT, hipaa::ACTIVITY_REVIEW],
        params: &[ParamSpec {
            name: "only",
            kind: ParamKind::Subset {
                allowed: &check::ALL,
            },
            required: false,
            description: "check ids to run; all checks when absent",
        }],
        cooldown: Duration::from_secs(60),
        heal: None,
    },
    Runbook {
        id: runbook::COLLECT_EVIDENCE,
        description: "re-send evidence records from a sequence number on",
        safety: SafetyClass::Safe,
        disruptive: false,
        controls: &[hipaa::AUDIT_CONTROLS],
        params: &[
            ParamSpec {
                name: "since_seq",
                kind: ParamKind::Integer {
                    min: 0,
                    max: i64::MAX,
                },
                required: true,
                description: "first record to send",
            },
            ParamSpec {
                name: "until_seq",
                kind: ParamKind::Integer {
                    min: 0,
                    max: i64::MAX,
                },
                required: false,
                description: "last record to send; the chain head when absent",
            },
        ],
        cooldown: Duration::from_secs(60),
        heal: None,
    },
    Runbook {
        id: runbook::RESTART_UNIT,
        description: "start a stopped or failed unit that the generation declares restartable \
                      (a running unit is left alone) and verify it stays up",
        safety: SafetyClass::Safe,
        // It acts only on a unit that is not running, so it cannot interrupt a service.
        disruptive: false,
        controls: &[hipaa::RISK_MANAGEMENT, hipaa::CONTINGENCY_PLAN],
        params: &[ParamSpec {
            name: "unit",
            kind: ParamKind::Text {
                max_len: 64,
                token_only: true,
            },
            required: true,
            description: "`<name>.service`, listed in declared.json's heal.restartableUnits",
        }],
        cooldown: Duration::from_secs(60),
        heal: Some(HealSpec {
            verify: VerifySpec::UnitActive,
            health_probe: NO_NEW_FAILED_UNITS,
            rollback: Some("put the unit back in its state before the heal (stopped)"),
        }),
    },
    Runbook {
        id: runbook::RESTORE_FIREWALL,
        description: "reload the firewall of the current generation",
        safety: SafetyClass::Safe,
        disruptive: false,
        controls: &[hipaa::ACCESS_CONTROL, hipaa::TRANSMISSION_SECURITY],
        params: &[],
        cooldown: Duration::from_secs(300),
        heal: Some(HealSpec {
            verify: VerifySpec::Check(check::FIREWALL),
            health_probe: NO_NEW_FAILED_UNITS,
            rollback: Some("load the ruleset snapshot taken just before the restore"),
        }),
    },
    Runbook {
        id: runbook::REFRESH_AV_SIGNATURES,
        description: "run the declared antivirus signature update now",
        safety: SafetyClass::Safe,
        disruptive: false,
        controls: &[hipaa::MALICIOUS_SOFTWARE],
        params: &[],
        cooldown: Duration::from_secs(3600),
        heal: Some(HealSpec {
            verify: VerifySpec::Check(check::AV_EDR),
            health_probe: NO_NEW_FAILED_UNITS,
            rollback: None,
        }),
    },
    Runbook {
        id: runbook::RUN_BACKUP,
        description: "run a declared backup job now",
        safety: SafetyClass::Safe,
        disruptive: false,
        controls: &[hipaa::DATA_BACKUP_PLAN],
        params: &[ParamSpec {
            name: "job",
            kind: ParamKind::Text {
                max_len: 64,
                token_only: true,
            },
            required: true,
            description: "backup job name, listed in declared.json's heal.backupUnits",
        }],
        cooldown: Duration::from_secs(3600),
        heal: Some(HealSpec {
            verify: VerifySpec::Check(check::BACKUP),
            health_probe: NO_NEW_FAILED_UNITS,
            rollback: None,
        }),
    },
    Runbook {
        id: runbook::REACTIVATE_GENERATION,
        description: "re-activate the current NixOS generation (switch-to-configuration switch)",
        safety: SafetyClass::Disruptive,
        disruptive: true,
        controls: &[hipaa::RISK_MANAGEMENT, hipaa::CONTINGENCY_PLAN],
        params: &[],
        cooldown: Duration::from_secs(600),
        heal: Some(HealSpec {
            verify: VerifySpec::Generation,
            health_probe: NO_NEW_FAILED_UNITS,
            rollback: Some("switch to the generation recorded before the activation"),
        }),
    },
    Runbook {
        id: runbook::SWITCH_GENERATION,
        description: "switch to a NixOS generation named by the order; roll back to the \
                      previous one if the post-check or health probe fails",
        safety: SafetyClass::Disruptive,
        disruptive: true,
        controls: &[hipaa::RISK_MANAGEMENT, hipaa::CONTINGENCY_PLAN],
        params: &[
            ParamSpec {
                name: "generation",
                kind: ParamKind::Integer {
                    min: 1,
                    max: crate::heal::instance::MAX_GENERATION as i64,
                },
                required: true,
                description: "number of a generation in the system profile (system-<n>-link)",
            },
            ParamSpec {
                name: "reboot",
                kind: ParamKind::Bool,
                required: false,
                description: "make it the boot default and reboot into it (`switch-to-configuration boot`) instead of switching live; verified by the first run after the boot",
            },
        ],
        cooldown: Duration::from_secs(600),
        heal: Some(HealSpec {
            verify: VerifySpec::Generation,
            health_probe: NO_NEW_FAILED_UNITS,
            rollback: Some("point the profile back at the previous generation and switch to it"),
        }),
    },
];

/// The whitelisted runbook with this id.
pub fn find(id: &str) -> Option<&'static Runbook> {
    find_in(RUNBOOKS, id)
}

/// The runbook with this id in `table` (the guardrails hold their table, so tests can pass
/// their own).
pub fn find_in(table: &'static [Runbook], id: &str) -> Option<&'static Runbook> {
    table.iter().find(|it| it.id == id)
}

/// Checks `params` against the runbook's schema: an object, no unknown key, every required
/// key present, every value of its kind and within its bounds.
pub fn validate_params(runbook: &Runbook, params: &Value) -> Result<ValidParams, ParamError> {
    let Value::Object(object) = params else {
        return Err(ParamError::NotAnObject);
    };
    // Unknown keys first, in key order, so the error does not depend on which spec comes first.
    if let Some(unknown) = object
        .keys()
        .find(|key| !runbook.params.iter().any(|spec| spec.name == key.as_str()))
    {
        return Err(if is_token(unknown) {
            ParamError::Unknown {
                name: unknown.clone(),
            }
        } else {
            ParamError::UnknownUnnamed
        });
    }
    let mut values = BTreeMap::new();
    for spec in runbook.params {
        match object.get(spec.name) {
            Some(value) => {
                values.insert(spec.name, validate_value(spec, value)?);
            }
            None if spec.required => return Err(ParamError::Missing { name: spec.name }),
            None => {}
        }
    }
    Ok(ValidParams { values })
}

impl ValidParams {
    /// An integer parameter, if given.
    pub fn integer(&self, name: &str) -> Option<i64> {
        match self.values.get(name) {
            Some(ParamValue::Integer(it)) => Some(*it),
            _ => None,
        }
    }

    /// A text parameter, if given.
    pub fn text(&self, name: &str) -> Option<&str> {
        match self.values.get(name) {
            Some(ParamValue::Text(it)) => Some(it),
            _ => None,
        }
    }

    /// A boolean parameter, if given.
    pub fn boolean(&self, name: &str) -> Option<bool> {
        match self.values.get(name) {
            Some(ParamValue::Bool(it)) => Some(*it),
            _ => None,
        }
    }

    /// A subset parameter, if given.
    pub fn subset(&self, name: &str) -> Option<&[&'static str]> {
        match self.values.get(name) {
            Some(ParamValue::Subset(it)) => Some(it),
            _ => None,
        }
    }

    /// Returns true if and only if no parameter was given.
    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// The parameters as a JSON object (for evidence and results): only validated values.
    pub fn to_json(&self) -> Value {
        let mut object = Map::new();
        for (name, value) in &self.values {
            let value = match value {
                ParamValue::Integer(it) => Value::from(*it),
                ParamValue::Text(it) => Value::from(it.as_str()),
                ParamValue::Bool(it) => Value::from(*it),
                ParamValue::Subset(it) => Value::from(it.clone()),
            };
            object.insert((*name).to_string(), value);
        }
        Value::Object(object)
    }
}

fn validate_value(spec: &ParamSpec, value: &Value) -> Result<ParamValue, ParamError> {
    let invalid = |message: String| ParamError::Invalid {
        name: spec.name,
        message,
    };
    match &spec.kind {
        ParamKind::Integer { min, max } => {
            let expectation = format!("expected an integer from {min} to {max}");
            let Value::Number(number) = value else {
                return Err(invalid(format!("{expectation}, found {}", kind_of(value))));
            };
            let Some(integer) = number.as_i64() else {
                // A u64 above i64::MAX is out of every range here; a float is not an integer.
                return Err(invalid(if number.is_u64() {
                    format!("{expectation}, found {number}")
                } else {
                    format!("{expectation}, found a number with a fraction or exponent")
                }));
            };
            if !(*min..=*max).contains(&integer) {
                return Err(invalid(format!("{expectation}, found {integer}")));
            }
            Ok(ParamValue::Integer(integer))
        }
        ParamKind::Text {
            max_len,
            token_only,
        } => {
            let Value::String(text) = value else {
                return Err(invalid(format!(
                    "expected a string, found {}",
                    kind_of(value)
                )));
            };
            if text.len() > *max_len {
                return Err(invalid(format!(
                    "expected at most {max_len} bytes, found {}",
                    text.len()
                )));
            }
            if text.chars().any(char::is_control) {
                return Err(invalid("expected no control characters".to_string()));
            }
            if *token_only && !is_token(text) {
                return Err(invalid(
                    "expected 1-64 of [A-Za-z0-9._-], not starting with `.` or `-`".to_string(),
                ));
            }
            Ok(ParamValue::Text(text.clone()))
        }
        ParamKind::Bool => match value {
            Value::Bool(it) => Ok(ParamValue::Bool(*it)),
            other => Err(invalid(format!(
                "expected true or false, found {}",
                kind_of(other)
            ))),
        },
        ParamKind::Subset { allowed } => {
            let expectation =
                format!("expected a non-empty list of distinct values of {allowed:?}");
            let Value::Array(items) = value else {
                return Err(invalid(format!("{expectation}, found {}", kind_of(value))));
            };
            if items.is_empty() {
                return Err(invalid(format!("{expectation}, found an empty list")));
            }
            let mut chosen = vec![false; allowed.len()];
            for (idx, item) in items.iter().enumerate() {
                let position = item
                    .as_str()
                    .and_then(|text| allowed.iter().position(|it| *it == text));
                let Some(position) = position else {
                    return Err(invalid(format!(
                        "{expectation}, item {idx} is not one of them"
                    )));
                };
                if chosen[position] {
                    return Err(invalid(format!(
                        "{expectation}, item {idx} repeats {:?}",
                        allowed[position]
                    )));
                }
                chosen[position] = true;
            }
            Ok(ParamValue::Subset(
                allowed
                    .iter()
                    .zip(chosen)
                    .filter(|(_, chosen)| *chosen)
                    .map(|(it, _)| *it)
                    .collect(),
            ))
        }
    }
}

/// The JSON type of a value, for messages that must not quote it.
fn kind_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde_json::json;

    use super::*;

    /// A table with every parameter kind, for the schema tests.
    static KINDS: &[Runbook] = &[Runbook {
        id: "every-kind",
        description: "test runbook with one parameter of each kind",
        safety: SafetyClass::Safe,
        disruptive: false,
        controls: &[],
        params: &[
            ParamSpec {
                name: "count",
                kind: ParamKind::Integer { min: -5, max: 10 },
                required: true,
                description: "an integer",
            },
            ParamSpec {
                name: "unit",
                kind: ParamKind::Text {
                    max_len: 64,
                    token_only: true,
                },
                required: false,
                description: "a token",
            },
            ParamSpec {
                name: "note",
                kind: ParamKind::Text {
                    max_len: 8,
                    token_only: false,
                },
                required: false,
                description: "short text",
            },
            ParamSpec {
                name: "force",
                kind: ParamKind::Bool,
                required: false,
                description: "a flag",
            },
            ParamSpec {
                name: "only",
                kind: ParamKind::Subset {
                    allowed: &["a", "b", "c"],
                },
                required: false,
                description: "a subset",
            },
        ],
        cooldown: Duration::from_secs(1),
        heal: None,
    }];

    fn check(params: Value) -> Result<Value, String> {
        validate_params(&KINDS[0], &params)
            .map(|it| it.to_json())
            .map_err(|it| it.to_string())
    }

    #[test]
    fn registry_is_consistent() {
        for (idx, runbook) in RUNBOOKS.iter().enumerate() {
            assert!(is_token(runbook.id), "{}", runbook.id);
            assert!(
                RUNBOOKS[..idx].iter().all(|it| it.id != runbook.id),
                "duplicate runbook {}",
                runbook.id
            );
            assert_eq!(
                runbook.disruptive,
                runbook.safety != SafetyClass::Safe,
                "{}: disruptive must follow the safety class",
                runbook.id
            );
            assert!(!runbook.cooldown.is_zero(), "{}", runbook.id);
            assert!(!runbook.controls.is_empty(), "{}", runbook.id);
            for (idx, spec) in runbook.params.iter().enumerate() {
                assert!(is_token(spec.name), "{}.{}", runbook.id, spec.name);
                assert!(
                    runbook.params[..idx].iter().all(|it| it.name != spec.name),
                    "{}: duplicate parameter {}",
                    runbook.id,
                    spec.name
                );
            }
        }
        assert!(find(runbook::RUN_CHECKS).is_some());
        assert!(find(runbook::COLLECT_EVIDENCE).is_some());
        assert!(find("reboot").is_none());
    }

    #[test]
    fn run_checks_takes_nothing_or_a_list_of_check_ids() {
        let run_checks = find(runbook::RUN_CHECKS).unwrap();
        assert!(validate_params(run_checks, &json!({})).unwrap().is_empty());
        let only = validate_params(run_checks, &json!({"only": ["firewall", "patching"]})).unwrap();
        // Normalized to registry order, so equal requests have equal evidence.
        assert_eq!(only.subset("only"), Some(&["patching", "firewall"][..]));
        for bad in [
            json!({"only": []}),
            json!({"only": ["nope"]}),
            json!({"only": ["backup", "backup"]}),
            json!({"only": "backup"}),
            json!({"all": true}),
        ] {
            assert!(validate_params(run_checks, &bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn collect_evidence_needs_since_seq() {
        let collect = find(runbook::COLLECT_EVIDENCE).unwrap();
        let ok = validate_params(collect, &json!({"since_seq": 0, "until_seq": 9})).unwrap();
        assert_eq!(ok.integer("since_seq"), Some(0));
        assert_eq!(ok.integer("until_seq"), Some(9));
        assert_eq!(
            validate_params(collect, &json!({})).unwrap_err(),
            ParamError::Missing { name: "since_seq" }
        );
        let err = validate_params(collect, &json!({"since_seq": -1}))
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("params.since_seq: "), "{err}");
    }

    #[test]
    fn schema_errors_name_the_parameter() {
        let cases: &[(Value, Result<Value, &str>)] = &[
            (json!({"count": 3}), Ok(json!({"count": 3}))),
            (
                json!({"count": 10, "unit": "sshd.service", "note": "ok", "force": false, "only": ["c", "a"]}),
                Ok(
                    json!({"count": 10, "unit": "sshd.service", "note": "ok", "force": false, "only": ["a", "c"]}),
                ),
            ),
            (json!([]), Err("params: expected a JSON object")),
            (json!(null), Err("params: expected a JSON object")),
            (
                json!({}),
                Err("params.count: required parameter is missing"),
            ),
            (
                json!({"count": 1, "extra": 1}),
                Err("params.extra: unknown parameter"),
            ),
            (
                json!({"count": 1, "not a token": 1}),
                Err("params: unknown parameter (its name is not a token)"),
            ),
            (
                json!({"count": "1"}),
                Err("params.count: expected an integer from -5 to 10, found a string"),
            ),
            (
                json!({"count": 1.5}),
                Err(
                    "params.count: expected an integer from -5 to 10, found a number with a fraction or exponent",
                ),
            ),
            (
                json!({"count": 11}),
                Err("params.count: expected an integer from -5 to 10, found 11"),
            ),
            (
                json!({"count": -6}),
                Err("params.count: expected an integer from -5 to 10, found -6"),
            ),
            (
                json!({"count": u64::MAX}),
                Err("params.count: expected an integer from -5 to 10, found 18446744073709551615"),
            ),
            (
                json!({"count": 1, "unit": "../etc"}),
                Err("params.unit: expected 1-64 of [A-Za-z0-9._-], not starting with `.` or `-`"),
            ),
            (
                json!({"count": 1, "note": "123456789"}),
                Err("params.note: expected at most 8 bytes, found 9"),
            ),
            (
                json!({"count": 1, "note": "a\nb"}),
                Err("params.note: expected no control characters"),
            ),
            (
                json!({"count": 1, "force": "yes"}),
                Err("params.force: expected true or false, found a string"),
            ),
            (
                json!({"count": 1, "only": ["a", "z"]}),
                Err(
                    "params.only: expected a non-empty list of distinct values of [\"a\", \"b\", \"c\"], item 1 is not one of them",
                ),
            ),
        ];
        for (params, expected) in cases {
            let expected = expected.clone().map_err(str::to_string);
            assert_eq!(check(params.clone()), expected, "{params}");
        }
    }

    #[test]
    fn errors_never_quote_sent_text() {
        let secret = "Jane Doe 123-45-6789";
        for params in [
            json!({"count": secret}),
            json!({"count": 1, "note": secret}),
            json!({"count": 1, "unit": secret}),
            json!({"count": 1, "force": secret}),
            json!({"count": 1, "only": [secret]}),
            json!({"count": 1, (secret): 1}),
        ] {
            let err = check(params).unwrap_err();
            assert!(!err.contains("Jane"), "{err}");
        }
    }

    fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            any::<f64>().prop_map(|it| serde_json::Number::from_f64(it)
                .map(Value::Number)
                .unwrap_or(Value::Null)),
            "[a-c]|count|unit|note|force|only|since_seq|until_seq|\\PC{0,12}".prop_map(Value::from),
        ];
        leaf.prop_recursive(3, 24, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(Value::from),
                prop::collection::btree_map(
                    "count|unit|note|force|only|since_seq|until_seq|\\PC{0,8}",
                    inner,
                    0..6
                )
                .prop_map(|it| Value::Object(it.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #[test]
        fn validate_params_never_panics_and_accepts_only_the_schema(params in json_value()) {
            for runbook in RUNBOOKS.iter().chain(KINDS) {
                let Ok(valid) = validate_params(runbook, &params) else {
                    continue;
                };
                // Whatever passed re-validates to itself: only known keys, only valid values.
                let json = valid.to_json();
                prop_assert_eq!(validate_params(runbook, &json).unwrap(), valid);
                for spec in runbook.params.iter().filter(|it| it.required) {
                    prop_assert!(json.get(spec.name).is_some());
                }
            }
        }
    }
}
