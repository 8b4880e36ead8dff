//! Bulk export (issue 17; docs/export.md#policy): which roles may export which kind of
//! data at which level, and what an export covers. Pure, like the rest of the policy.
//!
//! An export covers what the caller could search, never more (minimum necessary): for
//! each resource type the role may search, the role's view and relationship (care team,
//! facility). Identified and de-identified exports are granted separately (a role may be
//! trusted with one and not the other). The system level (every patient of the
//! organisation) belongs to backend services, whose grants are facility-wide anyway.

use super::DenyReason;
use super::matrix::{self, Interaction, Relationship, ResourceType, Role, View};

/// What leaves the system.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    /// The caller's normal view of each resource.
    Identified,
    /// Safe Harbor de-identified, keyed pseudonyms ([`crate::crypto::pseudonym`]).
    Deidentified,
}

impl Kind {
    pub const ALL: [Kind; 2] = [Kind::Identified, Kind::Deidentified];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Identified => "identified",
            Kind::Deidentified => "de-identified",
        }
    }
}

/// The Bulk Data IG's three kick-off endpoints.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Level {
    /// `/fhir/$export`: every patient of the organisation.
    System,
    /// `/fhir/Group/{id}/$export`: the patients of one care team or facility.
    Group,
    /// `/fhir/Patient/$export`: every patient the caller may search.
    Patient,
}

impl Level {
    pub const ALL: [Level; 3] = [Level::System, Level::Group, Level::Patient];

    pub fn as_str(self) -> &'static str {
        match self {
            Level::System => "system",
            Level::Group => "group",
            Level::Patient => "patient",
        }
    }
}

/// Default deny: a role not listed exports nothing. Clinicians may take de-identified
/// data of their care teams (quality work) but not identified bulk data; billing and
/// services both. Patients, administrators and privacy officers export nothing.
pub const GRANTS: &[(Role, &[Kind])] = &[
    (Role::Clinician, &[Kind::Deidentified]),
    (Role::Billing, &[Kind::Identified, Kind::Deidentified]),
    (Role::Service, &[Kind::Identified, Kind::Deidentified]),
];

/// The roles that may start a system-level export.
pub const SYSTEM_LEVEL: &[Role] = &[Role::Service];

/// One resource type of a permitted export: the fields (view) and the patients
/// (relationship) it covers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Part {
    pub resource: ResourceType,
    pub view: View,
    pub relationship: Relationship,
}

/// May a person holding `roles` export `kind` at `level`, and what does it cover? The
/// parts are in resource-type order; with several roles, the first role (in
/// [`GRANTS`] order) that grants a type decides its view.
pub fn decide(roles: &[Role], kind: Kind, level: Level) -> Result<Vec<Part>, DenyReason> {
    let granted: Vec<Role> = GRANTS
        .iter()
        .filter(|(role, kinds)| roles.contains(role) && kinds.contains(&kind))
        .filter(|(role, _)| level != Level::System || SYSTEM_LEVEL.contains(role))
        .map(|(role, _)| *role)
        .collect();
    let parts: Vec<Part> = ResourceType::ALL
        .into_iter()
        .filter_map(|resource| {
            granted.iter().find_map(|role| {
                matrix::grant(*role, resource, Interaction::Search).map(|g| Part {
                    resource,
                    view: g.view,
                    relationship: g.relationship,
                })
            })
        })
        .collect();
    if parts.is_empty() {
        Err(DenyReason::RoleMissing)
    } else {
        Ok(parts)
    }
}

/// May a person holding `roles` turn a pseudonym back into a patient? Only the role the
/// configuration names for it (the operation also needs step-up and a justification).
pub fn may_reidentify(roles: &[Role], configured: Role) -> bool {
    roles.contains(&configured)
}

/// The export rules as a Markdown table, for `custodian policy` and docs/export.md.
pub fn markdown_table() -> String {
    let mut out = String::from(
        "| Role | Kind | Levels | Resource types (view, patients) |\n|---|---|---|---|\n",
    );
    for role in Role::ALL {
        for kind in Kind::ALL {
            let levels: Vec<&str> = Level::ALL
                .into_iter()
                .filter(|l| decide(&[role], kind, *l).is_ok())
                .map(Level::as_str)
                .collect();
            let Ok(parts) = decide(&[role], kind, Level::Patient) else {
                continue;
            };
            let parts: Vec<String> = parts
                .iter()
                .map(|p| format!("{} ({:?}, {:?})", p.resource, p.view, p.relationship))
                .collect();
            out.push_str(&format!(
                "| {} | {} | {} | {} |\n",
                role.as_str(),
                kind.as_str(),
                levels.join(", "),
                parts.join(", ")
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every set of roles (all 64), kind and level against the rules stated again here.
    #[test]
    fn every_role_set_kind_and_level_matches_the_export_policy() {
        for mask in 0u32..(1 << Role::ALL.len()) {
            let roles: Vec<Role> = Role::ALL
                .into_iter()
                .enumerate()
                .filter(|(i, _)| mask & (1 << i) != 0)
                .map(|(_, r)| r)
                .collect();
            let has = |r| roles.contains(&r);
            for kind in Kind::ALL {
                for level in Level::ALL {
                    let got = decide(&roles, kind, level);
                    let types: Vec<ResourceType> = got
                        .as_ref()
                        .map(|p| p.iter().map(|p| p.resource).collect())
                        .unwrap_or_default();
                    use ResourceType::*;
                    let service = has(Role::Service);
                    let billing = has(Role::Billing) && level != Level::System;
                    let clinician = has(Role::Clinician)
                        && kind == Kind::Deidentified
                        && level != Level::System;
                    let mut want = Vec::new();
                    if service || billing || clinician {
                        want.push(Patient);
                    }
                    if service || clinician {
                        want.push(Observation);
                    }
                    if clinician {
                        want.push(DocumentReference);
                    }
                    if billing {
                        want.push(Claim);
                    }
                    assert_eq!(types, want, "{roles:?} {kind:?} {level:?}");
                    assert_eq!(got.is_err(), want.is_empty());
                    if let Ok(parts) = got {
                        // Never more than the caller may search, in the search's view.
                        for p in parts {
                            assert!(roles.iter().any(|r| {
                                matrix::grant(*r, p.resource, Interaction::Search)
                                    .is_some_and(|g| g.view == p.view)
                            }));
                        }
                    } else {
                        assert_eq!(got, Err(DenyReason::RoleMissing));
                    }
                }
            }
        }
    }

    #[test]
    fn only_the_configured_role_reidentifies() {
        for role in Role::ALL {
            for configured in Role::ALL {
                assert_eq!(may_reidentify(&[role], configured), role == configured);
            }
        }
        assert!(!may_reidentify(&[], Role::PrivacyOfficer));
    }

    #[test]
    fn the_table_lists_only_granted_roles() {
        let t = markdown_table();
        assert!(t.contains("| service | identified | system, group, patient | Patient (PatientDemographics, Facility), Observation (ObservationFull, Facility) |"), "{t}");
        assert!(
            t.contains("| clinician | de-identified | group, patient |"),
            "{t}"
        );
        assert!(!t.contains("| clinician | identified"), "{t}");
        assert!(
            !t.contains("| patient |") && !t.contains("| admin |"),
            "{t}"
        );
    }
}
