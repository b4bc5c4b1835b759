//! The simulator's own API, checked against what `moment-api.md` says of Moment: auth,
//! validation, idempotency, the checkout, `next_in_series`, webhooks and faults. Webhooks go
//! to a wiremock receiver, which records them.

use std::time::Duration;

use serde_json::json;
use wiremock::matchers::{method, path};
use wiremock::{Mock, ResponseTemplate};

use crate::support::app::eventually;
use crate::support::sim::{SIM_KEY, SimTest, first_in_series, read, start_sim};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_without_the_secret_key_are_refused() {
    let sim = start_sim(|_| {}).await;
    let http = reqwest::Client::new();
    let none = read(
        http.post(sim.url("/collect/payment_sessions"))
            .json(&first_in_series())
            .send()
            .await
            .unwrap(),
    )
    .await;
    none.problem(401);
    let wrong = read(
        http.get(sim.url("/collect/payment_sessions/ps_x"))
            .bearer_auth("sk_test_wrong")
            .send()
            .await
            .unwrap(),
    )
    .await;
    wrong.problem(401);
    assert!(sim.sessions().await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_in_series_session_has_moments_shape() {
    let sim = start_sim(|_| {}).await;
    let r = sim.create(&first_in_series(), Some("k-1")).await;
    assert_eq!(r.status, 201, "{}", r.body);
    let s = &r.body;
    assert!(s["id"].as_str().unwrap().starts_with("ps_"));
    assert!(s["customer_id"].as_str().unwrap().starts_with("cus_"));
    assert_eq!(s["type"], "first_in_series");
    assert_eq!(s["status"], "active");
    assert_eq!(s["payment_status"], "unpaid");
    assert_eq!(s["payment_outcome"], "not_started");
    assert_eq!(s["mode"], "test");
    assert_eq!(s["return_url"], "https://shop.test/back");
    assert_eq!(s["external_reference"], "sub_1");
    assert_eq!(s["metadata"], json!({"plan": "gold"}));
    assert!(s["payment_method_id"].is_null());
    let url = s["session_url"].as_str().unwrap();
    assert!(url.starts_with(&format!("{}/checkout/ckt", sim.handle.url)));
    let created = s["created_at"].as_str().unwrap();
    assert!(
        time::OffsetDateTime::parse(created, &time::format_description::well_known::Rfc3339)
            .is_ok()
    );

    let id = s["id"].as_str().unwrap();
    let got = sim.get(&format!("/collect/payment_sessions/{id}")).await;
    assert_eq!(got.status, 200);
    assert_eq!(got.body, r.body);
    let missing = sim.get("/collect/payment_sessions/ps_nothing").await;
    let p = missing.problem(404);
    assert_eq!(p["instance"], "/collect/payment_sessions/ps_nothing");
    assert!(p["type"].as_str().unwrap().ends_with("#not-found"));

    // payment_session.created went out, signed.
    eventually("created webhook", async || {
        sim.received()
            .await
            .iter()
            .any(|(_, _, e)| e["type"] == "payment_session.created" && e["data"]["id"] == id)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_requests_get_400_and_create_nothing() {
    let sim = start_sim(|_| {}).await;
    let cases = [
        json!({"type": "first_in_series", "amount": 50.5, "currency": "ZAR"}),
        json!({"type": "first_in_series", "amount": -1, "currency": "ZAR"}),
        json!({"type": "first_in_series", "amount": 100, "currency": "EUR"}),
        json!({"type": "first_in_series", "amount": 100}),
        json!({"type": "first_in_series", "amount": 100, "currency": "ZAR", "external_reference": "has space"}),
        json!({"type": "first_in_series", "amount": 100, "currency": "ZAR", "metadata": {"k": 5}}),
        json!({"type": "next_in_series", "amount": 100, "currency": "ZAR"}),
        json!({"type": "next_in_series", "amount": 0, "currency": "ZAR", "options": {"customer": "c", "payment_method": "p"}}),
        json!({"type": "recurring", "amount": 100, "currency": "ZAR"}),
        json!("not an object"),
    ];
    for body in &cases {
        let r = sim.create(body, None).await;
        let p = r.problem(400);
        assert!(p["type"].as_str().unwrap().ends_with("#invalid-request"));
        assert_eq!(p["instance"], "/collect/payment_sessions");
    }
    let broken = read(
        reqwest::Client::new()
            .post(sim.url("/collect/payment_sessions"))
            .bearer_auth(SIM_KEY)
            .header("content-type", "application/json")
            .body("{\"amount\": ")
            .send()
            .await
            .unwrap(),
    )
    .await;
    broken.problem(400);
    assert!(sim.sessions().await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_keys_replay_refuse_and_conflict() {
    let sim = start_sim(|c| c.faults.latency_ms = 300).await;
    let first = sim.create(&first_in_series(), Some("key-a")).await;
    assert_eq!(first.status, 201);
    assert_eq!(first.header("idempotent-replayed"), None);
    let again = sim.create(&first_in_series(), Some("key-a")).await;
    assert_eq!(again.status, 201);
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
    assert_eq!(again.body, first.body);

    let mut other = first_in_series();
    other["amount"] = json!(6000);
    let mismatch = sim.create(&other, Some("key-a")).await;
    mismatch.problem(422);

    // Two at once under a new key: one creates, the other is told it is in flight (the
    // first is held long enough for the second to come while it waits, on a busy machine too).
    let latency = |ms: u64| {
        sim.http
            .patch(sim.url("/_sim/faults"))
            .json(&json!({"latency_ms": ms}))
            .send()
    };
    assert_eq!(latency(3000).await.unwrap().status(), 200);
    let body = first_in_series();
    let (a, b) = tokio::join!(
        sim.create(&body, Some("key-b")),
        sim.create(&body, Some("key-b"))
    );
    let mut statuses = [a.status.as_u16(), b.status.as_u16()];
    statuses.sort();
    assert_eq!(statuses, [201, 409]);
    assert_eq!(latency(300).await.unwrap().status(), 200);

    // A refusal is stored under its key too.
    let bad = json!({"type": "first_in_series", "amount": 1, "currency": "EUR"});
    sim.create(&bad, Some("key-c")).await.problem(400);
    let replayed = sim.create(&bad, Some("key-c")).await;
    replayed.problem(400);
    assert_eq!(replayed.header("idempotent-replayed"), Some("true"));

    assert_eq!(sim.sessions().await.len(), 2);
}

/// The latency fault holds each answer until that long after its request arrived, and the
/// stats count the answers that waited it out and how far past it they came (the benchmark
/// reports it as the simulator's own delay), and the calls, and the most at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_wait_out_the_latency_and_the_stats_count_them() {
    let sim = start_sim(|c| c.faults.latency_ms = 300).await;
    let started = std::time::Instant::now();
    let first = sim.create(&first_in_series(), Some("late-a")).await;
    assert_eq!(first.status, 201);
    assert!(started.elapsed() >= Duration::from_millis(300));
    let id = first.body["id"].as_str().unwrap();
    let started = std::time::Instant::now();
    let read = sim.get(&format!("/collect/payment_sessions/{id}")).await;
    assert_eq!(read.status, 200);
    assert!(started.elapsed() >= Duration::from_millis(300));
    // A replay answers at once: it waited for nothing and is not counted.
    let again = sim.create(&first_in_series(), Some("late-a")).await;
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
    let stats = sim.get("/_sim/stats").await.body;
    assert_eq!(stats["latency_answers"], 2, "{stats}");
    // Three calls, one at a time.
    assert_eq!(stats["calls"], 3, "{stats}");
    assert_eq!(stats["calls_in_flight_max"], 1, "{stats}");
    let overrun = stats["latency_overrun_micros"].as_u64().unwrap();
    assert!(
        overrun < 2 * 300_000,
        "{overrun} µs past the latency for two answers"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_checkout_page_settles_declines_and_cancels() {
    let sim = start_sim(|_| {}).await;
    let s = sim.create(&first_in_series(), None).await.body;
    let url = s["session_url"].as_str().unwrap();
    let checkout = url.rsplit('/').next().unwrap();
    let page = reqwest::get(url).await.unwrap().text().await.unwrap();
    assert!(page.contains("name=\"card_number\""), "{page}");
    assert!(page.contains("R 50.00"));

    // A declined card: the page says why, the session stays active.
    let declined = sim
        .form(
            &format!("/checkout/{checkout}"),
            &[
                ("card_number", "4000 0000 0000 9995"),
                ("expiry", "12/34"),
                ("cvc", "123"),
            ],
        )
        .await;
    assert_eq!(declined.status(), 402);
    assert!(
        declined
            .text()
            .await
            .unwrap()
            .contains("insufficient funds")
    );
    let id = s["id"].as_str().unwrap();
    let after = sim
        .get(&format!("/collect/payment_sessions/{id}"))
        .await
        .body;
    assert_eq!(after["status"], "active");
    assert_eq!(
        after["last_payment_error"]["decline_code"],
        "insufficient_funds"
    );

    // A bad expiry is refused before any attempt.
    let expired_card = sim
        .form(
            &format!("/checkout/{checkout}"),
            &[
                ("card_number", "4242424242424242"),
                ("expiry", "01/20"),
                ("cvc", "123"),
            ],
        )
        .await;
    assert_eq!(expired_card.status(), 422);

    // Then 4242 pays: back to the return_url.
    let paid = sim
        .form(
            &format!("/checkout/{checkout}"),
            &[
                ("card_number", "4242 4242 4242 4242"),
                ("expiry", "12/34"),
                ("cvc", "123"),
            ],
        )
        .await;
    assert_eq!(paid.status(), 303);
    assert_eq!(paid.headers()["location"], "https://shop.test/back");
    let done = sim
        .get(&format!("/collect/payment_sessions/{id}"))
        .await
        .body;
    assert_eq!(done["status"], "completed");
    assert_eq!(done["payment_outcome"], "paid");
    assert_eq!(done["payment_status"], "paid");
    assert!(
        done["payment_method_id"]
            .as_str()
            .unwrap()
            .starts_with("pmt_")
    );
    assert!(done["payment_id"].as_str().unwrap().starts_with("pay_"));
    assert!(done["last_payment_error"].is_null());

    // A second checkout is cancelled from its page.
    let s2 = sim.create(&first_in_series(), None).await.body;
    let checkout2 = s2["checkout_session_id"].as_str().unwrap();
    let cancelled = sim
        .form(&format!("/checkout/{checkout2}/cancel"), &[])
        .await;
    assert_eq!(cancelled.status(), 303);
    let id2 = s2["id"].as_str().unwrap();
    let c = sim
        .get(&format!("/collect/payment_sessions/{id2}"))
        .await
        .body;
    assert_eq!(
        (c["status"].as_str(), c["payment_outcome"].as_str()),
        (Some("cancelled"), Some("unpaid"))
    );

    // The completion went out as payment.succeeded, .updated and .completed with both ids.
    eventually("completion webhooks", async || {
        let types: Vec<_> = sim
            .received()
            .await
            .iter()
            .map(|(_, _, e)| e["type"].as_str().unwrap().to_owned())
            .collect();
        [
            "payment.attempt_failed",
            "payment.succeeded",
            "payment_session.updated",
            "payment_session.completed",
        ]
        .iter()
        .all(|t| types.iter().any(|x| x == t))
    })
    .await;
    let completed = sim
        .received()
        .await
        .into_iter()
        .find(|(_, _, e)| e["type"] == "payment_session.completed" && e["data"]["id"] == id)
        .unwrap();
    assert_eq!(
        completed.2["data"]["payment_method_id"],
        done["payment_method_id"]
    );
    assert!(completed.2["id"].as_str().unwrap().starts_with("evt_"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unfinished_checkouts_expire() {
    let sim = start_sim(|c| c.session_expiry = Duration::from_millis(200)).await;
    let s = sim.create(&first_in_series(), None).await.body;
    let id = s["id"].as_str().unwrap().to_owned();
    eventually("expiry", async || {
        sim.get(&format!("/collect/payment_sessions/{id}"))
            .await
            .body["status"]
            == "expired"
    })
    .await;
    let late = sim
        .admin(
            &format!("/_sim/sessions/{id}/complete"),
            &json!({"card": "4242424242424242"}),
        )
        .await;
    late.problem(409);
    eventually("expiry webhook", async || {
        sim.received().await.iter().any(|(_, _, e)| {
            e["type"] == "payment_session.updated" && e["data"]["status"] == "expired"
        })
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn next_in_series_charges_a_saved_method_within_the_mandate() {
    let sim = start_sim(|_| {}).await;
    let mandate = sim.mandate("4242424242424242").await;

    let r = sim
        .create(&SimTest::charge_body(&mandate, 5000), Some("c-1"))
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(r.body["type"], "next_in_series");
    assert_eq!(r.body["status"], "active");
    assert_eq!(r.body["payment_status"], "pending");
    assert!(r.body["payment_id"].as_str().unwrap().starts_with("pay_"));
    assert!(r.body.get("session_url").is_none());
    let id = r.body["id"].as_str().unwrap().to_owned();
    eventually("settled", async || {
        sim.get(&format!("/collect/payment_sessions/{id}"))
            .await
            .body["status"]
            == "completed"
    })
    .await;
    let settled = sim
        .get(&format!("/collect/payment_sessions/{id}"))
        .await
        .body;
    assert_eq!(settled["payment_outcome"], "paid");
    let payment = sim
        .get(&format!(
            "/collect/payments/{}",
            settled["payment_id"].as_str().unwrap()
        ))
        .await;
    assert_eq!(payment.body["status"], "succeeded");
    assert_eq!(payment.body["paid_amount"], 5000);

    // Above the first payment's amount (the default consent ceiling): refused.
    sim.create(&SimTest::charge_body(&mandate, 5001), None)
        .await
        .problem(422);
    // Another customer's method: refused.
    let mut stranger = SimTest::charge_body(&mandate, 100);
    stranger["options"]["customer"] = json!("cus_someoneelse");
    sim.create(&stranger, None).await.problem(422);

    // A card that sets up fine but declines later charges.
    let risky = sim.mandate("4000000000000341").await;
    assert_eq!(risky["status"], "completed");
    let r = sim.create(&SimTest::charge_body(&risky, 1000), None).await;
    assert_eq!(r.status, 201);
    let id = r.body["id"].as_str().unwrap().to_owned();
    eventually("declined", async || {
        sim.get(&format!("/collect/payment_sessions/{id}"))
            .await
            .body["status"]
            == "completed"
    })
    .await;
    let declined = sim
        .get(&format!("/collect/payment_sessions/{id}"))
        .await
        .body;
    assert_eq!(declined["payment_outcome"], "unpaid");
    assert_eq!(
        declined["last_payment_error"]["error_code"],
        "card_declined"
    );
    eventually("completion webhook with the outcome", async || {
        sim.received().await.iter().any(|(_, _, e)| {
            e["type"] == "payment_session.completed"
                && e["data"]["id"] == id
                && e["data"]["payment_outcome"] == "unpaid"
        })
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_are_retried_with_the_same_id_and_fresh_signatures() {
    let sim = start_sim(|c| {
        c.webhook_retry_schedule = vec![Duration::from_millis(600), Duration::from_millis(600)];
    })
    .await;
    Mock::given(method("POST"))
        .and(path("/hook"))
        .respond_with(ResponseTemplate::new(500))
        .up_to_n_times(2)
        .with_priority(1)
        .mount(&sim.receiver)
        .await;
    sim.create(&first_in_series(), None).await;
    eventually("three attempts", async || sim.received().await.len() >= 3).await;
    let got = sim.received().await;
    assert_eq!(got.len(), 3);
    assert!(
        got.iter().all(|(id, _, _)| *id == got[0].0),
        "same webhook-id"
    );
    assert!(got.iter().all(|(_, _, b)| *b == got[0].2), "same body");
    let deliveries = sim.get("/_sim/webhooks").await.body;
    let d = &deliveries["data"][0];
    assert_eq!(d["state"], "delivered");
    let statuses: Vec<_> = d["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["status"].as_u64().unwrap())
        .collect();
    assert_eq!(statuses, [500, 500, 204]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_faults_duplicate_and_hold_deliveries() {
    let sim = start_sim(|c| c.faults.duplicate_rate = 1.0).await;
    sim.create(&first_in_series(), None).await;
    eventually("two copies", async || sim.received().await.len() == 2).await;
    let got = sim.received().await;
    assert_eq!(got[0].0, got[1].0, "a duplicate keeps its webhook-id");

    let faults = sim
        .http
        .patch(sim.url("/_sim/faults"))
        .json(&json!({"duplicate_rate": 0, "hold_webhooks": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(faults.status(), 200);
    let bad = sim
        .http
        .patch(sim.url("/_sim/faults"))
        .json(&json!({"error_rate": 2}))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    sim.mandate("4242424242424242").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        sim.received().await.len(),
        2,
        "held deliveries are not sent"
    );
    let stats = sim.get("/_sim/stats").await.body;
    assert_eq!(stats["webhooks_held"], 4);
    let released = sim.admin("/_sim/webhooks/release", &json!({})).await;
    assert_eq!(released.body["released"], 4);
    eventually("released", async || sim.received().await.len() == 6).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_faults_fail_without_effect_or_take_effect_and_hang() {
    let sim = start_sim(|c| c.faults.error_rate = 1.0).await;
    let r = sim.create(&first_in_series(), Some("f-1")).await;
    r.problem(503);
    assert!(sim.sessions().await.is_empty(), "a 503 changes nothing");

    sim.http
        .patch(sim.url("/_sim/faults"))
        .json(&json!({"error_rate": 0, "timeout_rate": 1, "hang_ms": 20000}))
        .send()
        .await
        .unwrap();
    let hung = sim
        .http
        .post(sim.url("/collect/payment_sessions"))
        .bearer_auth(SIM_KEY)
        .header("idempotency-key", "f-1")
        .timeout(Duration::from_secs(2))
        .json(&first_in_series())
        .send()
        .await;
    assert!(hung.unwrap_err().is_timeout());
    assert_eq!(
        sim.sessions().await.len(),
        1,
        "the timed-out call took effect"
    );
}
