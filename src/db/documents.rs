//! The `document_references` table (clinical notes): the sealed note, insert and get, the
//! subject lookup for the decision point, policy-scoped search and version-checked update
//! (re-sealing the note with the active key).

use crate::crypto::{Keyring, Phi, columns};
use crate::db::phi::open;
use crate::db::schema::document_references as d;
use crate::db::schema::document_references;
use crate::error::AppError;
use chrono::{DateTime, Utc};
use diesel::prelude::*;
use std::fmt;
use uuid::Uuid;

use crate::db::scope::ScopeSql;
use crate::domain::{PatientId, RecordId};
use crate::policy::SearchScope;

#[derive(Clone)]
pub struct NewDocumentReference {
    pub patient_id: Uuid,
    pub author_id: Option<Uuid>,
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
    pub patient_id: Uuid,
    pub author_id: Option<Uuid>,
    pub doc_type: Option<String>,
    pub date: Option<DateTime<Utc>>,
    pub text: Phi<String>,
    pub status: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub deleted_at: Option<DateTime<Utc>>,
}

#[derive(Queryable, Selectable)]
#[diesel(table_name = document_references, check_for_backend(diesel::pg::Pg))]
pub(crate) struct DocumentRow {
    id: Uuid,
    version: i32,
    key_version: i32,
    patient_id: Uuid,
    author_id: Option<Uuid>,
    doc_type: Option<String>,
    date: Option<DateTime<Utc>>,
    text_sealed: Vec<u8>,
    status: String,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    deleted_at: Option<DateTime<Utc>>,
}

impl DocumentRow {
    pub(crate) fn open(
        self,
        conn: &mut PgConnection,
        kr: &Keyring,
    ) -> Result<DocumentReference, AppError> {
        kr.ensure_version(conn, self.key_version)?;
        Ok(DocumentReference {
            text: open(
                kr,
                columns::document_references::TEXT,
                self.id,
                &self.text_sealed,
            )?,
            id: self.id,
            version: self.version,
            key_version: self.key_version,
            patient_id: self.patient_id,
            author_id: self.author_id,
            doc_type: self.doc_type,
            date: self.date,
            status: self.status,
            created_at: self.created_at,
            updated_at: self.updated_at,
            deleted_at: self.deleted_at,
        })
    }
}

pub fn insert_document_reference(
    conn: &mut PgConnection,
    kr: &Keyring,
    new: &NewDocumentReference,
) -> Result<DocumentReference, AppError> {
    let id = Uuid::new_v4();
    conn.transaction(|conn| {
        let sealer = kr.sealer_for_write(conn)?;
        let row = diesel::insert_into(document_references::table)
            .values((
                document_references::id.eq(id),
                document_references::key_version.eq(sealer.version()),
                document_references::patient_id.eq(new.patient_id),
                document_references::author_id.eq(new.author_id),
                document_references::doc_type.eq(&new.doc_type),
                document_references::date.eq(new.date),
                document_references::text_sealed
                    .eq(sealer.seal_str(&columns::document_references::TEXT.at(id), &new.text)?),
                document_references::status.eq(&new.status),
            ))
            .returning(DocumentRow::as_returning())
            .get_result::<DocumentRow>(conn)?;
        row.open(conn, kr)
    })
}

pub fn get_document_reference(
    conn: &mut PgConnection,
    kr: &Keyring,
    id: Uuid,
) -> Result<Option<DocumentReference>, AppError> {
    let row = document_references::table
        .filter(document_references::id.eq(id))
        .filter(document_references::deleted_at.is_null())
        .select(DocumentRow::as_select())
        .first(conn)
        .optional()?;
    row.map(|r| r.open(conn, kr)).transpose()
}

/// The subject patient of a live document reference.
pub fn patient_of(conn: &mut PgConnection, id: RecordId) -> Result<Option<PatientId>, AppError> {
    Ok(d::table
        .filter(d::id.eq(id))
        .filter(d::deleted_at.is_null())
        .select(d::patient_id)
        .first(conn)
        .optional()?)
}

/// One page of live notes within `scope` (optionally of one patient), ordered by id.
pub fn search(
    conn: &mut PgConnection,
    kr: &Keyring,
    patient: Option<Uuid>,
    scope: SearchScope,
    after: Option<Uuid>,
    limit: i64,
) -> Result<Vec<DocumentReference>, AppError> {
    let base = d::table.filter(d::deleted_at.is_null()).into_boxed();
    let mut q = base.filter(ScopeSql::new(scope, "document_references.patient_id").expression());
    if let Some(p) = patient {
        q = q.filter(d::patient_id.eq(p));
    }
    if let Some(a) = after {
        q = q.filter(d::id.gt(a));
    }
    let rows: Vec<DocumentRow> = q
        .order(d::id)
        .limit(limit)
        .select(DocumentRow::as_select())
        .load(conn)?;
    rows.into_iter().map(|r| r.open(conn, kr)).collect()
}

/// Replaces a note's status, type, date and text (subject and author stay) if its version
/// is still `expected`; the note is re-sealed with the active key. `None`: the version no
/// longer matches or the note is gone.
pub fn update(
    conn: &mut PgConnection,
    kr: &Keyring,
    id: RecordId,
    expected: i32,
    new: &NewDocumentReference,
) -> Result<Option<DocumentReference>, AppError> {
    let id = Uuid::from(id);
    conn.transaction(|conn| {
        let sealer = kr.sealer_for_write(conn)?;
        let text = sealer.seal_str(&columns::document_references::TEXT.at(id), &new.text)?;
        let row: Option<DocumentRow> = diesel::update(
            d::table.filter(
                d::id
                    .eq(id)
                    .and(d::version.eq(expected))
                    .and(d::patient_id.eq(new.patient_id))
                    .and(d::deleted_at.is_null()),
            ),
        )
        .set((
            d::version.eq(expected + 1),
            d::key_version.eq(sealer.version()),
            d::status.eq(&new.status),
            d::doc_type.eq(&new.doc_type),
            d::date.eq(new.date),
            d::text_sealed.eq(text),
            d::updated_at.eq(Utc::now()),
        ))
        .returning(DocumentRow::as_returning())
        .get_result(conn)
        .optional()?;
        row.map(|r| r.open(conn, kr)).transpose()
    })
}
