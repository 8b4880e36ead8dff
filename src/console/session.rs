//! Server-side console sessions: what a session is and its cookie. The cookie carries 256
//! random bits; the database keeps only their SHA-256, the stage, the user and the CSRF
//! token ([`super::store::session`], which enforces the idle and absolute timeouts on
//! every lookup; sign-in steps issue a new id).

use actix_web::HttpRequest;
use actix_web::cookie::{Cookie, SameSite};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Duration, Utc};
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
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Stage::PreLogin => "pre_login",
            Stage::Totp => "totp",
            Stage::Active => "active",
        }
    }
    pub(crate) fn parse(s: &str) -> Option<Stage> {
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

/// What the database keeps of a session id.
pub(crate) fn hash(id: &str) -> Vec<u8> {
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
