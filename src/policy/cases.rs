//! The rules of alert work (privacy officers' response to detections), in one place: who
//! sees the alert list, who opens, assigns, works and closes a case, who suppresses
//! alerts, how a case's status may move, and how long a suppression may last. The
//! console's alert, case and suppression pages ask these functions; none checks roles
//! itself.

use super::Role;
use crate::domain::UserId;
use chrono::{DateTime, Duration, Utc};

/// What a console user does with alerts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AlertWork {
    /// See the alert list and the dashboard counts (ids, codes, explanations; a patient's
    /// MRN only with [`crate::policy::review::Review::IdentifyPatients`]).
    ViewAlerts,
    /// See cases, open one from alerts, add alerts and notes, assign, change status, close.
    WorkCases,
    /// List, create and revoke suppressions.
    ManageSuppressions,
}

impl AlertWork {
    pub const ALL: [AlertWork; 3] = [
        AlertWork::ViewAlerts,
        AlertWork::WorkCases,
        AlertWork::ManageSuppressions,
    ];
}

/// Why alert work was refused; each has a fixed message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The role does not do this work.
    RoleMissing,
    /// The alerts are about the viewer: nobody works a case about themselves, nor
    /// suppresses alerts about themselves (separation of duties).
    AboutSelf,
    /// Only the case's owner changes its status or closes it.
    NotOwner,
    /// A case's owner must be a privacy officer.
    OwnerNotPrivacyOfficer,
    /// A closed case never changes; a case never moves back.
    Transition,
}

impl Refusal {
    pub fn message(self) -> &'static str {
        match self {
            Refusal::RoleMissing => "This part of the console needs the privacy_officer role.",
            Refusal::AboutSelf => {
                "Nobody works a case or a suppression about themselves: another privacy officer must."
            }
            Refusal::NotOwner => "Only the case's owner changes its status or closes it.",
            Refusal::OwnerNotPrivacyOfficer => "A case's owner must hold the privacy_officer role.",
            Refusal::Transition => {
                "A case moves open → investigating → closed, never back; a closed case never changes."
            }
        }
    }
}

/// May a console user with these roles do this work? Administrators see the alert list
/// (the security team watches authentication spikes); only privacy officers work cases
/// and suppressions.
pub fn may(roles: &[Role], what: AlertWork) -> Result<(), Refusal> {
    let allowed: &[Role] = match what {
        AlertWork::ViewAlerts => &[Role::Admin, Role::PrivacyOfficer],
        AlertWork::WorkCases | AlertWork::ManageSuppressions => &[Role::PrivacyOfficer],
    };
    if roles.iter().any(|r| allowed.contains(r)) {
        Ok(())
    } else {
        Err(Refusal::RoleMissing)
    }
}

/// May `me` work (open, add to, note, assign) a case whose alerts are about `subjects`?
pub fn may_work_case(roles: &[Role], me: UserId, subjects: &[UserId]) -> Result<(), Refusal> {
    may(roles, AlertWork::WorkCases)?;
    if subjects.contains(&me) {
        return Err(Refusal::AboutSelf);
    }
    Ok(())
}

/// May `me` assign a case to a user holding `owner_roles`, who is `owner`?
pub fn may_assign(
    roles: &[Role],
    me: UserId,
    subjects: &[UserId],
    owner: UserId,
    owner_roles: &[Role],
) -> Result<(), Refusal> {
    may_work_case(roles, me, subjects)?;
    if !owner_roles.contains(&Role::PrivacyOfficer) {
        return Err(Refusal::OwnerNotPrivacyOfficer);
    }
    if subjects.contains(&owner) {
        return Err(Refusal::AboutSelf);
    }
    Ok(())
}

/// A case's status.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CaseStatus {
    Open,
    Investigating,
    ClosedAppropriate,
    ClosedViolation,
}

impl CaseStatus {
    pub const ALL: [CaseStatus; 4] = [
        CaseStatus::Open,
        CaseStatus::Investigating,
        CaseStatus::ClosedAppropriate,
        CaseStatus::ClosedViolation,
    ];

    pub fn code(self) -> &'static str {
        match self {
            CaseStatus::Open => "open",
            CaseStatus::Investigating => "investigating",
            CaseStatus::ClosedAppropriate => "closed-appropriate",
            CaseStatus::ClosedViolation => "closed-violation",
        }
    }

    pub fn from_code(code: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.code() == code)
    }

    pub fn is_closed(self) -> bool {
        matches!(
            self,
            CaseStatus::ClosedAppropriate | CaseStatus::ClosedViolation
        )
    }
}

/// May the case's status move `from` → `to` by `me` (the owner is `owner`)? Forward only;
/// a closed case never changes; only the owner moves it.
pub fn may_move(
    roles: &[Role],
    me: UserId,
    subjects: &[UserId],
    owner: UserId,
    from: CaseStatus,
    to: CaseStatus,
) -> Result<(), Refusal> {
    may_work_case(roles, me, subjects)?;
    if me != owner {
        return Err(Refusal::NotOwner);
    }
    let forward = match from {
        CaseStatus::Open => to != CaseStatus::Open,
        CaseStatus::Investigating => to.is_closed(),
        CaseStatus::ClosedAppropriate | CaseStatus::ClosedViolation => false,
    };
    if forward {
        Ok(())
    } else {
        Err(Refusal::Transition)
    }
}

/// May `me` add alerts, notes or a new owner to a case in status `status`?
pub fn may_change(
    roles: &[Role],
    me: UserId,
    subjects: &[UserId],
    status: CaseStatus,
) -> Result<(), Refusal> {
    may_work_case(roles, me, subjects)?;
    if status.is_closed() {
        return Err(Refusal::Transition);
    }
    Ok(())
}

macro_rules! sanctions {
    ($( $variant:ident = $code:literal, $label:literal; )*) => {
        /// The sanction recorded when a case closes as a violation (HIPAA
        /// 164.308(a)(1)(ii)(C): apply appropriate sanctions against workforce members who
        /// fail to comply). A code; the details go in the case notes.
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub enum Sanction { $( $variant, )* }

        impl Sanction {
            pub const ALL: &'static [Sanction] = &[ $( Sanction::$variant, )* ];
            pub fn code(self) -> &'static str {
                match self { $( Sanction::$variant => $code, )* }
            }
            pub fn label(self) -> &'static str {
                match self { $( Sanction::$variant => $label, )* }
            }
            pub fn from_code(code: &str) -> Option<Self> {
                match code { $( $code => Some(Sanction::$variant), )* _ => None }
            }
        }
    };
}

sanctions! {
    Retraining = "retraining", "Privacy retraining";
    VerbalWarning = "verbal-warning", "Verbal warning";
    WrittenWarning = "written-warning", "Written warning";
    AccessReduced = "access-reduced", "Access reduced or removed";
    Suspension = "suspension", "Suspension";
    Termination = "termination", "Termination";
    Other = "other", "Other (see the notes)";
}

/// Longest case note or suppression reason (characters).
pub const TEXT_MAX: usize = 2000;
/// Longest a suppression may last (days): a relationship is re-confirmed at least yearly.
pub const SUPPRESSION_MAX_DAYS: i64 = 365;

/// Is `expires` a valid suppression expiry at `now`? After now and at most
/// [`SUPPRESSION_MAX_DAYS`] ahead.
pub fn suppression_expiry_ok(now: DateTime<Utc>, expires: DateTime<Utc>) -> bool {
    expires > now && expires <= now + Duration::days(SUPPRESSION_MAX_DAYS)
}

/// May `me` create a suppression of alerts about `person`? Privacy officers, never about
/// themselves.
pub fn may_suppress(roles: &[Role], me: UserId, person: UserId) -> Result<(), Refusal> {
    may(roles, AlertWork::ManageSuppressions)?;
    if me == person {
        return Err(Refusal::AboutSelf);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u128) -> UserId {
        UserId(uuid::Uuid::from_u128(n))
    }

    #[test]
    fn admins_and_privacy_officers_see_alerts_only_privacy_officers_work_them() {
        for role in Role::ALL {
            for what in AlertWork::ALL {
                let want = match what {
                    AlertWork::ViewAlerts => matches!(role, Role::Admin | Role::PrivacyOfficer),
                    _ => role == Role::PrivacyOfficer,
                };
                assert_eq!(may(&[role], what).is_ok(), want, "{role:?} {what:?}");
            }
        }
        assert_eq!(may(&[], AlertWork::ViewAlerts), Err(Refusal::RoleMissing));
    }

    #[test]
    fn nobody_works_a_case_about_themselves() {
        let po = [Role::PrivacyOfficer];
        assert!(may_work_case(&po, id(1), &[id(2)]).is_ok());
        assert_eq!(
            may_work_case(&po, id(1), &[id(2), id(1)]),
            Err(Refusal::AboutSelf)
        );
        assert_eq!(
            may_work_case(&[Role::Admin], id(1), &[id(2)]),
            Err(Refusal::RoleMissing)
        );
        assert_eq!(may_suppress(&po, id(1), id(1)), Err(Refusal::AboutSelf));
        assert!(may_suppress(&po, id(1), id(2)).is_ok());
        assert_eq!(
            may_suppress(&[Role::Admin], id(1), id(2)),
            Err(Refusal::RoleMissing)
        );
    }

    #[test]
    fn cases_are_assigned_only_to_privacy_officers_not_about_them() {
        let po = [Role::PrivacyOfficer];
        assert!(may_assign(&po, id(1), &[id(2)], id(3), &po).is_ok());
        assert_eq!(
            may_assign(&po, id(1), &[id(2)], id(3), &[Role::Admin]),
            Err(Refusal::OwnerNotPrivacyOfficer)
        );
        assert_eq!(
            may_assign(&po, id(1), &[id(2)], id(2), &po),
            Err(Refusal::AboutSelf)
        );
        assert_eq!(
            may_assign(&[Role::Admin], id(1), &[id(2)], id(3), &po),
            Err(Refusal::RoleMissing)
        );
    }

    #[test]
    fn only_the_owner_moves_a_case_forward_and_closed_is_final() {
        use CaseStatus::*;
        let po = [Role::PrivacyOfficer];
        let ok = |from, to| may_move(&po, id(1), &[id(9)], id(1), from, to);
        assert!(ok(Open, Investigating).is_ok());
        assert!(ok(Open, ClosedAppropriate).is_ok());
        assert!(ok(Investigating, ClosedViolation).is_ok());
        assert_eq!(ok(Investigating, Open), Err(Refusal::Transition));
        assert_eq!(ok(Open, Open), Err(Refusal::Transition));
        for from in [ClosedAppropriate, ClosedViolation] {
            for to in CaseStatus::ALL {
                assert_eq!(ok(from, to), Err(Refusal::Transition));
            }
        }
        assert_eq!(
            may_move(&po, id(2), &[id(9)], id(1), Open, Investigating),
            Err(Refusal::NotOwner)
        );
        assert_eq!(
            may_move(&po, id(1), &[id(1)], id(1), Open, Investigating),
            Err(Refusal::AboutSelf)
        );
        assert_eq!(
            may_change(&po, id(1), &[id(9)], ClosedViolation),
            Err(Refusal::Transition)
        );
        assert!(may_change(&po, id(2), &[id(9)], Investigating).is_ok());
    }

    #[test]
    fn codes_round_trip() {
        for s in CaseStatus::ALL {
            assert_eq!(CaseStatus::from_code(s.code()), Some(s));
        }
        for s in Sanction::ALL {
            assert_eq!(Sanction::from_code(s.code()), Some(*s));
        }
        assert_eq!(CaseStatus::from_code("closed"), None);
        assert_eq!(Sanction::from_code("<b>"), None);
    }

    #[test]
    fn suppressions_expire_after_now_and_within_a_year() {
        let now = Utc::now();
        assert!(suppression_expiry_ok(now, now + Duration::days(30)));
        assert!(suppression_expiry_ok(now, now + Duration::days(365)));
        assert!(!suppression_expiry_ok(now, now));
        assert!(!suppression_expiry_ok(now, now - Duration::days(1)));
        assert!(!suppression_expiry_ok(now, now + Duration::days(366)));
    }
}
