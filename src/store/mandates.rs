//! SQL for the `mandate` table.

use std::collections::BTreeMap;

use sqlx::postgres::PgArguments;
use sqlx::query::QueryAs;
use sqlx::types::Json;
use sqlx::{PgExecutor, Postgres, QueryBuilder};
use uuid::Uuid;

use crate::domain::terms::Terms;
use crate::domain::{Mandate, MandateStatus, Transition};
use crate::moment::wire::Session;
use crate::store::Recorded;
use crate::store::charges::Moved;

/// A mandate as the merchant asked for it.
pub struct NewMandate<'a> {
    pub id: Uuid,
    pub amount: i64,
    pub currency: &'a str,
    pub reference: Option<&'a str>,
    pub metadata: &'a BTreeMap<String, String>,
    pub customer_name: &'a str,
    pub customer_email: &'a str,
    pub return_url: Option<&'a str>,
    pub terms: &'a Terms,
    pub idempotency_key: Option<&'a str>,
    pub request_hash: &'a str,
    pub lease_secs: f64,
}

/// Inserts a pending mandate holding the creation lease. `None` when its idempotency key is
/// taken already.
pub async fn insert(
    conn: impl PgExecutor<'_>,
    m: &NewMandate<'_>,
) -> sqlx::Result<Option<Mandate>> {
    sqlx::query_as(
        "insert into mandate (id, amount, currency, reference, metadata, customer_name, customer_email,
                              return_url, idempotency_key, request_hash, locked_until, terms)
         values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, now() + make_interval(secs => $11), $12)
         on conflict (idempotency_key) do nothing
         returning *",
    )
    .bind(m.id)
    .bind(m.amount)
    .bind(m.currency)
    .bind(m.reference)
    .bind(Json(m.metadata))
    .bind(m.customer_name)
    .bind(m.customer_email)
    .bind(m.return_url)
    .bind(m.idempotency_key)
    .bind(m.request_hash)
    .bind(m.lease_secs)
    .bind(Json(m.terms))
    .fetch_optional(conn)
    .await
}

pub async fn by_id(conn: impl PgExecutor<'_>, id: Uuid) -> sqlx::Result<Option<Mandate>> {
    sqlx::query_as("select * from mandate where id = $1")
        .bind(id)
        .fetch_optional(conn)
        .await
}

/// The mandates with these ids (those that exist), in one statement.
pub async fn by_ids(conn: impl PgExecutor<'_>, ids: &[Uuid]) -> sqlx::Result<Vec<Mandate>> {
    sqlx::query_as("select * from mandate where id = any($1)")
        .bind(ids)
        .fetch_all(conn)
        .await
}

pub async fn by_idempotency_key(
    conn: impl PgExecutor<'_>,
    key: &str,
) -> sqlx::Result<Option<Mandate>> {
    sqlx::query_as("select * from mandate where idempotency_key = $1")
        .bind(key)
        .fetch_optional(conn)
        .await
}

/// Takes the creation lease of a pending mandate that has no session yet, unless someone
/// else holds it.
pub async fn claim(
    conn: impl PgExecutor<'_>,
    id: Uuid,
    lease_secs: f64,
) -> sqlx::Result<Option<Mandate>> {
    sqlx::query_as(
        "update mandate set locked_until = now() + make_interval(secs => $2)
         where id = $1 and status = 'pending' and session_id is null
           and (locked_until is null or locked_until < now())
         returning *",
    )
    .bind(id)
    .bind(lease_secs)
    .fetch_optional(conn)
    .await
}

/// Records the session Moment created for the mandate and releases the lease.
pub async fn record_session(
    conn: impl PgExecutor<'_>,
    id: Uuid,
    session: &Session,
) -> sqlx::Result<Recorded<Mandate>> {
    sqlx::query_as(
        "update mandate set session_id = $2, checkout_url = $3,
                customer_id = coalesce(customer_id, $4), locked_until = null, updated_at = now()
         where id = $1
         returning *,
                exists (select 1 from webhook_event
                        where session_id = $2 and outcome = 'deferred') as webhook_waiting",
    )
    .bind(id)
    .bind(&session.id)
    .bind(&session.session_url)
    .bind(&session.customer_id)
    .fetch_one(conn)
    .await
}

/// Releases the creation lease without a session (Moment gave no answer).
pub async fn release(conn: impl PgExecutor<'_>, id: Uuid) -> sqlx::Result<()> {
    sqlx::query("update mandate set locked_until = null where id = $1")
        .bind(id)
        .execute(conn)
        .await?;
    Ok(())
}

/// Marks a pending mandate failed because Moment refused its session.
pub async fn fail(
    conn: impl PgExecutor<'_>,
    id: Uuid,
    failure: &serde_json::Value,
) -> sqlx::Result<Mandate> {
    sqlx::query_as(
        "update mandate set status = 'failed', failure = $2, locked_until = null, updated_at = now()
         where id = $1 and status = 'pending'
         returning *",
    )
    .bind(id)
    .bind(Json(failure))
    .fetch_one(conn)
    .await
}

/// The forward-only move of a mandate by a session snapshot, `$1`–`$10` as bound by
/// [`bind_transition`]. The record (`ours`) is ours by id when Moment echoed it as
/// `external_reference` (`$1`), otherwise the one holding the session (`$2`). It moves to
/// `$3` only from one of `$8`, so a late or replayed older snapshot never takes it back, and
/// only when the snapshot is its own: the same session once it has one, the same amount
/// (`$9`) and currency (`$10`) when the snapshot says. The webhook statement
/// (`store::webhook_events::MANDATE_WEBHOOK`) runs the very same update.
pub const APPLY: &str = "with ours as (select id, status from mandate where id = coalesce($1, (select id from mandate where session_id = $2)))
    update mandate m set status = $3, session_id = coalesce(m.session_id, $2),
           customer_id = coalesce($4, m.customer_id),
           payment_method_id = coalesce($5, m.payment_method_id),
           payment_id = coalesce($6, m.payment_id), failure = coalesce($7, m.failure),
           locked_until = null, updated_at = now()
    from ours
    where m.id = ours.id and m.status = any($8)
      and (m.session_id is null or m.session_id = $2)
      and ($9::bigint is null or m.amount = $9) and ($10::text is null or m.currency = $10)
    returning m.*, ours.status as was";

/// Applies a session's transition to the mandate it belongs to. Returns the mandate when the
/// transition moved it; `Ok(None)` when it did not (already further along, not its own
/// snapshot, or unknown).
pub async fn apply(
    conn: impl PgExecutor<'_>,
    t: &Transition<MandateStatus>,
) -> sqlx::Result<Option<Moved<Mandate>>> {
    bind_transition(sqlx::query_as(APPLY), t)
        .fetch_optional(conn)
        .await
}

/// Binds `$1`–`$10` of [`APPLY`].
pub(crate) fn bind_transition<'q, O>(
    q: QueryAs<'q, Postgres, O, PgArguments>,
    t: &'q Transition<MandateStatus>,
) -> QueryAs<'q, Postgres, O, PgArguments> {
    let from: Vec<&str> = t.from.iter().map(|s| s.as_str()).collect();
    q.bind(t.external_reference)
        .bind(&t.session_id)
        .bind(t.to)
        .bind(&t.customer_id)
        .bind(&t.payment_method_id)
        .bind(&t.payment_id)
        .bind(t.failure.as_ref().map(Json))
        .bind(from)
        .bind(t.amount)
        .bind(&t.currency)
}

/// Whether a mandate matching the transition's id or session exists.
pub async fn exists_for(
    conn: impl PgExecutor<'_>,
    t: &Transition<MandateStatus>,
) -> sqlx::Result<bool> {
    sqlx::query_scalar(
        "select exists (select 1 from mandate where id = coalesce($1, (select id from mandate where session_id = $2)))",
    )
    .bind(t.external_reference)
    .bind(&t.session_id)
    .fetch_one(conn)
    .await
}

/// Revokes an active mandate; revoking a revoked one changes nothing.
pub async fn revoke(conn: impl PgExecutor<'_>, id: Uuid) -> sqlx::Result<Option<Mandate>> {
    sqlx::query_as(
        "update mandate set status = 'revoked', updated_at = case when status = 'revoked' then updated_at else now() end
         where id = $1 and status in ('active', 'revoked')
         returning *",
    )
    .bind(id)
    .fetch_optional(conn)
    .await
}

/// Takes the right to fetch a pending mandate's session on the customer's return, at most
/// once every `every_secs` across every replica. `None` when it was fetched more recently.
pub async fn claim_refresh(
    conn: impl PgExecutor<'_>,
    id: Uuid,
    every_secs: f64,
) -> sqlx::Result<Option<Mandate>> {
    sqlx::query_as(
        "update mandate set refreshed_at = now()
         where id = $1 and status = 'pending' and session_id is not null
           and coalesce(refreshed_at, '-infinity') < now() - make_interval(secs => $2)
         returning *",
    )
    .bind(id)
    .bind(every_secs)
    .fetch_optional(conn)
    .await
}

/// Locks an active mandate's row until the transaction ends, for a charge's terms check.
pub async fn lock_active(conn: impl PgExecutor<'_>, id: Uuid) -> sqlx::Result<Option<Mandate>> {
    sqlx::query_as("select * from mandate where id = $1 and status = 'active' for update")
        .bind(id)
        .fetch_optional(conn)
        .await
}

/// Filters of `GET /mandates`.
#[derive(Debug, Default)]
pub struct Filter {
    pub status: Option<MandateStatus>,
    pub customer_id: Option<String>,
    pub reference: Option<String>,
    /// Only mandates older than this one (the cursor).
    pub before: Option<Uuid>,
    pub limit: i64,
}

/// Newest first.
pub async fn list(conn: impl PgExecutor<'_>, f: &Filter) -> sqlx::Result<Vec<Mandate>> {
    let mut q = QueryBuilder::<Postgres>::new("select * from mandate where true");
    if let Some(status) = f.status {
        q.push(" and status = ").push_bind(status);
    }
    if let Some(customer_id) = &f.customer_id {
        q.push(" and customer_id = ").push_bind(customer_id);
    }
    if let Some(reference) = &f.reference {
        q.push(" and reference = ").push_bind(reference);
    }
    if let Some(before) = f.before {
        q.push(" and id < ").push_bind(before);
    }
    q.push(" order by id desc limit ").push_bind(f.limit);
    q.build_query_as().fetch_all(conn).await
}

/// Claims pending mandates whose checkout has been quiet for `quiet_secs`, so that the
/// reconciler asks Moment about them; each is then left alone for another `quiet_secs`.
pub async fn claim_quiet(
    conn: impl PgExecutor<'_>,
    limit: i64,
    quiet_secs: f64,
) -> sqlx::Result<Vec<Mandate>> {
    sqlx::query_as(
        "update mandate set locked_until = now() + make_interval(secs => $2)
         where id in (
             select id from mandate
             where status = 'pending' and session_id is not null
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

/// Expires pending mandates that never got a Moment session (Moment was unreachable and the
/// caller did not retry) once `after_secs` have passed: nothing can complete them.
pub async fn expire_sessionless(conn: impl PgExecutor<'_>, after_secs: f64) -> sqlx::Result<u64> {
    let done = sqlx::query(
        "update mandate set status = 'expired', updated_at = now(),
                failure = jsonb_build_object('code', 'no_checkout_session',
                    'message', 'Moment could not be reached to open the checkout, and no retry came')
         where status = 'pending' and session_id is null
           and coalesce(locked_until, '-infinity') < now()
           and created_at < now() - make_interval(secs => $1)",
    )
    .bind(after_secs)
    .execute(conn)
    .await?;
    Ok(done.rows_affected())
}
