//! SQL for the `delivery` and `delivery_attempt` tables: each event sent to each endpoint, at
//! least once, with every attempt recorded.

use sqlx::PgExecutor;
use sqlx::types::Json;
use time::OffsetDateTime;
use uuid::Uuid;

/// A delivery claimed for sending, with what the send needs.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Due {
    pub id: Uuid,
    pub event_id: Uuid,
    pub endpoint_id: Uuid,
    pub attempts: i32,
    pub url: String,
    pub secret: String,
    pub old_secret: Option<String>,
    #[sqlx(rename = "type")]
    pub kind: String,
    pub sequence: i64,
    pub resource_type: String,
    pub resource_id: Uuid,
    pub data: Json<serde_json::Value>,
    pub event_created_at: OffsetDateTime,
}

/// Enabled endpoints with deliveries due now that nobody holds, the longest waiting first:
/// each gets a lane of its own in the worker, so a slow one holds back only itself.
pub async fn endpoints_due(conn: impl PgExecutor<'_>, limit: i64) -> sqlx::Result<Vec<Uuid>> {
    sqlx::query_scalar(
        "select d.endpoint_id from delivery d join webhook_endpoint w on w.id = d.endpoint_id
         where d.status = 'pending' and d.next_attempt_at <= now()
           and coalesce(d.locked_until, '-infinity') < now() and w.enabled
         group by d.endpoint_id
         order by min(d.next_attempt_at)
         limit $1",
    )
    .bind(limit)
    .fetch_all(conn)
    .await
}

/// Takes the lease (`token`) of up to `limit` deliveries to `endpoint_id` due now, skipping
/// those another replica holds.
pub async fn claim_due(
    conn: impl PgExecutor<'_>,
    endpoint_id: Uuid,
    limit: i64,
    lease_secs: f64,
    token: Uuid,
) -> sqlx::Result<Vec<Due>> {
    sqlx::query_as(
        "with claimed as (
             update delivery set locked_until = now() + make_interval(secs => $2), lease_token = $3
             where id in (
                 select d.id from delivery d join webhook_endpoint w on w.id = d.endpoint_id
                 where d.endpoint_id = $4 and d.status = 'pending' and d.next_attempt_at <= now()
                   and coalesce(d.locked_until, '-infinity') < now() and w.enabled
                 order by d.next_attempt_at
                 limit $1
                 for update of d skip locked)
             returning id, event_id, endpoint_id, attempts)
         select c.id, c.event_id, c.endpoint_id, c.attempts, w.url, w.secret,
                case when w.old_secret_until > now() then w.old_secret end as old_secret,
                e.type, e.sequence, e.resource_type, e.resource_id, e.data,
                e.created_at as event_created_at
         from claimed c
         join webhook_endpoint w on w.id = c.endpoint_id
         join event e on e.id = c.event_id",
    )
    .bind(limit)
    .bind(lease_secs)
    .bind(token)
    .bind(endpoint_id)
    .fetch_all(conn)
    .await
}

/// What one attempt came to.
pub struct AttemptResult<'a> {
    pub status_code: Option<i32>,
    pub error: Option<&'a str>,
    pub duration_ms: i32,
    /// `delivered`, `failed` (given up) or `pending` (again at `next_attempt_secs`).
    pub outcome: &'a str,
    pub next_attempt_secs: f64,
}

/// Records an attempt and its outcome; only by the lease's holder `token`. False when the
/// lease was taken over (the attempt is still logged).
pub async fn record_attempt(
    conn: impl PgExecutor<'_>,
    id: Uuid,
    token: Uuid,
    r: &AttemptResult<'_>,
) -> sqlx::Result<bool> {
    let done: Option<bool> = sqlx::query_scalar(
        "with logged as (
             insert into delivery_attempt (delivery_id, status_code, error, duration_ms)
             select $1, $3, $4, $5 where exists (select 1 from delivery where id = $1)
             returning 1),
         moved as (
             update delivery set status = $6, attempts = attempts + 1,
                    next_attempt_at = now() + make_interval(secs => $7),
                    locked_until = null, lease_token = null, updated_at = now()
             where id = $1 and lease_token = $2 and status = 'pending'
             returning 1)
         select exists (select 1 from moved)",
    )
    .bind(id)
    .bind(token)
    .bind(r.status_code)
    .bind(r.error)
    .bind(r.duration_ms)
    .bind(r.outcome)
    .bind(r.next_attempt_secs)
    .fetch_optional(conn)
    .await?;
    Ok(done.unwrap_or(false))
}

/// Ends every pending delivery of a disabled endpoint.
pub async fn fail_pending_of(conn: impl PgExecutor<'_>, endpoint_id: Uuid) -> sqlx::Result<u64> {
    let done = sqlx::query(
        "update delivery set status = 'failed', locked_until = null, lease_token = null,
                updated_at = now()
         where endpoint_id = $1 and status = 'pending'",
    )
    .bind(endpoint_id)
    .execute(conn)
    .await?;
    Ok(done.rows_affected())
}

/// A new delivery of `event_id` to every enabled endpoint that takes its type (delivered
/// before or not). Returns how many.
pub async fn redeliver(conn: impl PgExecutor<'_>, event_id: Uuid) -> sqlx::Result<u64> {
    let done = sqlx::query(
        "insert into delivery (id, event_id, endpoint_id)
         select gen_random_uuid(), e.id, w.id from event e, webhook_endpoint w
         where e.id = $1 and w.enabled and (w.event_types is null or e.type = any(w.event_types))",
    )
    .bind(event_id)
    .execute(conn)
    .await?;
    Ok(done.rows_affected())
}

/// A new delivery to `endpoint_id` of every event since `since` that it failed to get (its
/// deliveries ended `failed`, and none `delivered`), 10,000 at most a call (call
/// again for more). Returns how many.
pub async fn recover(
    conn: impl PgExecutor<'_>,
    endpoint_id: Uuid,
    since: OffsetDateTime,
) -> sqlx::Result<u64> {
    let done = sqlx::query(
        "insert into delivery (id, event_id, endpoint_id)
         select gen_random_uuid(), d.event_id, $1 from delivery d join event e on e.id = d.event_id
         where d.endpoint_id = $1 and e.created_at >= $2
         group by d.event_id
         having bool_or(d.status = 'failed') and not bool_or(d.status in ('delivered', 'pending'))
         limit 10000",
    )
    .bind(endpoint_id)
    .bind(since)
    .execute(conn)
    .await?;
    Ok(done.rows_affected())
}

/// An attempt, as `GET /events/{id}/deliveries` shows it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct AttemptRow {
    pub delivery_id: Uuid,
    pub endpoint_id: Uuid,
    pub delivery_status: String,
    pub attempted_at: Option<OffsetDateTime>,
    pub status_code: Option<i32>,
    pub error: Option<String>,
    pub duration_ms: Option<i32>,
}

/// Every delivery of an event and its attempts, oldest first (the first 1,000) (a delivery with none yet has
/// one row with no attempt).
pub async fn of_event(conn: impl PgExecutor<'_>, event_id: Uuid) -> sqlx::Result<Vec<AttemptRow>> {
    sqlx::query_as(
        "select d.id as delivery_id, d.endpoint_id, d.status as delivery_status, a.attempted_at,
                a.status_code, a.error, a.duration_ms
         from delivery d left join delivery_attempt a on a.delivery_id = d.id
         where d.event_id = $1
         order by d.created_at, d.id, a.id
         limit 1000",
    )
    .bind(event_id)
    .fetch_all(conn)
    .await
}
