//! One de-identified data set, streamed: every resource through the [`Deidentifier`],
//! the Patients counted into the k-anonymity [`Classes`], and, when asked for, the
//! records of patients in classes below k left out. Nothing is held per patient but the
//! ids of suppressed ones, so memory stays flat however many patients there are.
//!
//! The order an exporter follows: [`DeidSet::count`] over every Patient (first pass),
//! then [`DeidSet::patient`] over every Patient again and [`DeidSet::resource`] over
//! the other types (second pass), then [`DeidSet::report`].

use super::engine::Deidentifier;
use super::kanon::{Classes, Report};
use crate::policy::ResourceType;
use serde_json::Value;
use std::collections::HashSet;
use std::io::Write;
use uuid::Uuid;

pub struct DeidSet<'a> {
    engine: Deidentifier<'a>,
    classes: Classes,
    k: u64,
    suppress: bool,
    suppressed: HashSet<Uuid>,
}

impl<'a> DeidSet<'a> {
    /// `k`: the class size the report measures against; `suppress`: leave out the
    /// records of patients in smaller classes.
    pub fn new(engine: Deidentifier<'a>, k: u64, suppress: bool) -> Self {
        DeidSet {
            engine,
            classes: Classes::default(),
            k,
            suppress,
            suppressed: HashSet::new(),
        }
    }

    /// First pass: counts one Patient (`id` is its record id).
    pub fn count(&mut self, patient: &Value, id: Uuid) {
        if let Some(p) = self.engine.apply(ResourceType::Patient, patient, id) {
            self.classes.add(&p);
        }
    }

    /// Second pass: one Patient de-identified, or `None` when it is suppressed.
    pub fn patient(&mut self, patient: &Value, id: Uuid) -> Option<Value> {
        let p = self.engine.apply(ResourceType::Patient, patient, id)?;
        if self.suppress && self.classes.below_k(&p, self.k) {
            self.suppressed.insert(id);
            return None;
        }
        Some(p)
    }

    /// Second pass: a resource of another type about `subject`, de-identified, or
    /// `None` when its patient is suppressed. Call after every [`Self::patient`].
    pub fn resource(&self, kind: ResourceType, resource: &Value, subject: Uuid) -> Option<Value> {
        if self.suppressed.contains(&subject) {
            return None;
        }
        self.engine.apply(kind, resource, subject)
    }

    pub fn report(&self) -> Report {
        self.classes.report(self.k, self.suppress)
    }
}

/// One NDJSON line (the Bulk Data output format: one resource per line).
pub fn write_line(out: &mut impl Write, resource: &Value) -> std::io::Result<()> {
    serde_json::to_writer(&mut *out, resource)?;
    out.write_all(b"\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::ExportKey;
    use crate::deid::Rules;
    use chrono::NaiveDate;
    use serde_json::json;
    use zeroize::Zeroizing;

    fn patient(id: Uuid, zip: &str, birth: &str) -> Value {
        json!({ "resourceType": "Patient", "id": id.to_string(), "gender": "female",
                "birthDate": birth, "address": [{ "postalCode": zip, "state": "MA" }] })
    }

    fn observation(subject: Uuid) -> Value {
        json!({ "resourceType": "Observation", "id": Uuid::new_v4().to_string(),
                "status": "final", "subject": { "reference": format!("Patient/{subject}") },
                "code": { "coding": [{ "system": "http://loinc.org", "code": "8480-6" }] },
                "valueQuantity": { "value": 120, "unit": "mmHg" } })
    }

    /// Four patients in 021/1980 and one alone in 946/1955, one observation each: with
    /// k = 2 and suppression, the lone patient and their observation are left out.
    #[test]
    fn suppression_leaves_out_every_record_of_patients_below_k() {
        let rules = Rules::default_rules().unwrap();
        let key = ExportKey::new(Zeroizing::new([7; 32]));
        let as_of = NaiveDate::from_ymd_opt(2026, 12, 1).unwrap();
        let mut people: Vec<(Uuid, Value)> = (0..4)
            .map(|_| Uuid::new_v4())
            .map(|id| (id, patient(id, "02139", "1980-05-01")))
            .collect();
        let lone = Uuid::new_v4();
        people.push((lone, patient(lone, "94607", "1955-01-01")));

        for suppress in [false, true] {
            let mut set = DeidSet::new(Deidentifier::new(&rules, &key, as_of), 2, suppress);
            people.iter().for_each(|(id, p)| set.count(p, *id));
            let mut out = Vec::new();
            for (id, p) in &people {
                if let Some(p) = set.patient(p, *id) {
                    write_line(&mut out, &p).unwrap();
                }
            }
            for (id, _) in &people {
                if let Some(o) = set.resource(ResourceType::Observation, &observation(*id), *id) {
                    write_line(&mut out, &o).unwrap();
                }
            }
            let text = String::from_utf8(out).unwrap();
            let lines: Vec<Value> = text
                .lines()
                .map(|l| serde_json::from_str(l).unwrap())
                .collect();
            let lone_ref = format!("Patient/{}", key.pseudonym("Patient", &lone.to_string()));
            let mentions_lone = lines.iter().any(|r| {
                r["subject"]["reference"] == lone_ref.as_str()
                    || r["id"] == key.pseudonym("Patient", &lone.to_string()).as_str()
            });
            let report = set.report();
            assert_eq!((report.smallest_class, report.classes_below_k), (1, 1));
            assert_eq!(report.suppressed, suppress);
            if suppress {
                assert_eq!(lines.len(), 8, "4 patients and their 4 observations");
                assert!(!mentions_lone);
            } else {
                assert_eq!(lines.len(), 10);
                assert!(mentions_lone);
            }
        }
    }
}
