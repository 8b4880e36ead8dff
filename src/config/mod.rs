//! Configuration: a TOML file, overridden by `CUSTODIAN_*` environment variables.
//!
//! Every setting is listed once in [`SETTINGS`]; that table drives the environment
//! overlay, the `*_FILE` indirection for secrets, the rejection of unknown keys and the
//! configuration table in docs/configuration.md. A bad value is a [`ConfigError`] naming the setting.

pub mod registry;

pub use crate::error::ConfigError;
pub use registry::{Kind, SETTINGS, Setting, markdown_table, setting};

use crate::audit::config::AuditConfig;
use crate::auth::config::AuthConfig;
use crate::console::config::ConsoleConfig;
use crate::crypto::config::CryptoConfig;
use crate::db::config::DatabaseConfig;
use crate::detect::config::DetectConfig;
use crate::fhir::config::FhirConfig;
use crate::monitoring::MetricsConfig;
use crate::telemetry::LogConfig;
use crate::tls::{ClientAuth, TlsConfig};
use crate::web::config::{RateLimitConfig, ServerConfig};
use crate::webhooks::config::WebhookConfig;
use serde::Deserialize;
use std::path::Path;

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
    #[serde(default)]
    pub metrics: MetricsConfig,
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
    /// Break-glass: modes, reasons, durations, authentication strength.
    #[serde(default)]
    pub break_glass: crate::policy::break_glass::BreakGlassConfig,
    /// The FHIR API (update preconditions).
    #[serde(default)]
    pub fhir: FhirConfig,
    /// The privacy detectors over the audit trail.
    #[serde(default)]
    pub detect: DetectConfig,
    /// Signed webhook delivery (the endpoints themselves are managed in the console).
    #[serde(default)]
    pub webhooks: WebhookConfig,
    /// Re-identification of export pseudonyms: the role allowed to.
    #[serde(default)]
    pub reidentify: crate::policy::reidentify::ReidentifyConfig,
    /// Bulk Data `$export`: output directory, batches, links, retention.
    #[serde(default)]
    pub export: crate::export::ExportConfig,
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
        self.detect.validate()?;
        self.webhooks.validate()?;
        self.export.validate()?;
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
        self.break_glass
            .validate()
            .map_err(|(setting, problem)| ConfigError::new(setting, problem))?;
        self.reidentify
            .validate()
            .map_err(|(setting, problem)| ConfigError::new(setting, problem))?;
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
        assert!(a.require_at_jwt_typ);
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
