//! `[audit]`: audit-trail settings (owned here; `config` aggregates it).

use crate::error::ConfigError;
use crate::secret::Secret;
use serde::Deserialize;
use std::path::PathBuf;

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
    pub fn chain_key(&self) -> Result<super::ChainKey, ConfigError> {
        key32("audit.chain_key", self.chain_key.as_ref()).map(super::ChainKey::new)
    }

    /// The checkpoint signing key (`audit.checkpoint_signing_key`).
    pub fn signing_key(&self) -> Result<super::CheckpointSigner, ConfigError> {
        key32(
            "audit.checkpoint_signing_key",
            self.checkpoint_signing_key.as_ref(),
        )
        .map(super::CheckpointSigner::from_seed)
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
