//! SQL for the `event` table: the log every state change writes (by trigger, in the statement
//! that makes the change; see the migration `events`).
//!
//! Readers see only what every older transaction has committed: rows whose `xid` is below the
//! oldest transaction still running, in (xid, position) order. A transaction that commits late
//! always sorts after what a tailing reader has passed, so the cursor never skips an event.

use sqlx::types::Json;
use sqlx::{PgExecutor, Postgres, QueryBuilder};
use time::OffsetDateTime;
use uuid::Uuid;

/// One event.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Event {
    pub id: Uuid,
    #[sqlx(rename = "type")]
    pub kind: String,
    pub resource_type: String,
    pub resource_id: Uuid,
    pub sequence: i64,
    pub data: Json<serde_json::Value>,
    pub created_at: OffsetDateTime,
}

/// Filters of `GET /events`.
#[derive(Debug, Default)]
pub struct Filter {
    pub kind: Option<String>,
    pub resource_id: Option<Uuid>,
    /// Only events after this one (the cursor).
    pub after: Option<Uuid>,
    pub limit: i64,
}

/// The condition that an event is visible to tailing readers (every older transaction done).
const VISIBLE: &str = "xid < pg_snapshot_xmin(pg_current_snapshot())";

/// Visible events, oldest first, after `f.after` (check that it names an event first:
/// otherwise there are none after it).
pub async fn list(conn: impl PgExecutor<'_>, f: &Filter) -> sqlx::Result<Vec<Event>> {
    let mut q = QueryBuilder::<Postgres>::new(
        "select id, type, resource_type, resource_id, sequence, data, created_at from event where ",
    );
    q.push(VISIBLE);
    if let Some(kind) = &f.kind {
        q.push(" and type = ").push_bind(kind);
    }
    if let Some(resource_id) = f.resource_id {
        q.push(" and resource_id = ").push_bind(resource_id);
    }
    if let Some(after) = f.after {
        q.push(" and (xid, position) > (select xid, position from event where id = ")
            .push_bind(after)
            .push(")");
    }
    q.push(" order by xid, position limit ").push_bind(f.limit);
    q.build_query_as().fetch_all(conn).await
}

pub async fn by_id(conn: impl PgExecutor<'_>, id: Uuid) -> sqlx::Result<Option<Event>> {
    sqlx::query_as(
        "select id, type, resource_type, resource_id, sequence, data, created_at
         from event where id = $1",
    )
    .bind(id)
    .fetch_optional(conn)
    .await
}

/// Whether an event with this id exists (visible or not yet).
pub async fn exists(conn: impl PgExecutor<'_>, id: Uuid) -> sqlx::Result<bool> {
    sqlx::query_scalar("select exists (select 1 from event where id = $1)")
        .bind(id)
        .fetch_one(conn)
        .await
}

/// Writes an event that no mandate or charge change carries (an endpoint disabled, say).
pub async fn insert(
    conn: impl PgExecutor<'_>,
    kind: &str,
    resource_type: &str,
    resource_id: Uuid,
    data: &serde_json::Value,
) -> sqlx::Result<()> {
    sqlx::query(
        "insert into event (id, type, resource_type, resource_id, sequence, data)
         values ($1, $2, $3, $4,
                 (select coalesce(max(sequence), 0) + 1 from event where resource_id = $4), $5)",
    )
    .bind(Uuid::now_v7())
    .bind(kind)
    .bind(resource_type)
    .bind(resource_id)
    .bind(Json(data))
    .execute(conn)
    .await?;
    Ok(())
}

/// Deletes events older than `days` (their deliveries go with them), at most `limit` a call,
/// oldest first. Written so that Postgres has one plan whatever its statistics say: the ids
/// are found along `event_created_idx` from the oldest, then deleted by their primary key.
/// Without statistics (a table that grew since it was last analyzed, or never was) Postgres
/// guesses that a third of the rows are past the cutoff; the earlier `id in (... limit)`
/// then read the whole table to find the few (every pass of the worker, for nothing when none
/// was old), and at times once more to join them.
pub async fn delete_old(conn: impl PgExecutor<'_>, days: f64, limit: i64) -> sqlx::Result<u64> {
    let done = sqlx::query(
        "delete from event where id = any(array(
             select id from event where created_at < now() - make_interval(days => 1) * $1
             order by created_at
             limit $2))",
    )
    .bind(days)
    .bind(limit)
    .execute(conn)
    .await?;
    Ok(done.rows_affected())
}
