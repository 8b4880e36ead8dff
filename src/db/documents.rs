//! The `document_references` table (clinical notes): its row, its sealed note and its
//! search criteria (one patient, optional). Get, search, insert and version-checked
//! update (re-sealing the note with the active key) are the shared mechanics of
//! [`crate::db::records`]; an update keeps the subject and the author.

use crate::crypto::{Keyring, Phi, Sealer, columns};
use crate::db::phi::open;
use crate::db::records::{self, RecordTable};
use crate::db::schema::document_references as d;
use crate::domain::{PatientId, UserId};
use crate::error::AppError;
use chrono::{DateTime, Utc};
use diesel::pg::Pg;
use diesel::prelude::*;
use std::fmt;
use uuid::Uuid;

#[derive(Clone)]
pub struct NewDocumentReference {
    pub patient_id: PatientId,
    pub author_id: Option<UserId>,
    pub doc_type: Option<String>,
    pub date: Option<DateTime<Utc>>,
    /// Already sanitised by the caller (ammonia) — this layer only seals it.
    pub text: String,
    pub status: String,
}

impl fmt::Debug for NewDocumentReference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NewDocumentReference")
            .field("patient_id", &self.patient_id)
            .field("status", &self.status)
            .finish_non_exhaustive()
    }
}

#[derive(Clone, Debug)]
pub struct DocumentReference {
    pub id: Uuid,
    pub version: i32,
    pub key_version: i32,
    pub patient_id: PatientId,
    pub author_id: Option<UserId>,
    pub doc_type: Option<String>,
    pub date: Option<DateTime<Utc>>,
    pub text: Phi<String>,
    pub status: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub deleted_at: Option<DateTime<Utc>>,
}

#[derive(Queryable, Selectable)]
#[diesel(table_name = d, check_for_backend(Pg))]
pub struct DocumentRow {
    id: Uuid,
    version: i32,
    key_version: i32,
    patient_id: PatientId,
    author_id: Option<UserId>,
    doc_type: Option<String>,
    date: Option<DateTime<Utc>>,
    text_sealed: Vec<u8>,
    status: String,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    deleted_at: Option<DateTime<Utc>>,
}

#[derive(Insertable, AsChangeset)]
#[diesel(table_name = d, treat_none_as_null = true)]
pub struct DocumentWrite {
    key_version: i32,
    #[diesel(skip_update)]
    patient_id: PatientId,
    #[diesel(skip_update)]
    author_id: Option<UserId>,
    doc_type: Option<String>,
    date: Option<DateTime<Utc>>,
    text_sealed: Vec<u8>,
    status: String,
}

/// The `document_references` repository. Its search criteria: the one patient (optional).
pub struct DocumentTable;

impl RecordTable for DocumentTable {
    type Row = DocumentRow;
    type Write = DocumentWrite;
    type New = NewDocumentReference;
    type Record = DocumentReference;
    type Criteria = Option<Uuid>;
    type Fields = ();
    type Query = d::BoxedQuery<'static, Pg>;

    fn seal(
        new: &NewDocumentReference,
        sealer: &Sealer,
        id: Uuid,
    ) -> Result<DocumentWrite, AppError> {
        let place = columns::document_references::TEXT.at(id);
        Ok(DocumentWrite {
            key_version: sealer.version(),
            patient_id: new.patient_id,
            author_id: new.author_id,
            doc_type: new.doc_type.clone(),
            date: new.date,
            text_sealed: sealer.seal_str(&place, &new.text)?,
            status: new.status.clone(),
        })
    }

    fn open(row: DocumentRow, kr: &Keyring) -> Result<DocumentReference, AppError> {
        let column = columns::document_references::TEXT;
        Ok(DocumentReference {
            text: open(kr, column, row.id, &row.text_sealed)?,
            id: row.id,
            version: row.version,
            key_version: row.key_version,
            patient_id: row.patient_id,
            author_id: row.author_id,
            doc_type: row.doc_type,
            date: row.date,
            status: row.status,
            created_at: row.created_at,
            updated_at: row.updated_at,
            deleted_at: row.deleted_at,
        })
    }

    fn sort_value(
        record: &Self::Record,
        key: crate::db::records::SortKey,
    ) -> Option<chrono::DateTime<chrono::Utc>> {
        (key == crate::db::records::SortKey::LastUpdated).then_some(record.updated_at)
    }
    fn filter(q: Self::Query, patient: &Option<Uuid>) -> Self::Query {
        match patient {
            Some(p) => q.filter(d::patient_id.eq(*p)),
            None => q,
        }
    }
}

records::statements!(DocumentTable, document_references);
