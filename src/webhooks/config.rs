//! `[webhooks]`: the delivery worker's settings (owned here; `config` aggregates it, the
//! registry documents each key).

use crate::error::ConfigError;
use serde::Deserialize;
use std::time::Duration;

#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct WebhookConfig {
    /// Whether this instance runs the delivery worker (one instance at a time delivers,
    /// whatever the number with it on).
    pub enabled: bool,
    /// Pause between passes over the due deliveries.
    pub poll_ms: u64,
    /// Most deliveries attempted in one pass.
    pub batch_max: i64,
    /// Attempts after which a delivery is dead-lettered.
    pub max_attempts: u32,
    /// Wait before the second attempt; doubled after each further failure…
    pub backoff_initial_secs: u64,
    /// …up to this cap.
    pub backoff_max_secs: u64,
    /// Longest wait for a receiver's answer (connect included).
    pub timeout_secs: u64,
    /// Optional PEM bundle of CAs trusted for endpoints besides the public web roots (a
    /// private CA of the organisation).
    pub ca_file: String,
    /// Deliver to hosts on loopback, private, link-local addresses (off: the SSRF guard
    /// of `webhooks::guard` refuses them at registration and at every delivery).
    pub allow_private_hosts: bool,
}

impl Default for WebhookConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            poll_ms: 1000,
            batch_max: 50,
            max_attempts: 8,
            backoff_initial_secs: 30,
            backoff_max_secs: 3600,
            timeout_secs: 10,
            ca_file: String::new(),
            allow_private_hosts: false,
        }
    }
}

impl WebhookConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !(10..=60_000).contains(&self.poll_ms) {
            return Err(ConfigError::new(
                "webhooks.poll_ms",
                "must be between 10 and 60000",
            ));
        }
        if !(1..=500).contains(&self.batch_max) {
            return Err(ConfigError::new(
                "webhooks.batch_max",
                "must be between 1 and 500",
            ));
        }
        if !(1..=50).contains(&self.max_attempts) {
            return Err(ConfigError::new(
                "webhooks.max_attempts",
                "must be between 1 and 50",
            ));
        }
        if self.backoff_initial_secs == 0 {
            return Err(ConfigError::new(
                "webhooks.backoff_initial_secs",
                "must be at least 1",
            ));
        }
        if self.backoff_max_secs < self.backoff_initial_secs || self.backoff_max_secs > 86_400 {
            return Err(ConfigError::new(
                "webhooks.backoff_max_secs",
                "must be at least webhooks.backoff_initial_secs and at most 86400",
            ));
        }
        if !(1..=120).contains(&self.timeout_secs) {
            return Err(ConfigError::new(
                "webhooks.timeout_secs",
                "must be between 1 and 120",
            ));
        }
        Ok(())
    }

    /// The wait after the `failed`-th failed attempt (1 = the first): the initial wait,
    /// doubled per further failure, capped. `None` once `max_attempts` have failed (the
    /// delivery is dead-lettered).
    pub fn retry_after(&self, failed: u32) -> Option<Duration> {
        if failed >= self.max_attempts {
            return None;
        }
        let doubling = failed.saturating_sub(1).min(32);
        let secs = self
            .backoff_initial_secs
            .saturating_mul(1u64 << doubling)
            .min(self.backoff_max_secs);
        Some(Duration::from_secs(secs))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap_then_dead_letters() {
        let c = WebhookConfig {
            max_attempts: 6,
            backoff_initial_secs: 10,
            backoff_max_secs: 60,
            ..WebhookConfig::default()
        };
        let waits: Vec<_> = (1..=6).map(|n| c.retry_after(n)).collect();
        assert_eq!(
            waits,
            vec![
                Some(Duration::from_secs(10)),
                Some(Duration::from_secs(20)),
                Some(Duration::from_secs(40)),
                Some(Duration::from_secs(60)),
                Some(Duration::from_secs(60)),
                None,
            ]
        );
        assert!(WebhookConfig::default().validate().is_ok());
        let bad = WebhookConfig {
            backoff_max_secs: 1,
            ..WebhookConfig::default()
        };
        assert_eq!(
            bad.validate().unwrap_err().setting,
            "webhooks.backoff_max_secs"
        );
    }
}
