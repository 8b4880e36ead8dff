//! `GET /fhir/Patient/{id}/$access-report?from=&to=`: a patient's accounting of access to
//! their own record ("who viewed my record"), through the API. The route is a Patient
//! read for the access pipeline (token, scope, relationship: another patient's record is
//! a 404 like any record one may not see), and then only the patient themselves may have
//! the report ([`policy::review::may_read_own_report`]); a clinician who may read the
//! record is refused (403). The answer lists who (display name and role), when, what and
//! why — never another patient, never a query string.

use crate::access::pipeline::Pipeline;
use crate::audit::search::{self, basis, bound, display_names};
use crate::audit::{AuditAction, ResourceType as Kind, What};
use crate::domain::{PatientId, RecordId};
use crate::error::AppError;
use crate::policy;
use crate::state::AppState;
use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use diesel::PgConnection;
use serde_json::json;

/// Most accesses one answer lists.
const LIMIT: i64 = 10_000;

fn itself(_: &mut PgConnection, id: RecordId) -> Result<Option<PatientId>, AppError> {
    Ok(Some(PatientId(id.0)))
}

fn bad_period() -> AppError {
    AppError::bad_request(
        "Invalid period: use from= and to= as YYYY-MM-DD or YYYY-MM-DDTHH:MM (UTC).",
    )
}

/// The `from` / `to` of the query (default: the last year).
fn period(
    req: &HttpRequest,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<(chrono::DateTime<chrono::Utc>, chrono::DateTime<chrono::Utc>), AppError> {
    let mut since = now - chrono::Duration::days(365);
    let mut until = now;
    for (k, v) in url::form_urlencoded::parse(req.query_string().as_bytes()) {
        match k.as_ref() {
            "from" => since = bound(&v, false).ok_or_else(bad_period)?,
            "to" => until = bound(&v, true).ok_or_else(bad_period)?,
            _ => return Err(bad_period()),
        }
    }
    Ok((since, until))
}

pub async fn access_report(
    req: HttpRequest,
    pipeline: Pipeline,
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, AppError> {
    let what = What::new(AuditAction::Read).on(Kind::AuditLog);
    let Some(patient) = PatientId::parse(&path) else {
        pipeline.recorder.error(what, []).await?;
        return Err(AppError::not_found());
    };
    let (_, facts) = pipeline
        .authorize_record(RecordId(patient.as_uuid()), itself)
        .await?;
    let what = what.id(patient.as_uuid());
    let user = &pipeline.principal.user;
    if let Err(reason) = policy::review::may_read_own_report(&user.roles, user.patient_id, patient)
    {
        pipeline
            .recorder
            .deny(what, [facts.patient_id], reason)
            .await?;
        return Err(AppError::client(
            StatusCode::FORBIDDEN,
            "Only the patient may read their own access report.",
        ));
    }
    let (since, until) = match period(&req, state.clock.now()) {
        Ok(p) => p,
        Err(e) => {
            pipeline.recorder.error(what, [patient]).await?;
            return Err(e);
        }
    };
    let found = state
        .db
        .run(move |c| {
            let rows = search::patient_accesses(c, patient, since, until, LIMIT)?;
            let mut people: Vec<_> = rows.iter().filter_map(|e| e.actor_user_id).collect();
            people.sort();
            people.dedup();
            let names = display_names(c, &people)?;
            Ok((rows, names))
        })
        .await;
    let (rows, names) = match found {
        Ok(v) => v,
        Err(e) => {
            pipeline.recorder.error(what, [patient]).await?;
            return Err(e);
        }
    };
    pipeline.recorder.permit(what, [patient]).await?;
    let accesses: Vec<serde_json::Value> = rows
        .iter()
        .map(|e| {
            let who = match (e.actor_user_id, &e.actor_client_id) {
                (Some(u), _) => names
                    .get(&u)
                    .cloned()
                    .unwrap_or_else(|| "a staff member".into()),
                (None, Some(c)) => format!("service {c}"),
                (None, None) => "the system".into(),
            };
            json!({
                "time": e.occurred_at.to_rfc3339(),
                "who": who,
                "roles": e.actor_roles,
                "action": e.action,
                "resourceType": e.resource_type,
                "via": match e.action.as_str() {
                    "search" => "search results",
                    // A bulk export that carried the patient's records (issue 17).
                    "export" => "bulk export",
                    _ => "direct",
                },
                "basis": basis(e),
                "purposeOfUse": e.purpose_of_use,
            })
        })
        .collect();
    let body = json!({
        "patient": format!("Patient/{patient}"),
        "from": since.to_rfc3339(),
        "to": until.to_rfc3339(),
        "accesses": accesses,
    });
    Ok(HttpResponse::Ok()
        .content_type("application/json")
        .insert_header(("cache-control", "no-store"))
        .body(body.to_string()))
}
