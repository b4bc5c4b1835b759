//! SQL, one file per table. Functions take `impl PgExecutor` so they run on the pool or
//! inside a transaction. `ingest` is the writer that stores Moment's webhooks in batches; `counts`
//! counts rows by status for the metrics.

/// A mandate or charge whose Moment session was just recorded.
#[derive(Debug, sqlx::FromRow)]
pub struct Recorded<T> {
    #[sqlx(flatten)]
    pub record: T,
    /// A webhook for this session came first and waits to be applied.
    pub webhook_waiting: bool,
}

pub mod charges;
pub mod counts;
pub mod deliveries;
pub mod events;
pub mod ingest;
pub mod mandates;
pub mod subscriptions;
pub mod webhook_endpoints;
pub mod webhook_events;
