//! The console's gate: who is signed in, checked fresh on every request (session from
//! the database, roles from the database, admission by [`policy::admin`]), as extractors
//! whose rejection IS the answer — a page handler that takes [`ConsolePage`] or
//! [`AdminPage`] only runs for a signed-in console user (resp. an administrator), so
//! "admin-only" is a type, not a call each page must remember.
//!
//! - [`ConsolePage`] / [`AdminPage`]: pages (GET). Not signed in → the sign-in redirect;
//!   AdminPage without the admin role → 403.
//! - [`ConsoleForm`] / [`AdminForm`]: form posts. Not signed in → 403 (a POST is refused,
//!   not redirected); the handler checks the CSRF token and Origin with [`check_post`].
//!
//! Each carries the page chrome, the state, the console settings and the request's
//! [`Recorder`] (the audit recorder, as this user: session + MFA).

use super::recorder::{self, ConsoleEvents};
use super::session::{self, Lifetimes, Session, Stage};
use super::settings::Settings;
use super::store;
use crate::admin::AdminActor;
use crate::audit::{
    AuditAction, AuthMethod, DenyReason, Outcome, Recorder, ResourceType as Kind, What,
};
use crate::db::users::{self, UserRecord};
use crate::domain::{PatientId, UserId};
use crate::error::AppError;
use crate::policy::{self, admin::ConsoleArea};
use crate::state::AppState;
use actix_web::dev::Payload;
use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderValue};
use actix_web::{FromRequest, HttpRequest, HttpResponse, ResponseError, web};
use futures_util::future::LocalBoxFuture;
use subtle::ConstantTimeEq;
use uuid::Uuid;

pub const SIGN_IN_PATH: &str = "/console/signin";

pub fn see_other(location: &str) -> HttpResponse {
    let mut res = HttpResponse::SeeOther().finish();
    if let Ok(v) = HeaderValue::from_str(location) {
        res.headers_mut().insert(header::LOCATION, v);
    }
    res
}

pub fn to_sign_in(clear_cookie: bool) -> HttpResponse {
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

/// Why the gate did not let a request through: a redirect (to the sign-in page or the
/// sign-in step the session is at) or an error (403 for forms and admin-only pages).
#[derive(Debug)]
pub enum Refusal {
    SeeOther {
        to: &'static str,
        clear_cookie: bool,
    },
    Error(AppError),
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::SeeOther { to, .. } => write!(f, "see {to}"),
            Refusal::Error(e) => e.fmt(f),
        }
    }
}

impl ResponseError for Refusal {
    fn status_code(&self) -> StatusCode {
        match self {
            Refusal::SeeOther { .. } => StatusCode::SEE_OTHER,
            Refusal::Error(e) => e.status_code(),
        }
    }

    fn error_response(&self) -> HttpResponse {
        match self {
            Refusal::SeeOther { to, clear_cookie } if *to == SIGN_IN_PATH => {
                to_sign_in(*clear_cookie)
            }
            Refusal::SeeOther { to, .. } => see_other(to),
            Refusal::Error(e) => e.error_response(),
        }
    }
}

impl From<AppError> for Refusal {
    fn from(e: AppError) -> Refusal {
        Refusal::Error(e)
    }
}

impl Refusal {
    /// The response, for handlers that gate by hand (the sign-in steps).
    pub fn into_response(self) -> HttpResponse {
        self.error_response()
    }
}

/// Loads the session at stage `want` and the user's roles fresh from the database. A
/// session whose user lost every console role or was disabled is destroyed.
pub async fn gate(
    req: &HttpRequest,
    state: &AppState,
    life: Lifetimes,
    want: Stage,
) -> Result<(Session, UserRecord, String, String), Refusal> {
    let Some(id) = session::presented(req) else {
        return Err(Refusal::SeeOther {
            to: SIGN_IN_PATH,
            clear_cookie: false,
        });
    };
    let now = state.clock.now();
    let found = state
        .db
        .run(move |conn| {
            let Some(s) = store::session::load(conn, &id, &life, now)? else {
                return Ok(None);
            };
            let Some(user_id) = s.user_id else {
                return Ok(Some((s, None)));
            };
            let user = users::by_id(conn, user_id.into())?;
            let admitted = user
                .as_ref()
                .is_some_and(|(u, _, _)| policy::admin::console_admission(&u.roles, u.disabled));
            if !admitted {
                store::session::destroy(conn, &s.id_hash)?;
                return Ok(None);
            }
            Ok(Some((s, user)))
        })
        .await?;
    match found {
        Some((s, Some((user, issuer, subject)))) if s.stage == want => {
            Ok((s, user, issuer, subject))
        }
        Some((s, Some(_))) if s.stage == Stage::Totp => Err(Refusal::SeeOther {
            to: "/console/totp",
            clear_cookie: false,
        }),
        Some((s, Some(_))) if s.stage == Stage::Active => Err(Refusal::SeeOther {
            to: "/console",
            clear_cookie: false,
        }),
        _ => Err(Refusal::SeeOther {
            to: SIGN_IN_PATH,
            clear_cookie: true,
        }),
    }
}

/// What every page shows around its content: who is signed in, how long the session has
/// left, and the CSRF token for the sign-out form.
pub struct Chrome {
    pub subject: String,
    pub minutes_left: i64,
    pub seconds_left: i64,
    pub csrf_token: String,
    pub admin: bool,
}

impl Chrome {
    /// The chrome for `me` at `now` (the app's clock).
    pub fn of(me: &SignedIn, life: &Lifetimes, now: chrono::DateTime<chrono::Utc>) -> Chrome {
        let left = me.session.seconds_left(life, now);
        Chrome {
            subject: me.subject.clone(),
            minutes_left: left / 60,
            seconds_left: left % 60,
            csrf_token: me.session.csrf_token.clone(),
            admin: policy::admin::console_area(&me.user.roles, ConsoleArea::AdminOnly).is_ok(),
        }
    }
}

/// A request of a signed-in console user (OIDC done, TOTP done, console role held now).
pub struct Console {
    pub me: SignedIn,
    pub chrome: Chrome,
    pub state: web::Data<AppState>,
    pub settings: Settings,
    /// Records this request's events as this user (session + MFA).
    pub audit: Recorder,
}

/// A signed-in console user is who performs a console change: the type guarantees there
/// is one, so every change records its administrator.
impl AdminActor for Console {
    fn user_id(&self) -> UserId {
        self.me.user.id
    }

    fn now(&self) -> chrono::DateTime<chrono::Utc> {
        self.state.clock.now()
    }

    fn allow_private_webhook_hosts(&self) -> bool {
        self.state.allow_private_webhook_hosts
    }

    fn keyring(&self) -> Option<std::sync::Arc<crate::crypto::Keyring>> {
        Some(self.state.keyring.clone())
    }

    async fn record(
        &self,
        action: AuditAction,
        resource: Option<(Kind, Option<Uuid>)>,
        patients: Vec<PatientId>,
        outcome: Outcome,
    ) -> Result<(), AppError> {
        self.audit.admin(action, resource, patients, outcome).await
    }
}

/// What to answer when there is no signed-in session.
#[derive(Clone, Copy)]
enum Missing {
    Redirect,
    Forbidden,
}

fn session_ended() -> AppError {
    AppError::client(
        StatusCode::FORBIDDEN,
        "The form could not be accepted: you are not signed in (or your session ended). Sign in again.",
    )
}

fn admin_only() -> AppError {
    AppError::client(
        StatusCode::FORBIDDEN,
        "This part of the console needs the admin role.",
    )
}

fn admit(
    req: &HttpRequest,
    area: ConsoleArea,
    missing: Missing,
) -> LocalBoxFuture<'static, Result<Console, Refusal>> {
    let req = req.clone();
    Box::pin(async move {
        let settings = Settings::of(&req)?;
        let state = req
            .app_data::<web::Data<AppState>>()
            .cloned()
            .ok_or_else(|| AppError::internal("app state missing"))?;
        let life = settings.lifetimes;
        // What a refused request was about: a page (read) or a form (a change).
        let what = match missing {
            Missing::Redirect => What::new(AuditAction::Read),
            Missing::Forbidden => What::new(AuditAction::PermissionChange),
        };
        let (session, user, issuer, subject) = match gate(&req, &state, life, Stage::Active).await {
            Ok(found) => found,
            Err(Refusal::SeeOther { .. }) if matches!(missing, Missing::Forbidden) => {
                recorder::anonymous(&state, &req)
                    .deny(what, [], DenyReason::NotAuthenticated)
                    .await?;
                return Err(session_ended().into());
            }
            Err(refusal) => return Err(refusal),
        };
        let audit = recorder::user(&state, &req, &user, AuthMethod::SessionMfa);
        if policy::admin::console_area(&user.roles, area).is_err() {
            // A console user at a part of the console their role does not open (a privacy
            // officer at an administration page or form): refused, and recorded as them.
            audit.deny(what, [], DenyReason::MissingRole).await?;
            return Err(admin_only().into());
        }
        let me = SignedIn {
            session,
            user,
            issuer,
            subject,
        };
        Ok(Console {
            chrome: Chrome::of(&me, &life, state.clock.now()),
            me,
            state,
            settings,
            audit,
        })
    })
}

macro_rules! gate_extractor {
    ($(#[$doc:meta] $name:ident: $area:expr, $missing:expr;)*) => {$(
        #[$doc]
        pub struct $name(pub Console);

        impl std::ops::Deref for $name {
            type Target = Console;
            fn deref(&self) -> &Console {
                &self.0
            }
        }

        impl FromRequest for $name {
            type Error = Refusal;
            type Future = LocalBoxFuture<'static, Result<$name, Refusal>>;

            fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
                let admitted = admit(req, $area, $missing);
                Box::pin(async move { admitted.await.map($name) })
            }
        }
    )*};
}

gate_extractor! {
    /// A console page any console user may open; else the sign-in redirect.
    ConsolePage: ConsoleArea::Any, Missing::Redirect;
    /// An administration page; not signed in → the sign-in redirect, no admin role → 403.
    AdminPage: ConsoleArea::AdminOnly, Missing::Redirect;
    /// A form any console user may post (sign-out); not signed in → 403.
    ConsoleForm: ConsoleArea::Any, Missing::Forbidden;
    /// An administration form (every change); not signed in or no admin role → 403.
    AdminForm: ConsoleArea::AdminOnly, Missing::Forbidden;
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

/// Is the peer one of the configured proxies (`console.trusted_proxies`)?
fn from_trusted_proxy(req: &HttpRequest) -> bool {
    req.peer_addr()
        .is_some_and(|peer| Settings::of(req).is_ok_and(|c| c.trusted_proxies.contains(&peer.ip())))
}

/// The browser's address for the console's per-address limits: the peer, or — only
/// behind a configured proxy — the client address the proxy forwarded.
pub fn client_addr(req: &HttpRequest) -> String {
    let peer = req.peer_addr().map(|a| a.ip().to_string());
    if from_trusted_proxy(req)
        && let Some(real) = req.connection_info().realip_remote_addr()
    {
        return real.to_string();
    }
    peer.unwrap_or_default()
}

/// The host this request was sent to: the `Host` header (or the HTTP/2 authority) — or,
/// only when the peer is a configured proxy (`console.trusted_proxies`), the host a
/// `Forwarded` / `X-Forwarded-Host` header names. From anyone else those headers are the
/// client's own words and would let a forged form name its own origin as ours.
fn own_host(req: &HttpRequest) -> String {
    if from_trusted_proxy(req) {
        return req.connection_info().host().to_string();
    }
    req.headers()
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .or_else(|| req.uri().authority().map(|a| a.to_string()))
        .unwrap_or_default()
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
    let own = format!("https://{}", own_host(req));
    let public = req
        .app_data::<web::Data<AppState>>()
        .map(|s| s.public_origin.clone())
        .unwrap_or_default();
    if origin != own && origin != public {
        return Err(forbidden_form());
    }
    Ok(())
}
