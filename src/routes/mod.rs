//! HTTP handlers, and the request parsing and checks they share.

pub mod charges;
pub mod events;
pub mod mandates;
pub mod ops;
pub mod subscriptions;
pub mod webhook_endpoints;
pub mod webhooks;

use std::collections::BTreeMap;

use axum::extract::{FromRequest, Request};
use axum::http::{HeaderMap, header};
use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::error::ApiError;

/// A JSON body: `application/json` required, unknown fields refused (by the target types),
/// and every failure a problem details answer naming the offending field.
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        if !is_json(req.headers()) {
            return Err(ApiError::UnsupportedMediaType);
        }
        parse_json(&body_bytes(req, state).await?).map(Self)
    }
}

/// [`ApiJson`] for a body whose every field is optional: an empty body (with or without a
/// `Content-Type`) and `null` are the empty object.
pub struct OptionalJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Default> FromRequest<S> for OptionalJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let json = is_json(req.headers());
        let bytes = body_bytes(req, state).await?;
        if bytes.is_empty() {
            return Ok(Self(T::default()));
        }
        if !json {
            return Err(ApiError::UnsupportedMediaType);
        }
        parse_json::<Option<T>>(&bytes).map(|v| Self(v.unwrap_or_default()))
    }
}

/// Whether the `Content-Type` is JSON (`application/json` or `application/…+json`).
fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|m| {
            let m = m.trim().to_ascii_lowercase();
            m == "application/json" || (m.starts_with("application/") && m.ends_with("+json"))
        })
}

async fn body_bytes<S: Send + Sync>(req: Request, state: &S) -> Result<Bytes, ApiError> {
    Bytes::from_request(req, state)
        .await
        .map_err(|e| ApiError::Malformed {
            field: None,
            detail: e.body_text(),
        })
}

/// Parses a JSON body into `T`, naming the offending field.
fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let field = (path != ".").then_some(path);
        let inner = e.into_inner();
        let detail = inner.to_string();
        if inner.is_data() {
            ApiError::Invalid { field, detail }
        } else {
            ApiError::Malformed {
                field: None,
                detail,
            }
        }
    })
}

/// The first year refused in the dates and times the API plans from (a subscription's start,
/// a resumption, a recovery's start, the test clock): previews and the terms' windows reach
/// years past the day they start from, and the calendar ends with 9999.
pub const FIRST_YEAR_REFUSED: i32 = 9000;

/// A date the API can plan from: before [`FIRST_YEAR_REFUSED`].
pub fn check_date(field: &str, d: time::Date) -> Result<time::Date, ApiError> {
    if d.year() >= FIRST_YEAR_REFUSED {
        return Err(ApiError::invalid(
            field,
            format!("must be before {FIRST_YEAR_REFUSED}-01-01"),
        ));
    }
    Ok(d)
}

/// An instant the API can plan from, in UTC: before [`FIRST_YEAR_REFUSED`] there (an offset
/// that carries it past the calendar's end is refused too, not stored).
pub fn check_instant(
    field: &str,
    t: time::OffsetDateTime,
) -> Result<time::OffsetDateTime, ApiError> {
    t.checked_to_offset(time::UtcOffset::UTC)
        .filter(|utc| utc.year() < FIRST_YEAR_REFUSED)
        .ok_or_else(|| {
            ApiError::invalid(
                field,
                format!("must be before {FIRST_YEAR_REFUSED}-01-01T00:00:00Z"),
            )
        })
}

/// SHA-256 of the request as parsed, so a retry is compared by meaning, not formatting.
pub fn request_hash(req: &impl Serialize) -> String {
    let bytes = serde_json::to_vec(req).expect("request types serialize");
    Sha256::digest(&bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The `Idempotency-Key` header: 1 to 255 visible ASCII characters.
pub fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    const FIELD: &str = "Idempotency-Key";
    let Some(value) = headers.get(FIELD) else {
        return Ok(None);
    };
    let key = value
        .to_str()
        .map_err(|_| ApiError::malformed(FIELD, "must be visible ASCII"))?;
    if key.is_empty() || key.len() > 255 || !key.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(ApiError::malformed(
            FIELD,
            "must be 1 to 255 visible ASCII characters",
        ));
    }
    Ok(Some(key.to_owned()))
}

/// A resource id from the path; anything that is not one of ours is simply not found.
pub fn parse_id(raw: &str, what: &'static str) -> Result<Uuid, ApiError> {
    raw.parse().map_err(|_| ApiError::NotFound(what))
}

// The currencies as the document states them. The service checks the form (`check_currency`);
// Moment refuses any other code (a 422, the mandate recorded as failed). Only the OpenAPI
// document uses this type.
/// An ISO 4217 code that Moment takes.
#[derive(utoipa::ToSchema)]
#[schema(rename_all = "UPPERCASE")]
#[allow(dead_code)]
pub enum Currency {
    Zar,
    Usd,
}

/// The `metadata` schema: what `check_metadata` enforces, and what Moment takes.
pub fn metadata_schema() -> utoipa::openapi::Object {
    use utoipa::openapi::schema::{ObjectBuilder, Type};
    let text = |max: usize| {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .min_length(Some(1))
            .max_length(Some(max))
            .pattern(Some(r"^[^\x00]*$"))
    };
    ObjectBuilder::new()
        .schema_type(Type::Object)
        .description(Some(
            "At most 20 pairs; keys of 1 to 50 characters, values of 1 to 500 (no NUL).",
        ))
        .max_properties(Some(20))
        .property_names(Some(text(50)))
        .additional_properties(Some(text(500)))
        .build()
}

/// Minor units: an integer within 64 bits, also when written with a zero fraction (`5000.0`),
/// which JSON Schema counts as an integer like `5000`. A fraction or a string is refused.
pub fn whole_number<'de, D: serde::Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
    use serde::de::{Error, Unexpected, Visitor};
    struct Whole;
    impl Visitor<'_> for Whole {
        type Value = i64;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("an integer within 64 bits")
        }
        fn visit_i64<E: Error>(self, v: i64) -> Result<i64, E> {
            Ok(v)
        }
        fn visit_u64<E: Error>(self, v: u64) -> Result<i64, E> {
            i64::try_from(v).map_err(|_| E::invalid_value(Unexpected::Unsigned(v), &self))
        }
        fn visit_f64<E: Error>(self, v: f64) -> Result<i64, E> {
            // Both bounds are powers of two, exact as f64; a whole float within them is exact.
            if v.fract() == 0.0
                && (-9_223_372_036_854_775_808.0..9_223_372_036_854_775_808.0).contains(&v)
            {
                Ok(v as i64)
            } else {
                Err(E::invalid_type(Unexpected::Float(v), &self))
            }
        }
    }
    d.deserialize_i64(Whole)
}

/// `whole_number` for an optional field (with `#[serde(default)]`).
pub fn optional_whole_number<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<i64>, D::Error> {
    #[derive(Deserialize)]
    struct Whole(#[serde(deserialize_with = "whole_number")] i64);
    Ok(Option::<Whole>::deserialize(d)?.map(|w| w.0))
}

/// `whole_number` into a narrower integer (`5.0` is `5`; out of range is refused).
pub fn small_whole<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: TryFrom<i64>,
{
    use serde::de::Error;
    let n = whole_number(d)?;
    T::try_from(n).map_err(|_| D::Error::custom(format!("{n} is out of range")))
}

/// `small_whole` for an optional field (with `#[serde(default)]`).
pub fn optional_small_whole<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: TryFrom<i64>,
{
    use serde::de::Error;
    match optional_whole_number(d)? {
        None => Ok(None),
        Some(n) => T::try_from(n)
            .map(Some)
            .map_err(|_| D::Error::custom(format!("{n} is out of range"))),
    }
}

/// Text that Postgres can store: no NUL character.
pub fn check_text(field: &str, text: &str) -> Result<(), ApiError> {
    if text.contains('\0') {
        Err(ApiError::invalid(field, "must not contain NUL characters"))
    } else {
        Ok(())
    }
}

/// An absolute http(s) URL made only of what a URI may hold (RFC 3986: its characters, `%`
/// followed by two hex digits, one `#` at most), as the document's `uri` format says.
pub fn check_http_url(field: &str, url: &str) -> Result<(), ApiError> {
    const EXTRA: &str = "-._~:/?#@!$&'()*+,;=%";
    let bytes = url.as_bytes();
    let chars_ok = url
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || EXTRA.contains(c));
    let escapes_ok = bytes.iter().enumerate().all(|(i, b)| {
        *b != b'%'
            || (bytes.get(i + 1).is_some_and(u8::is_ascii_hexdigit)
                && bytes.get(i + 2).is_some_and(u8::is_ascii_hexdigit))
    });
    let one_fragment = url.matches('#').count() <= 1;
    let parsed = crate::config::http_url("url", url).is_ok();
    if !(chars_ok && escapes_ok && one_fragment && parsed && plain_host(url)) || url.len() > 2048 {
        return Err(ApiError::invalid(field, "must be an absolute http(s) URL"));
    }
    Ok(())
}

/// The authority of an `http(s)://` URL is a DNS name (letter, digit and hyphen labels, the
/// last starting with a letter, an optional final dot) or an IPv4 address, and an optional
/// port up to 65535.
fn plain_host(url: &str) -> bool {
    let Some((_, rest)) = url.split_once("://") else {
        return false;
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (authority, None),
    };
    let port_ok = port.is_none_or(|p| {
        !p.is_empty()
            && p.len() <= 5
            && p.bytes().all(|b| b.is_ascii_digit())
            && p.parse::<u32>().is_ok_and(|n| n <= 65535)
    });
    if host.parse::<std::net::Ipv4Addr>().is_ok() {
        return port_ok;
    }
    let host = host.strip_suffix('.').unwrap_or(host);
    let labels: Vec<&str> = host.split('.').collect();
    let labels_ok = labels
        .iter()
        .all(|l| !l.is_empty() && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'));
    let last_ok = labels
        .last()
        .and_then(|l| l.bytes().next())
        .is_some_and(|b| b.is_ascii_alphabetic());
    port_ok && labels_ok && last_ok
}

/// ISO 4217 form: three capital letters.
pub fn check_currency(field: &str, currency: &str) -> Result<(), ApiError> {
    if currency.len() == 3 && currency.bytes().all(|b| b.is_ascii_uppercase()) {
        Ok(())
    } else {
        Err(ApiError::invalid(
            field,
            "must be an ISO 4217 code such as ZAR",
        ))
    }
}

/// Moment's limits: at most 20 pairs, keys of 1 to 50 characters, values of 1 to 500.
pub fn check_metadata(metadata: &BTreeMap<String, String>) -> Result<(), ApiError> {
    if metadata.len() > 20 {
        return Err(ApiError::invalid("metadata", "at most 20 keys"));
    }
    for (k, v) in metadata {
        check_text("metadata", k)?;
        check_text(&format!("metadata.{k}"), v)?;
        if k.is_empty() || k.chars().count() > 50 {
            return Err(ApiError::invalid(
                "metadata",
                "keys must be 1 to 50 characters",
            ));
        }
        if v.is_empty() || v.chars().count() > 500 {
            return Err(ApiError::invalid(
                &format!("metadata.{k}"),
                "values must be 1 to 500 characters",
            ));
        }
    }
    Ok(())
}

/// The merchant's own reference: 1 to 255 characters.
pub fn check_reference(reference: Option<&str>) -> Result<(), ApiError> {
    if let Some(r) = reference {
        check_text("reference", r)?;
    }
    match reference {
        Some(r) if r.is_empty() || r.chars().count() > 255 => Err(ApiError::invalid(
            "reference",
            "must be 1 to 255 characters",
        )),
        _ => Ok(()),
    }
}

/// The errors every merchant route can answer, documented once (the API key check and
/// request parsing are shared by all of them). Only the OpenAPI document uses it.
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)]
pub enum MerchantErrors {
    /// Malformed body, header or parameter
    #[response(status = 400, content_type = "application/problem+json")]
    Malformed(crate::error::Problem),
    /// Missing or unknown API key
    #[response(status = 401, content_type = "application/problem+json")]
    Unauthorized(crate::error::Problem),
}

/// Cursor pagination parameters shared by the list endpoints.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct Page {
    /// Items per page, 1 to 100 (default 50).
    #[param(value_type = Option<u32>, minimum = 1, maximum = 100)]
    pub limit: Option<String>,
    /// The `next_cursor` of the previous page.
    #[param(value_type = Option<Uuid>)]
    pub cursor: Option<String>,
}

/// Items per page when `limit` is not given, and the most allowed.
pub const DEFAULT_LIMIT: i64 = 50;
pub const MAX_LIMIT: i64 = 100;

impl Page {
    /// `(limit, cursor)` checked.
    pub fn parse(&self) -> Result<(i64, Option<Uuid>), ApiError> {
        let limit = match &self.limit {
            None => DEFAULT_LIMIT,
            Some(l) => l
                .parse()
                .ok()
                .filter(|n| (1..=MAX_LIMIT).contains(n))
                .ok_or_else(|| {
                    ApiError::malformed("limit", format!("must be a number from 1 to {MAX_LIMIT}"))
                })?,
        };
        let cursor =
            match &self.cursor {
                None => None,
                Some(c) => Some(c.parse().map_err(|_| {
                    ApiError::malformed("cursor", "not a cursor returned by this API")
                })?),
            };
        Ok((limit, cursor))
    }
}

/// A page of results, newest first; `next_cursor` is null on the last page.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct List<T> {
    pub data: Vec<T>,
    #[schema(format = Uuid)]
    pub next_cursor: Option<String>,
}

impl<T> List<T> {
    pub fn new(data: Vec<T>, limit: i64, id: impl Fn(&T) -> Uuid) -> Self {
        let next_cursor = (data.len() as i64 == limit)
            .then(|| data.last().map(|t| id(t).to_string()))
            .flatten();
        Self { data, next_cursor }
    }
}

/// Maps a query string rejection to problem details.
pub fn bad_query(e: axum::extract::rejection::QueryRejection) -> ApiError {
    ApiError::Malformed {
        field: None,
        detail: e.body_text(),
    }
}
