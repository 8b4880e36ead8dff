//! Break-glass on the FHIR API (`policy::break_glass` holds the rules):
//!
//! - `POST /fhir/Patient/{id}/$break-glass` — ask for a grant with a `Parameters` body:
//!   `reason` (valueCode or valueCoding.code, from `break_glass.reasons`), `justification`
//!   (valueString, ≥ 20 characters), `minutes` (valueInteger, ≤ `break_glass.max_minutes`,
//!   default `break_glass.default_minutes`). Needs a recent multi-factor sign-in (else 401
//!   with an RFC 9470 challenge). Emergency mode: 201, active at once. Approval mode: 202,
//!   pending until another administrator approves it in the console.
//! - `GET /fhir/Patient/{id}/$break-glass` — the caller's latest grant for the patient
//!   (status, time left, the approver's decision and reason): what a requester polls.
//! - `POST /fhir/Patient/{id}/$break-glass-end` — the requester ends their grant early,
//!   or withdraws their request while it waits for approval.
//!
//! Who may call them is decided before the handler ([`crate::policy::capability_break_glass`]);
//! every call is audited (the request, its activation and its end with high severity).

use super::FHIR_JSON;
use crate::access::Pipeline;
use crate::audit::{AuditAction, AuditEvent, DenyReason, Outcome, ResourceType as Kind, What};
use crate::db::break_glass::{self as grants, Grant};
use crate::db::{pending, users};
use crate::domain::{GrantId, PatientId};
use crate::error::AppError;
use crate::policy::break_glass::{
    self as rules, Authentication, BreakGlassConfig, Mode, Request, ValidRequest,
};
use crate::policy::{self, Decision, Interaction, ResourceType, Target};
use actix_web::http::StatusCode;
use actix_web::{HttpResponse, web};
use chrono::{DateTime, Utc};
use diesel::PgConnection;
use serde::Deserialize;
use serde_json::{Value, json};
use std::sync::Arc;

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ParametersIn {
    resource_type: String,
    #[serde(default)]
    parameter: Vec<ParameterIn>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct ParameterIn {
    name: String,
    value_code: Option<String>,
    value_coding: Option<super::types::input::Coding>,
    value_string: Option<String>,
    value_integer: Option<i64>,
}

fn invalid(message: &'static str) -> AppError {
    AppError::unprocessable(message)
}

/// The request a `Parameters` body carries (each parameter at most once, no others).
fn request_of(input: &ParametersIn) -> Result<Request<'_>, AppError> {
    if input.resource_type != "Parameters" {
        return Err(invalid("Invalid field 'resourceType': must be Parameters."));
    }
    let mut r = Request {
        reason: None,
        justification: None,
        minutes: None,
    };
    for p in &input.parameter {
        let once = "Each parameter (reason, justification, minutes) may be given once.";
        match p.name.as_str() {
            "reason" => {
                let code = match (&p.value_code, &p.value_coding) {
                    (Some(code), None) => code.as_str(),
                    (None, Some(coding)) => coding.code.as_str(),
                    _ => {
                        return Err(invalid(
                            "The parameter 'reason' needs a valueCode or a valueCoding.",
                        ));
                    }
                };
                if r.reason.replace(code).is_some() {
                    return Err(invalid(once));
                }
            }
            "justification" => {
                let text = p
                    .value_string
                    .as_deref()
                    .ok_or_else(|| invalid("The parameter 'justification' needs a valueString."))?;
                if r.justification.replace(text).is_some() {
                    return Err(invalid(once));
                }
            }
            "minutes" => {
                let n = p
                    .value_integer
                    .ok_or_else(|| invalid("The parameter 'minutes' needs a valueInteger."))?;
                if r.minutes.replace(n).is_some() {
                    return Err(invalid(once));
                }
            }
            _ => {
                return Err(invalid(
                    "Unknown parameter: a break-glass request takes reason, justification and minutes.",
                ));
            }
        }
    }
    Ok(r)
}

fn grant_what(action: AuditAction, grant: Option<GrantId>) -> What {
    let what = What::new(action).on(Kind::BreakGlassGrant);
    match grant {
        Some(g) => what.id(g.as_uuid()),
        None => what,
    }
}

/// The grant as a `Parameters` resource (no free text but the approver's reason, which
/// is the approver's own).
fn grant_parameters(g: &Grant, now: DateTime<Utc>, decision_reason: Option<&str>) -> Value {
    let mut parameter = vec![
        json!({ "name": "grant", "valueId": g.id.to_string() }),
        json!({ "name": "patient", "valueReference": { "reference": format!("Patient/{}", g.patient_id) } }),
        json!({ "name": "status", "valueCode": g.status_at(now) }),
        json!({ "name": "mode", "valueCode": g.mode }),
        json!({ "name": "reason", "valueCode": g.reason_code }),
        json!({ "name": "minutes", "valueInteger": g.minutes }),
        json!({ "name": "requested", "valueInstant": g.requested_at.to_rfc3339() }),
    ];
    if let Some(at) = g.activated_at {
        parameter.push(json!({ "name": "activated", "valueInstant": at.to_rfc3339() }));
    }
    if let Some(at) = g.expires_at {
        parameter.push(json!({ "name": "expires", "valueInstant": at.to_rfc3339() }));
        parameter.push(json!({ "name": "minutesLeft", "valueInteger": g.minutes_left(now) }));
    }
    if let Some(reason) = decision_reason {
        parameter.push(json!({ "name": "decisionReason", "valueString": reason }));
    }
    json!({ "resourceType": "Parameters", "parameter": parameter })
}

fn respond(status: StatusCode, body: &Value) -> HttpResponse {
    HttpResponse::build(status)
        .content_type(FHIR_JSON)
        .insert_header(("Cache-Control", "no-store"))
        .body(body.to_string())
}

/// The patient named in the path: anything but a live patient's id is "not found".
fn patient_in(path: &str) -> Result<PatientId, AppError> {
    PatientId::parse(path).ok_or_else(AppError::not_found)
}

/// `POST /fhir/Patient/{id}/$break-glass`.
pub async fn request(
    pipeline: Pipeline,
    path: web::Path<String>,
    body: Result<crate::web::json::JsonBody<ParametersIn>, AppError>,
) -> Result<HttpResponse, AppError> {
    let state = pipeline.state();
    let config = state.break_glass.clone();
    let now = state.clock.now();
    let what = grant_what(AuditAction::BreakGlassRequest, None);
    // A recent multi-factor sign-in of the person, before anything else is looked at.
    let token = &pipeline.principal.token;
    let auth = Authentication {
        auth_time: token.auth_time,
        acr: token.acr.as_deref(),
        amr: &token.amr,
    };
    if let Err(challenge) = rules::judge_authentication(&config, &auth, now.timestamp()) {
        pipeline
            .recorder
            .deny(what, [], DenyReason::StepUpRequired)
            .await?;
        return Err(AppError::InsufficientAuthentication { challenge });
    }
    // Input: the patient id and the body (the guard audits these refusals as errors).
    let patient = patient_in(&path)?;
    let input = body?.0;
    let valid = rules::check_request(&config, &request_of(&input)?).map_err(invalid)?;
    let user = pipeline.principal.user.clone();
    let cfg = config.clone();
    let kr = state.keyring.clone();
    let write = move |c: &mut PgConnection| store(c, &kr, &cfg, &user, patient, &valid, now);
    let complete: fn(&Grant, &mut AuditEvent) = |g, e| {
        e.resource_id = Some(g.id.as_uuid());
        e.break_glass_grant_id = Some(g.id.as_uuid());
    };
    let grant = pipeline
        .recorder
        .commit_with(what, [patient], write, Some(complete))
        .await?;
    let status = if grant.status == "active" {
        activated(&pipeline, &grant).await?;
        StatusCode::CREATED
    } else {
        StatusCode::ACCEPTED
    };
    let mut res = respond(status, &grant_parameters(&grant, now, None));
    res.headers_mut().insert(
        actix_web::http::header::LOCATION,
        actix_web::http::header::HeaderValue::from_str(&format!(
            "/fhir/Patient/{patient}/$break-glass"
        ))
        .map_err(|_| AppError::internal("location header"))?,
    );
    Ok(res)
}

/// The activation event of a grant active from now (high severity), recorded by `pipeline`.
async fn activated(pipeline: &Pipeline, grant: &Grant) -> Result<(), AppError> {
    let what = grant_what(AuditAction::BreakGlassStart, Some(grant.id));
    let event = pipeline
        .recorder
        .event(what, [grant.patient_id], Outcome::Permit)
        .break_glass(grant.id.as_uuid())
        .purpose(crate::audit::PurposeOfUse::BreakTheGlass)
        .build();
    pipeline.recorder.record(event).await
}

fn conflict(message: &'static str) -> AppError {
    AppError::client(StatusCode::CONFLICT, message)
}

/// Checks and stores a request, in the audit writer's transaction (it commits with its
/// event, or neither does).
fn store(
    c: &mut PgConnection,
    kr: &crate::crypto::Keyring,
    config: &Arc<BreakGlassConfig>,
    user: &crate::db::users::UserRecord,
    patient: PatientId,
    valid: &ValidRequest,
    now: DateTime<Utc>,
) -> Result<Grant, AppError> {
    let facts = users::patient_facts(c, patient, user.id, now)?.ok_or_else(AppError::not_found)?;
    // Nobody breaks glass on a record they may already read (an active grant included).
    let everything = |_: ResourceType, _: Interaction| true;
    let subject = policy::Subject {
        user_id: user.id,
        roles: &user.roles,
        scope_allows: &everything,
        facility_id: user.facility_id,
        own_patient_id: user.patient_id,
        now,
    };
    let target = Target::Patient(facts);
    if let Decision::Permit { .. } =
        policy::decide(&subject, ResourceType::Patient, Interaction::Read, target)
    {
        return Err(conflict(
            "You may already read this patient's record (or hold an active grant for it): break-glass is not needed.",
        ));
    }
    if grants::latest_of(c, user.id, patient)?.is_some_and(|g| g.status == "pending") {
        return Err(conflict(
            "A break-glass request of yours for this patient is already waiting for approval.",
        ));
    }
    let open = grants::open_count(c, user.id, now)?;
    if open >= i64::from(config.max_active_grants) {
        return Err(conflict(
            "You hold the most break-glass grants allowed at once (break_glass.max_active_grants): end one first.",
        ));
    }
    let mode = config.mode_for(facts.facility_id);
    let pending_id = match mode {
        Mode::Emergency => None,
        Mode::Approval => Some(pending::request(
            c,
            grants::KIND_BREAK_GLASS,
            &json!({ "patient": patient }),
            Some(user.id),
            user.id,
        )?),
    };
    let grant = grants::insert(
        c,
        kr,
        user.id,
        patient,
        facts.facility_id,
        mode,
        valid,
        now,
        config.review_days,
        pending_id,
    )?;
    grants::raise_alert(
        c,
        grants::AlertKind::Request,
        (grant.id, user.id, patient),
        now,
    )?;
    Ok(grant)
}

/// `GET /fhir/Patient/{id}/$break-glass`: the caller's latest grant for the patient.
pub async fn status(pipeline: Pipeline, path: web::Path<String>) -> Result<HttpResponse, AppError> {
    let patient = patient_in(&path)?;
    let user = pipeline.principal.user.id;
    let state = pipeline.state();
    let now = state.clock.now();
    let found = state
        .db
        .run(move |c| {
            let Some(g) = grants::latest_of(c, user, patient)? else {
                return Ok(None);
            };
            let decision = match g.pending_id {
                Some(p) => grants::decision_reason(c, p)?,
                None => None,
            };
            Ok(Some((g, decision)))
        })
        .await?;
    let Some((grant, decision)) = found else {
        return Err(AppError::client(
            StatusCode::NOT_FOUND,
            "You have asked for no break-glass grant for this patient.",
        ));
    };
    let what = grant_what(AuditAction::Read, Some(grant.id));
    pipeline.recorder.permit(what, [patient]).await?;
    Ok(respond(
        StatusCode::OK,
        &grant_parameters(&grant, now, decision.as_deref()),
    ))
}

/// What `$break-glass-end` did.
enum Ended {
    /// The active grant was revoked by its holder.
    Revoked(Grant),
    /// The waiting request was withdrawn by its requester.
    Withdrawn(Grant),
    /// The waiting request was decided at the same moment (the decision won).
    DecidedMeanwhile,
}

/// `POST /fhir/Patient/{id}/$break-glass-end`: the requester ends their active grant, or
/// withdraws their request still waiting for approval (it leaves the approval queue).
pub async fn end(pipeline: Pipeline, path: web::Path<String>) -> Result<HttpResponse, AppError> {
    let patient = patient_in(&path)?;
    let user = pipeline.principal.user.id;
    let state = pipeline.state();
    let now = state.clock.now();
    let ended = state
        .db
        .run(move |c| {
            use diesel::Connection;
            c.transaction(|c| end_or_withdraw(c, user, patient, now))
        })
        .await?;
    let (action, grant) = match ended {
        Some(Ended::Revoked(g)) => (AuditAction::BreakGlassEnd, g),
        Some(Ended::Withdrawn(g)) => (AuditAction::BreakGlassWithdraw, g),
        Some(Ended::DecidedMeanwhile) => {
            return Err(conflict(
                "Your break-glass request was decided at the same moment: poll its status.",
            ));
        }
        None => {
            return Err(AppError::client(
                StatusCode::NOT_FOUND,
                "You hold no active break-glass grant or waiting request for this patient.",
            ));
        }
    };
    let what = grant_what(action, Some(grant.id));
    let event = pipeline
        .recorder
        .event(what, [patient], Outcome::Permit)
        .break_glass(grant.id.as_uuid())
        .build();
    pipeline.recorder.record(event).await?;
    Ok(respond(
        StatusCode::OK,
        &grant_parameters(&grant, now, None),
    ))
}

/// In the caller's transaction: revokes `user`'s active grant for `patient`, or else
/// withdraws their waiting request. The queue row is locked before the grant, the order
/// an approver's decision takes them in, so that a withdrawal and a decision at the same
/// moment wait for each other and exactly one of them happens.
fn end_or_withdraw(
    c: &mut PgConnection,
    user: crate::domain::UserId,
    patient: PatientId,
    now: DateTime<Utc>,
) -> Result<Option<Ended>, AppError> {
    let active: Option<uuid::Uuid> = {
        use diesel::prelude::*;
        grants::active_grant_of(user, patient, now)
            .first(c)
            .optional()?
    };
    if let Some(id) = active.map(GrantId) {
        if !grants::revoke(c, id, user, now)? {
            return Ok(None);
        }
        return Ok(grants::get(c, id)?.map(Ended::Revoked));
    }
    let Some(waiting) = grants::latest_of(c, user, patient)? else {
        return Ok(None);
    };
    match waiting.status_at(now) {
        "pending" => {}
        // Approved between the two looks (READ COMMITTED): the decision won.
        "active" => return Ok(Some(Ended::DecidedMeanwhile)),
        _ => return Ok(None),
    }
    let Some(queued) = waiting.pending_id else {
        return Ok(None);
    };
    if pending::open_for_update(c, queued)?.is_none() || !grants::withdraw(c, waiting.id, now)? {
        return Ok(Some(Ended::DecidedMeanwhile));
    }
    if !pending::withdraw(c, queued)? {
        return Err(AppError::internal(
            "a locked waiting request was not withdrawn",
        ));
    }
    Ok(grants::get(c, waiting.id)?.map(Ended::Withdrawn))
}

/// `GET /fhir/Patient/$break-glass-lookup?identifier=[urn:custodian:mrn|]<MRN>`: in an
/// emergency the clinician must first find the patient. An exact MRN, across the
/// organisation, answers identification only (id, MRN, name, birth date, the record's
/// confidentiality) — no contact details, nothing clinical — with the way to ask for
/// access; it is itself audited (`break-glass-lookup`, naming every patient returned).
pub async fn lookup(
    req: actix_web::HttpRequest,
    pipeline: Pipeline,
) -> Result<HttpResponse, AppError> {
    let q = super::params::search_params(&req, &["identifier"])?;
    let raw = super::params::single(&q, "identifier")?.ok_or_else(|| {
        AppError::unprocessable("The parameter 'identifier' (an exact MRN) is required.")
    })?;
    let value = match raw.split_once('|') {
        Some((super::patient::MRN_SYSTEM, v)) => v,
        Some(_) => {
            return Err(AppError::unprocessable(
                "Invalid search parameter 'identifier': the system must be the MRN system.",
            ));
        }
        None => raw,
    };
    let mrn = super::types::Mrn::parse(value)
        .map_err(|_| {
            AppError::unprocessable("Invalid search parameter 'identifier': not a valid MRN.")
        })?
        .as_str()
        .to_string();
    let state = pipeline.state();
    let kr = state.keyring.clone();
    let identification = crate::policy::views::PatientFields {
        mrn: true,
        name: true,
        birth_date: true,
        ..Default::default()
    };
    let found = state
        .db
        .run(move |c| {
            crate::db::patients::views::lookup_by_mrn(c, &kr, &mrn, identification, LOOKUP_MAX)
        })
        .await?;
    let what = What::new(AuditAction::BreakGlassLookup).on(Kind::Patient);
    pipeline
        .recorder
        .permit(what, found.iter().map(|p| p.id))
        .await?;
    let mut entries: Vec<Value> = found
        .iter()
        .map(|p| {
            json!({
                "fullUrl": format!("Patient/{}", p.id),
                "resource": super::patient::to_fhir(p),
                "search": { "mode": "match" },
            })
        })
        .collect();
    entries.push(json!({
        "resource": {
            "resourceType": "OperationOutcome",
            "issue": [{
                "severity": "information",
                "code": "informational",
                "diagnostics": "Identification only. To read a record outside your care relationship in an emergency: POST /fhir/Patient/{id}/$break-glass (audited and reviewed)."
            }]
        },
        "search": { "mode": "outcome" },
    }));
    let bundle = json!({
        "resourceType": "Bundle",
        "type": "searchset",
        "total": found.len(),
        "entry": entries,
    });
    Ok(respond(StatusCode::OK, &bundle))
}

/// Most patients one lookup returns (an MRN is unique per facility).
const LOOKUP_MAX: i64 = 10;

#[cfg(test)]
mod tests {
    use super::*;

    fn params(v: Value) -> Result<ParametersIn, serde_json::Error> {
        serde_json::from_value(v)
    }

    #[test]
    fn parameters_carry_each_value_once() {
        let p = params(json!({"resourceType": "Parameters", "parameter": [
            {"name": "reason", "valueCoding": {"code": "emergency-treatment"}},
            {"name": "justification", "valueString": "Unconscious patient in the ED"},
            {"name": "minutes", "valueInteger": 30}
        ]}))
        .unwrap();
        let r = request_of(&p).unwrap();
        assert_eq!(r.reason, Some("emergency-treatment"));
        assert_eq!(r.minutes, Some(30));
        let twice = params(json!({"resourceType": "Parameters", "parameter": [
            {"name": "minutes", "valueInteger": 30}, {"name": "minutes", "valueInteger": 31}
        ]}))
        .unwrap();
        assert!(request_of(&twice).is_err());
        let other = params(json!({"resourceType": "Parameters", "parameter": [
            {"name": "patient", "valueString": "x"}
        ]}))
        .unwrap();
        assert!(request_of(&other).is_err());
        assert!(params(json!({"resourceType": "Parameters", "extra": 1})).is_err());
    }
}
