//! What an operator sees: metrics, request ids sent on to Moment, logs free of secrets and
//! personal data, and a clean, bounded shutdown.

use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use moment_mandates::telemetry::LogFormat;
use serde_json::json;
use tracing_subscriber::EnvFilter;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::support::app::{
    API_KEY, SessionResponder, TestApp, WEBHOOK_SECRET, completed_first_in_series, eventually,
    mandate_body,
};
use crate::support::db::TestDb;
use crate::support::process::{serve_with, shut_down};
use crate::support::stack::start_stack;

/// The value of the sample of `name` carrying every label in `labels`.
fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
        .find(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_requests_webhooks_moment_calls_and_records() {
    let app = TestApp::new().await;
    app.moment_accepts_sessions().await;
    let mandate = app.create_mandate(&mandate_body()).await;
    let done = app
        .post_webhook(
            "payment_session.completed",
            &completed_first_in_series(&mandate),
        )
        .await;
    assert_eq!(done.status, 204);
    let forged = app
        .post_raw_webhook(
            &[
                ("webhook-id", "msg_forged"),
                (
                    "webhook-timestamp",
                    &crate::support::app::now_secs().to_string(),
                ),
                (
                    "webhook-signature",
                    "v1,AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
                ),
            ],
            "{}".into(),
        )
        .await;
    assert_eq!(forged.status, 401);

    // Not on the API's listener: /metrics is served on its own.
    assert_eq!(app.get_public("/metrics").await.status, 404);
    let resp = app.metrics().await;
    assert_eq!(resp.status, 200);
    assert!(
        resp.header("content-type")
            .unwrap()
            .starts_with("text/plain")
    );
    let text = resp.body.as_str().expect("Prometheus text").to_owned();
    let has = |name: &str, labels: &[(&str, &str)]| {
        sample(&text, name, labels).unwrap_or_else(|| panic!("no {name} {labels:?} in\n{text}"))
    };
    assert!(
        has(
            "http_requests_total",
            &[("method", "POST"), ("route", "/mandates")]
        ) >= 1.0
    );
    assert!(
        has(
            "http_request_duration_seconds_count",
            &[("route", "/webhooks/moment"), ("status", "204")]
        ) >= 1.0
    );
    assert!(
        has(
            "webhooks_total",
            &[
                ("event_type", "payment_session.completed"),
                ("outcome", "applied")
            ]
        ) >= 1.0
    );
    assert!(
        has(
            "webhooks_total",
            &[("outcome", "rejected"), ("reason", "signature")]
        ) >= 1.0
    );
    assert!(
        has(
            "moment_requests_total",
            &[("operation", "create_session"), ("status", "201")]
        ) >= 1.0
    );
    assert!(
        has(
            "moment_request_duration_seconds_bucket",
            &[("operation", "create_session")]
        ) >= 0.0
    );
    assert!(has("mandates", &[("status", "pending")]) >= 0.0);
    assert!(has("charges", &[("status", "needs_review")]) >= 0.0);
    assert_eq!(app.counted("mandates", "active").await, 1);
    assert_eq!(app.counted("charges", "succeeded").await, 0);
    assert!(has("db_pool_connections", &[("state", "in_use")]) >= 0.0);
    assert!(has("db_pool_max_connections", &[]) >= 1.0);
    assert!(has("db_pool_waiting", &[]) >= 0.0);
}

/// The entries read from `table` and its indexes in this transaction so far: rows read by
/// sequential scans, and index entries read (an index-only scan reads no row).
async fn entries_read(tx: &mut sqlx::PgConnection, table: &str) -> i64 {
    sqlx::query_scalar(
        "select sum(pg_stat_get_xact_tuples_returned(c.oid))::bigint from pg_class c
         where c.oid = $1::regclass
            or c.oid in (select indexrelid from pg_index where indrelid = $1::regclass)",
    )
    .bind(table)
    .fetch_one(&mut *tx)
    .await
    .unwrap()
}

/// A scrape counts the mandates and charges under way now, reading only their index entries,
/// and the settled ones at most once per `METRICS_RECOUNT_SECS`, in a task of its own: the
/// cost of a scrape does not grow with the tables, however often it comes. (The figures are
/// read from the service's counts rather than from the text: the recorder is the process's,
/// and the tests beside this one scrape their own databases into it.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scrape_reads_the_rows_under_way_and_counts_the_settled_ones_once_a_recount() {
    let app = TestApp::with(|c| c.metrics_recount = Duration::from_secs(3600)).await;
    app.active_mandate().await;
    let mandate: uuid::Uuid = sqlx::query_scalar("select id from mandate")
        .fetch_one(&app.db)
        .await
        .unwrap();
    // Months of billing: 20,000 settled charges, and 3 under way.
    sqlx::query(
        "insert into charge (id, mandate_id, status, amount, currency, customer_id,
                             payment_method_id, idempotency_key, request_hash)
         select gen_random_uuid(), $1,
                case when g <= 3 then (array['pending', 'processing', 'needs_review'])[g]
                     when g % 10 = 0 then 'failed' else 'succeeded' end,
                500, 'ZAR', 'cus_1', 'pmt_1', 'key_' || g, 'h'
         from generate_series(1, 20003) g",
    )
    .bind(mandate)
    .execute(&app.db)
    .await
    .unwrap();
    // Analyzed, as autovacuum would have.
    sqlx::query("analyze charge, mandate")
        .execute(&app.db)
        .await
        .unwrap();
    let rows = |c: &moment_mandates::store::counts::Counts, table: &str, status: &str| {
        c.rows
            .iter()
            .find(|(t, s, _)| t == table && s == status)
            .map_or(0, |(_, _, n)| *n)
    };
    // The first scrape begins the first count; on a busy machine it may end after the scrape.
    let text = app.metrics().await.body.as_str().unwrap().to_owned();
    assert!(sample(&text, "charges", &[("status", "pending")]).is_some());
    assert_eq!(app.counted("charges", "failed").await, 2_000);
    let first = app.state.counts.counts(&app.db).await.unwrap();
    for (status, n) in [
        ("pending", 1),
        ("processing", 1),
        ("needs_review", 1),
        ("succeeded", 18_000),
        ("failed", 2_000),
    ] {
        assert_eq!(rows(&first, "charges", status), n, "{status}");
    }
    assert_eq!(rows(&first, "mandates", "active"), 1);

    // One charge under way settles: the next scrape sees it leave `processing` now, and
    // reports the settled count taken less than METRICS_RECOUNT_SECS ago.
    sqlx::query("update charge set status = 'succeeded' where status = 'processing'")
        .execute(&app.db)
        .await
        .unwrap();
    let second = app.state.counts.counts(&app.db).await.unwrap();
    assert_eq!(rows(&second, "charges", "processing"), 0);
    assert_eq!(rows(&second, "charges", "succeeded"), 18_000);
    assert!(second.settled_age.unwrap() < Duration::from_secs(3600));

    // What such a scrape counts reads the index entries of the rows under way only.
    let mut tx = app.db.begin().await.unwrap();
    let before = entries_read(&mut tx, "charge").await;
    moment_mandates::store::counts::open(&mut tx).await.unwrap();
    let read = entries_read(&mut tx, "charge").await - before;
    tx.rollback().await.unwrap();
    assert!(read <= 10, "a scrape read {read} entries of charge");

    // With a recount every 300 ms, scrapes every 50 ms see the settled charge within a
    // recount or two (the interval counts from the last count, not from the last scrape).
    let short = std::sync::Arc::new(moment_mandates::store::counts::Recount::new(
        Duration::from_millis(300),
    ));
    let began = Instant::now();
    while rows(
        &short.counts(&app.db).await.unwrap(),
        "charges",
        "succeeded",
    ) != 18_001
    {
        assert!(began.elapsed() < Duration::from_secs(30), "never counted");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    sqlx::query("update charge set status = 'succeeded' where status = 'pending'")
        .execute(&app.db)
        .await
        .unwrap();
    let began = Instant::now();
    loop {
        let c = short.counts(&app.db).await.unwrap();
        assert_eq!(rows(&c, "charges", "pending"), 0);
        if rows(&c, "charges", "succeeded") == 18_002 {
            break;
        }
        assert!(
            began.elapsed() < Duration::from_secs(30),
            "the settled count was never taken again"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // A scrape that gives up (at Prometheus's timeout, say) does not stop the count it began:
    // the count ends, and the next scrape has it. The charges are locked while the scrape
    // runs, so that neither it nor its count can end before the scrape is cut.
    let given_up = std::sync::Arc::new(moment_mandates::store::counts::Recount::new(
        Duration::from_secs(3600),
    ));
    let mut lock = app.db.begin().await.unwrap();
    sqlx::query("lock table charge in access exclusive mode")
        .execute(&mut *lock)
        .await
        .unwrap();
    let cut = tokio::time::timeout(Duration::from_millis(200), given_up.counts(&app.db)).await;
    assert!(cut.is_err(), "the scrape was to be cut short");
    assert!(given_up.settled_age().is_none(), "counted through the lock");
    lock.rollback().await.unwrap();
    let began = Instant::now();
    while given_up.settled_age().is_none() {
        assert!(
            began.elapsed() < Duration::from_secs(30),
            "the count ended with the scrape"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_request_id_is_returned_and_sent_on_to_moment() {
    let app = TestApp::new().await;
    app.moment_accepts_sessions().await;
    let r = app
        .post(
            "/mandates",
            &mandate_body(),
            &[
                ("x-request-id", "req-ops-0001"),
                ("accept", "application/json"),
            ],
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(r.header("x-request-id"), Some("req-ops-0001"));
    let sent = app.moment.received_requests().await.unwrap();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].headers["x-request-id"], "req-ops-0001");

    // An unusable id (too long) is replaced by a fresh one, which Moment sees too.
    let long = "x".repeat(200);
    let mut body = mandate_body();
    body["amount"] = json!(7000);
    let r = app
        .post("/mandates", &body, &[("x-request-id", &long)])
        .await;
    let given = r.header("x-request-id").unwrap().to_owned();
    assert_ne!(given, long);
    assert_eq!(given.len(), 36, "a UUID");
    let sent = app.moment.received_requests().await.unwrap();
    assert_eq!(sent[1].headers["x-request-id"], given.as_str());
}

/// Every log line of this test binary, in the production JSON format.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn captured_logs() -> Captured {
    static LOGS: OnceLock<Captured> = OnceLock::new();
    LOGS.get_or_init(|| {
        let logs = Captured::default();
        let writer = logs.clone();
        moment_mandates::telemetry::init_with(
            LogFormat::Json,
            EnvFilter::new("info,moment_mandates=debug,tower_http=debug"),
            move || writer.clone(),
        );
        logs
    })
    .clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_or_personal_data_reaches_the_logs() {
    let logs = captured_logs();
    let stack = start_stack(|_| {}).await;
    let tag = uuid::Uuid::new_v4().simple().to_string();
    let name = format!("Nomvula Privatename{tag}");
    let email = format!("nomvula.{tag}@example.com");
    let r = stack
        .post(
            "/mandates",
            &json!({"amount": 5000, "currency": "ZAR", "customer": {"name": name, "email": email}}),
            "m-logs",
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let id = r.body["id"].as_str().unwrap().to_owned();
    stack.pay(&r.body, "4242424242424242");
    stack
        .wait_status(&format!("/mandates/{id}"), "active")
        .await;
    let charge = stack
        .post("/charges", &json!({"mandate_id": id}), "c-logs")
        .await;
    let charge_id = charge.body["id"].as_str().unwrap().to_owned();
    stack
        .wait_status(&format!("/charges/{charge_id}"), "succeeded")
        .await;
    // A caller with a wrong key, and a forged webhook.
    let wrong_key = format!("wrong-key-{tag}");
    let refused = reqwest::Client::new()
        .get(format!("{}/mandates/{id}", stack.dev.service_url))
        .bearer_auth(&wrong_key)
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 401);
    stack.dev.sim.stats();

    let text = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    let secret_b64 = stack.dev.webhook_secret.trim_start_matches("whsec_");
    for (what, needle) in [
        ("customer name", name.as_str()),
        ("customer e-mail", email.as_str()),
        ("API key", stack.dev.api_key.as_str()),
        ("wrong API key", wrong_key.as_str()),
        ("Moment secret key", stack.dev.moment_secret_key.as_str()),
        ("webhook secret", secret_b64),
    ] {
        assert!(!text.contains(needle), "the {what} appears in the logs");
    }
    // The logs are there and useful: one JSON line per request with route, status, latency
    // and request id.
    let request_lines: Vec<serde_json::Value> = text
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .filter(|l: &serde_json::Value| {
            l["message"] == "finished processing request" && l["span"]["route"] == "/charges"
        })
        .collect();
    let line = request_lines
        .first()
        .expect("a request line for POST /charges");
    assert!(line["status"].is_number(), "{line}");
    assert!(line["latency"].is_string(), "{line}");
    assert!(
        line["span"]["request_id"]
            .as_str()
            .is_some_and(|r| !r.is_empty()),
        "{line}"
    );
    // A webhook's line also says which message it was and what became of it.
    let webhook = text
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|l| {
            l["message"] == "finished processing request"
                && l["span"]["route"] == "/webhooks/moment"
                && l["status"] == 204
        })
        .expect("a request line for a webhook");
    let span = &webhook["span"];
    assert!(
        span["webhook_id"]
            .as_str()
            .is_some_and(|w| w.starts_with("msg_")),
        "{webhook}"
    );
    assert!(
        span["event_type"]
            .as_str()
            .is_some_and(|t| t.starts_with("payment")),
        "{webhook}"
    );
    assert!(
        ["applied", "ignored", "deferred", "duplicate"]
            .contains(&span["outcome"].as_str().unwrap_or("")),
        "{webhook}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_lets_in_flight_requests_finish_and_returns() {
    let test_db = TestDb::new().await;
    let moment = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/collect/payment_sessions"))
        .respond_with(SessionResponder)
        .mount(&moment)
        .await;
    // Slow Moment: the request is in flight when the signal comes.
    moment.reset().await;
    Mock::given(method("POST"))
        .and(path("/collect/payment_sessions"))
        .respond_with(
            ResponseTemplate::new(201)
                .set_delay(Duration::from_secs(2))
                .set_body_json(
                    json!({"id": "ps_slow", "type": "first_in_series", "status": "active",
                   "payment_outcome": "not_started", "customer_id": "cus_1",
                   "session_url": "https://checkout.test/ckt1"}),
                ),
        )
        .mount(&moment)
        .await;
    // Time enough for Moment's answer on a busy machine: a call timed out would not be 201.
    let (base, stop, handle) = serve_with(&test_db.url, &moment.uri(), |c| {
        c.moment_timeout = Duration::from_secs(10)
    })
    .await;
    let http = reqwest::Client::new();
    let in_flight = tokio::spawn({
        let http = http.clone();
        let base = base.clone();
        async move {
            http.post(format!("{base}/mandates"))
                .bearer_auth(API_KEY)
                .header("accept", "application/json")
                .json(&mandate_body())
                .send()
                .await
                .unwrap()
                .status()
        }
    });
    // The signal comes while Moment holds the request.
    eventually("the request at Moment", async || {
        moment.received_requests().await.unwrap().len() == 1
    })
    .await;
    assert!(!in_flight.is_finished());
    let started = Instant::now();
    shut_down(stop, handle).await;
    assert_eq!(
        in_flight.await.unwrap(),
        201,
        "the in-flight request finished"
    );
    assert!(started.elapsed() < Duration::from_secs(8));
    assert!(
        http.get(format!("{base}/healthz")).send().await.is_err(),
        "no new connections after shutdown"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_logs_json_and_stops_on_sigterm() {
    let test_db = TestDb::new().await;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new(env!("CARGO_BIN_EXE_moment-mandates"))
        .arg("serve")
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("DATABASE_URL", &test_db.url)
        .env("LISTEN_ADDR", format!("127.0.0.1:{port}"))
        .env("MOMENT_API_URL", "http://127.0.0.1:9")
        .env("MOMENT_SECRET_KEY", "sk_test_sigterm")
        .env("MOMENT_WEBHOOK_SECRETS", WEBHOOK_SECRET)
        .env("API_KEYS", "sigterm-key-0123456789abcdef")
        .env("METRICS_LISTEN_ADDR", "127.0.0.1:0")
        .env("SHUTDOWN_TIMEOUT_SECS", "5")
        .current_dir(std::env::temp_dir())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    eventually("the binary to be ready", async || {
        reqwest::get(format!("{base}/readyz"))
            .await
            .is_ok_and(|r| r.status() == 200)
    })
    .await;
    let started = Instant::now();
    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "exit: {:?}", out.status);
    assert!(started.elapsed() < Duration::from_secs(10));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<serde_json::Value> = stderr
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|_| panic!("not a JSON line: {l}")))
        .collect();
    assert!(lines.iter().any(|l| l["message"] == "shutting down"));
    assert!(lines.iter().any(|l| l["message"] == "stopped"));
}
