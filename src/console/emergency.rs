//! Emergency console accounts (HIPAA emergency access procedure): local accounts for when
//! the OpenID provider is down. Each is a user (issuer [`ISSUER`], subject = the account
//! name) holding the admin role, signed in at `/console/emergency` with an argon2id
//! password and the user's TOTP. Created and disabled with `custodian admin …`; disabling
//! the user in the console stops it too. Every emergency sign-in is a high-severity audit
//! event.
//!
//! The sign-in never reveals whether a name exists: an unknown name is verified against
//! [`password::DUMMY_HASH`], so unknown name, wrong password and disabled account take
//! the same path, the same time and get the same answer.

use super::gate::{self, check_origin, see_other};
use super::recorder::{self, ConsoleEvents, role_codes};
use super::session::{self, Stage};
use super::settings::Settings;
use super::store;
use super::totp::Check;
use crate::audit::{AuditAction, AuthMethod, DenyReason, Outcome, ResourceType as Kind, What};
use crate::crypto::password;
use crate::db::users;
use crate::error::AppError;
use crate::state::AppState;
use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, Responder, web};
use askama::Template;
use askama_web::WebTemplate;
use diesel::Connection;
use zeroize::Zeroizing;

/// The issuer of every emergency account's user (never a real provider's issuer).
pub const ISSUER: &str = "urn:custodian:emergency";
pub const MIN_PASSWORD_CHARS: usize = 15;
/// Longer input is refused before hashing (bounds the work per attempt).
pub const MAX_PASSWORD_BYTES: usize = 1024;

/// The key of the global ceiling on emergency sign-in attempts (all addresses together).
const GLOBAL_KEY: &str = "all";
/// The global ceiling is this many times the per-address limit.
pub const GLOBAL_CEILING_FACTOR: u32 = 20;

pub const SIGN_IN_FAILED: &str = "Emergency sign-in failed: the name, password or code is not right, or the account is disabled. Every attempt is recorded.";

/// A validated emergency account name: 1–64 of `a-z 0-9 . _ -`, starting with a letter
/// or digit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AccountName(pub(crate) String);

impl AccountName {
    pub fn parse(s: &str) -> Option<AccountName> {
        let ok = (1..=64).contains(&s.len())
            && s.bytes().enumerate().all(|(i, b)| {
                b.is_ascii_lowercase()
                    || b.is_ascii_digit()
                    || (i > 0 && matches!(b, b'.' | b'_' | b'-'))
            });
        ok.then(|| AccountName(s.to_string()))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A new emergency password: at least [`MIN_PASSWORD_CHARS`] characters. Its Debug
/// never prints it.
pub struct NewPassword(Zeroizing<String>);

impl std::fmt::Debug for NewPassword {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NewPassword([redacted])")
    }
}

impl NewPassword {
    pub fn parse(s: Zeroizing<String>) -> Result<NewPassword, &'static str> {
        if s.chars().count() < MIN_PASSWORD_CHARS {
            return Err("the password must have at least 15 characters");
        }
        if s.len() > MAX_PASSWORD_BYTES {
            return Err("the password must have at most 1024 bytes");
        }
        Ok(NewPassword(s))
    }
    /// The argon2id hash (CPU-heavy).
    pub fn hash(&self) -> Result<String, AppError> {
        password::hash(self.0.as_bytes())
    }
}

#[derive(Template, WebTemplate)]
#[template(path = "console/emergency.html")]
pub struct EmergencyPage {
    message: &'static str,
}

/// GET /console/emergency: the emergency sign-in form.
pub async fn form(_: Settings) -> EmergencyPage {
    EmergencyPage { message: "" }
}

#[derive(serde::Deserialize)]
pub struct SignInForm {
    name: Option<String>,
    password: Option<String>,
    code: Option<String>,
}

/// The one answer to every failed emergency sign-in.
fn failed(req: &HttpRequest) -> HttpResponse {
    let mut res = EmergencyPage {
        message: SIGN_IN_FAILED,
    }
    .respond_to(req)
    .map_into_boxed_body();
    if res.status().is_success() {
        *res.status_mut() = StatusCode::UNAUTHORIZED;
    }
    res.extensions_mut().insert(crate::web::render::OwnPage);
    res
}

/// POST /console/emergency: name + password + TOTP code → an admin session.
pub async fn sign_in(
    req: HttpRequest,
    c: Settings,
    state: web::Data<AppState>,
    form: web::Form<SignInForm>,
) -> Result<HttpResponse, AppError> {
    // No session exists yet to carry a form token: the Origin check guards this form.
    check_origin(&req)?;
    let form = form.into_inner();
    let name = form.name.unwrap_or_default();
    let pass = Zeroizing::new(form.password.unwrap_or_default());
    let code = Zeroizing::new(form.code.unwrap_or_default());
    if c.emergency_attempts_per_minute > 0 {
        let per_minute = c.emergency_attempts_per_minute;
        // Keyed by the source address, not the account name: a flood of a name from other
        // addresses must not lock its holder out. The global ceiling bounds a flood from
        // many addresses; reaching it is an alert.
        let keys = [
            (format!("ip:{}", gate::client_addr(&req)), per_minute),
            (
                GLOBAL_KEY.to_string(),
                per_minute.saturating_mul(GLOBAL_CEILING_FACTOR),
            ),
        ];
        let now = state.clock.now();
        let limited = state
            .db
            .run(move |conn| store::attempts::count(conn, &keys, now))
            .await?;
        if let Err((wait, over)) = limited {
            let global = over.contains(&1);
            let what = if global {
                tracing::error!(
                    alert = "emergency-sign-in-ceiling",
                    "emergency sign-in attempts from all addresses reached the global ceiling"
                );
                What::new(AuditAction::LoginFailed).on(Kind::EmergencyAccount)
            } else {
                What::new(AuditAction::LoginFailed).on(Kind::Session)
            };
            // Refused before any lookup: nobody is named in the event.
            recorder::anonymous(&state, &req)
                .deny(what, [], DenyReason::RateLimited)
                .await?;
            return Err(AppError::RateLimited {
                retry_after_secs: wait.max(1),
            });
        }
    }
    // An invalid name cannot exist: it skips the lookup but not the verification below.
    let lookup = AccountName::parse(&name).map(|n| n.0);
    let found = match lookup {
        Some(n) => {
            state
                .db
                .run(move |conn| store::emergency::find(conn, &n))
                .await?
        }
        None => None,
    };
    // The same argon2 verification whether the name exists or not.
    let hash = found
        .as_ref()
        .map_or_else(|| password::DUMMY_HASH.to_string(), |f| f.1.clone());
    let verified = web::block(move || {
        pass.len() <= MAX_PASSWORD_BYTES && password::verify(pass.as_bytes(), &hash)
    })
    .await
    .map_err(|_| AppError::internal("password verification cancelled"))?;
    let user_id = found.as_ref().map(|f| f.0);
    // Roles are withheld until the password and code are accepted.
    let audit = match user_id {
        Some(id) => {
            recorder::user_with_roles(&state, &req, id, Vec::new(), AuthMethod::EmergencyPassword)
        }
        None => recorder::anonymous(&state, &req),
    };
    let deny = |reason| audit.session(AuditAction::LoginFailed, Outcome::Deny(reason));
    let (Some(user_id), true, true) = (user_id, verified, found.as_ref().is_some_and(|f| f.2))
    else {
        deny(DenyReason::InvalidCredentials).await?;
        return Ok(failed(&req));
    };
    let keyring = state.keyring.clone();
    let lockout = c.totp_lockout;
    let now = state.clock.now();
    let check = state
        .db
        .run(move |conn| {
            conn.transaction(|conn| {
                store::totp::check(conn, &keyring, user_id, &code, lockout, now)
            })
        })
        .await?;
    if check != Check::Accepted {
        let reason = match check {
            Check::Rejected { locked: false } => DenyReason::InvalidCredentials,
            _ => DenyReason::RateLimited,
        };
        deny(reason).await?;
        return Ok(failed(&req));
    }
    let now = state.clock.now();
    let (id, user) = state
        .db
        .run(move |conn| {
            let id = store::session::start_signed_in(conn, Stage::Active, user_id, now)?;
            let user = users::by_id(conn, user_id)?;
            Ok((id, user))
        })
        .await?;
    let roles = user
        .as_ref()
        .map(|(u, _, _)| role_codes(u))
        .unwrap_or_default();
    recorder::user_with_roles(&state, &req, user_id, roles, AuthMethod::EmergencyPassword)
        .session(AuditAction::EmergencyLogin, Outcome::Permit)
        .await?;
    let mut res = see_other("/console");
    res.add_cookie(&session::cookie(id))
        .map_err(|_| AppError::internal("session cookie"))?;
    Ok(res)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn account_names_are_restricted() {
        for ok in ["a", "ops-1", "break.glass_2", "0day"] {
            assert!(AccountName::parse(ok).is_some(), "{ok}");
        }
        for bad in ["", "-x", ".x", "Admin", "a b", "é", &"a".repeat(65)] {
            assert!(AccountName::parse(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn passwords_need_15_characters_and_never_print() {
        let short = Zeroizing::new("fourteen chars".to_string());
        assert!(NewPassword::parse(short).is_err());
        let ok = NewPassword::parse(Zeroizing::new("fifteen chars!!".to_string())).unwrap();
        assert_eq!(format!("{ok:?}"), "NewPassword([redacted])");
        assert!(NewPassword::parse(Zeroizing::new("x".repeat(1025))).is_err());
    }
}
