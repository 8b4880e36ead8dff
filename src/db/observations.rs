//! The `observations` table: its row, its sealed columns (display and value) and its
//! search criteria. Get, search, insert, version-checked update and soft delete are the
//! shared mechanics of [`crate::db::records`].

use crate::crypto::columns;
use crate::db::records::{self, RecordTable};
use crate::db::schema::observations;
use chrono::{DateTime, Utc};
use diesel::pg::Pg;
use diesel::prelude::*;
use serde_json::Value;
use uuid::Uuid;

records::record_structs! {
    table observations;
    repo ObservationTable;
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

/// The `observations` repository.
pub struct ObservationTable;

impl RecordTable for ObservationTable {
    type Criteria = Criteria;
    type Fields = ();
    type Query = observations::BoxedQuery<'static, Pg>;
    const DATE_COLUMN: Option<&'static str> = Some("effective_at");

    fn date(o: &Observation) -> Option<DateTime<Utc>> {
        Some(o.effective_at)
    }
    fn filter(mut q: Self::Query, criteria: &Criteria) -> Self::Query {
        if let Some(p) = criteria.patient {
            q = q.filter(observations::patient_id.eq(p));
        }
        if !criteria.code.is_empty() {
            q = q.filter(observations::code.eq_any(criteria.code.clone()));
        }
        records::time_filter!(q, observations::effective_at, &criteria.dates)
    }
}

records::statements!(ObservationTable, observations);
