//! Each FHIR resource type described once: the interactions it supports and its search
//! parameters (name and FHIR search-parameter type). The CapabilityStatement is built from
//! these descriptors, and every search handler accepts exactly the parameters listed here
//! (plus the opaque paging cursor); a test checks that the route table registers exactly
//! the interactions listed here.

use crate::policy::{Interaction, ResourceType};

/// One search parameter: its name and FHIR search-parameter type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SearchParam {
    pub name: &'static str,
    pub kind: &'static str,
}

const fn param(name: &'static str, kind: &'static str) -> SearchParam {
    SearchParam { name, kind }
}

/// The paging cursor a searchset's `next` link carries: accepted by every search, not
/// listed in the CapabilityStatement (clients follow the link, they do not build it).
pub const CURSOR: &str = "_cursor";

/// What the API offers for one resource type.
#[derive(Debug)]
pub struct Descriptor {
    pub kind: ResourceType,
    pub interactions: &'static [Interaction],
    pub search: &'static [SearchParam],
}

impl Descriptor {
    /// Every query parameter a search of this type accepts.
    pub fn accepted(&self) -> Vec<&'static str> {
        self.search.iter().map(|p| p.name).chain([CURSOR]).collect()
    }
}

use Interaction::{Create, Delete, Read, Search, Update};

const COUNT: SearchParam = param("_count", "number");
const ELEMENTS: SearchParam = param("_elements", "special");

pub const PATIENT: Descriptor = Descriptor {
    kind: ResourceType::Patient,
    interactions: &[Search, Create, Read, Update],
    search: &[
        param("family", "string"),
        param("given", "string"),
        param("birthdate", "date"),
        param("identifier", "token"),
        COUNT,
        ELEMENTS,
    ],
};

pub const OBSERVATION: Descriptor = Descriptor {
    kind: ResourceType::Observation,
    interactions: &[Search, Create, Read, Update, Delete],
    search: &[
        param("patient", "reference"),
        param("subject", "reference"),
        param("code", "token"),
        param("date", "date"),
        COUNT,
        ELEMENTS,
    ],
};

pub const DOCUMENT_REFERENCE: Descriptor = Descriptor {
    kind: ResourceType::DocumentReference,
    interactions: &[Search, Create, Read, Update],
    search: &[
        param("patient", "reference"),
        param("subject", "reference"),
        COUNT,
        ELEMENTS,
    ],
};

pub const CLAIM: Descriptor = Descriptor {
    kind: ResourceType::Claim,
    interactions: &[Search, Create, Read, Update, Delete],
    search: &[
        param("patient", "reference"),
        param("status", "token"),
        COUNT,
        ELEMENTS,
    ],
};

/// Every resource type the API serves, in CapabilityStatement order.
pub const ALL: [&Descriptor; 4] = [&PATIENT, &OBSERVATION, &DOCUMENT_REFERENCE, &CLAIM];

/// The descriptor of `kind`.
pub fn of(kind: ResourceType) -> &'static Descriptor {
    match kind {
        ResourceType::Patient => &PATIENT,
        ResourceType::Observation => &OBSERVATION,
        ResourceType::DocumentReference => &DOCUMENT_REFERENCE,
        ResourceType::Claim => &CLAIM,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_resource_type_is_described_once() {
        for kind in ResourceType::ALL {
            assert_eq!(of(kind).kind, kind);
            assert_eq!(ALL.iter().filter(|d| d.kind == kind).count(), 1);
        }
    }
}
