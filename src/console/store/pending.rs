//! Changes waiting for a console step-up (`console_pending_actions`): each kept change has
//! its own id ([`PendingId`]), is bound to the session that posted it (the row follows the
//! session when its id is renewed and dies with it), is stored as the [`Op`] JSON and used
//! once; it expires after [`PENDING_MAX_AGE_SECS`] (by the app's clock: callers pass
//! `now`). A session keeps at most [`MAX_PENDING_PER_SESSION`] at a time.

use crate::admin::Op;
use crate::db::schema::console_pending_actions as pa;
use crate::error::AppError;
use chrono::{DateTime, Duration, Utc};
use diesel::prelude::*;
use uuid::Uuid;

/// How long a change waits for its code before it must be started again.
pub const PENDING_MAX_AGE_SECS: i64 = 600;
/// Most changes one session may keep waiting at once (bounds the table per session).
pub const MAX_PENDING_PER_SESSION: i64 = 5;

/// The id of one kept change: shown on its step-up page and submitted with the code, so
/// the code performs exactly the change that page showed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PendingId(pub Uuid);

impl PendingId {
    pub fn parse(s: &str) -> Option<PendingId> {
        Uuid::parse_str(s.trim()).ok().map(PendingId)
    }
}

impl std::fmt::Display for PendingId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// Keeps `op` for the session `hash`, waiting since `now`, beside any other change the
/// session keeps; `None` when the session already keeps [`MAX_PENDING_PER_SESSION`].
pub fn save(
    conn: &mut PgConnection,
    hash: &[u8],
    op: &Op,
    now: DateTime<Utc>,
) -> Result<Option<PendingId>, AppError> {
    let json = serde_json::to_value(op)
        .map_err(|e| AppError::Internal(anyhow::Error::new(e).context("pending action")))?;
    let since = now - Duration::seconds(PENDING_MAX_AGE_SECS);
    conn.transaction(|conn| {
        diesel::delete(pa::table.filter(pa::session_hash.eq(hash).and(pa::created_at.le(since))))
            .execute(conn)?;
        let kept: i64 = pa::table
            .filter(pa::session_hash.eq(hash))
            .count()
            .get_result(conn)?;
        if kept >= MAX_PENDING_PER_SESSION {
            return Ok(None);
        }
        let id = Uuid::new_v4();
        diesel::insert_into(pa::table)
            .values((
                pa::id.eq(id),
                pa::session_hash.eq(hash),
                pa::action.eq(&json),
                pa::created_at.eq(now),
            ))
            .execute(conn)?;
        Ok(Some(PendingId(id)))
    })
}

fn decode(json: serde_json::Value) -> Result<Op, AppError> {
    serde_json::from_value(json)
        .map_err(|e| AppError::Internal(anyhow::Error::new(e).context("pending action")))
}

/// The change `id` waiting for this session's step-up, if it has not expired at `now`.
pub fn peek(
    conn: &mut PgConnection,
    hash: &[u8],
    id: PendingId,
    now: DateTime<Utc>,
) -> Result<Option<Op>, AppError> {
    let since = now - Duration::seconds(PENDING_MAX_AGE_SECS);
    let json: Option<serde_json::Value> = pa::table
        .filter(
            pa::id
                .eq(id.0)
                .and(pa::session_hash.eq(hash))
                .and(pa::created_at.gt(since)),
        )
        .select(pa::action)
        .first(conn)
        .optional()?;
    json.map(decode).transpose()
}

/// Removes and returns the waiting change `id` of this session (used once); `None` when
/// it is not this session's, expired or already used. Other kept changes stay.
pub fn take(
    conn: &mut PgConnection,
    hash: &[u8],
    id: PendingId,
    now: DateTime<Utc>,
) -> Result<Option<Op>, AppError> {
    let op = peek(conn, hash, id, now)?;
    diesel::delete(pa::table.filter(pa::id.eq(id.0).and(pa::session_hash.eq(hash))))
        .execute(conn)?;
    Ok(op)
}
