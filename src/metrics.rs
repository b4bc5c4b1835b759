//! Prometheus metrics, the recording side: the `metrics` facade and its process-wide recorder
//! (`metrics-exporter-prometheus`). Counters and histograms are recorded where things happen;
//! `routes::ops` renders them, with the counts read when scraped. A leaf: nothing here knows
//! the application state.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::middleware::Next;
use axum::response::Response;
use metrics::{counter, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

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

/// Units of database work in flight now.
pub fn db_work_in_flight() -> i64 {
    DB_WORK_IN_FLIGHT.load(Ordering::Relaxed)
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
