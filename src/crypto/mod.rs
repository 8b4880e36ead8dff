//! Encryption at rest: the one place that seals and opens PHI field values.
//!
//! Key hierarchy:
//! - **KEK** (key-encryption key, `crypto.kek`) behind a [`KeyProvider`]; never touches data.
//! - **DEKs** (data-encryption keys): random AES-256 keys, versioned, stored only wrapped
//!   by the KEK in `data_keys`; unwrapped into memory at start-up by the [`Keyring`].
//! - **Blind-index key** (`crypto.blind_index_key`): HMAC-SHA256 key for equality search
//!   ([`blind`]); independent of the KEK and the DEKs.
//!
//! Every sealed value is AES-256-GCM with a fresh 96-bit nonce and associated data that
//! binds it to its [`FieldPlace`] (table, column, row id) and key version; see
//! [`envelope`] for the stored format. Any failure — wrong key, tampered bytes, a value
//! moved to another row or column, an unknown key version — is a [`CryptoError`], never
//! garbage and never a plaintext fallback.

pub mod blind;
pub mod columns;
pub mod config;
pub mod envelope;
pub mod keyring;
pub mod password;
pub mod provider;
pub mod pseudonym;
pub mod rotation;
pub mod sealable;

pub use blind::{BlindIndexKey, BlindKind, InfixError, PrefixError};
pub use envelope::DataKey;
pub use keyring::{Keyring, Sealer};
pub use provider::{KeyProvider, LocalKek};
pub use pseudonym::{ExportKey, Pseudonym};
pub use sealable::Sealable;

use crate::error::AppError;
use std::fmt;
use uuid::Uuid;

/// Where a sealed value lives. Part of the associated data of its ciphertext.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
/// Made only from a typed constant of [`columns`] (`columns::patients::MRN.at(row)`).
pub struct FieldPlace {
    pub(crate) table: &'static str,
    pub(crate) column: &'static str,
    pub(crate) row: Uuid,
}

/// Errors name the table, column and internal row id — never a value.
#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    #[error(
        "{table}.{column} of row {row}: authentication failed (wrong key, tampered value, or value moved from another row or column)"
    )]
    Authentication {
        table: &'static str,
        column: &'static str,
        row: Uuid,
    },
    #[error("{table}.{column} of row {row}: malformed sealed value ({problem})")]
    Malformed {
        table: &'static str,
        column: &'static str,
        row: Uuid,
        problem: &'static str,
    },
    #[error(
        "{table}.{column} of row {row}: sealed with unknown or retired data key version {version}"
    )]
    UnknownKeyVersion {
        table: &'static str,
        column: &'static str,
        row: Uuid,
        version: u32,
    },
    #[error("{table}.{column} of row {row}: decrypted value is not valid {expected}")]
    Decode {
        table: &'static str,
        column: &'static str,
        row: Uuid,
        expected: &'static str,
    },
    #[error("no active data key (the key store is empty or was not loaded)")]
    NoActiveKey,
    #[error("{setting}: {problem}")]
    Config {
        setting: &'static str,
        problem: String,
    },
    #[error("cannot unwrap a data key: wrong key-encryption key or tampered wrapped key")]
    Unwrap,
    #[error("invalid identifier: {0}")]
    InvalidIdentifier(&'static str),
    #[error("key store query failed")]
    Database(#[from] diesel::result::Error),
    #[error("internal crypto error: {0}")]
    Internal(&'static str),
}

impl From<CryptoError> for AppError {
    fn from(e: CryptoError) -> Self {
        match e {
            CryptoError::Database(db) => AppError::from(db),
            CryptoError::InvalidIdentifier(message) => AppError::unprocessable(message),
            // A stored value that does not open: the caller logged where (table, column,
            // row id); the client gets the fixed integrity message.
            e @ (CryptoError::Authentication { .. }
            | CryptoError::Malformed { .. }
            | CryptoError::UnknownKeyVersion { .. }
            | CryptoError::Decode { .. }) => AppError::Integrity(anyhow::Error::new(e)),
            // Logged in full (with the row id) by the error renderer; the client sees a
            // generic 500 and the request id.
            other => AppError::Internal(anyhow::Error::new(other)),
        }
    }
}

/// A decrypted PHI value. `Debug` and `Display` print `[redacted]`, so a domain struct
/// holding it can be logged without leaking; read it with [`Phi::expose`].
#[derive(Clone, PartialEq, Eq)]
pub struct Phi<T>(T);

impl<T> Phi<T> {
    pub fn new(value: T) -> Phi<T> {
        Phi(value)
    }
    pub fn expose(&self) -> &T {
        &self.0
    }
    pub fn into_inner(self) -> T {
        self.0
    }
}

impl<T> fmt::Debug for Phi<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl<T> fmt::Display for Phi<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

#[cfg(test)]
mod tests;
