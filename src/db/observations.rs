//! The `observations` table: its row, its sealed columns (display and value) and its
//! search criteria. Get, search, insert, version-checked update and soft delete are the
//! shared mechanics of [`crate::db::records`].

use crate::crypto::{Keyring, Phi, Sealer, columns};
use crate::db::phi::{open, open_opt};
use crate::db::records::{self, RecordTable};
use crate::db::schema::observations;
use crate::domain::PatientId;
use crate::error::AppError;
use chrono::{DateTime, Utc};
use diesel::pg::Pg;
use diesel::prelude::*;
use serde_json::Value;
use std::fmt;
use uuid::Uuid;

#[derive(Clone)]
pub struct NewObservation {
    pub patient_id: PatientId,
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
    pub patient_id: PatientId,
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
#[diesel(table_name = observations, check_for_backend(Pg))]
pub struct ObservationRow {
    id: Uuid,
    version: i32,
    key_version: i32,
    patient_id: PatientId,
    status: String,
    code: String,
    code_display_sealed: Option<Vec<u8>>,
    value_sealed: Vec<u8>,
    effective_at: DateTime<Utc>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    deleted_at: Option<DateTime<Utc>>,
}

#[derive(Insertable, AsChangeset)]
#[diesel(table_name = observations, treat_none_as_null = true)]
pub struct ObservationWrite {
    key_version: i32,
    #[diesel(skip_update)]
    patient_id: PatientId,
    status: String,
    code: String,
    code_display_sealed: Option<Vec<u8>>,
    value_sealed: Vec<u8>,
    effective_at: DateTime<Utc>,
}

/// Search criteria, AND-ed.
#[derive(Default, Debug)]
pub struct Criteria {
    pub patient: Option<Uuid>,
    /// Any of these codes (a comma-separated list is an OR).
    pub code: Vec<String>,
    /// Each `date` parameter: any of its values (AND of ORs).
    pub dates: Vec<Vec<records::TimeRange>>,
}

type Cond = Box<dyn BoxableExpression<observations::table, Pg, SqlType = diesel::sql_types::Bool>>;

/// `effective_at` within (or, for `ne`, outside) one date value.
fn time_condition(r: &records::TimeRange) -> Cond {
    let mut c: Cond = Box::new(diesel::dsl::sql::<diesel::sql_types::Bool>("TRUE"));
    if let Some(from) = r.from {
        c = Box::new(c.and(observations::effective_at.ge(from)));
    }
    if let Some(until) = r.until {
        c = Box::new(c.and(observations::effective_at.lt(until)));
    }
    if r.outside {
        Box::new(diesel::dsl::not(c))
    } else {
        c
    }
}

/// The `observations` repository.
pub struct ObservationTable;

impl RecordTable for ObservationTable {
    type Row = ObservationRow;
    type Write = ObservationWrite;
    type New = NewObservation;
    type Record = Observation;
    type Criteria = Criteria;
    type Fields = ();
    type Query = observations::BoxedQuery<'static, Pg>;

    fn seal(new: &NewObservation, sealer: &Sealer, id: Uuid) -> Result<ObservationWrite, AppError> {
        use columns::observations::{CODE_DISPLAY, VALUE};
        let display = new.code_display.as_deref();
        Ok(ObservationWrite {
            key_version: sealer.version(),
            patient_id: new.patient_id,
            status: new.status.clone(),
            code: new.code.clone(),
            code_display_sealed: display
                .map(|d| sealer.seal_str(&CODE_DISPLAY.at(id), d))
                .transpose()?,
            value_sealed: sealer.seal_value(&VALUE.at(id), &new.value)?,
            effective_at: new.effective_at,
        })
    }

    fn open(row: ObservationRow, kr: &Keyring) -> Result<Observation, AppError> {
        use columns::observations::{CODE_DISPLAY, VALUE};
        let display = row.code_display_sealed.as_deref();
        Ok(Observation {
            code_display: open_opt(kr, CODE_DISPLAY, row.id, display)?,
            value: open(kr, VALUE, row.id, &row.value_sealed)?,
            id: row.id,
            version: row.version,
            key_version: row.key_version,
            patient_id: row.patient_id,
            status: row.status,
            code: row.code,
            effective_at: row.effective_at,
            created_at: row.created_at,
            updated_at: row.updated_at,
            deleted_at: row.deleted_at,
        })
    }

    fn sort_column(key: crate::db::records::SortKey) -> Option<&'static str> {
        Some(match key {
            crate::db::records::SortKey::LastUpdated => "updated_at",
            crate::db::records::SortKey::Date => "effective_at",
        })
    }
    fn sort_value(
        record: &Self::Record,
        key: crate::db::records::SortKey,
    ) -> Option<chrono::DateTime<chrono::Utc>> {
        Some(match key {
            crate::db::records::SortKey::LastUpdated => record.updated_at,
            crate::db::records::SortKey::Date => record.effective_at,
        })
    }
    fn filter(mut q: Self::Query, criteria: &Criteria) -> Self::Query {
        if let Some(p) = criteria.patient {
            q = q.filter(observations::patient_id.eq(p));
        }
        if !criteria.code.is_empty() {
            q = q.filter(observations::code.eq_any(criteria.code.clone()));
        }
        for any in &criteria.dates {
            let mut conds = any.iter().map(time_condition);
            if let Some(first) = conds.next() {
                let either = conds.fold(first, |acc, c| -> Cond { Box::new(acc.or(c)) });
                q = q.filter(either);
            }
        }
        q
    }
}

records::statements!(ObservationTable, observations);
