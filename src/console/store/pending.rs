//! Changes waiting for a console step-up (`console_pending_actions`): one per session,
//! bound to it, stored as the [`Op`] JSON and used once; they expire after
//! [`PENDING_MAX_AGE_SECS`] (by the app's clock: callers pass `now`).

use crate::admin::Op;
use crate::db::schema::console_pending_actions as pa;
use crate::error::AppError;
use chrono::{DateTime, Duration, Utc};
use diesel::prelude::*;

/// How long a change waits for its code before it must be started again.
pub const PENDING_MAX_AGE_SECS: i64 = 600;

/// Keeps `op` for the session `hash`, waiting since `now`.
pub fn save(
    conn: &mut PgConnection,
    hash: &[u8],
    op: &Op,
    now: DateTime<Utc>,
) -> Result<(), AppError> {
    let json = serde_json::to_value(op)
        .map_err(|e| AppError::Internal(anyhow::Error::new(e).context("pending action")))?;
    diesel::insert_into(pa::table)
        .values((
            pa::session_hash.eq(hash),
            pa::action.eq(&json),
            pa::created_at.eq(now),
        ))
        .on_conflict(pa::session_hash)
        .do_update()
        .set((pa::action.eq(&json), pa::created_at.eq(now)))
        .execute(conn)?;
    Ok(())
}

fn decode(json: serde_json::Value) -> Result<Op, AppError> {
    serde_json::from_value(json)
        .map_err(|e| AppError::Internal(anyhow::Error::new(e).context("pending action")))
}

/// The change waiting for this session's step-up, if it has not expired at `now`.
pub fn peek(
    conn: &mut PgConnection,
    hash: &[u8],
    now: DateTime<Utc>,
) -> Result<Option<Op>, AppError> {
    let since = now - Duration::seconds(PENDING_MAX_AGE_SECS);
    let json: Option<serde_json::Value> = pa::table
        .filter(pa::session_hash.eq(hash).and(pa::created_at.gt(since)))
        .select(pa::action)
        .first(conn)
        .optional()?;
    json.map(decode).transpose()
}

/// Removes and returns the waiting change (used once).
pub fn take(
    conn: &mut PgConnection,
    hash: &[u8],
    now: DateTime<Utc>,
) -> Result<Option<Op>, AppError> {
    let op = peek(conn, hash, now)?;
    diesel::delete(pa::table.filter(pa::session_hash.eq(hash))).execute(conn)?;
    Ok(op)
}
