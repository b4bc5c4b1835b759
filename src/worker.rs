//! Background work: resend charges whose outcome at Moment is unknown, and apply webhook
//! events that arrived before their session was known. Safe on several replicas at once:
//! work is claimed with leases and `FOR UPDATE SKIP LOCKED`.

use std::time::Duration;

use tokio::sync::watch;

use crate::app::AppState;
use crate::db;
use crate::store::charges;
use crate::workflow::{LEASE_SECS, charges as charge_flow, events};

/// Charges resent per run at most.
const BATCH: i64 = 50;

/// What one run did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Tally {
    pub charges_resent: usize,
    pub events_applied: usize,
}

/// One pass over the pending work.
pub async fn run_once(state: &AppState) -> sqlx::Result<Tally> {
    let due = charges::claim_due(
        &state.db,
        BATCH,
        LEASE_SECS,
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
    Ok(tally)
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
