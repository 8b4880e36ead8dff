//! Sealed PHI rows of patients, observations and notes: their domain structs (PHI wrapped
//! in [`Phi`], so `Debug` prints `[redacted]`), sealing on insert and update, and the
//! full-row reads the writes and the seeder need. The API reads patients view-shaped
//! through [`crate::db::patient_views`]; observations, notes and claims have their
//! search/update/delete in their own files ([`crate::db::observations`],
//! [`crate::db::documents`], [`crate::db::claims`]). Every sealed column is opened
//! through the [`Keyring`]; every searchable identifier is found through its blind index.

use crate::crypto::{BlindKind, FieldPlace, Keyring, Phi, Sealable, Sealer};
use crate::db::schema::{document_references, facilities, observations, patients};
use crate::error::AppError;
use chrono::{DateTime, NaiveDate, Utc};
use diesel::prelude::*;
use diesel::result::{DatabaseErrorKind, Error as DieselError};
use serde_json::Value;
use std::fmt;
use uuid::Uuid;

pub use crate::crypto::columns::{SEALED_COLUMNS, SealedTable};

pub(crate) fn place(table: &'static str, column: &'static str, row: Uuid) -> FieldPlace {
    FieldPlace::new(table, column, row)
}

pub(crate) fn open<T: Sealable>(
    kr: &Keyring,
    table: &'static str,
    column: &'static str,
    row: Uuid,
    sealed: &[u8],
) -> Result<Phi<T>, AppError> {
    kr.open_value::<T>(&place(table, column, row), sealed)
        .map(Phi::new)
        .map_err(|e| {
            tracing::error!(table, column, row = %row, error = %e, "cannot open a sealed value");
            AppError::from(e)
        })
}

fn open_opt<T: Sealable>(
    kr: &Keyring,
    table: &'static str,
    column: &'static str,
    row: Uuid,
    sealed: Option<&[u8]>,
) -> Result<Option<Phi<T>>, AppError> {
    sealed.map(|s| open(kr, table, column, row, s)).transpose()
}

// ---------------------------------------------------------------------------------------
// Facilities

pub fn insert_facility(conn: &mut PgConnection, name: &str) -> Result<Uuid, AppError> {
    let id = Uuid::new_v4();
    diesel::insert_into(facilities::table)
        .values((facilities::id.eq(id), facilities::name.eq(name)))
        .execute(conn)?;
    Ok(id)
}

// ---------------------------------------------------------------------------------------
// Patients

/// A patient to create. `Debug` shows no PHI.
#[derive(Clone)]
pub struct NewPatient {
    pub facility_id: Uuid,
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
    pub id: Uuid,
    pub version: i32,
    pub key_version: i32,
    pub facility_id: Uuid,
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
}

#[derive(Queryable, Selectable)]
#[diesel(table_name = patients, check_for_backend(diesel::pg::Pg))]
struct PatientRow {
    id: Uuid,
    version: i32,
    key_version: i32,
    facility_id: Uuid,
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
}

const P: &str = "patients";

impl PatientRow {
    fn open(self, conn: &mut PgConnection, kr: &Keyring) -> Result<Patient, AppError> {
        kr.ensure_version(conn, self.key_version)?;
        let id = self.id;
        Ok(Patient {
            id,
            version: self.version,
            key_version: self.key_version,
            facility_id: self.facility_id,
            mrn: open(kr, P, "mrn_sealed", id, &self.mrn_sealed)?,
            ssn: open_opt(kr, P, "ssn_sealed", id, self.ssn_sealed.as_deref())?,
            family: open(kr, P, "family_sealed", id, &self.family_sealed)?,
            given: open(kr, P, "given_sealed", id, &self.given_sealed)?,
            birth_date: open(kr, P, "birth_date_sealed", id, &self.birth_date_sealed)?,
            gender: self.gender,
            telecom: open_opt(kr, P, "telecom_sealed", id, self.telecom_sealed.as_deref())?,
            address: open_opt(kr, P, "address_sealed", id, self.address_sealed.as_deref())?,
            created_at: self.created_at,
            updated_at: self.updated_at,
            deleted_at: self.deleted_at,
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
    pub facility_id: Uuid,
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
}

/// Seals `new` for row `id` with `sealer`'s key and computes its blind indexes.
/// An MRN or SSN that cannot be normalised is a 422.
pub fn seal_patient(
    kr: &Keyring,
    sealer: &Sealer,
    id: Uuid,
    new: &NewPatient,
) -> Result<SealedPatient, AppError> {
    let at = |column| place(P, column, id);
    Ok(SealedPatient {
        key_version: sealer.version(),
        facility_id: new.facility_id,
        mrn_sealed: sealer.seal_str(&at("mrn_sealed"), new.mrn.trim())?,
        mrn_index: kr.blind_index(BlindKind::Mrn, &new.mrn)?,
        ssn_sealed: new
            .ssn
            .as_deref()
            .map(|s| sealer.seal_str(&at("ssn_sealed"), s.trim()))
            .transpose()?,
        ssn_index: new
            .ssn
            .as_deref()
            .map(|s| kr.blind_index(BlindKind::Ssn, s))
            .transpose()?,
        family_sealed: sealer.seal_str(&at("family_sealed"), new.family.trim())?,
        family_index: kr.blind_index(BlindKind::Family, &new.family)?,
        given_sealed: sealer.seal_str(&at("given_sealed"), new.given.trim())?,
        given_index: kr.blind_index(BlindKind::Given, &new.given)?,
        birth_date_sealed: sealer.seal_value(&at("birth_date_sealed"), &new.birth_date)?,
        birth_date_index: kr.blind_index(
            BlindKind::BirthDate,
            &new.birth_date.format("%Y-%m-%d").to_string(),
        )?,
        gender: new.gender.clone(),
        telecom_sealed: new
            .telecom
            .as_ref()
            .map(|v| sealer.seal_value(&at("telecom_sealed"), v))
            .transpose()?,
        address_sealed: new
            .address
            .as_ref()
            .map(|v| sealer.seal_value(&at("address_sealed"), v))
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
        if current != expected_version {
            return Err(AppError::client(
                actix_web::http::StatusCode::PRECONDITION_FAILED,
                "The resource was changed since that version.",
            ));
        }
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

// ---------------------------------------------------------------------------------------
// Document references (clinical notes)

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
                "document_references",
                "text_sealed",
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
                    .eq(sealer
                        .seal_str(&place("document_references", "text_sealed", id), &new.text)?),
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

// ---------------------------------------------------------------------------------------
// Observations

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
        const O: &str = "observations";
        Ok(Observation {
            code_display: open_opt(
                kr,
                O,
                "code_display_sealed",
                self.id,
                self.code_display_sealed.as_deref(),
            )?,
            value: open(kr, O, "value_sealed", self.id, &self.value_sealed)?,
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
            .map(|d| sealer.seal_str(&place("observations", "code_display_sealed", id), d))
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
                    .eq(sealer
                        .seal_value(&place("observations", "value_sealed", id), &new.value)?),
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
