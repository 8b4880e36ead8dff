//! The FHIR R4 API.

pub mod metadata;
pub mod types;

pub const FHIR_JSON: &str = "application/fhir+json";
