//! What every PHI repository shares: opening a sealed value through the
//! [`Keyring`] with its table, column and row as AAD. The sealed columns themselves are typed
//! constants in [`crate::crypto::columns`].
//!
//! Each table has its own repository: [`crate::db::patients`] (with its view-shaped reads
//! in [`crate::db::patients::views`]), [`crate::db::observations`],
//! [`crate::db::documents`], [`crate::db::claims`], [`crate::db::facilities`]; the records
//! of a patient share their mechanics in [`crate::db::records`]. The re-exports and the
//! insert/get functions below keep older call sites (seeding, the admin API, tests)
//! compiling; new code imports the table's module and [`crate::db::records`].

use crate::crypto::columns::SealedColumn;
use crate::crypto::{Keyring, Phi, Sealable};
use crate::error::AppError;
use uuid::Uuid;

pub(crate) fn open<T: Sealable>(
    kr: &Keyring,
    column: SealedColumn,
    row: Uuid,
    sealed: &[u8],
) -> Result<Phi<T>, AppError> {
    let SealedColumn {
        table,
        column: name,
    } = column;
    kr.open_value::<T>(&column.at(row), sealed)
        .map(Phi::new)
        .map_err(|e| {
            tracing::error!(table, column = name, row = %row, error = %e, "cannot open a sealed value");
            AppError::from(e)
        })
}

pub(crate) fn open_opt<T: Sealable>(
    kr: &Keyring,
    column: SealedColumn,
    row: Uuid,
    sealed: Option<&[u8]>,
) -> Result<Option<Phi<T>>, AppError> {
    sealed.map(|s| open(kr, column, row, s)).transpose()
}

pub use super::documents::{DocumentReference, NewDocumentReference};
pub use super::facilities::insert_facility;
pub use super::observations::{NewObservation, Observation};
pub use super::patients::{
    NewPatient, Patient, SealedPatient, find_patient_by_mrn, insert_patient, seal_patient,
    update_patient,
};

use super::documents::DocumentTable;
use super::observations::ObservationTable;
use super::records;
use crate::domain::RecordId;
use diesel::PgConnection;

pub fn insert_observation(
    conn: &mut PgConnection,
    kr: &Keyring,
    new: &NewObservation,
) -> Result<Observation, AppError> {
    records::insert::<ObservationTable>(conn, kr, new)
}

pub fn get_observation(
    conn: &mut PgConnection,
    kr: &Keyring,
    id: Uuid,
) -> Result<Option<Observation>, AppError> {
    records::get::<ObservationTable>(conn, kr, RecordId(id), ())
}

pub fn insert_document_reference(
    conn: &mut PgConnection,
    kr: &Keyring,
    new: &NewDocumentReference,
) -> Result<DocumentReference, AppError> {
    records::insert::<DocumentTable>(conn, kr, new)
}

pub fn get_document_reference(
    conn: &mut PgConnection,
    kr: &Keyring,
    id: Uuid,
) -> Result<Option<DocumentReference>, AppError> {
    records::get::<DocumentTable>(conn, kr, RecordId(id), ())
}
