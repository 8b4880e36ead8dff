//! The FHIR R4 API.

pub mod access_report;
pub mod audit_event;
pub mod break_glass;
pub mod bundle;
pub mod claim;
pub mod config;
pub mod document_reference;
pub mod elements;
pub mod metadata;
pub mod observation;
pub mod params;
pub mod patch;
pub mod patient;
pub mod resource;
pub mod smart;
pub mod types;

use crate::error::AppError;
use actix_web::HttpRequest;
use actix_web::http::StatusCode;
use actix_web::http::header::{ETAG, HeaderName, HeaderValue, IF_MATCH};

pub const FHIR_JSON: &str = "application/fhir+json";

/// The weak ETag of a resource version, `W/"3"`.
pub fn etag(version: i32) -> (HeaderName, HeaderValue) {
    let value = HeaderValue::from_str(&format!("W/\"{version}\""))
        .unwrap_or(HeaderValue::from_static("W/\"0\""));
    (ETAG, value)
}

/// The version an update expects (`If-Match: W/"3"`): honoured whenever sent (a stale
/// one is a 412); required (428 without) only when `fhir.require_if_match` says so.
pub fn if_match(req: &HttpRequest, required: bool) -> Result<Option<i32>, AppError> {
    let Some(value) = req.headers().get(IF_MATCH) else {
        if required {
            return Err(AppError::client(
                StatusCode::PRECONDITION_REQUIRED,
                "Updates need an If-Match header with the ETag of the version you read.",
            ));
        }
        return Ok(None);
    };
    value
        .to_str()
        .ok()
        .map(|v| v.trim().trim_start_matches("W/").trim_matches('"'))
        .and_then(|v| v.parse::<i32>().ok())
        .map(Some)
        .ok_or_else(|| {
            AppError::client(
                StatusCode::BAD_REQUEST,
                "Invalid header 'If-Match': must be an ETag such as W/\"1\".",
            )
        })
}

/// What the `Prefer` header asks for (RFC 7240, FHIR R4 3.1.0.1.8 and 3.1.1.5.9).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Prefer {
    /// `return=minimal`: a write answers without a body.
    pub minimal: bool,
    /// `handling=lenient`: a search ignores parameters it does not know (strict by
    /// default: they are a 422).
    pub lenient: bool,
}

impl Prefer {
    pub fn of(req: &HttpRequest) -> Prefer {
        let mut prefer = Prefer::default();
        for value in req.headers().get_all("prefer") {
            let Ok(text) = value.to_str() else { continue };
            for token in text.split([',', ';']) {
                match token.trim().replace(' ', "").to_ascii_lowercase().as_str() {
                    "return=minimal" => prefer.minimal = true,
                    "return=representation" => prefer.minimal = false,
                    "handling=lenient" => prefer.lenient = true,
                    "handling=strict" => prefer.lenient = false,
                    _ => {}
                }
            }
        }
        prefer
    }
}

/// Content negotiation: we answer FHIR R4 JSON only. An `Accept` that admits no JSON
/// (e.g. `application/fhir+xml`) or names another `fhirVersion` is a 406; `_format`
/// (checked by [`params::search_params`]) may name JSON only.
pub fn negotiate(req: &HttpRequest) -> Result<(), AppError> {
    let refuse = || {
        AppError::client(
            StatusCode::NOT_ACCEPTABLE,
            "This server answers FHIR R4 (4.0) JSON only: ask for application/fhir+json.",
        )
    };
    let mut any = false;
    let mut json = false;
    for value in req.headers().get_all(actix_web::http::header::ACCEPT) {
        let text = value.to_str().map_err(|_| refuse())?;
        for range in text.split(',') {
            let mut parts = range.split(';').map(str::trim);
            let media = parts.next().unwrap_or_default().to_ascii_lowercase();
            if media.is_empty() {
                continue;
            }
            any = true;
            let mut version_ok = true;
            let mut q_zero = false;
            for p in parts {
                let Some((k, v)) = p.split_once('=') else {
                    continue;
                };
                let v = v.trim().trim_matches('"');
                match k.trim().to_ascii_lowercase().as_str() {
                    "fhirversion" => version_ok = v == "4.0" || v.starts_with("4.0."),
                    "q" => q_zero = v.parse::<f32>().is_ok_and(|q| q == 0.0),
                    _ => {}
                }
            }
            let is_json = matches!(
                media.as_str(),
                "application/fhir+json" | "application/json" | "application/*" | "*/*"
            );
            if is_json && version_ok && !q_zero {
                json = true;
            }
        }
    }
    if any && !json { Err(refuse()) } else { Ok(()) }
}

/// `_format` may name JSON (any of its FHIR spellings); anything else is a 406.
pub fn check_format(value: &str) -> Result<(), AppError> {
    match value {
        "json" | "application/json" | "application/fhir+json" => Ok(()),
        _ => Err(AppError::client(
            StatusCode::NOT_ACCEPTABLE,
            "This server answers FHIR R4 (4.0) JSON only: _format may be json.",
        )),
    }
}

/// A permit for a single-view resource must carry that resource's whole view; any other
/// view is a defect in the matrix, answered 500 (nothing is fetched).
pub fn whole_view(
    resource: crate::policy::ResourceType,
    view: crate::policy::View,
) -> Result<(), AppError> {
    if crate::policy::views::is_whole_view(resource, view) {
        Ok(())
    } else {
        Err(AppError::internal("permit with a foreign view"))
    }
}
