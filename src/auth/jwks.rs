//! The identity provider's signing keys: fetched only from the configured JWKS URL (or
//! the `jwks_uri` of the configured issuer's discovery document), cached, refreshed
//! with a rate limit, and kept for a bounded time while the provider is unreachable.
//!
//! Nothing in a token ever chooses where keys come from.

use crate::domain::clock::SharedClock;
use jsonwebtoken::jwk::{AlgorithmParameters, Jwk, KeyOperations, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

/// Largest JWKS or discovery document we read.
pub const MAX_DOCUMENT_BYTES: usize = 256 * 1024;
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
pub const TOTAL_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest time cached keys are used before a (rate-limited) refresh is attempted.
pub const REFRESH_AFTER: Duration = Duration::from_secs(300);

/// Where the key set comes from.
#[derive(Clone, Debug)]
pub enum JwksSource {
    /// `auth.jwks_url`.
    Url(url::Url),
    /// `<issuer>/.well-known/openid-configuration` → `jwks_uri`.
    Discover { issuer: String },
}

/// One verification key, with what it may be used for.
#[derive(Clone)]
pub struct VerificationKey {
    pub kid: Option<String>,
    /// The key's declared `alg`, when the JWK has one.
    pub alg: Option<Algorithm>,
    pub key: DecodingKey,
}

impl VerificationKey {
    /// Whether this key may verify a signature made with `alg`: the key type must be
    /// that algorithm's family, and a declared `alg` must be exactly it.
    pub fn fits(&self, alg: Algorithm) -> bool {
        family_matches(&self.key, alg) && self.alg.is_none_or(|a| a == alg)
    }
}

fn family_matches(key: &DecodingKey, alg: Algorithm) -> bool {
    use jsonwebtoken::Algorithm as A;
    use jsonwebtoken::AlgorithmFamily as F;
    matches!(
        (key.family(), alg),
        (
            F::Rsa,
            A::RS256 | A::RS384 | A::RS512 | A::PS256 | A::PS384 | A::PS512
        ) | (F::Ec, A::ES256 | A::ES384)
            | (F::Ed, A::EdDSA)
    )
}

/// A fetched key set.
pub struct KeySet {
    pub keys: Vec<VerificationKey>,
    /// The cache's clock ([`crate::domain::clock::Clock::instant`]) when fetched.
    pub fetched_at: Instant,
    /// Distinct for every stored fetch: what was verified with one generation is not
    /// trusted under another without verifying again.
    pub generation: u64,
}

impl KeySet {
    /// The key for a token: by `kid` when the token names one; without a `kid`, only
    /// when exactly one key fits the algorithm (no trying keys one after another).
    pub fn select(&self, kid: Option<&str>, alg: Algorithm) -> Option<&VerificationKey> {
        match kid {
            Some(kid) => self
                .keys
                .iter()
                .find(|k| k.kid.as_deref() == Some(kid))
                .filter(|k| k.fits(alg)),
            None => {
                let mut fitting = self.keys.iter().filter(|k| k.fits(alg));
                let first = fitting.next()?;
                fitting.next().is_none().then_some(first)
            }
        }
    }

    pub fn has_kid(&self, kid: Option<&str>) -> bool {
        match kid {
            Some(kid) => self.keys.iter().any(|k| k.kid.as_deref() == Some(kid)),
            None => true,
        }
    }
}

/// Parses a JWKS document, keeping only public signature keys we can use. Symmetric
/// (`oct`) keys, encryption keys and malformed entries are skipped, never fatal, so one
/// odd key at the provider does not take authentication down.
pub fn parse_jwks(body: &[u8]) -> Result<Vec<VerificationKey>, JwksError> {
    #[derive(serde::Deserialize)]
    struct Doc {
        keys: Vec<serde_json::Value>,
    }
    let doc: Doc = serde_json::from_slice(body).map_err(|_| JwksError::Invalid)?;
    let mut out = Vec::new();
    for value in doc.keys {
        let Ok(jwk) = serde_json::from_value::<Jwk>(value) else {
            continue;
        };
        if let Some(k) = usable_key(&jwk) {
            out.push(k);
        }
    }
    Ok(out)
}

fn usable_key(jwk: &Jwk) -> Option<VerificationKey> {
    if !matches!(
        jwk.algorithm,
        AlgorithmParameters::RSA(_)
            | AlgorithmParameters::EllipticCurve(_)
            | AlgorithmParameters::OctetKeyPair(_)
    ) {
        return None;
    }
    if jwk
        .common
        .public_key_use
        .as_ref()
        .is_some_and(|u| *u != PublicKeyUse::Signature)
    {
        return None;
    }
    if jwk
        .common
        .key_operations
        .as_ref()
        .is_some_and(|ops| !ops.contains(&KeyOperations::Verify))
    {
        return None;
    }
    let alg = match jwk.common.key_algorithm {
        None => None,
        // A declared alg we do not know (or an encryption alg): not a signing key for us.
        Some(a) => Some(Algorithm::try_from(a).ok()?),
    };
    if alg.is_some_and(|a| matches!(a, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512)) {
        return None;
    }
    let key = DecodingKey::from_jwk(jwk).ok()?;
    if key.family() == jsonwebtoken::AlgorithmFamily::Hmac {
        return None;
    }
    Some(VerificationKey {
        kid: jwk.common.key_id.clone(),
        alg,
        key,
    })
}

#[derive(Debug, thiserror::Error)]
pub enum JwksError {
    #[error("identity provider unreachable or answered with an error")]
    Unreachable,
    #[error("identity provider document is invalid or too large")]
    Invalid,
    #[error("discovery document names another issuer or an unacceptable jwks_uri")]
    Discovery,
}

#[derive(Default)]
struct FetchState {
    last_attempt: Option<Instant>,
    jwks_url: Option<url::Url>,
}

/// The cached key set and its fetcher. Cheap to clone (shared).
#[derive(Clone)]
pub struct KeyCache {
    inner: Arc<Inner>,
}

struct Inner {
    source: JwksSource,
    http: reqwest::Client,
    min_interval: Duration,
    max_staleness: Duration,
    /// Measures the refetch interval and the keys' age.
    clock: SharedClock,
    keys: RwLock<Option<Arc<KeySet>>>,
    generations: AtomicU64,
    fetch: tokio::sync::Mutex<FetchState>,
    /// The provider's discovery document and when it was fetched (SMART discovery).
    provider: tokio::sync::Mutex<Option<(Instant, Arc<serde_json::Value>)>>,
}

impl KeyCache {
    pub fn new(
        source: JwksSource,
        min_interval: Duration,
        max_staleness: Duration,
        clock: SharedClock,
    ) -> anyhow::Result<KeyCache> {
        Self::with_trusted_root(source, min_interval, max_staleness, None, clock)
    }

    /// Like [`KeyCache::new`], additionally trusting one certificate (PEM) when fetching:
    /// used only by `custodian dev`, whose JWKS is served by itself under a self-signed
    /// certificate.
    pub fn with_trusted_root(
        source: JwksSource,
        min_interval: Duration,
        max_staleness: Duration,
        trust_root_pem: Option<&str>,
        clock: SharedClock,
    ) -> anyhow::Result<KeyCache> {
        let mut builder = reqwest::Client::builder();
        if let Some(pem) = trust_root_pem {
            builder = builder.add_root_certificate(reqwest::Certificate::from_pem(pem.as_bytes())?);
        }
        let http = builder
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(TOTAL_TIMEOUT)
            // A redirect could lead to a host nobody configured.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("custodian/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(KeyCache {
            inner: Arc::new(Inner {
                source,
                http,
                min_interval,
                max_staleness,
                clock,
                keys: RwLock::new(None),
                generations: AtomicU64::new(0),
                fetch: tokio::sync::Mutex::new(FetchState::default()),
                provider: tokio::sync::Mutex::new(None),
            }),
        })
    }

    /// How long ago `then` was, by the cache's clock.
    fn since(&self, then: Instant) -> Duration {
        self.inner.clock.instant().saturating_duration_since(then)
    }

    fn current(&self) -> Option<Arc<KeySet>> {
        match self.inner.keys.read() {
            Ok(g) => g.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    fn store(&self, mut set: KeySet) -> Arc<KeySet> {
        set.generation = self.inner.generations.fetch_add(1, Ordering::Relaxed) + 1;
        let set = Arc::new(set);
        match self.inner.keys.write() {
            Ok(mut g) => *g = Some(set.clone()),
            Err(poisoned) => *poisoned.into_inner() = Some(set.clone()),
        }
        set
    }

    /// The key set to verify a token naming `kid` with. Fetches when there is none yet,
    /// when the cache is due for a refresh, or when `kid` is unknown — each at most once
    /// per `min_interval` (concurrent callers wait for one fetch). Keys older than
    /// `max_staleness` are never used.
    pub async fn keys_for(&self, kid: Option<&str>) -> Result<Arc<KeySet>, JwksError> {
        if let Some(set) = self.fresh(kid) {
            return Ok(set);
        }
        // The slow path runs in its own task, which holds the fetch lock until the keys are
        // stored: a caller dropped mid-request (e.g. when another extractor of the same
        // request failed) cannot leave a fetch half done, and callers arriving meanwhile
        // wait for it instead of finding an empty cache.
        let this = self.clone();
        let kid = kid.map(str::to_string);
        tokio::spawn(async move { this.refresh(kid.as_deref()).await })
            .await
            .unwrap_or(Err(JwksError::Unreachable))
    }

    fn fresh(&self, kid: Option<&str>) -> Option<Arc<KeySet>> {
        self.current()
            .filter(|set| set.has_kid(kid) && self.since(set.fetched_at) < self.refresh_after())
    }

    async fn refresh(&self, kid: Option<&str>) -> Result<Arc<KeySet>, JwksError> {
        let mut state = self.inner.fetch.lock().await;
        // Another caller may have fetched while we waited.
        if let Some(set) = self.fresh(kid) {
            return Ok(set);
        }
        let may_fetch = state
            .last_attempt
            .is_none_or(|t| self.since(t) >= self.inner.min_interval);
        if may_fetch {
            state.last_attempt = Some(self.inner.clock.instant());
            match self.fetch(&mut state).await {
                Ok(keys) => {
                    tracing::info!(keys = keys.len(), "fetched identity provider keys");
                    return Ok(self.store(KeySet {
                        keys,
                        fetched_at: self.inner.clock.instant(),
                        generation: 0,
                    }));
                }
                Err(e) => tracing::warn!(error = %e, "cannot refresh identity provider keys"),
            }
        }
        match self.current() {
            Some(set) if self.since(set.fetched_at) < self.inner.max_staleness => Ok(set),
            _ => Err(JwksError::Unreachable),
        }
    }

    fn refresh_after(&self) -> Duration {
        REFRESH_AFTER.min(self.inner.max_staleness / 2)
    }

    async fn fetch(&self, state: &mut FetchState) -> Result<Vec<VerificationKey>, JwksError> {
        let url = match (&self.inner.source, &state.jwks_url) {
            (JwksSource::Url(u), _) => u.clone(),
            (JwksSource::Discover { .. }, Some(u)) => u.clone(),
            (JwksSource::Discover { issuer }, None) => {
                let u = self.discover(issuer).await?;
                state.jwks_url = Some(u.clone());
                u
            }
        };
        let body = self.get(url).await?;
        parse_jwks(&body)
    }

    /// The provider's OpenID discovery document (`<issuer>/.well-known/openid-configuration`),
    /// for the SMART discovery document and the CapabilityStatement: fetched at most once
    /// per `min_interval` (at least a minute) and kept; while the provider is unreachable
    /// the last document is served. It must name `issuer`.
    pub async fn provider_document(
        &self,
        issuer: &str,
    ) -> Result<Arc<serde_json::Value>, JwksError> {
        let mut cached = self.inner.provider.lock().await;
        let fresh = self.inner.min_interval.max(Duration::from_secs(60));
        if let Some((at, doc)) = cached.as_ref()
            && self.since(*at) < fresh
        {
            return Ok(doc.clone());
        }
        let doc_url = url::Url::parse(&format!(
            "{}/.well-known/openid-configuration",
            issuer.trim_end_matches('/')
        ))
        .map_err(|_| JwksError::Discovery)?;
        let fetched = match self.get(doc_url).await {
            Ok(body) => serde_json::from_slice::<serde_json::Value>(&body)
                .map_err(|_| JwksError::Invalid)
                .and_then(|doc| {
                    if doc["issuer"].as_str() == Some(issuer) {
                        Ok(doc)
                    } else {
                        Err(JwksError::Discovery)
                    }
                }),
            Err(e) => Err(e),
        };
        let now = self.inner.clock.instant();
        match fetched {
            Ok(doc) => {
                let doc = Arc::new(doc);
                *cached = Some((now, doc.clone()));
                Ok(doc)
            }
            Err(e) => match cached.as_mut() {
                Some((at, doc)) => {
                    *at = now;
                    Ok(doc.clone())
                }
                None => Err(e),
            },
        }
    }

    async fn discover(&self, issuer: &str) -> Result<url::Url, JwksError> {
        #[derive(serde::Deserialize)]
        struct Discovery {
            issuer: String,
            jwks_uri: String,
        }
        let doc_url = url::Url::parse(&format!(
            "{}/.well-known/openid-configuration",
            issuer.trim_end_matches('/')
        ))
        .map_err(|_| JwksError::Discovery)?;
        let body = self.get(doc_url).await?;
        let doc: Discovery = serde_json::from_slice(&body).map_err(|_| JwksError::Invalid)?;
        // OpenID Connect Discovery 1.0 §4.3: the document must name the issuer we asked.
        if doc.issuer != issuer {
            return Err(JwksError::Discovery);
        }
        crate::auth::config::validate_provider_url("auth.issuer", &doc.jwks_uri)
            .map_err(|_| JwksError::Discovery)
    }

    async fn get(&self, url: url::Url) -> Result<Vec<u8>, JwksError> {
        let mut res = self
            .inner
            .http
            .get(url)
            .header(reqwest::header::ACCEPT, "application/json")
            .send()
            .await
            .map_err(|_| JwksError::Unreachable)?;
        if res.status() != reqwest::StatusCode::OK {
            return Err(JwksError::Unreachable);
        }
        if res
            .content_length()
            .is_some_and(|n| n > MAX_DOCUMENT_BYTES as u64)
        {
            return Err(JwksError::Invalid);
        }
        let mut body = Vec::new();
        while let Some(chunk) = res.chunk().await.map_err(|_| JwksError::Unreachable)? {
            if body.len() + chunk.len() > MAX_DOCUMENT_BYTES {
                return Err(JwksError::Invalid);
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symmetric_and_encryption_keys_are_skipped() {
        let doc = serde_json::json!({ "keys": [
            { "kty": "oct", "kid": "h", "k": "c2VjcmV0" },
            { "kty": "OKP", "crv": "Ed25519", "kid": "enc", "use": "enc",
              "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo" },
            { "kty": "OKP", "crv": "Ed25519", "kid": "hs", "alg": "HS256",
              "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo" },
            { "kty": "OKP", "crv": "Ed25519", "kid": "ok", "use": "sig",
              "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo" },
            { "kty": "weird" }
        ]});
        let keys = parse_jwks(doc.to_string().as_bytes()).unwrap();
        assert_eq!(keys.len(), 1);
        assert_eq!(keys[0].kid.as_deref(), Some("ok"));
        assert!(keys[0].fits(Algorithm::EdDSA));
        assert!(!keys[0].fits(Algorithm::ES256));
        assert!(!keys[0].fits(Algorithm::HS256));
    }

    #[test]
    fn key_with_declared_alg_fits_only_that_alg() {
        let doc = serde_json::json!({ "keys": [
            { "kty": "OKP", "crv": "Ed25519", "kid": "a", "alg": "EdDSA",
              "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo" }
        ]});
        let set = KeySet {
            keys: parse_jwks(doc.to_string().as_bytes()).unwrap(),
            fetched_at: Instant::now(),
            generation: 1,
        };
        assert!(set.select(Some("a"), Algorithm::EdDSA).is_some());
        assert!(set.select(Some("a"), Algorithm::RS256).is_none());
        assert!(set.select(Some("b"), Algorithm::EdDSA).is_none());
        assert!(set.select(None, Algorithm::EdDSA).is_some());
    }

    #[test]
    fn not_a_jwks_is_invalid() {
        assert!(parse_jwks(b"[]").is_err());
        assert!(parse_jwks(b"{}").is_err());
    }
}
