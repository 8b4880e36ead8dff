//! The console's pages: the dashboard, users (search, paging), one user (roles, care
//! teams, facility, sessions, TOTP), service clients and recent audit events. Pages only
//! read; every change is a POST handled in [`actions`] as an [`crate::admin::Op`], the
//! same operations as the JSON API. A page handler takes [`AdminPage`] (administrators
//! only) or [`ConsolePage`] (any console user) and is only the page. Every page shows who
//! is signed in and how long the session has left ([`Chrome`], rendered by
//! `templates/console/layout.html`).

pub mod actions;
pub mod alerts;
pub mod break_glass;
pub mod cases;
pub mod charts;
pub mod export;
pub mod export_jobs;
pub mod overview;
pub mod reidentify;
pub mod review;
pub mod suppressions;
pub mod verify;
pub mod webhooks;

use super::gate::{AdminPage, Chrome, ConsolePage};
use super::store;
use crate::admin::op::{self, Touched, audited};
use crate::audit::{AuditAction, ResourceType as Kind};
use crate::db::users::{self, FacilitySummary, UserFilter, UserKind, UserSummary};
use crate::domain::{FacilityId, PatientId};
use crate::error::AppError;
use crate::policy::{self, Role};
use actix_web::{HttpRequest, web};
use askama::Template;
use askama_web::WebTemplate;
use uuid::Uuid;

/// Users per page of the users list.
pub const PAGE_SIZE: i64 = 25;
/// Longest accepted search text (characters).
const MAX_SEARCH_CHARS: usize = 100;

#[derive(Template, WebTemplate)]
#[template(path = "console/dashboard.html")]
pub struct Dashboard {
    subject: String,
    issuer: String,
    roles: String,
    minutes_left: i64,
    seconds_left: i64,
    csrf_token: String,
    /// Whether the administration links show: [`Chrome::admin`], decided by
    /// `policy::admin::console_area` like the pages themselves (no role check here).
    admin: bool,
    /// The newest alerts (break-glass and detectors).
    alerts: Vec<AlertRow>,
    /// Grants whose review is overdue.
    overdue: Vec<break_glass::GrantRow>,
    /// Open alerts by severity and open cases (viewers who may see alerts).
    counts: Option<cases::Counts>,
    /// The audit chain: its last sequence number, newest signed checkpoint and the events
    /// appended since (metadata of the trail, no PHI).
    chain_seq: i64,
    checkpoint_no: i64,
    checkpoint_seq: i64,
    checkpoint_at: String,
    since_checkpoint: i64,
    /// The newest finished "verify now" and the one running, if any.
    verified: Option<VerifyRow>,
    verifying: Option<VerifyRow>,
}

/// A verification of the chain run from the console.
pub struct VerifyRow {
    pub started: String,
    pub finished: String,
    pub ok: bool,
    pub events: i64,
    pub total: i64,
    pub failed_seq: i64,
    pub problem: String,
}

impl VerifyRow {
    fn of(r: &crate::audit::checks::Run) -> Self {
        VerifyRow {
            started: time(r.started_at),
            finished: r.finished_at.map(time).unwrap_or_default(),
            ok: r.ok == Some(true),
            events: r.verified_events,
            total: r.total_events,
            failed_seq: r.failed_seq.unwrap_or_default(),
            problem: r.problem.clone().unwrap_or_default(),
        }
    }
}

/// One alert on the dashboard (ids, codes and the explanation built from them).
pub struct AlertRow {
    pub time: String,
    pub kind: String,
    pub severity: String,
    pub title: &'static str,
    pub explanation: String,
    /// The break-glass grant it is about, if any.
    pub grant: Option<String>,
    pub user: String,
    pub patient: String,
    /// Who when not a person: the source address or client id.
    pub source: String,
    /// Audit sequence numbers of the evidence (each links to its event page).
    pub evidence: Vec<i64>,
}

impl AlertRow {
    fn of(a: crate::db::alerts::Alert) -> Self {
        let explanation = a.explanation();
        let title = crate::db::alerts::AlertKind::from_code(&a.kind).map_or("Alert", |k| k.title());
        let mut evidence = a.evidence_seqs;
        evidence.truncate(10);
        AlertRow {
            time: time(a.created_at),
            title,
            explanation,
            severity: a.severity,
            grant: a.grant_id.map(|g| g.to_string()),
            user: a.user_id.map(|u| u.to_string()).unwrap_or_default(),
            patient: a.patient_id.map(|p| p.to_string()).unwrap_or_default(),
            source: a.source_ip.or(a.client_id).unwrap_or_default(),
            kind: a.kind,
            evidence,
        }
    }
}

/// Alerts the dashboard shows.
const ALERTS_SHOWN: i64 = 20;

/// GET /console: who is signed in and how long the session has left, and links to the
/// parts of the console the viewer's role opens.
pub async fn dashboard(page: ConsolePage) -> Result<Dashboard, AppError> {
    let me = &page.me;
    let roles: Vec<&str> = me.user.roles.iter().map(|r| r.as_str()).collect();
    let now = page.state.clock.now();
    let roles_held = me.user.roles.clone();
    let (alerts, overdue, (head, (verified, verifying)), counts) = page
        .state
        .db
        .run(move |c| {
            let alerts = crate::db::alerts::recent(c, ALERTS_SHOWN)?;
            let overdue = crate::db::break_glass::overdue_reviews(c, now, ALERTS_SHOWN)?;
            let head = crate::audit::store::head(c)?;
            let checks = crate::audit::checks::latest(c)?;
            let counts = cases::counts(c, &roles_held)?;
            Ok((alerts, overdue, (head, checks), counts))
        })
        .await?;
    Ok(Dashboard {
        alerts: alerts.into_iter().map(AlertRow::of).collect(),
        overdue: overdue
            .iter()
            .map(|g| break_glass::GrantRow::of(g, now, false))
            .collect(),
        counts,
        chain_seq: head.seq,
        checkpoint_no: head.checkpoint_no,
        checkpoint_seq: head.checkpoint_seq,
        checkpoint_at: if head.checkpoint_no > 0 {
            time(head.checkpoint_at)
        } else {
            String::new()
        },
        since_checkpoint: head.seq - head.checkpoint_seq,
        verified: verified.as_ref().map(VerifyRow::of),
        verifying: verifying.as_ref().map(VerifyRow::of),
        subject: me.subject.clone(),
        issuer: me.issuer.clone(),
        roles: roles.join(", "),
        minutes_left: page.chrome.minutes_left,
        seconds_left: page.chrome.seconds_left,
        csrf_token: me.session.csrf_token.clone(),
        admin: page.chrome.admin,
    })
}

/// The fixed confirmation shown after a change (`?done=`); unknown codes show nothing.
fn done_message(code: Option<&str>) -> &'static str {
    match code.unwrap_or_default() {
        "role-granted" => "The role was granted.",
        "role-revoked" => "The role was removed; the user's console sessions were ended.",
        "care-team-added" => "The user was added to the care team.",
        "care-team-removed" => "The user was removed from the care team.",
        "facility-set" => "The facility was changed.",
        "family-name-set" => "The family name was set (kept as its blind index only).",
        "family-name-cleared" => "The family name was cleared.",
        "disabled" => "The account was disabled; its console sessions were ended.",
        "enabled" => "The account was enabled.",
        "sessions-revoked" => "All console sessions of the user were ended.",
        "totp-reset" => {
            "The authenticator was reset; the user enrols a new one at the next sign-in."
        }
        "client-created" => "The service client was registered.",
        "client-disabled" => "The service client was disabled.",
        "change-requested" => {
            "The change gives a holder of admin or privacy_officer access to PHI: it waits for a second administrator's approval."
        }
        "change-approved" => "The change was approved and performed.",
        "change-denied" => "The change was denied; nothing was changed.",
        "webhook-disabled" => "The webhook endpoint was disabled; nothing more is sent to it.",
        "webhook-redelivered" => "The delivery was queued again; the next pass sends it.",
        _ => "",
    }
}

/// One user in a list.
pub struct UserRow {
    pub id: Uuid,
    pub subject: String,
    pub display_name: String,
    pub kind: String,
    pub roles: String,
    pub disabled: bool,
    pub facility: String,
}

fn row(u: UserSummary, facilities: &[FacilitySummary]) -> UserRow {
    UserRow {
        id: u.id.as_uuid(),
        subject: u.subject,
        display_name: u.display_name.unwrap_or_default(),
        kind: u.kind.as_str().to_string(),
        roles: u.roles.join(", "),
        disabled: u.disabled,
        facility: facility_name(u.facility, facilities),
    }
}

fn facility_name(id: Option<FacilityId>, facilities: &[FacilitySummary]) -> String {
    id.map(|id| {
        facilities
            .iter()
            .find(|f| f.id == id)
            .map(|f| f.name.clone())
            .unwrap_or_else(|| id.to_string())
    })
    .unwrap_or_default()
}

#[derive(serde::Deserialize)]
struct UsersQuery {
    q: Option<String>,
    after: Option<Uuid>,
}

#[derive(Template, WebTemplate)]
#[template(path = "console/users.html")]
pub struct UsersPage {
    chrome: Chrome,
    q: String,
    users: Vec<UserRow>,
    next: String,
    first: String,
}

fn users_link(q: &str, after: Option<Uuid>) -> String {
    let mut s = url::form_urlencoded::Serializer::new(String::new());
    if !q.is_empty() {
        s.append_pair("q", q);
    }
    if let Some(after) = after {
        s.append_pair("after", &after.to_string());
    }
    let query = s.finish();
    if query.is_empty() {
        "/console/users".into()
    } else {
        format!("/console/users?{query}")
    }
}

/// GET /console/users?q=&after=: people and clients, searchable by subject or display
/// name, `PAGE_SIZE` at a time.
pub async fn users_list(req: HttpRequest, page: AdminPage) -> Result<UsersPage, AppError> {
    let query = web::Query::<UsersQuery>::from_query(req.query_string()).map_err(|_| {
        AppError::bad_request("Invalid search: use q=<text> and after=<user id> only.")
    })?;
    let q = query.q.as_deref().unwrap_or_default().trim().to_string();
    if q.chars().count() > MAX_SEARCH_CHARS || q.chars().any(char::is_control) {
        return Err(AppError::bad_request(
            "The search text must be at most 100 characters without control characters.",
        ));
    }
    let after = query.after;
    let filter = UserFilter {
        text: (!q.is_empty()).then(|| q.clone()),
        kind: None,
    };
    let (list, facilities) = audited(&*page, AuditAction::Search, Some(Kind::User), async {
        let found = page
            .state
            .db
            .run(move |c| {
                let list = users::search_users(c, &filter, after.map(Into::into), PAGE_SIZE + 1)?;
                Ok((list, users::list_facilities(c)?))
            })
            .await?;
        Ok((found, Touched::default()))
    })
    .await?;
    let more = list.len() as i64 > PAGE_SIZE;
    let list: Vec<UserSummary> = list.into_iter().take(PAGE_SIZE as usize).collect();
    let next = match (more, list.last()) {
        (true, Some(last)) => users_link(&q, Some(last.id.as_uuid())),
        _ => String::new(),
    };
    let first = if after.is_some() {
        users_link(&q, None)
    } else {
        String::new()
    };
    Ok(UsersPage {
        chrome: page.0.chrome,
        users: list.into_iter().map(|u| row(u, &facilities)).collect(),
        q,
        next,
        first,
    })
}

/// A console session of a user as the user page lists it.
pub struct SessionRow {
    pub stage: String,
    pub created_at: String,
    pub last_seen_at: String,
}

#[derive(Template, WebTemplate)]
#[template(path = "console/user.html")]
pub struct UserPage {
    chrome: Chrome,
    message: &'static str,
    user: UserRow,
    roles_held: Vec<String>,
    roles_free: Vec<&'static str>,
    care_teams: Vec<PatientId>,
    facilities: Vec<FacilitySummary>,
    facility_id: Option<FacilityId>,
    sessions: Vec<SessionRow>,
    totp_enrolled: bool,
    is_self: bool,
}

#[derive(serde::Deserialize)]
struct DoneQuery {
    done: Option<String>,
}

fn done_from(req: &HttpRequest) -> &'static str {
    let q = web::Query::<DoneQuery>::from_query(req.query_string()).ok();
    done_message(q.as_ref().and_then(|q| q.done.as_deref()))
}

fn time(t: chrono::DateTime<chrono::Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S UTC").to_string()
}

/// GET /console/users/{id}: one user with everything an administrator changes.
pub async fn user_page(
    req: HttpRequest,
    page: AdminPage,
    path: web::Path<String>,
) -> Result<UserPage, AppError> {
    let id = Uuid::parse_str(&path).map_err(|_| op::user_not_found())?;
    let life = page.settings.lifetimes;
    let now = page.state.clock.now();
    let kind = Some(Kind::User);
    let (user, care_teams, facilities, sessions, totp_enrolled) =
        audited(&*page, AuditAction::Read, kind, async {
            let found = page
                .state
                .db
                .run(move |c| {
                    let Some(user) = users::get_user(c, id.into())? else {
                        return Ok(None);
                    };
                    Ok(Some((
                        user,
                        users::care_teams_of(c, id.into())?,
                        users::list_facilities(c)?,
                        store::session::list_of_user(c, id.into(), &life, now)?,
                        store::totp::is_confirmed(c, id.into())?,
                    )))
                })
                .await?
                .ok_or_else(op::user_not_found)?;
            Ok((found, Touched::user(id.into())))
        })
        .await?;
    let roles_held = user.roles.clone();
    let roles_free = Role::ALL
        .iter()
        .map(|r| r.as_str())
        .filter(|r| !roles_held.iter().any(|h| h == r))
        .collect();
    let facility_id = user.facility;
    let is_self = user.id == page.me.user.id;
    Ok(UserPage {
        chrome: page.0.chrome,
        message: done_from(&req),
        is_self,
        user: row(user, &facilities),
        roles_held,
        roles_free,
        care_teams,
        facility_id,
        facilities,
        sessions: sessions
            .into_iter()
            .map(|(stage, created, seen)| SessionRow {
                stage,
                created_at: time(created),
                last_seen_at: time(seen),
            })
            .collect(),
        totp_enrolled,
    })
}

#[derive(Template, WebTemplate)]
#[template(path = "console/clients.html")]
pub struct ClientsPage {
    chrome: Chrome,
    message: &'static str,
    clients: Vec<UserRow>,
    facilities: Vec<FacilitySummary>,
    client_roles: Vec<&'static str>,
}

/// GET /console/clients: registered service clients, a form to add one, disable buttons.
pub async fn clients_page(req: HttpRequest, page: AdminPage) -> Result<ClientsPage, AppError> {
    let filter = UserFilter {
        text: None,
        kind: Some(UserKind::Service),
    };
    let (clients, facilities) = audited(&*page, AuditAction::Search, Some(Kind::Client), async {
        let found = page
            .state
            .db
            .run(move |c| {
                // Clients are few; the page shows the first ones without paging.
                let list = users::search_users(c, &filter, None, crate::admin::MAX_LIMIT)?;
                Ok((list, users::list_facilities(c)?))
            })
            .await?;
        Ok((found, Touched::default()))
    })
    .await?;
    Ok(ClientsPage {
        chrome: page.0.chrome,
        message: done_from(&req),
        clients: clients.into_iter().map(|u| row(u, &facilities)).collect(),
        facilities,
        // Roles a service client may be given (the operation refuses the others).
        client_roles: Role::ALL
            .into_iter()
            .filter(|r| policy::admin::client_may_hold(*r))
            .map(Role::as_str)
            .collect(),
    })
}

/// One waiting change as the approval queue lists it.
pub struct ChangeRow {
    pub id: Uuid,
    pub kind: String,
    pub description: String,
    pub reason: String,
    pub requested_by: Uuid,
    pub requested_at: String,
    /// Requested by the viewer or about the viewer: another administrator must decide.
    pub mine: bool,
}

#[derive(Template, WebTemplate)]
#[template(path = "console/approvals.html")]
pub struct ApprovalsPage {
    chrome: Chrome,
    message: &'static str,
    changes: Vec<ChangeRow>,
}

/// Most waiting changes the queue shows at once.
const APPROVALS_SHOWN: i64 = 200;

/// GET /console/approvals: the changes waiting for a second administrator, oldest first,
/// with approve and deny forms (not for the viewer's own requests or changes to them).
pub async fn approvals_page(req: HttpRequest, page: AdminPage) -> Result<ApprovalsPage, AppError> {
    let rows = audited(
        &*page,
        AuditAction::Search,
        Some(Kind::PendingChange),
        async {
            let rows = page
                .state
                .db
                .run(|c| {
                    let rows = crate::db::pending::waiting(c, APPROVALS_SHOWN)?;
                    let ids: Vec<_> = rows.iter().map(|r| r.id).collect();
                    let grants = crate::db::break_glass::by_pending(c, &ids)?;
                    Ok((rows, grants))
                })
                .await?;
            Ok((rows, Touched::default()))
        },
    )
    .await?;
    let (rows, grants) = rows;
    let me = page.me.user.id;
    let changes = rows
        .into_iter()
        .map(|r| {
            let mine = policy::admin::may_decide(me, r.requested_by, r.target_user_id).is_err();
            let grant = grants.iter().find(|g| g.pending_id == Some(r.id));
            let (description, reason) = match grant {
                // A break-glass request: ids and codes; the justification is the
                // requester's free text, escaped by the template.
                Some(g) => (
                    format!(
                        "Break-glass: user {} asks for {} minutes of access to patient {} (reason code {})",
                        g.user_id, g.minutes, g.patient_id, g.reason_code
                    ),
                    g.justification(&page.state.keyring)
                        .unwrap_or_else(|_| "(unreadable justification)".into()),
                ),
                None => {
                    // The kept operation, exactly as requested (ids and role codes; the
                    // reason is the requester's free text, escaped by the template).
                    let op = serde_json::from_value::<crate::admin::Op>(r.payload).ok();
                    (
                        op.as_ref()
                            .map(|o| o.describe())
                            .unwrap_or_else(|| "(unreadable request)".into()),
                        op.and_then(|o| o.reason_given()).unwrap_or_default(),
                    )
                }
            };
            ChangeRow {
                id: r.id.as_uuid(),
                kind: r.kind,
                description,
                reason,
                requested_by: r.requested_by.as_uuid(),
                requested_at: time(r.requested_at),
                mine,
            }
        })
        .collect();
    Ok(ApprovalsPage {
        chrome: page.0.chrome,
        message: done_from(&req),
        changes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_done_codes_show_nothing() {
        assert_eq!(done_message(Some("<script>")), "");
        assert_eq!(done_message(None), "");
        assert!(!done_message(Some("role-granted")).is_empty());
    }

    #[test]
    fn users_links_encode_the_search() {
        assert_eq!(users_link("", None), "/console/users");
        assert_eq!(users_link("a&b c", None), "/console/users?q=a%26b+c");
    }
}
