//! Step-up: sensitive console changes need a TOTP code entered within the last
//! `console.step_up_secs`. When the last check is older, the change is kept server-side
//! (in `console_pending_actions`, bound to this session, so it cannot be forged or
//! replayed from elsewhere) and the console asks for a code. A valid code — checked by
//! [`totp::check`], so replay and lock-out rules apply — renews the session id, records
//! the step-up time and performs the kept change with its form data intact.

use super::auth::{self, Gate};
use super::pages::actions::{self, Form};
use super::pages::{Chrome, ConsoleActor, lifetimes, require_admin};
use super::session::{self, Session, Stage};
use super::totp::{self, Check};
use super::{TOTP_LOCKED, page};
use crate::admin::Op;
use crate::admin::op::AdminActor;
use crate::audit::{AuditAction, DenyReason, Outcome, ResourceType as Kind};
use crate::db::schema::console_pending_actions as pa;
use crate::error::AppError;
use crate::state::AppState;
use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, ResponseError, web};
use askama::Template;
use chrono::{Duration, Utc};
use diesel::prelude::*;

/// How long a change waits for its code before it must be started again.
const PENDING_MAX_AGE_SECS: i64 = 600;

/// Did this session pass a TOTP check (sign-in or step-up) within the step-up window?
pub async fn is_fresh(state: &AppState, s: &Session) -> Result<bool, AppError> {
    let window = auth::console(state)?.step_up;
    let hash = s.id_hash.clone();
    let at = state.db.run(move |c| session::totp_at(c, &hash)).await?;
    Ok(at.is_some_and(|t| Utc::now() - t < window))
}

fn save(conn: &mut PgConnection, hash: &[u8], op: &Op) -> Result<(), AppError> {
    let json = serde_json::to_value(op)
        .map_err(|e| AppError::Internal(anyhow::Error::new(e).context("pending action")))?;
    diesel::insert_into(pa::table)
        .values((
            pa::session_hash.eq(hash),
            pa::action.eq(&json),
            pa::created_at.eq(Utc::now()),
        ))
        .on_conflict(pa::session_hash)
        .do_update()
        .set((pa::action.eq(&json), pa::created_at.eq(Utc::now())))
        .execute(conn)?;
    Ok(())
}

fn decode(json: serde_json::Value) -> Result<Op, AppError> {
    serde_json::from_value(json)
        .map_err(|e| AppError::Internal(anyhow::Error::new(e).context("pending action")))
}

/// The change waiting for this session's step-up, if it has not expired.
fn peek(conn: &mut PgConnection, hash: &[u8]) -> Result<Option<Op>, AppError> {
    let since = Utc::now() - Duration::seconds(PENDING_MAX_AGE_SECS);
    let json: Option<serde_json::Value> = pa::table
        .filter(pa::session_hash.eq(hash).and(pa::created_at.gt(since)))
        .select(pa::action)
        .first(conn)
        .optional()?;
    json.map(decode).transpose()
}

/// Removes and returns the waiting change (used once).
fn take(conn: &mut PgConnection, hash: &[u8]) -> Result<Option<Op>, AppError> {
    let op = peek(conn, hash)?;
    diesel::delete(pa::table.filter(pa::session_hash.eq(hash))).execute(conn)?;
    Ok(op)
}

#[derive(Template)]
#[template(path = "console/step_up.html")]
struct StepUpPage {
    chrome: Chrome,
    action: String,
    message: &'static str,
}

fn render(chrome: Chrome, op: &Op, message: &'static str) -> Result<HttpResponse, AppError> {
    page(&StepUpPage {
        chrome,
        action: op.describe(),
        message,
    })
}

/// Keeps `op` for this session, records that it needs a step-up and asks for a code.
pub async fn ask(
    state: &web::Data<AppState>,
    who: &ConsoleActor,
    me: &auth::SignedIn,
    op: Op,
) -> Result<HttpResponse, AppError> {
    let hash = me.session.id_hash.clone();
    let stored = op.clone();
    state.db.run(move |c| save(c, &hash, &stored)).await?;
    let (action, kind) = op.audit();
    who.record(
        action,
        kind.map(|k| (k, None)),
        Vec::new(),
        Outcome::Deny(DenyReason::StepUpRequired),
    )
    .await?;
    let chrome = Chrome::of(me, &lifetimes(state)?);
    render(chrome, &op, "")
}

/// POST /console/step-up `{csrf_token, code}`: checks the code; on success renews the
/// session id and performs the waiting change.
pub async fn submit(
    req: HttpRequest,
    ctx: crate::audit::AuditContext,
    state: web::Data<AppState>,
    body: web::Bytes,
) -> Result<HttpResponse, AppError> {
    let c = auth::console(&state)?;
    let me = match auth::signed_in(&req, &state).await? {
        Gate::Redirect(_) => {
            return Err(AppError::client(
                StatusCode::FORBIDDEN,
                "The form could not be accepted: your session has ended. Sign in again.",
            ));
        }
        Gate::Pass(me) => me,
    };
    let form = Form::parse(&body);
    auth::check_post(&req, &me.session, form.get("csrf_token"))?;
    require_admin(&me)?;
    let hash = me.session.id_hash.clone();
    let op = state
        .db
        .run(move |c| peek(c, &hash))
        .await?
        .ok_or_else(|| {
            AppError::bad_request(
                "No change is waiting for a code (or it waited too long). Start it again.",
            )
        })?;
    let code = form.get("code").unwrap_or_default().to_string();
    let keyring = state.keyring.clone();
    let lockout = Duration::seconds(i64::try_from(c.totp_lockout_secs).unwrap_or(900));
    let user_id = me.user.id;
    let result = state
        .db
        .run(move |conn| {
            use diesel::Connection;
            conn.transaction(|conn| totp::check(conn, &keyring, user_id, &code, lockout))
        })
        .await?;
    let who = ConsoleActor::new(&state, ctx, &me);
    let chrome = Chrome::of(&me, &lifetimes(&state)?);
    let failed = |reason| {
        who.context()
            .event(who.actor(), AuditAction::LoginFailed, Outcome::Deny(reason))
            .resource_type(Kind::Session)
            .build()
    };
    match result {
        Check::Accepted => {
            let old = me.session.id_hash.clone();
            let (id, op) = state
                .db
                .run(move |conn| {
                    use diesel::Connection;
                    conn.transaction(|conn| {
                        let op = take(conn, &old)?;
                        let id = session::advance(conn, &old, Stage::Active, user_id)?;
                        Ok::<_, AppError>((id, op))
                    })
                })
                .await?;
            let event = who
                .context()
                .event(who.actor(), AuditAction::StepUp, Outcome::Permit)
                .resource_type(Kind::Session)
                .build();
            state.audit.record(event).await?;
            // The old id is gone: every answer from here on carries the new cookie.
            let mut res = match op {
                Some(op) => match actions::perform_form(&state, &who, op).await {
                    Ok(res) => res,
                    Err(e) => e.error_response(),
                },
                None => AppError::bad_request(
                    "No change is waiting for a code (or it waited too long). Start it again.",
                )
                .error_response(),
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
            state.audit.record(failed(reason)).await?;
            let message = if locked {
                TOTP_LOCKED
            } else {
                "That code was not accepted. Enter the current code from your authenticator app."
            };
            render(chrome, &op, message)
        }
        Check::Locked => {
            state.audit.record(failed(DenyReason::RateLimited)).await?;
            render(chrome, &op, TOTP_LOCKED)
        }
    }
}
