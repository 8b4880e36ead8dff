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

pub mod ops;

pub use ops::check_reason;
use ops::{Touched, audited};

use crate::access::{Pipeline, refusal};
use crate::audit::{AuditAction, Outcome, ResourceType as Kind, What};
use crate::db::users;
use crate::error::AppError;
use crate::state::AppState;
use crate::web::json::{self, JsonLimits};
use actix_web::dev::Payload;
use actix_web::http::header::CONTENT_TYPE;
use actix_web::http::{Method, StatusCode};
use actix_web::{FromRequest, HttpRequest, HttpResponse, web};
use futures_util::future::LocalBoxFuture;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use uuid::Uuid;

/// Shortest and longest accepted `reason` (characters, after trimming).
pub const REASON_MIN: usize = 3;
pub const REASON_MAX: usize = 500;
/// Page size of `GET /api/admin/users`.
pub const DEFAULT_LIMIT: i64 = 50;
pub const MAX_LIMIT: i64 = 200;

/// A caller the decision point admitted to the administration API.
pub struct AdminCaller(pub Pipeline);

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
        let caller = Pipeline::from_request(req, payload);
        let (action, kind) = classify(req.method(), req.path());
        Box::pin(async move {
            let caller = caller.await?;
            match caller.decide_admin() {
                Ok(()) => Ok(AdminCaller(caller)),
                Err(reason) => {
                    let mut what = What::new(action);
                    if let Some(kind) = kind {
                        what = what.on(kind);
                    }
                    caller.recorder.deny(what, [], reason).await?;
                    Err(refusal::on_admin(reason))
                }
            }
        })
    }
}

impl ops::AdminActor for AdminCaller {
    fn user_id(&self) -> Uuid {
        self.0.user.id
    }

    async fn record(
        &self,
        action: AuditAction,
        resource: Option<(Kind, Option<Uuid>)>,
        patients: Vec<Uuid>,
        outcome: Outcome,
    ) -> Result<(), AppError> {
        let mut what = What::new(action);
        if let Some((kind, id)) = resource {
            what = what.on(kind);
            if let Some(id) = id {
                what = what.id(id);
            }
        }
        let recorder = &self.0.recorder;
        recorder
            .record(recorder.event(what, patients, outcome).build())
            .await
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

fn json_response(status: StatusCode, value: &impl serde::Serialize) -> HttpResponse {
    HttpResponse::build(status)
        .content_type("application/json")
        .body(serde_json::to_string(value).unwrap_or_else(|_| "{}".into()))
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
        let user = found.ok_or_else(ops::user_not_found)?;
        Ok(user_ok(user, Touched::user(id)))
    })
    .await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoleBody {
    role: String,
    reason: Option<String>,
}

fn user_ok(user: users::UserSummary, touched: Touched) -> (HttpResponse, Touched) {
    (json_response(StatusCode::OK, &user), touched)
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
        let by = caller.0.user.id;
        let (user, touched) = ops::grant_role(&state, by, id, &b.role, b.reason.as_deref()).await?;
        Ok(user_ok(user, touched))
    })
    .await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReasonBody {
    reason: Option<String>,
}

/// A reason from the JSON body if there is one, else from `?reason=`.
fn reason_from(req: &HttpRequest, bytes: &[u8]) -> Result<Option<String>, AppError> {
    if !bytes.is_empty() {
        let b: ReasonBody = body(req, bytes)?;
        return Ok(b.reason);
    }
    let q = web::Query::<ReasonBody>::from_query(req.query_string())
        .map_err(|_| AppError::bad_request("Invalid query: only 'reason' is accepted."))?;
    Ok(q.into_inner().reason)
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
        let reason = reason_from(&req, &bytes)?;
        let by = caller.0.user.id;
        let (user, touched) = ops::revoke_role(&state, by, id, &role, reason.as_deref()).await?;
        Ok(user_ok(user, touched))
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
    let kind = Some(Kind::User);
    audited(&caller, AuditAction::PermissionChange, kind, async {
        let id = path_uuid(&path)?;
        let b: ReasonBody = body(&req, &bytes)?;
        let by = caller.0.user.id;
        let (user, touched) =
            ops::set_disabled(&state, by, id, disabled, b.reason.as_deref()).await?;
        Ok(user_ok(user, touched))
    })
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
    let kind = Some(Kind::User);
    audited(&caller, AuditAction::PermissionChange, kind, async {
        let id = path_uuid(&path)?;
        let b: FacilityRef = body(&req, &bytes)?;
        let (user, touched) = ops::set_facility(&state, id, b.facility_id).await?;
        Ok(user_ok(user, touched))
    })
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
        let (patient, user, by) = (b.patient_id, b.user_id, caller.0.user.id);
        let ((), touched) =
            ops::care_team(&state, by, patient, user, b.reason.as_deref(), add).await?;
        let status = if add {
            StatusCode::CREATED
        } else {
            StatusCode::OK
        };
        let body = serde_json::json!({ "patient_id": patient, "user_id": user, "member": add });
        Ok((json_response(status, &body), touched))
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
    let kind = Some(Kind::Client);
    audited(&caller, AuditAction::PermissionChange, kind, async {
        let b: ClientBody = body(&req, &bytes)?;
        let by = caller.0.user.id;
        let (user, touched) = ops::create_client(
            &state,
            by,
            b.client_id,
            b.facility_id,
            &b.roles,
            b.reason.as_deref(),
        )
        .await?;
        Ok((json_response(StatusCode::CREATED, &user), touched))
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

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
