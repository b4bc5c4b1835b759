//! The command line (clap): `serve`, `migrate`, `sim` and `dev`, their flags and variables,
//! each turned into the settings of the part it starts. The only module that knows them all.
//!
//! clap reads every value as text and the parsers of `config` check it, so that a missing or
//! malformed setting stops the process with one line naming the variable, and no value of a
//! secret is ever printed (not in `--help` either: `hide_env_values`).

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use secrecy::{ExposeSecret, SecretString};

use crate::config::{
    Config, ConfigError, DbConfig, bad, duration, http_url, log_format, millis, number, positive,
    positive_secs, required, share, socket_addr,
};
use crate::dev::{self, DevOptions};
use crate::moment::signature::WebhookSecret;
use crate::sim::{self, Faults, SimConfig};
use crate::telemetry::{self, LogFormat};
use crate::{app, db};

/// The shortest API key accepted.
pub const MIN_API_KEY_LEN: usize = 24;

/// The secrets and keys shipped in `.env.example` and `docker-compose.yml`: local-only, so
/// `serve` refuses them beside a live Moment key.
pub const EXAMPLE_VALUES: &[&str] = &[
    "whsec_bG9jYWwtZGV2ZWxvcG1lbnQtb25seS1yZXBsYWNlLW1l",
    "replace-with-a-long-random-token",
    "local-only-api-key-change-me-0000",
];

/// Default database: the local Postgres with trust auth.
pub const DEFAULT_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/moment_mandates";

#[derive(Parser)]
#[command(
    name = "moment-mandates",
    version,
    about = "Recurring payments through Moment: mandates, webhooks and charges"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Run the HTTP service (and its background worker).
    Serve(Box<ServeArgs>),
    /// Create the database if missing, apply migrations, and exit.
    Migrate(DbArgs),
    /// Run the Moment simulator: payment sessions API, hosted checkout and webhooks.
    Sim(Box<SimArgs>),
    /// Run the service, the simulator and a demo merchant page together, wired with fresh
    /// secrets, on the local Postgres.
    Dev(Box<DevArgs>),
}

/// Faults the simulator injects; each can be changed later through `PATCH /_sim/faults`.
#[derive(Args, Clone)]
pub struct FaultArgs {
    /// Milliseconds added to every API answer.
    #[arg(long, env = "SIM_LATENCY_MS", default_value = "0")]
    pub latency_ms: String,
    /// Share (0..1) of API calls answered 503 without effect.
    #[arg(long, env = "SIM_ERROR_RATE", default_value = "0")]
    pub error_rate: String,
    /// Share (0..1) of API calls that take effect but whose answer is held back (a timeout).
    #[arg(long, env = "SIM_TIMEOUT_RATE", default_value = "0")]
    pub timeout_rate: String,
    /// How long a timed-out answer is held back, in milliseconds.
    #[arg(long, env = "SIM_HANG_MS", default_value = "30000")]
    pub hang_ms: String,
    /// Share (0..1) of webhooks delivered twice.
    #[arg(long, env = "SIM_DUPLICATE_RATE", default_value = "0")]
    pub duplicate_rate: String,
    /// Each webhook waits a random 0..N ms before its first attempt, which reorders them.
    #[arg(long, env = "SIM_REORDER_WINDOW_MS", default_value = "0")]
    pub reorder_window_ms: String,
    /// Hold every webhook until `POST /_sim/webhooks/release`.
    #[arg(long, env = "SIM_HOLD_WEBHOOKS")]
    pub hold_webhooks: bool,
}

#[derive(Args, Clone)]
pub struct SimArgs {
    /// Address to listen on.
    #[arg(long, env = "SIM_LISTEN_ADDR", default_value = "127.0.0.1:8081")]
    pub listen: String,
    /// Base URL for the checkout pages in session_url [default: http://LISTEN].
    #[arg(long, env = "SIM_PUBLIC_URL")]
    pub public_url: Option<String>,
    /// The API key callers must send as a bearer token. Required.
    #[arg(long, env = "SIM_SECRET_KEY", hide_env_values = true)]
    pub secret_key: Option<String>,
    /// The whsec_… secret webhooks are signed with. Required.
    #[arg(long, env = "SIM_WEBHOOK_SECRET", hide_env_values = true)]
    pub webhook_secret: Option<String>,
    /// Where webhooks are sent; without it they are only recorded.
    #[arg(long, env = "SIM_WEBHOOK_URL")]
    pub webhook_url: Option<String>,
    /// Milliseconds before a next_in_series charge settles.
    #[arg(long, env = "SIM_SETTLE_DELAY_MS", default_value = "2000")]
    pub settle_delay_ms: String,
    /// Seconds before an unfinished checkout expires.
    #[arg(long, env = "SIM_SESSION_EXPIRY_SECS", default_value = "1800")]
    pub session_expiry_secs: String,
    /// Waits between webhook attempts, comma-separated, each with a unit (ms, s, m, h).
    #[arg(
        long,
        env = "SIM_WEBHOOK_RETRY_SCHEDULE",
        default_value = "5s,5m,30m,2h,5h,10h,10h"
    )]
    pub webhook_retry_schedule: String,
    /// Seconds one webhook attempt may take.
    #[arg(long, env = "SIM_WEBHOOK_TIMEOUT_SECS", default_value = "15")]
    pub webhook_timeout_secs: String,
    /// Answer 400 to a create without Idempotency-Key.
    #[arg(long, env = "SIM_REQUIRE_IDEMPOTENCY_KEY")]
    pub require_idempotency_key: bool,
    #[command(flatten)]
    pub faults: FaultArgs,
    /// Log format: json or text.
    #[arg(long, env = "LOG_FORMAT", default_value = "text")]
    pub log_format: String,
}

#[derive(Args, Clone)]
pub struct DevArgs {
    /// Postgres URL; the database is created if missing.
    #[arg(long, env = "DATABASE_URL", default_value = DEV_DATABASE_URL, hide_env_values = true)]
    pub database_url: String,
    /// Where the service listens.
    #[arg(long, env = "LISTEN_ADDR", default_value = "127.0.0.1:8080")]
    pub listen: String,
    /// Where the simulator listens.
    #[arg(long, env = "SIM_LISTEN_ADDR", default_value = "127.0.0.1:8081")]
    pub sim_listen: String,
    /// Where the demo merchant page listens.
    #[arg(long, env = "DEMO_LISTEN_ADDR", default_value = "127.0.0.1:8082")]
    pub demo_listen: String,
    /// Milliseconds before a charge settles at the simulator.
    #[arg(long, env = "SIM_SETTLE_DELAY_MS", default_value = "1000")]
    pub settle_delay_ms: String,
    #[command(flatten)]
    pub faults: FaultArgs,
    /// Log format: json or text.
    #[arg(long, env = "LOG_FORMAT", default_value = "text")]
    pub log_format: String,
}

/// The database `dev` uses unless DATABASE_URL says otherwise.
pub const DEV_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/moment_mandates_dev";

#[derive(Args, Clone)]
pub struct DbArgs {
    /// Postgres URL; the database is created if missing.
    #[arg(long, env = "DATABASE_URL", default_value = DEFAULT_DATABASE_URL, hide_default_value = true, hide_env_values = true)]
    pub database_url: String,
    /// Connections in the pool at most.
    #[arg(long, env = "DATABASE_MAX_CONNECTIONS", default_value = "20")]
    pub database_max_connections: String,
    /// Seconds a request waits for a free connection before the service answers 503.
    #[arg(long, env = "DATABASE_ACQUIRE_TIMEOUT_SECS", default_value = "5")]
    pub database_acquire_timeout_secs: String,
}

#[derive(Args, Clone)]
pub struct ServeArgs {
    #[command(flatten)]
    pub db: DbArgs,
    /// Do not create the database or apply migrations at start.
    #[arg(long)]
    pub no_migrate: bool,
    /// Address to listen on.
    #[arg(long, env = "LISTEN_ADDR", default_value = "127.0.0.1:8080")]
    pub listen_addr: String,
    /// Base URL at which customers and Moment reach this service [default: http://LISTEN_ADDR].
    #[arg(long, env = "PUBLIC_URL")]
    pub public_url: Option<String>,
    /// Moment's API base URL.
    #[arg(
        long,
        env = "MOMENT_API_URL",
        default_value = "https://api.momentpay.net"
    )]
    pub moment_api_url: String,
    /// Moment secret API key (sk_test_… or sk_…). Required.
    #[arg(long, env = "MOMENT_SECRET_KEY", hide_env_values = true)]
    pub moment_secret_key: Option<String>,
    /// Webhook signing secrets (whsec_…), separated by commas or spaces. Required.
    #[arg(long, env = "MOMENT_WEBHOOK_SECRETS", hide_env_values = true)]
    pub moment_webhook_secrets: Option<String>,
    /// Largest accepted distance between a webhook's timestamp and now, in seconds.
    #[arg(long, env = "MOMENT_WEBHOOK_TOLERANCE_SECS", default_value = "180")]
    pub moment_webhook_tolerance_secs: String,
    /// Seconds each call to Moment may take.
    #[arg(long, env = "MOMENT_TIMEOUT_SECS", default_value = "10")]
    pub moment_timeout_secs: String,
    /// Attempts per call to Moment (429, 5xx and timeouts are retried).
    #[arg(long, env = "MOMENT_MAX_ATTEMPTS", default_value = "3")]
    pub moment_max_attempts: String,
    /// Bearer tokens accepted on /mandates and /charges, separated by commas. Required.
    #[arg(long, env = "API_KEYS", hide_env_values = true)]
    pub api_keys: Option<String>,
    /// Where a customer lands after checkout when the mandate named no return_url.
    #[arg(long, env = "DEFAULT_RETURN_URL")]
    pub default_return_url: Option<String>,
    /// Seconds a request may take before it is answered 408 (its work still completes).
    #[arg(long, env = "REQUEST_TIMEOUT_SECS", default_value = "60")]
    pub request_timeout_secs: String,
    /// Seconds to finish in-flight requests and background work after SIGTERM or Ctrl-C.
    #[arg(long, env = "SHUTDOWN_TIMEOUT_SECS", default_value = "30")]
    pub shutdown_timeout_secs: String,
    /// Largest request body accepted, in bytes (larger ones get 413).
    #[arg(long, env = "BODY_LIMIT_BYTES", default_value = "262144")]
    pub body_limit_bytes: String,
    /// Seconds between runs of the background worker (resends, deferred events).
    #[arg(long, env = "WORKER_INTERVAL_SECS", default_value = "5")]
    pub worker_interval_secs: String,
    /// Seconds a pending mandate or processing charge may stay quiet before the worker fetches
    /// its session from Moment.
    #[arg(long, env = "RECONCILE_AFTER_SECS", default_value = "300")]
    pub reconcile_after_secs: String,
    /// The longest Retry-After from Moment waited out inside one call, in seconds; a longer
    /// one ends the call and the background worker waits it out.
    #[arg(long, env = "MOMENT_MAX_RETRY_AFTER_SECS", default_value = "60")]
    pub moment_max_retry_after_secs: String,
    /// Days events are kept (GET /events, redelivery).
    #[arg(long, env = "EVENT_RETENTION_DAYS", default_value = "30")]
    pub event_retention_days: String,
    /// Waits after each failed webhook delivery to the merchant, comma-separated, each with a
    /// unit (ms, s, m, h); given up after the last.
    #[arg(
        long,
        env = "MERCHANT_WEBHOOK_RETRY_SCHEDULE",
        default_value = "5s,5m,30m,2h,5h,10h,10h"
    )]
    pub merchant_webhook_retry_schedule: String,
    /// An endpoint that receives every event, created at start (simple setups).
    #[arg(long, env = "MERCHANT_WEBHOOK_URL")]
    pub merchant_webhook_url: Option<String>,
    /// The whsec_… secret the MERCHANT_WEBHOOK_URL endpoint is signed with; required with it.
    #[arg(long, env = "MERCHANT_WEBHOOK_SECRET", hide_env_values = true)]
    pub merchant_webhook_secret: Option<String>,
    /// Where GET /metrics is served (keep it off the public network).
    #[arg(long, env = "METRICS_LISTEN_ADDR", default_value = "127.0.0.1:9464")]
    pub metrics_listen_addr: String,
    /// Seconds GET /metrics reuses its count of the settled mandates and charges (every status
    /// but pending, processing and needs_review, which are counted at every scrape); 0
    /// counts them at every scrape too.
    #[arg(long, env = "METRICS_RECOUNT_SECS", default_value = "60")]
    pub metrics_recount_secs: String,
    /// Seconds a client may take to send a request head.
    #[arg(long, env = "HEADER_READ_TIMEOUT_SECS", default_value = "10")]
    pub header_read_timeout_secs: String,
    /// Connections open at once at most on LISTEN_ADDR.
    #[arg(long, env = "MAX_CONNECTIONS", default_value = "1024")]
    pub max_connections: String,
    /// Days applied, ignored and orphaned webhook events are kept.
    #[arg(long, env = "WEBHOOK_EVENT_RETENTION_DAYS", default_value = "90")]
    pub webhook_event_retention_days: String,
    /// Log format: json or text.
    #[arg(long, env = "LOG_FORMAT", default_value = "json")]
    pub log_format: String,
    /// The time zone subscriptions are billed in: Africa/Johannesburg, UTC or +HH:MM.
    #[arg(long, env = "BILLING_TIME_ZONE", default_value = "Africa/Johannesburg")]
    pub billing_time_zone: String,
    /// The local time a subscription is charged on its day, unless it names its own (HH:MM).
    #[arg(long, env = "BILLING_CHARGE_TIME", default_value = "09:00")]
    pub billing_charge_time: String,
    /// Waits from a failed period's first failure to each retry, comma-separated with units
    /// (d, h, m, s); dunning ends after the last.
    #[arg(long, env = "DUNNING_SCHEDULE", default_value = "1d,3d,5d,7d")]
    pub dunning_schedule: String,
    /// What a subscription becomes when dunning runs out: paused, cancelled or past_due.
    #[arg(long, env = "DUNNING_EXHAUSTED", default_value = "paused")]
    pub dunning_exhausted: String,
    /// How long before each charge subscription.charge_upcoming is sent (with a unit).
    #[arg(long, env = "UPCOMING_CHARGE_NOTICE", default_value = "3d")]
    pub upcoming_charge_notice: String,
    /// Scheduled charges sent to Moment at once, at most.
    #[arg(long, env = "SCHEDULER_CONCURRENCY", default_value = "64")]
    pub scheduler_concurrency: String,
}

impl FaultArgs {
    pub fn faults(&self) -> Result<Faults, ConfigError> {
        let faults = Faults {
            latency_ms: number("SIM_LATENCY_MS", &self.latency_ms)?,
            error_rate: share("SIM_ERROR_RATE", &self.error_rate)?,
            timeout_rate: share("SIM_TIMEOUT_RATE", &self.timeout_rate)?,
            hang_ms: number("SIM_HANG_MS", &self.hang_ms)?,
            duplicate_rate: share("SIM_DUPLICATE_RATE", &self.duplicate_rate)?,
            reorder_window_ms: number("SIM_REORDER_WINDOW_MS", &self.reorder_window_ms)?,
            hold_webhooks: self.hold_webhooks,
        };
        faults.check().map_err(|e| bad("SIM_TIMEOUT_RATE", e))?;
        Ok(faults)
    }
}

impl SimArgs {
    /// The listen address, the log format and the simulator's settings.
    pub fn config(&self) -> Result<(SocketAddr, LogFormat, SimConfig), ConfigError> {
        let listen = socket_addr("SIM_LISTEN_ADDR", &self.listen)?;
        let secret_key = required("SIM_SECRET_KEY", self.secret_key.as_deref())?;
        let webhook_secret = WebhookSecret::parse(&required(
            "SIM_WEBHOOK_SECRET",
            self.webhook_secret.as_deref(),
        )?)
        .map_err(|e| bad("SIM_WEBHOOK_SECRET", e.to_string()))?;
        let mut config = SimConfig::new(&secret_key, webhook_secret);
        config.webhook_url = match &self.webhook_url {
            Some(u) if !u.trim().is_empty() => Some(http_url("SIM_WEBHOOK_URL", u)?),
            _ => None,
        };
        config.public_url = match &self.public_url {
            Some(u) if !u.trim().is_empty() => Some(http_url("SIM_PUBLIC_URL", u)?),
            _ => None,
        };
        config.settle_delay = millis("SIM_SETTLE_DELAY_MS", &self.settle_delay_ms)?;
        config.session_expiry =
            positive_secs("SIM_SESSION_EXPIRY_SECS", &self.session_expiry_secs)?;
        config.webhook_retry_schedule = self
            .webhook_retry_schedule
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| duration("SIM_WEBHOOK_RETRY_SCHEDULE", s))
            .collect::<Result<_, _>>()?;
        config.webhook_timeout =
            positive_secs("SIM_WEBHOOK_TIMEOUT_SECS", &self.webhook_timeout_secs)?;
        config.require_idempotency_key = self.require_idempotency_key;
        config.faults = self.faults.faults()?;
        Ok((listen, log_format(&self.log_format)?, config))
    }
}

impl DevArgs {
    pub fn config(&self) -> Result<(LogFormat, DevOptions), ConfigError> {
        let url = self.database_url.trim();
        if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            return Err(bad("DATABASE_URL", "must be a postgres:// URL"));
        }
        let mut opts = DevOptions::new(url);
        opts.listen = socket_addr("LISTEN_ADDR", &self.listen)?;
        opts.sim_listen = socket_addr("SIM_LISTEN_ADDR", &self.sim_listen)?;
        opts.demo_listen = socket_addr("DEMO_LISTEN_ADDR", &self.demo_listen)?;
        opts.settle_delay = millis("SIM_SETTLE_DELAY_MS", &self.settle_delay_ms)?;
        opts.faults = self.faults.faults()?;
        Ok((log_format(&self.log_format)?, opts))
    }
}

impl DbArgs {
    pub fn config(&self) -> Result<DbConfig, ConfigError> {
        let url = self.database_url.trim();
        if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            return Err(bad("DATABASE_URL", "must be a postgres:// URL"));
        }
        let max_connections: u32 =
            number("DATABASE_MAX_CONNECTIONS", &self.database_max_connections)?;
        if max_connections == 0 {
            return Err(bad("DATABASE_MAX_CONNECTIONS", "must be at least 1"));
        }
        Ok(DbConfig {
            url: url.into(),
            max_connections,
            acquire_timeout: positive_secs(
                "DATABASE_ACQUIRE_TIMEOUT_SECS",
                &self.database_acquire_timeout_secs,
            )?,
        })
    }
}

impl ServeArgs {
    /// The billing settings, checked.
    fn billing(&self) -> Result<crate::config::Billing, ConfigError> {
        let (time_zone, offset) =
            crate::config::time_zone("BILLING_TIME_ZONE", &self.billing_time_zone)?;
        let charge_time = crate::domain::subscription::parse_time(self.billing_charge_time.trim())
            .ok_or_else(|| bad("BILLING_CHARGE_TIME", "must be HH:MM, e.g. 09:00"))?;
        let dunning = self
            .dunning_schedule
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| duration("DUNNING_SCHEDULE", s))
            .collect::<Result<Vec<_>, _>>()?;
        if dunning.windows(2).any(|w| w[1] < w[0]) {
            return Err(bad(
                "DUNNING_SCHEDULE",
                "each retry must come after the one before",
            ));
        }
        let exhausted = match self.dunning_exhausted.trim() {
            "paused" => crate::domain::SubscriptionStatus::Paused,
            "cancelled" => crate::domain::SubscriptionStatus::Cancelled,
            "past_due" => crate::domain::SubscriptionStatus::PastDue,
            _ => {
                return Err(bad(
                    "DUNNING_EXHAUSTED",
                    "must be paused, cancelled or past_due",
                ));
            }
        };
        let concurrency: usize = number("SCHEDULER_CONCURRENCY", &self.scheduler_concurrency)?;
        if concurrency == 0 {
            return Err(bad("SCHEDULER_CONCURRENCY", "must be at least 1"));
        }
        Ok(crate::config::Billing {
            time_zone,
            offset,
            charge_time,
            dunning,
            exhausted,
            upcoming_notice: duration("UPCOMING_CHARGE_NOTICE", &self.upcoming_charge_notice)?,
            concurrency,
        })
    }

    /// Checks every setting; the first bad one is the error.
    pub fn config(&self) -> Result<Config, ConfigError> {
        let db = self.db.config()?;
        let listen_addr = socket_addr("LISTEN_ADDR", &self.listen_addr)?;
        let public_url = match &self.public_url {
            Some(u) if !u.trim().is_empty() => http_url("PUBLIC_URL", u)?,
            // Customers and Moment cannot reach a wildcard address: the checkout's return URL
            // would lead nowhere.
            _ if listen_addr.ip().is_unspecified() => {
                return Err(bad(
                    "PUBLIC_URL",
                    format!(
                        "is required when listening on {listen_addr}: customers and Moment must reach this service"
                    ),
                ));
            }
            _ => format!("http://{listen_addr}"),
        };
        let moment_api_url = http_url("MOMENT_API_URL", &self.moment_api_url)?;
        let moment_secret_key = required("MOMENT_SECRET_KEY", self.moment_secret_key.as_deref())?;
        let webhook_secrets = required(
            "MOMENT_WEBHOOK_SECRETS",
            self.moment_webhook_secrets.as_deref(),
        )?
        .split([',', ' '])
        .filter(|s| !s.is_empty())
        .map(|s| WebhookSecret::parse(s).map_err(|e| bad("MOMENT_WEBHOOK_SECRETS", e.to_string())))
        .collect::<Result<Vec<_>, _>>()?;
        let tolerance: u64 = number(
            "MOMENT_WEBHOOK_TOLERANCE_SECS",
            &self.moment_webhook_tolerance_secs,
        )?;
        let api_keys: Vec<SecretString> = required("API_KEYS", self.api_keys.as_deref())?
            .split(',')
            .map(str::trim)
            .filter(|k| !k.is_empty())
            .map(SecretString::from)
            .collect();
        if api_keys.is_empty() {
            return Err(bad("API_KEYS", "is required"));
        }
        if api_keys
            .iter()
            .any(|k| k.expose_secret().chars().count() < MIN_API_KEY_LEN)
        {
            return Err(bad(
                "API_KEYS",
                format!("each key must be at least {MIN_API_KEY_LEN} characters"),
            ));
        }
        let live = !moment_secret_key.starts_with("sk_test_");
        if live {
            if !moment_api_url.starts_with("https://") {
                return Err(bad(
                    "MOMENT_API_URL",
                    "must be https with a live MOMENT_SECRET_KEY",
                ));
            }
            let raw_secrets = self.moment_webhook_secrets.as_deref().unwrap_or_default();
            if raw_secrets
                .split([',', ' '])
                .any(|s| EXAMPLE_VALUES.contains(&s.trim()))
            {
                return Err(bad(
                    "MOMENT_WEBHOOK_SECRETS",
                    "holds an example secret from .env.example or docker-compose.yml; it cannot be used with a live MOMENT_SECRET_KEY",
                ));
            }
            if api_keys
                .iter()
                .any(|k| EXAMPLE_VALUES.contains(&k.expose_secret()))
            {
                return Err(bad(
                    "API_KEYS",
                    "holds an example key from .env.example or docker-compose.yml; it cannot be used with a live MOMENT_SECRET_KEY",
                ));
            }
        }
        let default_return_url = match &self.default_return_url {
            Some(u) if !u.trim().is_empty() => Some(http_url("DEFAULT_RETURN_URL", u)?),
            _ => None,
        };
        let moment_max_attempts: u32 = number("MOMENT_MAX_ATTEMPTS", &self.moment_max_attempts)?;
        if moment_max_attempts == 0 {
            return Err(bad("MOMENT_MAX_ATTEMPTS", "must be at least 1"));
        }
        let log_format = log_format(&self.log_format)?;
        let body_limit: usize = number("BODY_LIMIT_BYTES", &self.body_limit_bytes)?;
        if body_limit < 1024 {
            return Err(bad("BODY_LIMIT_BYTES", "must be at least 1024"));
        }
        Ok(Config {
            db,
            migrate: !self.no_migrate,
            listen_addr,
            public_url,
            moment_api_url,
            moment_secret_key: moment_secret_key.into(),
            webhook_secrets,
            webhook_tolerance: Duration::from_secs(tolerance),
            moment_timeout: positive_secs("MOMENT_TIMEOUT_SECS", &self.moment_timeout_secs)?,
            moment_max_attempts,
            api_keys,
            default_return_url,
            request_timeout: positive_secs("REQUEST_TIMEOUT_SECS", &self.request_timeout_secs)?,
            shutdown_timeout: positive_secs("SHUTDOWN_TIMEOUT_SECS", &self.shutdown_timeout_secs)?,
            body_limit,
            worker_interval: positive_secs("WORKER_INTERVAL_SECS", &self.worker_interval_secs)?,
            reconcile_after: positive_secs("RECONCILE_AFTER_SECS", &self.reconcile_after_secs)?,
            moment_max_retry_after: Duration::from_secs(number(
                "MOMENT_MAX_RETRY_AFTER_SECS",
                &self.moment_max_retry_after_secs,
            )?),
            webhook_event_retention_days: positive(
                "WEBHOOK_EVENT_RETENTION_DAYS",
                &self.webhook_event_retention_days,
            )?,
            event_retention_days: positive("EVENT_RETENTION_DAYS", &self.event_retention_days)?,
            delivery_schedule: self
                .merchant_webhook_retry_schedule
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| duration("MERCHANT_WEBHOOK_RETRY_SCHEDULE", s))
                .collect::<Result<_, _>>()?,
            merchant_webhook: match &self.merchant_webhook_url {
                Some(u) if !u.trim().is_empty() => {
                    let url = http_url("MERCHANT_WEBHOOK_URL", u)?;
                    let secret = required(
                        "MERCHANT_WEBHOOK_SECRET",
                        self.merchant_webhook_secret.as_deref(),
                    )?;
                    WebhookSecret::parse(&secret)
                        .map_err(|e| bad("MERCHANT_WEBHOOK_SECRET", e.to_string()))?;
                    Some((url, secret))
                }
                _ => None,
            },
            metrics_listen_addr: socket_addr("METRICS_LISTEN_ADDR", &self.metrics_listen_addr)?,
            metrics_recount: Duration::from_secs(number(
                "METRICS_RECOUNT_SECS",
                &self.metrics_recount_secs,
            )?),
            header_read_timeout: positive_secs(
                "HEADER_READ_TIMEOUT_SECS",
                &self.header_read_timeout_secs,
            )?,
            max_connections: at_least_one("MAX_CONNECTIONS", &self.max_connections)?,
            log_format,
            local_terms_check: true,
            clock: crate::clock::Clock::real(),
            billing: self.billing()?,
        })
    }
}

fn at_least_one(var: &'static str, value: &str) -> Result<usize, ConfigError> {
    let n: usize = number(var, value)?;
    if n == 0 {
        return Err(bad(var, "must be at least 1"));
    }
    Ok(n)
}

/// Parses the command line and runs the command; the exit code says how it went (2: a bad
/// setting, 1: a failure while running).
pub async fn run() -> ExitCode {
    // A .env file is optional; real environment variables win over it.
    let _ = dotenvy::dotenv();
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => {
            let config = match args.config() {
                Ok(c) => c,
                Err(e) => return fail(&e),
            };
            let _logs = telemetry::init(config.log_format);
            let listener = match tokio::net::TcpListener::bind(config.listen_addr).await {
                Ok(l) => l,
                Err(e) => {
                    return fail(&format!(
                        "LISTEN_ADDR: cannot listen on {}: {e}",
                        config.listen_addr
                    ));
                }
            };
            report(app::run(config, listener, app::shutdown_signal()).await)
        }
        Command::Migrate(args) => {
            let config = match args.config() {
                Ok(c) => c,
                Err(e) => return fail(&e),
            };
            let _logs = telemetry::init(LogFormat::Text);
            report(db::connect(&config, true).await.map(|_| ()))
        }
        Command::Sim(args) => {
            let (listen, format, config) = match args.config() {
                Ok(c) => c,
                Err(e) => return fail(&e),
            };
            let _logs = telemetry::init(format);
            report(run_sim(listen, config).await)
        }
        Command::Dev(args) => {
            let (format, options) = match args.config() {
                Ok(c) => c,
                Err(e) => return fail(&e),
            };
            let _logs = telemetry::init(format);
            report(run_dev(options).await)
        }
    }
}

async fn run_sim(listen: std::net::SocketAddr, config: sim::SimConfig) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| anyhow::anyhow!("SIM_LISTEN_ADDR: cannot listen on {listen}: {e}"))?;
    let (stop, mut stopped) = tokio::sync::watch::channel(false);
    let handle = sim::spawn(config, listener, async move {
        let _ = stopped.wait_for(|s| *s).await;
    })?;
    tracing::info!(url = %handle.url, "Moment simulator listening");
    app::shutdown_signal().await;
    let _ = stop.send(true);
    Ok(())
}

async fn run_dev(options: dev::DevOptions) -> anyhow::Result<()> {
    let mut running = dev::start(options).await?;
    println!("{}", running.instructions());
    tokio::select! {
        _ = app::shutdown_signal() => running.stop().await,
        result = running.service_stopped() => result,
    }
}

fn fail(e: &dyn std::fmt::Display) -> ExitCode {
    eprintln!("error: {e}");
    ExitCode::from(2)
}

fn report(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(extra: &[&str]) -> ServeArgs {
        let mut argv = vec!["moment-mandates", "serve"];
        argv.extend_from_slice(extra);
        match Cli::try_parse_from(argv).unwrap().command {
            Command::Serve(a) => *a,
            _ => unreachable!(),
        }
    }

    const OK: &[&str] = &[
        "--moment-secret-key",
        "sk_test_x",
        "--moment-webhook-secrets",
        "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw, whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD",
        "--api-keys",
        "k1-0123456789abcdefghijklm,k2-0123456789abcdefghijklm",
    ];

    #[test]
    fn defaults_follow_the_documented_values() {
        let c = args(OK).config().unwrap();
        assert_eq!(c.listen_addr.to_string(), "127.0.0.1:8080");
        assert_eq!(c.public_url, "http://127.0.0.1:8080");
        assert_eq!(c.moment_api_url, "https://api.momentpay.net");
        assert_eq!(c.webhook_secrets.len(), 2);
        assert_eq!(c.api_keys.len(), 2);
        assert_eq!(c.webhook_tolerance, Duration::from_secs(180));
        assert!(c.migrate);
    }

    #[test]
    fn bad_settings_name_their_variable_and_hide_secrets() {
        let cases: &[(&[&str], &str)] = &[
            (&["--api-keys", "k"], "MOMENT_SECRET_KEY"),
            (
                &["--moment-secret-key", "sk", "--api-keys", "k"],
                "MOMENT_WEBHOOK_SECRETS",
            ),
            (
                &[
                    "--moment-secret-key",
                    "sk",
                    "--moment-webhook-secrets",
                    "whsec_!!!",
                    "--api-keys",
                    "k",
                ],
                "MOMENT_WEBHOOK_SECRETS",
            ),
            (
                &[
                    "--moment-secret-key",
                    "sk",
                    "--moment-webhook-secrets",
                    "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
                ],
                "API_KEYS",
            ),
        ];
        for (argv, var) in cases {
            let err = args(argv).config().err().expect("must fail");
            assert_eq!(err.var, *var);
            assert!(!err.to_string().contains("whsec_!!!"));
        }
        let mut argv = OK.to_vec();
        argv.extend(["--listen-addr", "nowhere"]);
        assert_eq!(args(&argv).config().err().unwrap().var, "LISTEN_ADDR");
    }

    /// `OK` with the flags of `extra` (flag, value pairs) put in place of its own.
    fn with(extra: &[&str]) -> Result<Config, ConfigError> {
        let flags: Vec<&str> = extra.iter().step_by(2).copied().collect();
        let mut argv: Vec<&str> = OK
            .chunks(2)
            .filter(|pair| !flags.contains(&pair[0]))
            .flatten()
            .copied()
            .collect();
        argv.extend_from_slice(extra);
        args(&argv).config()
    }

    #[test]
    fn settings_unsafe_for_real_money_are_refused() {
        const LIVE: &[&str] = &["--moment-secret-key", "sk_live_0123456789"];
        let short = with(&["--api-keys", "short-key"]).err().unwrap();
        assert_eq!(short.var, "API_KEYS");
        assert!(!short.to_string().contains("short-key"));
        assert_eq!(
            with(&["--listen-addr", "0.0.0.0:8080"]).err().unwrap().var,
            "PUBLIC_URL"
        );
        assert!(
            with(&[
                "--listen-addr",
                "0.0.0.0:8080",
                "--public-url",
                "https://pay.example.com"
            ])
            .is_ok()
        );
        let mut plain_http = LIVE.to_vec();
        plain_http.extend(["--moment-api-url", "http://api.momentpay.net"]);
        assert_eq!(with(&plain_http).err().unwrap().var, "MOMENT_API_URL");
        // A test key may talk to the simulator over http.
        assert!(with(&["--moment-api-url", "http://127.0.0.1:8081"]).is_ok());
        for example in EXAMPLE_VALUES {
            let mut argv = LIVE.to_vec();
            let var = if example.starts_with("whsec_") {
                argv.extend(["--moment-webhook-secrets", example]);
                "MOMENT_WEBHOOK_SECRETS"
            } else {
                argv.extend(["--api-keys", example]);
                "API_KEYS"
            };
            let err = with(&argv).err().expect("an example value with a live key");
            assert_eq!(err.var, var);
            assert!(!err.to_string().contains(example));
        }
        // The same example values are fine with a test key, for local use.
        assert!(with(&["--api-keys", EXAMPLE_VALUES[1]]).is_ok());
        assert!(with(LIVE).is_ok());
    }
}
