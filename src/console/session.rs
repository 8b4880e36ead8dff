//! Server-side console sessions in PostgreSQL. The cookie carries 256 random bits; the
//! database keeps only their SHA-256, the stage, the user and the CSRF token. Every
//! lookup enforces the idle and absolute timeouts; sign-in steps issue a new id.

use crate::db::schema::console_sessions as cs;
use crate::error::AppError;
use actix_web::HttpRequest;
use actix_web::cookie::{Cookie, SameSite};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Duration, Utc};
use diesel::prelude::*;
use rand::RngCore;
use sha2::{Digest, Sha256};
use uuid::Uuid;

pub const COOKIE: &str = "__Host-custodian";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    PreLogin,
    Totp,
    Active,
}

impl Stage {
    fn as_str(self) -> &'static str {
        match self {
            Stage::PreLogin => "pre_login",
            Stage::Totp => "totp",
            Stage::Active => "active",
        }
    }
    fn parse(s: &str) -> Option<Stage> {
        match s {
            "pre_login" => Some(Stage::PreLogin),
            "totp" => Some(Stage::Totp),
            "active" => Some(Stage::Active),
            _ => None,
        }
    }
}

/// Timeouts of every session.
#[derive(Clone, Copy, Debug)]
pub struct Lifetimes {
    pub idle: Duration,
    pub absolute: Duration,
}

/// A live session as loaded for one request.
#[derive(Clone, Debug)]
pub struct Session {
    pub id_hash: Vec<u8>,
    pub stage: Stage,
    pub user_id: Option<Uuid>,
    pub csrf_token: String,
    pub oidc_state: Option<String>,
    pub oidc_nonce: Option<String>,
    pub pkce_verifier: Option<String>,
    pub created_at: DateTime<Utc>,
    pub last_seen_at: DateTime<Utc>,
}

impl Session {
    /// Seconds until the session ends if unused (the smaller of idle and absolute).
    pub fn seconds_left(&self, life: &Lifetimes, now: DateTime<Utc>) -> i64 {
        let idle_end = self.last_seen_at + life.idle;
        let abs_end = self.created_at + life.absolute;
        (idle_end.min(abs_end) - now).num_seconds().max(0)
    }
}

/// 256 random bits, base64url.
pub fn random_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

fn hash(id: &str) -> Vec<u8> {
    Sha256::digest(id.as_bytes()).to_vec()
}

/// The `Set-Cookie` for a session id: `__Host-` prefix, Secure, HttpOnly, SameSite=Strict,
/// Path=/, no Domain, no Max-Age (the server decides when it ends).
pub fn cookie(id: String) -> Cookie<'static> {
    Cookie::build(COOKIE, id)
        .secure(true)
        .http_only(true)
        .same_site(SameSite::Strict)
        .path("/")
        .finish()
}

/// The `Set-Cookie` for a pre-login session (state, nonce and PKCE verifier only, no
/// authority): like [`cookie`] but SameSite=Lax, because the provider sends the browser
/// back to the callback from another site, and browsers withhold Strict cookies there.
/// The callback replaces it with a Strict one.
pub fn pre_login_cookie(id: String) -> Cookie<'static> {
    let mut c = cookie(id);
    c.set_same_site(SameSite::Lax);
    c
}

/// A cookie that removes the session cookie from the browser.
pub fn removal() -> Cookie<'static> {
    let mut c = cookie(String::new());
    c.make_removal();
    c
}

/// The session id the request presents, if any.
pub fn presented(req: &HttpRequest) -> Option<String> {
    req.cookie(COOKIE)
        .map(|c| c.value().to_string())
        .filter(|v| !v.is_empty() && v.len() <= 128)
}

type Row = (
    Vec<u8>,
    String,
    Option<Uuid>,
    String,
    Option<String>,
    Option<String>,
    Option<String>,
    DateTime<Utc>,
    DateTime<Utc>,
);

/// Loads the live session for `id`, refreshing its idle timer; an expired one is deleted.
pub fn load(
    conn: &mut PgConnection,
    id: &str,
    life: &Lifetimes,
) -> Result<Option<Session>, AppError> {
    let id_hash = hash(id);
    let now = Utc::now();
    let row: Option<Row> = diesel::update(
        cs::table.filter(
            cs::id_hash
                .eq(&id_hash)
                .and(cs::last_seen_at.gt(now - life.idle))
                .and(cs::created_at.gt(now - life.absolute)),
        ),
    )
    .set(cs::last_seen_at.eq(now))
    .returning((
        cs::id_hash,
        cs::stage,
        cs::user_id,
        cs::csrf_token,
        cs::oidc_state,
        cs::oidc_nonce,
        cs::pkce_verifier,
        cs::created_at,
        cs::last_seen_at,
    ))
    .get_result(conn)
    .optional()?;
    let Some(r) = row else {
        diesel::delete(cs::table.filter(cs::id_hash.eq(&id_hash))).execute(conn)?;
        return Ok(None);
    };
    let stage = Stage::parse(&r.1).ok_or_else(|| AppError::internal("unknown session stage"))?;
    Ok(Some(Session {
        id_hash: r.0,
        stage,
        user_id: r.2,
        csrf_token: r.3,
        oidc_state: r.4,
        oidc_nonce: r.5,
        pkce_verifier: r.6,
        created_at: r.7,
        last_seen_at: r.8,
    }))
}

/// Starts a pre-login session holding the OIDC state, nonce and PKCE verifier; returns
/// the new session id (for the cookie). Expired sessions of anyone are swept here.
pub fn start_pre_login(
    conn: &mut PgConnection,
    life: &Lifetimes,
    state: &str,
    nonce: &str,
    verifier: &str,
) -> Result<String, AppError> {
    sweep(conn, life)?;
    let id = random_token();
    diesel::insert_into(cs::table)
        .values((
            cs::id_hash.eq(hash(&id)),
            cs::stage.eq(Stage::PreLogin.as_str()),
            cs::csrf_token.eq(random_token()),
            cs::oidc_state.eq(state),
            cs::oidc_nonce.eq(nonce),
            cs::pkce_verifier.eq(verifier),
        ))
        .execute(conn)?;
    Ok(id)
}

/// A new session for a user who just signed in with OIDC (a fresh id, never the
/// pre-login one). Returns the new id.
pub fn start_signed_in(
    conn: &mut PgConnection,
    stage: Stage,
    user_id: Uuid,
) -> Result<String, AppError> {
    let id = random_token();
    diesel::insert_into(cs::table)
        .values((
            cs::id_hash.eq(hash(&id)),
            cs::stage.eq(stage.as_str()),
            cs::user_id.eq(Some(user_id)),
            cs::csrf_token.eq(random_token()),
        ))
        .execute(conn)?;
    Ok(id)
}

/// Moves a session to `stage` for `user_id` under a new id and a new CSRF token; the old
/// id stops working at once, the OIDC values are erased. Returns the new id.
pub fn advance(
    conn: &mut PgConnection,
    old_hash: &[u8],
    stage: Stage,
    user_id: Uuid,
) -> Result<String, AppError> {
    let id = random_token();
    let changed = diesel::update(cs::table.filter(cs::id_hash.eq(old_hash)))
        .set((
            cs::id_hash.eq(hash(&id)),
            cs::stage.eq(stage.as_str()),
            cs::user_id.eq(Some(user_id)),
            cs::csrf_token.eq(random_token()),
            cs::oidc_state.eq(None::<String>),
            cs::oidc_nonce.eq(None::<String>),
            cs::pkce_verifier.eq(None::<String>),
            // Reaching (or renewing) the active stage means a TOTP code was just accepted.
            cs::totp_at.eq((stage == Stage::Active).then(Utc::now)),
        ))
        .execute(conn)?;
    if changed != 1 {
        return Err(AppError::internal("session vanished while advancing"));
    }
    Ok(id)
}

/// Ends one session.
pub fn destroy(conn: &mut PgConnection, id_hash: &[u8]) -> Result<(), AppError> {
    diesel::delete(cs::table.filter(cs::id_hash.eq(id_hash))).execute(conn)?;
    Ok(())
}

/// When the session last passed a TOTP check (sign-in or step-up), if ever.
pub fn totp_at(conn: &mut PgConnection, id_hash: &[u8]) -> Result<Option<DateTime<Utc>>, AppError> {
    Ok(cs::table
        .filter(cs::id_hash.eq(id_hash))
        .select(cs::totp_at)
        .first::<Option<DateTime<Utc>>>(conn)
        .optional()?
        .flatten())
}

/// A session as the console lists it (no id): stage, started, last used.
pub type Listed = (String, DateTime<Utc>, DateTime<Utc>);

/// A user's live sessions, newest first.
pub fn list_of_user(
    conn: &mut PgConnection,
    user_id: Uuid,
    life: &Lifetimes,
) -> Result<Vec<Listed>, AppError> {
    let now = Utc::now();
    Ok(cs::table
        .filter(
            cs::user_id
                .eq(user_id)
                .and(cs::last_seen_at.gt(now - life.idle))
                .and(cs::created_at.gt(now - life.absolute)),
        )
        .select((cs::stage, cs::created_at, cs::last_seen_at))
        .order(cs::created_at.desc())
        .load(conn)?)
}

/// Deletes every expired session.
pub fn sweep(conn: &mut PgConnection, life: &Lifetimes) -> Result<(), AppError> {
    let now = Utc::now();
    diesel::delete(
        cs::table.filter(
            cs::last_seen_at
                .le(now - life.idle)
                .or(cs::created_at.le(now - life.absolute)),
        ),
    )
    .execute(conn)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_ids_are_256_bit_and_hashed() {
        let id = random_token();
        assert_eq!(URL_SAFE_NO_PAD.decode(&id).map(|b| b.len()).ok(), Some(32));
        assert_ne!(random_token(), id);
        assert_eq!(hash(&id).len(), 32);
    }

    #[test]
    fn cookie_has_host_prefix_flags() {
        let c = cookie("x".into()).to_string();
        for part in [
            "__Host-custodian=x",
            "HttpOnly",
            "SameSite=Strict",
            "Secure",
            "Path=/",
        ] {
            assert!(c.contains(part), "{c} lacks {part}");
        }
        assert!(!c.contains("Domain"));
    }

    #[test]
    fn pre_login_cookie_differs_only_in_same_site_lax() {
        let c = pre_login_cookie("x".into()).to_string();
        assert_eq!(c, cookie("x".into()).to_string().replace("Strict", "Lax"));
        assert!(c.contains("SameSite=Lax"), "{c}");
    }
}
