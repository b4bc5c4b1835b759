//! Application state, the router, and `run` with graceful shutdown.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request};
use axum::http::{HeaderName, StatusCode};
use axum::middleware;
use sqlx::PgPool;
use tokio::net::TcpListener;
use tower_http::request_id::PropagateRequestIdLayer;
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::{DefaultOnResponse, TraceLayer};
use tracing::Level;
use utoipa::OpenApi as _;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::{ApiKeys, require_api_key};
use crate::config::Config;
use crate::error::problem_fallback;
use crate::moment::signature::{Verifier, WebhookSecret};
use crate::moment::{MomentClient, RetryPolicy};
use crate::routes::{charges, health, mandates, webhooks};
use crate::telemetry::{REQUEST_ID_HEADER, assign_request_id};
use crate::{db, openapi, worker};

/// Default largest request body accepted (bytes); larger ones get 413.
pub const BODY_LIMIT: usize = 256 * 1024;

/// Settings the handlers read.
pub struct Settings {
    /// Base URL of this service, without a trailing slash.
    pub public_url: String,
    pub default_return_url: Option<String>,
    pub api_keys: ApiKeys,
    /// How long a pending mandate or processing charge may stay quiet before the worker asks
    /// Moment about it.
    pub reconcile_after: Duration,
}

/// Shared by every handler; cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub db: PgPool,
    pub moment: MomentClient,
    pub verifier: Arc<Verifier>,
    pub settings: Arc<Settings>,
}

impl AppState {
    /// Builds the state from checked settings. Consumes the webhook secrets.
    pub fn new(config: &mut Config, db: PgPool) -> anyhow::Result<Self> {
        let retry = RetryPolicy {
            max_attempts: config.moment_max_attempts,
            ..RetryPolicy::default()
        };
        let moment = MomentClient::new(
            &config.moment_api_url,
            config.moment_secret_key.clone(),
            config.moment_timeout,
            retry,
        )?;
        let secrets: Vec<WebhookSecret> = std::mem::take(&mut config.webhook_secrets);
        Ok(Self {
            db,
            moment,
            verifier: Arc::new(Verifier::new(secrets, config.webhook_tolerance)),
            settings: Arc::new(Settings {
                public_url: config.public_url.clone(),
                default_return_url: config.default_return_url.clone(),
                api_keys: ApiKeys::new(&config.api_keys),
                reconcile_after: config.reconcile_after,
            }),
        })
    }
}

const REQUEST_ID: HeaderName = HeaderName::from_static(REQUEST_ID_HEADER);

/// Every route, with its middleware. `request_timeout` answers a slow request with 408; its
/// database and Moment work runs detached and completes regardless.
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
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            require_api_key,
        ));
    let public = OpenApiRouter::new()
        .routes(routes!(mandates::customer_return))
        .routes(routes!(webhooks::receive))
        .routes(routes!(health::healthz))
        .routes(routes!(health::readyz))
        .routes(routes!(crate::metrics::render))
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
    let (stop_worker, stopped) = tokio::sync::watch::channel(false);
    let worker = tokio::spawn(worker::run(state.clone(), config.worker_interval, stopped));
    tracing::info!(addr = %listener.local_addr()?, public_url = %config.public_url, "listening");
    let app = router_with_limit(state.clone(), config.request_timeout, config.body_limit);
    let (signalled, on_signal) = tokio::sync::oneshot::channel::<()>();
    let server = axum::serve(listener, app).with_graceful_shutdown(async move {
        shutdown.await;
        let _ = signalled.send(());
    });
    // After the signal: no new connections; in-flight requests get `shutdown_timeout` to
    // finish (their database work is detached and completes regardless).
    let grace = config.shutdown_timeout;
    tokio::select! {
        served = server.into_future() => served?,
        () = async {
            let _ = on_signal.await;
            tokio::time::sleep(grace).await;
        } => tracing::warn!(secs = grace.as_secs_f64(), "in-flight requests did not finish in time; stopping anyway"),
    }
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
