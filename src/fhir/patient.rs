//! FHIR `Patient`: read, search, create and version-checked update. Every handler asks
//! the decision point, fetches only the fields of the permitted view, and commits its
//! audit event before the response leaves.

use super::bundle::{self, Cursor};
use super::elements::Elements;
use super::params;
use super::types::{self, Gender, Mrn, Ssn, bounded_len, bounded_text, invalid};
use super::{FHIR_JSON, etag, if_match};
use crate::access::{Credentials, Pipeline};
use crate::audit::AuditEvent;
use crate::db::patient_views::{self, Criteria, PatientFields, PatientView};
use crate::db::{phi, users};
use crate::error::AppError;
use crate::policy::{PatientFacts, ResourceType, Target, View};
use crate::state::AppState;
use crate::web::json::JsonBody;
use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use serde::Deserialize;
use serde_json::{Value, json};
use uuid::Uuid;

pub const MRN_SYSTEM: &str = "urn:custodian:mrn";
pub const SSN_SYSTEM: &str = "http://hl7.org/fhir/sid/us-ssn";
const R: ResourceType = ResourceType::Patient;

/// The fields each view may see ([`crate::policy::views`]).
pub use crate::policy::views::patient_fields as view_fields;

/// The fields `_elements` asks for (all without it): intersected with the view's fields,
/// so that what is not returned is not fetched either.
fn requested_fields(e: &Elements) -> PatientFields {
    PatientFields {
        mrn: e.wants("identifier"),
        ssn: e.wants("identifier"),
        name: e.wants("name"),
        birth_date: e.wants("birthDate"),
        gender: e.wants("gender"),
        telecom: e.wants("telecom"),
        address: e.wants("address"),
    }
}

/// The FHIR JSON of a patient shaped to its view.
pub fn to_fhir(p: &PatientView) -> Value {
    let mut out = json!({
        "resourceType": "Patient",
        "id": p.id,
        "meta": { "versionId": p.version.to_string(), "lastUpdated": p.updated_at.to_rfc3339() },
        "managingOrganization": { "reference": format!("Organization/{}", p.facility_id) },
    });
    let mut identifier = Vec::new();
    if let Some(mrn) = &p.mrn {
        identifier.push(json!({ "system": MRN_SYSTEM, "value": mrn.expose() }));
    }
    if let Some(ssn) = &p.ssn {
        identifier.push(json!({ "system": SSN_SYSTEM, "value": ssn.expose() }));
    }
    if !identifier.is_empty() {
        out["identifier"] = Value::Array(identifier);
    }
    if let (Some(family), Some(given)) = (&p.family, &p.given) {
        let given: Vec<&str> = given.expose().split_whitespace().collect();
        out["name"] = json!([{ "family": family.expose(), "given": given }]);
    }
    if let Some(g) = &p.gender {
        out["gender"] = json!(g);
    }
    if let Some(d) = &p.birth_date {
        out["birthDate"] = json!(d.expose().format("%Y-%m-%d").to_string());
    }
    if let Some(t) = &p.telecom {
        out["telecom"] = t.expose().clone();
    }
    if let Some(a) = &p.address {
        out["address"] = a.expose().clone();
    }
    out
}

fn fhir_json(status: StatusCode) -> actix_web::HttpResponseBuilder {
    let mut res = HttpResponse::build(status);
    res.content_type(FHIR_JSON);
    res
}

/// The response for one patient shaped to `fields` (`Location` on a create).
fn respond(status: StatusCode, patient: &PatientView, elements: &Elements) -> HttpResponse {
    let mut res = fhir_json(status);
    res.insert_header(etag(patient.version));
    if status == StatusCode::CREATED {
        res.insert_header((
            "Location",
            format!("/fhir/Patient/{}/_history/{}", patient.id, patient.version),
        ));
    }
    res.body(elements.apply(to_fhir(patient)).to_string())
}

/// One blocking hop: the principal's user and roles, the patient's policy facts, the
/// decision, and only then the view's columns (decrypted), cut to `_elements`.
pub async fn read(
    req: HttpRequest,
    credentials: Credentials,
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, AppError> {
    let id = params::parse_id(&path);
    let elements = params::read_elements(&req, R);
    let kr = state.keyring.clone();
    let get = move |c: &mut diesel::PgConnection, view: View, id: Uuid, e: &Elements| {
        let fields = view_fields(view).intersect(requested_fields(e));
        Ok(patient_views::read(c, &kr, id, fields)?.map(|p| (p.id, p)))
    };
    let (_, patient, elements) = credentials.read_one(id, elements, itself, get).await?;
    Ok(respond(StatusCode::OK, &patient, &elements))
}

fn search_criteria(q: &[(&'static str, String)]) -> Result<Criteria, AppError> {
    let mut c = Criteria::default();
    if let Some(f) = params::single(q, "family")? {
        c.family = Some(bounded_text("family", f, 100)?);
    }
    if let Some(g) = params::single(q, "given")? {
        c.given = Some(bounded_text("given", g, 100)?);
    }
    if let Some(d) = params::single(q, "birthdate")? {
        c.birth_date = Some(
            types::birth_date(d).map_err(|_| invalid("birthdate", "must be a date YYYY-MM-DD"))?,
        );
    }
    if let Some(ident) = params::single(q, "identifier")? {
        // `system|value` or a bare value (taken as an MRN).
        let (system, value) = ident.split_once('|').unwrap_or((MRN_SYSTEM, ident));
        match system {
            MRN_SYSTEM => {
                c.mrn = Some(
                    Mrn::parse(value)
                        .map_err(|_| invalid("identifier", "is not a valid MRN"))?
                        .as_str()
                        .to_string(),
                )
            }
            SSN_SYSTEM => {
                c.ssn = Some(
                    Ssn::parse(value)
                        .map_err(|_| invalid("identifier", "is not a valid SSN"))?
                        .as_str()
                        .to_string(),
                )
            }
            _ => {
                return Err(invalid(
                    "identifier",
                    "system must be the MRN or SSN system",
                ));
            }
        }
    }
    Ok(c)
}

pub async fn search(
    req: HttpRequest,
    pipeline: Pipeline,
    state: web::Data<AppState>,
) -> Result<HttpResponse, AppError> {
    let q = params::search_params(&req, &super::resource::of(pipeline.resource()?).accepted())?;
    let criteria = search_criteria(&q)?;
    let count = bundle::page_size(params::single(&q, "_count")?)?;
    let elements = Elements::parse(R, params::single(&q, "_elements")?)?;
    let (view, scope) = pipeline.authorize_search().await?;
    let after = params::single(&q, "_cursor")?
        .map(|c| Cursor::open(&state.keyring, pipeline.user.id, R, c))
        .transpose()?;
    let fields = view_fields(view).intersect(requested_fields(&elements));
    let kr = state.keyring.clone();
    let limit = count as i64 + 1;
    let mut rows = state
        .db
        .run(move |c| patient_views::search(c, &kr, &criteria, scope, after, limit, fields))
        .await?;
    let more = rows.len() > count;
    rows.truncate(count);
    let ids: Vec<Uuid> = rows.iter().map(|p| p.id).collect();
    pipeline.permit(None, ids).await?;
    let next = match (more, rows.last()) {
        (true, Some(last)) => Some(Cursor::seal(&state.keyring, pipeline.user.id, R, last.id)?),
        _ => None,
    };
    let entries: Vec<Value> = rows.iter().map(|p| elements.apply(to_fhir(p))).collect();
    let body = bundle::searchset(&req, "Patient", entries, next.as_deref());
    Ok(fhir_json(StatusCode::OK).body(body.to_string()))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PatientIn {
    resource_type: String,
    id: Option<String>,
    #[allow(dead_code)]
    meta: Option<serde::de::IgnoredAny>,
    identifier: Vec<IdentifierIn>,
    name: Vec<HumanNameIn>,
    gender: String,
    birth_date: String,
    telecom: Option<Vec<ContactPointIn>>,
    address: Option<Vec<AddressIn>>,
    managing_organization: Option<ReferenceIn>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct IdentifierIn {
    system: String,
    value: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HumanNameIn {
    family: String,
    given: Vec<String>,
    #[serde(rename = "use")]
    name_use: Option<String>,
}

#[derive(Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
struct ContactPointIn {
    system: String,
    value: String,
    #[serde(rename = "use", skip_serializing_if = "Option::is_none")]
    contact_use: Option<String>,
}

#[derive(Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct AddressIn {
    #[serde(skip_serializing_if = "Option::is_none")]
    line: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    city: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    state: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    postal_code: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    country: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReferenceIn {
    reference: String,
}

/// A validated patient and the facility named in it (if any).
struct ValidPatient {
    new: phi::NewPatient,
    facility: Option<Uuid>,
}

fn validate(input: PatientIn, default_facility: Option<Uuid>) -> Result<ValidPatient, AppError> {
    if input.resource_type != "Patient" {
        return Err(invalid("resourceType", "must be Patient"));
    }
    bounded_len("identifier", &input.identifier, 4)?;
    let mut mrn = None;
    let mut ssn = None;
    for ident in &input.identifier {
        match ident.system.as_str() {
            MRN_SYSTEM if mrn.is_none() => mrn = Some(Mrn::parse(&ident.value)?),
            SSN_SYSTEM if ssn.is_none() => ssn = Some(Ssn::parse(&ident.value)?),
            MRN_SYSTEM | SSN_SYSTEM => {
                return Err(invalid("identifier", "has the same system twice"));
            }
            _ => {
                return Err(invalid(
                    "identifier.system",
                    "must be the MRN or SSN system",
                ));
            }
        }
    }
    let mrn = mrn.ok_or_else(|| invalid("identifier", "must include an MRN"))?;
    if input.name.len() != 1 {
        return Err(invalid("name", "must have exactly one entry"));
    }
    let name = &input.name[0];
    if let Some(u) = &name.name_use
        && !matches!(u.as_str(), "official" | "usual")
    {
        return Err(invalid("name[0].use", "must be official or usual"));
    }
    let family = bounded_text("name[0].family", &name.family, 100)?;
    if name.given.is_empty() {
        return Err(invalid(
            "name[0].given",
            "must have at least one given name",
        ));
    }
    bounded_len("name[0].given", &name.given, 3)?;
    let given = name
        .given
        .iter()
        .map(|g| bounded_text("name[0].given", g, 60))
        .collect::<Result<Vec<_>, _>>()?
        .join(" ");
    let gender = Gender::parse(&input.gender)?;
    let birth_date = types::birth_date(&input.birth_date)?;
    let telecom = match input.telecom {
        None => None,
        Some(list) => {
            bounded_len("telecom", &list, 5)?;
            for t in &list {
                if !matches!(
                    t.system.as_str(),
                    "phone" | "email" | "fax" | "sms" | "other"
                ) {
                    return Err(invalid(
                        "telecom.system",
                        "must be phone, email, fax, sms or other",
                    ));
                }
                bounded_text("telecom.value", &t.value, 100)?;
                if let Some(u) = &t.contact_use
                    && !matches!(u.as_str(), "home" | "work" | "mobile" | "temp" | "old")
                {
                    return Err(invalid(
                        "telecom.use",
                        "must be home, work, mobile, temp or old",
                    ));
                }
            }
            Some(serde_json::to_value(&list).map_err(|e| AppError::Internal(e.into()))?)
        }
    };
    let address = match input.address {
        None => None,
        Some(list) => {
            bounded_len("address", &list, 3)?;
            for a in &list {
                if let Some(lines) = &a.line {
                    bounded_len("address.line", lines, 3)?;
                    for l in lines {
                        bounded_text("address.line", l, 100)?;
                    }
                }
                for (field, v) in [
                    ("address.city", &a.city),
                    ("address.state", &a.state),
                    ("address.postalCode", &a.postal_code),
                    ("address.country", &a.country),
                ] {
                    if let Some(v) = v {
                        bounded_text(field, v, 50)?;
                    }
                }
            }
            Some(serde_json::to_value(&list).map_err(|e| AppError::Internal(e.into()))?)
        }
    };
    let facility = match input.managing_organization {
        None => default_facility,
        Some(r) => Some(
            r.reference
                .strip_prefix("Organization/")
                .and_then(|id| Uuid::parse_str(id).ok())
                .ok_or_else(|| {
                    invalid(
                        "managingOrganization.reference",
                        "must be Organization/<id>",
                    )
                })?,
        ),
    };
    Ok(ValidPatient {
        new: phi::NewPatient {
            facility_id: facility.unwrap_or_default(),
            mrn: mrn.as_str().to_string(),
            ssn: ssn.map(|s| s.as_str().to_string()),
            family,
            given,
            birth_date,
            gender: gender.as_str().to_string(),
            telecom,
            address,
        },
        facility,
    })
}

pub async fn create(
    pipeline: Pipeline,
    state: web::Data<AppState>,
    body: JsonBody<PatientIn>,
) -> Result<HttpResponse, AppError> {
    let input = body.0;
    if input.id.is_some() {
        return Err(invalid("id", "must not be set on create"));
    }
    let valid = validate(input, pipeline.user.facility_id)?;
    let facility = valid.facility.ok_or_else(|| {
        invalid(
            "managingOrganization",
            "is required when you have no facility",
        )
    })?;
    let facts = PatientFacts {
        patient_id: Uuid::nil(),
        facility_id: facility,
        on_care_team: false,
    };
    let view = pipeline
        .authorize_new(
            Target::Patient(facts),
            [],
            "managingOrganization",
            "must be a facility you may register patients at",
        )
        .await?;
    let kr = state.keyring.clone();
    let creator = pipeline.user.id;
    let new = valid.new;
    let write = move |c: &mut diesel::PgConnection| {
        use diesel::Connection;
        c.transaction(|c| {
            let p = phi::insert_patient(c, &kr, &new)?;
            // The author of a record joins its care team, so they can read it back.
            users::add_to_care_team(c, p.id, creator, "author of the record", Some(creator))?;
            Ok::<_, AppError>(p)
        })
    };
    let complete: fn(&phi::Patient, &mut AuditEvent) = |p, event| {
        event.resource_id = Some(p.id);
        event.patient_ids = vec![p.id];
    };
    let created = pipeline
        .commit_with(None, [], write, Some(complete))
        .await?;
    let shaped = PatientView::shaped(created, view_fields(view));
    Ok(respond(StatusCode::CREATED, &shaped, &Elements::all()))
}

/// A version-checked replace; answers the full resource in the principal's view.
pub async fn update(
    req: HttpRequest,
    pipeline: Pipeline,
    state: web::Data<AppState>,
    path: web::Path<String>,
    body: JsonBody<PatientIn>,
) -> Result<HttpResponse, AppError> {
    let id = params::parse_id(&path)?;
    let expected = if_match(&req)?;
    let input = body.0;
    if input.id.as_deref() != Some(&id.to_string()) {
        return Err(invalid("id", "must match the id in the URL"));
    }
    let (view, facts) = pipeline.authorize_record(id, itself).await?;
    let mut valid = validate(input, Some(facts.facility_id))?;
    if valid.facility != Some(facts.facility_id) {
        return Err(invalid(
            "managingOrganization",
            "cannot be changed by an update",
        ));
    }
    valid.new.facility_id = facts.facility_id;
    let kr = state.keyring.clone();
    let new = valid.new;
    // Version conflicts (412), duplicate MRNs (409) and failures are audited as errors.
    let write = move |c: &mut diesel::PgConnection| {
        phi::update_patient(c, &kr, id, expected, &new)?.ok_or_else(AppError::not_found)
    };
    let updated = pipeline.commit_with(Some(id), [id], write, None).await?;
    let shaped = PatientView::shaped(updated, view_fields(view));
    Ok(respond(StatusCode::OK, &shaped, &Elements::all()))
}

/// A Patient record is its own patient.
fn itself(_: &mut diesel::PgConnection, id: Uuid) -> Result<Option<Uuid>, AppError> {
    Ok(Some(id))
}
