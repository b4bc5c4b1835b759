//! The scheduler, run by the background worker on any number of replicas: it announces
//! upcoming charges, resumes paused subscriptions when their time comes, records the outcome of
//! each subscription's charge (dunning a failure that a retry can fix), and charges every
//! period that is due, exactly once.
//!
//! Exactly once: a due subscription is claimed with a lease (`FOR UPDATE SKIP LOCKED`), and
//! its charge is made by the same code as `POST /charges` under the key
//! `subscription:<id>:<period>:<attempt>`, unique in the charge table. A holder that crashes
//! after the charge and before moving the schedule on leaves its lease to run out; the next
//! claim makes the same charge under the same key, which answers with the charge already made.
//! A period's day is computed from its number alone, so a late or retried payment never moves
//! the anchor.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use time::OffsetDateTime;
use uuid::Uuid;

use super::charges::{self as charge_flow, ChargeRequest};
use super::subscriptions as subs;
use crate::domain::subscription::retryable;
use crate::domain::{MandateStatus, Subscription, SubscriptionStatus};
use crate::error::ApiError;
use crate::state::AppState;
use crate::store::subscriptions::{self as store, Settle};
use crate::store::{charges, mandates};

/// How long the scheduler holds a subscription while it charges it (seconds).
const LEASE_SECS: f64 = 120.0;

/// Outcomes recorded per transaction.
const SETTLE_BATCH: i64 = 500;

/// What one run did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Tally {
    pub announced: u64,
    pub resumed: usize,
    pub settled: usize,
    pub charged: usize,
    /// Scheduled charges whose check went stale while they waited for a slot (Moment or
    /// Postgres slower than the check may be trusted), checked again before their call.
    pub rechecked: usize,
}

/// One pass of the scheduler at the billing clock's now, charging within `budget`: the
/// notices and resumptions due, the outcomes to record, then the charges due.
pub async fn run_once(state: &AppState, budget: Duration) -> sqlx::Result<Tally> {
    let now = state.clock.now();
    let mut tally = prepare(state, now).await?;
    (tally.settled, _) = settle(state, now, None).await?;
    (tally.charged, tally.rechecked, _) = charge_due(state, now, Instant::now() + budget).await?;
    Ok(tally)
}

/// The charging half of [`run_once`], as `serve`'s worker runs it beside [`settle_once`]:
/// the notices and resumptions due, then the charges due within `budget`. Also says whether
/// the budget ran out with charges still due (the next pass should then start at once).
pub async fn charge_once(state: &AppState, budget: Duration) -> sqlx::Result<(Tally, bool)> {
    let now = state.clock.now();
    let mut tally = prepare(state, now).await?;
    let drained;
    (tally.charged, tally.rechecked, drained) =
        charge_due(state, now, Instant::now() + budget).await?;
    Ok((tally, !drained))
}

/// The other half of [`run_once`]: the outcomes there are to record, a batch at a time until
/// none is left or `budget` has run out. Also says whether it ran out first.
pub async fn settle_once(state: &AppState, budget: Duration) -> sqlx::Result<(usize, bool)> {
    settle(state, state.clock.now(), Some(Instant::now() + budget)).await
}

/// Announces the charges coming up within the notice, and resumes what is due to resume.
async fn prepare(state: &AppState, now: OffsetDateTime) -> sqlx::Result<Tally> {
    let mut tally = Tally::default();
    let notice =
        time::Duration::try_from(state.settings.billing.upcoming_notice).unwrap_or_default();
    tally.announced = store::announce_upcoming(&state.db, now + notice).await?;
    for s in store::due_to_resume(&state.db, now, SETTLE_BATCH).await? {
        match subs::resume_row(state, &s).await {
            Ok(_) => tally.resumed += 1,
            Err(e) => tracing::debug!(subscription_id = %s.id, error = %e, "not resumed"),
        }
    }
    Ok(tally)
}

/// Records the outcome of every subscription charge that has one.
/// With a `deadline`, stops after the batch during which it passed; returns the outcomes
/// recorded, and whether it stopped with more perhaps left.
async fn settle(
    state: &AppState,
    now: OffsetDateTime,
    deadline: Option<Instant>,
) -> sqlx::Result<(usize, bool)> {
    let mut done = 0;
    loop {
        if deadline.is_some_and(|d| Instant::now() >= d) {
            return Ok((done, true));
        }
        let mut tx = state.db.begin().await?;
        let outcomes = store::outcomes(&mut *tx, SETTLE_BATCH).await?;
        if outcomes.is_empty() {
            return Ok((done, false));
        }
        // Paid periods (the many on the first of the month) in one statement; the rest one
        // at a time.
        let mut paid = Vec::new();
        for o in &outcomes {
            let s = &o.subscription;
            let failure = o.charge_failure.as_ref().map(|f| &f.0);
            let how = if !matches!(
                s.status,
                SubscriptionStatus::Active | SubscriptionStatus::PastDue
            ) {
                Settle::Detach
            } else if o.charge_status == "succeeded" {
                Settle::Paid {
                    finished: s.next_charge_at.is_none(),
                }
            } else if o.charge_status == "needs_review" {
                // Nobody knows whether Moment took the money: billing stops until an
                // operator has looked and the merchant resumes.
                Settle::End {
                    to: SubscriptionStatus::Paused,
                    exhausted: false,
                }
            } else {
                failed(state, s, o.charge_period, failure, now)
            };
            let review = json!({
                "code": "charge_needs_review",
                "message": "the outcome of the period's charge is not known; see the charge's review_reason",
                "charge_id": s.open_charge_id,
            });
            let failure = if o.charge_status == "needs_review" {
                Some(&review)
            } else {
                failure
            };
            match how {
                Settle::Paid { finished } => paid.push((s.id, finished)),
                how => store::settle(&mut *tx, s.id, &how, failure, now).await?,
            }
        }
        store::settle_paid(&mut *tx, &paid).await?;
        tx.commit().await?;
        done += outcomes.len();
    }
}

/// What a failed charge of `s` leads to: a retry on the dunning schedule (counted from the
/// period's first failure) while a retry can fix it, else the end of dunning.
fn failed(
    state: &AppState,
    s: &Subscription,
    period: Option<i32>,
    failure: Option<&serde_json::Value>,
    now: OffsetDateTime,
) -> Settle {
    let schedule = &state.settings.billing.dunning;
    let failures = s.dunning_failures.max(0) as usize;
    if retryable(failure) && failures < schedule.len() {
        let since = s.dunning_since.unwrap_or(now);
        let wait = time::Duration::try_from(schedule[failures]).unwrap_or_default();
        Settle::Retry {
            period: period.unwrap_or(s.next_period - 1),
            since,
            retry_at: since + wait,
        }
    } else {
        Settle::End {
            to: state.settings.billing.exhausted,
            exhausted: true,
        }
    }
}

/// Chunks of due subscriptions being sent at once (claimed, checked, their calls going out);
/// in all, twice as many may be in flight, the others waiting for their last answers and
/// recording them. A chunk with subscriptions for the one-at-a-time path (retries, a
/// cancellation at period end, terms that count payments) counts as sending until they are
/// all in their slots.
const CHUNKS: usize = 4;

/// Claims and charges what is due, with at most `billing.concurrency` calls to Moment at a
/// time, until nothing is due or the deadline has passed (a charge under way finishes).
/// Subscriptions are claimed in chunks of half the concurrency, several chunks in flight:
/// each chunk records Moment's answers as soon as its own calls are back, so that Moment's
/// webhooks seldom come before the session they are about is recorded, and the next chunk is
/// claimed as soon as one has handed its last call to the slots (not when it has recorded
/// its answers), so that the slots do not wait for Postgres. Returns the charges made, those
/// checked again (see `billing::Slots`), and whether nothing was left to claim (rather than
/// the deadline passing first).
async fn charge_due(
    state: &AppState,
    now: OffsetDateTime,
    deadline: Instant,
) -> sqlx::Result<(usize, usize, bool)> {
    let concurrency = state.settings.billing.concurrency;
    let slots = super::billing::Slots::new(concurrency);
    let chunk = (concurrency / 2).max(1) as i64;
    let mut chunks = tokio::task::JoinSet::new();
    // Each chunk says once when it has handed its calls to the slots (or has ended).
    let (sent_tx, mut sent_rx) = tokio::sync::mpsc::unbounded_channel();
    let mut sending = 0;
    let (mut charged, mut rechecked, mut drained) = (0, 0, false);
    let mut first_error = None;
    loop {
        while sent_rx.try_recv().is_ok() {
            sending -= 1;
        }
        while !drained
            && first_error.is_none()
            && sending < CHUNKS
            && chunks.len() < 2 * CHUNKS
            && Instant::now() < deadline
        {
            let token = Uuid::new_v4();
            // A claim that fails ends the claiming, not the chunks already under way: they
            // are joined below (dropping them would cut their calls and records short).
            let due = match store::claim_due(&state.db, now, chunk, LEASE_SECS, token).await {
                Ok(due) => due,
                Err(e) => {
                    first_error = Some(e);
                    break;
                }
            };
            if due.is_empty() {
                drained = true;
                break;
            }
            let (st, slots) = (state.clone(), Arc::clone(&slots));
            let mut sent = Sending::new(sent_tx.clone());
            sending += 1;
            chunks.spawn(async move { charge_chunk(&st, due, token, &slots, &mut sent).await });
        }
        if chunks.is_empty() {
            break;
        }
        // Every chunk is joined, so that none is cut short by another's error.
        tokio::select! {
            Some(()) = sent_rx.recv() => sending -= 1,
            Some(joined) = chunks.join_next() => match joined {
                Ok(Ok((n, r))) => {
                    charged += n;
                    rechecked += r;
                }
                Ok(Err(e)) => first_error = first_error.or(Some(e)),
                Err(e) => tracing::error!(error = %e, "a chunk of scheduled charges failed"),
            },
            else => break,
        }
    }
    match first_error {
        Some(e) => Err(e),
        None => Ok((charged, rechecked, drained)),
    }
}

/// Says once, to the charging loop, that a chunk has handed all its calls to the slots; if
/// never said, when the chunk ends.
pub struct Sending(Option<tokio::sync::mpsc::UnboundedSender<()>>);

impl Sending {
    fn new(tx: tokio::sync::mpsc::UnboundedSender<()>) -> Self {
        Self(Some(tx))
    }

    pub fn done(&mut self) {
        if let Some(tx) = self.0.take() {
            let _ = tx.send(());
        }
    }
}

impl Drop for Sending {
    fn drop(&mut self) {
        self.done();
    }
}

/// One claimed chunk: its regular periods in one batch, the rest one at a time.
async fn charge_chunk(
    state: &AppState,
    due: Vec<Subscription>,
    token: Uuid,
    slots: &super::billing::Slots,
    sent: &mut Sending,
) -> sqlx::Result<(usize, usize)> {
    let batched = super::billing::charge(state, due, token, slots, sent).await?;
    let mut charged = batched.charged;
    let mut tasks = tokio::task::JoinSet::new();
    for s in batched.left {
        let permit = Arc::clone(&slots.calls).acquire_owned().await;
        let st = state.clone();
        tasks.spawn(async move {
            let _permit = permit;
            charge_one(&st, s, token).await
        });
    }
    sent.done();
    let mut first_error = None;
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok(Ok(true)) => charged += 1,
            Ok(Ok(false)) => {}
            Ok(Err(e)) => first_error = first_error.or(Some(e)),
            Err(e) => tracing::error!(error = %e, "a scheduled charge's task failed"),
        }
    }
    match first_error {
        Some(e) => Err(e),
        None => Ok((charged, batched.rechecked)),
    }
}

/// Charges one claimed subscription's due period (or retry). `true` when a charge was made.
async fn charge_one(state: &AppState, s: Subscription, token: Uuid) -> sqlx::Result<bool> {
    let regular = s.retry_at.is_none();
    let schedule = match s.schedule.0.schedule() {
        Ok(schedule) => schedule,
        Err(e) => {
            tracing::error!(subscription_id = %s.id, error = %e, "a stored schedule does not check");
            store::release(&state.db, s.id, token).await?;
            return Ok(false);
        }
    };
    if regular && s.cancel_at_period_end {
        let why = json!({"code": "cancelled_at_period_end", "message": "cancelled by the merchant at the end of the period"});
        end(
            state,
            &s,
            token,
            None,
            &why,
            SubscriptionStatus::Cancelled,
            false,
        )
        .await?;
        return Ok(false);
    }
    let (period, attempt) = if regular {
        (s.next_period, 0)
    } else {
        (
            s.dunning_period.unwrap_or(s.next_period),
            s.dunning_failures,
        )
    };
    if !regular && charges::period_paid(&state.db, s.id, period).await? {
        tracing::warn!(subscription_id = %s.id, period, "the period was reported paid after its charge failed; no retry is made");
        store::paid_meanwhile(&state.db, s.id, token, s.next_charge_at.is_none()).await?;
        return Ok(false);
    }
    let key = format!("subscription:{}:{period}:{attempt}", s.id);
    let req = ChargeRequest {
        mandate_id: s.mandate_id,
        amount: Some(s.amount),
        currency: Some(s.currency.clone()),
        reference: s.reference.clone(),
        metadata: s.metadata.0.clone(),
        dry_run: false,
        subscription: Some((s.id, period, attempt, token)),
    };
    let next = regular.then(|| {
        let n = period + 1;
        (n, schedule.at(n as u32))
    });
    match charge_flow::create(state, req, Some(key.clone()), key).await {
        Ok(answer) => {
            let Some(charge_id) = answer.body["id"].as_str().and_then(|i| i.parse().ok()) else {
                store::release(&state.db, s.id, token).await?;
                return Ok(false);
            };
            store::charged(&state.db, s.id, token, charge_id, next).await?;
            Ok(true)
        }
        Err(ApiError::MandateTerms(b)) => {
            // Not retried: the terms will say the same. Dunning ends at once.
            let failure = json!({
                "code": "mandate_terms", "term": b.term, "message": b.detail,
                "limit": b.limit, "used": b.used, "requested": b.requested,
            });
            tracing::info!(subscription_id = %s.id, period, term = b.term, "scheduled charge refused by the mandate's terms");
            end(
                state,
                &s,
                token,
                next,
                &failure,
                state.settings.billing.exhausted,
                true,
            )
            .await?;
            Ok(false)
        }
        Err(e) => {
            let active = mandates::by_id(&state.db, s.mandate_id)
                .await?
                .is_some_and(|m| m.status == MandateStatus::Active);
            if !active {
                let failure = json!({"code": "mandate_not_active", "message": "the mandate is no longer active"});
                end(
                    state,
                    &s,
                    token,
                    next,
                    &failure,
                    SubscriptionStatus::Cancelled,
                    false,
                )
                .await?;
            } else {
                tracing::warn!(subscription_id = %s.id, period, error = %e, "scheduled charge not made; will retry");
                store::release(&state.db, s.id, token).await?;
            }
            Ok(false)
        }
    }
}

/// Ends dunning for a period no charge could be made for: the schedule moves past it and the
/// subscription becomes `to`.
async fn end(
    state: &AppState,
    s: &Subscription,
    token: Uuid,
    next: Option<(i32, Option<OffsetDateTime>)>,
    failure: &serde_json::Value,
    to: SubscriptionStatus,
    exhausted: bool,
) -> sqlx::Result<()> {
    let now = state.clock.now();
    store::end_period(&state.db, s.id, token, next, to, failure, exhausted, now).await?;
    Ok(())
}

/// What a fast-forward did.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct Advanced {
    /// The moments the clock stopped at on the way, each one's work done before the next.
    pub steps: usize,
    pub charged: usize,
    pub settled: usize,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub now: OffsetDateTime,
}

/// How long one step of a fast-forward may wait for its charges to settle.
const STEP_LIMIT: Duration = Duration::from_secs(120);

/// Moves the test clock forward to `to`, stopping at every moment the scheduler has work
/// (a charge due, a retry, a resumption, a notice) and doing it (charges made, their
/// outcomes back from Moment and recorded) before going on: in order, whatever the distance.
pub async fn advance(state: &AppState, to: OffsetDateTime) -> Result<Advanced, ApiError> {
    if !state.clock.is_test() {
        return Err(ApiError::NotFound("test clock"));
    }
    let notice = state.settings.billing.upcoming_notice.as_secs_f64();
    let mut out = Advanced {
        steps: 0,
        charged: 0,
        settled: 0,
        now: state.clock.now(),
    };
    loop {
        quiesce(state, &mut out).await?;
        let now = state.clock.now();
        match store::next_wakeup(&state.db, now, notice).await? {
            Some(t) if t <= to => {
                state.clock.advance_to(t);
                out.steps += 1;
            }
            _ => {
                state.clock.advance_to(to);
                quiesce(state, &mut out).await?;
                out.now = state.clock.now();
                return Ok(out);
            }
        }
    }
}

/// Runs the scheduler until nothing is due, in flight or waiting to be recorded.
async fn quiesce(state: &AppState, out: &mut Advanced) -> Result<(), ApiError> {
    let deadline = Instant::now() + STEP_LIMIT;
    loop {
        let t = run_once(state, STEP_LIMIT).await?;
        out.charged += t.charged;
        out.settled += t.settled;
        let b = store::backlog(&state.db, state.clock.now()).await?;
        if b.in_flight == 0 && b.to_settle == 0 && b.due == 0 {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(ApiError::Conflict(format!(
                "the clock stopped: {} charges are still in flight after {} s",
                b.in_flight,
                STEP_LIMIT.as_secs()
            )));
        }
        tokio::time::sleep(Duration::from_millis(if t.charged + t.settled > 0 {
            0
        } else {
            10
        }))
        .await;
    }
}
