//! Property tests over generated Patient records (issue 17, "Tests"): where
//! `tests::no_planted_identifier_survives_de_identification` plants identifiers into one
//! fixed record per type, these generate the record itself — names, MRN, SSN (with and
//! without dashes), phone and fax numbers in several formats, email, birth dates of every
//! precision across the 89/90 boundary, ZIPs (ZIP+4, restricted areas) — and put
//! identifiers into extensions and narrative at every level (`modifierExtension` too).
//! Each output is checked against an oracle written here independently of the engine:
//! nothing identifying survives, the ZIP3 is the prefix or `000` for the restricted
//! areas, a birth date is the year or, from 90 on, gone with the 90-or-older marker, and
//! the id is the keyed pseudonym, the same in every run with one key and another under
//! another key.

use super::Deidentifier;
use super::engine::AGE_90_OR_OLDER;
use super::rules::Rules;
use crate::crypto::ExportKey;
use crate::policy::ResourceType;
use chrono::{Datelike, NaiveDate};
use proptest::prelude::*;
use proptest::test_runner::{Config as PropConfig, TestRunner};
use serde_json::{Value, json};
use uuid::Uuid;
use zeroize::Zeroizing;

/// The restricted ZIP3 areas (HHS guidance, Census 2000), written out again as the
/// oracle (the engine reads them from the rules file).
const RESTRICTED: [&str; 17] = [
    "036", "059", "063", "102", "203", "556", "692", "790", "821", "823", "830", "831", "878",
    "879", "884", "890", "893",
];

fn as_of() -> NaiveDate {
    NaiveDate::from_ymd_opt(2026, 12, 1).unwrap_or_default()
}

/// One generated patient and what identifies them.
#[derive(Clone, Debug)]
struct Generated {
    id: Uuid,
    family: String,
    given: String,
    mrn: String,
    ssn: String,
    phone: String,
    fax: String,
    email: String,
    /// The birth date as written, and the oldest age it allows on the export day.
    birth: String,
    oldest_age: i32,
    zip: String,
    street: String,
    city: String,
}

/// A name that cannot be part of the output's own vocabulary (capitalised, with a `q`).
fn name() -> impl Strategy<Value = String> {
    "Q[a-z]{3,8}q[a-z]{1,4}"
}

fn birth() -> impl Strategy<Value = (String, i32)> {
    // Days from 1900-01-01 to the export day; precision 0 = day, 1 = month, 2 = year.
    let span = (as_of() - NaiveDate::from_ymd_opt(1900, 1, 1).unwrap_or_default()).num_days();
    // Half of the cases within two years of the 90th birthday, where the rule switches.
    let near = (88 * 365i64)..(92 * 365i64);
    (
        prop_oneof![0..span, near.prop_map(move |d| span - d)],
        0u8..3,
    )
        .prop_map(|(days, p)| {
            let d = NaiveDate::from_ymd_opt(1900, 1, 1).unwrap_or_default()
                + chrono::Duration::days(days);
            // The oldest the patient can be: born on the first day the text allows.
            let first = match p {
                0 => d,
                1 => d.with_day(1).unwrap_or(d),
                _ => NaiveDate::from_ymd_opt(d.year(), 1, 1).unwrap_or(d),
            };
            let now = as_of();
            let mut age = now.year() - first.year();
            if (now.month(), now.day()) < (first.month(), first.day()) {
                age -= 1;
            }
            let text = match p {
                0 => d.format("%Y-%m-%d").to_string(),
                1 => d.format("%Y-%m").to_string(),
                _ => d.format("%Y").to_string(),
            };
            (text, age)
        })
}

fn zip() -> impl Strategy<Value = String> {
    let restricted = proptest::sample::select(RESTRICTED.to_vec());
    prop_oneof![
        "[0-9]{5}",
        "[0-9]{5}-[0-9]{4}",
        (restricted, "[0-9]{2}").prop_map(|(p, r)| format!("{p}{r}")),
    ]
}

fn generated() -> impl Strategy<Value = Generated> {
    (
        (any::<u128>(), name(), name(), "MRN[0-9]{6,9}"),
        (
            prop_oneof!["[0-9]{3}-[0-9]{2}-[0-9]{4}", "[0-9]{9}"],
            prop_oneof![
                "\\([2-9][0-9]{2}\\) [2-9][0-9]{2}-[0-9]{4}",
                "[2-9][0-9]{2}\\.[2-9][0-9]{2}\\.[0-9]{4}",
                "\\+1 [2-9][0-9]{2} [2-9][0-9]{2} [0-9]{4}",
            ],
            "[2-9][0-9]{2}-[2-9][0-9]{2}-[0-9]{4}",
            "[a-z]{3,8}\\.[a-z]{3,8}@[a-z]{4,8}\\.org",
        ),
        (
            birth(),
            zip(),
            "[1-9][0-9]{1,3} Q[a-z]{4,8} Street",
            "Q[a-z]{4,9}ville",
        ),
    )
        .prop_map(
            |(
                (id, family, given, mrn),
                (ssn, phone, fax, email),
                ((birth, age), zip, street, city),
            )| {
                Generated {
                    id: Uuid::from_u128(id),
                    family,
                    given,
                    mrn,
                    ssn,
                    phone,
                    fax,
                    email,
                    birth,
                    oldest_age: age,
                    zip,
                    street,
                    city,
                }
            },
        )
}

impl Generated {
    /// Everything that identifies the patient: none of it may appear in the output.
    fn identifiers(&self) -> Vec<String> {
        let mut out = vec![
            self.family.clone(),
            self.given.clone(),
            self.mrn.clone(),
            self.ssn.clone(),
            self.phone.clone(),
            self.fax.clone(),
            self.email.clone(),
            self.zip.clone(),
            self.street.clone(),
            self.city.clone(),
            self.id.hyphenated().to_string(),
            self.id.simple().to_string(),
        ];
        // The birth date below the year (a year alone is what Safe Harbor keeps).
        if self.birth.len() > 4 {
            out.push(self.birth.clone());
        }
        out
    }

    /// Extensions and narrative full of identifiers, for any object.
    fn planted(&self) -> (Value, Value, Value) {
        let ext = json!([
            { "url": "https://x.example/ssn", "valueString": self.ssn },
            { "url": "https://x.example/contact", "valueContactPoint": { "system": "phone", "value": self.phone } },
            { "url": "https://x.example/born", "valueDate": self.birth },
            { "url": "https://x.example/nested", "extension": [{ "url": "name", "valueString": self.family }] },
        ]);
        let modifier = json!([{ "url": "https://x.example/mrn", "valueString": self.mrn }]);
        let text = json!({ "status": "generated",
            "div": format!("<div>{} {}, MRN {}, born {}, {} {}</div>",
                           self.given, self.family, self.mrn, self.birth, self.street, self.city) });
        (ext, modifier, text)
    }

    fn resource(&self) -> Value {
        let (ext, modifier, text) = self.planted();
        let with = |mut v: Value| {
            if let Some(m) = v.as_object_mut() {
                m.insert("extension".into(), ext.clone());
                m.insert("modifierExtension".into(), modifier.clone());
            }
            v
        };
        json!({
            "resourceType": "Patient",
            "id": self.id.to_string(),
            "meta": { "versionId": "1", "lastUpdated": format!("{}T10:00:00Z", self.birth) },
            "text": text,
            "extension": ext,
            "modifierExtension": modifier,
            "identifier": [
                with(json!({ "system": "urn:custodian:mrn", "value": self.mrn })),
                with(json!({ "system": "http://hl7.org/fhir/sid/us-ssn", "value": self.ssn })),
            ],
            "name": [with(json!({ "family": self.family, "given": [self.given], "text": format!("{} {}", self.given, self.family) }))],
            "gender": "female",
            "birthDate": self.birth,
            "telecom": [
                with(json!({ "system": "phone", "value": self.phone })),
                with(json!({ "system": "fax", "value": self.fax })),
                with(json!({ "system": "email", "value": self.email })),
            ],
            "address": [with(json!({ "line": [self.street], "city": self.city, "district": self.city,
                                     "state": "NH", "postalCode": self.zip, "country": "US",
                                     "text": format!("{}, {} NH {}", self.street, self.city, self.zip) }))],
        })
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

#[test]
fn generated_patients_keep_no_identifier_and_follow_the_zip3_age_and_pseudonym_rules() {
    let rules = Rules::default_rules().unwrap_or_else(|e| panic!("{e}"));
    let (ka, kb) = (
        ExportKey::new(Zeroizing::new([7; 32])),
        ExportKey::new(Zeroizing::new([8; 32])),
    );
    let (a, b) = (
        Deidentifier::new(&rules, &ka, as_of()),
        Deidentifier::new(&rules, &kb, as_of()),
    );
    let mut runner = TestRunner::new(PropConfig::with_cases(512));
    let result = runner.run(&generated(), |g| {
        let input = g.resource();
        let out = a
            .apply(ResourceType::Patient, &input, g.id)
            .unwrap_or(Value::Null);
        // Nothing identifying, anywhere (keys included).
        let mut found = Vec::new();
        strings(&out, &mut found);
        for s in &found {
            for id in g.identifiers() {
                prop_assert!(!s.contains(&id), "{id:?} survived in {s:?}: {out}");
            }
        }
        // ZIP3: the first three digits, or 000 for a restricted area.
        let prefix = &g.zip[..3];
        let want = if RESTRICTED.contains(&prefix) {
            "000"
        } else {
            prefix
        };
        prop_assert_eq!(&out["address"][0]["postalCode"], want);
        // Ages: 90 or older (the oldest the birth date allows) → no birth date, the
        // marker instead; younger → the year only.
        if g.oldest_age >= 90 {
            prop_assert!(out.get("birthDate").is_none(), "{out}");
            prop_assert_eq!(
                &out["extension"],
                &json!([{ "url": AGE_90_OR_OLDER, "valueBoolean": true }])
            );
        } else {
            prop_assert_eq!(&out["birthDate"], &json!(&g.birth[..4]));
            prop_assert!(out.get("extension").is_none(), "{out}");
        }
        // The id: the keyed pseudonym, stable per key, different under another key.
        let p = ka.pseudonym("Patient", &g.id.hyphenated().to_string());
        prop_assert_eq!(&out["id"], &json!(p));
        let again = a
            .apply(ResourceType::Patient, &input, g.id)
            .unwrap_or(Value::Null);
        prop_assert_eq!(&again["id"], &out["id"]);
        let other = b
            .apply(ResourceType::Patient, &input, g.id)
            .unwrap_or(Value::Null);
        prop_assert_ne!(&other["id"], &out["id"]);
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}
