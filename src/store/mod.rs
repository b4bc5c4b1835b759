//! SQL, one file per table. Functions take `impl PgExecutor` so they run on the pool or
//! inside a transaction.

/// The SQL condition naming the record a transition concerns: ours by id when Moment echoed
/// it as `external_reference` (`$1`), otherwise the one holding the session (`$2`). One rule
/// for moving a record, telling whether it exists, and the webhook statement.
macro_rules! transition_target {
    ($table:literal) => {
        concat!(
            "id = coalesce($1, (select id from ",
            $table,
            " where session_id = $2))"
        )
    };
}
pub(crate) use transition_target;

/// Appended to a `returning *` that records a Moment session (`$2`): whether a webhook for it
/// came before we knew the session, and waits to be applied.
macro_rules! webhook_waiting {
    () => {
        ", exists (select 1 from webhook_event
                   where session_id = $2 and outcome = 'deferred') as webhook_waiting"
    };
}
pub(crate) use webhook_waiting;

/// A mandate or charge whose Moment session was just recorded.
#[derive(Debug, sqlx::FromRow)]
pub struct Recorded<T> {
    #[sqlx(flatten)]
    pub record: T,
    /// A webhook for this session came first and waits to be applied.
    pub webhook_waiting: bool,
}

pub mod charges;
pub mod mandates;
pub mod webhook_events;
