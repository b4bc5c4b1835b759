//! `POST /webhooks/moment`: verification, storage once, forward-only application.

use axum::http::StatusCode;
use serde_json::{Value, json};

use crate::support::app::{OLD_SECRET, TestApp, completed_first_in_series, mandate_body, now_secs};
use moment_mandates::moment::signature::WebhookSecret;

async fn pending_mandate(app: &TestApp) -> Value {
    app.moment_accepts_sessions().await;
    app.create_mandate(&mandate_body()).await
}

async fn mandate(app: &TestApp, m: &Value) -> Value {
    app.get(&format!("/mandates/{}", m["id"].as_str().unwrap()))
        .await
        .body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_completion_activates_the_mandate_with_both_ids() {
    let app = TestApp::new().await;
    let m = pending_mandate(&app).await;

    let reply = app
        .post_webhook("payment_session.completed", &completed_first_in_series(&m))
        .await;

    assert_eq!(reply.status, StatusCode::NO_CONTENT);
    let now = mandate(&app, &m).await;
    assert_eq!(now["status"], "active");
    assert_eq!(now["customer_id"], m["customer_id"]);
    assert_eq!(now["payment_method_id"], "pmt_izWG6Vcvy4VYiU");
    assert_eq!(now["payment_id"], "pay_first");
    let stored: (String, String) = sqlx::query_as("select outcome, payload from webhook_event")
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(stored.0, "applied");
    assert!(
        stored.1.contains("pmt_izWG6Vcvy4VYiU"),
        "the raw payload is kept"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unpaid_expired_and_cancelled_checkouts_end_their_mandates() {
    let app = TestApp::new().await;
    app.moment_accepts_sessions().await;
    for (status, outcome, want) in [
        ("completed", "unpaid", "failed"),
        ("expired", "unpaid", "expired"),
        ("cancelled", "unpaid", "cancelled"),
    ] {
        let m = app.create_mandate(&mandate_body()).await;
        let mut data = completed_first_in_series(&m);
        data["status"] = json!(status);
        data["payment_outcome"] = json!(outcome);
        data["payment_status"] = json!(outcome);
        assert_eq!(
            app.post_webhook("payment_session.updated", &data)
                .await
                .status,
            StatusCode::NO_CONTENT
        );
        assert_eq!(mandate(&app, &m).await["status"], want);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_duplicate_delivery_is_acknowledged_and_applied_once() {
    let app = TestApp::new().await;
    let m = pending_mandate(&app).await;
    let data = completed_first_in_series(&m);

    for _ in 0..3 {
        assert_eq!(
            app.post_event("msg_dup", "payment_session.completed", &data)
                .await
                .status,
            StatusCode::NO_CONTENT
        );
    }

    assert_eq!(app.count("webhook_event").await, 1);
    let first = mandate(&app, &m).await;
    assert_eq!(first["status"], "active");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_older_event_never_takes_a_mandate_back() {
    let app = TestApp::new().await;
    let m = pending_mandate(&app).await;
    let completed = completed_first_in_series(&m);
    app.post_webhook("payment_session.completed", &completed)
        .await;
    let active = mandate(&app, &m).await;

    // An `expired` snapshot and a `created` one arrive after the completion.
    let mut expired = completed.clone();
    expired["status"] = json!("expired");
    expired["payment_outcome"] = json!("unpaid");
    let mut created = completed.clone();
    created["status"] = json!("active");
    created["payment_outcome"] = json!("not_started");
    assert_eq!(
        app.post_webhook("payment_session.updated", &expired)
            .await
            .status,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        app.post_webhook("payment_session.created", &created)
            .await
            .status,
        StatusCode::NO_CONTENT
    );

    let after = mandate(&app, &m).await;
    assert_eq!(after["status"], "active");
    assert_eq!(after["updated_at"], active["updated_at"]);
    assert_eq!(app.count("webhook_event").await, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_for_an_unknown_session_is_kept_and_applied_once_the_session_is_known() {
    let app = TestApp::new().await;
    let m = pending_mandate(&app).await;
    // Moment's event names a session we have not recorded and carries no external_reference
    // (as if it beat our own write).
    sqlx::query("update mandate set session_id = null")
        .execute(&app.db)
        .await
        .unwrap();
    let mut data = completed_first_in_series(&m);
    data.as_object_mut().unwrap().remove("external_reference");

    assert_eq!(
        app.post_webhook("payment_session.completed", &data)
            .await
            .status,
        StatusCode::NO_CONTENT
    );
    let outcome: String = sqlx::query_scalar("select outcome from webhook_event")
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(outcome, "deferred");
    assert_eq!(mandate(&app, &m).await["status"], "pending");

    // The session becomes known; the background worker applies what was waiting.
    sqlx::query("update mandate set session_id = $1")
        .bind(m["session_id"].as_str())
        .execute(&app.db)
        .await
        .unwrap();
    let tally = moment_mandates::worker::run_once(&app.state).await.unwrap();
    assert_eq!(tally.events_applied, 1);
    assert_eq!(mandate(&app, &m).await["status"], "active");
    let outcome: String = sqlx::query_scalar("select outcome from webhook_event")
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(outcome, "applied");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_we_do_not_act_on_are_acknowledged_and_stored() {
    let app = TestApp::new().await;
    let reply = app
        .post_webhook(
            "payment.succeeded",
            &json!({"id": "pay_1", "status": "succeeded"}),
        )
        .await;
    assert_eq!(reply.status, StatusCode::NO_CONTENT);
    let reply = app
        .post_webhook("payment_link.paid", &json!({"id": "pl_1"}))
        .await;
    assert_eq!(reply.status, StatusCode::NO_CONTENT);
    let outcomes: Vec<String> = sqlx::query_scalar("select outcome from webhook_event")
        .fetch_all(&app.db)
        .await
        .unwrap();
    assert_eq!(outcomes, vec!["ignored", "ignored"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rejected_delivery_writes_nothing() {
    let app = TestApp::new().await;
    let m = pending_mandate(&app).await;
    let body = json!({"id": "evt_1", "type": "payment_session.completed", "data": completed_first_in_series(&m)}).to_string();
    let now = now_secs();
    let good = app.sign("msg_1", now, &body);
    let wrong_key = WebhookSecret::parse("whsec_dGhpcyBpcyBub3QgdGhlIHJpZ2h0IGtleQ==")
        .unwrap()
        .sign("msg_1", now, body.as_bytes());
    let tag = good.strip_prefix("v1,").unwrap();
    let now_s = now.to_string();
    let stale = (now - 181).to_string();
    let future = (now + 181).to_string();
    let stale_sig = app.sign("msg_1", now - 181, &body);
    let future_sig = app.sign("msg_1", now + 181, &body);
    let truncated = format!("v1,{}", &tag[..20]);
    let v2_only = format!("v2,{tag}");

    let cases: Vec<(Vec<(&str, &str)>, u16)> = vec![
        (
            vec![
                ("webhook-id", "msg_1"),
                ("webhook-timestamp", &now_s),
                ("webhook-signature", &wrong_key),
            ],
            401,
        ),
        (
            vec![
                ("webhook-id", "msg_2"),
                ("webhook-timestamp", &now_s),
                ("webhook-signature", &good),
            ],
            401,
        ),
        (
            vec![
                ("webhook-id", "msg_1"),
                ("webhook-timestamp", &stale),
                ("webhook-signature", &stale_sig),
            ],
            401,
        ),
        (
            vec![
                ("webhook-id", "msg_1"),
                ("webhook-timestamp", &future),
                ("webhook-signature", &future_sig),
            ],
            401,
        ),
        (
            vec![
                ("webhook-id", "msg_1"),
                ("webhook-timestamp", &now_s),
                ("webhook-signature", &truncated),
            ],
            401,
        ),
        (
            vec![
                ("webhook-id", "msg_1"),
                ("webhook-timestamp", &now_s),
                ("webhook-signature", &v2_only),
            ],
            401,
        ),
        (
            vec![
                ("webhook-id", "msg_1"),
                ("webhook-timestamp", &now_s),
                ("webhook-signature", "v1,"),
            ],
            401,
        ),
        (
            vec![("webhook-timestamp", &now_s), ("webhook-signature", &good)],
            400,
        ),
        (
            vec![("webhook-id", "msg_1"), ("webhook-signature", &good)],
            400,
        ),
        (
            vec![("webhook-id", "msg_1"), ("webhook-timestamp", &now_s)],
            400,
        ),
        (
            vec![
                ("webhook-id", "msg_1"),
                ("webhook-timestamp", "yesterday"),
                ("webhook-signature", &good),
            ],
            400,
        ),
        (
            vec![
                ("webhook-id", ""),
                ("webhook-timestamp", &now_s),
                ("webhook-signature", &good),
            ],
            400,
        ),
    ];
    for (headers, status) in cases {
        let reply = app.post_raw_webhook(&headers, body.clone()).await;
        reply.problem(status);
    }
    // The body was changed after signing.
    let tampered = body.replace("pmt_izWG6Vcvy4VYiU", "pmt_attacker");
    app.post_raw_webhook(
        &[
            ("webhook-id", "msg_1"),
            ("webhook-timestamp", &now_s),
            ("webhook-signature", &good),
        ],
        tampered,
    )
    .await
    .problem(401);

    assert_eq!(app.count("webhook_event").await, 0);
    assert_eq!(mandate(&app, &m).await["status"], "pending");

    // The same delivery, correctly signed, is accepted: the cases above failed for their reason.
    let reply = app
        .post_raw_webhook(
            &[
                ("webhook-id", "msg_1"),
                ("webhook-timestamp", &now_s),
                ("webhook-signature", &good),
            ],
            body,
        )
        .await;
    assert_eq!(reply.status, StatusCode::NO_CONTENT);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_being_rotated_out_still_verifies_and_several_entries_are_tried() {
    let app = TestApp::new().await;
    let body = json!({"id": "evt_r", "type": "payment.succeeded", "data": {}}).to_string();
    let now = now_secs();
    let old = WebhookSecret::parse(OLD_SECRET)
        .unwrap()
        .sign("msg_r", now, body.as_bytes());
    let decoy = "v1,AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";
    let header = format!("{decoy} {old}");
    let reply = app
        .post_raw_webhook(
            &[
                ("webhook-id", "msg_r"),
                ("webhook-timestamp", &now.to_string()),
                ("webhook-signature", &header),
            ],
            body,
        )
        .await;
    assert_eq!(reply.status, StatusCode::NO_CONTENT);
    assert_eq!(app.count("webhook_event").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_body_is_refused_with_413() {
    let app = TestApp::new().await;
    let big = format!(
        "{{\"id\":\"evt\",\"type\":\"x\",\"data\":\"{}\"}}",
        "a".repeat(300 * 1024)
    );
    let now = now_secs();
    let sig = app.sign("msg_big", now, &big);
    let reply = app
        .post_raw_webhook(
            &[
                ("webhook-id", "msg_big"),
                ("webhook-timestamp", &now.to_string()),
                ("webhook-signature", &sig),
            ],
            big,
        )
        .await;
    reply.problem(413);
    assert_eq!(app.count("webhook_event").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_verified_event_is_refused_with_503_while_postgres_is_unreachable() {
    let app = TestApp::new().await;
    app.db.close().await;
    let reply = app
        .post_webhook("payment.succeeded", &json!({"id": "pay_1"}))
        .await;
    reply.problem(503);
    assert!(reply.header("retry-after").is_some());
}
