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

/// One world of records for `a_batch_stores_and_moves_exactly_as_one_delivery_at_a_time`:
/// mandates and charges in every state a delivery can meet, named by role.
async fn world(db: &sqlx::PgPool, tag: &str) -> Vec<(String, uuid::Uuid)> {
    use uuid::Uuid;
    let mut roles = Vec::new();
    for (role, status) in [
        ("mA", "pending"),
        ("mB", "pending"),
        ("mC", "active"),
        ("mD", "pending"),
        ("mE", "pending"),
    ] {
        let id = Uuid::now_v7();
        sqlx::query(
            "insert into mandate (id, status, amount, currency, customer_name, customer_email,
                                  request_hash, session_id)
             values ($1, $2, 1000, 'ZAR', 'n', 'e@x.test', 'h', $3)",
        )
        .bind(id)
        .bind(status)
        .bind(format!("{tag}_{role}"))
        .execute(db)
        .await
        .unwrap();
        roles.push((role.to_owned(), id));
    }
    let mandate = roles[0].1;
    for (role, status) in [
        ("cA", "processing"),
        ("cB", "failed"),
        ("cC", "succeeded"),
        ("cD", "processing"),
    ] {
        let id = Uuid::now_v7();
        sqlx::query(
            "insert into charge (id, mandate_id, status, amount, currency, customer_id,
                                 payment_method_id, idempotency_key, request_hash, session_id)
             values ($1, $2, $3, 500, 'ZAR', 'cus_1', 'pmt_1', $4, 'h', $5)",
        )
        .bind(id)
        .bind(mandate)
        .bind(status)
        .bind(format!("{tag}_{role}_key"))
        .bind(format!("{tag}_{role}"))
        .execute(db)
        .await
        .unwrap();
        roles.push((role.to_owned(), id));
    }
    roles
}

/// The deliveries of one world: what each record meets, in every outcome there is.
fn world_deliveries(
    tag: &str,
    roles: &[(String, uuid::Uuid)],
) -> Vec<moment_mandates::store::webhook_events::Delivery> {
    use moment_mandates::moment::wire::Event;
    use moment_mandates::workflow::events::delivery;
    let id = |role: &str| roles.iter().find(|(r, _)| r == role).unwrap().1.to_string();
    let first = |role: &str, status: &str, paid: bool, amount: i64, echo: bool| {
        let mut d = json!({
            "id": format!("{tag}_{role}"), "type": "first_in_series", "status": status,
            "payment_status": if paid { "paid" } else { "unpaid" },
            "payment_outcome": if paid { "paid" } else { "unpaid" },
            "amount": amount, "currency": "ZAR", "customer_id": format!("cus_{role}"),
            "payment_method_id": format!("pmt_{role}"), "payment_id": format!("pay_{role}"),
        });
        if echo {
            d["external_reference"] = json!(id(role));
        }
        d
    };
    let next = |role: &str, paid: bool| {
        let mut d = json!({
            "id": format!("{tag}_{role}"), "type": "next_in_series", "status": "completed",
            "payment_status": if paid { "paid" } else { "unpaid" },
            "payment_outcome": if paid { "paid" } else { "unpaid" },
            "amount": 500, "currency": "ZAR", "payment_id": format!("pay_{role}"),
            "external_reference": id(role),
        });
        if !paid {
            d["last_payment_error"] = json!({"error_code": "card_declined",
                "decline_code": "insufficient_funds", "message": "declined"});
        }
        d
    };
    let mut unknown = first("mX", "completed", true, 1000, false);
    unknown["external_reference"] = json!(uuid::Uuid::now_v7().to_string());
    let mut live = first("mE", "completed", true, 1000, true);
    live["mode"] = json!("live");
    let events = [
        (
            "payment_session.completed",
            first("mA", "completed", true, 1000, true),
        ),
        (
            "payment_session.completed",
            first("mB", "completed", true, 1000, false),
        ),
        (
            "payment_session.completed",
            first("mC", "completed", true, 1000, true),
        ),
        (
            "payment_session.completed",
            first("mD", "completed", true, 999, true),
        ),
        ("payment_session.completed", live),
        (
            "payment_session.expired",
            first("mE", "expired", false, 1000, true),
        ),
        ("payment_session.completed", next("cA", true)),
        ("payment_session.completed", next("cB", true)),
        ("payment_session.completed", next("cC", false)),
        ("payment_session.completed", next("cD", false)),
        ("payment_session.completed", unknown),
        ("payment.succeeded", json!({"id": format!("pay_{tag}")})),
        ("payment_session.completed", json!({"id": 7})),
        (
            "payment_session.completed",
            first("mA", "completed", true, 1000, true),
        ),
    ];
    events
        .into_iter()
        .enumerate()
        .map(|(i, (kind, data))| {
            // The last one repeats the first's `webhook-id`: a duplicate.
            let webhook_id = format!("{tag}_w{}", if i == 13 { 0 } else { i });
            let payload = json!({"id": format!("evt_{webhook_id}"), "type": kind, "data": data});
            let event: Event = serde_json::from_value(payload.clone()).unwrap();
            delivery(&webhook_id, payload.to_string(), &event, "test")
        })
        .collect()
}

/// What a world looks like afterwards, with its tag and ids replaced by roles.
async fn world_state(db: &sqlx::PgPool, tag: &str, roles: &[(String, uuid::Uuid)]) -> Vec<String> {
    let mut state = Vec::new();
    for (role, id) in roles {
        let row: (String, Option<String>, Option<String>, Option<Value>) = sqlx::query_as(
            "select status, customer_id, payment_id, failure from mandate where id = $1
             union all
             select status, null, payment_id, failure from charge where id = $1",
        )
        .bind(id)
        .fetch_one(db)
        .await
        .unwrap();
        let events: Vec<(String, i64)> = sqlx::query_as(
            "select type, sequence from event where resource_id = $1 order by sequence",
        )
        .bind(id)
        .fetch_all(db)
        .await
        .unwrap();
        state.push(format!("{role}: {row:?} {events:?}"));
    }
    let stored: Vec<(String, String, bool)> = sqlx::query_as(
        "select webhook_id, outcome, applied_at is not null from webhook_event
         where webhook_id like $1 || '\\_%' order by webhook_id",
    )
    .bind(tag)
    .fetch_all(db)
    .await
    .unwrap();
    state.extend(stored.iter().map(|s| format!("{s:?}")));
    state.into_iter().map(|s| s.replace(tag, "T")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_stores_and_moves_exactly_as_one_delivery_at_a_time() {
    use moment_mandates::store::webhook_events::{Recorded, record_batch, record_one};
    let app = TestApp::new().await;
    let db = &app.db;
    let one = world(db, "qz1").await;
    let batch = world(db, "qz2").await;
    let alone = world_deliveries("qz1", &one);
    let together = world_deliveries("qz2", &batch);
    // The duplicate's first delivery is stored before, in both worlds.
    record_one(db, &alone[0]).await.unwrap();
    record_one(db, &together[0]).await.unwrap();

    let mut one_by_one = Vec::new();
    for d in &alone[1..] {
        one_by_one.push(record_one(db, d).await.unwrap());
    }
    let refs: Vec<_> = together[1..].iter().collect();
    let batched = record_batch(db, &refs).await.unwrap();

    let name = |r: &Option<Recorded>, roles: &[(String, uuid::Uuid)]| {
        r.as_ref().map(|r| {
            let moved = r
                .moved
                .map(|m| roles.iter().find(|(_, id)| *id == m).unwrap().0.clone());
            (r.outcome, moved, r.was.clone())
        })
    };
    let want: Vec<_> = one_by_one.iter().map(|r| name(r, &one)).collect();
    let got: Vec<_> = batched.iter().map(|r| name(r, &batch)).collect();
    assert_eq!(got, want);
    // Every kind of answer is in there, so the comparison covers each.
    let outcomes: std::collections::HashSet<String> = want
        .iter()
        .map(|w| {
            w.as_ref()
                .map_or("duplicate".into(), |w| w.0.as_str().to_owned())
        })
        .collect();
    for o in [
        "applied",
        "mismatch",
        "deferred",
        "ignored",
        "unreadable",
        "duplicate",
    ] {
        assert!(outcomes.contains(o), "{o} missing from {outcomes:?}");
    }
    assert!(
        want.iter()
            .flatten()
            .any(|w| w.2.as_deref() == Some("failed"))
    );
    assert_eq!(
        world_state(db, "qz2", &batch).await,
        world_state(db, "qz1", &one).await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_webhooks_share_commits_and_each_moves_its_mandate_once() {
    use futures::StreamExt as _;
    let app = TestApp::new().await;
    let mut mandates = Vec::new();
    for i in 0..300 {
        let id = uuid::Uuid::now_v7();
        sqlx::query(
            "insert into mandate (id, amount, currency, customer_name, customer_email,
                                  request_hash, session_id)
             values ($1, 1000, 'ZAR', 'n', 'e@x.test', 'h', $2)",
        )
        .bind(id)
        .bind(format!("ps_group_{i}"))
        .execute(&app.db)
        .await
        .unwrap();
        mandates.push(
            json!({"id": id.to_string(), "session_id": format!("ps_group_{i}"),
                             "amount": 1000, "currency": "ZAR", "customer_id": format!("cus_{i}")}),
        );
    }
    // Each completion delivered twice under its id, and its `payment.succeeded` beside it.
    let mut posts = Vec::new();
    for (i, m) in mandates.iter().enumerate() {
        for attempt in 0..2 {
            posts.push((
                format!("msg_group_{i}"),
                "payment_session.completed",
                completed_first_in_series(m),
                attempt,
            ));
        }
        posts.push((
            format!("msg_paid_{i}"),
            "payment.succeeded",
            json!({"id": format!("pay_{i}")}),
            0,
        ));
    }
    let statuses: Vec<StatusCode> = futures::stream::iter(&posts)
        .map(|(id, kind, data, _)| async { app.post_event(id, kind, data).await.status })
        .buffer_unordered(64)
        .collect()
        .await;
    assert!(
        statuses.iter().all(|s| *s == StatusCode::NO_CONTENT),
        "{statuses:?}"
    );

    let active: i64 = sqlx::query_scalar(
        "select count(*) from mandate where status = 'active' and payment_method_id is not null",
    )
    .fetch_one(&app.db)
    .await
    .unwrap();
    assert_eq!(active, 300);
    let events: i64 =
        sqlx::query_scalar("select count(*) from event where type = 'mandate.active'")
            .fetch_one(&app.db)
            .await
            .unwrap();
    assert_eq!(events, 300, "one event per move");
    let (stored, commits): (i64, i64) =
        sqlx::query_as("select count(*), count(distinct xmin::text) from webhook_event")
            .fetch_one(&app.db)
            .await
            .unwrap();
    assert_eq!(
        stored, 600,
        "each delivery stored once, duplicates not at all"
    );
    assert!(
        commits < stored / 2,
        "{stored} deliveries took {commits} commits: arriving together, they should share them"
    );
}
