//! Background work, safe on several replicas at once (work is claimed with leases and
//! `FOR UPDATE SKIP LOCKED`):
//! - resend charges whose outcome at Moment is unknown, under the same Moment key;
//! - apply webhook events that arrived before their session was known;
//! - reconcile what no webhook settled: fetch the session of pending mandates and processing
//!   charges quiet for `reconcile_after`, and expire mandates that never got a session.

use std::time::Duration;

use tokio::sync::watch;

use crate::db;
use crate::state::AppState;
use crate::store::{charges, mandates};
use crate::workflow::{charges as charge_flow, events, lease_secs};

/// Charges resent per run at most.
const BATCH: i64 = 50;

/// A mandate with no Moment session is expired after this long: Moment forgets idempotency
/// keys after 24 h, so a retry could no longer reuse the first attempt.
pub const SESSIONLESS_EXPIRY_SECS: f64 = 24.0 * 3600.0;

/// What one run did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Tally {
    pub charges_resent: usize,
    pub events_applied: usize,
    /// Mandates and charges moved by a fetched session.
    pub reconciled: usize,
    pub mandates_expired: u64,
}

/// One pass over the pending work.
pub async fn run_once(state: &AppState) -> sqlx::Result<Tally> {
    let due = charges::claim_due(
        &state.db,
        BATCH,
        lease_secs(state),
        charge_flow::RESEND_WINDOW_SECS,
    )
    .await?;
    let mut tally = Tally {
        charges_resent: due.len(),
        ..Tally::default()
    };
    for charge in due {
        charge_flow::send(state, charge).await?;
    }
    tally.events_applied = events::apply_deferred(&state.db, None).await?;
    tally.reconciled = reconcile(state).await?;
    tally.mandates_expired =
        mandates::expire_sessionless(&state.db, SESSIONLESS_EXPIRY_SECS).await?;
    Ok(tally)
}

/// Asks Moment about pending mandates and processing charges that have been quiet for
/// `reconcile_after`, and applies what it says exactly as a webhook would. Moment's silence
/// changes nothing; the record is asked about again after another `reconcile_after`.
async fn reconcile(state: &AppState) -> sqlx::Result<usize> {
    let quiet = state.settings.reconcile_after.as_secs_f64();
    let mut sessions: Vec<String> = mandates::claim_quiet(&state.db, BATCH, quiet)
        .await?
        .into_iter()
        .filter_map(|m| m.session_id)
        .collect();
    sessions.extend(
        charges::claim_quiet(&state.db, BATCH, quiet)
            .await?
            .into_iter()
            .filter_map(|c| c.session_id),
    );
    let mut moved = 0;
    for id in sessions {
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

/// Runs `run_once` every `interval` until `shutdown` turns true. A run in progress is
/// finished, never cut short.
pub async fn run(state: AppState, interval: Duration, mut shutdown: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = shutdown.changed() => break,
        }
        let st = state.clone();
        match db::detached(async move { run_once(&st).await }).await {
            Ok(t) if t != Tally::default() => tracing::info!(
                charges_resent = t.charges_resent,
                events_applied = t.events_applied,
                reconciled = t.reconciled,
                mandates_expired = t.mandates_expired,
                "worker run"
            ),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "worker run failed; will retry"),
        }
        if *shutdown.borrow() {
            break;
        }
    }
}
