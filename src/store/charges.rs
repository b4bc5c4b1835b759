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
    /// The lease's holder: the request recording the charge.
    pub lease_token: Uuid,
    /// The billing clock's time now: the charge counts in the mandate's windows from then.
    pub billed_at: time::OffsetDateTime,
    /// For a scheduled charge: its subscription, period and attempt, and the scheduler's lease
    /// on the subscription (the charge is recorded only while that lease is held and the
    /// subscription is live).
    pub subscription: Option<(Uuid, i32, i32, Uuid)>,
}

/// Inserts a pending charge holding the send lease (`lease_token`), in one statement with the mandate's
/// checks: it must be active at this instant, with both Moment ids (copied onto the charge, so
/// every resend carries the same body) and in the requested currency. `None` when the
/// idempotency key is taken already or the mandate does not qualify; the caller tells which.
pub async fn insert(conn: impl PgExecutor<'_>, c: &NewCharge<'_>) -> sqlx::Result<Option<Charge>> {
    sqlx::query_as(
        "insert into charge (id, mandate_id, amount, currency, reference, metadata, customer_id,
                             payment_method_id, idempotency_key, request_hash, locked_until,
                             lease_token, billed_at, subscription_id, period, attempt)
         select $1, m.id, coalesce($3, m.amount), m.currency, $5, $6, m.customer_id,
                m.payment_method_id, $7, $8, now() + make_interval(secs => $9), $10, $11,
                $12, $13, $14
         from mandate m
         where m.id = $2 and m.status = 'active'
           and m.customer_id is not null and m.payment_method_id is not null
           and ($4::text is null or m.currency = $4::text)
           and ($12::uuid is null
                or exists (select 1 from subscription s where s.id = $12 and s.lease_token = $15
                           and s.status in ('active', 'past_due')))
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
    .bind(c.lease_token)
    .bind(c.billed_at)
    .bind(c.subscription.map(|s| s.0))
    .bind(c.subscription.map(|s| s.1))
    .bind(c.subscription.map(|s| s.2))
    .bind(c.subscription.map(|s| s.3))
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
/// else holds it; `token` names the new holder.
pub async fn claim(
    conn: impl PgExecutor<'_>,
    id: Uuid,
    lease_secs: f64,
    token: Uuid,
) -> sqlx::Result<Option<Charge>> {
    sqlx::query_as(
        "update charge set locked_until = now() + make_interval(secs => $2), lease_token = $3
         where id = $1 and status = 'pending' and (locked_until is null or locked_until < now())
         returning *",
    )
    .bind(id)
    .bind(lease_secs)
    .bind(token)
    .fetch_optional(conn)
    .await
}

/// Takes the send lease (`token`) of the one charge most due to be sent again: outcome
/// unknown, nobody holding it, its wait over, and still within Moment's idempotency window.
/// One at a time, so that a lease is never held while other sends go first.
pub async fn claim_next_due(
    conn: impl PgExecutor<'_>,
    lease_secs: f64,
    window_secs: f64,
    token: Uuid,
) -> sqlx::Result<Option<Charge>> {
    sqlx::query_as(
        "update charge set locked_until = now() + make_interval(secs => $1), lease_token = $3
         where id = (
             select id from charge
             where status = 'pending'
               and coalesce(locked_until, '-infinity') < now()
               and coalesce(next_attempt_at, '-infinity') <= now()
               and created_at > now() - make_interval(secs => $2)
             order by next_attempt_at nulls first
             limit 1
             for update skip locked)
         returning *",
    )
    .bind(lease_secs)
    .bind(window_secs)
    .bind(token)
    .fetch_optional(conn)
    .await
}

/// Right before each send to Moment: renews the lease of its holder `token` and counts the
/// send, only while the charge is still pending, inside Moment's idempotency window
/// (`window_secs` after it was recorded), its mandate still active and its subscription, if
/// any, active or past due. `None` means: do not
/// send (the lease was taken over, the charge settled, the window passed, or consent was
/// withdrawn); the caller finds out which.
pub async fn begin_send(
    conn: impl PgExecutor<'_>,
    id: Uuid,
    token: Uuid,
    lease_secs: f64,
    window_secs: f64,
) -> sqlx::Result<Option<Charge>> {
    let begun = begin_sends(conn, &[(id, token)], lease_secs, window_secs).await?;
    Ok(begun.into_iter().next())
}

/// [`begin_send`] for a batch of charges, `(id, lease token)` each, in one statement: those
/// that may be sent now, with their lease renewed and the send counted. The charges are
/// locked first, in the order of their ids, as every statement that locks several does.
pub async fn begin_sends(
    conn: impl PgExecutor<'_>,
    held: &[(Uuid, Uuid)],
    lease_secs: f64,
    window_secs: f64,
) -> sqlx::Result<Vec<Charge>> {
    let (ids, tokens): (Vec<Uuid>, Vec<Uuid>) = held.iter().copied().unzip();
    sqlx::query_as(
        "with b as (select * from unnest($1::uuid[], $2::uuid[]) as b(id, token)),
         locked as (select c.id from charge c join b on c.id = b.id order by c.id for no key update of c)
         update charge c set locked_until = now() + make_interval(secs => $3), sends = sends + 1
         from b join locked l on l.id = b.id
         where c.id = b.id and c.lease_token = b.token and c.status = 'pending'
           and c.created_at > now() - make_interval(secs => $4)
           and exists (select 1 from mandate m where m.id = c.mandate_id and m.status = 'active')
           -- A scheduled charge is sent only while its subscription is live: after a pause
           -- or a cancellation, not even again under its key (which would make the payment
           -- if the first send never reached Moment).
           and (c.subscription_id is null
                or exists (select 1 from subscription s where s.id = c.subscription_id
                           and s.status in ('active', 'past_due')))
         returning c.*",
    )
    .bind(&ids)
    .bind(&tokens)
    .bind(lease_secs)
    .bind(window_secs)
    .fetch_all(conn)
    .await
}

/// Takes back the send [`begin_sends`] counted for a charge that was then not sent (it waited
/// too long for its turn and is to be checked again), by its lease's holder `token`. False
/// when the lease is not held, or the charge is no longer pending.
pub async fn unbegin_send(conn: impl PgExecutor<'_>, id: Uuid, token: Uuid) -> sqlx::Result<bool> {
    let done = sqlx::query(
        "update charge set sends = sends - 1
         where id = $1 and lease_token = $2 and status = 'pending' and sends > 0",
    )
    .bind(id)
    .bind(token)
    .execute(conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Extends the lease of its holder `token` to `secs` from now (before waiting out a
/// `Retry-After`), so that nobody else sends meanwhile. False when the lease is not held.
pub async fn hold(
    conn: impl PgExecutor<'_>,
    id: Uuid,
    token: Uuid,
    secs: f64,
) -> sqlx::Result<bool> {
    let done = sqlx::query(
        "update charge set locked_until = now() + make_interval(secs => $3)
         where id = $1 and lease_token = $2 and status = 'pending'",
    )
    .bind(id)
    .bind(token)
    .bind(secs)
    .execute(conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Records the session Moment created: the charge is `processing` (unless a webhook already
/// took it further) and the lease is released. Only by the lease's holder `token`: `None`
/// when someone else holds it now (their send, under the same key, gets the same session).
pub async fn record_session(
    conn: impl PgExecutor<'_>,
    id: Uuid,
    token: Uuid,
    session: &Session,
) -> sqlx::Result<Option<Recorded<Charge>>> {
    sqlx::query_as(
        "update charge set session_id = $2, payment_id = coalesce(payment_id, $3),
                status = case when status in ('pending', 'needs_review') then 'processing' else status end,
                attempts = attempts + 1, locked_until = null, lease_token = null,
                next_attempt_at = null, updated_at = now()
         where id = $1 and lease_token = $4
         returning *,
                exists (select 1 from webhook_event
                        where session_id = $2 and outcome = 'deferred') as webhook_waiting",
    )
    .bind(id)
    .bind(&session.id)
    .bind(&session.payment_id)
    .bind(token)
    .fetch_optional(conn)
    .await
}

/// Marks a pending charge failed (Moment refused it, or it was never sent and may no longer
/// be) and releases the lease; only by the lease's holder `token`.
pub async fn fail(
    conn: impl PgExecutor<'_>,
    id: Uuid,
    token: Uuid,
    failure: &serde_json::Value,
) -> sqlx::Result<Option<Charge>> {
    sqlx::query_as(
        "update charge set status = case when status = 'pending' then 'failed' else status end,
                failure = case when status = 'pending' then $2 else failure end,
                attempts = attempts + 1, locked_until = null, lease_token = null,
                next_attempt_at = null, updated_at = now()
         where id = $1 and lease_token = $3
         returning *",
    )
    .bind(id)
    .bind(Json(failure))
    .bind(token)
    .fetch_optional(conn)
    .await
}

/// Marks a pending charge `needs_review` for `reason` (`{code, message}`) and releases the
/// lease; only by the lease's holder `token`. Nothing sends it again.
pub async fn needs_review(
    conn: impl PgExecutor<'_>,
    id: Uuid,
    token: Uuid,
    reason: &serde_json::Value,
) -> sqlx::Result<Option<Charge>> {
    sqlx::query_as(
        "update charge set status = case when status = 'pending' then 'needs_review' else status end,
                review_reason = case when status = 'pending' then $2 else review_reason end,
                locked_until = null, lease_token = null, next_attempt_at = null, updated_at = now()
         where id = $1 and lease_token = $3
         returning *",
    )
    .bind(id)
    .bind(Json(reason))
    .bind(token)
    .fetch_optional(conn)
    .await
}

/// Leaves the charge pending, to be sent again under the same key after `delay_secs`, and
/// releases the lease; only by the lease's holder `token`.
pub async fn defer(
    conn: impl PgExecutor<'_>,
    id: Uuid,
    token: Uuid,
    delay_secs: f64,
) -> sqlx::Result<Option<Charge>> {
    sqlx::query_as(
        "update charge set attempts = attempts + 1, locked_until = null, lease_token = null,
                next_attempt_at = now() + make_interval(secs => $2), updated_at = now()
         where id = $1 and lease_token = $3
         returning *",
    )
    .bind(id)
    .bind(delay_secs)
    .bind(token)
    .fetch_optional(conn)
    .await
}

/// After a mandate's revocation: its pending charges that nobody is sending now end, never
/// to be sent: `failed` with `unsent` when Moment never saw them, `needs_review` with `unknown`
/// when a send whose answer never came may have reached Moment. Returns each with its new
/// status.
pub async fn settle_revoked(
    conn: impl PgExecutor<'_>,
    mandate_id: Uuid,
    unsent: &serde_json::Value,
    unknown: &serde_json::Value,
) -> sqlx::Result<Vec<(Uuid, ChargeStatus)>> {
    sqlx::query_as(
        "update charge set
                status = case when sends = 0 then 'failed' else 'needs_review' end,
                failure = case when sends = 0 then $2 else failure end,
                review_reason = case when sends = 0 then review_reason else $3 end,
                locked_until = null, lease_token = null, next_attempt_at = null, updated_at = now()
         where mandate_id = $1 and status = 'pending'
           and coalesce(locked_until, '-infinity') < now()
         returning id, status",
    )
    .bind(mandate_id)
    .bind(Json(unsent))
    .bind(Json(unknown))
    .fetch_all(conn)
    .await
}

/// Ends the pending charges that nobody holds and that Moment's idempotency window
/// (`window_secs` after each was recorded) has left behind: they can never be sent again
/// safely. `failed` with `unsent` when Moment never saw them, `needs_review` with `unknown`
/// when it may have. Returns how many.
pub async fn close_past_window(
    conn: impl PgExecutor<'_>,
    window_secs: f64,
    unsent: &serde_json::Value,
    unknown: &serde_json::Value,
) -> sqlx::Result<u64> {
    let done = sqlx::query(
        "update charge set
                status = case when sends = 0 then 'failed' else 'needs_review' end,
                failure = case when sends = 0 then $2 else failure end,
                review_reason = case when sends = 0 then review_reason else $3 end,
                locked_until = null, lease_token = null, next_attempt_at = null, updated_at = now()
         where status = 'pending' and coalesce(locked_until, '-infinity') < now()
           and created_at < now() - make_interval(secs => $1)",
    )
    .bind(window_secs)
    .bind(Json(unsent))
    .bind(Json(unknown))
    .execute(conn)
    .await?;
    Ok(done.rows_affected())
}

/// What a mandate's charges use of its terms: those that succeeded or may still succeed
/// (`pending`, `processing`, `succeeded`, `needs_review`), in all and within `[from, to)`; the
/// window's amount held at `i64::MAX` (a sum that large is past any limit).
#[derive(Debug, Clone, Copy, Default, sqlx::FromRow)]
pub struct Usage {
    pub occurrences: i64,
    pub window_count: i64,
    pub window_amount: i64,
}

pub async fn usage(
    conn: impl PgExecutor<'_>,
    mandate_id: Uuid,
    from: time::OffsetDateTime,
    to: time::OffsetDateTime,
) -> sqlx::Result<Usage> {
    sqlx::query_as(
        "select count(*) as occurrences,
                count(*) filter (where billed_at >= $2 and billed_at < $3) as window_count,
                least(coalesce(sum(amount) filter (where billed_at >= $2 and billed_at < $3), 0),
                      9223372036854775807)::bigint as window_amount
         from charge
         where mandate_id = $1 and status in ('pending', 'processing', 'succeeded', 'needs_review')",
    )
    .bind(mandate_id)
    .bind(from)
    .bind(to)
    .fetch_one(conn)
    .await
}

/// One scheduled charge to record: its id, its subscription's period and its key, the lease
/// token it is sent under.
pub struct Scheduled {
    pub id: Uuid,
    pub subscription_id: Uuid,
    pub period: i32,
    pub idempotency_key: String,
    pub lease_token: Uuid,
}

/// Whether a charge of the subscription's `period` has succeeded (Moment can report one paid
/// after it was taken for a failure).
pub async fn period_paid(
    conn: impl PgExecutor<'_>,
    subscription_id: Uuid,
    period: i32,
) -> sqlx::Result<bool> {
    sqlx::query_scalar(
        "select exists (select 1 from charge
                        where subscription_id = $1 and period = $2 and status = 'succeeded')",
    )
    .bind(subscription_id)
    .bind(period)
    .fetch_one(conn)
    .await
}

/// Records a batch of scheduled charges (the first attempt of each period) in one statement,
/// each holding its send lease (nothing sent yet: each send goes through `begin_send`), with
/// the same checks as `insert`: the mandate active, with both Moment ids, in the
/// subscription's currency, and the subscription live and still leased to the scheduler
/// (`subscription_token`). A charge whose key is taken, or that does not qualify, is left out
/// of the answer; the caller makes those one at a time.
pub async fn insert_scheduled(
    conn: impl PgExecutor<'_>,
    batch: &[Scheduled],
    lease_secs: f64,
    billed_at: time::OffsetDateTime,
    subscription_token: Uuid,
) -> sqlx::Result<Vec<Charge>> {
    let ids: Vec<Uuid> = batch.iter().map(|c| c.id).collect();
    let subs: Vec<Uuid> = batch.iter().map(|c| c.subscription_id).collect();
    let periods: Vec<i32> = batch.iter().map(|c| c.period).collect();
    let keys: Vec<&str> = batch.iter().map(|c| c.idempotency_key.as_str()).collect();
    let tokens: Vec<Uuid> = batch.iter().map(|c| c.lease_token).collect();
    sqlx::query_as(
        "insert into charge (id, mandate_id, amount, currency, reference, metadata, customer_id,
                             payment_method_id, idempotency_key, request_hash, locked_until,
                             lease_token, billed_at, subscription_id, period, attempt, sends)
         select b.id, m.id, s.amount, m.currency, s.reference, s.metadata, m.customer_id,
                m.payment_method_id, b.key, b.key, now() + make_interval(secs => $6), b.token,
                $7, s.id, b.period, 0, 0
         from unnest($1::uuid[], $2::uuid[], $3::int[], $4::text[], $5::uuid[])
                  as b(id, sub, period, key, token)
         join subscription s on s.id = b.sub
         join mandate m on m.id = s.mandate_id
         where m.status = 'active' and m.customer_id is not null
           and m.payment_method_id is not null and m.currency = s.currency
           and s.status in ('active', 'past_due') and s.lease_token = $8
         on conflict (idempotency_key) do nothing
         returning *",
    )
    .bind(&ids)
    .bind(&subs)
    .bind(&periods)
    .bind(&keys)
    .bind(&tokens)
    .bind(lease_secs)
    .bind(billed_at)
    .bind(subscription_token)
    .fetch_all(conn)
    .await
}

/// A session Moment created for a scheduled charge, and where its subscription goes next.
pub struct Accepted<'a> {
    pub charge_id: Uuid,
    pub lease_token: Uuid,
    pub session: &'a Session,
    pub subscription_id: Uuid,
    pub subscription_token: Uuid,
    pub next_period: i32,
    pub next_charge_at: Option<time::OffsetDateTime>,
}

/// Records a batch of Moment's sessions for scheduled charges and moves their subscriptions
/// on, in one statement: each charge `processing` (by its lease's holder only, as
/// `record_session`), and each subscription with its charge in flight and its next period,
/// by its own lease's holder. Returns the charges recorded, with whether a webhook for their
/// session waits to be applied.
pub async fn record_scheduled(
    conn: impl PgExecutor<'_>,
    batch: &[Accepted<'_>],
) -> sqlx::Result<Vec<(Uuid, String, bool)>> {
    let ids: Vec<Uuid> = batch.iter().map(|a| a.charge_id).collect();
    let tokens: Vec<Uuid> = batch.iter().map(|a| a.lease_token).collect();
    let sessions: Vec<&str> = batch.iter().map(|a| a.session.id.as_str()).collect();
    let payments: Vec<Option<&str>> = batch
        .iter()
        .map(|a| a.session.payment_id.as_deref())
        .collect();
    let subs: Vec<Uuid> = batch.iter().map(|a| a.subscription_id).collect();
    let sub_tokens: Vec<Uuid> = batch.iter().map(|a| a.subscription_token).collect();
    let next: Vec<i32> = batch.iter().map(|a| a.next_period).collect();
    let next_at: Vec<Option<time::OffsetDateTime>> =
        batch.iter().map(|a| a.next_charge_at).collect();
    sqlx::query_as(
        "with b as (
             select * from unnest($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::uuid[],
                                  $6::uuid[], $7::int[], $8::timestamptz[])
                 as b(id, token, session_id, payment_id, sub, sub_token, next_period, next_at)),
         locked as (
             select charge.id from charge join b on charge.id = b.id
             order by charge.id for no key update of charge),
         c as (
             update charge set session_id = b.session_id,
                    payment_id = coalesce(charge.payment_id, b.payment_id),
                    status = case when charge.status in ('pending', 'needs_review') then 'processing'
                                  else charge.status end,
                    attempts = attempts + 1, locked_until = null, lease_token = null,
                    next_attempt_at = null, updated_at = now()
             from b join locked l on l.id = b.id
             where charge.id = b.id and charge.lease_token = b.token
             returning charge.id, charge.session_id),
         s as (
             update subscription set open_charge_id = b.id, next_period = b.next_period,
                    next_charge_at = b.next_at, locked_until = null, lease_token = null,
                    updated_at = now()
             from b where subscription.id = b.sub and subscription.lease_token = b.sub_token)
         select c.id, c.session_id,
                exists (select 1 from webhook_event w
                        where w.session_id = c.session_id and w.outcome = 'deferred')
         from c",
    )
    .bind(&ids)
    .bind(&tokens)
    .bind(&sessions)
    .bind(&payments)
    .bind(&subs)
    .bind(&sub_tokens)
    .bind(&next)
    .bind(&next_at)
    .fetch_all(conn)
    .await
}

/// When and how much each of the mandate's charges since `since` counts for its limits (those
/// that succeeded or may still succeed).
pub async fn counted_since(
    conn: impl PgExecutor<'_>,
    mandate_id: Uuid,
    since: time::OffsetDateTime,
) -> sqlx::Result<Vec<(time::OffsetDateTime, i64)>> {
    sqlx::query_as(
        "select billed_at, amount from charge
         where mandate_id = $1 and billed_at >= $2
           and status in ('pending', 'processing', 'succeeded', 'needs_review')",
    )
    .bind(mandate_id)
    .bind(since)
    .fetch_all(conn)
    .await
}

/// The mandate's charges still open (`pending`, `processing`, `needs_review`): what a
/// revocation leaves to Moment or to their senders.
pub async fn open_for_mandate(
    conn: impl PgExecutor<'_>,
    mandate_id: Uuid,
) -> sqlx::Result<Vec<Charge>> {
    sqlx::query_as(
        "select * from charge where mandate_id = $1
           and status in ('pending', 'processing', 'needs_review')
         order by id",
    )
    .bind(mandate_id)
    .fetch_all(conn)
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

/// The forward-only move of a charge by a session snapshot, `$1`–`$8` as bound by
/// [`bind_transition`]. The record (`ours`) is found as in `mandates::APPLY`; it moves to `$3`
/// only from one of `$6`, so a late or replayed older snapshot never takes it back, and only
/// when the snapshot is its own: the same session once it has one (`$2`), the same amount
/// (`$7`) and currency (`$8`) when the snapshot says. Returns the charge and the status it
/// was in (`was`: a `failed` charge that Moment reports paid is worth a warning). The
/// webhook statement (`store::webhook_events::CHARGE_WEBHOOK`) runs the very same update.
pub const APPLY: &str = "with ours as (select id, status from charge where id = coalesce($1, (select id from charge where session_id = $2)))
    update charge c set status = $3, session_id = coalesce(c.session_id, $2),
           payment_id = coalesce($4, c.payment_id),
           failure = case when $3 = 'succeeded' then null else coalesce($5, c.failure) end,
           review_reason = null, next_attempt_at = null, updated_at = now()
    from ours
    where c.id = ours.id and c.status = any($6)
      and (c.session_id is null or c.session_id = $2)
      and ($7::bigint is null or c.amount = $7) and ($8::text is null or c.currency = $8)
    returning c.*, ours.status as was";

/// A record moved by a snapshot, and the status it was in.
#[derive(Debug, sqlx::FromRow)]
pub struct Moved<T> {
    #[sqlx(flatten)]
    pub record: T,
    pub was: String,
}

/// Applies a session's transition to the charge it belongs to. Returns the charge when the
/// transition moved it; `Ok(None)` when it did not (already further along, not its own
/// snapshot, or unknown).
pub async fn apply(
    conn: impl PgExecutor<'_>,
    t: &Transition<ChargeStatus>,
) -> sqlx::Result<Option<Moved<Charge>>> {
    bind_transition(sqlx::query_as(APPLY), t)
        .fetch_optional(conn)
        .await
}

/// Binds `$1`–`$8` of [`APPLY`].
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
        .bind(t.amount)
        .bind(&t.currency)
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

/// Claims `processing` and `needs_review` charges with a session whose completion webhook has
/// not come for `quiet_secs`, so that the reconciler fetches their session; each is then left
/// alone for another `quiet_secs`.
pub async fn claim_quiet(
    conn: impl PgExecutor<'_>,
    limit: i64,
    quiet_secs: f64,
) -> sqlx::Result<Vec<Charge>> {
    sqlx::query_as(
        "update charge set locked_until = now() + make_interval(secs => $2)
         where id in (
             select id from charge
             where status in ('processing', 'needs_review') and session_id is not null
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
