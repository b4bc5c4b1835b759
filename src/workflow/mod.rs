//! The flows of the recurring-payments guide, shared by the HTTP handlers and the background
//! worker: record first, then talk to Moment with no transaction open, then record the answer.
//! Requests run these in a task of their own (`app::router`'s `detach` layer, the worker's
//! `db::detached`), so a dropped request never cuts one short.

pub mod billing;
pub mod charges;
pub mod events;
pub mod mandates;
pub mod outbound;
pub mod scheduler;
pub mod schedules;
pub mod subscriptions;
pub mod terms;

use serde_json::{Value, json};

use crate::moment::wire::Problem;
use crate::state::AppState;

/// How long whoever talks to Moment about a record holds it (seconds): twice the longest
/// call with all its attempts, so a live holder never loses it, and after a crash the record
/// is free soon for a retry or the worker (about a minute with the default settings).
pub fn lease_secs(state: &AppState) -> f64 {
    2.0 * state.moment.longest_call().as_secs_f64()
}

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
