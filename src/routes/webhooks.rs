//! `POST /webhooks/moment`: verify on the raw body, then store once and apply.

use std::time::SystemTime;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use bytes::Bytes;

use crate::error::{ApiError, Problem};
use crate::metrics;
use crate::moment::signature::{SignatureError, SignedHeaders};
use crate::moment::wire::Event;
use crate::state::AppState;
use crate::workflow::events::{self, Receipt};

fn header<'a>(headers: &'a HeaderMap, name: &'static str) -> Result<Option<&'a str>, ApiError> {
    headers
        .get(name)
        .map(|v| {
            v.to_str()
                .map_err(|_| ApiError::Webhook(SignatureError::MalformedHeader(name)))
        })
        .transpose()
}

/// `204` for every verified delivery (duplicates and events we do not act on included),
/// `401` for a bad signature or timestamp, `400` for missing or malformed headers, `503`
/// when the event could not be stored, so that Moment delivers it again.
#[utoipa::path(
    post, path = "/webhooks/moment", tag = "webhooks", operation_id = "receiveMomentWebhook", security(()),
    request_body(content = Object, description = "Moment's event, verified on the raw bytes: `{\"id\": \"evt_…\", \"type\": \"payment_session.completed\", \"data\": {…}}`",
        example = json!({"id": "evt_1PZbB4YdM2xqAqZbvaf1mfPQ", "type": "payment_session.completed",
            "data": {"id": "ps_eLtQXMBUErQF5i", "type": "first_in_series", "status": "completed",
                     "payment_outcome": "paid", "customer_id": "cus_J17pnG25nuvKu",
                     "payment_method_id": "pmt_izWG6Vcvy4VYiU", "payment_id": "pay_rOaZNqKZMFxsRb2NBL1cj",
                     "external_reference": "01a20e0a-fb07-7569-a87f-9afae148c0ff"}})),
    params(
        ("webhook-id" = String, Header, description = "The message id; a redelivery keeps it (1 to 255 visible characters)",
         min_length = 1, max_length = 255, pattern = "^[!-~]([ -~]*[!-~])?$"),
        ("webhook-timestamp" = i64, Header, description = "Unix seconds; refused (401) beyond MOMENT_WEBHOOK_TOLERANCE_SECS either way",
         minimum = -9223372036854775808i64, maximum = 9223372036854775807i64),
        ("webhook-signature" = String, Header, description = "Space-separated `v1,<base64 HMAC-SHA256>` entries; the body is authenticated by them, so this route takes no API key",
         pattern = "^[ -~]*$"),
    ),
    responses(
        (status = 204, description = "Verified and stored (duplicates and event types we do not act on included)"),
        (status = 400, description = "A Standard Webhooks header is missing or malformed", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No signature matches, or the timestamp is out of tolerance", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Body over BODY_LIMIT_BYTES", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Not stored (database unavailable): Moment delivers it again", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn receive(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<StatusCode, ApiError> {
    let result = verify_and_store(state, &headers, body).await;
    if let Err(e) = &result {
        match e {
            ApiError::Webhook(SignatureError::Mismatch) => {
                metrics::webhook("unknown", "rejected", "signature")
            }
            ApiError::Webhook(SignatureError::Timestamp) => {
                metrics::webhook("unknown", "rejected", "timestamp")
            }
            ApiError::Webhook(_) => metrics::webhook("unknown", "rejected", "malformed"),
            _ => metrics::webhook("unknown", "unavailable", ""),
        }
    }
    result
}

async fn verify_and_store(
    state: AppState,
    headers: &HeaderMap,
    body: Bytes,
) -> Result<StatusCode, ApiError> {
    let signed = SignedHeaders {
        id: header(headers, "webhook-id")?,
        timestamp: header(headers, "webhook-timestamp")?,
        signature: header(headers, "webhook-signature")?,
    };
    let webhook_id = state
        .verifier
        .verify(signed, &body, SystemTime::now())
        .map_err(ApiError::Webhook)?
        .to_owned();
    let payload = String::from_utf8_lossy(&body).into_owned();
    // A verified body we cannot read is kept as it is: Moment sent it, and it is not lost.
    let event = serde_json::from_str::<Event>(&payload).unwrap_or_else(|_| Event {
        id: None,
        kind: "unreadable".into(),
        data: serde_json::Value::Null,
    });
    let delivery = events::delivery(&webhook_id, payload, &event, state.moment.mode());
    let receipt = events::receive(&state.ingest, delivery)
        .await
        .map_err(ApiError::DatabaseUnavailable)?;
    let kind = event.kind;
    let outcome = match receipt {
        Receipt::Duplicate => "duplicate",
        Receipt::Stored(outcome) => outcome.as_str(),
    };
    metrics::webhook(&kind, outcome, "");
    // On the request's own line (see `app::router_with_limit`), not a line of its own.
    let span = tracing::Span::current();
    span.record("webhook_id", webhook_id.as_str());
    span.record("event_type", kind.as_str());
    span.record("outcome", outcome);
    Ok(StatusCode::NO_CONTENT)
}
