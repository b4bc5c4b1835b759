//! SQL for the `webhook_endpoint` table: the merchant's endpoints, their signing secrets, and
//! where each stands in the event log.

use sqlx::{PgExecutor, PgPool};
use time::OffsetDateTime;
use uuid::Uuid;

/// An endpoint, as stored.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Endpoint {
    pub id: Uuid,
    pub url: String,
    pub event_types: Option<Vec<String>>,
    pub enabled: bool,
    pub disabled_reason: Option<String>,
    pub secret: String,
    pub old_secret: Option<String>,
    pub old_secret_until: Option<OffsetDateTime>,
    pub failing_since: Option<OffsetDateTime>,
    pub created_at: OffsetDateTime,
    pub updated_at: OffsetDateTime,
}

const COLUMNS: &str = "id, url, event_types, enabled, disabled_reason, secret, old_secret,
    old_secret_until, failing_since, created_at, updated_at";

/// Inserts an endpoint; it receives the events written from now on.
pub async fn insert(
    conn: impl PgExecutor<'_>,
    id: Uuid,
    url: &str,
    event_types: Option<&[String]>,
    secret: &str,
) -> sqlx::Result<Endpoint> {
    sqlx::query_as(&format!(
        "insert into webhook_endpoint (id, url, event_types, secret, cursor_xid, cursor_position)
         values ($1, $2, $3, $4, pg_snapshot_xmin(pg_current_snapshot()),
                 0)
         returning {COLUMNS}"
    ))
    .bind(id)
    .bind(url)
    .bind(event_types)
    .bind(secret)
    .fetch_one(conn)
    .await
}

pub async fn by_id(conn: impl PgExecutor<'_>, id: Uuid) -> sqlx::Result<Option<Endpoint>> {
    sqlx::query_as(&format!(
        "select {COLUMNS} from webhook_endpoint where id = $1"
    ))
    .bind(id)
    .fetch_optional(conn)
    .await
}

/// The first endpoint at `url`, if any (for `MERCHANT_WEBHOOK_URL`).
pub async fn by_url(conn: impl PgExecutor<'_>, url: &str) -> sqlx::Result<Option<Endpoint>> {
    sqlx::query_as(&format!(
        "select {COLUMNS} from webhook_endpoint where url = $1 order by created_at limit 1"
    ))
    .bind(url)
    .fetch_optional(conn)
    .await
}

/// Every endpoint, oldest first.
pub async fn list(conn: impl PgExecutor<'_>) -> sqlx::Result<Vec<Endpoint>> {
    sqlx::query_as(&format!(
        "select {COLUMNS} from webhook_endpoint order by created_at, id"
    ))
    .fetch_all(conn)
    .await
}

/// Changes what is given: the URL, the event types (`Some(None)` for all), enabled or not.
/// Enabling clears the reason it was disabled and its failing streak.
pub async fn update(
    conn: impl PgExecutor<'_>,
    id: Uuid,
    url: Option<&str>,
    event_types: Option<Option<&[String]>>,
    enabled: Option<bool>,
) -> sqlx::Result<Option<Endpoint>> {
    sqlx::query_as(&format!(
        "update webhook_endpoint set
             url = coalesce($2, url),
             event_types = case when $3 then $4 else event_types end,
             enabled = coalesce($5, enabled),
             disabled_reason = case when $5 is null then disabled_reason
                                    when $5 then null else 'merchant' end,
             failing_since = case when $5 then null else failing_since end,
             updated_at = now()
         where id = $1
         returning {COLUMNS}"
    ))
    .bind(id)
    .bind(url)
    .bind(event_types.is_some())
    .bind(event_types.flatten())
    .bind(enabled)
    .fetch_optional(conn)
    .await
}

/// Deletes an endpoint and its deliveries.
pub async fn delete(conn: impl PgExecutor<'_>, id: Uuid) -> sqlx::Result<bool> {
    let done = sqlx::query("delete from webhook_endpoint where id = $1")
        .bind(id)
        .execute(conn)
        .await?;
    Ok(done.rows_affected() == 1)
}

/// Puts `secret` in place; the one it replaces keeps signing beside it for `overlap_secs`.
pub async fn rotate(
    conn: impl PgExecutor<'_>,
    id: Uuid,
    secret: &str,
    overlap_secs: f64,
) -> sqlx::Result<Option<Endpoint>> {
    sqlx::query_as(&format!(
        "update webhook_endpoint set old_secret = secret, secret = $2,
                old_secret_until = now() + make_interval(secs => $3), updated_at = now()
         where id = $1
         returning {COLUMNS}"
    ))
    .bind(id)
    .bind(secret)
    .bind(overlap_secs)
    .fetch_optional(conn)
    .await
}

/// Turns an endpoint off for `reason` (`gone`, `failing`); true when it was on.
pub async fn disable(conn: impl PgExecutor<'_>, id: Uuid, reason: &str) -> sqlx::Result<bool> {
    let done = sqlx::query(
        "update webhook_endpoint set enabled = false, disabled_reason = $2, updated_at = now()
         where id = $1 and enabled",
    )
    .bind(id)
    .bind(reason)
    .execute(conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Records an answer from an endpoint: a success ends its failing streak, a failure starts
/// one if none runs. Returns since when it has been failing. The row is written (and locked)
/// only when that changes: the usual success takes no lock, so deliveries never queue behind
/// the fan-out's hold on the endpoint.
pub async fn record_result(
    conn: impl PgExecutor<'_>,
    id: Uuid,
    ok: bool,
) -> sqlx::Result<Option<OffsetDateTime>> {
    sqlx::query_scalar(
        "with changed as (
             update webhook_endpoint set failing_since = case when $2 then null else now() end
             where id = $1 and (case when $2 then failing_since is not null
                                     else failing_since is null end)
             returning failing_since)
         select failing_since from changed
         union all
         select failing_since from webhook_endpoint
         where id = $1 and not exists (select 1 from changed)",
    )
    .bind(id)
    .bind(ok)
    .fetch_optional(conn)
    .await
    .map(Option::flatten)
}

/// Fans the events written since its cursor out to one enabled endpoint nobody else is
/// fanning out, as deliveries, and moves its cursor past them, in one transaction: each event
/// reaches each endpoint once, whatever the number of replicas. Only events every older
/// transaction has committed are taken, so none is ever skipped. Returns deliveries created.
pub async fn fan_out(db: &PgPool, limit: i64) -> sqlx::Result<u64> {
    let mut tx = db.begin().await?;
    let created: Option<i64> = sqlx::query_scalar(
        "with ep as (
             select id, event_types, cursor_xid, cursor_position from webhook_endpoint
             where enabled
               and exists (select 1 from event e
                           where (e.xid, e.position) > (cursor_xid, cursor_position)
                             and e.xid < pg_snapshot_xmin(pg_current_snapshot()))
             order by fanned_out_at nulls first
             limit 1
             for update skip locked),
         batch as (
             select e.id, e.type, e.xid, e.position from event e, ep
             where (e.xid, e.position) > (ep.cursor_xid, ep.cursor_position)
               and e.xid < pg_snapshot_xmin(pg_current_snapshot())
             order by e.xid, e.position
             limit $1),
         inserted as (
             insert into delivery (id, event_id, endpoint_id)
             select gen_random_uuid(), b.id, ep.id from batch b, ep
             where ep.event_types is null or b.type = any(ep.event_types)
             returning 1),
         moved as (
             update webhook_endpoint w set cursor_xid = last.xid, cursor_position = last.position,
                    fanned_out_at = now()
             from ep, (select xid, position from batch order by xid desc, position desc limit 1) last
             where w.id = ep.id
             returning 1)
         select (select count(*) from inserted) from ep",
    )
    .bind(limit)
    .fetch_optional(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(created.unwrap_or(0) as u64)
}
