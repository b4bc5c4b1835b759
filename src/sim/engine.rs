//! The simulator's state and what changes it: sessions, saved payment methods, payments,
//! idempotency records and webhook deliveries. One mutex guards it all; nothing awaits while
//! holding it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering as AtomicOrdering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::Problem;
use super::cards::{self, Behaviour, LATER_CHARGE_DECLINE, LATER_INSUFFICIENT_FUNDS, LATER_LOST};
use super::consent::{self, Counted};
use super::model::{self, Kind, Outcome, SavedMethod, Session, Status, new_id, now};
use super::validate::NewSession;
use super::webhooks::{Delivery, DeliveryState};
use crate::clock::Clock;
use crate::domain::terms::Terms;
use crate::moment::signature::WebhookSecret;

/// How long Moment keeps an idempotency key.
pub const IDEMPOTENCY_TTL: Duration = Duration::from_secs(24 * 60 * 60);

/// Faults injected into the API and the webhooks. Every rate is a share between 0 and 1.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Faults {
    /// Milliseconds each API call takes (a create spends them with its idempotency key in
    /// flight; a replay or a conflict answers at once).
    pub latency_ms: u64,
    /// Share of API calls answered `503` without taking effect.
    pub error_rate: f64,
    /// Share of API calls that take effect but whose answer is held back for `hang_ms`, so
    /// the caller times out not knowing the outcome.
    pub timeout_rate: f64,
    pub hang_ms: u64,
    /// Share of webhook messages delivered twice (same `webhook-id`).
    pub duplicate_rate: f64,
    /// Each delivery waits a random 0..this before its first attempt, which reorders them.
    pub reorder_window_ms: u64,
    /// Deliveries wait until `POST /_sim/webhooks/release`.
    pub hold_webhooks: bool,
}

impl Default for Faults {
    fn default() -> Self {
        Self {
            latency_ms: 0,
            error_rate: 0.0,
            timeout_rate: 0.0,
            hang_ms: 30_000,
            duplicate_rate: 0.0,
            reorder_window_ms: 0,
            hold_webhooks: false,
        }
    }
}

impl Faults {
    /// Refuses rates outside 0..=1.
    pub fn check(&self) -> Result<(), String> {
        for (name, rate) in [
            ("error_rate", self.error_rate),
            ("timeout_rate", self.timeout_rate),
            ("duplicate_rate", self.duplicate_rate),
        ] {
            if !(0.0..=1.0).contains(&rate) {
                return Err(format!("{name} must be between 0 and 1"));
            }
        }
        if self.error_rate + self.timeout_rate > 1.0 {
            return Err("error_rate + timeout_rate must not exceed 1".into());
        }
        Ok(())
    }
}

/// How the simulator is set up.
pub struct SimConfig {
    /// The API key callers must present as `Authorization: Bearer …`.
    pub secret_key: String,
    pub webhook_secret: WebhookSecret,
    /// Where webhooks go; none are sent without one (they are still recorded).
    pub webhook_url: Option<String>,
    /// Base URL for `session_url` (the checkout pages); the listen address when `None`.
    pub public_url: Option<String>,
    /// How long a `next_in_series` charge stays `active` before it settles.
    pub settle_delay: Duration,
    /// How long an unfinished checkout stays open before it expires.
    pub session_expiry: Duration,
    /// Waits before the 2nd, 3rd… delivery attempt; the message fails after the last.
    pub webhook_retry_schedule: Vec<Duration>,
    /// How long one delivery attempt may take.
    pub webhook_timeout: Duration,
    /// Deliveries in flight at once.
    pub webhook_concurrency: usize,
    /// `400` for a create without `Idempotency-Key` (Moment's behaviour there is unknown).
    pub require_idempotency_key: bool,
    pub faults: Faults,
    /// What "now" is for the mandates' terms (shared with the service under a test clock).
    pub clock: Clock,
}

impl SimConfig {
    /// Defaults for a simulator with these credentials: 2 s settlement, 30 min expiry, and
    /// the Svix-like retry schedule `moment-api.md` §11.4 infers.
    pub fn new(secret_key: &str, webhook_secret: WebhookSecret) -> Self {
        Self {
            secret_key: secret_key.into(),
            webhook_secret,
            webhook_url: None,
            public_url: None,
            settle_delay: Duration::from_secs(2),
            session_expiry: Duration::from_secs(30 * 60),
            webhook_retry_schedule: [5, 300, 1800, 7200, 18000, 36000, 36000]
                .into_iter()
                .map(Duration::from_secs)
                .collect(),
            webhook_timeout: Duration::from_secs(15),
            webhook_concurrency: 64,
            require_idempotency_key: false,
            faults: Faults::default(),
            clock: Clock::real(),
        }
    }
}

struct SessionRecord {
    session: Session,
    ceiling: model::Ceiling,
    terms: Option<Arc<Terms>>,
    /// The card paid with; for `next_in_series`, the saved method's.
    behaviour: Option<Behaviour>,
    last4: String,
}

pub(super) enum Idempotency {
    InFlight {
        hash: [u8; 32],
    },
    Done {
        hash: [u8; 32],
        status: u16,
        body: Value,
        at: Instant,
    },
}

/// What a request under an idempotency key may do.
pub(super) enum Begin {
    Proceed,
    Replay { status: u16, body: Value },
    Mismatch,
    InFlight,
}

#[derive(Default)]
pub(super) struct Inner {
    sessions: HashMap<String, SessionRecord>,
    order: Vec<String>,
    checkouts: HashMap<String, String>,
    payments: HashMap<String, Value>,
    methods: HashMap<String, SavedMethod>,
    idempotency: HashMap<String, Idempotency>,
    pub(super) deliveries: Vec<Delivery>,
    pub(super) held: Vec<usize>,
}

/// Counts for a test or benchmark to assert on.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Stats {
    pub sessions: usize,
    /// Payments that succeeded, all session types.
    pub payments_succeeded: usize,
    pub payments_failed: usize,
    pub webhooks: usize,
    pub webhooks_delivered: usize,
    pub webhooks_pending: usize,
    pub webhooks_failed: usize,
    pub webhooks_held: usize,
    /// Answers to API calls made to wait out a latency (the `latency_ms` fault), and the
    /// microseconds they came after it was up, in all: the simulator's own delay, which on a
    /// machine it shares with the service under load is not Moment's.
    pub latency_answers: u64,
    pub latency_overrun_micros: u64,
    /// API calls that reached the simulator's handlers since it started (authorized or not,
    /// faults included).
    pub calls: u64,
    /// The most API calls in flight at once since the simulator started: from when a call
    /// arrives until it is answered, or until the simulator sees its caller gone.
    pub calls_in_flight_max: u64,
}

/// The simulator. Cheap to share as `Arc<Sim>`.
pub struct Sim {
    me: Weak<Sim>,
    pub(super) config: SimConfig,
    /// Base URL the checkout pages are reached at, without a trailing slash.
    pub(super) public_url: String,
    faults: Mutex<Faults>,
    pub(super) inner: Mutex<Inner>,
    pub(super) http: reqwest::Client,
    pub(super) delivery_slots: tokio::sync::Semaphore,
    /// See `Stats::latency_answers` and `Stats::latency_overrun_micros`.
    latency_answers: AtomicU64,
    latency_overrun_micros: AtomicU64,
    /// See `Stats::calls` and `Stats::calls_in_flight_max`.
    calls: AtomicU64,
    calls_in_flight: AtomicU64,
    calls_in_flight_max: AtomicU64,
}

/// One API call in flight, from its arrival until it is dropped (answered, or its caller
/// gone).
pub(super) struct InFlight<'a>(&'a Sim);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.calls_in_flight.fetch_sub(1, AtomicOrdering::Relaxed);
    }
}

/// Why a checkout could not be settled.
#[derive(Debug, PartialEq, Eq)]
pub enum PayError {
    NotFound,
    NotCheckout,
    NotActive(Status),
    UnknownCard,
}

impl From<PayError> for Problem {
    fn from(e: PayError) -> Self {
        match e {
            PayError::NotFound => Problem::not_found("payment session"),
            PayError::NotCheckout => Problem::new(
                409,
                "conflict",
                "Conflict",
                "next_in_series sessions have no checkout",
            ),
            PayError::NotActive(s) => Problem::new(
                409,
                "conflict",
                "Conflict",
                format!("the session is {} and can no longer change", json!(s)),
            ),
            PayError::UnknownCard => Problem::new(
                400,
                "invalid-request",
                "Invalid request",
                "not a test card: see GET /_sim/cards",
            ),
        }
    }
}

/// The session behind a checkout that can still change.
fn open_checkout<'a>(
    inner: &'a mut Inner,
    session_id: &str,
) -> Result<&'a mut SessionRecord, PayError> {
    let record = inner
        .sessions
        .get_mut(session_id)
        .ok_or(PayError::NotFound)?;
    if record.session.kind == Kind::NextInSeries {
        return Err(PayError::NotCheckout);
    }
    if record.session.status != Status::Active {
        return Err(PayError::NotActive(record.session.status));
    }
    Ok(record)
}

impl Sim {
    pub fn new(config: SimConfig, public_url: String) -> anyhow::Result<Arc<Self>> {
        config.faults.check().map_err(anyhow::Error::msg)?;
        let http = reqwest::Client::builder()
            .timeout(config.webhook_timeout)
            .user_agent("moment-sim")
            .build()?;
        Ok(Arc::new_cyclic(|me| Self {
            me: me.clone(),
            faults: Mutex::new(config.faults.clone()),
            delivery_slots: tokio::sync::Semaphore::new(config.webhook_concurrency.max(1)),
            latency_answers: AtomicU64::new(0),
            latency_overrun_micros: AtomicU64::new(0),
            calls: AtomicU64::new(0),
            calls_in_flight: AtomicU64::new(0),
            calls_in_flight_max: AtomicU64::new(0),
            public_url: public_url.trim_end_matches('/').to_owned(),
            config,
            inner: Mutex::new(Inner::default()),
            http,
        }))
    }

    /// This simulator, for tasks that outlive a call.
    pub(super) fn me(&self) -> Option<Arc<Sim>> {
        self.me.upgrade()
    }

    pub(super) fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn faults(&self) -> Faults {
        self.faults
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn set_faults(&self, faults: Faults) -> Result<(), String> {
        faults.check()?;
        *self.faults.lock().unwrap_or_else(|e| e.into_inner()) = faults;
        Ok(())
    }

    /// Now, by the simulator's clock.
    pub fn today(&self) -> time::OffsetDateTime {
        self.config.clock.now()
    }

    pub fn webhook_secret(&self) -> &WebhookSecret {
        &self.config.webhook_secret
    }

    pub(super) fn authorized(&self, header: Option<&str>) -> bool {
        let Some(token) = header.and_then(|h| h.strip_prefix("Bearer ")) else {
            return false;
        };
        subtle::ConstantTimeEq::ct_eq(token.as_bytes(), self.config.secret_key.as_bytes()).into()
    }

    fn mode(&self) -> &'static str {
        if self.config.secret_key.starts_with("sk_test_") {
            "test"
        } else {
            "live"
        }
    }

    /// The request hash idempotency compares: the canonical JSON when the body parses.
    pub(super) fn request_hash(body: &[u8]) -> [u8; 32] {
        match serde_json::from_slice::<Value>(body) {
            Ok(v) => Sha256::digest(v.to_string().as_bytes()).into(),
            Err(_) => Sha256::digest(body).into(),
        }
    }

    pub(super) fn idempotency_begin(&self, key: &str, hash: [u8; 32]) -> Begin {
        let mut inner = self.lock();
        match inner.idempotency.get(key) {
            Some(Idempotency::Done { at, .. }) if at.elapsed() > IDEMPOTENCY_TTL => {}
            Some(Idempotency::Done {
                hash: h,
                status,
                body,
                ..
            }) => {
                return if *h == hash {
                    Begin::Replay {
                        status: *status,
                        body: body.clone(),
                    }
                } else {
                    Begin::Mismatch
                };
            }
            Some(Idempotency::InFlight { hash: h }) => {
                return if *h == hash {
                    Begin::InFlight
                } else {
                    Begin::Mismatch
                };
            }
            None => {}
        }
        inner
            .idempotency
            .insert(key.to_owned(), Idempotency::InFlight { hash });
        Begin::Proceed
    }

    pub(super) fn idempotency_finish(&self, key: &str, hash: [u8; 32], status: u16, body: &Value) {
        self.lock().idempotency.insert(
            key.to_owned(),
            Idempotency::Done {
                hash,
                status,
                body: body.clone(),
                at: Instant::now(),
            },
        );
    }

    /// Forgets an in-flight key whose request never finished (so a retry may proceed).
    pub(super) fn idempotency_abandon(&self, key: &str) {
        let mut inner = self.lock();
        if matches!(
            inner.idempotency.get(key),
            Some(Idempotency::InFlight { .. })
        ) {
            inner.idempotency.remove(key);
        }
    }

    /// Creates a session from a checked request: `201` with the session, or a problem.
    pub(super) fn create(self: &Arc<Self>, req: NewSession) -> Result<Value, Problem> {
        let at = now();
        let mut inner = self.lock();
        let id = new_id("ps_", 14);
        let mut record = SessionRecord {
            session: Session {
                id: id.clone(),
                kind: req.kind,
                status: Status::Active,
                payment_outcome: Outcome::NotStarted,
                payment_status: "unpaid",
                amount: req.amount,
                currency: req.currency.clone(),
                customer_id: None,
                payment_method_id: None,
                payment_id: None,
                checkout_session_id: None,
                session_url: None,
                return_url: req.return_url.clone(),
                last_payment_error: None,
                mode: self.mode(),
                external_reference: req.external_reference.clone(),
                metadata: req.metadata.clone(),
                created_at: at.clone(),
                updated_at: at,
            },
            ceiling: req.ceiling,
            terms: req.terms.clone().map(Arc::new),
            behaviour: None,
            last4: String::new(),
        };
        match req.kind {
            Kind::OneTime | Kind::FirstInSeries => {
                let checkout = new_id("ckt", 14);
                record.session.session_url =
                    Some(format!("{}/checkout/{checkout}", self.public_url));
                record.session.checkout_session_id = Some(checkout.clone());
                if req.kind == Kind::FirstInSeries {
                    record.session.customer_id = Some(new_id("cus_", 14));
                }
                inner.checkouts.insert(checkout, id.clone());
                let sim = Arc::clone(self);
                let expire_id = id.clone();
                let expiry = self.config.session_expiry;
                tokio::spawn(async move {
                    tokio::time::sleep(expiry).await;
                    let _ = sim.end_checkout(&expire_id, Status::Expired);
                });
            }
            Kind::NextInSeries => {
                let (customer, method_id) = req.charge_of.clone().unwrap_or_default();
                let method = inner
                    .methods
                    .get(&method_id)
                    .filter(|m| m.customer_id == customer)
                    .ok_or_else(|| {
                        Problem::new(
                            422,
                            "invalid-payment-method",
                            "Unprocessable request",
                            "options.payment_method is not a payment method saved for options.customer by a completed first_in_series",
                        )
                    })?;
                if method.currency != req.currency {
                    return Err(Problem::new(
                        422,
                        "mandate-constraint",
                        "Unprocessable request",
                        format!("the mandate is in {}", method.currency),
                    ));
                }
                if !method.ceiling.allows(req.amount) {
                    return Err(Problem::new(
                        422,
                        "mandate-amount",
                        "Mandate constraint violated",
                        "the amount is outside what the mandate allows",
                    ));
                }
                if let Some(terms) = &method.terms {
                    // Only terms that count payments need them counted.
                    let payments = if terms.counts() {
                        &method.payments[..]
                    } else {
                        &[]
                    };
                    let counted: Vec<Counted> = payments
                        .iter()
                        .filter(|(_, _, session)| {
                            session.as_ref().is_none_or(|s| {
                                inner.sessions.get(s).is_some_and(|r| {
                                    matches!(
                                        r.session.payment_outcome,
                                        Outcome::Paid | Outcome::Pending
                                    )
                                })
                            })
                        })
                        .map(|&(at, amount, _)| Counted { at, amount })
                        .collect();
                    if let Some(p) = consent::refusal(terms, &counted, req.amount, self.today()) {
                        return Err(p);
                    }
                }
                record.behaviour = Some(method.behaviour);
                record.last4 = method.last4.clone();
                let (today, amount, session) = (self.today(), req.amount, id.clone());
                if let Some(m) = inner
                    .methods
                    .get_mut(&method_id)
                    .filter(|m| m.terms.as_ref().is_some_and(|t| t.counts()))
                {
                    m.payments.push((today, amount, Some(session)));
                }
                record.session.customer_id = Some(customer);
                record.session.payment_method_id = Some(method_id);
                record.session.payment_id = Some(new_id("pay_", 21));
                record.session.set(Status::Active, Outcome::Pending);
                let processing = model::payment(&record.session, "processing", &record.last4, None);
                if let Some(pay) = &record.session.payment_id {
                    inner.payments.insert(pay.clone(), processing);
                }
                let sim = Arc::clone(self);
                let settle_id = id.clone();
                let delay = self.config.settle_delay;
                tokio::spawn(async move {
                    tokio::time::sleep(delay).await;
                    sim.settle_charge(&settle_id);
                });
            }
        }
        let data = serde_json::to_value(&record.session).unwrap_or_default();
        inner.order.push(id.clone());
        inner.sessions.insert(id, record);
        self.emit(&mut inner, "payment_session.created", data.clone());
        Ok(data)
    }

    pub fn session(&self, id: &str) -> Option<Value> {
        self.lock()
            .sessions
            .get(id)
            .and_then(|r| serde_json::to_value(&r.session).ok())
    }

    /// Every session, oldest first.
    pub fn sessions(&self) -> Vec<Value> {
        let inner = self.lock();
        inner
            .order
            .iter()
            .filter_map(|id| inner.sessions.get(id))
            .filter_map(|r| serde_json::to_value(&r.session).ok())
            .collect()
    }

    pub fn payment(&self, id: &str) -> Option<Value> {
        self.lock().payments.get(id).cloned()
    }

    /// The session a checkout page belongs to.
    pub(super) fn session_of_checkout(&self, checkout: &str) -> Option<Value> {
        let inner = self.lock();
        let id = inner.checkouts.get(checkout)?;
        inner
            .sessions
            .get(id)
            .and_then(|r| serde_json::to_value(&r.session).ok())
    }

    /// The terms a checkout's customer is asked to consent to.
    pub(super) fn checkout_terms(&self, checkout: &str) -> Option<Arc<Terms>> {
        let inner = self.lock();
        let id = inner.checkouts.get(checkout)?;
        inner.sessions.get(id).and_then(|r| r.terms.clone())
    }

    pub(super) fn checkout_session_id(&self, checkout: &str) -> Option<String> {
        self.lock().checkouts.get(checkout).cloned()
    }

    /// Pays a checkout with a test card, as the hosted page does. A declined card leaves the
    /// session `active` (the customer may try again) with `last_payment_error` set.
    pub fn pay(&self, session_id: &str, card_number: &str) -> Result<Value, PayError> {
        let card = cards::find(card_number).ok_or(PayError::UnknownCard)?;
        let mut inner = self.lock();
        let record = open_checkout(&mut inner, session_id)?;
        let at = now();
        let last4 = card.number[card.number.len() - 4..].to_owned();
        record.last4 = last4.clone();
        record.session.payment_id = Some(new_id("pay_", 21));
        let mut events = Vec::new();
        match card.behaviour {
            Behaviour::Declines(decline) => {
                let error = decline.to_json(&at);
                record.session.last_payment_error = Some(error.clone());
                record.session.set(Status::Active, Outcome::NotStarted);
                let payment = model::payment(&record.session, "failed", &last4, Some(&error));
                events.push(("payment.attempt_failed", payment));
                events.push((
                    "payment_session.updated",
                    serde_json::to_value(&record.session).unwrap_or_default(),
                ));
            }
            Behaviour::Succeeds
            | Behaviour::DeclinesLaterCharges
            | Behaviour::LaterInsufficientFunds
            | Behaviour::LaterLost => {
                record.behaviour = Some(card.behaviour);
                record.session.last_payment_error = None;
                let outcome = if record.session.amount == 0 {
                    Outcome::PaymentMethodVerified
                } else {
                    Outcome::Paid
                };
                if record.session.kind == Kind::FirstInSeries {
                    record.session.payment_method_id = Some(new_id("pmt_", 14));
                }
                record.session.set(Status::Completed, outcome);
                let payment = model::payment(&record.session, "succeeded", &last4, None);
                let session = serde_json::to_value(&record.session).unwrap_or_default();
                events.push(("payment.succeeded", payment));
                events.push(("payment_session.updated", session.clone()));
                events.push(("payment_session.completed", session));
                if let (Some(pm), Some(customer)) = (
                    record.session.payment_method_id.clone(),
                    record.session.customer_id.clone(),
                ) {
                    let saved = SavedMethod {
                        id: pm.clone(),
                        customer_id: customer,
                        currency: record.session.currency.clone(),
                        ceiling: record.ceiling,
                        terms: record.terms.clone(),
                        payments: if record.session.amount > 0 {
                            vec![(self.today(), record.session.amount, None)]
                        } else {
                            Vec::new()
                        },
                        behaviour: card.behaviour,
                        funded: false,
                        last4,
                    };
                    inner.methods.insert(pm, saved);
                }
            }
        }
        self.finish(&mut inner, session_id, events)
    }

    /// Ends an unfinished checkout as `expired` or `cancelled`.
    pub fn end_checkout(&self, session_id: &str, to: Status) -> Result<Value, PayError> {
        let mut inner = self.lock();
        let record = open_checkout(&mut inner, session_id)?;
        record.session.set(to, Outcome::Unpaid);
        let session = serde_json::to_value(&record.session).unwrap_or_default();
        self.finish(
            &mut inner,
            session_id,
            vec![("payment_session.updated", session)],
        )
    }

    /// Settles a `next_in_series` charge by its saved card's behaviour.
    fn settle_charge(&self, session_id: &str) {
        let mut inner = self.lock();
        let Some(record) = inner.sessions.get(session_id) else {
            return;
        };
        if record.session.status != Status::Active {
            return;
        }
        let funded = record
            .session
            .payment_method_id
            .as_ref()
            .and_then(|pm| inner.methods.get(pm))
            .is_some_and(|m| m.funded);
        let Some(record) = inner.sessions.get_mut(session_id) else {
            return;
        };
        let decline = match record.behaviour {
            Some(Behaviour::DeclinesLaterCharges) | Some(Behaviour::Declines(_)) => {
                Some(LATER_CHARGE_DECLINE)
            }
            Some(Behaviour::LaterInsufficientFunds) if !funded => Some(LATER_INSUFFICIENT_FUNDS),
            Some(Behaviour::LaterLost) => Some(LATER_LOST),
            _ => None,
        };
        let (status, outcome, error) = match decline {
            Some(d) => ("failed", Outcome::Unpaid, Some(d.to_json(&now()))),
            None => ("succeeded", Outcome::Paid, None),
        };
        record.session.last_payment_error = error.clone();
        record.session.set(Status::Completed, outcome);
        let payment = model::payment(&record.session, status, &record.last4, error.as_ref());
        let session = serde_json::to_value(&record.session).unwrap_or_default();
        let payment_event = if status == "succeeded" {
            "payment.succeeded"
        } else {
            "payment.failed"
        };
        let _ = self.finish(
            &mut inner,
            session_id,
            vec![
                (payment_event, payment),
                ("payment_session.completed", session),
            ],
        );
    }

    /// Records the payment a change produced and sends its events.
    fn finish(
        &self,
        inner: &mut Inner,
        session_id: &str,
        events: Vec<(&'static str, Value)>,
    ) -> Result<Value, PayError> {
        for (kind, data) in events {
            if kind.starts_with("payment.")
                && let Some(id) = data["id"].as_str()
            {
                inner.payments.insert(id.to_owned(), data.clone());
            }
            self.emit(inner, kind, data);
        }
        inner
            .sessions
            .get(session_id)
            .and_then(|r| serde_json::to_value(&r.session).ok())
            .ok_or(PayError::NotFound)
    }

    /// Queues an event for delivery (twice under the duplicate fault; held under the hold
    /// fault).
    fn emit(&self, inner: &mut Inner, kind: &str, data: Value) {
        let faults = self.faults();
        let session_id = if kind.starts_with("payment_session.") {
            data["id"].as_str().map(str::to_owned)
        } else {
            None
        };
        let body = json!({"id": new_id("evt_", 24), "type": kind, "data": data});
        let webhook_id = new_id("msg_", 24);
        let copies = if fastrand::f64() < faults.duplicate_rate {
            2
        } else {
            1
        };
        for copy in 0..copies {
            let state = if self.config.webhook_url.is_none() {
                DeliveryState::NoEndpoint
            } else if faults.hold_webhooks {
                DeliveryState::Held
            } else {
                DeliveryState::Pending
            };
            let index = inner.deliveries.len();
            inner.deliveries.push(Delivery {
                index,
                webhook_id: webhook_id.clone(),
                event_id: body["id"].as_str().unwrap_or_default().to_owned(),
                event_type: kind.to_owned(),
                session_id: session_id.clone(),
                duplicate: copy > 0,
                state,
                attempts: Vec::new(),
                payload: body.clone(),
            });
            match state {
                DeliveryState::Held => inner.held.push(index),
                DeliveryState::Pending => self.schedule(index, faults.reorder_window_ms),
                _ => {}
            }
        }
    }

    /// Sends held deliveries, newest first (so they also arrive out of order). Returns how
    /// many were released.
    pub fn release_held(&self) -> usize {
        let held: Vec<usize> = {
            let mut inner = self.lock();
            let held = std::mem::take(&mut inner.held);
            for &i in &held {
                inner.deliveries[i].state = DeliveryState::Pending;
            }
            held
        };
        let window = self.faults().reorder_window_ms;
        for &i in held.iter().rev() {
            self.schedule(i, window);
        }
        held.len()
    }

    /// Funds a `LaterInsufficientFunds` card's account: its later charges are paid from now.
    /// `false` when no such payment method exists.
    pub fn fund(&self, payment_method_id: &str) -> bool {
        match self.lock().methods.get_mut(payment_method_id) {
            Some(m) => {
                m.funded = true;
                true
            }
            None => false,
        }
    }

    pub fn deliveries(&self) -> Vec<Delivery> {
        self.lock().deliveries.clone()
    }

    /// Waits out `latency` from when the request `arrived` (see `timer`), and counts the
    /// answer and by how much it overran.
    pub(super) async fn wait_out(&self, arrived: Instant, latency: Duration) {
        if latency.is_zero() {
            return;
        }
        super::timer::sleep_until(arrived + latency).await;
        let over = arrived.elapsed().saturating_sub(latency);
        self.latency_answers.fetch_add(1, AtomicOrdering::Relaxed);
        self.latency_overrun_micros
            .fetch_add(over.as_micros() as u64, AtomicOrdering::Relaxed);
    }

    /// Counts an API call in flight while the returned guard lives.
    pub(super) fn call_arrives(&self) -> InFlight<'_> {
        self.calls.fetch_add(1, AtomicOrdering::Relaxed);
        let now = self.calls_in_flight.fetch_add(1, AtomicOrdering::Relaxed) + 1;
        self.calls_in_flight_max
            .fetch_max(now, AtomicOrdering::Relaxed);
        InFlight(self)
    }

    pub fn stats(&self) -> Stats {
        let inner = self.lock();
        let mut s = Stats {
            sessions: inner.sessions.len(),
            webhooks: inner.deliveries.len(),
            latency_answers: self.latency_answers.load(AtomicOrdering::Relaxed),
            latency_overrun_micros: self.latency_overrun_micros.load(AtomicOrdering::Relaxed),
            calls: self.calls.load(AtomicOrdering::Relaxed),
            calls_in_flight_max: self.calls_in_flight_max.load(AtomicOrdering::Relaxed),
            ..Stats::default()
        };
        for p in inner.payments.values() {
            match p["status"].as_str() {
                Some("succeeded") => s.payments_succeeded += 1,
                Some("failed") => s.payments_failed += 1,
                _ => {}
            }
        }
        for d in &inner.deliveries {
            match d.state {
                DeliveryState::Delivered => s.webhooks_delivered += 1,
                DeliveryState::Pending => s.webhooks_pending += 1,
                DeliveryState::Failed => s.webhooks_failed += 1,
                DeliveryState::Held => s.webhooks_held += 1,
                DeliveryState::NoEndpoint => {}
            }
        }
        s
    }
}
