//! HTTP client for Moment's payment sessions API.
//!
//! Every create carries an `Idempotency-Key`; 408, 409, 425, 429, 5xx, timeouts and
//! connection failures are retried under the same key with exponential backoff and full
//! jitter, honouring `Retry-After` (seconds or HTTP-date) up to `max_retry_after`. Only 400,
//! 402 and 422 refuse a request; what is still unanswered after the last attempt is
//! `Unavailable`: the caller must treat the outcome as unknown, never as failed. An answer
//! Moment marks `Idempotent-Replayed: true` is final for 24 h and is never retried. Redirects
//! are never followed (a `307` would send a charge somewhere else).

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
    /// Upper bound of one backoff of our own.
    pub max_delay: Duration,
    /// The longest `Retry-After` waited out inside one call; a longer one ends the call, and
    /// the caller waits it out in the background.
    pub max_retry_after: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 3,
            base_delay: Duration::from_millis(200),
            max_delay: Duration::from_secs(2),
            max_retry_after: Duration::from_secs(60),
        }
    }
}

/// The answer to one attempt of a create.
#[derive(Debug)]
pub enum Attempt {
    /// Moment has the session.
    Session { session: Session, replayed: bool },
    /// A 4xx that is a refusal of the request itself (400, 402, 422): sent again, it would be
    /// refused again. Whether it may fail a charge depends on what came before (see
    /// `workflow::charges`).
    Refused {
        status: u16,
        problem: Problem,
        replayed: bool,
    },
    /// No definite answer: 5xx, 408, 409 (in flight), 425, 429, a timeout, a network failure,
    /// an unreadable answer, or a 4xx that says nothing of the request (401 and 403 during a
    /// key rotation, 404, 423, …). The session may or may not exist at Moment.
    Unknown {
        reason: String,
        /// Moment's `Retry-After`, seconds or HTTP-date.
        retry_after: Option<Duration>,
        /// Moment replayed a stored answer: it will give the same one for 24 h.
        replayed: bool,
        /// Worth another attempt inside this call (5xx, 408, 409, 425, 429, no answer).
        retryable: bool,
    },
}

/// The statuses that refuse a request for what it says.
pub fn is_refusal(status: u16) -> bool {
    matches!(status, 400 | 402 | 422)
}

/// Why a call to Moment did not give a usable answer.
#[derive(Debug, thiserror::Error)]
pub enum MomentError {
    /// A clean refusal (400, 402 or 422) of the call's first attempt, or a replayed one:
    /// sending the request again would be refused again.
    #[error("Moment refused the request ({status})")]
    Rejected { status: u16, problem: Problem },
    /// No definite answer after the attempts this call may make. The operation may or may not
    /// have happened at Moment.
    #[error("Moment unavailable: {reason}")]
    Unavailable {
        reason: String,
        /// A `Retry-After` longer than the call could wait.
        retry_after: Option<Duration>,
        /// The answer was a replayed one: Moment will repeat it for 24 h.
        replayed: bool,
    },
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
            .redirect(reqwest::redirect::Policy::none())
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
    /// the longest waits in between.
    pub fn longest_call(&self) -> Duration {
        let attempts = self.retry.max_attempts.max(1);
        let wait = self.retry.max_delay.max(self.retry.max_retry_after);
        self.timeout * attempts + wait * (attempts - 1)
    }

    /// How long one attempt may take.
    pub fn attempt_timeout(&self) -> Duration {
        self.timeout
    }

    /// The retry policy this client was built with.
    pub fn policy(&self) -> RetryPolicy {
        self.retry
    }

    /// `test` for a `sk_test_` key, `live` otherwise: the `mode` Moment gives its objects.
    pub fn mode(&self) -> &'static str {
        if self.secret_key.expose_secret().starts_with("sk_test_") {
            "test"
        } else {
            "live"
        }
    }

    /// One attempt of `POST /collect/payment_sessions` under `idempotency_key`, never retried
    /// here: the caller checks, before each, that it may still send (see `workflow::charges`).
    #[tracing::instrument(skip_all, fields(kind = ?req.kind))]
    pub async fn create_session_once(
        &self,
        req: &CreateSessionRequest,
        idempotency_key: &str,
    ) -> Attempt {
        let url = format!("{}/collect/payment_sessions", self.base_url);
        self.attempt("create_session", &request_id(), || {
            self.http
                .post(&url)
                .header("Idempotency-Key", idempotency_key)
                .json(req)
        })
        .await
    }

    /// `POST /collect/payment_sessions` under `idempotency_key`, retried as the policy says.
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

    /// Sends one attempt, carrying `request_id`, counted by `operation`.
    async fn attempt(
        &self,
        operation: &'static str,
        request_id: &str,
        build: impl Fn() -> reqwest::RequestBuilder,
    ) -> Attempt {
        let request = build()
            .bearer_auth(self.secret_key.expose_secret())
            .header(crate::telemetry::REQUEST_ID_HEADER, request_id);
        let started = std::time::Instant::now();
        let sent = request.send().await;
        let label = match &sent {
            Ok(resp) => resp.status().as_u16().to_string(),
            Err(e) if e.is_timeout() => "timeout".to_owned(),
            Err(_) => "network".to_owned(),
        };
        crate::metrics::moment_call(operation, label, started);
        let resp = match sent {
            Ok(resp) => resp,
            Err(e) => {
                let reason = if e.is_timeout() {
                    "timeout".to_owned()
                } else {
                    format!("network: {}", without_url(&e))
                };
                return Attempt::Unknown {
                    reason,
                    retry_after: None,
                    replayed: false,
                    retryable: true,
                };
            }
        };
        let status = resp.status();
        let replayed = resp
            .headers()
            .get("idempotent-replayed")
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"true"));
        if status.is_success() {
            return match resp.json::<Session>().await {
                Ok(session) => Attempt::Session { session, replayed },
                Err(e) => Attempt::Unknown {
                    reason: format!("unreadable answer: {e}"),
                    retry_after: None,
                    replayed,
                    retryable: true,
                },
            };
        }
        if is_refusal(status.as_u16()) {
            let problem = resp.json::<Problem>().await.unwrap_or_default();
            tracing::warn!(status = status.as_u16(), title = ?problem.title, replayed, "Moment refused the request");
            return Attempt::Refused {
                status: status.as_u16(),
                problem,
                replayed,
            };
        }
        let retry_after = resp
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_retry_after(v, std::time::SystemTime::now()));
        // 409 is a request under the same key still in flight at Moment: its outcome is
        // unknown, so it is retried like a 5xx, never taken as a refusal.
        let retryable = status.is_server_error()
            || matches!(
                status,
                StatusCode::REQUEST_TIMEOUT
                    | StatusCode::CONFLICT
                    | StatusCode::TOO_EARLY
                    | StatusCode::TOO_MANY_REQUESTS
            );
        Attempt::Unknown {
            reason: format!("HTTP {}", status.as_u16()),
            retry_after,
            replayed,
            retryable,
        }
    }

    /// Sends the request, retrying as the policy says. Every attempt carries the current
    /// request id (a new one outside a request). A refusal counts only on the first attempt
    /// (or replayed): after an attempt whose outcome was unknown, the refusal may be of a
    /// request that had already taken effect.
    async fn call(
        &self,
        operation: &'static str,
        build: impl Fn() -> reqwest::RequestBuilder,
    ) -> Result<Session, MomentError> {
        let request_id = request_id();
        let mut attempt = 1;
        loop {
            let (reason, retry_after) = match self.attempt(operation, &request_id, &build).await {
                Attempt::Session { session, .. } => return Ok(session),
                Attempt::Refused {
                    status,
                    problem,
                    replayed,
                } if attempt == 1 || replayed => {
                    return Err(MomentError::Rejected { status, problem });
                }
                Attempt::Refused { status, .. } => {
                    return Err(MomentError::Unavailable {
                        reason: format!("HTTP {status} after an unanswered attempt"),
                        retry_after: None,
                        replayed: false,
                    });
                }
                Attempt::Unknown {
                    reason,
                    retry_after,
                    replayed,
                    retryable,
                } => {
                    if replayed || !retryable {
                        return Err(MomentError::Unavailable {
                            reason,
                            retry_after,
                            replayed,
                        });
                    }
                    (reason, retry_after)
                }
            };
            let delay = self.backoff(attempt, retry_after);
            match delay {
                Some(delay) if attempt < self.retry.max_attempts => {
                    tracing::info!(
                        attempt,
                        reason,
                        delay_ms = delay.as_millis() as u64,
                        "retrying Moment"
                    );
                    tokio::time::sleep(delay).await;
                    attempt += 1;
                }
                _ => {
                    tracing::warn!(attempt, reason, "Moment gave no answer; giving up for now");
                    return Err(MomentError::Unavailable {
                        reason,
                        retry_after,
                        replayed: false,
                    });
                }
            }
        }
    }

    /// The wait before attempt `attempt + 1`: full jitter, uniform in [0, base · 2^(attempt-1)]
    /// capped at `max_delay`; Moment's `Retry-After` when longer. `None` when `Retry-After`
    /// is longer than one call may wait (`max_retry_after`): the call ends there.
    pub fn backoff(&self, attempt: u32, retry_after: Option<Duration>) -> Option<Duration> {
        let exp = self
            .retry
            .base_delay
            .saturating_mul(1 << (attempt.max(1) - 1).min(16))
            .min(self.retry.max_delay);
        let jittered = exp.mul_f64(fastrand::f64());
        match retry_after {
            Some(ra) if ra > self.retry.max_retry_after => None,
            Some(ra) => Some(ra.max(jittered)),
            None => Some(jittered),
        }
    }
}

/// The current request's id, or a new one outside a request.
fn request_id() -> String {
    crate::telemetry::request_id().unwrap_or_else(|| uuid::Uuid::new_v4().to_string())
}

/// `Retry-After` as delay-seconds or an HTTP-date (RFC 9110 §10.2.3), from `now`. A date in
/// the past is no wait at all.
pub fn parse_retry_after(value: &str, now: std::time::SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or_default())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_is_read_as_seconds_or_an_http_date() {
        let now = httpdate::parse_http_date("Tue, 01 Dec 2026 10:00:00 GMT").unwrap();
        assert_eq!(
            parse_retry_after("120", now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(
            parse_retry_after("Tue, 01 Dec 2026 10:01:30 GMT", now),
            Some(Duration::from_secs(90))
        );
        // A date gone by is no wait at all; nonsense is no Retry-After.
        assert_eq!(
            parse_retry_after("Tue, 01 Dec 2026 09:00:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon", now), None);
    }

    #[test]
    fn only_400_402_and_422_refuse_a_request() {
        for status in [400, 402, 422] {
            assert!(is_refusal(status), "{status}");
        }
        for status in [401, 403, 404, 408, 409, 423, 425, 429, 500, 503] {
            assert!(!is_refusal(status), "{status}");
        }
    }
}
