//! Break-glass expiry, off the request path. Access under a grant stops exactly at its
//! expiry whatever happens here: the decision point only sees grants whose `expires_at`
//! is after the application clock's now (`db::break_glass::active_grant_of`). What this
//! sweeper adds is the record: every few seconds one instance — the one that gets the
//! PostgreSQL advisory lock [`grants::EXPIRY_LOCK_KEY`], so several instances sweep one
//! at a time — marks the grants past their expiry as `expired` and writes one
//! high-severity `break-glass-end` event (deny reason `break-glass-expired`) for each,
//! about when it expired rather than at the holder's next request.
//!
//! Each grant's status change commits in the audit writer's transaction with its event
//! (both or neither), while the lock is held: a later sweep, here or on another instance,
//! finds it expired and writes nothing.

use crate::audit::{Actor, AuditAction, AuditEvent, DenyReason, Outcome, ResourceType};
use crate::db::break_glass as grants;
use crate::domain::{GrantId, PatientId};
use crate::error::AppError;
use crate::state::AppState;
use diesel::PgConnection;
use std::sync::{Arc, Weak};

/// How often each instance tries to sweep.
pub const SWEEP_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// Most grants one sweep expires (the rest wait for the next).
const SWEEP_MAX: i64 = 500;

/// Runs [`sweep`] every [`SWEEP_EVERY`] for as long as the application state lives (the
/// task holds it weakly). Its session (a connection of its own, so that the lock is
/// released with it whatever happens) is opened on first use and reopened after an error.
pub fn spawn_sweeper(state: &Arc<AppState>) {
    let state: Weak<AppState> = Arc::downgrade(state);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(SWEEP_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut session: Option<PgConnection> = None;
        loop {
            tick.tick().await;
            let Some(state) = state.upgrade() else {
                return;
            };
            match sweep(&state, session.take()).await {
                Ok(kept) => session = Some(kept),
                Err(e) => tracing::warn!(error = %e, "break-glass expiry sweep not done yet"),
            }
        }
    });
}

/// One sweep: under the advisory lock (if this session gets it), each grant past its
/// expiry on the application clock is marked expired together with its audit event.
/// Returns the session for the next sweep; on an error the session is dropped (closed),
/// which releases the lock.
pub async fn sweep(
    state: &AppState,
    session: Option<PgConnection>,
) -> Result<PgConnection, AppError> {
    let db = state.db.clone();
    let now = state.clock.now();
    let (mut session, due) = actix_web::web::block(move || {
        let mut conn = match session {
            Some(conn) => conn,
            None => db.dedicated()?,
        };
        if !grants::try_lock_expiry(&mut conn)? {
            return Ok::<_, AppError>((conn, None));
        }
        // Release the lock if the query fails (the session is then dropped anyway).
        let due = grants::due(&mut conn, now, SWEEP_MAX)?;
        Ok((conn, Some(due)))
    })
    .await
    .map_err(|_| AppError::internal("expiry sweep task was cancelled"))??;
    let Some(due) = due else {
        return Ok(session);
    };
    for (grant, _, patient) in due {
        record_expiry(state, grant, patient).await?;
    }
    let released = actix_web::web::block(move || {
        grants::unlock_expiry(&mut session)?;
        Ok::<_, AppError>(session)
    })
    .await
    .map_err(|_| AppError::internal("expiry sweep task was cancelled"))??;
    Ok(released)
}

/// Marks `grant` expired with its high-severity `break-glass-end` event, in one
/// transaction of the audit writer.
async fn record_expiry(
    state: &AppState,
    grant: GrantId,
    patient: PatientId,
) -> Result<(), AppError> {
    let now = state.clock.now();
    let mut event = AuditEvent::new(
        Actor::system(),
        AuditAction::BreakGlassEnd,
        Outcome::Deny(DenyReason::BreakGlassExpired),
    );
    event.resource_type = Some(ResourceType::BreakGlassGrant);
    event.resource_id = Some(grant.as_uuid());
    event.patient_ids = vec![patient];
    event.break_glass_grant_id = Some(grant.as_uuid());
    let job: crate::audit::WriteJob = Box::new(move |conn, _| {
        // Under the lock nobody else expires it; `false` (revoked at the very same
        // moment) leaves the event recorded as an error rather than a false expiry.
        grants::expire_one(conn, grant, now).unwrap_or(false)
    });
    state.audit.record_write(event, job).await
}
