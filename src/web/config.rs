//! `[server]` and `[ratelimit]`: the HTTP layer's settings (owned here; `config`
//! aggregates them).

use serde::Deserialize;
use std::net::SocketAddr;

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
