//! The rules of audit review (privacy officers' work), in one place: who may search the
//! audit trail, open one event, see which patient an event is about (by MRN and name),
//! and read a patient's access report. The console's review pages ask [`may_review`];
//! none of them checks roles itself.

use super::{DenyReason, Role};
use crate::domain::PatientId;

/// What a reviewer does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Review {
    /// Search the audit trail by person, action, outcome, time and the other
    /// PHI-free fields; open one event (ids, hash, request id).
    SearchTrail,
    /// Name a patient: filter by patient (MRN resolved through the blind index), see a
    /// patient's MRN and name beside the events about them, read and download a
    /// patient's access report. The trail itself holds only internal ids; turning them
    /// back into a person's identity is the privacy office's work, not administration.
    IdentifyPatients,
    /// Start a verification of the whole audit chain from the console ("verify now").
    VerifyChain,
}

impl Review {
    pub const ALL: [Review; 3] = [
        Review::SearchTrail,
        Review::IdentifyPatients,
        Review::VerifyChain,
    ];
}

/// May a console user with these roles do this review? Administrators search the trail
/// (they see their changes arrive and investigate sign-in problems); only privacy
/// officers identify patients.
pub fn may_review(roles: &[Role], what: Review) -> Result<(), DenyReason> {
    let allowed: &[Role] = match what {
        Review::SearchTrail | Review::VerifyChain => &[Role::Admin, Role::PrivacyOfficer],
        Review::IdentifyPatients => &[Role::PrivacyOfficer],
    };
    if roles.iter().any(|r| allowed.contains(r)) {
        Ok(())
    } else {
        Err(DenyReason::RoleMissing)
    }
}

/// May a person read `patient`'s access report through the API? Only the patient
/// themselves: the `patient` role and `patient` their own linked record (a clinician who
/// may read the record may not read who else did).
pub fn may_read_own_report(
    roles: &[Role],
    own_patient: Option<PatientId>,
    patient: PatientId,
) -> Result<(), DenyReason> {
    if roles.contains(&Role::Patient) && own_patient == Some(patient) {
        Ok(())
    } else {
        Err(DenyReason::RoleMissing)
    }
}

/// Which audit events a caller of the FHIR `AuditEvent` API may see.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TrailScope {
    /// The whole trail (privacy officers; administrators, who are the security team
    /// here and already search the trail in the console).
    All,
    /// Only the events about the caller's own record, each naming no other patient
    /// (a patient's accounting of access).
    OwnRecord(PatientId),
}

/// May a caller read the audit trail as `AuditEvent` resources, and which part? The
/// client application's token must carry `audit.read`; then a privacy officer or an
/// administrator sees all of it, a patient linked to a record sees that record's events,
/// and nobody else sees any (clinicians, billing and services have no business reading
/// who else looked).
pub fn trail_scope(
    roles: &[Role],
    audit_scope: bool,
    own_patient: Option<PatientId>,
) -> Result<TrailScope, DenyReason> {
    if !audit_scope {
        return Err(DenyReason::ScopeMissing);
    }
    if roles
        .iter()
        .any(|r| matches!(r, Role::PrivacyOfficer | Role::Admin))
    {
        return Ok(TrailScope::All);
    }
    match own_patient {
        Some(p) if roles.contains(&Role::Patient) => Ok(TrailScope::OwnRecord(p)),
        _ => Err(DenyReason::RoleMissing),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_trail_is_read_whole_by_reviewers_and_by_patients_only_about_themselves() {
        let me = PatientId(uuid::Uuid::from_u128(1));
        for role in Role::ALL {
            let got = trail_scope(&[role], true, Some(me));
            let want = match role {
                Role::PrivacyOfficer | Role::Admin => Ok(TrailScope::All),
                Role::Patient => Ok(TrailScope::OwnRecord(me)),
                _ => Err(DenyReason::RoleMissing),
            };
            assert_eq!(got, want, "{role:?}");
            assert_eq!(
                trail_scope(&[role], false, Some(me)),
                Err(DenyReason::ScopeMissing),
                "{role:?}"
            );
        }
        assert_eq!(
            trail_scope(&[Role::Patient], true, None),
            Err(DenyReason::RoleMissing)
        );
    }

    #[test]
    fn only_the_patient_reads_their_own_report_through_the_api() {
        let me = PatientId(uuid::Uuid::from_u128(1));
        let other = PatientId(uuid::Uuid::from_u128(2));
        assert!(may_read_own_report(&[Role::Patient], Some(me), me).is_ok());
        assert!(may_read_own_report(&[Role::Patient], Some(me), other).is_err());
        assert!(may_read_own_report(&[Role::Patient], None, me).is_err());
        for role in Role::ALL.into_iter().filter(|r| *r != Role::Patient) {
            assert!(
                may_read_own_report(&[role], Some(me), me).is_err(),
                "{role:?}"
            );
        }
    }

    #[test]
    fn only_privacy_officers_identify_patients_and_console_roles_search() {
        for role in Role::ALL {
            let search = matches!(role, Role::Admin | Role::PrivacyOfficer);
            assert_eq!(
                may_review(&[role], Review::SearchTrail).is_ok(),
                search,
                "{role:?}"
            );
            assert_eq!(
                may_review(&[role], Review::VerifyChain).is_ok(),
                search,
                "{role:?}"
            );
            assert_eq!(
                may_review(&[role], Review::IdentifyPatients).is_ok(),
                role == Role::PrivacyOfficer,
                "{role:?}"
            );
        }
        assert_eq!(
            may_review(&[], Review::SearchTrail),
            Err(DenyReason::RoleMissing)
        );
        assert!(
            may_review(
                &[Role::Clinician, Role::PrivacyOfficer],
                Review::IdentifyPatients
            )
            .is_ok()
        );
    }
}
