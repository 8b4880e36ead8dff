//! The privacy office's re-identification page (issue 17; docs/export.md#re-identification):
//! a pseudonym from a de-identified export, the export key's id and a justification in;
//! the patient's MRN and name out, shown once in the answer to the POST (there is no
//! page to come back to). Who may, and what else it needs, is [`rules::decide`]: the
//! configured role, a TOTP code entered with this very form, a justification of 20+
//! characters (sealed at rest, never audited or logged). Every attempt past the role
//! check is recorded (`reidentify`, high severity); one that names a patient also raises
//! the `reidentification` alert, in the same transaction as its audit event.

use super::actions::Form;
use super::review::reviewer;
use crate::audit::{AuditAction, DenyReason, ResourceType as Kind, What};
use crate::console::gate::{Chrome, Console, ConsoleForm, ConsolePage, check_post};
use crate::console::session;
use crate::console::stepup::{self, Confirmed};
use crate::crypto::Pseudonym;
use crate::db::reidentifications as store;
use crate::error::AppError;
use crate::policy::reidentify::{self as rules, Justification, Refused, StepUp};
use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, Responder, ResponseError, web};
use askama::Template;
use askama_web::WebTemplate;

#[derive(Template, WebTemplate)]
#[template(path = "console/reidentify.html")]
pub struct ReidentifyPage {
    chrome: Chrome,
    /// The signed-in person holds the configured role.
    allowed: bool,
    role: &'static str,
    /// The id of the configured export key (empty when none is configured).
    key_id: String,
    /// The one-time answer of a successful re-identification.
    found: Option<Found>,
}

/// What the privacy officer sees once.
pub struct Found {
    pub patient_id: String,
    pub mrn: String,
    pub name: String,
    pub key_id: String,
}

fn what() -> What {
    What::new(AuditAction::Reidentify).on(Kind::Patient)
}

fn key_id_of(page: &Console) -> String {
    page.state
        .export_key
        .as_ref()
        .map(|k| k.key_id())
        .unwrap_or_default()
}

/// GET /console/reidentify: the form (or, without the role, what it needs).
pub async fn form(page: ConsolePage) -> ReidentifyPage {
    let config = page.state.reidentify.clone();
    let allowed = rules::decide(&page.me.user.roles, &config, StepUp::CodeAccepted).is_ok();
    ReidentifyPage {
        allowed,
        role: config.role.as_str(),
        key_id: key_id_of(&page),
        chrome: page.0.chrome,
        found: None,
    }
}

const NOT_FOUND: &str = "No patient has this pseudonym under that export key.";
const ROLE_MISSING: &str =
    "Re-identification needs the role the configuration names for it (reidentify.role).";
const CODE_MISSING: &str = "Re-identification needs a current code from your authenticator app, entered with the form (every time).";
const BAD_PSEUDONYM: &str = "The field 'pseudonym' must be a Patient pseudonym of a de-identified export: 64 hexadecimal digits (or Patient/ followed by them).";
const BAD_KEY_ID: &str = "The field 'key_id' must be the 16 hexadecimal digits that name an export key (the export's manifest gives it).";
const NO_KEY: &str =
    "No export key is configured (crypto.export_key): no pseudonym can be re-identified.";

/// POST /console/reidentify `{csrf_token, pseudonym, key_id, justification, code}`.
pub async fn submit(
    req: HttpRequest,
    page: ConsoleForm,
    body: web::Bytes,
) -> Result<HttpResponse, AppError> {
    let form = Form::parse(&body);
    check_post(&req, &page.me.session, form.get("csrf_token"))?;
    let audit = reviewer(&page);
    let config = page.state.reidentify.clone();
    let roles = page.me.user.roles.clone();
    // The role before anything else: nothing is looked up and no code is spent.
    if rules::decide(&roles, &config, StepUp::Missing) == Err(Refused::RoleMissing) {
        audit.deny(what(), [], DenyReason::MissingRole).await?;
        return Err(AppError::client(StatusCode::FORBIDDEN, ROLE_MISSING));
    }
    // The input, before the code is checked (a code is spent once accepted). Fixed
    // messages: nothing typed is repeated.
    let input = (|| {
        let justification =
            Justification::parse(form.get("justification")).map_err(AppError::bad_request)?;
        let pseudonym = form
            .get("pseudonym")
            .and_then(Pseudonym::parse)
            .ok_or_else(|| AppError::bad_request(BAD_PSEUDONYM))?;
        let key_id = form
            .get("key_id")
            .map(str::trim)
            .filter(|k| k.len() == 16 && k.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
            .ok_or_else(|| AppError::bad_request(BAD_KEY_ID))?
            .to_string();
        Ok::<_, AppError>((justification, pseudonym, key_id))
    })();
    let (justification, pseudonym, key_id) = match input {
        Ok(v) => v,
        Err(e) => {
            audit.error(what(), []).await?;
            return Err(e);
        }
    };
    let Some(key) = page.state.export_key.clone() else {
        audit.error(what(), []).await?;
        return Err(AppError::client(StatusCode::CONFLICT, NO_KEY));
    };
    let step_up = match stepup::check_code(&page, form.get("code"), CODE_MISSING).await? {
        Confirmed::Renewed(id) => Some(id),
        Confirmed::Fresh | Confirmed::Refused(_) => None,
    };
    let refused = match &step_up {
        Some(_) => rules::decide(&roles, &config, StepUp::CodeAccepted),
        None => rules::decide(&roles, &config, StepUp::Missing),
    };
    if refused.is_err() {
        audit.deny(what(), [], DenyReason::StepUpRequired).await?;
        return Err(AppError::client(StatusCode::FORBIDDEN, CODE_MISSING));
    }
    // A key other than the configured one names nobody: its pseudonyms cannot be made.
    let patient = if key.key_id() == key_id {
        page.state
            .db
            .run(move |c| store::resolve(c, &key, &pseudonym))
            .await?
    } else {
        None
    };
    let by = page.me.user.id;
    let kr = page.state.keyring.clone();
    let now = page.state.clock.now();
    let asked_key = key_id.clone();
    let recorded = match patient {
        Some(p) => what().id(p.as_uuid()),
        None => what(),
    };
    audit
        .commit_with(
            recorded,
            patient,
            move |c| store::record(c, &kr, by, patient, &asked_key, &justification, now),
            None,
        )
        .await?;
    let Some(p) = patient else {
        let mut res = AppError::client(StatusCode::NOT_FOUND, NOT_FOUND).error_response();
        renew(&mut res, step_up)?;
        return Ok(res);
    };
    let kr = page.state.keyring.clone();
    let opened = page
        .state
        .db
        .run(move |c| crate::db::patients::patient_by_id(c, &kr, p))
        .await?
        .ok_or_else(|| AppError::internal("a re-identified patient vanished"))?;
    let chrome = &page.chrome;
    let mut shown = ReidentifyPage {
        allowed: true,
        role: config.role.as_str(),
        key_id: key_id.clone(),
        chrome: Chrome {
            subject: chrome.subject.clone(),
            minutes_left: chrome.minutes_left,
            seconds_left: chrome.seconds_left,
            csrf_token: chrome.csrf_token.clone(),
            admin: chrome.admin,
        },
        found: Some(Found {
            patient_id: p.to_string(),
            mrn: opened.mrn.expose().clone(),
            name: format!("{} {}", opened.given.expose(), opened.family.expose()),
            key_id,
        }),
    };
    if let Some(id) = &step_up {
        shown.chrome.csrf_token = renewed_csrf(&page, id).await?;
    }
    let mut res = shown.respond_to(&req).map_into_boxed_body();
    renew(&mut res, step_up)?;
    Ok(res)
}

/// The CSRF token of the session an accepted code renewed (the page's forms need it).
async fn renewed_csrf(page: &Console, id: &str) -> Result<String, AppError> {
    let id = id.to_string();
    let life = page.settings.lifetimes;
    let now = page.state.clock.now();
    page.state
        .db
        .run(move |c| crate::console::store::session::load(c, &id, &life, now))
        .await?
        .map(|s| s.csrf_token)
        .ok_or_else(|| AppError::internal("the renewed session is missing"))
}

/// The accepted code renewed the session id: the answer carries the new cookie.
fn renew(res: &mut HttpResponse, step_up: Option<String>) -> Result<(), AppError> {
    if let Some(id) = step_up {
        res.add_cookie(&session::cookie(id))
            .map_err(|_| AppError::internal("session cookie"))?;
    }
    Ok(())
}
