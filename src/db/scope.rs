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
}

const AFTER: &str = ")";

impl ScopeSql {
    /// The condition for the column expression `patient_id` (for example `p.id` or
    /// `observations.patient_id`; a fixed name, never input).
    pub fn new(scope: SearchScope, patient_id: &'static str) -> ScopeSql {
        let basis = match scope {
            SearchScope::CareTeam(_) => Basis::CareTeam,
            SearchScope::Facility(_) => Basis::Facility,
            SearchScope::OnePatient(_) => Basis::OwnRecord,
        };
        // Fixed codes from the policy (N, R, V), never input.
        let levels = confidentiality::admitted_codes(basis)
            .iter()
            .map(|c| format!("'{c}'"))
            .collect::<Vec<_>>()
            .join(", ");
        let live = format!(
            "EXISTS (SELECT 1 FROM patients scope_p WHERE scope_p.id = {patient_id} \
             AND scope_p.deleted_at IS NULL AND scope_p.confidentiality IN ({levels}) AND "
        );
        let (rule, id) = match scope {
            SearchScope::CareTeam(user) => (
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
        }
    }

    /// For a raw SQL query: the condition text with the id as bind parameter `$n`, and
    /// the id to bind there.
    pub fn with_placeholder(&self, n: usize) -> (String, Uuid) {
        (format!("{}${n}{AFTER}{AFTER}", self.before), self.id)
    }

    /// For a Diesel query: the condition as a boolean expression with its id bound.
    pub fn expression(
        self,
    ) -> SqlLiteral<Bool, UncheckedBind<SqlLiteral<Bool>, AsExprOf<Uuid, SqlUuid>>> {
        sql::<Bool>(&self.before)
            .bind::<SqlUuid, _>(self.id)
            .sql(&format!("{AFTER}{AFTER}"))
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
            SearchScope::Facility(FacilityId(id)),
            SearchScope::OnePatient(PatientId(id)),
        ] {
            let (text, bound) = ScopeSql::new(scope, "p.id").with_placeholder(1);
            assert!(text.starts_with("EXISTS (SELECT 1 FROM patients"), "{text}");
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
