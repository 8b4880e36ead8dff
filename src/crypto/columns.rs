//! Where sealed values live. Every sealed column is a typed constant here, and a
//! [`FieldPlace`] (the AAD that binds a value to its table, column and row) is made from
//! one of them — a misspelt column is a compile error, not unreadable data. Key rotation
//! re-encrypts exactly the tables and columns of [`SEALED_COLUMNS`], which is built from
//! the same constants; a test checks them against the database schema.

use super::FieldPlace;
use crate::domain::UserId;
use std::fmt;
use uuid::Uuid;

/// One sealed column of one table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SealedColumn {
    pub table: &'static str,
    pub column: &'static str,
}

impl SealedColumn {
    /// The place of this column's value in row `row`.
    pub const fn at(self, row: Uuid) -> FieldPlace {
        FieldPlace {
            table: self.table,
            column: self.column,
            row,
        }
    }
}

/// Prints the column name (for SQL built from the constants).
impl fmt::Display for SealedColumn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.column)
    }
}

/// The sealed columns of one table.
#[derive(Debug)]
pub struct SealedTable {
    pub table: &'static str,
    pub columns: &'static [SealedColumn],
}

macro_rules! sealed_tables {
    ($( $(#[$doc:meta])* $module:ident = $table:literal { $( $name:ident = $column:literal ),* $(,)? } )*) => {
        $(
            $(#[$doc])*
            pub mod $module {
                use super::{SealedColumn, SealedTable};
                $( pub const $name: SealedColumn = SealedColumn { table: $table, column: $column }; )*
                pub const TABLE: SealedTable = SealedTable { table: $table, columns: &[$($name),*] };
            }
        )*
        /// Every table with a `key_version` column, and its sealed columns. The one list.
        pub const SEALED_COLUMNS: &[SealedTable] = &[$($module::TABLE),*];
    };
}

sealed_tables! {
    patients = "patients" {
        MRN = "mrn_sealed",
        SSN = "ssn_sealed",
        FAMILY = "family_sealed",
        GIVEN = "given_sealed",
        BIRTH_DATE = "birth_date_sealed",
        TELECOM = "telecom_sealed",
        ADDRESS = "address_sealed",
    }
    observations = "observations" {
        CODE_DISPLAY = "code_display_sealed",
        VALUE = "value_sealed",
    }
    document_references = "document_references" {
        TEXT = "text_sealed",
    }
    claims = "claims" {
        PROVIDER = "provider_sealed",
        TOTAL = "total_sealed",
    }
    claim_items = "claim_items" {
        CODE = "code_sealed",
        AMOUNT = "amount_sealed",
    }
    console_totp = "console_totp" {
        SECRET = "secret_sealed",
    }
    /// A break-glass request's justification (workforce free text about a patient).
    break_glass_grants = "break_glass_grants" {
        JUSTIFICATION = "justification_sealed",
    }
    /// A privacy officer's review notes on a grant.
    break_glass_reviews = "break_glass_reviews" {
        NOTES = "notes_sealed",
    }
    /// A webhook endpoint's signing secret (`db::webhooks`).
    webhook_endpoints = "webhook_endpoints" {
        SECRET = "secret_sealed",
    }
    /// Why a privacy officer re-identified an export pseudonym (`db::reidentifications`).
    reidentifications = "reidentifications" {
        JUSTIFICATION = "justification_sealed",
    }
    /// Every version of a FHIR resource, its JSON sealed whole (`db::history`).
    resource_history = "resource_history" {
        BODY = "body_sealed",
    }
    /// A privacy officer's notes in a case's history (`db::cases`).
    privacy_case_events = "privacy_case_events" {
        NOTE = "note_sealed",
    }
    /// Why alerts about a person and a patient are suppressed (`db::suppressions`).
    alert_suppressions = "alert_suppressions" {
        REASON = "reason_sealed",
    }
}

/// The place of a search cursor: sealed for the user it was issued to, bound to the
/// resource type it pages over. Not stored in a table, so not in [`SEALED_COLUMNS`].
pub fn cursor(resource: &'static str, user: UserId) -> FieldPlace {
    FieldPlace {
        table: "cursor",
        column: resource,
        row: user.as_uuid(),
    }
}

/// The place of one line of an identified export file: bound to the job, the resource
/// type and the line's number, so a line moved within or between files does not open.
/// Not stored in a table (the file is), so not in [`SEALED_COLUMNS`].
pub fn export_line(resource: &'static str, job: Uuid, line: u64) -> FieldPlace {
    FieldPlace {
        table: "export_file",
        column: resource,
        row: Uuid::from_u128(job.as_u128() ^ u128::from(line)),
    }
}

/// The place of a download link of an export file: sealed for the requester, so that
/// nobody else's link opens (and nobody else learns what it names).
pub fn export_link(user: UserId) -> FieldPlace {
    FieldPlace {
        table: "export_link",
        column: "file",
        row: user.as_uuid(),
    }
}
