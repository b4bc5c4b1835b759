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

pub mod charges;
pub mod mandates;
pub mod webhook_events;
