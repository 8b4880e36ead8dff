//! Break-glass grants (`break_glass_grants`) and patient confidentiality
//! (`patients.confidentiality`, `confidentiality_changes`). A grant is active while its
//! status is `active` and `expires_at` is after the application clock's now (passed in:
//! the clock is injectable); a trigger keeps the status moving one way only
//! (pending → active | denied; active → revoked | expired) and refuses deletes.

use crate::crypto::Keyring;
use crate::crypto::columns::{break_glass_grants::JUSTIFICATION, break_glass_reviews::NOTES};
use crate::db::schema::{break_glass_grants as g, confidentiality_changes as cc, patients};
use crate::domain::{FacilityId, GrantId, PatientId, PendingChangeId, UserId};
use crate::error::AppError;
use crate::policy::Confidentiality;
use crate::policy::break_glass::{Mode, ValidRequest};
use chrono::{DateTime, Duration, Utc};
use diesel::prelude::*;

/// What a waiting break-glass request is in the approval queue (`pending_changes.kind`;
/// its payload names the patient, the grant points at the queue row).
pub const KIND_BREAK_GLASS: &str = "break-glass";

/// One grant as stored.
#[derive(Clone, Debug, Queryable, Selectable)]
#[diesel(table_name = g, check_for_backend(diesel::pg::Pg))]
pub struct Grant {
    pub id: GrantId,
    pub user_id: UserId,
    pub patient_id: PatientId,
    pub facility_id: FacilityId,
    pub mode: String,
    pub reason_code: String,
    /// Clear text only on a row written before justifications were sealed, until the
    /// next start-up seals it ([`seal_clear_text`]); read it with [`Grant::justification`].
    justification: Option<String>,
    pub minutes: i32,
    pub status: String,
    pub requested_at: DateTime<Utc>,
    pub activated_at: Option<DateTime<Utc>>,
    pub expires_at: Option<DateTime<Utc>>,
    pub ended_at: Option<DateTime<Utc>>,
    pub ended_by: Option<UserId>,
    pub pending_id: Option<PendingChangeId>,
    pub review_due_at: DateTime<Utc>,
    pub end_reason: Option<String>,
    justification_sealed: Option<Vec<u8>>,
}

impl Grant {
    /// The requester's justification, opened (sealed at rest).
    pub fn justification(&self, kr: &Keyring) -> Result<String, AppError> {
        match (&self.justification_sealed, &self.justification) {
            (Some(sealed), _) => Ok(kr.open_str(&JUSTIFICATION.at(self.id.as_uuid()), sealed)?),
            (None, Some(clear)) => Ok(clear.clone()),
            (None, None) => Err(AppError::internal("a grant without a justification")),
        }
    }

    /// The status as of `now` (an `active` row past its expiry is expired).
    pub fn status_at(&self, now: DateTime<Utc>) -> &str {
        match (self.status.as_str(), self.expires_at) {
            ("active", Some(at)) if at <= now => "expired",
            (status, _) => status,
        }
    }

    /// Whole minutes left at `now` (0 when not active).
    pub fn minutes_left(&self, now: DateTime<Utc>) -> i64 {
        match (self.status_at(now), self.expires_at) {
            ("active", Some(at)) => ((at - now).num_seconds() + 59) / 60,
            _ => 0,
        }
    }
}

/// The active, unexpired grant of `user` for `patient`, as a SQL subquery (for the one
/// query that loads a patient's policy facts).
pub fn active_grant_of(
    user: UserId,
    patient: PatientId,
    now: DateTime<Utc>,
) -> g::BoxedQuery<'static, diesel::pg::Pg, diesel::sql_types::Uuid> {
    g::table
        .filter(
            g::user_id
                .eq(user)
                .and(g::patient_id.eq(patient))
                .and(g::status.eq("active"))
                .and(g::expires_at.gt(now)),
        )
        .order(g::expires_at.desc())
        .select(g::id)
        .limit(1)
        .into_boxed()
}

/// Of `patients`, those `user` holds a grant for that is active at `now`, with the grant
/// (what a search under [`crate::policy::SearchScope::CareTeamAndGrants`] returned
/// because of a grant, audited under it).
pub fn held_among(
    conn: &mut PgConnection,
    user: UserId,
    patients: &[PatientId],
    now: DateTime<Utc>,
) -> Result<Vec<(GrantId, PatientId)>, AppError> {
    let mut held: Vec<(GrantId, PatientId)> = g::table
        .filter(g::user_id.eq(user))
        .filter(g::patient_id.eq_any(patients.to_vec()))
        .filter(g::status.eq("active").and(g::expires_at.gt(now)))
        .order((g::patient_id, g::expires_at.desc()))
        .select((g::id, g::patient_id))
        .load(conn)?;
    held.dedup_by_key(|(_, p)| *p);
    Ok(held)
}

/// How many grants `user` holds that count against the limit: active and unexpired, or
/// waiting for approval.
pub fn open_count(
    conn: &mut PgConnection,
    user: UserId,
    now: DateTime<Utc>,
) -> Result<i64, AppError> {
    Ok(g::table
        .filter(g::user_id.eq(user))
        .filter(
            g::status
                .eq("pending")
                .or(g::status.eq("active").and(g::expires_at.gt(now))),
        )
        .count()
        .get_result(conn)?)
}

/// Stores a request (its justification sealed): in emergency mode active at once (the
/// clock starts now), in approval mode pending (the clock starts at approval).
#[allow(clippy::too_many_arguments)]
pub fn insert(
    conn: &mut PgConnection,
    kr: &Keyring,
    user: UserId,
    patient: PatientId,
    facility: FacilityId,
    mode: Mode,
    request: &ValidRequest,
    now: DateTime<Utc>,
    review_days: u32,
    pending: Option<PendingChangeId>,
) -> Result<Grant, AppError> {
    let id = GrantId::new();
    let (status, activated, expires) = match mode {
        Mode::Emergency => (
            "active",
            Some(now),
            Some(now + Duration::minutes(i64::from(request.minutes))),
        ),
        Mode::Approval => ("pending", None, None),
    };
    let minutes = i32::try_from(request.minutes).map_err(|_| AppError::internal("minutes"))?;
    let sealer = kr.sealer_for_write(conn)?;
    let justification = sealer.seal_str(&JUSTIFICATION.at(id.as_uuid()), &request.justification)?;
    Ok(diesel::insert_into(g::table)
        .values((
            g::id.eq(id),
            g::user_id.eq(user),
            g::patient_id.eq(patient),
            g::facility_id.eq(facility),
            g::mode.eq(mode.code()),
            g::reason_code.eq(&request.reason),
            g::justification_sealed.eq(Some(justification)),
            g::key_version.eq(Some(sealer.version())),
            g::minutes.eq(minutes),
            g::status.eq(status),
            g::requested_at.eq(now),
            g::activated_at.eq(activated),
            g::expires_at.eq(expires),
            g::pending_id.eq(pending),
            g::review_due_at.eq(now + Duration::days(i64::from(review_days))),
        ))
        .returning(Grant::as_returning())
        .get_result(conn)?)
}

pub fn get(conn: &mut PgConnection, id: GrantId) -> Result<Option<Grant>, AppError> {
    Ok(g::table
        .find(id)
        .select(Grant::as_select())
        .first(conn)
        .optional()?)
}

/// The grant `id`, locked until the caller's transaction ends.
pub fn get_for_update(conn: &mut PgConnection, id: GrantId) -> Result<Option<Grant>, AppError> {
    Ok(g::table
        .find(id)
        .select(Grant::as_select())
        .for_update()
        .first(conn)
        .optional()?)
}

/// The grant waiting on approval request `pending`, locked.
pub fn for_pending(
    conn: &mut PgConnection,
    pending: PendingChangeId,
) -> Result<Option<Grant>, AppError> {
    Ok(g::table
        .filter(g::pending_id.eq(pending))
        .select(Grant::as_select())
        .for_update()
        .first(conn)
        .optional()?)
}

/// The grants waiting on the approval requests `pending` (for the queue page).
pub fn by_pending(
    conn: &mut PgConnection,
    pending: &[PendingChangeId],
) -> Result<Vec<Grant>, AppError> {
    Ok(g::table
        .filter(g::pending_id.eq_any(pending.to_vec()))
        .select(Grant::as_select())
        .load(conn)?)
}

/// Ends an active, unexpired grant early (revoked by `by`); `false` if it was not active.
pub fn revoke(
    conn: &mut PgConnection,
    id: GrantId,
    by: UserId,
    now: DateTime<Utc>,
) -> Result<bool, AppError> {
    let n = diesel::update(
        g::table
            .find(id)
            .filter(g::status.eq("active").and(g::expires_at.gt(now))),
    )
    .set((
        g::status.eq("revoked"),
        g::ended_at.eq(Some(now)),
        g::ended_by.eq(Some(by)),
    ))
    .execute(conn)?;
    Ok(n == 1)
}

/// Ends an active, unexpired grant early on behalf of an administrator or a privacy
/// officer, keeping their reason; `false` if it was not active.
pub fn revoke_with_reason(
    conn: &mut PgConnection,
    id: GrantId,
    by: UserId,
    reason: &str,
    now: DateTime<Utc>,
) -> Result<bool, AppError> {
    let n = diesel::update(
        g::table
            .find(id)
            .filter(g::status.eq("active").and(g::expires_at.gt(now))),
    )
    .set((
        g::status.eq("revoked"),
        g::ended_at.eq(Some(now)),
        g::ended_by.eq(Some(by)),
        g::end_reason.eq(Some(reason)),
    ))
    .execute(conn)?;
    Ok(n == 1)
}

/// Withdraws a waiting request of its requester (the caller holds its queue row locked,
/// as a decision would); `false` if it was not waiting any more.
pub fn withdraw(
    conn: &mut PgConnection,
    id: GrantId,
    now: DateTime<Utc>,
) -> Result<bool, AppError> {
    let n = diesel::update(g::table.find(id).filter(g::status.eq("pending")))
        .set((g::status.eq("withdrawn"), g::ended_at.eq(Some(now))))
        .execute(conn)?;
    Ok(n == 1)
}

/// Activates (approved: the clock starts `now`) or denies a pending grant; `false` if it
/// was not pending.
pub fn decide(
    conn: &mut PgConnection,
    id: GrantId,
    approve: bool,
    minutes: i32,
    now: DateTime<Utc>,
) -> Result<bool, AppError> {
    let target = g::table.find(id).filter(g::status.eq("pending"));
    let n = if approve {
        diesel::update(target)
            .set((
                g::status.eq("active"),
                g::activated_at.eq(Some(now)),
                g::expires_at.eq(Some(now + Duration::minutes(i64::from(minutes)))),
            ))
            .execute(conn)?
    } else {
        diesel::update(target)
            .set((g::status.eq("denied"), g::ended_at.eq(Some(now))))
            .execute(conn)?
    };
    Ok(n == 1)
}

/// Key of the session-level advisory lock under which ONE instance at a time sweeps
/// expired grants (`access::expiry`).
pub const EXPIRY_LOCK_KEY: i64 = 0x4355_5354_4247_4558; // "CUSTBGEX"

/// Takes the expiry sweep's advisory lock on this session if no other session holds it.
pub fn try_lock_expiry(conn: &mut PgConnection) -> Result<bool, AppError> {
    Ok(
        diesel::select(diesel::dsl::sql::<diesel::sql_types::Bool>(&format!(
            "pg_try_advisory_lock({EXPIRY_LOCK_KEY})"
        )))
        .get_result(conn)?,
    )
}

/// Releases the expiry sweep's advisory lock held by this session.
pub fn unlock_expiry(conn: &mut PgConnection) -> Result<(), AppError> {
    diesel::select(diesel::dsl::sql::<diesel::sql_types::Bool>(&format!(
        "pg_advisory_unlock({EXPIRY_LOCK_KEY})"
    )))
    .get_result::<bool>(conn)?;
    Ok(())
}

/// Active grants whose expiry is at or before `now` (oldest expiry first, at most
/// `limit`): what the sweeper marks expired and audits.
pub fn due(
    conn: &mut PgConnection,
    now: DateTime<Utc>,
    limit: i64,
) -> Result<Vec<(GrantId, UserId, PatientId)>, AppError> {
    Ok(g::table
        .filter(g::status.eq("active").and(g::expires_at.le(now)))
        .order(g::expires_at)
        .limit(limit)
        .select((g::id, g::user_id, g::patient_id))
        .load(conn)?)
}

/// Marks one grant past its expiry as expired (its `ended_at` is its expiry); `false` if
/// it was not active and due any more.
pub fn expire_one(
    conn: &mut PgConnection,
    id: GrantId,
    now: DateTime<Utc>,
) -> Result<bool, AppError> {
    let n = diesel::update(
        g::table
            .find(id)
            .filter(g::status.eq("active").and(g::expires_at.le(now))),
    )
    .set((g::status.eq("expired"), g::ended_at.eq(g::expires_at)))
    .execute(conn)?;
    Ok(n == 1)
}

/// Grants, newest first (at most `limit`), optionally only those of `status`.
pub fn list(
    conn: &mut PgConnection,
    status: Option<&str>,
    limit: i64,
) -> Result<Vec<Grant>, AppError> {
    let mut q = g::table.into_boxed();
    if let Some(status) = status {
        q = q.filter(g::status.eq(status.to_string()));
    }
    Ok(q.order((g::requested_at.desc(), g::id))
        .limit(limit)
        .select(Grant::as_select())
        .load(conn)?)
}

/// The latest grant of `user` for `patient` (what a requester polls).
pub fn latest_of(
    conn: &mut PgConnection,
    user: UserId,
    patient: PatientId,
) -> Result<Option<Grant>, AppError> {
    Ok(g::table
        .filter(g::user_id.eq(user).and(g::patient_id.eq(patient)))
        .order(g::requested_at.desc())
        .select(Grant::as_select())
        .first(conn)
        .optional()?)
}

/// The confidentiality of a live patient (`None`: no such patient).
pub fn confidentiality_of(
    conn: &mut PgConnection,
    patient: PatientId,
) -> Result<Option<Confidentiality>, AppError> {
    let code: Option<String> = patients::table
        .filter(patients::id.eq(patient).and(patients::deleted_at.is_null()))
        .select(patients::confidentiality)
        .first(conn)
        .optional()?;
    code.map(|c| parse_level(&c)).transpose()
}

/// A stored level (a CHECK constraint keeps it to N, R, V).
pub fn parse_level(code: &str) -> Result<Confidentiality, AppError> {
    Confidentiality::from_code(code)
        .ok_or_else(|| AppError::internal("unknown confidentiality in the database"))
}

/// One confidentiality change as the history shows it.
#[derive(Clone, Debug, Queryable, serde::Serialize)]
pub struct ConfidentialityChange {
    pub previous: String,
    pub confidentiality: String,
    pub reason: String,
    pub changed_by: Option<UserId>,
    pub changed_at: DateTime<Utc>,
}

/// The confidentiality changes of `patient`, newest first (at most `limit`).
pub fn confidentiality_history(
    conn: &mut PgConnection,
    patient: PatientId,
    limit: i64,
) -> Result<Vec<ConfidentialityChange>, AppError> {
    Ok(cc::table
        .filter(cc::patient_id.eq(patient))
        .order(cc::seq.desc())
        .limit(limit)
        .select((
            cc::previous,
            cc::confidentiality,
            cc::reason,
            cc::changed_by,
            cc::changed_at,
        ))
        .load(conn)?)
}

/// Sets a live patient's confidentiality and keeps the change with its reason, in one
/// transaction. Returns the previous level (`None`: no such patient); nothing is written
/// when the level does not change.
pub fn set_confidentiality(
    conn: &mut PgConnection,
    patient: PatientId,
    level: Confidentiality,
    reason: &str,
    by: Option<UserId>,
) -> Result<Option<Confidentiality>, AppError> {
    conn.transaction(|conn| {
        let current: Option<String> = patients::table
            .filter(patients::id.eq(patient).and(patients::deleted_at.is_null()))
            .select(patients::confidentiality)
            .for_update()
            .first(conn)
            .optional()?;
        let Some(current) = current else {
            return Ok(None);
        };
        let previous = parse_level(&current)?;
        if previous != level {
            diesel::update(patients::table.find(patient))
                .set(patients::confidentiality.eq(level.code()))
                .execute(conn)?;
            diesel::insert_into(cc::table)
                .values((
                    cc::patient_id.eq(patient),
                    cc::previous.eq(previous.code()),
                    cc::confidentiality.eq(level.code()),
                    cc::reason.eq(reason),
                    cc::changed_by.eq(by),
                ))
                .execute(conn)?;
        }
        Ok(Some(previous))
    })
}

/// The decision and the approver's reason on the approval request `pending` (`None`
/// while it waits).
pub fn decision_reason(
    conn: &mut PgConnection,
    pending: PendingChangeId,
) -> Result<Option<String>, AppError> {
    use crate::db::schema::pending_changes as pc;
    Ok(pc::table
        .find(pending)
        .select(pc::decision_reason)
        .first::<Option<String>>(conn)
        .optional()?
        .flatten())
}

/// The break-glass kinds of alert (`alerts.kind`; the whole vocabulary and the listing
/// are in `db::alerts`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AlertKind {
    Request,
    Approval,
    FirstUse,
}

impl AlertKind {
    pub fn code(self) -> &'static str {
        match self {
            AlertKind::Request => "break-glass-request",
            AlertKind::Approval => "break-glass-approval",
            AlertKind::FirstUse => "break-glass-first-use",
        }
    }
}

/// Raises the alert `kind` for a grant, once (a second raise of the same kind for the
/// same grant is ignored); returns whether it was new.
pub fn raise_alert(
    conn: &mut PgConnection,
    kind: AlertKind,
    (grant, user, patient): (GrantId, UserId, PatientId),
    now: DateTime<Utc>,
) -> Result<bool, AppError> {
    use crate::db::schema::alerts as a;
    let n = diesel::insert_into(a::table)
        .values((
            a::id.eq(uuid::Uuid::new_v4()),
            a::kind.eq(kind.code()),
            a::severity.eq("high"),
            a::grant_id.eq(grant),
            a::user_id.eq(user),
            a::patient_id.eq(patient),
            a::created_at.eq(now),
        ))
        .on_conflict((a::grant_id, a::kind))
        .do_nothing()
        .returning(a::id)
        .get_result::<uuid::Uuid>(conn)
        .optional()?;
    // The outbox: the alert's webhook message commits with it, or neither does.
    if let Some(id) = n {
        let message = crate::db::webhooks::NewMessage::break_glass_alert(
            id,
            kind.code(),
            (grant, user, patient),
            now,
        );
        crate::db::webhooks::enqueue(conn, &[message])?;
    }
    Ok(n.is_some())
}

/// A privacy officer's verdict on a grant (its notes opened).
#[derive(Clone, Debug)]
pub struct Review {
    pub verdict: String,
    pub notes: String,
    pub reviewer: UserId,
    pub reviewed_at: DateTime<Utc>,
}

/// Appends a review of `grant` (its notes sealed).
#[allow(clippy::too_many_arguments)]
pub fn add_review(
    conn: &mut PgConnection,
    kr: &Keyring,
    grant: GrantId,
    verdict: &str,
    notes: &str,
    reviewer: UserId,
    now: DateTime<Utc>,
) -> Result<(), AppError> {
    use crate::db::schema::break_glass_reviews as r;
    let id = uuid::Uuid::new_v4();
    let sealer = kr.sealer_for_write(conn)?;
    let sealed = sealer.seal_str(&NOTES.at(id), notes)?;
    diesel::insert_into(r::table)
        .values((
            r::id.eq(id),
            r::grant_id.eq(grant),
            r::verdict.eq(verdict),
            r::notes_sealed.eq(Some(sealed)),
            r::key_version.eq(Some(sealer.version())),
            r::reviewer.eq(reviewer),
            r::reviewed_at.eq(now),
        ))
        .execute(conn)?;
    Ok(())
}

type ReviewRow = (
    uuid::Uuid,
    String,
    Option<String>,
    Option<Vec<u8>>,
    UserId,
    DateTime<Utc>,
);

/// The reviews of `grant`, oldest first (notes opened).
pub fn reviews_of(
    conn: &mut PgConnection,
    kr: &Keyring,
    grant: GrantId,
) -> Result<Vec<Review>, AppError> {
    use crate::db::schema::break_glass_reviews as r;
    let rows: Vec<ReviewRow> = r::table
        .filter(r::grant_id.eq(grant))
        .order(r::seq)
        .select((
            r::id,
            r::verdict,
            r::notes,
            r::notes_sealed,
            r::reviewer,
            r::reviewed_at,
        ))
        .load(conn)?;
    rows.into_iter()
        .map(|(id, verdict, clear, sealed, reviewer, reviewed_at)| {
            let notes = match (sealed, clear) {
                (Some(sealed), _) => kr.open_str(&NOTES.at(id), &sealed)?,
                (None, Some(clear)) => clear,
                (None, None) => return Err(AppError::internal("a review without notes")),
            };
            Ok(Review {
                verdict,
                notes,
                reviewer,
                reviewed_at,
            })
        })
        .collect()
}

/// Seals the justifications and review notes still stored in clear (rows written before
/// they were sealed, migration `2026-12-03-000110`) and clears the clear-text columns;
/// run at start-up before anything is served. Returns how many values it sealed.
pub fn seal_clear_text(conn: &mut PgConnection, kr: &Keyring) -> Result<u64, AppError> {
    use crate::db::schema::break_glass_reviews as r;
    conn.transaction(|conn| {
        let sealer = kr.sealer_for_write(conn)?;
        let mut n = 0u64;
        let grants: Vec<(GrantId, Option<String>)> = g::table
            .filter(g::justification.is_not_null())
            .select((g::id, g::justification))
            .for_update()
            .load(conn)?;
        for (id, text) in grants {
            let text = text.unwrap_or_default();
            let sealed = sealer.seal_str(&JUSTIFICATION.at(id.as_uuid()), &text)?;
            diesel::update(g::table.find(id))
                .set((
                    g::justification.eq(None::<String>),
                    g::justification_sealed.eq(Some(sealed)),
                    g::key_version.eq(Some(sealer.version())),
                ))
                .execute(conn)?;
            n += 1;
        }
        let reviews: Vec<(uuid::Uuid, Option<String>)> = r::table
            .filter(r::notes.is_not_null())
            .select((r::id, r::notes))
            .for_update()
            .load(conn)?;
        for (id, text) in reviews {
            let sealed = sealer.seal_str(&NOTES.at(id), &text.unwrap_or_default())?;
            diesel::update(r::table.filter(r::id.eq(id)))
                .set((
                    r::notes.eq(None::<String>),
                    r::notes_sealed.eq(Some(sealed)),
                    r::key_version.eq(Some(sealer.version())),
                ))
                .execute(conn)?;
            n += 1;
        }
        Ok(n)
    })
}

/// Grants that were active at some point, whose review is due by `now` and that nobody
/// has reviewed yet, oldest deadline first (at most `limit`).
pub fn overdue_reviews(
    conn: &mut PgConnection,
    now: DateTime<Utc>,
    limit: i64,
) -> Result<Vec<Grant>, AppError> {
    use crate::db::schema::break_glass_reviews as r;
    let reviewed = diesel::dsl::exists(r::table.filter(r::grant_id.eq(g::id)));
    Ok(g::table
        .filter(g::activated_at.is_not_null())
        .filter(g::review_due_at.le(now))
        .filter(diesel::dsl::not(reviewed))
        .order(g::review_due_at)
        .limit(limit)
        .select(Grant::as_select())
        .load(conn)?)
}

/// One audit event under a grant: (time, action, resource type, outcome).
pub type Access = (DateTime<Utc>, String, Option<String>, String);

/// The audit events recorded under `grant` (every access it allowed, its start and end)
/// or about it (its request, decision, review, revocation by an administrator), oldest
/// first.
pub fn accesses_under(
    conn: &mut PgConnection,
    grant: GrantId,
    limit: i64,
) -> Result<Vec<Access>, AppError> {
    use crate::db::schema::audit_events as ae;
    let about = ae::resource_type
        .eq("BreakGlassGrant")
        .and(ae::resource_id.eq(grant.as_uuid()));
    Ok(ae::table
        .filter(ae::break_glass_grant_id.eq(grant.as_uuid()).or(about))
        .order(ae::seq)
        .limit(limit)
        .select((ae::occurred_at, ae::action, ae::resource_type, ae::outcome))
        .load(conn)?)
}
