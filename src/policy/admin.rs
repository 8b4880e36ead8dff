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
}

impl AdminAction {
    pub const ALL: [AdminAction; 8] = [
        AdminAction::ListUsers,
        AdminAction::ReadUser,
        AdminAction::ChangeRole,
        AdminAction::ChangeUser,
        AdminAction::ChangeCareTeam,
        AdminAction::ListFacilities,
        AdminAction::CreateFacility,
        AdminAction::RegisterClient,
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

/// Why a change to one's own account is refused (separation of duties).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SelfChange {
    /// Nobody removes their own admin role: another administrator must.
    OwnAdminRole,
    /// Nobody disables their own account.
    OwnAccountDisabled,
}

/// May `actor` remove `role` from `target`? (`None` actor: the server's own CLI.)
pub fn may_remove_role(
    actor: Option<UserId>,
    target: UserId,
    role: Role,
) -> Result<(), SelfChange> {
    if actor == Some(target) && role == Role::Admin {
        return Err(SelfChange::OwnAdminRole);
    }
    Ok(())
}

/// May `actor` disable `target`?
pub fn may_disable(actor: Option<UserId>, target: UserId) -> Result<(), SelfChange> {
    if actor == Some(target) {
        return Err(SelfChange::OwnAccountDisabled);
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
    let me = UserId(uuid::Uuid::nil());
    let own_admin = if may_remove_role(Some(me), me, Role::Admin).is_ok() {
        "allowed"
    } else {
        "refused: another administrator must"
    };
    let own_disable = if may_disable(Some(me), me).is_ok() {
        "allowed"
    } else {
        "refused: another administrator must"
    };
    format!(
        "| Administration rule | Who |\n|---|---|\n\
         | Sign in to the admin console (not disabled) | {console} |\n\
         | Console: dashboard, recent audit events | {any} |\n\
         | Console: users, clients, every change and its step-up | {admin_only} |\n\
         | Administration API (role AND the token's `admin` scope) | {api} |\n\
         | Roles a service client may hold | {clients} |\n\
         | Remove your own admin role | {own_admin} |\n\
         | Disable your own account | {own_disable} |\n"
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

    #[test]
    fn nobody_removes_their_own_admin_role_or_disables_themselves() {
        let (me, other) = (UserId::new(), UserId::new());
        for role in Role::ALL {
            let own = may_remove_role(Some(me), me, role);
            if role == Role::Admin {
                assert_eq!(own, Err(SelfChange::OwnAdminRole));
            } else {
                assert_eq!(own, Ok(()), "{role:?}");
            }
            assert_eq!(may_remove_role(Some(me), other, role), Ok(()));
            // The server's own CLI acts for no account.
            assert_eq!(may_remove_role(None, me, role), Ok(()));
        }
        assert_eq!(
            may_disable(Some(me), me),
            Err(SelfChange::OwnAccountDisabled)
        );
        assert_eq!(may_disable(Some(me), other), Ok(()));
        assert_eq!(may_disable(None, me), Ok(()));
    }

    #[test]
    fn the_printed_rules_follow_the_functions() {
        let t = markdown_table();
        assert!(
            t.contains("| Sign in to the admin console (not disabled) | admin, privacy_officer |"),
            "{t}"
        );
        assert!(
            t.contains("| Console: users, clients, every change and its step-up | admin |"),
            "{t}"
        );
        assert!(
            t.contains("| Roles a service client may hold | clinician, billing, service |"),
            "{t}"
        );
        assert!(t.contains("| Remove your own admin role | refused"), "{t}");
    }
}
