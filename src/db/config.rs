//! `[database]`: connection settings (owned here; `config` aggregates it).

use crate::secret::Secret;
use serde::Deserialize;
use std::time::Duration;

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

pub(crate) mod defaults {
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
    pub fn yes() -> bool {
        true
    }
}
