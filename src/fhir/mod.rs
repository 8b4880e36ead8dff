//! The FHIR R4 API.

pub mod access_report;
pub mod bundle;
pub mod claim;
pub mod document_reference;
pub mod elements;
pub mod metadata;
pub mod observation;
pub mod params;
pub mod patient;
pub mod resource;
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

/// The version an update expects (`If-Match: W/"3"`): required, so that no update
/// silently overwrites another.
pub fn if_match(req: &HttpRequest) -> Result<i32, AppError> {
    let Some(value) = req.headers().get(IF_MATCH) else {
        return Err(AppError::client(
            StatusCode::PRECONDITION_REQUIRED,
            "Updates need an If-Match header with the ETag of the version you read.",
        ));
    };
    value
        .to_str()
        .ok()
        .map(|v| v.trim().trim_start_matches("W/").trim_matches('"'))
        .and_then(|v| v.parse::<i32>().ok())
        .ok_or_else(|| {
            AppError::client(
                StatusCode::BAD_REQUEST,
                "Invalid header 'If-Match': must be an ETag such as W/\"1\".",
            )
        })
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
