//! The public surface under an adversarial review: what one request can cost, slow clients,
//! the metrics listener, the customer's return, oversized bodies, webhook events that must not
//! pile up or be lost, and the mandate's replay and return URL.

use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::Request;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use wiremock::matchers::{method, path_regex};
use wiremock::{Mock, MockServer, ResponseTemplate};

use moment_mandates::store::{events, subscriptions, webhook_events};
use moment_mandates::worker;

use crate::support::app::{
    TestApp, completed_first_in_series, mandate_body, moment_fails, now_secs,
};
use crate::support::db::TestDb;
use crate::support::process::{serve_with, shut_down};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_with_too_many_or_too_long_signatures_is_refused_before_any_work() {
    let app = TestApp::new().await;
    let body = json!({"id": "evt_sig", "type": "payment.succeeded", "data": {}}).to_string();
    let ts = now_secs();
    let good = app.sign("msg_sig", ts, &body);
    // Sixteen entries are looked at, the good one last among them.
    let sixteen = format!("{}{good}", "v1,AAAA ".repeat(15));
    let reply = app
        .post_raw_webhook(
            &[
                ("webhook-id", "msg_sig"),
                ("webhook-timestamp", &ts.to_string()),
                ("webhook-signature", &sixteen),
            ],
            body.clone(),
        )
        .await;
    assert_eq!(reply.status, 204, "{}", reply.body);
    // Seventeen are refused, even with the good one among them.
    let seventeen = format!("{}{good}", "v1,AAAA ".repeat(16));
    for signature in [seventeen, format!("{} {good}", "v1,".repeat(20_000))] {
        let started = Instant::now();
        let reply = app
            .post_raw_webhook(
                &[
                    ("webhook-id", "msg_sig_2"),
                    ("webhook-timestamp", &ts.to_string()),
                    ("webhook-signature", &signature),
                ],
                body.clone(),
            )
            .await;
        reply.problem(400);
        assert!(started.elapsed() < Duration::from_secs(1));
    }
    assert_eq!(app.count("webhook_event").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_verified_session_event_that_cannot_be_read_is_kept_as_unreadable() {
    let app = TestApp::new().await;
    for data in [
        json!({"id": 5}),
        json!("not a session"),
        json!({"id": "ps_1", "amount": "many"}),
    ] {
        assert_eq!(
            app.post_webhook("payment_session.completed", &data)
                .await
                .status,
            204
        );
    }
    // Fields we do not use never make an event unreadable.
    let tolerated = json!({"id": "ps_2", "type": "next_in_series", "status": "active",
                           "presentation_mode": 7, "something_new": {"a": [1]}});
    app.post_webhook("payment_session.updated", &tolerated)
        .await;
    let outcomes: Vec<String> =
        sqlx::query_scalar("select outcome from webhook_event order by received_at")
            .fetch_all(&app.db)
            .await
            .unwrap();
    assert_eq!(
        outcomes,
        ["unreadable", "unreadable", "unreadable", "deferred"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deferred_events_are_paged_orphaned_after_72_hours_and_old_ones_deleted() {
    let app = TestApp::new().await;
    // 150 deferred events whose session nobody knows, older than a newer one that applies.
    for i in 0..150 {
        let data = json!({"id": format!("ps_nobody_{i}"), "type": "first_in_series",
                          "status": "expired", "payment_status": "unpaid"});
        app.post_webhook("payment_session.expired", &data).await;
    }
    sqlx::query("update webhook_event set received_at = received_at - interval '1 hour'")
        .execute(&app.db)
        .await
        .unwrap();
    app.moment_accepts_sessions().await;
    let mandate = app.create_mandate(&mandate_body()).await;
    let mut completed = completed_first_in_series(&mandate);
    completed["external_reference"] = json!(null);
    // Delivered as if before our write: deferred, by session only.
    sqlx::query("update mandate set session_id = null")
        .execute(&app.db)
        .await
        .unwrap();
    app.post_webhook("payment_session.completed", &completed)
        .await;
    sqlx::query("update mandate set session_id = $1")
        .bind(mandate["session_id"].as_str().unwrap())
        .execute(&app.db)
        .await
        .unwrap();
    let tally = worker::run_once(&app.state).await.unwrap();
    assert_eq!(
        tally.events_applied, 1,
        "the newer event waited behind 150 older ones"
    );
    let shown = app
        .get(&format!("/mandates/{}", mandate["id"].as_str().unwrap()))
        .await
        .body;
    assert_eq!(shown["status"], "active");

    sqlx::query("update webhook_event set received_at = now() - interval '73 hours' where outcome = 'deferred'")
        .execute(&app.db)
        .await
        .unwrap();
    let tally = worker::run_once(&app.state).await.unwrap();
    assert_eq!(tally.events_orphaned, 150);
    sqlx::query("update webhook_event set received_at = now() - interval '91 days' where outcome in ('orphaned', 'applied')")
        .execute(&app.db)
        .await
        .unwrap();
    let tally = worker::run_once(&app.state).await.unwrap();
    assert_eq!(tally.events_deleted, 151);
    assert_eq!(app.count("webhook_event").await, 0);
}

/// Every pass of the worker purges old events and old webhook events. A purge finds the old
/// rows from the oldest end of its index and deletes them by their key, whatever Postgres's
/// statistics: reading a table from its start (which it chose for the events, without
/// statistics, while the purge had no order) costs a whole table every pass.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_retention_purges_read_from_the_oldest_end_not_the_whole_table() {
    let db = TestDb::new().await;
    // 40,000 rows in each table, not analyzed since (as a table that grew since, or on a
    // Postgres without autovacuum; kept so for the test): 1,600 past retention, the rest an
    // hour old.
    without_statistics(&db, "event").await;
    without_statistics(&db, "webhook_event").await;
    sqlx::query(
        "insert into event (id, type, resource_type, resource_id, sequence, data, created_at)
         select gen_random_uuid(), 'charge.created', 'charge', gen_random_uuid(), 1, '{}',
                now() - case when g % 25 = 0 then interval '31 days' else interval '1 hour' end
         from generate_series(1, 40000) g",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    sqlx::query(
        "insert into webhook_event (webhook_id, event_type, payload, outcome, received_at)
         select 'msg_' || g, 'payment.succeeded', '{}', 'ignored',
                now() - case when g % 25 = 0 then interval '91 days' else interval '1 hour' end
         from generate_series(1, 40000) g",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    let mut tx = db.pool.begin().await.unwrap();
    let before = [
        read(&mut tx, "event").await,
        read(&mut tx, "webhook_event").await,
    ];
    let mut deleted = Vec::new();
    for _ in 0..3 {
        deleted.push((
            events::delete_old(&mut *tx, 30.0, 1000).await.unwrap(),
            webhook_events::delete_old(&mut *tx, 90.0, 1000)
                .await
                .unwrap(),
        ));
    }
    assert_eq!(
        deleted,
        [(1000, 1000), (600, 600), (0, 0)],
        "the old rows, a batch at a time, then none"
    );
    let after = [
        read(&mut tx, "event").await,
        read(&mut tx, "webhook_event").await,
    ];
    assert_eq!(
        (after[0].0 - before[0].0, after[1].0 - before[1].0),
        (0, 0),
        "sequential scans of event and webhook_event by the purges"
    );
    tx.commit().await.unwrap();
    let left: (i64, i64) =
        sqlx::query_as("select (select count(*) from event), (select count(*) from webhook_event)")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(left, (38_400, 38_400));
}

/// Every pass of the scheduler announces the charges coming up within the notice. It reads
/// only the subscriptions whose next period is not yet announced, through their own index:
/// not every subscription (a sequential scan) nor every active one (the status index).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn announcing_upcoming_charges_reads_only_the_subscriptions_not_yet_announced() {
    let db = TestDb::new().await;
    without_statistics(&db, "subscription").await;
    let mandate = uuid::Uuid::new_v4();
    sqlx::query(
        "insert into mandate (id, status, amount, currency, customer_name, customer_email,
                              request_hash)
         values ($1, 'active', 100000, 'ZAR', 'A Customer', 'a@example.test', 'test')",
    )
    .bind(mandate)
    .execute(&db.pool)
    .await
    .unwrap();
    // 20,000 active subscriptions, as a month of them with a three-day notice: 30 due within
    // 30 hours and not announced yet; 1,970 due within three days and announced; the rest due
    // in 4 to 30 days, their notice not come yet.
    sqlx::query(
        "insert into subscription (id, mandate_id, amount, currency, schedule, request_hash,
                                   next_period, notified_period, next_charge_at)
         select gen_random_uuid(), $1, 100, 'ZAR', '{}', 'test', 1,
                case when g > 30 and g <= 2000 then 1 else 0 end,
                now() + case when g <= 30 then make_interval(hours => g)
                             when g <= 2000 then make_interval(hours => g % 72)
                             else make_interval(hours => 96 + g % 624) end
         from generate_series(1, 20000) g",
    )
    .bind(mandate)
    .execute(&db.pool)
    .await
    .unwrap();
    let within = time::OffsetDateTime::now_utc() + time::Duration::days(3);
    let mut tx = db.pool.begin().await.unwrap();
    let before = read(&mut tx, "subscription").await;
    let mut announced = Vec::new();
    for _ in 0..2 {
        announced.push(
            subscriptions::announce_upcoming(&mut *tx, within)
                .await
                .unwrap(),
        );
    }
    let after = read(&mut tx, "subscription").await;
    tx.commit().await.unwrap();
    assert_eq!(announced, [30, 0], "the 30 within the notice, once");
    let rows = after.1 - before.1;
    assert!(
        rows <= 30,
        "the announcements read {rows} subscriptions for 30 to announce"
    );
    let events: i64 = sqlx::query_scalar(
        "select count(*) from event where type = 'subscription.charge_upcoming'",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(events, 30);
}

/// Keeps `table` without statistics for the test, as a table that grew since it was last
/// analyzed (or on a Postgres without autovacuum), where a plan that needs them goes wrong.
async fn without_statistics(db: &TestDb, table: &str) {
    sqlx::query(&format!(
        "alter table {table} set (autovacuum_enabled = off)"
    ))
    .execute(&db.pool)
    .await
    .unwrap();
}

/// The sequential scans of `table` so far, and the rows read from it (by those scans and
/// through indexes). Read twice inside one transaction, the difference is that transaction's
/// own: the view also holds the connection's earlier reads not yet reported (the migrations'
/// index builds), and nothing is reported mid-transaction.
async fn read(tx: &mut sqlx::PgConnection, table: &str) -> (i64, i64) {
    sqlx::query_as(
        "select seq_scan, coalesce(seq_tup_read, 0) + coalesce(idx_tup_fetch, 0)
         from pg_stat_xact_user_tables where relname = $1",
    )
    .bind(table)
    .fetch_optional(&mut *tx)
    .await
    .unwrap()
    .unwrap_or((0, 0))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_for_a_mandate_that_expired_without_a_checkout_answers_its_state() {
    let app = TestApp::new().await;
    moment_fails(&app, 503, None).await;
    let body = mandate_body();
    let first = app
        .post("/mandates", &body, &[("idempotency-key", "expiring")])
        .await;
    first.problem(503);
    sqlx::query("update mandate set created_at = now() - interval '25 hours'")
        .execute(&app.db)
        .await
        .unwrap();
    worker::run_once(&app.state).await.unwrap();
    let replay = app
        .post("/mandates", &body, &[("idempotency-key", "expiring")])
        .await;
    assert_eq!(replay.status, 200, "{}", replay.body);
    assert_eq!(replay.body["status"], "expired");
    assert_eq!(replay.header("idempotent-replayed"), Some("true"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_return_url_is_kept_exactly_as_given() {
    let app = TestApp::new().await;
    app.moment_accepts_sessions().await;
    let mut body = mandate_body();
    body["return_url"] = json!("https://shop.test/done/?next=/");
    let mandate = app.create_mandate(&body).await;
    let id = mandate["id"].as_str().unwrap();
    let back = app.get_public(&format!("/mandates/{id}/return")).await;
    let location = back.header("location").unwrap();
    assert!(
        location.starts_with("https://shop.test/done/?next=/&mandate_id="),
        "{location}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_customer_return_asks_moment_at_most_once_every_few_seconds() {
    let app = TestApp::new().await;
    app.moment_accepts_sessions().await;
    let mandate = app.create_mandate(&mandate_body()).await;
    let id = mandate["id"].as_str().unwrap();
    Mock::given(method("GET"))
        .and(path_regex("^/collect/payment_sessions/.+"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "id": mandate["session_id"], "type": "first_in_series", "status": "active",
            "payment_status": "unpaid"})))
        .expect(1)
        .mount(&app.moment)
        .await;
    let uri = format!("/mandates/{id}/return");
    let returns = (0..30).map(|_| app.get_public(&uri));
    for reply in futures::future::join_all(returns).await {
        assert_eq!(reply.status, 303);
    }
    app.moment.verify().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_bodies_get_413_and_close_the_connection_on_every_route() {
    let app = TestApp::new().await;
    let big = "x".repeat(moment_mandates::config::BODY_LIMIT + 1);
    for uri in ["/charges", "/mandates", "/webhooks/moment"] {
        let reply = app
            .send(
                Request::post(uri)
                    .header("content-type", "application/json")
                    .header(
                        "authorization",
                        format!("Bearer {}", crate::support::app::API_KEY),
                    )
                    .header("idempotency-key", "big")
                    .body(Body::from(big.clone()))
                    .unwrap(),
            )
            .await;
        reply.problem(413);
        assert_eq!(reply.header("connection"), Some("close"), "{uri}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn made_up_methods_share_one_label_and_every_metric_says_what_it_counts() {
    let app = TestApp::new().await;
    for i in 0..5 {
        let m = format!("MADEUP{i}");
        app.send(
            Request::builder()
                .method(m.as_str())
                .uri("/healthz")
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    }
    let text = app.metrics().await.body.as_str().unwrap().to_owned();
    assert!(!text.contains("MADEUP"), "a made-up method became a label");
    assert!(text.contains("method=\"other\""));
    for line in text.lines().filter(|l| l.starts_with("# TYPE ")) {
        let name = line.split(' ').nth(2).unwrap();
        assert!(
            text.contains(&format!("# HELP {name} ")),
            "{name} has no HELP"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_sent_request_heads_are_cut_off_and_connections_are_capped() {
    let test_db = TestDb::new().await;
    let moment = MockServer::start().await;
    let (base, stop, handle) = serve_with(&test_db.url, &moment.uri(), |c| {
        // Long enough that the third client is refused before the two are cut off.
        c.header_read_timeout = Duration::from_secs(5);
        c.max_connections = 2;
    })
    .await;
    let addr = base.trim_start_matches("http://").to_owned();
    // Two clients start a request head and never finish it: they hold both slots ...
    let mut slow = Vec::new();
    for _ in 0..2 {
        let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
        s.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n")
            .await
            .unwrap();
        slow.push(s);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let http = reqwest::Client::new();
    let blocked = http
        .get(format!("{base}/healthz"))
        .timeout(Duration::from_millis(500))
        .send()
        .await;
    assert!(
        blocked.is_err(),
        "a third connection was served beyond the cap"
    );
    // ... until the header timeout closes them.
    for mut s in slow {
        let mut rest = Vec::new();
        let closed = tokio::time::timeout(Duration::from_secs(15), s.read_to_end(&mut rest)).await;
        assert!(closed.is_ok(), "a half-sent head was kept open");
    }
    let ok = http.get(format!("{base}/healthz")).send().await.unwrap();
    assert_eq!(ok.status(), 200);
    shut_down(stop, handle).await;
}
