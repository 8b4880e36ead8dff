//! The one policy decision point. Every route declares the [`Action`] it performs; every
//! access to a FHIR resource is decided by [`decide`] from the principal (roles from our
//! database, scopes from the token) and the target (the patient's facility and care team).
//! Handlers never check roles themselves.

pub mod admin;
pub mod break_glass;
pub mod cases;
pub mod confidentiality;
pub mod export;
pub mod matrix;
pub mod reidentify;
pub mod review;
pub mod views;

pub use confidentiality::Confidentiality;
pub use matrix::{Interaction, ResourceType, Role, View};

use crate::domain::{FacilityId, GrantId, PatientId, UserId};

/// What a route does, in policy terms.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// No authentication and no PHI: health, readiness, metadata, static assets.
    Public,
    /// A FHIR interaction on a resource type.
    Fhir(ResourceType, Interaction),
    /// The administration API (users, roles, care teams, facilities, clients), with what
    /// the route does (the audit action of events recorded for it).
    Admin(admin::AdminAction),
    /// Admin console sign-in steps (OIDC redirect and callback, TOTP): a pre-login or
    /// partly signed-in console session, checked by the handler.
    ConsoleSignIn,
    /// An admin console page: a fully signed-in session (OIDC + TOTP) of a user who holds
    /// `admin` or `privacy_officer` in our database, checked on every request.
    Console,
    /// A break-glass operation on a patient (FHIR API, [`break_glass`]): the token must
    /// allow reading Patients and the person must hold a role that may break glass
    /// ([`capability_break_glass`]).
    BreakGlass(break_glass::Operation),
    /// Reading the audit trail as FHIR `AuditEvent` resources (read or search): the
    /// token's `audit.read` scope and a role [`review::trail_scope`] admits.
    AuditTrail(Interaction),
    /// A Bulk Data export operation ([`export::Operation`]): the person must hold an
    /// export grant and the token a scope of one of its types
    /// ([`export::capability`]); jobs belong to their requester only.
    Export(export::Operation),
}

/// The SMART launch context a scope is granted in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Context {
    /// `user/`: whatever the signed-in user may access.
    User,
    /// `patient/`: only the patient in the launch context.
    Patient,
    /// `system/`: a backend service (client credentials), no user.
    System,
}

/// Which SMART context a principal's scopes are read in: a service (client credentials)
/// acts in `system/`; a person who holds only the `patient` role acts in `patient/`;
/// every other person in `user/`.
pub fn smart_context(is_service: bool, roles: &[Role]) -> Context {
    if is_service {
        Context::System
    } else if roles == [Role::Patient] {
        Context::Patient
    } else {
        Context::User
    }
}

/// Who the request acts for, as far as policy is concerned.
#[derive(Clone)]
pub struct Subject<'a> {
    pub user_id: UserId,
    pub roles: &'a [Role],
    /// Does the client application's token allow this interaction (SMART scopes)?
    pub scope_allows: &'a dyn Fn(ResourceType, Interaction) -> bool,
    pub facility_id: Option<FacilityId>,
    /// The patient record a `patient` user is linked to.
    pub own_patient_id: Option<PatientId>,
    /// When the decision is made (the application clock): a break-glass grant widens a
    /// search until its expiry ([`SearchScope::CareTeamAndGrants`]).
    pub now: chrono::DateTime<chrono::Utc>,
}

/// The facts about the patient a request touches, loaded before deciding.
#[derive(Clone, Copy, Debug)]
pub struct PatientFacts {
    pub patient_id: PatientId,
    pub facility_id: FacilityId,
    /// The principal is on this patient's care team.
    pub on_care_team: bool,
    /// The record's confidentiality (N, R, V).
    pub confidentiality: Confidentiality,
    /// The principal's active, unexpired break-glass grant for this patient.
    pub grant: Option<GrantId>,
}

impl PatientFacts {
    /// The facts of a patient with no restriction and no grant.
    pub fn normal(patient_id: PatientId, facility_id: FacilityId, on_care_team: bool) -> Self {
        PatientFacts {
            patient_id,
            facility_id,
            on_care_team,
            confidentiality: Confidentiality::Normal,
            grant: None,
        }
    }
}

/// What is being accessed.
#[derive(Clone, Copy, Debug)]
pub enum Target {
    /// One patient's data (a read, update or delete, or a create for that patient).
    Patient(PatientFacts),
    /// A search: the result is restricted by the permit's [`SearchScope`].
    Search,
}

/// Which rows a permitted search may return.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SearchScope {
    /// Patients whose care team includes the user.
    CareTeam(UserId),
    /// Patients managed by the facility.
    Facility(FacilityId),
    /// One patient (the user's own record).
    OnePatient(PatientId),
    /// Patients whose care team includes the user, and those the user holds a
    /// break-glass grant for that is active at the given time (a role that may break
    /// glass): what a grant opens by id, it opens in searches too.
    CareTeamAndGrants(UserId, chrono::DateTime<chrono::Utc>),
}

/// Why access was granted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Basis {
    CareTeam,
    Facility,
    OwnRecord,
    /// An active break-glass grant ([`break_glass`]): every event of the access carries
    /// the grant id and the purpose of use BTG.
    BreakGlass(GrantId),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    Permit {
        view: View,
        basis: Basis,
        search: Option<SearchScope>,
    },
    Deny(DenyReason),
}

/// Coded reasons, safe to show and to audit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DenyReason {
    /// The client application's token lacks the scope.
    ScopeMissing,
    /// No role of the user grants this interaction on this resource type.
    RoleMissing,
    /// The user has no relationship (care team, facility, own record) with the patient.
    NoRelationship,
    /// No relationship, or one the record's confidentiality does not admit — and the
    /// principal may break glass: told so (403), where others get "no such record".
    BreakGlassAvailable,
}

impl DenyReason {
    pub fn code(self) -> &'static str {
        match self {
            DenyReason::ScopeMissing => "scope-missing",
            DenyReason::RoleMissing => "role-missing",
            DenyReason::NoRelationship => "no-relationship",
            DenyReason::BreakGlassAvailable => "break-glass-available",
        }
    }

    /// What the caller is told: *that* access was denied and which capability is missing.
    pub fn message(self) -> &'static str {
        match self {
            DenyReason::ScopeMissing => {
                "Access denied: the access token does not carry a scope for this interaction."
            }
            DenyReason::RoleMissing => {
                "Access denied: your role does not permit this interaction on this resource type."
            }
            DenyReason::NoRelationship => {
                "Access denied: you have no care relationship with this patient."
            }
            DenyReason::BreakGlassAvailable => break_glass::AVAILABLE_MESSAGE,
        }
    }
}

/// The part of [`decide`] that depends on the principal alone: a scope for the
/// interaction and a role that grants it. The access pipeline asks this before it looks
/// anything up, so that a missing scope or role is answered the same whether the record
/// (or patient) named by the request exists or not.
pub fn capability(
    subject: &Subject<'_>,
    resource: ResourceType,
    interaction: Interaction,
) -> Result<(), DenyReason> {
    if !(subject.scope_allows)(resource, interaction) {
        return Err(DenyReason::ScopeMissing);
    }
    let granted = subject
        .roles
        .iter()
        .any(|role| matrix::grant(*role, resource, interaction).is_some());
    if !granted {
        return Err(DenyReason::RoleMissing);
    }
    Ok(())
}

/// The decision point. Access = scope ∩ role ∩ relationship ∩ confidentiality; the
/// first role that grants the interaction with a satisfied relationship that the record's
/// confidentiality admits ([`confidentiality::admits`]) decides the view. Failing that,
/// an active break-glass grant stands in for the care-team relationship of a role that
/// may break glass ([`break_glass::may_break_glass`]), with that role's view. A principal
/// who could break glass but has no grant is told so ([`DenyReason::BreakGlassAvailable`]).
/// Its scope and role part is [`capability`].
pub fn decide(
    subject: &Subject<'_>,
    resource: ResourceType,
    interaction: Interaction,
    target: Target,
) -> Decision {
    if let Err(reason) = capability(subject, resource, interaction) {
        return Decision::Deny(reason);
    }
    let grants: Vec<&matrix::Grant> = subject
        .roles
        .iter()
        .filter_map(|role| matrix::grant(*role, resource, interaction))
        .collect();
    for grant in &grants {
        if let Some((basis, search)) = relationship(subject, grant.relationship, target)
            && admitted(basis, target)
        {
            // A role that may break glass also finds the patients its active grants open.
            let search = match search {
                Some(SearchScope::CareTeam(user))
                    if break_glass::may_break_glass(&[grant.role]) =>
                {
                    Some(SearchScope::CareTeamAndGrants(user, subject.now))
                }
                other => other,
            };
            return Decision::Permit {
                view: grant.view,
                basis,
                search,
            };
        }
    }
    // Break-glass: only on one patient's data, only through a care-team row of a role
    // that may break glass.
    let Target::Patient(facts) = target else {
        return Decision::Deny(DenyReason::NoRelationship);
    };
    let glass = grants.iter().find(|g| {
        g.relationship == matrix::Relationship::CareTeam && break_glass::may_break_glass(&[g.role])
    });
    match (glass, facts.grant) {
        (Some(g), Some(id)) => Decision::Permit {
            view: g.view,
            basis: Basis::BreakGlass(id),
            search: None,
        },
        (Some(_), None) => Decision::Deny(DenyReason::BreakGlassAvailable),
        (None, _) => Decision::Deny(DenyReason::NoRelationship),
    }
}

/// Whether the record's confidentiality admits a permit on `basis` (a search carries the
/// rule into its SQL instead: `db/scope.rs`).
fn admitted(basis: Basis, target: Target) -> bool {
    match target {
        Target::Patient(facts) => confidentiality::admits(basis, facts.confidentiality),
        Target::Search => true,
    }
}

/// The target-independent decision on a break-glass operation ([`Action::BreakGlass`]):
/// a token scope to read Patients, and a role that may break glass.
pub fn capability_break_glass(subject: &Subject<'_>) -> Result<(), DenyReason> {
    if !(subject.scope_allows)(ResourceType::Patient, Interaction::Read) {
        return Err(DenyReason::ScopeMissing);
    }
    if !break_glass::may_break_glass(subject.roles) {
        return Err(DenyReason::RoleMissing);
    }
    Ok(())
}

/// The decision for the administration API ([`Action::Admin`]): the person must hold the
/// `admin` role (from our database) AND the client application's token must carry the
/// `admin` scope alias. Neither alone is enough. Admin access grants no clinical PHI: the
/// [`matrix`] has no row for `admin`, so [`decide`] keeps refusing FHIR resources.
pub fn decide_admin(roles: &[Role], scope_admin: bool) -> Result<(), DenyReason> {
    if !scope_admin {
        return Err(DenyReason::ScopeMissing);
    }
    if !roles.contains(&Role::Admin) {
        return Err(DenyReason::RoleMissing);
    }
    Ok(())
}

fn relationship(
    subject: &Subject<'_>,
    needed: matrix::Relationship,
    target: Target,
) -> Option<(Basis, Option<SearchScope>)> {
    use matrix::Relationship as R;
    match (needed, target) {
        (R::CareTeam, Target::Patient(p)) => p.on_care_team.then_some((Basis::CareTeam, None)),
        (R::CareTeam, Target::Search) => Some((
            Basis::CareTeam,
            Some(SearchScope::CareTeam(subject.user_id)),
        )),
        (R::Facility, Target::Patient(p)) => {
            (subject.facility_id == Some(p.facility_id)).then_some((Basis::Facility, None))
        }
        (R::Facility, Target::Search) => subject
            .facility_id
            .map(|f| (Basis::Facility, Some(SearchScope::Facility(f)))),
        (R::OwnRecord, Target::Patient(p)) => {
            (subject.own_patient_id == Some(p.patient_id)).then_some((Basis::OwnRecord, None))
        }
        (R::OwnRecord, Target::Search) => subject
            .own_patient_id
            .map(|p| (Basis::OwnRecord, Some(SearchScope::OnePatient(p)))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Interaction::*;
    use ResourceType as T;

    fn all_scopes(_: T, _: Interaction) -> bool {
        true
    }

    fn subject(roles: &[Role]) -> Subject<'_> {
        Subject {
            user_id: UserId(uuid::Uuid::from_u128(1)),
            now: chrono::DateTime::UNIX_EPOCH,
            roles,
            scope_allows: &all_scopes,
            facility_id: Some(FacilityId(uuid::Uuid::from_u128(10))),
            own_patient_id: None,
        }
    }

    fn patient(on_care_team: bool, facility: u128) -> Target {
        Target::Patient(PatientFacts::normal(
            PatientId(uuid::Uuid::from_u128(100)),
            FacilityId(uuid::Uuid::from_u128(facility)),
            on_care_team,
        ))
    }

    #[test]
    fn clinician_on_care_team_reads_clinical_view() {
        let d = decide(
            &subject(&[Role::Clinician]),
            T::Patient,
            Read,
            patient(true, 99),
        );
        assert_eq!(
            d,
            Decision::Permit {
                view: View::PatientClinical,
                basis: Basis::CareTeam,
                search: None
            }
        );
    }

    #[test]
    fn clinician_outside_care_team_is_denied() {
        // Denied, and told that break-glass is available (clinicians may break glass).
        let d = decide(
            &subject(&[Role::Clinician]),
            T::Patient,
            Read,
            patient(false, 10),
        );
        assert_eq!(d, Decision::Deny(DenyReason::BreakGlassAvailable));
    }

    #[test]
    fn admin_and_privacy_officer_read_no_clinical_phi() {
        for role in [Role::Admin, Role::PrivacyOfficer] {
            for res in [T::Patient, T::Observation, T::DocumentReference, T::Claim] {
                let d = decide(&subject(&[role]), res, Read, patient(true, 10));
                assert_eq!(
                    d,
                    Decision::Deny(DenyReason::RoleMissing),
                    "{role:?} {res:?}"
                );
            }
        }
    }

    #[test]
    fn billing_never_gets_clinical_content() {
        for res in [T::Observation, T::DocumentReference] {
            let d = decide(&subject(&[Role::Billing]), res, Read, patient(true, 10));
            assert_eq!(d, Decision::Deny(DenyReason::RoleMissing));
        }
        let d = decide(
            &subject(&[Role::Billing]),
            T::Patient,
            Read,
            patient(false, 10),
        );
        assert!(matches!(
            d,
            Decision::Permit {
                view: View::PatientBilling,
                ..
            }
        ));
    }

    #[test]
    fn patient_reads_only_own_record() {
        let mut s = subject(&[Role::Patient]);
        s.own_patient_id = Some(PatientId(uuid::Uuid::from_u128(100)));
        assert!(matches!(
            decide(&s, T::Patient, Read, patient(false, 1)),
            Decision::Permit { .. }
        ));
        s.own_patient_id = Some(PatientId(uuid::Uuid::from_u128(101)));
        assert_eq!(
            decide(&s, T::Patient, Read, patient(false, 1)),
            Decision::Deny(DenyReason::NoRelationship)
        );
    }

    #[test]
    fn missing_scope_denies_even_with_the_role() {
        fn none(_: T, _: Interaction) -> bool {
            false
        }
        let mut s = subject(&[Role::Clinician]);
        s.scope_allows = &none;
        assert_eq!(
            decide(&s, T::Patient, Read, patient(true, 10)),
            Decision::Deny(DenyReason::ScopeMissing)
        );
    }

    /// `capability` is exactly the target-independent part of `decide`: for every role,
    /// resource, interaction, scope answer and target, `decide` refuses for a missing
    /// scope or role iff `capability` does (with the same reason), and otherwise decides
    /// on the relationship only.
    #[test]
    fn capability_is_the_target_independent_part_of_decide() {
        fn yes(_: T, _: Interaction) -> bool {
            true
        }
        fn no(_: T, _: Interaction) -> bool {
            false
        }
        let targets = [
            patient(true, 10),
            patient(false, 10),
            patient(false, 99),
            Target::Search,
        ];
        let mut role_sets: Vec<Vec<Role>> = vec![vec![]];
        role_sets.extend(Role::ALL.iter().map(|r| vec![*r]));
        role_sets.push(vec![Role::Clinician, Role::Billing]);
        for roles in &role_sets {
            for scope in [yes as fn(T, Interaction) -> bool, no] {
                for resource in T::ALL {
                    for interaction in Interaction::ALL {
                        let mut s = subject(roles);
                        s.scope_allows = &scope;
                        s.own_patient_id = Some(PatientId(uuid::Uuid::from_u128(100)));
                        let capable = capability(&s, resource, interaction);
                        for target in targets {
                            let d = decide(&s, resource, interaction, target);
                            match capable {
                                Err(reason) => assert_eq!(d, Decision::Deny(reason)),
                                Ok(()) => assert!(
                                    !matches!(
                                        d,
                                        Decision::Deny(
                                            DenyReason::ScopeMissing | DenyReason::RoleMissing
                                        )
                                    ),
                                    "{roles:?} {resource:?} {interaction:?}"
                                ),
                            }
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn admin_api_needs_role_and_scope() {
        assert_eq!(decide_admin(&[Role::Admin], true), Ok(()));
        assert_eq!(
            decide_admin(&[Role::Admin], false),
            Err(DenyReason::ScopeMissing)
        );
        for roles in [
            &[Role::Clinician][..],
            &[Role::PrivacyOfficer],
            &[Role::Service],
            &[],
        ] {
            assert_eq!(decide_admin(roles, true), Err(DenyReason::RoleMissing));
        }
    }

    /// The policy as docs/api-fhir.md states it, written independently of the matrix: every
    /// role × resource × interaction is checked against it, with and without a
    /// relationship to the patient.
    fn expected(role: Role, res: T, i: Interaction) -> bool {
        match (role, res) {
            (Role::Clinician, T::Patient) => i != Delete,
            (Role::Clinician, T::Observation) => true,
            (Role::Clinician, T::DocumentReference) => i != Delete,
            (Role::Billing, T::Patient) => matches!(i, Read | Search),
            (Role::Billing, T::Claim) => true,
            (Role::Patient, _) => matches!(i, Read | Search),
            (Role::Service, T::Patient) => matches!(i, Read | Search),
            (Role::Service, T::Observation) => matches!(i, Create | Read | Search),
            _ => false,
        }
    }

    #[test]
    fn every_role_resource_and_interaction_matches_the_documented_policy() {
        let related = Target::Patient(PatientFacts::normal(
            PatientId(uuid::Uuid::from_u128(100)),
            FacilityId(uuid::Uuid::from_u128(10)),
            true,
        ));
        let unrelated = Target::Patient(PatientFacts::normal(
            PatientId(uuid::Uuid::from_u128(200)),
            FacilityId(uuid::Uuid::from_u128(20)),
            false,
        ));
        for role in Role::ALL {
            let roles = [role];
            let mut s = subject(&roles);
            s.own_patient_id = Some(PatientId(uuid::Uuid::from_u128(100)));
            for res in T::ALL {
                for i in Interaction::ALL {
                    let permitted = matches!(decide(&s, res, i, related), Decision::Permit { .. });
                    assert_eq!(permitted, expected(role, res, i), "{role:?} {res:?} {i:?}");
                    let d = decide(&s, res, i, unrelated);
                    assert!(
                        matches!(d, Decision::Deny(_)),
                        "{role:?} {res:?} {i:?} unrelated: {d:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn no_roles_means_no_access() {
        assert_eq!(
            decide(&subject(&[]), T::Patient, Read, patient(true, 10)),
            Decision::Deny(DenyReason::RoleMissing)
        );
    }

    /// The relationship each documented grant needs, written independently of the matrix.
    fn needed(role: Role, res: T, i: Interaction) -> matrix::Relationship {
        use matrix::Relationship as R;
        match (role, res, i) {
            (Role::Clinician, T::Patient, Create) => R::Facility,
            (Role::Clinician, _, _) => R::CareTeam,
            (Role::Patient, _, _) => R::OwnRecord,
            _ => R::Facility,
        }
    }

    /// Confidentiality and break-glass, exhaustively at the decision point: every role ×
    /// resource × interaction × level (N, R, V) × relationship (care team, facility, own
    /// record, each with and without a grant) against the rules of docs/break-glass.md,
    /// written independently of `decide`: R admits the care team, the own record and a
    /// grant (no facility basis); V only the own record and a grant; a grant opens only
    /// what a role that may break glass could do on its care team, with that role's view;
    /// a clinician refused on one patient is told that break-glass is available.
    #[test]
    fn every_role_level_relationship_and_grant_matches_the_break_glass_policy() {
        use matrix::Relationship as R;
        let grant_id = GrantId(uuid::Uuid::from_u128(7));
        let me = PatientId(uuid::Uuid::from_u128(100));
        for role in Role::ALL {
            let roles = [role];
            let mut s = subject(&roles);
            for level in Confidentiality::ALL {
                // (on care team, same facility, own record, grant)
                for bits in 0u8..16 {
                    let (team, facility, own, grant) =
                        (bits & 1 != 0, bits & 2 != 0, bits & 4 != 0, bits & 8 != 0);
                    s.own_patient_id = own.then_some(me);
                    let facts = PatientFacts {
                        patient_id: me,
                        facility_id: FacilityId(uuid::Uuid::from_u128(if facility {
                            10
                        } else {
                            20
                        })),
                        on_care_team: team,
                        confidentiality: level,
                        grant: grant.then_some(grant_id),
                    };
                    for res in T::ALL {
                        for i in Interaction::ALL {
                            let d = decide(&s, res, i, Target::Patient(facts));
                            let case = format!("{role:?} {res:?} {i:?} {level:?} {bits:04b}");
                            if !expected(role, res, i) {
                                assert!(matches!(d, Decision::Deny(_)), "{case}");
                                continue;
                            }
                            let need = needed(role, res, i);
                            let by_relationship = match need {
                                R::CareTeam => team && level != Confidentiality::VeryRestricted,
                                R::Facility => facility && level == Confidentiality::Normal,
                                R::OwnRecord => own,
                            };
                            let glass = role == Role::Clinician && need == R::CareTeam;
                            let want = if by_relationship {
                                "permit"
                            } else if glass && grant {
                                "break-glass"
                            } else if glass {
                                "available"
                            } else {
                                "denied"
                            };
                            let got = match d {
                                Decision::Permit {
                                    basis: Basis::BreakGlass(id),
                                    view,
                                    ..
                                } => {
                                    assert_eq!(id, grant_id, "{case}");
                                    assert_eq!(
                                        view,
                                        matrix::grant(role, res, i).unwrap().view,
                                        "{case}"
                                    );
                                    "break-glass"
                                }
                                Decision::Permit { .. } => "permit",
                                Decision::Deny(DenyReason::BreakGlassAvailable) => "available",
                                Decision::Deny(DenyReason::NoRelationship) => "denied",
                                Decision::Deny(other) => panic!("{case}: {other:?}"),
                            };
                            assert_eq!(got, want, "{case}");
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn a_role_that_may_break_glass_searches_its_care_team_and_its_grants() {
        let s = subject(&[Role::Clinician]);
        let d = decide(&s, T::Observation, Search, Target::Search);
        let Decision::Permit { search, .. } = d else {
            panic!("{d:?}");
        };
        assert_eq!(
            search,
            Some(SearchScope::CareTeamAndGrants(s.user_id, s.now))
        );
        // Roles that may not break glass keep their scope, whatever they search.
        for role in [Role::Billing, Role::Patient, Role::Service] {
            let roles = [role];
            let mut b = subject(&roles);
            b.own_patient_id = Some(PatientId(uuid::Uuid::from_u128(100)));
            for resource in T::ALL {
                let d = decide(&b, resource, Search, Target::Search);
                assert!(
                    !matches!(
                        d,
                        Decision::Permit {
                            search: Some(SearchScope::CareTeamAndGrants(..)),
                            ..
                        }
                    ),
                    "{role:?} {resource:?}"
                );
            }
        }
    }

    #[test]
    fn searches_never_use_a_grant_and_never_hint_at_one() {
        let d = decide(
            &subject(&[Role::Clinician]),
            T::Patient,
            Search,
            Target::Search,
        );
        assert!(matches!(
            d,
            Decision::Permit {
                basis: Basis::CareTeam,
                ..
            }
        ));
    }
}
