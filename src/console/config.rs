//! `[console]`: the admin console's settings section (owned here; `config` aggregates it).

use crate::auth::config::validate_provider_url;
use crate::error::ConfigError;
use crate::secret::Secret;
use serde::Deserialize;

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
    /// Addresses of reverse proxies whose `Forwarded` / `X-Forwarded-Host` headers the
    /// console's Origin check believes; from anyone else those headers are ignored.
    #[serde(default)]
    pub trusted_proxies: Vec<String>,
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
        if self
            .trusted_proxies
            .iter()
            .any(|p| p.trim().parse::<std::net::IpAddr>().is_err())
        {
            return Err(ConfigError::new(
                "console.trusted_proxies",
                "must list IP addresses (e.g. [\"10.0.0.5\"])",
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

mod defaults {
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
}
