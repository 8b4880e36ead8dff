//! What an export reads: for each permitted type, the records in the caller's search
//! scope and view, a batch at a time in id order (keyset paging: a restart continues
//! after the last id it wrote), through the resource abstraction's own search — so an
//! export never fetches a field or a patient its search could not.

use crate::crypto::Keyring;
use crate::db::records::{Page, Position};
use crate::domain::{FacilityId, PatientId, UserId};
use crate::error::AppError;
use crate::fhir::elements::Elements;
use crate::fhir::resource::FhirResource;
use crate::policy::{ResourceType, SearchScope, View};
use diesel::PgConnection;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

/// One type of a job as the decision point permitted it at kick-off.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartSpec {
    #[serde(rename = "type")]
    pub kind: String,
    pub view: String,
    /// `care-team`, `facility` or `patient`.
    pub scope: String,
    pub scope_id: Uuid,
    /// Whether its lines are written (a de-identified export reads the Patients for the
    /// k-anonymity classes even when `_type` leaves them out).
    pub write: bool,
}

const VIEWS: [View; 7] = [
    View::PatientClinical,
    View::PatientBilling,
    View::PatientSelf,
    View::PatientDemographics,
    View::ObservationFull,
    View::DocumentReferenceFull,
    View::ClaimFull,
];

impl PartSpec {
    pub fn new(kind: ResourceType, view: View, scope: SearchScope, write: bool) -> PartSpec {
        let (scope, scope_id) = match scope {
            SearchScope::CareTeam(u) | SearchScope::CareTeamAndGrants(u, _) => {
                ("care-team", u.as_uuid())
            }
            SearchScope::Facility(f) => ("facility", f.as_uuid()),
            SearchScope::OnePatient(p) => ("patient", p.as_uuid()),
        };
        PartSpec {
            kind: kind.as_str().to_string(),
            view: format!("{view:?}"),
            scope: scope.to_string(),
            scope_id,
            write,
        }
    }

    pub fn resource(&self) -> Result<ResourceType, AppError> {
        ResourceType::parse(&self.kind).ok_or_else(|| AppError::internal("export part type"))
    }

    fn view_of(&self) -> Result<View, AppError> {
        VIEWS
            .into_iter()
            .find(|v| format!("{v:?}") == self.view)
            .ok_or_else(|| AppError::internal("export part view"))
    }

    fn search_scope(&self) -> Result<SearchScope, AppError> {
        Ok(match self.scope.as_str() {
            "care-team" => SearchScope::CareTeam(UserId(self.scope_id)),
            "facility" => SearchScope::Facility(FacilityId(self.scope_id)),
            "patient" => SearchScope::OnePatient(PatientId(self.scope_id)),
            _ => return Err(AppError::internal("export part scope")),
        })
    }
}

/// One record read for an export: its id, its patient and its FHIR JSON in the view.
pub struct Row {
    pub id: Uuid,
    pub patient: PatientId,
    pub json: Value,
}

/// Up to `limit` records of `part` after `after`, in id order.
pub fn batch(
    conn: &mut PgConnection,
    kr: &Keyring,
    part: &PartSpec,
    after: Option<Uuid>,
    limit: i64,
) -> Result<Vec<Row>, AppError> {
    use crate::fhir::{claim, document_reference, observation, patient};
    let (view, scope) = (part.view_of()?, part.search_scope()?);
    match part.resource()? {
        ResourceType::Patient => batch_of::<patient::Patients>(conn, kr, view, scope, after, limit),
        ResourceType::Observation => {
            batch_of::<observation::Observations>(conn, kr, view, scope, after, limit)
        }
        ResourceType::DocumentReference => {
            batch_of::<document_reference::DocumentReferences>(conn, kr, view, scope, after, limit)
        }
        ResourceType::Claim => batch_of::<claim::Claims>(conn, kr, view, scope, after, limit),
    }
}

fn batch_of<R: FhirResource>(
    conn: &mut PgConnection,
    kr: &Keyring,
    view: View,
    scope: SearchScope,
    after: Option<Uuid>,
    limit: i64,
) -> Result<Vec<Row>, AppError> {
    let fields = R::fields(view, &Elements::all())?;
    let criteria = R::criteria(&[])?;
    let page = Page {
        sort: None,
        after: after.map(|id| Position {
            id,
            at: None,
            then_at: None,
        }),
        limit,
    };
    let records = R::search(conn, kr, &criteria, scope, page, fields)?;
    Ok(records
        .iter()
        .map(|r| Row {
            id: R::id(r).0,
            patient: R::subject(r),
            json: R::to_fhir(r),
        })
        .collect())
}

/// How many records `part` covers (what a progress bar counts towards: `_since` may
/// leave some out).
pub fn count(conn: &mut PgConnection, kr: &Keyring, part: &PartSpec) -> Result<i64, AppError> {
    use crate::fhir::{claim, document_reference, observation, patient};
    let scope = part.search_scope()?;
    match part.resource()? {
        ResourceType::Patient => count_of::<patient::Patients>(conn, kr, scope),
        ResourceType::Observation => count_of::<observation::Observations>(conn, kr, scope),
        ResourceType::DocumentReference => {
            count_of::<document_reference::DocumentReferences>(conn, kr, scope)
        }
        ResourceType::Claim => count_of::<claim::Claims>(conn, kr, scope),
    }
}

fn count_of<R: FhirResource>(
    conn: &mut PgConnection,
    kr: &Keyring,
    scope: SearchScope,
) -> Result<i64, AppError> {
    R::count(conn, kr, &R::criteria(&[])?, scope)
}

/// Whether a resource was updated at or after `since` (`meta.lastUpdated`; a resource
/// without one is kept).
pub fn updated_since(json: &Value, since: Option<chrono::DateTime<chrono::Utc>>) -> bool {
    let Some(since) = since else {
        return true;
    };
    json["meta"]["lastUpdated"]
        .as_str()
        .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
        .is_none_or(|t| t >= since)
}
