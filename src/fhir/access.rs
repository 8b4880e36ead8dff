//! The steps every patient-linked resource handler shares (Observation, DocumentReference,
//! Claim): load the facts of the subject patient, ask the decision point, audit a denial,
//! and map it to the response (relationship → 404 on a single record, scope/role → 403).
//! The handlers still write their permit events themselves, after fetching, before
//! responding.

use super::elements::Elements;
use super::types::invalid;
use crate::audit::{AuditAction, Outcome};
use crate::auth::caller::audit_reason;
use crate::auth::{Caller, Principal};
use crate::db::users;
use crate::error::AppError;
use crate::policy::{
    Decision, DenyReason, Interaction, PatientFacts, ResourceType, SearchScope, Target, View,
};
use crate::state::AppState;
use actix_web::http::StatusCode;
use actix_web::{HttpRequest, web};
use chrono::{DateTime, NaiveDate, SecondsFormat, Utc};
use uuid::Uuid;

/// Looks up the subject patient of a live record.
pub use crate::auth::caller::PatientOf;

pub fn denied(reason: DenyReason) -> AppError {
    AppError::client(StatusCode::FORBIDDEN, reason.message())
}

/// An id that is not one of ours cannot exist.
pub fn parse_id(raw: &str) -> Result<Uuid, AppError> {
    Uuid::parse_str(raw).map_err(|_| AppError::not_found())
}

pub fn precondition_failed() -> AppError {
    AppError::client(
        StatusCode::PRECONDITION_FAILED,
        "The resource was changed by someone else: read it again and retry with its new ETag.",
    )
}

/// Runs the update or delete `write` of record `id` of `patient` in one transaction with
/// its audit event ([`Caller::audited_write`]): `Some` is a permit; `None` (the row was
/// gone, or its version had moved) is audited as an error and answered with `missing()`.
pub async fn audited<T, W>(
    caller: &Caller,
    action: AuditAction,
    resource: ResourceType,
    id: Uuid,
    patient: Uuid,
    write: W,
    missing: fn() -> AppError,
) -> Result<T, AppError>
where
    T: Send + 'static,
    W: FnOnce(&mut diesel::PgConnection) -> Result<Option<T>, AppError> + Send + 'static,
{
    let write = move |c: &mut diesel::PgConnection| write(c)?.ok_or_else(missing);
    caller
        .audited_write(action, resource, Some(id), [patient], write, None)
        .await
}

/// A read of one record in one blocking hop: the caller's user and roles, the subject
/// patient's policy facts, the decision, and only if permitted `get` (which fetches and
/// decrypts). Input errors (`id`, `elements`) are raised after the account checks. Every
/// outcome is audited; a record whose subject is not the patient the decision was about
/// is treated as missing.
pub async fn read_record<T, G>(
    principal: Principal,
    resource: ResourceType,
    id: Result<Uuid, AppError>,
    elements: Result<Elements, AppError>,
    patient_of: PatientOf,
    check_view: fn(View) -> Result<(), AppError>,
    get: G,
) -> Result<(T, Elements), AppError>
where
    T: Send + 'static,
    G: FnOnce(&mut diesel::PgConnection, Uuid) -> Result<Option<(Uuid, T)>, AppError>
        + Send
        + 'static,
{
    let (caller, (id, access, found, elements)) = principal
        .resolve_with(move |c, caller| {
            let id = id?;
            let elements = elements?;
            let access = caller.record_access(c, resource, Interaction::Read, id, patient_of)?;
            let found = match access.view() {
                Some(view) => {
                    check_view(view)?;
                    get(c, id)?
                }
                None => None,
            };
            Ok((id, access, found, elements))
        })
        .await?;
    let (_, facts) = caller
        .settle(AuditAction::Read, resource, id, access)
        .await?;
    let patient = facts.patient_id;
    let Some((_, record)) = found.filter(|(subject, _)| *subject == patient) else {
        caller
            .audit(AuditAction::Read, resource, Some(id), [], Outcome::Error)
            .await?;
        return Err(AppError::not_found());
    };
    caller
        .audit(
            AuditAction::Read,
            resource,
            Some(id),
            [patient],
            Outcome::Permit,
        )
        .await?;
    Ok((record, elements))
}

/// The permitted view for one existing record `id` (whose subject patient `patient_of`
/// finds), or the error to answer. Every outcome but a permit is audited here.
pub async fn authorize_record(
    caller: &Caller,
    _state: &web::Data<AppState>,
    resource: ResourceType,
    interaction: Interaction,
    action: AuditAction,
    id: Uuid,
    patient_of: PatientOf,
) -> Result<(View, Uuid), AppError> {
    let (view, facts) = caller
        .authorize_record(action, resource, interaction, id, patient_of)
        .await?;
    Ok((view, facts.patient_id))
}

/// The permit to create a record for `patient`. A patient that does not exist and one the
/// caller has no relationship with get the same answer, so probing reveals nothing.
pub async fn authorize_create(
    caller: &Caller,
    state: &web::Data<AppState>,
    resource: ResourceType,
    patient_field: &'static str,
    patient: Uuid,
) -> Result<View, AppError> {
    let user_id = caller.user.id;
    let facts: Option<PatientFacts> = state
        .db
        .run(move |c| users::patient_facts(c, patient, user_id))
        .await?;
    let unknown = || invalid(patient_field, "must reference a patient you may write for");
    let Some(facts) = facts else {
        caller
            .audit(AuditAction::Create, resource, None, [], Outcome::Error)
            .await?;
        return Err(unknown());
    };
    match caller.decide(resource, Interaction::Create, Target::Patient(facts)) {
        Decision::Permit { view, .. } => Ok(view),
        Decision::Deny(reason) => {
            caller
                .audit(
                    AuditAction::Create,
                    resource,
                    None,
                    [patient],
                    Outcome::Deny(audit_reason(reason)),
                )
                .await?;
            Err(match reason {
                DenyReason::NoRelationship => unknown(),
                other => denied(other),
            })
        }
    }
}

/// The permit to search, with the rows it may return.
pub async fn authorize_search(
    caller: &Caller,
    resource: ResourceType,
) -> Result<(View, SearchScope), AppError> {
    match caller.decide(resource, Interaction::Search, Target::Search) {
        Decision::Permit {
            view,
            search: Some(scope),
            ..
        } => Ok((view, scope)),
        Decision::Permit { search: None, .. } => {
            Err(AppError::internal("search permit without scope"))
        }
        Decision::Deny(reason) => {
            caller
                .audit(
                    AuditAction::Search,
                    resource,
                    None,
                    [],
                    Outcome::Deny(audit_reason(reason)),
                )
                .await?;
            Err(denied(reason))
        }
    }
}

/// The query string as (name, value) pairs; a name outside `allowed` is a 422 naming it
/// only if it is one of ours (unknown names are not echoed).
pub fn search_params(
    req: &HttpRequest,
    allowed: &[&'static str],
) -> Result<Vec<(&'static str, String)>, AppError> {
    let mut out = Vec::new();
    for (k, v) in url::form_urlencoded::parse(req.query_string().as_bytes()) {
        let Some(name) = allowed.iter().find(|a| **a == k) else {
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
