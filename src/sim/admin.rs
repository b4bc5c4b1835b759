//! `/_sim`: the simulator's own API for tests and people. It inspects sessions and webhook
//! deliveries, settles checkouts without a browser (like Stripe's test helpers), and sets the
//! faults. It has no auth: the simulator is a local tool.

use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use super::cards::TEST_CARDS;
use super::engine::{Faults, Sim};
use super::model::Status;
use super::{Problem, webhooks::Delivery};

fn bad(detail: impl Into<String>, instance: &str) -> Response {
    Problem::new(400, "invalid-request", "Invalid request", detail).response(instance)
}

pub async fn sessions(State(sim): State<Arc<Sim>>) -> Json<Value> {
    Json(json!({ "data": sim.sessions() }))
}

pub async fn session(State(sim): State<Arc<Sim>>, Path(id): Path<String>) -> Response {
    match sim.session(&id) {
        Some(s) => Json(s).into_response(),
        None => Problem::not_found("payment session").response(&format!("/_sim/sessions/{id}")),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Complete {
    card: String,
}

/// Does what the checkout form does with `card`: `200` with the session afterwards (still
/// `active` with `last_payment_error` when the card declines).
pub async fn complete(
    State(sim): State<Arc<Sim>>,
    Path(id): Path<String>,
    body: Result<Json<Complete>, JsonRejection>,
) -> Response {
    let instance = format!("/_sim/sessions/{id}/complete");
    let Json(body) = match body {
        Ok(b) => b,
        Err(e) => {
            return bad(
                format!("expected {{\"card\": \"4242424242424242\"}}: {e}"),
                &instance,
            );
        }
    };
    match sim.pay(&id, &body.card) {
        Ok(s) => Json(s).into_response(),
        Err(e) => Problem::from(e).response(&instance),
    }
}

async fn end(sim: &Sim, id: &str, to: Status, instance: &str) -> Response {
    match sim.end_checkout(id, to) {
        Ok(s) => Json(s).into_response(),
        Err(e) => Problem::from(e).response(instance),
    }
}

pub async fn cancel(State(sim): State<Arc<Sim>>, Path(id): Path<String>) -> Response {
    end(
        &sim,
        &id,
        Status::Cancelled,
        &format!("/_sim/sessions/{id}/cancel"),
    )
    .await
}

pub async fn expire(State(sim): State<Arc<Sim>>, Path(id): Path<String>) -> Response {
    end(
        &sim,
        &id,
        Status::Expired,
        &format!("/_sim/sessions/{id}/expire"),
    )
    .await
}

#[derive(Deserialize)]
pub struct WebhookFilter {
    session_id: Option<String>,
}

/// Every delivery with its attempts, oldest first; `?session_id=` narrows it.
pub async fn webhooks(
    State(sim): State<Arc<Sim>>,
    Query(filter): Query<WebhookFilter>,
) -> Json<Value> {
    let data: Vec<Delivery> = sim
        .deliveries()
        .into_iter()
        .filter(|d| {
            filter
                .session_id
                .as_ref()
                .is_none_or(|s| d.session_id.as_ref() == Some(s))
        })
        .collect();
    Json(json!({ "data": data }))
}

pub async fn release(State(sim): State<Arc<Sim>>) -> Json<Value> {
    Json(json!({ "released": sim.release_held() }))
}

pub async fn faults(State(sim): State<Arc<Sim>>) -> Json<Faults> {
    Json(sim.faults())
}

/// Merges the given fields into the current faults.
pub async fn set_faults(
    State(sim): State<Arc<Sim>>,
    body: Result<Json<Value>, JsonRejection>,
) -> Response {
    const INSTANCE: &str = "/_sim/faults";
    let patch = match body {
        Ok(Json(Value::Object(p))) => p,
        Ok(_) => return bad("expected a JSON object of fault settings", INSTANCE),
        Err(e) => return bad(e.body_text(), INSTANCE),
    };
    let mut merged = serde_json::to_value(sim.faults()).unwrap_or_default();
    for (k, v) in patch {
        merged[k] = v;
    }
    let faults: Faults = match serde_json::from_value(merged) {
        Ok(f) => f,
        Err(e) => return bad(e.to_string(), INSTANCE),
    };
    match sim.set_faults(faults.clone()) {
        Ok(()) => Json(faults).into_response(),
        Err(e) => bad(e, INSTANCE),
    }
}

pub async fn fund(State(sim): State<Arc<Sim>>, Path(id): Path<String>) -> Response {
    if sim.fund(&id) {
        Json(json!({"payment_method_id": id, "funded": true})).into_response()
    } else {
        Problem::not_found("payment method").response(&format!("/_sim/payment_methods/{id}/fund"))
    }
}

pub async fn cards() -> Json<Value> {
    Json(json!({ "data": TEST_CARDS }))
}

pub async fn stats(State(sim): State<Arc<Sim>>) -> Json<Value> {
    Json(json!(sim.stats()))
}
