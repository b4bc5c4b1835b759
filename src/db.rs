//! Connecting to Postgres, creating the database, migrations, and running database work so
//! that a cancelled request cannot cut it short.

use std::future::Future;

use anyhow::Context as _;
use secrecy::ExposeSecret;
use sqlx::migrate::{MigrateDatabase, Migrator};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{PgPool, Postgres};

use crate::config::DbConfig;

/// The migrations in `migrations/`, embedded in the binary.
pub static MIGRATOR: Migrator = sqlx::migrate!();

/// Creates the database if it is missing, connects, and applies migrations when asked.
pub async fn connect(config: &DbConfig, migrate: bool) -> anyhow::Result<PgPool> {
    let url = config.url.expose_secret();
    let options: PgConnectOptions = url.parse().context("DATABASE_URL is not a Postgres URL")?;
    if migrate
        && !Postgres::database_exists(url)
            .await
            .context("cannot reach Postgres")?
    {
        Postgres::create_database(url)
            .await
            .context("cannot create the database")?;
        tracing::info!(
            database = options.get_database().unwrap_or_default(),
            "database created"
        );
    }
    let pool = PgPoolOptions::new()
        .max_connections(config.max_connections)
        .acquire_timeout(config.acquire_timeout)
        // A broken connection fails its query and is replaced; checking before every checkout
        // would cost a round trip on every request.
        .test_before_acquire(false)
        .connect_with(options)
        .await
        .context("cannot connect to Postgres")?;
    if migrate {
        MIGRATOR
            .run(&pool)
            .await
            .context("cannot apply migrations")?;
        tracing::info!(migrations = MIGRATOR.iter().count(), "migrations applied");
    }
    Ok(pool)
}

/// True when every embedded migration has been applied successfully.
pub async fn migrations_applied(pool: &PgPool) -> sqlx::Result<bool> {
    let applied: Vec<i64> =
        sqlx::query_scalar("select version from _sqlx_migrations where success order by version")
            .fetch_all(pool)
            .await?;
    Ok(MIGRATOR
        .iter()
        .filter(|m| m.migration_type.is_up_migration())
        .all(|m| applied.contains(&m.version)))
}

/// Runs `work` in its own task and waits for it. If the caller is dropped (the client hung
/// up, a timeout fired), the work still runs to its end: sqlx's `begin()` is not cancel-safe,
/// and a transaction cut short can swallow later writes on the same connection. The request
/// id and the tracing span go along, so calls to Moment made inside carry the id and what the
/// work records lands on the request's log line.
pub async fn detached<F, T>(work: F) -> T
where
    F: Future<Output = T> + Send + 'static,
    T: Send + 'static,
{
    use tracing::Instrument as _;
    let request_id = crate::telemetry::request_id();
    let in_flight = crate::metrics::InFlight::start();
    let work = async move {
        let _in_flight = in_flight;
        crate::telemetry::with_request_id(request_id, work).await
    };
    match tokio::spawn(work.in_current_span()).await {
        Ok(value) => value,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(e) => panic!("database task cancelled: {e}"),
    }
}
