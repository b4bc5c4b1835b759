//! The demo shop's subscription pages: start monthly billing on an active mandate, follow the
//! subscription and its charges as the service's webhooks tell them, and a **Next month**
//! button that fast-forwards the test clock `dev` runs on.

use std::sync::Arc;

use axum::Form;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Redirect, Response};
use serde::Deserialize;
use serde_json::json;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::demo::{Demo, error_page, page};
use crate::domain::terms::SAST;
use crate::html::{esc, money};

#[derive(Deserialize)]
pub struct Start {
    mandate_id: String,
}

/// Bills the mandate monthly from tomorrow, at the mandate's amount (its terms set the
/// schedule).
pub async fn start(State(demo): State<Arc<Demo>>, Form(form): Form<Start>) -> Response {
    let tomorrow = (OffsetDateTime::now_utc().to_offset(SAST) + time::Duration::days(1)).date();
    let clock = demo
        .call(demo.http.get(format!("{}/test-clock", demo.service_url)))
        .await;
    let tomorrow = clock
        .ok()
        .and_then(|c| OffsetDateTime::parse(c["now"].as_str()?, &Rfc3339).ok())
        .map_or(tomorrow, |now| {
            (now.to_offset(SAST) + time::Duration::days(1)).date()
        });
    let req = demo
        .http
        .post(format!("{}/subscriptions", demo.service_url))
        .header("idempotency-key", uuid::Uuid::new_v4().to_string())
        .json(&json!({"mandate_id": form.mandate_id, "start_date": tomorrow.to_string()}));
    match demo.call(req).await {
        Ok(s) => match s["id"].as_str() {
            Some(id) => Redirect::to(&format!("/subscriptions/{id}")).into_response(),
            None => error_page("The subscription has no id."),
        },
        Err(message) => error_page(&message),
    }
}

/// The subscription (read from the service: the preview is computed on reading) and its
/// charges, as the webhooks told them.
pub async fn show(State(demo): State<Arc<Demo>>, Path(id): Path<String>) -> Response {
    if uuid::Uuid::parse_str(&id).is_err() {
        return error_page("No such subscription.");
    }
    let req = demo
        .http
        .get(format!("{}/subscriptions/{id}", demo.service_url));
    let s = match demo.call(req).await {
        Ok(s) => s,
        Err(message) => return error_page(&message),
    };
    let currency = s["currency"].as_str().unwrap_or("ZAR");
    let charges = demo.latest_where("subscription_id", &id);
    // Refreshed while a charge is open, or while the webhooks have not told of every period
    // the service has billed.
    let billed = s["next_period"].as_u64().unwrap_or(0) as usize;
    let open = charges.len() < billed
        || charges
            .iter()
            .any(|c| matches!(c["status"].as_str(), Some("pending" | "processing")));
    let items: String = charges
        .iter()
        .map(|c| {
            format!(
                "<li class=\"charge\">{} <strong>{}</strong> <span class=\"muted\">{}</span></li>",
                esc(&money(c["amount"].as_i64().unwrap_or(0), currency)),
                esc(c["status"].as_str().unwrap_or("")),
                esc(c["created_at"].as_str().unwrap_or(""))
            )
        })
        .collect();
    let preview: String = s["preview"]
        .as_array()
        .map(|p| {
            p.iter()
                .take(3)
                .map(|u| {
                    let note = u["blocked_by"]
                        .as_str()
                        .map_or_else(String::new, |b| format!(" (would be refused: {})", esc(b)));
                    format!("<li>{}{note}</li>", esc(u["at"].as_str().unwrap_or("")))
                })
                .collect()
        })
        .unwrap_or_default();
    page(
        "Your subscription",
        &format!(
            "<h1>Monthly billing</h1><p>Subscription <code id=\"subscription-id\">{}</code> is \
<strong id=\"subscription-status\">{}</strong>; next charge <span id=\"next-charge\">{}</span>.</p>\
<h2>Next charges</h2><ul id=\"preview\">{preview}</ul>\
<h2>Charges (<span id=\"charge-count\">{}</span>)</h2><ul id=\"charges\">{items}</ul>\
<form method=\"post\" action=\"/next-month\"><input type=\"hidden\" name=\"subscription_id\" value=\"{}\">\
<button id=\"next-month\" type=\"submit\">Next month</button></form>\
<p class=\"muted\">Next month moves the test clock the service and the simulator share one month on; \
every charge due meanwhile is made, in order.</p>{}",
            esc(&id),
            esc(s["status"].as_str().unwrap_or("unknown")),
            esc(s["next_charge_at"].as_str().unwrap_or("none")),
            charges.len(),
            esc(&id),
            demo.recent_html()
        ),
        open,
    )
    .into_response()
}

#[derive(Deserialize)]
pub struct NextMonth {
    subscription_id: String,
}

/// Moves the test clock to the same day next month (the last day, in a shorter month).
pub async fn next_month(State(demo): State<Arc<Demo>>, Form(form): Form<NextMonth>) -> Response {
    let Ok(subscription) = uuid::Uuid::parse_str(&form.subscription_id) else {
        return error_page("No such subscription.");
    };
    let clock = match demo
        .call(demo.http.get(format!("{}/test-clock", demo.service_url)))
        .await
    {
        Ok(c) => c,
        Err(message) => return error_page(&message),
    };
    let Some(now) = clock["now"]
        .as_str()
        .and_then(|t| OffsetDateTime::parse(t, &Rfc3339).ok())
    else {
        return error_page("The test clock did not say the time.");
    };
    let (year, month) = if now.month() == time::Month::December {
        (now.year() + 1, time::Month::January)
    } else {
        (now.year(), now.month().next())
    };
    let day = now.day().min(time::util::days_in_month(month, year));
    let Ok(to) = time::Date::from_calendar_date(year, month, day).map(|d| now.replace_date(d))
    else {
        return error_page("No such day next month.");
    };
    let to = to.format(&Rfc3339).unwrap_or_default();
    let req = demo
        .http
        .post(format!("{}/test-clock/advance", demo.service_url))
        .json(&json!({ "to": to }));
    match demo.call(req).await {
        Ok(_) => Redirect::to(&format!("/subscriptions/{subscription}")).into_response(),
        Err(message) => error_page(&message),
    }
}
