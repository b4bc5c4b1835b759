//! The load drivers: signed webhooks at the ingestion endpoint, checkout and charges for the
//! billing run, and what each run counted.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use moment_mandates::moment::signature::WebhookSecret;
use serde_json::{Value, json};
use sqlx::PgPool;

use crate::proc_stats::{Cpu, RssSampler};
use crate::process::unix_now;
use crate::{API_KEY, BILLING_IN_FLIGHT};

/// One measured run.
pub struct Run {
    pub label: String,
    pub connections: usize,
    pub ok: usize,
    pub errors: usize,
    pub secs: f64,
    pub latencies_us: Vec<u64>,
    pub peak_rss_kib: u64,
    /// Forged deliveries answered 401 alongside (the abuse run).
    pub rejected: usize,
    /// CPU used during the run.
    pub cpu: Cpu,
}

impl Run {
    pub fn per_sec(&self) -> f64 {
        self.ok as f64 / self.secs
    }
    pub fn pct_ms(&self, p: f64) -> f64 {
        if self.latencies_us.is_empty() {
            return f64::NAN;
        }
        let i = ((self.latencies_us.len() as f64 * p).ceil() as usize)
            .clamp(1, self.latencies_us.len());
        self.latencies_us[i - 1] as f64 / 1000.0
    }
}

/// A signed `payment_session.completed` for a first_in_series session, as Moment sends it.
pub fn sample_event(session_id: &str, mandate_id: &str) -> String {
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
pub async fn webhooks(
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
pub struct Counts {
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
pub struct Probe {
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
pub async fn active_mandates(
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
pub async fn charges(
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

pub async fn scrape(http: &reqwest::Client, metrics_url: &str) -> anyhow::Result<String> {
    Ok(http
        .get(metrics_url)
        .send()
        .await?
        .error_for_status()?
        .text()
        .await?)
}

/// The sum over all label sets of Prometheus sample `name` whose labels contain `filter`.
pub fn sum_metric(text: &str, name: &str, filter: &str) -> f64 {
    text.lines()
        .filter(|l| {
            l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']) && l.contains(filter)
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Waits until `n` charges have succeeded.
pub async fn settle(db: &PgPool, n: usize, within: Duration) -> anyhow::Result<()> {
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

/// A local receiver for the service's webhooks out: answers every POST 204 and counts it.
pub struct Receiver {
    pub url: String,
    count: Arc<AtomicU64>,
}

impl Receiver {
    pub async fn start() -> anyhow::Result<Self> {
        let count = Arc::new(AtomicU64::new(0));
        let counted = count.clone();
        let app = axum::Router::new().route(
            "/hook",
            axum::routing::post(move || {
                let counted = counted.clone();
                async move {
                    counted.fetch_add(1, Ordering::Relaxed);
                    axum::http::StatusCode::NO_CONTENT
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}/hook", listener.local_addr()?);
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Self { url, count })
    }

    /// Deliveries received so far.
    pub fn received(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }
}
