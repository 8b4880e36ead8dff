//! `GET /fhir/metadata`: the public CapabilityStatement (no PHI), built from the resource
//! descriptors ([`super::resource`]) that the search handlers accept parameters from and
//! that a test holds equal to the route table.

use super::FHIR_JSON;
use super::resource;
use crate::policy::Interaction;
use actix_web::HttpResponse;
use serde_json::{Value, json};

fn interaction_code(i: Interaction) -> &'static str {
    match i {
        Interaction::Read => "read",
        Interaction::Search => "search-type",
        Interaction::Create => "create",
        Interaction::Update => "update",
        Interaction::Delete => "delete",
    }
}

/// The `rest[0].resource` list, from the resource descriptors.
pub fn resources() -> Vec<Value> {
    resource::ALL
        .iter()
        .map(|d| {
            let interactions: Vec<Value> = Interaction::ALL
                .into_iter()
                .filter(|i| d.interactions.contains(i))
                .map(|i| json!({ "code": interaction_code(i) }))
                .collect();
            let params: Vec<Value> = d
                .search
                .iter()
                .map(|p| json!({ "name": p.name, "type": p.kind }))
                .collect();
            json!({
                "type": d.kind.as_str(),
                "interaction": interactions,
                "versioning": "versioned",
                "readHistory": false,
                "updateCreate": false,
                "conditionalCreate": false,
                "conditionalUpdate": false,
                "conditionalDelete": "not-supported",
                "searchParam": params,
            })
        })
        .collect()
}

pub async fn capability_statement() -> HttpResponse {
    let body = serde_json::json!({
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": "2026-11-23",
        "kind": "instance",
        "software": { "name": "Custodian", "version": env!("CARGO_PKG_VERSION") },
        "fhirVersion": "4.0.1",
        "format": ["json"],
        "rest": [{
            "mode": "server",
            "security": {
                "cors": false,
                "service": [{ "coding": [{
                    "system": "http://terminology.hl7.org/CodeSystem/restful-security-service",
                    "code": "SMART-on-FHIR"
                }] }]
            },
            "resource": resources(),
        }],
    });
    HttpResponse::Ok()
        .content_type(FHIR_JSON)
        .body(body.to_string())
}
