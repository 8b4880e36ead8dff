//! Console sign-in handlers: OIDC redirect and callback, TOTP enrol/check, sign-out, and
//! the gate every console page passes ([`signed_in`]).

use super::recovery;
use super::session::{self, Session, Stage};
use super::totp::{self, Check};
use super::{Console, SIGN_IN_FAILED, page};
use crate::audit::AuditContext;
use crate::audit::event::{Actor, AuditAction, AuthMethod, DenyReason, Outcome, RoleCode};
use crate::db::users::{self, UserKind, UserRecord};
use crate::error::AppError;
use crate::policy;
use crate::state::AppState;
use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderValue};
use actix_web::{HttpRequest, HttpResponse, web};
use askama::Template;
use subtle::ConstantTimeEq;

pub const SIGN_IN_PATH: &str = "/console/signin";

pub fn console(state: &AppState) -> Result<&Console, AppError> {
    state.console.as_deref().ok_or_else(|| {
        AppError::client(
            StatusCode::NOT_FOUND,
            "The admin console is not configured on this server (no [console] settings).",
        )
    })
}

fn is_console_user(user: &UserRecord) -> bool {
    policy::admin::console_admission(&user.roles, user.disabled)
}

pub fn role_codes(user: &UserRecord) -> Vec<RoleCode> {
    user.roles
        .iter()
        .filter_map(|r| RoleCode::parse(r.as_str()).ok())
        .collect()
}

pub fn see_other(location: &str) -> HttpResponse {
    let mut res = HttpResponse::SeeOther().finish();
    if let Ok(v) = HeaderValue::from_str(location) {
        res.headers_mut().insert(header::LOCATION, v);
    }
    res
}

fn to_sign_in(clear_cookie: bool) -> HttpResponse {
    let mut res = see_other(SIGN_IN_PATH);
    if clear_cookie {
        let _ = res.add_cookie(&session::removal());
    }
    res
}

/// A fully signed-in console user, as checked for this request.
pub struct SignedIn {
    pub session: Session,
    pub user: UserRecord,
    pub issuer: String,
    pub subject: String,
}

/// What the gate decided.
pub enum Gate<T> {
    Pass(T),
    /// Not (or no longer) signed in, or at the wrong step: send this response.
    Redirect(HttpResponse),
}

/// Loads the session and the user's roles fresh from the database. A session whose user
/// lost every console role or was disabled is destroyed.
async fn gate(
    req: &HttpRequest,
    state: &web::Data<AppState>,
    want: Stage,
) -> Result<Gate<(Session, UserRecord, String, String)>, AppError> {
    let life = console(state)?.lifetimes;
    let Some(id) = session::presented(req) else {
        return Ok(Gate::Redirect(to_sign_in(false)));
    };
    let found = state
        .db
        .run(move |conn| {
            let Some(s) = session::load(conn, &id, &life)? else {
                return Ok(None);
            };
            let Some(user_id) = s.user_id else {
                return Ok(Some((s, None)));
            };
            let user = users::by_id(conn, user_id)?;
            if !user.as_ref().is_some_and(|(u, _, _)| is_console_user(u)) {
                session::destroy(conn, &s.id_hash)?;
                return Ok(None);
            }
            Ok(Some((s, user)))
        })
        .await?;
    match found {
        Some((s, Some((user, issuer, subject)))) if s.stage == want => {
            Ok(Gate::Pass((s, user, issuer, subject)))
        }
        Some((s, Some(_))) if s.stage == Stage::Totp => {
            Ok(Gate::Redirect(see_other("/console/totp")))
        }
        Some((s, Some(_))) if s.stage == Stage::Active => Ok(Gate::Redirect(see_other("/console"))),
        _ => Ok(Gate::Redirect(to_sign_in(true))),
    }
}

/// The gate of every console page: OIDC done, TOTP done, console role held now.
pub async fn signed_in(
    req: &HttpRequest,
    state: &web::Data<AppState>,
) -> Result<Gate<SignedIn>, AppError> {
    Ok(match gate(req, state, Stage::Active).await? {
        Gate::Pass((session, user, issuer, subject)) => Gate::Pass(SignedIn {
            session,
            user,
            issuer,
            subject,
        }),
        Gate::Redirect(r) => Gate::Redirect(r),
    })
}

/// POSTs must come from our own pages: Origin (or, without it, Referer) must be this
/// host or the configured public URL, and the form must carry the session's CSRF token.
pub fn check_post(
    req: &HttpRequest,
    session: &Session,
    token: Option<&str>,
) -> Result<(), AppError> {
    check_origin(req)?;
    let token = token.ok_or_else(forbidden_form)?;
    if !bool::from(token.as_bytes().ct_eq(session.csrf_token.as_bytes())) {
        return Err(forbidden_form());
    }
    Ok(())
}

fn forbidden_form() -> AppError {
    AppError::client(
        StatusCode::FORBIDDEN,
        "The form could not be accepted (cross-site request or missing form token). Reload the page and try again.",
    )
}

/// The Origin (or, without it, the Referer's origin) must be this host or the configured
/// public URL. Alone it guards forms posted before any session exists (emergency sign-in).
pub fn check_origin(req: &HttpRequest) -> Result<(), AppError> {
    let origin = req
        .headers()
        .get(header::ORIGIN)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .or_else(|| {
            req.headers()
                .get(header::REFERER)
                .and_then(|v| v.to_str().ok())
                .and_then(|r| url::Url::parse(r).ok())
                .map(|u| u.origin().ascii_serialization())
        })
        .ok_or_else(forbidden_form)?;
    let own = format!("https://{}", req.connection_info().host());
    let public = req
        .app_data::<web::Data<AppState>>()
        .map(|s| s.public_origin.clone())
        .unwrap_or_default();
    if origin != own && origin != public {
        return Err(forbidden_form());
    }
    Ok(())
}

#[derive(Template)]
#[template(path = "console/signin.html")]
struct SignInPage;

/// GET /console/signin: the sign-in page.
pub async fn sign_in_page(state: web::Data<AppState>) -> Result<HttpResponse, AppError> {
    console(&state)?;
    page(&SignInPage)
}

/// GET /console/login: a new pre-login session and the redirect to the provider.
pub async fn login(state: web::Data<AppState>) -> Result<HttpResponse, AppError> {
    let c = console(&state)?;
    let start = c.oidc.start().await?;
    let life = c.lifetimes;
    let (st, no, ve) = (
        start.state.clone(),
        start.nonce.clone(),
        start.pkce_verifier.clone(),
    );
    let id = state
        .db
        .run(move |conn| session::start_pre_login(conn, &life, &st, &no, &ve))
        .await?;
    let mut res = see_other(start.url.as_str());
    res.add_cookie(&session::pre_login_cookie(id))
        .map_err(|_| AppError::internal("session cookie"))?;
    Ok(res)
}

#[derive(serde::Deserialize)]
pub struct Callback {
    code: Option<String>,
    state: Option<String>,
    iss: Option<String>,
    error: Option<String>,
}

#[derive(Template)]
#[template(path = "console/no_access.html")]
struct NoAccessPage;

/// GET /console/callback: verify state and `iss`, exchange the code, verify the ID token,
/// match the user by (issuer, subject); console roles only.
pub async fn callback(
    req: HttpRequest,
    ctx: AuditContext,
    state: web::Data<AppState>,
    query: web::Query<Callback>,
) -> Result<HttpResponse, AppError> {
    let c = console(&state)?;
    let failed = || AppError::client(StatusCode::BAD_REQUEST, SIGN_IN_FAILED);
    let q = query.into_inner();
    let Some(id) = session::presented(&req) else {
        return Err(failed());
    };
    let life = c.lifetimes;
    // The pre-login session is used once: its OIDC values are gone after this.
    let pre = state
        .db
        .run(move |conn| {
            let s = session::load(conn, &id, &life)?;
            if let Some(s) = &s {
                session::destroy(conn, &s.id_hash)?;
            }
            Ok(s)
        })
        .await?;
    let Some(pre) = pre.filter(|s| s.stage == Stage::PreLogin) else {
        return Err(failed());
    };
    let expected_state = pre.oidc_state.clone().unwrap_or_default();
    let state_ok = q.state.as_deref().is_some_and(|s| {
        !expected_state.is_empty() && bool::from(s.as_bytes().ct_eq(expected_state.as_bytes()))
    });
    // RFC 9207: when the provider names itself, it must be the provider we asked.
    let iss_ok = q.iss.as_deref().is_none_or(|iss| iss == c.oidc.issuer());
    if !state_ok || !iss_ok || q.error.is_some() {
        let event = ctx
            .event(
                Actor::anonymous(),
                AuditAction::LoginFailed,
                Outcome::Deny(DenyReason::InvalidCredentials),
            )
            .build();
        state.audit.record(event).await?;
        return Err(failed());
    }
    let code = q.code.ok_or_else(failed)?;
    let identity = c
        .oidc
        .finish(
            code,
            pre.oidc_nonce.clone().unwrap_or_default(),
            pre.pkce_verifier.clone().unwrap_or_default(),
        )
        .await?;
    let (issuer, subject) = (identity.issuer, identity.subject);
    let user = state
        .db
        .run(move |conn| users::user_for(conn, &issuer, &subject, UserKind::Person))
        .await?;
    if !is_console_user(&user) {
        let event = ctx
            .event(
                Actor::user(user.id, role_codes(&user), AuthMethod::Session),
                AuditAction::LoginFailed,
                Outcome::Deny(DenyReason::MissingRole),
            )
            .resource_type(crate::audit::event::ResourceType::Session)
            .build();
        state.audit.record(event).await?;
        let html = NoAccessPage
            .render()
            .map_err(|e| AppError::Internal(anyhow::Error::new(e).context("rendering")))?;
        // Rendered as our own page: the edge keeps bodies of responses it marks as pages.
        let mut res = HttpResponse::Forbidden()
            .content_type("text/html; charset=utf-8")
            .body(html);
        res.extensions_mut().insert(crate::web::render::OwnPage);
        return Ok(res);
    }
    // A new session (new id) for the signed-in user, TOTP still to do.
    let user_id = user.id;
    let id = state
        .db
        .run(move |conn| session::start_signed_in(conn, Stage::Totp, user_id))
        .await?;
    let event = ctx
        .event(
            Actor::user(user.id, role_codes(&user), AuthMethod::Session),
            AuditAction::Login,
            Outcome::Permit,
        )
        .resource_type(crate::audit::event::ResourceType::Session)
        .build();
    state.audit.record(event).await?;
    // Not a redirect: this request arrived through the provider's cross-site redirect, and
    // browsers keep withholding SameSite=Strict cookies along that chain, so a 303 to the
    // TOTP page would arrive without the new session. A page of our own that refreshes
    // (no script, so the CSP holds) starts a same-site navigation that carries it.
    let mut res = page(&ContinuePage)?;
    res.headers_mut().insert(
        header::REFRESH,
        HeaderValue::from_static("0; url=/console/totp"),
    );
    res.add_cookie(&session::cookie(id))
        .map_err(|_| AppError::internal("session cookie"))?;
    Ok(res)
}

#[derive(Template)]
#[template(path = "console/continue.html")]
struct ContinuePage;

#[derive(Template)]
#[template(path = "console/totp.html")]
struct TotpPage {
    enrol: bool,
    secret: String,
    otpauth: String,
    qr_side: i32,
    qr_path: String,
    csrf_token: String,
    message: &'static str,
}

async fn totp_page(
    state: &web::Data<AppState>,
    session: &Session,
    user: &UserRecord,
    subject: &str,
    message: &'static str,
) -> Result<HttpResponse, AppError> {
    let keyring = state.keyring.clone();
    let user_id = user.id;
    let e = state
        .db
        .run(move |conn| {
            use diesel::Connection;
            conn.transaction(|conn| totp::enrolment(conn, &keyring, user_id))
        })
        .await?;
    let secret = if e.confirmed {
        String::new()
    } else {
        e.secret_base32()
    };
    let otpauth = if e.confirmed {
        String::new()
    } else {
        totp::otpauth_uri(&secret, subject)?
    };
    let (qr_side, qr_path) = if e.confirmed {
        (0, String::new())
    } else {
        totp::qr_svg(&otpauth)?
    };
    page(&TotpPage {
        enrol: !e.confirmed,
        secret,
        otpauth,
        qr_side,
        qr_path,
        csrf_token: session.csrf_token.clone(),
        message,
    })
}

/// GET /console/totp: enrolment (first time) or the code check.
pub async fn totp_form(
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, AppError> {
    match gate(&req, &state, Stage::Totp).await? {
        Gate::Redirect(r) => Ok(r),
        Gate::Pass((s, user, _, subject)) => totp_page(&state, &s, &user, &subject, "").await,
    }
}

#[derive(Template)]
#[template(path = "console/recovery_codes.html")]
struct RecoveryCodesPage {
    codes: Vec<String>,
}

#[derive(serde::Deserialize)]
pub struct TotpForm {
    csrf_token: Option<String>,
    code: Option<String>,
}

/// POST /console/totp: check the code; on success a new session id and the dashboard.
pub async fn totp_submit(
    req: HttpRequest,
    ctx: AuditContext,
    state: web::Data<AppState>,
    form: web::Form<TotpForm>,
) -> Result<HttpResponse, AppError> {
    let c = console(&state)?;
    let (s, user, subject) = match gate(&req, &state, Stage::Totp).await? {
        Gate::Redirect(r) => {
            // A POST without a session is refused, not redirected.
            let _ = r;
            return Err(AppError::client(
                StatusCode::FORBIDDEN,
                "The form could not be accepted: your sign-in session has ended. Sign in again.",
            ));
        }
        Gate::Pass((s, user, _, subject)) => (s, user, subject),
    };
    check_post(&req, &s, form.csrf_token.as_deref())?;
    let code = zeroize::Zeroizing::new(form.code.clone().unwrap_or_default());
    let keyring = state.keyring.clone();
    let lockout = chrono::Duration::seconds(i64::try_from(c.totp_lockout_secs).unwrap_or(900));
    let user_id = user.id;
    let (was_confirmed, result) = state
        .db
        .run(move |conn| {
            use diesel::Connection;
            conn.transaction(|conn| {
                let confirmed = totp::is_confirmed(conn, user_id)?;
                let check = if recovery::looks_like(&code) {
                    totp::check_recovery(conn, &keyring, user_id, &code, lockout)?
                } else {
                    totp::check(conn, &keyring, user_id, &code, lockout)?
                };
                Ok((confirmed, check))
            })
        })
        .await?;
    let actor = Actor::user(user.id, role_codes(&user), AuthMethod::Session);
    match result {
        Check::Accepted => {
            // First confirmation of an enrolment: ten recovery codes, shown once below.
            let codes = if was_confirmed {
                None
            } else {
                Some(
                    web::block(recovery::generate)
                        .await
                        .map_err(|_| AppError::internal("recovery code generation cancelled"))??,
                )
            };
            let old = s.id_hash.clone();
            let (id, codes) = state
                .db
                .run(move |conn| {
                    if let Some(codes) = &codes {
                        recovery::replace(conn, user_id, codes)?;
                    }
                    let id = session::advance(conn, &old, Stage::Active, user_id)?;
                    Ok((id, codes))
                })
                .await?;
            let event = ctx
                .event(
                    Actor::user(user.id, role_codes(&user), AuthMethod::SessionMfa),
                    AuditAction::StepUp,
                    Outcome::Permit,
                )
                .resource_type(crate::audit::event::ResourceType::Session)
                .build();
            state.audit.record(event).await?;
            let mut res = match codes {
                Some(codes) => page(&RecoveryCodesPage {
                    codes: codes.iter().map(|c| c.text.to_string()).collect(),
                })?,
                None => see_other("/console"),
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
            let event = ctx
                .event(actor, AuditAction::LoginFailed, Outcome::Deny(reason))
                .resource_type(crate::audit::event::ResourceType::Session)
                .build();
            state.audit.record(event).await?;
            let message = if locked {
                super::TOTP_LOCKED
            } else {
                "That code was not accepted. Enter the current code from your authenticator app."
            };
            totp_page(&state, &s, &user, &subject, message).await
        }
        Check::Locked => {
            let event = ctx
                .event(
                    actor,
                    AuditAction::LoginFailed,
                    Outcome::Deny(DenyReason::RateLimited),
                )
                .resource_type(crate::audit::event::ResourceType::Session)
                .build();
            state.audit.record(event).await?;
            totp_page(&state, &s, &user, &subject, super::TOTP_LOCKED).await
        }
    }
}

#[derive(serde::Deserialize)]
pub struct LogoutForm {
    csrf_token: Option<String>,
}

/// POST /console/logout: destroys the server-side session.
pub async fn logout(
    req: HttpRequest,
    ctx: AuditContext,
    state: web::Data<AppState>,
    form: web::Form<LogoutForm>,
) -> Result<HttpResponse, AppError> {
    let me = match signed_in(&req, &state).await? {
        Gate::Redirect(_) => {
            return Err(AppError::client(
                StatusCode::FORBIDDEN,
                "The form could not be accepted: you are not signed in.",
            ));
        }
        Gate::Pass(me) => me,
    };
    check_post(&req, &me.session, form.csrf_token.as_deref())?;
    let hash = me.session.id_hash.clone();
    state
        .db
        .run(move |conn| session::destroy(conn, &hash))
        .await?;
    let event = ctx
        .event(
            Actor::user(me.user.id, role_codes(&me.user), AuthMethod::SessionMfa),
            AuditAction::Logout,
            Outcome::Permit,
        )
        .resource_type(crate::audit::event::ResourceType::Session)
        .build();
    state.audit.record(event).await?;
    Ok(to_sign_in(true))
}
