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

/// The operator at the server's command line (`custodian export`, docs/export.md#the-command-line)
/// exports what a backend service may: its grants, views and levels. The operator holds
/// the server's configuration and keys, so a wider grant would add nothing it could not
/// take; narrower is the minimum necessary.
pub const OPERATOR: Role = Role::Service;

/// What `custodian export` may export of `kind` at `level` ([`OPERATOR`]'s grant).
pub fn decide_operator(kind: Kind, level: Level) -> Result<Vec<Part>, DenyReason> {
    decide(&[OPERATOR], kind, level)
}

/// The Bulk Data operations, each a route of its own ([`crate::policy::Action::Export`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Operation {
    /// Kick-off at a level (`GET …/$export` with `Prefer: respond-async`).
    KickOff(Level),
    /// Polling the status URL (`GET /fhir/$export-status/{id}`).
    Status,
    /// Cancelling (`DELETE /fhir/$export-status/{id}`): the job and its files go.
    Cancel,
    /// Downloading one output file by its short-lived link.
    Download,
}

/// Whether `roles`, with a token that allows searching what `scope_allows` says, may
/// call `op` at all (before anything the request names is looked at): a kick-off needs a
/// grant at its level whose types the token may search; polling, cancelling and
/// downloading need some export grant (the job must be the caller's own as well, see
/// [`owns_job`]).
pub fn capability(
    roles: &[Role],
    op: Operation,
    scope_allows: &dyn Fn(ResourceType) -> bool,
) -> Result<(), DenyReason> {
    let levels: &[Level] = match op {
        Operation::KickOff(level) => &[level][..],
        _ => &Level::ALL,
    };
    let mut granted = false;
    for level in levels {
        for kind in Kind::ALL {
            if let Ok(parts) = decide(roles, kind, *level) {
                granted = true;
                if parts.iter().any(|p| scope_allows(p.resource)) {
                    return Ok(());
                }
            }
        }
    }
    Err(if granted {
        DenyReason::ScopeMissing
    } else {
        DenyReason::RoleMissing
    })
}

/// The kind an export is when the caller names none: de-identified whenever the caller
/// may have it (minimum necessary), identified only for a role granted nothing else.
pub fn default_kind(roles: &[Role], level: Level) -> Kind {
    if decide(roles, Kind::Deidentified, level).is_ok() {
        Kind::Deidentified
    } else {
        Kind::Identified
    }
}

/// The search scope an export runs in: the caller's search scope without break-glass
/// grants (emergency access to one patient never widens a bulk export).
pub fn export_scope(scope: super::SearchScope) -> super::SearchScope {
    match scope {
        super::SearchScope::CareTeamAndGrants(user, _) => super::SearchScope::CareTeam(user),
        other => other,
    }
}

/// A Group-level export names its group: the care team (the caller's user id) or the
/// facility whose patients the caller's scope covers. Any other group is unknown to the
/// caller (404), so a group never widens what the caller may search.
pub fn group_matches(scope: super::SearchScope, group: uuid::Uuid) -> bool {
    match scope {
        super::SearchScope::CareTeam(user) | super::SearchScope::CareTeamAndGrants(user, _) => {
            user.as_uuid() == group
        }
        super::SearchScope::Facility(facility) => facility.as_uuid() == group,
        super::SearchScope::OnePatient(_) => false,
    }
}

/// A job is seen, cancelled and downloaded only by the person or service that started
/// it; to anyone else it does not exist.
pub fn owns_job(caller: crate::domain::UserId, requester: crate::domain::UserId) -> bool {
    caller == requester
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
    fn export_capability_needs_a_grant_and_a_scope_of_one_of_its_types() {
        let all = |_: ResourceType| true;
        let none = |_: ResourceType| false;
        let claims_only = |r: ResourceType| r == ResourceType::Claim;
        for role in Role::ALL {
            for op in [
                Operation::KickOff(Level::System),
                Operation::KickOff(Level::Group),
                Operation::KickOff(Level::Patient),
                Operation::Status,
                Operation::Cancel,
                Operation::Download,
            ] {
                let granted = match op {
                    Operation::KickOff(level) => {
                        Kind::ALL.iter().any(|k| decide(&[role], *k, level).is_ok())
                    }
                    _ => GRANTS.iter().any(|(r, _)| *r == role),
                };
                let got = capability(&[role], op, &all);
                assert_eq!(got.is_ok(), granted, "{role:?} {op:?}");
                if granted {
                    assert_eq!(
                        capability(&[role], op, &none),
                        Err(DenyReason::ScopeMissing)
                    );
                } else {
                    assert_eq!(got, Err(DenyReason::RoleMissing));
                }
            }
        }
        // A clinician's token that may search claims only: clinicians export no claims.
        assert_eq!(
            capability(
                &[Role::Clinician],
                Operation::KickOff(Level::Patient),
                &claims_only
            ),
            Err(DenyReason::ScopeMissing)
        );
    }

    #[test]
    fn the_default_kind_is_de_identified_and_grants_stay_out_of_exports() {
        for role in [Role::Clinician, Role::Billing, Role::Service] {
            assert_eq!(default_kind(&[role], Level::Patient), Kind::Deidentified);
        }
        let user = crate::domain::UserId::new();
        let at = chrono::Utc::now();
        assert_eq!(
            export_scope(super::super::SearchScope::CareTeamAndGrants(user, at)),
            super::super::SearchScope::CareTeam(user)
        );
        assert!(group_matches(
            super::super::SearchScope::CareTeam(user),
            user.as_uuid()
        ));
        assert!(!group_matches(
            super::super::SearchScope::CareTeam(user),
            uuid::Uuid::new_v4()
        ));
        assert!(owns_job(user, user));
        assert!(!owns_job(user, crate::domain::UserId::new()));
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
