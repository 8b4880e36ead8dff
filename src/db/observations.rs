//! Observations beyond insert/get (in [`crate::db::phi`]): the subject lookup for the
//! decision point, policy-scoped search, version-checked update (re-sealing every sealed
//! column of the row with the active key) and soft delete.

use crate::crypto::Keyring;
use crate::db::phi::{NewObservation, Observation, ObservationRow, place};
use crate::db::schema::observations;
use crate::db::scope::ScopeSql;
use crate::domain::{PatientId, RecordId};
use crate::error::AppError;
use crate::policy::SearchScope;
use chrono::{DateTime, Utc};
use diesel::prelude::*;
use uuid::Uuid;

const T: &str = "observations";

/// The subject patient of a live observation.
pub fn patient_of(conn: &mut PgConnection, id: RecordId) -> Result<Option<PatientId>, AppError> {
    Ok(observations::table
        .filter(observations::id.eq(id))
        .filter(observations::deleted_at.is_null())
        .select(observations::patient_id)
        .first(conn)
        .optional()?)
}

/// Search criteria, AND-ed.
#[derive(Default, Debug)]
pub struct Criteria {
    pub patient: Option<Uuid>,
    pub code: Option<String>,
    pub from: Vec<DateTime<Utc>>,
    pub until: Vec<DateTime<Utc>>,
}

/// One page of live observations within `scope`, ordered by id, after `after`.
pub fn search(
    conn: &mut PgConnection,
    kr: &Keyring,
    criteria: &Criteria,
    scope: SearchScope,
    after: Option<Uuid>,
    limit: i64,
) -> Result<Vec<Observation>, AppError> {
    let base = observations::table
        .filter(observations::deleted_at.is_null())
        .into_boxed();
    let mut q = base.filter(ScopeSql::new(scope, "observations.patient_id").expression());
    if let Some(p) = criteria.patient {
        q = q.filter(observations::patient_id.eq(p));
    }
    if let Some(code) = &criteria.code {
        q = q.filter(observations::code.eq(code.clone()));
    }
    for t in &criteria.from {
        q = q.filter(observations::effective_at.ge(*t));
    }
    for t in &criteria.until {
        q = q.filter(observations::effective_at.lt(*t));
    }
    if let Some(a) = after {
        q = q.filter(observations::id.gt(a));
    }
    let rows: Vec<ObservationRow> = q
        .order(observations::id)
        .limit(limit)
        .select(ObservationRow::as_select())
        .load(conn)?;
    rows.into_iter().map(|r| r.open(conn, kr)).collect()
}

/// Replaces an observation (same subject) if its version is still `expected`; every
/// sealed column is re-sealed with the active key. `None`: the version no longer matches
/// or the observation is gone.
pub fn update(
    conn: &mut PgConnection,
    kr: &Keyring,
    id: RecordId,
    expected: i32,
    new: &NewObservation,
) -> Result<Option<Observation>, AppError> {
    let id = Uuid::from(id);
    conn.transaction(|conn| {
        let sealer = kr.sealer_for_write(conn)?;
        let display = new
            .code_display
            .as_deref()
            .map(|d| sealer.seal_str(&place(T, "code_display_sealed", id), d))
            .transpose()?;
        let value = sealer.seal_value(&place(T, "value_sealed", id), &new.value)?;
        let row: Option<ObservationRow> = diesel::update(
            observations::table.filter(
                observations::id
                    .eq(id)
                    .and(observations::version.eq(expected))
                    .and(observations::patient_id.eq(new.patient_id))
                    .and(observations::deleted_at.is_null()),
            ),
        )
        .set((
            observations::version.eq(expected + 1),
            observations::key_version.eq(sealer.version()),
            observations::status.eq(&new.status),
            observations::code.eq(&new.code),
            observations::code_display_sealed.eq(display),
            observations::value_sealed.eq(value),
            observations::effective_at.eq(new.effective_at),
            observations::updated_at.eq(Utc::now()),
        ))
        .returning(ObservationRow::as_returning())
        .get_result(conn)
        .optional()?;
        row.map(|r| r.open(conn, kr)).transpose()
    })
}

/// Soft delete: the row stays (for the record) but is no longer read or found.
pub fn soft_delete(conn: &mut PgConnection, id: RecordId) -> Result<bool, AppError> {
    let n = diesel::update(
        observations::table.filter(
            observations::id
                .eq(id)
                .and(observations::deleted_at.is_null()),
        ),
    )
    .set((
        observations::deleted_at.eq(Utc::now()),
        observations::version.eq(observations::version + 1),
        observations::updated_at.eq(Utc::now()),
    ))
    .execute(conn)?;
    Ok(n > 0)
}
