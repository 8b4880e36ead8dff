//! The console's break-glass pages (issue 13): the grants (active ones with the time they
//! have left and a revoke form; the history, filtered by status), and one grant's review
//! page for privacy officers — the request, its reason and justification, **every access
//! made under it** (from the audit trail), and the append-only verdicts. Usable without
//! JavaScript: the time left is rendered by the server.

use super::actions::Form;
use super::time;
use crate::admin::op::{self, Op, Touched, audited};
use crate::audit::{AuditAction, ResourceType as Kind};
use crate::console::gate::{Chrome, ConsoleForm, ConsolePage, check_post, see_other};
use crate::db::break_glass::{self as grants, Grant};
use crate::domain::GrantId;
use crate::error::AppError;
use crate::policy::break_glass as rules;
use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use askama::Template;
use askama_web::WebTemplate;

/// Most grants the history shows.
const HISTORY_SHOWN: i64 = 200;
/// Most audit events the review page lists for one grant.
const ACCESSES_SHOWN: i64 = 500;

/// One grant in a list.
pub struct GrantRow {
    pub id: String,
    pub user: String,
    pub patient: String,
    pub reason_code: String,
    pub mode: String,
    pub status: String,
    pub requested_at: String,
    pub expires_at: String,
    pub minutes_left: i64,
    pub review_due: String,
    pub overdue: bool,
}

impl GrantRow {
    /// `g` as a row at `now` (`reviewed`: a verdict exists).
    pub fn of(g: &Grant, now: chrono::DateTime<chrono::Utc>, reviewed: bool) -> GrantRow {
        grant_row(g, now, reviewed)
    }
}

fn grant_row(g: &Grant, now: chrono::DateTime<chrono::Utc>, reviewed: bool) -> GrantRow {
    GrantRow {
        id: g.id.to_string(),
        user: g.user_id.to_string(),
        patient: g.patient_id.to_string(),
        reason_code: g.reason_code.clone(),
        mode: g.mode.clone(),
        status: g.status_at(now).to_string(),
        requested_at: time(g.requested_at),
        expires_at: g.expires_at.map(time).unwrap_or_default(),
        minutes_left: g.minutes_left(now),
        review_due: time(g.review_due_at),
        overdue: !reviewed && g.activated_at.is_some() && g.review_due_at <= now,
    }
}

#[derive(Template, WebTemplate)]
#[template(path = "console/break_glass.html")]
pub struct GrantsPage {
    chrome: Chrome,
    message: &'static str,
    active: Vec<GrantRow>,
    history: Vec<GrantRow>,
    filter: String,
    may_revoke: bool,
}

#[derive(serde::Deserialize)]
pub struct GrantsQuery {
    status: Option<String>,
    done: Option<String>,
}

fn done_message(code: Option<&str>) -> &'static str {
    match code.unwrap_or_default() {
        "grant-revoked" => "The grant was ended; its holder is refused from the next request.",
        "reviewed" => "The review was recorded.",
        _ => "",
    }
}

/// GET /console/break-glass: active grants (time left, revoke) and the history.
pub async fn grants_page(req: HttpRequest, page: ConsolePage) -> Result<GrantsPage, AppError> {
    let q = web::Query::<GrantsQuery>::from_query(req.query_string())
        .map_err(|_| AppError::bad_request("Invalid query."))?;
    let filter = match q.status.as_deref() {
        None | Some("") => None,
        Some(s @ ("pending" | "active" | "denied" | "revoked" | "expired" | "withdrawn")) => {
            Some(s)
        }
        Some(_) => {
            return Err(AppError::bad_request(
                "The filter 'status' must be pending, active, denied, revoked or expired.",
            ));
        }
    };
    let now = page.state.clock.now();
    let status = filter.map(str::to_string);
    let (all, reviewed) = audited(
        &*page,
        AuditAction::Search,
        Some(Kind::BreakGlassGrant),
        async {
            let rows = page
                .state
                .db
                .run(move |c| {
                    let all = grants::list(c, status.as_deref(), HISTORY_SHOWN)?;
                    let overdue = grants::overdue_reviews(c, now, HISTORY_SHOWN)?;
                    Ok((all, overdue))
                })
                .await?;
            Ok((rows, Touched::default()))
        },
    )
    .await?;
    let overdue_ids: Vec<GrantId> = reviewed.iter().map(|g| g.id).collect();
    let row = |g: &Grant| {
        let reviewed = !overdue_ids.contains(&g.id);
        grant_row(g, now, reviewed)
    };
    let active = all
        .iter()
        .filter(|g| g.status_at(now) == "active")
        .map(row)
        .collect();
    Ok(GrantsPage {
        may_revoke: rules::may_revoke(&page.me.user.roles),
        chrome: page.0.chrome,
        message: done_message(q.done.as_deref()),
        active,
        history: all.iter().map(row).collect(),
        filter: filter.unwrap_or_default().to_string(),
    })
}

/// One audit event under a grant.
pub struct AccessRow {
    pub time: String,
    pub action: String,
    pub resource_type: String,
    pub outcome: String,
}

/// One verdict.
pub struct ReviewRow {
    pub verdict: String,
    pub notes: String,
    pub reviewer: String,
    pub reviewed_at: String,
}

#[derive(Template, WebTemplate)]
#[template(path = "console/break_glass_grant.html")]
pub struct GrantPage {
    chrome: Chrome,
    message: &'static str,
    grant: GrantRow,
    justification: String,
    end_reason: String,
    accesses: Vec<AccessRow>,
    reviews: Vec<ReviewRow>,
    may_review: bool,
    may_revoke: bool,
}

fn no_such_grant() -> AppError {
    AppError::client(StatusCode::NOT_FOUND, "The grant was not found.")
}

/// GET /console/break-glass/{id}: the review page of one grant.
pub async fn grant_page(
    req: HttpRequest,
    page: ConsolePage,
    path: web::Path<String>,
) -> Result<GrantPage, AppError> {
    let id = GrantId::parse(&path).ok_or_else(no_such_grant)?;
    let now = page.state.clock.now();
    let (grant, accesses, reviews) = audited(
        &*page,
        AuditAction::Read,
        Some(Kind::BreakGlassGrant),
        async {
            let kr = page.state.keyring.clone();
            let found = page
                .state
                .db
                .run(move |c| {
                    let Some(g) = grants::get(c, id)? else {
                        return Ok(None);
                    };
                    let accesses = grants::accesses_under(c, id, ACCESSES_SHOWN)?;
                    let reviews = grants::reviews_of(c, &kr, id)?;
                    Ok(Some((g, accesses, reviews)))
                })
                .await?
                .ok_or_else(no_such_grant)?;
            let touched = Touched {
                resource_id: Some(id.as_uuid()),
                patients: vec![found.0.patient_id],
                ..Touched::default()
            };
            Ok((found, touched))
        },
    )
    .await?;
    let q = web::Query::<GrantsQuery>::from_query(req.query_string()).ok();
    let me = &page.me.user;
    let may_review = rules::may_review(&me.roles, me.id, grant.user_id);
    let may_revoke = rules::may_revoke(&me.roles);
    let justification = grant.justification(&page.state.keyring)?;
    Ok(GrantPage {
        may_review,
        may_revoke,
        chrome: page.0.chrome,
        message: done_message(q.as_ref().and_then(|q| q.done.as_deref())),
        grant: grant_row(&grant, now, !reviews.is_empty()),
        justification,
        end_reason: grant.end_reason.clone().unwrap_or_default(),
        accesses: accesses
            .into_iter()
            .map(|(t, action, kind, outcome)| AccessRow {
                time: time(t),
                action,
                resource_type: kind.unwrap_or_default(),
                outcome,
            })
            .collect(),
        reviews: reviews
            .into_iter()
            .map(|r| ReviewRow {
                verdict: r.verdict,
                notes: r.notes,
                reviewer: r.reviewer.to_string(),
                reviewed_at: time(r.reviewed_at),
            })
            .collect(),
    })
}

/// POST /console/break-glass/{id}/revoke (`reason`): an administrator or a privacy
/// officer ends a grant early; effective on its holder's next request.
pub async fn revoke(
    req: HttpRequest,
    page: ConsoleForm,
    path: web::Path<String>,
    body: web::Bytes,
) -> Result<HttpResponse, AppError> {
    let page = page.0;
    let form = Form::parse(&body);
    check_post(&req, &page.me.session, form.get("csrf_token"))?;
    if !rules::may_revoke(&page.me.user.roles) {
        return Err(AppError::client(
            StatusCode::FORBIDDEN,
            "Only administrators and privacy officers end break-glass grants.",
        ));
    }
    let grant = GrantId::parse(&path).ok_or_else(no_such_grant)?;
    let op = Op::RevokeBreakGlass {
        grant,
        reason: form.get("reason").map(str::to_string),
    };
    let issuer = page.state.tokens.as_ref().map(|t| t.issuer());
    op::run(op, &page, &page.state.db, issuer)
        .await
        .map_err(bad_form)?;
    Ok(see_other("/console/break-glass?done=grant-revoked"))
}

/// A form's input errors are 400 (the API's 422).
fn bad_form(e: AppError) -> AppError {
    match e {
        AppError::Client { status, message } if status == StatusCode::UNPROCESSABLE_ENTITY => {
            AppError::Client {
                status: StatusCode::BAD_REQUEST,
                message,
            }
        }
        other => other,
    }
}

/// Longest review notes (characters).
const NOTES_MAX: usize = 2000;

/// POST /console/break-glass/{id}/review (`verdict`, `notes`): a privacy officer's
/// verdict, appended (never changed), audited as `break-glass-review`.
pub async fn review(
    req: HttpRequest,
    page: ConsoleForm,
    path: web::Path<String>,
    body: web::Bytes,
) -> Result<HttpResponse, AppError> {
    let page = page.0;
    let form = Form::parse(&body);
    check_post(&req, &page.me.session, form.get("csrf_token"))?;
    let grant = GrantId::parse(&path).ok_or_else(no_such_grant)?;
    let verdict = form
        .get("verdict")
        .filter(|v| rules::VERDICTS.contains(v))
        .ok_or_else(|| {
            AppError::bad_request(
                "The field 'verdict' must be appropriate, inappropriate or needs-follow-up.",
            )
        })?
        .to_string();
    let notes = form.get("notes").unwrap_or_default().trim().to_string();
    let n = notes.chars().count();
    if !(3..=NOTES_MAX).contains(&n)
        || notes
            .chars()
            .any(|c| c.is_control() && c != '\n' && c != '\t' && c != '\r')
    {
        return Err(AppError::bad_request(
            "The field 'notes' must be 3 to 2000 characters without control characters.",
        ));
    }
    let me = page.me.user.id;
    let roles = page.me.user.roles.clone();
    let now = page.state.clock.now();
    let db = page.state.db.clone();
    let kr = page.state.keyring.clone();
    audited(
        &page,
        AuditAction::BreakGlassReview,
        Some(Kind::BreakGlassGrant),
        async move {
            let patient = db
                .run(move |c| {
                    use diesel::Connection;
                    c.transaction(|c| {
                        let g = grants::get(c, grant)?.ok_or_else(no_such_grant)?;
                        if !rules::may_review(&roles, me, g.user_id) {
                            return Err(AppError::client(
                                StatusCode::FORBIDDEN,
                                "Only a privacy officer reviews a grant, and never their own.",
                            ));
                        }
                        grants::add_review(c, &kr, grant, &verdict, &notes, me, now)?;
                        Ok(g.patient_id)
                    })
                })
                .await?;
            Ok((
                (),
                Touched {
                    resource_id: Some(grant.as_uuid()),
                    patients: vec![patient],
                    ..Touched::default()
                },
            ))
        },
    )
    .await?;
    Ok(see_other(&format!(
        "/console/break-glass/{grant}?done=reviewed"
    )))
}
