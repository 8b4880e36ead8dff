//! The k-anonymity report of a de-identified export: the equivalence classes of its
//! patients over the quasi-identifiers Safe Harbor leaves (ZIP3, birth year or 90+,
//! gender), the smallest class, and the classes smaller than the configured k. Only
//! counts are held (one entry per class, not per patient), so memory does not grow with
//! the export; suppression is a second look at each patient against the counts.

use super::engine::AGE_90_OR_OLDER;
use serde::Serialize;
use serde_json::Value;
use std::collections::BTreeMap;

/// The quasi-identifiers of one de-identified Patient (`"?"` where the value is absent:
/// absence is a value too).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct QuasiId {
    pub zip3: String,
    pub birth_year: String,
    pub gender: String,
}

impl QuasiId {
    /// Read from a de-identified Patient resource.
    pub fn of(patient: &Value) -> QuasiId {
        let text = |v: Option<&Value>| v.and_then(Value::as_str).unwrap_or("?").to_string();
        let aged = patient["extension"]
            .as_array()
            .is_some_and(|e| e.iter().any(|x| x["url"] == AGE_90_OR_OLDER));
        let birth_year = if aged {
            "90+".to_string()
        } else {
            // Year mode keeps `YYYY`; shift mode a day, of which the year is the class.
            let b = text(patient.get("birthDate"));
            b.get(..4).map_or(b.clone(), str::to_string)
        };
        QuasiId {
            zip3: text(patient.pointer("/address/0/postalCode")),
            birth_year,
            gender: text(patient.get("gender")),
        }
    }
}

/// Equivalence class sizes, built patient by patient.
#[derive(Debug, Default)]
pub struct Classes {
    sizes: BTreeMap<QuasiId, u64>,
}

/// One class below k (its quasi-identifiers are de-identified values, not PHI).
#[derive(Debug, PartialEq, Eq, Serialize)]
pub struct SmallClass {
    #[serde(flatten)]
    pub key: QuasiId,
    pub size: u64,
}

/// The report written beside a de-identified export.
#[derive(Debug, PartialEq, Eq, Serialize)]
pub struct Report {
    pub quasi_identifiers: [&'static str; 3],
    pub k: u64,
    pub patients: u64,
    pub classes: u64,
    /// The size of the smallest class: the data set is `smallest_class`-anonymous.
    pub smallest_class: u64,
    pub classes_below_k: u64,
    pub patients_in_classes_below_k: u64,
    /// Whether the records of patients in classes below k were left out of the export.
    pub suppressed: bool,
    pub below_k: Vec<SmallClass>,
}

impl Classes {
    pub fn add(&mut self, patient: &Value) {
        *self.sizes.entry(QuasiId::of(patient)).or_default() += 1;
    }

    /// Whether `patient` falls in a class smaller than `k` (its records are suppressed
    /// when the export asks for it).
    pub fn below_k(&self, patient: &Value, k: u64) -> bool {
        self.sizes
            .get(&QuasiId::of(patient))
            .is_some_and(|n| *n < k)
    }

    pub fn report(&self, k: u64, suppressed: bool) -> Report {
        let below: Vec<SmallClass> = self
            .sizes
            .iter()
            .filter(|(_, n)| **n < k)
            .map(|(key, n)| SmallClass {
                key: key.clone(),
                size: *n,
            })
            .collect();
        Report {
            quasi_identifiers: ["zip3", "birth_year", "gender"],
            k,
            patients: self.sizes.values().sum(),
            classes: self.sizes.len() as u64,
            smallest_class: self.sizes.values().copied().min().unwrap_or(0),
            classes_below_k: below.len() as u64,
            patients_in_classes_below_k: below.iter().map(|c| c.size).sum(),
            suppressed,
            below_k: below,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn patient(zip3: &str, year: Option<&str>, gender: &str) -> Value {
        let mut p = json!({
            "resourceType": "Patient",
            "gender": gender,
            "address": [{ "postalCode": zip3, "state": "MA" }],
        });
        match year {
            Some(y) => p["birthDate"] = json!(y),
            None => p["extension"] = json!([{ "url": AGE_90_OR_OLDER, "valueBoolean": true }]),
        }
        p
    }

    #[test]
    fn the_report_on_a_crafted_data_set() {
        // 5 × (021, 1980, female), 3 × (021, 1980, male), 1 × (000, 90+, female),
        // 2 × (946, 1955, other).
        let mut set = Vec::new();
        set.extend((0..5).map(|_| patient("021", Some("1980"), "female")));
        set.extend((0..3).map(|_| patient("021", Some("1980"), "male")));
        set.push(patient("000", None, "female"));
        set.extend((0..2).map(|_| patient("946", Some("1955"), "other")));
        let mut classes = Classes::default();
        set.iter().for_each(|p| classes.add(p));

        let r = classes.report(3, false);
        assert_eq!((r.patients, r.classes, r.smallest_class), (11, 4, 1));
        assert_eq!((r.classes_below_k, r.patients_in_classes_below_k), (2, 3));
        assert_eq!(
            r.below_k,
            vec![
                SmallClass {
                    key: QuasiId {
                        zip3: "000".into(),
                        birth_year: "90+".into(),
                        gender: "female".into()
                    },
                    size: 1
                },
                SmallClass {
                    key: QuasiId {
                        zip3: "946".into(),
                        birth_year: "1955".into(),
                        gender: "other".into()
                    },
                    size: 2
                },
            ]
        );
        // Suppression leaves exactly the classes of size ≥ k.
        let kept: Vec<&Value> = set.iter().filter(|p| !classes.below_k(p, 3)).collect();
        assert_eq!(kept.len(), 8);
        let mut after = Classes::default();
        kept.iter().for_each(|p| after.add(p));
        let r = after.report(3, true);
        assert_eq!(
            (r.smallest_class, r.classes_below_k, r.suppressed),
            (3, 0, true)
        );
        // k = 1: every data set qualifies.
        assert_eq!(classes.report(1, false).classes_below_k, 0);
    }
}
