//! The emergency sign-in attempt limits, in PostgreSQL (`console_emergency_attempts`) so
//! that all instances share them: at most a key's limit of attempts per key (a source
//! address, or the global ceiling) in a minute that starts with the first attempt. The minute is measured
//! on the app's clock (callers pass `now`), not the database's.

use crate::error::AppError;
use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::sql_types::{Bytea, Int4, Timestamptz};
use sha2::{Digest, Sha256};

#[derive(QueryableByName)]
struct Counted {
    #[diesel(sql_type = Int4)]
    attempts: i32,
    #[diesel(sql_type = Timestamptz)]
    window_start: DateTime<Utc>,
}

/// Counts one attempt for each of `keys` (in one transaction), each key with its own
/// per-minute limit; `Err((seconds, over))` when any is over its limit (seconds until the
/// latest of their minutes ends; `over`: the indexes of the keys over their limit). Every
/// key counts the attempt, whichever refuses it. The counters need no durability: the
/// transaction does not wait for its commit to reach the disk (a crash forgets at most a
/// minute of attempts), which keeps the sign-in's timing steady.
pub fn count(
    conn: &mut PgConnection,
    keys: &[(String, u32)],
    now: DateTime<Utc>,
) -> Result<Result<(), (u64, Vec<usize>)>, AppError> {
    conn.transaction(|conn| {
        diesel::sql_query("SET LOCAL synchronous_commit TO OFF").execute(conn)?;
        diesel::sql_query(
            "DELETE FROM console_emergency_attempts \
             WHERE window_start <= $1 - interval '1 minute'",
        )
        .bind::<Timestamptz, _>(now)
        .execute(conn)?;
        let mut wait: Option<u64> = None;
        let mut over = Vec::new();
        for (i, (key, per_minute)) in keys.iter().enumerate() {
            if let Err(w) = count_one(conn, key, *per_minute, now)? {
                wait = Some(wait.map_or(w, |x| x.max(w)));
                over.push(i);
            }
        }
        Ok(wait.map_or(Ok(()), |w| Err((w, over))))
    })
}

fn count_one(
    conn: &mut PgConnection,
    key: &str,
    per_minute: u32,
    now: DateTime<Utc>,
) -> Result<Result<(), u64>, AppError> {
    let hash = Sha256::digest(key.as_bytes()).to_vec();
    let c: Counted = diesel::sql_query(
        "INSERT INTO console_emergency_attempts AS t (key_hash, window_start, attempts) \
         VALUES ($1, $2, 1) \
         ON CONFLICT (key_hash) DO UPDATE SET \
           attempts = CASE WHEN t.window_start > $2 - interval '1 minute' \
                      THEN t.attempts + 1 ELSE 1 END, \
           window_start = CASE WHEN t.window_start > $2 - interval '1 minute' \
                          THEN t.window_start ELSE $2 END \
         RETURNING attempts, window_start",
    )
    .bind::<Bytea, _>(hash)
    .bind::<Timestamptz, _>(now)
    .get_result(conn)?;
    let limit = i32::try_from(per_minute).unwrap_or(i32::MAX);
    if c.attempts <= limit {
        return Ok(Ok(()));
    }
    let ends = c.window_start + chrono::Duration::minutes(1);
    let wait = (ends - now).num_seconds().max(1);
    Ok(Err(u64::try_from(wait).unwrap_or(1)))
}
