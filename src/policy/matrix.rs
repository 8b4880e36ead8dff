//! The role × resource × interaction × view matrix: one data table. The policy table in
//! docs/api-fhir.md is generated from it (`custodian policy`), and a test keeps the two in step.

use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Clinician,
    Billing,
    Patient,
    Admin,
    PrivacyOfficer,
    Service,
}

impl Role {
    pub const ALL: [Role; 6] = [
        Role::Clinician,
        Role::Billing,
        Role::Patient,
        Role::Admin,
        Role::PrivacyOfficer,
        Role::Service,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Clinician => "clinician",
            Role::Billing => "billing",
            Role::Patient => "patient",
            Role::Admin => "admin",
            Role::PrivacyOfficer => "privacy_officer",
            Role::Service => "service",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.as_str() == s)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ResourceType {
    Patient,
    Observation,
    DocumentReference,
    Claim,
}

impl ResourceType {
    pub const ALL: [ResourceType; 4] = [
        ResourceType::Patient,
        ResourceType::Observation,
        ResourceType::DocumentReference,
        ResourceType::Claim,
    ];

    pub fn parse(name: &str) -> Option<ResourceType> {
        ResourceType::ALL.into_iter().find(|r| r.as_str() == name)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ResourceType::Patient => "Patient",
            ResourceType::Observation => "Observation",
            ResourceType::DocumentReference => "DocumentReference",
            ResourceType::Claim => "Claim",
        }
    }
}

impl std::fmt::Display for ResourceType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Interaction {
    Create,
    Read,
    Update,
    Delete,
    Search,
}

impl Interaction {
    pub const ALL: [Interaction; 5] = [
        Interaction::Create,
        Interaction::Read,
        Interaction::Update,
        Interaction::Delete,
        Interaction::Search,
    ];

    /// The SMART v2 letter (c, r, u, d, s).
    pub fn letter(self) -> char {
        match self {
            Interaction::Create => 'c',
            Interaction::Read => 'r',
            Interaction::Update => 'u',
            Interaction::Delete => 'd',
            Interaction::Search => 's',
        }
    }
}

/// Named views: the fields a role may see of a resource. Fields outside the view are
/// neither fetched nor serialised.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum View {
    /// Clinicians: identity, demographics and contact details; MRN; no SSN.
    PatientClinical,
    /// Billing: what a claim needs — name, birth date, gender, address, MRN and SSN.
    PatientBilling,
    /// A patient's own record: everything but the SSN.
    PatientSelf,
    /// Services: MRN, name, gender, birth date.
    PatientDemographics,
    ObservationFull,
    DocumentReferenceFull,
    ClaimFull,
}

/// What relationship with the patient a grant requires.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Relationship {
    CareTeam,
    Facility,
    OwnRecord,
}

pub struct Grant {
    pub role: Role,
    pub resource: ResourceType,
    pub interactions: &'static [Interaction],
    pub view: View,
    pub relationship: Relationship,
}

use Interaction::*;
use Relationship::*;
use ResourceType as T;

/// Default deny: anything not listed here is refused. Admins and privacy officers have no
/// row: they read no clinical PHI.
pub const MATRIX: &[Grant] = &[
    Grant {
        role: Role::Clinician,
        resource: T::Patient,
        interactions: &[Read, Search, Update],
        view: View::PatientClinical,
        relationship: CareTeam,
    },
    Grant {
        role: Role::Clinician,
        resource: T::Patient,
        interactions: &[Create],
        view: View::PatientClinical,
        relationship: Facility,
    },
    Grant {
        role: Role::Clinician,
        resource: T::Observation,
        interactions: &[Create, Read, Update, Delete, Search],
        view: View::ObservationFull,
        relationship: CareTeam,
    },
    Grant {
        role: Role::Clinician,
        resource: T::DocumentReference,
        interactions: &[Create, Read, Update, Search],
        view: View::DocumentReferenceFull,
        relationship: CareTeam,
    },
    Grant {
        role: Role::Billing,
        resource: T::Patient,
        interactions: &[Read, Search],
        view: View::PatientBilling,
        relationship: Facility,
    },
    Grant {
        role: Role::Billing,
        resource: T::Claim,
        interactions: &[Create, Read, Update, Delete, Search],
        view: View::ClaimFull,
        relationship: Facility,
    },
    Grant {
        role: Role::Patient,
        resource: T::Patient,
        interactions: &[Read, Search],
        view: View::PatientSelf,
        relationship: OwnRecord,
    },
    Grant {
        role: Role::Patient,
        resource: T::Observation,
        interactions: &[Read, Search],
        view: View::ObservationFull,
        relationship: OwnRecord,
    },
    Grant {
        role: Role::Patient,
        resource: T::DocumentReference,
        interactions: &[Read, Search],
        view: View::DocumentReferenceFull,
        relationship: OwnRecord,
    },
    Grant {
        role: Role::Patient,
        resource: T::Claim,
        interactions: &[Read, Search],
        view: View::ClaimFull,
        relationship: OwnRecord,
    },
    Grant {
        role: Role::Service,
        resource: T::Patient,
        interactions: &[Read, Search],
        view: View::PatientDemographics,
        relationship: Facility,
    },
    Grant {
        role: Role::Service,
        resource: T::Observation,
        interactions: &[Create, Read, Search],
        view: View::ObservationFull,
        relationship: Facility,
    },
];

pub fn grant(
    role: Role,
    resource: ResourceType,
    interaction: Interaction,
) -> Option<&'static Grant> {
    MATRIX
        .iter()
        .find(|g| g.role == role && g.resource == resource && g.interactions.contains(&interaction))
}

/// The matrix as a Markdown table for docs/api-fhir.md.
pub fn markdown_table() -> String {
    let mut out = String::from(
        "| Role | Resource | Interactions | View | Requires |\n|---|---|---|---|---|\n",
    );
    for g in MATRIX {
        let letters: String = Interaction::ALL
            .iter()
            .filter(|i| g.interactions.contains(i))
            .map(|i| i.letter())
            .collect();
        out.push_str(&format!(
            "| {} | {} | {letters} | {:?} | {:?} |\n",
            g.role.as_str(),
            g.resource.as_str(),
            g.view,
            g.relationship
        ));
    }
    out
}

/// Which SMART scope context applies to whom, as a Markdown table for docs/api-fhir.md,
/// computed from [`super::smart_context`] itself.
pub fn smart_context_table() -> String {
    use super::{Context, smart_context};
    let prefix = |c: Context| match c {
        Context::System => "`system/…`",
        Context::Patient => "`patient/…`",
        Context::User => "`user/…`",
    };
    let mut out = String::from("| Principal | Scopes read as |\n|---|---|\n");
    for (who, is_service, roles) in [
        (
            "a service client (client-credentials token)",
            true,
            &[Role::Service][..],
        ),
        (
            "a person holding only the `patient` role",
            false,
            &[Role::Patient][..],
        ),
        (
            "any other person",
            false,
            &[Role::Clinician, Role::Patient][..],
        ),
    ] {
        out.push_str(&format!(
            "| {who} | {} |\n",
            prefix(smart_context(is_service, roles))
        ));
    }
    out
}
