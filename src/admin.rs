//! The administration API under `/api/admin`: users and their roles, care relationships,
//! facilities and service clients. JSON in and out; errors are `application/problem+json`
//! (rendered by the edge).
//!
//! Who may call it is decided in ONE place: the [`AdminCaller`] extractor asks
//! [`crate::policy::decide_admin`] (the `admin` role from our database AND the `admin`
//! scope on the token). Handlers never look at roles. Every call — permitted, denied or
//! failed — is one audit event with internal ids only (no names, no reasons, no bodies).
//! The reasons are kept with the change itself, in the access-change history
//! ([`users::history`]).

use crate::audit::{AuditAction, ClientId, Outcome, ResourceType as Kind};
use crate::auth::Caller;
use crate::auth::caller::audit_reason;
use crate::db::users::{self, UserKind};
use crate::error::AppError;
use crate::policy::{self, Role};
use crate::web::AppState;
use crate::web::json::{self, JsonLimits};
use actix_web::dev::Payload;
use actix_web::http::header::CONTENT_TYPE;
use actix_web::http::{Method, StatusCode};
use actix_web::{FromRequest, HttpRequest, HttpResponse, web};
use futures_util::future::LocalBoxFuture;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use std::future::Future;
use uuid::Uuid;

/// Shortest and longest accepted `reason` (characters, after trimming).
pub const REASON_MIN: usize = 3;
pub const REASON_MAX: usize = 500;
/// Page size of `GET /api/admin/users`.
pub const DEFAULT_LIMIT: i64 = 50;
pub const MAX_LIMIT: i64 = 200;
/// Roles a service client may never hold.
const NOT_FOR_CLIENTS: [Role; 3] = [Role::Admin, Role::PrivacyOfficer, Role::Patient];

/// A caller the decision point admitted to the administration API.
pub struct AdminCaller(pub Caller);

/// The audit action and resource kind of an admin route, from its method and path; used
/// for events of calls refused before a handler runs.
fn classify(method: &Method, path: &str) -> (AuditAction, Option<Kind>) {
    if path.contains("/care-teams") {
        (
            AuditAction::CareRelationshipChange,
            Some(Kind::CareRelationship),
        )
    } else if path.contains("/clients") {
        (AuditAction::PermissionChange, Some(Kind::Client))
    } else if path.contains("/facilities") {
        if method == Method::GET || method == Method::HEAD {
            (AuditAction::Search, None)
        } else {
            (AuditAction::Create, None)
        }
    } else if method == Method::GET || method == Method::HEAD {
        let one = path.trim_end_matches('/').split('/').count() > 4;
        let action = if one {
            AuditAction::Read
        } else {
            AuditAction::Search
        };
        (action, Some(Kind::User))
    } else if path.contains("/roles") {
        (AuditAction::PermissionChange, Some(Kind::RoleAssignment))
    } else {
        (AuditAction::PermissionChange, Some(Kind::User))
    }
}

impl FromRequest for AdminCaller {
    type Error = AppError;
    type Future = LocalBoxFuture<'static, Result<Self, AppError>>;

    fn from_request(req: &HttpRequest, payload: &mut Payload) -> Self::Future {
        let caller = Caller::from_request(req, payload);
        let (action, kind) = classify(req.method(), req.path());
        Box::pin(async move {
            let caller = caller.await?;
            match caller.decide_admin() {
                Ok(()) => Ok(AdminCaller(caller)),
                Err(reason) => {
                    caller
                        .audit_admin(
                            action,
                            kind.map(|k| (k, None)),
                            [],
                            Outcome::Deny(audit_reason(reason)),
                        )
                        .await?;
                    let message = match reason {
                        policy::DenyReason::ScopeMissing => {
                            "Access denied: the access token does not carry the 'admin' scope."
                        }
                        _ => "Access denied: the administration API requires the admin role.",
                    };
                    Err(AppError::client(StatusCode::FORBIDDEN, message))
                }
            }
        })
    }
}

/// What a successful change touched, for its audit event.
#[derive(Default)]
struct Touched {
    resource_id: Option<Uuid>,
    patients: Vec<Uuid>,
}

/// Runs `work` and records its one audit event: permit on success, error otherwise. If
/// the event cannot be written the caller gets 503 (fail closed).
async fn audited<F>(
    caller: &AdminCaller,
    action: AuditAction,
    kind: Option<Kind>,
    work: F,
) -> Result<HttpResponse, AppError>
where
    F: Future<Output = Result<(HttpResponse, Touched), AppError>>,
{
    match work.await {
        Ok((response, touched)) => {
            caller
                .0
                .audit_admin(
                    action,
                    kind.map(|k| (k, touched.resource_id)),
                    touched.patients,
                    Outcome::Permit,
                )
                .await?;
            Ok(response)
        }
        Err(err) => {
            caller
                .0
                .audit_admin(action, kind.map(|k| (k, None)), [], Outcome::Error)
                .await?;
            Err(err)
        }
    }
}

/// Parses a JSON body (JSON content types only; same limits and messages as
/// [`json::JsonBody`]) inside the audited part of a handler.
fn body<T: DeserializeOwned>(req: &HttpRequest, bytes: &[u8]) -> Result<T, AppError> {
    let is_json = req
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(json::is_json_content_type);
    if !is_json {
        return Err(AppError::client(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "This endpoint accepts JSON bodies only (application/json).",
        ));
    }
    let limits = req
        .app_data::<web::Data<JsonLimits>>()
        .map(|d| *d.get_ref())
        .unwrap_or(JsonLimits { max_depth: 32 });
    json::parse(bytes, limits)
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
    if !(REASON_MIN..=REASON_MAX).contains(&n) {
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

fn parse_role(field: &'static str, text: &str) -> Result<Role, AppError> {
    Role::parse(text).ok_or_else(|| {
        AppError::unprocessable(format!(
            "The field '{field}' must be one of: clinician, billing, patient, admin, privacy_officer, service."
        ))
    })
}

fn user_not_found() -> AppError {
    AppError::client(StatusCode::NOT_FOUND, "The user was not found.")
}

fn json_response(status: StatusCode, value: &impl serde::Serialize) -> HttpResponse {
    HttpResponse::build(status)
        .content_type("application/json")
        .body(serde_json::to_string(value).unwrap_or_else(|_| "{}".into()))
}

async fn user_json(state: &AppState, id: Uuid) -> Result<users::UserSummary, AppError> {
    state
        .db
        .run(move |c| users::get_user(c, id))
        .await?
        .ok_or_else(user_not_found)
}

fn path_uuid(text: &str) -> Result<Uuid, AppError> {
    Uuid::parse_str(text).map_err(|_| AppError::not_found())
}

// ----------------------------------------------------------------------------------------
// Users

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    after: Option<Uuid>,
    limit: Option<i64>,
}

/// `GET /api/admin/users?after=<uuid>&limit=<1..200>`
pub async fn list_users(
    caller: AdminCaller,
    state: web::Data<AppState>,
    req: HttpRequest,
) -> Result<HttpResponse, AppError> {
    audited(&caller, AuditAction::Search, Some(Kind::User), async {
        let q = web::Query::<ListQuery>::from_query(req.query_string()).map_err(|_| {
            AppError::bad_request("Invalid query: use after=<user id> and limit=<1..200> only.")
        })?;
        let limit = q.limit.unwrap_or(DEFAULT_LIMIT);
        if !(1..=MAX_LIMIT).contains(&limit) {
            return Err(AppError::unprocessable(
                "The parameter 'limit' must be between 1 and 200.",
            ));
        }
        let after = q.after;
        let list = state
            .db
            .run(move |c| users::list_users(c, after, limit))
            .await?;
        let next = (list.len() as i64 == limit)
            .then(|| {
                list.last()
                    .map(|u| format!("/api/admin/users?after={}&limit={limit}", u.id))
            })
            .flatten();
        let body = serde_json::json!({ "users": list, "next": next });
        Ok((json_response(StatusCode::OK, &body), Touched::default()))
    })
    .await
}

/// `GET /api/admin/users/{id}`: the user with their access-change history (newest
/// first, with the reasons given).
pub async fn get_user(
    caller: AdminCaller,
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, AppError> {
    audited(&caller, AuditAction::Read, Some(Kind::User), async {
        let id = path_uuid(&path)?;
        let found = state
            .db
            .run(move |c| {
                let Some(mut user) = users::get_user(c, id)? else {
                    return Ok(None);
                };
                user.history = Some(users::history(c, id)?);
                Ok(Some(user))
            })
            .await?;
        let user = found.ok_or_else(user_not_found)?;
        Ok((
            json_response(StatusCode::OK, &user),
            Touched {
                resource_id: Some(id),
                ..Touched::default()
            },
        ))
    })
    .await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoleBody {
    role: String,
    reason: Option<String>,
}

/// `POST /api/admin/users/{id}/roles` `{role, reason}`
pub async fn grant_role(
    caller: AdminCaller,
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<String>,
    bytes: web::Bytes,
) -> Result<HttpResponse, AppError> {
    let kind = Some(Kind::RoleAssignment);
    audited(&caller, AuditAction::PermissionChange, kind, async {
        let id = path_uuid(&path)?;
        let b: RoleBody = body(&req, &bytes)?;
        let role = parse_role("role", &b.role)?;
        let reason = check_reason(b.reason.as_deref())?;
        let by = caller.0.user.id;
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
        let user = user_json(&state, id).await?;
        Ok((
            json_response(StatusCode::OK, &user),
            Touched {
                resource_id: Some(id),
                ..Touched::default()
            },
        ))
    })
    .await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReasonBody {
    reason: Option<String>,
}

/// A reason from the JSON body if there is one, else from `?reason=`.
fn reason_from(req: &HttpRequest, bytes: &[u8]) -> Result<String, AppError> {
    if !bytes.is_empty() {
        let b: ReasonBody = body(req, bytes)?;
        return check_reason(b.reason.as_deref());
    }
    let q = web::Query::<ReasonBody>::from_query(req.query_string())
        .map_err(|_| AppError::bad_request("Invalid query: only 'reason' is accepted."))?;
    check_reason(q.reason.as_deref())
}

/// `DELETE /api/admin/users/{id}/roles/{role}` with `{reason}` or `?reason=`
pub async fn revoke_role(
    caller: AdminCaller,
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<(String, String)>,
    bytes: web::Bytes,
) -> Result<HttpResponse, AppError> {
    let kind = Some(Kind::RoleAssignment);
    audited(&caller, AuditAction::PermissionChange, kind, async {
        let (id, role) = path.into_inner();
        let id = path_uuid(&id)?;
        let role = parse_role("role", &role)?;
        let reason = reason_from(&req, &bytes)?;
        if id == caller.0.user.id && role == Role::Admin {
            return Err(AppError::client(
                StatusCode::CONFLICT,
                "You cannot remove your own admin role; ask another administrator.",
            ));
        }
        user_json(&state, id).await?;
        let by = caller.0.user.id;
        let held = state
            .db
            .run(move |c| users::revoke_role(c, id, role, &reason, Some(by)))
            .await?;
        if !held {
            return Err(AppError::client(
                StatusCode::NOT_FOUND,
                "The user does not hold this role.",
            ));
        }
        let user = user_json(&state, id).await?;
        Ok((
            json_response(StatusCode::OK, &user),
            Touched {
                resource_id: Some(id),
                ..Touched::default()
            },
        ))
    })
    .await
}

async fn set_disabled(
    caller: AdminCaller,
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<String>,
    bytes: web::Bytes,
    disabled: bool,
) -> Result<HttpResponse, AppError> {
    audited(
        &caller,
        AuditAction::PermissionChange,
        Some(Kind::User),
        async {
            let id = path_uuid(&path)?;
            let b: ReasonBody = body(&req, &bytes)?;
            let reason = check_reason(b.reason.as_deref())?;
            if disabled && id == caller.0.user.id {
                return Err(AppError::client(
                    StatusCode::CONFLICT,
                    "You cannot disable your own account.",
                ));
            }
            user_json(&state, id).await?;
            let by = caller.0.user.id;
            state
                .db
                .run(move |c| users::set_disabled(c, id, disabled, &reason, Some(by)))
                .await?;
            let user = user_json(&state, id).await?;
            Ok((
                json_response(StatusCode::OK, &user),
                Touched {
                    resource_id: Some(id),
                    ..Touched::default()
                },
            ))
        },
    )
    .await
}

/// `POST /api/admin/users/{id}/disable` `{reason}`
pub async fn disable_user(
    caller: AdminCaller,
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<String>,
    bytes: web::Bytes,
) -> Result<HttpResponse, AppError> {
    set_disabled(caller, state, req, path, bytes, true).await
}

/// `POST /api/admin/users/{id}/enable` `{reason}`
pub async fn enable_user(
    caller: AdminCaller,
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<String>,
    bytes: web::Bytes,
) -> Result<HttpResponse, AppError> {
    set_disabled(caller, state, req, path, bytes, false).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FacilityRef {
    facility_id: Uuid,
}

/// `PUT /api/admin/users/{id}/facility` `{facility_id}`
pub async fn set_facility(
    caller: AdminCaller,
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<String>,
    bytes: web::Bytes,
) -> Result<HttpResponse, AppError> {
    audited(
        &caller,
        AuditAction::PermissionChange,
        Some(Kind::User),
        async {
            let id = path_uuid(&path)?;
            let b: FacilityRef = body(&req, &bytes)?;
            user_json(&state, id).await?;
            let facility = b.facility_id;
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
            let user = user_json(&state, id).await?;
            Ok((
                json_response(StatusCode::OK, &user),
                Touched {
                    resource_id: Some(id),
                    ..Touched::default()
                },
            ))
        },
    )
    .await
}

// ----------------------------------------------------------------------------------------
// Care teams

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CareTeamBody {
    patient_id: Uuid,
    user_id: Uuid,
    reason: Option<String>,
}

async fn care_team(
    caller: AdminCaller,
    state: web::Data<AppState>,
    req: HttpRequest,
    bytes: web::Bytes,
    add: bool,
) -> Result<HttpResponse, AppError> {
    let kind = Some(Kind::CareRelationship);
    audited(&caller, AuditAction::CareRelationshipChange, kind, async {
        let b: CareTeamBody = body(&req, &bytes)?;
        let reason = check_reason(b.reason.as_deref())?;
        let (patient, user, by) = (b.patient_id, b.user_id, caller.0.user.id);
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
        let status = if add {
            StatusCode::CREATED
        } else {
            StatusCode::OK
        };
        let body = serde_json::json!({ "patient_id": patient, "user_id": user, "member": add });
        Ok((
            json_response(status, &body),
            Touched {
                resource_id: Some(user),
                patients: vec![patient],
            },
        ))
    })
    .await
}

/// `POST /api/admin/care-teams` `{patient_id, user_id, reason}`
pub async fn add_care_team(
    caller: AdminCaller,
    state: web::Data<AppState>,
    req: HttpRequest,
    bytes: web::Bytes,
) -> Result<HttpResponse, AppError> {
    care_team(caller, state, req, bytes, true).await
}

/// `DELETE /api/admin/care-teams` `{patient_id, user_id, reason}`
pub async fn remove_care_team(
    caller: AdminCaller,
    state: web::Data<AppState>,
    req: HttpRequest,
    bytes: web::Bytes,
) -> Result<HttpResponse, AppError> {
    care_team(caller, state, req, bytes, false).await
}

// ----------------------------------------------------------------------------------------
// Facilities

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FacilityBody {
    name: String,
}

/// `POST /api/admin/facilities` `{name}`
pub async fn create_facility(
    caller: AdminCaller,
    state: web::Data<AppState>,
    req: HttpRequest,
    bytes: web::Bytes,
) -> Result<HttpResponse, AppError> {
    audited(&caller, AuditAction::Create, None, async {
        let b: FacilityBody = body(&req, &bytes)?;
        let name = b.name.trim().to_string();
        let n = name.chars().count();
        if !(1..=200).contains(&n) || name.chars().any(char::is_control) {
            return Err(AppError::unprocessable(
                "The field 'name' must be 1 to 200 characters without control characters.",
            ));
        }
        let stored = name.clone();
        let id = state
            .db
            .run(move |c| crate::db::phi::insert_facility(c, &stored))
            .await?;
        let body = serde_json::json!({ "id": id, "name": name });
        Ok((
            json_response(StatusCode::CREATED, &body),
            Touched::default(),
        ))
    })
    .await
}

/// `GET /api/admin/facilities`
pub async fn list_facilities(
    caller: AdminCaller,
    state: web::Data<AppState>,
) -> Result<HttpResponse, AppError> {
    audited(&caller, AuditAction::Search, None, async {
        let list = state.db.run(users::list_facilities).await?;
        let body = serde_json::json!({ "facilities": list });
        Ok((json_response(StatusCode::OK, &body), Touched::default()))
    })
    .await
}

// ----------------------------------------------------------------------------------------
// Service clients

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientBody {
    client_id: String,
    facility_id: Uuid,
    roles: Vec<String>,
    reason: Option<String>,
}

/// `POST /api/admin/clients` `{client_id, facility_id, roles[, reason]}`: a `service`
/// user keyed by (`auth.issuer`, client id), in the facility, with the given roles.
pub async fn create_client(
    caller: AdminCaller,
    state: web::Data<AppState>,
    req: HttpRequest,
    bytes: web::Bytes,
) -> Result<HttpResponse, AppError> {
    audited(&caller, AuditAction::PermissionChange, Some(Kind::Client), async {
        let b: ClientBody = body(&req, &bytes)?;
        if ClientId::parse(&b.client_id).is_err() {
            return Err(AppError::unprocessable(
                "The field 'client_id' must be 1 to 128 printable characters without spaces.",
            ));
        }
        if b.roles.is_empty() {
            return Err(AppError::unprocessable(
                "The field 'roles' must name at least one role.",
            ));
        }
        let mut roles = Vec::new();
        for r in &b.roles {
            let role = parse_role("roles", r)?;
            if NOT_FOR_CLIENTS.contains(&role) {
                return Err(AppError::unprocessable(
                    "The field 'roles' may not give a service client the admin, privacy_officer or patient role.",
                ));
            }
            roles.push(role);
        }
        let reason = match b.reason.as_deref() {
            Some(r) => check_reason(Some(r))?,
            None => "service client registered through the admin API".to_string(),
        };
        let issuer = state
            .tokens
            .as_ref()
            .map(|t| t.issuer().to_string())
            .ok_or(AppError::Unavailable)?;
        let (facility, client, by) = (b.facility_id, b.client_id, caller.0.user.id);
        let result = state
            .db
            .run(move |c| {
                c.build_transaction().run(|c| {
                    if !users::facility_exists(c, facility)? {
                        return Ok(Err(AppError::unprocessable(
                            "The field 'facility_id' does not name a known facility.",
                        )));
                    }
                    match users::kind_of(c, &issuer, &client)?.as_deref() {
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
                    let user = users::user_for(c, &issuer, &client, UserKind::Service)?;
                    users::set_facility(c, user.id, Some(facility))?;
                    for role in roles {
                        users::grant_role(c, user.id, role, &reason, Some(by))?;
                    }
                    Ok::<_, AppError>(Ok(user.id))
                })
            })
            .await?;
        let id = result?;
        let user = user_json(&state, id).await?;
        Ok((
            json_response(StatusCode::CREATED, &user),
            Touched {
                resource_id: Some(id),
                ..Touched::default()
            },
        ))
    })
    .await
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

    #[test]
    fn routes_classify_for_denials() {
        let (a, k) = classify(&Method::POST, "/api/admin/care-teams");
        assert_eq!(
            (a, k),
            (
                AuditAction::CareRelationshipChange,
                Some(Kind::CareRelationship)
            )
        );
        let (a, k) = classify(&Method::GET, "/api/admin/users");
        assert_eq!((a, k), (AuditAction::Search, Some(Kind::User)));
        let (a, k) = classify(&Method::GET, "/api/admin/users/x");
        assert_eq!((a, k), (AuditAction::Read, Some(Kind::User)));
        let (a, _) = classify(&Method::DELETE, "/api/admin/users/x/roles/admin");
        assert_eq!(a, AuditAction::PermissionChange);
    }
}
