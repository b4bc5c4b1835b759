//! Prometheus metrics, the recording side: the `metrics` facade and its process-wide recorder
//! (`metrics-exporter-prometheus`). Counters and histograms are recorded where things happen;
//! `routes::ops` renders them, with the rows by status counted as `store::counts` says. A
//! leaf: nothing here knows the application state.

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
            describe();
            handle
        })
        .clone()
}

/// HELP text for every metric, so that each one says what it counts.
fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        "http_requests_total",
        "HTTP requests answered, by method, route template and status"
    );
    describe_histogram!(
        "http_request_duration_seconds",
        Unit::Seconds,
        "Time to answer an HTTP request, by method, route template and status"
    );
    describe_counter!(
        "webhooks_total",
        "Moment webhook deliveries, by event type, outcome and rejection reason"
    );
    describe_counter!(
        "webhook_commits_total",
        "Commits that stored Moment's webhooks: deliveries arriving together share one"
    );
    describe_counter!(
        "moment_requests_total",
        "Attempts of calls to Moment, by operation and HTTP status (or timeout, network)"
    );
    describe_histogram!(
        "moment_request_duration_seconds",
        Unit::Seconds,
        "Time one attempt of a call to Moment took, by operation and status"
    );
    describe_counter!(
        "charges_paid_after_failure_total",
        "Charges marked failed that Moment then reported paid (now succeeded)"
    );
    describe_gauge!(
        "db_pool_connections",
        "Connections in the database pool, by state (in_use, idle)"
    );
    describe_gauge!("db_pool_max_connections", "The database pool's size limit");
    describe_gauge!(
        "db_pool_waiting",
        "Units of database work waiting for a pooled connection"
    );
    describe_gauge!(
        "mandates",
        "Mandates by status: pending counted when scraped, the rest at most every METRICS_RECOUNT_SECS"
    );
    describe_gauge!(
        "charges",
        "Charges by status: pending, processing and needs_review counted when scraped, the rest at most every METRICS_RECOUNT_SECS"
    );
    describe_gauge!(
        "metrics_settled_count_age_seconds",
        "Seconds since the settled mandates and charges were counted"
    );
    describe_gauge!(
        "metrics_database_up",
        "1 when the last scrape could count mandates and charges, 0 otherwise"
    );
}

/// The `method` label: the methods the API knows, `other` for the rest, so that made-up
/// methods cannot grow the label set.
fn method_label(method: &axum::http::Method) -> &'static str {
    use axum::http::Method;
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

/// Counts and times every request by method, route template and status.
pub async fn track_http(req: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = method_label(req.method()).to_owned();
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

/// One commit storing Moment's webhooks (one or more, together).
pub fn webhook_commit() {
    counter!("webhook_commits_total").increment(1);
}

/// One attempt of a call to Moment: `status` is the HTTP status, `timeout` or `network`.
pub fn moment_call(operation: &'static str, status: String, started: Instant) {
    let labels = [("operation", operation.to_owned()), ("status", status)];
    counter!("moment_requests_total", &labels).increment(1);
    histogram!("moment_request_duration_seconds", &labels).record(started.elapsed().as_secs_f64());
}

/// A charge we had marked `failed` that Moment reports paid (now `succeeded`).
pub fn charge_paid_after_failure() {
    counter!("charges_paid_after_failure_total").increment(1);
}
