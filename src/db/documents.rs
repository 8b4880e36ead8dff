//! The `document_references` table (clinical notes): its row, its sealed note and its
//! search criteria (one patient, optional). Get, search, insert and version-checked
//! update (re-sealing the note with the active key) are the shared mechanics of
//! [`crate::db::records`]; an update keeps the subject and the author.

use crate::crypto::columns;
use crate::db::records::{self, RecordTable};
use crate::db::schema::document_references as d;
use crate::domain::UserId;
use chrono::{DateTime, Utc};
use diesel::pg::Pg;
use diesel::prelude::*;
use uuid::Uuid;

records::record_structs! {
    table document_references;
    repo DocumentTable;
    /// A note to write; `text` is already sanitised by the caller (ammonia) — this layer
    /// only seals it. `Debug` shows no PHI.
    new NewDocumentReference;
    /// An opened note.
    record DocumentReference;
    row DocumentRow;
    write DocumentWrite;
    kept { author_id: Option<UserId> }
    clear { doc_type: Option<String>, date: Option<DateTime<Utc>>, status: String }
    sealed { text: String => text_sealed @ columns::document_references::TEXT }
    sealed_opt {}
}

/// The `document_references` repository. Its search criteria: the one patient (optional).
pub struct DocumentTable;

impl RecordTable for DocumentTable {
    type Criteria = Option<Uuid>;
    type Fields = ();
    type Query = d::BoxedQuery<'static, Pg>;

    fn filter(q: Self::Query, patient: &Option<Uuid>) -> Self::Query {
        match patient {
            Some(p) => q.filter(d::patient_id.eq(*p)),
            None => q,
        }
    }
}

records::statements!(DocumentTable, document_references);
