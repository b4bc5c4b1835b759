//! HTTP client for Moment's payment sessions API.
//!
//! Every create carries an `Idempotency-Key`; 429, 5xx, timeouts and connection failures are
//! retried under the same key with exponential backoff and full jitter, honouring
//! `Retry-After`. What is still unanswered after the last attempt is `Unavailable`: the caller
//! must treat the outcome as unknown, never as failed.

use std::sync::Arc;
use std::time::Duration;

use reqwest::StatusCode;
use secrecy::{ExposeSecret, SecretString};

use super::wire::{CreateSessionRequest, Problem, Session};

/// How calls to Moment are retried.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// Attempts in all, the first included.
    pub max_attempts: u32,
    /// Backoff before the second attempt; doubled for each later one.
    pub base_delay: Duration,
    /// Upper bound of one backoff, `Retry-After` included.
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 3,
            base_delay: Duration::from_millis(200),
            max_delay: Duration::from_secs(2),
        }
    }
}

/// Why a call to Moment did not give a usable answer.
#[derive(Debug, thiserror::Error)]
pub enum MomentError {
    /// Moment answered with a 4xx other than 409 and 429: the request itself was refused, and
    /// sending it again would be refused again.
    #[error("Moment refused the request ({status})")]
    Rejected { status: u16, problem: Problem },
    /// No definite answer: 409 (in flight), 429, 5xx, timeout or network failure after every
    /// attempt. The operation may or may not have happened at Moment.
    #[error("Moment unavailable: {0}")]
    Unavailable(String),
}

/// Client for Moment, built once at start and cloned cheaply.
#[derive(Clone)]
pub struct MomentClient {
    http: reqwest::Client,
    base_url: Arc<str>,
    secret_key: Arc<SecretString>,
    retry: RetryPolicy,
    timeout: Duration,
}

impl MomentClient {
    /// `timeout` bounds each attempt, from connecting to the last byte of the answer.
    pub fn new(
        base_url: &str,
        secret_key: SecretString,
        timeout: Duration,
        retry: RetryPolicy,
    ) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(5)))
            .user_agent(concat!("moment-mandates/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Self {
            http,
            base_url: base_url.trim_end_matches('/').into(),
            secret_key: Arc::new(secret_key),
            retry,
            timeout,
        })
    }

    /// The longest one call can take with all its attempts: every attempt timing out, with
    /// the backoffs in between.
    pub fn longest_call(&self) -> Duration {
        let attempts = self.retry.max_attempts.max(1);
        let backoffs: Duration = (0..attempts - 1)
            .map(|i| (self.retry.base_delay * 2u32.saturating_pow(i)).min(self.retry.max_delay))
            .sum();
        self.timeout * attempts + backoffs
    }

    /// `POST /collect/payment_sessions` under `idempotency_key`.
    #[tracing::instrument(skip_all, fields(kind = ?req.kind))]
    pub async fn create_session(
        &self,
        req: &CreateSessionRequest,
        idempotency_key: &str,
    ) -> Result<Session, MomentError> {
        let url = format!("{}/collect/payment_sessions", self.base_url);
        self.call("create_session", || {
            self.http
                .post(&url)
                .header("Idempotency-Key", idempotency_key)
                .json(req)
        })
        .await
    }

    /// `GET /collect/payment_sessions/{id}`.
    #[tracing::instrument(skip_all)]
    pub async fn get_session(&self, id: &str) -> Result<Session, MomentError> {
        let url = format!(
            "{}/collect/payment_sessions/{}",
            self.base_url,
            urlencode(id)
        );
        self.call("get_session", || self.http.get(&url)).await
    }

    /// Sends the request, retrying as the policy says. Every attempt carries the current
    /// request id (a new one outside a request) and is counted by `operation`.
    async fn call(
        &self,
        operation: &'static str,
        build: impl Fn() -> reqwest::RequestBuilder,
    ) -> Result<Session, MomentError> {
        let request_id =
            crate::telemetry::request_id().unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
        let mut attempt = 1;
        loop {
            let request = build()
                .bearer_auth(self.secret_key.expose_secret())
                .header(crate::telemetry::REQUEST_ID_HEADER, &request_id);
            let started = std::time::Instant::now();
            let sent = request.send().await;
            let label = match &sent {
                Ok(resp) => resp.status().as_u16().to_string(),
                Err(e) if e.is_timeout() => "timeout".to_owned(),
                Err(_) => "network".to_owned(),
            };
            crate::metrics::moment_call(operation, label, started);
            let (reason, retry_after) = match sent {
                Ok(resp) => {
                    let status = resp.status();
                    if status.is_success() {
                        return resp.json::<Session>().await.map_err(|e| {
                            MomentError::Unavailable(format!("unreadable answer: {e}"))
                        });
                    }
                    // 409 is a request under the same key still in flight at Moment: its
                    // outcome is unknown, so it is retried like a 5xx, never taken as a refusal.
                    if status.is_client_error()
                        && status != StatusCode::TOO_MANY_REQUESTS
                        && status != StatusCode::CONFLICT
                    {
                        let problem = resp.json::<Problem>().await.unwrap_or_default();
                        tracing::warn!(status = status.as_u16(), title = ?problem.title, "Moment refused the request");
                        return Err(MomentError::Rejected {
                            status: status.as_u16(),
                            problem,
                        });
                    }
                    let retry_after = resp
                        .headers()
                        .get(reqwest::header::RETRY_AFTER)
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.trim().parse::<u64>().ok())
                        .map(Duration::from_secs);
                    (format!("HTTP {}", status.as_u16()), retry_after)
                }
                Err(e) if e.is_timeout() => ("timeout".to_owned(), None),
                Err(e) => (format!("network: {}", without_url(&e)), None),
            };
            if attempt >= self.retry.max_attempts {
                tracing::warn!(attempt, reason, "Moment gave no answer; giving up for now");
                return Err(MomentError::Unavailable(reason));
            }
            let delay = self.backoff(attempt, retry_after);
            tracing::info!(
                attempt,
                reason,
                delay_ms = delay.as_millis() as u64,
                "retrying Moment"
            );
            tokio::time::sleep(delay).await;
            attempt += 1;
        }
    }

    /// Full jitter: uniform in [0, base · 2^(attempt-1)], capped; `Retry-After` when larger.
    fn backoff(&self, attempt: u32, retry_after: Option<Duration>) -> Duration {
        let exp = self
            .retry
            .base_delay
            .saturating_mul(1 << (attempt - 1).min(16))
            .min(self.retry.max_delay);
        let jittered = exp.mul_f64(fastrand::f64());
        retry_after
            .map_or(jittered, |ra| ra.max(jittered))
            .min(self.retry.max_delay)
    }
}

/// Percent-encodes a path segment: Moment's ids are plain tokens, but nothing we send is
/// allowed to change the path.
fn urlencode(segment: &str) -> String {
    url::form_urlencoded::byte_serialize(segment.as_bytes()).collect()
}

/// reqwest's error text names the URL; keep just the cause for logs.
fn without_url(e: &reqwest::Error) -> String {
    let mut msg = e.to_string();
    if let Some(url) = e.url() {
        msg = msg.replace(url.as_str(), "<moment>");
    }
    msg
}
