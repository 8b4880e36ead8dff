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
    /// Name-search sweep: Patient searches by one person that raise an alert…
    pub name_search_threshold: u32,
    /// …within this window (minutes).
    pub name_search_window_mins: u32,
    /// Off-hours: the working day's first hour (local, 0–23) of a facility without its own…
    pub work_start_hour: u32,
    /// …the hour it ends (exclusive, 1–24)…
    pub work_end_hour: u32,
    /// …and the IANA time zone the hours are in.
    pub time_zone: String,
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
            name_search_threshold: 30,
            name_search_window_mins: 10,
            work_start_hour: 7,
            work_end_hour: 19,
            time_zone: "UTC".to_string(),
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
            ("detect.name_search_threshold", self.name_search_threshold),
            (
                "detect.name_search_window_mins",
                self.name_search_window_mins,
            ),
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
            (
                "detect.name_search_window_mins",
                self.name_search_window_mins,
            ),
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
        if self.work_start_hour > 23 {
            return Err(ConfigError::new(
                "detect.work_start_hour",
                "must be between 0 and 23",
            ));
        }
        if !(1..=24).contains(&self.work_end_hour) || self.work_end_hour <= self.work_start_hour {
            return Err(ConfigError::new(
                "detect.work_end_hour",
                "must be between 1 and 24 and after detect.work_start_hour",
            ));
        }
        if self.time_zone.parse::<chrono_tz::Tz>().is_err() {
            return Err(ConfigError::new(
                "detect.time_zone",
                "must be an IANA time zone name such as UTC or Europe/Berlin",
            ));
        }
        Ok(())
    }

    /// The default working hours (facilities without their own).
    pub fn default_hours(&self) -> WorkHours {
        WorkHours {
            start: self.work_start_hour,
            end: self.work_end_hour,
            tz: self.time_zone.parse().unwrap_or(chrono_tz::UTC),
        }
    }

    /// The longest window of any detector, in seconds: how far back a runner that takes
    /// over replays the trail to rebuild its counts.
    pub fn max_window_secs(&self) -> i64 {
        i64::from(
            self.denials_window_mins
                .max(self.failures_window_mins)
                .max(self.bulk_window_mins)
                .max(self.name_search_window_mins),
        ) * 60
    }
}

/// A facility's working hours: local `[start, end)` hours in `tz`; an access outside is
/// off-hours.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WorkHours {
    pub start: u32,
    pub end: u32,
    pub tz: chrono_tz::Tz,
}

impl WorkHours {
    /// A facility's own hours, when all three are set and valid (else the defaults apply).
    pub fn of_facility(start: Option<i16>, end: Option<i16>, tz: Option<&str>) -> Option<Self> {
        let (start, end) = (u32::try_from(start?).ok()?, u32::try_from(end?).ok()?);
        let tz = tz?.parse::<chrono_tz::Tz>().ok()?;
        (start < end && end <= 24).then_some(WorkHours { start, end, tz })
    }
}
