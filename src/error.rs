//! API errors as RFC 9457 problem details (`application/problem+json`).

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::moment::signature::SignatureError;

/// Media type of every error body.
pub const PROBLEM_JSON: &str = "application/problem+json";

/// Every way a request can fail, as the caller sees it.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The body or a parameter is well-formed but not acceptable.
    #[error("{detail}")]
    Invalid {
        field: Option<String>,
        detail: String,
    },
    /// The body is not JSON, or a header or parameter cannot be read.
    #[error("{detail}")]
    Malformed {
        field: Option<String>,
        detail: String,
    },
    #[error("the request body must be application/json")]
    UnsupportedMediaType,
    /// The body is over the limit (bytes); it was not read to its end, so the connection
    /// closes after the answer.
    #[error("the request body is larger than {0} bytes")]
    PayloadTooLarge(usize),
    #[error("a valid API key is required: Authorization: Bearer <key>")]
    Unauthorized,
    #[error("no such {0}")]
    NotFound(&'static str),
    /// The request conflicts with the current state of a resource.
    #[error("{0}")]
    Conflict(String),
    #[error("a request with this Idempotency-Key is still in progress; retry later")]
    IdempotencyInFlight,
    #[error("this Idempotency-Key was used with a different request body")]
    IdempotencyMismatch,
    #[error("webhook rejected: {0}")]
    Webhook(SignatureError),
    /// Moment refused what we sent on the merchant's behalf.
    #[error("Moment refused the request: {0}")]
    MomentRejected(String),
    /// Moment gave no definite answer; nothing was lost and a retry is safe.
    #[error("Moment is not answering; retry later with the same Idempotency-Key")]
    MomentUnavailable,
    #[error("the database is unavailable; retry later")]
    DatabaseUnavailable(#[source] sqlx::Error),
    /// The charge would break the mandate's terms: nothing is recorded or sent.
    #[error("{}", .0.detail)]
    MandateTerms(Box<TermsBreach>),
    #[error("internal error")]
    Internal(#[from] anyhow::Error),
}

/// Which term a charge would break, with the numbers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TermsBreach {
    /// `amount`, `validity_period`, `max_occurrences`, `period_limits.max_count` or
    /// `period_limits.max_amount`.
    pub term: &'static str,
    pub detail: String,
    pub limit: i64,
    pub used: i64,
    pub requested: i64,
}

impl ApiError {
    pub fn invalid(field: &str, detail: impl Into<String>) -> Self {
        Self::Invalid {
            field: Some(field.to_owned()),
            detail: detail.into(),
        }
    }

    pub fn malformed(field: &str, detail: impl Into<String>) -> Self {
        Self::Malformed {
            field: Some(field.to_owned()),
            detail: detail.into(),
        }
    }

    fn status(&self) -> StatusCode {
        match self {
            Self::Invalid { .. }
            | Self::IdempotencyMismatch
            | Self::MomentRejected(_)
            | Self::MandateTerms(_) => StatusCode::UNPROCESSABLE_ENTITY,
            Self::Malformed { .. } => StatusCode::BAD_REQUEST,
            Self::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::Conflict(_) | Self::IdempotencyInFlight => StatusCode::CONFLICT,
            Self::Webhook(e) if e.is_malformed() => StatusCode::BAD_REQUEST,
            Self::Webhook(_) => StatusCode::UNAUTHORIZED,
            Self::MomentUnavailable | Self::DatabaseUnavailable(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The last segment of the problem `type` URI.
    fn slug(&self) -> &'static str {
        match self {
            Self::Invalid { .. } => "invalid-request",
            Self::Malformed { .. } => "malformed-request",
            Self::UnsupportedMediaType => "unsupported-media-type",
            Self::PayloadTooLarge(_) => "payload-too-large",
            Self::Unauthorized => "unauthorized",
            Self::NotFound(_) => "not-found",
            Self::Conflict(_) => "conflict",
            Self::IdempotencyInFlight => "idempotency-key-in-use",
            Self::IdempotencyMismatch => "idempotency-key-reused",
            Self::Webhook(e) if e.is_malformed() => "malformed-webhook",
            Self::Webhook(_) => "invalid-webhook-signature",
            Self::MomentRejected(_) => "moment-rejected",
            Self::MomentUnavailable => "moment-unavailable",
            Self::DatabaseUnavailable(_) => "database-unavailable",
            Self::MandateTerms(_) => "mandate-terms",
            Self::Internal(_) => "internal-error",
        }
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        match e {
            sqlx::Error::PoolTimedOut
            | sqlx::Error::Io(_)
            | sqlx::Error::PoolClosed
            | sqlx::Error::Tls(_) => Self::DatabaseUnavailable(e),
            other => Self::Internal(other.into()),
        }
    }
}

/// An RFC 9457 problem details body (`application/problem+json`).
#[derive(Debug, Serialize, serde::Deserialize, utoipa::ToSchema)]
#[schema(example = json!({
    "type": "urn:moment-mandates:problem:invalid-request", "title": "Unprocessable Entity",
    "status": 422, "detail": "must be an absolute http(s) URL", "field": "return_url"
}))]
pub struct Problem {
    #[serde(rename = "type")]
    pub kind: String,
    pub title: String,
    pub status: u16,
    pub detail: String,
    /// The offending field, as a JSON path (`customer.email`) or a header or parameter name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// For `mandate-terms`: the term the charge would break, its limit, how much of it is
    /// used, and what the charge asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub term: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub used: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requested: Option<i64>,
}

impl Problem {
    pub fn new(status: StatusCode, slug: &str, detail: String, field: Option<String>) -> Self {
        Self {
            kind: format!("urn:moment-mandates:problem:{slug}"),
            title: status.canonical_reason().unwrap_or("Error").to_owned(),
            status: status.as_u16(),
            detail,
            field,
            term: None,
            limit: None,
            used: None,
            requested: None,
        }
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut resp = (status, axum::Json(self)).into_response();
        resp.headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
        resp
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        match &self {
            // The chain goes to the log only; the body says nothing of our internals.
            Self::Internal(e) => tracing::error!(error = ?e, "request failed"),
            Self::DatabaseUnavailable(e) => tracing::error!(error = %e, "database unavailable"),
            Self::Webhook(reason) => tracing::warn!(%reason, "webhook rejected"),
            _ => {}
        }
        let field = match &self {
            Self::Invalid { field, .. } | Self::Malformed { field, .. } => field.clone(),
            _ => None,
        };
        let mut problem = Problem::new(status, self.slug(), self.to_string(), field);
        if let Self::MandateTerms(b) = &self {
            problem.term = Some(b.term.to_owned());
            problem.limit = Some(b.limit);
            problem.used = Some(b.used);
            problem.requested = Some(b.requested);
        }
        let mut resp = problem.into_response();
        if status == StatusCode::UNAUTHORIZED && matches!(self, Self::Unauthorized) {
            resp.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if matches!(self, Self::PayloadTooLarge(_)) {
            // The rest of the body was never read: tell a keep-alive client not to reuse this
            // connection, rather than let its next request meet a closed socket.
            resp.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        if status == StatusCode::SERVICE_UNAVAILABLE {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
        }
        resp
    }
}

/// Gives every error response that is not problem details already (unknown route, wrong
/// method, body too large, timeout) a problem details body of its own status.
pub async fn problem_fallback(resp: Response) -> Response {
    let status = resp.status();
    let is_problem = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes() == PROBLEM_JSON.as_bytes());
    if !(status.is_client_error() || status.is_server_error()) || is_problem {
        return resp;
    }
    let detail = match status {
        StatusCode::NOT_FOUND => "no such resource".to_owned(),
        StatusCode::METHOD_NOT_ALLOWED => "method not allowed on this resource".to_owned(),
        StatusCode::PAYLOAD_TOO_LARGE => "the request body is too large".to_owned(),
        StatusCode::REQUEST_TIMEOUT => "the request took too long".to_owned(),
        s => s.canonical_reason().unwrap_or("error").to_lowercase(),
    };
    let slug = status
        .canonical_reason()
        .unwrap_or("error")
        .to_lowercase()
        .replace(' ', "-");
    let mut out = Problem::new(status, &slug, detail, None).into_response();
    for name in [header::ALLOW, header::RETRY_AFTER, header::WWW_AUTHENTICATE] {
        if let Some(v) = resp.headers().get(&name) {
            out.headers_mut().insert(name, v.clone());
        }
    }
    out
}
