//! Rate-limited floods in the audit trail: every request to a PHI or admin route leaves an
//! audit event, but a flood of requests refused by a rate limit must not be able to flood
//! the trail (nor the group-commit writer) with one event per refused request. So
//! rate-limited refusals are **aggregated per source and route action per window**:
//!
//! - the first refusal of a source (an address, or a principal) on one route action in a
//!   window of [`WINDOW_SECS`] seconds is recorded at once, as itself (its request id,
//!   actor, address and agent class);
//! - further refusals of that source and action within the window are only counted;
//! - once the window has passed, the count is recorded as ONE summary event: the same
//!   actor, action, resource type, outcome and source as the first, no request id, and
//!   `occurrences` = the number of refusals it stands for. It is written by the next
//!   refusal of that source after the window, or by the sweep ([`FloodTally::sweep`],
//!   run every few seconds by the server), whichever comes first.
//!
//! A flood therefore costs at most two events per source, route action and window. The
//! table of open windows is bounded ([`MAX_SOURCES`]); when it is full, refusals from
//! sources not yet in it share one overflow window whose summary names no address.
//! Counts still open when the process stops are lost (the first refusal of each window
//! is always recorded); a window's count is at most the refusals of [`WINDOW_SECS`].

use super::event::AuditEvent;
use super::writer::AuditWriter;
use crate::domain::{SharedClock, UserId};
use crate::error::AppError;
use chrono::{DateTime, Duration, SubsecRound, Utc};
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use uuid::Uuid;

/// Length of an aggregation window.
pub const WINDOW_SECS: i64 = 60;

/// Most sources (× route actions) with an open window; beyond, one shared overflow window.
pub const MAX_SOURCES: usize = 10_000;

/// Who a rate limit refused: the address (the per-address limit, before authentication)
/// or the principal (the per-principal limit, after it).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Source {
    Address(IpAddr),
    Principal(UserId),
    /// Every source that found the table full.
    Overflow,
}

/// One open window of a source and route action.
struct Window {
    opened: DateTime<Utc>,
    /// Refusals counted, not recorded, since the first.
    counted: u32,
    /// The summary to record when the window closes (without its count).
    summary: AuditEvent,
}

type Key = (Source, &'static str, Option<&'static str>);

/// The open windows of one instance (rate limits are per instance, so is this).
pub struct FloodTally {
    writer: AuditWriter,
    clock: SharedClock,
    windows: Mutex<HashMap<Key, Window>>,
}

impl std::fmt::Debug for FloodTally {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FloodTally")
    }
}

impl FloodTally {
    pub fn new(writer: AuditWriter, clock: SharedClock) -> Self {
        Self {
            writer,
            clock,
            windows: Mutex::new(HashMap::new()),
        }
    }

    /// A rate-limited refusal of `source`, described by `event` (a denial with reason
    /// `rate-limited`). Recorded at once when it opens a window; otherwise only counted.
    /// `Ok` once what had to be recorded is committed (503 otherwise, like every event).
    pub async fn refused(&self, source: Source, event: AuditEvent) -> Result<(), AppError> {
        let now = self.clock.now();
        let mut due = Vec::new();
        {
            let Ok(mut windows) = self.windows.lock() else {
                // A panic mid-update: record the refusal itself rather than lose it.
                return self.writer.record(event).await;
            };
            let mut key = key(source, &event);
            if let Some(w) = windows.get_mut(&key)
                && now < w.opened + window()
            {
                w.counted = w.counted.saturating_add(1);
                return Ok(());
            }
            if let Some(closed) = windows.remove(&key) {
                due.extend(closed.into_summary(now));
            }
            if windows.len() >= MAX_SOURCES {
                due.extend(take_closed(&mut windows, now));
            }
            if windows.len() >= MAX_SOURCES {
                key = (Source::Overflow, key.1, key.2);
                if let Some(w) = windows.get_mut(&key)
                    && now < w.opened + window()
                {
                    w.counted = w.counted.saturating_add(1);
                    return Ok(());
                }
                due.extend(windows.remove(&key).and_then(|w| w.into_summary(now)));
            }
            windows.insert(
                key,
                Window {
                    opened: now,
                    counted: 0,
                    summary: summary_of(&event, key.0),
                },
            );
        }
        for summary in due {
            self.writer.record(summary).await?;
        }
        self.writer.record(event).await
    }

    /// Records the summaries of every window that has closed; returns how many.
    pub async fn sweep(&self) -> Result<usize, AppError> {
        let now = self.clock.now();
        let due = match self.windows.lock() {
            Ok(mut windows) => take_closed(&mut windows, now),
            Err(_) => Vec::new(),
        };
        let n = due.len();
        for summary in due {
            self.writer.record(summary).await?;
        }
        Ok(n)
    }
}

fn window() -> Duration {
    Duration::seconds(WINDOW_SECS)
}

fn key(source: Source, event: &AuditEvent) -> Key {
    (
        source,
        event.action.code(),
        event.resource_type.map(|r| r.code()),
    )
}

/// Removes the closed windows; the summaries of those that counted refusals.
fn take_closed(windows: &mut HashMap<Key, Window>, now: DateTime<Utc>) -> Vec<AuditEvent> {
    let closed: Vec<Key> = windows
        .iter()
        .filter(|(_, w)| now >= w.opened + window())
        .map(|(k, _)| *k)
        .collect();
    closed
        .into_iter()
        .filter_map(|k| windows.remove(&k))
        .filter_map(|w| w.into_summary(now))
        .collect()
}

/// The summary of a window opened by `first`: what identifies the source and the route
/// action is kept; what belonged to the first request alone is not.
fn summary_of(first: &AuditEvent, source: Source) -> AuditEvent {
    let mut s = first.clone();
    // The other requests of the window had their own ids and may have had other agents.
    s.request_id = None;
    s.user_agent = None;
    match source {
        Source::Address(_) => {}
        // A principal's refusals may come from several addresses.
        Source::Principal(_) => s.source_ip = None,
        // Many sources: none of them is named.
        Source::Overflow => {
            s.source_ip = None;
            s.actor = super::event::Actor::anonymous();
            s.client_app = None;
        }
    }
    s
}

impl Window {
    /// The summary event, if this window counted any refusal beyond its first.
    fn into_summary(self, now: DateTime<Utc>) -> Option<AuditEvent> {
        if self.counted == 0 {
            return None;
        }
        let mut s = self.summary;
        s.event_id = Uuid::new_v4();
        s.occurred_at = now.trunc_subsecs(6);
        s.occurrences = Some(self.counted);
        Some(s)
    }
}

/// Runs [`FloodTally::sweep`] every few seconds for as long as the tally is in use (the
/// task holds it weakly, so it ends with the application state).
pub fn spawn_sweeper(tally: &std::sync::Arc<FloodTally>) {
    let tally = std::sync::Arc::downgrade(tally);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(2));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(tally) = tally.upgrade() else {
                return;
            };
            if let Err(e) = tally.sweep().await {
                tracing::warn!(error = %e, "rate-limit summaries not recorded yet");
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::event::{Actor, AuditAction, DenyReason, Outcome, ResourceType, UserAgent};

    fn refusal(ip: [u8; 4]) -> AuditEvent {
        let mut e = AuditEvent::new(
            Actor::anonymous(),
            AuditAction::Read,
            Outcome::Deny(DenyReason::RateLimited),
        );
        e.resource_type = Some(ResourceType::Patient);
        e.source_ip = Some(IpAddr::from(ip));
        e.user_agent = Some(UserAgent::CommandLine);
        e.request_id = crate::domain::RequestId::parse("req-1");
        e
    }

    #[test]
    fn a_summary_keeps_the_source_and_action_but_not_the_first_requests_own_fields() {
        let first = refusal([10, 0, 0, 1]);
        let s = summary_of(&first, Source::Address(IpAddr::from([10, 0, 0, 1])));
        assert_eq!(s.source_ip, first.source_ip);
        assert_eq!(s.action, first.action);
        assert_eq!(s.resource_type, first.resource_type);
        assert_eq!(s.outcome, first.outcome);
        assert_eq!(s.request_id, None);
        assert_eq!(s.user_agent, None);
        let s = summary_of(&first, Source::Overflow);
        assert_eq!(s.source_ip, None);
    }

    #[test]
    fn a_window_without_further_refusals_has_no_summary() {
        let first = refusal([10, 0, 0, 1]);
        let w = Window {
            opened: Utc::now(),
            counted: 0,
            summary: first.clone(),
        };
        assert!(w.into_summary(Utc::now()).is_none());
        let w = Window {
            opened: Utc::now(),
            counted: 41,
            summary: first,
        };
        let s = w.into_summary(Utc::now()).unwrap();
        assert_eq!(s.occurrences, Some(41));
    }

    #[test]
    fn closed_windows_are_taken_open_ones_kept() {
        let now = Utc::now();
        let mut windows = HashMap::new();
        for (i, age) in [(1u8, 61), (2, 59), (3, 600)] {
            let e = refusal([10, 0, 0, i]);
            let source = Source::Address(IpAddr::from([10, 0, 0, i]));
            windows.insert(
                key(source, &e),
                Window {
                    opened: now - Duration::seconds(age),
                    counted: u32::from(i),
                    summary: summary_of(&e, source),
                },
            );
        }
        let due = take_closed(&mut windows, now);
        let mut counts: Vec<u32> = due.iter().filter_map(|e| e.occurrences).collect();
        counts.sort();
        assert_eq!(counts, vec![1, 3]);
        assert_eq!(windows.len(), 1);
    }
}
