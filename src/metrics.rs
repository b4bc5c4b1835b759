//! Prometheus metrics: the `metrics` facade, rendered by `metrics-exporter-prometheus` at
//! `GET /metrics`. Counters and histograms are recorded where things happen; the mandate and
//! charge counts and the pool figures are read when scraped.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use metrics::{counter, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::app::AppState;

/// Seconds: from 1 ms to 30 s.
const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Units of database work started and not yet finished (see `db::detached`).
static DB_WORK_IN_FLIGHT: AtomicI64 = AtomicI64::new(0);

/// Counts one unit of database work while it lives, panics included.
pub struct InFlight(());

impl InFlight {
    pub fn start() -> Self {
        DB_WORK_IN_FLIGHT.fetch_add(1, Ordering::Relaxed);
        Self(())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        DB_WORK_IN_FLIGHT.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Installs the process-wide recorder once and returns its handle.
pub fn handle() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
                .expect("the bucket list is not empty")
                .build_recorder();
            let handle = recorder.handle();
            if metrics::set_global_recorder(recorder).is_err() {
                tracing::warn!("a metrics recorder was already installed; /metrics will be empty");
            }
            handle
        })
        .clone()
}

/// Counts and times every request by method, route template and status.
pub async fn track_http(req: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = req.method().as_str().to_owned();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let resp = next.run(req).await;
    let labels = [
        ("method", method),
        ("route", route),
        ("status", resp.status().as_u16().to_string()),
    ];
    counter!("http_requests_total", &labels).increment(1);
    histogram!("http_request_duration_seconds", &labels).record(started.elapsed().as_secs_f64());
    resp
}

/// A webhook delivery's fate: `applied`, `deferred`, `ignored`, `duplicate`, `unavailable`,
/// or `rejected` with a reason (`signature`, `timestamp`, `malformed`).
pub fn webhook(event_type: &str, outcome: &'static str, reason: &'static str) {
    counter!(
        "webhooks_total",
        "event_type" => event_type.to_owned(),
        "outcome" => outcome,
        "reason" => reason
    )
    .increment(1);
}

/// One attempt of a call to Moment: `status` is the HTTP status, `timeout` or `network`.
pub fn moment_call(operation: &'static str, status: String, started: Instant) {
    let labels = [("operation", operation.to_owned()), ("status", status)];
    counter!("moment_requests_total", &labels).increment(1);
    histogram!("moment_request_duration_seconds", &labels).record(started.elapsed().as_secs_f64());
}

async fn status_counts(state: &AppState, table: &'static str) -> sqlx::Result<Vec<(String, i64)>> {
    // `table` is one of two constants, never input.
    sqlx::query_as(&format!(
        "select status::text, count(*) from {table} group by status"
    ))
    .fetch_all(&state.db)
    .await
}

/// `GET /metrics`: Prometheus text.
#[utoipa::path(get, path = "/metrics", tag = "operations", operation_id = "metrics", security(()),
    responses((status = 200, description = "Prometheus text exposition", body = String, content_type = "text/plain")))]
pub async fn render(State(state): State<AppState>) -> Response {
    let pool = &state.db;
    let size = i64::from(pool.size());
    let idle = pool.num_idle() as i64;
    let in_use = size - idle;
    gauge!("db_pool_connections", "state" => "in_use").set(in_use as f64);
    gauge!("db_pool_connections", "state" => "idle").set(idle as f64);
    gauge!("db_pool_max_connections").set(f64::from(pool.options().get_max_connections()));
    let waiting = (DB_WORK_IN_FLIGHT.load(Ordering::Relaxed) - in_use).max(0);
    gauge!("db_pool_waiting").set(waiting as f64);
    let st = state.clone();
    let counts = crate::db::detached(async move {
        Ok::<_, sqlx::Error>((
            status_counts(&st, "mandate").await?,
            status_counts(&st, "charge").await?,
        ))
    })
    .await;
    match counts {
        Ok((mandates, charges)) => {
            let mandate_statuses = crate::domain::MandateStatus::ALL.iter().map(|s| s.as_str());
            let charge_statuses = crate::domain::ChargeStatus::ALL.iter().map(|s| s.as_str());
            for (name, rows, statuses) in [
                ("mandates", mandates, mandate_statuses.collect::<Vec<_>>()),
                ("charges", charges, charge_statuses.collect()),
            ] {
                for status in statuses {
                    let n = rows
                        .iter()
                        .find(|(s, _)| s == status)
                        .map_or(0, |(_, n)| *n);
                    gauge!(name, "status" => status).set(n as f64);
                }
            }
            gauge!("metrics_database_up").set(1.0);
        }
        Err(e) => {
            tracing::warn!(error = %e, "metrics: cannot count mandates and charges");
            gauge!("metrics_database_up").set(0.0);
        }
    }
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        handle().render(),
    )
        .into_response()
}
