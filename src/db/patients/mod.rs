//! The `patients` table: sealed patient rows (PHI wrapped in [`Phi`], so `Debug` prints
//! `[redacted]`), sealing on insert and update, the version-checked update, the by-MRN
//! lookup (through the MRN's blind index) — and, in [`views`], the view-shaped reads and
//! searches the API uses (only the columns a policy view allows are fetched).

pub mod views;

use crate::crypto::{BlindKind, Keyring, Phi, Sealer, columns};
use crate::db::phi::{open, open_opt};
use crate::db::schema::patients;
use crate::domain::{FacilityId, PatientId};
use crate::error::AppError;
use crate::policy::views::PatientFields;
use chrono::{DateTime, NaiveDate, Utc};
use diesel::prelude::*;
use diesel::result::{DatabaseErrorKind, Error as DieselError};
use serde_json::Value;
use std::fmt;
use uuid::Uuid;

/// A patient to create. `Debug` shows no PHI.
#[derive(Clone)]
pub struct NewPatient {
    pub facility_id: FacilityId,
    pub mrn: String,
    pub ssn: Option<String>,
    pub family: String,
    pub given: String,
    pub birth_date: NaiveDate,
    pub gender: String,
    pub telecom: Option<Value>,
    pub address: Option<Value>,
}

impl fmt::Debug for NewPatient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NewPatient")
            .field("facility_id", &self.facility_id)
            .field("gender", &self.gender)
            .finish_non_exhaustive()
    }
}

/// A decrypted patient. PHI fields are [`Phi`]: `Debug` prints `[redacted]`.
#[derive(Clone, Debug)]
pub struct Patient {
    pub id: PatientId,
    pub version: i32,
    pub key_version: i32,
    pub facility_id: FacilityId,
    pub mrn: Phi<String>,
    pub ssn: Option<Phi<String>>,
    pub family: Phi<String>,
    pub given: Phi<String>,
    pub birth_date: Phi<NaiveDate>,
    pub gender: String,
    pub telecom: Option<Phi<Value>>,
    pub address: Option<Phi<Value>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub deleted_at: Option<DateTime<Utc>>,
    /// N, R or V (not PHI: shown in `meta.security`).
    pub confidentiality: crate::policy::Confidentiality,
}

#[derive(Queryable, Selectable)]
#[diesel(table_name = patients, check_for_backend(diesel::pg::Pg))]
struct PatientRow {
    id: Uuid,
    version: i32,
    key_version: i32,
    facility_id: FacilityId,
    mrn_sealed: Vec<u8>,
    ssn_sealed: Option<Vec<u8>>,
    family_sealed: Vec<u8>,
    given_sealed: Vec<u8>,
    birth_date_sealed: Vec<u8>,
    gender: String,
    telecom_sealed: Option<Vec<u8>>,
    address_sealed: Option<Vec<u8>>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    deleted_at: Option<DateTime<Utc>>,
    confidentiality: String,
}

impl PatientRow {
    fn open(self, conn: &mut PgConnection, kr: &Keyring) -> Result<Patient, AppError> {
        kr.ensure_version(conn, self.key_version)?;
        let id = self.id;
        Ok(Patient {
            id: PatientId(id),
            version: self.version,
            key_version: self.key_version,
            facility_id: self.facility_id,
            mrn: open(kr, columns::patients::MRN, id, &self.mrn_sealed)?,
            ssn: open_opt(kr, columns::patients::SSN, id, self.ssn_sealed.as_deref())?,
            family: open(kr, columns::patients::FAMILY, id, &self.family_sealed)?,
            given: open(kr, columns::patients::GIVEN, id, &self.given_sealed)?,
            birth_date: open(
                kr,
                columns::patients::BIRTH_DATE,
                id,
                &self.birth_date_sealed,
            )?,
            gender: self.gender,
            telecom: open_opt(
                kr,
                columns::patients::TELECOM,
                id,
                self.telecom_sealed.as_deref(),
            )?,
            address: open_opt(
                kr,
                columns::patients::ADDRESS,
                id,
                self.address_sealed.as_deref(),
            )?,
            created_at: self.created_at,
            updated_at: self.updated_at,
            deleted_at: self.deleted_at,
            confidentiality: crate::db::break_glass::parse_level(&self.confidentiality)?,
        })
    }
}

/// Every sealed column and blind index of one patient row, sealed as a whole with one
/// data-key version. Build it with [`seal_patient`] inside the write transaction; use it
/// for inserts and for updates (an update re-seals the whole row, so `key_version`
/// stays true for every sealed column).
#[derive(Insertable, AsChangeset)]
#[diesel(table_name = patients, treat_none_as_null = true)]
pub struct SealedPatient {
    pub key_version: i32,
    pub facility_id: FacilityId,
    pub mrn_sealed: Vec<u8>,
    pub mrn_index: Vec<u8>,
    pub ssn_sealed: Option<Vec<u8>>,
    pub ssn_index: Option<Vec<u8>>,
    pub family_sealed: Vec<u8>,
    pub family_index: Vec<u8>,
    pub given_sealed: Vec<u8>,
    pub given_index: Vec<u8>,
    pub birth_date_sealed: Vec<u8>,
    pub birth_date_index: Vec<u8>,
    pub gender: String,
    pub telecom_sealed: Option<Vec<u8>>,
    pub address_sealed: Option<Vec<u8>>,
    /// Starts-with indexes of the names (see `crypto::blind`).
    pub name_prefixes: Option<Vec<Vec<u8>>>,
    /// `:contains` indexes of the names (see `crypto::blind`).
    pub name_infixes: Option<Vec<Vec<u8>>>,
}

/// Seals `new` for row `id` with `sealer`'s key and computes its blind indexes.
/// An MRN or SSN that cannot be normalised is a 422.
pub fn seal_patient(
    kr: &Keyring,
    sealer: &Sealer,
    id: Uuid,
    new: &NewPatient,
) -> Result<SealedPatient, AppError> {
    let at = |column: columns::SealedColumn| column.at(id);
    Ok(SealedPatient {
        key_version: sealer.version(),
        facility_id: new.facility_id,
        mrn_sealed: sealer.seal_str(&at(columns::patients::MRN), new.mrn.trim())?,
        mrn_index: kr.blind_index(BlindKind::Mrn, &new.mrn)?,
        ssn_sealed: new
            .ssn
            .as_deref()
            .map(|s| sealer.seal_str(&at(columns::patients::SSN), s.trim()))
            .transpose()?,
        ssn_index: new
            .ssn
            .as_deref()
            .map(|s| kr.blind_index(BlindKind::Ssn, s))
            .transpose()?,
        family_sealed: sealer.seal_str(&at(columns::patients::FAMILY), new.family.trim())?,
        family_index: kr.blind_index(BlindKind::Family, &new.family)?,
        given_sealed: sealer.seal_str(&at(columns::patients::GIVEN), new.given.trim())?,
        given_index: kr.blind_index(BlindKind::Given, &new.given)?,
        birth_date_sealed: sealer
            .seal_value(&at(columns::patients::BIRTH_DATE), &new.birth_date)?,
        birth_date_index: kr.blind_index(
            BlindKind::BirthDate,
            &new.birth_date.format("%Y-%m-%d").to_string(),
        )?,
        name_prefixes: Some(kr.name_prefixes(&new.family, &new.given)),
        name_infixes: Some(kr.name_infixes(&new.family, &new.given)),
        gender: new.gender.clone(),
        telecom_sealed: new
            .telecom
            .as_ref()
            .map(|v| sealer.seal_value(&at(columns::patients::TELECOM), v))
            .transpose()?,
        address_sealed: new
            .address
            .as_ref()
            .map(|v| sealer.seal_value(&at(columns::patients::ADDRESS), v))
            .transpose()?,
    })
}

fn mrn_conflict(e: DieselError) -> AppError {
    match e {
        DieselError::DatabaseError(DatabaseErrorKind::UniqueViolation, info)
            if info.constraint_name() == Some("patients_mrn_index_key") =>
        {
            AppError::client(
                actix_web::http::StatusCode::CONFLICT,
                "A patient with this MRN already exists.",
            )
        }
        e => e.into(),
    }
}

/// Seals and inserts a patient in one transaction. A duplicate MRN (after
/// normalisation) is a 409; an MRN or SSN that cannot be normalised is a 422.
pub fn insert_patient(
    conn: &mut PgConnection,
    kr: &Keyring,
    new: &NewPatient,
) -> Result<Patient, AppError> {
    let id = Uuid::new_v4();
    conn.transaction(|conn| {
        let sealer = kr.sealer_for_write(conn)?;
        let sealed = seal_patient(kr, &sealer, id, new)?;
        let row = diesel::insert_into(patients::table)
            .values((patients::id.eq(id), &sealed))
            .returning(PatientRow::as_returning())
            .get_result::<PatientRow>(conn)
            .map_err(mrn_conflict)?;
        row.open(conn, kr)
    })
}

/// Replaces a patient's data, re-sealing the whole row with the active key, when its
/// current `version` is `expected_version`; bumps `version` and `updated_at`.
/// `Ok(None)`: no such (undeleted) patient. A version mismatch is a 412; a duplicate
/// MRN a 409.
pub fn update_patient(
    conn: &mut PgConnection,
    kr: &Keyring,
    id: Uuid,
    expected_version: i32,
    new: &NewPatient,
) -> Result<Option<Patient>, AppError> {
    update_patient_fields(conn, kr, id, Some(expected_version), new, ALL_FIELDS)
}

/// Every patient field (the update of a caller who may write them all).
const ALL_FIELDS: PatientFields = PatientFields {
    mrn: true,
    ssn: true,
    name: true,
    birth_date: true,
    gender: true,
    telecom: true,
    address: true,
};

/// `new` with the fields outside `writable` taken from `current`: what the writer's view
/// does not contain is kept as stored, never nulled (field-level write control).
fn keep_outside(new: &NewPatient, current: Patient, writable: PatientFields) -> NewPatient {
    let mut merged = new.clone();
    if !writable.mrn {
        merged.mrn = current.mrn.expose().clone();
    }
    if !writable.ssn {
        merged.ssn = current.ssn.map(|v| v.expose().clone());
    }
    if !writable.name {
        merged.family = current.family.expose().clone();
        merged.given = current.given.expose().clone();
    }
    if !writable.birth_date {
        merged.birth_date = *current.birth_date.expose();
    }
    if !writable.gender {
        merged.gender = current.gender;
    }
    if !writable.telecom {
        merged.telecom = current.telecom.map(|v| v.expose().clone());
    }
    if !writable.address {
        merged.address = current.address.map(|v| v.expose().clone());
    }
    merged
}

/// [`update_patient`] by a writer who may write only the `writable` fields: the others
/// keep their stored values (read and re-sealed in the same transaction).
pub fn update_patient_fields(
    conn: &mut PgConnection,
    kr: &Keyring,
    id: Uuid,
    expected_version: Option<i32>,
    new: &NewPatient,
    writable: PatientFields,
) -> Result<Option<Patient>, AppError> {
    conn.transaction(|conn| {
        let current: Option<i32> = patients::table
            .filter(patients::id.eq(id))
            .filter(patients::deleted_at.is_null())
            .select(patients::version)
            .for_update()
            .first(conn)
            .optional()?;
        let Some(current) = current else {
            return Ok(None);
        };
        if expected_version.is_some_and(|v| v != current) {
            return Err(AppError::client(
                actix_web::http::StatusCode::PRECONDITION_FAILED,
                "The resource was changed since that version.",
            ));
        }
        let merged;
        let new = if writable == ALL_FIELDS {
            new
        } else {
            let current = patients::table
                .find(id)
                .select(PatientRow::as_select())
                .first::<PatientRow>(conn)?
                .open(conn, kr)?;
            merged = keep_outside(new, current, writable);
            &merged
        };
        let sealer = kr.sealer_for_write(conn)?;
        let sealed = seal_patient(kr, &sealer, id, new)?;
        let row = diesel::update(patients::table.find(id))
            .set((
                &sealed,
                patients::version.eq(current + 1),
                patients::updated_at.eq(diesel::dsl::now),
            ))
            .returning(PatientRow::as_returning())
            .get_result::<PatientRow>(conn)
            .map_err(mrn_conflict)?;
        row.open(conn, kr).map(Some)
    })
}

/// The patient with this MRN (normalised: case, spaces and dashes ignored).
pub fn find_patient_by_mrn(
    conn: &mut PgConnection,
    kr: &Keyring,
    mrn: &str,
) -> Result<Option<Patient>, AppError> {
    let index = kr.blind_index(BlindKind::Mrn, mrn)?;
    let row = patients::table
        .filter(patients::mrn_index.eq(index))
        .filter(patients::deleted_at.is_null())
        .select(PatientRow::as_select())
        .first(conn)
        .optional()?;
    row.map(|r| r.open(conn, kr)).transpose()
}

/// The patient with this internal id, deleted or not (an audit review names the patient
/// an event was about even after the record was erased).
pub fn patient_by_id(
    conn: &mut PgConnection,
    kr: &Keyring,
    id: PatientId,
) -> Result<Option<Patient>, AppError> {
    let row = patients::table
        .find(id.as_uuid())
        .select(PatientRow::as_select())
        .first(conn)
        .optional()?;
    row.map(|r| r.open(conn, kr)).transpose()
}

/// Computes the starts-with and `:contains` name indexes of rows written before they
/// existed (`name_prefixes` or `name_infixes` NULL; SQL cannot compute them: it has no
/// blind-index key). Batches
/// of 200, each one transaction; rows another instance is indexing are skipped, and the
/// rows' content, version and `updated_at` are untouched (an index is not a new version).
/// Returns how many rows were indexed; run again until it returns 0.
pub fn index_name_prefixes(conn: &mut PgConnection, kr: &Keyring) -> Result<u64, AppError> {
    let mut indexed = 0u64;
    loop {
        let n = conn.transaction(|conn| -> Result<u64, AppError> {
            let rows: Vec<PatientRow> = patients::table
                .filter(
                    patients::name_prefixes
                        .is_null()
                        .or(patients::name_infixes.is_null()),
                )
                .select(PatientRow::as_select())
                .order(patients::id)
                .limit(200)
                .for_update()
                .skip_locked()
                .load(conn)?;
            let n = rows.len() as u64;
            for row in rows {
                let p = row.open(conn, kr)?;
                let (family, given) = (p.family.expose(), p.given.expose());
                diesel::update(patients::table.find(p.id.0))
                    .set((
                        patients::name_prefixes.eq(Some(kr.name_prefixes(family, given))),
                        patients::name_infixes.eq(Some(kr.name_infixes(family, given))),
                    ))
                    .execute(conn)?;
            }
            Ok(n)
        })?;
        if n == 0 {
            return Ok(indexed);
        }
        indexed += n;
    }
}
