//! Moment's checks on `POST /collect/payment_sessions` (`moment-api.md` §3, §6.1, §8, §12).
//! Refusals are 400 problem details naming the field in `detail`.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use super::Problem;
use super::model::{Ceiling, Kind};
use crate::domain::terms::Terms;

/// Currencies the simulator accepts (the "Monetary Amounts" page lists these two).
pub const CURRENCIES: &[&str] = &["ZAR", "USD"];
pub const MAX_METADATA_PAIRS: usize = 20;
pub const MAX_REFERENCE_LEN: usize = 255;

/// A checked create request.
#[derive(Debug, Clone)]
pub struct NewSession {
    pub kind: Kind,
    pub amount: i64,
    pub currency: String,
    pub external_reference: Option<String>,
    pub metadata: BTreeMap<String, String>,
    pub return_url: Option<String>,
    /// `first_in_series`: what later charges may take.
    pub ceiling: Ceiling,
    /// `first_in_series`: `options.mandate_options`, checked by Moment's rules.
    pub terms: Option<Terms>,
    /// `next_in_series`: `options.customer` and `options.payment_method`.
    pub charge_of: Option<(String, String)>,
}

fn invalid(detail: impl Into<String>) -> Problem {
    Problem::new(400, "invalid-request", "Invalid request", detail)
}

fn object<'a>(v: &'a Value, field: &str) -> Result<&'a Map<String, Value>, Problem> {
    v.as_object()
        .ok_or_else(|| invalid(format!("{field} must be an object")))
}

fn optional_object<'a>(
    parent: &'a Map<String, Value>,
    key: &str,
    path: &str,
) -> Result<Option<&'a Map<String, Value>>, Problem> {
    match parent.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => object(v, path).map(Some),
    }
}

fn string<'a>(v: &'a Value, field: &str) -> Result<&'a str, Problem> {
    v.as_str()
        .ok_or_else(|| invalid(format!("{field} must be a string")))
}

fn integer(v: &Value, field: &str) -> Result<i64, Problem> {
    v.as_i64().ok_or_else(|| {
        invalid(format!(
            "{field} must be an integer number of minor units within 64 bits"
        ))
    })
}

fn http_url(v: &Value, field: &str) -> Result<String, Problem> {
    let s = string(v, field)?;
    match url::Url::parse(s) {
        Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => Ok(s.to_owned()),
        _ => Err(invalid(format!("{field} must be an absolute http(s) URL"))),
    }
}

/// Checks a create body.
pub fn new_session(body: &Value) -> Result<NewSession, Problem> {
    let body = object(body, "the request body")?;
    let kind = match body.get("type") {
        None | Some(Value::Null) => Kind::OneTime,
        Some(v) => match string(v, "type")? {
            "one_time" => Kind::OneTime,
            "first_in_series" => Kind::FirstInSeries,
            "next_in_series" => Kind::NextInSeries,
            other => {
                return Err(invalid(format!(
                    "type {other:?} is not one of one_time, first_in_series, next_in_series"
                )));
            }
        },
    };
    let amount = integer(
        body.get("amount")
            .ok_or_else(|| invalid("amount is required"))?,
        "amount",
    )?;
    if amount < 0 {
        return Err(invalid("amount must not be negative"));
    }
    if amount == 0 && kind == Kind::NextInSeries {
        return Err(invalid(
            "amount must be positive for next_in_series: zero is only for card verification",
        ));
    }
    let currency = string(
        body.get("currency")
            .ok_or_else(|| invalid("currency is required"))?,
        "currency",
    )?;
    if !CURRENCIES.contains(&currency) {
        return Err(invalid(format!(
            "currency {currency:?} is not supported: use one of {}",
            CURRENCIES.join(", ")
        )));
    }
    let external_reference = match body.get("external_reference") {
        None | Some(Value::Null) => None,
        Some(v) => {
            let r = string(v, "external_reference")?;
            if r.is_empty() || r.len() > MAX_REFERENCE_LEN {
                return Err(invalid(format!(
                    "external_reference must be 1 to {MAX_REFERENCE_LEN} characters"
                )));
            }
            if !r
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
            {
                return Err(invalid(
                    "external_reference must match ^[a-zA-Z0-9_-]+$".to_string(),
                ));
            }
            Some(r.to_owned())
        }
    };
    let metadata = metadata(body.get("metadata"))?;
    let options = optional_object(body, "options", "options")?;
    let empty = Map::new();
    let options = options.unwrap_or(&empty);
    let mut out = NewSession {
        kind,
        amount,
        currency: currency.to_owned(),
        external_reference,
        metadata,
        return_url: None,
        ceiling: Ceiling::Any,
        terms: None,
        charge_of: None,
    };
    match kind {
        Kind::OneTime | Kind::FirstInSeries => {
            if let Some(checkout) =
                optional_object(options, "checkout_options", "options.checkout_options")?
            {
                if let Some(v) = checkout.get("return_url").filter(|v| !v.is_null()) {
                    out.return_url = Some(http_url(v, "options.checkout_options.return_url")?);
                }
                if let Some(v) = checkout.get("save_payment_method").filter(|v| !v.is_null()) {
                    let s = string(v, "options.checkout_options.save_payment_method")?;
                    if !matches!(s, "always" | "never" | "prompt") {
                        return Err(invalid(
                            "options.checkout_options.save_payment_method must be always, never or prompt",
                        ));
                    }
                }
            }
            if let Some(customer) = options.get("customer").filter(|v| !v.is_null()) {
                let customer = object(customer, "options.customer")?;
                for field in ["name", "email"] {
                    if let Some(v) = customer.get(field).filter(|v| !v.is_null()) {
                        let s = string(v, &format!("options.customer.{field}"))?;
                        if field == "email" && !s.contains('@') {
                            return Err(invalid("options.customer.email is not an e-mail address"));
                        }
                    }
                }
            }
            if kind == Kind::FirstInSeries {
                out.ceiling = mandate_ceiling(options, amount)?;
                out.terms = mandate_terms(options, amount)?;
            } else if options.contains_key("mandate_options") {
                return Err(invalid(
                    "options.mandate_options is only for first_in_series sessions",
                ));
            }
        }
        Kind::NextInSeries => {
            let customer = options
                .get("customer")
                .ok_or_else(|| invalid("options.customer is required for next_in_series"))?;
            let method = options
                .get("payment_method")
                .ok_or_else(|| invalid("options.payment_method is required for next_in_series"))?;
            let customer = string(customer, "options.customer")?;
            let method = string(method, "options.payment_method")?;
            if options.contains_key("checkout_options") {
                return Err(invalid(
                    "options.checkout_options is not allowed for next_in_series: no customer is present",
                ));
            }
            out.charge_of = Some((customer.to_owned(), method.to_owned()));
        }
    }
    Ok(out)
}

fn metadata(v: Option<&Value>) -> Result<BTreeMap<String, String>, Problem> {
    let Some(v) = v.filter(|v| !v.is_null()) else {
        return Ok(BTreeMap::new());
    };
    let map = object(v, "metadata")?;
    if map.len() > MAX_METADATA_PAIRS {
        return Err(invalid(format!(
            "metadata has more than {MAX_METADATA_PAIRS} pairs"
        )));
    }
    let mut out = BTreeMap::new();
    for (k, v) in map {
        let n = k.chars().count();
        if !(1..=50).contains(&n) {
            return Err(invalid("metadata keys must be 1 to 50 characters"));
        }
        let s = v
            .as_str()
            .ok_or_else(|| invalid(format!("metadata.{k} must be a string")))?;
        if !(1..=500).contains(&s.chars().count()) {
            return Err(invalid(format!("metadata.{k} must be 1 to 500 characters")));
        }
        out.insert(k.clone(), s.to_owned());
    }
    Ok(out)
}

/// `options.mandate_options` of a `first_in_series`: its type, recurrence and amount rule.
/// Without an amount rule the session's own amount is the ceiling (none for a zero-amount
/// verification).
fn mandate_ceiling(options: &Map<String, Value>, amount: i64) -> Result<Ceiling, Problem> {
    let default = if amount > 0 {
        Ceiling::Range {
            min: None,
            max: Some(amount),
        }
    } else {
        Ceiling::Any
    };
    let Some(mandate) = optional_object(options, "mandate_options", "options.mandate_options")?
    else {
        return Ok(default);
    };
    let kind = match mandate.get("type").filter(|v| !v.is_null()) {
        None => "on_demand",
        Some(v) => string(v, "options.mandate_options.type")?,
    };
    if !matches!(kind, "scheduled" | "on_demand" | "installment") {
        return Err(invalid(
            "options.mandate_options.type must be scheduled, on_demand or installment",
        ));
    }
    match optional_object(mandate, "recurrence", "options.mandate_options.recurrence")? {
        Some(r) => {
            let t = string(
                r.get("type").unwrap_or(&Value::Null),
                "options.mandate_options.recurrence.type",
            )?;
            if !matches!(t, "daily" | "weekly" | "monthly" | "yearly") {
                return Err(invalid(
                    "options.mandate_options.recurrence.type must be daily, weekly, monthly or yearly",
                ));
            }
            if let Some(n) = r.get("interval_count").filter(|v| !v.is_null())
                && n.as_u64().is_none_or(|n| n == 0)
            {
                return Err(invalid(
                    "options.mandate_options.recurrence.interval_count must be a positive integer",
                ));
            }
        }
        None if kind == "scheduled" => {
            return Err(invalid(
                "options.mandate_options.recurrence is required for a scheduled mandate",
            ));
        }
        None => {}
    }
    Ok(match mandate.get("amount").filter(|v| !v.is_null()) {
        None => default,
        Some(Value::Object(bounds)) => {
            let bound = |k: &str| -> Result<Option<i64>, Problem> {
                match bounds.get(k).filter(|v| !v.is_null()) {
                    None => Ok(None),
                    Some(v) => integer(v, &format!("options.mandate_options.amount.{k}")).map(Some),
                }
            };
            let (min, max) = (bound("min")?, bound("max")?);
            if let (Some(a), Some(b)) = (min, max)
                && a > b
            {
                return Err(invalid(
                    "options.mandate_options.amount.min must not exceed max",
                ));
            }
            Ceiling::Range { min, max }
        }
        Some(v) => Ceiling::Exact {
            amount: integer(v, "options.mandate_options.amount")?,
        },
    })
}

/// `options.mandate_options` in full, by the rules of `moment-api.md` §8.2 and §8.5 (the same
/// rules the service applies to a mandate's `terms`).
fn mandate_terms(options: &Map<String, Value>, amount: i64) -> Result<Option<Terms>, Problem> {
    let Some(raw) = options.get("mandate_options").filter(|v| !v.is_null()) else {
        return Ok(None);
    };
    let terms: Terms = serde_json::from_value(raw.clone())
        .map_err(|e| invalid(format!("options.mandate_options: {e}")))?;
    terms.check(amount).map_err(|e| {
        let field = match e.field.strip_prefix("terms") {
            Some(rest) => format!("options.mandate_options{rest}"),
            None => e.field.to_owned(),
        };
        invalid(format!("{field} {}", e.detail))
    })?;
    Ok(Some(terms))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn detail(body: Value) -> String {
        new_session(&body).unwrap_err().detail
    }

    #[test]
    fn the_guides_requests_pass() {
        let first = new_session(&json!({
            "type": "first_in_series", "amount": 5000, "currency": "ZAR",
            "options": {"customer": {"name": "A", "email": "a@b.c"},
                        "checkout_options": {"return_url": "https://shop.test/r"}},
            "external_reference": "sub_123", "metadata": {"k": "v"}
        }))
        .unwrap();
        assert_eq!(first.kind, Kind::FirstInSeries);
        assert_eq!(first.return_url.as_deref(), Some("https://shop.test/r"));
        assert_eq!(
            first.ceiling,
            Ceiling::Range {
                min: None,
                max: Some(5000)
            }
        );
        let next = new_session(&json!({
            "type": "next_in_series", "amount": 5000, "currency": "ZAR",
            "options": {"customer": "cus_1", "payment_method": "pmt_1"}
        }))
        .unwrap();
        assert_eq!(next.charge_of, Some(("cus_1".into(), "pmt_1".into())));
    }

    #[test]
    fn moments_limits_are_enforced() {
        let base = |patch: Value| {
            let mut b = json!({"amount": 100, "currency": "ZAR"});
            for (k, v) in patch.as_object().unwrap() {
                b[k] = v.clone();
            }
            b
        };
        assert!(detail(base(json!({"amount": 1.5}))).contains("integer"));
        assert!(detail(base(json!({"amount": -1}))).contains("negative"));
        assert!(detail(base(json!({"currency": "EUR"}))).contains("not supported"));
        assert!(detail(base(json!({"external_reference": "a b"}))).contains("^[a-zA-Z0-9_-]+$"));
        assert!(detail(base(json!({"external_reference": "x".repeat(256)}))).contains("255"));
        let many: Map<String, Value> = (0..21).map(|i| (format!("k{i}"), json!("v"))).collect();
        assert!(detail(base(json!({"metadata": many}))).contains("20 pairs"));
        assert!(detail(base(json!({"metadata": {"k": 1}}))).contains("string"));
        assert!(detail(base(json!({"metadata": {"k": ""}}))).contains("1 to 500"));
        assert!(detail(base(json!({"type": "weekly"}))).contains("type"));
        assert!(
            detail(base(json!({"type": "next_in_series"}))).contains("options.customer"),
            "next_in_series needs its ids"
        );
        assert!(
            detail(base(json!({"type": "next_in_series",
                "options": {"customer": {"name": "x"}, "payment_method": "pmt_1"}})))
            .contains("options.customer must be a string")
        );
        assert!(
            detail(base(json!({"type": "first_in_series",
                "options": {"mandate_options": {"type": "scheduled"}}})))
            .contains("recurrence is required")
        );
        assert!(
            detail(base(json!({"type": "first_in_series",
                "options": {"mandate_options": {"amount": {"max": 500},
                    "period_limits": {"period": "month", "max_amount": 100}}}})))
            .starts_with("options.mandate_options.period_limits.max_amount")
        );
        assert!(
            detail(base(json!({"type": "first_in_series",
                "options": {"mandate_options": {"max_occurrences": 0}}})))
            .starts_with("options.mandate_options.max_occurrences")
        );
        assert!(
            detail(base(
                json!({"options": {"checkout_options": {"return_url": "/relative"}}})
            ))
            .contains("absolute")
        );
    }
}
