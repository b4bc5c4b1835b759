//! The simulator holds Moment's mandate terms too: the same breaches the service refuses are
//! refused by the simulator when the service's own check is switched off (a test-only seam),
//! and a sequence of charges the service accepts is never refused by the simulator.

use proptest::prelude::*;
use proptest::test_runner::{Config as PropConfig, TestRunner};
use serde_json::{Value, json};

use crate::support::app::eventually;
use crate::support::stack::{Stack, start_stack};

const CARD: &str = "4242424242424242";

/// An active mandate with `terms` and first payment `amount`, paid at the simulator.
async fn mandate_with(stack: &Stack, key: &str, amount: i64, terms: Value) -> Value {
    let r = stack
        .post(
            "/mandates",
            &json!({"amount": amount, "currency": "ZAR", "terms": terms,
                    "customer": {"name": "Thandi Example", "email": "thandi@example.com"}}),
            key,
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    stack.pay(&r.body, CARD);
    stack
        .wait_status(
            &format!("/mandates/{}", r.body["id"].as_str().unwrap()),
            "active",
        )
        .await
}

async fn charge(stack: &Stack, mandate: &Value, amount: i64, key: &str, dry: bool) -> (u16, Value) {
    let r = stack
        .post(
            "/charges",
            &json!({"mandate_id": mandate["id"], "amount": amount, "dry_run": dry}),
            key,
        )
        .await;
    (r.status.as_u16(), r.body)
}

/// The charge once it has left `pending`/`processing`.
async fn settled(stack: &Stack, charge: &Value) -> Value {
    let path = format!("/charges/{}", charge["id"].as_str().unwrap());
    eventually(&format!("{path} to settle"), async || {
        !matches!(
            stack.get(&path).await.body["status"].as_str(),
            Some("pending" | "processing")
        )
    })
    .await;
    stack.get(&path).await.body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_local_check_off_the_simulator_refuses_the_same_breaches_by_the_same_term() {
    let stack = start_stack(|o| o.local_terms_check = false).await;
    let tomorrow = (time::OffsetDateTime::now_utc().to_offset(time::macros::offset!(+2))
        + time::Duration::days(1))
    .date();
    // (terms, first payment, charges that pass, the breaching charge, the term it breaks)
    let cases = [
        (
            json!({"amount": {"min": 1000, "max": 9000}}),
            5000,
            vec![],
            9001,
            "amount",
        ),
        (
            json!({"amount": {"max": 9000}, "max_occurrences": 2}),
            5000,
            vec![100],
            100,
            "max_occurrences",
        ),
        (
            json!({"amount": {"max": 9000}, "period_limits": {"period": "month", "max_count": 2}}),
            0,
            vec![100, 100],
            100,
            "period_limits.max_count",
        ),
        (
            json!({"amount": {"max": 9000}, "period_limits": {"period": "week", "max_amount": 9000}}),
            4000,
            vec![3000],
            2001,
            "period_limits.max_amount",
        ),
        (
            json!({"amount": {"max": 9000}, "validity_period": {"start_date": tomorrow.to_string()}}),
            0,
            vec![],
            100,
            "validity_period",
        ),
    ];
    for (i, (terms, first, passing, breach, term)) in cases.into_iter().enumerate() {
        let mandate = mandate_with(&stack, &format!("m-{i}"), first, terms.clone()).await;
        for (j, amount) in passing.into_iter().enumerate() {
            let (status, body) =
                charge(&stack, &mandate, amount, &format!("ok-{i}-{j}"), false).await;
            assert_eq!(status, 201, "{terms}: {body}");
        }
        // The service's own check (a dry run still makes it) names the term…
        let (status, problem) = charge(&stack, &mandate, breach, &format!("dry-{i}"), true).await;
        assert_eq!(
            (status, problem["term"].as_str()),
            (422, Some(term)),
            "{terms}"
        );
        // …and Moment, reached with the check off, refuses the charge for the same term.
        let (_, sent) = charge(&stack, &mandate, breach, &format!("breach-{i}"), false).await;
        let after = settled(&stack, &sent).await;
        assert_eq!(after["status"], "failed", "{terms}: {after}");
        let expected = format!("mandate_{}", term.replace('.', "_"));
        assert_eq!(
            after["failure"]["code"],
            expected.as_str(),
            "{terms}: {after}"
        );
        assert_eq!(after["failure"]["status"], 422);
    }
}

/// One generated case: terms with counted limits, and the amounts charged in turn.
fn case() -> impl Strategy<Value = (i64, i64, u32, u32, i64, Vec<i64>)> {
    (
        0i64..=2,       // first payment: 0 (a verification) or a payment
        1000i64..=5000, // amount.max
        1u32..=4,       // max_occurrences
        1u32..=3,       // period_limits.max_count
        0i64..=10_000,  // extra room in period_limits.max_amount above amount.max
        proptest::collection::vec(1i64..=6000, 1..7),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn charges_the_service_accepts_are_never_refused_by_the_simulator_for_the_terms() {
    let stack = start_stack(|_| {}).await;
    let handle = tokio::runtime::Handle::current();
    let mut runner = TestRunner::new(PropConfig {
        cases: 12,
        failure_persistence: None,
        ..PropConfig::default()
    });
    let n = std::sync::atomic::AtomicU32::new(0);
    let result = tokio::task::block_in_place(|| {
        runner.run(&case(), |(first, max, occurrences, count, room, amounts)| {
            let case = n.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let stack = &stack;
            handle.block_on(async move {
                let terms = json!({"amount": {"max": max}, "max_occurrences": occurrences,
                    "period_limits": {"period": "month", "max_count": count, "max_amount": max + room}});
                let first = if first == 0 { 0 } else { max.min(1000) };
                let mandate = mandate_with(stack, &format!("p-{case}"), first, terms.clone()).await;
                let mut accepted = Vec::new();
                for (i, amount) in amounts.iter().enumerate() {
                    let (status, body) =
                        charge(stack, &mandate, *amount, &format!("p-{case}-{i}"), false).await;
                    match status {
                        201 | 202 => accepted.push(body),
                        422 => assert_eq!(body["type"], "urn:moment-mandates:problem:mandate-terms"),
                        other => panic!("{terms}: {other} {body}"),
                    }
                }
                for c in &accepted {
                    let after = settled(stack, c).await;
                    prop_assert_eq!(&after["status"], "succeeded", "{}: {}", terms, after);
                }
                Ok(())
            })
        })
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_checkout_states_the_consent_and_offers_capitec_pay_only_for_its_recurrences() {
    let stack = start_stack(|_| {}).await;
    let page = async |key: &str, amount: i64, terms: Value| {
        let r = stack
            .post(
                "/mandates",
                &json!({"amount": amount, "currency": "ZAR", "terms": terms,
                        "customer": {"name": "Thandi Example", "email": "thandi@example.com"}}),
                key,
            )
            .await;
        assert_eq!(r.status, 201, "{}", r.body);
        let url = r.body["checkout_url"].as_str().unwrap().to_owned();
        stack
            .http
            .get(url)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    };
    let monthly = page(
        "monthly",
        5000,
        json!({"type": "scheduled", "amount": {"min": 5000, "max": 15000}, "max_occurrences": 12,
               "recurrence": {"type": "monthly", "interval_count": 1},
               "validity_period": {"end_date": "2030-12-31"}}),
    )
    .await;
    for words in [
        "R 50.00 to R 150.00 a charge",
        "Once a month",
        "Up to 12 payments",
        "Until 2030-12-31",
        "Capitec Pay",
    ] {
        assert!(monthly.contains(words), "{words} missing from {monthly}");
    }
    let quarterly = page(
        "quarterly",
        5000,
        json!({"type": "scheduled", "amount": {"max": 15000},
               "recurrence": {"type": "monthly", "interval_count": 3}}),
    )
    .await;
    assert!(quarterly.contains("Every 3 months"));
    assert!(!quarterly.contains("Capitec Pay"), "{quarterly}");
    let verification = page(
        "verify",
        0,
        json!({"amount": {"max": 15000}, "recurrence": {"type": "monthly", "interval_count": 1}}),
    )
    .await;
    assert!(
        !verification.contains("Capitec Pay"),
        "a card verification is card-only"
    );
}
