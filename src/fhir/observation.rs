//! FHIR `Observation`: read, search, create, version-checked update and soft delete. The
//! decision is taken on the subject patient; every request is audited before it answers.

use super::bundle::{self, Cursor};
use super::elements::Elements;
use super::params;
use super::types::{bounded_len, bounded_text, invalid};
use super::{FHIR_JSON, etag, if_match};
use crate::access::{Credentials, Pipeline};
use crate::audit::AuditEvent;
use crate::db::observations::{self, Criteria};
use crate::db::phi::{self, NewObservation, Observation};
use crate::error::AppError;
use crate::policy::{ResourceType, View};
use crate::state::AppState;
use crate::web::json::JsonBody;
use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use serde::Deserialize;
use serde_json::{Value, json};
use uuid::Uuid;

pub const LOINC: &str = "http://loinc.org";
const R: ResourceType = ResourceType::Observation;
pub const STATUSES: &[&str] = &[
    "registered",
    "preliminary",
    "final",
    "amended",
    "cancelled",
    "entered-in-error",
];

/// This resource has one view, the whole resource ([`crate::policy::views`]).
fn check_view(view: View) -> Result<(), AppError> {
    super::whole_view(R, view)
}

/// A LOINC code: 1–5 digits, a dash, one check digit.
pub fn loinc_code(field: &'static str, value: &str) -> Result<String, AppError> {
    let ok = match value.split_once('-') {
        Some((num, check)) => {
            (1..=5).contains(&num.len())
                && num.bytes().all(|b| b.is_ascii_digit())
                && check.len() == 1
                && check.bytes().all(|b| b.is_ascii_digit())
        }
        None => false,
    };
    ok.then(|| value.to_string())
        .ok_or_else(|| invalid(field, "must be a LOINC code such as 8867-4"))
}

pub fn to_fhir(o: &Observation) -> Value {
    let mut coding = json!({ "system": LOINC, "code": o.code });
    if let Some(d) = &o.code_display {
        coding["display"] = json!(d.expose());
    }
    let mut out = json!({
        "resourceType": "Observation",
        "id": o.id,
        "meta": { "versionId": o.version.to_string(), "lastUpdated": params::instant(&o.updated_at) },
        "status": o.status,
        "code": { "coding": [coding] },
        "subject": { "reference": format!("Patient/{}", o.patient_id) },
        "effectiveDateTime": params::instant(&o.effective_at),
    });
    if let (Some(map), Value::Object(value)) = (out.as_object_mut(), o.value.expose()) {
        for (k, v) in value {
            if k == "valueQuantity" || k == "valueString" {
                map.insert(k.clone(), v.clone());
            }
        }
    }
    out
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ObservationIn {
    resource_type: String,
    id: Option<String>,
    #[allow(dead_code)]
    meta: Option<serde::de::IgnoredAny>,
    status: String,
    code: CodeableConceptIn,
    subject: ReferenceIn,
    effective_date_time: String,
    value_quantity: Option<QuantityIn>,
    value_string: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CodeableConceptIn {
    coding: Vec<CodingIn>,
    text: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CodingIn {
    system: String,
    code: String,
    display: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReferenceIn {
    reference: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct QuantityIn {
    value: f64,
    unit: String,
    system: Option<String>,
    code: Option<String>,
}

fn validate(input: ObservationIn) -> Result<NewObservation, AppError> {
    if input.resource_type != "Observation" {
        return Err(invalid("resourceType", "must be Observation"));
    }
    if !STATUSES.contains(&input.status.as_str()) {
        return Err(invalid(
            "status",
            "must be registered, preliminary, final, amended, cancelled or entered-in-error",
        ));
    }
    bounded_len("code.coding", &input.code.coding, 1)?;
    let Some(coding) = input.code.coding.first() else {
        return Err(invalid("code.coding", "must have one LOINC coding"));
    };
    if coding.system != LOINC {
        return Err(invalid("code.coding[0].system", "must be http://loinc.org"));
    }
    let code = loinc_code("code.coding[0].code", &coding.code)?;
    let display = coding
        .display
        .as_deref()
        .or(input.code.text.as_deref())
        .map(|d| bounded_text("code.coding[0].display", d, 200))
        .transpose()?;
    let patient_id = params::patient_reference("subject.reference", &input.subject.reference)?;
    let effective_at = params::date_time("effectiveDateTime", &input.effective_date_time)?;
    let value = match (input.value_quantity, input.value_string) {
        (Some(q), None) => {
            if !q.value.is_finite() || q.value.abs() >= 1e12 {
                return Err(invalid(
                    "valueQuantity.value",
                    "must be a number below 10^12",
                ));
            }
            let mut quantity = json!({
                "value": q.value,
                "unit": bounded_text("valueQuantity.unit", &q.unit, 40)?,
            });
            if let Some(system) = &q.system {
                let s = bounded_text("valueQuantity.system", system, 200)?;
                if !(s.starts_with("http://") || s.starts_with("https://") || s.starts_with("urn:"))
                    || s.contains(char::is_whitespace)
                {
                    return Err(invalid("valueQuantity.system", "must be a URI"));
                }
                quantity["system"] = json!(s);
            }
            if let Some(c) = &q.code {
                quantity["code"] = json!(bounded_text("valueQuantity.code", c, 40)?);
            }
            json!({ "valueQuantity": quantity })
        }
        (None, Some(s)) => json!({ "valueString": bounded_text("valueString", &s, 1000)? }),
        _ => {
            return Err(invalid(
                "value[x]",
                "needs exactly one of valueQuantity or valueString",
            ));
        }
    };
    Ok(NewObservation {
        patient_id,
        status: input.status,
        code,
        code_display: display,
        value,
        effective_at,
    })
}

fn respond(status: StatusCode, o: &Observation, elements: &Elements) -> HttpResponse {
    let body = elements.apply(to_fhir(o));
    let mut res = HttpResponse::build(status);
    res.content_type(FHIR_JSON).insert_header(etag(o.version));
    if status == StatusCode::CREATED {
        res.insert_header((
            "Location",
            format!("/fhir/Observation/{}/_history/{}", o.id, o.version),
        ));
    }
    res.body(body.to_string())
}

/// One blocking hop: the caller's user and roles, the subject patient's policy facts, the
/// decision, and only then the record.
pub async fn read(
    req: HttpRequest,
    credentials: Credentials,
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, AppError> {
    let id = params::parse_id(&path);
    let elements = params::read_elements(&req, R);
    let kr = state.keyring.clone();
    let get = move |c: &mut diesel::PgConnection, view: View, id: Uuid, _: &Elements| {
        check_view(view)?;
        Ok(phi::get_observation(c, &kr, id)?.map(|o| (o.patient_id, o)))
    };
    let (_, o, elements) = credentials
        .read_one(id, elements, observations::patient_of, get)
        .await?;
    Ok(respond(StatusCode::OK, &o, &elements))
}

pub async fn search(
    req: HttpRequest,
    pipeline: Pipeline,
    state: web::Data<AppState>,
) -> Result<HttpResponse, AppError> {
    let params =
        params::search_params(&req, &super::resource::of(pipeline.resource()?).accepted())?;
    let mut criteria = Criteria::default();
    for name in ["patient", "subject"] {
        if let Some(p) = params::single(&params, name)? {
            let id = params::patient_param(p)?;
            if criteria.patient.replace(id).is_some_and(|prev| prev != id) {
                return Err(invalid("patient", "names two different patients"));
            }
        }
    }
    if let Some(code) = params::single(&params, "code")? {
        let c = code.strip_prefix("http://loinc.org|").unwrap_or(code);
        criteria.code = Some(loinc_code("code", c)?);
    }
    let dates: Vec<&String> = params
        .iter()
        .filter(|(k, _)| *k == "date")
        .map(|(_, v)| v)
        .collect();
    bounded_len("date", &dates, 2)?;
    for d in dates {
        let (from, until) = params::date_range(d)?;
        criteria.from.extend(from);
        criteria.until.extend(until);
    }
    let count = bundle::page_size(params::single(&params, "_count")?)?;
    let elements = Elements::parse(R, params::single(&params, "_elements")?)?;
    let (view, scope) = pipeline.authorize_search().await?;
    check_view(view)?;
    let after = params::single(&params, "_cursor")?
        .map(|c| Cursor::open(&state.keyring, pipeline.user.id, R, c))
        .transpose()?;
    let kr = state.keyring.clone();
    let limit = count as i64 + 1;
    let mut rows = state
        .db
        .run(move |c| observations::search(c, &kr, &criteria, scope, after, limit))
        .await?;
    let more = rows.len() > count;
    rows.truncate(count);
    let mut patients: Vec<Uuid> = rows.iter().map(|o| o.patient_id).collect();
    patients.sort();
    patients.dedup();
    pipeline.permit(None, patients).await?;
    let next = match (more, rows.last()) {
        (true, Some(last)) => Some(Cursor::seal(&state.keyring, pipeline.user.id, R, last.id)?),
        _ => None,
    };
    let entries: Vec<Value> = rows.iter().map(|r| elements.apply(to_fhir(r))).collect();
    let body = bundle::searchset(&req, "Observation", entries, next.as_deref());
    Ok(HttpResponse::Ok()
        .content_type(FHIR_JSON)
        .body(body.to_string()))
}

pub async fn create(
    pipeline: Pipeline,
    state: web::Data<AppState>,
    body: JsonBody<ObservationIn>,
) -> Result<HttpResponse, AppError> {
    let input = body.0;
    if input.id.is_some() {
        return Err(invalid("id", "must not be set on create"));
    }
    let new = validate(input)?;
    let patient = new.patient_id;
    let view = pipeline
        .authorize_create("subject.reference", patient)
        .await?;
    check_view(view)?;
    let kr = state.keyring.clone();
    let write = move |c: &mut diesel::PgConnection| phi::insert_observation(c, &kr, &new);
    let complete: fn(&Observation, &mut AuditEvent) = |o, e| e.resource_id = Some(o.id);
    let created = pipeline
        .commit_with(None, [patient], write, Some(complete))
        .await?;
    Ok(respond(StatusCode::CREATED, &created, &Elements::all()))
}

pub async fn update(
    req: HttpRequest,
    pipeline: Pipeline,
    state: web::Data<AppState>,
    path: web::Path<String>,
    body: JsonBody<ObservationIn>,
) -> Result<HttpResponse, AppError> {
    let id = params::parse_id(&path)?;
    let expected = if_match(&req)?;
    let input = body.0;
    if input.id.as_deref() != Some(&id.to_string()) {
        return Err(invalid("id", "must match the id in the URL"));
    }
    // Input is checked before any record is looked up.
    let new = validate(input)?;
    let (view, patient) = pipeline
        .authorize_record(id, observations::patient_of)
        .await
        .map(|(view, facts)| (view, facts.patient_id))?;
    check_view(view)?;
    if new.patient_id != patient {
        pipeline.error(Some(id), [patient]).await?;
        return Err(invalid("subject", "cannot be changed by an update"));
    }
    let kr = state.keyring.clone();
    let write =
        move |c: &mut diesel::PgConnection| observations::update(c, &kr, id, expected, &new);
    let o = pipeline
        .audited(id, patient, write, params::precondition_failed)
        .await?;
    Ok(respond(StatusCode::OK, &o, &Elements::all()))
}

pub async fn delete(pipeline: Pipeline, path: web::Path<String>) -> Result<HttpResponse, AppError> {
    let id = params::parse_id(&path)?;
    let (_, patient) = pipeline
        .authorize_record(id, observations::patient_of)
        .await
        .map(|(view, facts)| (view, facts.patient_id))?;
    let write =
        move |c: &mut diesel::PgConnection| Ok(observations::soft_delete(c, id)?.then_some(()));
    pipeline
        .audited(id, patient, write, AppError::not_found)
        .await?;
    Ok(HttpResponse::NoContent().finish())
}
