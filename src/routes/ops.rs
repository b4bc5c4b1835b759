//! Operational routes: liveness, readiness and the Prometheus metrics.

use ::metrics::gauge;
use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::db;
use crate::domain::{ChargeStatus, MandateStatus};
use crate::error::{ApiError, Problem};
use crate::metrics;
use crate::state::AppState;
use crate::store::counts;

/// The process is up.
#[utoipa::path(get, path = "/healthz", tag = "operations", operation_id = "healthz", security(()),
    responses((status = 200, description = "Up", body = Object, example = json!({"status": "ok"}))))]
pub async fn healthz() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

/// Postgres answers and every migration this build knows is applied; `503` otherwise.
#[utoipa::path(get, path = "/readyz", tag = "operations", operation_id = "readyz", security(()),
    responses(
        (status = 200, description = "Ready", body = Object, example = json!({"status": "ready"})),
        (status = 503, description = "Postgres unreachable or migrations missing", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn readyz(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let applied = db::migrations_applied(&state.db)
        .await
        .map_err(ApiError::DatabaseUnavailable)?;
    if !applied {
        return Err(ApiError::DatabaseUnavailable(sqlx::Error::Protocol(
            "migrations not applied".into(),
        )));
    }
    Ok(Json(json!({ "status": "ready" })))
}

/// `GET /metrics`: Prometheus text. The pool figures and the mandates and charges under way
/// are read now, the settled ones at most every `METRICS_RECOUNT_SECS` (see `store::counts`);
/// everything else was recorded as it happened.
pub async fn render(State(state): State<AppState>) -> Response {
    let pool = &state.db;
    let size = i64::from(pool.size());
    let idle = pool.num_idle() as i64;
    let in_use = size - idle;
    gauge!("db_pool_connections", "state" => "in_use").set(in_use as f64);
    gauge!("db_pool_connections", "state" => "idle").set(idle as f64);
    gauge!("db_pool_max_connections").set(f64::from(pool.options().get_max_connections()));
    let waiting = (metrics::db_work_in_flight() - in_use).max(0);
    gauge!("db_pool_waiting").set(waiting as f64);
    match state.counts.counts(pool).await {
        Ok(counts) => {
            let settled = counts.settled_age.is_some();
            let mandates = MandateStatus::ALL
                .iter()
                .map(|s| (s.as_str(), counts::OPEN_MANDATE.contains(s)));
            let charges = ChargeStatus::ALL
                .iter()
                .map(|s| (s.as_str(), counts::OPEN_CHARGE.contains(s)));
            for (table, statuses) in [
                ("mandates", mandates.collect::<Vec<_>>()),
                ("charges", charges.collect()),
            ] {
                // A settled status is left as it was until its first count has ended.
                for (status, _) in statuses.into_iter().filter(|(_, open)| *open || settled) {
                    let n = counts
                        .rows
                        .iter()
                        .find(|(t, s, _)| t == table && s == status)
                        .map_or(0, |(_, _, n)| *n);
                    gauge!(table, "status" => status).set(n as f64);
                }
            }
            if let Some(age) = counts.settled_age {
                gauge!("metrics_settled_count_age_seconds").set(age.as_secs_f64());
            }
            gauge!("metrics_database_up").set(1.0);
        }
        Err(e) => {
            tracing::warn!(error = %e, "metrics: cannot count mandates and charges");
            gauge!("metrics_database_up").set(0.0);
            // The age goes on growing while nothing can be counted.
            if let Some(age) = state.counts.settled_age() {
                gauge!("metrics_settled_count_age_seconds").set(age.as_secs_f64());
            }
        }
    }
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        metrics::handle().render(),
    )
        .into_response()
}
