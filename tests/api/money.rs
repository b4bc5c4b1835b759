//! The money paths under an adversarial review: revocation stops money, Moment's 24-hour
//! idempotency window holds on every path, only clean refusals fail a charge, replayed errors
//! are final, `Retry-After` is honoured, leases are fenced, and a webhook moves only its own
//! record. Each test counts what reaches Moment and what the merchant sees.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sqlx::PgPool;
use uuid::Uuid;
use wiremock::matchers::{body_partial_json, method, path};
use wiremock::{Mock, ResponseTemplate};

use moment_mandates::store::charges;
use moment_mandates::worker;

use crate::support::app::{TestApp, completed_next_in_series};

/// Moment answers every `next_in_series` create with `answer`, ahead of anything else.
async fn moment_answers_charges(app: &TestApp, answer: ResponseTemplate) {
    moment_answers_charges_for(app, answer, None).await;
}

/// As `moment_answers_charges`, for the next `times` creates only.
async fn moment_answers_charges_for(app: &TestApp, answer: ResponseTemplate, times: Option<u64>) {
    let mut mock = Mock::given(method("POST"))
        .and(path("/collect/payment_sessions"))
        .and(body_partial_json(json!({"type": "next_in_series"})))
        .respond_with(answer);
    if let Some(n) = times {
        mock = mock.up_to_n_times(n);
    }
    mock.with_priority(1).mount(&app.moment).await;
}

fn problem(status: u16) -> Value {
    json!({"type": "https://api.momentco.io/docs/errors#x", "title": "x", "status": status})
}

async fn charge_row(db: &PgPool, id: &str) -> (String, i32, Option<Value>) {
    let id: Uuid = id.parse().unwrap();
    sqlx::query_as("select status, sends, review_reason from charge where id = $1")
        .bind(id)
        .fetch_one(db)
        .await
        .unwrap()
}

/// Makes a deferred charge due for the worker now.
async fn due_now(db: &PgPool) {
    sqlx::query("update charge set next_attempt_at = now() where status = 'pending'")
        .execute(db)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_revoke_nothing_of_the_mandate_reaches_moment_from_any_path() {
    let app = TestApp::new().await;
    let mandate = app.active_mandate().await;
    moment_answers_charges(&app, ResponseTemplate::new(503).set_body_json(problem(503))).await;
    let first = app.charge(&mandate, "rev-1").await;
    assert_eq!(first.status, 202, "{}", first.body);
    let id = first.body["id"].as_str().unwrap().to_owned();
    let sent_before = app.session_requests("next_in_series").await.len();
    assert_eq!(sent_before, 3, "one send, three attempts");

    let revoked = app
        .post(
            &format!("/mandates/{}/revoke", mandate["id"].as_str().unwrap()),
            &json!({}),
            &[],
        )
        .await;
    assert_eq!(revoked.status, 200, "{}", revoked.body);
    assert_eq!(revoked.body["status"], "revoked");
    assert_eq!(revoked.body["charges"]["needs_review"], json!([id]));

    // The worker, and the merchant retrying the 202, find nothing to send.
    due_now(&app.db).await;
    worker::run_once(&app.state).await.unwrap();
    let retry = app.charge(&mandate, "rev-1").await;
    assert_eq!(retry.status, 202);
    assert_eq!(retry.body["status"], "needs_review");
    assert_eq!(
        retry.body["review_reason"]["code"],
        "mandate_revoked_outcome_unknown"
    );
    assert_eq!(
        app.session_requests("next_in_series").await.len(),
        sent_before,
        "a charge was sent to Moment after its mandate was revoked"
    );
    // Moment can still settle it.
    let mut settled = completed_next_in_series(&first.body, true);
    settled["id"] = json!("ps_settled_by_moment");
    app.post_webhook("payment_session.completed", &settled)
        .await;
    assert_eq!(charge_row(&app.db, &id).await.0, "succeeded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_charge_never_sent_fails_with_mandate_revoked_when_its_mandate_is_revoked() {
    let app = TestApp::new().await;
    let mandate = app.active_mandate().await;
    moment_answers_charges(&app, ResponseTemplate::new(503).set_body_json(problem(503))).await;
    let first = app.charge(&mandate, "rev-unsent").await;
    let id = first.body["id"].as_str().unwrap().to_owned();
    // As if the request that recorded it had died before its first send.
    sqlx::query("update charge set sends = 0")
        .execute(&app.db)
        .await
        .unwrap();
    let revoked = app
        .post(
            &format!("/mandates/{}/revoke", mandate["id"].as_str().unwrap()),
            &json!({}),
            &[],
        )
        .await;
    assert_eq!(revoked.body["charges"]["failed"], json!([id]));
    let shown = app.get(&format!("/charges/{id}")).await.body;
    assert_eq!(shown["status"], "failed");
    assert_eq!(shown["failure"]["code"], "mandate_revoked");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_charge_claimed_before_a_revoke_is_not_sent_after_it() {
    let app = TestApp::new().await;
    let mandate = app.active_mandate().await;
    moment_answers_charges(&app, ResponseTemplate::new(503).set_body_json(problem(503))).await;
    let first = app.charge(&mandate, "rev-claimed").await;
    let id: Uuid = first.body["id"].as_str().unwrap().parse().unwrap();
    let sent_before = app.session_requests("next_in_series").await.len();
    // A worker claimed it (a batch claimed earlier) ...
    due_now(&app.db).await;
    let token = Uuid::new_v4();
    let claimed = charges::claim_next_due(&app.db, 30.0, 23.0 * 3600.0, token)
        .await
        .unwrap()
        .expect("due");
    // ... then the mandate was revoked, then the worker got round to sending.
    sqlx::query("update mandate set status = 'revoked'")
        .execute(&app.db)
        .await
        .unwrap();
    let after = moment_mandates::workflow::charges::send(&app.state, claimed, token)
        .await
        .unwrap();
    assert_eq!(after.id, id);
    assert_eq!(after.status.as_str(), "needs_review");
    assert_eq!(
        app.session_requests("next_in_series").await.len(),
        sent_before
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_moments_idempotency_window_a_retry_gets_the_stored_answer_and_nothing_is_sent() {
    let app = TestApp::new().await;
    let mandate = app.active_mandate().await;
    moment_answers_charges(&app, ResponseTemplate::new(503).set_body_json(problem(503))).await;
    let first = app.charge(&mandate, "late").await;
    assert_eq!(first.status, 202);
    let id = first.body["id"].as_str().unwrap().to_owned();
    let sent_before = app.session_requests("next_in_series").await.len();
    sqlx::query("update charge set created_at = now() - interval '23 hours 1 minute'")
        .execute(&app.db)
        .await
        .unwrap();

    let retry = app.charge(&mandate, "late").await;
    assert_eq!(retry.status, 202, "{}", retry.body);
    assert_eq!(retry.body["id"], id.as_str());
    assert_eq!(retry.body["status"], "needs_review");
    assert_eq!(
        retry.body["review_reason"]["code"],
        "idempotency_window_passed"
    );
    assert_eq!(
        app.session_requests("next_in_series").await.len(),
        sent_before
    );
    let listed = app.get("/charges?status=needs_review").await.body;
    assert_eq!(listed["data"][0]["id"], id.as_str());
    assert_eq!(app.counted("charges", "needs_review").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_worker_closes_pending_charges_that_the_window_left_behind() {
    let app = TestApp::new().await;
    let mandate = app.active_mandate().await;
    moment_answers_charges(&app, ResponseTemplate::new(503).set_body_json(problem(503))).await;
    let first = app.charge(&mandate, "stale").await;
    let id = first.body["id"].as_str().unwrap().to_owned();
    let sent_before = app.session_requests("next_in_series").await.len();
    sqlx::query("update charge set created_at = now() - interval '23 hours 1 minute', next_attempt_at = now()")
        .execute(&app.db)
        .await
        .unwrap();
    let tally = worker::run_once(&app.state).await.unwrap();
    assert_eq!(tally.charges_closed, 1);
    assert_eq!(charge_row(&app.db, &id).await.0, "needs_review");
    assert_eq!(
        app.session_requests("next_in_series").await.len(),
        sent_before
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_4xx_that_says_nothing_of_the_request_leaves_the_outcome_unknown() {
    for status in [401, 403, 404, 408, 423, 425] {
        let app = TestApp::new().await;
        let mandate = app.active_mandate().await;
        moment_answers_charges(
            &app,
            ResponseTemplate::new(status).set_body_json(problem(status)),
        )
        .await;
        let reply = app.charge(&mandate, "unknown-4xx").await;
        assert_eq!(reply.status, 202, "{status}: {}", reply.body);
        assert_eq!(reply.body["status"], "pending", "{status}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_after_an_unanswered_send_is_not_taken_for_a_refusal() {
    let app = TestApp::new().await;
    let mandate = app.active_mandate().await;
    let unanswered = ResponseTemplate::new(503).set_body_json(problem(503));
    moment_answers_charges_for(&app, unanswered, Some(1)).await;
    moment_answers_charges(&app, ResponseTemplate::new(422).set_body_json(problem(422))).await;
    let reply = app.charge(&mandate, "503-then-422").await;
    assert_eq!(reply.status, 202, "{}", reply.body);
    assert_eq!(reply.body["status"], "pending");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_error_is_final_and_never_resent() {
    let app = TestApp::new().await;
    let mandate = app.active_mandate().await;
    moment_answers_charges(
        &app,
        ResponseTemplate::new(503)
            .insert_header("Idempotent-Replayed", "true")
            .set_body_json(problem(503)),
    )
    .await;
    let reply = app.charge(&mandate, "replayed-503").await;
    assert_eq!(reply.status, 202);
    assert_eq!(reply.body["status"], "needs_review");
    assert_eq!(reply.body["review_reason"]["code"], "moment_replayed_error");
    due_now(&app.db).await;
    worker::run_once(&app.state).await.unwrap();
    assert_eq!(app.session_requests("next_in_series").await.len(), 1);

    let app = TestApp::new().await;
    let mandate = app.active_mandate().await;
    let unanswered = ResponseTemplate::new(503).set_body_json(problem(503));
    moment_answers_charges_for(&app, unanswered, Some(1)).await;
    moment_answers_charges(
        &app,
        ResponseTemplate::new(422)
            .insert_header("Idempotent-Replayed", "true")
            .set_body_json(problem(422)),
    )
    .await;
    let reply = app.charge(&mandate, "replayed-422").await;
    assert_eq!(reply.status, 201, "{}", reply.body);
    assert_eq!(reply.body["status"], "failed");
    assert_eq!(app.session_requests("next_in_series").await.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_is_waited_out_inside_a_call_or_by_the_worker() {
    // Within what one call may wait (2 s in the tests): waited, then sent again.
    let app = TestApp::new().await;
    let mandate = app.active_mandate().await;
    let busy = ResponseTemplate::new(429)
        .insert_header("Retry-After", "1")
        .set_body_json(problem(429));
    moment_answers_charges_for(&app, busy, Some(1)).await;
    // Then the sessions answer of `active_mandate`.
    let started = Instant::now();
    let reply = app.charge(&mandate, "retry-after-1").await;
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "Retry-After not waited"
    );
    assert_eq!(app.session_requests("next_in_series").await.len(), 2);
    assert_ne!(reply.body["status"], "failed", "{}", reply.body);

    // Longer than that: the call ends, and the worker waits it out.
    let app = TestApp::new().await;
    let mandate = app.active_mandate().await;
    moment_answers_charges(
        &app,
        ResponseTemplate::new(503)
            .insert_header("Retry-After", "120")
            .set_body_json(problem(503)),
    )
    .await;
    let reply = app.charge(&mandate, "retry-after-120").await;
    assert_eq!(reply.status, 202);
    assert_eq!(app.session_requests("next_in_series").await.len(), 1);
    let wait: f64 = sqlx::query_scalar(
        "select extract(epoch from next_attempt_at - now())::float8 from charge",
    )
    .fetch_one(&app.db)
    .await
    .unwrap();
    assert!(wait > 110.0, "the worker may resend after {wait} s");
    worker::run_once(&app.state).await.unwrap();
    assert_eq!(app.session_requests("next_in_series").await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_holder_whose_lease_was_taken_over_can_no_longer_write() {
    let app = TestApp::new().await;
    let mandate = app.active_mandate().await;
    moment_answers_charges(&app, ResponseTemplate::new(503).set_body_json(problem(503))).await;
    let first = app.charge(&mandate, "fenced").await;
    let id: Uuid = first.body["id"].as_str().unwrap().parse().unwrap();
    let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
    assert!(charges::claim(&app.db, id, 0.0, a).await.unwrap().is_some());
    // A's lease ran out; B took the charge over.
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert!(
        charges::claim(&app.db, id, 60.0, b)
            .await
            .unwrap()
            .is_some()
    );
    let failure = json!({"code": "x"});
    assert!(
        charges::begin_send(&app.db, id, a, 60.0, 82800.0)
            .await
            .unwrap()
            .is_none()
    );
    assert!(charges::defer(&app.db, id, a, 1.0).await.unwrap().is_none());
    assert!(
        charges::fail(&app.db, id, a, &failure)
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        charges::needs_review(&app.db, id, a, &failure)
            .await
            .unwrap()
            .is_none()
    );
    assert!(!charges::hold(&app.db, id, a, 60.0).await.unwrap());
    let (status, _, _) = charge_row(&app.db, &id.to_string()).await;
    assert_eq!(status, "pending", "a stale holder changed the charge");
    assert!(
        charges::begin_send(&app.db, id, b, 60.0, 82800.0)
            .await
            .unwrap()
            .is_some()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_moves_only_its_own_record() {
    let app = TestApp::new().await;
    let mandate = app.active_mandate().await;
    let charge = app.charge(&mandate, "own").await.body;
    let id = charge["id"].as_str().unwrap().to_owned();
    let paid = completed_next_in_series(&charge, true);
    let mut other_session = paid.clone();
    other_session["id"] = json!("ps_someone_elses");
    let mut other_amount = paid.clone();
    other_amount["amount"] = json!(1);
    let mut other_currency = paid.clone();
    other_currency["currency"] = json!("USD");
    let mut live = paid.clone();
    live["mode"] = json!("live");
    for (what, data) in [
        ("session", other_session),
        ("amount", other_amount),
        ("currency", other_currency),
        ("mode", live),
    ] {
        let reply = app.post_webhook("payment_session.completed", &data).await;
        assert_eq!(
            reply.status, 204,
            "{what}: Moment cannot fix it by retrying"
        );
        assert_eq!(
            charge_row(&app.db, &id).await.0,
            "processing",
            "{what} moved it"
        );
    }
    let mismatched: i64 =
        sqlx::query_scalar("select count(*) from webhook_event where outcome = 'mismatch'")
            .fetch_one(&app.db)
            .await
            .unwrap();
    assert_eq!(mismatched, 4);
    let metrics = app.metrics().await.body.as_str().unwrap().to_owned();
    assert!(metrics.contains("outcome=\"mismatch\""), "{metrics}");
    // Its own event still settles it.
    app.post_webhook("payment_session.completed", &paid).await;
    assert_eq!(charge_row(&app.db, &id).await.0, "succeeded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_from_moment_that_is_not_the_charges_makes_it_need_review() {
    let app = TestApp::new().await;
    let mandate = app.active_mandate().await;
    moment_answers_charges(
        &app,
        ResponseTemplate::new(201).set_body_json(json!({
            "id": "ps_wrong", "type": "next_in_series", "status": "active",
            "amount": 1, "currency": "ZAR", "payment_outcome": "pending"})),
    )
    .await;
    let reply = app.charge(&mandate, "wrong-answer").await;
    assert_eq!(reply.body["status"], "needs_review", "{}", reply.body);
    assert_eq!(
        reply.body["review_reason"]["code"],
        "moment_answer_mismatch"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_moment_client_never_follows_a_redirect() {
    let app = TestApp::new().await;
    let mandate = app.active_mandate().await;
    moment_answers_charges(
        &app,
        ResponseTemplate::new(307).insert_header("Location", "/elsewhere"),
    )
    .await;
    Mock::given(method("POST"))
        .and(path("/elsewhere"))
        .respond_with(ResponseTemplate::new(201))
        .expect(0)
        .mount(&app.moment)
        .await;
    let reply = app.charge(&mandate, "redirected").await;
    assert_eq!(reply.status, 202);
    assert_eq!(reply.body["status"], "pending");
}
