//! Background work, safe on several replicas at once (work is claimed with leases and
//! `FOR UPDATE SKIP LOCKED`):
//! - resend charges whose outcome at Moment is unknown, under the same Moment key, one claimed
//!   at a time, within a time budget; close those Moment's idempotency window left behind;
//! - apply webhook events that arrived before their session was known, page by page; give up
//!   on those still unknown after 72 h, and delete settled ones past their retention;
//! - send the merchant its events: fan new ones out to the endpoints, send what is due;
//! - reconcile what no webhook settled: fetch the session of pending mandates and processing
//!   charges quiet for `reconcile_after`, and expire mandates that never got a session.
//! - bill subscriptions (`workflow::scheduler`): charge what is due, record the outcomes.
//!
//! `serve` runs the scheduler's charges, their outcomes and the rest as three loops side by
//! side (see [`run`]); [`run_once`] does all of it once, in order.

use std::sync::Arc;
use std::time::{Duration, Instant};

use time::OffsetDateTime;
use tokio::sync::watch;
use uuid::Uuid;

use crate::db;
use crate::state::AppState;
use crate::store::{charges, mandates, webhook_events};
use crate::workflow::{charges as charge_flow, events, outbound, scheduler};

/// Charges resent per run at most.
const BATCH: usize = 50;

/// How long one run may spend on each stage that talks to Moment (resends, reconciliation):
/// a slow Moment cannot hold deferred events, reconciliation and expiry back for long. A send
/// under way when the budget runs out finishes first.
pub const STAGE_BUDGET: Duration = Duration::from_secs(20);

/// A mandate with no Moment session is expired after this long: Moment forgets idempotency
/// keys after 24 h, so a retry could no longer reuse the first attempt.
pub const SESSIONLESS_EXPIRY_SECS: f64 = 24.0 * 3600.0;

/// A deferred webhook event whose session is still unknown after this long is given up
/// (outcome `orphaned`): every session of ours is recorded well within it.
pub const ORPHAN_AFTER_SECS: f64 = 72.0 * 3600.0;

/// Old webhook events deleted per run at most.
const RETENTION_BATCH: i64 = 1000;

/// What one run did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Tally {
    pub charges_resent: usize,
    /// Pending charges Moment's idempotency window left behind (failed or needs review).
    pub charges_closed: u64,
    pub events_applied: usize,
    /// Mandates and charges moved by a fetched session.
    pub reconciled: usize,
    pub mandates_expired: u64,
    pub events_orphaned: u64,
    pub events_deleted: u64,
    /// Deliveries of new events to the merchant's endpoints, created (the fan-out).
    pub deliveries_made: u64,
    /// Attempts of webhooks out that the endpoint took, and that it did not.
    pub webhooks_delivered: usize,
    pub webhooks_failed: usize,
    /// Events of the log past `EVENT_RETENTION_DAYS`, deleted.
    pub log_events_deleted: u64,
    /// The scheduler's run: charges made for subscriptions, outcomes recorded.
    pub scheduled_charges: usize,
    pub subscriptions_settled: usize,
}

/// One pass over the pending work: everything `serve`'s loops do (see [`run`]), one after
/// the other.
pub async fn run_once(state: &AppState) -> sqlx::Result<Tally> {
    let mut tally = Tally::default();
    resend(state, &mut tally).await?;
    // The scheduler's failure does not hold the other stages back.
    match scheduler::run_once(state, STAGE_BUDGET).await {
        Ok(scheduled) => {
            tally.scheduled_charges = scheduled.charged;
            tally.subscriptions_settled = scheduled.settled;
        }
        Err(e) => tracing::warn!(error = %e, "scheduler run failed; will retry"),
    }
    upkeep(state, &mut tally).await?;
    Ok(tally)
}

/// Resends the charges whose outcome at Moment is unknown, and closes those its idempotency
/// window left behind.
async fn resend(state: &AppState, tally: &mut Tally) -> sqlx::Result<()> {
    // One charge at a time: each lease is taken right before its send, never held while
    // other sends go first.
    let deadline = Instant::now() + STAGE_BUDGET;
    while tally.charges_resent < BATCH && Instant::now() < deadline {
        let token = Uuid::new_v4();
        let lease = charge_flow::send_lease_secs(state);
        let window = charge_flow::RESEND_WINDOW_SECS;
        let Some(charge) = charges::claim_next_due(&state.db, lease, window, token).await? else {
            break;
        };
        charge_flow::send(state, charge, token).await?;
        tally.charges_resent += 1;
    }
    tally.charges_closed = charges::close_past_window(
        &state.db,
        charge_flow::RESEND_WINDOW_SECS,
        &charge_flow::reason_of(charge_flow::WINDOW_UNSENT),
        &charge_flow::reason_of(charge_flow::WINDOW_UNKNOWN),
    )
    .await?;
    Ok(())
}

/// Deferred webhook events, reconciliation, expiry, retention, and the merchant's webhooks.
async fn upkeep(state: &AppState, tally: &mut Tally) -> sqlx::Result<()> {
    tally.events_applied = events::apply_deferred(&state.db, None).await?;
    tally.reconciled = reconcile(state).await?;
    tally.mandates_expired =
        mandates::expire_sessionless(&state.db, SESSIONLESS_EXPIRY_SECS).await?;
    tally.events_orphaned = webhook_events::orphan_old(&state.db, ORPHAN_AFTER_SECS).await?;
    let retention = state.settings.webhook_event_retention_days;
    tally.events_deleted =
        webhook_events::delete_old(&state.db, retention, RETENTION_BATCH).await?;
    let sent = outbound::run(state, Instant::now() + STAGE_BUDGET).await?;
    tally.deliveries_made = sent.fanned_out;
    tally.webhooks_delivered = sent.delivered;
    tally.webhooks_failed = sent.failed;
    let events_kept = state.settings.event_retention_days;
    tally.log_events_deleted =
        crate::store::events::delete_old(&state.db, events_kept, RETENTION_BATCH).await?;
    Ok(())
}

/// Asks Moment about pending mandates and processing charges that have been quiet for
/// `reconcile_after`, and applies what it says exactly as a webhook would. Moment's silence
/// changes nothing; the record is asked about again after another `reconcile_after`.
async fn reconcile(state: &AppState) -> sqlx::Result<usize> {
    let quiet = state.settings.reconcile_after.as_secs_f64();
    let batch = BATCH as i64;
    let mut sessions: Vec<String> = mandates::claim_quiet(&state.db, batch, quiet)
        .await?
        .into_iter()
        .filter_map(|m| m.session_id)
        .collect();
    sessions.extend(
        charges::claim_quiet(&state.db, batch, quiet)
            .await?
            .into_iter()
            .filter_map(|c| c.session_id),
    );
    let mut moved = 0;
    let deadline = Instant::now() + STAGE_BUDGET;
    for id in sessions {
        if Instant::now() >= deadline {
            break;
        }
        match state.moment.get_session(&id).await {
            Ok(session) => {
                if events::apply_snapshot(&state.db, &session).await? == events::Applied::Moved {
                    tracing::info!(session_id = %id, "reconciled from Moment");
                    moved += 1;
                }
            }
            Err(e) => tracing::warn!(session_id = %id, error = %e, "cannot reconcile now"),
        }
    }
    Ok(moved)
}

/// Runs the work of [`run_once`] until `shutdown` turns true, in three loops side by side:
/// the scheduler's charges, the outcomes of its charges, and the rest (resends, deferred
/// events, reconciliation, expiry, retention, the merchant's webhooks). Each loop waits
/// `interval` after a pass before the next, except after a scheduler pass whose budget
/// (`STAGE_BUDGET`) ran out with work left: the next starts at once. So on the day most
/// subscriptions fall due, charging never waits for a slow merchant endpoint, a slow
/// reconciliation, or thousands of outcomes being recorded (the loops still share the
/// database pool and the cores). A pass in progress is finished, never cut short.
pub async fn run(state: AppState, interval: Duration, shutdown: watch::Receiver<bool>) {
    // When the last charging pass began (on the service's clock): what fell due after it was
    // not seen by it.
    let began = Arc::new(std::sync::Mutex::new(state.clock.now()));
    let seen = Arc::clone(&began);
    let due = move |st: AppState| {
        let since = *seen.lock().unwrap_or_else(|e| e.into_inner());
        until_due(st, since, interval)
    };
    let charging = repeat(state.clone(), due, shutdown.clone(), move |st| {
        *began.lock().unwrap_or_else(|e| e.into_inner()) = st.clock.now();
        async move {
            match scheduler::charge_once(&st, STAGE_BUDGET).await {
                Ok((t, more)) => {
                    if t != scheduler::Tally::default() {
                        tracing::info!(
                            charged = t.charged,
                            rechecked = t.rechecked,
                            announced = t.announced,
                            resumed = t.resumed,
                            more,
                            "scheduler run"
                        );
                    }
                    more
                }
                Err(e) => {
                    tracing::warn!(error = %e, "scheduler run failed; will retry");
                    false
                }
            }
        }
    });
    let every = move |_: AppState| async move { interval };
    let settling = repeat(state.clone(), every, shutdown.clone(), |st| async move {
        match scheduler::settle_once(&st, STAGE_BUDGET).await {
            Ok((0, _)) => false,
            Ok((settled, more)) => {
                tracing::info!(settled, more, "subscription outcomes recorded");
                more
            }
            Err(e) => {
                tracing::warn!(error = %e, "recording subscription outcomes failed; will retry");
                false
            }
        }
    });
    let rest = repeat(state, every, shutdown, |st| async move {
        let mut t = Tally::default();
        let run = async {
            resend(&st, &mut t).await?;
            upkeep(&st, &mut t).await
        };
        match run.await {
            Ok(()) if t != Tally::default() => tracing::info!(
                charges_resent = t.charges_resent,
                charges_closed = t.charges_closed,
                events_applied = t.events_applied,
                reconciled = t.reconciled,
                mandates_expired = t.mandates_expired,
                events_orphaned = t.events_orphaned,
                events_deleted = t.events_deleted,
                deliveries_made = t.deliveries_made,
                webhooks_delivered = t.webhooks_delivered,
                webhooks_failed = t.webhooks_failed,
                log_events_deleted = t.log_events_deleted,
                "worker run"
            ),
            Ok(()) => {}
            Err(e) => tracing::warn!(error = %e, "worker run failed; will retry"),
        }
        false
    });
    tokio::join!(charging, settling, rest);
}

/// How long the charging loop waits before its next pass: until the next charge, retry or
/// resumption falls due, so that it is made at its time rather than up to an interval late,
/// and at most `WORKER_INTERVAL_SECS`. At once when one fell due after the last pass began
/// (that pass could not see it); what was due before then and is still there (leased by
/// another replica, or given back to be tried again later) is left to the interval.
async fn until_due(state: AppState, since: OffsetDateTime, interval: Duration) -> Duration {
    let now = state.clock.now();
    match crate::store::subscriptions::next_due(&state.db, since).await {
        Ok(Some(at)) => Duration::try_from(at - now)
            .unwrap_or(Duration::ZERO)
            .min(interval),
        Ok(None) => interval,
        Err(e) => {
            tracing::warn!(error = %e, "when the next charge falls due could not be read");
            interval
        }
    }
}

/// Runs `pass` after each wait `wait` gives (at once when the last pass returned `true`)
/// until `shutdown` turns true. Each pass runs as its own task (`db::detached`), so that
/// shutting down never drops database work half done.
async fn repeat<F, P, W, WF>(state: AppState, wait: W, mut shutdown: watch::Receiver<bool>, pass: P)
where
    P: Fn(AppState) -> F,
    F: Future<Output = bool> + Send + 'static,
    W: Fn(AppState) -> WF,
    WF: Future<Output = Duration>,
{
    let mut again = false;
    loop {
        if !again {
            let wait = wait(state.clone());
            let pause = async { tokio::time::sleep(wait.await).await };
            tokio::select! {
                _ = pause => {}
                _ = shutdown.changed() => break,
            }
        }
        again = db::detached(pass(state.clone())).await;
        if *shutdown.borrow() {
            break;
        }
    }
}
