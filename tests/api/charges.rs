//! `POST /charges` and the charge's life: exactly one Moment payment per idempotency key.

use axum::http::StatusCode;
use futures::future::join_all;
use serde_json::{Value, json};
use wiremock::matchers::{method, path};
use wiremock::{Mock, ResponseTemplate};

use crate::support::app::{
    TestApp, completed_next_in_series, mandate_body, moment_fails, moment_refuses_charges,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_whole_flow_from_checkout_to_a_succeeded_charge() {
    let app = TestApp::new().await;
    let mandate = app.active_mandate().await;

    let reply = app.charge(&mandate, "charge-2026-12").await;

    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.body);
    let charge = reply.body.clone();
    assert_eq!(charge["status"], "processing");
    assert_eq!(charge["amount"], 5000);
    assert_eq!(charge["currency"], "ZAR");
    assert_eq!(charge["mandate_id"], mandate["id"]);
    assert!(charge["session_id"].as_str().unwrap().starts_with("ps_"));
    assert!(charge["payment_id"].as_str().unwrap().starts_with("pay_"));
    assert_eq!(charge["failure"], json!(null));
    assert_eq!(
        reply.header("location").unwrap(),
        format!("/charges/{}", charge["id"].as_str().unwrap())
    );

    // Moment got exactly the guide's next_in_series request, under the charge's own key.
    let sent = app.session_requests("next_in_series").await;
    assert_eq!(sent.len(), 1);
    let (body, key) = &sent[0];
    assert_eq!(key, charge["id"].as_str().unwrap());
    assert_eq!(
        body["options"],
        json!({"customer": mandate["customer_id"], "payment_method": "pmt_izWG6Vcvy4VYiU"})
    );
    assert_eq!(body["external_reference"], charge["id"]);
    assert_eq!(
        (body["amount"].clone(), body["currency"].clone()),
        (json!(5000), json!("ZAR"))
    );

    let done = app
        .post_webhook(
            "payment_session.completed",
            &completed_next_in_series(&charge, true),
        )
        .await;
    assert_eq!(done.status, StatusCode::NO_CONTENT);
    let settled = app
        .get(&format!("/charges/{}", charge["id"].as_str().unwrap()))
        .await
        .body;
    assert_eq!(settled["status"], "succeeded");

    let listed = app
        .get(&format!(
            "/charges?mandate_id={}&status=succeeded",
            mandate["id"].as_str().unwrap()
        ))
        .await;
    assert_eq!(listed.body["data"].as_array().unwrap().len(), 1);
    assert_eq!(
        app.get("/charges?status=failed").await.body["data"],
        json!([])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_declined_charge_fails_with_moments_reason_and_never_comes_back() {
    let app = TestApp::new().await;
    let mandate = app.active_mandate().await;
    let charge = app.charge(&mandate, "declined").await.body;

    app.post_webhook(
        "payment_session.completed",
        &completed_next_in_series(&charge, false),
    )
    .await;
    // A late, older snapshot of the same session (still active) must not take it back.
    let mut older = completed_next_in_series(&charge, false);
    older["status"] = json!("active");
    older["payment_outcome"] = json!("pending");
    older["payment_status"] = json!("pending");
    older.as_object_mut().unwrap().remove("last_payment_error");
    app.post_webhook("payment_session.updated", &older).await;

    let failed = app
        .get(&format!("/charges/{}", charge["id"].as_str().unwrap()))
        .await
        .body;
    assert_eq!(failed["status"], "failed");
    assert_eq!(failed["failure"]["code"], "card_declined");
    assert_eq!(failed["failure"]["decline_code"], "insufficient_funds");
    assert_eq!(
        failed["failure"]["message"],
        "The card was declined due to insufficient funds."
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_payment_moment_reports_for_a_charge_marked_failed_makes_it_succeeded_and_is_counted() {
    let app = TestApp::new().await;
    let mandate = app.active_mandate().await;
    let charge = app.charge(&mandate, "declined-then-paid").await.body;
    let id = charge["id"].as_str().unwrap();
    app.post_webhook(
        "payment_session.completed",
        &completed_next_in_series(&charge, false),
    )
    .await;
    assert_eq!(
        app.get(&format!("/charges/{id}")).await.body["status"],
        "failed"
    );
    let counted = || async {
        let text = app.metrics().await.body.as_str().unwrap().to_owned();
        text.lines()
            .find(|l| l.starts_with("charges_paid_after_failure_total"))
            .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    let before = counted().await;

    // Moment is the source of truth for money moved.
    app.post_webhook(
        "payment_session.completed",
        &completed_next_in_series(&charge, true),
    )
    .await;
    let now = app.get(&format!("/charges/{id}")).await.body;
    assert_eq!(now["status"], "succeeded");
    assert_eq!(now["failure"], Value::Null);
    assert!(counted().await >= before + 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_charge_may_override_the_amount_but_not_the_currency() {
    let app = TestApp::new().await;
    let mandate = app.active_mandate().await;
    let reply = app
        .post("/charges", &json!({"mandate_id": mandate["id"], "amount": 1234, "currency": "ZAR", "reference": "inv-9", "metadata": {"invoice": "9"}}), &[("idempotency-key", "custom")])
        .await;
    assert_eq!(reply.status, StatusCode::CREATED);
    assert_eq!(reply.body["amount"], 1234);
    assert_eq!(reply.body["reference"], "inv-9");
    let (body, _) = app.session_requests("next_in_series").await.remove(0);
    assert_eq!(body["amount"], 1234);
    assert_eq!(body["metadata"], json!({"invoice": "9"}));

    let wrong = app
        .post(
            "/charges",
            &json!({"mandate_id": mandate["id"], "currency": "USD"}),
            &[("idempotency-key", "usd")],
        )
        .await;
    assert_eq!(wrong.problem(422)["field"], "currency");
    assert_eq!(app.count("charge").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_under_the_same_key_replays_the_answer_without_calling_moment() {
    let app = TestApp::new().await;
    let mandate = app.active_mandate().await;

    let first = app.charge(&mandate, "key-1").await;
    // The charge settles between the two requests; the replay is still the first answer.
    app.post_webhook(
        "payment_session.completed",
        &completed_next_in_series(&first.body, true),
    )
    .await;
    let second = app.charge(&mandate, "key-1").await;

    assert_eq!(second.status, first.status);
    assert_eq!(second.body, first.body);
    assert_eq!(second.header("idempotent-replayed"), Some("true"));
    assert_eq!(first.header("idempotent-replayed"), None);
    assert_eq!(app.session_requests("next_in_series").await.len(), 1);
    assert_eq!(app.count("charge").await, 1);

    let other_body = app
        .post(
            "/charges",
            &json!({"mandate_id": mandate["id"], "amount": 1}),
            &[("idempotency-key", "key-1")],
        )
        .await;
    other_body.problem(422);
    assert_eq!(app.session_requests("next_in_series").await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_concurrent_requests_under_one_key_make_one_moment_call() {
    // Time enough for Moment's answer on a busy machine: a call timed out is sent again.
    let app = TestApp::with(|c| c.moment_timeout = std::time::Duration::from_secs(10)).await;
    let mandate = app.active_mandate().await;
    // Moment is slow, so the requests overlap the first one's call.
    Mock::given(method("POST"))
        .and(path("/collect/payment_sessions"))
        .respond_with(crate::support::app::SessionResponderSlow)
        .with_priority(1)
        .mount(&app.moment)
        .await;

    let replies = join_all((0..20).map(|_| app.charge(&mandate, "burst"))).await;

    let created: Vec<_> = replies
        .iter()
        .filter(|r| r.status == StatusCode::CREATED)
        .collect();
    let conflicts = replies
        .iter()
        .filter(|r| r.status == StatusCode::CONFLICT)
        .count();
    assert_eq!(
        created.len() + conflicts,
        20,
        "{:?}",
        replies.iter().map(|r| r.status).collect::<Vec<_>>()
    );
    assert!(!created.is_empty());
    assert!(
        created
            .iter()
            .all(|r| r.body["id"] == created[0].body["id"])
    );
    assert_eq!(app.session_requests("next_in_series").await.len(), 1);
    assert_eq!(app.count("charge").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn charges_are_refused_for_unknown_inactive_or_malformed_requests_and_write_nothing() {
    let app = TestApp::new().await;
    app.moment_accepts_sessions().await;
    let pending = app.create_mandate(&mandate_body()).await;

    app.charge(&json!({"id": "0190f5c1-0000-7000-8000-000000000000"}), "a")
        .await
        .problem(404);
    app.charge(&pending, "b").await.problem(409);
    let no_key = app
        .post("/charges", &json!({"mandate_id": pending["id"]}), &[])
        .await;
    assert_eq!(no_key.problem(400)["field"], "Idempotency-Key");
    let long_key = "k".repeat(256);
    app.post(
        "/charges",
        &json!({"mandate_id": pending["id"]}),
        &[("idempotency-key", &long_key)],
    )
    .await
    .problem(400);
    app.post(
        "/charges",
        &json!({"mandate_id": "nope"}),
        &[("idempotency-key", "c")],
    )
    .await
    .problem(422);
    app.post(
        "/charges",
        &json!({"mandate_id": pending["id"], "amount": -5}),
        &[("idempotency-key", "d")],
    )
    .await
    .problem(422);
    app.post(
        "/charges",
        &json!({"mandate_id": pending["id"], "tip": 5}),
        &[("idempotency-key", "e")],
    )
    .await
    .problem(422);
    app.get("/charges/0190f5c1-0000-7000-8000-000000000000")
        .await
        .problem(404);
    app.get("/charges?status=lost").await.problem(400);

    assert_eq!(app.count("charge").await, 0);
    assert!(app.session_requests("next_in_series").await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moment_5xx_then_success_is_retried_under_the_same_key() {
    let app = TestApp::new().await;
    let mandate = app.active_mandate().await;
    moment_fails(&app, 502, Some(2)).await;

    let reply = app.charge(&mandate, "flaky").await;

    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.body);
    assert_eq!(reply.body["status"], "processing");
    let sent = app.session_requests("next_in_series").await;
    assert_eq!(sent.len(), 3);
    assert!(
        sent.iter()
            .all(|(_, k)| k == reply.body["id"].as_str().unwrap())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_outcome_answers_202_and_is_resolved_later_under_the_same_key() {
    let app = TestApp::new().await;
    let mandate = app.active_mandate().await;
    // Moment times out on every attempt of the request.
    Mock::given(method("POST"))
        .and(path("/collect/payment_sessions"))
        .respond_with(ResponseTemplate::new(201).set_delay(std::time::Duration::from_secs(3)))
        .up_to_n_times(3)
        .with_priority(1)
        .mount(&app.moment)
        .await;

    let reply = app.charge(&mandate, "timeout").await;

    assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.body);
    assert_eq!(reply.body["status"], "pending");
    let id = reply.body["id"].as_str().unwrap().to_owned();

    // Moment is back. The resend is due after a backoff; make it due now.
    sqlx::query("update charge set next_attempt_at = now()")
        .execute(&app.db)
        .await
        .unwrap();
    let tally = moment_mandates::worker::run_once(&app.state).await.unwrap();
    assert_eq!(tally.charges_resent, 1);

    let charge = app.get(&format!("/charges/{id}")).await.body;
    assert_eq!(charge["status"], "processing");
    let sent = app.session_requests("next_in_series").await;
    assert_eq!(sent.len(), 4, "three timed-out attempts, one resend");
    assert!(
        sent.iter().all(|(_, k)| *k == id),
        "one Moment key throughout, so Moment makes one payment"
    );

    // The merchant's retry now learns the outcome, without another call to Moment.
    let retry = app.charge(&mandate, "timeout").await;
    assert_eq!(retry.status, StatusCode::CREATED);
    assert_eq!(retry.body["status"], "processing");
    assert_eq!(app.session_requests("next_in_series").await.len(), 4);
    assert_eq!(app.count("charge").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_merchant_retry_after_a_202_resends_under_the_same_key() {
    let app = TestApp::new().await;
    let mandate = app.active_mandate().await;
    moment_fails(&app, 503, Some(3)).await;

    let first = app.charge(&mandate, "again").await;
    assert_eq!(first.status, StatusCode::ACCEPTED);
    let second = app.charge(&mandate, "again").await;

    assert_eq!(second.status, StatusCode::CREATED, "{}", second.body);
    assert_eq!(second.body["id"], first.body["id"]);
    assert_eq!(second.body["status"], "processing");
    let sent = app.session_requests("next_in_series").await;
    assert_eq!(sent.len(), 4);
    assert!(
        sent.iter()
            .all(|(_, k)| k == first.body["id"].as_str().unwrap())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moment_refusing_a_charge_fails_it_with_the_problem_details() {
    let app = TestApp::new().await;
    let mandate = app.active_mandate().await;
    moment_refuses_charges(&app, 422, "The charge exceeds the mandate's limit").await;

    let reply = app.charge(&mandate, "too-much").await;

    assert_eq!(reply.status, StatusCode::CREATED);
    assert_eq!(reply.body["status"], "failed");
    assert_eq!(reply.body["failure"]["code"], "mandate_limit_exceeded");
    assert_eq!(
        reply.body["failure"]["message"],
        "The charge exceeds the mandate's limit"
    );
    assert_eq!(reply.body["failure"]["status"], 422);
    assert_eq!(
        app.session_requests("next_in_series").await.len(),
        1,
        "a refusal is final: not retried"
    );
    assert_eq!(
        moment_mandates::worker::run_once(&app.state)
            .await
            .unwrap()
            .charges_resent,
        0
    );
}
