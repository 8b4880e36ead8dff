//! FHIR `Observation`: its input, validation, FHIR form, search criteria and storage. The
//! interactions (read, search, create, version-checked update, soft delete) are the
//! generic handlers of [`super::resource`], decided on the subject patient.

use super::params;
use super::resource::{self, Descriptor, RecordResource};
use super::types::{LOINC, bounded_len, bounded_text, input, invalid, loinc_code};
use crate::access::Principal;
use crate::db::observations::{Criteria, NewObservation, Observation, ObservationTable};
use crate::error::AppError;
use serde::Deserialize;
use serde_json::{Value, json};

/// R4 `ObservationStatus`, every code (a valid R4 Observation is never refused for it).
pub const STATUSES: &[&str] = &[
    "registered",
    "preliminary",
    "final",
    "amended",
    "corrected",
    "cancelled",
    "entered-in-error",
    "unknown",
];

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ObservationIn {
    resource_type: String,
    id: Option<String>,
    #[allow(dead_code)]
    meta: Option<serde::de::IgnoredAny>,
    status: String,
    code: input::CodeableConcept,
    subject: input::Reference,
    effective_date_time: String,
    value_quantity: Option<input::Quantity>,
    value_string: Option<String>,
}

/// The Observation API, served by the generic handlers of [`super::resource`].
pub struct Observations;

impl RecordResource for Observations {
    const DESCRIPTOR: &'static Descriptor = &resource::OBSERVATION;
    type Input = ObservationIn;
    type Table = ObservationTable;

    fn input_id(input: &ObservationIn) -> Option<&str> {
        input.id.as_deref()
    }
    fn validate(input: ObservationIn, _: &Principal) -> Result<NewObservation, AppError> {
        if input.resource_type != "Observation" {
            return Err(invalid("resourceType", "must be Observation"));
        }
        if !STATUSES.contains(&input.status.as_str()) {
            return Err(invalid(
                "status",
                "must be registered, preliminary, final, amended, corrected, cancelled, entered-in-error or unknown",
            ));
        }
        bounded_len("code.coding", &input.code.coding, 1)?;
        let Some(coding) = input.code.coding.first() else {
            return Err(invalid("code.coding", "must have one LOINC coding"));
        };
        if coding.system.as_deref() != Some(LOINC) {
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
            (Some(q), None) => json!({ "valueQuantity": q.validate()? }),
            (None, Some(s)) => json!({ "valueString": bounded_text("valueString", &s, 1000)? }),
            _ => {
                return Err(invalid(
                    "value[x]",
                    "needs exactly one of valueQuantity or valueString",
                ));
            }
        };
        Ok(NewObservation {
            patient_id: patient_id.into(),
            status: input.status,
            code,
            code_display: display,
            value,
            effective_at,
        })
    }
    fn criteria(params: &[(&'static str, String)]) -> Result<Criteria, AppError> {
        let mut criteria = Criteria {
            patient: resource::subject_criterion(params)?,
            ..Criteria::default()
        };
        if let Some(codes) = params::single(params, "code")? {
            // `system|code` with the LOINC system, `|code`-less bare codes; an OR list.
            for c in params::or_values("code", codes)? {
                let c = c.strip_prefix("http://loinc.org|").unwrap_or(&c);
                criteria.code.push(loinc_code("code", c)?);
            }
        }
        criteria.dates = params::date_params(params, "date", 2)?;
        Ok(criteria)
    }
    fn to_fhir(o: &Observation) -> Value {
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
}
