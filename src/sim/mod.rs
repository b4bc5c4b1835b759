//! A local, stateful Moment: the payment sessions API, the hosted checkout, signed webhooks
//! with retries, and fault injection, following `moment-api.md`. Started by
//! `moment-mandates sim` and `moment-mandates dev`, and in-process by the tests.
//!
//! Where Moment is silent (test cards, expiry time, retry schedule, behaviour without an
//! idempotency key) the simulator's choices are documented in the README's simulator section.

mod admin;
mod api;
pub mod cards;
mod checkout;
mod consent;
mod engine;
mod model;
mod timer;
mod validate;
mod webhooks;

use std::future::Future;
use std::sync::Arc;

use axum::Router;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::json;
use tokio::net::TcpListener;

pub use engine::{Faults, PayError, Sim, SimConfig, Stats};
pub use model::Status;
pub use webhooks::{Attempt, Delivery, DeliveryState};

/// An RFC 9457 problem in Moment's style: `type` is `…/docs/errors#<code>`.
#[derive(Debug, Clone)]
pub struct Problem {
    pub status: u16,
    pub code: &'static str,
    pub title: &'static str,
    pub detail: String,
}

impl Problem {
    pub fn new(
        status: u16,
        code: &'static str,
        title: &'static str,
        detail: impl Into<String>,
    ) -> Self {
        Self {
            status,
            code,
            title,
            detail: detail.into(),
        }
    }

    pub fn not_found(what: &str) -> Self {
        Self::new(
            404,
            "not-found",
            "The requested resource was not found",
            format!("no such {what}"),
        )
    }

    /// The JSON body, with `instance` set to the request path.
    pub fn body(&self, instance: &str) -> serde_json::Value {
        json!({
            "type": format!("https://api.momentco.io/docs/errors#{}", self.code),
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
            "instance": instance,
        })
    }

    pub fn response(&self, instance: &str) -> Response {
        problem_response(self.status, self.body(instance))
    }
}

fn problem_response(status: u16, body: serde_json::Value) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (
        status,
        [(header::CONTENT_TYPE, "application/problem+json")],
        body.to_string(),
    )
        .into_response()
}

/// The simulator's routes: Moment's API, the checkout pages, and the `/_sim` admin API.
pub fn router(sim: Arc<Sim>) -> Router {
    Router::new()
        .route("/collect/payment_sessions", post(api::create_session))
        .route("/collect/payment_sessions/{id}", get(api::get_session))
        .route("/collect/payments/{id}", get(api::get_payment))
        .route("/checkout/{id}", get(checkout::page).post(checkout::submit))
        .route("/checkout/{id}/cancel", post(checkout::cancel))
        .route("/_sim/sessions", get(admin::sessions))
        .route("/_sim/sessions/{id}", get(admin::session))
        .route("/_sim/sessions/{id}/complete", post(admin::complete))
        .route("/_sim/sessions/{id}/cancel", post(admin::cancel))
        .route("/_sim/sessions/{id}/expire", post(admin::expire))
        .route("/_sim/webhooks", get(admin::webhooks))
        .route("/_sim/webhooks/release", post(admin::release))
        .route("/_sim/faults", get(admin::faults).patch(admin::set_faults))
        .route("/_sim/cards", get(admin::cards))
        .route("/_sim/payment_methods/{id}/fund", post(admin::fund))
        .route("/_sim/stats", get(admin::stats))
        .fallback(
            |uri: axum::http::Uri| async move { Problem::not_found("route").response(uri.path()) },
        )
        .with_state(sim)
}

/// A running simulator.
pub struct SimHandle {
    pub sim: Arc<Sim>,
    /// Base URL, e.g. `http://127.0.0.1:8081`.
    pub url: String,
}

/// Builds the simulator for `listener` and serves it until `shutdown` completes (in a
/// spawned task). `session_url`s use `config.public_url`, or the listener's address.
pub fn spawn(
    config: SimConfig,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<SimHandle> {
    let url = format!("http://{}", listener.local_addr()?);
    let public = config.public_url.clone().unwrap_or_else(|| url.clone());
    let sim = Sim::new(config, public)?;
    let app = router(Arc::clone(&sim));
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app)
            .with_graceful_shutdown(shutdown)
            .await
        {
            tracing::error!(error = %e, "simulator stopped");
        }
    });
    Ok(SimHandle { sim, url })
}
