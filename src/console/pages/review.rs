//! Audit review for privacy officers and administrators: the audit search (filters,
//! keyset paging both ways), one event in full, and a patient's access report (page and
//! CSV). What a reviewer may do is decided by [`policy::review`]; every page view is
//! itself recorded (reviewing is an access), with purpose of use `HCOMPL`. Patients are
//! named (MRN, name) only to privacy officers, and an MRN never travels in a URL: the
//! search form is POSTed, the MRN resolved through the blind index, and the browser sent
//! on to the search by the patient's internal id.

use super::actions::Form;
use super::time;
use crate::audit::search::{self, Cursor, Filter, OutcomeCode, basis, bound, display_names};
use crate::audit::store::EventRow;
use crate::audit::{AuditAction, DenyReason, PurposeOfUse, Recorder, ResourceType as Kind, What};
use crate::console::gate::{Console, ConsoleForm, ConsolePage, check_post, see_other};
use crate::db::schema::users as users_t;
use crate::domain::{PatientId, UserId};
use crate::error::AppError;
use crate::policy::review::{Review, may_review};
use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use askama::Template;
use askama_web::WebTemplate;
use chrono::{DateTime, Utc};
use diesel::prelude::*;
use std::collections::HashMap;
use std::net::IpAddr;
use uuid::Uuid;

/// Events per page of the audit search.
pub const SEARCH_PAGE_SIZE: i64 = 50;
/// Most events an access report lists (page and CSV).
pub const REPORT_LIMIT: i64 = 10_000;
/// The default period of an access report (days back from now).
const REPORT_DEFAULT_DAYS: i64 = 365;

/// The recorder of review events: this user, purpose of use compliance.
pub(super) fn reviewer(page: &Console) -> Recorder {
    page.audit.clone().with_purpose(PurposeOfUse::Compliance)
}

/// Refuses (and records the refusal) unless the policy lets this user do `what`.
pub(super) async fn admit(page: &Console, what: Review, action: What) -> Result<(), AppError> {
    match may_review(&page.me.user.roles, what) {
        Ok(()) => Ok(()),
        Err(reason) => {
            reviewer(page).deny(action, [], reason).await?;
            Err(AppError::client(
                StatusCode::FORBIDDEN,
                "This review needs the privacy_officer role.",
            ))
        }
    }
}

/// Records the view of a review page (permit), naming the patients it identified.
async fn viewed(
    page: &Console,
    what: What,
    patients: impl IntoIterator<Item = PatientId>,
) -> Result<(), AppError> {
    reviewer(page).permit(what, patients).await
}

fn search_what() -> What {
    What::new(AuditAction::Search).on(Kind::AuditLog)
}

// ---------------------------------------------------------------------------------------
// Filters: the query string (GET) or the form (POST) → a typed filter.

/// The raw filter fields, as the form names them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RawFilter {
    pub person: String,
    pub patient: String,
    pub action: String,
    pub resource: String,
    pub outcome: String,
    pub reason: String,
    pub grant: String,
    pub purpose: String,
    pub ip: String,
    pub from: String,
    pub to: String,
    /// `oldest` (oldest first) or empty / `newest`.
    pub order: String,
}

const FILTER_FIELDS: [&str; 12] = [
    "person", "patient", "action", "resource", "outcome", "reason", "grant", "purpose", "ip",
    "from", "to", "order",
];

impl RawFilter {
    fn field(&mut self, name: &str) -> Option<&mut String> {
        Some(match name {
            "person" => &mut self.person,
            "patient" => &mut self.patient,
            "action" => &mut self.action,
            "resource" => &mut self.resource,
            "outcome" => &mut self.outcome,
            "reason" => &mut self.reason,
            "grant" => &mut self.grant,
            "purpose" => &mut self.purpose,
            "ip" => &mut self.ip,
            "from" => &mut self.from,
            "to" => &mut self.to,
            "order" => &mut self.order,
            _ => return None,
        })
    }

    fn get(&self, name: &str) -> &str {
        match name {
            "person" => &self.person,
            "patient" => &self.patient,
            "action" => &self.action,
            "resource" => &self.resource,
            "outcome" => &self.outcome,
            "reason" => &self.reason,
            "grant" => &self.grant,
            "purpose" => &self.purpose,
            "ip" => &self.ip,
            "from" => &self.from,
            "order" => &self.order,
            _ => &self.to,
        }
    }

    /// The filter fields of a query string or form body, and the other pairs.
    pub(super) fn split(pairs: Vec<(String, String)>) -> (RawFilter, Vec<(String, String)>) {
        let mut raw = RawFilter::default();
        let mut rest = Vec::new();
        for (k, v) in pairs {
            match raw.field(&k) {
                Some(slot) => *slot = v.trim().to_string(),
                None => rest.push((k, v)),
            }
        }
        (raw, rest)
    }

    /// The query string of these filters (empty fields left out), plus `extra`.
    pub fn query(&self, extra: &[(&str, String)]) -> String {
        let mut s = url::form_urlencoded::Serializer::new(String::new());
        for name in FILTER_FIELDS {
            let v = self.get(name);
            if !v.is_empty() {
                s.append_pair(name, v);
            }
        }
        for (k, v) in extra {
            s.append_pair(k, v);
        }
        s.finish()
    }
}

fn invalid(field: &'static str) -> AppError {
    AppError::bad_request(match field {
        "person" => "Invalid filter 'person': give a user id.",
        "patient" => "Invalid filter 'patient': give a patient id (or search by MRN).",
        "action" => "Invalid filter 'action': choose one of the listed actions.",
        "resource" => "Invalid filter 'resource': choose one of the listed resource types.",
        "outcome" => "Invalid filter 'outcome': use permit, deny or error.",
        "reason" => "Invalid filter 'reason': choose one of the listed deny reasons.",
        "grant" => "Invalid filter 'grant': give a break-glass grant id.",
        "purpose" => "Invalid filter 'purpose': choose one of the listed purposes of use.",
        "ip" => "Invalid filter 'ip': give an IPv4 or IPv6 address.",
        "from" | "to" => "Invalid time range: use dates as YYYY-MM-DD or YYYY-MM-DDTHH:MM (UTC).",
        "order" => "Invalid order: use newest or oldest.",
        _ => "Invalid query.",
    })
}

fn opt<T>(
    raw: &str,
    field: &'static str,
    parse: impl FnOnce(&str) -> Option<T>,
) -> Result<Option<T>, AppError> {
    if raw.is_empty() {
        return Ok(None);
    }
    parse(raw).map(Some).ok_or_else(|| invalid(field))
}

impl RawFilter {
    /// The typed filter; a field that does not parse is a 400 naming the field (never
    /// echoing the value).
    pub fn parse(&self) -> Result<Filter, AppError> {
        Ok(Filter {
            actor: opt(&self.person, "person", UserId::parse)?,
            patient: opt(&self.patient, "patient", PatientId::parse)?,
            action: opt(&self.action, "action", AuditAction::from_code)?,
            actions: Vec::new(),
            resource_type: opt(&self.resource, "resource", Kind::from_code)?,
            outcome: opt(&self.outcome, "outcome", OutcomeCode::from_code)?,
            deny_reason: opt(&self.reason, "reason", DenyReason::from_code)?,
            break_glass_grant: opt(&self.grant, "grant", |s| Uuid::parse_str(s).ok())?,
            purpose: opt(&self.purpose, "purpose", PurposeOfUse::from_code)?,
            source_ip: opt(&self.ip, "ip", |s| s.parse::<IpAddr>().ok())?,
            since: opt(&self.from, "from", |s| bound(s, false))?,
            until: opt(&self.to, "to", |s| bound(s, true))?,
            oldest_first: opt(&self.order, "order", |s| match s {
                "newest" => Some(false),
                "oldest" => Some(true),
                _ => None,
            })?
            .unwrap_or(false),
        })
    }
}

pub(super) fn pairs(query: &str) -> Vec<(String, String)> {
    url::form_urlencoded::parse(query.as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

/// The cursor of `before=` / `after=` (at most one).
fn cursor(rest: &[(String, String)]) -> Result<Cursor, AppError> {
    let bad = || AppError::bad_request("Invalid paging: use before=<seq> or after=<seq>.");
    let mut cursor = Cursor::Newest;
    for (k, v) in rest {
        let seq = || v.parse::<i64>().map_err(|_| bad());
        cursor = match (k.as_str(), cursor) {
            ("before", Cursor::Newest) => Cursor::Before(seq()?),
            ("after", Cursor::Newest) => Cursor::After(seq()?),
            _ => return Err(bad()),
        };
    }
    Ok(cursor)
}

// ---------------------------------------------------------------------------------------
// People and patients as a reviewer sees them.

/// The first 8 characters of an id (the full id is on the event page).
pub fn short(id: &Uuid) -> String {
    id.simple().to_string().chars().take(8).collect()
}

/// A person (or client) as the review pages show them.
pub struct PersonCell {
    /// Display name, else the client id, else "anonymous" / "command line".
    pub name: String,
    /// Roles at the time of the event.
    pub roles: String,
    pub short_id: String,
    /// The person's id (filter link), empty for clients and anonymous callers.
    pub id: String,
}

fn person(e: &EventRow, names: &HashMap<UserId, String>) -> PersonCell {
    let name = match (&e.actor_user_id, &e.actor_client_id) {
        (Some(u), _) => names
            .get(u)
            .cloned()
            .unwrap_or_else(|| "(no display name)".into()),
        (None, Some(c)) => format!("client {c}"),
        (None, None) if e.auth_method == "cli" => "command line".into(),
        (None, None) => "anonymous".into(),
    };
    PersonCell {
        name,
        roles: e.actor_roles.join(", "),
        short_id: e
            .actor_user_id
            .map(|u| short(&u.as_uuid()))
            .unwrap_or_default(),
        id: e.actor_user_id.map(|u| u.to_string()).unwrap_or_default(),
    }
}

/// A patient as a privacy officer sees them beside the events.
pub struct PatientCell {
    pub id: String,
    pub short_id: String,
    pub mrn: String,
    pub name: String,
}

/// Opens the patients (MRN and name) for a privacy officer; ids only otherwise.
fn patient_cells(
    conn: &mut PgConnection,
    kr: &crate::crypto::Keyring,
    ids: &[PatientId],
    identify: bool,
) -> Result<Vec<PatientCell>, AppError> {
    ids.iter()
        .map(|id| {
            let mut cell = PatientCell {
                id: id.to_string(),
                short_id: short(&id.as_uuid()),
                mrn: String::new(),
                name: String::new(),
            };
            if identify && let Some(p) = crate::db::patients::patient_by_id(conn, kr, *id)? {
                cell.mrn = p.mrn.expose().clone();
                cell.name = format!("{} {}", p.given.expose(), p.family.expose());
            }
            Ok(cell)
        })
        .collect()
}

fn outcome_text(e: &EventRow) -> String {
    match &e.deny_reason {
        Some(reason) => format!("{} ({reason})", e.outcome),
        None => e.outcome.clone(),
    }
}

// ---------------------------------------------------------------------------------------
// GET /console/audit: the search.

/// One event in the search results.
pub struct SearchRow {
    pub seq: i64,
    pub time: String,
    pub person: PersonCell,
    pub action: String,
    pub resource: String,
    pub outcome: String,
    pub denied: bool,
    pub patients: usize,
    pub purpose: String,
    pub break_glass: bool,
}

/// A choice of a filter's select box.
pub struct Choice {
    pub code: &'static str,
    pub selected: bool,
}

fn choices<T: Copy>(all: &[T], code: fn(T) -> &'static str, current: &str) -> Vec<Choice> {
    all.iter()
        .map(|v| Choice {
            code: code(*v),
            selected: code(*v) == current,
        })
        .collect()
}

#[derive(Template, WebTemplate)]
#[template(path = "console/audit.html")]
pub struct SearchPage {
    chrome: super::Chrome,
    f: RawFilter,
    /// Whether the viewer may name patients (the MRN field, the report link).
    identify: bool,
    actions: Vec<Choice>,
    resources: Vec<Choice>,
    outcomes: Vec<Choice>,
    reasons: Vec<Choice>,
    purposes: Vec<Choice>,
    /// The patient filtered on, named (privacy officers only).
    patient: Option<PatientCell>,
    events: Vec<SearchRow>,
    older: String,
    newer: String,
    newest: String,
    oldest_first: bool,
    /// The filter as a query string, for the export form.
    export_filter: String,
}

/// GET /console/audit?<filters>&before=|after=: the audit search, newest first.
pub async fn search_page(req: HttpRequest, page: ConsolePage) -> Result<SearchPage, AppError> {
    admit(&page, Review::SearchTrail, search_what()).await?;
    let (raw, rest) = RawFilter::split(pairs(req.query_string()));
    let filter = raw.parse()?;
    let cursor = cursor(&rest)?;
    if filter.patient.is_some() {
        admit(&page, Review::IdentifyPatients, search_what()).await?;
    }
    let identify = may_review(&page.me.user.roles, Review::IdentifyPatients).is_ok();
    let kr = page.state.keyring.clone();
    let f = filter.clone();
    let result = page
        .state
        .db
        .run(move |c| {
            let found = search::search(c, &f, cursor, SEARCH_PAGE_SIZE)?;
            let mut people: Vec<UserId> =
                found.rows.iter().filter_map(|e| e.actor_user_id).collect();
            people.sort();
            people.dedup();
            let names = display_names(c, &people)?;
            let patient = match f.patient {
                Some(p) => patient_cells(c, &kr, &[p], true)?.pop(),
                None => None,
            };
            Ok((found, names, patient))
        })
        .await;
    let (found, names, patient) = match result {
        Ok(v) => v,
        Err(e) => {
            reviewer(&page)
                .record(
                    reviewer(&page)
                        .event(search_what(), [], crate::audit::Outcome::Error)
                        .build(),
                )
                .await?;
            return Err(e);
        }
    };
    viewed(&page, search_what(), filter.patient).await?;
    let link = |extra: &[(&str, String)]| {
        let q = raw.query(extra);
        if q.is_empty() {
            "/console/audit".to_string()
        } else {
            format!("/console/audit?{q}")
        }
    };
    let older = found
        .older
        .map(|s| link(&[("before", s.to_string())]))
        .unwrap_or_default();
    let newer = found
        .newer
        .map(|s| link(&[("after", s.to_string())]))
        .unwrap_or_default();
    let newest = if cursor == Cursor::Newest {
        String::new()
    } else {
        link(&[])
    };
    let events = found
        .rows
        .iter()
        .map(|e| SearchRow {
            seq: e.seq,
            time: time(e.occurred_at),
            person: person(e, &names),
            action: e.action.clone(),
            resource: match (&e.resource_type, e.resource_id) {
                (Some(t), Some(id)) => format!("{t} {id}"),
                (Some(t), None) => t.clone(),
                (None, _) => String::new(),
            },
            outcome: outcome_text(e),
            denied: e.outcome == "deny",
            patients: e.patient_ids.len(),
            purpose: e.purpose_of_use.clone().unwrap_or_default(),
            break_glass: e.break_glass_grant_id.is_some(),
        })
        .collect();
    Ok(SearchPage {
        chrome: page.0.chrome,
        identify,
        actions: choices(AuditAction::ALL, AuditAction::code, &raw.action),
        resources: choices(Kind::ALL, Kind::code, &raw.resource),
        outcomes: choices(&OutcomeCode::ALL, OutcomeCode::code, &raw.outcome),
        reasons: choices(DenyReason::ALL, DenyReason::code, &raw.reason),
        purposes: choices(PurposeOfUse::ALL, PurposeOfUse::code, &raw.purpose),
        export_filter: raw.query(&[]),
        f: raw,
        patient,
        events,
        older,
        newer,
        newest,
        oldest_first: filter.oldest_first,
    })
}

/// POST /console/audit: the search form with an MRN. The MRN is resolved through the
/// blind index (privacy officers only) and the browser sent on to the search by the
/// patient's internal id; the MRN itself is never in a URL nor in the audit trail.
pub async fn search_by_mrn(
    req: HttpRequest,
    page: ConsoleForm,
    body: web::Bytes,
) -> Result<HttpResponse, AppError> {
    let form = Form::parse(&body);
    check_post(&req, &page.me.session, form.get("csrf_token"))?;
    let what = What::new(AuditAction::Search).on(Kind::Patient);
    let (mut raw, _) = RawFilter::split(pairs(std::str::from_utf8(&body).unwrap_or_default()));
    let mrn = form.get("mrn").unwrap_or_default().trim().to_string();
    if !mrn.is_empty() {
        admit(&page, Review::IdentifyPatients, what).await?;
        if mrn.chars().count() > 64 {
            return Err(AppError::bad_request(
                "The MRN must be at most 64 characters.",
            ));
        }
        let kr = page.state.keyring.clone();
        let found = page
            .state
            .db
            .run(move |c| {
                // A malformed MRN matches no patient (its blind index cannot be computed).
                if kr.blind_index(crate::crypto::BlindKind::Mrn, &mrn).is_err() {
                    return Ok(None);
                }
                crate::db::patients::find_patient_by_mrn(c, &kr, &mrn)
            })
            .await?;
        let Some(patient) = found else {
            reviewer(&page).permit(what, []).await?;
            return Err(AppError::client(
                StatusCode::NOT_FOUND,
                "No patient has this MRN.",
            ));
        };
        reviewer(&page).permit(what, [patient.id]).await?;
        raw.patient = patient.id.to_string();
    }
    // Validate before redirecting, so a bad filter is refused here too.
    raw.parse()?;
    let q = raw.query(&[]);
    Ok(see_other(&if q.is_empty() {
        "/console/audit".to_string()
    } else {
        format!("/console/audit?{q}")
    }))
}

// ---------------------------------------------------------------------------------------
// GET /console/audit/{seq}: one event.

/// One labelled field of the event page.
pub struct Field {
    pub label: &'static str,
    pub value: String,
}

#[derive(Template, WebTemplate)]
#[template(path = "console/audit_event.html")]
pub struct EventPage {
    chrome: super::Chrome,
    seq: i64,
    person: PersonCell,
    fields: Vec<Field>,
    patients: Vec<PatientCell>,
    identify: bool,
}

/// Most patients the event page names (a search may return many).
const EVENT_PATIENTS_SHOWN: usize = 100;

/// GET /console/audit/{seq}: every field of one event, its chain hash, and (to privacy
/// officers) the patients it names.
pub async fn event_page(page: ConsolePage, path: web::Path<String>) -> Result<EventPage, AppError> {
    let what = What::new(AuditAction::Read).on(Kind::AuditLog);
    admit(&page, Review::SearchTrail, what).await?;
    let seq: i64 = path.parse().map_err(|_| AppError::not_found())?;
    let identify = may_review(&page.me.user.roles, Review::IdentifyPatients).is_ok();
    let kr = page.state.keyring.clone();
    let found = page
        .state
        .db
        .run(move |c| {
            let Some(e) = search::event(c, seq)? else {
                return Ok(None);
            };
            let names = display_names(c, &e.actor_user_id.into_iter().collect::<Vec<_>>())?;
            let shown: Vec<PatientId> = e
                .patient_ids
                .iter()
                .take(EVENT_PATIENTS_SHOWN)
                .copied()
                .collect();
            let patients = patient_cells(c, &kr, &shown, identify)?;
            Ok(Some((e, names, patients, shown)))
        })
        .await?;
    let Some((e, names, patients, shown)) = found else {
        viewed(&page, what, []).await?;
        return Err(AppError::not_found());
    };
    let identified: Vec<PatientId> = if identify { shown } else { Vec::new() };
    viewed(
        &page,
        What::new(AuditAction::Read)
            .on(Kind::AuditLog)
            .id(e.event_id),
        identified,
    )
    .await?;
    let opt = |v: &Option<String>| v.clone().unwrap_or_else(|| "—".into());
    let fields = vec![
        Field {
            label: "Sequence",
            value: e.seq.to_string(),
        },
        Field {
            label: "Event id",
            value: e.event_id.to_string(),
        },
        Field {
            label: "Time",
            value: time(e.occurred_at),
        },
        Field {
            label: "Person id",
            value: e
                .actor_user_id
                .map(|u| u.to_string())
                .unwrap_or_else(|| "—".into()),
        },
        Field {
            label: "Service client",
            value: opt(&e.actor_client_id),
        },
        Field {
            label: "Roles",
            value: e.actor_roles.join(", "),
        },
        Field {
            label: "Authenticated by",
            value: e.auth_method.clone(),
        },
        Field {
            label: "Client application",
            value: opt(&e.client_app),
        },
        Field {
            label: "Action",
            value: e.action.clone(),
        },
        Field {
            label: "Resource type",
            value: opt(&e.resource_type),
        },
        Field {
            label: "Resource id",
            value: e
                .resource_id
                .map(|u| u.to_string())
                .unwrap_or_else(|| "—".into()),
        },
        Field {
            label: "Outcome",
            value: e.outcome.clone(),
        },
        Field {
            label: "Deny reason",
            value: opt(&e.deny_reason),
        },
        Field {
            label: "Purpose of use",
            value: opt(&e.purpose_of_use),
        },
        Field {
            label: "Break-glass grant",
            value: e
                .break_glass_grant_id
                .map(|u| u.to_string())
                .unwrap_or_else(|| "—".into()),
        },
        Field {
            label: "Source address",
            value: opt(&e.source_ip),
        },
        Field {
            label: "Client kind",
            value: opt(&e.user_agent),
        },
        Field {
            label: "Request id",
            value: opt(&e.request_id),
        },
        Field {
            label: "Occurrences",
            value: e
                .occurrences
                .map(|n| n.to_string())
                .unwrap_or_else(|| "1".into()),
        },
        Field {
            label: "Patients named",
            value: e.patient_ids.len().to_string(),
        },
        Field {
            label: "Chain hash",
            value: hex::encode(&e.hash),
        },
    ];
    Ok(EventPage {
        chrome: page.0.chrome,
        seq: e.seq,
        person: person(&e, &names),
        fields,
        patients,
        identify,
    })
}

// ---------------------------------------------------------------------------------------
// GET /console/patients/{id}/access[.csv]: a patient's access report.

/// One access in a patient's report.
pub struct AccessRow {
    pub seq: i64,
    pub time: String,
    pub person: PersonCell,
    pub action: String,
    pub resource: String,
    /// "search" when the patient was among a search's results.
    pub via: &'static str,
    pub basis: &'static str,
    pub purpose: String,
    pub facility: String,
}

fn period(raw: &RawFilter, now: DateTime<Utc>) -> Result<(DateTime<Utc>, DateTime<Utc>), AppError> {
    let since = opt(&raw.from, "from", |s| bound(s, false))?
        .unwrap_or(now - chrono::Duration::days(REPORT_DEFAULT_DAYS));
    let until = opt(&raw.to, "to", |s| bound(s, true))?.unwrap_or(now);
    Ok((since, until))
}

struct Report {
    patient: PatientCell,
    since: DateTime<Utc>,
    until: DateTime<Utc>,
    rows: Vec<AccessRow>,
    truncated: bool,
    /// Accesses per UTC day of the period (the timeline chart).
    per_day: Vec<i64>,
}

/// Most days a timeline charts (a longer period shows its first days).
const TIMELINE_DAYS: i64 = 800;

/// How many of `times` fall on each UTC day from `since`'s day to `until`'s.
fn per_day(times: &[DateTime<Utc>], since: DateTime<Utc>, until: DateTime<Utc>) -> Vec<i64> {
    let first = since.date_naive();
    let days = (until.date_naive() - first)
        .num_days()
        .clamp(0, TIMELINE_DAYS)
        + 1;
    let mut out = vec![0; usize::try_from(days).unwrap_or(1)];
    for t in times {
        if let Some(n) = usize::try_from((t.date_naive() - first).num_days())
            .ok()
            .and_then(|i| out.get_mut(i))
        {
            *n += 1;
        }
    }
    out
}

async fn report(req: &HttpRequest, page: &Console, id: &str) -> Result<Report, AppError> {
    let what = What::new(AuditAction::Read).on(Kind::AuditLog);
    admit(page, Review::IdentifyPatients, what).await?;
    let patient = PatientId::parse(id).ok_or_else(AppError::not_found)?;
    let (raw, _) = RawFilter::split(pairs(req.query_string()));
    let (since, until) = period(&raw, page.state.clock.now())?;
    let kr = page.state.keyring.clone();
    let found = page
        .state
        .db
        .run(move |c| {
            let Some(cell) = patient_cells(c, &kr, &[patient], true)?.pop() else {
                return Ok(None);
            };
            if cell.mrn.is_empty() {
                return Ok(None);
            }
            let rows = search::patient_accesses(c, patient, since, until, REPORT_LIMIT + 1)?;
            let mut people: Vec<UserId> = rows.iter().filter_map(|e| e.actor_user_id).collect();
            people.sort();
            people.dedup();
            let names = display_names(c, &people)?;
            let facilities = facilities_of(c, &people)?;
            Ok(Some((cell, rows, names, facilities)))
        })
        .await?;
    let Some((cell, mut rows, names, facilities)) = found else {
        return Err(AppError::not_found());
    };
    viewed(page, what.id(patient.as_uuid()), [patient]).await?;
    let truncated = rows.len() as i64 > REPORT_LIMIT;
    rows.truncate(usize::try_from(REPORT_LIMIT).unwrap_or(0));
    let times: Vec<DateTime<Utc>> = rows.iter().map(|e| e.occurred_at).collect();
    Ok(Report {
        patient: cell,
        since,
        until,
        truncated,
        per_day: per_day(&times, since, until),
        rows: rows
            .iter()
            .map(|e| AccessRow {
                seq: e.seq,
                time: time(e.occurred_at),
                person: person(e, &names),
                action: e.action.clone(),
                resource: e.resource_type.clone().unwrap_or_default(),
                via: if e.action == "search" {
                    "search results"
                } else {
                    "direct"
                },
                basis: basis(e),
                purpose: e.purpose_of_use.clone().unwrap_or_default(),
                facility: e
                    .actor_user_id
                    .and_then(|u| facilities.get(&u).cloned())
                    .unwrap_or_default(),
            })
            .collect(),
    })
}

/// The facility name of each person (their facility now: events do not record it).
fn facilities_of(
    conn: &mut PgConnection,
    ids: &[UserId],
) -> Result<HashMap<UserId, String>, AppError> {
    let uuids: Vec<Uuid> = ids.iter().map(|u| u.as_uuid()).collect();
    let rows: Vec<(Uuid, Option<Uuid>)> = users_t::table
        .filter(users_t::id.eq_any(uuids))
        .select((users_t::id, users_t::facility_id))
        .load(conn)?;
    let facilities = crate::db::users::list_facilities(conn)?;
    Ok(rows
        .into_iter()
        .filter_map(|(u, f)| {
            let f = f?;
            let name = facilities
                .iter()
                .find(|x| x.id.as_uuid() == f)?
                .name
                .clone();
            Some((UserId(u), name))
        })
        .collect())
}

#[derive(Template, WebTemplate)]
#[template(path = "console/access_report.html")]
pub struct ReportPage {
    chrome: super::Chrome,
    patient: PatientCell,
    since: String,
    until: String,
    rows: Vec<AccessRow>,
    truncated: bool,
    csv: String,
    /// The patient's accesses per day (SVG; empty when it could not be drawn).
    timeline: String,
}

/// GET /console/patients/{id}/access?from=&to=: who accessed the patient's data in the
/// period (default: the last year), oldest first, printable.
pub async fn report_page(
    req: HttpRequest,
    page: ConsolePage,
    path: web::Path<String>,
) -> Result<ReportPage, AppError> {
    let r = report(&req, &page, &path).await?;
    let q = req.query_string();
    let csv = if q.is_empty() {
        format!("/console/patients/{}/access.csv", r.patient.id)
    } else {
        format!("/console/patients/{}/access.csv?{q}", r.patient.id)
    };
    Ok(ReportPage {
        timeline: super::charts::timeline(&r.per_day).unwrap_or_default(),
        chrome: page.0.chrome,
        since: time(r.since),
        until: time(r.until),
        patient: r.patient,
        rows: r.rows,
        truncated: r.truncated,
        csv,
    })
}

/// One CSV field: quoted, quotes doubled, and a value a spreadsheet would read as a
/// formula (leading `=`, `+`, `-`, `@`, tab or carriage return) prefixed with `'`.
pub fn csv_field(v: &str) -> String {
    let guarded = if v.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        format!("'{v}")
    } else {
        v.to_string()
    };
    format!("\"{}\"", guarded.replace('"', "\"\""))
}

/// GET /console/patients/{id}/access.csv: the same report as CSV.
pub async fn report_csv(
    req: HttpRequest,
    page: ConsolePage,
    path: web::Path<String>,
) -> Result<HttpResponse, AppError> {
    let id = path.trim_end_matches(".csv").to_string();
    let r = report(&req, &page, &id).await?;
    let mut out = String::from(
        "\"seq\",\"time\",\"person\",\"person_id\",\"roles\",\"facility\",\"action\",\"resource_type\",\"via\",\"basis\",\"purpose_of_use\"\r\n",
    );
    for a in &r.rows {
        let cells = [
            a.seq.to_string(),
            a.time.clone(),
            a.person.name.clone(),
            a.person.id.clone(),
            a.person.roles.clone(),
            a.facility.clone(),
            a.action.clone(),
            a.resource.clone(),
            a.via.to_string(),
            a.basis.to_string(),
            a.purpose.clone(),
        ];
        let line: Vec<String> = cells.iter().map(|c| csv_field(c)).collect();
        out.push_str(&line.join(","));
        out.push_str("\r\n");
    }
    Ok(HttpResponse::Ok()
        .content_type("text/csv; charset=utf-8")
        .insert_header((
            "content-disposition",
            format!(
                "attachment; filename=\"access-report-{}.csv\"",
                short(&Uuid::parse_str(&r.patient.id).unwrap_or_default())
            ),
        ))
        .insert_header(("cache-control", "no-store"))
        .body(out))
}

// ---------------------------------------------------------------------------------------
// GET /console/people/{id}/activity: one person's accesses in a period.

/// One day of the heat map: 24 cells, each a count and its shade class (h0..h4).
pub struct HeatRow {
    pub day: String,
    pub cells: Vec<(i64, &'static str)>,
}

/// The shade of `n` events when the busiest hour has `max` (CSS classes, no inline style:
/// the CSP is unchanged).
pub fn shade(n: i64, max: i64) -> &'static str {
    if n <= 0 || max <= 0 {
        return "h0";
    }
    let share = u64::try_from(n.saturating_mul(4))
        .unwrap_or(0)
        .div_ceil(u64::try_from(max).unwrap_or(1));
    match share {
        0 | 1 => "h1",
        2 => "h2",
        3 => "h3",
        _ => "h4",
    }
}

/// The heat map rows of `[since, until)`: every day, oldest first (at most 92).
fn heat_map(
    cells: &[(chrono::NaiveDate, u32, i64)],
    since: DateTime<Utc>,
    until: DateTime<Utc>,
) -> Vec<HeatRow> {
    let max = cells.iter().map(|c| c.2).max().unwrap_or(0);
    let mut rows = Vec::new();
    let mut day = since.date_naive();
    let last = (until - chrono::Duration::microseconds(1)).date_naive();
    while day <= last && rows.len() < 92 {
        let counts: Vec<(i64, &'static str)> = (0..24u32)
            .map(|h| {
                let n = cells
                    .iter()
                    .find(|c| c.0 == day && c.1 == h)
                    .map(|c| c.2)
                    .unwrap_or(0);
                (n, shade(n, max))
            })
            .collect();
        rows.push(HeatRow {
            day: day.format("%Y-%m-%d").to_string(),
            cells: counts,
        });
        let Some(next) = day.succ_opt() else { break };
        day = next;
    }
    rows
}

/// (permitted, denied) for each day of the heat map, in its order.
fn heat_days(by_day: &[(chrono::NaiveDate, i64, i64)], heat: &[HeatRow]) -> Vec<(i64, i64)> {
    heat.iter()
        .map(|row| {
            by_day
                .iter()
                .find(|d| d.0.format("%Y-%m-%d").to_string() == row.day)
                .map(|d| (d.1, d.2))
                .unwrap_or((0, 0))
        })
        .collect()
}

/// Most patients the activity page lists.
const ACTIVITY_PATIENTS: i64 = 50;
/// The default period of the activity page (days back from now).
const ACTIVITY_DEFAULT_DAYS: i64 = 30;

#[derive(Template, WebTemplate)]
#[template(path = "console/activity.html")]
pub struct ActivityPage {
    chrome: super::Chrome,
    person: String,
    person_id: String,
    since: String,
    until: String,
    events: i64,
    denials: i64,
    break_glass: i64,
    distinct_patients: i64,
    patients: Vec<(PatientCell, i64)>,
    identify: bool,
    heat: Vec<HeatRow>,
    hours: Vec<u32>,
    /// Accesses per day by outcome (SVG, plotters), empty if it could not be drawn.
    per_day: String,
}

/// GET /console/people/{id}/activity?from=&to=: one person's accesses in the period
/// (default: the last 30 days): counts, denials, break-glass, the patients, and a
/// day-by-hour heat map.
pub async fn activity_page(
    req: HttpRequest,
    page: ConsolePage,
    path: web::Path<String>,
) -> Result<ActivityPage, AppError> {
    let what = What::new(AuditAction::Search).on(Kind::AuditLog);
    admit(&page, Review::SearchTrail, what).await?;
    let who = UserId::parse(&path).ok_or_else(AppError::not_found)?;
    let (raw, _) = RawFilter::split(pairs(req.query_string()));
    let now = page.state.clock.now();
    let since = opt(&raw.from, "from", |s| bound(s, false))?
        .unwrap_or(now - chrono::Duration::days(ACTIVITY_DEFAULT_DAYS));
    let until = opt(&raw.to, "to", |s| bound(s, true))?.unwrap_or(now);
    let identify = may_review(&page.me.user.roles, Review::IdentifyPatients).is_ok();
    let kr = page.state.keyring.clone();
    let (activity, name, patients) = page
        .state
        .db
        .run(move |c| {
            let a = search::activity(c, who, since, until, ACTIVITY_PATIENTS)?;
            let name = display_names(c, &[who])?.remove(&who);
            let ids: Vec<PatientId> = a.patients.iter().map(|p| p.0).collect();
            let cells = patient_cells(c, &kr, &ids, identify)?;
            Ok((a, name, cells))
        })
        .await?;
    let identified: Vec<PatientId> = if identify {
        activity.patients.iter().map(|p| p.0).collect()
    } else {
        Vec::new()
    };
    viewed(&page, what.id(who.as_uuid()), identified).await?;
    let heat = heat_map(&activity.by_hour, since, until);
    Ok(ActivityPage {
        chrome: page.0.chrome,
        person: name.unwrap_or_else(|| "(no display name)".into()),
        person_id: who.to_string(),
        since: time(since),
        until: time(until),
        events: activity.events,
        denials: activity.denials,
        break_glass: activity.break_glass,
        distinct_patients: activity.distinct_patients,
        patients: patients
            .into_iter()
            .zip(activity.patients.iter().map(|p| p.1))
            .collect(),
        identify,
        per_day: super::charts::per_day_by_outcome(&heat_days(&activity.by_day, &heat))
            .unwrap_or_default(),
        heat,
        hours: (0..24).collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_fields_are_quoted_and_formulas_defused() {
        assert_eq!(csv_field("Ada"), "\"Ada\"");
        assert_eq!(csv_field("a\"b"), "\"a\"\"b\"");
        for bad in ["=HYPERLINK(\"x\")", "+1", "-1+2", "@SUM(A1)", "\tx", "\rx"] {
            let f = csv_field(bad);
            assert!(f.starts_with("\"'"), "{f}");
        }
        assert_eq!(csv_field("a,b\r\nc"), "\"a,b\r\nc\"");
    }

    #[test]
    fn filters_parse_and_refuse_without_echo() {
        let (raw, rest) = RawFilter::split(pairs(
            "action=read&outcome=deny&reason=no-relationship&from=2026-01-01&to=2026-01-31&ip=10.0.0.1&before=9",
        ));
        let f = raw.parse().unwrap();
        assert_eq!(f.action, Some(AuditAction::Read));
        assert_eq!(f.outcome, Some(OutcomeCode::Deny));
        assert_eq!(f.deny_reason, Some(DenyReason::NoRelationship));
        assert_eq!(f.until.unwrap().to_rfc3339(), "2026-02-01T00:00:00+00:00");
        assert_eq!(cursor(&rest).unwrap(), Cursor::Before(9));
        let (raw, _) = RawFilter::split(pairs("action=%3Cscript%3E"));
        let err = raw.parse().unwrap_err().to_string();
        assert!(!err.contains("script"), "{err}");
        assert!(cursor(&pairs("before=1&after=2")).is_err());
        assert_eq!(raw.query(&[]), "action=%3Cscript%3E");
    }

    #[test]
    fn heat_map_shades_by_share_of_the_busiest_hour() {
        assert_eq!(shade(0, 10), "h0");
        assert_eq!(shade(1, 10), "h1");
        assert_eq!(shade(5, 10), "h2");
        assert_eq!(shade(7, 10), "h3");
        assert_eq!(shade(10, 10), "h4");
        let d = chrono::NaiveDate::from_ymd_opt(2026, 1, 2).unwrap();
        let since = d.and_hms_opt(0, 0, 0).unwrap().and_utc();
        let rows = heat_map(&[(d, 13, 4)], since, since + chrono::Duration::days(2));
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].cells[13], (4, "h4"));
        assert_eq!(rows[1].cells[13], (0, "h0"));
    }

    #[test]
    fn ids_are_shortened_to_eight_characters() {
        assert_eq!(
            short(&Uuid::from_u128(0xabcdef12_3456_0000_0000_000000000000)),
            "abcdef12"
        );
    }
}
