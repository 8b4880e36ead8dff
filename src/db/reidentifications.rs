//! Re-identification of export pseudonyms (`reidentifications`; docs/export.md).
//!
//! A pseudonym is a keyed HMAC of a Patient's internal id ([`crate::crypto::ExportKey`]),
//! so finding its patient means recomputing candidates: [`resolve`] reads `patients.id`
//! only, in keyset-ordered batches, and HMACs each id. No sealed column is read or opened
//! (no PHI is decrypted to find the patient) and nothing is stored per key, so a new or
//! changed export key needs no index to be built or kept in step. The cost is one HMAC
//! per patient (docs/export.md#re-identification gives the measured figures).
//!
//! [`record`] stores the act (who, which key, which patient or none, the justification
//! sealed) and raises its `reidentification` alert, in the caller's transaction (the
//! audit writer's: the row, the alert and the audit event commit together).

use crate::crypto::columns::reidentifications::JUSTIFICATION;
use crate::crypto::{ExportKey, Keyring, Pseudonym};
use crate::db::alerts::{self, AlertKind, NewAlert};
use crate::domain::{PatientId, UserId};
use crate::error::AppError;
use crate::policy::reidentify::Justification;
use crate::schema::{patients, reidentifications as r};
use chrono::{DateTime, Utc};
use diesel::prelude::*;
use uuid::Uuid;

/// Patient ids read per query of the scan (bounded memory, short statements).
pub const SCAN_BATCH: i64 = 10_000;

/// The patient (deleted or not: an old export still names them) whose pseudonym under
/// `key` is `pseudonym`, if any.
pub fn resolve(
    conn: &mut PgConnection,
    key: &ExportKey,
    pseudonym: &Pseudonym,
) -> Result<Option<PatientId>, AppError> {
    let mut after: Option<Uuid> = None;
    loop {
        let mut q = patients::table
            .select(patients::id)
            .order(patients::id)
            .limit(SCAN_BATCH)
            .into_boxed();
        if let Some(last) = after {
            q = q.filter(patients::id.gt(last));
        }
        let ids: Vec<Uuid> = q.load(conn)?;
        if let Some(found) = key.find_patient(pseudonym, &ids) {
            return Ok(Some(PatientId(found)));
        }
        if ids.len() < SCAN_BATCH as usize {
            return Ok(None);
        }
        after = ids.last().copied();
    }
}

/// Stores one re-identification (its justification sealed) and, when it named a patient,
/// raises the `reidentification` alert. Returns the row's id.
pub fn record(
    conn: &mut PgConnection,
    kr: &Keyring,
    by: UserId,
    patient: Option<PatientId>,
    export_key_id: &str,
    justification: &Justification,
    now: DateTime<Utc>,
) -> Result<Uuid, AppError> {
    let id = Uuid::new_v4();
    let sealer = kr.sealer_for_write(conn)?;
    let sealed = sealer.seal_str(&JUSTIFICATION.at(id), justification.expose())?;
    diesel::insert_into(r::table)
        .values((
            r::id.eq(id),
            r::user_id.eq(by.as_uuid()),
            r::patient_id.eq(patient.map(|p| p.as_uuid())),
            r::export_key_id.eq(export_key_id),
            r::justification_sealed.eq(sealed),
            r::key_version.eq(sealer.version()),
            r::created_at.eq(now),
        ))
        .execute(conn)?;
    if let Some(patient) = patient {
        let kind = AlertKind::Reidentification;
        alerts::raise_all(
            conn,
            &[
                NewAlert::about(kind, "pseudonym", format!("reidentification:{id}"), now)
                    .person(Some(by))
                    .patient(Some(patient)),
            ],
        )?;
    }
    Ok(id)
}

/// One stored re-identification, its justification opened (for review).
#[derive(Debug)]
pub struct Reidentification {
    pub id: Uuid,
    pub user_id: UserId,
    pub patient_id: Option<PatientId>,
    pub export_key_id: String,
    pub justification: Justification,
    pub created_at: DateTime<Utc>,
}

/// The newest re-identifications (at most `limit`), justifications opened.
pub fn recent(
    conn: &mut PgConnection,
    kr: &Keyring,
    limit: i64,
) -> Result<Vec<Reidentification>, AppError> {
    type Row = (Uuid, Uuid, Option<Uuid>, String, Vec<u8>, DateTime<Utc>);
    let rows: Vec<Row> = r::table
        .order((r::created_at.desc(), r::id))
        .limit(limit)
        .select((
            r::id,
            r::user_id,
            r::patient_id,
            r::export_key_id,
            r::justification_sealed,
            r::created_at,
        ))
        .load(conn)?;
    rows.into_iter()
        .map(|(id, user, patient, key_id, sealed, at)| {
            let text = kr.open_str(&JUSTIFICATION.at(id), &sealed)?;
            let justification = Justification::parse(Some(&text))
                .map_err(|_| AppError::internal("a stored justification out of bounds"))?;
            Ok(Reidentification {
                id,
                user_id: UserId(user),
                patient_id: patient.map(PatientId),
                export_key_id: key_id,
                justification,
                created_at: at,
            })
        })
        .collect()
}
