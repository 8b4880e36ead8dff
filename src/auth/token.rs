//! Verification of JWT access tokens. The rules, in the order they are applied:
//!
//! 1. Length: tokens longer than `auth.max_token_bytes` are refused before any parsing.
//! 2. Shape: exactly three base64url segments (JWS compact; no JWE, no unsigned token).
//! 3. Header: `alg` must be one of `auth.algorithms` — never `none` or `HS*`, which the
//!    configuration refuses. The header may not carry `jku`, `x5u`, `jwk`, `x5c` or
//!    `crit`: keys come only from the configured JWKS, so a token that tries to say where
//!    its key is (or embeds one) is an attack or a misconfiguration, and is refused
//!    outright rather than ignored. No header field ever causes a fetch.
//!    With `auth.require_at_jwt_typ`, `typ` must be `at+jwt` / `application/at+jwt`.
//! 4. Key: the JWKS key with the token's `kid` (or, without `kid`, the only key that fits),
//!    whose key type is the family of `alg` and whose declared `alg`, if any, is `alg`.
//!    Because HS* is never accepted and every key is asymmetric, an RSA public key can
//!    never be (mis)used as an HMAC secret.
//! 5. Signature, then claims: `iss` exactly `auth.issuer`; `aud` contains
//!    `auth.audience`; `exp` and `sub` present; `exp`, `nbf` and `iat` checked with
//!    `auth.clock_skew_secs` leeway; with `auth.max_token_age_secs`, `iat` is required
//!    and bounds the token's age.
//! 6. Not an ID token. An OpenID Connect ID token is refused even when its audience
//!    matches, by this rule: the token carries a claim that only ID tokens carry
//!    (`nonce`, `at_hash`, `c_hash`), or a `token_use` other than `access`, or a header
//!    `typ` of `id_token`/`id+jwt`. (`require_at_jwt_typ = true` makes this airtight,
//!    since providers never type ID tokens `at+jwt`.)

use super::jwks::{JwksError, JwksSource, KeyCache};
use super::scope::ScopeSet;
use crate::config::{AuthConfig, ConfigError};
use jsonwebtoken::{Algorithm, Validation};
use serde::Deserialize;
use std::fmt;
use std::time::Duration;

/// Who the token was issued to act for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Grant {
    /// A person signed in (authorization code flow and the like).
    User,
    /// A backend client acting for itself (client credentials): `sub` equals the client id.
    ClientCredentials,
}

/// A token that passed every check. Holds no copy of the raw token, so `Debug` cannot
/// print it.
#[derive(Clone, Debug)]
pub struct VerifiedToken {
    pub issuer: String,
    pub subject: String,
    pub scopes: ScopeSet,
    /// `client_id` claim (RFC 9068), else `azp`.
    pub client_id: Option<String>,
    /// `auth_time` (seconds since the epoch), when the provider sent it.
    pub auth_time: Option<i64>,
    pub acr: Option<String>,
    pub jti: Option<String>,
    pub issued_at: Option<i64>,
    pub expires_at: i64,
    pub grant: Grant,
}

/// Why a token was refused. Only a fixed reason code is ever logged; none of these
/// carries token content.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("no bearer token")]
    Missing,
    #[error("bearer token sent in an unaccepted way")]
    BadRequest,
    #[error("token too large")]
    Oversize,
    #[error("token malformed")]
    Malformed,
    #[error("token header carries key location or embedded key")]
    ForbiddenHeader,
    #[error("token algorithm not accepted")]
    Algorithm,
    #[error("token type not accepted")]
    Type,
    #[error("no key for token")]
    UnknownKey,
    #[error("signature invalid")]
    Signature,
    #[error("token expired")]
    Expired,
    #[error("token not yet valid")]
    NotYetValid,
    #[error("token too old")]
    TooOld,
    #[error("wrong issuer")]
    Issuer,
    #[error("wrong audience")]
    Audience,
    #[error("required claim missing or invalid")]
    Claims,
    #[error("ID token used as access token")]
    IdToken,
    #[error("bearer authentication is not configured")]
    NotConfigured,
    #[error("identity provider keys unavailable")]
    KeysUnavailable,
}

impl AuthError {
    /// A short fixed code for logs.
    pub fn code(self) -> &'static str {
        match self {
            AuthError::Missing => "missing",
            AuthError::BadRequest => "bad_request",
            AuthError::Oversize => "oversize",
            AuthError::Malformed => "malformed",
            AuthError::ForbiddenHeader => "forbidden_header",
            AuthError::Algorithm => "algorithm",
            AuthError::Type => "type",
            AuthError::UnknownKey => "unknown_key",
            AuthError::Signature => "signature",
            AuthError::Expired => "expired",
            AuthError::NotYetValid => "not_yet_valid",
            AuthError::TooOld => "too_old",
            AuthError::Issuer => "issuer",
            AuthError::Audience => "audience",
            AuthError::Claims => "claims",
            AuthError::IdToken => "id_token",
            AuthError::NotConfigured => "not_configured",
            AuthError::KeysUnavailable => "keys_unavailable",
        }
    }
}

/// Settings applied to every token (from `[auth]`).
#[derive(Clone, Debug)]
struct Rules {
    issuer: String,
    audience: String,
    algorithms: Vec<Algorithm>,
    skew: u64,
    max_age: Option<u64>,
    require_at_jwt: bool,
    max_bytes: usize,
}

/// Verifies bearer tokens. Cheap to clone: the key cache is shared.
#[derive(Clone)]
pub struct TokenVerifier {
    rules: std::sync::Arc<Rules>,
    keys: KeyCache,
}

impl fmt::Debug for TokenVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenVerifier")
            .field("issuer", &self.rules.issuer)
            .field("audience", &self.rules.audience)
            .finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    fn iter(&self) -> Box<dyn Iterator<Item = &str> + '_> {
        match self {
            OneOrMany::One(s) => Box::new(std::iter::once(s.as_str())),
            OneOrMany::Many(v) => Box::new(v.iter().map(String::as_str)),
        }
    }
}

/// The claims we read. Unknown claims are ignored.
#[derive(Deserialize)]
struct Claims {
    iss: String,
    sub: String,
    exp: i64,
    #[serde(default)]
    iat: Option<i64>,
    #[serde(default)]
    scope: Option<String>,
    /// Some providers send scopes as an array named `scp`.
    #[serde(default)]
    scp: Option<OneOrMany>,
    #[serde(default)]
    client_id: Option<String>,
    #[serde(default)]
    azp: Option<String>,
    #[serde(default)]
    auth_time: Option<i64>,
    #[serde(default)]
    acr: Option<String>,
    #[serde(default)]
    jti: Option<String>,
    #[serde(default)]
    nonce: Option<serde_json::Value>,
    #[serde(default)]
    at_hash: Option<serde_json::Value>,
    #[serde(default)]
    c_hash: Option<serde_json::Value>,
    #[serde(default)]
    token_use: Option<String>,
}

impl TokenVerifier {
    /// Builds the verifier from a validated `[auth]` section. No network traffic here:
    /// keys are fetched on first use.
    pub fn new(config: &AuthConfig) -> Result<TokenVerifier, ConfigError> {
        Self::with_trusted_root(config, None)
    }

    /// Like [`TokenVerifier::new`], trusting one more certificate when fetching keys (the
    /// self-signed certificate of `custodian dev`, which serves its own JWKS).
    pub fn with_trusted_root(
        config: &AuthConfig,
        trust_root_pem: Option<&str>,
    ) -> Result<TokenVerifier, ConfigError> {
        config.validate()?;
        let source = match config.jwks_url.as_deref().filter(|u| !u.is_empty()) {
            Some(u) => JwksSource::Url(crate::config::validate_provider_url("auth.jwks_url", u)?),
            None => JwksSource::Discover {
                issuer: config.issuer.clone(),
            },
        };
        let keys = KeyCache::with_trusted_root(
            source,
            Duration::from_secs(config.jwks_refetch_min_interval_secs),
            Duration::from_secs(config.jwks_max_staleness_secs),
            trust_root_pem,
        )
        .map_err(|_| ConfigError::new("auth.jwks_url", "cannot build the HTTP client"))?;
        Ok(TokenVerifier {
            rules: std::sync::Arc::new(Rules {
                issuer: config.issuer.clone(),
                audience: config.audience.clone(),
                algorithms: config.parsed_algorithms()?,
                skew: config.clock_skew_secs,
                max_age: (config.max_token_age_secs > 0).then_some(config.max_token_age_secs),
                require_at_jwt: config.require_at_jwt_typ,
                max_bytes: config.max_token_bytes,
            }),
            keys,
        })
    }

    /// The configured issuer (`auth.issuer`): service clients are keyed by it.
    pub fn issuer(&self) -> &str {
        &self.rules.issuer
    }

    /// Verifies a raw bearer token (the part after `Bearer `).
    pub async fn verify(&self, raw: &str) -> Result<VerifiedToken, AuthError> {
        let rules = &self.rules;
        if raw.len() > rules.max_bytes {
            return Err(AuthError::Oversize);
        }
        check_shape(raw)?;
        let header = jsonwebtoken::decode_header(raw).map_err(|_| AuthError::Malformed)?;
        if header.jku.is_some()
            || header.x5u.is_some()
            || header.jwk.is_some()
            || header.x5c.is_some()
            || header.crit.is_some()
        {
            return Err(AuthError::ForbiddenHeader);
        }
        if !rules.algorithms.contains(&header.alg) {
            return Err(AuthError::Algorithm);
        }
        let typ = header.typ.as_deref().map(str::to_ascii_lowercase);
        let typ_is_at_jwt = matches!(typ.as_deref(), Some("at+jwt" | "application/at+jwt"));
        if rules.require_at_jwt && !typ_is_at_jwt {
            return Err(AuthError::Type);
        }
        if matches!(
            typ.as_deref(),
            Some("id_token" | "id+jwt" | "application/id+jwt")
        ) {
            return Err(AuthError::IdToken);
        }

        let kid = header.kid.as_deref();
        let keys = self.keys.keys_for(kid).await.map_err(|e| match e {
            JwksError::Unreachable | JwksError::Invalid | JwksError::Discovery => {
                AuthError::KeysUnavailable
            }
        })?;
        let key = keys.select(kid, header.alg).ok_or(AuthError::UnknownKey)?;

        let mut validation = Validation::new(header.alg);
        validation.algorithms = vec![header.alg];
        validation.leeway = rules.skew;
        validation.validate_exp = true;
        validation.validate_nbf = true;
        validation.validate_aud = true;
        validation.set_audience(&[&rules.audience]);
        validation.set_issuer(&[&rules.issuer]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        let data = jsonwebtoken::decode::<Claims>(raw, &key.key, &validation)
            .map_err(|e| map_jwt_error(e.kind()))?;
        let claims = data.claims;
        // Belt and braces: the library compared these already.
        if claims.iss != rules.issuer {
            return Err(AuthError::Issuer);
        }
        if claims.sub.is_empty() {
            return Err(AuthError::Claims);
        }

        let now = jsonwebtoken::get_current_timestamp() as i64;
        let skew = rules.skew as i64;
        if let Some(iat) = claims.iat
            && iat > now + skew
        {
            return Err(AuthError::NotYetValid);
        }
        if let Some(max_age) = rules.max_age {
            let iat = claims.iat.ok_or(AuthError::Claims)?;
            if now - iat > max_age as i64 + skew {
                return Err(AuthError::TooOld);
            }
        }
        let id_token_marker = claims.nonce.is_some()
            || claims.at_hash.is_some()
            || claims.c_hash.is_some()
            || claims.token_use.as_deref().is_some_and(|u| u != "access");
        if id_token_marker {
            return Err(AuthError::IdToken);
        }

        let scopes = match (&claims.scope, &claims.scp) {
            (Some(s), _) => ScopeSet::parse(s),
            (None, Some(list)) => ScopeSet::from_scopes(list.iter()),
            (None, None) => ScopeSet::default(),
        };
        let client_id = claims.client_id.or(claims.azp);
        let grant = if client_id.as_deref() == Some(claims.sub.as_str()) {
            Grant::ClientCredentials
        } else {
            Grant::User
        };
        Ok(VerifiedToken {
            issuer: claims.iss,
            subject: claims.sub,
            scopes,
            client_id,
            auth_time: claims.auth_time,
            acr: claims.acr,
            jti: claims.jti,
            issued_at: claims.iat,
            expires_at: claims.exp,
            grant,
        })
    }
}

/// Three non-empty base64url segments (the signature may not be empty: no `alg: none`).
fn check_shape(raw: &str) -> Result<(), AuthError> {
    let parts: Vec<&str> = raw.split('.').collect();
    let ok = parts.len() == 3
        && parts.iter().all(|p| {
            !p.is_empty()
                && p.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
    if ok {
        Ok(())
    } else {
        Err(AuthError::Malformed)
    }
}

fn map_jwt_error(kind: &jsonwebtoken::errors::ErrorKind) -> AuthError {
    use jsonwebtoken::errors::ErrorKind as K;
    match kind {
        K::InvalidSignature => AuthError::Signature,
        K::ExpiredSignature => AuthError::Expired,
        K::ImmatureSignature => AuthError::NotYetValid,
        K::InvalidIssuer => AuthError::Issuer,
        K::InvalidAudience => AuthError::Audience,
        K::MissingRequiredClaim(_) | K::InvalidSubject => AuthError::Claims,
        K::InvalidAlgorithm | K::InvalidAlgorithmName | K::MissingAlgorithm => AuthError::Algorithm,
        K::InvalidKeyFormat | K::InvalidEcdsaKey | K::InvalidRsaKey(_) | K::InvalidEddsaKey => {
            AuthError::UnknownKey
        }
        _ => AuthError::Malformed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shape_requires_three_nonempty_base64url_parts() {
        assert!(check_shape("a.b.c").is_ok());
        assert!(check_shape("a.b.").is_err(), "unsigned token");
        assert!(check_shape("a.b").is_err());
        assert!(check_shape("a.b.c.d.e").is_err(), "JWE");
        assert!(check_shape("a.b+.c").is_err());
        assert!(check_shape("a.b=.c").is_err());
    }

    #[test]
    fn verified_token_debug_has_no_raw_token_field() {
        let t = VerifiedToken {
            issuer: "https://idp".into(),
            subject: "u1".into(),
            scopes: ScopeSet::parse("user/Patient.rs"),
            client_id: Some("app".into()),
            auth_time: None,
            acr: None,
            jti: Some("j".into()),
            issued_at: Some(1),
            expires_at: 2,
            grant: Grant::User,
        };
        let dbg = format!("{t:?}");
        assert!(dbg.contains("u1"));
        assert!(!dbg.contains("eyJ"));
    }
}
