//! The flows of the recurring-payments guide, shared by the HTTP handlers and the background
//! worker: record first, then talk to Moment with no transaction open, then record the answer.
//! Callers run these inside `db::detached`, so a dropped request never cuts one short.

pub mod charges;
pub mod events;
pub mod mandates;

use serde_json::{Value, json};

use crate::moment::wire::Problem;

/// How long whoever talks to Moment about a record holds it (seconds). Longer than the
/// longest run of attempts, so a live holder never loses it; after a crash it frees the
/// record for a retry or the worker.
pub const LEASE_SECS: f64 = 60.0;

/// Our `failure` object for a request Moment refused.
fn refusal(status: u16, problem: &Problem) -> Value {
    let code = problem
        .kind
        .as_deref()
        .and_then(|t| t.rsplit(['#', '/']).next())
        .filter(|c| !c.is_empty());
    json!({
        "code": code.map_or_else(|| format!("moment_http_{status}"), |c| c.replace('-', "_")),
        "message": problem.detail.as_deref().or(problem.title.as_deref()).unwrap_or("refused by Moment"),
        "status": status,
        "problem": problem,
    })
}
