//! Step-up: sensitive console changes need a TOTP code entered within the last
//! `console.step_up_secs`. When the last check is older, the change is kept server-side
//! under its own id ([`store::pending`], bound to this session, so it cannot be forged or
//! replayed from elsewhere) and the console asks for a code on a page carrying that id. A
//! valid code — checked by [`store::totp::check`], so replay and lock-out rules apply —
//! renews the session id, records the step-up time and performs the change the page
//! named, with its form data intact. A second change posted meanwhile is kept beside the
//! first, never in its place; Cancel (a POST) discards a kept change, audited.

use super::gate::{Chrome, Console, check_post, see_other};
use super::pages::actions::{self, Form};
use super::recorder::ConsoleEvents;
use super::session::{Session, Stage};
use super::settings::Settings;
use super::store;
use super::store::pending::PendingId;
use super::totp::Check;
use super::{TOTP_LOCKED, session};
use crate::admin::{AdminActor, Op};
use crate::audit::{AuditAction, DenyReason, Outcome};
use crate::error::AppError;
use crate::state::AppState;
use actix_web::http::StatusCode;
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

/// What a code given with a form itself (an audit export: a download, not a kept change)
/// came to.
pub enum Confirmed {
    /// The session passed a TOTP check within the step-up window: no code needed.
    Fresh,
    /// The code was accepted: the session id was renewed (the new id, for the cookie of
    /// the answer) and the step-up recorded.
    Renewed(String),
    /// No fresh check and no acceptable code: refuse, with this message.
    Refused(&'static str),
}

/// The step-up of an action that is answered at once: fresh already, or `code` checked
/// by [`store::totp::check`] (replay and lock-out rules apply), the session id renewed
/// and the step-up recorded like one made on the step-up page.
pub async fn confirm(page: &Console, code: Option<&str>) -> Result<Confirmed, AppError> {
    if is_fresh(&page.state, &page.settings, &page.me.session).await? {
        return Ok(Confirmed::Fresh);
    }
    check_code(
        page,
        code,
        "This needs a current code from your authenticator app (the last one is older than the step-up window).",
    )
    .await
}

/// The step-up of an act that needs a code of its own however recent the last check
/// (re-identification): `code` checked like [`confirm`] does, never [`Confirmed::Fresh`];
/// `missing` is the answer when no code came with the form.
pub async fn check_code(
    page: &Console,
    code: Option<&str>,
    missing: &'static str,
) -> Result<Confirmed, AppError> {
    let Some(code) = code.map(str::trim).filter(|c| !c.is_empty()) else {
        return Ok(Confirmed::Refused(missing));
    };
    let code = code.to_string();
    let keyring = page.state.keyring.clone();
    let lockout = page.settings.totp_lockout;
    let user_id = page.me.user.id;
    let old = page.me.session.id_hash.clone();
    let now = page.state.clock.now();
    let (check, renewed) = page
        .state
        .db
        .run(move |conn| {
            use diesel::Connection;
            conn.transaction(|conn| {
                let check = store::totp::check(conn, &keyring, user_id, &code, lockout, now)?;
                let renewed = match check {
                    Check::Accepted => Some(store::session::advance(
                        conn,
                        &old,
                        Stage::Active,
                        user_id,
                        now,
                    )?),
                    _ => None,
                };
                Ok::<_, AppError>((check, renewed))
            })
        })
        .await?;
    match (check, renewed) {
        (Check::Accepted, Some(id)) => {
            page.audit
                .session(AuditAction::StepUp, Outcome::Permit)
                .await?;
            Ok(Confirmed::Renewed(id))
        }
        (Check::Rejected { locked: false }, _) => {
            let outcome = Outcome::Deny(DenyReason::InvalidCredentials);
            page.audit
                .session(AuditAction::LoginFailed, outcome)
                .await?;
            Ok(Confirmed::Refused(
                "That code was not accepted. Enter the current code from your authenticator app.",
            ))
        }
        _ => {
            let outcome = Outcome::Deny(DenyReason::RateLimited);
            page.audit
                .session(AuditAction::LoginFailed, outcome)
                .await?;
            Ok(Confirmed::Refused(TOTP_LOCKED))
        }
    }
}

#[derive(Template, WebTemplate)]
#[template(path = "console/step_up.html")]
pub struct StepUpPage {
    chrome: Chrome,
    action: String,
    pending_id: String,
    message: &'static str,
}

fn render(chrome: Chrome, op: &Op, id: PendingId, message: &'static str) -> StepUpPage {
    StepUpPage {
        chrome,
        action: op.describe(),
        pending_id: id.to_string(),
        message,
    }
}

fn nothing_waiting() -> AppError {
    AppError::bad_request(
        "No change is waiting for a code (or it waited too long). Start it again.",
    )
}

/// The kept change a form names (`pending_id`); a missing or malformed id names nothing.
fn named(form: &Form) -> Result<PendingId, AppError> {
    form.get("pending_id")
        .and_then(PendingId::parse)
        .ok_or_else(nothing_waiting)
}

/// Keeps `op` for this session under a new id (beside any change already waiting, never
/// in its place), records that it needs a step-up and asks for a code on a page that
/// carries that id.
pub async fn ask(req: &HttpRequest, page: Console, op: Op) -> Result<HttpResponse, AppError> {
    let hash = page.me.session.id_hash.clone();
    let stored = op.clone();
    let now = page.state.clock.now();
    let id = page
        .state
        .db
        .run(move |c| store::pending::save(c, &hash, &stored, now))
        .await?
        .ok_or_else(|| {
            AppError::client(
                StatusCode::CONFLICT,
                "Too many changes are waiting for a code: confirm or cancel one of them first.",
            )
        })?;
    let (action, kind) = op.audit();
    page.record(
        action,
        kind.map(|k| (k, None)),
        Vec::new(),
        Outcome::Deny(DenyReason::StepUpRequired),
    )
    .await?;
    Ok(render(page.chrome, &op, id, "")
        .respond_to(req)
        .map_into_boxed_body())
}

/// POST /console/step-up `{csrf_token, pending_id, code}`: checks the code; on success
/// renews the session id and performs the change `pending_id` names (the one its page
/// showed), and no other.
pub async fn submit(
    req: HttpRequest,
    page: super::gate::AdminForm,
    body: web::Bytes,
) -> Result<HttpResponse, AppError> {
    let page = page.0;
    let form = Form::parse(&body);
    check_post(&req, &page.me.session, form.get("csrf_token"))?;
    let pending = named(&form)?;
    let hash = page.me.session.id_hash.clone();
    let now = page.state.clock.now();
    let op = page
        .state
        .db
        .run(move |c| store::pending::peek(c, &hash, pending, now))
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
                        let op = store::pending::take(conn, &old, pending, now)?;
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
            Ok(render(page.chrome, &op, pending, message)
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
            Ok(render(page.chrome, &op, pending, TOTP_LOCKED)
                .respond_to(&req)
                .map_into_boxed_body())
        }
    }
}

/// POST /console/step-up/cancel `{csrf_token, pending_id}`: discards the kept change
/// (it can no longer be performed by any code) and records that it was withdrawn.
pub async fn cancel(
    req: HttpRequest,
    page: super::gate::AdminForm,
    body: web::Bytes,
) -> Result<HttpResponse, AppError> {
    let page = page.0;
    let form = Form::parse(&body);
    check_post(&req, &page.me.session, form.get("csrf_token"))?;
    let pending = named(&form)?;
    let hash = page.me.session.id_hash.clone();
    let now = page.state.clock.now();
    let op = page
        .state
        .db
        .run(move |c| store::pending::take(c, &hash, pending, now))
        .await?
        .ok_or_else(nothing_waiting)?;
    let (action, kind) = op.audit();
    page.record(
        action,
        kind.map(|k| (k, None)),
        Vec::new(),
        Outcome::Deny(DenyReason::Cancelled),
    )
    .await?;
    Ok(see_other("/console"))
}
