//! Holding a charge to its mandate's terms before Moment has to: the amount, the validity
//! period, `max_occurrences` and each `period_limits` window (Africa/Johannesburg days), and
//! the consent ledger `GET /mandates/{id}` shows.
//!
//! What is counted: the mandate's first payment (its `amount`, when above 0: a card
//! verification is no payment), and every charge that succeeded or may still succeed.

use sqlx::PgConnection;
use time::OffsetDateTime;

use crate::api::{Ledger, LedgerWindow};
use crate::domain::Mandate;
use crate::domain::terms::{self, Terms};
use crate::error::{ApiError, TermsBreach};
use crate::store::charges;

fn breach(term: &'static str, detail: String, limit: i64, used: i64, requested: i64) -> ApiError {
    ApiError::MandateTerms(Box::new(TermsBreach {
        term,
        detail,
        limit,
        used,
        requested,
    }))
}

/// The terms that need no count: the amount, and the day within the validity period.
pub fn check_static(terms: &Terms, amount: i64, now: OffsetDateTime) -> Result<(), ApiError> {
    check_amount(terms, amount)?;
    let today = terms::sast_day(now);
    if let Some(v) = terms.validity_period {
        if v.start_date.is_some_and(|d| today < d) || v.end_date.is_some_and(|d| today > d) {
            return Err(breach(
                "validity_period",
                format!("the mandate's terms are not valid on {today} (Africa/Johannesburg)"),
                0,
                0,
                amount,
            ));
        }
    }
    Ok(())
}

/// The amount alone: the fixed value or within `{min, max}`.
pub fn check_amount(terms: &Terms, amount: i64) -> Result<(), ApiError> {
    if let Some(rule) = terms.amount
        && !rule.allows(amount)
    {
        let limit = match rule {
            terms::AmountRule::Fixed(a) => a,
            terms::AmountRule::Range { min, max } => match (min, max) {
                (Some(lo), _) if amount < lo => lo,
                (_, Some(hi)) => hi,
                (Some(lo), None) => lo,
                (None, None) => amount,
            },
        };
        return Err(breach(
            "amount",
            format!("the mandate's terms do not allow a charge of {amount}"),
            limit,
            0,
            amount,
        ));
    }
    Ok(())
}

/// What the mandate's first payment counts: 1 payment of its amount on its day, or nothing
/// for a card verification.
fn first_payment(mandate: &Mandate) -> (i64, i64) {
    if mandate.amount > 0 {
        (1, mandate.amount)
    } else {
        (0, 0)
    }
}

/// The ledger now, read on `conn`.
pub async fn ledger(
    conn: &mut PgConnection,
    mandate: &Mandate,
    now: OffsetDateTime,
) -> sqlx::Result<Ledger> {
    let terms = mandate.terms();
    let limits = terms.period_limits.as_ref();
    let (from, to) = match limits {
        Some(l) => {
            let (start, end) = terms::window(l, terms::sast_day(now));
            (terms::sast_midnight(start), terms::sast_midnight(end))
        }
        None => (now, now),
    };
    let usage = charges::usage(&mut *conn, mandate.id, from, to).await?;
    let (first_count, first_amount) = first_payment(mandate);
    let first_in_window = mandate.created_at >= from && mandate.created_at < to;
    let occurrences_used = usage.occurrences + first_count;
    Ok(Ledger {
        occurrences_used,
        occurrences_left: terms
            .max_occurrences
            .map(|m| (i64::from(m) - occurrences_used).max(0)),
        window: limits.map(|l| LedgerWindow {
            start: terms::sast_day(from).to_string(),
            end: terms::sast_day(to).to_string(),
            count: usage.window_count + if first_in_window { first_count } else { 0 },
            amount: usage.window_amount.saturating_add(if first_in_window {
                first_amount
            } else {
                0
            }),
            max_count: l.max_count,
            max_amount: l.max_amount,
        }),
    })
}

/// Every term, counts included, for a charge of `amount` now. Run it with the mandate's row
/// locked (`store::mandates::lock_active`) and record the charge before the lock is released,
/// so that concurrent charges cannot pass a limit together.
pub async fn check(
    conn: &mut PgConnection,
    mandate: &Mandate,
    amount: i64,
    now: OffsetDateTime,
) -> Result<(), ApiError> {
    let terms = mandate.terms();
    check_static(&terms, amount, now)?;
    if !terms.counts() {
        return Ok(());
    }
    let ledger = ledger(conn, mandate, now).await?;
    if let Some(max) = terms.max_occurrences
        && ledger.occurrences_used >= i64::from(max)
    {
        return Err(breach(
            "max_occurrences",
            format!(
                "the mandate's terms allow {max} payments, and {} are made or under way",
                ledger.occurrences_used
            ),
            i64::from(max),
            ledger.occurrences_used,
            1,
        ));
    }
    if let Some(w) = &ledger.window {
        if let Some(max) = w.max_count
            && w.count >= i64::from(max)
        {
            return Err(breach(
                "period_limits.max_count",
                format!(
                    "the mandate's terms allow {max} payments from {} to {}, and {} are made or under way",
                    w.start, w.end, w.count
                ),
                i64::from(max),
                w.count,
                1,
            ));
        }
        // (A sum past i64's range is past any limit: it never wraps round under it.)
        if let Some(max) = w.max_amount
            && w.amount.checked_add(amount).is_none_or(|sum| sum > max)
        {
            return Err(breach(
                "period_limits.max_amount",
                format!(
                    "the mandate's terms allow {max} from {} to {}; {} is used and {amount} asked",
                    w.start, w.end, w.amount
                ),
                max,
                w.amount,
                amount,
            ));
        }
    }
    Ok(())
}
