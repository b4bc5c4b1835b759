//! Sending webhooks as Moment does (Standard Webhooks): POST to the configured URL, signed
//! with a fresh timestamp on every attempt under the same `webhook-id`, retried on any non-2xx
//! answer or timeout by the configured schedule.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use serde_json::Value;

use super::engine::Sim;
use super::model::now;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryState {
    /// Waiting for its first or next attempt.
    Pending,
    /// Held back by the `hold_webhooks` fault until released.
    Held,
    /// Answered 2xx.
    Delivered,
    /// Every attempt of the schedule failed.
    Failed,
    /// No webhook URL is configured; recorded only.
    NoEndpoint,
}

/// One attempt: the answer's status, or why there was none.
#[derive(Debug, Clone, Serialize)]
pub struct Attempt {
    pub at: String,
    pub status: Option<u16>,
    pub error: Option<String>,
    pub duration_ms: u64,
}

/// One message to the webhook URL and every attempt to deliver it.
#[derive(Debug, Clone, Serialize)]
pub struct Delivery {
    pub index: usize,
    pub webhook_id: String,
    pub event_id: String,
    pub event_type: String,
    /// The payment session it concerns, for `payment_session.*` events.
    pub session_id: Option<String>,
    /// A second copy made by the `duplicate_rate` fault.
    pub duplicate: bool,
    pub state: DeliveryState,
    pub attempts: Vec<Attempt>,
    pub payload: Value,
}

impl Sim {
    /// Starts delivering message `index` after a random wait in `0..window_ms`.
    pub(super) fn schedule(&self, index: usize, window_ms: u64) {
        let Some(sim) = self.me() else { return };
        tokio::spawn(async move {
            if window_ms > 0 {
                tokio::time::sleep(Duration::from_millis(fastrand::u64(..window_ms))).await;
            }
            sim.deliver(index).await;
        });
    }

    async fn deliver(self: Arc<Self>, index: usize) {
        let Some(url) = self.config.webhook_url.clone() else {
            return;
        };
        let (webhook_id, body) = {
            let inner = self.lock();
            let d = &inner.deliveries[index];
            (d.webhook_id.clone(), d.payload.to_string())
        };
        let mut attempt = 0;
        loop {
            let outcome = {
                let _slot = self.delivery_slots.acquire().await;
                self.attempt(&url, &webhook_id, &body).await
            };
            let ok = outcome.status.is_some_and(|s| (200..300).contains(&s));
            {
                let mut inner = self.lock();
                let d = &mut inner.deliveries[index];
                d.attempts.push(outcome);
                if ok {
                    d.state = DeliveryState::Delivered;
                } else if attempt >= self.config.webhook_retry_schedule.len() {
                    d.state = DeliveryState::Failed;
                }
            }
            if ok {
                return;
            }
            let Some(wait) = self.config.webhook_retry_schedule.get(attempt) else {
                tracing::warn!(webhook_id, "webhook delivery failed on every attempt");
                return;
            };
            tokio::time::sleep(*wait).await;
            attempt += 1;
        }
    }

    async fn attempt(&self, url: &str, webhook_id: &str, body: &str) -> Attempt {
        let timestamp = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        let signature = self
            .webhook_secret()
            .sign(webhook_id, timestamp, body.as_bytes());
        let at = now();
        let started = Instant::now();
        let result = self
            .http
            .post(url)
            .header("content-type", "application/json")
            .header("webhook-id", webhook_id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signature)
            .body(body.to_owned())
            .send()
            .await;
        let duration_ms = started.elapsed().as_millis() as u64;
        match result {
            Ok(resp) => Attempt {
                at,
                status: Some(resp.status().as_u16()),
                error: None,
                duration_ms,
            },
            Err(e) => Attempt {
                at,
                status: None,
                error: Some(if e.is_timeout() {
                    "timeout".into()
                } else {
                    "connection failed".into()
                }),
                duration_ms,
            },
        }
    }
}
