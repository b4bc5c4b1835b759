//! The router (every route with its middleware), and `run` with graceful shutdown.

use std::future::Future;
use std::time::Duration;

use anyhow::Context as _;
use axum::Router;
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{HeaderName, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use http_body_util::BodyExt as _;
use tokio::net::TcpListener;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::request_id::PropagateRequestIdLayer;
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::{DefaultOnResponse, TraceLayer};
use tracing::Level;
use utoipa::OpenApi as _;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::require_api_key;
use crate::config::{BODY_LIMIT, Config};
use crate::error::{ApiError, problem_fallback};
use crate::routes::{charges, events, mandates, ops, subscriptions, webhook_endpoints, webhooks};
use crate::server::{self, Limits};
use crate::state::AppState;
use crate::telemetry::{REQUEST_ID_HEADER, assign_request_id};
use crate::{db, openapi, worker};

const REQUEST_ID: HeaderName = HeaderName::from_static(REQUEST_ID_HEADER);

/// Every route, with its middleware. `request_timeout` answers a slow request with 408; its
/// database and Moment work runs detached (see [`detach`]) and completes regardless.
pub fn router(state: AppState, request_timeout: Duration) -> Router {
    router_with_limit(state, request_timeout, BODY_LIMIT)
}

/// `router` with a body limit other than the default.
pub fn router_with_limit(state: AppState, request_timeout: Duration, body_limit: usize) -> Router {
    crate::metrics::handle();
    let merchant = OpenApiRouter::new()
        .routes(routes!(mandates::create, mandates::list))
        .routes(routes!(mandates::show))
        .routes(routes!(mandates::revoke))
        .routes(routes!(charges::create, charges::list))
        .routes(routes!(charges::show))
        .routes(routes!(events::list))
        .routes(routes!(events::show))
        .routes(routes!(events::deliveries))
        .routes(routes!(events::redeliver))
        .routes(routes!(webhook_endpoints::create, webhook_endpoints::list))
        .routes(routes!(
            webhook_endpoints::show,
            webhook_endpoints::update,
            webhook_endpoints::delete
        ))
        .routes(routes!(webhook_endpoints::rotate))
        .routes(routes!(webhook_endpoints::recover))
        .routes(routes!(subscriptions::create, subscriptions::list))
        .routes(routes!(subscriptions::show, subscriptions::update))
        .routes(routes!(subscriptions::pause))
        .routes(routes!(subscriptions::resume))
        .routes(routes!(subscriptions::cancel))
        .routes(routes!(subscriptions::clock))
        .routes(routes!(subscriptions::advance))
        .route_layer(middleware::from_fn_with_state(
            state.api_keys.clone(),
            require_api_key,
        ));
    let public = OpenApiRouter::new()
        .routes(routes!(mandates::customer_return))
        .routes(routes!(webhooks::receive))
        .routes(routes!(ops::healthz))
        .routes(routes!(ops::readyz))
        .routes(routes!(openapi::document))
        .routes(routes!(openapi::docs));
    let (routes, doc) = OpenApiRouter::with_openapi(openapi::ApiDoc::openapi())
        .merge(merchant)
        .merge(public)
        .split_for_parts();
    openapi::publish(&doc);
    let trace = TraceLayer::new_for_http()
        .make_span_with(|req: &Request| {
            // The route template, never the raw URI: paths and queries can carry ids and more.
            let route = req
                .extensions()
                .get::<MatchedPath>()
                .map_or("unmatched", |p| p.as_str());
            let request_id = req
                .headers()
                .get(REQUEST_ID_HEADER)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            // A webhook's id, type and outcome are recorded on this span by its handler, so
            // that the request's one log line carries them.
            tracing::info_span!(
                "request",
                method = %req.method(),
                route,
                request_id,
                webhook_id = tracing::field::Empty,
                event_type = tracing::field::Empty,
                outcome = tracing::field::Empty,
            )
        })
        .on_request(())
        .on_response(DefaultOnResponse::new().level(Level::INFO));
    routes
        .layer(DefaultBodyLimit::max(body_limit))
        // Inside the timeout: a timeout or a client hanging up drops only the wait for the
        // handler, never the handler itself.
        .layer(middleware::from_fn_with_state(body_limit, detach))
        // A handler that panics answers a problem (500), logged and counted like any other,
        // rather than cutting the connection.
        .layer(CatchPanicLayer::custom(panicked))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            request_timeout,
        ))
        // Outside the timeout, so that its bare 408 becomes a problem too.
        .layer(middleware::map_response(problem_fallback))
        .layer(middleware::from_fn(crate::metrics::track_http))
        .layer(trace)
        .layer(PropagateRequestIdLayer::new(REQUEST_ID))
        .layer(middleware::from_fn(assign_request_id))
        .with_state(state)
}

/// The metrics listener's router: `GET /metrics` only. It is served apart from the API
/// (`METRICS_LISTEN_ADDR`, loopback by default), because the API's listener must be public for
/// webhooks and the customer's return, and the counts it shows must not be.
pub fn metrics_router(state: AppState) -> Router {
    crate::metrics::handle();
    Router::new()
        .route("/metrics", axum::routing::get(ops::render))
        .layer(middleware::map_response(problem_fallback))
        .with_state(state)
}

/// The answer to a request whose handler panicked: a bug, logged with what the panic said.
fn panicked(panic: Box<dyn std::any::Any + Send + 'static>) -> Response {
    let said = panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_default();
    ApiError::Internal(anyhow::anyhow!("the handler panicked: {said}")).into_response()
}

/// Reads the body whole (at most `limit` bytes, or `413`), then runs the rest of the request
/// (the handler and its database and Moment work) in a task of its own and waits for it.
///
/// axum drops a request's future when the client hangs up or the timeout fires, and sqlx's
/// `begin()` is not cancel-safe: work cut short there can leave a pooled connection in a
/// transaction that swallows later writes. Here nothing a handler starts is ever cut short,
/// whichever route it is and whether or not its author remembered. The body is read before,
/// in the request's own future, so that a client sending it slowly is still cut off by the
/// timeout instead of holding a detached task.
async fn detach(State(limit): State<usize>, req: Request, next: Next) -> Response {
    let (parts, body) = req.into_parts();
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return ApiError::PayloadTooLarge(limit).into_response();
    }
    let bytes = match http_body_util::Limited::new(body, limit).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            return ApiError::PayloadTooLarge(limit).into_response();
        }
        Err(_) => {
            return ApiError::Malformed {
                field: None,
                detail: "the request body could not be read".into(),
            }
            .into_response();
        }
    };
    let req = Request::from_parts(parts, Body::from(bytes));
    db::detached(next.run(req)).await
}

/// Connects (creating and migrating the database unless told not to), starts the worker,
/// and serves on `listener` until `shutdown` completes; then drains in-flight requests and
/// lets the worker finish its run.
pub async fn run(
    mut config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let db = db::connect(&config.db, config.migrate).await?;
    let state = AppState::new(&mut config, db)?;
    if let Some((url, secret)) = &config.merchant_webhook {
        crate::workflow::outbound::ensure_endpoint(&state, url, secret).await?;
    }
    let (stop_worker, stopped) = tokio::sync::watch::channel(false);
    let worker = tokio::spawn(worker::run(state.clone(), config.worker_interval, stopped));
    tracing::info!(addr = %listener.local_addr()?, public_url = %config.public_url, "listening");
    let app = router_with_limit(state.clone(), config.request_timeout, config.body_limit);
    let metrics_listener = TcpListener::bind(config.metrics_listen_addr)
        .await
        .with_context(|| {
            format!(
                "METRICS_LISTEN_ADDR: cannot listen on {}",
                config.metrics_listen_addr
            )
        })?;
    tracing::info!(addr = %metrics_listener.local_addr()?, "metrics listening");
    let metrics = metrics_router(state.clone());
    let (signalled, on_signal) = tokio::sync::watch::channel(false);
    let signal = async move {
        shutdown.await;
        let _ = signalled.send(true);
    };
    let limits = Limits {
        header_read_timeout: config.header_read_timeout,
        max_connections: config.max_connections,
        ..Limits::default()
    };
    let mut stopping = on_signal.clone();
    let metrics_server = tokio::spawn(server::serve(
        metrics_listener,
        metrics,
        Limits::default(),
        async move {
            let _ = stopping.wait_for(|s| *s).await;
        },
    ));
    let mut waiting = on_signal;
    // After the signal: no new connections; in-flight requests get `shutdown_timeout` to
    // finish (their database work is detached and completes regardless).
    let grace = config.shutdown_timeout;
    tokio::select! {
        () = server::serve(listener, app, limits, signal) => {}
        () = async {
            let _ = waiting.wait_for(|s| *s).await;
            tokio::time::sleep(grace).await;
        } => tracing::warn!(secs = grace.as_secs_f64(), "in-flight requests did not finish in time; stopping anyway"),
    }
    metrics_server.abort();
    let _ = stop_worker.send(true);
    if tokio::time::timeout(grace, worker).await.is_err() {
        tracing::warn!("the worker did not finish its run in time; stopping anyway");
    }
    state.db.close().await;
    tracing::info!("stopped");
    Ok(())
}

/// Completes on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = terminate => {} }
    tracing::info!("shutting down");
}
