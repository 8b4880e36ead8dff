//! The de-identification rules: a data file (shipped default `config/deid-rules.toml`,
//! schema in docs/export.md#rules) parsed with serde and checked against the resource
//! descriptors before any export runs. The check refuses a file that leaves any
//! top-level element of any resource type unclassified, names a vocabulary or code
//! system it does not define, or lists a restricted ZIP3 that is not three digits.

use crate::fhir::resource::Descriptor;
use regex_lite::Regex;
use serde::Deserialize;
use std::collections::{BTreeMap, BTreeSet};

/// The shipped default rules (HIPAA Safe Harbor).
pub const DEFAULT_RULES: &str = include_str!("../../config/deid-rules.toml");

/// The rules file format version this build reads.
pub const SCHEMA: u32 = 1;

/// Elements every resource has besides its descriptor's elements (`resourceType` is
/// kept as it is: it names the type, not the patient).
pub const COMMON: [&str; 2] = ["id", "meta"];

/// Why a rules file was refused. Names rules and elements, never data.
#[derive(Debug, thiserror::Error)]
#[error("de-identification rules: {0}")]
pub struct RulesError(pub String);

fn refuse<T>(msg: String) -> Result<T, RulesError> {
    Err(RulesError(msg))
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum DateMode {
    /// Safe Harbor: only the year of every date is kept.
    Year,
    /// Dates shifted by a per-patient secret offset: outside Safe Harbor.
    Shift,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Dates {
    pub mode: DateMode,
    pub max_shift_days: u32,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Age {
    pub aggregate_from: u32,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RestrictedZip3 {
    /// Where the list comes from (required: the list is only as good as its source).
    pub source: String,
    pub prefixes: BTreeSet<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CodeSystemFile {
    system: String,
    pattern: String,
}

/// A code system a coding may keep, with the pattern its codes must match whole.
#[derive(Debug)]
pub struct CodeSystem {
    pub system: String,
    pub pattern: Regex,
}

/// What happens to one element. Applied to an array, a rule applies to each item (items
/// it drops are left out; an empty result drops the element), except `remove` and
/// `fixed`, which replace the element whole.
#[derive(Debug, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case", deny_unknown_fields)]
pub enum Rule {
    /// Dropped.
    Remove,
    /// The resource's own id: replaced by its keyed pseudonym.
    Pseudonym,
    /// A string kept only if it is one of `values`.
    Enum { values: BTreeSet<String> },
    /// A string kept only if it is in the named vocabulary list.
    Vocabulary { list: String },
    /// A JSON number, kept.
    Number,
    /// A JSON boolean, kept.
    Boolean,
    /// A FHIR date, dateTime or instant: its year (or shifted, see [`DateMode`]).
    Date,
    /// A birth date: like `date`, but removed (and the 90-or-older extension added) when
    /// the patient is at least `age.aggregate_from` years old.
    BirthDate,
    /// A US ZIP code: its first three digits, `000` for a restricted prefix.
    Zip3,
    /// A Reference `{ "reference": "<Type>/<uuid>" }` to one of `types`: the id replaced
    /// by the keyed pseudonym of that record (so references join with ids); everything
    /// else of the Reference (display, identifier) dropped.
    Reference { types: BTreeSet<String> },
    /// A Coding: kept as `{system, code}` only if its system is one of the named code
    /// systems and its code matches that system's pattern; display dropped.
    Coding { systems: BTreeSet<String> },
    /// Replaced by `value`, whatever it was (keeps mandatory elements valid).
    Fixed { value: serde_json::Value },
    /// An object: each key by its rule in `fields`; keys without a rule are dropped.
    Object { fields: BTreeMap<String, Rule> },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RulesFile {
    schema: u32,
    dates: Dates,
    age: Age,
    restricted_zip3: RestrictedZip3,
    vocabulary: BTreeMap<String, BTreeSet<String>>,
    codes: BTreeMap<String, CodeSystemFile>,
    resources: BTreeMap<String, BTreeMap<String, Rule>>,
}

/// Checked rules, ready for the engine.
#[derive(Debug)]
pub struct Rules {
    pub dates: Dates,
    pub age: Age,
    pub restricted_zip3: RestrictedZip3,
    pub vocabulary: BTreeMap<String, BTreeSet<String>>,
    pub codes: BTreeMap<String, CodeSystem>,
    pub resources: BTreeMap<String, BTreeMap<String, Rule>>,
}

impl Rules {
    /// The shipped default rules, checked against the served resource types.
    pub fn default_rules() -> Result<Rules, RulesError> {
        Rules::parse(DEFAULT_RULES, &crate::fhir::resource::ALL)
    }

    /// Parses `text` and checks it against `descriptors`: every top-level element of
    /// every type must have a rule.
    pub fn parse(text: &str, descriptors: &[&Descriptor]) -> Result<Rules, RulesError> {
        // The parser's message names the key and line of the rules file (no data).
        let file: RulesFile = toml::from_str(text).map_err(|e| RulesError(e.to_string()))?;
        if file.schema != SCHEMA {
            return refuse(format!("schema {} is not {SCHEMA}", file.schema));
        }
        if file.age.aggregate_from == 0 || file.age.aggregate_from > 90 {
            return refuse("age.aggregate_from must be 1 to 90 (Safe Harbor: over 89)".into());
        }
        if file.restricted_zip3.source.trim().is_empty() {
            return refuse("restricted_zip3.source must name where the list comes from".into());
        }
        if let Some(p) = file
            .restricted_zip3
            .prefixes
            .iter()
            .find(|p| p.len() != 3 || !p.bytes().all(|b| b.is_ascii_digit()))
        {
            return refuse(format!("restricted_zip3 prefix {p:?} is not three digits"));
        }
        let mut codes = BTreeMap::new();
        for (name, c) in file.codes {
            let pattern = Regex::new(&format!("^(?:{})$", c.pattern))
                .map_err(|_| RulesError(format!("codes.{name}: the pattern is not valid")))?;
            codes.insert(
                name,
                CodeSystem {
                    system: c.system,
                    pattern,
                },
            );
        }
        let rules = Rules {
            dates: file.dates,
            age: file.age,
            restricted_zip3: file.restricted_zip3,
            vocabulary: file.vocabulary,
            codes,
            resources: file.resources,
        };
        rules.check(descriptors)?;
        Ok(rules)
    }

    /// Every element of every described type classified, no rule for an element the
    /// type does not have (a stale rule hides a renamed element), every name resolved.
    fn check(&self, descriptors: &[&Descriptor]) -> Result<(), RulesError> {
        for d in descriptors {
            let kind = d.kind.as_str();
            let Some(fields) = self.resources.get(kind) else {
                return refuse(format!("resource type {kind} has no rules"));
            };
            let elements: BTreeSet<&str> = COMMON
                .iter()
                .copied()
                .chain(d.elements.iter().flat_map(|(_, keys)| keys.iter().copied()))
                .collect();
            if let Some(e) = elements.iter().find(|e| !fields.contains_key(**e)) {
                return refuse(format!("{kind}.{e} is not classified by any rule"));
            }
            if let Some(f) = fields.keys().find(|f| !elements.contains(f.as_str())) {
                return refuse(format!(
                    "{kind}.{f} has a rule but is not an element of {kind}"
                ));
            }
            for (name, rule) in fields {
                self.check_rule(&format!("{kind}.{name}"), rule)?;
            }
        }
        if let Some(t) = self
            .resources
            .keys()
            .find(|t| !descriptors.iter().any(|d| d.kind.as_str() == t.as_str()))
        {
            return refuse(format!("resources.{t} is not a served resource type"));
        }
        Ok(())
    }

    fn check_rule(&self, at: &str, rule: &Rule) -> Result<(), RulesError> {
        match rule {
            Rule::Vocabulary { list } if !self.vocabulary.contains_key(list) => {
                refuse(format!("{at}: vocabulary {list} is not defined"))
            }
            Rule::Coding { systems } => match systems.iter().find(|s| !self.codes.contains_key(*s))
            {
                Some(s) => refuse(format!("{at}: code system {s} is not defined")),
                None => Ok(()),
            },
            Rule::Pseudonym if !at.ends_with(".id") => {
                refuse(format!("{at}: pseudonym applies only to a resource's id"))
            }
            Rule::Object { fields } => {
                for (name, r) in fields {
                    self.check_rule(&format!("{at}.{name}"), r)?;
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fhir::resource::{ALL, Descriptor, PATIENT};

    #[test]
    fn the_shipped_rules_classify_every_element_of_every_type() {
        let rules = Rules::default_rules().unwrap();
        assert_eq!(rules.resources.len(), ALL.len());
        assert_eq!(rules.restricted_zip3.prefixes.len(), 17);
        assert_eq!(rules.dates.mode, DateMode::Year);
    }

    #[test]
    fn an_element_without_a_rule_fails_the_check() {
        // A rule taken out of the shipped file.
        let text = DEFAULT_RULES.replace("telecom = { action = \"remove\" }", "");
        let err = Rules::parse(&text, &ALL).unwrap_err().to_string();
        assert!(err.contains("Patient.telecom is not classified"), "{err}");

        // A new element added to a resource description, the rules unchanged.
        let mut elements = PATIENT.elements.to_vec();
        elements.push(("photo", &["photo"]));
        let grown = Descriptor {
            elements: Box::leak(elements.into_boxed_slice()),
            ..PATIENT
        };
        let err = Rules::parse(DEFAULT_RULES, &[&grown, ALL[1], ALL[2], ALL[3]])
            .unwrap_err()
            .to_string();
        assert!(err.contains("Patient.photo is not classified"), "{err}");
    }

    #[test]
    fn bad_files_are_refused_with_the_reason() {
        let cases = [
            ("schema = 1", "schema = 2", "schema 2"),
            ("\"036\",", "\"36\",", "not three digits"),
            (
                "aggregate_from = 90",
                "aggregate_from = 91",
                "aggregate_from",
            ),
            (
                "list = \"currencies\"",
                "list = \"money\"",
                "vocabulary money",
            ),
            (
                "systems = [\"cpt\"]",
                "systems = [\"icd\"]",
                "code system icd",
            ),
            (
                "action = \"birth_date\"",
                "action = \"keep\"",
                "unknown variant",
            ),
        ];
        for (from, to, why) in cases {
            let text = DEFAULT_RULES.replacen(from, to, 1);
            assert_ne!(text, DEFAULT_RULES, "{from}");
            let err = Rules::parse(&text, &ALL).unwrap_err().to_string();
            assert!(err.contains(why), "{from} -> {err}");
        }
    }
}
