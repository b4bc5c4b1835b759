//! The benchmark behind `scripts/bench`: pgbench's ceiling for the webhook transaction, then
//! webhook ingestion and a billing run against the release binary (`serve` and `sim` as child
//! processes), then BENCHMARKS.md. Arguments: `--tiny` (the CI size), `--secs N` (each run's
//! length), `--mandates N` (the billing run's size), `--out PATH`.
//! `BENCH_DATABASE_URL` names the database it recreates (default
//! `postgres://postgres@127.0.0.1:5432/moment_mandates_bench`).

use std::fmt::Write as _;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, bail};
use base64::Engine as _;
use moment_mandates::moment::signature::WebhookSecret;
use serde_json::{Value, json};
use sqlx::postgres::PgPoolOptions;
use sqlx::{Connection, PgConnection, PgPool};

const API_KEY: &str = "bench_api_key_0123456789abcdef";
const MOMENT_KEY: &str = "sk_test_bench_0123456789";
/// Moment's latency during the billing run.
const LATENCY_MS: u64 = 50;
/// Connections for the ingestion runs; the billing run keeps `BILLING_IN_FLIGHT` in flight.
const LEVELS: [usize; 3] = [1, 16, 64];
const BILLING_IN_FLIGHT: usize = 64;

#[derive(Clone)]
struct Size {
    name: &'static str,
    /// Seconds of each pgbench and ingestion run.
    secs: u64,
    /// Pending mandates seeded for the ingestion runs (an exhausted pool ends a run early).
    webhook_pool: usize,
    /// Mandates charged in the billing run.
    mandates: usize,
}

const FULL: Size = Size {
    name: "full",
    secs: 10,
    webhook_pool: 300_000,
    mandates: 10_000,
};
const TINY: Size = Size {
    name: "tiny",
    secs: 1,
    webhook_pool: 20_000,
    mandates: 200,
};

fn main() -> anyhow::Result<()> {
    let mut size = FULL;
    let mut out = PathBuf::from("BENCHMARKS.md");
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--tiny" => size = TINY,
            "--secs" => size.secs = args.next().context("--secs needs a number")?.parse()?,
            "--mandates" => {
                size.mandates = args.next().context("--mandates needs a number")?.parse()?
            }
            "--out" => out = args.next().context("--out needs a path")?.into(),
            // What `cargo bench` adds for the libtest harness; nothing to do here.
            "--bench" => {}
            other => bail!(
                "unknown argument {other:?}: expected --tiny, --secs N, --mandates N or --out PATH"
            ),
        }
    }
    let url = std::env::var("BENCH_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/moment_mandates_bench".into());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let report = rt.block_on(run(&size, &url))?;
    std::fs::write(&out, report).with_context(|| format!("cannot write {}", out.display()))?;
    println!("bench: wrote {}", out.display());
    Ok(())
}

/// One measured run.
struct Run {
    label: String,
    connections: usize,
    ok: usize,
    errors: usize,
    secs: f64,
    latencies_us: Vec<u64>,
    peak_rss_kib: u64,
    /// Forged deliveries answered 401 alongside (the abuse run).
    rejected: usize,
    /// CPU used during the run.
    cpu: Cpu,
}

impl Run {
    fn per_sec(&self) -> f64 {
        self.ok as f64 / self.secs
    }
    fn pct_ms(&self, p: f64) -> f64 {
        if self.latencies_us.is_empty() {
            return f64::NAN;
        }
        let i = ((self.latencies_us.len() as f64 * p).ceil() as usize)
            .clamp(1, self.latencies_us.len());
        self.latencies_us[i - 1] as f64 / 1000.0
    }
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
    let sim_port = free_port()?;
    let secret = format!(
        "whsec_{}",
        base64::engine::general_purpose::STANDARD.encode(b"moment-mandates benchmark secret")
    );
    let signer = Arc::new(WebhookSecret::parse(&secret).expect("a valid secret"));
    let service_url = format!("http://127.0.0.1:{service_port}");
    let sim_url = format!("http://127.0.0.1:{sim_port}");

    let logs = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let mut sim = spawn(
        &logs.join("bench-sim.log"),
        Command::new(env!("CARGO_BIN_EXE_moment-mandates"))
            .arg("sim")
            .env("SIM_LISTEN_ADDR", format!("127.0.0.1:{sim_port}"))
            .env("SIM_SECRET_KEY", MOMENT_KEY)
            .env("SIM_WEBHOOK_SECRET", &secret)
            .env("SIM_WEBHOOK_URL", format!("{service_url}/webhooks/moment"))
            .env("SIM_SETTLE_DELAY_MS", "100")
            .env("RUST_LOG", "warn"),
    )?;
    let started = Instant::now();
    let mut service = spawn(
        &logs.join("bench-service.log"),
        Command::new(env!("CARGO_BIN_EXE_moment-mandates"))
            .arg("serve")
            .env("DATABASE_URL", url)
            .env("LISTEN_ADDR", format!("127.0.0.1:{service_port}"))
            .env("MOMENT_API_URL", &sim_url)
            .env("MOMENT_SECRET_KEY", MOMENT_KEY)
            .env("MOMENT_WEBHOOK_SECRETS", &secret)
            .env("API_KEYS", API_KEY),
    )?;
    let http = reqwest::Client::new();
    wait_ready(&http, &format!("{service_url}/readyz"), &mut service).await?;
    let startup_ms = started.elapsed().as_secs_f64() * 1000.0;
    wait_ready(&http, &format!("{sim_url}/_sim/stats"), &mut sim).await?;
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
        &service_url,
        &sim_url,
        (service.id(), sim.id()),
    )
    .await;
    let service_hwm = rss_kib(service.id(), "VmHWM");
    stop(&mut service);
    stop(&mut sim);
    let m = result?;
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
}

#[allow(clippy::too_many_arguments)]
async fn measure(
    size: &Size,
    url: &str,
    db: &PgPool,
    http: &reqwest::Client,
    signer: &Arc<WebhookSecret>,
    service_url: &str,
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
    let metrics_before = scrape(http, service_url).await?;
    let started = Instant::now();
    let billing = charges(http, service_url, &mandates, pids).await?;
    let metrics_after = scrape(http, service_url).await?;
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
    Ok(Measured {
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
    })
}

/// One webhook's writes as a `BEGIN … END` transaction: the ceiling the issue names.
fn transaction_script(rows: i64) -> String {
    let payload = sample_event("ps_pgb_0", "00000000-0000-0000-0000-000000000000");
    format!(
        "\\set i random(1, {rows})\n\
         BEGIN;\n\
         INSERT INTO webhook_event (webhook_id, event_id, event_type, session_id, payload, outcome, applied_at) \
         VALUES ('msg_' || gen_random_uuid(), 'evt_bench', 'payment_session.completed', 'ps_pgb_' || :i, '{}', 'applied', now());\n\
         UPDATE mandate SET status = 'active', customer_id = 'cus_bench', payment_method_id = 'pmt_bench', \
         payment_id = 'pay_bench', locked_until = NULL, updated_at = now() WHERE session_id = 'ps_pgb_' || :i;\n\
         END;\n",
        payload.replace('\'', "''")
    )
}

/// The same writes as the one statement the service sends (`store::webhook_events::record`),
/// with the row found by session and updated every time.
fn statement_script(rows: i64) -> String {
    let payload = sample_event("ps_pgb_0", "00000000-0000-0000-0000-000000000000");
    format!(
        "\\set i random(1, {rows})\n\
         with moved as (update mandate set status = 'active', session_id = coalesce(session_id, 'ps_pgb_' || :i), \
         customer_id = coalesce('cus_bench', customer_id), payment_method_id = coalesce('pmt_bench', payment_method_id), \
         payment_id = coalesce('pay_bench', payment_id), failure = coalesce(null, failure), locked_until = null, \
         updated_at = now() where id = coalesce(null, (select id from mandate where session_id = 'ps_pgb_' || :i)) \
         and status = any('{{pending,active}}') returning id), \
         known as (select exists (select 1 from moved) or exists (select 1 from mandate where session_id = 'ps_pgb_' || :i) as yes) \
         insert into webhook_event (webhook_id, event_id, event_type, session_id, external_reference, payload, outcome, applied_at) \
         select 'msg_' || gen_random_uuid(), 'evt_bench', 'payment_session.completed', 'ps_pgb_' || :i, null, '{}', \
         case when known.yes then 'applied' else 'deferred' end, case when known.yes then now() end from known \
         on conflict (webhook_id) do nothing returning outcome, (select id from moved limit 1);\n",
        payload.replace('\'', "''")
    )
}

/// pgbench on the same server running `script`. Returns (tps, mean latency ms).
fn run_pgbench(
    url: &str,
    clients: usize,
    secs: u64,
    script_text: &str,
) -> anyhow::Result<(f64, f64)> {
    let script = std::env::temp_dir().join(format!("mm-bench-{}.sql", std::process::id()));
    std::fs::write(&script, script_text)?;
    let output = Command::new("pgbench")
        .args(["-n", "-M", "prepared", "-T", &secs.to_string()])
        .args([
            "-c",
            &clients.to_string(),
            "-j",
            &clients.min(2).to_string(),
        ])
        .arg("-f")
        .arg(&script)
        .arg(url)
        .output()
        .context("cannot run pgbench (it comes with PostgreSQL's server or client package)")?;
    let _ = std::fs::remove_file(&script);
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        bail!(
            "pgbench failed: {}{}",
            stdout,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let number_after = |prefix: &str| {
        stdout.lines().find_map(|l| {
            l.trim()
                .strip_prefix(prefix)
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|n| n.parse::<f64>().ok())
        })
    };
    let tps = number_after("tps = ").context("no tps in pgbench's output")?;
    let latency = number_after("latency average = ").unwrap_or(f64::NAN);
    Ok((tps, latency))
}

/// A signed `payment_session.completed` for a first_in_series session, as Moment sends it.
fn sample_event(session_id: &str, mandate_id: &str) -> String {
    json!({
        "id": format!("evt_{session_id}"),
        "type": "payment_session.completed",
        "created_at": "2026-11-24T10:00:00.000Z",
        "data": {
            "id": session_id, "type": "first_in_series", "status": "completed",
            "payment_outcome": "paid", "amount": 5000, "currency": "ZAR",
            "customer_id": "cus_J17pnG25nuvKu", "payment_method_id": "pmt_izWG6Vcvy4VYiU",
            "payment_id": "pay_rOaZNqKZMFxsRb2NBL1cj", "external_reference": mandate_id,
            "created_at": "2026-11-24T09:59:58.000Z", "updated_at": "2026-11-24T10:00:00.000Z"
        }
    })
    .to_string()
}

/// `good` connections send completions of distinct mandates for `secs`, while `bad`
/// connections send the same kind of events with a wrong signature.
#[allow(clippy::too_many_arguments)]
async fn webhooks(
    target: &str,
    signer: &Arc<WebhookSecret>,
    pool: &Arc<Vec<(String, String)>>,
    next: &Arc<AtomicUsize>,
    good: usize,
    bad: usize,
    secs: u64,
    pids: (u32, u32),
) -> anyhow::Result<Run> {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(good + bad)
        .build()?;
    let deadline = Instant::now() + Duration::from_secs(secs);
    let probe = Probe::start(pids);
    let mut tasks = Vec::new();
    for n in 0..good + bad {
        let (client, target, pool, next) = (
            client.clone(),
            target.to_owned(),
            pool.clone(),
            next.clone(),
        );
        let signer = signer.clone();
        let forged = n >= good;
        tasks.push(tokio::spawn(async move {
            let (mut counts, mut k) = (Counts::default(), 0u64);
            while Instant::now() < deadline {
                let (msg_id, body, signature, ts);
                if forged {
                    k += 1;
                    msg_id = format!("msg_forged_{n}_{k}");
                    body = sample_event("ps_forged", "00000000-0000-0000-0000-000000000000");
                    ts = unix_now();
                    signature =
                        "v1,Zm9yZ2VkIHNpZ25hdHVyZSBvZiB0aGlydHktdHdvIGJ5dGVzIQ==".to_owned();
                } else {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    let Some((mandate_id, session_id)) = pool.get(i) else {
                        break;
                    };
                    msg_id = format!("msg_{session_id}");
                    body = sample_event(session_id, mandate_id);
                    ts = unix_now();
                    signature = signer.sign(&msg_id, ts, body.as_bytes());
                }
                let sent = Instant::now();
                let answer = client
                    .post(&target)
                    .header("content-type", "application/json")
                    .header("webhook-id", &msg_id)
                    .header("webhook-timestamp", ts.to_string())
                    .header("webhook-signature", signature)
                    .body(body)
                    .send()
                    .await;
                let status = answer.map(|r| r.status().as_u16()).unwrap_or(0);
                if forged {
                    match status {
                        401 => counts.rejected += 1,
                        _ => counts.errors += 1,
                    }
                    continue;
                }
                if status == 204 {
                    counts.answered(sent);
                } else {
                    counts.errors += 1;
                }
            }
            counts
        }));
    }
    let label = if bad > 0 {
        format!("ingestion, {good} good + {bad} bad-signature connections")
    } else {
        format!(
            "ingestion, {good} connection{}",
            if good == 1 { "" } else { "s" }
        )
    };
    probe.collect(label, good, tasks).await
}

/// What one client task counted.
#[derive(Default)]
struct Counts {
    ok: usize,
    errors: usize,
    rejected: usize,
    latencies_us: Vec<u64>,
}

impl Counts {
    /// A request sent at `sent` got the answer it wanted.
    fn answered(&mut self, sent: Instant) {
        self.ok += 1;
        self.latencies_us.push(sent.elapsed().as_micros() as u64);
    }
}

/// The clock, memory sampler and CPU reading of one run.
struct Probe {
    pids: (u32, u32),
    started: Instant,
    sampler: RssSampler,
    cpu: Cpu,
}

impl Probe {
    fn start(pids: (u32, u32)) -> Self {
        Self {
            pids,
            sampler: RssSampler::start(pids.0),
            cpu: Cpu::now(pids.0, pids.1),
            started: Instant::now(),
        }
    }

    /// Waits for the run's client tasks and sums up what they counted.
    async fn collect(
        self,
        label: String,
        connections: usize,
        tasks: Vec<tokio::task::JoinHandle<Counts>>,
    ) -> anyhow::Result<Run> {
        let mut run = Run {
            label,
            connections,
            ok: 0,
            errors: 0,
            secs: 0.0,
            latencies_us: Vec::new(),
            peak_rss_kib: 0,
            rejected: 0,
            cpu: Cpu::default(),
        };
        for t in tasks {
            let counts = t.await?;
            run.ok += counts.ok;
            run.errors += counts.errors;
            run.rejected += counts.rejected;
            run.latencies_us.extend(counts.latencies_us);
        }
        run.secs = self.started.elapsed().as_secs_f64();
        run.latencies_us.sort_unstable();
        run.peak_rss_kib = self.sampler.stop();
        run.cpu = Cpu::now(self.pids.0, self.pids.1).since(self.cpu);
        Ok(run)
    }
}

/// Makes `n` active mandates the way customers do: `POST /mandates`, then the card paid at the
/// simulator's checkout, then the webhooks. Returns their ids.
async fn active_mandates(
    http: &reqwest::Client,
    service_url: &str,
    sim_url: &str,
    db: &PgPool,
    n: usize,
) -> anyhow::Result<Vec<String>> {
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..BILLING_IN_FLIGHT {
        let (http, next) = (http.clone(), next.clone());
        let (service_url, sim_url) = (service_url.to_owned(), sim_url.to_owned());
        tasks.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            while next.fetch_add(1, Ordering::SeqCst) < n {
                let m: Value = http
                    .post(format!("{service_url}/mandates"))
                    .bearer_auth(API_KEY)
                    .header("accept", "application/json")
                    .header("idempotency-key", uuid::Uuid::new_v4().to_string())
                    .json(&json!({"amount": 5000, "currency": "ZAR",
                                  "customer": {"name": "Bench Customer", "email": "bench@example.com"}}))
                    .send()
                    .await?
                    .error_for_status()?
                    .json()
                    .await?;
                let session = m["session_id"].as_str().context("mandate without session")?;
                http.post(format!("{sim_url}/_sim/sessions/{session}/complete"))
                    .json(&json!({"card": "4242424242424242"}))
                    .send()
                    .await?
                    .error_for_status()?;
                ids.push(m["id"].as_str().context("mandate without id")?.to_owned());
            }
            anyhow::Ok(ids)
        }));
    }
    let mut ids = Vec::new();
    for t in tasks {
        ids.extend(t.await??);
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let active: i64 = sqlx::query_scalar(
            "select count(*) from mandate where status = 'active' and customer_name = 'Bench Customer'",
        )
        .fetch_one(db)
        .await?;
        if active as usize >= n {
            return Ok(ids);
        }
        if Instant::now() > deadline {
            bail!("only {active} of {n} mandates became active");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Charges every mandate once, `BILLING_IN_FLIGHT` requests at a time.
async fn charges(
    http: &reqwest::Client,
    service_url: &str,
    mandates: &[String],
    pids: (u32, u32),
) -> anyhow::Result<Run> {
    let mandates = Arc::new(mandates.to_vec());
    let next = Arc::new(AtomicUsize::new(0));
    let probe = Probe::start(pids);
    let mut tasks = Vec::new();
    for _ in 0..BILLING_IN_FLIGHT {
        let (http, next, mandates) = (http.clone(), next.clone(), mandates.clone());
        let url = format!("{service_url}/charges");
        tasks.push(tokio::spawn(async move {
            let mut counts = Counts::default();
            loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                let Some(mandate_id) = mandates.get(i) else {
                    break;
                };
                let sent = Instant::now();
                let answer = http
                    .post(&url)
                    .bearer_auth(API_KEY)
                    .header("idempotency-key", format!("bench-charge-{mandate_id}"))
                    .json(&json!({"mandate_id": mandate_id, "reference": "november"}))
                    .send()
                    .await;
                match answer.map(|r| r.status().as_u16()) {
                    Ok(201 | 202) => counts.answered(sent),
                    _ => counts.errors += 1,
                }
            }
            counts
        }));
    }
    let label = format!("billing, {} charges", mandates.len());
    let run = probe.collect(label, BILLING_IN_FLIGHT, tasks).await?;
    if run.errors > 0 {
        bail!("{} charges were not accepted", run.errors);
    }
    Ok(run)
}

async fn scrape(http: &reqwest::Client, service_url: &str) -> anyhow::Result<String> {
    Ok(http
        .get(format!("{service_url}/metrics"))
        .send()
        .await?
        .error_for_status()?
        .text()
        .await?)
}

/// The sum over all label sets of Prometheus sample `name` whose labels contain `filter`.
fn sum_metric(text: &str, name: &str, filter: &str) -> f64 {
    text.lines()
        .filter(|l| {
            l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']) && l.contains(filter)
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Waits until `n` charges have succeeded.
async fn settle(db: &PgPool, n: usize, within: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + within;
    loop {
        let done: i64 =
            sqlx::query_scalar("select count(*) from charge where status = 'succeeded'")
                .fetch_one(db)
                .await?;
        if done as usize >= n {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("only {done} of {n} charges succeeded within {within:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn report(
    size: &Size,
    machine: &str,
    startup_ms: f64,
    idle_rss: u64,
    service_hwm: u64,
    m: &Measured,
) -> String {
    let ceiling = m
        .pgbench
        .iter()
        .filter(|(c, _, _)| *c > 1)
        .map(|(_, tps, _)| *tps)
        .fold(0.0, f64::max);
    let mib = |kib: u64| kib as f64 / 1024.0;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "# Benchmarks\n\n\
         Written by `scripts/bench` ({} size{}); rerun it to refresh this file. Every figure\n\
         below comes from one run on one machine: the ratios matter more than the absolute\n\
         numbers, because pgbench ran on the same Postgres minutes before.\n\n\
         ## Machine\n\n{machine}\n",
        size.name,
        if size.name == "tiny" {
            ", as CI runs it: too small to mean anything"
        } else {
            ""
        }
    );
    let _ = writeln!(
        s,
        "## The ceiling: pgbench running one webhook's transaction\n\n\
         `BEGIN; INSERT INTO webhook_event …; UPDATE mandate … WHERE session_id = …; END;`,\n\
         prepared statements, synchronous commit on, {} s per run, the same event payload the\n\
         service stores.\n\n\
         | clients | transactions/s | mean latency (ms) |\n|---:|---:|---:|",
        size.secs
    );
    for (c, tps, lat) in &m.pgbench {
        let _ = writeln!(s, "| {c} | {tps:.0} | {lat:.2} |");
    }
    let _ = writeln!(
        s,
        "\nCeiling (best of 16 and 64 clients): **{ceiling:.0}/s**.\n\n\
         For comparison, pgbench running the one statement the service sends instead (the\n\
         update and the insert in a CTE, one round trip, no `BEGIN`) at 64 clients: **{:.0}/s**,\n\
         {:.2} × the ceiling. That is the database's share of a webhook alone; the service\n\
         shares the same two cores with it.\n",
        m.statement_tps,
        m.statement_tps / ceiling
    );
    let _ = writeln!(
        s,
        "## Webhook ingestion\n\n\
         Signed `payment_session.completed` events for distinct pending mandates, signed with a\n\
         fresh timestamp each, posted to the release build over keep-alive connections for {} s\n\
         per row. Every event answered 204 was checked afterwards: stored once and its mandate\n\
         `active`.\n\n\
         | connections | events/s | p50 (ms) | p99 (ms) | p99.9 (ms) | ratio to pgbench at the same clients | ratio to the ceiling | errors | peak RSS (MiB) |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|---:|",
        size.secs
    );
    for r in m.ingestion.iter().chain(std::iter::once(&m.flood)) {
        let same = m
            .pgbench
            .iter()
            .find(|(c, _, _)| *c == r.connections)
            .map(|(_, tps, _)| r.per_sec() / tps);
        let _ = writeln!(
            s,
            "| {} | {:.0} | {:.2} | {:.2} | {:.2} | {} | **{:.2}** | {} | {:.1} |",
            r.label,
            r.per_sec(),
            r.pct_ms(0.50),
            r.pct_ms(0.99),
            r.pct_ms(0.999),
            same.map_or("–".into(), |x| format!("{x:.2}")),
            r.per_sec() / ceiling,
            r.errors,
            mib(r.peak_rss_kib)
        );
    }
    let b = &m.billing;
    let limit = BILLING_IN_FLIGHT as f64 / (LATENCY_MS as f64 / 1000.0);
    let _ = writeln!(
        s,
        "\nThe last row is the abuse check: the good events of the 16-connection row while 64 more\n\
         connections post events with a wrong signature as fast as they can: {} forged events\n\
         ({:.0}/s) were answered 401 alongside, and nothing of theirs was stored.\n\n\
         ## Billing run\n\n\
         {} active mandates, made through checkout at the simulator beforehand ({:.1} s), then\n\
         charged once each through `POST /charges` with {} requests in flight while the\n\
         simulator answers every call after {} ms. The simulator's limit is in-flight ÷ latency =\n\
         {limit:.0} charges/s.\n\n\
         | charges/s | ratio to the simulator's limit | p50 (ms) | p99 (ms) | p99.9 (ms) | until all `succeeded` (s) | Moment sessions | Moment payments | peak RSS (MiB) |\n\
         |---:|---:|---:|---:|---:|---:|---:|---:|---:|\n\
         | {:.0} | **{:.2}** | {:.1} | {:.1} | {:.1} | {:.1} | {} | {} | {:.1} |\n",
        m.flood.rejected,
        m.flood.rejected as f64 / m.flood.secs,
        b.ok,
        m.billing_setup_secs,
        BILLING_IN_FLIGHT,
        LATENCY_MS,
        b.per_sec(),
        b.per_sec() / limit,
        b.pct_ms(0.50),
        b.pct_ms(0.99),
        b.pct_ms(0.999),
        m.billing_settled_secs,
        m.sim_sessions,
        m.sim_payments,
        mib(b.peak_rss_kib)
    );
    let _ = writeln!(
        s,
        "## Where the CPU went\n\n\
         Cores busy on average during each run (CPU seconds ÷ wall seconds, from `/proc`), out\n\
         of the machine's {}.\n\n\
         | run | service | Postgres | simulator | load generator | total |\n|---|---:|---:|---:|---:|---:|",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    for r in m.ingestion.iter().chain([&m.flood, &m.billing]) {
        let _ = writeln!(s, "| {} {}", r.label, r.cpu.row(r.secs));
    }
    let _ = writeln!(
        s,
        "\nIn the billing run a Moment call took {:.1} ms on average, and the service answered\n\
         `POST /charges` in {:.1} ms on average.\n",
        m.moment_ms, m.handler_ms
    );
    let _ = writeln!(
        s,
        "## Footprint\n\n\
         | start-up to ready (migrations on an empty database) | RSS at idle | peak RSS over the whole run |\n\
         |---:|---:|---:|\n\
         | {startup_ms:.0} ms | {:.1} MiB | {:.1} MiB |\n",
        mib(idle_rss),
        mib(service_hwm)
    );
    s.push_str(include_str!("analysis.md"));
    s
}

async fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:").map(|v| v.trim().to_owned()))
        })
        .unwrap_or_default();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let command = |c: &str, a: &str| {
        Command::new(c)
            .arg(a)
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .unwrap_or_default()
    };
    format!(
        "- CPU: {model}, {cores} cores available\n- Memory: {mem}\n- Linux {}\n- {}\n- {}\n- Date: {}",
        kernel.trim(),
        command("pgbench", "--version"),
        command("rustc", "--version"),
        command("date", "-u")
    )
}

async fn recreate_database(url: &str) -> anyhow::Result<()> {
    let (server, name) = url
        .rsplit_once('/')
        .context("BENCH_DATABASE_URL has no database name")?;
    let mut admin = PgConnection::connect(&format!("{server}/postgres"))
        .await
        .context("cannot reach Postgres")?;
    sqlx::query(&format!("drop database if exists \"{name}\" with (force)"))
        .execute(&mut admin)
        .await?;
    sqlx::query(&format!("create database \"{name}\""))
        .execute(&mut admin)
        .await?;
    Ok(())
}

fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Starts `command` with its logs going to `log`.
fn spawn(log: &std::path::Path, command: &mut Command) -> anyhow::Result<Child> {
    let file = std::fs::File::create(log)?;
    println!("bench: logs in {}", log.display());
    command
        .stdin(Stdio::null())
        .stdout(file.try_clone()?)
        .stderr(file)
        .spawn()
        .context("cannot start moment-mandates")
}

/// Polls `url` until it answers 200; returns the seconds it took.
async fn wait_ready(http: &reqwest::Client, url: &str, child: &mut Child) -> anyhow::Result<f64> {
    let started = Instant::now();
    loop {
        if let Ok(r) = http.get(url).send().await
            && r.status().is_success()
        {
            return Ok(started.elapsed().as_secs_f64());
        }
        if let Some(status) = child.try_wait()? {
            bail!("moment-mandates exited before it was ready: {status}");
        }
        if started.elapsed() > Duration::from_secs(60) {
            bail!("{url} not ready after 60 s");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn stop(child: &mut Child) {
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status();
    let deadline = Instant::now() + Duration::from_secs(40);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// CPU seconds used so far by the service, the simulator, this load generator and all of
/// Postgres's processes.
#[derive(Clone, Copy, Default)]
struct Cpu {
    service: f64,
    sim: f64,
    client: f64,
    postgres: f64,
}

impl Cpu {
    fn now(service: u32, sim: u32) -> Self {
        let mut postgres = 0.0;
        for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let pid = entry.file_name().to_string_lossy().parse::<u32>().ok();
            if let Some(pid) = pid
                && std::fs::read_to_string(format!("/proc/{pid}/comm"))
                    .is_ok_and(|c| c.trim() == "postgres")
            {
                postgres += cpu_secs(pid);
            }
        }
        Self {
            service: cpu_secs(service),
            sim: cpu_secs(sim),
            client: cpu_secs(std::process::id()),
            postgres,
        }
    }

    fn since(self, earlier: Self) -> Self {
        Self {
            service: self.service - earlier.service,
            sim: self.sim - earlier.sim,
            client: self.client - earlier.client,
            postgres: self.postgres - earlier.postgres,
        }
    }

    fn row(&self, secs: f64) -> String {
        let share = |x: f64| x / secs;
        format!(
            "| {:.2} | {:.2} | {:.2} | {:.2} | {:.2} |",
            share(self.service),
            share(self.postgres),
            share(self.sim),
            share(self.client),
            share(self.service + self.postgres + self.sim + self.client)
        )
    }
}

/// User plus system CPU seconds of a process (`/proc/<pid>/stat`, at 100 ticks a second).
fn cpu_secs(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            // Fields after the parenthesised command name; utime and stime are 14th and 15th.
            let rest = s.rsplit_once(')')?.1;
            let fields: Vec<&str> = rest.split_whitespace().collect();
            let ticks =
                fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
            Some(ticks / 100.0)
        })
        .unwrap_or(0.0)
}

/// A field of `/proc/<pid>/status` in KiB (`VmRSS` now, `VmHWM` the peak so far).
fn rss_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                l.strip_prefix(field)
                    .and_then(|v| v.trim_start_matches(':').split_whitespace().next())
                    .and_then(|n| n.parse().ok())
            })
        })
        .unwrap_or(0)
}

/// Samples the service's resident memory every 50 ms while a run lasts.
struct RssSampler {
    done: Arc<AtomicBool>,
    peak: Arc<AtomicU64>,
}

impl RssSampler {
    fn start(pid: u32) -> Self {
        let done = Arc::new(AtomicBool::new(false));
        let peak = Arc::new(AtomicU64::new(rss_kib(pid, "VmRSS")));
        let (d, p) = (done.clone(), peak.clone());
        tokio::spawn(async move {
            while !d.load(Ordering::SeqCst) {
                p.fetch_max(rss_kib(pid, "VmRSS"), Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        });
        Self { done, peak }
    }

    fn stop(self) -> u64 {
        self.done.store(true, Ordering::SeqCst);
        self.peak.load(Ordering::SeqCst)
    }
}
