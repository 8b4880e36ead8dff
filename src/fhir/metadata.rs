//! `GET /fhir/metadata`: the public CapabilityStatement (no PHI). The interactions are
//! read from the route table, so the statement cannot drift from what is served; the
//! search parameters are listed here next to the handlers that accept them.

use super::FHIR_JSON;
use crate::policy::{Action, Interaction, ResourceType};
use actix_web::HttpResponse;
use serde_json::{Value, json};

/// The search parameters each resource accepts: (name, FHIR search parameter type).
pub fn search_params(resource: ResourceType) -> &'static [(&'static str, &'static str)] {
    match resource {
        ResourceType::Patient => &[
            ("family", "string"),
            ("given", "string"),
            ("birthdate", "date"),
            ("identifier", "token"),
            ("_count", "number"),
            ("_elements", "special"),
        ],
        ResourceType::Observation => &[
            ("patient", "reference"),
            ("subject", "reference"),
            ("code", "token"),
            ("date", "date"),
            ("_count", "number"),
            ("_elements", "special"),
        ],
        ResourceType::DocumentReference => &[
            ("patient", "reference"),
            ("subject", "reference"),
            ("_count", "number"),
            ("_elements", "special"),
        ],
        ResourceType::Claim => &[
            ("patient", "reference"),
            ("status", "token"),
            ("_count", "number"),
            ("_elements", "special"),
        ],
    }
}

fn interaction_code(i: Interaction) -> &'static str {
    match i {
        Interaction::Read => "read",
        Interaction::Search => "search-type",
        Interaction::Create => "create",
        Interaction::Update => "update",
        Interaction::Delete => "delete",
    }
}

/// The `rest[0].resource` list, from the route table.
pub fn resources() -> Vec<Value> {
    let routes = crate::app::routes::table();
    ResourceType::ALL
        .into_iter()
        .filter_map(|resource| {
            let interactions: Vec<Value> = Interaction::ALL
                .into_iter()
                .filter(|i| {
                    routes
                        .iter()
                        .any(|r| r.action == Action::Fhir(resource, *i))
                })
                .map(|i| json!({ "code": interaction_code(i) }))
                .collect();
            if interactions.is_empty() {
                return None;
            }
            let params: Vec<Value> = search_params(resource)
                .iter()
                .map(|(name, kind)| json!({ "name": name, "type": kind }))
                .collect();
            Some(json!({
                "type": resource.as_str(),
                "interaction": interactions,
                "versioning": "versioned",
                "readHistory": false,
                "updateCreate": false,
                "conditionalCreate": false,
                "conditionalUpdate": false,
                "conditionalDelete": "not-supported",
                "searchParam": params,
            }))
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
