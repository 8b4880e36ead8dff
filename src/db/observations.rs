//! The `observations` table: its row, its sealed columns (display and value) and its
//! search criteria. Get, search, insert, version-checked update and soft delete are the
//! shared mechanics of [`crate::db::records`].

use crate::crypto::{Keyring, Sealer, columns};
use crate::db::records::{self, RecordTable};
use crate::db::schema::observations;
use crate::error::AppError;
use chrono::{DateTime, Utc};
use diesel::pg::Pg;
use diesel::prelude::*;
use serde_json::Value;
use uuid::Uuid;

records::record_structs! {
    table observations;
    /// An observation to write. `Debug` shows no PHI.
    new NewObservation;
    /// An opened observation; `value` is FHIR `value[x]` as JSON
    /// (`{"valueQuantity": {...}}` or `{"valueString": "..."}`).
    record Observation;
    row ObservationRow;
    write ObservationWrite;
    kept {}
    clear { status: String, code: String, effective_at: DateTime<Utc> }
    sealed { value: Value => value_sealed @ columns::observations::VALUE }
    sealed_opt { code_display: String => code_display_sealed @ columns::observations::CODE_DISPLAY }
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
        ObservationWrite::seal(new, sealer, id)
    }
    fn open(row: ObservationRow, kr: &Keyring) -> Result<Observation, AppError> {
        row.open(kr)
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
