//! Request parameters of the FHIR API: ids, the query string (search parameters, each
//! given at most once unless repeatable; an unknown name is a 422 pointing at the
//! CapabilityStatement, on every resource), references, dates and codes.

use super::elements::Elements;
use super::types::invalid;
use crate::db::records::TimeRange;
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
            // A modifier of one of our parameters changes what it matches: never ignored,
            // even when lenient, since ignoring it would answer a different question.
            if let Some((base, modifier)) = k.split_once(':')
                && allowed.contains(&base)
            {
                return Err(unsupported_modifier(modifier));
            }
            if lenient {
                continue;
            }
            return Err(AppError::unprocessable(
                "Unknown search parameter: see the CapabilityStatement at /fhir/metadata.",
            ));
        };
        // A cursor may carry a POST search's parameters (sealed); other values are short.
        let max = if *name == super::resource::CURSOR {
            4000
        } else {
            400
        };
        if v.len() > max {
            return Err(invalid("search parameter", "too long"));
        }
        out.push((*name, v.into_owned()));
    }
    Ok(out)
}

/// A modifier this parameter does not offer: a 400 naming it when it is one of FHIR's
/// (never an echo of other input).
fn unsupported_modifier(modifier: &str) -> AppError {
    const FHIR_MODIFIERS: [&str; 12] = [
        "contains",
        "exact",
        "missing",
        "text",
        "not",
        "above",
        "below",
        "in",
        "not-in",
        "of-type",
        "identifier",
        "iterate",
    ];
    match FHIR_MODIFIERS.iter().find(|m| **m == modifier) {
        Some(m) => AppError::bad_request(format!(
            "The search modifier :{m} is not supported for this parameter: see the CapabilityStatement at /fhir/metadata."
        )),
        None => AppError::bad_request(
            "Unknown search modifier: see the CapabilityStatement at /fhir/metadata.",
        ),
    }
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

/// Most values one comma-separated list (an OR) may hold.
pub const MAX_OR_VALUES: usize = 10;

/// The values of a comma-separated list (an OR, FHIR R4 3.1.1.4.1): `\,` is a literal
/// comma; at most [`MAX_OR_VALUES`]; no empty value.
pub fn or_values(field: &'static str, value: &str) -> Result<Vec<String>, AppError> {
    let mut out = Vec::new();
    let mut current = String::new();
    let mut escaped = false;
    for ch in value.chars() {
        match (escaped, ch) {
            (true, c) => {
                current.push(c);
                escaped = false;
            }
            (false, '\\') => escaped = true,
            (false, ',') => out.push(std::mem::take(&mut current)),
            (false, c) => current.push(c),
        }
    }
    out.push(current);
    if out.len() > MAX_OR_VALUES {
        return Err(invalid(field, "lists too many values (at most 10)"));
    }
    if out.iter().any(String::is_empty) {
        return Err(invalid(field, "has an empty value in its list"));
    }
    Ok(out)
}

/// The interval `[start, end)` a date search value denotes: `YYYY`, `YYYY-MM`,
/// `YYYY-MM-DD` (UTC) or an RFC 3339 date-time (that second).
fn date_interval(field: &'static str, s: &str) -> Result<(DateTime<Utc>, DateTime<Utc>), AppError> {
    let bad = || {
        invalid(
            field,
            "must be [eq|ne|gt|lt|ge|le|sa|eb|ap] followed by YYYY, YYYY-MM, YYYY-MM-DD or an RFC 3339 date-time",
        )
    };
    let midnight = |d: NaiveDate| d.and_hms_opt(0, 0, 0).map(|t| t.and_utc()).ok_or_else(bad);
    let ymd = |y: i32, m: u32, d: u32| NaiveDate::from_ymd_opt(y, m, d).ok_or_else(bad);
    let num = |t: &str| -> Result<u32, AppError> {
        if t.bytes().all(|b| b.is_ascii_digit()) {
            t.parse::<u32>().map_err(|_| bad())
        } else {
            Err(bad())
        }
    };
    match s.len() {
        4 => {
            let y = num(s)? as i32;
            Ok((midnight(ymd(y, 1, 1)?)?, midnight(ymd(y + 1, 1, 1)?)?))
        }
        7 if s.as_bytes()[4] == b'-' => {
            let (y, m) = (num(&s[..4])? as i32, num(&s[5..])?);
            let start = ymd(y, m, 1)?;
            let next = if m == 12 {
                ymd(y + 1, 1, 1)?
            } else {
                ymd(y, m + 1, 1)?
            };
            Ok((midnight(start)?, midnight(next)?))
        }
        10 => {
            let d = NaiveDate::parse_from_str(s, "%Y-%m-%d").map_err(|_| bad())?;
            let start = midnight(d)?;
            Ok((start, start + chrono::Duration::days(1)))
        }
        _ if s.len() <= 40 => {
            let t = DateTime::parse_from_rfc3339(s)
                .map_err(|_| bad())?
                .with_timezone(&Utc);
            Ok((t, t + chrono::Duration::seconds(1)))
        }
        _ => Err(bad()),
    }
}

/// Every `field` parameter of a search (at most `max`), each a [`date_conditions`] OR list.
pub fn date_params(
    params: &[(&'static str, String)],
    field: &'static str,
    max: usize,
) -> Result<Vec<Vec<TimeRange>>, AppError> {
    let values: Vec<&String> = params
        .iter()
        .filter(|(k, _)| *k == field)
        .map(|(_, v)| v)
        .collect();
    super::types::bounded_len(field, &values, max)?;
    values
        .into_iter()
        .map(|v| date_conditions(field, v))
        .collect()
}

/// A date search parameter's value (FHIR R4 3.1.1.4.2, for an instant-valued element):
/// a comma-separated OR of `[prefix]date` values, each an interval of time.
/// `eq` (default) within the value's interval, `ne` outside it, `gt`/`sa` after it,
/// `lt`/`eb` before it, `ge` from its start, `le` until its end, `ap` within 10 % of the
/// gap between now and the value (at least one day) either side.
pub fn date_conditions(field: &'static str, value: &str) -> Result<Vec<TimeRange>, AppError> {
    or_values(field, value)?
        .iter()
        .map(|v| {
            let (prefix, rest) = match v.get(..2) {
                Some(p @ ("eq" | "ne" | "gt" | "lt" | "ge" | "le" | "sa" | "eb" | "ap")) => {
                    (p, &v[2..])
                }
                _ => ("eq", v.as_str()),
            };
            let (start, end) = date_interval(field, rest)?;
            let range = |from, until, outside| TimeRange {
                from,
                until,
                outside,
            };
            Ok(match prefix {
                "ne" => range(Some(start), Some(end), true),
                "gt" | "sa" => range(Some(end), None, false),
                "lt" | "eb" => range(None, Some(start), false),
                "ge" => range(Some(start), None, false),
                "le" => range(None, Some(end), false),
                "ap" => {
                    let gap = (Utc::now() - start).abs() / 10;
                    let margin = gap.max(chrono::Duration::days(1));
                    range(Some(start - margin), Some(end + margin), false)
                }
                _ => range(Some(start), Some(end), false),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> Option<DateTime<Utc>> {
        Some(DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc))
    }

    #[test]
    fn date_prefixes_denote_the_fhir_intervals() {
        let day = ("2026-11-20T00:00:00Z", "2026-11-21T00:00:00Z");
        let c = |v: &str| date_conditions("date", v).unwrap();
        let r = |from, until, outside| TimeRange {
            from,
            until,
            outside,
        };
        assert_eq!(c("2026-11-20"), vec![r(t(day.0), t(day.1), false)]);
        assert_eq!(c("eq2026-11-20"), c("2026-11-20"));
        assert_eq!(c("ne2026-11-20"), vec![r(t(day.0), t(day.1), true)]);
        assert_eq!(c("gt2026-11-20"), vec![r(t(day.1), None, false)]);
        assert_eq!(c("sa2026-11-20"), c("gt2026-11-20"));
        assert_eq!(c("lt2026-11-20"), vec![r(None, t(day.0), false)]);
        assert_eq!(c("eb2026-11-20"), c("lt2026-11-20"));
        assert_eq!(c("ge2026-11-20"), vec![r(t(day.0), None, false)]);
        assert_eq!(c("le2026-11-20"), vec![r(None, t(day.1), false)]);
        assert_eq!(
            c("2026"),
            vec![r(
                t("2026-01-01T00:00:00Z"),
                t("2027-01-01T00:00:00Z"),
                false
            )]
        );
        assert_eq!(
            c("2026-12"),
            vec![r(
                t("2026-12-01T00:00:00Z"),
                t("2027-01-01T00:00:00Z"),
                false
            )]
        );
        let ap = c("ap2026-11-20")[0];
        assert!(ap.from < t(day.0) && ap.until > t(day.1));
        assert_eq!(c("2026-11-20,ge2027").len(), 2);
        for bad in [
            "",
            "xx2026",
            "2026-13",
            "2026-11-31",
            "2026,",
            "gt",
            "20261120",
        ] {
            assert!(date_conditions("date", bad).is_err(), "{bad}");
        }
        assert_eq!(or_values("code", "a\\,b,c").unwrap(), vec!["a,b", "c"]);
        assert!(or_values("code", &["a"; 11].join(",")).is_err());
    }
}
