//! SQL, one file per table. Functions take `impl PgExecutor` so they run on the pool or
//! inside a transaction.

pub mod charges;
pub mod mandates;
pub mod webhook_events;
