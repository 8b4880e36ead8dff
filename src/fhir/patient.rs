//! FHIR `Patient`: its input, validation, FHIR form, search criteria and storage. Read,
//! search, create and version-checked update are the generic handlers of
//! [`super::resource`]: each asks the decision point, fetches only the fields of the
//! permitted view, and commits its audit event before the response leaves.

use super::elements::Elements;
use super::params;
use super::resource::{self, Descriptor, FhirResource};
use super::types::{self, Gender, Mrn, Ssn, bounded_len, bounded_text, invalid};
use crate::access::{Pipeline, Principal};
use crate::crypto::BlindKind;
use crate::crypto::Keyring;
use crate::crypto::blind::{PREFIX_MAX, PREFIX_MIN};
use crate::db::patients::views::{
    self as patient_views, Criteria, NAME_INFIX_REFUSED, NAME_PREFIX_LENGTH, NameMatch, NameQuery,
    PatientFields, PatientView,
};
use crate::db::{phi, users};
use crate::domain::{FacilityId, PatientId, RecordId, UserId};
use crate::error::AppError;
use crate::policy::{PatientFacts, SearchScope, Target, View};
use diesel::PgConnection;
use serde::Deserialize;
use serde_json::{Value, json};
use uuid::Uuid;

pub const MRN_SYSTEM: &str = "urn:custodian:mrn";
pub const SSN_SYSTEM: &str = "http://hl7.org/fhir/sid/us-ssn";

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
        "meta": {
            "versionId": p.version.to_string(),
            "lastUpdated": p.updated_at.to_rfc3339(),
            "security": [{
                "system": crate::policy::confidentiality::SYSTEM,
                "code": p.confidentiality.code(),
                "display": p.confidentiality.display(),
            }],
        },
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

/// A name parameter: `<name>` (starts-with, 3 to 40 characters after normalisation,
/// else a fixed 400), `<name>:exact` (the whole name) or `<name>:contains` (3 to 40
/// characters within one word of the name, else a fixed 400); one of them at most, with
/// comma-separated values (an OR).
fn name_query(
    q: &[(&'static str, String)],
    name: &'static str,
    exact: &'static str,
    contains: &'static str,
    prefix: BlindKind,
    infix: BlindKind,
) -> Result<Option<NameQuery>, AppError> {
    let given = [
        (params::single(q, name)?, NameMatch::StartsWith),
        (params::single(q, exact)?, NameMatch::Exact),
        (params::single(q, contains)?, NameMatch::Contains),
    ];
    let mut present = given.into_iter().filter_map(|(v, how)| v.map(|v| (v, how)));
    let Some((v, how)) = present.next() else {
        return Ok(None);
    };
    if present.next().is_some() {
        return Err(invalid(
            name,
            "may be given once, without a modifier, with :exact or with :contains",
        ));
    }
    // A comma-separated list is an OR of values (`\,` is a literal comma), each checked.
    let mut values = Vec::new();
    for v in params::or_values(name, v)? {
        let value = bounded_text(name, &v, 100)?;
        let length = |kind: BlindKind| {
            kind.normalise(&value)
                .map(|n| n.chars().count())
                .unwrap_or(0)
        };
        match how {
            NameMatch::StartsWith if !(PREFIX_MIN..=PREFIX_MAX).contains(&length(prefix)) => {
                return Err(AppError::bad_request(NAME_PREFIX_LENGTH));
            }
            NameMatch::Contains
                if !(PREFIX_MIN..=PREFIX_MAX).contains(&length(infix))
                    || value.split_whitespace().nth(1).is_some() =>
            {
                return Err(AppError::bad_request(NAME_INFIX_REFUSED));
            }
            _ => {}
        }
        values.push(value);
    }
    Ok(Some(NameQuery { values, how }))
}

fn search_criteria(q: &[(&'static str, String)]) -> Result<Criteria, AppError> {
    let mut c = Criteria {
        family: name_query(
            q,
            "family",
            "family:exact",
            "family:contains",
            BlindKind::FamilyPrefix,
            BlindKind::FamilyInfix,
        )?,
        given: name_query(
            q,
            "given",
            "given:exact",
            "given:contains",
            BlindKind::GivenPrefix,
            BlindKind::GivenInfix,
        )?,
        ..Criteria::default()
    };
    if let Some(d) = params::single(q, "birthdate")? {
        // Sealed with an exact-match blind index: a day, optionally with the `eq` prefix.
        let d = d.strip_prefix("eq").unwrap_or(d);
        c.birth_date = Some(
            types::birth_date(d).map_err(|_| invalid("birthdate", "must be a day YYYY-MM-DD (optionally eq-prefixed): birth dates are sealed and matched exactly"))?,
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
    managing_organization: Option<types::input::Reference>,
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

/// A validated patient and the facility its body names (if any).
pub struct ValidPatient {
    new: phi::NewPatient,
    facility: Option<Uuid>,
}

fn validate(input: PatientIn) -> Result<ValidPatient, AppError> {
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
        None => None,
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
            facility_id: FacilityId(facility.unwrap_or_default()),
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

/// The Patient API, served by the generic handlers of [`super::resource`]. Two hooks
/// differ from the records of a patient: a create is decided on the facility the patient
/// is registered at (and its author joins the care team), and an update cannot move the
/// patient to another facility.
pub struct Patients;

impl FhirResource for Patients {
    const DESCRIPTOR: &'static Descriptor = &resource::PATIENT;
    const SUBJECT_FIELD: &'static str = "managingOrganization";
    type Input = PatientIn;
    type New = ValidPatient;
    type Record = PatientView;
    type Criteria = Criteria;
    type Fields = PatientFields;

    /// The view's fields that `_elements` asks for: what is not returned is not fetched.
    fn fields(view: View, elements: &Elements) -> Result<PatientFields, AppError> {
        Ok(view_fields(view).intersect(requested_fields(elements)))
    }
    fn input_id(input: &PatientIn) -> Option<&str> {
        input.id.as_deref()
    }
    fn validate(input: PatientIn, _: &Principal) -> Result<ValidPatient, AppError> {
        validate(input)
    }
    fn criteria(params: &[(&'static str, String)]) -> Result<Criteria, AppError> {
        search_criteria(params)
    }
    fn to_fhir(p: &PatientView) -> Value {
        to_fhir(p)
    }
    fn id(p: &PatientView) -> RecordId {
        RecordId(p.id.as_uuid())
    }
    fn version(p: &PatientView) -> i32 {
        p.version
    }
    fn full_fields() -> PatientFields {
        PatientFields {
            mrn: true,
            ssn: true,
            name: true,
            birth_date: true,
            gender: true,
            telecom: true,
            address: true,
        }
    }
    /// A stored version cut down to the view: what [`to_fhir`] would not have emitted
    /// for a record fetched with `fields`.
    fn shape(mut json: Value, fields: PatientFields) -> Value {
        let Some(map) = json.as_object_mut() else {
            return json;
        };
        if let Some(Value::Array(ids)) = map.get_mut("identifier") {
            ids.retain(|i| match i["system"].as_str() {
                Some(MRN_SYSTEM) => fields.mrn,
                Some(SSN_SYSTEM) => fields.ssn,
                _ => false,
            });
            if ids.is_empty() {
                map.remove("identifier");
            }
        }
        for (key, keep) in [
            ("name", fields.name),
            ("gender", fields.gender),
            ("birthDate", fields.birth_date),
            ("telecom", fields.telecom),
            ("address", fields.address),
        ] {
            if !keep {
                map.remove(key);
            }
        }
        json
    }
    /// A Patient record is its own patient.
    fn subject(p: &PatientView) -> PatientId {
        p.id
    }
    /// Not known before the insert: a create is decided on the facility.
    fn new_subject(_: &ValidPatient) -> PatientId {
        PatientId(Uuid::nil())
    }

    /// Decided on the facility the body names, or the principal's own.
    async fn authorize_create(
        pipeline: &Pipeline,
        new: &mut ValidPatient,
    ) -> Result<View, AppError> {
        let facility = new
            .facility
            .or(pipeline.user.facility_id.map(Uuid::from))
            .ok_or_else(|| {
                invalid(
                    "managingOrganization",
                    "is required when you have no facility",
                )
            })?;
        new.new.facility_id = FacilityId(facility);
        let facts = PatientFacts::normal(PatientId(Uuid::nil()), FacilityId(facility), false);
        pipeline
            .authorize_new(
                Target::Patient(facts),
                [],
                Self::SUBJECT_FIELD,
                "must be a facility you may register patients at",
            )
            .await
    }

    /// The patient stays at its facility.
    fn check_update(new: &mut ValidPatient, facts: &PatientFacts) -> Result<(), AppError> {
        if new
            .facility
            .is_some_and(|f| f != facts.facility_id.as_uuid())
        {
            return Err(invalid(
                "managingOrganization",
                "cannot be changed by an update",
            ));
        }
        new.new.facility_id = facts.facility_id;
        Ok(())
    }

    /// The fields a body writes: the required ones always, the optional ones when given.
    fn written_outside(new: &ValidPatient, view: PatientFields) -> Option<&'static str> {
        let n = &new.new;
        let written = PatientFields {
            mrn: true,
            ssn: n.ssn.is_some(),
            name: true,
            birth_date: true,
            gender: true,
            telecom: n.telecom.is_some(),
            address: n.address.is_some(),
        };
        written.first_outside(view)
    }

    /// The fields a search tests (through their blind indexes).
    fn searched_outside(c: &Criteria, view: PatientFields) -> Option<&'static str> {
        let searched = PatientFields {
            mrn: c.mrn.is_some(),
            ssn: c.ssn.is_some(),
            name: c.family.is_some() || c.given.is_some(),
            birth_date: c.birth_date.is_some(),
            ..PatientFields::default()
        };
        searched.first_outside(view)
    }

    /// Version conflicts are answered by the update itself (412); `None` is a patient
    /// that is gone.
    fn update_missed() -> AppError {
        AppError::not_found()
    }

    fn patient_of(_: &mut PgConnection, id: RecordId) -> Result<Option<PatientId>, AppError> {
        Ok(Some(PatientId(id.0)))
    }
    fn get(
        c: &mut PgConnection,
        kr: &Keyring,
        id: RecordId,
        fields: PatientFields,
    ) -> Result<Option<PatientView>, AppError> {
        patient_views::read(c, kr, id.into(), fields)
    }
    fn search(
        c: &mut PgConnection,
        kr: &Keyring,
        criteria: &Criteria,
        scope: SearchScope,
        page: crate::db::records::Page,
        fields: PatientFields,
    ) -> Result<Vec<PatientView>, AppError> {
        patient_views::search(c, kr, criteria, scope, page, fields)
    }
    fn sort_value(
        p: &PatientView,
        key: crate::db::records::SortKey,
    ) -> Option<chrono::DateTime<chrono::Utc>> {
        (key == crate::db::records::SortKey::LastUpdated).then_some(p.updated_at)
    }
    fn count(
        c: &mut PgConnection,
        kr: &Keyring,
        criteria: &Criteria,
        scope: SearchScope,
    ) -> Result<i64, AppError> {
        patient_views::count(c, kr, criteria, scope)
    }
    /// The author of a record joins its care team, so they can read it back.
    fn insert(
        c: &mut PgConnection,
        kr: &Keyring,
        new: &ValidPatient,
        author: UserId,
        fields: PatientFields,
    ) -> Result<PatientView, AppError> {
        use diesel::Connection;
        c.transaction(|c| {
            let p = phi::insert_patient(c, kr, &new.new)?;
            users::add_to_care_team(c, p.id, author, "author of the record", Some(author))?;
            Ok(PatientView::shaped(p, fields))
        })
    }
    fn update(
        c: &mut PgConnection,
        kr: &Keyring,
        id: RecordId,
        expected: Option<i32>,
        new: &ValidPatient,
        fields: PatientFields,
    ) -> Result<Option<PatientView>, AppError> {
        // Only the view's fields are written: the others keep their stored values.
        Ok(crate::db::patients::update_patient_fields(
            c,
            kr,
            id.into(),
            expected,
            &new.new,
            fields,
        )?
        .map(|p| PatientView::shaped(p, fields)))
    }
    /// Patients are not deleted through the API (no delete route).
    fn delete(_: &mut PgConnection, _: RecordId) -> Result<bool, AppError> {
        Ok(false)
    }
}
