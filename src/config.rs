//! Settings, from the command line or the environment (and a `.env` file when present).
//!
//! clap reads every value as text and this module checks it, so that a missing or malformed
//! setting stops the process with one line naming the variable, and no value of a secret is
//! ever printed (not in `--help` either: `hide_env_values`).

use std::net::SocketAddr;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use secrecy::SecretString;

use crate::db::DbConfig;
use crate::moment::signature::WebhookSecret;

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
}

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
    /// Seconds between runs of the background worker (resends, deferred events).
    #[arg(long, env = "WORKER_INTERVAL_SECS", default_value = "5")]
    pub worker_interval_secs: String,
    /// Log format: json or text.
    #[arg(long, env = "LOG_FORMAT", default_value = "json")]
    pub log_format: String,
}

/// A setting that stops the process: the variable and what is wrong (never its value when
/// it is a secret).
#[derive(Debug, thiserror::Error)]
#[error("{var}: {reason}")]
pub struct ConfigError {
    pub var: &'static str,
    pub reason: String,
}

fn bad(var: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError {
        var,
        reason: reason.into(),
    }
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Json,
    Text,
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
    pub worker_interval: Duration,
    pub log_format: LogFormat,
}

fn number<T: std::str::FromStr>(var: &'static str, value: &str) -> Result<T, ConfigError> {
    value
        .trim()
        .parse()
        .map_err(|_| bad(var, format!("{value:?} is not a valid number")))
}

fn positive_secs(var: &'static str, value: &str) -> Result<Duration, ConfigError> {
    let secs: f64 = number(var, value)?;
    if !(secs > 0.0 && secs.is_finite()) {
        return Err(bad(var, "must be a positive number of seconds"));
    }
    Ok(Duration::from_secs_f64(secs))
}

fn required(var: &'static str, value: Option<&str>) -> Result<String, ConfigError> {
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
    /// Checks every setting; the first bad one is the error.
    pub fn config(&self) -> Result<Config, ConfigError> {
        let db = self.db.config()?;
        let listen_addr: SocketAddr = self.listen_addr.trim().parse().map_err(|_| {
            bad(
                "LISTEN_ADDR",
                format!("{:?} is not a host:port socket address", self.listen_addr),
            )
        })?;
        let public_url = match &self.public_url {
            Some(u) if !u.trim().is_empty() => http_url("PUBLIC_URL", u)?,
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
        let default_return_url = match &self.default_return_url {
            Some(u) if !u.trim().is_empty() => Some(http_url("DEFAULT_RETURN_URL", u)?),
            _ => None,
        };
        let moment_max_attempts: u32 = number("MOMENT_MAX_ATTEMPTS", &self.moment_max_attempts)?;
        if moment_max_attempts == 0 {
            return Err(bad("MOMENT_MAX_ATTEMPTS", "must be at least 1"));
        }
        let log_format = match self.log_format.trim() {
            "json" => LogFormat::Json,
            "text" => LogFormat::Text,
            other => {
                return Err(bad(
                    "LOG_FORMAT",
                    format!("{other:?} is neither json nor text"),
                ));
            }
        };
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
            worker_interval: positive_secs("WORKER_INTERVAL_SECS", &self.worker_interval_secs)?,
            log_format,
        })
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
            Command::Migrate(_) => unreachable!(),
        }
    }

    const OK: &[&str] = &[
        "--moment-secret-key",
        "sk_test_x",
        "--moment-webhook-secrets",
        "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw, whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD",
        "--api-keys",
        "k1,k2",
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
}
