//! The `observations` table: sealed observations, insert and get, the subject lookup for
//! the decision point, policy-scoped search, version-checked update (re-sealing every
//! sealed column of the row with the active key) and soft delete.

use crate::crypto::{Keyring, Phi, columns};
use crate::db::phi::{open, open_opt};
use crate::db::schema::observations;
use crate::db::scope::ScopeSql;
use crate::domain::{PatientId, RecordId};
use crate::error::AppError;
use crate::policy::SearchScope;
use chrono::{DateTime, Utc};
use diesel::prelude::*;
use serde_json::Value;
use std::fmt;
use uuid::Uuid;

#[derive(Clone)]
pub struct NewObservation {
    pub patient_id: Uuid,
    pub status: String,
    pub code: String,
    pub code_display: Option<String>,
    /// FHIR `value[x]` as JSON (`{"valueQuantity": {...}}` or `{"valueString": "..."}`).
    pub value: Value,
    pub effective_at: DateTime<Utc>,
}

impl fmt::Debug for NewObservation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NewObservation")
            .field("patient_id", &self.patient_id)
            .field("code", &self.code)
            .finish_non_exhaustive()
    }
}

#[derive(Clone, Debug)]
pub struct Observation {
    pub id: Uuid,
    pub version: i32,
    pub key_version: i32,
    pub patient_id: Uuid,
    pub status: String,
    pub code: String,
    pub code_display: Option<Phi<String>>,
    pub value: Phi<Value>,
    pub effective_at: DateTime<Utc>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub deleted_at: Option<DateTime<Utc>>,
}

#[derive(Queryable, Selectable)]
#[diesel(table_name = observations, check_for_backend(diesel::pg::Pg))]
pub(crate) struct ObservationRow {
    id: Uuid,
    version: i32,
    key_version: i32,
    patient_id: Uuid,
    status: String,
    code: String,
    code_display_sealed: Option<Vec<u8>>,
    value_sealed: Vec<u8>,
    effective_at: DateTime<Utc>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    deleted_at: Option<DateTime<Utc>>,
}

impl ObservationRow {
    pub(crate) fn open(
        self,
        conn: &mut PgConnection,
        kr: &Keyring,
    ) -> Result<Observation, AppError> {
        kr.ensure_version(conn, self.key_version)?;
        Ok(Observation {
            code_display: open_opt(
                kr,
                columns::observations::CODE_DISPLAY,
                self.id,
                self.code_display_sealed.as_deref(),
            )?,
            value: open(
                kr,
                columns::observations::VALUE,
                self.id,
                &self.value_sealed,
            )?,
            id: self.id,
            version: self.version,
            key_version: self.key_version,
            patient_id: self.patient_id,
            status: self.status,
            code: self.code,
            effective_at: self.effective_at,
            created_at: self.created_at,
            updated_at: self.updated_at,
            deleted_at: self.deleted_at,
        })
    }
}

pub fn insert_observation(
    conn: &mut PgConnection,
    kr: &Keyring,
    new: &NewObservation,
) -> Result<Observation, AppError> {
    let id = Uuid::new_v4();
    conn.transaction(|conn| {
        let sealer = kr.sealer_for_write(conn)?;
        let code_display = new
            .code_display
            .as_deref()
            .map(|d| sealer.seal_str(&columns::observations::CODE_DISPLAY.at(id), d))
            .transpose()?;
        let row = diesel::insert_into(observations::table)
            .values((
                observations::id.eq(id),
                observations::key_version.eq(sealer.version()),
                observations::patient_id.eq(new.patient_id),
                observations::status.eq(&new.status),
                observations::code.eq(&new.code),
                observations::code_display_sealed.eq(code_display),
                observations::value_sealed
                    .eq(sealer.seal_value(&columns::observations::VALUE.at(id), &new.value)?),
                observations::effective_at.eq(new.effective_at),
            ))
            .returning(ObservationRow::as_returning())
            .get_result::<ObservationRow>(conn)?;
        row.open(conn, kr)
    })
}

pub fn get_observation(
    conn: &mut PgConnection,
    kr: &Keyring,
    id: Uuid,
) -> Result<Option<Observation>, AppError> {
    let row = observations::table
        .filter(observations::id.eq(id))
        .filter(observations::deleted_at.is_null())
        .select(ObservationRow::as_select())
        .first(conn)
        .optional()?;
    row.map(|r| r.open(conn, kr)).transpose()
}

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
            .map(|d| sealer.seal_str(&columns::observations::CODE_DISPLAY.at(id), d))
            .transpose()?;
        let value = sealer.seal_value(&columns::observations::VALUE.at(id), &new.value)?;
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
