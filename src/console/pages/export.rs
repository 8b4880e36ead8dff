//! `POST /console/audit/export`: the events an audit search matches, as a verified
//! selection file (`audit::selection`) that `custodian audit verify --file` checks
//! offline. Exporting the trail takes it out of the product's control, so it needs a
//! fresh TOTP step-up (a code within the step-up window, or one given with the form) and
//! is itself recorded (`audit-export AuditLog`, naming the patient filtered on).

use super::actions::Form;
use super::review::{RawFilter, admit, pairs, reviewer};
use crate::audit::{AuditAction, DenyReason, ResourceType as Kind, What, selection};
use crate::console::gate::{ConsoleForm, check_post};
use crate::console::session;
use crate::console::stepup::{self, Confirmed};
use crate::error::AppError;
use crate::policy::review::Review;
use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};

pub async fn export(
    req: HttpRequest,
    page: ConsoleForm,
    body: web::Bytes,
) -> Result<HttpResponse, AppError> {
    let form = Form::parse(&body);
    check_post(&req, &page.me.session, form.get("csrf_token"))?;
    let what = What::new(AuditAction::AuditExport).on(Kind::AuditLog);
    admit(&page, Review::SearchTrail, what).await?;
    let (raw, _) = RawFilter::split(pairs(form.get("filter").unwrap_or_default()));
    let filter = raw.parse()?;
    if filter.patient.is_some() {
        admit(&page, Review::IdentifyPatients, what).await?;
    }
    let renewed = match stepup::confirm(&page, form.get("code")).await? {
        Confirmed::Fresh => None,
        Confirmed::Renewed(id) => Some(id),
        Confirmed::Refused(message) => {
            reviewer(&page)
                .deny(what, filter.patient, DenyReason::StepUpRequired)
                .await?;
            return Err(AppError::client(StatusCode::FORBIDDEN, message));
        }
    };
    let describe = raw.query(&[]);
    let signer = page.state.audit.signer().clone();
    let now = page.state.clock.now();
    let f = filter.clone();
    let made = page
        .state
        .db
        .run(move |c| {
            selection::export(c, &f, &describe, &signer, now)
                .map_err(|_| AppError::internal("audit selection export failed"))
        })
        .await;
    let (file, _) = match made {
        Ok(v) => v,
        Err(e) => {
            reviewer(&page).error(what, filter.patient).await?;
            return Err(e);
        }
    };
    reviewer(&page).permit(what, filter.patient).await?;
    let mut res = HttpResponse::Ok()
        .content_type("application/jsonl")
        .insert_header((
            "content-disposition",
            "attachment; filename=\"custodian-audit-selection.jsonl\"",
        ))
        .body(file);
    if let Some(id) = renewed {
        res.add_cookie(&session::cookie(id))
            .map_err(|_| AppError::internal("session cookie"))?;
    }
    Ok(res)
}
