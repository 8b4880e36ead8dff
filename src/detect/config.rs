//! `[detect]`: the detectors' settings (owned here; `config` aggregates it, the registry
//! documents each key).

use crate::error::ConfigError;
use serde::Deserialize;

#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct DetectConfig {
    /// Whether this instance runs the detectors (one instance at a time does, whatever
    /// the number with it on).
    pub enabled: bool,
    /// Most audit events consumed in one pass (one transaction).
    pub batch_max: i64,
    /// Pause between passes when the detectors have caught up.
    pub poll_ms: u64,
    /// Refusals for lack of a care relationship, per person, that raise an alert…
    pub denials_threshold: u32,
    /// …within this window (minutes).
    pub denials_window_mins: u32,
    /// 401/403/429 refusals per source address, client or person that raise an alert…
    pub failures_threshold: u32,
    /// …within this window (minutes).
    pub failures_window_mins: u32,
    /// Bulk access: the window (minutes) in which distinct patients per person count…
    pub bulk_window_mins: u32,
    /// …the fewest distinct patients that can raise an alert…
    pub bulk_min_patients: u32,
    /// …and how many times the person's own and their role's mean per window it takes…
    pub bulk_factor: u32,
    /// …computed over this many days before the window.
    pub bulk_baseline_days: u32,
}

impl Default for DetectConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            batch_max: 2000,
            poll_ms: 1000,
            denials_threshold: 3,
            denials_window_mins: 10,
            failures_threshold: 20,
            failures_window_mins: 5,
            bulk_window_mins: 60,
            bulk_min_patients: 50,
            bulk_factor: 3,
            bulk_baseline_days: 14,
        }
    }
}

impl DetectConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !(1..=20_000).contains(&self.batch_max) {
            return Err(ConfigError::new(
                "detect.batch_max",
                "must be between 1 and 20000",
            ));
        }
        if !(10..=60_000).contains(&self.poll_ms) {
            return Err(ConfigError::new(
                "detect.poll_ms",
                "must be between 10 and 60000",
            ));
        }
        let positive = [
            ("detect.denials_threshold", self.denials_threshold),
            ("detect.denials_window_mins", self.denials_window_mins),
            ("detect.failures_threshold", self.failures_threshold),
            ("detect.failures_window_mins", self.failures_window_mins),
            ("detect.bulk_window_mins", self.bulk_window_mins),
            ("detect.bulk_min_patients", self.bulk_min_patients),
            ("detect.bulk_factor", self.bulk_factor),
            ("detect.bulk_baseline_days", self.bulk_baseline_days),
        ];
        for (setting, value) in positive {
            if value == 0 {
                return Err(ConfigError::new(setting, "must be at least 1"));
            }
        }
        for (setting, value) in [
            ("detect.denials_window_mins", self.denials_window_mins),
            ("detect.failures_window_mins", self.failures_window_mins),
            ("detect.bulk_window_mins", self.bulk_window_mins),
        ] {
            if value > 1440 {
                return Err(ConfigError::new(setting, "must be at most 1440 (a day)"));
            }
        }
        if self.bulk_baseline_days > 90 {
            return Err(ConfigError::new(
                "detect.bulk_baseline_days",
                "must be at most 90",
            ));
        }
        Ok(())
    }

    /// The longest window of any detector, in seconds: how far back a runner that takes
    /// over replays the trail to rebuild its counts.
    pub fn max_window_secs(&self) -> i64 {
        i64::from(
            self.denials_window_mins
                .max(self.failures_window_mins)
                .max(self.bulk_window_mins),
        ) * 60
    }
}
