//! The clock, injectable: everything that decides by time (token expiry and age, JWKS
//! refetch intervals and staleness, console session idle and absolute lifetimes, step-up
//! freshness, TOTP lock-outs) asks a [`Clock`] instead of the system, so tests move time
//! forward instead of sleeping. `serve` and `dev` always use [`SystemClock`].

use chrono::{DateTime, Utc};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub trait Clock: Send + Sync + 'static {
    /// Wall-clock time (what tokens, sessions and audit events are stamped with).
    fn now(&self) -> DateTime<Utc>;
    /// Monotonic time, for intervals that must not jump with the wall clock.
    fn instant(&self) -> Instant;
}

/// Shared handle to the clock in use.
pub type SharedClock = Arc<dyn Clock>;

/// The system's clocks.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
    fn instant(&self) -> Instant {
        Instant::now()
    }
}

/// The system clock shared as a [`SharedClock`].
pub fn system() -> SharedClock {
    Arc::new(SystemClock)
}

/// A clock that starts at the system time and moves only when told to (both its wall
/// and monotonic readings move together). For tests and benchmarks; nothing in the
/// product constructs one.
#[derive(Clone, Debug)]
pub struct ManualClock {
    inner: Arc<Mutex<Offset>>,
}

#[derive(Debug)]
struct Offset {
    wall: DateTime<Utc>,
    mono: Instant,
    ahead: Duration,
}

impl Default for ManualClock {
    fn default() -> Self {
        Self::new()
    }
}

impl ManualClock {
    pub fn new() -> Self {
        Self {
            inner: Arc::new(Mutex::new(Offset {
                wall: Utc::now(),
                mono: Instant::now(),
                ahead: Duration::ZERO,
            })),
        }
    }

    /// Moves time forward by `by`.
    pub fn advance(&self, by: Duration) {
        let mut o = self.lock();
        o.ahead += by;
    }

    pub fn shared(&self) -> SharedClock {
        Arc::new(self.clone())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Offset> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Clock for ManualClock {
    fn now(&self) -> DateTime<Utc> {
        let o = self.lock();
        // Real time passes too (tests take time), plus whatever was skipped.
        let real = Instant::now().saturating_duration_since(o.mono);
        o.wall + chrono::Duration::from_std(real + o.ahead).unwrap_or(chrono::TimeDelta::MAX)
    }
    fn instant(&self) -> Instant {
        let o = self.lock();
        Instant::now() + o.ahead
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manual_clock_moves_wall_and_monotonic_time_together() {
        let clock = ManualClock::new();
        let (w0, m0) = (clock.now(), clock.instant());
        clock.advance(Duration::from_secs(3600));
        assert!(clock.now() - w0 >= chrono::Duration::seconds(3600));
        assert!(clock.instant() - m0 >= Duration::from_secs(3600));
        assert!(clock.now() - w0 < chrono::Duration::seconds(3660));
    }
}
