//! The approval queue (`pending_changes`): changes a second administrator must approve
//! or deny. A row is written when the change is requested and decided once (a trigger
//! refuses any other update and every delete; CHECK constraints refuse a decision by the
//! requester or by the person the change is about). What waits is stored as JSON by its
//! owner (`admin::Op` for [`KIND_ADMIN_CHANGE`]); this module does not interpret it.

use crate::db::schema::pending_changes as pc;
use crate::domain::{PendingChangeId, UserId};
use crate::error::AppError;
use chrono::{DateTime, Utc};
use diesel::prelude::*;

/// An administration change (`admin::Op`). Break-glass requests are meant to share the
/// queue under a kind of their own.
pub const KIND_ADMIN_CHANGE: &str = "admin-change";

/// How a request was decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    Approved,
    Denied,
}

impl Decision {
    fn as_str(self) -> &'static str {
        match self {
            Decision::Approved => "approved",
            Decision::Denied => "denied",
        }
    }
}

/// One request in the queue.
#[derive(Clone, Debug, Queryable, Selectable)]
#[diesel(table_name = pc, check_for_backend(diesel::pg::Pg))]
pub struct PendingChange {
    pub id: PendingChangeId,
    pub kind: String,
    pub payload: serde_json::Value,
    pub target_user_id: Option<UserId>,
    pub requested_by: UserId,
    pub requested_at: DateTime<Utc>,
    pub status: String,
}

/// Keeps a request; returns its id.
pub fn request(
    conn: &mut PgConnection,
    kind: &'static str,
    payload: &serde_json::Value,
    target: Option<UserId>,
    requested_by: UserId,
) -> Result<PendingChangeId, AppError> {
    let id = PendingChangeId::new();
    diesel::insert_into(pc::table)
        .values((
            pc::id.eq(id),
            pc::kind.eq(kind),
            pc::payload.eq(payload),
            pc::target_user_id.eq(target),
            pc::requested_by.eq(requested_by),
        ))
        .execute(conn)?;
    Ok(id)
}

/// The request `id` if it is still waiting, locked until the caller's transaction ends
/// (so two administrators cannot both decide it).
pub fn open_for_update(
    conn: &mut PgConnection,
    id: PendingChangeId,
) -> Result<Option<PendingChange>, AppError> {
    Ok(pc::table
        .find(id)
        .filter(pc::status.eq("pending"))
        .select(PendingChange::as_select())
        .for_update()
        .first(conn)
        .optional()?)
}

/// The request `id`, whatever its status.
pub fn get(
    conn: &mut PgConnection,
    id: PendingChangeId,
) -> Result<Option<PendingChange>, AppError> {
    Ok(pc::table
        .find(id)
        .select(PendingChange::as_select())
        .first(conn)
        .optional()?)
}

/// Every waiting request, oldest first (at most `limit`).
pub fn waiting(conn: &mut PgConnection, limit: i64) -> Result<Vec<PendingChange>, AppError> {
    Ok(pc::table
        .filter(pc::status.eq("pending"))
        .order((pc::requested_at, pc::id))
        .limit(limit)
        .select(PendingChange::as_select())
        .load(conn)?)
}

/// Takes a waiting request out of the queue on behalf of its requester (nobody decided
/// it); `false` if it was not waiting any more.
pub fn withdraw(conn: &mut PgConnection, id: PendingChangeId) -> Result<bool, AppError> {
    let n = diesel::update(pc::table.find(id).filter(pc::status.eq("pending")))
        .set(pc::status.eq("withdrawn"))
        .execute(conn)?;
    Ok(n == 1)
}

/// Records the decision on a waiting request (`false`: it was not waiting any more).
pub fn decide(
    conn: &mut PgConnection,
    id: PendingChangeId,
    decision: Decision,
    by: UserId,
    reason: &str,
) -> Result<bool, AppError> {
    let n = diesel::update(pc::table.find(id).filter(pc::status.eq("pending")))
        .set((
            pc::status.eq(decision.as_str()),
            pc::decided_by.eq(Some(by)),
            pc::decided_at.eq(Some(chrono::Utc::now())),
            pc::decision_reason.eq(Some(reason)),
        ))
        .execute(conn)?;
    Ok(n == 1)
}
