//! Mandates and charges by status, for `GET /metrics`, at a cost that does not grow with the
//! tables at every scrape. The statuses of work under way (a mandate `pending`; a charge
//! `pending`, `processing` or `needs_review`) are counted at every scrape, through the status
//! indexes, reading only their own rows. The settled statuses, nearly every row and seldom
//! left, are counted in a task of their own at most once per `METRICS_RECOUNT_SECS` from the
//! end of the last count, counted or failed (one count at a time, whatever the scrapes do),
//! and a scrape reports the latest count: a row that settles leaves its status under way at
//! once and shows in its settled one at the next count.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use sqlx::{PgConnection, PgPool};

use crate::domain::{ChargeStatus, MandateStatus};

/// The mandates' statuses of work under way.
pub const OPEN_MANDATE: &[MandateStatus] = &[MandateStatus::Pending];
/// The charges' statuses of work under way.
pub const OPEN_CHARGE: &[ChargeStatus] = &[
    ChargeStatus::Pending,
    ChargeStatus::Processing,
    ChargeStatus::NeedsReview,
];

/// How long a scrape waits for a count of the settled statuses it found due, before it
/// reports the count before it.
const WAIT: Duration = Duration::from_secs(2);

/// Rows by status: `(table, status, rows)`, statuses without rows left out.
pub type Counted = Vec<(String, String, i64)>;

/// The settled statuses' latest count.
#[derive(Clone)]
struct Settled {
    /// When the count began (how old its figures are) and when it ended (when the next is due).
    began: Instant,
    ended: Instant,
    rows: Arc<Counted>,
}

/// What a scrape reports.
pub struct Counts {
    /// The statuses under way, counted now, and the settled ones as last counted (none before
    /// the first count has ended).
    pub rows: Counted,
    /// How old the settled statuses' figures are; `None` before the first count has ended.
    pub settled_age: Option<Duration>,
}

/// The settled statuses' latest count, and when the last count that failed ended.
#[derive(Clone, Default)]
struct Latest {
    settled: Option<Settled>,
    failed: Option<Instant>,
}

impl Latest {
    /// Whether the next count is due: `every` after the last count ended, counted or failed.
    fn due(&self, every: Duration) -> bool {
        // (`None` orders before any `Some`: the later of the two that ended.)
        let ended = self.settled.as_ref().map(|s| s.ended).max(self.failed);
        ended.is_none_or(|t| t.elapsed() >= every)
    }
}

/// The settled statuses' counts, shared by the scrapes of one process.
pub struct Recount {
    every: Duration,
    latest: tokio::sync::watch::Sender<Latest>,
    counting: AtomicBool,
}

/// Lets the next count begin when a count's task ends, however it ends.
struct Counting(Arc<Recount>);

impl Drop for Counting {
    fn drop(&mut self) {
        self.0.counting.store(false, Ordering::Release);
    }
}

impl Recount {
    /// The settled statuses are counted again once their last count ended `every` ago (zero:
    /// at every scrape), whether it counted or failed.
    pub fn new(every: Duration) -> Self {
        Self {
            every,
            latest: tokio::sync::watch::Sender::new(Latest::default()),
            counting: AtomicBool::new(false),
        }
    }

    /// The statuses under way counted now, with the settled ones as last counted. When that
    /// count is due, one begins in a task of its own (a scrape that gives up does not stop it)
    /// and the scrape waits up to [`WAIT`] for it.
    pub async fn counts(self: &Arc<Self>, db: &PgPool) -> sqlx::Result<Counts> {
        let mut latest = self.latest.subscribe();
        let due = latest.borrow().due(self.every);
        if due {
            self.begin(db);
        }
        let mut rows = {
            let mut conn = db.acquire().await?;
            open(&mut conn).await?
        };
        if due {
            let _ = tokio::time::timeout(WAIT, latest.changed()).await;
        }
        let settled = latest.borrow().settled.clone();
        if let Some(s) = &settled {
            rows.extend(s.rows.iter().cloned());
        }
        Ok(Counts {
            rows,
            settled_age: settled.map(|s| s.began.elapsed()),
        })
    }

    /// How old the settled statuses' figures are, if they were ever counted.
    pub fn settled_age(&self) -> Option<Duration> {
        self.latest
            .borrow()
            .settled
            .as_ref()
            .map(|s| s.began.elapsed())
    }

    /// Begins a count of the settled statuses unless one is under way.
    fn begin(self: &Arc<Self>, db: &PgPool) {
        if self.counting.swap(true, Ordering::AcqRel) {
            return;
        }
        let counting = Counting(Arc::clone(self));
        // A count that ended since the caller looked has made this one not due.
        if !self.latest.borrow().due(self.every) {
            return;
        }
        let db = db.clone();
        tokio::spawn(async move {
            let began = Instant::now();
            let counted = async {
                let mut conn = db.acquire().await?;
                count(&mut conn, false).await
            }
            .await;
            // Either way the scrapes waiting for it are woken, and the next count is due
            // `every` from now.
            match counted {
                Ok(rows) => counting.0.latest.send_modify(|l| {
                    l.settled = Some(Settled {
                        began,
                        ended: Instant::now(),
                        rows: Arc::new(rows),
                    })
                }),
                Err(e) => {
                    tracing::warn!(error = %e, "metrics: cannot count the settled mandates and charges");
                    counting
                        .0
                        .latest
                        .send_modify(|l| l.failed = Some(Instant::now()));
                }
            }
            drop(counting);
        });
    }
}

/// Rows by status of the statuses under way, reading only their index entries.
pub async fn open(conn: &mut PgConnection) -> sqlx::Result<Counted> {
    count(conn, true).await
}

/// Rows by status of the statuses under way (`open`) or of the settled ones, in one
/// statement. The statuses are named, so that each count reads its own range of the status
/// index.
async fn count(conn: &mut PgConnection, open: bool) -> sqlx::Result<Counted> {
    let mandate: Vec<&str> = MandateStatus::ALL
        .iter()
        .filter(|s| OPEN_MANDATE.contains(s) == open)
        .map(|s| s.as_str())
        .collect();
    let charge: Vec<&str> = ChargeStatus::ALL
        .iter()
        .filter(|s| OPEN_CHARGE.contains(s) == open)
        .map(|s| s.as_str())
        .collect();
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
