//! `[export]`: Bulk Data export settings (owned here; `config` aggregates it, the
//! registry documents each key).

use crate::error::ConfigError;
use serde::Deserialize;

#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct ExportConfig {
    /// Where output files are written, one directory per job.
    pub dir: String,
    /// Whether this instance runs export jobs (any number may: a lease per job).
    pub worker: bool,
    /// Records read, transformed and written per batch.
    pub batch_size: i64,
    /// Pause after each batch, so an export never starves API requests.
    pub batch_pause_ms: u64,
    /// How often an idle runner looks for work and sweeps expired jobs.
    pub poll_ms: u64,
    /// A runner's hold on a job; a job whose runner stopped is taken over after it.
    pub lease_secs: u64,
    /// How long a download link in the manifest stays valid.
    pub link_secs: u64,
    /// How long a finished job and its files are kept.
    pub retain_mins: u64,
    /// The k of the k-anonymity report when the request names none.
    pub k: u32,
}

impl Default for ExportConfig {
    fn default() -> Self {
        Self {
            dir: "exports".to_string(),
            worker: true,
            batch_size: 500,
            batch_pause_ms: 5,
            poll_ms: 1000,
            lease_secs: 30,
            link_secs: 300,
            retain_mins: 1440,
            k: 5,
        }
    }
}

impl ExportConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.dir.trim().is_empty() {
            return Err(ConfigError::new("export.dir", "must name a directory"));
        }
        if !(1..=10_000).contains(&self.batch_size) {
            return Err(ConfigError::new(
                "export.batch_size",
                "must be between 1 and 10000",
            ));
        }
        if self.batch_pause_ms > 60_000 {
            return Err(ConfigError::new(
                "export.batch_pause_ms",
                "must be at most 60000",
            ));
        }
        if !(10..=60_000).contains(&self.poll_ms) {
            return Err(ConfigError::new(
                "export.poll_ms",
                "must be between 10 and 60000",
            ));
        }
        let positive = [
            ("export.lease_secs", self.lease_secs),
            ("export.link_secs", self.link_secs),
            ("export.retain_mins", self.retain_mins),
            ("export.k", u64::from(self.k)),
        ];
        for (setting, value) in positive {
            if value == 0 {
                return Err(ConfigError::new(setting, "must be at least 1"));
            }
        }
        Ok(())
    }
}
