//! The service under test: the real router on a fresh Postgres database, with Moment faked at
//! the HTTP level by wiremock.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, Request, StatusCode};
use http_body_util::BodyExt;
use moment_mandates::app::router;
use moment_mandates::config::Config;
use moment_mandates::moment::signature::WebhookSecret;
use moment_mandates::state::AppState;
use serde_json::{Value, json};
use sqlx::PgPool;
use tower::ServiceExt;

use crate::support::db::TestDb;
use wiremock::matchers::{body_partial_json, method, path, path_regex};
use wiremock::{Mock, MockServer, Respond, ResponseTemplate};

pub const API_KEY: &str = "test-key-0123456789abcdefgh";
/// The Standard Webhooks vector A secret; `OLD_SECRET` (vector B) is configured beside it.
pub const WEBHOOK_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
pub const OLD_SECRET: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";
pub const PUBLIC_URL: &str = "http://mandates.test";

pub struct TestApp {
    /// The test's own database; dropped with the app.
    _test_db: TestDb,
    pub db: PgPool,
    pub moment: MockServer,
    pub state: AppState,
    router: Router,
    secret: WebhookSecret,
}

/// Settings for tests: short Moment timeouts so failure cases run quickly.
pub fn test_config(database_url: &str, moment_url: &str) -> Config {
    let mut config = Config::local(
        database_url,
        PUBLIC_URL,
        moment_url,
        "sk_test_secret",
        vec![
            WebhookSecret::parse(WEBHOOK_SECRET).unwrap(),
            WebhookSecret::parse(OLD_SECRET).unwrap(),
        ],
        &["other-key", API_KEY],
    );
    config.db.acquire_timeout = Duration::from_secs(2);
    config.moment_timeout = Duration::from_millis(500);
    config.default_return_url = Some("https://shop.test/done".into());
    config.request_timeout = Duration::from_secs(30);
    config.worker_interval = Duration::from_millis(200);
    config.reconcile_after = Duration::from_secs(300);
    // Short, so that leases derived from the longest call stay short too.
    config.moment_max_retry_after = Duration::from_secs(2);
    // Webhooks out: retried after 100 ms, then 200 ms, then given up.
    config.delivery_schedule = vec![Duration::from_millis(100), Duration::from_millis(200)];
    config
}

/// A response, read whole.
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Value,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Asserts an RFC 9457 problem of `status` and returns it.
    #[track_caller]
    pub fn problem(&self, status: u16) -> &Value {
        assert_eq!(self.status.as_u16(), status, "body: {}", self.body);
        assert_eq!(
            self.header("content-type"),
            Some("application/problem+json")
        );
        assert_eq!(self.body["status"], status);
        for member in ["type", "title", "detail"] {
            assert!(
                self.body[member].is_string(),
                "problem without {member}: {}",
                self.body
            );
        }
        &self.body
    }
}

static COUNTER: AtomicU64 = AtomicU64::new(1);

/// A fresh id with Moment's prefix.
pub fn moment_id(prefix: &str) -> String {
    format!("{prefix}_{:012}", COUNTER.fetch_add(1, Ordering::Relaxed))
}

pub fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// Answers `POST /collect/payment_sessions` as Moment does: a new session echoing the
/// request, with ids of Moment's form.
pub struct SessionResponder;

impl Respond for SessionResponder {
    fn respond(&self, req: &wiremock::Request) -> ResponseTemplate {
        let body: Value = serde_json::from_slice(&req.body).unwrap();
        let mut session = json!({
            "id": moment_id("ps"),
            "type": body["type"],
            "status": "active",
            "payment_status": "unpaid",
            "payment_outcome": "not_started",
            "amount": body["amount"],
            "currency": body["currency"],
            "external_reference": body["external_reference"],
            "created_at": "2026-11-24T10:00:00.000Z",
            "updated_at": "2026-11-24T10:00:00.000Z",
        });
        if body["type"] == "first_in_series" {
            session["customer_id"] = json!(moment_id("cus"));
            session["session_url"] = json!(format!(
                "https://checkout.momentpay.test/{}",
                moment_id("ckt")
            ));
        } else {
            session["customer_id"] = body["options"]["customer"].clone();
            session["payment_id"] = json!(moment_id("pay"));
            session["payment_outcome"] = json!("pending");
        }
        ResponseTemplate::new(201).set_body_json(session)
    }
}

impl TestApp {
    pub async fn new() -> Self {
        Self::with(|_| {}).await
    }

    pub async fn with(tweak: impl FnOnce(&mut Config)) -> Self {
        let test_db = TestDb::new().await;
        let db = test_db.pool.clone();
        let moment = MockServer::start().await;
        let mut config = test_config("postgres://unused", &moment.uri());
        tweak(&mut config);
        let state = AppState::new(&mut config, db.clone()).unwrap();
        let router = router(state.clone(), config.request_timeout);
        Self {
            _test_db: test_db,
            db,
            moment,
            state,
            router,
            secret: WebhookSecret::parse(WEBHOOK_SECRET).unwrap(),
        }
    }

    /// Moment creates sessions normally from now on.
    pub async fn moment_accepts_sessions(&self) {
        Mock::given(method("POST"))
            .and(path("/collect/payment_sessions"))
            .respond_with(SessionResponder)
            .mount(&self.moment)
            .await;
    }

    /// `GET /collect/payment_sessions/{id}` answers `session`.
    pub async fn moment_serves_session(&self, session: &Value) {
        let id = session["id"].as_str().unwrap();
        Mock::given(method("GET"))
            .and(path(format!("/collect/payment_sessions/{id}")))
            .respond_with(ResponseTemplate::new(200).set_body_json(session))
            .mount(&self.moment)
            .await;
    }

    /// Requests Moment received to create sessions of `kind`, in order.
    pub async fn session_requests(&self, kind: &str) -> Vec<(Value, String)> {
        self.moment
            .received_requests()
            .await
            .unwrap_or_default()
            .into_iter()
            .filter(|r| {
                r.method == wiremock::http::Method::POST
                    && r.url.path() == "/collect/payment_sessions"
            })
            .map(|r| {
                let key = r
                    .headers
                    .get("idempotency-key")
                    .map(|v| v.to_str().unwrap().to_owned())
                    .unwrap_or_default();
                (serde_json::from_slice::<Value>(&r.body).unwrap(), key)
            })
            .filter(|(b, _)| b["type"] == kind)
            .collect()
    }

    pub async fn send(&self, req: Request<Body>) -> Reply {
        let resp = self.router.clone().oneshot(req).await.unwrap();
        let status = resp.status();
        let headers = resp.headers().clone();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or(Value::String(String::from_utf8_lossy(&bytes).into()))
        };
        Reply {
            status,
            headers,
            body,
        }
    }

    /// The rows of `table` (`mandates`, `charges`) in `status` that `GET /metrics` reports,
    /// once the settled statuses have been counted; read from the service rather than from
    /// the rendered text, whose recorder is the process's and shared with the tests beside.
    pub async fn counted(&self, table: &str, status: &str) -> i64 {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let c = self.state.counts.counts(&self.db).await.unwrap();
            if c.settled_age.is_some() {
                return c
                    .rows
                    .iter()
                    .find(|(t, s, _)| t == table && s == status)
                    .map_or(0, |(_, _, n)| *n);
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the settled statuses were never counted"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `GET /metrics` on the metrics listener's router.
    pub async fn metrics(&self) -> Reply {
        let router = moment_mandates::app::metrics_router(self.state.clone());
        let resp = router
            .oneshot(Request::get("/metrics").body(Body::empty()).unwrap())
            .await
            .unwrap();
        let status = resp.status();
        let headers = resp.headers().clone();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        Reply {
            status,
            headers,
            body: Value::String(String::from_utf8_lossy(&bytes).into()),
        }
    }

    /// GET without credentials, as a browser or a load balancer would.
    pub async fn get_public(&self, uri: &str) -> Reply {
        self.send(Request::get(uri).body(Body::empty()).unwrap())
            .await
    }

    pub async fn get(&self, uri: &str) -> Reply {
        self.send(
            Request::get(uri)
                .header("authorization", format!("Bearer {API_KEY}"))
                .body(Body::empty())
                .unwrap(),
        )
        .await
    }

    /// POSTs JSON with the API key and any extra headers.
    pub async fn post(&self, uri: &str, body: &Value, headers: &[(&str, &str)]) -> Reply {
        let mut req = Request::post(uri)
            .header("content-type", "application/json")
            .header("authorization", format!("Bearer {API_KEY}"));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        self.send(req.body(Body::from(body.to_string())).unwrap())
            .await
    }

    /// PATCHes JSON with the API key.
    pub async fn patch_json(&self, uri: &str, body: &Value) -> Reply {
        self.send(
            Request::patch(uri)
                .header("content-type", "application/json")
                .header("authorization", format!("Bearer {API_KEY}"))
                .body(Body::from(body.to_string()))
                .unwrap(),
        )
        .await
    }

    /// DELETE with the API key.
    pub async fn delete(&self, uri: &str) -> Reply {
        self.send(
            Request::delete(uri)
                .header("authorization", format!("Bearer {API_KEY}"))
                .body(Body::empty())
                .unwrap(),
        )
        .await
    }

    /// Starts a mandate (Moment must accept sessions) and returns it as JSON.
    pub async fn create_mandate(&self, body: &Value) -> Value {
        let reply = self
            .post("/mandates", body, &[("accept", "application/json")])
            .await;
        assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.body);
        reply.body
    }

    /// A mandate that went through checkout: created, then completed by a signed webhook.
    pub async fn active_mandate(&self) -> Value {
        self.moment_accepts_sessions().await;
        let mandate = self.create_mandate(&mandate_body()).await;
        let completed = completed_first_in_series(&mandate);
        assert_eq!(
            self.post_webhook("payment_session.completed", &completed)
                .await
                .status,
            StatusCode::NO_CONTENT
        );
        let mandate = self
            .get(&format!("/mandates/{}", mandate["id"].as_str().unwrap()))
            .await
            .body;
        assert_eq!(mandate["status"], "active");
        mandate
    }

    /// Signs and posts an event of `kind` with `data`, under a fresh `webhook-id`.
    pub async fn post_webhook(&self, kind: &str, data: &Value) -> Reply {
        let id = moment_id("msg");
        self.post_event(&id, kind, data).await
    }

    /// Signs and posts an event under `webhook_id`, timestamped now.
    pub async fn post_event(&self, webhook_id: &str, kind: &str, data: &Value) -> Reply {
        let body =
            json!({ "id": format!("evt_{webhook_id}"), "type": kind, "data": data }).to_string();
        let ts = now_secs();
        let sig = self.secret.sign(webhook_id, ts, body.as_bytes());
        self.post_raw_webhook(
            &[
                ("webhook-id", webhook_id),
                ("webhook-timestamp", &ts.to_string()),
                ("webhook-signature", &sig),
            ],
            body,
        )
        .await
    }

    pub fn sign(&self, webhook_id: &str, ts: i64, body: &str) -> String {
        self.secret.sign(webhook_id, ts, body.as_bytes())
    }

    pub async fn post_raw_webhook(&self, headers: &[(&str, &str)], body: String) -> Reply {
        let mut req = Request::post("/webhooks/moment").header("content-type", "application/json");
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        self.send(req.body(Body::from(body)).unwrap()).await
    }

    pub async fn count(&self, table: &str) -> i64 {
        sqlx::query_scalar(&format!("select count(*) from {table}"))
            .fetch_one(&self.db)
            .await
            .unwrap()
    }

    /// Starts a charge on `mandate` under `key`.
    pub async fn charge(&self, mandate: &Value, key: &str) -> Reply {
        self.post(
            "/charges",
            &json!({ "mandate_id": mandate["id"] }),
            &[("idempotency-key", key)],
        )
        .await
    }
}

pub fn mandate_body() -> Value {
    json!({
        "amount": 5000,
        "currency": "ZAR",
        "customer": { "name": "Alex Example", "email": "alex@example.com" },
        "return_url": "https://shop.test/subscribed?plan=gold",
        "reference": "sub-42",
        "metadata": { "plan": "gold" }
    })
}

/// `data` of the `payment_session.completed` event that settles `mandate`'s checkout.
pub fn completed_first_in_series(mandate: &Value) -> Value {
    json!({
        "id": mandate["session_id"],
        "type": "first_in_series",
        "status": "completed",
        "payment_status": "paid",
        "payment_outcome": "paid",
        "amount": mandate["amount"],
        "currency": mandate["currency"],
        "customer_id": mandate["customer_id"],
        "payment_method_id": "pmt_izWG6Vcvy4VYiU",
        "payment_id": "pay_first",
        "external_reference": mandate["id"],
    })
}

/// `data` of the `payment_session.completed` event of a charge, paid or not.
pub fn completed_next_in_series(charge: &Value, paid: bool) -> Value {
    let mut data = json!({
        "id": charge["session_id"],
        "type": "next_in_series",
        "status": "completed",
        "payment_status": if paid { "paid" } else { "unpaid" },
        "payment_outcome": if paid { "paid" } else { "unpaid" },
        "amount": charge["amount"],
        "currency": charge["currency"],
        "payment_id": charge["payment_id"],
        "external_reference": charge["id"],
    });
    if !paid {
        data["last_payment_error"] = json!({"error_code": "card_declined", "decline_code": "insufficient_funds",
            "message": "The card was declined due to insufficient funds.", "timestamp": "2026-11-24T10:00:00Z"});
    }
    data
}

/// Mounts a Moment that answers `status` to session creation, at most `times` times
/// (for ever when `None`), ahead of anything mounted later.
pub async fn moment_fails(app: &TestApp, status: u16, times: Option<u64>) {
    let mut mock = Mock::given(method("POST")).and(path("/collect/payment_sessions")).respond_with(
        ResponseTemplate::new(status).set_body_json(json!({"type": "https://api.momentco.io/docs/errors#server-error", "title": "Server error", "status": status})),
    );
    if let Some(n) = times {
        mock = mock.up_to_n_times(n);
    }
    mock.with_priority(1).mount(&app.moment).await;
}

/// Mounts a Moment that refuses `next_in_series` with a 4xx problem.
pub async fn moment_refuses_charges(app: &TestApp, status: u16, detail: &str) {
    Mock::given(method("POST"))
        .and(path("/collect/payment_sessions"))
        .and(body_partial_json(json!({"type": "next_in_series"})))
        .respond_with(ResponseTemplate::new(status).set_body_json(json!({
            "type": "https://api.momentco.io/docs/errors#mandate-limit-exceeded",
            "title": "Unprocessable", "status": status, "detail": detail})))
        .with_priority(1)
        .mount(&app.moment)
        .await;
}

/// Mounts a Moment whose `GET` of any session hangs past our timeout.
pub async fn moment_get_hangs(app: &TestApp) {
    Mock::given(method("GET"))
        .and(path_regex("^/collect/payment_sessions/.+"))
        .respond_with(ResponseTemplate::new(200).set_delay(Duration::from_secs(5)))
        .with_priority(1)
        .mount(&app.moment)
        .await;
}

/// `SessionResponder`, answering after 300 ms (inside our 500 ms timeout).
pub struct SessionResponderSlow;

impl Respond for SessionResponderSlow {
    fn respond(&self, req: &wiremock::Request) -> ResponseTemplate {
        SessionResponder
            .respond(req)
            .set_delay(Duration::from_millis(300))
    }
}

/// Polls `check` every 50 ms until it holds; panics naming `what` after 15 s.
pub async fn eventually(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while !check().await {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
