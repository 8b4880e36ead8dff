//! The kick-off's query parameters (Bulk Data Access IG v2, "Query Parameters"), checked
//! before anything is looked up. A bad parameter is a 400 with a fixed message that
//! never repeats the input.

use crate::error::AppError;
use crate::policy::ResourceType;
use crate::policy::export::Kind;
use chrono::{DateTime, Utc};

/// The output formats the IG names for NDJSON (all mean the same).
const NDJSON: &[&str] = &["application/fhir+ndjson", "application/ndjson", "ndjson"];

/// Largest k of the k-anonymity report a request may ask for.
pub const MAX_K: u32 = 1000;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExportRequest {
    /// `_type`: the resource types asked for (`None`: every type the caller may export).
    pub types: Option<Vec<ResourceType>>,
    /// `_since`: only resources updated at or after this instant.
    pub since: Option<DateTime<Utc>>,
    /// `kind`: identified or de-identified (`None`: the policy's default).
    pub kind: Option<Kind>,
    /// `k`: the class size the k-anonymity report measures against.
    pub k: Option<u32>,
    /// `suppress`: leave out the records of patients in classes smaller than k.
    pub suppress: bool,
}

fn bad(message: &'static str) -> AppError {
    AppError::bad_request(message)
}

/// Parses the query string of a kick-off.
pub fn parse(query: &str) -> Result<ExportRequest, AppError> {
    let mut r = ExportRequest::default();
    let mut seen: Vec<String> = Vec::new();
    for (name, value) in url::form_urlencoded::parse(query.as_bytes()) {
        if seen.iter().any(|s| *s == name) {
            return Err(bad("Each export parameter may be given once."));
        }
        seen.push(name.to_string());
        match name.as_ref() {
            "_outputFormat" => {
                if !NDJSON.contains(&value.as_ref()) {
                    return Err(bad(
                        "_outputFormat: this server writes application/fhir+ndjson only.",
                    ));
                }
            }
            "_type" => {
                let mut types = Vec::new();
                for t in value.split(',').map(str::trim) {
                    let Some(t) = ResourceType::parse(t) else {
                        return Err(bad(
                            "_type: a comma-separated list of Patient, Observation, DocumentReference, Claim.",
                        ));
                    };
                    if !types.contains(&t) {
                        types.push(t);
                    }
                }
                r.types = Some(types);
            }
            "_since" => {
                let at = DateTime::parse_from_rfc3339(&value)
                    .map_err(|_| bad("_since: must be a FHIR instant with a time zone."))?;
                r.since = Some(at.with_timezone(&Utc));
            }
            "kind" => {
                r.kind = Some(match value.as_ref() {
                    "identified" => Kind::Identified,
                    "de-identified" | "deidentified" => Kind::Deidentified,
                    _ => return Err(bad("kind: identified or de-identified.")),
                });
            }
            "k" => {
                let k = value
                    .parse::<u32>()
                    .ok()
                    .filter(|k| (1..=MAX_K).contains(k))
                    .ok_or_else(|| bad("k: a whole number from 1 to 1000."))?;
                r.k = Some(k);
            }
            "suppress" => {
                r.suppress = match value.as_ref() {
                    "true" => true,
                    "false" => false,
                    _ => return Err(bad("suppress: true or false.")),
                };
            }
            "_elements"
            | "_typeFilter"
            | "patient"
            | "includeAssociatedData"
            | "organizeOutputBy"
            | "allowPartialManifests" => {
                return Err(bad(
                    "This server does not support that export parameter: see docs/export.md.",
                ));
            }
            _ => {
                return Err(bad(
                    "Unknown export parameter: this server takes _outputFormat, _type, _since, kind, k and suppress.",
                ));
            }
        }
    }
    if r.kind == Some(Kind::Identified) && (r.k.is_some() || r.suppress) {
        return Err(bad("k and suppress apply to de-identified exports only."));
    }
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters_are_parsed_and_bad_ones_refused_without_echo() {
        let r = parse("_type=Observation,Patient&_since=2026-01-01T00:00:00Z&_outputFormat=application%2Ffhir%2Bndjson&k=3&suppress=true").unwrap();
        assert_eq!(
            r.types,
            Some(vec![ResourceType::Observation, ResourceType::Patient])
        );
        assert_eq!(r.k, Some(3));
        assert!(r.suppress);
        assert!(r.since.is_some());
        assert_eq!(parse("").unwrap(), ExportRequest::default());
        for q in [
            "_outputFormat=text/csv",
            "_type=Secret-Smith",
            "_since=yesterday",
            "kind=everything",
            "k=0",
            "k=1001",
            "suppress=maybe",
            "_typeFilter=Observation%3Fcode%3D1",
            "name=Smith",
            "_type=Patient&_type=Claim",
            "kind=identified&k=3",
        ] {
            let err = parse(q).unwrap_err().to_string();
            assert!(!err.contains("Smith") && !err.contains("csv"), "{q}: {err}");
        }
    }
}
