//! Request rate limits (GCRA, per key), kept in process memory: each instance limits what
//! it serves. Limits that must hold across instances (login attempts) live in the database.

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Mutex;
use std::time::{Duration, Instant};

const SHARDS: usize = 16;

pub struct RateLimiter {
    interval: Duration,
    tolerance: Duration,
    shards: Vec<Mutex<Shard>>,
}

#[derive(Default)]
struct Shard {
    /// Theoretical arrival time of the next request, per key.
    tat: HashMap<String, Instant>,
    inserts: u32,
}

impl RateLimiter {
    /// `per_minute` sustained requests with bursts of `burst`; `None` when `per_minute` is 0
    /// (limit switched off).
    pub fn new(per_minute: u32, burst: u32) -> Option<RateLimiter> {
        if per_minute == 0 {
            return None;
        }
        let interval = Duration::from_secs(60) / per_minute;
        Some(RateLimiter {
            interval,
            tolerance: interval * burst.saturating_sub(1),
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
        })
    }

    /// Counts one request for `key`; `Err(retry_after)` when over the limit.
    pub fn check(&self, key: &str) -> Result<(), Duration> {
        self.check_at(key, Instant::now())
    }

    fn check_at(&self, key: &str, now: Instant) -> Result<(), Duration> {
        let mut h = DefaultHasher::new();
        key.hash(&mut h);
        let shard = &self.shards[(h.finish() as usize) % SHARDS];
        let Ok(mut shard) = shard.lock() else {
            // A poisoned lock means a panic mid-update; failing open here would be wrong
            // for a security limit, failing closed would take the API down. Refuse briefly.
            return Err(Duration::from_secs(1));
        };
        let tat = shard.tat.get(key).copied().unwrap_or(now).max(now);
        if tat.duration_since(now) > self.tolerance {
            return Err(tat.duration_since(now) - self.tolerance);
        }
        shard.tat.insert(key.to_string(), tat + self.interval);
        shard.inserts += 1;
        if shard.inserts >= 4096 {
            shard.inserts = 0;
            shard.tat.retain(|_, t| *t > now);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allows_a_burst_then_limits_then_recovers() {
        let rl = RateLimiter::new(60, 3).unwrap();
        let t0 = Instant::now();
        for _ in 0..3 {
            assert!(rl.check_at("a", t0).is_ok());
        }
        let wait = rl.check_at("a", t0).unwrap_err();
        assert!(wait > Duration::ZERO && wait <= Duration::from_secs(1));
        assert!(rl.check_at("b", t0).is_ok(), "keys are independent");
        assert!(rl.check_at("a", t0 + Duration::from_secs(1)).is_ok());
    }

    #[test]
    fn zero_means_off() {
        assert!(RateLimiter::new(0, 10).is_none());
    }
}
