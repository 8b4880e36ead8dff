//! Suppressions: "this person is this patient's guardian" — alerts about this person and
//! this patient (of one kind, or every kind) are not raised until the expiry (required,
//! at most a year ahead). `GET /console/suppressions` lists them (reasons opened),
//! `POST /console/suppressions` creates one, `POST /console/suppressions/{id}/revoke`
//! ends one. Privacy officers only, never about themselves (`policy::cases`); every view
//! and change is recorded.

use super::actions::Form;
use super::alerts::{admit, failed, refuse};
use super::review::{reviewer, short};
use super::time;
use crate::audit::search::display_names;
use crate::audit::{AuditAction, ResourceType as Kind, What};
use crate::console::gate::{ConsoleForm, ConsolePage, check_post, see_other};
use crate::db::alerts::AlertKind;
use crate::db::suppressions::{self, NewSuppression};
use crate::domain::{PatientId, UserId};
use crate::error::AppError;
use crate::policy::cases::{self as rules, AlertWork, SUPPRESSION_MAX_DAYS, TEXT_MAX};
use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use askama::Template;
use askama_web::WebTemplate;
use chrono::{NaiveDate, TimeZone, Utc};
use uuid::Uuid;

/// Most suppressions the page lists.
const SHOWN: i64 = 200;

fn what(action: AuditAction, id: Option<Uuid>) -> What {
    let w = What::new(action).on(Kind::AlertSuppression);
    match id {
        Some(id) => w.id(id),
        None => w,
    }
}

/// One suppression in the list.
pub struct Row {
    pub id: Uuid,
    pub person: String,
    pub patient: String,
    pub kind: String,
    pub reason: String,
    pub created_by: String,
    pub created_at: String,
    pub expires_at: String,
    pub state: &'static str,
}

#[derive(Template, WebTemplate)]
#[template(path = "console/suppressions.html")]
pub struct SuppressionsPage {
    chrome: super::Chrome,
    message: &'static str,
    kinds: Vec<(&'static str, &'static str)>,
    max_days: i64,
    /// Prefilled from `?alert=` (the alert's person and patient).
    person: String,
    patient: String,
    rows: Vec<Row>,
}

/// GET /console/suppressions?alert=: the suppressions, and the form (prefilled with an
/// alert's person and patient).
pub async fn suppressions_page(
    req: HttpRequest,
    page: ConsolePage,
) -> Result<SuppressionsPage, AppError> {
    let w = what(AuditAction::Search, None);
    admit(&page, AlertWork::ManageSuppressions, w).await?;
    let mut alert = None;
    let mut message = "";
    for (k, v) in super::review::pairs(req.query_string()) {
        match k.as_str() {
            "alert" => {
                alert = Some(
                    Uuid::parse_str(&v)
                        .map_err(|_| AppError::bad_request("Invalid alert: give an alert id."))?,
                )
            }
            "done" if v == "created" => message = "The suppression was created.",
            "done" if v == "revoked" => message = "The suppression was revoked.",
            "done" => {}
            _ => {
                return Err(AppError::bad_request(
                    "Invalid query: use alert=<alert id> only.",
                ));
            }
        }
    }
    let kr = page.state.keyring.clone();
    let now = page.state.clock.now();
    let found = page
        .state
        .db
        .run(move |c| {
            let list = suppressions::list(c, &kr, SHOWN)?;
            let prefill: Option<(Option<UserId>, Option<PatientId>)> = match alert {
                Some(id) => {
                    use crate::db::schema::alerts as a;
                    use diesel::prelude::*;
                    a::table
                        .find(id)
                        .select((a::user_id, a::patient_id))
                        .first(c)
                        .optional()?
                }
                None => None,
            };
            let mut people: Vec<UserId> = list.iter().map(|s| s.user_id).collect();
            people.extend(list.iter().map(|s| s.created_by));
            let names = display_names(c, &people)?;
            Ok((list, prefill, names))
        })
        .await;
    let (list, prefill, names) = match found {
        Ok(v) => v,
        Err(e) => return Err(failed(&page, w, e).await),
    };
    // The reasons shown are about these patients.
    let patients: Vec<PatientId> = list.iter().map(|s| s.patient_id).collect();
    reviewer(&page).permit(w, patients).await?;
    let name = |u: UserId| {
        names
            .get(&u)
            .cloned()
            .unwrap_or_else(|| format!("user {}", short(&u.as_uuid())))
    };
    let (person, patient) = prefill.unwrap_or_default();
    Ok(SuppressionsPage {
        message,
        kinds: AlertKind::ALL
            .iter()
            .map(|k| (k.code(), k.title()))
            .collect(),
        max_days: SUPPRESSION_MAX_DAYS,
        person: person.map(|p| p.to_string()).unwrap_or_default(),
        patient: patient.map(|p| p.to_string()).unwrap_or_default(),
        rows: list
            .into_iter()
            .map(|s| Row {
                id: s.id,
                person: name(s.user_id),
                patient: s.patient_id.to_string(),
                kind: s.kind.unwrap_or_else(|| "every kind".into()),
                reason: s.reason,
                created_by: name(s.created_by),
                created_at: time(s.created_at),
                expires_at: time(s.expires_at),
                state: match s.revoked_at {
                    Some(_) => "revoked",
                    None if s.expires_at <= now => "expired",
                    None => "active",
                },
            })
            .collect(),
        chrome: page.0.chrome,
    })
}

/// POST /console/suppressions (`person`, `patient` ids, optional `kind`, `reason`,
/// `expires` as YYYY-MM-DD, the end of that day UTC).
pub async fn create(
    req: HttpRequest,
    page: ConsoleForm,
    body: web::Bytes,
) -> Result<HttpResponse, AppError> {
    let page = page.0;
    let form = Form::parse(&body);
    check_post(&req, &page.me.session, form.get("csrf_token"))?;
    let w = what(AuditAction::Create, None);
    admit(&page, AlertWork::ManageSuppressions, w).await?;
    let person = UserId::parse(form.get("person").unwrap_or_default().trim())
        .ok_or_else(|| AppError::bad_request("The field 'person' must be a user id."))?;
    let patient = PatientId::parse(form.get("patient").unwrap_or_default().trim())
        .ok_or_else(|| AppError::bad_request("The field 'patient' must be a patient id."))?;
    let kind = match form.get("kind").unwrap_or_default().trim() {
        "" => None,
        k => Some(
            AlertKind::from_code(k)
                .ok_or_else(|| {
                    AppError::bad_request("The field 'kind' must be one of the listed detectors.")
                })?
                .code(),
        ),
    };
    let reason = form.get("reason").unwrap_or_default().trim().to_string();
    let n = reason.chars().count();
    if !(3..=TEXT_MAX).contains(&n)
        || reason
            .chars()
            .any(|c| c.is_control() && c != '\n' && c != '\t' && c != '\r')
    {
        return Err(AppError::bad_request(
            "The reason must be 3 to 2000 characters without control characters.",
        ));
    }
    let now = page.state.clock.now();
    let expires = NaiveDate::parse_from_str(
        form.get("expires").unwrap_or_default().trim(),
        "%Y-%m-%d",
    )
    .ok()
    .and_then(|d| d.and_hms_opt(23, 59, 59))
    .map(|t| Utc.from_utc_datetime(&t))
    .filter(|t| rules::suppression_expiry_ok(now, *t))
    .ok_or_else(|| {
        AppError::bad_request(
            "The expiry must be a date (YYYY-MM-DD) after today and at most 365 days ahead.",
        )
    })?;
    let me = page.me.user.id;
    if let Err(why) = rules::may_suppress(&page.me.user.roles, me, person) {
        return Err(refuse(&page, w, why).await);
    }
    let kr = page.state.keyring.clone();
    let done = page
        .state
        .db
        .run(move |c| {
            use crate::db::schema::{patients as p, users as u};
            use diesel::prelude::*;
            let known: i64 = u::table.find(person.as_uuid()).count().get_result(c)?;
            let known_patient: i64 = p::table.find(patient.as_uuid()).count().get_result(c)?;
            if known == 0 || known_patient == 0 {
                return Err(AppError::client(
                    StatusCode::NOT_FOUND,
                    "The person or the patient was not found.",
                ));
            }
            let new = NewSuppression {
                user_id: person,
                patient_id: patient,
                kind,
                reason: &reason,
                expires_at: expires,
            };
            suppressions::create(c, &kr, &new, me, now)
        })
        .await;
    match done {
        Ok(id) => {
            reviewer(&page)
                .permit(what(AuditAction::Create, Some(id)), [patient])
                .await?;
            Ok(see_other("/console/suppressions?done=created"))
        }
        Err(e) => Err(failed(&page, w, e).await),
    }
}

/// POST /console/suppressions/{id}/revoke: ends a suppression now.
pub async fn revoke(
    req: HttpRequest,
    page: ConsoleForm,
    path: web::Path<String>,
    body: web::Bytes,
) -> Result<HttpResponse, AppError> {
    let page = page.0;
    let form = Form::parse(&body);
    check_post(&req, &page.me.session, form.get("csrf_token"))?;
    let not_found =
        || AppError::client(StatusCode::NOT_FOUND, "No active suppression has this id.");
    let id = Uuid::parse_str(&path).map_err(|_| not_found())?;
    let w = what(AuditAction::Update, Some(id));
    admit(&page, AlertWork::ManageSuppressions, w).await?;
    let me = page.me.user.id;
    let now = page.state.clock.now();
    let done = page
        .state
        .db
        .run(move |c| suppressions::revoke(c, id, me, now))
        .await;
    match done {
        Ok(Some((_, patient))) => {
            reviewer(&page).permit(w, [patient]).await?;
            Ok(see_other("/console/suppressions?done=revoked"))
        }
        Ok(None) => Err(failed(&page, w, not_found()).await),
        Err(e) => Err(failed(&page, w, e).await),
    }
}
