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

use super::auth::{check_origin, console, role_codes, see_other};
use super::page;
use super::session::{self, Stage};
use super::totp::{self, Check};
use crate::audit::AuditContext;
use crate::audit::event::{Actor, AuditAction, AuthMethod, DenyReason, Outcome, ResourceType};
use crate::crypto::{Keyring, password};
use crate::db::schema::{emergency_accounts as ea, users as u};
use crate::db::users::{self, UserKind};
use crate::error::AppError;
use crate::policy::Role;
use crate::state::AppState;
use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use askama::Template;
use chrono::{DateTime, Utc};
use diesel::prelude::*;
use uuid::Uuid;
use zeroize::Zeroizing;

/// The issuer of every emergency account's user (never a real provider's issuer).
pub const ISSUER: &str = "urn:custodian:emergency";
pub const MIN_PASSWORD_CHARS: usize = 15;
/// Longer input is refused before hashing (bounds the work per attempt).
pub const MAX_PASSWORD_BYTES: usize = 1024;

pub const SIGN_IN_FAILED: &str = "Emergency sign-in failed: the name, password or code is not right, or the account is disabled. Every attempt is recorded.";

/// A validated emergency account name: 1–64 of `a-z 0-9 . _ -`, starting with a letter
/// or digit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AccountName(String);

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

/// What `create` made: the account and its TOTP secret for the operator's authenticator.
pub struct Created {
    pub account_id: Uuid,
    pub user_id: Uuid,
    pub totp_secret_base32: Zeroizing<String>,
    pub otpauth_uri: Zeroizing<String>,
}

/// Creates the account (with `password_hash` from [`NewPassword::hash`]): its user with
/// the admin role and an unconfirmed TOTP enrolment (confirmed by the first sign-in).
/// Refuses a name that exists, disabled or not.
pub fn create(
    conn: &mut PgConnection,
    keyring: &Keyring,
    name: &AccountName,
    password_hash: &str,
) -> Result<Result<Created, &'static str>, AppError> {
    conn.transaction(|conn| {
        let exists: i64 = ea::table
            .filter(ea::name.eq(name.as_str()))
            .count()
            .get_result(conn)?;
        if exists > 0 {
            return Ok(Err("an emergency account with this name exists already"));
        }
        let user = users::user_for(conn, ISSUER, name.as_str(), UserKind::Person)?;
        users::grant_role(
            conn,
            user.id,
            Role::Admin,
            "emergency access account (custodian admin create-emergency-account)",
            None,
        )?;
        let account_id = Uuid::new_v4();
        diesel::insert_into(ea::table)
            .values((
                ea::id.eq(account_id),
                ea::name.eq(name.as_str()),
                ea::user_id.eq(user.id),
                ea::password_hash.eq(password_hash),
            ))
            .execute(conn)?;
        let enrolment = totp::enrolment(conn, keyring, user.id)?;
        let secret = Zeroizing::new(enrolment.secret_base32());
        let uri = Zeroizing::new(totp::otpauth_uri(&secret, name.as_str())?);
        Ok(Ok(Created {
            account_id,
            user_id: user.id,
            totp_secret_base32: secret,
            otpauth_uri: uri,
        }))
    })
}

/// Disables (or enables) the account and its user; a disabled user's sessions end on
/// their next request. Returns the account id, `None` if there is no such account.
pub fn set_disabled(
    conn: &mut PgConnection,
    name: &AccountName,
    disabled: bool,
    reason: &str,
) -> Result<Option<Uuid>, AppError> {
    conn.transaction(|conn| {
        let row: Option<(Uuid, Uuid)> = ea::table
            .filter(ea::name.eq(name.as_str()))
            .select((ea::id, ea::user_id))
            .first(conn)
            .optional()?;
        let Some((id, user_id)) = row else {
            return Ok(None);
        };
        diesel::update(ea::table.find(id))
            .set(ea::disabled_at.eq(disabled.then(Utc::now)))
            .execute(conn)?;
        users::set_disabled(conn, user_id, disabled, reason, None)?;
        Ok(Some(id))
    })
}

/// The account for a sign-in: (user id, password hash, usable = neither it nor its user
/// is disabled).
fn find(conn: &mut PgConnection, name: &str) -> Result<Option<(Uuid, String, bool)>, AppError> {
    type Row = (Uuid, String, Option<DateTime<Utc>>, Option<DateTime<Utc>>);
    let row: Option<Row> = ea::table
        .inner_join(u::table.on(u::id.eq(ea::user_id)))
        .filter(ea::name.eq(name))
        .select((
            ea::user_id,
            ea::password_hash,
            ea::disabled_at,
            u::disabled_at,
        ))
        .first(conn)
        .optional()?;
    Ok(row.map(|(id, hash, a, b)| (id, hash, a.is_none() && b.is_none())))
}

#[derive(Template)]
#[template(path = "console/emergency.html")]
struct EmergencyPage {
    message: &'static str,
}

/// GET /console/emergency: the emergency sign-in form.
pub async fn form(state: web::Data<AppState>) -> Result<HttpResponse, AppError> {
    console(&state)?;
    page(&EmergencyPage { message: "" })
}

#[derive(serde::Deserialize)]
pub struct SignInForm {
    name: Option<String>,
    password: Option<String>,
    code: Option<String>,
}

/// The one answer to every failed emergency sign-in.
fn failed() -> Result<HttpResponse, AppError> {
    let html = EmergencyPage {
        message: SIGN_IN_FAILED,
    }
    .render()
    .map_err(|e| AppError::Internal(anyhow::Error::new(e).context("rendering")))?;
    let mut res = HttpResponse::build(StatusCode::UNAUTHORIZED)
        .content_type("text/html; charset=utf-8")
        .body(html);
    res.extensions_mut().insert(crate::web::render::OwnPage);
    Ok(res)
}

/// POST /console/emergency: name + password + TOTP code → an admin session.
pub async fn sign_in(
    req: HttpRequest,
    ctx: AuditContext,
    state: web::Data<AppState>,
    form: web::Form<SignInForm>,
) -> Result<HttpResponse, AppError> {
    let c = console(&state)?;
    // No session exists yet to carry a form token: the Origin check guards this form.
    check_origin(&req)?;
    let form = form.into_inner();
    let name = form.name.unwrap_or_default();
    let pass = Zeroizing::new(form.password.unwrap_or_default());
    let code = Zeroizing::new(form.code.unwrap_or_default());
    if let Some(limit) = &c.emergency_limit {
        let ip = req
            .peer_addr()
            .map(|a| a.ip().to_string())
            .unwrap_or_default();
        // The name key is the same whether or not the account exists.
        // Names longer than 64 are invalid anyway: the key stays bounded.
        let name_key: String = name.chars().take(65).collect::<String>().to_lowercase();
        for key in [format!("ip:{ip}"), format!("name:{name_key}")] {
            if let Err(wait) = limit.check(&key) {
                return Err(AppError::RateLimited {
                    retry_after_secs: wait.as_secs().max(1),
                });
            }
        }
    }
    // An invalid name cannot exist: it skips the lookup but not the verification below.
    let lookup = AccountName::parse(&name).map(|n| n.0);
    let found = match lookup {
        Some(n) => state.db.run(move |conn| find(conn, &n)).await?,
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
    let deny = |reason: DenyReason| {
        let actor = match user_id {
            Some(id) => Actor::user(id, Vec::new(), AuthMethod::EmergencyPassword),
            None => Actor::anonymous(),
        };
        ctx.event(actor, AuditAction::LoginFailed, Outcome::Deny(reason))
            .resource_type(ResourceType::Session)
            .build()
    };
    let (Some(user_id), true, true) = (user_id, verified, found.as_ref().is_some_and(|f| f.2))
    else {
        state
            .audit
            .record(deny(DenyReason::InvalidCredentials))
            .await?;
        return failed();
    };
    let keyring = state.keyring.clone();
    let lockout = chrono::Duration::seconds(i64::try_from(c.totp_lockout_secs).unwrap_or(900));
    let check = state
        .db
        .run(move |conn| {
            conn.transaction(|conn| totp::check(conn, &keyring, user_id, &code, lockout))
        })
        .await?;
    if check != Check::Accepted {
        let reason = match check {
            Check::Rejected { locked: false } => DenyReason::InvalidCredentials,
            _ => DenyReason::RateLimited,
        };
        state.audit.record(deny(reason)).await?;
        return failed();
    }
    let (id, user) = state
        .db
        .run(move |conn| {
            let id = session::start_signed_in(conn, Stage::Active, user_id)?;
            let user = users::by_id(conn, user_id)?;
            Ok((id, user))
        })
        .await?;
    let roles = user
        .as_ref()
        .map(|(u, _, _)| role_codes(u))
        .unwrap_or_default();
    let event = ctx
        .event(
            Actor::user(user_id, roles, AuthMethod::EmergencyPassword),
            AuditAction::EmergencyLogin,
            Outcome::Permit,
        )
        .resource_type(ResourceType::Session)
        .build();
    state.audit.record(event).await?;
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
