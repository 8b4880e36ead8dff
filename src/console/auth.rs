//! Console sign-in handlers: OIDC redirect and callback, TOTP enrol/check, sign-out. The
//! gate every later page passes is in [`super::gate`].

use super::gate::{self, ConsoleForm, Refusal, check_post, see_other, to_sign_in};
use super::recorder::{self, ConsoleEvents};
use super::session::{self, Session, Stage};
use super::settings::Settings;
use super::store;
use super::totp::Check;
use super::{SIGN_IN_FAILED, recovery};
use crate::audit::{AuditAction, AuthMethod, DenyReason, Outcome, ResourceType as Kind, What};
use crate::db::users::{self, UserRecord};
use crate::error::AppError;
use crate::policy;
use crate::state::AppState;
use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderValue};
use actix_web::{HttpRequest, HttpResponse, Responder, web};
use askama::Template;
use askama_web::WebTemplate;
use subtle::ConstantTimeEq;

pub use super::gate::SIGN_IN_PATH;

#[derive(Template, WebTemplate)]
#[template(path = "console/signin.html")]
pub struct SignInPage;

/// GET /console/signin: the sign-in page.
pub async fn sign_in_page(_: Settings) -> SignInPage {
    SignInPage
}

/// GET /console/login: a new pre-login session and the redirect to the provider. Each
/// address holds a bounded number of live pre-login sessions (they expire quickly and are
/// swept here); one more is refused with 429, audited.
pub async fn login(
    req: HttpRequest,
    c: Settings,
    state: web::Data<AppState>,
) -> Result<HttpResponse, AppError> {
    let start = c.oidc.start().await?;
    let life = c.lifetimes;
    let (st, no, ve) = (
        start.state.clone(),
        start.nonce.clone(),
        start.pkce_verifier.clone(),
    );
    let source = gate::client_addr(&req);
    let now = state.clock.now();
    let id = state
        .db
        .run(move |conn| {
            store::session::start_pre_login(conn, &life, (&st, &no, &ve), &source, now)
        })
        .await?;
    let Some(id) = id else {
        recorder::anonymous(&state, &req)
            .session(
                AuditAction::LoginFailed,
                Outcome::Deny(DenyReason::RateLimited),
            )
            .await?;
        return Err(AppError::RateLimited {
            retry_after_secs: 60,
        });
    };
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

#[derive(Template, WebTemplate)]
#[template(path = "console/no_access.html")]
pub struct NoAccessPage;

#[derive(Template, WebTemplate)]
#[template(path = "console/continue.html")]
pub struct ContinuePage;

/// The answer to a refused sign-in: our own 403 page.
fn no_access(req: &HttpRequest) -> HttpResponse {
    let mut res = NoAccessPage.respond_to(req).map_into_boxed_body();
    *res.status_mut() = StatusCode::FORBIDDEN;
    // Our own page: the edge keeps bodies of responses it marks as pages.
    res.extensions_mut().insert(crate::web::render::OwnPage);
    res
}

/// GET /console/callback: verify state and `iss`, exchange the code, verify the ID token,
/// match the user by (issuer, subject); console roles only. Every refusal is one audit
/// event (anonymous until a known user is matched).
pub async fn callback(
    req: HttpRequest,
    c: Settings,
    state: web::Data<AppState>,
    query: web::Query<Callback>,
) -> Result<HttpResponse, AppError> {
    let anonymous = recorder::anonymous(&state, &req);
    // A refused step: recorded, then the one fixed answer.
    let refuse = |reason: DenyReason| {
        let anonymous = anonymous.clone();
        async move {
            anonymous
                .deny(
                    What::new(AuditAction::LoginFailed).on(Kind::Session),
                    [],
                    reason,
                )
                .await?;
            Err::<HttpResponse, AppError>(AppError::client(StatusCode::BAD_REQUEST, SIGN_IN_FAILED))
        }
    };
    let q = query.into_inner();
    let Some(id) = session::presented(&req) else {
        return refuse(DenyReason::NotAuthenticated).await;
    };
    let life = c.lifetimes;
    let now = state.clock.now();
    // The pre-login session is used once: its OIDC values are gone after this.
    let pre = state
        .db
        .run(move |conn| {
            let s = store::session::load(conn, &id, &life, now)?;
            if let Some(s) = &s {
                store::session::destroy(conn, &s.id_hash)?;
            }
            Ok(s)
        })
        .await?;
    let Some(pre) = pre.filter(|s| s.stage == Stage::PreLogin) else {
        return refuse(DenyReason::NotAuthenticated).await;
    };
    let expected_state = pre.oidc_state.clone().unwrap_or_default();
    let state_ok = q.state.as_deref().is_some_and(|s| {
        !expected_state.is_empty() && bool::from(s.as_bytes().ct_eq(expected_state.as_bytes()))
    });
    // RFC 9207: when the provider names itself, it must be the provider we asked; when it
    // says it always does, a response without `iss` is refused.
    let iss_ok = match q.iss.as_deref() {
        Some(iss) => iss == c.oidc.issuer(),
        None => !c.oidc.iss_required().await?,
    };
    if !state_ok || !iss_ok || q.error.is_some() {
        return refuse(DenyReason::InvalidCredentials).await;
    }
    let Some(code) = q.code else {
        return refuse(DenyReason::InvalidCredentials).await;
    };
    // A refused code exchange or a rejected ID token: a client error from `finish`.
    let identity = match c
        .oidc
        .finish(
            code,
            pre.oidc_nonce.clone().unwrap_or_default(),
            pre.pkce_verifier.clone().unwrap_or_default(),
        )
        .await
    {
        Ok(identity) => identity,
        Err(AppError::Client { .. }) => return refuse(DenyReason::InvalidCredentials).await,
        Err(e) => {
            anonymous
                .error(What::new(AuditAction::LoginFailed).on(Kind::Session), [])
                .await?;
            return Err(e);
        }
    };
    let (issuer, subject) = (identity.issuer, identity.subject);
    // The provider's family name, as its blind index only (same-family-name detector).
    let family_index = identity.family_name.as_ref().and_then(|n| {
        state
            .keyring
            .blind_index(crate::crypto::BlindKind::Family, n.expose())
            .ok()
    });
    // Looked up, never created: a refused sign-in adds nobody to the users table.
    let user = state
        .db
        .run(move |conn| {
            let user = users::find(conn, &issuer, &subject)?;
            if let (Some(u), Some(index)) = (&user, &family_index) {
                users::set_family_index(conn, u.id, index, users::FamilySource::Provider)?;
            }
            Ok(user)
        })
        .await?;
    let Some(user) = user else {
        anonymous
            .session(
                AuditAction::LoginFailed,
                Outcome::Deny(DenyReason::MissingRole),
            )
            .await?;
        return Ok(no_access(&req));
    };
    let audit = recorder::user(&state, &req, &user, AuthMethod::Session);
    if !policy::admin::console_admission(&user.roles, user.disabled) {
        audit
            .session(
                AuditAction::LoginFailed,
                Outcome::Deny(DenyReason::MissingRole),
            )
            .await?;
        return Ok(no_access(&req));
    }
    // A new session (new id) for the signed-in user, TOTP still to do.
    let user_id = user.id;
    let now = state.clock.now();
    let id = state
        .db
        .run(move |conn| store::session::start_signed_in(conn, Stage::Totp, user_id, now))
        .await?;
    audit.session(AuditAction::Login, Outcome::Permit).await?;
    // Not a redirect: this request arrived through the provider's cross-site redirect, and
    // browsers keep withholding SameSite=Strict cookies along that chain, so a 303 to the
    // TOTP page would arrive without the new session. A page of our own that refreshes
    // (no script, so the CSP holds) starts a same-site navigation that carries it.
    let mut res = ContinuePage.respond_to(&req).map_into_boxed_body();
    res.headers_mut().insert(
        header::REFRESH,
        HeaderValue::from_static("0; url=/console/totp"),
    );
    res.add_cookie(&session::cookie(id))
        .map_err(|_| AppError::internal("session cookie"))?;
    Ok(res)
}

#[derive(Template, WebTemplate)]
#[template(path = "console/totp.html")]
pub struct TotpPage {
    enrol: bool,
    secret: String,
    otpauth: String,
    qr_side: i32,
    qr_path: String,
    csrf_token: String,
    message: &'static str,
}

async fn totp_page(
    state: &AppState,
    session: &Session,
    user: &UserRecord,
    subject: &str,
    message: &'static str,
) -> Result<TotpPage, AppError> {
    let keyring = state.keyring.clone();
    let user_id = user.id;
    let e = state
        .db
        .run(move |conn| {
            use diesel::Connection;
            conn.transaction(|conn| store::totp::enrolment(conn, &keyring, user_id))
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
        super::totp::otpauth_uri(&secret, subject)?
    };
    let (qr_side, qr_path) = if e.confirmed {
        (0, String::new())
    } else {
        super::totp::qr_svg(&otpauth)?
    };
    Ok(TotpPage {
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
    c: Settings,
    state: web::Data<AppState>,
) -> Result<HttpResponse, AppError> {
    match gate::gate(&req, &state, c.lifetimes, Stage::Totp).await {
        Err(Refusal::Error(e)) => Err(e),
        Err(refusal) => Ok(refusal.into_response()),
        Ok((s, user, _, subject)) => Ok(totp_page(&state, &s, &user, &subject, "")
            .await?
            .respond_to(&req)
            .map_into_boxed_body()),
    }
}

#[derive(Template, WebTemplate)]
#[template(path = "console/recovery_codes.html")]
pub struct RecoveryCodesPage {
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
    c: Settings,
    state: web::Data<AppState>,
    form: web::Form<TotpForm>,
) -> Result<HttpResponse, AppError> {
    let (s, user, subject) = match gate::gate(&req, &state, c.lifetimes, Stage::Totp).await {
        Err(Refusal::Error(e)) => return Err(e),
        // A POST without a session at this step is refused, not redirected.
        Err(Refusal::SeeOther { .. }) => {
            return Err(AppError::client(
                StatusCode::FORBIDDEN,
                "The form could not be accepted: your sign-in session has ended. Sign in again.",
            ));
        }
        Ok((s, user, _, subject)) => (s, user, subject),
    };
    // From here on a refused form (bad CSRF token) is recorded as this user.
    let audit = recorder::user(&state, &req, &user, AuthMethod::Session);
    check_post(&req, &s, form.csrf_token.as_deref())?;
    let code = zeroize::Zeroizing::new(form.code.clone().unwrap_or_default());
    let keyring = state.keyring.clone();
    let lockout = c.totp_lockout;
    let user_id = user.id;
    let now = state.clock.now();
    let (was_confirmed, result) = state
        .db
        .run(move |conn| {
            use diesel::Connection;
            conn.transaction(|conn| {
                let confirmed = store::totp::is_confirmed(conn, user_id)?;
                let check = if recovery::looks_like(&code) {
                    store::totp::check_recovery(conn, &keyring, user_id, &code, lockout, now)?
                } else {
                    store::totp::check(conn, &keyring, user_id, &code, lockout, now)?
                };
                Ok((confirmed, check))
            })
        })
        .await?;
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
            let now = state.clock.now();
            let (id, codes) = state
                .db
                .run(move |conn| {
                    if let Some(codes) = &codes {
                        store::recovery::replace(conn, user_id, codes)?;
                    }
                    let id = store::session::advance(conn, &old, Stage::Active, user_id, now)?;
                    Ok((id, codes))
                })
                .await?;
            // The second factor of the sign-in: a sign-in event, now with MFA (a later
            // code for a sensitive change is the step-up).
            recorder::user(&state, &req, &user, AuthMethod::SessionMfa)
                .session(AuditAction::Login, Outcome::Permit)
                .await?;
            let mut res = match codes {
                Some(codes) => RecoveryCodesPage {
                    codes: codes.iter().map(|c| c.text.to_string()).collect(),
                }
                .respond_to(&req)
                .map_into_boxed_body(),
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
            audit
                .session(AuditAction::LoginFailed, Outcome::Deny(reason))
                .await?;
            let message = if locked {
                super::TOTP_LOCKED
            } else {
                "That code was not accepted. Enter the current code from your authenticator app."
            };
            Ok(totp_page(&state, &s, &user, &subject, message)
                .await?
                .respond_to(&req)
                .map_into_boxed_body())
        }
        Check::Locked => {
            audit
                .session(
                    AuditAction::LoginFailed,
                    Outcome::Deny(DenyReason::RateLimited),
                )
                .await?;
            Ok(totp_page(&state, &s, &user, &subject, super::TOTP_LOCKED)
                .await?
                .respond_to(&req)
                .map_into_boxed_body())
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
    page: ConsoleForm,
    form: web::Form<LogoutForm>,
) -> Result<HttpResponse, AppError> {
    check_post(&req, &page.me.session, form.csrf_token.as_deref())?;
    let hash = page.me.session.id_hash.clone();
    page.state
        .db
        .run(move |conn| store::session::destroy(conn, &hash))
        .await?;
    page.audit
        .session(AuditAction::Logout, Outcome::Permit)
        .await?;
    Ok(to_sign_in(true))
}
