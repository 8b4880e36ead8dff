//! What every PHI repository shares: [`SEALED_COLUMNS`], the one list of sealed columns
//! (key rotation re-encrypts exactly these), and opening a sealed value through the
//! [`Keyring`] with its table, column and row as AAD.
//!
//! Each table has its own repository: [`crate::db::patients`] (with its view-shaped reads
//! in [`crate::db::patients::views`]), [`crate::db::observations`],
//! [`crate::db::documents`], [`crate::db::claims`], [`crate::db::facilities`]. The
//! re-exports below keep older call sites (seeding, the admin API, tests) compiling;
//! new code imports the table's module.
//!
//! [`SEALED_COLUMNS`] lists every sealed column of every table: key rotation re-encrypts
//! exactly these.

use crate::crypto::{FieldPlace, Keyring, Phi, Sealable};
use crate::error::AppError;
use uuid::Uuid;

/// The sealed columns of one table.
#[derive(Debug)]
pub struct SealedTable {
    pub table: &'static str,
    pub columns: &'static [&'static str],
}

/// Every table with a `key_version` column, and its sealed columns. The one list.
pub const SEALED_COLUMNS: &[SealedTable] = &[
    SealedTable {
        table: "patients",
        columns: &[
            "mrn_sealed",
            "ssn_sealed",
            "family_sealed",
            "given_sealed",
            "birth_date_sealed",
            "telecom_sealed",
            "address_sealed",
        ],
    },
    SealedTable {
        table: "observations",
        columns: &["code_display_sealed", "value_sealed"],
    },
    SealedTable {
        table: "document_references",
        columns: &["text_sealed"],
    },
    SealedTable {
        table: "claims",
        columns: &["provider_sealed", "total_sealed"],
    },
    SealedTable {
        table: "claim_items",
        columns: &["code_sealed", "amount_sealed"],
    },
    SealedTable {
        table: "console_totp",
        columns: &["secret_sealed"],
    },
];

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

pub(crate) fn open_opt<T: Sealable>(
    kr: &Keyring,
    table: &'static str,
    column: &'static str,
    row: Uuid,
    sealed: Option<&[u8]>,
) -> Result<Option<Phi<T>>, AppError> {
    sealed.map(|s| open(kr, table, column, row, s)).transpose()
}

pub use super::documents::{
    DocumentReference, NewDocumentReference, get_document_reference, insert_document_reference,
};
pub use super::facilities::insert_facility;
pub use super::observations::{NewObservation, Observation, get_observation, insert_observation};
pub use super::patients::{
    NewPatient, Patient, SealedPatient, find_patient_by_mrn, insert_patient, seal_patient,
    update_patient,
};
