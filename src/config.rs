//! Settings the service runs with, checked: `Config` for `serve`, `DbConfig` for the pool,
//! and the parsers that turn a setting's text into a value or a `ConfigError` naming its
//! variable. The command line that fills them in lives in `cli`.
//!
//! Secrets are `SecretString`s, so that no value of a secret is ever printed.

use std::net::SocketAddr;
use std::time::Duration;

use secrecy::SecretString;

use crate::moment::signature::WebhookSecret;
use crate::telemetry::LogFormat;

/// Default largest request body accepted (bytes); larger ones get 413.
pub const BODY_LIMIT: usize = 256 * 1024;

/// Seconds waited after each failed delivery of a webhook out (as Svix does): the first
/// attempt is immediate, then 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h; then it is given up.
pub const DELIVERY_SCHEDULE: &[u64] = &[5, 300, 1800, 7200, 18000, 36000, 36000];

/// How long one delivery of a webhook out to the merchant may take.
pub const DELIVERY_TIMEOUT: Duration = Duration::from_secs(15);

/// `METRICS_RECOUNT_SECS`'s default.
pub const METRICS_RECOUNT_SECS: u64 = 60;

/// How subscriptions are billed.
#[derive(Debug, Clone)]
pub struct Billing {
    /// The billing time zone's name, and its offset (fixed: zones with daylight saving are
    /// refused at start).
    pub time_zone: String,
    pub offset: time::UtcOffset,
    /// When a subscription is charged on its day, unless it says otherwise.
    pub charge_time: time::Time,
    /// Waits from a period's first failure to each retry; dunning ends after the last.
    pub dunning: Vec<Duration>,
    /// What a subscription becomes when dunning runs out: paused, cancelled or past_due.
    pub exhausted: crate::domain::SubscriptionStatus,
    /// How long before each charge `subscription.charge_upcoming` is sent.
    pub upcoming_notice: Duration,
    /// Charges the scheduler sends at once, at most.
    pub concurrency: usize,
}

impl Default for Billing {
    fn default() -> Self {
        Self {
            time_zone: "Africa/Johannesburg".into(),
            offset: crate::domain::terms::SAST,
            charge_time: time::Time::from_hms(9, 0, 0).expect("a valid time"),
            dunning: [1, 3, 5, 7]
                .into_iter()
                .map(|d| Duration::from_secs(d * 86400))
                .collect(),
            exhausted: crate::domain::SubscriptionStatus::Paused,
            upcoming_notice: Duration::from_secs(3 * 86400),
            concurrency: 64,
        }
    }
}

/// `BILLING_TIME_ZONE`: a name we know the fixed offset of, or an offset `+HH:MM`.
pub fn time_zone(var: &'static str, value: &str) -> Result<(String, time::UtcOffset), ConfigError> {
    let v = value.trim();
    if v == "Africa/Johannesburg" {
        return Ok((v.to_owned(), crate::domain::terms::SAST));
    }
    if matches!(v, "UTC" | "Etc/UTC") {
        return Ok((v.to_owned(), time::UtcOffset::UTC));
    }
    crate::domain::subscription::parse_offset(v)
        .map(|o| (v.to_owned(), o))
        .ok_or_else(|| {
            bad(
                var,
                "use Africa/Johannesburg, UTC or a fixed offset such as +02:00 (zones with \
                 daylight saving are not supported)",
            )
        })
}

/// Pool settings.
#[derive(Clone)]
pub struct DbConfig {
    pub url: SecretString,
    /// Connections in the pool at most.
    pub max_connections: u32,
    /// How long a request waits for a free connection before the service answers 503.
    pub acquire_timeout: Duration,
}

/// A setting that stops the process: the variable and what is wrong (never its value when
/// it is a secret).
#[derive(Debug, thiserror::Error)]
#[error("{var}: {reason}")]
pub struct ConfigError {
    pub var: &'static str,
    pub reason: String,
}

pub fn bad(var: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError {
        var,
        reason: reason.into(),
    }
}

/// Everything `serve` needs, checked.
pub struct Config {
    pub db: DbConfig,
    pub migrate: bool,
    pub listen_addr: SocketAddr,
    /// Without a trailing slash.
    pub public_url: String,
    pub moment_api_url: String,
    pub moment_secret_key: SecretString,
    pub webhook_secrets: Vec<WebhookSecret>,
    pub webhook_tolerance: Duration,
    pub moment_timeout: Duration,
    pub moment_max_attempts: u32,
    pub api_keys: Vec<SecretString>,
    pub default_return_url: Option<String>,
    pub request_timeout: Duration,
    pub shutdown_timeout: Duration,
    pub body_limit: usize,
    pub worker_interval: Duration,
    pub reconcile_after: Duration,
    /// The longest `Retry-After` from Moment waited out inside one call.
    pub moment_max_retry_after: Duration,
    /// Applied, ignored and orphaned webhook events older than this many days are deleted.
    pub webhook_event_retention_days: f64,
    /// Events older than this many days are deleted.
    pub event_retention_days: f64,
    /// Waits after each failed delivery of a webhook out to the merchant.
    pub delivery_schedule: Vec<Duration>,
    /// An endpoint for webhooks out, created at start, and its signing secret.
    pub merchant_webhook: Option<(String, String)>,
    /// Where `GET /metrics` is served, apart from the API.
    pub metrics_listen_addr: SocketAddr,
    /// How long `GET /metrics` reuses its count of the settled mandates and charges.
    pub metrics_recount: Duration,
    /// How long a client may take to send a request head.
    pub header_read_timeout: Duration,
    /// Connections open at once at most on the API's listener.
    pub max_connections: usize,
    pub log_format: LogFormat,
    /// Whether `POST /charges` holds a charge to the mandate's terms before calling Moment.
    /// Always on, and not a setting: only the tests switch it off, to prove that Moment (the
    /// simulator) refuses the same charges.
    pub local_terms_check: bool,
    /// The billing clock: real for `serve`; `dev` and the tests share a test clock with the
    /// simulator.
    pub clock: crate::clock::Clock,
    pub billing: Billing,
}

impl Config {
    /// Settings for a service on this machine (the `dev` command and the tests): Postgres at
    /// `database_url`, Moment (the simulator or a fake) at `moment_api_url`, listening on
    /// 127.0.0.1 with `public_url` as its own address. Callers change what they need.
    pub fn local(
        database_url: &str,
        public_url: &str,
        moment_api_url: &str,
        moment_secret_key: &str,
        webhook_secrets: Vec<WebhookSecret>,
        api_keys: &[&str],
    ) -> Self {
        Self {
            db: DbConfig {
                url: database_url.into(),
                max_connections: 10,
                acquire_timeout: Duration::from_secs(5),
            },
            migrate: true,
            listen_addr: ([127, 0, 0, 1], 0).into(),
            public_url: public_url.trim_end_matches('/').to_owned(),
            moment_api_url: moment_api_url.to_owned(),
            moment_secret_key: moment_secret_key.into(),
            webhook_secrets,
            webhook_tolerance: Duration::from_secs(180),
            moment_timeout: Duration::from_secs(10),
            moment_max_attempts: 3,
            api_keys: api_keys.iter().map(|k| SecretString::from(*k)).collect(),
            default_return_url: None,
            request_timeout: Duration::from_secs(60),
            shutdown_timeout: Duration::from_secs(10),
            body_limit: BODY_LIMIT,
            worker_interval: Duration::from_secs(2),
            reconcile_after: Duration::from_secs(30),
            moment_max_retry_after: Duration::from_secs(60),
            webhook_event_retention_days: 90.0,
            event_retention_days: 30.0,
            delivery_schedule: DELIVERY_SCHEDULE
                .iter()
                .map(|s| Duration::from_secs(*s))
                .collect(),
            merchant_webhook: None,
            metrics_listen_addr: ([127, 0, 0, 1], 0).into(),
            metrics_recount: Duration::from_secs(METRICS_RECOUNT_SECS),
            header_read_timeout: Duration::from_secs(10),
            max_connections: 1024,
            log_format: LogFormat::Text,
            local_terms_check: true,
            clock: crate::clock::Clock::real(),
            billing: Billing::default(),
        }
    }
}

pub fn number<T: std::str::FromStr>(var: &'static str, value: &str) -> Result<T, ConfigError> {
    value
        .trim()
        .parse()
        .map_err(|_| bad(var, format!("{value:?} is not a valid number")))
}

/// A positive number.
pub fn positive(var: &'static str, value: &str) -> Result<f64, ConfigError> {
    let n: f64 = number(var, value)?;
    if !(n > 0.0 && n.is_finite()) {
        return Err(bad(var, "must be a positive number"));
    }
    Ok(n)
}

pub fn positive_secs(var: &'static str, value: &str) -> Result<Duration, ConfigError> {
    let secs: f64 = number(var, value)?;
    if !(secs > 0.0 && secs.is_finite()) {
        return Err(bad(var, "must be a positive number of seconds"));
    }
    Ok(Duration::from_secs_f64(secs))
}

pub fn required(var: &'static str, value: Option<&str>) -> Result<String, ConfigError> {
    match value.map(str::trim) {
        Some(v) if !v.is_empty() => Ok(v.to_owned()),
        _ => Err(bad(var, "is required")),
    }
}

/// An absolute http(s) URL, returned without a trailing slash.
pub fn http_url(var: &'static str, value: &str) -> Result<String, ConfigError> {
    match url::Url::parse(value.trim()) {
        Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => {
            Ok(u.as_str().trim_end_matches('/').to_owned())
        }
        _ => Err(bad(
            var,
            format!("{value:?} is not an absolute http(s) URL"),
        )),
    }
}

/// `json` or `text`.
pub fn log_format(value: &str) -> Result<LogFormat, ConfigError> {
    match value.trim() {
        "json" => Ok(LogFormat::Json),
        "text" => Ok(LogFormat::Text),
        other => Err(bad(
            "LOG_FORMAT",
            format!("{other:?} is neither json nor text"),
        )),
    }
}

pub fn socket_addr(var: &'static str, value: &str) -> Result<SocketAddr, ConfigError> {
    value
        .trim()
        .parse()
        .map_err(|_| bad(var, format!("{value:?} is not a host:port socket address")))
}

pub fn share(var: &'static str, value: &str) -> Result<f64, ConfigError> {
    let v: f64 = number(var, value)?;
    if !(0.0..=1.0).contains(&v) {
        return Err(bad(var, "must be between 0 and 1"));
    }
    Ok(v)
}

/// `250ms`, `5s`, `30m`, `2h`.
pub fn duration(var: &'static str, value: &str) -> Result<Duration, ConfigError> {
    let v = value.trim();
    let split = v.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(v.len());
    let (n, unit) = v.split_at(split);
    let n: f64 = n.trim().parse().map_err(|_| {
        bad(
            var,
            format!("{v:?} is not a duration like 250ms, 5s, 30m or 2h"),
        )
    })?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        "d" => n * 86400.0,
        _ => return Err(bad(var, format!("{v:?} needs a unit: ms, s, m, h or d"))),
    };
    if !(secs >= 0.0 && secs.is_finite()) {
        return Err(bad(var, format!("{v:?} is not a duration")));
    }
    Ok(Duration::from_secs_f64(secs))
}

pub fn millis(var: &'static str, value: &str) -> Result<Duration, ConfigError> {
    Ok(Duration::from_millis(number(var, value)?))
}
