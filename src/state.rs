//! What a request or the worker needs: the pool, the Moment client, the webhook verifier and
//! the settings the handlers read, built once from the checked `Config`.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::FromRef;
use sqlx::PgPool;

use crate::auth::ApiKeys;
use crate::config::Config;
use crate::moment::signature::{Verifier, WebhookSecret};
use crate::moment::{MomentClient, RetryPolicy};

/// Fetches from Moment for returning customers in flight at once, at most.
pub const RETURN_FETCHES: usize = 16;

/// Settings the handlers read.
pub struct Settings {
    /// Base URL of this service, without a trailing slash.
    pub public_url: String,
    /// Where a customer lands after checkout when the mandate named no `return_url`.
    pub default_return_url: Option<String>,
    /// How long a pending mandate or processing charge may stay quiet before the worker asks
    /// Moment about it.
    pub reconcile_after: Duration,
    /// Settled webhook events older than this many days are deleted by the worker.
    pub webhook_event_retention_days: f64,
    /// Events older than this many days are deleted by the worker (their deliveries too).
    pub event_retention_days: f64,
    /// Waits after each failed delivery of a webhook out; given up after the last.
    pub delivery_schedule: Vec<Duration>,
    /// Charges are held to their mandate's terms before Moment is called (off only in tests).
    pub local_terms_check: bool,
    /// How subscriptions are billed.
    pub billing: crate::config::Billing,
}

/// Shared by every handler; cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub db: PgPool,
    pub moment: MomentClient,
    pub verifier: Arc<Verifier>,
    /// The merchant's API keys, handed to the `auth` layer.
    pub api_keys: Arc<ApiKeys>,
    pub settings: Arc<Settings>,
    /// Fetches from Moment for customers returning from checkout, in flight at most: a flood
    /// of returns cannot turn into a flood of calls.
    pub return_fetches: Arc<tokio::sync::Semaphore>,
    /// The client for webhooks out to the merchant: 15 s per attempt, no redirects.
    pub outbound: reqwest::Client,
    /// What billing reads the time from (a test clock in `dev` and the tests).
    pub clock: crate::clock::Clock,
    /// Moment's webhooks are stored through this, in batches (group commit).
    pub ingest: crate::store::ingest::Ingest,
    /// `GET /metrics`'s count of the settled mandates and charges, reused for a while.
    pub counts: Arc<crate::store::counts::Recount>,
}

impl FromRef<AppState> for Arc<ApiKeys> {
    fn from_ref(state: &AppState) -> Self {
        state.api_keys.clone()
    }
}

impl AppState {
    /// Builds the state from checked settings. Consumes the webhook secrets.
    pub fn new(config: &mut Config, db: PgPool) -> anyhow::Result<Self> {
        let retry = RetryPolicy {
            max_attempts: config.moment_max_attempts,
            max_retry_after: config.moment_max_retry_after,
            ..RetryPolicy::default()
        };
        let moment = MomentClient::new(
            &config.moment_api_url,
            config.moment_secret_key.clone(),
            config.moment_timeout,
            retry,
        )?;
        let secrets: Vec<WebhookSecret> = std::mem::take(&mut config.webhook_secrets);
        let ingest = crate::store::ingest::Ingest::start(db.clone());
        Ok(Self {
            db,
            moment,
            verifier: Arc::new(Verifier::new(secrets, config.webhook_tolerance)),
            api_keys: Arc::new(ApiKeys::new(&config.api_keys)),
            settings: Arc::new(Settings {
                public_url: config.public_url.clone(),
                default_return_url: config.default_return_url.clone(),
                reconcile_after: config.reconcile_after,
                webhook_event_retention_days: config.webhook_event_retention_days,
                event_retention_days: config.event_retention_days,
                delivery_schedule: config.delivery_schedule.clone(),
                local_terms_check: config.local_terms_check,
                billing: config.billing.clone(),
            }),
            return_fetches: Arc::new(tokio::sync::Semaphore::new(RETURN_FETCHES)),
            clock: config.clock.clone(),
            ingest,
            counts: Arc::new(crate::store::counts::Recount::new(config.metrics_recount)),
            outbound: reqwest::Client::builder()
                .timeout(crate::config::DELIVERY_TIMEOUT)
                .connect_timeout(Duration::from_secs(5))
                .redirect(reqwest::redirect::Policy::none())
                .user_agent(concat!("moment-mandates/", env!("CARGO_PKG_VERSION")))
                .build()?,
        })
    }
}
