//! The one de-identification engine: applies the [`Rules`] to a resource of any type,
//! element by element, as its type's rules say. Whatever has no rule is dropped
//! (unknown top-level keys, extensions, narrative text, keys inside objects), so the
//! output holds only what a rule chose to keep.

use super::rules::{DateMode, Rule, Rules};
use super::safe_harbor;
use crate::crypto::ExportKey;
use crate::policy::ResourceType;
use chrono::NaiveDate;
use serde_json::{Map, Value, json};
use uuid::Uuid;

/// The extension that stands for a birth date withheld because the patient is 90 or
/// older (Safe Harbor: ages over 89 aggregated).
pub const AGE_90_OR_OLDER: &str =
    "https://custodian.example/fhir/StructureDefinition/age-90-or-older";

/// One export's de-identification: the rules, the export key (pseudonyms, date shifts)
/// and the day ages are computed on.
pub struct Deidentifier<'a> {
    rules: &'a Rules,
    key: &'a ExportKey,
    as_of: NaiveDate,
}

/// What one resource's de-identification is about.
struct Ctx<'a> {
    kind: &'a str,
    patient: Uuid,
    aged: bool,
}

impl<'a> Deidentifier<'a> {
    pub fn new(rules: &'a Rules, key: &'a ExportKey, as_of: NaiveDate) -> Self {
        Deidentifier { rules, key, as_of }
    }

    /// `resource` (a `kind` resource whose subject is `patient`) de-identified; `None`
    /// when it is not a `kind` resource (nothing of it is exported).
    pub fn apply(&self, kind: ResourceType, resource: &Value, patient: Uuid) -> Option<Value> {
        let kind = kind.as_str();
        let map = resource.as_object()?;
        if map.get("resourceType")?.as_str()? != kind {
            return None;
        }
        let rules = self.rules.resources.get(kind)?;
        let mut ctx = Ctx {
            kind,
            patient,
            aged: false,
        };
        let mut out = Map::new();
        out.insert("resourceType".into(), json!(kind));
        for (name, value) in map {
            if let Some(rule) = rules.get(name)
                && let Some(v) = self.rule(rule, value, &mut ctx)
            {
                out.insert(name.clone(), v);
            }
        }
        if ctx.aged {
            out.insert(
                "extension".into(),
                json!([{ "url": AGE_90_OR_OLDER, "valueBoolean": true }]),
            );
        }
        Some(Value::Object(out))
    }

    fn rule(&self, rule: &Rule, value: &Value, ctx: &mut Ctx) -> Option<Value> {
        match (rule, value) {
            (Rule::Remove, _) => None,
            (Rule::Fixed { value }, _) => Some(value.clone()),
            (_, Value::Array(items)) => {
                let kept: Vec<Value> = items
                    .iter()
                    .filter_map(|i| self.rule(rule, i, ctx))
                    .collect();
                (!kept.is_empty()).then_some(Value::Array(kept))
            }
            (Rule::Pseudonym, Value::String(id)) => {
                // Ids are UUIDs; the canonical form, as references are (they must join).
                let id = Uuid::parse_str(id).ok()?.hyphenated().to_string();
                Some(json!(self.key.pseudonym(ctx.kind, &id)))
            }
            (Rule::Enum { values }, Value::String(s)) => values.contains(s).then(|| json!(s)),
            (Rule::Vocabulary { list }, Value::String(s)) => self
                .rules
                .vocabulary
                .get(list)
                .is_some_and(|l| l.contains(s))
                .then(|| json!(s)),
            (Rule::Number, Value::Number(_)) | (Rule::Boolean, Value::Bool(_)) => {
                Some(value.clone())
            }
            (Rule::Date, Value::String(s)) => self.date(s, ctx.patient),
            (Rule::BirthDate, Value::String(s)) => {
                let d = safe_harbor::parse_date(s)?;
                if safe_harbor::aged(&d, self.as_of, self.rules.age.aggregate_from) {
                    ctx.aged = true;
                    return None;
                }
                self.date(s, ctx.patient)
            }
            (Rule::Zip3, Value::String(s)) => {
                safe_harbor::zip3(s, &self.rules.restricted_zip3.prefixes).map(Value::String)
            }
            (Rule::Reference { types }, Value::Object(r)) => {
                let (kind, id) = r.get("reference")?.as_str()?.split_once('/')?;
                let id = Uuid::parse_str(id).ok()?;
                // Only the canonical form of the id: pseudonyms must join with ids.
                types.contains(kind).then(|| {
                    let p = self.key.pseudonym(kind, &id.hyphenated().to_string());
                    json!({ "reference": format!("{kind}/{p}") })
                })
            }
            (Rule::Coding { systems }, Value::Object(c)) => {
                let (system, code) = (c.get("system")?.as_str()?, c.get("code")?.as_str()?);
                systems
                    .iter()
                    .filter_map(|s| self.rules.codes.get(s))
                    .any(|cs| cs.system == system && cs.pattern.is_match(code))
                    .then(|| json!({ "system": system, "code": code }))
            }
            (Rule::Object { fields }, Value::Object(o)) => {
                let mut out = Map::new();
                for (name, v) in o {
                    if let Some(rule) = fields.get(name)
                        && let Some(v) = self.rule(rule, v, ctx)
                    {
                        out.insert(name.clone(), v);
                    }
                }
                (!out.is_empty()).then_some(Value::Object(out))
            }
            // A value of the wrong JSON type for its rule is not what the rule vetted.
            _ => None,
        }
    }

    fn date(&self, s: &str, patient: Uuid) -> Option<Value> {
        let d = safe_harbor::parse_date(s)?;
        match self.rules.dates.mode {
            DateMode::Year => Some(json!(format!("{:04}", d.year))),
            DateMode::Shift => {
                let shift = self
                    .key
                    .date_shift_days(patient, self.rules.dates.max_shift_days);
                Some(json!(safe_harbor::shifted(&d, shift)?))
            }
        }
    }
}
