//! Tests of the order pipeline: one case per refusal code and per guardrail, through one
//! helper (`check`), plus the stateful cases (replay, restart, cooldown, budget, deferral),
//! the evidence an admission leaves, and a property that no envelope makes `admit` panic.

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use ed25519_dalek::SigningKey;
use jiff::tz::TimeZone;
use jiff::{SignedDuration, Timestamp};
use msp_compliance_protocol::dsse::{self, Envelope, Signature};
use msp_compliance_protocol::evidence::RecordKind;
use msp_compliance_protocol::finding::SafetyClass;
use msp_compliance_protocol::order::{ORDER_PAYLOAD_TYPE, Order, Outcome, RefusalCode};
use proptest::prelude::*;
use serde_json::{Value, json};

use super::*;
use crate::config::OrdersConfig;
use crate::orders::memory::{OrderMemory, memory_path};
use crate::orders::record::{self, Finished};
use crate::orders::window::MaintenanceWindow;
use crate::phi::Scrubber;
use crate::runbooks::{ParamKind, ParamSpec, Runbook};

/// A safe and a disruptive runbook: no real disruptive runbook exists yet.
static TEST_RUNBOOKS: &[Runbook] = &[
    Runbook {
        id: "probe",
        description: "a safe test action",
        safety: SafetyClass::Safe,
        disruptive: false,
        controls: &["164.312(b)"],
        params: &[ParamSpec {
            name: "count",
            kind: ParamKind::Integer { min: 0, max: 10 },
            required: false,
            description: "how many",
        }],
        cooldown: Duration::from_secs(60),
        heal: None,
    },
    Runbook {
        id: "restart-unit",
        description: "a disruptive test action",
        safety: SafetyClass::Disruptive,
        disruptive: true,
        controls: &["164.308(a)(7)(ii)(B)"],
        params: &[ParamSpec {
            name: "unit",
            kind: ParamKind::Text {
                max_len: 64,
                token_only: true,
            },
            required: true,
            description: "the unit",
        }],
        cooldown: Duration::from_secs(600),
        heal: None,
    },
];

const SITE: &str = "clinic-a";
const HOST: &str = "nixos-1";

fn ts(text: &str) -> Timestamp {
    text.parse().unwrap()
}

fn pinned() -> SigningKey {
    SigningKey::from_bytes(&[1; 32])
}

fn stranger() -> SigningKey {
    SigningKey::from_bytes(&[2; 32])
}

fn orders_config() -> OrdersConfig {
    OrdersConfig {
        order_public_key_files: Vec::new(),
        max_ttl: Duration::from_secs(900),
        max_clock_skew: Duration::from_secs(120),
        dry_run: false,
        maintenance_window: None,
        timezone: TimeZone::UTC,
        max_actions_per_hour: 6,
        cooldowns: BTreeMap::new(),
    }
}

fn guardrails(orders: &OrdersConfig) -> Guardrails {
    Guardrails::new(
        SITE,
        HOST,
        orders,
        vec![pinned().verifying_key()],
        TEST_RUNBOOKS,
    )
    .unwrap()
}

fn trusted_clock() -> ClockState {
    ClockState {
        synchronized: Some(true),
        server_offset: Some(SignedDuration::from_secs(3)),
    }
}

/// Order number `n` (distinct id and nonce), issued a minute before `now`, valid for ten.
fn order(n: u32, action: &str, params: Value, now: Timestamp) -> Order {
    Order {
        v: 1,
        order_id: format!("o-{n}"),
        nonce: format!("{n:032x}"),
        site_id: SITE.into(),
        host_id: HOST.into(),
        action: action.into(),
        params,
        issued_at: now - SignedDuration::from_mins(1),
        expires_at: now + SignedDuration::from_mins(9),
        disruptive: false,
        dry_run: false,
    }
}

fn sign(order: &Order) -> Envelope {
    order.sign(&pinned()).unwrap()
}

/// What `admit` decided, without the payloads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Verdict {
    Execute,
    DryRun,
    Refused(RefusalCode),
    Deferred(RefusalCode),
    AlreadyDeferred,
}

fn verdict(admission: &Admission) -> Verdict {
    match admission {
        Admission::Execute(_) => Verdict::Execute,
        Admission::DryRun(_) => Verdict::DryRun,
        Admission::Refused(it) => Verdict::Refused(it.code),
        Admission::Deferred(it) => Verdict::Deferred(it.code),
        Admission::AlreadyDeferred(_) => Verdict::AlreadyDeferred,
    }
}

/// A memory in a temporary directory, reopened at will (a restart).
struct Harness {
    dir: tempfile::TempDir,
    memory: OrderMemory,
}

impl Harness {
    fn new() -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let memory = OrderMemory::open(&memory_path(dir.path())).unwrap();
        Harness { dir, memory }
    }

    fn restart(&mut self) {
        self.memory = OrderMemory::open(&memory_path(self.dir.path())).unwrap();
    }

    fn admit_with(
        &mut self,
        envelope: &Envelope,
        guardrails: &Guardrails,
        clock: &ClockState,
        now: Timestamp,
    ) -> Admission {
        admit(envelope, guardrails, clock, &mut self.memory, now).unwrap()
    }

    fn verdict(&mut self, envelope: &Envelope, guardrails: &Guardrails, now: Timestamp) -> Verdict {
        verdict(&self.admit_with(envelope, guardrails, &trusted_clock(), now))
    }
}

/// One single-order case: the order, the envelope made of it, the configuration, the clock.
struct Case {
    order: Order,
    orders: OrdersConfig,
    clock: ClockState,
    now: Timestamp,
    /// Builds the envelope; signs with the pinned key unless a case says otherwise.
    envelope: fn(&Order) -> Envelope,
}

fn base_case() -> Case {
    let now = ts("2026-05-04T12:00:00Z");
    Case {
        order: order(1, "probe", json!({}), now),
        orders: orders_config(),
        clock: trusted_clock(),
        now,
        envelope: sign,
    }
}

/// Runs a case on a fresh memory.
fn check(case: &Case) -> Verdict {
    let mut harness = Harness::new();
    let envelope = (case.envelope)(&case.order);
    verdict(&harness.admit_with(&envelope, &guardrails(&case.orders), &case.clock, case.now))
}

/// Moves the case to `now`, keeping the order issued a minute before and valid for ten.
fn at(case: &mut Case, now: &str) {
    case.now = ts(now);
    case.order.issued_at = case.now - SignedDuration::from_mins(1);
    case.order.expires_at = case.now + SignedDuration::from_mins(9);
}

fn disruptive(case: &mut Case) {
    case.order.action = "restart-unit".into();
    case.order.params = json!({"unit": "sshd.service"});
}

fn window(case: &mut Case, window: &str, zone: &str) {
    case.orders.maintenance_window = Some(MaintenanceWindow::parse(window).unwrap());
    case.orders.timezone = TimeZone::get(zone).unwrap();
}

#[test]
fn every_guardrail_has_its_code() {
    use RefusalCode::*;
    use Verdict::{Deferred, DryRun, Execute, Refused};
    type Setup = fn(&mut Case);
    let cases: &[(&str, Setup, Verdict)] = &[
        ("valid order", |_| {}, Execute),
        // Signatures.
        (
            "forged signature",
            |case| {
                case.envelope = |order| {
                    let mut envelope = order.sign(&stranger()).unwrap();
                    envelope.signatures[0].keyid = dsse::keyid(&pinned().verifying_key());
                    envelope
                }
            },
            Refused(BadSignature),
        ),
        (
            "signature by an unknown key",
            |case| case.envelope = |order| order.sign(&stranger()).unwrap(),
            Refused(UnknownKey),
        ),
        (
            "payload altered after signing",
            |case| {
                case.envelope = |order| {
                    let mut envelope = sign(order);
                    let mut altered = order.clone();
                    altered.params = json!({"count": 9});
                    envelope.payload =
                        STANDARD.encode(msp_compliance_protocol::jcs::to_vec_of(&altered).unwrap());
                    envelope
                }
            },
            Refused(BadSignature),
        ),
        (
            "signature of the wrong length by a pinned key",
            |case| {
                case.envelope = |order| {
                    let mut envelope = sign(order);
                    envelope.signatures[0].sig = STANDARD.encode([0u8; 12]);
                    envelope
                }
            },
            Refused(BadSignature),
        ),
        (
            "no signature",
            |case| {
                case.envelope = |order| {
                    let mut envelope = sign(order);
                    envelope.signatures.clear();
                    envelope
                }
            },
            Refused(UnknownKey),
        ),
        (
            "wrong payload type",
            |case| {
                case.envelope = |order| {
                    let payload = msp_compliance_protocol::jcs::to_vec_of(order).unwrap();
                    dsse::sign("application/json", &payload, &pinned())
                }
            },
            Refused(Malformed),
        ),
        (
            "payload not JSON",
            |case| case.envelope = |_| dsse::sign(ORDER_PAYLOAD_TYPE, b"not json {", &pinned()),
            Refused(Malformed),
        ),
        (
            "payload JSON but not an order",
            |case| {
                case.envelope =
                    |_| dsse::sign(ORDER_PAYLOAD_TYPE, br#"{"order_id":"o-1"}"#, &pinned())
            },
            Refused(Malformed),
        ),
        (
            "payload with trailing bytes",
            |case| {
                case.envelope = |order| {
                    let mut payload = msp_compliance_protocol::jcs::to_vec_of(order).unwrap();
                    payload.extend_from_slice(b" {}");
                    dsse::sign(ORDER_PAYLOAD_TYPE, &payload, &pinned())
                }
            },
            Refused(Malformed),
        ),
        (
            "payload not base64",
            |case| {
                case.envelope = |order| {
                    let mut envelope = sign(order);
                    envelope.payload = "%%%".into();
                    envelope
                }
            },
            Refused(Malformed),
        ),
        (
            "payload too large",
            |case| {
                case.envelope = |order| {
                    let mut envelope = sign(order);
                    envelope.payload = "A".repeat(MAX_ORDER_PAYLOAD_CHARS + 4);
                    envelope
                }
            },
            Refused(Malformed),
        ),
        (
            "too many signatures",
            |case| {
                case.envelope = |order| {
                    let mut envelope = sign(order);
                    let extra = envelope.signatures[0].clone();
                    envelope.signatures = vec![extra; MAX_ORDER_SIGNATURES + 1];
                    envelope
                }
            },
            Refused(Malformed),
        ),
        (
            "field rule broken (nonce)",
            |case| case.order.nonce = "abc".into(),
            Refused(Malformed),
        ),
        (
            "field rule broken (version)",
            |case| case.order.v = 2,
            Refused(Malformed),
        ),
        // Target.
        (
            "wrong site",
            |case| case.order.site_id = "clinic-b".into(),
            Refused(WrongSite),
        ),
        (
            "wrong host",
            |case| case.order.host_id = "nixos-2".into(),
            Refused(WrongHost),
        ),
        // Time.
        (
            "expired",
            |case| {
                case.order.issued_at = case.now - SignedDuration::from_mins(10);
                case.order.expires_at = case.now - SignedDuration::from_secs(1);
            },
            Refused(Expired),
        ),
        (
            "issued in the future beyond the skew",
            |case| {
                case.order.issued_at = case.now + SignedDuration::from_secs(121);
                case.order.expires_at = case.now + SignedDuration::from_mins(10);
            },
            Refused(FutureDated),
        ),
        (
            "issued in the future within the skew",
            |case| {
                case.order.issued_at = case.now + SignedDuration::from_secs(119);
                case.order.expires_at = case.now + SignedDuration::from_mins(10);
            },
            Execute,
        ),
        (
            "ttl longer than allowed",
            |case| case.order.expires_at = case.order.issued_at + SignedDuration::from_secs(901),
            Refused(TtlTooLong),
        ),
        (
            "ttl exactly the maximum",
            |case| case.order.expires_at = case.order.issued_at + SignedDuration::from_secs(900),
            Execute,
        ),
        // Whitelist and schema.
        (
            "action not whitelisted",
            |case| case.order.action = "reboot".into(),
            Refused(ActionNotAllowed),
        ),
        (
            "params: unknown key",
            |case| case.order.params = json!({"count": 1, "force": true}),
            Refused(BadParams),
        ),
        (
            "params: wrong type",
            |case| case.order.params = json!({"count": "1"}),
            Refused(BadParams),
        ),
        (
            "params: out of range",
            |case| case.order.params = json!({"count": 11}),
            Refused(BadParams),
        ),
        (
            "params: required missing",
            |case| {
                disruptive(case);
                case.order.params = json!({});
            },
            Refused(BadParams),
        ),
        // Maintenance window.
        (
            "disruptive, no window configured",
            disruptive,
            Refused(OutsideWindow),
        ),
        (
            "disruptive, outside a window across midnight",
            |case| {
                disruptive(case);
                window(case, "22:00-04:00", "UTC");
            },
            Deferred(OutsideWindow),
        ),
        (
            "disruptive, inside a window across midnight, before midnight",
            |case| {
                disruptive(case);
                window(case, "22:00-04:00", "UTC");
                at(case, "2026-05-04T23:30:00Z");
            },
            Execute,
        ),
        (
            "disruptive, inside a window across midnight, after midnight",
            |case| {
                disruptive(case);
                window(case, "22:00-04:00", "UTC");
                at(case, "2026-05-05T03:59:00Z");
            },
            Execute,
        ),
        (
            "disruptive, window end is exclusive",
            |case| {
                disruptive(case);
                window(case, "22:00-04:00", "UTC");
                at(case, "2026-05-05T04:00:00Z");
            },
            Deferred(OutsideWindow),
        ),
        (
            "safe action flagged disruptive by the order, outside the window",
            |case| {
                case.order.disruptive = true;
                window(case, "22:00-04:00", "UTC");
            },
            Deferred(OutsideWindow),
        ),
        (
            "safe action, no window configured",
            |case| case.orders.maintenance_window = None,
            Execute,
        ),
        (
            "New York summer: 02:30Z is 22:30 EDT, inside",
            |case| {
                disruptive(case);
                window(case, "22:00-04:00", "America/New_York");
                at(case, "2026-07-15T02:30:00Z");
            },
            Execute,
        ),
        (
            "New York winter: 02:30Z is 21:30 EST, outside",
            |case| {
                disruptive(case);
                window(case, "22:00-04:00", "America/New_York");
                at(case, "2026-01-15T02:30:00Z");
            },
            Deferred(OutsideWindow),
        ),
        (
            "New York fall-back day: the second 01:30 (EST) is inside",
            |case| {
                disruptive(case);
                window(case, "01:00-03:00", "America/New_York");
                at(case, "2026-11-01T06:30:00Z");
            },
            Execute,
        ),
        (
            "New York spring-forward day: 07:30Z is 03:30 EDT, outside",
            |case| {
                disruptive(case);
                window(case, "01:00-03:00", "America/New_York");
                at(case, "2026-03-08T07:30:00Z");
            },
            Deferred(OutsideWindow),
        ),
        // Clock trust (disruptive, inside the window).
        (
            "clock: time sync lost",
            |case| {
                disruptive(case);
                window(case, "00:00-23:59", "UTC");
                case.clock.synchronized = Some(false);
            },
            Refused(ClockUntrusted),
        ),
        (
            "clock: sync state unknown",
            |case| {
                disruptive(case);
                window(case, "00:00-23:59", "UTC");
                case.clock.synchronized = None;
            },
            Refused(ClockUntrusted),
        ),
        (
            "clock: ahead of the server beyond the skew",
            |case| {
                disruptive(case);
                window(case, "00:00-23:59", "UTC");
                case.clock.server_offset = Some(SignedDuration::from_secs(121));
            },
            Refused(ClockUntrusted),
        ),
        (
            "clock: behind the server beyond the skew",
            |case| {
                disruptive(case);
                window(case, "00:00-23:59", "UTC");
                case.clock.server_offset = Some(SignedDuration::from_secs(-121));
            },
            Refused(ClockUntrusted),
        ),
        (
            "clock: extreme offset",
            |case| {
                disruptive(case);
                window(case, "00:00-23:59", "UTC");
                case.clock.server_offset = Some(SignedDuration::MIN);
            },
            Refused(ClockUntrusted),
        ),
        (
            "clock: server time unknown",
            |case| {
                disruptive(case);
                window(case, "00:00-23:59", "UTC");
                case.clock.server_offset = None;
            },
            Refused(ClockUntrusted),
        ),
        (
            "clock: within the skew",
            |case| {
                disruptive(case);
                window(case, "00:00-23:59", "UTC");
                case.clock.server_offset = Some(SignedDuration::from_secs(-120));
            },
            Execute,
        ),
        (
            "clock: untrusted does not matter to a safe action",
            |case| {
                case.clock = ClockState {
                    synchronized: None,
                    server_offset: None,
                }
            },
            Execute,
        ),
        // Dry run.
        (
            "dry run by the order",
            |case| case.order.dry_run = true,
            DryRun,
        ),
        (
            "dry run by the configuration",
            |case| case.orders.dry_run = true,
            DryRun,
        ),
        (
            "dry run still runs every guardrail",
            |case| {
                case.order.dry_run = true;
                case.order.params = json!({"count": 11});
            },
            Refused(BadParams),
        ),
        (
            "dry run of a disruptive action is still deferred",
            |case| {
                case.orders.dry_run = true;
                disruptive(case);
                window(case, "22:00-04:00", "UTC");
            },
            Deferred(OutsideWindow),
        ),
    ];
    let mut failures = Vec::new();
    for (name, setup, expected) in cases {
        let mut case = base_case();
        setup(&mut case);
        let found = check(&case);
        if found != *expected {
            failures.push(format!("{name}: expected {expected:?}, found {found:?}"));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

#[test]
fn the_whitelist_is_the_runbook_registry() {
    let now = ts("2026-05-04T12:00:00Z");
    let guardrails = Guardrails::new(
        SITE,
        HOST,
        &orders_config(),
        vec![pinned().verifying_key()],
        crate::runbooks::RUNBOOKS,
    )
    .unwrap();
    let mut harness = Harness::new();
    let run_checks = order(1, "run-checks", json!({"only": ["firewall"]}), now);
    let admission = harness.admit_with(&sign(&run_checks), &guardrails, &trusted_clock(), now);
    let Admission::Execute(approved) = admission else {
        panic!("expected execute, found {admission:?}");
    };
    assert_eq!(approved.runbook().id, "run-checks");
    assert_eq!(approved.params().subset("only"), Some(&["firewall"][..]));
    assert!(!approved.is_disruptive());

    let collect = order(2, "collect-evidence", json!({"until_seq": 3}), now);
    let admission = harness.admit_with(&sign(&collect), &guardrails, &trusted_clock(), now);
    let Admission::Refused(refusal) = admission else {
        panic!("expected a refusal, found {admission:?}");
    };
    assert_eq!(refusal.code, RefusalCode::BadParams);
    assert_eq!(
        refusal.detail,
        "params.since_seq: required parameter is missing"
    );
}

#[test]
fn replays_are_refused_also_after_a_restart() {
    let now = ts("2026-05-04T12:00:00Z");
    let guardrails = guardrails(&orders_config());
    let mut harness = Harness::new();
    let first = order(1, "probe", json!({}), now);
    assert_eq!(
        harness.verdict(&sign(&first), &guardrails, now),
        Verdict::Execute
    );
    let replayed = Verdict::Refused(RefusalCode::Replayed);
    let later = now + SignedDuration::from_mins(2);
    // The same envelope.
    assert_eq!(harness.verdict(&sign(&first), &guardrails, later), replayed);
    // The same id, another nonce.
    let mut same_id = order(2, "probe", json!({}), now);
    same_id.order_id = first.order_id.clone();
    assert_eq!(
        harness.verdict(&sign(&same_id), &guardrails, later),
        replayed
    );
    // The same nonce, another id.
    let mut same_nonce = order(3, "probe", json!({}), now);
    same_nonce.nonce = first.nonce.clone();
    let admission = harness.admit_with(&sign(&same_nonce), &guardrails, &trusted_clock(), later);
    let Admission::Refused(refusal) = &admission else {
        panic!("expected a refusal, found {admission:?}");
    };
    assert_eq!(refusal.code, RefusalCode::Replayed);
    assert_eq!(refusal.detail, "nonce was seen before, in order o-1");
    // A restart between admission and action (a crash): still a replay.
    harness.restart();
    assert_eq!(harness.verdict(&sign(&first), &guardrails, later), replayed);
    // An order refused by a later guardrail is remembered too: it cannot run by replay later.
    let refused = order(4, "reboot", json!({}), now);
    assert_eq!(
        harness.verdict(&sign(&refused), &guardrails, now),
        Verdict::Refused(RefusalCode::ActionNotAllowed)
    );
    harness.restart();
    assert_eq!(
        harness.verdict(&sign(&refused), &guardrails, later),
        replayed
    );
    // Once past expiry plus skew, the memory may forget: the order is expired anyway.
    let after_expiry = first.expires_at + SignedDuration::from_secs(121);
    assert!(harness.memory.prune(after_expiry).unwrap() >= 2);
    assert_eq!(
        harness.verdict(&sign(&first), &guardrails, after_expiry),
        Verdict::Refused(RefusalCode::Expired)
    );
}

#[test]
fn a_future_dated_order_cannot_run_later_by_replay() {
    let now = ts("2026-05-04T12:00:00Z");
    let guardrails = guardrails(&orders_config());
    let mut harness = Harness::new();
    let mut early = order(1, "probe", json!({}), now);
    early.issued_at = now + SignedDuration::from_mins(5);
    early.expires_at = now + SignedDuration::from_mins(15);
    assert_eq!(
        harness.verdict(&sign(&early), &guardrails, now),
        Verdict::Refused(RefusalCode::FutureDated)
    );
    let in_time = now + SignedDuration::from_mins(5);
    assert_eq!(
        harness.verdict(&sign(&early), &guardrails, in_time),
        Verdict::Refused(RefusalCode::Replayed)
    );
}

#[test]
fn a_clock_jump_forward_and_back_cannot_replay_a_forgotten_order() {
    // The memory forgets ids after expiry plus skew. A clock that jumped hours ahead prunes
    // an order that is still valid by the real time; once the clock is back, the order must
    // still be refused, by the memory's horizon.
    let now = ts("2026-05-04T12:00:00Z");
    let guardrails = guardrails(&orders_config());
    let mut harness = Harness::new();
    let first = order(1, "probe", json!({}), now);
    assert_eq!(
        harness.verdict(&sign(&first), &guardrails, now),
        Verdict::Execute
    );
    let jumped = now + SignedDuration::from_hours(5);
    assert!(
        harness.memory.prune(jumped).unwrap() >= 1,
        "the id was pruned"
    );
    let back = now + SignedDuration::from_mins(2);
    assert_eq!(
        harness.verdict(&sign(&first), &guardrails, back),
        Verdict::Refused(RefusalCode::Replayed)
    );
    // A new order issued after the horizon is judged normally.
    let fresh = order(2, "probe", json!({}), jumped);
    assert_eq!(
        harness.verdict(&sign(&fresh), &guardrails, jumped),
        Verdict::Execute
    );
}

#[test]
fn cooldowns_hold_per_action_and_across_restarts() {
    let now = ts("2026-05-04T12:00:00Z");
    let mut orders = orders_config();
    orders
        .cooldowns
        .insert("probe".into(), Duration::from_secs(300));
    let guardrails = guardrails(&orders);
    let mut harness = Harness::new();
    let at = |secs: i64| now + SignedDuration::from_secs(secs);
    assert_eq!(
        harness.verdict(&sign(&order(1, "probe", json!({}), now)), &guardrails, now),
        Verdict::Execute
    );
    harness.restart();
    let admission = harness.admit_with(
        &sign(&order(2, "probe", json!({}), at(299))),
        &guardrails,
        &trusted_clock(),
        at(299),
    );
    let Admission::Refused(refusal) = &admission else {
        panic!("expected a refusal, found {admission:?}");
    };
    assert_eq!(refusal.code, RefusalCode::Cooldown);
    assert!(
        refusal.detail.contains("cooldown of 300 s"),
        "{}",
        refusal.detail
    );
    // A dry run runs the whole pipeline, cooldown included.
    let mut dry = order(3, "probe", json!({}), at(10));
    dry.dry_run = true;
    assert_eq!(
        harness.verdict(&sign(&dry), &guardrails, at(10)),
        Verdict::Refused(RefusalCode::Cooldown)
    );
    // Another action has its own cooldown.
    let mut other = order(4, "restart-unit", json!({"unit": "a.service"}), at(20));
    other.dry_run = false;
    let mut windowed = orders.clone();
    windowed.maintenance_window = Some(MaintenanceWindow::parse("00:00-23:59").unwrap());
    assert_eq!(
        harness.verdict(&sign(&other), &self::guardrails(&windowed), at(20)),
        Verdict::Execute
    );
    assert_eq!(
        harness.verdict(
            &sign(&order(5, "probe", json!({}), at(300))),
            &guardrails,
            at(300)
        ),
        Verdict::Execute
    );
}

#[test]
fn the_hourly_budget_counts_every_executed_action() {
    let now = ts("2026-05-04T12:00:00Z");
    let mut orders = orders_config();
    orders.max_actions_per_hour = 2;
    orders
        .cooldowns
        .insert("probe".into(), Duration::from_secs(1));
    let guardrails = guardrails(&orders);
    let mut harness = Harness::new();
    let at = |secs: i64| now + SignedDuration::from_secs(secs);
    for (n, secs, expected) in [
        (1, 0, Verdict::Execute),
        (2, 10, Verdict::Execute),
        (3, 20, Verdict::Refused(RefusalCode::BudgetExceeded)),
        (4, 3_599, Verdict::Refused(RefusalCode::BudgetExceeded)),
        // The first execution left the rolling hour.
        (5, 3_600, Verdict::Execute),
    ] {
        let found = harness.verdict(
            &sign(&order(n, "probe", json!({}), at(secs))),
            &guardrails,
            at(secs),
        );
        assert_eq!(found, expected, "order {n} at +{secs} s");
    }
}

#[test]
fn dry_runs_consume_no_cooldown_or_budget() {
    let now = ts("2026-05-04T12:00:00Z");
    let mut orders = orders_config();
    orders.max_actions_per_hour = 1;
    let mut harness = Harness::new();
    let later = now + SignedDuration::from_secs(1);
    // Per order.
    let mut dry = order(1, "probe", json!({}), now);
    dry.dry_run = true;
    assert_eq!(
        harness.verdict(&sign(&dry), &guardrails(&orders), now),
        Verdict::DryRun
    );
    // Globally.
    let mut dry_config = orders.clone();
    dry_config.dry_run = true;
    assert_eq!(
        harness.verdict(
            &sign(&order(2, "probe", json!({}), now)),
            &guardrails(&dry_config),
            now
        ),
        Verdict::DryRun
    );
    assert_eq!(
        harness
            .memory
            .executed_since(now - SignedDuration::from_hours(1))
            .unwrap(),
        0
    );
    // Neither consumed the cooldown nor the budget of one.
    assert_eq!(
        harness.verdict(
            &sign(&order(3, "probe", json!({}), later)),
            &guardrails(&orders),
            later
        ),
        Verdict::Execute
    );
    assert_eq!(
        harness
            .memory
            .executed_since(now - SignedDuration::from_hours(1))
            .unwrap(),
        1
    );
}

#[test]
fn a_deferred_order_sent_again_is_recorded_once_and_runs_in_its_window() {
    let now = ts("2026-05-04T21:55:00Z");
    let mut orders = orders_config();
    orders.maintenance_window = Some(MaintenanceWindow::parse("22:00-04:00").unwrap());
    let guardrails = guardrails(&orders);
    let mut harness = Harness::new();
    let restart = order(1, "restart-unit", json!({"unit": "a.service"}), now);
    let envelope = sign(&restart);
    assert_eq!(
        harness.verdict(&envelope, &guardrails, now),
        Verdict::Deferred(RefusalCode::OutsideWindow)
    );
    let soon = now + SignedDuration::from_mins(3);
    assert_eq!(
        harness.verdict(&envelope, &guardrails, soon),
        Verdict::AlreadyDeferred
    );
    // Another order reusing the deferred order's nonce is a replay, not the same order.
    let mut copycat = order(2, "restart-unit", json!({"unit": "b.service"}), now);
    copycat.nonce = restart.nonce.clone();
    assert_eq!(
        harness.verdict(&sign(&copycat), &guardrails, soon),
        Verdict::Refused(RefusalCode::Replayed)
    );
    // After a restart the deferral is still known.
    harness.restart();
    assert_eq!(
        harness.verdict(&envelope, &guardrails, soon),
        Verdict::AlreadyDeferred
    );
    // The window opens: the same order runs, once.
    let open = ts("2026-05-04T22:00:30Z");
    assert_eq!(
        harness.verdict(&envelope, &guardrails, open),
        Verdict::Execute
    );
    assert_eq!(
        harness.verdict(&envelope, &guardrails, open),
        Verdict::Refused(RefusalCode::Replayed)
    );
}

#[test]
fn guardrails_need_keys_a_site_and_known_runbooks() {
    let orders = orders_config();
    assert!(matches!(
        Guardrails::new(SITE, HOST, &orders, Vec::new(), TEST_RUNBOOKS),
        Err(GuardrailsError::NoOrderKeys)
    ));
    let mut unknown = orders.clone();
    unknown
        .cooldowns
        .insert("reboot".into(), Duration::from_secs(5));
    let err = Guardrails::new(
        SITE,
        HOST,
        &unknown,
        vec![pinned().verifying_key()],
        TEST_RUNBOOKS,
    )
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        "orders.cooldown_secs.reboot: no runbook with this id"
    );

    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("order-key.pub");
    std::fs::write(
        &key_file,
        format!(
            "{}\n",
            crate::evidence::keys::encode_public_key(&pinned().verifying_key())
        ),
    )
    .unwrap();
    let mut config = crate::config::Config::unconfigured(HOST.into());
    assert!(matches!(
        Guardrails::from_config(&config),
        Err(GuardrailsError::NoSiteId)
    ));
    config.site_id = Some(SITE.into());
    assert!(matches!(
        Guardrails::from_config(&config),
        Err(GuardrailsError::NoOrderKeys)
    ));
    config.orders.order_public_key_files = vec![key_file, dir.path().join("missing.pub")];
    let err = Guardrails::from_config(&config).unwrap_err().to_string();
    assert!(
        err.starts_with("orders.order_public_key_files[1]: cannot read"),
        "{err}"
    );
    config.orders.order_public_key_files.pop();
    let guardrails = Guardrails::from_config(&config).unwrap();
    let now = ts("2026-05-04T12:00:00Z");
    let mut harness = Harness::new();
    assert_eq!(
        harness.verdict(
            &sign(&order(1, "run-checks", json!({}), now)),
            &guardrails,
            now
        ),
        Verdict::Execute
    );
}

fn scrubber() -> Scrubber {
    Scrubber::new(&[9; 32])
}

#[test]
fn unverified_envelopes_leave_no_payload_text_in_evidence() {
    let now = ts("2026-05-04T12:00:00Z");
    let guardrails = guardrails(&orders_config());
    let mut harness = Harness::new();
    let mut marked = order(1, "probe", json!({}), now);
    marked.action = "MARKER-ACTION".into();
    marked.site_id = "MARKER-SITE".into();
    let envelope = marked.sign(&stranger()).unwrap();
    let admission = harness.admit_with(&envelope, &guardrails, &trusted_clock(), now);
    let draft = record::admission_draft(&admission, &scrubber()).unwrap();
    assert_eq!(draft.kind, RecordKind::Refusal);
    let body = draft.body.to_string();
    assert!(!body.contains("MARKER"), "{body}");
    assert_eq!(draft.body["code"], "unknown_key");
    assert_eq!(draft.body["verified"], false);
    assert_eq!(draft.body["order_id"], "o-1");
    assert_eq!(draft.body["order_digest"], dsse::digest(&envelope));
    assert_eq!(
        draft.body["keyids"],
        json!([dsse::keyid(&stranger().verifying_key())])
    );
    assert!(draft.body.get("action").is_none());

    // A claimed id that is not a token is not recorded; nor are invalid key ids.
    let payload = json!({"order_id": "x".repeat(65), "action": "MARKER"}).to_string();
    let mut envelope = dsse::sign(ORDER_PAYLOAD_TYPE, payload.as_bytes(), &stranger());
    envelope.signatures.push(Signature {
        keyid: "MARKER-KEYID".into(),
        sig: "MARKER".into(),
    });
    let admission = harness.admit_with(&envelope, &guardrails, &trusted_clock(), now);
    let draft = record::admission_draft(&admission, &scrubber()).unwrap();
    let body = draft.body.to_string();
    assert!(!body.contains("MARKER") && !body.contains("xxxx"), "{body}");
    assert!(draft.body.get("order_id").is_none());
    assert_eq!(draft.body["keyids"][1], "invalid");
    let result = record::admission_result(&admission, &guardrails, &scrubber(), now).unwrap();
    assert_eq!(result.order_id, "-");
    assert_eq!(result.outcome, Outcome::Refused);
    assert_eq!(result.code, Some(RefusalCode::UnknownKey));
}

#[test]
fn admissions_leave_the_evidence_and_results_they_promise() {
    let now = ts("2026-05-04T12:00:00Z");
    let mut orders = orders_config();
    orders.maintenance_window = Some(MaintenanceWindow::parse("22:00-04:00").unwrap());
    let guardrails = guardrails(&orders);
    let mut harness = Harness::new();

    let execute = harness.admit_with(
        &sign(&order(1, "probe", json!({"count": 2}), now)),
        &guardrails,
        &trusted_clock(),
        now,
    );
    let draft = record::admission_draft(&execute, &scrubber()).unwrap();
    assert_eq!(draft.kind, RecordKind::Order);
    assert_eq!(draft.controls, ["164.312(b)"]);
    assert_eq!(draft.body["event"], "admitted");
    assert_eq!(draft.body["params"], json!({"count": 2}));
    assert_eq!(draft.body["verified"], true);
    assert_eq!(
        draft.body["keyids"],
        json!([dsse::keyid(&pinned().verifying_key())])
    );
    assert!(record::admission_result(&execute, &guardrails, &scrubber(), now).is_none());
    let Admission::Execute(approved) = &execute else {
        panic!("expected execute, found {execute:?}");
    };
    let output = json!({"note": "patient SSN 123-45-6789"});
    let finished = record::execution_draft(
        approved,
        Finished::Failed,
        "exit status 1",
        &output,
        &scrubber(),
    );
    assert_eq!(finished.body["outcome"], "failed");
    assert!(!finished.body.to_string().contains("123-45-6789"));
    let result = record::execution_result(
        approved,
        Finished::Executed,
        "ok",
        &output,
        &guardrails,
        &scrubber(),
        now,
    );
    assert_eq!(result.outcome, Outcome::Executed);
    assert_eq!(result.order_id, "o-1");
    assert_eq!(result.site_id, SITE);
    assert!(!result.output.to_string().contains("123-45-6789"));

    // Past the probe's cooldown of 60 s, which the dry run checks too.
    let later = now + SignedDuration::from_secs(61);
    let mut dry = order(2, "probe", json!({}), later);
    dry.dry_run = true;
    let dry_run = harness.admit_with(&sign(&dry), &guardrails, &trusted_clock(), later);
    let draft = record::admission_draft(&dry_run, &scrubber()).unwrap();
    assert_eq!(draft.body["outcome"], "dry_run");
    assert_eq!(draft.body["dry_run"], true);
    assert!(
        draft.body["detail"]
            .as_str()
            .unwrap()
            .starts_with("dry run requested by the order: would run probe"),
        "{}",
        draft.body["detail"]
    );
    let result = record::admission_result(&dry_run, &guardrails, &scrubber(), later).unwrap();
    assert_eq!(result.outcome, Outcome::DryRun);
    assert_eq!(result.code, None);

    let restart = order(3, "restart-unit", json!({"unit": "a.service"}), now);
    let deferred = harness.admit_with(&sign(&restart), &guardrails, &trusted_clock(), now);
    let draft = record::admission_draft(&deferred, &scrubber()).unwrap();
    assert_eq!(draft.kind, RecordKind::Order);
    assert_eq!(draft.body["outcome"], "deferred");
    assert_eq!(draft.body["code"], "outside_window");
    assert_eq!(draft.body["params"], json!({"unit": "a.service"}));
    assert_eq!(draft.controls, ["164.308(a)(7)(ii)(B)"]);
    assert!(
        draft.body["detail"]
            .as_str()
            .unwrap()
            .contains("local time 12:00 (UTC) is outside the maintenance window 22:00-04:00"),
        "{}",
        draft.body["detail"]
    );
    let result = record::admission_result(&deferred, &guardrails, &scrubber(), now).unwrap();
    assert_eq!(result.outcome, Outcome::Deferred);
    assert_eq!(result.code, Some(RefusalCode::OutsideWindow));
    let again = harness.admit_with(&sign(&restart), &guardrails, &trusted_clock(), now);
    assert!(record::admission_draft(&again, &scrubber()).is_none());

    let wrong_host = {
        let mut it = order(4, "probe", json!({}), now);
        it.host_id = "other".into();
        it
    };
    let refused = harness.admit_with(&sign(&wrong_host), &guardrails, &trusted_clock(), now);
    let draft = record::admission_draft(&refused, &scrubber()).unwrap();
    assert_eq!(draft.kind, RecordKind::Refusal);
    assert_eq!(draft.body["outcome"], "refused");
    assert_eq!(draft.body["code"], "wrong_host");
    assert_eq!(draft.body["verified"], true);
    assert_eq!(draft.body["action"], "probe");
    assert_eq!(
        draft.body["detail"],
        "order is for host other, this is host nixos-1"
    );
}

fn arbitrary_order() -> impl Strategy<Value = Order> {
    let token = "[A-Za-z0-9._-]{0,70}|probe|restart-unit|clinic-a|nixos-1|o-1";
    let hex = "[0-9a-f]{0,70}|[0-9a-fA-Z]{32}";
    let time = prop_oneof![
        (-2_000_000i64..2_000_000)
            .prop_map(|secs| ts("2026-05-04T12:00:00Z") + SignedDuration::from_secs(secs)),
        Just(Timestamp::MIN),
        Just(Timestamp::MAX),
    ];
    let params = prop_oneof![
        Just(json!({})),
        Just(json!({"count": 3})),
        Just(json!({"unit": "a.service"})),
        Just(json!([])),
        any::<i64>().prop_map(|it| json!({"count": it})),
        "\\PC{0,10}".prop_map(|it| json!({"unit": it})),
    ];
    (
        (0u32..3, token, hex, token, token, token),
        (params, time.clone(), time, any::<bool>(), any::<bool>()),
    )
        .prop_map(
            |(
                (v, order_id, nonce, site_id, host_id, action),
                (params, issued_at, expires_at, disruptive, dry_run),
            )| Order {
                v,
                order_id,
                nonce,
                site_id,
                host_id,
                action,
                params,
                issued_at,
                expires_at,
                disruptive,
                dry_run,
            },
        )
}

fn arbitrary_envelope() -> impl Strategy<Value = Envelope> {
    let signature = ("\\PC{0,70}|[0-9a-f]{64}", "\\PC{0,90}|[A-Za-z0-9+/]{86}==")
        .prop_map(|(keyid, sig)| Signature { keyid, sig });
    prop_oneof![
        // Anything at all.
        (
            "\\PC{0,60}",
            "\\PC{0,200}",
            prop::collection::vec(signature.clone(), 0..4)
        )
            .prop_map(|(payload_type, payload, signatures)| Envelope {
                payload_type,
                payload,
                signatures,
            }),
        // Arbitrary bytes, properly signed by the pinned key or a stranger.
        (prop::collection::vec(any::<u8>(), 0..300), any::<bool>()).prop_map(
            |(bytes, pinned_key)| {
                let key = if pinned_key { pinned() } else { stranger() };
                dsse::sign(ORDER_PAYLOAD_TYPE, &bytes, &key)
            }
        ),
        // Arbitrary orders, properly signed, possibly with an extra signature.
        (arbitrary_order(), prop::option::of(signature)).prop_map(|(order, extra)| {
            let mut envelope = dsse::sign(
                ORDER_PAYLOAD_TYPE,
                &serde_json::to_vec(&order).unwrap(),
                &pinned(),
            );
            envelope.signatures.extend(extra);
            envelope
        }),
    ]
}

fn arbitrary_clock() -> impl Strategy<Value = ClockState> {
    (
        prop::option::of(any::<bool>()),
        prop::option::of(prop_oneof![
            (-1_000i64..1_000).prop_map(SignedDuration::from_secs),
            Just(SignedDuration::MIN),
            Just(SignedDuration::MAX),
        ]),
    )
        .prop_map(|(synchronized, server_offset)| ClockState {
            synchronized,
            server_offset,
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn admit_never_panics_and_only_approves_what_passes(
        envelope in arbitrary_envelope(),
        clock in arbitrary_clock(),
        offset_secs in -1_000_000i64..1_000_000,
        dry_run in any::<bool>(),
    ) {
        let now = ts("2026-05-04T12:00:00Z") + SignedDuration::from_secs(offset_secs);
        let mut orders = orders_config();
        orders.dry_run = dry_run;
        orders.maintenance_window = Some(MaintenanceWindow::parse("22:00-04:00").unwrap());
        orders.timezone = TimeZone::get("America/New_York").unwrap();
        let guardrails = guardrails(&orders);
        let mut harness = Harness::new();
        let admission = harness.admit_with(&envelope, &guardrails, &clock, now);
        let scrubber = scrubber();
        let _ = record::admission_draft(&admission, &scrubber);
        let _ = record::admission_result(&admission, &guardrails, &scrubber, now);
        if let Admission::Execute(approved) | Admission::DryRun(approved) = &admission {
            let order = approved.order();
            prop_assert!(order.validate_fields().is_ok());
            prop_assert_eq!(&order.site_id, SITE);
            prop_assert_eq!(&order.host_id, HOST);
            prop_assert!(now <= order.expires_at);
            prop_assert!(runbooks::find_in(TEST_RUNBOOKS, &order.action).is_some());
            prop_assert!(dsse::verify(&envelope, &[pinned().verifying_key()]).is_ok());
            // Whatever was admitted once is a replay the second time.
            let again = harness.admit_with(&envelope, &guardrails, &clock, now);
            prop_assert_eq!(verdict(&again), Verdict::Refused(RefusalCode::Replayed));
        }
        if let Admission::Refused(refusal) = &admission
            && !refusal.verified
        {
            // Nothing of an unverified payload but a token order id is kept.
            prop_assert!(refusal.order_id.as_deref().is_none_or(is_token));
            prop_assert!(refusal.action.is_none() && refusal.params.is_none());
        }
    }
}

#[test]
fn malformed_verified_payloads_are_described_without_their_values() {
    let now = ts("2026-05-04T12:00:00Z");
    let guardrails = guardrails(&orders_config());
    let mut harness = Harness::new();
    let mut refuse = |payload: &[u8]| {
        let envelope = dsse::sign(ORDER_PAYLOAD_TYPE, payload, &pinned());
        match harness.admit_with(&envelope, &guardrails, &trusted_clock(), now) {
            Admission::Refused(refusal) => {
                assert_eq!(refusal.code, RefusalCode::Malformed);
                assert!(refusal.verified);
                refusal.detail
            }
            other => panic!("expected a refusal, found {other:?}"),
        }
    };
    let mut fields = serde_json::to_value(order(1, "probe", json!({}), now)).unwrap();
    let mut names: Vec<&str> = fields
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    let mut known = ORDER_FIELDS.to_vec();
    names.sort_unstable();
    known.sort_unstable();
    assert_eq!(names, known, "ORDER_FIELDS lists the fields of Order");
    assert_eq!(
        refuse(br#"{"order_id":"o-1"}"#),
        "payload is not an order: missing field `v`"
    );
    fields["v"] = json!("SECRET-1");
    assert_eq!(
        refuse(fields.to_string().as_bytes()),
        "payload is not an order: v: a field is unknown or of the wrong type"
    );
    fields["v"] = json!(1);
    fields["SECRET-2"] = json!(1);
    assert_eq!(
        refuse(fields.to_string().as_bytes()),
        "payload is not an order: a field is unknown or of the wrong type"
    );
    assert_eq!(
        refuse(b"{\"v\": SECRET-3}"),
        "payload is not an order: v: not valid JSON"
    );
    assert_eq!(
        refuse(b"{\"v\": 1"),
        "payload is not an order: truncated JSON"
    );
}
