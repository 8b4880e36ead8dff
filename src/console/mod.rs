//! The server-rendered admin console.
//!
//! - [`config`]: the `[console]` settings section; [`settings`]: what the console needs
//!   at run time (app data of their own, not in the state).
//! - [`gate`]: who is signed in, as extractors ([`gate::ConsolePage`], [`gate::AdminPage`],
//!   and the form variants) whose rejection is the sign-in redirect or the 403.
//! - [`auth`]: OIDC sign-in, TOTP enrol/check and sign-out; [`emergency`]: the emergency
//!   sign-in; [`stepup`]: the TOTP check before a sensitive change.
//! - [`pages`]: the administration pages; every change is an [`crate::admin::Op`].
//! - [`recorder`]: the console's audit events, recorded through the one
//!   [`crate::audit::Recorder`] (`session` and `admin` sugar on top).
//! - [`store`]: every query on the console tables; [`session`], [`totp`] and [`recovery`]
//!   hold what a session, a TOTP code and a recovery code are.
//!
//! Pages are askama templates deriving `askama_web::WebTemplate`: a handler returns the
//! page (it is the response), or calls `respond_to` when it adds a cookie or a status.

pub mod auth;
pub mod config;
pub mod emergency;
pub mod gate;
pub mod oidc;
pub mod pages;
pub mod recorder;
pub mod recovery;
pub mod session;
pub mod settings;
pub mod stepup;
pub mod store;
pub mod totp;

use crate::error::AppError;
use actix_web::{HttpResponse, web};
use askama::Template;
use askama_web::WebTemplate;

pub const SIGN_IN_FAILED: &str = "Sign-in could not be completed (the request was not the one we started, or it expired). Start again from the sign-in page.";
pub const TOTP_LOCKED: &str = "Too many wrong codes: the code check is locked for a while. Try again later or ask an administrator.";

#[derive(Template, WebTemplate)]
#[template(path = "home.html")]
pub struct Home {
    dev: Option<web::Data<DevNotice>>,
}

/// What the home page adds under `custodian dev` (app data only there): the demo people
/// and the commands that go with them.
pub struct DevNotice {
    /// (person, roles, what they can do, whether they can use the console)
    pub people: Vec<(String, String, String, bool)>,
    /// Prints a development access token, e.g. `TOKEN=$(… dev-token --sub dr.demo)`.
    pub token_command: String,
    /// A first API call with that token.
    pub api_command: String,
    /// Prints a demo person's current TOTP code (without the person).
    pub totp_command: String,
}

/// GET /: the door of each kind of user (and, under `custodian dev`, who to be).
pub async fn home(dev: Option<web::Data<DevNotice>>) -> Home {
    Home { dev }
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
