//! The tracing subscriber (JSON lines or human-readable text, filtered by `RUST_LOG`), and the
//! request id: accepted from the caller's `x-request-id` or generated, returned, logged on the
//! request's line and sent on to Moment.

use std::future::Future;

use axum::extract::Request;
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::Response;

use tracing_subscriber::EnvFilter;

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// One JSON object a line, for log collectors.
    Json,
    /// Human-readable lines, for a terminal.
    Text,
}

/// Default filter when `RUST_LOG` is unset.
pub const DEFAULT_FILTER: &str = "moment_mandates=info,tower_http=info";

/// Installs the global subscriber writing to stderr; a second call is a no-op.
///
/// Lines are written by a thread of their own through a buffer flushed whenever it catches
/// up, so a request never waits on the terminal or the log collector, and a burst costs a
/// few writes instead of one per line. Keep the returned guard alive until exit: dropping it
/// flushes what is left. Should the buffer of 128k lines ever fill, lines are dropped rather
/// than slowing payments down.
pub fn init(format: LogFormat) -> tracing_appender::non_blocking::WorkerGuard {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    let (writer, guard) = tracing_appender::non_blocking(std::io::BufWriter::with_capacity(
        64 * 1024,
        std::io::stderr(),
    ));
    init_with(format, filter, writer);
    guard
}

/// Installs the global subscriber with `filter`, writing to `writer` (the tests capture
/// logs this way, in the production format). A second call is a no-op.
pub fn init_with<W>(format: LogFormat, filter: EnvFilter, writer: W)
where
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
    let _ = match format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Text => builder.with_ansi(false).try_init(),
    };
}

pub const REQUEST_ID_HEADER: &str = "x-request-id";

tokio::task_local! {
    static REQUEST_ID: String;
}

/// The id of the request being served, if any.
pub fn request_id() -> Option<String> {
    REQUEST_ID.try_with(Clone::clone).ok()
}

/// Runs `f` with `id` as the current request id.
pub async fn with_request_id<F: Future>(id: Option<String>, f: F) -> F::Output {
    match id {
        Some(id) => REQUEST_ID.scope(id, f).await,
        None => f.await,
    }
}

/// A caller's id is kept when it is 1 to 128 visible ASCII characters; otherwise a new UUID
/// replaces it.
fn acceptable(v: &HeaderValue) -> bool {
    let b = v.as_bytes();
    !b.is_empty() && b.len() <= 128 && b.iter().all(|c| c.is_ascii_graphic())
}

/// Sets `x-request-id` on the request (the caller's or a new one) and makes it current for
/// everything the request does.
pub async fn assign_request_id(mut req: Request, next: Next) -> Response {
    let id = match req.headers().get(REQUEST_ID_HEADER) {
        Some(v) if acceptable(v) => v.to_str().unwrap_or_default().to_owned(),
        _ => {
            let id = uuid::Uuid::new_v4().to_string();
            if let Ok(v) = HeaderValue::from_str(&id) {
                req.headers_mut().insert(REQUEST_ID_HEADER, v);
            }
            id
        }
    };
    REQUEST_ID.scope(id, next.run(req)).await
}
