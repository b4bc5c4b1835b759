//! Mandates and charges by status, for `GET /metrics`, at a cost that does not grow with the
//! tables: the statuses of work under way (a mandate `pending`; a charge `pending`,
//! `processing` or `needs_review`) are counted at every scrape through the status indexes,
//! reading only their own rows; the settled statuses, which only grow, are counted at most
//! once per `METRICS_RECOUNT_SECS` and reused in between.

use std::time::{Duration, Instant};

use sqlx::PgConnection;

use crate::domain::{ChargeStatus, MandateStatus};

/// The mandates' statuses of work under way.
pub const OPEN_MANDATE: &[MandateStatus] = &[MandateStatus::Pending];
/// The charges' statuses of work under way.
pub const OPEN_CHARGE: &[ChargeStatus] = &[
    ChargeStatus::Pending,
    ChargeStatus::Processing,
    ChargeStatus::NeedsReview,
];

/// Rows by status: `(table, status, rows)`, statuses without rows left out.
pub type Counted = Vec<(String, String, i64)>;

/// The counts `GET /metrics` reports, and how old the settled statuses' counts are.
pub struct Counts {
    pub rows: Counted,
    pub settled_age: Duration,
}

/// The settled statuses' last count, shared by the scrapes of one process.
pub struct Recount {
    every: Duration,
    settled: tokio::sync::Mutex<Option<(Instant, Counted)>>,
}

impl Recount {
    /// Settled statuses counted again once their count is `every` old (zero: every scrape).
    pub fn new(every: Duration) -> Self {
        Self {
            every,
            settled: tokio::sync::Mutex::new(None),
        }
    }

    /// Every status's rows: those under way counted now, the settled ones counted now only
    /// when their last count is `every` old or there is none. Scrapes that come together wait
    /// for one count rather than each making its own.
    pub async fn counts(&self, conn: &mut PgConnection) -> sqlx::Result<Counts> {
        let mut rows = count(&mut *conn, true).await?;
        let mut settled = self.settled.lock().await;
        let fresh = settled
            .as_ref()
            .is_some_and(|(at, _)| at.elapsed() < self.every);
        if !fresh {
            *settled = Some((Instant::now(), count(&mut *conn, false).await?));
        }
        let (at, counted) = settled.as_ref().expect("counted above");
        rows.extend(counted.iter().cloned());
        Ok(Counts {
            rows,
            settled_age: at.elapsed(),
        })
    }
}

/// Rows by status of the statuses under way (`open`) or of the others, in one statement. The
/// statuses are named, so that each count reads the status index's range of its own.
async fn count(conn: &mut PgConnection, open: bool) -> sqlx::Result<Counted> {
    let pick = |all: &[&'static str], under_way: &[&'static str]| -> Vec<&'static str> {
        all.iter()
            .copied()
            .filter(|s| under_way.contains(s) == open)
            .collect()
    };
    let mandate = pick(
        &MandateStatus::ALL
            .iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>(),
        &OPEN_MANDATE.iter().map(|s| s.as_str()).collect::<Vec<_>>(),
    );
    let charge = pick(
        &ChargeStatus::ALL
            .iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>(),
        &OPEN_CHARGE.iter().map(|s| s.as_str()).collect::<Vec<_>>(),
    );
    sqlx::query_as(
        "select 'mandates', status, count(*) from mandate where status = any($1) group by status
         union all
         select 'charges', status, count(*) from charge where status = any($2) group by status",
    )
    .bind(&mandate)
    .bind(&charge)
    .fetch_all(conn)
    .await
}
