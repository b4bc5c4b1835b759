//! The benchmark behind `scripts/bench`: pgbench's ceiling for the webhook transaction, then
//! webhook ingestion and a billing run against the release binary (`serve` and `sim` as child
//! processes), then BENCHMARKS.md. Arguments: `--tiny` (the CI size), `--secs N` (each run's
//! length), `--mandates N` (the billing run's size), `--out PATH`.
//! `BENCH_DATABASE_URL` names the database it recreates (default
//! `postgres://postgres@127.0.0.1:5432/moment_mandates_bench`).

mod args;
mod drivers;
mod pgbench;
mod proc_stats;
mod process;
mod report;
mod scheduler;
mod statement;

use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use base64::Engine as _;
use moment_mandates::moment::signature::WebhookSecret;
use serde_json::{Value, json};
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;

use args::Size;
use drivers::{Run, active_mandates, charges, scrape, settle, sum_metric, webhooks};
use pgbench::{run_pgbench, statement_script, transaction_script};
use proc_stats::{machine, rss_kib};
use process::{free_port, recreate_database, spawn, stop, wait_ready};
use report::report;

const API_KEY: &str = "bench_api_key_0123456789abcdef";
const MOMENT_KEY: &str = "sk_test_bench_0123456789";
/// Moment's latency during the billing run.
const LATENCY_MS: u64 = 50;
/// Connections for the ingestion runs; the billing run keeps `BILLING_IN_FLIGHT` in flight.
const LEVELS: [usize; 3] = [1, 16, 64];
const BILLING_IN_FLIGHT: usize = 64;
/// The scheduler's concurrency in the first-of-the-month runs.
const SCHEDULER_LEVELS: [usize; 2] = [64, 256];

fn main() -> anyhow::Result<()> {
    let args::Args { size, out } = args::parse()?;
    let url = std::env::var("BENCH_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/moment_mandates_bench".into());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    // Ctrl-C drops the run, and with it the simulator's process (see `process::Reaped`).
    let report = rt.block_on(async {
        tokio::select! {
            report = run(&size, &url) => report,
            _ = tokio::signal::ctrl_c() => bail!("interrupted"),
        }
    })?;
    std::fs::write(&out, report).with_context(|| format!("cannot write {}", out.display()))?;
    println!("bench: wrote {}", out.display());
    Ok(())
}

async fn run(size: &Size, url: &str) -> anyhow::Result<String> {
    let machine = machine().await;
    println!(
        "bench: {} size on {}",
        size.name,
        machine.lines().next().unwrap_or("")
    );
    recreate_database(url).await?;

    let service_port = free_port()?;
    let metrics_port = free_port()?;
    let sim_port = free_port()?;
    let secret = format!(
        "whsec_{}",
        base64::engine::general_purpose::STANDARD.encode(b"moment-mandates benchmark secret")
    );
    let signer = Arc::new(WebhookSecret::parse(&secret).expect("a valid secret"));
    let service_url = format!("http://127.0.0.1:{service_port}");
    let metrics_url = format!("http://127.0.0.1:{metrics_port}/metrics");
    let sim_url = format!("http://127.0.0.1:{sim_port}");

    let logs = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    // The simulator stands in for Moment, which runs on machines of its own: here it shares
    // the cores with the service and Postgres under test, and would answer late whenever they
    // kept it waiting for a core. It runs ahead of them (see `process::ahead`).
    let mut sim = process::Reaped(spawn(
        &logs.join("bench-sim.log"),
        process::ahead(env!("CARGO_BIN_EXE_moment-mandates"))
            .arg("sim")
            .env("SIM_LISTEN_ADDR", format!("127.0.0.1:{sim_port}"))
            .env("SIM_SECRET_KEY", MOMENT_KEY)
            .env("SIM_WEBHOOK_SECRET", &secret)
            .env("SIM_WEBHOOK_URL", format!("{service_url}/webhooks/moment"))
            .env("SIM_SETTLE_DELAY_MS", "100")
            .env("RUST_LOG", "warn"),
    )?);
    let started = Instant::now();
    let service_command = || {
        let mut c = Command::new(env!("CARGO_BIN_EXE_moment-mandates"));
        c.arg("serve")
            .env("DATABASE_URL", url)
            .env("LISTEN_ADDR", format!("127.0.0.1:{service_port}"))
            .env("METRICS_LISTEN_ADDR", format!("127.0.0.1:{metrics_port}"))
            .env("MOMENT_API_URL", &sim_url)
            .env("MOMENT_SECRET_KEY", MOMENT_KEY)
            .env("MOMENT_WEBHOOK_SECRETS", &secret)
            .env("API_KEYS", API_KEY);
        c
    };
    let mut service = spawn(&logs.join("bench-service.log"), &mut service_command())?;
    let http = reqwest::Client::new();
    wait_ready(&http, &format!("{service_url}/readyz"), &mut service).await?;
    let startup_ms = started.elapsed().as_secs_f64() * 1000.0;
    wait_ready(&http, &format!("{sim_url}/_sim/stats"), &mut sim).await?;
    println!(
        "bench: the simulator runs {}",
        process::raise_session(sim.id())
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    let idle_rss = rss_kib(service.id(), "VmRSS");
    println!("bench: service ready in {startup_ms:.0} ms, {idle_rss} KiB resident");

    let db = PgPoolOptions::new().max_connections(4).connect(url).await?;
    let result = measure(
        size,
        url,
        &db,
        &http,
        &signer,
        (&service_url, &metrics_url),
        &sim_url,
        (service.id(), sim.id()),
    )
    .await;
    let service_hwm = rss_kib(service.id(), "VmHWM");
    stop(&mut service);
    let mut m = result?;
    // The first of the month: the scheduler at two concurrencies, a fresh service each.
    let scheduled = scheduler::Service {
        command: &service_command,
        log: logs.join("bench-scheduler.log"),
        ready_url: format!("{service_url}/readyz"),
        metrics_url: metrics_url.clone(),
        sim_url: sim_url.clone(),
        sim_pid: sim.id(),
    };
    let result = async {
        for c in SCHEDULER_LEVELS {
            let b = scheduler::first_of_the_month(&db, &http, &scheduled, c, size.subscriptions)
                .await?;
            println!(
                "bench: first of the month, concurrency {c}: {} charges in {:.1} s: {:.0}/s ({:.3} of the simulator's limit), settled after {:.1} s, {:.1} transactions per charge, calls {:.2} ms (the simulator {:.2} ms over its latency), slots in calls {:.1} %",
                b.charges,
                b.sent_secs,
                b.per_sec(),
                b.per_sec() / (c as f64 * 1000.0 / LATENCY_MS as f64),
                b.settled_secs,
                b.xacts_per_charge,
                b.call_ms,
                b.sim_overrun_ms,
                b.occupancy() * 100.0
            );
            m.scheduled.push(b);
        }
        anyhow::Ok(())
    }
    .await;
    stop(&mut sim);
    result?;
    Ok(report(
        size,
        &machine,
        startup_ms,
        idle_rss,
        service_hwm,
        &m,
    ))
}

struct Measured {
    /// pgbench running the service's one statement at 64 clients.
    statement_tps: f64,
    /// Mean milliseconds of a Moment call, and of the service's `POST /charges`, in the run.
    moment_ms: f64,
    handler_ms: f64,
    pgbench: Vec<(usize, f64, f64)>,
    ingestion: Vec<Run>,
    flood: Run,
    billing: Run,
    billing_settled_secs: f64,
    billing_setup_secs: f64,
    sim_sessions: u64,
    sim_payments: u64,
    /// Events delivered to the local receiver, and how long that took.
    events_out: u64,
    events_out_secs: f64,
    /// The first of the month, at each scheduler concurrency.
    scheduled: Vec<scheduler::Billed>,
}

#[allow(clippy::too_many_arguments)]
async fn measure(
    size: &Size,
    url: &str,
    db: &PgPool,
    http: &reqwest::Client,
    signer: &Arc<WebhookSecret>,
    (service_url, metrics_url): (&str, &str),
    sim_url: &str,
    pids: (u32, u32),
) -> anyhow::Result<Measured> {
    // The ceiling: the transaction one webhook needs, as pgbench runs it.
    let pgbench_rows = 100_000;
    sqlx::query(
        "insert into mandate (id, amount, currency, customer_name, customer_email, request_hash, session_id)
         select gen_random_uuid(), 5000, 'ZAR', 'Bench', 'bench@example.com', 'h', 'ps_pgb_' || i
         from generate_series(1, $1) i",
    )
    .bind(pgbench_rows)
    .execute(db)
    .await?;
    let mut pgbench = Vec::new();
    for c in LEVELS {
        let tps = run_pgbench(url, c, size.secs, &transaction_script(pgbench_rows))?;
        println!("bench: pgbench {c:>2} clients: {:.0} tps", tps.0);
        pgbench.push((c, tps.0, tps.1));
    }
    // The service's own statement under pgbench: the database's share of the work alone.
    let statement = run_pgbench(url, 64, size.secs, &statement_script(pgbench_rows))?;
    println!(
        "bench: pgbench 64 clients, the service's statement: {:.0} tps",
        statement.0
    );

    // Ingestion: signed completions of distinct pending mandates.
    let pool: Arc<Vec<(String, String)>> = Arc::new(
        sqlx::query_as(
            "insert into mandate (id, amount, currency, customer_name, customer_email, request_hash, session_id)
             select gen_random_uuid(), 5000, 'ZAR', 'Bench', 'bench@example.com', 'h', 'ps_wh_' || i
             from generate_series(1, $1) i
             returning id::text, session_id",
        )
        .bind(size.webhook_pool as i64)
        .fetch_all(db)
        .await?,
    );
    sqlx::query("vacuum analyze").execute(db).await?;
    let next = Arc::new(AtomicUsize::new(0));
    let target = format!("{service_url}/webhooks/moment");
    let mut ingestion = Vec::new();
    for c in LEVELS {
        let run = webhooks(&target, signer, &pool, &next, c, 0, size.secs, pids).await?;
        println!(
            "bench: ingestion {c:>2} connections: {:.0} events/s, p99 {:.2} ms, {} errors",
            run.per_sec(),
            run.pct_ms(0.99),
            run.errors
        );
        ingestion.push(run);
    }
    let flood = webhooks(&target, signer, &pool, &next, 16, 64, size.secs, pids).await?;
    println!(
        "bench: 16 good + 64 bad-signature connections: {:.0} good events/s, p99 {:.2} ms",
        flood.per_sec(),
        flood.pct_ms(0.99)
    );
    let sent = next.load(Ordering::SeqCst).min(pool.len());
    let stored: i64 = sqlx::query_scalar(
        "select count(*) from webhook_event e join mandate m on m.session_id = e.session_id
         where m.status = 'active' and e.outcome = 'applied' and e.session_id like 'ps\\_wh\\_%'",
    )
    .fetch_one(db)
    .await?;
    let answered: usize = ingestion.iter().map(|r| r.ok).sum::<usize>() + flood.ok;
    if stored as usize != answered {
        bail!(
            "{answered} webhooks were answered 204 but {stored} are stored and applied ({sent} sent)"
        );
    }

    let forged: i64 = sqlx::query_scalar(
        "select count(*) from webhook_event where webhook_id like 'msg\\_forged%'",
    )
    .fetch_one(db)
    .await?;
    if forged > 0 {
        bail!("{forged} forged webhooks were stored");
    }

    // Webhooks out: an endpoint at a receiver in this process, created now and disabled, so
    // that the billing run's events (mandates made active, charges made and settled) wait
    // for it; enabled after the billing run.
    let receiver = drivers::Receiver::start().await?;
    let endpoint: Value = http
        .post(format!("{service_url}/webhook-endpoints"))
        .bearer_auth(API_KEY)
        .json(&json!({"url": receiver.url}))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let endpoint_id = endpoint["id"].as_str().unwrap_or_default().to_owned();
    http.patch(format!("{service_url}/webhook-endpoints/{endpoint_id}"))
        .bearer_auth(API_KEY)
        .json(&json!({"enabled": false}))
        .send()
        .await?
        .error_for_status()?;

    // The billing run: active mandates made through checkout, then charged all at once.
    let setup = Instant::now();
    let mandates = active_mandates(http, service_url, sim_url, db, size.mandates).await?;
    let billing_setup_secs = setup.elapsed().as_secs_f64();
    println!(
        "bench: {} active mandates in {billing_setup_secs:.1} s",
        mandates.len()
    );
    let before: Value = http
        .get(format!("{sim_url}/_sim/stats"))
        .send()
        .await?
        .json()
        .await?;
    http.patch(format!("{sim_url}/_sim/faults"))
        .json(&json!({"latency_ms": LATENCY_MS}))
        .send()
        .await?
        .error_for_status()?;
    let metrics_before = scrape(http, metrics_url).await?;
    let started = Instant::now();
    let billing = charges(http, service_url, &mandates, pids).await?;
    let metrics_after = scrape(http, metrics_url).await?;
    settle(db, mandates.len(), Duration::from_secs(120)).await?;
    let billing_settled_secs = started.elapsed().as_secs_f64();
    let after: Value = http
        .get(format!("{sim_url}/_sim/stats"))
        .send()
        .await?
        .json()
        .await?;
    let delta = |k: &str| after[k].as_u64().unwrap_or(0) - before[k].as_u64().unwrap_or(0);
    println!(
        "bench: billing {:.0} charges/s, all succeeded after {billing_settled_secs:.1} s",
        billing.per_sec()
    );
    let mean_ms = |name: &str, filter: &str| {
        let d = |k: &str| {
            sum_metric(&metrics_after, k, filter) - sum_metric(&metrics_before, k, filter)
        };
        1000.0 * d(&format!("{name}_sum")) / d(&format!("{name}_count"))
    };
    let moment_ms = mean_ms("moment_request_duration_seconds", "");
    let handler_ms = mean_ms("http_request_duration_seconds", "route=\"/charges\"");
    println!(
        "bench: per charge, Moment took {moment_ms:.1} ms of the service's {handler_ms:.1} ms"
    );
    // Events out: every event written since the endpoint was made, fanned out and delivered.
    let waiting: i64 = sqlx::query_scalar(
        "select count(*) from event e, webhook_endpoint w
         where w.id = $1::uuid and (e.xid, e.position) > (w.cursor_xid, w.cursor_position)",
    )
    .bind(&endpoint_id)
    .fetch_one(db)
    .await?;
    http.patch(format!("{service_url}/webhook-endpoints/{endpoint_id}"))
        .bearer_auth(API_KEY)
        .json(&json!({"enabled": true}))
        .send()
        .await?
        .error_for_status()?;
    let out_started = Instant::now();
    let deadline = out_started + Duration::from_secs(600);
    while receiver.received() < waiting as u64 {
        if Instant::now() > deadline {
            bail!(
                "{} of {waiting} events delivered in 600 s",
                receiver.received()
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let events_out_secs = out_started.elapsed().as_secs_f64();
    let events_out = waiting as u64;
    println!(
        "bench: events out: {events_out} events delivered in {events_out_secs:.1} s: {:.0} events/s",
        events_out as f64 / events_out_secs
    );
    Ok(Measured {
        events_out,
        events_out_secs,
        statement_tps: statement.0,
        moment_ms,
        handler_ms,
        pgbench,
        ingestion,
        flood,
        billing,
        billing_settled_secs,
        billing_setup_secs,
        sim_sessions: delta("sessions"),
        sim_payments: delta("payments_succeeded"),
        scheduled: Vec::new(),
    })
}
