//! Where sealed values live: every table with a `key_version` column and its sealed
//! columns, in one list. Key rotation re-encrypts exactly these; the AAD of each value
//! binds it to its table, column and row.

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
