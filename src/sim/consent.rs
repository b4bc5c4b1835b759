//! Moment's consent and controls (`moment-api.md` §8.5), held against every `next_in_series`:
//! "the platform will not execute a payment that would violate any mandate constraint".
//!
//! Moment does not document the refusal; the simulator answers `422` problem details whose
//! `type` names the term (`…#mandate-max-occurrences`), a choice listed among the README's
//! questions for Moment. What counts, as the service reads it: the mandate's first payment
//! (when above 0) and every later charge that succeeded or is still processing, on its day in
//! Africa/Johannesburg.

use time::OffsetDateTime;

use super::Problem;
use crate::domain::terms::{self, AmountRule, Terms};

/// A payment that counts toward the mandate's limits: when, and how much.
#[derive(Debug, Clone, Copy)]
pub struct Counted {
    pub at: OffsetDateTime,
    pub amount: i64,
}

fn refuse(code: &'static str, detail: String) -> Problem {
    Problem::new(422, code, "Mandate constraint violated", detail)
}

/// Why a charge of `amount` at `now` breaks `terms`, given the payments that count.
pub fn refusal(
    terms: &Terms,
    counted: &[Counted],
    amount: i64,
    now: OffsetDateTime,
) -> Option<Problem> {
    if let Some(rule) = terms.amount
        && !rule.allows(amount)
    {
        let allowed = match rule {
            AmountRule::Fixed(a) => format!("exactly {a}"),
            AmountRule::Range { min, max } => format!(
                "from {} to {}",
                min.map_or("0".into(), |m| m.to_string()),
                max.map_or("any amount".into(), |m| m.to_string())
            ),
        };
        return Some(refuse(
            "mandate-amount",
            format!("the mandate allows {allowed}, not {amount}"),
        ));
    }
    let today = terms::sast_day(now);
    if let Some(v) = terms.validity_period
        && (v.start_date.is_some_and(|d| today < d) || v.end_date.is_some_and(|d| today > d))
    {
        return Some(refuse(
            "mandate-validity-period",
            format!("the mandate is not valid on {today}"),
        ));
    }
    if let Some(max) = terms.max_occurrences
        && counted.len() >= max as usize
    {
        return Some(refuse(
            "mandate-max-occurrences",
            format!(
                "the mandate allows {max} payments and {} are made",
                counted.len()
            ),
        ));
    }
    if let Some(limits) = &terms.period_limits {
        let (start, end) = terms::window(limits, today);
        let (from, to) = (terms::sast_midnight(start), terms::sast_midnight(end));
        let inside = counted.iter().filter(|c| c.at >= from && c.at < to);
        let (count, sum) = inside.fold((0u32, 0i64), |(n, s), c| (n + 1, s + c.amount));
        if let Some(max) = limits.max_count
            && count >= max
        {
            return Some(refuse(
                "mandate-period-limits-max-count",
                format!("the mandate allows {max} payments from {start} to {end}"),
            ));
        }
        if let Some(max) = limits.max_amount
            && sum + amount > max
        {
            return Some(refuse(
                "mandate-period-limits-max-amount",
                format!("the mandate allows {max} from {start} to {end}; {sum} is used"),
            ));
        }
    }
    None
}

/// The payment methods the checkout offers: cards always; Capitec Pay only for a payment (not
/// a card verification, §8.4) under a recurrence Moment supports for it (§8.5).
pub fn methods(terms: Option<&Terms>, amount: i64) -> Vec<&'static str> {
    let capitec = amount > 0
        && terms
            .and_then(|t| t.recurrence.as_ref())
            .is_some_and(|r| terms::CAPITEC_PAY.contains(&(r.kind, r.interval_count)));
    if capitec {
        vec!["Card", "Capitec Pay"]
    } else {
        vec!["Card"]
    }
}

/// What the customer consents to, in words: amounts, how often, how many, until when.
pub fn describe(t: &Terms, currency: &str) -> Vec<String> {
    use crate::domain::terms::{Frequency, Period};
    use crate::html::money;
    let mut out = Vec::new();
    out.push(match t.amount {
        Some(AmountRule::Fixed(a)) => format!("{} a charge", money(a, currency)),
        Some(AmountRule::Range { min, max }) => match (min, max) {
            (Some(lo), Some(hi)) => format!(
                "{} to {} a charge",
                money(lo, currency),
                money(hi, currency)
            ),
            (None, Some(hi)) => format!("Up to {} a charge", money(hi, currency)),
            (Some(lo), None) => format!("At least {} a charge", money(lo, currency)),
            (None, None) => "Any amount".into(),
        },
        None => "Any amount".into(),
    });
    if let Some(r) = &t.recurrence {
        let unit = match r.kind {
            Frequency::Daily => "day",
            Frequency::Weekly => "week",
            Frequency::Monthly => "month",
            Frequency::Yearly => "year",
        };
        out.push(if r.interval_count == 1 {
            format!("Once a {unit}")
        } else {
            format!("Every {} {unit}s", r.interval_count)
        });
    } else {
        out.push("When the merchant asks (on demand)".into());
    }
    if let Some(n) = t.max_occurrences {
        out.push(format!("Up to {n} payments"));
    }
    if let Some(p) = &t.period_limits {
        let unit = match p.period {
            Period::Day => "day",
            Period::Week => "week",
            Period::Month => "month",
            Period::Year => "year",
        };
        if let Some(n) = p.max_count {
            out.push(format!("At most {n} payments a {unit}"));
        }
        if let Some(a) = p.max_amount {
            out.push(format!("At most {} a {unit}", money(a, currency)));
        }
    }
    if let Some(v) = t.validity_period {
        match (v.start_date, v.end_date) {
            (Some(s), Some(e)) => out.push(format!("From {s} until {e}")),
            (Some(s), None) => out.push(format!("From {s}, until cancelled")),
            (None, Some(e)) => out.push(format!("Until {e}")),
            (None, None) => {}
        }
    } else {
        out.push("Until cancelled".into());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    fn terms(v: serde_json::Value) -> Terms {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn each_term_is_refused_with_its_own_type() {
        let now = datetime!(2026-12-03 10:00 UTC);
        let t = terms(serde_json::json!({
            "amount": {"min": 100, "max": 500}, "max_occurrences": 3,
            "validity_period": {"start_date": "2026-01-01", "end_date": "2026-12-31"},
            "period_limits": {"period": "month", "max_count": 2, "max_amount": 800}
        }));
        let code =
            |counted: &[Counted], amount, at| refusal(&t, counted, amount, at).map(|p| p.code);
        assert_eq!(code(&[], 99, now), Some("mandate-amount"));
        assert_eq!(
            code(&[], 100, datetime!(2026-12-31 22:30 UTC)),
            Some("mandate-validity-period")
        );
        let c = |at, amount| Counted { at, amount };
        let nov = datetime!(2026-11-10 10:00 UTC);
        assert_eq!(
            code(&[c(nov, 100), c(nov, 100), c(now, 100)], 100, now),
            Some("mandate-max-occurrences")
        );
        assert_eq!(
            code(&[c(now, 100), c(now, 100)], 100, now),
            Some("mandate-period-limits-max-count")
        );
        assert_eq!(
            code(&[c(now, 500)], 400, now),
            Some("mandate-period-limits-max-amount")
        );
        assert_eq!(code(&[c(nov, 500), c(now, 300)], 500, now), None);
    }

    #[test]
    fn capitec_pay_is_offered_only_for_its_recurrences_and_never_for_a_verification() {
        let monthly =
            terms(serde_json::json!({"recurrence": {"type": "monthly", "interval_count": 1}}));
        let quarterly =
            terms(serde_json::json!({"recurrence": {"type": "monthly", "interval_count": 3}}));
        assert_eq!(methods(Some(&monthly), 5000), ["Card", "Capitec Pay"]);
        assert_eq!(methods(Some(&monthly), 0), ["Card"]);
        assert_eq!(methods(Some(&quarterly), 5000), ["Card"]);
        assert_eq!(methods(None, 5000), ["Card"]);
        let words = describe(
            &terms(
                serde_json::json!({"amount": {"min": 5000, "max": 15000}, "max_occurrences": 12,
                "recurrence": {"type": "monthly", "interval_count": 1}}),
            ),
            "ZAR",
        );
        assert_eq!(
            words,
            [
                "R 50.00 to R 150.00 a charge",
                "Once a month",
                "Up to 12 payments",
                "Until cancelled"
            ]
        );
    }
}
