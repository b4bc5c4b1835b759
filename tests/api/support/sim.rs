//! The Moment simulator for tests: one place that configures it with short delays, the
//! `SimTest` driver of its API (webhooks go to a wiremock receiver, which records them), and
//! reading a reqwest answer.

use std::time::{Duration, SystemTime};

use moment_mandates::moment::signature::{SignedHeaders, Verifier, WebhookSecret};
use moment_mandates::sim::{self, Faults, SimConfig, SimHandle};
use serde_json::{Value, json};
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::support::app::{Reply, WEBHOOK_SECRET};

pub const SIM_KEY: &str = "sk_test_simulator0000000001";

pub struct SimTest {
    pub handle: SimHandle,
    pub receiver: MockServer,
    pub http: reqwest::Client,
}

/// The simulator's settings for tests: `secret_key`, webhooks signed with `WEBHOOK_SECRET`
/// and sent to `webhook_url`, answered within 2 s.
pub fn config(secret_key: &str, webhook_url: Option<String>) -> SimConfig {
    let mut config = SimConfig::new(secret_key, WebhookSecret::parse(WEBHOOK_SECRET).unwrap());
    config.webhook_url = webhook_url;
    config.webhook_timeout = Duration::from_secs(2);
    config
}

/// Runs the simulator on port 0 until the test ends.
pub async fn spawn(config: SimConfig) -> SimHandle {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    sim::spawn(config, listener, std::future::pending()).unwrap()
}

/// A simulator on port 0 sending webhooks to a fresh receiver at `/hook`, with short delays.
pub async fn start_sim(tweak: impl FnOnce(&mut SimConfig)) -> SimTest {
    let receiver = MockServer::start().await;
    // Accepts every webhook unless a test mounts something more urgent.
    Mock::given(method("POST"))
        .and(path("/hook"))
        .respond_with(ResponseTemplate::new(204))
        .with_priority(10)
        .mount(&receiver)
        .await;
    let mut config = config(SIM_KEY, Some(format!("{}/hook", receiver.uri())));
    config.settle_delay = Duration::from_millis(100);
    config.webhook_retry_schedule = vec![Duration::from_millis(50), Duration::from_millis(100)];
    tweak(&mut config);
    let handle = spawn(config).await;
    SimTest {
        handle,
        receiver,
        http: reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap(),
    }
}

pub async fn read(resp: reqwest::Response) -> Reply {
    let status = resp.status();
    let headers = resp.headers().clone();
    let bytes = resp.bytes().await.unwrap();
    let body = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
    Reply {
        status,
        headers,
        body,
    }
}

pub fn first_in_series() -> Value {
    json!({
        "type": "first_in_series", "amount": 5000, "currency": "ZAR",
        "options": {"customer": {"name": "Thandi", "email": "thandi@example.com"},
                    "checkout_options": {"return_url": "https://shop.test/back"}},
        "external_reference": "sub_1", "metadata": {"plan": "gold"}
    })
}

impl SimTest {
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.handle.url)
    }

    pub async fn create(&self, body: &Value, key: Option<&str>) -> Reply {
        let mut req = self
            .http
            .post(self.url("/collect/payment_sessions"))
            .bearer_auth(SIM_KEY)
            .json(body);
        if let Some(k) = key {
            req = req.header("idempotency-key", k);
        }
        read(req.send().await.unwrap()).await
    }

    pub async fn get(&self, path: &str) -> Reply {
        let req = self.http.get(self.url(path)).bearer_auth(SIM_KEY);
        read(req.send().await.unwrap()).await
    }

    pub async fn admin(&self, path: &str, body: &Value) -> Reply {
        read(
            self.http
                .post(self.url(path))
                .json(body)
                .send()
                .await
                .unwrap(),
        )
        .await
    }

    pub async fn form(&self, path: &str, form: &[(&str, &str)]) -> reqwest::Response {
        self.http
            .post(self.url(path))
            .form(form)
            .send()
            .await
            .unwrap()
    }

    /// A `first_in_series` paid with `card`: the session afterwards.
    pub async fn mandate(&self, card: &str) -> Value {
        let created = self.create(&first_in_series(), None).await;
        assert_eq!(created.status, 201, "{}", created.body);
        let id = created.body["id"].as_str().unwrap();
        let done = self
            .admin(
                &format!("/_sim/sessions/{id}/complete"),
                &json!({"card": card}),
            )
            .await;
        assert_eq!(done.status, 200, "{}", done.body);
        done.body
    }

    pub fn charge_body(session: &Value, amount: i64) -> Value {
        json!({"type": "next_in_series", "amount": amount, "currency": "ZAR",
               "options": {"customer": session["customer_id"], "payment_method": session["payment_method_id"]},
               "external_reference": "chg_1"})
    }

    /// The webhooks the receiver got: (webhook-id, timestamp, body), each verified.
    pub async fn received(&self) -> Vec<(String, i64, Value)> {
        let verifier = Verifier::new(
            vec![WebhookSecret::parse(WEBHOOK_SECRET).unwrap()],
            Duration::from_secs(180),
        );
        self.receiver
            .received_requests()
            .await
            .unwrap_or_default()
            .into_iter()
            .map(|r| {
                let h = |n: &str| r.headers.get(n).and_then(|v| v.to_str().ok());
                let headers = SignedHeaders {
                    id: h("webhook-id"),
                    timestamp: h("webhook-timestamp"),
                    signature: h("webhook-signature"),
                };
                let id = verifier
                    .verify(headers, &r.body, SystemTime::now())
                    .expect("every webhook verifies")
                    .to_owned();
                let ts = h("webhook-timestamp").unwrap().parse().unwrap();
                (id, ts, serde_json::from_slice(&r.body).unwrap())
            })
            .collect()
    }

    pub async fn sessions(&self) -> Vec<Value> {
        let r = read(
            self.http
                .get(self.url("/_sim/sessions"))
                .send()
                .await
                .unwrap(),
        )
        .await;
        r.body["data"].as_array().unwrap().clone()
    }
}

/// A simulator on port 0 sending webhooks to `webhook_url`, with `faults` and short delays
/// and retries, as the fault tests use it.
pub async fn spawn_sim(webhook_url: Option<String>, faults: Faults) -> SimHandle {
    let mut config = config("sk_test_secret", webhook_url);
    config.settle_delay = Duration::from_millis(200);
    config.webhook_retry_schedule = [200, 500, 1000, 2000, 4000]
        .into_iter()
        .map(Duration::from_millis)
        .collect();
    config.faults = faults;
    spawn(config).await
}
