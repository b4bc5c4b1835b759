//! The API contract at `/openapi.json`: complete, served, and with examples that are real.

use std::collections::BTreeSet;

use axum::body::Body;
use axum::http::Request;
use moment_mandates::api::{ChargeResponse, MandateResponse};
use moment_mandates::error::Problem;
use moment_mandates::routes::charges::CreateCharge;
use moment_mandates::routes::mandates::CreateMandate;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::support::app::TestApp;

/// Every operation the service offers, as the README lists them.
const OPERATIONS: &[(&str, &str)] = &[
    ("post", "/mandates"),
    ("get", "/mandates"),
    ("get", "/mandates/{id}"),
    ("post", "/mandates/{id}/revoke"),
    ("get", "/mandates/{id}/return"),
    ("post", "/charges"),
    ("get", "/charges"),
    ("get", "/charges/{id}"),
    ("post", "/webhooks/moment"),
    ("get", "/events"),
    ("get", "/events/{id}"),
    ("get", "/events/{id}/deliveries"),
    ("post", "/events/{id}/redeliver"),
    ("post", "/webhook-endpoints"),
    ("get", "/webhook-endpoints"),
    ("get", "/webhook-endpoints/{id}"),
    ("patch", "/webhook-endpoints/{id}"),
    ("delete", "/webhook-endpoints/{id}"),
    ("post", "/webhook-endpoints/{id}/rotate-secret"),
    ("post", "/webhook-endpoints/{id}/recover"),
    ("post", "/subscriptions"),
    ("get", "/subscriptions"),
    ("get", "/subscriptions/{id}"),
    ("patch", "/subscriptions/{id}"),
    ("post", "/subscriptions/{id}/pause"),
    ("post", "/subscriptions/{id}/resume"),
    ("post", "/subscriptions/{id}/cancel"),
    ("get", "/test-clock"),
    ("post", "/test-clock/advance"),
    ("get", "/healthz"),
    ("get", "/readyz"),
    ("get", "/openapi.json"),
    ("get", "/docs"),
];

async fn document(app: &TestApp) -> Value {
    let r = app.get_public("/openapi.json").await;
    assert_eq!(r.status, 200);
    r.body
}

fn operations(doc: &Value) -> BTreeSet<(String, String)> {
    doc["paths"]
        .as_object()
        .unwrap()
        .iter()
        .flat_map(|(path, item)| {
            item.as_object()
                .unwrap()
                .keys()
                .filter(|m| ["get", "post", "put", "patch", "delete"].contains(&m.as_str()))
                .map(move |m| (m.clone(), path.clone()))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_is_documented_and_every_documented_route_is_served() {
    let app = TestApp::new().await;
    let doc = document(&app).await;
    assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"));
    let expected: BTreeSet<_> = OPERATIONS
        .iter()
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .collect();
    assert_eq!(operations(&doc), expected);

    // Each documented operation reaches a handler: whatever it answers, it is not the
    // router's "no such route" or "method not allowed".
    for (method, path) in OPERATIONS {
        let uri = path.replace("{id}", "01a20e0a-fb07-7569-a87f-9afae148c0ff");
        let req = Request::builder()
            .method(method.to_uppercase().as_str())
            .uri(&uri)
            .header(
                "authorization",
                format!("Bearer {}", crate::support::app::API_KEY),
            )
            .header("content-type", "application/json")
            .body(Body::from("{}"))
            .unwrap();
        let r = app.send(req).await;
        assert_ne!(r.status, 405, "{method} {uri}");
        let no_route = r.status == 404
            && r.body["detail"]
                .as_str()
                .is_some_and(|d| d.contains("route"));
        assert!(
            !no_route,
            "{method} {uri} is documented but not served: {}",
            r.body
        );
    }
    // And a route nobody documented does not exist.
    let r = app.get_public("/undocumented").await;
    r.problem(404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_operation_documents_its_responses_and_problem_errors() {
    let app = TestApp::new().await;
    let doc = document(&app).await;
    let schemas = doc["components"]["schemas"].as_object().unwrap();
    for (method, path) in OPERATIONS {
        let op = &doc["paths"][path][method];
        assert!(
            op["tags"].as_array().is_some_and(|t| !t.is_empty()),
            "{method} {path} untagged"
        );
        let responses = op["responses"].as_object().unwrap();
        assert!(
            responses
                .keys()
                .any(|s| s.starts_with('2') || s.starts_with('3')),
            "{method} {path} has no success response"
        );
        for (status, resp) in responses {
            if status.starts_with('4') || status.starts_with('5') {
                let problem = &resp["content"]["application/problem+json"]["schema"]["$ref"];
                assert_eq!(
                    problem, "#/components/schemas/Problem",
                    "{method} {path} {status} is not problem+json"
                );
            }
        }
        let merchant = path.starts_with("/charges")
            || path.starts_with("/events")
            || path.starts_with("/webhook-endpoints")
            || path.starts_with("/subscriptions")
            || path.starts_with("/test-clock")
            || (path.starts_with("/mandates") && !path.ends_with("/return"));
        // Every operation states its security; only the merchant's ask for the API key.
        let security = op["security"].as_array();
        assert!(security.is_some(), "{method} {path}: no security stated");
        let needs_key = security.unwrap().iter().any(|r| r.get("api_key").is_some());
        assert_eq!(needs_key, merchant, "{method} {path}: API key requirement");
    }
    // Generated clients name their functions after operationIds: each is unique.
    let ids: Vec<&str> = OPERATIONS
        .iter()
        .map(|(method, path)| doc["paths"][path][method]["operationId"].as_str().unwrap())
        .collect();
    let unique: BTreeSet<&str> = ids.iter().copied().collect();
    assert_eq!(unique.len(), ids.len(), "operationIds repeat: {ids:?}");
    assert!(
        doc["servers"].as_array().is_some_and(|s| !s.is_empty()),
        "no servers"
    );
    // Every $ref points at a schema that exists.
    let text = doc.to_string();
    for part in text.split("#/components/schemas/").skip(1) {
        let name: String = part.chars().take_while(|c| *c != '"').collect();
        assert!(schemas.contains_key(&name), "dangling $ref to {name}");
    }
    for name in [
        "CreateMandate",
        "Customer",
        "CreateCharge",
        "Mandate",
        "Charge",
        "MandateStatus",
        "ChargeStatus",
        "Problem",
    ] {
        assert!(schemas.contains_key(name), "schema {name} missing");
    }
    assert_eq!(
        doc["components"]["securitySchemes"]["api_key"]["scheme"],
        "bearer"
    );
}

/// Top-level null members dropped: an omitted optional field and a null one mean the same.
fn without_nulls(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        ),
        other => other.clone(),
    }
}

/// The example deserializes into `T` and serializes back to itself: no member is unknown
/// to the type or lost by it.
fn round_trips<T: DeserializeOwned + Serialize>(name: &str, example: &Value) {
    let value: T = serde_json::from_value(example.clone())
        .unwrap_or_else(|e| panic!("the {name} example does not deserialize: {e}\n{example}"));
    assert_eq!(
        without_nulls(&serde_json::to_value(&value).unwrap()),
        without_nulls(example),
        "{name} example"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_examples_deserialize_into_the_real_types() {
    let app = TestApp::new().await;
    let doc = document(&app).await;
    let example = |name: &str| {
        let e = doc["components"]["schemas"][name]["example"].clone();
        assert!(e.is_object(), "schema {name} has no example");
        e
    };
    round_trips::<CreateMandate>("CreateMandate", &example("CreateMandate"));
    round_trips::<CreateCharge>("CreateCharge", &example("CreateCharge"));
    round_trips::<MandateResponse>("Mandate", &example("Mandate"));
    round_trips::<ChargeResponse>("Charge", &example("Charge"));
    round_trips::<Problem>("Problem", &example("Problem"));

    // The webhook example is an event our parser reads as the session it carries.
    let event = &doc["paths"]["/webhooks/moment"]["post"]["requestBody"]["content"]["application/json"]
        ["example"];
    let parsed: moment_mandates::moment::wire::Event =
        serde_json::from_value(event.clone()).unwrap();
    let session: moment_mandates::moment::wire::Session =
        serde_json::from_value(parsed.data).unwrap();
    assert!(moment_mandates::domain::Effect::of(&session).is_some());

    // And the request examples are accepted by the live endpoints' validation.
    app.moment_accepts_sessions().await;
    let r = app
        .post(
            "/mandates",
            &example("CreateMandate"),
            &[("accept", "application/json")],
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_docs_page_is_served() {
    let app = TestApp::new().await;
    let req = Request::builder().uri("/docs").body(Body::empty()).unwrap();
    let r = app.send(req).await;
    assert_eq!(r.status, 200);
    assert!(r.header("content-type").unwrap().starts_with("text/html"));
    let html = r.body.as_str().unwrap();
    assert!(
        html.contains("moment-mandates"),
        "the page carries the document"
    );
}

/// Every setting the binary reads from the environment is in the README, and every one the
/// service's `.env.example` names is one the binary reads: an operator finds each setting
/// where the README says, under the name the binary uses.
#[test]
fn every_setting_is_documented_under_the_name_the_binary_reads() {
    let root = env!("CARGO_MANIFEST_DIR");
    let read = |path: &str| std::fs::read_to_string(format!("{root}/{path}")).unwrap();
    let cli = read("src/cli.rs");
    let readme = read("README.md");
    let mut settings: BTreeSet<&str> = cli
        .split("env = \"")
        .skip(1)
        .filter_map(|rest| rest.split('"').next())
        .collect();
    assert!(settings.len() > 40, "{settings:?}");
    // The README's tables name settings in cells of their own: `NAME`, or `A`, `B`.
    let named: BTreeSet<&str> = readme
        .lines()
        .filter(|l| l.starts_with('|'))
        .flat_map(|l| l.split('|'))
        .filter_map(|cell| {
            let names: Option<Vec<&str>> = cell
                .trim()
                .split(", ")
                .map(|n| n.strip_prefix('`')?.strip_suffix('`'))
                .collect();
            names
        })
        .flatten()
        .collect();
    let missing: Vec<&&str> = settings.iter().filter(|s| !named.contains(**s)).collect();
    assert!(
        missing.is_empty(),
        "not in the README's tables: {missing:?}"
    );
    // Read by the log filter rather than by the arguments.
    settings.insert("RUST_LOG");
    let example = read(".env.example");
    let unknown: Vec<&str> = example
        .lines()
        .map(|l| l.trim_start_matches('#').trim())
        .filter_map(|l| l.split_once('=').map(|(name, _)| name))
        .filter(|name| {
            !name.is_empty()
                && name.chars().all(|c| c.is_ascii_uppercase() || c == '_')
                && !settings.contains(name)
        })
        .collect();
    assert!(unknown.is_empty(), "read by nothing: {unknown:?}");
}
