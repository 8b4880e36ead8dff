//! `GET /fhir/metadata`: the public CapabilityStatement (no PHI).

use super::FHIR_JSON;
use actix_web::HttpResponse;

pub async fn capability_statement() -> HttpResponse {
    let body = serde_json::json!({
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": "2026-11-23",
        "kind": "instance",
        "software": { "name": "Custodian", "version": env!("CARGO_PKG_VERSION") },
        "fhirVersion": "4.0.1",
        "format": ["json"],
        "rest": [{ "mode": "server", "resource": [] }],
    });
    HttpResponse::Ok()
        .content_type(FHIR_JSON)
        .body(body.to_string())
}
