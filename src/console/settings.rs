//! The console's settings at run time ([`Console`], built from `[console]`), registered
//! as app data of their own — not part of the shared application state, so the state
//! does not depend on the console. Handlers take [`Settings`]; a server without a
//! `[console]` section answers 404 on every console route.

use super::config::ConsoleConfig;
use super::oidc;
use super::session::Lifetimes;
use crate::error::AppError;
use actix_web::dev::Payload;
use actix_web::http::StatusCode;
use actix_web::{FromRequest, HttpRequest, web};
use std::future::{Ready, ready};

/// What the console needs at run time.
pub struct Console {
    pub oidc: oidc::Oidc,
    pub lifetimes: Lifetimes,
    pub totp_lockout: chrono::Duration,
    /// How recent a TOTP check must be for a sensitive action (`console.step_up_secs`).
    pub step_up: chrono::Duration,
    /// Emergency sign-in attempts per minute per source address (all addresses together:
    /// 20 times this), counted in the database (shared by every instance).
    pub emergency_attempts_per_minute: u32,
    /// Peers whose forwarded-host headers the Origin check believes
    /// (`console.trusted_proxies`).
    pub trusted_proxies: Vec<std::net::IpAddr>,
}

impl Console {
    pub fn new(config: &ConsoleConfig) -> Result<Console, AppError> {
        let secs = |s: u64| chrono::Duration::seconds(i64::try_from(s).unwrap_or(i64::MAX / 1000));
        Ok(Console {
            lifetimes: Lifetimes {
                idle: secs(config.idle_timeout_secs),
                absolute: secs(config.absolute_timeout_secs),
            },
            totp_lockout: secs(config.totp_lockout_secs),
            step_up: secs(config.step_up_secs),
            emergency_attempts_per_minute: u32::try_from(config.emergency_attempts_per_minute)
                .unwrap_or(u32::MAX),
            trusted_proxies: config
                .trusted_proxies
                .iter()
                .filter_map(|p| p.trim().parse().ok())
                .collect(),
            oidc: oidc::Oidc::new(config.clone())?,
        })
    }
}

/// The console settings of this server, as a handler extracts them.
#[derive(Clone)]
pub struct Settings(pub web::Data<Console>);

impl std::ops::Deref for Settings {
    type Target = Console;
    fn deref(&self) -> &Console {
        &self.0
    }
}

pub fn not_configured() -> AppError {
    AppError::client(
        StatusCode::NOT_FOUND,
        "The admin console is not configured on this server (no [console] settings).",
    )
}

impl Settings {
    pub fn of(req: &HttpRequest) -> Result<Settings, AppError> {
        req.app_data::<web::Data<Console>>()
            .cloned()
            .map(Settings)
            .ok_or_else(not_configured)
    }
}

impl FromRequest for Settings {
    type Error = AppError;
    type Future = Ready<Result<Settings, AppError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        ready(Settings::of(req))
    }
}
