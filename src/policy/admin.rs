//! The role rules of administration, in one place: who may use the console at all, which
//! console pages need the `admin` role, which roles a service client may hold, and the
//! separation-of-duties rules about one's own account. The console, the JSON admin API
//! and the `custodian admin` CLI ask these functions; none of them checks roles itself.
//! [`markdown_table`] prints the rules (part of `custodian policy`), computed from the
//! functions themselves so the documentation cannot drift from the code.

use super::{DenyReason, Role, decide_admin};
use crate::domain::UserId;

/// What an administration API route does: the route table declares it (as
/// [`super::Action::Admin`]) so that an event recorded for a request refused before its
/// handler ran (no token, bad body) names the real action, not a generic one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AdminAction {
    ListUsers,
    ReadUser,
    /// Grant or remove a role.
    ChangeRole,
    /// Disable, enable or move a user to another facility.
    ChangeUser,
    ChangeCareTeam,
    ListFacilities,
    CreateFacility,
    RegisterClient,
    /// Set a patient record's confidentiality (N, R, V).
    SetConfidentiality,
    /// Read a patient record's confidentiality and its history.
    ReadConfidentiality,
    /// End a break-glass grant early.
    RevokeBreakGlass,
    /// Register a webhook endpoint.
    CreateWebhookEndpoint,
    /// Disable a webhook endpoint or replace its signing secret.
    ChangeWebhookEndpoint,
    /// Queue a webhook delivery again.
    RedeliverWebhook,
}

impl AdminAction {
    pub const ALL: [AdminAction; 14] = [
        AdminAction::ListUsers,
        AdminAction::ReadUser,
        AdminAction::ChangeRole,
        AdminAction::ChangeUser,
        AdminAction::ChangeCareTeam,
        AdminAction::ListFacilities,
        AdminAction::CreateFacility,
        AdminAction::RegisterClient,
        AdminAction::SetConfidentiality,
        AdminAction::ReadConfidentiality,
        AdminAction::RevokeBreakGlass,
        AdminAction::CreateWebhookEndpoint,
        AdminAction::ChangeWebhookEndpoint,
        AdminAction::RedeliverWebhook,
    ];
}

/// May this user sign in to the admin console (and keep their session)? Only people who
/// hold `admin` or `privacy_officer` now, and are not disabled.
pub fn console_admission(roles: &[Role], disabled: bool) -> bool {
    !disabled && roles.iter().any(|r| CONSOLE_ROLES.contains(r))
}

/// The roles that admit a person to the console.
pub const CONSOLE_ROLES: [Role; 2] = [Role::Admin, Role::PrivacyOfficer];

/// The parts of the console, by who may open them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConsoleArea {
    /// Dashboard, recent audit events, sign-out: every console user.
    Any,
    /// Users, clients, every change and its step-up: administrators only (a privacy
    /// officer reviews, but does not change who may do what).
    AdminOnly,
}

/// May a console user with these roles open a page of this area? The console session
/// stands in for the API token's `admin` scope, so the role alone decides.
pub fn console_area(roles: &[Role], area: ConsoleArea) -> Result<(), DenyReason> {
    if !roles.iter().any(|r| CONSOLE_ROLES.contains(r)) {
        return Err(DenyReason::RoleMissing);
    }
    match area {
        ConsoleArea::Any => Ok(()),
        ConsoleArea::AdminOnly => decide_admin(roles, true),
    }
}

/// Roles a service client (client-credentials) may never hold: clients act for software,
/// not for an accountable person, so they get neither administration, privacy review nor
/// a patient's own-record access.
pub const NOT_FOR_CLIENTS: [Role; 3] = [Role::Admin, Role::PrivacyOfficer, Role::Patient];

/// May a service client hold this role?
pub fn client_may_hold(role: Role) -> bool {
    !NOT_FOR_CLIENTS.contains(&role)
}

/// Why a change is refused outright (separation of duties).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SelfChange {
    /// Nobody changes their own access (roles, care teams, facility, account): another
    /// administrator must.
    OwnAccess,
    /// Nobody approves or denies a change they requested, nor one to their own access.
    OwnApproval,
}

/// A change to a person's access, as the separation-of-duties rules see it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AccessChange {
    GrantRole(Role),
    RevokeRole(Role),
    AddCareTeam,
    RemoveCareTeam,
    SetFacility,
    /// Disable (`true`) or enable (`false`) the account.
    SetDisabled(bool),
}

impl AccessChange {
    /// Every change, for exhaustive tests and the printed rules.
    pub fn all() -> Vec<AccessChange> {
        let mut all: Vec<AccessChange> =
            Role::ALL.into_iter().map(AccessChange::GrantRole).collect();
        all.extend(Role::ALL.into_iter().map(AccessChange::RevokeRole));
        all.extend([
            AccessChange::AddCareTeam,
            AccessChange::RemoveCareTeam,
            AccessChange::SetFacility,
            AccessChange::SetDisabled(true),
            AccessChange::SetDisabled(false),
        ]);
        all
    }
}

/// What the rules say about an access change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The acting administrator may make it alone.
    Allowed,
    /// It would give a holder of `admin` or `privacy_officer` a path to PHI: it is kept as
    /// a pending change until a second administrator approves it.
    NeedsApproval,
    /// Refused, whoever approves.
    Refused(SelfChange),
}

/// Roles that reach PHI: every role with a row in the access [`matrix`](super::matrix).
pub fn reaches_phi(role: Role) -> bool {
    super::matrix::MATRIX.iter().any(|g| g.role == role)
}

/// Roles whose access follows the holder's facility (a facility move changes what they
/// may see): every role with a facility-basis row in the matrix.
pub fn facility_basis(role: Role) -> bool {
    super::matrix::MATRIX
        .iter()
        .any(|g| g.role == role && g.relationship == super::matrix::Relationship::Facility)
}

/// The separation-of-duties decision for `change` by `actor` (`None`: the server's own
/// CLI, which acts for no account) to `target`, who holds `roles` now.
///
/// - Nobody changes their own access (roles, care teams, facility, account).
/// - A change that would give a person holding `admin` or `privacy_officer` a path to PHI
///   — a PHI role, a care-team membership, a facility move while holding a facility-basis
///   role, or a console role while holding a PHI role — needs a second administrator.
/// - Everything else (removals, changes to people without a console role) is allowed.
pub fn judge_change(
    actor: Option<UserId>,
    target: UserId,
    roles: &[Role],
    change: AccessChange,
) -> Verdict {
    if actor == Some(target) {
        return Verdict::Refused(SelfChange::OwnAccess);
    }
    let console = |rs: &[Role]| rs.iter().any(|r| CONSOLE_ROLES.contains(r));
    let phi = |rs: &[Role]| rs.iter().any(|r| reaches_phi(*r));
    let gives_phi = match change {
        AccessChange::GrantRole(role) if roles.contains(&role) => false,
        AccessChange::GrantRole(role) if reaches_phi(role) => console(roles),
        AccessChange::GrantRole(role) if CONSOLE_ROLES.contains(&role) => phi(roles),
        AccessChange::GrantRole(_) => false,
        AccessChange::AddCareTeam => console(roles),
        AccessChange::SetFacility => console(roles) && roles.iter().any(|r| facility_basis(*r)),
        AccessChange::RevokeRole(_)
        | AccessChange::RemoveCareTeam
        | AccessChange::SetDisabled(_) => false,
    };
    if gives_phi {
        Verdict::NeedsApproval
    } else {
        Verdict::Allowed
    }
}

/// May `approver` approve or deny a pending change that `requester` asked for, about
/// `target` (the person whose access it changes, if any)?
pub fn may_decide(
    approver: UserId,
    requester: UserId,
    target: Option<UserId>,
) -> Result<(), SelfChange> {
    if approver == requester || Some(approver) == target {
        return Err(SelfChange::OwnApproval);
    }
    Ok(())
}

fn names(roles: impl Iterator<Item = Role>) -> String {
    roles.map(Role::as_str).collect::<Vec<_>>().join(", ")
}

/// The administration rules as a Markdown table (printed after the access matrix by
/// `custodian policy`). Each row is computed from the rule it documents.
pub fn markdown_table() -> String {
    let alone = |pred: &dyn Fn(&[Role]) -> bool| {
        names(
            Role::ALL
                .into_iter()
                .filter(|r| pred(std::slice::from_ref(r))),
        )
    };
    let console = alone(&|r| console_admission(r, false));
    let any = alone(&|r| console_area(r, ConsoleArea::Any).is_ok());
    let admin_only = alone(&|r| console_area(r, ConsoleArea::AdminOnly).is_ok());
    let api = alone(&|r| decide_admin(r, true).is_ok());
    let clients = names(Role::ALL.into_iter().filter(|r| client_may_hold(*r)));
    let me = UserId(uuid::Uuid::from_u128(1));
    let other = UserId(uuid::Uuid::from_u128(2));
    let verdict = |v: Verdict| match v {
        Verdict::Allowed => "allowed",
        Verdict::NeedsApproval => "needs a second administrator's approval",
        Verdict::Refused(_) => "refused: another administrator must",
    };
    // One row for every own change: the unit tests prove every change gets this verdict.
    let own = verdict(judge_change(
        Some(me),
        me,
        &[Role::Admin],
        AccessChange::SetDisabled(true),
    ));
    let phi_roles = names(Role::ALL.into_iter().filter(|r| reaches_phi(*r)));
    let facility_roles = names(Role::ALL.into_iter().filter(|r| facility_basis(*r)));
    let grant_phi = verdict(judge_change(
        Some(other),
        me,
        &[Role::Admin],
        AccessChange::GrantRole(Role::Clinician),
    ));
    let grant_console = verdict(judge_change(
        Some(other),
        me,
        &[Role::Clinician],
        AccessChange::GrantRole(Role::Admin),
    ));
    let care = verdict(judge_change(
        Some(other),
        me,
        &[Role::PrivacyOfficer],
        AccessChange::AddCareTeam,
    ));
    let facility = verdict(judge_change(
        Some(other),
        me,
        &[Role::Admin, Role::Billing],
        AccessChange::SetFacility,
    ));
    let plain = verdict(judge_change(
        Some(other),
        me,
        &[Role::Clinician],
        AccessChange::AddCareTeam,
    ));
    let removal = verdict(judge_change(
        Some(other),
        me,
        &[Role::Admin, Role::Clinician],
        AccessChange::RevokeRole(Role::Clinician),
    ));
    let approve_own = if may_decide(me, me, None).is_ok() {
        "allowed"
    } else {
        "refused: another administrator must"
    };
    let approve_self = if may_decide(me, other, Some(me)).is_ok() {
        "allowed"
    } else {
        "refused: another administrator must"
    };
    format!(
        "| Administration rule | Who |\n|---|---|\n\
         | Sign in to the admin console (not disabled) | {console} |\n\
         | Console: dashboard, recent audit events | {any} |\n\
         | Console: users, clients, every change and its step-up, the approval queue | {admin_only} |\n\
         | Administration API (role AND the token's `admin` scope) | {api} |\n\
         | Roles a service client may hold | {clients} |\n\
         | Change your own access (roles, care teams, facility, disable/enable) | {own} |\n\
         | Grant a role that reaches PHI ({phi_roles}) to a holder of admin or privacy_officer | {grant_phi} |\n\
         | Grant admin or privacy_officer to a holder of a role that reaches PHI | {grant_console} |\n\
         | Add a holder of admin or privacy_officer to a care team | {care} |\n\
         | Move a holder of admin or privacy_officer with a facility-basis role ({facility_roles}) | {facility} |\n\
         | Grant or add access for a person without admin or privacy_officer | {plain} |\n\
         | Remove access (roles, care teams) | {removal} |\n\
         | Approve or deny a change you requested | {approve_own} |\n\
         | Approve or deny a change to your own access | {approve_self} |\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every set of roles (2^6 of them).
    fn role_sets() -> Vec<Vec<Role>> {
        (0u32..(1 << Role::ALL.len()))
            .map(|mask| {
                Role::ALL
                    .into_iter()
                    .enumerate()
                    .filter(|(i, _)| mask & (1 << i) != 0)
                    .map(|(_, r)| r)
                    .collect()
            })
            .collect()
    }

    #[test]
    fn console_admission_needs_admin_or_privacy_officer_and_an_enabled_account() {
        for roles in role_sets() {
            let expected = roles.contains(&Role::Admin) || roles.contains(&Role::PrivacyOfficer);
            assert_eq!(console_admission(&roles, false), expected, "{roles:?}");
            assert!(!console_admission(&roles, true), "{roles:?} disabled");
        }
    }

    #[test]
    fn admin_only_pages_need_the_admin_role_and_other_pages_any_console_role() {
        for roles in role_sets() {
            let admin = roles.contains(&Role::Admin);
            let console = admin || roles.contains(&Role::PrivacyOfficer);
            assert_eq!(
                console_area(&roles, ConsoleArea::Any).is_ok(),
                console,
                "{roles:?}"
            );
            assert_eq!(
                console_area(&roles, ConsoleArea::AdminOnly).is_ok(),
                admin,
                "{roles:?}"
            );
        }
        assert_eq!(
            console_area(&[Role::PrivacyOfficer], ConsoleArea::AdminOnly),
            Err(DenyReason::RoleMissing)
        );
    }

    #[test]
    fn clients_may_hold_only_roles_that_act_for_software() {
        for role in Role::ALL {
            let expected = matches!(role, Role::Clinician | Role::Billing | Role::Service);
            assert_eq!(client_may_hold(role), expected, "{role:?}");
        }
    }

    /// The separation-of-duties rules as the documentation states them, written
    /// independently of [`judge_change`]: checked for every actor (self, another
    /// administrator, the CLI) × every role set of the target × every change.
    fn expected(is_self: bool, roles: &[Role], change: AccessChange) -> Verdict {
        use AccessChange::*;
        if is_self {
            return Verdict::Refused(SelfChange::OwnAccess);
        }
        let console = roles.contains(&Role::Admin) || roles.contains(&Role::PrivacyOfficer);
        let phi_roles = [Role::Clinician, Role::Billing, Role::Patient, Role::Service];
        let holds_phi_role = roles.iter().any(|r| phi_roles.contains(r));
        let needs = match change {
            GrantRole(r) if roles.contains(&r) => false,
            GrantRole(Role::Admin | Role::PrivacyOfficer) => holds_phi_role,
            GrantRole(_) => console,
            AddCareTeam => console,
            SetFacility => {
                // Clinicians register patients at their facility; billing and services
                // see their facility's patients.
                console
                    && roles
                        .iter()
                        .any(|r| matches!(r, Role::Clinician | Role::Billing | Role::Service))
            }
            RevokeRole(_) | RemoveCareTeam | SetDisabled(_) => false,
        };
        if needs {
            Verdict::NeedsApproval
        } else {
            Verdict::Allowed
        }
    }

    #[test]
    fn every_actor_target_and_change_matches_the_documented_rules() {
        let (me, other) = (UserId::new(), UserId::new());
        let changes = AccessChange::all();
        assert_eq!(changes.len(), 2 * Role::ALL.len() + 5);
        for roles in role_sets() {
            for change in &changes {
                let change = *change;
                assert_eq!(
                    judge_change(Some(me), me, &roles, change),
                    expected(true, &roles, change),
                    "self {roles:?} {change:?}"
                );
                assert_eq!(
                    judge_change(Some(other), me, &roles, change),
                    expected(false, &roles, change),
                    "other {roles:?} {change:?}"
                );
                // The server's own CLI acts for no account: no self rule, same two-person rule.
                assert_eq!(
                    judge_change(None, me, &roles, change),
                    expected(false, &roles, change),
                    "cli {roles:?} {change:?}"
                );
            }
        }
    }

    #[test]
    fn the_reported_attack_needs_a_second_administrator() {
        // admin.demo grants itself clinician and joins a care team: refused outright.
        let me = UserId::new();
        for change in [
            AccessChange::GrantRole(Role::Clinician),
            AccessChange::AddCareTeam,
            AccessChange::SetFacility,
        ] {
            assert_eq!(
                judge_change(Some(me), me, &[Role::Admin], change),
                Verdict::Refused(SelfChange::OwnAccess)
            );
            // Another administrator may only request it.
            let verdict = judge_change(
                Some(UserId::new()),
                me,
                &[Role::Admin, Role::Billing],
                change,
            );
            assert_eq!(verdict, Verdict::NeedsApproval, "{change:?}");
        }
    }

    #[test]
    fn phi_and_facility_roles_come_from_the_matrix() {
        for role in Role::ALL {
            let phi = matches!(
                role,
                Role::Clinician | Role::Billing | Role::Patient | Role::Service
            );
            assert_eq!(reaches_phi(role), phi, "{role:?}");
            let facility = matches!(role, Role::Billing | Role::Service | Role::Clinician);
            assert_eq!(facility_basis(role), facility, "{role:?}");
        }
    }

    #[test]
    fn nobody_decides_their_own_request_or_a_change_to_themselves() {
        let (a, b, c) = (UserId::new(), UserId::new(), UserId::new());
        assert_eq!(may_decide(a, a, Some(c)), Err(SelfChange::OwnApproval));
        assert_eq!(may_decide(a, b, Some(a)), Err(SelfChange::OwnApproval));
        assert_eq!(may_decide(a, a, None), Err(SelfChange::OwnApproval));
        assert_eq!(may_decide(a, b, Some(c)), Ok(()));
        assert_eq!(may_decide(a, b, None), Ok(()));
    }

    #[test]
    fn the_printed_rules_follow_the_functions() {
        let t = markdown_table();
        assert!(
            t.contains("| Sign in to the admin console (not disabled) | admin, privacy_officer |"),
            "{t}"
        );
        assert!(
            t.contains("| Console: users, clients, every change and its step-up, the approval queue | admin |"),
            "{t}"
        );
        assert!(
            t.contains("| Roles a service client may hold | clinician, billing, service |"),
            "{t}"
        );
        assert!(
            t.contains(
                "| Change your own access (roles, care teams, facility, disable/enable) | refused"
            ),
            "{t}"
        );
        assert!(t.contains("to a holder of admin or privacy_officer | needs a second administrator's approval |"), "{t}");
        assert!(
            t.contains("| Approve or deny a change you requested | refused"),
            "{t}"
        );
    }
}
