//! The administration API under `/api/admin`: users and their roles, care relationships,
//! facilities and service clients. JSON in and out (bodies through the shared
//! [`JsonBody`] extractor); errors are `application/problem+json` (rendered by the edge).
//! Each change is "JSON → [`Op`] → [`op::run`]", the same operations the console and the
//! CLI perform.
//!
//! Who may call it is decided in ONE place: the [`AdminPrincipal`] extractor asks
//! [`crate::policy::decide_admin`] (the `admin` role from our database AND the `admin`
//! scope on the token). Handlers never look at roles. Every call — permitted, denied or
//! failed — is one audit event with internal ids only (no names, no reasons, no bodies):
//! the operation records it, a refused caller is recorded by [`AdminPrincipal`], and a call
//! refused before that (bad body or path) gets it from the audit guard — both with the
//! action the route table declares for the route.
//! The reasons are kept with the change itself, in the access-change history
//! ([`users::history`]).

use super::op::{self, Done, Op, Touched, audited, user_not_found};
use super::{DEFAULT_LIMIT, MAX_LIMIT};
use crate::access::{Pipeline, RouteAction, refusal};
use crate::audit::{AuditAction, ResourceType as Kind, What};
use crate::db::users;
use crate::domain::{FacilityId, PatientId, UserId};
use crate::error::AppError;
use crate::policy::Action;
use crate::state::AppState;
use crate::web::json::JsonBody;
use actix_web::dev::Payload;
use actix_web::http::StatusCode;
use actix_web::http::header::{CONTENT_LENGTH, TRANSFER_ENCODING};
use actix_web::{FromRequest, HttpRequest, HttpResponse, web};
use futures_util::future::LocalBoxFuture;
use serde::Deserialize;
use uuid::Uuid;

/// A caller the decision point admitted to the administration API.
pub struct AdminPrincipal(pub Pipeline);

/// The audit action and resource kind the route table declares for this admin route.
fn declared(req: &HttpRequest) -> (AuditAction, Option<Kind>) {
    match RouteAction::of(req) {
        Some(Action::Admin(a)) => {
            let what = crate::audit::What::from(a);
            (what.action, what.kind)
        }
        _ => (AuditAction::PermissionChange, None),
    }
}

impl FromRequest for AdminPrincipal {
    type Error = AppError;
    type Future = LocalBoxFuture<'static, Result<Self, AppError>>;

    fn from_request(req: &HttpRequest, payload: &mut Payload) -> Self::Future {
        let caller = Pipeline::from_request(req, payload);
        let (action, kind) = declared(req);
        Box::pin(async move {
            let caller = caller.await?;
            match caller.decide_admin() {
                Ok(()) => Ok(AdminPrincipal(caller)),
                Err(reason) => {
                    // Recorded here, with the route's declared action and the reason.
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

impl op::AdminActor for AdminPrincipal {
    fn user_id(&self) -> UserId {
        self.0.user.id
    }

    fn now(&self) -> chrono::DateTime<chrono::Utc> {
        self.0.state().clock.now()
    }

    fn allow_private_webhook_hosts(&self) -> bool {
        self.0.state().allow_private_webhook_hosts
    }

    fn keyring(&self) -> Option<std::sync::Arc<crate::crypto::Keyring>> {
        Some(self.0.state().keyring.clone())
    }

    async fn record(
        &self,
        action: AuditAction,
        resource: Option<(Kind, Option<Uuid>)>,
        patients: Vec<PatientId>,
        outcome: crate::audit::Outcome,
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

/// A JSON body, checked only after the caller was admitted: actix polls a handler's
/// extractors together and answers with the first error, so a bad body must not be able
/// to answer (400/415/422) before an unauthenticated or refused caller is (401/403).
type Body<T> = Result<JsonBody<T>, AppError>;

fn json_response(status: StatusCode, value: &impl serde::Serialize) -> HttpResponse {
    HttpResponse::build(status)
        .content_type("application/json")
        .body(serde_json::to_string(value).unwrap_or_else(|_| "{}".into()))
}

/// Whether the request announces a body (a non-zero length or a chunked one).
fn has_body(req: &HttpRequest) -> bool {
    let length = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    length.is_some_and(|n| n > 0) || req.headers().contains_key(TRANSFER_ENCODING)
}

fn path_user(text: &str) -> Result<UserId, AppError> {
    UserId::parse(text).ok_or_else(AppError::not_found)
}

/// Performs `op` for the caller (one audit event) and answers with what it produced.
async fn perform(
    caller: &AdminPrincipal,
    state: &AppState,
    op: Op,
    created: bool,
) -> Result<HttpResponse, AppError> {
    let issuer = state.tokens.as_ref().map(|t| t.issuer());
    let done = op::run(op, caller, &state.db, issuer).await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok(match done {
        Done::User(user) => json_response(status, &user),
        Done::CareTeam {
            patient,
            user,
            member,
        } => json_response(
            status,
            &serde_json::json!({ "patient_id": patient, "user_id": user, "member": member }),
        ),
        Done::Facility { id, name } => {
            json_response(status, &serde_json::json!({ "id": id, "name": name }))
        }
        Done::Nothing => HttpResponse::NoContent().finish(),
        // The one time a webhook signing secret is shown.
        Done::WebhookSecret { endpoint, secret } => json_response(
            status,
            &serde_json::json!({ "endpoint_id": endpoint, "secret": secret.expose() }),
        ),
        // Kept for a second administrator (separation of duties): not performed yet.
        Done::Pending(id) => json_response(
            StatusCode::ACCEPTED,
            &serde_json::json!({ "pending_change_id": id, "status": "pending" }),
        ),
        Done::Confidentiality { patient, level } => json_response(
            status,
            &serde_json::json!({ "patient_id": patient, "confidentiality": level.code() }),
        ),
        Done::GrantRevoked { grant } => json_response(
            status,
            &serde_json::json!({ "grant_id": grant, "status": "revoked" }),
        ),
        Done::Decided { change, approved } => json_response(
            status,
            &serde_json::json!({
                "pending_change_id": change,
                "status": if approved { "approved" } else { "denied" },
            }),
        ),
    })
}

// ----------------------------------------------------------------------------------------
// Users

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    after: Option<UserId>,
    limit: Option<i64>,
}

/// `GET /api/admin/users?after=<uuid>&limit=<1..200>`
pub async fn list_users(
    caller: AdminPrincipal,
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
    caller: AdminPrincipal,
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, AppError> {
    audited(&caller, AuditAction::Read, Some(Kind::User), async {
        let id = path_user(&path)?;
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
        Ok((json_response(StatusCode::OK, &user), Touched::user(id)))
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
    caller: AdminPrincipal,
    state: web::Data<AppState>,
    path: web::Path<String>,
    body: Body<RoleBody>,
) -> Result<HttpResponse, AppError> {
    let JsonBody(b) = body?;
    let op = Op::GrantRole {
        user: path_user(&path)?,
        role: b.role,
        reason: b.reason,
    };
    perform(&caller, &state, op, false).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReasonBody {
    reason: Option<String>,
}

/// `DELETE /api/admin/users/{id}/roles/{role}` with `{reason}` (a JSON body) or, without
/// a body, `?reason=`. A body that is not acceptable JSON is refused, never ignored.
pub async fn revoke_role(
    caller: AdminPrincipal,
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<(String, String)>,
    body: Option<JsonBody<ReasonBody>>,
) -> Result<HttpResponse, AppError> {
    let (id, role) = path.into_inner();
    let user = path_user(&id)?;
    let reason = match body {
        Some(JsonBody(b)) => b.reason,
        None if has_body(&req) => {
            // A body was sent but is not acceptable JSON: say so, do not ignore it.
            JsonBody::<ReasonBody>::extract(&req).await?;
            None
        }
        None => {
            web::Query::<ReasonBody>::from_query(req.query_string())
                .map_err(|_| AppError::bad_request("Invalid query: only 'reason' is accepted."))?
                .into_inner()
                .reason
        }
    };
    perform(
        &caller,
        &state,
        Op::RevokeRole { user, role, reason },
        false,
    )
    .await
}

/// `POST /api/admin/users/{id}/disable` `{reason}`
pub async fn disable_user(
    caller: AdminPrincipal,
    state: web::Data<AppState>,
    path: web::Path<String>,
    body: Body<ReasonBody>,
) -> Result<HttpResponse, AppError> {
    let JsonBody(b) = body?;
    let op = Op::Disable {
        user: path_user(&path)?,
        reason: b.reason,
    };
    perform(&caller, &state, op, false).await
}

/// `POST /api/admin/users/{id}/enable` `{reason}`
pub async fn enable_user(
    caller: AdminPrincipal,
    state: web::Data<AppState>,
    path: web::Path<String>,
    body: Body<ReasonBody>,
) -> Result<HttpResponse, AppError> {
    let JsonBody(b) = body?;
    let op = Op::Enable {
        user: path_user(&path)?,
        reason: b.reason,
    };
    perform(&caller, &state, op, false).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FacilityRef {
    facility_id: FacilityId,
    reason: Option<String>,
}

/// `PUT /api/admin/users/{id}/facility` `{facility_id, reason}`: moving a user changes
/// what they may see, so it takes a reason and is kept in the access-change history.
pub async fn set_facility(
    caller: AdminPrincipal,
    state: web::Data<AppState>,
    path: web::Path<String>,
    body: Body<FacilityRef>,
) -> Result<HttpResponse, AppError> {
    let JsonBody(b) = body?;
    let op = Op::SetFacility {
        user: path_user(&path)?,
        facility: b.facility_id,
        reason: b.reason,
    };
    perform(&caller, &state, op, false).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FamilyNameBody {
    family_name: Option<String>,
    #[serde(default)]
    clear: bool,
    reason: Option<String>,
}

/// `PUT /api/admin/users/{id}/family-name` `{family_name, reason}` or `{clear: true,
/// reason}`: the person's family name for the same-family-name detector, kept as its
/// blind index only (the name is turned into it here and not kept).
pub async fn set_family_name(
    caller: AdminPrincipal,
    state: web::Data<AppState>,
    path: web::Path<String>,
    body: Body<FamilyNameBody>,
) -> Result<HttpResponse, AppError> {
    let JsonBody(b) = body?;
    let family_index = match (b.family_name, b.clear) {
        (Some(name), false) => Some(op::FamilyIndex::of(&state.keyring, &name)?),
        (None, true) => None,
        _ => {
            return Err(AppError::unprocessable(
                "Give either 'family_name' (to set it) or 'clear': true (to clear it).",
            ));
        }
    };
    let op = Op::SetFamilyName {
        user: path_user(&path)?,
        family_index,
        reason: b.reason,
    };
    perform(&caller, &state, op, false).await
}

// ----------------------------------------------------------------------------------------
// Patients: confidentiality; break-glass grants

/// `GET /api/admin/patients/{id}/confidentiality`: the record's level and its history
/// (newest 50 changes, with their reasons: the patient-side access-change history).
pub async fn get_confidentiality(
    caller: AdminPrincipal,
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, AppError> {
    audited(&caller, AuditAction::Read, Some(Kind::Patient), async {
        let patient = PatientId::parse(&path).ok_or_else(AppError::not_found)?;
        let found = state
            .db
            .run(move |c| {
                use crate::db::break_glass as bg;
                let Some(level) = bg::confidentiality_of(c, patient)? else {
                    return Ok(None);
                };
                Ok(Some((level, bg::confidentiality_history(c, patient, 50)?)))
            })
            .await?;
        let (level, history) = found
            .ok_or_else(|| AppError::client(StatusCode::NOT_FOUND, "The patient was not found."))?;
        let body = serde_json::json!({
            "patient_id": patient,
            "confidentiality": level.code(),
            "history": history,
        });
        let touched = Touched {
            resource_id: Some(patient.as_uuid()),
            patients: vec![patient],
            ..Touched::default()
        };
        Ok((json_response(StatusCode::OK, &body), touched))
    })
    .await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfidentialityBody {
    confidentiality: String,
    reason: Option<String>,
}

/// `PUT /api/admin/patients/{id}/confidentiality` `{confidentiality: "N"|"R"|"V", reason}`:
/// who may see the record changes, so it takes a reason, kept in the history
/// (`confidentiality_changes`).
pub async fn set_confidentiality(
    caller: AdminPrincipal,
    state: web::Data<AppState>,
    path: web::Path<String>,
    body: Body<ConfidentialityBody>,
) -> Result<HttpResponse, AppError> {
    let JsonBody(b) = body?;
    let patient = PatientId::parse(&path).ok_or_else(AppError::not_found)?;
    let op = Op::SetConfidentiality {
        patient,
        level: b.confidentiality,
        reason: b.reason,
    };
    perform(&caller, &state, op, false).await
}

/// `POST /api/admin/break-glass/{id}/revoke` `{reason}`: ends a grant early.
pub async fn revoke_grant(
    caller: AdminPrincipal,
    state: web::Data<AppState>,
    path: web::Path<String>,
    body: Body<ReasonBody>,
) -> Result<HttpResponse, AppError> {
    let JsonBody(b) = body?;
    let grant = crate::domain::GrantId::parse(&path).ok_or_else(AppError::not_found)?;
    let op = Op::RevokeBreakGlass {
        grant,
        reason: b.reason,
    };
    perform(&caller, &state, op, false).await
}

// ----------------------------------------------------------------------------------------
// Webhook endpoints

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookBody {
    url: String,
}

/// `POST /api/admin/webhooks` `{url}`: registers an endpoint; the answer carries its
/// signing secret, the one time it is shown.
pub async fn create_webhook_endpoint(
    caller: AdminPrincipal,
    state: web::Data<AppState>,
    body: Body<WebhookBody>,
) -> Result<HttpResponse, AppError> {
    let JsonBody(b) = body?;
    perform(
        &caller,
        &state,
        Op::CreateWebhookEndpoint { url: b.url },
        true,
    )
    .await
}

/// `POST /api/admin/webhooks/{id}/disable` (no content) or `…/rotate` (the new secret,
/// shown once).
pub async fn change_webhook_endpoint(
    caller: AdminPrincipal,
    state: web::Data<AppState>,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, AppError> {
    let (id, action) = path.into_inner();
    let endpoint = crate::domain::WebhookEndpointId::parse(&id).ok_or_else(AppError::not_found)?;
    let op = match action.as_str() {
        "disable" => Op::DisableWebhookEndpoint { endpoint },
        "rotate" => Op::RotateWebhookSecret { endpoint },
        _ => return Err(AppError::not_found()),
    };
    perform(&caller, &state, op, false).await
}

/// `POST /api/admin/webhooks/deliveries/{id}/redeliver`: queues a delivery again.
pub async fn redeliver_webhook(
    caller: AdminPrincipal,
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, AppError> {
    let delivery =
        crate::domain::WebhookDeliveryId::parse(&path).ok_or_else(AppError::not_found)?;
    perform(&caller, &state, Op::RedeliverWebhook { delivery }, false).await
}

// ----------------------------------------------------------------------------------------
// Care teams

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CareTeamBody {
    patient_id: PatientId,
    user_id: UserId,
    reason: Option<String>,
}

/// `POST /api/admin/care-teams` `{patient_id, user_id, reason}`
pub async fn add_care_team(
    caller: AdminPrincipal,
    state: web::Data<AppState>,
    body: Body<CareTeamBody>,
) -> Result<HttpResponse, AppError> {
    let JsonBody(b) = body?;
    let op = Op::AddCareTeam {
        user: b.user_id,
        patient: b.patient_id,
        reason: b.reason,
    };
    perform(&caller, &state, op, true).await
}

/// `DELETE /api/admin/care-teams` `{patient_id, user_id, reason}`
pub async fn remove_care_team(
    caller: AdminPrincipal,
    state: web::Data<AppState>,
    body: Body<CareTeamBody>,
) -> Result<HttpResponse, AppError> {
    let JsonBody(b) = body?;
    let op = Op::RemoveCareTeam {
        user: b.user_id,
        patient: b.patient_id,
        reason: b.reason,
    };
    perform(&caller, &state, op, false).await
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
    caller: AdminPrincipal,
    state: web::Data<AppState>,
    body: Body<FacilityBody>,
) -> Result<HttpResponse, AppError> {
    let JsonBody(b) = body?;
    perform(&caller, &state, Op::CreateFacility { name: b.name }, true).await
}

/// `GET /api/admin/facilities`
pub async fn list_facilities(
    caller: AdminPrincipal,
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
    facility_id: FacilityId,
    roles: Vec<String>,
    reason: Option<String>,
}

/// `POST /api/admin/clients` `{client_id, facility_id, roles[, reason]}`: a `service`
/// user keyed by (`auth.issuer`, client id), in the facility, with the given roles.
pub async fn create_client(
    caller: AdminPrincipal,
    state: web::Data<AppState>,
    body: Body<ClientBody>,
) -> Result<HttpResponse, AppError> {
    let JsonBody(b) = body?;
    let op = Op::CreateClient {
        client_id: b.client_id,
        facility: b.facility_id,
        roles: b.roles,
        reason: b.reason,
    };
    perform(&caller, &state, op, true).await
}
