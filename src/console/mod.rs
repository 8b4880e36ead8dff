//! The server-rendered admin console: OIDC sign-in ([`auth`]), server-side sessions
//! ([`session`]), TOTP ([`totp`]) and the pages behind them.

pub mod auth;
pub mod config;
pub mod emergency;
pub mod oidc;
pub mod pages;
pub mod recovery;
pub mod session;
pub mod stepup;
pub mod totp;

use crate::console::config::ConsoleConfig;
use crate::error::AppError;
use crate::state::AppState;
use actix_web::{HttpRequest, HttpResponse, web};
use askama::Template;

pub const SIGN_IN_FAILED: &str = "Sign-in could not be completed (the request was not the one we started, or it expired). Start again from the sign-in page.";
pub const TOTP_LOCKED: &str = "Too many wrong codes: the code check is locked for a while. Try again later or ask an administrator.";

/// What the console needs at run time.
pub struct Console {
    pub oidc: oidc::Oidc,
    pub lifetimes: session::Lifetimes,
    pub totp_lockout_secs: u64,
    /// How recent a TOTP check must be for a sensitive action (`console.step_up_secs`).
    pub step_up: chrono::Duration,
    /// Emergency sign-in attempts per source address and per account name.
    pub emergency_limit: Option<crate::web::ratelimit::RateLimiter>,
}

impl Console {
    pub fn new(config: &ConsoleConfig) -> Result<Console, AppError> {
        let secs = |s: u64| chrono::Duration::seconds(i64::try_from(s).unwrap_or(i64::MAX / 1000));
        Ok(Console {
            lifetimes: session::Lifetimes {
                idle: secs(config.idle_timeout_secs),
                absolute: secs(config.absolute_timeout_secs),
            },
            totp_lockout_secs: config.totp_lockout_secs,
            step_up: secs(config.step_up_secs),
            emergency_limit: {
                let n = u32::try_from(config.emergency_attempts_per_minute).unwrap_or(u32::MAX);
                crate::web::ratelimit::RateLimiter::new(n, n)
            },
            oidc: oidc::Oidc::new(config.clone())?,
        })
    }
}

/// Renders a page as HTML.
pub fn page(t: &impl Template) -> Result<HttpResponse, AppError> {
    let html = t
        .render()
        .map_err(|e| AppError::Internal(anyhow::Error::new(e).context("rendering a page")))?;
    Ok(HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .body(html))
}

#[derive(Template)]
#[template(path = "console/dashboard.html")]
struct Dashboard {
    subject: String,
    issuer: String,
    roles: String,
    minutes_left: i64,
    seconds_left: i64,
    csrf_token: String,
}

/// GET /console: who is signed in and how long the session has left.
pub async fn dashboard(
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, AppError> {
    let me = match auth::signed_in(&req, &state).await? {
        auth::Gate::Redirect(r) => return Ok(r),
        auth::Gate::Pass(me) => me,
    };
    let life = state
        .console
        .as_ref()
        .map(|c| c.lifetimes)
        .ok_or_else(AppError::not_found)?;
    let left = me.session.seconds_left(&life, chrono::Utc::now());
    let roles: Vec<&str> = me.user.roles.iter().map(|r| r.as_str()).collect();
    page(&Dashboard {
        subject: me.subject,
        issuer: me.issuer,
        roles: roles.join(", "),
        minutes_left: left / 60,
        seconds_left: left % 60,
        csrf_token: me.session.csrf_token,
    })
}

#[derive(Template)]
#[template(path = "home.html")]
struct Home;

pub async fn home() -> Result<HttpResponse, AppError> {
    let html = Home
        .render()
        .map_err(|e| AppError::Internal(anyhow::Error::new(e).context("rendering home")))?;
    Ok(HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .body(html))
}

/// Static assets are compiled into the binary so a deployment is one file.
const STATIC_FILES: &[(&str, &str, &[u8])] = &[(
    "console.css",
    "text/css; charset=utf-8",
    include_bytes!("../../static/console.css"),
)];

pub async fn static_file(file: web::Path<String>) -> Result<HttpResponse, AppError> {
    let (_, content_type, bytes) = STATIC_FILES
        .iter()
        .find(|(name, _, _)| *name == file.as_str())
        .ok_or_else(AppError::not_found)?;
    Ok(HttpResponse::Ok().content_type(*content_type).body(*bytes))
}
