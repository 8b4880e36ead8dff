//! The ONE translation of a policy [`SearchScope`] into SQL, used by every search
//! (patients, observations, notes, claims): rows whose patient is live and inside the
//! scope. Each scope is a single `EXISTS` subquery on the patient, so the database plans
//! it as a semi-join — no list of patients is loaded into memory first. The scope's
//! basis also carries the confidentiality rule into SQL: only patients whose level the
//! basis admits (`policy::confidentiality::admits`) are in scope.

use crate::policy::{Basis, SearchScope, confidentiality};
use diesel::dsl::{AsExprOf, sql};
use diesel::expression::SqlLiteral;
use diesel::expression::UncheckedBind;
use diesel::sql_types::{Bool, Uuid as SqlUuid};
use uuid::Uuid;

/// The scope condition on a patient-id column, split around its one bind parameter
/// (the user, facility or patient id of the scope).
pub struct ScopeSql {
    before: String,
    id: Uuid,
    after: String,
}

const AFTER: &str = "))";

/// The SQL IN list of the confidentiality levels `basis` admits (fixed codes from the
/// policy, never input).
fn levels(basis: Basis) -> String {
    confidentiality::admitted_codes(basis)
        .iter()
        .map(|c| format!("'{c}'"))
        .collect::<Vec<_>>()
        .join(", ")
}

impl ScopeSql {
    /// The condition for the column expression `patient_id` (for example `p.id` or
    /// `observations.patient_id`; a fixed name, never input).
    pub fn new(scope: SearchScope, patient_id: &'static str) -> ScopeSql {
        if let SearchScope::CareTeamAndGrants(user, at) = scope {
            return Self::care_team_and_grants(user.as_uuid(), at, patient_id);
        }
        let basis = match scope {
            SearchScope::CareTeam(_) | SearchScope::CareTeamAndGrants(..) => Basis::CareTeam,
            SearchScope::Facility(_) => Basis::Facility,
            SearchScope::OnePatient(_) => Basis::OwnRecord,
        };
        let live = format!(
            "EXISTS (SELECT 1 FROM patients scope_p WHERE scope_p.id = {patient_id} \
             AND scope_p.deleted_at IS NULL AND scope_p.confidentiality IN ({}) AND ",
            levels(basis)
        );
        let (rule, id) = match scope {
            SearchScope::CareTeam(user) | SearchScope::CareTeamAndGrants(user, _) => (
                "EXISTS (SELECT 1 FROM care_team_members scope_c \
                 WHERE scope_c.patient_id = scope_p.id AND scope_c.user_id = ",
                user.as_uuid(),
            ),
            SearchScope::Facility(facility) => ("(scope_p.facility_id = ", facility.as_uuid()),
            SearchScope::OnePatient(patient) => ("(scope_p.id = ", patient.as_uuid()),
        };
        ScopeSql {
            before: format!("{live}{rule}"),
            id,
            after: AFTER.to_string(),
        }
    }

    /// The care team's patients (at the levels the care team admits) and the patients
    /// of the user's break-glass grants active at `at` (at the levels a grant admits).
    /// The user id is the one bind parameter (named once, as `scope_u.id`); `at` is the
    /// application clock's time, written as a timestamp literal (never input).
    fn care_team_and_grants(
        user: Uuid,
        at: chrono::DateTime<chrono::Utc>,
        patient_id: &'static str,
    ) -> ScopeSql {
        let at = at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
        let after = format!(
            "::uuid AS id) scope_u, patients scope_p WHERE scope_p.id = {patient_id} \
             AND scope_p.deleted_at IS NULL AND ((scope_p.confidentiality IN ({care}) \
             AND EXISTS (SELECT 1 FROM care_team_members scope_c \
             WHERE scope_c.patient_id = scope_p.id AND scope_c.user_id = scope_u.id)) \
             OR (scope_p.confidentiality IN ({grant}) \
             AND EXISTS (SELECT 1 FROM break_glass_grants scope_g \
             WHERE scope_g.patient_id = scope_p.id AND scope_g.user_id = scope_u.id \
             AND scope_g.status = 'active' AND scope_g.expires_at > '{at}'::timestamptz))))",
            care = levels(Basis::CareTeam),
            grant = levels(Basis::BreakGlass(crate::domain::GrantId(Uuid::nil()))),
        );
        ScopeSql {
            before: "EXISTS (SELECT 1 FROM (SELECT ".to_string(),
            id: user,
            after,
        }
    }

    /// For a raw SQL query: the condition text with the id as bind parameter `$n`, and
    /// the id to bind there.
    pub fn with_placeholder(&self, n: usize) -> (String, Uuid) {
        (format!("{}${n}{}", self.before, self.after), self.id)
    }

    /// For a Diesel query: the condition as a boolean expression with its id bound.
    pub fn expression(
        self,
    ) -> SqlLiteral<Bool, UncheckedBind<SqlLiteral<Bool>, AsExprOf<Uuid, SqlUuid>>> {
        sql::<Bool>(&self.before)
            .bind::<SqlUuid, _>(self.id)
            .sql(&self.after)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{FacilityId, PatientId, UserId};

    #[test]
    fn every_scope_is_one_exists_subquery_with_one_parameter() {
        let id = Uuid::nil();
        for scope in [
            SearchScope::CareTeam(UserId(id)),
            SearchScope::CareTeamAndGrants(UserId(id), chrono::Utc::now()),
            SearchScope::Facility(FacilityId(id)),
            SearchScope::OnePatient(PatientId(id)),
        ] {
            let (text, bound) = ScopeSql::new(scope, "p.id").with_placeholder(1);
            assert!(text.starts_with("EXISTS (SELECT 1 FROM "), "{text}");
            assert!(text.contains("scope_p.deleted_at IS NULL"), "{text}");
            assert_eq!(text.matches('$').count(), 1, "{text}");
            assert_eq!(
                text.matches('(').count(),
                text.matches(')').count(),
                "{text}"
            );
            assert_eq!(bound, id);
        }
    }

    #[test]
    fn every_scope_admits_only_the_levels_its_basis_admits() {
        let id = Uuid::nil();
        let text = |scope| ScopeSql::new(scope, "p.id").with_placeholder(1).0;
        assert!(text(SearchScope::CareTeam(UserId(id))).contains("confidentiality IN ('N', 'R')"));
        assert!(text(SearchScope::Facility(FacilityId(id))).contains("confidentiality IN ('N')"));
        assert!(
            text(SearchScope::OnePatient(PatientId(id)))
                .contains("confidentiality IN ('N', 'R', 'V')")
        );
    }
}

#[cfg(test)]
mod grant_tests {
    use super::*;
    use crate::domain::UserId;

    #[test]
    fn a_grant_scope_admits_its_patients_at_every_level_until_the_given_time() {
        let at = chrono::DateTime::parse_from_rfc3339("2026-11-30T12:00:00Z")
            .unwrap()
            .with_timezone(&chrono::Utc);
        let (text, _) = ScopeSql::new(
            SearchScope::CareTeamAndGrants(UserId(Uuid::nil()), at),
            "p.id",
        )
        .with_placeholder(1);
        assert!(
            text.contains(
                "confidentiality IN ('N', 'R') AND EXISTS (SELECT 1 FROM care_team_members"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "confidentiality IN ('N', 'R', 'V') AND EXISTS (SELECT 1 FROM break_glass_grants"
            ),
            "{text}"
        );
        assert!(
            text.contains("scope_g.expires_at > '2026-11-30T12:00:00.000000Z'::timestamptz"),
            "{text}"
        );
    }
}
