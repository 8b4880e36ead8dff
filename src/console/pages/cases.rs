//! Cases: alerts grouped into a case that a privacy officer owns and works to a verdict
//! (open → investigating → closed-appropriate | closed-violation, with the sanction on a
//! violation). `GET /console/cases` (open cases, or one status), `POST /console/cases`
//! (open a case from alerts, or add alerts to one), `GET /console/cases/{id}` (the case,
//! its alerts, its append-only history), `POST /console/cases/{id}/{op}` (`status`,
//! `note`, `assign`). What a user may do is `policy::cases`; every view and every change
//! is recorded (purpose of use `HCOMPL`), a refusal too.

use super::actions::Form;
use super::alerts::{AlertRow, admit, failed, people, refuse, row};
use super::review::reviewer;
use super::time;
use crate::audit::{AuditAction, ResourceType as Kind, What};
use crate::console::gate::{Console, ConsoleForm, ConsolePage, check_post, see_other};
use crate::db::alerts::Alert;
use crate::db::cases::{self, Case};
use crate::db::schema::{role_assignments as ra, users as u};
use crate::domain::{PatientId, UserId};
use crate::error::AppError;
use crate::policy::cases::{
    self as rules, AlertWork, CaseStatus, Refusal, Sanction, TEXT_MAX, may,
};
use crate::policy::review::{Review, may_review};
use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use askama::Template;
use askama_web::WebTemplate;
use diesel::prelude::*;
use uuid::Uuid;

/// Most cases the list shows; most alerts one case takes in one go.
const CASES_SHOWN: i64 = 200;
const ALERTS_PER_FORM: usize = 200;

fn no_such_case() -> AppError {
    AppError::client(StatusCode::NOT_FOUND, "The case was not found.")
}

fn case_what(action: AuditAction, id: Option<Uuid>) -> What {
    let w = What::new(action).on(Kind::PrivacyCase);
    match id {
        Some(id) => w.id(id),
        None => w,
    }
}

/// Free text from a form: trimmed, bounded, no control characters but line breaks.
fn text(form: &Form, name: &str, required: bool) -> Result<Option<String>, AppError> {
    let t = form.get(name).unwrap_or_default().trim().to_string();
    if t.is_empty() && !required {
        return Ok(None);
    }
    let n = t.chars().count();
    if !(3..=TEXT_MAX).contains(&n)
        || t.chars()
            .any(|c| c.is_control() && c != '\n' && c != '\t' && c != '\r')
    {
        return Err(AppError::bad_request(
            "The notes must be 3 to 2000 characters without control characters.",
        ));
    }
    Ok(Some(t))
}

/// One case in a list.
pub struct CaseRow {
    pub id: Uuid,
    pub short: String,
    pub status: String,
    pub owner: String,
    pub sanction: String,
    pub opened_at: String,
    pub updated_at: String,
    pub alerts: i64,
}

fn case_row(c: &Case, alerts: i64, names: &std::collections::HashMap<UserId, String>) -> CaseRow {
    CaseRow {
        id: c.id,
        short: super::review::short(&c.id),
        status: c.status.clone(),
        owner: name_of(UserId(c.owner), names),
        sanction: c
            .sanction
            .as_deref()
            .and_then(Sanction::from_code)
            .map(Sanction::label)
            .unwrap_or_default()
            .to_string(),
        opened_at: time(c.opened_at),
        updated_at: time(c.updated_at),
        alerts,
    }
}

fn name_of(id: UserId, names: &std::collections::HashMap<UserId, String>) -> String {
    names
        .get(&id)
        .cloned()
        .unwrap_or_else(|| format!("user {}", super::review::short(&id.as_uuid())))
}

#[derive(Template, WebTemplate)]
#[template(path = "console/cases.html")]
pub struct CasesPage {
    chrome: super::Chrome,
    status: String,
    statuses: Vec<&'static str>,
    cases: Vec<CaseRow>,
}

/// GET /console/cases?status=: the open cases (open, investigating), or those of one status.
pub async fn cases_page(req: HttpRequest, page: ConsolePage) -> Result<CasesPage, AppError> {
    let what = case_what(AuditAction::Search, None);
    admit(&page, AlertWork::WorkCases, what).await?;
    let mut status = None;
    for (k, v) in super::review::pairs(req.query_string()) {
        match k.as_str() {
            "status" if v.is_empty() => {}
            "status" => {
                status = Some(CaseStatus::from_code(&v).ok_or_else(|| {
                    AppError::bad_request(
                        "Invalid filter 'status': use open, investigating, closed-appropriate or closed-violation.",
                    )
                })?)
            }
            _ => return Err(AppError::bad_request("Invalid case filter: use status only.")),
        }
    }
    let found = page
        .state
        .db
        .run(move |c| {
            let list = cases::list(c, status, CASES_SHOWN)?;
            let owners: Vec<UserId> = list.iter().map(|(k, _)| UserId(k.owner)).collect();
            let names = crate::audit::search::display_names(c, &owners)?;
            Ok((list, names))
        })
        .await;
    let (list, names) = match found {
        Ok(v) => v,
        Err(e) => return Err(failed(&page, what, e).await),
    };
    reviewer(&page).permit(what, []).await?;
    Ok(CasesPage {
        chrome: page.0.chrome,
        status: status.map(|s| s.code()).unwrap_or_default().to_string(),
        statuses: CaseStatus::ALL.iter().map(|s| s.code()).collect(),
        cases: list.iter().map(|(c, n)| case_row(c, *n, &names)).collect(),
    })
}

/// POST /console/cases (`alert` repeated, optional `case`): opens a case of the alerts
/// (owned by the viewer), or adds them to the open case `case`.
pub async fn open_case(
    req: HttpRequest,
    page: ConsoleForm,
    body: web::Bytes,
) -> Result<HttpResponse, AppError> {
    let page = page.0;
    let form = Form::parse(&body);
    check_post(&req, &page.me.session, form.get("csrf_token"))?;
    let into = match form.get("case").map(str::trim).filter(|s| !s.is_empty()) {
        Some(s) => Some(Uuid::parse_str(s).map_err(|_| no_such_case())?),
        None => None,
    };
    let what = case_what(
        if into.is_some() {
            AuditAction::Update
        } else {
            AuditAction::Create
        },
        into,
    );
    admit(&page, AlertWork::WorkCases, what).await?;
    let mut ids = Vec::new();
    for (k, v) in super::review::pairs(std::str::from_utf8(&body).unwrap_or_default()) {
        if k == "alert" {
            ids.push(
                Uuid::parse_str(v.trim())
                    .map_err(|_| AppError::bad_request("Invalid alert: give alert ids."))?,
            );
        }
    }
    ids.sort();
    ids.dedup();
    if ids.is_empty() || ids.len() > ALERTS_PER_FORM {
        return Err(AppError::bad_request(
            "Choose between 1 and 200 alerts for the case.",
        ));
    }
    let me = page.me.user.id;
    let roles = page.me.user.roles.clone();
    let now = page.state.clock.now();
    let kr = page.state.keyring.clone();
    let done = page
        .state
        .db
        .run(move |c| {
            c.transaction(|c| {
                let (mut subjects, found) = cases::subjects_of_alerts(c, &ids)?;
                if found != ids.len() {
                    return Ok(Err(Blocked::Missing));
                }
                if cases::already_in_case(c, &ids)? > 0 {
                    return Ok(Err(Blocked::InCase));
                }
                let id = match into {
                    Some(case) => {
                        let k = cases::get_for_update(c, case)?.ok_or_else(no_such_case)?;
                        subjects.extend(cases::subjects(c, case)?);
                        if let Err(why) = rules::may_change(&roles, me, &subjects, k.status()?) {
                            return Ok(Err(Blocked::Rule(why)));
                        }
                        cases::add_alerts(c, &kr, case, &ids, me, now)?;
                        case
                    }
                    None => {
                        if let Err(why) = rules::may_work_case(&roles, me, &subjects) {
                            return Ok(Err(Blocked::Rule(why)));
                        }
                        cases::open(c, &kr, &ids, me, me, now)?
                    }
                };
                let patients = patients_of(c, &ids)?;
                Ok(Ok((id, patients)))
            })
        })
        .await;
    match done {
        Ok(Ok((id, patients))) => {
            reviewer(&page)
                .permit(case_what(what_action(into), Some(id)), patients)
                .await?;
            Ok(see_other(&format!("/console/cases/{id}?done=saved")))
        }
        Ok(Err(Blocked::InCase)) => {
            Err(refuse_with(&page, what, "An alert is already in a case: add it there.").await)
        }
        Ok(Err(Blocked::Rule(why))) => Err(refuse(&page, what, why).await),
        Ok(Err(Blocked::Missing)) => Err(failed(
            &page,
            what,
            AppError::client(StatusCode::NOT_FOUND, "An alert was not found."),
        )
        .await),
        Err(e) => Err(failed(&page, what, e).await),
    }
}

/// Why alerts could not go into a case.
enum Blocked {
    Missing,
    InCase,
    Rule(Refusal),
}

fn what_action(into: Option<Uuid>) -> AuditAction {
    if into.is_some() {
        AuditAction::Update
    } else {
        AuditAction::Create
    }
}

/// A 409 with `message`, the refusal recorded.
async fn refuse_with(page: &Console, what: What, message: &'static str) -> AppError {
    let e = refuse(page, what, Refusal::Transition).await;
    match e {
        AppError::Client { status, .. } if status == StatusCode::CONFLICT => {
            AppError::client(StatusCode::CONFLICT, message)
        }
        other => other,
    }
}

fn patients_of(c: &mut PgConnection, alerts: &[Uuid]) -> Result<Vec<PatientId>, AppError> {
    use crate::db::schema::alerts as a;
    let mut p: Vec<PatientId> = a::table
        .filter(a::id.eq_any(alerts))
        .select(a::patient_id)
        .load::<Option<PatientId>>(c)?
        .into_iter()
        .flatten()
        .collect();
    p.sort();
    p.dedup();
    Ok(p)
}

/// One row of a case's history.
pub struct HistoryRow {
    pub time: String,
    pub who: String,
    pub what: String,
    pub note: String,
}

/// A privacy officer a case may be given to.
pub struct OwnerChoice {
    pub id: Uuid,
    pub name: String,
    pub selected: bool,
}

#[derive(Template, WebTemplate)]
#[template(path = "console/case.html")]
pub struct CasePage {
    chrome: super::Chrome,
    message: &'static str,
    case: CaseRow,
    closed: bool,
    is_owner: bool,
    may_work: bool,
    next: Vec<&'static str>,
    sanctions: Vec<(&'static str, &'static str)>,
    owners: Vec<OwnerChoice>,
    alerts: Vec<AlertRow>,
    history: Vec<HistoryRow>,
}

fn done_message(req: &HttpRequest) -> &'static str {
    let done = super::review::pairs(req.query_string())
        .into_iter()
        .find(|(k, _)| k == "done")
        .map(|(_, v)| v);
    match done.as_deref() {
        Some("saved") => "Saved.",
        Some("closed") => "The case was closed.",
        _ => "",
    }
}

/// GET /console/cases/{id}: the case, its alerts, its history and the forms to work it.
pub async fn case_page(
    req: HttpRequest,
    page: ConsolePage,
    path: web::Path<String>,
) -> Result<CasePage, AppError> {
    let id = Uuid::parse_str(&path).map_err(|_| no_such_case())?;
    let what = case_what(AuditAction::Read, Some(id));
    admit(&page, AlertWork::WorkCases, what).await?;
    let identify = may_review(&page.me.user.roles, Review::IdentifyPatients).is_ok();
    let kr = page.state.keyring.clone();
    let found = page
        .state
        .db
        .run(move |c| {
            let Some(case) = cases::get(c, id)? else {
                return Ok(None);
            };
            let alerts = cases::alerts_of(c, id)?;
            let history = cases::history(c, &kr, id)?;
            let refs: Vec<&Alert> = alerts.iter().collect();
            let (mut names, mrns) = people(c, &kr, &refs, identify)?;
            let officers = privacy_officers(c)?;
            let mut more: Vec<UserId> = history.iter().map(|h| UserId(h.actor)).collect();
            more.push(UserId(case.owner));
            names.extend(crate::audit::search::display_names(c, &more)?);
            Ok(Some((case, alerts, history, names, mrns, officers)))
        })
        .await;
    let (case, alerts, history, names, mrns, officers) = match found {
        Ok(Some(v)) => v,
        Ok(None) => return Err(failed(&page, what, no_such_case()).await),
        Err(e) => return Err(failed(&page, what, e).await),
    };
    let patients: Vec<PatientId> = alerts.iter().filter_map(|a| a.patient_id).collect();
    reviewer(&page).permit(what, patients).await?;
    let me = page.me.user.id;
    let subjects: Vec<UserId> = alerts.iter().filter_map(|a| a.user_id).collect();
    let status = case.status()?;
    let may_work = rules::may_change(&page.me.user.roles, me, &subjects, status).is_ok();
    let is_owner = case.owner == me.as_uuid();
    let next = CaseStatus::ALL
        .into_iter()
        .filter(|to| {
            rules::may_move(
                &[crate::policy::Role::PrivacyOfficer],
                me,
                &[],
                me,
                status,
                *to,
            )
            .is_ok()
        })
        .map(CaseStatus::code)
        .collect();
    let n = alerts.len() as i64;
    let history = history
        .into_iter()
        .map(|h| HistoryRow {
            time: time(h.at),
            who: name_of(UserId(h.actor), &names),
            what: describe(&h, &names),
            note: h.note.unwrap_or_default(),
        })
        .collect();
    Ok(CasePage {
        message: done_message(&req),
        case: case_row(&case, n, &names),
        closed: status.is_closed(),
        is_owner,
        may_work,
        next,
        sanctions: Sanction::ALL
            .iter()
            .map(|s| (s.code(), s.label()))
            .collect(),
        owners: officers
            .into_iter()
            .filter(|(id, _)| !subjects.contains(&UserId(*id)))
            .map(|(id, name)| OwnerChoice {
                selected: id == case.owner,
                name: name.unwrap_or_else(|| format!("user {}", super::review::short(&id))),
                id,
            })
            .collect(),
        alerts: alerts
            .into_iter()
            .map(|a| row(a, None, &names, &mrns))
            .collect(),
        history,
        chrome: page.0.chrome,
    })
}

fn describe(h: &cases::HistoryRow, names: &std::collections::HashMap<UserId, String>) -> String {
    match h.action.as_str() {
        "opened" => format!(
            "opened the case with {} alert(s), owner {}",
            h.alerts.unwrap_or(0),
            h.owner
                .map(|o| name_of(UserId(o), names))
                .unwrap_or_default()
        ),
        "alerts-added" => format!("added {} alert(s)", h.alerts.unwrap_or(0)),
        "assigned" => format!(
            "gave the case to {}",
            h.owner
                .map(|o| name_of(UserId(o), names))
                .unwrap_or_default()
        ),
        "status" => format!("set the status to {}", h.status.as_deref().unwrap_or("")),
        "closed" => match h.sanction.as_deref().and_then(Sanction::from_code) {
            Some(s) => format!(
                "closed the case as {}; sanction: {}",
                h.status.as_deref().unwrap_or(""),
                s.label()
            ),
            None => format!("closed the case as {}", h.status.as_deref().unwrap_or("")),
        },
        "note" => "added a note".into(),
        _ => "changed the case".into(),
    }
}

/// Privacy officers (not disabled), with their display names.
fn privacy_officers(c: &mut PgConnection) -> Result<Vec<(Uuid, Option<String>)>, AppError> {
    Ok(ra::table
        .inner_join(u::table)
        .filter(ra::role.eq(crate::policy::Role::PrivacyOfficer.as_str()))
        .filter(u::disabled_at.is_null())
        .order(u::display_name)
        .select((u::id, u::display_name))
        .limit(CASES_SHOWN)
        .load(c)?)
}

/// POST /console/cases/{id}/{op}: `status` (`status`, `sanction` on a violation, `notes`
/// required to close), `note` (`notes`), `assign` (`owner`).
pub async fn case_action(
    req: HttpRequest,
    page: ConsoleForm,
    path: web::Path<(String, String)>,
    body: web::Bytes,
) -> Result<HttpResponse, AppError> {
    let page = page.0;
    let form = Form::parse(&body);
    check_post(&req, &page.me.session, form.get("csrf_token"))?;
    let (id, op) = path.into_inner();
    let id = Uuid::parse_str(&id).map_err(|_| no_such_case())?;
    let what = case_what(AuditAction::Update, Some(id));
    admit(&page, AlertWork::WorkCases, what).await?;
    let change = match op.as_str() {
        "status" => {
            let to = CaseStatus::from_code(form.get("status").unwrap_or_default()).ok_or_else(
                || {
                    AppError::bad_request(
                        "The field 'status' must be investigating, closed-appropriate or closed-violation.",
                    )
                },
            )?;
            let sanction = match (to, form.get("sanction").unwrap_or_default()) {
                (CaseStatus::ClosedViolation, code) => {
                    Some(Sanction::from_code(code).ok_or_else(|| {
                        AppError::bad_request(
                            "A violation is closed with one of the listed sanctions.",
                        )
                    })?)
                }
                (_, "") => None,
                _ => {
                    return Err(AppError::bad_request(
                        "A sanction is recorded only when a case closes as a violation.",
                    ));
                }
            };
            let note = text(&form, "notes", to.is_closed())?;
            Change::Status(to, sanction, note)
        }
        "note" => Change::Note(text(&form, "notes", true)?.unwrap_or_default()),
        "assign" => Change::Assign(UserId(
            Uuid::parse_str(form.get("owner").unwrap_or_default().trim())
                .map_err(|_| AppError::bad_request("Choose the new owner from the list."))?,
        )),
        _ => return Err(AppError::not_found()),
    };
    let closing = matches!(change, Change::Status(to, _, _) if to.is_closed());
    let me = page.me.user.id;
    let roles = page.me.user.roles.clone();
    let now = page.state.clock.now();
    let kr = page.state.keyring.clone();
    let done = page
        .state
        .db
        .run(move |c| {
            c.transaction(|c| {
                let case = cases::get_for_update(c, id)?.ok_or_else(no_such_case)?;
                let subjects = cases::subjects(c, id)?;
                let status = case.status()?;
                let owner = UserId(case.owner);
                let allowed = match &change {
                    Change::Status(to, _, _) => {
                        rules::may_move(&roles, me, &subjects, owner, status, *to)
                    }
                    Change::Note(_) => rules::may_change(&roles, me, &subjects, status),
                    Change::Assign(to) => {
                        let to_roles = crate::db::users::by_id(c, *to)?
                            .filter(|(u, _, _)| !u.disabled)
                            .map(|(u, _, _)| u.roles)
                            .unwrap_or_default();
                        rules::may_change(&roles, me, &subjects, status)
                            .and_then(|()| rules::may_assign(&roles, me, &subjects, *to, &to_roles))
                    }
                };
                if let Err(why) = allowed {
                    return Ok(Err(why));
                }
                match change {
                    Change::Status(to, sanction, note) => {
                        cases::set_status(c, &kr, id, to, sanction, note.as_deref(), me, now)?
                    }
                    Change::Note(note) => cases::add_note(c, &kr, id, &note, me, now)?,
                    Change::Assign(to) => cases::assign(c, &kr, id, to, me, now)?,
                }
                let alerts: Vec<Uuid> = cases::alerts_of(c, id)?.iter().map(|a| a.id).collect();
                Ok(Ok(patients_of(c, &alerts)?))
            })
        })
        .await;
    match done {
        Ok(Ok(patients)) => {
            reviewer(&page).permit(what, patients).await?;
            let done = if closing { "closed" } else { "saved" };
            Ok(see_other(&format!("/console/cases/{id}?done={done}")))
        }
        Ok(Err(why)) => Err(refuse(&page, what, why).await),
        Err(e) => Err(failed(&page, what, e).await),
    }
}

enum Change {
    Status(CaseStatus, Option<Sanction>, Option<String>),
    Note(String),
    Assign(UserId),
}

/// The dashboard's alert counts, for a viewer the policy lets see alerts.
pub struct Counts {
    pub high: i64,
    pub medium: i64,
    pub low: i64,
    pub open_cases: i64,
}

/// Loads the dashboard's counts (`None` when the viewer may not see alerts).
pub fn counts(
    c: &mut PgConnection,
    roles: &[crate::policy::Role],
) -> Result<Option<Counts>, AppError> {
    if may(roles, AlertWork::ViewAlerts).is_err() {
        return Ok(None);
    }
    let (by, open_cases) = cases::counts(c)?;
    let n = |s: &str| by.iter().find(|(k, _)| k == s).map_or(0, |(_, n)| *n);
    Ok(Some(Counts {
        high: n("high"),
        medium: n("medium"),
        low: n("low"),
        open_cases,
    }))
}
