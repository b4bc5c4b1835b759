//! `POST /mandates`, the customer's return, listing and revoking.

use axum::http::StatusCode;
use futures::future::join_all;
use serde_json::json;

use crate::support::app::{PUBLIC_URL, TestApp, mandate_body, moment_fails, moment_get_hangs};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mandate_sends_the_customer_to_moments_checkout() {
    let app = TestApp::new().await;
    app.moment_accepts_sessions().await;

    let reply = app.post("/mandates", &mandate_body(), &[]).await;

    assert_eq!(reply.status, StatusCode::SEE_OTHER);
    let location = reply.header("location").unwrap();
    assert!(
        location.starts_with("https://checkout.momentpay.test/ckt_"),
        "{location}"
    );
    let id = reply.body["id"].as_str().unwrap();
    assert_eq!(reply.body["checkout_url"], location);
    assert_eq!(reply.body["status"], "pending");

    // Moment got a first_in_series session as the guide describes, keyed by our mandate id.
    let sent = app.session_requests("first_in_series").await;
    assert_eq!(sent.len(), 1);
    let (body, key) = &sent[0];
    assert_eq!(key, id);
    assert_eq!(body["amount"], 5000);
    assert_eq!(body["currency"], "ZAR");
    assert_eq!(
        body["options"]["customer"],
        json!({"name": "Alex Example", "email": "alex@example.com"})
    );
    assert_eq!(
        body["options"]["checkout_options"]["return_url"],
        format!("{PUBLIC_URL}/mandates/{id}/return")
    );
    assert_eq!(body["external_reference"], id);
    assert_eq!(body["metadata"], json!({"plan": "gold"}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_json_client_gets_the_mandate_itself() {
    let app = TestApp::new().await;
    app.moment_accepts_sessions().await;

    let mandate = app.create_mandate(&mandate_body()).await;

    for field in [
        "id",
        "status",
        "amount",
        "currency",
        "reference",
        "metadata",
        "checkout_url",
        "session_id",
        "customer_id",
        "payment_method_id",
        "payment_id",
        "created_at",
        "updated_at",
    ] {
        assert!(mandate.get(field).is_some(), "missing {field}: {mandate}");
    }
    assert_eq!(mandate["status"], "pending");
    assert_eq!(mandate["reference"], "sub-42");
    assert!(mandate["session_id"].as_str().unwrap().starts_with("ps_"));
    assert!(mandate["customer_id"].as_str().unwrap().starts_with("cus_"));
    assert_eq!(mandate["payment_method_id"], json!(null));
    assert!(
        mandate.get("customer_email").is_none()
            && !mandate.to_string().contains("alex@example.com")
    );
    let mut shown = app
        .get(&format!("/mandates/{}", mandate["id"].as_str().unwrap()))
        .await
        .body;
    // GET adds the consent ledger; the rest is the same mandate.
    assert_eq!(shown["ledger"]["occurrences_used"], 1);
    shown.as_object_mut().unwrap().remove("ledger");
    assert_eq!(shown, mandate);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_mandate_request_opens_no_second_session() {
    let app = TestApp::new().await;
    app.moment_accepts_sessions().await;
    let headers = [
        ("idempotency-key", "mandate-attempt-1"),
        ("accept", "application/json"),
    ];

    let first = app.post("/mandates", &mandate_body(), &headers).await;
    let second = app.post("/mandates", &mandate_body(), &headers).await;

    assert_eq!(first.status, StatusCode::CREATED);
    assert_eq!(second.status, StatusCode::CREATED);
    assert_eq!(second.header("idempotent-replayed"), Some("true"));
    assert_eq!(first.body["id"], second.body["id"]);
    assert_eq!(app.session_requests("first_in_series").await.len(), 1);
    assert_eq!(app.count("mandate").await, 1);

    let mut other = mandate_body();
    other["amount"] = json!(9900);
    let mismatch = app.post("/mandates", &other, &headers).await;
    mismatch.problem(422);
    assert_eq!(app.count("mandate").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_mandate_requests_under_one_key_open_one_session() {
    let app = TestApp::new().await;
    app.moment_accepts_sessions().await;
    let body = mandate_body();
    let replies = join_all((0..20).map(|_| {
        app.post(
            "/mandates",
            &body,
            &[("idempotency-key", "same"), ("accept", "application/json")],
        )
    }))
    .await;

    let ok: Vec<_> = replies
        .iter()
        .filter(|r| r.status == StatusCode::CREATED)
        .collect();
    assert!(!ok.is_empty());
    assert!(
        replies
            .iter()
            .all(|r| r.status == StatusCode::CREATED || r.status == StatusCode::CONFLICT)
    );
    assert!(ok.iter().all(|r| r.body["id"] == ok[0].body["id"]));
    assert_eq!(app.session_requests("first_in_series").await.len(), 1);
    assert_eq!(app.count("mandate").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_mandate_requests_get_a_problem_naming_the_field_and_change_nothing() {
    let app = TestApp::new().await;
    app.moment_accepts_sessions().await;
    let with = |path: &str, value: serde_json::Value| {
        let mut b = mandate_body();
        let (head, tail) = path
            .split_once('.')
            .map_or((path, None), |(h, t)| (h, Some(t)));
        match tail {
            Some(t) => b[head][t] = value,
            None => b[head] = value,
        }
        b
    };
    let cases = [
        (with("amount", json!(-1)), 422, Some("amount")),
        (with("amount", json!(50.5)), 422, Some("amount")),
        (with("amount", json!("5000")), 422, Some("amount")),
        (with("currency", json!("zar")), 422, Some("currency")),
        (
            with("customer.email", json!("not-an-address")),
            422,
            Some("customer.email"),
        ),
        (
            with("customer.name", json!("  ")),
            422,
            Some("customer.name"),
        ),
        (
            with("return_url", json!("/relative")),
            422,
            Some("return_url"),
        ),
        (
            with("return_url", json!("ftp://x.test/")),
            422,
            Some("return_url"),
        ),
        (with("metadata", json!({"k": ""})), 422, Some("metadata.k")),
        (with("surprise", json!(1)), 422, None),
        // Postgres stores no NUL: refused as invalid, never a 500.
        (
            with("customer.name", json!("A\u{0}")),
            422,
            Some("customer.name"),
        ),
        (
            with("customer.email", json!("a\u{0}@example.com")),
            422,
            Some("customer.email"),
        ),
        (with("reference", json!("r\u{0}")), 422, Some("reference")),
        (
            with("metadata", json!({"k": "v\u{0}"})),
            422,
            Some("metadata.k"),
        ),
        (
            with("metadata", json!({"k\u{0}": "v"})),
            422,
            Some("metadata"),
        ),
    ];
    for (body, status, field) in cases {
        let reply = app.post("/mandates", &body, &[]).await;
        let problem = reply.problem(status);
        if let Some(field) = field {
            assert_eq!(problem["field"], field, "{body}");
        }
    }
    let mut no_customer = mandate_body();
    no_customer.as_object_mut().unwrap().remove("customer");
    app.post("/mandates", &no_customer, &[]).await.problem(422);

    let not_json = app
        .send(
            axum::http::Request::post("/mandates")
                .header(
                    "authorization",
                    format!("Bearer {}", crate::support::app::API_KEY),
                )
                .header("content-type", "text/plain")
                .body(axum::body::Body::from("amount=5"))
                .unwrap(),
        )
        .await;
    not_json.problem(415);
    let broken = app
        .send(
            axum::http::Request::post("/mandates")
                .header(
                    "authorization",
                    format!("Bearer {}", crate::support::app::API_KEY),
                )
                .header("content-type", "application/json")
                .body(axum::body::Body::from("{\"amount\": "))
                .unwrap(),
        )
        .await;
    broken.problem(400);

    assert_eq!(app.count("mandate").await, 0);
    assert!(app.session_requests("first_in_series").await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_merchant_api_needs_a_valid_key() {
    let app = TestApp::new().await;
    app.moment_accepts_sessions().await;
    for auth in [
        None,
        Some("Bearer wrong-key"),
        Some("Basic dGVzdDp0ZXN0"),
        Some("Bearer "),
    ] {
        let mut req =
            axum::http::Request::post("/mandates").header("content-type", "application/json");
        if let Some(a) = auth {
            req = req.header("authorization", a);
        }
        let reply = app
            .send(
                req.body(axum::body::Body::from(mandate_body().to_string()))
                    .unwrap(),
            )
            .await;
        reply.problem(401);
        assert_eq!(reply.header("www-authenticate"), Some("Bearer"));
    }
    app.get_public("/charges").await.problem(401);
    assert_eq!(app.count("mandate").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_customers_return_is_verified_with_moment_not_the_query_string() {
    let app = TestApp::new().await;
    app.moment_accepts_sessions().await;
    let mandate = app.create_mandate(&mandate_body()).await;
    let id = mandate["id"].as_str().unwrap();

    // Moment still shows the checkout open: whatever the query says, the mandate stays pending.
    let open = json!({"id": mandate["session_id"], "type": "first_in_series", "status": "active", "payment_status": "unpaid"});
    app.moment_serves_session(&open).await;
    let reply = app
        .get(&format!(
            "/mandates/{id}/return?status=active&payment_method_id=pmt_forged"
        ))
        .await;
    assert_eq!(reply.status, StatusCode::SEE_OTHER);
    assert_eq!(
        reply.header("location").unwrap(),
        format!("https://shop.test/subscribed?plan=gold&mandate_id={id}&status=pending")
    );
    assert_eq!(
        app.get(&format!("/mandates/{id}")).await.body["status"],
        "pending"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_return_after_payment_activates_the_mandate_before_any_webhook() {
    let app = TestApp::new().await;
    app.moment_accepts_sessions().await;
    let mut body = mandate_body();
    body.as_object_mut().unwrap().remove("return_url");
    let mandate = app.create_mandate(&body).await;
    let id = mandate["id"].as_str().unwrap();
    app.moment_serves_session(&crate::support::app::completed_first_in_series(&mandate))
        .await;

    let reply = app
        .send(
            axum::http::Request::get(format!("/mandates/{id}/return"))
                .body(axum::body::Body::empty())
                .unwrap(),
        )
        .await;

    assert_eq!(reply.status, StatusCode::SEE_OTHER);
    assert_eq!(
        reply.header("location").unwrap(),
        format!("https://shop.test/done?mandate_id={id}&status=active")
    );
    let now = app.get(&format!("/mandates/{id}")).await.body;
    assert_eq!(now["status"], "active");
    assert_eq!(now["payment_method_id"], "pmt_izWG6Vcvy4VYiU");
    assert_eq!(now["payment_id"], "pay_first");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_return_while_moment_is_silent_still_sends_the_customer_on() {
    let app = TestApp::new().await;
    app.moment_accepts_sessions().await;
    let mandate = app.create_mandate(&mandate_body()).await;
    moment_get_hangs(&app).await;
    let id = mandate["id"].as_str().unwrap();
    let reply = app.get(&format!("/mandates/{id}/return")).await;
    assert_eq!(reply.status, StatusCode::SEE_OTHER);
    assert!(
        reply
            .header("location")
            .unwrap()
            .ends_with("&status=pending")
    );
    app.get("/mandates/00000000-0000-0000-0000-000000000000/return")
        .await
        .problem(404);
    app.get("/mandates/not-a-uuid/return").await.problem(404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_moment_outage_answers_503_and_a_retry_under_the_same_key_recovers() {
    let app = TestApp::new().await;
    moment_fails(&app, 503, Some(3)).await;
    app.moment_accepts_sessions().await;
    let headers = [
        ("idempotency-key", "k-outage"),
        ("accept", "application/json"),
    ];

    let first = app.post("/mandates", &mandate_body(), &headers).await;
    first.problem(503);
    assert!(first.header("retry-after").is_some());

    let second = app.post("/mandates", &mandate_body(), &headers).await;
    assert_eq!(second.status, StatusCode::CREATED, "{}", second.body);
    let sent = app.session_requests("first_in_series").await;
    assert_eq!(sent.len(), 4, "three refused attempts and one that worked");
    assert!(
        sent.iter()
            .all(|(_, key)| key == second.body["id"].as_str().unwrap()),
        "one Moment key throughout"
    );
    assert_eq!(app.count("mandate").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moment_refusing_the_session_fails_the_mandate_with_its_reason() {
    let app = TestApp::new().await;
    wiremock::Mock::given(wiremock::matchers::method("POST"))
        .respond_with(wiremock::ResponseTemplate::new(400).set_body_json(json!({
            "type": "https://api.momentco.io/docs/errors#invalid-request", "title": "Bad request",
            "status": 400, "detail": "currency XYZ is not supported"})))
        .mount(&app.moment)
        .await;
    let mut body = mandate_body();
    body["currency"] = json!("XYZ");
    let reply = app.post("/mandates", &body, &[]).await;
    let problem = reply.problem(422);
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("currency XYZ is not supported")
    );
    assert_eq!(
        app.session_requests("first_in_series").await.len(),
        1,
        "a refusal is not retried"
    );
    let failed = app.get("/mandates?status=failed").await;
    assert_eq!(failed.body["data"][0]["failure"]["code"], "invalid_request");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mandates_are_listed_newest_first_with_filters_and_cursors() {
    let app = TestApp::new().await;
    app.moment_accepts_sessions().await;
    let mut ids = Vec::new();
    for i in 0..5 {
        let mut body = mandate_body();
        body["reference"] = json!(if i % 2 == 0 { "even" } else { "odd" });
        ids.push(
            app.create_mandate(&body).await["id"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    let page1 = app.get("/mandates?limit=2").await;
    assert_eq!(page1.status, StatusCode::OK);
    let got: Vec<_> = page1.body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(got, vec![ids[4].clone(), ids[3].clone()]);
    let cursor = page1.body["next_cursor"].as_str().unwrap();
    let page2 = app.get(&format!("/mandates?limit=2&cursor={cursor}")).await;
    assert_eq!(page2.body["data"][0]["id"], ids[2]);
    let page3 = app
        .get(&format!(
            "/mandates?limit=2&cursor={}",
            page2.body["next_cursor"].as_str().unwrap()
        ))
        .await;
    assert_eq!(page3.body["data"].as_array().unwrap().len(), 1);
    assert_eq!(page3.body["next_cursor"], json!(null));

    let even = app.get("/mandates?reference=even&status=pending").await;
    assert_eq!(even.body["data"].as_array().unwrap().len(), 3);
    assert_eq!(
        app.get("/mandates?status=active").await.body["data"],
        json!([])
    );
    app.get("/mandates?status=bogus").await.problem(400);
    app.get("/mandates?limit=0").await.problem(400);
    app.get("/mandates?cursor=zzz").await.problem(400);
    app.get("/mandates?colour=red").await.problem(400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_mandate_takes_no_more_charges() {
    let app = TestApp::new().await;
    let mandate = app.active_mandate().await;
    let id = mandate["id"].as_str().unwrap();

    let revoked = app
        .post(&format!("/mandates/{id}/revoke"), &json!({}), &[])
        .await;
    assert_eq!(revoked.status, StatusCode::OK);
    assert_eq!(revoked.body["status"], "revoked");
    let again = app
        .post(&format!("/mandates/{id}/revoke"), &json!({}), &[])
        .await;
    assert_eq!(again.status, StatusCode::OK);

    app.charge(&mandate, "after-revoke").await.problem(409);
    assert_eq!(app.count("charge").await, 0);
    app.post(
        "/mandates/00000000-0000-0000-0000-000000000000/revoke",
        &json!({}),
        &[],
    )
    .await
    .problem(404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pending_mandate_cannot_be_revoked() {
    let app = TestApp::new().await;
    app.moment_accepts_sessions().await;
    let mandate = app.create_mandate(&mandate_body()).await;
    app.post(
        &format!("/mandates/{}/revoke", mandate["id"].as_str().unwrap()),
        &json!({}),
        &[],
    )
    .await
    .problem(409);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mandate_that_never_got_a_checkout_expires_after_a_day() {
    let app = TestApp::new().await;
    moment_fails(&app, 503, None).await;
    let r = app
        .post(
            "/mandates",
            &mandate_body(),
            &[("idempotency-key", "never-opened")],
        )
        .await;
    r.problem(503);
    let (id, status): (uuid::Uuid, String) = sqlx::query_as("select id, status from mandate")
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(status, "pending");
    // A run now leaves it alone: the caller may still retry under the same key.
    moment_mandates::worker::run_once(&app.state).await.unwrap();
    assert_eq!(
        app.get(&format!("/mandates/{id}")).await.body["status"],
        "pending"
    );
    sqlx::query("update mandate set created_at = now() - interval '25 hours', locked_until = null")
        .execute(&app.db)
        .await
        .unwrap();
    let tally = moment_mandates::worker::run_once(&app.state).await.unwrap();
    assert_eq!(tally.mandates_expired, 1);
    let m = app.get(&format!("/mandates/{id}")).await.body;
    assert_eq!(m["status"], "expired");
    assert_eq!(m["failure"]["code"], "no_checkout_session");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_amount_with_a_zero_fraction_is_that_integer() {
    // JSON Schema counts 5000.0 as an integer, and so does the service; 50.5 stays refused.
    let app = TestApp::new().await;
    app.moment_accepts_sessions().await;
    let mut body = mandate_body();
    body["amount"] = json!(5000.0);
    let mandate = app.create_mandate(&body).await;
    assert_eq!(mandate["amount"], 5000);
    let sent = app.session_requests("first_in_series").await;
    assert_eq!(sent[0].0["amount"], 5000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_list_filter_with_a_nul_is_malformed() {
    let app = TestApp::new().await;
    for query in ["reference=a%00", "customer_id=a%00"] {
        let reply = app.get(&format!("/mandates?{query}")).await;
        assert_eq!(
            reply.problem(400)["field"],
            query.split('=').next().unwrap()
        );
    }
}
