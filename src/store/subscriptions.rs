//! SQL for the `subscription` table. Every change of status, amount or dunning writes its
//! events by trigger, in the statement that makes it (see the migration).

use std::collections::BTreeMap;

use sqlx::types::Json;
use sqlx::{PgExecutor, Postgres, QueryBuilder};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::domain::subscription::ScheduleSpec;
use crate::domain::{Subscription, SubscriptionStatus};

/// A subscription as checked, with its first period's time.
pub struct NewSubscription<'a> {
    pub id: Uuid,
    pub mandate_id: Uuid,
    pub amount: i64,
    pub currency: &'a str,
    pub schedule: &'a ScheduleSpec,
    pub reference: Option<&'a str>,
    pub metadata: &'a BTreeMap<String, String>,
    pub idempotency_key: &'a str,
    pub request_hash: &'a str,
    /// The first period still to come, and when it falls due (`None`: no period is left).
    pub first: Option<(i32, OffsetDateTime)>,
}

/// Inserts the subscription, if its mandate is still active; `None` when the key is taken or
/// the mandate no longer qualifies (the caller tells which).
pub async fn insert(
    conn: impl PgExecutor<'_>,
    s: &NewSubscription<'_>,
) -> sqlx::Result<Option<Subscription>> {
    sqlx::query_as(
        "insert into subscription (id, mandate_id, amount, currency, schedule, reference, metadata,
                                   idempotency_key, request_hash, next_period, next_charge_at,
                                   status)
         select $1, m.id, $3, m.currency, $5, $6, $7, $8, $9, coalesce($10, 0), $11,
                case when $11::timestamptz is null then 'finished' else 'active' end
         from mandate m where m.id = $2 and m.status = 'active' and m.currency = $4
         on conflict (idempotency_key) do nothing
         returning *",
    )
    .bind(s.id)
    .bind(s.mandate_id)
    .bind(s.amount)
    .bind(s.currency)
    .bind(Json(s.schedule))
    .bind(s.reference)
    .bind(Json(s.metadata))
    .bind(s.idempotency_key)
    .bind(s.request_hash)
    .bind(s.first.map(|f| f.0))
    .bind(s.first.map(|f| f.1))
    .fetch_optional(conn)
    .await
}

pub async fn by_id(conn: impl PgExecutor<'_>, id: Uuid) -> sqlx::Result<Option<Subscription>> {
    sqlx::query_as("select * from subscription where id = $1")
        .bind(id)
        .fetch_optional(conn)
        .await
}

pub async fn by_idempotency_key(
    conn: impl PgExecutor<'_>,
    key: &str,
) -> sqlx::Result<Option<Subscription>> {
    sqlx::query_as("select * from subscription where idempotency_key = $1")
        .bind(key)
        .fetch_optional(conn)
        .await
}

/// Up to `limit` of the mandate's subscriptions other than `except` that will charge again:
/// active or past due, or paused until a set time; none cancelled at the end of its period.
/// Oldest first.
pub async fn live_siblings(
    conn: impl PgExecutor<'_>,
    mandate_id: Uuid,
    except: Uuid,
    limit: i64,
) -> sqlx::Result<Vec<Subscription>> {
    sqlx::query_as(
        "select * from subscription
         where mandate_id = $1 and id <> $2
           and (status in ('active', 'past_due') or (status = 'paused' and resume_at is not null))
           and not cancel_at_period_end
         order by id limit $3",
    )
    .bind(mandate_id)
    .bind(except)
    .bind(limit)
    .fetch_all(conn)
    .await
}

/// Filters of `GET /subscriptions`.
#[derive(Debug, Default)]
pub struct Filter {
    pub mandate_id: Option<Uuid>,
    pub status: Option<SubscriptionStatus>,
    pub before: Option<Uuid>,
    pub limit: i64,
}

/// Newest first.
pub async fn list(conn: impl PgExecutor<'_>, f: &Filter) -> sqlx::Result<Vec<Subscription>> {
    let mut q = QueryBuilder::<Postgres>::new("select * from subscription where true");
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

/// Claims up to `limit` subscriptions with a charge to make at `now` (a period due while
/// active or past due without a retry waiting), and up to `limit` with a retry due, none in
/// flight, with a lease named by `token`; each kind in its due order, by its own index. Each is billed by the holder; a crashed holder's lease runs out and
/// the next claim bills the same period under the same key.
pub async fn claim_due(
    conn: impl PgExecutor<'_>,
    now: OffsetDateTime,
    limit: i64,
    lease_secs: f64,
    token: Uuid,
) -> sqlx::Result<Vec<Subscription>> {
    sqlx::query_as(
        "with regular as (
             select id from subscription
             where status in ('active', 'past_due') and retry_at is null
               and open_charge_id is null and next_charge_at <= $1
               and coalesce(locked_until, '-infinity') < now()
             order by next_charge_at
             limit $2
             for update skip locked),
         retries as (
             select id from subscription
             where status = 'past_due' and open_charge_id is null and retry_at <= $1
               and coalesce(locked_until, '-infinity') < now()
             order by retry_at
             limit $2
             for update skip locked)
         update subscription set locked_until = now() + make_interval(secs => $3), lease_token = $4
         where id in (select id from regular union all select id from retries)
         returning *",
    )
    .bind(now)
    .bind(limit)
    .bind(lease_secs)
    .bind(token)
    .fetch_all(conn)
    .await
}

/// The lease holder made `charge_id` for the subscription: it is now in flight, and for a
/// regular period the schedule moves on to `next` (`None`: no period is left).
pub async fn charged(
    conn: impl PgExecutor<'_>,
    id: Uuid,
    token: Uuid,
    charge_id: Uuid,
    next: Option<(i32, Option<OffsetDateTime>)>,
) -> sqlx::Result<bool> {
    let done = sqlx::query(
        "update subscription set open_charge_id = $3,
                next_period = coalesce($4, next_period),
                next_charge_at = case when $4::int is null then next_charge_at else $5 end,
                retry_at = case when $4::int is null then null else retry_at end,
                locked_until = null, lease_token = null, updated_at = now()
         where id = $1 and lease_token = $2",
    )
    .bind(id)
    .bind(token)
    .bind(charge_id)
    .bind(next.map(|n| n.0))
    .bind(next.and_then(|n| n.1))
    .execute(conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// The lease holder ends a period no charge could be made for, in one statement: the
/// schedule moves on to `next` (`None` for a retry: nothing moves), dunning ends, and the
/// subscription becomes `to` with `failure`; `exhausted` says dunning ran out (the
/// `dunning.exhausted` event). Only while the subscription is live and the lease is still
/// the holder's: a pause or cancel that came meanwhile stands.
#[allow(clippy::too_many_arguments)]
pub async fn end_period(
    conn: impl PgExecutor<'_>,
    id: Uuid,
    token: Uuid,
    next: Option<(i32, Option<OffsetDateTime>)>,
    to: SubscriptionStatus,
    failure: &serde_json::Value,
    exhausted: bool,
    now: OffsetDateTime,
) -> sqlx::Result<bool> {
    let done = sqlx::query(
        "update subscription set
                next_period = coalesce($3, next_period),
                next_charge_at = case when $3::int is null then next_charge_at else $4 end,
                status = $5, last_failure = $6,
                dunning_exhausted_at = case when $7 then $8 else dunning_exhausted_at end,
                dunning_period = null, dunning_failures = 0, dunning_since = null, retry_at = null,
                locked_until = null, lease_token = null, updated_at = now()
         where id = $1 and lease_token = $2 and status in ('active', 'past_due')",
    )
    .bind(id)
    .bind(token)
    .bind(next.map(|n| n.0))
    .bind(next.and_then(|n| n.1))
    .bind(to)
    .bind(Json(failure))
    .bind(exhausted)
    .bind(now)
    .execute(conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Ends the dunning of a subscription leased to `token` whose period Moment reported paid
/// after its charge was taken for a failure: no retry is made, and the subscription is
/// `active` again (`finished` when no period is left). False when the lease is not held.
pub async fn paid_meanwhile(
    conn: impl PgExecutor<'_>,
    id: Uuid,
    token: Uuid,
    finished: bool,
) -> sqlx::Result<bool> {
    let done = sqlx::query(
        "update subscription set
                status = case when $3 then 'finished' else 'active' end,
                dunning_period = null, dunning_failures = 0, dunning_since = null, retry_at = null,
                last_failure = null, locked_until = null, lease_token = null, updated_at = now()
         where id = $1 and lease_token = $2 and status in ('active', 'past_due')",
    )
    .bind(id)
    .bind(token)
    .bind(finished)
    .execute(conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Gives the lease back without a charge; the next run tries again after `RELEASE_BACKOFF`
/// seconds, so that a subscription that cannot be charged now is not claimed in a loop.
pub async fn release(conn: impl PgExecutor<'_>, id: Uuid, token: Uuid) -> sqlx::Result<()> {
    sqlx::query(
        "update subscription set locked_until = now() + make_interval(secs => 5),
                lease_token = null
         where id = $1 and lease_token = $2",
    )
    .bind(id)
    .bind(token)
    .execute(conn)
    .await?;
    Ok(())
}

/// A subscription whose charge in flight has an outcome, locked for its settlement.
#[derive(Debug, sqlx::FromRow)]
pub struct Outcome {
    #[sqlx(flatten)]
    pub subscription: Subscription,
    pub charge_status: String,
    pub charge_failure: Option<Json<serde_json::Value>>,
    pub charge_period: Option<i32>,
}

/// Up to `limit` subscriptions whose charge in flight succeeded, failed or needs review, locked
/// until the transaction ends (others skip them).
pub async fn outcomes(conn: impl PgExecutor<'_>, limit: i64) -> sqlx::Result<Vec<Outcome>> {
    sqlx::query_as(
        "select s.*, c.status as charge_status, c.failure as charge_failure,
                c.period as charge_period
         from subscription s
         cross join lateral (select status, failure, period from charge
                             where id = s.open_charge_id) c
         where s.open_charge_id is not null and c.status in ('succeeded', 'failed', 'needs_review')
         order by s.id
         limit $1
         for update of s skip locked",
    )
    .bind(limit)
    .fetch_all(conn)
    .await
}

/// What settling a subscription's charge does to it.
pub enum Settle {
    /// Paid: dunning ends; `finished` when no period is left.
    Paid { finished: bool },
    /// Failed, to be retried at `retry_at` (counted from `since`, the first failure).
    Retry {
        period: i32,
        since: OffsetDateTime,
        retry_at: OffsetDateTime,
    },
    /// The period ends without a payment: the subscription becomes `to`; `exhausted` when
    /// dunning ran out (the `dunning.exhausted` event), not for a charge left to review.
    End {
        to: SubscriptionStatus,
        exhausted: bool,
    },
    /// The subscription was paused or cancelled meanwhile: the charge is only let go.
    Detach,
}

/// Records the outcome of the subscription's charge in flight (with its `failure`).
pub async fn settle(
    conn: impl PgExecutor<'_>,
    id: Uuid,
    how: &Settle,
    failure: Option<&serde_json::Value>,
    now: OffsetDateTime,
) -> sqlx::Result<()> {
    let q = match how {
        Settle::Paid { finished } => return settle_paid(conn, &[(id, *finished)]).await,
        Settle::Retry {
            period,
            since,
            retry_at,
        } => sqlx::query(
            "update subscription set open_charge_id = null, status = 'past_due',
                    dunning_period = $2, dunning_failures = dunning_failures + 1,
                    dunning_since = $3, retry_at = $4, last_failure = $5, updated_at = now()
             where id = $1",
        )
        .bind(id)
        .bind(period)
        .bind(since)
        .bind(retry_at)
        .bind(failure.map(Json)),
        Settle::End { to, exhausted } => sqlx::query(
            "update subscription set open_charge_id = null, status = $2,
                    dunning_period = null, dunning_failures = 0, dunning_since = null,
                    retry_at = null, last_failure = $3,
                    dunning_exhausted_at = case when $5 then $4 else dunning_exhausted_at end,
                    updated_at = now()
             where id = $1",
        )
        .bind(id)
        .bind(*to)
        .bind(failure.map(Json))
        .bind(now)
        .bind(*exhausted),
        Settle::Detach => sqlx::query(
            "update subscription set open_charge_id = null, updated_at = now() where id = $1",
        )
        .bind(id),
    };
    q.execute(conn).await?;
    Ok(())
}

/// [`settle`] with [`Settle::Paid`] for many subscriptions in one statement: `(id,
/// finished)` each.
pub async fn settle_paid(conn: impl PgExecutor<'_>, paid: &[(Uuid, bool)]) -> sqlx::Result<()> {
    if paid.is_empty() {
        return Ok(());
    }
    let (ids, finished): (Vec<Uuid>, Vec<bool>) = paid.iter().copied().unzip();
    sqlx::query(
        "update subscription s set open_charge_id = null, dunning_period = null,
                dunning_failures = 0, dunning_since = null, retry_at = null, last_failure = null,
                status = case when p.finished then 'finished'
                              when s.status = 'past_due' then 'active' else s.status end,
                updated_at = now()
         from unnest($1::uuid[], $2::bool[]) as p(id, finished)
         where s.id = p.id",
    )
    .bind(&ids)
    .bind(&finished)
    .execute(conn)
    .await?;
    Ok(())
}

/// Cancels every live subscription of a mandate that was revoked.
pub async fn cancel_for_mandate(conn: impl PgExecutor<'_>, mandate_id: Uuid) -> sqlx::Result<u64> {
    let done = sqlx::query(
        "update subscription set status = 'cancelled', dunning_period = null,
                dunning_failures = 0, dunning_since = null, retry_at = null,
                last_failure = '{\"code\": \"mandate_revoked\", \"message\": \"the mandate was revoked\"}',
                updated_at = now()
         where mandate_id = $1 and status in ('active', 'past_due', 'paused')",
    )
    .bind(mandate_id)
    .execute(conn)
    .await?;
    Ok(done.rows_affected())
}

/// Sends `subscription.charge_upcoming` (by trigger) for every active subscription whose next
/// charge is due before `until`, once per period.
pub async fn announce_upcoming(
    conn: impl PgExecutor<'_>,
    until: OffsetDateTime,
) -> sqlx::Result<u64> {
    let done = sqlx::query(
        "update subscription set notified_period = next_period
         where status = 'active' and next_charge_at <= $1 and notified_period < next_period",
    )
    .bind(until)
    .execute(conn)
    .await?;
    Ok(done.rows_affected())
}

/// Paused subscriptions whose `resume_at` has come (resuming one checks it is still paused).
pub async fn due_to_resume(
    conn: impl PgExecutor<'_>,
    now: OffsetDateTime,
    limit: i64,
) -> sqlx::Result<Vec<Subscription>> {
    sqlx::query_as(
        "select * from subscription where status = 'paused' and resume_at <= $1
         order by resume_at limit $2",
    )
    .bind(now)
    .bind(limit)
    .fetch_all(conn)
    .await
}

/// A change asked for by the merchant: the new status (if any) and fields.
#[derive(Debug, Default)]
pub struct Change {
    pub status: Option<SubscriptionStatus>,
    pub amount: Option<i64>,
    /// `Some(None)` clears it.
    pub resume_at: Option<Option<OffsetDateTime>>,
    pub cancel_at_period_end: Option<bool>,
    /// On resumption: the period billed next and its time.
    pub next: Option<(i32, Option<OffsetDateTime>)>,
    /// Ends any dunning (pause, resume, cancel).
    pub end_dunning: bool,
}

/// Applies `change` if the subscription is still in one of `from`; the row as it is after,
/// or `None` when it was not in one of them.
pub async fn change(
    conn: impl PgExecutor<'_>,
    id: Uuid,
    from: &[SubscriptionStatus],
    c: &Change,
) -> sqlx::Result<Option<Subscription>> {
    let from: Vec<&str> = from.iter().map(|s| s.as_str()).collect();
    sqlx::query_as(
        "update subscription set
                status = coalesce($3, status),
                amount = coalesce($4, amount),
                resume_at = case when $5 then $6 else resume_at end,
                cancel_at_period_end = coalesce($7, cancel_at_period_end),
                next_period = coalesce($8, next_period),
                next_charge_at = case when $8::int is null then next_charge_at else $9 end,
                notified_period = case when $8::int is null then notified_period
                                       else least(notified_period, $8 - 1) end,
                dunning_period = case when $10 then null else dunning_period end,
                dunning_failures = case when $10 then 0 else dunning_failures end,
                dunning_since = case when $10 then null else dunning_since end,
                retry_at = case when $10 then null else retry_at end,
                updated_at = now()
         where id = $1 and status = any($2)
         returning *",
    )
    .bind(id)
    .bind(&from)
    .bind(c.status)
    .bind(c.amount)
    .bind(c.resume_at.is_some())
    .bind(c.resume_at.flatten())
    .bind(c.cancel_at_period_end)
    .bind(c.next.map(|n| n.0))
    .bind(c.next.and_then(|n| n.1))
    .bind(c.end_dunning)
    .fetch_optional(conn)
    .await
}

/// Where the scheduler stands: charges in flight, outcomes to record, and work due at `now`.
#[derive(Debug, Clone, Copy, Default, sqlx::FromRow)]
pub struct Backlog {
    pub in_flight: i64,
    pub to_settle: i64,
    pub due: i64,
}

pub async fn backlog(conn: impl PgExecutor<'_>, now: OffsetDateTime) -> sqlx::Result<Backlog> {
    sqlx::query_as(
        "select
            (select count(*) from subscription s
              cross join lateral (select status from charge where id = s.open_charge_id) c
              where s.open_charge_id is not null and c.status in ('pending', 'processing'))
              as in_flight,
            (select count(*) from subscription s
              cross join lateral (select status from charge where id = s.open_charge_id) c
              where s.open_charge_id is not null
                and c.status in ('succeeded', 'failed', 'needs_review'))
              as to_settle,
            (select count(*) from subscription
              where open_charge_id is null
                and (((status in ('active', 'past_due') and retry_at is null and next_charge_at <= $1)
                      or (status = 'past_due' and retry_at <= $1))
                     or (status = 'paused' and resume_at <= $1))) as due",
    )
    .bind(now)
    .fetch_one(conn)
    .await
}

/// The first moment after `after` when a charge falls due (a regular period or a retry) or a
/// paused subscription resumes; each read from its own index.
pub async fn next_due(
    conn: impl PgExecutor<'_>,
    after: OffsetDateTime,
) -> sqlx::Result<Option<OffsetDateTime>> {
    sqlx::query_scalar(
        "select least(
             (select min(next_charge_at) from subscription
              where status in ('active', 'past_due') and retry_at is null
                and open_charge_id is null and next_charge_at > $1),
             (select min(retry_at) from subscription
              where status = 'past_due' and open_charge_id is null and retry_at > $1),
             (select min(resume_at) from subscription
              where status = 'paused' and resume_at > $1))",
    )
    .bind(after)
    .fetch_one(conn)
    .await
}

/// The earliest moment after `after` at which the scheduler has something to do: a period
/// due, a retry, a resumption, or an upcoming-charge notice (`notice` before its charge).
pub async fn next_wakeup(
    conn: impl PgExecutor<'_>,
    after: OffsetDateTime,
    notice_secs: f64,
) -> sqlx::Result<Option<OffsetDateTime>> {
    sqlx::query_scalar(
        "select min(t) from (
             select min(next_charge_at) as t from subscription
              where status in ('active', 'past_due') and retry_at is null and next_charge_at > $1
             union all
             select min(retry_at) from subscription where status = 'past_due' and retry_at > $1
             union all
             select min(resume_at) from subscription where status = 'paused' and resume_at > $1
             union all
             select min(next_charge_at - make_interval(secs => $2)) from subscription
              where status = 'active' and notified_period < next_period
                and next_charge_at - make_interval(secs => $2) > $1
         ) w",
    )
    .bind(after)
    .bind(notice_secs)
    .fetch_one(conn)
    .await
}
