//! Verification of JWT access tokens. The rules, in the order they are applied:
//!
//! 1. Length: tokens longer than `auth.max_token_bytes` are refused before any parsing.
//! 2. Shape: exactly three base64url segments (JWS compact; no JWE, no unsigned token).
//! 3. Header: `alg` must be one of `auth.algorithms` — never `none` or `HS*`, which the
//!    configuration refuses. The header may not carry `jku`, `x5u`, `jwk`, `x5c` or
//!    `crit`: keys come only from the configured JWKS, so a token that tries to say where
//!    its key is (or embeds one) is an attack or a misconfiguration, and is refused
//!    outright rather than ignored. No header field ever causes a fetch.
//!    With `auth.require_at_jwt_typ` (the default), `typ` must be `at+jwt` /
//!    `application/at+jwt`.
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
//!    `typ` of `id_token`/`id+jwt`. (`require_at_jwt_typ`, on by default, makes this airtight,
//!    since providers never type ID tokens `at+jwt`.)
//!
//! A token that passed every rule is remembered (by the SHA-256 of its exact bytes, up to
//! [`TOKEN_CACHE_ENTRIES`]), so presenting it again skips the signature check and claim
//! parsing — the largest part of a request's CPU. A remembered token is accepted only
//! while the key set it was verified with is still the current one (every JWKS fetch is a
//! new generation, so a withdrawn key stops its tokens as soon as the keys are refetched,
//! as without the cache) and only if its time-dependent claims (`exp`, `nbf`, `iat`, the
//! maximum age) pass against the clock on that use; otherwise it is verified from scratch.
//!
//! "The clock" is the [`SharedClock`] the verifier was built with (the system clock in
//! `serve` and `dev`): every time rule above reads it, none reads the system time.

use super::jwks::{JwksError, JwksSource, KeyCache};
use super::scope::ScopeSet;
use crate::auth::config::AuthConfig;
use crate::domain::clock::SharedClock;
use crate::error::ConfigError;
use jsonwebtoken::{Algorithm, Validation};
use serde::Deserialize;
use sha2::Digest;
use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

/// Most verified tokens remembered at once (a few hundred bytes each).
pub const TOKEN_CACHE_ENTRIES: usize = 4096;

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
    /// `amr` (RFC 8176 authentication methods), when the provider sent it.
    pub amr: Vec<String>,
    pub jti: Option<String>,
    pub issued_at: Option<i64>,
    pub expires_at: i64,
    pub grant: Grant,
    /// The `family_name` claim when the provider puts it in access tokens: only ever
    /// turned into a blind index (the same-family-name detector); `Debug` is redacted.
    pub family_name: Option<crate::secret::Secret<String>>,
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

impl Rules {
    /// The checks that depend on the clock, applied on every use of a token. The library's
    /// own `exp`/`nbf` checks are off (they read the system time); these apply the same
    /// rule against the injected clock: expired when `exp < now - skew`, not yet valid
    /// when `nbf > now + skew`.
    fn check_times(&self, t: &Times, now: i64) -> Result<(), AuthError> {
        let skew = self.skew as i64;
        if t.exp < now - skew {
            return Err(AuthError::Expired);
        }
        if t.nbf.is_some_and(|nbf| nbf > now + skew) || t.iat.is_some_and(|iat| iat > now + skew) {
            return Err(AuthError::NotYetValid);
        }
        if let Some(max_age) = self.max_age {
            let iat = t.iat.ok_or(AuthError::Claims)?;
            if now - iat > max_age as i64 + skew {
                return Err(AuthError::TooOld);
            }
        }
        Ok(())
    }
}

/// The time-dependent claims of a verified token.
#[derive(Clone, Copy, Debug)]
struct Times {
    exp: i64,
    nbf: Option<i64>,
    iat: Option<i64>,
}

/// A verified token as remembered: never the raw token, only what verification produced.
#[derive(Clone)]
struct Remembered {
    token: VerifiedToken,
    kid: Option<String>,
    generation: u64,
    times: Times,
}

/// Verified tokens by SHA-256 of their exact bytes (see the module documentation).
#[derive(Default)]
struct TokenCache {
    entries: Mutex<HashMap<[u8; 32], Remembered>>,
}

impl TokenCache {
    fn get(&self, digest: &[u8; 32]) -> Option<Remembered> {
        let entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        entries.get(digest).cloned()
    }

    fn forget(&self, digest: &[u8; 32]) {
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        entries.remove(digest);
    }

    /// Remembers a token; when full, first drops the expired ones, and if still full
    /// remembers nothing (the token is simply verified again next time).
    fn insert(&self, digest: [u8; 32], entry: Remembered, rules: &Rules, now: i64) {
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        if entries.len() >= TOKEN_CACHE_ENTRIES {
            entries.retain(|_, e| rules.check_times(&e.times, now).is_ok());
        }
        if entries.len() < TOKEN_CACHE_ENTRIES {
            entries.insert(digest, entry);
        }
    }
}

/// Verifies bearer tokens. Cheap to clone: the key and token caches are shared.
#[derive(Clone)]
pub struct TokenVerifier {
    rules: Arc<Rules>,
    keys: KeyCache,
    verified: Arc<TokenCache>,
    clock: SharedClock,
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
    /// Read as the library reads it (see [`numeric_date`]) and checked by
    /// [`Rules::check_times`], on the first and every remembered use.
    #[serde(default)]
    nbf: Option<serde_json::Value>,
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
    amr: Option<OneOrMany>,
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
    #[serde(default)]
    family_name: Option<String>,
}

impl TokenVerifier {
    /// Builds the verifier from a validated `[auth]` section. No network traffic here:
    /// keys are fetched on first use. Every time rule reads `clock`.
    pub fn new(config: &AuthConfig, clock: SharedClock) -> Result<TokenVerifier, ConfigError> {
        Self::with_trusted_root(config, None, clock)
    }

    /// Like [`TokenVerifier::new`], trusting one more certificate when fetching keys (the
    /// self-signed certificate of `custodian dev`, which serves its own JWKS).
    pub fn with_trusted_root(
        config: &AuthConfig,
        trust_root_pem: Option<&str>,
        clock: SharedClock,
    ) -> Result<TokenVerifier, ConfigError> {
        config.validate()?;
        let source = match config.jwks_url.as_deref().filter(|u| !u.is_empty()) {
            Some(u) => JwksSource::Url(crate::auth::config::validate_provider_url(
                "auth.jwks_url",
                u,
            )?),
            None => JwksSource::Discover {
                issuer: config.issuer.clone(),
            },
        };
        let keys = KeyCache::with_trusted_root(
            source,
            Duration::from_secs(config.jwks_refetch_min_interval_secs),
            Duration::from_secs(config.jwks_max_staleness_secs),
            trust_root_pem,
            clock.clone(),
        )
        .map_err(|_| ConfigError::new("auth.jwks_url", "cannot build the HTTP client"))?;
        Ok(TokenVerifier {
            verified: Arc::new(TokenCache::default()),
            rules: Arc::new(Rules {
                issuer: config.issuer.clone(),
                audience: config.audience.clone(),
                algorithms: config.parsed_algorithms()?,
                skew: config.clock_skew_secs,
                max_age: (config.max_token_age_secs > 0).then_some(config.max_token_age_secs),
                require_at_jwt: config.require_at_jwt_typ,
                max_bytes: config.max_token_bytes,
            }),
            keys,
            clock,
        })
    }

    /// Seconds since the epoch, by the verifier's clock.
    fn now(&self) -> i64 {
        self.clock.now().timestamp()
    }

    /// The configured issuer (`auth.issuer`): service clients are keyed by it.
    pub fn issuer(&self) -> &str {
        &self.rules.issuer
    }

    /// The configured provider's discovery document ([`KeyCache::provider_document`]).
    pub async fn provider_document(
        &self,
    ) -> Result<Arc<serde_json::Value>, crate::auth::jwks::JwksError> {
        self.keys.provider_document(&self.rules.issuer).await
    }

    /// Verifies a raw bearer token (the part after `Bearer `).
    pub async fn verify(&self, raw: &str) -> Result<VerifiedToken, AuthError> {
        if raw.len() > self.rules.max_bytes {
            return Err(AuthError::Oversize);
        }
        let digest: [u8; 32] = sha2::Sha256::digest(raw.as_bytes()).into();
        if let Some(hit) = self.verified.get(&digest) {
            let keys = self
                .keys
                .keys_for(hit.kid.as_deref())
                .await
                .map_err(keys_error)?;
            let now = self.now();
            if keys.generation == hit.generation && self.rules.check_times(&hit.times, now).is_ok()
            {
                return Ok(hit.token);
            }
            // Keys refetched since, or a clock check fails: verify from scratch (which
            // also gives the refusal its exact reason).
            self.verified.forget(&digest);
        }
        let (token, remember) = self.verify_fully(raw).await?;
        if let Some(entry) = remember {
            let now = self.now();
            self.verified.insert(digest, entry, &self.rules, now);
        }
        Ok(token)
    }

    /// Every rule of the module documentation, and the entry to remember (`None` when a
    /// claim the cache rechecks is not an integer).
    async fn verify_fully(
        &self,
        raw: &str,
    ) -> Result<(VerifiedToken, Option<Remembered>), AuthError> {
        let rules = &self.rules;
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
        let keys = self.keys.keys_for(kid).await.map_err(keys_error)?;
        let key = keys.select(kid, header.alg).ok_or(AuthError::UnknownKey)?;

        let mut validation = Validation::new(header.alg);
        validation.algorithms = vec![header.alg];
        // `exp` and `nbf` are checked below against the injected clock (the library's
        // checks read the system time); `exp` stays required.
        validation.validate_exp = false;
        validation.validate_nbf = false;
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

        let now = self.now();
        let nbf = claims.nbf.as_ref().map(numeric_date).transpose()?;
        let times = Times {
            exp: claims.exp,
            nbf,
            iat: claims.iat,
        };
        rules.check_times(&times, now)?;
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
        let token = VerifiedToken {
            issuer: claims.iss,
            subject: claims.sub,
            scopes,
            client_id,
            auth_time: claims.auth_time,
            acr: claims.acr,
            amr: claims
                .amr
                .map(|list| list.iter().map(str::to_string).collect())
                .unwrap_or_default(),
            jti: claims.jti,
            issued_at: claims.iat,
            expires_at: claims.exp,
            grant,
            family_name: claims
                .family_name
                .filter(|n| !n.trim().is_empty() && n.len() <= 200)
                .map(crate::secret::Secret::new),
        };
        // A token whose `nbf` is not an integer is not remembered (as before the clock
        // was injected); it is verified in full on every use.
        let remember = claims
            .nbf
            .as_ref()
            .is_none_or(serde_json::Value::is_i64)
            .then(|| Remembered {
                token: token.clone(),
                kid: header.kid.clone(),
                generation: keys.generation,
                times,
            });
        Ok((token, remember))
    }
}

fn keys_error(e: JwksError) -> AuthError {
    match e {
        JwksError::Unreachable | JwksError::Invalid | JwksError::Discovery => {
            AuthError::KeysUnavailable
        }
    }
}

/// A NumericDate claim read as the library reads `nbf`: a non-negative integer, or a
/// finite non-negative number rounded to whole seconds; anything else is malformed. Too
/// large for `i64` counts as the far future.
fn numeric_date(v: &serde_json::Value) -> Result<i64, AuthError> {
    let secs = match (v.as_u64(), v.as_f64()) {
        (Some(n), _) => n,
        (None, Some(f)) if f.is_finite() && f >= 0.0 && f < u64::MAX as f64 => f.round() as u64,
        _ => return Err(AuthError::Malformed),
    };
    Ok(i64::try_from(secs).unwrap_or(i64::MAX))
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

    fn rules(skew: u64, max_age: Option<u64>) -> Rules {
        Rules {
            issuer: "https://idp".into(),
            audience: "aud".into(),
            algorithms: vec![Algorithm::ES256],
            skew,
            max_age,
            require_at_jwt: false,
            max_bytes: 8192,
        }
    }

    fn remembered(exp: i64) -> Remembered {
        Remembered {
            token: VerifiedToken {
                issuer: "https://idp".into(),
                subject: "u1".into(),
                scopes: ScopeSet::parse("user/Patient.rs"),
                client_id: None,
                auth_time: None,
                acr: None,
                amr: Vec::new(),
                jti: None,
                issued_at: None,
                expires_at: exp,
                grant: Grant::User,
                family_name: None,
            },
            kid: None,
            generation: 1,
            times: Times {
                exp,
                nbf: None,
                iat: None,
            },
        }
    }

    #[test]
    fn clock_checks_match_the_library_rules() {
        let r = rules(10, Some(100));
        let t = |exp, nbf, iat| Times { exp, nbf, iat };
        let now = 1_000;
        assert!(
            r.check_times(&t(990, None, Some(950)), now).is_ok(),
            "within skew"
        );
        assert_eq!(
            r.check_times(&t(989, None, Some(950)), now),
            Err(AuthError::Expired)
        );
        assert_eq!(
            r.check_times(&t(2000, Some(1011), Some(950)), now),
            Err(AuthError::NotYetValid)
        );
        assert_eq!(
            r.check_times(&t(2000, None, Some(1011)), now),
            Err(AuthError::NotYetValid)
        );
        assert_eq!(
            r.check_times(&t(2000, None, Some(889)), now),
            Err(AuthError::TooOld)
        );
        assert_eq!(
            r.check_times(&t(2000, None, None), now),
            Err(AuthError::Claims)
        );
    }

    #[test]
    fn nbf_is_read_as_the_library_reads_it() {
        let n = |v: serde_json::Value| numeric_date(&v);
        assert_eq!(n(serde_json::json!(1_000)), Ok(1_000));
        assert_eq!(n(serde_json::json!(999.5)), Ok(1_000), "rounded");
        assert_eq!(n(serde_json::json!(u64::MAX)), Ok(i64::MAX), "far future");
        assert_eq!(n(serde_json::json!(-1)), Err(AuthError::Malformed));
        assert_eq!(n(serde_json::json!(-0.5)), Err(AuthError::Malformed));
        assert_eq!(n(serde_json::json!("1000")), Err(AuthError::Malformed));
        assert_eq!(n(serde_json::json!(true)), Err(AuthError::Malformed));
    }

    #[test]
    fn token_cache_is_bounded_and_drops_expired_entries_first() {
        let r = rules(0, None);
        let cache = TokenCache::default();
        let now = 1_000;
        for i in 0..TOKEN_CACHE_ENTRIES {
            let mut key = [0u8; 32];
            key[..8].copy_from_slice(&(i as u64).to_le_bytes());
            // Half of them already expired.
            let exp = if i % 2 == 0 { now - 1 } else { now + 60 };
            cache.insert(key, remembered(exp), &r, now);
        }
        assert_eq!(cache.entries.lock().unwrap().len(), TOKEN_CACHE_ENTRIES);
        // Full: the expired half is dropped to make room.
        cache.insert([0xff; 32], remembered(now + 60), &r, now);
        assert_eq!(
            cache.entries.lock().unwrap().len(),
            TOKEN_CACHE_ENTRIES / 2 + 1
        );
        assert!(cache.get(&[0xff; 32]).is_some());
        // Full of live tokens: nothing more is remembered.
        let full = TokenCache::default();
        for i in 0..TOKEN_CACHE_ENTRIES {
            let mut key = [0u8; 32];
            key[..8].copy_from_slice(&(i as u64).to_le_bytes());
            full.insert(key, remembered(now + 60), &r, now);
        }
        full.insert([0xff; 32], remembered(now + 60), &r, now);
        assert_eq!(full.entries.lock().unwrap().len(), TOKEN_CACHE_ENTRIES);
        assert!(full.get(&[0xff; 32]).is_none());
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
            amr: Vec::new(),
            jti: Some("j".into()),
            issued_at: Some(1),
            expires_at: 2,
            grant: Grant::User,
            family_name: Some(crate::secret::Secret::new("Okonkwo".into())),
        };
        let dbg = format!("{t:?}");
        assert!(dbg.contains("u1"));
        assert!(!dbg.contains("eyJ"));
        assert!(!dbg.contains("Okonkwo"), "the family name is redacted");
    }
}
