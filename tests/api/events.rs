//! The event log and webhooks out: exactly one event per change, a cursor that never skips
//! one, and deliveries to a real HTTP receiver over a socket (wiremock), signed, retried,
//! redelivered and recovered.

use std::collections::HashSet;
use std::time::{Duration, SystemTime};

use serde_json::{Value, json};
use uuid::Uuid;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

use moment_mandates::moment::signature::{SignedHeaders, Verifier, WebhookSecret};
use moment_mandates::state::AppState;
use moment_mandates::worker;
use moment_mandates::workflow::outbound;

use crate::support::app::{TestApp, completed_next_in_series, test_config};

/// Every event, oldest first, following the cursor to the end.
async fn all_events(app: &TestApp, query: &str) -> Vec<Value> {
    let mut out = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let mut uri = format!("/events?limit=100{query}");
        if let Some(a) = &after {
            uri.push_str(&format!("&after={a}"));
        }
        let page = app.get(&uri).await;
        assert_eq!(page.status, 200, "{}", page.body);
        let data = page.body["data"].as_array().unwrap().clone();
        if data.is_empty() {
            return out;
        }
        after = page.body["next_cursor"].as_str().map(str::to_owned);
        out.extend(data);
    }
}

/// `all_events` once it holds `n` events: an event is visible once every transaction older
/// than it, on the whole Postgres server (other tests' included), has ended.
async fn events_once(app: &TestApp, query: &str, n: usize) -> Vec<Value> {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let events = all_events(app, query).await;
        if events.len() >= n || std::time::Instant::now() > deadline {
            return events;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Runs the worker until the receiver has `n` requests (or 10 s have passed).
async fn until_received(state: &AppState, hook: &MockServer, n: usize) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while hook.received_requests().await.unwrap().len() < n && std::time::Instant::now() < deadline
    {
        worker::run_once(state).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn types(events: &[Value]) -> Vec<&str> {
    events.iter().map(|e| e["type"].as_str().unwrap()).collect()
}

/// Drops the timestamps' formatting from a resource, to compare it with an event's `data`,
/// and what `GET` computes when asked (a mandate's `ledger` and `warnings`).
fn without_times(mut v: Value) -> Value {
    if let Some(o) = v.as_object_mut() {
        o.remove("ledger");
        o.remove("warnings");
    }
    for field in ["created_at", "updated_at"] {
        let t = v[field].as_str().map(|s| {
            time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
                .unwrap()
                .unix_timestamp_nanos()
                / 1000
        });
        v[field] = json!(t);
    }
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_change_writes_one_event_and_a_duplicate_webhook_writes_none() {
    let app = TestApp::new().await;
    let mandate = app.active_mandate().await;
    let charge = app.charge(&mandate, "evt-1").await.body;
    // A retry under the same key records nothing, and so writes no event.
    assert_eq!(
        app.charge(&mandate, "evt-1")
            .await
            .header("idempotent-replayed"),
        Some("true")
    );
    let paid = completed_next_in_series(&charge, true);
    for _ in 0..2 {
        app.post_event("msg_same", "payment_session.completed", &paid)
            .await;
    }
    app.post_webhook("payment_session.completed", &paid).await;
    let mut older = paid.clone();
    older["status"] = json!("active");
    app.post_webhook("payment_session.updated", &older).await;

    let events = events_once(&app, "", 5).await;
    assert_eq!(
        types(&events),
        [
            "mandate.created",
            "mandate.active",
            "charge.created",
            "charge.processing",
            "charge.succeeded"
        ]
    );
    let seq: Vec<i64> = events
        .iter()
        .map(|e| e["sequence"].as_i64().unwrap())
        .collect();
    assert_eq!(seq, [1, 2, 1, 2, 3]);
    // `data` is the resource as the API shows it at that change.
    let id = charge["id"].as_str().unwrap();
    let shown = app.get(&format!("/charges/{id}")).await.body;
    assert_eq!(
        without_times(events[4]["data"].clone()),
        without_times(shown)
    );
    let m = app
        .get(&format!("/mandates/{}", mandate["id"].as_str().unwrap()))
        .await
        .body;
    assert_eq!(without_times(events[1]["data"].clone()), without_times(m));
    // Filters.
    let of_charge = events_once(&app, &format!("&resource_id={id}"), 3).await;
    assert_eq!(of_charge.len(), 3);
    assert_eq!(events_once(&app, "&type=mandate.active", 1).await.len(), 1);
    app.get("/events?type=nonsense").await.problem(400);
    // A cursor that names no event (past retention, say) is refused, not an empty page.
    app.get(&format!("/events?after={}", Uuid::new_v4()))
        .await
        .problem(404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tailing_reader_sees_every_event_once_while_transactions_commit_out_of_order() {
    let app = TestApp::new().await;
    let db = app.db.clone();
    let writers = tokio::spawn(async move {
        let mut tasks = Vec::new();
        for i in 0..40u64 {
            let db = db.clone();
            tasks.push(tokio::spawn(async move {
                let mut tx = db.begin().await.unwrap();
                sqlx::query(
                    "insert into mandate (id, amount, currency, customer_name, customer_email, request_hash)
                     values ($1, 100, 'ZAR', 'n', 'e@x.test', 'h')",
                )
                .bind(Uuid::now_v7())
                .execute(&mut *tx)
                .await
                .unwrap();
                // Early writers commit late: commits come out of the order of the writes.
                tokio::time::sleep(Duration::from_millis(400 - (i % 8) * 50)).await;
                tx.commit().await.unwrap();
            }));
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        for t in tasks {
            t.await.unwrap();
        }
    });
    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    // Pages until all 40 are seen (an event shows once every older transaction on the server
    // has ended, other tests' included), then three empty pages in a row.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let mut idle_rounds = 0;
    while seen.len() < 40 || idle_rounds < 3 {
        assert!(
            std::time::Instant::now() < deadline,
            "the tailing reader saw {} of 40 events",
            seen.len()
        );
        let mut uri = "/events?limit=7".to_owned();
        if let Some(a) = &after {
            uri.push_str(&format!("&after={a}"));
        }
        let page = app.get(&uri).await.body;
        let data = page["data"].as_array().unwrap();
        if data.is_empty() {
            if seen.len() >= 40 {
                idle_rounds += 1;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        }
        idle_rounds = 0;
        seen.extend(data.iter().map(|e| e["id"].as_str().unwrap().to_owned()));
        after = page["next_cursor"].as_str().map(str::to_owned);
    }
    writers.await.unwrap();
    let unique: HashSet<&String> = seen.iter().collect();
    assert_eq!(unique.len(), seen.len(), "an event was read twice");
    assert_eq!(seen.len(), 40, "the tailing reader missed events");
}

/// A receiver at `/hook` answering `status`, and an endpoint for it (all event types).
async fn endpoint(app: &TestApp, receiver: &MockServer) -> Value {
    endpoint_at(app, &receiver.uri()).await
}

/// An endpoint at `{base}/hook`, for all event types.
async fn endpoint_at(app: &TestApp, base: &str) -> Value {
    let created = app
        .post(
            "/webhook-endpoints",
            &json!({"url": format!("{base}/hook")}),
            &[],
        )
        .await;
    assert_eq!(created.status, 201, "{}", created.body);
    assert!(
        created.body["secret"]
            .as_str()
            .unwrap()
            .starts_with("whsec_")
    );
    created.body
}

async fn receiver(status: u16) -> MockServer {
    let receiver = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/hook"))
        .respond_with(ResponseTemplate::new(status))
        .mount(&receiver)
        .await;
    receiver
}

/// Runs the worker until nothing more is due (short schedules in the tests).
async fn run_worker(state: &AppState, rounds: usize) {
    for _ in 0..rounds {
        worker::run_once(state).await.unwrap();
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliveries_are_signed_with_standard_webhooks_and_carry_the_event_id() {
    let app = TestApp::new().await;
    let hook = receiver(204).await;
    let ep = endpoint(&app, &hook).await;
    assert_eq!(
        app.get(&format!(
            "/webhook-endpoints/{}",
            ep["id"].as_str().unwrap()
        ))
        .await
        .body
        .get("secret"),
        None,
        "the secret is shown only once"
    );
    let mandate = app.active_mandate().await;
    until_received(&app.state, &hook, 2).await;
    let requests = hook.received_requests().await.unwrap();
    assert_eq!(requests.len(), 2, "mandate.created and mandate.active");
    let secret = WebhookSecret::parse(ep["secret"].as_str().unwrap()).unwrap();
    let verifier = Verifier::new(vec![secret], Duration::from_secs(180));
    for r in &requests {
        let h = |n: &str| r.headers.get(n).and_then(|v| v.to_str().ok());
        let id = verifier
            .verify(
                SignedHeaders {
                    id: h("webhook-id"),
                    timestamp: h("webhook-timestamp"),
                    signature: h("webhook-signature"),
                },
                &r.body,
                SystemTime::now(),
            )
            .expect("our own verifier accepts the delivery");
        let body: Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(body["id"], id);
        assert_eq!(body["data"]["id"], mandate["id"]);
        assert_eq!(
            app.get(&format!("/events/{id}")).await.body["type"],
            body["type"]
        );
    }
}

#[test]
fn the_signature_of_a_delivery_matches_the_published_test_vector() {
    // Standard Webhooks vector A.
    let signature = outbound::signature(
        &["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"],
        "msg_p5jXN8AQM9LWM0D4loKWxJek",
        1614265330,
        br#"{"test": 2432232314}"#,
    );
    assert_eq!(signature, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_delivery_is_retried_with_the_same_id_and_every_attempt_is_logged() {
    let app = TestApp::new().await;
    let hook = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/hook"))
        .respond_with(ResponseTemplate::new(500))
        .up_to_n_times(1)
        .with_priority(1)
        .mount(&hook)
        .await;
    Mock::given(method("POST"))
        .and(path("/hook"))
        .respond_with(ResponseTemplate::new(200))
        .mount(&hook)
        .await;
    let ep = endpoint(&app, &hook).await;
    app.patch_json(
        &format!("/webhook-endpoints/{}", ep["id"].as_str().unwrap()),
        &json!({"event_types": ["mandate.created"]}),
    )
    .await;
    app.moment_accepts_sessions().await;
    app.create_mandate(&crate::support::app::mandate_body())
        .await;
    until_received(&app.state, &hook, 2).await;
    let requests = hook.received_requests().await.unwrap();
    assert_eq!(requests.len(), 2);
    let ids: Vec<_> = requests
        .iter()
        .map(|r| r.headers.get("webhook-id").cloned())
        .collect();
    assert_eq!(ids[0], ids[1], "webhook-id changed between attempts");
    let event_id = ids[0].as_ref().unwrap().to_str().unwrap();
    let attempts = app
        .get(&format!("/events/{event_id}/deliveries"))
        .await
        .body;
    let codes: Vec<_> = attempts
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["status_code"].clone())
        .collect();
    assert_eq!(codes, [json!(500), json!(200)]);
    assert_eq!(attempts[1]["delivery_status"], "delivered");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_410_and_five_failing_days_are_honoured() {
    // Retry-After: the next attempt waits for it.
    let app = TestApp::new().await;
    let hook = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/hook"))
        .respond_with(ResponseTemplate::new(503).insert_header("Retry-After", "120"))
        .mount(&hook)
        .await;
    endpoint(&app, &hook).await;
    app.moment_accepts_sessions().await;
    app.create_mandate(&crate::support::app::mandate_body())
        .await;
    until_received(&app.state, &hook, 1).await;
    run_worker(&app.state, 1).await;
    assert_eq!(hook.received_requests().await.unwrap().len(), 1);
    let wait: f64 = sqlx::query_scalar(
        "select extract(epoch from next_attempt_at - now())::float8 from delivery",
    )
    .fetch_one(&app.db)
    .await
    .unwrap();
    assert!(wait > 110.0, "retried after {wait} s");

    // 410 Gone disables the endpoint, with an event saying so.
    let app = TestApp::new().await;
    let hook = receiver(410).await;
    let ep = endpoint(&app, &hook).await;
    app.moment_accepts_sessions().await;
    app.create_mandate(&crate::support::app::mandate_body())
        .await;
    until_received(&app.state, &hook, 1).await;
    run_worker(&app.state, 1).await;
    let shown = app
        .get(&format!(
            "/webhook-endpoints/{}",
            ep["id"].as_str().unwrap()
        ))
        .await
        .body;
    assert_eq!(shown["enabled"], false);
    assert_eq!(shown["disabled_reason"], "gone");
    assert_eq!(
        all_events(&app, "&type=webhook_endpoint.disabled")
            .await
            .len(),
        1
    );
    assert_eq!(hook.received_requests().await.unwrap().len(), 1);

    // Failing for five days disables it too.
    let app = TestApp::new().await;
    let hook = receiver(500).await;
    let ep = endpoint(&app, &hook).await;
    sqlx::query("update webhook_endpoint set failing_since = now() - interval '5 days 1 minute'")
        .execute(&app.db)
        .await
        .unwrap();
    app.moment_accepts_sessions().await;
    app.create_mandate(&crate::support::app::mandate_body())
        .await;
    until_received(&app.state, &hook, 1).await;
    let shown = app
        .get(&format!(
            "/webhook-endpoints/{}",
            ep["id"].as_str().unwrap()
        ))
        .await
        .body;
    assert_eq!(shown["disabled_reason"], "failing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_down_then_up_gets_everything_and_recover_and_redeliver_resend() {
    let app = TestApp::new().await;
    // Down: nothing listens on the endpoint's port.
    let spare = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = spare.local_addr().unwrap().port();
    drop(spare);
    let created = app
        .post(
            "/webhook-endpoints",
            &json!({"url": format!("http://127.0.0.1:{port}/hook")}),
            &[],
        )
        .await;
    let ep_id = created.body["id"].as_str().unwrap().to_owned();
    let before = time::OffsetDateTime::now_utc() - time::Duration::minutes(1);
    let mandate = app.active_mandate().await;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        worker::run_once(&app.state).await.unwrap();
        let given_up: i64 =
            sqlx::query_scalar("select count(*) from delivery where status = 'failed'")
                .fetch_one(&app.db)
                .await
                .unwrap();
        if given_up == 2 || std::time::Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let failed: i64 = sqlx::query_scalar("select count(*) from delivery where status = 'failed'")
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(failed, 2, "both events given up after the schedule");
    let attempts: i64 = sqlx::query_scalar("select count(*) from delivery_attempt")
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(attempts, 6, "the first attempt and two retries each");

    // Up again, on the same port.
    let listener = std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
    let hook = MockServer::builder().listener(listener).start().await;
    Mock::given(method("POST"))
        .and(path("/hook"))
        .respond_with(ResponseTemplate::new(204))
        .mount(&hook)
        .await;
    let since = before
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    let recovered = app
        .post(
            &format!("/webhook-endpoints/{ep_id}/recover"),
            &json!({"since": since}),
            &[],
        )
        .await;
    assert_eq!(recovered.status, 202, "{}", recovered.body);
    assert_eq!(recovered.body["deliveries"], 2);
    until_received(&app.state, &hook, 2).await;
    let mut got: Vec<Value> = hook
        .received_requests()
        .await
        .unwrap()
        .iter()
        .map(|r| serde_json::from_slice(&r.body).unwrap())
        .collect();
    // Sent concurrently, so in any order: `sequence` orders them for the receiver.
    got.sort_by_key(|e| e["sequence"].as_i64());
    assert_eq!(types(&got), ["mandate.created", "mandate.active"]);
    assert_eq!(got[1]["data"]["id"], mandate["id"]);

    // Redeliver sends an event again, delivered or not.
    let event_id = got[1]["id"].as_str().unwrap();
    let again = app
        .post(&format!("/events/{event_id}/redeliver"), &json!({}), &[])
        .await;
    assert_eq!(again.status, 202);
    until_received(&app.state, &hook, 3).await;
    assert_eq!(hook.received_requests().await.unwrap().len(), 3);
    app.post(
        &format!("/events/{}/redeliver", Uuid::new_v4()),
        &json!({}),
        &[],
    )
    .await
    .problem(404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_replicas_sending_at_once_deliver_each_event_once() {
    let app = TestApp::new().await;
    let hook = receiver(204).await;
    endpoint(&app, &hook).await;
    app.moment_accepts_sessions().await;
    for _ in 0..20 {
        app.create_mandate(&crate::support::app::mandate_body())
            .await;
    }
    // Four replicas on the same database, each fanning out and sending at once.
    let replicas: Vec<AppState> = (0..4)
        .map(|_| {
            let mut config = test_config("postgres://unused", &app.moment.uri());
            AppState::new(&mut config, app.db.clone()).unwrap()
        })
        .collect();
    // Wait until all 20 are visible, so that the replicas race for them.
    events_once(&app, "&type=mandate.created", 20).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let runs = replicas.iter().map(|r| outbound::run(r, deadline));
    for sent in futures::future::join_all(runs).await {
        sent.unwrap();
    }
    until_received(&app.state, &hook, 20).await;
    run_worker(&app.state, 1).await;
    let ids: Vec<String> = hook
        .received_requests()
        .await
        .unwrap()
        .iter()
        .map(|r| {
            r.headers
                .get("webhook-id")
                .unwrap()
                .to_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    let unique: HashSet<&String> = ids.iter().collect();
    assert_eq!(ids.len(), 20, "one delivery per event");
    assert_eq!(unique.len(), 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_secret_signs_beside_the_new_one_and_endpoints_are_managed_through_the_api() {
    let app = TestApp::new().await;
    let hook = receiver(204).await;
    let ep = endpoint(&app, &hook).await;
    let id = ep["id"].as_str().unwrap();
    let rotated = app
        .post(
            &format!("/webhook-endpoints/{id}/rotate-secret"),
            &json!({}),
            &[],
        )
        .await;
    assert_eq!(rotated.status, 200);
    let new_secret = rotated.body["secret"].as_str().unwrap();
    assert_ne!(new_secret, ep["secret"].as_str().unwrap());
    app.moment_accepts_sessions().await;
    app.create_mandate(&crate::support::app::mandate_body())
        .await;
    until_received(&app.state, &hook, 1).await;
    let r = &hook.received_requests().await.unwrap()[0];
    let header = |n: &str| r.headers.get(n).and_then(|v| v.to_str().ok());
    assert_eq!(header("webhook-signature").unwrap().split(' ').count(), 2);
    for secret in [new_secret, ep["secret"].as_str().unwrap()] {
        let verifier = Verifier::new(
            vec![WebhookSecret::parse(secret).unwrap()],
            Duration::from_secs(180),
        );
        let signed = SignedHeaders {
            id: header("webhook-id"),
            timestamp: header("webhook-timestamp"),
            signature: header("webhook-signature"),
        };
        assert!(verifier.verify(signed, &r.body, SystemTime::now()).is_ok());
    }
    // Update, list, bad input, delete.
    let patched = app
        .patch_json(
            &format!("/webhook-endpoints/{id}"),
            &json!({"enabled": false}),
        )
        .await;
    assert_eq!(patched.body["enabled"], false);
    app.patch_json(
        &format!("/webhook-endpoints/{id}"),
        &json!({"event_types": ["nope"]}),
    )
    .await
    .problem(422);
    app.post("/webhook-endpoints", &json!({"url": "ftp://x"}), &[])
        .await
        .problem(422);
    assert_eq!(
        app.get("/webhook-endpoints")
            .await
            .body
            .as_array()
            .unwrap()
            .len(),
        1
    );
    let deleted = app.delete(&format!("/webhook-endpoints/{id}")).await;
    assert_eq!(deleted.status, 204);
    app.get(&format!("/webhook-endpoints/{id}"))
        .await
        .problem(404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_endpoint_holds_back_only_its_own_deliveries() {
    let app = TestApp::new().await;
    // The slow endpoint takes its deliveries and answers none until released.
    let slow = crate::support::held::HeldEndpoint::start().await;
    endpoint_at(&app, &slow.url).await;
    let quick = receiver(204).await;
    endpoint(&app, &quick).await;
    app.moment_accepts_sessions().await;
    for _ in 0..10 {
        app.create_mandate(&crate::support::app::mandate_body())
            .await;
    }
    events_once(&app, "&type=mandate.created", 10).await;
    let state = app.state.clone();
    let run = tokio::spawn(async move { worker::run_once(&state).await.unwrap() });
    let started = std::time::Instant::now();
    while quick.received_requests().await.unwrap().len() < 10 {
        // (Under the 15 s a delivery may take: the slow endpoint's would end then.)
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the quick endpoint waited for the slow one"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // All ten at the quick endpoint while the slow one still sits on its first eight (a lane
    // sends eight at once).
    assert!(!run.is_finished());
    crate::support::app::eventually("eight deliveries held at the slow endpoint", async || {
        slow.received() == 8
    })
    .await;
    slow.release();
    run.await.unwrap();
    assert_eq!(slow.received(), 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_live_key_an_endpoint_inside_the_services_network_is_refused() {
    let app = TestApp::with(|c| c.moment_secret_key = "sk_live_0123456789".into()).await;
    for url in [
        "http://127.0.0.1:9464/metrics",
        "http://10.0.0.5/hook",
        "http://169.254.169.254/latest",
        "http://localhost:8080/hook",
    ] {
        app.post("/webhook-endpoints", &json!({"url": url}), &[])
            .await
            .problem(422);
    }
    let ok = app
        .post(
            "/webhook-endpoints",
            &json!({"url": "https://shop.example.com/hooks"}),
            &[],
        )
        .await;
    assert_eq!(ok.status, 201);
    // A disabled endpoint is enabled before it recovers anything.
    let id = ok.body["id"].as_str().unwrap();
    app.patch_json(
        &format!("/webhook-endpoints/{id}"),
        &json!({"enabled": false}),
    )
    .await;
    app.post(
        &format!("/webhook-endpoints/{id}/recover"),
        &json!({"since": "2026-01-01T00:00:00Z"}),
        &[],
    )
    .await
    .problem(409);
}
