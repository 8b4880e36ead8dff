//! The administration operations themselves — validation, database work and what each
//! change touched — shared by the JSON API ([`super`]) and the admin console
//! ([`crate::console::pages`]) so both surfaces follow exactly the same rules. Each
//! surface wraps an operation in [`audited`] with its own actor, so every change is one
//! audit event whichever way it came in.

use crate::audit::{AuditAction, ClientId, Outcome, ResourceType as Kind};
use crate::db::users::{self, UserKind, UserSummary};
use crate::error::AppError;
use crate::policy::Role;
use crate::state::AppState;
use actix_web::http::StatusCode;
use std::future::Future;
use uuid::Uuid;

/// Roles a service client may never hold.
const NOT_FOR_CLIENTS: [Role; 3] = [Role::Admin, Role::PrivacyOfficer, Role::Patient];

/// Who performs an administration change, as the audit trail records it.
pub trait AdminActor {
    /// Our user id of the administrator.
    fn user_id(&self) -> Uuid;
    /// Records the one audit event of this change (internal ids only).
    fn record(
        &self,
        action: AuditAction,
        resource: Option<(Kind, Option<Uuid>)>,
        patients: Vec<Uuid>,
        outcome: Outcome,
    ) -> impl Future<Output = Result<(), AppError>>;
}

/// What a successful change touched, for its audit event.
#[derive(Default)]
pub struct Touched {
    pub resource_id: Option<Uuid>,
    pub patients: Vec<Uuid>,
}

impl Touched {
    pub fn user(id: Uuid) -> Touched {
        Touched {
            resource_id: Some(id),
            ..Touched::default()
        }
    }
}

/// Runs `work` and records its one audit event: permit on success, error otherwise. If
/// the event cannot be written the caller gets 503 (fail closed).
pub async fn audited<A, T, F>(
    who: &A,
    action: AuditAction,
    kind: Option<Kind>,
    work: F,
) -> Result<T, AppError>
where
    A: AdminActor,
    F: Future<Output = Result<(T, Touched), AppError>>,
{
    match work.await {
        Ok((value, touched)) => {
            who.record(
                action,
                kind.map(|k| (k, touched.resource_id)),
                touched.patients,
                Outcome::Permit,
            )
            .await?;
            Ok(value)
        }
        Err(err) => {
            who.record(action, kind.map(|k| (k, None)), Vec::new(), Outcome::Error)
                .await?;
            Err(err)
        }
    }
}

/// A required free-text reason: 3..=500 characters, no control characters but newlines
/// and tabs. Stored where the schema has a place for it; never audited or logged.
pub fn check_reason(reason: Option<&str>) -> Result<String, AppError> {
    let Some(reason) = reason else {
        return Err(AppError::unprocessable(
            "The field 'reason' is required (3 to 500 characters).",
        ));
    };
    let reason = reason.trim();
    let n = reason.chars().count();
    if !(super::REASON_MIN..=super::REASON_MAX).contains(&n) {
        return Err(AppError::unprocessable(
            "The field 'reason' must be 3 to 500 characters long.",
        ));
    }
    if reason
        .chars()
        .any(|c| c.is_control() && c != '\n' && c != '\t')
    {
        return Err(AppError::unprocessable(
            "The field 'reason' must not contain control characters.",
        ));
    }
    Ok(reason.to_string())
}

pub fn parse_role(field: &'static str, text: &str) -> Result<Role, AppError> {
    Role::parse(text).ok_or_else(|| {
        AppError::unprocessable(format!(
            "The field '{field}' must be one of: clinician, billing, patient, admin, privacy_officer, service."
        ))
    })
}

pub fn user_not_found() -> AppError {
    AppError::client(StatusCode::NOT_FOUND, "The user was not found.")
}

pub async fn get_user(state: &AppState, id: Uuid) -> Result<UserSummary, AppError> {
    state
        .db
        .run(move |c| users::get_user(c, id))
        .await?
        .ok_or_else(user_not_found)
}

/// Grants `role` to user `id` with a required reason.
pub async fn grant_role(
    state: &AppState,
    by: Uuid,
    id: Uuid,
    role: &str,
    reason: Option<&str>,
) -> Result<(UserSummary, Touched), AppError> {
    let role = parse_role("role", role)?;
    let reason = check_reason(reason)?;
    let found = state
        .db
        .run(move |c| {
            if users::get_user(c, id)?.is_none() {
                return Ok(false);
            }
            users::grant_role(c, id, role, &reason, Some(by))?;
            Ok(true)
        })
        .await?;
    if !found {
        return Err(user_not_found());
    }
    Ok((get_user(state, id).await?, Touched::user(id)))
}

/// Removes `role` from user `id` (a reason is required); the user's console sessions end
/// at once, so the change takes effect on their next request.
pub async fn revoke_role(
    state: &AppState,
    by: Uuid,
    id: Uuid,
    role: &str,
    reason: Option<&str>,
) -> Result<(UserSummary, Touched), AppError> {
    let role = parse_role("role", role)?;
    let reason = check_reason(reason)?;
    if id == by && role == Role::Admin {
        return Err(AppError::client(
            StatusCode::CONFLICT,
            "You cannot remove your own admin role; ask another administrator.",
        ));
    }
    get_user(state, id).await?;
    let held = state
        .db
        .run(move |c| {
            use diesel::Connection;
            c.transaction(|c| {
                let held = users::revoke_role(c, id, role, &reason, Some(by))?;
                if held {
                    crate::console::session::destroy_all_of_user(c, id)?;
                }
                Ok::<_, AppError>(held)
            })
        })
        .await?;
    if !held {
        return Err(AppError::client(
            StatusCode::NOT_FOUND,
            "The user does not hold this role.",
        ));
    }
    Ok((get_user(state, id).await?, Touched::user(id)))
}

/// Disables or re-enables user `id` (a reason is required). Disabling ends the user's
/// console sessions at once.
pub async fn set_disabled(
    state: &AppState,
    by: Uuid,
    id: Uuid,
    disabled: bool,
    reason: Option<&str>,
) -> Result<(UserSummary, Touched), AppError> {
    let reason = check_reason(reason)?;
    if disabled && id == by {
        return Err(AppError::client(
            StatusCode::CONFLICT,
            "You cannot disable your own account.",
        ));
    }
    get_user(state, id).await?;
    state
        .db
        .run(move |c| {
            use diesel::Connection;
            c.transaction(|c| {
                users::set_disabled(c, id, disabled, &reason, Some(by))?;
                if disabled {
                    crate::console::session::destroy_all_of_user(c, id)?;
                }
                Ok::<_, AppError>(())
            })
        })
        .await?;
    Ok((get_user(state, id).await?, Touched::user(id)))
}

/// Puts user `id` in a known facility.
pub async fn set_facility(
    state: &AppState,
    id: Uuid,
    facility: Uuid,
) -> Result<(UserSummary, Touched), AppError> {
    get_user(state, id).await?;
    let known = state
        .db
        .run(move |c| users::facility_exists(c, facility))
        .await?;
    if !known {
        return Err(AppError::unprocessable(
            "The field 'facility_id' does not name a known facility.",
        ));
    }
    state
        .db
        .run(move |c| users::set_facility(c, id, Some(facility)))
        .await?;
    Ok((get_user(state, id).await?, Touched::user(id)))
}

/// Adds user `user` to (or, with `add == false`, removes them from) the care team of
/// `patient`, with a required reason.
pub async fn care_team(
    state: &AppState,
    by: Uuid,
    patient: Uuid,
    user: Uuid,
    reason: Option<&str>,
    add: bool,
) -> Result<((), Touched), AppError> {
    let reason = check_reason(reason)?;
    let changed = state
        .db
        .run(move |c| {
            if !users::patient_exists(c, patient)? {
                return Ok(Err("The patient was not found."));
            }
            if users::get_user(c, user)?.is_none() {
                return Ok(Err("The user was not found."));
            }
            if add {
                users::add_to_care_team(c, patient, user, &reason, Some(by))?;
                Ok(Ok(()))
            } else if users::remove_from_care_team(c, patient, user, &reason, Some(by))? {
                Ok(Ok(()))
            } else {
                Ok(Err("The user is not on this patient's care team."))
            }
        })
        .await?;
    changed.map_err(|m| AppError::client(StatusCode::NOT_FOUND, m))?;
    Ok((
        (),
        Touched {
            resource_id: Some(user),
            patients: vec![patient],
        },
    ))
}

/// Registers a service client: a `service` user keyed by (`auth.issuer`, client id), in
/// the facility, with the given roles (never admin, privacy_officer or patient).
pub async fn create_client(
    state: &AppState,
    by: Uuid,
    client_id: String,
    facility: Uuid,
    roles: &[String],
    reason: Option<&str>,
) -> Result<(UserSummary, Touched), AppError> {
    if ClientId::parse(&client_id).is_err() {
        return Err(AppError::unprocessable(
            "The field 'client_id' must be 1 to 128 printable characters without spaces.",
        ));
    }
    if roles.is_empty() {
        return Err(AppError::unprocessable(
            "The field 'roles' must name at least one role.",
        ));
    }
    let mut parsed = Vec::new();
    for r in roles {
        let role = parse_role("roles", r)?;
        if NOT_FOR_CLIENTS.contains(&role) {
            return Err(AppError::unprocessable(
                "The field 'roles' may not give a service client the admin, privacy_officer or patient role.",
            ));
        }
        parsed.push(role);
    }
    let reason = match reason {
        Some(r) => check_reason(Some(r))?,
        None => "service client registered through the admin API".to_string(),
    };
    let issuer = state
        .tokens
        .as_ref()
        .map(|t| t.issuer().to_string())
        .ok_or(AppError::Unavailable)?;
    let result = state
        .db
        .run(move |c| {
            c.build_transaction().run(|c| {
                if !users::facility_exists(c, facility)? {
                    return Ok(Err(AppError::unprocessable(
                        "The field 'facility_id' does not name a known facility.",
                    )));
                }
                match users::kind_of(c, &issuer, &client_id)?.as_deref() {
                    None => {}
                    Some("service") => {
                        return Ok(Err(AppError::client(
                            StatusCode::CONFLICT,
                            "A service client with this client id already exists.",
                        )));
                    }
                    Some(_) => {
                        return Ok(Err(AppError::client(
                            StatusCode::CONFLICT,
                            "This client id is already used by a person at this issuer.",
                        )));
                    }
                }
                let user = users::user_for(c, &issuer, &client_id, UserKind::Service)?;
                users::set_facility(c, user.id, Some(facility))?;
                for role in parsed {
                    users::grant_role(c, user.id, role, &reason, Some(by))?;
                }
                Ok::<_, AppError>(Ok(user.id))
            })
        })
        .await?;
    let id = result?;
    Ok((get_user(state, id).await?, Touched::user(id)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_are_bounded() {
        assert!(check_reason(None).is_err());
        assert!(check_reason(Some("  ab ")).is_err());
        assert!(check_reason(Some(&"x".repeat(501))).is_err());
        assert!(check_reason(Some("bad\u{0}")).is_err());
        assert_eq!(check_reason(Some(" new hire ")).unwrap(), "new hire");
        let err = check_reason(None).unwrap_err().to_string();
        assert!(err.contains("'reason'"), "{err}");
    }
}
