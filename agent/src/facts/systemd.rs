//! Parsers of systemd tool output: the `Key=Value` blocks of `systemctl show` and the
//! timestamps systemd prints with `--timestamp=utc`.
//!
//! This module only turns text that a caller already read (through [`Host::run`], live or
//! recorded) into values; it never runs systemctl or any other program itself, so every parser
//! here can be tested and fuzzed on text alone. The parsers are general: what a check requires
//! of a unit's properties (a `LoadState=`, trimmed values) is validated in the check, except
//! [`parse_show_units`], the one validation that several checks share. [`units_json`] renders
//! the parsed properties back as evidence, unchanged.
//!
//! [`Host::run`]: crate::facts::Host::run

use jiff::Timestamp;
use jiff::civil::{Date, DateTime, Time};
use jiff::tz::TimeZone;
use serde_json::{Value, json};

use crate::facts::FactError;

/// The properties of one unit, in the order `systemctl show` printed them.
pub type Properties = Vec<(String, String)>;

/// Parses `systemctl show` output: `Key=Value` lines, one block per unit, blocks separated by
/// blank lines. Never fails: a line without `=` is skipped, and values are kept as printed
/// (untrimmed, possibly empty), so each caller decides what it accepts.
pub fn parse_show(text: &str) -> Vec<Properties> {
    let mut res = Vec::new();
    let mut current: Properties = Vec::new();
    for line in text.lines() {
        if line.trim().is_empty() {
            if !current.is_empty() {
                res.push(std::mem::take(&mut current));
            }
            continue;
        }
        if let Some((key, value)) = line.split_once('=') {
            current.push((key.to_string(), value.to_string()));
        }
    }
    if !current.is_empty() {
        res.push(current);
    }
    res
}

/// Parses `systemctl show <unit>… --property=Id,…` for several units and requires an `Id=` in
/// every block: the blocks come in no promised order, so the `Id` is what tells them apart.
pub fn parse_show_units(text: &str) -> Result<Vec<Properties>, FactError> {
    let units = parse_show(text);
    if units.is_empty()
        || units
            .iter()
            .any(|it| property(it, "Id").is_none_or(str::is_empty))
    {
        return Err(FactError::parse(
            "systemctl show output",
            "expected one block with Id= per unit",
        ));
    }
    Ok(units)
}

/// The value of `key` in one unit's properties, `None` when the block has no such line. The
/// first line wins; systemctl prints each property once. systemctl prints an unset property as
/// `Key=`, so callers that do not need to tell "absent" from "unset" read `None` as `""`.
pub fn property<'a>(unit: &'a Properties, key: &str) -> Option<&'a str> {
    unit.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
}

/// Parses systemd's `Day YYYY-MM-DD HH:MM:SS[.UUUUUU] UTC` (its `--timestamp=utc` format).
/// Only UTC is accepted: a zone abbreviation of another zone cannot be resolved reliably.
pub fn parse_utc_timestamp(text: &str) -> Result<Timestamp, String> {
    let parts: Vec<&str> = text.split_whitespace().collect();
    let [_weekday, date, time, zone] = parts.as_slice() else {
        return Err(format!(
            "timestamp {text:?} is not `Day YYYY-MM-DD HH:MM:SS UTC`"
        ));
    };
    if *zone != "UTC" {
        return Err(format!("timestamp {text:?} is not in UTC"));
    }
    let date: Date = date
        .parse()
        .map_err(|err| format!("timestamp {text:?}: {err}"))?;
    let time: Time = time
        .parse()
        .map_err(|err| format!("timestamp {text:?}: {err}"))?;
    DateTime::from_parts(date, time)
        .to_zoned_datetime(TimeZone::UTC)
        .map(|it| it.timestamp())
        .map_err(|err| format!("timestamp {text:?}: {err}"))
}

/// Units' properties as JSON objects keyed as systemd spells them, for a finding's observed
/// facts (the raw text is the evidence, so nothing is renamed or dropped).
pub fn units_json(units: &[Properties]) -> Value {
    Value::Array(
        units
            .iter()
            .map(|unit| Value::Object(unit.iter().map(|(k, v)| (k.clone(), json!(v))).collect()))
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn show_splits_blocks_and_keeps_values_as_printed() {
        let units = parse_show(
            "Id=a.service\nActiveState=active\nResult=\n\n  \nId=b.timer\nDescription=x=y\nnot a property\n",
        );
        assert_eq!(units.len(), 2);
        assert_eq!(property(&units[0], "Id"), Some("a.service"));
        assert_eq!(property(&units[0], "Result"), Some(""));
        assert_eq!(property(&units[0], "LoadState"), None);
        // Only the first `=` separates key and value.
        assert_eq!(property(&units[1], "Description"), Some("x=y"));
        assert!(parse_show("").is_empty());
        assert!(parse_show("\n\n").is_empty());
    }

    #[test]
    fn units_need_an_id_each() {
        assert_eq!(
            parse_show_units("Id=a.service\n\nId=b.timer\n")
                .unwrap()
                .len(),
            2
        );
        for bad in ["", "ActiveState=active\n", "Id=a.service\n\nId=\n"] {
            assert!(parse_show_units(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn utc_timestamps_parse() {
        assert_eq!(
            parse_utc_timestamp("Thu 2026-11-26 04:40:12 UTC"),
            Ok("2026-11-26T04:40:12Z".parse().unwrap())
        );
        assert_eq!(
            parse_utc_timestamp("Thu 2026-11-26 04:40:12.123456 UTC"),
            Ok("2026-11-26T04:40:12.123456Z".parse().unwrap())
        );
        assert!(parse_utc_timestamp("Thu 2026-11-26 04:40:12 CET").is_err());
        assert!(parse_utc_timestamp("2026-11-26 04:40:12").is_err());
        assert!(parse_utc_timestamp("Thu 2026-02-30 04:40:12 UTC").is_err());
        assert!(parse_utc_timestamp("n/a").is_err());
    }

    #[test]
    fn units_render_as_objects() {
        let units = parse_show("Id=a.service\nResult=success\n");
        assert_eq!(
            units_json(&units),
            json!([{"Id": "a.service", "Result": "success"}])
        );
    }

    proptest! {
        #[test]
        fn parsers_never_panic(text in "\\PC{0,300}", bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            for input in [text.clone(), String::from_utf8_lossy(&bytes).into_owned()] {
                let units = parse_show(&input);
                // Every block has a property, and blank-line separators never become one.
                prop_assert!(units.iter().all(|it| !it.is_empty()));
                if let Ok(units) = parse_show_units(&input) {
                    prop_assert!(units.iter().all(|it| property(it, "Id").is_some_and(|id| !id.is_empty())));
                }
                let _ = units_json(&units);
                let _ = parse_utc_timestamp(&input);
            }
        }
    }
}
