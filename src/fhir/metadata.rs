//! `GET /fhir/metadata`: the public CapabilityStatement (no PHI), built from the resource
//! descriptors ([`super::resource`]) that the search handlers accept parameters from and
//! that a test holds equal to the route table.

use super::config::FhirSettings;
use super::{FHIR_JSON, resource};
use crate::error::AppError;
use crate::policy::{Interaction, ResourceType};
use actix_web::{HttpRequest, HttpResponse, web};
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

/// What each search parameter accepts, stated where a client reads it.
fn param_doc(resource: ResourceType, name: &str, kind: &str) -> Option<&'static str> {
    match (resource, name, kind) {
        (ResourceType::Patient, "birthdate", _) => Some(
            "An exact day YYYY-MM-DD (the eq prefix is accepted): birth dates are sealed and matched through a blind index.",
        ),
        (ResourceType::Patient, _, "string") => Some(
            "Starts-with (3 to 40 characters; a shorter value is a 400) at the start of the name or of any word in it, case- and whitespace-insensitive; :exact matches the whole name (case- and whitespace-insensitive); :contains matches 3 to 40 characters anywhere within one word of the name (case-insensitive; a shorter value or one spanning a space is a 400). Comma-separated values are an OR. Names are sealed and matched through blind indexes of their prefixes and word substrings.",
        ),
        (ResourceType::Patient, "identifier", _) => {
            Some("urn:custodian:mrn|<MRN>, http://hl7.org/fhir/sid/us-ssn|<SSN> or a bare MRN.")
        }
        (_, _, "date") => Some(
            "Prefixes eq (default), ne, gt, lt, ge, le, sa, eb, ap; a value is YYYY, YYYY-MM, YYYY-MM-DD (UTC) or an RFC 3339 date-time; comma-separated values are an OR; the parameter may be repeated (AND).",
        ),
        (_, _, "token") => Some("system|code or a bare code; comma-separated values are an OR."),
        (_, _, "reference") => Some("Patient/<id> or a bare id."),
        (_, "_sort", _) => Some(
            "One sort key, or two different ones comma-separated (date,-_lastUpdated), '-' for descending: _lastUpdated on every type, date on Observation (ties by id; paging by the next link stays in that order). Sealed fields (names, birth dates, identifiers) cannot be sorted: a 400.",
        ),
        (_, "_count", _) => Some(
            "Page size, 1 to 100 (default 20); further pages follow the next link (its _cursor is opaque). _total=accurate adds Bundle.total, _summary=count answers the total alone.",
        ),
        _ => None,
    }
}

/// The `rest[0].resource` list, from the resource descriptors.
pub fn resources(settings: &FhirSettings) -> Vec<Value> {
    let mut list = records(settings);
    list.push(super::audit_event::capability());
    list
}

/// The record types' entries, from their descriptors.
fn records(settings: &FhirSettings) -> Vec<Value> {
    resource::ALL
        .iter()
        .map(|d| {
            let mut interactions: Vec<Value> = Interaction::ALL
                .into_iter()
                .filter(|i| d.interactions.contains(i))
                .map(|i| json!({ "code": interaction_code(i) }))
                .collect();
            if d.interactions.contains(&Interaction::Update) {
                // JSON Patch, served with the update interaction.
                interactions.push(json!({ "code": "patch" }));
            }
            let reads = d.interactions.contains(&Interaction::Read);
            if reads {
                // Served by the read interaction's routes (`…/_history`, `…/_history/{vid}`).
                interactions.push(json!({ "code": "vread" }));
                interactions.push(json!({ "code": "history-instance" }));
            }
            let params: Vec<Value> = d
                .search
                .iter()
                .map(|p| {
                    let mut param = json!({ "name": p.name, "type": p.kind });
                    if let Some(doc) = param_doc(d.kind, p.name, p.kind) {
                        param["documentation"] = json!(doc);
                    }
                    param
                })
                .collect();
            let mut out = json!({
                "type": d.kind.as_str(),
                "interaction": interactions,
                // With `fhir.require_if_match` an update must name the version it replaces.
                "versioning": if settings.require_if_match { "versioned-update" } else { "versioned" },
                "readHistory": reads,
                "updateCreate": false,
                "conditionalCreate": d.interactions.contains(&Interaction::Create),
                "conditionalUpdate": false,
                "conditionalDelete": "not-supported",
            });
            if !params.is_empty() {
                out["searchParam"] = Value::Array(params);
            }
            let mut operations = Vec::new();
            if d.everything_path.is_some() {
                operations.push(json!({
                    "name": "everything",
                    "definition": "http://hl7.org/fhir/OperationDefinition/Patient-everything",
                }));
            }
            if d.kind == ResourceType::Patient {
                operations.extend(break_glass_operations(settings));
            }
            if !operations.is_empty() {
                out["operation"] = Value::Array(operations);
            }
            if !d.includes.is_empty() {
                out["searchInclude"] = json!(d.includes);
            }
            if !d.revincludes.is_empty() {
                out["searchRevInclude"] = json!(d.revincludes);
            }
            out
        })
        .collect()
}

/// The break-glass operations on Patient, from their one description (the route table
/// registers the same): one entry per operation name, its documentation the methods
/// that answer it. The definitions are this server's own canonical URLs.
fn break_glass_operations(settings: &FhirSettings) -> Vec<Value> {
    let mut out: Vec<(&str, Vec<&str>)> = Vec::new();
    for op in crate::policy::break_glass::Operation::ALL {
        match out.iter_mut().find(|(name, _)| *name == op.name()) {
            Some((_, docs)) => docs.push(op.documentation()),
            None => out.push((op.name(), vec![op.documentation()])),
        }
    }
    out.into_iter()
        .map(|(name, docs)| {
            json!({
                "name": name,
                "definition": format!("{}/OperationDefinition/Patient-{name}", settings.base.trim_end_matches('/')),
                "documentation": docs.join(" "),
            })
        })
        .collect()
}

/// `rest.security`: OAuth bearer tokens; with a SMART configuration (the provider allows
/// a SMART launch, [`super::smart`]) also the `SMART-on-FHIR` service and the OAuth URIs
/// extension, taken from the same document as `/.well-known/smart-configuration`.
fn security(settings: &FhirSettings, smart: Option<&Value>) -> Value {
    let system = "http://terminology.hl7.org/CodeSystem/restful-security-service";
    let mut codings = vec![json!({ "system": system, "code": "OAuth" })];
    let mut out = json!({
        "cors": settings.cors,
        "description": "Bearer JWT access tokens from the hospital's OpenID provider, with SMART App Launch v2 scopes; services may use client certificates.",
    });
    if let Some(smart) = smart {
        codings.push(json!({ "system": system, "code": "SMART-on-FHIR" }));
        out["extension"] = json!([{
            "url": "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris",
            "extension": [
                { "url": "authorize", "valueUri": smart["authorization_endpoint"] },
                { "url": "token", "valueUri": smart["token_endpoint"] },
            ],
        }]);
    }
    out["service"] = json!([{ "coding": codings }]);
    out
}

/// The CapabilityStatement: public, no PHI; its `implementation.url` is the absolute base
/// every other URL of the API starts with.
pub fn statement(settings: &FhirSettings, smart: Option<&Value>) -> Value {
    json!({
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": "2026-11-23",
        "kind": "instance",
        "software": { "name": "Custodian", "version": env!("CARGO_PKG_VERSION") },
        "implementation": { "description": "Custodian PHI API", "url": settings.base },
        "fhirVersion": "4.0.1",
        "format": ["json", "application/fhir+json"],
        "rest": [{
            "mode": "server",
            "security": security(settings, smart),
            "resource": resources(settings),
        }],
    })
}

pub async fn capability_statement(
    req: HttpRequest,
    state: web::Data<crate::state::AppState>,
    settings: web::Data<FhirSettings>,
) -> Result<HttpResponse, AppError> {
    super::negotiate(&req)?;
    for (k, v) in url::form_urlencoded::parse(req.query_string().as_bytes()) {
        if k == "_format" {
            super::check_format(&v)?;
        }
    }
    // The provider being unreachable does not take the CapabilityStatement down: it then
    // claims no SMART launch.
    let smart = super::smart::current(&state).await.ok().flatten();
    Ok(HttpResponse::Ok()
        .content_type(FHIR_JSON)
        .body(statement(&settings, smart.as_ref()).to_string()))
}
