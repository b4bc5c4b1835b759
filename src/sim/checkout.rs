//! The hosted checkout at each `session_url`: a plain HTML card form that settles the session,
//! and a cancel button. Afterwards the browser goes to the session's `return_url`.

use std::sync::Arc;

use axum::Form;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Redirect, Response};
use serde::Deserialize;
use serde_json::Value;

use super::cards::TEST_CARDS;
use super::consent;
use super::engine::{PayError, Sim};
use super::model::Status;
use crate::domain::terms::Terms;
use crate::html::{esc, money};

#[derive(Deserialize)]
pub struct CardForm {
    #[serde(default)]
    card_number: String,
    #[serde(default)]
    expiry: String,
    #[serde(default)]
    cvc: String,
}

fn layout(title: &str, body: &str) -> Html<String> {
    Html(format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><title>{}</title>\
<style>body{{font-family:system-ui,sans-serif;max-width:28rem;margin:3rem auto;padding:0 1rem;color:#222}}\
label{{display:block;margin:.8rem 0 .2rem}}input{{width:100%;padding:.5rem;font-size:1rem;box-sizing:border-box}}\
button{{margin-top:1rem;padding:.6rem 1.2rem;font-size:1rem}}.error{{color:#b00020}}.muted{{color:#666;font-size:.9rem}}\
.link{{background:none;border:none;color:#06c;text-decoration:underline;padding:0;cursor:pointer}}</style></head>\
<body><p class=\"muted\">Moment simulator · test mode</p>{body}</body></html>",
        esc(title)
    ))
}

fn not_found() -> Response {
    (
        StatusCode::NOT_FOUND,
        layout("Not found", "<h1>This checkout does not exist</h1>"),
    )
        .into_response()
}

fn form_page(
    checkout: &str,
    session: &Value,
    terms: Option<&Terms>,
    error: Option<&str>,
) -> Html<String> {
    let currency = session["currency"].as_str().unwrap_or("");
    let minor = session["amount"].as_i64().unwrap_or(0);
    let amount = money(minor, currency);
    let consent = match terms {
        Some(t) if session["type"] == "first_in_series" => {
            let items: String = consent::describe(t, currency)
                .iter()
                .map(|line| format!("<li>{}</li>", esc(line)))
                .collect();
            format!("<h2>You agree to</h2><ul id=\"consent\">{items}</ul>")
        }
        _ => String::new(),
    };
    let methods: String = consent::methods(terms, minor)
        .iter()
        .map(|m| format!("<li>{}</li>", esc(m)))
        .collect();
    let methods = format!("<p class=\"muted\">Pay with</p><ul id=\"methods\">{methods}</ul>");
    let what = if session["type"] == "first_in_series" {
        format!(
            "Pay {amount} and allow this merchant to charge this card later, under the terms you agree to."
        )
    } else {
        format!("Pay {amount}.")
    };
    let error = error.map_or(String::new(), |e| {
        format!(
            "<p class=\"error\" id=\"error\" role=\"alert\">{}</p>",
            esc(e)
        )
    });
    let cards: String = TEST_CARDS
        .iter()
        .map(|c| format!("<li><code>{}</code>: {}</li>", c.number, esc(c.description)))
        .collect();
    let checkout = esc(checkout);
    layout(
        "Checkout",
        &format!(
            "<h1>Checkout</h1><p id=\"summary\">{what}</p>{consent}{methods}{error}\
<form method=\"post\" action=\"/checkout/{checkout}\">\
<label for=\"card-number\">Card number</label>\
<input id=\"card-number\" name=\"card_number\" inputmode=\"numeric\" autocomplete=\"cc-number\" placeholder=\"4242 4242 4242 4242\" required>\
<label for=\"expiry\">Expiry (MM/YY)</label>\
<input id=\"expiry\" name=\"expiry\" autocomplete=\"cc-exp\" placeholder=\"12/34\" required>\
<label for=\"cvc\">CVC</label>\
<input id=\"cvc\" name=\"cvc\" inputmode=\"numeric\" autocomplete=\"cc-csc\" placeholder=\"123\" required>\
<button id=\"pay\" type=\"submit\">Pay {amount}</button></form>\
<form method=\"post\" action=\"/checkout/{checkout}/cancel\">\
<button id=\"cancel\" class=\"link\" type=\"submit\">Cancel and return to the merchant</button></form>\
<details><summary class=\"muted\">Test cards</summary><ul class=\"muted\">{cards}</ul>\
<p class=\"muted\">Any future expiry, any 3-digit CVC.</p></details>"
        ),
    )
}

fn ended_page(session: &Value) -> Response {
    let status = session["status"].as_str().unwrap_or("unknown");
    layout(
        "Checkout",
        &format!(
            "<h1>This checkout is {}</h1><p id=\"status\">{}</p>",
            esc(status),
            esc(status)
        ),
    )
    .into_response()
}

/// After the customer is done: on to `return_url`, or a short page when there is none.
fn leave(session: &Value) -> Response {
    match session["return_url"].as_str() {
        Some(url) => Redirect::to(url).into_response(),
        None => ended_page(session),
    }
}

pub async fn page(State(sim): State<Arc<Sim>>, Path(checkout): Path<String>) -> Response {
    let Some(session) = sim.session_of_checkout(&checkout) else {
        return not_found();
    };
    if session["status"] != "active" {
        return ended_page(&session);
    }
    let terms = sim.checkout_terms(&checkout);
    form_page(&checkout, &session, terms.as_deref(), None).into_response()
}

/// `MM/YY` (or `MM/YYYY`) not before this month.
fn expiry_ok(expiry: &str) -> bool {
    let Some((m, y)) = expiry.trim().split_once('/') else {
        return false;
    };
    let (Ok(m), Ok(mut y)) = (m.trim().parse::<u8>(), y.trim().parse::<i32>()) else {
        return false;
    };
    if y < 100 {
        y += 2000;
    }
    let today = time::OffsetDateTime::now_utc();
    (1..=12).contains(&m) && (y, m) >= (today.year(), u8::from(today.month()))
}

pub async fn submit(
    State(sim): State<Arc<Sim>>,
    Path(checkout): Path<String>,
    Form(form): Form<CardForm>,
) -> Response {
    let Some(session_id) = sim.checkout_session_id(&checkout) else {
        return not_found();
    };
    let Some(session) = sim.session(&session_id) else {
        return not_found();
    };
    let problem = if !expiry_ok(&form.expiry) {
        Some("Enter a future expiry date as MM/YY.")
    } else if !(3..=4).contains(&form.cvc.trim().len())
        || !form.cvc.trim().bytes().all(|b| b.is_ascii_digit())
    {
        Some("Enter the 3- or 4-digit CVC.")
    } else {
        None
    };
    let terms = sim.checkout_terms(&checkout);
    let terms = terms.as_deref();
    if let Some(problem) = problem {
        return (
            StatusCode::UNPROCESSABLE_ENTITY,
            form_page(&checkout, &session, terms, Some(problem)),
        )
            .into_response();
    }
    match sim.pay(&session_id, &form.card_number) {
        Ok(after) if after["status"] == "active" => {
            let message = after["last_payment_error"]["message"]
                .as_str()
                .unwrap_or("The payment failed.")
                .to_owned();
            (
                StatusCode::PAYMENT_REQUIRED,
                form_page(&checkout, &after, terms, Some(&message)),
            )
                .into_response()
        }
        Ok(after) => leave(&after),
        Err(PayError::UnknownCard) => (
            StatusCode::UNPROCESSABLE_ENTITY,
            form_page(
                &checkout,
                &session,
                terms,
                Some("This is not a test card. Use 4242 4242 4242 4242 or another card below."),
            ),
        )
            .into_response(),
        Err(PayError::NotActive(_) | PayError::NotCheckout) => ended_page(&session),
        Err(PayError::NotFound) => not_found(),
    }
}

pub async fn cancel(State(sim): State<Arc<Sim>>, Path(checkout): Path<String>) -> Response {
    let Some(session_id) = sim.checkout_session_id(&checkout) else {
        return not_found();
    };
    match sim.end_checkout(&session_id, Status::Cancelled) {
        Ok(after) => leave(&after),
        Err(_) => match sim.session(&session_id) {
            Some(s) => ended_page(&s),
            None => not_found(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiry_must_be_a_future_month() {
        assert!(expiry_ok("12/99"));
        assert!(expiry_ok("01/2099"));
        assert!(!expiry_ok("13/99"));
        assert!(!expiry_ok("01/20"));
        assert!(!expiry_ok("1299"));
    }
}
