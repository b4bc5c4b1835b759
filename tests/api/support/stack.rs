//! The whole stack as `moment-mandates dev` runs it (service, simulator, demo shop) on port 0
//! and a fresh database, for the tests that need real sockets and real signed webhooks.

use std::sync::Arc;
use std::time::Duration;

use moment_mandates::dev::{self, Dev, DevOptions};
use moment_mandates::sim::Sim;
use serde_json::{Value, json};
use sqlx::PgPool;

use crate::support::app::{Reply, eventually};
use crate::support::db::TestDb;
use crate::support::sim::read;

pub struct Stack {
    pub dev: Dev,
    pub db: PgPool,
    pub http: reqwest::Client,
    pub test_db: TestDb,
}

/// Service, simulator and demo shop on port 0, on a fresh database, with short delays.
pub async fn start_stack(tweak: impl FnOnce(&mut DevOptions)) -> Stack {
    let test_db = TestDb::new().await;
    let mut opts = DevOptions::new(&test_db.url);
    let any_port: std::net::SocketAddr = "127.0.0.1:0".parse().unwrap();
    opts.listen = any_port;
    opts.sim_listen = any_port;
    opts.demo_listen = any_port;
    opts.settle_delay = Duration::from_millis(100);
    opts.webhook_retry_schedule = [100, 200, 500, 1000, 2000, 4000]
        .into_iter()
        .map(Duration::from_millis)
        .collect();
    opts.moment_timeout = Duration::from_millis(500);
    opts.worker_interval = Duration::from_millis(200);
    tweak(&mut opts);
    let dev = dev::start(opts).await.expect("dev stack starts");
    Stack {
        dev,
        db: test_db.pool.clone(),
        http: reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap(),
        test_db,
    }
}

impl Stack {
    pub fn sim(&self) -> &Arc<Sim> {
        &self.dev.sim
    }

    pub async fn post(&self, path: &str, body: &Value, key: &str) -> Reply {
        let resp = self
            .http
            .post(format!("{}{path}", self.dev.service_url))
            .bearer_auth(&self.dev.api_key)
            .header("accept", "application/json")
            .header("idempotency-key", key)
            .json(body)
            .send()
            .await
            .unwrap();
        read(resp).await
    }

    pub async fn patch(&self, path: &str, body: &Value) -> Reply {
        let resp = self
            .http
            .patch(format!("{}{path}", self.dev.service_url))
            .bearer_auth(&self.dev.api_key)
            .json(body)
            .send()
            .await
            .unwrap();
        read(resp).await
    }

    pub async fn get(&self, path: &str) -> Reply {
        let resp = self
            .http
            .get(format!("{}{path}", self.dev.service_url))
            .bearer_auth(&self.dev.api_key)
            .send()
            .await
            .unwrap();
        read(resp).await
    }

    /// `POST /mandates`: the mandate, `pending` with its checkout.
    pub async fn start_mandate(&self, key: &str) -> Value {
        let r = self
            .post(
                "/mandates",
                &json!({"amount": 5000, "currency": "ZAR",
                        "customer": {"name": "Thandi Example", "email": "thandi@example.com"}}),
                key,
            )
            .await;
        assert_eq!(r.status, 201, "{}", r.body);
        r.body
    }

    /// Pays the mandate's checkout with `card` at the simulator, as the customer would.
    pub fn pay(&self, mandate: &Value, card: &str) -> Value {
        self.sim()
            .pay(mandate["session_id"].as_str().unwrap(), card)
            .expect("checkout settles")
    }

    pub async fn wait_status(&self, path: &str, status: &str) -> Value {
        eventually(&format!("{path} to be {status}"), async || {
            self.get(path).await.body["status"] == status
        })
        .await;
        self.get(path).await.body
    }

    /// An active mandate, paid with `card`.
    pub async fn active_mandate(&self, key: &str, card: &str) -> Value {
        let m = self.start_mandate(key).await;
        self.pay(&m, card);
        self.wait_status(
            &format!("/mandates/{}", m["id"].as_str().unwrap()),
            "active",
        )
        .await
    }

    /// Waits until the simulator has no delivery left to attempt.
    pub async fn webhooks_settled(&self) {
        eventually("webhook deliveries to finish", async || {
            self.sim().stats().webhooks_pending == 0
        })
        .await;
    }

    /// Moment sessions of type `kind` per external reference.
    pub fn sessions_by_reference(&self, kind: &str) -> std::collections::HashMap<String, usize> {
        let mut out = std::collections::HashMap::new();
        for s in self.sim().sessions() {
            if s["type"] == kind {
                *out.entry(s["external_reference"].as_str().unwrap_or("").to_owned())
                    .or_default() += 1;
            }
        }
        out
    }
}
