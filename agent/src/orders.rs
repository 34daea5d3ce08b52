//! Signed orders from the control plane: verification and every guardrail (DESIGN §5), as one
//! straight pipeline of typed steps that ends in an [`Admission`].
//!
//! [`admit`] takes the envelope exactly as received and moves it through
//! received → verified → targeted → timely → fresh → allowed → admitted:
//! 1. verified: a signature by a pinned order key over the exact payload bytes
//!    (`dsse::verify_typed`), then the payload parsed as an `Order` that follows
//!    `Order::validate_fields` (`unknown_key`, `bad_signature`, `malformed`);
//! 2. targeted: this site and this host (`wrong_site`, `wrong_host`);
//! 3. timely: not expired, not issued beyond the clock skew in the future, TTL within the
//!    maximum (`expired`, `future_dated`, `ttl_too_long`);
//! 4. fresh: order id and nonce never seen (`replayed`), remembered durably in
//!    [`memory::OrderMemory`] until expiry plus skew;
//! 5. allowed: the action is a whitelisted runbook and the params pass its schema
//!    (`action_not_allowed`, `bad_params`);
//! 6. a disruptive action outside the maintenance window is deferred (`outside_window`); without
//!    a configured window it is refused with the same code;
//! 7. the action's cooldown and the hourly budget (`cooldown`, `budget_exceeded`);
//! 8. a disruptive action needs a trustworthy clock (`clock_untrusted`);
//! 9. dry run (configured or per order) runs all of the above and changes nothing.
//!
//! Only this module makes an [`Approved`], the proof value the daemon needs to run an action.
//! Deciding is sans-I/O except for the memory: the verdict of every order that is verified and
//! addressed to this host is written in the same `IMMEDIATE` transaction as its accounting
//! (seen, executed), and committed before `admit` returns, so a crash while the action runs
//! cannot lead to a second run by replay. This module never performs an action and never
//! touches the network; [`record`] turns admissions into evidence drafts and order results.

pub mod memory;
pub mod record;
pub mod window;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use ed25519_dalek::VerifyingKey;
use jiff::tz::TimeZone;
use jiff::{SignedDuration, Timestamp};
use msp_compliance_protocol::dsse::{self, DsseError, Envelope};
use msp_compliance_protocol::order::{ORDER_PAYLOAD_TYPE, Order, RefusalCode, is_token};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::config::{Config, OrdersConfig};
use crate::evidence::keys::KeyError;
use crate::orders::memory::{MemoryError, MemoryTransaction, OrderMemory, Remembered};
use crate::orders::window::MaintenanceWindow;
use crate::runbooks::{self, Runbook, ValidParams};

/// Largest order payload accepted, in base64 characters (orders are a few hundred bytes; the
/// bound keeps hostile envelopes cheap to refuse).
pub const MAX_ORDER_PAYLOAD_CHARS: usize = 64 * 1024;

/// Most signatures accepted on an order envelope (rotation needs two).
pub const MAX_ORDER_SIGNATURES: usize = 8;

/// The fields of an `Order`, the only paths a malformed-payload refusal names.
const ORDER_FIELDS: [&str; 11] = [
    "v",
    "order_id",
    "nonce",
    "site_id",
    "host_id",
    "action",
    "params",
    "issued_at",
    "expires_at",
    "disruptive",
    "dry_run",
];

/// The period of the action budget.
const BUDGET_PERIOD: SignedDuration = SignedDuration::from_hours(1);

/// Everything the guardrails judge by, built once at start-up and never changed.
#[derive(Clone, Debug)]
pub struct Guardrails {
    site_id: String,
    host_id: String,
    order_keys: Vec<VerifyingKey>,
    max_ttl: SignedDuration,
    max_clock_skew: SignedDuration,
    dry_run: bool,
    window: Option<MaintenanceWindow>,
    timezone: TimeZone,
    max_actions_per_hour: u32,
    /// Cooldown of every runbook of `runbooks`: its default or the configured override.
    cooldowns: BTreeMap<&'static str, SignedDuration>,
    runbooks: &'static [Runbook],
}

/// Why the guardrails could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GuardrailsError {
    /// An order public key file could not be used.
    #[error("orders.order_public_key_files[{index}]: {source}")]
    Key { index: usize, source: KeyError },
    /// No order key is configured, so no order could ever verify.
    #[error(
        "orders.order_public_key_files: expected at least one order public key to accept orders"
    )]
    NoOrderKeys,
    /// The configuration has no site id, so no order could name this host.
    #[error("site_id: expected a configured site id to accept orders")]
    NoSiteId,
    /// A cooldown override names a runbook that is not in the table.
    #[error("orders.cooldown_secs.{id}: no runbook with this id")]
    UnknownRunbook { id: String },
}

/// How far the agent's clock can be trusted, as the daemon last observed it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClockState {
    /// Whether the host's time synchronization reports it is synchronized; `None` when the
    /// state could not be read.
    pub synchronized: Option<bool>,
    /// The agent's clock minus the server's (`server_time` of the last check-in answer);
    /// `None` before any answer.
    pub server_offset: Option<SignedDuration>,
}

impl ClockState {
    /// The state from a check-in: `agent_time` is the agent's clock when the answer with
    /// `server_time` arrived.
    pub fn observed(
        synchronized: Option<bool>,
        agent_time: Timestamp,
        server_time: Timestamp,
    ) -> ClockState {
        ClockState {
            synchronized,
            server_offset: Some(agent_time.duration_since(server_time)),
        }
    }
}

/// What became of an envelope.
#[derive(Debug)]
#[non_exhaustive]
pub enum Admission {
    /// The same order was deferred before and the window is still closed. Its evidence
    /// exists; nothing new is recorded.
    AlreadyDeferred(Refusal),
    /// A disruptive action outside the maintenance window; remembered, so the same order sent
    /// again is [`Admission::AlreadyDeferred`] until the window opens.
    Deferred(Refusal),
    /// Every guardrail passed, but nothing may change: the order or the configuration asks
    /// for a dry run. Consumes no cooldown or budget.
    DryRun(Approved),
    /// Run the action now; its id, nonce and execution are already durably recorded.
    Execute(Approved),
    /// A guardrail refused the order.
    Refused(Refusal),
}

/// An order that passed every guardrail. Only [`admit`] makes one: its fields are private,
/// so holding an `Approved` proves the order was verified, targeted, timely, fresh, allowed,
/// in its window and within its cooldown, budget and clock limits.
#[derive(Debug)]
pub struct Approved {
    order: Order,
    runbook: &'static Runbook,
    params: ValidParams,
    order_digest: String,
    keyid: String,
    disruptive: bool,
    /// Why nothing may change, for dry runs.
    dry_run_by: Option<&'static str>,
}

/// Why an order was refused or deferred, with what may be said about it.
#[derive(Clone, Debug, PartialEq)]
pub struct Refusal {
    /// The stable code.
    pub code: RefusalCode,
    /// What was wrong, in one sentence (never quotes unverified payload text).
    pub detail: String,
    /// The order id: verified, or, when `verified` is false, the id the envelope claims (only
    /// if it is a token).
    pub order_id: Option<String>,
    /// A pinned key's signature over the payload verified.
    pub verified: bool,
    /// `sha256:<hex>` of the envelope's canonical JSON.
    pub order_digest: String,
    /// Key ids of the envelope's signatures (64 hex digits each, else `invalid`).
    pub keyids: Vec<String>,
    /// The action, once verified.
    pub action: Option<String>,
    /// The parameters, once they passed the runbook's schema.
    pub params: Option<Value>,
    /// HIPAA citations of the runbook, once known.
    pub controls: &'static [&'static str],
}

impl Guardrails {
    /// Builds the guardrails from the configuration: loads the pinned order keys (at least one)
    /// and uses the built-in runbook whitelist.
    pub fn from_config(config: &Config) -> Result<Guardrails, GuardrailsError> {
        let site_id = config.site_id.as_deref().ok_or(GuardrailsError::NoSiteId)?;
        let order_keys = load_order_keys(&config.orders.order_public_key_files)?;
        Guardrails::new(
            site_id,
            &config.host_id,
            &config.orders,
            order_keys,
            runbooks::RUNBOOKS,
        )
    }

    /// Builds the guardrails from loaded keys and a runbook table (tests pass their own).
    pub fn new(
        site_id: &str,
        host_id: &str,
        orders: &OrdersConfig,
        order_keys: Vec<VerifyingKey>,
        runbooks: &'static [Runbook],
    ) -> Result<Guardrails, GuardrailsError> {
        if order_keys.is_empty() {
            return Err(GuardrailsError::NoOrderKeys);
        }
        if let Some(id) = orders
            .cooldowns
            .keys()
            .find(|id| runbooks::find_in(runbooks, id).is_none())
        {
            return Err(GuardrailsError::UnknownRunbook { id: id.clone() });
        }
        let cooldowns = runbooks
            .iter()
            .map(|runbook| {
                let cooldown = orders
                    .cooldowns
                    .get(runbook.id)
                    .copied()
                    .unwrap_or(runbook.cooldown);
                (runbook.id, signed(cooldown))
            })
            .collect();
        Ok(Guardrails {
            site_id: site_id.to_string(),
            host_id: host_id.to_string(),
            order_keys,
            max_ttl: signed(orders.max_ttl),
            max_clock_skew: signed(orders.max_clock_skew),
            dry_run: orders.dry_run,
            window: orders.maintenance_window,
            timezone: orders.timezone.clone(),
            max_actions_per_hour: orders.max_actions_per_hour,
            cooldowns,
            runbooks,
        })
    }

    /// The site orders must name.
    pub fn site_id(&self) -> &str {
        &self.site_id
    }

    /// The host orders must name.
    pub fn host_id(&self) -> &str {
        &self.host_id
    }

    /// Returns true if and only if the configuration makes every order a dry run.
    pub fn is_dry_run(&self) -> bool {
        self.dry_run
    }

    fn cooldown(&self, runbook: &Runbook) -> SignedDuration {
        self.cooldowns
            .get(runbook.id)
            .copied()
            .unwrap_or_else(|| signed(runbook.cooldown))
    }

    fn timezone_name(&self) -> &str {
        self.timezone.iana_name().unwrap_or("UTC")
    }
}

/// Runs an envelope through every guardrail. `Err` only when the memory fails, in which case
/// nothing is admitted and nothing is recorded.
pub fn admit(
    envelope: &Envelope,
    guardrails: &Guardrails,
    clock: &ClockState,
    memory: &mut OrderMemory,
    now: Timestamp,
) -> Result<Admission, MemoryError> {
    let received = Received::new(envelope);
    // Until the order is verified and addressed to this host, nothing about it is
    // remembered: unverified bytes must not fill the memory, and another host's order is not
    // this host's to judge.
    let targeted = match received
        .verify(guardrails)
        .and_then(|it| it.target(guardrails))
    {
        Ok(it) => it,
        Err(refusal) => return Ok(Admission::Refused(*refusal)),
    };
    let identity = Identity::of(&targeted.0, guardrails);
    let tx = memory.transaction()?;
    let admission = targeted.decide(guardrails, clock, &tx, now)?;
    identity.record(&tx, &admission, guardrails, now)?;
    tx.commit()?;
    Ok(admission)
}

impl Approved {
    /// The verified order.
    pub fn order(&self) -> &Order {
        &self.order
    }

    /// The order id.
    pub fn order_id(&self) -> &str {
        &self.order.order_id
    }

    /// The runbook to run.
    pub fn runbook(&self) -> &'static Runbook {
        self.runbook
    }

    /// The parameters, as they passed the runbook's schema.
    pub fn params(&self) -> &ValidParams {
        &self.params
    }

    /// `sha256:<hex>` of the envelope's canonical JSON.
    pub fn order_digest(&self) -> &str {
        &self.order_digest
    }

    /// The pinned key whose signature verified.
    pub fn keyid(&self) -> &str {
        &self.keyid
    }

    /// Returns true if and only if the runbook or the order says the action is disruptive.
    pub fn is_disruptive(&self) -> bool {
        self.disruptive
    }

    /// Why nothing may change, for a dry run (`None` for an order to execute).
    pub fn dry_run_by(&self) -> Option<&'static str> {
        self.dry_run_by
    }
}

/// Any envelope: what can be said before anything is verified.
struct Received<'e> {
    envelope: &'e Envelope,
    order_digest: String,
    keyids: Vec<String>,
}

/// A payload signed by a pinned key, parsed into an order that follows the field rules.
struct VerifiedOrder {
    order: Order,
    order_digest: String,
    payload_digest: String,
    keyid: String,
}

/// A verified order for this site and host.
struct Targeted(VerifiedOrder);

/// A targeted order within its validity period, never seen before (or deferred before,
/// identically).
struct Fresh {
    verified: VerifiedOrder,
    previously_deferred: bool,
}

/// A fresh order whose action is whitelisted and whose params pass the runbook's schema.
struct Allowed {
    fresh: Fresh,
    runbook: &'static Runbook,
    params: ValidParams,
    disruptive: bool,
}

/// What the window step decided.
enum WindowVerdict {
    Defer(Refusal),
    Open,
    Refuse(Refusal),
}

impl<'e> Received<'e> {
    fn new(envelope: &'e Envelope) -> Received<'e> {
        let keyids = envelope
            .signatures
            .iter()
            .take(MAX_ORDER_SIGNATURES)
            .map(|it| {
                if is_keyid(&it.keyid) {
                    it.keyid.clone()
                } else {
                    "invalid".to_string()
                }
            })
            .collect();
        Received {
            envelope,
            order_digest: dsse::digest(envelope),
            keyids,
        }
    }

    /// A refusal before verification: only the digest, the key ids and a claimed order id.
    fn refuse(&self, code: RefusalCode, detail: String) -> Box<Refusal> {
        Box::new(Refusal {
            code,
            detail,
            order_id: self.claimed_order_id(),
            verified: false,
            order_digest: self.order_digest.clone(),
            keyids: self.keyids.clone(),
            action: None,
            params: None,
            controls: &[],
        })
    }

    /// The `order_id` the unverified payload claims, if it is a token: bounded, safe to record,
    /// and marked unverified wherever it goes.
    fn claimed_order_id(&self) -> Option<String> {
        #[derive(serde::Deserialize)]
        struct Claimed {
            order_id: Option<String>,
        }
        if self.envelope.payload.len() > MAX_ORDER_PAYLOAD_CHARS {
            return None;
        }
        use base64::Engine;
        let payload = base64::engine::general_purpose::STANDARD
            .decode(self.envelope.payload.as_bytes())
            .ok()?;
        let claimed: Claimed = serde_json::from_slice(&payload).ok()?;
        claimed.order_id.filter(|it| is_token(it))
    }

    fn verify(self, guardrails: &Guardrails) -> Result<VerifiedOrder, Box<Refusal>> {
        let envelope = self.envelope;
        if envelope.payload_type != ORDER_PAYLOAD_TYPE {
            // The type is not quoted: it is unverified text.
            return Err(self.refuse(
                RefusalCode::Malformed,
                format!("payload type is not {ORDER_PAYLOAD_TYPE}"),
            ));
        }
        if envelope.payload.len() > MAX_ORDER_PAYLOAD_CHARS {
            return Err(self.refuse(
                RefusalCode::Malformed,
                format!("payload is longer than {MAX_ORDER_PAYLOAD_CHARS} base64 characters"),
            ));
        }
        if envelope.signatures.len() > MAX_ORDER_SIGNATURES {
            return Err(self.refuse(
                RefusalCode::Malformed,
                format!("more than {MAX_ORDER_SIGNATURES} signatures"),
            ));
        }
        let verified = match dsse::verify_typed(
            envelope,
            ORDER_PAYLOAD_TYPE,
            &guardrails.order_keys,
        ) {
            Ok(it) => it,
            Err(DsseError::UnknownKey { .. } | DsseError::Unsigned) => {
                return Err(self.refuse(
                    RefusalCode::UnknownKey,
                    "no signature by a pinned order key".to_string(),
                ));
            }
            // The key id matched a pinned key, so it is one of ours and safe to name.
            Err(DsseError::BadSignature { keyid } | DsseError::MalformedSignature { keyid }) => {
                return Err(self.refuse(
                    RefusalCode::BadSignature,
                    format!(
                        "signature by pinned key {keyid} does not verify (forged, or payload altered after signing)"
                    ),
                ));
            }
            Err(DsseError::BadPayloadEncoding) => {
                return Err(self.refuse(
                    RefusalCode::Malformed,
                    "payload is not valid base64".to_string(),
                ));
            }
            Err(other) => {
                return Err(self.refuse(RefusalCode::Malformed, other.to_string()));
            }
        };
        let payload_digest = format!("sha256:{}", hex::encode(Sha256::digest(verified.payload())));
        let keyid = verified.keyid().to_string();
        // From here on the bytes are signed by a pinned key; errors still quote no values.
        let verified_refusal = |detail: String, order_id: Option<String>| {
            Box::new(Refusal {
                code: RefusalCode::Malformed,
                detail,
                order_id,
                verified: true,
                order_digest: self.order_digest.clone(),
                keyids: vec![keyid.clone()],
                action: None,
                params: None,
                controls: &[],
            })
        };
        let describe = |path: &str, err: &serde_json::Error| {
            use serde_json::error::Category;
            let message = err.to_string();
            let what = match err.classify() {
                Category::Io | Category::Syntax => "not valid JSON",
                Category::Eof => "truncated JSON",
                // serde names a missing field by its name in `Order`, never by sent text.
                Category::Data if message.starts_with("missing field `") => message
                    .split(" at line ")
                    .next()
                    .unwrap_or("a field is missing"),
                // Other data errors quote the sent key or value, so they are not repeated.
                Category::Data => "a field is unknown or of the wrong type",
            };
            // Only a field name of `Order` is named: the path of an unknown key is that key,
            // which is sent text.
            let detail = if ORDER_FIELDS.contains(&path) {
                format!("payload is not an order: {path}: {what}")
            } else {
                format!("payload is not an order: {what}")
            };
            verified_refusal(detail, None)
        };
        let mut deserializer = serde_json::Deserializer::from_slice(verified.payload());
        let order: Order = serde_path_to_error::deserialize(&mut deserializer)
            .map_err(|err| describe(&err.path().to_string(), err.inner()))?;
        deserializer.end().map_err(|err| describe(".", &err))?;
        if let Err(message) = order.validate_fields() {
            let order_id = Some(order.order_id.clone()).filter(|it| is_token(it));
            return Err(verified_refusal(message, order_id));
        }
        Ok(VerifiedOrder {
            order,
            order_digest: self.order_digest,
            payload_digest,
            keyid,
        })
    }
}

impl VerifiedOrder {
    fn refuse(&self, code: RefusalCode, detail: String) -> Box<Refusal> {
        Box::new(Refusal {
            code,
            detail,
            order_id: Some(self.order.order_id.clone()),
            verified: true,
            order_digest: self.order_digest.clone(),
            keyids: vec![self.keyid.clone()],
            action: Some(self.order.action.clone()),
            params: None,
            controls: &[],
        })
    }

    fn target(self, guardrails: &Guardrails) -> Result<Targeted, Box<Refusal>> {
        // Both ids passed `validate_fields`, so they are tokens and safe to quote.
        if self.order.site_id != guardrails.site_id {
            return Err(self.refuse(
                RefusalCode::WrongSite,
                format!(
                    "order is for site {}, this is site {}",
                    self.order.site_id, guardrails.site_id
                ),
            ));
        }
        if self.order.host_id != guardrails.host_id {
            return Err(self.refuse(
                RefusalCode::WrongHost,
                format!(
                    "order is for host {}, this is host {}",
                    self.order.host_id, guardrails.host_id
                ),
            ));
        }
        Ok(Targeted(self))
    }
}

/// A verified order within its validity period.
struct Timely(VerifiedOrder);

/// What the memory keeps of a verified order for this host, taken before the pipeline moves
/// the order on, so the verdict can be written whatever step decided it.
struct Identity {
    order_id: String,
    nonce: String,
    payload_digest: String,
    remember_until: Timestamp,
}

impl Identity {
    fn of(verified: &VerifiedOrder, guardrails: &Guardrails) -> Identity {
        Identity {
            order_id: verified.order.order_id.clone(),
            nonce: verified.order.nonce.clone(),
            payload_digest: verified.payload_digest.clone(),
            // Past this instant the order is expired even to a clock that is behind by the
            // allowed skew, so it need not be remembered longer.
            remember_until: verified
                .order
                .expires_at
                .checked_add(guardrails.max_clock_skew)
                .unwrap_or(Timestamp::MAX),
        }
    }

    /// Writes the verdict into the order's transaction.
    fn record(
        &self,
        tx: &MemoryTransaction<'_>,
        admission: &Admission,
        guardrails: &Guardrails,
        now: Timestamp,
    ) -> Result<(), MemoryError> {
        let seen = |verdict: &str| {
            tx.mark_seen(
                &self.order_id,
                &self.nonce,
                &self.payload_digest,
                verdict,
                now,
                self.remember_until,
            )
        };
        match admission {
            Admission::Execute(approved) => {
                seen("executed")?;
                let relevant_for = guardrails.cooldown(approved.runbook).max(BUDGET_PERIOD);
                let relevant_until = now.checked_add(relevant_for).unwrap_or(Timestamp::MAX);
                tx.record_execution(approved.runbook.id, &self.order_id, now, relevant_until)
            }
            Admission::DryRun(_) => seen("dry_run"),
            // The earlier entry stays as it is; a replay changes nothing.
            Admission::Refused(refusal) if refusal.code == RefusalCode::Replayed => Ok(()),
            // Remembered, so an order refused now (say, future-dated or in cooldown) cannot
            // run later by replay while the server believes it was refused.
            Admission::Refused(refusal) => seen(refusal.code.as_str()),
            Admission::Deferred(_) => tx.defer(
                &self.order_id,
                &self.nonce,
                &self.payload_digest,
                now,
                self.remember_until,
            ),
            Admission::AlreadyDeferred(_) => Ok(()),
        }
    }
}

impl Targeted {
    /// Steps 3 to 9. Reads the memory through the order's transaction; writes nothing (the
    /// caller records the verdict in the same transaction).
    fn decide(
        self,
        guardrails: &Guardrails,
        clock: &ClockState,
        tx: &MemoryTransaction<'_>,
        now: Timestamp,
    ) -> Result<Admission, MemoryError> {
        let timely = match self.check_time(guardrails, now) {
            Ok(it) => it,
            Err(refusal) => return Ok(Admission::Refused(*refusal)),
        };
        let fresh = match timely.check_fresh(tx)? {
            Ok(it) => it,
            Err(refusal) => return Ok(Admission::Refused(*refusal)),
        };
        let allowed = match fresh.allow(guardrails) {
            Ok(it) => it,
            Err(refusal) => return Ok(Admission::Refused(*refusal)),
        };
        match allowed.check_window(guardrails, now) {
            WindowVerdict::Open => {}
            WindowVerdict::Defer(refusal) if allowed.fresh.previously_deferred => {
                return Ok(Admission::AlreadyDeferred(refusal));
            }
            WindowVerdict::Defer(refusal) => return Ok(Admission::Deferred(refusal)),
            WindowVerdict::Refuse(refusal) => return Ok(Admission::Refused(refusal)),
        }
        if let Some(refusal) = allowed.check_rate(guardrails, tx, now)? {
            return Ok(Admission::Refused(refusal));
        }
        if let Some(refusal) = allowed.check_clock(guardrails, clock) {
            return Ok(Admission::Refused(refusal));
        }
        Ok(allowed.approve(guardrails))
    }

    fn check_time(self, guardrails: &Guardrails, now: Timestamp) -> Result<Timely, Box<Refusal>> {
        let Targeted(verified) = self;
        let order = &verified.order;
        if now > order.expires_at {
            return Err(verified.refuse(
                RefusalCode::Expired,
                format!("order expired at {}, it is now {now}", order.expires_at),
            ));
        }
        let latest_issue = now
            .checked_add(guardrails.max_clock_skew)
            .unwrap_or(Timestamp::MAX);
        if order.issued_at > latest_issue {
            return Err(verified.refuse(
                RefusalCode::FutureDated,
                format!(
                    "order issued at {}, more than the allowed clock skew of {} s after now ({now})",
                    order.issued_at,
                    guardrails.max_clock_skew.as_secs()
                ),
            ));
        }
        let ttl = order.expires_at.duration_since(order.issued_at);
        if ttl > guardrails.max_ttl {
            return Err(verified.refuse(
                RefusalCode::TtlTooLong,
                format!(
                    "order lives {} s from issue to expiry, longer than the allowed {} s",
                    ttl.as_secs(),
                    guardrails.max_ttl.as_secs()
                ),
            ));
        }
        Ok(Timely(verified))
    }
}

impl Timely {
    fn check_fresh(
        self,
        tx: &MemoryTransaction<'_>,
    ) -> Result<Result<Fresh, Box<Refusal>>, MemoryError> {
        let Timely(verified) = self;
        let order = &verified.order;
        if let Some(horizon) = tx.horizon()?
            && order.expires_at < horizon
        {
            // Its id may have been pruned already: only an order the memory can still vouch
            // for is fresh.
            return Ok(Err(verified.refuse(
                RefusalCode::Replayed,
                format!(
                    "order expires at {} before the order memory's horizon {horizon}; it may have been seen and forgotten",
                    order.expires_at
                ),
            )));
        }
        let remembered = tx.remembered(&order.order_id, &order.nonce)?;
        let previously_deferred = match remembered {
            None => false,
            // The same signed payload, deferred before: judged again (the window may be open).
            Some(Remembered::Deferred {
                order_id,
                payload_digest,
            }) if order_id == order.order_id && payload_digest == verified.payload_digest => true,
            Some(Remembered::Deferred { order_id, .. } | Remembered::Seen { order_id, .. }) => {
                // Remembered ids passed `validate_fields` when they were stored.
                let detail = if order_id == order.order_id {
                    format!("order id {order_id} was seen before")
                } else {
                    format!("nonce was seen before, in order {order_id}")
                };
                return Ok(Err(verified.refuse(RefusalCode::Replayed, detail)));
            }
        };
        Ok(Ok(Fresh {
            verified,
            previously_deferred,
        }))
    }
}

impl Fresh {
    fn allow(self, guardrails: &Guardrails) -> Result<Allowed, Box<Refusal>> {
        let order = &self.verified.order;
        let Some(runbook) = runbooks::find_in(guardrails.runbooks, &order.action) else {
            return Err(self.verified.refuse(
                RefusalCode::ActionNotAllowed,
                format!("action {} is not in the runbook whitelist", order.action),
            ));
        };
        let params = match runbooks::validate_params(runbook, &order.params) {
            Ok(it) => it,
            Err(err) => {
                let mut refusal = self
                    .verified
                    .refuse(RefusalCode::BadParams, err.to_string());
                refusal.controls = runbook.controls;
                return Err(refusal);
            }
        };
        let disruptive = runbook.disruptive || order.disruptive;
        Ok(Allowed {
            fresh: self,
            runbook,
            params,
            disruptive,
        })
    }
}

impl Allowed {
    fn refuse(&self, code: RefusalCode, detail: String) -> Refusal {
        let mut refusal = self.fresh.verified.refuse(code, detail);
        refusal.params = Some(self.params.to_json());
        refusal.controls = self.runbook.controls;
        *refusal
    }

    fn check_window(&self, guardrails: &Guardrails, now: Timestamp) -> WindowVerdict {
        if !self.disruptive {
            return WindowVerdict::Open;
        }
        let Some(window) = guardrails.window else {
            // Safe default: without a window there is no time a disruptive action may run.
            return WindowVerdict::Refuse(self.refuse(
                RefusalCode::OutsideWindow,
                format!(
                    "disruptive action {} needs a maintenance window, and orders.maintenance_window is not configured",
                    self.runbook.id
                ),
            ));
        };
        if window.contains(&guardrails.timezone, now) {
            return WindowVerdict::Open;
        }
        let local = guardrails.timezone.to_datetime(now);
        WindowVerdict::Defer(self.refuse(
            RefusalCode::OutsideWindow,
            format!(
                "disruptive action {} deferred: local time {:02}:{:02} ({}) is outside the maintenance window {window}",
                self.runbook.id,
                local.hour(),
                local.minute(),
                guardrails.timezone_name()
            ),
        ))
    }

    fn check_rate(
        &self,
        guardrails: &Guardrails,
        tx: &MemoryTransaction<'_>,
        now: Timestamp,
    ) -> Result<Option<Refusal>, MemoryError> {
        let cooldown = guardrails.cooldown(self.runbook);
        if let Some(last) = tx.last_executed(self.runbook.id)? {
            let until = last.checked_add(cooldown).unwrap_or(Timestamp::MAX);
            // A last run in the future (the clock went back) is inside the cooldown too.
            if now < until {
                return Ok(Some(self.refuse(
                    RefusalCode::Cooldown,
                    format!(
                        "{} last ran at {last}; its cooldown of {} s lasts until {until}",
                        self.runbook.id,
                        cooldown.as_secs()
                    ),
                )));
            }
        }
        let since = now.checked_sub(BUDGET_PERIOD).unwrap_or(Timestamp::MIN);
        let executed = tx.executed_since(since)?;
        if executed >= u64::from(guardrails.max_actions_per_hour) {
            return Ok(Some(self.refuse(
                RefusalCode::BudgetExceeded,
                format!(
                    "{executed} actions ran in the last hour; the budget is {} per hour",
                    guardrails.max_actions_per_hour
                ),
            )));
        }
        Ok(None)
    }

    fn check_clock(&self, guardrails: &Guardrails, clock: &ClockState) -> Option<Refusal> {
        if !self.disruptive {
            return None;
        }
        let refuse = |why: String| {
            Some(self.refuse(
                RefusalCode::ClockUntrusted,
                format!("disruptive action {} refused: {why}", self.runbook.id),
            ))
        };
        match clock.synchronized {
            Some(true) => {}
            Some(false) => return refuse("time synchronization is lost".to_string()),
            None => return refuse("time synchronization state is unknown".to_string()),
        }
        let skew = guardrails.max_clock_skew;
        match clock.server_offset {
            None => refuse("the server's time is unknown (no check-in answer yet)".to_string()),
            Some(offset) if offset > skew || offset.checked_neg().is_none_or(|it| it > skew) => {
                refuse(format!(
                    "the agent's clock differs from the server's by {} s, more than the allowed {} s",
                    offset.as_secs(),
                    skew.as_secs()
                ))
            }
            Some(_) => None,
        }
    }

    fn approve(self, guardrails: &Guardrails) -> Admission {
        let dry_run_by = if self.fresh.verified.order.dry_run {
            Some("the order")
        } else if guardrails.dry_run {
            Some("orders.dry_run")
        } else {
            None
        };
        let verified = self.fresh.verified;
        let approved = Approved {
            order: verified.order,
            runbook: self.runbook,
            params: self.params,
            order_digest: verified.order_digest,
            keyid: verified.keyid,
            disruptive: self.disruptive,
            dry_run_by,
        };
        if dry_run_by.is_some() {
            Admission::DryRun(approved)
        } else {
            Admission::Execute(approved)
        }
    }
}

/// Loads the pinned order keys; errors name the list index and the file.
fn load_order_keys(paths: &[PathBuf]) -> Result<Vec<VerifyingKey>, GuardrailsError> {
    paths
        .iter()
        .enumerate()
        .map(|(index, path)| {
            crate::evidence::keys::load_public_key(path)
                .map_err(|source| GuardrailsError::Key { index, source })
        })
        .collect()
}

/// A configured duration as a signed one; configured durations are validated far below the
/// range where the conversion could fail, and saturate if they ever were not.
fn signed(duration: Duration) -> SignedDuration {
    SignedDuration::try_from(duration).unwrap_or(SignedDuration::MAX)
}

/// 64 lowercase hex digits: a DSSE key id.
fn is_keyid(text: &str) -> bool {
    text.len() == 64 && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

#[cfg(test)]
mod tests;
