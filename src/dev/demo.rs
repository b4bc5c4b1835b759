//! A demo merchant site, standing in for the merchant's own: a Subscribe button whose server
//! side holds the API key and calls `POST /mandates`, the page the customer returns to with
//! the mandate's state, and a Charge button. It learns what happens from the service's signed
//! webhooks (`POST /webhooks`, registered by `dev`), verified like any merchant would, and
//! shows the latest events on its pages: after the first look, it never polls the service.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Form, Router};
use bytes::Bytes;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::html::{esc, money};
use crate::moment::signature::{SignedHeaders, Verifier, WebhookSecret};

/// Events kept for the pages.
const RECENT: usize = 20;

pub struct Demo {
    pub(super) service_url: String,
    api_key: String,
    demo_url: String,
    pub(super) http: reqwest::Client,
    /// Verifies the service's webhooks with the endpoint's secret.
    verifier: Verifier,
    /// What the webhooks said: each resource's latest state, and the latest events.
    seen: Mutex<Seen>,
}

#[derive(Default)]
struct Seen {
    /// Resource id → (sequence, the resource as the event showed it).
    latest: HashMap<String, (i64, Value)>,
    /// (type, resource id), newest first.
    recent: VecDeque<(String, String)>,
}

impl Demo {
    pub fn new(
        service_url: &str,
        api_key: &str,
        demo_url: &str,
        webhook_secret: &str,
    ) -> anyhow::Result<Arc<Self>> {
        Ok(Arc::new(Self {
            service_url: service_url.into(),
            api_key: api_key.into(),
            demo_url: demo_url.into(),
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .timeout(Duration::from_secs(30))
                .build()?,
            verifier: Verifier::new(
                vec![WebhookSecret::parse(webhook_secret)?],
                Duration::from_secs(300),
            ),
            seen: Mutex::new(Seen::default()),
        }))
    }

    /// The resources of `kind` the webhooks told of whose `field` is `value`, newest first.
    pub(super) fn latest_where(&self, field: &str, value: &str) -> Vec<Value> {
        let seen = self.seen.lock().expect("not poisoned");
        let mut out: Vec<Value> = seen
            .latest
            .values()
            .filter(|(_, v)| v[field].as_str() == Some(value))
            .map(|(_, v)| v.clone())
            .collect();
        out.sort_by(|a, b| b["id"].as_str().cmp(&a["id"].as_str()));
        out
    }

    /// The resource as the latest webhook showed it, if one came.
    pub(super) fn latest(&self, id: &str) -> Option<Value> {
        let seen = self.seen.lock().expect("not poisoned");
        seen.latest.get(id).map(|(_, v)| v.clone())
    }

    /// The latest events, as a list for a page.
    pub(super) fn recent_html(&self) -> String {
        let seen = self.seen.lock().expect("not poisoned");
        let items: String = seen
            .recent
            .iter()
            .map(|(kind, id)| format!("<li><code>{}</code> {}</li>", esc(kind), esc(id)))
            .collect();
        format!("<h2>Latest events</h2><ul id=\"events\">{items}</ul>")
    }

    /// Calls the service; `Err` is a message for the page.
    pub(super) async fn call(&self, req: reqwest::RequestBuilder) -> Result<Value, String> {
        let resp = req
            .bearer_auth(&self.api_key)
            .header("accept", "application/json")
            .send()
            .await
            .map_err(|_| "The payments service could not be reached.".to_owned())?;
        let status = resp.status();
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        if status.is_success() {
            Ok(body)
        } else {
            Err(body["detail"]
                .as_str()
                .or(body["title"].as_str())
                .map_or_else(
                    || format!("The payments service answered {status}."),
                    str::to_owned,
                ))
        }
    }
}

pub fn router(demo: Arc<Demo>) -> Router {
    Router::new()
        .route("/", get(home))
        .route("/subscribe", post(subscribe))
        .route("/return", get(returned))
        .route("/charge", post(charge))
        .route("/charges/{id}", get(charge_page))
        .route("/webhooks", post(webhook))
        .route("/bill", post(super::billing::start))
        .route("/subscriptions/{id}", get(super::billing::show))
        .route("/next-month", post(super::billing::next_month))
        .with_state(demo)
}

pub(super) fn page(title: &str, body: &str, refresh: bool) -> Html<String> {
    let refresh = if refresh {
        "<meta http-equiv=\"refresh\" content=\"1\">"
    } else {
        ""
    };
    Html(format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">{refresh}\
<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><title>{}</title>\
<style>body{{font-family:system-ui,sans-serif;max-width:32rem;margin:3rem auto;padding:0 1rem;color:#222}}\
label{{display:block;margin:.8rem 0 .2rem}}input{{width:100%;padding:.5rem;font-size:1rem;box-sizing:border-box}}\
button{{margin-top:1rem;padding:.6rem 1.2rem;font-size:1rem}}.error{{color:#b00020}}.muted{{color:#666;font-size:.9rem}}</style>\
</head><body><p class=\"muted\">Demo shop · a stand-in for the merchant's site</p>{body}</body></html>",
        esc(title)
    ))
}

pub(super) fn error_page(message: &str) -> Response {
    (
        StatusCode::BAD_GATEWAY,
        page(
            "Something went wrong",
            &format!(
                "<h1>Something went wrong</h1><p class=\"error\" id=\"error\">{}</p><p><a href=\"/\">Back</a></p>",
                esc(message)
            ),
            false,
        ),
    )
        .into_response()
}

async fn home() -> Html<String> {
    page(
        "Demo shop",
        "<h1>Coffee club: R 50 to R 150 a month, up to 12 payments</h1>\
<form method=\"post\" action=\"/subscribe\">\
<label for=\"name\">Name</label><input id=\"name\" name=\"name\" value=\"Thandi Example\" required>\
<label for=\"email\">E-mail</label><input id=\"email\" name=\"email\" type=\"email\" value=\"thandi@example.com\" required>\
<label for=\"amount\">Monthly amount (cents)</label><input id=\"amount\" name=\"amount\" value=\"5000\" inputmode=\"numeric\" required>\
<button id=\"subscribe\" type=\"submit\">Subscribe</button></form>\
<p class=\"muted\">Subscribing sends you to Moment's checkout (here the simulator). Pay with 4242 4242 4242 4242.</p>",
        false,
    )
}

#[derive(Deserialize)]
struct Subscribe {
    name: String,
    email: String,
    amount: String,
}

async fn subscribe(State(demo): State<Arc<Demo>>, Form(form): Form<Subscribe>) -> Response {
    let Ok(amount) = form.amount.trim().parse::<i64>() else {
        return error_page("The amount must be a whole number of cents.");
    };
    // The plan's terms: R 50 to R 150 once a month, up to 12 payments.
    let body = json!({
        "amount": amount,
        "currency": "ZAR",
        "customer": {"name": form.name, "email": form.email},
        "return_url": format!("{}/return", demo.demo_url),
        "terms": {
            "type": "scheduled",
            "amount": {"min": 5000, "max": 15000},
            "recurrence": {"type": "monthly", "interval_count": 1},
            "max_occurrences": 12
        },
    });
    let req = demo
        .http
        .post(format!("{}/mandates", demo.service_url))
        .header("idempotency-key", uuid::Uuid::new_v4().to_string())
        .json(&body);
    match demo.call(req).await {
        Ok(mandate) => match mandate["checkout_url"].as_str() {
            Some(url) => Redirect::to(url).into_response(),
            None => error_page("Moment did not open a checkout; try again."),
        },
        Err(message) => error_page(&message),
    }
}

#[derive(Deserialize)]
struct Returned {
    mandate_id: Option<String>,
}

/// The service's webhooks: verified, then kept, newest state per resource by `sequence`.
async fn webhook(State(demo): State<Arc<Demo>>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let signed = SignedHeaders {
        id: header("webhook-id"),
        timestamp: header("webhook-timestamp"),
        signature: header("webhook-signature"),
    };
    if demo
        .verifier
        .verify(signed, &body, SystemTime::now())
        .is_err()
    {
        return StatusCode::UNAUTHORIZED;
    }
    let Ok(event) = serde_json::from_slice::<Value>(&body) else {
        return StatusCode::BAD_REQUEST;
    };
    let id = event["resource"]["id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let sequence = event["sequence"].as_i64().unwrap_or(0);
    let mut seen = demo.seen.lock().expect("not poisoned");
    // An older event arriving after a newer one changes nothing.
    if seen.latest.get(&id).is_none_or(|(s, _)| *s < sequence) {
        seen.latest
            .insert(id.clone(), (sequence, event["data"].clone()));
    }
    let kind = event["type"].as_str().unwrap_or_default().to_owned();
    seen.recent.push_front((kind, id));
    seen.recent.truncate(RECENT);
    StatusCode::NO_CONTENT
}

async fn returned(State(demo): State<Arc<Demo>>, Query(q): Query<Returned>) -> Response {
    let Some(id) = q.mandate_id.filter(|id| uuid::Uuid::parse_str(id).is_ok()) else {
        return error_page("No mandate to show.");
    };
    // What the webhooks said; the service is asked only before the first one came.
    let mandate = match demo.latest(&id) {
        Some(m) => m,
        None => {
            let req = demo.http.get(format!("{}/mandates/{id}", demo.service_url));
            match demo.call(req).await {
                Ok(m) => m,
                Err(message) => return error_page(&message),
            }
        }
    };
    let status = mandate["status"].as_str().unwrap_or("unknown");
    let amount = mandate["amount"].as_i64().unwrap_or(0);
    let currency = mandate["currency"].as_str().unwrap_or("ZAR");
    let action = if status == "active" {
        // The consent ledger, read once: this page no longer refreshes.
        let req = demo.http.get(format!("{}/mandates/{id}", demo.service_url));
        let ledger = match demo.call(req).await {
            Ok(m) => {
                let l = &m["ledger"];
                let left = l["occurrences_left"]
                    .as_i64()
                    .map_or_else(String::new, |n| format!(", {n} left"));
                format!(
                    "<p id=\"ledger\">Payments made: {}{left}.</p>",
                    l["occurrences_used"].as_i64().unwrap_or(0)
                )
            }
            Err(_) => String::new(),
        };
        format!(
            "{ledger}<form method=\"post\" action=\"/charge\"><input type=\"hidden\" name=\"mandate_id\" value=\"{}\">\
<label for=\"charge-amount\">Amount (cents)</label><input id=\"charge-amount\" name=\"amount\" value=\"{amount}\">\
<button id=\"charge\" type=\"submit\">Charge {}</button></form>\
<form method=\"post\" action=\"/bill\"><input type=\"hidden\" name=\"mandate_id\" value=\"{}\">\
<button id=\"bill\" type=\"submit\">Bill me monthly from tomorrow</button></form>",
            esc(&id),
            esc(&money(amount, currency)),
            esc(&id)
        )
    } else if status == "pending" {
        "<p>Waiting for Moment to confirm the checkout…</p>".to_owned()
    } else {
        "<p><a href=\"/\">Start again</a></p>".to_owned()
    };
    page(
        "Your subscription",
        &format!(
            "<h1>Your subscription</h1><p>Mandate <code id=\"mandate-id\">{}</code> is \
<strong id=\"mandate-status\">{}</strong>.</p>{action}{}",
            esc(&id),
            esc(status),
            demo.recent_html()
        ),
        status == "pending",
    )
    .into_response()
}

#[derive(Deserialize)]
struct ChargeForm {
    mandate_id: String,
    amount: String,
}

async fn charge(State(demo): State<Arc<Demo>>, Form(form): Form<ChargeForm>) -> Response {
    let Ok(amount) = form.amount.trim().parse::<i64>() else {
        return error_page("The amount must be a whole number of cents.");
    };
    let req = demo
        .http
        .post(format!("{}/charges", demo.service_url))
        .header("idempotency-key", uuid::Uuid::new_v4().to_string())
        .json(&json!({"mandate_id": form.mandate_id, "amount": amount}));
    match demo.call(req).await {
        Ok(charge) => match charge["id"].as_str() {
            Some(id) => Redirect::to(&format!("/charges/{id}")).into_response(),
            None => error_page("The charge has no id."),
        },
        Err(message) => error_page(&message),
    }
}

async fn charge_page(State(demo): State<Arc<Demo>>, Path(id): Path<String>) -> Response {
    if uuid::Uuid::parse_str(&id).is_err() {
        return error_page("No such charge.");
    }
    let charge = match demo.latest(&id) {
        Some(c) => c,
        None => {
            let req = demo.http.get(format!("{}/charges/{id}", demo.service_url));
            match demo.call(req).await {
                Ok(c) => c,
                Err(message) => return error_page(&message),
            }
        }
    };
    let status = charge["status"].as_str().unwrap_or("unknown");
    let amount = money(
        charge["amount"].as_i64().unwrap_or(0),
        charge["currency"].as_str().unwrap_or("ZAR"),
    );
    let open = matches!(status, "pending" | "processing");
    let mandate = charge["mandate_id"].as_str().unwrap_or_default();
    page(
        "Charge",
        &format!(
            "<h1>Charge of {}</h1><p>Charge <code id=\"charge-id\">{}</code> is \
<strong id=\"charge-status\">{}</strong>.</p>{}<p><a id=\"back\" href=\"/return?mandate_id={}\">Back to the subscription</a></p>{}",
            esc(&amount),
            esc(&id),
            esc(status),
            if open {
                "<p class=\"muted\">This page shows the charge as the service's webhooks tell it.</p>"
            } else {
                ""
            },
            esc(mandate),
            demo.recent_html()
        ),
        open,
    )
    .into_response()
}
