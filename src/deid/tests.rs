//! The engine against the shipped rules: what survives of legitimate resources, and a
//! property test planting identifiers of every class in every element (free text,
//! extensions and narrative included): none survives.

use super::engine::AGE_90_OR_OLDER;
use super::rules::{DEFAULT_RULES, Rules};
use super::{Classes, Deidentifier};
use crate::crypto::ExportKey;
use crate::fhir::resource::ALL;
use crate::policy::ResourceType;
use chrono::NaiveDate;
use proptest::prelude::*;
use proptest::test_runner::{Config as PropConfig, TestRunner};
use serde_json::{Value, json};
use uuid::Uuid;
use zeroize::Zeroizing;

const PATIENT: &str = "6f1c4c1e-0c1b-4a57-9a3e-3d0f4b8a2b10";
const PRACTITIONER: &str = "0b7e4a8e-51a4-4c2f-8d11-7f6a5f2b9c01";

fn key(b: u8) -> ExportKey {
    ExportKey::new(Zeroizing::new([b; 32]))
}

fn as_of() -> NaiveDate {
    NaiveDate::from_ymd_opt(2026, 12, 1).unwrap_or_default()
}

fn rules() -> Rules {
    Rules::default_rules().unwrap()
}

/// One resource of each type, every element filled as the API serves it.
fn resources() -> Vec<(ResourceType, Value)> {
    let id = Uuid::new_v4().to_string();
    vec![
        (
            ResourceType::Patient,
            json!({
                "resourceType": "Patient", "id": PATIENT,
                "meta": { "versionId": "3", "lastUpdated": "2026-11-30T10:00:00Z" },
                "identifier": [
                    { "system": "urn:custodian:mrn", "value": "MRN004211" },
                    { "system": "http://hl7.org/fhir/sid/us-ssn", "value": "123-45-6789" }
                ],
                "name": [{ "family": "Okonkwo", "given": ["Adaeze", "Ngozi"] }],
                "gender": "female",
                "birthDate": "1961-07-23",
                "telecom": [{ "system": "phone", "value": "(617) 555-0142" },
                            { "system": "email", "value": "adaeze@mail.example" }],
                "address": [{ "line": ["12 Elm Street"], "city": "Cambridge", "state": "MA",
                              "postalCode": "02139-4307", "country": "US" }],
                "managingOrganization": { "reference": format!("Organization/{id}") },
            }),
        ),
        (
            ResourceType::Observation,
            json!({
                "resourceType": "Observation", "id": id,
                "meta": { "versionId": "1", "lastUpdated": "2026-11-30T10:00:00Z" },
                "status": "final",
                "code": { "coding": [{ "system": "http://loinc.org", "code": "8480-6",
                                       "display": "Systolic blood pressure" }] },
                "subject": { "reference": format!("Patient/{PATIENT}") },
                "effectiveDateTime": "2026-03-04T08:15:00Z",
                "valueQuantity": { "value": 128, "unit": "mmHg",
                                   "system": "http://unitsofmeasure.org", "code": "mm[Hg]" },
            }),
        ),
        (
            ResourceType::DocumentReference,
            json!({
                "resourceType": "DocumentReference", "id": id,
                "status": "current",
                "type": { "coding": [{ "system": "http://loinc.org", "code": "11506-3" }] },
                "subject": { "reference": format!("Patient/{PATIENT}") },
                "date": "2026-03-04T08:15:00Z",
                "author": [{ "reference": format!("Practitioner/{PRACTITIONER}") }],
                "content": [{ "attachment": { "contentType": "text/plain",
                                              "data": "QWRhZXplIE9rb25rd28gc2VlbiB0b2RheQ==" } }],
            }),
        ),
        (
            ResourceType::Claim,
            json!({
                "resourceType": "Claim", "id": id,
                "status": "active",
                "type": { "coding": [{ "system": "http://terminology.hl7.org/CodeSystem/claim-type", "code": "professional" }] },
                "use": "claim",
                "patient": { "reference": format!("Patient/{PATIENT}") },
                "created": "2026-03-05T09:00:00Z",
                "provider": { "display": "Dr Jane Whitfield" },
                "priority": { "coding": [{ "system": "http://terminology.hl7.org/CodeSystem/processpriority", "code": "normal" }] },
                "insurance": [{ "sequence": 1, "focal": true, "coverage": { "display": "Acme Health Plan 55-1234" } }],
                "total": { "value": 120.5, "currency": "USD" },
                "item": [{ "sequence": 1,
                           "productOrService": { "coding": [{ "system": "http://www.ama-assn.org/go/cpt", "code": "99213" }] },
                           "net": { "value": 120.5, "currency": "USD" } }],
            }),
        ),
    ]
}

#[test]
fn every_resource_type_is_covered_by_the_fixture() {
    let kinds: Vec<ResourceType> = resources().iter().map(|(k, _)| *k).collect();
    assert_eq!(kinds, ALL.iter().map(|d| d.kind).collect::<Vec<_>>());
}

#[test]
fn legitimate_resources_keep_what_analytics_needs_and_nothing_else() {
    let (rules, k) = (rules(), key(1));
    let engine = Deidentifier::new(&rules, &k, as_of());
    let out: Vec<Value> = resources()
        .iter()
        .map(|(kind, r)| {
            engine
                .apply(*kind, r, Uuid::parse_str(PATIENT).unwrap())
                .unwrap()
        })
        .collect();
    let p = k.pseudonym("Patient", PATIENT);
    assert_eq!(
        out[0],
        json!({ "resourceType": "Patient", "id": p, "gender": "female", "birthDate": "1961",
                "address": [{ "state": "MA", "postalCode": "021", "country": "US" }] })
    );
    assert_eq!(out[1]["subject"]["reference"], format!("Patient/{p}"));
    assert_eq!(out[1]["effectiveDateTime"], "2026");
    assert_eq!(
        out[1]["code"],
        json!({ "coding": [{ "system": "http://loinc.org", "code": "8480-6" }] })
    );
    assert_eq!(out[1]["valueQuantity"]["value"], 128);
    assert_eq!(
        out[2]["author"][0]["reference"],
        format!("Practitioner/{}", k.pseudonym("Practitioner", PRACTITIONER))
    );
    assert!(
        out[2]["content"][0]["attachment"].get("data").is_none(),
        "the note is dropped"
    );
    assert_eq!(
        out[3]["item"][0]["productOrService"]["coding"][0]["code"],
        "99213"
    );
    assert_eq!(
        out[3]["total"],
        json!({ "value": 120.5, "currency": "USD" })
    );
    assert!(!out[3].to_string().contains("Whitfield") && !out[3].to_string().contains("Acme"));
}

#[test]
fn pseudonyms_join_within_a_key_and_not_across_keys() {
    let rules = rules();
    let (a, b) = (key(1), key(2));
    let subject = Uuid::parse_str(PATIENT).unwrap();
    let run = |k: &ExportKey| -> Vec<Value> {
        let engine = Deidentifier::new(&rules, k, as_of());
        resources()
            .iter()
            .map(|(kind, r)| engine.apply(*kind, r, subject).unwrap())
            .collect()
    };
    let (a1, a2, b1) = (run(&a), run(&a), run(&b));
    // Stable per key: the same patient has the same pseudonym in two exports.
    assert_eq!(a1[0]["id"], a2[0]["id"]);
    // Joinable: the Observation's subject is the Patient's pseudonym.
    assert_eq!(
        a1[1]["subject"]["reference"],
        format!("Patient/{}", a1[0]["id"].as_str().unwrap())
    );
    // Another key: unrelated.
    assert_ne!(a1[0]["id"], b1[0]["id"]);
    assert_ne!(a1[1]["subject"], b1[1]["subject"]);
    // Not the id, in any form.
    assert!(!a1[0].to_string().contains(&PATIENT[..8]));
}

fn patient_born(birth: &str, zip: &str) -> Value {
    json!({ "resourceType": "Patient", "id": PATIENT, "gender": "male", "birthDate": birth,
            "address": [{ "postalCode": zip, "state": "NH" }] })
}

#[test]
fn ages_over_89_become_90_or_older_at_the_boundary() {
    let (rules, k) = (rules(), key(1));
    let engine = Deidentifier::new(&rules, &k, as_of());
    let s = Uuid::parse_str(PATIENT).unwrap();
    // 89 (birthday tomorrow): the year is kept.
    let p89 = engine
        .apply(
            ResourceType::Patient,
            &patient_born("1936-12-02", "03101"),
            s,
        )
        .unwrap();
    assert_eq!(p89["birthDate"], "1936");
    assert!(p89.get("extension").is_none());
    // 90 today: no birth date at all, the 90-or-older marker instead.
    let p90 = engine
        .apply(
            ResourceType::Patient,
            &patient_born("1936-12-01", "03101"),
            s,
        )
        .unwrap();
    assert!(p90.get("birthDate").is_none());
    assert_eq!(
        p90["extension"],
        json!([{ "url": AGE_90_OR_OLDER, "valueBoolean": true }])
    );
    assert!(!p90.to_string().contains("1936"));
    let mut classes = Classes::default();
    classes.add(&p90);
    assert_eq!(classes.report(1, false).patients, 1);
}

#[test]
fn zip3_of_restricted_areas_is_000_in_exports() {
    let (rules, k) = (rules(), key(1));
    let engine = Deidentifier::new(&rules, &k, as_of());
    let s = Uuid::parse_str(PATIENT).unwrap();
    for (zip, want) in [
        ("03601", "000"),
        ("89301-1234", "000"),
        ("10212", "000"),
        ("03101", "031"),
        ("94607", "946"),
    ] {
        let out = engine
            .apply(ResourceType::Patient, &patient_born("1980-01-01", zip), s)
            .unwrap();
        assert_eq!(out["address"][0]["postalCode"], want, "{zip}");
    }
}

#[test]
fn date_shift_mode_moves_each_patients_dates_by_one_secret_offset() {
    let text = DEFAULT_RULES.replace("mode = \"year\"", "mode = \"shift\"");
    let rules = Rules::parse(&text, &ALL).unwrap();
    let k = key(1);
    let engine = Deidentifier::new(&rules, &k, as_of());
    let s = Uuid::parse_str(PATIENT).unwrap();
    let obs = &resources()[1].1;
    let out = engine.apply(ResourceType::Observation, obs, s).unwrap();
    let shift = k.date_shift_days(s, rules.dates.max_shift_days);
    let want = NaiveDate::from_ymd_opt(2026, 3, 4).unwrap() + chrono::Duration::days(shift);
    assert_eq!(
        out["effectiveDateTime"],
        want.format("%Y-%m-%d").to_string()
    );
    assert_ne!(out["effectiveDateTime"], "2026-03-04");
}

// ------------------------------------------------------------------------------------
// Planted identifiers.

/// Words of the output's own vocabulary (types, fixed values) a generated name could
/// be part of; names are drawn outside them so a hit is a real leak.
const RESERVED: &[&str] = &[
    "Patient",
    "Practitioner",
    "Organization",
    "Observation",
    "DocumentReference",
    "Claim",
    "Code",
    "Type",
    "Quantity",
    "Date",
    "Time",
    "Reference",
    "Service",
    "Organization",
];

fn identifier() -> impl Strategy<Value = String> {
    prop_oneof![
        "[A-Z][a-z]{5,10}".prop_filter("not a word of the output", |n| {
            !RESERVED.iter().any(|w| w.contains(n.as_str()))
        }),
        "[A-Z][a-z]{4,8} [A-Z][a-z]{4,9}",
        "[0-9]{3}-[0-9]{2}-[0-9]{4}",
        "MRN[0-9]{6}",
        "\\([2-9][0-9]{2}\\) [0-9]{3}-[0-9]{4}",
        "\\+1 [2-9][0-9]{2}-[0-9]{3}-[0-9]{4}",
        "(19|20)[0-9]{2}-(0[1-9]|1[0-2])-(0[1-9]|1[0-9]|2[0-8])",
        "(19|20)[0-9]{2}-(0[1-9]|1[0-2])-(0[1-9]|1[0-9]|2[0-8])T[01][0-9]:[0-5][0-9]:00Z",
        "[a-z]{4,8}\\.[a-z]{4,8}@[a-z]{4,8}\\.org",
        "https://[a-z]{4,8}\\.example/[a-z]{3,6}",
        "10\\.[0-9]{1,3}\\.[0-9]{1,3}\\.[0-9]{1,3}",
        "PLAN-[0-9]{8}",
    ]
}

/// Replaces string leaves of `v` (except `resourceType`) by planted identifiers (or
/// appends one) where `mask` says so, and adds an extension, narrative, a note and an
/// unknown element carrying identifiers to every object.
fn plant(v: &mut Value, ids: &[String], mask: &[bool], n: &mut usize) {
    let next = |n: &mut usize| {
        *n += 1;
        (ids[*n % ids.len()].clone(), mask[*n % mask.len()], *n)
    };
    match v {
        Value::String(s) => {
            let (id, yes, i) = next(n);
            if yes {
                *s = if i % 3 == 0 { format!("{s} {id}") } else { id };
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|i| plant(i, ids, mask, n)),
        Value::Object(map) => {
            for (k, item) in map.iter_mut() {
                if k != "resourceType" {
                    plant(item, ids, mask, n);
                }
            }
            let (a, _, i) = next(n);
            let (b, _, _) = next(n);
            let (c, _, _) = next(n);
            map.insert(
                "extension".into(),
                json!([{ "url": "https://x.example/ext", "valueString": a }]),
            );
            map.insert(
                "text".into(),
                json!({ "status": "generated", "div": format!("<div>{b}</div>") }),
            );
            map.insert("note".into(), json!([{ "text": c }]));
            map.insert(format!("display{i}"), json!(a));
        }
        _ => {}
    }
}

fn strings(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::String(s) => out.push(s.clone()),
        Value::Array(a) => a.iter().for_each(|i| strings(i, out)),
        Value::Object(m) => m.iter().for_each(|(k, i)| {
            out.push(k.clone());
            strings(i, out)
        }),
        _ => {}
    }
}

/// What the fixture itself holds that identifies the patient.
const FIXTURE_IDENTIFIERS: &[&str] = &[
    "Okonkwo",
    "Adaeze",
    "Ngozi",
    "MRN004211",
    "123-45-6789",
    "555-0142",
    "adaeze@",
    "Elm Street",
    "Cambridge",
    "02139",
    "Whitfield",
    "Acme",
    "55-1234",
    "1961-07-23",
    "2026-03-04",
    "2026-03-05",
    "2026-11-30",
    "Systolic",
    "QWRhZXpl",
    PATIENT,
    PRACTITIONER,
];

#[test]
fn no_planted_identifier_survives_de_identification() {
    let rules = rules();
    let (ka, kb) = (key(1), key(2));
    let mut runner = TestRunner::new(PropConfig::with_cases(256));
    let input = (
        proptest::collection::vec(identifier(), 1..12),
        proptest::collection::vec(any::<bool>(), 1..16),
        any::<bool>(),
    );
    let result = runner.run(&input, |(ids, mask, second_key)| {
        let k = if second_key { &kb } else { &ka };
        let engine = Deidentifier::new(&rules, k, as_of());
        for (kind, mut r) in resources() {
            let mut n = 0;
            plant(&mut r, &ids, &mask, &mut n);
            let out = engine
                .apply(kind, &r, Uuid::parse_str(PATIENT).unwrap_or_default())
                .unwrap_or(Value::Null);
            let mut found = Vec::new();
            strings(&out, &mut found);
            for s in &found {
                for id in ids
                    .iter()
                    .map(String::as_str)
                    .chain(FIXTURE_IDENTIFIERS.iter().copied())
                {
                    prop_assert!(!s.contains(id), "{kind:?}: {id:?} survived in {s:?}");
                }
            }
        }
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}
