//! The first of the month: many subscriptions due at the same moment, charged by the
//! scheduler of `serve` (its background worker) against the simulator answering after
//! `LATENCY_MS`, at a given `SCHEDULER_CONCURRENCY`.

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::bail;
use sqlx::PgPool;

use crate::drivers::{scrape, sum_metric};
use crate::proc_stats::Cpu;
use crate::process::{spawn, stop};

/// What one level of concurrency came to.
pub struct Billed {
    pub concurrency: usize,
    pub charges: usize,
    /// From the moment they fell due to the last one accepted by Moment, and to the last one
    /// settled by its webhook.
    pub sent_secs: f64,
    pub settled_secs: f64,
    /// Database transactions committed per charge (each statement outside a transaction is
    /// one), in the whole run: claims, charges, Moment's answers, webhooks and settlements.
    pub xacts_per_charge: f64,
    /// Write-ahead log written per charge (KiB): Postgres's writes, which swing less with the
    /// machine than its CPU.
    pub wal_kib_per_charge: f64,
    /// Mean milliseconds of the scheduler's calls to Moment, as the service measured them,
    /// and how long the simulator's answers came after its latency was up (its own delay on
    /// the shared cores), until every charge was sent.
    pub call_ms: f64,
    pub sim_overrun_ms: f64,
    /// Seconds of calls to Moment in all, until every charge was sent.
    pub call_secs: f64,
    pub cpu: Cpu,
}

impl Billed {
    pub fn per_sec(&self) -> f64 {
        self.charges as f64 / self.sent_secs
    }

    /// The share of the run the scheduler's slots spent in calls to Moment: its calls' time
    /// over its concurrency × the run.
    pub fn occupancy(&self) -> f64 {
        self.call_secs / (self.concurrency as f64 * self.sent_secs)
    }
}

/// How the service is started (the same as the other runs), and where.
pub struct Service<'a> {
    pub command: &'a dyn Fn() -> Command,
    pub log: std::path::PathBuf,
    pub ready_url: String,
    pub metrics_url: String,
    pub sim_url: String,
    pub sim_pid: u32,
}

/// The service's Moment calls so far: seconds in all, and how many.
async fn moment_calls(http: &reqwest::Client, service: &Service<'_>) -> anyhow::Result<(f64, f64)> {
    let text = scrape(http, &service.metrics_url).await?;
    Ok((
        sum_metric(&text, "moment_request_duration_seconds_sum", ""),
        sum_metric(&text, "moment_request_duration_seconds_count", ""),
    ))
}

/// The simulator's answers that waited out a latency so far: how many, and the microseconds
/// they overran it in all.
async fn sim_overruns(http: &reqwest::Client, service: &Service<'_>) -> anyhow::Result<(f64, f64)> {
    let stats: serde_json::Value = http
        .get(format!("{}/_sim/stats", service.sim_url))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let n = |k: &str| stats[k].as_f64().unwrap_or(0.0);
    Ok((n("latency_answers"), n("latency_overrun_micros")))
}

/// Mandates the simulator knows, with a saved payment method: those made through its
/// checkout and charged in the billing run (the ingestion runs' mandates were made active by
/// made-up webhooks; Moment would refuse their payment methods).
const KNOWN_TO_MOMENT: &str = "m.status = 'active' and m.payment_method_id is not null
    and exists (select 1 from charge c where c.mandate_id = m.id and c.subscription_id is null)";

/// Longer than Postgres waits before an idle backend flushes its statistics.
const FLUSH: Duration = Duration::from_secs(11);

async fn xacts(db: &PgPool) -> anyhow::Result<i64> {
    Ok(sqlx::query_scalar(
        "select xact_commit from pg_stat_database where datname = current_database()",
    )
    .fetch_one(db)
    .await?)
}

/// Starts a service with `concurrency`, makes `n` subscriptions due now on the active
/// mandates, and measures until every charge is settled.
pub async fn first_of_the_month(
    db: &PgPool,
    http: &reqwest::Client,
    service: &Service<'_>,
    concurrency: usize,
    n: usize,
) -> anyhow::Result<Billed> {
    let mut cmd = (service.command)();
    // The reconciler is held off: the ingestion runs' and pgbench's pools of pending mandates
    // (made up, unknown to the simulator) would otherwise keep the worker asking Moment about
    // them between the scheduler's passes.
    cmd.env("SCHEDULER_CONCURRENCY", concurrency.to_string())
        .env("WORKER_INTERVAL_SECS", "1")
        .env("RECONCILE_AFTER_SECS", "86400");
    let mut child = spawn(&service.log, &mut cmd)?;
    let result = measure(db, http, service, child.id(), concurrency, n).await;
    stop(&mut child);
    result
}

async fn measure(
    db: &PgPool,
    http: &reqwest::Client,
    service: &Service<'_>,
    pid: u32,
    concurrency: usize,
    n: usize,
) -> anyhow::Result<Billed> {
    for _ in 0..200 {
        if http
            .get(&service.ready_url)
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    sqlx::query(
        "update subscription set status = 'cancelled' where status in ('active', 'past_due')",
    )
    .execute(db)
    .await?;
    // Webhooks out are measured on their own (the events-out row): here the merchant's
    // endpoint is off, so that the run measures the scheduler, Moment's calls and webhooks.
    sqlx::query("update webhook_endpoint set enabled = false")
        .execute(db)
        .await?;
    let before_charges: i64 =
        sqlx::query_scalar("select count(*) from charge where subscription_id is not null")
            .fetch_one(db)
            .await?;
    let mandates: i64 = sqlx::query_scalar(&format!(
        "select count(*) from mandate m where {KNOWN_TO_MOMENT}"
    ))
    .fetch_one(db)
    .await?;
    if mandates == 0 {
        bail!("no active mandate to subscribe");
    }
    let per_mandate = (n as i64 + mandates - 1) / mandates;
    // Monthly from today (in Johannesburg), period 0 due now: one charge each in this run,
    // the next a month on (an anchor in the past would make every missed month due at once).
    let today = time::OffsetDateTime::now_utc()
        .to_offset(time::macros::offset!(+2))
        .date();
    let schedule = serde_json::json!({
        "unit": "month", "every": 1, "day_of_month": today.day(),
        "start_date": today.to_string(), "charge_time": "09:00",
        "time_zone": "Africa/Johannesburg", "utc_offset": "+02:00"
    });
    // The runs before this one leave dead rows: vacuumed first, as autovacuum would have (a
    // machine may run Postgres with it off).
    sqlx::query("vacuum subscription, charge, mandate, event, webhook_event")
        .execute(db)
        .await?;
    // Due together at one moment a little ahead, so that Postgres has statistics for them
    // first (as autovacuum's analyze would give a database that has had them for a while)
    // and the counters below start from a quiet database.
    let due_in = FLUSH + Duration::from_secs(5);
    let due_at = time::OffsetDateTime::now_utc() + due_in;
    let due = Instant::now() + due_in;
    sqlx::query(&format!(
        "insert into subscription (id, mandate_id, amount, currency, schedule, request_hash,
                                   next_period, next_charge_at, notified_period)
         select gen_random_uuid(), m.id, 100, m.currency, $1, 'bench', 0, $4, 0
         from mandate m cross join generate_series(1, $2)
         where {KNOWN_TO_MOMENT}
         limit $3"
    ))
    .bind(&schedule)
    .bind(per_mandate)
    .bind(n as i64)
    .bind(due_at)
    .execute(db)
    .await?;
    sqlx::query("analyze subscription, charge, mandate")
        .execute(db)
        .await?;
    // Postgres counts a backend's commits when it flushes its statistics: at once while busy,
    // within 10 s once idle. Read only when every backend has flushed.
    tokio::time::sleep(FLUSH).await;
    let xacts_before = xacts(db).await?;
    let wal_before: String = sqlx::query_scalar("select pg_current_wal_lsn()::text")
        .fetch_one(db)
        .await?;
    let cpu_before = Cpu::now(pid, service.sim_pid);
    let calls_before = moment_calls(http, service).await?;
    let overruns_before = sim_overruns(http, service).await?;
    tokio::time::sleep_until(due.into()).await;
    // The first of the month.
    let started = Instant::now();
    // Progress, from the indexes (a count over the charges is a scan that grows with every
    // run, and weighed on the run it measured). Until every charge is sent, every 50 ms and
    // reading only whether any is left (the first entry of an index): whether a subscription is
    // still due (claimed or not, until its charge is recorded), or a charge not yet accepted by
    // Moment. Then once a second until every charge has settled.
    let unsent = || async {
        sqlx::query_scalar::<_, bool>(
            "select exists (select 1 from subscription
                            where status in ('active', 'past_due') and retry_at is null
                              and open_charge_id is null and next_charge_at <= $1)
                 or exists (select 1 from charge
                            where status = 'pending' and subscription_id is not null)",
        )
        .bind(due_at)
        .fetch_one(db)
        .await
    };
    let unsettled = || async {
        sqlx::query_as::<_, (i64, i64)>(
            "select (select count(*) from charge
                     where status = 'pending' and subscription_id is not null),
                    (select count(*) from charge
                     where status = 'processing' and subscription_id is not null)",
        )
        .fetch_one(db)
        .await
    };
    let deadline = started + Duration::from_secs(600);
    while unsent().await? {
        if Instant::now() > deadline {
            bail!("charges still unsent after 600 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let sent_secs = started.elapsed().as_secs_f64();
    let calls = moment_calls(http, service).await?;
    let overruns = sim_overruns(http, service).await?;
    let call_secs = calls.0 - calls_before.0;
    let call_ms = 1000.0 * call_secs / (calls.1 - calls_before.1).max(1.0);
    let sim_overrun_ms =
        (overruns.1 - overruns_before.1) / 1000.0 / (overruns.0 - overruns_before.0).max(1.0);
    loop {
        let (pending, processing) = unsettled().await?;
        if pending == 0 && processing == 0 {
            break;
        }
        if Instant::now() > deadline {
            bail!("{} charges unsettled after 600 s", pending + processing);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let settled_secs = started.elapsed().as_secs_f64();
    let cpu = Cpu::now(pid, service.sim_pid).since(cpu_before);
    let wal: f64 =
        sqlx::query_scalar("select pg_wal_lsn_diff(pg_current_wal_lsn(), $1::pg_lsn)::float8")
            .bind(&wal_before)
            .fetch_one(db)
            .await?;
    // Every one paid: a run of refusals would measure something else.
    let unpaid: Vec<(String, Option<String>, i64)> = sqlx::query_as(
        "select status, failure->>'code', count(*) from charge
         where subscription_id is not null and status <> 'succeeded'
           and created_at >= now() - make_interval(secs => $1)
         group by 1, 2",
    )
    .bind(started.elapsed().as_secs_f64() + 1.0)
    .fetch_all(db)
    .await?;
    if !unpaid.is_empty() {
        bail!("scheduled charges not paid (status, failure, count): {unpaid:?}");
    }
    let made: i64 =
        sqlx::query_scalar("select count(*) from charge where subscription_id is not null")
            .fetch_one(db)
            .await?;
    if made - before_charges != n as i64 {
        bail!(
            "{} charges made for {n} subscriptions due",
            made - before_charges
        );
    }
    tokio::time::sleep(FLUSH).await;
    let xacts_after = xacts(db).await?;
    Ok(Billed {
        concurrency,
        charges: n,
        sent_secs,
        settled_secs,
        xacts_per_charge: (xacts_after - xacts_before) as f64 / n as f64,
        wal_kib_per_charge: wal / 1024.0 / n as f64,
        call_ms,
        sim_overrun_ms,
        call_secs,
        cpu,
    })
}
