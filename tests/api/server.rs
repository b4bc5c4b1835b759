//! The service as a process and on a real socket: settings, health, and cancelled requests.

use std::process::Command;
use std::time::Duration;

use axum::http::StatusCode;
use serde_json::json;

use crate::support::app::{TestApp, WEBHOOK_SECRET, mandate_body, now_secs};
use crate::support::db::TestDb;
use crate::support::process::{BIN, serve, shut_down};
use moment_mandates::moment::signature::WebhookSecret;

/// The webhook secret shipped in `.env.example` and `docker-compose.yml`.
const EXAMPLE_SECRET: &str = "whsec_bG9jYWwtZGV2ZWxvcG1lbnQtb25seS1yZXBsYWNlLW1l";

#[test]
fn a_missing_or_malformed_setting_stops_the_process_with_one_line_naming_it() {
    let cases: &[(&[(&str, &str)], &str)] = &[
        (
            &[
                ("MOMENT_WEBHOOK_SECRETS", WEBHOOK_SECRET),
                ("API_KEYS", "k"),
            ],
            "MOMENT_SECRET_KEY",
        ),
        (
            &[("MOMENT_SECRET_KEY", "sk_test_hush"), ("API_KEYS", "k")],
            "MOMENT_WEBHOOK_SECRETS",
        ),
        (
            &[
                ("MOMENT_SECRET_KEY", "sk_test_hush"),
                ("MOMENT_WEBHOOK_SECRETS", "whsec_%%%"),
                ("API_KEYS", "k"),
            ],
            "MOMENT_WEBHOOK_SECRETS",
        ),
        (
            &[
                ("MOMENT_SECRET_KEY", "sk_test_hush"),
                ("MOMENT_WEBHOOK_SECRETS", WEBHOOK_SECRET),
            ],
            "API_KEYS",
        ),
        (
            &[
                ("MOMENT_SECRET_KEY", "sk_test_hush"),
                ("MOMENT_WEBHOOK_SECRETS", WEBHOOK_SECRET),
                ("API_KEYS", "k"),
                ("LISTEN_ADDR", "everywhere"),
            ],
            "LISTEN_ADDR",
        ),
        (
            &[
                ("MOMENT_SECRET_KEY", "sk_live_hush"),
                ("MOMENT_WEBHOOK_SECRETS", EXAMPLE_SECRET),
                ("API_KEYS", "a-long-enough-key-0123456789"),
            ],
            "MOMENT_WEBHOOK_SECRETS",
        ),
        (
            &[
                ("MOMENT_SECRET_KEY", "sk_test_hush"),
                ("MOMENT_WEBHOOK_SECRETS", WEBHOOK_SECRET),
                ("API_KEYS", "a-long-enough-key-0123456789"),
                ("LISTEN_ADDR", "0.0.0.0:8080"),
            ],
            "PUBLIC_URL",
        ),
    ];
    for (env, var) in cases {
        let out = Command::new(BIN)
            .arg("serve")
            .env_clear()
            .envs(env.iter().copied())
            .current_dir(std::env::temp_dir())
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{var}");
        let stderr = String::from_utf8(out.stderr).unwrap();
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(stderr.contains(var), "{stderr}");
        assert!(
            !stderr.contains("_hush")
                && !stderr.contains(WEBHOOK_SECRET)
                && !stderr.contains(EXAMPLE_SECRET),
            "{stderr}"
        );
    }
}

#[test]
fn help_shows_no_secret_values() {
    let out = Command::new(BIN)
        .args(["serve", "--help"])
        .env("MOMENT_SECRET_KEY", "sk_test_hush")
        .env("API_KEYS", "api-hush")
        .env("MOMENT_WEBHOOK_SECRETS", WEBHOOK_SECRET)
        .env("DATABASE_URL", "postgres://user:pw-hush@db/x")
        .output()
        .unwrap();
    let help = String::from_utf8(out.stdout).unwrap();
    assert!(help.contains("MOMENT_SECRET_KEY"));
    for secret in ["sk_test_hush", "api-hush", WEBHOOK_SECRET, "pw-hush"] {
        assert!(!help.contains(secret), "{secret} shown in --help");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_readiness() {
    let app = TestApp::new().await;
    let health = app.get_public("/healthz").await;
    assert_eq!(health.status, StatusCode::OK);
    let ready = app.get_public("/readyz").await;
    assert_eq!(ready.status, StatusCode::OK);
    let unknown = app.get_public("/nowhere").await;
    unknown.problem(404);
    let wrong_method = app
        .send(
            axum::http::Request::delete("/healthz")
                .body(axum::body::Body::empty())
                .unwrap(),
        )
        .await;
    wrong_method.problem(405);

    app.db.close().await;
    let down = app.get_public("/readyz").await;
    down.problem(503);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_service_runs_on_a_socket_and_stops_cleanly() {
    let test_db = TestDb::new().await;
    let moment = wiremock::MockServer::start().await;
    wiremock::Mock::given(wiremock::matchers::method("POST"))
        .respond_with(crate::support::app::SessionResponder)
        .mount(&moment)
        .await;
    let (base, stop, handle) = serve(&test_db.url, &moment.uri()).await;
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();

    let ready = http.get(format!("{base}/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 200);
    let resp = http
        .post(format!("{base}/mandates"))
        .bearer_auth(crate::support::app::API_KEY)
        .json(&mandate_body())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 303);
    assert!(
        resp.headers().get("x-request-id").is_some(),
        "a request id is generated and returned"
    );
    let resp = http
        .get(format!("{base}/healthz"))
        .header("x-request-id", "req-123")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["x-request-id"], "req-123");

    shut_down(stop, handle).await;
}

/// Clients that hang up mid-request must not make later acknowledged writes vanish. This is the
/// end-to-end contract; the webhook path opens no transaction, so the trap itself is provoked
/// and shown closed in `faults::database_work_inside_detached_survives_its_caller_hanging_up`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acknowledged_webhook_is_stored_even_when_other_clients_hang_up() {
    let test_db = TestDb::new().await;
    let db = test_db.pool.clone();
    let moment = wiremock::MockServer::start().await;
    let (base, stop, handle) = serve(&test_db.url, &moment.uri()).await;
    let secret = WebhookSecret::parse(WEBHOOK_SECRET).unwrap();
    let patient = reqwest::Client::new();
    let post = |timeout: Option<Duration>, id: String| {
        let body =
            json!({"id": format!("evt_{id}"), "type": "payment.succeeded", "data": {"id": id}})
                .to_string();
        let ts = now_secs();
        let sig = secret.sign(&id, ts, body.as_bytes());
        let url = format!("{base}/webhooks/moment");
        let client = patient.clone();
        async move {
            let mut req = client
                .post(url)
                .header("webhook-id", &id)
                .header("webhook-timestamp", ts.to_string());
            req = req.header("webhook-signature", sig).body(body);
            if let Some(t) = timeout {
                req = req.timeout(t);
            }
            (id, req.send().await.map(|r| r.status().as_u16()).ok())
        }
    };

    // Half the clients hang up after 0.5 to 15 ms: some before the request is read, some while
    // its transaction is being opened or committed, some after it was answered.
    let (mut acknowledged, mut hung_up) = (Vec::new(), 0);
    for round in 0..30u64 {
        let mut batch = Vec::new();
        for i in 0..24u64 {
            let timeout = (i % 2 == 0)
                .then(|| Duration::from_micros(500 + fastrand_like(round * 24 + i) % 14_500));
            batch.push(tokio::spawn(post(timeout, format!("msg_{round}_{i}"))));
            // Redeliveries of earlier events take the duplicate path, which rolls back.
            if round > 0 && i % 4 == 1 {
                batch.push(tokio::spawn(post(None, format!("msg_{}_{i}", round - 1))));
            }
        }
        for task in batch {
            match task.await.unwrap() {
                (id, Some(204)) => acknowledged.push(id),
                (_, None) => hung_up += 1,
                (id, Some(other)) => panic!("{id}: unexpected {other}"),
            }
        }
    }
    assert!(hung_up > 0, "no client hung up: the test proves nothing");
    acknowledged.sort();
    acknowledged.dedup();
    assert!(
        acknowledged.len() >= 360,
        "the patient half is always answered: {}",
        acknowledged.len()
    );

    let stored: Vec<String> = sqlx::query_scalar("select webhook_id from webhook_event")
        .fetch_all(&db)
        .await
        .unwrap();
    let missing: Vec<_> = acknowledged
        .iter()
        .filter(|id| !stored.contains(id))
        .collect();
    assert!(
        missing.is_empty(),
        "acknowledged but not stored: {missing:?}"
    );
    shut_down(stop, handle).await;
}

/// A cheap deterministic spread of numbers (no RNG needed for timeouts).
fn fastrand_like(n: u64) -> u64 {
    n.wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407)
        >> 33
}
