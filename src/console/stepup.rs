//! Step-up: sensitive console changes need a TOTP code entered within the last
//! `console.step_up_secs`. When the last check is older, the change is kept server-side
//! ([`store::pending`], bound to this session, so it cannot be forged or replayed from
//! elsewhere) and the console asks for a code. A valid code — checked by
//! [`store::totp::check`], so replay and lock-out rules apply — renews the session id,
//! records the step-up time and performs the kept change with its form data intact.

use super::gate::{Chrome, Console, check_post};
use super::pages::actions::{self, Form};
use super::recorder::ConsoleEvents;
use super::session::{Session, Stage};
use super::settings::Settings;
use super::store;
use super::totp::Check;
use super::{TOTP_LOCKED, session};
use crate::admin::{AdminActor, Op};
use crate::audit::{AuditAction, DenyReason, Outcome};
use crate::error::AppError;
use crate::state::AppState;
use actix_web::{HttpRequest, HttpResponse, Responder, ResponseError, web};
use askama::Template;
use askama_web::WebTemplate;

/// Did this session pass a TOTP check (sign-in or step-up) within the step-up window,
/// by the app's clock?
pub async fn is_fresh(state: &AppState, c: &Settings, s: &Session) -> Result<bool, AppError> {
    let window = c.step_up;
    let hash = s.id_hash.clone();
    let at = state
        .db
        .run(move |c| store::session::totp_at(c, &hash))
        .await?;
    Ok(at.is_some_and(|t| state.clock.now() - t < window))
}

#[derive(Template, WebTemplate)]
#[template(path = "console/step_up.html")]
pub struct StepUpPage {
    chrome: Chrome,
    action: String,
    message: &'static str,
}

fn render(chrome: Chrome, op: &Op, message: &'static str) -> StepUpPage {
    StepUpPage {
        chrome,
        action: op.describe(),
        message,
    }
}

/// Keeps `op` for this session, records that it needs a step-up and asks for a code.
pub async fn ask(req: &HttpRequest, page: Console, op: Op) -> Result<HttpResponse, AppError> {
    let hash = page.me.session.id_hash.clone();
    let stored = op.clone();
    let now = page.state.clock.now();
    page.state
        .db
        .run(move |c| store::pending::save(c, &hash, &stored, now))
        .await?;
    let (action, kind) = op.audit();
    page.record(
        action,
        kind.map(|k| (k, None)),
        Vec::new(),
        Outcome::Deny(DenyReason::StepUpRequired),
    )
    .await?;
    Ok(render(page.chrome, &op, "")
        .respond_to(req)
        .map_into_boxed_body())
}

/// POST /console/step-up `{csrf_token, code}`: checks the code; on success renews the
/// session id and performs the waiting change.
pub async fn submit(
    req: HttpRequest,
    page: super::gate::AdminForm,
    body: web::Bytes,
) -> Result<HttpResponse, AppError> {
    let page = page.0;
    let form = Form::parse(&body);
    check_post(&req, &page.me.session, form.get("csrf_token"))?;
    let hash = page.me.session.id_hash.clone();
    let nothing_waiting = || {
        AppError::bad_request(
            "No change is waiting for a code (or it waited too long). Start it again.",
        )
    };
    let now = page.state.clock.now();
    let op = page
        .state
        .db
        .run(move |c| store::pending::peek(c, &hash, now))
        .await?
        .ok_or_else(nothing_waiting)?;
    let code = form.get("code").unwrap_or_default().to_string();
    let keyring = page.state.keyring.clone();
    let lockout = page.settings.totp_lockout;
    let user_id = page.me.user.id;
    let result = page
        .state
        .db
        .run(move |conn| {
            use diesel::Connection;
            conn.transaction(|conn| {
                store::totp::check(conn, &keyring, user_id, &code, lockout, now)
            })
        })
        .await?;
    match result {
        Check::Accepted => {
            let old = page.me.session.id_hash.clone();
            let now = page.state.clock.now();
            let (id, op) = page
                .state
                .db
                .run(move |conn| {
                    use diesel::Connection;
                    conn.transaction(|conn| {
                        let op = store::pending::take(conn, &old, now)?;
                        let id = store::session::advance(conn, &old, Stage::Active, user_id, now)?;
                        Ok::<_, AppError>((id, op))
                    })
                })
                .await?;
            page.audit
                .session(AuditAction::StepUp, Outcome::Permit)
                .await?;
            // The old id is gone: every answer from here on carries the new cookie.
            let mut res = match op {
                Some(op) => match actions::perform_form(&page, op).await {
                    Ok(res) => res,
                    Err(e) => e.error_response(),
                },
                None => nothing_waiting().error_response(),
            };
            res.add_cookie(&session::cookie(id))
                .map_err(|_| AppError::internal("session cookie"))?;
            Ok(res)
        }
        Check::Rejected { locked } => {
            let reason = if locked {
                DenyReason::RateLimited
            } else {
                DenyReason::InvalidCredentials
            };
            page.audit
                .session(AuditAction::LoginFailed, Outcome::Deny(reason))
                .await?;
            let message = if locked {
                TOTP_LOCKED
            } else {
                "That code was not accepted. Enter the current code from your authenticator app."
            };
            Ok(render(page.chrome, &op, message)
                .respond_to(&req)
                .map_into_boxed_body())
        }
        Check::Locked => {
            page.audit
                .session(
                    AuditAction::LoginFailed,
                    Outcome::Deny(DenyReason::RateLimited),
                )
                .await?;
            Ok(render(page.chrome, &op, TOTP_LOCKED)
                .respond_to(&req)
                .map_into_boxed_body())
        }
    }
}
