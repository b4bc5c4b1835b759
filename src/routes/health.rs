//! Liveness and readiness.

use axum::Json;
use axum::extract::State;
use serde_json::{Value, json};

use crate::app::AppState;
use crate::db::{self, detached};
use crate::error::{ApiError, Problem};

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
    let pool = state.db.clone();
    let applied = detached(async move { db::migrations_applied(&pool).await })
        .await
        .map_err(ApiError::DatabaseUnavailable)?;
    if !applied {
        return Err(ApiError::DatabaseUnavailable(sqlx::Error::Protocol(
            "migrations not applied".into(),
        )));
    }
    Ok(Json(json!({ "status": "ready" })))
}
