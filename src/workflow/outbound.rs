//! Webhooks out to the merchant: the worker fans new events out to the endpoints as
//! deliveries, then sends what is due, signed with Standard Webhooks (the scheme merchants
//! already verify for Moment), at least once.
//!
//! `webhook-id` is the event id and stays the same across attempts; `webhook-timestamp` is
//! fresh each attempt; `webhook-signature` carries a `v1` entry for every active secret of the
//! endpoint (two during a rotation). A 2xx is success. Anything else is retried on the
//! schedule (by default immediately, then 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h, then given
//! up), never before the endpoint's `Retry-After`. `410 Gone` disables the endpoint; so does
//! failing for 5 days, with a `webhook_endpoint.disabled` event. Deliveries are sent
//! concurrently in one lane per endpoint, each bounded by a 15 s timeout, so one slow or dead
//! endpoint never holds the others back.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::moment::client::parse_retry_after;
use crate::moment::signature::WebhookSecret;
use crate::state::AppState;
use crate::store::deliveries::{self, AttemptResult, Due};
use crate::store::events;
use crate::store::webhook_endpoints::{self as endpoints, Endpoint};

/// How long one attempt may take.
pub const ATTEMPT_TIMEOUT: Duration = crate::config::DELIVERY_TIMEOUT;

/// An endpoint failing this long without a success is disabled.
pub const DISABLE_AFTER: Duration = Duration::from_secs(5 * 24 * 3600);

/// How long the new secret's predecessor keeps signing after a rotation (seconds).
pub const ROTATION_OVERLAP_SECS: f64 = 24.0 * 3600.0;

/// Endpoints served at once by one worker run, at most (one lane each).
const LANES: i64 = 32;

/// Deliveries to one endpoint in flight at once.
const PER_LANE: i64 = 8;

/// Events fanned out per endpoint and step.
const FAN_OUT_BATCH: i64 = 500;

/// The event types the service writes; an endpoint may subscribe to any of them.
pub const EVENT_TYPES: &[&str] = &[
    "mandate.created",
    "mandate.active",
    "mandate.failed",
    "mandate.expired",
    "mandate.cancelled",
    "mandate.revoked",
    "charge.created",
    "charge.processing",
    "charge.succeeded",
    "charge.failed",
    "charge.needs_review",
    "subscription.created",
    "subscription.updated",
    "subscription.paused",
    "subscription.resumed",
    "subscription.past_due",
    "subscription.cancelled",
    "subscription.finished",
    "subscription.charge_upcoming",
    "dunning.retry_scheduled",
    "dunning.exhausted",
    "webhook_endpoint.disabled",
];

/// A fresh signing secret, `whsec_` and 32 bytes in base64, from the operating system's
/// random source (UUID v4s: 244 random bits).
pub fn new_secret() -> String {
    let mut key = [0u8; 32];
    key[..16].copy_from_slice(Uuid::new_v4().as_bytes());
    key[16..].copy_from_slice(Uuid::new_v4().as_bytes());
    format!(
        "whsec_{}",
        base64::engine::general_purpose::STANDARD.encode(key)
    )
}

/// The body of a delivery: the event as `GET /events/{id}` shows it.
pub fn body(due: &Due) -> Value {
    json!({
        "id": due.event_id,
        "type": due.kind,
        "created_at": due.event_created_at.format(&time::format_description::well_known::Rfc3339).unwrap_or_default(),
        "resource": {"type": due.resource_type, "id": due.resource_id},
        "sequence": due.sequence,
        "data": due.data.0,
    })
}

/// `webhook-signature` for `body` at `timestamp`: one `v1` entry per active secret.
pub fn signature(secrets: &[&str], id: &str, timestamp: i64, body: &[u8]) -> String {
    secrets
        .iter()
        .filter_map(|s| WebhookSecret::parse(s).ok())
        .map(|s| s.sign(id, timestamp, body))
        .collect::<Vec<_>>()
        .join(" ")
}

/// What a worker run did with webhooks out.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Sent {
    pub fanned_out: u64,
    pub delivered: usize,
    pub failed: usize,
}

/// Fans out new events (bounded by `deadline`), then sends the deliveries that are due.
pub async fn run(state: &AppState, deadline: Instant) -> sqlx::Result<Sent> {
    let mut sent = Sent::default();
    // Endpoints take turns; none left with visible events (or all held by other replicas)
    // ends the fan-out for this run. It gets half the run's budget at most, so that a long
    // backlog to fan out never leaves nothing to send.
    let now = Instant::now();
    let fan_out_until = now + deadline.saturating_duration_since(now) / 2;
    while Instant::now() < fan_out_until {
        let n = endpoints::fan_out(&state.db, FAN_OUT_BATCH).await?;
        if n == 0 && !fanned_any(state).await? {
            break;
        }
        sent.fanned_out += n;
    }
    // One lane per endpoint with work due: a lane sends its endpoint's deliveries a few at a
    // time until none is due or the budget is spent, so a slow or dead endpoint holds back
    // only its own lane.
    let lanes = deliveries::endpoints_due(&state.db, LANES).await?;
    let mut tasks = tokio::task::JoinSet::new();
    for endpoint_id in lanes {
        let st = state.clone();
        tasks.spawn(async move { lane(&st, endpoint_id, deadline).await });
    }
    // Every lane is waited for, errors or not: dropping the set would cut their database work
    // short (sqlx's `begin()` is not cancel-safe).
    let mut first_error = None;
    while let Some(done) = tasks.join_next().await {
        match done {
            Ok(Ok((ok, failed))) => {
                sent.delivered += ok;
                sent.failed += failed;
            }
            Ok(Err(e)) => {
                first_error.get_or_insert(e);
            }
            Err(e) => tracing::error!(error = %e, "a delivery lane failed"),
        }
    }
    if let Some(e) = first_error {
        return Err(e);
    }
    Ok(sent)
}

/// Sends one endpoint's due deliveries, `PER_LANE` at once, until none is due or `deadline`.
/// Returns how many it took and how many it did not.
async fn lane(
    state: &AppState,
    endpoint_id: Uuid,
    deadline: Instant,
) -> sqlx::Result<(usize, usize)> {
    let (mut ok, mut failed) = (0, 0);
    while Instant::now() < deadline {
        let token = Uuid::new_v4();
        let lease = 2.0 * ATTEMPT_TIMEOUT.as_secs_f64() + 5.0;
        let due = deliveries::claim_due(&state.db, endpoint_id, PER_LANE, lease, token).await?;
        if due.is_empty() {
            break;
        }
        let mut tasks = tokio::task::JoinSet::new();
        for d in due {
            let st = state.clone();
            tasks.spawn(async move { send(&st, d, token).await });
        }
        let mut first_error = None;
        while let Some(done) = tasks.join_next().await {
            match done {
                Ok(Ok(true)) => ok += 1,
                Ok(Ok(false)) => failed += 1,
                Ok(Err(e)) => {
                    first_error.get_or_insert(e);
                }
                Err(e) => tracing::error!(error = %e, "a delivery task failed"),
            }
        }
        if let Some(e) = first_error {
            return Err(e);
        }
    }
    Ok((ok, failed))
}

/// Whether an enabled endpoint nobody holds still has visible events past its cursor (its
/// last batch may have matched none of its types).
async fn fanned_any(state: &AppState) -> sqlx::Result<bool> {
    sqlx::query_scalar(
        "select exists (select 1 from webhook_endpoint w where w.enabled and exists (
             select 1 from event e where (e.xid, e.position) > (w.cursor_xid, w.cursor_position)
               and e.xid < pg_snapshot_xmin(pg_current_snapshot()))
             for update skip locked)",
    )
    .fetch_one(&state.db)
    .await
}

/// One attempt of one delivery, recorded. True when the endpoint took it.
async fn send(state: &AppState, due: Due, token: Uuid) -> sqlx::Result<bool> {
    let body = serde_json::to_vec(&body(&due)).unwrap_or_default();
    let id = due.event_id.to_string();
    let timestamp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let mut secrets = vec![due.secret.as_str()];
    secrets.extend(due.old_secret.as_deref());
    let signature = signature(&secrets, &id, timestamp, &body);
    let started = Instant::now();
    let answer = state
        .outbound
        .post(&due.url)
        .header("content-type", "application/json")
        .header("webhook-id", &id)
        .header("webhook-timestamp", timestamp.to_string())
        .header("webhook-signature", signature)
        .body(body)
        .send()
        .await;
    let duration_ms = started.elapsed().as_millis().min(i32::MAX as u128) as i32;
    let (status_code, error, retry_after) = match &answer {
        Ok(resp) => {
            let retry_after = resp
                .headers()
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| parse_retry_after(v, SystemTime::now()));
            (Some(resp.status().as_u16()), None, retry_after)
        }
        Err(e) if e.is_timeout() => (None, Some("timeout".to_owned()), None),
        Err(e) if e.is_connect() => (None, Some("connection refused".to_owned()), None),
        Err(_) => (None, Some("no answer".to_owned()), None),
    };
    let ok = status_code.is_some_and(|s| (200..300).contains(&s));
    let gone = status_code == Some(410);
    let schedule = &state.settings.delivery_schedule;
    let attempt = due.attempts as usize;
    let (outcome, next) = if ok {
        ("delivered", 0.0)
    } else if gone || attempt >= schedule.len() {
        ("failed", 0.0)
    } else {
        let wait = schedule[attempt].max(retry_after.unwrap_or_default());
        ("pending", wait.as_secs_f64())
    };
    let result = AttemptResult {
        status_code: status_code.map(i32::from),
        error: error.as_deref(),
        duration_ms,
        outcome,
        next_attempt_secs: next,
    };
    deliveries::record_attempt(&state.db, due.id, token, &result).await?;
    tracing::info!(event_id = %id, endpoint_id = %due.endpoint_id, status = ?status_code, error = ?error, outcome, "webhook delivery");
    if gone {
        disable(state, due.endpoint_id, "gone").await?;
    } else if let Some(since) = endpoints::record_result(&state.db, due.endpoint_id, ok).await?
        && time::OffsetDateTime::now_utc() - since > DISABLE_AFTER
    {
        disable(state, due.endpoint_id, "failing").await?;
    }
    Ok(ok)
}

/// Disables an endpoint, ends its pending deliveries, and says so with an event.
pub async fn disable(state: &AppState, id: Uuid, reason: &str) -> sqlx::Result<()> {
    let mut tx = state.db.begin().await?;
    if endpoints::disable(&mut *tx, id, reason).await? {
        deliveries::fail_pending_of(&mut *tx, id).await?;
        if let Some(ep) = endpoints::by_id(&mut *tx, id).await? {
            let data =
                serde_json::to_value(crate::api::EndpointResponse::from(&ep)).unwrap_or_default();
            events::insert(
                &mut *tx,
                "webhook_endpoint.disabled",
                "webhook_endpoint",
                id,
                &data,
            )
            .await?;
        }
        tracing::warn!(endpoint_id = %id, reason, "webhook endpoint disabled");
    }
    tx.commit().await
}

/// The endpoint `MERCHANT_WEBHOOK_URL` names, signing with `secret`
/// (`MERCHANT_WEBHOOK_SECRET`): created at start when missing, its secret set to the setting
/// when it differs (the setting wins), enabled.
pub async fn ensure_endpoint(state: &AppState, url: &str, secret: &str) -> sqlx::Result<Endpoint> {
    let ep = match endpoints::by_url(&state.db, url).await? {
        Some(ep) if ep.secret == secret => ep,
        Some(ep) => endpoints::rotate(&state.db, ep.id, secret, 0.0)
            .await?
            .unwrap_or(ep),
        None => endpoints::insert(&state.db, Uuid::now_v7(), url, None, secret).await?,
    };
    tracing::info!(endpoint_id = %ep.id, url, "webhook endpoint from MERCHANT_WEBHOOK_URL");
    Ok(ep)
}
