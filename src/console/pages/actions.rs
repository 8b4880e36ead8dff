//! Console changes: every POST form of the administration pages becomes one [`Op`],
//! checked (an administrator's session by [`AdminForm`], then the CSRF token and Origin),
//! held for a step-up when it is sensitive and the last TOTP check is stale
//! ([`crate::console::stepup`]), then performed through the same operations as the JSON
//! API and the CLI, each writing its audit event.

use crate::admin::op::{self, Done, Op};
use crate::console::gate::{AdminForm, Console, check_post, see_other};
use crate::console::stepup;
use crate::domain::{FacilityId, PatientId, PendingChangeId, UserId};
use crate::error::AppError;
use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
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

/// The console's form for an [`Op`] posted to `/console/users/{id}/{action}`.
pub fn user_op(user: UserId, action: &str, f: &Form) -> Result<Op, AppError> {
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
            patient: PatientId::from(f.uuid("patient_id", "a patient")?),
            reason,
        },
        "remove-care-team" => Op::RemoveCareTeam {
            user,
            patient: PatientId::from(f.uuid("patient_id", "a patient")?),
            reason,
        },
        "facility" => Op::SetFacility {
            user,
            facility: FacilityId::from(f.uuid("facility_id", "a facility")?),
            reason,
        },
        "disable" => Op::Disable { user, reason },
        "enable" => Op::Enable { user, reason },
        "revoke-sessions" => Op::RevokeSessions { user },
        "reset-totp" => Op::ResetTotp { user },
        _ => return Err(AppError::not_found()),
    })
}

/// The approval queue page.
const APPROVALS: &str = "/console/approvals";

/// The webhooks page.
const WEBHOOKS: &str = "/console/webhooks";

/// Where the console goes after a change, and the confirmation code it shows there.
fn landing(op: &Op) -> (String, &'static str) {
    let user = |id: &UserId| format!("/console/users/{id}");
    match op {
        Op::GrantRole { user: u, .. } => (user(u), "role-granted"),
        Op::RevokeRole { user: u, .. } => (user(u), "role-revoked"),
        Op::AddCareTeam { user: u, .. } => (user(u), "care-team-added"),
        Op::RemoveCareTeam { user: u, .. } => (user(u), "care-team-removed"),
        Op::SetFacility { user: u, .. } => (user(u), "facility-set"),
        Op::Disable { user: u, .. } => (user(u), "disabled"),
        Op::Enable { user: u, .. } => (user(u), "enabled"),
        Op::RevokeSessions { user: u } => (user(u), "sessions-revoked"),
        Op::ResetTotp { user: u } => (user(u), "totp-reset"),
        Op::CreateClient { .. } => ("/console/clients".into(), "client-created"),
        Op::DisableClient { .. } => ("/console/clients".into(), "client-disabled"),
        Op::CreateFacility { .. } => ("/console".into(), ""),
        Op::ApproveChange { .. } => (APPROVALS.into(), "change-approved"),
        Op::DenyChange { .. } => (APPROVALS.into(), "change-denied"),
        Op::SetConfidentiality { .. } => ("/console".into(), "confidentiality-set"),
        Op::RevokeBreakGlass { .. } => ("/console/break-glass".into(), "grant-revoked"),
        Op::CreateWebhookEndpoint { .. } | Op::RotateWebhookSecret { .. } => (WEBHOOKS.into(), ""),
        Op::DisableWebhookEndpoint { .. } => (WEBHOOKS.into(), "webhook-disabled"),
        Op::RedeliverWebhook { .. } => (WEBHOOKS.into(), "webhook-redelivered"),
        Op::SetFamilyName {
            user: u,
            family_index: Some(_),
            ..
        } => (user(u), "family-name-set"),
        Op::SetFamilyName { user: u, .. } => (user(u), "family-name-cleared"),
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

/// Performs a checked change through the shared operations (one audit event each) and
/// sends the browser back to the page it came from with a confirmation.
async fn perform(page: &Console, op: Op) -> Result<HttpResponse, AppError> {
    let (path, code) = landing(&op);
    let state = &page.state;
    let issuer = state.tokens.as_ref().map(|t| t.issuer());
    let (path, code) = match op::run(op, page, &state.db, issuer).await? {
        // Kept for a second administrator: the queue shows it waiting.
        Done::Pending(_) => (APPROVALS.to_string(), "change-requested"),
        // A new signing secret: shown once, on this answer (never behind a redirect).
        Done::WebhookSecret { endpoint, secret } => {
            return super::webhooks::secret_page(page, endpoint, secret);
        }
        _ => (path, code),
    };
    Ok(see_other(&format!("{path}?done={code}")))
}

/// The path every console change takes: an administrator's form ([`AdminForm`]), its
/// CSRF token and Origin, the form as an [`Op`], then a step-up if it is sensitive and
/// the last code is stale.
pub(super) async fn submit(
    req: &HttpRequest,
    page: AdminForm,
    body: &[u8],
    build: impl FnOnce(&Form) -> Result<Op, AppError>,
) -> Result<HttpResponse, AppError> {
    let page = page.0;
    let form = Form::parse(body);
    check_post(req, &page.me.session, form.get("csrf_token"))?;
    let op = build(&form).map_err(form_error)?;
    // A change to one's own access (or a decision on one's own request) is refused
    // before any code is asked for.
    op::check_separation(&op, &page, &page.state.db).await?;
    if op.needs_fresh_code()
        || (op.needs_step_up()
            && !stepup::is_fresh(&page.state, &page.settings, &page.me.session).await?)
    {
        return stepup::ask(req, page, op).await;
    }
    perform(&page, op).await.map_err(form_error)
}

/// Errors of a change performed after a step-up, as 400 where the API says 422.
pub async fn perform_form(page: &Console, op: Op) -> Result<HttpResponse, AppError> {
    perform(page, op).await.map_err(form_error)
}

/// POST /console/users/{id}/{action}: grant-role, revoke-role, add-care-team,
/// remove-care-team, facility, disable, enable, revoke-sessions, reset-totp,
/// family-name, clear-family-name.
pub async fn user_action(
    req: HttpRequest,
    page: AdminForm,
    path: web::Path<(String, String)>,
    body: web::Bytes,
) -> Result<HttpResponse, AppError> {
    let (id, action) = path.into_inner();
    let keyring = page.0.state.keyring.clone();
    submit(&req, page, &body, |f| {
        let id = UserId::parse(&id).ok_or_else(op::user_not_found)?;
        // The name becomes its blind index here: the operation (kept while a step-up
        // is asked for) never holds it.
        match action.as_str() {
            "family-name" => Ok(Op::SetFamilyName {
                user: id,
                family_index: Some(op::FamilyIndex::of(
                    &keyring,
                    f.get("family_name").unwrap_or_default(),
                )?),
                reason: f.owned("reason"),
            }),
            "clear-family-name" => Ok(Op::SetFamilyName {
                user: id,
                family_index: None,
                reason: f.owned("reason"),
            }),
            _ => user_op(id, &action, f),
        }
    })
    .await
}

/// POST /console/clients: registers a service client.
pub async fn create_client(
    req: HttpRequest,
    page: AdminForm,
    body: web::Bytes,
) -> Result<HttpResponse, AppError> {
    submit(&req, page, &body, |f| {
        Ok(Op::CreateClient {
            client_id: f.owned("client_id").unwrap_or_default().trim().to_string(),
            facility: FacilityId::from(f.uuid("facility_id", "a facility")?),
            roles: f.all("roles"),
            reason: f.owned("reason"),
        })
    })
    .await
}

/// POST /console/clients/{id}/disable: disables a service client.
pub async fn disable_client(
    req: HttpRequest,
    page: AdminForm,
    path: web::Path<String>,
    body: web::Bytes,
) -> Result<HttpResponse, AppError> {
    submit(&req, page, &body, |f| {
        let user = UserId::parse(&path).ok_or_else(AppError::not_found)?;
        Ok(Op::DisableClient {
            user,
            reason: f.owned("reason"),
        })
    })
    .await
}

/// POST /console/approvals/{id}/{approve|deny} `{csrf_token, reason}`: a second
/// administrator decides a waiting change (always after a TOTP code: [`Op::needs_fresh_code`]).
pub async fn decide_change(
    req: HttpRequest,
    page: AdminForm,
    path: web::Path<(String, String)>,
    body: web::Bytes,
) -> Result<HttpResponse, AppError> {
    let (id, verb) = path.into_inner();
    submit(&req, page, &body, |f| {
        let change = PendingChangeId::parse(&id).ok_or_else(AppError::not_found)?;
        let reason = f.owned("reason");
        match verb.as_str() {
            "approve" => Ok(Op::ApproveChange { change, reason }),
            "deny" => Ok(Op::DenyChange { change, reason }),
            _ => Err(AppError::not_found()),
        }
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms_become_ops() {
        let user = UserId::new();
        let f = Form::parse(b"csrf_token=t&role=clinician&reason=new+hire");
        let op = user_op(user, "grant-role", &f).unwrap();
        assert_eq!(
            op,
            Op::GrantRole {
                user,
                role: "clinician".into(),
                reason: Some("new hire".into())
            }
        );
        assert!(op.needs_step_up());
        assert!(user_op(user, "nope", &f).is_err());
        let f = Form::parse(b"facility_id=00000000-0000-0000-0000-000000000001&reason=moved+north");
        assert!(matches!(
            user_op(user, "facility", &f).unwrap(),
            Op::SetFacility { reason: Some(r), .. } if r == "moved north"
        ));
    }

    #[test]
    fn unprocessable_becomes_bad_request_for_forms() {
        let e = form_error(AppError::unprocessable("The field 'reason' is required."));
        assert!(matches!(e, AppError::Client { status, .. } if status == StatusCode::BAD_REQUEST));
    }
}
