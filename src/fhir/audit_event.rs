//! The audit trail as FHIR R4 `AuditEvent` resources (read by id, search), shaped after
//! IHE Basic Audit Log Patterns (BALP) where they fit, for privacy officers' and security
//! teams' tools. Who may read which part is decided by the pipeline on the route's
//! [`Action::AuditTrail`](crate::policy::Action) ([`crate::policy::review::trail_scope`]):
//! reviewers the whole trail, a patient only the events about their own record — and then
//! each event names no other patient. An event carries references and codes only: the
//! trail holds no name, MRN or query string, so none can reach a resource. Every read and
//! search of the trail is itself recorded (`read`/`search` `AuditLog`, naming the patients
//! the answer referenced).

use super::bundle;
use super::config::FhirSettings;
use super::params;
use super::types::invalid;
use super::{FHIR_JSON, negotiate};
use crate::access::pipeline::Pipeline;
use crate::audit::search::{self, Cursor, Filter, OutcomeCode};
use crate::audit::store::EventRow;
use crate::audit::{AuditAction, ResourceType as Kind, What};
use crate::domain::{PatientId, UserId};
use crate::error::AppError;
use crate::policy::Interaction;
use crate::policy::review::TrailScope;
use crate::state::AppState;
use actix_web::{HttpRequest, HttpResponse, web};
use base64::Engine;
use serde_json::{Value, json};
use uuid::Uuid;

const TYPE_SYSTEM: &str = "http://terminology.hl7.org/CodeSystem/audit-event-type";
const DICOM: &str = "http://dicom.nema.org/resources/ontology/DCM";
const INTERACTION: &str = "http://hl7.org/fhir/restful-interaction";
/// Custodian's own codes: the action of every event, the roles, people and clients.
pub const ACTION_SYSTEM: &str = "urn:custodian:audit-action";
const ROLE_SYSTEM: &str = "urn:custodian:role";
const USER_SYSTEM: &str = "urn:custodian:user";
const CLIENT_SYSTEM: &str = "urn:custodian:client";
const ENTITY_TYPE: &str = "http://terminology.hl7.org/CodeSystem/audit-entity-type";
const OBJECT_ROLE: &str = "http://terminology.hl7.org/CodeSystem/object-role";
const BALP_ENTITY: &str = "https://profiles.ihe.net/ITI/BALP/CodeSystem/BasicAuditEntityType";
const PURPOSE_SYSTEM: &str = "http://terminology.hl7.org/CodeSystem/v3-ActReason";

/// The search parameters (FHIR name, type), in CapabilityStatement order.
pub const SEARCH: &[(&str, &str)] = &[
    ("patient", "reference"),
    ("agent", "reference"),
    ("date", "date"),
    ("outcome", "token"),
    ("action", "token"),
    ("type", "token"),
    ("subtype", "token"),
    ("_count", "number"),
];

/// What the CapabilityStatement lists for `AuditEvent`.
pub fn capability() -> Value {
    let params: Vec<Value> = SEARCH
        .iter()
        .map(|(name, kind)| json!({ "name": name, "type": kind }))
        .collect();
    json!({
        "type": "AuditEvent",
        "interaction": [{ "code": "read" }, { "code": "search-type" }],
        "versioning": "no-version",
        "readHistory": false,
        "updateCreate": false,
        "searchParam": params,
    })
}

/// The event `type` (one code per action): DICOM's user authentication, audit log use
/// and security alert, HL7's RESTful operation for everything done to a resource.
fn event_type(a: AuditAction) -> (&'static str, &'static str, &'static str) {
    use AuditAction as A;
    match a {
        A::Login
        | A::LoginFailed
        | A::StepUp
        | A::Logout
        | A::SessionRevoked
        | A::EmergencyLogin => (DICOM, "110114", "User Authentication"),
        A::AuditExport | A::AuditVerify => (DICOM, "110101", "Audit Log Used"),
        A::BreakGlassRequest
        | A::BreakGlassStart
        | A::BreakGlassEnd
        | A::BreakGlassWithdraw
        | A::BreakGlassDecision
        | A::BreakGlassReview
        | A::BreakGlassLookup
        | A::Reidentify
        | A::KeyRotation => (DICOM, "110113", "Security Alert"),
        A::PermissionChange
        | A::CareRelationshipChange
        | A::ClientRevoked
        | A::ConfidentialityChange
        | A::EmergencyAccountChange
        | A::ChangeRequested
        | A::ChangeApproved
        | A::ChangeDenied => (DICOM, "110136", "Security Roles Changed"),
        A::Read | A::Search | A::Create | A::Update | A::Delete | A::Export => {
            (TYPE_SYSTEM, "rest", "RESTful Operation")
        }
    }
}

/// The FHIR restful interaction of a data action (BALP's subtype).
fn interaction_code(a: AuditAction) -> Option<&'static str> {
    match a {
        AuditAction::Read => Some("read"),
        AuditAction::Search => Some("search-type"),
        AuditAction::Create => Some("create"),
        AuditAction::Update => Some("update"),
        AuditAction::Delete => Some("delete"),
        _ => None,
    }
}

/// `AuditEvent.action`: C, R, U, D or E (a search, an export and every other operation
/// executes something, as BALP codes a query).
fn action_code(a: AuditAction) -> &'static str {
    match a {
        AuditAction::Create => "C",
        AuditAction::Read => "R",
        AuditAction::Update => "U",
        AuditAction::Delete => "D",
        _ => "E",
    }
}

fn outcome_code(outcome: &str) -> &'static str {
    match outcome {
        "permit" => "0",
        "deny" => "4",
        _ => "8",
    }
}

/// The FHIR resource types an event's resource id is a reference to.
const FHIR_KINDS: [Kind; 4] = [
    Kind::Patient,
    Kind::Observation,
    Kind::DocumentReference,
    Kind::Claim,
];

/// One event as an `AuditEvent`, naming only the patients `scope` lets the caller see.
pub fn to_fhir(e: &EventRow, scope: TrailScope) -> Value {
    let action = AuditAction::from_code(&e.action).unwrap_or(AuditAction::Read);
    let (system, code, display) = event_type(action);
    let mut subtype = vec![json!({ "system": ACTION_SYSTEM, "code": e.action })];
    if let Some(i) = interaction_code(action) {
        subtype.insert(0, json!({ "system": INTERACTION, "code": i }));
    }
    let mut agent = json!({
        "type": { "coding": [{
            "system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType",
            "code": "IRCP", "display": "information recipient" }] },
        "requestor": true,
    });
    if let Some(user) = e.actor_user_id {
        agent["who"] =
            json!({ "identifier": { "system": USER_SYSTEM, "value": user.to_string() } });
    } else if let Some(client) = &e.actor_client_id {
        agent["who"] = json!({ "identifier": { "system": CLIENT_SYSTEM, "value": client } });
    }
    if !e.actor_roles.is_empty() {
        let roles: Vec<Value> = e
            .actor_roles
            .iter()
            .map(|r| json!({ "coding": [{ "system": ROLE_SYSTEM, "code": r }] }))
            .collect();
        agent["role"] = Value::Array(roles);
    }
    // The network address of the person's device is for reviewers, not for patients.
    if let (TrailScope::All, Some(ip)) = (scope, &e.source_ip) {
        agent["network"] = json!({ "address": ip, "type": "2" });
    }
    let mut agents = vec![agent];
    if let Some(app) = &e.client_app {
        agents.push(json!({
            "type": { "coding": [{ "system": DICOM, "code": "110150", "display": "Application" }] },
            "who": { "identifier": { "system": CLIENT_SYSTEM, "value": app } },
            "requestor": false,
        }));
    }
    let mut entities: Vec<Value> = visible_patients(e, scope)
        .into_iter()
        .map(|p| {
            json!({
                "what": { "reference": format!("Patient/{p}") },
                "type": { "system": ENTITY_TYPE, "code": "1", "display": "Person" },
                "role": { "system": OBJECT_ROLE, "code": "1", "display": "Patient" },
            })
        })
        .collect();
    if let (Some(kind), Some(id)) = (
        e.resource_type.as_deref().and_then(Kind::from_code),
        e.resource_id,
    ) {
        // A patient sees the resource only when it is about their record.
        let own = match scope {
            TrailScope::All => true,
            TrailScope::OwnRecord(p) => e.patient_ids == [p],
        };
        // A Patient read names the patient once, as the patient entity above.
        let named = kind == Kind::Patient && e.patient_ids.contains(&PatientId(id));
        let own = own && !named;
        if own && FHIR_KINDS.contains(&kind) {
            entities.push(json!({
                "what": { "reference": format!("{}/{id}", kind.code()) },
                "type": { "system": ENTITY_TYPE, "code": "2", "display": "System Object" },
                "role": { "system": OBJECT_ROLE, "code": "4", "display": "Domain Resource" },
            }));
        } else if own {
            entities.push(json!({
                "what": { "identifier": {
                    "system": format!("urn:custodian:{}", kind.code()), "value": id.to_string() } },
                "type": { "system": ENTITY_TYPE, "code": "2", "display": "System Object" },
            }));
        }
    }
    if let Some(rid) = &e.request_id {
        entities.push(json!({
            "what": { "identifier": { "system": "urn:custodian:request-id", "value": rid } },
            "type": { "system": BALP_ENTITY, "code": "XrequestId", "display": "X-Request-Id" },
        }));
    }
    if let Some(grant) = e.break_glass_grant_id {
        entities.push(json!({
            "what": { "identifier": { "system": "urn:custodian:break-glass-grant", "value": grant.to_string() } },
            "type": { "system": ENTITY_TYPE, "code": "2", "display": "System Object" },
        }));
    }
    let recorded = params::instant(&e.occurred_at);
    let mut out = json!({
        "resourceType": "AuditEvent",
        "id": e.event_id.to_string(),
        "meta": { "lastUpdated": recorded },
        "type": { "system": system, "code": code, "display": display },
        "subtype": subtype,
        "action": action_code(action),
        "recorded": recorded,
        "outcome": outcome_code(&e.outcome),
        "agent": agents,
        "source": {
            "observer": { "display": "Custodian" },
            "type": [{ "system": "http://terminology.hl7.org/CodeSystem/security-source-type",
                       "code": "4", "display": "Application Server" }],
        },
    });
    if let Some(reason) = &e.deny_reason {
        out["outcomeDesc"] = json!(reason);
    }
    if let Some(purpose) = &e.purpose_of_use {
        out["purposeOfEvent"] =
            json!([{ "coding": [{ "system": PURPOSE_SYSTEM, "code": purpose }] }]);
    }
    if !entities.is_empty() {
        out["entity"] = Value::Array(entities);
    }
    out
}

/// The patients of an event the caller may see named.
fn visible_patients(e: &EventRow, scope: TrailScope) -> Vec<PatientId> {
    match scope {
        TrailScope::All => e.patient_ids.clone(),
        TrailScope::OwnRecord(p) => e.patient_ids.iter().copied().filter(|x| *x == p).collect(),
    }
}

/// The actions a token of `type`, `subtype` or `action` names (`None`: a code we do
/// not know, which matches no event).
fn actions_of(param: &'static str, value: &str) -> Result<Vec<AuditAction>, AppError> {
    let mut out = Vec::new();
    for v in params::or_values(param, value)? {
        let (system, code) = match v.split_once('|') {
            Some((s, c)) => (Some(s), c),
            None => (None, v.as_str()),
        };
        let system_is = |s: &str| system.is_none_or(|x| x == s);
        out.extend(AuditAction::ALL.iter().copied().filter(|a| match param {
            "type" => {
                let (s, c, _) = event_type(*a);
                system_is(s) && c == code
            }
            "subtype" => {
                (system_is(ACTION_SYSTEM) && a.code() == code)
                    || (system_is(INTERACTION) && interaction_code(*a) == Some(code))
            }
            _ => system.is_none() && action_code(*a) == code,
        }));
    }
    Ok(out)
}

/// Keeps the actions in both sets (the parameters are ANDed).
fn narrow(current: Option<Vec<AuditAction>>, by: Vec<AuditAction>) -> Option<Vec<AuditAction>> {
    Some(match current {
        None => by,
        Some(c) => c.into_iter().filter(|a| by.contains(a)).collect(),
    })
}

/// A user id given as `agent`: a bare id, `Practitioner/<id>` or `urn:custodian:user|<id>`.
fn agent_param(value: &str) -> Result<UserId, AppError> {
    let id = value
        .strip_prefix(USER_SYSTEM)
        .and_then(|r| r.strip_prefix('|'))
        .or_else(|| value.split_once('/').map(|(_, id)| id))
        .unwrap_or(value);
    UserId::parse(id).ok_or_else(|| invalid("agent", "must be a user id"))
}

/// The search's filter (`Ok(None)`: it can match nothing) and page size.
fn filter(query: &[(&'static str, String)]) -> Result<(Option<Filter>, usize), AppError> {
    let mut f = Filter::default();
    let mut actions: Option<Vec<AuditAction>> = None;
    let mut empty = false;
    for (name, value) in query {
        match *name {
            "patient" => {
                let p = PatientId(params::patient_param(value)?);
                if f.patient.replace(p).is_some_and(|prev| prev != p) {
                    empty = true;
                }
            }
            "agent" => {
                let u = agent_param(value)?;
                if f.actor.replace(u).is_some_and(|prev| prev != u) {
                    empty = true;
                }
            }
            "date" => {
                let mut ranges = params::date_conditions("date", value)?;
                let (Some(r), true) = (ranges.pop(), ranges.is_empty()) else {
                    return Err(invalid("date", "takes one value per parameter here"));
                };
                if r.outside {
                    return Err(invalid("date", "does not support the ne prefix here"));
                }
                if let Some(from) = r.from {
                    f.since = Some(f.since.map_or(from, |s| s.max(from)));
                }
                if let Some(until) = r.until {
                    f.until = Some(f.until.map_or(until, |u| u.min(until)));
                }
            }
            "outcome" => {
                let code = value.rsplit('|').next().unwrap_or_default();
                let o = match code {
                    "0" => OutcomeCode::Permit,
                    "4" => OutcomeCode::Deny,
                    "8" | "12" => OutcomeCode::Error,
                    _ => return Err(invalid("outcome", "must be 0, 4, 8 or 12")),
                };
                if f.outcome.replace(o).is_some_and(|prev| prev != o) {
                    empty = true;
                }
            }
            "action" | "type" | "subtype" => {
                actions = narrow(actions, actions_of(name, value)?);
            }
            _ => {}
        }
    }
    let count = bundle::page_size(params::single(query, "_count")?)?;
    if let Some(a) = actions {
        if a.is_empty() {
            empty = true;
        }
        f.actions = a;
    }
    Ok(((!empty).then_some(f), count))
}

/// Every query parameter the search accepts.
fn accepted() -> Vec<&'static str> {
    SEARCH
        .iter()
        .map(|(n, _)| *n)
        .chain([super::resource::CURSOR])
        .collect()
}

fn cursor_place(user: UserId) -> crate::crypto::FieldPlace {
    crate::crypto::columns::cursor("AuditEvent", user)
}

/// The sequence number a page ended at, sealed to the caller (opaque, unforgeable).
fn seal_cursor(state: &AppState, user: UserId, seq: i64) -> Result<String, AppError> {
    let sealed = state
        .keyring
        .seal(&cursor_place(user), &seq.to_be_bytes())
        .map_err(|_| AppError::internal("cursor sealing failed"))?;
    Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(sealed))
}

fn open_cursor(state: &AppState, user: UserId, raw: &str) -> Result<i64, AppError> {
    let bad = || invalid("_cursor", "is not a cursor this server issued to you");
    if raw.len() > 200 {
        return Err(bad());
    }
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(raw)
        .map_err(|_| bad())?;
    let plain = state
        .keyring
        .open(&cursor_place(user), &bytes)
        .map_err(|_| bad())?;
    let seq: [u8; 8] = plain.as_slice().try_into().map_err(|_| bad())?;
    Ok(i64::from_be_bytes(seq))
}

fn what(interaction: Interaction) -> What {
    What::new(AuditAction::from(interaction)).on(Kind::AuditLog)
}

fn scope_of(pipeline: &Pipeline) -> Result<TrailScope, AppError> {
    // The pipeline refused the request already when this is an error.
    pipeline
        .trail_scope()
        .map_err(|_| AppError::internal("audit trail route without a scope"))
}

/// `GET /fhir/AuditEvent/{id}`.
pub async fn read(
    req: HttpRequest,
    pipeline: Pipeline,
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, AppError> {
    let scope = scope_of(&pipeline)?;
    let input = negotiate(&req)
        .and_then(|()| params::search_params(&req, &[]))
        .and_then(|_| Uuid::parse_str(&path).map_err(|_| AppError::not_found()));
    let id = match input {
        Ok(id) => id,
        Err(e) => {
            pipeline.recorder.error(what(Interaction::Read), []).await?;
            return Err(e);
        }
    };
    let what = what(Interaction::Read).id(id);
    let found = state.db.run(move |c| Ok(search::event_by_id(c, id)?)).await;
    let row = match found {
        Ok(row) => row,
        Err(e) => {
            pipeline.recorder.error(what, []).await?;
            return Err(e);
        }
    };
    let visible = row.filter(|e| match scope {
        TrailScope::All => true,
        TrailScope::OwnRecord(p) => e.patient_ids.contains(&p),
    });
    let Some(row) = visible else {
        // Another patient's event answers like a missing one.
        match scope {
            TrailScope::OwnRecord(p) => {
                let reason = crate::audit::DenyReason::NoRelationship;
                pipeline.recorder.deny(what, [p], reason).await?;
            }
            TrailScope::All => pipeline.recorder.error(what, []).await?,
        }
        return Err(AppError::not_found());
    };
    pipeline
        .recorder
        .permit(what, visible_patients(&row, scope))
        .await?;
    Ok(HttpResponse::Ok()
        .content_type(FHIR_JSON)
        .body(to_fhir(&row, scope).to_string()))
}

/// `GET /fhir/AuditEvent?…`: newest first, keyset-paged on the chain sequence.
pub async fn search(
    req: HttpRequest,
    pipeline: Pipeline,
    state: web::Data<AppState>,
    settings: web::Data<FhirSettings>,
) -> Result<HttpResponse, AppError> {
    let scope = scope_of(&pipeline)?;
    let user = pipeline.principal.user.id;
    let parsed = negotiate(&req)
        .and_then(|()| params::search_params(&req, &accepted()))
        .and_then(|query| {
            let (f, count) = filter(&query)?;
            let cursor = match params::single(&query, super::resource::CURSOR)? {
                Some(raw) => Cursor::Before(open_cursor(&state, user, raw)?),
                None => Cursor::Newest,
            };
            Ok((f, count, cursor))
        });
    let (f, count, cursor) = match parsed {
        Ok(v) => v,
        Err(e) => {
            pipeline
                .recorder
                .error(what(Interaction::Search), [])
                .await?;
            return Err(e);
        }
    };
    // A patient's search is confined to their own record.
    let f = match (f, scope) {
        (Some(f), TrailScope::All) => Some(f),
        (Some(mut f), TrailScope::OwnRecord(p)) => match f.patient.replace(p) {
            Some(other) if other != p => None,
            _ => Some(f),
        },
        (None, _) => None,
    };
    let limit = i64::try_from(count).unwrap_or(20);
    let found = match f {
        Some(f) => {
            state
                .db
                .run(move |c| Ok(search::search(c, &f, cursor, limit)?))
                .await
        }
        None => Ok(search::Page {
            rows: Vec::new(),
            older: None,
            newer: None,
        }),
    };
    let page = match found {
        Ok(p) => p,
        Err(e) => {
            pipeline
                .recorder
                .error(what(Interaction::Search), [])
                .await?;
            return Err(e);
        }
    };
    let mut named: Vec<PatientId> = page
        .rows
        .iter()
        .flat_map(|e| visible_patients(e, scope))
        .collect();
    named.sort();
    named.dedup();
    let next = match page.older {
        Some(seq) => Some(seal_cursor(&state, user, seq)?),
        None => None,
    };
    pipeline
        .recorder
        .permit(what(Interaction::Search), named)
        .await?;
    let entries: Vec<Value> = page.rows.iter().map(|e| to_fhir(e, scope)).collect();
    let links = bundle::links(
        &settings,
        "AuditEvent",
        req.query_string(),
        false,
        next.as_deref(),
    );
    let body = bundle::searchset(&settings, "AuditEvent", links, entries, None);
    Ok(HttpResponse::Ok()
        .content_type(FHIR_JSON)
        .body(body.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn type_subtype_and_action_tokens_name_sets_of_actions() {
        let rest = actions_of("type", "rest").unwrap();
        assert!(rest.contains(&AuditAction::Read) && !rest.contains(&AuditAction::Login));
        assert_eq!(
            actions_of("type", &format!("{DICOM}|110114")).unwrap(),
            actions_of("type", "110114").unwrap()
        );
        assert!(actions_of("type", "other|rest").unwrap().is_empty());
        assert_eq!(
            actions_of("subtype", "read").unwrap(),
            vec![AuditAction::Read]
        );
        assert_eq!(
            actions_of("subtype", &format!("{ACTION_SYSTEM}|break-glass-start")).unwrap(),
            vec![AuditAction::BreakGlassStart]
        );
        assert_eq!(
            actions_of("action", "C").unwrap(),
            vec![AuditAction::Create]
        );
        assert_eq!(
            actions_of("action", "C,D").unwrap(),
            vec![AuditAction::Create, AuditAction::Delete]
        );
    }

    #[test]
    fn agent_takes_an_id_a_reference_or_a_token() {
        let id = Uuid::from_u128(7);
        for v in [
            id.to_string(),
            format!("Practitioner/{id}"),
            format!("{USER_SYSTEM}|{id}"),
        ] {
            assert_eq!(agent_param(&v).unwrap(), UserId(id), "{v}");
        }
        assert!(agent_param("someone").is_err());
    }
}
