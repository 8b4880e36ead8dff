//! The development sign-in provider: a small OpenID provider inside `custodian dev`, so
//! that the console's real OIDC client ([`crate::console::oidc`]) signs people in end to
//! end on a fresh clone. Discovery, an authorization endpoint whose page lets you pick one
//! of the demo people (no password; marked DEVELOPMENT), a token endpoint (authorization
//! code with PKCE S256 and client authentication) and ID tokens signed RS256 with a dev
//! key published in its own JWKS.
//!
//! Its routes are added by [`crate::app::build_app`] only when the start-up options carry
//! a [`DevIdp`], which only `custodian dev` builds: `serve` has no such route, whatever its
//! configuration says. Its ID tokens are no API bearer tokens (other audience, a key the
//! API's JWKS does not hold, and a `nonce`, which the token verifier refuses).

use crate::console::session::random_token;
use crate::dev::seed::DEMO_PRINCIPALS;
use crate::error::AppError;
use crate::policy::Role;
use crate::secret::Secret;
use crate::web::render::OwnPage;
use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use anyhow::Context;
use askama::Template;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sha2::Digest;
use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

/// Where the provider lives under the dev instance (its issuer is `<public url>/dev-idp`,
/// the issuer of development access tokens too, so a demo person is one user in both).
pub const PATH_PREFIX: &str = "/dev-idp";
pub const DISCOVERY_PATH: &str = "/dev-idp/.well-known/openid-configuration";
pub const AUTHORIZE_PATH: &str = "/dev-idp/authorize";
pub const TOKEN_PATH: &str = "/dev-idp/token";
pub const JWKS_PATH: &str = "/dev-idp/jwks.json";
/// The console's client id at the dev provider.
pub const CLIENT_ID: &str = "custodian-dev-console";
const KEY_FILE: &str = "dev-idp-signing-key.pem";
const CLIENT_SECRET_FILE: &str = "dev-idp-client-secret";
/// How long an authorization code may wait for its exchange.
const CODE_TTL: std::time::Duration = std::time::Duration::from_secs(120);
const ID_TOKEN_TTL_SECS: i64 = 300;
/// More pending codes than this and the oldest go (a dev instance has one user).
const MAX_PENDING_CODES: usize = 256;

/// The provider's RS256 signing key (2048-bit RSA, PKCS#1 PEM in the dev keys folder).
/// RS256 because it is the one algorithm every OpenID client must accept.
pub struct IdpKey {
    der: Zeroizing<Vec<u8>>,
    n: String,
    e: String,
    kid: String,
}

impl std::fmt::Debug for IdpKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdpKey")
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

impl IdpKey {
    /// Creates the key (file 0600) on first use — a second or so — and loads it afterwards.
    pub fn ensure(keys_dir: &Path) -> anyhow::Result<IdpKey> {
        use rsa::pkcs1::EncodeRsaPrivateKey;
        let path = keys_dir.join(KEY_FILE);
        if !path.is_file() {
            std::fs::create_dir_all(keys_dir)?;
            let key = rsa::RsaPrivateKey::new(&mut rand::rngs::OsRng, 2048)
                .context("cannot generate the dev sign-in key")?;
            let pem = key
                .to_pkcs1_pem(rsa::pkcs1::LineEnding::LF)
                .context("cannot encode the dev sign-in key")?;
            super::write_private(&path, pem.as_bytes())?;
        }
        Self::load(&path)
    }

    fn load(path: &Path) -> anyhow::Result<IdpKey> {
        use rsa::pkcs1::{DecodeRsaPrivateKey, EncodeRsaPrivateKey};
        use rsa::traits::PublicKeyParts;
        let pem = Zeroizing::new(
            std::fs::read_to_string(path)
                .with_context(|| format!("cannot read {}", path.display()))?,
        );
        let key = rsa::RsaPrivateKey::from_pkcs1_pem(&pem)
            .with_context(|| format!("{} is not an RSA private key", path.display()))?;
        let der = Zeroizing::new(key.to_pkcs1_der()?.as_bytes().to_vec());
        let n = URL_SAFE_NO_PAD.encode(key.n().to_bytes_be());
        let e = URL_SAFE_NO_PAD.encode(key.e().to_bytes_be());
        let digest = sha2::Sha256::digest(format!("{n}.{e}"));
        let kid = format!("dev-idp-{}", hex::encode(&digest[..8]));
        Ok(IdpKey { der, n, e, kid })
    }

    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The public key as a JWKS document.
    pub fn jwks(&self) -> String {
        serde_json::json!({ "keys": [{
            "kty": "RSA", "use": "sig", "alg": "RS256",
            "kid": self.kid, "n": self.n, "e": self.e,
        }]})
        .to_string()
    }

    /// Signs `claims` as a JWT (RS256, this key's `kid`).
    pub fn sign(&self, claims: &serde_json::Value) -> Result<String, AppError> {
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
        header.kid = Some(self.kid.clone());
        header.typ = Some("JWT".into());
        jsonwebtoken::encode(
            &header,
            claims,
            &jsonwebtoken::EncodingKey::from_rsa_der(&self.der),
        )
        .map_err(|e| AppError::Internal(anyhow::Error::new(e).context("dev ID token signing")))
    }
}

/// The console's client secret at the dev provider, created once (file 0600).
pub fn ensure_client_secret(keys_dir: &Path) -> anyhow::Result<String> {
    let path = keys_dir.join(CLIENT_SECRET_FILE);
    if !path.is_file() {
        std::fs::create_dir_all(keys_dir)?;
        super::write_private(&path, format!("{}\n", random_token()).as_bytes())?;
    }
    Ok(std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read {}", path.display()))?
        .trim()
        .to_string())
}

/// A demo person as the sign-in page lists them.
pub struct DemoPerson {
    pub subject: &'static str,
    pub roles: String,
    pub can: &'static str,
    /// Pre-enrolled in TOTP with a development secret.
    pub totp: bool,
}

/// What each demo person can do, for the sign-in page, the home page and the terminal.
pub fn demo_people() -> Vec<DemoPerson> {
    DEMO_PRINCIPALS
        .iter()
        .map(|(subject, roles)| DemoPerson {
            subject,
            roles: roles
                .iter()
                .map(|r| r.as_str())
                .collect::<Vec<_>>()
                .join(", "),
            can: can_do(roles),
            totp: super::totp::PRE_ENROLLED.contains(subject),
        })
        .collect()
}

fn can_do(roles: &[Role]) -> &'static str {
    match roles.first() {
        Some(Role::Admin) => {
            "console: users, roles with a reason, care teams, clients, approvals; no clinical data"
        }
        Some(Role::PrivacyOfficer) => {
            "console: audit events (who accessed what, and why); no clinical data"
        }
        Some(Role::Clinician) => {
            "API: patients on their care team (200 synthetic patients); refused the console"
        }
        Some(Role::Billing) => "API: claims and billing fields; refused the console",
        Some(Role::Patient) => "API: their own record (patient SYN-000001); refused the console",
        _ => "API only",
    }
}

/// The home page's notes under `custodian dev` (its base URL from the issuer).
pub fn home_notice(idp: &DevIdp) -> crate::console::DevNotice {
    let base = idp.issuer.trim_end_matches(PATH_PREFIX);
    let me = super::me();
    crate::console::DevNotice {
        people: demo_people()
            .into_iter()
            .map(|p| (p.subject.to_string(), p.roles, p.can.to_string(), p.totp))
            .collect(),
        token_command: format!("TOKEN=$({me} dev-token --sub dr.demo)"),
        api_command: format!(
            "curl -sk -H \"Authorization: Bearer $TOKEN\" '{base}/fhir/Patient?family=Smith'"
        ),
        totp_command: format!("{me} dev-totp"),
    }
}

/// An issued authorization code, waiting for its exchange.
struct Grant {
    subject: String,
    nonce: Option<String>,
    challenge: String,
    redirect_uri: String,
    issued: std::time::Instant,
}

/// The running provider (app data of `custodian dev` only).
pub struct DevIdp {
    issuer: String,
    client_id: String,
    client_secret: Secret<String>,
    redirect_uri: String,
    key: IdpKey,
    totp: Option<super::totp::DevTotpKey>,
    codes: Mutex<HashMap<String, Grant>>,
}

impl std::fmt::Debug for DevIdp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DevIdp")
            .field("issuer", &self.issuer)
            .finish_non_exhaustive()
    }
}

impl DevIdp {
    /// The provider for the console settings `custodian dev` configured.
    pub fn new(
        issuer: &str,
        client_id: &str,
        client_secret: Secret<String>,
        redirect_uri: &str,
        key: IdpKey,
        totp: Option<super::totp::DevTotpKey>,
    ) -> DevIdp {
        DevIdp {
            issuer: issuer.trim_end_matches('/').to_string(),
            client_id: client_id.to_string(),
            client_secret,
            redirect_uri: redirect_uri.to_string(),
            key,
            totp,
            codes: Mutex::new(HashMap::new()),
        }
    }

    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    fn discovery(&self) -> serde_json::Value {
        let base = self.issuer.trim_end_matches(PATH_PREFIX);
        serde_json::json!({
            "issuer": self.issuer,
            "authorization_endpoint": format!("{base}{AUTHORIZE_PATH}"),
            "token_endpoint": format!("{base}{TOKEN_PATH}"),
            "jwks_uri": format!("{base}{JWKS_PATH}"),
            "response_types_supported": ["code"],
            "grant_types_supported": ["authorization_code"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
            "code_challenge_methods_supported": ["S256"],
            "scopes_supported": ["openid"],
            "claims_supported": ["iss", "sub", "aud", "exp", "iat", "auth_time", "nonce"],
            "authorization_response_iss_parameter_supported": true,
        })
    }

    fn client_ok(&self, id: &str, secret: &str) -> bool {
        let id_ok: bool = id.as_bytes().ct_eq(self.client_id.as_bytes()).into();
        let secret_ok: bool = secret
            .as_bytes()
            .ct_eq(self.client_secret.expose().as_bytes())
            .into();
        id_ok & secret_ok
    }

    fn store_code(&self, grant: Grant) -> String {
        let code = random_token();
        let mut codes = self.codes.lock().unwrap_or_else(|p| p.into_inner());
        codes.retain(|_, g| g.issued.elapsed() < CODE_TTL);
        if codes.len() >= MAX_PENDING_CODES {
            codes.clear();
        }
        codes.insert(code.clone(), grant);
        code
    }

    /// The grant of `code`, at most once.
    fn take_code(&self, code: &str) -> Option<Grant> {
        let mut codes = self.codes.lock().unwrap_or_else(|p| p.into_inner());
        codes.remove(code).filter(|g| g.issued.elapsed() < CODE_TTL)
    }

    /// The current TOTP code of a pre-enrolled demo person, and its seconds left.
    fn totp_now(&self, subject: &str) -> Option<(String, u64)> {
        let key = self.totp.as_ref()?;
        if !super::totp::PRE_ENROLLED.contains(&subject) {
            return None;
        }
        key.code_now(subject).ok()
    }
}

/// The authorization request, as the console's client sends it (query or form).
#[derive(Clone, Debug, Default, serde::Deserialize)]
pub struct AuthorizeRequest {
    response_type: Option<String>,
    client_id: Option<String>,
    redirect_uri: Option<String>,
    scope: Option<String>,
    state: Option<String>,
    nonce: Option<String>,
    code_challenge: Option<String>,
    code_challenge_method: Option<String>,
    /// Only in the form posted from the page: the demo person picked.
    subject: Option<String>,
}

const BAD_REQUEST: &str = "DEVELOPMENT sign-in: this authorization request is not the console's (client, redirect URL, response type, scope openid and PKCE S256 are required). Start again from /console/signin.";

impl AuthorizeRequest {
    /// Checks the request against the one registered client; an unknown client or
    /// redirect URL gets an error page, never a redirect.
    fn check(&self, idp: &DevIdp) -> Result<(), AppError> {
        let bad = || AppError::client(StatusCode::BAD_REQUEST, BAD_REQUEST);
        let ok = self.client_id.as_deref() == Some(idp.client_id.as_str())
            && self.redirect_uri.as_deref() == Some(idp.redirect_uri.as_str())
            && self.response_type.as_deref() == Some("code")
            && self
                .scope
                .as_deref()
                .is_some_and(|s| s.split(' ').any(|s| s == "openid"))
            && self.code_challenge_method.as_deref() == Some("S256")
            && self
                .code_challenge
                .as_deref()
                .is_some_and(|c| (43..=128).contains(&c.len()))
            && self
                .state
                .as_deref()
                .is_some_and(|s| !s.is_empty() && s.len() <= 512)
            && self.nonce.as_deref().is_none_or(|n| n.len() <= 512);
        if ok { Ok(()) } else { Err(bad()) }
    }
}

struct PersonRow {
    subject: &'static str,
    roles: String,
    can: &'static str,
    code: String,
    seconds_left: u64,
}

#[derive(Template)]
#[template(path = "dev/signin.html")]
struct SignInPage {
    request: AuthorizeRequest,
    people: Vec<PersonRow>,
    totp_command: String,
}

fn page(html: String, status: StatusCode) -> HttpResponse {
    let mut res = HttpResponse::build(status)
        .content_type("text/html; charset=utf-8")
        .body(html);
    res.extensions_mut().insert(OwnPage);
    res
}

/// The command that prints a demo person's current code (the binary's own path).
pub fn totp_command() -> String {
    format!("{} dev-totp", super::me())
}

/// GET /dev-idp/authorize: the page to pick a demo person.
pub async fn authorize(
    idp: web::Data<DevIdp>,
    query: web::Query<AuthorizeRequest>,
) -> Result<HttpResponse, AppError> {
    let request = query.into_inner();
    request.check(&idp)?;
    let people = demo_people()
        .into_iter()
        .map(|p| {
            let (code, seconds_left) = idp.totp_now(p.subject).unwrap_or_default();
            PersonRow {
                subject: p.subject,
                roles: p.roles,
                can: p.can,
                code,
                seconds_left,
            }
        })
        .collect();
    let html = SignInPage {
        request,
        people,
        totp_command: totp_command(),
    }
    .render()
    .map_err(|_| AppError::internal("dev sign-in page"))?;
    Ok(page(html, StatusCode::OK))
}

/// POST /dev-idp/authorize: the person picked; back to the console with a code.
pub async fn choose(
    idp: web::Data<DevIdp>,
    form: web::Form<AuthorizeRequest>,
) -> Result<HttpResponse, AppError> {
    let request = form.into_inner();
    request.check(&idp)?;
    let subject = request
        .subject
        .as_deref()
        .filter(|s| DEMO_PRINCIPALS.iter().any(|(d, _)| d == s))
        .ok_or_else(|| {
            AppError::client(
                StatusCode::BAD_REQUEST,
                "DEVELOPMENT sign-in: subject must be one of the demo people.",
            )
        })?;
    let code = idp.store_code(Grant {
        subject: subject.to_string(),
        nonce: request.nonce.clone(),
        challenge: request.code_challenge.clone().unwrap_or_default(),
        redirect_uri: idp.redirect_uri.clone(),
        issued: std::time::Instant::now(),
    });
    let mut target = url::Url::parse(&idp.redirect_uri)
        .map_err(|_| AppError::internal("console.redirect_url is not a URL"))?;
    target
        .query_pairs_mut()
        .append_pair("code", &code)
        .append_pair("state", request.state.as_deref().unwrap_or_default())
        // RFC 9207: the provider names itself in the response.
        .append_pair("iss", &idp.issuer);
    Ok(HttpResponse::SeeOther()
        .insert_header((actix_web::http::header::LOCATION, target.as_str()))
        .finish())
}

#[derive(Debug, Default, serde::Deserialize)]
pub struct TokenRequest {
    grant_type: Option<String>,
    code: Option<String>,
    redirect_uri: Option<String>,
    code_verifier: Option<String>,
    client_id: Option<String>,
    client_secret: Option<String>,
}

fn token_error(status: StatusCode, error: &'static str) -> HttpResponse {
    let mut res = HttpResponse::build(status)
        .content_type("application/json")
        .body(serde_json::json!({ "error": error }).to_string());
    if status == StatusCode::UNAUTHORIZED {
        res.headers_mut().insert(
            actix_web::http::header::WWW_AUTHENTICATE,
            actix_web::http::header::HeaderValue::from_static("Basic realm=\"custodian-dev-idp\""),
        );
    }
    res.extensions_mut().insert(OwnPage);
    res
}

/// `client_id:client_secret` from HTTP Basic (each form-urlencoded, RFC 6749 2.3.1).
fn basic_credentials(req: &HttpRequest) -> Option<(String, String)> {
    let value = req
        .headers()
        .get(actix_web::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let encoded = value.strip_prefix("Basic ")?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (id, secret) = text.split_once(':')?;
    let unescape = |s: &str| {
        url::form_urlencoded::parse(format!("v={s}").as_bytes())
            .next()
            .map(|(_, v)| v.into_owned())
    };
    Some((unescape(id)?, unescape(secret)?))
}

/// POST /dev-idp/token: the authorization code (once, unexpired, same redirect URL, PKCE
/// S256) for an ID token, from an authenticated client.
pub async fn token(
    req: HttpRequest,
    idp: web::Data<DevIdp>,
    form: web::Form<TokenRequest>,
) -> HttpResponse {
    let form = form.into_inner();
    let credentials = basic_credentials(&req)
        .or_else(|| Some((form.client_id.clone()?, form.client_secret.clone()?)));
    if !credentials.is_some_and(|(id, secret)| idp.client_ok(&id, &secret)) {
        return token_error(StatusCode::UNAUTHORIZED, "invalid_client");
    }
    if form.grant_type.as_deref() != Some("authorization_code") {
        return token_error(StatusCode::BAD_REQUEST, "unsupported_grant_type");
    }
    let Some(grant) = form.code.as_deref().and_then(|c| idp.take_code(c)) else {
        return token_error(StatusCode::BAD_REQUEST, "invalid_grant");
    };
    let verifier = form.code_verifier.unwrap_or_default();
    let computed = URL_SAFE_NO_PAD.encode(sha2::Sha256::digest(verifier.as_bytes()));
    let pkce_ok: bool = computed.as_bytes().ct_eq(grant.challenge.as_bytes()).into();
    if !pkce_ok || form.redirect_uri.as_deref() != Some(grant.redirect_uri.as_str()) {
        return token_error(StatusCode::BAD_REQUEST, "invalid_grant");
    }
    let now = chrono::Utc::now().timestamp();
    let mut claims = serde_json::json!({
        "iss": idp.issuer, "sub": grant.subject, "aud": idp.client_id,
        "iat": now, "exp": now + ID_TOKEN_TTL_SECS, "auth_time": now,
    });
    if let Some(nonce) = grant.nonce {
        claims["nonce"] = nonce.into();
    }
    let id_token = match idp.key.sign(&claims) {
        Ok(t) => t,
        Err(_) => return token_error(StatusCode::INTERNAL_SERVER_ERROR, "server_error"),
    };
    HttpResponse::Ok().content_type("application/json").body(
        serde_json::json!({
            // The console uses only the ID token; this access token opens nothing.
            "access_token": random_token(),
            "token_type": "Bearer",
            "expires_in": ID_TOKEN_TTL_SECS,
            "scope": "openid",
            "id_token": id_token,
        })
        .to_string(),
    )
}

/// GET /dev-idp/.well-known/openid-configuration
pub async fn discovery(idp: web::Data<DevIdp>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/json")
        .body(idp.discovery().to_string())
}

/// GET /dev-idp/jwks.json
pub async fn jwks(idp: web::Data<DevIdp>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/jwk-set+json")
        .body(idp.key.jwks())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request() -> AuthorizeRequest {
        AuthorizeRequest {
            response_type: Some("code".into()),
            client_id: Some(CLIENT_ID.into()),
            redirect_uri: Some("https://localhost:8443/console/callback".into()),
            scope: Some("openid".into()),
            state: Some("s".repeat(43)),
            nonce: Some("n".repeat(43)),
            code_challenge: Some("c".repeat(43)),
            code_challenge_method: Some("S256".into()),
            subject: None,
        }
    }

    fn idp(dir: &Path) -> DevIdp {
        DevIdp::new(
            "https://localhost:8443/dev-idp",
            CLIENT_ID,
            Secret::new("secret".to_string()),
            "https://localhost:8443/console/callback",
            IdpKey::ensure(dir).unwrap(),
            None,
        )
    }

    #[test]
    fn only_the_console_request_with_pkce_is_accepted() {
        let dir = tempfile::tempdir().unwrap();
        let idp = idp(dir.path());
        assert!(request().check(&idp).is_ok());
        let variants: [fn(&mut AuthorizeRequest); 7] = [
            |r| r.client_id = Some("other".into()),
            |r| r.redirect_uri = Some("https://evil.example/console/callback".into()),
            |r| r.response_type = Some("token".into()),
            |r| r.scope = Some("profile".into()),
            |r| r.code_challenge_method = Some("plain".into()),
            |r| r.code_challenge = None,
            |r| r.state = None,
        ];
        for change in variants {
            let mut r = request();
            change(&mut r);
            assert!(r.check(&idp).is_err(), "{r:?}");
        }
    }

    #[test]
    fn key_is_kept_codes_are_single_use_and_the_jwks_has_no_private_part() {
        let dir = tempfile::tempdir().unwrap();
        let a = IdpKey::ensure(dir.path()).unwrap();
        let b = IdpKey::ensure(dir.path()).unwrap();
        assert_eq!(a.kid(), b.kid());
        let jwks: serde_json::Value = serde_json::from_str(&a.jwks()).unwrap();
        assert_eq!(jwks["keys"][0]["alg"], "RS256");
        assert!(jwks["keys"][0].get("d").is_none());
        let token = a.sign(&serde_json::json!({"sub": "x"})).unwrap();
        assert_eq!(token.split('.').count(), 3);
        assert!(!format!("{a:?}").contains(&a.n));

        let idp = idp(dir.path());
        let code = idp.store_code(Grant {
            subject: "admin.demo".into(),
            nonce: None,
            challenge: String::new(),
            redirect_uri: String::new(),
            issued: std::time::Instant::now(),
        });
        assert!(idp.take_code(&code).is_some());
        assert!(idp.take_code(&code).is_none(), "a code works once");
        assert!(idp.client_ok(CLIENT_ID, "secret"));
        assert!(!idp.client_ok(CLIENT_ID, "secreT"));
        assert!(!idp.client_ok("other", "secret"));
    }
}
