//! `_elements` for every resource type: the caller names the top-level elements they
//! want. It is applied to the output of the permitted view, so it can only narrow what
//! the view already allows — it never adds a field. `resourceType`, `id` and `meta` are
//! always returned. Handlers also use [`Elements::wants`] to skip fetching what will not
//! be returned (Patient fields, Claim items).

use super::resource::Element;
use super::types::invalid;
use crate::error::AppError;
use crate::policy::ResourceType;
use serde_json::Value;

/// Most elements one `_elements` may name.
const MAX_ELEMENTS: usize = 20;
/// The code system of the `SUBSETTED` tag.
pub const SUBSETTED_SYSTEM: &str = "http://terminology.hl7.org/CodeSystem/v3-ObservationValue";
/// Returned whatever `_elements` says.
const ALWAYS: [&str; 3] = ["resourceType", "id", "meta"];

/// The top-level elements `resource` returns, from its descriptor
/// ([`super::resource::Descriptor::elements`]).
fn known(resource: ResourceType) -> &'static [Element] {
    super::resource::of(resource).elements
}

/// The parsed `_elements` of one request.
#[derive(Clone, Debug)]
pub struct Elements {
    /// JSON keys asked for; `None`: no `_elements`, the whole view.
    keys: Option<Vec<&'static str>>,
}

impl Elements {
    /// The whole view (no `_elements`).
    pub fn all() -> Elements {
        Elements { keys: None }
    }

    /// The summary elements of `resource` (`_summary=true`), tagged `SUBSETTED` like any
    /// subset.
    pub fn summary(resource: ResourceType) -> Elements {
        let d = super::resource::of(resource);
        let mut keys = d.summary.to_vec();
        keys.extend_from_slice(d.mandatory);
        Elements { keys: Some(keys) }
    }

    /// Parses `_elements` for `resource`. An element the resource does not have is a
    /// 422 naming `_elements` (never echoing it).
    pub fn parse(resource: ResourceType, param: Option<&str>) -> Result<Elements, AppError> {
        let Some(list) = param else {
            return Ok(Elements::all());
        };
        let names: Vec<&str> = list.split(',').map(str::trim).collect();
        if names.len() > MAX_ELEMENTS {
            return Err(invalid("_elements", "names too many elements"));
        }
        let mut keys = Vec::new();
        for name in names {
            if let Some(always) = ALWAYS.iter().find(|a| **a == name) {
                keys.push(*always);
                continue;
            }
            let Some((_, selected)) = known(resource).iter().find(|(n, _)| *n == name) else {
                return Err(invalid(
                    "_elements",
                    "names an element this resource type does not have",
                ));
            };
            keys.extend_from_slice(selected);
        }
        // The elements R4 requires stay, so that the subset is still a valid resource.
        keys.extend_from_slice(super::resource::of(resource).mandatory);
        Ok(Elements { keys: Some(keys) })
    }

    /// Whether the element with this JSON key is to be returned.
    pub fn wants(&self, key: &str) -> bool {
        ALWAYS.contains(&key) || self.keys.as_ref().is_none_or(|k| k.contains(&key))
    }

    /// Removes the top-level elements not asked for and tags the result `SUBSETTED` (R4
    /// 3.1.1.5.9). Only removes: it cannot widen the view that shaped `resource`.
    pub fn apply(&self, mut resource: Value) -> Value {
        if self.keys.is_none() {
            return resource;
        }
        if let Some(map) = resource.as_object_mut() {
            map.retain(|key, _| self.wants(key));
            let meta = map
                .entry("meta")
                .or_insert_with(|| Value::Object(Default::default()));
            if let Some(meta) = meta.as_object_mut() {
                let tags = meta
                    .entry("tag")
                    .or_insert_with(|| Value::Array(Vec::new()));
                if let Some(tags) = tags.as_array_mut() {
                    tags.push(serde_json::json!({
                        "system": SUBSETTED_SYSTEM,
                        "code": "SUBSETTED",
                    }));
                }
            }
        }
        resource
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn elements_narrow_and_never_add() {
        let obs = json!({"resourceType": "Observation", "id": "1", "meta": {}, "status": "final",
            "code": {}, "valueQuantity": {"value": 1}});
        let e = Elements::parse(ResourceType::Observation, Some("value")).unwrap();
        let out = e.apply(obs.clone());
        // The mandatory `status` and `code` stay; the result is tagged SUBSETTED.
        assert_eq!(
            out,
            json!({"resourceType": "Observation", "id": "1", "status": "final", "code": {},
                "meta": {"tag": [{"system": SUBSETTED_SYSTEM, "code": "SUBSETTED"}]},
                "valueQuantity": {"value": 1}})
        );
        // Asking for an element the shaped resource lacks adds nothing.
        let e = Elements::parse(ResourceType::Observation, Some("subject")).unwrap();
        assert!(e.apply(obs.clone()).get("subject").is_none());
        assert_eq!(Elements::all().apply(obs.clone()), obs);
        for bad in ["secret", "status,note", "item"] {
            let err = Elements::parse(ResourceType::Observation, Some(bad)).unwrap_err();
            let text = err.to_string();
            assert!(
                text.contains("'_elements'") && !text.contains(bad),
                "{text}"
            );
        }
        let many = vec!["status"; 21].join(",");
        assert!(Elements::parse(ResourceType::Claim, Some(&many)).is_err());
    }
}
