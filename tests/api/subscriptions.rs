//! Subscriptions that bill themselves: the schedule, exactly once per period, dunning, and the
//! test clock that fast-forwards the service and the simulator together.

use serde_json::{Value, json};
use sqlx::Row;
use time::{Date, Duration, Month, OffsetDateTime, Weekday};

use crate::support::stack::{Stack, start_stack};

const CARD: &str = "4242424242424242";
/// Later charges declined `insufficient_funds` until funded at the simulator.
const BROKE: &str = "4000000000009953";
/// Later charges declined as a lost card.
const LOST: &str = "4000000000009987";

fn sast(t: OffsetDateTime) -> Date {
    t.to_offset(time::macros::offset!(+2)).date()
}

/// An active mandate with `terms`, paid with `card`.
async fn mandate(stack: &Stack, key: &str, card: &str, terms: Value) -> Value {
    let r = stack
        .post(
            "/mandates",
            &json!({"amount": 0, "currency": "ZAR", "terms": terms,
                    "customer": {"name": "Thandi Example", "email": "thandi@example.com"}}),
            key,
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    stack.pay(&r.body, card);
    stack
        .wait_status(
            &format!("/mandates/{}", r.body["id"].as_str().unwrap()),
            "active",
        )
        .await
}

async fn subscribe(stack: &Stack, key: &str, body: Value) -> Value {
    let r = stack.post("/subscriptions", &body, key).await;
    assert_eq!(r.status, 201, "{}", r.body);
    r.body
}

async fn advance(stack: &Stack, days: u32) -> Value {
    let r = stack
        .post(
            "/test-clock/advance",
            &json!({"days": days}),
            &format!("advance-{}", uuid::Uuid::new_v4()),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    r.body
}

/// The subscription's charges: (period, attempt, status, billed_at), in order.
async fn charges_of(stack: &Stack, sub: &Value) -> Vec<(i32, i32, String, OffsetDateTime)> {
    let id: uuid::Uuid = sub["id"].as_str().unwrap().parse().unwrap();
    sqlx::query(
        "select period, attempt, status, billed_at from charge where subscription_id = $1
         order by period, attempt",
    )
    .bind(id)
    .fetch_all(&stack.db)
    .await
    .unwrap()
    .iter()
    .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
    .collect()
}

fn monthly_terms() -> Value {
    json!({"type": "scheduled", "amount": {"max": 9900},
           "recurrence": {"type": "monthly", "interval_count": 1,
                          "on": {"type": "day_of_month", "days": [31]}}})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_monthly_subscription_on_the_31st_is_charged_once_a_month_on_the_last_day() {
    let _ = tracing_subscriber::fmt().with_env_filter("warn").try_init();
    let stack = start_stack(|_| {}).await;
    let m = mandate(&stack, "m", CARD, monthly_terms()).await;
    let sub = subscribe(
        &stack,
        "s",
        json!({"mandate_id": m["id"], "amount": 9900, "charge_time": "09:00"}),
    )
    .await;
    assert_eq!(sub["schedule"]["day_of_month"], 31);
    assert_eq!(sub["preview"].as_array().unwrap().len(), 12);
    let start = sast(OffsetDateTime::now_utc());
    let ran = advance(&stack, 100).await;
    let charges = charges_of(&stack, &sub).await;
    // Independently: the last day of each month from the start on, up to 100 days later.
    let mut expected = Vec::new();
    let mut d = start;
    while d <= start + Duration::days(100) {
        if d.next_day().unwrap().month() != d.month() {
            expected.push(d);
        }
        d = d.next_day().unwrap();
    }
    let got: Vec<Date> = charges.iter().map(|c| sast(c.3)).collect();
    assert_eq!(got, expected, "{ran}");
    assert!(charges.iter().all(|c| c.2 == "succeeded" && c.1 == 0));
    for c in &charges {
        let local = c.3.to_offset(time::macros::offset!(+2));
        assert_eq!(
            (local.hour(), local.minute()),
            (9, 0),
            "charged at 09:00 SAST"
        );
    }
    // Advancing again charges nothing twice.
    advance(&stack, 1).await;
    assert_eq!(charges_of(&stack, &sub).await.len(), charges.len());
    let shown = stack
        .get(&format!("/subscriptions/{}", sub["id"].as_str().unwrap()))
        .await
        .body;
    assert_eq!(shown["status"], "active");
    assert_eq!(shown["next_period"], charges.len());
}
