//! The OpenAPI 3.1 document, generated from the handlers' `#[utoipa::path]` annotations and
//! the types' schemas. Routes are registered through `utoipa_axum::routes!`, so a route
//! cannot be served without being documented.

use std::sync::OnceLock;

use axum::http::header;
use axum::response::{Html, IntoResponse, Response};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};
use utoipa_scalar::Scalar;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "moment-mandates",
        description = "Recurring payments through Moment: mandates (first_in_series checkouts), \
            Moment's signed webhooks, and merchant-initiated charges (next_in_series), each \
            exactly once. Every error is application/problem+json (RFC 9457)."
    ),
    servers((url = "/", description = "The service that serves this document")),
    modifiers(&ApiKeyAuth),
    tags(
        (name = "mandates", description = "A customer's authorisation for future charges"),
        (name = "charges", description = "Merchant-initiated payments under a mandate"),
        (name = "webhooks", description = "Moment's signed events (Standard Webhooks)"),
        (name = "events", description = "Every change of a mandate or a charge, with a cursor that never skips one"),
        (name = "subscriptions", description = "Mandates charged on a schedule by the service, with dunning; and the test clock"),
        (name = "webhook-endpoints", description = "Where the service sends its events, signed with Standard Webhooks"),
        (name = "operations", description = "Health, readiness, metrics and this document"),
    )
)]
pub struct ApiDoc;

struct ApiKeyAuth;

impl Modify for ApiKeyAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "api_key",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "One of the API_KEYS, as `Authorization: Bearer <key>`",
                    ))
                    .build(),
            ),
        );
    }
}

static DOCUMENT: OnceLock<(String, String)> = OnceLock::new();

/// Keeps the finished document (JSON, and the docs page built on it). The first call wins;
/// every router builds the same document.
pub fn publish(doc: &utoipa::openapi::OpenApi) {
    DOCUMENT.get_or_init(|| {
        let json = doc.to_pretty_json().unwrap_or_else(|_| "{}".into());
        let html = Scalar::new(doc.clone()).to_html();
        (json, html)
    });
}

/// `GET /openapi.json`.
#[utoipa::path(get, path = "/openapi.json", tag = "operations", operation_id = "openapiDocument", security(()),
    responses((status = 200, description = "This OpenAPI 3.1 document", body = Object)))]
pub async fn document() -> Response {
    let json = DOCUMENT.get().map_or("{}", |(j, _)| j.as_str());
    (
        [(header::CONTENT_TYPE, "application/json")],
        json.to_owned(),
    )
        .into_response()
}

/// `GET /docs`: interactive documentation (Scalar) over this document.
#[utoipa::path(get, path = "/docs", tag = "operations", operation_id = "docs", security(()),
    responses((status = 200, description = "Interactive API documentation", body = String, content_type = "text/html")))]
pub async fn docs() -> Html<String> {
    Html(DOCUMENT.get().map_or_else(String::new, |(_, h)| h.clone()))
}
