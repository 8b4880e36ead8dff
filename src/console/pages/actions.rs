//! Console changes: every POST form of the administration pages becomes one [`Op`],
//! checked (session, CSRF token and Origin, admin role), held for a step-up when it is
//! sensitive and the last TOTP check is stale ([`super::super::stepup`]), then performed
//! through the same operations as the JSON API, each writing its audit event.

use super::{ConsoleActor, require_admin};
use crate::admin::ops::{self, AdminActor, Touched, audited};
use crate::audit::{AuditAction, ResourceType as Kind};
use crate::console::auth::{self, Gate, see_other};
use crate::console::{session, stepup, totp};
use crate::error::AppError;
use crate::policy::Role;
use crate::state::AppState;
use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// A submitted form: its fields in order (a name may repeat, e.g. `roles`).
pub struct Form(Vec<(String, String)>);

impl Form {
    pub fn parse(body: &[u8]) -> Form {
        Form(
            url::form_urlencoded::parse(body)
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect(),
        )
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    fn owned(&self, name: &str) -> Option<String> {
        self.get(name).map(str::to_string)
    }

    fn all(&self, name: &str) -> Vec<String> {
        self.0
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .collect()
    }

    fn uuid(&self, name: &'static str, what: &'static str) -> Result<Uuid, AppError> {
        self.get(name)
            .and_then(|v| Uuid::parse_str(v.trim()).ok())
            .ok_or_else(|| {
                AppError::bad_request(format!("The field '{name}' must be {what} (an id)."))
            })
    }
}

/// One change an administrator asked for, with its form data. Stored as JSON while it
/// waits for a step-up, so it is performed later exactly as submitted.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Op {
    GrantRole {
        user: Uuid,
        role: String,
        reason: Option<String>,
    },
    RevokeRole {
        user: Uuid,
        role: String,
        reason: Option<String>,
    },
    AddCareTeam {
        user: Uuid,
        patient: Uuid,
        reason: Option<String>,
    },
    RemoveCareTeam {
        user: Uuid,
        patient: Uuid,
        reason: Option<String>,
    },
    SetFacility {
        user: Uuid,
        facility: Uuid,
    },
    Disable {
        user: Uuid,
        reason: Option<String>,
    },
    Enable {
        user: Uuid,
        reason: Option<String>,
    },
    RevokeSessions {
        user: Uuid,
    },
    ResetTotp {
        user: Uuid,
    },
    CreateClient {
        client_id: String,
        facility: Uuid,
        roles: Vec<String>,
        reason: Option<String>,
    },
    DisableClient {
        user: Uuid,
        reason: Option<String>,
    },
}

impl Op {
    /// The form posted to `/console/users/{id}/{action}`.
    pub fn for_user(user: Uuid, action: &str, f: &Form) -> Result<Op, AppError> {
        let reason = f.owned("reason");
        let role = || f.owned("role").unwrap_or_default();
        Ok(match action {
            "grant-role" => Op::GrantRole {
                user,
                role: role(),
                reason,
            },
            "revoke-role" => Op::RevokeRole {
                user,
                role: role(),
                reason,
            },
            "add-care-team" => Op::AddCareTeam {
                user,
                patient: f.uuid("patient_id", "a patient")?,
                reason,
            },
            "remove-care-team" => Op::RemoveCareTeam {
                user,
                patient: f.uuid("patient_id", "a patient")?,
                reason,
            },
            "facility" => Op::SetFacility {
                user,
                facility: f.uuid("facility_id", "a facility")?,
            },
            "disable" => Op::Disable { user, reason },
            "enable" => Op::Enable { user, reason },
            "revoke-sessions" => Op::RevokeSessions { user },
            "reset-totp" => Op::ResetTotp { user },
            _ => return Err(AppError::not_found()),
        })
    }

    /// Sensitive changes need a recent TOTP check (issue 7, item 4).
    pub fn needs_step_up(&self) -> bool {
        !matches!(self, Op::SetFacility { .. })
    }

    /// The audit action and resource kind of this change.
    pub fn audit(&self) -> (AuditAction, Kind) {
        match self {
            Op::GrantRole { .. } | Op::RevokeRole { .. } => {
                (AuditAction::PermissionChange, Kind::RoleAssignment)
            }
            Op::AddCareTeam { .. } | Op::RemoveCareTeam { .. } => {
                (AuditAction::CareRelationshipChange, Kind::CareRelationship)
            }
            Op::SetFacility { .. }
            | Op::Disable { .. }
            | Op::Enable { .. }
            | Op::ResetTotp { .. } => (AuditAction::PermissionChange, Kind::User),
            Op::RevokeSessions { .. } => (AuditAction::SessionRevoked, Kind::User),
            Op::CreateClient { .. } => (AuditAction::PermissionChange, Kind::Client),
            Op::DisableClient { .. } => (AuditAction::ClientRevoked, Kind::Client),
        }
    }

    /// What the step-up page says is waiting (ids and role codes only, never free text).
    pub fn describe(&self) -> String {
        let role = |r: &str| Role::parse(r).map(Role::as_str).unwrap_or("(unknown role)");
        match self {
            Op::GrantRole { user, role: r, .. } => {
                format!("Grant the role {} to user {user}", role(r))
            }
            Op::RevokeRole { user, role: r, .. } => {
                format!("Remove the role {} from user {user}", role(r))
            }
            Op::AddCareTeam { user, patient, .. } => {
                format!("Add user {user} to the care team of patient {patient}")
            }
            Op::RemoveCareTeam { user, patient, .. } => {
                format!("Remove user {user} from the care team of patient {patient}")
            }
            Op::SetFacility { user, .. } => format!("Change the facility of user {user}"),
            Op::Disable { user, .. } => format!("Disable user {user}"),
            Op::Enable { user, .. } => format!("Enable user {user}"),
            Op::RevokeSessions { user } => format!("End all console sessions of user {user}"),
            Op::ResetTotp { user } => format!("Reset the authenticator of user {user}"),
            Op::CreateClient { .. } => "Register a new service client".to_string(),
            Op::DisableClient { user, .. } => format!("Disable service client {user}"),
        }
    }
}

/// Client errors of a form are 400 (the API says 422 for the same JSON checks).
fn form_error(e: AppError) -> AppError {
    match e {
        AppError::Client { status, message } if status == StatusCode::UNPROCESSABLE_ENTITY => {
            AppError::Client {
                status: StatusCode::BAD_REQUEST,
                message,
            }
        }
        other => other,
    }
}

fn done(path: String, code: &str) -> HttpResponse {
    see_other(&format!("{path}?done={code}"))
}

fn user_path(id: Uuid) -> String {
    format!("/console/users/{id}")
}

/// Performs a checked change through the shared operations; one audit event each.
pub async fn perform(
    state: &AppState,
    who: &ConsoleActor,
    op: Op,
) -> Result<HttpResponse, AppError> {
    let by = who.user_id();
    let (action, kind) = op.audit();
    let kind = Some(kind);
    let result = match op {
        Op::GrantRole { user, role, reason } => {
            let work = ops::grant_role(state, by, user, &role, reason.as_deref());
            audited(who, action, kind, work).await?;
            done(user_path(user), "role-granted")
        }
        Op::RevokeRole { user, role, reason } => {
            let work = ops::revoke_role(state, by, user, &role, reason.as_deref());
            audited(who, action, kind, work).await?;
            done(user_path(user), "role-revoked")
        }
        Op::AddCareTeam {
            user,
            patient,
            reason,
        } => {
            let work = ops::care_team(state, by, patient, user, reason.as_deref(), true);
            audited(who, action, kind, work).await?;
            done(user_path(user), "care-team-added")
        }
        Op::RemoveCareTeam {
            user,
            patient,
            reason,
        } => {
            let work = ops::care_team(state, by, patient, user, reason.as_deref(), false);
            audited(who, action, kind, work).await?;
            done(user_path(user), "care-team-removed")
        }
        Op::SetFacility { user, facility } => {
            audited(who, action, kind, ops::set_facility(state, user, facility)).await?;
            done(user_path(user), "facility-set")
        }
        Op::Disable { user, reason } => {
            let work = ops::set_disabled(state, by, user, true, reason.as_deref());
            audited(who, action, kind, work).await?;
            done(user_path(user), "disabled")
        }
        Op::Enable { user, reason } => {
            let work = ops::set_disabled(state, by, user, false, reason.as_deref());
            audited(who, action, kind, work).await?;
            done(user_path(user), "enabled")
        }
        Op::RevokeSessions { user } => {
            let work = async {
                ops::get_user(state, user).await?;
                state
                    .db
                    .run(move |c| session::destroy_all_of_user(c, user))
                    .await?;
                Ok(((), Touched::user(user)))
            };
            audited(who, action, kind, work).await?;
            done(user_path(user), "sessions-revoked")
        }
        Op::ResetTotp { user } => {
            let work = async {
                ops::get_user(state, user).await?;
                state
                    .db
                    .run(move |c| {
                        use diesel::Connection;
                        c.transaction(|c| {
                            totp::reset(c, user)?;
                            // Sessions that passed the old authenticator end with it.
                            session::destroy_all_of_user(c, user)?;
                            Ok::<_, AppError>(())
                        })
                    })
                    .await?;
                Ok(((), Touched::user(user)))
            };
            audited(who, action, kind, work).await?;
            done(user_path(user), "totp-reset")
        }
        Op::CreateClient {
            client_id,
            facility,
            roles,
            reason,
        } => {
            let work =
                ops::create_client(state, by, client_id, facility, &roles, reason.as_deref());
            audited(who, action, kind, work).await?;
            done("/console/clients".into(), "client-created")
        }
        Op::DisableClient { user, reason } => {
            let work = async {
                let target = ops::get_user(state, user).await?;
                if target.kind != "service" {
                    return Err(AppError::client(
                        StatusCode::NOT_FOUND,
                        "The service client was not found.",
                    ));
                }
                ops::set_disabled(state, by, user, true, reason.as_deref()).await
            };
            audited(who, action, kind, work).await?;
            done("/console/clients".into(), "client-disabled")
        }
    };
    Ok(result)
}

fn session_ended() -> AppError {
    AppError::client(
        StatusCode::FORBIDDEN,
        "The form could not be accepted: you are not signed in (or your session ended). Sign in again.",
    )
}

/// The path every console change takes: session, CSRF token and Origin, admin role, the
/// form as an [`Op`], then step-up if it is sensitive and the last code is stale.
async fn submit(
    req: &HttpRequest,
    state: &web::Data<AppState>,
    ctx: crate::audit::AuditContext,
    body: &[u8],
    build: impl FnOnce(&Form) -> Result<Op, AppError>,
) -> Result<HttpResponse, AppError> {
    let me = match auth::signed_in(req, state).await? {
        Gate::Redirect(_) => return Err(session_ended()),
        Gate::Pass(me) => me,
    };
    let form = Form::parse(body);
    auth::check_post(req, &me.session, form.get("csrf_token"))?;
    require_admin(&me)?;
    let op = build(&form).map_err(form_error)?;
    let who = ConsoleActor::new(state, ctx, &me);
    if op.needs_step_up() && !stepup::is_fresh(state, &me.session).await? {
        return stepup::ask(state, &who, &me, op).await;
    }
    perform(state, &who, op).await.map_err(form_error)
}

/// Errors of a change performed after a step-up, as 400 where the API says 422.
pub async fn perform_form(
    state: &AppState,
    who: &ConsoleActor,
    op: Op,
) -> Result<HttpResponse, AppError> {
    perform(state, who, op).await.map_err(form_error)
}

/// POST /console/users/{id}/{action}: grant-role, revoke-role, add-care-team,
/// remove-care-team, facility, disable, enable, revoke-sessions, reset-totp.
pub async fn user_action(
    req: HttpRequest,
    ctx: crate::audit::AuditContext,
    state: web::Data<AppState>,
    path: web::Path<(String, String)>,
    body: web::Bytes,
) -> Result<HttpResponse, AppError> {
    let (id, action) = path.into_inner();
    submit(&req, &state, ctx, &body, |f| {
        let id = Uuid::parse_str(&id).map_err(|_| ops::user_not_found())?;
        Op::for_user(id, &action, f)
    })
    .await
}

/// POST /console/clients: registers a service client.
pub async fn create_client(
    req: HttpRequest,
    ctx: crate::audit::AuditContext,
    state: web::Data<AppState>,
    body: web::Bytes,
) -> Result<HttpResponse, AppError> {
    submit(&req, &state, ctx, &body, |f| {
        Ok(Op::CreateClient {
            client_id: f.owned("client_id").unwrap_or_default().trim().to_string(),
            facility: f.uuid("facility_id", "a facility")?,
            roles: f.all("roles"),
            reason: f.owned("reason"),
        })
    })
    .await
}

/// POST /console/clients/{id}/disable: disables a service client.
pub async fn disable_client(
    req: HttpRequest,
    ctx: crate::audit::AuditContext,
    state: web::Data<AppState>,
    path: web::Path<String>,
    body: web::Bytes,
) -> Result<HttpResponse, AppError> {
    submit(&req, &state, ctx, &body, |f| {
        let user = Uuid::parse_str(&path).map_err(|_| AppError::not_found())?;
        Ok(Op::DisableClient {
            user,
            reason: f.owned("reason"),
        })
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms_become_ops_and_survive_storage() {
        let user = Uuid::new_v4();
        let f = Form::parse(b"csrf_token=t&role=clinician&reason=new+hire");
        let op = Op::for_user(user, "grant-role", &f).unwrap();
        assert_eq!(
            op,
            Op::GrantRole {
                user,
                role: "clinician".into(),
                reason: Some("new hire".into())
            }
        );
        let json = serde_json::to_value(&op).unwrap();
        assert_eq!(serde_json::from_value::<Op>(json).unwrap(), op);
        assert!(op.needs_step_up());
        assert!(Op::for_user(user, "nope", &f).is_err());
    }

    #[test]
    fn descriptions_never_echo_free_text() {
        let op = Op::GrantRole {
            user: Uuid::nil(),
            role: "<img>".into(),
            reason: Some("<b>".into()),
        };
        let d = op.describe();
        assert!(!d.contains('<'), "{d}");
    }

    #[test]
    fn unprocessable_becomes_bad_request_for_forms() {
        let e = form_error(AppError::unprocessable("The field 'reason' is required."));
        assert!(matches!(e, AppError::Client { status, .. } if status == StatusCode::BAD_REQUEST));
    }
}
