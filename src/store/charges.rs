//! SQL for the `charge` table.

use std::collections::BTreeMap;

use sqlx::postgres::PgArguments;
use sqlx::query::QueryAs;
use sqlx::types::Json;
use sqlx::{PgExecutor, Postgres, QueryBuilder};
use uuid::Uuid;

use crate::domain::{Charge, ChargeStatus, Transition};
use crate::moment::wire::Session;
use crate::store::Recorded;

/// A charge as the merchant asked for it; the mandate supplies the rest.
pub struct NewCharge<'a> {
    pub id: Uuid,
    pub mandate_id: Uuid,
    /// The mandate's amount when `None`.
    pub amount: Option<i64>,
    /// Must be the mandate's currency when given.
    pub currency: Option<&'a str>,
    pub reference: Option<&'a str>,
    pub metadata: &'a BTreeMap<String, String>,
    pub idempotency_key: &'a str,
    pub request_hash: &'a str,
    pub lease_secs: f64,
}

/// Inserts a pending charge holding the send lease, in one statement with the mandate's
/// checks: it must be active at this instant, with both Moment ids (copied onto the charge, so
/// every resend carries the same body) and in the requested currency. `None` when the
/// idempotency key is taken already or the mandate does not qualify; the caller tells which.
pub async fn insert(conn: impl PgExecutor<'_>, c: &NewCharge<'_>) -> sqlx::Result<Option<Charge>> {
    sqlx::query_as(
        "insert into charge (id, mandate_id, amount, currency, reference, metadata, customer_id,
                             payment_method_id, idempotency_key, request_hash, locked_until)
         select $1, m.id, coalesce($3, m.amount), m.currency, $5, $6, m.customer_id,
                m.payment_method_id, $7, $8, now() + make_interval(secs => $9)
         from mandate m
         where m.id = $2 and m.status = 'active'
           and m.customer_id is not null and m.payment_method_id is not null
           and ($4::text is null or m.currency = $4::text)
         on conflict (idempotency_key) do nothing
         returning *",
    )
    .bind(c.id)
    .bind(c.mandate_id)
    .bind(c.amount)
    .bind(c.currency)
    .bind(c.reference)
    .bind(Json(c.metadata))
    .bind(c.idempotency_key)
    .bind(c.request_hash)
    .bind(c.lease_secs)
    .fetch_optional(conn)
    .await
}

pub async fn by_id(conn: impl PgExecutor<'_>, id: Uuid) -> sqlx::Result<Option<Charge>> {
    sqlx::query_as("select * from charge where id = $1")
        .bind(id)
        .fetch_optional(conn)
        .await
}

pub async fn by_idempotency_key(
    conn: impl PgExecutor<'_>,
    key: &str,
) -> sqlx::Result<Option<Charge>> {
    sqlx::query_as("select * from charge where idempotency_key = $1")
        .bind(key)
        .fetch_optional(conn)
        .await
}

/// Takes the send lease of a charge whose outcome at Moment is still unknown, unless someone
/// else holds it.
pub async fn claim(
    conn: impl PgExecutor<'_>,
    id: Uuid,
    lease_secs: f64,
) -> sqlx::Result<Option<Charge>> {
    sqlx::query_as(
        "update charge set locked_until = now() + make_interval(secs => $2)
         where id = $1 and status = 'pending' and (locked_until is null or locked_until < now())
         returning *",
    )
    .bind(id)
    .bind(lease_secs)
    .fetch_optional(conn)
    .await
}

/// Takes the send lease of up to `limit` charges that are due to be sent again: outcome
/// unknown, nobody holding them, and still within Moment's idempotency window.
pub async fn claim_due(
    conn: impl PgExecutor<'_>,
    limit: i64,
    lease_secs: f64,
    window_secs: f64,
) -> sqlx::Result<Vec<Charge>> {
    sqlx::query_as(
        "update charge set locked_until = now() + make_interval(secs => $2)
         where id in (
             select id from charge
             where status = 'pending'
               and coalesce(locked_until, '-infinity') < now()
               and coalesce(next_attempt_at, '-infinity') <= now()
               and created_at > now() - make_interval(secs => $3)
             order by next_attempt_at nulls first
             limit $1
             for update skip locked)
         returning *",
    )
    .bind(limit)
    .bind(lease_secs)
    .bind(window_secs)
    .fetch_all(conn)
    .await
}

/// Records the session Moment created: the charge is `processing` (unless a webhook already
/// took it further) and the lease is released.
pub async fn record_session(
    conn: impl PgExecutor<'_>,
    id: Uuid,
    session: &Session,
) -> sqlx::Result<Recorded<Charge>> {
    sqlx::query_as(
        "update charge set session_id = $2, payment_id = coalesce(payment_id, $3),
                status = case when status = 'pending' then 'processing' else status end,
                attempts = attempts + 1, locked_until = null, next_attempt_at = null, updated_at = now()
         where id = $1
         returning *,
                exists (select 1 from webhook_event
                        where session_id = $2 and outcome = 'deferred') as webhook_waiting",
    )
    .bind(id)
    .bind(&session.id)
    .bind(&session.payment_id)
    .fetch_one(conn)
    .await
}

/// Marks a pending charge failed because Moment refused it.
pub async fn fail(
    conn: impl PgExecutor<'_>,
    id: Uuid,
    failure: &serde_json::Value,
) -> sqlx::Result<Charge> {
    sqlx::query_as(
        "update charge set status = case when status = 'pending' then 'failed' else status end,
                failure = case when status = 'pending' then $2 else failure end,
                attempts = attempts + 1, locked_until = null, next_attempt_at = null, updated_at = now()
         where id = $1
         returning *",
    )
    .bind(id)
    .bind(Json(failure))
    .fetch_one(conn)
    .await
}

/// Leaves the charge pending, to be sent again under the same key after `delay_secs`.
pub async fn defer(conn: impl PgExecutor<'_>, id: Uuid, delay_secs: f64) -> sqlx::Result<Charge> {
    sqlx::query_as(
        "update charge set attempts = attempts + 1, locked_until = null,
                next_attempt_at = now() + make_interval(secs => $2), updated_at = now()
         where id = $1
         returning *",
    )
    .bind(id)
    .bind(delay_secs)
    .fetch_one(conn)
    .await
}

/// Keeps the answer given for the charge's idempotency key. A `202` (outcome unknown) may
/// later be replaced by the final answer; a final answer is never replaced.
pub async fn store_response(
    conn: impl PgExecutor<'_>,
    id: Uuid,
    status: u16,
    body: &serde_json::Value,
) -> sqlx::Result<()> {
    sqlx::query(
        "update charge set response_status = $2, response_body = $3
         where id = $1 and (response_status is null or response_status = 202)",
    )
    .bind(id)
    .bind(status as i16)
    .bind(Json(body))
    .execute(conn)
    .await?;
    Ok(())
}

/// The forward-only update of a charge transition, `$1`–`$6` as bound by
/// [`bind_transition`]; the record is found as in `mandates::APPLY_UPDATE`, and it moves to
/// `$3` only from one of `$6`. The webhook statement (`store::webhook_events::CHARGE_WEBHOOK`)
/// runs the very same update.
pub const APPLY_UPDATE: &str = "update charge set status = $3, session_id = coalesce(session_id, $2),
                payment_id = coalesce($4, payment_id), failure = coalesce($5, failure),
                next_attempt_at = null, updated_at = now()
         where id = coalesce($1, (select id from charge where session_id = $2)) and status = any($6)";

/// Applies a session's transition to the charge it belongs to; see `mandates::apply`.
pub async fn apply(
    conn: impl PgExecutor<'_>,
    t: &Transition<ChargeStatus>,
) -> sqlx::Result<Option<Charge>> {
    let sql = "update charge set status = $3, session_id = coalesce(session_id, $2),
                payment_id = coalesce($4, payment_id), failure = coalesce($5, failure),
                next_attempt_at = null, updated_at = now()
         where id = coalesce($1, (select id from charge where session_id = $2)) and status = any($6)
         returning *";
    debug_assert!(sql.starts_with(APPLY_UPDATE));
    bind_transition(sqlx::query_as(sql), t)
        .fetch_optional(conn)
        .await
}

/// Binds `$1`–`$6` of [`APPLY_UPDATE`].
pub(crate) fn bind_transition<'q, O>(
    q: QueryAs<'q, Postgres, O, PgArguments>,
    t: &'q Transition<ChargeStatus>,
) -> QueryAs<'q, Postgres, O, PgArguments> {
    let from: Vec<&str> = t.from.iter().map(|s| s.as_str()).collect();
    q.bind(t.external_reference)
        .bind(&t.session_id)
        .bind(t.to)
        .bind(&t.payment_id)
        .bind(t.failure.as_ref().map(Json))
        .bind(from)
}

/// Whether a charge matching the transition's id or session exists.
pub async fn exists_for(
    conn: impl PgExecutor<'_>,
    t: &Transition<ChargeStatus>,
) -> sqlx::Result<bool> {
    sqlx::query_scalar(
        "select exists (select 1 from charge where id = coalesce($1, (select id from charge where session_id = $2)))",
    )
    .bind(t.external_reference)
    .bind(&t.session_id)
    .fetch_one(conn)
    .await
}

/// Filters of `GET /charges`.
#[derive(Debug, Default)]
pub struct Filter {
    pub mandate_id: Option<Uuid>,
    pub status: Option<ChargeStatus>,
    pub before: Option<Uuid>,
    pub limit: i64,
}

/// Newest first.
pub async fn list(conn: impl PgExecutor<'_>, f: &Filter) -> sqlx::Result<Vec<Charge>> {
    let mut q = QueryBuilder::<Postgres>::new("select * from charge where true");
    if let Some(mandate_id) = f.mandate_id {
        q.push(" and mandate_id = ").push_bind(mandate_id);
    }
    if let Some(status) = f.status {
        q.push(" and status = ").push_bind(status);
    }
    if let Some(before) = f.before {
        q.push(" and id < ").push_bind(before);
    }
    q.push(" order by id desc limit ").push_bind(f.limit);
    q.build_query_as().fetch_all(conn).await
}

/// Claims `processing` charges whose completion webhook has not come for `quiet_secs`, so that
/// the reconciler fetches their session; each is then left alone for another `quiet_secs`.
pub async fn claim_quiet(
    conn: impl PgExecutor<'_>,
    limit: i64,
    quiet_secs: f64,
) -> sqlx::Result<Vec<Charge>> {
    sqlx::query_as(
        "update charge set locked_until = now() + make_interval(secs => $2)
         where id in (
             select id from charge
             where status = 'processing' and session_id is not null
               and coalesce(locked_until, '-infinity') < now()
               and updated_at < now() - make_interval(secs => $2)
             order by updated_at
             limit $1
             for update skip locked)
         returning *",
    )
    .bind(limit)
    .bind(quiet_secs)
    .fetch_all(conn)
    .await
}

/// How many charges are in each status (statuses with none are left out).
pub async fn count_by_status(conn: impl PgExecutor<'_>) -> sqlx::Result<Vec<(String, i64)>> {
    sqlx::query_as("select status::text, count(*) from charge group by status")
        .fetch_all(conn)
        .await
}
