//! `[auth]`: bearer-token verification settings (owned here; `config` aggregates it).

use crate::error::ConfigError;
use serde::Deserialize;

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
    /// On by default (RFC 9068): a token not typed as an access token is refused.
    #[serde(default = "defaults::require_at_jwt_typ")]
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
    pub fn require_at_jwt_typ() -> bool {
        true
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
}
