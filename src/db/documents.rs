//! Document references (clinical notes) beyond insert/get (in [`crate::db::phi`]): the
//! subject lookup for the decision point, policy-scoped search and version-checked update
//! (re-sealing the note with the active key).

use crate::crypto::Keyring;
use crate::db::phi::{DocumentReference, DocumentRow, NewDocumentReference, place};
use crate::db::schema::document_references as d;
use crate::db::scope::ScopeSql;
use crate::domain::{PatientId, RecordId};
use crate::error::AppError;
use crate::policy::SearchScope;
use chrono::Utc;
use diesel::prelude::*;
use uuid::Uuid;

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
        let text = sealer.seal_str(&place("document_references", "text_sealed", id), &new.text)?;
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
