//! Mandate terms: the customer's consent, sent to Moment as `mandate_options` and enforced
//! before Moment has to, with the consent ledger on the mandate.

use axum::http::StatusCode;
use futures::future::join_all;
use serde_json::{Value, json};

use crate::support::app::{TestApp, completed_first_in_series, mandate_body};

/// An active mandate made with `terms` and first payment `amount`.
async fn active_with(app: &TestApp, amount: i64, terms: Value) -> Value {
    app.moment_accepts_sessions().await;
    let mut body = mandate_body();
    body["amount"] = json!(amount);
    body["terms"] = terms;
    let mandate = app.create_mandate(&body).await;
    let reply = app
        .post_webhook(
            "payment_session.completed",
            &completed_first_in_series(&mandate),
        )
        .await;
    assert_eq!(reply.status, StatusCode::NO_CONTENT);
    mandate
}

async fn charge(
    app: &TestApp,
    mandate: &Value,
    amount: i64,
    key: &str,
) -> crate::support::app::Reply {
    app.post(
        "/charges",
        &json!({"mandate_id": mandate["id"], "amount": amount}),
        &[("idempotency-key", key)],
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terms_are_sent_to_moment_exactly_and_shown_with_their_warnings() {
    let app = TestApp::new().await;
    let terms = json!({
        "type": "scheduled", "amount": {"min": 5000, "max": 15000},
        "recurrence": {"type": "monthly", "interval_count": 3,
                       "on": {"type": "day_of_month", "days": [1], "adjustment": "nearest_weekday"}},
        "validity_period": {"start_date": "2026-01-01", "end_date": "2030-12-31"},
        "max_occurrences": 12,
        "period_limits": {"period": "month", "max_count": 1, "max_amount": 15000,
                          "window": {"mode": "cycle", "anchor": {"day_of_month": 15}}}
    });
    app.moment_accepts_sessions().await;
    let mut body = mandate_body();
    body["amount"] = json!(0);
    body["terms"] = terms.clone();
    let mandate = app.create_mandate(&body).await;
    let sent = app.session_requests("first_in_series").await;
    assert_eq!(sent[0].0["options"]["mandate_options"], terms);
    assert_eq!(mandate["terms"], terms);
    let codes: Vec<&str> = mandate["warnings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["code"].as_str().unwrap())
        .collect();
    assert_eq!(codes, ["card_only_verification", "capitec_pay_hidden"]);

    // Without terms the ceiling is explicit; a verification must say what it may charge.
    let plain = app.create_mandate(&mandate_body()).await;
    assert_eq!(
        plain["terms"],
        json!({"type": "on_demand", "amount": {"max": 5000}})
    );
    let mut verification = mandate_body();
    verification["amount"] = json!(0);
    let refused = app
        .post(
            "/mandates",
            &verification,
            &[("accept", "application/json")],
        )
        .await;
    assert_eq!(refused.problem(422)["field"], "terms");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terms_that_break_moments_rules_are_refused_naming_the_field_and_write_nothing() {
    let app = TestApp::new().await;
    app.moment_accepts_sessions().await;
    for (terms, field) in [
        (json!({"type": "scheduled"}), "terms.recurrence"),
        (json!({"amount": {"min": 200, "max": 100}}), "terms.amount"),
        (
            json!({"amount": {"max": 5000}, "period_limits": {"period": "month", "max_amount": 10}}),
            "terms.period_limits.max_amount",
        ),
        (
            json!({"validity_period": {"start_date": "2026-12-01", "end_date": "2026-01-01"}}),
            "terms.validity_period.end_date",
        ),
        (json!({"amount": {"min": 6000}}), "amount"),
        // Text Postgres cannot store, deep in the objects sent to Moment as given.
        (
            json!({"recurrence": {"type": "daily", "on": {"x": ["\u{0}"]}}}),
            "terms.recurrence.on",
        ),
        (
            json!({"period_limits": {"period": "year", "max_count": 1,
                                     "window": {"mode": "cycle", "anchor": {"a\u{0}": 1}}}}),
            "terms.period_limits.window.anchor",
        ),
        (
            json!({"type": "installment", "terms": {"type": "fixed", "note": "\u{0}"}}),
            "terms.terms",
        ),
    ] {
        let mut body = mandate_body();
        body["terms"] = terms.clone();
        let reply = app
            .post("/mandates", &body, &[("accept", "application/json")])
            .await;
        assert_eq!(reply.problem(422)["field"], field, "{terms}");
    }
    assert_eq!(app.count("mandate").await, 0);
    assert!(app.session_requests("first_in_series").await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_charge_that_breaks_the_terms_is_refused_with_the_numbers_and_never_reaches_moment() {
    let app = TestApp::new().await;
    let mandate = active_with(
        &app,
        5000,
        json!({"amount": {"min": 1000, "max": 10000}, "max_occurrences": 2}),
    )
    .await;
    let above = charge(&app, &mandate, 10001, "above").await;
    let p = above.problem(422);
    assert_eq!(p["type"], "urn:moment-mandates:problem:mandate-terms");
    assert_eq!(
        (
            p["term"].clone(),
            p["limit"].clone(),
            p["requested"].clone()
        ),
        (json!("amount"), json!(10000), json!(10001))
    );
    // The first payment counts: one charge more is allowed, not two.
    assert_eq!(charge(&app, &mandate, 2000, "second").await.status, 201);
    let third = charge(&app, &mandate, 2000, "third").await;
    let p = third.problem(422);
    assert_eq!(
        (p["term"].clone(), p["limit"].clone(), p["used"].clone()),
        (json!("max_occurrences"), json!(2), json!(2))
    );
    assert_eq!(app.session_requests("next_in_series").await.len(), 1);
    assert_eq!(app.count("charge").await, 1);
    // A retry of the accepted charge is still answered from it.
    assert_eq!(
        charge(&app, &mandate, 2000, "second")
            .await
            .header("idempotent-replayed"),
        Some("true")
    );
    let shown = app
        .get(&format!("/mandates/{}", mandate["id"].as_str().unwrap()))
        .await
        .body;
    assert_eq!(shown["ledger"]["occurrences_used"], 2);
    assert_eq!(shown["ledger"]["occurrences_left"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn period_limits_count_the_window_and_a_verification_counts_for_nothing() {
    let app = TestApp::new().await;
    let mandate = active_with(
        &app,
        0,
        json!({"amount": {"max": 10000},
        "period_limits": {"period": "month", "max_count": 1, "max_amount": 10000}}),
    )
    .await;
    assert_eq!(charge(&app, &mandate, 4000, "m-1").await.status, 201);
    let second = charge(&app, &mandate, 4000, "m-2").await;
    let p = second.problem(422);
    assert_eq!(
        (p["term"].clone(), p["limit"].clone(), p["used"].clone()),
        (json!("period_limits.max_count"), json!(1), json!(1))
    );
    let shown = app
        .get(&format!("/mandates/{}", mandate["id"].as_str().unwrap()))
        .await
        .body;
    let w = &shown["ledger"]["window"];
    assert_eq!(
        (w["count"].clone(), w["amount"].clone()),
        (json!(1), json!(4000))
    );
    let today = time::OffsetDateTime::now_utc()
        .to_offset(time::macros::offset!(+2))
        .date();
    assert_eq!(
        w["start"],
        format!("{}-{:02}-01", today.year(), today.month() as u8)
    );
    // Moved out of the window, the charge no longer counts.
    sqlx::query("update charge set billed_at = billed_at - interval '32 days'")
        .execute(&app.db)
        .await
        .unwrap();
    assert_eq!(charge(&app, &mandate, 4000, "m-3").await.status, 201);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_charges_cannot_together_pass_a_limit_each_passes_alone() {
    let app = TestApp::new().await;
    let mandate = active_with(
        &app,
        0,
        json!({"amount": {"max": 10000},
        "period_limits": {"period": "day", "max_count": 3}}),
    )
    .await;
    let keys: Vec<String> = (0..12).map(|i| format!("race-{i}")).collect();
    let replies = join_all(keys.iter().map(|k| charge(&app, &mandate, 100, k))).await;
    let accepted = replies.iter().filter(|r| r.status.is_success()).count();
    let refused = replies
        .iter()
        .filter(|r| r.status == StatusCode::UNPROCESSABLE_ENTITY)
        .count();
    assert_eq!((accepted, refused), (3, 9));
    assert_eq!(app.count("charge").await, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dry_run_answers_with_the_same_problem_and_records_nothing() {
    let app = TestApp::new().await;
    let mandate = active_with(
        &app,
        5000,
        json!({"amount": {"max": 8000},
        "validity_period": {"end_date": "2099-12-31"}}),
    )
    .await;
    let ok = app
        .post(
            "/charges",
            &json!({"mandate_id": mandate["id"], "amount": 8000, "dry_run": true}),
            &[],
        )
        .await;
    assert_eq!(ok.status, 200, "{}", ok.body);
    assert_eq!(ok.body["passes"], true);
    let no = app
        .post(
            "/charges",
            &json!({"mandate_id": mandate["id"], "amount": 9000, "dry_run": true}),
            &[],
        )
        .await;
    let real = charge(&app, &mandate, 9000, "real").await;
    assert_eq!(no.problem(422), real.problem(422));
    assert_eq!(app.count("charge").await, 0);
    assert!(app.session_requests("next_in_series").await.is_empty());

    // Past its validity period, nothing is charged.
    sqlx::query("update mandate set terms = jsonb_set(terms, '{validity_period,end_date}', '\"2020-01-01\"')")
        .execute(&app.db)
        .await
        .unwrap();
    let late = charge(&app, &mandate, 100, "late").await;
    assert_eq!(late.problem(422)["term"], "validity_period");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amounts_too_large_to_add_up_are_past_any_limit_and_never_break_the_ledger() {
    let app = TestApp::new().await;
    // No amount cap, only a monthly total: the largest amount is its own check.
    let capped = active_with(
        &app,
        0,
        json!({"amount": {"min": 100}, "period_limits": {"period": "month", "max_amount": 15000}}),
    )
    .await;
    assert_eq!(charge(&app, &capped, 5000, "some").await.status, 201);
    let huge = charge(&app, &capped, i64::MAX, "huge").await;
    let p = huge.problem(422);
    assert_eq!(
        (p["term"].clone(), p["limit"].clone(), p["used"].clone()),
        (json!("period_limits.max_amount"), json!(15000), json!(5000))
    );
    assert_eq!(app.count("charge").await, 1);

    // A count limit alone: two of the largest amounts are allowed, and the mandate, its ledger
    // and its next charge still answer.
    let counted = active_with(
        &app,
        0,
        json!({"period_limits": {"period": "month", "max_count": 3}}),
    )
    .await;
    for key in ["max-1", "max-2"] {
        assert_eq!(charge(&app, &counted, i64::MAX, key).await.status, 201);
    }
    let shown = app
        .get(&format!("/mandates/{}", counted["id"].as_str().unwrap()))
        .await;
    assert_eq!(shown.status, StatusCode::OK, "{}", shown.body);
    assert_eq!(shown.body["ledger"]["window"]["count"], 2);
    assert_eq!(shown.body["ledger"]["window"]["amount"], i64::MAX);
    assert_eq!(charge(&app, &counted, 100, "small").await.status, 201);
}
