//! The ONE mapping from a policy denial to an HTTP answer. Every refusal the pipeline
//! answers comes from here, so the same denial gets the same status on every resource.
//!
//! | denial                         | decided                  | one record (read, update, delete) | search | create                 | admin API |
//! |--------------------------------|--------------------------|-----------------------------------|--------|------------------------|-----------|
//! | scope missing (token)          | before any lookup        | 403                               | 403    | 403                    | 403       |
//! | role missing (our database)    | before any lookup        | 403                               | 403    | 403                    | 403       |
//! | no relationship to the patient | on the target's facts    | **404**                           | 403    | **422** (on the field) | –         |
//! | same, for a role that may break glass, or a confidentiality (R/V) the relationship does not reach | on the target's facts | **403** naming `$break-glass` | – | 403 | – |
//!
//! - A missing scope or role is decided from the principal alone ([`on_capability`],
//!   [`on_admin`]) before the record, patient or body the request names is looked at, so
//!   an existing id, a missing id and a malformed one all get the same 403: probing ids
//!   without the capability reveals nothing.
//! - On one record, a missing relationship answers exactly like a record that does not
//!   exist (404), so probing ids reveals nothing.
//! - On a *search* there is no record whose existence could leak: the principal asked for a
//!   kind of resource, and has no relationship that gives them any. That is a refusal of
//!   the interaction, answered 403 with the reason — on every resource type (Patient
//!   search used to answer 404 while the others answered 403).
//! - A write or search that names a field outside the role's view (field-level control,
//!   [`on_field`]) is a 403 naming the field, like a denied search: the caller asked to do
//!   something its role may not, on a record it may otherwise see.
//! - On a create, the patient named in the body is input: a patient that does not exist
//!   and one the principal may not write for get the same 422 on that field.

use crate::error::AppError;
use crate::policy::DenyReason;
use actix_web::http::StatusCode;

/// The capability that is missing, as a 403.
fn forbidden(reason: DenyReason) -> AppError {
    AppError::client(StatusCode::FORBIDDEN, reason.message())
}

/// A missing scope or role on a FHIR route, decided before any lookup: 403 with the
/// reason, whatever the request names.
pub fn on_capability(reason: DenyReason) -> AppError {
    forbidden(reason)
}

/// A denial on one existing record: no relationship looks like no record — except to a
/// principal who may break glass, who is told that it is available (403,
/// [`DenyReason::BreakGlassAvailable`]).
pub fn on_record(reason: DenyReason) -> AppError {
    match reason {
        DenyReason::NoRelationship => AppError::not_found(),
        other => forbidden(other),
    }
}

/// A denied search: always 403 with the reason (see the module documentation).
pub fn on_search(reason: DenyReason) -> AppError {
    forbidden(reason)
}

/// A denied create: no relationship is a 422 on the field that names the patient (or the
/// facility), indistinguishable from naming one that does not exist.
pub fn on_create(reason: DenyReason, field: &'static str, requirement: &'static str) -> AppError {
    match reason {
        DenyReason::NoRelationship => {
            AppError::unprocessable(format!("Invalid field '{field}': {requirement}."))
        }
        other => forbidden(other),
    }
}

/// What a refused field was used for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FieldUse {
    Write,
    Search,
}

/// A write or search on a field outside the role's view: 403 naming the field (`field` is
/// ours, from the view's field list, never the caller's input).
pub fn on_field(field: &'static str, usage: FieldUse) -> AppError {
    let verb = match usage {
        FieldUse::Write => "write",
        FieldUse::Search => "search on",
    };
    AppError::client(
        StatusCode::FORBIDDEN,
        format!(
            "Access denied: your role may not {verb} the field '{field}' (it is outside your view of this resource)."
        ),
    )
}

/// A refusal of the administration API (`admin` role AND `admin` scope).
pub fn on_admin(reason: DenyReason) -> AppError {
    let message = match reason {
        DenyReason::ScopeMissing => {
            "Access denied: the access token does not carry the 'admin' scope."
        }
        _ => "Access denied: the administration API requires the admin role.",
    };
    AppError::client(StatusCode::FORBIDDEN, message)
}
