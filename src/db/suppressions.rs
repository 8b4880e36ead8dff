//! Alert suppressions (`alert_suppressions`): "this person is this patient's guardian" —
//! alerts about this person and this patient (of one kind, or of every kind) are not
//! raised until the suppression expires or is revoked. The reason is sealed; rows are
//! revoked, never deleted (a trigger refuses anything else). `db::alerts::raise_all` asks
//! [`suppressed`] before it inserts.

use crate::crypto::Keyring;
use crate::crypto::columns::alert_suppressions::REASON;
use crate::db::schema::alert_suppressions as s;
use crate::domain::{PatientId, UserId};
use crate::error::AppError;
use chrono::{DateTime, Utc};
use diesel::prelude::*;
use uuid::Uuid;

/// A suppression to create (validated by the caller against `policy::cases`).
pub struct NewSuppression<'a> {
    pub user_id: UserId,
    pub patient_id: PatientId,
    /// An alert kind code, or every kind.
    pub kind: Option<&'static str>,
    pub reason: &'a str,
    pub expires_at: DateTime<Utc>,
}

/// Stores a suppression (its reason sealed); returns its id.
pub fn create(
    conn: &mut PgConnection,
    kr: &Keyring,
    new: &NewSuppression<'_>,
    by: UserId,
    now: DateTime<Utc>,
) -> Result<Uuid, AppError> {
    let id = Uuid::new_v4();
    let sealer = kr.sealer_for_write(conn)?;
    let reason = sealer.seal_str(&REASON.at(id), new.reason)?;
    diesel::insert_into(s::table)
        .values((
            s::id.eq(id),
            s::user_id.eq(new.user_id),
            s::patient_id.eq(new.patient_id),
            s::kind.eq(new.kind),
            s::reason_sealed.eq(reason),
            s::key_version.eq(sealer.version()),
            s::created_by.eq(by),
            s::created_at.eq(now),
            s::expires_at.eq(new.expires_at),
        ))
        .execute(conn)?;
    Ok(id)
}

/// Revokes an active suppression; returns its (person, patient), or `None` when there is
/// no such suppression or it was already revoked.
pub fn revoke(
    conn: &mut PgConnection,
    id: Uuid,
    by: UserId,
    now: DateTime<Utc>,
) -> Result<Option<(UserId, PatientId)>, AppError> {
    let row: Option<(Uuid, Uuid)> =
        diesel::update(s::table.find(id).filter(s::revoked_at.is_null()))
            .set((s::revoked_at.eq(Some(now)), s::revoked_by.eq(Some(by))))
            .returning((s::user_id, s::patient_id))
            .get_result(conn)
            .optional()?;
    Ok(row.map(|(u, p)| (UserId(u), PatientId(p))))
}

/// One suppression as the console lists it (reason opened).
pub struct Suppression {
    pub id: Uuid,
    pub user_id: UserId,
    pub patient_id: PatientId,
    pub kind: Option<String>,
    pub reason: String,
    pub created_by: UserId,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
}

type Row = (
    Uuid,
    Uuid,
    Uuid,
    Option<String>,
    Vec<u8>,
    Uuid,
    DateTime<Utc>,
    DateTime<Utc>,
    Option<DateTime<Utc>>,
);

/// The newest suppressions (at most `limit`), active ones first.
pub fn list(
    conn: &mut PgConnection,
    kr: &Keyring,
    limit: i64,
) -> Result<Vec<Suppression>, AppError> {
    let rows: Vec<Row> = s::table
        .order((s::revoked_at.is_not_null(), s::created_at.desc(), s::id))
        .limit(limit)
        .select((
            s::id,
            s::user_id,
            s::patient_id,
            s::kind,
            s::reason_sealed,
            s::created_by,
            s::created_at,
            s::expires_at,
            s::revoked_at,
        ))
        .load(conn)?;
    rows.into_iter()
        .map(
            |(id, user, patient, kind, sealed, by, created, expires, revoked)| {
                Ok(Suppression {
                    id,
                    user_id: UserId(user),
                    patient_id: PatientId(patient),
                    kind,
                    reason: kr.open_str(&REASON.at(id), &sealed)?,
                    created_by: UserId(by),
                    created_at: created,
                    expires_at: expires,
                    revoked_at: revoked,
                })
            },
        )
        .collect()
}

/// What a suppression is matched on: an alert's person, patient, kind code and time.
pub type AlertKey<'a> = (Option<UserId>, Option<PatientId>, &'a str, DateTime<Utc>);

/// For each alert key, whether an active suppression covers it. A suppression covers an
/// alert about its person and its patient (of its kind, if it names one) raised before it
/// expires, unless revoked. Alerts not about a person and a patient are never suppressed.
pub fn suppressed(conn: &mut PgConnection, keys: &[AlertKey<'_>]) -> Result<Vec<bool>, AppError> {
    let mut users: Vec<Uuid> = Vec::new();
    let mut patients: Vec<Uuid> = Vec::new();
    let mut earliest: Option<DateTime<Utc>> = None;
    for (u, p, _, at) in keys {
        if let (Some(u), Some(p)) = (u, p) {
            users.push(u.as_uuid());
            patients.push(p.as_uuid());
            earliest = Some(earliest.map_or(*at, |e| e.min(*at)));
        }
    }
    let none = || vec![false; keys.len()];
    let Some(earliest) = earliest else {
        return Ok(none());
    };
    users.sort();
    users.dedup();
    patients.sort();
    patients.dedup();
    let active: Vec<(Uuid, Uuid, Option<String>, DateTime<Utc>)> = s::table
        .filter(s::user_id.eq_any(users))
        .filter(s::patient_id.eq_any(patients))
        .filter(s::revoked_at.is_null())
        .filter(s::expires_at.gt(earliest))
        .select((s::user_id, s::patient_id, s::kind, s::expires_at))
        .load(conn)?;
    if active.is_empty() {
        return Ok(none());
    }
    Ok(keys
        .iter()
        .map(|(u, p, kind, at)| {
            let (Some(u), Some(p)) = (u, p) else {
                return false;
            };
            active.iter().any(|(su, sp, k, expires)| {
                *su == u.as_uuid()
                    && *sp == p.as_uuid()
                    && k.as_deref().is_none_or(|k| k == *kind)
                    && expires > at
            })
        })
        .collect())
}
