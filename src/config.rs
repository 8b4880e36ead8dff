//! Configuration: a TOML file, overridden by `CUSTODIAN_*` environment variables.
//!
//! Every setting is listed once in [`SETTINGS`]; that table drives the environment
//! overlay, the `*_FILE` indirection for secrets, the rejection of unknown keys and the
//! configuration table in docs/configuration.md. A bad value is a [`ConfigError`] naming the setting.

use crate::secret::Secret;
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A configuration problem, always naming the setting it is about.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {setting}: {problem}")]
pub struct ConfigError {
    pub setting: String,
    pub problem: String,
}

impl ConfigError {
    pub fn new(setting: impl Into<String>, problem: impl Into<String>) -> Self {
        Self {
            setting: setting.into(),
            problem: problem.into(),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Str,
    Int,
    Bool,
    List,
    /// A string that may also come from `<NAME>_FILE`; never printed.
    Secret,
}

/// One documented setting.
pub struct Setting {
    pub key: &'static str,
    pub kind: Kind,
    pub default: &'static str,
    pub doc: &'static str,
}

impl Setting {
    pub fn env_name(&self) -> String {
        format!("CUSTODIAN_{}", self.key.replace('.', "_").to_uppercase())
    }
}

macro_rules! settings {
    ($( $key:literal, $kind:ident, $default:literal, $doc:literal; )*) => {
        /// Every configuration key, its kind, default and meaning.
        pub const SETTINGS: &[Setting] = &[
            $( Setting { key: $key, kind: Kind::$kind, default: $default, doc: $doc }, )*
        ];
    };
}

settings! {
    "server.listen", Str, "0.0.0.0:8443", "HTTPS listen address";
    "server.http_redirect_listen", Str, "", "Optional plain-HTTP listener that redirects console paths to HTTPS and refuses API paths";
    "server.public_url", Str, "https://localhost:8443", "External HTTPS base URL, used for redirects";
    "server.workers", Int, "0", "HTTP worker threads (0 = one per core)";
    "server.body_limit_bytes", Int, "1048576", "Largest accepted request body (413 above it)";
    "server.json_max_depth", Int, "32", "Deepest accepted JSON nesting (400 above it)";
    "server.cors_allowed_origins", List, "[]", "Origins allowed to call the API from a browser (exact match); empty = CORS closed";
    "server.shutdown_timeout_secs", Int, "30", "Grace period for in-flight requests on SIGINT/SIGTERM";
    "tls.cert_file", Str, "", "PEM certificate chain (leaf first); required";
    "tls.key_file", Str, "", "PEM private key for the certificate; required";
    "tls.client_auth", Str, "off", "Client certificates: off | optional | required";
    "tls.client_identities", List, "[]", "Service principals authenticated by client certificate: entries `<SHA-256 of the certificate, hex>=<client id>`; such a client needs no bearer token and gets the roles of the service user (issuer `mtls`, subject = client id)";
    "tls.client_ca_file", Str, "", "PEM bundle of CAs trusted for client certificates (required unless client_auth = off)";
    "database.url", Secret, "", "PostgreSQL URL (also read from DATABASE_URL); required";
    "database.pool_size", Int, "16", "Connections per instance";
    "database.acquire_timeout_ms", Int, "2000", "Longest wait for a pooled connection before answering 503";
    "database.connect_timeout_secs", Int, "5", "Longest wait to open a new connection";
    "database.statement_timeout_ms", Int, "10000", "PostgreSQL statement_timeout for application queries";
    "database.migrate_on_start", Bool, "true", "Run pending migrations (under an advisory lock) when serving starts";
    "ratelimit.per_address_per_minute", Int, "6000", "Requests per minute from one source address (0 = off); health probes are exempt";
    "ratelimit.per_address_burst", Int, "500", "Burst allowance per source address";
    "ratelimit.per_principal_per_minute", Int, "1200", "Requests per minute per authenticated principal (0 = off)";
    "ratelimit.per_principal_burst", Int, "200", "Burst allowance per principal";
    "log.filter", Str, "info", "Log filter in RUST_LOG syntax (RUST_LOG overrides it)";
    "log.format", Str, "json", "json (one JSON object per line) | text";
    "crypto.kek", Secret, "", "Key-encryption key that wraps the data keys: 32 random bytes, base64 (`head -c32 /dev/urandom | base64`); required to serve";
    "crypto.rotation_kek", Secret, "", "New key-encryption key for `custodian keys rotate --kek` (32 bytes, base64); while set, also accepted to unwrap data keys";
    "crypto.blind_index_key", Secret, "", "HMAC key for the blind indexes of MRN, SSN, names and birth date (32 bytes, base64); separate from the KEK; required to serve";
    "auth.issuer", Str, "", "Bearer tokens: exact `iss` of accepted access tokens (https://, or http:// on localhost for tests). Setting any auth.* key enables bearer authentication; without the section bearer routes answer 401";
    "auth.audience", Str, "", "Bearer tokens: the API audience that `aud` must contain; required with auth.issuer";
    "auth.jwks_url", Str, "", "Bearer tokens: JWKS URL; empty = discovered from <issuer>/.well-known/openid-configuration (jwks_uri)";
    "auth.algorithms", List, "[\"RS256\", \"PS256\", \"ES256\", \"EdDSA\"]", "Bearer tokens: accepted signature algorithms (RS256/384/512, PS256/384/512, ES256/384, EdDSA); HS* and none are refused";
    "auth.clock_skew_secs", Int, "60", "Bearer tokens: leeway for exp/nbf/iat (at most 300)";
    "auth.max_token_age_secs", Int, "0", "Bearer tokens: refuse tokens whose iat is older than this (0 = off; when set, iat is required)";
    "auth.require_at_jwt_typ", Bool, "false", "Bearer tokens: require header typ at+jwt (RFC 9068), which rules out ID tokens completely";
    "auth.jwks_refetch_min_interval_secs", Int, "60", "Bearer tokens: an unknown kid (or a due refresh) fetches the JWKS at most once per this interval";
    "auth.jwks_max_staleness_secs", Int, "86400", "Bearer tokens: keep verifying with cached keys this long while the provider is unreachable";
    "auth.max_token_bytes", Int, "8192", "Bearer tokens: longer tokens are refused before parsing";
    "audit.chain_key", Secret, "", "HMAC-SHA256 key of the audit hash chain: base64 of exactly 32 random bytes (`openssl rand -base64 32`); required to serve and to verify; never change it for an existing chain";
    "audit.checkpoint_signing_key", Secret, "", "Ed25519 seed that signs audit checkpoints: base64 of exactly 32 random bytes, separate from audit.chain_key; required to serve; print the public key with `custodian audit public-key`";
    "audit.checkpoint_dir", Str, "", "Optional folder where every signed checkpoint is appended as one JSON line to checkpoints.jsonl (copy it to write-once storage); empty = database only";
    "audit.checkpoint_every_events", Int, "10000", "Write a signed checkpoint after this many audit events";
    "audit.checkpoint_every_secs", Int, "300", "Write a signed checkpoint at least this often (seconds) while new audit events arrive";
    "audit.batch_max", Int, "256", "Most audit events committed in one group-commit transaction";
    "audit.batch_wait_ms", Int, "2", "Longest wait (ms) to fill an audit batch after its first event";
    "audit.commit_timeout_ms", Int, "2000", "A request whose audit event is not committed within this time fails closed with 503";
    "console.issuer", Str, "", "Admin console: OpenID provider issuer URL (https://, or http:// on localhost for tests). Setting any console.* key enables the console; without the section console sign-in answers 404";
    "console.client_id", Str, "", "Admin console: OIDC client id registered at the provider; required with console.issuer";
    "console.client_secret", Secret, "", "Admin console: OIDC client secret; required with console.issuer";
    "console.redirect_url", Str, "", "Admin console: the callback URL registered at the provider, ending in /console/callback; required with console.issuer";
    "console.idle_timeout_secs", Int, "900", "Admin console: a session unused for this long ends";
    "console.absolute_timeout_secs", Int, "28800", "Admin console: a session ends this long after sign-in, used or not";
    "console.totp_lockout_secs", Int, "900", "Admin console: after 5 wrong TOTP codes in a row the account's TOTP check is locked this long";
    "console.step_up_secs", Int, "300", "Admin console: sensitive actions (roles, care teams, sessions, TOTP reset, service clients) need a TOTP code entered within this many seconds, else the console asks for one first";
    "console.emergency_attempts_per_minute", Int, "10", "Admin console: emergency sign-in attempts allowed per minute from one address and for one account name (per instance)";
}

/// The configuration reference as a Markdown table (printed by `custodian settings`,
/// kept in docs/configuration.md; a test checks that the two agree).
pub fn markdown_table() -> String {
    let mut out =
        String::from("| Setting | Environment variable | Default | Meaning |\n|---|---|---|---|\n");
    for s in SETTINGS {
        let mut env = format!("`{}`", s.env_name());
        if s.kind == Kind::Secret {
            env.push_str(&format!(" or `{}_FILE`", s.env_name()));
        }
        let default = if s.default.is_empty() {
            "—".to_string()
        } else {
            format!("`{}`", s.default)
        };
        out.push_str(&format!(
            "| `{}` | {env} | {default} | {} |\n",
            s.key,
            s.doc.replace('|', "\\|")
        ));
    }
    out
}

pub fn setting(key: &str) -> Option<&'static Setting> {
    SETTINGS.iter().find(|s| s.key == key)
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub server: ServerConfig,
    #[serde(default)]
    pub tls: TlsConfig,
    pub database: DatabaseConfig,
    #[serde(default)]
    pub ratelimit: RateLimitConfig,
    #[serde(default)]
    pub log: LogConfig,
    /// Bearer-token verification; absent = no bearer authentication (routes answer 401).
    #[serde(default)]
    pub auth: Option<AuthConfig>,
    #[serde(default)]
    pub crypto: CryptoConfig,
    #[serde(default)]
    pub audit: AuditConfig,
    /// The admin console's OIDC login; absent = console sign-in answers 404.
    #[serde(default)]
    pub console: Option<ConsoleConfig>,
}

/// `[console]`: OIDC sign-in, sessions and TOTP of the admin console.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsoleConfig {
    pub issuer: String,
    pub client_id: String,
    pub client_secret: Secret<String>,
    pub redirect_url: String,
    #[serde(default = "defaults::idle_timeout_secs")]
    pub idle_timeout_secs: u64,
    #[serde(default = "defaults::absolute_timeout_secs")]
    pub absolute_timeout_secs: u64,
    #[serde(default = "defaults::totp_lockout_secs")]
    pub totp_lockout_secs: u64,
    #[serde(default = "defaults::step_up_secs")]
    pub step_up_secs: u64,
    #[serde(default = "defaults::emergency_attempts_per_minute")]
    pub emergency_attempts_per_minute: u64,
}

impl ConsoleConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.issuer.is_empty() {
            return Err(ConfigError::new("console.issuer", "is required"));
        }
        validate_provider_url("console.issuer", &self.issuer)?;
        if self.client_id.is_empty() {
            return Err(ConfigError::new("console.client_id", "is required"));
        }
        if self.client_secret.expose().is_empty() {
            return Err(ConfigError::new("console.client_secret", "is required"));
        }
        let redirect = url::Url::parse(&self.redirect_url)
            .map_err(|_| ConfigError::new("console.redirect_url", "is not a valid URL"))?;
        if redirect.scheme() != "https" || !redirect.path().ends_with("/console/callback") {
            return Err(ConfigError::new(
                "console.redirect_url",
                "must be an https:// URL ending in /console/callback",
            ));
        }
        for (key, value) in [
            ("console.idle_timeout_secs", self.idle_timeout_secs),
            ("console.absolute_timeout_secs", self.absolute_timeout_secs),
            ("console.totp_lockout_secs", self.totp_lockout_secs),
            ("console.step_up_secs", self.step_up_secs),
            (
                "console.emergency_attempts_per_minute",
                self.emergency_attempts_per_minute,
            ),
        ] {
            if value == 0 {
                return Err(ConfigError::new(key, "must be at least 1"));
            }
        }
        Ok(())
    }
}

/// Keys for encryption at rest, split by duty: `kek` (normal operation), `rotation_kek`
/// (the next KEK, for `keys rotate --kek`), `blind_index_key` (equality search). Each
/// is 32 random bytes, base64; each may come from `<NAME>_FILE`. Required ones are
/// checked when the keyring is built (serving, `keys`), so `migrate` needs no key.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CryptoConfig {
    pub kek: Option<Secret<String>>,
    pub rotation_kek: Option<Secret<String>>,
    pub blind_index_key: Option<Secret<String>>,
}

impl CryptoConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        let fields = [
            ("crypto.kek", &self.kek),
            ("crypto.rotation_kek", &self.rotation_kek),
            ("crypto.blind_index_key", &self.blind_index_key),
        ];
        let mut seen: Vec<(&str, zeroize::Zeroizing<[u8; 32]>)> = Vec::new();
        for (setting, value) in fields {
            let Some(value) = value.as_ref().filter(|v| !v.expose().trim().is_empty()) else {
                continue;
            };
            let key = crate::crypto::provider::decode_key(setting, value.expose())
                .map_err(|e| ConfigError::new(setting, crypto_problem(e)))?;
            if let Some((other, _)) = seen.iter().find(|(_, k)| k.as_ref() == key.as_ref()) {
                return Err(ConfigError::new(
                    setting,
                    format!("must differ from {other} (each duty has its own key)"),
                ));
            }
            seen.push((setting, key));
        }
        Ok(())
    }
}

fn crypto_problem(e: crate::crypto::CryptoError) -> String {
    match e {
        crate::crypto::CryptoError::Config { problem, .. } => problem,
        other => other.to_string(),
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimitConfig {
    pub per_address_per_minute: u32,
    pub per_address_burst: u32,
    pub per_principal_per_minute: u32,
    pub per_principal_burst: u32,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        Self {
            per_address_per_minute: 6000,
            per_address_burst: 500,
            per_principal_per_minute: 1200,
            per_principal_burst: 200,
        }
    }
}

/// The audit trail: chain and checkpoint keys, checkpoint cadence, group commit.
/// Keys are optional here so that commands that need none (`migrate`) run without
/// them; [`AuditConfig::chain_key`] and [`AuditConfig::signing_key`] name the setting
/// when a key is needed and missing or malformed.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuditConfig {
    pub chain_key: Option<Secret<String>>,
    pub checkpoint_signing_key: Option<Secret<String>>,
    pub checkpoint_dir: Option<PathBuf>,
    pub checkpoint_every_events: u64,
    pub checkpoint_every_secs: u64,
    pub batch_max: usize,
    pub batch_wait_ms: u64,
    pub commit_timeout_ms: u64,
}

impl Default for AuditConfig {
    fn default() -> Self {
        Self {
            chain_key: None,
            checkpoint_signing_key: None,
            checkpoint_dir: None,
            checkpoint_every_events: 10_000,
            checkpoint_every_secs: 300,
            batch_max: 256,
            batch_wait_ms: 2,
            commit_timeout_ms: 2000,
        }
    }
}

/// Decodes a base64 secret that must hold exactly 32 bytes.
fn key32(setting: &str, value: Option<&Secret<String>>) -> Result<[u8; 32], ConfigError> {
    use base64::Engine;
    let Some(value) = value.filter(|v| !v.expose().trim().is_empty()) else {
        return Err(ConfigError::new(
            setting,
            "is required (base64 of 32 random bytes, e.g. `openssl rand -base64 32`)",
        ));
    };
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(value.expose().trim())
        .map_err(|_| ConfigError::new(setting, "must be base64 (of 32 random bytes)"))?;
    let mut key = [0u8; 32];
    if bytes.len() != key.len() {
        return Err(ConfigError::new(setting, "must decode to exactly 32 bytes"));
    }
    key.copy_from_slice(&bytes);
    Ok(key)
}

impl AuditConfig {
    /// The HMAC key of the chain (`audit.chain_key`).
    pub fn chain_key(&self) -> Result<crate::audit::ChainKey, ConfigError> {
        key32("audit.chain_key", self.chain_key.as_ref()).map(crate::audit::ChainKey::new)
    }

    /// The checkpoint signing key (`audit.checkpoint_signing_key`).
    pub fn signing_key(&self) -> Result<crate::audit::CheckpointSigner, ConfigError> {
        key32(
            "audit.checkpoint_signing_key",
            self.checkpoint_signing_key.as_ref(),
        )
        .map(crate::audit::CheckpointSigner::from_seed)
    }

    /// Checks the numeric settings (keys are checked where they are needed).
    pub fn validate(&self) -> Result<(), ConfigError> {
        let positive = [
            (
                "audit.checkpoint_every_events",
                self.checkpoint_every_events,
            ),
            ("audit.checkpoint_every_secs", self.checkpoint_every_secs),
            ("audit.batch_max", self.batch_max as u64),
            ("audit.commit_timeout_ms", self.commit_timeout_ms),
        ];
        for (setting, value) in positive {
            if value == 0 {
                return Err(ConfigError::new(setting, "must be at least 1"));
            }
        }
        if self.batch_max > 2000 {
            return Err(ConfigError::new("audit.batch_max", "must be at most 2000"));
        }
        Ok(())
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    pub http_redirect_listen: Option<SocketAddr>,
    pub public_url: String,
    pub workers: usize,
    pub body_limit_bytes: usize,
    pub json_max_depth: usize,
    pub cors_allowed_origins: Vec<String>,
    pub shutdown_timeout_secs: u64,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], 8443)),
            http_redirect_listen: None,
            public_url: "https://localhost:8443".into(),
            workers: 0,
            body_limit_bytes: 1024 * 1024,
            json_max_depth: 32,
            cors_allowed_origins: Vec::new(),
            shutdown_timeout_secs: 30,
        }
    }
}

#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ClientAuth {
    #[default]
    Off,
    Optional,
    Required,
}

/// Certificate paths are checked when a listener is built (`serve`, `dev`), so that
/// commands such as `migrate` need no certificate.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    pub client_auth: ClientAuth,
    pub client_ca_file: Option<PathBuf>,
    pub client_identities: Vec<String>,
}

impl TlsConfig {
    /// `tls.client_identities`, parsed: certificate SHA-256 → client id.
    pub fn client_identities(
        &self,
    ) -> Result<std::collections::HashMap<[u8; 32], String>, ConfigError> {
        let bad = || {
            ConfigError::new(
                "tls.client_identities",
                "entries must be <64 hex digits of the certificate's SHA-256>=<client id>",
            )
        };
        let mut out = std::collections::HashMap::new();
        for entry in &self.client_identities {
            let (hash, client) = entry.split_once('=').ok_or_else(bad)?;
            let bytes: [u8; 32] = hex::decode(hash.trim().to_ascii_lowercase())
                .ok()
                .and_then(|b| b.try_into().ok())
                .ok_or_else(bad)?;
            let client = client.trim();
            let ok = !client.is_empty()
                && client.len() <= 128
                && client.bytes().all(|b| b.is_ascii_graphic());
            if !ok {
                return Err(bad());
            }
            out.insert(bytes, client.to_string());
        }
        Ok(out)
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseConfig {
    pub url: Secret<String>,
    #[serde(default = "defaults::pool_size")]
    pub pool_size: u32,
    #[serde(default = "defaults::acquire_timeout_ms")]
    pub acquire_timeout_ms: u64,
    #[serde(default = "defaults::connect_timeout_secs")]
    pub connect_timeout_secs: u64,
    #[serde(default = "defaults::statement_timeout_ms")]
    pub statement_timeout_ms: u64,
    #[serde(default = "defaults::yes")]
    pub migrate_on_start: bool,
}

impl DatabaseConfig {
    pub fn new(url: String) -> Self {
        Self {
            url: Secret::new(url),
            pool_size: defaults::pool_size(),
            acquire_timeout_ms: defaults::acquire_timeout_ms(),
            connect_timeout_secs: defaults::connect_timeout_secs(),
            statement_timeout_ms: defaults::statement_timeout_ms(),
            migrate_on_start: true,
        }
    }

    pub fn acquire_timeout(&self) -> Duration {
        Duration::from_millis(self.acquire_timeout_ms)
    }
}

#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Json,
    Text,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    pub filter: String,
    pub format: LogFormat,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            filter: "info".into(),
            format: LogFormat::Json,
        }
    }
}

/// `[auth]`: how API bearer tokens (JWT access tokens) are verified. See
/// [`crate::auth`] for the rules applied to every token.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    pub issuer: String,
    pub audience: String,
    #[serde(default)]
    pub jwks_url: Option<String>,
    #[serde(default = "defaults::auth_algorithms")]
    pub algorithms: Vec<String>,
    #[serde(default = "defaults::clock_skew_secs")]
    pub clock_skew_secs: u64,
    #[serde(default)]
    pub max_token_age_secs: u64,
    #[serde(default)]
    pub require_at_jwt_typ: bool,
    #[serde(default = "defaults::jwks_refetch_min_interval_secs")]
    pub jwks_refetch_min_interval_secs: u64,
    #[serde(default = "defaults::jwks_max_staleness_secs")]
    pub jwks_max_staleness_secs: u64,
    #[serde(default = "defaults::max_token_bytes")]
    pub max_token_bytes: usize,
}

/// Longest accepted `auth.clock_skew_secs`.
pub const MAX_CLOCK_SKEW_SECS: u64 = 300;

impl AuthConfig {
    /// The configured algorithms, parsed. Shared-secret algorithms (HS*) and `none` are
    /// refused: with an HMAC algorithm anyone who knows the key (for example a public
    /// key misused as an HMAC secret) can mint tokens.
    pub fn parsed_algorithms(&self) -> Result<Vec<jsonwebtoken::Algorithm>, ConfigError> {
        use jsonwebtoken::Algorithm as A;
        const KEY: &str = "auth.algorithms";
        if self.algorithms.is_empty() {
            return Err(ConfigError::new(KEY, "must name at least one algorithm"));
        }
        let mut out = Vec::new();
        for name in &self.algorithms {
            let alg = match name.as_str() {
                "RS256" => A::RS256,
                "RS384" => A::RS384,
                "RS512" => A::RS512,
                "PS256" => A::PS256,
                "PS384" => A::PS384,
                "PS512" => A::PS512,
                "ES256" => A::ES256,
                "ES384" => A::ES384,
                "EdDSA" => A::EdDSA,
                "HS256" | "HS384" | "HS512" => {
                    return Err(ConfigError::new(
                        KEY,
                        "HS256/HS384/HS512 are refused: shared-secret tokens can be minted by anyone holding the secret",
                    ));
                }
                n if n.eq_ignore_ascii_case("none") => {
                    return Err(ConfigError::new(
                        KEY,
                        "none is refused: unsigned tokens are never accepted",
                    ));
                }
                _ => {
                    return Err(ConfigError::new(
                        KEY,
                        "must list only RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384, EdDSA",
                    ));
                }
            };
            if !out.contains(&alg) {
                out.push(alg);
            }
        }
        Ok(out)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.issuer.is_empty() {
            return Err(ConfigError::new("auth.issuer", "is required"));
        }
        validate_provider_url("auth.issuer", &self.issuer)?;
        if self.audience.trim().is_empty() {
            return Err(ConfigError::new("auth.audience", "is required"));
        }
        if let Some(url) = self.jwks_url.as_deref().filter(|u| !u.is_empty()) {
            validate_provider_url("auth.jwks_url", url)?;
        }
        self.parsed_algorithms()?;
        if self.clock_skew_secs > MAX_CLOCK_SKEW_SECS {
            return Err(ConfigError::new(
                "auth.clock_skew_secs",
                "must be at most 300",
            ));
        }
        if self.jwks_refetch_min_interval_secs == 0 {
            return Err(ConfigError::new(
                "auth.jwks_refetch_min_interval_secs",
                "must be at least 1",
            ));
        }
        if self.jwks_max_staleness_secs == 0 {
            return Err(ConfigError::new(
                "auth.jwks_max_staleness_secs",
                "must be at least 1",
            ));
        }
        if self.max_token_bytes < 256 || self.max_token_bytes > 65_536 {
            return Err(ConfigError::new(
                "auth.max_token_bytes",
                "must be between 256 and 65536",
            ));
        }
        Ok(())
    }
}

/// Identity-provider URLs must be https; plain http is allowed only on the loopback
/// names used by tests. No credentials, no fragment.
pub fn validate_provider_url(setting: &str, raw: &str) -> Result<url::Url, ConfigError> {
    let url = url::Url::parse(raw).map_err(|_| ConfigError::new(setting, "is not a valid URL"))?;
    let loopback = matches!(
        url.host(),
        Some(url::Host::Domain("localhost"))
            | Some(url::Host::Ipv4(std::net::Ipv4Addr::LOCALHOST))
            | Some(url::Host::Ipv6(std::net::Ipv6Addr::LOCALHOST))
    );
    match url.scheme() {
        "https" => {}
        "http" if loopback => {}
        _ => {
            return Err(ConfigError::new(
                setting,
                "must be an https:// URL (http:// only for localhost)",
            ));
        }
    }
    if !url.username().is_empty() || url.password().is_some() || url.fragment().is_some() {
        return Err(ConfigError::new(
            setting,
            "must not carry credentials or a fragment",
        ));
    }
    Ok(url)
}

mod defaults {
    pub fn auth_algorithms() -> Vec<String> {
        ["RS256", "PS256", "ES256", "EdDSA"]
            .into_iter()
            .map(String::from)
            .collect()
    }
    pub fn clock_skew_secs() -> u64 {
        60
    }
    pub fn jwks_refetch_min_interval_secs() -> u64 {
        60
    }
    pub fn jwks_max_staleness_secs() -> u64 {
        86_400
    }
    pub fn max_token_bytes() -> usize {
        8192
    }
    pub fn pool_size() -> u32 {
        16
    }
    pub fn acquire_timeout_ms() -> u64 {
        2000
    }
    pub fn connect_timeout_secs() -> u64 {
        5
    }
    pub fn statement_timeout_ms() -> u64 {
        10_000
    }
    pub fn idle_timeout_secs() -> u64 {
        900
    }
    pub fn absolute_timeout_secs() -> u64 {
        28_800
    }
    pub fn step_up_secs() -> u64 {
        300
    }
    pub fn totp_lockout_secs() -> u64 {
        900
    }
    pub fn emergency_attempts_per_minute() -> u64 {
        10
    }
    pub fn yes() -> bool {
        true
    }
}

/// Environment variables that belong to Custodian but are not settings.
const NON_SETTING_VARS: &[&str] = &[
    "CUSTODIAN_CONFIG",
    "CUSTODIAN_TEST_DATABASE_URL",
    "CUSTODIAN_DEV_DIR",
    "CUSTODIAN_BENCH_DATABASE_URL",
];

impl Config {
    /// Loads the file (if any), overlays the environment, and validates the result.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        let table = load_table(path, std::env::vars())?;
        let config = from_table(table)?;
        config.validate()?;
        Ok(config)
    }

    /// Loads only the `[audit]` section (for offline commands that need no database).
    pub fn load_audit(path: Option<&Path>) -> Result<AuditConfig, ConfigError> {
        let mut table = load_table(path, std::env::vars())?;
        let audit = table
            .remove("audit")
            .unwrap_or_else(|| toml::Value::Table(toml::Table::new()));
        let mut root = toml::Table::new();
        root.insert("audit".into(), audit);
        root.insert("database".into(), {
            let mut d = toml::Table::new();
            d.insert("url".into(), "postgres://offline/none".into());
            toml::Value::Table(d)
        });
        let config = from_table(root)?;
        config.audit.validate()?;
        Ok(config.audit)
    }

    /// Checks what types alone cannot: consistent combinations and parseable URLs.
    pub fn validate(&self) -> Result<(), ConfigError> {
        validate_database_url(self.database.url.expose())?;
        self.audit.validate()?;
        if self.database.pool_size == 0 {
            return Err(ConfigError::new("database.pool_size", "must be at least 1"));
        }
        if self.server.body_limit_bytes == 0 {
            return Err(ConfigError::new(
                "server.body_limit_bytes",
                "must be at least 1",
            ));
        }
        if self.server.json_max_depth == 0 {
            return Err(ConfigError::new(
                "server.json_max_depth",
                "must be at least 1",
            ));
        }
        let public = url::Url::parse(&self.server.public_url)
            .map_err(|_| ConfigError::new("server.public_url", "is not a valid URL"))?;
        if public.scheme() != "https" {
            return Err(ConfigError::new(
                "server.public_url",
                "must be an https:// URL",
            ));
        }
        for origin in &self.server.cors_allowed_origins {
            let parsed = url::Url::parse(origin).map_err(|_| {
                ConfigError::new("server.cors_allowed_origins", "contains an invalid origin")
            })?;
            if origin == "*" || parsed.origin().ascii_serialization() != *origin {
                return Err(ConfigError::new(
                    "server.cors_allowed_origins",
                    "entries must be exact origins like https://app.example.org (no wildcard, path or trailing slash)",
                ));
            }
        }
        self.crypto.validate()?;
        self.tls.client_identities()?;
        if !self.tls.client_identities.is_empty() && self.tls.client_auth == ClientAuth::Off {
            return Err(ConfigError::new(
                "tls.client_identities",
                "needs tls.client_auth optional or required",
            ));
        }
        if self.tls.client_auth != ClientAuth::Off && self.tls.client_ca_file.is_none() {
            return Err(ConfigError::new(
                "tls.client_ca_file",
                "is required when tls.client_auth is optional or required",
            ));
        }
        if let Some(auth) = &self.auth {
            auth.validate()?;
        }
        if let Some(console) = &self.console {
            console.validate()?;
        }
        Ok(())
    }
}

fn validate_database_url(url: &str) -> Result<(), ConfigError> {
    // The message never repeats the URL: it may carry a password.
    let parsed = url::Url::parse(url).map_err(|_| {
        ConfigError::new(
            "database.url",
            "is not a valid URL (expected postgres://user@host:port/database)",
        )
    })?;
    if !matches!(parsed.scheme(), "postgres" | "postgresql") {
        return Err(ConfigError::new(
            "database.url",
            "must use the postgres:// or postgresql:// scheme",
        ));
    }
    if parsed.path().trim_start_matches('/').is_empty() {
        return Err(ConfigError::new("database.url", "must name a database"));
    }
    Ok(())
}

/// Reads the TOML file and applies the environment on top, checking every key.
pub fn load_table(
    path: Option<&Path>,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<toml::Table, ConfigError> {
    let mut table = match path {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|e| {
                ConfigError::new("--config", format!("cannot read {}: {e}", path.display()))
            })?;
            toml::from_str::<toml::Table>(&text).map_err(|e| {
                ConfigError::new(
                    "--config",
                    format!(
                        "{} is not valid TOML: {}",
                        path.display(),
                        e.message().trim()
                    ),
                )
            })?
        }
        None => toml::Table::new(),
    };
    resolve_file_secrets_in_table(&mut table)?;
    reject_unknown_keys(&table, "")?;

    let mut env: Vec<(String, String)> = env
        .into_iter()
        .filter(|(k, _)| {
            k.starts_with("CUSTODIAN_") || k == "DATABASE_URL" || k == "DATABASE_URL_FILE"
        })
        .collect();
    // Plain values first so that a CUSTODIAN_ value beats DATABASE_URL deterministically.
    env.sort_by_key(|(k, _)| k.starts_with("CUSTODIAN_"));
    for (name, value) in env {
        if NON_SETTING_VARS.contains(&name.as_str()) {
            continue;
        }
        let is_setting =
            |n: &str| n == "DATABASE_URL" || SETTINGS.iter().any(|s| s.env_name() == n);
        let (lookup, from_file) = match name.strip_suffix("_FILE") {
            Some(base) if !is_setting(&name) => (base.to_string(), true),
            _ => (name.clone(), false),
        };
        let lookup = if lookup == "DATABASE_URL" {
            "CUSTODIAN_DATABASE_URL".to_string()
        } else {
            lookup
        };
        let Some(spec) = SETTINGS.iter().find(|s| s.env_name() == lookup) else {
            return Err(ConfigError::new(name, "is not a known setting"));
        };
        let raw = if from_file {
            if spec.kind != Kind::Secret {
                return Err(ConfigError::new(
                    name,
                    "only secrets can be read from a file",
                ));
            }
            read_secret_file(spec.key, Path::new(&value))?
        } else {
            value
        };
        let parsed = parse_env_value(spec, &raw)?;
        insert_dotted(&mut table, spec.key, parsed);
    }
    Ok(table)
}

fn read_secret_file(key: &str, path: &Path) -> Result<String, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigError::new(
            key,
            format!("cannot read secret file {}: {e}", path.display()),
        )
    })?;
    Ok(text.trim_end_matches(['\r', '\n']).to_string())
}

fn parse_env_value(spec: &Setting, raw: &str) -> Result<toml::Value, ConfigError> {
    Ok(match spec.kind {
        Kind::Str | Kind::Secret => toml::Value::String(raw.to_string()),
        Kind::Int => toml::Value::Integer(
            raw.trim()
                .parse()
                .map_err(|_| ConfigError::new(spec.key, "must be a whole number"))?,
        ),
        Kind::Bool => toml::Value::Boolean(match raw.trim() {
            "true" | "1" | "yes" => true,
            "false" | "0" | "no" => false,
            _ => return Err(ConfigError::new(spec.key, "must be true or false")),
        }),
        Kind::List => toml::Value::Array(
            raw.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| toml::Value::String(s.to_string()))
                .collect(),
        ),
    })
}

/// In the file, a secret `key` may be given as `key_file = "/path"` instead.
fn resolve_file_secrets_in_table(table: &mut toml::Table) -> Result<(), ConfigError> {
    for spec in SETTINGS.iter().filter(|s| s.kind == Kind::Secret) {
        let Some((section, field)) = spec.key.split_once('.') else {
            continue;
        };
        let file_key = format!("{field}_file");
        let Some(toml::Value::Table(sec)) = table.get_mut(section) else {
            continue;
        };
        if let Some(v) = sec.remove(&file_key) {
            let toml::Value::String(path) = v else {
                return Err(ConfigError::new(
                    format!("{section}.{file_key}"),
                    "must be a file path",
                ));
            };
            let value = read_secret_file(spec.key, Path::new(&path))?;
            sec.insert(field.to_string(), toml::Value::String(value));
        }
    }
    Ok(())
}

fn reject_unknown_keys(table: &toml::Table, prefix: &str) -> Result<(), ConfigError> {
    for (k, v) in table {
        let key = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        let is_section = SETTINGS
            .iter()
            .any(|s| s.key.starts_with(&format!("{key}.")));
        match v {
            toml::Value::Table(t) if is_section => reject_unknown_keys(t, &key)?,
            _ if setting(&key).is_some() => {}
            _ => return Err(ConfigError::new(key, "is not a known setting")),
        }
    }
    Ok(())
}

pub fn insert_dotted(table: &mut toml::Table, key: &str, value: toml::Value) {
    let mut parts = key.split('.').peekable();
    let mut current = table;
    while let Some(part) = parts.next() {
        if parts.peek().is_none() {
            current.insert(part.to_string(), value);
            return;
        }
        let entry = current
            .entry(part.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        if !entry.is_table() {
            *entry = toml::Value::Table(toml::Table::new());
        }
        let toml::Value::Table(next) = entry else {
            return;
        };
        current = next;
    }
}

/// Deep-merges `over` into `base` (values in `over` win).
pub fn merge(base: &mut toml::Table, over: toml::Table) {
    for (k, v) in over {
        match (base.get_mut(&k), v) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => merge(b, o),
            (_, v) => {
                base.insert(k, v);
            }
        }
    }
}

/// Turns the merged table into a typed [`Config`]; a missing or mistyped value names
/// its setting.
pub fn from_table(table: toml::Table) -> Result<Config, ConfigError> {
    let value = toml::Value::Table(table);
    serde_path_to_error::deserialize::<_, Config>(value).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let message = inner.message().to_string();
        if let Some(field) = message
            .strip_prefix("missing field `")
            .and_then(|m| m.strip_suffix('`'))
        {
            let key = if path == "." {
                field.to_string()
            } else {
                format!("{path}.{field}")
            };
            if key == "database" || key == "database.url" {
                return ConfigError::new(
                    "database.url",
                    "is required (set CUSTODIAN_DATABASE_URL or DATABASE_URL)",
                );
            }
            return ConfigError::new(key, "is required");
        }
        let kind = setting(&path).map(|s| s.kind);
        let problem = match kind {
            Some(Kind::Secret) => "has an invalid value".to_string(),
            Some(Kind::Int) => "must be a whole number in range".to_string(),
            Some(Kind::Bool) => "must be true or false".to_string(),
            Some(Kind::List) => "must be a list of strings".to_string(),
            _ => {
                // serde's message may quote the bad value; keep only its gist.
                if message.contains("unknown variant") {
                    let expected = message
                        .split("expected ")
                        .nth(1)
                        .unwrap_or("a documented value");
                    format!("must be one of {expected}")
                } else if message.contains("invalid socket address") {
                    "must be an address like 0.0.0.0:8443".to_string()
                } else {
                    "has an invalid value".to_string()
                }
            }
        };
        ConfigError::new(path, problem)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn minimal() -> Vec<(String, String)> {
        env(&[
            ("CUSTODIAN_TLS_CERT_FILE", "/c.pem"),
            ("CUSTODIAN_TLS_KEY_FILE", "/k.pem"),
            ("DATABASE_URL", "postgres://u:pw@localhost/db"),
        ])
    }

    fn load(pairs: Vec<(String, String)>) -> Result<Config, ConfigError> {
        let c = from_table(load_table(None, pairs)?)?;
        c.validate()?;
        Ok(c)
    }

    #[test]
    fn environment_alone_is_enough() {
        let c = load(minimal()).unwrap();
        assert_eq!(c.server.listen.port(), 8443);
        assert_eq!(c.database.url.expose(), "postgres://u:pw@localhost/db");
    }

    #[test]
    fn unknown_environment_setting_is_named() {
        let mut e = minimal();
        e.push(("CUSTODIAN_SERVER_LISSTEN".into(), "x".into()));
        let err = load(e).unwrap_err();
        assert_eq!(err.setting, "CUSTODIAN_SERVER_LISSTEN");
    }

    #[test]
    fn bad_number_names_the_setting() {
        let mut e = minimal();
        e.push(("CUSTODIAN_DATABASE_POOL_SIZE".into(), "many".into()));
        assert_eq!(load(e).unwrap_err().setting, "database.pool_size");
    }

    #[test]
    fn bad_enum_names_the_setting_and_the_choices() {
        let mut e = minimal();
        e.push(("CUSTODIAN_TLS_CLIENT_AUTH".into(), "sometimes".into()));
        let err = load(e).unwrap_err();
        assert_eq!(err.setting, "tls.client_auth");
        assert!(err.problem.contains("off"), "{}", err.problem);
    }

    #[test]
    fn malformed_database_url_does_not_echo_it() {
        let mut e = minimal();
        e.retain(|(k, _)| k != "DATABASE_URL");
        e.push((
            "CUSTODIAN_DATABASE_URL".into(),
            "mysql://secretpw@x/y".into(),
        ));
        let err = load(e).unwrap_err();
        assert_eq!(err.setting, "database.url");
        assert!(!err.to_string().contains("secretpw"));
    }

    #[test]
    fn missing_database_url_is_named() {
        let mut e = minimal();
        e.retain(|(k, _)| k != "DATABASE_URL");
        assert_eq!(load(e).unwrap_err().setting, "database.url");
    }

    #[test]
    fn secret_can_come_from_a_file() {
        let dir = std::env::temp_dir().join(format!("custodian-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("db_url");
        std::fs::write(&f, "postgres://u@h/fromfile\n").unwrap();
        let mut e = minimal();
        e.retain(|(k, _)| k != "DATABASE_URL");
        e.push((
            "CUSTODIAN_DATABASE_URL_FILE".into(),
            f.display().to_string(),
        ));
        let c = load(e).unwrap();
        assert_eq!(c.database.url.expose(), "postgres://u@h/fromfile");
    }

    #[test]
    fn non_secret_cannot_come_from_a_file() {
        let mut e = minimal();
        e.push(("CUSTODIAN_SERVER_LISTEN_FILE".into(), "/x".into()));
        assert!(load(e).is_err());
    }

    #[test]
    fn unknown_key_in_file_is_named() {
        let table: toml::Table = toml::from_str("[server]\nlissten = \"x\"\n").unwrap();
        let err = reject_unknown_keys(&table, "").unwrap_err();
        assert_eq!(err.setting, "server.lissten");
        let table: toml::Table = toml::from_str("[bogus]\nx = 1\n").unwrap();
        assert_eq!(
            reject_unknown_keys(&table, "").unwrap_err().setting,
            "bogus"
        );
    }

    #[test]
    fn client_identities_are_checked_and_named() {
        let mut e = minimal();
        e.push(("CUSTODIAN_TLS_CLIENT_AUTH".into(), "optional".into()));
        e.push(("CUSTODIAN_TLS_CLIENT_CA_FILE".into(), "/ca.pem".into()));
        let mut bad = e.clone();
        bad.push(("CUSTODIAN_TLS_CLIENT_IDENTITIES".into(), "abc=lab".into()));
        assert_eq!(load(bad).unwrap_err().setting, "tls.client_identities");
        e.push((
            "CUSTODIAN_TLS_CLIENT_IDENTITIES".into(),
            format!("{}=lab", "ab".repeat(32)),
        ));
        let c = load(e).unwrap();
        assert_eq!(c.tls.client_identities().unwrap().len(), 1);
    }

    #[test]
    fn cors_wildcard_is_refused() {
        let mut e = minimal();
        e.push(("CUSTODIAN_SERVER_CORS_ALLOWED_ORIGINS".into(), "*".into()));
        assert_eq!(load(e).unwrap_err().setting, "server.cors_allowed_origins");
    }

    #[test]
    fn debug_of_config_hides_the_database_password() {
        let c = load(minimal()).unwrap();
        assert!(!format!("{c:?}").contains("pw@"));
    }

    fn with_auth(extra: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let mut e = minimal();
        e.push((
            "CUSTODIAN_AUTH_ISSUER".into(),
            "https://idp.example.org".into(),
        ));
        e.push((
            "CUSTODIAN_AUTH_AUDIENCE".into(),
            "https://api.example.org".into(),
        ));
        e.extend(env(extra));
        load(e)
    }

    #[test]
    fn auth_section_is_optional_and_has_safe_defaults() {
        assert!(load(minimal()).unwrap().auth.is_none());
        let a = with_auth(&[]).unwrap().auth.unwrap();
        assert_eq!(a.algorithms, ["RS256", "PS256", "ES256", "EdDSA"]);
        assert_eq!(a.clock_skew_secs, 60);
        assert_eq!(a.max_token_age_secs, 0);
        assert!(!a.require_at_jwt_typ);
        assert_eq!(a.jwks_refetch_min_interval_secs, 60);
        assert_eq!(a.jwks_max_staleness_secs, 86_400);
        assert_eq!(a.max_token_bytes, 8192);
    }

    #[test]
    fn auth_without_issuer_or_audience_is_named() {
        let mut e = minimal();
        e.push(("CUSTODIAN_AUTH_AUDIENCE".into(), "api".into()));
        assert_eq!(load(e).unwrap_err().setting, "auth.issuer");
        let mut e = minimal();
        e.push(("CUSTODIAN_AUTH_ISSUER".into(), "https://idp".into()));
        assert_eq!(load(e).unwrap_err().setting, "auth.audience");
    }

    #[test]
    fn shared_secret_and_none_algorithms_are_refused() {
        for alg in ["HS256", "RS256,HS512", "none", "NONE", "XX1"] {
            let err = with_auth(&[("CUSTODIAN_AUTH_ALGORITHMS", alg)]).unwrap_err();
            assert_eq!(err.setting, "auth.algorithms", "{alg}");
        }
        let err = with_auth(&[("CUSTODIAN_AUTH_ALGORITHMS", "HS256")]).unwrap_err();
        assert!(err.problem.contains("refused"), "{}", err.problem);
        assert!(with_auth(&[("CUSTODIAN_AUTH_ALGORITHMS", "ES256, EdDSA")]).is_ok());
    }

    #[test]
    fn provider_urls_must_be_https_except_on_localhost() {
        let mut e = minimal();
        e.push((
            "CUSTODIAN_AUTH_ISSUER".into(),
            "http://idp.example.org".into(),
        ));
        e.push(("CUSTODIAN_AUTH_AUDIENCE".into(), "api".into()));
        assert_eq!(load(e).unwrap_err().setting, "auth.issuer");
        let err =
            with_auth(&[("CUSTODIAN_AUTH_JWKS_URL", "http://keys.example.org/jwks")]).unwrap_err();
        assert_eq!(err.setting, "auth.jwks_url");
        assert!(with_auth(&[("CUSTODIAN_AUTH_JWKS_URL", "http://127.0.0.1:9/jwks")]).is_ok());
        assert!(with_auth(&[("CUSTODIAN_AUTH_JWKS_URL", "http://localhost:9/jwks")]).is_ok());
    }

    #[test]
    fn clock_skew_is_bounded() {
        let err = with_auth(&[("CUSTODIAN_AUTH_CLOCK_SKEW_SECS", "301")]).unwrap_err();
        assert_eq!(err.setting, "auth.clock_skew_secs");
        assert!(with_auth(&[("CUSTODIAN_AUTH_CLOCK_SKEW_SECS", "300")]).is_ok());
    }

    #[test]
    fn audit_keys_are_checked_and_named() {
        let c = load(minimal()).unwrap();
        assert_eq!(c.audit.chain_key().unwrap_err().setting, "audit.chain_key");
        let mut e = minimal();
        e.push(("CUSTODIAN_AUDIT_CHAIN_KEY".into(), "c2hvcnQ=".into()));
        e.push(("CUSTODIAN_AUDIT_CHECKPOINT_SIGNING_KEY".into(), "!!".into()));
        let c = load(e).unwrap();
        let err = c.audit.chain_key().unwrap_err();
        assert_eq!(err.setting, "audit.chain_key");
        assert!(!err.to_string().contains("c2hvcnQ"));
        assert_eq!(
            c.audit.signing_key().unwrap_err().setting,
            "audit.checkpoint_signing_key"
        );
        let mut e = minimal();
        let key = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
        e.push(("CUSTODIAN_AUDIT_CHAIN_KEY".into(), key.into()));
        e.push(("CUSTODIAN_AUDIT_BATCH_MAX".into(), "0".into()));
        assert_eq!(load(e).unwrap_err().setting, "audit.batch_max");
    }

    #[test]
    fn every_setting_has_a_unique_env_name() {
        let mut names: Vec<_> = SETTINGS.iter().map(Setting::env_name).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), SETTINGS.len());
    }
}
