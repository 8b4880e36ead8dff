//! De-identification for exports (docs/export.md): HIPAA Safe Harbor rules as data
//! ([`rules`], shipped default `config/deid-rules.toml`), one engine that applies them to
//! every resource type ([`engine`]), the value transformations ([`safe_harbor`]) and the
//! k-anonymity report ([`kanon`]). Keyed pseudonyms are computed by
//! [`crate::crypto::pseudonym`] under the export key.

pub mod engine;
pub mod export;
pub mod kanon;
pub mod rules;
pub mod safe_harbor;

#[cfg(test)]
mod generated;
#[cfg(test)]
mod tests;

pub use engine::Deidentifier;
pub use export::DeidSet;
pub use kanon::{Classes, Report};
pub use rules::{Rules, RulesError};
