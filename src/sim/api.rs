//! Moment's API: `POST /collect/payment_sessions`, `GET /collect/payment_sessions/{id}` and
//! `GET /collect/payments/{id}`, with bearer auth, idempotency and the injected faults.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde_json::Value;

use super::engine::{Begin, Sim};
use super::{Problem, problem_response, validate};

const SESSIONS: &str = "/collect/payment_sessions";

/// What the fault dice decided for one call.
enum Fate {
    Normal,
    /// Answer 503 without doing anything.
    Fail,
    /// Do the work, then hold the answer back.
    Hang(Duration),
}

fn roll(sim: &Sim) -> (Fate, Duration) {
    let f = sim.faults();
    let r = fastrand::f64();
    let fate = if r < f.error_rate {
        Fate::Fail
    } else if r < f.error_rate + f.timeout_rate {
        Fate::Hang(Duration::from_millis(f.hang_ms))
    } else {
        Fate::Normal
    };
    (fate, Duration::from_millis(f.latency_ms))
}

fn unavailable(instance: &str) -> Response {
    let mut resp = Problem::new(
        503,
        "service-unavailable",
        "Service unavailable",
        "injected fault: try again later",
    )
    .response(instance);
    resp.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    resp
}

fn unauthorized(instance: &str) -> Response {
    Problem::new(
        401,
        "unauthorized",
        "Unauthorized",
        "no valid API key: send Authorization: Bearer <secret key>",
    )
    .response(instance)
}

/// Checks auth and rolls the faults; `Err` is the answer to give at once. The caller waits
/// out the latency where the work happens.
fn admit(
    sim: &Sim,
    headers: &HeaderMap,
    instance: &str,
) -> Result<(Fate, Duration), Box<Response>> {
    let auth = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    if !sim.authorized(auth) {
        return Err(Box::new(unauthorized(instance)));
    }
    let (fate, latency) = roll(sim);
    if matches!(fate, Fate::Fail) {
        return Err(Box::new(unavailable(instance)));
    }
    Ok((fate, latency))
}

async fn hang(fate: &Fate) {
    if let Fate::Hang(d) = fate {
        tokio::time::sleep(*d).await;
    }
}

fn answer(status: u16, body: Value, replayed: bool) -> Response {
    let mut resp = if status >= 400 {
        problem_response(status, body)
    } else {
        let code = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
        (code, Json(body)).into_response()
    };
    if replayed {
        resp.headers_mut()
            .insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    resp
}

pub async fn create_session(
    State(sim): State<Arc<Sim>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let arrived = Instant::now();
    let _in_flight = sim.call_arrives();
    let (fate, latency) = match admit(&sim, &headers, SESSIONS) {
        Ok(f) => f,
        Err(resp) => return *resp,
    };
    let key = match headers.get("idempotency-key").map(|v| v.to_str()) {
        None if sim.config.require_idempotency_key => {
            return invalid("the Idempotency-Key header is required");
        }
        None => None,
        Some(Ok(k))
            if !k.is_empty() && k.len() <= 255 && k.bytes().all(|b| b.is_ascii_graphic()) =>
        {
            Some(k.to_owned())
        }
        Some(_) => return invalid("Idempotency-Key must be 1 to 255 visible ASCII characters"),
    };
    // Detached: a caller that hangs up must not leave its key in flight forever.
    let worker = Arc::clone(&sim);
    let held = key.clone();
    let work = tokio::spawn(async move { create(&worker, key, &body, arrived, latency).await });
    let (status, body, replayed) = match work.await {
        Ok(r) => r,
        Err(_) => {
            if let Some(k) = held {
                sim.idempotency_abandon(&k);
            }
            return unavailable(SESSIONS);
        }
    };
    hang(&fate).await;
    answer(status, body, replayed)
}

fn invalid(detail: &str) -> Response {
    Problem::new(400, "invalid-request", "Invalid request", detail).response(SESSIONS)
}

/// The create itself, under the idempotency key when there is one.
/// The latency is the time the work takes (done `latency` after the request `arrived`), spent
/// while the key is in flight, so a duplicate meanwhile sees `409`; replays and conflicts
/// answer at once.
async fn create(
    sim: &Arc<Sim>,
    key: Option<String>,
    body: &[u8],
    arrived: Instant,
    latency: Duration,
) -> (u16, Value, bool) {
    let hash = Sim::request_hash(body);
    let begin = key.as_ref().map(|k| sim.idempotency_begin(k, hash));
    if matches!(begin, None | Some(Begin::Proceed)) {
        sim.wait_out(arrived, latency).await;
    }
    if let Some(begin) = begin {
        match begin {
            Begin::Proceed => {}
            Begin::Replay { status, body } => return (status, body, true),
            Begin::Mismatch => {
                let p = Problem::new(
                    422,
                    "idempotency-key-reused",
                    "Unprocessable request",
                    "this Idempotency-Key was used with a different request body",
                );
                return (422, p.body(SESSIONS), false);
            }
            Begin::InFlight => {
                let p = Problem::new(
                    409,
                    "conflict",
                    "Conflict",
                    "a request with this Idempotency-Key is still being processed",
                );
                return (409, p.body(SESSIONS), false);
            }
        }
    }
    let result = serde_json::from_slice::<Value>(body)
        .map_err(|e| {
            Problem::new(
                400,
                "invalid-request",
                "Invalid request",
                format!("the body is not valid JSON: {e}"),
            )
        })
        .and_then(|v| validate::new_session(&v))
        .and_then(|req| sim.create(req));
    let (status, body) = match result {
        Ok(session) => (201, session),
        Err(p) => (p.status, p.body(SESSIONS)),
    };
    if let Some(key) = &key {
        // Moment stores the first answer under the key, refusals included.
        sim.idempotency_finish(key, hash, status, &body);
    }
    (status, body, false)
}

/// A read: auth, faults, then `lookup`, or a 404 naming `what`.
async fn read(
    sim: &Sim,
    headers: &HeaderMap,
    instance: &str,
    what: &str,
    lookup: impl FnOnce(&Sim) -> Option<Value>,
) -> Response {
    let arrived = Instant::now();
    let _in_flight = sim.call_arrives();
    let (fate, latency) = match admit(sim, headers, instance) {
        Ok(f) => f,
        Err(resp) => return *resp,
    };
    sim.wait_out(arrived, latency).await;
    let found = lookup(sim);
    hang(&fate).await;
    match found {
        Some(v) => Json(v).into_response(),
        None => Problem::not_found(what).response(instance),
    }
}

pub async fn get_session(
    State(sim): State<Arc<Sim>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let instance = format!("{SESSIONS}/{id}");
    read(&sim, &headers, &instance, "payment session", |s| {
        s.session(&id)
    })
    .await
}

pub async fn get_payment(
    State(sim): State<Arc<Sim>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let instance = format!("/collect/payments/{id}");
    read(&sim, &headers, &instance, "payment", |s| s.payment(&id)).await
}
