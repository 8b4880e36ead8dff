//! Request parameters of the FHIR API: ids, the query string (search parameters, each
//! given at most once unless repeatable; an unknown name is a 422 pointing at the
//! CapabilityStatement, on every resource), references, dates and codes.

use super::elements::Elements;
use super::types::invalid;
use crate::domain::RecordId;
use crate::error::AppError;
use crate::policy::ResourceType;
use actix_web::HttpRequest;
use actix_web::http::StatusCode;
use chrono::{DateTime, NaiveDate, SecondsFormat, Utc};
use uuid::Uuid;

/// The record id of a path; an id that is not one of ours cannot exist.
pub fn parse_id(raw: &str) -> Result<RecordId, AppError> {
    RecordId::parse(raw).ok_or_else(AppError::not_found)
}

pub fn precondition_failed() -> AppError {
    AppError::client(
        StatusCode::PRECONDITION_FAILED,
        "The resource was changed by someone else: read it again and retry with its new ETag.",
    )
}

/// The query string as (name, value) pairs; a name outside `allowed` is a 422 naming it
/// only if it is one of ours (unknown names are not echoed) — unless the request says
/// `Prefer: handling=lenient`, when unknown names are ignored. `_format` is accepted
/// everywhere and may name JSON only (406 otherwise).
pub fn search_params(
    req: &HttpRequest,
    allowed: &[&'static str],
) -> Result<Vec<(&'static str, String)>, AppError> {
    let lenient = super::Prefer::of(req).lenient;
    parse_params(req.query_string(), allowed, lenient)
}

/// [`search_params`] over a query string or form body.
pub fn parse_params(
    query: &str,
    allowed: &[&'static str],
    lenient: bool,
) -> Result<Vec<(&'static str, String)>, AppError> {
    let mut out = Vec::new();
    for (k, v) in url::form_urlencoded::parse(query.as_bytes()) {
        if k == "_format" {
            super::check_format(&v)?;
            continue;
        }
        let Some(name) = allowed.iter().find(|a| **a == k) else {
            if lenient {
                continue;
            }
            return Err(AppError::unprocessable(
                "Unknown search parameter: see the CapabilityStatement at /fhir/metadata.",
            ));
        };
        if v.len() > 400 {
            return Err(invalid("search parameter", "too long"));
        }
        out.push((*name, v.into_owned()));
    }
    Ok(out)
}

/// The `_elements` of a read (the only query parameter a read accepts).
pub fn read_elements(req: &HttpRequest, resource: ResourceType) -> Result<Elements, AppError> {
    let params = search_params(req, &["_elements"])?;
    Elements::parse(resource, single(&params, "_elements")?)
}

/// The single value of a search parameter (repeating it is a 422).
pub fn single<'a>(
    params: &'a [(&'static str, String)],
    name: &'static str,
) -> Result<Option<&'a str>, AppError> {
    let mut values = params.iter().filter(|(k, _)| *k == name);
    let first = values.next().map(|(_, v)| v.as_str());
    if values.next().is_some() {
        return Err(invalid(name, "may be given only once"));
    }
    Ok(first)
}

/// `Patient/<id>` (or a bare id, for the `patient` search parameter).
pub fn patient_reference(field: &'static str, value: &str) -> Result<Uuid, AppError> {
    value
        .strip_prefix("Patient/")
        .and_then(|id| Uuid::parse_str(id).ok())
        .ok_or_else(|| invalid(field, "must be Patient/<id>"))
}

pub fn patient_param(value: &str) -> Result<Uuid, AppError> {
    let id = value.strip_prefix("Patient/").unwrap_or(value);
    Uuid::parse_str(id).map_err(|_| invalid("patient", "must be a Patient id"))
}

/// A FHIR `dateTime` with a time and zone (RFC 3339), between 1880 and tomorrow.
pub fn date_time(field: &'static str, value: &str) -> Result<DateTime<Utc>, AppError> {
    let bad = || invalid(field, "must be an RFC 3339 date-time with a time zone");
    if value.len() > 40 {
        return Err(bad());
    }
    let t = DateTime::parse_from_rfc3339(value)
        .map_err(|_| bad())?
        .with_timezone(&Utc);
    let earliest = NaiveDate::from_ymd_opt(1880, 1, 1)
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map(|d| d.and_utc());
    if Some(t) < earliest || t > Utc::now() + chrono::Duration::days(1) {
        return Err(invalid(field, "must be between 1880 and now"));
    }
    Ok(t)
}

/// The FHIR JSON form of an instant: `2026-11-23T10:00:00Z`.
pub fn instant(t: &DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// A token code: 1–`max` characters of letters, digits, `.`, `-` and `_`.
pub fn token(field: &'static str, value: &str, max: usize) -> Result<String, AppError> {
    let ok = !value.is_empty()
        && value.len() <= max
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'));
    ok.then(|| value.to_string())
        .ok_or_else(|| invalid(field, "must be a code of letters, digits, '.', '-' or '_'"))
}

/// (from inclusive, until exclusive), either open.
pub type DateBounds = (Option<DateTime<Utc>>, Option<DateTime<Utc>>);

/// A date-range search value: `2026-11-23` (that UTC day), `ge2026-11-23`, `le2026-11-23`
/// (a day or an RFC 3339 date-time). Returns (from inclusive, to exclusive).
pub fn date_range(value: &str) -> Result<DateBounds, AppError> {
    let bad = || invalid("date", "must be [ge|le]YYYY-MM-DD or [ge|le]<date-time>");
    let (prefix, rest) = match value.get(..2) {
        Some(p @ ("ge" | "le" | "eq")) => (p, &value[2..]),
        _ => ("eq", value),
    };
    let day = |s: &str| -> Result<(DateTime<Utc>, DateTime<Utc>), AppError> {
        if s.len() == 10 {
            let d = NaiveDate::parse_from_str(s, "%Y-%m-%d").map_err(|_| bad())?;
            let start = d.and_hms_opt(0, 0, 0).ok_or_else(bad)?.and_utc();
            Ok((start, start + chrono::Duration::days(1)))
        } else {
            let t = DateTime::parse_from_rfc3339(s)
                .map_err(|_| bad())?
                .with_timezone(&Utc);
            Ok((t, t + chrono::Duration::seconds(1)))
        }
    };
    let (start, end) = day(rest)?;
    Ok(match prefix {
        "ge" => (Some(start), None),
        "le" => (None, Some(end)),
        _ => (Some(start), Some(end)),
    })
}
